"""What a tile says: the status of an instance turned into a label, a sentence and the details."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from django.urls import reverse
from django.utils import timezone

from screenshots.models import Capture, ErrorCategory, Instance, Status

_SENTENCES = {
    ErrorCategory.NOT_RUNNING: "The instance is not running; its screen shows again once it runs.",
    ErrorCategory.NOT_FOUND: "ECS does not know this instance in {region}: it may have been released.",
    ErrorCategory.NOT_SUPPORTED: "This instance type cannot take screenshots (a phased-out type).",
    ErrorCategory.THROTTLED: "ECS is throttling our calls; retrying with a back-off.",
    ErrorCategory.CREDENTIALS: "The account's AccessKey was rejected; no captures until it is fixed.",
    ErrorCategory.NETWORK: "ECS could not be reached (timeout or connection error); retrying.",
    ErrorCategory.SERVER: "ECS answered with a server error; retrying.",
    ErrorCategory.MALFORMED: "ECS sent a reply that is not a usable image; the last good one stays.",
    ErrorCategory.CLIENT: "ECS rejected the request as malformed: a bug on our side, logged.",
}

_LABELS = {
    ErrorCategory.NOT_RUNNING: "Stopped",
    ErrorCategory.NOT_FOUND: "Not found",
    ErrorCategory.NOT_SUPPORTED: "Not supported",
    ErrorCategory.THROTTLED: "Throttled",
    ErrorCategory.CREDENTIALS: "Credentials rejected",
    ErrorCategory.NETWORK: "Unreachable",
    ErrorCategory.SERVER: "Server error",
    ErrorCategory.MALFORMED: "Bad reply",
    ErrorCategory.CLIENT: "Request rejected",
}


@dataclass(frozen=True)
class Tile:
    instance: Instance
    status: Status
    kind: str  # CSS modifier: ok, stale, disabled, pending or an ErrorCategory value
    label: str
    sentence: str
    code: str
    request_id: str
    since: datetime | None
    capture: Capture | None
    thumb_url: str = ""
    detail_url: str = ""  # empty where the viewer may not open the staff page (walls, share links)

    @property
    def dimmed(self) -> bool:
        return self.status != Status.OK

    @property
    def short(self) -> str:
        """A few words for a wall display, read from across a room."""
        return {"ok": "", "pending": "Waiting"}.get(self.kind, self.label)


def staff_thumb_url(capture: Capture) -> str:
    return reverse("capture-thumb", args=[capture.pk, capture.sha256])


def staff_detail_url(instance: Instance) -> str:
    return reverse("instance-detail", args=[instance.pk])


def tile_for(
    instance: Instance,
    now: datetime | None = None,
    thumb_url: Callable[[Capture], str] = staff_thumb_url,
    detail_url: Callable[[Instance], str] | None = staff_detail_url,
) -> Tile:
    now = now or timezone.now()
    state, account = instance.state, instance.account
    status = instance.get_status(now)
    capture = state.latest_capture
    code = request_id = ""
    since = None
    if status == Status.DISABLED:
        kind, label, sentence = "disabled", "Disabled", "Capturing is switched off for this instance."
    elif account.has_credentials_error:
        category = ErrorCategory.CREDENTIALS
        kind, label, sentence = category.value, _LABELS[category], _SENTENCES[category]
        code, since = account.credentials_error_code, account.credentials_error_since
    elif state.error_category:
        category = ErrorCategory(state.error_category)
        kind, label = category.value, _LABELS[category]
        sentence = _SENTENCES[category].format(region=instance.region_id)
        code, request_id, since = state.error_code, state.error_request_id, state.error_since
    elif status == Status.STALE:
        kind, label = "stale", "Stale"
        sentence = "No new capture for more than twice the interval: are the workers running?"
    elif capture is None:
        kind, label, sentence = "pending", "Waiting", "Waiting for the first capture."
    else:
        kind, label, sentence = "ok", "Live", ""
    return Tile(instance, status, kind, label, sentence, code, request_id, since, capture,
                thumb_url(capture) if capture else "", detail_url(instance) if detail_url else "")
