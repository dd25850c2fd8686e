"""Each hand-written statement (events.sql, routing.sql) writes and reads what the ORM would: the
same rows, column for column, on PostgreSQL and SQLite. The routed push's statement is checked
in tests/routing/test_routed_push.py."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.db.models import Q
from django.utils import timezone

from events.models import Event, EventStatus
from events.services import event_build, event_insert, events_insert
from events.validation import envelope_validate
from routing import sql
from routing.claim import batch_claim, subscription_read
from routing.leases import LEASE_EXPIRED_ERROR, Held, leases_renew
from routing.models import (
    DELIVERY_OPEN_STATES,
    DELIVERY_UNFINISHED_STATES,
    Attempt,
    Delivery,
    DeliveryState,
    Subscription,
)
from routing.record import _attempts_record, batch_finish
from routing.reply_forms import attempt_summary
from routing.send import Sent
from routing.status import events_status_refresh
from routing.transport.exchange import ExchangeResult
from tests.factories import DeliveryFactory, EventFactory, StoreFactory, SubscriptionFactory

pytestmark = pytest.mark.django_db

NAMING = ("id", "uid", "message_id", "created_at", "updated_at")


def _row(model, pk, *, drop=NAMING) -> dict:
    row = model.objects.filter(pk=pk).values().get()
    for name in drop:
        row.pop(name, None)
    return row


def _fields(instance) -> dict:
    return {f.attname: getattr(instance, f.attname) for f in instance._meta.concrete_fields}


def _envelope(message_id: str) -> dict:
    return {"message": "order:new", "message_id": message_id, "payload": {"order": {"number": "R1", "n": 1.5}}}


def test_the_event_insert_writes_the_row_save_writes():
    store = StoreFactory()
    by_hand = event_insert(event_build(store=store, envelope=envelope_validate(_envelope("hand")))).event
    by_orm = event_build(store=store, envelope=envelope_validate(_envelope("orm")))
    by_orm.save()
    assert _row(Event, by_hand.pk) == _row(Event, by_orm.pk)
    assert Event.objects.get(pk=by_hand.pk).payload == _envelope("x")["payload"]


def test_the_batch_insert_writes_the_rows_bulk_create_writes():
    store = StoreFactory()
    built = [event_build(store=store, envelope=envelope_validate(_envelope(f"hand-{n}"))) for n in range(3)]
    written = [result.event for result in events_insert(store=store, events=built)]
    by_orm = Event.objects.bulk_create(
        [event_build(store=store, envelope=envelope_validate(_envelope(f"orm-{n}"))) for n in range(3)]
    )
    assert [_row(Event, e.pk) for e in written] == [_row(Event, e.pk) for e in by_orm]


def test_the_deliveries_insert_writes_the_rows_bulk_create_writes():
    from routing.outbox import _deliveries_insert

    subs = [SubscriptionFactory(), SubscriptionFactory()]

    def built() -> list[Delivery]:
        return [Delivery.routed(event=e, subscription=sub) for e in (EventFactory(), EventFactory()) for sub in subs]

    by_hand = built()
    _deliveries_insert(by_hand)
    by_orm = Delivery.objects.bulk_create(built())
    assert all(not d._state.adding for d in by_hand)
    # Each id set on the row it belongs to.
    assert [(d.event_id, d.subscription_id) for d in by_hand] == [
        Delivery.objects.filter(pk=d.pk).values_list("event_id", "subscription_id").get() for d in by_hand
    ]
    drop = (*NAMING, "event_id", "next_attempt_at")
    assert [_row(Delivery, d.pk, drop=drop) for d in by_hand] == [_row(Delivery, d.pk, drop=drop) for d in by_orm]


def test_the_pumps_read_of_its_endpoint_is_select_related():
    sub = SubscriptionFactory(store=StoreFactory(), parameters=[{"name": "k", "value": "v"}])
    bare = SubscriptionFactory()
    for pk in (sub.pk, bare.pk):
        by_hand = subscription_read(pk)
        by_orm = Subscription.objects.select_related("store").get(pk=pk)
        assert _fields(by_hand) == _fields(by_orm)
        assert (by_hand.store and _fields(by_hand.store)) == (by_orm.store and _fields(by_orm.store))


def test_the_claim_takes_the_rows_an_orm_update_would_and_reads_them_as_select_related():
    sub = SubscriptionFactory()
    due = [DeliveryFactory(subscription=sub, event=EventFactory(resource_key=None)) for _ in range(2)]
    batch = batch_claim(sub=subscription_read(sub.pk), budget=1.0)
    assert [d.pk for d in batch.deliveries] == [d.pk for d in due]
    for claimed in batch.deliveries:
        by_orm = Delivery.objects.select_related("event", "event__store").get(pk=claimed.pk)
        assert _fields(claimed) == _fields(by_orm)
        assert _fields(claimed.event) == _fields(by_orm.event)
        assert _fields(claimed.event.store) == _fields(by_orm.event.store)
        assert (by_orm.state, by_orm.attempt_count, by_orm.claim) == (DeliveryState.DELIVERING, 1, batch.claim)


def _runs_by_orm(sub, *, now, batch: int) -> list[int]:
    """The batch the claim's rule gives, read through the ORM: every resource's oldest unfinished
    delivery when it is open and due (and every open, due one without a key) in claim order, a
    batch at most; then, place by place in the heads' turn, the open, due deliveries that follow
    each head in a row."""
    unfinished = Delivery.objects.filter(subscription=sub, state__in=DELIVERY_UNFINISHED_STATES)
    sendable = Q(state__in=DELIVERY_OPEN_STATES, next_attempt_at__lte=now)
    keys = set(unfinished.exclude(resource_key=None).values_list("resource_key", flat=True))
    heads = [unfinished.filter(resource_key=key).order_by("id").first() for key in keys]
    heads = [d for d in heads if d.state in DELIVERY_OPEN_STATES and d.next_attempt_at <= now]
    heads += list(unfinished.filter(sendable, resource_key=None))
    heads = sorted(heads, key=lambda d: (d.next_attempt_at, d.pk))[:batch]
    runs = []
    for head in heads:
        run = []
        if head.resource_key is not None:
            for d in unfinished.filter(resource_key=head.resource_key, pk__gt=head.pk).order_by("id"):
                if len(run) == batch - len(heads) or not (d.state in DELIVERY_OPEN_STATES and d.next_attempt_at <= now):
                    break
                run.append(d.pk)
        runs.append([head.pk, *run])
    placed = sorted((place, turn, pk) for turn, run in enumerate(runs) for place, pk in enumerate(run))
    return [pk for _, _, pk in placed][:batch]


def test_the_claim_takes_each_resources_run_as_the_orm_states_its_rule(settings):
    """Orders with a retried head (due, and not yet), a gap in a run, one still on the wire,
    finished ones before and within, and deliveries without a key: the hand-written claim takes
    what the rule read through the ORM takes, in that order."""
    settings.HUB_DELIVERY_BATCH_SIZE = 9
    sub = SubscriptionFactory(max_in_flight=0)
    now = timezone.now()
    later, earlier = now + timedelta(hours=1), now - timedelta(minutes=1)
    layout = {
        "order:A": ["delivered", "pending", "pending", "cancelled", "pending", "pending", "pending"],
        "order:B": [("retrying", earlier), "pending", "pending", ("retrying", later), "pending"],
        "order:C": [("retrying", later), "pending"],
        "order:D": ["delivering", "pending"],
        "order:E": ["pending", "pending", "pending"],
        None: ["pending", ("retrying", later), "pending"],
    }
    for key, states in layout.items():
        for n, state in enumerate(states):
            state, due = state if isinstance(state, tuple) else (state, now - timedelta(hours=1, seconds=-n))
            DeliveryFactory(
                subscription=sub,
                event=EventFactory(resource_key=key, payload={"n": n}),
                state=state,
                next_attempt_at=due,
                attempt_count=0 if state == "pending" else 1,
            )
    expected = _runs_by_orm(sub, now=now, batch=9)
    assert len(expected) == 9
    batch = batch_claim(sub=subscription_read(sub.pk), budget=1.0)
    assert [d.pk for d in batch.deliveries] == expected
    # A run past its head on this data: the test exercises what it names.
    assert len({d.resource_key for d in batch.deliveries if d.resource_key}) < len(
        [d for d in batch.deliveries if d.resource_key]
    )


def test_finishing_a_batch_writes_what_an_orm_update_writes():
    now = timezone.now()
    changes = {
        "state": DeliveryState.RETRYING,
        "next_attempt_at": now + timedelta(seconds=30),
        "lease_expires_at": None,
        "claim": None,
        "last_status_code": 500,
        "last_error": "HTTP 500",
        "updated_at": now,
    }
    by_hand, by_orm = (DeliveryFactory(state=DeliveryState.DELIVERING, claim=7) for _ in range(2))
    assert batch_finish([by_hand.pk], claims=[7], changes=changes) == 1
    assert Delivery.objects.filter(pk=by_orm.pk, state=DeliveryState.DELIVERING, claim=7).update(**changes) == 1
    drop = ("id", "event_id", "subscription_id", "created_at", "resource_key")
    assert _row(Delivery, by_hand.pk, drop=drop) == _row(Delivery, by_orm.pk, drop=drop)


def test_renewing_a_lease_writes_what_an_orm_update_writes(settings):
    now = timezone.now()
    hold_until = now + timedelta(minutes=1)
    by_hand, by_orm = (DeliveryFactory(state=DeliveryState.DELIVERING, claim=9) for _ in range(2))
    held = Held(subscription_id=by_hand.subscription_id, claim=9, hold_until=hold_until)
    assert leases_renew([held], now=now) == 1
    expires = min(now + timedelta(seconds=settings.HUB_LEASE_SECONDS), hold_until)
    Delivery.objects.filter(pk=by_orm.pk, state=DeliveryState.DELIVERING, claim=9).update(lease_expires_at=expires)
    leases = Delivery.objects.filter(pk__in=[by_hand.pk, by_orm.pk]).order_by("id")
    assert list(leases.values_list("lease_expires_at", flat=True)) == [expires, expires]


def test_an_events_status_is_written_as_an_orm_update_writes_it():
    by_hand = DeliveryFactory(state=DeliveryState.DELIVERED).event
    by_orm = DeliveryFactory(state=DeliveryState.DELIVERED).event
    assert events_status_refresh(event_ids=[by_hand.pk]) == {by_hand.pk: EventStatus.DELIVERED}
    Event.objects.filter(pk=by_orm.pk).update(status=EventStatus.DELIVERED)
    assert _row(Event, by_hand.pk, drop=(*NAMING, "store_id")) == _row(Event, by_orm.pk, drop=(*NAMING, "store_id"))


def test_recording_returned_objects_writes_what_create_writes_and_skips_what_is_recorded():
    from routing.models import ReturnedObject
    from routing.returned_objects import objects_claim

    sub = SubscriptionFactory()
    first = [("orders:R1", "d1"), ("orders:R2", "d2")]
    assert objects_claim(sub.pk, first) == set(first)
    # Recorded already (another reply's): not this call's.
    assert objects_claim(sub.pk, [("orders:R1", "d1"), ("orders:R3", "d3")]) == {("orders:R3", "d3")}
    by_hand = ReturnedObject.objects.get(subscription=sub, key="orders:R3")
    by_orm = ReturnedObject.objects.create(
        subscription=sub, key="orders:R4", digest="d3", created_at=by_hand.created_at
    )
    drop = (*NAMING, "key")
    assert _row(ReturnedObject, by_hand.pk, drop=drop) == _row(ReturnedObject, by_orm.pk, drop=drop)
    assert ReturnedObject.objects.filter(subscription=sub).count() == 4


def test_the_fan_out_claim_takes_what_the_pumps_claim_would_and_reads_it_as_select_related():
    from routing.fanout import fanout_claim

    event = EventFactory(resource_key=None)
    subs = [SubscriptionFactory(store=StoreFactory()), SubscriptionFactory()]
    named = [DeliveryFactory(event=event, subscription=sub) for sub in subs]
    batches = fanout_claim([d.pk for d in named])
    assert [b.deliveries[0].pk for b in batches] == [d.pk for d in named]
    for batch in batches:
        [claimed] = batch.deliveries
        by_orm = Delivery.objects.select_related("event", "event__store", "subscription", "subscription__store").get(
            pk=claimed.pk
        )
        assert _fields(claimed) == _fields(by_orm)
        assert _fields(claimed.event) == _fields(by_orm.event)
        assert _fields(claimed.event.store) == _fields(by_orm.event.store)
        assert _fields(claimed.subscription) == _fields(by_orm.subscription)
        assert (claimed.subscription.store and _fields(claimed.subscription.store)) == (
            by_orm.subscription.store and _fields(by_orm.subscription.store)
        )
        assert batch.subscription is claimed.subscription
        assert (by_orm.state, by_orm.attempt_count, by_orm.claim) == (DeliveryState.DELIVERING, 1, batch.claim)


def test_the_first_due_at_each_endpoint_are_those_an_orm_query_finds():
    from django.db import connection

    from routing import sql
    from routing.models import DELIVERY_OPEN_STATES

    due, later, done, none = (SubscriptionFactory() for _ in range(4))
    firsts = [DeliveryFactory(subscription=due), DeliveryFactory(subscription=due, state=DeliveryState.RETRYING)]
    DeliveryFactory(subscription=due)  # a third, beyond the two asked for
    DeliveryFactory(
        subscription=later, state=DeliveryState.RETRYING, next_attempt_at=timezone.now() + timedelta(minutes=5)
    )
    DeliveryFactory(subscription=done, state=DeliveryState.DELIVERED)
    now = timezone.now()
    ids = [due.pk, later.pk, done.pk, none.pk]
    at = connection.ops.adapt_datetimefield_value(now)
    with connection.cursor() as cursor:
        postgresql = connection.vendor == "postgresql"
        cursor.execute(
            sql.endpoints_due_first(len(ids), postgresql=postgresql),
            sql.endpoints_due_first_params(ids, at, 2, postgresql=postgresql),
        )
        by_hand = [tuple(row) for row in cursor.fetchall()]
    by_orm = Delivery.objects.filter(
        subscription_id__in=ids, state__in=DELIVERY_OPEN_STATES, next_attempt_at__lte=now
    ).order_by("next_attempt_at", "id")[:2]
    assert [row[:3] for row in by_hand] == [(d.event_id, d.pk, d.subscription_id) for d in by_orm]
    assert [row[:3] for row in by_hand] == [(d.event_id, d.pk, due.pk) for d in firsts]
    # The fourth column orders an endpoint's rows as a pump claims them.
    assert [row[3] for row in by_hand] == sorted(row[3] for row in by_hand)


def _sent(delivery, *, status: int | None, headers: dict, body: str, error: str = "", reply=None) -> Sent:
    result = ExchangeResult(
        method="POST",
        url="https://erp.example/hub/" + "x" * 600,
        status_code=status,
        latency_ms=12,
        response_headers=headers,
        response_body=body,
        reply=reply,
        error=error,
        succeeded=status == 200,
    )
    return Sent(delivery=delivery, result=result, started_at=timezone.now() - timedelta(seconds=3))


def _attempt_orm(s: Sent) -> Attempt:
    """The row the record step wrote by bulk_create before its INSERT was written out."""
    r = s.result
    return Attempt(
        delivery_id=s.delivery.pk,
        number=s.delivery.attempt_count,
        started_at=s.started_at,
        request_method=r.method,
        request_url=r.url[:500],
        status_code=r.status_code,
        latency_ms=r.latency_ms,
        response_headers=dict(r.response_headers),
        response_body=r.response_body,
        error=r.error,
        succeeded=r.succeeded,
        summary=attempt_summary(
            reply=r.reply, succeeded=r.succeeded, status_code=r.status_code, response_body=r.response_body
        ),
    )


def _attempt_rows(delivery_ids) -> list[dict]:
    rows = Attempt.objects.filter(delivery_id__in=delivery_ids).order_by("delivery_id", "number").values()
    return [{k: v for k, v in row.items() if k not in ("id", "delivery_id")} for row in rows]


def test_recording_attempts_writes_what_bulk_create_writes_and_replaces_the_sweepers_guess():
    sub = SubscriptionFactory()
    by_hand = [DeliveryFactory(subscription=sub, attempt_count=n) for n in (1, 2, 3)]
    by_orm = [DeliveryFactory(subscription=sub, attempt_count=n) for n in (1, 2, 3)]
    answers = [
        {
            "status": 200,
            "headers": {"Content-Type": "application/json", "X-Ü": "é"},
            "body": '{"summary": "ok ✓"}',
            "reply": {"summary": "ok ✓"},
        },
        {"status": None, "headers": {}, "body": "", "error": "timed out"},
        {"status": 500, "headers": {"Retry-After": "3"}, "body": "oops\t and 'quotes'"},
    ]
    hand_sent = [_sent(d, **a) for d, a in zip(by_hand, answers, strict=True)]
    orm_sent = [_sent(d, **a) for d, a in zip(by_orm, answers, strict=True)]
    orm_sent = [
        Sent(delivery=o.delivery, result=o.result, started_at=h.started_at)
        for h, o in zip(hand_sent, orm_sent, strict=True)
    ]
    # The third changed hands: the sweeper recorded its attempt as unanswered.
    for d in (by_hand[2], by_orm[2]):
        Attempt.objects.create(
            delivery=d, number=3, request_method="POST", request_url="https://x", error=LEASE_EXPIRED_ERROR
        )
    _attempts_record(hand_sent, kept={by_hand[0].pk, by_hand[1].pk})
    Attempt.objects.bulk_create([_attempt_orm(s) for s in orm_sent[:2]])
    Attempt.objects.bulk_create(
        [_attempt_orm(orm_sent[2])],
        update_conflicts=True,
        unique_fields=["delivery", "number"],
        update_fields=[f.name for f in Attempt._meta.concrete_fields if f.name not in ("id", "delivery", "number")],
    )
    assert _attempt_rows([d.pk for d in by_hand]) == _attempt_rows([d.pk for d in by_orm])
    assert [a.error for a in Attempt.objects.filter(delivery=by_hand[2])] == [""]
    assert Attempt.objects.get(delivery=by_hand[0]).response_headers == answers[0]["headers"]


def test_recording_more_attempts_than_one_statement_takes_writes_them_all():
    sub = SubscriptionFactory()
    deliveries = [DeliveryFactory(subscription=sub, attempt_count=1) for _ in range(sql.attempts_per_insert() + 5)]
    sent = [_sent(d, status=200, headers={}, body="{}") for d in deliveries]
    _attempts_record(sent, kept={d.pk for d in deliveries})
    assert Attempt.objects.filter(delivery__in=deliveries).count() == len(deliveries)
