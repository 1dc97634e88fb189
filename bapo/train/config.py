"""The one config object that flows through the trainer: dataclasses, YAML in and out, presets,
and command-line overrides such as ``algo.rho0=0.5``."""

from __future__ import annotations

import dataclasses
import inspect
import math
import re
import types
import typing
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from bapo.loss import AGG_MODES, BAPOConfig, FixedClip

ALGOS = ("grpo", "clip-higher", "bapo", "bapo-official", "fixed")
DTYPES = ("auto", "float32", "bfloat16", "float16")
DEVICE_PATTERN = re.compile(r"auto|cpu|mps|cuda(:\d+)?")
# cpu-guess (docs/science.md, round 3)
GUESS_CAP, GUESS_STEPS, GUESS_LR = 12, 120, 6e-4


@dataclass
class ModelConfig:
    name: str = "embedded"  # "embedded", a local folder, or a hub name
    dtype: str = "auto"  # auto (bf16 on CUDA, fp32 on CPU) | float32 | bfloat16 | float16
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    gradient_checkpointing: bool = False


@dataclass
class TaskConfig:
    name: str = "arithmetic"  # see bapo.tasks.make_task
    path: str | None = None  # data file for file-backed tasks
    # passed to the task constructor; the default is the task the embedded model was built for
    options: dict[str, Any] = field(default_factory=lambda: {"digits": 1, "ops": "+-*"})


@dataclass
class RolloutConfig:
    engine: str = "hf"  # hf | vllm
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    max_new_tokens: int = 8
    batch_size: int = 256  # sequences per generation batch (hf engine)
    gpu_memory_utilization: float = 0.4  # vllm engine
    # vllm engine; None: on where vLLM's platform has sleep mode (CUDA/ROCm), off on CPU
    enable_sleep_mode: bool | None = None


@dataclass
class AlgoConfig:
    """Which clip rule: GRPO [0.8, 1.2], clip-higher [0.8, 1.28], BAPO (paper or official), or a
    fixed clip with ``c_low``/``c_high``.  BAPO fields follow :class:`bapo.BAPOConfig`."""

    name: str = "bapo"
    c_low: float = 0.8  # for name == "fixed"
    c_high: float = 1.2
    # BAPO's fields default to BAPOConfig's (the paper's Section 5.1 values)
    rho0: float = BAPOConfig.rho0
    a_minus: float = BAPOConfig.a_minus
    b_minus: float = BAPOConfig.b_minus
    a_plus: float = BAPOConfig.a_plus
    b_plus: float = BAPOConfig.b_plus
    delta1: float = BAPOConfig.delta1
    delta2: float = BAPOConfig.delta2
    order: str = BAPOConfig.order
    contribution: str = BAPOConfig.contribution
    target: str = BAPOConfig.target
    rollout_weight: bool = BAPOConfig.rollout_weight
    dual_clip: float | None = BAPOConfig.dual_clip
    agg: str = "token-mean"
    scale_advantages: bool = True

    def clip_rule(self) -> FixedClip | BAPOConfig:
        if self.name == "grpo":
            return FixedClip(0.8, 1.2, self.dual_clip)
        if self.name == "clip-higher":
            return FixedClip(0.8, 1.28, self.dual_clip)
        if self.name == "fixed":
            return FixedClip(self.c_low, self.c_high, self.dual_clip)
        keys = [f.name for f in fields(BAPOConfig)]
        if self.name == "bapo-official":
            return BAPOConfig.official()
        if self.name == "bapo":
            return BAPOConfig(**{k: getattr(self, k) for k in keys})
        raise ValueError(f"algo.name={self.name!r} is not allowed: use one of {', '.join(ALGOS)}")


