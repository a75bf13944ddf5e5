"""``inversionview reproduce``: run the paper's findings as claims and write one
self-contained HTML report (figures inlined, no network) with its JSON beside it.

    record = reproduce(Path("reproduce"), quick=True)

The toy-task claims run on the authors' probed models when ``authors`` names the folder that
holds them (``counting/``, ``addition/``), else on the bundled models; the IOI and factual
claims on the bundled case-study models (or the ones named). Each study is independent: one
that cannot run is reported with the reason and the others go on; the command then exits
non-zero, as it does when no claim was measured. The command loads the case studies' models
and their bundled decoders first (``load_case_study``): a model named that does not load, or
that no bundled decoder was trained on, is a one-line error before anything runs.

Every claim runs over several seeds (``seeds``: quick 3, full 5), and a claim about the
preimage or the decoder also with a control decoder of the same shape and random weights
(``reproduce.claims``).
"""

from __future__ import annotations

import base64
import json
import time
from html import escape
from pathlib import Path
from typing import Any, Callable

from inversionview.errors import UserError, echo
from inversionview.locks import hold_directory
from inversionview.reproduce.claims import (CONTROL, FAIL, NOT_MEASURED, PASS, STATUSES,
                                            TRAINED, UNSETTLED, Claim)

STUDIES = ("counting", "addition", "ioi", "factual")
#: Seeds per claim: quick, full.
SEEDS = (3, 5)


def _load(model: str, task: str | None):
    """(probed model, its bundled decoder, the decoder's shown name), as the notebook API
    loads them."""
    from inversionview.artifacts import shown_name
    from inversionview.decoder.store import decoder_for
    from inversionview.probed import load_probed

    probed = load_probed(model, task)
    decoder, directory = decoder_for(probed, model, None)
    return probed, decoder, shown_name(str(directory))


#: The case studies' models by default, and the option that names each.
CASE_STUDY_MODELS = {"ioi": ("--ioi-model", "lm-ioi"), "factual": ("--factual-model", "lm-factual")}


def load_case_study(study: str, model: str):
    """(probed model, its bundled decoder, the decoder's shown name) for the case study
    ``study`` ("ioi" or "factual") on ``model``; a UserError naming the option when the model
    cannot be loaded or no bundled decoder was trained on it (reproduce reads each study
    through the bundled decoder of its model; it takes no decoder of its own)."""
    from inversionview.artifacts import shown_name
    from inversionview.decoder.store import find_decoder, load_decoder
    from inversionview.probed import load_probed

    option, default = CASE_STUDY_MODELS[study]
    try:
        probed = load_probed(model, study)
    except UserError as error:
        raise UserError(f"{option} {echo(model)}: {error}") from None
    directory = find_decoder(probed)
    if directory is None:
        raise UserError(f"{option} {echo(model)}: no bundled decoder was trained on this model "
                        f"(sha256 {probed.weights_hash()[:12]}); reproduce reads the {study} "
                        f"study only through a bundled decoder: use the default, {default}, or "
                        f"a model one was trained on (see `inversionview decoders MODEL`)")
    try:
        decoder, _ = load_decoder(directory, probed)
    except UserError as error:
        raise UserError(f"{option} {echo(model)}: {error}") from None
    return probed, decoder, shown_name(str(directory))


def check_studies(studies: tuple[str, ...]) -> None:
    """A one-line error naming the studies there are, for a name that is not one."""
    unknown = [s for s in studies if s not in STUDIES]
    if unknown:
        raise UserError(f"unknown study {echo(unknown[0])}; choose from {', '.join(STUDIES)}")


def check_authors(authors: Path | None, studies: tuple[str, ...]) -> None:
    """A one-line error, before anything runs, when ``authors`` is not a folder holding the
    toy studies' models."""
    if authors is None:
        return
    authors = Path(authors)
    if not authors.is_dir():
        raise UserError(f"--authors {authors}: not a folder (the folder that holds the authors' "
                        "probed models, counting/ and addition/)")
    for task in (s for s in studies if s in ("counting", "addition")):
        if not (authors / task).is_dir():
            raise UserError(f"--authors {authors}: no {task}/ folder in it (the authors' probed "
                            "models: counting/ and addition/, HuggingFace GPT-2 format)")


