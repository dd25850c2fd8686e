"""/manage/v1/...: the management API (ops.manage.api)."""

from django.urls import path

from ops.manage import api

urlpatterns = [
    path("stores", api.StoreCollectionApi.as_view(), name="manage-stores"),
    path("stores/<str:name>", api.StoreDetailApi.as_view(), name="manage-store"),
    path("stores/<str:name>/enable", api.StoreEnableApi.as_view(), name="manage-store-enable"),
    path("stores/<str:name>/disable", api.StoreDisableApi.as_view(), name="manage-store-disable"),
    path("stores/<str:name>/rotate", api.StoreRotateApi.as_view(), name="manage-store-rotate"),
    path("subscriptions", api.SubscriptionCollectionApi.as_view(), name="manage-subscriptions"),
    path("subscriptions/<str:name>", api.SubscriptionDetailApi.as_view(), name="manage-subscription"),
    path("subscriptions/<str:name>/enable", api.SubscriptionEnableApi.as_view(), name="manage-subscription-enable"),
    path("subscriptions/<str:name>/disable", api.SubscriptionDisableApi.as_view(), name="manage-subscription-disable"),
    path("subscriptions/<str:name>/rotate", api.SubscriptionRotateApi.as_view(), name="manage-subscription-rotate"),
    path("subscriptions/<str:name>/token", api.SubscriptionTokenApi.as_view(), name="manage-subscription-token"),
    path("subscriptions/<str:name>/test", api.SubscriptionTestApi.as_view(), name="manage-subscription-test"),
    path("subscriptions/<str:name>/schedule", api.SubscriptionScheduleApi.as_view(), name="manage-schedule"),
    path("subscriptions/<str:name>/schedule/run", api.SubscriptionScheduleRunApi.as_view(), name="manage-schedule-run"),
    path("deliveries/retry", api.DeliveryRetryApi.as_view(), name="manage-deliveries-retry"),
    path("deliveries/cancel", api.DeliveryCancelApi.as_view(), name="manage-deliveries-cancel"),
    path("deliveries/replay", api.DeliveryReplayApi.as_view(), name="manage-deliveries-replay"),
]
