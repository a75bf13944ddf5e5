"""Indirect-object-identification prompts, written for this project (issue 15).

An IOI prompt names two people, then repeats one of them (the subject, S) as the giver in a
second clause that stops where the other (the indirect object, IO) is the natural next word:

    "Yesterday Anna and Paul walked to the market, and Paul handed the key to"   -> " Anna"

``ABBA`` puts IO first ("Anna and Paul ... Paul"), ``BABA`` puts S first ("Paul and Anna ...
Paul"). The named positions are indices into ``BOS + tokens``: IO and S1 (the two first
mentions), S1+1 (the token after S1), S2 (the repeated S) and END (the last token, where the
answer is predicted).

    generator = IOIGenerator(tokenizer)                 # drops names the tokenizer splits
    prompts = generator.prompts(100, seed=0, split="train")
    abc = generator.abc(prompts[0], seed=1)             # S2 replaced by a third name
    swapped = generator.swap(prompts[0])                # IO and S trade places throughout

Every name must be one token *with its leading space* (" Anna") for the tokenizer in use:
the generator checks it and keeps only such names. The templates, names, places and objects
are this project's own. Templates are split: ``train`` ones may be used to train a model,
``eval`` ones never are, so held-out accuracy measures a mechanism rather than a memory.
"""

from __future__ import annotations

import dataclasses
import functools
import random
import re
from typing import Any, Iterable, Sequence

from inversionview.errors import UserError, echo

#: Filled by a name (N1, N2: the first two mentions; S: the repeated subject), a place, an object.
SLOTS = ("N1", "N2", "S", "PLACE", "OBJECT")
ORDERS = ("ABBA", "BABA")
POSITION_NAMES = ("IO", "S1", "S1+1", "S2", "END")
SPLITS = ("train", "eval", "all")


class IOIError(UserError, ValueError):
    """An IOI prompt, template or name list that cannot be used (names split, no IO, ...)."""


@dataclasses.dataclass(frozen=True)
class Template:
    """A prompt pattern: ``{N1}`` and ``{N2}`` are the first mentions, ``{S}`` the repeat."""

    id: str
    text: str
    split: str = "train"

    def __post_init__(self) -> None:
        check_template(self.text, self.id)
        if self.split not in ("train", "eval"):
            raise IOIError(f"template {self.id}: split must be train or eval, not {self.split!r}")

    def fill(self, first: str, second: str, subject: str, place: str, obj: str) -> str:
        return self.text.format(N1=first, N2=second, S=subject, PLACE=place, OBJECT=obj)

    def pattern(self) -> re.Pattern:
        """A regex matching this template's prompts with any single-word fillers."""
        return _pattern(self.text)


@functools.lru_cache(maxsize=4096)
def _pattern(text: str) -> re.Pattern:
    regex, seen = "", set()
    for part in re.split(r"(\{\w+\})", text):
        slot = part[1:-1] if part.startswith("{") else None
        if slot is None:
            regex += re.escape(part)
        elif slot in seen:
            regex += f"(?P={slot})"
        else:
            seen.add(slot)
            regex += f"(?P<{slot}>[^\\s,.]+)"
    return re.compile(regex + r"$")


def check_template(text: str, where: str = "template") -> None:
    """IOIError unless ``text`` has N1, N2 and S once each, each after a space (so a name is
    the tokenizer's " Name"), at most one PLACE and OBJECT, and nothing else in braces."""
    slots = re.findall(r"\{(\w*)\}", text)
    unknown = sorted(set(slots) - set(SLOTS))
    if unknown:
        raise IOIError(f"{where}: unknown slot {{{unknown[0]}}} in {echo(text)}; slots are "
                       f"{', '.join('{' + s + '}' for s in SLOTS)}")
    for slot in ("N1", "N2", "S"):
        if slots.count(slot) != 1:
            what = "no indirect object" if slot in ("N1", "N2") and slots.count(slot) == 0 else (
                f"{{{slot}}} {slots.count(slot)} times")
            raise IOIError(f"{where}: {echo(text)} has {what}; an IOI template names two "
                           f"people ({{N1}} and {{N2}}, once each) and repeats one as {{S}} once")
    for slot in ("PLACE", "OBJECT"):
        if slots.count(slot) > 1:
            raise IOIError(f"{where}: {{{slot}}} appears {slots.count(slot)} times in "
                           f"{echo(text)}; at most once")
    for slot in ("N1", "N2", "S"):
        start = text.index("{" + slot + "}")
        if start == 0 or text[start - 1] != " ":
            raise IOIError(f"{where}: {{{slot}}} must follow a space in {echo(text)} (names are "
                           f"read as one token with its leading space, like ' Anna')")
    if text.index("{S}") < max(text.index("{N1}"), text.index("{N2}")):
        raise IOIError(f"{where}: {{S}} must come after {{N1}} and {{N2}} in {echo(text)}")
    if text.rstrip() != text or text.endswith(("{S}", "{N1}", "{N2}")):
        raise IOIError(f"{where}: {echo(text)} must end with a word before the answer, "
                       f"without trailing space")


