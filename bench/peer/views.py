"""The peer's two ingest views, DRF like the hub's and the bare baseline, so the three differ only
in what they do with the parsed body.

Each INSERT runs in Django's autocommit, as a view without ATOMIC_REQUESTS does: the statement is
its own transaction, committed (synchronously) before the 202, as durable as BEGIN/INSERT/COMMIT
and two round trips shorter, as the hub's own push is."""

from __future__ import annotations

from typing import Any

from django.db import transaction
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from bench.peer.models import NaiveEvent, PeerEvent
from bench.peer.tasks import naive_deliver


def _fields(data: Any) -> dict[str, Any]:
    return {"message_id": data["message_id"], "message": data["message"], "payload": data["payload"]}


class PeerIngestApi(APIView):
    """A durable insert; django-webhook's post_save handler serialises the row and publishes its
    fire_webhook task for each subscribed webhook."""

    def post(self, request: Request) -> Response:
        event = PeerEvent.objects.create(**_fields(request.data))
        return Response({"id": event.pk}, status=202)


class NaiveIngestApi(APIView):
    """The same insert, and one Celery message with the row's id once it is committed (in
    autocommit on_commit runs at once: the INSERT has committed)."""

    def post(self, request: Request) -> Response:
        event = NaiveEvent.objects.create(**_fields(request.data))
        transaction.on_commit(lambda: naive_deliver.delay(event.pk))
        return Response({"id": event.pk}, status=202)
