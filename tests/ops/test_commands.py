import io
import json
import re
from datetime import timedelta

import pytest
from django.core.management import CommandError, call_command
from django.db import connection
from django.db.models import Q
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from events.models import Event, EventDescendants
from routing.models import Attempt, Delivery, DeliveryState, Notification, Schedule
from tests.factories import DeliveryFactory, StoreFactory, SubscriptionFactory

pytestmark = pytest.mark.django_db


def run(*args, **options) -> tuple[str, str]:
    out, err = io.StringIO(), io.StringIO()
    call_command(*args, stdout=out, stderr=err, **options)
    return out.getvalue(), err.getvalue()


# --- pushevent ------------------------------------------------------------------------------


def test_pushevent_pushes_one_envelope_like_the_api(tmp_path, store):
    subscription = SubscriptionFactory(message_types=["order:*"])
    path = tmp_path / "order.json"
    path.write_text(
        json.dumps({"message": "order:update", "message_id": "R1-1", "payload": {"order": {"number": "R1"}}})
    )
    out, err = run("pushevent", str(path), "--store", store.name, verbosity=2)
    event = Event.objects.get()
    assert (event.store, event.message, event.message_id, event.resource_key) == (
        store,
        "order:updated",
        "R1-1",
        "order:R1",
    )
    # Routed exactly as POST /events routes: one delivery per matching subscription.
    assert list(Delivery.objects.values_list("subscription", flat=True)) == [subscription.pk]
    assert f"accepted order:updated event {event.uid}" in out
    assert "1 accepted, 0 duplicates, 0 rejected" in out


def test_pushevent_reads_arrays_and_json_lines_and_dedups(tmp_path, store):
    array = tmp_path / "batch.json"
    array.write_text(json.dumps([{"message": "order:new", "message_id": f"a{n}", "payload": {}} for n in range(3)]))
    lines = tmp_path / "more.jsonl"
    lines.write_text(
        "\n".join(json.dumps({"message": "product:new", "message_id": f"p{n}", "payload": {}}) for n in range(4))
        + "\n\n"
        + json.dumps({"message": "order:new", "message_id": "a0", "payload": {}})
        + "\n"
    )
    out, _ = run("pushevent", str(array), str(lines), "--store", store.name)
    assert "7 accepted, 1 duplicates, 0 rejected" in out
    assert Event.objects.filter(store=store).count() == 7


def test_pushevent_concatenated_objects_in_a_json_file_are_read_as_lines(tmp_path, store):
    path = tmp_path / "dump.json"
    path.write_text('{"message": "user:new", "payload": {}}\n{"message": "user:update", "payload": {}}\n')
    out, _ = run("pushevent", str(path), "--store", store.name)
    assert "2 accepted" in out
    assert sorted(Event.objects.values_list("message", flat=True)) == ["user:new", "user:updated"]


def test_pushevent_reports_each_rejection_with_its_place_and_fails(tmp_path, store):
    path = tmp_path / "mixed.jsonl"
    path.write_text(
        '{"message": "order:new", "payload": {}}\n'
        '{"message": "order:new", "payload": "not an object"}\n'
        '{"message": "order:new", "payload": {},}\n'
    )
    with pytest.raises(CommandError, match="2 could not be pushed"):
        run("pushevent", str(path), "--store", store.name)
    assert Event.objects.count() == 1


def test_pushevent_messages_for_rejections(tmp_path, store):
    path = tmp_path / "mixed.jsonl"
    path.write_text('{"message": "order:new", "payload": "x"}\n{"message": "order:new", "payload": {},}\n')
    out, err = io.StringIO(), io.StringIO()
    with pytest.raises(CommandError):
        call_command("pushevent", str(path), "--store", store.name, stdout=out, stderr=err)
    assert f"{path}:1: invalid_envelope: 'payload' must be a JSON object" in err.getvalue()
    assert "(field: payload)" in err.getvalue()
    assert f"{path}:2: malformed_json" in err.getvalue()
    assert "0 accepted, 0 duplicates, 2 rejected" in out.getvalue()


def test_pushevent_broken_json_file_says_where(tmp_path, store):
    path = tmp_path / "broken.json"
    path.write_text('{\n  "message": "order:new",\n  "payload": {...}\n}')
    err = io.StringIO()
    with pytest.raises(CommandError):
        call_command("pushevent", str(path), "--store", store.name, stdout=io.StringIO(), stderr=err)
    assert "malformed JSON at line 3" in err.getvalue()


