"""Exercises for notebooks 00-04, each checked against the package's own code.

Every notebook ends with a few exercises: the learner writes a small function and calls
``check(name, fn)``.  The checker runs ``fn`` and the reference on random inputs (fixed seeds,
so a result is reproducible) and on the notebook's own data when it is passed, and returns a
:class:`Result` that prints as one of

* ``exact`` - every output within 1e-9 of the reference (relative to its scale);
* ``approximate (maxdiff 3.1e-07)`` - within 1e-5: right, up to floating-point order;
* ``correct`` - for an exercise that asks for a value with a property (a step size at which
  Eq. 6 predicts the wrong sign), that the property holds;
* ``wrong (maxdiff ...)`` / ``error`` - with what differs and a hint aimed at the usual mistake;
* ``not done yet`` - the function still raises ``NotImplementedError`` (the blank as shipped).
  This is not a failure, so the notebooks run headless with their blanks unfilled.

``check(..., strict=True)`` raises :class:`ExerciseFailed` unless the result is right: the
solution notebooks (``notebooks/solutions/``) run that way in CI, so the exercises cannot rot.

What each exercise practises (the paper's numbering):

==================== ======== ===================================================================
name                 notebook what
==================== ======== ===================================================================
clipped_surrogate    00       Eq. 4, per token: ``min(r*A, clip(r, c_low, c_high)*A)``
clip_indicator       00       Eq. 7: ``X = 1`` for the tokens whose gradient Eq. 4 keeps
group_advantages     00       GRPO's group-normalised advantages
eq6_delta_h          01       Eq. 6: ``dH ~= -eta * Cov_pi(log pi, A*X)``
second_order_error   01       what Eq. 6 misses for a natural step, and its log-log slope of 2
wrong_sign_eta       01       a step so large that Eq. 6 predicts the wrong sign
positive_share       02       Eq. 8's positive share over sampled tokens (plain sum)
algorithm1           02       Algorithm 1 as a loop, against :func:`bapo.loss.search_path`
clip_fractions       03       the trainer's ``clip/high_frac`` and ``clip/low_frac``
approx_kl            03       the trainer's ``policy/approx_kl`` (the k3 estimator)
token_ages           04       the trainer's ``offpolicy/age_mean`` and ``offpolicy/age_max``
spanning_share       04       the share of completions written by more than one policy version
==================== ======== ===================================================================
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from bapo.loss import (
    BAPOConfig,
    FixedClip,
    clip_regions,
    contribution_sums,
    grpo_advantages,
    policy_loss,
    search_path,
    share,
)
from bapo.theory import exact_delta_h, toy_policy

__all__ = [
    "EXERCISES",
    "Exercise",
    "ExerciseFailed",
    "Result",
    "check",
    "exercises_for",
    "wrong_sign_case",
]

EXACT_TOL = 1e-9  # relative to the reference's scale: same formula, same float64 arithmetic
APPROX_TOL = 1e-5  # right up to the order of operations or float32 somewhere
N_CASES = 20  # random inputs per exercise


class ExerciseFailed(AssertionError):
    """A checked exercise that is not right (raised only with ``strict=True``)."""


@dataclass(frozen=True)
class Result:
    """The outcome of :func:`check`; ``ok`` when the answer is right."""

    name: str
    status: str  # exact, approximate, correct, wrong, error, not done yet
    max_diff: float = math.nan
    detail: str = ""
    hint: str = ""

    @property
    def ok(self) -> bool:
        return self.status in ("exact", "approximate", "correct")

    @property
    def done(self) -> bool:
        return self.status != "not done yet"

    def __str__(self) -> str:
        head = self.status
        if self.status in ("approximate", "wrong") and math.isfinite(self.max_diff):
            head += f" (maxdiff {self.max_diff:.1e})"
        lines = [f"{self.name}: {head}"]
        if self.detail:
            lines.append(f"  {self.detail}")
        if self.hint:
            lines.append(f"  hint: {self.hint}")
        return "\n".join(lines)

    __repr__ = __str__


@dataclass(frozen=True)
class Exercise:
    """One exercise: the blank's signature, the reference and how to test against it."""

    name: str
    notebook: str
    title: str
    signature: str
    reference: Callable | None
    cases: Callable[[torch.Generator], dict] | None  # random keyword arguments for one trial
    hint: str  # the general hint, shown when no specific mistake is recognised
    mistakes: tuple[tuple[str, Callable], ...] = ()  # (hint, wrong reference) pairs
    data_cases: Callable[[object], list[dict]] | None = None  # the notebook's own data
    after: Callable[[Callable], tuple[bool, str]] | None = None  # extra property check
    adapter: Callable[[Callable], Callable] | None = None  # the blank's call, from a trial
    custom: Callable[[Callable], Result] | None = None  # a check of its own (not a comparison)


