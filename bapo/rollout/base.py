"""The rollout engine interface: the trainer asks for completions, an engine produces them.

Two engines plug in: :class:`bapo.rollout.hf.HFEngine` (``transformers``, CPU or CUDA, in the
training process) and :class:`bapo.rollout.vllm.VLLMEngine` (GPU, colocated).  Both return
token ids and the behaviour policy's per-token log-probs, so the trainer can compute
``pi_rollout`` itself and log the engine/trainer mismatch.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0: off
    max_new_tokens: int = 32

    def __post_init__(self):
        if not self.temperature > 0:
            raise ValueError(f"temperature={self.temperature} is out of range: allowed (0, inf)")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p={self.top_p} is out of range: allowed (0, 1]")
        if self.top_k < 0:
            raise ValueError(f"top_k={self.top_k} is out of range: allowed 0 (off) or >= 1")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens={self.max_new_tokens} is out of range: allowed >= 1")


@dataclass
class Generation:
    """One completion of one prompt."""

    prompt_ids: list[int]
    completion_ids: list[int]  # without padding; includes EOS when finished
    logprobs: list[float] = field(default_factory=list)  # engine's log-prob of each token
    finished: bool = False  # stopped at EOS (else it hit max_new_tokens)


class RolloutEngine(ABC):
    """Generates completions from the current policy."""

    @abstractmethod
    def generate(
        self, prompts: list[list[int]], params: SamplingParams, seed: int | None = None
    ) -> list[Generation]:
        """One :class:`Generation` per prompt, in order (repeat a prompt G times for a group)."""

    def sync_weights(self, model) -> None:  # noqa: B027 - engines sharing the model need nothing
        """Load the trainer's current weights (after each optimizer step, before a rollout)."""

    def sleep(self) -> None:  # noqa: B027
        """Release memory between rollout phases, where the engine supports it."""

    def wake(self) -> None:  # noqa: B027
        """Undo :meth:`sleep` before the next rollout."""
