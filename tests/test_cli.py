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


# ---------------------------------------------------------------------------------------------
# The bad-input catalogue (issue 13): each is one line on stderr naming the field, exit code 2,
# and no step is taken (nothing but the checks runs before the model loads).
# ---------------------------------------------------------------------------------------------
def _read_only_folder(tmp_path):
    import os

    if os.geteuid() != 0:
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        return str(ro / "run")
    return "/sys/bapo-run"  # root writes anywhere but a read-only mount


BAD_INPUTS = {
    "grad norm negative": (["train.max_grad_norm=-1"], "train.max_grad_norm=-1.0"),
    "grad norm zero": (["train.max_grad_norm=0"], "train.max_grad_norm=0.0"),
    "lr inf": (["train.lr=.inf"], "train.lr=inf"),
    "lr nan": (["train.lr=.nan"], "train.lr=nan"),
    "lr text inf": (["train.lr=inf"], "train.lr"),
    "steps inf": (["train.steps=.inf"], "train.steps=inf"),
    "steps nan": (["train.steps=.nan"], "train.steps=nan"),
    "steps negative": (["train.steps=-3"], "train.steps=-3"),
    "dtype": (["model.dtype=float8"], "model.dtype='float8'"),
    "device name": (["model.device=tpu"], "model.device='tpu'"),
    "device index": (["model.device=cuda:99"], "model.device='cuda:99'"),
    "malformed override": (["train.lr=[1"], "train.lr"),
    "batch size": (["rollout.batch_size=0"], "rollout.batch_size=0"),
    "top_k": (["rollout.top_k=-1"], "rollout.top_k=-1"),
    "temperature": (["rollout.temperature=.inf"], "rollout.temperature=inf"),
    "gpu memory": (["rollout.gpu_memory_utilization=1.5"], "rollout.gpu_memory_utilization"),
    "logprob chunk": (["train.logprob_chunk=0"], "train.logprob_chunk=0"),
    "beta above 1": (["train.betas=[0.9,1.5]"], "train.betas"),
    "one beta": (["train.betas=[0.9]"], "train.betas"),
    "weight decay": (["train.weight_decay=-0.1"], "train.weight_decay=-0.1"),
    "warmup": (["train.warmup_steps=-1"], "train.warmup_steps=-1"),
    "max nonfinite": (["train.max_nonfinite=0"], "train.max_nonfinite=0"),
    "eval size": (["run.eval_size=-1"], "run.eval_size=-1"),
    "save every": (["run.save_every=-1"], "run.save_every=-1"),
    "eval every": (["run.eval_every=-1"], "run.eval_every=-1"),
    "keep": (["run.keep_checkpoints=0"], "run.keep_checkpoints=0"),
    "partial budget": (["offpolicy.partial_budget=99"], "offpolicy.partial_budget=99"),
    "replay fraction": (["offpolicy.replay_fraction=1"], "offpolicy.replay_fraction=1.0"),
    "algo name": (["algo.name=ppo"], "algo.name='ppo'"),
    "rho0": (["algo.rho0=.nan"], "algo.rho0"),
    "task name": (["task.name=chess"], "task.name='chess'"),
    "math task needs a file": (["task.name=math-jsonl"], "task.path"),
    "option of another task": (
        ["task.name=guess-check", "task.options.digits=2"],
        "task.options.digits",
    ),  # fmt: skip
    "unknown option": (["task.options.colour=1"], "task.options.colour"),
    "option value": (["task.options.digits=9"], "task.options of task 'arithmetic': digits=9"),
    "path for a generated task": (["task.path=x.jsonl"], "task.path='x.jsonl'"),
}


@pytest.mark.parametrize("overrides, field", BAD_INPUTS.values(), ids=BAD_INPUTS.keys())
def test_bad_input_catalogue(overrides, field, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code = main(["train", "--preset", "cpu-tiny", "--out", str(tmp_path / "run"), *overrides])
    err = capsys.readouterr().err
    assert code == 2, err
    assert field in err
    assert err.startswith("bapo: error: ") and err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "run" / "metrics.jsonl").exists()  # refused before the first step


def _folder_cases(tmp_path):
    """Inputs about files and folders, built in ``tmp_path``: (argv, text the error names)."""
    (tmp_path / "a-file").write_text("")
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("train:\n  steps: [3\nrun:\n  eval_every: 0\n")
    owned = tmp_path / "owned"
    (owned / "checkpoint-3").mkdir(parents=True)
    damaged = tmp_path / "damaged"
    (damaged / "checkpoint-2").mkdir(parents=True)
    (damaged / "checkpoint-2" / "trainer_state.pt").write_text("torn")
    return {
        "malformed yaml file": (["--config", str(bad_yaml)], "bad.yaml: malformed YAML at line 3"),
        "config is a folder": (
            ["--config", str(tmp_path)],
            f"config file {tmp_path} is not a file",
        ),
        "out dir under a file": (["--out", str(tmp_path / "a-file" / "run")], "run.out_dir="),
        "out dir read-only": (["--out", _read_only_folder(tmp_path)], "run.out_dir="),
        "another run's folder": (["--out", str(owned)], "holds another run (checkpoint-3)"),
        "resume without checkpoint": (["--out", str(tmp_path / "new"), "--resume"], "--resume"),
        "resume, none intact": (["--out", str(damaged), "--resume"], "checkpoint-2: no manifest"),
    }


@pytest.mark.parametrize(
    "case",
    ["malformed yaml file", "config is a folder", "out dir under a file", "out dir read-only",
     "another run's folder", "resume without checkpoint", "resume, none intact"],
)  # fmt: skip
def test_bad_folder_catalogue(case, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    argv, field = _folder_cases(tmp_path)[case]
    if "--config" not in argv:
        argv = ["--preset", "cpu-tiny", *argv]
    code = main(["train", *argv, "run.progress=false"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert field in err
    assert err.startswith("bapo: error: ") and err.count("\n") == 1 and "Traceback" not in err


def test_cuda_device_is_checked_against_the_machine(capsys, tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    code = main(["train", "--out", str(tmp_path), "model.device=cuda"])
    err = capsys.readouterr().err
    assert code == 2 and "model.device='cuda' is not available" in err
