"""Attribution head finding on a constructed model whose writing head is known."""

import pytest
import torch
from transformers import GPT2LMHeadModel

from inversionview.factual.heads import attribution_heads, upper_layers
from inversionview.probed import load_probed
from inversionview.tasks.base import TaskInputError


@pytest.fixture(scope="module")
def constructed(factual_lm_dir, tmp_path_factory):
    """The tiny factual LM (2 layers of 4 heads) with every head's output projection zeroed
    but a1.2's, and a1.0's scaled down tenfold; MLPs write nothing."""
    import shutil

    directory = tmp_path_factory.mktemp("one-head")
    for path in factual_lm_dir.iterdir():
        shutil.copy(path, directory / path.name)
    model = GPT2LMHeadModel.from_pretrained(directory)
    d_head = model.config.n_embd // model.config.n_head
    with torch.no_grad():
        for layer, block in enumerate(model.transformer.h):
            weight = block.attn.c_proj.weight  # [d, d]: z @ W, rows by head
            kept = weight.clone()
            weight.zero_()
            if layer == 1:
                weight[2 * d_head:3 * d_head] = kept[2 * d_head:3 * d_head]
                weight[0:d_head] = 0.1 * kept[0:d_head]
            block.mlp.c_proj.weight.zero_()
            block.mlp.c_proj.bias.zero_()
    model.save_pretrained(directory)
    return load_probed(directory)


def test_the_head_that_writes_is_found(constructed):
    prompts = constructed.task.knowledge.prompts("eval")[::20]
    table = attribution_heads(constructed, prompts, threshold=0.5, keep=3)
    assert table["layers"] == [1] == upper_layers(2)
    assert table["kept"] == ["a1.2"]  # a1.0 writes about a tenth as much: below 0.5
    top, second = table["heads"][:2]
    assert top["name"] == "a1.2" and top["active_rate"] == 1.0 and top["mean_share"] > 0.8
    assert second["name"] == "a1.0" and 0 < second["mean_share"] < 0.2
    assert set(top["by_relation"]) == {p.relation for p in prompts}
    loose = attribution_heads(constructed, prompts, threshold=0.01, keep=3)
    assert loose["kept"][:2] == ["a1.2", "a1.0"]
    silent = {h["name"]: h for h in loose["heads"]}["a1.3"]
    assert silent["mean_share"] == 0.0 and "a1.3" not in loose["kept"]


def test_bad_thresholds_and_no_prompts(constructed):
    with pytest.raises(TaskInputError, match="a share of the update, in \\(0, 1\\]"):
        attribution_heads(constructed, constructed.task.knowledge.prompts("eval")[:2], threshold=2)
    with pytest.raises(TaskInputError, match="no prompts"):
        attribution_heads(constructed, [])


def test_heads_command_prints_the_table_and_draws_the_maps(constructed, tmp_path):
    from cli_runner import invoke

    plot = tmp_path / "heads.png"
    result = invoke(["factual", "heads", constructed.source, "--threshold", "0.5", "--keep", "2",
                     "--relation", "capital", "--plot", str(plot)])
    assert result.exit_code == 0, result.output
    assert "kept a1.2" in result.stdout and plot.stat().st_size > 1000
    for args, message in [(["--threshold", "0"], "--threshold"), (["--keep", "0"], "--keep"),
                          (["--relation", "birthplace"], "unknown relation")]:
        bad = invoke(["factual", "heads", constructed.source, *args])
        assert bad.exit_code == 2 and message in bad.stderr, bad.output
