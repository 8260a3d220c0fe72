"""What the simulated consoles show: boot logs as text and as 800x600 frames, plus the broken payloads
the fault modes serve.

A frame is a pure function of its FrameSpec, so it stays byte-identical for a whole frame period (the
capture client dedupes identical frames) and can be cached.
"""

from __future__ import annotations

import base64
import io
import random
import re
import struct
import zlib
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta, timezone
from functools import cache, lru_cache

from PIL import Image, ImageDraw, ImageFont

WIDTH, HEIGHT = 800, 600
JPEG_QUALITY = 80
BEIJING = timezone(timedelta(hours=8))

_BACKGROUND = (12, 12, 12)
_TEXT = (204, 204, 204)
_BAR = (40, 44, 52)
_GREEN = (78, 201, 90)
_RED = (235, 80, 70)
_FONT_SIZE = 14
_LINE_HEIGHT = 17
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


@dataclass(frozen=True)
class FrameSpec:
    instance_id: str
    name: str
    os_name: str
    image_format: str
    frame_number: int
    clock: float  # wall time the on-screen clock shows


@dataclass(frozen=True)
class _Distro:
    issue: str
    kernel: str


def _distro(os_name: str) -> _Distro:
    lowered = os_name.lower()
    if "ubuntu" in lowered:
        return _Distro("Ubuntu 22.04.4 LTS", "5.15.0-105-generic")
    if "centos" in lowered:
        return _Distro("CentOS Linux 7 (Core)", "3.10.0-1160.119.1.el7.x86_64")
    if "debian" in lowered:
        return _Distro("Debian GNU/Linux 12", "6.1.0-21-amd64")
    return _Distro("Alibaba Cloud Linux 3 (Soaring Falcon)", "5.10.134-16.3.al8.x86_64")


_KERNEL_LINES = [
    "Linux version {kernel} (mockbuild@build) (gcc 10.2.1) #1 SMP",
    "Command line: BOOT_IMAGE=/boot/vmlinuz-{kernel} root=UUID={uuid} ro console=tty0 console=ttyS0,115200n8",
    "BIOS-provided physical RAM map:",
    "DMI: Alibaba Cloud Alibaba Cloud ECS, BIOS 449e491 04/01/2014",
    "Hypervisor detected: KVM",
    "kvm-clock: Using msrs 4b564d01 and 4b564d00",
    "ACPI: Early table checksum verification disabled",
    "smpboot: CPU0: Intel(R) Xeon(R) Platinum 8369B CPU @ 2.70GHz (family: 0x6, model: 0x6a)",
    "virtio_net virtio0 eth0: renamed from eth0",
    "EXT4-fs (vda3): mounted filesystem with ordered data mode. Opts: (null)",
    "systemd[1]: Detected virtualization kvm.",
    "systemd[1]: Set hostname to <{name}>.",
]
_UNITS = [
    "Started Journal Service.",
    "Reached target Local File Systems.",
    "Started udev Kernel Device Manager.",
    "Started Network Manager.",
    "Reached target Network.",
    "Started Chrony, an NTP client/server.",
    "Started OpenSSH server daemon.",
    "Started Alibaba Cloud Assistant.",
    "Started Command Scheduler.",
    "Reached target Multi-User System.",
]
_SHUTDOWN_UNITS = [
    "Stopped OpenSSH server daemon.",
    "Stopped Alibaba Cloud Assistant.",
    "Stopped target Network.",
    "Unmounted /boot.",
    "Reached target Power-Off.",
]
_RUNTIME_LINES = [
    "cloud-init[{pid}]: Cloud-init v. 23.2 finished. Datasource DataSourceAliYun.",
    "aliyun-service[{pid}]: heartbeat ok",
    "systemd[1]: Starting dnf makecache...",
    "systemd[1]: Started Session {pid} of user root.",
    "kernel: TCP: request_sock_TCP: Possible SYN flooding on port 80. Sending cookies.",
    "CRON[{pid}]: (root) CMD (/usr/local/bin/backup.sh)",
    "systemd-logind[{pid}]: New session {pid} of user admin.",
    "chronyd[{pid}]: Selected source 100.100.61.88",
]


def boot_log(instance_id: str, name: str, os_name: str, *, ansi: bool, stopped: bool = False) -> list[str]:
    """The console log of the last boot (and, for a stopped instance, the shutdown that followed)."""
    rng = random.Random(f"boot:{instance_id}")
    distro = _distro(os_name)
    uuid = f"{rng.getrandbits(32):08x}-{rng.getrandbits(16):04x}-{rng.getrandbits(16):04x}"
    lines = []
    seconds = 0.0
    for template in _KERNEL_LINES:
        lines.append(f"[{seconds:12.6f}] " + template.format(kernel=distro.kernel, uuid=uuid, name=name))
        seconds += rng.uniform(0.001, 0.4)

    def ok(text: str) -> str:
        # systemd's own colouring: green OK, then the reset sequence.
        return f"[\x1b[0;32m  OK  \x1b[0m] {text}" if ansi else f"[  OK  ] {text}"

    lines.extend(ok(unit) for unit in _UNITS)
    lines += ["", f"{distro.issue}", f"Kernel {distro.kernel} on an x86_64", ""]
    if stopped:
        lines.append(f"{name} login: ")
        lines.extend(ok(unit) for unit in _SHUTDOWN_UNITS)
        lines.append(f"[{seconds + rng.uniform(3000, 90000):12.6f}] reboot: Power down")
    else:
        lines.append(f"{name} login: ")
    return lines


