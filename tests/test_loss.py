"""The loss core against plain references: Eq. 4, Eq. 7, Eq. 8 and Algorithm 1."""

import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bapo import (
    BAPOConfig,
    FixedClip,
    clip_regions,
    grpo_advantages,
    policy_loss,
    search_bounds,
    search_path,
)

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

CONFIGS = [
    BAPOConfig(),
    BAPOConfig(contribution="value"),
    BAPOConfig(order="official"),
    BAPOConfig(rollout_weight=False, dual_clip=3.5),
    BAPOConfig.official(),
    BAPOConfig.official(contribution="gradient"),
    BAPOConfig(rho0=0.6, a_minus=0.7, b_minus=0.7),  # no room for c_low: Algorithm 1 takes no step
    BAPOConfig(rho0=0.3, a_minus=0.85, b_minus=0.9, a_plus=1.1, b_plus=1.3, delta1=0.1),
]


# ---------------------------------------------------------------------------------------------
# A plain step-by-step reference, written from Algorithm 1 and Eq. 8 as printed
# ---------------------------------------------------------------------------------------------
def reference_sums(r, adv, w, c_low, c_high, cfg):
    """Eq. 8's positive and negative sums at one point, token by token (numpy float64)."""
    pos = neg = 0.0
    for ri, ai, wi in zip(r, adv, w):
        if ai > 0:
            if cfg.contribution == "gradient":
                pos += wi * float(ri) * ai if ri < np.float32(c_high) else 0.0
            else:
                pos += wi * ai * (c_high if ri >= np.float32(c_high) else float(ri))
        elif ai < 0:
            if cfg.contribution == "gradient":
                dual_ok = cfg.dual_clip is None or ri < np.float32(cfg.dual_clip)
                keep = ri > np.float32(c_low) and dual_ok
                neg += wi * float(ri) * -ai if keep else 0.0
            else:
                neg += wi * -ai * (c_low if ri <= np.float32(c_low) else float(ri))
    return pos, neg


def reference_search(lp, old, adv, mask, cfg):
    """Algorithm 1 one step at a time.  Returns (c_low, c_high, rho, steps, rho along the way)."""
    r = torch.exp((lp - old).clamp(-20, 20)).numpy().astype(np.float32)
    m = mask.numpy().astype(np.float64)
    w = m * (np.exp(old.double().numpy()) if cfg.rollout_weight else 1.0)
    a = adv.double().numpy()

    def rho_at(kl, kh):
        pos, neg = reference_sums(r, a, w, cfg.c_low_at(kl), cfg.c_high_at(kh), cfg)
        return pos, neg, (pos / (pos + neg) if pos + neg > 0 else math.nan)

    def met(pos, neg):
        if cfg.target == "share":
            return pos + neg > 0 and pos >= cfg.rho0 * (pos + neg)
        return pos > 0 and pos >= cfg.rho0 * neg

    kl = kh = steps = 0
    if float(np.sum(w * np.abs(a))) == 0.0:  # no advantage anywhere: nothing to balance
        return cfg.a_minus, cfg.a_plus, math.nan, 0, [math.nan]
    pos, neg, rho = rho_at(kl, kh)
    trace = [(pos, neg, rho)]
    if cfg.order == "paper":
        # while rho < rho0 and c_low + delta2 <= b-: raise c_high if it fits, else c_low
        while not met(pos, neg) and cfg.a_minus + (kl + 1) * cfg.delta2 <= cfg.b_minus + 1e-9:
            if cfg.a_plus + (kh + 1) * cfg.delta1 <= cfg.b_plus + 1e-9:
                kh += 1
            else:
                kl += 1
            steps += 1
            pos, neg, rho = rho_at(kl, kh)
            trace.append((pos, neg, rho))
    else:  # the public code: c_low first, then c_high
        while not met(pos, neg) and cfg.a_minus + (kl + 1) * cfg.delta2 <= cfg.b_minus + 1e-9:
            kl += 1
            steps += 1
            pos, neg, rho = rho_at(kl, kh)
            trace.append((pos, neg, rho))
        while not met(pos, neg) and cfg.a_plus + (kh + 1) * cfg.delta1 <= cfg.b_plus + 1e-9:
            kh += 1
            steps += 1
            pos, neg, rho = rho_at(kl, kh)
            trace.append((pos, neg, rho))
    return cfg.c_low_at(kl), cfg.c_high_at(kh), rho, steps, trace


