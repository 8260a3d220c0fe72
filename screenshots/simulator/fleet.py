"""The simulated account: its configuration (a JSON-able dict) and the live, thread-safe state."""

from __future__ import annotations

import copy
import random
import string
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any, NamedTuple

STATUSES = ("Running", "Stopped", "Starting", "Stopping", "Pending")
IMAGE_FORMATS = ("jpeg", "png")
FAULTS = (
    "bad_base64",
    "not_image",
    "huge",
    "bomb",
    "truncated_jpeg",
    "gif",
    "bad_json",
    "empty_screenshot",
    "5xx",
    "5xx_html",
    "timeout",
    "reset",
    "signature_no_colon",
    "forbidden",
)
# The real service accepts a Timestamp this far from its clock and so must remember nonces this long.
NONCE_WINDOW = 15 * 60.0
SCREENSHOT_LOG_LIMIT = 10_000


@dataclass
class AccessKey:
    id: str
    secret: str = field(repr=False)
    security_token: str | None = field(default=None, repr=False)


@dataclass
class Region:
    region_id: str
    local_name: str

    @property
    def endpoint(self) -> str:
        return f"ecs.{self.region_id}.aliyuncs.com"


@dataclass
class Instance:
    instance_id: str
    region_id: str
    name: str
    status: str = "Running"
    instance_type: str = "ecs.g7.large"
    supported: bool = True
    image_format: str = "jpeg"
    os_name: str = "Alibaba Cloud Linux 3"
    tags: dict[str, str] = field(default_factory=dict)
    frame_period: float = 15.0
    fault: str | None = None
    zone_id: str = ""
    # Live state, not configuration: bumps push the frame number ahead of the clock, and the status
    # change time is what GetInstanceConsoleOutput reports as LastUpdateTime.
    frame_bumps: int = 0
    status_changed_at: float = 0.0

    def frame_number(self, now: float) -> int:
        return int(now // self.frame_period) + self.frame_bumps

    def frame_clock(self, now: float) -> float:
        """Wall time at which the current frame began: what its clock shows."""
        return (now // self.frame_period) * self.frame_period


@dataclass
class Knobs:
    latency_ms: float = 0.0
    error_5xx_rate: float = 0.0
    throttle_rate: float = 0.0
    malformed_rate: float = 0.0
    min_screenshot_interval: float = 10.0
    throttle_http_status: int = 400


class CallRecord(NamedTuple):
    monotonic: float
    wall: float
    action: str
    instance_id: str
    code: str


# Fields a config or a control-API patch may set on an instance; the rest is derived or live state.
_INSTANCE_CONFIG_FIELDS = (
    "instance_id",
    "region_id",
    "name",
    "status",
    "instance_type",
    "supported",
    "image_format",
    "os_name",
    "tags",
    "frame_period",
    "fault",
    "zone_id",
)
_INSTANCE_PATCH_FIELDS = frozenset(_INSTANCE_CONFIG_FIELDS) - {"instance_id", "region_id"} | {"bump_frame"}


def _require_str(data: Mapping[str, Any], key: str, *, allow_empty: bool = False) -> str:
    value = data.get(key)
    if not isinstance(value, str) or (not value and not allow_empty):
        raise ValueError(f"{key} must be a non-empty string")
    return value


def _validated_instance_fields(data: Mapping[str, Any], allowed: frozenset[str] | tuple[str, ...]) -> dict:
    """Check types and values of instance fields; raise ValueError naming the first bad one."""
    unknown = set(data) - set(allowed)
    if unknown:
        raise ValueError(f"unknown instance field(s): {', '.join(sorted(unknown))}")
    out: dict[str, Any] = {}
    for key, value in data.items():
        if key in ("instance_id", "region_id", "name", "instance_type", "os_name"):
            out[key] = _require_str(data, key)
        elif key == "zone_id":
            out[key] = _require_str(data, key, allow_empty=True)
        elif key == "status":
            if value not in STATUSES:
                raise ValueError(f"status must be one of {', '.join(STATUSES)}")
            out[key] = value
        elif key == "image_format":
            if value not in IMAGE_FORMATS:
                raise ValueError(f"image_format must be one of {', '.join(IMAGE_FORMATS)}")
            out[key] = value
        elif key == "fault":
            if value is not None and value not in FAULTS:
                raise ValueError(f"fault must be null or one of {', '.join(FAULTS)}")
            out[key] = value
        elif key in ("supported", "bump_frame"):
            if not isinstance(value, bool):
                raise ValueError(f"{key} must be true or false")
            out[key] = value
        elif key == "frame_period":
            if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
                raise ValueError("frame_period must be a positive number of seconds")
            out[key] = float(value)
        elif key == "tags":
            if not isinstance(value, dict) or not all(
                isinstance(k, str) and k and isinstance(v, str) for k, v in value.items()
            ):
                raise ValueError("tags must be an object of string keys to string values")
            out[key] = dict(value)
    return out


def instance_from_dict(data: Mapping[str, Any], *, now: float) -> Instance:
    if not isinstance(data, Mapping):
        raise ValueError("an instance must be an object")
    values = _validated_instance_fields(data, _INSTANCE_CONFIG_FIELDS)
    for key in ("instance_id", "region_id"):
        if key not in values:
            raise ValueError(f"instance needs {key}")
    values.setdefault("name", values["instance_id"])
    instance = Instance(**values)
    if not instance.zone_id:
        # Stable per instance, so DescribeInstances answers the same across restarts.
        instance.zone_id = f"{instance.region_id}-{'hijk'[sum(instance.instance_id.encode()) % 4]}"
    instance.status_changed_at = now
    return instance


def knobs_patch(knobs: Knobs, patch: Mapping[str, Any]) -> Knobs:
    """A new Knobs with patch applied; ValueError on an unknown name or a value out of range."""
    if not isinstance(patch, Mapping):
        raise ValueError("knobs must be an object")
    names = {f.name for f in fields(Knobs)}
    unknown = set(patch) - names
    if unknown:
        raise ValueError(f"unknown knob(s): {', '.join(sorted(unknown))}")
    values = asdict(knobs)
    for key, value in patch.items():
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"{key} must be a number")
        if key == "throttle_http_status":
            if int(value) != value or not 400 <= value <= 599:
                raise ValueError("throttle_http_status must be an HTTP error status (400-599)")
            values[key] = int(value)
        elif key.endswith("_rate"):
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{key} must be between 0 and 1")
            values[key] = float(value)
        else:
            if value < 0:
                raise ValueError(f"{key} must not be negative")
            values[key] = float(value)
    return Knobs(**values)


@dataclass
class SimulatorConfig:
    seed: int = 1
    access_keys: list[AccessKey] = field(default_factory=list)
    regions: list[Region] = field(default_factory=list)
    instances: list[Instance] = field(default_factory=list)
    knobs: Knobs = field(default_factory=Knobs)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, now: float | None = None) -> SimulatorConfig:
        if not isinstance(data, Mapping):
            raise ValueError("the config must be a JSON object")
        now = time.time() if now is None else now
        unknown = set(data) - {"seed", "access_keys", "regions", "instances", "knobs"}
        if unknown:
            raise ValueError(f"unknown config key(s): {', '.join(sorted(unknown))}")
        seed = data.get("seed", 1)
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ValueError("seed must be an integer")
        access_keys = []
        for item in data.get("access_keys", []):
            if not isinstance(item, Mapping):
                raise ValueError("an access key must be an object")
            token = item.get("security_token")
            if token is not None and (not isinstance(token, str) or not token):
                raise ValueError("security_token must be null or a non-empty string")
            access_keys.append(AccessKey(_require_str(item, "id"), _require_str(item, "secret"), token))
        regions = []
        for item in data.get("regions", []):
            if not isinstance(item, Mapping):
                raise ValueError("a region must be an object")
            regions.append(Region(_require_str(item, "RegionId"), _require_str(item, "LocalName")))
        instances = [instance_from_dict(item, now=now) for item in data.get("instances", [])]
        ids = [i.instance_id for i in instances]
        if len(ids) != len(set(ids)):
            raise ValueError("instance ids must be unique")
        known_regions = {r.region_id for r in regions}
        for instance in instances:
            if instance.region_id not in known_regions:
                raise ValueError(
                    f"instance {instance.instance_id} is in an unlisted region {instance.region_id}"
                )
        return cls(seed, access_keys, regions, instances, knobs_patch(Knobs(), data.get("knobs", {})))

    def to_dict(self) -> dict[str, Any]:
        return {
            "seed": self.seed,
            "access_keys": [asdict(k) for k in self.access_keys],
            "regions": [{"RegionId": r.region_id, "LocalName": r.local_name} for r in self.regions],
            "instances": [
                {k: copy.deepcopy(getattr(i, k)) for k in _INSTANCE_CONFIG_FIELDS} for i in self.instances
            ],
            "knobs": asdict(self.knobs),
        }


