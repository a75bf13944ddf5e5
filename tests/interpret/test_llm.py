"""The optional LLM reading against a real HTTP server started here that answers in the
OpenAI chat-completions format (the one service that cannot run here is the LLM itself):
the prompt, the request, and every way the endpoint can fail."""

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from cli_runner import invoke

from inversionview.interpret.llm import (ENV_KEY, ENV_MODEL, ENV_URL, MAX_ANSWER_BYTES, Endpoint,
                                         LLMError, ask, build_messages, parse_completion,
                                         tagged_tokens)
from inversionview.tasks import get_task


class FakeLLM:
    """A chat-completions server: ``mode`` says how it answers the next requests."""

    def __init__(self):
        self.mode, self.requests = "ok", []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.requests.append({"path": self.path, "body": body,
                                       "authorization": self.headers.get("Authorization")})
                mode = outer.mode
                if mode in BROKEN_ANSWERS:
                    return self._send_raw(BROKEN_ANSWERS[mode])
                if mode.startswith("drip"):
                    return self._drip(mode)
                if mode == "slow":
                    time.sleep(3)
                if mode == "error":
                    return self._send(500, b'{"error": {"message": "the model is overloaded"}}')
                if mode == "unauthorized":
                    return self._send(401, b'{"error": {"message": "bad key"}}')
                if mode == "garbage":
                    return self._send(200, b"<html>not json</html>")
                message = {"role": "assistant", "content": "It encodes the count."}
                finish = "stop"
                if mode == "refusal":
                    message = {"role": "assistant", "content": None, "refusal": "I cannot help."}
                if mode == "empty":
                    message = {"role": "assistant", "content": "  "}
                reply = {"id": "x", "object": "chat.completion", "model": body["model"],
                         "choices": [{"index": 0, "message": message, "finish_reason": finish}],
                         "usage": {"prompt_tokens": 10, "completion_tokens": 5}}
                self._send(200, json.dumps(reply).encode())

            def _send_raw(self, answer):
                self.wfile.write(answer)

            def _drip(self, mode):
                """One byte every 0.5 s for 10 s: of the status line, or of a body after
                prompt headers."""
                answer = b"HTTP/1.1 200 OK\r\nContent-Length: 20\r\n\r\n" + b" " * 20
                if mode == "drip body":
                    self.wfile.write(answer[:-20])
                    answer = answer[-20:]
                try:
                    for byte in answer[:20]:
                        self.wfile.write(bytes([byte]))
                        time.sleep(0.5)
                except OSError:  # the client gave up
                    pass

            def _send(self, status, payload):
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,),
                                       daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def _answer(head: bytes, body: bytes = b"") -> bytes:
    return b"HTTP/1.1 200 OK\r\n" + head + b"\r\n" + body


# Answers no HTTP library should take for a chat completion: written to the socket as they are.
BROKEN_ANSWERS = {
    "bad status line": b"HTTP/1.1 two hundred OK\r\n\r\n",
    "short body": _answer(b"Content-Length: 1000\r\n", b'{"choices":'),  # 11 of 1,000 bytes
    "bad chunk size": _answer(b"Transfer-Encoding: chunked\r\n", b"zz\r\nabc\r\n0\r\n\r\n"),
    "cut chunk": _answer(b"Transfer-Encoding: chunked\r\n", b"100\r\nabc"),
    "long header line": _answer(b"X-Long: " + b"a" * 70_000 + b"\r\n"),
    "150 headers": _answer(b"".join(b"X-%d: a\r\n" % number for number in range(150))),
    "deep json": _answer(b"Content-Length: 100000\r\n", b"[" * 100_000),
    "huge body": _answer(b"", b" " * (MAX_ANSWER_BYTES + 1)),  # read until the server closes
    "redirect": b"HTTP/1.1 307 Temporary Redirect\r\nLocation: ftp://elsewhere/x\r\n"
                b"Content-Length: 0\r\n\r\n",
}


@pytest.fixture
def llm():
    server = FakeLLM()
    yield server
    server.close()


def test_ask_sends_the_chat_request_and_reads_the_answer(llm):
    messages = [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}]
    reply = ask(Endpoint(llm.url, "some-model", "secret"), messages)
    assert reply["answer"] == "It encodes the count." and reply["model"] == "some-model"
    request = llm.requests[-1]
    assert request["path"] == "/v1/chat/completions"
    assert request["body"]["messages"] == messages and request["body"]["temperature"] == 0.0
    assert request["authorization"] == "Bearer secret"


