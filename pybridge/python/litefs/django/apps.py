from __future__ import annotations

from django.apps import AppConfig


class LiteFSConfig(AppConfig):
    name = "litefs.django"
    label = "litefs"
    verbose_name = "LiteFS"

    def ready(self) -> None:
        from django.core import checks as django_checks

        from . import checks

        django_checks.register(checks.check_settings, "litefs")
        # A misconfigured node must not start serving silently (gunicorn runs no checks).
        checks.fail_fast()
