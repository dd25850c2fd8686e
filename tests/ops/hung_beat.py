"""A beat scheduler with one job that never ends, for the tests of integrator.beat.StaleWatch:
`celery beat --scheduler tests.ops.hung_beat:HungJobScheduler` (run from the repository's root)."""

from __future__ import annotations

import threading

from integrator.beat import HeartbeatScheduler, Job


class HungJobScheduler(HeartbeatScheduler):
    def setup_schedule(self) -> None:
        super().setup_schedule()
        # Asked once at start, after a first healthy tick has had its chance.
        hung = self.jobs["hung"] = Job("hung", threading.Event().wait)
        threading.Timer(1.0, hung.ask).start()
