"""Sample replay and partial rollouts (Section 5.3)."""

import random

import pytest
import torch

from bapo.train.config import load_config
from bapo.train.logprobs import completion_logprobs, pack
from bapo.train.metrics import read_jsonl
from bapo.train.offpolicy import ReplayBuffer, Sample
from bapo.train.trainer import Trainer


def cfg_for(tmp_path, *extra):
    over = [
        "train.steps=4", "train.prompts_per_step=4", "train.group_size=4",
        "run.eval_every=0", "run.progress=false", f"run.out_dir={tmp_path}",
    ]  # fmt: skip
    return load_config("cpu-tiny", algo="bapo", overrides=over + list(extra))


def stable(records):
    return [
        {k: v for k, v in r.items() if not k.startswith(("time/", "speed/", "memory/"))}
        for r in records
    ]


def sample(version: int, adv: float = 1.0) -> Sample:
    return Sample([1], [5, 2], [-0.1, -0.2], 1.0, adv, versions=[version, version + 1])


def test_replay_buffer_ages_and_bounds():
    buf = ReplayBuffer(max_size=3, max_age=2)
    buf.add([sample(0), sample(0, adv=0.0)], version=1)  # A = 0 carries no signal: not kept
    assert len(buf) == 1 and buf.ages(1) == [1]
    buf.add([sample(1)], version=2)
    assert buf.ages(2) == [2, 1]  # every sample ages by one per policy version
    buf.add([sample(2), sample(2), sample(2)], version=3)
    assert len(buf) == 3  # size bound: the oldest went first
    assert all(a <= 2 for a in buf.ages(3))
    buf.evict(version=6)  # all older than max_age now
    assert len(buf) == 0
    with pytest.raises(ValueError, match="offpolicy.replay_size=0"):
        ReplayBuffer(0, 1)


def test_replay_draw_is_bounded_and_reproducible():
    buf = ReplayBuffer(max_size=10, max_age=5)
    buf.add([sample(v) for v in range(5)], version=5)
    a = buf.draw(3, random.Random(0), version=5)
    b = buf.draw(3, random.Random(0), version=5)
    assert a == b and len(a) == 3
    assert len(buf.draw(50, random.Random(1), version=5)) == len(buf)


def test_partial_rollout_keeps_each_segments_behaviour_logprobs(tmp_path, embedded_model):
    cfg = cfg_for(tmp_path, "rollout.max_new_tokens=6", "offpolicy.partial_budget=2",
                  "train.steps=5")  # fmt: skip
    trainer = Trainer(cfg)
    segments = {}  # id(trajectory) -> [(start, logprobs, version)]
    alive = []  # keep every trajectory referenced so no id() is ever reused

    def record(tr, start, lp):
        alive.append(tr)
        segments.setdefault(id(tr), []).append((start, list(lp), trainer.version))

    trainer.segment_hook = record
    seen = []
    original = trainer.rollout

    def capture():
        samples, metrics = original()
        seen.append((samples, metrics, {id(s): s for s in samples}))
        return samples, metrics

    trainer.rollout = capture
    records = trainer.train()
    assert any(r["offpolicy/carried_over"] > 0 for r in records)
    multi = [s for samples, _, _ in seen for s in samples if len(set(s.versions)) > 1]
    assert multi, "no trajectory spanned two policy versions"
    for s in multi:
        # find the trajectory's segments by matching the concatenated log-probs
        matches = [segs for segs in segments.values()
                   if sum((lp for _, lp, _ in segs), []) == s.behaviour_logprobs]  # fmt: skip
        assert matches, "a sample's behaviour log-probs are not its segments' log-probs"
        segs = matches[0]
        versions = sum(([v] * len(lp) for _, lp, v in segs), [])
        assert versions == s.versions
        assert [start for start, _, _ in segs] == sorted(start for start, _, _ in segs)
    # the first segment really is an older policy's: today's policy gives other log-probs
    s = multi[0]
    first = s.versions.count(s.versions[0])
    packed = pack([s.prompt_ids], [s.completion_ids], trainer.pad_id)
    with torch.no_grad():
        now, _ = completion_logprobs(trainer.model, packed)
    assert not torch.allclose(now[0, :first], torch.tensor(s.behaviour_logprobs[:first]))
    spans = [r["offpolicy/versions_spanned_max"] for r in records]
    assert max(spans) >= 2


def test_replay_ages_are_logged_and_bounded(tmp_path, embedded_model):
    cfg = cfg_for(tmp_path, "offpolicy.replay_fraction=0.5", "offpolicy.replay_max_age=2",
                  "offpolicy.replay_size=20", "train.steps=5")  # fmt: skip
    records = Trainer(cfg).train()
    assert records[0]["offpolicy/replayed"] == 0  # nothing to replay yet
    assert any(r["offpolicy/replayed"] > 0 for r in records[1:])
    for r in records:
        assert r["offpolicy/replay_age_max"] <= 2 and r["offpolicy/buffer_size"] <= 20
    updates = read_jsonl(tmp_path / "updates.jsonl")
    assert max(u["offpolicy/age_max"] for u in updates) >= 1  # replayed tokens are older


@pytest.mark.parametrize(
    "extra",
    [("offpolicy.partial_budget=2", "rollout.max_new_tokens=6"),
     ("offpolicy.replay_fraction=0.5", "offpolicy.replay_max_age=3")],
)  # fmt: skip
def test_resume_restores_buffer_and_unfinished_trajectories(tmp_path, embedded_model, extra):
    Trainer(cfg_for(tmp_path / "full", *extra)).train()
    Trainer(cfg_for(tmp_path / "part", "train.steps=2", *extra)).train()
    resumed = Trainer(cfg_for(tmp_path / "part", *extra), resume=True)
    assert resumed.step == 2
    if "offpolicy.partial_budget=2" in extra:
        assert resumed.pending  # unfinished trajectories came back
    else:
        assert len(resumed.replay) > 0
    resumed.train()
    full = read_jsonl(tmp_path / "full" / "metrics.jsonl")
    part = read_jsonl(tmp_path / "part" / "metrics.jsonl")
    assert [r["step"] for r in part] == [1, 2, 3, 4]
    assert stable(part) == stable(full)


def test_offpolicy_config_errors_name_the_field(tmp_path):
    with pytest.raises(ValueError, match="offpolicy.replay_fraction=1.0"):
        cfg_for(tmp_path, "offpolicy.replay_fraction=1.0")
    with pytest.raises(ValueError, match="offpolicy.partial_budget=-1"):
        cfg_for(tmp_path, "offpolicy.partial_budget=-1")
