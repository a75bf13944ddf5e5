"""The probed model: build, train, load offline, site names, activation extraction."""

from inversionview.probed.model import ModelLoadError, ProbedModel, build_probed, load_probed
from inversionview.probed.subject import Subject
from inversionview.probed.sites import Site, SiteError, all_sites, check_site, parse_site

__all__ = ["ModelLoadError", "ProbedModel", "Site", "Subject", "SiteError", "all_sites", "build_probed",
           "check_site", "load_probed", "parse_site"]
