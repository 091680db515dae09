"""HTTP for the remote backend: one client per server, faults turned into one-line messages, and
requests that can be abandoned at once.

- `ServerClient` wraps an `httpx.Client` with the server's base address and API key. The key is
  only ever put in the Authorization header; `scrub` removes it, in every form a server or an
  error can spell it (api_key_scrub.py), from any text before that text can reach a message, a
  log or a saved conversation, and only then cuts the text, so a cut never leaves part of it.
- `EventStream` runs one request on a reader thread and hands what it reads to the caller through
  a queue: the caller polls with a short timeout, so it can stop waiting the moment the user
  cancels or a deadline passes, even when the server sends nothing at all, or sends its headers
  a byte at a time. `close()` shuts the socket down, which wakes the reader thread out of its
  blocking read. A JSON GET (`get_json`) is the same, waited for with an overall deadline.
- Bodies, lines and events are read within the caps of server_limits.py.
- Every failure (refused connection, DNS, TLS, timeouts, HTTP statuses, a broken or oversized
  stream) becomes a `StreamItem` or a `BackendError` with one line saying what happened and what
  to do.
"""

from __future__ import annotations

import queue
import socket
import threading
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import httpx

from ...sanitize import decode_json
from .api_key_scrub import KeyScrubber
from .openai_stream import error_text
from .server_limits import (ACCEPT_ENCODING, MAX_ERROR_BODY_BYTES, MAX_JSON_BYTES, BodyRefused, iter_sse_data,
                            read_capped)

MAX_ERROR_CHARS = 240  # a server's error text is cut here: one line in the chat
PROBE_TIMEOUT_S = 20.0  # for GETs when opening (model list, properties)


class BackendError(ValueError):
    """A remote backend could not be opened or used: one line for the user (exit code 2). A
    ValueError, so front ends that turn bad option values into one-line errors catch it too."""


@dataclass(frozen=True)
class StreamItem:
    kind: str  # "data" (a decoded chunk), "status" (an HTTP error), "fail" (a fault), "end"
    data: object = None
    status: int = 0
    message: str = ""  # one line, key scrubbed
    retry_after: float | None = None  # seconds, from a Retry-After header


@dataclass
class ServerAddress:
    url: str  # what the user gave
    api_base: str  # ends with /v1: where the OpenAI routes live
    root: str  # the server root: llama.cpp's /props, /tokenize and Ollama's /api live here
    host: str
    is_local: bool
    scheme: str = field(default="http")

    @classmethod
    def parse(cls, url: str) -> "ServerAddress":
        parts = urlsplit(url.strip())
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise BackendError(f"{url!r} is not a server address; expected e.g. http://localhost:8080/v1")
        path = parts.path.rstrip("/")
        root_path = path[: -len("/v1")] if path.endswith("/v1") else path
        netloc = parts.netloc.rsplit("@", 1)[-1]  # never keep user:password from the URL
        root = f"{parts.scheme}://{netloc}{root_path}"
        host = parts.hostname
        return cls(url=url, api_base=root + "/v1", root=root, host=host, is_local=_is_loopback(host),
                   scheme=parts.scheme)

    def insecure_warning(self) -> str | None:
        if self.scheme == "http" and not self.is_local:
            return (f"{self.root} is plain http to another machine: prompts, replies and any API key "
                    "travel unencrypted (use https or an SSH tunnel)")
        return None


