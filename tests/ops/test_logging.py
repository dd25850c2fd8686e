import io
import json
import logging
import subprocess
import sys
import time

import pytest
from pythonjsonlogger.orjson import OrjsonFormatter

from infra.logrecords import records_log
from integrator import logfilters
from integrator.logfilters import REDACTED, SecretRedactionFilter, secrets_redact
from integrator.logformat import JsonFormatter
from tests.ops.conftest import gunicorn_start, http_get, hub_env

WHSEC = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
TOKEN = "hub_" + "Ab3" * 15


def configured_handler() -> tuple[logging.Handler, io.StringIO]:
    """A handler with the formatter and filters settings.LOGGING gave the console handler."""
    console = next(
        h for h in logging.getLogger().handlers if any(isinstance(f, SecretRedactionFilter) for f in h.filters)
    )
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(console.formatter)
    for item in console.filters:
        handler.addFilter(item)
    return handler, stream


def log_lines(emit) -> list[dict]:
    handler, stream = configured_handler()
    logger = logging.getLogger("tests.ops.logging")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        emit(logger)
    finally:
        logger.removeHandler(handler)
    return [json.loads(line) for line in stream.getvalue().splitlines() if line.strip()]


def test_log_lines_are_json_with_event_delivery_and_subscription():
    (line,) = log_lines(
        lambda log: log.info("delivery attempted", extra={"event_id": "e-1", "delivery_id": 42, "subscription": "erp"})
    )
    assert line["message"] == "delivery attempted"
    assert line["levelname"] == "INFO"
    assert line["name"] == "tests.ops.logging"
    assert (line["event_id"], line["delivery_id"], line["subscription"]) == ("e-1", 42, "erp")


def test_secrets_in_the_message_and_its_arguments_are_masked():
    (line,) = log_lines(lambda log: log.warning("signing with %s for store token %s", WHSEC, TOKEN))
    assert WHSEC not in json.dumps(line) and TOKEN not in json.dumps(line)
    assert line["message"] == f"signing with whsec_{REDACTED} for store token hub_{REDACTED}"


def test_management_keys_are_masked():
    key = "hubm_" + "Xy9" * 15
    (line,) = log_lines(lambda log: log.warning("key %s used", key))
    assert key not in json.dumps(line) and line["message"] == f"key hubm_{REDACTED} used"


def test_authorization_headers_and_secret_fields_in_extra_are_masked():
    headers = {
        "Authorization": f"Bearer {TOKEN}",
        "X-Hub-Token": "subscription-token-value",
        "Content-Type": "application/json",
    }
    (line,) = log_lines(
        lambda log: log.info(
            "request sent",
            extra={
                "headers": headers,
                "signing_secret": WHSEC,
                "delivery_id": 7,
                "note": "Authorization: Basic dXNlcg==",
            },
        )
    )
    text = json.dumps(line)
    assert TOKEN not in text and WHSEC not in text and "subscription-token-value" not in text and "dXNlcg" not in text
    assert line["headers"]["Authorization"] == REDACTED
    assert line["headers"]["X-Hub-Token"] == REDACTED
    assert line["headers"]["Content-Type"] == "application/json"
    assert line["signing_secret"] == REDACTED
    assert line["delivery_id"] == 7


def test_tracebacks_are_masked_too():
    def emit(log):
        try:
            raise ValueError(f"bad secret {WHSEC}")
        except ValueError:
            log.exception("delivery crashed", extra={"delivery_id": 3})

    (line,) = log_lines(emit)
    assert "ValueError: bad secret whsec_[redacted]" in line["exc_info"]
    assert WHSEC not in json.dumps(line)


def test_redaction_keeps_ordinary_names_readable():
    assert secrets_redact("database hub_ops, metric hub_events_accepted_total") == (
        "database hub_ops, metric hub_events_accepted_total"
    )
    assert secrets_redact("postgres://hub:pa55word@db:5432/hub") == f"postgres://hub:{REDACTED}@db:5432/hub"
    assert secrets_redact({"token_hint": "hub_abc123"}) == {"token_hint": "hub_abc123"}
    assert secrets_redact(["bearer abc.def", 3]) == [f"bearer {REDACTED}", 3]