def test_pushevent_shows_progress_for_many(tmp_path, store, capsys):
    path = tmp_path / "many.jsonl"
    path.write_text("".join(json.dumps({"message": "order:new", "payload": {"n": n}}) + "\n" for n in range(25)))
    call_command("pushevent", str(path), "--store", store.name, "--progress", stdout=io.StringIO())
    progress = capsys.readouterr().err
    assert "25/25" in progress and "event" in progress
    assert Event.objects.count() == 25


def test_pushevent_refuses_unknown_or_disabled_stores(tmp_path):
    path = tmp_path / "e.json"
    path.write_text('{"message": "order:new", "payload": {}}')
    with pytest.raises(CommandError, match="No store named 'ghost'"):
        run("pushevent", str(path), "--store", "ghost")
    disabled = StoreFactory(is_active=False)
    with pytest.raises(CommandError, match="disabled"):
        run("pushevent", str(path), "--store", disabled.name)
    assert Event.objects.count() == 0


# --- purge ----------------------------------------------------------------------------------


def make_event(store, *, days_old: float, states=(), parent=None) -> Event:
    created = timezone.now() - timedelta(days=days_old)
    event = Event.objects.create(
        store=store,
        message="order:new",
        message_id=f"m{Event.objects.count()}-{days_old}",
        payload={},
        created_at=created,
        parent=parent,
    )
    for state in states:
        delivery = Delivery.objects.create(
            event=event, subscription=SubscriptionFactory(), state=state, created_at=created
        )
        Attempt.objects.create(delivery=delivery, number=1, request_method="POST", request_url="http://x.test/")
        Notification.objects.create(event=event, delivery=delivery, subscription=delivery.subscription, subject="ok")
    return event


def test_purge_deletes_old_delivered_events_with_their_rows_and_keeps_the_rest(store):
    old_done = [make_event(store, days_old=40, states=[DeliveryState.DELIVERED]) for _ in range(5)]
    old_mixed = make_event(store, days_old=40, states=[DeliveryState.DELIVERED, DeliveryState.FAILED])
    old_waiting = make_event(store, days_old=40, states=[DeliveryState.RETRYING])
    old_cancelled = make_event(store, days_old=40, states=[DeliveryState.CANCELLED, DeliveryState.DELIVERED])
    young_done = make_event(store, days_old=1, states=[DeliveryState.DELIVERED])
    old_unrouted = make_event(store, days_old=40)

    out, _ = run("purge", "--days", "30", "--batch-size", "2")
    assert out.startswith("Deleted 6 events created before")
    remaining = set(Event.objects.values_list("pk", flat=True))
    assert remaining == {old_mixed.pk, old_waiting.pk, young_done.pk, old_unrouted.pk}
    assert not Delivery.objects.filter(event_id__in=[e.pk for e in [*old_done, old_cancelled]]).exists()
    assert Attempt.objects.filter(delivery__event__in=remaining).count() == Attempt.objects.count()
    assert Notification.objects.count() == Notification.objects.filter(event__in=remaining).count()

    out, _ = run("purge", "--days", "30", "--include-unrouted")
    assert out.startswith("Deleted 1 events")
    assert not Event.objects.filter(pk=old_unrouted.pk).exists()


def test_purge_dry_run_counts_and_deletes_nothing(store):
    for _ in range(3):
        make_event(store, days_old=10, states=[DeliveryState.DELIVERED])
    out, _ = run("purge", "--days", "7", "--dry-run", "--batch-size", "2")
    assert out.startswith("Dry run: 3 events created before")
    assert Event.objects.count() == 3


def test_purge_keeps_an_event_whose_reply_children_are_not_done(store):
    parent = make_event(store, days_old=40, states=[DeliveryState.DELIVERED])
    child = make_event(None, days_old=40, states=[DeliveryState.DELIVERED], parent=parent)
    make_event(None, days_old=2, states=[DeliveryState.DELIVERED], parent=child)
    other_parent = make_event(store, days_old=40, states=[DeliveryState.DELIVERED])
    other_child = make_event(None, days_old=40, states=[DeliveryState.DELIVERED], parent=other_parent)

    out, _ = run("purge", "--days", "30")
    # The grandchild is too young, so its ancestors stay; the other family goes whole.
    assert set(
        Event.objects.filter(pk__in=[parent.pk, child.pk, other_parent.pk, other_child.pk]).values_list("pk", flat=True)
    ) == {parent.pk, child.pk}
    assert out.startswith("Deleted 2 events")


