"""The hub's admin: the front page is a dashboard of the delivery queue; events, deliveries and
subscriptions are registered by the modules below (stores in events/admin.py)."""

from django.contrib import admin

from routing.admin import deliveries, events, login, schedules, subscriptions  # noqa: F401 - importing registers them

admin.site.site_header = "Hub admin"
admin.site.site_title = "Hub admin"
admin.site.index_title = "Dashboard"
# The hub has no public site: "View site" led to the API's JSON 404.
admin.site.site_url = None
admin.site.index_template = "admin/hub_index.html"