@pytest.mark.parametrize("mode, message", [
    ("error", "HTTP 500.*overloaded"), ("unauthorized", "HTTP 401"),
    ("garbage", "not a chat completion"), ("refusal", "declined to answer: .I cannot help"),
    ("empty", "no text")])
def test_every_failure_is_one_clear_error(llm, mode, message):
    llm.mode = mode
    with pytest.raises(LLMError, match=message):
        ask(Endpoint(llm.url, "m"), [{"role": "user", "content": "u"}])


def test_a_slow_endpoint_times_out(llm):
    llm.mode = "slow"
    with pytest.raises(LLMError, match="did not answer within 0.5 s"):
        ask(Endpoint(llm.url, "m", timeout=0.5), [{"role": "user", "content": "u"}])


@pytest.mark.parametrize("mode, message", [
    ("bad status line", "broken HTTP answer: the status line 'HTTP/1.1 two hundred OK"),
    ("short body", "broken HTTP answer: its body broke off after 11 bytes, of 1,000 announced"),
    ("bad chunk size", "broken HTTP answer: its body broke off after 0 bytes .a chunk"),
    ("cut chunk", "broken HTTP answer: its body broke off after 0 bytes .a chunk"),
    ("long header line", "broken HTTP answer: got more than 65536 bytes"),
    ("150 headers", "broken HTTP answer: got more than 100 headers"),
    ("deep json", "JSON nested too deeply to read"),
    ("huge body", "answered more than 4,194,304 bytes"),
    ("redirect", "redirects to 'ftp://elsewhere/x' \\(HTTP 307\\)")])
def test_a_broken_http_answer_is_one_clear_error(llm, mode, message):
    llm.mode = mode
    with pytest.raises(LLMError, match=message) as error:
        ask(Endpoint(llm.url, "m", timeout=10), [{"role": "user", "content": "u"}])
    assert str(error.value).startswith(f"the LLM endpoint (m at {llm.url})")


@pytest.mark.parametrize("mode", ["drip status line", "drip body"])
def test_the_timeout_bounds_the_whole_answer(llm, mode):
    """A byte every 0.5 s for 10 s: each read is quick, the whole answer is not."""
    llm.mode = mode
    start = time.monotonic()
    with pytest.raises(LLMError, match="did not answer within 1 s"):
        ask(Endpoint(llm.url, "m", timeout=1), [{"role": "user", "content": "u"}])
    assert time.monotonic() - start < 2


def test_an_unreachable_endpoint():
    with pytest.raises(LLMError, match="cannot reach the LLM endpoint"):
        ask(Endpoint("http://127.0.0.1:9/v1", "m", timeout=2), [{"role": "user", "content": "u"}])


def test_parse_completion_refuses_what_is_not_one():
    for raw in (b"[]", b'{"choices": []}', b'{"choices": [{"message": 3}]}', b"\xff"):
        with pytest.raises(LLMError):
            parse_completion(raw)


def test_endpoint_from_the_environment(monkeypatch):
    monkeypatch.delenv(ENV_URL, raising=False)
    monkeypatch.delenv(ENV_MODEL, raising=False)
    with pytest.raises(LLMError, match=f"set {ENV_URL} and {ENV_MODEL}"):
        Endpoint.from_environment()
    monkeypatch.setenv(ENV_URL, "ftp://x")
    monkeypatch.setenv(ENV_MODEL, "m")
    with pytest.raises(LLMError, match="http:// or https://"):
        Endpoint.from_environment()
    monkeypatch.setenv(ENV_URL, "http://localhost:8000/v1/")
    monkeypatch.setenv(ENV_KEY, "k")
    endpoint = Endpoint.from_environment(timeout=5)
    assert (endpoint.url, endpoint.model, endpoint.key, endpoint.timeout) == (
        "http://localhost:8000/v1", "m", "k", 5)


@pytest.mark.parametrize("url, message", [
    ("http://127.0.0.1:abc/v1", "Port could not be cast to integer value as 'abc'"),
    ("http://127.0.0.1:70000/v1", "Port out of range"),
    ("http://127.0.0.1:0/v1", "port 0"),
    ("http://127.0.0.1:8000/my v1", "has ' ' at character 25"),
    ("http://127.0.0.1:8000/v1\tx", "has '\\\\t' at character 25"),
    ("http://hôst/v1", "has 'ô' at character 9.*punycode"),
    ("http://[::1", "Invalid IPv6 URL"),
    ("http://:8000/v1", "has no host"),
    ("http://a..b/v1", "host name that cannot be looked up"),
    ("http://user:secret@host/v1", f"user name or password.*{ENV_KEY}"),
    ("http://host/v1?key=x", "query or fragment")])
