"""Checkpoints: the model and tokenizer in Hugging Face format, plus the trainer's state
(optimizer, scheduler, RNG, step, counters) and the config, with a manifest of every file's size
and SHA-256.

A save is atomic: the files are written into ``.tmp-checkpoint-<step>``, flushed to disk, the
manifest last, and the folder is renamed into place.  A folder of the same step is moved aside
before the rename and deleted only after it, so a kill at any point leaves an intact checkpoint
(:func:`checkpoint_dirs` puts a moved-aside one back).  Resume verifies the manifest of the
newest checkpoint and falls back to the newest intact one (:func:`resumable_checkpoint`).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
from pathlib import Path

import numpy as np
import torch

STATE_FILE = "trainer_state.pt"
MANIFEST_FILE = "manifest.json"
_NAME = re.compile(r"checkpoint-(\d+)")
_ASIDE = re.compile(r"\.old-checkpoint-(\d+)")


class CheckpointError(ValueError):
    """No intact checkpoint to resume from (the message says what is wrong with each)."""


# ----------------------------------------------------------------------------------------------
# Finding checkpoints
# ----------------------------------------------------------------------------------------------
def checkpoint_step(path: str | Path) -> int:
    return int(_NAME.fullmatch(Path(path).name).group(1))


def checkpoint_dirs(out_dir: str | Path) -> list[Path]:
    """``checkpoint-<step>`` folders, oldest first (intact or not; see :func:`verify_checkpoint`)."""
    out = Path(out_dir)
    if not out.is_dir():
        return []
    _recover_aside(out)
    dirs = [p for p in out.iterdir() if p.is_dir() and _NAME.fullmatch(p.name)]
    return sorted(dirs, key=checkpoint_step)


def latest_checkpoint(out_dir: str | Path) -> Path | None:
    dirs = checkpoint_dirs(out_dir)
    return dirs[-1] if dirs else None


def _recover_aside(out: Path) -> None:
    """A save killed between moving the old folder aside and renaming the new one into place
    leaves ``.old-checkpoint-<step>`` alone: put it back.  Next to a complete new one, drop it."""
    for p in out.iterdir():
        m = _ASIDE.fullmatch(p.name)
        if m is None:
            continue
        final = out / f"checkpoint-{m.group(1)}"
        if final.exists():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.rename(final)


def verify_checkpoint(path: str | Path) -> str | None:
    """``None`` when every file the manifest lists is there with its size and SHA-256; else
    what is wrong, in a few words."""
    path = Path(path)
    try:
        manifest = json.loads((path / MANIFEST_FILE).read_text())
        files = manifest["files"]
    except FileNotFoundError:
        return f"no {MANIFEST_FILE}"
    except (OSError, ValueError, KeyError, TypeError):
        return f"{MANIFEST_FILE} is unreadable"
    if STATE_FILE not in files:
        return f"{MANIFEST_FILE} lists no {STATE_FILE}"
    for name, want in sorted(files.items()):
        f = path / name
        if not f.is_file():
            return f"{name} is missing"
        size = f.stat().st_size
        if size != want["size"]:
            return f"{name} has {size} bytes, the manifest says {want['size']}"
        if _sha256(f) != want["sha256"]:
            return f"{name} does not match its checksum"
    return None


def resumable_checkpoint(out_dir: str | Path) -> tuple[Path, list[str]]:
    """The newest intact checkpoint and a line for each newer one that is not.

    The damaged ones are renamed ``checkpoint-<step>.damaged`` (kept for inspection, never
    resumed, and never winning the pruning of the resumed run's own checkpoints)."""
    dirs = checkpoint_dirs(out_dir)
    if not dirs:
        raise FileNotFoundError(f"--resume: no checkpoint under {out_dir}")
    problems = []
    for d in reversed(dirs):
        what = verify_checkpoint(d)
        if what is None:
            for bad, _ in problems:
                bad.rename(bad.with_name(bad.name + ".damaged"))
            return d, [f"{bad.name} is damaged ({why}); resuming from {d.name}" for bad, why in problems]  # fmt: skip
        problems.append((d, what))
    listed = "; ".join(f"{d.name}: {why}" for d, why in problems)
    raise CheckpointError(f"--resume: no intact checkpoint under {out_dir} ({listed})")


# ----------------------------------------------------------------------------------------------
# RNG state as plain types and tensors (so the state loads with weights_only=True)
# ----------------------------------------------------------------------------------------------
def rng_state() -> dict:
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "python": [version, list(internal), gauss],
        "numpy": [
            kind,
            torch.from_numpy(keys.astype(np.int64)),
            int(pos),
            int(has_gauss),
            float(cached),
        ],  # fmt: skip
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }


def set_rng_state(state: dict) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ----------------------------------------------------------------------------------------------
# Writing
# ----------------------------------------------------------------------------------------------
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
    """Write ``checkpoint-<step>`` atomically (with its manifest) and prune older ones beyond
    ``keep``.  ``state`` must hold plain types and tensors (it is loaded with weights_only)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    final = out / f"checkpoint-{step}"
    tmp = out / f".tmp-checkpoint-{step}"
    aside = out / f".old-checkpoint-{step}"
    shutil.rmtree(tmp, ignore_errors=True)
    from bapo.models import no_progress_bars

    with no_progress_bars():  # no "Writing model shards" bar per checkpoint
        model.save_pretrained(tmp, safe_serialization=True)
    if tokenizer is not None:
        tokenizer.save_pretrained(tmp)
    torch.save({**state, "step": step}, tmp / STATE_FILE)
    (tmp / "config.yaml").write_text(config_yaml)
    for f in extra_files:
        shutil.copy2(f, tmp / Path(f).name)
    files = {}
    for f in sorted(p for p in tmp.rglob("*") if p.is_file()):
        _fsync(f)
        files[f.relative_to(tmp).as_posix()] = {"size": f.stat().st_size, "sha256": _sha256(f)}
    manifest = {"step": step, "files": files}
    (tmp / MANIFEST_FILE).write_text(json.dumps(manifest, indent=1))
    _fsync(tmp / MANIFEST_FILE)
    _fsync(tmp)
    _recover_aside(out)
    if final.exists():  # re-saving a step: the old folder goes only once the new one is there
        final.rename(aside)
    tmp.rename(final)
    _fsync(out)
    shutil.rmtree(aside, ignore_errors=True)
    for old in checkpoint_dirs(out)[: -max(keep, 1)]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load_state(checkpoint: str | Path) -> dict:
    """The trainer state, unpickled with ``weights_only=True`` (tensors and plain types only)."""
    path = Path(checkpoint) / STATE_FILE
    try:
        return torch.load(path, weights_only=True)
    except Exception as e:  # a torn or foreign file: say which one
        raise CheckpointError(f"{path} cannot be loaded ({type(e).__name__})") from e


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``path`` aside, flush it to disk, then rename it over the old one."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync(path.parent)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _fsync(path: Path) -> None:
    """Flush a file or a folder's entries to disk (best effort where a folder cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
