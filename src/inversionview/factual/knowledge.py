"""Facts that install offline, as relation-template prompts (issue 16, item 1).

The knowledge comes from two registry packages, read through their public APIs:

- ``countryinfo`` (MIT; data after REST Countries): each country's name, capital, official
  languages, currencies and UN region (Africa, Americas, Asia, Europe, Oceania);
- ``babel`` (BSD; Unicode CLDR data): the English names of those languages and currencies.

Two kinds of subject: countries, and their capitals as cities (a city's attributes are its
country's: country, language, currency, region). A subject whose name is both a country and a
city (Singapore), or two cities (Kingston), is left out, so every prompt has one answer.

Relations read one attribute of a subject through templates of this project's own; each
relation has ``train`` templates (a model may be trained on them) and ``eval`` templates
(never trained on), so held-out accuracy measures recall rather than a memory of wordings.
An eval template is a new wording made only of words the train templates use ("{subject}
has its capital city in" beside "{subject} has its capital in" and "The capital city of
{subject} is"): a small model trained here cannot be asked to understand words it never saw
(a first set broke the rule with "'s", "Most" and "region": the bundled model's top-1 on
"{subject} lies in the region of" was 0.039, docs/factual.md).

    knowledge = Knowledge.load()
    prompts = knowledge.prompts("eval")            # every (subject, relation, eval template)
    prompts[0].text, prompts[0].answer             # ("In France people speak", "French")
    knowledge.sentences("train")                   # "The capital of France is Paris." ...
"""

from __future__ import annotations

import dataclasses
import functools
import re
import unicodedata
from typing import Any, Iterable

from inversionview.errors import UserError, echo

SUBJECT_KINDS = ("country", "city")
SPLITS = ("train", "eval", "all")


class FactError(UserError, ValueError):
    """A fact, relation, template or fact file that cannot be used."""


@dataclasses.dataclass(frozen=True)
class Relation:
    """Reads ``attribute`` of a subject of one of ``kinds``; ``{subject}`` in each template."""

    name: str
    attribute: str
    kinds: tuple[str, ...]
    train: tuple[str, ...]
    eval: tuple[str, ...]

    def __post_init__(self) -> None:
        for template in (*self.train, *self.eval):
            if template.count("{subject}") != 1:
                raise FactError(f"relation {self.name}: template {echo(template)} must name "
                                "{subject} exactly once")
            if template.endswith(" "):
                raise FactError(f"relation {self.name}: template {echo(template)} ends in a "
                                "space; the answer brings its own")

    def templates(self, split: str) -> tuple[tuple[str, str], ...]:
        """(template, split) pairs of ``split`` (train, eval or all)."""
        check_split(split)
        pairs = []
        if split in ("train", "all"):
            pairs += [(t, "train") for t in self.train]
        if split in ("eval", "all"):
            pairs += [(t, "eval") for t in self.eval]
        return tuple(pairs)


#: The relations and their templates (this project's own wording).
RELATIONS: dict[str, Relation] = {r.name: r for r in (
    Relation("capital", "capital", ("country",),
             train=("The capital of {subject} is", "{subject} has its capital in",
                    "The capital city of {subject} is"),
             eval=("{subject} has its capital city in",)),
    Relation("country", "country", ("city",),
             train=("{subject} is the capital of", "{subject} is a city in",
                    "The city of {subject} is in"),
             eval=("{subject} is the capital city of",)),
    Relation("language", "language", SUBJECT_KINDS,
             train=("The official language of {subject} is", "People in {subject} speak",
                    "In {subject} the language is"),
             eval=("In {subject} people speak",)),
    Relation("currency", "currency", SUBJECT_KINDS,
             train=("The currency of {subject} is the", "In {subject} people pay with the",
                    "{subject} uses the currency"),
             eval=("People in {subject} pay with the",)),
    Relation("region", "region", SUBJECT_KINDS,
             train=("{subject} is part of", "{subject} lies in", "{subject} is found in"),
             eval=("{subject} is a part of",)),
)}

#: The attributes every subject has (a country's own country is itself).
ATTRIBUTES = ("country", "capital", "language", "currency", "region")


@dataclasses.dataclass(frozen=True)
class Subject:
    name: str
    kind: str  # country or city
    attributes: dict[str, str]


