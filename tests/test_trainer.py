"""End-to-end CPU runs of the trainer on the embedded default."""

import json
import math
import os
import signal
import warnings

import pytest
import torch

from bapo import BAPOConfig, search_bounds
from bapo.train.checkpoint import (
    CheckpointError,
    checkpoint_dirs,
    latest_checkpoint,
    verify_checkpoint,
)
from bapo.train.config import load_config
from bapo.train.metrics import read_jsonl
from bapo.train.trainer import HardInterrupt, NonFiniteLossError, Trainer, TrainingInterrupted

VOLATILE = ("time/", "speed/", "memory/")


def tiny(tmp_path, algo="bapo", *extra):
    over = [
        "train.steps=3", "train.prompts_per_step=4", "train.group_size=4",
        "run.eval_every=0", "run.progress=false", f"run.out_dir={tmp_path}",
    ]  # fmt: skip
    return load_config("cpu-tiny", algo=algo, overrides=over + list(extra))


def stable(records):
    return [{k: v for k, v in r.items() if not k.startswith(VOLATILE)} for r in records]


@pytest.mark.parametrize("algo", ["grpo", "clip-higher", "bapo", "bapo-official"])
def test_a_few_steps_of_each_algorithm(tmp_path, embedded_model, algo):
    records = Trainer(tiny(tmp_path, algo)).train()
    assert [r["step"] for r in records] == [1, 2, 3]
    for r in records:
        for key in ["reward/mean", "reward/accuracy", "completion/length_mean", "entropy/mean",
                    "bapo/rho", "bapo/c_low", "bapo/c_high", "clip/high_frac", "clip/low_frac",
                    "policy/grad_norm", "policy/approx_kl", "offpolicy/staleness",
                    "speed/rollout_tokens_per_s", "speed/train_tokens_per_s", "time/wall_s"]:  # fmt: skip
            assert key in r and r[key] is not None and math.isfinite(r[key]), key
        assert 0 <= r["reward/mean"] <= 1 and r["entropy/mean"] > 0
    on_disk = read_jsonl(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in on_disk] == [1, 2, 3]
    assert (tmp_path / "checkpoint-3" / "trainer_state.pt").exists()
    assert (tmp_path / "checkpoint-3" / "config.json").exists()  # Hugging Face format
    if algo in ("grpo", "clip-higher"):
        c_high = 1.2 if algo == "grpo" else 1.28
        assert all(r["bapo/c_low"] == 0.8 and r["bapo/c_high"] == c_high for r in records)


def test_bapo_logged_bounds_are_what_search_bounds_returns(tmp_path, embedded_model):
    seen = []
    cfg = tiny(
        tmp_path, "bapo", "train.epochs=2", "train.mini_batches=2", "train.micro_batch_size=4"
    )
    Trainer(cfg, update_hook=seen.append).train()
    logged = read_jsonl(tmp_path / "updates.jsonl")
    assert len(seen) == len(logged) == 3 * 4
    for hook, rec in zip(seen, logged):
        lp, old, adv = hook["inputs"]
        again = search_bounds(lp, old, adv, None, BAPOConfig())
        assert (rec["bapo/c_low"], rec["bapo/c_high"]) == (again.c_low, again.c_high)
        assert rec["bapo/search_steps"] == again.n_steps
        assert lp.numel() == rec["tokens/count"]


def test_staleness_accounting(tmp_path, embedded_model):
    cfg = tiny(tmp_path, "grpo", "train.epochs=2", "train.mini_batches=2")
    records = Trainer(cfg).train()
    updates = read_jsonl(tmp_path / "updates.jsonl")
    for step in (1, 2, 3):
        mine = [u for u in updates if u["step"] == step]  # the same numbers as metrics.jsonl
        # E x M = 4 updates per batch; the data is 0, 1, 2, 3 policy versions old
        assert [u["offpolicy/staleness"] for u in mine] == [0, 1, 2, 3]
        assert [u["offpolicy/age_max"] for u in mine] == [0, 1, 2, 3]
        assert [u["version"] for u in mine] == [4 * (step - 1) + k for k in (1, 2, 3, 4)]
    assert all(r["offpolicy/updates"] == 4 for r in records)


