from django.contrib import admin
from django.urls import path

from events.api import EventBatchApi, EventCollectionApi, EventDetailApi
from routing.selectors import event_deliveries_describe
from routing.services import event_accept

# Accepting an event means storing and routing it in one transaction: the project wires
# routing's composition into the events API so that events never imports routing.
urlpatterns = [
    path("events", EventCollectionApi.as_view(accept=event_accept), name="events"),
    path("events/batch", EventBatchApi.as_view(accept=event_accept), name="events-batch"),
    path("events/<str:event_id>", EventDetailApi.as_view(describe=event_deliveries_describe), name="event-detail"),
    path("admin/", admin.site.urls),
]

# Unmatched URLs and crashes answer in the API's JSON error shape too.
handler404 = "events.errors.page_not_found"
handler500 = "events.errors.server_error"
