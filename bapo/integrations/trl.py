"""BAPO's loss inside TRL's ``GRPOTrainer`` (written against TRL 1.16).

:class:`BAPOGRPOTrainer` subclasses ``trl.GRPOTrainer`` and replaces its ``_compute_loss(model,
inputs)`` - the hook that turns the batch's per-token log-probs into the policy loss - with
:func:`bapo.policy_loss` under a :class:`~bapo.BAPOConfig` (adaptive bounds, Algorithm 1) or a
:class:`~bapo.FixedClip`.  Everything else (generation, vLLM, rewards, advantages, DeepSpeed /
FSDP through ``accelerate``) is TRL's own::

    from bapo import BAPOConfig
    from bapo.integrations.trl import BAPOGRPOTrainer

    trainer = BAPOGRPOTrainer(model=..., reward_funcs=..., args=GRPOConfig(...),
                              train_dataset=..., clip=BAPOConfig.paper())
    trainer.train()   # logs bapo/c_low, bapo/c_high, bapo/rho, clip/*, ...

What maps how (see :func:`trl_policy_loss`): TRL's ``old_per_token_logps`` are ``pi_rollout``
(the current policy's own log-probs when TRL skips recomputing them); the aggregation follows
``loss_type`` (``grpo``, ``bnpo``, ``dr_grpo``, ``dapo``); per-token multipliers TRL applies to
the loss (vLLM importance-sampling correction, entropy mask, off-policy mask) multiply the
advantages instead, which gives the same loss and gradient since they are >= 0 and the clip
regions depend only on the sign of ``A``; the KL penalty (``beta``) is added as TRL adds it.
Options whose loss this cannot express raise ``ValueError`` at construction; ``epsilon`` and
``epsilon_high``, which the clip rule replaces, warn when set to non-default values.

Metrics: everything ``GRPOTrainer`` logs from its loss, under the same names (``entropy``,
``kl`` when ``beta != 0``, ``clip_ratio/low_mean``, ``clip_ratio/high_mean``,
``clip_ratio/region_mean``, ``clip_ratio/low_min``, ``clip_ratio/high_max``, measured at the
bounds actually used), plus BAPO's (``bapo/*``, ``clip/*``, ``tokens/*``, ``policy/*``), global
over processes.

TRL is imported only when the class is first used, so ``import bapo.integrations.trl`` works
without it.
"""

from __future__ import annotations

import importlib
import warnings
from typing import Any

import torch

from bapo.loss import BAPOConfig, FixedClip, LossStats, _aggregate, policy_loss

__all__ = ["LOSS_TYPES", "BAPOGRPOTrainer", "trl_policy_loss"]  # noqa: F822 (lazy, see __getattr__)

# TRL loss_type -> the aggregation of bapo.policy_loss
LOSS_TYPES = {
    "grpo": "seq-mean-token-mean",
    "bnpo": "token-mean",
    "dr_grpo": "seq-mean-token-sum",
    "dapo": "token-mean",
}
INSTALL_HINT = "pip install 'bapo[trl]'"


def trl_policy_loss(
    per_token_logps: torch.Tensor,
    old_per_token_logps: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip: BAPOConfig | FixedClip,
    loss_type: str = "dapo",
    *,
    accumulation: float = 1.0,
    num_items: float | None = None,
    max_completion_length: int | None = None,
    token_weights: torch.Tensor | None = None,
    per_token_kl: torch.Tensor | None = None,
    beta: float = 0.0,
) -> tuple[torch.Tensor, LossStats]:
    """The loss ``GRPOTrainer._compute_loss`` would return, with BAPO's clipping.

    * ``advantages``: ``(B,)`` or ``(B, T)``; ``mask``: ``(B, T)`` completion mask.
    * ``loss_type``: ``grpo`` (mean over sequences of per-sequence token means), ``bnpo``
      (token mean of this micro-batch), ``dr_grpo`` (token sum over ``B * max_completion_length``),
      ``dapo`` (token sum over ``num_items``, TRL's already-rescaled global token count).
    * ``accumulation``: the gradient-accumulation divisor TRL applies (not for ``dapo``).
    * ``token_weights``: non-negative per-token (or per-sequence ``(B, 1)``) factors TRL
      multiplies into the loss; they scale the advantages here.
    * ``per_token_kl`` and ``beta``: TRL's KL penalty, aggregated like the policy term.
    """
    if loss_type not in LOSS_TYPES:
        raise ValueError(
            f"loss_type={loss_type!r} is not supported with BAPO: use one of {sorted(LOSS_TYPES)}"
        )
    if not accumulation > 0:
        raise ValueError(f"accumulation={accumulation!r} is out of range: allowed (0, inf)")
    if advantages.dim() == 1:
        advantages = advantages.unsqueeze(1)
    adv = advantages.expand_as(per_token_logps)
    if token_weights is not None:
        if (token_weights < 0).any():
            raise ValueError("token_weights must be >= 0: a negative factor would flip A's sign")
        adv = adv * token_weights.to(adv.dtype)
    agg = LOSS_TYPES[loss_type]
    count, scale = None, 1.0 / accumulation
    if loss_type == "dapo":
        if num_items is None:
            raise ValueError("loss_type='dapo' needs num_items (the batch's token count)")
        count, scale = float(num_items), 1.0
    elif loss_type == "dr_grpo":
        if not max_completion_length or max_completion_length < 1:
            raise ValueError(
                f"max_completion_length={max_completion_length!r} is out of range: allowed >= 1"
            )
        scale = scale / max_completion_length
    loss, stats = policy_loss(
        per_token_logps, old_per_token_logps, adv, mask.bool(), clip, agg, count=count
    )
    if beta != 0.0:
        if per_token_kl is None:
            raise ValueError(f"beta={beta} needs per_token_kl")
        loss = loss + beta * _aggregate(per_token_kl, mask.bool(), agg, count)
    return loss * scale, stats


