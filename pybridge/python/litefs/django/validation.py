"""The backend's validation: Django runs it as the ``database``-tagged check
(``check_database_backends``), which ``migrate`` runs for its database."""

from __future__ import annotations

from typing import Any

from django.db.backends.base.validation import BaseDatabaseValidation


class DatabaseValidation(BaseDatabaseValidation):
    def check(self, **kwargs: Any) -> list[Any]:
        from django.apps import apps

        from . import checks
        from . import settings as litefs_settings

        issues: list[Any] = list(super().check(**kwargs))
        conn = self.connection
        if not apps.is_installed("litefs.django"):
            # Without the app nothing registered the settings checks: run them here.
            issues += checks.check_litefs_settings()
            issues += checks.check_database_settings(
                conn.alias, conn.settings_dict, litefs_settings.get().mount
            )
        issues += checks.check_runtime(conn.alias, conn.settings_dict.get("NAME"))
        return issues
