"""Checkpoints: the model and tokenizer in Hugging Face format, plus the trainer's state
(optimizer, scheduler, RNG, step) and the config.  Written to a temporary folder and renamed,
so an interrupted save never leaves a half checkpoint, and the last ``keep`` are kept."""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import numpy as np
import torch

STATE_FILE = "trainer_state.pt"


def checkpoint_dirs(out_dir: str | Path) -> list[Path]:
    out = Path(out_dir)
    if not out.exists():
        return []
    dirs = [p for p in out.glob("checkpoint-*") if (p / STATE_FILE).exists()]
    return sorted(dirs, key=lambda p: int(p.name.split("-")[1]))


def latest_checkpoint(out_dir: str | Path) -> Path | None:
    dirs = checkpoint_dirs(out_dir)
    return dirs[-1] if dirs else None


def rng_state() -> dict:
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(
    out_dir: str | Path,
    step: int,
    model,
    tokenizer,
    state: dict,
    config_yaml: str,
    keep: int = 2,
    extra_files: list[Path] = (),
) -> Path:
    """Write ``checkpoint-<step>`` atomically and prune older ones beyond ``keep``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    final = out / f"checkpoint-{step}"
    tmp = out / f".tmp-checkpoint-{step}"
    shutil.rmtree(tmp, ignore_errors=True)
    from bapo.models import no_progress_bars

    with no_progress_bars():  # no "Writing model shards" bar per checkpoint
        model.save_pretrained(tmp, safe_serialization=True)
    if tokenizer is not None:
        tokenizer.save_pretrained(tmp)
    torch.save({**state, "rng": rng_state(), "step": step}, tmp / STATE_FILE)
    (tmp / "config.yaml").write_text(config_yaml)
    for f in extra_files:
        shutil.copy2(f, tmp / Path(f).name)
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)
    for old in checkpoint_dirs(out)[: -max(keep, 1)]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load_state(checkpoint: str | Path) -> dict:
    return torch.load(Path(checkpoint) / STATE_FILE, weights_only=False)
