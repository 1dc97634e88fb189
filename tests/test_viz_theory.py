"""Figures and widget callbacks of notebook 01 (bapo.viz.theory), called without a browser."""

import numpy as np
import pytest
import torch

from bapo.loss import BAPOConfig, FixedClip, clip_regions
from bapo.theory import (
    Bandit,
    decompose,
    exact_delta_h,
    expected_logit_step,
    lemma1_delta_h,
    random_step_checks,
    simulate_grid,
    stale_logits,
    toy_policy,
)
from bapo.viz import (
    ClipRuleView,
    clip_rule_view,
    make_clip_rule_widget,
    prediction_figure,
    quadrant_figure,
    results_table,
    simulation_figure,
)


@pytest.mark.parametrize("staleness", [1, 4, 16])
@pytest.mark.parametrize("bounds", [(0.8, 1.2), (0.6, 2.0)])
def test_clip_rule_view_numbers_are_the_theory(staleness, bounds):
    c_low, c_high = bounds
    view = clip_rule_view(c_low, c_high, staleness, seed=3, n_tokens=12, lr=0.3)
    assert isinstance(view, ClipRuleView) and view.n_tokens == 12
    # rebuild the step independently: the loss core's clip regions on the stale policy
    z_old, adv = toy_policy(3, 12)
    clip = FixedClip(c_low, c_high)
    z = stale_logits(z_old, adv, clip, staleness, 0.3)
    step = expected_logit_step(z, z_old, adv, clip, 0.3, natural=True)
    ratio = torch.exp(torch.log_softmax(z, -1) - torch.log_softmax(z_old, -1))
    high, low, _ = clip_regions(ratio, adv, c_low, c_high)
    assert (view.n_clipped_high, view.n_clipped_low) == (int(high.sum()), int(low.sum()))
    assert view.predicted == pytest.approx(lemma1_delta_h(z, step.dz), rel=1e-9, abs=1e-15)
    assert view.measured == pytest.approx(exact_delta_h(z, step.dz), rel=1e-9, abs=1e-15)
    assert view.b42_definition1 == pytest.approx(decompose(z, adv, step.keep, 0.3).total)
    # the bars: one per token, summing to the prediction, exactly 0 where clipped (App. B.4.1)
    bars = np.asarray(view.figure.data[1].y)
    assert len(bars) == 12 and bars.sum() == pytest.approx(view.predicted, rel=1e-9, abs=1e-15)
    n_zero = int((bars == 0).sum())
    assert n_zero >= view.n_clipped_high + view.n_clipped_low
    if staleness == 1:  # on-policy: r = 1 for every token, nothing clipped
        assert view.n_clipped_high + view.n_clipped_low == 0
    assert "measured" in view.text and f"{view.measured:+.5f}" in view.text


def test_clip_rule_view_staleness_clips_and_wider_bounds_clip_less():
    n = {
        (e, b): (lambda v: v.n_clipped_high + v.n_clipped_low)(clip_rule_view(*b, e, seed=0))
        for e in (1, 4, 16)
        for b in ((0.8, 1.2), (0.6, 2.0))
    }
    assert n[(1, (0.8, 1.2))] == 0 < n[(4, (0.8, 1.2))] <= n[(16, (0.8, 1.2))]
    assert n[(4, (0.6, 2.0))] < n[(4, (0.8, 1.2))]


def test_clip_rule_view_prediction_converges_with_the_step():
    small = clip_rule_view(0.8, 1.2, 1, seed=2, lr=0.003)
    assert abs(small.measured - small.predicted) < 1e-2 * abs(small.predicted)


def test_widget_calls_the_callback_and_follows_the_sliders():
    widget = make_clip_rule_widget(n_tokens=10)
    assert isinstance(widget.result, ClipRuleView) and widget.result.n_tokens == 10
    sliders = {c.description: c for c in widget.children if hasattr(c, "value")}
    assert {"c_low", "c_high", "staleness (epoch)", "seed"} <= set(sliders)
    sliders["staleness (epoch)"].value = 1
    assert widget.result.n_clipped_high + widget.result.n_clipped_low == 0
    sliders["staleness (epoch)"].value = 16
    sliders["c_high"].value = 1.05
    expected = clip_rule_view(sliders["c_low"].value, 1.05, 16, 0, n_tokens=10)
    assert widget.result.n_clipped_high == expected.n_clipped_high > 0
    assert widget.result.measured == expected.measured


