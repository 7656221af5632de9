"""Pages for logged-in people: the masters overview (the live dashboard grows here)."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from masters.models import Master


def home(request: HttpRequest) -> HttpResponse:
    masters = Master.objects.order_by("priority", "external_id")
    return render(request, "monitoring/home.html", {"masters": masters})
