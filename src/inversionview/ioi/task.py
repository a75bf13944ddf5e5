"""Indirect object identification read by a language model with its own tokenizer (issue 15).

``IOITask`` is ``TextTask`` with the IOI prompt distribution (``ioi.prompts``) as its
inputs, the named positions IO, S1, S1+1, S2 and END, the attributes of a prompt (IO and S
names, order, template, place, object, the names' positions) and a validity check, so that
the decoder's data stream, the query engine, the agreement table and patching run on IOI as
on a toy task. Any causal LM whose tokenizer keeps enough of the names whole can be read
with it (``--task ioi``): the bundled IOI model, a local GPT-2 small.

Inputs are prompts that stop where the answer is predicted ("... handed the key to"); the
decoder's held-out queries come from the held-out templates.
"""

from __future__ import annotations

import random
from typing import Any

import torch

from inversionview.ioi.prompts import (ORDERS, POSITION_NAMES, IOIError, IOIGenerator,
                                       IOIPrompt)
from inversionview.tasks.base import TaskInputError, Validity
from inversionview.tasks.text import TextTask
from inversionview.text.sources import CorpusSource
from inversionview.text.tokenizer import HFTokenizer

EXAMPLE = "Yesterday Anna and Paul walked to the market, and Paul handed the key to"


