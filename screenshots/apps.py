from __future__ import annotations

from typing import Any

from django.apps import AppConfig
from django.db.models.signals import post_migrate

ROLE_PERMISSIONS = {
    # Any signed-in user can look; operators also act. Admins are Django staff.
    "Viewers": [],
    "Operators": ["operate_instance", "manage_share_links"],
}


def create_role_groups(sender: AppConfig, **kwargs: Any) -> None:
    from django.contrib.auth.models import Group, Permission

    for name, codenames in ROLE_PERMISSIONS.items():
        group, _ = Group.objects.get_or_create(name=name)
        group.permissions.add(*Permission.objects.filter(content_type__app_label="screenshots",
                                                         codename__in=codenames))


class ScreenshotsConfig(AppConfig):
    name = "screenshots"
    verbose_name = "Screenshots"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        post_migrate.connect(create_role_groups, sender=self)
