from __future__ import annotations

from typing import Any

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required, permission_required
from django.core.files.storage import default_storage
from django.db import DatabaseError, connection
from django.http import FileResponse, Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404, render
from django.utils import timezone
from django.utils.crypto import constant_time_compare
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET, require_POST
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from redis import RedisError

from dashboard import console, grid
from dashboard.tiles import tile_for
from screenshots import coordination, metrics, tasks
from screenshots.models import MIN_CAPTURE_INTERVAL, Capture, CaptureFailure, Instance

POLL_SECONDS = 5
# The page warns when no capture at all has landed for this long (workers or beat down).
QUIET_AFTER_SECONDS = 120
HISTORY_LIMIT = 200


def _get_instance(pk: int) -> Instance:
    return get_object_or_404(grid.tiles_queryset(), pk=pk)


def _grid_context(request: HttpRequest) -> dict[str, Any]:
    data = request.GET.copy()
    data.setdefault("per_page", str(grid.DEFAULT_PER_PAGE))
    form = grid.GridFilterForm(data)
    filters = form.filters()
    per_page = filters.get("per_page") or grid.DEFAULT_PER_PAGE
    return {"form": form, "filters": filters, "per_page": per_page,
            "query": grid.instances_for(filters)}


@require_GET
@login_required
@never_cache
def index(request: HttpRequest) -> HttpResponse:
    ctx = _grid_context(request)
    page = grid.paginate(ctx["query"], request.GET.get("page"), ctx["per_page"])
    now = timezone.now()
    if ctx["form"].errors:
        for field, errors in ctx["form"].errors.items():
            messages.error(request, f"{ctx['form'].fields[field].label or field}: {' '.join(errors)} (ignored)")
    params = request.GET.copy()
    params.pop("page", None)
    return render(request, "dashboard/grid.html", {
        **ctx,
        "page": page,
        "tiles": [tile_for(instance, now) for instance in page.object_list],
        "cursor": grid.datetime_to_cursor(now - grid.SETTLE_MARGIN),
        "newest_success": grid.newest_success(),
        "filter_query": params.urlencode(),
        "poll_seconds": POLL_SECONDS,
        "quiet_after_seconds": QUIET_AFTER_SECONDS,
    })


@require_GET
@login_required
@never_cache
def grid_poll(request: HttpRequest) -> HttpResponse:
    """One request per page per interval: 204 if none of the page's tiles changed, else only those."""
    ctx = _grid_context(request)
    try:
        # Bounded: an absurd page number would overflow the database's OFFSET.
        page_number = min(max(int(request.GET.get("page", 1)), 1), grid.MAX_PAGE)
    except ValueError:
        page_number = 1
    rows = grid.page_slice(ctx["query"], page_number, ctx["per_page"])
    result = grid.changed_since(rows, grid.cursor_to_datetime(request.GET.get("cursor")))
    if not result.changed:
        return HttpResponse(status=204)
    now = timezone.now()
    return render(request, "dashboard/grid.html#poll", {
        "tiles": [tile_for(instance, now) for instance in result.changed],
        "cursor": result.cursor,
        "newest_success": grid.newest_success(),
        "quiet_after_seconds": QUIET_AFTER_SECONDS,
        "oob": True,
    })


def _detail_context(instance: Instance, request: HttpRequest) -> dict[str, Any]:
    history = list(Capture.objects.filter(instance=instance).order_by("-captured_at", "-id")[:HISTORY_LIMIT])
    shown = history[0] if history else None
    if (wanted := request.GET.get("capture", "")).isdigit():
        shown = next((c for c in history if c.pk == int(wanted)), shown)
    index = history.index(shown) if shown in history else 0
    return {
        "instance": instance,
        "tile": tile_for(instance),
        "history": history,
        "shown": shown,
        "newer": history[index - 1] if shown and index > 0 else None,
        "older": history[index + 1] if shown and index + 1 < len(history) else None,
        "failures": CaptureFailure.objects.filter(instance=instance)[:20],
        "can_operate": request.user.has_perm("screenshots.operate_instance"),
        "poll_seconds": POLL_SECONDS,
        "changed_at": grid.datetime_to_cursor(instance.state.changed_at),
        "following_latest": "capture" not in request.GET,
    }


