from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView
from rest_framework.permissions import AllowAny

from events.api import EventBatchApi, EventCollectionApi, EventDetailApi
from integrator.health import healthz, readyz
from integrator.metrics import metrics_view
from routing.outbox import event_accept, events_accept
from routing.selectors import event_deliveries_describe

# Accepting an event means storing and routing it in one transaction: the project wires
# routing's composition into the events API so that events never imports routing.
urlpatterns = [
    path("events", EventCollectionApi.as_view(accept=event_accept, accept_many=events_accept), name="events"),
    path("events/batch", EventBatchApi.as_view(accept=event_accept, accept_many=events_accept), name="events-batch"),
    path("events/<str:event_id>", EventDetailApi.as_view(describe=event_deliveries_describe), name="event-detail"),
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
