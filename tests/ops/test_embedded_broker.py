import json
import threading
import time
from queue import Empty
from typing import Any

from kombu import Connection, Exchange, Queue

from integrator.broker_fs import Transport


def test_filesystem_urls_use_the_atomic_transport():
    import integrator.celery  # noqa: F401 - registers the transport

    assert Connection("filesystem://").transport_cls == "filesystem"
    assert isinstance(Connection("filesystem://", transport_options={"data_folder_in": "/tmp"}).transport, Transport)


def test_publishing_to_the_embedded_broker_gives_no_missing_hostname_warning(tmp_path, caplog):
    import integrator.celery  # noqa: F401 - registers the transport

    options = {"data_folder_in": str(tmp_path), "data_folder_out": str(tmp_path)}
    with caplog.at_level("WARNING", logger="kombu"), Connection("filesystem://", transport_options=options) as conn:
        conn.SimpleQueue("q").put({"n": 1})
        assert conn.info()["hostname"] is None
    assert not [r for r in caplog.records if "hostname" in r.getMessage()]


def test_a_consumer_takes_its_first_queue_before_the_next(tmp_path):
    """As the Redis broker's "priority" order: the backlog lane only once the main queue is empty."""
    options = {"data_folder_in": str(tmp_path), "data_folder_out": str(tmp_path), "store_processed": False}
    queues = {name: Queue(name, Exchange(name), routing_key=name) for name in ("main", "lane")}
    taken: list[str] = []

    def take(body: dict, message: Any) -> None:
        taken.append(body["queue"])
        message.ack()

    with Connection("filesystem://", transport_options=options) as conn:
        producer = conn.Producer()
        for name in ("lane", "main", "lane", "main"):
            producer.publish({"queue": name}, exchange=queues[name].exchange, routing_key=name, declare=[queues[name]])
        with conn.Consumer([queues["main"], queues["lane"]], callbacks=[take]):
            for _ in range(4):
                conn.drain_events(timeout=2)
    assert taken == ["main", "main", "lane", "lane"]


def test_a_consumer_never_takes_a_half_written_message(tmp_path):
    """Real writers and a real reader on one folder, as web and worker processes share it: every
    message read is whole, and every message written is read once."""
    options = {"data_folder_in": str(tmp_path), "data_folder_out": str(tmp_path), "store_processed": False}
    payload = {"body": "x" * 20_000}
    sent = 1000
    errors: list[BaseException] = []
    received: list[int] = []

    def write(start: int) -> None:
        with Connection("filesystem://", transport_options=options) as conn:
            channel = conn.default_channel
            for n in range(start, sent, 2):
                channel._put("q", {**payload, "n": n})

    def read() -> None:
        deadline = time.monotonic() + 60
        with Connection("filesystem://", transport_options=options) as conn:
            channel = conn.default_channel
            while len(received) < sent and not errors and time.monotonic() < deadline:
                try:
                    received.append(channel._get("q")["n"])
                except Empty:
                    continue
                except json.JSONDecodeError as exc:
                    errors.append(exc)

    threads = [threading.Thread(target=write, args=(i,)) for i in (0, 1)] + [threading.Thread(target=read)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors
    assert sorted(received) == list(range(sent))
