from __future__ import annotations

import logging
from collections.abc import Callable

from django.db import InterfaceError, OperationalError
from django.http import HttpRequest, HttpResponse

log = logging.getLogger(__name__)


class DatabaseUnavailableMiddleware:
    """A locked or unreachable database gets a clear 503 (pages keep their last picture), not a 500."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        return self.get_response(request)

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        if not isinstance(exception, OperationalError | InterfaceError):
            return None
        log.warning("database unavailable for %s: %s", request.path, exception)
        response = HttpResponse(
            "<!doctype html><meta charset=utf-8><title>Console Wall</title>"
            "<h1>The database is busy or unavailable.</h1><p>Nothing was lost; try again in a moment.</p>",
            status=503,
        )
        response["Retry-After"] = "10"
        response["Cache-Control"] = "no-store"
        return response
