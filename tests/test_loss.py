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
    # steps that do not divide their ranges: the last step is min(c + delta, b)
    BAPOConfig(
        rho0=0.45, a_minus=0.8, b_minus=0.95, delta2=0.1, a_plus=1.2, b_plus=1.45, delta1=0.1
    ),  # fmt: skip
    BAPOConfig.official(a_minus=0.8, b_minus=0.95, delta2=0.1, dual_clip=1.1),
]


# ---------------------------------------------------------------------------------------------
# A plain step-by-step reference, written from Algorithm 1 and Eq. 8 as printed
# ---------------------------------------------------------------------------------------------
def reference_sums(r, adv, w, c_low, c_high, cfg):
    """Eq. 8's positive and negative sums at one point, token by token (numpy float64).

    A ratio equal to a bound is unclipped (torch.clamp's convention in verl and TRL)."""
    pos = neg = 0.0
    for ri, ai, wi in zip(r, adv, w):
        if ai > 0:
            if cfg.contribution == "gradient":
                pos += wi * float(ri) * ai if ri <= np.float32(c_high) else 0.0
            else:
                pos += wi * ai * (c_high if ri > np.float32(c_high) else float(ri))
        elif ai < 0:
            if cfg.contribution == "gradient":
                dual_ok = cfg.dual_clip is None or ri <= np.float32(cfg.dual_clip)
                keep = ri >= np.float32(c_low) and dual_ok
                neg += wi * float(ri) * -ai if keep else 0.0
            else:
                neg += wi * -ai * (c_low if ri < np.float32(c_low) else float(ri))
    return pos, neg


def _up(c, delta, top):
    """One step of a bound, as the authors' code takes it: min(c + delta, top) (rounded to 10
    decimals so that no float drift builds up)."""
    return min(round(c + delta, 10), top)


def reference_search(lp, old, adv, mask, cfg):
    """Algorithm 1 one step at a time.  Returns (c_low, c_high, rho, steps, rho along the way).

    The bounds walk by ``min(c + delta, b)``; when no token can be clipped at any bound in the
    ranges (no weighted positive token above a+, no weighted negative one below b-) the search
    stays at (a-, a+)."""
    r = torch.exp((lp - old).clamp(-20, 20)).numpy().astype(np.float32)
    m = mask.numpy().astype(np.float64)
    w = m * (np.exp(old.double().numpy()) if cfg.rollout_weight else 1.0)
    a = adv.double().numpy()
    c_low, c_high = cfg.a_minus, cfg.a_plus

    def rho_at(c_low, c_high):
        pos, neg = reference_sums(r, a, w, c_low, c_high, cfg)
        return pos, neg, (pos / (pos + neg) if pos + neg > 0 else math.nan)

    def met(pos, neg):
        if cfg.target == "share":
            return pos + neg > 0 and pos >= cfg.rho0 * (pos + neg)
        return pos > 0 and pos >= cfg.rho0 * neg

    steps = 0
    if float(np.sum(w * np.abs(a))) == 0.0:  # no advantage anywhere: nothing to balance
        return cfg.a_minus, cfg.a_plus, math.nan, 0, [math.nan]
    pos, neg, rho = rho_at(c_low, c_high)
    trace = [(pos, neg, rho)]
    live = (w > 0) & (a != 0)
    if cfg.contribution == "gradient" and cfg.dual_clip is not None:
        live &= ~((a < 0) & (r > np.float32(cfg.dual_clip)))  # weighs 0 at every point
    clippable = live & (((a > 0) & (r > np.float32(cfg.a_plus)))
                        | ((a < 0) & (r < np.float32(cfg.b_minus))))  # fmt: skip
    if not clippable.any():
        return c_low, c_high, rho, 0, trace
    if cfg.order == "paper":
        # while rho < rho0 and c_low < b-: raise c_high while it is below b+, else c_low
        while not met(pos, neg) and c_low < cfg.b_minus:
            if c_high < cfg.b_plus:
                c_high = _up(c_high, cfg.delta1, cfg.b_plus)
            else:
                c_low = _up(c_low, cfg.delta2, cfg.b_minus)
            steps += 1
            pos, neg, rho = rho_at(c_low, c_high)
            trace.append((pos, neg, rho))
    else:  # the public code: c_low first, then c_high
        while not met(pos, neg) and c_low < cfg.b_minus:
            c_low = _up(c_low, cfg.delta2, cfg.b_minus)
            steps += 1
            pos, neg, rho = rho_at(c_low, c_high)
            trace.append((pos, neg, rho))
        while not met(pos, neg) and c_high < cfg.b_plus:
            c_high = _up(c_high, cfg.delta1, cfg.b_plus)
            steps += 1
            pos, neg, rho = rho_at(c_low, c_high)
            trace.append((pos, neg, rho))
    return c_low, c_high, rho, steps, trace


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
        (dict(dual_clip=1.0), "dual_clip"),
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