def test_resume_equals_uninterrupted_run(tmp_path, embedded_model):
    Trainer(tiny(tmp_path / "full", "bapo", "train.steps=4", "train.epochs=2")).train()
    part = tiny(tmp_path / "part", "bapo", "train.steps=2", "train.epochs=2")
    Trainer(part).train()
    resumed_cfg = tiny(tmp_path / "part", "bapo", "train.steps=4", "train.epochs=2")
    Trainer(resumed_cfg, resume=True).train()
    on_disk = read_jsonl(tmp_path / "part" / "metrics.jsonl")
    assert [r["step"] for r in on_disk] == [1, 2, 3, 4]
    assert stable(on_disk) == stable(read_jsonl(tmp_path / "full" / "metrics.jsonl"))


def test_ctrl_c_writes_a_checkpoint_and_the_run_resumes(tmp_path, embedded_model):
    def interrupt(record):
        if record["step"] == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        Trainer(tiny(tmp_path), callbacks=[interrupt]).train()
    assert latest_checkpoint(tmp_path).name == "checkpoint-2"
    records = Trainer(tiny(tmp_path), resume=True).train()
    assert [r["step"] for r in records] == [3]


def test_reward_errors_are_counted_and_scored_zero(tmp_path, embedded_model):
    from bapo.tasks import make_task

    task = make_task("arithmetic")
    calls = {"n": 0}
    real = task.reward

    def flaky(completion, example):
        calls["n"] += 1
        if calls["n"] % 2:
            raise RuntimeError("verifier crashed")
        return real(completion, example)

    task.reward = flaky
    model, tok = embedded_model
    records = Trainer(tiny(tmp_path), task=task, model=model, tokenizer=tok).train()
    assert all(r["reward/errors"] == 8 for r in records)  # half of 16 completions per step


def test_nonfinite_losses_are_skipped_then_abort_with_checkpoint(
    tmp_path, embedded_model, monkeypatch
):
    import bapo.train.trainer as tr

    real = tr.policy_loss
    budget = {"finite_updates": 2}

    def sometimes_nan(*args, **kwargs):
        loss, st = real(*args, **kwargs)
        if torch.is_grad_enabled() and budget["finite_updates"] <= 0:
            return loss * float("nan"), st
        if torch.is_grad_enabled():
            budget["finite_updates"] -= 1
        return loss, st

    monkeypatch.setattr(tr, "policy_loss", sometimes_nan)
    cfg = tiny(tmp_path, "grpo", "train.steps=6", "train.max_nonfinite=3")
    with pytest.raises(NonFiniteLossError, match="3 non-finite losses in a row"):
        Trainer(cfg).train()
    logged = read_jsonl(tmp_path / "metrics.jsonl")
    assert [r["policy/nonfinite_skipped"] for r in logged] == [0, 0, 1, 1]
    assert latest_checkpoint(tmp_path) is not None  # nothing lost


def test_missing_model_path_is_a_clear_error(tmp_path):
    cfg = tiny(tmp_path, "grpo", f"model.name={tmp_path / 'no-such-model'}")
    with pytest.raises(FileNotFoundError, match="no-such-model"):
        Trainer(cfg)


def test_engine_gets_new_weights_before_every_rollout_and_sleeps_during_updates(
    tmp_path, embedded_model
):
    from bapo.rollout.hf import HFEngine

    model, tok = embedded_model
    calls = []

    class Recording(HFEngine):
        def generate(self, prompts, params, seed=None):
            calls.append(("generate", trainer.version))
            return super().generate(prompts, params, seed)

        def sync_weights(self, m):
            calls.append(("sync", trainer.version))
            super().sync_weights(m)

        def sleep(self):
            calls.append(("sleep", trainer.version))

        def wake(self):
            calls.append(("wake", trainer.version))

    import copy

    m = copy.deepcopy(model)
    engine = Recording(m, tok.eos_token_id, tok.pad_token_id)
    cfg = tiny(tmp_path, "bapo", "train.epochs=2")
    trainer = Trainer(cfg, model=m, tokenizer=tok, engine=engine)
    trainer.train()
    # step k rolls out with version 2k, after a sync whenever the version moved
    gens = [v for c, v in calls if c == "generate"]
    assert gens == [0, 2, 4]
    syncs = [v for c, v in calls if c == "sync"]
    assert syncs == [2, 4]
    for i, (c, _v) in enumerate(calls):
        if c == "generate":
            assert calls[i - 1][0] in ("wake", "sync")
    assert [c for c, _ in calls].count("sleep") == 3


