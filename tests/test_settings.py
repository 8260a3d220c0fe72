"""The production profile: deployment checks pass, and missing secrets stop the start."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from cryptography.fernet import Fernet

ROOT = Path(__file__).resolve().parent.parent


def manage(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if k not in ("SECRET_KEY", "CREDENTIALS_ENCRYPTION_KEYS", "DEBUG")}
    return subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env={**base, **env},
                          capture_output=True, text=True, timeout=120)


def production_env(tmp_path: Path) -> dict[str, str]:
    return {
        "PRODUCTION": "1",
        "SECRET_KEY": "x" * 20 + Fernet.generate_key().decode(),
        "CREDENTIALS_ENCRYPTION_KEYS": Fernet.generate_key().decode(),
        "ALLOWED_HOSTS": "wall.example.com",
        "DATA_DIR": str(tmp_path),
    }


class ProductionSettingsTestCase:
    def test_deploy_checks_pass_at_warning_level(self, tmp_path: Path) -> None:
        result = manage("check", "--deploy", "--fail-level", "WARNING", **production_env(tmp_path))
        assert result.returncode == 0, result.stdout + result.stderr
        assert "no issues" in result.stdout

    def test_production_refuses_to_start_without_a_secret_key(self, tmp_path: Path) -> None:
        env = production_env(tmp_path)
        del env["SECRET_KEY"]
        result = manage("check", **env)
        assert result.returncode != 0
        assert "SECRET_KEY must be set in production" in result.stderr

    def test_production_refuses_to_start_without_an_encryption_key(self, tmp_path: Path) -> None:
        env = production_env(tmp_path)
        del env["CREDENTIALS_ENCRYPTION_KEYS"]
        result = manage("check", **env)
        assert result.returncode != 0
        assert "CREDENTIALS_ENCRYPTION_KEYS must be set in production" in result.stderr
