import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "integrator.settings")

from infra.tracing import tracing_setup  # noqa: E402 - needs the settings module set above

# Before the application loads its middleware: the Django instrumentation adds one.
tracing_setup()
application = get_wsgi_application()

from integrator.chunked import ChunkedBodyLimit  # noqa: E402 - needs the settings module set above

application = ChunkedBodyLimit(application)
