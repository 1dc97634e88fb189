"""Kill-and-resume soak: interrupted runs must resume to exactly the uninterrupted run.

    python scripts/soak.py --trials 30 --scenarios default,replay,partial --out runs/soak

Each trial starts ``bapo train --preset cpu-tiny`` (12 steps by default, a checkpoint every 3)
in its own folder, sends SIGKILL, SIGINT or SIGTERM at a random point (after a random number of
finished steps, then a random fraction of a step: inside a rollout, an update, an evaluation or
a checkpoint write), sometimes twice, and resumes with ``--resume`` until the run completes.
Some trials also damage the newest checkpoint before resuming (resume must fall back to an
intact one).  A trial passes when:

* SIGINT / SIGTERM exit with 130 / 143 (or 0 if the run had already finished), without a
  traceback, and leave a checkpoint of the last step whose metrics row was written;
* the finished run's ``metrics.jsonl`` and ``updates.jsonl`` rows (all but timings) and final
  weights equal those of the uninterrupted run of the same scenario.

Prints one line per trial and a summary; exits 1 if any trial failed.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

COMMON = ["train.steps=12", "train.prompts_per_step=4", "train.group_size=4",
          "run.eval_every=4", "run.eval_size=8", "run.save_every=3", "run.progress=false"]  # fmt: skip
SCENARIOS = {
    "default": [],
    "replay": ["--scenario", "replay"],
    "partial": ["--scenario", "partial"],
}
KINDS = {"kill": signal.SIGKILL, "int": signal.SIGINT, "term": signal.SIGTERM}
VOLATILE = ("time/", "speed/", "memory/")


def train_argv(out: Path, scenario: str, steps: int, *extra: str) -> list[str]:
    common = [c for c in COMMON if not c.startswith("train.steps=")] + [f"train.steps={steps}"]
    return [sys.executable, "-m", "bapo.cli", "train", "--preset", "cpu-tiny", "--out", str(out),
            *SCENARIOS[scenario], *common, *extra]  # fmt: skip


def rows(path: Path) -> list[dict]:
    from bapo.train.metrics import read_jsonl

    return [{k: v for k, v in r.items() if not k.startswith(VOLATILE)} for r in read_jsonl(path)]


def n_rows(out: Path) -> int:
    try:
        return sum(1 for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip())
    except FileNotFoundError:
        return 0


def final_weights(out: Path, steps: int) -> dict:
    from safetensors.torch import load_file

    return load_file(str(out / f"checkpoint-{steps}" / "model.safetensors"))


def reference(out: Path, scenario: str, steps: int) -> dict:
    """The uninterrupted run: its rows, weights and mean step time."""
    done = out / "metrics.jsonl"
    if not (out / f"checkpoint-{steps}").is_dir():
        subprocess.run(train_argv(out, scenario, steps, "run.overwrite=true"), check=True,
                       stdout=subprocess.DEVNULL)  # fmt: skip
    from bapo.train.metrics import read_jsonl

    step_s = [r["time/step_s"] for r in read_jsonl(done)]
    return {"metrics": rows(done), "updates": rows(out / "updates.jsonl"),
            "weights": final_weights(out, steps), "step_s": sum(step_s) / len(step_s)}  # fmt: skip


def interrupt(argv: list[str], out: Path, sig: int, rng: random.Random, steps: int, step_s: float):
    """Start ``argv``, wait for a random number of finished steps and a random part of the next
    one, send ``sig``; returns (exit code, stderr, where the signal was aimed)."""
    t0 = time.time_ns()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    while proc.poll() is None and not _written_since(out / "config.yaml", t0):
        time.sleep(0.01)  # the model is loading; train() has not started
    start = n_rows(out)  # train() has dropped any rows past the checkpoint it resumed from
    target = rng.randrange(0, max(steps - start, 1))
    frac = rng.random()
    while proc.poll() is None and n_rows(out) < start + target:
        time.sleep(0.005)
    time.sleep(frac * step_s * 1.5)
    if proc.poll() is None:
        proc.send_signal(sig)
    _, err = proc.communicate()
    return proc.returncode, err, f"step {start + target + 1}+{frac:.2f}"


def _written_since(path: Path, t0_ns: int) -> bool:
    try:
        return path.stat().st_mtime_ns >= t0_ns
    except FileNotFoundError:
        return False


def check_stop(out: Path, sig: int, code: int, err: str) -> str | None:
    """What is wrong with how a SIGINT/SIGTERM run stopped, or None.

    A signal that arrives while train() does not hold the signals - before it takes them over
    (the soak waits for train() to rewrite config.yaml, which it does after taking them over)
    or after the run has finished and given them back - stops the process the default way
    (-2 / -15, the shell's 130 / 143) with no step in progress: accepted, with nothing to check
    here (the resume must still come out identical)."""
    from bapo.train.checkpoint import latest_checkpoint

    if sig == signal.SIGKILL:
        return None if code in (-signal.SIGKILL, 0) else f"SIGKILL exit code {code}"
    if code == -sig:
        return None
    if code not in (128 + sig, 0):
        return f"{signal.Signals(sig).name} exit code {code}, expected {128 + sig}: {err[-300:]}"
    if "Traceback" in err:
        return f"traceback on {signal.Signals(sig).name}: {err[-300:]}"
    n = n_rows(out)
    last = latest_checkpoint(out)
    if n and (last is None or last.name != f"checkpoint-{n}"):
        return f"{n} metrics rows but latest checkpoint {last and last.name}"
    return None


def corrupt_latest(out: Path) -> str | None:
    from bapo.train.checkpoint import latest_checkpoint

    last = latest_checkpoint(out)
    if last is None:
        return None
    f = last / "model.safetensors"
    data = bytearray(f.read_bytes())
    data[len(data) // 2] ^= 0xFF
    f.write_bytes(bytes(data))
    return last.name


def trial(out: Path, scenario: str, kinds: list[str], ref: dict, rng: random.Random,
          steps: int, corrupt: bool = False) -> tuple[bool, str]:  # fmt: skip
    """Interrupt a run once per entry of ``kinds``, resume it to the end, compare."""
    import torch

    notes = []
    argv = train_argv(out, scenario, steps)
    for kind in kinds:
        from bapo.train.checkpoint import latest_checkpoint

        resume = latest_checkpoint(out) is not None
        code, err, where = interrupt(argv + (["--resume"] if resume else []), out, KINDS[kind],
                                     rng, steps, ref["step_s"])  # fmt: skip
        notes.append(f"{kind}@{where}->{code}")
        problem = check_stop(out, KINDS[kind], code, err)
        if problem:
            return False, " ".join(notes) + f": {problem}"
    if corrupt:
        notes.append(f"corrupted {corrupt_latest(out)}")
    from bapo.train.checkpoint import latest_checkpoint

    resume = ["--resume"] if latest_checkpoint(out) is not None else []
    done = subprocess.run(argv + resume, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                          text=True)  # fmt: skip
    if done.returncode == 2 and "no intact checkpoint" in done.stderr:
        notes.append("none intact: fresh run")
        done = subprocess.run(argv + ["run.overwrite=true"], stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True)  # fmt: skip
    if done.returncode != 0:
        return False, " ".join(
            notes
        ) + f": resume exit code {done.returncode}: {done.stderr[-300:]}"
    if "damaged" in done.stderr:
        notes.append("fell back")
    if rows(out / "metrics.jsonl") != ref["metrics"]:
        return False, " ".join(notes) + ": metrics rows differ from the uninterrupted run"
    if rows(out / "updates.jsonl") != ref["updates"]:
        return False, " ".join(notes) + ": update rows differ from the uninterrupted run"
    weights = final_weights(out, steps)
    if weights.keys() != ref["weights"].keys() or not all(
        torch.equal(weights[k], ref["weights"][k]) for k in weights
    ):
        return False, " ".join(notes) + ": final weights differ"
    return True, " ".join(notes)


def soak(out: Path, trials: int, scenarios: list[str], seed: int = 0, steps: int = 12,
         p_twice: float = 0.3, p_corrupt: float = 0.2, kinds: list[str] | None = None,
         verbose: bool = True) -> list[tuple[bool, str]]:  # fmt: skip
    """Run ``trials`` trials round-robin over ``scenarios``; ``kinds`` fixes each trial's signal
    (cycled) instead of drawing it."""
    rng = random.Random(seed)
    refs = {s: reference(out / f"ref-{s}", s, steps) for s in scenarios}
    results = []
    for i in range(trials):
        scenario = scenarios[i % len(scenarios)]
        if kinds:
            chosen = [kinds[i % len(kinds)]]
        else:
            chosen = [rng.choice(list(KINDS)) for _ in range(2 if rng.random() < p_twice else 1)]
        corrupt = rng.random() < p_corrupt
        folder = out / f"trial-{i:03d}-{scenario}"
        shutil.rmtree(folder, ignore_errors=True)
        t0 = time.time()
        ok, note = trial(folder, scenario, chosen, refs[scenario], rng, steps, corrupt)
        results.append((ok, note))
        if verbose:
            print(f"{'ok  ' if ok else 'FAIL'} {i + 1:3d}/{trials} {scenario:8s} {note}"
                  f" ({time.time() - t0:.0f} s)", flush=True)  # fmt: skip
    return results


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--trials", type=int, default=30)
    ap.add_argument("--scenarios", default="default,replay,partial")
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="runs/soak")
    a = ap.parse_args(argv)
    scenarios = [s.strip() for s in a.scenarios.split(",") if s.strip()]
    for s in scenarios:
        if s not in SCENARIOS:
            ap.error(f"--scenarios: {s!r} is not one of {', '.join(SCENARIOS)}")
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    results = soak(Path(a.out), a.trials, scenarios, a.seed, a.steps)
    passed = sum(ok for ok, _ in results)
    print(f"\n{passed}/{len(results)} trials resumed identically to the uninterrupted run")
    return 0 if passed == len(results) else 1


if __name__ == "__main__":
    sys.exit(main())
