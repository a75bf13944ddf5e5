"""Factual recall read by a language model with its own tokenizer (issue 16).

``FactualTask`` is ``TextTask`` with relation-template prompts about the subjects of
``factual.knowledge`` as its inputs ("The capital of France is"), the named positions SUBJ
(the subject's last token) and END (the prompt's last token), the subject's attributes
(country, capital, language, currency, region) with the relation and template asked, and a
validity check (a known subject in a known template). Any causal LM can be read with it
(``--task factual``): the bundled factual model, a local GPT-2.

Without a corpus the decoder's inputs are the prompts of every template (the eval templates'
for its held-out queries); with one (``--corpus``), the corpus's pieces.
"""

from __future__ import annotations

import functools
import random
import re
from typing import Any, Iterable

import torch

from inversionview.errors import echo
from inversionview.factual.knowledge import ATTRIBUTES, RELATIONS, FactPrompt, Knowledge
from inversionview.tasks.base import TaskInputError, Validity
from inversionview.tasks.text import TextTask
from inversionview.text.sources import CorpusSource
from inversionview.text.tokenizer import HFTokenizer

EXAMPLE = "The capital of France is"
POSITION_NAMES = ("SUBJ", "END")


@functools.cache
def _patterns() -> tuple[tuple[re.Pattern, str, str], ...]:
    """(regex, relation, template) for every template, longest first (the most specific)."""
    found = []
    for relation in RELATIONS.values():
        for template, _ in relation.templates("all"):
            head, tail = template.split("{subject}")
            found.append((re.compile(re.escape(head) + r"(?P<subject>.+?)" + re.escape(tail) + "$"),
                          relation.name, template))
    return tuple(sorted(found, key=lambda item: -len(item[2])))


