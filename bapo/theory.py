"""The Entropy-Clip Rule (Eq. 6, Appendix B), exact, on a tabular softmax policy.

A policy over ``V`` tokens is a vector of logits ``z`` with ``pi = softmax(z)``.  This module holds:

* **Lemma 1** - the first-order entropy change of any logit step ``dz``:
  ``dH ~= -Cov_{y~pi}(log pi(y), dz_y)`` (:func:`lemma1_delta_h`), its per-token terms
  (:func:`entropy_terms`) and the exact change (:func:`exact_delta_h`);
* **Proposition 1 / Eq. 5** - the logit step of the clipped surrogate (Eq. 4), in expectation
  (:func:`expected_logit_step`, closed form) and from a batch of sampled tokens
  (:func:`sampled_logit_step`, autograd through :func:`bapo.loss.policy_loss`).  The clip
  indicator ``X(y)`` of Eq. 7 is :func:`bapo.loss.clip_regions` in both: the loss core's own code;
* **Proposition 2 / Eq. 6** - ``dH ~= -eta * Cov(log pi, A*X)`` for the natural-gradient step;
* **App. B.4.2, Definition 1, Table 4** - each token's contribution to ``dH`` and its quadrant
  (:func:`decompose`, :data:`TABLE4`);
* a stale-data bandit simulator (:func:`simulate`): ``G`` samples per group from ``pi_rollout``,
  GRPO advantages, then ``E`` update epochs on the same samples under any clip rule.

Two forms of the step.  Plain gradient ascent on the logits gives Proposition 1,
``dz_y = eta * pi(y) * (A(y) X(y) + C)`` with ``C = -E_pi[A X]``.  Eq. 6 as printed (Proposition 2)
drops the factor ``pi(y)``: it is exact to first order for ``dz_y = eta * (A(y) X(y) + C)``, which
is the natural-gradient step (the Fisher matrix ``diag(pi) - pi pi^T`` maps it back onto the plain
gradient; Cui et al. 2025 give both cases).  ``natural=True`` selects it.

All arithmetic is float64.  Tensors in, tensors (or floats) out.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from bapo.loss import (
    BAPOConfig,
    ClipRule,
    FixedClip,
    LossStats,
    clip_regions,
    grpo_advantages,
    importance_ratio,
    policy_loss,
)

__all__ = [
    "QUADRANTS",
    "TABLE4",
    "Bandit",
    "BatchQuadrants",
    "batch_quadrants",
    "LogitStep",
    "SimResult",
    "TokenDecomposition",
    "decompose",
    "entropy",
    "entropy_gradient",
    "entropy_terms",
    "exact_delta_h",
    "expected_logit_step",
    "keep_mask",
    "lemma1_delta_h",
    "mean_end",
    "measured_token_effects",
    "random_step_checks",
    "rule_name",
    "sampled_logit_step",
    "simulate",
    "simulate_grid",
    "stale_logits",
    "toy_policy",
    "unclipped_logit_step",
]

# Table 4: the sign of dH(y_s) = -eta * (4) * (5), keyed by (high probability, high advantage).
TABLE4: dict[tuple[bool, bool], int] = {
    (True, True): -1,  # high prob, high adv: sharpens, entropy falls
    (True, False): +1,  # high prob, low adv: smooths, entropy rises
    (False, True): +1,  # low prob, high adv: smooths, entropy rises
    (False, False): -1,  # low prob, low adv: sharpens, entropy falls
}
QUADRANTS: dict[tuple[bool, bool], str] = {
    (True, True): "high prob, high adv",
    (True, False): "high prob, low adv",
    (False, True): "low prob, high adv",
    (False, False): "low prob, low adv",
}


def _f64(x) -> torch.Tensor:
    return torch.as_tensor(x).to(torch.float64)


# ----------------------------------------------------------------------------------------------
# Lemma 1: entropy of a tabular softmax policy and its first-order change
# ----------------------------------------------------------------------------------------------
def entropy(z: torch.Tensor) -> torch.Tensor:
    """``H(pi) = -sum_y pi(y) log pi(y)`` of ``pi = softmax(z)`` (a float64 scalar tensor)."""
    lp = torch.log_softmax(_f64(z), -1)
    return -(lp.exp() * lp).sum(-1)


def entropy_gradient(z: torch.Tensor) -> torch.Tensor:
    """``dH/dz_y = -pi(y) * (log pi(y) - E_pi[log pi])``: Lemma 1 is ``dH ~= <this, dz>``."""
    lp = torch.log_softmax(_f64(z), -1)
    pi = lp.exp()
    return -pi * (lp - (pi * lp).sum(-1, keepdim=True))


def entropy_terms(z: torch.Tensor, dz: torch.Tensor) -> torch.Tensor:
    """Lemma 1 token by token: ``-pi(y) (log pi(y) - E[log pi]) (dz_y - E[dz])`` (App. B.4.2).

    The terms are the summands of ``-Cov_{y~pi}(log pi(y), dz_y)`` and sum to
    :func:`lemma1_delta_h` exactly.  Any constant added to ``dz`` leaves the policy and the sum
    unchanged; centring ``dz`` under ``pi`` fixes the split among tokens.
    """
    dz = _f64(dz)
    pi = torch.softmax(_f64(z), -1)
    return entropy_gradient(z) * (dz - (pi * dz).sum(-1, keepdim=True))


def lemma1_delta_h(z: torch.Tensor, dz: torch.Tensor) -> float:
    """Lemma 1: ``H(softmax(z + dz)) - H(softmax(z)) ~= -Cov_{y~pi}(log pi(y), dz_y)``.

    Exact to first order in ``dz`` for any logit step (the covariance is ``<dH/dz, dz>``).
    """
    return float((entropy_gradient(z) * _f64(dz)).sum())


def exact_delta_h(z: torch.Tensor, dz: torch.Tensor) -> float:
    """The entropy change a logit step really makes: ``H(z + dz) - H(z)``."""
    z = _f64(z)
    return float(entropy(z + _f64(dz)) - entropy(z))


# ----------------------------------------------------------------------------------------------
# Proposition 1: the logit step of the clipped surrogate (Eq. 4), expected and sampled
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LogitStep:
    """One update of the logits: ``z <- z + dz``.

    ``keep`` is the clip indicator ``X`` of Eq. 7 (``True``: the token keeps its gradient) and
    ``ratio`` is ``r = pi / pi_rollout``, both per vocabulary token for the expected step and per
    sampled token for the sampled one.  ``stats`` is :func:`policy_loss`'s record (sampled only).
    """

    dz: torch.Tensor
    keep: torch.Tensor
    ratio: torch.Tensor
    stats: LossStats | None = None


def keep_mask(
    z: torch.Tensor,
    z_rollout: torch.Tensor,
    advantages: torch.Tensor,
    clip: FixedClip,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 7 for every vocabulary token: ``(X, r)`` with ``X = 1`` where no clip region holds.

    The regions are :func:`bapo.loss.clip_regions`, the very test :func:`policy_loss` applies.
    """
    lp, old = torch.log_softmax(_f64(z), -1), torch.log_softmax(_f64(z_rollout), -1)
    ratio = importance_ratio(lp, old)
    high, low, dual = clip_regions(ratio, _f64(advantages), clip.c_low, clip.c_high, clip.dual_clip)
    return ~(high | low | dual), ratio


