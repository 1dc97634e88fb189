"""BAPO as a verl policy loss: math against verl's own formulas, config reading, registration.

verl is not installed here; the reference below writes out verl 0.9.1's ``vanilla`` policy loss
and ``agg_loss`` so that ``bapo_fixed`` can be checked against them.
"""

from __future__ import annotations

import sys
import types

import pytest
import torch

from bapo import BAPOConfig, search_bounds
from bapo.integrations import verl as bv


def _verl_agg(loss_mat, mask, mode, dp_size=1, batch_num_tokens=None, global_batch_size=None,
              loss_scale_factor=None):  # fmt: skip
    m = mask.float()
    if mode == "token-mean":
        n = m.sum() if batch_num_tokens is None else batch_num_tokens
        return (loss_mat * m).sum() / n * dp_size
    if mode == "token-sum":
        return (loss_mat * m).sum() * dp_size
    seq_mask = (m.sum(-1) > 0).float()
    g = seq_mask.sum() if global_batch_size is None else global_batch_size
    if mode in ("seq-mean-token-sum", "seq-mean-token-sum-norm"):
        loss = ((loss_mat * m).sum(-1) * seq_mask).sum() / g * dp_size
        if mode == "seq-mean-token-sum-norm":
            loss = loss / (loss_scale_factor or mask.shape[-1])
        return loss
    seq = (loss_mat * m).sum(-1) / (m.sum(-1) + 1e-8)
    return (seq * seq_mask).sum() / g * dp_size


def _verl_vanilla(old, lp, adv, mask, mode, eps_low, eps_high, c, weights=None, info=None):
    ratio = torch.exp(torch.clamp(lp - old, -20.0, 20.0))
    l1 = -adv * ratio
    l2 = -adv * torch.clamp(ratio, 1 - eps_low, 1 + eps_high)
    clip1 = torch.maximum(l1, l2)
    l3 = -adv * c
    clip2 = torch.min(l3, clip1)
    losses = torch.where(adv < 0, clip2, clip1)
    if weights is not None:
        losses = losses * weights
    return _verl_agg(losses, mask, mode, **(info or {}))


def _batch(seed=0, b=5, t=6):
    g = torch.Generator().manual_seed(seed)
    old = torch.log(torch.rand(b, t, generator=g) * 0.9 + 0.05)
    lp = (old + 0.6 * torch.randn(b, t, generator=g)).requires_grad_()
    adv = torch.randn(b, 1, generator=g).expand(b, t).contiguous()  # verl: per token
    mask = torch.rand(b, t, generator=g) < 0.8
    mask[-1] = False  # one fully masked row, which verl leaves out of sequence means
    w = torch.rand(b, t, generator=g) * 2
    return old, lp, adv, mask, w


MODES = ["token-mean", "token-sum", "seq-mean-token-sum", "seq-mean-token-sum-norm",
         "seq-mean-token-mean"]  # fmt: skip
INFOS = [None, dict(dp_size=2, batch_num_tokens=40, global_batch_size=9, loss_scale_factor=4)]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("info", INFOS)
@pytest.mark.parametrize("weighted", [False, True])
def test_bapo_fixed_equals_verls_vanilla_loss_and_gradient(mode, info, weighted):
    old, lp, adv, mask, w = _batch(3)
    w = w if weighted else None
    cfg = types.SimpleNamespace(clip_ratio=0.2, clip_ratio_low=0.2, clip_ratio_high=0.28,
                                clip_ratio_c=3.0, global_batch_info=info or {})  # fmt: skip
    ref = _verl_vanilla(old, lp, adv, mask, mode, 0.2, 0.28, 3.0, w, info)
    (g_ref,) = torch.autograd.grad(ref, lp)
    loss, metrics = bv.compute_policy_loss_bapo_fixed(old, lp, adv, mask, mode, cfg, w)
    (g,) = torch.autograd.grad(loss, lp)
    assert loss.item() == pytest.approx(ref.item(), rel=1e-5, abs=1e-7)
    torch.testing.assert_close(g, g_ref, rtol=1e-5, atol=1e-7)
    assert metrics["actor/bapo/c_low"] == 0.8 and metrics["actor/bapo/c_high"] == 1.28
    m = mask.float()
    kl = float(((old - lp.detach()) * m).sum() / m.sum())
    assert metrics["actor/ppo_kl"] == pytest.approx(kl, 1e-5)


