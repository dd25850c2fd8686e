"""The import layers of .importlinter bite: on a copy of the code, one upward import breaks the
contract and lint-imports names it; the copy as it is keeps it."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("integrator", "ops", "routing", "events", "infra")
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


@pytest.fixture
def code_copy(tmp_path: Path) -> Path:
    for package in PACKAGES:
        shutil.copytree(ROOT / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    shutil.copy(ROOT / ".importlinter", tmp_path / ".importlinter")
    return tmp_path


def lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    # Run in the copy, so that grimp reads the copy's packages and not the checkout's.
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache"], cwd=root, capture_output=True, text=True, env={"PATH": "/usr/bin:/bin"}
    )


def test_the_code_as_it_is_keeps_the_layers(code_copy):
    done = lint_imports(code_copy)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "2 kept, 0 broken" in done.stdout


@pytest.mark.parametrize(
    ("module", "statement", "named"),
    [
        ("events/upward.py", "from routing.models import Delivery\n", "events.upward -> routing.models"),
        ("routing/upward.py", "from integrator.celery import app\n", "routing.upward -> integrator.celery"),
        ("infra/upward.py", "import events.models\n", "infra.upward -> events.models"),
    ],
)
def test_an_upward_import_breaks_the_layers_and_is_named(code_copy, module, statement, named):
    (code_copy / module).write_text(statement)
    done = lint_imports(code_copy)
    assert done.returncode != 0, done.stdout
    assert "BROKEN" in done.stdout
    assert named in done.stdout


@pytest.mark.parametrize(
    ("module", "statement", "named"),
    [
        # A step reaching up the pipeline: the claim importing the pump that runs it.
        ("routing/claim.py", "from routing.pump import deliveries_pump\n", "routing.claim -> routing.pump"),
        # Anything importing the tasks: the wake-up publishes by name instead.
        ("routing/wakeup.py", "from routing.tasks import deliveries_pump_task\n", "routing.wakeup -> routing.tasks"),
        # The model back at the cache it used to clear from save().
        ("routing/models.py", "import routing.subscriptions\n", "routing.models -> routing.subscriptions"),
    ],
)
def test_an_import_up_routings_pipeline_breaks_its_layers_and_is_named(code_copy, module, statement, named):
    with (code_copy / module).open("a") as source:
        source.write(statement)
    done = lint_imports(code_copy)
    assert done.returncode != 0, done.stdout
    assert "Routing: each step imports only the steps below it BROKEN" in done.stdout
    assert named in done.stdout
