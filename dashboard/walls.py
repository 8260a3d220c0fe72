"""Wall displays (TVs, by display token or staff login) and incident share links (by share token)."""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from django import forms
from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required, permission_required
from django.core.validators import MaxValueValidator
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from dashboard import access, grid
from dashboard.models import Board, DisplayToken, ShareLink, new_token
from dashboard.tiles import tile_for
from dashboard.views import POLL_SECONDS, serve_capture
from screenshots.models import Capture, Instance

WALL_MAX_TILES = 100
# The wall is laid out for a 16:9 screen; tiles are 4:3 images with a name line under them.
_SCREEN_RATIO = 16 / 9


def wall_layout(count: int) -> tuple[int, int]:
    """Columns and rows that make the tiles of ``count`` instances as large as a 16:9 screen allows."""
    count = max(count, 1)
    best, best_size = (1, count), 0.0
    for cols in range(1, count + 1):
        rows = math.ceil(count / cols)
        cell_w, cell_h = _SCREEN_RATIO / cols, 1 / rows
        # Image width that fits the cell, leaving ~18% of the cell height for the name and age.
        size = min(cell_w, (cell_h * 0.82) * 4 / 3)
        if size > best_size:
            best, best_size = (cols, rows), size
    return best


def with_version(response: HttpResponse) -> HttpResponse:
    # Displays reload themselves when this changes, but only after the server has answered.
    response["X-Console-Wall-Version"] = settings.APP_VERSION
    return response


def _scoped_poll(request: HttpRequest, rows: Any, template: str, urls: dict[str, Callable[..., str]],
                 extra: dict[str, Any]) -> HttpResponse:
    result = grid.changed_since(rows, grid.cursor_to_datetime(request.GET.get("cursor")))
    if not result.changed:
        return HttpResponse(status=204)
    now = timezone.now()
    return render(request, template, {
        "tiles": [tile_for(i, now, **urls) for i in result.changed],
        "cursor": result.cursor,
        "newest_success": grid.newest_success(),
        "oob": True,
        **extra,
    })


# --- Wall displays ------------------------------------------------------------------------------


def _wall_board(request: HttpRequest, slug: str) -> tuple[Board, DisplayToken | None]:
    """The board, if this viewer may see it: a signed-in user, or a display token that includes it."""
    board = get_object_or_404(Board, slug=slug)
    if request.user.is_authenticated:
        return board, None
    display = access.display_from_cookie(request)
    if display is None or not display.boards.filter(pk=board.pk).exists():
        raise Http404("no such board for this display")
    return board, display


def _wall_urls(board: Board) -> dict[str, Callable[..., Any]]:
    return {
        "thumb_url": lambda c: reverse("wall-capture", args=[board.slug, c.pk, c.sha256]),
        "detail_url": None,
    }


@require_GET
def display_enter(request: HttpRequest, token: str) -> HttpResponse:
    """A TV opens its display link once; the token moves into a cookie and out of the address bar."""
    try:
        display = access.display_token_for(request, token)
    except access.TokenRefused as exc:
        return access.refused(exc)
    board = display.boards.order_by("name").first()
    if board is None:
        return access.refused(access.TokenRefused(404, "This display has no board yet."))
    response = HttpResponseRedirect(reverse("wall", args=[board.slug]))
    response.set_cookie(access.DISPLAY_COOKIE, token, max_age=400 * 86400, httponly=True, samesite="Strict",
                        secure=not settings.DEBUG)
    return access.private_headers(response)


@require_GET
@never_cache
def wall(request: HttpRequest, slug: str) -> HttpResponse:
    if not request.user.is_authenticated and access.display_from_cookie(request) is None:
        return redirect(f"{reverse('login')}?next={request.path}")
    board, display = _wall_board(request, slug)
    instances = list(board.instances()[:WALL_MAX_TILES])
    cols, rows = wall_layout(len(instances))
    now = timezone.now()
    next_url = ""
    if display and display.rotate_seconds:
        slugs = list(display.boards.order_by("name").values_list("slug", flat=True))
        if len(slugs) > 1:
            next_url = reverse("wall", args=[slugs[(slugs.index(board.slug) + 1) % len(slugs)]])
    response = render(request, "dashboard/wall.html", {
        "board": board,
        "tiles": [tile_for(i, now, **_wall_urls(board)) for i in instances],
        "cols": cols, "rows": rows,
        "cursor": grid.datetime_to_cursor(now - grid.SETTLE_MARGIN),
        "newest_success": grid.newest_success(),
        "poll_seconds": POLL_SECONDS,
        "next_url": next_url,
        "rotate_seconds": display.rotate_seconds if display else 0,
        "version": settings.APP_VERSION,
    })
    return with_version(access.private_headers(response) if display else response)


@require_GET
@never_cache
def wall_poll(request: HttpRequest, slug: str) -> HttpResponse:
    board, display = _wall_board(request, slug)
    rows = board.instances().values("pk")[:WALL_MAX_TILES]
    response = _scoped_poll(request, rows, "dashboard/wall.html#poll", _wall_urls(board), {})
    return with_version(response)


