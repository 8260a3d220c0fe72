"""The ECS simulator over real HTTP: signature checks against the real SDK, every action, every fault."""

from __future__ import annotations

import base64
import binascii
import http.client
import io
import json
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest import mock
from urllib.parse import quote, urlencode

import pytest
from aliyunsdkcore.acs_exception.exceptions import ClientException, ServerException
from aliyunsdkcore.auth.credentials import StsTokenCredential
from aliyunsdkcore.client import AcsClient
from aliyunsdkcore.request import CommonRequest
from PIL import Image, UnidentifiedImageError

from screenshots.simulator import (
    FleetState,
    RunningSimulator,
    canonical_query,
    demo_config,
    is_loopback,
    percent_encode,
    sign,
    start_in_thread,
    string_to_sign,
)
from screenshots.simulator.fleet import Knobs
from screenshots.simulator.server import handle_control

ROOT = Path(__file__).resolve().parent.parent
KEY_ID = "LTAI5tSimulatorTest0001"
SECRET = "simulator-test-secret-Qw3"
STS_KEY_ID = "STS.NUsimulatorTest0002"
STS_SECRET = "sts-secret-Lk9"
STS_TOKEN = "CAIS+sts/token=with odd*chars~"
HZ, SH = "cn-hangzhou", "cn-shanghai"
JPEG = "i-bp1jpeg00000000000001"
PNG = "i-bp1png000000000000002"
STOPPED = "i-bp1stopped0000000003"
PHASED_OUT = "i-bp1phased00000000004"
SHANGHAI = "i-uf6shanghai000000005"
UNKNOWN = "i-bp1unknown0000000099"
REQUEST_ID = re.compile(r"^[0-9A-F]{8}-[0-9A-F]{4}-[0-9A-F]{4}-[0-9A-F]{4}-[0-9A-F]{12}$")
NO_PROXY = {"http": None, "https": None}


def make_config(extra_instances: int = 0, **knobs: Any) -> dict[str, Any]:
    def inst(instance_id: str, region_id: str, name: str, **extra: Any) -> dict[str, Any]:
        return {
            "instance_id": instance_id,
            "region_id": region_id,
            "name": name,
            "status": "Running",
            "instance_type": "ecs.g7.large",
            "supported": True,
            "image_format": "jpeg",
            "os_name": "Alibaba Cloud Linux 3",
            "tags": {"env": "prod"},
            "frame_period": 3600.0,
            "fault": None,
            **extra,
        }

    instances = [
        inst(JPEG, HZ, "web-01", tags={"env": "prod", "role": "web"}),
        inst(PNG, HZ, "db-01", image_format="png", tags={"env": "prod", "role": "db"}),
        inst(STOPPED, HZ, "batch-01", status="Stopped", tags={"env": "dev", "role": "batch"}),
        inst(PHASED_OUT, HZ, "legacy-01", supported=False, instance_type="ecs.t1.small", tags={}),
        inst(SHANGHAI, SH, "web-sh-01", tags={"env": "staging", "role": "web"}),
    ]
    instances += [
        inst(f"i-bp1extra{n:013d}", HZ, f"extra-{n:02d}", tags={"env": "dev", "role": "extra"})
        for n in range(extra_instances)
    ]
    return {
        "seed": 3,
        "access_keys": [
            {"id": KEY_ID, "secret": SECRET, "security_token": None},
            {"id": STS_KEY_ID, "secret": STS_SECRET, "security_token": STS_TOKEN},
        ],
        "regions": [
            {"RegionId": HZ, "LocalName": "China (Hangzhou)"},
            {"RegionId": SH, "LocalName": "China (Shanghai)"},
        ],
        "instances": instances,
        # Most tests call one instance several times; the 10 s rule has tests of its own.
        "knobs": {"min_screenshot_interval": 0.0, **knobs},
    }


class FakeClock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def sim() -> Iterator[RunningSimulator]:
    with start_in_thread(make_config()) as running:
        yield running


def sdk_client(
    sim: RunningSimulator, ak: str | None = KEY_ID, secret: str | None = SECRET, **kwargs: Any
) -> AcsClient:
    # The port goes into the domain, as screenshots/ecs.py does; AcsClient(port=...) would add it twice.
    return AcsClient(ak, secret, HZ, auto_retry=False, connect_timeout=2, timeout=5, proxy=NO_PROXY, **kwargs)


def sdk_request(sim: RunningSimulator, action: str, **params: Any) -> CommonRequest:
    request = CommonRequest(
        domain=f"127.0.0.1:{sim.port}", version="2014-05-26", action_name=action, product="Ecs"
    )
    request.set_protocol_type("http")
    for key, value in params.items():
        request.add_query_param(key, value)
    return request


def sdk_call(sim: RunningSimulator, action: str, client: AcsClient | None = None, **params: Any) -> dict:
    client = client or sdk_client(sim)
    return json.loads(client.do_action_with_exception(sdk_request(sim, action, **params)))


def sdk_error(
    sim: RunningSimulator, action: str, client: AcsClient | None = None, **params: Any
) -> ServerException:
    with pytest.raises(ServerException) as info:
        sdk_call(sim, action, client, **params)
    return info.value


def utc_timestamp(offset: float = 0.0) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + offset))


def signed_params(
    action: str, *, key: str = KEY_ID, secret: str = SECRET, method: str = "GET", **params: str
) -> dict[str, str]:
    """The common parameters the SDK sends, signed with the simulator's own signer."""
    signed = {
        "Action": action,
        "Version": "2014-05-26",
        "Format": "JSON",
        "AccessKeyId": key,
        "SignatureMethod": "HMAC-SHA1",
        "SignatureType": "",
        "SignatureVersion": "1.0",
        "SignatureNonce": uuid.uuid4().hex,
        "Timestamp": utc_timestamp(),
        **params,
    }
    signed["Signature"] = sign(secret, method, signed)
    return signed


class RawReply:
    def __init__(self, status: int, headers: http.client.HTTPMessage, body: bytes) -> None:
        self.status, self.headers, self.body = status, headers, body

    def json(self) -> dict[str, Any]:
        return json.loads(self.body)


def raw_request(
    sim: RunningSimulator,
    params: dict[str, str],
    *,
    method: str = "GET",
    path: str = "/",
    body: bytes | None = None,
    content_type: str | None = None,
    timeout: float = 5.0,
) -> RawReply:
    connection = http.client.HTTPConnection(sim.host, sim.port, timeout=timeout)
    try:
        url = path + ("?" + urlencode(params, quote_via=quote) if params else "")
        headers = {"Content-Type": content_type} if content_type else {}
        connection.request(method, url, body=body, headers=headers)
        response = connection.getresponse()
        return RawReply(response.status, response.headers, response.read())
    finally:
        connection.close()


