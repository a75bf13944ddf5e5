"""Malformed model and decoder files: every command fails with exit status 2 and one line
that names the broken file and says what is wrong, never a traceback.

Each case copies a bundled artifact (artifacts/counting, artifacts/decoder-counting) into
tmp_path, breaks one file, and runs the CLI in-process."""

from __future__ import annotations

import json
import random
import shutil
import struct
from pathlib import Path

import pytest

from inversionview.cli import run
from inversionview.decoder.store import DecoderLoadError, load_decoder
from inversionview.probed import ModelLoadError, load_probed
from tests.conftest import authors_model_dir

ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
MODEL, DECODER = ARTIFACTS / "counting", ARTIFACTS / "decoder-counting"
EXAMPLE = "Bvvzccvczvvvzvcvc|v:8E"


# ----- corruptions: each takes the file's path and rewrites it --------------------------


def truncated(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def empty(path: Path) -> None:
    path.write_bytes(b"")


def random_bytes(path: Path) -> None:
    path.write_bytes(random.Random(0).randbytes(4096))


def header_past_end(path: Path) -> None:
    """A safetensors header length that claims more bytes than the file holds."""
    data = path.read_bytes()
    path.write_bytes(struct.pack("<Q", len(data) + 1000) + data[8:])


def huge_header(path: Path) -> None:
    """A safetensors header length of 2**63 bytes."""
    path.write_bytes(struct.pack("<Q", 2**63) + path.read_bytes()[8:])


def text(content: str):
    def write(path: Path) -> None:
        path.write_text(content)
    write.__name__ = "text"
    return write


def edit(change):
    """Rewrite a JSON file: ``change(record)`` edits the parsed object in place."""
    def write(path: Path) -> None:
        record = json.loads(path.read_text())
        change(record)
        path.write_text(json.dumps(record))
    return write


def _set(**fields):
    return edit(lambda record: record.update(fields))


def _drop(*keys):
    return edit(lambda record: [record.pop(key) for key in keys])


def _set_config(**fields):
    return edit(lambda record: record["config"].update(fields))


def _drop_config(*keys):
    return edit(lambda record: [record["config"].pop(key) for key in keys])


SAFETENSORS = [("truncated", truncated, "safetensors"), ("empty", empty, "safetensors"),
               ("random-bytes", random_bytes, "safetensors"),
               ("header-past-end", header_past_end, "safetensors"),
               ("huge-header", huge_header, "safetensors")]
JSON_FILE = [("truncated", truncated, "not valid JSON (line"),
             ("empty", empty, "is empty; expected a JSON object"),
             ("random-bytes", random_bytes, "not valid JSON"),
             ("not-json", text("\nmodel: counting\n"), "not valid JSON (line 2 column 1"),
             ("json-list", text("[1, 2, 3]"), "not a JSON object"),
             ("json-string", text('"counting"'), "not a JSON object")]

# (file, case, corruption, a phrase the message must hold)
MODEL_CASES = [("model.safetensors", *case) for case in SAFETENSORS] + [
    ("config.json", *case) for case in JSON_FILE] + [
    ("config.json", "n_embd-a-string", _set(n_embd="wide"), "n_embd"),
    ("config.json", "n_layer-a-float", _set(n_layer=1.5), "n_layer"),
    ("config.json", "vocab_size-negative", _set(vocab_size=-1), "vocab_size"),
    ("config.json", "n_inner-a-string", _set(n_inner="x"), "n_inner"),
    ("config.json", "unknown-activation", _set(activation_function="nope"), "activation_function"),
    ("config.json", "not-gpt2", _set(model_type="llama"), "llama"),
    ("config.json", "empty-object", text("{}"), "vocabulary"),
    ("config.json", "another-width", _set(n_embd=32), "shape"),
    ("config.json", "heads-do-not-divide", _set(n_head=3), "n_head"),
    ("config.json", "another-depth", _set(n_layer=3), "missing weight"),
    ("config.json", "another-task", _set(vocab_size=15), "vocabulary"),
] + [("inversionview.json", *case) for case in JSON_FILE] + [
    ("inversionview.json", "task-a-number", _set(task=3), "task"),
    ("inversionview.json", "unknown-task", _set(task="chess"), "chess"),
    ("inversionview.json", "task-missing", _drop("task"), "task"),
    ("inversionview.json", "kind-decoder", _set(kind="decoder"), "kind"),
]
DECODER_CASES = [("decoder.safetensors", *case) for case in SAFETENSORS] + [
    ("decoder.json", *case) for case in JSON_FILE] + [
    ("decoder.json", "config-a-string", _set(config="big"), "config"),
    ("decoder.json", "config-missing", _drop("config"), "config"),
    ("decoder.json", "d_model-a-string", _set_config(d_model="256"), "d_model"),
    ("decoder.json", "n_heads-zero", _set_config(n_heads=0), "n_heads"),
    ("decoder.json", "unknown-config-field", _set_config(width=3), "width"),
    ("decoder.json", "config-field-missing", _drop_config("activation_dim"), "activation_dim"),
    ("decoder.json", "condition-mode", _set_config(condition_mode="film"), "condition_mode"),
    ("decoder.json", "hash-a-number", _set(probed_weights_sha256=5), "probed_weights_sha256"),
    ("decoder.json", "hash-missing", _drop("probed_weights_sha256"), "probed_weights_sha256"),
    ("decoder.json", "kind-probed-model", _set(kind="probed-model"), "expected 'decoder'"),
    ("decoder.json", "task-missing", _drop("task"), "task"),
    ("decoder.json", "sites-a-string", _set(sites="a1.0"), "sites"),
    ("decoder.json", "another-width", _set_config(d_model=128), "shape"),
    ("decoder.json", "another-depth", _set_config(n_layers=3), "missing weight"),
    ("decoder.json", "reads-another-width", _set_config(activation_dim=32), "activation_dim"),
]


def _ids(cases):
    return [f"{file}-{case}" for file, case, *_ in cases]


def _commands(model: Path, decoder: Path, out: Path) -> dict[str, list[str]]:
    model, decoder = str(model), str(decoder)
    return {
        "query": ["query", model, "--decoder", decoder, "--candidates", "8"],
        "inspect": ["inspect", model],
        "activation": ["activation", model, "--input", EXAMPLE, "--site", "a1.0", "--position", ":"],
        "decoders": ["decoders", model],
        "eval-probed": ["eval-probed", model, "--n", "8"],
        "export-decoder": ["export-decoder", decoder, "--out", str(out / "exported"), "--model", model],
    }


MODEL_COMMANDS = ["query", "inspect", "activation", "decoders", "eval-probed", "export-decoder"]
DECODER_COMMANDS = ["query", "export-decoder"]


def _broken_copy(source: Path, file: str, corrupt, tmp_path: Path) -> Path:
    directory = tmp_path / source.name
    shutil.copytree(source, directory)
    corrupt(directory / file)
    return directory


def _error_line(argv: list[str], capfd) -> str:
    """Run the CLI; check it failed as a user error with one line and no traceback."""
    code = run(argv)
    out, err = capfd.readouterr()
    assert "Traceback" not in out + err
    assert code == 2, err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


# ----- through the CLI -----------------------------------------------------------------


@pytest.mark.parametrize("command", MODEL_COMMANDS)
@pytest.mark.parametrize("file,case,corrupt,says", MODEL_CASES, ids=_ids(MODEL_CASES))
def test_broken_model_file_is_named(command, file, case, corrupt, says, tmp_path, capfd):
    if case == "task-missing" and command == "export-decoder":
        pytest.skip("export-decoder gives the decoder's task, which a manifest may leave out")
    model = _broken_copy(MODEL, file, corrupt, tmp_path)
    line = _error_line(_commands(model, DECODER, tmp_path)[command], capfd)
    assert str(model / file) in line and says in line, line


@pytest.mark.parametrize("command", DECODER_COMMANDS)
@pytest.mark.parametrize("file,case,corrupt,says", DECODER_CASES, ids=_ids(DECODER_CASES))
def test_broken_decoder_file_is_named(command, file, case, corrupt, says, tmp_path, capfd):
    decoder = _broken_copy(DECODER, file, corrupt, tmp_path)
    line = _error_line(_commands(MODEL, decoder, tmp_path)[command], capfd)
    assert str(decoder / file) in line and says in line, line


@pytest.mark.parametrize("command", DECODER_COMMANDS)
def test_decoder_of_another_model_names_both(command, tmp_path, capfd):
    other = ARTIFACTS / "decoder-counting-authors"  # the same task, the authors' weights
    line = _error_line(_commands(MODEL, other, tmp_path)[command], capfd)
    assert str(other) in line and str(MODEL) in line and "other probed weights" in line, line


def test_missing_weights_are_named(tmp_path, capfd):
    model = _broken_copy(MODEL, "model.safetensors", Path.unlink, tmp_path)
    line = _error_line(["inspect", str(model)], capfd)
    assert f"{model} has neither model.safetensors nor pytorch_model.bin" in line
    decoder = _broken_copy(DECODER, "decoder.safetensors", Path.unlink, tmp_path)
    line = _error_line(["query", str(MODEL), "--decoder", str(decoder), "--candidates", "8"], capfd)
    assert f"{decoder / 'decoder.safetensors'} is missing" in line


# ----- the library ---------------------------------------------------------------------


@pytest.mark.parametrize("file,case,corrupt,says", MODEL_CASES, ids=_ids(MODEL_CASES))
def test_load_probed_raises_naming_the_file(file, case, corrupt, says, tmp_path):
    model = _broken_copy(MODEL, file, corrupt, tmp_path)
    with pytest.raises(ModelLoadError) as raised:
        load_probed(model)
    assert str(model / file) in str(raised.value) and says in str(raised.value)
    assert "\n" not in str(raised.value)


@pytest.mark.parametrize("file,case,corrupt,says", DECODER_CASES, ids=_ids(DECODER_CASES))
def test_load_decoder_raises_naming_the_file(file, case, corrupt, says, tmp_path):
    decoder = _broken_copy(DECODER, file, corrupt, tmp_path)
    with pytest.raises(DecoderLoadError) as raised:
        load_decoder(decoder, load_probed(MODEL))
    assert str(decoder / file) in str(raised.value) and says in str(raised.value)
    assert "\n" not in str(raised.value)


def test_messages_say_what_is_expected(tmp_path):
    model = _broken_copy(MODEL, "config.json", text("\n{oops"), tmp_path)
    with pytest.raises(ModelLoadError, match=r"config.json is not valid JSON \(line 2 column 2: "
                                             r".*\); expected a JSON object"):
        load_probed(model)
    (model / "config.json").write_text(json.dumps({**json.loads((MODEL / "config.json").read_text()),
                                                   "n_embd": "wide"}))
    with pytest.raises(ModelLoadError, match=r"config.json: n_embd is 'wide'; expected a positive "
                                             r"integer"):
        load_probed(model)
    shutil.copy(MODEL / "config.json", model / "config.json")
    empty(model / "model.safetensors")
    with pytest.raises(ModelLoadError, match=r"model.safetensors is not a readable safetensors file "
                                             r"\(.*\); expected"):
        load_probed(model)


def test_corrupt_pytorch_checkpoint_is_named(tmp_path):
    model = tmp_path / "hf"
    model.mkdir()
    shutil.copy(MODEL / "config.json", model / "config.json")
    for corrupt in (empty, random_bytes):
        corrupt(model / "pytorch_model.bin")
        with pytest.raises(ModelLoadError, match=rf"{model / 'pytorch_model.bin'} is not a readable "
                                                 r"PyTorch checkpoint"):
            load_probed(model, task="counting")


# ----- MODEL names that are not directories ----------------------------------------------


@pytest.mark.parametrize("task", [[], ["--task", "counting"]])
def test_unknown_name_lists_the_bundled_models_only(task, capfd, no_network):
    line = _error_line(["query", "gpt2", *task], capfd)
    assert "'gpt2' is neither a bundled artifact nor a directory" in line
    assert "addition, counting" in line and "directory" in line
    assert "decoder-" not in line and "connect" not in line and "hub" not in line.lower()
    assert no_network == []


def test_a_decoder_is_not_a_model(tmp_path, capfd):
    line = _error_line(["query", "decoder-counting"], capfd)
    assert "'decoder-counting' is a bundled decoder, not a probed model" in line
    line = _error_line(["inspect", str(DECODER)], capfd)
    assert f"{DECODER} has no config.json" in line and "--decoder" in line


def test_a_file_is_not_a_model_directory(capfd):
    line = _error_line(["inspect", str(MODEL / "config.json")], capfd)
    assert f"{MODEL / 'config.json'} is a file, not a model directory" in line


# ----- the task of a plain HuggingFace directory ------------------------------------------


@pytest.fixture
def authors_counting(tmp_path):
    directory = tmp_path / "authors-counting"
    shutil.copytree(authors_model_dir("counting"), directory)
    return directory


def test_task_is_inferred_for_the_authors_directory(authors_counting, capfd):
    assert load_probed(authors_counting).task.name == "counting"
    code = run(["query", str(authors_counting), "--candidates", "8", "--json"])
    out, err = capfd.readouterr()
    assert code == 0, err
    record = json.loads(out)
    assert record["task"] == "counting" and record["decoder"].endswith("decoder-counting-authors")


def test_a_config_that_fits_no_task_is_named(authors_counting, capfd):
    _set(vocab_size=99)(authors_counting / "config.json")
    line = _error_line(["inspect", str(authors_counting)], capfd)
    assert str(authors_counting / "config.json") in line and "fits no task" in line
    assert "counting has 40 tokens" in line and "addition has 15 tokens" in line


# ----- broken manifests in an artifacts root ------------------------------------------------


def test_broken_artifacts_are_skipped_and_named_when_used(tmp_path, monkeypatch, capfd):
    from inversionview.artifacts import broken_artifacts, list_artifacts

    root = tmp_path / "root"
    for name, manifest, content in [("broken-model", "inversionview.json", "{oops"),
                                    ("listed-decoder", "decoder.json", "[]"),
                                    ("no-kind", "inversionview.json", '{"task": "counting"}'),
                                    ("unreadable", "decoder.json", b"\xff\xfe\x00")]:
        (root / name).mkdir(parents=True)
        write = (root / name / manifest).write_bytes if isinstance(content, bytes) else \
            (root / name / manifest).write_text
        write(content)
    monkeypatch.setenv("INVERSIONVIEW_ARTIFACTS", str(root))
    found = list_artifacts()
    assert "counting" in found and not {"broken-model", "listed-decoder", "no-kind",
                                        "unreadable"} & set(found)
    broken = broken_artifacts()
    assert set(broken) == {"broken-model", "listed-decoder", "no-kind", "unreadable"}
    assert str(root / "broken-model" / "inversionview.json") in broken["broken-model"][1]
    for command in (["models"], ["decoders"], ["query", "--candidates", "8"]):
        assert run(command) == 0
        assert capfd.readouterr().err == ""
    line = _error_line(["query", "broken-model"], capfd)
    assert str(root / "broken-model" / "inversionview.json") in line and "not valid JSON" in line