def test_an_unusable_url_is_refused_before_any_request(monkeypatch, no_network, url, message):
    monkeypatch.setenv(ENV_URL, url)
    monkeypatch.setenv(ENV_MODEL, "m")
    monkeypatch.delenv(ENV_KEY, raising=False)
    with pytest.raises(LLMError, match=f"^{ENV_URL} .*{message}"):
        Endpoint.from_environment()
    with pytest.raises(LLMError, match=message):
        Endpoint(url, "m")
    assert not no_network


@pytest.mark.parametrize("key, message", [
    ("secret\nkey", "a newline at character 7 of 10"),
    ("secret\x1bkey", "the character U\\+001B at character 7"),
    ("sécret", "the character U\\+00E9 at character 2")])
def test_an_unusable_key_is_refused_and_not_shown(monkeypatch, key, message):
    monkeypatch.setenv(ENV_URL, "http://127.0.0.1:8000/v1")
    monkeypatch.setenv(ENV_MODEL, "m")
    monkeypatch.setenv(ENV_KEY, key)
    with pytest.raises(LLMError, match=f"^{ENV_KEY} has {message}.*printable ASCII") as error:
        Endpoint.from_environment()
    assert "secret" not in str(error.value) and "cret" not in str(error.value)
    monkeypatch.setenv(ENV_KEY, "  secret-key\n")  # the whitespace around a key is not part of it
    assert Endpoint.from_environment().key == "secret-key"


def test_addition_samples_are_cut_at_their_position_and_tagged_by_place():
    task = get_task("addition")
    text = "B615+861=1476E"
    tokens = task.text_tokens(text)
    assert tagged_tokens(task, text, tokens, 8) == "6(F1) 1(F2) 5(F3) + 8(S1) 6(S2) 1(S3) [=]"
    assert tagged_tokens(task, text, tokens, 2) == "6(F1) [1(F2)]"


def test_the_prompt_has_the_task_the_queries_and_their_in_epsilon_samples():
    from inversionview.preimage.result import QueryInput, Sample

    task = get_task("counting")

    def sample(text, inside):
        return Sample(text, task.text_tokens(text), 0.0 if inside else 1.0, 8, ":", inside, True,
                      True, "", task.attributes(text), 1, [])

    class Result:
        site, position_label, position = "a1.0", ":", 8

        def __init__(self, text, samples):
            self.query = QueryInput(text, task.text_tokens(text), task.attributes(text), True, "")
            self.samples = samples

    results = [Result("Baabbc|a:2E", [sample("Bccddb|c:2E", True), sample("Baaabc|a:3E", False)])
               for _ in range(5)]
    system, user = build_messages(task, results)
    assert system["role"] == "system" and "counting task" in system["content"]
    assert user["content"].count("Example ") == 5
    assert "c c d d b | c(query) [:]" in user["content"]  # the in-ε sample, cut at ':'
    assert "a a a b c" not in user["content"]  # the out-of-ε one is not shown


def test_interpret_shows_the_prompt_and_sends_nothing_without_ask(llm, monkeypatch, tmp_path):
    monkeypatch.setenv(ENV_URL, llm.url)
    monkeypatch.setenv(ENV_MODEL, "m")
    result = invoke(["interpret", "counting", "--queries", "2", "--candidates", "16",
                     "--out", str(tmp_path / "run"), "--json"])
    assert result.exit_code == 0, result.stderr
    record = json.loads(result.stdout)
    assert record["answer"] is None and record["llm"] is None and not llm.requests
    assert record["summary"]["queries"] == 2 and len(record["messages"]) == 2
    stored = json.loads((tmp_path / "run" / "interpretation.json").read_text())
    assert stored["messages"] == record["messages"]


def test_interpret_ask_stores_the_answer_beside_the_summary(llm, monkeypatch, tmp_path):
    monkeypatch.setenv(ENV_URL, llm.url)
    monkeypatch.setenv(ENV_MODEL, "m")
    result = invoke(["interpret", "counting", "--queries", "2", "--candidates", "16", "--ask",
                     "--out", str(tmp_path / "run")])
    assert result.exit_code == 0, result.stderr
    assert "It encodes the count." in result.stdout
    stored = json.loads((tmp_path / "run" / "interpretation.json").read_text())
    assert stored["answer"] == "It encodes the count." and stored["llm"]["model"] == "m"
    assert stored["summary"]["site"] == "a1.0" and len(llm.requests) == 1


