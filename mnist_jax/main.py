"""Train an ensemble from a config file.

    python -m mnist_jax.main --config=configs/quick.py --workdir=runs/quick [--config.num_members=8]

Re-running the same command resumes from the newest checkpoint in WORKDIR. Compiled programs are
kept in $MNIST_JAX_CACHE_DIR/jax (`platform.use_compilation_cache`): a second run compiles less.
"""

from __future__ import annotations

import ast
import logging
import re
import sys
from typing import Any

import ml_collections

from absl import app, flags
from ml_collections import config_flags

from mnist_jax import config as config_lib, platform, train

config_flags.DEFINE_config_file("config", None, "Experiment config file (configs/*.py).",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Run directory: checkpoints, metrics, results, pictures.")
flags.DEFINE_string("coordinator", None, "Multi-host only: host:port of process 0 (with "
                    "--num_processes and --process_id), or 'auto' for jax.distributed's own "
                    "detection (TPU VMs, SLURM); starts jax.distributed.")
flags.DEFINE_integer("num_processes", 1, "Multi-host only: how many processes.")
flags.DEFINE_integer("process_id", 0, "Multi-host only: this process's index.")
flags.mark_flags_as_required(["config", "workdir"])

# Errors a user can fix; each carries one line that says what and how. ValueError covers the
# config, data, checkpoint and run-folder errors; OSError a workdir that cannot be written.
USER_ERRORS = (train.TrainingDiverged, ValueError, OSError)


def _fail(message: str) -> None:
    print(f"mnist_jax: error: {' '.join(message.split())}", file=sys.stderr)
    sys.exit(2)


# `--config.model_overrides.KEY=VALUE` (or `--config.groups.NAME.model_overrides.KEY=VALUE`) for a
# model field the config file did not set: ml_collections refuses new keys in a locked config, so
# these are set here; `run.validate` then checks KEY and VALUE against the model's fields.
_NEW_MODEL_FIELD = re.compile(r"--config\.((?:groups\.[\w-]+\.)?model_overrides)\.(\w+)=(.*)", re.S)


def _literal(text: str) -> Any:
    """A command-line value as Python reads it (3, 0.1, (8, 16), True), else the string itself."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def _parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing, with every mistake on the command line reported in one line."""
    config_arg = next((a.split("=", 1)[1] for a in argv[1:] if a.startswith("--config=")), None)
    new_model_fields = []
    if config_arg is not None:
        path, _, arg = config_arg.partition(":")
        try:
            config = config_lib.from_file(path, arg or None)
        except ValueError as e:  # ConfigError, or a config file refusing its argument
            _fail(str(e))
        for a in argv[1:]:
            if a.startswith("--config."):
                field = a[len("--config."):].split("=", 1)[0]
                problem = config_lib.unknown_field(config, field)
                match = _NEW_MODEL_FIELD.fullmatch(a)
                if problem and match:
                    group = match[1].split(".")[1] if match[1].startswith("groups.") else None
                    if group is None or group in config.groups:
                        new_model_fields.append((a, match[1], match[2], _literal(match[3])))
                        continue
                if problem:
                    _fail(f"{problem} (from {a})")
    argv = [a for a in argv if a not in {f[0] for f in new_model_fields}]
    sys.argv[:] = argv  # config_flags finds `--config.X` overrides in sys.argv, not in argv
    try:
        remaining = flags.FLAGS(argv)
    except flags.Error as e:
        _fail(str(e))
    for _, parent, key, value in new_model_fields:
        with flags.FLAGS.config.unlocked():
            node = flags.FLAGS.config
            for part in parent.split("."):
                if part not in node:
                    node[part] = ml_collections.ConfigDict()
                node = node[part]
            node[key] = value
    return remaining


def main(argv: list[str]) -> None:
    del argv
    logging.getLogger().setLevel(logging.INFO)
    logging.getLogger("absl").setLevel(logging.WARNING)  # orbax logs every file it writes
    platform.configure_cpu()
    platform.use_compilation_cache()
    if flags.FLAGS.coordinator:
        import jax
        if flags.FLAGS.coordinator == "auto":
            jax.distributed.initialize()
        else:
            jax.distributed.initialize(flags.FLAGS.coordinator, flags.FLAGS.num_processes,
                                       flags.FLAGS.process_id)
    platform.warn_on_fallback()
    try:
        results = train.train_and_evaluate(flags.FLAGS.config, flags.FLAGS.workdir)
    except train.Interrupted as e:
        print(f"mnist_jax: {e}", file=sys.stderr)
        sys.exit(130)
    except KeyboardInterrupt:  # outside the train loop, which saves the state itself
        print("mnist_jax: interrupted; the same command resumes from the newest checkpoint",
              file=sys.stderr)
        sys.exit(130)
    except USER_ERRORS as e:
        _fail(str(e))
    for m in results["members"]:
        what = "" if m.get("kind", "final") == "final" else f", {m['kind']} of epoch {m['epoch']}"
        print(f"member {m['index']:2d} ({m['model']}, seed {m['seed']}{what}): "
              f"test accuracy {m['test_accuracy']:.4f}")
    e = results["ensemble"]
    rows = len(results["members"])
    size = f"{rows}" if rows == results["num_members"] else f"{rows} ({results['num_members']} trained)"
    print(f"ensemble of {size}: test accuracy {e['test_accuracy']:.4f} "
          f"(vote {e['test_accuracy_vote']:.4f}), {e['test_errors']} errors, "
          f"NLL {e['test_nll']:.4f}, ECE {e['test_ece']:.4f}; results in {flags.FLAGS.workdir}")


if __name__ == "__main__":
    app.run(main, flags_parser=_parse_flags)
