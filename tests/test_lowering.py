"""Native CPU code never enters a GPU or TPU program: train steps lowered for them on this CPU."""

import pytest

from mnist_jax import lowering, platform
from train_helpers import load_config

ONEDNN = "mnist_onednn_"


@pytest.mark.parametrize("target", ["cuda", "tpu"])
@pytest.mark.parametrize("name", ["deotte15", "resnet_committee"])
def test_a_train_step_lowered_for_gpu_or_tpu_holds_no_onednn_call(name, target):
    config = load_config(name)
    config.num_members = 2
    calls = lowering.custom_calls(lowering.train_step_text(config, target))
    assert not [c for c in calls if c.startswith(ONEDNN)], calls


def test_the_cpu_program_calls_onednn_where_it_is_the_backend():
    """The check above can fail: the same step lowered for the CPU holds the oneDNN calls."""
    config = load_config("deotte15")
    config.num_members = 2
    calls = lowering.custom_calls(lowering.train_step_text(config, "cpu"))
    assert any(c.startswith(ONEDNN) for c in calls) == (platform.conv_backend() == "onednn")


def test_an_unknown_platform_is_refused_in_one_line():
    with pytest.raises(ValueError, match="cannot lower for 'metal'; choose from cpu, cuda, rocm, tpu"):
        lowering.train_step_text(load_config("quick"), "metal")