# ---------------------------------------------------------------------------------------------
# Issue 12: search skip, grids that end at their maximum, the boundary convention, dual clip
# ---------------------------------------------------------------------------------------------
def test_on_policy_batch_skips_the_search_and_says_so():
    g = torch.Generator().manual_seed(0)
    old = torch.log(torch.rand(4, 9, generator=g) * 0.9 + 0.05)
    adv = torch.tensor([1.0, -1.0, -1.0, -1.0])  # rho = 0.25 < 0.4: the search would run
    for cfg in (BAPOConfig(), BAPOConfig.official()):
        path = search_path(old, old, adv, None, cfg)  # every ratio is 1: nothing can be clipped
        assert path.skipped and path.stop == 0
        assert float(path.rho[0]) == pytest.approx(0.25) and not bool(path.met[0])
        b = path.bounds
        assert (b.c_low, b.c_high, b.n_steps, b.skipped) == (cfg.a_minus, cfg.a_plus, 0, True)
        _, stats = policy_loss(old.clone().requires_grad_(), old, adv, None, cfg)
        assert stats.as_metrics()["bapo/search_skipped"] == 1.0
        assert (stats.c_low, stats.c_high, stats.n_steps) == (cfg.a_minus, cfg.a_plus, 0)
    # one negative token just below b- can be clipped: the search runs to its end
    lp = old.clone()
    lp[1, 0] = old[1, 0] + math.log(0.85)
    b = search_bounds(lp, old, adv, None, BAPOConfig())
    assert not b.skipped and (b.c_low, b.c_high) == (0.9, 3.0)
    _, stats = policy_loss(lp, old, adv, None, BAPOConfig())
    assert stats.search_skipped == 0.0
    # ... and a positive token just above a+ likewise
    lp = old.clone()
    lp[0, 0] = old[0, 0] + math.log(1.25)
    assert not search_bounds(lp, old, adv, None, BAPOConfig()).skipped
    _, fixed = policy_loss(lp, old, adv, None, FixedClip())
    assert fixed.search_skipped == 0.0


def test_a_step_that_does_not_divide_its_range_ends_at_the_maximum():
    cfg = BAPOConfig(a_minus=0.8, b_minus=0.95, delta2=0.1, a_plus=1.2, b_plus=1.45, delta1=0.1)
    assert (cfg.n_low, cfg.n_high) == (2, 3)
    assert [cfg.c_low_at(k) for k in range(3)] == [0.8, 0.9, 0.95]
    assert [cfg.c_high_at(k) for k in range(4)] == [1.2, 1.3, 1.4, 1.45]
    with pytest.raises(ValueError, match=r"k=3 is out of range: allowed \[0, 2\]"):
        cfg.c_low_at(3)
    # the paper's own grids divide: exact a + k*delta, no drift, 51 points
    paper = BAPOConfig()
    assert [paper.c_low_at(k) for k in range(16)] == [round(0.6 + 0.02 * k, 10) for k in range(16)]
    assert paper.c_high_at(36) == 3.0 and len(paper.path()) == 52
    # an all-negative batch with clippable tokens walks the whole grid to (0.95, 1.45)
    lp = torch.log(torch.tensor([0.5, 0.9, 1.3]))
    b = search_bounds(lp, torch.zeros(3), -torch.ones(3), None, cfg)
    assert (b.c_low, b.c_high, b.n_steps) == (0.95, 1.45, 5)
    off = BAPOConfig.official(a_minus=0.8, b_minus=0.95, delta2=0.1)
    assert off.path()[:4] == [(0, 0), (1, 0), (2, 0), (2, 1)]
    assert off.c_low_at(2) == 0.95


