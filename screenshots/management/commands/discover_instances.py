from __future__ import annotations

from typing import Any

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser

from screenshots import ecs
from screenshots.discovery import discover
from screenshots.models import Account


class Command(BaseCommand):
    help = "Import the instances of an account from DescribeInstances (idempotent)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("account", help="account name or database id")
        parser.add_argument("regions", nargs="+", help="region ids, e.g. cn-hangzhou cn-shanghai")

    def handle(self, *args: Any, account: str, regions: list[str], **options: Any) -> None:
        lookup = {"pk": int(account)} if account.isdigit() else {"name": account}
        try:
            target = Account.objects.get(**lookup)
        except Account.DoesNotExist:
            raise CommandError(f"No account {account!r}.") from None
        try:
            report = discover(target, regions)
        except ecs.EcsErrorRaised as exc:
            raise CommandError(f"ECS refused: {exc.error.code}: {exc.error.message}") from None
        except ValidationError as exc:
            raise CommandError(" ".join(exc.messages)) from None
        self.stdout.write(f"{target}: {report}")
        for instance_id in report.skipped:
            self.stderr.write(f"skipped {instance_id!r}: not an ECS instance id")
