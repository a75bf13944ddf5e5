"""Activation patching (method.md §9): does the information a preimage shows matter to the
model's answer?

    pairs = contrast_pairs(model.task, n=500, kind="flip", target="count", seed=0)
    experiment = PatchingExperiment(model, pairs)
    report = experiment.cumulative(parse_components(model, "a0.0@query,a1.0@:"))

The original run's activation at (site, position) is replaced by the contrast run's activation
at the same named position (or index), and the logit difference LD = logit(original answer) -
logit(contrast answer) is read where the model predicts the answer. A component that carries
the whole effect flips the sign of LD on its own.
"""

from __future__ import annotations

import json
import operator
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from inversionview import options
from inversionview.errors import echo
from inversionview.files import input_kind
from inversionview.probed.subject import Subject
from inversionview.probed.sites import Site
from inversionview.tasks.abilities import Annotator
from inversionview.tasks.base import Task, TaskInputError


# ----- what is patched ------------------------------------------------------------------


@dataclass(frozen=True)
class Component:
    """One activation: a site at a named position (or an index)."""

    site: Site
    position: str | int

    @property
    def name(self) -> str:
        return f"{self.site.short}@{self.position}"


def parse_components(model: Subject, spec: str) -> list[Component]:
    """``"a0.0@query,a1.0@:"`` -> components, checked against the model and the task. On
    free text a position is anything a query takes (``last``, ``-2``, ``'last " John"'``),
    resolved in each text; a comma inside quotes does not split."""
    free_text = model.task.free_text
    allowed = (f"{', '.join(model.task.position_names)}, an index (negative from the end) or "
               f"a quoted token such as '\"the\"'" if free_text
               else f"{', '.join(model.task.position_names)} or an index")
    components = []
    for item in (part.strip() for part in _COMPONENT.findall(spec) or [spec]):
        site, sep, position = item.partition("@")  # a site name has no '@'; a token may
        position = position.strip()
        if not sep or not site or not position:
            raise TaskInputError(f"component {echo(item)} is not SITE@POSITION (e.g. a0.0@"
                                 f"{model.task.position_names[0]}); positions: {allowed}")
        index = re.fullmatch(r"-[0-9]+|[0-9]+" if free_text else r"[0-9]+", position)
        if position not in model.task.position_names and not index and not free_text:
            raise TaskInputError(f"unknown position {echo(position)} in {echo(item)}; use one of: "
                                 f"{allowed}")
        components.append(Component(model.site(site.strip()), int(position) if index else position))
    if not components:
        raise TaskInputError("no components given")
    return components


_COMPONENT = re.compile(r'(?:[^,"]|"[^"]*")+')  # comma-separated, commas in quotes kept


# ----- the test set -----------------------------------------------------------------------

_COMPARISONS = {"==": operator.eq, "!=": operator.ne, "<=": operator.le, ">=": operator.ge,
                "<": operator.lt, ">": operator.gt}
_CLAUSE = re.compile(r"^\s*(\w+)\s*(==|!=|<=|>=|<|>)\s*(-?\d+)\s*$")


def parse_filter(task: Annotator, expression: str | None) -> Callable[[dict[str, Any]], bool]:
    """``"A1==1"`` or ``"A1==1 and C2==0"`` (also ``,``) over the task's attributes."""
    if not expression:
        return lambda attributes: True
    clauses = []
    for clause in re.split(r"\s+and\s+|,", expression):
        match = _CLAUSE.match(clause)
        if match is None or match.group(1) not in task.attribute_names:
            raise TaskInputError(f"cannot read the filter clause {clause.strip()!r}: write "
                                 f"ATTRIBUTE OP INTEGER with OP one of {' '.join(_COMPARISONS)}, "
                                 f"ATTRIBUTE one of {', '.join(task.attribute_names)}")
        clauses.append((match.group(1), _COMPARISONS[match.group(2)], int(match.group(3))))
    return lambda attributes: all(name in attributes and attributes[name] is not None
                                  and compare(attributes[name], value)
                                  for name, compare, value in clauses)