# ----------------------------------------------------------------------------------------------
# comparing outputs
# ----------------------------------------------------------------------------------------------
def _as_tensor(x) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.detach().to(torch.float64)
    if isinstance(x, (tuple, list)):
        return torch.cat([_as_tensor(v).reshape(-1) for v in x]) if x else torch.zeros(0)
    return torch.as_tensor(float(x), dtype=torch.float64)


def _diff(got, want) -> float:
    """Largest absolute difference relative to the reference's scale (inf on a shape mismatch)."""
    g, w = _as_tensor(got), _as_tensor(want)
    if g.numel() != w.numel():
        return math.inf
    g, w = g.reshape(-1), w.reshape(-1)
    both_nan = torch.isnan(g) & torch.isnan(w)
    if bool((torch.isnan(g) ^ torch.isnan(w)).any()):
        return math.inf
    g, w = g[~both_nan], w[~both_nan]
    if g.numel() == 0:
        return 0.0
    scale = max(1.0, float(w.abs().max()))
    return float((g - w).abs().max()) / scale


def _shape_note(got, want) -> str:
    g, w = _as_tensor(got), _as_tensor(want)
    return f"your output has {g.numel()} numbers, the reference {w.numel()}"


# ----------------------------------------------------------------------------------------------
# the checker
# ----------------------------------------------------------------------------------------------
def check(name: str, fn: Callable | None, *, data=None, strict: bool = False) -> Result:
    """Check the learner's ``fn`` for exercise ``name`` (see the module docstring's table).

    ``data`` is the notebook's own data where the exercise uses it (a batch, a list of
    samples); the answer must match there too.  ``strict=True`` raises :class:`ExerciseFailed`
    when the answer is not right (solutions); otherwise nothing is raised.
    """
    if name not in EXERCISES:
        raise KeyError(f"unknown exercise {name!r}: choose one of {', '.join(EXERCISES)}")
    ex = EXERCISES[name]
    if fn is None:
        result = Result(ex.name, "not done yet", detail=f"write {ex.signature}")
    elif ex.custom is not None:
        result = ex.custom(fn)
    else:
        result = _run(ex, ex.adapter(fn) if ex.adapter else fn, data)
    if strict and not result.ok:
        raise ExerciseFailed(str(result))
    return result


def _run(ex: Exercise, fn, data) -> Result:
    gen = torch.Generator().manual_seed(1234)
    trials = [ex.cases(gen) for _ in range(N_CASES)]
    if data is not None and ex.data_cases is not None:
        trials += ex.data_cases(data)
    worst = 0.0
    for i, kwargs in enumerate(trials):
        try:
            got = fn(**_copy(kwargs))
        except NotImplementedError:
            return Result(ex.name, "not done yet", detail=f"write {ex.signature}")
        except Exception as e:  # the learner's code raised: say what and where
            return Result(
                ex.name, "error", detail=f"{type(e).__name__}: {e} (on trial {i + 1})", hint=ex.hint
            )
        if got is None:
            return Result(
                ex.name, "wrong", detail="your function returned None", hint="add `return`"
            )
        want = ex.reference(**_copy(kwargs))
        d = _diff(got, want)
        if not d <= APPROX_TOL:
            source = "the notebook's data" if i >= N_CASES else f"random trial {i + 1}"
            detail = f"differs from the reference on {source}"
            if d == math.inf:
                detail += f": {_shape_note(got, want)}"
            return Result(ex.name, "wrong", d, detail, _diagnose(ex, kwargs, got))
        worst = max(worst, d)
    status = "exact" if worst <= EXACT_TOL else "approximate"
    detail = f"matches the reference on {len(trials)} inputs"
    if ex.after is not None:
        good, note = ex.after(fn)
        if not good:
            return Result(ex.name, "wrong", worst, note, ex.hint)
        detail += f"; {note}"
    return Result(ex.name, status, worst, detail)