class FactualTask(TextTask):
    name = "factual"
    position_names = POSITION_NAMES
    attribute_names = ("subject", "kind", "relation", *ATTRIBUTES, "template")
    example_text = EXAMPLE
    site_kinds = ("resid_pre", "head", "mlp_out")
    needs_corpus = False  # the task draws its own prompts

    def __init__(self, tokenizer: HFTokenizer, context: int, source: CorpusSource | None = None,
                 example: str = EXAMPLE, default_query: tuple[str, str] = ("a0.0", "END")):
        super().__init__(tokenizer, context, source, example, default_query)
        self.knowledge = Knowledge.load()
        self._train = self.knowledge.prompts("train")
        self._eval = self.knowledge.prompts("eval")
        if source is None:
            longest = max(len(self.vocab.encode(p.text)) for p in self._train + self._eval)
            self.n_ctx = min(longest + 2, context)

    # ----- sampling ---------------------------------------------------------------------

    def sample_prompts(self, n: int, generator: torch.Generator, held_out: bool = False
                       ) -> list[FactPrompt]:
        """``n`` prompts drawn with replacement (``held_out``: of the eval templates only)."""
        rng = random.Random(int(torch.randint(0, 2**62, (1,), generator=generator)))
        pool = self._eval if held_out else self._train + self._eval
        return [rng.choice(pool) for _ in range(n)]

    def sample_tokens(self, n: int, generator: torch.Generator, held_out: bool = False
                      ) -> torch.Tensor:
        if self.source is not None:
            return self.source.sample_tokens(n, generator, held_out)
        rows = [self.encode(p.text) + [self.vocab.eos_id]
                for p in self.sample_prompts(n, generator, held_out)]
        batch = torch.full((n, max(self.n_ctx, max(map(len, rows)))), self.vocab.pad_id,
                           dtype=torch.long)
        for index, row in enumerate(rows):
            batch[index, : len(row)] = torch.tensor(row)
        return batch

    # ----- positions --------------------------------------------------------------------

    def parse(self, text: str) -> tuple[str, str, str] | None:
        """(subject, relation, template) of a prompt of a known template about a known
        subject, else None."""
        for pattern, relation, template in _patterns():
            match = pattern.match(text)
            if match and match["subject"] in self.knowledge.subjects:
                return match["subject"], relation, template
        return None

    def named_positions(self, text: str) -> dict[str, int]:
        return self.named_positions_in_tokens(self.encode(text))

    def named_positions_in_tokens(self, ids) -> dict[str, int]:
        ids = ids.tolist() if isinstance(ids, torch.Tensor) else list(ids)
        real = [token for token in ids if token not in (self.vocab.pad_id, self.vocab.eos_id)]
        named = {"END": len(real) - 1}
        strings = self.vocab.token_strings(real)
        text = "".join(strings[1:])  # BOS's string is not part of the text
        parsed = self.parse(text)
        if parsed is not None:
            end = text.index(parsed[0]) + len(parsed[0])  # the first mention is the subject's
            covered = 0
            for index, piece in enumerate(strings[1:], start=1):
                covered += len(piece)
                if covered >= end:
                    named["SUBJ"] = index
                    break
        return named

    def resolve_in_tokens(self, ids, position: str | int) -> int:
        name = str(position).strip()
        if name == "SUBJ" and name not in self.named_positions_in_tokens(ids):
            raise TaskInputError(
                f"this text has no SUBJ: it needs a known subject (a country or a capital, "
                f"{len(self.knowledge)} known) in one of the relation templates, e.g. "
                f"{self.example!r}")
        return super().resolve_in_tokens(ids, position)

    # ----- reading and checking -----------------------------------------------------------

    def attributes(self, text: str) -> dict[str, Any]:
        parsed = self.parse(text)
        if parsed is None:
            return {}
        subject, relation, template = parsed
        known = self.knowledge.subjects[subject]
        return {"subject": subject, "kind": known.kind, "relation": relation,
                **known.attributes, "template": template}

    def validate(self, text: str) -> Validity:
        if self.parse(text) is None:
            return Validity(False, False, None, "not a known subject in a relation template")
        return Validity(True, True, None)

    # ----- contrasts for patching ---------------------------------------------------------

    contrast_kinds = ("subject",)

    def answer_pairs(self, n: int, kind: str, seed: int = 0) -> dict[str, list]:
        """``n`` prompts and, for each, the same template about another subject whose answer
        begins with another token; the answers are the first tokens of the two objects."""
        if kind not in self.contrast_kinds:
            raise TaskInputError(f"unknown contrast {kind!r} for factual recall; use one of: "
                                 f"{', '.join(self.contrast_kinds)}")
        self.check_first_tokens(p.answer for p in self._eval)
        rng = random.Random(seed)
        by_template: dict[str, list[FactPrompt]] = {}
        for prompt in self._train + self._eval:
            by_template.setdefault(prompt.template, []).append(prompt)
        originals, contrasts = [], []
        while len(originals) < n:
            prompt = rng.choice(self._eval)
            first = self.first_token(prompt.answer)
            others = [p for p in by_template[prompt.template] if self.first_token(p.answer) != first]
            if not others:
                raise TaskInputError(f"no subject's answer to {echo(prompt.template)} begins "
                                     f"with another token than {echo(first)}: no contrast "
                                     "changes the answer's first token")
            originals.append(prompt)
            contrasts.append(rng.choice(others))
        return {"original": [p.text for p in originals], "contrast": [c.text for c in contrasts],
                "answer": [self.first_token(p.answer) for p in originals],
                "contrast_answer": [self.first_token(c.answer) for c in contrasts]}

    @functools.lru_cache(maxsize=4096)
    def first_token(self, answer: str) -> str:
        """The first token of `` answer`` (with its leading space), as text."""
        return self.vocab.token_strings(self.vocab.encode(" " + answer)[:1])[0]

    def check_first_tokens(self, answers: Iterable[str]) -> None:
        """A TaskInputError when the tokenizer begins any of ``answers`` with a token that is
        only the space (" Paris" as " " + "Paris"): recall is graded on the answer's first
        token, which then says nothing of the answer (every answer would be the same token
        and top-1 would read 1.000). The IOI task refuses such a tokenizer alike: its names
        must be one token with their leading space."""
        answers = list(dict.fromkeys(answers))
        bare = [answer for answer in answers if not self.first_token(answer).strip()]
        if bare:
            shown = ", ".join(repr(" " + answer) for answer in bare[:6]) + ", ..." * (len(bare) > 6)
            raise TaskInputError(
                f"the tokenizer begins {len(bare)} of {len(answers)} answers with a token that "
                f"is only the space ({shown}); factual recall is graded on the answer's first "
                f"token, which must hold the start of the word with its leading space (like "
                f"' Paris' or ' Par'); give a model whose tokenizer keeps the space with the "
                f"word that follows it")


__all__ = ["EXAMPLE", "FactualTask"]