@require_GET
@login_required
@never_cache
def instance_detail(request: HttpRequest, pk: int) -> HttpResponse:
    instance = _get_instance(pk)
    return render(request, "dashboard/instance.html", _detail_context(instance, request))


@require_GET
@login_required
@never_cache
def instance_poll(request: HttpRequest, pk: int) -> HttpResponse:
    instance = _get_instance(pk)
    if request.GET.get("changed_at") == grid.datetime_to_cursor(instance.state.changed_at):
        return HttpResponse(status=204)
    return render(request, "dashboard/instance.html#live", _detail_context(instance, request))


@require_POST
@login_required
@permission_required("screenshots.operate_instance", raise_exception=True)
def capture_now(request: HttpRequest, pk: int) -> HttpResponse:
    instance = _get_instance(pk)
    wake_up = request.POST.get("wake_up") == "1"
    tasks.request_capture(instance.pk, wake_up=True if wake_up else None)
    wait = coordination.seconds_until_call_allowed(instance.pk)
    return render(request, "dashboard/instance.html#progress", {
        "instance": instance, "wake_up": wake_up, "wait": wait, "requested_at": timezone.now(),
        "floor": MIN_CAPTURE_INTERVAL,
    })


@require_GET
@login_required
def console_output(request: HttpRequest, pk: int) -> HttpResponse:
    instance = _get_instance(pk)
    result = console.console_output(instance)
    return render(request, "dashboard/instance.html#console", {"instance": instance, "console": result,
                                                               "is_error": not isinstance(result, console.ConsoleText)})


@require_GET
@login_required
def capture_image(request: HttpRequest, pk: str, sha256: str, variant: str) -> FileResponse:
    capture = get_object_or_404(Capture.objects.select_related("instance"), pk=pk, sha256=sha256)
    return serve_capture(request, capture, variant)


def serve_capture(request: HttpRequest, capture: Capture, variant: str) -> FileResponse:
    """Capture files by content-hash URL: immutable, so browsers cache them for good."""
    name = capture.thumbnail.name if variant == "thumb" else capture.image.name
    try:
        handle = default_storage.open(name, "rb")
    except FileNotFoundError:
        raise Http404("file missing") from None
    content_type = "image/jpeg" if variant == "thumb" else capture.content_type
    response = FileResponse(handle, content_type=content_type)
    if request.GET.get("download") == "1" and variant == "full":
        response["Content-Disposition"] = (
            f'attachment; filename="{capture.instance.instance_id}-{capture.captured_at:%Y%m%dT%H%M%SZ}.'
            f'{capture.image.name.rsplit(".", 1)[-1]}"'
        )
    response["Cache-Control"] = "private, max-age=31536000, immutable"
    response["X-Content-Type-Options"] = "nosniff"
    return response


def _may_monitor(request: HttpRequest) -> bool:
    token = settings.METRICS_TOKEN
    given = request.headers.get("Authorization", "")
    if token and constant_time_compare(given, f"Bearer {token}"):
        return True
    return request.user.is_authenticated and request.user.is_staff


@require_GET
@never_cache
def health(request: HttpRequest) -> JsonResponse:
    """For load balancers: can this web process reach the database and Redis? Says nothing more."""
    checks = {}
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        checks["database"] = True
    except DatabaseError:
        checks["database"] = False
    try:
        checks["redis"] = bool(coordination.connection().ping())
    except RedisError:
        checks["redis"] = False
    ok = all(checks.values())
    return JsonResponse({"ok": ok, **checks}, status=200 if ok else 503)


@require_GET
@never_cache
def pipeline_health(request: HttpRequest) -> HttpResponse:
    """Is beat alive, are workers consuming, how old is the newest capture. Staff or METRICS_TOKEN."""
    if not _may_monitor(request):
        return HttpResponse("Forbidden", status=403, content_type="text/plain")
    try:
        report = metrics.pipeline_health()
    except (RedisError, DatabaseError) as exc:
        return JsonResponse({"ok": False, "error": type(exc).__name__}, status=503)
    return JsonResponse(report, status=200 if report["ok"] else 503)


@require_GET
@never_cache
def prometheus_metrics(request: HttpRequest) -> HttpResponse:
    if not _may_monitor(request):
        return HttpResponse("Forbidden", status=403, content_type="text/plain")
    registry = CollectorRegistry()
    registry.register(metrics.PipelineCollector())
    return HttpResponse(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)

