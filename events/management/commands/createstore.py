from django.core.management.base import BaseCommand, CommandError

from events.models import Store


class Command(BaseCommand):
    help = "Create a store and print its API token (shown once, stored only as a hash)."

    def add_arguments(self, parser):
        parser.add_argument("name")

    def handle(self, *args, name: str, **options):
        if Store.objects.filter(name=name).exists():
            raise CommandError(f"A store named '{name}' already exists.")
        store = Store(name=name)
        token = store.token_set_new()
        store.save()
        self.stdout.write(f"Created store '{name}'. Its token (shown only now):\n{token}")
