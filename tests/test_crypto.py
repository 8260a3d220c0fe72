from __future__ import annotations

import pytest
from cryptography.fernet import Fernet
from django.db import connection

from screenshots.models import Account


@pytest.mark.django_db
class EncryptedCredentialsTestCase:
    def _raw(self, account: Account, column: str) -> str:
        with connection.cursor() as cursor:
            cursor.execute(f"SELECT {column} FROM screenshots_account WHERE id = %s", [account.pk])
            return cursor.fetchone()[0]

    def test_secret_and_token_are_encrypted_at_rest(self) -> None:
        account = Account.objects.create(
            name="a", access_key_id="LTAI5tAbcdefgh", access_key_secret="s3cr3t-value", security_token="sts-token-x"
        )
        raw_secret = self._raw(account, "access_key_secret")
        raw_token = self._raw(account, "security_token")
        assert "s3cr3t-value" not in raw_secret
        assert "sts-token-x" not in raw_token
        assert raw_secret.startswith("gAAAA")  # a Fernet token
        reloaded = Account.objects.get(pk=account.pk)
        assert reloaded.access_key_secret == "s3cr3t-value"
        assert reloaded.security_token == "sts-token-x"

    def test_an_empty_token_stays_empty(self) -> None:
        account = Account.objects.create(name="a", access_key_id="LTAI5tAbcdefgh", access_key_secret="x")
        assert self._raw(account, "security_token") == ""

    def test_values_survive_a_key_rotation(self, settings: object) -> None:
        account = Account.objects.create(name="a", access_key_id="LTAI5tAbcdefgh", access_key_secret="old-key-secret")
        old_keys = list(settings.CREDENTIALS_ENCRYPTION_KEYS)
        new_key = Fernet.generate_key().decode()
        settings.CREDENTIALS_ENCRYPTION_KEYS = [new_key, *old_keys]
        from django.core.management import call_command

        call_command("rotate_credentials_key")
        settings.CREDENTIALS_ENCRYPTION_KEYS = [new_key]  # the old key is gone now
        assert Account.objects.get(pk=account.pk).access_key_secret == "old-key-secret"

    def test_a_wrong_key_fails_loudly(self, settings: object) -> None:
        account = Account.objects.create(name="a", access_key_id="LTAI5tAbcdefgh", access_key_secret="x-secret")
        settings.CREDENTIALS_ENCRYPTION_KEYS = [Fernet.generate_key().decode()]
        with pytest.raises(ValueError, match="cannot be decrypted"):
            Account.objects.get(pk=account.pk)
