from datetime import timedelta

from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from ops.services import events_purge, returned_objects_forget


class Command(BaseCommand):
    help = (
        "Delete events older than N days that every endpoint has received, with their deliveries, "
        "attempts and notifications, in small batches. Failed or waiting deliveries keep their event."
    )

    def add_arguments(self, parser):
        parser.add_argument("--days", type=int, default=30, help="Keep events younger than this (default 30).")
        parser.add_argument("--batch-size", type=int, default=1000, help="Events deleted per transaction.")
        parser.add_argument("--include-unrouted", action="store_true", help="Also events no subscription wanted.")
        parser.add_argument("--dry-run", action="store_true", help="Count what would be deleted; delete nothing.")

    def handle(self, *args, days: int, batch_size: int, include_unrouted: bool, dry_run: bool, **options):
        if days < 1:
            raise CommandError("--days must be at least 1.")
        if batch_size < 1:
            raise CommandError("--batch-size must be at least 1.")
        cutoff = timezone.now() - timedelta(days=days)
        events = rows = 0
        for batch in events_purge(
            older_than=cutoff, batch_size=batch_size, dry_run=dry_run, include_unrouted=include_unrouted
        ):
            events += batch.events
            rows += batch.rows
            if options["verbosity"] >= 2:
                self.stdout.write(f"  batch: {batch.events} events")
        when = cutoff.strftime("%Y-%m-%d %H:%M UTC")
        if dry_run:
            self.stdout.write(f"Dry run: {events} events created before {when} would be deleted.")
            return
        forgotten = returned_objects_forget(older_than=cutoff, batch_size=batch_size)
        self.stdout.write(
            f"Deleted {events} events created before {when} ({rows} rows in all); "
            f"forgot {forgotten} objects endpoints returned before then."
        )