def test_interpret_ask_failure_loses_nothing(llm, monkeypatch, tmp_path):
    monkeypatch.setenv(ENV_URL, llm.url)
    monkeypatch.setenv(ENV_MODEL, "m")
    llm.mode = "error"
    result = invoke(["interpret", "counting", "--queries", "2", "--candidates", "16", "--ask",
                     "--out", str(tmp_path / "run")])
    assert result.exit_code == 2 and result.stderr.startswith("error: ")
    assert "HTTP 500" in result.stderr and "interpretation.json" in result.stderr
    assert "Traceback" not in result.output
    stored = json.loads((tmp_path / "run" / "interpretation.json").read_text())
    assert stored["answer"] is None and stored["summary"]["queries"] == 2 and stored["messages"]


@pytest.mark.parametrize("variable, value, message", [
    (ENV_URL, "http://127.0.0.1:abc/v1", "Port could not be cast"),
    (ENV_URL, "http://[::1", "Invalid IPv6 URL"),
    (ENV_KEY, "secret\nkey", "a newline")])
def test_interpret_ask_with_an_unusable_endpoint_is_one_line(monkeypatch, variable, value,
                                                             message):
    monkeypatch.setenv(ENV_URL, "http://127.0.0.1:8000/v1")
    monkeypatch.setenv(ENV_MODEL, "m")
    monkeypatch.setenv(variable, value)
    result = invoke(["interpret", "counting", "--ask", "--threads", "1"])
    assert result.exit_code == 2 and result.stderr.startswith(f"error: {variable} "), result.output
    assert message in result.stderr and result.stderr.count("\n") == 1
    assert "Traceback" not in result.output and "secret" not in result.output


@pytest.mark.parametrize("mode, message", [
    ("bad status line", "broken HTTP answer"), ("short body", "broke off after 11 bytes"),
    ("deep json", "nested too deeply"), ("drip body", "did not answer within 1 s")])
def test_interpret_ask_with_a_broken_endpoint_is_one_line(llm, monkeypatch, mode, message):
    monkeypatch.setenv(ENV_URL, llm.url)
    monkeypatch.setenv(ENV_MODEL, "m")
    llm.mode = mode
    start = time.monotonic()
    result = invoke(["interpret", "counting", "--queries", "2", "--candidates", "16", "--ask",
                     "--timeout", "1", "--threads", "1"])
    assert result.exit_code == 2 and result.stderr.startswith("error: "), result.output
    assert message in result.stderr and result.stderr.count("\n") == 1
    assert "Traceback" not in result.output and "this is a bug" not in result.output
    assert time.monotonic() - start < 6  # the drip goes on for 10 s


def test_interpret_ask_without_an_endpoint_says_what_to_set(monkeypatch):
    monkeypatch.delenv(ENV_URL, raising=False)
    result = invoke(["interpret", "counting", "--ask"])
    assert result.exit_code == 2 and ENV_URL in result.stderr


def test_the_notebook_interprets_as_the_command_does(llm, monkeypatch):
    from inversionview import InversionView

    monkeypatch.setenv(ENV_URL, llm.url)
    monkeypatch.setenv(ENV_MODEL, "m")
    command = json.loads(invoke(["interpret", "counting", "--queries", "2", "--candidates", "16",
                                 "--json"]).stdout)
    assert not llm.requests and command["answer"] is None
    interpretation = InversionView("counting").interpret(queries=2, candidates=16, ask=True)
    record = interpretation.to_record()
    assert record["summary"] == command["summary"] and record["messages"] == command["messages"]
    assert record["queries"] == command["queries"] and record["site"] == command["site"]
    assert interpretation.answer == "It encodes the count." and len(llm.requests) == 1
    assert record["llm"]["model"] == "m"


@pytest.mark.parametrize("position", ["bogus", "60"])
def test_interpret_at_a_position_no_input_has_is_one_line(position):
    result = invoke(["interpret", "counting", "--position", position, "--queries", "2",
                     "--candidates", "16"])
    assert result.exit_code == 2 and result.stderr.startswith("error: "), result.output
    assert "position" in result.stderr and "Traceback" not in result.output