def expected_logit_step(
    z: torch.Tensor,
    z_rollout: torch.Tensor,
    advantages: torch.Tensor,
    clip: FixedClip,
    lr: float,
    *,
    natural: bool = False,
) -> LogitStep:
    """The exact (expected) logit step of the clipped surrogate, Proposition 1 in closed form.

    The objective is ``J(z) = E_{y~pi_rollout}[min(r A, clip(r, c_low, c_high) A)]`` (Eq. 4) with
    one advantage ``A(y)`` per vocabulary token.  Its gradient (Eq. 5) is
    ``dJ/dz_y = pi(y) * (A(y) X(y) - E_pi[A X])``, so ``dz = lr * that`` (Proposition 1 with
    ``C = -E_pi[A X]``).  ``natural=True`` drops the factor ``pi(y)``: the natural-gradient step
    for which Eq. 6 / Proposition 2 hold as printed.  Clipped tokens (``X = 0``) keep only ``C``.
    """
    adv = _f64(advantages)
    keep, ratio = keep_mask(z, z_rollout, adv, clip)
    pi = torch.softmax(_f64(z), -1)
    ax = torch.where(keep, adv, 0.0)
    g = ax - (pi * ax).sum(-1, keepdim=True)
    if not natural:
        g = pi * g
    return LogitStep(dz=lr * g, keep=keep, ratio=ratio)


