"""The paper's automated interpretation (method.md §11), optional: an LLM reads in-ε samples
and says what the activation encodes. Offline by default: the prompt is built here and shown;
it is sent only when the user asks (``interpret --ask``), to an OpenAI-compatible chat
endpoint the user runs or has, named by the environment:

    INVERSIONVIEW_LLM_URL    base URL, e.g. http://localhost:8000/v1 (POST {URL}/chat/completions)
    INVERSIONVIEW_LLM_MODEL  the model name the endpoint expects
    INVERSIONVIEW_LLM_KEY    sent as "Authorization: Bearer KEY" (optional)

The prompt follows the paper's: the task's description (digits tagged by place and carries
defined for addition), then 5 queries, each with up to 20 in-ε samples cut after their best
position, the query position marked; then the request for a per-example analysis and a
summary. The answer is stored beside the deterministic summary (``interpret/summary.py``) of
the same queries, so the two can be compared. The paper found such answers informative but
inconsistent between runs; the summary is the reproducible reading.
"""

from __future__ import annotations

import http.client
import io
import json
import os
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Any

from inversionview import options
from inversionview.errors import UserError, echo

ENV_URL, ENV_MODEL, ENV_KEY = "INVERSIONVIEW_LLM_URL", "INVERSIONVIEW_LLM_MODEL", "INVERSIONVIEW_LLM_KEY"
SAMPLES_PER_QUERY = 20


class LLMError(UserError):
    """The endpoint could not be reached or did not give a usable answer."""

    status_code = 502


@dataclass(frozen=True)
class Endpoint:
    url: str  # base URL; the request goes to {url}/chat/completions
    model: str
    key: str | None = None
    timeout: float = 120.0  # seconds for the whole request: connecting, sending, the answer

    def __post_init__(self):
        check_url(self.url, "the LLM endpoint's URL")
        if self.key is not None:
            check_key(self.key, "the LLM endpoint's key")
        options.LLM_TIMEOUT.check(self.timeout)

    @classmethod
    def from_environment(cls, timeout: float = 120.0) -> "Endpoint":
        url, model = os.environ.get(ENV_URL, "").strip(), os.environ.get(ENV_MODEL, "").strip()
        missing = [name for name, value in ((ENV_URL, url), (ENV_MODEL, model)) if not value]
        if missing:
            raise LLMError(f"set {' and '.join(missing)} to ask an LLM (an OpenAI-compatible chat "
                           f"endpoint, e.g. {ENV_URL}=http://localhost:8000/v1); without --ask "
                           "the prompt is only shown")
        key = os.environ.get(ENV_KEY, "").strip() or None
        if key is not None:
            check_key(key, ENV_KEY)
        return cls(check_url(url, ENV_URL), model, key, timeout)

    def describe(self) -> str:
        return f"{self.model} at {self.url}"


URL_ALLOWED = "an http:// or https:// base URL such as http://localhost:8000/v1"


def check_url(url: str, name: str) -> str:
    """``url`` without its trailing slash, or an LLMError naming ``name`` that says what is
    wrong: the scheme is http or https, there is a host, the port (if any) is a number from 1
    to 65,535, and the text is printable ASCII without spaces, user name, query or fragment
    (what a request line can carry; {url}/chat/completions must still be the endpoint)."""
    unusable = next((index for index, char in enumerate(url) if not "!" <= char <= "~"), None)
    if unusable is not None:
        raise LLMError(f"{name} has {echo(url[unusable])} at character {unusable + 1} "
                       f"({echo(url)}); it must be {URL_ALLOWED}, in printable ASCII without "
                       "spaces (percent-encode the path, give the host in punycode)")
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError as error:  # "Invalid IPv6 URL", "Port could not be cast to integer"
        raise LLMError(f"{name} is not a URL that can be used ({error}): {echo(url)}; it must "
                       f"be {URL_ALLOWED}, the port a number from 1 to 65535") from None
    if parts.scheme.lower() not in ("http", "https"):
        raise LLMError(f"{name} must be an http:// or https:// URL, not {echo(url)}")
    if parts.username is not None or parts.password is not None:
        raise LLMError(f"{name} has a user name or password in it ({echo(parts.netloc)}); "
                       f"give the key in {ENV_KEY} instead")
    if not parts.hostname:
        raise LLMError(f"{name} has no host: {echo(url)}; it must be {URL_ALLOWED}")
    try:
        parts.hostname.encode("idna")  # what the name lookup does; a label is 1-63 characters
    except UnicodeError:
        raise LLMError(f"{name} has a host name that cannot be looked up "
                       f"({echo(parts.hostname)}): each dot-separated part must be 1 to 63 "
                       "characters") from None
    if port == 0:
        raise LLMError(f"{name} has port 0 ({echo(url)}); the port must be a number from 1 "
                       "to 65535")
    if parts.query or parts.fragment:
        raise LLMError(f"{name} has a query or fragment ({echo(url)}); give only the base "
                       f"URL: the request goes to {{URL}}/chat/completions")
    return url.rstrip("/")


