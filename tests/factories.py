"""factory_boy factories shared by every test."""

from __future__ import annotations

import factory

from events.models import Event, Store
from routing.models import Attempt, Delivery, Notification, Subscription


class StoreFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Store
        skip_postgeneration_save = True

    name = factory.Sequence(lambda n: f"store-{n}")
    is_active = True

    @factory.post_generation
    def token(self, create: bool, extracted: str | None, **kwargs) -> None:
        # The clear token is kept on the instance for the test to use; only the hash is stored.
        self.token = self.token_set_new()
        if create:
            self.save()


class SubscriptionFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Subscription

    name = factory.Sequence(lambda n: f"endpoint-{n}")
    url = "http://127.0.0.1:9/never-called"
    message_types = factory.LazyFunction(lambda: ["*"])


class EventFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Event

    store = factory.SubFactory(StoreFactory)
    message = "order:new"
    message_id = factory.Sequence(lambda n: f"msg-{n}")
    payload = factory.LazyFunction(lambda: {"order": {"number": "R1"}})
    resource_key = "order:R1"


class DeliveryFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Delivery

    event = factory.SubFactory(EventFactory)
    subscription = factory.SubFactory(SubscriptionFactory)
    resource_key = factory.SelfAttribute("event.resource_key")


class AttemptFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Attempt

    delivery = factory.SubFactory(DeliveryFactory)
    number = factory.Sequence(lambda n: n + 1)
    request_method = "POST"
    request_url = factory.SelfAttribute("delivery.subscription.url")
    status_code = 500
    latency_ms = 12
    response_body = '{"error": "boom"}'


class NotificationFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Notification

    delivery = factory.SubFactory(DeliveryFactory)
    event = factory.SelfAttribute("delivery.event")
    subscription = factory.SelfAttribute("delivery.subscription")
    level = "info"
    subject = "Order imported"
    resource_key = factory.SelfAttribute("event.resource_key")