def _toy_source(authors: Path | None, task: str) -> tuple[str, str]:
    """(model argument, label) for a toy task: the authors' checkpoint when given."""
    if authors is not None:
        check_authors(authors, (task,))
        path = Path(authors) / task
        return str(path), f"the authors' {task} model ({path})"
    return task, f"the bundled {task} model (trained here)"


def _decoders(decoder, seed: int) -> dict:
    """The trained decoder and its control: the same shape, random weights (seeded)."""
    from inversionview.decoder.model import random_like

    return {TRAINED: decoder, CONTROL: random_like(decoder, 7919 + seed)}


def reproduce(out: Path, quick: bool = False, seed: int = 0, authors: Path | None = None,
              ioi_model: str = "lm-ioi", factual_model: str = "lm-factual",
              studies: tuple[str, ...] = STUDIES,
              progress: Callable[[str], None] | None = None,
              seeds: int | None = None, loaded: dict[str, tuple] | None = None
              ) -> dict[str, Any]:
    """Run ``studies`` over ``seeds`` seeds (``seed``, ``seed + 1``, ...; default SEEDS) and
    write ``out``/report.html and report.json; returns the record. ``out`` is held while the
    studies run (``locks.hold_directory``): a second report there is refused at once.
    ``loaded``: the case studies already loaded by ``load_case_study``, by study (the CLI
    loads them first, so that a model that cannot be used is refused before anything runs)."""
    check_studies(studies)
    check_authors(authors, studies)
    count = seeds or SEEDS[0 if quick else 1]
    if count < 1:
        raise UserError(f"--seeds is how many seeds each claim runs over, at least 1, not {count}")
    seed_list = [seed + k for k in range(count)]
    with hold_directory(Path(out)) as out:
        return _run(out, quick, seed, seed_list, authors, ioi_model, factual_model, studies,
                    progress or (lambda message: None), loaded)


def _run(out: Path, quick: bool, seed: int, seed_list: list[int], authors: Path | None,
         ioi_model: str, factual_model: str, studies: tuple[str, ...],
         say: Callable[[str], None], loaded: dict[str, tuple] | None) -> dict[str, Any]:
    from inversionview import provenance
    from inversionview.reproduce.case_studies import factual_claims, ioi_claims
    from inversionview.reproduce.toy import addition_claims, completeness_claim, counting_claims

    started = time.perf_counter()
    claims: list[Claim] = []
    problems: dict[str, str] = {}
    summaries: dict[str, Any] = {}
    for study in studies:
        say(f"{study} ...")
        try:
            if study in ("counting", "addition"):
                source, label = _toy_source(authors, study)
                model, decoder, decoder_label = _load(source, study)
                decoders = _decoders(decoder, seed)
                if study == "counting":
                    found, summary = counting_claims(model, decoders, label, decoder_label,
                                                     quick, seed_list, out)
                else:
                    found, summary = addition_claims(model, decoders, label, decoder_label,
                                                     quick, seed_list, out)
                    found.append(completeness_claim(model, decoders, label, decoder_label,
                                                    quick, seed_list, out))
                summaries[study] = summary.to_record()
            elif study == "ioi":
                model, decoder, decoder_label = ((loaded or {}).get("ioi")
                                                 or load_case_study("ioi", ioi_model))
                found = ioi_claims(model, _decoders(decoder, seed), _lm_label(ioi_model),
                                   decoder_label, quick, seed_list, out=out)
            else:
                model, decoder, decoder_label = ((loaded or {}).get("factual")
                                                 or load_case_study("factual", factual_model))
                found = factual_claims(model, _decoders(decoder, seed), _lm_label(factual_model),
                                       decoder_label, quick, seed_list, out=out)
        except UserError as error:
            problems[study] = str(error)
            say(f"{study}: not run ({error})")
            continue
        claims.extend(found)
        for claim in found:
            say(f"  {claim.status:<12} {claim.id}: {claim.figure or claim.reason}")
    record = {
        "command": provenance.command_line(), "quick": quick, "seed": seed,
        "seeds": seed_list,
        "commit": provenance.commit(), "machine": provenance.machine(),
        "seconds": round(time.perf_counter() - started, 1),
        "counts": {status: sum(c.status == status for c in claims) for status in STATUSES},
        "claims": [claim.to_dict() for claim in claims], "not_run": problems,
        "summaries": summaries,
    }
    (out / "report.json").write_text(json.dumps(record, indent=1, default=str), encoding="utf-8")
    (out / "report.html").write_text(render(record, out), encoding="utf-8")
    return record