def sampled_logit_step(
    z: torch.Tensor,
    z_rollout: torch.Tensor,
    samples: torch.Tensor,
    advantages: torch.Tensor,
    clip: ClipRule,
    lr: float,
) -> LogitStep:
    """One SGD step on the logits from a batch of sampled tokens, through :func:`policy_loss`.

    ``samples`` are token ids drawn from ``pi_rollout = softmax(z_rollout)``, ``advantages`` one
    per sample.  The token-mean loss of Eq. 4 (for a :class:`~bapo.loss.BAPOConfig`, with the
    bounds Algorithm 1 picks on this very batch) is back-propagated to ``z``:
    ``dz = -lr * grad``.  Its expectation over samples is :func:`expected_logit_step`.
    """
    zz = _f64(z).detach().requires_grad_(True)
    old = torch.log_softmax(_f64(z_rollout), -1)[samples]
    lp = torch.log_softmax(zz, -1)[samples]
    adv = _f64(advantages)
    loss, stats = policy_loss(lp, old, adv, clip=clip)
    (grad,) = torch.autograd.grad(loss, zz)
    ratio = importance_ratio(lp.detach(), old)
    high, low, dual = clip_regions(ratio, adv, stats.c_low, stats.c_high, clip.dual_clip)
    return LogitStep(dz=-lr * grad, keep=~(high | low | dual), ratio=ratio, stats=stats)


def unclipped_logit_step(
    z: torch.Tensor,
    z_rollout: torch.Tensor,
    samples: torch.Tensor,
    advantages: torch.Tensor,
    lr: float,
) -> torch.Tensor:
    """:func:`sampled_logit_step` with ``X = 1`` everywhere, in closed form.

    ``dz = lr/n * sum_i A_i r_i (e_{y_i} - pi)``: the step the same batch would make if no token
    were clipped.  Its Lemma 1 value, against the clipped step's, is what clipping did to ``dH``.
    """
    z = _f64(z)
    lp = torch.log_softmax(z, -1)
    ratio = importance_ratio(lp[samples], torch.log_softmax(_f64(z_rollout), -1)[samples])
    w = _f64(advantages) * ratio
    per_token = torch.zeros_like(z).index_add_(-1, samples, w)
    return lr / len(samples) * (per_token - lp.exp() * w.sum())


