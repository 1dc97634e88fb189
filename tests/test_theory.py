"""The Entropy-Clip Rule on a tabular policy (bapo.theory) against exact references."""

import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from bapo.loss import BAPOConfig, FixedClip, clip_regions, policy_loss, search_bounds
from bapo.theory import (
    QUADRANTS,
    TABLE4,
    Bandit,
    decompose,
    entropy,
    entropy_gradient,
    entropy_terms,
    exact_delta_h,
    expected_logit_step,
    keep_mask,
    lemma1_delta_h,
    mean_end,
    measured_token_effects,
    random_step_checks,
    rule_name,
    sampled_logit_step,
    simulate,
    simulate_grid,
    unclipped_logit_step,
)

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Table 4 of the paper, copied as printed: (prob, adv) -> sign of dH(y_s)
PAPER_TABLE4 = {
    ("high", "high"): "<0",
    ("high", "low"): ">0",
    ("low", "high"): ">0",
    ("low", "low"): "<0",
}


def random_policy(seed: int, n: int, scale: float = 1.5):
    """Rollout logits, drifted current logits and advantages centred under pi_rollout."""
    g = torch.Generator().manual_seed(seed)
    z_old = scale * torch.randn(n, generator=g, dtype=torch.float64)
    z = z_old + 0.3 * torch.randn(n, generator=g, dtype=torch.float64)
    adv = torch.randn(n, generator=g, dtype=torch.float64)
    adv = adv - (torch.softmax(z_old, -1) * adv).sum()  # Lemma 3: E_pi[A] = 0
    return z, z_old, adv


policies = st.tuples(st.integers(0, 2**31 - 1), st.integers(2, 40), st.floats(0.2, 3.0)).map(
    lambda t: random_policy(*t)
)
bounds = st.tuples(st.floats(0.5, 0.99), st.floats(1.01, 2.0)).map(lambda b: FixedClip(*b))


# ---------------------------------------------------------------------------------------------
# Lemma 1
# ---------------------------------------------------------------------------------------------
def test_entropy_and_its_gradient_against_references():
    z = torch.tensor([0.3, -1.0, 2.0, 0.0], dtype=torch.float64, requires_grad=True)
    p = np.exp(z.detach().numpy()) / np.exp(z.detach().numpy()).sum()
    assert float(entropy(z.detach())) == pytest.approx(-(p * np.log(p)).sum(), rel=1e-14)
    (auto,) = torch.autograd.grad(entropy(z), z)
    torch.testing.assert_close(entropy_gradient(z.detach()), auto, rtol=1e-12, atol=1e-14)
    assert float(entropy(torch.zeros(7))) == pytest.approx(math.log(7), rel=1e-14)


