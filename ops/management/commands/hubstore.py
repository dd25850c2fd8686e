import json

from django.core.management.base import BaseCommand

from events.models import Store
from ops.manage import services
from ops.manage.commands import command_actor, hub_errors
from ops.manage.serializers import store_output


class Command(BaseCommand):
    help = (
        "Stores, as the management API does them: list, show, enable, disable, rotate (the new token "
        "is printed once). Create and change them with hubapply or createstore."
    )

    def add_arguments(self, parser):
        parser.add_argument("action", choices=["list", "show", "enable", "disable", "rotate"])
        parser.add_argument("name", nargs="?", help="The store (every action but list).")
        parser.add_argument("--grace-seconds", type=int, help="rotate: how long the old token keeps working.")

    def handle(self, *args, action: str, name: str | None, grace_seconds: int | None, **options):
        actor = command_actor("hubstore")
        if action == "list":
            for store in Store.objects.order_by("name"):
                self.stdout.write(f"{store.name}\t{'active' if store.is_active else 'disabled'}\t{store.token_hint}…")
            return
        with hub_errors():
            if not name:
                raise services.InvalidField(f"'{action}' needs the store's name.", field="name")
            store = services.store_by_name(name)
            if action == "show":
                self.stdout.write(json.dumps(store_output(store), indent=2))
            elif action == "rotate":
                token = services.store_rotate(store=store, actor=actor, grace_seconds=grace_seconds)
                self.stdout.write(f"New token of '{name}' (shown only now):\n{token}")
            else:
                active = action == "enable"
                changed = services.store_update(store=store, values={"is_active": active}, actor=actor)
                self.stdout.write(f"Store '{name}' {action}d." if changed else f"Store '{name}' already was {action}d.")