def test_vllm_engine_is_built_from_the_config(tmp_path, embedded_model, monkeypatch):
    """rollout.engine=vllm builds the colocated engine from the run's settings (vLLM itself
    cannot run here: a stand-in records the arguments and samples with the HF engine)."""
    import bapo.rollout.vllm as vllm_mod
    from bapo.rollout.hf import HFEngine

    built = {}
    model, tok = embedded_model

    class StandIn(HFEngine):
        def __init__(self, model_path, **kwargs):
            built.update(kwargs, model=model_path)
            super().__init__(trainer_model["m"], tok.eos_token_id, tok.pad_token_id)

    trainer_model = {}
    monkeypatch.setattr(vllm_mod, "VLLMEngine", StandIn)
    import copy

    m = copy.deepcopy(model)
    trainer_model["m"] = m
    cfg = tiny(tmp_path, "bapo", "rollout.engine=vllm", "rollout.gpu_memory_utilization=0.25")
    Trainer(cfg, model=m, tokenizer=tok).train()
    # sleep mode: left to the engine (on where vLLM's platform has it, off on CPU)
    assert built["gpu_memory_utilization"] == 0.25 and built["enable_sleep_mode"] is None
    assert built["dtype"] == "bfloat16" and built["stop_token_ids"] == [tok.eos_token_id]
    assert built["model"] == m.name_or_path  # the folder the trained model came from


def test_stale_batch_ratios_move_only_after_updates(tmp_path, embedded_model):
    from bapo.train.snapshot import stale_batch

    fresh = stale_batch(tiny(tmp_path / "a"), updates=0)
    assert torch.allclose(fresh.ratio, torch.ones_like(fresh.ratio), atol=1e-4)
    stale = stale_batch(tiny(tmp_path / "b"), updates=3)
    assert stale.ratio.numel() == len(stale.advantages) > 0
    assert (stale.ratio - 1).abs().max() > 1e-2  # the policy moved on: r != 1
    with pytest.raises(ValueError, match="updates=-1"):
        stale_batch(tiny(tmp_path / "c"), updates=-1)


def count_forwards(monkeypatch):
    """Record every forward pass of the update as ``(update, with grad)``; the update index
    advances with each optimizer step."""
    calls, original = [], Trainer._logprobs
    monkeypatch.setattr(Trainer, "_logprobs", lambda self, packed: calls.append(
        (self.version, torch.is_grad_enabled())) or original(self, packed))  # fmt: skip
    return calls