@SETTINGS
@given(policies, st.integers(0, 2**31 - 1))
def test_lemma1_first_order_matches_exact_change(policy, seed):
    """Lemma 1 for any logit step: relative error below 1e-2 at small eta, shrinking like eta."""
    z, _, _ = policy
    d = torch.randn(len(z), generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    d = d / d.norm()
    grad_norm = float(entropy_gradient(z).norm())
    # Lemma 1's term vanishes at the uniform policy (the maximum) and for steps orthogonal to
    # dH/dz; there a relative error means nothing, so those draws are skipped.
    assume(grad_norm > 1e-3 and abs(lemma1_delta_h(z, d)) > 0.05 * grad_norm)
    eta = 1e-4 * min(1.0, grad_norm)  # small against the distance to the maximum
    errors = []
    for e in (eta, eta / 2):
        pred, exact = lemma1_delta_h(z, e * d), exact_delta_h(z, e * d)
        errors.append(abs(exact - pred) / abs(pred))
    assert errors[0] < 1e-2
    # first order: the relative error is O(eta), so halving eta halves it (where the error is
    # above float64 cancellation in H(after) - H(before), about 1e-16 / |dH|)
    if errors[0] > 1e-5:
        assert errors[1] == pytest.approx(errors[0] / 2, rel=0.05)


@SETTINGS
@given(policies, st.integers(0, 2**31 - 1), st.floats(-5, 5))
def test_entropy_terms_sum_to_lemma1_for_any_gauge(policy, seed, shift):
    z, _, _ = policy
    d = torch.randn(len(z), generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    terms = entropy_terms(z, d)
    assert float(terms.sum()) == pytest.approx(lemma1_delta_h(z, d), rel=1e-9, abs=1e-12)
    # a constant added to every logit changes neither the policy nor any term
    torch.testing.assert_close(entropy_terms(z, d + shift), terms, rtol=1e-9, atol=1e-12)
    assert lemma1_delta_h(z, torch.full_like(z, shift)) == pytest.approx(0.0, abs=1e-12)


# ---------------------------------------------------------------------------------------------
# Proposition 1: the expected and the sampled logit step
# ---------------------------------------------------------------------------------------------
@SETTINGS
@given(policies, bounds, st.sampled_from([None, 2.5]))
def test_expected_step_is_the_autograd_gradient_of_policy_loss(policy, clip, dual):
    """Proposition 1's closed form equals autograd through policy_loss over the whole vocabulary.

    With token i = vocabulary token y and advantage A(y) * pi_rollout(y) * V, the token-mean loss is
    -sum_y pi_rollout(y) r_eff(y) A(y): the negated expected surrogate (Eq. 4).
    """
    z, z_old, adv = policy
    clip = FixedClip(clip.c_low, clip.c_high, dual)
    step = expected_logit_step(z, z_old, adv, clip, lr=0.1)
    zz = z.clone().requires_grad_(True)
    lp, old = torch.log_softmax(zz, -1), torch.log_softmax(z_old, -1)
    weighted = adv * old.exp() * len(z)
    loss, _ = policy_loss(lp, old, weighted, clip=clip)
    (grad,) = torch.autograd.grad(loss, zz)
    torch.testing.assert_close(step.dz, -0.1 * grad, rtol=1e-9, atol=1e-13)


@SETTINGS
@given(policies, bounds)
def test_natural_step_maps_to_the_plain_gradient_under_the_fisher(policy, clip):
    """Eq. 6's step (no pi factor) is the natural gradient: F @ dz_natural = dz_plain."""
    z, z_old, adv = policy
    plain = expected_logit_step(z, z_old, adv, clip, lr=1.0)
    natural = expected_logit_step(z, z_old, adv, clip, lr=1.0, natural=True)
    pi = torch.softmax(z, -1)
    fisher = torch.diag(pi) - torch.outer(pi, pi)
    torch.testing.assert_close(fisher @ natural.dz, plain.dz, rtol=1e-9, atol=1e-12)
    assert torch.equal(plain.keep, natural.keep)


@SETTINGS
@given(policies, bounds)
def test_clipped_tokens_keep_only_the_constant(policy, clip):
    """Proposition 1: dz_y = eta * pi(y) * (A(y) X(y) + C); a clipped token gets eta*pi(y)*C."""
    z, z_old, adv = policy
    step = expected_logit_step(z, z_old, adv, clip, lr=1.0, natural=True)
    c = -(torch.softmax(z, -1) * torch.where(step.keep, adv, 0.0)).sum()
    torch.testing.assert_close(step.dz[~step.keep], c.expand(int((~step.keep).sum())))
    torch.testing.assert_close(step.dz[step.keep], adv[step.keep] + c)


def test_sampled_step_agrees_with_expected_step_in_expectation():
    z, z_old, adv = random_policy(3, 12, scale=1.0)
    clip = FixedClip(0.9, 1.1)
    keep, _ = keep_mask(z, z_old, adv, clip)
    assert 0 < int(keep.sum()) < len(z)  # some tokens are clipped, some are not
    g = torch.Generator().manual_seed(0)
    n = 200_000
    samples = torch.multinomial(torch.softmax(z_old, -1), n, replacement=True, generator=g)
    sampled = sampled_logit_step(z, z_old, samples, adv[samples], clip, lr=1.0)
    expected = expected_logit_step(z, z_old, adv, clip, lr=1.0)
    # One sample y adds v(y) = X A r (e_y - pi) / n: the exact per-coordinate standard error
    pi, pi_old = torch.softmax(z, -1), torch.softmax(z_old, -1)
    v = (keep * adv * pi / pi_old)[:, None] * (torch.eye(len(z), dtype=torch.float64) - pi)
    std = ((pi_old[:, None] * v**2).sum(0) - expected.dz**2).clamp_min(0).sqrt()
    assert bool(((sampled.dz - expected.dz).abs() < 5 * std / math.sqrt(n)).all())
    assert float((sampled.dz - expected.dz).abs().max()) < 0.05 * float(expected.dz.abs().max())
    # and the per-sample indicator is the vocabulary indicator, looked up
    assert torch.equal(sampled.keep, keep[samples])


@SETTINGS
@given(policies, bounds, st.integers(0, 2**31 - 1), st.sampled_from([None, 2.5]))
def test_clip_indicator_is_what_policy_loss_zeroes(policy, clip, seed, dual):
    """X = 0 exactly where policy_loss's gradient w.r.t. a token's log-prob is 0 (A != 0)."""
    z, z_old, adv = policy
    clip = FixedClip(clip.c_low, clip.c_high, dual)
    g = torch.Generator().manual_seed(seed)
    samples = torch.multinomial(torch.softmax(z_old, -1), 64, replacement=True, generator=g)
    step = sampled_logit_step(z, z_old, samples, adv[samples], clip, lr=1.0)
    lp = torch.log_softmax(z, -1)[samples].requires_grad_(True)
    loss, _ = policy_loss(lp, torch.log_softmax(z_old, -1)[samples], adv[samples], clip=clip)
    (dlp,) = torch.autograd.grad(loss, lp)
    assert torch.equal(step.keep, dlp != 0)
    # dropping the clipped samples (keeping the divisor) leaves the step unchanged
    kept = samples[step.keep]
    if len(kept):
        zz = z.clone().requires_grad_(True)
        lp_kept = torch.log_softmax(zz, -1)[kept]
        old_kept = torch.log_softmax(z_old, -1)[kept]
        loss_k, _ = policy_loss(lp_kept, old_kept, adv[kept], clip=clip, count=len(samples))
        (grad,) = torch.autograd.grad(loss_k, zz)
        torch.testing.assert_close(step.dz, -grad, rtol=1e-9, atol=1e-13)
    else:
        assert float(step.dz.abs().max()) == 0.0


def test_sampled_step_with_bapo_uses_algorithm1_bounds_of_the_batch():
    z, z_old, _ = random_policy(5, 20, scale=2.0)
    g = torch.Generator().manual_seed(1)
    samples = torch.multinomial(torch.softmax(z_old, -1), 64, replacement=True, generator=g)
    adv = torch.randn(64, generator=g, dtype=torch.float64) - 0.5  # negatives dominate
    cfg = BAPOConfig()
    step = sampled_logit_step(z, z_old, samples, adv, cfg, lr=1.0)
    lp, old = torch.log_softmax(z, -1)[samples], torch.log_softmax(z_old, -1)[samples]
    b = search_bounds(lp, old, adv, None, cfg)
    assert (step.stats.c_low, step.stats.c_high) == (b.c_low, b.c_high)
    assert b.n_steps > 0  # the search moved, so the test can tell the bounds apart
    high, low, dual = clip_regions(torch.exp(lp - old), adv, b.c_low, b.c_high)
    assert torch.equal(step.keep, ~(high | low | dual))


def test_unclipped_step_matches_autograd_with_no_clipping():
    z, z_old, adv = random_policy(7, 15, scale=2.0)
    g = torch.Generator().manual_seed(2)
    samples = torch.multinomial(torch.softmax(z_old, -1), 50, replacement=True, generator=g)
    free = unclipped_logit_step(z, z_old, samples, adv[samples], lr=0.3)
    wide = sampled_logit_step(z, z_old, samples, adv[samples], FixedClip(1e-12, 1e12), lr=0.3)
    assert bool(wide.keep.all())
    torch.testing.assert_close(free, wide.dz, rtol=1e-9, atol=1e-13)
    tight = sampled_logit_step(z, z_old, samples, adv[samples], FixedClip(0.95, 1.05), lr=0.3)
    assert not bool(tight.keep.all()) and not torch.allclose(free, tight.dz)


# ---------------------------------------------------------------------------------------------
# Proposition 2 / Eq. 6 and App. B.4.2
# ---------------------------------------------------------------------------------------------
@SETTINGS
@given(policies, bounds)
def test_eq6_predicts_the_exact_entropy_change_of_the_clipped_step(policy, clip):
    z, z_old, adv = policy
    step = expected_logit_step(z, z_old, adv, clip, lr=1.0, natural=True)
    d = step.dz
    grad_norm = float(entropy_gradient(z).norm())
    assume(grad_norm > 1e-3 and float(d.norm()) > 0)
    assume(abs(lemma1_delta_h(z, d)) > 0.05 * grad_norm * float(d.norm()))
    eta = 1e-4 * min(1.0, grad_norm) / float(d.norm())  # a step of length 1e-4 * min(1, |dH/dz|)
    dec = decompose(z, adv, step.keep, lr=eta)
    assert dec.eq6 == pytest.approx(lemma1_delta_h(z, eta * d), rel=1e-9, abs=1e-15)
    assert abs(exact_delta_h(z, eta * d) - dec.eq6) < 1e-2 * abs(dec.eq6)


@SETTINGS
@given(policies, bounds, st.floats(0.01, 1.0))
def test_b42_terms_sum_to_eq6_up_to_the_baseline_term(policy, clip, lr):
    """Sum of B.4.2 terms = Eq. 6 + eta * E_retained[A] * sum_retained (4): exact without clips."""
    z, z_old, adv = policy
    keep, _ = keep_mask(z, z_old, adv, clip)
    dec = decompose(z, adv, keep, lr=lr)
    gap = lr * dec.baseline * float(dec.prob_term[keep].sum())
    assert dec.total == pytest.approx(dec.eq6 + gap, rel=1e-9, abs=1e-12)
    assert float(dec.delta_h[~keep].abs().sum()) == 0.0  # B.4.1: clipped tokens add nothing
    full = decompose(z, adv, None, lr=lr)
    assert full.total == pytest.approx(full.eq6, rel=1e-9, abs=1e-12)
    zero = decompose(z, adv, keep, lr=lr, baseline=0.0)
    assert zero.total == pytest.approx(zero.eq6, rel=1e-9, abs=1e-12)


def test_table4_is_the_papers():
    for (prob, adv), sign in PAPER_TABLE4.items():
        key = (prob == "high", adv == "high")
        assert TABLE4[key] == (-1 if sign == "<0" else +1)
        assert QUADRANTS[key] == f"{prob} prob, {adv} adv"


@SETTINGS
@given(policies, bounds)
def test_quadrant_signs_match_table4_measured_exactly(policy, clip):
    """Moving one retained token's logit by eta*(A - E_ret[A]) changes H with Table 4's sign.

    The entropy change is measured exactly (H after minus H before), one token at a time.
    """
    z, z_old, adv = policy
    keep, _ = keep_mask(z, z_old, adv, clip)
    dec = decompose(z, adv, keep, lr=1e-4)
    mean_lp = float((dec.probs * dec.log_probs).sum())
    for s in torch.nonzero(keep).flatten().tolist():
        margin_p = abs(float(dec.log_probs[s]) - mean_lp)
        margin_a = abs(float(dec.adv_term[s]))
        if margin_p < 0.05 or margin_a < 0.05 or float(dec.probs[s]) < 1e-4:
            continue  # at a quadrant's edge the sign is decided at second order
        dz = torch.zeros_like(z)
        dz[s] = 1e-4 * dec.adv_term[s]
        measured = exact_delta_h(z, dz)
        key = (bool(dec.high_prob[s]), bool(dec.high_adv[s]))
        assert np.sign(measured) == TABLE4[key] == int(dec.table4_sign[s])
        assert np.sign(float(dec.delta_h[s])) == TABLE4[key]
        assert float(dec.delta_h[s]) == pytest.approx(measured, rel=1e-2)


def test_all_four_quadrants_occur_with_their_table4_signs():
    # four tokens, one per quadrant: two above exp(E log pi), two below; advantages split
    z = torch.log(torch.tensor([0.45, 0.35, 0.12, 0.08], dtype=torch.float64))
    adv = torch.tensor([1.0, -1.0, 1.0, -1.0], dtype=torch.float64)
    dec = decompose(z, adv, lr=0.01)
    assert dec.quadrants == [
        "high prob, high adv",
        "high prob, low adv",
        "low prob, high adv",
        "low prob, low adv",
    ]
    for s in range(4):
        dz = torch.zeros(4, dtype=torch.float64)
        dz[s] = 0.01 * float(dec.adv_term[s])
        assert np.sign(exact_delta_h(z, dz)) == int(dec.table4_sign[s])
    assert dec.table4_sign.tolist() == [-1, 1, 1, -1]
    measured = measured_token_effects(z, adv, eta=0.01)
    assert torch.sign(measured).tolist() == [-1, 1, 1, -1]
    # a clipped token is not moved at all
    keep = torch.tensor([True, False, True, True])
    assert float(measured_token_effects(z, adv, keep, eta=0.01)[1]) == 0.0


def test_random_step_checks_predict_measured_entropy_change():
    pred, meas = random_step_checks(n_policies=60, n_tokens=24, lr=0.05, seed=1)
    assert len(pred) == 60
    corr = float(np.corrcoef(pred.numpy(), meas.numpy())[0, 1])
    assert corr > 0.99
    assert float((pred - meas).abs().max()) < 0.1 * float(meas.abs().max())
    plain_pred, plain_meas = random_step_checks(n_policies=30, natural=False, seed=2)
    assert float(np.corrcoef(plain_pred.numpy(), plain_meas.numpy())[0, 1]) > 0.99


# ---------------------------------------------------------------------------------------------
# The simulator
# ---------------------------------------------------------------------------------------------
RULES = [FixedClip.grpo(), FixedClip.clip_higher(), BAPOConfig.paper()]


def test_bandit_plateau():
    b = Bandit.plateau(n_arms=10, n_good=3, p_good=0.9, p_bad=0.2, seed=4)
    assert sorted(b.success.tolist()) == [0.2] * 7 + [0.9] * 3
    assert b.reward(torch.zeros(10)) == pytest.approx((3 * 0.9 + 7 * 0.2) / 10)
    with pytest.raises(ValueError, match="n_good"):
        Bandit.plateau(n_arms=4, n_good=5)


def test_simulate_records_and_is_deterministic():
    b = Bandit.plateau(seed=1)
    r1 = simulate(b, BAPOConfig(), staleness=4, n_steps=40, seed=3)
    r2 = simulate(b, BAPOConfig(), staleness=4, n_steps=40, seed=3)
    r3 = simulate(b, BAPOConfig(), staleness=4, n_steps=40, seed=4)
    assert r1.rule == "BAPO" and r1.staleness == 4
    assert r1.entropy.shape == (41,) and r1.rho.shape == (40,)
    assert float(r1.entropy[0]) == pytest.approx(float(entropy(b.logits)))
    for name in ("entropy", "reward", "rho", "c_low", "c_high", "dh_measured"):
        assert torch.equal(getattr(r1, name), getattr(r2, name))
    assert not torch.equal(r1.entropy, r3.entropy)
    # the bounds BAPO used lie on Algorithm 1's grid
    cfg = BAPOConfig()
    lows = {cfg.c_low_at(k) for k in range(cfg.n_low + 1)}
    highs = {cfg.c_high_at(k) for k in range(cfg.n_high + 1)}
    assert set(r1.c_low.tolist()) <= lows and set(r1.c_high.tolist()) <= highs
    # entropy and reward move by exactly the recorded steps
    torch.testing.assert_close(r1.entropy.diff(), r1.dh_measured, rtol=1e-9, atol=1e-12)
    with pytest.raises(ValueError, match="staleness"):
        simulate(b, FixedClip(), staleness=0)


def test_simulate_lemma1_tracks_every_step():
    r = simulate(Bandit.plateau(), FixedClip.grpo(), staleness=4, n_steps=100, lr=0.2)
    corr = float(np.corrcoef(r.dh_predicted.numpy(), r.dh_measured.numpy())[0, 1])
    assert corr > 0.99


def test_simulate_on_policy_rules_coincide():
    """Staleness 1: r = 1 on the only epoch, nothing is clipped, so every rule is the same run."""
    runs = [simulate(Bandit.plateau(), rule, 1, n_steps=60, seed=5) for rule in RULES]
    for r in runs:
        assert float(r.clip_high.abs().sum() + r.clip_low.abs().sum()) == 0.0
        assert float(r.dh_clip_effect.abs().max()) < 1e-12
    for r in runs[1:]:
        torch.testing.assert_close(r.entropy, runs[0].entropy, rtol=0, atol=1e-12)


def test_stale_grpo_keeps_more_entropy_than_bapo_in_the_tabular_bandit():
    """The measured truth for a tabular bandit, and the opposite of the paper's LLM result.

    At staleness >= 4 GRPO ends with *higher* entropy than BAPO (and lower or equal reward): here
    fixed bounds mostly clip entropy-lowering updates (positive high-probability arms, whose
    logits SGD moves most, and negative low-probability ones, pushed down by the softmax), so
    clipping holds entropy up, and BAPO, whose rho starts above rho0 here, opens its bounds and
    spends entropy faster.  See notebook 01 for the discussion.
    """
    b = Bandit.plateau()
    res = simulate_grid(b, stalenesses=(4, 16), seeds=(0, 1, 2), n_steps=150)
    for e in (4, 16):
        grpo, bapo = res[("GRPO [0.8, 1.2]", e)], res[("BAPO", e)]
        assert mean_end(grpo) > mean_end(bapo)
        assert mean_end(grpo, "reward") <= mean_end(bapo, "reward") + 1e-3
        # clipping raised the predicted entropy change on net ...
        assert sum(float(r.dh_clip_effect.sum()) for r in grpo) > 0
        # ... because the clipped samples are mostly in Table 4's entropy-lowering quadrants
        lowering = sum(float(r.clipped_lowering.sum()) for r in grpo)
        raising = sum(float(r.clipped_raising.sum()) for r in grpo)
        assert lowering > 2 * raising
    # and entropy falls under stale GRPO, more slowly with more staleness at a fixed update count
    for e in (4, 16):
        for r in res[("GRPO [0.8, 1.2]", e)]:
            assert float(r.entropy[-1]) < float(r.entropy[0]) - 0.5
    assert mean_end(res[("GRPO [0.8, 1.2]", 16)]) > mean_end(res[("GRPO [0.8, 1.2]", 4)])


def test_rule_names():
    assert [rule_name(r) for r in RULES] == ["GRPO [0.8, 1.2]", "clip-higher [0.8, 1.28]", "BAPO"]
    assert rule_name(FixedClip(0.7, 1.5)) == "clip [0.7, 1.5]"


def test_batch_quadrants_sum_to_the_sample_covariance_and_follow_table4():
    from bapo.theory import batch_quadrants

    g = torch.Generator().manual_seed(0)
    lp = torch.log(torch.rand(500, generator=g, dtype=torch.float64).clamp_min(1e-3))
    adv = torch.randn(500, generator=g, dtype=torch.float64)
    keep = torch.rand(500, generator=g) > 0.2
    q = batch_quadrants(lp, adv, keep)
    b = adv[keep].mean()
    # kept + clipped terms: -(1/N) sum (lp - mean lp)(A - b), a covariance estimate
    full = -((lp - lp.mean()) * (adv - b)).mean()
    assert q.total_kept + q.total_clipped == pytest.approx(float(full), rel=1e-9, abs=1e-12)
    assert sum(q.n.values()) == 500 and sum(q.n_clipped.values()) == int((~keep).sum())
    # each quadrant's terms have Table 4's sign, token by token, hence in sum
    from bapo.theory import QUADRANTS, TABLE4

    for pair, name in QUADRANTS.items():
        for part in (q.kept[name], q.clipped[name]):
            assert part == 0 or (part > 0) == (TABLE4[pair] > 0), (name, part)


def test_step_error_sweep_is_second_order():
    """Lemma 1 is first order in the step: its error falls like lr**2 (log-log slope 2)."""
    from bapo.theory import step_error_sweep

    lrs = (0.1, 0.05, 0.025)
    sweep = step_error_sweep(lrs, n_policies=40, n_tokens=16, seed=3)
    assert sweep.lrs == lrs
    assert list(sweep.max_error) == sorted(sweep.max_error, reverse=True)
    assert 1.8 < sweep.slope < 2.2 and 1.8 < sweep.mean_slope < 2.2
    # the sweep is random_step_checks at each lr
    pred, meas = random_step_checks(40, 16, 0.05, seed=3)
    assert sweep.max_error[1] == pytest.approx(float((meas - pred).abs().max()))
    with pytest.raises(ValueError, match="lrs"):
        step_error_sweep((0.1,))
    with pytest.raises(ValueError, match="lrs"):
        step_error_sweep((0.1, -0.1))
