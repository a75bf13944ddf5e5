import pytest

from inversionview.probed.sites import Site, SiteError, all_sites, check_site, parse_site
from inversionview.tasks import TASKS

CASES = [
    ("x0.pre", "blocks.0.hook_resid_pre", Site(0, "resid_pre")),
    ("x3.pre", "blocks.3.hook_resid_pre", Site(3, "resid_pre")),
    ("a0.0", "blocks.0.attn.hook_result.0", Site(0, "head", 0)),
    ("a11.7", "blocks.11.attn.hook_result.7", Site(11, "head", 7)),
    ("a1", "blocks.1.hook_attn_out", Site(1, "attn_out")),
    ("x1.mid", "blocks.1.hook_resid_mid", Site(1, "resid_mid")),
    ("m0", "blocks.0.hook_mlp_out", Site(0, "mlp_out")),
    ("x1.post", "blocks.1.hook_resid_post", Site(1, "resid_post")),
]


@pytest.mark.parametrize("short,hook,site", CASES)
def test_parse_and_print_both_ways(short, hook, site):
    assert parse_site(short) == site
    assert parse_site(hook) == site
    assert site.short == short and site.hook == hook
    assert parse_site(site.short) == parse_site(site.hook) == site


def test_head_sites_use_the_transformerlens_per_head_hook():
    assert parse_site("a1.2").tl_hook == "blocks.1.attn.hook_result"
    assert parse_site("x1.mid").tl_hook == "blocks.1.hook_resid_mid"


@pytest.mark.parametrize("bad", ["", "x0", "a", "mlp0", "blocks.0.hook_result", "x0.post.1",
                                 "blocks.0.attn.hook_result", "A0.0"])
def test_unparseable_names_explain_the_forms(bad):
    with pytest.raises(SiteError, match="cannot parse site .* use short names"):
        parse_site(bad)


def test_unknown_site_lists_valid_ones():
    with pytest.raises(SiteError, match=r"not a site of this model; valid sites: x0.pre, a0.0, a0.1"):
        check_site("a0.5", n_layers=2, n_heads=2)
    with pytest.raises(SiteError, match="not a site"):
        check_site("x2.post", n_layers=2, n_heads=2)
    with pytest.raises(SiteError, match="valid sites: x0.pre, a0.0, x0.mid"):
        check_site("a0", n_layers=2, n_heads=1, allowed=("x0.pre", "a0.0", "x0.mid"))


def test_task_site_lists_match_the_paper():
    assert TASKS["counting"].sites == ("x0.pre", "a0.0", "x0.mid", "m0", "x0.post", "a1.0",
                                       "x1.mid", "m1", "x1.post")
    assert TASKS["addition"].sites == ("x0.pre", "a0.0", "a0.1", "a0.2", "a0.3", "x0.mid",
                                       "x0.post", "a1.0", "a1.1", "a1.2", "a1.3", "x1.mid",
                                       "x1.post")
    for task in TASKS.values():
        every = {s.short for s in all_sites(2, 4)}
        assert set(task.sites) <= every


def test_all_sites_are_in_forward_order():
    names = [s.short for s in all_sites(2, 2)]
    assert names == ["x0.pre", "a0.0", "a0.1", "a0", "x0.mid", "m0", "x0.post",
                     "x1.pre", "a1.0", "a1.1", "a1", "x1.mid", "m1", "x1.post"]


def test_a_long_site_list_is_described_by_its_pattern():
    from inversionview.probed.model import model_sites

    names = tuple(site.short for site in model_sites(12, 12))  # GPT-2 small: 193 sites
    with pytest.raises(SiteError) as error:
        check_site("a12.0", 12, 12, names, names)
    assert str(error.value) == (
        "site 'a12.0' is not a site of this model; valid sites: x0.pre, then for each layer L "
        "in 0..11: aL.H (head H in 0..11), aL, xL.mid, mL, xL.post (e.g. a11.11, x11.post)")
    some = names[:50]
    with pytest.raises(SiteError, match=r"valid sites: x0.pre, a0.0, .* and 10 more$"):
        check_site("a12.0", 12, 12, some, some)
