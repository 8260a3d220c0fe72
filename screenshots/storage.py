"""Image storage: content-addressed names, written atomically."""

from __future__ import annotations

import contextlib
import os
import tempfile
from typing import Any

from django.core.files.storage import FileSystemStorage

TEMP_PREFIX = ".tmp-"


class AtomicFileSystemStorage(FileSystemStorage):
    """Writes to a temporary file beside the target and renames it into place.

    Capture files are named by their hash, so "the file exists" must mean "the whole file exists":
    a worker killed mid-write leaves only a ``.tmp-*`` file, which the prune task sweeps.
    Saving an existing name overwrites it (same name, same bytes).
    """

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("allow_overwrite", True)
        super().__init__(**kwargs)

    def _save(self, name: str, content: Any) -> str:
        full_path = self.path(name)
        directory = os.path.dirname(full_path)
        os.makedirs(directory, exist_ok=True)
        fd, temp_path = tempfile.mkstemp(dir=directory, prefix=TEMP_PREFIX)
        try:
            with os.fdopen(fd, "wb") as f:
                for chunk in content.chunks():
                    f.write(chunk)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(temp_path, self.file_permissions_mode or 0o644)
            os.replace(temp_path, full_path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temp_path)
            raise
        return str(name).replace("\\", "/")
