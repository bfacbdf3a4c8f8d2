"""gunicorn's settings for the guestbook (gunicorn reads ``./gunicorn.conf.py`` on its own), from
the environment, so that every node runs the same command: ``gunicorn`` in this directory.

``GUESTBOOK_BIND``
    Where the app listens (default 127.0.0.1:8000). Behind litefs-py's proxy: the proxy's
    ``target``, on loopback; clients connect to the proxy's ``addr``.
``GUESTBOOK_WORKERS``
    Sync workers (default 2).
"""

import os

wsgi_app = "guestbook.wsgi"
bind = [os.environ.get("GUESTBOOK_BIND", "127.0.0.1:8000")]
workers = int(os.environ.get("GUESTBOOK_WORKERS", "2"))
# litefs-py run's SIGTERM reaches gunicorn directly (run.grace, 10 s, is longer than this).
graceful_timeout = 5
loglevel = "warning"
