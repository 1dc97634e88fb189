"""The kill-and-resume soak (scripts/soak.py), short: real processes, real signals.

SIGKILL, SIGINT and SIGTERM at random points of a 12-step cpu-tiny run, each resumed: every
metrics and update row and the final weights equal the uninterrupted run's.  A damaged newest
checkpoint makes the resume fall back to the intact one before it, with the same result."""

import importlib
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


@pytest.fixture(scope="module")
def soak(tmp_path_factory, embedded_model):
    import sys

    sys.path.insert(0, str(SCRIPTS))
    try:
        yield importlib.import_module("soak"), tmp_path_factory.mktemp("soak")
    finally:
        sys.path.remove(str(SCRIPTS))


def test_kill_int_term_at_random_points_resume_identically(soak):
    mod, out = soak
    results = mod.soak(out, trials=3, scenarios=["default"], seed=13, kinds=["kill", "int", "term"],
                       p_corrupt=0.0, verbose=False)  # fmt: skip
    for ok, note in results:
        assert ok, note
    assert [note.split("@")[0] for _, note in results] == ["kill", "int", "term"]


def test_a_corrupted_latest_checkpoint_falls_back_and_resumes_identically(soak):
    mod, out = soak
    ref = mod.reference(out / "ref-default", "default", 12)  # made by the test above, or now
    run = out / "corrupt"
    shutil.copytree(out / "ref-default", run)
    assert sorted(p.name for p in run.glob("checkpoint-*")) == ["checkpoint-12", "checkpoint-9"]
    assert mod.corrupt_latest(run) == "checkpoint-12"
    done = subprocess.run(mod.train_argv(run, "default", 12) + ["--resume"], text=True,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "checkpoint-12 is damaged (model.safetensors does not match its checksum)" in done.stderr
    assert mod.rows(run / "metrics.jsonl") == ref["metrics"]
    assert mod.rows(run / "updates.jsonl") == ref["updates"]
    weights = mod.final_weights(run, 12)
    assert all((weights[k] == ref["weights"][k]).all() for k in ref["weights"])


def test_a_stop_check_catches_a_lost_row(soak, tmp_path):
    """The soak's own check can fail: a SIGTERM run whose checkpoint lags its rows is caught."""
    mod, _ = soak
    (tmp_path / "checkpoint-3").mkdir()
    (tmp_path / "metrics.jsonl").write_text('{"step": 1}\n{"step": 2}\n{"step": 3}\n{"step": 4}\n')
    assert "4 metrics rows but latest checkpoint checkpoint-3" in mod.check_stop(
        tmp_path, signal.SIGTERM, 143, ""
    )
    assert "exit code 1" in mod.check_stop(tmp_path, signal.SIGINT, 1, "")
