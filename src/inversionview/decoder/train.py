"""Train a decoder on a probed model's activations, on the fly, with checkpoints and resume.

The run directory holds ``decoder.safetensors`` + ``decoder.json`` (config, probed-model
hash, manifest) once training ends, ``metrics.jsonl`` (one JSON line per evaluation) and
``checkpoint/`` for ``--resume``: every ``checkpoint_every_seconds`` (60 s), and the first one
after 10 s or 100 steps, whichever comes first (see ``checkpoint.CheckpointSchedule``).

Presets: ``paper`` is the authors' recipe (AdamW, lr 1e-4 constant, weight decay 0.01);
``fast`` is the configuration this project measured to learn fastest on a CPU (see
bench/train_decoder.py and docs/decoders.md).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tqdm import tqdm

from inversionview import distributed, provenance
from inversionview.checkpoint import RunLog, claim_run_directory, resumed_config
from inversionview.decoder.data import ActivationStream, DecoderBatch, site_probabilities
from inversionview.decoder.evaluate import held_out_queries, in_epsilon_rates
from inversionview.decoder.plot import plot_curves
from inversionview.decoder.pretrained import initialise_from, start_from
from inversionview.decoder.store import DecoderLoadError, save_decoder
from inversionview.decoder.model import Decoder, DecoderConfig
from inversionview.errors import OptionError, UserError, echo
from inversionview.files import sha256_file
from inversionview.options import (BALL_NOISE, BATCH_SIZE, CHECKPOINT_SECONDS, EPSILON, EXAMPLES,
                                   LEARNING_RATE, MAX_TOKENS, MINUTES, POSITIONS, REBALANCE, SEED)
from inversionview.probed.subject import Subject
from inversionview.probed.sites import check_site
from inversionview.schedule import (EVAL_SECONDS, FIRST_CHECKPOINT_SECONDS,
                                    FIRST_CHECKPOINT_STEPS, GRAD_CLIP, MIN_LR_FRACTION,
                                    WARMUP_STEPS, WEIGHT_DECAY, check_settings, count)
from inversionview.training import (LoopSettings, Trainer, evaluation_entry, run_manifest,
                                    run_training)

PRESETS: dict[str, dict[str, Any]] = {
    # The paper: lr 1e-4 constant, weight decay 0.01, batch 256, dropout 0.1.
    "paper": dict(lr=1e-4, warmup_steps=0, min_lr_fraction=1.0, batch_size=256,
                  bucket_batches=1, precision="auto", decoder={}),
    # Measured here (issue 3, bench/train_decoder.py, docs/decoders.md): lr 1e-3 with warmup and
    # cosine decay, batch 64 (4x the steps of 256 for the same examples: 2x the in-ε rate
    # after 10 min), no dropout (every example is fresh), length-bucketed batches, bf16
    # autocast where native.
    "fast": dict(lr=1e-3, warmup_steps=400, min_lr_fraction=0.0, batch_size=64,
                 bucket_batches=32, precision="auto", decoder=dict(dropout=0.0)),
}

PRECISIONS = ("auto", "fp32", "bf16")


@dataclass
class DecoderTrainingConfig:
    out: Path
    minutes: float | None = None
    examples: int | None = None
    preset: str = "fast"
    seed: int = 0
    lr: float | None = None
    batch_size: int | None = None  # per process under torchrun
    warmup_steps: int | None = None
    min_lr_fraction: float | None = None
    bucket_batches: int | None = None
    precision: str | None = None  # auto: bf16 autocast where the device runs it natively
    device: str = "auto"  # auto: cuda (this rank's GPU) if present, else cpu
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    rebalance: float = 0.0  # 0 = uniform site sampling
    rebalance_every_evals: int = 1
    # Relative sampling weights of the sites (site name -> weight; "*" for every site not
    # named, default 1): {"m1": 4} draws m1 four times as often as each other site,
    # {"m1": 1, "*": 0} trains on m1 alone. Rebalancing multiplies them. The in-ε rates and
    # the held-out loss are still measured over every site, uniformly.
    site_weights: dict[str, float] | None = None
    epsilon: float = 0.1
    eval_every_seconds: float = 120.0
    eval_queries_per_site: int = 8
    eval_samples_per_query: int = 16
    # Wall-clock seconds between checkpoints: a killed run loses at most about this much.
    # The first checkpoint comes early: after first_checkpoint_seconds (or the interval, if
    # shorter) or first_checkpoint_steps steps of the process, whichever comes first.
    checkpoint_every_seconds: float = 60.0
    first_checkpoint_seconds: float = 10.0
    first_checkpoint_steps: int = 100
    decoder_overrides: dict[str, Any] = field(default_factory=dict)
    # Free text (a language model): the corpus the inputs come from (text/sources.py), the
    # text field of a .jsonl file or datasets directory, and the longest piece in tokens.
    corpus: str | None = None
    field: str = "text"
    max_tokens: int = 32
    # Where each example's activation is read (decoder/positions.py): uniform (the paper's
    # toy tasks and IOI), last, or low-bos-attention (its factual recall).
    positions: str = "uniform"
    # Train on the ε-ball (issue 28): each example's activation z is moved, before the decoder
    # sees it, by r x |z| in a random direction, r uniform in [0, ball_noise]. A decoder then
    # learns the inputs whose activation lies near z, not only the one input behind z.
    # 0 (the paper's recipe): no noise.
    ball_noise: float = 0.0
    # A local GPT-2 directory with the probed model's tokenizer whose transformer the decoder
    # starts from (decoder/pretrained.py; the paper's factual-recall decoder: GPT-2 medium),
    # and the sha256 of its model.safetensors, filled in when the run starts.
    init_from: str | None = None
    init_from_sha256: str | None = None
    # A trained decoder of this probed model (a run directory or an exported decoder) that a
    # new run continues: its shape and weights, a fresh optimizer and learning-rate schedule;
    # the sha256 of its weights, filled in when the run starts.
    continue_from: str | None = None
    continue_from_sha256: str | None = None

    def __post_init__(self) -> None:
        self.out = Path(self.out)
        if self.corpus is not None:
            self.corpus = str(self.corpus)
        if self.init_from is not None:
            self.init_from = str(self.init_from)
        if self.continue_from is not None:
            self.continue_from = str(self.continue_from)
            if self.init_from is not None:
                raise OptionError("give at most one of --init-from (a pretrained language "
                                  "model) and --continue-from (a trained decoder)")
        MAX_TOKENS.check(self.max_tokens)
        POSITIONS.check(self.positions)
        if self.preset not in PRESETS:
            raise OptionError(f"unknown preset {self.preset!r}; use one of {', '.join(PRESETS)}")
        if (self.minutes is None) == (self.examples is None):
            raise OptionError("give exactly one of minutes or examples")
        preset = PRESETS[self.preset]
        for key, value in preset.items():
            if key != "decoder" and getattr(self, key) is None:
                setattr(self, key, value)
        self.decoder_overrides = {**preset["decoder"], **self.decoder_overrides}
        if self.precision not in PRECISIONS:
            raise OptionError(f"unknown precision {self.precision!r}; use one of "
                              f"{', '.join(PRECISIONS)}")
        if self.site_weights is not None:
            self.site_weights = check_site_weights(self.site_weights)
        counts = ("bucket_batches", "rebalance_every_evals", "eval_queries_per_site",
                  "eval_samples_per_query")
        check_settings(self, {
            "minutes": MINUTES, "examples": EXAMPLES, "seed": SEED, "lr": LEARNING_RATE,
            "batch_size": BATCH_SIZE, "warmup_steps": WARMUP_STEPS,
            "min_lr_fraction": MIN_LR_FRACTION, "weight_decay": WEIGHT_DECAY,
            "grad_clip": GRAD_CLIP, "rebalance": REBALANCE, "epsilon": EPSILON,
            "ball_noise": BALL_NOISE,
            "eval_every_seconds": EVAL_SECONDS, "checkpoint_every_seconds": CHECKPOINT_SECONDS,
            "first_checkpoint_seconds": FIRST_CHECKPOINT_SECONDS,
            "first_checkpoint_steps": FIRST_CHECKPOINT_STEPS,
            **{name: count(name) for name in counts}})

    @classmethod
    def resumed(cls, out: Path, minutes: float | None = None, examples: int | None = None,
                changes: dict[str, Any] | None = None,
                fixed: dict[str, tuple[str, Any]] | None = None) -> "DecoderTrainingConfig":
        """The config to continue the run in ``out``: the one its checkpoint stores; a budget
        given here replaces the stored one (see ``checkpoint.resumed_config``)."""
        return resumed_config(cls, out, {"minutes": minutes, "examples": examples},
                              changes, fixed)

    def steps_for(self, world_size: int = 1) -> int | None:
        """The step budget when the budget is in examples (shared by ``world_size`` processes)."""
        if self.examples is None:
            return None
        return -(-self.examples // (self.batch_size * world_size))


def in_ball(activation: torch.Tensor, radius: float, generator: torch.Generator) -> torch.Tensor:
    """Each row ``z`` of ``activation`` moved by ``r |z|`` in a uniformly random direction, ``r``
    uniform in [0, ``radius``]: a point of z's ball at normalized distance ``r``."""
    direction = torch.randn(activation.shape, generator=generator).to(activation)
    direction = direction / direction.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    r = torch.rand(activation.shape[0], 1, generator=generator).to(activation) * radius
    return activation + r * activation.norm(dim=-1, keepdim=True) * direction


