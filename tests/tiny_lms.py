"""Tiny random causal LMs of several architectures, built and saved inside a test.

``make_tiny_lm(architecture, directory)`` writes a HuggingFace model directory (config.json,
model.safetensors, tokenizer.json, tokenizer_config.json, special_tokens_map.json) that
``AutoModelForCausalLM`` / ``AutoTokenizer.from_pretrained(directory, local_files_only=True)``
load without any network. The tokenizer is a byte-level BPE trained here on a few hundred
generated sentences; the weights are random, drawn from ``seed``, with every norm's scale and
shift perturbed away from (1, 0) so that folding them into the next weights is really tested.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import (GPT2Config, GPT2LMHeadModel, GPTNeoXConfig, GPTNeoXForCausalLM,
                          LlamaConfig, LlamaForCausalLM, PreTrainedModel,
                          PreTrainedTokenizerFast)

ARCHITECTURES = ("gpt2", "gpt_neox", "llama")
N_LAYERS, D_MODEL, N_HEADS, N_CTX = 2, 32, 4, 64
LLAMA_KV_HEADS = 2  # grouped-query attention: two query heads share each key/value head
VOCAB_SIZE = 300

_NAMES = ["Alice", "Bob", "Carol", "Dave", "Erin", "Frank", "Grace", "Heidi", "Ivan", "Judy"]
_OBJECTS = ["book", "apple", "key", "letter", "ball", "cup", "map", "coin"]
_VERBS = ["gave", "handed", "sent", "showed", "threw", "lent"]
_PLACES = ["store", "park", "school", "garden", "station", "library"]


def sentences(n: int = 400, seed: int = 0) -> list[str]:
    """``n`` short sentences with names (the tokenizer's training text)."""
    rng = random.Random(seed)
    lines = []
    for _ in range(n):
        a, b = rng.sample(_NAMES, 2)
        place = rng.choice(_PLACES)
        lines.append(f"When {a} and {b} went to the {place}, {b} {rng.choice(_VERBS)} "
                     f"a {rng.choice(_OBJECTS)} to {a}.")
    return lines


def train_tokenizer(architecture: str, seed: int = 0) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer of about ``VOCAB_SIZE`` tokens: GPT-2's ``<|endoftext|>`` as
    BOS/EOS for gpt2 and gpt_neox, ``<s>``/``</s>`` (BOS prepended) for llama."""
    specials = ["<s>", "</s>"] if architecture == "llama" else ["<|endoftext|>"]
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB_SIZE, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tokenizer.train_from_iterator(sentences(seed=seed), trainer)
    if architecture == "llama":
        bos = tokenizer.token_to_id("<s>")
        tokenizer.post_processor = processors.TemplateProcessing(
            single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos)])
        return PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<s>",
                                       eos_token="</s>", unk_token=None)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<|endoftext|>",
                                   eos_token="<|endoftext|>", unk_token="<|endoftext|>")


def build_model(architecture: str, vocab_size: int, bos_id: int, eos_id: int,
                seed: int = 0) -> PreTrainedModel:
    """A random model of ``architecture`` (2 layers, d_model 32, 4 heads, 64 positions)."""
    ids = {"vocab_size": vocab_size, "bos_token_id": bos_id, "eos_token_id": eos_id}
    if architecture == "gpt2":
        config = GPT2Config(n_layer=N_LAYERS, n_embd=D_MODEL, n_head=N_HEADS, n_positions=N_CTX,
                            n_inner=4 * D_MODEL, resid_pdrop=0.0, embd_pdrop=0.0,
                            attn_pdrop=0.0, **ids)
        model_class = GPT2LMHeadModel
    elif architecture == "gpt_neox":
        # Pythia's layout: parallel attention and MLP, rotary on a quarter of each head,
        # untied unembedding.
        config = GPTNeoXConfig(num_hidden_layers=N_LAYERS, hidden_size=D_MODEL,
                               num_attention_heads=N_HEADS, intermediate_size=4 * D_MODEL,
                               max_position_embeddings=N_CTX, use_parallel_residual=True,
                               tie_word_embeddings=False, hidden_dropout=0.0,
                               attention_dropout=0.0, **ids)
        model_class = GPTNeoXForCausalLM
    elif architecture == "llama":
        config = LlamaConfig(num_hidden_layers=N_LAYERS, hidden_size=D_MODEL,
                             num_attention_heads=N_HEADS, num_key_value_heads=LLAMA_KV_HEADS,
                             intermediate_size=3 * D_MODEL, max_position_embeddings=N_CTX,
                             tie_word_embeddings=False, **ids)
        model_class = LlamaForCausalLM
    else:
        raise ValueError(f"unknown architecture {architecture!r}; expected one of {ARCHITECTURES}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = model_class(config)
    _randomize(model, seed)
    return model.eval()


@torch.no_grad()
def _randomize(model: PreTrainedModel, seed: int) -> None:
    """Weights of order one: matrices ~ N(0, 1/fan_in), embeddings ~ N(0, 1), biases ~ N(0,
    0.1), norm scales ~ 1 + N(0, 0.2) (HF's init leaves norms at exactly 1 and 0)."""
    generator = torch.Generator().manual_seed(seed)
    for name, parameter in model.named_parameters():
        noise = torch.randn(parameter.shape, generator=generator, dtype=parameter.dtype)
        is_norm = any(part in name for part in ("ln_", "norm", "layernorm"))
        if is_norm and name.endswith("weight"):
            parameter.copy_(1 + 0.2 * noise)
        elif parameter.dim() == 1:
            parameter.copy_(0.1 * noise)
        elif "wte" in name or "wpe" in name or "embed" in name:
            parameter.copy_(noise)
        else:
            parameter.copy_(noise / min(parameter.shape) ** 0.5)


def make_tiny_lm(architecture: str, directory: str | Path, seed: int = 0) -> Path:
    """Train a tokenizer, build a random ``architecture`` model ("gpt2", "gpt_neox" or
    "llama") and save both in ``directory``; returns the directory."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer = train_tokenizer(architecture, seed)
    model = build_model(architecture, len(tokenizer), tokenizer.bos_token_id,
                        tokenizer.eos_token_id, seed)
    tokenizer.save_pretrained(directory)
    # transformers 5 keeps the special tokens in tokenizer_config.json only; older readers
    # look for this file
    special = {name: getattr(tokenizer, name) for name in ("bos_token", "eos_token", "unk_token")
               if getattr(tokenizer, name) is not None}
    (directory / "special_tokens_map.json").write_text(json.dumps(special, indent=2))
    model.save_pretrained(directory)  # safetensors, the only format transformers 5 writes
    return directory


def make_tiny_text_model(root: str | Path, architecture: str = "gpt2") -> tuple[Path, Path, Path]:
    """A tiny ``architecture`` LM in ROOT/model, a corpus of generated sentences in
    ROOT/corpus.txt and a decoder trained on it for a few steps in ROOT/decoder (quality is not
    the point: the pipeline is). Returns (model directory, corpus, decoder directory)."""
    from inversionview.decoder.train import DecoderTrainingConfig, train_decoder
    from inversionview.probed.model import load_probed

    root = Path(root)
    directory = make_tiny_lm(architecture, root / "model")
    corpus = root / "corpus.txt"
    corpus.write_text("\n".join(sentences(300, seed=5)))
    config = DecoderTrainingConfig(out=root / "decoder", examples=192, corpus=str(corpus),
                                   max_tokens=24, eval_every_seconds=10_000,
                                   eval_queries_per_site=1, eval_samples_per_query=2,
                                   decoder_overrides={"d_model": 32, "n_heads": 2, "d_mlp": 64,
                                                      "n_condition_blocks": 1})
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        train_decoder(load_probed(directory), config, show_progress=False)
    return directory, corpus, root / "decoder"


IOI_VOCAB = 700  # the IOI tokenizer: every one of the project's names is one token


def make_ioi_lm(directory: Path, n_layer: int = 2, n_head: int = 4, n_embd: int = 32,
                seed: int = 0, task: str | None = "ioi") -> Path:
    """A random GPT-2 with a BPE trained on the IOI mixture (names are single tokens)."""
    from inversionview.ioi.corpus import mixture_lines
    from inversionview.text.bpe import train_bpe
    from inversionview.text.tokenizer import HFTokenizer

    train_bpe(mixture_lines(1_500, seed=3), IOI_VOCAB, directory)
    size = len(HFTokenizer.from_directory(directory, 10**6).hf)
    torch.manual_seed(seed)
    config = GPT2Config(vocab_size=size, n_positions=48, n_embd=n_embd, n_layer=n_layer,
                        n_head=n_head, n_inner=4 * n_embd, bos_token_id=0, eos_token_id=0,
                        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    GPT2LMHeadModel(config).save_pretrained(directory)
    if task is not None:
        (directory / "inversionview.json").write_text(json.dumps(
            {"kind": "probed-model", "task": task}))
    return directory


FACTUAL_VOCAB = 1200  # the factual tokenizer: trained on the fact sentences


def make_factual_lm(directory: Path, n_layer: int = 2, n_head: int = 4, n_embd: int = 32,
                    seed: int = 0) -> Path:
    """A random GPT-2 with a BPE trained on every fact sentence (manifest task factual)."""
    from inversionview.factual.knowledge import Knowledge
    from inversionview.text.bpe import train_bpe
    from inversionview.text.tokenizer import HFTokenizer

    knowledge = Knowledge.load()
    train_bpe(knowledge.sentences("all"), FACTUAL_VOCAB, directory)
    size = len(HFTokenizer.from_directory(directory, 10**6).hf)
    torch.manual_seed(seed)
    config = GPT2Config(vocab_size=size, n_positions=32, n_embd=n_embd, n_layer=n_layer,
                        n_head=n_head, n_inner=4 * n_embd, bos_token_id=0, eos_token_id=0,
                        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    GPT2LMHeadModel(config).save_pretrained(directory)
    (directory / "inversionview.json").write_text(json.dumps({"kind": "probed-model",
                                                              "task": "factual"}))
    return directory


def keep_spaces_apart(directory: Path) -> Path:
    """Drop every BPE merge of the tokenizer in ``directory`` that joins the space ("Ġ") to
    what follows: " Paris" is then spelled " " + "Paris" (or its letters), as a tester's
    model spelled every answer and name (issue 31). The ids do not change."""
    path = Path(directory) / "tokenizer.json"
    tokenizer = json.loads(path.read_text())
    merges = tokenizer["model"]["merges"]
    tokenizer["model"]["merges"] = [m for m in merges if not (m[0] if isinstance(m, list)
                                                                else m).startswith("Ġ")]
    path.write_text(json.dumps(tokenizer))
    return Path(directory)