def raw_call(sim: RunningSimulator, action: str, **params: str) -> RawReply:
    return raw_request(sim, signed_params(action, **params))


def control(
    sim: RunningSimulator, method: str, path: str, body: Any = None, raw_body: bytes | None = None
) -> RawReply:
    data = raw_body if raw_body is not None else (json.dumps(body).encode() if body is not None else None)
    return raw_request(sim, {}, method=method, path=path, body=data, content_type="application/json")


def screenshot_bytes(reply: dict[str, Any]) -> bytes:
    return base64.b64decode(reply["Screenshot"], validate=True)


# --- Signing ----------------------------------------------------------------------------------------


class SigningTestCase:
    def test_it_reproduces_alibabas_worked_example(self) -> None:
        params = {
            "Action": "DescribeRegions",
            "AccessKeyId": "testid",
            "Format": "XML",
            "SignatureMethod": "HMAC-SHA1",
            "SignatureNonce": "3ee8c1b8-83d3-44af-a94f-4e0ad82fd6cf",
            "SignatureVersion": "1.0",
            "Timestamp": "2016-02-23T12:46:24Z",
            "Version": "2014-05-26",
        }
        assert string_to_sign("GET", params) == (
            "GET&%2F&AccessKeyId%3Dtestid%26Action%3DDescribeRegions%26Format%3DXML"
            "%26SignatureMethod%3DHMAC-SHA1%26SignatureNonce%3D3ee8c1b8-83d3-44af-a94f-4e0ad82fd6cf"
            "%26SignatureVersion%3D1.0%26Timestamp%3D2016-02-23T12%253A46%253A24Z%26Version%3D2014-05-26"
        )
        assert sign("testsecret", "GET", params) == "OLeaidS1JvxuMvnyHOwuJ+uX5qY="

    def test_percent_encoding_leaves_only_unreserved_characters(self) -> None:
        assert percent_encode("a b*c~d-e_f.g/h+i=j") == "a%20b%2Ac~d-e_f.g%2Fh%2Bi%3Dj"
        assert percent_encode("杭州") == "%E6%9D%AD%E5%B7%9E"

    def test_canonical_query_sorts_keeps_empty_values_and_drops_signature(self) -> None:
        query = canonical_query({"b": "2", "SignatureType": "", "a": "1", "Signature": "x"})
        assert query == "SignatureType=&a=1&b=2"


# --- Authentication, with the real SDK ---------------------------------------------------------------


class AuthenticationTestCase:
    def test_sdk_get_requests_verify_for_every_action(self, sim: RunningSimulator) -> None:
        client = sdk_client(sim)
        calls = {
            "DescribeRegions": {},
            "DescribeInstances": {"RegionId": HZ},
            "DescribeInstanceStatus": {"RegionId": HZ},
            "GetInstanceScreenshot": {"RegionId": HZ, "InstanceId": JPEG, "WakeUp": True},
            "GetInstanceConsoleOutput": {"RegionId": HZ, "InstanceId": JPEG, "RemoveSymbols": "true"},
        }
        for action, params in calls.items():
            reply = sdk_call(sim, action, client, **params)
            assert REQUEST_ID.match(reply["RequestId"]), action
        assert sim.state.counters.outcome_count("Success") == len(calls)

    def test_sdk_post_with_form_body_verifies(self, sim: RunningSimulator) -> None:
        request = sdk_request(sim, "DescribeInstances", RegionId=HZ)
        request.set_method("POST")
        request.add_body_params("InstanceIds", json.dumps([JPEG, PNG]))
        reply = json.loads(sdk_client(sim).do_action_with_exception(request))
        assert {i["InstanceId"] for i in reply["Instances"]["Instance"]} == {JPEG, PNG}

    def test_raw_post_with_params_only_in_the_body_verifies(self, sim: RunningSimulator) -> None:
        params = signed_params("DescribeRegions", method="POST")
        reply = raw_request(
            sim,
            {},
            method="POST",
            body=urlencode(params).encode(),
            content_type="application/x-www-form-urlencoded",
        )
        assert reply.status == 200, reply.body

    def test_request_signed_with_the_wrong_secret_is_signature_does_not_match(
        self, sim: RunningSimulator
    ) -> None:
        params = signed_params("DescribeRegions", secret="not-the-secret")
        reply = raw_request(sim, params)
        assert reply.status == 400
        assert reply.json()["Code"] == "SignatureDoesNotMatch"
        # Like the real service: the server's string to sign follows a colon.
        message = reply.json()["Message"]
        assert message.startswith("Specified signature is not matched with our calculation.")
        assert message.split(":")[1] == string_to_sign("GET", params)

    def test_sdk_common_request_sees_a_wrong_secret_as_signature_does_not_match(
        self, sim: RunningSimulator
    ) -> None:
        # The SDK renames the error InvalidAccessKeySecret when our string to sign equals its own, but a
        # CommonRequest keeps its string to sign on an inner request, so the comparison never matches.
        error = sdk_error(sim, "DescribeRegions", sdk_client(sim, secret="not-the-secret"))
        assert (error.get_error_code(), error.get_http_status()) == ("SignatureDoesNotMatch", 400)

    def test_tampered_parameter_is_rejected(self, sim: RunningSimulator) -> None:
        params = signed_params("GetInstanceScreenshot", RegionId=HZ, InstanceId=JPEG)
        params["InstanceId"] = PNG
        reply = raw_request(sim, params)
        assert (reply.status, reply.json()["Code"]) == (400, "SignatureDoesNotMatch")
        assert sim.state.counters.outcome_count("Success") == 0

    def test_unknown_access_key_is_invalid_access_key_id_not_found(self, sim: RunningSimulator) -> None:
        error = sdk_error(sim, "DescribeRegions", sdk_client(sim, ak="LTAIunknown", secret="x"))
        assert (error.get_error_code(), error.get_http_status()) == ("InvalidAccessKeyId.NotFound", 404)

    def test_reused_nonce_is_rejected(self, sim: RunningSimulator) -> None:
        params = signed_params("DescribeRegions")
        assert raw_request(sim, params).status == 200
        again = raw_request(sim, params)
        assert (again.status, again.json()["Code"]) == (400, "SignatureNonceUsed")

    def test_timestamp_more_than_15_minutes_off_is_expired(self, sim: RunningSimulator) -> None:
        for offset in (-16 * 60, 16 * 60):
            reply = raw_call(sim, "DescribeRegions", Timestamp=utc_timestamp(offset))
            assert (reply.status, reply.json()["Code"]) == (400, "InvalidTimeStamp.Expired")
        assert raw_call(sim, "DescribeRegions", Timestamp=utc_timestamp(-14 * 60)).status == 200

    def test_sts_key_accepts_its_token_through_the_sdk(self, sim: RunningSimulator) -> None:
        client = sdk_client(
            sim, ak=None, secret=None, credential=StsTokenCredential(STS_KEY_ID, STS_SECRET, STS_TOKEN)
        )
        with mock.patch.dict(os.environ, clear=False) as environment:
            # The SDK would prefer these over the STS credential.
            environment.pop("ALIYUN_ACCESS_KEY_ID", None)
            environment.pop("ALIYUN_ACCESS_KEY_SECRET", None)
            reply = sdk_call(sim, "DescribeRegions", client)
        assert reply["Regions"]["Region"]

    def test_sts_key_without_its_token_is_malformed(self, sim: RunningSimulator) -> None:
        reply = raw_call(sim, "DescribeRegions", key=STS_KEY_ID, secret=STS_SECRET)
        assert (reply.status, reply.json()["Code"]) == (400, "InvalidSecurityToken.Malformed")

    def test_sts_key_with_another_token_is_mismatch(self, sim: RunningSimulator) -> None:
        client = sdk_client(
            sim, ak=None, secret=None, credential=StsTokenCredential(STS_KEY_ID, STS_SECRET, "CAIS-other")
        )
        error = sdk_error(sim, "DescribeRegions", client)
        assert (error.get_error_code(), error.get_http_status()) == ("InvalidSecurityToken.Mismatch", 400)

    def test_wrong_version_is_rejected(self, sim: RunningSimulator) -> None:
        reply = raw_call(sim, "DescribeRegions", Version="2016-03-14")
        assert (reply.status, reply.json()["Code"]) == (400, "InvalidVersion")

    def test_unknown_action_is_invalid_action_not_found(self, sim: RunningSimulator) -> None:
        error = sdk_error(sim, "RebootInstance", InstanceId=JPEG)
        assert (error.get_error_code(), error.get_http_status()) == ("InvalidAction.NotFound", 404)

    def test_missing_signature_is_missing_parameter(self, sim: RunningSimulator) -> None:
        params = signed_params("DescribeRegions")
        del params["Signature"]
        reply = raw_request(sim, params)
        assert reply.json()["Message"] == (
            'The input parameter "Signature" that is mandatory for processing this request is not supplied.'
        )

    def test_error_bodies_have_the_ecs_shape(self, sim: RunningSimulator) -> None:
        reply = raw_call(sim, "DescribeInstances")  # no RegionId
        assert reply.status == 400
        assert reply.headers["Content-Type"] == "application/json;charset=utf-8"
        body = reply.json()
        assert set(body) == {"RequestId", "HostId", "Code", "Message"}
        assert REQUEST_ID.match(body["RequestId"])
        assert body["Code"] == "MissingParameter"
        assert body["Message"] == (
            'The input parameter "RegionId" that is mandatory for processing this request is not supplied.'
        )


