from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from screenshots import ecs
from screenshots.discovery import discover
from screenshots.models import Account, Capture, CaptureFailure, Instance, InstanceState, validate_region_id


class AccountForm(forms.ModelForm):
    """Secrets are write-only: never rendered back, and left unchanged when the field is left empty."""

    access_key_secret = forms.CharField(
        label="AccessKey secret",
        required=False,
        strip=True,
        widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "new-password"}),
        help_text="Write-only. Leave empty to keep the stored secret.",
    )
    security_token = forms.CharField(
        label="STS security token",
        required=False,
        strip=True,
        widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "off"}),
        help_text="Write-only. Leave empty to keep the stored token.",
    )
    clear_security_token = forms.BooleanField(required=False, label="Remove the stored STS token")

    class Meta:
        model = Account
        fields = [
            "name",
            "access_key_id",
            "access_key_secret",
            "security_token",
            "clear_security_token",
            "endpoint_scheme",
            "endpoint_host",
            "endpoint_port",
            "rate_per_second",
            "enabled",
        ]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Keep the decrypted values out of the form's initial data (and so out of the page).
        self.initial.pop("access_key_secret", None)
        self.initial.pop("security_token", None)

    def clean_access_key_secret(self) -> str:
        value = self.cleaned_data["access_key_secret"]
        if not value and not self.instance.pk:
            raise forms.ValidationError("A new account needs its AccessKey secret.")
        return value or self.instance.access_key_secret

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean()
        if cleaned.get("clear_security_token"):
            cleaned["security_token"] = ""
        elif not cleaned.get("security_token"):
            cleaned["security_token"] = self.instance.security_token if self.instance.pk else ""
        return cleaned


class DiscoverForm(forms.Form):
    regions = forms.CharField(help_text="Region ids separated by spaces or commas, e.g. cn-hangzhou cn-shanghai")

    def clean_regions(self) -> list[str]:
        regions = [r for r in self.cleaned_data["regions"].replace(",", " ").split() if r]
        for region in regions:
            validate_region_id(region)
        if not regions:
            raise forms.ValidationError("Name at least one region.")
        return regions


@admin.register(Account)
class AccountAdmin(admin.ModelAdmin):
    form = AccountForm
    actions = ["discover_instances"]

    @admin.action(description="Import instances from DescribeInstances")
    def discover_instances(self, request: HttpRequest, queryset: QuerySet[Account]) -> HttpResponse | None:
        form = DiscoverForm(request.POST if "regions" in request.POST else None)
        if not form.is_valid():
            return render(request, "admin/screenshots/discover.html", {
                **self.admin_site.each_context(request), "form": form, "accounts": queryset,
                "title": "Import instances", "opts": self.model._meta,
                "action_checkbox_name": admin.helpers.ACTION_CHECKBOX_NAME,
            })
        for account in queryset:
            try:
                report = discover(account, form.cleaned_data["regions"])
            except ecs.EcsErrorRaised as exc:
                self.message_user(request, f"{account}: ECS refused ({exc.error.code}: {exc.error.message})",
                                  messages.ERROR)
            else:
                self.message_user(request, f"{account}: {report}", messages.SUCCESS)
        return None
    list_display = ["name", "access_key_id", "endpoint_host", "enabled", "credentials_error_code"]
    readonly_fields = ["credentials_error_code", "credentials_error_message", "credentials_error_since"]

    def save_model(self, request: HttpRequest, obj: Account, form: forms.ModelForm, change: bool) -> None:
        if change and form.changed_data:
            # New credentials deserve a new try at once.
            obj.credentials_error_code = obj.credentials_error_message = ""
            obj.credentials_error_since = obj.credentials_retry_at = None
        super().save_model(request, obj, form, change)


@admin.register(Instance)
class InstanceAdmin(admin.ModelAdmin):
    list_display = ["__str__", "instance_id", "region_id", "account", "capture_interval", "enabled"]
    list_filter = ["enabled", "account", "region_id"]
    search_fields = ["name", "instance_id"]
    actions = ["enable", "disable"]
    list_editable = ["capture_interval"]

    @admin.action(description="Enable capturing")
    def enable(self, request: HttpRequest, queryset: QuerySet[Instance]) -> None:
        count = queryset.update(enabled=True)
        self.message_user(request, f"{count} instance(s) enabled.", messages.SUCCESS)

    @admin.action(description="Disable capturing")
    def disable(self, request: HttpRequest, queryset: QuerySet[Instance]) -> None:
        count = queryset.update(enabled=False)
        self.message_user(request, f"{count} instance(s) disabled.", messages.SUCCESS)


@admin.register(InstanceState)
class InstanceStateAdmin(admin.ModelAdmin):
    list_display = ["instance", "last_success_at", "error_code", "consecutive_failures", "next_capture_at"]
    list_select_related = ["instance"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False


@admin.register(Capture)
class CaptureAdmin(admin.ModelAdmin):
    list_display = ["instance", "captured_at", "last_seen_at", "format", "width", "height", "size"]
    list_select_related = ["instance"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False


@admin.register(CaptureFailure)
class CaptureFailureAdmin(admin.ModelAdmin):
    list_display = ["instance", "at", "code", "request_id"]
    list_select_related = ["instance"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False
