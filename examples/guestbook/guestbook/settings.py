"""Settings of the guestbook example, from the environment.

``LITEFS_DIR``
    The litefs-py mount (``litefs-py run`` sets it). The database is ``$LITEFS_DIR/guestbook.db``.
``GUESTBOOK_NODE``
    A name for this node, shown on the page (default: the litefs-py hostname).
``GUESTBOOK_PLAIN_DB``
    Benchmark baseline only: a database path on a plain directory, outside any mount (the
    backend is then plain SQLite, with WAL and ``BEGIN IMMEDIATE`` as on a primary).
``DJANGO_SECRET_KEY``, ``DJANGO_DEBUG``, ``DJANGO_ALLOWED_HOSTS`` (comma-separated)
    The usual.
"""

import os
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "guestbook-example-not-a-secret")
DEBUG = os.environ.get("DJANGO_DEBUG", "") == "1"
ALLOWED_HOSTS = os.environ.get("DJANGO_ALLOWED_HOSTS", "127.0.0.1,localhost,[::1]").split(",")

INSTALLED_APPS = [
    "django.contrib.contenttypes",
    "django.contrib.staticfiles",
    "litefs.django",  # system checks of DATABASES/LITEFS, `manage.py litefs_status`
    "book",
]

# litefs-py's proxy (`proxy:` in litefs-py.yml) sits in front of every node's app and forwards
# a replica's writes to the primary's app, so routing needs no middleware. The client keeps
# talking to the node it chose: same origin, same cookies, so Django's CSRF protection works as
# on one server (docs/django.md, "Writes on a replica").
MIDDLEWARE = [
    # A safety net only: a write that reaches the primary's app in the instant its node loses
    # the role (a handoff, a failover) is refused by the backend; this turns the 500 into a 503
    # that says so (measured: 4 of 400 writes during a graceful stop under load got a 500
    # without it). It never answers a write the proxy routed right.
    "litefs.django.middleware.ReplicaWriteMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "guestbook.urls"
WSGI_APPLICATION = "guestbook.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "book.context.node",
            ],
        },
    },
]

LITEFS_DIR = os.environ.get("LITEFS_DIR", "/litefs")
PLAIN_DB = os.environ.get("GUESTBOOK_PLAIN_DB")

if PLAIN_DB:
    # Outside any mount the same backend is plain SQLite (still WAL and BEGIN IMMEDIATE). The
    # baseline's database is outside the mount on purpose: litefs.E001 would stop `migrate`.
    SILENCED_SYSTEM_CHECKS = ["litefs.E001"]
    DATABASES = {
        "default": {"ENGINE": "litefs.django", "NAME": PLAIN_DB, "OPTIONS": {"timeout": 10}}
    }
else:
    DATABASES = {
        "default": {
            # Django's SQLite backend on the LiteFS mount: BEGIN IMMEDIATE and WAL on the
            # primary; on a replica reads work and writes raise litefs.NotPrimary.
            "ENGINE": "litefs.django",
            "NAME": os.path.join(LITEFS_DIR, "guestbook.db"),
            "OPTIONS": {"timeout": 10},
        }
    }

LITEFS = {
    "MOUNT": LITEFS_DIR,
    "MAX_LAG_MS": 5_000,
    # Off a mount (the benchmark's baselines) there is no role to ask: the middleware stands by
    # (else every write there would be a 503 saying no mount answers).
    "REPLICA_WRITES": None if PLAIN_DB else "auto",
}

NODE_NAME = os.environ.get("GUESTBOOK_NODE")

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
USE_TZ = True
TIME_ZONE = "UTC"
LANGUAGE_CODE = "en-us"
STATIC_URL = "static/"

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": "WARNING"},
}
