import os
import sys

from django.core.management.base import BaseCommand, CommandError

from ops.manage.commands import command_actor
from ops.manage.document import DocumentInvalid, document_load, hub_apply


class Command(BaseCommand):
    help = (
        "Make the hub's stores, subscriptions and schedules match a file (YAML or JSON, as hubexport writes). "
        "Idempotent: a second run changes nothing. Every item is validated before anything is written, "
        "all in one transaction. Nothing is deleted without --prune."
    )

    def add_arguments(self, parser):
        parser.add_argument("file", help="The file; '-' reads stdin (YAML or JSON).")
        parser.add_argument("--dry-run", action="store_true", help="Validate and say what would change; write nothing.")
        parser.add_argument(
            "--prune",
            action="store_true",
            help="Delete schedules, subscriptions and stores the file does not name (a store with events is "
            "disabled instead).",
        )

        parser.add_argument(
            "--secrets-file",
            help="Write the secrets of what is created (tokens, signing secrets) to this file, readable by its "
            "owner only, instead of printing them: keeps them out of CI logs.",
        )

    def handle(self, *args, file: str, dry_run: bool, prune: bool, secrets_file: str | None, **options):
        try:
            document = document_load(file, sys.stdin.read() if file == "-" else None)
            result = hub_apply(document, actor=command_actor("hubapply"), dry_run=dry_run, prune=prune)
        except DocumentInvalid as exc:
            raise CommandError(f"{exc} (nothing was written)") from None
        except OSError as exc:
            raise CommandError(f"{file}: {exc.strerror}") from None
        for change in result.changes:
            self.stdout.write(("would " if dry_run else "") + str(change))
        lines = [f"{what} of '{name}' (shown only now): {secret}" for what, name, secret in result.secrets]
        if secrets_file and lines:
            descriptor = os.open(secrets_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(descriptor, "w", encoding="utf-8") as out:
                out.write("\n".join(lines) + "\n")
            self.stdout.write(f"{len(lines)} secrets written to {secrets_file}.")
        else:
            for line in lines:
                self.stdout.write(line)
        count = len(result.changes)
        self.stdout.write(f"{'Dry run: ' if dry_run else ''}{count} change{'' if count == 1 else 's'}.")
