from __future__ import annotations

import os
from typing import Any

from celery import Celery
from celery.signals import before_task_publish

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "dashboard.settings")

app = Celery("dashboard")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@before_task_publish.connect
def _beat_heartbeat(sender: str | None = None, **kwargs: Any) -> None:
    # Only beat publishes the tick task: its publishing is beat's proof of life, whatever the workers do.
    if sender == "screenshots.tasks.enqueue_due_captures":
        from screenshots import metrics

        metrics.heartbeat("beat")