def _tie_log_ratios():
    """log-ratios whose float32 exp lands exactly on a grid point of some config."""
    points = sorted({c for cfg in CONFIGS for c in
                     [cfg.c_low_at(k) for k in range(cfg.n_low + 1)]
                     + [cfg.c_high_at(k) for k in range(cfg.n_high + 1)]})  # fmt: skip
    ties = []
    for c in points:
        target = np.float32(c)
        x = np.float32(math.log(c))
        for _ in range(8):  # walk a few ulps until exp(x) == float32(c)
            got = torch.exp(torch.tensor(x)).item()
            if np.float32(got) == target:
                ties.append(float(x))
                break
            x = np.nextafter(x, np.float32(np.inf if got < target else -np.inf))
    return ties


TIES = _tie_log_ratios()


@st.composite
def batches(draw):
    n = draw(st.integers(1, 40))
    old = draw(st.lists(st.floats(-6.0, -0.01), min_size=n, max_size=n))
    kind = draw(st.sampled_from(["noise", "ties", "mixed"]))
    log_ratio = []
    for _ in range(n):
        use_tie = kind == "ties" or (kind == "mixed" and draw(st.booleans()))
        log_ratio.append(draw(st.sampled_from(TIES)) if use_tie else draw(st.floats(-1.5, 1.5)))
    adv_kind = draw(st.sampled_from(["mixed", "positive", "negative", "zero", "sparse"]))
    adv = []
    for _ in range(n):
        a = draw(st.floats(0.05, 3.0))
        sign = {"positive": 1, "negative": -1, "zero": 0}.get(adv_kind)
        if sign is None:
            choices = [1, -1] if adv_kind == "mixed" else [1, -1, 0, 0]
            sign = draw(st.sampled_from(choices))
        adv.append(sign * a)
    mask = draw(st.lists(st.booleans(), min_size=n, max_size=n))
    old_t = torch.tensor(old, dtype=torch.float32)
    lp = old_t + torch.tensor(log_ratio, dtype=torch.float32)
    # recompute so lp - old reproduces the drawn log-ratio bit for bit
    lp = (old_t.double() + torch.tensor(log_ratio).double()).float()
    old_t = (lp.double() - torch.tensor(log_ratio).double()).float()
    return lp, old_t, torch.tensor(adv), torch.tensor(mask)


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: f"{c.order}-{c.contribution}-{c.target}")
@SETTINGS
@given(batch=batches())
def test_search_bounds_matches_step_by_step_loop(cfg, batch):
    lp, old, adv, mask = batch
    got = search_bounds(lp, old, adv, mask, cfg)
    c_low, c_high, rho, steps, trace = reference_search(lp, old, adv, mask, cfg)
    if steps != got.n_steps:
        # search_path forms per-token products in float32 (sums in float64); the reference
        # works in float64 throughout.  They may only disagree where rho sits on rho0.
        k = min(steps, got.n_steps)
        pos, neg, _ = trace[k]
        edge = cfg.rho0 * (pos + neg) if cfg.target == "share" else cfg.rho0 * neg
        assert abs(pos - edge) <= 1e-6 * max(1e-6, pos + neg), (steps, got)
        return
    assert (got.c_low, got.c_high) == (c_low, c_high)
    if math.isnan(rho):
        assert math.isnan(got.rho)
    else:
        assert got.rho == pytest.approx(rho, rel=1e-6, abs=1e-9)


