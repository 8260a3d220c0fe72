from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest
from django.urls import reverse
from django.utils import timezone

from dashboard.models import Board, BoardMember, DisplayToken, ShareLink, new_token


class BoardMemberInline(admin.TabularInline):
    model = BoardMember
    extra = 1
    autocomplete_fields = ["instance"]


@admin.register(Board)
class BoardAdmin(admin.ModelAdmin):
    list_display = ["name", "slug", "rule_tag", "rule_region"]
    prepopulated_fields = {"slug": ["name"]}
    inlines = [BoardMemberInline]


@admin.register(DisplayToken)
class DisplayTokenAdmin(admin.ModelAdmin):
    list_display = ["name", "created_at", "last_seen_at", "revoked_at"]
    filter_horizontal = ["boards"]
    readonly_fields = ["created_at", "last_seen_at"]
    actions = ["revoke"]

    def save_model(self, request: HttpRequest, obj: DisplayToken, form: forms.ModelForm, change: bool) -> None:
        token = None
        if not change:
            token, obj.token_hash = new_token()
            obj.created_by = request.user
        super().save_model(request, obj, form, change)
        if token:
            # Shown once; only the hash is kept.
            url = request.build_absolute_uri(reverse("display-enter", args=[token]))
            self.message_user(request, f"Open this link once on the display (it is not shown again): {url}",
                              messages.WARNING)

    @admin.action(description="Revoke the selected displays")
    def revoke(self, request: HttpRequest, queryset: QuerySet[DisplayToken]) -> None:
        count = queryset.filter(revoked_at__isnull=True).update(revoked_at=timezone.now())
        self.message_user(request, f"{count} display(s) revoked.", messages.SUCCESS)


@admin.register(ShareLink)
class ShareLinkAdmin(admin.ModelAdmin):
    list_display = ["__str__", "created_by", "created_at", "expires_at", "revoked_at", "view_count"]
    readonly_fields = ["created_by", "created_at", "view_count", "last_viewed_at", "revoked_by"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # made on the share links page, where the token is shown once

    def get_changeform_initial_data(self, request: HttpRequest) -> dict[str, Any]:
        return {}