@dataclass
class ContrastPairs:
    originals: list[str]
    contrasts: list[str]
    target: str
    kind: str
    places: tuple[str, ...] = ()
    filter: str | None = None
    skipped: int = 0  # originals without a contrast (e.g. counting inputs that cannot flip)
    filtered_out: int = 0  # originals the filter rejected
    # Pairs a user gave: the answer token ids whose logit difference is read after each text's
    # last token (None: the task's ``target`` answer, where the task predicts it).
    answers: list[int] | None = None
    contrast_answers: list[int] | None = None
    # The line of a pairs file each pair was read from (None: pairs are numbered 1, 2, ...).
    lines: list[int] | None = None

    def where(self, index: int) -> str:
        """How a message names pair ``index`` (from 0): its file and line, or its number."""
        return f"{self.kind} line {self.lines[index]}" if self.lines else f"pair {index + 1}"


PAIR_FIELDS = ("original", "contrast", "answer", "contrast_answer")


def given_pairs(task: Task, rows: list[dict[str, Any]], name: str = "given",
                lines: list[int] | None = None) -> ContrastPairs:
    """Pairs a user wrote: each row has ``original`` and ``contrast`` texts and, on free text,
    the ``answer`` and ``contrast_answer`` tokens (one token each, e.g. " Mary" and " John")
    whose logit difference is read after each text's last token. On a task, rows without
    answers use the task's target answer::

        given_pairs(model.task, [{"original": "When Mary and John went to the store, John gave
                                  a drink to", "contrast": "... Mary gave a drink to",
                                  "answer": " Mary", "contrast_answer": " John"}])

    ``lines``: the file line of each row, for messages (a pairs file's; else pair numbers).
    A pair whose answer and contrast answer are the same token is refused: its LD is 0 on
    every run, patched or not."""
    if not rows:
        raise TaskInputError("no pairs given; each pair needs original and contrast texts")
    answered = [all(key in row for key in ("answer", "contrast_answer")) for row in rows]
    if task.free_text and not all(answered):
        where = ContrastPairs([], [], "answer", name, lines=lines).where(answered.index(False))
        raise TaskInputError(f"{where} has no answer and contrast_answer; on free text each "
                             f"pair names the two tokens whose logit difference is read (e.g. "
                             f"\" Mary\" and \" John\")")
    pairs = ContrastPairs([], [], "answer" if any(answered) else task.targets[0], name,
                          lines=lines)
    if any(answered):
        pairs.answers, pairs.contrast_answers = [], []
    for index, row in enumerate(rows):
        where = pairs.where(index)
        unknown = set(row) - set(PAIR_FIELDS)
        if unknown or not all(isinstance(row.get(k), str) for k in ("original", "contrast")):
            raise TaskInputError(f"{where} must have text fields original and contrast"
                                 f"{', answer and contrast_answer' if any(answered) else ''}"
                                 f"{'; unknown: ' + ', '.join(sorted(unknown)) if unknown else ''}")
        if any(answered) != answered[index]:
            raise TaskInputError(f"{where}: give answer and contrast_answer on every pair "
                                 f"or on none")
        # too long, or a character the model cannot read: one line
        encoded = {key: task.encode(row[key]) for key in ("original", "contrast")}
        pairs.originals.append(row["original"])
        pairs.contrasts.append(row["contrast"])
        if pairs.answers is None:  # the task's answer, where the texts hold it
            at = task.target_index(row["original"], pairs.target)
            answer = int(encoded["original"][at])
            if (task.target_index(row["contrast"], pairs.target) == at
                    and int(encoded["contrast"][at]) == answer):
                raise TaskInputError(_same_answer(task, f"{where} ({pairs.target})", answer))
        else:
            answer = _one_token(task, row["answer"], where, "answer")
            contrast_answer = _one_token(task, row["contrast_answer"], where, "contrast_answer")
            if answer == contrast_answer:
                raise TaskInputError(_same_answer(task, where, answer))
            pairs.answers.append(answer)
            pairs.contrast_answers.append(contrast_answer)
    return pairs


def _same_answer(task: Task, where: str, token: int) -> str:
    return (f"{where}: the answer and the contrast's answer are the same token "
            f"({echo(task.token_strings([token])[0])}): their logit difference is 0 on every "
            f"run, patched or not; a contrast must change the answer")


# The most a pairs file may hold (read into memory whole): a pair is a few hundred bytes, so
# this is more pairs than --n takes (1,000,000).
MAX_PAIRS_BYTES = 256 * 1024**2


