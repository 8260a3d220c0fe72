"""Images in S3-compatible object storage (django-storages), with moto standing in for the bucket."""

from __future__ import annotations

from typing import Any

import boto3
import pytest
from django.contrib.auth.models import User
from django.test import Client
from moto import mock_aws

from screenshots import coordination, ecs, retention
from screenshots.capture import capture_instance
from screenshots.models import Capture
from tests.conftest import RUNNING

pytestmark = pytest.mark.django_db
BUCKET = "console-wall-test"


@pytest.fixture
def bucket(settings: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    for name, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                        "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(name, value)
    with mock_aws():
        s3 = boto3.client("s3", region_name="us-east-1")
        s3.create_bucket(Bucket=BUCKET)
        # The same options as settings.py uses for STORAGE_BACKEND=s3.
        settings.STORAGES = {**settings.STORAGES, "default": {
            "BACKEND": "storages.backends.s3.S3Storage",
            "OPTIONS": {"bucket_name": BUCKET, "default_acl": "private", "querystring_auth": True,
                        "file_overwrite": True, "region_name": "us-east-1"},
        }}
        ecs.reset_clients()
        yield s3


def keys(s3: Any) -> set[str]:
    return {item["Key"] for item in s3.list_objects_v2(Bucket=BUCKET).get("Contents", [])}


class ObjectStorageTestCase:
    def test_captures_are_stored_served_and_pruned_in_the_bucket(self, bucket: Any, instances: dict,
                                                                  simulator: Any) -> None:
        instance = instances[RUNNING]
        simulator.control.knobs(min_screenshot_interval=0)
        for _ in range(3):
            coordination.connection().delete(coordination.key("last-call", instance.pk))
            simulator.control.patch(RUNNING, bump_frame=True)
            assert capture_instance(instance.pk).status == "captured"
        referenced = {n for pair in Capture.objects.values_list("image", "thumbnail") for n in pair}
        assert keys(bucket) == referenced and len(referenced) == 6

        client = Client()
        client.force_login(User.objects.create_user("v", password="pw-123456789"))
        newest = Capture.objects.filter(instance=instance).first()
        response = client.get(f"/captures/{newest.pk}/{newest.sha256}/full")
        assert response.status_code == 200
        assert b"".join(response.streaming_content).startswith(b"\xff\xd8\xff")

        retention.prune(keep=1, max_age=None)
        assert keys(bucket) == {newest.image.name, newest.thumbnail.name}
