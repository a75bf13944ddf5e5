"""The notebook API: a probed model and its decoder, ready to query, in one object.

    from inversionview import InversionView
    iv = InversionView("counting")                  # a bundled model, or a model directory
    iv.query("Bvvzccvczvvvzvcvc|v:8E", site="a1.0", position=":")   # renders in Jupyter

A result shows itself in Jupyter as the HTML export's view (``_repr_html_``) and becomes a
pandas DataFrame with ``result.to_dataframe()``. Everything else the CLI does is here too:
``tokens``, ``activations``, ``attention``, ``verify``, ``grid`` and ``patch``. Errors a user
can make are ``UserError`` with a one-line message, as on the command line.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

# transformers imports tqdm.auto, which warns in a notebook without ipywidgets; nothing here
# draws a progress bar
warnings.filterwarnings("ignore", message="IProgress not found")

from inversionview.errors import UserError
from inversionview.preimage.config import GRID_CONFIG, QueryConfig

#: The defaults of ``query`` and ``grid``: the library's one declaration of them
#: (preimage/config.py), never repeated here.
_QUERY, _GRID = QueryConfig(), GRID_CONFIG

if TYPE_CHECKING:
    import pandas

    from inversionview.interpret.interpretation import Interpretation
    from inversionview.interpret.summary import Summary
    from inversionview.preimage.result import PreimageResult
    from inversionview.verify.patching import PatchingReport

__all__ = ["InversionView"]


class InversionView:
    """A probed model (``model``: a bundled artifact's name or a model directory) with its
    decoder (``decoder``: a decoder directory; default the bundled one trained on it).
    ``raw=True`` reads the raw HuggingFace activations instead of TransformerLens-processed
    ones; ``corpus`` (a text file or datasets directory) lets a language model draw inputs."""

    def __init__(self, model: str | Path = "counting", decoder: str | Path | None = None, *,
                 task: str | None = None, raw: bool = False, device: str = "cpu",
                 corpus: str | Path | None = None, field: str = "text", max_tokens: int = 32):
        from inversionview.artifacts import shown_name
        from inversionview.decoder.store import decoder_for
        from inversionview.decoder.train import attach_corpus
        from inversionview.probed import load_probed

        self.model = load_probed(str(model), task, device, "raw" if raw else "processed")
        if corpus is not None:
            self.model = attach_corpus(self.model, str(corpus), max_tokens, field)
        self.decoder, directory = decoder_for(self.model, str(model),
                                              None if decoder is None else Path(decoder))
        self.name, self.decoder_name = shown_name(str(model)), shown_name(str(directory))

    def __repr__(self) -> str:
        task = self.model.task
        return (f"InversionView({self.name!r}: task {task.name}, {self.model.n_layers} layers x "
                f"{self.model.n_heads} heads, {len(self.sites)} sites, decoder "
                f"{self.decoder_name!r}, default query {task.default_query[0]} at "
                f"{task.default_query[1]!r} of {task.example!r})")

    # ----- what the model reads --------------------------------------------------------

    @property
    def sites(self) -> list[str]:
        """Short site names, in the decoder's order (x0.pre, a0.0, ..., xL.post)."""
        return [site.short for site in self.model.sites]

    def tokens(self, text: str | None = None) -> list[str]:
        """``text`` as the model reads it, one string per token (index 0 is BOS)."""
        task = self.model.task
        return task.text_tokens(task.example if text is None else text)

    def position(self, text: str, position: str | int) -> int:
        """The index a position names in ``text`` (``"last"``, ``-2``, ``'" John"'``...)."""
        return self.model.task.resolve_position(text, position)

    def sample(self, n: int = 1, seed: int = 0) -> list[str]:
        """``n`` inputs from the task distribution or the corpus."""
        return self.model.task.sample(n, seed=seed)

    @torch.no_grad()
    def activations(self, text: str, site: str) -> torch.Tensor:
        """``[positions, width]``: ``site``'s activation at every token of ``text``."""
        ids = self.model.task.encode(text)
        return self.model.activations(self.model.tokens(text), site)[0, : len(ids)].cpu()

    def attention(self, text: str, layer: int) -> torch.Tensor:
        """``[head, query position, key position]`` attention weights of ``layer``."""
        return self.model.attention_pattern(text, layer).cpu()

    # ----- the method ------------------------------------------------------------------

    def query(self, text: str | None = None, site: str | None = None,
              position: str | int | None = None, *, candidates: int = _QUERY.candidates,
              epsilon: float = _QUERY.epsilon, metric: str = _QUERY.metric,
              fixed_position: bool = _QUERY.fixed_position,
              temperature: float | None = _QUERY.temperature, noise: float | None = _QUERY.noise,
              shown: int = _QUERY.shown, all_samples: bool = _QUERY.all_samples, seed: int = 0,
              verify: bool = False, search: int | None = _QUERY.search,
              constrain: bool = _QUERY.constrain,
              noise_cosine: tuple[float, float] | None = _QUERY.noise_cosine,
              banned: tuple[int, ...] = _QUERY.banned) -> PreimageResult:
        """Sample, score and colour the ε-preimage of ``site`` at ``position`` of ``text``
        (the task's default query for what is left out); ``verify`` also patches the query's
        activation with samples' (see ``verify``); ``search`` is the local search's budget
        (inputs scored beyond the decoder's candidates; 0: the paper's decoder-only sampling;
        None: the task's default, 16,384 on the toy tasks and 4,096 on free text); ``constrain``
        draws only tokens that can lead to an input of the task where it has a grammar (False:
        the paper's free sampling); ``noise_cosine`` (low, high) conditions each candidate on a
        vector at a cosine drawn from that range to the query (the paper's factual-recall
        noise), and ``banned`` token ids are never drawn (``text.counts.rare_tokens``).
        The same seed gives the same result. Every setting is a ``QueryConfig`` field
        (preimage/config.py), which declares its default and range."""
        from inversionview.preimage.query import run_query

        task = self.model.task
        default_site, default_position = task.default_query
        config = QueryConfig(candidates=candidates, epsilon=epsilon, metric=metric,
                             fixed_position=fixed_position, temperature=temperature, noise=noise,
                             all_samples=all_samples, shown=shown, search=search,
                             constrain=constrain, noise_cosine=noise_cosine, banned=tuple(banned))
        result = run_query(self.model, self.decoder, task.example if text is None else text,
                           default_site if site is None else site,
                           default_position if position is None else position, config,
                           seed=seed, decoder_name=self.decoder_name)
        result.model = self.name  # as the user named it, not a path on this machine
        if verify:
            result.verification = self.verify(result)
        return result

    def summarize(self, sites: list[str] | None = None, positions: list[str] | None = None,
                  *, queries: int = 10, candidates: int = 256, epsilon: float = 0.1,
                  metric: str = "euclidean", seed: int = 0) -> "Summary":
        """What the in-ε samples of ``queries`` queries keep, per site and position (default:
        every site and named position); renders as a table in a notebook, ``str()`` in a
        terminal, ``.to_record()`` as JSON (``inversionview summarize``)."""
        from inversionview.interpret.summary import summarize, summary_config

        return summarize(self.model, self.decoder, sites, positions, queries, seed,
                         summary_config(candidates, epsilon, metric), model_name=self.name,
                         decoder_name=self.decoder_name)

    def interpret(self, site: str | None = None, position: str | None = None, *,
                  queries: int = 5, candidates: int = 256, epsilon: float = 0.1,
                  metric: str = "euclidean", seed: int = 0,
                  ask: bool = False, timeout: float = 120.0) -> "Interpretation":
        """Describe one site and position (default: the task's query) from ``queries``
        queries: what their in-ε samples keep, and the paper's LLM prompt built from them
        (``.messages``); ``ask=True`` sends it to the endpoint named by INVERSIONVIEW_LLM_URL
        and INVERSIONVIEW_LLM_MODEL and keeps the answer (``.answer``), as ``inversionview
        interpret --ask`` does. ``.to_record()`` is that command's JSON."""
        from inversionview import options
        from inversionview.interpret.interpretation import interpret
        from inversionview.interpret.llm import Endpoint

        default_site, default_position = self.model.task.default_query
        endpoint = Endpoint.from_environment(options.LLM_TIMEOUT.check(timeout)) if ask else None
        interpretation = interpret(
            self.model, self.decoder, default_site if site is None else site,
            default_position if position is None else str(position),
            options.SUMMARY_QUERIES.check(queries), candidates=candidates, epsilon=epsilon,
            metric=metric, seed=seed, model_name=self.name, decoder_name=self.decoder_name)
        if endpoint is not None:
            interpretation.ask(endpoint)
        return interpretation

    def verify(self, result: PreimageResult, per_side: int = 5) -> dict[str, Any]:
        """Patch the query's activation with the nearest in-ε and out-of-ε samples' and
        measure how much the model's output changes (KL, top prediction)."""
        from inversionview.verify.readout import verify_readout

        return verify_readout(self.model, result, per_side)

    def grid(self, text: str | None = None, position: str | int | None = None, *,
             candidates: int = _GRID.candidates, epsilon: float = _GRID.epsilon,
             metric: str = _GRID.metric, seed: int = 0) -> pandas.DataFrame:
        """Every site at one input and position: in-ε rate, distinct in-ε samples, valid
        rate and the attribute that agrees most with the query (the highest contrast; None
        where no attribute has one) with its inside, outside and contrast, one row per site
        (the decoder's draws only, as the paper: an overview, not a search per site). The
        same rows as the web page's grid (``preimage.grid.run_grid``)."""
        from dataclasses import replace

        from inversionview.preimage.grid import run_grid

        task = self.model.task
        config = replace(GRID_CONFIG, candidates=candidates, epsilon=epsilon, metric=metric)
        grid = run_grid(self.model, self.decoder, task.example if text is None else text,
                        task.default_query[1] if position is None else position, config,
                        seed=seed, decoder_name=self.decoder_name)
        return grid.to_dataframe()

    def patch(self, pairs: list[dict[str, str]], components: str,
              cumulative: bool = False) -> PatchingReport:
        """Activation patching on your pairs (``original``, ``contrast`` and, on free text,
        ``answer`` and ``contrast_answer`` tokens): the logit difference with each of
        ``components`` ("a1.2@last,m0@-1") taken from the contrast run."""
        from inversionview.verify.patching import (PatchingExperiment, given_pairs,
                                                   parse_components)

        if isinstance(pairs, dict):
            pairs = [pairs]
        if not isinstance(pairs, list) or not all(isinstance(row, dict) for row in pairs):
            raise UserError("pairs must be a list of dicts with original, contrast, answer and "
                            "contrast_answer")
        parsed = parse_components(self.model, components)
        experiment = PatchingExperiment(self.model, given_pairs(self.model.task, pairs))
        return experiment.cumulative(parsed) if cumulative else experiment.each(parsed)
