from django.apps import AppConfig


class RoutingConfig(AppConfig):
    name = "routing"
    verbose_name = "Routing"

    def ready(self) -> None:
        from django.db.models.signals import post_delete, post_save

        from routing import checks  # noqa: F401 - registers the system checks
        from routing.models import Subscription
        from routing.subscriptions import subscriptions_cache_clear

        # A subscription saved or deleted through the model in this process is routed by at once:
        # the admin, the management API and hubapply all save through it.
        def forget(**_: object) -> None:
            subscriptions_cache_clear()

        post_save.connect(forget, sender=Subscription, weak=False, dispatch_uid="routing.subscriptions_cache_clear")
        post_delete.connect(forget, sender=Subscription, weak=False, dispatch_uid="routing.subscriptions_cache_clear")
