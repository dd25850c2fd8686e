"""The hub's URLs plus the benchmark's bare baseline view. Used only when HUB_BENCH_BASELINE is on
(integrator/settings.py), which nothing but `bash bench/run` sets.

The baseline is the cost of the framework alone: the same middleware, the same JSON parser with
its limits, DRF's request cycle, a 202 with a small JSON body; no authentication, no rate limit,
no database, no broker. The hub's POST /events divided by it is the price of being durable.
"""

from __future__ import annotations

import os
from typing import Any

from django.http import HttpRequest, JsonResponse
from django.urls import path
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from integrator.urls import handler404, handler500  # noqa: F401 - re-exported
from integrator.urls import urlpatterns as hub_urlpatterns


class BareIngestApi(APIView):
    authentication_classes: list[Any] = []
    permission_classes = [AllowAny]
    throttle_classes: list[Any] = []

    def post(self, request: Request) -> Response:
        data = request.data
        count = len(data) if isinstance(data, list) else 1
        return Response({"accepted": count}, status=202)


def bench_worker(request: HttpRequest) -> JsonResponse:
    """Which gunicorn process holds this connection: the load generator spreads its connections
    evenly over the processes with it (bench/load.py, connections_spread)."""
    return JsonResponse({"pid": os.getpid()})


urlpatterns = [
    path("bench/bare", BareIngestApi.as_view(), name="bench-bare"),
    path("bench/worker", bench_worker, name="bench-worker"),
    *hub_urlpatterns,
]
