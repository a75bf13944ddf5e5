"""The ``inversionview`` command: a thin shell over the library.

Every command but ``serve`` takes ``--json`` to print one JSON object instead of the human
view. ``run(argv)`` is the entry point: an error a user can act on (a ``UserError``: bad
input, an unknown site, a broken model file; or a usage error) prints one line and exits
with status 2; options are checked against ``options`` while parsing, and output paths
before any long work.
"""

from __future__ import annotations

import json
import os
import re
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from inversionview import cli_factual, cli_interpret, cli_ioi, cli_train_lm, options
from inversionview.errors import MAX_ECHO, UserError, echo
from inversionview.schedule import EVAL_SECONDS

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  rich_markup_mode=None,
                  help="Read what a neural activation encodes from its epsilon-preimage.")

ModelArg = Annotated[str, typer.Argument(
    help="A bundled artifact (see `inversionview models`), a model directory, or a "
         "HuggingFace GPT-2 directory (its task inferred from its vocabulary).")]
TaskOpt = Annotated[Optional[str], typer.Option("--task", help="counting, addition or text "
                                                "(default: the model's manifest; text for a "
                                                "directory with a tokenizer; else the one task "
                                                "its vocabulary fits).")]


def _flag(name: str, help: str) -> Any:
    """An on/off option (shown without a value type in --help)."""
    return typer.Option(name, help=help, metavar="")


JsonOpt = Annotated[bool, _flag("--json", "Print one JSON object.")]
RawOpt = Annotated[bool, _flag("--raw", "Read the raw HuggingFace activations instead of "
                               "TransformerLens-processed ones (the paper's default).")]
SeedOpt = Annotated[int, typer.Option("--seed", help="Seed of every random choice "
                                      "(0..2^63-1).", callback=options.SEED.callback)]
ThreadsOpt = Annotated[Optional[int], typer.Option("--threads", help="CPU threads (default: "
                                                   "torch's).", callback=options.THREADS.callback)]
InputOpt = Annotated[Optional[str], typer.Option("--input", help="The query input (default: the "
                                                  "task's example).")]
SiteOpt = Annotated[Optional[str], typer.Option("--site", help="Site, e.g. a1.0 or "
                                                "blocks.1.attn.hook_result.0 (default: the task's).")]
PositionOpt = Annotated[Optional[str], typer.Option("--position", help="Named position or index, "
                                                    "0 = BOS (default: the task's).")]
DecoderOpt = Annotated[Optional[Path], typer.Option("--decoder", help="Decoder directory (default: "
                                                    "the bundled one trained on MODEL's weights).")]
CandidatesOpt = Annotated[int, typer.Option("--candidates", help="Candidates to draw, in rounds of "
                                            f"64 ({options.CANDIDATES.describe()}).",
                                            callback=options.CANDIDATES.callback)]
SearchOpt = Annotated[Optional[int], typer.Option(
    "--search", help="Inputs the local search around the decoder's candidates may score, to find "
    "the members of the preimage the decoder missed (0: the paper's decoder-only sampling; "
    f"{options.SEARCH_EVALUATIONS.describe()}; default: 16,384 on the toy tasks, 4,096 on free text).",
    callback=options.SEARCH_EVALUATIONS.callback)]
NoiseCosineOpt = Annotated[Optional[str], typer.Option(
    "--noise-cosine", help="LOW[:HIGH]: condition each candidate on a vector of the query's norm "
    "at a cosine drawn from [LOW, HIGH] to it, in a random direction (the paper's factual-recall "
    "noise, 0.75:0.9; replaces --noise).")]
BanRareOpt = Annotated[Optional[int], typer.Option(
    "--ban-rare", help="Never sample tokens seen fewer than this many times in the model's "
    "training corpus (its token_counts.json, which train-lm writes) or in --ban-corpus (the "
    "paper banned rare tokens for factual recall).", callback=options.BAN_COUNT.callback)]
BanCorpusOpt = Annotated[Optional[Path], typer.Option(
    "--ban-corpus", help="Texts to count for --ban-rare instead of the model's stored counts "
    "(.txt lines, .jsonl or a datasets directory).")]
ConstrainOpt = Annotated[bool, typer.Option(
    "--constrain/--free", help="Draw only tokens that can lead to an input of the task, where it "
    "has a grammar (counting, addition), or sample freely as the paper did (malformed candidates "
    "are drawn, scored and shown as invalid). Free text is always sampled freely.")]
EpsilonOpt = Annotated[float, typer.Option("--epsilon", help="Radius of the preimage.",
                                           callback=options.EPSILON.callback)]


class Metric(str, Enum):
    euclidean = "euclidean"
    cosine = "cosine"


MetricOpt = Annotated[Metric, typer.Option("--metric", help="euclidean (normalised by the query's "
                                           "norm) or cosine (1 - cos).")]
FixedOpt = Annotated[bool, _flag("--fixed-position", "Compare at the query's position "
                                        "in each candidate instead of the minimum over positions.")]