def _require_trl():
    try:
        return importlib.import_module("trl")
    except ImportError as e:
        raise ImportError(f"BAPOGRPOTrainer needs TRL: {INSTALL_HINT}") from e


def _check_args(args: Any) -> None:
    """Refuse GRPOConfig options whose loss BAPO's surrogate does not reproduce."""
    bad = []
    if getattr(args, "loss_type", "dapo") not in LOSS_TYPES:
        bad.append(f"loss_type={args.loss_type!r} (use one of {sorted(LOSS_TYPES)})")
    if getattr(args, "importance_sampling_level", "token") != "token":
        bad.append(f"importance_sampling_level={args.importance_sampling_level!r} (use 'token')")
    if getattr(args, "delta", None) is not None:
        bad.append(
            f"delta={args.delta} (use BAPOConfig(dual_clip=...) or FixedClip(dual_clip=...))"
        )
    if getattr(args, "entropy_coef", 0.0) or getattr(args, "use_adaptive_entropy", False):
        bad.append("an entropy bonus (entropy_coef / use_adaptive_entropy)")
    if bad:
        raise ValueError("BAPOGRPOTrainer does not support " + "; ".join(bad))


def _warn_replaced(args: Any) -> None:
    """Warn about GRPOConfig options that the clip rule replaces (they would be ignored)."""
    eps, eps_high = getattr(args, "epsilon", 0.2), getattr(args, "epsilon_high", None)
    if eps != 0.2 or eps_high is not None:
        warnings.warn(
            f"GRPOConfig(epsilon={eps}, epsilon_high={eps_high}) is ignored by BAPOGRPOTrainer:"
            " its clip bounds come from clip= (BAPOConfig for adaptive bounds, or"
            " FixedClip(1 - epsilon, 1 + epsilon_high) for fixed ones)",
            UserWarning,
            stacklevel=3,
        )


_CLASS = None


