"""Activation sites: the one place where site names are parsed and printed.

A site is named either by its TransformerLens hook name or by a short name:

    hook name                        short     activation
    blocks.L.hook_resid_pre          xL.pre    residual stream entering block L (x0.pre: embeddings)
    blocks.L.attn.hook_result.H      aL.H      output of head H of layer L, as written to the residual
    blocks.L.hook_attn_out           aL        the whole attention output of layer L
    blocks.L.hook_resid_mid          xL.mid    residual after attention, before the MLP
    blocks.L.hook_mlp_out            mL        MLP output
    blocks.L.hook_resid_post         xL.post   residual after block L

``blocks.L.attn.hook_result.H`` is this project's extension of TransformerLens' per-head hook
``blocks.L.attn.hook_result`` (shape ``[batch, pos, head, d_model]``) to one head.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from inversionview.errors import UserError, echo

SiteKind = Literal["resid_pre", "head", "attn_out", "resid_mid", "mlp_out", "resid_post"]


class SiteError(UserError, ValueError):
    """A site name that cannot be parsed or does not exist in a model."""


@dataclass(frozen=True, order=True)
class Site:
    layer: int
    kind: SiteKind
    head: int | None = None

    @property
    def hook(self) -> str:
        """The TransformerLens hook name (with ``.H`` appended for one head)."""
        if self.kind == "head":
            return f"blocks.{self.layer}.attn.hook_result.{self.head}"
        return f"blocks.{self.layer}.hook_{self.kind}"

    @property
    def tl_hook(self) -> str:
        """The hook that TransformerLens itself fires (per-head sites share one hook)."""
        if self.kind == "head":
            return f"blocks.{self.layer}.attn.hook_result"
        return self.hook

    @property
    def short(self) -> str:
        match self.kind:
            case "resid_pre":
                return f"x{self.layer}.pre"
            case "head":
                return f"a{self.layer}.{self.head}"
            case "attn_out":
                return f"a{self.layer}"
            case "resid_mid":
                return f"x{self.layer}.mid"
            case "mlp_out":
                return f"m{self.layer}"
            case "resid_post":
                return f"x{self.layer}.post"
        raise AssertionError(self.kind)

    @property
    def needs_mlp(self) -> bool:
        """Whether computing this site runs block ``layer``'s MLP."""
        return self.kind in ("mlp_out", "resid_post")

    def __str__(self) -> str:
        return self.short


_SHORT = [
    (re.compile(r"^x([0-9]+)\.pre$"), "resid_pre"),
    (re.compile(r"^a([0-9]+)\.([0-9]+)$"), "head"),
    (re.compile(r"^a([0-9]+)$"), "attn_out"),
    (re.compile(r"^x([0-9]+)\.mid$"), "resid_mid"),
    (re.compile(r"^m([0-9]+)$"), "mlp_out"),
    (re.compile(r"^x([0-9]+)\.post$"), "resid_post"),
]
_HOOK = [
    (re.compile(r"^blocks\.([0-9]+)\.hook_resid_pre$"), "resid_pre"),
    (re.compile(r"^blocks\.([0-9]+)\.attn\.hook_result\.([0-9]+)$"), "head"),
    (re.compile(r"^blocks\.([0-9]+)\.hook_attn_out$"), "attn_out"),
    (re.compile(r"^blocks\.([0-9]+)\.hook_resid_mid$"), "resid_mid"),
    (re.compile(r"^blocks\.([0-9]+)\.hook_mlp_out$"), "mlp_out"),
    (re.compile(r"^blocks\.([0-9]+)\.hook_resid_post$"), "resid_post"),
]

SITE_NAME_HELP = (
    "short names x0.pre, aL.H, aL, xL.mid, mL, xL.post or TransformerLens hook names "
    "blocks.L.hook_resid_pre, blocks.L.attn.hook_result.H, blocks.L.hook_attn_out, "
    "blocks.L.hook_resid_mid, blocks.L.hook_mlp_out, blocks.L.hook_resid_post"
)


def parse_site(name: str | Site) -> Site:
    """Parse a short or hook site name (checking only its form; see ``check_site``)."""
    if isinstance(name, Site):
        return name
    text = name.strip()
    for pattern, kind in _SHORT + _HOOK:
        match = pattern.fullmatch(text)
        if match:
            numbers = [int(group) for group in match.groups()]
            return Site(layer=numbers[0], kind=kind, head=numbers[1] if kind == "head" else None)
    raise SiteError(f"cannot parse site {echo(name)}; use {SITE_NAME_HELP}")


def all_sites(n_layers: int, n_heads: int) -> list[Site]:
    """Every site of a model, in forward order."""
    sites: list[Site] = []
    for layer in range(n_layers):
        sites.append(Site(layer, "resid_pre"))
        sites.extend(Site(layer, "head", head) for head in range(n_heads))
        sites.extend([Site(layer, "attn_out"), Site(layer, "resid_mid"), Site(layer, "mlp_out"),
                      Site(layer, "resid_post")])
    return sites


def check_site(name: str | Site, n_layers: int, n_heads: int,
               allowed: tuple[str, ...] | None = None, listed: tuple[str, ...] | None = None,
               ) -> Site:
    """Parse ``name`` and check it exists in a model of this shape (and, if given, that it is
    one of ``allowed``); the error lists the valid sites, or ``listed`` (e.g. the sites a
    decoder reads, when those are what the user can ask for)."""
    site = parse_site(name)
    exists = site.layer < n_layers and (site.head is None or site.head < n_heads)
    valid = [s.short for s in all_sites(n_layers, n_heads)] if allowed is None else list(allowed)
    if not exists or site.short not in valid:
        raise SiteError(f"site {echo(name)} is not a site of this model; valid sites: "
                        f"{describe_sites(list(valid if listed is None else listed), n_layers, n_heads)}")
    return site


LISTED_AT_MOST = 40  # a longer list is described by its pattern (GPT-2 small has 193 sites)


def describe_sites(names: list[str], n_layers: int, n_heads: int) -> str:
    """The site names, or for a long list every site of the shape, by pattern."""
    if len(names) <= LISTED_AT_MOST:
        return ", ".join(names)
    every = [s.short for s in all_sites(n_layers, n_heads)]
    if set(names) == set(every) - {f"x{layer}.pre" for layer in range(1, n_layers)}:
        return (f"x0.pre, then for each layer L in 0..{n_layers - 1}: aL.H (head H in "
                f"0..{n_heads - 1}), aL, xL.mid, mL, xL.post (e.g. a{n_layers - 1}.{n_heads - 1}, "
                f"x{n_layers - 1}.post)")
    return f"{', '.join(names[:LISTED_AT_MOST])} and {len(names) - LISTED_AT_MOST} more"
