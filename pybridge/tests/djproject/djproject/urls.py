from django.urls import path
from guest import views as guest_views
from health_check.views import HealthCheckView

from litefs.django import views as litefs_views

urlpatterns = [
    path("health", litefs_views.health),
    path("ready", litefs_views.readiness),
    path("live", litefs_views.liveness),
    path("primary", litefs_views.primary),
    path(
        "hc",
        HealthCheckView.as_view(
            checks=[("litefs.django.healthchecks.LiteFS", {"max_lag_ms": 1000})]
        ),
    ),
    path("sign", guest_views.sign),
    path("entries", guest_views.entries),
    path("boom", guest_views.boom),
]
