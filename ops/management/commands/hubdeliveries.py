import json

from django.core.management.base import BaseCommand, CommandError

from ops.manage import services
from ops.manage.commands import command_actor, hub_errors
from ops.manage.serializers import DeliveryFilterInput


class Command(BaseCommand):
    help = (
        "Retry, cancel or replay the deliveries a filter selects, as POST /manage/v1/deliveries/<action> "
        "does: e.g. everything that failed for one subscription between two times. --dry-run only counts."
    )

    def add_arguments(self, parser):
        parser.add_argument("action", choices=sorted(services.DELIVERY_ACTIONS))
        parser.add_argument("--subscription", help="Only deliveries to this subscription (its name).")
        parser.add_argument("--state", action="append", help="A delivery state (repeat for several); default failed.")
        parser.add_argument("--since", help="Created at or after (ISO 8601).")
        parser.add_argument("--until", help="Created before (ISO 8601).")
        parser.add_argument("--message", help="A message name or a wildcard such as order:*.")
        parser.add_argument("--limit", type=int, help=f"At most this many (up to {services.DELIVERIES_MAX_PER_CALL}).")
        parser.add_argument("--dry-run", action="store_true", help="Count what would change; change nothing.")

    def handle(self, *args, action: str, dry_run: bool, **options):
        given = {k: options[k] for k in ("subscription", "state", "since", "until", "message", "limit") if options[k]}
        serializer = DeliveryFilterInput(data={**given, "dry_run": dry_run})
        if not serializer.is_valid():
            field, errors = next(iter(serializer.errors.items()))
            raise CommandError(f"--{field}: {errors[0] if isinstance(errors, list) else errors}")
        values = serializer.validated_data
        flt = services.DeliveryFilter(
            subscription=values.get("subscription"),
            states=tuple(values.get("state") or ()),
            since=values.get("since"),
            until=values.get("until"),
            message=values.get("message"),
            limit=values["limit"],
        )
        with hub_errors():
            result = services.deliveries_act(
                action=action, flt=flt, dry_run=values["dry_run"], actor=command_actor("hubdeliveries")
            )
        self.stdout.write(json.dumps(result))