def _copy(kwargs: dict) -> dict:
    return {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}


def _diagnose(ex: Exercise, kwargs: dict, got) -> str:
    for hint, wrong in ex.mistakes:
        try:
            if _diff(got, wrong(**_copy(kwargs))) <= APPROX_TOL:
                return hint
        except Exception:  # noqa: BLE001 - a mistake model that does not apply here
            continue
    return ex.hint


def exercises_for(notebook: str) -> list[Exercise]:
    """The exercises of one notebook (``"00"`` ... ``"04"``), in order."""
    return [ex for ex in EXERCISES.values() if ex.notebook == notebook]


# ----------------------------------------------------------------------------------------------
# random inputs
# ----------------------------------------------------------------------------------------------
def _u(gen, lo, hi, *shape) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(*shape, generator=gen, dtype=torch.float64)


def _n(gen, *shape) -> torch.Tensor:
    return torch.randn(*shape, generator=gen, dtype=torch.float64)


def _token_case(gen) -> dict:
    """Ratios spread around 1 (some far off), advantages of both signs and some zeros."""
    n = int(torch.randint(20, 200, (1,), generator=gen))
    ratio = torch.exp(0.6 * _n(gen, n))
    adv = _n(gen, n)
    adv[torch.rand(n, generator=gen) < 0.1] = 0.0
    return dict(
        ratio=ratio,
        adv=adv,
        c_low=float(_u(gen, 0.5, 0.95, 1)),
        c_high=float(_u(gen, 1.05, 3.0, 1)),
    )


# ----------------------------------------------------------------------------------------------
# 00 · the loss on one batch
# ----------------------------------------------------------------------------------------------
def _surrogate(ratio, adv, c_low, c_high):
    """Eq. 4 per token: ``min(r*A, clip(r, c_low, c_high)*A)``."""
    return torch.minimum(ratio * adv, ratio.clamp(c_low, c_high) * adv)


def _indicator(ratio, adv, c_low, c_high):
    """Eq. 7: ``X = 1`` where the token keeps its gradient (the package's own regions)."""
    high, low, _ = clip_regions(ratio, adv, c_low, c_high)
    return ~(high | low)


def _group_case(gen) -> dict:
    g = int(torch.randint(2, 9, (1,), generator=gen))
    n_groups = int(torch.randint(1, 6, (1,), generator=gen))
    rewards = (torch.rand(n_groups * g, generator=gen) < 0.4).to(torch.float64)
    rewards[:g] = 1.0 if bool(torch.rand(1, generator=gen) < 0.5) else 0.0  # a group all alike
    if n_groups > 1:
        rewards[g : 2 * g] = _u(gen, 0, 1, g)  # graded rewards too
    return dict(rewards=rewards, group_size=g)


def _group_reference(rewards, group_size):
    return grpo_advantages(rewards, group_size)


def _group_population_std(rewards, group_size):
    r = rewards.view(-1, group_size)
    return ((r - r.mean(-1, keepdim=True)) / (r.std(-1, unbiased=False, keepdim=True) + 1e-6)).view(
        -1
    )


def _group_unscaled(rewards, group_size):
    return grpo_advantages(rewards, group_size, scale=False)


