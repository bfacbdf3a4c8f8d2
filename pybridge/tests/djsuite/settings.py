"""Settings for Django's own test suite (``tests/runtests.py`` of the Django sdist), with the
databases as files in ``$DJSUITE_DB_DIR`` and the backend ``$DJSUITE_ENGINE``.

Both runs the comparison makes use file databases in the same layout, so that the only
differences are the backend and the directory: ``litefs.django`` on a litefs-py mount, and
Django's ``sqlite3`` in a plain directory. (Django's own ``test_sqlite`` settings use in-memory
databases, which would skip the file-only tests.)
"""

import json
import os

_ENGINE = os.environ["DJSUITE_ENGINE"]
_DIR = os.environ["DJSUITE_DB_DIR"]
#: Extra OPTIONS for both databases (JSON), e.g. ``{"transaction_mode": null}``.
_OPTIONS = json.loads(os.environ.get("DJSUITE_OPTIONS") or "{}")


def _db(alias: str) -> dict:
    return {
        "ENGINE": _ENGINE,
        "NAME": os.path.join(_DIR, f"{alias}.sqlite3"),
        "OPTIONS": dict(_OPTIONS),
        "TEST": {"NAME": os.path.join(_DIR, f"test_{alias}.sqlite3")},
    }


DATABASES = {"default": _db("default"), "other": _db("other")}

SECRET_KEY = "django_tests_secret_key"
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
DEFAULT_AUTO_FIELD = "django.db.models.AutoField"
USE_TZ = False

# Records every test's outcome in $DJSUITE_RESULTS (JSON) for the comparison.
TEST_RUNNER = "djsuite.runner.RecordingRunner"