def _exact_ratio_log(c: float) -> float:
    """A float32 log-ratio x with float32 exp(x) == c exactly."""
    x = np.float32(math.log(c))
    for _ in range(16):
        got = torch.exp(torch.tensor(x)).item()
        if got == c:
            return float(x)
        x = np.nextafter(x, np.float32(np.inf if got < c else -np.inf))
    raise AssertionError(f"no float32 log-ratio lands on {c}")


def test_a_ratio_equal_to_a_bound_keeps_its_full_gradient_as_in_verl_and_trl():
    # c = 0.75 and 1.25 are exact in float32; r lands on them bit for bit
    x_hi, x_lo = _exact_ratio_log(1.25), _exact_ratio_log(0.75)
    old = torch.zeros(4)
    lp = torch.tensor([x_hi, x_lo, x_hi + 0.01, x_lo - 0.01]).requires_grad_()
    adv = torch.tensor([2.0, -1.0, 2.0, -1.0])
    clip = FixedClip(0.75, 1.25)
    ratio = torch.exp(lp.detach() - old)
    assert ratio[0].item() == 1.25 and ratio[1].item() == 0.75
    loss, stats = policy_loss(lp, old, adv, None, clip, "token-mean")
    (g,) = torch.autograd.grad(loss, lp)
    # TRL's / verl's form: -min(r*A, clamp(r, c_low, c_high)*A), torch.clamp at its bounds
    r = torch.exp(lp - old)
    ref = (-torch.min(r * adv, torch.clamp(r, 0.75, 1.25) * adv)).mean()
    (g_ref,) = torch.autograd.grad(ref, lp)
    torch.testing.assert_close(g, g_ref)
    # hand computed: d/dlp of -r*A/4 = -r*A/4 at the two ties, 0 for the two clipped tokens
    torch.testing.assert_close(g, torch.tensor([-1.25 * 2 / 4, 0.75 / 4, 0.0, 0.0]))
    # the counters agree with the gradient: only the two tokens past the bounds are clipped
    assert stats.clip_high_frac == 0.25 and stats.clip_low_frac == 0.25
    high, low, _ = clip_regions(ratio, adv, 0.75, 1.25)
    assert high.tolist() == [False, False, True, False]
    assert low.tolist() == [False, False, False, True]


def test_dual_clip_needs_only_exceed_one():
    cfg = BAPOConfig.paper(dual_clip=3.0)  # verl's default clip_ratio_c with b+ = 3.0
    assert cfg.dual_clip == 3.0
    clip = FixedClip(0.8, 1.28, dual_clip=1.1)  # below c_high: acts on negative tokens only
    lp = torch.log(torch.tensor([1.2, 1.2])).requires_grad_()
    adv = torch.tensor([1.0, -1.0])
    loss, stats = policy_loss(lp, torch.zeros(2), adv, None, clip)
    (g,) = torch.autograd.grad(loss, lp)
    # the positive token (r = 1.2 < 1.28) keeps its gradient; the negative one (r > 1.1) loses it
    torch.testing.assert_close(g, torch.tensor([-1.2 / 2, 0.0]))
    assert stats.clip_dual_frac == 0.5 and stats.clip_high_frac == 0.0
    assert loss.item() == pytest.approx((-1.2 + 1.1) / 2)
    for bad in (1.0, 0.5, math.inf):
        with pytest.raises(ValueError, match=r"dual_clip=.* is out of range: allowed \(1.0, inf\)"):
            FixedClip(0.8, 1.2, dual_clip=bad)


