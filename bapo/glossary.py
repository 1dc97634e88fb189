"""One table of every metric the trainer logs and every symbol the notebooks use.

Each :class:`Entry` has a one-line meaning (with the paper's equation or algorithm number where
one applies) and a unit.  ``tests/test_glossary.py`` runs the trainer and fails when it logs a key
that :data:`METRICS` does not describe, and when ``docs/glossary.md`` differs from
:func:`markdown`; regenerate that page with ``python -m bapo.glossary > docs/glossary.md``.

Paper references (Xi et al., arXiv 2510.18927): Eq. 4 the clipped surrogate
``min(r*A, clip(r, c_low, c_high)*A)``; Eq. 5 its gradient split by the advantage's sign; Eq. 6
the Entropy-Clip Rule (only unclipped tokens move the entropy); Eq. 7 the clip indicator
``X(y)``; Eq. 8 the positive share ``rho``; Algorithm 1 BAPO's search for the bounds.

This module imports nothing heavy, so plots may use :func:`hover` freely.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ["ALIASES", "METRICS", "SYMBOLS", "Entry", "describe", "hover", "markdown", "undescribed"]


@dataclass(frozen=True)
class Entry:
    """A metric key or a symbol: what it means, in what unit, and where it is found."""

    name: str
    meaning: str
    unit: str
    where: str

    def hover(self) -> str:
        """One line, ``name: meaning [unit]``."""
        return f"{self.name}: {self.meaning} [{self.unit}]"


# where a metric is written ------------------------------------------------------------------------
STEP = "metrics.jsonl"
UPDATE = "updates.jsonl; metrics.jsonl (mean over the step's updates)"
BOTH = "metrics.jsonl, updates.jsonl"
REPLAY = "metrics.jsonl, when offpolicy.replay_fraction > 0"
EVAL = "metrics.jsonl, every run.eval_every steps and at the last step"

# units ------------------------------------------------------------------------------------------
SHARE_TOKENS = "share of tokens (0-1)"
SHARE = "share (0-1)"
VERSIONS = "policy versions"


def _table(rows: list[tuple[str, str, str, str]]) -> dict[str, Entry]:
    out: dict[str, Entry] = {}
    for name, meaning, unit, where in rows:
        if name in out:
            raise ValueError(f"glossary: {name!r} is listed twice")
        out[name] = Entry(name, meaning, unit, where)
    return out


# fmt: off
METRICS: dict[str, Entry] = _table([
    # --- counters ---------------------------------------------------------------------------
    ("step",
     "Training steps finished, counting this one (1, 2, ...); an updates.jsonl row carries the"
     " number of the step that made it, the same as that step's metrics.jsonl record",
     "count", BOTH),
    ("version",
     "Policy version after this update: optimizer steps taken so far (a skipped non-finite"
     " update does not count)",
     VERSIONS, "updates.jsonl"),
    # --- rewards of the groups that finished this step (replayed samples excluded) -----------
    ("reward/mean",
     "Mean reward of this step's finished completions (fresh samples only; null when no group"
     " finished)",
     "reward", STEP),
    ("reward/std",
     "Standard deviation (unbiased) of those rewards; 0 with a single completion",
     "reward", STEP),
    ("reward/accuracy",
     "Share of this step's finished completions with reward >= 1 (correct)",
     "share of completions (0-1)", STEP),
    ("reward/errors",
     "Completions whose reward function raised or returned a non-finite value; they score 0",
     "count", STEP),
    ("reward/groups_all_same",
     "Groups whose G completions all got the same reward, so every advantage is 0 and the group"
     " carries no learning signal",
     "count", STEP),
    # --- completions ------------------------------------------------------------------------
    ("completion/length_mean",
     "Mean length of this step's finished completions",
     "tokens", STEP),
    ("completion/length_correct",
     "Mean length of the finished completions with reward >= 1 (null when none)",
     "tokens", STEP),
    ("completion/length_wrong",
     "Mean length of the finished completions with reward < 1 (null when none)",
     "tokens", STEP),
    ("completion/finished_frac",
     "Share of finished completions that stopped at EOS rather than at rollout.max_new_tokens",
     "share of completions (0-1)", STEP),
    # --- entropy ----------------------------------------------------------------------------
    ("entropy/mean",
     "Mean entropy H of pi_rollout's next-token distribution (at rollout.temperature) over the"
     " tokens generated this step, recomputed by the trainer; Eq. 6 says what moves it",
     "nats", STEP),
    # --- rollout engine ---------------------------------------------------------------------
    ("rollout/generated_tokens",
     "Tokens generated this step, over every active completion (with partial rollouts also the"
     " segments of unfinished ones)",
     "tokens", STEP),
    ("rollout/logprob_abs_diff_mean",
     "Mean |log pi_trainer - log pi_engine| over this step's new tokens: how far the rollout"
     " engine's log-probs are from the trainer's recomputation (null if one is non-finite)",
     "nats", STEP),
    ("rollout/logprob_abs_diff_max",
     "Largest |log pi_trainer - log pi_engine| over this step's new tokens",
     "nats", STEP),
    ("rollout/train_rollout_ratio_minus_one",
     "Mean of exp(log pi_trainer - log pi_engine) - 1: how far from 1 the ratio r would start if"
     " the engine's log-probs were used as pi_rollout",
     "ratio", STEP),
    ("rollout/mismatch_tokens",
     "Tokens compared for the rollout/logprob_* metrics",
     "tokens", STEP),
    # --- off-policy machinery ---------------------------------------------------------------
    ("offpolicy/groups_done",
     "Groups (prompts) whose G completions all finished this step and became samples",
     "count", STEP),
    ("offpolicy/carried_over",
     "Completions still unfinished after this step, to be continued by a newer policy (partial"
     " rollouts, offpolicy.partial_budget > 0; otherwise 0)",
     "count", STEP),
    ("offpolicy/versions_spanned_mean",
     "Mean number of distinct policy versions that generated a finished completion's tokens"
     " (1 without partial rollouts)",
     VERSIONS, STEP),
    ("offpolicy/versions_spanned_max",
     "Most distinct policy versions behind one finished completion",
     VERSIONS, STEP),
    ("offpolicy/replayed",
     "Samples drawn from the replay buffer into this step's update batch",
     "count", REPLAY),
    ("offpolicy/replay_age_mean",
     "Mean age of the replayed samples: current version minus the oldest version that generated"
     " the sample (null when none was drawn)",
     VERSIONS, REPLAY),
    ("offpolicy/replay_age_max",
     "Largest age among the replayed samples (0 when none was drawn)",
     VERSIONS, REPLAY),
    ("offpolicy/buffer_size",
     "Samples in the replay buffer after this step's fresh ones with A != 0 were added and the"
     " too old (offpolicy.replay_max_age) or too many (offpolicy.replay_size) evicted",
     "count", REPLAY),
    ("offpolicy/updates",
     "Optimizer updates this step: E x M, one per non-empty mini-batch (0 when no group"
     " finished, as can happen with partial rollouts)",
     "count", STEP),
    ("offpolicy/staleness",
     "Updates already made on this rollout batch before this one: 0 for the first, E x M - 1 for"
     " the last (Algorithm 1 line 7)",
     VERSIONS, UPDATE),
    ("offpolicy/age_mean",
     "Mean token age in this update's mini-batch: current version minus the version of the"
     " policy that generated the token (includes replay and partial rollouts)",
     VERSIONS, UPDATE),
    ("offpolicy/age_max",
     "Largest token age in this update's mini-batch",
     VERSIONS, UPDATE),
    # --- BAPO's bounds and the positive share (Eq. 8, Algorithm 1) --------------------------
    ("bapo/c_low",
     "Lower clip bound on r used by this update (Eq. 4): GRPO and clip-higher 0.8, BAPO the value"
     " Algorithm 1 chose in [a-, b-]",
     "ratio", UPDATE),
    ("bapo/c_high",
     "Upper clip bound on r used by this update (Eq. 4): GRPO 1.2, clip-higher 1.28, BAPO the"
     " value Algorithm 1 chose in [a+, b+]",
     "ratio", UPDATE),
    ("bapo/rho",
     "Positive share of Eq. 8 on this mini-batch at the bounds used, before the update, measured"
     " the same way for every algorithm: gradient measure (a token counts w*r*|A| while unclipped,"
     " 0 once clipped), w = 1 unless algo.rollout_weight=true",
     SHARE, UPDATE),
    ("bapo/rho_gradient",
     "Positive share of Eq. 8 under the gradient measure (w*r*|A| while unclipped, 0 once"
     " clipped); in the trainer equal to bapo/rho",
     SHARE, UPDATE),
    ("bapo/rho_value",
     "Positive share of Eq. 8 under the loss-value measure, as Eq. 8 is typeset: a clipped token"
     " still counts w*|A|*c_high (A > 0) or w*|A|*c_low (A < 0)",
     SHARE, UPDATE),
    ("bapo/rho_search",
     "Positive share where Algorithm 1 stopped, under the search's own measure (algo.contribution;"
     " loss value for bapo-official); for a fixed clip equal to bapo/rho",
     SHARE, UPDATE),
    ("bapo/search_steps",
     "Grid steps Algorithm 1 took from (a-, a+) to the bounds it chose (lines 10-16); 0 for a"
     " fixed clip",
     "count", UPDATE),
    ("bapo/search_skipped",
     "1 when no token could be clipped at any grid point (e.g. every ratio 1, on-policy), so"
     " Algorithm 1 stayed at (a-, a+); else 0 (and 0 for a fixed clip)",
     "flag (0/1)", UPDATE),
    # --- clipping (Eq. 7) -------------------------------------------------------------------
    ("clip/high_frac",
     "Share of the mini-batch's tokens with A > 0 and r > c_high: clipped, X = 0 (Eq. 7)",
     SHARE_TOKENS, UPDATE),
    ("clip/low_frac",
     "Share of the mini-batch's tokens with A < 0 and r < c_low: clipped, X = 0 (Eq. 7)",
     SHARE_TOKENS, UPDATE),
    ("clip/dual_frac",
     "Share of the mini-batch's tokens with A < 0 and r > the dual clip c (0 without one)",
     SHARE_TOKENS, UPDATE),
    ("clip/frac",
     "Share of the mini-batch's tokens with X = 0 (Eq. 7), which carry no gradient:"
     " high_frac + low_frac + dual_frac",
     SHARE_TOKENS, UPDATE),
    # --- tokens of the update (Definition 1, App. B.4.2) ------------------------------------
    ("tokens/count",
     "Completion tokens in this update's mini-batch",
     "tokens", UPDATE),
    ("tokens/pos_high_prob",
     "Tokens with A > 0 and pi_theta(y) > exp(mean log pi_theta) over the mini-batch (Definition"
     " 1); unclipped, they lower the entropy (Eq. 6, Table 4)",
     "tokens", UPDATE),
    ("tokens/pos_low_prob",
     "Tokens with A > 0 and pi_theta(y) <= exp(mean log pi_theta); unclipped, they raise the"
     " entropy (Eq. 6, Table 4)",
     "tokens", UPDATE),
    ("tokens/neg_high_prob",
     "Tokens with A < 0 and pi_theta(y) > exp(mean log pi_theta); unclipped, they raise the"
     " entropy (Eq. 6, Table 4)",
     "tokens", UPDATE),
    ("tokens/neg_low_prob",
     "Tokens with A < 0 and pi_theta(y) <= exp(mean log pi_theta); unclipped, they lower the"
     " entropy (Eq. 6, Table 4)",
     "tokens", UPDATE),
    ("train/tokens",
     "Completion tokens processed by this step's updates, summed over updates (a token used by"
     " E epochs counts E times)",
     "tokens", STEP),
    ("train/graphs_kept",
     "Micro-batches whose graph from BAPO's search pass also served the gradient pass"
     " (train.keep_graphs, train.graph_memory_gb); 0 for a fixed clip, which has no search pass",
     "micro-batches", UPDATE),
    ("memory/graphs_mb",
     "Memory the kept graphs held when Algorithm 1's search ran (train.keep_graphs=auto only):"
     " the growth of allocated memory on CUDA, the tensors saved for backward elsewhere, measured"
     " on the longest rows so far and scaled by size for shorter ones",
     "MiB", UPDATE),
    ("train/extra_forwards",
     "Micro-batches forwarded twice in this update: without grad for Algorithm 1's search, then"
     " with grad (their graphs did not fit); 0 for a fixed clip",
     "micro-batches", UPDATE),
    # --- the policy update ------------------------------------------------------------------
    ("policy/loss",
     "The clipped surrogate loss (negated Eq. 4; Algorithm 1 line 19) of this update, summed over"
     " its micro-batches and aggregated per algo.agg",
     "advantage x ratio", UPDATE),
    ("policy/grad_norm",
     "L2 norm of the whole gradient before it is clipped to train.max_grad_norm",
     "gradient norm", UPDATE),
    ("policy/nonfinite_skipped",
     "1 when this update's loss or gradient norm was non-finite and the update was skipped, else"
     " 0 (in metrics.jsonl: the share of the step's updates skipped)",
     "count", UPDATE),
    ("policy/approx_kl",
     "Mean of (r - 1) - log r over the mini-batch's tokens before the update: the k3 estimate of"
     " KL(pi_rollout || pi_theta), 0 when the two agree",
     "nats", UPDATE),
    ("policy/ratio_mean",
     "Mean importance ratio r = pi_theta / pi_rollout over the mini-batch's tokens before the"
     " update (1 on fresh data)",
     "ratio", UPDATE),
    # --- time and speed ---------------------------------------------------------------------
    ("time/rollout_s",
     "Seconds spent on this step's rollout: generation, rewards, advantages, behaviour log-probs",
     "s", STEP),
    ("time/update_s",
     "Seconds spent on this step's E x M updates",
     "s", STEP),
    ("time/step_s",
     "Seconds for the whole step (rollout + update, before evaluation)",
     "s", STEP),
    ("time/wall_s",
     "Wall-clock seconds since the run started, continued across resumes",
     "s", STEP),
    ("speed/rollout_tokens_per_s",
     "rollout/generated_tokens / time/rollout_s",
     "tokens/s", STEP),
    ("speed/train_tokens_per_s",
     "train/tokens / time/update_s",
     "tokens/s", STEP),
    # --- evaluation -------------------------------------------------------------------------
    ("eval/accuracy",
     "Share of the task's fixed eval set (run.eval_size examples) answered with reward >= 1,"
     " sampled as the rollouts are",
     "share of examples (0-1)", EVAL),
])

SYMBOLS: dict[str, Entry] = _table([
    ("pi_theta",
     "The policy being trained (current weights); log pi_theta(y_t | x, y_<t) is recomputed at"
     " rollout.temperature",
     "probability", "bapo.train.logprobs; notebooks 00-04"),
    ("pi_rollout",
     "The behaviour policy that sampled a token: the weights at rollout time (Algorithm 1 line 3);"
     " with partial rollouts or replay, per token the version that generated it",
     "probability", "Sample.behaviour_logprobs; notebooks 00-04"),
    ("r",
     "Importance ratio pi_theta(y_t) / pi_rollout(y_t) of a sampled token (Eq. 4), exp of the"
     " log-prob difference with |log r| clamped at 20; 1 on fresh data",
     "ratio", "bapo.loss.importance_ratio"),
    ("A",
     "Advantage: GRPO's group-normalised reward (R_i - mean_G R) / (std_G R + 1e-6), or R_i -"
     " mean_G R with algo.scale_advantages=false, shared by all tokens of a completion; A > 0 are"
     " positive tokens, A < 0 negative ones (Eq. 5)",
     "reward z-score", "bapo.loss.grpo_advantages"),
    ("G",
     "Completions sampled per prompt, one group for the advantage (train.group_size)",
     "count", "train.group_size"),
    ("eps",
     "PPO's clip width in Eq. 4: c_low = 1 - eps, c_high = 1 + eps (GRPO: 0.2)",
     "ratio", "FixedClip"),
    ("c_low",
     "Lower clip bound on r in Eq. 4's clip(r, c_low, c_high): a negative token with r < c_low is"
     " clipped; BAPO chooses it per update in [a-, b-] (Algorithm 1)",
     "ratio", "bapo/c_low; FixedClip, Bounds"),
    ("c_high",
     "Upper clip bound on r in Eq. 4: a positive token with r > c_high is clipped; BAPO chooses"
     " it per update in [a+, b+] (Algorithm 1)",
     "ratio", "bapo/c_high; FixedClip, Bounds"),
    ("dual_clip",
     "Dual clip c: a negative token with r > c is clipped too (X = 0), capping its loss at"
     " |A| * c; off by default, 3.0 in bapo-official (algo.dual_clip)",
     "ratio", "algo.dual_clip; clip/dual_frac"),
    ("X",
     "Clip indicator of Eq. 7: 1 while a token keeps its gradient (A > 0 and r <= c_high, or"
     " A < 0 and r >= c_low, up to any dual clip), 0 once clipped",
     "0 or 1", "bapo.loss.clip_regions; clip/*"),
    ("H",
     "Entropy -sum_y pi(y) log pi(y) of the next-token distribution; by Eq. 6 (the Entropy-Clip"
     " Rule) its change is -eta * Cov(log pi, A * X + C), so only unclipped tokens move it",
     "nats", "entropy/mean; bapo.theory"),
    ("rho",
     "Positive share of Eq. 8, pos / (pos + neg) over the batch's tokens; by default the plain sum"
     " over sampled tokens (algo.rollout_weight=true adds a pi_rollout weight) under the gradient"
     " measure: a token counts r*|A| while unclipped, 0 once clipped (algo.contribution=value:"
     " its loss value, as Eq. 8 is typeset)",
     SHARE, "bapo/rho; bapo.loss.share"),
    ("rho0",
     "BAPO's target for rho: Algorithm 1 moves the bounds until rho >= rho0 (Eq. 8; paper 0.4;"
     " with target='ratio', as in bapo-official, it bounds pos / neg instead)",
     SHARE, "algo.rho0"),
    ("w",
     "Eq. 8's per-token weight: 1 by default (the sampled sum estimates Eq. 8's expectation over"
     " pi_rollout), pi_rollout(y_t) with algo.rollout_weight=true",
     "probability", "algo.rollout_weight"),
    ("a-",
     "Lowest c_low of Algorithm 1: the search starts at c_low = a- (paper 0.6; algo.a_minus)",
     "ratio", "algo.a_minus"),
    ("b-",
     "Highest c_low of Algorithm 1: the loop runs while c_low + delta2 <= b- (paper 0.9;"
     " algo.b_minus)",
     "ratio", "algo.b_minus"),
    ("a+",
     "Lowest c_high of Algorithm 1: the search starts at c_high = a+ (paper 1.2; algo.a_plus)",
     "ratio", "algo.a_plus"),
    ("b+",
     "Highest c_high of Algorithm 1: c_high grows while c_high + delta1 <= b+ (paper 3.0;"
     " algo.b_plus)",
     "ratio", "algo.b_plus"),
    ("delta1",
     "Step by which Algorithm 1 raises c_high (line 13; paper 0.05; algo.delta1)",
     "ratio", "algo.delta1"),
    ("delta2",
     "Step by which Algorithm 1 raises c_low once c_high is at b+ (line 15; paper 0.02;"
     " algo.delta2)",
     "ratio", "algo.delta2"),
    ("E",
     "Epochs over each rollout batch (train.epochs)",
     "count", "train.epochs"),
    ("M",
     "Mini-batches, so optimizer updates, per epoch (train.mini_batches)",
     "count", "train.mini_batches"),
    ("staleness",
     "Updates each rollout batch feeds, E x M (Algorithm 1 line 7): the k-th update (k = 0 .."
     " E*M - 1) uses data k policy versions old",
     VERSIONS, "Config.staleness; offpolicy/staleness"),
    ("approx_kl",
     "Mean of (r - 1) - log r: the k3 estimate of KL(pi_rollout || pi_theta), >= 0",
     "nats", "policy/approx_kl"),
    ("clip_frac",
     "Clip fractions: shares of tokens with X = 0 (Eq. 7), split into high (A > 0, r > c_high),"
     " low (A < 0, r < c_low) and dual (A < 0, r > c)",
     SHARE_TOKENS, "clip/*"),
    ("ages",
     "A token's age: current policy version minus the version that generated it; a sample's age"
     " counts from its oldest token",
     VERSIONS, "offpolicy/age_*, offpolicy/replay_age_*"),
    ("high_prob",
     "High-probability token (Definition 1, App. B.4.2): pi_theta(y) > exp(mean log pi_theta);"
     " with A's sign it gives the four quadrants of Table 4",
     "0 or 1", "tokens/*"),
])
# fmt: on

ALIASES: dict[str, str] = {
    "π_θ": "pi_theta",
    "π_rollout": "pi_rollout",
    "ratio": "r",
    "advantage": "A",
    "ε": "eps",
    "epsilon": "eps",
    "c": "dual_clip",
    "dual clip": "dual_clip",
    "entropy": "H",
    "ρ": "rho",
    "ρ0": "rho0",
    "a_minus": "a-",
    "b_minus": "b-",
    "a_plus": "a+",
    "b_plus": "b+",
    "a−": "a-",
    "b−": "b-",
    "δ1": "delta1",
    "δ2": "delta2",
    "clip fractions": "clip_frac",
    "age": "ages",
}


def describe(name: str) -> Entry:
    """The entry of a metric key or a symbol (or a symbol's alias such as ``ρ`` or ``a_minus``)."""
    if name in METRICS:
        return METRICS[name]
    name_ = ALIASES.get(name, name)
    if name_ in SYMBOLS:
        return SYMBOLS[name_]
    known = [*METRICS, *SYMBOLS, *ALIASES]
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.6)
    hint = f"; did you mean {', '.join(map(repr, close))}?" if close else "."
    raise KeyError(
        f"{name!r} is not in the glossary{hint} A new metric or symbol belongs in"
        " bapo/glossary.py (METRICS or SYMBOLS), then: python -m bapo.glossary > docs/glossary.md"
    )


