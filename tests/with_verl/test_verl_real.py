"""The verl plugin against verl itself (``make test-verl`` builds ``.venv-verl`` with verl 0.9.1).

Skipped where verl is not importable (the project's main venv: verl pins a transformers below
the project's).  Each test calls verl's own code: its plugin discovery, ``get_policy_loss_fn``,
its ``ActorConfig``, its ``vanilla`` loss and its ``ppo_loss`` call site with a ``TensorDict``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

verl = pytest.importorskip("verl", reason="verl is not installed here: run `make test-verl`")
core_algos = pytest.importorskip("verl.trainer.ppo.core_algos")

from verl.workers.config import FSDPActorConfig, McoreActorConfig  # noqa: E402

from bapo.integrations import verl as bv  # noqa: E402

MODES = ["token-mean", "token-sum", "seq-mean-token-sum", "seq-mean-token-sum-norm",
         "seq-mean-token-mean"]  # fmt: skip


def _registered_in_fresh_process(env: dict[str, str]) -> list[str]:
    """The bapo names in verl's registry after a plain ``import verl`` under ``env``."""
    code = (
        "import json, verl\n"
        "from verl.trainer.ppo.core_algos import POLICY_LOSS_REGISTRY as R\n"
        "print(json.dumps(sorted(k for k in R if k.startswith('bapo'))))\n"
    )
    clean = {k: v for k, v in os.environ.items() if not k.startswith("VERL_USE_EXTERNAL")}
    out = subprocess.run([sys.executable, "-c", code], env={**clean, **env}, check=True,
                         capture_output=True, text=True, timeout=300)  # fmt: skip
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize(
    "env, expected",
    [
        ({}, ["bapo", "bapo_fixed"]),  # the verl.plugins entry point, loaded by default
        ({"VERL_USE_EXTERNAL_PLUGINS": "bapo"}, ["bapo", "bapo_fixed"]),  # named
        ({"VERL_USE_EXTERNAL_PLUGINS": "none"}, []),  # opted out
        ({"VERL_USE_EXTERNAL_PLUGINS": "someone_else"}, []),  # not in the allow-list
        (
            {
                "VERL_USE_EXTERNAL_PLUGINS": "none",
                "VERL_USE_EXTERNAL_MODULES": "bapo.integrations.verl",
            },
            ["bapo", "bapo_fixed"],
        ),
    ],  # fmt: skip
)
def test_registration_through_the_entry_point_and_the_opt_out_variables(env, expected):
    assert _registered_in_fresh_process(env) == expected


def _actor_config(**kw) -> FSDPActorConfig:
    base = dict(strategy="fsdp", ppo_mini_batch_size=4, ppo_micro_batch_size_per_gpu=2,
                rollout_n=1, clip_ratio_low=0.2, clip_ratio_high=0.28, clip_ratio_c=3.0)  # fmt: skip
    base.update(kw)
    return FSDPActorConfig(**base)


def _batch(seed=0, b=6, t=9):
    g = torch.Generator().manual_seed(seed)
    old = torch.log(torch.rand(b, t, generator=g) * 0.9 + 0.05)
    lp = (old + 0.6 * torch.randn(b, t, generator=g)).requires_grad_()
    adv = torch.randn(b, 1, generator=g).expand(b, t).contiguous()
    mask = torch.rand(b, t, generator=g) < 0.8
    mask[:, 0] = True
    w = torch.rand(b, t, generator=g) * 2
    return old, lp, adv, mask, w


INFOS = [{}, dict(dp_size=2, batch_num_tokens=70, global_batch_size=11, loss_scale_factor=4)]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("info", INFOS)
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("name", ["bapo_fixed", "bapo"])
def test_agrees_with_verls_vanilla_at_fixed_bounds(monkeypatch, mode, info, weighted, name):
    # "bapo" with a one-point grid at verl's bounds is a fixed clip too
    monkeypatch.setenv(bv.ENV_VAR, json.dumps({"a_minus": 0.8, "b_minus": 0.8, "a_plus": 1.28,
                                               "b_plus": 1.28, "dual_clip": 3.0}))  # fmt: skip
    old, lp, adv, mask, w = _batch(3)
    w = w if weighted else None
    config = _actor_config()
    config.global_batch_info.update(info)
    vanilla = core_algos.get_policy_loss_fn("vanilla")
    ours = core_algos.get_policy_loss_fn(name)
    kw = dict(old_log_prob=old, advantages=adv, response_mask=mask, loss_agg_mode=mode,
              config=config, rollout_is_weights=w)  # fmt: skip
    ref, ref_metrics = vanilla(log_prob=lp, **kw)
    loss, metrics = ours(log_prob=lp, **kw)
    assert loss.item() == pytest.approx(ref.item(), rel=1e-5, abs=1e-7)
    torch.testing.assert_close(
        torch.autograd.grad(loss, lp)[0], torch.autograd.grad(ref, lp)[0], rtol=1e-5, atol=1e-7
    )
    for key in ("actor/pg_clipfrac", "actor/ppo_kl", "actor/pg_clipfrac_lower"):
        assert metrics[key] == pytest.approx(ref_metrics[key], rel=1e-5, abs=1e-7), key
    assert (metrics["actor/bapo/c_low"], metrics["actor/bapo/c_high"]) == (0.8, 1.28)


