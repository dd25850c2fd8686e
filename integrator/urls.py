from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView
from rest_framework.permissions import AllowAny

from events.schema_views import schema_detail, schemas_list
from integrator.health import healthz, readyz
from integrator.metrics import metrics_view
from routing.api import EventBatchApi, EventCollectionApi, EventDetailApi

urlpatterns = [
    path("events", EventCollectionApi.as_view(), name="events"),
    path("events/batch", EventBatchApi.as_view(), name="events-batch"),
    path("events/<str:event_id>", EventDetailApi.as_view(), name="event-detail"),
    # The standard description of the canonical messages (docs/protocol.md), public as /api/schema/ is.
    path("schemas", schemas_list, name="schemas"),
    path("schemas/<str:message>", schema_detail, name="schema-detail"),
    path("admin/", admin.site.urls),
    # Staff scripting the hub: management keys, not store tokens (ops/manage, docs/operations.md).
    path("manage/v1/", include("ops.manage.urls")),
    # Operations: no store token; keep /metrics off the public internet (docs/operations.md).
    path("healthz", healthz, name="healthz"),
    path("readyz", readyz, name="readyz"),
    path("metrics", metrics_view, name="metrics"),
    path(
        "api/schema/",
        SpectacularAPIView.as_view(authentication_classes=[], permission_classes=[AllowAny]),
        name="api-schema",
    ),
    path(
        "api/docs/",
        SpectacularSwaggerView.as_view(url_name="api-schema", authentication_classes=[], permission_classes=[AllowAny]),
        name="api-docs",
    ),
]

# Unmatched URLs and crashes answer in the API's JSON error shape too.
handler404 = "events.errors.page_not_found"
handler500 = "events.errors.server_error"
