import json
import sys

from django.core.management.base import BaseCommand

from ops.manage import services
from ops.manage.commands import command_actor, hub_errors
from ops.manage.serializers import subscription_output
from routing.models import Subscription
from routing.subscriptions import subscription_receives


class Command(BaseCommand):
    help = (
        "Subscriptions, as the management API does them: list, show, enable, disable, rotate (the new "
        "signing secret is printed once), test (send a hub:test event), token (set the X-Hub-Token it sends "
        "to the endpoint's own key, read from standard input). Create and change them with hubapply."
    )

    # The token's source in tests (call_command(..., stdin=...)); sys.stdin otherwise.
    stealth_options = ("stdin",)

    def add_arguments(self, parser):
        parser.add_argument("action", choices=["list", "show", "enable", "disable", "rotate", "test", "token"])
        parser.add_argument("name", nargs="?", help="The subscription (every action but list).")
        parser.add_argument("--reason", default="", help="disable: why (shown in the admin).")

    def handle(self, *args, action: str, name: str | None, reason: str, **options):
        actor = command_actor("hubsubscription")
        if action == "list":
            for sub in Subscription.objects.select_related("schedule").order_by("name"):
                state = "enabled" if sub.is_enabled else f"disabled ({sub.disabled_reason})"
                # Types comma-separated as ever; none said in words (an empty column could not tell a
                # pull from a subscription that receives nothing).
                self.stdout.write(f"{sub.name}\t{state}\t{sub.url}\t{subscription_receives(sub, separator=',')}")
            return
        with hub_errors():
            if not name:
                raise services.InvalidField(f"'{action}' needs the subscription's name.", field="name")
            sub = services.subscription_by_name(name)
            if action == "show":
                self.stdout.write(json.dumps(subscription_output(sub), indent=2))
            elif action == "rotate":
                secret = services.subscription_rotate(subscription=sub, actor=actor)
                self.stdout.write(f"New signing secret of '{name}' (shown only now):\n{secret}")
            elif action == "token":
                # From standard input, so the key stays out of the shell's history and the process list.
                stdin = options.get("stdin") or sys.stdin
                token = stdin.readline().rstrip("\r\n")
                changed = services.subscription_token_set(subscription=sub, token=token, actor=actor)
                self.stdout.write(f"Token of '{name}' set." if changed else f"Token of '{name}' already was that one.")
            elif action == "test":
                delivery = services.subscription_test(subscription=sub, actor=actor)
                self.stdout.write(f"Test event sent to '{name}' as delivery {delivery.pk}.")
            else:
                enabled = action == "enable"
                changed = services.subscription_set_enabled(
                    subscription=sub, enabled=enabled, actor=actor, reason=reason
                )
                self.stdout.write(
                    f"Subscription '{name}' {action}d." if changed else f"Subscription '{name}' already was {action}d."
                )