def hover(name: str) -> str:
    """One line for plot hover text: ``name: meaning [unit]``."""
    return describe(name).hover()


def undescribed(keys: Iterable[str]) -> list[str]:
    """The metric keys among ``keys`` that :data:`METRICS` does not describe (sorted, once)."""
    return sorted({k for k in keys if k not in METRICS})


def _cell(text: str) -> str:
    """Table-cell text: a pipe would end the cell, an asterisk start emphasis."""
    return text.replace("|", "\\|").replace("*", "\\*")


def _group(name: str) -> str:
    return name.split("/", 1)[0] + "/" if "/" in name else ""


def markdown() -> str:
    """The docs page: metric tables grouped by prefix, then the symbols."""
    lines = [
        "# Glossary: metrics and symbols",
        "",
        "_Generated by `python -m bapo.glossary > docs/glossary.md` from `bapo/glossary.py`; edit"
        " that file, not this page (`tests/test_glossary.py` fails when they differ)._",
        "",
        "Equation and algorithm numbers refer to Xi et al., *BAPO* (arXiv 2510.18927): Eq. 4 the"
        " clipped surrogate, Eq. 5 its gradient by advantage sign, Eq. 6 the Entropy-Clip Rule,"
        " Eq. 7 the clip indicator X, Eq. 8 the positive share rho, Algorithm 1 BAPO's search for"
        " the bounds.",
        "",
        "## Metrics",
        "",
        "`metrics.jsonl` holds one record per training step and `updates.jsonl` one per optimizer"
        " update (E x M per step). A per-update metric appears in both: in `metrics.jsonl` as the"
        " mean over the step's updates. JSON has no nan, so a metric with nothing to measure is"
        " `null`.",
    ]
    groups: dict[str, list[Entry]] = {}
    for e in METRICS.values():
        groups.setdefault(_group(e.name), []).append(e)
    for prefix, entries in groups.items():
        title = f"`{prefix}*`" if prefix else "Counters"
        lines += [
            "",
            f"### {title}",
            "",
            "| Key | Meaning | Unit | Logged in |",
            "|---|---|---|---|",
        ]
        lines += [
            f"| `{e.name}` | {_cell(e.meaning)} | {_cell(e.unit)} | {_cell(e.where)} |"
            for e in entries
        ]
    lines += [
        "",
        "## Symbols",
        "",
        "The symbols of the paper as the notebooks and `bapo.loss` write them.",
        "",
        "| Symbol | Meaning | Unit | Where |",
        "|---|---|---|---|",
    ]
    lines += [
        f"| `{e.name}` | {_cell(e.meaning)} | {_cell(e.unit)} | {_cell(e.where)} |"
        for e in SYMBOLS.values()
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(markdown(), end="")
