"""Create the demo: a simulator fleet with its own keys, the matching account and instances, a login."""

from __future__ import annotations

import json
import secrets
from pathlib import Path
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandParser
from django.db import transaction

from screenshots.models import Account, Instance
from screenshots.simulator import demo_config

DEMO_ACCOUNT = "Demo fleet (simulator)"


class Command(BaseCommand):
    help = "Write data/simulator.json and create the demo account, instances and login (idempotent)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--count", type=int, default=16, help="instances in the simulated fleet")
        parser.add_argument("--simulator-port", type=int, default=8900)
        parser.add_argument("--username", default="demo")

    def handle(self, *args: Any, count: int, simulator_port: int, username: str, **options: Any) -> None:
        config_path = Path(settings.DATA_DIR) / "simulator.json"
        if config_path.exists():
            config = json.loads(config_path.read_text())
        else:
            # Fresh random keys per checkout: nothing secret-looking is committed to the repository.
            key_id = "LTAI5tDemo" + secrets.token_hex(6)
            config = demo_config(key_id, secrets.token_urlsafe(24), count=count)
            config_path.write_text(json.dumps(config, indent=2))
            config_path.chmod(0o600)
        key = config["access_keys"][0]
        with transaction.atomic():
            account, _ = Account.objects.update_or_create(
                name=DEMO_ACCOUNT,
                defaults={
                    "access_key_id": key["id"], "access_key_secret": key["secret"],
                    "endpoint_scheme": "http", "endpoint_host": "127.0.0.1", "endpoint_port": simulator_port,
                    "credentials_error_code": "", "credentials_retry_at": None,
                },
            )
            for item in config["instances"]:
                Instance.objects.get_or_create(
                    account=account, instance_id=item["instance_id"],
                    defaults={"region_id": item["region_id"], "name": item["name"], "tags": item["tags"],
                              "capture_interval": 15},
                )
            # One configured instance the simulator has never heard of: shows the "not found" tile.
            region = config["instances"][0]["region_id"]
            Instance.objects.get_or_create(
                account=account, instance_id="i-demo0deleted0000000",
                defaults={"region_id": region, "name": "deleted-01", "tags": {"env": "prod"}},
            )
        password = self._demo_user(username)
        self.stdout.write(f"Demo fleet: {account.instances.count()} instances on the simulator at "
                          f"http://127.0.0.1:{simulator_port}")
        self.stdout.write(f"Log in as {username!r} with password {password!r}")

    def _demo_user(self, username: str) -> str:
        password_path = Path(settings.DATA_DIR) / "demo-password"
        if not password_path.exists():
            password_path.write_text(secrets.token_urlsafe(12))
            password_path.chmod(0o600)
        password = password_path.read_text().strip()
        user, _ = get_user_model().objects.get_or_create(username=username)
        user.is_staff = user.is_superuser = True
        user.set_password(password)
        user.save()
        return password
