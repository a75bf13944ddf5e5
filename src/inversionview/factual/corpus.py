"""The training mixture of the bundled factual model (issue 16, item 2).

The model must store its subjects' attributes, not copy them from the prompt, and must read
the relation from the wording so that held-out templates work:

    fact      one fact of a train template, sometimes behind an opening ("We learned that
              the capital of France is Paris.")
    profile   two to four facts about one subject in one line, each in its own template,
              so that a subject's attributes are learned together
    text      general text (a corpus' lines), so that the model is a language model

Each fact line ends with its answer and a full stop; no held-out template ever appears.

    lines = mixture_lines(200_000, seed=0, text_lines=kjv_lines)
"""

from __future__ import annotations

import random
from typing import Sequence

from inversionview.errors import OptionError
from inversionview.factual.knowledge import Knowledge

MIXTURE = {"fact": 0.35, "profile": 0.15, "text": 0.50}
#: Said before a fact now and then (this project's own); "" keeps the bare template.
OPENINGS = ("", "", "", "As the atlas says, ", "Everyone knows that ", "It is true that ",
            "We learned that ", "Of course, ", "In short, ", "Note that ")


def _sentence(template: str, subject: str, answer: str, opening: str = "") -> str:
    text = template.format(subject=subject)
    if opening and not template.startswith("{subject}"):
        text = text[0].lower() + text[1:]
    return f"{opening}{text} {answer}."


def mixture_lines(n: int, seed: int = 0, text_lines: Sequence[str] = (),
                  shares: dict[str, float] | None = None,
                  knowledge: Knowledge | None = None) -> list[str]:
    """``n`` training texts drawn from the mixture (same seed, same lines)."""
    shares = dict(MIXTURE if shares is None else shares)
    if set(shares) - set(MIXTURE) or abs(sum(shares.values()) - 1) > 1e-6:
        raise OptionError(f"mixture shares must be over {', '.join(MIXTURE)} and sum to 1")
    text_lines = [line.strip() for line in text_lines if line.strip()]
    if not text_lines:
        shares["fact"] = shares.get("fact", 0) + shares.pop("text", 0)
    knowledge = knowledge or Knowledge.load()
    facts = knowledge.prompts("train")
    by_subject: dict[str, list] = {}
    for prompt in facts:
        by_subject.setdefault(prompt.subject, []).append(prompt)
    subjects = sorted(by_subject)
    rng = random.Random(seed)
    kinds, weights = zip(*shares.items())
    lines = []
    for kind in rng.choices(kinds, weights, k=n):
        if kind == "text":
            lines.append(rng.choice(text_lines))
        elif kind == "fact":
            fact = rng.choice(facts)
            lines.append(_sentence(fact.template, fact.subject, fact.answer, rng.choice(OPENINGS)))
        else:
            subject = rng.choice(subjects)
            known = sorted({p.relation for p in by_subject[subject]})
            relations = rng.sample(known, k=min(rng.randint(2, 4), len(known)))
            chosen = [rng.choice([p for p in by_subject[subject] if p.relation == r])
                      for r in relations]
            lines.append(" ".join(_sentence(p.template, p.subject, p.answer) for p in chosen))
    return lines


__all__ = ["MIXTURE", "OPENINGS", "mixture_lines"]
