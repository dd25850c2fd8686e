"""gunicorn settings of the peer: the hub's production shape (the bench passes --workers and the
hub's --threads) with gunicorn's stock threaded worker (the hub's own worker class reads the hub's
settings)."""

worker_class = "gthread"
# Not the per-user default path, which the hub's gunicorn or another bench would share.
control_socket_disable = True


def post_worker_init(worker):
    # The hub's tuning too (its gunicorn.conf.py): the application imported and frozen out of the
    # cyclic collector's way, so that the two differ in their code, not in their server's settings.
    import gc

    from django.urls import get_resolver

    get_resolver().check()
    gc.collect()
    gc.freeze()
