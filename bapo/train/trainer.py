"""The off-policy GRPO / clip-higher / BAPO trainer, readable top to bottom.

Each step (Algorithm 1):
  1. sample a batch of prompts, G completions each, from the rollout engine (``pi_rollout``);
  2. score them, group-normalise the rewards into advantages (GRPO);
  3. record the behaviour log-probs ``log pi_rollout(y_t)`` of every completion token;
  4. E epochs x M mini-batches of updates on those same samples - the data grows stale by one
     policy version per update.  For BAPO the clipping bounds are searched on each whole
     mini-batch (not per micro-batch) before its micro-batches are back-propagated; the
     graphs of the search pass's forwards serve the gradient pass where memory allows
     (``train.keep_graphs``), so there is no second forward.

Metrics of every step go to ``metrics.jsonl`` (and TensorBoard, and callbacks); every update's
bounds go to ``updates.jsonl``, under the same step number.

A step is all or nothing.  Its rows are written when it has finished (the commit); SIGINT and
SIGTERM wait for the step to finish, then a checkpoint is written and the run stops (a second
signal stops at once, writing nothing).  An exception inside a step rolls the trainer back to
the step's start before the checkpoint is written: the cheap state (counters, RNG, replay
buffer, unfinished rollouts, scheduler) is copied at every step boundary, the weights and the
optimizer state only just before the step's first optimizer step changes them (one copy in
host memory per step; ``_RollbackPoint``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import os
import random
import shutil
import signal
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path

import torch

from bapo.loss import BAPOConfig, FixedClip, grpo_advantages, policy_loss, search_bounds
from bapo.models import META_FILE
from bapo.rollout.base import RolloutEngine
from bapo.rollout.mismatch import logprob_mismatch
from bapo.train.checkpoint import (
    atomic_write_text,
    checkpoint_dirs,
    load_state,
    resumable_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from bapo.train.config import Config, config_changes
from bapo.train.graphs import forward_with_graph_bytes, graph_budget
from bapo.train.logprobs import completion_logprobs, pack
from bapo.train.metrics import MetricsLogger
from bapo.train.offpolicy import ReplayBuffer, Sample, Trajectory


class NonFiniteLossError(RuntimeError):
    """Too many consecutive non-finite losses; a checkpoint was written before raising."""


class TrainingInterrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM stopped the run at a step boundary, after a checkpoint was written.
    ``exit_code`` is the shell's: 130 for SIGINT, 143 for SIGTERM."""

    def __init__(self, signum: int, step: int):
        super().__init__(f"{signal.Signals(signum).name} after step {step}")
        self.signum, self.step = signum, step
        self.exit_code = 128 + signum


class HardInterrupt(KeyboardInterrupt):
    """A second signal: the run stopped at once, without writing a checkpoint."""

    exit_code = 130


