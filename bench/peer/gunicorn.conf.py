"""gunicorn settings of the peer: the hub's production shape (bench passes --workers) with gunicorn's
stock threaded worker, as a django-webhook user would run it."""

worker_class = "gthread"
threads = 4
# Not the per-user default path, which the hub's gunicorn or another bench would share.
control_socket_disable = True