def check_site_weights(weights: Any) -> dict[str, float] | None:
    """``weights`` as site name -> finite non-negative float (an empty mapping: None); the
    names are checked against the model when the run starts (``site_weight_vector``)."""
    if not isinstance(weights, dict):
        raise OptionError(f"site weights must map site names to weights, not {echo(weights)}")
    checked = {}
    for name, weight in weights.items():
        if not isinstance(name, str) or not name:
            raise OptionError(f"a site weight needs a site name, not {echo(name)}")
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not (
                math.isfinite(weight) and weight >= 0):
            raise OptionError(f"the weight of site {echo(name)} must be a finite number >= 0, "
                              f"not {echo(weight)}")
        checked[name] = float(weight)
    return checked or None


def site_weight_vector(model: Subject, weights: dict[str, float] | None
                       ) -> torch.Tensor | None:
    """The sampling distribution over ``model.sites`` that ``weights`` give (see
    ``DecoderTrainingConfig.site_weights``), or None for uniform."""
    if not weights:
        return None
    shorts = [site.short for site in model.sites]
    vector = torch.full((len(shorts),), weights.get("*", 1.0), dtype=torch.float64)
    named: dict[str, str] = {}
    for name, weight in weights.items():
        if name == "*":
            continue
        site = check_site(name, model.n_layers, model.n_heads, allowed=tuple(shorts))
        if site.short in named:
            raise OptionError(f"the site weights name {site.short} twice ({echo(named[site.short])} "
                              f"and {echo(name)})")
        named[site.short] = name
        vector[shorts.index(site.short)] = weight
    if vector.max() <= 0:
        raise OptionError("the site weights leave no site to train on; give at least one "
                          "site a weight above 0")
    vector = vector / vector.max()  # weights near the float limit would sum to infinity
    return (vector / vector.sum()).float()


