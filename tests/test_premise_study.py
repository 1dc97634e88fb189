"""scripts/premise_study.py: one real (short) run per arm, results that resume, and the tables."""

import importlib
import json
from pathlib import Path

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def test_study_runs_resumes_and_writes_tables(tmp_path, capsys, monkeypatch):
    monkeypatch.syspath_prepend(str(SCRIPTS))  # importable by name, so worker processes find it
    study = importlib.import_module("premise_study")
    argv = ["--preset", "cpu-guess", "--algos", "grpo,bapo", "--staleness", "1,2", "--seeds", "1",
            "--jobs", "1", "--out", str(tmp_path), "train.steps=4", "train.prompts_per_step=4",
            "run.eval_every=0"]  # fmt: skip
    assert study.main(argv) == 0
    rows = [json.loads(x) for x in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert sorted((r["algo"], r["staleness"]) for r in rows) == [
        ("bapo", 1), ("bapo", 2), ("grpo", 1), ("grpo", 2)
    ]  # fmt: skip
    for r in rows:
        assert r["updates"] == 4  # matched by updates at both levels
        n = sum(r["quadrants_n"].values())
        assert n > 0 and set(r["quadrants_kept"]) == set(r["quadrants_clipped"])
    by = {(r["algo"], r["staleness"]): r for r in rows}
    # on-policy, nothing is clipped, so the bounds cannot matter: GRPO and BAPO are one run
    assert by["grpo", 1]["premise"] == by["bapo", 1]["premise"]
    assert by["grpo", 1]["clip_high"] == by["grpo", 1]["clip_low"] == 0.0
    tables = (tmp_path / "tables.md").read_text()
    assert "| grpo | 2 | 1 |" in tables and "Table 4" in tables
    capsys.readouterr()
    assert study.main(argv) == 0  # a second call finds every run done
    assert "0 runs to go (4 already" in capsys.readouterr().out
    assert len((tmp_path / "results.jsonl").read_text().splitlines()) == 4
