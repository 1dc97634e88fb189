"""The BAPO loss family, in the paper's symbols.

Xi et al., "BAPO: Stabilizing Off-Policy RL for LLMs via Balanced Policy Optimization with
Adaptive Clipping" (arXiv 2510.18927).  This one file holds:

* **Eq. 4** - the PPO/GRPO clipped surrogate ``min(r*A, clip(r, c_low, c_high)*A)`` with
  ``r = pi_theta / pi_rollout`` (:func:`policy_loss`);
* **Eq. 7** - the clip indicator ``X(y)``: which tokens still carry gradient (:func:`clip_regions`);
* **Eq. 8** - the positive share of the loss ``rho`` (:func:`contribution_sums`, :func:`share`);
* **Algorithm 1** - BAPO's adaptive search for ``(c_low, c_high)`` (:func:`search_bounds`);
* GRPO's group-normalised advantages (:func:`grpo_advantages`).

Two ways to measure a token's contribution to Eq. 8 are supported, because the paper's text and
the authors' public code differ:

``contribution="gradient"``
    the magnitude of the token's gradient coefficient: ``w * r * |A|`` while the token is
    unclipped, ``0`` once it is clipped.  Raising ``c_high`` un-clips positive tokens (``rho`` goes
    up); raising ``c_low`` clips more negative tokens (``rho`` goes up).  So ``rho`` never falls
    along the search path and Algorithm 1 is a clean monotone search.
``contribution="value"``
    the magnitude of the token's loss value, as Eq. 8 is written and as the public verl code
    computes it: ``w * A * min(r, c_high)`` for ``A > 0`` and ``w * |A| * max(r, c_low)`` for
    ``A < 0``.  Here raising ``c_low`` *lowers* ``rho``: a clipped negative token's value is
    ``|A| * c_low``, which grows with ``c_low`` even though its gradient is gone.  The public code
    raises ``c_low`` first, so under this measure its first phase can only move ``rho`` away from
    the target.  The toolkit keeps both so that this subtlety can be seen, not hidden.

``w`` is ``1`` by default and ``pi_rollout(y_t)`` when ``rollout_weight=True``.  Why ``1``: Eq. 8
(like Eq. 5, and the entropy derivation it comes from) is printed as a sum over the *vocabulary*
weighted by the policy, i.e. an expectation ``E_{y ~ pi_rollout}[...]``.  A batch of *sampled*
tokens is already drawn from ``pi_rollout``, so the Monte-Carlo estimate of that expectation is
the plain sum over the sampled tokens - what the authors' public code computes.  Multiplying each
sampled token by ``pi_rollout(y_t)`` once more estimates ``sum_y pi_rollout(y)^2 ...`` instead, a
different quantity that favours confident tokens ("Eq. 8 read literally over sampled tokens");
``tests/test_loss.py`` shows on a vocabulary where the sum is exact that the plain estimate
converges to Eq. 8 and the weighted one does not.

What Eq. 8 prints (page 6)::

    | sum_{A_t > 0} pi_rollout(y_t) * min(r_t*A_t, clip(r_t, 0, c_high)*A_t) |
    ------------------------------------------------------------------------------  >=  rho0
    | sum_{A_t}     pi_rollout(y_t) * min(r_t*A_t, clip(r_t, c_low, c_high)*A_t) |

loss *values*, with absolute values around *signed* sums, the numerator over positive tokens
only.  Read to the letter, positive and negative terms would cancel inside the denominator's
``|.|`` and the quotient could exceed 1.  Both measures here (and the authors' code, whose target
is ``pos / |neg|``) instead compare the *magnitudes* ``pos`` and ``neg`` of the positive and the
negative sums: ``rho = pos / (pos + neg)``.  ``"value"`` keeps Eq. 8's loss values; ``"gradient"``
is this toolkit's reading of what those values stand for (the share of the gradient).

**Boundary convention.** A ratio exactly equal to a bound is *not* clipped: ``A > 0`` is
clipped where ``r > c_high``, ``A < 0`` where ``r < c_low`` (or ``r > dual_clip``).  That is
what ``torch.clamp`` + ``min`` give in verl, TRL and the authors' code (``clamp`` passes the
gradient at its bounds, so a tie keeps the full gradient), and :func:`clip_regions`, the loss,
the clip counters and the search all use it.  One exception on the framework side: at exactly
``r = dual_clip`` verl's ``torch.min`` of two equal values splits the gradient in half.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

import torch

__all__ = [
    "AGG_MODES",
    "BAPOConfig",
    "Bounds",
    "ClipRule",
    "FixedClip",
    "LossStats",
    "SearchPath",
    "clip_regions",
    "contribution_sums",
    "grpo_advantages",
    "importance_ratio",
    "policy_loss",
    "search_bounds",
    "search_path",
    "share",
]

AGG_MODES = ("token-mean", "seq-mean-token-sum", "seq-mean-token-mean")
LOG_RATIO_LIMIT = 20.0  # |log r| is clamped here before exp, as PPO implementations do


def _check_range(name: str, value: float, lo: float, hi: float, *, lo_open=False, hi_open=False):
    """Raise ``ValueError`` naming ``name`` and its allowed range unless ``value`` lies in it."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if ok:
        ok = (value > lo if lo_open else value >= lo) and (value < hi if hi_open else value <= hi)
    if not ok:
        left, right = ("(" if lo_open else "["), (")" if hi_open else "]")
        raise ValueError(f"{name}={value!r} is out of range: allowed {left}{lo}, {hi}{right}")


