"""Every command, fuzzed: hypothesis draws argument lists (valid values mixed with the kinds
of values a tester tried: zero, negative, huge, non-finite, non-ASCII digits, empty, very
long text, directories and special files as outputs, missing or broken paths) and runs them
in-process through ``inversionview.cli.run``, as a user's shell would.

Each case must end within a time bound with status 0, or status 2 and exactly one line on
stderr starting ``error:``; never a traceback, never status 1 (an internal error: a bug).
The runs are derandomized (the same cases every suite run; ``HYPOTHESIS_PROFILE=explore``
draws new ones) and counted in the summary line ``fuzz cases``.
"""

from __future__ import annotations

import os
import shutil
import signal
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from cli_runner import invoke
from fuzz_counter import count_case
from hypothesis import HealthCheck, Phase, given, settings, strategies as st

from inversionview.artifacts import find_artifact
from tests.conftest import AUTHORS_MODELS

CASE_SECONDS = 120  # per case, generous for a busy 2-core machine; a hang is far beyond it

# ----- values -----------------------------------------------------------------------------

BAD_INTS = ["0", "-1", "-3", "99999999999999999999", "2000000", "1.5", "nan", "x", "", "٣", "²",
            "1e3", " 7"]
BAD_FLOATS = ["0", "-1", "inf", "-inf", "nan", "1e309", "1e-320", "x", "", "٣", "101"]
NASTY_TEXT = ["", " ", "x" * 5000, "B" + "a" * 300, "B\x00a", "日本語", "\n", "P", "BPPP",
              "--json", "-1"]


def ints(*valid: int) -> st.SearchStrategy[str]:
    return st.one_of(st.sampled_from([str(v) for v in valid]), st.sampled_from(BAD_INTS),
                     st.integers(-10, 10).map(str))


def floats(*valid: float) -> st.SearchStrategy[str]:
    return st.one_of(st.sampled_from([str(v) for v in valid]), st.sampled_from(BAD_FLOATS),
                     st.floats(allow_nan=True, allow_infinity=True).map(repr))


def texts(*valid: str) -> st.SearchStrategy[str]:
    return st.one_of(st.sampled_from(list(valid)), st.sampled_from(NASTY_TEXT),
                     st.text(max_size=24))


FLAG = st.just(None)  # an on/off option: present or not
SEED = ints(0, 1, 7, 2**63 - 1, 2**63)
THREADS = ints(1, 2, 1025)
MODELS = ["counting", "addition", "gpt2", "", "no/such/dir", "adir", "afile", "broken-model"]
if (AUTHORS_MODELS / "counting" / "config.json").exists():
    MODELS.append(str(AUTHORS_MODELS / "counting"))
MODEL = st.sampled_from(MODELS)
CHEAP_MODEL = st.sampled_from([m for m in MODELS if m != "addition"])  # completeness: 810k inputs
TASK = texts("counting", "addition", "ioi", "factual")
IOI_MODEL = st.sampled_from(["ioi-lm", "counting", "gpt2", "no/such/dir", "adir", "broken-model", ""])
FACTUAL_MODEL = st.sampled_from(["factual-lm", "ioi-lm", "counting", "no/such/dir", "adir", ""])
SITE = texts("a0.0", "a1.0", "x0.pre", "m1", "x1.post", "blocks.0.hook_resid_mid", "a0", "a9.0",
             "a٣.0", "blocks.0.attn.hook_result.9")
POSITION = texts(":", "query", "|", "=", "A1", "0", "3", "-1", "99", "²", "٣")
INPUT = texts("Bvvzccvczvvvzvcvc|v:8E", "B615+861=1476E", "aab|a:2E", "615+861=1476",
              "Baab#|a:2E")
COMPONENT = texts("a1.0@:", "a0.0@query", "x0.post@+", "a0.0@=", "a1.0", "@", "a1.0@:,a0.0@query",
                  "a9.0@:", "a1.0@nowhere")