#: Said of a third name just before the last word of a "late" prompt.
LATE_PHRASES = ("they got from", "that came from", "borrowed from", "sent by")

# The prompt distribution. Names are common first names of several languages; places and
# objects are ordinary nouns. All written for this project.
NAMES = (
    "Anna", "Paul", "Maria", "David", "Sarah", "Peter", "Laura", "James", "Emma", "Thomas",
    "Lucy", "Daniel", "Alice", "Mark", "Rachel", "Simon", "Helen", "George", "Julia", "Henry",
    "Grace", "Adam", "Clara", "Oliver", "Rose", "Victor", "Nina", "Hugo", "Ruth", "Leon",
    "Diana", "Frank", "Eva", "Oscar", "Sophie", "Carl", "Amy", "Ben", "Kate", "Tom",
)
PLACES = (
    "market", "garden", "station", "library", "harbor", "school", "office", "bakery", "museum",
    "river", "farm", "hospital", "theater", "beach", "church", "village", "kitchen", "bridge",
)
OBJECTS = (
    "book", "letter", "key", "ring", "pear", "basket", "hammer", "lamp", "coin", "map",
    "shirt", "bottle", "ticket", "knife", "cup", "candle", "rope", "box", "bread", "flower",
)
#: Train templates are composed: an opening that names both people and a place, then a
#: clause in which S gives an object (16 x 18 = 288 wordings), so that a model trained on
#: them has seen the construction in many wordings rather than a few to memorise.
OPENINGS = (
    ("walked", "Yesterday {N1} and {N2} walked to the {PLACE}, and"),
    ("met", "At the {PLACE}, {N1} met {N2}. Later"),
    ("waiting", "While {N1} and {N2} were waiting at the {PLACE},"),
    ("morning", "This morning {N1} and {N2} went to the {PLACE}, where"),
    ("drove", "After lunch, {N1} and {N2} drove to the {PLACE}. There"),
    ("reached", "When {N1} and {N2} reached the {PLACE},"),
    ("joined", "On Sunday {N1} joined {N2} at the {PLACE}, and"),
    ("left", "Once {N1} and {N2} had left the {PLACE},"),
    ("sat", "In the {PLACE}, {N1} sat next to {N2}, and"),
    ("opened", "Before {N1} and {N2} opened the {PLACE},"),
    ("cleaned", "Last week {N1} and {N2} cleaned the {PLACE}. Afterwards"),
    ("argued", "On the way to the {PLACE}, {N1} and {N2} argued, so"),
    ("late", "It was late when {N1} and {N2} left the {PLACE}, and"),
    ("visited", "Today {N1} and {N2} visited the {PLACE}. Then"),
    ("cooked", "On Friday {N1} and {N2} cooked at the {PLACE}, and"),
    ("shopped", "While {N1} and {N2} shopped at the {PLACE},"),
)
GIVINGS = (
    ("handed", "{S} handed the {OBJECT} to"), ("passed", "{S} passed the {OBJECT} to"),
    ("offered", "{S} offered the {OBJECT} to"), ("lent", "{S} lent the {OBJECT} to"),
    ("threw", "{S} threw the {OBJECT} to"), ("sold", "{S} sold the {OBJECT} to"),
    ("sent", "{S} sent the {OBJECT} to"), ("brought", "{S} brought the {OBJECT} to"),
    ("returned", "{S} returned the {OBJECT} to"), ("tossed", "{S} tossed the {OBJECT} to"),
    ("carried", "{S} carried the {OBJECT} to"), ("gave", "{S} gave the {OBJECT} to"),
    ("showed", "{S} showed the {OBJECT} to"), ("saved", "{S} saved the {OBJECT} for"),
    ("chose", "{S} chose the {OBJECT} for"), ("kept", "{S} kept the {OBJECT} for"),
    ("made", "{S} made a {OBJECT} for"), ("shared", "{S} shared the {OBJECT} with"),
)
#: Held out: never in a training mixture; neither their openings nor their endings ("gave
#: it to", "wrote a ... for", "bought a ... for", "showed a ... to") are among the composed.
HELD_OUT = (
    Template("found", "Near the {PLACE}, {N1} and {N2} found a {OBJECT}, and {S} gave it to", "eval"),
    Template("worked", "All day {N1} and {N2} worked at the {PLACE}; in the evening {S} wrote a {OBJECT} for", "eval"),
    Template("bought", "After {N1} and {N2} arrived at the {PLACE}, {S} bought a {OBJECT} for", "eval"),
    Template("asked", "At noon {N1} and {N2} stopped by the {PLACE}, and {S} showed a {OBJECT} to", "eval"),
)
TEMPLATES = tuple(Template(f"{opening}-{giving}", f"{start} {end}")
                  for opening, start in OPENINGS for giving, end in GIVINGS) + HELD_OUT