def resolve_device(name: str) -> torch.device:
    """``model.device`` as a torch device, checked against what this machine has."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                f"model.device={name!r} is not available: this machine has no CUDA device"
                " (use cpu or auto)"
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(
                f"model.device={name!r} is not available: this machine has"
                f" {torch.cuda.device_count()} CUDA device(s), cuda:0.."
            )
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"model.device={name!r} is not available on this machine (use cpu)")
    return device


def check_dtype(name: str, device: torch.device) -> None:
    """``model.dtype`` against the device: bfloat16 (also what ``auto`` uses on CUDA) needs a GPU
    that has it.  float16 weights on CPU are refused: the rollout fails on them (torch's sampler:
    "probability tensor contains either inf, nan or element < 0")."""
    if device.type == "cpu" and name == "float16":
        raise ValueError(
            "model.dtype='float16' is not allowed on CPU (sampling from float16 weights fails"
            " there): use float32, auto or bfloat16"
        )
    if device.type == "cuda" and name in ("bfloat16", "auto"):
        if not torch.cuda.is_bf16_supported():
            raise ValueError(
                f"model.dtype={name!r} needs bfloat16, which {torch.cuda.get_device_name(device)}"
                " lacks: use float16 or float32"
            )


def check_run_folder(out_dir: Path) -> None:
    """``run.out_dir`` is (or can become) a folder this process can write, checked before any
    model is loaded or step is taken."""
    for p in [out_dir, *out_dir.parents]:
        if p.exists() and not p.is_dir():
            raise ValueError(f"run.out_dir={str(out_dir)!r} cannot be a folder: {p} is a file")
    probe = out_dir / f".write-check-{os.getpid()}"
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise ValueError(
            f"run.out_dir={str(out_dir)!r} cannot be written ({e.strerror or e}):"
            " choose a writable folder"
        ) from None


def step_seed(seed: int, step: int, salt: int = 0) -> int:
    """A seed per (run seed, step): a resumed run draws exactly what the uninterrupted one drew."""
    return (seed * 1_000_003 + step * 9_176 + salt * 7_919) % (2**31 - 1)


class Trainer:
    """Runs ``cfg.train.steps`` steps; ``model``/``tokenizer``/``task``/``engine`` may be injected."""

    def __init__(
        self,
        cfg: Config,
        *,
        model=None,
        tokenizer=None,
        task=None,
        engine: RolloutEngine | None = None,
        callbacks: Iterable[Callable[[dict], None]] = (),
        update_hook: Callable[[dict], None] | None = None,
        sample_hook: Callable[[list[Sample]], None] | None = None,
        resume: bool = False,
    ):
        self.cfg = cfg.validate()
        self.out_dir = Path(cfg.run.out_dir)
        self.callbacks = list(callbacks)
        self.update_hook = update_hook  # sees each update's tensors (tests, notebooks)
        self.sample_hook = sample_hook  # sees each step's finished samples
        self.device = resolve_device(cfg.model.device)
        check_dtype(cfg.model.dtype, self.device)
        check_run_folder(self.out_dir)
        ckpt = self._claim_run_folder(resume)
        torch.manual_seed(cfg.train.seed)
        random.seed(cfg.train.seed)
        if self.device.type == "cpu" and cfg.train.cpu_threads:
            torch.set_num_threads(cfg.train.cpu_threads)

        if task is None:
            from bapo.tasks import make_task

            kwargs = dict(cfg.task.options)
            if cfg.task.path is not None:
                kwargs["path"] = cfg.task.path
            try:
                task = make_task(cfg.task.name, **kwargs)
            except (TypeError, ValueError) as e:
                raise ValueError(f"task.options of task {cfg.task.name!r}: {e}") from None
        self.task = task

        if model is None or ckpt is not None:
            from bapo.models import load_model

            source = str(ckpt) if ckpt is not None else cfg.model.name
            model, tokenizer = load_model(source, dtype=self._param_dtype(), device=self.device)
        self.model = model.to(self.device)
        self.tokenizer = tokenizer
        if cfg.model.gradient_checkpointing:
            enable = getattr(self.model, "activation_checkpointing_enable", None)
            (enable or self.model.gradient_checkpointing_enable)()
        self.engine = engine if engine is not None else self._make_engine()
        self.clip_rule = cfg.algo.clip_rule()
        self.pad_id = _pad_id(tokenizer)
        # what a kept graph holds per input element (train.keep_graphs=auto): measured on the
        # longest rows seen so far, scaled by size for the others (see _search_pass)
        self._graph_rate, self._graph_measured_len, self._graph_budget = 0.0, 0, 0.0

        t = cfg.train
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(), lr=t.lr, betas=t.betas, weight_decay=t.weight_decay
        )
        warm = max(t.warmup_steps, 0)
        updates_per_step = cfg.staleness
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer,
            lambda u: min(1.0, (u + 1) / (warm * updates_per_step)) if warm else 1.0,
        )
        o = cfg.offpolicy
        self.replay = ReplayBuffer(o.replay_size, o.replay_max_age)
        self.pending: dict[int, list[Trajectory]] = {}  # groups with unfinished completions
        self.next_group = 0
        self.segment_hook: Callable[[Trajectory, int, list[float]], None] | None = None
        self._updates_log: MetricsLogger | None = None  # open while train() runs
        self._synced_version = 0  # the policy version the rollout engine holds
        self.step = 0
        self.version = 0  # policy version = optimizer steps taken
        self.nonfinite_in_a_row = 0
        self.wall_start = time.time()
        self.wall_offset = 0.0
        self._rollback_point: _RollbackPoint | None = None  # set while a step is in progress
        self._saved_step: int | None = None  # the step whose state checkpoint-<step> holds
        self._save_requested = False  # save() was called inside a step
        self.optimizer.register_step_pre_hook(self._before_optimizer_step)
        if ckpt is not None:
            self._load_state(ckpt)

    def _claim_run_folder(self, resume: bool) -> Path | None:
        """The checkpoint to resume from; a fresh run refuses a folder with another run's
        checkpoints unless ``run.overwrite`` (then that run's checkpoints and logs go)."""
        if resume:
            ckpt, problems = resumable_checkpoint(self.out_dir)
            for line in problems:
                warnings.warn(line, stacklevel=3)
            written = ckpt / "config.yaml" if ckpt is not None else None
            ok = written is not None and written.is_file()
            changes = config_changes(written.read_text(), self.cfg) if ok else []
            if changes:
                warnings.warn(
                    f"resuming {ckpt.name} with a config that differs from the one it was written"
                    f" with; the run goes on with the new values: {'; '.join(changes)}",
                    stacklevel=3,
                )
            return ckpt
        old = checkpoint_dirs(self.out_dir)
        if old and not self.cfg.run.overwrite:
            raise ValueError(
                f"run.out_dir={str(self.out_dir)!r} holds another run ({old[-1].name}): use"
                " --resume to continue it, a new run.out_dir, or run.overwrite=true to replace it"
            )
        for d in old:
            shutil.rmtree(d)
        for name in ("metrics.jsonl", "updates.jsonl"):
            (self.out_dir / name).unlink(missing_ok=True)
        if old:
            shutil.rmtree(self.out_dir / "tb", ignore_errors=True)
        return None

    # ------------------------------------------------------------------------------------------
    def _param_dtype(self):
        name = self.cfg.model.dtype
        if name in ("auto", "float32"):
            return torch.float32
        return {"bfloat16": torch.bfloat16, "float16": torch.float16}[name]

    def _autocast(self):
        if self.device.type == "cuda" and self.cfg.model.dtype == "auto":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _make_engine(self) -> RolloutEngine:
        r = self.cfg.rollout
        if r.engine == "vllm":
            from bapo.rollout.vllm import VLLMEngine

            dtype = "bfloat16" if self.cfg.model.dtype == "auto" else self.cfg.model.dtype
            return VLLMEngine(
                getattr(self.model, "name_or_path", None) or self.cfg.model.name,
                dtype=dtype,
                gpu_memory_utilization=r.gpu_memory_utilization,
                enable_sleep_mode=r.enable_sleep_mode,
                seed=self.cfg.train.seed,
                stop_token_ids=sorted(_eos_ids(self.tokenizer)),
            )
        from bapo.rollout.hf import HFEngine

        eos = self.tokenizer.eos_token_id
        return HFEngine(self.model, eos, _pad_id(self.tokenizer), batch_size=r.batch_size)

    # ------------------------------------------------------------------------------------------
    def train(self) -> list[dict]:
        """Run to ``cfg.train.steps``; returns the step records.

        Each step commits its ``updates.jsonl`` and ``metrics.jsonl`` rows when it has finished.
        SIGINT (Ctrl-C) and SIGTERM are deferred to the next step boundary: a checkpoint is
        written, then :class:`TrainingInterrupted` is raised (a second signal raises
        :class:`HardInterrupt` at once and writes nothing).  Any other exception writes a
        checkpoint of the last consistent state (the step's start) before it propagates."""
        cfg = self.cfg
        logger = MetricsLogger(
            self.out_dir / "metrics.jsonl",
            tensorboard_dir=self.out_dir / "tb" if cfg.run.tensorboard else None,
            callbacks=self.callbacks,
            keep_until_step=self.step,
        )
        updates_log = MetricsLogger(self.out_dir / "updates.jsonl", keep_until_step=self.step)
        records = []
        bar = _progress(cfg.run.progress, total=cfg.train.steps, initial=self.step)
        signals = _DeferredSignals()
        try:
            with signals:
                atomic_write_text(self.out_dir / "config.yaml", cfg.to_yaml())
                while self.step < cfg.train.steps:
                    self._begin_step()
                    record = self.train_step()
                    self._commit(record, logger, updates_log)
                    records.append(record)
                    logger.notify(record)
                    if bar is not None:
                        bar.update(1)
                        bar.set_postfix(
                            reward=f"{record.get('reward/mean', math.nan):.2f}",
                            H=f"{record.get('entropy/mean', math.nan):.3f}",
                            rho=f"{record.get('bapo/rho', math.nan):.2f}",
                        )
                    every = cfg.run.save_every
                    if every and self.step % every == 0 and self.step < cfg.train.steps:
                        self.save()
                    if signals.signum is not None:
                        break
                self._save_once()
                if signals.signum is not None:
                    name = signal.Signals(signals.signum).name
                    print(f"\n{name}: stopped after step {self.step}; checkpoint written",
                          file=sys.stderr)  # fmt: skip
                    raise TrainingInterrupted(signals.signum, self.step)
        except (HardInterrupt, TrainingInterrupted):
            raise
        except BaseException:
            rolled_back = self._rollback_point is not None
            self._rollback()
            if self.step > 0 or self._save_requested:
                try:
                    path = self._save_once()
                except Exception as e:  # the step's own error is the one to raise
                    print(f"\nstopped by an error, and no checkpoint could be written ({e})",
                          file=sys.stderr)  # fmt: skip
                else:
                    undone = " (the failed step was rolled back)" if rolled_back else ""
                    print(f"\nstopped by an error: checkpoint of step {self.step} written to"
                          f" {path}{undone}", file=sys.stderr)  # fmt: skip
            raise
        finally:
            self._rollback_point = None
            if bar is not None:
                bar.close()
            logger.close()
            updates_log.close()
            self._updates_log = None
        return records

    def _begin_step(self) -> None:
        """A step boundary: remember the cheap state; ``_updates_log`` collects the step's rows."""
        self._rollback_point = _RollbackPoint(
            step=self.step,
            version=self.version,
            nonfinite_in_a_row=self.nonfinite_in_a_row,
            rng=rng_state(),
            extra=self.extra_state(),
            scheduler=_host_copy(self.scheduler.state_dict()),
        )
        self._updates_log = self._rollback_point  # rows wait for the commit

    def _before_optimizer_step(self, optimizer, args, kwargs) -> None:
        """The first optimizer step of a step: copy weights and optimizer state first."""
        point = self._rollback_point
        if point is not None and point.weights is None:
            point.weights = _host_copy(self.model.state_dict())
            point.optimizer = _host_copy(self.optimizer.state_dict())

    def _commit(self, record: dict, logger: MetricsLogger, updates_log: MetricsLogger) -> None:
        """The step has finished: write its update rows and its metrics row, under its number."""
        point, self._rollback_point = self._rollback_point, None
        self._updates_log = None
        for row in point.rows:
            updates_log.write({**row, "step": self.step})
        logger.write(record)

    def _rollback(self) -> None:
        """Back to the start of the step in progress (nothing to do between steps)."""
        point, self._rollback_point = self._rollback_point, None
        self._updates_log = None
        if point is None:
            return
        if point.weights is not None:
            with torch.no_grad():
                for name, t in self.model.state_dict().items():
                    t.copy_(point.weights[name])
            self.optimizer.load_state_dict(point.optimizer)
        self.scheduler.load_state_dict(point.scheduler)
        set_rng_state(point.rng)
        self.step, self.version = point.step, point.version
        self.nonfinite_in_a_row = point.nonfinite_in_a_row
        self.load_extra_state(point.extra)
        self._synced_version = -1  # the engine may hold the half-step's weights

    def save(self) -> Path:
        """A checkpoint of everything a resumed run needs (HF model + tokenizer + state).

        A checkpoint never holds half a step: called inside a step (the non-finite abort), it
        only asks for one and returns its path; ``train()`` writes it, of the step's start, when
        the step's exception reaches it."""
        if self._rollback_point is not None:
            self._save_requested = True
            return self.out_dir / f"checkpoint-{self._rollback_point.step}"
        state = {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "version": self.version,
            "nonfinite_in_a_row": self.nonfinite_in_a_row,
            "wall": self.wall_offset + time.time() - self.wall_start,
            "rng": rng_state(),
            "extra": self.extra_state(),
        }
        # an embedded model's marker file travels along, so its exact tokenizer reloads
        source = Path(str(getattr(self.model, "name_or_path", "")))
        marker = source / META_FILE if str(source) else None
        path = save_checkpoint(
            self.out_dir, self.step, self.model, self.tokenizer, state, self.cfg.to_yaml(),
            keep=self.cfg.run.keep_checkpoints,
            extra_files=[marker] if marker is not None and marker.is_file() else [],
        )  # fmt: skip
        self._saved_step = self.step
        self._save_requested = False
        return path

    def _save_once(self) -> Path:
        """``save()`` unless this very state is already ``checkpoint-<step>``."""
        if self._saved_step == self.step and self._rollback_point is None:
            return self.out_dir / f"checkpoint-{self.step}"
        return self.save()

    def _load_state(self, ckpt: Path) -> None:
        state = load_state(ckpt)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        set_rng_state(state["rng"])
        self.step = state["step"]
        self.version = state["version"]
        self.nonfinite_in_a_row = state.get("nonfinite_in_a_row", 0)
        self.wall_offset = state.get("wall", 0.0)
        self.load_extra_state(state.get("extra", {}))
        self._saved_step = self.step

    def extra_state(self) -> dict:
        """The off-policy machinery: the replay buffer and the unfinished rollouts."""
        return {
            "replay": self.replay.state_dict(),
            "pending": {g: [t.to_dict() for t in ts] for g, ts in self.pending.items()},
            "next_group": self.next_group,
        }

    def load_extra_state(self, state: dict) -> None:
        if not state:
            return
        self.replay.load_state_dict(state["replay"])
        self.pending = {
            int(g): [Trajectory.from_dict(t) for t in ts] for g, ts in state["pending"].items()
        }
        self.next_group = state["next_group"]

    # ------------------------------------------------------------------------------------------
    def train_step(self) -> dict:
        t0 = time.time()
        self._engine_ready()
        samples, rollout_metrics = self.rollout()
        self.engine.sleep()  # release rollout memory during the update, where supported
        if self.sample_hook is not None:
            self.sample_hook(samples)
        t1 = time.time()
        update_metrics = self.update(samples)
        t2 = time.time()
        self.step += 1
        rec = {"step": self.step, **rollout_metrics, **update_metrics}
        rec["time/rollout_s"] = t1 - t0
        rec["time/update_s"] = t2 - t1
        rec["time/step_s"] = t2 - t0
        rec["time/wall_s"] = self.wall_offset + time.time() - self.wall_start
        n_gen = rollout_metrics["rollout/generated_tokens"]
        rec["speed/rollout_tokens_per_s"] = n_gen / max(t1 - t0, 1e-9)
        rec["speed/train_tokens_per_s"] = update_metrics["train/tokens"] / max(t2 - t1, 1e-9)
        every = self.cfg.run.eval_every
        if every and (self.step % every == 0 or self.step == self.cfg.train.steps):
            rec["eval/accuracy"] = self.evaluate()
        return rec

    def _engine_ready(self) -> None:
        """Wake the rollout engine and give it the current weights (after any update)."""
        self.engine.wake()
        if self._synced_version != self.version:
            self.engine.sync_weights(self.model)
            self._synced_version = self.version

    # --- 1-3: rollout, rewards, advantages, behaviour log-probs -------------------------------
    def rollout(self) -> tuple[list[Sample], dict]:
        """Start ``prompts_per_step`` new groups, grow every unfinished completion by one segment,
        and turn the groups whose G completions have all finished into samples.

        Without partial rollouts a segment is the whole completion, so every group finishes in
        the step it started.  With ``offpolicy.partial_budget`` a completion grows at most that
        many tokens per step and is continued by later (newer) policies; each token keeps the
        log-prob and version of the policy that generated it.
        """
        from bapo.models import decode_completion, encode_prompt

        cfg, t = self.cfg, self.cfg.train
        rng = random.Random(step_seed(t.seed, self.step, salt=1))
        for ex in self.task.sample(t.prompts_per_step, rng):
            ids = encode_prompt(self.tokenizer, ex.prompt)
            self.pending[self.next_group] = [
                Trajectory(self.next_group, ex, list(ids)) for _ in range(t.group_size)
            ]
            self.next_group += 1
        active = [tr for ts in self.pending.values() for tr in ts if not tr.finished]
        cap = cfg.rollout.max_new_tokens
        budget = cfg.offpolicy.partial_budget or cap
        params = dataclasses.replace(cfg.sampling(), max_new_tokens=min(budget, cap))
        contexts = [tr.prompt_ids + tr.completion_ids for tr in active]
        gens = self.engine.generate(contexts, params, seed=step_seed(t.seed, self.step))
        for tr, g in zip(active, gens):  # a completion never grows past the cap
            g.completion_ids = g.completion_ids[: cap - len(tr.completion_ids)]
            g.logprobs = g.logprobs[: len(g.completion_ids)]
        behaviour, entropy = self.behaviour_logprobs(gens)
        engine_lp, trainer_lp = [], []
        for tr, g, lp in zip(active, gens, behaviour):
            start = len(tr.completion_ids)
            tr.extend(g.completion_ids, lp, g.logprobs, self.version)
            engine_lp += g.logprobs[: len(lp)]
            trainer_lp += lp[: len(g.logprobs)]
            tr.eos = bool(g.completion_ids) and g.completion_ids[-1] in _eos_ids(self.tokenizer)
            tr.finished = tr.eos or len(tr.completion_ids) >= cap
            if self.segment_hook is not None:
                self.segment_hook(tr, start, lp)

        done_groups = [g for g, ts in self.pending.items() if all(tr.finished for tr in ts)]
        samples, rewards, errors, done = [], [], 0, []
        for gid in done_groups:
            group = self.pending.pop(gid)
            group_rewards = []
            for tr in group:
                try:
                    text = decode_completion(self.tokenizer, tr.completion_ids)
                    r = float(self.task.reward(text, tr.example))
                    if not math.isfinite(r):
                        raise ValueError(f"non-finite reward {r}")
                except Exception:  # a reward function that raises scores 0 and is counted
                    r, errors = 0.0, errors + 1
                group_rewards.append(r)
            adv = grpo_advantages(torch.tensor(group_rewards), len(group),
                                  scale=cfg.algo.scale_advantages)  # fmt: skip
            for tr, r, a in zip(group, group_rewards, adv.tolist()):
                samples.append(Sample(tr.prompt_ids, tr.completion_ids, tr.behaviour_logprobs,
                                      r, a, tr.versions, tr.engine_logprobs, tr.eos))  # fmt: skip
            rewards += group_rewards
            done += group

        n_tok = sum(len(g.completion_ids) for g in gens)
        rewards_t = torch.tensor(rewards, dtype=torch.float32)
        lengths = torch.tensor([len(tr.completion_ids) for tr in done], dtype=torch.float32)
        correct = rewards_t >= 1.0
        adv_t = torch.tensor([s.advantage for s in samples])
        metrics = {
            "reward/mean": _mean(rewards_t),
            "reward/std": float(rewards_t.std()) if len(rewards) > 1 else 0.0,
            "reward/accuracy": _mean(correct),
            "reward/errors": errors,
            "reward/groups_all_same": sum(
                1
                for k in range(0, len(samples), t.group_size)
                if not adv_t[k : k + t.group_size].any()
            ),
            "completion/length_mean": _mean(lengths),
            "completion/length_correct": _mean(lengths[correct]),
            "completion/length_wrong": _mean(lengths[~correct]),
            "completion/finished_frac": _mean(torch.tensor([tr.eos for tr in done])),
            "entropy/mean": sum(sum(e) for e in entropy) / max(n_tok, 1),
            "rollout/generated_tokens": n_tok,
            **_mismatch(engine_lp, trainer_lp),
            "offpolicy/groups_done": len(done_groups),
            "offpolicy/carried_over": sum(
                not tr.finished for ts in self.pending.values() for tr in ts
            ),
            "offpolicy/versions_spanned_mean": _mean([tr.versions_spanned for tr in done]),
            "offpolicy/versions_spanned_max": max([tr.versions_spanned for tr in done], default=0),
        }
        samples += self._replayed(samples, rng, metrics)
        return samples, metrics

    def _replayed(self, fresh: list[Sample], rng: random.Random, metrics: dict) -> list[Sample]:
        """Draw old samples for this update batch, then remember the fresh ones."""
        f = self.cfg.offpolicy.replay_fraction
        drawn = []
        if f > 0:
            want = round(f * len(fresh) / (1 - f))
            drawn = self.replay.draw(want, rng, self.version)
            ages = [self.version - s.born for s in drawn]
            metrics["offpolicy/replayed"] = len(drawn)
            metrics["offpolicy/replay_age_mean"] = _mean(ages)
            metrics["offpolicy/replay_age_max"] = max(ages, default=0)
            self.replay.add(fresh, self.version)
            metrics["offpolicy/buffer_size"] = len(self.replay)
        return drawn

    @torch.no_grad()
    def behaviour_logprobs(self, gens) -> tuple[list[list[float]], list[list[float]]]:
        """``log pi_rollout`` (and entropy) of each newly generated token under the current model,
        given everything before it (prompt and any earlier segments)."""
        self.model.eval()
        lps, ents = [], []
        mb = self.cfg.train.micro_batch_size
        for s in range(0, len(gens), mb):
            chunk = gens[s : s + mb]
            packed = pack([g.prompt_ids for g in chunk], [g.completion_ids for g in chunk],
                          self.pad_id, self.device)  # fmt: skip
            with self._autocast():
                lp, ent = completion_logprobs(
                    self.model, packed, temperature=self.cfg.rollout.temperature,
                    chunk_size=self.cfg.train.logprob_chunk, entropy=True,
                )  # fmt: skip
            for i, g in enumerate(chunk):
                n = len(g.completion_ids)
                lps.append(lp[i, :n].tolist())
                ents.append(ent[i, :n].tolist())
        self.model.train()
        return lps, ents

    # --- 4: E epochs x M mini-batches of updates -----------------------------------------------
    def update(self, samples: list[Sample]) -> dict:
        t = self.cfg.train
        if not samples:  # partial rollouts: no group finished this step
            return {"offpolicy/updates": 0, "train/tokens": 0}
        gen = torch.Generator().manual_seed(step_seed(t.seed, self.step, salt=2))
        # what kept graphs may hold during this step's updates (read once: on CPU it is a read
        # of /proc/meminfo, 0.1 ms)
        self._graph_budget = (
            graph_budget(self.device, t.graph_memory_gb) if t.keep_graphs == "auto" else 0.0
        )
        per_update = []
        start_version = self.version
        for _epoch in range(t.epochs):
            order = torch.randperm(len(samples), generator=gen)
            for idx in torch.tensor_split(order, t.mini_batches):
                batch = [samples[i] for i in idx.tolist()]
                if batch:
                    per_update.append(self._update_once(batch, self.version - start_version))
        out = {k: _mean([u[k] for u in per_update if u.get(k) is not None]) for k in per_update[0]}
        out["offpolicy/updates"] = len(per_update)
        out["train/tokens"] = sum(u["tokens/count"] for u in per_update)
        return out

    def _collate(self, batch: list[Sample]):
        packed = pack([s.prompt_ids for s in batch], [s.completion_ids for s in batch],
                      self.pad_id, self.device)  # fmt: skip
        Tc = packed.completion_mask.shape[1]
        old = torch.zeros(len(batch), Tc)
        ver = torch.zeros(len(batch), Tc, dtype=torch.long)
        for i, s in enumerate(batch):
            old[i, : len(s.behaviour_logprobs)] = torch.tensor(s.behaviour_logprobs)
            ver[i, : len(s.versions)] = torch.tensor(s.versions, dtype=torch.long)
        adv = torch.tensor([s.advantage for s in batch])
        return packed, old.to(self.device), adv.to(self.device), ver.to(self.device)

    @torch.no_grad()
    def logprob_batch(self, samples: list[Sample]):
        """``(log_probs, old_log_probs, advantages, mask)`` of ``samples`` on the completion grid:
        the current policy's log-probs next to the behaviour policy's."""
        packed, old, adv, _ver = self._collate(samples)
        return self._logprobs(packed), old, adv, packed.completion_mask

    def _logprobs(self, packed) -> torch.Tensor:
        with self._autocast():
            lp, _ = completion_logprobs(
                self.model, packed, temperature=self.cfg.rollout.temperature,
                chunk_size=self.cfg.train.logprob_chunk,
            )  # fmt: skip
        return lp

    def _search_pass(self, parts) -> tuple[list[torch.Tensor], list[torch.Tensor], float | None]:
        """The current log-probs of every micro-batch (BAPO's search input), the graphs kept, and
        the bytes those hold (measured under ``auto`` only, else None).

        Algorithm 1 needs the whole mini-batch before the first backward.  The first
        micro-batches are forwarded with grad and keep their graphs for the gradient pass while
        they fit in the graph budget (``train.keep_graphs``: ``true`` keeps all, ``false`` only
        the first, the memory of one gradient pass; ``auto`` as many as ``graph_memory_gb``
        holds); the rest get a no-grad forward here and a second forward later.  The first
        graph is always kept: it is what any gradient pass holds.  Under ``auto`` a graph is
        measured when its rows are longer than any measured before, and estimated from the
        bytes per input element of those measured otherwise (measuring a graph on CPU costs a
        Python call per saved tensor).  Bounds and gradients do not depend on which graphs were
        kept (tested)."""
        t = self.cfg.train
        auto, budget = t.keep_graphs == "auto", self._graph_budget
        current, kept, used = [], [], 0.0  # used: bytes the kept graphs hold
        for k, (packed, *_rest) in enumerate(parts):
            size = packed.input_ids.numel()
            if k == 0 or (k == len(kept) and (t.keep_graphs is True or (
                    auto and used + self._graph_rate * size <= budget))):  # fmt: skip
                if auto and packed.input_ids.shape[1] > self._graph_measured_len:
                    # rows longer than any measured so far: measure this graph
                    forward = functools.partial(self._logprobs, packed)
                    lp, held = forward_with_graph_bytes(
                        forward, self.model.parameters(), self.device
                    )
                    self._graph_measured_len = packed.input_ids.shape[1]
                    self._graph_rate = max(self._graph_rate, held / size)
                else:
                    lp, held = self._logprobs(packed), self._graph_rate * size
                used += held
                kept.append(lp)
                current.append(lp.detach())
            else:
                with torch.no_grad():
                    current.append(self._logprobs(packed))
        return current, kept, (used if auto else None)

    def _update_once(self, batch: list[Sample], staleness: int) -> dict:
        cfg, t = self.cfg, self.cfg.train
        micro = min(t.micro_batch_size, len(batch))
        parts = [self._collate(batch[s : s + micro]) for s in range(0, len(batch), micro)]
        n_tokens = sum(int(p[0].completion_mask.sum()) for p in parts)
        count = n_tokens if cfg.algo.agg == "token-mean" else len(batch)

        # Algorithm 1, lines 8-17: bounds from the whole mini-batch, before any backward.  BAPO
        # needs the current log-probs of every micro-batch first (``_search_pass``: graphs kept
        # where memory allows, a no-grad forward for the rest); a fixed clip needs none and its
        # metrics reuse the log-probs of its gradient passes.
        kept, held, flat, bounds = [], None, None, None
        if isinstance(self.clip_rule, BAPOConfig):
            current, kept, held = self._search_pass(parts)
            flat = _flatten(current, parts)
            bounds = search_bounds(*flat, None, self.clip_rule)
            rule = FixedClip(bounds.c_low, bounds.c_high, self.clip_rule.dual_clip)
        else:
            rule = self.clip_rule
        n_kept = len(kept)

        # how many policy versions old each token is at this update (its staleness)
        ages = torch.cat([(self.version - v[p.completion_mask]) for p, _, _, v in parts])

        # Algorithm 1, line 19: the clipped surrogate, micro-batch by micro-batch.
        self.optimizer.zero_grad(set_to_none=True)
        total_loss, finite = 0.0, True
        seen = []  # the log-probs of the gradient passes (a fixed clip's metrics use them)
        for k, (packed, old, adv, _ver) in enumerate(parts):
            if k < len(kept):
                lp, kept[k] = kept[k], None  # the kept graph; freed by its backward
            else:
                lp = self._logprobs(packed)
            seen.append(lp.detach())
            loss, _ = policy_loss(lp, old, adv, packed.completion_mask, rule, cfg.algo.agg,
                                  count=count)  # fmt: skip
            if not torch.isfinite(loss):
                finite = False
                break
            loss.backward()
            total_loss += float(loss.detach())
        grad_norm = float(torch.nn.utils.clip_grad_norm_(self.model.parameters(), t.max_grad_norm))
        if not finite or not math.isfinite(grad_norm):
            self.optimizer.zero_grad(set_to_none=True)
            self.nonfinite_in_a_row += 1
            if self.nonfinite_in_a_row >= t.max_nonfinite:
                path = self.save()
                raise NonFiniteLossError(
                    f"{self.nonfinite_in_a_row} non-finite losses in a row at step {self.step};"
                    f" checkpoint written to {path}"
                )
        else:
            self.optimizer.step()
            self.scheduler.step()
            self.version += 1
            self.nonfinite_in_a_row = 0

        # What this update saw, measured the same way for every algorithm (Eq. 8's weight is
        # algo.rollout_weight: by default the plain sum over sampled tokens).
        if flat is None:  # a fixed clip: the gradient passes' own log-probs
            flat = _flatten(seen, parts[: len(seen)])
        with torch.no_grad():
            _, st = policy_loss(*flat, None, rule, rollout_weight=cfg.algo.rollout_weight)
        rec = st.as_metrics()
        rec.update({
            "policy/loss": total_loss,
            "policy/grad_norm": grad_norm,
            "policy/nonfinite_skipped": 0 if finite and math.isfinite(grad_norm) else 1,
            "offpolicy/staleness": staleness,
            "offpolicy/age_mean": float(ages.float().mean()) if ages.numel() else 0.0,
            "offpolicy/age_max": float(ages.max()) if ages.numel() else 0.0,
            "bapo/rho_search": bounds.rho if bounds is not None else st.rho,
            "train/graphs_kept": n_kept,
            "train/extra_forwards": len(parts) - n_kept if bounds is not None else 0,
        })  # fmt: skip
        if held is not None:
            rec["memory/graphs_mb"] = held / 2**20
        if bounds is not None:
            rec["bapo/search_steps"] = bounds.n_steps
            rec["bapo/search_skipped"] = float(bounds.skipped)
        if self._updates_log is not None:
            self._updates_log.log({"step": self.step, "version": self.version, **rec})
        if self.update_hook is not None:
            self.update_hook({"inputs": flat, "bounds": bounds, "rule": rule, "record": rec})
        return rec

    # ------------------------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, n: int | None = None) -> float:
        """Sampled accuracy on the task's fixed eval set (same sampling as the rollouts)."""
        from bapo.models import decode_completion, encode_prompt

        self._engine_ready()
        examples = self.task.eval_set(n or self.cfg.run.eval_size)
        prompts = [encode_prompt(self.tokenizer, ex.prompt) for ex in examples]
        gens = self.engine.generate(prompts, self.cfg.sampling(), seed=12345)
        hits = 0
        for g, ex in zip(gens, examples):
            try:
                hits += (
                    self.task.reward(decode_completion(self.tokenizer, g.completion_ids), ex) >= 1
                )
            except Exception:
                pass
        return hits / max(len(examples), 1)


def _flatten(current, parts):
    """Masked tokens of a mini-batch as 1-D (log_probs, old_log_probs, advantages)."""
    lps, olds, advs = [], [], []
    for lp, (packed, old, adv, _v) in zip(current, parts):
        m = packed.completion_mask
        lps.append(lp[m])
        olds.append(old[m])
        advs.append(adv[:, None].expand_as(m)[m])
    return torch.cat(lps), torch.cat(olds), torch.cat(advs)


def _mismatch(engine_lp: list[float], trainer_lp: list[float]) -> dict:
    """The rollout/train log-prob gap of this step's new tokens (an engine in another precision
    or batch shape samples from a slightly different pi_rollout than the trainer recomputes)."""
    try:
        return logprob_mismatch(torch.tensor(engine_lp), torch.tensor(trainer_lp)).as_metrics()
    except ValueError:  # a non-finite engine log-prob: report, do not stop the run
        return {"rollout/logprob_abs_diff_mean": math.nan, "rollout/logprob_abs_diff_max": math.nan}


def _eos_ids(tokenizer) -> set[int]:
    eos = tokenizer.eos_token_id
    return set(eos) if isinstance(eos, (list, tuple)) else {eos}


def _pad_id(tokenizer) -> int:
    pid = getattr(tokenizer, "pad_token_id", None)
    if pid is None:
        pid = tokenizer.eos_token_id
    return int(pid)


def _mean(xs) -> float:
    if isinstance(xs, torch.Tensor):
        return float(xs.float().mean()) if xs.numel() else float("nan")
    xs = [x for x in xs if x is not None]
    return float(sum(xs) / len(xs)) if xs else float("nan")


def _progress(enabled: bool, total: int, initial: int, stream=None):
    """A progress bar in a terminal or a notebook; none in a log file or a pipe (CI), where a
    redrawn bar would only add a line per refresh."""
    stream = sys.stderr if stream is None else stream
    interactive = "ipykernel" in sys.modules or getattr(stream, "isatty", lambda: False)()
    if not enabled or not interactive:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc="train", dynamic_ncols=True, file=stream)