@pytest.mark.parametrize("order", ["paper", "official"])
@SETTINGS
@given(batch=batches())
def test_gradient_measure_rho_never_falls_along_the_path(order, batch):
    lp, old, adv, mask = batch
    path = search_path(lp, old, adv, mask, BAPOConfig(order=order))
    rho = path.rho[~torch.isnan(path.rho)]
    assert torch.all(rho[1:] >= rho[:-1] - 1e-12)


def test_value_measure_rho_falls_when_c_low_rises():
    # One positive token, one negative token far below c_low: it is clipped (no gradient), but
    # its loss value |A|*c_low grows as c_low rises, so the value share drops.
    lp = torch.log(torch.tensor([1.0, 0.3]))
    old = torch.zeros(2)
    adv = torch.tensor([1.0, -1.0])
    value = BAPOConfig(order="official", contribution="value", rho0=0.99, rollout_weight=False)
    grad = BAPOConfig(order="official", contribution="gradient", rho0=0.99, rollout_weight=False)
    p_val = search_path(lp, old, adv, None, value)
    p_grad = search_path(lp, old, adv, None, grad)
    low_phase = slice(0, value.n_low + 1)  # official order moves c_low first
    rv = p_val.rho[low_phase]
    # hand computed: rho = 1 / (1 + c_low) at c_low = 0.6, 0.62, ...
    expected = 1.0 / (1.0 + p_val.c_low[low_phase])
    assert torch.allclose(rv, expected)
    assert torch.all(rv[1:] < rv[:-1])
    # under the gradient measure the clipped negative token counts 0 at every c_low: rho = 1
    assert torch.all(p_grad.rho == 1.0)


def test_all_positive_all_negative_and_empty():
    cfg = BAPOConfig()
    lp = torch.log(torch.tensor([0.5, 0.4, 0.3]))
    old = lp - torch.tensor([0.1, -0.2, 0.4])
    pos = search_bounds(lp, old, torch.ones(3), None, cfg)
    assert (pos.c_low, pos.c_high, pos.rho, pos.n_steps) == (0.6, 1.2, 1.0, 0)
    neg = search_bounds(lp, old, -torch.ones(3), None, cfg)
    assert neg.rho == 0.0
    assert neg.n_steps == len(cfg.path()) - 1 == cfg.n_high + cfg.n_low
    assert (neg.c_low, neg.c_high) == (0.9, 3.0)
    empty = torch.zeros(3, dtype=torch.bool)
    b = search_bounds(lp, old, torch.ones(3), empty, cfg)
    assert (b.c_low, b.c_high, b.n_steps) == (0.6, 1.2, 0) and math.isnan(b.rho)
    lp_g = lp.clone().requires_grad_()
    loss, stats = policy_loss(lp_g, old, torch.ones(3), empty, cfg)
    assert loss.item() == 0.0 and math.isnan(stats.rho)
    loss.backward()
    assert torch.equal(lp_g.grad, torch.zeros(3))


def test_paper_path_shape():
    cfg = BAPOConfig()
    path = cfg.path()
    assert cfg.n_high == 36 and cfg.n_low == 15
    assert (
        path[0] == (0, 0) and path[36] == (0, 36) and path[37] == (1, 36) and path[-1] == (15, 36)
    )
    assert cfg.c_high_at(36) == 3.0 and cfg.c_low_at(15) == 0.9
    off = BAPOConfig.official()
    assert off.path()[:4] == [(0, 0), (1, 0), (2, 0), (3, 0)]
    assert off.c_low_at(off.n_low) == 0.95 and off.c_high_at(off.n_high) == 2.0


