"""A 5-step BAPO run with ``rollout.engine=vllm`` on SmolLM2-135M through the CLI, and the same
run stopped after 3 steps and resumed with ``--resume``: every metric finite, the engine/trainer
mismatch small, and the resumed steps 4-5 equal to the uninterrupted run's."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("vllm", reason="needs vLLM: `make test-vllm` runs this in .venv-vllm")

OVERRIDES = [
    "rollout.engine=vllm",  # sleep mode left at its default: off on vLLM's CPU platform
    "train.prompts_per_step=2", "train.group_size=4", "rollout.max_new_tokens=12",
    "train.lr=1e-4", "run.progress=false",
]  # fmt: skip
# A metric that averages over an empty set is nan by definition, not a failure: the length of
# correct (or wrong) completions in a step where none was correct (or wrong).
EMPTY_SET_METRICS = {"completion/length_correct", "completion/length_wrong"}
MISMATCH_MAX = 1e-3  # fp32 engine vs fp32 trainer (tests/vllm_cpu/test_engine.py)


def _train(out: Path, steps: int, *extra: str) -> list[dict]:
    options = ["--preset", "cpu-smollm2", "--algo", "bapo", "--out", str(out), *extra]
    cmd = [sys.executable, "-m", "bapo.cli", "train", *options, *OVERRIDES, f"train.steps={steps}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=os.environ.copy(), timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("vllm-runs")
    full = _train(root / "full", 5)
    _train(root / "resumed", 3)
    resumed = _train(root / "resumed", 5, "--resume")
    return full, resumed, root


def test_five_bapo_steps_with_vllm_have_finite_metrics(runs):
    full, _, root = runs
    assert [r["step"] for r in full] == [1, 2, 3, 4, 5]
    for rec in full:
        bad = {k: v for k, v in rec.items()
               if isinstance(v, float) and not math.isfinite(v) and k not in EMPTY_SET_METRICS}  # fmt: skip
        assert not bad, (rec["step"], bad)
        assert rec["rollout/generated_tokens"] > 0
        assert rec["rollout/logprob_abs_diff_max"] < MISMATCH_MAX
        for k in ("bapo/c_low", "bapo/c_high", "loss/policy"):
            if k in rec:
                assert math.isfinite(rec[k])
    assert any(k.startswith("bapo/") for k in full[-1])
    assert (root / "full" / "config.yaml").read_text().count("engine: vllm") == 1


def test_resume_continues_the_run_exactly(runs):
    full, resumed, _ = runs
    assert [r["step"] for r in resumed] == [1, 2, 3, 4, 5]
    for a, b in zip(full, resumed):
        for k in ("reward/mean", "rollout/generated_tokens", "completion/length_mean"):
            assert a[k] == b[k] or (math.isnan(a[k]) and math.isnan(b[k])), (a["step"], k)
        for k, v in a.items():
            if k.startswith(("loss/", "bapo/")) and isinstance(v, float) and math.isfinite(v):
                assert b[k] == pytest.approx(v, rel=1e-4, abs=1e-6), (a["step"], k)
