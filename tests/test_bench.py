"""The trainer-step bench measures what it says (timings themselves are never asserted)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import bench_trainer_step  # noqa: E402


def test_the_trainer_step_bench_times_every_variant_on_the_same_step(embedded_model):
    res = bench_trainer_step.measure(steps=2, micro=4, preset="cpu-tiny", seed=0)
    assert res["n_micro"] == 4
    assert len(res["rollout"]) == 2
    assert set(res["update"]) == set(bench_trainer_step.VARIANTS)
    assert all(len(v) == 2 and min(v) > 0 for v in res["update"].values())
    assert res["kept"] == [4, 4]  # the default kept every graph of the tiny model
    assert all(mb > 0 for mb in res["held"])