# --- GetInstanceScreenshot ----------------------------------------------------------------------------


class ScreenshotTestCase:
    def test_jpeg_instance_returns_an_800x600_jpeg(self, sim: RunningSimulator) -> None:
        reply = sdk_call(sim, "GetInstanceScreenshot", RegionId=HZ, InstanceId=JPEG, WakeUp="true")
        assert reply["InstanceId"] == JPEG
        data = screenshot_bytes(reply)
        assert data.startswith(b"\xff\xd8\xff")
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            assert (image.format, image.size) == ("JPEG", (800, 600))

    def test_png_instance_returns_an_800x600_png(self, sim: RunningSimulator) -> None:
        data = screenshot_bytes(sdk_call(sim, "GetInstanceScreenshot", RegionId=HZ, InstanceId=PNG))
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            assert (image.format, image.size) == ("PNG", (800, 600))

    def test_legacy_wakeup_spelling_is_accepted(self, sim: RunningSimulator) -> None:
        reply = raw_call(sim, "GetInstanceScreenshot", RegionId=HZ, InstanceId=JPEG, Wakeup="true")
        assert reply.status == 200 and reply.json()["Screenshot"]

    def test_missing_instance_id_is_missing_parameter(self, sim: RunningSimulator) -> None:
        error = sdk_error(sim, "GetInstanceScreenshot", RegionId=HZ)
        assert (error.get_error_code(), error.get_http_status()) == ("MissingParameter", 400)
        assert '"InstanceId"' in error.get_error_msg()

    def test_unknown_instance_is_invalid_parameter_404(self, sim: RunningSimulator) -> None:
        error = sdk_error(sim, "GetInstanceScreenshot", RegionId=HZ, InstanceId=UNKNOWN)
        assert (error.get_error_code(), error.get_http_status()) == ("InvalidParameter", 404)
        assert error.get_error_msg() == 'The "instanceId" provided is not valid.'

    def test_instance_asked_in_the_wrong_region_is_invalid_parameter(self, sim: RunningSimulator) -> None:
        error = sdk_error(sim, "GetInstanceScreenshot", RegionId=SH, InstanceId=JPEG)
        assert (error.get_error_code(), error.get_http_status()) == ("InvalidParameter", 404)

    def test_stopped_instance_is_incorrect_instance_status_405(self, sim: RunningSimulator) -> None:
        error = sdk_error(sim, "GetInstanceScreenshot", RegionId=HZ, InstanceId=STOPPED)
        assert (error.get_error_code(), error.get_http_status()) == ("IncorrectInstanceStatus", 405)
        assert error.get_error_msg() == 'The instance status "Stopped" is not applicable'

    def test_phased_out_instance_is_not_supported_405(self, sim: RunningSimulator) -> None:
        error = sdk_error(sim, "GetInstanceScreenshot", RegionId=HZ, InstanceId=PHASED_OUT)
        assert (error.get_error_code(), error.get_http_status()) == ("NotSupported", 405)