def strip_ansi(text: str) -> str:
    return _ANSI.sub("", text)


@cache
def _font() -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    try:
        return ImageFont.truetype("DejaVuSansMono.ttf", _FONT_SIZE)
    except OSError:
        # Pillow's bundled font is proportional, but it is always there.
        return ImageFont.load_default(size=_FONT_SIZE)


def _screen_lines(spec: FrameSpec) -> list[str]:
    lines = boot_log(spec.instance_id, spec.name, spec.os_name, ansi=False)
    # Messages that land on the console after the prompt, different for every frame, so consecutive
    # frames differ in more than the clock.
    rng = random.Random(f"frame:{spec.instance_id}:{spec.frame_number}")
    uptime = 120.0 + spec.frame_number % 100_000
    for _ in range(rng.randint(1, 4)):
        message = rng.choice(_RUNTIME_LINES).format(pid=rng.randint(300, 65000))
        lines.append(f"[{uptime:12.6f}] {message}")
        uptime += rng.uniform(0.1, 5.0)
    lines.append(f"{spec.name} login: _")
    return lines


def _draw(spec: FrameSpec) -> Image.Image:
    image = Image.new("RGB", (WIDTH, HEIGHT), _BACKGROUND)
    draw = ImageDraw.Draw(image)
    font = _font()
    clock = datetime.fromtimestamp(spec.clock, BEIJING).strftime("%H:%M:%S")
    draw.rectangle((0, 0, WIDTH, _LINE_HEIGHT + 6), fill=_BAR)
    draw.text((8, 3), f"{spec.name}  ({spec.instance_id})  tty1", font=font, fill=_TEXT)
    draw.text((WIDTH - 8, 3), clock, font=font, fill=_TEXT, anchor="ra")
    visible = (HEIGHT - _LINE_HEIGHT - 14) // _LINE_HEIGHT
    y = _LINE_HEIGHT + 10
    for line in _screen_lines(spec)[-visible:]:
        if line.startswith("[  OK  ]"):
            draw.text((8, y), "[", font=font, fill=_TEXT)
            x = 8 + draw.textlength("[", font=font)
            draw.text((x, y), "  OK  ", font=font, fill=_GREEN)
            x += draw.textlength("  OK  ", font=font)
            draw.text((x, y), line[7:], font=font, fill=_TEXT)
        else:
            draw.text((8, y), line, font=font, fill=_RED if "FAILED" in line else _TEXT)
        y += _LINE_HEIGHT
    return image


@lru_cache(maxsize=64)
def render_frame(spec: FrameSpec) -> bytes:
    """The encoded frame: JPEG (quality 80) or PNG, as the instance's image_format says."""
    buffer = io.BytesIO()
    if spec.image_format == "png":
        _draw(spec).save(buffer, "PNG")
    else:
        _draw(spec).save(buffer, "JPEG", quality=JPEG_QUALITY)
    return buffer.getvalue()


@lru_cache(maxsize=64)
def frame_base64(spec: FrameSpec) -> str:
    return base64.b64encode(render_frame(spec)).decode("ascii")


# Fault payloads ----------------------------------------------------------------------------------


def bad_base64(spec: FrameSpec) -> str:
    """A real frame's base64 with non-alphabet characters spliced in and one character dropped, so it
    fails a strict decoder and a lenient one that skips junk too (the length is off by one)."""
    good = frame_base64(spec)
    middle = len(good) // 2
    return good[:middle] + "*!#$%" + good[middle + 1 :]


def truncated_jpeg(spec: FrameSpec) -> bytes:
    data = render_frame(replace(spec, image_format="jpeg"))
    return data[: len(data) // 2]


@cache
def gif_image() -> bytes:
    image = Image.new("P", (160, 120), 0)
    ImageDraw.Draw(image).text((10, 50), "GIF console", fill=1)
    buffer = io.BytesIO()
    image.save(buffer, "GIF")
    return buffer.getvalue()


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


@cache
def decompression_bomb_png(side: int = 30_000) -> bytes:
    """A valid ~110 KB PNG that declares side x side pixels (900 megapixels at the default)."""
    row = side // 8 + 1  # 1 bit per pixel, plus the filter byte
    compressor = zlib.compressobj(9)
    remaining = row * side
    chunk = bytes(1 << 20)
    parts = []
    while remaining:
        size = min(remaining, len(chunk))
        parts.append(compressor.compress(chunk[:size]))
        remaining -= size
    parts.append(compressor.flush())
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)  # 1-bit greyscale
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", b"".join(parts))
        + _png_chunk(b"IEND", b"")
    )


@cache
def huge_base64(size: int = 21_000_000) -> str:
    """Valid base64 longer than 20 MB: a real JPEG followed by zero padding. Pillow would still open
    it, so only a size check before decoding protects the client."""
    head = render_frame(FrameSpec("i-huge", "huge", "", "jpeg", 0, 0.0))
    raw_size = size * 3 // 4
    return base64.b64encode(head + bytes(raw_size - len(head))).decode("ascii")


def console_time(wall: float) -> str:
    """GetInstanceConsoleOutput's LastUpdateTime: yyyy-MM-dd HH:mm:ss in UTC+8, without a zone."""
    return datetime.fromtimestamp(wall, UTC).astimezone(BEIJING).strftime("%Y-%m-%d %H:%M:%S")
