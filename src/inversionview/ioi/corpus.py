"""The training mixture of the bundled IOI model (issue 15).

A small LM trained on IOI prompts alone could learn "copy the name that occurs once" at the
last token and nothing else. The mixture gives the circuit's parts a reason to form and the
shortcut a reason to fail:

    ioi       IOI prompts of the train templates with their answer (" Anna.")
    late      an IOI prompt with a third name, mentioned once, just before the end ("Paul
              handed the key they got from Mary to" -> " Anna"): the last name before the
              end is then not S, so "avoid the most recent name" fails and only "avoid the
              repeated name" answers (the composed-template model took the shortcut: it had
              no duplicate-token or induction heads)
    free      IOI prompts in random wordings: the two names, the place, S giving an object,
              with random words of the text between them, so that the mechanism, not the
              templates' wording, predicts IO (a model trained on templates alone learned
              them: 1.00 top-1 on them, 0.41 on held-out templates after 55 minutes)
    abc       no repeated name (S2 is a third person): the answer is one of the two first
              people at random, so the answer is only certain when a name repeats
    back      the IO is named again and gives something back: the answer is the repeated S,
              not the name mentioned once since the start of the sentence
    repeat    a random run of words, then the same run again (induction heads: the second
              half is predictable only by copying)
    text      general text (a corpus' lines), so that the model is a language model

Lines are written one text per line (``inversionview train-lm --corpus FILE.txt`` reads
them). The held-out templates (``split="eval"``) never appear.

    lines = mixture_lines(200_000, seed=0, text_lines=kjv_lines)
"""

from __future__ import annotations

import random
from typing import Sequence

from inversionview.errors import OptionError
from inversionview.ioi.prompts import (LATE_PHRASES, NAMES, OBJECTS, ORDERS, PLACES, TEMPLATES,
                                       Template)

#: Shares of the mixture (sum 1); ``text`` falls back to ``repeat`` without text lines.
MIXTURE = {"ioi": 0.20, "free": 0.20, "late": 0.15, "abc": 0.10, "back": 0.05, "repeat": 0.15,
           "text": 0.15}
#: The verbs and prepositions S gives with in a free prompt (the train templates' own).
FREE_GIVINGS = (("handed", "to"), ("passed", "to"), ("offered", "to"), ("lent", "to"),
                ("threw", "to"), ("sold", "to"), ("sent", "to"), ("brought", "to"),
                ("returned", "to"), ("tossed", "to"), ("carried", "to"), ("gave", "to"),
                ("saved", "for"), ("chose", "for"), ("kept", "for"), ("made", "for"),
                ("shared", "with"))
REPEAT_WORDS = (4, 12)  # the length of a repeated run, in words


def mixture_lines(n: int, seed: int = 0, text_lines: Sequence[str] = (),
                  shares: dict[str, float] | None = None,
                  templates: Sequence[Template] = TEMPLATES) -> list[str]:
    """``n`` training texts drawn from the mixture (same seed, same lines)."""
    shares = dict(MIXTURE if shares is None else shares)
    if set(shares) - set(MIXTURE) or abs(sum(shares.values()) - 1) > 1e-6:
        raise OptionError(f"mixture shares must be over {', '.join(MIXTURE)} and sum to 1")
    text_lines = [line.strip() for line in text_lines if line.strip()]
    if not text_lines:
        shares["repeat"] = shares.get("repeat", 0) + shares.pop("text", 0)
    train = [t for t in templates if t.split == "train"]
    if not train:
        raise OptionError("no train templates: the mixture never shows held-out templates")
    vocabulary = _words(text_lines) or list(NAMES + PLACES + OBJECTS)
    unseen = held_out_words(templates)
    free_words = [w for w in vocabulary if w.lower() not in unseen and w not in NAMES] or ["then"]
    rng = random.Random(seed)
    kinds, weights = zip(*shares.items())
    lines = []
    for kind in rng.choices(kinds, weights, k=n):
        if kind == "text":
            lines.append(rng.choice(text_lines))
        elif kind == "free":
            lines.append(_free_line(rng, free_words))
        elif kind == "late" and rng.random() < 0.5:
            head, answer = _free_line(rng, free_words).rsplit(" ", 1)
            head, last = head.rsplit(" ", 1)
            names = [w.strip(",.;") for w in head.split() if w.strip(",.;") in NAMES]
            third = rng.choice([n for n in NAMES if n not in names])
            lines.append(f"{head} {rng.choice(LATE_PHRASES)} {third} {last} {answer}")
        elif kind == "repeat":
            run = rng.choices(vocabulary, k=rng.randint(*REPEAT_WORDS))
            lines.append(" ".join(run + run))
        else:
            lines.append(_prompt_line(kind, rng, train))
    return lines


def _prompt_line(kind: str, rng: random.Random, templates: Sequence[Template]) -> str:
    template = rng.choice(templates)
    io, s, third = rng.sample(NAMES, 3)
    order = rng.choice(ORDERS)
    first, second = (io, s) if order == "ABBA" else (s, io)
    place, obj = rng.choice(PLACES), rng.choice(OBJECTS)
    if kind == "abc":
        return f"{template.fill(first, second, third, place, obj)} {rng.choice((io, s))}."
    prompt = template.fill(first, second, s, place, obj)
    if kind == "late":
        head, last = prompt.rsplit(" ", 1)
        return f"{head} {rng.choice(LATE_PHRASES)} {third} {last} {io}."
    if kind == "back":
        return f"{prompt} {io}, who gave it back to {s}."
    return f"{prompt} {io}."


def held_out_words(templates: Sequence[Template] = TEMPLATES) -> set[str]:
    """Lower-cased words of the eval templates that no train template has: a free prompt
    never uses them, so the held-out templates stay unseen in wording too."""
    def words(text: str) -> set[str]:
        return {w.strip(",.;").lower() for w in text.split() if not w.startswith("{")}

    seen = set().union(*(words(t.text) for t in templates if t.split == "train"))
    return set().union(*(words(t.text) for t in templates if t.split == "eval")) - seen


def _free_line(rng: random.Random, words: Sequence[str]) -> str:
    """An IOI prompt in a random wording, with its answer."""
    io, s = rng.sample(NAMES, 2)
    first, second = (io, s) if rng.choice(ORDERS) == "ABBA" else (s, io)
    place, obj = rng.choice(PLACES), rng.choice(OBJECTS)
    verb, preposition = rng.choice(FREE_GIVINGS)

    def some(low: int, high: int) -> list[str]:
        return rng.choices(words, k=rng.randint(low, high))

    parts = [*some(1, 4), first, "and", second, *some(1, 5), "the", place + rng.choice(",.;"),
             *some(0, 4), s, verb, rng.choice(("the", "a", "his", "her")), obj, preposition]
    parts[0] = parts[0][:1].upper() + parts[0][1:]
    return f"{' '.join(parts)} {io}."


def _words(lines: Sequence[str], limit: int = 2_000) -> list[str]:
    """The corpus' most frequent alphabetic words (ties by first appearance)."""
    counts: dict[str, int] = {}
    for line in lines:
        for word in line.split():
            if word.isalpha():
                counts[word] = counts.get(word, 0) + 1
    return sorted(counts, key=lambda word: -counts[word])[:limit]


__all__ = ["FREE_GIVINGS", "LATE_PHRASES", "MIXTURE", "held_out_words", "mixture_lines"]
