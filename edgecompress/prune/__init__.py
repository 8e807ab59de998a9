"""Structured and unstructured pruning: importance, channel removal, sparsity schedules, network slimming."""

from __future__ import annotations

from edgecompress.prune.importance import get_importance, list_importances, register_importance, score_groups
from edgecompress.prune.slimming import SlimmingHook, bn_l1
from edgecompress.prune.structured import PruneConfig, PruneResult, Target, describe_result, prune_
from edgecompress.prune.unstructured import GMPConfig, GradualMagnitudePruner, prune_magnitude_, sparsity_report

__all__ = [
    "GMPConfig", "GradualMagnitudePruner", "PruneConfig", "PruneResult", "SlimmingHook", "Target", "bn_l1",
    "describe_result", "get_importance", "list_importances", "prune_", "prune_magnitude_", "register_importance",
    "score_groups", "sparsity_report",
]
