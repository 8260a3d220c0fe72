"""Re-encrypt stored credentials under the first key of CREDENTIALS_ENCRYPTION_KEYS.

Rotation without downtime: put the new key first and keep the old one after it (every process can
still read both), run this command, then drop the old key.
"""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand
from django.db import connection, transaction

from screenshots import crypto
from screenshots.models import Account


class Command(BaseCommand):
    help = "Re-encrypt every stored AccessKey secret and STS token under the primary key."

    def handle(self, *args: Any, **options: Any) -> None:
        table = connection.ops.quote_name(Account._meta.db_table)
        count = 0
        with transaction.atomic():
            # Raw tokens: rotate() re-encrypts without the plaintext ever leaving the crypto module.
            rows = Account.objects.select_for_update().values_list("pk", flat=True)
            with connection.cursor() as cursor:
                for pk in rows:
                    cursor.execute(
                        f"SELECT access_key_secret, security_token FROM {table} WHERE id = %s", [pk]
                    )
                    secret, token = cursor.fetchone()
                    cursor.execute(
                        f"UPDATE {table} SET access_key_secret = %s, security_token = %s WHERE id = %s",
                        [
                            crypto.rotate(secret) if secret else secret,
                            crypto.rotate(token) if token else token,
                            pk,
                        ],
                    )
                    count += 1
        self.stdout.write(f"Re-encrypted the credentials of {count} account(s).")
