"""The readout, verified causally: put a sample's activation in place of the query's and see
whether the model's output changes. A sample inside the ε-ball should barely change it (the
activation carries the same information); one far outside should change it more.
"""

from __future__ import annotations

from typing import Any

import torch

from inversionview import options
from inversionview.preimage.result import PreimageResult, Sample
from inversionview.probed.subject import Subject


@torch.no_grad()
def output_change(model: Subject, query_text: str, site_name: str, position: int,
                  replacements: torch.Tensor) -> list[dict[str, float]]:
    """For each replacement activation ``[k, d_model]`` at (site, position) of the query:
    the KL(original || patched) of the next-token distribution at every real position from
    the query position on (max and mean), and the fraction of those positions whose top
    prediction changes."""
    site = model.site(site_name)
    tokens = model.tokens(query_text).expand(len(replacements), -1)
    length = len(model.task.normalize(query_text))
    where = torch.zeros(tokens.shape, dtype=torch.bool, device=model.device)
    where[:, position] = True
    values = torch.zeros(*tokens.shape, model.d_model, device=model.device)
    values[:, position] = replacements.to(model.device)
    clean = model.processed_logits(tokens[:1])[0, position:length].log_softmax(-1)
    patched = model.run_patched(tokens, {site: (where, values)})[:, position:length].log_softmax(-1)
    kl = (clean.exp() * (clean - patched)).sum(-1)  # [k, positions]
    changed = (patched.argmax(-1) != clean.argmax(-1)).float()
    return [{"kl_max": round(row.max().item(), 6), "kl_mean": round(row.mean().item(), 6),
             "top_prediction_changed": round(flip.mean().item(), 4)} for row, flip in zip(kl, changed)]


def verify_readout(model: Subject, result: PreimageResult, per_side: int = 5
                   ) -> dict[str, Any]:
    """Patch the query's activation with that of up to ``per_side`` shown samples inside ε
    (the nearest) and outside ε (the nearest beyond the rule), each taken at its best
    position; the output changes per sample and their means per side."""
    per_side = options.PER_SIDE.check(per_side)
    inside = [s for s in result.samples if s.in_epsilon][:per_side]
    outside = [s for s in result.samples if not s.in_epsilon and s.best_position >= 0][:per_side]
    report: dict[str, Any] = {"site": result.site, "position": result.position,
                              "query": result.query.text, "epsilon": result.epsilon}
    for side, samples in (("inside", inside), ("outside", outside)):
        changes = _changes(model, result, samples)
        report[side] = [{"text": s.text, "distance": s.distance, **change}
                        for s, change in zip(samples, changes)]
        report[f"{side}_mean"] = {key: round(sum(c[key] for c in changes) / len(changes), 6)
                                  for key in ("kl_max", "kl_mean", "top_prediction_changed")
                                  } if changes else None
    return report


def _changes(model: Subject, result: PreimageResult, samples: list[Sample]) -> list[dict]:
    if not samples:
        return []
    site = model.site(result.site)
    tokens = model.tokens([s.text for s in samples])
    activations = model.activations(tokens, site)  # [k, pos, d]
    best = torch.tensor([s.best_position for s in samples])
    replacements = activations[torch.arange(len(samples)), best]
    return output_change(model, result.query.text, result.site, result.position, replacements)
