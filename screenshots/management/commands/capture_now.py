from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from screenshots.capture import capture_instance
from screenshots.models import Instance


class Command(BaseCommand):
    help = "Capture one instance now, in this process, and print the outcome."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("instance", help="ECS instance id (i-...) or database id")
        parser.add_argument("--wake-up", action="store_true", help="send WakeUp=true")

    def handle(self, *args: Any, instance: str, wake_up: bool, **options: Any) -> None:
        lookup = {"pk": int(instance)} if instance.isdigit() else {"instance_id": instance}
        matches = list(Instance.objects.filter(**lookup)[:2])
        if not matches:
            raise CommandError(f"No instance {instance!r} is configured.")
        if len(matches) > 1:
            raise CommandError(f"{instance!r} exists in several accounts; use the database id.")
        outcome = capture_instance(matches[0].pk, wake_up=wake_up or None, force=True)
        self.stdout.write(f"{matches[0].instance_id}: {outcome}")
        if outcome.error is not None:
            self.stdout.write(f"  {outcome.error.message} (request {outcome.error.request_id or '-'})")
        if outcome.status in ("failed", "skipped"):
            raise CommandError(f"no new capture ({outcome.status})", returncode=2)
