"""A real off-policy batch to look at: roll out with the model, let the policy move on for a few
updates (as it does when data goes stale), and read the batch's tokens under both policies."""

from __future__ import annotations

import copy

import torch

from bapo.train.config import Config
from bapo.train.logprobs import completion_logprobs
from bapo.train.trainer import Trainer
from bapo.viz.balance import TokenBatch


def stale_batch(cfg: Config, updates: int = 4, trainer: Trainer | None = None) -> TokenBatch:
    """One rollout batch after ``updates`` policy updates on it: its tokens' current log-probs
    (pi_theta), behaviour log-probs (pi_rollout) and advantages."""
    if updates < 0:
        raise ValueError(f"updates={updates} is out of range: allowed >= 0")
    if trainer is None:
        cfg = copy.deepcopy(cfg)
        cfg.train.epochs = max(updates, 1)
        cfg.run.progress = False
        trainer = Trainer(cfg.validate())
    samples, _ = trainer.rollout()
    for _ in range(updates):
        trainer._update_once(samples, staleness=0)
    batch = samples
    packed, old, adv, _ver = trainer._collate(batch)
    with torch.no_grad():
        lp = completion_logprobs(
            trainer.model, packed, temperature=trainer.cfg.rollout.temperature
        )[0]
    return TokenBatch.from_padded(lp, old, adv, packed.completion_mask)
