"""What the ``inversionview`` commands share: the options they declare alike, loading a model
and its decoder, and printing a record as JSON or for people."""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from inversionview import options

ModelArg = Annotated[str, typer.Argument(
    help="A bundled artifact (see `inversionview models`), a model directory of this tool, a "
         "HuggingFace causal-LM directory with its tokenizer (any architecture "
         "TransformerBridge reads), or a GPT-2 directory without one (a toy task's, inferred "
         "from its vocabulary).")]
TaskOpt = Annotated[Optional[str], typer.Option("--task", help="What the model is read as: "
                                                "counting or addition (toy tasks), text, ioi or "
                                                "factual (a language model with its tokenizer). "
                                                "Default: the model's manifest; text for a "
                                                "directory with a tokenizer; else the one toy "
                                                "task its vocabulary fits.")]


def _flag(name: str, help: str) -> Any:
    """An on/off option (shown without a value type in --help)."""
    return typer.Option(name, help=help, metavar="")


MINUTES_HELP = ("Budget in minutes of wall time for the whole run: training, evaluations and "
                "checkpoints count; loading before and the final evaluation and save after do "
                "not. On --resume it replaces the run's budget.")
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


def _hold_run_directory(ctx: typer.Context, out: Path) -> None:
    """Hold the run directory OUT until the command ends (``locks.hold_directory``; under
    torchrun rank 0 holds it for every rank): a second command training there is refused at
    once, before a model loads or --force removes anything."""
    from inversionview.distributed import is_lead_process
    from inversionview.locks import hold_directory

    if is_lead_process():
        ctx.with_resource(hold_directory(out))


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


def _head_names(heads: str) -> list[str]:
    """The names in a --heads value (comma separated); an error when it names none."""
    from inversionview.errors import UserError, echo

    names = [part.strip() for part in heads.split(",") if part.strip()]
    if not names:
        raise UserError(f"--heads {echo(heads)} names no head; give heads such as a3.1,a2.5 "
                        "(comma separated), or leave --heads out to read the heads found")
    return names


def _heads_of(probed, names: list[str]) -> list[str]:
    """Each name's site as a head of ``probed`` (its short name); an error for a site that is
    not a head."""
    from inversionview.errors import UserError, echo

    shorts = []
    for name in names:
        site = probed.site(name)
        if site.kind != "head":
            raise UserError(f"--heads takes heads such as a3.1, not {echo(name)}")
        shorts.append(site.short)
    return shorts


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