# ----------------------------------------------------------------------------------------------
# 01 · the Entropy-Clip Rule
# ----------------------------------------------------------------------------------------------
def _policy_case(gen) -> dict:
    v = int(torch.randint(8, 48, (1,), generator=gen))
    z = _u(gen, 0.5, 3.0, 1) * _n(gen, v)
    adv = _n(gen, v)
    keep = torch.rand(v, generator=gen) < 0.8
    return dict(z=z, adv=adv, keep=keep, eta=float(_u(gen, 0.01, 0.5, 1)))


def _eq6(z, adv, keep, eta):
    """Eq. 6: ``-eta * Cov_{y~pi}(log pi(y), A(y) X(y))``, a covariance under ``pi``."""
    log_pi = torch.log_softmax(z, -1)
    pi = log_pi.exp()
    ax = torch.where(keep, adv, 0.0)
    cov = (pi * (log_pi - (pi * log_pi).sum()) * (ax - (pi * ax).sum())).sum()
    return -eta * cov


def _eq6_uniform(z, adv, keep, eta):
    log_pi = torch.log_softmax(z, -1)
    ax = torch.where(keep, adv, 0.0)
    return -eta * ((log_pi - log_pi.mean()) * (ax - ax.mean())).mean()


def _eq6_no_keep(z, adv, keep, eta):
    return _eq6(z, adv, torch.ones_like(keep), eta)


def _eq6_plus(z, adv, keep, eta):
    return -_eq6(z, adv, keep, eta)


def _natural_step(z, adv, eta):
    pi = torch.softmax(z, -1)
    return eta * (adv - (pi * adv).sum())


def _second_order(z, adv, eta):
    """``|exact dH - Eq. 6|`` for the natural step ``dz = eta * (A - E_pi[A])``, nothing clipped."""
    predicted = float(_eq6(z, adv, torch.ones_like(adv, dtype=torch.bool), eta))
    return abs(exact_delta_h(z, _natural_step(z, adv, eta)) - predicted)


def _second_order_case(gen) -> dict:
    c = _policy_case(gen)
    return dict(z=c["z"], adv=c["adv"], eta=c["eta"])


SLOPE_LRS = (0.2, 0.1, 0.05, 0.025, 0.0125)


def _slope_of(fn) -> tuple[bool, str]:
    """The log-log slope of the learner's error against the step, over 20 policies."""
    gen = torch.Generator().manual_seed(7)
    cases = [_second_order_case(gen) for _ in range(20)]
    mean_err = [
        sum(float(fn(z=c["z"].clone(), adv=c["adv"].clone(), eta=lr)) for c in cases) / len(cases)
        for lr in SLOPE_LRS
    ]
    x = torch.log(torch.tensor(SLOPE_LRS, dtype=torch.float64))
    y = torch.log(torch.tensor(mean_err, dtype=torch.float64))
    slope = float(((x - x.mean()) * (y - y.mean())).sum() / ((x - x.mean()) ** 2).sum())
    good = 1.8 < slope < 2.2
    return good, f"log-log slope of the error over eta = {SLOPE_LRS}: {slope:.2f} (second order: 2)"


def wrong_sign_case() -> tuple[torch.Tensor, torch.Tensor]:
    """The policy of the ``wrong_sign_eta`` exercise: notebook 01's 40-token policy.

    A small natural step raises its entropy (Eq. 6 predicts ``dH > 0``); a step large enough
    to pile the probability on the best token lowers it.
    """
    z, adv = toy_policy(seed=1, n_tokens=40)
    return z, adv


