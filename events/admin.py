from django.contrib import admin

from events.models import Event, Store


@admin.register(Store)
class StoreAdmin(admin.ModelAdmin):
    list_display = ("name", "is_active", "token_hint", "created_at", "last_used_at")


@admin.register(Event)
class EventAdmin(admin.ModelAdmin):
    list_display = ("id", "message", "message_id", "store", "status", "created_at")
    list_filter = ("status", "message")
    search_fields = ("message_id", "resource_key")
    raw_id_fields = ("parent",)