def _lm_label(model: str) -> str:
    from inversionview.artifacts import find_artifact

    if find_artifact(model) is not None and "/" not in model:
        return f"the bundled {model} model (a small LM trained here, not GPT-2)"
    return model


_COLOURS = {PASS: "#1a7f37", FAIL: "#cf222e", UNSETTLED: "#9a6700", NOT_MEASURED: "#6e7781"}


def measured_anything(record: dict[str, Any]) -> bool:
    """Whether every study ran and at least one claim was measured (the exit status)."""
    counts = record["counts"]
    return not record["not_run"] and counts[PASS] + counts[FAIL] + counts[UNSETTLED] > 0


def _image(out: Path, name: str | None) -> str:
    if not name or not (out / name).is_file():
        return ""
    data = base64.b64encode((out / name).read_bytes()).decode()
    return (f'<img src="data:image/png;base64,{data}" alt="{escape(name)}" '
            'style="max-width:100%;border:1px solid #ddd">')


def _margins(claim: dict[str, Any], arm: str) -> str:
    """The margins by seed of one decoder's runs, and how they settled."""
    runs = [r for r in claim["runs"] if r["decoder"] == arm]
    settled = claim[arm]
    if not runs or settled is None:
        return ""
    each = ", ".join(f"{r['seed']}: " + ("-" if r["margin"] is None else f"{r['margin']:+.2f}")
                     for r in runs)
    mean = settled["mean_margin"]
    return (f"{settled['status']}; margin by seed {each}"
            + ("" if mean is None else f"; mean {mean:+.2f} ± {settled['spread']:.2f}"))


def _count_line(counts: dict[str, int]) -> str:
    return (f"{counts[PASS]} passed, {counts[FAIL]} failed, {counts[UNSETTLED]} unsettled, "
            f"{counts[NOT_MEASURED]} not measured")


def control_line(record: dict[str, Any]) -> str:
    """How many claims with a control the random decoder meets too."""
    with_control = [c for c in record["claims"] if c["control"] is not None]
    if not with_control:
        return ""
    met = [c["id"] for c in with_control if c["control"]["status"] == PASS]
    return (f"the random-weight control meets {len(met)} of the {len(with_control)} claims run "
            f"beside it" + (f" ({', '.join(met)}): there the sampling, the grammar and the "
                            "search read the finding without the decoder" if met else ""))


