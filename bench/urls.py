"""The hub's URLs plus the benchmark's bare baseline view. Used only when HUB_BENCH_BASELINE is on
(integrator/settings.py), which nothing but `bash bench/run` sets.

The baseline is the cost of the framework alone: the same middleware, the same JSON parser with
its limits, DRF's request cycle, a 202 with a small JSON body; no authentication, no rate limit,
no database, no broker. The hub's POST /events divided by it is the price of being durable.
"""

from __future__ import annotations

from typing import Any

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


urlpatterns = [path("bench/bare", BareIngestApi.as_view(), name="bench-bare"), *hub_urlpatterns]
