from __future__ import annotations

from django.apps import AppConfig


class ScreenshotsConfig(AppConfig):
    name = "screenshots"
    verbose_name = "Screenshots"
    default_auto_field = "django.db.models.BigAutoField"