# ----------------------------------------------------------------------------------------------
# Appendix B.4.2: each token's contribution to dH, and its quadrant (Definition 1, Table 4)
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TokenDecomposition:
    """App. B.4.2 per token: ``dH(y_s) ~= -eta * (4) * (5)`` for retained tokens, 0 for clipped.

    ``prob_term`` is (4) ``pi(y_s) (log pi(y_s) - E_pi[log pi])``, ``adv_term`` is (5)
    ``A(y_s) - baseline`` with ``baseline = E_retained[A]`` (Definition 1).  ``high_prob`` is
    ``pi(y_s) > exp(E_pi[log pi])`` and ``high_adv`` is ``A(y_s) > baseline`` (Definition 1).
    """

    probs: torch.Tensor
    log_probs: torch.Tensor
    advantages: torch.Tensor
    keep: torch.Tensor
    prob_term: torch.Tensor
    adv_term: torch.Tensor
    delta_h: torch.Tensor
    high_prob: torch.Tensor
    high_adv: torch.Tensor
    baseline: float
    lr: float

    @property
    def total(self) -> float:
        """The sum of the per-token terms."""
        return float(self.delta_h.sum())

    @property
    def eq6(self) -> float:
        """Eq. 6 / Proposition 2: ``-eta * Cov_pi(log pi, A X)``.

        Equals :attr:`total` plus ``eta * baseline * sum_retained (4)``: B.4.2 replaces
        ``E_pi[A X]`` by ``E_retained[A]``, which is exact when nothing is clipped or the
        baseline is 0.
        """
        ax = torch.where(self.keep, self.advantages, 0.0)
        return float(-self.lr * (self.prob_term * ax).sum())

    @property
    def quadrants(self) -> list[str]:
        """Definition 1's label of every token, e.g. ``"low prob, high adv"``."""
        return [QUADRANTS[pair] for pair in zip(self.high_prob.tolist(), self.high_adv.tolist())]

    @property
    def table4_sign(self) -> torch.Tensor:
        """Table 4's sign of ``dH(y_s)`` for every token's quadrant (clipped tokens included)."""
        pairs = zip(self.high_prob.tolist(), self.high_adv.tolist())
        return torch.tensor([TABLE4[pair] for pair in pairs])


def decompose(
    z: torch.Tensor,
    advantages: torch.Tensor,
    keep: torch.Tensor | None = None,
    lr: float = 1.0,
    *,
    baseline: float | None = None,
) -> TokenDecomposition:
    """App. B.4.2: split the entropy change of Eq. 6 over the vocabulary, token by token.

    ``keep`` is ``X`` of Eq. 7 (all ``True`` if omitted).  ``baseline`` defaults to
    ``E_retained[A] = sum_{X=1} pi A / sum_{X=1} pi`` (Definition 1; 0 if nothing is retained).
    Moving only token ``s``'s logit by ``eta * (A(y_s) - baseline)`` changes the entropy by
    ``delta_h[s]`` to first order, and the sign of that change is Table 4's.
    """
    z, adv = _f64(z), _f64(advantages)
    keep = torch.ones_like(adv, dtype=torch.bool) if keep is None else keep.to(torch.bool)
    lp = torch.log_softmax(z, -1)
    pi = lp.exp()
    mean_lp = (pi * lp).sum()
    if baseline is None:
        mass = (pi * keep).sum()
        baseline = float((pi * adv * keep).sum() / mass) if mass > 0 else 0.0
    prob_term = pi * (lp - mean_lp)  # (4)
    adv_term = adv - baseline  # (5)
    delta_h = torch.where(keep, -lr * prob_term * adv_term, 0.0)
    return TokenDecomposition(
        probs=pi,
        log_probs=lp,
        advantages=adv,
        keep=keep,
        prob_term=prob_term,
        adv_term=adv_term,
        delta_h=delta_h,
        high_prob=lp > mean_lp,
        high_adv=adv > baseline,
        baseline=float(baseline),
        lr=float(lr),
    )


@dataclass(frozen=True)
class BatchQuadrants:
    """App. B.4.2 on a batch of *sampled* tokens: Eq. 6's entropy change split by quadrant.

    Per token ``t`` the term is ``-(log pi(y_t) - m) * (A_t - b)`` with ``m`` the batch mean of
    ``log pi`` and ``b = E_retained[A]`` (Definition 1), divided by the number of tokens: the
    sample estimate of ``-Cov(log pi, A X)`` (Eq. 6 with ``eta = 1``).  ``kept`` sums the terms
    of unclipped tokens (``X = 1``, Eq. 7): what the update does to entropy.  ``clipped`` sums the
    terms the bounds removed: what the update *would* have done with those tokens.  Keys are
    Table 4's quadrants, e.g. ``"low prob, high adv"``.
    """

    n: dict[str, int]
    n_clipped: dict[str, int]
    kept: dict[str, float]
    clipped: dict[str, float]

    @property
    def total_kept(self) -> float:
        return sum(self.kept.values())

    @property
    def total_clipped(self) -> float:
        return sum(self.clipped.values())