TemperatureOpt = Annotated[Optional[float], typer.Option("--temperature", help="One temperature "
                                                         "for every round (replaces the schedule).",
                                                         callback=options.TEMPERATURE.callback)]
NoiseOpt = Annotated[Optional[float], typer.Option("--noise", help="One noise level for every "
                                                   "round (replaces the schedule).",
                                                   callback=options.NOISE.callback)]
ForceOpt = Annotated[bool, _flag("--force", "Replace output files that exist.")]


def _emit(record: dict[str, Any], as_json: bool, human: str) -> None:
    typer.echo(json.dumps(record) if as_json else human)


def _apply_threads(threads: int | None) -> None:
    if threads is not None:
        import torch

        torch.set_num_threads(threads)


def _explicit(ctx: typer.Context, given: list[tuple[str, str, Any, str]]
              ) -> dict[str, tuple[str, Any]]:
    """Of ``given`` (option label, config path, value, parameter name), the options the user
    typed: on --resume each must agree with the run's stored setting."""
    return {label: (path, value) for label, path, value, name in given
            if ctx.get_parameter_source(name).name not in ("DEFAULT", "DEFAULT_MAP")}


def _shape_overrides(d_model: int | None, n_heads: int | None, n_layers: int | None
                     ) -> dict[str, Any]:
    """GPT2Config overrides from --d-model (with a 4x MLP), --n-heads and --n-layers."""
    overrides: dict[str, Any] = {}
    if d_model is not None:
        overrides.update(n_embd=d_model, n_inner=4 * d_model)
    if n_heads is not None:
        overrides["n_head"] = n_heads
    if n_layers is not None:
        overrides["n_layer"] = n_layers
    return overrides


def _load(model: str, task: str | None, raw: bool = False):
    from inversionview.probed import load_probed

    return load_probed(model, task, processing="raw" if raw else "processed")


@app.command()
def models(as_json: JsonOpt = False) -> None:
    """List the bundled artifacts and the known tasks and model kinds."""
    from inversionview.artifacts import list_artifacts
    from inversionview.tasks import TASKS

    artifacts = {
        name: {"path": str(path), "kind": manifest.get("kind"), "task": manifest.get("task"),
               "accuracy": manifest.get("accuracy")}
        for name, (path, manifest) in list_artifacts().items()
    }
    from inversionview.tasks import TEXT_TASKS, text_task

    record = {
        "artifacts": artifacts,
        "tasks": {name: {"sites": list(cls.sites), "positions": list(cls.position_names)}
                  for name, cls in TASKS.items()},
        "language_model_tasks": {name: {"positions": list(text_task(name).position_names)}
                                 for name in TEXT_TASKS},
        "model_kinds": ["probed-model directory (inversionview.json names its task)",
                        "HuggingFace GPT-2 directory (the task inferred from its vocabulary, "
                        "or --task)",
                        "causal LM directory with its tokenizer (any language-model task: "
                        "--task text, ioi or factual)"],
    }
    lines = ["Bundled artifacts:"]
    for name, info in artifacts.items():
        accuracy = f"accuracy {info['accuracy']:.4f}" if isinstance(info["accuracy"], float) else ""
        lines.append(f"  {name:<12} {info['kind'] or '?':<14} task={info['task'] or '?':<9} "
                     f"{accuracy}  {info['path']}")
    if not artifacts:
        lines.append("  (none)")
    lines.append("Tasks:")
    for name, info in record["tasks"].items():
        lines.append(f"  {name:<9} sites: {' '.join(info['sites'])}")
        lines.append(f"  {'':<9} positions: {' '.join(info['positions'])} (or an index, 0 = BOS)")
    lines.append("Language-model tasks (sites: the model's own):")
    for name, info in record["language_model_tasks"].items():
        extra = ", ".join(["an index", "a token"] + [p for p in ("last", "bos")
                                                      if p not in info["positions"]])
        lines.append(f"  {name:<9} positions: {' '.join(info['positions'])} (or {extra})")
    lines.append("Model kinds: " + "; ".join(record["model_kinds"]))
    _emit(record, as_json, "\n".join(lines))


@app.command("eval-probed")
def eval_probed(model: ModelArg, task: TaskOpt = None, raw: RawOpt = False,
                n: Annotated[int, typer.Option("--n", help="Fresh samples to evaluate.",
                                               callback=options.EVAL_SAMPLES.callback)] = 20_000,
                seed: SeedOpt = 0, as_json: JsonOpt = False) -> None:
    """Accuracy of a probed model on fresh samples of its task."""
    from inversionview.probed.evaluate import accuracy

    probed = _load(model, task, raw)
    value = accuracy(probed, n=n, seed=seed)
    record = {"model": model, "task": probed.task.name, "n": n, "accuracy": value}
    _emit(record, as_json, f"{model} ({probed.task.name}): accuracy {value:.4f} on {n} fresh samples (seed {seed})")


