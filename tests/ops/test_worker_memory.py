"""What integrator/celery.py does to each pool process of a worker when it starts."""

from __future__ import annotations

import gc

from celery import signals

from integrator import celery as hub_celery


def test_a_pool_process_freezes_what_is_loaded_when_it_starts():
    # Connected weakly, as Celery's signals keep their receivers.
    assert hub_celery._worker_objects_freeze in [ref() for _, ref in signals.worker_process_init.receivers]
    gc.unfreeze()
    assert gc.get_freeze_count() == 0
    try:
        hub_celery._worker_objects_freeze()
        # Everything loaded so far (here: the test process, Django and the hub) is left out of
        # the cyclic collector's walks.
        assert gc.get_freeze_count() > 10_000
        assert gc.get_count()[0] < 100  # collected just before, so no garbage is frozen for good
    finally:
        gc.unfreeze()