# ----------------------------------------------------------------------------------------------
# Clip rules
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class FixedClip:
    """Fixed bounds on the importance ratio ``r``: Eq. 4 with ``c_low=1-eps``, ``c_high=1+eps``.

    ``dual_clip`` (optional, > 1, hence > ``c_low``) also clips negative-advantage tokens whose
    ratio exceeds it (dual-clip PPO), which bounds the loss of a negative token at
    ``|A| * dual_clip``.  It acts on negative tokens only, so it may lie below ``c_high``.
    """

    c_low: float = 0.8
    c_high: float = 1.2
    dual_clip: float | None = None

    def __post_init__(self):
        _check_range("c_low", self.c_low, 0.0, 1.0, lo_open=True)
        _check_range("c_high", self.c_high, 1.0, math.inf, hi_open=True)
        if self.dual_clip is not None:
            _check_range("dual_clip", self.dual_clip, 1.0, math.inf, lo_open=True, hi_open=True)

    @classmethod
    def grpo(cls) -> FixedClip:
        """PPO/GRPO's symmetric bounds [0.8, 1.2]."""
        return cls(0.8, 1.2)

    @classmethod
    def clip_higher(cls) -> FixedClip:
        """DAPO's clip-higher bounds [0.8, 1.28]."""
        return cls(0.8, 1.28)


@dataclass(frozen=True)
class BAPOConfig:
    """Hyper-parameters of BAPO's adaptive clipping (Algorithm 1, Section 5.1).

    The bounds move on the grids ``c_low = a_minus + k*delta2`` and ``c_high = a_plus + k*delta1``
    (``k`` an integer: no float drift builds up), each ending at its maximum: where the step does
    not divide the range, the last step is ``min(c + delta, b)`` as in the authors' code (lower
    0.8 to 0.95 step 0.1 visits 0.8, 0.9, 0.95).

    * ``order="paper"``: Algorithm 1 - while ``rho < rho0`` and ``c_low`` is below ``b_minus``
      (line 10's ``c_low + delta2 <= b_minus`` on a range the step divides), raise ``c_high``
      by ``delta1`` while it is below ``b_plus``, else ``c_low`` by ``delta2``.
    * ``order="official"``: the authors' public verl code - raise ``c_low`` to ``b_minus`` first,
      then ``c_high`` to ``b_plus``, stopping as soon as the target is met.
    * ``contribution``: ``"gradient"`` or ``"value"`` (see the module docstring).
    * ``target="share"``: ``rho0`` is the positive share ``pos / (pos + neg)`` of Eq. 8, in (0, 1).
      ``target="ratio"``: ``rho0`` bounds ``pos / neg`` as in the public code, in (0, inf);
      a ratio ``q`` equals a share ``q / (1 + q)``.
    * ``rollout_weight``: weight each sampled token once more by ``pi_rollout(y_t)`` (Eq. 8 read
      literally over sampled tokens).  Off by default: the plain sum over sampled tokens is the
      estimate of Eq. 8's expectation, as in the public code (see the module docstring).
    * ``dual_clip``: also clip negative tokens at ``r > dual_clip`` (public code: 3.0); it
      needs only exceed 1 (and so ``c_low``), not ``b_plus``: it acts on negative tokens only.
    """

    rho0: float = 0.4
    a_minus: float = 0.6
    b_minus: float = 0.9
    a_plus: float = 1.2
    b_plus: float = 3.0
    delta1: float = 0.05
    delta2: float = 0.02
    order: Literal["paper", "official"] = "paper"
    contribution: Literal["gradient", "value"] = "gradient"
    dual_clip: float | None = None
    target: Literal["share", "ratio"] = "share"
    rollout_weight: bool = False

    def __post_init__(self):
        if self.target not in ("share", "ratio"):
            raise ValueError(f"target={self.target!r} is not allowed: use 'share' or 'ratio'")
        if self.target == "share":
            _check_range("rho0", self.rho0, 0.0, 1.0, lo_open=True, hi_open=True)
        else:
            _check_range("rho0", self.rho0, 0.0, math.inf, lo_open=True, hi_open=True)
        _check_range("a_minus", self.a_minus, 0.0, 1.0, lo_open=True)
        _check_range("b_minus", self.b_minus, self.a_minus, 1.0)
        _check_range("a_plus", self.a_plus, 1.0, math.inf, hi_open=True)
        _check_range("b_plus", self.b_plus, self.a_plus, math.inf, hi_open=True)
        _check_range("delta1", self.delta1, 0.0, math.inf, lo_open=True, hi_open=True)
        _check_range("delta2", self.delta2, 0.0, math.inf, lo_open=True, hi_open=True)
        if self.order not in ("paper", "official"):
            raise ValueError(f"order={self.order!r} is not allowed: use 'paper' or 'official'")
        if self.contribution not in ("gradient", "value"):
            raise ValueError(
                f"contribution={self.contribution!r} is not allowed: use 'gradient' or 'value'"
            )
        if not isinstance(self.rollout_weight, bool):
            raise ValueError(f"rollout_weight={self.rollout_weight!r} must be True or False")
        if self.dual_clip is not None:
            _check_range("dual_clip", self.dual_clip, 1.0, math.inf, lo_open=True, hi_open=True)

    @classmethod
    def paper(cls, **overrides) -> BAPOConfig:
        """Section 5.1: rho0=0.4, [a-, b-]=[0.6, 0.9], [a+, b+]=[1.2, 3.0], deltas 0.05, 0.02."""
        return cls(**overrides)

    @classmethod
    def official(cls, **overrides) -> BAPOConfig:
        """The authors' public run script: lower 0.8->0.95 step 0.05, upper 1.2->2.0 step 0.1,
        ``pos/neg >= 0.5`` (a positive share >= 1/3), c_low first, loss-value measure,
        no ``pi_rollout`` weight, dual clip 3.0."""
        values = dict(
            rho0=0.5,
            target="ratio",
            a_minus=0.8,
            b_minus=0.95,
            delta2=0.05,
            a_plus=1.2,
            b_plus=2.0,
            delta1=0.1,
            order="official",
            contribution="value",
            rollout_weight=False,
            dual_clip=3.0,
        )
        values.update(overrides)
        return cls(**values)

    # --- the bound grids ----------------------------------------------------------------------
    @property
    def n_low(self) -> int:
        """Number of ``delta2`` steps from ``a_minus`` to ``b_minus`` (the last may be shorter)."""
        return _n_steps(self.a_minus, self.b_minus, self.delta2)

    @property
    def n_high(self) -> int:
        """Number of ``delta1`` steps from ``a_plus`` to ``b_plus`` (the last may be shorter)."""
        return _n_steps(self.a_plus, self.b_plus, self.delta1)

    def c_low_at(self, k: int) -> float:
        """``a_minus + k*delta2`` rounded to 10 decimals (0.6 + 15*0.02 reads 0.9), and
        ``b_minus`` at the last grid point."""
        return _grid_at(self.a_minus, self.b_minus, self.delta2, k, self.n_low)

    def c_high_at(self, k: int) -> float:
        """``a_plus + k*delta1`` rounded to 10 decimals, and ``b_plus`` at the last grid point."""
        return _grid_at(self.a_plus, self.b_plus, self.delta1, k, self.n_high)

    def path(self) -> list[tuple[int, int]]:
        """Grid indices ``(k_low, k_high)`` that Algorithm 1 visits if the target is never met."""
        return list(zip(*_path_indices(self.order, self.n_low, self.n_high)))


