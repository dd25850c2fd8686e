"""One event's fan-out in one worker process, without Celery:
`python -m bench.fanout_cpu [N] [--rounds R] [--endpoints E]`.

E subscriptions (20) of bench.subscriber (an instant endpoint, in a process of its own) want the
seed event; each fan-out is one event pushed through the WSGI application (the single-ingest
path), then routing.fanout.deliveries_fan_out on its deliveries, as a worker's task calls it, on
the DATABASE_URL and REDIS_URL of the environment (production shape, as bench.pump_cpu). A round
is N fan-outs (50) after warm ones (connections kept open, statements prepared). Prints the median
over the round's fan-outs of each figure, for each round, and the median of the rounds:

- CPU (time.process_time, the whole process) of the fan-out, of its claim, of its sends (the
  threads' `_send_all`) and of its recording;
- wall time of the claim and of the sends, and within the sends, from their start to the first
  request written, from the first write to the last, and from the start to the last reply read
  (the socket write each request makes, and the sends' end).

The figures are read by wrapping module functions and the connections' write, so the tool runs
unchanged on another checkout: `PYTHONPATH=. python /path/to/bench/fanout_cpu.py` from its root.
"""

from __future__ import annotations

import json
import os
import socket
import statistics
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.plan import SEED
from bench.push_cpu import _environ, tool_args, tool_start, tool_stop, wsgi_call


def main(argv: list[str]) -> None:
    count, _, rounds_count = tool_args(argv, count=50, name="fanout-cpu")
    endpoints = int(argv[argv.index("--endpoints") + 1]) if "--endpoints" in argv else 20
    os.environ["HUB_ALLOW_PRIVATE_DESTINATIONS"] = "1"
    # The pushes' fan-out messages go to a queue of their own, purged at the end.
    os.environ["CELERY_QUEUE"] = f"fanout-cpu-{os.getpid()}"
    import django

    django.setup()

    from django.core.management import call_command

    call_command("migrate", verbosity=0, interactive=False)

    import routing.fanout as fanout
    from events.models import Store
    from routing.models import Delivery, Subscription
    from routing.transport.kept import KeptConnectionMixin

    port, subscriber, app = tool_start(as_worker=True)
    tag = f"fcpu{os.getpid()}"
    Subscription.objects.update(is_enabled=False)
    Subscription.objects.filter(name__startswith="fanout-cpu-").delete()
    store = Store(name=f"fanout-cpu-{tag}")
    token = store.token_set_new()
    store.save()
    subs = [
        Subscription.objects.create(
            name=f"fanout-cpu-{n}", url=f"http://127.0.0.1:{port}/f/{n}", message_types=["order:new"], max_in_flight=4
        )
        for n in range(endpoints)
    ]
    seed = json.loads(Path(SEED).read_text())
    serial = iter(range(10**9))

    # What one fan-out's pieces took: CPU and wall, by name; the writes' times.
    spent: dict[str, tuple[float, float]] = {}
    writes: list[float] = []
    lock = threading.Lock()

    def timed(name: str, call: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            cpu, wall = time.process_time(), time.perf_counter()
            try:
                return call(*args, **kwargs)
            finally:
                spent[name] = (time.process_time() - cpu, time.perf_counter() - wall)
                spent[f"{name}@"] = (cpu, wall)

        return wrapper

    fanout.fanout_claim = timed("claim", fanout.fanout_claim)
    fanout._send_all = timed("send", fanout._send_all)
    fanout._close = timed("record", fanout._close)
    send = KeptConnectionMixin.send

    def send_noted(self: Any, data: Any) -> None:
        send(self, data)
        at = time.perf_counter()
        with lock:
            writes.append(at)

    KeptConnectionMixin.send = send_noted  # type: ignore[method-assign]

    def push() -> list[int]:
        k = next(serial)
        event = json.loads(json.dumps(seed))
        event["message_id"] = f"{tag}-{k}"
        event["payload"]["order"]["number"] = f"R{tag}-{k}"
        status, _ = wsgi_call(app, _environ(json.dumps(event).encode(), token))
        if not status.startswith(("200", "202")):
            raise SystemExit(f"push answered {status}")
        return list(Delivery.objects.filter(event__message_id=f"{tag}-{k}").values_list("pk", flat=True))

    def one() -> dict[str, float]:
        ids = push()
        if len(ids) != endpoints:
            raise SystemExit(f"the push made {len(ids)} deliveries, not {endpoints}")
        writes.clear()
        cpu = time.process_time()
        result = fanout.deliveries_fan_out(delivery_ids=ids)
        cpu = time.process_time() - cpu
        if list(result.verdicts.values()).count("delivered") != endpoints:
            raise SystemExit(f"the fan-out delivered {result.verdicts}")
        started = spent["send@"][1]
        return {
            "cpu": cpu,
            "claim_cpu": spent["claim"][0],
            "send_cpu": spent["send"][0],
            "record_cpu": spent["record"][0],
            "claim_wall": spent["claim"][1],
            "send_wall": spent["send"][1],
            "first_write": min(writes) - started,
            "writes": max(writes) - min(writes),
        }

    def median_of(rows: list[dict[str, float]]) -> dict[str, float]:
        return {key: statistics.median(row[key] for row in rows) for key in rows[0]}

    try:
        for _ in range(30):
            if subscriber.poll() is None and socket.socket().connect_ex(("127.0.0.1", port)) == 0:
                break
            time.sleep(0.1)
        for _ in range(10):  # warm: connections, prepared statements, caches
            one()
        rounds = []
        for number in range(rounds_count):
            row = median_of([one() for _ in range(count)])
            rounds.append(row)
            print(f"round {number + 1}: " + ", ".join(f"{k} {v * 1e3:.2f}" for k, v in row.items()), flush=True)
        print("median of rounds (ms): " + ", ".join(f"{k} {v * 1e3:.2f}" for k, v in median_of(rounds).items()))
    finally:
        tool_stop(subscriber)
        Delivery.objects.filter(subscription__in=subs).delete()
        Subscription.objects.filter(pk__in=[s.pk for s in subs]).delete()


if __name__ == "__main__":
    main(sys.argv[1:])
