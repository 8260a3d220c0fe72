"""Retention: rows and files go together, and files on disk always equal files referenced by rows."""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from datetime import timedelta

from django.conf import settings
from django.core.files.storage import FileSystemStorage, default_storage, storages
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from screenshots.models import Capture, CaptureFailure, Instance, InstanceState
from screenshots.storage import TEMP_PREFIX

log = logging.getLogger(__name__)

# Files younger than this are never swept as orphans: a capture may have written its file and not
# yet committed its row.
ORPHAN_GRACE_SECONDS = 600


@dataclass
class PruneReport:
    rows: int = 0
    files: int = 0
    orphans: int = 0
    failures: int = 0


def expired_capture_ids(instance: Instance, keep: int, max_age: timedelta | None) -> list[int]:
    ids = list(
        Capture.objects.filter(instance=instance)
        .order_by("-captured_at", "-id")
        .values_list("id", "captured_at")
    )
    if not ids:
        return []
    # The newest capture always stays: an instance that stopped a week ago still shows its last screen.
    newest, *older = ids
    cutoff = timezone.now() - max_age if max_age else None
    return [pk for index, (pk, at) in enumerate(older, start=1) if index >= keep or (cutoff and at < cutoff)]


def prune(keep: int | None = None, max_age: timedelta | None | bool = True) -> PruneReport:
    keep = settings.RETENTION_MAX_CAPTURES if keep is None else keep
    if max_age is True:
        max_age = settings.RETENTION_MAX_AGE or None
    report = PruneReport()
    for instance in Instance.objects.all().only("pk"):
        expired = expired_capture_ids(instance, max(keep, 1), max_age or None)
        if expired:
            report.rows += len(expired)
            names = set()
            with transaction.atomic():
                for image, thumb in Capture.objects.filter(pk__in=expired).values_list("image", "thumbnail"):
                    names.update((image, thumb))
                # latest_capture never points at an expired row (the newest is kept), but be safe.
                InstanceState.objects.filter(latest_capture_id__in=expired).update(latest_capture=None)
                Capture.objects.filter(pk__in=expired).delete()
            report.files += _delete_unreferenced(names)
        report.failures += _prune_failures(instance)
    report.orphans = sweep_orphans()
    if report.rows or report.orphans:
        log.info("pruned %d captures, %d files, %d orphans", report.rows, report.files, report.orphans)
    return report


def _delete_unreferenced(names: set[str]) -> int:
    """Delete files that no remaining row references (identical frames share one file)."""
    if not names:
        return 0
    still_used = set(
        Capture.objects.filter(Q(image__in=names) | Q(thumbnail__in=names)).values_list("image", "thumbnail")
    )
    used = {name for pair in still_used for name in pair}
    deleted = 0
    for name in names - used:
        default_storage.delete(name)
        deleted += 1
    return deleted


def _prune_failures(instance: Instance) -> int:
    keep_ids = CaptureFailure.objects.filter(instance=instance).values_list("id", flat=True)[
        : settings.FAILURE_LOG_KEEP
    ]
    deleted, _ = CaptureFailure.objects.filter(instance=instance).exclude(id__in=list(keep_ids)).delete()
    return deleted


def sweep_orphans(grace_seconds: float = ORPHAN_GRACE_SECONDS) -> int:
    """Remove files under captures/ and thumbs/ that no row references, and leftover temp files."""
    if not isinstance(storages["default"], FileSystemStorage):
        # Object storage: files are written whole or not at all and deleted with their rows; listing a
        # bucket to look for strays is left to the bucket's own lifecycle rules.
        return 0
    referenced = set()
    for image, thumb in Capture.objects.values_list("image", "thumbnail").iterator(chunk_size=2000):
        referenced.add(image)
        referenced.add(thumb)
    root = default_storage.path("")
    cutoff = time.time() - grace_seconds
    removed = 0
    for top in ("captures", "thumbs"):
        for directory, _dirs, files in os.walk(os.path.join(root, top)):
            for filename in files:
                full = os.path.join(directory, filename)
                name = os.path.relpath(full, root).replace(os.sep, "/")
                if name in referenced and not filename.startswith(TEMP_PREFIX):
                    continue
                try:
                    if os.path.getmtime(full) < cutoff:
                        os.unlink(full)
                        removed += 1
                except FileNotFoundError:
                    pass
    return removed