def _n_steps(a: float, b: float, delta: float) -> int:
    q = (b - a) / delta
    near = round(q)
    return int(near) if abs(q - near) <= 1e-9 * max(1.0, q) else int(math.ceil(q))


@lru_cache(maxsize=64)
def _grid(a: float, b: float, delta: float) -> tuple[float, ...]:
    """Every point of a bound grid, ``a`` to ``b`` (cached: the search builds it per call)."""
    n = _n_steps(a, b, delta)
    return tuple(_grid_at(a, b, delta, k, n) for k in range(n + 1))


def _grid_at(a: float, b: float, delta: float, k: int, n: int) -> float:
    """Grid point ``k`` of ``a, a + delta, ..., b``: exact ``a + k*delta`` below the top, ``b`` at it
    (the authors' ``min(c + delta, b)``)."""
    if not 0 <= k <= n:
        raise ValueError(f"grid index k={k} is out of range: allowed [0, {n}]")
    return float(b) if k == n else min(round(a + k * delta, 10), float(b))


@lru_cache(maxsize=64)
def _path_indices(order: str, n_low: int, n_high: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    if order == "paper":
        # Algorithm 1 lines 10-16: the loop runs only while c_low + delta2 <= b-, so a grid with
        # no room for c_low allows no step at all - not even for c_high.
        if n_low == 0:
            return (0,), (0,)
        k_high = list(range(n_high + 1)) + [n_high] * n_low
        k_low = [0] * (n_high + 1) + list(range(1, n_low + 1))
    else:  # official: c_low first, then c_high
        k_low = list(range(n_low + 1)) + [n_low] * n_high
        k_high = [0] * (n_low + 1) + list(range(1, n_high + 1))
    return tuple(k_low), tuple(k_high)


ClipRule = FixedClip | BAPOConfig


# ----------------------------------------------------------------------------------------------
# Eq. 7 and Eq. 8 at given bounds
# ----------------------------------------------------------------------------------------------
def importance_ratio(log_probs: torch.Tensor, old_log_probs: torch.Tensor) -> torch.Tensor:
    """``r = pi_theta / pi_rollout`` in at least float32, with ``|log r|`` clamped at 20."""
    dtype = torch.promote_types(log_probs.dtype, torch.float32)
    log_ratio = (log_probs.to(dtype) - old_log_probs.to(dtype)).clamp(
        -LOG_RATIO_LIMIT, LOG_RATIO_LIMIT
    )
    return torch.exp(log_ratio)


def clip_regions(
    ratio: torch.Tensor,
    advantages: torch.Tensor,
    c_low: float,
    c_high: float,
    dual_clip: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The clipped tokens of Eq. 7, as three boolean tensors ``(high, low, dual)``.

    ``high``: ``A > 0`` and ``r > c_high``; ``low``: ``A < 0`` and ``r < c_low``; ``dual``:
    ``A < 0`` and ``r > dual_clip``.  ``X(y) = 1`` exactly where none of them holds: these are
    the tokens whose gradient :func:`policy_loss` keeps.  A ratio equal to a bound is unclipped,
    as ``torch.clamp`` treats it in verl and TRL (see the module docstring).
    """
    pos, neg = advantages > 0, advantages < 0
    high = pos & (ratio > c_high)
    low = neg & (ratio < c_low)
    if dual_clip is None:
        dual = torch.zeros_like(high)
    else:
        dual = neg & (ratio > dual_clip)
    return high, low, dual


def contribution_sums(
    ratio: torch.Tensor,
    advantages: torch.Tensor,
    weight: torch.Tensor,
    c_low: float,
    c_high: float,
    *,
    contribution: str = "gradient",
    dual_clip: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Positive and negative sums of Eq. 8 at fixed bounds (float64 scalars).

    ``weight`` is ``pi_rollout * mask`` (or ``mask``); see the module docstring for the measures.
    """
    if contribution not in ("gradient", "value"):
        raise ValueError(f"contribution={contribution!r} is not allowed: use 'gradient' or 'value'")
    high, low, dual = clip_regions(ratio, advantages, c_low, c_high, dual_clip)
    abs_w = advantages.abs().to(ratio.dtype) * weight
    pos_g, neg_g, pos_v, neg_v = _eq8_sums(ratio, advantages, abs_w, high, low, dual, c_low, c_high)
    return (pos_g, neg_g) if contribution == "gradient" else (pos_v, neg_v)


def _abs_weight(adv, mask, old_log_probs, rollout_weight: bool, dtype) -> torch.Tensor:
    """``|A| * w`` per token: ``w = pi_rollout(y_t)`` (Eq. 8) or 1, and 0 off the mask."""
    abs_w = adv.abs().to(dtype).mul_(mask)
    if rollout_weight:
        abs_w.mul_(torch.exp(old_log_probs.detach().to(dtype)))
    return abs_w


def _eq8_sums(ratio, adv, abs_w, high, low, dual, c_low, c_high):
    """Eq. 8's sums under both measures: (pos_gradient, neg_gradient, pos_value, neg_value).

    ``abs_w`` is ``|A| * w`` per token.  Products per token in the ratio's dtype, sums in
    float64.  ``dual`` only affects the gradient measure (the loss-value form of the public
    code ignores the dual clip).
    """
    c = abs_w * ratio  # w*r*|A|

    def total(where):
        return torch.where(where, c, 0.0).sum(dtype=torch.float64)

    def total_w(where):
        return torch.where(where, abs_w, 0.0).sum(dtype=torch.float64)

    pos, neg = adv > 0, adv < 0
    pos_g = total(pos & ~high)
    neg_g = total(neg & ~(low | dual))
    pos_v = pos_g + c_high * total_w(high)  # a clipped positive token counts A*c_high
    neg_v = neg_g + total(dual) + c_low * total_w(low)  # a clipped negative one |A|*c_low
    return pos_g, neg_g, pos_v, neg_v


def share(pos: float | torch.Tensor, neg: float | torch.Tensor) -> float | torch.Tensor:
    """The positive share ``rho = pos / (pos + neg)`` of Eq. 8 (nan when both are 0)."""
    total = pos + neg
    if isinstance(total, torch.Tensor):
        return torch.where(total > 0, pos / total.clamp_min(1e-300), torch.nan)
    return pos / total if total > 0 else math.nan


# ----------------------------------------------------------------------------------------------
# Algorithm 1: the bound search, every point of the path in one pass
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Bounds:
    """What Algorithm 1 chose: the bounds, the positive share there, and the steps taken."""

    c_low: float
    c_high: float
    rho: float
    n_steps: int
    skipped: bool = False  # no token could be clipped at any grid point: stayed at the start


@dataclass(frozen=True)
class SearchPath:
    """Every point Algorithm 1 may visit, with ``rho`` at each, and the index it stops at."""

    c_low: torch.Tensor  # (P,) float64
    c_high: torch.Tensor  # (P,)
    pos: torch.Tensor  # (P,) positive sum of Eq. 8
    neg: torch.Tensor  # (P,) negative sum
    rho: torch.Tensor  # (P,) positive share
    met: torch.Tensor  # (P,) bool: the target holds here
    stop: int  # index of the chosen point (n_steps)
    skipped: bool = False  # nothing clippable anywhere on the grid: the search did not run

    @property
    def bounds(self) -> Bounds:
        i = self.stop
        return Bounds(
            float(self.c_low[i]), float(self.c_high[i]), float(self.rho[i]), i, self.skipped
        )


def _masked_inputs(log_probs, old_log_probs, advantages, mask):
    if log_probs.shape != old_log_probs.shape:
        raise ValueError(
            f"old_log_probs has shape {tuple(old_log_probs.shape)} but log_probs has"
            f" {tuple(log_probs.shape)}: they must match"
        )
    if advantages.dim() == 1 and log_probs.dim() == 2 and advantages.shape[0] == log_probs.shape[0]:
        advantages = advantages[:, None].expand_as(log_probs)  # one advantage per sequence
    if advantages.shape != log_probs.shape:
        raise ValueError(
            f"advantages has shape {tuple(advantages.shape)}; expected {tuple(log_probs.shape)}"
            " (per token) or (batch,) (per sequence)"
        )
    if mask is None:
        mask = torch.ones_like(log_probs, dtype=torch.bool)
    elif mask.shape != log_probs.shape:
        raise ValueError(f"mask has shape {tuple(mask.shape)}; expected {tuple(log_probs.shape)}")
    return advantages, mask.to(torch.bool)


@torch.no_grad()
def search_path(
    log_probs: torch.Tensor,
    old_log_probs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor | None,
    cfg: BAPOConfig,
    *,
    sync_distributed: bool = True,
    group=None,
) -> SearchPath:
    """``rho`` at every point of Algorithm 1's path, computed in one vectorised pass.

    Each token's ratio is bucketed once on the ``c_low`` and ``c_high`` grids; the sums of Eq. 8
    at every grid point are then cumulative sums of those buckets.  Under ``torch.distributed``
    the buckets are all-reduced once, so every rank sees the global sums and stops at the same
    point.  The only host sync is reading the stop index.  ``group`` is the process group to
    all-reduce over (the data-parallel group; ``None``: the default group), and
    ``sync_distributed=False`` keeps the search local.
    """
    advantages, mask = _masked_inputs(log_probs, old_log_probs, advantages, mask)
    ratio = importance_ratio(log_probs, old_log_probs)
    abs_w = _abs_weight(advantages, mask, old_log_probs, cfg.rollout_weight, ratio.dtype)
    return _search(ratio, advantages, abs_w, cfg, sync_distributed, group)


@lru_cache(maxsize=64)
def _search_tables(a_minus, b_minus, delta2, a_plus, b_plus, delta1, order, device, dtype):
    """The search's constant tensors for one grid, built once per grid, device and dtype:
    the exact grid values ``a + k*delta`` in float64 (reported, and used by the value
    measure), the merged bucket grid ``[-c_low reversed, c_high]`` in the ratio's dtype, and
    the grid indices of every point of the path (Algorithm 1's order)."""
    h64 = torch.tensor(_grid(a_plus, b_plus, delta1), dtype=torch.float64, device=device)
    l64 = torch.tensor(_grid(a_minus, b_minus, delta2), dtype=torch.float64, device=device)
    grid = torch.cat([-l64.to(dtype).flip(0), h64.to(dtype)])
    k_low, k_high = _path_indices(order, len(l64) - 1, len(h64) - 1)
    as_index = lambda k: torch.tensor(k, device=device)  # noqa: E731
    return h64, l64, grid, as_index(k_low), as_index(k_high)


def _distributed(sync: bool) -> bool:
    """True when collectives should run: asked for, and a process group is initialised."""
    return sync and torch.distributed.is_available() and torch.distributed.is_initialized()


def _search(
    ratio, advantages, abs_w, cfg: BAPOConfig, sync: bool, group=None, *, query=None, c64=None
) -> SearchPath:
    """Algorithm 1's path from the ratios and ``|A| * w`` (Eq. 8's per-token weight).

    ``query`` (``r * sign(A)``) and ``c64`` (``w * r * |A|`` in float64) may be passed in by a
    caller that has them (policy_loss shares them with its statistics)."""
    ratio = ratio.reshape(-1)
    adv = advantages.reshape(-1)
    abs_w = abs_w.reshape(-1)

    n_low, n_high = cfg.n_low, cfg.n_high
    h64, l64, grid, k_low, k_high = _search_tables(
        cfg.a_minus, cfg.b_minus, cfg.delta2, cfg.a_plus, cfg.b_plus, cfg.delta1, cfg.order,
        ratio.device, ratio.dtype,
    )  # fmt: skip
    # One bucketize serves both signs.  A positive token's query is r on the c_high grid, a
    # negative token's is -r on the mirrored c_low grid (-c_low < 0 < c_high, so the two halves
    # of the merged grid never mix), and bucketize(right=False) counts grid points < query,
    # which is the boundary convention of clip_regions (a ratio equal to a bound is unclipped):
    #   A > 0: j_i = #{c_high[j] < r}; the token is unclipped at c_high[j] iff r <= c_high[j]
    #          iff j >= j_i, so sum_pos[j] is a prefix sum over j_i.
    #   A < 0: i_i = #{c_low[k] > r}; the token is unclipped at c_low[k] iff r >= c_low[k]
    #          iff i_i <= n_low - k, so sum_neg[k] is a prefix sum up to n_low - k.
    # Comparisons run in the ratio's dtype, exactly as `ratio > c_high` does in the loss.
    is_pos = adv > 0
    if query is None:  # r for A > 0, -r for A < 0 (A = 0 weighs 0)
        query = ratio * adv.sign().to(ratio.dtype)
    bucket = torch.bucketize(query.reshape(-1), grid, right=False, out_int32=True)
    bucket.add_(is_pos)  # positives land in buckets n_low + 2 and up
    if c64 is None:
        c64 = (abs_w * ratio).to(torch.float64)  # w*r*|A|: an unclipped token's gradient
    c64 = c64.reshape(-1)
    # A = 0 tokens weigh nothing.  Under the gradient measure a dual-clipped negative token is
    # clipped at every c_low, so it weighs nothing either.
    if cfg.dual_clip is not None and cfg.contribution == "gradient":
        c64 = c64.masked_fill((adv < 0) & (ratio > cfg.dual_clip), 0.0)
    parts = [c64]
    if cfg.contribution == "value":
        parts.append(abs_w.to(torch.float64))  # w*|A|: times the bound, a clipped token's value
    n_bins = n_low + n_high + 4
    hists = torch.stack([torch.bincount(bucket, weights=p, minlength=n_bins) for p in parts])
    if _distributed(sync):
        # one collective: every rank then picks the same bounds
        torch.distributed.all_reduce(hists, group=group)

    neg_r, pos_r = hists[0, : n_low + 2], hists[0, n_low + 2 :]
    pos_sum = pos_r.cumsum(0)[: n_high + 1]  # unclipped positive tokens at each c_high
    neg_sum = neg_r.cumsum(0)[: n_low + 1].flip(0)  # unclipped negative tokens at each c_low
    if cfg.contribution == "value":
        neg_1, pos_1 = hists[1, : n_low + 2], hists[1, n_low + 2 :]
        # clipped positive tokens count A*c_high, clipped negative ones |A|*c_low
        pos_sum = pos_sum + h64 * (pos_1.sum() - pos_1.cumsum(0)[: n_high + 1])
        neg_sum = neg_sum + l64 * (neg_1.sum() - neg_1.cumsum(0)[: n_low + 1].flip(0))
    any_signal = hists.sum() > 0
    # Bucket 0 holds the negative tokens unclipped at every c_low (r >= b_minus), bucket
    # n_low + 2 the positive ones unclipped at every c_high (r <= a_plus).  With no weight
    # anywhere else no token can be clipped at any grid point: every point has the same rho,
    # and the search stays at the start and says so.
    clippable = hists[:, 1 : n_low + 2].sum() + hists[:, n_low + 3 :].sum()
    skipped = ~(clippable > 0)

    pos, neg = pos_sum[k_high], neg_sum[k_low]
    if cfg.target == "share":
        met = (pos >= cfg.rho0 * (pos + neg)) & (pos + neg > 0)
    else:
        met = (pos >= cfg.rho0 * neg) & (pos > 0)
    # A batch with no weighted advantage at all (empty mask, or every A = 0) carries no signal:
    # stay at the start.  Otherwise stop at the first point that meets the target, or the last.
    first = torch.argmax(met.to(torch.int8))
    stop = torch.where(met.any(), first, len(k_low) - 1)
    stop = torch.where(any_signal & ~skipped, stop, torch.zeros_like(stop))
    stop, skipped = torch.stack([stop, skipped.to(stop.dtype)]).tolist()  # the one host sync
    return SearchPath(
        c_low=l64[k_low],
        c_high=h64[k_high],
        pos=pos,
        neg=neg,
        rho=share(pos, neg),
        met=met,
        stop=stop,
        skipped=bool(skipped),
    )


def search_bounds(
    log_probs: torch.Tensor,
    old_log_probs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor | None,
    cfg: BAPOConfig,
    *,
    sync_distributed: bool = True,
    group=None,
) -> Bounds:
    """Algorithm 1 (lines 8-17): the clipping bounds BAPO uses for one update step.

    Start at ``(a_minus, a_plus)`` and move along the grid (order per ``cfg.order``) until the
    positive share of Eq. 8 reaches ``rho0`` or the grid runs out.  Returns the bounds as the
    grid values ``a + k*delta``, ``rho`` there (nan when the batch carries no advantage), and the
    number of steps taken.
    """
    path = search_path(
        log_probs, old_log_probs, advantages, mask, cfg, sync_distributed=sync_distributed,
        group=group,
    )  # fmt: skip
    return path.bounds


# ----------------------------------------------------------------------------------------------
# Eq. 4: the clipped surrogate
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LossStats:
    """What one call of :func:`policy_loss` saw (floats; slash names via :meth:`as_metrics`)."""

    c_low: float
    c_high: float
    rho: float  # positive share under the rule's measure (Eq. 8)
    rho_gradient: float  # ... under the gradient measure
    rho_value: float  # ... under the loss-value measure
    n_steps: int  # BAPO search steps (0 for a fixed clip)
    search_skipped: float  # 1.0 when no token could be clipped anywhere on BAPO's grid, else 0.0
    clip_high_frac: float  # A>0 and r > c_high, over all tokens
    clip_low_frac: float  # A<0 and r < c_low
    clip_dual_frac: float  # A<0 and r > dual_clip
    n_tokens: int
    n_pos_high_prob: int  # A>0, pi_theta above the batch's exp(mean log pi)
    n_pos_low_prob: int
    n_neg_high_prob: int
    n_neg_low_prob: int
    approx_kl: float  # mean of (r - 1) - log r, the k3 estimator of KL(pi_rollout || pi_theta)
    ratio_mean: float

    @property
    def clip_frac(self) -> float:
        return self.clip_high_frac + self.clip_low_frac + self.clip_dual_frac

    def as_metrics(self) -> dict[str, float]:
        return {
            "bapo/c_low": self.c_low,
            "bapo/c_high": self.c_high,
            "bapo/rho": self.rho,
            "bapo/rho_gradient": self.rho_gradient,
            "bapo/rho_value": self.rho_value,
            "bapo/search_steps": self.n_steps,
            "bapo/search_skipped": self.search_skipped,
            "clip/high_frac": self.clip_high_frac,
            "clip/low_frac": self.clip_low_frac,
            "clip/dual_frac": self.clip_dual_frac,
            "clip/frac": self.clip_frac,
            "tokens/count": self.n_tokens,
            "tokens/pos_high_prob": self.n_pos_high_prob,
            "tokens/pos_low_prob": self.n_pos_low_prob,
            "tokens/neg_high_prob": self.n_neg_high_prob,
            "tokens/neg_low_prob": self.n_neg_low_prob,
            "policy/approx_kl": self.approx_kl,
            "policy/ratio_mean": self.ratio_mean,
        }


def _aggregate(per_token: torch.Tensor, mask: torch.Tensor, agg: str, count: float | None):
    m = mask.to(per_token.dtype)
    if agg == "token-mean":
        denom = m.sum().clamp_min(1.0) if count is None else max(float(count), 1.0)
        return (per_token * m).sum() / denom
    if per_token.dim() != 2:
        raise ValueError(f"agg={agg!r} needs (batch, time) tensors, got {per_token.dim()}-D")
    seq = (per_token * m).sum(-1)
    if agg == "seq-mean-token-mean":
        seq = seq / m.sum(-1).clamp_min(1.0)
    denom = per_token.shape[0] if count is None else count
    return seq.sum() / max(float(denom), 1.0)


def policy_loss(
    log_probs: torch.Tensor,
    old_log_probs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor | None = None,
    clip: ClipRule | None = None,
    agg: str = "token-mean",
    *,
    count: float | None = None,
    rollout_weight: bool | None = None,
    token_weights: torch.Tensor | None = None,
    sync_distributed: bool = True,
    group=None,
) -> tuple[torch.Tensor, LossStats]:
    """The clipped policy-gradient loss (negated Eq. 4; Algorithm 1 line 19 for BAPO).

    Per token the objective is ``min(r*A, clip(r, c_low, c_high)*A)`` (and, with a dual clip,
    at most ``|A| * dual_clip`` in loss for ``A < 0``).  It is written as ``r_eff * A`` where
    ``r_eff = r`` for unclipped tokens (``X(y)=1``, Eq. 7) and the constant bound for clipped ones,
    so the value equals PPO's ``min`` and the gradient is exactly zero where Eq. 7 says so.

    ``clip`` is a :class:`FixedClip` or a :class:`BAPOConfig` (then the bounds come from
    :func:`search_bounds` on this batch).  ``agg`` is one of ``token-mean``,
    ``seq-mean-token-sum``, ``seq-mean-token-mean``.  ``count`` overrides the divisor (tokens or
    sequences) when one mini-batch is split into micro-batches for gradient accumulation.
    ``rollout_weight`` sets the Eq. 8 weight of the reported ``rho`` (and of a BAPO search);
    ``None`` takes the BAPO config's, or ``False`` (the plain sampled sum) for a fixed clip.
    ``token_weights`` (``>= 0``, broadcastable to ``log_probs``) multiply each token's loss
    *after* the search, which runs on the plain advantages: the authors' order for verl's
    rollout importance-sampling weights.  The reported statistics ignore them too.

    Under ``torch.distributed`` (and ``sync_distributed``) the search and the statistics are
    global over ``group`` (the data-parallel group; ``None``: the default group): the search
    all-reduces its histograms, the statistics one vector of sums, so ``rho``, the clip
    fractions and the token counts are those of the whole batch on every rank.  Every rank of
    the group must then call this the same number of times.  (The high/low-probability split
    of Definition 1 compares with the rank's own mean log-prob.)
    """
    clip = FixedClip() if clip is None else clip
    if agg not in AGG_MODES:
        raise ValueError(f"agg={agg!r} is not allowed: use one of {', '.join(AGG_MODES)}")
    advantages, mask = _masked_inputs(log_probs, old_log_probs, advantages, mask)

    if not isinstance(clip, (BAPOConfig, FixedClip)):
        raise TypeError(f"clip must be a FixedClip or a BAPOConfig, got {type(clip).__name__}")
    dtype = torch.promote_types(log_probs.dtype, torch.float32)
    log_ratio = (log_probs.to(dtype) - old_log_probs.to(dtype)).clamp(
        -LOG_RATIO_LIMIT, LOG_RATIO_LIMIT
    )
    ratio = torch.exp(log_ratio)  # importance_ratio, keeping the log for the KL statistic
    # Eq. 8's weight: the caller says, else the BAPO config, else the plain sampled sum
    if rollout_weight is None:
        rollout_weight = clip.rollout_weight if isinstance(clip, BAPOConfig) else False
    if isinstance(clip, BAPOConfig) and rollout_weight != clip.rollout_weight:
        clip = dataclasses.replace(clip, rollout_weight=rollout_weight)
    sync = _distributed(sync_distributed)
    with torch.no_grad():
        r = ratio.detach()
        adv = advantages.to(dtype)
        abs_w = _abs_weight(adv, mask, old_log_probs, rollout_weight, dtype)
        query = r * adv.sign()  # r for A > 0, -r for A < 0, 0 for A = 0
        c64 = (abs_w * r).to(torch.float64)  # w*r*|A|: Eq. 8's gradient measure per token
    if isinstance(clip, BAPOConfig):
        with torch.no_grad():
            b = _search(r, adv, abs_w, clip, sync, group, query=query, c64=c64).bounds
        c_low, c_high, n_steps, skipped = b.c_low, b.c_high, b.n_steps, b.skipped
        measure = clip.contribution
    else:
        c_low, c_high, n_steps, skipped = clip.c_low, clip.c_high, 0, False
        measure = "gradient"
    dual = clip.dual_clip

    with torch.no_grad():
        # Eq. 4 per token is A * clamp(r, lo, hi) with (lo, hi) = (0, c_high) for A > 0 and
        # (c_low, dual_clip or inf) for A < 0: PPO's min(r*A, clip(r, c_low, c_high)*A) and the
        # dual clip's cap.  torch.clamp passes the gradient at its bounds, so a ratio equal to
        # a bound keeps it (the convention of clip_regions).
        is_pos = adv > 0
        lo = torch.where(is_pos, r.new_tensor(0.0), r.new_tensor(c_low))
        hi = torch.where(is_pos, r.new_tensor(c_high), r.new_tensor(math.inf if dual is None
                                                                    else dual))  # fmt: skip
        coef = _loss_coefficients(adv, mask, agg, count, token_weights)
    r_eff = torch.clamp(ratio, lo, hi)
    # the aggregated, negated objective (sum's pairwise summation: a float32 BLAS dot over
    # millions of tokens drifts by ~1e-5 relative)
    loss = (r_eff * coef).sum()
    stats = _loss_stats(
        log_probs.detach(), r, log_ratio.detach(), query, abs_w, c64, mask, c_low, c_high,
        dual, n_steps, measure, sync, group,
    )  # fmt: skip
    if skipped:
        stats = dataclasses.replace(stats, search_skipped=1.0)
    return loss, stats


def _loss_coefficients(adv, mask, agg: str, count, token_weights) -> torch.Tensor:
    """``-A * mask * (row scale) / denominator`` per token: the loss is ``sum(r_eff * coef)``,
    which equals ``_aggregate(-(r_eff * A) * token_weights, mask, agg, count)``."""
    coef = torch.where(mask, adv, 0.0)
    if token_weights is not None:
        coef = coef * token_weights.to(coef.dtype)
    if agg == "token-mean":
        denom = mask.sum().clamp_min(1) if count is None else max(float(count), 1.0)
        return coef.div_(-denom if isinstance(denom, float) else denom.neg())
    if coef.dim() != 2:
        raise ValueError(f"agg={agg!r} needs (batch, time) tensors, got {coef.dim()}-D")
    if agg == "seq-mean-token-mean":
        coef = coef / mask.sum(-1, keepdim=True).clamp_min(1).to(coef.dtype)
    denom = coef.shape[0] if count is None else count
    return coef.div_(-max(float(denom), 1.0))


# the regions of one token, from bucketize(r * sign(A), grid) with grid
# [-dual (just below), -c_low, -tiny, 0, c_high] and right=False (= #{grid < query}):
_DUAL, _NEG_KEPT, _NEG_LOW, _ZERO, _POS_KEPT, _POS_HIGH = range(6)
_N_REGIONS = 6


@torch.no_grad()
def _loss_stats(
    log_probs,
    ratio,
    log_ratio,
    query,
    abs_w,
    c64,
    mask,
    c_low,
    c_high,
    dual,
    n_steps,
    measure,
    sync=False,
    group=None,
) -> LossStats:
    """The statistics of one loss call, in one pass over the tokens: each token gets a code
    (its clip region of Eq. 7, whether it is a high-probability token, masked tokens apart) and
    bincounts sum the counts and Eq. 8's parts per code.  The small result is all-reduced once
    when ``sync``, so every number is global."""
    dt = ratio.dtype
    tiny = torch.finfo(dt).tiny
    first = -math.inf if dual is None else -float(dual)
    grid = torch.tensor([first, -c_low, -tiny, 0.0, c_high], dtype=dt, device=ratio.device)
    if dual is not None:  # r > dual  <=>  -r < -dual  <=>  query <= the float just below -dual
        grid[0] = torch.nextafter(grid[0], grid.new_tensor(-math.inf))
    region = torch.bucketize(query, grid, right=False, out_int32=True)
    n = mask.sum()
    mean_lp = torch.where(mask, log_probs.to(dt), 0.0).sum(dtype=torch.float64) / n.clamp_min(1)
    high_prob = log_probs.to(dt) > mean_lp  # Definition 1 (App. B.4.2): pi above exp(E[log pi])
    code = region.add_(high_prob, alpha=_N_REGIONS)  # 0..11; masked tokens go to 12
    code = torch.where(mask, code, 2 * _N_REGIONS).reshape(-1)
    size = 2 * _N_REGIONS + 1
    counts = torch.bincount(code, minlength=size).to(torch.float64)
    c_sum = torch.bincount(code, weights=c64.reshape(-1), minlength=size)
    w_sum = torch.bincount(code, weights=abs_w.reshape(-1).to(torch.float64), minlength=size)
    # KL's k3 estimate and the mean ratio: masked sums with a float64 accumulator
    r_total = torch.where(mask, ratio, 0.0).sum(dtype=torch.float64)
    r_minus_lr = torch.where(mask, ratio - log_ratio, 0.0).sum(dtype=torch.float64)

    def by_region(x):  # (6,) per region, both probability halves, masked tokens dropped
        return x[: 2 * _N_REGIONS].view(2, _N_REGIONS).sum(0)

    cnt, c, w = by_region(counts), by_region(c_sum), by_region(w_sum)
    hp = counts[_N_REGIONS : 2 * _N_REGIONS]
    lp_ = counts[:_N_REGIONS]
    pg, ng = c[_POS_KEPT], c[_NEG_KEPT]
    pv = pg + c_high * w[_POS_HIGH]  # a clipped positive token counts A*c_high
    nv = ng + c[_DUAL] + c_low * w[_NEG_LOW]  # a clipped negative one |A|*c_low
    pos = [_POS_KEPT, _POS_HIGH]
    neg = [_DUAL, _NEG_KEPT, _NEG_LOW]
    sums = torch.stack([
        pg, ng, pv, nv, cnt[_POS_HIGH], cnt[_NEG_LOW], cnt[_DUAL], cnt.sum(),
        hp[pos].sum(), lp_[pos].sum(), hp[neg].sum(), lp_[neg].sum(), r_minus_lr, r_total,
    ]).to(torch.float64)  # fmt: skip
    if sync:
        torch.distributed.all_reduce(sums, group=group)  # global counts and sums
    (pg, ng, pv, nv, n_high, n_low, n_dual, n, php, plp, nhp, nlp, r_minus_lr, r_total) = (
        sums.tolist()
    )
    rho_g, rho_v = share(pg, ng), share(pv, nv)
    denom = max(n, 1.0)
    return LossStats(
        c_low=float(c_low),
        c_high=float(c_high),
        rho=rho_g if measure == "gradient" else rho_v,
        rho_gradient=rho_g,
        rho_value=rho_v,
        n_steps=int(n_steps),
        search_skipped=0.0,
        clip_high_frac=n_high / denom,
        clip_low_frac=n_low / denom,
        clip_dual_frac=n_dual / denom,
        n_tokens=int(n),
        n_pos_high_prob=int(php),
        n_pos_low_prob=int(plp),
        n_neg_high_prob=int(nhp),
        n_neg_low_prob=int(nlp),
        approx_kl=(r_minus_lr - n) / denom,  # mean of (r - 1) - log r
        ratio_mean=r_total / denom,
    )


# ----------------------------------------------------------------------------------------------
# GRPO advantages
# ----------------------------------------------------------------------------------------------
def grpo_advantages(
    rewards: torch.Tensor, group_size: int, scale: bool = True, eps: float = 1e-6
) -> torch.Tensor:
    """Group-normalised advantages of GRPO: ``A_i = (R_i - mean_g R) / (std_g R + eps)``.

    ``rewards`` holds consecutive groups of ``group_size`` completions of the same prompt.  The
    std is the unbiased one (as TRL and verl use).  ``scale=False`` gives ``R_i - mean_g R``
    (Dr. GRPO).  A group whose rewards are all equal gets advantage 0 everywhere.
    """
    if not isinstance(group_size, int) or group_size < 2:
        raise ValueError(f"group_size={group_size!r} is out of range: allowed integers >= 2")
    rewards = torch.as_tensor(rewards)
    if rewards.dim() != 1 or rewards.numel() % group_size:
        raise ValueError(
            f"rewards must be 1-D with a length divisible by group_size={group_size};"
            f" got shape {tuple(rewards.shape)}"
        )
    r = rewards.to(torch.promote_types(rewards.dtype, torch.float32)).view(-1, group_size)
    adv = r - r.mean(-1, keepdim=True)
    if scale:
        adv = adv / (r.std(-1, keepdim=True) + eps)
    return adv.reshape(-1)
