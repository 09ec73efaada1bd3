"""What `platform.configure_cpu()` sets and `import mnist_jax` does not, each checked in a fresh process
(XLA reads its flags once)."""

import importlib.metadata
import os
import subprocess
import sys
from pathlib import Path

import jax
import pytest

pytestmark = pytest.mark.skipif(jax.default_backend() != "cpu", reason="XLA:CPU flags")
CLEAN_ENV = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"


def _run(code: str, env: dict[str, str], configure: bool = True) -> str:
    setup = "from mnist_jax import platform; platform.configure_cpu()\n" if configure else ""
    result = subprocess.run([sys.executable, "-c", "import mnist_jax, jax, jax.numpy as jnp\n" + setup + code],
                            env=env, capture_output=True, text=True, check=True)
    return result.stdout


def _compiled_conv_hlo(env: dict[str, str]) -> str:
    return _run("x, w = jnp.zeros((128, 26, 26, 32)), jnp.zeros((3, 3, 32, 32))\n"
                "f = lambda x, w: jax.lax.conv_general_dilated(x, w, (1, 1), 'VALID', "
                "dimension_numbers=('NHWC', 'HWIO', 'NHWC'))\n"
                "print(jax.jit(f).lower(x, w).compile().as_text())\n", env)


def test_configure_cpu_keeps_convolutions_on_xla_cpu():
    if not importlib.metadata.version("jaxlib").startswith("0.10."):
        pytest.skip("the flag is set only for the jaxlib version it was measured on")
    assert "ynn_fusion" not in _compiled_conv_hlo(CLEAN_ENV)
    # A user's own choice wins: asking for YNNPACK convolutions gets them.
    user = {**CLEAN_ENV, "XLA_FLAGS": "--xla_cpu_experimental_ynn_fusion_type=individual_convolution"}
    assert "ynn_fusion" in _compiled_conv_hlo(user)


def test_configure_cpu_gives_one_cpu_device_per_core():
    count = "print(jax.device_count())"
    assert int(_run(count, CLEAN_ENV)) == len(os.sched_getaffinity(0))
    # A user's own device count wins, through XLA_FLAGS or through JAX's own option.
    user = {**CLEAN_ENV, "XLA_FLAGS": "--xla_force_host_platform_device_count=3"}
    assert int(_run(count, user)) == 3
    assert int(_run(count, {**CLEAN_ENV, "JAX_NUM_CPU_DEVICES": "5"})) == 5


def test_importing_mnist_jax_changes_nothing():
    code = ("import os, mnist_jax.main, mnist_jax.analysis, mnist_jax.evaluate_main\n"
            "print(os.environ.get('XLA_FLAGS')); print(jax.device_count())")
    flags, count = _run(code, CLEAN_ENV, configure=False).split()
    assert flags == "None" and int(count) == 1


def test_configure_cpu_called_too_late_warns_and_changes_nothing():
    code = ("import logging; logging.basicConfig()\njax.devices()\n"
            "platform.configure_cpu()\nprint(jax.device_count())")
    result = subprocess.run([sys.executable, "-c", "import jax\nfrom mnist_jax import platform\n" + code],
                            env=CLEAN_ENV, capture_output=True, text=True, check=True)
    assert int(result.stdout) == 1 and "configure_cpu() was called after" in result.stderr


@pytest.mark.skipif(sys.platform != "linux", reason="glibc's malloc")
def test_configure_cpu_keeps_freed_memory_so_train_steps_do_not_page_fault():
    # A deotte train step frees its buffers at its end; glibc returned those to the kernel, so
    # every step page-faulted them in again (about 16,000 faults a step at batch 128). The median
    # of 5 runs: the kept heap still grows now and then.
    code = (f"import resource, sys\nsys.path.insert(0, {str(EXPERIMENTS)!r})\nimport bench_throughput as bt\n"
            "run = bt.jax_timer(('deotte', {}), batch=128, members=1, steps=5, warmup=3, strategy='unroll')\n"
            "faults = []\nfor _ in range(5):\n"
            "    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt\n    run()\n"
            "    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)\n"
            "print(sorted(faults)[2] / 5, platform.malloc_mode())")
    env = dict(os.environ)  # the suite's XLA flags (conftest): faults do not depend on them
    kept, mode = _run(code, env).split()
    # A malloc setting in the environment is the user's choice: configure_cpu leaves malloc alone.
    returned, default = _run(code, {**env, "MALLOC_ARENA_MAX": "16"}).split()
    assert (mode, default) == ("kept", "default")
    assert float(returned) > 5_000 and float(kept) < float(returned) / 5, (kept, returned)