def _wrong_sign_check(fn) -> Result:
    z, adv = wrong_sign_case()
    name = "wrong_sign_eta"
    try:
        eta = fn()
    except NotImplementedError:
        return Result(name, "not done yet", detail="write wrong_sign_eta() -> float")
    except Exception as e:
        return Result(name, "error", detail=f"{type(e).__name__}: {e}")
    if eta is None or not isinstance(eta, (int, float)) or not math.isfinite(eta) or eta <= 0:
        return Result(name, "wrong", detail=f"returned {eta!r}: return a step size > 0 (a float)")
    keep = torch.ones_like(adv, dtype=torch.bool)
    predicted = float(_eq6(z, adv, keep, eta))
    measured = exact_delta_h(z, _natural_step(z, adv, eta))
    detail = (
        f"eta={eta:g}: Eq. 6 predicts dH={predicted:+.4g}, the step really makes {measured:+.4g}"
    )
    if predicted * measured < 0:
        return Result(name, "correct", detail=detail)
    return Result(
        name,
        "wrong",
        detail=detail + " (same sign)",
        hint="Eq. 6 is linear in eta, the true change is not: try much larger steps, and "
        "measure with exact_delta_h until the signs part",
    )


# ----------------------------------------------------------------------------------------------
# 02 · gradient balance
# ----------------------------------------------------------------------------------------------
def _share_reference(ratio, adv, c_low, c_high):
    """Eq. 8 over sampled tokens, gradient measure, plain sum."""
    pos, neg = contribution_sums(ratio, adv, torch.ones_like(ratio), c_low, c_high)
    return float(share(pos, neg))


def _share_value(ratio, adv, c_low, c_high):
    ones = torch.ones_like(ratio)
    return float(share(*contribution_sums(ratio, adv, ones, c_low, c_high, contribution="value")))


def _share_all_tokens(ratio, adv, c_low, c_high):
    c = adv.abs() * ratio
    return float(c[adv > 0].sum() / c[adv != 0].sum())


def _share_counts(ratio, adv, c_low, c_high):
    keep = _indicator(ratio, adv, c_low, c_high)
    pos, neg = (keep & (adv > 0)).sum(), (keep & (adv < 0)).sum()
    return float(pos / (pos + neg))


def _batch_cases(batch) -> list[dict]:
    ratio = torch.exp(batch.log_probs.double() - batch.old_log_probs.double())
    adv = batch.advantages.double()
    return [dict(ratio=ratio, adv=adv, c_low=cl, c_high=ch) for cl, ch in ((0.8, 1.2), (0.6, 2.0))]


def _search_case(gen) -> dict:
    """A batch where negatives dominate unless the bounds move: long wrong answers."""
    c = _token_case(gen)
    ratio, adv = c["ratio"], c["adv"]
    heavier = float(_u(gen, 0.8, 1.6, 1))  # negatives carry more: longer wrong answers
    adv = torch.where(adv < 0, heavier * adv, adv)
    ratio = torch.where(adv > 0, ratio * 1.3, ratio)  # positives drift up, past c_high
    rho0 = float(_u(gen, 0.35, 0.5, 1))
    return dict(ratio=ratio, adv=adv, rho0=rho0)


def _rho_at(ratio, adv):
    def rho_at(c_low: float, c_high: float) -> float:
        return _share_reference(ratio, adv, c_low, c_high)

    return rho_at


def _search_reference(ratio, adv, rho0):
    cfg = BAPOConfig(rho0=rho0)
    b = search_path(torch.log(ratio), torch.zeros_like(ratio), adv, None, cfg).bounds
    return (b.c_low, b.c_high)


def _official_order(ratio, adv, rho0):
    cfg = BAPOConfig(rho0=rho0, order="official")
    b = search_path(torch.log(ratio), torch.zeros_like(ratio), adv, None, cfg).bounds
    return (b.c_low, b.c_high)


def _algorithm1_adapter(fn):
    """The learner writes ``algorithm1(rho_at, cfg)``; trials give ``ratio, adv, rho0``."""

    def call(ratio, adv, rho0):
        return fn(_rho_at(ratio, adv), BAPOConfig(rho0=rho0))

    return call


def _algorithm1_data(batch) -> list[dict]:
    ratio = torch.exp(batch.log_probs.double() - batch.old_log_probs.double())
    return [dict(ratio=ratio, adv=batch.advantages.double(), rho0=0.4)]