class IOITask(TextTask):
    name = "ioi"
    position_names = POSITION_NAMES
    attribute_names = ("io", "s", "order", "template", "place", "object", "io_position",
                       "s1_position", "s2_position")
    example_text = EXAMPLE
    # The paper's IOI sites: the embeddings, every head's output, every MLP's output.
    site_kinds = ("resid_pre", "head", "mlp_out")
    needs_corpus = False  # IOI prompts are drawn by the task itself

    def __init__(self, tokenizer: HFTokenizer, context: int, source: CorpusSource | None = None,
                 example: str = EXAMPLE, default_query: tuple[str, str] = ("a0.0", "END")):
        super().__init__(tokenizer, context, source, example, default_query)
        try:
            self.prompts = IOIGenerator(tokenizer)
        except IOIError as error:
            raise TaskInputError(f"{error} ({tokenizer.source})") from None
        if source is None:
            self.n_ctx = min(self._longest_prompt() + 2, context)

    def _longest_prompt(self) -> int:
        """Tokens of the longest prompt the generator can make (names are one token each)."""
        longest = 0
        name = self.prompts.names[0]
        for template in self.prompts.templates.values():
            for place in self.prompts.places:
                text = template.fill(name, name, name, place, "")
                longest = max(longest, len(self.vocab.encode(text)) + max(
                    len(self.vocab.encode(" " + obj)) for obj in self.prompts.objects))
        return longest

    # ----- sampling ---------------------------------------------------------------------

    def sample_prompts(self, n: int, generator: torch.Generator, held_out: bool = False
                       ) -> list[IOIPrompt]:
        """``n`` prompts of the train-or-eval templates (``held_out``: the eval ones only)."""
        rng = random.Random(int(torch.randint(0, 2**62, (1,), generator=generator)))
        split = "eval" if held_out else "all"
        return [self.prompts.prompt(rng, split=split) for _ in range(n)]

    def sample_tokens(self, n: int, generator: torch.Generator, held_out: bool = False
                      ) -> torch.Tensor:
        if self.source is not None:
            return self.source.sample_tokens(n, generator, held_out)
        texts = [prompt.text for prompt in self.sample_prompts(n, generator, held_out)]
        rows = [ids + [self.vocab.eos_id] for ids in map(self.encode, texts)]
        batch = torch.full((n, max(self.n_ctx, max(map(len, rows)))), self.vocab.pad_id,
                           dtype=torch.long)
        for index, row in enumerate(rows):
            batch[index, : len(row)] = torch.tensor(row)
        return batch

    # ----- contrasts for patching ---------------------------------------------------------

    contrast_kinds = ("abc", "swap")

    def answer_pairs(self, n: int, kind: str, seed: int = 0) -> dict[str, list]:
        """``n`` prompts and their ``kind`` contrasts (``abc``: S2 becomes a third name;
        ``swap``: IO and S trade places), with IO and S as the answer tokens: the logit
        difference IO - S is read after END in both runs."""
        if kind not in self.contrast_kinds:
            raise TaskInputError(f"unknown contrast {kind!r} for IOI; use one of: "
                                 f"{', '.join(self.contrast_kinds)}")
        rng = random.Random(seed)
        originals = [self.prompts.prompt(rng) for _ in range(n)]
        contrasts = [self.prompts.abc(p, rng.randrange(2**62)) if kind == "abc"
                     else self.prompts.swap(p) for p in originals]
        return {"original": [p.text for p in originals], "contrast": [c.text for c in contrasts],
                "answer": [p.answer for p in originals],
                "contrast_answer": [p.wrong_answer for p in originals]}

    # ----- positions --------------------------------------------------------------------

    def named_positions(self, text: str) -> dict[str, int]:
        return self.named_positions_in_tokens(self.encode(text))

    def named_positions_in_tokens(self, ids) -> dict[str, int]:
        ids = ids.tolist() if isinstance(ids, torch.Tensor) else list(ids)
        real = [token for token in ids if token not in (self.vocab.pad_id, self.vocab.eos_id)]
        parsed = self.prompts.parse_ids(real)
        named = {} if parsed is None else dict(parsed["positions"])
        if parsed is None:  # an ABC prompt: three names once each; the third fills S2's slot
            mentions = [i for i, token in enumerate(real) if token in self.prompts.names_by_id]
            if len(mentions) == 3 and len({real[i] for i in mentions}) == 3:
                named["S2"] = mentions[2]
        named["END"] = len(real) - 1
        return named

    def resolve_in_tokens(self, ids, position: str | int) -> int:
        name = str(position).strip()
        if name in POSITION_NAMES and name not in self.named_positions_in_tokens(ids):
            known = ", ".join(self.prompts.names[:8])
            raise TaskInputError(
                f"this text has no {name}: IO, S1, S1+1 and S2 need two of the task's names, "
                f"one once (IO) and one twice (S), each one token with its leading space "
                f"({known}, ... {len(self.prompts.names)} names), e.g. {self.example!r}")
        return super().resolve_in_tokens(ids, position)

    # ----- reading and checking -----------------------------------------------------------

    def attributes(self, text: str) -> dict[str, Any]:
        try:
            ids = self.encode(text)
        except TaskInputError:
            return {}
        parsed = self.prompts.parse_ids(ids)
        if parsed is None:
            return {}
        at = parsed["positions"]
        matched = self.prompts.match_template(text) or {}
        return {"io": parsed["io"], "s": parsed["s"], "order": parsed["order"],
                "template": matched.get("template"), "place": matched.get("PLACE"),
                "object": matched.get("OBJECT"), "io_position": at["IO"],
                "s1_position": at["S1"], "s2_position": at["S2"]}

    def validate(self, text: str) -> Validity:
        attributes = self.attributes(text)
        if not attributes:
            return Validity(False, False, None, "not two of the task's names with one repeated")
        if attributes["template"] is None:
            return Validity(True, False, None, "names in place, but no template matches")
        if attributes["order"] not in ORDERS:  # pragma: no cover - parse_ids only gives these
            return Validity(True, False, None, "unknown order")
        return Validity(True, True, None)

    def probed_config(self) -> dict[str, Any]:
        """The bundled IOI model's shape: 4 layers of 8 heads, d 256 (more heads per layer
        than the text default, so that the circuit's roles can go to separate heads)."""
        return {**super().probed_config(), "n_head": 8}


__all__ = ["EXAMPLE", "IOITask"]