def attach_corpus(model: Subject, corpus: str | None, max_tokens: int = 32,
                  field: str = "text") -> Subject:
    """``model`` read as free text whose inputs come from ``corpus`` (``model`` itself for
    ``None`` when its task draws its inputs already)."""
    if corpus is None:
        if model.task.needs_corpus:
            raise UserError(f"{model.source} is a language model: give the text its decoder "
                            f"trains on with --corpus FILE (.txt lines, .jsonl or a datasets "
                            f"directory)")
        return model
    return model.with_task(model.task.with_corpus(corpus, max_tokens, field))


def continued_decoder(directory: str, model: Subject
                      ) -> tuple[dict[str, torch.Tensor], dict[str, Any], str]:
    """The weights (float32), the shape (``decoder_overrides``) and the weights' sha256 of a
    trained decoder of ``model`` that a new run continues. A directory that is no decoder of
    this model raises DecoderLoadError naming what does not fit."""
    from inversionview.decoder.store import WEIGHTS, load_decoder

    decoder, manifest = load_decoder(Path(directory), model)
    shape = {key: value for key, value in manifest["config"].items()
             if key not in ("vocab_size", "n_ctx", "activation_dim", "n_sites")}
    if decoder.config.n_ctx != model.task.n_ctx:
        raise DecoderLoadError(f"{directory}: the decoder reads {decoder.config.n_ctx} positions "
                               f"but the model's task has {model.task.n_ctx}; continue only a "
                               f"decoder trained on this model")
    return decoder.state_dict(), shape, sha256_file(Path(directory) / WEIGHTS)


