"""One file over HTTP(S) with the standard library: a timeout, a length check, a progress bar.

The caller checks the bytes (a digest); this module only makes sure that a network failure or a
body cut short is one DataError naming the URL, and that nothing waits forever.
"""

from __future__ import annotations

import http.client
import sys
import urllib.error
import urllib.parse
import urllib.request

from mnist_jax.data.errors import DataError, one_line

# Seconds to wait for a connection or for the next chunk of the body (a stalled mirror costs this
# much, once); read at call time so tests can shorten it.
TIMEOUT_S = 30.0
_CHUNK = 1 << 16
_BAR_WIDTH = 30


def get(url: str) -> bytes:
    """The body of `url`; a progress bar on stderr when it is a terminal."""
    timeout = TIMEOUT_S
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            total = response.length  # from Content-Length; None when the server sends none.
            body = _read(response, total, _bar_label(url))
    except urllib.error.HTTPError as e:
        raise DataError(f"{url}: HTTP {e.code} {one_line(e.reason)}") from None
    except (OSError, http.client.HTTPException) as e:  # URLError, timeouts, resets, bad replies.
        reason = e.reason if isinstance(e, urllib.error.URLError) else e
        text = f"no answer within {timeout:g} s" if isinstance(reason, TimeoutError) else one_line(reason)
        raise DataError(f"{url}: {text}") from None
    if total is not None and len(body) != total:
        raise DataError(f"{url}: the download stopped after {len(body)} of {total} bytes; try again")
    return body


def _read(response: http.client.HTTPResponse, total: int | None, label: str) -> bytes:
    show = sys.stderr.isatty()
    chunks, done = [], 0
    try:
        while chunk := response.read(_CHUNK):
            chunks.append(chunk)
            done += len(chunk)
            if show:
                _draw(label, done, total)
    finally:
        if show and done:
            sys.stderr.write("\n")  # keep the bar, and start any error on a line of its own.
    return b"".join(chunks)


def _draw(label: str, done: int, total: int | None) -> None:
    if total:
        filled = _BAR_WIDTH * done // total
        bar = f"[{'#' * filled}{'.' * (_BAR_WIDTH - filled)}] {100 * done // total:3d}% of {_size(total)}"
    else:
        bar = _size(done)
    sys.stderr.write(f"\r{label} {bar}")
    sys.stderr.flush()


def _size(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 1e6 else f"{n / 1e3:.0f} kB"


def _bar_label(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    return f"{parts.path.rsplit('/', 1)[-1]} from {parts.netloc}"
