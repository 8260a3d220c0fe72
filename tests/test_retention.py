from __future__ import annotations

import os
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.utils import timezone

from screenshots import coordination, ecs, retention
from screenshots.capture import capture_instance
from screenshots.models import Capture, Instance, InstanceState
from tests.conftest import RUNNING, RUNNING_2, media_files

pytestmark = pytest.mark.django_db


def referenced(instance: Instance | None = None) -> set[str]:
    rows = Capture.objects.all() if instance is None else Capture.objects.filter(instance=instance)
    return {name for pair in rows.values_list("image", "thumbnail") for name in pair}


def capture_frames(simulator: Any, instance: Instance, count: int) -> None:
    simulator.control.knobs(min_screenshot_interval=0)
    for _ in range(count):
        coordination.connection().delete(coordination.key("last-call", instance.pk))
        simulator.control.patch(instance.instance_id, bump_frame=True)
        assert capture_instance(instance.pk).status == "captured"


@pytest.fixture(autouse=True)
def _fresh_clients() -> None:
    ecs.reset_clients()


class RetentionTestCase:
    def test_it_keeps_the_newest_n_and_deletes_rows_and_files_together(
        self, instances: dict, simulator: Any, _media: Path
    ) -> None:
        instance = instances[RUNNING]
        capture_frames(simulator, instance, 6)
        newest = list(Capture.objects.filter(instance=instance).values_list("pk", flat=True)[:3])

        report = retention.prune(keep=3, max_age=None)

        assert report.rows == 3
        assert list(Capture.objects.filter(instance=instance).values_list("pk", flat=True)) == newest
        assert media_files(_media) == referenced()
        assert InstanceState.objects.get(pk=instance.pk).latest_capture_id == newest[0]

    def test_it_drops_captures_older_than_the_age_but_keeps_the_newest(
        self, instances: dict, simulator: Any, _media: Path
    ) -> None:
        instance = instances[RUNNING]
        capture_frames(simulator, instance, 3)
        Capture.objects.update(captured_at=timezone.now() - timedelta(days=10))
        retention.prune(keep=100, max_age=timedelta(days=1))
        assert Capture.objects.filter(instance=instance).count() == 1
        assert media_files(_media) == referenced()

    def test_a_file_shared_by_two_rows_stays_until_the_last_row_goes(
        self, instances: dict, simulator: Any, _media: Path
    ) -> None:
        # Two instances showing the same frame share one content-addressed file.
        a, b = instances[RUNNING], instances[RUNNING_2]
        capture_instance(a.pk)
        shared = Capture.objects.get(instance=a)
        Capture.objects.create(instance=b, image=shared.image.name, thumbnail=shared.thumbnail.name,
                               sha256=shared.sha256, format="jpeg", width=1, height=1, size=1,
                               captured_at=timezone.now() - timedelta(days=30))
        capture_frames(simulator, b, 1)
        retention.prune(keep=1, max_age=None)
        assert (_media / shared.image.name).exists()
        assert media_files(_media) == referenced()

    def test_orphans_and_temp_files_are_swept_after_a_grace_period(self, instances: dict, _media: Path) -> None:
        capture_instance(instances[RUNNING].pk)
        orphan = _media / "captures" / "ab" / ("ab" + "0" * 62 + ".jpg")
        temp = _media / "captures" / "ab" / ".tmp-half-written"
        orphan.parent.mkdir(parents=True, exist_ok=True)
        orphan.write_bytes(b"x")
        temp.write_bytes(b"half")
        assert retention.sweep_orphans() == 0  # too young: a capture may be about to commit its row
        old = time.time() - 3600
        os.utime(orphan, (old, old))
        os.utime(temp, (old, old))
        assert retention.sweep_orphans() == 2
        assert media_files(_media) == referenced()