@pytest.mark.parametrize(("algo", "keep", "no_grad"), [
    ("grpo", "auto", 0), ("bapo", "auto", 0), ("bapo", "true", 0), ("bapo", "false", 3),
])  # fmt: skip
def test_forward_passes_per_update(tmp_path, embedded_model, algo, keep, no_grad, monkeypatch):
    """16 samples in 4 micro-batches: a fixed clip forwards each once, with grad; BAPO as well
    when it keeps the graphs of its search pass, and with ``keep_graphs=false`` it keeps only
    the first and forwards the other three twice (no grad for the search, then with grad)."""
    calls = count_forwards(monkeypatch)
    seen = []
    cfg = tiny(tmp_path, algo, "train.steps=1", "train.micro_batch_size=4",
               f"train.keep_graphs={keep}")  # fmt: skip
    Trainer(cfg, update_hook=seen.append).train()
    logged = read_jsonl(tmp_path / "updates.jsonl")
    by_update = {}
    for version, grad in calls:
        by_update.setdefault(version, []).append(grad)
    assert len(by_update) == len(logged) == 1
    (passes,) = by_update.values()
    assert passes.count(False) == no_grad and passes.count(True) == 4
    (rec,) = logged
    assert rec["train/extra_forwards"] == no_grad
    assert rec["train/graphs_kept"] == (0 if algo == "grpo" else 4 - no_grad)
    assert ("memory/graphs_mb" in rec) == (algo == "bapo" and keep == "auto")
    for hook, rec in zip(seen, logged, strict=True):
        lp, old, adv = hook["inputs"]  # the metrics still see every token of the mini-batch
        assert lp.numel() == rec["tokens/count"] > 0
        if algo == "grpo":
            from bapo import FixedClip, policy_loss

            _, st = policy_loss(lp, old, adv, None, FixedClip(0.8, 1.2))
            assert rec["policy/approx_kl"] == pytest.approx(st.approx_kl, rel=1e-9, abs=1e-12)


GRAPH_KEYS = ("train/graphs_kept", "train/extra_forwards", "memory/graphs_mb")


def test_which_graphs_are_kept_changes_nothing_else(tmp_path, embedded_model):
    """Every way of getting the search's log-probs (all graphs kept, only the first, as many as
    a budget of about half of them allows) gives the same bounds, losses, gradients and metrics."""
    runs = {}
    for name, extra in [("all", ["train.keep_graphs=true"]), ("auto", []),
                        ("first", ["train.keep_graphs=false"])]:  # fmt: skip
        runs[name] = run_updates(tmp_path / name, *extra)
    measured = runs["auto"][0]["memory/graphs_mb"]  # 4 graphs of the first update, all kept
    assert runs["auto"][0]["train/graphs_kept"] == 4 and measured > 0
    runs["half"] = run_updates(tmp_path / "half", f"train.graph_memory_gb={measured / 2 / 1024}")
    assert 1 <= runs["half"][0]["train/graphs_kept"] < 4
    assert runs["half"][0]["memory/graphs_mb"] <= measured / 2
    assert runs["half"][0]["train/extra_forwards"] == 4 - runs["half"][0]["train/graphs_kept"]
    strip = lambda rs: [{k: v for k, v in r.items() if k not in GRAPH_KEYS} for r in rs]  # noqa: E731
    assert strip(runs["all"]) == strip(runs["auto"]) == strip(runs["first"]) == strip(runs["half"])


def run_updates(out, *extra):
    cfg = tiny(out, "bapo", "train.steps=2", "train.micro_batch_size=2", "train.mini_batches=2",
               *extra)  # fmt: skip
    Trainer(cfg).train()
    return [{k: v for k, v in r.items() if not k.startswith(("time/", "speed/"))}
            for r in read_jsonl(out / "updates.jsonl")]  # fmt: skip


@pytest.mark.parametrize(("field", "value", "message"), [
    ("keep_graphs", "yes please", "train.keep_graphs='yes please' is not allowed: use auto, true"),
    ("keep_graphs", "1", "train.keep_graphs=1 is not allowed"),
    ("graph_memory_gb", "0", r"train.graph_memory_gb=0.0 is out of range: allowed \(0, inf\)"),
    ("graph_memory_gb", "-2", r"train.graph_memory_gb=-2.0 is out of range"),
])  # fmt: skip
def test_graph_options_are_checked(tmp_path, field, value, message):
    with pytest.raises(ValueError, match=message):
        tiny(tmp_path, "bapo", f"train.{field}={value}")


# ---------------------------------------------------------------------------------------------
# A run is never lost or silently wrong (issue 13): interrupts at step boundaries, rollback of
# a failed step, run-folder ownership, checkpoints that verify themselves, bookkeeping.
# ---------------------------------------------------------------------------------------------
def _weights(trainer_or_path):
    from safetensors.torch import load_file

    if isinstance(trainer_or_path, Trainer):
        return {k: v.detach().clone() for k, v in trainer_or_path.model.state_dict().items()}
    return load_file(str(trainer_or_path / "model.safetensors"))