def batch_quadrants(
    log_probs: torch.Tensor, advantages: torch.Tensor, keep: torch.Tensor
) -> BatchQuadrants:
    """Table 4's quadrants on sampled tokens (1-D tensors of equal length; see
    :class:`BatchQuadrants`).  ``keep`` is ``X`` of Eq. 7."""
    lp, adv = _f64(log_probs).reshape(-1), _f64(advantages).reshape(-1)
    keep = keep.reshape(-1).to(torch.bool)
    n_tok = max(lp.numel(), 1)
    m = lp.mean() if lp.numel() else torch.tensor(0.0, dtype=torch.float64)
    b = adv[keep].mean() if keep.any() else torch.tensor(0.0, dtype=torch.float64)
    term = -(lp - m) * (adv - b) / n_tok
    high_prob, high_adv = lp > m, adv > b
    n, n_clipped, kept, clipped = {}, {}, {}, {}
    for (hp, ha), name in QUADRANTS.items():
        q = (high_prob == hp) & (high_adv == ha)
        n[name] = int(q.sum())
        n_clipped[name] = int((q & ~keep).sum())
        kept[name] = float(term[q & keep].sum())
        clipped[name] = float(term[q & ~keep].sum())
    return BatchQuadrants(n, n_clipped, kept, clipped)


def measured_token_effects(
    z: torch.Tensor,
    advantages: torch.Tensor,
    keep: torch.Tensor | None = None,
    eta: float = 1e-4,
    *,
    baseline: float | None = None,
) -> torch.Tensor:
    """Table 4 measured by hand: the exact ``dH`` of moving one token's logit at a time.

    Token ``s`` (retained) gets ``dz_s = eta * (A(y_s) - baseline)``, every other logit stays;
    the result is ``H(after) - H(before)``, token by token (0 for clipped tokens).  To first order
    it is :func:`decompose`'s ``delta_h`` at ``lr=eta``, so its sign is Table 4's.
    """
    z = _f64(z)
    dec = decompose(z, advantages, keep, eta, baseline=baseline)
    out = torch.zeros_like(z)
    for s in torch.nonzero(dec.keep).flatten().tolist():
        dz = torch.zeros_like(z)
        dz[s] = eta * dec.adv_term[s]
        out[s] = exact_delta_h(z, dz)
    return out


