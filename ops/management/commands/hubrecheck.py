from django.core.management.base import BaseCommand, CommandError

from ops.services import events_status_recheck


class Command(BaseCommand):
    help = (
        "Recompute the status of events shown queued or delivering whose deliveries have all ended. "
        "Before session 23's fix two endpoints' outcomes recorded at once could leave an event so "
        "for good; run once after upgrading. Safe to run any time: it changes only what is wrong."
    )

    def add_arguments(self, parser):
        parser.add_argument("--batch-size", type=int, default=1000, help="Events rechecked per transaction.")

    def handle(self, *args, batch_size: int, **options):
        if batch_size < 1:
            raise CommandError("--batch-size must be at least 1.")
        changed = events_status_recheck(batch_size=batch_size)
        self.stdout.write(f"{changed} events had a status their deliveries no longer gave; now corrected.")
