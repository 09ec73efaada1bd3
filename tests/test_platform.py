"""The CPU description every speed and accuracy record carries, and what `configure_cpu` sets per platform."""

import json
import os
import subprocess
import sys

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
    code = ("import json, os, jax; from mnist_jax import platform; platform.configure_cpu(); "
            "print(json.dumps({**platform.setup_record(), 'xla_flags': os.environ.get('XLA_FLAGS', ''), "
            "'num_cpu_devices': jax.config.jax_num_cpu_devices}))")
    clean = {k: v for k, v in os.environ.items()
             if k not in ("XLA_FLAGS", "JAX_PLATFORMS", "JAX_NUM_CPU_DEVICES") and not k.startswith("MALLOC_")}
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
