"""Turning an API's base64 screenshot into checked image bytes and a thumbnail.

Nothing is written here: the caller stores only what ``decode_screenshot`` fully accepted.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import warnings
from dataclasses import dataclass, field

from django.conf import settings
from PIL import Image, ImageFile

# A truncated image must fail, not be padded with grey.
ImageFile.LOAD_TRUNCATED_IMAGES = False

_MAGIC = {b"\xff\xd8\xff": "jpeg", b"\x89PNG\r\n\x1a\n": "png"}
_PIL_FORMAT = {"jpeg": "JPEG", "png": "PNG"}


class InvalidScreenshot(ValueError):
    """The reply's image is unusable; ``code`` names why (shown on the tile as the error code)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class DecodedImage:
    data: bytes = field(repr=False)
    format: str
    width: int
    height: int
    sha256: str
    thumbnail: bytes = field(repr=False)

    @property
    def extension(self) -> str:
        return "jpg" if self.format == "jpeg" else "png"


def sniff_format(data: bytes) -> str | None:
    for magic, name in _MAGIC.items():
        if data.startswith(magic):
            return name
    return None


def decode_screenshot(encoded: str) -> DecodedImage:
    if not isinstance(encoded, str) or not encoded:
        raise InvalidScreenshot("EmptyScreenshot", "The reply's Screenshot is empty.")
    if len(encoded) > settings.SCREENSHOT_MAX_BASE64_CHARS:
        # Checked before decoding so a huge reply costs no more memory than it already has.
        raise InvalidScreenshot(
            "ScreenshotTooLarge",
            f"The screenshot is {len(encoded):,} base64 characters; the limit is "
            f"{settings.SCREENSHOT_MAX_BASE64_CHARS:,}.",
        )
    try:
        data = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidScreenshot("InvalidBase64", f"The screenshot is not valid base64 ({exc}).") from None
    image_format = sniff_format(data)
    if image_format is None:
        raise InvalidScreenshot("UnsupportedImage", "The screenshot is neither a JPEG nor a PNG image.")
    width, height, thumbnail = _load_and_thumbnail(data, image_format)
    return DecodedImage(data, image_format, width, height, hashlib.sha256(data).hexdigest(), thumbnail)


def _load_and_thumbnail(data: bytes, image_format: str) -> tuple[int, int, bytes]:
    try:
        with warnings.catch_warnings():
            # Pillow only warns between MAX_IMAGE_PIXELS and twice that; a bomb is an error at any size.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data), formats=[_PIL_FORMAT[image_format]]) as image:
                width, height = image.size
                if width * height > settings.SCREENSHOT_MAX_PIXELS:
                    raise InvalidScreenshot(
                        "ImageTooLarge",
                        f"The screenshot declares {width}x{height} pixels; the limit is "
                        f"{settings.SCREENSHOT_MAX_PIXELS:,} pixels.",
                    )
                # Decode every pixel now: a truncated or corrupt image fails here, before anything is stored.
                image.load()
                thumbnail = _thumbnail(image)
    except InvalidScreenshot:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise InvalidScreenshot("ImageTooLarge", f"The screenshot is a decompression bomb ({exc}).") from None
    except (OSError, SyntaxError, ValueError, Image.UnidentifiedImageError) as exc:
        message = f"The {image_format.upper()} image cannot be decoded ({exc})."
        raise InvalidScreenshot("CorruptImage", message) from None
    return width, height, thumbnail


def _thumbnail(image: Image.Image) -> bytes:
    small = image.convert("RGB")
    small.thumbnail(settings.THUMBNAIL_SIZE, Image.Resampling.BILINEAR)
    out = io.BytesIO()
    small.save(out, "JPEG", quality=75, optimize=True)
    return out.getvalue()