class IntervalRuleTestCase:
    def test_call_sooner_than_the_interval_is_throttled_and_a_later_one_is_served(self) -> None:
        with start_in_thread(make_config(min_screenshot_interval=0.5)) as sim:
            client = sdk_client(sim)
            sdk_call(sim, "GetInstanceScreenshot", client, RegionId=HZ, InstanceId=JPEG)
            error = sdk_error(sim, "GetInstanceScreenshot", client, RegionId=HZ, InstanceId=JPEG)
            assert (error.get_error_code(), error.get_http_status()) == ("Throttling", 400)
            assert error.get_error_msg() == "Request was denied due to request throttling."
            # Other instances have windows of their own.
            sdk_call(sim, "GetInstanceScreenshot", client, RegionId=HZ, InstanceId=PNG)
            time.sleep(0.55)
            sdk_call(sim, "GetInstanceScreenshot", client, RegionId=HZ, InstanceId=JPEG)
            codes = [c.code for c in sim.state.counters.screenshot_calls(JPEG)]
            assert codes == ["Success", "Throttling", "Success"]

    def test_default_interval_is_ten_seconds(self) -> None:
        config = make_config()
        del config["knobs"]["min_screenshot_interval"]
        clock = FakeClock(1000.0)
        with start_in_thread(FleetState(config, monotonic=clock)) as sim:
            assert sim.state.knobs.min_screenshot_interval == 10.0
            client = sdk_client(sim)
            sdk_call(sim, "GetInstanceScreenshot", client, RegionId=HZ, InstanceId=JPEG)
            clock.now = 1009.9
            assert sdk_error(
                sim, "GetInstanceScreenshot", client, RegionId=HZ, InstanceId=JPEG
            ).get_error_code() == ("Throttling")
            clock.now = 1010.0
            sdk_call(sim, "GetInstanceScreenshot", client, RegionId=HZ, InstanceId=JPEG)

    def test_throttling_status_follows_the_knob(self) -> None:
        with start_in_thread(make_config(min_screenshot_interval=60.0, throttle_http_status=429)) as sim:
            sdk_call(sim, "GetInstanceScreenshot", RegionId=HZ, InstanceId=JPEG)
            error = sdk_error(sim, "GetInstanceScreenshot", RegionId=HZ, InstanceId=JPEG)
            assert (error.get_error_code(), error.get_http_status()) == ("Throttling", 429)


