"""The CPU description every speed and accuracy record carries."""

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
