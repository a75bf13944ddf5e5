"""--init-from: a decoder's transformer starts from a pretrained GPT-2 with the probed model's
tokenizer (its shape and weights; the conditioning fresh), offline; the source is recorded
and kept on resume; every directory that cannot be used is refused in one line."""

import hashlib
import json
import re
import shutil

import pytest
import torch
from cli_runner import invoke
from safetensors.torch import load_file, save_file
from tiny_lms import make_tiny_lm, sentences, train_tokenizer
from transformers import GPT2Config, GPT2LMHeadModel

from inversionview.decoder.pretrained import PretrainedInitError, initialise_from, start_from
from inversionview.decoder.store import load_decoder
from inversionview.decoder.train import DecoderTrainingConfig, build_decoder, train_decoder
from inversionview.probed.model import load_probed

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
# The second LM: another shape than the probed model's (2 layers, d 32, 4 heads, MLP 128).
WIDE = dict(n_layer=3, n_embd=48, n_head=3, n_inner=96, n_positions=40)


def save_lm(directory, vocab_size, tokenizer_from=None, seed=0, **settings):
    """A random GPT-2 (every weight, norms included, drawn from ``seed``) saved in
    ``directory``, with a copy of the tokenizer files of ``tokenizer_from``."""
    config = GPT2Config(**{**WIDE, "vocab_size": vocab_size, "bos_token_id": 0,
                           "eos_token_id": 0, **settings})
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = GPT2LMHeadModel(config)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.copy_(0.5 * torch.randn(parameter.shape))
    model.save_pretrained(directory)
    for name in TOKENIZER_FILES * (tokenizer_from is not None):
        shutil.copy(tokenizer_from / name, directory / name)
    return directory


@pytest.fixture(scope="module")
def lms(tmp_path_factory):
    """(the probed tiny GPT-2, a wider GPT-2 with the same tokenizer, a corpus)."""
    root = tmp_path_factory.mktemp("pretrained")
    probed_dir = make_tiny_lm("gpt2", root / "probed")
    vocab_size = load_probed(probed_dir).task.vocab.model_size
    wide = save_lm(root / "wide", vocab_size, tokenizer_from=probed_dir, seed=1)
    corpus = root / "corpus.txt"
    corpus.write_text("\n".join(sentences(200, seed=3)))
    return probed_dir, wide, corpus


def start(probed, directory, overrides=None, sha256=None):
    """What train_decoder does before its first step: the checks, the shape, the build, the
    copy. Returns (the LM, the decoder, the names of the weights copied)."""
    pretrained, shape = start_from(directory, probed, overrides or {}, sha256)
    decoder = build_decoder(probed, seed=0, **shape)
    return pretrained, decoder, initialise_from(decoder, pretrained)


def test_the_decoder_starts_as_the_lm(lms, no_network):
    probed_dir, wide, _ = lms
    probed = load_probed(probed_dir)
    pretrained, decoder, copied = start(probed, wide)
    assert no_network == []
    shape = {name: getattr(decoder.config, name) for name in ("d_model", "n_layers", "n_heads", "d_mlp")}
    assert shape == {"d_model": 48, "n_layers": 3, "n_heads": 3, "d_mlp": 96}
    lm = GPT2LMHeadModel.from_pretrained(wide, local_files_only=True).eval()
    vocab, n_ctx = probed.task.vocab, decoder.config.n_ctx
    fresh = build_decoder(probed, seed=0, d_model=48, n_layers=3, n_heads=3, d_mlp=96)
    with torch.no_grad():
        embedding = decoder.token_embedding.weight
        assert torch.equal(embedding[:vocab.model_size], lm.transformer.wte.weight)
        # the decoder-only EOS and PAD rows keep their fresh draw
        assert torch.equal(embedding[vocab.model_size:], fresh.token_embedding.weight[vocab.model_size:])
        assert torch.equal(decoder.position_embedding.weight, lm.transformer.wpe.weight[:n_ctx])
        x = torch.randn(5, 7, 48, generator=torch.Generator().manual_seed(0))
        for ours, theirs in zip(decoder.blocks, lm.transformer.h):
            assert torch.equal(ours.norm1(x), theirs.ln_1(x)) and torch.equal(ours.norm2(x), theirs.ln_2(x))
            q, k, v = theirs.attn.c_attn(x).split(48, dim=-1)
            assert torch.allclose(ours.attention.query(x), q, atol=1e-6)
            assert torch.allclose(ours.attention.key_value(x), torch.cat([k, v], -1), atol=1e-6)
            assert torch.allclose(ours.attention.out(x), theirs.attn.c_proj(x), atol=1e-6)
            assert torch.allclose(ours.mlp(x), theirs.mlp(x), atol=1e-5)
        assert torch.equal(decoder.norm(x), lm.transformer.ln_f(x))
        # the conditioning stays as a fresh decoder's
        for name, value in fresh.conditioning.state_dict().items():
            assert torch.equal(decoder.conditioning.state_dict()[name], value), name
    assert len(copied) == 4 + 3 * 14  # embeddings, final norm, 14 weights per block
    digest = hashlib.sha256((wide / "model.safetensors").read_bytes()).hexdigest()
    assert pretrained.weights_sha256 == digest


