"""Causal verification: activation patching, mean ablation, direct logit attribution."""