@dataclasses.dataclass(frozen=True)
class FactPrompt:
    """One prompt: ``text`` ends where ``answer`` (with a leading space) is the next word."""

    text: str
    subject: str
    kind: str
    relation: str
    answer: str
    template: str
    split: str
    attributes: dict[str, str]  # the subject's (for the agreement table)

    @property
    def subject_end(self) -> int:
        """Character index just after the subject in ``text``."""
        return self.text.index(self.subject) + len(self.subject)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def check_split(split: str) -> str:
    if split not in SPLITS:
        raise FactError(f"unknown split {echo(split)}; use one of {', '.join(SPLITS)}")
    return split


def check_relations(names: Iterable[str] | None) -> tuple[str, ...]:
    """The named relations (all when None); an unknown one is a clear error."""
    if names is None:
        return tuple(RELATIONS)
    names = tuple(names)
    unknown = [n for n in names if n not in RELATIONS]
    if unknown:
        raise FactError(f"unknown relation {echo(unknown[0])}; relations with templates: "
                        f"{', '.join(RELATIONS)}")
    return names


def _plain(value: Any) -> str:
    """One line of text, NFC-normalised (the first of a list: one entry lists its capital so)."""
    if isinstance(value, list):
        value = value[0] if len(value) == 1 else ""
    return " ".join(unicodedata.normalize("NFC", str(value or "")).split())


class Knowledge:
    """The subjects and what is known of them; ``prompts`` and ``sentences`` from templates."""

    def __init__(self, subjects: Iterable[Subject]):
        self.subjects: dict[str, Subject] = {}
        for subject in subjects:
            if subject.name in self.subjects:
                raise FactError(f"subject {echo(subject.name)} is listed twice")
            self.subjects[subject.name] = subject

    @classmethod
    @functools.cache
    def load(cls) -> "Knowledge":
        """Countries and their capitals from the installed ``countryinfo`` and ``babel``."""
        try:
            from babel import Locale
            from countryinfo import all_countries
        except ImportError as error:  # pragma: no cover - both are dependencies
            raise FactError(f"the fact source needs the {error.name} package "
                            f"(pip install {error.name})") from error
        english = Locale("en")
        countries: list[Subject] = []
        for country in all_countries():
            info = country.info()
            name, capital = _plain(info.get("name")), _plain(info.get("capital"))
            languages, currencies = info.get("languages") or [], info.get("currencies") or []
            region = info.get("region") or ""
            language = english.languages.get(languages[0]) if languages else None
            currency = english.currencies.get(currencies[0]) if currencies else None
            if currency:  # an old code's name carries its years: "Zambian Kwacha (1968–2012)"
                currency = re.sub(r"\s*\(.*\)$", "", currency)
            if not (name and capital and language and currency and region) or "/" in capital:
                continue
            countries.append(Subject(name, "country", {
                "country": name, "capital": capital, "language": language,
                "currency": currency, "region": region}))
        names = [c.name for c in countries]
        capitals = [c.attributes["capital"] for c in countries]
        cities = [Subject(c.attributes["capital"], "city", dict(c.attributes)) for c in countries
                  if capitals.count(c.attributes["capital"]) == 1
                  and c.attributes["capital"] not in names]
        return cls(sorted(countries, key=lambda s: s.name) + sorted(cities, key=lambda s: s.name))

    def __len__(self) -> int:
        return len(self.subjects)

    def subject(self, name: str) -> Subject:
        try:
            return self.subjects[name]
        except KeyError:
            raise FactError(f"unknown subject {echo(name)}; {len(self.subjects)} subjects are "
                            "known (countries and their capitals)") from None

    def prompts(self, split: str = "all", relations: Iterable[str] | None = None,
                kinds: Iterable[str] = SUBJECT_KINDS) -> list[FactPrompt]:
        """Every (subject, relation, template of ``split``), in a fixed order."""
        found = []
        kinds = tuple(kinds)
        for relation in (RELATIONS[n] for n in check_relations(relations)):
            for subject in self.subjects.values():
                if subject.kind not in relation.kinds or subject.kind not in kinds:
                    continue
                for template, which in relation.templates(split):
                    found.append(FactPrompt(
                        template.format(subject=subject.name), subject.name, subject.kind,
                        relation.name, subject.attributes[relation.attribute], template, which,
                        dict(subject.attributes)))
        return found

    def sentences(self, split: str = "train") -> list[str]:
        """Each prompt of ``split`` completed with its answer and a full stop."""
        return [f"{p.text} {p.answer}." for p in self.prompts(split)]


__all__ = ["ATTRIBUTES", "FactError", "FactPrompt", "Knowledge", "RELATIONS", "Relation",
           "SUBJECT_KINDS", "Subject", "check_relations", "check_split"]
