from django.urls import path

from bench.peer.views import NaiveIngestApi, PeerIngestApi

urlpatterns = [
    path("peer/events", PeerIngestApi.as_view()),
    path("naive/events", NaiveIngestApi.as_view()),
]
