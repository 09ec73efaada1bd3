"""The data layer's one error type, and the helpers that keep every failure on one line."""

from __future__ import annotations

from pathlib import Path


class DataError(ValueError):
    """Missing or malformed data; the one-line message names the file and the fix."""


def one_line(error: BaseException | str, limit: int | None = 300) -> str:
    """Foreign error text (npm, tfds, HTTP, OS) squeezed onto one short line."""
    text = " ".join(line.strip() for line in str(error).splitlines() if line.strip())
    text = text or type(error).__name__
    return text if limit is None or len(text) <= limit else text[: limit - 3] + "..."


def existing_dir(path: str, name: str) -> Path:
    """`path` as a folder, or a DataError naming the dataset `name` it came from."""
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise DataError(f"{name}: {folder} is not a folder")
    return folder
