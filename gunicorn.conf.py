"""gunicorn reads this file from the working directory. It picks the worker class and keeps
Prometheus' multiprocess files honest: a clean directory at start, and a dead worker's live values
dropped."""

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
    # The application is loaded by now; its URLs import the views, DRF and the rest, which would
    # otherwise wait for the first request. All that (~90,000 objects) is what the cyclic
    # collector walked at every full collection, 30-50 ms each and several a second under load
    # (docs/performance.md, fourth round). Frozen, it is left out of collections for good.
    import gc

    from django.urls import get_resolver

    get_resolver().check()  # imports the URL conf, and with it every view
    gc.collect()
    gc.freeze()


def child_exit(server, worker):
    if _multiproc_dir:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid, _multiproc_dir)


# Threads, not only processes: a request spends most of its time waiting on PostgreSQL (the commit
# that makes an event durable) and Redis, and a thread lets the process serve another request
# meanwhile. Measured in docs/performance.md: about 1.15x the events/s of sync workers, lower p99.
# Each thread keeps its own database connection (DB_CONN_MAX_AGE): workers x threads in all.
# The class is gthread with each request received by the worker's event loop before a thread takes
# it, so clients that send slowly never hold a thread (integrator/gunicorn_worker.py); keep it when
# overriding --threads. Override on the command line or with GUNICORN_CMD_ARGS.
worker_class = "integrator.gunicorn_worker.BufferingThreadWorker"
threads = 4

# gunicorn's access and error lines in the hub's JSON shape, under the same switch as Django's
# LOGGING in integrator/settings.py (JSON unless LOG_JSON says otherwise).
if os.environ.get("LOG_JSON", "").strip().lower() in {"", "1", "true", "yes", "on"}:
    logger_class = "integrator.gunicorn_logging.JsonLogger"

# gunicorn's control socket defaults to one path per user ($HOME/.gunicorn/gunicorn.ctl): two hubs
# on one host (web replicas, a benchmark beside a dev server) would take it from each other.
control_socket_disable = True
