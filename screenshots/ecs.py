"""The only door to the ECS API. Nothing else in the project imports aliyunsdkcore.

Every call returns one typed result: the payload, or an ``EcsError`` with a category and whether it is
permanent. Clients are made once per account per process (after fork) and reused: the SDK keeps a
pooled HTTP session in each, and a new client per call is about three times slower.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from aliyunsdkcore.acs_exception.exceptions import ClientException, ServerException
from aliyunsdkcore.auth.credentials import StsTokenCredential
from aliyunsdkcore.client import AcsClient
from aliyunsdkcore.request import CommonRequest
from django.conf import settings

from screenshots.models import Account, ErrorCategory, is_loopback_host

log = logging.getLogger(__name__)

# The SDK logs the server's string-to-sign (with the AccessKeyId) at ERROR and whole bodies at WARNING,
# and adds a DEBUG handler of its own: silence it whatever the logging configuration says.
for _name in ("aliyunsdkcore", "aliyunsdkcore.client", "aliyunsdkcore.http.http_response"):
    _sdk_logger = logging.getLogger(_name)
    _sdk_logger.setLevel(logging.CRITICAL + 1)
    _sdk_logger.handlers.clear()
    _sdk_logger.propagate = False

API_VERSION = "2014-05-26"

# Codes from the API reference and the common error centre, mapped to what the dashboard shows.
_CATEGORY_BY_CODE: dict[str, tuple[ErrorCategory, bool]] = {
    "InvalidParameter": (ErrorCategory.NOT_FOUND, True),
    "InvalidInstanceId.NotFound": (ErrorCategory.NOT_FOUND, True),
    "IncorrectInstanceStatus": (ErrorCategory.NOT_RUNNING, False),
    "NotSupported": (ErrorCategory.NOT_SUPPORTED, True),
    "Throttling": (ErrorCategory.THROTTLED, False),
    "Throttling.User": (ErrorCategory.THROTTLED, False),
    "Throttling.Api": (ErrorCategory.THROTTLED, False),
    "ServiceUnavailable": (ErrorCategory.SERVER, False),
    "InternalError": (ErrorCategory.SERVER, False),
    "MissingParameter": (ErrorCategory.CLIENT, True),
}
_CREDENTIAL_CODE_PREFIXES = (
    "InvalidAccessKeyId",
    "InvalidAccessKeySecret",
    "SignatureDoesNotMatch",
    "Forbidden",
    "InvalidSecurityToken",
    "IncompleteSignature",
)


@dataclass(frozen=True)
class EcsError:
    category: ErrorCategory
    code: str
    message: str
    request_id: str = ""
    http_status: int | None = None
    permanent: bool = False

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


@dataclass(frozen=True)
class Screenshot:
    base64_image: str = field(repr=False)
    request_id: str


@dataclass(frozen=True)
class ConsoleOutput:
    base64_text: str = field(repr=False)
    last_update_time: str
    request_id: str


@dataclass(frozen=True)
class RemoteInstance:
    instance_id: str
    region_id: str
    name: str
    status: str
    tags: dict[str, str]


def categorize(code: str, http_status: int | None = None) -> tuple[ErrorCategory, bool]:
    if code in _CATEGORY_BY_CODE:
        return _CATEGORY_BY_CODE[code]
    if code.startswith(_CREDENTIAL_CODE_PREFIXES):
        return ErrorCategory.CREDENTIALS, True
    if code.startswith("Throttling"):
        return ErrorCategory.THROTTLED, False
    if http_status is not None and http_status >= 500:
        return ErrorCategory.SERVER, False
    return ErrorCategory.CLIENT, False


def _guard_sdk_environment() -> None:
    # The SDK prefers ALIYUN_ACCESS_KEY_* from the environment over an STS credential we pass, and
    # dumps whole signed requests when DEBUG=sdk. Neither may happen in this process.
    for name in ("ALIYUN_ACCESS_KEY_ID", "ALIYUN_ACCESS_KEY_SECRET"):
        if os.environ.pop(name, None) is not None:
            log.warning("ignoring %s from the environment: credentials come from the account", name)
    if os.environ.get("DEBUG", "").lower() == "sdk":
        os.environ.pop("DEBUG")
        log.warning("ignoring DEBUG=sdk: it would log signed requests")


class _ClientCache:
    """One AcsClient per account and credential version, per process."""

    def __init__(self) -> None:
        self._pid = os.getpid()
        self._clients: dict[tuple[int, str], AcsClient] = {}
        self._lock = threading.Lock()

    def get(self, account: Account) -> AcsClient:
        if self._pid != os.getpid():  # forked: the parent's pooled sockets are not ours
            self._pid, self._clients = os.getpid(), {}
        # The fingerprint changes when credentials change; it is a hash, never the secret itself.
        fingerprint = hashlib.sha256(
            "\0".join(
                [
                    account.access_key_id,
                    account.access_key_secret,
                    account.security_token,
                    account.endpoint_scheme,
                    account.endpoint_host,
                    str(account.endpoint_port),
                ]
            ).encode()
        ).hexdigest()
        key = (account.pk, fingerprint)
        with self._lock:
            client = self._clients.get(key)
            if client is None:
                self._clients = {k: v for k, v in self._clients.items() if k[0] != account.pk}
                client = self._clients[key] = _make_client(account)
            return client

    def clear(self) -> None:
        with self._lock:
            self._clients = {}


def _make_client(account: Account) -> AcsClient:
    _guard_sdk_environment()
    kwargs: dict[str, Any] = {
        "region_id": "cn-hangzhou",  # only used for endpoint lookup, which we bypass with a domain
        "auto_retry": False,
        "connect_timeout": settings.ECS_CONNECT_TIMEOUT,
        "timeout": settings.ECS_READ_TIMEOUT,
        "pool_size": 16,
    }
    if account.endpoint_host and is_loopback_host(account.endpoint_host):
        # The SDK reads HTTP(S)_PROXY itself and ignores NO_PROXY.
        kwargs["proxy"] = {"http": None, "https": None}
    if account.security_token:
        kwargs["credential"] = StsTokenCredential(
            account.access_key_id, account.access_key_secret, account.security_token
        )
    else:
        kwargs["ak"], kwargs["secret"] = account.access_key_id, account.access_key_secret
    return AcsClient(**kwargs)


_clients = _ClientCache()
reset_clients = _clients.clear


def _request(account: Account, region_id: str, action: str, params: dict[str, str]) -> CommonRequest:
    request = CommonRequest(
        domain=account.endpoint_for(region_id), version=API_VERSION, action_name=action, product="Ecs"
    )
    # The SDK's default is plain http; only a loopback endpoint (the simulator) may use it.
    scheme = account.endpoint_scheme if is_loopback_host(account.endpoint_host) else "https"
    request.set_protocol_type(scheme)
    request.set_accept_format("JSON")
    request.add_query_param("RegionId", region_id)
    for key, value in params.items():
        request.add_query_param(key, value)
    return request


def call(account: Account, region_id: str, action: str, params: dict[str, str]) -> dict[str, Any] | EcsError:
    """One signed RPC call; the decoded JSON reply or an EcsError. Never raises for API outcomes."""
    client = _clients.get(account)
    request = _request(account, region_id, action, params)
    try:
        body = client.do_action_with_exception(request)
    except ServerException as exc:
        code = exc.get_error_code() or "UnknownServerError"
        http_status = exc.get_http_status()
        if code == "SDK.UnknownServerError":
            return EcsError(
                ErrorCategory.MALFORMED,
                code,
                "The server answered with a body that is not JSON.",
                exc.get_request_id() or "",
                http_status,
            )
        category, permanent = categorize(code, http_status)
        message = _sanitize(exc.get_error_msg() or "", account)
        return EcsError(category, code, message, exc.get_request_id() or "", http_status, permanent)
    except ClientException as exc:
        # SDK.HttpError: connection refused, reset, DNS, connect or read timeout.
        return EcsError(
            ErrorCategory.NETWORK, exc.get_error_code() or "SDK.ClientError", _redact(exc.get_error_msg())
        )
    except IndexError:
        # aliyunsdkcore parses a SignatureDoesNotMatch message by splitting on ":"; without one it
        # raises IndexError instead of a ServerException.
        return EcsError(
            ErrorCategory.CREDENTIALS,
            "SignatureDoesNotMatch",
            "The server did not accept the request signature.",
            permanent=True,
        )
    try:
        reply = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return EcsError(
            ErrorCategory.MALFORMED, "MalformedReply", "The server answered 200 with a non-JSON body."
        )
    if not isinstance(reply, dict):
        return EcsError(
            ErrorCategory.MALFORMED, "MalformedReply", "The server answered 200 with a non-object body."
        )
    return reply


_STRING_TO_SIGN = re.compile(r"\s*(server\s+)?string\s*to\s*sign.*", re.IGNORECASE | re.DOTALL)


def _sanitize(message: str, account: Account) -> str:
    """Server messages go to tiles, the failure log and logs: keep the credentials out of them.

    SignatureDoesNotMatch quotes the server's string-to-sign, which carries the AccessKeyId and the
    STS token; any other echo of a credential is masked too.
    """
    message = _STRING_TO_SIGN.sub(" (string-to-sign withheld)", message)
    for value in (account.access_key_secret, account.security_token, account.access_key_id):
        if value and len(value) >= 4:
            message = message.replace(value, "<redacted>")
    return message[:2000]


def _redact(message: str | None) -> str:
    # Network error texts from requests/urllib3 can contain the full signed URL (AccessKeyId, Signature).
    return re.sub(r"\?[^\s)'\"]*", "?<query redacted>", message or "")[:500]


def get_screenshot(
    account: Account, region_id: str, instance_id: str, wake_up: bool = False
) -> Screenshot | EcsError:
    reply = call(
        account,
        region_id,
        "GetInstanceScreenshot",
        {"InstanceId": instance_id, "WakeUp": "true" if wake_up else "false"},
    )
    if isinstance(reply, EcsError):
        return reply
    image = reply.get("Screenshot")
    if not isinstance(image, str) or not image:
        return EcsError(
            ErrorCategory.MALFORMED,
            "MalformedReply",
            "The reply has no Screenshot.",
            str(reply.get("RequestId", "")),
        )
    return Screenshot(base64_image=image, request_id=str(reply.get("RequestId", "")))


def get_console_output(account: Account, region_id: str, instance_id: str) -> ConsoleOutput | EcsError:
    reply = call(
        account, region_id, "GetInstanceConsoleOutput", {"InstanceId": instance_id, "RemoveSymbols": "true"}
    )
    if isinstance(reply, EcsError):
        return reply
    output = reply.get("ConsoleOutput")
    if not isinstance(output, str):
        return EcsError(
            ErrorCategory.MALFORMED,
            "MalformedReply",
            "The reply has no ConsoleOutput.",
            str(reply.get("RequestId", "")),
        )
    return ConsoleOutput(output, str(reply.get("LastUpdateTime", "")), str(reply.get("RequestId", "")))


def describe_instances(account: Account, region_id: str, page_size: int = 100) -> Iterator[RemoteInstance]:
    """Every instance of the account in one region, following NextToken paging.

    Raises EcsErrorRaised: discovery is an interactive action and wants to stop at the first error.
    """
    token = ""
    while True:
        params = {"MaxResults": str(page_size)}
        if token:
            params["NextToken"] = token
        reply = call(account, region_id, "DescribeInstances", params)
        if isinstance(reply, EcsError):
            raise EcsErrorRaised(reply)
        for item in reply.get("Instances", {}).get("Instance", []):
            tags = {t.get("TagKey", ""): t.get("TagValue", "") for t in item.get("Tags", {}).get("Tag", [])}
            yield RemoteInstance(
                item["InstanceId"],
                item.get("RegionId", region_id),
                item.get("InstanceName", ""),
                item.get("Status", ""),
                tags,
            )
        token = reply.get("NextToken") or ""
        if not token:
            return


class EcsErrorRaised(Exception):
    def __init__(self, error: EcsError) -> None:
        super().__init__(str(error))
        self.error = error