@dataclasses.dataclass
class _RollbackPoint:
    """The trainer at a step boundary.  ``weights`` and ``optimizer`` stay ``None`` until the
    step's first optimizer step is about to change them; ``rows`` are the step's update rows,
    written at its commit (``log`` is the sink ``_update_once`` writes to)."""

    step: int
    version: int
    nonfinite_in_a_row: int
    rng: dict
    extra: dict
    scheduler: dict
    weights: dict | None = None
    optimizer: dict | None = None
    rows: list = dataclasses.field(default_factory=list)

    def log(self, row: dict) -> None:
        self.rows.append(row)


def _host_copy(x):
    """A deep copy with every tensor cloned to host memory."""
    if isinstance(x, torch.Tensor):
        return x.detach().to("cpu", copy=True)
    if isinstance(x, dict):
        return type(x)((k, _host_copy(v)) for k, v in x.items())
    if isinstance(x, (list, tuple)):
        return type(x)(_host_copy(v) for v in x)
    return x


class _DeferredSignals:
    """While active (main thread only), SIGINT and SIGTERM set ``signum`` for the training loop
    to act on at the next step boundary; a second signal restores the handlers and raises
    :class:`HardInterrupt` at once."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.signum: int | None = None
        self._previous: dict = {}

    def __enter__(self) -> _DeferredSignals:
        if threading.current_thread() is threading.main_thread():
            for s in self.SIGNALS:
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous.clear()

    def _handle(self, signum, frame) -> None:
        if self.signum is not None:
            self.__exit__()
            raise HardInterrupt(f"second {signal.Signals(signum).name}: stopped without saving")
        self.signum = signum
        print(f"\n{signal.Signals(signum).name}: finishing this step, then saving a checkpoint"
              " (press Ctrl-C again to stop at once without saving)", file=sys.stderr,
              flush=True)  # fmt: skip