def continued_record(directory: str, digest: str | None) -> dict[str, Any]:
    """What a continued run's manifest says of the decoder it started from: its path and
    weights' sha256, and the examples, seconds and in-ε mean it had reached (so the two
    runs' budgets add up)."""
    from inversionview.decoder.store import read_manifest

    try:
        before = read_manifest(Path(directory))
    except UserError:  # moved or deleted since the run started: the path and hash remain
        before = {}
    record = {"path": directory, "weights_sha256": digest}
    for key in ("examples", "wall_seconds", "in_epsilon_mean", "command"):
        if key in before:
            record[key] = before[key]
    if "continued_from" in before:  # a chain of continuations: the total so far
        record["total_examples"] = before["continued_from"].get(
            "total_examples", before["continued_from"].get("examples", 0)) + before.get("examples", 0)
    return record


def build_decoder(model: Subject, seed: int, **overrides: Any) -> Decoder:
    config = DecoderConfig(vocab_size=model.task.vocab.size, n_ctx=model.task.n_ctx,
                           activation_dim=model.d_model, n_sites=len(model.sites), **overrides)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        decoder = Decoder(config)
    decoder.site_names = tuple(site.short for site in model.sites)
    return decoder


def decoder_loss(decoder: torch.nn.Module, tokens: torch.Tensor, activation: torch.Tensor,
                 site_id: torch.Tensor, pad_id: int) -> torch.Tensor:
    """Teacher-forced next-token loss over BOS + text + EOS, PAD ignored. Columns that are
    PAD in every row are cut first: they cost compute and carry no target."""
    length = int((tokens != pad_id).sum(dim=1).max())
    tokens = tokens[:, :length]
    logits = decoder(tokens[:, :-1], activation, site_id)
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(),
                           tokens[:, 1:].reshape(-1), ignore_index=pad_id)


def chunked_loss(decoder: torch.nn.Module, batch: DecoderBatch, pad_id: int, rows: int = 64
                 ) -> float:
    """``decoder_loss`` over a large batch, ``rows`` at a time (the logits of 512 rows over a
    50k vocabulary are 3.4 GB), weighted by each chunk's target tokens: the same figure."""
    total, count = 0.0, 0
    for start in range(0, batch.tokens.shape[0], rows):
        tokens = batch.tokens[start: start + rows]
        targets = int((tokens[:, 1:] != pad_id).sum())
        loss = decoder_loss(decoder, tokens, batch.activation[start: start + rows],
                            batch.site_id[start: start + rows], pad_id)
        total, count = total + loss.item() * targets, count + targets
    return total / count


