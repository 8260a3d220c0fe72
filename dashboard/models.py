"""Boards, wall-display tokens and incident share links: ways in for people without a staff session."""

from __future__ import annotations

import hashlib
import secrets
from datetime import datetime, timedelta

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import models
from django.db.models import QuerySet
from django.utils import timezone

from screenshots.models import Instance, validate_region_id

TOKEN_BYTES = 24  # 192 bits of randomness; only a SHA-256 of it is stored


def new_token() -> tuple[str, str]:
    """A fresh (token, hash) pair. The token is shown once; the hash is what we keep."""
    token = secrets.token_urlsafe(TOKEN_BYTES)
    return token, hash_token(token)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class Board(models.Model):
    """A named, ordered set of instances: picked by hand, or every instance matching a tag/region rule."""

    name = models.CharField(max_length=100)
    slug = models.SlugField(max_length=100, unique=True)
    members = models.ManyToManyField(Instance, through="BoardMember", blank=True, related_name="boards")
    rule_tag = models.CharField(
        max_length=257, blank=True, help_text="Instead of picking: every instance with this tag (key or key=value)."
    )
    rule_region = models.CharField(
        max_length=40, blank=True, validators=[validate_region_id],
        help_text="Instead of picking: every instance in this region (combines with the tag).",
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    @property
    def is_rule(self) -> bool:
        return bool(self.rule_tag or self.rule_region)

    def clean(self) -> None:
        if self.rule_tag:
            from dashboard.grid import validate_tag

            try:
                validate_tag(self.rule_tag)
            except Exception as exc:
                raise ValidationError({"rule_tag": exc}) from None

    def instances(self) -> QuerySet[Instance]:
        """The board's instances in board order (position for picked boards, name for rule boards)."""
        from dashboard.grid import instances_for

        if self.is_rule:
            filters = {"tag": self.rule_tag, "region": self.rule_region}
            return instances_for({k: v for k, v in filters.items() if v})
        return instances_for({}).filter(board_memberships__board=self).order_by(
            "board_memberships__position", "name", "pk")


class BoardMember(models.Model):
    board = models.ForeignKey(Board, on_delete=models.CASCADE, related_name="memberships")
    instance = models.ForeignKey(Instance, on_delete=models.CASCADE, related_name="board_memberships")
    position = models.PositiveIntegerField(default=0)

    class Meta:
        ordering = ["position", "pk"]
        constraints = [models.UniqueConstraint(fields=["board", "instance"], name="unique_board_member")]

    def __str__(self) -> str:
        return f"{self.instance} on {self.board}"


class DisplayToken(models.Model):
    """A TV's way in: read-only, limited to its boards, long-lived, revocable. Made by an admin."""

    name = models.CharField(max_length=100, help_text="Where the display hangs, e.g. 'NOC wall left'.")
    token_hash = models.CharField(max_length=64, unique=True, editable=False)
    boards = models.ManyToManyField(Board, related_name="display_tokens")
    rotate_seconds = models.PositiveIntegerField(
        default=0, help_text="Rotate through the boards every N seconds (0: stay on one board)."
    )
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    last_seen_at = models.DateTimeField(null=True, blank=True, editable=False)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    @property
    def is_active(self) -> bool:
        return self.revoked_at is None


def default_share_expiry() -> datetime:
    return timezone.now() + timedelta(hours=settings.SHARE_LINK_DEFAULT_HOURS)


class ShareLink(models.Model):
    """A read-only live view of some instances or one board, for someone without an account."""

    token_hash = models.CharField(max_length=64, unique=True, editable=False)
    note = models.CharField(max_length=200, blank=True)
    board = models.ForeignKey(Board, null=True, blank=True, on_delete=models.CASCADE, related_name="share_links")
    instances = models.ManyToManyField(Instance, blank=True, related_name="share_links")
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL)
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField(default=default_share_expiry)
    revoked_at = models.DateTimeField(null=True, blank=True)
    revoked_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                                   related_name="+")
    view_count = models.PositiveIntegerField(default=0)
    last_viewed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return self.note or f"share link {self.pk}"

    def is_usable(self, now: datetime | None = None) -> bool:
        return self.revoked_at is None and self.expires_at > (now or timezone.now())

    def scope(self) -> QuerySet[Instance]:
        if self.board_id:
            return self.board.instances()
        from dashboard.grid import instances_for

        return instances_for({}).filter(share_links=self)

    def scope_label(self) -> str:
        if self.board_id:
            return f"board {self.board}"
        names = [str(i) for i in self.instances.all()[:4]]
        more = self.instances.count() - len(names)
        return ", ".join(names) + (f" and {more} more" if more > 0 else "")
