"""Tokens for people without a staff session: lookup by hash, guess limiting, response headers, log hygiene."""

from __future__ import annotations

import re
from datetime import timedelta

from django.conf import settings
from django.db.models import F
from django.http import HttpRequest, HttpResponse
from django.utils import timezone

from dashboard.models import DisplayToken, ShareLink, hash_token
from screenshots import coordination

DISPLAY_COOKIE = "cw_display"
# Chat tools fetch a link to draw a preview; such a fetch is not a view and must change nothing.
_PREVIEW_AGENTS = re.compile(
    r"slackbot|twitterbot|facebookexternalhit|discordbot|telegrambot|whatsapp|skypeuripreview|linkedinbot|"
    r"mattermost|rocket\.chat|embedly|googlebot|bingbot|preview",
    re.IGNORECASE,
)


class TokenRefused(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def client_address(request: HttpRequest) -> str:
    return request.META.get("REMOTE_ADDR", "") or "unknown"


def _check_guess_budget(request: HttpRequest) -> None:
    key = f"token-misses:{client_address(request)}"
    misses = coordination.connection().get(coordination.key(key))
    if misses is not None and int(misses) >= settings.TOKEN_GUESS_LIMIT:
        raise TokenRefused(429, "Too many unknown links from your address. Try again in a minute.")


def _count_miss(request: HttpRequest) -> None:
    conn = coordination.connection()
    name = coordination.key(f"token-misses:{client_address(request)}")
    with conn.pipeline() as pipe:
        # A fixed window starting at the first miss (EXPIRE NX needs Redis 7; this works on 6.2 too).
        pipe.set(name, 0, ex=settings.TOKEN_GUESS_WINDOW_SECONDS, nx=True)
        pipe.incr(name)
        pipe.execute()


def _plausible(token: str) -> bool:
    return 16 <= len(token) <= 128 and re.fullmatch(r"[A-Za-z0-9_-]+", token) is not None


def share_link_for(request: HttpRequest, token: str) -> ShareLink:
    """The usable share link for ``token``, or TokenRefused (404 unknown, 410 expired/revoked, 429)."""
    _check_guess_budget(request)
    link = (
        ShareLink.objects.select_related("board").filter(token_hash=hash_token(token)).first()
        if _plausible(token) else None
    )
    if link is None:
        _count_miss(request)
        raise TokenRefused(404, "This link does not exist.")
    if link.revoked_at is not None:
        raise TokenRefused(410, "This link was revoked.")
    if link.expires_at <= timezone.now():
        raise TokenRefused(410, "This link has expired.")
    return link


def count_view(request: HttpRequest, link: ShareLink) -> None:
    if request.method != "GET" or _PREVIEW_AGENTS.search(request.headers.get("User-Agent", "")):
        return
    ShareLink.objects.filter(pk=link.pk).update(view_count=F("view_count") + 1, last_viewed_at=timezone.now())


def display_token_for(request: HttpRequest, token: str) -> DisplayToken:
    _check_guess_budget(request)
    display = DisplayToken.objects.filter(token_hash=hash_token(token)).first() if _plausible(token) else None
    if display is None:
        _count_miss(request)
        raise TokenRefused(404, "This display link does not exist.")
    if display.revoked_at is not None:
        raise TokenRefused(410, "This display was revoked. Ask an administrator for a new link.")
    return display


def display_from_cookie(request: HttpRequest) -> DisplayToken | None:
    token = request.COOKIES.get(DISPLAY_COOKIE, "")
    if not token:
        return None
    display = DisplayToken.objects.filter(token_hash=hash_token(token), revoked_at__isnull=True).first()
    if display is not None and (
        display.last_seen_at is None or timezone.now() - display.last_seen_at > timedelta(minutes=1)
    ):
        DisplayToken.objects.filter(pk=display.pk).update(last_seen_at=timezone.now())
    return display


def private_headers(response: HttpResponse) -> HttpResponse:
    """Headers for pages reached by token: no referrer leaves with the token, no search engine keeps it."""
    response["Referrer-Policy"] = "no-referrer"
    response["X-Robots-Tag"] = "noindex, nofollow"
    response.setdefault("Cache-Control", "no-store")
    return response


def refused(exc: TokenRefused) -> HttpResponse:
    # A plain page: the person holding a dead link needs one sentence, not the app.
    body = f"<!doctype html><meta charset=utf-8><title>Console Wall</title><h1>{exc.message}</h1>"
    response = HttpResponse(body, status=exc.status)
    if exc.status == 429:
        response["Retry-After"] = str(settings.TOKEN_GUESS_WINDOW_SECONDS)
    return private_headers(response)
