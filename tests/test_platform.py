"""The CPU description every speed and accuracy record carries, what `configure_cpu` and the
suite's setup set per platform, the compilation cache, and a GPU/TPU left unused."""

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mnist_jax.platform import cpu_model, describe_cpuinfo

ZEN1 = """processor\t: 0
vendor_id\t: AuthenticAMD
cpu family\t: 23
model\t\t: 1
model name\t: AMD EPYC
flags\t\t: fpu sse sse2 fma avx avx2 bmi2

processor\t: 1
model name\t: AMD EPYC
"""

XEON = """processor\t: 0
cpu family\t: 6
model\t\t: 207
model name\t: Intel(R) Xeon(R) Processor
flags\t\t: fpu avx avx2 avx512f avx512bw avx512_bf16 avx512_fp16 amx_bf16 amx_tile
"""


def test_the_description_tells_apart_cpus_that_share_a_model_name():
    assert describe_cpuinfo(ZEN1) == "AMD EPYC (family 23, model 1; avx2)"
    zen5 = ZEN1.replace("family\t: 23", "family\t: 26").replace("avx2", "avx2 avx512f avx512_bf16")
    assert describe_cpuinfo(zen5) == "AMD EPYC (family 26, model 1; avx2, avx512f, avx512_bf16)"
    assert describe_cpuinfo(XEON) == \
        "Intel(R) Xeon(R) Processor (family 6, model 207; avx2, avx512f, avx512_bf16, amx_bf16)"


def test_the_description_degrades_to_what_cpuinfo_has():
    assert describe_cpuinfo("model name\t: Some CPU\n") == "Some CPU"
    assert describe_cpuinfo("model name\t: Old CPU\nflags\t\t: fpu sse2\n") == "Old CPU (no avx2)"
    assert describe_cpuinfo("processor\t: 0\nflags\t\t: avx2\n") == ""
    assert describe_cpuinfo("model name\t: Odd CPU\ncpu family\t: 6\n") == "Odd CPU (family 6, model ?)"


def test_this_host_has_a_description():
    assert cpu_model()


def _setup_in_fresh_process(env: dict[str, str]) -> dict:
    """`configure_cpu()` in a new process (it acts before JAX starts), reporting what it did;
    the backend is never started, so a GPU/TPU platform needs no device here."""
    return _in_fresh_process(
        "import json, os, jax; from mnist_jax import platform; platform.configure_cpu(); "
        "print(json.dumps({**platform.setup_record(), 'xla_flags': os.environ.get('XLA_FLAGS', ''), "
        "'num_cpu_devices': jax.config.jax_num_cpu_devices}))", env)