# ---------------------------------------------------------------------------------------------
# Eq. 4: values and gradients against a naive per-token reference
# ---------------------------------------------------------------------------------------------
def naive_token_objective(lp, old, a, c_low, c_high, dual=None):
    r = torch.exp(lp - old)
    obj = torch.min(r * a, torch.clamp(r, c_low, c_high) * a)
    if dual is not None and a < 0:
        obj = torch.max(obj, torch.as_tensor(dual * a, dtype=obj.dtype))
    return obj


@pytest.mark.parametrize("agg", ["token-mean", "seq-mean-token-sum", "seq-mean-token-mean"])
@pytest.mark.parametrize("dual", [None, 2.0])
def test_policy_loss_value_and_grad_match_naive_reference(agg, dual):
    g = torch.Generator().manual_seed(3)
    B, T = 5, 7
    old = torch.log(torch.rand(B, T, generator=g, dtype=torch.float64) * 0.9 + 0.05)
    lp0 = old + 0.6 * torch.randn(B, T, generator=g, dtype=torch.float64)
    adv = torch.randn(B, generator=g, dtype=torch.float64)
    mask = torch.rand(B, T, generator=g) < 0.8
    mask[0] = False  # an empty sequence
    clip = FixedClip(0.8, 1.2, dual_clip=dual)

    lp = lp0.clone().requires_grad_()
    loss, stats = policy_loss(lp, old, adv, mask, clip, agg=agg)
    loss.backward()

    lp_ref = lp0.clone().requires_grad_()
    per_seq = []
    for i in range(B):
        toks = [-naive_token_objective(lp_ref[i, t], old[i, t], adv[i], 0.8, 1.2, dual)
                for t in range(T) if mask[i, t]]  # fmt: skip
        s = torch.stack(toks).sum() if toks else lp_ref[i, 0] * 0
        per_seq.append((s, len(toks)))
    if agg == "token-mean":
        ref = sum(s for s, _ in per_seq) / mask.sum()
    elif agg == "seq-mean-token-sum":
        ref = sum(s for s, _ in per_seq) / B
    else:
        ref = sum(s / max(n, 1) for s, n in per_seq) / B
    ref.backward()
    assert loss.item() == pytest.approx(ref.item(), rel=1e-12)
    assert torch.allclose(lp.grad, lp_ref.grad, rtol=1e-10, atol=1e-14)

    # clipped tokens (Eq. 7, X = 0) get exactly zero gradient, unclipped ones do not
    adv_tok = adv[:, None].expand(B, T)
    high, low, dual_m = clip_regions(torch.exp(lp0 - old), adv_tok, 0.8, 1.2, dual)
    clipped = (high | low | dual_m) & mask
    assert clipped.any() and (~clipped & mask).any()
    assert torch.all(lp.grad[clipped] == 0)
    assert torch.all(lp.grad[~clipped & mask] != 0)
    assert torch.all(lp.grad[~mask] == 0)
    n = mask.sum().item()
    assert stats.clip_high_frac == pytest.approx((high & mask).sum().item() / n)
    assert stats.clip_low_frac == pytest.approx((low & mask).sum().item() / n)
    assert stats.clip_dual_frac == pytest.approx((dual_m & mask).sum().item() / n)
    if dual is not None:
        assert stats.clip_dual_frac > 0


def test_policy_loss_with_bapo_uses_searched_bounds():
    g = torch.Generator().manual_seed(0)
    old = torch.log(torch.rand(400, generator=g) * 0.9 + 0.05)
    lp = (old + 0.4 * torch.randn(400, generator=g)).requires_grad_()
    adv = torch.where(torch.rand(400, generator=g) < 0.3, 1.0, -1.0)
    cfg = BAPOConfig()
    b = search_bounds(lp.detach(), old, adv, None, cfg)
    loss, stats = policy_loss(lp, old, adv, None, cfg)
    loss_fixed, _ = policy_loss(lp, old, adv, None, FixedClip(b.c_low, b.c_high))
    assert (stats.c_low, stats.c_high, stats.n_steps) == (b.c_low, b.c_high, b.n_steps)
    assert b.n_steps > 0
    assert stats.rho == pytest.approx(b.rho)
    assert loss.item() == pytest.approx(loss_fixed.item())
    counts = (stats.n_pos_high_prob + stats.n_pos_low_prob + stats.n_neg_high_prob
              + stats.n_neg_low_prob)  # fmt: skip
    assert counts == stats.n_tokens == 400


