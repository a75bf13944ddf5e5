"""A query setting is declared once (``preimage.config.QueryConfig``): every other place that
names one (the CLI's options, the HTTP schema, the notebook API) must agree with it on the
default and the allowed values, so a declaration that drifts fails here."""

from __future__ import annotations

import inspect
from enum import Enum
from typing import get_args, get_type_hints

import pytest

from inversionview import options
from inversionview.cli import query as query_commands, verify as verify_commands
from inversionview.api import InversionView
from inversionview.errors import OptionError
from inversionview.preimage.config import (GRID_CONFIG, GRID_SETTINGS, SETTINGS, QueryConfig,
                                           query_config)
from inversionview.preimage.query import run_query
from inversionview.web import schemas

DEFAULTS = QueryConfig()
SEED_DEFAULT = inspect.signature(run_query).parameters["seed"].default


def _schema_bounds(property_schema: dict) -> dict:
    """The numeric bounds of a JSON schema property (the non-null branch of an anyOf)."""
    for branch in property_schema.get("anyOf", [property_schema]):
        if branch.get("type") in ("integer", "number"):
            return {key: branch[key] for key in ("minimum", "exclusiveMinimum", "maximum")
                    if key in branch}
    return {}


def _range_bounds(allowed: options.Range) -> dict:
    return {"exclusiveMinimum" if allowed.low_open else "minimum": allowed.low,
            "maximum": allowed.high}


@pytest.mark.parametrize("request_model, defaults, names, limits", [
    (schemas.QueryRequest, DEFAULTS, [n for n in SETTINGS if n not in schemas.NOT_REQUESTED],
     schemas.SERVER_LIMITS),
    (schemas.GridRequest, GRID_CONFIG, list(GRID_SETTINGS), {"candidates": options.GRID_CANDIDATES}),
])
def test_the_http_schema_states_the_declared_settings(request_model, defaults, names, limits):
    schema = request_model.model_json_schema()["properties"]
    settings = {schemas.JSON_NAMES.get(name, name): name for name in names}
    assert {name for name in schema if name in settings or name in SETTINGS} == set(settings)
    for json_name, name in settings.items():
        declared = SETTINGS[name].metadata["allowed"]
        assert schema[json_name]["default"] == getattr(defaults, name), name
        if isinstance(declared, options.Range) and not SETTINGS[name].metadata["each"]:
            allowed = limits.get(name, declared)
            assert _schema_bounds(schema[json_name]) == _range_bounds(allowed), name
            # a server may allow less than the library, never more
            assert declared.low <= allowed.low and allowed.high <= declared.high, name
        if isinstance(declared, options.Choice):
            assert tuple(schema[json_name]["enum"]) == declared.allowed
    assert schema["seed"]["default"] == SEED_DEFAULT
    assert _schema_bounds(schema["seed"]) == _range_bounds(options.SEED)


def test_a_request_becomes_the_declared_config():
    request = schemas.QueryRequest(model="counting", all=True, noise_cosine=[0.5, 0.75])
    config = query_config(**schemas.settings_of(request))
    assert config.all_samples and config.noise_cosine == (0.5, 0.75)
    assert config.candidates == DEFAULTS.candidates and config.search == DEFAULTS.search
    assert schemas.settings_of(schemas.GridRequest(model="counting")) == {
        name: getattr(GRID_CONFIG, name) for name in GRID_SETTINGS}


@pytest.mark.parametrize("command", [query_commands.query, query_commands.completeness,
                                     verify_commands.verify])
def test_the_cli_options_have_the_declared_defaults_and_ranges(command):
    hints = get_type_hints(command, include_extras=True)
    checked = 0
    for name, parameter in inspect.signature(command).parameters.items():
        if name == "seed":
            assert parameter.default == SEED_DEFAULT
        if name not in SETTINGS or name == "noise_cosine":  # noise_cosine: LOW:HIGH text
            continue
        declared = SETTINGS[name].metadata["allowed"]
        default = parameter.default.value if isinstance(parameter.default, Enum) else parameter.default
        assert default == getattr(DEFAULTS, name), f"{command.__name__} --{name}"
        base, *extras = get_args(hints[name]) or (hints[name],)
        callback = getattr(extras[0], "callback", None) if extras else None
        if isinstance(declared, options.Range):
            assert callback is not None and callback.__self__ == declared, name
        if isinstance(declared, options.Choice):
            assert tuple(member.value for member in base) == declared.allowed, name
        checked += 1
    assert checked >= 4


def test_the_notebook_api_takes_the_declared_defaults():
    query = inspect.signature(InversionView.query).parameters
    for name in SETTINGS:
        assert query[name].default == getattr(DEFAULTS, name), name
    assert query["seed"].default == SEED_DEFAULT
    grid = inspect.signature(InversionView.grid).parameters
    assert {name: grid[name].default for name in GRID_SETTINGS} == {
        name: getattr(GRID_CONFIG, name) for name in GRID_SETTINGS}
    assert grid["seed"].default == SEED_DEFAULT


def test_query_config_takes_the_cli_arguments_in_their_order():
    # the CLI calls query_config(candidates, epsilon, metric, fixed_position, temperature,
    # noise, all_samples, ...) positionally
    config = query_config(64, 0.2, "cosine", True, 2.0, None, True, 5, 0, False, (0.1, 0.2), (7,))
    assert (config.candidates, config.epsilon, config.metric, config.fixed_position,
            config.temperature, config.noise, config.all_samples, config.shown, config.search,
            config.constrain, config.noise_cosine, config.banned) == (
        64, 0.2, "cosine", True, 2.0, None, True, 5, 0, False, (0.1, 0.2), (7,))
    assert config.cycle == ((2.0, 0.0),)  # one setting replaces the paper's schedule
    assert QueryConfig(noise=0.3).cycle == ((1.0, 0.3),)
    assert QueryConfig().cycle == ((0.5, 0.0), (1.0, 0.0), (2.0, 0.0), (2.0, 0.1))


@pytest.mark.parametrize("settings, message", [
    ({"candidates": 0}, "candidates must be"), ({"epsilon": 0}, "epsilon must be"),
    ({"metric": "manhattan"}, "metric must be one of euclidean, cosine"),
    ({"temperature": 0}, "temperature must be"), ({"shown": 10**6}, "shown must be"),
    ({"search": -1}, "search must be"), ({"noise_cosine": (0.5, 2)}, "noise cosine must be"),
    ({"settings": ((1.0, 0.0),), "temperature": 2.0}, "not both"),
])
def test_the_declared_ranges_are_checked_by_the_library(settings, message):
    with pytest.raises(OptionError, match=message):
        QueryConfig(**settings)
