from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth.models import User
from django.core.management import CommandError, call_command
from django.test import Client

from screenshots import ecs
from screenshots.models import Account, Instance
from tests.conftest import PHASED_OUT, REGION, RUNNING, RUNNING_2, RUNNING_PNG, STOPPED

pytestmark = pytest.mark.django_db

SIMULATED = {RUNNING, RUNNING_PNG, RUNNING_2, STOPPED, PHASED_OUT}


@pytest.fixture(autouse=True)
def _fresh_clients() -> None:
    ecs.reset_clients()


class DiscoveryTestCase:
    def test_it_follows_next_token_paging(self, account: Account) -> None:
        found = list(ecs.describe_instances(account, REGION, page_size=2))
        assert {i.instance_id for i in found} == SIMULATED
        assert len(found) == len(SIMULATED)

    def test_it_imports_names_and_tags_idempotently(self, account: Account, capsys: Any) -> None:
        call_command("discover_instances", account.name, REGION)
        assert set(Instance.objects.values_list("instance_id", flat=True)) == SIMULATED
        web = Instance.objects.get(instance_id=RUNNING)
        assert (web.name, web.tags) == ("web-01", {"env": "test"})
        assert "5 new" in capsys.readouterr().out

        Instance.objects.filter(pk=web.pk).update(capture_interval=60, name="renamed-here")
        call_command("discover_instances", str(account.pk), REGION)
        web.refresh_from_db()
        assert Instance.objects.count() == 5
        assert web.name == "web-01"  # the cloud's name wins
        assert web.capture_interval == 60  # our settings stay
        assert "0 new, 1 updated" in capsys.readouterr().out

    def test_an_api_error_is_reported_not_raised(self, account: Account) -> None:
        Account.objects.filter(pk=account.pk).update(access_key_id="LTAI5tNoSuchKey000")
        with pytest.raises(CommandError, match="InvalidAccessKeyId.NotFound"):
            call_command("discover_instances", account.name, REGION)
        assert not Instance.objects.exists()

    def test_a_bad_region_is_refused(self, account: Account) -> None:
        with pytest.raises(CommandError, match="region"):
            call_command("discover_instances", account.name, "../../etc")

    def test_the_admin_action_imports(self, account: Account) -> None:
        admin = User.objects.create_superuser("root", password="pw-123456789")
        client = Client()
        client.force_login(admin)
        response = client.post("/admin/screenshots/account/", {
            "action": "discover_instances", "_selected_action": [account.pk], "regions": REGION})
        assert response.status_code == 302
        assert Instance.objects.count() == 5
