"""Django support: the database backend ``ENGINE = "litefs.django"`` and its companions.

``litefs.django.base``
    The backend: Django's SQLite backend, plus: ``BEGIN IMMEDIATE`` and WAL by default on the
    primary; on a replica, reads and read-only ``atomic()`` blocks work (``BEGIN DEFERRED``)
    and every write raises :class:`litefs.NotPrimary` naming the primary.
``litefs.django`` in ``INSTALLED_APPS``
    System checks of ``DATABASES`` and ``settings.LITEFS`` (ids ``litefs.E001``...) and the
    ``litefs_status`` management command. ``migrate`` on a replica stops with ``litefs.E010``
    whether or not the app is installed.
``litefs.django.views``
    ``health``, ``readiness``, ``liveness`` and ``primary`` (JSON, 200 or 503).
``litefs.django.middleware.ReplicaWriteMiddleware``
    On a replica, answers unsafe methods with a replay header or a redirect to the primary.
``litefs.django.healthchecks.LiteFS``
    A django-health-check 4.x check (optional dependency).

Settings are read when used, never at import: ``settings.LITEFS`` (see
:mod:`litefs.django.settings`).
"""