@require_GET
def wall_capture(request: HttpRequest, slug: str, pk: str, sha256: str) -> HttpResponse:
    board, _ = _wall_board(request, slug)
    capture = get_object_or_404(Capture, pk=pk, sha256=sha256, instance__in=board.instances().values("pk"))
    return serve_capture(request, capture, "thumb")


# --- Share links --------------------------------------------------------------------------------


def _share_urls(token: str) -> dict[str, Callable[..., Any]]:
    return {
        "thumb_url": lambda c: reverse("share-capture", args=[token, c.pk, c.sha256, "thumb"]),
        "detail_url": None,
    }


def _with_link(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
    def wrapper(request: HttpRequest, token: str, **kwargs: Any) -> HttpResponse:
        try:
            link = access.share_link_for(request, token)
        except access.TokenRefused as exc:
            return access.refused(exc)
        return access.private_headers(view(request, link, token, **kwargs))

    wrapper.__name__ = view.__name__
    return wrapper


@require_GET
@never_cache
@_with_link
def share_page(request: HttpRequest, link: ShareLink, token: str) -> HttpResponse:
    access.count_view(request, link)
    instances = list(link.scope()[:WALL_MAX_TILES])
    now = timezone.now()
    return render(request, "dashboard/share.html", {
        "link": link,
        "tiles": [tile_for(i, now, **_share_urls(token)) for i in instances],
        "cursor": grid.datetime_to_cursor(now - grid.SETTLE_MARGIN),
        "newest_success": grid.newest_success(),
        "poll_seconds": POLL_SECONDS,
        "poll_url": reverse("share-poll", args=[token]),
        "version": settings.APP_VERSION,
    })


@require_GET
@never_cache
@_with_link
def share_poll(request: HttpRequest, link: ShareLink, token: str) -> HttpResponse:
    rows = link.scope().values("pk")[:WALL_MAX_TILES]
    return with_version(_scoped_poll(request, rows, "dashboard/grid.html#poll", _share_urls(token),
                                     {"quiet_after_seconds": 120}))


@require_GET
@_with_link
def share_capture(request: HttpRequest, link: ShareLink, token: str, pk: str, sha256: str,
                  variant: str) -> HttpResponse:
    capture = get_object_or_404(Capture, pk=pk, sha256=sha256, instance__in=link.scope().values("pk"))
    response = serve_capture(request, capture, variant)
    # Not the staff images' year of immutable caching: a revoked link must stop showing them at once.
    response["Cache-Control"] = "no-store"
    return response


# --- Managing share links (operators) ------------------------------------------------------------


class ShareLinkForm(forms.Form):
    instances = forms.ModelMultipleChoiceField(
        Instance.objects.order_by("name", "instance_id"), required=False,
        widget=forms.SelectMultiple(attrs={"size": 10}))
    board = forms.ModelChoiceField(Board.objects.all(), required=False, empty_label="— or pick instances —")
    hours = forms.IntegerField(min_value=1, initial=24, label="Expires after (hours)")
    note = forms.CharField(max_length=200, required=False, help_text="e.g. incident 4711")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        hours = self.fields["hours"]
        hours.validators.append(MaxValueValidator(
            settings.SHARE_LINK_MAX_HOURS, f"A link lives at most {settings.SHARE_LINK_MAX_HOURS} hours."))
        hours.widget.attrs["max"] = settings.SHARE_LINK_MAX_HOURS
        hours.initial = settings.SHARE_LINK_DEFAULT_HOURS

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean()
        if bool(cleaned.get("board")) == bool(cleaned.get("instances")):
            raise forms.ValidationError("Share either a board or some instances.")
        return cleaned


@require_http_methods(["GET", "POST"])
@login_required
@permission_required("screenshots.manage_share_links", raise_exception=True)
@never_cache
def share_links(request: HttpRequest) -> HttpResponse:
    form = ShareLinkForm(request.POST or None)
    created_url = ""
    if request.method == "POST" and form.is_valid():
        token, token_hash = new_token()
        link = ShareLink.objects.create(
            token_hash=token_hash, note=form.cleaned_data["note"], board=form.cleaned_data["board"],
            created_by=request.user, expires_at=timezone.now() + timedelta(hours=form.cleaned_data["hours"]),
        )
        if form.cleaned_data["instances"]:
            link.instances.set(form.cleaned_data["instances"])
        # Shown once, here; only its hash is kept.
        created_url = request.build_absolute_uri(reverse("share", args=[token]))
        form = ShareLinkForm()
    active = (ShareLink.objects.filter(revoked_at__isnull=True, expires_at__gt=timezone.now())
              .select_related("created_by", "board").prefetch_related("instances"))
    response = render(request, "dashboard/shares.html", {"form": form, "links": active, "created_url": created_url})
    return access.private_headers(response) if created_url else response


@require_POST
@login_required
@permission_required("screenshots.manage_share_links", raise_exception=True)
def revoke_share_link(request: HttpRequest, pk: int) -> HttpResponse:
    link = get_object_or_404(ShareLink, pk=pk)
    ShareLink.objects.filter(pk=link.pk, revoked_at__isnull=True).update(revoked_at=timezone.now(),
                                                                        revoked_by=request.user)
    messages.success(request, f"Revoked “{link}”.")
    return redirect("share-links")
