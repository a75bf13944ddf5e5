"""``inversionview`` query, completeness, serve: a query's preimage, the sampler checked against
the exact preimage, and the web UI."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from inversionview import options
from inversionview.cli.app import app
from inversionview.cli.common import (BanCorpusOpt, BanRareOpt, CandidatesOpt, ConstrainOpt,
                                      DecoderOpt, EpsilonOpt, FixedOpt, ForceOpt, InputOpt,
                                      JsonOpt, Metric, MetricOpt, ModelArg, NoiseCosineOpt,
                                      NoiseOpt, PositionOpt, RawOpt, SearchOpt, SeedOpt, SiteOpt,
                                      TaskOpt, TemperatureOpt, ThreadsOpt, _apply_threads, _emit,
                                      _flag, _query_setup)
from inversionview.errors import UserError, echo


@app.command()
def query(
    model: Annotated[str, typer.Argument(help="Model (default: the bundled counting model).")] = "counting",
    task: TaskOpt = None, raw: RawOpt = False, decoder: DecoderOpt = None, input_text: InputOpt = None,
    site: SiteOpt = None, position: PositionOpt = None, candidates: CandidatesOpt = 1024,
    temperature: TemperatureOpt = None, noise: NoiseOpt = None, seed: SeedOpt = 0,
    epsilon: EpsilonOpt = 0.1, metric: MetricOpt = Metric.euclidean, fixed_position: FixedOpt = False,
    all_samples: Annotated[bool, _flag("--all", "Show every distinct candidate.")] = False,
    search: SearchOpt = None, constrain: ConstrainOpt = True,
    noise_cosine: NoiseCosineOpt = None, ban_rare: BanRareOpt = None,
    ban_corpus: BanCorpusOpt = None,
    html_file: Annotated[Optional[Path], typer.Option("--html", help="Also write the view as one "
                                                      "self-contained HTML page.")] = None,
    force: ForceOpt = False,
    threads: ThreadsOpt = None,
    verify_readout: Annotated[bool, _flag("--verify", "Also patch the query's activation with "
                                          "in- and out-of-epsilon samples' (see `verify`).")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Sample, score and colour the epsilon-preimage of one activation."""
    from inversionview.preimage.query import query_config, run_query
    from inversionview.views.terminal import render_result

    if html_file is not None:
        options.check_output_file(html_file, "--html", force=force)
    _apply_threads(threads)
    cosine_range = options.parse_cosine_range(noise_cosine, "--noise-cosine")
    if cosine_range is not None and noise is not None:
        raise UserError("give --noise or --noise-cosine, not both (cosine noise replaces the "
                        "Gaussian noise)")
    if ban_corpus is not None and ban_rare is None:
        raise UserError("--ban-corpus needs --ban-rare N: the count below which a token of "
                        "those texts is never sampled")
    ban_texts = None
    if ban_corpus is not None:  # read first: a file that cannot be used is refused at once
        from inversionview.text.sources import read_texts

        ban_texts = read_texts(ban_corpus, what="--ban-corpus")
    probed, the_decoder, name, text, site, position = _query_setup(
        model, task, raw, decoder, input_text, site, position)
    banned: tuple[int, ...] = ()
    if ban_rare is not None:
        from inversionview.text.counts import rare_tokens, stored_rare_tokens

        if not probed.task.free_text:
            raise UserError("--ban-rare is for language models; a toy task's vocabulary has "
                            "no rare tokens")
        banned = (stored_rare_tokens(probed.source, probed.task.vocab, ban_rare) if ban_texts is None
                  else rare_tokens(probed.task.vocab, ban_texts, ban_rare,
                                   counted=f"--ban-corpus {ban_corpus}"))
    config = query_config(candidates, epsilon, metric.value, fixed_position, temperature, noise,
                          all_samples, search=search, constrain=constrain,
                          noise_cosine=cosine_range, banned=banned)
    result = run_query(probed, the_decoder, text, site, position, config, seed=seed,
                       decoder_name=name)
    if verify_readout:
        from inversionview.verify.readout import verify_readout as check

        result.verification = check(probed, result)
    if html_file is not None:
        from inversionview.views.html import render_html

        page = render_html(result)
        options.write_output(html_file, "--html", lambda path: path.write_text(page, encoding="utf-8"))
    _emit(result.to_record(), as_json, render_result(result)
          + (f"\nwrote {html_file}" if html_file is not None else ""))


def _estimate_text(report) -> str:
    if report.estimate is None:
        return "- (the decoder drew no member)"
    return f"{report.estimate:,.0f} (true {report.true_in_epsilon:,}; ratio {report.estimate_ratio:.2f})"


