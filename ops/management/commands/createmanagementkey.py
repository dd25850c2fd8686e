from django.core.management.base import BaseCommand, CommandError

from ops.manage.commands import command_actor
from ops.manage.services import write_logged
from ops.models import SCOPES, ManagementKey, scopes_validate


class Command(BaseCommand):
    help = "Create a key for the management API (/manage/v1) and print it (shown once, stored only as a hash)."

    def add_arguments(self, parser):
        parser.add_argument("name", help="Who or what uses it, e.g. ci-apply.")
        parser.add_argument(
            "--scope",
            action="append",
            dest="scopes",
            default=[],
            help=f"A scope it holds (repeat, or space-separated); one of {', '.join(SCOPES)}, or 'all'.",
        )

    def handle(self, *args, name: str, scopes: list[str], **options):
        wanted = [s for given in scopes for s in given.replace(",", " ").split()]
        if "all" in wanted:
            wanted = list(SCOPES)
        wanted = list(dict.fromkeys(wanted))
        try:
            scopes_validate(wanted)
        except ValueError as exc:
            raise CommandError(f"--scope: {exc}") from None
        if ManagementKey.objects.filter(name=name).exists():
            raise CommandError(f"A management key named '{name}' already exists.")
        key = ManagementKey(name=name, scopes=wanted)
        secret = key.key_set_new()
        key.save()
        write_logged(command_actor("createmanagementkey"), "management_key.create", name, scopes=wanted)
        self.stdout.write(f"Created management key '{name}' ({' '.join(wanted)}). The key (shown only now):\n{secret}")