@app.command()
def activation(model: ModelArg,
               input_text: Annotated[str, typer.Option("--input", help="The input text.")],
               site: Annotated[str, typer.Option("--site", help="Site, e.g. a0.0 or blocks.0.hook_resid_mid.")],
               position: Annotated[str, typer.Option("--position", help="Named position or index (0 = BOS).")],
               task: TaskOpt = None, raw: RawOpt = False, as_json: JsonOpt = False) -> None:
    """The activation vector at one site and position of an input."""
    probed = _load(model, task, raw)
    the_site = probed.site(site)
    text = probed.task.normalize(input_text)
    index = probed.task.resolve_position(text, position)
    vector = probed.activations(probed.tokens(text), the_site, index)[0]
    record = {"site": the_site.short, "hook": the_site.hook, "position": index,
              "position_label": probed.task.position_label(text, index),
              "vector": [round(v, 6) for v in vector.tolist()], "norm": vector.norm().item()}
    human = (f"{text}  site {the_site.short} ({the_site.hook})  position {index} "
             f"({record['position_label']})\nnorm {record['norm']:.4f}\n"
             + " ".join(f"{v:+.3f}" for v in vector.tolist()))
    _emit(record, as_json, human)


@app.command()
def inspect(model: Annotated[str, typer.Argument(help="Model (default: the bundled counting model).")] = "counting",
            input_text: Annotated[Optional[str], typer.Option("--input", help="Input text (default: a sample).")] = None,
            task: TaskOpt = None, raw: RawOpt = False, seed: SeedOpt = 0, as_json: JsonOpt = False) -> None:
    """Run one input: the model's prediction and the activation norm at every site and position."""
    from inversionview.inspect import inspect_input

    probed = _load(model, task, raw)
    report = inspect_input(probed, input_text, seed=seed)
    _emit(report.to_record(), as_json, report.render())