def test_training_from_an_lm_records_it_and_resumes_without_it(lms, tmp_path, monkeypatch):
    probed_dir, wide, corpus = lms
    monkeypatch.chdir(tmp_path)
    shutil.copytree(wide, tmp_path / "lm")
    probed = load_probed(probed_dir)
    config = DecoderTrainingConfig(out=tmp_path / "run", examples=16 * 3, batch_size=16,
                                   corpus=str(corpus), max_tokens=24, init_from="lm",
                                   eval_every_seconds=3600.0, eval_queries_per_site=1,
                                   eval_samples_per_query=2, checkpoint_every_seconds=1e-9,
                                   decoder_overrides={"n_condition_blocks": 1})
    train_decoder(probed, config, show_progress=False)
    manifest = json.loads((tmp_path / "run" / "decoder.json").read_text())
    digest = hashlib.sha256((wide / "model.safetensors").read_bytes()).hexdigest()
    assert manifest["init_from"] == {"path": "lm", "weights_sha256": digest}
    assert manifest["training"]["init_from"] == "lm"
    assert manifest["config"]["d_model"] == 48 and manifest["config"]["n_ctx"] == 26
    trained, _ = load_decoder(tmp_path / "run", probed)
    assert not torch.equal(trained.blocks[0].mlp[0].weight,  # it trained
                           load_file(str(wide / "model.safetensors"))["transformer.h.0.mlp.c_fc.weight"].T)
    # a resume rebuilds the same decoder from the checkpoint: the LM may be gone
    shutil.rmtree(tmp_path / "lm")
    resumed = DecoderTrainingConfig.resumed(tmp_path / "run", examples=16 * 5)
    assert (resumed.init_from, resumed.init_from_sha256) == ("lm", digest)
    assert resumed.decoder_overrides["d_model"] == 48
    train_decoder(load_probed(probed_dir), resumed, resume=True, show_progress=False)
    manifest = json.loads((tmp_path / "run" / "decoder.json").read_text())
    assert manifest["steps"] == 5 and manifest["init_from"]["weights_sha256"] == digest


def _break(directory, source):
    """Ways to spoil a copy of the wide LM for the refusal cases (``source``: the fixture's)."""
    return {
        "missing": lambda: directory / "nowhere",
        "a file": lambda: source / "config.json",
        "no config": lambda: (directory.mkdir(), directory)[1],
        "not gpt2": lambda: _edit_config(directory, source, model_type="llama"),
        "no safetensors": lambda: _without(directory, source, "model.safetensors"),
        "relu": lambda: _edit_config(directory, source, activation_function="relu"),
        "heads": lambda: _edit_config(directory, source, n_head=5),
        "config and weights differ": lambda: _edit_config(directory, source, n_inner=128),
        "missing weight": lambda: _drop_weights(directory, source, "transformer.h.2."),
    }[directory.name]


def _copy(directory, source):
    shutil.copytree(source, directory)
    return directory


def _edit_config(directory, source, **settings):
    _copy(directory, source)
    config = json.loads((directory / "config.json").read_text())
    (directory / "config.json").write_text(json.dumps({**config, **settings}))
    return directory


def _without(directory, source, name):
    _copy(directory, source)
    (directory / name).unlink()
    return directory


def _drop_weights(directory, source, prefix):
    _copy(directory, source)
    state = load_file(str(directory / "model.safetensors"))
    save_file({k: v for k, v in state.items() if not k.startswith(prefix)},
              str(directory / "model.safetensors"))
    return directory


