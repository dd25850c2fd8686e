import argparse
import sys
from datetime import datetime

from django.core.management.base import BaseCommand, CommandError
from tqdm import tqdm

from events.messages import InvalidMessageName, message_canonical
from events.validation import since_parse
from ops.selectors import deliveries_failed
from routing import operations
from routing.models import Subscription


def since_parse_or_refuse(value: str) -> datetime:
    since = since_parse(value, relative=True)
    if since is None:
        raise CommandError(f"--since '{value}' is neither a date, an ISO 8601 date-time, nor like 6h or 2d.")
    return since


class Command(BaseCommand):
    help = (
        "Send failed deliveries again (each gets one more attempt, on the normal workers), "
        "narrowed by subscription, message and age."
    )

    def add_arguments(self, parser):
        parser.add_argument("--subscription", help="Only deliveries to this subscription (its name).")
        parser.add_argument("--message", help="Only this message, e.g. order:new, or a wildcard like order:*.")
        parser.add_argument("--since", help="Only deliveries created since: 2026-01-31, an ISO date-time, 6h, 2d.")
        parser.add_argument(
            "--all", action="store_true", dest="replay_all", help="Replay every failed delivery (no filter given)."
        )
        parser.add_argument("--limit", type=int, help="At most this many deliveries.")
        parser.add_argument("--dry-run", action="store_true", help="Count what would be sent; send nothing.")
        parser.add_argument(
            "--progress",
            action=argparse.BooleanOptionalAction,
            default=None,
            help="Show a progress bar (default: for more than one delivery, on a terminal).",
        )

    def handle(self, *args, subscription, message, since, replay_all, limit, dry_run, progress, **options):
        if not (subscription or message or since or replay_all):
            raise CommandError("Give --subscription, --message or --since (or --all to replay every failure).")
        if subscription and not Subscription.objects.filter(name=subscription).exists():
            raise CommandError(f"No subscription named '{subscription}'.")
        if message and not message.endswith("*"):
            try:
                message = message_canonical(message)
            except InvalidMessageName as exc:
                raise CommandError(str(exc)) from None
        selected = deliveries_failed(
            subscription=subscription, message=message, since=since_parse_or_refuse(since) if since else None
        )
        ids = list(selected.values_list("id", flat=True)[:limit] if limit else selected.values_list("id", flat=True))
        if dry_run:
            self.stdout.write(f"Dry run: {len(ids)} failed deliveries would be sent again.")
            return
        retried = skipped = 0
        show = progress if progress is not None else len(ids) > 1 and sys.stderr.isatty()
        for delivery_id in tqdm(ids, unit="delivery", disable=not show, file=sys.stderr):
            # False when it changed meanwhile (delivered, cancelled) or its endpoint is disabled.
            if operations.delivery_retry_now(delivery_id=delivery_id):
                retried += 1
            else:
                skipped += 1
        self.stdout.write(f"{retried} deliveries sent again, {skipped} skipped (no longer failed, or disabled).")
