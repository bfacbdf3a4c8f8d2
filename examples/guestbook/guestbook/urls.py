from django.urls import path

from book import views
from litefs.django import views as litefs_views

urlpatterns = [
    path("", views.index, name="index"),
    path("api/entries", views.api_entries, name="api-entries"),
    # litefs-py's health views: 200 healthy, 503 with reasons.
    path("healthz", litefs_views.health, name="health"),
    path("readyz", litefs_views.readiness, name="ready"),
    path("livez", litefs_views.liveness, name="live"),
    path("primaryz", litefs_views.primary, name="primary"),
]