def test_count_overrides_divisor_for_gradient_accumulation():
    g = torch.Generator().manual_seed(1)
    old = torch.log(torch.rand(4, 6, generator=g))
    lp = old + 0.1 * torch.randn(4, 6, generator=g)
    adv = torch.randn(4, generator=g)
    mask = torch.rand(4, 6, generator=g) < 0.7
    for agg, total in [("token-mean", mask.sum().item()), ("seq-mean-token-mean", 4)]:
        whole, _ = policy_loss(lp, old, adv, mask, FixedClip(), agg=agg)
        parts = sum(
            policy_loss(lp[i : i + 2], old[i : i + 2], adv[i : i + 2], mask[i : i + 2],
                        FixedClip(), agg=agg, count=total)[0]
            for i in (0, 2)
        )  # fmt: skip
        assert parts.item() == pytest.approx(whole.item(), rel=1e-6)


# ---------------------------------------------------------------------------------------------
# Validation and advantages
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs, field",
    [
        (dict(rho0=1.0), "rho0"),
        (dict(rho0=0.0), "rho0"),
        (dict(a_minus=0.0), "a_minus"),
        (dict(b_minus=0.5), "b_minus"),
        (dict(b_minus=1.1), "b_minus"),
        (dict(a_plus=0.9), "a_plus"),
        (dict(b_plus=1.0), "b_plus"),
        (dict(delta1=0.0), "delta1"),
        (dict(delta2=-0.1), "delta2"),
        (dict(order="fast"), "order"),
        (dict(contribution="loss"), "contribution"),
        (dict(target="odds"), "target"),
        (dict(dual_clip=2.0), "dual_clip"),
        (dict(rho0=float("nan")), "rho0"),
    ],
)
def test_bapo_config_errors_name_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        BAPOConfig(**kwargs)


def test_ratio_target_allows_values_above_one_and_fixed_clip_validates():
    assert BAPOConfig(target="ratio", rho0=2.0).rho0 == 2.0
    with pytest.raises(ValueError, match=r"c_low=1.2 is out of range: allowed \(0.0, 1.0\]"):
        FixedClip(1.2, 1.5)
    with pytest.raises(ValueError, match="c_high"):
        FixedClip(0.8, 0.9)
    assert FixedClip.grpo() == FixedClip(0.8, 1.2)
    assert FixedClip.clip_higher() == FixedClip(0.8, 1.28)
    with pytest.raises(ValueError, match="agg"):
        policy_loss(torch.zeros(3), torch.zeros(3), torch.ones(3), agg="sum")
    with pytest.raises(ValueError, match="advantages"):
        policy_loss(torch.zeros(2, 3), torch.zeros(2, 3), torch.ones(3, 2))


def test_official_preset_is_a_positive_share_of_one_third():
    cfg = BAPOConfig.official()
    assert cfg.target == "ratio" and cfg.rho0 == 0.5
    # pos/neg >= 0.5  <=>  pos/(pos+neg) >= 1/3: compare the two targets on a batch
    g = torch.Generator().manual_seed(2)
    old = torch.log(torch.rand(300, generator=g))
    lp = old + 0.5 * torch.randn(300, generator=g)
    adv = torch.where(torch.rand(300, generator=g) < 0.35, 1.0, -1.0)
    as_share = BAPOConfig.official(target="share", rho0=1 / 3)
    a = search_bounds(lp, old, adv, None, cfg)
    b = search_bounds(lp, old, adv, None, as_share)
    assert a == b


