"""`python -m bench.peer SUBSCRIBER_URL`: create the peer's tables and one django-webhook webhook,
subscribed to PeerEvent's creation, pointing at SUBSCRIBER_URL. Run by the bench before it starts
the peer's gunicorn."""

import sys

import django


def main() -> None:
    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0, interactive=False)
    from django_webhook.models import Webhook, WebhookSecret, WebhookTopic, populate_topics_from_settings

    populate_topics_from_settings()
    webhook = Webhook.objects.create(url=sys.argv[1], active=True)
    webhook.topics.add(WebhookTopic.objects.get(name="peer.PeerEvent/create"))
    WebhookSecret.objects.create(webhook=webhook, token="bench-peer-signing-secret")


if __name__ == "__main__":
    main()