def check_key(key: str, name: str) -> str:
    """``key``, or an LLMError naming ``name`` when it cannot go in an HTTP header: a key is
    printable ASCII (no newline or other control character). The key itself is not echoed."""
    for index, char in enumerate(key):
        if not " " <= char <= "~":
            what = {"\n": "a newline", "\r": "a carriage return", "\t": "a tab"}.get(
                char, f"the character U+{ord(char):04X}")
            raise LLMError(f"{name} has {what} at character {index + 1} of {len(key)}; a key "
                           "is printable ASCII text without control characters, sent as "
                           "'Authorization: Bearer KEY' (the key is not shown)")
    return key


# ----- the prompt -------------------------------------------------------------------------

TASK_DESCRIPTIONS = {
    "counting": (
        "Inputs of the counting task look like 'Baabbc|b:2E': B starts the input, then a context "
        "of letters (three distinct letters), '|', the query letter, ':', the number of times "
        "the query letter occurs in the context (the answer, 1-9), and E. The model reads the "
        "input left to right and predicts the count after ':'."),
    "addition": (
        "Inputs of the addition task look like 'B615+861=1476E': two 3-digit operands and their "
        "sum. Digits are tagged by place: F1 F2 F3 are the first operand's hundreds, tens and "
        "ones, S1 S2 S3 the second's, A1 A2 A3 (A4) the answer's digits from the left. C2 is "
        "the carry from the tens (F2+S2 >= 10) and C3 the carry from the ones (F3+S3 >= 10). "
        "The model predicts the answer digit by digit after '='."),
    "ioi": (
        "Inputs are indirect-object-identification prompts: two names are introduced (the "
        "indirect object IO and the subject S), S is repeated (S2), and the model should end "
        "with the IO name. Positions: IO, S1 (first S), S1+1, S2, END (the last token)."),
    "factual": (
        "Inputs are factual prompts about a subject (a country or a city): 'The capital of "
        "France is'. SUBJ is the subject's last token and END the last token; the model should "
        "continue with the attribute asked (capital, country, language, currency, region)."),
}
GENERIC_DESCRIPTION = ("Inputs are texts read by a language model, one token at a time; a "
                       "token is shown in quotes with its spaces.")

SYSTEM_PROMPT = """You help interpret activations inside a transformer. For one activation
site and query position, each example gives a query input and samples: other inputs whose
activation at their best position is within a small distance of the query's (the activation
cannot tell them apart from the query). Inputs are cut after that position, which is marked
with [brackets]; tokens after it cannot influence the activation. Information the query and
all its samples share is what the activation encodes; what varies among the samples is not
encoded. Some information is fuzzy: numerically close values instead of equal ones.

{task}

First analyse each example in one or two sentences: what do the samples share with the query?
Then give a summary: the information the activation encodes, across the examples, as a short
list. Say when examples disagree."""


def tagged_tokens(task, sample_text: str, tokens: list[str], position: int) -> str:
    """``tokens`` up to and including ``position`` (BOS left out), the position's token in
    brackets, each token tagged with the task's name for its position where it has one
    (addition: 6(F1) 1(F2) ...)."""
    try:
        names = {index: name for name, index in task.named_positions(sample_text).items()}
    except Exception:  # a malformed sample has no named positions: shown untagged
        names = {}
    free_text = task.free_text
    shown = []
    for index in range(1, min(position, len(tokens) - 1) + 1):
        token = repr(tokens[index]) if free_text else tokens[index]
        if index in names and not names[index].startswith(("+", "=", "|", ":")):
            token = f"{token}({names[index]})"
        shown.append(f"[{token}]" if index == position else token)
    return " ".join(shown)


def build_messages(task, results: list, samples_per_query: int = SAMPLES_PER_QUERY
                   ) -> list[dict[str, str]]:
    """The chat messages for ``results`` (PreimageResults of one site and position, each run
    with every distinct candidate kept): the system prompt with the task's description, and
    one user message with every example."""
    if not results:
        raise UserError("no queries to describe to the LLM")
    site, label = results[0].site, results[0].position_label
    parts = [f"Site {site} at position {label!r}, {len(results)} examples."]
    for number, result in enumerate(results, 1):
        query_line = tagged_tokens(task, result.query.text, result.query.tokens, result.position)
        inside = [s for s in result.samples if s.in_epsilon and s.text != result.query.text]
        inside = sorted(inside, key=lambda s: s.distance)[:samples_per_query]
        lines = [f"Example {number}. Query: {query_line}"]
        if not inside:
            lines.append("  (no sample was found within the distance)")
        for sample in inside:
            lines.append("  - " + tagged_tokens(task, sample.text, sample.tokens,
                                                sample.best_position))
        parts.append("\n".join(lines))
    description = TASK_DESCRIPTIONS.get(task.name, GENERIC_DESCRIPTION)
    return [{"role": "system", "content": SYSTEM_PROMPT.format(task=description)},
            {"role": "user", "content": "\n\n".join(parts)}]


