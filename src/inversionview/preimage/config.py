"""A query's settings, declared once: ``QueryConfig``.

Each setting a user can give (the ``query`` command's options, the JSON API's query body,
``InversionView.query``'s keywords) is one field of ``QueryConfig``, with its default and,
as field metadata (``setting``), the ``options.Range`` or ``options.Choice`` of its allowed
values and one line of help. Everything else is read from here:

- ``QueryConfig.__post_init__`` checks every declared setting against its range, so the
  library, the notebook API and the CLI refuse a value with the same message;
- ``query_config`` (the CLI's name) is ``QueryConfig`` itself: its positional order is the
  field order below, so the defaults are filled in one place;
- the web's ``QueryRequest`` and ``GridRequest`` are built from these fields
  (``web/schemas.py``), and ``InversionView.query``/``grid`` take their defaults from
  ``QueryConfig()`` and ``GRID_CONFIG``;
- ``tests/preimage/test_config.py`` checks every other place that still names a setting (the
  CLI's options, the HTTP schema, the notebook API) against this declaration.

This module stays light (no model code), so the notebook API can import it at once.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import TYPE_CHECKING, Any

from inversionview import options
from inversionview.errors import OptionError
from inversionview.preimage.sample import (PAPER_SETTINGS, ROUND_SIZE, SamplingRound,
                                           make_schedule)
from inversionview.options import Metric
from inversionview.preimage.search import SearchConfig

if TYPE_CHECKING:
    from inversionview.tasks.base import Task

__all__ = ["QueryConfig", "query_config", "setting", "SETTINGS", "GRID_CONFIG", "GRID_SETTINGS",
           "GRID_HELP"]


def setting(default: Any, allowed: options.Range | options.Choice | None, help: str, *,
            each: bool = False) -> Any:
    """A ``QueryConfig`` field that users set: its ``default``, the ``allowed`` values
    (checked by ``QueryConfig``, stated by the HTTP schema; None: any value of the field's
    type) and its ``help``. ``each``: ``allowed`` applies to each item of a tuple. A
    default of None means "unset" and is never checked."""
    return field(default=default,
                 metadata={"setting": True, "allowed": allowed, "help": help, "each": each})


@dataclass
class QueryConfig:
    """How one query samples, scores and shows (``run_query``). The fields made with
    ``setting`` are the user's options, in the order ``query_config`` takes them
    positionally; the rest are the library's finer controls."""

    candidates: int = setting(1024, options.CANDIDATES, "Candidates the decoder draws, with "
                              "repeats (the paper: 1,024 in 16 rounds of 64).")
    epsilon: float = setting(0.1, options.EPSILON, "The radius ε: a candidate whose distance "
                             "to the query is at most ε is in its preimage.")
    metric: Metric = setting("euclidean", options.METRIC, "Normalised euclidean distance or cosine "
                             "distance.")
    # Read D at the query's position in each candidate (the same name, or the same index for
    # an integer position) instead of the minimum over positions.
    fixed_position: bool = setting(False, None, "D at the query's position in each candidate "
                                   "instead of the minimum over positions.")
    # One (temperature, noise) for every round instead of the paper's schedule (T 1 and
    # noise 0 where only the other is given); ``settings`` says the whole cycle instead.
    temperature: float | None = setting(None, options.TEMPERATURE, "One temperature for every "
                                        "round (replaces the paper's schedule).")
    noise: float | None = setting(None, options.NOISE, "One noise level for every round.")
    all_samples: bool = setting(False, None, "Show every distinct candidate (at most "
                                "`candidates`).")
    shown: int = setting(100, options.SHOWN, "Samples shown.")  # the paper shows 100
    # Inputs the local search around the decoder's candidates may score (0: the paper's
    # decoder-only sampling); it stops sooner when ``candidates`` members are found.
    search: int | None = setting(None, options.SEARCH_EVALUATIONS, "Inputs the local search "
                                 "may score beyond the decoder's candidates (0: decoder-only "
                                 "sampling, as in the paper; default: 16,384 on the toy "
                                 "tasks, 4,096 on free text).")  # None: Task.default_search
    # Draw only tokens that can lead to an input of the task (Task.next_token_mask) where the
    # task has a grammar; False: the paper's free sampling, where malformed candidates are drawn
    # and then scored as they are.
    constrain: bool = setting(True, None, "Draw only tokens that can lead to an input of the "
                              "task, where it has a grammar (counting, addition); false: the "
                              "paper's free sampling.")
    # The paper's factual-recall noise: condition each candidate on a vector at a cosine to
    # the query drawn from [low, high] (replaces the Gaussian noise); None: no such noise.
    noise_cosine: tuple[float, float] | None = setting(
        None, options.NOISE_COSINE, "[low, high]: condition each candidate on a vector of the "
        "query's norm at a cosine drawn from [low, high] to it (the paper's factual-recall "
        "noise, e.g. [0.75, 0.9]); replaces noise.", each=True)
    banned: tuple[int, ...] = setting((), None, "Token ids never drawn "
                                      "(``text.counts.rare_tokens``).")

    # ----- the library's finer controls (no option sets them) -----
    # The (temperature, noise) cycle of the rounds; None: the paper's (PAPER_SETTINGS), or
    # the one setting ``temperature``/``noise`` make.
    settings: tuple[tuple[float, float], ...] | None = None
    round_size: int = ROUND_SIZE
    shown_inside_fraction: float = 0.7  # the paper shows about 60-80 % inside ε
    search_settings: SearchConfig | None = None  # the search's other settings (its defaults)

    def __post_init__(self) -> None:
        # Each declared setting against its range: one message wherever the value came from.
        for name, declared in SETTINGS.items():
            allowed, value = declared.metadata["allowed"], getattr(self, name)
            if allowed is None or value is None:
                continue
            if declared.metadata["each"]:
                setattr(self, name, tuple(allowed.check(item) for item in value))
            else:
                setattr(self, name, allowed.check(value))
        if self.noise_cosine is not None:
            low, high = self.noise_cosine
            if low > high:
                raise OptionError(f"the noise cosine range {low:g}:{high:g} is empty; give LOW:HIGH "
                                  "with LOW <= HIGH")
        if self.settings is not None and (self.temperature is not None or self.noise is not None):
            raise OptionError("give settings (the whole cycle) or temperature/noise (one "
                              "setting), not both")
        self.banned = tuple(int(i) for i in self.banned)

    @property
    def cycle(self) -> tuple[tuple[float, float], ...]:
        """The (temperature, noise) settings the rounds cycle through."""
        if self.settings is not None:
            return self.settings
        if self.temperature is not None or self.noise is not None:
            return ((1.0 if self.temperature is None else self.temperature,
                     0.0 if self.noise is None else self.noise),)
        return PAPER_SETTINGS

    @property
    def schedule(self) -> tuple[SamplingRound, ...]:
        return make_schedule(self.candidates, self.cycle, self.round_size)

    def for_task(self, task: Task) -> "QueryConfig":
        """This config with the task's search budget where it leaves it unsaid (None)."""
        return self if self.search is not None else replace(self, search=task.default_search)


#: The user's settings (name -> dataclass field, in declaration order): what the CLI, the
#: HTTP schema and the notebook API may expose.
SETTINGS = {f.name: f for f in fields(QueryConfig) if f.metadata.get("setting")}

#: The query command's name for a config from its options. Its positional order
#: (candidates, epsilon, metric, fixed_position, temperature, noise, all_samples, shown,
#: search, constrain, noise_cosine, banned) is the field order above.
query_config = QueryConfig

#: An all-sites grid (``preimage.grid.run_grid``): an overview, so fewer candidates per site
#: than a query, the decoder's draws only (a search per site would cost a query each) and
#: one sample shown (a grid row reads the rates and the agreement, not the samples).
GRID_CONFIG = QueryConfig(candidates=256, shown=1, search=0)
#: The settings a grid's caller may change (the web's GridRequest, ``InversionView.grid``),
#: and what a grid's setting means beyond a query's.
GRID_SETTINGS = ("candidates", "epsilon", "metric")
GRID_HELP = {"candidates": "Candidates per site (fewer than a query's 1,024: the grid is an "
                           "overview)."}
