from bench.peer.celery import app


@app.task(ignore_result=True)
def naive_deliver(event_id: int) -> None:
    """The naive baseline's delivery task: only ever published here (no peer worker runs)."""
