from __future__ import annotations

import ipaddress
from datetime import datetime, timedelta

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import MinValueValidator, RegexValidator
from django.db import models
from django.utils import timezone

from screenshots.crypto import EncryptedTextField

# The API refuses two screenshot calls on one instance less than 10 s apart; no interval may be shorter.
MIN_CAPTURE_INTERVAL = 10

# Real ids are "i-" and 20 lowercase alphanumerics; older ones are shorter. Anything else (slashes,
# dots, upper case, spaces) is not an ECS id and never reaches the API, a file name or a log line.
validate_instance_id = RegexValidator(
    r"\Ai-[a-z0-9]{8,30}\Z", "Enter an ECS instance id: 'i-' followed by 8 to 30 lowercase letters or digits."
)
validate_region_id = RegexValidator(
    r"\A[a-z]{2,}(-[a-z0-9]+){1,4}\Z", "Enter an Alibaba Cloud region id such as 'cn-hangzhou'."
)
validate_access_key_id = RegexValidator(
    r"\A[A-Za-z0-9]{8,64}\Z", "An AccessKey ID has 8 to 64 letters or digits."
)


def is_loopback_host(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def stale_window(interval: int, first: bool = False) -> timedelta:
    # Twice the interval; a brand-new instance also gets time for the workers to pick it up.
    return timedelta(seconds=2 * interval + (60 if first else 0))


class ErrorCategory(models.TextChoices):
    """What went wrong with the last call, as the dashboard shows it."""

    NOT_FOUND = "not_found", "Not found"
    NOT_RUNNING = "not_running", "Stopped"
    NOT_SUPPORTED = "not_supported", "Not supported"
    THROTTLED = "throttled", "Throttled"
    CREDENTIALS = "credentials", "Credentials rejected"
    NETWORK = "network", "Unreachable"
    SERVER = "server", "Server error"
    MALFORMED = "malformed", "Bad reply"
    CLIENT = "client", "Request rejected"


class Status(models.TextChoices):
    """What a tile says at a glance; also the grid's state filter."""

    OK = "ok", "OK"
    ERROR = "error", "Error"
    STALE = "stale", "Stale"
    STOPPED = "stopped", "Stopped"
    DISABLED = "disabled", "Disabled"


def status_filter(status: str, now: datetime) -> models.Q:
    """The Q over Instance that matches Instance.get_status() == status (kept side by side on purpose)."""
    disabled = models.Q(enabled=False) | models.Q(account__enabled=False)
    account_error = ~models.Q(account__credentials_error_code="")
    stopped = models.Q(state__error_category=ErrorCategory.NOT_RUNNING) & ~account_error
    error = account_error | (~models.Q(state__error_category="") & ~models.Q(
        state__error_category=ErrorCategory.NOT_RUNNING))
    stale = models.Q(state__stale_after__lt=now)
    match status:
        case Status.DISABLED:
            return disabled
        case Status.ERROR:
            return ~disabled & error
        case Status.STOPPED:
            return ~disabled & stopped
        case Status.STALE:
            return ~disabled & ~error & ~stopped & stale
        case Status.OK:
            return ~disabled & ~error & ~stopped & ~stale
    raise ValueError(f"unknown status {status!r}")


class Account(models.Model):
    name = models.CharField(max_length=100, unique=True)
    access_key_id = models.CharField("AccessKey ID", max_length=64, validators=[validate_access_key_id])
    access_key_secret = EncryptedTextField("AccessKey secret")
    security_token = EncryptedTextField("STS security token", blank=True, default="")
    endpoint_scheme = models.CharField(
        max_length=5, choices=[("https", "https"), ("http", "http (loopback only)")], default="https"
    )
    endpoint_host = models.CharField(
        max_length=253,
        blank=True,
        help_text="Leave empty for Alibaba Cloud (ecs.<region>.aliyuncs.com); set for the simulator or "
        "another ECS-compatible server.",
    )
    endpoint_port = models.PositiveIntegerField(null=True, blank=True)
    rate_per_second = models.FloatField(
        null=True, blank=True, validators=[MinValueValidator(0.1)], help_text="Empty: the site default."
    )
    enabled = models.BooleanField(default=True)

    # Account-level credential failure: one error for the whole account instead of one per instance.
    credentials_error_code = models.CharField(max_length=100, blank=True)
    credentials_error_message = models.TextField(blank=True)
    credentials_error_since = models.DateTimeField(null=True, blank=True)
    credentials_retry_at = models.DateTimeField(null=True, blank=True)

    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    def clean(self) -> None:
        if self.endpoint_scheme == "http" and not is_loopback_host(self.endpoint_host):
            raise ValidationError({"endpoint_scheme": "Plain http is only allowed for a loopback endpoint."})
        if self.endpoint_port is not None and not self.endpoint_host:
            raise ValidationError({"endpoint_port": "A port needs an endpoint host."})

    def endpoint_for(self, region_id: str) -> str:
        host = self.endpoint_host or f"ecs.{region_id}.aliyuncs.com"
        return f"{host}:{self.endpoint_port}" if self.endpoint_port else host

    @property
    def has_credentials_error(self) -> bool:
        return bool(self.credentials_error_code)

    def credentials_blocked(self, now: datetime | None = None) -> bool:
        now = now or timezone.now()
        return self.has_credentials_error and (
            self.credentials_retry_at is None or self.credentials_retry_at > now
        )


class Instance(models.Model):
    account = models.ForeignKey(Account, on_delete=models.CASCADE, related_name="instances")
    region_id = models.CharField("region", max_length=40, validators=[validate_region_id])
    instance_id = models.CharField("instance id", max_length=40, validators=[validate_instance_id])
    name = models.CharField(max_length=128, blank=True)
    tags = models.JSONField(default=dict, blank=True)
    capture_interval = models.PositiveIntegerField(
        default=30, validators=[MinValueValidator(MIN_CAPTURE_INTERVAL)], help_text="Seconds; at least 10."
    )
    wake_up = models.BooleanField(default=False, help_text="Send WakeUp=true to wake sleeping instances.")
    enabled = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name", "instance_id"]
        indexes = [models.Index(fields=["name", "instance_id"])]  # the grid's order
        permissions = [
            ("operate_instance", "Can capture and wake instances on demand"),
            ("manage_share_links", "Can create and revoke share links"),
        ]
        constraints = [
            models.UniqueConstraint(fields=["account", "instance_id"], name="unique_instance_per_account"),
            models.CheckConstraint(
                condition=models.Q(capture_interval__gte=MIN_CAPTURE_INTERVAL), name="capture_interval_floor"
            ),
        ]

    def __str__(self) -> str:
        return self.name or self.instance_id

    def save(self, *args: object, **kwargs: object) -> None:
        super().save(*args, **kwargs)
        # A new instance that never gets a first capture (workers down) turns stale like any other.
        InstanceState.objects.get_or_create(
            instance=self, defaults={"stale_after": timezone.now() + stale_window(self.capture_interval, first=True)}
        )

    def get_status(self, now: datetime | None = None) -> Status:
        """Needs ``account`` and ``state`` loaded (select_related)."""
        if not (self.enabled and self.account.enabled):
            return Status.DISABLED
        if self.account.has_credentials_error:
            return Status.ERROR
        if self.state.error_category == ErrorCategory.NOT_RUNNING:
            return Status.STOPPED
        if self.state.error_category:
            return Status.ERROR
        if self.state.is_stale(now):
            return Status.STALE
        return Status.OK

    def clean(self) -> None:
        if not isinstance(self.tags, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in self.tags.items()
        ):
            raise ValidationError({"tags": 'Tags are an object of strings, e.g. {"env": "prod"}.'})


class InstanceState(models.Model):
    """What the pipeline knows about an instance. Kept apart from Instance so that editing an
    instance in the admin never overwrites what a worker just wrote."""

    instance = models.OneToOneField(
        Instance, on_delete=models.CASCADE, primary_key=True, related_name="state"
    )
    latest_capture = models.ForeignKey(
        "Capture", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    last_success_at = models.DateTimeField(null=True, blank=True, db_index=True)
    last_attempt_at = models.DateTimeField(null=True, blank=True)
    error_category = models.CharField(max_length=20, choices=ErrorCategory.choices, blank=True)
    error_code = models.CharField(max_length=100, blank=True)
    error_message = models.TextField(blank=True)
    error_since = models.DateTimeField(null=True, blank=True)
    error_request_id = models.CharField(max_length=64, blank=True)
    consecutive_failures = models.PositiveIntegerField(default=0)
    next_capture_at = models.DateTimeField(default=timezone.now, db_index=True)
    # A capture older than twice the interval is stale; stored at write time so pages can filter on it.
    stale_after = models.DateTimeField(null=True, blank=True, db_index=True)
    # Set from the database's clock (Now()) on every change a page would show, so pollers on any host
    # can ask "what changed since T?" without trusting the workers' clocks.
    changed_at = models.DateTimeField(default=timezone.now, db_index=True)

    def __str__(self) -> str:
        return f"state of {self.instance_id}"

    def is_stale(self, now: datetime | None = None) -> bool:
        return self.stale_after is not None and self.stale_after < (now or timezone.now())


def capture_path(sha256: str, extension: str) -> str:
    # Named by content only: nothing from the API or a user reaches a file name.
    return f"captures/{sha256[:2]}/{sha256}.{extension}"


def thumbnail_path(sha256: str) -> str:
    return f"thumbs/{sha256[:2]}/{sha256}.jpg"


class Capture(models.Model):
    FORMAT_CHOICES = [("jpeg", "JPEG"), ("png", "PNG")]

    instance = models.ForeignKey(Instance, on_delete=models.CASCADE, related_name="captures")
    image = models.FileField(max_length=200)
    thumbnail = models.FileField(max_length=200)
    sha256 = models.CharField(max_length=64, db_index=True)
    format = models.CharField(max_length=4, choices=FORMAT_CHOICES)
    width = models.PositiveIntegerField()
    height = models.PositiveIntegerField()
    size = models.PositiveIntegerField(help_text="bytes")
    captured_at = models.DateTimeField(default=timezone.now)
    last_seen_at = models.DateTimeField(default=timezone.now)
    request_id = models.CharField(max_length=64, blank=True)

    class Meta:
        ordering = ["-captured_at", "-id"]
        indexes = [models.Index(fields=["instance", "-captured_at"])]
        get_latest_by = "captured_at"

    def __str__(self) -> str:
        return f"{self.instance_id} @ {self.captured_at:%Y-%m-%d %H:%M:%S}"

    @property
    def content_type(self) -> str:
        return f"image/{self.format}"


class CaptureFailure(models.Model):
    """The recent failures of an instance, for its detail page (pruned to FAILURE_LOG_KEEP)."""

    instance = models.ForeignKey(Instance, on_delete=models.CASCADE, related_name="failures")
    at = models.DateTimeField(default=timezone.now)
    category = models.CharField(max_length=20, choices=ErrorCategory.choices)
    code = models.CharField(max_length=100)
    message = models.TextField(blank=True)
    request_id = models.CharField(max_length=64, blank=True)
    http_status = models.PositiveSmallIntegerField(null=True, blank=True)

    class Meta:
        ordering = ["-at", "-id"]
        indexes = [models.Index(fields=["instance", "-at"])]

    def __str__(self) -> str:
        return f"{self.code} on {self.instance_id}"


def default_account_rate(account: Account) -> float:
    return account.rate_per_second or settings.ECS_ACCOUNT_RATE