# ----- the request ------------------------------------------------------------------------

MAX_ANSWER_BYTES = 4 * 2**20  # a chat completion is a few KB; more is not one
ERROR_DETAIL_BYTES = 300  # of an HTTP error's body, shown in the message


def ask(endpoint: Endpoint, messages: list[dict[str, str]], temperature: float = 0.0) -> dict[str, Any]:
    """POST the chat request; returns {"answer", "model", "finish_reason", "usage"}. Every
    failure (no connection, the timeout, an HTTP error, a malformed or oversized answer, a
    refusal, a reply that is not a chat completion) raises LLMError with one line saying
    which."""
    body = json.dumps({"model": endpoint.model, "messages": messages,
                       "temperature": temperature}).encode()
    where = endpoint.describe()
    status, raw = post(endpoint, "/chat/completions", body)
    if status >= 300:
        detail = raw[:ERROR_DETAIL_BYTES].decode("utf-8", "replace")
        raise LLMError(f"the LLM endpoint ({where}) answered HTTP {status}: "
                       f"{echo(detail) if detail else 'no detail'}")
    return parse_completion(raw, where)


def post(endpoint: Endpoint, path: str, body: bytes) -> tuple[int, bytes]:
    """POST the JSON ``body`` to the endpoint's URL + ``path``; the answer's status and body
    (for an HTTP error, its first ERROR_DETAIL_BYTES). The whole exchange (connecting,
    sending, the status line, headers and body) ends within ``endpoint.timeout`` seconds, and
    a body over MAX_ANSWER_BYTES is refused. Whatever goes wrong in it, from socket, TLS,
    http.client or urllib, is one LLMError naming the endpoint and what happened."""
    headers = {"Content-Type": "application/json"}
    if endpoint.key:
        headers["Authorization"] = f"Bearer {endpoint.key}"
    request = urllib.request.Request(endpoint.url + path, data=body, headers=headers,
                                     method="POST")
    deadline = time.monotonic() + endpoint.timeout
    opener = urllib.request.build_opener(_DeadlineHTTPHandler(deadline),
                                         _DeadlineHTTPSHandler(deadline), _NoRedirects())
    try:
        try:
            response = opener.open(request, timeout=endpoint.timeout)
        except urllib.error.HTTPError as error:  # a status >= 300: its body says why
            with error:
                location = error.headers.get("Location") if 300 <= error.code < 400 else None
                if location:
                    raise LLMError(f"the LLM endpoint ({endpoint.describe()}) redirects to "
                                   f"{echo(location)} (HTTP {error.code}); set the URL to where "
                                   "it leads") from None
                return error.code, error.read(ERROR_DETAIL_BYTES)
        with response:
            return response.status, _read_at_most(response, MAX_ANSWER_BYTES)
    except (OSError, http.client.HTTPException, ValueError) as error:
        raise LLMError(_failure(error, endpoint)) from None


def _failure(error: Exception, endpoint: Endpoint) -> str:
    """One line for an exception out of an HTTP exchange with ``endpoint``."""
    where = endpoint.describe()
    if isinstance(error, urllib.error.URLError) and isinstance(error.reason, BaseException):
        error = error.reason  # urllib wraps what went wrong while connecting and sending
    if isinstance(error, TimeoutError):
        return f"the LLM endpoint ({where}) did not answer within {endpoint.timeout:g} s"
    if isinstance(error, _AnswerTooLarge):
        return (f"the LLM endpoint ({where}) answered more than {MAX_ANSWER_BYTES:,} bytes; a "
                "chat completion is far smaller")
    if isinstance(error, http.client.RemoteDisconnected):
        return f"the LLM endpoint ({where}) closed the connection without answering"
    if isinstance(error, http.client.IncompleteRead):
        read = len(error.partial)
        announced = (f", of {read + error.expected:,} announced" if error.expected else
                     " (a chunk of it was cut short or malformed)")
        return (f"the LLM endpoint ({where}) sent a broken HTTP answer: its body broke off "
                f"after {read:,} bytes{announced}")
    if isinstance(error, http.client.BadStatusLine):
        return (f"the LLM endpoint ({where}) sent a broken HTTP answer: the status line "
                f"{echo(error.line)} is not 'HTTP/1.x CODE REASON'")
    if isinstance(error, http.client.HTTPException) and not isinstance(
            error, http.client.InvalidURL):
        return (f"the LLM endpoint ({where}) sent a broken HTTP answer: "
                f"{error or type(error).__name__}")
    reason = getattr(error, "strerror", None) or error or type(error).__name__
    return f"cannot reach the LLM endpoint ({where}): {reason}"


