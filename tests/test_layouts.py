"""The members × data layout by cost (`engine.mesh_shape`), against the compiled train steps."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mnist_jax import engine

REPO = Path(__file__).resolve().parents[1]
DEVICES = 8


@pytest.mark.slow
def test_the_chosen_layout_is_the_cheapest_compiled_one():
    """1, 15 and 35 tiny20k members on 8 CPU devices: every candidate layout's train step
    compiled (XLA's convolutions, partitioned as on a GPU), its collective bytes counted. Members
    alone need no collective; a data axis does, and is chosen for 1 member only. The estimate
    `mesh_shape` uses picks what the compiled programs' costs pick."""
    flags = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={DEVICES}"
    env = {**os.environ, "XLA_FLAGS": flags.strip(), "JAX_PLATFORMS": "cpu", "MNIST_JAX_ONEDNN": "0"}
    proc = subprocess.run([sys.executable, str(REPO / "tests" / "layout_worker.py"), "--members=1,15,35"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    print(f"\nmembers | layout | collective bytes / step / device | GFLOPs / device | cost (GFLOP) "
          f"| estimate (GFLOP)   ({engine.FLOPS_PER_COLLECTIVE_BYTE:g} FLOPs a collective byte)")
    for members, found in report.items():
        for r in found["rows"]:
            print(f"{members} | {tuple(r['layout'])} | {r['collective_bytes']:,} | {r['flops'] / 1e9:.2f} | "
                  f"{r['compiled_cost'] / 1e9:.2f} | {r['estimated_cost'] / 1e9:.2f}")
        print(f"{members} members: chosen {tuple(found['chosen']['estimated'])}")

    expected = {"1": [1, 8], "15": [5, 1], "35": [7, 1]}
    for members, found in report.items():
        rows = found["rows"]
        assert rows[0]["layout"][1] == 1 and rows[0]["collective_bytes"] == 0
        assert all(r["collective_bytes"] > 0 for r in rows[1:]) and len(rows) > 1
        cheapest = min(rows, key=lambda r: r["compiled_cost"])["layout"]
        assert found["chosen"]["compiled"] == found["chosen"]["estimated"] == cheapest == expected[members]


def test_the_candidates_are_members_alone_and_each_member_axis_with_its_widest_data_axis():
    assert engine.layouts(35, 8, data_parallel=True, batch_sizes=(128,)) == [(7, 1), (1, 8)]
    assert engine.layouts(15, 8, data_parallel=True, batch_sizes=(128,)) == [(5, 1), (1, 8), (3, 2)]
    assert engine.layouts(15, 8, data_parallel=True, batch_sizes=(128, 100)) == [(5, 1), (1, 4), (3, 2)]
    assert engine.layouts(15, 8, data_parallel=False) == [(5, 1)]
    assert engine.layouts(8, 4, data_parallel=True, batch_sizes=(128,))[0] == (4, 1)


def test_a_data_axis_needs_a_cost_that_shows_it_cheaper():
    common = {"data_parallel": True, "batch_sizes": (128,)}
    assert engine.mesh_shape(1, 8, **common) == (1, 1)  # its cost unknown: members alone
    assert engine.mesh_shape(15, 8, **common, costs={(5, 1): 2.0, (1, 8): 1.0}) == (1, 8)
    assert engine.mesh_shape(15, 8, **common, costs={(5, 1): 1.0, (1, 8): 1.0}) == (5, 1)  # of equals, no collective
    heavy = engine.MemberCost(flops_per_image=1e6, collective_bytes=1e6)  # all-reduces outweigh the work
    light = engine.MemberCost(flops_per_image=1e9, collective_bytes=1e3)
    assert engine.mesh_shape(1, 8, **common, strategy="unroll", member_cost=heavy) == (1, 1)
    assert engine.mesh_shape(1, 8, **common, strategy="unroll", member_cost=light) == (1, 8)
    # 15 vectorised members share a device on (1, 8): splitting their batch saves them no work
    assert engine.mesh_shape(15, 8, **common, strategy="vmap", member_cost=light) == (5, 1)
    assert engine.mesh_shape(15, 8, **common, strategy="unroll", member_cost=light) == (1, 8)


def test_costs_that_name_no_candidate_end_in_one_line():
    with pytest.raises(ValueError, match=r"name none of the layouts \[\(5, 1\)\]"):
        engine.mesh_shape(15, 8, data_parallel=False, costs={(1, 8): 1.0})
