"""The glossary stays true: every key the trainer logs is described, and the docs page is fresh."""

from pathlib import Path

import pytest

from bapo import glossary
from bapo.train.config import load_config
from bapo.train.metrics import read_jsonl
from bapo.train.trainer import Trainer

DOCS = Path(__file__).resolve().parents[1] / "docs" / "glossary.md"

# options that change which keys are logged, or how: replay adds offpolicy/replay_*; partial
# rollouts carry completions over steps (a step where no group finishes logs no update), so that
# run lasts until its 8-token completions, grown 2 tokens a step, have finished
OPTIONS = {
    "plain": [],
    "replay": ["offpolicy.replay_fraction=0.5"],
    "partial": ["offpolicy.partial_budget=2", "train.steps=4"],
}
RUNS = [(algo, option) for algo in ("grpo", "bapo") for option in OPTIONS]


@pytest.fixture(scope="module")
def logged(tmp_path_factory, embedded_model):
    """Keys of metrics.jsonl and updates.jsonl of a short real run per (algo, option)."""
    out = {}
    for algo, option in RUNS:
        out_dir = tmp_path_factory.mktemp(f"{algo}-{option}")
        over = [
            "train.steps=2", "train.prompts_per_step=2", "train.group_size=4",
            "run.eval_every=1", "run.eval_size=4", "run.progress=false", f"run.out_dir={out_dir}",
        ]  # fmt: skip
        Trainer(load_config("cpu-tiny", algo=algo, overrides=over + OPTIONS[option])).train()
        steps = read_jsonl(out_dir / "metrics.jsonl")
        updates = read_jsonl(out_dir / "updates.jsonl")
        assert len(steps) == load_config("cpu-tiny", overrides=over + OPTIONS[option]).train.steps
        assert updates, f"{algo}/{option}: no update was logged"
        out[algo, option] = (
            {k for r in steps for k in r},
            {k for r in updates for k in r},
        )
    return out


@pytest.mark.parametrize("algo, option", RUNS)
def test_every_logged_key_is_described(logged, algo, option):
    step_keys, update_keys = logged[algo, option]
    assert glossary.undescribed(step_keys) == [], "metrics.jsonl keys missing from bapo/glossary.py"
    assert glossary.undescribed(update_keys) == [], "updates.jsonl keys missing from the glossary"
    assert {"step", "eval/accuracy", "bapo/rho", "time/wall_s"} <= step_keys
    if option == "replay":
        assert {"offpolicy/replayed", "offpolicy/buffer_size"} <= step_keys


def test_every_described_metric_is_logged_somewhere(logged):
    """No stale entries: each metric of the glossary is written by one of the runs above."""
    seen = set().union(*(s | u for s, u in logged.values()))
    assert sorted(set(glossary.METRICS) - seen) == []


def test_docs_page_is_the_generated_markdown():
    assert DOCS.read_text() == glossary.markdown(), (
        "docs/glossary.md is stale: python -m bapo.glossary > docs/glossary.md"
    )
    assert glossary.markdown().splitlines()[0].startswith("# ")


def test_unknown_name_raises_keyerror_naming_it():
    with pytest.raises(KeyError, match="no/such_metric"):
        glossary.describe("no/such_metric")
    with pytest.raises(KeyError, match="did you mean 'bapo/rho'"):
        glossary.describe("bapo/rhoo")


def test_entries_are_one_line_with_a_unit():
    for table in (glossary.METRICS, glossary.SYMBOLS):
        for name, e in table.items():
            assert e.name == name and e.meaning and e.unit and e.where, name
            line = glossary.hover(name)
            assert "\n" not in line and line == f"{name}: {e.meaning} [{e.unit}]"


def test_symbols_and_aliases():
    for name in ["r", "A", "X", "rho", "rho0", "c_low", "c_high", "a-", "b-", "a+", "b+",
                 "delta1", "delta2", "staleness", "pi_theta", "pi_rollout", "approx_kl", "H",
                 "dual_clip", "clip_frac", "ages"]:  # fmt: skip
        assert glossary.describe(name) is glossary.SYMBOLS[name]
    assert "Eq. 7" in glossary.describe("X").meaning
    assert "Eq. 8" in glossary.describe("rho").meaning
    assert "Algorithm 1" in glossary.describe("delta1").meaning
    assert glossary.describe("ρ") is glossary.SYMBOLS["rho"]
    assert glossary.describe("a_minus") is glossary.SYMBOLS["a-"]
    for alias, target in glossary.ALIASES.items():
        assert target in glossary.SYMBOLS, alias