def test_quadrant_figure_colours_follow_dh_signs():
    z_old, adv = toy_policy(1, 40)
    z = stale_logits(z_old, adv, FixedClip.grpo(), 6, 0.3)
    keep = expected_logit_step(z, z_old, adv, FixedClip.grpo(), 0.3).keep
    dec = decompose(z, adv, keep, 0.3)
    fig = quadrant_figure(dec)
    lowers, raises, clipped = fig.data
    assert len(lowers.x) + len(raises.x) + len(clipped.x) == 40
    assert len(clipped.x) == int((~keep).sum()) > 0
    p = dec.probs.numpy()
    for trace, sign in ((lowers, -1), (raises, +1)):
        for x in trace.x:
            i = int(np.argmin(np.abs(p - x)))
            assert np.sign(float(dec.delta_h[i])) in ((sign,) if sign < 0 else (0, 1))
    assert len(fig.layout.annotations) == 4  # Table 4's quadrants


def test_prediction_figure_prints_the_correlation():
    pred, meas = random_step_checks(n_policies=20, seed=0)
    fig = prediction_figure(pred, meas)
    corr = float(np.corrcoef(pred.numpy(), meas.numpy())[0, 1])
    assert f"{corr:.4f}" in fig.layout.title.text
    assert list(fig.data[0].x) == pred.tolist()


def test_simulation_figure_and_table():
    rules = [FixedClip.grpo(), BAPOConfig()]
    res = simulate_grid(Bandit.plateau(n_arms=16, n_good=2), rules, (1, 4), seeds=(0,), n_steps=20)
    fig = simulation_figure(res)
    assert len(fig.data) == 2 * 2 * 3  # rules x staleness x (entropy, reward, clip effect)
    assert [t.name for t in fig.data if t.showlegend] == ["GRPO [0.8, 1.2]", "BAPO"]
    assert list(fig.data[0].y) == res[("GRPO [0.8, 1.2]", 1)][0].entropy.tolist()
    table = results_table(res).splitlines()
    assert len(table) == 2 + 4
    end_h = float(res[("BAPO", 4)][0].entropy[-1])
    assert any(line.startswith("BAPO") and f"{end_h:.3f}" in line for line in table)


def test_simulation_figure_draws_no_round_off_and_shares_rows():
    rules = [FixedClip.grpo(), BAPOConfig()]
    res = simulate_grid(Bandit.plateau(n_arms=16, n_good=2), rules, (1, 16), seeds=(0,), n_steps=30)
    fig = simulation_figure(res)
    held_back = [t for t in fig.data if t.yaxis in ("y5", "y6")]  # row 3: dH held back by clip
    at_s1 = [t for t in held_back if t.yaxis == "y5"]
    raw = [float(x) for x in res[("GRPO [0.8, 1.2]", 1)][0].dh_clip_effect]
    assert all(abs(x) < 1e-12 for x in raw)  # nothing is clipped at staleness 1 ...
    assert all(y == 0.0 for t in at_s1 for y in t.y)  # ... and the panel draws exactly 0
    assert any(
        abs(y) > 1e-9 for t in held_back if t.yaxis == "y6" for y in t.y
    )  # real effects stay
    assert fig.layout.yaxis6.matches == "y5"  # one y axis per row across staleness levels
    # the package's colours: GRPO blue, BAPO green, as in every other figure
    colours = {t.name: t.line.color for t in fig.data if t.showlegend}
    assert colours == {"GRPO [0.8, 1.2]": "#1f77b4", "BAPO": "#2ca02c"}


def test_clip_rule_view_has_a_legend():
    fig = clip_rule_view(0.8, 1.2, staleness=4).figure
    names = [t.name for t in fig.data if t.showlegend is not False]
    assert "clipped (X = 0)" in names and "c_low, c_high" in names
    assert fig.layout.showlegend is not False