def _same_weights(a, b):
    common = set(a) & set(b)
    assert common
    return all(torch.equal(a[k], b[k]) for k in common)


def _rows(path):
    return stable(read_jsonl(path))


def _check_bookkeeping(run, steps):
    metrics, updates = read_jsonl(run / "metrics.jsonl"), read_jsonl(run / "updates.jsonl")
    assert [r["step"] for r in metrics] == list(range(1, steps + 1))
    assert sorted({u["step"] for u in updates}) == list(range(1, steps + 1))
    versions = [u["version"] for u in updates]
    assert versions == sorted(set(versions))  # no update row twice


@pytest.fixture
def reference(tmp_path, embedded_model):
    """An uninterrupted 4-step run at staleness 2 (two optimizer steps a step)."""
    cfg = tiny(tmp_path / "ref", "bapo", "train.steps=4", "train.epochs=2")
    trainer = Trainer(cfg)
    trainer.train()
    return tmp_path / "ref", _weights(trainer)


def _hook_at(step, action, trainer_box, update_index=0):
    """An update hook that runs ``action`` during step ``step`` (1-based), after that step's
    ``update_index``-th optimizer step: mid-step, with the weights already moved."""
    seen = {}

    def hook(u):
        t = trainer_box["t"]
        if t.step + 1 == step:
            seen[step] = seen.get(step, -1) + 1
            if seen[step] == update_index:
                action()

    return hook


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_mid_step_finishes_the_step_saves_and_resumes_identically(
    tmp_path, reference, signum
):
    ref, ref_weights = reference
    run = tmp_path / "run"
    cfg = tiny(run, "bapo", "train.steps=4", "train.epochs=2")
    box = {}
    box["t"] = Trainer(cfg, update_hook=_hook_at(2, lambda: os.kill(os.getpid(), signum), box))
    with pytest.raises(TrainingInterrupted) as e:
        box["t"].train()
    assert e.value.exit_code == 128 + signum and e.value.step == 2
    assert latest_checkpoint(run).name == "checkpoint-2"  # step 2 finished, then the save
    assert [r["step"] for r in read_jsonl(run / "metrics.jsonl")] == [1, 2]
    resumed = Trainer(cfg, resume=True)
    resumed.train()
    assert _rows(run / "metrics.jsonl") == _rows(ref / "metrics.jsonl")
    assert _rows(run / "updates.jsonl") == _rows(ref / "updates.jsonl")
    assert _same_weights(_weights(resumed), ref_weights)
    _check_bookkeeping(run, 4)


def test_ctrl_c_during_evaluation_keeps_the_steps_metrics_row(tmp_path, embedded_model):
    cfg = tiny(tmp_path, "grpo", "train.steps=4", "run.eval_every=2", "run.eval_size=8")
    trainer = Trainer(cfg)
    real = trainer.evaluate

    def evaluate_then_interrupt(n=None):
        os.kill(os.getpid(), signal.SIGINT)  # lands while the evaluation runs
        return real(n)

    trainer.evaluate = evaluate_then_interrupt
    with pytest.raises(TrainingInterrupted):
        trainer.train()
    rows = read_jsonl(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2] and rows[-1]["eval/accuracy"] is not None
    assert latest_checkpoint(tmp_path).name == "checkpoint-2"


def test_a_second_ctrl_c_stops_at_once_without_saving(tmp_path, embedded_model):
    cfg = tiny(tmp_path, "grpo", "train.steps=4", "train.epochs=2")
    box = {}

    def twice():
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGINT)

    box["t"] = Trainer(cfg, update_hook=_hook_at(2, twice, box))
    with pytest.raises(HardInterrupt):
        box["t"].train()
    assert latest_checkpoint(tmp_path) is None  # nothing written for the half step
    assert [r["step"] for r in read_jsonl(tmp_path / "metrics.jsonl")] == [1]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handlers restored


