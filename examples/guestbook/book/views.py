"""The guestbook: a list of entries and a form (HTML at ``/``, JSON at ``/api/entries``).

Writes need no special code: on the primary they just work; on a replica
``ReplicaWriteMiddleware`` answers a POST with a 307 to the primary before the view runs, and a
write that slips through anyway (the node lost the primary role mid-request) raises
``litefs.NotPrimary``, which the middleware turns into a 503 "retry".
"""

from __future__ import annotations

import json

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_http_methods

from . import node as node_mod
from .forms import EntryForm
from .models import Entry

PAGE = 50


@never_cache
@require_http_methods(["GET", "HEAD", "POST"])
def index(request: HttpRequest) -> HttpResponse:
    if request.method == "POST":
        form = EntryForm(request.POST)
        if form.is_valid():
            entry = form.save(commit=False)
            entry.node = node_mod.current().name
            entry.save()
            return redirect("index", permanent=False)
    else:
        form = EntryForm()
    entries = Entry.objects.all()[:PAGE]
    return render(
        request,
        "book/index.html",
        {"form": form, "entries": entries, "count": Entry.objects.count()},
    )


@never_cache
@require_http_methods(["GET", "HEAD", "POST"])
def api_entries(request: HttpRequest) -> JsonResponse:
    node = node_mod.current()
    if request.method == "POST":
        if request.content_type == "application/json":
            try:
                data = json.loads(request.body or b"{}")
            except ValueError:
                return JsonResponse({"error": "the body is not JSON"}, status=400)
            if not isinstance(data, dict):
                return JsonResponse({"error": "the body must be a JSON object"}, status=400)
        else:
            data = request.POST
        form = EntryForm(data)
        if not form.is_valid():
            return JsonResponse({"errors": form.errors}, status=400)
        entry = form.save(commit=False)
        entry.node = node.name
        entry.save()
        return JsonResponse(entry.as_dict() | {"served_by": node.name}, status=201)
    try:
        limit = min(max(int(request.GET.get("limit") or PAGE), 0), 500)
    except ValueError:
        return JsonResponse({"error": "limit must be a number"}, status=400)
    entries = [e.as_dict() for e in Entry.objects.all()[:limit]]
    return JsonResponse(
        {
            "served_by": node.name,
            "role": node.role,
            "primary": node.primary,
            "count": Entry.objects.count(),
            "entries": entries,
        }
    )