OUTPUT_FILE = st.sampled_from(["out.html", "plot.png", "plot.svg", "adir", "afile/below.html",
                               "existing.html", "existing.png", "plot.xyz", "/proc/version",
                               "/dev/null", "", "readonly/out.png", "new/dir/out.png",
                               "x" * 300 + ".png"])
OUTPUT_DIR = st.sampled_from(["run", "adir", "afile", "afile/below", "", "readonly/run",
                              "/proc/self", "exported", "aloop", "adangling"])
SOME_PATH = st.sampled_from(["adir", "afile", "no/such/file.jsonl", "broken-model", ""])
# Files read whole: empty, blank, not regular (a device, a FIFO), a symlink loop (issue 31).
TEXT_FILE = st.sampled_from(["text.txt", "empty.txt", "blank.txt", "/dev/zero", "fifo", "loop",
                             "adir", "afile", "no/such/file.txt", ""])
DECODER_DIR = st.sampled_from(["adir", "afile", "no/such/dir", "broken-decoder", "",
                               "DECODER_COUNTING", "DECODER_ADDITION"])


@dataclass
class Command:
    name: str
    positional: st.SearchStrategy[str] | None = None
    options: dict[str, st.SearchStrategy] = field(default_factory=dict)
    # Options every case gives (a value drawn as for the others): what keeps a valid case of
    # a long command within the time bound.
    required: tuple[str, ...] = ()
    # Exit 1 where the command documents it: `reproduce` when a study could not run or no
    # claim was measured (the report is written; the last line of stderr says so).
    refused_after_running: bool = False


QUERY_OPTIONS = {"--task": TASK, "--decoder": DECODER_DIR, "--input": INPUT, "--site": SITE,
                 "--position": POSITION, "--candidates": ints(1, 8, 64),
                 "--seed": SEED, "--epsilon": floats(0.1, 0.5, 100), "--metric": texts("euclidean", "cosine"),
                 "--fixed-position": FLAG, "--threads": THREADS, "--json": FLAG}