class Counters:
    """What the simulator was asked, for tests and the demo: call counts and the screenshot call log."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._actions: Counter[str] = Counter()
        self._instance_actions: Counter[tuple[str, str]] = Counter()
        self._access_keys: Counter[str] = Counter()
        self._outcomes: Counter[str] = Counter()
        self._screenshot_calls: deque[CallRecord] = deque(maxlen=SCREENSHOT_LOG_LIMIT)

    def record(
        self, *, action: str, instance_id: str, access_key_id: str, code: str, monotonic: float, wall: float
    ) -> None:
        with self._lock:
            if action:
                self._actions[action] += 1
                if instance_id:
                    self._instance_actions[(action, instance_id)] += 1
            if access_key_id:
                self._access_keys[access_key_id] += 1
            self._outcomes[code] += 1
            if action == "GetInstanceScreenshot":
                self._screenshot_calls.append(CallRecord(monotonic, wall, action, instance_id, code))

    def action_count(self, action: str) -> int:
        with self._lock:
            return self._actions[action]

    def instance_action_count(self, action: str, instance_id: str) -> int:
        with self._lock:
            return self._instance_actions[(action, instance_id)]

    def access_key_count(self, access_key_id: str) -> int:
        with self._lock:
            return self._access_keys[access_key_id]

    def outcome_count(self, code: str) -> int:
        with self._lock:
            return self._outcomes[code]

    def screenshot_calls(self, instance_id: str | None = None) -> list[CallRecord]:
        with self._lock:
            return [c for c in self._screenshot_calls if instance_id is None or c.instance_id == instance_id]

    def clear(self) -> None:
        with self._lock:
            self._actions.clear()
            self._instance_actions.clear()
            self._access_keys.clear()
            self._outcomes.clear()
            self._screenshot_calls.clear()

    def as_dict(self) -> dict[str, Any]:
        with self._lock:
            per_instance: dict[str, dict[str, int]] = {}
            for (action, instance_id), count in sorted(self._instance_actions.items()):
                per_instance.setdefault(action, {})[instance_id] = count
            return {
                "actions": dict(sorted(self._actions.items())),
                "instance_actions": per_instance,
                "access_keys": dict(sorted(self._access_keys.items())),
                "outcomes": dict(sorted(self._outcomes.items())),
                "screenshot_calls": [c._asdict() for c in self._screenshot_calls],
            }


class FleetState:
    """The simulator's live world. Every method is safe to call from any request thread.

    ``monotonic`` and ``wall`` are the clocks; tests may replace them (the 10 s rule reads
    ``monotonic``, timestamps, frames and console times read ``wall``).
    """

    def __init__(
        self,
        config: SimulatorConfig | Mapping[str, Any],
        *,
        monotonic: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.monotonic = monotonic
        self.wall = wall
        if not isinstance(config, SimulatorConfig):
            config = SimulatorConfig.from_dict(config, now=wall())
        self._lock = threading.Lock()
        self.seed = config.seed
        self._rng = random.Random(config.seed)
        self._access_keys = {k.id: k for k in config.access_keys}
        self._regions = list(config.regions)
        self._instances = {i.instance_id: i for i in config.instances}
        self._knobs = config.knobs
        self.counters = Counters()
        self._nonces: dict[tuple[str, str], float] = {}
        self._nonce_expiry: deque[tuple[float, tuple[str, str]]] = deque()
        self._last_screenshot: dict[str, float] = {}

    # Reading -----------------------------------------------------------------------------------------

    def access_key(self, access_key_id: str) -> AccessKey | None:
        with self._lock:
            return self._access_keys.get(access_key_id)

    def regions(self) -> list[Region]:
        with self._lock:
            return list(self._regions)

    def instance(self, instance_id: str) -> Instance | None:
        """A copy: the caller may read it at leisure while patches go on."""
        with self._lock:
            found = self._instances.get(instance_id)
            return copy.deepcopy(found) if found else None

    def instances(self, region_id: str | None = None) -> list[Instance]:
        with self._lock:
            return [
                copy.deepcopy(i)
                for i in self._instances.values()
                if region_id is None or i.region_id == region_id
            ]

    @property
    def knobs(self) -> Knobs:
        with self._lock:
            return copy.copy(self._knobs)

    # Changing ----------------------------------------------------------------------------------------

    def patch_instance(self, instance_id: str, patch: Mapping[str, Any]) -> Instance:
        """Apply a control-API patch. KeyError for an unknown instance, ValueError for a bad patch."""
        if not isinstance(patch, Mapping):
            raise ValueError("the patch must be an object")
        values = _validated_instance_fields(patch, _INSTANCE_PATCH_FIELDS)
        with self._lock:
            instance = self._instances[instance_id]
            if values.pop("bump_frame", False):
                instance.frame_bumps += 1
            if "status" in values and values["status"] != instance.status:
                instance.status_changed_at = self.wall()
            for key, value in values.items():
                setattr(instance, key, value)
            return copy.deepcopy(instance)

    def add_instance(self, data: Mapping[str, Any]) -> Instance:
        instance = instance_from_dict(data, now=self.wall())
        with self._lock:
            if instance.instance_id in self._instances:
                raise ValueError(f"instance {instance.instance_id} exists already")
            if instance.region_id not in {r.region_id for r in self._regions}:
                raise ValueError(f"unknown region {instance.region_id}")
            self._instances[instance.instance_id] = instance
            return copy.deepcopy(instance)

    def patch_knobs(self, patch: Mapping[str, Any]) -> Knobs:
        with self._lock:
            self._knobs = knobs_patch(self._knobs, patch)
            return copy.copy(self._knobs)

    def reset(self) -> None:
        """Forget counters, used nonces and the last screenshot call per instance."""
        with self._lock:
            self._nonces.clear()
            self._nonce_expiry.clear()
            self._last_screenshot.clear()
        self.counters.clear()

    # Rules -------------------------------------------------------------------------------------------

    def use_nonce(self, access_key_id: str, nonce: str) -> bool:
        """True the first time a nonce is seen within the window, False on reuse."""
        now = self.monotonic()
        key = (access_key_id, nonce)
        with self._lock:
            while self._nonce_expiry and self._nonce_expiry[0][0] <= now:
                _, old = self._nonce_expiry.popleft()
                if self._nonces.get(old, now + 1) <= now:
                    del self._nonces[old]
            if self._nonces.get(key, 0.0) > now:
                return False
            self._nonces[key] = now + NONCE_WINDOW
            self._nonce_expiry.append((now + NONCE_WINDOW, key))
            return True

    def claim_screenshot_slot(self, instance_id: str, now: float) -> bool:
        """The 10 s rule: False if the previous served call on this instance was too recent.

        Refused calls do not move the window, so a client that retries too early is refused only until
        the interval since its last served call has passed.
        """
        with self._lock:
            last = self._last_screenshot.get(instance_id)
            if last is not None and now - last < self._knobs.min_screenshot_interval:
                return False
            self._last_screenshot[instance_id] = now
            return True

    def chance(self, rate: float) -> bool:
        if rate <= 0.0:
            return False
        with self._lock:
            return self._rng.random() < rate

    def random_bytes(self, size: int) -> bytes:
        with self._lock:
            return self._rng.randbytes(size)

    # Reporting ---------------------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """Everything but secrets, as JSON-able data (GET /_sim/state)."""
        now = self.wall()
        with self._lock:
            instances = []
            for i in self._instances.values():
                item = {k: copy.deepcopy(getattr(i, k)) for k in _INSTANCE_CONFIG_FIELDS}
                item["frame"] = i.frame_number(now)
                item["frame_bumps"] = i.frame_bumps
                instances.append(item)
            data = {
                "seed": self.seed,
                "access_key_count": len(self._access_keys),
                "regions": [{"RegionId": r.region_id, "LocalName": r.local_name} for r in self._regions],
                "instances": instances,
                "knobs": asdict(self._knobs),
            }
        data["counters"] = self.counters.as_dict()
        return data


# Demo fleet ------------------------------------------------------------------------------------------

# Real ECS ids start with a region-specific prefix; mimicking it makes the demo look right.
_DEMO_REGIONS = [
    ("cn-hangzhou", "China (Hangzhou)", "bp1"),
    ("cn-shanghai", "China (Shanghai)", "uf6"),
    ("cn-beijing", "China (Beijing)", "2ze"),
    ("ap-southeast-1", "Singapore", "t4n"),
]
_DEMO_ROLES = ["web", "api", "worker", "db", "cache", "bastion", "batch", "gateway"]
_DEMO_OS = [
    "Alibaba Cloud Linux 3.2104 LTS 64 bit",
    "Ubuntu 22.04 64 bit",
    "CentOS 7.9 64 bit",
    "Debian 12.5 64 bit",
]
_DEMO_TYPES = ["ecs.g7.large", "ecs.c7.xlarge", "ecs.r7.large", "ecs.g8i.xlarge", "ecs.u1-c1m2.large"]
_ID_ALPHABET = string.ascii_lowercase + string.digits


def make_instance_id(rng: random.Random, prefix: str = "bp1") -> str:
    return "i-" + prefix + "".join(rng.choice(_ID_ALPHABET) for _ in range(20 - len(prefix)))


def demo_config(access_key_id: str, access_key_secret: str, count: int = 12, seed: int = 1) -> dict[str, Any]:
    """A varied, deterministic fleet: mostly Running JPEG consoles, two PNG ones, one Stopped instance
    and one phased-out type, over three regions (a fourth region is listed but empty)."""
    rng = random.Random(seed)
    used_regions = _DEMO_REGIONS[:3]
    kinds = ["jpeg"] * count
    # Fixed slots (shuffled per seed) for the special cases, as long as the fleet is big enough.
    special = ["png", "png", "stopped", "phased_out"][: max(0, count - 1)]
    for slot, kind in zip(rng.sample(range(count), len(special)), special, strict=True):
        kinds[slot] = kind
    instances = []
    role_numbers: Counter[str] = Counter()
    for index, kind in enumerate(kinds):
        region_id, _, prefix = used_regions[index % len(used_regions)]
        role = _DEMO_ROLES[index % len(_DEMO_ROLES)]
        role_numbers[role] += 1
        instance: dict[str, Any] = {
            "instance_id": make_instance_id(rng, prefix),
            "region_id": region_id,
            "name": f"{role}-{role_numbers[role]:02d}",
            "status": "Stopped" if kind == "stopped" else "Running",
            "instance_type": "ecs.t1.small" if kind == "phased_out" else rng.choice(_DEMO_TYPES),
            "supported": kind != "phased_out",
            "image_format": "png" if kind == "png" else "jpeg",
            "os_name": rng.choice(_DEMO_OS),
            "tags": {
                "env": rng.choice(["prod", "prod", "staging", "dev"]),
                "role": role,
                "team": rng.choice(["core", "payments", "data"]),
            },
            "frame_period": rng.choice([10.0, 15.0, 15.0, 20.0, 30.0]),
            "fault": None,
        }
        instances.append(instance)
    return {
        "seed": seed,
        "access_keys": [{"id": access_key_id, "secret": access_key_secret, "security_token": None}],
        "regions": [{"RegionId": r, "LocalName": name} for r, name, _ in _DEMO_REGIONS],
        "instances": instances,
        "knobs": asdict(Knobs()),
    }
