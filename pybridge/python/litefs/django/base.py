"""``ENGINE = "litefs.django"``: Django's SQLite backend on a LiteFS mount.

The behaviour is in :class:`litefs.django.mixin.LiteFSMixin`; this module only names the classes
Django looks up by convention.
"""

from __future__ import annotations

from django.db.backends.sqlite3 import base as sqlite3_base

from .creation import DatabaseCreation
from .mixin import LiteFSCursor, LiteFSMixin
from .validation import DatabaseValidation

__all__ = ["DatabaseWrapper", "LiteFSCursor"]


class DatabaseWrapper(LiteFSMixin, sqlite3_base.DatabaseWrapper):
    creation_class = DatabaseCreation
    validation_class = DatabaseValidation
