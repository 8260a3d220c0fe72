"""An HTTP server that speaks the ECS RPC dialect (API version 2014-05-26) with real signature checks.

It answers what aliyunsdkcore 2.16's CommonRequest sends: GET (or POST with a form body) on ``/``, every
parameter in the query (and body), signed with HMAC-SHA1 over the union, an empty ``SignatureType=``
included. Unauthenticated control endpoints under ``/_sim/`` let the demo and the tests change the
fleet live; they answer loopback clients only.
"""

from __future__ import annotations

import base64
import contextlib
import ipaddress
import json
import logging
import selectors
import socket
import struct
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from . import images
from .fleet import FleetState, Instance, Knobs
from .signing import string_to_sign, verify

log = logging.getLogger("screenshots.simulator")

API_VERSION = "2014-05-26"
JSON_CONTENT_TYPE = "application/json;charset=utf-8"
TIMESTAMP_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
TIMESTAMP_TOLERANCE = 15 * 60.0
TIMEOUT_FAULT_SECONDS = 30.0
MAX_BODY = 1 << 20
_AUTH_PARAMS = (
    "AccessKeyId",
    "Signature",
    "SignatureMethod",
    "SignatureVersion",
    "SignatureNonce",
    "Timestamp",
)


def is_loopback(address: str) -> bool:
    """True for 127.0.0.0/8, ::1 and IPv4-mapped loopback; False for anything else, hostnames included."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback


@dataclass
class Reply:
    status: int
    body: bytes
    code: str = "Success"  # what the log line and the counters call this outcome
    content_type: str = JSON_CONTENT_TYPE
    request_id: str = ""


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.status, self.code, self.message = status, code, message


class _RawReply(Exception):
    """A fault that answers something other than an ECS JSON document."""

    def __init__(self, reply: Reply) -> None:
        super().__init__(reply.code)
        self.reply = reply


class _Drop(Exception):
    """Close the connection without answering (the "reset" fault, or a stop during a slow answer)."""

    def __init__(self, code: str) -> None:
        super().__init__(code)
        self.code = code


def _new_request_id() -> str:
    return str(uuid.uuid4()).upper()


def _missing(name: str) -> ApiError:
    return ApiError(
        400,
        "MissingParameter",
        f'The input parameter "{name}" that is mandatory for processing this request is not supplied.',
    )


def _invalid(name: str) -> ApiError:
    return ApiError(400, "InvalidParameter", f'The specified parameter "{name}" is not valid.')


def _required(params: Mapping[str, str], name: str) -> str:
    value = params.get(name, "")
    if not value:
        raise _missing(name)
    return value


def _int_param(params: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    raw = params.get(name, "")
    if raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise _invalid(name) from None
    if not low <= value <= high:
        raise _invalid(name)
    return value


def _is_true(value: str) -> bool:
    # The SDK turns a Python bool into "True"; people and other SDKs send "true".
    return value.strip().lower() == "true"


@dataclass
class _Call:
    """One API request as it goes through the pipeline."""

    method: str
    params: dict[str, str]
    monotonic: float
    wall: float
    request_id: str

    @property
    def action(self) -> str:
        return self.params.get("Action", "")

    @property
    def instance_id(self) -> str:
        return self.params.get("InstanceId", "")

    @property
    def host_id(self) -> str:
        region = self.params.get("RegionId", "")
        return f"ecs.{region}.aliyuncs.com" if region.replace("-", "").isalnum() else "ecs.aliyuncs.com"


class EcsApi:
    """The RPC dialect: authentication, the common rules, then one method per action."""

    def __init__(self, state: FleetState, stopping: threading.Event) -> None:
        self.state = state
        self.stopping = stopping
        self._actions: dict[str, Callable[[_Call], dict[str, Any] | Reply]] = {
            "GetInstanceScreenshot": self._get_instance_screenshot,
            "GetInstanceConsoleOutput": self._get_instance_console_output,
            "DescribeInstances": self._describe_instances,
            "DescribeInstanceStatus": self._describe_instance_status,
            "DescribeRegions": self._describe_regions,
        }

    def handle(self, method: str, params: dict[str, str]) -> Reply:
        """Answer one request. Raises _Drop when the connection must close without an answer."""
        call = _Call(method, params, self.state.monotonic(), self.state.wall(), _new_request_id())
        code = "InternalError"
        try:
            reply = self._answer(call)
            code = reply.code
            return reply
        except _Drop as drop:
            code = drop.code
            raise
        finally:
            self.state.counters.record(
                action=call.action,
                instance_id=call.instance_id,
                access_key_id=params.get("AccessKeyId", ""),
                code=code,
                monotonic=call.monotonic,
                wall=call.wall,
            )

    def _answer(self, call: _Call) -> Reply:
        try:
            result = self._dispatch(call)
        except ApiError as error:
            return self._error(call, error)
        except _RawReply as raw:
            return raw.reply
        except _Drop:
            raise
        except Exception:
            log.exception("simulator bug while answering %s", call.action or "-")
            return self._error(
                call,
                ApiError(
                    500, "InternalError", "The request processing has failed due to some unknown error."
                ),
            )
        if isinstance(result, Reply):
            return result
        body = json.dumps({"RequestId": call.request_id, **result}, ensure_ascii=False).encode()
        return Reply(200, body, request_id=call.request_id)

    @staticmethod
    def _error(call: _Call, error: ApiError) -> Reply:
        body = {
            "RequestId": call.request_id,
            "HostId": call.host_id,
            "Code": error.code,
            "Message": error.message,
        }
        return Reply(error.status, json.dumps(body).encode(), error.code, request_id=call.request_id)

    def _dispatch(self, call: _Call) -> dict[str, Any] | Reply:
        knobs = self.state.knobs
        self._wait(knobs.latency_ms / 1000.0)
        action = _required(call.params, "Action")
        version = _required(call.params, "Version")
        if version != API_VERSION:
            raise ApiError(400, "InvalidVersion", "Specified parameter Version is not valid.")
        handler = self._actions.get(action)
        if handler is None:
            raise ApiError(
                404, "InvalidAction.NotFound", "Specified api is not found, please check your url and method."
            )
        self._authenticate(call)
        if self.state.chance(knobs.error_5xx_rate):
            raise ApiError(
                503, "ServiceUnavailable", "The request has failed due to a temporary failure of the server."
            )
        if self.state.chance(knobs.throttle_rate):
            raise _throttling(knobs)
        return handler(call)

    def _wait(self, seconds: float) -> None:
        # An Event wait, not time.sleep: stop() sets the event and slow answers give up at once.
        if seconds > 0 and self.stopping.wait(seconds):
            raise _Drop("Stopped")

    def _authenticate(self, call: _Call) -> None:
        params = call.params
        for name in _AUTH_PARAMS:
            _required(params, name)
        if params["SignatureMethod"] != "HMAC-SHA1":
            raise ApiError(400, "InvalidSignatureMethod", "Specified signature method is not supported.")
        if params["SignatureVersion"] != "1.0":
            raise ApiError(400, "InvalidSignatureVersion", "Specified signature version is not supported.")
        try:
            stamp = datetime.strptime(params["Timestamp"], TIMESTAMP_FORMAT).replace(tzinfo=UTC).timestamp()
        except ValueError:
            raise ApiError(
                400, "InvalidTimeStamp.Format", "Specified time stamp or date value is not well formatted."
            ) from None
        if abs(call.wall - stamp) > TIMESTAMP_TOLERANCE:
            raise ApiError(400, "InvalidTimeStamp.Expired", "Specified time stamp or date value is expired.")
        key = self.state.access_key(params["AccessKeyId"])
        if key is None:
            raise ApiError(404, "InvalidAccessKeyId.NotFound", "Specified access key is not found.")
        if not verify(key.secret, call.method, params, params["Signature"]):
            # The real service puts its string to sign after a colon, and the SDK relies on that colon.
            raise ApiError(
                400,
                "SignatureDoesNotMatch",
                "Specified signature is not matched with our calculation. server string to sign is:"
                + string_to_sign(call.method, params),
            )
        token = params.get("SecurityToken")
        if key.security_token is not None:
            if not token:
                raise ApiError(
                    400, "InvalidSecurityToken.Malformed", "The security token you provided is malformed."
                )
            if token != key.security_token:
                raise ApiError(
                    400,
                    "InvalidSecurityToken.Mismatch",
                    "The security token you provided does not match the key.",
                )
        elif token is not None:
            raise ApiError(
                400,
                "InvalidSecurityToken.Mismatch",
                "The security token you provided does not match the key.",
            )
        if not self.state.use_nonce(key.id, params["SignatureNonce"]):
            raise ApiError(400, "SignatureNonceUsed", "Specified signature nonce was used already.")

    # Instance actions --------------------------------------------------------------------------------

    def _find_instance(self, call: _Call) -> Instance:
        region_id = _required(call.params, "RegionId")
        instance_id = _required(call.params, "InstanceId")
        instance = self.state.instance(instance_id)
        if instance is None or instance.region_id != region_id:
            raise ApiError(404, "InvalidParameter", 'The "instanceId" provided is not valid.')
        return instance

    def _transport_fault(self, call: _Call, instance: Instance) -> None:
        """Faults that replace the whole answer, as a broken gateway or a credentials problem would."""
        fault = instance.fault
        if fault == "5xx":
            raise ApiError(
                503, "ServiceUnavailable", "The request has failed due to a temporary failure of the server."
            )
        if fault == "forbidden":
            raise ApiError(
                403,
                "Forbidden.RAM",
                "User not authorized to operate on the specified resource, or this API doesn't support RAM.",
            )
        if fault == "signature_no_colon":
            raise ApiError(
                400, "SignatureDoesNotMatch", "Specified signature is not matched with our calculation."
            )
        if fault == "5xx_html":
            html = b"<html><head><title>502 Bad Gateway</title></head><body>Bad Gateway</body></html>"
            raise _RawReply(Reply(502, html, "Fault.5xx_html", "text/html; charset=utf-8", call.request_id))
        if fault == "bad_json":
            body = b'{"RequestId": "' + call.request_id.encode() + b'", "Screenshot": "/9j/4AAQSkZJRgAB'
            raise _RawReply(Reply(200, body, "Fault.bad_json", JSON_CONTENT_TYPE, call.request_id))
        if fault == "reset":
            raise _Drop("Fault.reset")
        if fault == "timeout":
            self._wait(TIMEOUT_FAULT_SECONDS)

    def _get_instance_screenshot(self, call: _Call) -> dict[str, Any] | Reply:
        instance = self._find_instance(call)
        self._transport_fault(call, instance)
        knobs = self.state.knobs
        if not self.state.claim_screenshot_slot(instance.instance_id, call.monotonic):
            raise _throttling(knobs)
        if instance.status != "Running":
            raise ApiError(
                405, "IncorrectInstanceStatus", f'The instance status "{instance.status}" is not applicable'
            )
        if not instance.supported:
            raise ApiError(
                405, "NotSupported", "The instance type is phased out and does not support screenshots."
            )
        spec = images.FrameSpec(
            instance.instance_id,
            instance.name,
            instance.os_name,
            instance.image_format,
            instance.frame_number(call.wall),
            instance.frame_clock(call.wall),
        )
        fault = instance.fault
        if fault is None and self.state.chance(knobs.malformed_rate):
            fault = "bad_base64"
        screenshot = self._screenshot_payload(spec, fault)
        # Built by hand: json.dumps of a 20 MB string on every call would be the slowest thing here, and
        # base64 (even the broken kind served here) needs no JSON escaping.
        head = json.dumps({"RequestId": call.request_id, "InstanceId": instance.instance_id})[:-1]
        body = (head + ', "Screenshot": "').encode() + screenshot.encode("ascii") + b'"}'
        return Reply(200, body, f"Fault.{fault}" if fault else "Success", request_id=call.request_id)

    def _screenshot_payload(self, spec: images.FrameSpec, fault: str | None) -> str:
        if fault == "bad_base64":
            return images.bad_base64(spec)
        if fault == "not_image":
            # Random bytes, but never by chance a JPEG or PNG signature.
            return base64.b64encode(b"\x00" + self.state.random_bytes(4095)).decode()
        if fault == "huge":
            return images.huge_base64()
        if fault == "bomb":
            return base64.b64encode(images.decompression_bomb_png()).decode()
        if fault == "truncated_jpeg":
            return base64.b64encode(images.truncated_jpeg(spec)).decode()
        if fault == "gif":
            return base64.b64encode(images.gif_image()).decode()
        if fault == "empty_screenshot":
            return ""
        return images.frame_base64(spec)

    def _get_instance_console_output(self, call: _Call) -> dict[str, Any]:
        instance = self._find_instance(call)
        self._transport_fault(call, instance)
        lines = images.boot_log(
            instance.instance_id,
            instance.name,
            instance.os_name,
            ansi=not _is_true(call.params.get("RemoveSymbols", "")),
            stopped=instance.status == "Stopped",
        )
        text = "\r\n".join(lines)
        return {
            "InstanceId": instance.instance_id,
            "ConsoleOutput": base64.b64encode(text.encode()).decode(),
            "LastUpdateTime": images.console_time(instance.status_changed_at),
        }

    # Describe actions --------------------------------------------------------------------------------

    def _describe_instances(self, call: _Call) -> dict[str, Any]:
        params = call.params
        region_id = _required(params, "RegionId")
        instances = self.state.instances(region_id)
        if params.get("InstanceIds"):
            try:
                wanted = json.loads(params["InstanceIds"])
            except ValueError:
                raise _invalid("InstanceIds") from None
            if (
                not isinstance(wanted, list)
                or len(wanted) > 100
                or not all(isinstance(i, str) for i in wanted)
            ):
                raise _invalid("InstanceIds")
            wanted_ids = set(wanted)
            instances = [i for i in instances if i.instance_id in wanted_ids]
        if params.get("Status"):
            instances = [i for i in instances if i.status == params["Status"]]
        for number in range(1, 21):
            key = params.get(f"Tag.{number}.Key")
            if not key:
                continue
            value = params.get(f"Tag.{number}.Value")
            instances = [i for i in instances if key in i.tags and (value is None or i.tags[key] == value)]
        page: dict[str, Any]
        if "MaxResults" in params or "NextToken" in params:
            size = _int_param(params, "MaxResults", 10, 1, 100)
            start = _decode_token(params.get("NextToken", ""), len(instances))
            chosen = instances[start : start + size]
            more = start + size < len(instances)
            page = {"NextToken": _encode_token(start + size) if more else ""}
        else:
            number = _int_param(params, "PageNumber", 1, 1, 1_000_000)
            size = _int_param(params, "PageSize", 10, 1, 100)
            chosen = instances[(number - 1) * size : number * size]
            page = {"TotalCount": len(instances), "PageNumber": number, "PageSize": size}
        return {**page, "Instances": {"Instance": [_describe(i) for i in chosen]}}

    def _describe_instance_status(self, call: _Call) -> dict[str, Any]:
        params = call.params
        region_id = _required(params, "RegionId")
        instances = self.state.instances(region_id)
        wanted: set[str] = set()
        for name, value in params.items():
            if name.startswith("InstanceId."):
                number = name.removeprefix("InstanceId.")
                if not number.isdigit() or not 1 <= int(number) <= 100:
                    raise _invalid(name)
                wanted.add(value)
        if wanted:
            instances = [i for i in instances if i.instance_id in wanted]
        number = _int_param(params, "PageNumber", 1, 1, 1_000_000)
        size = _int_param(params, "PageSize", 10, 1, 50)
        chosen = instances[(number - 1) * size : number * size]
        return {
            "TotalCount": len(instances),
            "PageNumber": number,
            "PageSize": size,
            "InstanceStatuses": {
                "InstanceStatus": [{"InstanceId": i.instance_id, "Status": i.status} for i in chosen]
            },
        }

    def _describe_regions(self, call: _Call) -> dict[str, Any]:
        return {
            "Regions": {
                "Region": [
                    {
                        "RegionId": r.region_id,
                        "LocalName": r.local_name,
                        "RegionEndpoint": r.endpoint,
                        "Status": "available",
                    }
                    for r in self.state.regions()
                ]
            }
        }


def _throttling(knobs: Knobs) -> ApiError:
    return ApiError(knobs.throttle_http_status, "Throttling", "Request was denied due to request throttling.")


def _encode_token(offset: int) -> str:
    return base64.urlsafe_b64encode(f"offset:{offset}".encode()).decode().rstrip("=")


def _decode_token(token: str, total: int) -> int:
    if not token:
        return 0
    try:
        kind, _, number = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode().partition(":")
        offset = int(number)
    except (ValueError, UnicodeDecodeError):
        raise _invalid("NextToken") from None
    if kind != "offset" or not 0 <= offset <= total:
        raise _invalid("NextToken")
    return offset


def _describe(instance: Instance) -> dict[str, Any]:
    item: dict[str, Any] = {
        "InstanceId": instance.instance_id,
        "InstanceName": instance.name,
        "HostName": instance.name,
        "Status": instance.status,
        "InstanceType": instance.instance_type,
        "RegionId": instance.region_id,
        "ZoneId": instance.zone_id,
        "OSName": instance.os_name,
        "OSType": "linux",
    }
    # No Tags member at all for an untagged instance: clients must not count on it being there.
    if instance.tags:
        item["Tags"] = {"Tag": [{"TagKey": k, "TagValue": v} for k, v in instance.tags.items()]}
    return item


# Control API -----------------------------------------------------------------------------------------


def _control_reply(status: int, data: Any) -> Reply:
    code = "Success" if status < 400 else f"Control.{status}"
    return Reply(status, json.dumps(data).encode(), code)


def handle_control(state: FleetState, method: str, path: str, body: bytes, client_address: str) -> Reply:
    """The unsigned /_sim/ endpoints. Loopback clients only: they can break the fleet at will."""
    if not is_loopback(client_address):
        return _control_reply(403, {"error": "the control API answers loopback clients only"})
    parts = [p for p in path.split("/") if p][1:]  # after "_sim"
    if method == "GET" and parts == ["state"]:
        return _control_reply(200, state.snapshot())
    if method != "POST" or not parts or parts[0] not in ("instances", "knobs", "reset") or len(parts) > 2:
        return _control_reply(404, {"error": f"no control endpoint {method} {path}"})
    payload: Any = {}
    if parts != ["reset"]:
        try:
            payload = json.loads(body.decode() or "null")
        except (ValueError, UnicodeDecodeError) as exc:
            return _control_reply(400, {"error": f"the body is not JSON: {exc}"})
        if not isinstance(payload, dict):
            return _control_reply(400, {"error": "the body must be a JSON object"})
    try:
        if parts == ["reset"]:
            state.reset()
            return _control_reply(200, {"reset": True})
        if parts == ["knobs"]:
            return _control_reply(200, asdict(state.patch_knobs(payload)))
        if parts == ["instances"]:
            return _control_reply(201, _instance_json(state.add_instance(payload), state.wall()))
        if len(parts) == 2 and parts[0] == "instances":
            return _control_reply(200, _instance_json(state.patch_instance(parts[1], payload), state.wall()))
    except KeyError:
        return _control_reply(404, {"error": f"no instance {parts[-1]}"})
    except ValueError as exc:
        return _control_reply(400, {"error": str(exc)})
    return _control_reply(404, {"error": f"no control endpoint {method} {path}"})


def _instance_json(instance: Instance, now: float) -> dict[str, Any]:
    data = asdict(instance)
    data["frame"] = instance.frame_number(now)
    return data


# HTTP ------------------------------------------------------------------------------------------------


class _Handler(BaseHTTPRequestHandler):
    # HTTP/1.1 keep-alive: the SDK pools connections, and a fresh one per call would halve throughput.
    protocol_version = "HTTP/1.1"
    server: SimulatorHTTPServer
    timeout = 120  # idle keep-alive connections give their thread back eventually

    def setup(self) -> None:
        super().setup()
        self.server.track(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.untrack(self.connection)

    def do_GET(self) -> None:
        self._serve()

    def do_POST(self) -> None:
        self._serve()

    def log_message(self, format: str, *args: Any) -> None:
        # The default access log prints the request line, and with it AccessKeyId and Signature.
        pass

    def _serve(self) -> None:
        started = time.monotonic()
        url = urlsplit(self.path)
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if not 0 <= length <= MAX_BODY:
            self._send(Reply(413, b'{"error": "missing, bad or too large Content-Length"}', "Control.413"))
            self.close_connection = True
            return
        body = self.rfile.read(length) if length else b""
        if url.path.startswith("/_sim/") or url.path == "/_sim":
            reply = handle_control(self.server.state, self.command, url.path, body, self.client_address[0])
            self._send(reply)
            # DEBUG: tests poll the state endpoint many times a second.
            log.debug("control %s %s %s %dms", self.command, url.path, reply.status, _ms(started))
            return
        params = dict(parse_qsl(url.query, keep_blank_values=True))
        content_type = self.headers.get("Content-Type", "")
        if body and content_type.split(";")[0].strip().lower() == "application/x-www-form-urlencoded":
            params.update(parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))
        action, instance_id = params.get("Action", "-"), params.get("InstanceId", "-")
        if url.path != "/":
            reply = Reply(
                404,
                json.dumps(
                    {
                        "RequestId": _new_request_id(),
                        "HostId": "ecs.aliyuncs.com",
                        "Code": "InvalidAction.NotFound",
                        "Message": "Specified api is not found, please check your url and method.",
                    }
                ).encode(),
                "InvalidAction.NotFound",
            )
        else:
            try:
                reply = self.server.api.handle(self.command, params)
            except _Drop as drop:
                self._drop()
                log.info("%s %s %s dropped %dms", action, instance_id, drop.code, _ms(started))
                return
        self._send(reply)
        log.info("%s %s %s %s %dms", action, instance_id, reply.code, reply.status, _ms(started))

    def _send(self, reply: Reply) -> None:
        self.send_response(reply.status)
        self.send_header("Content-Type", reply.content_type)
        self.send_header("Content-Length", str(len(reply.body)))
        if reply.request_id:
            self.send_header("x-acs-request-id", reply.request_id)
        self.end_headers()
        self.wfile.write(reply.body)

    def _drop(self) -> None:
        # Linger 0 makes close() send a RST: the client sees a reset, not a polite end of stream.
        self.close_connection = True
        self.server.mark_for_reset(self.connection)


def _ms(started: float) -> int:
    return round((time.monotonic() - started) * 1000)


class SimulatorHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], state: FleetState) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        self.state = state
        self.stopping = threading.Event()
        self.api = EcsApi(state, self.stopping)
        self._connections: set[socket.socket] = set()
        self._resets: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        # serve_forever() notices shutdown() only at its next poll; a wake-up socket makes stop() instant
        # without an idle loop.
        self._wake_reader, self._wake_writer = socket.socketpair()
        super().__init__(address, _Handler)

    def serve_until_stopped(self) -> None:
        with selectors.DefaultSelector() as selector:
            selector.register(self, selectors.EVENT_READ)
            selector.register(self._wake_reader, selectors.EVENT_READ)
            while not self.stopping.is_set():
                for key, _ in selector.select():
                    if key.fileobj is self and not self.stopping.is_set():
                        self._handle_request_noblock()

    def wake(self) -> None:
        with contextlib.suppress(OSError):
            self._wake_writer.send(b"x")

    def server_close(self) -> None:
        super().server_close()
        self._wake_reader.close()
        self._wake_writer.close()

    def track(self, connection: socket.socket) -> None:
        with self._connections_lock:
            self._connections.add(connection)

    def untrack(self, connection: socket.socket) -> None:
        with self._connections_lock:
            self._connections.discard(connection)

    def mark_for_reset(self, connection: socket.socket) -> None:
        with self._connections_lock:
            self._resets.add(connection)

    def shutdown_request(self, request: Any) -> None:
        with self._connections_lock:
            reset = request in self._resets
            self._resets.discard(request)
        if reset:
            with contextlib.suppress(OSError):
                request.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.close_request(request)
        else:
            super().shutdown_request(request)

    def close_all_connections(self) -> None:
        with self._connections_lock:
            connections = list(self._connections)
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that hangs up mid-answer, or our own stop(), is not worth a traceback.
        if self.stopping.is_set():
            return
        log.exception("error while serving %s", client_address[0] if client_address else "?")


class RunningSimulator:
    """A simulator serving on a background thread. Use as a context manager or call stop()."""

    def __init__(self, server: SimulatorHTTPServer, thread: threading.Thread) -> None:
        self._server = server
        self._thread = thread
        self.host: str = server.server_address[0]
        self.port: int = server.server_address[1]
        self.state: FleetState = server.state
        host = f"[{self.host}]" if ":" in self.host else self.host
        self.url = f"http://{host}:{self.port}"
        self._closed = False

    @property
    def stopped(self) -> bool:
        return not self._thread.is_alive()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop serving and close every socket. Returns promptly even while answers are being delayed."""
        if self._closed:
            return
        self._closed = True
        self._server.stopping.set()
        self._server.wake()
        self._thread.join(timeout)
        self._server.close_all_connections()
        self._server.server_close()

    def __enter__(self) -> RunningSimulator:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def start_in_thread(
    config: Mapping[str, Any] | FleetState, host: str = "127.0.0.1", port: int = 0
) -> RunningSimulator:
    """Serve a simulator for ``config`` (a config dict, or a ready FleetState) on a daemon thread."""
    state = config if isinstance(config, FleetState) else FleetState(config)
    server = SimulatorHTTPServer((host, port), state)
    thread = threading.Thread(
        target=server.serve_until_stopped,
        name=f"ecs-simulator-{server.server_address[1]}",
        daemon=True,
    )
    thread.start()
    return RunningSimulator(server, thread)
