"""Two tables of the same shape as the hub's events (a unique message id, the JSON payload, a
timestamp): one that django-webhook watches, one for the naive baseline."""

from django.db import models


class PeerEvent(models.Model):
    """Saved by POST /peer/events; django-webhook's post_save signal enqueues its webhook."""

    message_id = models.CharField(max_length=200, unique=True)
    message = models.CharField(max_length=100)
    payload = models.JSONField()
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return self.message_id


class NaiveEvent(models.Model):
    """Saved by POST /naive/events, which publishes one Celery message on commit itself."""

    message_id = models.CharField(max_length=200, unique=True)
    message = models.CharField(max_length=100)
    payload = models.JSONField()
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return self.message_id