@app.command("train-probed")
def train_probed_command(
    ctx: typer.Context,
    task: Annotated[str, typer.Argument(help="counting or addition.")],
    out: Annotated[Path, typer.Option("--out", help="Run directory (becomes a model directory).")],
    minutes: Annotated[Optional[float], typer.Option(
        "--minutes", help="Budget in minutes of training (checkpoints not counted) for the whole "
        "run; on --resume it replaces the run's budget.", callback=options.MINUTES.callback)] = None,
    steps: Annotated[Optional[int], typer.Option(
        "--steps", help="Budget in steps for the whole run; on --resume it replaces the run's "
        "budget.", callback=options.STEPS.callback)] = None,
    seed: SeedOpt = 0,
    batch_size: Annotated[int, typer.Option("--batch-size", callback=options.BATCH_SIZE.callback)] = 256,
    lr: Annotated[float, typer.Option("--lr", help="Peak learning rate.",
                                      callback=options.LEARNING_RATE.callback)] = 1e-3,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the run in OUT from its "
                                         "checkpoint, with its settings and budget.")] = False,
    d_model: Annotated[Optional[int], typer.Option("--d-model", help="Override the task's default width.",
                                                   callback=options.WIDTH.callback)] = None,
    n_heads: Annotated[Optional[int], typer.Option("--n-heads", callback=options.HEADS.callback)] = None,
    n_layers: Annotated[Optional[int], typer.Option("--n-layers", callback=options.LAYERS.callback)] = None,
    objective: Annotated[str, typer.Option("--objective", help="lm: every next token; task: only "
                                           "the task's loss positions (counting: the count digit).")] = "lm",
    checkpoint_every: Annotated[Optional[float], typer.Option(
        "--checkpoint-every", help="Seconds between checkpoints (default 60; the first after "
        "10 s or 100 steps).", callback=options.CHECKPOINT_SECONDS.callback)] = None,
    threads: ThreadsOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Train a probed model on its task on fresh samples (CPU by default)."""
    from inversionview.checkpoint import check_run_directory
    from inversionview.probed.train import ProbedTrainingConfig, train_probed

    _apply_threads(threads)
    interval = {} if checkpoint_every is None else {"checkpoint_every_seconds": checkpoint_every}
    if resume:
        given = [("TASK", "task", task, "task"), ("--seed", "seed", seed, "seed"),
                 ("--batch-size", "batch_size", batch_size, "batch_size"), ("--lr", "lr", lr, "lr"),
                 ("--objective", "objective", objective, "objective"),
                 ("--d-model", "model_settings.n_embd", d_model, "d_model"),
                 ("--n-heads", "model_settings.n_head", n_heads, "n_heads"),
                 ("--n-layers", "model_settings.n_layer", n_layers, "n_layers")]
        fixed = _explicit(ctx, given)
        config = ProbedTrainingConfig.resumed(out, minutes=minutes, steps=steps, changes=interval,
                                              fixed=fixed)
    else:
        if (minutes is None) == (steps is None):
            raise UserError("give exactly one of --minutes or --steps (--resume continues a run "
                            "with its own)")
        overrides = _shape_overrides(d_model, n_heads, n_layers)
        config = ProbedTrainingConfig(task=task, out=out, minutes=minutes, steps=steps, seed=seed,
                                      batch_size=batch_size, lr=lr, model_overrides=overrides,
                                      objective=objective, **interval)
        check_run_directory(out, resume=False)
    model = train_probed(config, resume=resume, show_progress=not as_json)
    record = {"out": str(out), "task": task, **{k: model.manifest[k] for k in (
        "steps", "examples", "wall_seconds", "accuracy", "accuracy_examples", "seed", "commit")}}
    _emit(record, as_json, f"saved {out}: accuracy {record['accuracy']:.4f} on "
                           f"{record['accuracy_examples']} fresh samples after {record['steps']} "
                           f"steps ({record['wall_seconds']:.0f} s)")


@app.command("train-decoder")
def train_decoder_command(
    ctx: typer.Context,
    model: ModelArg,
    out: Annotated[Path, typer.Option("--out", help="Run directory.")],
    task: TaskOpt = None, raw: RawOpt = False,
    minutes: Annotated[Optional[float], typer.Option(
        "--minutes", help="Budget in minutes of training (evaluations and checkpoints not "
        "counted) for the whole run; on --resume it replaces the run's budget.",
        callback=options.MINUTES.callback)] = None,
    examples: Annotated[Optional[int], typer.Option(
        "--examples", help="Budget in training examples for the whole run; on --resume it "
        "replaces the run's budget.", callback=options.EXAMPLES.callback)] = None,
    preset: Annotated[str, typer.Option("--preset", help="paper (lr 1e-4 constant) or fast.")] = "fast",
    seed: SeedOpt = 0,
    rebalance: Annotated[float, typer.Option("--rebalance", help="Site rebalancing strength (0: uniform).",
                                             callback=options.REBALANCE.callback)] = 0.0,
    site_weights: Annotated[Optional[str], typer.Option(
        "--site-weights", help="Relative sampling weights of the sites, SITE=WEIGHT separated "
        "by commas, * for every site not named (default 1): m1=4 draws m1 four times as often, "
        "m1=1,*=0 trains on m1 alone. Rebalancing multiplies them; the in-ε rates and the "
        "held-out loss are still measured over every site.")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the run in OUT from its "
                                         "checkpoint, with its settings and budget.")] = False,
    checkpoint_every: Annotated[Optional[float], typer.Option(
        "--checkpoint-every", help="Seconds between checkpoints (default 60; the first after "
        "10 s or 100 steps).", callback=options.CHECKPOINT_SECONDS.callback)] = None,
    eval_every: Annotated[Optional[float], typer.Option(
        "--eval-every", help="Seconds of training between held-out evaluations (default 120; "
        "each measures the decoder and its two controls).", callback=EVAL_SECONDS.callback)] = None,
    threads: ThreadsOpt = None,
    device: Annotated[str, typer.Option("--device", help="auto (cuda if present), cpu, cuda, cuda:N.")] = "auto",
    precision: Annotated[Optional[str], typer.Option("--precision", help="auto (bf16 autocast where "
                                                     "native), bf16 or fp32; default: the preset's.")] = None,
    corpus: Annotated[Optional[Path], typer.Option("--corpus", help="A language model's training "
                                                   "text: .txt (a text per line), .jsonl or a "
                                                   "datasets directory.")] = None,
    text_field: Annotated[str, typer.Option("--field", help="The text field of a .jsonl corpus "
                                            "or datasets directory.")] = "text",
    max_tokens: Annotated[int, typer.Option("--max-tokens", help="Longest corpus piece in tokens "
                                            "(longer texts are cut into pieces).",
                                            callback=options.MAX_TOKENS.callback)] = 32,
    positions: Annotated[str, typer.Option(
        "--positions", help="Where each activation is read: uniform (any queryable position), "
        "last (each input's last one), low-bos-attention (for a head, the half of the "
        "positions where it attends least to BOS; other sites: uniform) or last-or-least-bos "
        "(the paper's factual policy: for a head, the last position or the one where it attends "
        "least to BOS, half and half, inputs where it attends only to BOS redrawn); 1 % at BOS.",
        callback=options.POSITIONS.callback)] = "uniform",
    init_from: Annotated[Optional[Path], typer.Option(
        "--init-from", help="A local GPT-2 directory (config.json + model.safetensors) with "
        "the probed model's tokenizer: the decoder takes its shape and starts from its "
        "weights (the conditioning starts fresh).")] = None,
    continue_from: Annotated[Optional[Path], typer.Option(
        "--continue-from", help="A trained decoder of this model (a run directory or an "
        "exported decoder, e.g. artifacts/decoder-counting): the run starts from its shape and "
        "weights with a fresh optimizer and schedule, to train it for longer.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Train a decoder on a probed model's activations (fresh data every step).

    Runs as DDP under `torchrun --nproc_per_node N` (NCCL on GPUs, gloo on CPU)."""

    from inversionview.checkpoint import check_run_directory
    from inversionview.decoder.pretrained import read_pretrained
    from inversionview.decoder.store import read_manifest
    from inversionview.decoder.train import DecoderTrainingConfig, resolve_device, train_decoder

    _apply_threads(threads)
    resolve_device(device)  # a device that is not here fails before the model loads
    weights = options.parse_site_weights(site_weights, "--site-weights")
    interval = {} if checkpoint_every is None else {"checkpoint_every_seconds": checkpoint_every}
    if eval_every is not None:
        interval["eval_every_seconds"] = eval_every
    if resume:
        given = [("--preset", "preset", preset, "preset"), ("--seed", "seed", seed, "seed"),
                 ("--rebalance", "rebalance", rebalance, "rebalance"),
                 ("--site-weights", "site_weights", weights, "site_weights"),
                 ("--precision", "precision", precision, "precision"),
                 ("--corpus", "corpus", None if corpus is None else str(corpus), "corpus"),
                 ("--field", "field", text_field, "text_field"),
                 ("--max-tokens", "max_tokens", max_tokens, "max_tokens"),
                 ("--positions", "positions", positions, "positions"),
                 ("--init-from", "init_from", None if init_from is None else str(init_from),
                  "init_from"),
                 ("--continue-from", "continue_from",
                  None if continue_from is None else str(continue_from), "continue_from")]
        fixed = _explicit(ctx, given)
        explicit_device = ctx.get_parameter_source("device").name not in ("DEFAULT", "DEFAULT_MAP")
        config = DecoderTrainingConfig.resumed(
            out, minutes=minutes, examples=examples, fixed=fixed,
            changes={**interval, "device": device if explicit_device else None})
    else:
        if (minutes is None) == (examples is None):
            raise UserError("give exactly one of --minutes or --examples (--resume continues a "
                            "run with its own)")
        config = DecoderTrainingConfig(out=out, minutes=minutes, examples=examples, preset=preset,
                                       seed=seed, rebalance=rebalance,
                                       site_weights=weights, device=device,
                                       precision=precision, corpus=corpus, field=text_field,
                                       max_tokens=max_tokens, positions=positions,
                                       init_from=init_from, continue_from=continue_from,
                                       **interval)
        check_run_directory(out, resume=False)  # before the model loads
        if init_from is not None:
            read_pretrained(init_from)  # its config: a wrong directory fails before the model loads
        if continue_from is not None:
            read_manifest(continue_from)  # not a decoder: fails before the model loads
    probed = _load(model, task, raw)
    train_decoder(probed, config, resume=resume, show_progress=not as_json)
    if int(os.environ.get("RANK", 0)) != 0:
        return
    manifest = json.loads((out / "decoder.json").read_text())
    record = {"out": str(out), "task": probed.task.name, **{k: manifest[k] for k in (
        "steps", "examples", "wall_seconds", "in_epsilon_mean", "in_epsilon", "well_formed",
        "distinct_in_epsilon", "seed", "commit")}}
    _emit(record, as_json, f"saved {out}: mean in-eps rate {record['in_epsilon_mean']:.3f} after "
                           f"{record['examples']} examples ({record['wall_seconds']:.0f} s)")