def test_an_error_mid_step_saves_the_previous_step_never_half_a_step(tmp_path, reference):
    ref, ref_weights = reference
    run = tmp_path / "run"
    cfg = tiny(run, "bapo", "train.steps=4", "train.epochs=2")
    box = {}

    def crash():
        raise RuntimeError("verifier exploded")

    box["t"] = Trainer(cfg, update_hook=_hook_at(3, crash, box, update_index=1))
    with pytest.raises(RuntimeError, match="verifier exploded"):
        box["t"].train()
    t = box["t"]
    assert t.step == 2 and t.version == 4  # rolled back to the start of step 3
    assert latest_checkpoint(run).name == "checkpoint-2"
    assert [r["step"] for r in read_jsonl(run / "updates.jsonl")] == [1, 1, 2, 2]
    resumed = Trainer(cfg, resume=True)
    resumed.train()
    assert _rows(run / "metrics.jsonl") == _rows(ref / "metrics.jsonl")
    assert _same_weights(_weights(resumed), ref_weights)
    _check_bookkeeping(run, 4)


def test_the_same_trainer_continues_after_a_failed_step(tmp_path, reference):
    """The rollback restores the live trainer too: calling train() again finishes the run."""
    ref, ref_weights = reference
    cfg = tiny(tmp_path / "run", "bapo", "train.steps=4", "train.epochs=2")
    box, fired = {}, []

    def crash_once():
        if not fired:
            fired.append(1)
            raise RuntimeError("once")

    box["t"] = Trainer(cfg, update_hook=_hook_at(2, crash_once, box, update_index=1))
    with pytest.raises(RuntimeError):
        box["t"].train()
    box["t"].train()
    assert _rows(tmp_path / "run" / "metrics.jsonl") == _rows(ref / "metrics.jsonl")
    assert _same_weights(_weights(box["t"]), ref_weights)


def test_a_fresh_run_refuses_another_runs_folder_unless_overwrite(tmp_path, embedded_model):
    Trainer(tiny(tmp_path, "grpo", "train.steps=3")).train()
    with pytest.raises(ValueError, match="holds another run .checkpoint-3.*--resume"):
        Trainer(tiny(tmp_path, "grpo", "train.steps=2"))
    Trainer(tiny(tmp_path, "grpo", "train.steps=2", "run.overwrite=true")).train()
    assert [d.name for d in checkpoint_dirs(tmp_path)] == ["checkpoint-2"]
    assert [r["step"] for r in read_jsonl(tmp_path / "metrics.jsonl")] == [1, 2]


def test_checkpoints_carry_a_manifest_and_plain_state(tmp_path, embedded_model):
    Trainer(tiny(tmp_path, "grpo", "train.steps=2", "run.save_every=1")).train()
    ckpt = latest_checkpoint(tmp_path)
    manifest = json.loads((ckpt / "manifest.json").read_text())
    assert {"model.safetensors", "tokenizer.json", "trainer_state.pt", "config.yaml"} <= set(
        manifest["files"]
    )
    assert manifest["files"]["model.safetensors"]["size"] == (
        (ckpt / "model.safetensors").stat().st_size
    )
    assert verify_checkpoint(ckpt) is None
    state = torch.load(ckpt / "trainer_state.pt", weights_only=True)  # no pickled objects
    assert state["step"] == 2 and state["nonfinite_in_a_row"] == 0


