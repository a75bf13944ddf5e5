"""Three-digit addition (method.md §3.2): ``B`` + a + ``+`` + b + ``=`` + (a+b) + ``E``.

100 <= a, b <= 999, most significant digit first; the sum is written as is (3 or 4 digits).
Example: ``B615+861=1476E``. Positions: 0 B, 1-3 F1 F2 F3, 4 +, 5-7 S1 S2 S3, 8 =, 9-12 A1..A4
(A4 only for 4-digit sums), then E. The whole input space (810,000 pairs) can be enumerated.
"""

from __future__ import annotations

import re
from typing import Any

import torch

from inversionview.errors import echo
from inversionview.tasks.base import Relation, Task, TaskInputError, Validity, Vocabulary

OPERAND_MIN, OPERAND_MAX = 100, 999
N_OPERANDS = OPERAND_MAX - OPERAND_MIN + 1  # 900
INPUT_SPACE_SIZE = N_OPERANDS**2  # 810,000

_GRAMMAR = re.compile(r"^B(\d{3})\+(\d{3})=(\d{1,4})E$")
_FIXED_POSITIONS = {"F1": 1, "F2": 2, "F3": 3, "+": 4, "S1": 5, "S2": 6, "S3": 7, "=": 8}
_ANSWER_NAMES = ("A1", "A2", "A3", "A4")
_OPERAND_DIGITS = ("F1", "F2", "F3", "S1", "S2", "S3")
_EQUALS = 8