def test_bapo_with_verls_actor_config_moves_its_bounds(monkeypatch):
    monkeypatch.delenv(bv.ENV_VAR, raising=False)
    old, lp, _, mask, _ = _batch(4)
    adv = torch.tensor([1.0, -1.0, -1.0, -1.0, -1.0, -1.0])[:, None].expand_as(lp).contiguous()
    loss, metrics = core_algos.get_policy_loss_fn("bapo")(
        old_log_prob=old, log_prob=lp, advantages=adv, response_mask=mask,
        loss_agg_mode="token-mean", config=_actor_config(), rollout_is_weights=None,
    )  # fmt: skip
    assert loss.requires_grad and metrics["actor/bapo/search_steps"] > 0
    assert metrics["actor/bapo/c_high"] > 1.2


def test_megatron_pipeline_parallel_config_is_refused_not_hung():
    from verl.workers.config import McoreEngineConfig

    config = McoreActorConfig(ppo_mini_batch_size=4, ppo_micro_batch_size_per_gpu=2, rollout_n=1,
                              megatron=McoreEngineConfig(pipeline_model_parallel_size=2))  # fmt: skip
    old, lp, adv, mask, _ = _batch(1)
    with pytest.raises(ValueError, match="pipeline_model_parallel_size=2 is not supported"):
        core_algos.get_policy_loss_fn("bapo")(
            old_log_prob=old, log_prob=lp, advantages=adv, response_mask=mask,
            loss_agg_mode="token-mean", config=config, rollout_is_weights=None,
        )  # fmt: skip


def test_verls_ppo_loss_call_site_with_a_tensordict(monkeypatch):
    from tensordict import TensorDict
    from verl.utils import tensordict_utils as tu
    from verl.workers.config.actor import PolicyLossConfig
    from verl.workers.utils.losses import ppo_loss

    monkeypatch.delenv(bv.ENV_VAR, raising=False)
    old, lp, adv, mask, w = _batch(5)
    b, r = lp.shape
    p = 3  # prompt tokens per row; every row is full length (attention mask all ones)

    def run(loss_mode):
        leaf = lp.detach().clone().requires_grad_()
        # verl's model output: log-probs over the whole unpadded sequence, left-shifted by one
        full = torch.cat([torch.zeros(b, p - 1), leaf, torch.zeros(b, 1)], dim=1).reshape(-1)
        data = TensorDict(
            {
                "prompts": torch.ones(b, p, dtype=torch.long),
                "responses": torch.ones(b, r, dtype=torch.long),
                "attention_mask": torch.ones(b, p + r, dtype=torch.long),
                "response_mask": mask.long(),
                "old_log_probs": old,
                "advantages": adv,
                "rollout_is_weights": w,
            },
            batch_size=[b],
        )
        tu.assign_non_tensor(data, dp_size=1, batch_num_tokens=int(mask.sum()),
                             global_batch_size=b)  # fmt: skip
        config = _actor_config(policy_loss=PolicyLossConfig(loss_mode=loss_mode),
                               entropy_coeff=0.0, use_kl_loss=False)  # fmt: skip
        loss, metrics = ppo_loss(config, {"log_probs": full}, data)
        return loss, metrics, torch.autograd.grad(loss, leaf)[0]

    ref, ref_m, g_ref = run("vanilla")
    loss, metrics, g = run("bapo_fixed")
    assert loss.item() == pytest.approx(ref.item(), rel=1e-5)
    torch.testing.assert_close(g, g_ref, rtol=1e-5, atol=1e-7)
    assert set(ref_m) <= set(metrics)
    loss, metrics, g = run("bapo")
    assert torch.isfinite(loss) and g.abs().sum() > 0
    assert "actor/bapo/rho" in metrics
