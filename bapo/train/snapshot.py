"""A real off-policy batch to look at: roll out with the model, let the policy move on for a few
updates (as it does when data goes stale), and read the batch's tokens under both policies."""

from __future__ import annotations

import copy

from bapo.train.config import Config
from bapo.train.trainer import Trainer
from bapo.viz.balance import TokenBatch


def stale_batch(cfg: Config, updates: int = 4, trainer: Trainer | None = None) -> TokenBatch:
    """One rollout batch after ``updates`` policy updates on it: its tokens' current log-probs
    (pi_theta), behaviour log-probs (pi_rollout) and advantages.  A ``trainer`` passed in does
    its own ``E x M`` updates instead (none when ``updates=0``)."""
    if updates < 0:
        raise ValueError(f"updates={updates} is out of range: allowed >= 0")
    if trainer is None:
        cfg = copy.deepcopy(cfg)
        cfg.train.epochs = max(updates, 1)
        cfg.train.mini_batches = 1
        cfg.run.progress = False
        trainer = Trainer(cfg.validate())
    samples, _ = trainer.rollout()
    if updates:
        trainer.update(samples)  # E = updates epochs of one update each on this batch
    return TokenBatch.from_padded(*trainer.logprob_batch(samples))