def test_bapo_loss_searches_bounds_and_reports_them():
    old, lp, _, mask, _ = _batch(4)
    adv = torch.tensor([1.0, -1.0, -1.0, -1.0, -1.0])[:, None].expand_as(lp)
    cfg = types.SimpleNamespace(bapo={"rho0": 0.45}, global_batch_info={})
    loss, metrics = bv.compute_policy_loss_bapo(old, lp, adv, mask, "token-mean", cfg)
    assert loss.requires_grad
    assert metrics["actor/bapo/search_steps"] > 0
    assert metrics["actor/bapo/c_high"] > 1.2
    assert {
        "actor/pg_clipfrac",
        "actor/ppo_kl",
        "actor/pg_clipfrac_lower",
        "actor/bapo/rho",
    } <= set(metrics)


# --- config -------------------------------------------------------------------------------------
def test_config_is_read_from_actor_section_policy_loss_section_env_or_default(monkeypatch):
    monkeypatch.delenv(bv.ENV_VAR, raising=False)
    assert bv.bapo_config_from_verl({"bapo": {"rho0": 0.3}}) == BAPOConfig(rho0=0.3)
    nested = {"policy_loss": {"loss_mode": "bapo", "bapo": {"preset": "official"}}}
    assert bv.bapo_config_from_verl(nested) == BAPOConfig.official()
    monkeypatch.setenv(bv.ENV_VAR, '{"preset": "official", "b_plus": 2.5}')
    assert bv.bapo_config_from_verl(types.SimpleNamespace()) == BAPOConfig.official(b_plus=2.5)
    monkeypatch.setenv(bv.ENV_VAR, " official ")
    assert bv.bapo_config_from_verl({}) == BAPOConfig.official()
    monkeypatch.delenv(bv.ENV_VAR)
    assert bv.bapo_config_from_verl(None) == BAPOConfig.paper()


@pytest.mark.parametrize(
    "config, env, match",
    [
        ({"bapo": {"rho_0": 0.3}}, None, r"unknown BAPOConfig field\(s\) \['rho_0'\]"),
        ({"bapo": {"preset": "fast"}}, None, "preset='fast' is not allowed"),
        ({"bapo": {"rho0": 1.5}}, None, r"rho0=1.5 is out of range"),
        ({}, "{not json", "is not valid JSON"),
        ({}, "[1, 2]", "must hold a JSON object"),
    ],
)
def test_bad_config_is_named(monkeypatch, config, env, match):
    if env is None:
        monkeypatch.delenv(bv.ENV_VAR, raising=False)
    else:
        monkeypatch.setenv(bv.ENV_VAR, env)
    with pytest.raises(ValueError, match=match):
        bv.bapo_config_from_verl(config)


@pytest.mark.parametrize(
    "mode, info, match",
    [
        ("token-mean", {"dp_size": 2}, "batch_num_tokens is required"),
        ("seq-mean-token-mean", {"dp_size": 2}, "global_batch_size is required"),
        ("seq-sum", None, "loss_agg_mode='seq-sum' is not allowed"),
    ],
)
def test_bad_aggregation_is_named(mode, info, match):
    with pytest.raises(ValueError, match=match):
        bv.verl_aggregation(mode, torch.ones(2, 3, dtype=torch.bool), info)