@app.command()
def completeness(
    model: ModelArg, task: TaskOpt = None, raw: RawOpt = False, decoder: DecoderOpt = None,
    input_text: InputOpt = None, site: SiteOpt = None, position: PositionOpt = None,
    candidates: CandidatesOpt = 1024, seed: SeedOpt = 0, epsilon: EpsilonOpt = 0.1,
    metric: MetricOpt = Metric.euclidean, fixed_position: FixedOpt = False,
    search: SearchOpt = None, constrain: ConstrainOpt = True,
    plot: Annotated[Optional[Path], typer.Option("--plot", help="Draw distance against the "
                                                 "decoder's log-probability (.png, .pdf or .svg).")] = None,
    force: ForceOpt = False,
    threads: ThreadsOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Compare the query's sampler (the decoder and the search) with the exact preimage over
    every input (addition: 810,000), and its size estimate with the true size."""
    import time

    from inversionview.preimage.exact import completeness as measure, plot_completeness, separation
    from inversionview.preimage.query import query_config

    started = time.perf_counter()
    if plot is not None:
        options.check_output_file(plot, "--plot", options.PLOT_SUFFIXES, force)
    _apply_threads(threads)
    config = query_config(candidates, epsilon, metric.value, fixed_position, None, None,
                          search=search, constrain=constrain)
    probed, the_decoder, _, text, site, position = _query_setup(
        model, task, raw, decoder, input_text, site, position)
    universe = probed.task.enumerate_tokens()
    report = measure(probed, the_decoder, text, site, position, config, seed=seed,
                     universe=universe)
    ranked = separation(probed, the_decoder, text, site, position, report.distances,
                        report.epsilon, universe, sample=2048, seed=seed)
    if plot is not None:
        options.write_output(plot, "--plot", lambda path: plot_completeness(
            report, probed, the_decoder, universe, path, seed=seed))
        report.plot = str(plot)
    report.seconds = round(time.perf_counter() - started, 3)  # all of it: load, score, plot
    recall = "-" if report.recall is None else f"{report.recall:.3f}"
    precision = "-" if report.precision is None else f"{report.precision:.3f}"
    human = (f"{report.query}  site {report.site}  position {report.position_label!r} "
             f"(index {report.position}), epsilon {report.epsilon:g}\n"
             f"true preimage: {report.true_in_epsilon} of {report.universe} inputs in epsilon\n"
             f"decoder: {report.candidates} candidates, {report.distinct} distinct "
             f"({report.outside_universe} outside the input space), {report.found_by_decoder} "
             f"of the true in-epsilon inputs (precision {precision})\n"
             + (f"search: {report.search['evaluations']:,} inputs scored in "
                f"{report.search['rounds']} round{'s' * (report.search['rounds'] != 1)} "
                f"({report.search['stop']}), "
                f"{report.found_by_search:,} more found, {report.reported_outside} reported "
                f"wrongly\n" if report.search else "search: off (--search 0)\n")
             + f"recall {recall} ({report.found_in_epsilon:,} found; at this budget "
             f"{'-' if report.recall_at_budget is None else f'{report.recall_at_budget:.3f}'}); "
             f"estimated size {_estimate_text(report)} "
             f"({report.seconds:.1f} s in all)"
             + (f"\ndecoder log-probability: an in-epsilon input ranks above an outside one "
                f"with chance (AUC) {ranked.auc:.3f} ({ranked.inside:,} and {ranked.outside:,} "
                f"inputs scored; the paper's completeness check, Fig. 11)" if ranked else "")
             + (f"\nwrote {report.plot}" if report.plot else ""))
    _emit({**report.to_record(), "separation": ranked.to_record() if ranked else None},
          as_json, human)


@app.command()
def serve(
    models: Annotated[Optional[list[str]], typer.Argument(
        help="Models to serve besides the bundled ones: artifact names or model directories "
             "(each needs a bundled decoder trained on it, or --decoder).")] = None,
    task: TaskOpt = None,
    decoder: Annotated[Optional[list[str]], typer.Option(
        "--decoder", help="MODEL=DIR: the decoder for one of the models (repeatable).")] = None,
    host: Annotated[str, typer.Option("--host", help="Address to bind; anything but loopback "
                                      "(e.g. 0.0.0.0) opens the server, which has no "
                                      "authentication, to the network.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", callback=options.PORT.callback,
                                      help="TCP port to listen on (1 to 65,535).")] = 8000,
    threads: ThreadsOpt = None,
) -> None:
    """Start the web UI and its JSON API (http://HOST:PORT, API docs at /docs)."""
    import uvicorn

    from inversionview.web.app import check_can_listen, create_app, is_loopback
    from inversionview.web.service import QueryService, bundled_model_names, load_model

    _apply_threads(threads)
    decoders: dict[str, Path] = {}
    for item in decoder or []:
        name, sep, directory = item.partition("=")
        if not sep or not name or not directory:
            raise UserError(f"--decoder takes MODEL=DIR, got {echo(item)}")
        decoders[name] = Path(directory)
    names = list(dict.fromkeys((models or []) + bundled_model_names()))
    unknown = sorted(set(decoders) - set(names))
    if unknown:
        raise UserError(f"--decoder names {', '.join(unknown)}, which is not among the served models "
              f"({', '.join(names)})")
    check_can_listen(host, port)  # before the models load, not after
    if not is_loopback(host):
        typer.echo(f"warning: serving on {echo(host)}, not loopback: anyone who can reach this "
                   f"address can run queries on this machine (there is no authentication); "
                   f"use --host 127.0.0.1 to keep it local", err=True)
    loaded = []
    for name in names:
        try:
            # --task is for the models named here; the bundled ones say their own
            loaded.append(load_model(name, task if name in (models or []) else None,
                                     decoders.get(name)))
        except UserError as error:
            if name in (models or []):
                raise
            typer.echo(f"skipping bundled model {name}: {error}", err=True)
    if not loaded:
        raise UserError("no model to serve: every bundled model failed to load (see above)")
    service = QueryService(loaded)
    typer.echo(f"serving {', '.join(service.models)} at http://{host}:{port} "
               f"(API docs at /docs)")
    uvicorn.run(create_app(service), host=host, port=port, log_level="warning")
