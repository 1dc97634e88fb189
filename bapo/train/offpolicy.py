"""The paper's off-policy scenarios (Section 5.3): sample replay and partial rollouts.

* :class:`ReplayBuffer` keeps past samples, each with the behaviour log-probs of the policy that
  produced it, and mixes some into later update batches (bounded by age and size).
* :class:`Trajectory` is a completion that may be generated over several steps: each token keeps
  the log-prob and the version of the policy that generated it, so a resumed trajectory's ratio
  is taken per token against its own behaviour policy.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field

from bapo.tasks.base import Example


@dataclass
class Sample:
    """One finished completion and everything an update needs about it."""

    prompt_ids: list[int]
    completion_ids: list[int]
    behaviour_logprobs: list[float]  # log pi_rollout per completion token
    reward: float
    advantage: float
    versions: list[int] = field(default_factory=list)  # policy version of each token
    engine_logprobs: list[float] = field(default_factory=list)
    finished: bool = True

    @property
    def born(self) -> int:
        """The oldest policy version that generated part of this sample."""
        return min(self.versions) if self.versions else 0


@dataclass
class Trajectory:
    """A completion in progress; ``group`` ties the G completions of one prompt together."""

    group: int
    example: Example
    prompt_ids: list[int]
    completion_ids: list[int] = field(default_factory=list)
    behaviour_logprobs: list[float] = field(default_factory=list)
    engine_logprobs: list[float] = field(default_factory=list)
    versions: list[int] = field(default_factory=list)
    finished: bool = False  # EOS, or the length cap
    eos: bool = False  # stopped at EOS

    def extend(self, tokens, behaviour, engine, version: int) -> None:
        self.completion_ids += list(tokens)
        self.behaviour_logprobs += list(behaviour)
        self.engine_logprobs += list(engine)
        self.versions += [version] * len(tokens)

    @property
    def versions_spanned(self) -> int:
        return len(set(self.versions))

    def to_dict(self) -> dict:
        d = asdict(self)
        d["example"] = {"prompt": self.example.prompt, "answer": self.example.answer,
                        "meta": dict(self.example.meta)}  # fmt: skip
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Trajectory:
        d = dict(d)
        d["example"] = Example(**d["example"])
        return cls(**d)


class ReplayBuffer:
    """Past samples, at most ``max_size`` of them and none older than ``max_age`` versions.

    A sample's age is ``current version - the oldest version that generated it``.
    """

    def __init__(self, max_size: int, max_age: int):
        if max_size < 1:
            raise ValueError(f"offpolicy.replay_size={max_size} is out of range: allowed >= 1")
        if max_age < 0:
            raise ValueError(f"offpolicy.replay_max_age={max_age} is out of range: allowed >= 0")
        self.max_size = max_size
        self.max_age = max_age
        self.samples: list[Sample] = []

    def __len__(self) -> int:
        return len(self.samples)

    def evict(self, version: int) -> None:
        self.samples = [s for s in self.samples if version - s.born <= self.max_age]
        if len(self.samples) > self.max_size:
            self.samples = self.samples[-self.max_size :]  # the oldest go first

    def add(self, samples: list[Sample], version: int) -> None:
        """Keep samples that carry a learning signal (A != 0), then enforce the bounds."""
        self.samples += [s for s in samples if s.advantage != 0]
        self.evict(version)

    def draw(self, k: int, rng: random.Random, version: int) -> list[Sample]:
        self.evict(version)
        k = min(k, len(self.samples))
        return [self.samples[i] for i in sorted(rng.sample(range(len(self.samples)), k))]

    def ages(self, version: int) -> list[int]:
        return [version - s.born for s in self.samples]

    def state_dict(self) -> dict:
        return {"samples": [asdict(s) for s in self.samples]}

    def load_state_dict(self, state: dict) -> None:
        self.samples = [Sample(**d) for d in state["samples"]]
