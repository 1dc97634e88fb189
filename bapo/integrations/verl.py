"""BAPO's loss as a verl policy loss (written against verl 0.9.1's ``register_policy_loss``).

verl picks the actor's policy loss by name from a registry
(``actor_rollout_ref.actor.policy_loss.loss_mode``).  A registered function is called as::

    pg_loss, pg_metrics = fn(old_log_prob=..., log_prob=..., advantages=..., response_mask=...,
                             loss_agg_mode=..., config=actor_config, rollout_is_weights=...)

This module provides two such functions and registers them when verl is importable:

* ``"bapo"`` - :func:`compute_policy_loss_bapo`: adaptive bounds (Algorithm 1) under the
  :class:`~bapo.BAPOConfig` from :func:`bapo_config_from_verl`;
* ``"bapo_fixed"`` - :func:`compute_policy_loss_bapo_fixed`: the same code path with verl's
  own fixed bounds (``1 - clip_ratio_low``, ``1 + clip_ratio_high``, dual clip
  ``clip_ratio_c``), for like-for-like baselines.

verl imports it through the ``verl.plugins`` entry point that installing ``bapo`` declares, or
through ``VERL_USE_EXTERNAL_MODULES=bapo.integrations.verl``.  The functions themselves need
only ``torch`` and a config that answers ``get``/attribute access, so they are tested without
verl (``tests/test_verl_integration.py``) and against verl itself (``make test-verl``,
``tests/verl/``).

**Across ranks.**  The search and the logged statistics all-reduce over a process group, so
every rank picks the same bounds and logs the global ``rho``, clip fractions and token counts.
verl 0.9.1's ``ppo_loss(config, model_output, data, dp_group)`` receives the data-parallel
group but does not pass it on to a registered policy loss (which gets only the seven keyword
arguments above), so the plugin uses the default group, which under verl's FSDP engines is
the data-parallel group.  A caller that has a group hands it over with
:func:`set_process_group`.  Under Megatron pipeline parallelism only the last stage computes
the loss, so a collective over the default group would hang: the plugin refuses
``megatron.pipeline_model_parallel_size > 1`` with a clear error unless a group was set.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import fields
from typing import Any

import torch

from bapo.loss import BAPOConfig, FixedClip, LossStats, policy_loss

__all__ = [
    "ENV_VAR",
    "REGISTERED",
    "bapo_config_from_verl",
    "compute_policy_loss_bapo",
    "compute_policy_loss_bapo_fixed",
    "register",
    "set_process_group",
    "verl_aggregation",
]

_PROCESS_GROUP: Any = None  # set_process_group
ENV_VAR = "BAPO_VERL_CONFIG"  # "paper", "official", or JSON: '{"preset": "official", "rho0": 0.6}'
_BAPO_FIELDS = {f.name for f in fields(BAPOConfig)}


def _get(config: Any, key: str, default: Any = None) -> Any:
    """``config[key]`` for a dict, an omegaconf ``DictConfig``, a verl dataclass or a namespace."""
    if config is None:
        return default
    getter = getattr(config, "get", None)
    if callable(getter):
        try:
            return getter(key, default)
        except (TypeError, KeyError):
            pass
    return getattr(config, key, default)


def _bapo_from_mapping(values: Mapping[str, Any], where: str) -> BAPOConfig:
    values = dict(values)
    preset = values.pop("preset", "paper")
    unknown = set(values) - _BAPO_FIELDS
    if unknown:
        raise ValueError(
            f"{where}: unknown BAPOConfig field(s) {sorted(unknown)};"
            f" allowed {sorted(_BAPO_FIELDS)} and 'preset'"
        )
    if preset == "paper":
        return BAPOConfig.paper(**values)
    if preset == "official":
        return BAPOConfig.official(**values)
    raise ValueError(f"{where}: preset={preset!r} is not allowed: use 'paper' or 'official'")


def bapo_config_from_verl(config: Any) -> BAPOConfig:
    """The :class:`~bapo.BAPOConfig` for a verl actor config, first found of:

    1. a ``bapo`` mapping in the actor config or in its ``policy_loss`` section
       (``{"preset": "paper" | "official", <BAPOConfig fields>...}``) - where the config
       accepts extra keys (a plain ``DictConfig``);
    2. the ``BAPO_VERL_CONFIG`` environment variable: ``paper``, ``official``, or JSON of the
       same shape as the mapping (it must reach the Ray workers: a local Ray cluster inherits
       the launching shell's environment; elsewhere use ``ray_init.runtime_env.env_vars``);
    3. ``BAPOConfig.paper()``.
    """
    sections = (("config.bapo", config), ("config.policy_loss.bapo", _get(config, "policy_loss")))
    for where, section in sections:
        values = _get(section, "bapo")
        if values is not None:
            if isinstance(values, BAPOConfig):
                return values
            return _bapo_from_mapping(values, where)
    raw = os.environ.get(ENV_VAR, "").strip()
    if raw in ("paper", "official"):
        return _bapo_from_mapping({"preset": raw}, ENV_VAR)
    if raw:
        try:
            values = json.loads(raw)
        except ValueError as e:
            raise ValueError(f"{ENV_VAR} is not valid JSON: {e}") from e
        if not isinstance(values, dict):
            raise ValueError(f"{ENV_VAR} must hold a JSON object, got {type(values).__name__}")
        return _bapo_from_mapping(values, ENV_VAR)
    return BAPOConfig.paper()


def _fixed_from_verl(config: Any) -> FixedClip:
    eps = _get(config, "clip_ratio", 0.2)
    low = _get(config, "clip_ratio_low")
    high = _get(config, "clip_ratio_high")
    low = eps if low is None else low
    high = eps if high is None else high
    return FixedClip(1.0 - low, 1.0 + high, dual_clip=_get(config, "clip_ratio_c", 3.0))


def verl_aggregation(
    loss_agg_mode: str, mask: torch.Tensor, batch_info: Mapping[str, Any] | None
) -> tuple[str, float | None, float]:
    """``(agg, count, scale)`` so that ``scale * policy_loss(..., agg, count=count)`` equals verl's
    ``agg_loss(loss_mat, mask, loss_agg_mode, **global_batch_info)``."""
    info = dict(batch_info or {})
    dp = int(info.get("dp_size") or 1)
    tokens = info.get("batch_num_tokens")
    seqs = info.get("global_batch_size")
    if loss_agg_mode == "token-mean":
        if tokens is None and dp > 1:
            raise ValueError("(global) batch_num_tokens is required when dp_size > 1")
        return "token-mean", None if tokens is None else float(tokens), float(dp)
    if loss_agg_mode == "token-sum":
        return "token-mean", 1.0, float(dp)
    if loss_agg_mode in ("seq-mean-token-sum", "seq-mean-token-sum-norm", "seq-mean-token-mean"):
        if seqs is None:
            if dp > 1:
                raise ValueError("global_batch_size is required when dp_size > 1")
            seqs = int((mask.sum(-1) > 0).sum())  # verl leaves fully masked rows out
        scale = float(dp)
        if loss_agg_mode == "seq-mean-token-sum-norm":
            factor = info.get("loss_scale_factor") or mask.shape[-1]
            scale /= float(factor)
        agg = (
            "seq-mean-token-mean"
            if loss_agg_mode == "seq-mean-token-mean"
            else "seq-mean-token-sum"
        )
        return agg, float(seqs), scale
    raise ValueError(
        f"loss_agg_mode={loss_agg_mode!r} is not allowed: use token-mean, token-sum,"
        " seq-mean-token-sum, seq-mean-token-sum-norm or seq-mean-token-mean"
    )


def set_process_group(group: Any) -> None:
    """The process group (verl's data-parallel group) the search and the statistics all-reduce
    over; ``None`` restores the default group.  Setting one also allows pipeline parallelism:
    the group must then hold exactly the ranks that compute the loss."""
    global _PROCESS_GROUP
    _PROCESS_GROUP = group


def _process_group(config: Any) -> Any:
    """The group to all-reduce over, or an error where the default group would hang."""
    if _PROCESS_GROUP is not None:
        return _PROCESS_GROUP
    megatron = _get(config, "megatron")
    pp = _get(megatron, "pipeline_model_parallel_size", 1) or 1
    if int(pp) > 1:
        raise ValueError(
            f"megatron.pipeline_model_parallel_size={pp} is not supported by the bapo policy"
            " losses: only the last pipeline stage computes the loss, so the all-reduce over the"
            " default process group would hang.  Use pipeline_model_parallel_size=1, or call"
            " bapo.integrations.verl.set_process_group(<the last stage's data-parallel group>)"
            " in every worker"
        )
    return None


def _loss(old_log_prob, log_prob, advantages, response_mask, loss_agg_mode, config, weights, clip):
    group = _process_group(config)
    mask = response_mask.bool()
    agg, count, scale = verl_aggregation(loss_agg_mode, mask, _get(config, "global_batch_info"))
    # verl multiplies each token's loss by its rollout-correction weight (>= 0).  The authors'
    # recipe searches the bounds on the plain advantages and weights the loss afterwards;
    # policy_loss's token_weights do exactly that.
    loss, stats = policy_loss(log_prob, old_log_prob, advantages, mask, clip, agg, count=count,
                              token_weights=weights, group=group)  # fmt: skip
    return loss * scale, _metrics(stats, log_prob, old_log_prob, mask)


@torch.no_grad()
def _metrics(stats: LossStats, log_prob, old_log_prob, mask) -> dict[str, float]:
    n = mask.sum().clamp_min(1)
    neg_log_ratio = (old_log_prob - log_prob).clamp(-20.0, 20.0)
    out = {
        "actor/pg_clipfrac": stats.clip_high_frac + stats.clip_low_frac,
        "actor/ppo_kl": float(torch.where(mask, neg_log_ratio, 0.0).sum() / n),
        "actor/pg_clipfrac_lower": stats.clip_dual_frac,
    }
    out.update({f"actor/{k}": float(v) for k, v in stats.as_metrics().items()})
    return out


def compute_policy_loss_bapo(
    old_log_prob: torch.Tensor,
    log_prob: torch.Tensor,
    advantages: torch.Tensor,
    response_mask: torch.Tensor,
    loss_agg_mode: str = "token-mean",
    config: Any = None,
    rollout_is_weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """verl policy loss ``"bapo"``: Eq. 4 with Algorithm 1's bounds for this micro-batch.

    Under ``torch.distributed`` the search and the statistics all-reduce over the
    data-parallel group (see the module docstring), so every data-parallel rank must call this
    the same number of times per step (verl's default balanced micro-batch counts do).
    """
    clip = bapo_config_from_verl(config)
    return _loss(old_log_prob, log_prob, advantages, response_mask, loss_agg_mode, config,
                 rollout_is_weights, clip)  # fmt: skip


def compute_policy_loss_bapo_fixed(
    old_log_prob: torch.Tensor,
    log_prob: torch.Tensor,
    advantages: torch.Tensor,
    response_mask: torch.Tensor,
    loss_agg_mode: str = "token-mean",
    config: Any = None,
    rollout_is_weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """verl policy loss ``"bapo_fixed"``: the same surrogate with verl's fixed clip settings."""
    clip = _fixed_from_verl(config)
    return _loss(old_log_prob, log_prob, advantages, response_mask, loss_agg_mode, config,
                 rollout_is_weights, clip)  # fmt: skip


def register() -> bool:
    """Register ``"bapo"`` and ``"bapo_fixed"`` with verl; False (and nothing done) without verl."""
    try:
        from verl.trainer.ppo.core_algos import register_policy_loss
    except ImportError:
        return False
    register_policy_loss("bapo")(compute_policy_loss_bapo)
    register_policy_loss("bapo_fixed")(compute_policy_loss_bapo_fixed)
    return True


REGISTERED = register()