@dataclass
class TrainConfig:
    steps: int = 40
    prompts_per_step: int = 8
    group_size: int = 8  # G completions per prompt
    epochs: int = 1  # E passes over each rollout batch
    mini_batches: int = 1  # M optimizer steps per epoch; staleness reaches E*M - 1
    micro_batch_size: int = 64  # sequences per forward/backward (gradient accumulation)
    # BAPO with several micro-batches: the search needs the whole mini-batch's log-probs before
    # the first backward.  Each micro-batch forwarded with grad for it keeps its graph for the
    # gradient pass; the others get a no-grad forward and a second forward later.  "auto": keep
    # as many graphs as fit in graph_memory_gb (measured); true: all (the activation memory of
    # the whole mini-batch); false: only the first (the memory of one gradient pass; every other
    # micro-batch is forwarded twice).  Same bounds and gradients every way.
    keep_graphs: bool | str = "auto"
    graph_memory_gb: float | None = None  # kept graphs' budget; None: half a GPU's free memory,
    #                                       a quarter of the host's available RAM
    lr: float = 1e-3
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.99)
    warmup_steps: int = 0
    max_grad_norm: float = 1.0
    logprob_chunk: int = 4096  # tokens per LM-head chunk
    max_nonfinite: int = 3  # consecutive non-finite losses before the run stops (with a checkpoint)
    seed: int = 0
    # torch threads on CPU (0: torch's default).  Tiny models run 5-10x faster on one thread
    # than on two on a busy 2-core machine: the matmuls are too small to split.
    cpu_threads: int = 1


@dataclass
class OffPolicyConfig:
    """The paper's other staleness sources (Section 5.3), on top of E x M updates per batch."""

    replay_fraction: float = 0.0  # share of each update batch drawn from the replay buffer
    replay_size: int = 512  # samples the buffer keeps at most
    replay_max_age: int = 8  # policy versions; older samples are evicted
    partial_budget: int = 0  # tokens a completion may grow per step (0: whole rollouts)


@dataclass
class RunConfig:
    out_dir: str = "runs/bapo"
    save_every: int = 0  # 0: only at the end (and on Ctrl-C / abort)
    keep_checkpoints: int = 2
    eval_every: int = 10  # 0: never
    eval_size: int = 128
    tensorboard: bool = False
    progress: bool = True
    # a fresh run refuses a folder that holds another run's checkpoints unless this is true
    # (then that run's checkpoints and logs are deleted when the new run starts)
    overwrite: bool = False


