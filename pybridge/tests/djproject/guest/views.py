from django.http import HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt

from .models import Entry


@csrf_exempt
def sign(request: HttpRequest) -> JsonResponse:
    """POST: adds an entry. GET ?write=1: a safe request whose view writes anyway."""
    entry = Entry.objects.create(name=request.POST.get("name", "anon"), text="hi")
    return JsonResponse({"id": entry.pk})


def entries(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"names": list(Entry.objects.values_list("name", flat=True))})


@csrf_exempt
def boom(request: HttpRequest) -> JsonResponse:
    """Raises NotPrimary whatever the role: a request that got past the middleware and then
    found the node demoted."""
    import litefs

    raise litefs.NotPrimary(primary="elsewhere")