@pytest.mark.parametrize("case,message", [
    ("missing", "does not exist; expected a HuggingFace GPT-2 directory"),
    ("a file", "is a file, not a directory"),
    ("no config", "has no config.json"),
    ("not gpt2", "describes a 'llama' model; --init-from takes a GPT-2"),
    ("no safetensors", "has no model.safetensors"),
    ("relu", "activation_function is 'relu' but the decoder's blocks compute 'gelu_new'"),
    ("heads", "n_embd 48 is not divisible by n_head 5"),
    ("config and weights differ", "blocks.0.mlp.0.weight has shape (96, 48), the decoder (128, 48)"),
    ("missing weight", "has no weight h.2.attn.c_attn.weight"),
])
def test_a_directory_that_cannot_be_used_is_refused_in_one_line(lms, tmp_path, case, message):
    probed_dir, wide, _ = lms
    directory = _break(tmp_path / case, wide)()
    with pytest.raises(PretrainedInitError, match=re.escape(message)) as error:
        start(load_probed(probed_dir), directory)
    assert "\n" not in str(error.value) and isinstance(error.value, ValueError)


def test_another_vocabulary_or_tokenizer_is_refused(lms, tmp_path):
    probed_dir, wide, _ = lms
    probed = load_probed(probed_dir)
    size = probed.task.vocab.model_size
    bigger = save_lm(tmp_path / "bigger", size + 8, tokenizer_from=None)
    with pytest.raises(PretrainedInitError, match=f"has a vocabulary of {size + 8} ids but the "
                                                  f"probed model has {size}"):
        start(probed, bigger)
    other = train_tokenizer("gpt2", seed=1)  # trained on other sentences: other merges
    assert len(other) == size
    other_dir = save_lm(tmp_path / "other", size)
    other.save_pretrained(other_dir)
    with pytest.raises(PretrainedInitError, match="has another tokenizer than the probed model"):
        start(probed, other_dir)
    short = save_lm(tmp_path / "short", size, tokenizer_from=probed_dir, n_positions=20)
    with pytest.raises(PretrainedInitError, match="has 20 positions but the decoder needs 34"):
        start(probed, short)
    untied = save_lm(tmp_path / "untied", size, tokenizer_from=probed_dir, tie_word_embeddings=False)
    with pytest.raises(PretrainedInitError, match="has an output head apart from its token embedding"):
        start(probed, untied)
    with pytest.raises(PretrainedInitError, match="decoder setting d_model 64 contradicts the 48"):
        start(probed, wide, overrides={"d_model": 64})
    with pytest.raises(PretrainedInitError, match="are not the ones asked for"):
        start(probed, wide, sha256="0" * 64)


def test_cli_init_from_and_its_refusals(lms, tmp_path, monkeypatch):
    probed_dir, wide, corpus = lms
    monkeypatch.chdir(tmp_path)
    base = ["train-decoder", probed_dir, "--corpus", corpus, "--max-tokens", "24",
            "--examples", "64", "--json"]
    result = invoke([*base, "--out", "run", "--init-from", wide, "--positions", "last"])
    assert result.exit_code == 0, result.stderr
    manifest = json.loads((tmp_path / "run" / "decoder.json").read_text())
    assert manifest["init_from"]["path"] == str(wide) and manifest["config"]["n_layers"] == 3
    assert manifest["training"]["positions"] == "last"
    result = invoke([*base, "--out", "run", "--resume", "--positions", "uniform"])
    assert result.exit_code == 2 and "--positions uniform differs from the last" in result.stderr
    result = invoke([*base, "--out", "run", "--resume", "--init-from", "elsewhere"])
    assert result.exit_code == 2 and f"--init-from elsewhere differs from the {wide}" in result.stderr
    for args, message in [(["--init-from", "nowhere"], "--init-from 'nowhere' does not exist"),
                          (["--init-from", corpus], "is a file, not a directory"),
                          (["--positions", "median"], "must be one of uniform, last, "
                                                      "low-bos-attention, last-or-least-bos; "
                                                      "got 'median'")]:
        result = invoke([*base, "--out", "new", *args])
        assert result.exit_code == 2, result.output
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0]
        assert not (tmp_path / "new").exists()
