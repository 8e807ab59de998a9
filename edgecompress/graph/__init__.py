"""Model graph analysis: per-layer params, MACs and activation bytes (see cost.py)."""

from __future__ import annotations

from edgecompress.graph.cost import LayerCost, ModelAnalysis, analyze

__all__ = ["LayerCost", "ModelAnalysis", "analyze"]