class _AnswerTooLarge(http.client.HTTPException):
    pass


def _read_at_most(response: http.client.HTTPResponse, limit: int) -> bytes:
    """The response's body, or _AnswerTooLarge past ``limit`` bytes, or IncompleteRead when
    it ends before its Content-Length."""
    body = bytearray()
    while True:
        chunk = response.read(min(2**16, limit + 1 - len(body)))
        if not chunk:
            break
        body += chunk
        if len(body) > limit:
            raise _AnswerTooLarge()
    if response.length:  # what Content-Length announced and never came
        raise http.client.IncompleteRead(bytes(body), response.length)
    return bytes(body)


def _time_left(deadline: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError("the deadline passed")
    return left


class _DeadlineSocket:
    """A connected socket whose every send and receive waits at most the time left before
    ``deadline``: a socket timeout alone bounds each read, and a server sending one byte a
    second would never time out. http.client sends with ``sendall`` and reads the answer
    through ``makefile``; anything else goes to the socket itself."""

    def __init__(self, sock: socket.socket, deadline: float):
        self._sock, self._deadline = sock, deadline

    def sendall(self, data) -> None:
        self._sock.settimeout(_time_left(self._deadline))
        self._sock.sendall(data)

    def makefile(self, mode: str = "rb", *args, **kwargs) -> io.BufferedReader:
        return io.BufferedReader(_DeadlineReader(self._sock, self._deadline))

    def __getattr__(self, name: str):
        return getattr(self._sock, name)


class _DeadlineReader(io.RawIOBase):
    def __init__(self, sock: socket.socket, deadline: float):
        # the socket's own raw file: closing the connection waits until this is closed too
        self._sock, self._raw, self._deadline = sock, sock.makefile("rb", buffering=0), deadline

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int | None:
        self._sock.settimeout(_time_left(self._deadline))
        return self._raw.readinto(buffer)

    def close(self) -> None:
        self._raw.close()
        super().close()


def _with_deadline(connection_class: type, deadline: float) -> type:
    """``connection_class`` (http.client's HTTP or HTTPS connection) whose connection and
    TLS handshake get the time left, and whose socket is then a _DeadlineSocket."""

    class Connection(connection_class):
        def connect(self):
            self.timeout = _time_left(deadline)
            super().connect()
            self.sock = _DeadlineSocket(self.sock, deadline)

    return Connection


class _Deadline:
    """A urllib handler opening its connections with a deadline."""

    def __init__(self, deadline: float):
        super().__init__()
        self.deadline = deadline

    def do_open(self, http_class, request, **kwargs):
        return super().do_open(_with_deadline(http_class, self.deadline), request, **kwargs)


class _DeadlineHTTPHandler(_Deadline, urllib.request.HTTPHandler):
    pass


class _DeadlineHTTPSHandler(_Deadline, urllib.request.HTTPSHandler):
    pass


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """A redirect is answered as the HTTP error it is: urllib would follow it as a GET
    without the request's body, which no chat endpoint answers."""

    def redirect_request(self, *args, **kwargs):
        return None


def parse_completion(raw: bytes, where: str = "the endpoint") -> dict[str, Any]:
    try:
        reply = json.loads(raw)
        choice = reply["choices"][0]
        message = choice["message"]
    except (ValueError, KeyError, IndexError, TypeError):
        raise LLMError(f"the LLM endpoint ({where}) answered something that is not a chat "
                       f"completion: {echo(raw[:200].decode('utf-8', 'replace'))}") from None
    except RecursionError:  # json's parser stops near the interpreter's recursion limit
        raise LLMError(f"the LLM endpoint ({where}) answered JSON nested too deeply to read "
                       f"(a chat completion is a few levels deep): "
                       f"{echo(raw[:40].decode('utf-8', 'replace'))}") from None
    refusal = message.get("refusal") if isinstance(message, dict) else None
    finish = choice.get("finish_reason")
    if refusal or finish == "content_filter":
        raise LLMError(f"the LLM ({where}) declined to answer: "
                       f"{echo(str(refusal or 'content filter'))}")
    content = message.get("content") if isinstance(message, dict) else None
    if not isinstance(content, str) or not content.strip():
        raise LLMError(f"the LLM endpoint ({where}) answered with no text")
    return {"answer": content, "model": reply.get("model"), "finish_reason": finish,
            "usage": reply.get("usage")}


__all__ = ["ENV_KEY", "ENV_MODEL", "ENV_URL", "MAX_ANSWER_BYTES", "Endpoint", "LLMError", "ask",
           "build_messages", "check_key", "check_url", "parse_completion", "post",
           "tagged_tokens"]