COMMANDS = [
    Command("models", None, {"--json": FLAG}),
    Command("eval-probed", MODEL, {"--task": TASK, "--n": ints(1, 50), "--seed": SEED, "--json": FLAG}),
    Command("activation", MODEL, {"--input": INPUT, "--site": SITE, "--position": POSITION,
                                  "--task": TASK, "--json": FLAG}),
    Command("inspect", MODEL, {"--input": INPUT, "--task": TASK, "--seed": SEED, "--json": FLAG}),
    Command("decoders", MODEL, {"--task": TASK, "--json": FLAG}),
    Command("query", MODEL, {**QUERY_OPTIONS, "--temperature": floats(0.5, 1, 2), "--noise": floats(0, 0.1),
                             "--all": FLAG, "--html": OUTPUT_FILE, "--force": FLAG, "--verify": FLAG,
                             "--search": ints(0, 64, 256), "--free": FLAG, "--constrain": FLAG,
                             "--noise-cosine": texts("0.8", "0.75:0.9", "0.9:0.1", "1:1", "x:"),
                             "--ban-rare": ints(1, 5), "--ban-corpus": TEXT_FILE}),
    Command("verify", MODEL, {**QUERY_OPTIONS, "--temperature": floats(0.5, 1), "--noise": floats(0, 0.1),
                              "--per-side": ints(1, 3, 5)}),
    Command("completeness", CHEAP_MODEL, {**QUERY_OPTIONS, "--plot": OUTPUT_FILE, "--force": FLAG,
                                          "--search": ints(0, 64, 256), "--free": FLAG}),
    Command("patch", MODEL, {"--task": TASK, "--components": COMPONENT,
                             "--contrast": texts("random", "flip", "resample:F1,S1", "resample", "x:y"),
                             "--filter": texts("A1==1", "count>3", "A1=", "nope==1", "=="),
                             "--target": texts("count", "A1", "A4", "A5"), "--n": ints(1, 5, 20),
                             "--cumulative": FLAG, "--seed": SEED, "--plot": OUTPUT_FILE,
                             "--pairs": SOME_PATH,
                             "--force": FLAG, "--threads": THREADS, "--json": FLAG}),
    Command("dla", MODEL, {"--task": TASK, "--component": COMPONENT, "--input": INPUT,
                           "--k": ints(1, 3, 40, 41), "--n": ints(0, 1, 20),
                           "--target": texts("count", "A1", "A5"), "--seed": SEED, "--json": FLAG}),
    Command("ablate", MODEL, {"--task": TASK, "--component": COMPONENT, "--n": ints(1, 5, 20),
                              "--seed": SEED, "--threads": THREADS, "--json": FLAG}),
    Command("train-probed", texts("counting", "addition", "sorting"),
            {"--out": OUTPUT_DIR, "--minutes": floats(0.001, 0.002), "--steps": ints(1, 2),
             "--seed": SEED, "--batch-size": ints(2, 8), "--lr": floats(0.001, 0.01),
             "--d-model": ints(8, 16, 7), "--n-heads": ints(1, 2, 3), "--n-layers": ints(1, 2),
             "--objective": texts("lm", "task"), "--threads": THREADS, "--resume": FLAG,
             "--json": FLAG}),
    Command("train-decoder", MODEL, {"--out": OUTPUT_DIR, "--task": TASK,
                                     "--minutes": floats(0.001, 0.002), "--examples": ints(1, 8),
                                     "--preset": texts("fast", "paper"), "--seed": SEED,
                                     "--rebalance": floats(0, 1), "--resume": FLAG,
                                     "--site-weights": texts("a0.0=2", "x1.post=1,*=0", "*=0",
                                                             "m1=1", "a1.0=-1", "=", "a1.0"),
                                     "--threads": THREADS, "--device": texts("auto", "cpu", "cuda", "tpu", "cuda:7"),
                                     "--precision": texts("auto", "fp32", "bf16", "fp8"),
                                     "--positions": texts("uniform", "last", "low-bos-attention"),
                                     "--init-from": SOME_PATH, "--corpus": SOME_PATH,
                                     "--continue-from": DECODER_DIR,
                                     "--eval-every": floats(10, 0), "--checkpoint-every": floats(60, 0),
                                     "--field": texts("text"),
                                     "--max-tokens": ints(1, 32, 5000), "--json": FLAG}),
    Command("train-lm", None, {"--corpus": st.sampled_from(["corpus.txt", "afile", "adir", "aloop",
                                                            "no/such/file.txt", "empty.txt", ""]),
                               "--out": OUTPUT_DIR, "--field": texts("text"),
                               "--init-from": st.sampled_from(["ioi-lm", "adir", "afile", "counting", ""]),
                               "--tokenizer": st.sampled_from(["ioi-lm", "adir", "afile", ""]),
                               "--vocab-size": ints(300, 64, 100000), "--max-tokens": ints(8, 16),
                               "--minutes": floats(0.001), "--steps": ints(1, 2), "--seed": SEED,
                               "--batch-size": ints(2, 4), "--lr": floats(0.001),
                               "--d-model": ints(16, 7), "--n-layers": ints(1, 2),
                               "--n-heads": ints(1, 2, 3), "--fp16": FLAG,
                               "--corpus-licence": texts("public domain"),
                               "--eval-every": floats(10, 0), "--checkpoint-every": floats(60, 0),
                               "--threads": THREADS, "--resume": FLAG, "--force": FLAG,
                               "--json": FLAG},
            required=("--corpus", "--steps")),
    Command("export-decoder", DECODER_DIR, {"--out": OUTPUT_DIR, "--model": MODEL, "--task": TASK,
                                            "--seed": SEED, "--force": FLAG, "--json": FLAG}),
    Command("ioi corpus", None, {"--out": st.sampled_from(["mix.txt", "mix.json", "adir", "afile",
                                                           "existing.html", "readonly/x.txt", ""]),
                                 "--lines": st.sampled_from(["1", "50", "0", "-1", "x", "1e3",
                                                             "99999999999999999999", "٣"]),
                                 "--text": TEXT_FILE, "--seed": SEED, "--force": FLAG,
                                 "--json": FLAG}),
    Command("ioi eval", IOI_MODEL, {"--n": ints(1, 8), "--split": texts("eval", "train", "all"),
                                    "--seed": SEED, "--threads": THREADS, "--json": FLAG}),
    Command("ioi heads", IOI_MODEL, {"--n": ints(1, 4), "--seed": SEED, "--plot": OUTPUT_FILE,
                                     "--patching": texts("activation", "attribution"),
                                     "--force": FLAG, "--threads": THREADS, "--json": FLAG}),
    Command("ioi read", IOI_MODEL, {"--decoder": st.sampled_from(["ioi-decoder", "adir",
                                                                  "DECODER_COUNTING", ""]),
                                    "--heads": texts("a0.0", "a1.1,a0.2", "x0.pre", "a9.0", ","),
                                    "--queries": ints(1, 2), "--candidates": ints(1, 8),
                                    "--dla-n": ints(1, 5), "--n": ints(1, 3),
                                    "--edit-n": ints(1, 3), "--seed": SEED,
                                    "--threads": THREADS, "--json": FLAG}),
    Command("factual corpus", None, {"--out": st.sampled_from(["facts.txt", "facts.json", "adir",
                                                                "afile", "readonly/x.txt", ""]),
                                     "--lines": st.sampled_from(["1", "40", "0", "x", "1e3"]),
                                     "--text": TEXT_FILE, "--seed": SEED, "--force": FLAG,
                                     "--json": FLAG}),
    Command("factual eval", FACTUAL_MODEL, {"--split": texts("eval", "train", "all"),
                                            "--relation": texts("capital", "region", "birthplace"),
                                            "--threads": THREADS, "--json": FLAG}),
    Command("factual heads", FACTUAL_MODEL, {"--split": texts("eval", "train"),
                                             "--relation": texts("capital", "language", ""),
                                             "--threshold": floats(0.05, 0.5, 1),
                                             "--keep": ints(1, 3), "--plot": OUTPUT_FILE,
                                             "--force": FLAG, "--threads": THREADS, "--json": FLAG}),
    Command("factual read", FACTUAL_MODEL, {"--decoder": st.sampled_from(["factual-decoder", "adir",
                                                                          "DECODER_COUNTING", ""]),
                                            "--heads": texts("a1.0", "a1.1,a0.2", "m0", "a9.0", ","),
                                            "--relation": texts("capital", "country", "x"),
                                            "--queries": ints(1, 2), "--candidates": ints(1, 8),
                                            "--threshold": floats(0.05, 0.5), "--keep": ints(1, 2),
                                            "--seed": SEED, "--threads": THREADS, "--json": FLAG}),
    Command("summarize", MODEL, {"--task": TASK, "--decoder": DECODER_DIR,
                                 "--sites": texts("a0.0", "x0.pre,a1.0", "a9.0", ",", "a0.0,,m1"),
                                 "--positions": texts(":", "query,:", "A1", "=", ",", "END"),
                                 "--queries": ints(1, 2), "--candidates": ints(1, 8),
                                 "--corpus": SOME_PATH,
                                 "--epsilon": floats(0.1, 0.5), "--metric": texts("euclidean", "cosine"),
                                 "--seed": SEED, "--out": OUTPUT_DIR, "--force": FLAG,
                                 "--threads": THREADS, "--json": FLAG},
            required=("--sites", "--queries", "--candidates")),
    Command("interpret", MODEL, {"--task": TASK, "--decoder": DECODER_DIR, "--site": SITE,
                                 "--position": POSITION, "--queries": ints(1, 2),
                                 "--candidates": ints(1, 8), "--epsilon": floats(0.1, 0.5),
                                 "--corpus": SOME_PATH,
                                 "--seed": SEED, "--ask": FLAG, "--timeout": floats(1, 0.5),
                                 "--out": OUTPUT_DIR, "--force": FLAG, "--threads": THREADS,
                                 "--json": FLAG},
            required=("--queries", "--candidates")),
    Command("reproduce", None, {"--studies": texts("ioi", "factual", "ioi,factual", "bogus", ","),
                                "--ioi-model": IOI_MODEL, "--factual-model": FACTUAL_MODEL,
                                "--authors": SOME_PATH, "--quick": FLAG, "--out": OUTPUT_DIR,
                                "--seed": SEED, "--seeds": ints(0, 1, 2, 51), "--force": FLAG,
                                "--threads": THREADS,
                                "--json": FLAG},
            required=("--studies", "--ioi-model", "--factual-model"),
            refused_after_running=True),
    Command("serve", st.lists(MODEL, max_size=2).map(lambda names: " ".join(names)),
            {"--task": TASK, "--decoder": texts("counting=DECODER_COUNTING", "x=adir", "=", "counting"),
             "--host": texts("127.0.0.1", "localhost", "0.0.0.0", "::1", "not a host"),
             "--port": ints(8000, 1, 65535, 65536, 99999), "--threads": THREADS}),
]


