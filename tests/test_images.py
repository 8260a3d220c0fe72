from __future__ import annotations

import base64
import hashlib
from pathlib import Path

import pytest

from screenshots.images import InvalidScreenshot, decode_screenshot

FILES = Path(__file__).parent / "files"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


class DecodeScreenshotTestCase:
    def test_it_accepts_jpeg_and_keeps_the_bytes_exactly(self) -> None:
        data = (FILES / "console.jpg").read_bytes()
        image = decode_screenshot(b64(data))
        assert image.format == "jpeg"
        assert image.data == data
        assert image.sha256 == hashlib.sha256(data).hexdigest()
        assert (image.width, image.height) == (64, 48)
        assert image.extension == "jpg"

    def test_it_accepts_png_and_makes_a_jpeg_thumbnail(self) -> None:
        image = decode_screenshot(b64((FILES / "console.png").read_bytes()))
        assert image.format == "png"
        assert image.thumbnail.startswith(b"\xff\xd8\xff")

    def test_thumbnail_fits_the_configured_box(self, settings: object) -> None:
        settings.THUMBNAIL_SIZE = (32, 32)
        from io import BytesIO

        from PIL import Image

        image = decode_screenshot(b64((FILES / "console.jpg").read_bytes()))
        with Image.open(BytesIO(image.thumbnail)) as thumb:
            assert thumb.size == (32, 24)

    @pytest.mark.parametrize(
        ("payload", "code"),
        [
            ("", "EmptyScreenshot"),
            ("not*base64!", "InvalidBase64"),
            ("QUJD\nREVG", "InvalidBase64"),  # strict: no embedded newlines
            ("QUJ", "InvalidBase64"),  # bad padding
            (b64(b"GIF89a not really"), "UnsupportedImage"),
            (b64(b"\x00" * 100), "UnsupportedImage"),
        ],
    )
    def test_it_rejects_bad_payloads(self, payload: str, code: str) -> None:
        with pytest.raises(InvalidScreenshot) as info:
            decode_screenshot(payload)
        assert info.value.code == code

    def test_it_rejects_a_gif(self) -> None:
        with pytest.raises(InvalidScreenshot) as info:
            decode_screenshot(b64((FILES / "console.gif").read_bytes()))
        assert info.value.code == "UnsupportedImage"

    def test_it_rejects_a_truncated_jpeg(self) -> None:
        data = (FILES / "console.jpg").read_bytes()
        with pytest.raises(InvalidScreenshot) as info:
            decode_screenshot(b64(data[: len(data) // 2]))
        assert info.value.code == "CorruptImage"

    def test_it_rejects_a_decompression_bomb_before_decoding_it(self) -> None:
        # 370 bytes that declare 30000x30000 pixels (900 million).
        with pytest.raises(InvalidScreenshot) as info:
            decode_screenshot(b64((FILES / "bomb.png").read_bytes()))
        assert info.value.code == "ImageTooLarge"

    def test_it_rejects_an_image_over_the_configured_pixel_limit(self, settings: object) -> None:
        # 5000x5000 is under Pillow's own limit but over ours (4096x4096 by default).
        with pytest.raises(InvalidScreenshot) as info:
            decode_screenshot(b64((FILES / "oversized.png").read_bytes()))
        assert info.value.code == "ImageTooLarge"
        assert "5000x5000" in info.value.message

    def test_it_rejects_a_huge_string_before_decoding(self, settings: object) -> None:
        settings.SCREENSHOT_MAX_BASE64_CHARS = 1000
        with pytest.raises(InvalidScreenshot) as info:
            decode_screenshot("A" * 1004)
        assert info.value.code == "ScreenshotTooLarge"

    def test_a_png_with_a_jpeg_name_is_judged_by_its_bytes(self) -> None:
        # The API docs promise JPEG, while their own example is a PNG: the bytes decide.
        image = decode_screenshot(b64((FILES / "console.png").read_bytes()))
        assert image.format == "png"
        assert image.extension == "png"

    def test_a_png_with_corrupt_pixel_data_is_rejected(self) -> None:
        data = bytearray((FILES / "console.png").read_bytes())
        data[60:80] = b"\xff" * 20  # inside the IDAT stream
        with pytest.raises(InvalidScreenshot) as info:
            decode_screenshot(b64(bytes(data)))
        assert info.value.code == "CorruptImage"
