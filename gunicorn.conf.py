"""gunicorn reads this file from the working directory. It only keeps Prometheus' multiprocess
files honest: a clean directory at start, and a dead worker's live values dropped."""

import os

_multiproc_dir = os.environ.get("PROMETHEUS_MULTIPROC_DIR", "")


def on_starting(server):
    if _multiproc_dir:
        from integrator.metrics import multiproc_dir_reset

        multiproc_dir_reset(_multiproc_dir)


def child_exit(server, worker):
    if _multiproc_dir:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid, _multiproc_dir)
