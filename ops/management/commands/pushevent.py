import argparse
import sys

from django.core.management.base import BaseCommand, CommandError
from tqdm import tqdm

from events.errors import HubError
from events.models import Store
from ops.envelope_files import UnreadableFile, envelopes_count, envelopes_read
from ops.services import envelope_push


class Command(BaseCommand):
    help = (
        "Push events from JSON files as a store would (same validation, dedup and routing as "
        "POST /events). A file holds one envelope, a JSON array of them, or JSON lines; '-' reads stdin."
    )

    def add_arguments(self, parser):
        parser.add_argument("files", nargs="+", metavar="FILE")
        parser.add_argument("--store", required=True, help="The name of the store the events come from.")
        parser.add_argument(
            "--progress",
            action=argparse.BooleanOptionalAction,
            default=None,
            help="Show a progress bar (default: when pushing more than one event to a terminal).",
        )

    def handle(self, *args, files: list[str], store: str, progress: bool | None, **options):
        found = Store.objects.filter(name=store).first()
        if found is None:
            raise CommandError(f"No store named '{store}' (create one with `manage.py createstore {store}`).")
        if not found.is_active:
            raise CommandError(f"The store '{store}' is disabled: the API would refuse its events too.")
        verbosity = options["verbosity"]
        counts = {"accepted": 0, "duplicates": 0, "rejected": 0}
        for path in files:
            try:
                total = envelopes_count(path)
                items = envelopes_read(path)
                show = progress if progress is not None else (total or 2) > 1 and sys.stderr.isatty()
                with tqdm(items, total=total, desc=path, unit="event", disable=not show, file=sys.stderr) as bar:
                    for item in bar:
                        self.push_one(found, item, counts, verbosity)
            except UnreadableFile as exc:
                counts["rejected"] += 1
                self.stderr.write(f"{exc}")
        self.stdout.write(
            f"{counts['accepted']} accepted, {counts['duplicates']} duplicates, {counts['rejected']} rejected "
            f"(store '{store}')."
        )
        if counts["rejected"]:
            raise CommandError(f"{counts['rejected']} could not be pushed; see the messages above.")

    def push_one(self, store: Store, item, counts: dict[str, int], verbosity: int) -> None:
        if item.error is not None:
            counts["rejected"] += 1
            self.stderr.write(f"{item.where}: malformed_json: {item.error}")
            return
        try:
            result = envelope_push(store=store, data=item.data)
        except HubError as exc:
            counts["rejected"] += 1
            field = f" (field: {exc.field})" if exc.field else ""
            self.stderr.write(f"{item.where}: {exc.code}: {exc.detail}{field}")
            return
        counts["accepted" if result.created else "duplicates"] += 1
        if verbosity >= 2:
            kind = "accepted" if result.created else "duplicate"
            self.stdout.write(f"{item.where}: {kind} {result.event.message} event {result.event.uid}")