# ----------------------------------------------------------------------------------------------
# 03 · training metrics
# ----------------------------------------------------------------------------------------------
def _masked_case(gen) -> dict:
    b, t = (
        int(torch.randint(2, 8, (1,), generator=gen)),
        int(torch.randint(3, 16, (1,), generator=gen)),
    )
    old = torch.log_softmax(2 * _n(gen, b, t, 5), -1)[..., 0]
    log_probs = old + 0.4 * _n(gen, b, t)
    lengths = torch.randint(1, t + 1, (b,), generator=gen)
    mask = torch.arange(t)[None, :] < lengths[:, None]
    adv = _n(gen, b)[:, None].expand(b, t).clone()
    return dict(
        log_probs=log_probs,
        old_log_probs=old,
        adv=adv,
        mask=mask,
        c_low=float(_u(gen, 0.6, 0.95, 1)),
        c_high=float(_u(gen, 1.05, 1.6, 1)),
    )


def _stats(log_probs, old_log_probs, adv, mask, c_low, c_high):
    return policy_loss(log_probs, old_log_probs, adv, mask, FixedClip(c_low, c_high))[1]


def _clip_fractions(log_probs, old_log_probs, adv, mask, c_low, c_high):
    st = _stats(log_probs, old_log_probs, adv, mask, c_low, c_high)
    return (st.clip_high_frac, st.clip_low_frac)


def _clip_fractions_unmasked(log_probs, old_log_probs, adv, mask, c_low, c_high):
    full = torch.ones_like(mask)
    st = _stats(log_probs, old_log_probs, adv, full, c_low, c_high)
    return (st.clip_high_frac, st.clip_low_frac)


def _clip_fractions_signless(log_probs, old_log_probs, adv, mask, c_low, c_high):
    r = torch.exp(log_probs - old_log_probs)[mask]
    return (float((r > c_high).double().mean()), float((r < c_low).double().mean()))


def _kl_case(gen) -> dict:
    c = _masked_case(gen)
    return dict(log_probs=c["log_probs"], old_log_probs=c["old_log_probs"], mask=c["mask"])


def _approx_kl(log_probs, old_log_probs, mask):
    adv = torch.zeros_like(log_probs)
    return policy_loss(log_probs, old_log_probs, adv, mask, FixedClip())[1].approx_kl


def _kl_k1(log_probs, old_log_probs, mask):
    return float((old_log_probs - log_probs)[mask].mean())


def _kl_k2(log_probs, old_log_probs, mask):
    return float((0.5 * (log_probs - old_log_probs) ** 2)[mask].mean())


def _kl_reverse(log_probs, old_log_probs, mask):
    log_r = (old_log_probs - log_probs)[mask]
    return float((log_r.exp() - 1 - log_r).mean())


# ----------------------------------------------------------------------------------------------
# 04 · partial rollouts
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Written:
    """A finished completion's per-token policy versions (what :class:`Sample` carries)."""

    versions: list[int]


def _versions_case(gen) -> dict:
    version = int(torch.randint(3, 30, (1,), generator=gen))
    samples = []
    for _ in range(int(torch.randint(1, 12, (1,), generator=gen))):
        start = int(torch.randint(max(0, version - 6), version + 1, (1,), generator=gen))
        parts = int(torch.randint(1, 4, (1,), generator=gen))
        versions: list[int] = []
        for p in range(parts):
            v = min(version, start + p)
            versions += [v] * int(torch.randint(1, 5, (1,), generator=gen))
        samples.append(_Written(versions))
    return dict(samples=samples, version=version)


def _token_ages(samples: Sequence, version: int):
    """``offpolicy/age_mean`` and ``age_max``: ages ``version - v`` over every token."""
    ages = torch.tensor([version - v for s in samples for v in s.versions], dtype=torch.float64)
    if ages.numel() == 0:
        return (0.0, 0.0)
    return (float(ages.mean()), float(ages.max()))


