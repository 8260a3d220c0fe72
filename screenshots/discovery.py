"""Importing an account's instances from DescribeInstances, idempotently."""

from __future__ import annotations

from dataclasses import dataclass, field

from django.db import transaction

from screenshots import ecs
from screenshots.models import Account, Instance, validate_instance_id, validate_region_id


@dataclass
class DiscoveryReport:
    created: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # ids that do not look like ECS ids

    def __str__(self) -> str:
        return f"{len(self.created)} new, {len(self.updated)} updated, {len(self.skipped)} skipped"


def discover(account: Account, regions: list[str]) -> DiscoveryReport:
    """Create or update an Instance for every instance the account has in ``regions``.

    Names and tags follow the cloud; interval, wake-up and enabled stay as configured here.
    Raises ecs.EcsErrorRaised on the first API error (nothing is half-imported for that region).
    """
    report = DiscoveryReport()
    for region in regions:
        validate_region_id(region)
        remote = list(ecs.describe_instances(account, region))
        with transaction.atomic():
            for item in remote:
                try:
                    validate_instance_id(item.instance_id)
                    validate_region_id(item.region_id)
                except Exception:
                    report.skipped.append(item.instance_id[:40])
                    continue
                instance, created = Instance.objects.get_or_create(
                    account=account, instance_id=item.instance_id,
                    defaults={"region_id": item.region_id, "name": item.name[:128], "tags": item.tags},
                )
                if created:
                    report.created.append(item.instance_id)
                elif (instance.name, instance.tags, instance.region_id) != (item.name[:128], item.tags, item.region_id):
                    Instance.objects.filter(pk=instance.pk).update(
                        name=item.name[:128], tags=item.tags, region_id=item.region_id)
                    report.updated.append(item.instance_id)
    return report
