"""Model graph analysis: per-layer params, MACs and activation bytes (see cost.py)."""

from __future__ import annotations

from edgecompress.graph.cost import LayerCost, ModelAnalysis, analyze
from edgecompress.graph.groups import ChannelGroup, build_groups, describe_groups

__all__ = ["ChannelGroup", "LayerCost", "ModelAnalysis", "analyze", "build_groups", "describe_groups"]