@dataclass
class Config:
    preset: str = "cpu-tiny"
    model: ModelConfig = field(default_factory=ModelConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    algo: AlgoConfig = field(default_factory=AlgoConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    offpolicy: OffPolicyConfig = field(default_factory=OffPolicyConfig)
    run: RunConfig = field(default_factory=RunConfig)

    # ------------------------------------------------------------------------------------------
    def validate(self) -> Config:
        """Check every field a run depends on; errors name the field and what is allowed.

        Numbers are finite (``_coerce`` refuses inf and nan).  What depends on the machine (is
        CUDA there, can ``run.out_dir`` be written) is checked when a trainer starts, not here,
        so a GPU preset still validates on a laptop."""
        m = self.model
        if not m.name:
            raise ValueError("model.name is empty: give 'embedded', a local folder or a hub name")
        _choice("model.dtype", m.dtype, DTYPES)
        if not DEVICE_PATTERN.fullmatch(m.device):
            raise ValueError(
                f"model.device={m.device!r} is not allowed: use auto, cpu, mps, cuda or cuda:N"
            )
        self._validate_task()
        t = self.train
        for name in ("steps", "prompts_per_step", "epochs", "mini_batches", "micro_batch_size"):
            if getattr(t, name) < 1:
                raise ValueError(f"train.{name}={getattr(t, name)} is out of range: allowed >= 1")
        if t.group_size < 2:
            raise ValueError(
                f"train.group_size={t.group_size} is out of range: allowed >= 2 (GRPO needs a group)"
            )
        batch = t.prompts_per_step * t.group_size
        if batch % t.mini_batches:
            raise ValueError(
                f"train.mini_batches={t.mini_batches} does not divide the rollout batch of"
                f" {batch} sequences (prompts_per_step * group_size)"
            )
        mini = batch // t.mini_batches
        if mini % t.micro_batch_size and t.micro_batch_size < mini:
            raise ValueError(
                f"train.micro_batch_size={t.micro_batch_size} does not divide the mini-batch of"
                f" {mini} sequences"
            )
        if not (isinstance(t.keep_graphs, bool) or t.keep_graphs == "auto"):
            raise ValueError(
                f"train.keep_graphs={t.keep_graphs!r} is not allowed: use auto, true or false"
            )
        if t.graph_memory_gb is not None and not t.graph_memory_gb > 0:
            raise ValueError(
                f"train.graph_memory_gb={t.graph_memory_gb} is out of range: allowed (0, inf),"
                " or empty for auto"
            )
        if t.cpu_threads < 0:
            raise ValueError(f"train.cpu_threads={t.cpu_threads} is out of range: allowed >= 0")
        if not t.lr > 0:
            raise ValueError(f"train.lr={t.lr} is out of range: allowed (0, inf)")
        if not t.max_grad_norm > 0:
            raise ValueError(
                f"train.max_grad_norm={t.max_grad_norm} is out of range: allowed (0, inf)"
                " (a norm <= 0 would not clip but reverse or stop the update)"
            )
        if t.weight_decay < 0:
            raise ValueError(f"train.weight_decay={t.weight_decay} is out of range: allowed >= 0")
        for k, beta in enumerate(t.betas):
            if not 0 <= beta < 1:
                raise ValueError(
                    f"train.betas={list(t.betas)} is out of range: each allowed [0, 1)"
                    f" (betas[{k}]={beta})"
                )
        for name in ("logprob_chunk", "max_nonfinite"):
            if getattr(t, name) < 1:
                raise ValueError(f"train.{name}={getattr(t, name)} is out of range: allowed >= 1")
        for name in ("warmup_steps", "seed"):
            if getattr(t, name) < 0:
                raise ValueError(f"train.{name}={getattr(t, name)} is out of range: allowed >= 0")
        if self.algo.name not in ALGOS:
            raise ValueError(
                f"algo.name={self.algo.name!r} is not allowed: use one of {', '.join(ALGOS)}"
            )
        if self.algo.agg not in AGG_MODES:
            raise ValueError(f"algo.agg={self.algo.agg!r} is not allowed: use one of {AGG_MODES}")
        _named("algo", self.algo.clip_rule)  # validates the bounds / BAPO fields
        r = self.rollout
        _choice("rollout.engine", r.engine, ("hf", "vllm"))
        _named("rollout", self.sampling)  # validates temperature, top_p, top_k, max_new_tokens
        if r.batch_size < 1:
            raise ValueError(f"rollout.batch_size={r.batch_size} is out of range: allowed >= 1")
        if not 0 < r.gpu_memory_utilization <= 1:
            raise ValueError(
                f"rollout.gpu_memory_utilization={r.gpu_memory_utilization} is out of range:"
                " allowed (0, 1]"
            )
        o = self.offpolicy
        if not 0 <= o.replay_fraction < 1:
            raise ValueError(
                f"offpolicy.replay_fraction={o.replay_fraction} is out of range: allowed [0, 1)"
            )
        if o.replay_size < 1:
            raise ValueError(f"offpolicy.replay_size={o.replay_size} is out of range: allowed >= 1")
        if o.replay_max_age < 0:
            raise ValueError(
                f"offpolicy.replay_max_age={o.replay_max_age} is out of range: allowed >= 0"
            )
        if not 0 <= o.partial_budget <= r.max_new_tokens:
            raise ValueError(
                f"offpolicy.partial_budget={o.partial_budget} is out of range: allowed 0 (off) or"
                f" 1..rollout.max_new_tokens ({r.max_new_tokens})"
            )
        u = self.run
        if not u.out_dir:
            raise ValueError("run.out_dir is empty: give the run folder")
        for name in ("save_every", "eval_every"):
            if getattr(u, name) < 0:
                raise ValueError(
                    f"run.{name}={getattr(u, name)} is out of range: allowed 0 (off) or >= 1"
                )
        for name in ("keep_checkpoints", "eval_size"):
            if getattr(u, name) < 1:
                raise ValueError(f"run.{name}={getattr(u, name)} is out of range: allowed >= 1")
        return self

    def _validate_task(self) -> None:
        """``task.name`` is a registered task and every option is a parameter of its constructor."""
        from bapo.tasks import TASKS

        task = self.task
        _choice("task.name", task.name, tuple(sorted(TASKS)))
        params = inspect.signature(TASKS[task.name]).parameters
        if any(p.kind is p.VAR_KEYWORD for p in params.values()):
            return  # a loader that forwards its options: they are checked when it runs
        allowed = [n for n, p in params.items() if p.kind is not p.VAR_POSITIONAL]
        options = [n for n in allowed if n != "path"]
        for key in task.options:
            if key not in options:
                raise ValueError(
                    f"task.options.{key} is not an option of task {task.name!r}: allowed"
                    f" {', '.join(options) or 'none'}"
                )
        if task.path is not None and "path" not in allowed:
            raise ValueError(
                f"task.path={task.path!r} is not used by task {task.name!r}: leave it empty"
            )
        if (
            task.path is None
            and "path" in allowed
            and params["path"].default is params["path"].empty
        ):
            raise ValueError(f"task.path is empty: task {task.name!r} needs a data file")

    def sampling(self):
        from bapo.rollout.base import SamplingParams

        r = self.rollout
        return SamplingParams(r.temperature, r.top_p, r.top_k, r.max_new_tokens)

    @property
    def staleness(self) -> int:
        """Policy updates each rollout batch sees (E * M)."""
        return self.train.epochs * self.train.mini_batches

    # --- YAML and overrides -------------------------------------------------------------------
    def to_dict(self) -> dict:
        return asdict(self)

    def to_yaml(self, path: str | Path | None = None) -> str:
        text = yaml.safe_dump(_plain(self.to_dict()), sort_keys=False)
        if path is not None:
            Path(path).write_text(text)
        return text

    @classmethod
    def from_dict(cls, data: dict) -> Config:
        task = data.get("task") if isinstance(data, dict) else None
        if isinstance(task, dict) and "options" not in task:
            if task.get("name", TaskConfig.name) != TaskConfig.name:
                # the default options are the default task's: another task starts with none
                data = {**data, "task": {**task, "options": {}}}
        return _build(cls, data, prefix="")

    @classmethod
    def from_yaml(cls, path: str | Path) -> Config:
        p = Path(path)
        if not p.exists():
            raise FileNotFoundError(f"config file {p} does not exist")
        if not p.is_file():
            raise ValueError(f"config file {p} is not a file (a folder?): give a YAML file")
        try:
            data = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            raise ValueError(f"config file {p}: {_yaml_error(e)}") from None
        except UnicodeDecodeError:
            raise ValueError(f"config file {p} is not a text file: give a YAML file") from None
        if not isinstance(data, dict):
            raise ValueError(f"config file {p} must hold a mapping at the top level")
        return cls.from_dict(data)

    def override(self, assignments: list[str]) -> Config:
        """Apply ``section.field=value`` strings (values parsed as YAML scalars)."""
        data = self.to_dict()
        task_before = data["task"]["name"]
        task_keys = set()  # task fields the assignments set
        for item in assignments:
            if "=" not in item:
                raise ValueError(f"override {item!r} must look like section.field=value")
            key, raw = item.split("=", 1)
            node = data
            parts = key.strip().split(".")
            for part in parts[:-1]:
                if not isinstance(node, dict) or part not in node:
                    raise ValueError(f"override {key!r}: unknown section {part!r}")
                node = node[part]
            leaf = parts[-1]
            if not isinstance(node, dict) or (leaf not in node and parts[0] != "task"):
                raise ValueError(f"override {key!r}: unknown field {leaf!r}")
            try:
                value = yaml.safe_load(raw) if raw != "" else None
            except yaml.YAMLError as e:
                raise ValueError(
                    f"override {key}: {raw!r} is not a YAML value ({_yaml_error(e)})"
                ) from None
            node[leaf] = value
            if parts[0] == "task":
                task_keys.add(".".join(parts[:3]))
        if data["task"]["name"] != task_before:
            # another task: the preset's options and data file belonged to the old one; keep
            # only what the assignments gave
            options = data["task"]["options"]
            if "task.options" not in task_keys and isinstance(options, dict):
                data["task"]["options"] = {
                    k: v for k, v in options.items() if f"task.options.{k}" in task_keys
                }
            if "task.path" not in task_keys:
                data["task"]["path"] = None
        return Config.from_dict(data)


def _choice(name: str, value, allowed: tuple) -> None:
    if value not in allowed:
        raise ValueError(f"{name}={value!r} is not allowed: use one of {', '.join(allowed)}")


def _named(section: str, check) -> None:
    """Run ``check`` and put ``section.`` before a message that names a bare field."""
    try:
        check()
    except ValueError as e:
        msg = str(e)
        raise ValueError(msg if msg.startswith(section + ".") else f"{section}.{msg}") from None


def _yaml_error(e: yaml.YAMLError) -> str:
    """One line: where (line, column) and what."""
    mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
    what = " ".join(str(getattr(e, "problem", None) or e).split())
    if mark is None:
        return f"malformed YAML ({what})"
    return f"malformed YAML at line {mark.line + 1}, column {mark.column + 1} ({what})"


# what a resumed run may change without a word: where and how it logs, and how long it runs
RESUME_FREE = ("preset", "run.", "train.steps")


def config_changes(old_yaml: str, new: Config) -> list[str]:
    """``field: old -> new`` for every field a resumed run changes against the config its
    checkpoint was written with (``old_yaml``), apart from ``RESUME_FREE``."""

    def flat(d, prefix=""):
        out = {}
        for k, v in d.items():
            if isinstance(v, dict) and k != "options":
                out.update(flat(v, f"{prefix}{k}."))
            else:
                out[prefix + k] = v
        return out

    before = flat(yaml.safe_load(old_yaml) or {})
    after = flat(yaml.safe_load(new.to_yaml()))
    missing = "(absent)"
    return [
        f"{k}: {before.get(k, missing)} -> {after.get(k, missing)}"
        for k in sorted(set(before) | set(after))
        if not k.startswith(RESUME_FREE) and before.get(k, missing) != after.get(k, missing)
    ]


def _plain(x):
    if isinstance(x, tuple):
        return list(x)
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_plain(v) for v in x]
    return x


def _build(cls, data: dict, prefix: str):
    if not isinstance(data, dict):
        raise ValueError(f"{prefix.rstrip('.') or 'config'} must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in fields(cls)}
    unknown = set(data) - set(known)
    if unknown:
        raise ValueError(
            f"unknown field(s) {', '.join(prefix + u for u in sorted(unknown))};"
            f" allowed: {', '.join(prefix + k for k in known)}"
        )
    kwargs = {}
    for name, value in data.items():
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            kwargs[name] = _build(hint, value or {}, prefix + name + ".")
        else:
            kwargs[name] = _coerce(value, hint, prefix + name)
    return cls(**kwargs)


def _coerce(value, hint, name: str):
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if value is None:
        if type(None) in args or hint is Any:
            return None
        raise ValueError(f"{name} must not be empty")
    if origin is typing.Union or origin is types.UnionType:  # Optional[X] or X | None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], name) if len(inner) == 1 else value
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ValueError(f"{name}={value!r} must be true or false")
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{name}={value!r} is not allowed: finite numbers only")
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value:
            raise ValueError(f"{name}={value!r} must be an integer")
        return int(value)
    if hint is float:
        if isinstance(value, str):  # YAML 1.1 reads "1e-5" (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{name}={value!r} must be a number")
        if not math.isfinite(value):
            raise ValueError(f"{name}={value!r} is not allowed: finite numbers only")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ValueError(f"{name}={value!r} must be a string")
        return value
    if origin is tuple:
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise ValueError(f"{name}={value!r} must be a list of {len(args)} numbers")
        return tuple(_coerce(v, a, name) for v, a in zip(value, args))
    if origin is dict:
        if not isinstance(value, dict):
            raise ValueError(f"{name}={value!r} must be a mapping")
        return dict(value)
    return value


# ----------------------------------------------------------------------------------------------
# Presets
# ----------------------------------------------------------------------------------------------
def _cpu_tiny() -> Config:
    """The embedded default: the package's tiny model on its arithmetic task, on a laptop CPU."""
    c = Config(preset="cpu-tiny")
    # Chosen (docs/science.md) so that `bapo compare --preset cpu-tiny --seeds 3 --staleness 4`
    # shows real learning within ~30 s a run on 2 cores: lr 3e-4 keeps approx_kl ~0.01 at
    # staleness 4 (1e-3 made reward fall, 5e-4 learned less), 60 steps of 8 prompts x 8
    # completions lift sampled accuracy from ~0.3 to ~0.6.  epochs stays 1 (tests rely on one
    # update per step); `bapo compare --staleness 4` sets the staleness the study used.
    c.train = TrainConfig(steps=60, prompts_per_step=8, group_size=8, epochs=1, mini_batches=1,
                          lr=3e-4)  # fmt: skip
    c.rollout = RolloutConfig(temperature=1.0, max_new_tokens=8)
    c.run = RunConfig(eval_every=10, eval_size=128)
    return c


def _cpu_guess() -> Config:
    """The embedded guess-and-check model (``bapo.tasks.guess_check``): wrong answers run to the
    token cap, so negative tokens outnumber positive ones - the premise of BAPO, on a laptop.

    ``train.steps`` counts updates at staleness 1; ``bapo compare --staleness S`` keeps the
    number of updates and samples and makes each batch serve ``S`` mini-batch updates
    (docs/science.md, round 3, chose the values)."""
    c = Config(preset="cpu-guess")
    c.model = ModelConfig(name="embedded:guess-check")
    c.task = TaskConfig(name="guess-check", options={})
    c.rollout = RolloutConfig(temperature=1.0, max_new_tokens=GUESS_CAP)
    c.train = TrainConfig(steps=GUESS_STEPS, prompts_per_step=8, group_size=8, epochs=1,
                          mini_batches=1, lr=GUESS_LR)  # fmt: skip
    c.run = RunConfig(out_dir="runs/guess", eval_every=GUESS_STEPS // 4, eval_size=128)
    return c


def _gpu_qwen_math() -> Config:
    """A real model on one GPU: Qwen2.5-Math-1.5B on a local math JSONL (see docs)."""
    c = Config(preset="gpu-qwen2.5-math-1.5b")
    c.model = ModelConfig(name="Qwen/Qwen2.5-Math-1.5B", dtype="bfloat16", device="cuda",
                          gradient_checkpointing=True)  # fmt: skip
    c.task = TaskConfig(name="math-jsonl", path="data/math_train.jsonl", options={})
    c.rollout = RolloutConfig(engine="vllm", temperature=1.0, max_new_tokens=2048,
                              gpu_memory_utilization=0.4)  # fmt: skip
    c.train = TrainConfig(steps=200, prompts_per_step=32, group_size=8, epochs=1, mini_batches=4,
                          micro_batch_size=8, lr=1e-6, weight_decay=0.01, max_grad_norm=1.0,
                          logprob_chunk=2048)  # fmt: skip
    c.run = RunConfig(out_dir="runs/qwen-math", save_every=50, eval_every=0)
    return c


def _cpu_smollm2() -> Config:
    """A real pretrained model on a laptop: SmolLM2-135M-Instruct (the `smol` extra, no hub
    download) on a chat task it can learn in minutes (which of two numbers is larger)."""
    c = Config(preset="cpu-smollm2")
    c.model = ModelConfig(name="smollm2", dtype="float32", device="cpu")
    c.task = TaskConfig(name="larger-number", options={})
    c.rollout = RolloutConfig(temperature=1.0, max_new_tokens=16, batch_size=64)
    # lr 1e-5: held-out accuracy 45% -> 94% in 16 on-policy steps of 4 x 8 (docs/smol.md)
    c.train = TrainConfig(steps=20, prompts_per_step=4, group_size=8, epochs=2, mini_batches=1,
                          micro_batch_size=32, lr=1e-5, cpu_threads=0)  # fmt: skip
    c.run = RunConfig(out_dir="runs/smollm2", eval_every=0)
    return c


PRESETS = {
    "cpu-tiny": _cpu_tiny,
    "cpu-guess": _cpu_guess,
    "cpu-smollm2": _cpu_smollm2,
    "gpu-qwen2.5-math-1.5b": _gpu_qwen_math,
}


def preset(name: str) -> Config:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}: allowed {', '.join(sorted(PRESETS))}")
    return PRESETS[name]()


# The paper's off-policy scenarios (Section 5.3) on top of E x M updates per batch, as overrides.
SCENARIOS: dict[str, list[str]] = {
    "epochs": [],  # staleness from reusing each batch (train.epochs x train.mini_batches)
    "replay": ["offpolicy.replay_fraction=0.5", "offpolicy.replay_max_age=4"],
    "partial": ["offpolicy.partial_budget=2"],  # completions grow 2 tokens per step
}


def load_config(
    preset_name: str | None = None,
    config_file: str | None = None,
    algo: str | None = None,
    overrides: list[str] | None = None,
    scenario: str | None = None,
) -> Config:
    """Preset (or config file), then ``--algo``, the scenario, then ``section.field=value``."""
    if config_file:
        cfg = Config.from_yaml(config_file)
    else:
        cfg = preset(preset_name or "cpu-tiny")
    if algo is not None:
        if algo not in ALGOS:
            raise ValueError(f"unknown algorithm {algo!r}: allowed {', '.join(ALGOS)}")
        cfg.algo.name = algo
    if scenario is not None:
        if scenario not in SCENARIOS:
            raise ValueError(f"unknown scenario {scenario!r}: allowed {', '.join(SCENARIOS)}")
        overrides = SCENARIOS[scenario] + list(overrides or [])
    if overrides:
        cfg = cfg.override(overrides)
    return cfg.validate()
