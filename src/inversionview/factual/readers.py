"""Fact files a user may have on disk, read into the same prompt records (issue 16, item 1).

    prompts = read_facts("counterfact.json")      # or known_1000.json, or a BEAR directory

Formats (recognised by their content, not their name):

- **CounterFact** (ROME, Meng et al. 2022): a JSON list of records with ``requested_rewrite``
  {``prompt`` with ``{}`` for the subject, ``subject``, ``relation_id``, ``target_true.str``};
- **known_1000** (ROME's known facts): a JSON list of records with ``subject``, ``attribute``,
  ``prompt`` (the subject filled in), ``relation_id``;
- **BEAR** (Wiland et al. 2024): a directory with ``metadata_relations.json`` ({relation:
  {``templates``: ["... [X] ... [Y]."]}}) and one ``<relation>.jsonl`` per relation with
  ``sub_label`` and ``obj_label``; each fact is read through the relation's first template,
  cut before ``[Y]``.

Every record becomes a ``FactPrompt`` of split ``eval`` (a file is for evaluation, not for
training), kind ``entity``, relation its id, answer the true object.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from inversionview.errors import echo
from inversionview.factual.knowledge import FactError, FactPrompt

FORMATS = ("counterfact", "known_1000", "bear")


def read_facts(path: str | Path, limit: int | None = None) -> list[FactPrompt]:
    """The prompts of a CounterFact or known_1000 JSON file, or of a BEAR directory."""
    path = Path(path)
    if path.is_dir():
        if not (path / "metadata_relations.json").is_file():
            raise FactError(f"{path} is a directory without metadata_relations.json; a fact "
                            f"directory must be BEAR's; files may be {', '.join(FORMATS[:2])} JSON")
        return _bear(path, limit)
    records = _json(path)
    if not isinstance(records, list) or not records or not isinstance(records[0], dict):
        raise FactError(f"{path} is not a list of fact records; known formats: {', '.join(FORMATS)}")
    first = records[0]
    if "requested_rewrite" in first:
        reader, name = _counterfact, "counterfact"
    elif {"subject", "attribute", "prompt"} <= set(first):
        reader, name = _known, "known_1000"
    else:
        raise FactError(f"{path}: unknown fact format (its first record has the keys "
                        f"{echo(', '.join(sorted(first))[:200])}); known formats: "
                        f"{', '.join(FORMATS)}")
    prompts = []
    for index, record in enumerate(records[:limit] if limit else records):
        try:
            prompts.append(reader(record))
        except (KeyError, TypeError, AttributeError, ValueError) as error:
            raise FactError(f"{path}: record {index} is not a {name} record ({error!r})") from None
    return prompts


def _json(path: Path) -> Any:
    if not path.is_file():
        raise FactError(f"no fact file at {path}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise FactError(f"{path} is not JSON ({error}); known formats: {', '.join(FORMATS)}") from None


def _prompt(text: str, subject: str, relation: str, answer: str, template: str) -> FactPrompt:
    text, answer = text.rstrip(), answer.strip()
    if subject not in text:
        raise ValueError(f"subject {subject!r} is not in the prompt {text!r}")
    if not answer:
        raise ValueError("the answer is empty")
    return FactPrompt(text, subject, "entity", relation, answer, template, "eval",
                      {relation: answer})


def _counterfact(record: dict) -> FactPrompt:
    rewrite = record["requested_rewrite"]
    template = rewrite["prompt"]
    return _prompt(template.format(rewrite["subject"]), rewrite["subject"],
                   str(rewrite["relation_id"]), rewrite["target_true"]["str"],
                   template.replace("{}", "{subject}"))


def _known(record: dict) -> FactPrompt:
    template = record.get("template") or record["prompt"].replace(record["subject"], "{}", 1)
    return _prompt(record["prompt"], record["subject"], str(record.get("relation_id", "")),
                   record["attribute"], template.replace("{}", "{subject}"))


def _bear(directory: Path, limit: int | None) -> list[FactPrompt]:
    metadata = _json(directory / "metadata_relations.json")
    if not isinstance(metadata, dict):
        raise FactError(f"{directory}/metadata_relations.json is not an object of relations")
    prompts: list[FactPrompt] = []
    for relation, info in metadata.items():
        templates = info.get("templates") if isinstance(info, dict) else None
        if not templates or "[X]" not in templates[0] or "[Y]" not in templates[0]:
            raise FactError(f"BEAR relation {echo(relation)} has no template with [X] and [Y]")
        template = templates[0].split("[Y]")[0].rstrip()
        facts = directory / f"{relation}.jsonl"
        if not facts.is_file():
            raise FactError(f"BEAR relation {echo(relation)} has no {facts.name} in {directory}")
        for number, line in enumerate(facts.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                subject = record["sub_label"]
                prompts.append(_prompt(template.replace("[X]", subject), subject, relation,
                                       record["obj_label"], template.replace("[X]", "{subject}")))
            except (json.JSONDecodeError, KeyError, TypeError, ValueError) as error:
                raise FactError(f"{facts}: line {number} is not a BEAR fact ({error!r})") from None
            if limit and len(prompts) >= limit:
                return prompts
    return prompts


__all__ = ["FORMATS", "read_facts"]