@pytest.mark.parametrize(
    "damage, what",
    [
        ("flip", "model.safetensors does not match its checksum"),
        ("truncate", "trainer_state.pt has"),
        ("delete", "config.json is missing"),
        ("manifest", "no manifest.json"),
    ],
)
def test_resume_falls_back_to_the_newest_intact_checkpoint(tmp_path, embedded_model, damage, what):
    cfg = tiny(tmp_path, "grpo", "train.steps=3", "run.save_every=1", "run.keep_checkpoints=3")
    Trainer(cfg).train()
    last = tmp_path / "checkpoint-3"
    if damage == "flip":
        f = last / "model.safetensors"
        data = bytearray(f.read_bytes())
        data[-10] ^= 0xFF
        f.write_bytes(bytes(data))
    elif damage == "truncate":
        f = last / "trainer_state.pt"
        f.write_bytes(f.read_bytes()[:100])
    elif damage == "delete":
        (last / "config.json").unlink()
    else:
        (last / "manifest.json").unlink()
    with pytest.warns(UserWarning, match=f"checkpoint-3 is damaged .{what}"):
        trainer = Trainer(cfg, resume=True)
    assert trainer.step == 2
    assert (tmp_path / "checkpoint-3.damaged").is_dir()  # kept to look at, never resumed
    trainer.train()
    assert [r["step"] for r in read_jsonl(tmp_path / "metrics.jsonl")] == [1, 2, 3]
    assert verify_checkpoint(tmp_path / "checkpoint-3") is None


def test_resume_refuses_when_no_checkpoint_is_intact(tmp_path, embedded_model):
    cfg = tiny(tmp_path, "grpo", "train.steps=2", "run.save_every=1")
    Trainer(cfg).train()
    for d in checkpoint_dirs(tmp_path):
        (d / "trainer_state.pt").write_bytes(b"torn")
    with pytest.raises(CheckpointError, match="no intact checkpoint.*checkpoint-2: trainer_state"):
        Trainer(cfg, resume=True)