DEVICES = "auto, cpu, cuda or cuda:N"


def resolve_device(device: str) -> torch.device:
    """The torch device for ``device`` (auto: this rank's GPU if there is one, else the CPU);
    a UserError for one that is malformed or not on this machine."""
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", distributed.local_rank() % torch.cuda.device_count())
        return torch.device("cpu")
    try:
        chosen = torch.device(device)
    except (RuntimeError, ValueError):
        chosen = None
    if chosen is None or chosen.type not in ("cpu", "cuda"):
        raise UserError(f"unknown device {device!r}; use {DEVICES}")
    if chosen.type == "cuda":
        available = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if available == 0:
            raise UserError(f"device {device!r}: CUDA is not available on this machine (torch "
                            f"{torch.__version__}); use auto or cpu")
        if chosen.index is not None and chosen.index >= available:
            raise UserError(f"device {device!r}: this machine has {available} CUDA device(s), "
                            f"cuda:0 to cuda:{available - 1}")
    return chosen


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``precision`` on ``device``, None for plain fp32. ``auto`` picks
    bf16 where the hardware runs it natively (CUDA with bf16, or a CPU with AVX-512 BF16 or
    AMX): on this project's 2-core AVX-512 BF16 machine it trains 1.3-1.4x more examples/s."""
    if precision == "fp32":
        return None
    if device.type == "cuda":
        supported = torch.cuda.is_bf16_supported()
    else:
        supported = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    if precision == "bf16" and not supported:
        raise OptionError(f"bf16 autocast is not supported natively on {device}; use fp32 or auto")
    return torch.bfloat16 if supported else None


def train_decoder(model: Subject, config: DecoderTrainingConfig, resume: bool = False,
                  show_progress: bool = True) -> Decoder:
    """Train a decoder for ``model`` within ``config``'s budget of examples or minutes of
    training (evaluation and checkpoint time are not counted). ``resume`` continues the run
    in ``config.out`` from its checkpoint (``DecoderTrainingConfig.resumed`` gives the config
    it was started with); without it, a directory that holds a checkpoint is refused. Under
    ``torchrun`` each process trains a DDP replica on its own seeded stream (seed + 1000 x
    rank); rank 0 evaluates, logs and checkpoints, and decides for every rank when to
    evaluate, when to checkpoint, when to stop and the learning rate. A new run with
    ``config.init_from`` starts the decoder's transformer from that pretrained GPT-2
    (``pretrained.py``); its shape and weights' sha256 go into the run's config, so a resume
    rebuilds the same decoder without the directory. ``config.continue_from`` starts a new
    run from a trained decoder of the same model (its shape and weights; the optimizer and
    the schedule start fresh): training a shipped decoder for longer. A directory another
    run is training in is refused at once (``checkpoint.claim_run_directory``)."""
    with claim_run_directory(config.out, resume):
        return _train(model, config, resume, show_progress)