def _is_loopback(host: str) -> bool:
    import ipaddress

    if host.lower() in ("localhost", "localhost.localdomain") or host.lower().endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class ServerClient:
    def __init__(self, address: ServerAddress, api_key: str | None, *, timeout: float = 120.0) -> None:
        self.address = address
        self._key = api_key or None
        self.keys = KeyScrubber(api_key)  # also for the reply's text (reply.py)
        headers = {"Accept-Encoding": ACCEPT_ENCODING}  # only what server_limits can inflate in bounded pieces
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        self.read_timeout = timeout
        # connect: fail fast on a dead host; read: how long the server may be silent mid-reply.
        self.http = httpx.Client(headers=headers, timeout=httpx.Timeout(timeout, connect=min(10.0, timeout)),
                                 follow_redirects=False)

    def close(self) -> None:
        self.http.close()

    def scrub(self, text: str) -> str:
        """`text` on one line, without the API key in any form, cut to a readable length (after
        the key is gone, so a cut never leaves part of it)."""
        text = self.keys.text(" ".join(str(text).split()))
        return text if len(text) <= MAX_ERROR_CHARS else text[: MAX_ERROR_CHARS - 1] + "…"

    def get_json(self, path: str, *, root: bool = False, timeout: float | None = None) -> object:
        """GET a JSON document, whole within `timeout` (default: min(PROBE_TIMEOUT_S, the read
        timeout)) and MAX_JSON_BYTES; raises BackendError (one line) on any failure."""
        url = (self.address.root if root else self.address.api_base) + path
        # a listing or a probe is quick on any healthy server: do not wait a reply's timeout
        return self.fetch_json("GET", url, None, timeout or min(PROBE_TIMEOUT_S, self.read_timeout))

    def try_get_json(self, path: str, *, root: bool = False, timeout: float = 5.0) -> object | None:
        """Like get_json for optional probes: None on any failure."""
        try:
            return self.get_json(path, root=root, timeout=timeout)
        except BackendError:
            return None

    def post_json(self, path: str, body: dict, *, root: bool = False, timeout: float = 10.0) -> object | None:
        """POST for a small JSON answer (e.g. /tokenize); None on any failure."""
        try:
            return self.fetch_json("POST", (self.address.root if root else self.address.api_base) + path, body, timeout)
        except BackendError:
            return None

    def fetch_json(self, method: str, url: str, body: dict | None, timeout: float) -> object:
        """One JSON answer, read whole within `timeout` overall (a body dripped a byte at a time
        is cut there too); raises BackendError (one line)."""
        stream = EventStream(self, url, body, method=method, expect_json=True, timeout=timeout)
        try:
            item = stream.get(timeout)
        finally:
            stream.close()
        if item is None:
            raise BackendError(f"{url} did not answer within {timeout:g} s; the server may be overloaded")
        if item.kind == "status":
            raise BackendError(self.describe_status(item.status, item.message, url))
        if item.kind == "fail":
            raise BackendError(item.message)
        return item.data

    def stream(self, path: str, body: dict) -> "EventStream":
        return EventStream(self, self.address.api_base + path, body)

    # -- one-line messages -----------------------------------------------------------------------

    def describe_exception(self, e: BaseException) -> str:
        where = self.address.root
        text = str(e)
        if isinstance(e, httpx.ConnectTimeout):
            return f"timed out connecting to {where}: is the address right and the server up?"
        if isinstance(e, httpx.ReadTimeout):
            return f"{where} sent nothing for {self.read_timeout:g} s (read timeout); the server may be overloaded"
        if isinstance(e, httpx.ConnectError):
            lowered = text.lower()
            if "refused" in lowered:
                return f"cannot connect to {where} (connection refused): is the server running?"
            if any(s in lowered for s in ("name or service", "nodename", "getaddrinfo", "name resolution",
                                          "no address associated", "not known")):
                return f"cannot find host {self.address.host!r} (DNS lookup failed): check the address"
            if "ssl" in lowered or "certificate" in lowered or "tls" in lowered:
                return self.scrub(f"TLS error talking to {where}: {text}")
            return self.scrub(f"cannot connect to {where}: {text or type(e).__name__}")
        if isinstance(e, (httpx.RemoteProtocolError, httpx.ReadError)):
            return f"the connection to {where} broke mid-reply (did the server stop?)"
        return self.scrub(f"request to {where} failed: {text or type(e).__name__}")

    def describe_status(self, status: int, message: str, url: str = "") -> str:
        message = self.scrub(message) or httpx.codes.get_reason_phrase(status)
        if status in (401, 403):
            hint = ("the key was refused" if self._key else
                    "it wants an API key: set OPENAI_API_KEY or pass --api-key-env VAR")
            return f"the server said {status} ({message}): {hint}"
        if status == 404:
            return f"not found (404) at {url or self.address.api_base}: {message}"
        if status == 429:
            return f"the server is busy (429): {message}; try again shortly"
        if status >= 500:
            return f"server error ({status}): {message}"
        return f"the server refused the request ({status}): {message}"


def _body_message(body: bytes) -> str:
    """The message in an error body (already cut to MAX_ERROR_BODY_BYTES); not yet scrubbed."""
    try:
        return error_text(decode_json(body))
    except (ValueError, RecursionError):
        return body.decode("utf-8", "replace")


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None  # an HTTP date: rare from model servers; treated as no hint