@pytest.mark.django_db(transaction=True)
def test_gunicorn_access_lines_are_json_fields_with_secrets_masked(python):
    server, port = gunicorn_start(
        python, hub_env(LOG_LEVEL="INFO"), "--workers=1", "--access-logfile=-", stdout=subprocess.PIPE
    )
    try:
        http_get(f"http://127.0.0.1:{port}/healthz?token={TOKEN}", time.monotonic() + 60, **{"User-Agent": "probe/1"})
    finally:
        server.terminate()
        out, err = server.communicate(timeout=30)
    assert server.returncode == 0, err.decode()[-2000:]
    access = [json.loads(line) for line in out.decode().splitlines() if line.startswith("{")]
    line = next(item for item in access if item.get("path") == "/healthz")
    assert line["name"] == "gunicorn.access"
    assert (line["method"], line["status"], line["user_agent"]) == ("GET", 200, "probe/1")
    assert isinstance(line["duration_ms"], float) and line["response_bytes"] > 0
    assert TOKEN not in out.decode() and TOKEN not in err.decode()
    # gunicorn's own error log (start, workers booting) is JSON too.
    errors = [json.loads(line) for line in err.decode().splitlines() if line.strip()]
    assert any(item["name"] == "gunicorn.error" for item in errors)


def test_extra_fields_are_masked_by_name_whatever_their_type_and_on_every_line():
    extra = {
        "api_key": 123456,
        "password": None,
        "delivery_id": 9,
        "latency_ms": 1.5,
        "succeeded": True,
        "error": None,
        "destination_host": f"postgres://u:{WHSEC}@db",
        "verdict": "delivered",
    }
    lines = log_lines(lambda log: [log.info("delivery attempt", extra=extra) for _ in range(2)])
    for line in lines:
        assert line["api_key"] == line["password"] == REDACTED
        assert (line["delivery_id"], line["latency_ms"], line["succeeded"], line["error"]) == (9, 1.5, True, None)
        assert line["destination_host"] == f"postgres://u:{REDACTED}@db" and line["verdict"] == "delivered"
    assert len(lines) == 2


def _records() -> list[logging.LogRecord]:
    """Records of every shape a line can take: extras (one with a non-string key), a dict message,
    a traceback, a stack, times on either side of a second and before the epoch's first."""
    log = logging.getLogger("tests.ops.logging")
    made = [
        log.makeRecord(log.name, logging.INFO, "f.py", 1, "delivery attempt", (), None, extra=extra)
        for extra in (None, {"event_id": "e-1", "delivery_id": 4, "error": None, 7: "seven", "_hidden": 1})
    ]
    made.append(log.makeRecord(log.name, logging.WARNING, "f.py", 2, {"asked": [1, 2]}, (), None))
    try:
        raise ValueError("boom")
    except ValueError:
        made.append(log.makeRecord(log.name, logging.ERROR, "f.py", 3, "failed %s", ("x",), sys.exc_info()))
    made.append(log.makeRecord(log.name, logging.INFO, "f.py", 4, "here", (), None, sinfo="Stack (most recent)"))
    for created in (1_700_000_000.999, 1_700_000_001.0, 1_700_000_001.5, 0.25):
        record = log.makeRecord(log.name, logging.INFO, "f.py", 5, "at %d", (int(created),), None)
        record.created, record.msecs = created, int((created - int(created)) * 1000) + 0.0
        made.append(record)
    return made


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"datefmt": "%H:%M"},
        {"rename_fields": {"levelname": "level"}},
        {"static_fields": {"service": "hub"}},
        {"defaults": {"zone": "eu"}},
        {"timestamp": True},
        {"rename_fields": {"missing": "gone"}, "rename_fields_keep_missing": True},
    ],
)
def test_the_json_formatter_writes_the_lines_python_json_logger_writes(options):
    fmt = "%(asctime)s %(levelname)s %(name)s %(message)s"
    ours, theirs = JsonFormatter(fmt, **options), OrjsonFormatter(fmt, **options)
    for record in _records():
        for _ in range(2):  # the second time from what the first left behind
            assert ours.format(logging.makeLogRecord(record.__dict__)) == theirs.format(
                logging.makeLogRecord(record.__dict__)
            )


