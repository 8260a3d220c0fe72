"""End to end through a real Celery worker process, a real Redis broker and the simulator over HTTP."""

from __future__ import annotations

import time
from typing import Any

import pytest

from screenshots import tasks
from screenshots.models import Account, Capture, ErrorCategory, InstanceState
from tests.conftest import MISSING, PHASED_OUT, RUNNING, RUNNING_2, RUNNING_PNG, STOPPED, media_files, wait_for

pytestmark = [pytest.mark.worker, pytest.mark.timeout(90)]


def error_of(instance: Any) -> str:
    return InstanceState.objects.get(pk=instance.pk).error_category


class WorkerCaptureTestCase:
    def test_a_capture_runs_end_to_end_through_a_worker(self, celery_worker: Any, instances: dict,
                                                        simulator: Any, _media: Any) -> None:
        tasks.capture_instance.delay(instances[RUNNING].pk)
        capture = wait_for(lambda: Capture.objects.filter(instance=instances[RUNNING]).first(),
                           message="a capture row")
        assert (_media / capture.image.name).read_bytes().startswith(b"\xff\xd8\xff")
        assert media_files(_media) == {capture.image.name, capture.thumbnail.name}
        assert InstanceState.objects.get(pk=instances[RUNNING].pk).latest_capture_id == capture.pk
        assert len(simulator.control.screenshot_calls(RUNNING)) == 1

    def test_a_beat_tick_captures_the_fleet_and_records_every_error_state(
        self, celery_worker: Any, instances: dict, simulator: Any
    ) -> None:
        tasks.enqueue_due_captures.delay()
        running = [instances[i] for i in (RUNNING, RUNNING_PNG, RUNNING_2)]
        wait_for(lambda: Capture.objects.filter(instance__in=running).count() == 3, message="three captures")
        wait_for(lambda: all(error_of(instances[i]) for i in (STOPPED, PHASED_OUT, MISSING)),
                 message="three error states")
        assert error_of(instances[STOPPED]) == ErrorCategory.NOT_RUNNING
        assert error_of(instances[PHASED_OUT]) == ErrorCategory.NOT_SUPPORTED
        assert error_of(instances[MISSING]) == ErrorCategory.NOT_FOUND
        # Each instance was asked exactly once.
        calls = simulator.control.screenshot_calls()
        assert sorted(c["instance_id"] for c in calls) == sorted([RUNNING, RUNNING_PNG, RUNNING_2, STOPPED,
                                                                  PHASED_OUT, MISSING])

    def test_duplicate_beat_ticks_capture_each_instance_once(self, celery_worker: Any, instances: dict,
                                                             simulator: Any) -> None:
        # Two beat processes started by mistake fire the same tick: both tasks run on the two worker
        # processes at the same moment.
        for _ in range(4):
            tasks.enqueue_due_captures.delay()
        wait_for(lambda: len(simulator.control.screenshot_calls()) >= 6, message="six calls")
        wait_for(lambda: Capture.objects.count() == 3, message="three captures")
        time.sleep(1.5)  # time for any duplicate to show up
        calls = simulator.control.screenshot_calls()
        per_instance = {c["instance_id"] for c in calls}
        assert len(calls) == len(per_instance) == 6

    def test_operator_requests_never_call_one_instance_twice_within_10_s(
        self, celery_worker: Any, instances: dict, simulator: Any
    ) -> None:
        # The simulator refuses calls less than 10 s apart; a Throttling outcome would show a breach.
        pk = instances[RUNNING].pk
        for _ in range(5):  # a burst while the first one runs: coalesced into that one
            tasks.capture_instance.delay(pk, force=True)
        wait_for(lambda: Capture.objects.filter(instance_id=pk).exists(), message="the first capture")
        for _ in range(3):  # within 10 s of it: kept, and done once the 10 s are over
            tasks.capture_instance.delay(pk, force=True)
        wait_for(lambda: len(simulator.control.screenshot_calls(RUNNING)) == 2, timeout=30,
                 message="the retried request after 10 s")
        time.sleep(1.0)  # time for any further call to show up
        calls = simulator.control.screenshot_calls(RUNNING)
        assert [c["code"] for c in calls] == ["Success", "Success"]
        assert calls[1]["monotonic"] - calls[0]["monotonic"] >= 10.0

    @pytest.mark.worker_env(ECS_ACCOUNT_BURST="1")
    def test_the_account_rate_limit_is_shared_by_all_worker_processes(
        self, celery_worker: Any, instances: dict, simulator: Any
    ) -> None:
        Account.objects.update(rate_per_second=2.0)
        for instance in instances.values():
            tasks.capture_instance.delay(instance.pk, force=True)
        wait_for(lambda: len(simulator.control.screenshot_calls()) == 6, timeout=30, message="six calls")
        # Counted on the simulator's side: two worker processes, one bucket of 2 calls/s, burst 1.
        times = sorted(c["monotonic"] for c in simulator.control.screenshot_calls())
        gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
        assert min(gaps) >= 0.4, gaps
        assert times[-1] - times[0] >= 2.4