def _build_class():
    trl = _require_trl()

    class BAPOGRPOTrainer(trl.GRPOTrainer):
        """``trl.GRPOTrainer`` whose policy loss is :func:`bapo.policy_loss`.

        ``clip``: a :class:`~bapo.BAPOConfig` (default: the paper's settings) or a
        :class:`~bapo.FixedClip`.  Under several processes the BAPO search all-reduces its
        statistics, so every rank uses the same bounds.
        """

        def __init__(self, *args, clip: BAPOConfig | FixedClip | None = None, **kwargs):
            clip = BAPOConfig() if clip is None else clip
            if not isinstance(clip, (BAPOConfig, FixedClip)):
                raise TypeError(
                    f"clip must be a BAPOConfig or a FixedClip, got {type(clip).__name__}"
                )
            self.clip = clip
            given = kwargs.get("args", args[2] if len(args) > 2 else None)
            if given is not None:
                _check_args(given)  # fail before TRL loads models and datasets
            super().__init__(*args, **kwargs)
            _check_args(self.args)
            _warn_replaced(self.args)
            if getattr(self, "aux_loss_enabled", False):
                raise ValueError("BAPOGRPOTrainer does not support the MoE router aux loss")

        def _compute_loss(self, model, inputs):
            prompt_ids, prompt_mask = inputs["prompt_ids"], inputs["prompt_mask"]
            completion_ids, completion_mask = inputs["completion_ids"], inputs["completion_mask"]
            input_ids = torch.cat([prompt_ids, completion_ids], dim=1)
            attention_mask = torch.cat([prompt_mask, completion_mask], dim=1)
            mask = completion_mask
            if "tool_mask" in inputs:
                mask = mask * inputs["tool_mask"]
            need_entropy = self.top_entropy_quantile < 1.0
            per_token_logps, entropies, _ = self._get_per_token_logps_and_entropies(
                model,
                input_ids,
                attention_mask,
                completion_ids.size(1),
                compute_entropy=True,  # logged as TRL logs it: the quantity BAPO protects
                **{k: inputs.get(k) for k in _MULTIMODAL_KEYS},
            )
            old = inputs.get("old_per_token_logps")
            old = per_token_logps.detach() if old is None else old
            advantages = inputs["advantages"]
            if advantages.dim() == 1:
                advantages = advantages.unsqueeze(1)

            weights = []  # the per-token factors TRL multiplies into the loss
            if need_entropy:
                weights.append(
                    self.get_high_entropy_mask(entropies, mask, 1 - self.top_entropy_quantile)
                )
            if self.off_policy_mask_threshold is not None:
                weights.append(
                    self.get_off_policy_mask(
                        advantages=advantages,
                        per_token_logps=per_token_logps,
                        sampling_per_token_logps=inputs.get("sampling_per_token_logps", old),
                        mask=mask,
                        off_policy_threshold=self.off_policy_mask_threshold,
                    )
                )
            if self.use_vllm and self.vllm_importance_sampling_correction:
                weights.append(inputs["importance_sampling_ratio"])
            token_weights = None
            for w in weights:
                w = w.to(per_token_logps.dtype)
                token_weights = w if token_weights is None else token_weights * w

            per_token_kl = None
            if self.beta != 0.0:
                ref = inputs["ref_per_token_logps"]
                per_token_kl = torch.exp(ref - per_token_logps) - (ref - per_token_logps) - 1
                if self.args.use_bias_correction_kl:
                    per_token_kl = per_token_kl * torch.exp(per_token_logps - old)

            mode = "train" if self.model.training else "eval"
            accumulation = self.current_gradient_accumulation_steps if mode == "train" else 1.0
            num_items = None
            if self.loss_type == "dapo":
                num_items = (
                    inputs["num_items_in_batch"].clamp(min=1.0) / self.accelerator.num_processes
                )
                if mode == "train":
                    num_items = num_items * accumulation / self.args.steps_per_generation
                num_items = float(num_items)
            loss, stats = trl_policy_loss(
                per_token_logps,
                old,
                advantages,
                mask,
                self.clip,
                self.loss_type,
                accumulation=accumulation,
                num_items=num_items,
                max_completion_length=self.max_completion_length,
                token_weights=token_weights,
                per_token_kl=per_token_kl,
                beta=self.beta,
            )
            self._log_trl(mode, mask, entropies, per_token_kl, per_token_logps, old, advantages,
                          stats)  # fmt: skip
            for key, value in stats.as_metrics().items():  # already global (policy_loss)
                self._metrics[mode][key].append(value)
            return loss

        @torch.no_grad()
        def _log_trl(self, mode, mask, entropies, per_token_kl, logps, old, advantages, stats):
            """The metrics GRPOTrainer._compute_loss logs, under its names, at the bounds used.

            Global masked means over processes (one reduce of a few sums), and TRL's per-sequence
            extremes (``low_min``, ``high_max``) from a gather, as TRL computes them."""
            from trl.trainer.utils import nanmax, nanmin

            m = mask.to(logps.dtype)
            ratio = torch.exp(logps.detach() - old)
            low = ((ratio < stats.c_low) & (advantages < 0)).to(m.dtype)
            high = ((ratio > stats.c_high) & (advantages > 0)).to(m.dtype)
            region = torch.clamp(low + high, max=1.0)
            kl = per_token_kl if per_token_kl is not None else torch.zeros_like(m)
            sums = torch.stack([(x * m).sum() for x in (entropies, kl, low, high, region, m)])
            totals = self.accelerator.reduce(sums, reduction="sum")
            count = totals[-1].clamp(min=1.0)
            ent, kl_mean, low_mean, high_mean, region_mean = (totals[:-1] / count).tolist()
            metrics = self._metrics[mode]
            if self.beta != 0.0:
                metrics["kl"].append(kl_mean)
            metrics["entropy"].append(ent)
            metrics["clip_ratio/low_mean"].append(low_mean)
            metrics["clip_ratio/high_mean"].append(high_mean)
            metrics["clip_ratio/region_mean"].append(region_mean)
            seq_low = (low * m).sum(-1) / m.sum(-1)
            seq_high = (high * m).sum(-1) / m.sum(-1)
            metrics["clip_ratio/low_min"].append(nanmin(self.accelerator.gather(seq_low)).item())
            metrics["clip_ratio/high_max"].append(nanmax(self.accelerator.gather(seq_high)).item())

    return BAPOGRPOTrainer


_MULTIMODAL_KEYS = (
    "pixel_values",
    "image_grid_thw",
    "num_images",
    "pixel_attention_mask",
    "spatial_shapes",
    "num_tiles",
    "image_sizes",
    "token_type_ids",
    "mm_token_type_ids",
    "image_position_ids",
)


def __getattr__(name: str):
    global _CLASS
    if name == "BAPOGRPOTrainer":
        if _CLASS is None:
            _CLASS = _build_class()
        return _CLASS
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