class FrameTestCase:
    PERIOD = 60.0

    @pytest.fixture
    def clock(self) -> FakeClock:
        # Near the real time, as requests carry real Timestamps, and one second into a frame.
        return FakeClock((time.time() // self.PERIOD) * self.PERIOD + 1)

    @pytest.fixture
    def clocked(self, clock: FakeClock) -> Iterator[RunningSimulator]:
        state = FleetState(make_config(), wall=clock)
        state.patch_instance(JPEG, {"frame_period": self.PERIOD})
        with start_in_thread(state) as running:
            yield running

    def shot(self, sim: RunningSimulator) -> str:
        return sdk_call(sim, "GetInstanceScreenshot", RegionId=HZ, InstanceId=JPEG)["Screenshot"]

    def test_frame_stays_identical_within_the_frame_period(
        self, clocked: RunningSimulator, clock: FakeClock
    ) -> None:
        first = self.shot(clocked)
        clock.now += self.PERIOD - 2
        assert self.shot(clocked) == first

    def test_frame_changes_when_the_period_passes(self, clocked: RunningSimulator, clock: FakeClock) -> None:
        first = self.shot(clocked)
        clock.now += self.PERIOD
        assert self.shot(clocked) != first

    def test_bump_frame_changes_the_frame_at_once(self, clocked: RunningSimulator) -> None:
        first = self.shot(clocked)
        frame = clocked.state.snapshot()["instances"][0]["frame"]
        reply = control(clocked, "POST", f"/_sim/instances/{JPEG}", {"bump_frame": True})
        assert reply.json()["frame"] == frame + 1
        second = self.shot(clocked)
        assert second != first
        with Image.open(io.BytesIO(base64.b64decode(second))) as image:
            assert image.size == (800, 600)


# --- The other actions -------------------------------------------------------------------------------


class ConsoleOutputTestCase:
    def test_output_is_a_boot_log_ending_with_a_login_prompt(self, sim: RunningSimulator) -> None:
        reply = sdk_call(sim, "GetInstanceConsoleOutput", RegionId=HZ, InstanceId=JPEG)
        text = base64.b64decode(reply["ConsoleOutput"], validate=True).decode()
        lines = text.splitlines()
        assert len(lines) >= 24
        assert lines[-1].rstrip() == "web-01 login:"
        assert "\x1b[" in text

    def test_remove_symbols_strips_escape_codes(self, sim: RunningSimulator) -> None:
        reply = sdk_call(sim, "GetInstanceConsoleOutput", RegionId=HZ, InstanceId=JPEG, RemoveSymbols="true")
        text = base64.b64decode(reply["ConsoleOutput"]).decode()
        assert "\x1b" not in text
        assert "[  OK  ] Reached target Multi-User System." in text

    def test_last_update_time_is_the_last_status_change_in_utc_plus_8(self) -> None:
        clock = FakeClock(float(int(time.time())))
        with start_in_thread(FleetState(make_config(), wall=clock)) as sim:
            clock.now -= 600
            sim.state.patch_instance(JPEG, {"status": "Stopped"})
            clock.now += 600
            reply = sdk_call(sim, "GetInstanceConsoleOutput", RegionId=HZ, InstanceId=JPEG)
        expected = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(clock.now - 600 + 8 * 3600))
        assert reply["LastUpdateTime"] == expected
        assert base64.b64decode(reply["ConsoleOutput"]).decode().endswith("reboot: Power down")

    def test_unknown_instance_is_invalid_parameter(self, sim: RunningSimulator) -> None:
        error = sdk_error(sim, "GetInstanceConsoleOutput", RegionId=HZ, InstanceId=UNKNOWN)
        assert (error.get_error_code(), error.get_http_status()) == ("InvalidParameter", 404)


class DescribeTestCase:
    @pytest.fixture
    def big(self) -> Iterator[RunningSimulator]:
        with start_in_thread(make_config(extra_instances=21)) as running:  # 25 in Hangzhou
            yield running

    def test_describe_instances_pages_by_page_number(self, big: RunningSimulator) -> None:
        seen = []
        for page in (1, 2, 3):
            reply = sdk_call(big, "DescribeInstances", RegionId=HZ, PageNumber=page, PageSize=10)
            assert (reply["TotalCount"], reply["PageNumber"], reply["PageSize"]) == (25, page, 10)
            seen += [i["InstanceId"] for i in reply["Instances"]["Instance"]]
        assert len(seen) == len(set(seen)) == 25
        assert SHANGHAI not in seen

    def test_describe_instances_defaults_to_pages_of_ten(self, big: RunningSimulator) -> None:
        reply = sdk_call(big, "DescribeInstances", RegionId=HZ)
        assert (reply["PageSize"], len(reply["Instances"]["Instance"])) == (10, 10)

    def test_describe_instances_pages_by_next_token(self, big: RunningSimulator) -> None:
        seen, token, pages = [], "", 0
        while True:
            params: dict[str, Any] = {"RegionId": HZ, "MaxResults": 10}
            if token:
                params["NextToken"] = token
            reply = sdk_call(big, "DescribeInstances", **params)
            pages += 1
            seen += [i["InstanceId"] for i in reply["Instances"]["Instance"]]
            token = reply["NextToken"]
            if not token:
                break
        assert pages == 3
        assert len(seen) == len(set(seen)) == 25

    def test_describe_instances_rejects_page_size_over_100(self, sim: RunningSimulator) -> None:
        error = sdk_error(sim, "DescribeInstances", RegionId=HZ, PageSize=101)
        assert error.get_error_code() == "InvalidParameter"

    def test_describe_instances_filters_by_tag(self, sim: RunningSimulator) -> None:
        reply = sdk_call(sim, "DescribeInstances", RegionId=HZ, **{"Tag.1.Key": "env", "Tag.1.Value": "prod"})
        assert {i["InstanceId"] for i in reply["Instances"]["Instance"]} == {JPEG, PNG}
        both = sdk_call(
            sim,
            "DescribeInstances",
            RegionId=HZ,
            **{"Tag.1.Key": "env", "Tag.1.Value": "prod", "Tag.2.Key": "role", "Tag.2.Value": "db"},
        )
        assert [i["InstanceId"] for i in both["Instances"]["Instance"]] == [PNG]
        assert [t for t in both["Instances"]["Instance"][0]["Tags"]["Tag"] if t["TagKey"] == "role"] == [
            {"TagKey": "role", "TagValue": "db"}
        ]

    def test_describe_instances_filters_by_instance_ids(self, sim: RunningSimulator) -> None:
        reply = sdk_call(sim, "DescribeInstances", RegionId=HZ, InstanceIds=json.dumps([STOPPED, UNKNOWN]))
        instances = reply["Instances"]["Instance"]
        assert [i["InstanceId"] for i in instances] == [STOPPED]
        assert {
            k: instances[0][k] for k in ("InstanceName", "Status", "InstanceType", "RegionId", "OSName")
        } == {
            "InstanceName": "batch-01",
            "Status": "Stopped",
            "InstanceType": "ecs.g7.large",
            "RegionId": HZ,
            "OSName": "Alibaba Cloud Linux 3",
        }
        assert instances[0]["ZoneId"].startswith(HZ + "-")

    def test_describe_instances_rejects_more_than_100_ids_and_bad_json(self, sim: RunningSimulator) -> None:
        for value in (json.dumps([f"i-{n}" for n in range(101)]), "[not json"):
            assert (
                sdk_error(sim, "DescribeInstances", RegionId=HZ, InstanceIds=value).get_http_status() == 400
            )

    def test_describe_instances_filters_by_status(self, sim: RunningSimulator) -> None:
        reply = sdk_call(sim, "DescribeInstances", RegionId=HZ, Status="Stopped")
        assert [i["InstanceId"] for i in reply["Instances"]["Instance"]] == [STOPPED]

    def test_describe_instance_status_lists_statuses_with_paging(self, big: RunningSimulator) -> None:
        reply = sdk_call(big, "DescribeInstanceStatus", RegionId=HZ, PageSize=50)
        assert (reply["TotalCount"], reply["PageSize"]) == (25, 50)
        statuses = {s["InstanceId"]: s["Status"] for s in reply["InstanceStatuses"]["InstanceStatus"]}
        assert (statuses[JPEG], statuses[STOPPED]) == ("Running", "Stopped")
        second = sdk_call(big, "DescribeInstanceStatus", RegionId=HZ, PageNumber=3, PageSize=10)
        assert len(second["InstanceStatuses"]["InstanceStatus"]) == 5

    def test_describe_instance_status_filters_by_instance_id_n(self, sim: RunningSimulator) -> None:
        reply = sdk_call(
            sim, "DescribeInstanceStatus", RegionId=HZ, **{"InstanceId.1": STOPPED, "InstanceId.2": PNG}
        )
        assert {s["InstanceId"] for s in reply["InstanceStatuses"]["InstanceStatus"]} == {STOPPED, PNG}

    def test_describe_instance_status_rejects_page_size_over_50(self, sim: RunningSimulator) -> None:
        assert sdk_error(sim, "DescribeInstanceStatus", RegionId=HZ, PageSize=51).get_error_code() == (
            "InvalidParameter"
        )

    def test_describe_regions_lists_regions_with_endpoints(self, sim: RunningSimulator) -> None:
        reply = sdk_call(sim, "DescribeRegions")
        assert [(r["RegionId"], r["LocalName"], r["RegionEndpoint"]) for r in reply["Regions"]["Region"]] == [
            (HZ, "China (Hangzhou)", "ecs.cn-hangzhou.aliyuncs.com"),
            (SH, "China (Shanghai)", "ecs.cn-shanghai.aliyuncs.com"),
        ]


# --- Faults -----------------------------------------------------------------------------------------


class FaultTestCase:
    def broken(self, sim: RunningSimulator, fault: str | None) -> dict[str, Any]:
        sim.state.patch_instance(JPEG, {"fault": fault})
        return sdk_call(sim, "GetInstanceScreenshot", RegionId=HZ, InstanceId=JPEG)

    def test_bad_base64_fails_strict_and_lenient_decoding(self, sim: RunningSimulator) -> None:
        payload = self.broken(sim, "bad_base64")["Screenshot"]
        assert re.search(r"[^A-Za-z0-9+/=]", payload)
        with pytest.raises(binascii.Error):
            base64.b64decode(payload, validate=True)
        with pytest.raises(binascii.Error):
            base64.b64decode(payload)

    def test_not_image_is_valid_base64_that_pillow_cannot_open(self, sim: RunningSimulator) -> None:
        data = screenshot_bytes(self.broken(sim, "not_image"))
        assert not data.startswith((b"\xff\xd8\xff", b"\x89PNG"))
        with pytest.raises(UnidentifiedImageError):
            Image.open(io.BytesIO(data))

    def test_huge_is_more_than_20_mb_of_base64(self, sim: RunningSimulator) -> None:
        payload = self.broken(sim, "huge")["Screenshot"]
        assert len(payload) > 20_000_000
        assert base64.b64decode(payload[:4000], validate=True).startswith(b"\xff\xd8\xff")

    def test_bomb_is_a_small_png_declaring_900_megapixels(self, sim: RunningSimulator) -> None:
        data = screenshot_bytes(self.broken(sim, "bomb"))
        assert len(data) < 1_000_000
        assert data.startswith(b"\x89PNG\r\n\x1a\n")
        assert struct.unpack(">II", data[16:24]) == (30_000, 30_000)
        with (
            mock.patch.object(Image, "MAX_IMAGE_PIXELS", 89_478_485),
            pytest.raises(Image.DecompressionBombError),
        ):
            Image.open(io.BytesIO(data))

    def test_truncated_jpeg_has_a_jpeg_header_but_does_not_load(self, sim: RunningSimulator) -> None:
        data = screenshot_bytes(self.broken(sim, "truncated_jpeg"))
        assert data.startswith(b"\xff\xd8\xff")
        with pytest.raises(OSError), Image.open(io.BytesIO(data)) as image:
            image.load()

    def test_gif_is_a_valid_gif(self, sim: RunningSimulator) -> None:
        with Image.open(io.BytesIO(screenshot_bytes(self.broken(sim, "gif")))) as image:
            assert image.format == "GIF"

    def test_empty_screenshot_is_an_empty_string(self, sim: RunningSimulator) -> None:
        reply = self.broken(sim, "empty_screenshot")
        assert reply["Screenshot"] == "" and reply["InstanceId"] == JPEG

    def test_bad_json_is_http_200_with_a_body_that_does_not_parse(self, sim: RunningSimulator) -> None:
        sim.state.patch_instance(JPEG, {"fault": "bad_json"})
        body = sdk_client(sim).do_action_with_exception(
            sdk_request(sim, "GetInstanceScreenshot", RegionId=HZ, InstanceId=JPEG)
        )
        with pytest.raises(ValueError):
            json.loads(body)
        assert raw_call(sim, "GetInstanceScreenshot", RegionId=HZ, InstanceId=JPEG).status == 200

    def test_5xx_is_service_unavailable_503(self, sim: RunningSimulator) -> None:
        sim.state.patch_instance(JPEG, {"fault": "5xx"})
        error = sdk_error(sim, "GetInstanceScreenshot", RegionId=HZ, InstanceId=JPEG)
        assert (error.get_error_code(), error.get_http_status()) == ("ServiceUnavailable", 503)

    def test_5xx_html_is_a_502_html_page(self, sim: RunningSimulator) -> None:
        sim.state.patch_instance(JPEG, {"fault": "5xx_html"})
        reply = raw_call(sim, "GetInstanceScreenshot", RegionId=HZ, InstanceId=JPEG)
        assert reply.status == 502
        assert reply.headers["Content-Type"].startswith("text/html")
        assert reply.body.startswith(b"<html>")
        error = sdk_error(sim, "GetInstanceScreenshot", RegionId=HZ, InstanceId=JPEG)
        assert (error.get_error_code(), error.get_http_status()) == ("SDK.UnknownServerError", 502)

    def test_timeout_holds_the_answer_and_stop_still_returns_promptly(self) -> None:
        sim = start_in_thread(make_config())
        try:
            sim.state.patch_instance(JPEG, {"fault": "timeout"})
            started = time.monotonic()
            with pytest.raises(TimeoutError):
                raw_request(
                    sim, signed_params("GetInstanceScreenshot", RegionId=HZ, InstanceId=JPEG), timeout=0.5
                )
            assert time.monotonic() - started >= 0.5
            assert sim.state.counters.screenshot_calls() == []  # still holding the answer
        finally:
            started = time.monotonic()
            sim.stop()
        assert time.monotonic() - started < 1.0
        assert sim.stopped
        # The held request gives up as soon as the server stops, instead of sleeping out its 30 s.
        deadline = time.monotonic() + 1.0
        while not sim.state.counters.screenshot_calls() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert [c.code for c in sim.state.counters.screenshot_calls()] == ["Stopped"]

    def test_reset_closes_the_connection_without_an_answer(self, sim: RunningSimulator) -> None:
        sim.state.patch_instance(JPEG, {"fault": "reset"})
        with pytest.raises(ConnectionError):
            raw_call(sim, "GetInstanceScreenshot", RegionId=HZ, InstanceId=JPEG)
        with pytest.raises(ClientException) as info:
            sdk_call(sim, "GetInstanceScreenshot", RegionId=HZ, InstanceId=JPEG)
        assert info.value.get_error_code() == "SDK.HttpError"

    def test_signature_no_colon_makes_the_sdk_raise_index_error(self, sim: RunningSimulator) -> None:
        sim.state.patch_instance(JPEG, {"fault": "signature_no_colon"})
        body = raw_call(sim, "GetInstanceScreenshot", RegionId=HZ, InstanceId=JPEG).json()
        assert body["Code"] == "SignatureDoesNotMatch" and ":" not in body["Message"]
        with pytest.raises(IndexError):
            sdk_call(sim, "GetInstanceScreenshot", RegionId=HZ, InstanceId=JPEG)

    def test_forbidden_is_forbidden_ram_403(self, sim: RunningSimulator) -> None:
        sim.state.patch_instance(JPEG, {"fault": "forbidden"})
        error = sdk_error(sim, "GetInstanceScreenshot", RegionId=HZ, InstanceId=JPEG)
        assert (error.get_error_code(), error.get_http_status()) == ("Forbidden.RAM", 403)

    def test_clearing_a_fault_restores_real_frames(self, sim: RunningSimulator) -> None:
        self.broken(sim, "gif")
        data = screenshot_bytes(self.broken(sim, None))
        assert data.startswith(b"\xff\xd8\xff")

    def test_rate_knobs_inject_5xx_throttling_and_malformed_payloads(self, sim: RunningSimulator) -> None:
        sim.state.patch_knobs({"error_5xx_rate": 1.0})
        assert sdk_error(sim, "DescribeRegions").get_error_code() == "ServiceUnavailable"
        sim.state.patch_knobs({"error_5xx_rate": 0.0, "throttle_rate": 1.0})
        assert sdk_error(sim, "DescribeRegions").get_error_code() == "Throttling"
        sim.state.patch_knobs({"throttle_rate": 0.0, "malformed_rate": 1.0})
        payload = sdk_call(sim, "GetInstanceScreenshot", RegionId=HZ, InstanceId=JPEG)["Screenshot"]
        with pytest.raises(binascii.Error):
            base64.b64decode(payload, validate=True)

    def test_latency_knob_delays_every_answer(self, sim: RunningSimulator) -> None:
        sim.state.patch_knobs({"latency_ms": 200})
        started = time.monotonic()
        sdk_call(sim, "DescribeRegions")
        assert time.monotonic() - started >= 0.2


# --- Control API and counters -------------------------------------------------------------------------


class ControlApiTestCase:
    def test_state_shows_instances_knobs_and_counters_but_no_secrets(self, sim: RunningSimulator) -> None:
        sdk_call(sim, "GetInstanceScreenshot", RegionId=HZ, InstanceId=JPEG)
        before = int(time.time() // 3600)
        reply = control(sim, "GET", "/_sim/state")
        assert reply.status == 200
        state = reply.json()
        jpeg = next(i for i in state["instances"] if i["instance_id"] == JPEG)
        assert (jpeg["status"], jpeg["fault"]) == ("Running", None)
        assert before <= jpeg["frame"] <= int(time.time() // 3600)
        assert state["knobs"]["min_screenshot_interval"] == 0.0
        assert state["counters"]["screenshot_calls"][0]["instance_id"] == JPEG
        assert SECRET not in reply.body.decode() and STS_TOKEN not in reply.body.decode()

    def test_patch_instance_changes_what_the_api_answers(self, sim: RunningSimulator) -> None:
        reply = control(sim, "POST", f"/_sim/instances/{JPEG}", {"status": "Stopped", "tags": {"env": "qa"}})
        assert (reply.status, reply.json()["status"]) == (200, "Stopped")
        assert sdk_error(sim, "GetInstanceScreenshot", RegionId=HZ, InstanceId=JPEG).get_error_code() == (
            "IncorrectInstanceStatus"
        )
        described = sdk_call(sim, "DescribeInstances", RegionId=HZ, InstanceIds=json.dumps([JPEG]))
        assert described["Instances"]["Instance"][0]["Tags"]["Tag"] == [{"TagKey": "env", "TagValue": "qa"}]

    def test_patch_image_format_and_supported(self, sim: RunningSimulator) -> None:
        control(sim, "POST", f"/_sim/instances/{JPEG}", {"image_format": "png"})
        assert screenshot_bytes(
            sdk_call(sim, "GetInstanceScreenshot", RegionId=HZ, InstanceId=JPEG)
        ).startswith(b"\x89PNG")
        control(sim, "POST", f"/_sim/instances/{JPEG}", {"supported": False})
        assert (
            sdk_error(sim, "GetInstanceScreenshot", RegionId=HZ, InstanceId=JPEG).get_error_code()
            == "NotSupported"
        )

    def test_bad_bodies_are_400_with_a_message(self, sim: RunningSimulator) -> None:
        for body in (
            b"{not json",
            b"[1, 2]",
            b'{"status": "Exploded"}',
            b'{"colour": "red"}',
            b'{"fault": "meteor"}',
        ):
            reply = control(sim, "POST", f"/_sim/instances/{JPEG}", raw_body=body)
            assert reply.status == 400, body
            assert reply.json()["error"]
        assert control(sim, "POST", "/_sim/knobs", {"throttle_rate": 2}).status == 400

    def test_unknown_instance_is_404(self, sim: RunningSimulator) -> None:
        assert control(sim, "POST", f"/_sim/instances/{UNKNOWN}", {"status": "Running"}).status == 404

    def test_added_instance_is_described_and_served(self, sim: RunningSimulator) -> None:
        new = {"instance_id": UNKNOWN, "region_id": HZ, "name": "late-01", "image_format": "png"}
        assert control(sim, "POST", "/_sim/instances", new).status == 201
        assert control(sim, "POST", "/_sim/instances", new).status == 400  # exists already
        described = sdk_call(sim, "DescribeInstances", RegionId=HZ, InstanceIds=json.dumps([UNKNOWN]))
        assert described["Instances"]["Instance"][0]["InstanceName"] == "late-01"
        assert "Tags" not in described["Instances"]["Instance"][0]
        assert sdk_call(sim, "GetInstanceScreenshot", RegionId=HZ, InstanceId=UNKNOWN)["Screenshot"]

    def test_patch_knobs(self, sim: RunningSimulator) -> None:
        reply = control(
            sim, "POST", "/_sim/knobs", {"min_screenshot_interval": 60, "throttle_http_status": 429}
        )
        assert reply.json()["throttle_http_status"] == 429
        sdk_call(sim, "GetInstanceScreenshot", RegionId=HZ, InstanceId=JPEG)
        assert sdk_error(sim, "GetInstanceScreenshot", RegionId=HZ, InstanceId=JPEG).get_http_status() == 429

    def test_reset_clears_counters_nonces_and_the_interval_memory(self, sim: RunningSimulator) -> None:
        sim.state.patch_knobs({"min_screenshot_interval": 60})
        params = signed_params("GetInstanceScreenshot", RegionId=HZ, InstanceId=JPEG)
        assert raw_request(sim, params).status == 200
        assert control(sim, "POST", "/_sim/reset").status == 200
        assert sim.state.counters.action_count("GetInstanceScreenshot") == 0
        # Same nonce, same instance, within the interval: both forgotten.
        assert raw_request(sim, params).status == 200

    def test_control_api_refuses_clients_that_are_not_loopback(self, sim: RunningSimulator) -> None:
        reply = handle_control(sim.state, "POST", "/_sim/knobs", b'{"throttle_rate": 1}', "10.1.2.3")
        assert reply.status == 403
        assert sim.state.knobs.throttle_rate == 0.0
        assert handle_control(sim.state, "GET", "/_sim/state", b"", "127.0.0.1").status == 200

    @pytest.mark.parametrize(
        ("address", "expected"),
        [
            ("127.0.0.1", True),
            ("127.8.9.10", True),
            ("::1", True),
            ("::ffff:127.0.0.1", True),
            ("10.0.0.5", False),
            ("192.168.1.20", False),
            ("::ffff:10.0.0.5", False),
            ("fe80::1", False),
            ("localhost", False),
            ("", False),
        ],
    )
    def test_is_loopback(self, address: str, expected: bool) -> None:
        assert is_loopback(address) is expected


class CountersTestCase:
    def test_it_counts_per_action_per_instance_and_per_access_key(self, sim: RunningSimulator) -> None:
        for _ in range(2):
            sdk_call(sim, "GetInstanceScreenshot", RegionId=HZ, InstanceId=JPEG)
        sdk_call(sim, "GetInstanceScreenshot", RegionId=HZ, InstanceId=PNG)
        sdk_call(sim, "DescribeRegions")
        sdk_error(sim, "DescribeRegions", sdk_client(sim, ak="LTAIother", secret="x"))
        counters = sim.state.counters
        assert counters.action_count("GetInstanceScreenshot") == 3
        assert counters.action_count("DescribeRegions") == 2
        assert counters.instance_action_count("GetInstanceScreenshot", JPEG) == 2
        assert counters.instance_action_count("GetInstanceScreenshot", PNG) == 1
        assert (counters.access_key_count(KEY_ID), counters.access_key_count("LTAIother")) == (4, 1)
        as_json = control(sim, "GET", "/_sim/state").json()["counters"]
        assert as_json["instance_actions"]["GetInstanceScreenshot"] == {JPEG: 2, PNG: 1}

    def test_screenshot_call_log_has_times_and_outcomes(self) -> None:
        with start_in_thread(make_config(min_screenshot_interval=10.0)) as sim:
            before = time.monotonic()
            sdk_call(sim, "GetInstanceScreenshot", RegionId=HZ, InstanceId=JPEG)
            sdk_error(sim, "GetInstanceScreenshot", RegionId=HZ, InstanceId=JPEG)
            sdk_error(sim, "GetInstanceScreenshot", RegionId=HZ, InstanceId=STOPPED)
            calls = sim.state.counters.screenshot_calls()
        assert [(c.action, c.instance_id, c.code) for c in calls] == [
            ("GetInstanceScreenshot", JPEG, "Success"),
            ("GetInstanceScreenshot", JPEG, "Throttling"),
            ("GetInstanceScreenshot", STOPPED, "IncorrectInstanceStatus"),
        ]
        assert before <= calls[0].monotonic <= calls[1].monotonic <= time.monotonic()
        assert abs(calls[0].wall - time.time()) < 5


# --- Config, the demo fleet, the server's life ----------------------------------------------------------


class ConfigTestCase:
    def test_demo_config_is_deterministic_per_seed(self) -> None:
        assert demo_config("id", "secret", seed=5) == demo_config("id", "secret", seed=5)
        assert demo_config("id", "secret", seed=5) != demo_config("id", "secret", seed=6)

    def test_demo_fleet_has_the_promised_mix(self) -> None:
        config = demo_config("LTAIdemo", "demo-secret", count=12, seed=1)
        instances = config["instances"]
        assert len(instances) == 12
        assert all(re.fullmatch(r"i-[a-z0-9]{20}", i["instance_id"]) for i in instances)
        assert 2 <= len({i["region_id"] for i in instances}) <= 3
        assert sum(i["image_format"] == "png" for i in instances) == 2
        assert sum(i["status"] == "Stopped" for i in instances) == 1
        assert sum(not i["supported"] for i in instances) == 1
        assert all({"env", "role", "team"} <= set(i["tags"]) for i in instances)
        assert config["access_keys"] == [{"id": "LTAIdemo", "secret": "demo-secret", "security_token": None}]
        # JSON-able, and loadable back into a running fleet.
        assert len(FleetState(json.loads(json.dumps(config))).instances()) == 12

    def test_invalid_config_is_refused(self) -> None:
        for bad in (
            {**make_config(), "instances": [{"instance_id": JPEG, "region_id": HZ, "fault": "meteor"}]},
            {**make_config(), "instances": [{"instance_id": JPEG, "region_id": "mars-1"}]},
            {**make_config(), "knobs": {"latency_ms": -1}},
            {**make_config(), "surprise": True},
        ):
            with pytest.raises(ValueError):
                FleetState(bad)

    def test_knob_defaults(self) -> None:
        assert Knobs() == Knobs(0.0, 0.0, 0.0, 0.0, 10.0, 400)


class LifecycleTestCase:
    def test_stop_closes_the_listening_socket(self) -> None:
        sim = start_in_thread(make_config())
        assert sim.url == f"http://127.0.0.1:{sim.port}"
        sim.stop()
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", sim.port), timeout=1).close()

    def test_run_simulator_serves_until_sigterm_and_logs_no_credentials(self) -> None:
        with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as config_file:
            json.dump(make_config(), config_file)
        # Minimal settings: the command must not need the database or the project's apps.
        script = (
            "import sys, django\n"
            "from django.conf import settings\n"
            "settings.configure(INSTALLED_APPS=[])\n"
            "django.setup()\n"
            "from django.core.management import call_command\n"
            "from screenshots.management.commands.run_simulator import Command\n"
            "call_command(Command(), '--config', sys.argv[1], '--port', '0')\n"
            "assert 'screenshots.models' not in sys.modules, 'run_simulator imported the models'\n"
        )
        env = {k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"}
        env["PYTHONPATH"] = str(ROOT)
        process = subprocess.Popen(
            [sys.executable, "-u", "-c", script, config_file.name],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            first_line = process.stdout.readline()  # type: ignore[union-attr]
            match = re.search(r"listening on http://127\.0\.0\.1:(\d+)", first_line)
            assert match, first_line + process.stderr.read()  # type: ignore[union-attr]
            port = int(match.group(1))
            client = AcsClient(KEY_ID, SECRET, HZ, auto_retry=False, timeout=5, proxy=NO_PROXY)
            request = CommonRequest(
                domain=f"127.0.0.1:{port}",
                version="2014-05-26",
                action_name="GetInstanceScreenshot",
                product="Ecs",
            )
            request.add_query_param("RegionId", HZ)
            request.add_query_param("InstanceId", JPEG)
            assert json.loads(client.do_action_with_exception(request))["InstanceId"] == JPEG
            process.send_signal(signal.SIGTERM)
            out, err = process.communicate(timeout=10)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
            Path(config_file.name).unlink()
        assert process.returncode == 0, err
        assert "stopped" in out
        assert re.search(rf"GetInstanceScreenshot {JPEG} Success 200 \d+ms", err), err
        assert KEY_ID not in err + out and SECRET not in err + out
