"""RPC signature version 1.0 (HMAC-SHA1), written from Alibaba's description rather than from the SDK.

This is the simulator's verifier: if it shared code with the SDK, a bug in one would hide in the other.
The worked example in Alibaba's docs (DescribeRegions signed with ``testsecret``) is the reference.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Mapping
from urllib.parse import quote


def percent_encode(value: str) -> str:
    # RFC 3986 unreserved characters stay, everything else is %XX of its UTF-8 bytes (space is %20,
    # "*" is %2A, "~" stays), which is exactly Alibaba's rule.
    return quote(value, safe="-_.~")


def canonical_query(params: Mapping[str, str]) -> str:
    """Every parameter but Signature, empty values included, sorted by name."""
    pairs = sorted((name, value) for name, value in params.items() if name != "Signature")
    return "&".join(f"{percent_encode(name)}={percent_encode(value)}" for name, value in pairs)


def string_to_sign(method: str, params: Mapping[str, str]) -> str:
    return f"{method.upper()}&{percent_encode('/')}&{percent_encode(canonical_query(params))}"


def sign(secret: str, method: str, params: Mapping[str, str]) -> str:
    digest = hmac.new((secret + "&").encode(), string_to_sign(method, params).encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode("ascii")


def verify(secret: str, method: str, params: Mapping[str, str], signature: str) -> bool:
    return hmac.compare_digest(sign(secret, method, params).encode(), signature.encode())
