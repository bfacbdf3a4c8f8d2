"""The guestbook: a list of entries and a form (HTML at ``/``, JSON at ``/api/entries``).

Writes need no special code: litefs-py's proxy in front of every node sends a POST to the
primary's app, where it just works; a replica's app serves only reads. A write that reaches an
app whose node has just lost the primary role (a handoff or failover mid-request) is refused by
the backend (``litefs.NotPrimary``), which ``ReplicaWriteMiddleware`` turns into a 503.
"""

from __future__ import annotations

import json

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.views.decorators.cache import never_cache
from django.views.decorators.csrf import csrf_exempt
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


# A JSON API for scripts, without sessions or cookies to protect: no CSRF token.
@csrf_exempt
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