# --- registration -------------------------------------------------------------------------------
def test_registers_with_verls_registry_when_verl_is_importable(monkeypatch):
    registry = {}

    def register_policy_loss(name):
        def deco(fn):
            registry[name] = fn
            return fn

        return deco

    core = types.ModuleType("verl.trainer.ppo.core_algos")
    core.register_policy_loss = register_policy_loss
    for name in ("verl", "verl.trainer", "verl.trainer.ppo"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    monkeypatch.setitem(sys.modules, "verl.trainer.ppo.core_algos", core)
    assert bv.register() is True
    assert registry == {
        "bapo": bv.compute_policy_loss_bapo,
        "bapo_fixed": bv.compute_policy_loss_bapo_fixed,
    }


def test_register_without_verl_does_nothing(monkeypatch):
    # block verl and every submodule already imported (with verl installed, the entry point
    # has imported verl.trainer.ppo.core_algos, which `sys.modules["verl"] = None` alone
    # would not hide)
    for name in [m for m in sys.modules if m == "verl" or m.startswith("verl.")] + ["verl"]:
        monkeypatch.setitem(sys.modules, name, None)
    assert bv.register() is False


def test_bapo_searches_on_plain_advantages_and_weights_the_loss_after():
    # the authors' recipe: bounds from the plain advantages, rollout_is_weights on the loss
    g = torch.Generator().manual_seed(11)
    old = torch.log(torch.rand(6, 8, generator=g) * 0.9 + 0.05)
    lp = (old + 0.5 * torch.randn(6, 8, generator=g)).requires_grad_()
    adv = torch.tensor([1.0, 1.0, 1.0, -1.0, -1.0, -1.0])[:, None].expand(6, 8).contiguous()
    mask = torch.ones(6, 8, dtype=torch.bool)
    w = torch.ones(6, 8)
    w[:3] = 0.1  # weighting A first would make the positive share small and move the bounds
    cfg = types.SimpleNamespace(bapo={"preset": "paper"}, global_batch_info={})
    plain = search_bounds(lp.detach(), old, adv, mask, BAPOConfig())
    on_weighted = search_bounds(lp.detach(), old, adv * w, mask, BAPOConfig())
    assert (plain.c_low, plain.c_high) != (on_weighted.c_low, on_weighted.c_high)
    loss, metrics = bv.compute_policy_loss_bapo(old, lp, adv, mask, "token-mean", cfg, w)
    assert (metrics["actor/bapo/c_low"], metrics["actor/bapo/c_high"]) == (
        plain.c_low,
        plain.c_high,
    )
    eps_low, eps_high = 1 - plain.c_low, plain.c_high - 1
    ref = _verl_vanilla(old, lp, adv, mask, "token-mean", eps_low, eps_high, 1e9, w)
    assert loss.item() == pytest.approx(ref.item(), rel=1e-5)
    torch.testing.assert_close(torch.autograd.grad(loss, lp)[0], torch.autograd.grad(ref, lp)[0])


def test_pipeline_parallel_is_refused_unless_a_group_is_set(monkeypatch):
    old, lp, adv, mask, _ = _batch(2)
    cfg = types.SimpleNamespace(megatron={"pipeline_model_parallel_size": 2}, global_batch_info={})
    with pytest.raises(ValueError, match="pipeline_model_parallel_size=2 is not supported"):
        bv.compute_policy_loss_bapo(old, lp, adv, mask, "token-mean", cfg)
    with pytest.raises(ValueError, match="pipeline_model_parallel_size=2"):
        bv.compute_policy_loss_bapo_fixed(old, lp, adv, mask, "token-mean", cfg)
    monkeypatch.setattr(bv, "_PROCESS_GROUP", None)
    bv.set_process_group(object())  # a caller that has the last stage's group
    try:
        assert bv._process_group(cfg) is bv._PROCESS_GROUP
    finally:
        bv.set_process_group(None)
    one = types.SimpleNamespace(megatron={"pipeline_model_parallel_size": 1}, global_batch_info={})
    loss, _ = bv.compute_policy_loss_bapo(old, lp, adv, mask, "token-mean", one)
    assert torch.isfinite(loss)
