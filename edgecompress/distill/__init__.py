"""Distillation for fine-tuning compressed models: Hinton KD (temperature, alpha) and a prune/fine-tune driver."""

from __future__ import annotations

from edgecompress.distill.kd import DistillConfig, DistillCriterion, finetune, iterative_prune, kd_loss

__all__ = ["DistillConfig", "DistillCriterion", "finetune", "iterative_prune", "kd_loss"]