def render(record: dict[str, Any], out: Path) -> str:
    """The report as one HTML page: figures inlined as data URLs, no script, no network."""
    sections = []
    shown_images: set[str] = set()
    for study in STUDIES:
        claims = [c for c in record["claims"] if c["study"] == study]
        if not claims and study not in record["not_run"]:
            continue
        parts = [f"<h2>{escape(study)}</h2>"]
        if study in record["not_run"]:
            parts.append(f"<p class=skip>Not run: {escape(record['not_run'][study])}</p>")
        for claim in claims:
            colour = _COLOURS[claim["status"]]
            picture = ""
            if claim["plot"] and claim["plot"] not in shown_images:
                shown_images.add(claim["plot"])
                picture = _image(out, claim["plot"])
            elif claim["plot"]:
                picture = f"<p><small>Figure: {escape(claim['plot'])}, above.</small></p>"
            control = ""
            if claim["control"] is not None:
                control = (f"<tr><th>control (random weights)</th><td>"
                           f"{escape(claim['control_figure'])}</td><td>"
                           f"{escape(_margins(claim, CONTROL))}</td></tr>")
            trained = claim["figure"] or claim["reason"]
            parts.append(
                f'<div class=claim><p><span class=badge style="background:{colour}">'
                f'{escape(claim["status"])}</span> <b>{escape(claim["statement"])}</b></p>'
                f'<p>About the {escape(claim["about"])}. Model: {escape(claim["model"])}'
                + (f'; decoder {escape(claim["decoder"])}' if claim["decoder"] else "")
                + f' <small>({escape(claim["id"])}, {claim["seconds"]:.0f} s)</small></p>'
                f'<p>The paper: {escape(claim["paper"])}</p>'
                f'<p>Criterion: {escape(claim["criterion"])} <small>Why: '
                f'{escape(claim["why"])}</small></p>'
                f'<table><tr><th></th><th>measured (first decided seed)</th><th>over seeds</th></tr>'
                f'<tr><th>{"trained decoder" if claim["decoder"] else "model"}</th>'
                f'<td>{escape(trained)}</td><td>{escape(_margins(claim, TRAINED))}</td></tr>'
                f'{control}</table>'
                + (f'<p>Verdict: {escape(claim["reason"])}</p>' if claim["reason"] else "")
                + f'{picture}</div>')
        sections.append("\n".join(parts))
    machine = record["machine"]
    return f"""<!doctype html><html><head><meta charset="utf-8">
<title>InversionView: the paper's findings, reproduced</title>
<style>body{{font-family:sans-serif;margin:2em auto;max-width:70em;line-height:1.4}}
.claim{{border-left:4px solid #ddd;padding:0 1em;margin:1.2em 0}}
.badge{{color:white;border-radius:4px;padding:1px 8px;font-size:90%}}.skip{{color:#6e7781}}
table{{border-collapse:collapse;font-size:90%}}td,th{{border:1px solid #ddd;padding:2px 6px;
text-align:left;vertical-align:top}}small{{color:#57606a}}</style></head><body>
<h1>The paper's findings, measured on this machine</h1>
<p>{_count_line(record['counts'])} ({'quick run' if record['quick'] else 'full run'}, seeds
{', '.join(map(str, record['seeds']))}, {record['seconds']:.0f} s); {escape(control_line(record))}.
Each claim states its
criterion before its figure; thresholds are constants of <code>inversionview.reproduce</code>.
A claim about the preimage or the decoder runs beside a control, a decoder of the same shape
with random weights under the same sampling and search; a claim about the decoder passes only
when the trained decoder clearly beats it. A verdict holds when the seeds agree or their mean
margin clears the criterion by more than their spread; otherwise it is unsettled.
Command: <code>{escape(record['command'])}</code>; commit {escape(str(record['commit']))};
{escape(str(machine.get('processor', '')))}, torch {escape(str(machine.get('torch', '')))}.</p>
{''.join(sections)}
</body></html>"""


def terminal(record: dict[str, Any]) -> str:
    lines = [f"{_count_line(record['counts'])} over seeds "
             f"{', '.join(map(str, record['seeds']))} ({record['seconds']:.0f} s)"]
    if control_line(record):
        lines.append(control_line(record))
    for claim in record["claims"]:
        lines.append(f"{claim['status']:<12} {claim['id']}  [about the {claim['about']}; "
                     f"{claim['model']}]")
        lines.append(f"             {claim['figure'] or claim['reason']}")
        if claim["trained"] is not None and claim["figure"]:
            lines.append(f"             seeds: {_margins(claim, TRAINED)}")
        if claim["control"] is not None:
            lines.append(f"             control: {claim['control_figure']}")
            lines.append(f"             control seeds: {_margins(claim, CONTROL)}")
        if claim["status"] in (FAIL, UNSETTLED) and claim["reason"] and claim["figure"]:
            lines.append(f"             verdict: {claim['reason']}")
    for study, reason in record["not_run"].items():
        lines.append(f"not run      {study}: {reason}")
    return "\n".join(lines)


__all__ = ["CASE_STUDY_MODELS", "SEEDS", "STUDIES", "check_authors", "check_studies",
           "control_line", "load_case_study", "measured_anything", "render", "reproduce",
           "terminal"]
