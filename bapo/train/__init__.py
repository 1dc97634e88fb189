"""The trainer: one config object (``config``), the step loop (``trainer``), the off-policy
scenarios (``offpolicy``), chunked log-probs, checkpoints, metrics sinks and ``compare``.

    from bapo.train import Trainer, load_config
    Trainer(load_config("cpu-tiny", algo="bapo")).train()
"""

from bapo.train.config import Config, load_config, preset
from bapo.train.trainer import Trainer

__all__ = ["Config", "Trainer", "load_config", "preset"]