def _train(model: Subject, config: DecoderTrainingConfig, resume: bool,
           show_progress: bool) -> Decoder:
    model = attach_corpus(model, config.corpus, config.max_tokens, config.field)
    weighted = site_weight_vector(model, config.site_weights)  # a bad site fails here
    pretrained = None  # a resumed run's weights come from its checkpoint
    previous = None
    if config.init_from is not None and not resume:
        pretrained, shape = start_from(config.init_from, model, config.decoder_overrides,
                                       config.init_from_sha256)
        config = replace(config, decoder_overrides={**config.decoder_overrides, **shape},
                         init_from_sha256=pretrained.weights_sha256)
    if config.continue_from is not None and not resume:
        previous, shape, digest = continued_decoder(config.continue_from, model)
        # the decoder's shape; dropout is a training setting, the preset's (or the run's)
        if "dropout" in config.decoder_overrides:
            shape["dropout"] = config.decoder_overrides["dropout"]
        config = replace(config, decoder_overrides=shape, continue_from_sha256=digest)
    device = resolve_device(config.device)
    world = distributed.setup()
    rank, lead = world.rank, world.rank == 0
    model.hf_model.to(device)
    model.refresh()
    amp_dtype = autocast_dtype(config.precision, device)
    if lead:
        config.out.mkdir(parents=True, exist_ok=True)
    started_at_commit = provenance.commit()
    probed_hash = model.weights_hash()
    task, pad_id = model.task, model.task.vocab.pad_id
    examples_per_step = config.batch_size * world.size

    data_generator = torch.Generator().manual_seed(config.seed + 1000 * rank)
    pool_start = torch.Generator()  # holds the stream's pool-start state in checkpoints
    sample_generator = torch.Generator().manual_seed(config.seed + 7)
    stream = ActivationStream(model, config.batch_size, data_generator,
                              bucket_batches=config.bucket_batches, positions=config.positions)
    if weighted is not None:
        stream.set_site_probabilities(weighted)
    decoder = build_decoder(model, config.seed, **config.decoder_overrides)
    if pretrained is not None:
        initialise_from(decoder, pretrained)
    if previous is not None:
        decoder.load_state_dict(previous)
    elif not resume:  # a resumed run loads its own statistics with its weights below
        means, stds = ActivationStream(model, 1, torch.Generator().manual_seed(config.seed)
                                       ).site_statistics()
        decoder.conditioning.init_site_embedding(means, stds,
                                                 torch.Generator().manual_seed(config.seed))
        if decoder.config.whiten_activation:
            decoder.conditioning.init_whitening(*ActivationStream(
                model, 1, torch.Generator().manual_seed(config.seed + 5)).site_covariances())
    decoder.to(device)
    trained = world.wrap(decoder, device)
    optimizer = torch.optim.AdamW(decoder.parameters(), lr=config.lr,
                                  weight_decay=config.weight_decay)
    queries = held_out_queries(model, config.eval_queries_per_site, config.seed,
                               policy=config.positions)
    loss_batch = ActivationStream(model, 512, torch.Generator().manual_seed(config.seed + 3),
                                  positions=config.positions).next_batch().to(device)

    run = RunLog(config.out, {"stream_pool": pool_start, "sample": sample_generator})
    if resume:
        state, record = run.resume(optimizer)
        if record.get("probed_weights_sha256", probed_hash) != probed_hash:
            raise UserError(f"the run in {config.out} was trained on other probed weights "
                            f"(sha256 {record['probed_weights_sha256'][:12]}) than {model.source} "
                            f"(sha256 {probed_hash[:12]}); resume it with the same model")
        decoder.load_state_dict(state)
        stream_record = record["streams"][rank]
        stream.restore(torch.tensor(stream_record["pool_start_state"], dtype=torch.uint8),
                       stream_record)
        torch.set_rng_state(torch.tensor(stream_record["torch_rng"], dtype=torch.uint8))
    else:
        run.start(dropout_seed=config.seed + 11 + 1000 * rank)

    def evaluate_now() -> dict[str, Any]:
        quality = in_epsilon_rates(decoder, model, queries, config.eval_samples_per_query,
                                   config.epsilon, sample_generator)
        decoder.eval()
        with torch.no_grad(), torch.autocast(device.type, amp_dtype, enabled=amp_dtype is not None):
            held_out = chunked_loss(decoder, loss_batch, pad_id)
        decoder.train()
        entry = evaluation_entry(run, examples=run.step * examples_per_step, loss=held_out,
                                 **quality, site_probabilities=stream.site_probs.tolist())
        run.log(entry)
        plot_curves(run.history, config.out / "curves.png")
        return entry

    def rebalance_after(entry: dict[str, Any]) -> None:
        if config.rebalance and len(run.history) % config.rebalance_every_evals == 0:
            rates = torch.tensor(list(entry["in_epsilon"].values()))
            probabilities = site_probabilities(rates, config.rebalance)
            stream.set_site_probabilities(
                probabilities if weighted is None else probabilities * weighted)

    def evaluate_and_rebalance() -> None:
        """An evaluation during training: rank 0 evaluates and reports; with rebalancing,
        every rank then samples the sites alike, from rank 0's in-ε rates."""
        if lead:
            entry = evaluate_now()
            tqdm.write(f"step {run.step}: in-eps {entry['in_epsilon_mean']:.3f} "
                       f"(min {min(entry['in_epsilon'].values()):.3f}), loss {entry['loss']:.4f}")
            rates = list(entry["in_epsilon"].values())
        else:
            rates = [0.0] * len(model.sites)
        if config.rebalance:
            rates = world.broadcast_floats(rates)
            rebalance_after({"in_epsilon": dict(enumerate(rates))})

    def checkpoint_now() -> None:
        pool_state, stream_record = stream.state()
        streams = world.gather_objects({**stream_record,
                                        "pool_start_state": pool_state.tolist(),
                                        "torch_rng": torch.get_rng_state().tolist()})
        if lead:
            pool_start.set_state(pool_state)
            run.checkpoint(decoder.state_dict(), optimizer, streams=streams,
                           site_probabilities=stream.site_probs.tolist(),
                           config=_jsonable(config), world_size=world.size,
                           probed_weights_sha256=probed_hash)

    def batch_loss(step: int) -> tuple[torch.Tensor, int]:
        batch = stream.next_batch().to(device)
        activation = batch.activation
        if config.ball_noise:  # seeded by the step: a resumed run draws the same noise
            noise = torch.Generator().manual_seed(config.seed * 1_000_003 + step * 17 + world.rank)
            activation = in_ball(activation, config.ball_noise, noise)
        with torch.autocast(device.type, amp_dtype, enabled=amp_dtype is not None):
            loss = decoder_loss(trained, batch.tokens, activation, batch.site_id, pad_id)
        return loss, examples_per_step

    run_training(run, Trainer(
        name=f"decoder {task.name}", model=decoder, optimizer=optimizer, batch_loss=batch_loss,
        evaluate=evaluate_and_rebalance, final_evaluation=evaluate_now,
        checkpoint=checkpoint_now,
        postfix=lambda loss, rate, lr: dict(loss=f"{loss.item():.4f}", ex_s=f"{rate:.0f}",
                                            lr=f"{lr:.2e}")),
        LoopSettings.of(config, steps=config.steps_for(world.size)), show_progress, world)
    if lead:
        final = run.last_evaluation_at_this_step()
        manifest = {
            **run_manifest(run, config.seed, started_at_commit, device=str(device),
                           world_size=world.size, steps=run.step,
                           examples=run.step * examples_per_step),
            "in_epsilon": final["in_epsilon"],
            "in_epsilon_mean": final["in_epsilon_mean"], "well_formed": final["well_formed"],
            "distinct_in_epsilon": final["distinct_in_epsilon"], "training": _jsonable(config),
            "probed_source": provenance.portable_path(model.source),
        }
        if config.init_from is not None:
            manifest["init_from"] = {"path": config.init_from,
                                     "weights_sha256": config.init_from_sha256}
        if config.continue_from is not None:
            manifest["continued_from"] = continued_record(config.continue_from,
                                                          config.continue_from_sha256)
        # Without decoder.json the directory is no decoder: a kill between the two writes
        # leaves no manifest that describes other weights, and --resume writes both again.
        (config.out / "decoder.json").unlink(missing_ok=True)
        save_decoder(decoder, model, config.out, manifest)
    world.finish()
    return decoder


def _jsonable(config: DecoderTrainingConfig) -> dict[str, Any]:
    record = asdict(config)
    record["out"] = provenance.portable_path(config.out)
    return record