def read_pairs(path: Path) -> list[dict[str, Any]]:
    """The rows of a pairs file: JSON Lines, one object per line with ``original``,
    ``contrast`` and (on free text) ``answer`` and ``contrast_answer``; blank lines skipped."""
    return read_pair_lines(path)[0]


def read_pair_lines(path: Path) -> tuple[list[dict[str, Any]], list[int]]:
    """(the rows of a pairs file, as ``read_pairs``; the line each was read from)."""
    expected = (f"JSON Lines, one object per line with fields {', '.join(PAIR_FIELDS)} (e.g. "
                f"{{\"original\": \"...John gave a drink to\", \"contrast\": \"...Mary gave a "
                f"drink to\", \"answer\": \" Mary\", \"contrast_answer\": \" John\"}})")
    if input_kind(Path(path), TaskInputError, "pairs file", expected, MAX_PAIRS_BYTES) != "file":
        raise TaskInputError(f"pairs file {path} is a directory; expected {expected}")
    try:
        lines = path.read_bytes().decode("utf-8").splitlines()
    except OSError as problem:
        raise TaskInputError(f"cannot read {path} ({problem.strerror or problem}); expected "
                             f"{expected}") from None
    except UnicodeDecodeError:
        raise TaskInputError(f"{path} is not UTF-8 text; expected {expected}") from None
    rows, numbers = [], []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as problem:
            raise TaskInputError(f"{path} line {number} is not JSON ({problem.msg}); expected "
                                 f"{expected}") from None
        if not isinstance(row, dict):
            raise TaskInputError(f"{path} line {number} is not a JSON object; expected {expected}")
        rows.append(row)
        numbers.append(number)
    if not rows:
        raise TaskInputError(f"{path} holds no pairs; expected {expected}")
    return rows, numbers


def _one_token(task: Task, text: Any, where: str, field_name: str) -> int:
    if not isinstance(text, str) or not text:
        raise TaskInputError(f"{where}: {field_name} must be a non-empty text (one token)")
    ids = task.encode(text)[1:]  # without BOS
    strings = task.token_strings(task.encode(text))[1:]
    if len(ids) != 1:
        raise TaskInputError(f"{where}: {field_name} {echo(text)} is {len(ids)} tokens "
                             f"({', '.join(repr(s) for s in strings)}); the logit difference "
                             f"needs one token (mind the leading space: \" Mary\")")
    return ids[0]


def contrast_pairs(task: Task, n: int, kind: str, target: str | None = None, seed: int = 0,
                   places: tuple[str, ...] = (), filter: str | None = None,
                   max_draws: int = 200_000) -> ContrastPairs:
    """``n`` (original, contrast) pairs: originals from the task sampler (seeded) that pass
    ``filter``, each with a contrast of ``kind`` whose ``target`` answer token differs."""
    n, seed = options.PAIRS.check(n), options.SEED.check(seed)
    if not task.targets:  # no answer token of its own to flip: pairs with their answers
        drawn = task.answer_pairs(n, kind, seed)
        pairs = given_pairs(task, [dict(zip(drawn, row)) for row in zip(*drawn.values())], kind)
        pairs.kind = kind
        return pairs
    target = target or task.targets[0]
    keep = parse_filter(task, filter)
    generator = torch.Generator().manual_seed(seed)
    pairs = ContrastPairs([], [], target, kind, tuple(places), filter)
    drawn = 0
    while len(pairs.originals) < n:
        if drawn >= max_draws:
            raise TaskInputError(f"only {len(pairs.originals)} of {n} pairs after {drawn:,} draws "
                                 f"(filter {filter!r} rejected {pairs.filtered_out:,}, "
                                 f"{pairs.skipped:,} had no contrast)")
        for text in task.decode_batch(task.sample_tokens(1024, generator)):
            drawn += 1
            if not keep(task.attributes(text)):
                pairs.filtered_out += 1
                continue
            contrast = task.make_contrast(text, kind, generator, target, tuple(places))
            if contrast is None:
                pairs.skipped += 1
                continue
            pairs.originals.append(text)
            pairs.contrasts.append(contrast)
            if len(pairs.originals) == n:
                break
    return pairs


# ----- the experiment ---------------------------------------------------------------------


