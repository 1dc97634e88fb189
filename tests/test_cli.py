"""The command line: train, compare (with a scenario), and errors as exit code 2."""

import pytest

from bapo.cli import main
from bapo.train.metrics import read_jsonl


def test_train_then_resume(tmp_path, embedded_model, capsys):
    common = ["--preset", "cpu-tiny", "--algo", "bapo", "--out", str(tmp_path),
              "train.prompts_per_step=4", "train.group_size=4", "run.eval_every=0",
              "run.progress=false"]  # fmt: skip
    assert main(["train", *common, "train.steps=2"]) == 0
    assert main(["train", *common, "train.steps=3", "--resume"]) == 0
    assert [r["step"] for r in read_jsonl(tmp_path / "metrics.jsonl")] == [1, 2, 3]
    assert (tmp_path / "config.yaml").exists()


def test_compare_writes_report_and_summary(tmp_path, embedded_model, capsys):
    code = main([
        "compare", "--preset", "cpu-tiny", "--algos", "grpo,bapo", "--seeds", "2",
        "--staleness", "2", "--scenario", "partial", "--out", str(tmp_path),
        "train.steps=4", "train.prompts_per_step=4", "train.group_size=4", "run.eval_every=0",
        "run.progress=false",
    ])  # fmt: skip
    assert code == 0
    out = capsys.readouterr().out
    assert "grpo" in out and "bapo" in out and "final entropy" in out and "run 4/4" in out
    assert (tmp_path / "report.html").stat().st_size > 1_000_000
    assert "bapo" in (tmp_path / "summary.txt").read_text()
    for run in ["grpo-seed0", "grpo-seed1", "bapo-seed0", "bapo-seed1"]:
        recs = read_jsonl(tmp_path / run / "metrics.jsonl")
        assert len(recs) == 2 and "offpolicy/carried_over" in recs[0]
    import yaml

    cfg = yaml.safe_load((tmp_path / "bapo-seed1" / "config.yaml").read_text())
    assert cfg["train"]["epochs"] == 2 and cfg["train"]["seed"] == 1
    assert cfg["offpolicy"]["partial_budget"] == 2


@pytest.mark.parametrize(
    "argv, message",
    [
        (["train", "--preset", "nope"], "unknown preset 'nope'"),
        (["train", "--algo", "ppo"], "unknown algorithm 'ppo'"),
        (["train", "train.group_size=1"], "train.group_size=1"),
        (["compare", "--algos", "grpo,ppo"], "unknown algorithm 'ppo'"),
        (["compare", "--seeds", "0"], "--seeds=0"),
        (["compare", "--staleness", "0"], "--staleness='0'"),
        (["compare", "--staleness", "1,x"], "--staleness='1,x'"),
        (["compare", "--staleness", "7"], "--staleness=7 does not divide train.steps=60"),
        (["train", "--config", "missing.yaml"], "missing.yaml"),
    ],
)
def test_bad_input_exits_2_with_the_reason(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_compare_several_staleness_levels_matched_by_updates(tmp_path, embedded_model, capsys):
    code = main([
        "compare", "--preset", "cpu-tiny", "--algos", "grpo", "--seeds", "1",
        "--staleness", "1,2", "--via", "mini-batches", "--out", str(tmp_path),
        "train.steps=4", "train.prompts_per_step=2", "train.group_size=4", "run.eval_every=0",
        "run.progress=false",
    ])  # fmt: skip
    assert code == 0
    assert "grpo S=1" in capsys.readouterr().out
    updates = {s: read_jsonl(tmp_path / f"grpo-s{s}-seed0" / "updates.jsonl") for s in (1, 2)}
    steps = {s: read_jsonl(tmp_path / f"grpo-s{s}-seed0" / "metrics.jsonl") for s in (1, 2)}
    assert len(updates[1]) == len(updates[2]) == 4  # matched: the same number of updates
    assert len(steps[1]) == 4 and len(steps[2]) == 2
    assert [u["offpolicy/staleness"] for u in updates[2]] == [0, 1, 0, 1]


def test_compare_progress_estimates_the_time_left_per_staleness_level():
    from bapo.train.compare import Progress

    now = [100.0]
    p = Progress([1, 1, 4, 4], clock=lambda: now[0])
    assert p.status() == ""  # nothing to estimate from yet
    now[0] += 30.0
    p.done(1)  # one S=1 run took 30 s; the level-4 runs have no time yet: 30 s each too
    assert p.status() == "; 0:30 so far, about 1:30 left"
    now[0] += 10.0
    p.done(1)  # S=1 runs average 20 s
    now[0] += 3600.0
    p.done(4)  # an S=4 run took an hour: the last one will too
    assert p.status() == "; 1:00:40 so far, about 1:00:00 left"
