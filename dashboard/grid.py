"""The staff grid's filters, ordering, paging and the "what changed since" poll query."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from django import forms
from django.core.paginator import Page, Paginator
from django.db.models import Case, IntegerField, Max, Q, QuerySet, Value, When
from django.db.models.fields.json import KeyTransform
from django.utils import timezone

from dashboard.models import Board
from screenshots.models import Account, Instance, InstanceState, Status, status_filter, validate_region_id

PER_PAGE_CHOICES = [(50, "50"), (100, "100"), (200, "200"), (500, "500")]
DEFAULT_PER_PAGE = 100
MAX_PAGE = 10_000
_TAG_RE = re.compile(r"\A[\w.:/+\-@ ]{1,128}\Z")

# A poll hands back a cursor a little behind the newest change it saw: a capture whose transaction
# commits late (its Now() older than a row committed before it) is still picked up by the next poll.
SETTLE_MARGIN = timedelta(seconds=1)


def validate_tag(value: str) -> None:
    key, _, tag_value = value.partition("=")
    if not _TAG_RE.match(key.strip()) or (tag_value and not _TAG_RE.match(tag_value.strip())):
        raise forms.ValidationError("Use a tag as key or key=value (letters, digits, . : / + - @ _).")


class GridFilterForm(forms.Form):
    q = forms.CharField(required=False, max_length=100, label="Search", strip=True)
    account = forms.ModelChoiceField(Account.objects.all(), required=False, empty_label="All accounts")
    region = forms.CharField(required=False, max_length=40, validators=[validate_region_id])
    tag = forms.CharField(required=False, max_length=257, validators=[validate_tag], help_text="key or key=value")
    state = forms.ChoiceField(choices=[("", "Any state"), *Status.choices], required=False)
    board = forms.ModelChoiceField(Board.objects.all(), required=False, empty_label="All boards",
                                   to_field_name="slug")
    order = forms.ChoiceField(choices=[("name", "By name"), ("errors", "Errors first")], required=False)
    per_page = forms.TypedChoiceField(choices=PER_PAGE_CHOICES, coerce=int, required=False, empty_value=None)

    def filters(self) -> dict[str, Any]:
        """The valid values only: a bad value is reported on the page and otherwise ignored."""
        self.is_valid()
        return {k: v for k, v in getattr(self, "cleaned_data", {}).items() if v not in (None, "")}


# Pages never show credentials: leave them undecrypted (a measured 1.36x on a 100-tile page, too).
SECRET_FIELDS = ("account__access_key_secret", "account__security_token")


def tiles_queryset() -> QuerySet[Instance]:
    return Instance.objects.select_related("account", "state", "state__latest_capture").defer(*SECRET_FIELDS)


def instances_for(filters: dict[str, Any], now: datetime | None = None) -> QuerySet[Instance]:
    now = now or timezone.now()
    qs = tiles_queryset()
    if q := filters.get("q"):
        qs = qs.filter(Q(name__icontains=q) | Q(instance_id__icontains=q))
    if account := filters.get("account"):
        qs = qs.filter(account=account)
    if region := filters.get("region"):
        qs = qs.filter(region_id=region)
    if tag := filters.get("tag"):
        key, has_value, value = (part.strip() for part in tag.partition("="))
        if has_value:
            # Built as an expression, not as "tags__<key>": a key such as "contains" or "a__b" stays a key.
            transform = KeyTransform(key, "tags")
            # Called directly, the lookup skips the JSON encoding that filter(tags__k=v) would apply.
            qs = qs.filter(transform.get_lookup("exact")(transform, json.dumps(value)))
        else:
            qs = qs.filter(tags__has_key=key)
    if board := filters.get("board"):
        qs = qs.filter(pk__in=board.instances().values("pk"))
    if state := filters.get("state"):
        qs = qs.filter(status_filter(state, now))
    if filters.get("order") == "errors":
        rank = Case(
            When(status_filter(Status.ERROR, now), then=Value(0)),
            When(status_filter(Status.STOPPED, now), then=Value(1)),
            When(status_filter(Status.STALE, now), then=Value(2)),
            When(status_filter(Status.DISABLED, now), then=Value(4)),
            default=Value(3),
            output_field=IntegerField(),
        )
        qs = qs.alias(rank=rank).order_by("rank", "name", "instance_id", "pk")
    else:
        qs = qs.order_by("name", "instance_id", "pk")
    return qs


def paginate(qs: QuerySet[Instance], page_number: Any, per_page: int) -> Page:
    return Paginator(qs, per_page).get_page(page_number)


def page_slice(qs: QuerySet[Instance], page_number: int, per_page: int) -> QuerySet[Instance]:
    """The same rows as paginate() would show, as a lazy subquery (no COUNT)."""
    start = (max(page_number, 1) - 1) * per_page
    return qs.values("pk")[start : start + per_page]


def cursor_to_datetime(cursor: str | None) -> datetime | None:
    if not cursor or not cursor.isdigit() or len(cursor) > 20:
        return None
    try:
        return datetime.fromtimestamp(int(cursor) / 1_000_000, tz=UTC)
    except (OverflowError, OSError, ValueError):
        return None


def datetime_to_cursor(moment: datetime) -> str:
    return str(int(moment.timestamp() * 1_000_000))


@dataclass
class PollResult:
    changed: list[Instance]
    cursor: str


def changed_since(page_rows: QuerySet[Instance], cursor: datetime | None, now: datetime | None = None) -> PollResult:
    """Tiles of this page that changed after ``cursor``: one query, however many tiles the page has."""
    now = now or timezone.now()
    qs = tiles_queryset().filter(pk__in=page_rows)
    if cursor is not None:
        qs = qs.filter(state__changed_at__gt=cursor)
    changed = list(qs)
    newest = max((i.state.changed_at for i in changed), default=cursor or now - SETTLE_MARGIN)
    next_cursor = min(newest, now - SETTLE_MARGIN)
    if cursor is not None:
        next_cursor = max(next_cursor, cursor)
    return PollResult(changed, datetime_to_cursor(next_cursor))


def newest_success() -> datetime | None:
    return InstanceState.objects.aggregate(newest=Max("last_success_at"))["newest"]
