from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone

from screenshots.models import Account, Instance, InstanceState
from screenshots.scheduling import claim_due_instances

pytestmark = pytest.mark.django_db


@pytest.fixture
def fleet() -> list[Instance]:
    account = Account.objects.create(name="a", access_key_id="LTAI5tAbcdefgh", access_key_secret="x")
    return [
        Instance.objects.create(account=account, region_id="cn-hangzhou", instance_id=f"i-bp1sched{n:012d}")
        for n in range(5)
    ]


class ClaimDueInstancesTestCase:
    def test_every_new_instance_is_due_once(self, fleet: list[Instance]) -> None:
        assert sorted(claim_due_instances()) == sorted(i.pk for i in fleet)
        assert claim_due_instances() == []

    def test_a_claim_pushes_the_next_time_past_the_interval(self, fleet: list[Instance]) -> None:
        claim_due_instances()
        for s in InstanceState.objects.all():
            # interval 30 s: leased for 45 s, so a lost task is retried within two intervals
            assert timezone.now() + timedelta(seconds=40) <= s.next_capture_at <= timezone.now() + timedelta(seconds=46)

    def test_disabled_instances_and_accounts_are_not_due(self, fleet: list[Instance]) -> None:
        Instance.objects.filter(pk=fleet[0].pk).update(enabled=False)
        Account.objects.update(enabled=False)
        assert claim_due_instances() == []
        Account.objects.update(enabled=True)
        assert sorted(claim_due_instances()) == sorted(i.pk for i in fleet[1:])

    def test_an_account_with_rejected_credentials_waits_for_its_retry_time(self, fleet: list[Instance]) -> None:
        Account.objects.update(credentials_error_code="InvalidAccessKeyId.NotFound",
                               credentials_retry_at=timezone.now() + timedelta(minutes=5))
        assert claim_due_instances() == []
        Account.objects.update(credentials_retry_at=timezone.now() - timedelta(seconds=1))
        assert len(claim_due_instances()) == 5

    def test_instances_not_yet_due_are_left_alone(self, fleet: list[Instance]) -> None:
        InstanceState.objects.filter(pk=fleet[0].pk).update(next_capture_at=timezone.now() + timedelta(seconds=30))
        assert fleet[0].pk not in claim_due_instances()


@pytest.mark.django_db(transaction=True)
class DuplicateBeatTestCase:
    def test_two_beats_at_once_claim_each_instance_once(self, fleet: list[Instance]) -> None:
        results: list[list[int]] = []
        barrier = threading.Barrier(2)

        def beat() -> None:
            barrier.wait()
            try:
                results.append(claim_due_instances())
            finally:
                connection.close()

        threads = [threading.Thread(target=beat) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        claimed = results[0] + results[1]
        assert sorted(claimed) == sorted(i.pk for i in fleet)  # each exactly once, whoever won