def test_grpo_advantages_hand_computed():
    r = torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0])
    a = grpo_advantages(r, 4)
    # group 1: mean 0.25, unbiased std sqrt(0.25) = 0.5
    assert torch.allclose(a[:4], torch.tensor([1.5, -0.5, -0.5, -0.5]), atol=1e-5)
    assert torch.equal(a[4:], torch.zeros(4))
    assert torch.allclose(
        grpo_advantages(r, 4, scale=False)[:4], torch.tensor([0.75, -0.25, -0.25, -0.25])
    )
    with pytest.raises(ValueError, match="group_size"):
        grpo_advantages(r, 1)
    with pytest.raises(ValueError, match="divisible"):
        grpo_advantages(r, 3)


# ---------------------------------------------------------------------------------------------
# Eq. 8 over sampled tokens: the plain sum estimates it, the pi_rollout-weighted sum does not
# ---------------------------------------------------------------------------------------------
def _vocab_policy():
    """A 12-token vocabulary: confident positive tokens, low-probability negative ones."""
    g = torch.Generator().manual_seed(3)
    z_old = torch.linspace(2.0, -2.0, 12, dtype=torch.float64)
    z_new = z_old + 0.4 * torch.randn(12, generator=g, dtype=torch.float64)
    adv = torch.tensor([1.0, 0.7, -0.4, 1.2, -1.0, 0.5, -0.8, -1.5, -0.6, -1.1, 0.9, -0.7],
                       dtype=torch.float64)  # fmt: skip
    return torch.log_softmax(z_old, 0), torch.log_softmax(z_new, 0), adv


@pytest.mark.parametrize("contribution", ["gradient", "value"])
def test_eq8_sampled_plain_sum_converges_to_the_vocabulary_sum(contribution):
    from bapo.loss import contribution_sums, importance_ratio, share

    old, new, adv = _vocab_policy()
    pi_old = old.exp()
    ratio = importance_ratio(new, old)
    c_low, c_high = 0.8, 1.2
    assert ((ratio >= c_high) & (adv > 0)).any() and ((ratio <= c_low) & (adv < 0)).any()
    kw = dict(contribution=contribution)
    # Eq. 8 as printed: a sum over the vocabulary weighted by pi_rollout (an expectation)
    exact = share(*contribution_sums(ratio, adv, pi_old, c_low, c_high, **kw))
    # what the pi_rollout-weighted sampled sum estimates instead: weights pi_rollout^2
    squared = share(*contribution_sums(ratio, adv, pi_old**2, c_low, c_high, **kw))
    assert abs(float(exact - squared)) > 0.05  # the two quantities differ on this vocabulary

    g = torch.Generator().manual_seed(0)
    ys = torch.multinomial(pi_old, 400_000, replacement=True, generator=g)  # y ~ pi_rollout
    cfg = BAPOConfig(contribution=contribution)
    rule = FixedClip(c_low, c_high)
    plain = policy_loss(new[ys], old[ys], adv[ys], clip=rule, rollout_weight=False)[1]
    weighted = policy_loss(new[ys], old[ys], adv[ys], clip=rule, rollout_weight=True)[1]
    key = "rho_gradient" if contribution == "gradient" else "rho_value"
    # standard error of a share from 400k draws is ~1e-3: 5e-3 is a 5-sigma band
    assert getattr(plain, key) == pytest.approx(float(exact), abs=5e-3)
    assert getattr(weighted, key) == pytest.approx(float(squared), abs=5e-3)
    assert abs(getattr(weighted, key) - float(exact)) > 0.04
    # and the BAPO search measures with the config's weight, off by default
    assert not cfg.rollout_weight
    at_start = search_path(new[ys], old[ys], adv[ys], None, BAPOConfig(
        contribution=contribution, a_minus=c_low, b_minus=0.9, a_plus=c_high))  # fmt: skip
    assert float(at_start.rho[0]) == pytest.approx(float(exact), abs=5e-3)
