"""``inversionview summarize``, ``interpret`` and ``reproduce``: what every site encodes,
read from many queries, and the paper's findings as checks (issue 17)."""

from pathlib import Path
from typing import Annotated, Optional

import typer

from inversionview import options
from inversionview.cli.app import app
from inversionview.cli.common import (CandidatesOpt, DecoderOpt, EpsilonOpt, ForceOpt, JsonOpt,
                                      Metric, MetricOpt, ModelArg, RawOpt, SeedOpt, TaskOpt,
                                      ThreadsOpt, _apply_threads, _emit, _query_setup)


def _names(value: str | None, option: str, allowed: str) -> list[str] | None:
    """The comma-separated names of ``option``; an error saying what is ``allowed`` when
    there are none."""
    if value is None:
        return None
    names = [name.strip() for name in value.split(",") if name.strip()]
    if not names:
        from inversionview.errors import UserError

        raise UserError(f"{option} is empty; give comma-separated {allowed}")
    return names

SitesOpt = Annotated[Optional[str], typer.Option(
    "--sites", help="Comma-separated sites (default: every site the decoder reads).")]
PositionsOpt = Annotated[Optional[str], typer.Option(
    "--positions", help="Comma-separated named positions (default: every named position "
    "of the task).")]
CorpusOpt = Annotated[Optional[Path], typer.Option(
    "--corpus", help="Free text: the texts queries are drawn from (.txt lines, .jsonl or a "
    "datasets directory; at most 32 tokens each).")]
QueriesOpt = Annotated[int, typer.Option(
    "--queries", help=f"Queries per (site, position) ({options.SUMMARY_QUERIES.describe()}).",
    callback=options.SUMMARY_QUERIES.callback)]


@app.command()
def summarize(
    model: ModelArg, task: TaskOpt = None, raw: RawOpt = False, decoder: DecoderOpt = None,
    sites: SitesOpt = None, positions: PositionsOpt = None, queries: QueriesOpt = 10,
    corpus: CorpusOpt = None, candidates: CandidatesOpt = 256, epsilon: EpsilonOpt = 0.1,
    metric: MetricOpt = Metric.euclidean, seed: SeedOpt = 0,
    out: Annotated[Optional[Path], typer.Option(
        "--out", help="Also write the summary here: DIR/summary.json, summary.html, "
        "summary.md and summary.png (the heat map).")] = None,
    force: ForceOpt = False, threads: ThreadsOpt = None, as_json: JsonOpt = False,
) -> None:
    """What the in-epsilon samples of many queries keep, per site and position (the
    paper's Table 3 in form): task attributes, numerically close values, relations such
    as a place's two digits in either order, and for free text shared tokens."""
    import base64
    import json
    import sys

    from inversionview.artifacts import shown_name
    from inversionview.decoder.train import attach_corpus
    from inversionview.interpret.summary import (html_table, markdown_table, plot_summary,
                                                 summarize as run, summary_config,
                                                 terminal_table)

    if out is not None:
        options.check_output_directory(out, "--out", force, marker="summary.json")
    _apply_threads(threads)
    probed, the_decoder, name, _, _, _ = _query_setup(model, task, raw, decoder, None, None, None)
    probed = attach_corpus(probed, None if corpus is None else str(corpus))
    config = summary_config(candidates, epsilon, metric.value)

    def progress(done: int, total: int, cell: str) -> None:
        if not as_json and sys.stderr.isatty():
            print(f"\r{done}/{total} cells ({cell})    ", end="", file=sys.stderr, flush=True)

    summary = run(probed, the_decoder, _names(sites, "--sites", "sites, e.g. a0.0,x0.mid"),
                  _names(positions, "--positions", "named positions of the task"),
                  queries, seed, config,
                  model_name=shown_name(model), decoder_name=shown_name(name),
                  progress=progress)
    record = summary.to_record()
    written = ""
    if out is not None:
        def write(directory: Path) -> None:
            directory.mkdir(parents=True, exist_ok=True)
            picture = plot_summary(summary, directory / "summary.png")
            inline = "data:image/png;base64," + base64.b64encode(picture.read_bytes()).decode()
            (directory / "summary.html").write_text(html_table(summary, inline), encoding="utf-8")
            (directory / "summary.json").write_text(json.dumps(record, indent=1), encoding="utf-8")
            (directory / "summary.md").write_text(markdown_table(summary) + "\n",
                                                  encoding="utf-8")

        options.write_output(out, "--out", write)
        record["out"] = str(out)
        written = f"\nwrote {out}/summary.json, summary.html, summary.md, summary.png"
    _emit(record, as_json, terminal_table(summary) + written)