def test_only_values_without_a_secret_are_remembered_as_clean():
    extra = {"destination_host": f"postgres://u:{WHSEC}@db", "subscription": TOKEN, "verdict": "delivered"}
    lines = log_lines(lambda log: [log.info("delivery attempt %s", TOKEN, extra=extra) for _ in range(3)])
    for line in lines:
        assert WHSEC not in json.dumps(line) and TOKEN not in json.dumps(line)
        assert line["verdict"] == "delivered"
    assert len(lines) == 3
    assert not any(WHSEC in text or TOKEN in text for text in logfilters._HINTLESS)


def _logged(emit) -> tuple[str, list[dict]]:
    """What the configured handler writes of `emit(logger)`'s lines, and each record's fields as
    the logger's filters see them (before the redaction). Each line's time is 0.4 s after the
    last's, a clock that moves only when a record is handled."""
    handler, stream = configured_handler()
    logger = logging.getLogger("tests.ops.logging")
    records: list[dict] = []

    def noted(record: logging.LogRecord) -> bool:
        records.append(dict(record.__dict__))
        return True

    logger.addHandler(handler)
    logger.addFilter(noted)
    logger.setLevel(logging.INFO)
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(time, "time", lambda: 1_700_000_000.7 + 0.4 * len(records))
            emit(logger)
    finally:
        logger.removeFilter(noted)
        logger.removeHandler(handler)
    return stream.getvalue(), records


# A batch's outcome lines: secrets in a value, by a field's name, in a nested value; a fan-out's.
_OUTCOMES = [
    {
        "event_id": "e-1",
        "delivery_id": 1,
        "subscription": "erp",
        "status_code": 200,
        "verdict": "delivered",
        "error": None,
    },
    {"event_id": "e-2", "delivery_id": 2, "subscription": TOKEN, "status_code": None, "error": f"Bearer {TOKEN}"},
    {"event_id": "e-3", "delivery_id": 3, "api_key": "k", "headers": {"authorization": WHSEC}, "fan_out": True},
    {"event_id": "e-4", "delivery_id": 4, "latency_ms": 1.5, "destination_host": f"postgres://u:{WHSEC}@db"},
]


def test_lines_from_one_record_copied_are_the_lines_and_records_logger_info_makes_one_by_one():
    def each(log: logging.Logger) -> None:
        for extra in _OUTCOMES:
            log.info("delivery attempt", extra=extra)

    def copied(log: logging.Logger) -> None:
        records_log(log, logging.INFO, "delivery attempt", _OUTCOMES)

    theirs, their_records = _logged(each)
    ours, our_records = _logged(copied)
    assert ours == theirs
    assert len(ours.splitlines()) == len(_OUTCOMES) and TOKEN not in ours and WHSEC not in ours
    # Seconds apart: each line has its own time.
    assert len({json.loads(line)["asctime"] for line in ours.splitlines()}) == len(_OUTCOMES)
    # Each record notes its caller's line, as logger.info does.
    for record in our_records:
        assert (record.pop("funcName"), record.pop("lineno")) == ("copied", copied.__code__.co_firstlineno + 1)
    for record in their_records:
        assert (record.pop("funcName"), record.pop("lineno")) == ("each", each.__code__.co_firstlineno + 2)
    assert our_records == their_records
    assert [list(r) for r in our_records] == [list(r) for r in their_records]


def test_lines_from_a_record_factory_of_its_own_are_made_one_by_one():
    made = logging.getLogRecordFactory()
    calls = iter(range(1000))

    def numbered(*args, **kwargs) -> logging.LogRecord:
        record = made(*args, **kwargs)
        record.call = next(calls)
        return record

    logging.setLogRecordFactory(numbered)
    try:
        _, records = _logged(lambda log: records_log(log, logging.INFO, "delivery attempt", _OUTCOMES[:2]))
    finally:
        logging.setLogRecordFactory(made)
    assert [r["call"] for r in records] == [0, 1]
    assert {r["funcName"] for r in records} == {"<lambda>"}


def test_an_extra_field_that_would_overwrite_the_records_own_is_refused_as_logger_info_refuses_it():
    for name in ("message", "lineno"):
        with pytest.raises(KeyError, match=f"Attempt to overwrite '{name}' in LogRecord"):
            records_log(logging.getLogger("tests.ops.logging"), logging.WARNING, "x", [{"a": 1}, {name: 1}])