class AdditionTask(Task):
    name = "addition"
    vocab = Vocabulary(tuple("0123456789") + ("B", "+", "=", "E", "P"))
    n_ctx = 14  # B + 3 + + + 3 + = + 4 + E
    sites = ("x0.pre", "a0.0", "a0.1", "a0.2", "a0.3", "x0.mid", "x0.post",
             "a1.0", "a1.1", "a1.2", "a1.3", "x1.mid", "x1.post")
    position_names = ("F1", "F2", "F3", "+", "S1", "S2", "S3", "=", "A1", "A2", "A3", "A4")
    attribute_names = ("F1", "F2", "F3", "S1", "S2", "S3", "A1", "A2", "A3", "A4", "C2", "C3",
                       "a", "b", "sum")
    example = "B615+861=1476E"
    # After layer-0 attention at '=': the hundreds digits combined with the tens' carry.
    default_query = ("x0.mid", "=")
    fuzzy_attributes = ("F1", "F2", "F3", "S1", "S2", "S3", "A1", "A2", "A3")
    # The decoder's held-out evaluation: the operator, "=" and the answer digits.
    eval_positions = ("+", "=", "A1", "A2", "A3")

    targets = _ANSWER_NAMES  # A4 is the 'E' of a 3-digit sum
    contrast_kinds = ("resample",)

    def derived_relations(self) -> list[Relation]:
        """Per place (1 hundreds, 2 tens, 3 ones): its two digits in either order
        (``{F1,S1}``, the paper's commutativity), their sum (``F1+S1``) and the sum within
        one (the fuzzy carry)."""
        relations = []
        for place in "123":
            first, second = f"F{place}", f"S{place}"
            relations.append(Relation(f"{{{first},{second}}}",
                                      lambda a, f=first, s=second: tuple(sorted((a[f], a[s])))))
        for place in "123":
            first, second = f"F{place}", f"S{place}"
            total = (lambda a, f=first, s=second: a[f] + a[s])
            relations.append(Relation(f"{first}+{second}", total))
            relations.append(Relation(f"{first}+{second}", total, fuzzy=True))
        return relations

    def describe_vocabulary(self) -> str:
        return "0-9, +, =, B (BOS), E (EOS), P (PAD)"

    # ----- sampling and enumeration ----------------------------------------------------

    def sample_tokens(self, n: int, generator: torch.Generator) -> torch.Tensor:
        operands = torch.randint(OPERAND_MIN, OPERAND_MAX + 1, (n, 2), generator=generator)
        return self.tokens_of(operands[:, 0], operands[:, 1])

    def tokens_of(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """``[n, n_ctx]`` tokens of the inputs ``a + b`` (operands in 100..999, shape ``[n]``)."""
        n = a.shape[0]
        total = a + b
        tokens = torch.full((n, self.n_ctx), self.vocab.pad_id, dtype=torch.long)
        tokens[:, 0] = self.vocab.bos_id
        tokens[:, 1:4] = _digits(a, 3)
        tokens[:, 4] = self.vocab.id_of("+")
        tokens[:, 5:8] = _digits(b, 3)
        tokens[:, 8] = self.vocab.id_of("=")
        four = total >= 1000
        sum_digits = _digits(total, 4)  # digit ids equal digit values
        tokens[four, 9:13] = sum_digits[four]
        tokens[four, 13] = self.vocab.eos_id
        tokens[~four, 9:12] = sum_digits[~four, 1:]
        tokens[~four, 12] = self.vocab.eos_id
        return tokens

    def enumerate_tokens(self) -> torch.Tensor:
        """All 810,000 inputs, ``[810000, n_ctx]``, ordered by a then b."""
        operands = torch.arange(OPERAND_MIN, OPERAND_MAX + 1)
        a = operands.repeat_interleave(N_OPERANDS)
        b = operands.repeat(N_OPERANDS)
        return self.tokens_of(a, b)

    def complete(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows whose operand slots hold two operands in 100..999 get their sum written anew
        (3 or 4 digits, then E); any other row is not an input (ok False)."""
        n, width = tokens.shape
        ok = torch.zeros(n, dtype=torch.bool)
        if width < 9:
            return tokens, ok
        digits = tokens[:, [1, 2, 3, 5, 6, 7]]
        ok = ((tokens[:, 0] == self.vocab.bos_id) & (tokens[:, 4] == self.vocab.id_of("+"))
              & (tokens[:, 8] == self.vocab.id_of("=")) & (digits <= 9).all(dim=1)
              & (digits[:, 0] > 0) & (digits[:, 3] > 0))
        powers = torch.tensor([100, 10, 1])
        a = (digits[:, :3].clamp(max=9) * powers).sum(dim=1).clamp(OPERAND_MIN, OPERAND_MAX)
        b = (digits[:, 3:].clamp(max=9) * powers).sum(dim=1).clamp(OPERAND_MIN, OPERAND_MAX)
        written = torch.full((n, max(width, self.n_ctx)), self.vocab.pad_id, dtype=torch.long)
        written[:, :self.n_ctx] = self.tokens_of(a, b)
        ok &= (written[:, width:] == self.vocab.pad_id).all(dim=1)  # the sum fits the width
        return torch.where(ok[:, None], written[:, :width], tokens), ok

    def next_token_mask(self, prefix: torch.Tensor) -> torch.Tensor:
        """Two operands of three digits with no leading zero, ``+`` and ``=`` between and
        after them, then their sum digit by digit and ``E``."""
        n, width = prefix.shape
        allowed = torch.zeros(n, self.vocab.size, dtype=torch.bool)
        if width in (1, 5):
            allowed[:, 1:10] = True
        elif width in (2, 3, 6, 7):
            allowed[:, :10] = True
        elif width in (4, 8):
            allowed[:, self.vocab.id_of("+" if width == 4 else "=")] = True
        elif width < self.n_ctx:
            powers = torch.tensor([100, 10, 1])
            a = (prefix[:, 1:4].clamp(max=9) * powers).sum(dim=1).clamp(OPERAND_MIN, OPERAND_MAX)
            b = (prefix[:, 5:8].clamp(max=9) * powers).sum(dim=1).clamp(OPERAND_MIN, OPERAND_MAX)
            following = self.tokens_of(a, b)[:, width]
            allowed[torch.arange(n), following] = following != self.vocab.pad_id
        return allowed

    # ----- positions ------------------------------------------------------------------

    def named_positions(self, text: str) -> dict[str, int]:
        text = self.normalize(text)
        named = {name: index for name, index in _FIXED_POSITIONS.items() if index < len(text)}
        end = text.find("E", _EQUALS)
        answer_end = end if end >= 0 else len(text)
        for offset, name in enumerate(_ANSWER_NAMES):
            index = _EQUALS + 1 + offset
            if index < answer_end:
                named[name] = index
        return named

    def query_position_mask(self, tokens: torch.Tensor) -> torch.Tensor:
        # Every digit, '+' and '=' (method.md §5): everything but B, E and P.
        special = (tokens == self.vocab.bos_id) | (tokens == self.vocab.eos_id) | (
            tokens == self.vocab.pad_id)
        return ~special

    # ----- reading and checking ---------------------------------------------------------

    def attributes(self, text: str) -> dict[str, Any]:
        """Operand digits, answer tokens as written (A4 None for 3-digit answers), carries
        C2 = [F2+S2 >= 10] and C3 = [F3+S3 >= 10], and a, b and their true sum."""
        match = _GRAMMAR.match(self.normalize(text))
        if match is None:
            return {}
        first, second, answer = match.groups()
        f, s = [int(c) for c in first], [int(c) for c in second]
        answer_digits = [int(c) for c in answer] + [None] * (4 - len(answer))
        attributes: dict[str, Any] = {
            "F1": f[0], "F2": f[1], "F3": f[2], "S1": s[0], "S2": s[1], "S3": s[2],
        }
        attributes.update(zip(_ANSWER_NAMES, answer_digits))
        attributes.update({
            "C2": int(f[1] + s[1] >= 10), "C3": int(f[2] + s[2] >= 10),
            "a": int(first), "b": int(second), "sum": int(first) + int(second),
        })
        return attributes

    def validate(self, text: str) -> Validity:
        match = _GRAMMAR.match(self.normalize(text))
        if match is None:
            return Validity(False, False, None, "does not match B<ddd>+<ddd>=<digits>E")
        first, second, answer = match.groups()
        correct = answer == str(int(first) + int(second))
        reason = ""
        if first[0] == "0" or second[0] == "0":
            reason = "an operand has a leading zero"
        elif len(answer) > 1 and answer[0] == "0":
            reason = "the answer has a leading zero"
        return Validity(True, reason == "", correct, reason)

    # ----- training and evaluation ------------------------------------------------------

    def loss_mask(self, tokens: torch.Tensor) -> torch.Tensor:
        # Full language modelling on every non-PAD token (the BOS is given, never predicted).
        next_is_token = torch.zeros_like(tokens, dtype=torch.bool)
        next_is_token[:, :-1] = tokens[:, 1:] != self.vocab.pad_id
        return next_is_token

    def answer_mask(self, tokens: torch.Tensor) -> torch.Tensor:
        # '=' and every answer digit: they predict A1..A4 and E.
        mask = self.loss_mask(tokens)
        mask[:, :_EQUALS] = False
        return mask

    def probed_config(self) -> dict[str, Any]:
        # The authors' checkpoint: 2 layers, d_model 32, 4 heads, d_mlp 128,
        # residual and embedding dropout 0.1.
        return dict(
            vocab_size=self.vocab.size, n_positions=self.n_ctx, n_embd=32, n_layer=2, n_head=4,
            n_inner=128, activation_function="gelu_new", resid_pdrop=0.1, embd_pdrop=0.1,
            attn_pdrop=0.0, layer_norm_epsilon=1e-5, bos_token_id=self.vocab.bos_id,
            eos_token_id=self.vocab.eos_id, pad_token_id=self.vocab.pad_id,
        )

    # ----- contrast inputs ------------------------------------------------------------

    def target_index(self, text: str, target: str) -> int:
        if target not in _ANSWER_NAMES:
            raise TaskInputError(f"unknown target {target!r} for the addition task; use one "
                                 f"of: {', '.join(_ANSWER_NAMES)}")
        return _EQUALS + 1 + _ANSWER_NAMES.index(target)

    def make_contrast(self, text: str, kind: str, generator: torch.Generator, target: str,
                      places: tuple[str, ...] = ()) -> str | None:
        if kind == "resample":
            return self.resample(text, places, generator, target)
        return super().make_contrast(text, kind, generator, target, places)

    def resample(self, text: str, places: tuple[str, ...], generator: torch.Generator,
                 target: str, tries: int = 100) -> str | None:
        """Redraw the operand digits at ``places`` (e.g. F1, S1), recompute the sum, and keep
        the first draw whose ``target`` answer token differs (method.md §9). A leading
        digit is drawn from 1..9, so no operand gets a leading zero. None if ``tries``
        draws all leave the target unchanged."""
        digits = self.attributes(text)
        if not digits:
            raise TaskInputError(f"{echo(text)} is not a well-formed addition input")
        bad = [place for place in places if place not in _OPERAND_DIGITS]
        if bad or not places:
            raise TaskInputError(f"resample needs operand places among {', '.join(_OPERAND_DIGITS)}"
                                 f"; got {', '.join(places) or 'none'}")
        index = self.target_index(text, target)
        answer = self.normalize(text)[index]
        for _ in range(tries):
            new = dict(digits)
            for place in places:
                low = 1 if place in ("F1", "S1") else 0
                new[place] = int(torch.randint(low, 10, (1,), generator=generator))
            a = 100 * new["F1"] + 10 * new["F2"] + new["F3"]
            b = 100 * new["S1"] + 10 * new["S2"] + new["S3"]
            contrast = f"B{a}+{b}={a + b}E"
            if contrast[index] != answer:
                return contrast
        return None


def _digits(values: torch.Tensor, width: int) -> torch.Tensor:
    """``[n, width]`` decimal digits of ``values``, most significant first, zero padded."""
    powers = 10 ** torch.arange(width - 1, -1, -1)
    return (values.unsqueeze(1) // powers) % 10