def toy_policy(seed: int = 0, n_tokens: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """A small scene: rollout logits and one advantage per token.

    Logits are ``1.5 * N(0, 1)``; token ``y`` has a reward ``Q(y) ~ U(0, 1)`` and the advantage
    ``A(y) = Q(y) - V`` with ``V = E_{pi_rollout}[Q]``, so ``E_{pi_rollout}[A] = 0`` (Lemma 3).
    """
    g = torch.Generator().manual_seed(seed)
    z = 1.5 * torch.randn(n_tokens, generator=g, dtype=torch.float64)
    q = torch.rand(n_tokens, generator=g, dtype=torch.float64)
    return z, q - (torch.softmax(z, -1) * q).sum()


def stale_logits(
    z_rollout: torch.Tensor,
    advantages: torch.Tensor,
    clip: FixedClip,
    staleness: int,
    lr: float,
    *,
    natural: bool = True,
) -> torch.Tensor:
    """The logits at the start of epoch ``staleness``: ``staleness - 1`` expected steps taken.

    Every epoch reuses the same advantages and ``pi_rollout`` (the data is not refreshed), so the
    ratios drift away from 1 and, from some epoch on, tokens start to clip (Eq. 7).
    """
    if not isinstance(staleness, int) or staleness < 1:
        raise ValueError(f"staleness={staleness!r} is out of range: allowed integers >= 1")
    z = _f64(z_rollout).clone()
    for _ in range(staleness - 1):
        z = z + expected_logit_step(z, z_rollout, advantages, clip, lr, natural=natural).dz
    return z


def random_step_checks(
    n_policies: int = 200,
    n_tokens: int = 32,
    lr: float = 0.05,
    *,
    natural: bool = True,
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Lemma 1's prediction against the measured ``dH`` on random policies and clipped steps.

    Each policy draws logits (scale 0.5..3), a drifted current policy (so ratios spread), random
    advantages centred under ``pi_rollout`` (Lemma 3), and random bounds in [0.6, 0.95] x
    [1.05, 1.5]; the step is :func:`expected_logit_step`.  Returns ``(predicted, measured)``.
    """
    g = torch.Generator().manual_seed(seed)

    def u(lo, hi):
        return lo + (hi - lo) * float(torch.rand((), generator=g, dtype=torch.float64))

    pred, meas = [], []
    for _ in range(n_policies):
        z_old = u(0.5, 3.0) * torch.randn(n_tokens, generator=g, dtype=torch.float64)
        z = z_old + u(0.0, 0.4) * torch.randn(n_tokens, generator=g, dtype=torch.float64)
        adv = torch.randn(n_tokens, generator=g, dtype=torch.float64)
        adv = adv - (torch.softmax(z_old, -1) * adv).sum()
        clip = FixedClip(round(u(0.6, 0.95), 3), round(u(1.05, 1.5), 3))
        step = expected_logit_step(z, z_old, adv, clip, lr, natural=natural)
        pred.append(lemma1_delta_h(z, step.dz))
        meas.append(exact_delta_h(z, step.dz))
    return torch.tensor(pred), torch.tensor(meas)


# ----------------------------------------------------------------------------------------------
# The stale-data simulator
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Bandit:
    """A one-prompt task: arm (token) ``y`` is right with probability ``success[y]``.

    ``logits`` is the initial policy.  Rewards are Bernoulli(``success[y]``), 1 for right.
    """

    success: torch.Tensor
    logits: torch.Tensor

    @classmethod
    def plateau(
        cls,
        n_arms: int = 64,
        n_good: int = 8,
        p_good: float = 0.8,
        p_bad: float = 0.1,
        logit_scale: float = 1.0,
        seed: int = 0,
    ) -> Bandit:
        """``n_good`` of ``n_arms`` answers are right with ``p_good``, the rest with ``p_bad``.

        Any mix of the good arms is optimal, so entropy below ``log(n_good)`` buys no reward:
        it is diversity lost.  Initial logits are ``logit_scale * N(0, 1)``.
        """
        if not 1 <= n_good <= n_arms:
            raise ValueError(f"n_good={n_good!r} is out of range: allowed [1, n_arms={n_arms}]")
        g = torch.Generator().manual_seed(seed)
        success = torch.full((n_arms,), float(p_bad), dtype=torch.float64)
        success[torch.randperm(n_arms, generator=g)[:n_good]] = float(p_good)
        logits = logit_scale * torch.randn(n_arms, generator=g, dtype=torch.float64)
        return cls(success=success, logits=logits)

    def reward(self, z: torch.Tensor) -> float:
        """The expected reward ``E_{y~pi}[success(y)]`` of ``pi = softmax(z)``."""
        return float((torch.softmax(_f64(z), -1) * self.success).sum())


@dataclass(frozen=True)
class SimResult:
    """Per-step record of :func:`simulate`, as float64 tensors.

    ``entropy`` and ``reward`` have ``n_steps + 1`` entries (before the first update, then after
    each); the rest have ``n_steps``.  ``dh_predicted`` is Lemma 1 of the applied step,
    ``dh_measured`` the exact change, ``dh_clip_effect`` Lemma 1 of the applied step minus that of
    the same batch's unclipped step: ``> 0`` when clipping held back net entropy-lowering updates,
    ``< 0`` when it held back entropy-raising ones (the paper's claim for LLMs).
    ``clipped_raising`` / ``clipped_lowering`` are the fractions of the batch that are clipped and
    sit in an entropy-raising / entropy-lowering quadrant of Table 4 (probability against
    ``exp(E_pi[log pi])``, advantage by its sign, as the paper does for Figure 5).
    """

    rule: str
    staleness: int
    entropy: torch.Tensor
    reward: torch.Tensor
    rho: torch.Tensor
    clip_high: torch.Tensor
    clip_low: torch.Tensor
    c_low: torch.Tensor
    c_high: torch.Tensor
    dh_predicted: torch.Tensor
    dh_measured: torch.Tensor
    dh_clip_effect: torch.Tensor
    clipped_raising: torch.Tensor
    clipped_lowering: torch.Tensor


def rule_name(clip: ClipRule) -> str:
    """A label: ``GRPO [0.8, 1.2]``, ``clip-higher [0.8, 1.28]``, ``clip [a, b]`` or ``BAPO``."""
    if isinstance(clip, BAPOConfig):
        return "BAPO"
    bounds = f"[{clip.c_low:g}, {clip.c_high:g}]"
    if (clip.c_low, clip.c_high) == (0.8, 1.2):
        return f"GRPO {bounds}"
    if (clip.c_low, clip.c_high) == (0.8, 1.28):
        return f"clip-higher {bounds}"
    return f"clip {bounds}"


def simulate(
    bandit: Bandit,
    clip: ClipRule,
    staleness: int = 1,
    n_steps: int = 200,
    *,
    group_size: int = 16,
    n_groups: int = 4,
    lr: float = 0.5,
    seed: int = 0,
) -> SimResult:
    """Train a tabular policy on ``bandit`` with stale data, under any clip rule.

    Every ``staleness`` steps a fresh batch is drawn: ``n_groups`` groups of ``group_size`` arms
    from ``pi_rollout`` (the current policy), Bernoulli rewards, GRPO advantages.  Each step is one
    epoch on that batch: :func:`sampled_logit_step` (for BAPO, Algorithm 1 picks the bounds on the
    batch at every epoch) with ``pi_rollout`` fixed at the policy that sampled.  So ``staleness=1``
    is on-policy (``r = 1``, nothing is clipped) and ``staleness=E`` runs ``E`` epochs per batch.
    ``n_steps`` counts updates, so runs of different staleness make the same number of updates.
    """
    if not isinstance(staleness, int) or staleness < 1:
        raise ValueError(f"staleness={staleness!r} is out of range: allowed integers >= 1")
    g = torch.Generator().manual_seed(seed)
    z = bandit.logits.clone()
    n = n_groups * group_size
    rec = {k: torch.zeros(n_steps, dtype=torch.float64) for k in _PER_STEP}
    ent = torch.zeros(n_steps + 1, dtype=torch.float64)
    rew = torch.zeros(n_steps + 1, dtype=torch.float64)
    ent[0], rew[0] = entropy(z), bandit.reward(z)
    for t in range(n_steps):
        if t % staleness == 0:
            z_rollout = z.clone()
            samples = torch.multinomial(torch.softmax(z, -1), n, replacement=True, generator=g)
            draws = torch.rand(n, generator=g, dtype=torch.float64)
            rewards = (draws < bandit.success[samples]).to(torch.float64)
            adv = grpo_advantages(rewards, group_size)
        step = sampled_logit_step(z, z_rollout, samples, adv, clip, lr)
        free = unclipped_logit_step(z, z_rollout, samples, adv, lr)
        s = step.stats
        pred = lemma1_delta_h(z, step.dz)
        lp = torch.log_softmax(z, -1)
        high_prob = (lp > (lp.exp() * lp).sum())[samples]
        raising = (high_prob != (adv > 0)) & (adv != 0)  # Table 4: +1 off the diagonal
        clipped = ~step.keep
        values = dict(
            rho=s.rho,
            clip_high=s.clip_high_frac,
            clip_low=s.clip_low_frac,
            c_low=s.c_low,
            c_high=s.c_high,
            dh_predicted=pred,
            dh_measured=exact_delta_h(z, step.dz),
            dh_clip_effect=pred - lemma1_delta_h(z, free),
            clipped_raising=float((clipped & raising).sum()) / n,
            clipped_lowering=float((clipped & ~raising & (adv != 0)).sum()) / n,
        )
        for k, v in values.items():
            rec[k][t] = v
        z = z + step.dz
        ent[t + 1], rew[t + 1] = entropy(z), bandit.reward(z)
    return SimResult(rule=rule_name(clip), staleness=staleness, entropy=ent, reward=rew, **rec)


_PER_STEP = (
    "rho",
    "clip_high",
    "clip_low",
    "c_low",
    "c_high",
    "dh_predicted",
    "dh_measured",
    "dh_clip_effect",
    "clipped_raising",
    "clipped_lowering",
)


def simulate_grid(
    bandit: Bandit,
    rules: list[ClipRule] | None = None,
    stalenesses: tuple[int, ...] = (1, 4, 16),
    seeds: tuple[int, ...] = (0,),
    **kwargs,
) -> dict[tuple[str, int], list[SimResult]]:
    """:func:`simulate` for every rule, staleness and seed: ``{(rule name, staleness): runs}``.

    ``rules`` defaults to GRPO [0.8, 1.2], clip-higher [0.8, 1.28] and BAPO (paper defaults).
    """
    if rules is None:
        rules = [FixedClip.grpo(), FixedClip.clip_higher(), BAPOConfig.paper()]
    out: dict[tuple[str, int], list[SimResult]] = {}
    for e in stalenesses:
        for rule in rules:
            runs = [simulate(bandit, rule, e, seed=s, **kwargs) for s in seeds]
            out[(rule_name(rule), e)] = runs
    return out


def mean_end(runs: list[SimResult], field: str = "entropy") -> float:
    """The mean over runs of a per-step field's last value."""
    return sum(float(getattr(r, field)[-1]) for r in runs) / max(len(runs), 1)


@dataclass(frozen=True)
class StepErrorSweep:
    """How Lemma 1's error shrinks with the step size (see :func:`step_error_sweep`).

    ``max_error`` / ``mean_error`` are ``|measured - predicted|`` over the random policies of
    :func:`random_step_checks`, one entry per ``lr``; ``slope`` / ``mean_slope`` are the
    least-squares slopes of their logarithms against ``log(lr)``: ``2`` for a second-order error.
    """

    lrs: tuple[float, ...]
    max_error: tuple[float, ...]
    mean_error: tuple[float, ...]
    slope: float
    mean_slope: float


def step_error_sweep(
    lrs: tuple[float, ...] = (0.2, 0.1, 0.05, 0.025, 0.0125),
    n_policies: int = 300,
    n_tokens: int = 32,
    *,
    natural: bool = True,
    seed: int = 0,
) -> StepErrorSweep:
    """:func:`random_step_checks` at every step size in ``lrs`` (same policies, same seed).

    Lemma 1 (and Eq. 6) is first order in the step, so ``measured - predicted`` is second order:
    halving ``lr`` should divide the error by about 4, a log-log slope near 2.
    """
    lrs = tuple(float(lr) for lr in lrs)
    if len(set(lrs)) < 2 or min(lrs) <= 0:
        raise ValueError(f"lrs={lrs!r} is out of range: allowed two or more distinct values > 0")
    max_err, mean_err = [], []
    for lr in lrs:
        pred, meas = random_step_checks(n_policies, n_tokens, lr, natural=natural, seed=seed)
        err = (meas - pred).abs()
        max_err.append(float(err.max()))
        mean_err.append(float(err.mean()))
    return StepErrorSweep(
        lrs,
        tuple(max_err),
        tuple(mean_err),
        _loglog_slope(lrs, max_err),
        _loglog_slope(lrs, mean_err),
    )


def _loglog_slope(xs, ys) -> float:
    """The least-squares slope of ``log(ys)`` against ``log(xs)``."""
    lx = torch.log(torch.tensor(xs, dtype=torch.float64))
    ly = torch.log(torch.tensor(ys, dtype=torch.float64))
    dx = lx - lx.mean()
    return float((dx * (ly - ly.mean())).sum() / (dx * dx).sum())


__all__ += ["StepErrorSweep", "step_error_sweep"]
