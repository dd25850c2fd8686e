from pathlib import Path

from django.core.management.base import BaseCommand

from ops.manage.document import document_dump, hub_export


class Command(BaseCommand):
    help = (
        "Write the hub's stores, subscriptions and their schedules as a file hubapply reads (YAML, or JSON "
        "for a .json file or --json). Secrets, tokens, subscription parameters and schedules' run state "
        "are left out."
    )

    def add_arguments(self, parser):
        parser.add_argument("file", nargs="?", help="Where to write it; stdout when left out or '-'.")
        parser.add_argument("--json", action="store_true", help="JSON instead of YAML.")

    def handle(self, *args, file: str | None, json: bool, **options):
        as_json = json or bool(file and file.endswith(".json"))
        text = document_dump(hub_export(), as_json=as_json)
        if file in (None, "-"):
            self.stdout.write(text, ending="")
        else:
            Path(file).write_text(text, encoding="utf-8")
            self.stderr.write(f"Wrote {file}.")
