import sys

from django.core.management.base import BaseCommand, CommandError

from ops.manage.commands import command_actor
from ops.manage.document import DocumentInvalid, document_load, hub_apply


class Command(BaseCommand):
    help = (
        "Make the hub's stores and subscriptions match a file (YAML or JSON, as hubexport writes). "
        "Idempotent: a second run changes nothing. Every item is validated before anything is written, "
        "all in one transaction. Nothing is deleted without --prune."
    )

    def add_arguments(self, parser):
        parser.add_argument("file", help="The file; '-' reads stdin (YAML or JSON).")
        parser.add_argument("--dry-run", action="store_true", help="Validate and say what would change; write nothing.")
        parser.add_argument(
            "--prune",
            action="store_true",
            help="Delete subscriptions and stores the file does not name (a store with events is disabled instead).",
        )

    def handle(self, *args, file: str, dry_run: bool, prune: bool, **options):
        try:
            document = document_load(file, sys.stdin.read() if file == "-" else None)
            result = hub_apply(document, actor=command_actor("hubapply"), dry_run=dry_run, prune=prune)
        except DocumentInvalid as exc:
            raise CommandError(f"{exc} (nothing was written)") from None
        except OSError as exc:
            raise CommandError(f"{file}: {exc.strerror}") from None
        for change in result.changes:
            self.stdout.write(("would " if dry_run else "") + str(change))
        for what, name, secret in result.secrets:
            self.stdout.write(f"{what} of '{name}' (shown only now): {secret}")
        count = len(result.changes)
        self.stdout.write(f"{'Dry run: ' if dry_run else ''}{count} change{'' if count == 1 else 's'}.")
