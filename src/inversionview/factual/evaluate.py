"""How well a model recalls the facts (issue 16, item 2): top-1 accuracy of the answer's
first token at END, per relation and template, on the held-out (eval) or train templates."""

from __future__ import annotations

from typing import Any, Iterable

import torch

from inversionview.factual.knowledge import check_split
from inversionview.factual.task import FactualTask
from inversionview.probed.evaluate import answer_logits
from inversionview.probed.subject import Subject
from inversionview.tasks.base import TaskInputError


def factual_task(model: Subject) -> FactualTask:
    """The subject's task, which must be this case study's own."""
    if not isinstance(model.task, FactualTask):
        raise TaskInputError("this needs the model read as factual recall: give --task factual "
                             "(or a model whose manifest says factual)")
    return model.task


@torch.no_grad()
def evaluate_factual(model: Subject, split: str = "eval",
                     relations: Iterable[str] | None = None, kinds: Iterable[str] | None = None,
                     ) -> dict[str, Any]:
    """Every prompt of ``split``'s templates (all subjects): whether the answer's first token
    is the most likely next token (top-1), its probability, and the rank it gets; overall,
    per relation, per template and per kind of subject."""
    task = factual_task(model)
    check_split(split)
    prompts = task.knowledge.prompts(split, relations, **({"kinds": kinds} if kinds else {}))
    if not prompts:
        raise TaskInputError(f"no {split} prompts for those relations and kinds")
    task.check_first_tokens(p.answer for p in prompts)
    logits = answer_logits(model, [p.text for p in prompts])
    answers = torch.tensor([task.vocab.encode(" " + p.answer)[0] for p in prompts])
    rows = torch.arange(len(prompts))
    answer_logit = logits[rows, answers]
    top1 = logits.argmax(dim=1) == answers
    probability = torch.softmax(logits, dim=1)[rows, answers]
    rank = (logits > answer_logit[:, None]).sum(dim=1)

    def summary(mask: torch.Tensor) -> dict[str, float]:
        return {"n": int(mask.sum()), "top1_accuracy": float(top1[mask].float().mean()),
                "answer_probability": float(probability[mask].mean()),
                "median_rank": float(rank[mask].float().median())}

    def grouped(key) -> dict[str, dict[str, float]]:
        values = [key(p) for p in prompts]
        return {value: summary(torch.tensor([v == value for v in values]))
                for value in sorted(set(values))}

    return {"split": split, **summary(torch.ones(len(prompts), dtype=torch.bool)),
            "by_relation": grouped(lambda p: p.relation),
            "by_kind": grouped(lambda p: p.kind),
            "by_template": grouped(lambda p: p.template)}


__all__ = ["evaluate_factual", "factual_task"]