def _in_fresh_process(code: str, env: dict[str, str]) -> dict:
    """The JSON that `code` prints last, run in a new process with `env` on top of this one's,
    less what the platform setup and the suite's (tests/conftest.py) set."""
    import conftest
    suite = set().union(*(conftest.suite_environment(p, {}) for p in ("cpu", "gpu", "tpu")))
    clean = {k: v for k, v in os.environ.items()
             if k not in {"XLA_FLAGS", "JAX_PLATFORMS", "JAX_NUM_CPU_DEVICES", *suite}
             and not k.startswith("MALLOC_")}
    done = subprocess.run([sys.executable, "-c", code], env={**clean, **env}, capture_output=True,
                          text=True, timeout=120, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("platform_name", ["cuda", "tpu"])
def test_on_a_gpu_or_tpu_nothing_cpu_specific_is_set(platform_name):
    record = _setup_in_fresh_process({"JAX_PLATFORMS": platform_name})
    assert record == {"expected_platform": "gpu" if platform_name == "cuda" else "tpu",
                      "cpu_devices_per_core": False, "ynnpack_off": False, "malloc": "default",
                      "xla_flags": "", "num_cpu_devices": -1}


def test_on_the_cpu_the_setup_says_what_it_applied():
    record = _setup_in_fresh_process({"JAX_PLATFORMS": "cpu"})
    assert record["expected_platform"] == "cpu" and record["cpu_devices_per_core"]
    assert record["num_cpu_devices"] >= 1
    assert record["ynnpack_off"] == ("ynn_fusion_type" in record["xla_flags"])


class _Item:
    def __init__(self, *keywords: str):
        self.keywords, self.markers = dict.fromkeys(keywords), []

    def add_marker(self, marker) -> None:
        self.markers.append(marker)


@pytest.mark.parametrize("backend", ["cpu", "gpu"])
def test_cpu_only_tests_are_skipped_off_the_cpu(backend, monkeypatch):
    import conftest
    import jax
    monkeypatch.setattr(jax, "default_backend", lambda: backend)
    cpu_only, anywhere = _Item("cpu_only", "slow"), _Item("slow")
    conftest.pytest_collection_modifyitems(None, [cpu_only, anywhere])
    assert [m.name for m in cpu_only.markers] == ([] if backend == "cpu" else ["skip"])
    assert anywhere.markers == []


# tests/conftest.py's setup in a new process, with `-n 2` on pytest's command line: what it
# exports for the commands tests start, what JAX will run on, whether xdist still starts workers.
SUITE_SETUP = f"""
import json, os, sys, types
sys.path.insert(0, {str(Path(__file__).parent)!r})
import conftest
from mnist_jax import platform
config = types.SimpleNamespace(option=types.SimpleNamespace(numprocesses=2, dist="loadfile", tx=["popen"] * 2))
conftest.pytest_configure(config)
print(json.dumps({{"env": dict(os.environ), "platform": platform.expected_platform(),
                  "workers": config.option.numprocesses, "dist": config.option.dist}}))
"""


@pytest.mark.parametrize("platform_name", ["cuda", "tpu", "cpu"])
def test_the_suite_setup_exports_what_its_platform_needs(platform_name):
    """As if on a GPU or a TPU (JAX_PLATFORMS names it; no plugin is needed, no backend starts):
    no CPU flag, no GPU preallocation, and on a TPU one process that holds the chips."""
    got = _in_fresh_process(SUITE_SETUP, {"JAX_PLATFORMS": platform_name})
    env = got["env"]
    assert ("--xla_backend_optimization_level" in env.get("XLA_FLAGS", "")) == (platform_name == "cpu")
    assert env.get("XLA_PYTHON_CLIENT_PREALLOCATE") == ("false" if platform_name == "cuda" else None)
    assert env.get("JAX_DEFAULT_MATMUL_PRECISION") == (None if platform_name == "cpu" else "highest")
    assert Path(env["JAX_COMPILATION_CACHE_DIR"]).parts[-2:] == (".cache", "jax")
    if platform_name == "tpu":  # no xdist workers, and the commands tests start run on the CPU
        assert (got["workers"], got["dist"], env["JAX_PLATFORMS"]) == (0, "no", "cpu")
        assert got["platform"] == "tpu"  # while pytest's own process runs on the TPU
    else:
        assert (got["workers"], got["dist"], env["JAX_PLATFORMS"]) == (2, "loadfile", platform_name)


def test_the_suite_setup_keeps_what_the_user_set():
    import conftest
    user = {"XLA_FLAGS": "--xla_backend_optimization_level=2", "XLA_PYTHON_CLIENT_PREALLOCATE": "true",
            "JAX_COMPILATION_CACHE_DIR": "/somewhere", "JAX_PLATFORMS": "tpu"}
    assert conftest.suite_environment("cpu", user)["XLA_FLAGS"] == "--xla_backend_optimization_level=2"
    assert conftest.suite_environment("gpu", user) == {"JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0.5",
                                                       "JAX_DEFAULT_MATMUL_PRECISION": "highest"}
    assert conftest.suite_environment("tpu", user)["JAX_PLATFORMS"] == "cpu"  # the chips are taken


@pytest.mark.parametrize("env, folder", [
    ({}, "cache/jax"),
    ({"JAX_COMPILATION_CACHE_DIR": "mine"}, "mine"),
    ({"MNIST_JAX_COMPILATION_CACHE": "0"}, None),
])
def test_compiled_programs_are_kept_beside_the_datasets_unless_told_otherwise(tmp_path, env, folder):
    got = _in_fresh_process(
        "import json, jax; from mnist_jax import platform; folder = platform.use_compilation_cache(); "
        "print(json.dumps({'folder': folder and str(folder), 'on': jax.config.jax_enable_compilation_cache}))",
        {"MNIST_JAX_CACHE_DIR": str(tmp_path / "cache"),
         **{k: str(tmp_path / v) if k == "JAX_COMPILATION_CACHE_DIR" else v for k, v in env.items()}})
    assert got == {"folder": folder and str(tmp_path / folder), "on": folder is not None}


def test_an_accelerator_left_unused_is_said_in_one_line_and_recorded(monkeypatch, caplog):
    """A GPU whose plugin failed to start (its plugin installed, its device present: JAX would
    have picked it) while JAX runs on the CPU."""
    import jax
    from mnist_jax import platform, train
    monkeypatch.setattr(platform, "expected_platform", lambda: "gpu")
    monkeypatch.setattr(jax, "default_backend", lambda: "cpu")
    with caplog.at_level(logging.WARNING):
        platform.warn_on_fallback()
    assert [r.levelno for r in caplog.records] == [logging.WARNING]
    line = caplog.records[0].getMessage()
    assert "\n" not in line and "a GPU and its JAX plugin are present but JAX runs on the CPU" in line
    assert "JAX_PLATFORMS=cpu" in line
    assert train._machine_record()["accelerator_fallback"] == "gpu"
    # Where JAX runs on the accelerator, or the CPU was chosen (JAX_PLATFORMS=cpu): nothing.
    for expected, backend in (("gpu", "gpu"), ("cpu", "cpu")):
        monkeypatch.setattr(platform, "expected_platform", lambda: expected)
        monkeypatch.setattr(jax, "default_backend", lambda: backend)
        caplog.clear()
        platform.warn_on_fallback()
        assert not caplog.records and platform.accelerator_fallback() is None
