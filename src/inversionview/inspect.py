"""Run one input through a probed model: its prediction and the activation norm of every
site at every position (the main job until the query engine lands)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from inversionview.probed.subject import Subject
from inversionview.tasks.base import next_token_targets


@dataclass
class InspectReport:
    model: str
    task: str
    text: str
    tokens: list[str]
    predictions: list[dict[str, Any]]  # graded positions: position, expected, predicted, p
    sites: list[str]
    norms: list[list[float]]  # [site][position]
    #: Whether the task grades its answers (a toy task); else the next token is data.
    graded: bool = True

    def to_record(self) -> dict[str, Any]:
        return {"model": self.model, "task": self.task, "input": self.text,
                "tokens": self.tokens, "predictions": self.predictions,
                "norms": dict(zip(self.sites, self.norms))}

    def render(self) -> str:
        right = sum(p["predicted"] == p["expected"] for p in self.predictions)
        lines = [f"model {self.model} (task {self.task})", f"input {self.text}"]
        for p in self.predictions:
            if not self.graded:  # free text or a prompt: the next token is data
                mark, expected = "" if p["predicted"] != p["expected"] else "  (top-1)", "next is"
            else:
                mark = "  ok" if p["predicted"] == p["expected"] else "  WRONG"
                expected = "expected"
            lines.append(f"  after {p['position']:>2} {self.tokens[p['position']]!r}: predicts "
                         f"{p['predicted']!r} (p={p['probability']:.3f}), {expected} "
                         f"{p['expected']!r}{mark}")
        if not self.graded:
            lines.append(f"top-1 next token right: {right} of {len(self.predictions)}")
        else:
            lines.append(f"solved: {'yes' if right == len(self.predictions) else 'no'}")
        lines.append("")
        lines.append("activation norms (site x position):")
        width = max(6, *(len(repr(token)) + 1 for token in self.tokens))
        header = "site     " + "".join(f"{_shown(token):>{width}}" for token in self.tokens)
        lines.append(header)
        for site, row in zip(self.sites, self.norms):
            lines.append(f"{site:<9}" + "".join(f"{value:{width}.2f}" for value in row))
        return "\n".join(lines)


def _shown(token: str) -> str:
    """A token as a column header: a single character as it is (the toy tasks), a language
    model's token quoted, so that its spaces show."""
    return token if len(token) == 1 and not token.isspace() else repr(token)


@torch.no_grad()
def inspect_input(model: Subject, text: str | None = None, seed: int = 0) -> InspectReport:
    """Prediction and per-site activation norms for ``text`` (a fresh sample if None)."""
    task = model.task
    text = task.normalize(text) if text is not None else task.sample(1, seed=seed)[0]
    tokens = model.tokens(text)
    strings = task.token_strings(tokens[0])
    length = len(strings)
    probabilities = torch.softmax(model.logits(tokens), dim=-1)[0]
    graded = task.answer_mask(tokens)[0]
    targets = next_token_targets(tokens, task.vocab.pad_id)[0]
    predictions = []
    for position in torch.nonzero(graded).flatten().tolist():
        predicted = int(probabilities[position].argmax())
        predictions.append({
            "position": position,
            "expected": task.token_strings([int(targets[position])])[0],
            "predicted": task.token_strings([predicted])[0],
            "probability": round(float(probabilities[position, predicted]), 6),
        })
    activations = model.run_sites(tokens, model.sites)
    norms = [[round(v, 4) for v in activations[site][0, :length].norm(dim=-1).tolist()]
             for site in model.sites]
    return InspectReport(model=model.source, task=task.name, text=text, tokens=strings,
                         predictions=predictions, sites=[s.short for s in model.sites],
                         norms=norms, graded=task.grades_answers)
