"""bapo.study: intervals, the premise numbers of a run, and checked claims."""

import math

import pytest

from bapo.study import ClaimError, expect, mean_ci, premise, t_quantile_975


def test_mean_ci_hand_computed():
    # values 1, 2, 3: mean 2, sd 1, n 3 -> half-width t(0.975, 2) / sqrt(3) = 4.303 / 1.732
    m, h = mean_ci([1.0, 2.0, 3.0])
    assert m == 2.0 and h == pytest.approx(4.303 / math.sqrt(3), rel=1e-9)
    assert mean_ci([5.0])[0] == 5.0 and math.isnan(mean_ci([5.0])[1])
    assert math.isnan(mean_ci([])[0])
    assert mean_ci([1.0, float("nan"), 3.0]) == mean_ci([1.0, 3.0])  # nan seeds are dropped


def test_t_quantiles_against_the_normal_limit_and_errors():
    qs = [t_quantile_975(df) for df in range(1, 40)]
    assert all(a > b for a, b in zip(qs[:30], qs[1:31]))  # falls with df
    assert qs[-1] == 1.96
    with pytest.raises(ValueError, match="df=0"):
        t_quantile_975(0)


def test_premise_hand_computed():
    # 4 steps: halves are steps 1-2 and 3-4; fifths are one step each
    metrics = [
        {"step": 1, "reward/accuracy": 0.2, "completion/length_correct": 4.0,
         "completion/length_wrong": 12.0, "entropy/mean": 1.0},
        {"step": 2, "reward/accuracy": 0.3, "completion/length_correct": 2.0,
         "completion/length_wrong": float("nan"), "entropy/mean": 0.9},
        {"step": 3, "reward/accuracy": 0.4, "completion/length_correct": 3.0,
         "completion/length_wrong": 9.0, "entropy/mean": 0.8},
        {"step": 4, "reward/accuracy": 0.6, "completion/length_correct": 3.0,
         "completion/length_wrong": 6.0, "entropy/mean": 0.5},
    ]  # fmt: skip
    # update rows carry the number of the step that made them, as metrics rows do
    updates = [
        {"step": 1, "bapo/rho": 0.3, "clip/frac": 0.0},
        {"step": 1, "bapo/rho": 0.5, "clip/frac": 0.1},
        {"step": 2, "bapo/rho": 0.2, "clip/frac": 0.2},
        {"step": 3, "bapo/rho": 0.1, "clip/frac": 0.3},  # second half: not in the rho numbers
        {"step": 4, "bapo/rho": float("nan"), "clip/frac": 0.4},
    ]
    p = premise(metrics, updates, rho0=0.4)
    assert p.acc_start == 0.2 and p.acc_end == 0.6 and p.acc_gain == pytest.approx(0.4)
    assert p.len_right_first_half == 3.0 and p.len_wrong_first_half == 12.0  # nan step skipped
    assert p.length_ratio_first_half == 4.0 and p.length_ratio_end == 2.0
    assert p.clip_frac == pytest.approx(0.2)
    assert p.rho_first_half == pytest.approx(1 / 3) and p.rho_below_first_half == pytest.approx(
        2 / 3
    )
    assert p.entropy_start == 1.0 and p.entropy_end == 0.5
    with pytest.raises(ValueError, match="1 step"):
        premise(metrics[:1], updates)


def test_expect_passes_and_fails_with_the_numbers(capsys):
    assert expect(0.3 < 0.4, "rho stays below rho0", rho=0.3).startswith("checked: rho stays")
    assert "rho=0.3" in capsys.readouterr().out
    with pytest.raises(ClaimError, match=r"entropy falls \(start=1, end=2\)"):
        expect(False, "entropy falls", start=1, end=2)


def test_expect_is_not_echoed_twice_in_a_notebook(capsys):
    from IPython.core.interactiveshell import InteractiveShell

    shell = InteractiveShell.instance()
    shell.run_cell("from bapo.study import expect")
    capsys.readouterr()
    result = shell.run_cell("expect(1 < 2, 'one is below two')")
    out = capsys.readouterr().out
    assert result.result == "checked: one is below two"  # still the line, as a str
    assert out.count("checked: one is below two") == 1  # printed once, no Out[] echo
    shell.run_cell("'a plain string'")  # the shell does echo other values
    assert "a plain string" in capsys.readouterr().out