@app.command()
def reproduce(
    quick: Annotated[bool, typer.Option("--quick", help="Fewer queries, pairs and seeds "
                                        "(3; the full run: 5).", metavar="")] = False,
    out: Annotated[Path, typer.Option("--out", help="Where report.html, report.json and "
                                      "the figures go.")] = Path("reproduce"),
    authors: Annotated[Optional[Path], typer.Option(
        "--authors", help="The folder holding the authors' probed models (counting/, "
        "addition/); default: the bundled toy models.")] = None,
    ioi_model: Annotated[str, typer.Option("--ioi-model", help="The IOI case study's "
                                           "model.")] = "lm-ioi",
    factual_model: Annotated[str, typer.Option("--factual-model", help="The factual-recall "
                                               "case study's model.")] = "lm-factual",
    studies: Annotated[Optional[str], typer.Option(
        "--studies", help="Comma-separated: counting, addition, ioi, factual (default: "
        "all).")] = None,
    seed: SeedOpt = 0,
    seeds: Annotated[Optional[int], typer.Option(
        "--seeds", help="Seeds each claim runs over (SEED, SEED+1, ...); default 3 with "
        "--quick, else 5.", min=1, max=50)] = None,
    force: ForceOpt = False, threads: ThreadsOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Run the paper's findings as claims, each with its criterion, what it is about, the
    figures measured here over several seeds beside a random-weight control decoder, a
    verdict (pass, fail, unsettled, not measured) and a figure; write one self-contained
    HTML report and its JSON. Exits 1 when a study could not run or no claim was
    measured."""
    import sys

    from inversionview.reproduce.report import (STUDIES, check_authors, check_studies,
                                                load_case_study, measured_anything,
                                                reproduce as run, terminal)

    chosen = tuple(_names(studies, "--studies", "studies from " + ", ".join(STUDIES)) or STUDIES)
    check_studies(chosen)
    check_authors(authors, chosen)
    options.check_output_directory(out, "--out", force, marker="report.json")
    _apply_threads(threads)
    # The case studies' models and decoders first: one that cannot be used is refused
    # before any study runs.
    models = {"ioi": ioi_model, "factual": factual_model}
    loaded = {study: load_case_study(study, models[study]) for study in chosen if study in models}

    def say(message: str) -> None:
        if not as_json:
            print(message, file=sys.stderr, flush=True)

    record = run(out, quick, seed, authors, ioi_model, factual_model, chosen, say, seeds, loaded)
    _emit(record, as_json, terminal(record) + f"\nwrote {out}/report.html and report.json")
    if not measured_anything(record):
        print("reproduce: " + ("a study could not run (" + ", ".join(record["not_run"]) + ")"
                               if record["not_run"] else "no claim was measured")
              + "; see the report", file=sys.stderr)
        raise typer.Exit(1)


@app.command()
def interpret(
    model: ModelArg, task: TaskOpt = None, raw: RawOpt = False, decoder: DecoderOpt = None,
    site: Annotated[Optional[str], typer.Option("--site", help="Site (default: the "
                                                "task's).")] = None,
    position: Annotated[Optional[str], typer.Option("--position", help="Position (default: "
                                                    "the task's).")] = None,
    queries: Annotated[int, typer.Option("--queries", help="Queries shown to the LLM (the "
                                         "paper: 5).", callback=options.SUMMARY_QUERIES.callback)] = 5,
    corpus: CorpusOpt = None, candidates: CandidatesOpt = 256, epsilon: EpsilonOpt = 0.1,
    metric: MetricOpt = Metric.euclidean, seed: SeedOpt = 0,
    ask: Annotated[bool, typer.Option("--ask", help="Send the prompt to the LLM named by "
                                      "INVERSIONVIEW_LLM_URL and INVERSIONVIEW_LLM_MODEL "
                                      "(key: INVERSIONVIEW_LLM_KEY); without it nothing is "
                                      "sent and the prompt is shown.", metavar="")] = False,
    timeout: Annotated[float, typer.Option("--timeout", help="Seconds the whole request to "
                                           "the LLM may take, its answer included.",
                                           callback=options.LLM_TIMEOUT.callback)] = 120.0,
    out: Annotated[Optional[Path], typer.Option(
        "--out", help="Write DIR/interpretation.json (summary, prompt, then the answer) "
        "before and after asking.")] = None,
    force: ForceOpt = False, threads: ThreadsOpt = None, as_json: JsonOpt = False,
) -> None:
    """Describe one site and position from several queries' in-epsilon samples: the
    deterministic summary, the paper's LLM prompt, and (with --ask) the LLM's answer
    stored beside it."""
    import json

    from inversionview.artifacts import shown_name
    from inversionview.decoder.train import attach_corpus
    from inversionview.interpret.interpretation import LLMError, interpret as describe
    from inversionview.interpret.llm import Endpoint

    if out is not None:
        options.check_output_directory(out, "--out", force, marker="interpretation.json")
    endpoint = Endpoint.from_environment(timeout) if ask else None  # before the long work
    _apply_threads(threads)
    probed, the_decoder, name, _, site, position = _query_setup(
        model, task, raw, decoder, None, site, position)
    probed = attach_corpus(probed, None if corpus is None else str(corpus))
    interpretation = describe(probed, the_decoder, site, position, queries,
                              candidates=candidates, epsilon=epsilon, metric=metric.value,
                              seed=seed, model_name=shown_name(model),
                              decoder_name=shown_name(name))

    def save() -> None:
        if out is not None:
            def write(directory: Path) -> None:
                directory.mkdir(parents=True, exist_ok=True)
                (directory / "interpretation.json").write_text(
                    json.dumps(interpretation.to_record(), indent=1), encoding="utf-8")
            options.write_output(out, "--out", write)

    save()  # the summary and the prompt are kept whatever the LLM does
    if endpoint is not None:
        try:
            interpretation.ask(endpoint)
        except LLMError as error:
            if out is not None:
                raise LLMError(f"{error} (the summary and the prompt are in "
                               f"{out}/interpretation.json)") from None
            raise
        save()
    human = [interpretation.headline()]
    if interpretation.answer is None:
        human += ["", "the prompt (nothing sent; --ask sends it):", ""]
        human += [f"--- {m['role']} ---\n{m['content']}" for m in interpretation.messages]
    else:
        human += ["", f"the LLM ({endpoint.describe()}) says:", "", interpretation.answer]
    if out is not None:
        human.append(f"\nwrote {out}/interpretation.json")
    _emit(interpretation.to_record(), as_json, "\n".join(human))