def _sample_ages(samples: Sequence, version: int):
    ages = torch.tensor([version - min(s.versions) for s in samples], dtype=torch.float64)
    return (float(ages.mean()), float(ages.max()))


def _spanning_share(samples: Sequence):
    return sum(len(set(s.versions)) > 1 for s in samples) / max(len(samples), 1)


def _spanning_case(gen) -> dict:
    return dict(samples=_versions_case(gen)["samples"])


# ----------------------------------------------------------------------------------------------
# the catalogue
# ----------------------------------------------------------------------------------------------
_SIGN = "Eq. 4 is the objective (to maximise); the loss is its negative. Return the objective."

EXERCISES: dict[str, Exercise] = {
    ex.name: ex
    for ex in [
        Exercise(
            "clipped_surrogate",
            "00",
            "Eq. 4, token by token",
            "clipped_surrogate(ratio, adv, c_low, c_high) -> tensor",
            _surrogate,
            _token_case,
            "per token, min(r * A, clip(r, c_low, c_high) * A); torch.clamp and torch.minimum",
            (
                ("you returned r * A: the clip is missing", lambda ratio, adv, **_: ratio * adv),
                (
                    "you returned the clipped term alone; Eq. 4 takes the min with r * A, so a "
                    "negative token whose ratio fell below c_low still gets r * A",
                    lambda ratio, adv, c_low, c_high: ratio.clamp(c_low, c_high) * adv,
                ),
                (
                    "min, not max: the pessimistic bound",
                    lambda ratio, adv, c_low, c_high: torch.maximum(
                        ratio * adv, ratio.clamp(c_low, c_high) * adv
                    ),
                ),
                (_SIGN, lambda **kw: -_surrogate(**kw)),
            ),
        ),
        Exercise(
            "clip_indicator",
            "00",
            "Eq. 7, the clip indicator X",
            "clip_indicator(ratio, adv, c_low, c_high) -> bool tensor",
            _indicator,
            _token_case,
            "X = 0 for A > 0 with r > c_high and for A < 0 with r < c_low; X = 1 elsewhere",
            (
                (
                    "the sign of A matters: a positive token below c_low keeps its gradient "
                    "(the min picks r * A there), and so does a negative token above c_high",
                    lambda ratio, c_low, c_high, **_: (ratio >= c_low) & (ratio <= c_high),
                ),
                (
                    "inverted: X is 1 for the tokens that KEEP their gradient",
                    lambda **kw: ~_indicator(**kw),
                ),
            ),
        ),
        Exercise(
            "group_advantages",
            "00",
            "GRPO's group-normalised advantages",
            "group_advantages(rewards, group_size) -> tensor",
            _group_reference,
            _group_case,
            "A_i = (R_i - mean of its group) / (std of its group + 1e-6); groups are consecutive",
            (
                (
                    "the std here is the unbiased one (divide by G - 1), as TRL and verl use: "
                    "torch.std's default",
                    _group_population_std,
                ),
                ("divide by the group's std (+ 1e-6)", _group_unscaled),
            ),
        ),
        Exercise(
            "eq6_delta_h",
            "01",
            "Eq. 6, the first-order entropy change",
            "eq6_delta_h(z, adv, keep, eta) -> float",
            _eq6,
            _policy_case,
            "-eta * sum_y pi(y) (log pi(y) - E_pi[log pi]) (A(y)X(y) - E_pi[A X]), pi = softmax(z)",
            (
                ("the covariance is under pi, not a plain mean over tokens", _eq6_uniform),
                ("clipped tokens (keep = False) contribute A*X = 0", _eq6_no_keep),
                ("mind the sign: dH ~= MINUS eta times the covariance", _eq6_plus),
            ),
        ),
        Exercise(
            "second_order_error",
            "01",
            "what Eq. 6 misses, and how fast",
            "second_order_error(z, adv, eta) -> float",
            _second_order,
            _second_order_case,
            "take the natural step dz = eta * (A - E_pi[A]); compare exact_delta_h(z, dz) with "
            "Eq. 6 (keep everything) and return the absolute difference",
            after=_slope_of,
        ),
        Exercise(
            "wrong_sign_eta",
            "01",
            "a step too large for Eq. 6",
            "wrong_sign_eta() -> float",
            None,
            None,
            "Eq. 6 is linear in eta, the true change is not: try much larger steps",
            custom=_wrong_sign_check,
        ),
        Exercise(
            "positive_share",
            "02",
            "Eq. 8 over sampled tokens",
            "positive_share(ratio, adv, c_low, c_high) -> float",
            _share_reference,
            _token_case,
            "each unclipped token contributes |A| * r (the gradient measure); rho = positive sum / "
            "(positive + negative sums); clipped tokens contribute nothing",
            (
                (
                    "that is the loss-VALUE measure (a clipped token counts |A| * bound); this "
                    "exercise asks for the gradient measure",
                    _share_value,
                ),
                ("leave the clipped tokens out (X = 0): they carry no gradient", _share_all_tokens),
                ("weigh each token by |A| * r, do not count tokens", _share_counts),
            ),
            data_cases=_batch_cases,
        ),
        Exercise(
            "algorithm1",
            "02",
            "Algorithm 1 as a loop",
            "algorithm1(rho_at, cfg) -> (c_low, c_high)",
            _search_reference,
            _search_case,
            "start at (cfg.a_minus, cfg.a_plus); while rho_at(...) < cfg.rho0 and "
            "c_low + cfg.delta2 <= cfg.b_minus: raise c_high by delta1 if it stays <= b_plus, "
            "else c_low by delta2. Floats drift: 1.2 + 36 * 0.05 is 3.0000000000000013",
            (
                (
                    "you raise c_low first: that is the authors' public code "
                    "(BAPOConfig.official); Algorithm 1 raises c_high first",
                    _official_order,
                ),
            ),
            data_cases=_algorithm1_data,
            adapter=_algorithm1_adapter,
        ),
        Exercise(
            "clip_fractions",
            "03",
            "the trainer's clip fractions",
            "clip_fractions(log_probs, old_log_probs, adv, mask, c_low, c_high) -> (high, low)",
            _clip_fractions,
            _masked_case,
            "high: A > 0 and r > c_high; low: A < 0 and r < c_low; each as a fraction of the "
            "masked (real) tokens",
            (
                (
                    "count only the tokens where mask is True, and divide by their number",
                    _clip_fractions_unmasked,
                ),  # fmt: skip
                (
                    "a token is clipped high only when A > 0, low only when A < 0",
                    _clip_fractions_signless,
                ),  # fmt: skip
            ),
        ),
        Exercise(
            "approx_kl",
            "03",
            "the trainer's policy/approx_kl",
            "approx_kl(log_probs, old_log_probs, mask) -> float",
            _approx_kl,
            _kl_case,
            "the k3 estimator: mean over masked tokens of (r - 1) - log r, r = exp(log_probs - "
            "old_log_probs)",
            (
                ("that is k1, mean(-log r): unbiased but noisy and often negative", _kl_k1),
                ("that is k2, mean((log r)^2 / 2)", _kl_k2),
                ("r is pi_theta / pi_rollout, not the other way round", _kl_reverse),
            ),
        ),
        Exercise(
            "token_ages",
            "04",
            "the trainer's offpolicy/age_mean and age_max",
            "token_ages(samples, version) -> (mean, max)",
            _token_ages,
            _versions_case,
            "every token has an age: version minus the version that wrote it (s.versions)",
            (("count the age of every token, not one age per completion", _sample_ages),),
            data_cases=lambda data: [dict(samples=data[0], version=data[1])],
        ),
        Exercise(
            "spanning_share",
            "04",
            "completions written by several policy versions",
            "spanning_share(samples) -> float",
            _spanning_share,
            _spanning_case,
            "a completion spans versions when len(set(s.versions)) > 1",
            data_cases=lambda data: [dict(samples=data[0])],
        ),
    ]
}
