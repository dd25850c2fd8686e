"""gunicorn's settings: the worker class, and Prometheus' multiprocess files kept honest (a clean
directory at start, a dead worker's live values dropped)."""

import os

_multiproc_dir = os.environ.get("PROMETHEUS_MULTIPROC_DIR", "")
# As HUB_METRICS_DIR_RESET in integrator/settings.py (not loaded in gunicorn's master): false when the
# directory is shared with a Celery worker that may already have written to it (scripts/serve).
_multiproc_dir_reset = os.environ.get("HUB_METRICS_DIR_RESET", "").strip().lower() not in {"0", "false", "no", "off"}


def on_starting(server):
    if _multiproc_dir and _multiproc_dir_reset:
        from infra.metrics import multiproc_dir_reset

        multiproc_dir_reset(_multiproc_dir)


def post_worker_init(worker):
    # Import everything the first request would, then freeze it: the cyclic collector no longer
    # walks Django's and DRF's objects at every full collection.
    import gc

    from django.urls import get_resolver

    get_resolver().check()  # imports the URL conf, and with it every view
    gc.collect()
    gc.freeze()


def child_exit(server, worker):
    from integrator.gunicorn_worker import worker_exited

    worker_exited(worker)
    if _multiproc_dir:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid, _multiproc_dir)


# More threads cost more than they gave on two cores: batch ingest fell and a web worker's peak
# RSS grew with them (6 and 16 were measured: docs/performance.md). The worker
# receives a request before a thread takes it, so slow clients hold none, and shares out new
# connections with the other workers.
worker_class = "integrator.gunicorn_worker.BufferingThreadWorker"
threads = 4

# gunicorn's access and error lines in the hub's JSON shape, under the same switch as Django's
# LOGGING in integrator/settings.py (JSON unless LOG_JSON says otherwise).
if os.environ.get("LOG_JSON", "").strip().lower() in {"", "1", "true", "yes", "on"}:
    logger_class = "integrator.gunicorn_logging.JsonLogger"

# gunicorn's control socket defaults to one path per user ($HOME/.gunicorn/gunicorn.ctl): two hubs
# on one host (web replicas, a benchmark beside a dev server) would take it from each other.
control_socket_disable = True
