"""Writing run-directory files so that a crash never leaves one half-written."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any


_UMASK = os.umask(0)
os.umask(_UMASK)


def write_bytes(path: Path, payload: bytes) -> None:
    """Write to a temporary file beside `path`, then rename it over `path` (atomic on POSIX)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the file the usual mode
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: Path, obj: Any) -> None:
    write_bytes(path, (json.dumps(obj, indent=2) + "\n").encode())


def read_jsonl(path: Path) -> list[dict]:
    path = Path(path)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def append_jsonl(path: Path, record: dict) -> None:
    """Rewrite the file with one more line, so a crash leaves the old or the new file, never half."""
    write_bytes(path, "".join(json.dumps(r) + "\n" for r in [*read_jsonl(path), record]).encode())


def truncate_jsonl(path: Path, keep_epochs_upto: int) -> None:
    """Drop epoch records past the checkpoint a run resumes from (they will be written again)."""
    records = read_jsonl(path)
    kept = [r for r in records if r["epoch"] <= keep_epochs_upto]
    if len(kept) != len(records):
        write_bytes(path, "".join(json.dumps(r) + "\n" for r in kept).encode())
