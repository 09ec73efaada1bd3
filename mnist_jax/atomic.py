"""Writing files so that a crash never leaves one half-written: temporary file, then rename."""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path
from typing import Any


def write_bytes(path: str | os.PathLike, payload: bytes) -> None:
    """Write to a temporary file beside `path`, then rename it over `path` (atomic on POSIX).

    The temporary file is created with mode 0666 less the umask, as `open` would make `path`.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        with open(tmp, "xb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())  # the bytes are on disk before the name points at them
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_json(path: str | os.PathLike, obj: Any) -> None:
    write_bytes(path, (json.dumps(obj, indent=2) + "\n").encode())
