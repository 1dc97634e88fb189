"""The off-policy GRPO / clip-higher / BAPO trainer, readable top to bottom.

Each step (Algorithm 1):
  1. sample a batch of prompts, G completions each, from the rollout engine (``pi_rollout``);
  2. score them, group-normalise the rewards into advantages (GRPO);
  3. record the behaviour log-probs ``log pi_rollout(y_t)`` of every completion token;
  4. E epochs x M mini-batches of updates on those same samples - the data grows stale by one
     policy version per update.  For BAPO the clipping bounds are searched on each whole
     mini-batch (not per micro-batch) before its micro-batches are back-propagated.

Metrics of every step go to ``metrics.jsonl`` (and TensorBoard, and callbacks); every update's
bounds go to ``updates.jsonl``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import random
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import torch

from bapo.loss import BAPOConfig, FixedClip, grpo_advantages, policy_loss, search_bounds
from bapo.models import META_FILE
from bapo.rollout.base import RolloutEngine
from bapo.rollout.mismatch import logprob_mismatch
from bapo.train.checkpoint import latest_checkpoint, load_state, save_checkpoint, set_rng_state
from bapo.train.config import Config
from bapo.train.logprobs import completion_logprobs, pack
from bapo.train.metrics import MetricsLogger
from bapo.train.offpolicy import ReplayBuffer, Sample, Trajectory


class NonFiniteLossError(RuntimeError):
    """Too many consecutive non-finite losses; a checkpoint was written before raising."""


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


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
        torch.manual_seed(cfg.train.seed)
        random.seed(cfg.train.seed)
        self.device = resolve_device(cfg.model.device)
        if self.device.type == "cpu" and cfg.train.cpu_threads:
            torch.set_num_threads(cfg.train.cpu_threads)

        ckpt = latest_checkpoint(self.out_dir) if resume else None
        if resume and ckpt is None:
            raise FileNotFoundError(f"--resume: no checkpoint under {self.out_dir}")
        if model is None or ckpt is not None:
            from bapo.models import load_model

            source = str(ckpt) if ckpt is not None else cfg.model.name
            model, tokenizer = load_model(source, dtype=self._param_dtype(), device=self.device)
        self.model = model.to(self.device)
        self.tokenizer = tokenizer
        if cfg.model.gradient_checkpointing:
            enable = getattr(self.model, "activation_checkpointing_enable", None)
            (enable or self.model.gradient_checkpointing_enable)()
        if task is None:
            from bapo.tasks import make_task

            kwargs = dict(cfg.task.options)
            if cfg.task.path is not None:
                kwargs["path"] = cfg.task.path
            task = make_task(cfg.task.name, **kwargs)
        self.task = task
        self.engine = engine if engine is not None else self._make_engine()
        self.clip_rule = cfg.algo.clip_rule()
        self.pad_id = _pad_id(tokenizer)

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
        if ckpt is not None:
            self._load_state(ckpt)

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
        """Run to ``cfg.train.steps``; returns the step records.  Ctrl-C saves a checkpoint."""
        cfg = self.cfg
        logger = MetricsLogger(
            self.out_dir / "metrics.jsonl",
            tensorboard_dir=self.out_dir / "tb" if cfg.run.tensorboard else None,
            callbacks=self.callbacks,
            keep_until_step=self.step,
        )
        self._updates_log = MetricsLogger(self.out_dir / "updates.jsonl", keep_until_step=self.step)
        cfg.to_yaml(self.out_dir / "config.yaml")
        records = []
        bar = _progress(cfg.run.progress, total=cfg.train.steps, initial=self.step)
        try:
            while self.step < cfg.train.steps:
                record = self.train_step()
                logger.log(record)
                records.append(record)
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
            self.save()
        except KeyboardInterrupt:
            print(f"\ninterrupted at step {self.step}: saving a checkpoint before exit")
            self.save()
            raise
        finally:
            if bar is not None:
                bar.close()
            logger.close()
            self._updates_log.close()
            self._updates_log = None
        return records

    def save(self) -> Path:
        """A checkpoint of everything a resumed run needs (HF model + tokenizer + state)."""
        state = {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "version": self.version,
            "wall": self.wall_offset + time.time() - self.wall_start,
            "extra": self.extra_state(),
        }
        # an embedded model's marker file travels along, so its exact tokenizer reloads
        source = Path(str(getattr(self.model, "name_or_path", "")))
        marker = source / META_FILE if str(source) else None
        return save_checkpoint(
            self.out_dir, self.step, self.model, self.tokenizer, state, self.cfg.to_yaml(),
            keep=self.cfg.run.keep_checkpoints,
            extra_files=[marker] if marker is not None and marker.is_file() else [],
        )  # fmt: skip

    def _load_state(self, ckpt: Path) -> None:
        state = load_state(ckpt)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        set_rng_state(state["rng"])
        self.step = state["step"]
        self.version = state["version"]
        self.wall_offset = state.get("wall", 0.0)
        self.load_extra_state(state.get("extra", {}))

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

    @torch.no_grad()
    def _presearch_logprobs(self, parts) -> list[torch.Tensor]:
        """The current log-probs of every micro-batch, no grad: BAPO's search input."""
        return [self._logprobs(p[0]) for p in parts]

    def _update_once(self, batch: list[Sample], staleness: int) -> dict:
        cfg, t = self.cfg, self.cfg.train
        micro = min(t.micro_batch_size, len(batch))
        parts = [self._collate(batch[s : s + micro]) for s in range(0, len(batch), micro)]
        n_tokens = sum(int(p[0].completion_mask.sum()) for p in parts)
        count = n_tokens if cfg.algo.agg == "token-mean" else len(batch)

        # Algorithm 1, lines 8-17: bounds from the whole mini-batch, before any backward.  Only
        # BAPO needs the current log-probs of every micro-batch before the first backward (a
        # no-grad forward pass when there are several); a fixed clip reuses the log-probs of
        # its gradient passes for the metrics.
        grad_lps, current, flat, bounds = None, None, None, None
        if len(parts) == 1:
            grad_lps = [self._logprobs(parts[0][0])]
            current = [grad_lps[0].detach()]
        elif isinstance(self.clip_rule, BAPOConfig) and t.keep_graphs:
            grad_lps = [self._logprobs(p[0]) for p in parts]  # every graph kept until backward
            current = [lp.detach() for lp in grad_lps]
        elif isinstance(self.clip_rule, BAPOConfig):
            current = self._presearch_logprobs(parts)
        if isinstance(self.clip_rule, BAPOConfig):
            flat = _flatten(current, parts)
            bounds = search_bounds(*flat, None, self.clip_rule)
            rule = FixedClip(bounds.c_low, bounds.c_high, self.clip_rule.dual_clip)
        else:
            rule = self.clip_rule

        # how many policy versions old each token is at this update (its staleness)
        ages = torch.cat([(self.version - v[p.completion_mask]) for p, _, _, v in parts])

        # Algorithm 1, line 19: the clipped surrogate, micro-batch by micro-batch.
        self.optimizer.zero_grad(set_to_none=True)
        total_loss, finite = 0.0, True
        seen = []  # the log-probs of the gradient passes (a fixed clip's metrics use them)
        for k, (packed, old, adv, _ver) in enumerate(parts):
            lp = grad_lps[k] if grad_lps is not None else self._logprobs(packed)
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
        })  # fmt: skip
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


def _progress(enabled: bool, total: int, initial: int):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc="train", dynamic_ncols=True)
