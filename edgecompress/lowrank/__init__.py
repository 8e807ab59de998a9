"""Low-rank factorization of Conv2d and Linear layers: SVD, spatial SVD, Tucker-2 and CP, with rank selection.

`factorize_(model, LowRankConfig(method="spatial-svd", target="macs=0.5"), input_shape=...)`
replaces layers in place by `LowRank` chains of ordinary layers, so the result saves,
reloads (`save_checkpoint` records their structure), prunes, quantizes and exports like
any other model.
"""

from __future__ import annotations

from edgecompress.lowrank.decomposition import (METHODS, Factorized, LowRank, decompose, energy_rank, evbmf_rank,
                                            full_rank, reconstruct, unsupported, vbmf_ranks)
from edgecompress.lowrank.factorize import FactorizeResult, LayerPlan, LowRankConfig, factorize_
from edgecompress.lowrank.timing import LayerTimer

__all__ = [
    "METHODS", "FactorizeResult", "Factorized", "LayerPlan", "LayerTimer", "LowRank", "LowRankConfig", "decompose",
    "energy_rank", "evbmf_rank", "factorize_", "full_rank", "reconstruct", "unsupported", "vbmf_ranks",
]