@dataclass
class PatchingStep:
    components: list[str]
    patched_ld: float  # mean over the pairs
    effect: float  # patched_ld - original_ld
    order: str = "each"  # "each" (alone, or all together), "left_to_right", "right_to_left"


@dataclass
class PatchingReport:
    original_ld: float
    contrast_ld: float  # LD of the contrast run itself (the value full patching reaches)
    n: int
    target: str
    contrast: str
    skipped: int
    filtered_out: int
    steps: list[PatchingStep] = field(default_factory=list)  # one component at a time, or left to right
    steps_right_to_left: list[PatchingStep] | None = None

    def to_record(self) -> dict[str, Any]:
        return asdict(self)


class PatchingExperiment:
    """The original and contrast runs of a set of pairs, ready to patch."""

    def __init__(self, model: Subject, pairs: ContrastPairs):
        if not pairs.originals:
            raise TaskInputError("no pairs to patch")
        self.model, self.pairs = model, pairs
        self.original_tokens = model.tokens(pairs.originals)
        self.contrast_tokens = model.tokens(pairs.contrasts)
        if pairs.answers is not None:
            self._read_after_the_last_token()
        else:
            self._read_where_the_task_answers()
        self.original_ld = self.logit_difference(model.processed_logits(self.original_tokens))
        self.contrast_ld = self.logit_difference(model.processed_logits(self.contrast_tokens),
                                                 self.contrast_predict_at)

    def _read_where_the_task_answers(self) -> None:
        task, pairs, device = self.model.task, self.pairs, self.model.device
        index = [task.target_index(text, pairs.target) for text in pairs.originals]
        contrast_index = [task.target_index(text, pairs.target) for text in pairs.contrasts]
        if index != contrast_index:
            raise TaskInputError("an original and its contrast predict the answer at different "
                                 "positions; LD needs them at the same one")
        self.predict_at = self.contrast_predict_at = torch.tensor(index, device=device) - 1
        rows = torch.arange(len(index), device=device)
        self.answer = self.original_tokens[rows, self.predict_at + 1]
        self.contrast_answer = self.contrast_tokens[rows, self.predict_at + 1]

    def _read_after_the_last_token(self) -> None:
        """Given answers: LD is read where each text ends (its next token is the answer)."""
        task, device = self.model.task, self.model.device
        self.predict_at = task.lengths(self.original_tokens).to(device) - 1
        self.contrast_predict_at = task.lengths(self.contrast_tokens).to(device) - 1
        self.answer = torch.tensor(self.pairs.answers, device=device)
        self.contrast_answer = torch.tensor(self.pairs.contrast_answers, device=device)

    def logit_difference(self, logits: torch.Tensor, predict_at: torch.Tensor | None = None
                         ) -> torch.Tensor:
        """``[n]`` logit(original answer) - logit(contrast answer) where the answer is
        predicted (in the original runs unless ``predict_at`` says otherwise)."""
        predict_at = self.predict_at if predict_at is None else predict_at
        rows = torch.arange(logits.shape[0], device=logits.device)
        at = logits[rows, predict_at]
        return at[rows, self.answer] - at[rows, self.contrast_answer]

    def patched_ld(self, components: list[Component]) -> torch.Tensor:
        """``[n]`` LD of the original runs with ``components`` taken from the contrast runs."""
        if not components:
            return self.original_ld
        return self.logit_difference(self.model.run_patched(
            self.original_tokens, self.patches(components)))

    def patches(self, components: list[Component]) -> dict[Site, tuple[torch.Tensor, torch.Tensor]]:
        task = self.model.task
        sites = sorted({c.site for c in components})
        contrast = self.model.run_sites(self.contrast_tokens, sites)
        n, length = self.original_tokens.shape
        rows = torch.arange(n)
        patches: dict[Site, tuple[torch.Tensor, torch.Tensor]] = {}
        for component in components:
            at = torch.tensor(_positions(task, self.pairs.originals, component, "original"))
            source = torch.tensor(_positions(task, self.pairs.contrasts, component, "contrast"))
            where, values = patches.get(component.site, (
                torch.zeros(n, length, dtype=torch.bool, device=self.model.device),
                torch.zeros(n, length, self.model.d_model, device=self.model.device)))
            where[rows, at] = True
            values[rows, at] = contrast[component.site][rows, source]
            patches[component.site] = (where, values)
        return patches

    def _step(self, components: list[Component], order: str = "each") -> PatchingStep:
        patched = self.patched_ld(components).mean().item()
        return PatchingStep([c.name for c in components], round(patched, 6),
                            round(patched - self.original_ld.mean().item(), 6), order)

    def _report(self) -> PatchingReport:
        return PatchingReport(round(self.original_ld.mean().item(), 6),
                              round(self.contrast_ld.mean().item(), 6), len(self.pairs.originals),
                              self.pairs.target, self.pairs.kind, self.pairs.skipped,
                              self.pairs.filtered_out)

    def each(self, components: list[Component]) -> PatchingReport:
        """Each component patched alone, then (for several) all of them together."""
        report = self._report()
        report.steps = [self._step([c]) for c in components]
        if len(components) > 1:
            report.steps.append(self._step(components))
        return report

    def cumulative(self, components: list[Component]) -> PatchingReport:
        """Components added one at a time, left to right (``steps``) and right to left."""
        report = self._report()
        report.steps = [self._step(components[: k + 1], "left_to_right") for k in range(len(components))]
        reverse = components[::-1]
        report.steps_right_to_left = [self._step(reverse[: k + 1], "right_to_left")
                                      for k in range(len(reverse))]
        return report