def test_purge_takes_every_row_that_refers_to_a_purged_event_and_nothing_else(store):
    """A family (an event and its reply's event) with a replayed delivery, notifications on the
    event and on a delivery, the descendants' count and a schedule's last tick: all of it goes,
    the schedule stays (its last tick forgotten); a kept event keeps every row of its own."""
    parent = make_event(store, days_old=40, states=[DeliveryState.DELIVERED])
    child = make_event(None, days_old=40, states=[DeliveryState.DELIVERED], parent=parent)
    original = Delivery.objects.get(event=parent)
    replay = Delivery.objects.create(
        event=parent, subscription=original.subscription, state=DeliveryState.DELIVERED, replay_of=original
    )
    Attempt.objects.create(delivery=replay, number=1, request_method="POST", request_url="http://x.test/")
    Notification.objects.create(event=child, subject="about the event only")
    EventDescendants.objects.create(root=parent, count=1)
    schedule = Schedule.objects.create(subscription=original.subscription, interval_seconds=300, last_event=child)
    kept = make_event(store, days_old=40, states=[DeliveryState.FAILED])
    EventDescendants.objects.create(root=kept, count=0)
    kept_rows = rows_of([kept.pk])
    # 2 events, 3 deliveries, 3 attempts, 3 notifications, 1 count of descendants.
    assert len(rows_of([parent.pk, child.pk])) == 12

    out, _ = run("purge", "--days", "30")

    assert out.startswith("Deleted 2 events created before") and "(12 rows in all)" in out
    assert not rows_of([parent.pk, child.pk])
    assert rows_of([kept.pk]) == kept_rows
    schedule.refresh_from_db()
    assert schedule.last_event_id is None


def rows_of(event_ids: list[int]) -> set[tuple[str, int]]:
    """Every row that is an event of `event_ids` or refers to one (directly or by its delivery)."""
    deliveries = Delivery.objects.filter(event_id__in=event_ids)
    found = {("event", pk) for pk in Event.objects.filter(pk__in=event_ids).values_list("pk", flat=True)}
    found |= {("delivery", pk) for pk in deliveries.values_list("pk", flat=True)}
    found |= {("attempt", pk) for pk in Attempt.objects.filter(delivery__in=deliveries).values_list("pk", flat=True)}
    notes = Notification.objects.filter(Q(event_id__in=event_ids) | Q(delivery__in=deliveries))
    found |= {("notification", pk) for pk in notes.values_list("pk", flat=True)}
    found |= {
        ("descendants", pk)
        for pk in EventDescendants.objects.filter(root_id__in=event_ids).values_list("pk", flat=True)
    }
    return found


def test_purge_reads_no_event_into_memory(store):
    """Set-based: the database finds the rows to delete; Django's delete() read each event whole,
    payload and all (a batch of 1,000 large events was that many payloads in the command's memory)."""
    for _ in range(3):
        make_event(store, days_old=40, states=[DeliveryState.DELIVERED])
    with CaptureQueriesContext(connection) as queries:
        out, _ = run("purge", "--days", "30")
    assert out.startswith("Deleted 3 events")
    assert not [q["sql"] for q in queries.captured_queries if '"payload"' in q["sql"]]


def test_purge_knows_every_relation_to_an_event_or_a_delivery():
    """ops.services._family_delete deletes (or, for a schedule's last tick, clears) by hand what
    Django's delete() would cascade to: a new relation must be added there, or purging would fail on it."""
    relations = {
        (rel.related_model._meta.label, rel.field.name, rel.on_delete.__name__)
        for model in (Event, Delivery)
        # As Django's delete() finds them: hidden ones (related_name="+") included.
        for rel in model._meta.get_fields(include_hidden=True)
        if rel.auto_created and not rel.concrete and (rel.one_to_many or rel.one_to_one)
    }
    assert relations == {
        ("routing.Delivery", "event", "CASCADE"),
        ("routing.Delivery", "replay_of", "CASCADE"),
        ("routing.Attempt", "delivery", "CASCADE"),
        ("routing.Notification", "event", "CASCADE"),
        ("routing.Notification", "delivery", "CASCADE"),
        ("events.Event", "parent", "CASCADE"),
        ("events.EventDescendants", "root", "CASCADE"),
        ("routing.Schedule", "last_event", "SET_NULL"),
    }


def test_purge_rejects_nonsense():
    with pytest.raises(CommandError):
        run("purge", "--days", "0")


# --- hubstatus ------------------------------------------------------------------------------


