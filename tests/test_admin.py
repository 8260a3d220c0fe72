from __future__ import annotations

import pytest
from django.contrib.auth.models import User
from django.test import Client

from screenshots.models import Account, Instance

pytestmark = pytest.mark.django_db


@pytest.fixture
def admin_client_() -> Client:
    client = Client()
    client.force_login(User.objects.create_superuser("root", password="pw-123456789"))
    return client


def account_form(**overrides: str) -> dict[str, str]:
    data = {"name": "Prod", "access_key_id": "LTAI5tAbcdefgh", "access_key_secret": "", "security_token": "",
            "endpoint_scheme": "https", "endpoint_host": "", "endpoint_port": "", "rate_per_second": "",
            "enabled": "on"}
    data.update(overrides)
    return data


class AccountAdminTestCase:
    def test_the_secret_is_write_only(self, admin_client_: Client) -> None:
        account = Account.objects.create(name="Prod", access_key_id="LTAI5tAbcdefgh",
                                         access_key_secret="very-secret-value", security_token="sts-token-value")
        html = admin_client_.get(f"/admin/screenshots/account/{account.pk}/change/").content.decode()
        assert "very-secret-value" not in html and "sts-token-value" not in html

    def test_an_empty_secret_field_keeps_the_stored_secret(self, admin_client_: Client) -> None:
        account = Account.objects.create(name="Prod", access_key_id="LTAI5tAbcdefgh",
                                         access_key_secret="very-secret-value", security_token="sts-token-value",
                                         credentials_error_code="InvalidAccessKeyId.NotFound")
        response = admin_client_.post(f"/admin/screenshots/account/{account.pk}/change/",
                                      account_form(name="Prod renamed"))
        assert response.status_code == 302
        account.refresh_from_db()
        assert account.name == "Prod renamed"
        assert account.access_key_secret == "very-secret-value"
        assert account.security_token == "sts-token-value"
        assert account.credentials_error_code == ""  # changed settings get a fresh try

    def test_a_new_account_needs_a_secret(self, admin_client_: Client) -> None:
        response = admin_client_.post("/admin/screenshots/account/add/", account_form())
        assert response.status_code == 200
        assert "needs its AccessKey secret" in response.content.decode()

    def test_plain_http_is_refused_for_a_remote_endpoint(self, admin_client_: Client) -> None:
        response = admin_client_.post("/admin/screenshots/account/add/", account_form(
            access_key_secret="x-secret", endpoint_scheme="http", endpoint_host="ecs.example.com"))
        assert response.status_code == 200
        assert "only allowed for a loopback endpoint" in response.content.decode()
        assert not Account.objects.exists()


class InstanceAdminTestCase:
    @pytest.mark.parametrize(("field", "value", "message"), [
        ("instance_id", "../../etc/passwd", "Enter an ECS instance id"),
        ("instance_id", "i-ABC", "Enter an ECS instance id"),
        ("region_id", "cn hangzhou", "region id"),
        ("capture_interval", "5", "greater than or equal to 10"),
        ("tags", '{"env": 1}', "Tags are an object of strings"),
    ])
    def test_bad_values_get_a_message(self, admin_client_: Client, field: str, value: str, message: str) -> None:
        account = Account.objects.create(name="Prod", access_key_id="LTAI5tAbcdefgh", access_key_secret="x")
        data = {"account": account.pk, "region_id": "cn-hangzhou", "instance_id": "i-bp1good000000000001",
                "name": "web", "tags": "{}", "capture_interval": "30", "enabled": "on", field: value}
        response = admin_client_.post("/admin/screenshots/instance/add/", data)
        assert response.status_code == 200
        assert message in response.content.decode()
        assert not Instance.objects.exists()

    def test_bulk_disable(self, admin_client_: Client) -> None:
        account = Account.objects.create(name="Prod", access_key_id="LTAI5tAbcdefgh", access_key_secret="x")
        a = Instance.objects.create(account=account, region_id="cn-hangzhou", instance_id="i-bp1good000000000001")
        admin_client_.post("/admin/screenshots/instance/", {"action": "disable", "_selected_action": [a.pk]})
        a.refresh_from_db()
        assert not a.enabled