@dataclasses.dataclass(frozen=True)
class IOIPrompt:
    """One prompt, its fillers and its named positions (indices into ``BOS + tokens``)."""

    text: str  # ends where the answer is predicted (no trailing space)
    io: str
    s: str
    order: str  # ABBA (IO first) or BABA (S first)
    template: str
    place: str
    object: str
    positions: dict[str, int]
    kind: str = "ioi"  # ioi, abc (S2 replaced by a third name) or swap

    @property
    def answer(self) -> str:
        """The token the model should predict: the IO name with its leading space."""
        return " " + self.io

    @property
    def wrong_answer(self) -> str:
        return " " + self.s

    def attributes(self) -> dict[str, Any]:
        """The attributes the agreement table compares (method.md §10, IOI)."""
        return {"io": self.io, "s": self.s, "order": self.order, "template": self.template,
                "place": self.place, "object": self.object,
                "io_position": self.positions.get("IO"), "s1_position": self.positions.get("S1"),
                "s2_position": self.positions.get("S2")}

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "answer": self.answer}


class IOIGenerator:
    """Seeded IOI prompts whose names are single tokens for ``tokenizer`` (checked)."""

    def __init__(self, tokenizer, names: Sequence[str] = NAMES,
                 templates: Sequence[Template] = TEMPLATES, places: Sequence[str] = PLACES,
                 objects: Sequence[str] = OBJECTS, min_names: int = 3):
        self.tokenizer = tokenizer
        self.templates = {template.id: template for template in templates}
        if len(self.templates) != len(templates):
            raise IOIError("template ids must be distinct")
        self.places, self.objects = tuple(places), tuple(objects)
        kept, split = single_token_names(tokenizer, names)
        if len(kept) < min_names:
            raise IOIError(
                f"the tokenizer splits {len(split)} of {len(names)} names into several tokens "
                f"({', '.join(repr(' ' + n) for n in split[:6])}{', ...' * (len(split) > 6)}); "
                f"IOI needs at least {min_names} names that are one token with their leading "
                f"space; give names this tokenizer keeps whole")
        self.names, self.split_names = kept, split
        self.name_ids = {name: tokenizer.encode(" " + name)[0] for name in kept}
        self.names_by_id = {token: name for name, token in self.name_ids.items()}

    # ----- drawing -----------------------------------------------------------------------

    def template_ids(self, split: str = "all") -> list[str]:
        if split not in SPLITS:
            raise IOIError(f"unknown template split {echo(split)}; use one of {', '.join(SPLITS)}")
        return [t.id for t in self.templates.values() if split == "all" or t.split == split]

    def prompt(self, rng: random.Random, template: str | None = None, order: str | None = None,
               split: str = "all") -> IOIPrompt:
        """One prompt drawn with ``rng``: a template of ``split`` (or the one named), an order
        (or the one named), two different names, a place and an object."""
        template = self._template(template) if template else self.templates[
            rng.choice(self.template_ids(split))]
        order = order or rng.choice(ORDERS)
        if order not in ORDERS:
            raise IOIError(f"unknown order {echo(order)}; use ABBA or BABA")
        io, s = rng.sample(self.names, 2)
        return self.build(template, io, s, order, rng.choice(self.places), rng.choice(self.objects))

    def prompts(self, n: int, seed: int = 0, split: str = "all") -> list[IOIPrompt]:
        """``n`` prompts; the same seed gives the same prompts."""
        rng = random.Random(seed)
        return [self.prompt(rng, split=split) for _ in range(n)]

    def build(self, template: Template | str, io: str, s: str, order: str, place: str,
              obj: str, kind: str = "ioi") -> IOIPrompt:
        template = self._template(template) if isinstance(template, str) else template
        first, second = (io, s) if order == "ABBA" else (s, io)
        text = template.fill(first, second, s, place, obj)
        return IOIPrompt(text, io, s, order, template.id, place, obj,
                         self._positions(text, io, s), kind)

    def abc(self, prompt: IOIPrompt, seed: int = 0) -> IOIPrompt:
        """The contrast that breaks the duplicate: S2 becomes a third name C, so no name is
        repeated and the model has no reason to prefer IO (Wang et al.'s ABC distribution)."""
        rng = random.Random(seed)
        third = rng.choice([n for n in self.names if n not in (prompt.io, prompt.s)])
        template = self.templates[prompt.template]
        first, second = (prompt.io, prompt.s) if prompt.order == "ABBA" else (prompt.s, prompt.io)
        text = template.fill(first, second, third, prompt.place, prompt.object)
        positions = self._positions(text, prompt.io, prompt.s, repeated=False)
        positions["S2"] = self._find(text, third)[0]
        return dataclasses.replace(prompt, text=text, positions=positions, kind="abc")

    def late(self, prompt: IOIPrompt, seed: int = 0) -> IOIPrompt:
        """A third name, mentioned once, just before the last word ("... handed the key they
        got from Mary to"): the answer is still IO, but the last name before the end is no
        longer S, so a model that avoids the most recent name instead of the repeated one
        fails here."""
        rng = random.Random(seed)
        third = rng.choice([n for n in self.names if n not in (prompt.io, prompt.s)])
        head, last = prompt.text.rsplit(" ", 1)
        text = f"{head} {rng.choice(LATE_PHRASES)} {third} {last}"
        return dataclasses.replace(prompt, text=text, positions=self._positions(text, prompt.io, prompt.s),
                                   kind="late")

    def swap(self, prompt: IOIPrompt) -> IOIPrompt:
        """IO and S trade places everywhere: the same sentence whose answer is the old S."""
        return dataclasses.replace(
            self.build(prompt.template, prompt.s, prompt.io, prompt.order, prompt.place,
                       prompt.object), kind="swap")

    # ----- reading any text -----------------------------------------------------------------

    def parse_ids(self, ids: Sequence[int]) -> dict[str, Any] | None:
        """The IOI reading of a row of ids (e.g. a decoder's sample): which known names occur
        where; IO is a name that occurs once, S one that occurs twice, order from their first
        mentions. None unless exactly two distinct names occur, one once and one twice."""
        mentions: dict[str, list[int]] = {}
        for index, token in enumerate(ids):
            name = self.names_by_id.get(int(token))
            if name is not None:
                mentions.setdefault(name, []).append(index)
        counts = sorted((len(at), name) for name, at in mentions.items())
        if [c for c, _ in counts] != [1, 2]:
            return None
        io, s = counts[0][1], counts[1][1]
        io_at, (s1, s2) = mentions[io][0], mentions[s]
        return {"io": io, "s": s, "order": "ABBA" if io_at < s1 else "BABA",
                "positions": {"IO": io_at, "S1": s1, "S1+1": s1 + 1, "S2": s2}}

    def match_template(self, text: str) -> dict[str, str] | None:
        """The template a text follows and its fillers, or None."""
        for template in self.templates.values():
            match = template.pattern().match(text)
            if match:
                return {"template": template.id, **match.groupdict()}
        return None

    # ----- internals ---------------------------------------------------------------------------

    def _template(self, template_id: str) -> Template:
        try:
            return self.templates[template_id]
        except KeyError:
            known = list(self.templates)
            raise IOIError(f"unknown template {echo(template_id)}; known: "
                           f"{', '.join(known[:4])}, ... ({len(known)} templates: "
                           f"OPENING-GIVING of ioi.prompts.OPENINGS and GIVINGS, and the held "
                           f"out {', '.join(t.id for t in HELD_OUT)})") from None

    def _find(self, text: str, name: str) -> list[int]:
        ids = [self.tokenizer.bos_id] + self.tokenizer.encode(text)
        return [i for i, token in enumerate(ids) if token == self.name_ids[name]]

    def _positions(self, text: str, io: str, s: str, repeated: bool = True) -> dict[str, int]:
        ids = [self.tokenizer.bos_id] + self.tokenizer.encode(text)
        io_at = [i for i, t in enumerate(ids) if t == self.name_ids[io]]
        s_at = [i for i, t in enumerate(ids) if t == self.name_ids[s]]
        if len(io_at) != 1 or len(s_at) != (2 if repeated else 1):
            raise IOIError(f"{echo(text)}: expected the IO name once and S "
                           f"{'twice' if repeated else 'once'} as whole tokens; the tokenizer "
                           f"gives {len(io_at)} and {len(s_at)}")
        positions = {"IO": io_at[0], "S1": s_at[0], "S1+1": s_at[0] + 1, "END": len(ids) - 1}
        if repeated:
            positions["S2"] = s_at[1]
        return positions


def single_token_names(tokenizer, names: Iterable[str]) -> tuple[list[str], list[str]]:
    """(names that are one token with their leading space, names the tokenizer splits)."""
    kept, split = [], []
    for name in names:
        (kept if len(tokenizer.encode(" " + name)) == 1 else split).append(name)
    return kept, split


__all__ = ["IOIError", "IOIGenerator", "IOIPrompt", "NAMES", "OBJECTS", "ORDERS", "PLACES",
           "GIVINGS", "HELD_OUT", "OPENINGS", "POSITION_NAMES", "SPLITS", "TEMPLATES",
           "Template", "check_template",
           "single_token_names"]