def test_token_weights_scale_the_loss_after_a_search_on_plain_advantages():
    g = torch.Generator().manual_seed(7)
    old = torch.log(torch.rand(6, 8, generator=g) * 0.9 + 0.05)
    lp = (old + 0.5 * torch.randn(6, 8, generator=g)).requires_grad_()
    adv = torch.tensor([1.0, 1.0, 1.0, -1.0, -1.0, -1.0])
    w = torch.ones(6, 8)
    w[:3] = 0.1  # down-weight the positive sequences
    cfg = BAPOConfig()
    plain = search_bounds(lp.detach(), old, adv, None, cfg)
    weighted_adv = search_bounds(lp.detach(), old, adv[:, None] * w, None, cfg)
    assert (plain.c_low, plain.c_high) != (weighted_adv.c_low, weighted_adv.c_high)
    loss, stats = policy_loss(lp, old, adv, None, cfg, token_weights=w)
    assert (stats.c_low, stats.c_high) == (plain.c_low, plain.c_high)
    r = torch.exp(lp - old)
    a = adv[:, None].expand_as(r)
    ref = (-torch.min(r * a, torch.clamp(r, plain.c_low, plain.c_high) * a) * w).mean()
    assert loss.item() == pytest.approx(ref.item(), rel=1e-6)
    torch.testing.assert_close(torch.autograd.grad(loss, lp)[0], torch.autograd.grad(ref, lp)[0])


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("dual", [None, 1.5])
def test_every_loss_statistic_against_a_token_by_token_reference(seed, dual):
    g = torch.Generator().manual_seed(seed)
    B, T = 7, 11
    old = torch.log(torch.rand(B, T, generator=g) * 0.9 + 0.05)
    lp = old + 0.7 * torch.randn(B, T, generator=g)
    adv = torch.randn(B, generator=g)
    adv[0] = 0.0  # a group with no signal
    mask = torch.rand(B, T, generator=g) < 0.75
    clip = FixedClip(0.8, 1.25, dual_clip=dual)
    _, st = policy_loss(lp, old, adv, mask, clip)

    r = torch.exp((lp - old).clamp(-20, 20))
    n = hi_n = lo_n = du_n = 0
    pos_g = neg_g = pos_v = neg_v = kl = rsum = 0.0
    groups = {"ph": 0, "pl": 0, "nh": 0, "nl": 0}
    m_lp = float(lp[mask].double().mean())
    for i in range(B):
        a = float(adv[i])
        for t in range(T):
            if not mask[i, t]:
                continue
            ri, li = float(r[i, t]), float(lp[i, t])
            n += 1
            kl += ri - 1 - math.log(ri)
            rsum += ri
            high_prob = li > m_lp
            if a > 0:
                groups["ph" if high_prob else "pl"] += 1
                if r[i, t] > np.float32(1.25):
                    hi_n += 1
                    pos_v += a * 1.25
                else:
                    pos_g += a * ri
                    pos_v += a * ri
            elif a < 0:
                groups["nh" if high_prob else "nl"] += 1
                if dual is not None and r[i, t] > np.float32(dual):
                    du_n += 1
                    neg_v += -a * ri
                elif r[i, t] < np.float32(0.8):
                    lo_n += 1
                    neg_v += -a * 0.8
                else:
                    neg_g += -a * ri
                    neg_v += -a * ri
    assert st.n_tokens == n
    assert st.clip_high_frac == pytest.approx(hi_n / n, abs=1e-12)
    assert st.clip_low_frac == pytest.approx(lo_n / n, abs=1e-12)
    assert st.clip_dual_frac == pytest.approx(du_n / n, abs=1e-12)
    assert st.rho_gradient == pytest.approx(pos_g / (pos_g + neg_g), rel=1e-6)
    assert st.rho_value == pytest.approx(pos_v / (pos_v + neg_v), rel=1e-6)
    assert st.approx_kl == pytest.approx(kl / n, rel=1e-5)
    assert st.ratio_mean == pytest.approx(rsum / n, rel=1e-6)
    assert (st.n_pos_high_prob, st.n_pos_low_prob, st.n_neg_high_prob, st.n_neg_low_prob) == (
        groups["ph"],
        groups["pl"],
        groups["nh"],
        groups["nl"],
    )
    if dual is not None:
        assert du_n > 0  # the case is exercised
