"""A small Django project for the tests, configured from the environment:

``LITEFS_DIR`` the mount; ``DJP_DB`` the database file (default ``$LITEFS_DIR/app.db``);
``DJP_ENGINE`` (default ``litefs.django``); ``DJP_OPTIONS`` and ``DJP_LITEFS`` (JSON) the
database's OPTIONS and ``settings.LITEFS``; ``DJP_MIDDLEWARE=1`` adds the replica middleware;
``DJP_ATOMIC=1`` sets ``ATOMIC_REQUESTS``.
"""

import json
import os

MOUNT = os.environ.get("LITEFS_DIR", "/litefs")

SECRET_KEY = "litefs-py-tests"
DEBUG = False
ALLOWED_HOSTS = ["*"]
INSTALLED_APPS = ["litefs.django", "guest"]
DATABASES = {
    "default": {
        "ENGINE": os.environ.get("DJP_ENGINE", "litefs.django"),
        "NAME": os.environ.get("DJP_DB") or os.path.join(MOUNT, "app.db"),
        "OPTIONS": json.loads(os.environ.get("DJP_OPTIONS") or "{}"),
        "ATOMIC_REQUESTS": bool(os.environ.get("DJP_ATOMIC")),
    }
}
LITEFS = json.loads(os.environ.get("DJP_LITEFS") or "{}")
MIDDLEWARE = (
    ["litefs.django.middleware.ReplicaWriteMiddleware"] if os.environ.get("DJP_MIDDLEWARE") else []
)
ROOT_URLCONF = "djproject.urls"
USE_TZ = True
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
