"""The ECS simulator: a real HTTP server speaking the ECS RPC dialect, for the demo fleet and the tests."""

from __future__ import annotations

from .fleet import (
    FAULTS,
    IMAGE_FORMATS,
    STATUSES,
    AccessKey,
    CallRecord,
    Counters,
    FleetState,
    Instance,
    Knobs,
    Region,
    SimulatorConfig,
    demo_config,
)
from .server import API_VERSION, RunningSimulator, is_loopback, start_in_thread
from .signing import canonical_query, percent_encode, sign, string_to_sign, verify

__all__ = [
    "API_VERSION",
    "FAULTS",
    "IMAGE_FORMATS",
    "STATUSES",
    "AccessKey",
    "CallRecord",
    "Counters",
    "FleetState",
    "Instance",
    "Knobs",
    "Region",
    "RunningSimulator",
    "SimulatorConfig",
    "canonical_query",
    "demo_config",
    "is_loopback",
    "percent_encode",
    "sign",
    "start_in_thread",
    "string_to_sign",
    "verify",
]