@app.command("export-decoder")
def export_decoder_command(
    run_dir: Annotated[Path, typer.Argument(help="A train-decoder run directory.")],
    out: Annotated[Path, typer.Option("--out", help="Where to write the exported decoder "
                                      "(artifacts/NAME to ship it).")],
    model: Annotated[Optional[str], typer.Option("--model", help="The probed model (default: "
                                                 "the one named in the run's decoder.json).")] = None,
    task: TaskOpt = None, raw: RawOpt = False,
    seed: SeedOpt = 0,
    force: ForceOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Export a trained decoder in fp16 and re-measure its in-ε rates as exported."""
    from inversionview.decoder.export import export_decoder
    from inversionview.decoder.store import MANIFEST, read_manifest

    options.check_output_directory(out, "--out", force, marker=MANIFEST)
    manifest = read_manifest(run_dir)
    if model is None and not manifest.get("probed_source"):
        raise UserError(f"{run_dir} does not say which probed model it was trained on; "
                        f"give it with --model")
    probed = _load(model or manifest["probed_source"], task or manifest["task"], raw)
    exported: dict[str, Any] = {}
    options.write_output(out, "--out", lambda path: exported.update(
        export_decoder(run_dir, path, probed, seed=seed)))
    record = {"out": str(out), "in_epsilon_mean": manifest.get("in_epsilon_mean"),
              "exported_in_epsilon_mean": exported["exported_in_epsilon_mean"],
              "exported_in_epsilon": exported["exported_in_epsilon"]}
    at_end = record["in_epsilon_mean"]
    _emit(record, as_json, f"exported {run_dir} to {out} (fp16): mean in-eps "
                           f"{record['exported_in_epsilon_mean']:.3f} as exported"
                           + (f", {at_end:.3f} at the end of training" if isinstance(at_end, float) else ""))


@app.command()
def decoders(
    model: Annotated[Optional[str], typer.Argument(help="Show the decoder found for this probed model.")] = None,
    task: TaskOpt = None, raw: RawOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """List the bundled decoders (or the one found for MODEL, matched by its weights' hash)."""
    from inversionview.decoder.store import find_decoder, shipped_decoders

    if model is not None:
        probed = _load(model, task, raw)
        found = find_decoder(probed)
        record = {"model": model, "weights_sha256": probed.weights_hash(),
                  "decoder": None if found is None else str(found)}
        _emit(record, as_json, f"{model}: " + (f"decoder {found}" if found else
                                                "no bundled decoder (train one with train-decoder)"))
        return
    entries = {name: {"path": str(path), "task": m.get("task"), "probed_source": m.get("probed_source"),
                      "in_epsilon_mean": m.get("in_epsilon_mean"), "examples": m.get("examples")}
               for name, (path, m) in shipped_decoders().items()}
    lines = [f"{name:28s} {str(e['task']):9s} in-eps {_figure(e['in_epsilon_mean'])}  for {e['probed_source']}"
             for name, e in entries.items()] or ["no bundled decoders"]
    _emit(entries, as_json, "\n".join(lines))


def _figure(value: Any) -> str:
    return f"{value:.3f}" if isinstance(value, (int, float)) else "-"


def _query_setup(model: str, task: str | None, raw: bool, decoder_dir: Path | None,
                 input_text: str | None, site: str | None, position: str | None):
    """(probed model, decoder, decoder name, text, site, position) with the task's defaults
    for what was not given (an empty string is given, and refused where it is read)."""
    from inversionview.decoder.store import decoder_for

    probed = _load(model, task, raw)
    decoder, directory = decoder_for(probed, model, decoder_dir)
    default_site, default_position = probed.task.default_query
    return (probed, decoder, str(directory), probed.task.example if input_text is None else input_text,
            default_site if site is None else site, default_position if position is None else position)


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
    probed, the_decoder, name, text, site, position = _query_setup(
        model, task, raw, decoder, input_text, site, position)
    banned: tuple[int, ...] = ()
    if ban_rare is not None:
        from inversionview.text.counts import rare_tokens, stored_rare_tokens
        from inversionview.text.sources import read_texts

        if not probed.task.free_text:
            raise UserError("--ban-rare is for language models; a toy task's vocabulary has "
                            "no rare tokens")
        banned = (stored_rare_tokens(probed.source, probed.task.vocab, ban_rare) if ban_corpus is None
                  else rare_tokens(probed.task.vocab, read_texts(ban_corpus), ban_rare))
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
                f"{report.search['rounds']} rounds ({report.search['stop']}), "
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


def _one_component(probed, spec: str):
    from inversionview.verify.patching import parse_components

    components = parse_components(probed, spec)
    if len(components) != 1:
        raise UserError(f"give one SITE@POSITION, got {len(components)}: {echo(spec)}")
    return components[0]


def _contrast_option(contrast: str) -> tuple[str, tuple[str, ...]]:
    """``flip`` / ``random`` / ``resample:F1,S1`` -> (kind, places)."""
    kind, _, places = contrast.partition(":")
    return kind, tuple(p.strip() for p in places.split(",") if p.strip())


@app.command()
def patch(
    model: ModelArg,
    components: Annotated[str, typer.Option("--components", help="SITE@POSITION, comma "
                                            "separated, in order (e.g. a0.0@query,a1.0@:).")],
    task: TaskOpt = None, raw: RawOpt = False,
    contrast: Annotated[str, typer.Option("--contrast", help="flip (counting), resample:F1,S1 "
                                          "(addition), or random.")] = "random",
    pairs_file: Annotated[Optional[Path], typer.Option("--pairs", help="Your own pairs "
                          "instead (a language model needs them): JSON Lines with original, "
                          "contrast, answer and contrast_answer per line.")] = None,
    filter_expression: Annotated[Optional[str], typer.Option("--filter", help="Keep originals "
                                 "whose attributes match, e.g. 'A1==1'.")] = None,
    target: Annotated[Optional[str], typer.Option("--target", help="The answer token "
                      "(counting: count; addition: A1..A4); default: the task's first.")] = None,
    n: Annotated[int, typer.Option("--n", help="Pairs in the test set.",
                                   callback=options.PAIRS.callback)] = 500,
    cumulative: Annotated[bool, _flag("--cumulative", "Add components one at a time, left to "
                                      "right and right to left.")] = False,
    seed: SeedOpt = 0,
    plot: Annotated[Optional[Path], typer.Option("--plot", help="Write the Fig. 4a-style plot "
                                                 "(.png, .pdf or .svg).")] = None,
    force: ForceOpt = False,
    threads: ThreadsOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Activation patching: LD of the original answer against the contrast's, patched."""
    from inversionview.verify.patching import (PatchingExperiment, contrast_pairs, given_pairs,
                                               parse_components, read_pairs)

    if plot is not None:
        options.check_output_file(plot, "--plot", options.PLOT_SUFFIXES, force)
    _apply_threads(threads)
    probed = _load(model, task, raw)
    parsed = parse_components(probed, components)
    if pairs_file is not None:
        pairs = given_pairs(probed.task, read_pairs(pairs_file), pairs_file.name)
        contrast = pairs_file.name
    else:
        kind, places = _contrast_option(contrast)
        pairs = contrast_pairs(probed.task, n, kind, target, seed, places, filter_expression)
    experiment = PatchingExperiment(probed, pairs)
    report = experiment.cumulative(parsed) if cumulative else experiment.each(parsed)
    record = report.to_record()
    if plot is not None:
        from inversionview.verify.plot import plot_patching

        options.write_output(plot, "--plot", lambda path: plot_patching(
            report, path, title=f"{probed.task.name}: {components} ({contrast})"))
    drawn = (f"{report.n} pairs from {pairs_file}" if pairs_file is not None else
             f"{report.n} pairs ({contrast}, target {report.target}; {report.skipped} without a "
             f"contrast, {report.filtered_out} filtered out)")
    lines = [drawn,
             f"LD original {report.original_ld:+.3f}   contrast run {report.contrast_ld:+.3f}"]
    for title, steps in (("left to right" if cumulative else "patched", report.steps),
                         ("right to left", report.steps_right_to_left)):
        if steps is None:
            continue
        lines.append(f"{title}:")
        lines += [f"  {' + '.join(step.components):40s} LD {step.patched_ld:+8.3f}   effect "
                  f"{step.effect:+8.3f}" for step in steps]
    _emit(record, as_json, "\n".join(lines) + (f"\nwrote {plot}" if plot else ""))


@app.command()
def verify(
    model: Annotated[str, typer.Argument(help="Model (default: the bundled counting model).")] = "counting",
    task: TaskOpt = None, raw: RawOpt = False, decoder: DecoderOpt = None, input_text: InputOpt = None,
    site: SiteOpt = None, position: PositionOpt = None, candidates: CandidatesOpt = 1024,
    temperature: TemperatureOpt = None, noise: NoiseOpt = None,
    seed: SeedOpt = 0, epsilon: EpsilonOpt = 0.1, metric: MetricOpt = Metric.euclidean,
    fixed_position: FixedOpt = False,
    per_side: Annotated[int, typer.Option("--per-side", help="Samples patched on each side of ε.",
                                          callback=options.PER_SIDE.callback)] = 5,
    threads: ThreadsOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Patch the query's activation with in-ε and out-of-ε samples' and show the output change."""
    from inversionview.preimage.query import query_config, run_query
    from inversionview.verify.readout import verify_readout

    _apply_threads(threads)
    config = query_config(candidates, epsilon, metric.value, fixed_position, temperature, noise)
    probed, the_decoder, name, text, site, position = _query_setup(
        model, task, raw, decoder, input_text, site, position)
    result = run_query(probed, the_decoder, text, site, position, config, seed=seed,
                       decoder_name=name)
    report = verify_readout(probed, result, per_side)
    lines = [f"{report['query']}  site {report['site']}  position {result.position_label} "
             f"(index {report['position']}); the query's activation replaced by a sample's "
             f"(at its best position); output change from the query position on:"]
    for side in ("inside", "outside"):
        lines.append(f"{side} ε:")
        for row in report[side]:
            lines.append(f"  {row['text']:34s} D {row['distance']:.3f}  KL max {row['kl_max']:.4f}"
                         f"  mean {row['kl_mean']:.4f}  top prediction changed "
                         f"{row['top_prediction_changed']:.0%}")
        mean = report[f"{side}_mean"]
        if mean:
            lines.append(f"  mean: KL max {mean['kl_max']:.4f}, top prediction changed "
                         f"{mean['top_prediction_changed']:.0%}")
    _emit(report, as_json, "\n".join(lines))


@app.command()
def dla(
    model: ModelArg,
    component: Annotated[str, typer.Option("--component", help="HEAD@POSITION, e.g. a1.0@:.")],
    task: TaskOpt = None, raw: RawOpt = False,
    input_text: InputOpt = None,
    k: Annotated[int, typer.Option("--k", help="Top tokens shown / counted (at most the "
                                   "vocabulary).", callback=options.TOP_K.callback)] = 5,
    n: Annotated[int, typer.Option("--n", help="Inputs sampled for the top-k statistic (0: one "
                                   "input).", callback=options.DLA_SAMPLES.callback)] = 0,
    target: Annotated[Optional[str], typer.Option("--target", help="With --n: the answer "
                      "token expected among the head's top k (default: the task's first).")] = None,
    seed: SeedOpt = 0,
    as_json: JsonOpt = False,
) -> None:
    """Direct logit attribution of a head: top promoted and suppressed tokens; with --n, how
    often the expected answer token is among the top k (the paper's Table 4 statistic)."""
    from inversionview.verify.dla import expected_token_rates, top_tokens

    probed = _load(model, task, raw)
    parsed = _one_component(probed, component)
    if n > 0:
        texts = probed.task.sample(n, seed=seed)
        the_target = target or probed.task.targets[0]
        expected = [t[probed.task.target_index(t, the_target)] for t in texts]
        record = expected_token_rates(probed, texts, parsed, expected, k)
        record["target"] = the_target
        human = (f"{record['component']}: expected {the_target} token among the top {k} "
                 f"promoted in {record['top_k_promoted_rate']:.1%} of {n} inputs, top "
                 f"{k} suppressed in {record['top_k_suppressed_rate']:.1%}, the most "
                 f"promoted in {record['most_promoted_rate']:.1%}")
    else:
        text = probed.task.normalize(probed.task.example if input_text is None else input_text)
        record = {"component": parsed.name, "input": text, **top_tokens(probed, text, parsed, k)}
        human = (f"{text}  {parsed.name}\n  promoted:   "
                 + "  ".join(f"{t!r} {v:+.2f}" for t, v in record["promoted"])
                 + "\n  suppressed: " + "  ".join(f"{t!r} {v:+.2f}" for t, v in record["suppressed"]))
    _emit(record, as_json, human)


@app.command()
def ablate(
    model: ModelArg,
    component: Annotated[str, typer.Option("--component", help="SITE@POSITION, e.g. x0.post@+.")],
    task: TaskOpt = None, raw: RawOpt = False,
    n: Annotated[int, typer.Option("--n", help="Inputs measured (and as many for the mean).",
                                   callback=options.PAIRS.callback)] = 1000,
    seed: SeedOpt = 0,
    threads: ThreadsOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Mean ablation: replace a component by its mean over other inputs; KL and logit drop at
    every answer token the task has."""
    from inversionview.verify.patching import mean_ablation

    _apply_threads(threads)
    probed = _load(model, task, raw)
    parsed = _one_component(probed, component)
    texts = probed.task.sample(n, seed=seed)
    reference = probed.task.sample(n, seed=seed + 1)
    rows = mean_ablation(probed, texts, parsed, probed.task.targets, reference)
    lines = [f"mean ablation of {parsed.name} ({n} inputs; mean over {n} others)",
             "target      n      KL   logit drop  drop rate  accuracy -> ablated"]
    lines += [f"{r['target']:6s} {r['n']:6d} {r['kl']:7.4f} {r['logit_drop']:+11.4f} "
              f"{r['logit_decrement_rate']:9.1%}  {r['accuracy']:7.1%} -> {r['ablated_accuracy']:.1%}"
              for r in rows]
    _emit({"component": parsed.name, "n": n, "rows": rows}, as_json, "\n".join(lines))


cli_train_lm.register(app)
cli_ioi.register(app)
cli_factual.register(app)
cli_interpret.register(app)


def run(argv: list[str] | None = None) -> int:
    """Run one command line (``argv`` without the program name; default: ``sys.argv[1:]``)
    and return its exit status: 0 done, 2 a usage or user error (one line on stderr), 1 a bug
    (one line naming it; INVERSIONVIEW_DEBUG=1 shows the traceback), 130 interrupted."""

    command = typer.main.get_command(app)
    try:
        status = command.main(args=argv, prog_name="inversionview", standalone_mode=False)
    except typer.Exit as error:
        return error.exit_code
    except UserError as error:
        _error_line(str(error))
        return 2
    except (KeyboardInterrupt, typer.Abort):
        _error_line("interrupted")
        return 130
    except Exception as error:
        if _is_usage_error(error):  # a bad flag or value, a missing argument
            message = error.format_message()
            if not message:  # `inversionview` alone: the help was shown
                return 0
            context = getattr(error, "ctx", None)
            hint = f" (see `{context.command_path} --help`)" if context is not None else ""
            _error_line(_LONG_QUOTED.sub(lambda match: echo(match.group(1)), message) + hint)
            return 2
        if os.environ.get("INVERSIONVIEW_DEBUG"):
            raise
        _error_line(f"internal error ({type(error).__name__}: {error}); this is a bug, please "
                    f"report it with the command line (INVERSIONVIEW_DEBUG=1 shows the traceback)")
        return 1
    return status if isinstance(status, int) else 0  # typer's own Ctrl-C handling: 130


_LONG_QUOTED = re.compile(r"'([^']{%d,})'" % MAX_ECHO)  # a long value click quotes back whole


def _is_usage_error(error: Exception) -> bool:
    """click's ClickException and its subclasses (typer ships its own copy of click, so the
    class is recognised by shape, not by import)."""
    return hasattr(error, "format_message") and isinstance(getattr(error, "exit_code", None), int)


def _error_line(message: str) -> None:
    typer.secho(f"error: {' '.join(message.split())}", err=True, fg=typer.colors.RED)


def main() -> None:
    raise SystemExit(run())


if __name__ == "__main__":
    main()