class EventStream:
    """One request read on its own thread: a streamed reply (server-sent events, or one JSON
    document from a server that does not stream), or with `expect_json` a JSON answer. Iterate
    with `get(timeout)`; always `close()`."""

    def __init__(self, client: ServerClient, url: str, body: dict | None, *, method: str = "POST",
                 expect_json: bool = False, timeout: float | None = None) -> None:
        self.client = client
        self.url = url
        self.items: queue.Queue[StreamItem] = queue.Queue()
        self._network_stream = None  # the connection's socket once known: close() shuts it down
        self._closed = threading.Event()
        self._done = threading.Event()  # the reader has finished with the connection
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._read, args=(method, body, expect_json, timeout),
                                        name="chatterm-remote-stream", daemon=True)
        self._thread.start()

    def get(self, timeout: float) -> StreamItem | None:
        try:
            return self.items.get(timeout=timeout)
        except queue.Empty:
            return None

    def close(self) -> None:
        """Stop reading now. The reader thread ends as soon as its blocking read returns, which
        shutting the socket down makes immediate (a connection the reader finished with goes
        back to the pool instead)."""
        self._closed.set()
        with self._lock:
            stream = None if self._done.is_set() else self._network_stream
        if stream is not None:
            _shutdown_socket(stream)
        self._thread.join(timeout=0.05)

    def _put(self, item: StreamItem) -> None:
        if not self._closed.is_set():
            self.items.put(item)

    def _trace(self, event: str, info: dict) -> None:
        """httpcore's trace hook: a new connection's socket is known before any header arrives, so
        close() can wake a reader that a server keeps waiting for its headers."""
        if event in ("connection.connect_tcp.complete", "connection.start_tls.complete"):
            with self._lock:
                self._network_stream = info.get("return_value")

    def _read(self, method: str, body: dict | None, expect_json: bool, timeout: float | None) -> None:
        client = self.client
        try:
            extensions = {"trace": self._trace}
            headers = {"Accept": "application/json" if expect_json else "text/event-stream"}
            request = client.http.build_request(method, self.url, json=body, headers=headers, extensions=extensions,
                                                timeout=timeout if timeout is not None else httpx.USE_CLIENT_DEFAULT)
            response = client.http.send(request, stream=True)
        except httpx.HTTPError as e:
            if not self._closed.is_set():
                self._put(StreamItem("fail", message=client.describe_exception(e)))
            self._done.set()
            return
        with self._lock:
            self._network_stream = response.extensions.get("network_stream") or self._network_stream
        try:
            if not self._closed.is_set():
                self._read_response(response, expect_json)
        except BodyRefused as e:
            self._put(StreamItem("fail", message=client.scrub(str(e))))
        except httpx.HTTPError as e:
            if not self._closed.is_set():
                self._put(StreamItem("fail", message=client.describe_exception(e)))
        except OSError as e:  # a socket shut down under a read
            if not self._closed.is_set():
                self._put(StreamItem("fail", message=client.scrub(f"the stream from the server broke: {e}")))
        except Exception as e:  # a bug (ours or httpx's): still one line, and the caller is never left waiting
            self._put(StreamItem("fail", message=client.scrub(f"reading the server's answer failed: {e!r}")))
        finally:
            response.close()
            self._done.set()

    def _read_response(self, response: httpx.Response, expect_json: bool) -> None:
        client = self.client
        if response.status_code >= 400:
            message = client.scrub(_body_message(read_capped(response, MAX_ERROR_BODY_BYTES, what="error", cut=True)))
            self._put(StreamItem("status", status=response.status_code, message=message,
                                 retry_after=_retry_after(response)))
            return
        content_type = response.headers.get("content-type", "")
        if expect_json or content_type.startswith("application/json"):  # a server that does not stream:
            data = read_capped(response, MAX_JSON_BYTES, what=f"answer at {self.url}")  # the whole reply as one chunk
            try:
                self._put(StreamItem("data", data=decode_json(data)))
            except (ValueError, RecursionError):
                self._put(StreamItem("fail", message=client.scrub(
                    f"{self.url} did not answer with JSON; is this an OpenAI-compatible server?")))
                return
            self._put(StreamItem("end", data="done"))
            return
        if not content_type.startswith("text/event-stream"):
            shown = content_type.split(";")[0].strip() or "no content type"
            self._put(StreamItem("fail", message=client.scrub(f"the server did not stream events (it sent {shown})")))
            return
        for data in iter_sse_data(response):
            if self._closed.is_set():
                return
            if data.strip() == "[DONE]":
                self._put(StreamItem("end", data="done"))
                return
            if not data.strip():
                continue
            try:
                self._put(StreamItem("data", data=decode_json(data)))
            except (ValueError, RecursionError):
                self._put(StreamItem("fail", message=client.scrub(f"malformed event from the server: {data!r}")))
                return
        self._put(StreamItem("end", data="eof"))  # no [DONE]: the caller decides if the reply was whole


def _shutdown_socket(stream) -> None:
    sock = stream.get_extra_info("socket")
    if sock is not None:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass  # already closed