def test_a_failed_resave_keeps_the_old_checkpoint(tmp_path, embedded_model, monkeypatch):
    """keep_checkpoints=1: re-saving a step never deletes the old folder before the new one is
    in place."""
    cfg = tiny(tmp_path, "grpo", "train.steps=1", "run.keep_checkpoints=1")
    trainer = Trainer(cfg)
    trainer.train()
    before = _weights(tmp_path / "checkpoint-1")

    def broken(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(trainer.model, "save_pretrained", broken)
    with pytest.raises(OSError, match="disk full"):
        trainer.save()
    assert verify_checkpoint(tmp_path / "checkpoint-1") is None
    assert _same_weights(_weights(tmp_path / "checkpoint-1"), before)
    monkeypatch.undo()
    trainer.save()  # a re-save that completes replaces it and leaves nothing aside
    assert sorted(p.name for p in tmp_path.iterdir() if "checkpoint" in p.name) == ["checkpoint-1"]


def test_a_save_killed_between_its_renames_is_recovered(tmp_path, embedded_model):
    Trainer(tiny(tmp_path, "grpo", "train.steps=1")).train()
    (tmp_path / "checkpoint-1").rename(tmp_path / ".old-checkpoint-1")  # the kill's leftovers
    assert latest_checkpoint(tmp_path).name == "checkpoint-1"
    assert verify_checkpoint(tmp_path / "checkpoint-1") is None


def test_the_metrics_rewrite_at_resume_is_atomic(tmp_path, monkeypatch):
    from bapo.train.metrics import MetricsLogger

    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps({"step": s}) + "\n" for s in range(1, 25)))

    def killed(*a):
        raise KeyboardInterrupt  # a kill while the kept rows are being written

    monkeypatch.setattr(os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        MetricsLogger(path, keep_until_step=11)
    assert [r["step"] for r in read_jsonl(path)] == list(range(1, 25))  # nothing lost
    monkeypatch.undo()
    MetricsLogger(path, keep_until_step=11).close()
    assert [r["step"] for r in read_jsonl(path)] == list(range(1, 12))


def test_the_nonfinite_counter_is_part_of_the_state(tmp_path, embedded_model):
    trainer = Trainer(tiny(tmp_path, "grpo", "train.steps=1"))
    trainer.train()
    trainer.nonfinite_in_a_row = 2
    trainer.save()
    assert Trainer(tiny(tmp_path, "grpo", "train.steps=1"), resume=True).nonfinite_in_a_row == 2


def test_a_model_folder_without_its_tokenizer_is_a_clear_error(tmp_path, embedded_model):
    import shutil

    from bapo.models import load_model

    model, _ = embedded_model
    folder = tmp_path / "model"
    shutil.copytree(model.name_or_path, folder)
    (folder / "tokenizer.json").unlink()
    with pytest.raises(FileNotFoundError, match="has no tokenizer.json"):
        load_model(str(folder))


def test_a_failed_save_after_an_error_raises_the_steps_own_error(tmp_path, embedded_model):
    cfg = tiny(tmp_path, "grpo", "train.steps=3")
    box = {}

    def crash():
        box["t"].model.save_pretrained = broken  # the rescue save fails too
        raise RuntimeError("the step's own error")

    def broken(*a, **k):
        raise OSError("disk full")

    box["t"] = Trainer(cfg, update_hook=_hook_at(2, crash, box))
    with pytest.raises(RuntimeError, match="the step's own error"):
        box["t"].train()
    assert latest_checkpoint(tmp_path) is None


@pytest.mark.parametrize(
    "scenario", [["offpolicy.replay_fraction=0.5", "offpolicy.replay_max_age=4"],
                 ["offpolicy.partial_budget=2", "rollout.max_new_tokens=6"]],
    ids=["replay", "partial"],
)  # fmt: skip
def test_rollback_restores_the_replay_buffer_and_unfinished_rollouts(
    tmp_path, embedded_model, scenario
):
    over = ["train.steps=5", "train.epochs=2", *scenario]
    ref = Trainer(tiny(tmp_path / "ref", "bapo", *over))
    ref.train()
    box, fired = {}, []

    def crash_once():
        if not fired:
            fired.append(1)
            raise RuntimeError("once")

    box["t"] = Trainer(tiny(tmp_path / "run", "bapo", *over),
                       update_hook=_hook_at(4, crash_once, box, update_index=1))  # fmt: skip
    with pytest.raises(RuntimeError):
        box["t"].train()
    assert box["t"].step == 3
    resumed = Trainer(tiny(tmp_path / "run", "bapo", *over), resume=True)
    resumed.train()
    assert _rows(tmp_path / "run" / "metrics.jsonl") == _rows(tmp_path / "ref" / "metrics.jsonl")
    assert _rows(tmp_path / "run" / "updates.jsonl") == _rows(tmp_path / "ref" / "updates.jsonl")
    assert _same_weights(_weights(resumed), _weights(ref))


def test_progress_bar_only_where_someone_watches(monkeypatch):
    import io
    import sys

    from bapo.train.trainer import _progress

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    monkeypatch.delitem(sys.modules, "ipykernel", raising=False)
    assert _progress(True, 10, 0, stream=io.StringIO()) is None  # a pipe or a log file
    assert _progress(False, 10, 0, stream=Terminal()) is None  # run.progress=false
    bar = _progress(True, 10, 0, stream=Terminal())
    assert bar is not None and bar.total == 10
    bar.close()


def test_resume_warns_about_every_changed_field_but_the_length_and_the_logging(tmp_path,
                                                                             embedded_model):  # fmt: skip
    Trainer(tiny(tmp_path, "bapo", "train.steps=1")).train()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a longer run with other logging: nothing to say
        Trainer(tiny(tmp_path, "bapo", "train.steps=2", "run.save_every=5"), resume=True).train()
    with pytest.warns(UserWarning, match="differs") as caught:
        Trainer(tiny(tmp_path, "bapo", "train.steps=3", "train.lr=0.002", "algo.rho0=0.5"),
                resume=True).train()  # fmt: skip
    (message,) = [str(w.message) for w in caught if "differs" in str(w.message)]
    assert "checkpoint-2" in message
    lr = tiny(tmp_path).train.lr
    assert f"train.lr: {lr} -> 0.002" in message and "algo.rho0: 0.4 -> 0.5" in message
    assert "train.steps" not in message and "run." not in message


def test_float16_on_cpu_is_refused_before_anything_runs(tmp_path):
    with pytest.raises(ValueError, match="model.dtype='float16' is not allowed on CPU"):
        Trainer(tiny(tmp_path, "bapo", "model.dtype=float16", "model.device=cpu"))
    assert not any(tmp_path.glob("checkpoint-*"))