def test_hubstatus_shows_states_oldest_waiting_and_failing_subscriptions(store):
    erp = SubscriptionFactory(name="erp")
    crm = SubscriptionFactory(name="crm", is_enabled=False, disabled_reason="failing for 5 days")
    SubscriptionFactory(name="healthy")
    now = timezone.now()

    def delivery(sub, state, hours_old=0.0):
        event = Event.objects.create(
            store=store, message="order:new", message_id=f"h{Event.objects.count()}", payload={}
        )
        created = now - timedelta(hours=hours_old)
        return Delivery.objects.create(
            event=event, subscription=sub, state=state, created_at=created, next_attempt_at=created
        )

    oldest = delivery(erp, DeliveryState.RETRYING, hours_old=3)
    delivery(erp, DeliveryState.PENDING, hours_old=1)
    delivery(erp, DeliveryState.FAILED)
    delivery(erp, DeliveryState.FAILED)
    delivery(crm, DeliveryState.FAILED)
    delivery(erp, DeliveryState.DELIVERED)

    out, _ = run("hubstatus")
    assert "  pending              1" in out
    assert "  failed               3" in out
    assert "  delivered            1" in out
    assert f"Oldest waiting delivery: #{oldest.pk} to 'erp' (retrying), created 3h00m ago" in out
    assert "Most overdue delivery has been due for: 3h00m" in out
    assert "  erp: 2 failed, 1 retrying, enabled" in out
    assert "  crm: 1 failed, 0 retrying, DISABLED (failing for 5 days)" in out
    assert "healthy" not in out

    report = json.loads(run("hubstatus", "--json")[0])
    assert report["deliveries"] == {
        "pending": 1,
        "delivering": 0,
        "delivered": 1,
        "retrying": 1,
        "failed": 3,
        "cancelled": 0,
    }
    assert report["oldest_waiting"]["delivery_id"] == oldest.pk
    assert report["oldest_waiting"]["age_seconds"] >= 3 * 3600
    assert [(s["name"], s["failed"], s["retrying"]) for s in report["failing_subscriptions"]] == [
        ("erp", 2, 1),
        ("crm", 1, 0),
    ]


def test_hubstatus_reads_only_the_failed_and_retrying_deliveries(store):
    """Its failing subscriptions come from the failed and retrying deliveries alone, which
    delivery_due holds, not a join of every delivery stored."""
    from ops.selectors import subscriptions_failing

    DeliveryFactory(state=DeliveryState.DELIVERED)
    failed = DeliveryFactory(state=DeliveryState.FAILED)
    with CaptureQueriesContext(connection) as captured:
        found = subscriptions_failing()
    assert [(f.name, f.failed, f.retrying) for f in found] == [(failed.subscription.name, 1, 0)]
    reads = [q["sql"] for q in captured.captured_queries if "routing_delivery" in q["sql"]]
    assert reads and all(re.search(r""""state" IN \('failed', 'retrying'\)""", sql) for sql in reads), reads


def test_hubstatus_on_an_empty_hub():
    out, _ = run("hubstatus")
    assert "Oldest waiting delivery: none" in out
    assert "Failing subscriptions: none" in out


# --- hubrecheck -----------------------------------------------------------------------------


def test_hubrecheck_corrects_only_events_whose_deliveries_all_ended_under_an_open_status():
    from events.models import EventStatus
    from tests.factories import EventFactory

    def event(status: str, *states: str) -> Event:
        made = EventFactory(status=status)
        for state in states:
            DeliveryFactory(event=made, state=state, attempt_count=1)
        return made

    # Left behind by a stale status refresh: every delivery ended, the event still open.
    behind = event(EventStatus.DELIVERING, DeliveryState.DELIVERED, DeliveryState.DELIVERED)
    half = event(EventStatus.QUEUED, DeliveryState.DELIVERED, DeliveryState.FAILED)
    # Right as they are.
    going = event(EventStatus.DELIVERING, DeliveryState.DELIVERED, DeliveryState.RETRYING)
    done = event(EventStatus.DELIVERED, DeliveryState.DELIVERED)
    unrouted = event(EventStatus.UNROUTED)

    out, _ = run("hubrecheck", "--batch-size", "1")

    assert out.startswith("2 events")
    statuses = dict(Event.objects.values_list("pk", "status"))
    assert statuses[behind.pk] == EventStatus.DELIVERED
    assert statuses[half.pk] == EventStatus.PARTIALLY_FAILED
    assert (statuses[going.pk], statuses[done.pk], statuses[unrouted.pk]) == (
        EventStatus.DELIVERING,
        EventStatus.DELIVERED,
        EventStatus.UNROUTED,
    )
    assert run("hubrecheck")[0].startswith("0 events")
