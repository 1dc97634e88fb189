"""bapo: Balanced Policy Optimization with Adaptive Clipping (Xi et al., 2025, arXiv 2510.18927).

The loss core is importable from the top level::

    from bapo import BAPOConfig, FixedClip, policy_loss, search_bounds, grpo_advantages
"""

from bapo.loss import (
    AGG_MODES,
    BAPOConfig,
    Bounds,
    FixedClip,
    LossStats,
    SearchPath,
    clip_regions,
    contribution_sums,
    grpo_advantages,
    policy_loss,
    search_bounds,
    search_path,
    share,
)

__version__ = "0.1.0"

__all__ = [
    "AGG_MODES",
    "BAPOConfig",
    "Bounds",
    "FixedClip",
    "LossStats",
    "SearchPath",
    "clip_regions",
    "contribution_sums",
    "grpo_advantages",
    "policy_loss",
    "search_bounds",
    "search_path",
    "share",
]