@st.composite
def command_lines(draw, command: Command) -> list[str]:
    argv = command.name.split(" ")  # "ioi eval": a command group and its command
    if command.positional is not None and draw(st.booleans()):
        value = draw(command.positional)
        argv += value.split(" ") if command.name == "serve" and value else [value]
    names = draw(st.lists(st.sampled_from(sorted(command.options)), unique=True,
                          max_size=len(command.options)))
    names = [*command.required, *(name for name in names if name not in command.required)]
    for name in names:
        argv.append(name)
        value = draw(command.options[name])
        if value is not None:
            argv.append(value)
    if draw(st.integers(0, 19)) == 0:  # now and then something the command does not take
        argv.insert(draw(st.integers(1, len(argv))), draw(st.sampled_from(
            ["--bogus", "extra", "-x", "--json=1", "--", "--help"])))
    return argv


# ----- the sandbox the cases run in -----------------------------------------------------------


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory):
    """A working directory with the paths the values name: a directory, a file, files that
    exist, a read-only directory, a loop of links and a dangling link, broken model and
    decoder directories."""
    root = tmp_path_factory.mktemp("fuzz")
    (root / "adir").mkdir()
    (root / "afile").write_text("a file\n")
    (root / "corpus.txt").write_text("".join(f"And the word {i} was good, and it was so.\n"
                                             for i in range(200)))
    (root / "empty.txt").write_text("")
    (root / "aloop").symlink_to("aloop")
    (root / "adangling").symlink_to("nowhere")
    (root / "existing.html").write_text("<p>keep me</p>\n")
    (root / "existing.png").write_bytes(b"\x89PNG keep me")
    (root / "readonly").mkdir()
    (root / "text.txt").write_text("In the beginning was the word.\nAnd the word was good.\n")
    (root / "empty.txt").write_text("")
    (root / "blank.txt").write_text("\n  \n")
    os.mkfifo(root / "fifo")
    (root / "loop").symlink_to(root / "loop")
    broken_model = root / "broken-model"
    shutil.copytree(find_artifact("counting"), broken_model)
    (broken_model / "model.safetensors").write_bytes(b"\x00" * 5)
    broken_decoder = root / "broken-decoder"
    shutil.copytree(find_artifact("decoder-counting"), broken_decoder)
    (broken_decoder / "decoder.json").write_text("{not json")
    from tiny_lms import make_factual_lm, make_ioi_lm

    from inversionview.decoder.train import DecoderTrainingConfig, train_decoder
    from inversionview.probed import load_probed

    ioi = make_ioi_lm(root / "ioi-lm")
    train_decoder(load_probed(ioi), DecoderTrainingConfig(out=root / "ioi-decoder", examples=32,
                                                          eval_every_seconds=10_000,
                                               eval_queries_per_site=1, eval_samples_per_query=2),
                  show_progress=False)
    factual = make_factual_lm(root / "factual-lm")
    train_decoder(load_probed(factual), DecoderTrainingConfig(
        out=root / "factual-decoder", examples=32, eval_every_seconds=10_000,
        eval_queries_per_site=1, eval_samples_per_query=2), show_progress=False)
    (root / "readonly").chmod(0o555)
    yield root
    (root / "readonly").chmod(0o755)


