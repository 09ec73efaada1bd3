"""Checkpoints of the whole training state under `WORKDIR/checkpoints`, with orbax.

A checkpoint holds the member state (parameters, optimiser state, batch statistics, EMA,
keys), the running epoch metrics and the step, plus the config that made it, so a resumed
run is the same run and a different config is refused instead of silently mixed in.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp

from mnist_jax import runfolder


class CheckpointError(ValueError):
    """A checkpoint that cannot be used for this run; the message says why and what to do."""


def manager(workdir: str | Path, keep: int) -> ocp.CheckpointManager:
    """Saves are asynchronous: orbax copies the arrays to the host before `save` returns (so the
    train step may then donate them) and writes the files in the background; `close()` waits."""
    directory = runfolder.checkpoint_dir(Path(workdir))
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                           enable_async_checkpointing=True)
    return ocp.CheckpointManager(directory, options=options)


def save(mngr: ocp.CheckpointManager, step: int, tree: Any, meta: dict) -> None:
    """Start writing `tree` and `meta` for `step` (to a temporary folder, renamed when complete,
    so a crash leaves the previous checkpoints); the previous save is finished first."""
    mngr.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(tree),
                                            meta=ocp.args.JsonSave(meta)), force=True)


def _differences(saved: dict, current: dict, prefix: str = "") -> list[str]:
    keys = sorted(set(saved) | set(current))
    out = []
    for key in keys:
        a, b = saved.get(key), current.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _differences(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}: {a!r} -> {b!r}")
    return out


def _skip(step: int, error: Exception) -> None:
    reason = (str(error).splitlines() or [type(error).__name__])[0].split(" [tensorstore_spec")[0]
    logging.warning("checkpoint %d is unreadable (%s); using the previous one", step,
                    reason if len(reason) <= 200 else reason[:197] + "...")


def _drop_failed_read_noise() -> None:
    """Silence orbax's leftovers of a failed read, and only those.

    When one array of a checkpoint fails to read, orbax closes its event loop while tensorstore
    still completes the other reads; each completion then raises 'Event loop is closed' in a
    callback, which Python prints as an unraisable-exception traceback (a dozen of them), and a
    read that failed too may leave a future whose tensorstore error nobody retrieved, which
    asyncio logs when the future is collected (sometimes only at exit).
    """
    previous = sys.unraisablehook
    if getattr(previous, "drops_closed_event_loop", False):
        return

    def hook(unraisable) -> None:
        if not (isinstance(unraisable.exc_value, RuntimeError)
                and str(unraisable.exc_value) == "Event loop is closed"):
            previous(unraisable)
    hook.drops_closed_event_loop = True
    sys.unraisablehook = hook
    logging.getLogger("asyncio").addFilter(_unretrieved_read_error)


def _unretrieved_read_error(record: logging.LogRecord) -> bool:
    """False (drop) for asyncio's 'exception was never retrieved' of a tensorstore read."""
    error = record.exc_info[1] if record.exc_info else None
    message = record.getMessage()
    return not ("exception was never retrieved" in message
                and "tensorstore_spec" in f"{message} {error}")


def restore_latest(mngr: ocp.CheckpointManager, like: Any, config_fingerprint: dict,
                   upgrade: Callable[[dict], dict]) -> tuple[Any, dict] | None:
    """The newest readable checkpoint as `(tree, meta)`, or None when there is none.

    An unreadable newest checkpoint falls back to the previous one with a warning; one made by
    a different config is refused, naming the fields that differ. `upgrade` brings the saved
    fingerprint to today's schema before the comparison.
    """
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
    _drop_failed_read_noise()
    for step in sorted(mngr.all_steps(), reverse=True):
        try:
            meta = mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
        except Exception as e:  # noqa: BLE001 - any unreadable checkpoint is skipped the same way
            _skip(step, e)
            continue
        differences = _differences(upgrade(meta["config"]), config_fingerprint)
        if differences:
            raise CheckpointError(
                f"{mngr.directory} holds a run of another config ({'; '.join(differences[:5])}); "
                f"use a new --workdir or the config that made it")
        try:
            tree = mngr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract)))
        except Exception as e:  # noqa: BLE001 - any unreadable checkpoint is skipped the same way
            _skip(step, e)
            continue
        return tree["state"], meta
    return None