def _positions(task: Task, texts: list[str], component: Component, which: str) -> list[int]:
    """The index of ``component``'s position in each text; which pair lacks it, if one does."""
    indices = []
    for number, text in enumerate(texts, 1):
        try:
            indices.append(task.resolve_position(text, component.position))
        except TaskInputError as error:
            raise TaskInputError(f"{component.name} in the {which} of pair {number}: {error}"
                                 ) from None
    return indices


# ----- mean ablation ----------------------------------------------------------------------


@torch.no_grad()
def mean_ablation(model: Subject, texts: list[str], component: Component,
                  targets: tuple[str, ...], reference: list[str]) -> list[dict[str, Any]]:
    """Replace ``component`` by its mean over ``reference`` inputs; per target answer token:
    the mean KL(original || ablated) of the next-token distribution where it is predicted,
    the mean drop of the answer's logit, and the accuracy before and after."""
    task = model.task
    reference_tokens = model.tokens(reference)
    reference_at = torch.tensor([task.resolve_position(t, component.position) for t in reference])
    values = model.run_sites(reference_tokens, [component.site])[component.site]
    mean = values[torch.arange(len(reference)), reference_at].mean(dim=0)
    tokens = model.tokens(texts)
    n, length = tokens.shape
    where = torch.zeros(n, length, dtype=torch.bool, device=model.device)
    where[torch.arange(n), torch.tensor([task.resolve_position(t, component.position) for t in texts])] = True
    patches = {component.site: (where, mean.expand(n, length, -1))}
    clean, ablated = model.processed_logits(tokens), model.run_patched(tokens, patches)
    rows = []
    for target in targets:
        index = torch.tensor([task.target_index(t, target) for t in texts])
        keep = index < length
        r, at = torch.arange(n)[keep], index[keep] - 1
        answer = tokens[r, at + 1]
        log_p, log_q = clean[r, at].log_softmax(-1), ablated[r, at].log_softmax(-1)
        kl = (log_p.exp() * (log_p - log_q)).sum(-1)
        drop = clean[r, at, answer] - ablated[r, at, answer]
        rows.append({"target": target, "n": int(keep.sum()), "kl": round(kl.mean().item(), 6),
                     "logit_drop": round(drop.mean().item(), 6),
                     "logit_decrement_rate": round((drop > 0).float().mean().item(), 4),
                     "accuracy": round((clean[r, at].argmax(-1) == answer).float().mean().item(), 4),
                     "ablated_accuracy": round((ablated[r, at].argmax(-1) == answer).float().mean().item(), 4)})
    return rows


def sampled_mean_ablation(model: Subject, component: Component, n: int, seed: int = 0
                          ) -> list[dict[str, Any]]:
    """``mean_ablation`` at every answer token of the task, on ``n`` inputs drawn with
    ``seed``, the mean taken over ``n`` others (drawn with ``seed + 1``)."""
    texts = model.task.sample(n, seed=seed)
    reference = model.task.sample(n, seed=seed + 1)
    return mean_ablation(model, texts, component, model.task.targets, reference)