def _substitute(argv: list[str]) -> list[str]:
    names = {"DECODER_COUNTING": str(find_artifact("decoder-counting")),
             "DECODER_ADDITION": str(find_artifact("decoder-addition"))}
    for key, value in names.items():
        argv = [arg.replace(key, value) for arg in argv]
    return argv


class CaseTimeout(BaseException):
    """Raised in the case by the alarm (a BaseException, so the CLI cannot report it away)."""


@contextmanager
def time_bound(seconds: float):
    def expire(signum, frame):
        raise CaseTimeout(f"the case ran for more than {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@pytest.fixture(scope="module")
def no_server(monkeypatch_module):
    """`serve` with valid arguments would block in uvicorn.run: record the call instead
    (the server itself is tested live in tests/web)."""
    import uvicorn

    calls = []
    monkeypatch_module.setattr(uvicorn, "run", lambda app, **kwargs: calls.append(kwargs))
    return calls


@pytest.fixture(scope="module")
def monkeypatch_module():
    patch = pytest.MonkeyPatch()
    yield patch
    patch.undo()


def run_case(argv: list[str], sandbox: Path, exit_one: bool = False) -> None:
    argv = _substitute(argv)
    threads = torch.get_num_threads()
    cwd = os.getcwd()
    os.chdir(sandbox)
    started = time.perf_counter()
    try:
        with time_bound(CASE_SECONDS):
            result = invoke(argv)
    finally:
        os.chdir(cwd)
        torch.set_num_threads(threads)  # --threads must not leak into the next case
    count_case("CLI")
    count_case(f"CLI exit {result.exit_code}")  # how many ran through, how many were refused
    seconds = time.perf_counter() - started
    shown = " ".join(repr(a) if (not a or " " in a) else a for a in argv)[:300]
    assert "Traceback" not in result.output, f"{shown}\n{result.output[-2000:]}"
    allowed = (0, 1, 2) if exit_one else (0, 2)
    assert result.exit_code in allowed, f"{shown}: exit {result.exit_code}\n{result.stderr[-2000:]}"
    if result.exit_code == 1:
        last = result.stderr.rstrip("\n").split("\n")[-1]
        assert last.startswith(f"{argv[0]}: ") and "see the report" in last, f"{shown}\n{last}"
    if result.exit_code == 2:
        lines = result.stderr.rstrip("\n").split("\n")
        assert len(lines) == 1 and lines[0].startswith("error: "), f"{shown}\n{result.stderr[-2000:]}"
        assert len(lines[0]) < 1500, f"{shown}: a {len(lines[0])}-character error"
    assert seconds < CASE_SECONDS


# Cases per command: the cheap ones get more. Together about 750 per suite run.
BUDGET = {"models": 20, "eval-probed": 50, "activation": 70, "inspect": 50, "decoders": 40,
          "query": 90, "verify": 50, "completeness": 40, "patch": 60, "dla": 60, "ablate": 50,
          "train-probed": 50, "train-decoder": 40, "train-lm": 30, "export-decoder": 40, "serve": 50,
          "ioi corpus": 20, "ioi eval": 30, "ioi heads": 20, "ioi read": 20,
          "factual corpus": 15, "factual eval": 20, "factual heads": 20, "factual read": 15,
          "summarize": 30, "interpret": 25, "reproduce": 20}


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: c.name)
def test_every_command_fuzzed(command: Command, sandbox, no_server):
    assert set(BUDGET) == {c.name for c in COMMANDS}

    # No shrinking: a failing case is reported as drawn (shrinking a case that loads a
    # model can take many minutes); derandomized, so the same cases run every time.
    @settings(max_examples=BUDGET[command.name], deadline=None, database=None,
              derandomize=os.environ.get("HYPOTHESIS_PROFILE") != "explore",
              phases=(Phase.explicit, Phase.generate), suppress_health_check=list(HealthCheck))
    @given(command_lines(command))
    def case(argv):
        run_case(argv, sandbox, command.refused_after_running)

    case()
