"""HTTP for the remote backend: one client per server, faults turned into one-line messages, and a
streaming request that can be abandoned at once.

- `ServerClient` wraps an `httpx.Client` with the server's base address and API key. The key is
  only ever put in the Authorization header; `scrub` removes it from any text before that text
  can reach a message, a log or a saved conversation.
- `EventStream` runs one streaming POST on a reader thread (httpx + httpx-sse) and hands what
  it reads to the caller through a queue: the caller polls with a short timeout, so it can stop
  waiting the moment the user cancels, even when the server sends nothing at all. `close()`
  shuts the socket down, which wakes the reader thread out of its blocking read.
- Every failure (refused connection, DNS, TLS, timeouts, HTTP statuses, a broken stream) becomes
  a `StreamItem` or a `BackendError` with one line saying what happened and what to do.
"""

from __future__ import annotations

import queue
import socket
import threading
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import httpx
from httpx_sse import EventSource, SSEError

from .openai_stream import error_text
from .sanitize import decode_json

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
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.read_timeout = timeout
        # connect: fail fast on a dead host; read: how long the server may be silent mid-reply.
        self.http = httpx.Client(headers=headers, timeout=httpx.Timeout(timeout, connect=min(10.0, timeout)),
                                 follow_redirects=False)

    def close(self) -> None:
        self.http.close()

    def scrub(self, text: str) -> str:
        """`text` on one line, without the API key, cut to a readable length."""
        text = " ".join(str(text).split())
        if self._key:
            text = text.replace(self._key, "***")
        return text if len(text) <= MAX_ERROR_CHARS else text[: MAX_ERROR_CHARS - 1] + "…"

    def get_json(self, path: str, *, root: bool = False, timeout: float | None = None) -> object:
        """GET a JSON document; raises BackendError (one line) on any failure."""
        url = (self.address.root if root else self.address.api_base) + path
        try:  # a listing or a probe is quick on any healthy server: do not wait a reply's timeout
            response = self.http.get(url, timeout=timeout or min(PROBE_TIMEOUT_S, self.read_timeout))
        except httpx.HTTPError as e:
            raise BackendError(self.describe_exception(e)) from None
        if response.status_code >= 400:
            raise BackendError(self.describe_status(response.status_code, _body_message(response), url))
        try:
            return decode_json(response.content)
        except ValueError:
            raise BackendError(f"{url} did not answer with JSON; is this an OpenAI-compatible server?") from None

    def try_get_json(self, path: str, *, root: bool = False, timeout: float = 5.0) -> object | None:
        """Like get_json for optional probes: None on any failure."""
        try:
            return self.get_json(path, root=root, timeout=timeout)
        except BackendError:
            return None

    def post_json(self, path: str, body: dict, *, root: bool = False, timeout: float = 10.0) -> object | None:
        """POST for a small JSON answer (e.g. /tokenize); None on any failure."""
        url = (self.address.root if root else self.address.api_base) + path
        try:
            response = self.http.post(url, json=body, timeout=timeout)
            return decode_json(response.content) if response.status_code < 400 else None
        except (httpx.HTTPError, ValueError):
            return None

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


def _body_message(response: httpx.Response) -> str:
    try:
        return error_text(decode_json(response.content))
    except ValueError:
        return response.text[:MAX_ERROR_CHARS]


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None  # an HTTP date: rare from model servers; treated as no hint


class EventStream:
    """One streaming POST read on its own thread. Iterate with `get(timeout)`; always `close()`."""

    def __init__(self, client: ServerClient, url: str, body: dict) -> None:
        self.client = client
        self.items: queue.Queue[StreamItem] = queue.Queue()
        self._response: httpx.Response | None = None
        self._closed = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._read, args=(url, body), name="chatterm-remote-stream",
                                        daemon=True)
        self._thread.start()

    def get(self, timeout: float) -> StreamItem | None:
        try:
            return self.items.get(timeout=timeout)
        except queue.Empty:
            return None

    def close(self) -> None:
        """Stop reading now. The reader thread ends as soon as its blocking read returns, which
        shutting the socket down makes immediate."""
        self._closed.set()
        with self._lock:
            response = self._response
        if response is not None:
            _shutdown_socket(response)
        self._thread.join(timeout=0.05)

    def _put(self, item: StreamItem) -> None:
        if not self._closed.is_set():
            self.items.put(item)

    def _read(self, url: str, body: dict) -> None:
        client = self.client
        try:
            request = client.http.build_request("POST", url, json=body, headers={"Accept": "text/event-stream"})
            response = client.http.send(request, stream=True)
        except httpx.HTTPError as e:
            self._put(StreamItem("fail", message=client.describe_exception(e)))
            return
        with self._lock:
            self._response = response
        try:
            if self._closed.is_set():
                return
            if response.status_code >= 400:
                response.read()
                message = client.scrub(_body_message(response))
                self._put(StreamItem("status", status=response.status_code, message=message,
                                     retry_after=_retry_after(response)))
                return
            if response.headers.get("content-type", "").startswith("application/json"):
                response.read()  # a server that does not stream: the whole reply as one chunk
                self._put(StreamItem("data", data=decode_json(response.content)))
                self._put(StreamItem("end", data="done"))
                return
            for event in EventSource(response).iter_sse():
                if self._closed.is_set():
                    return
                if event.data.strip() == "[DONE]":
                    self._put(StreamItem("end", data="done"))
                    return
                if not event.data.strip():
                    continue
                try:
                    self._put(StreamItem("data", data=decode_json(event.data)))
                except ValueError:
                    message = client.scrub(f"malformed event from the server: {event.data!r}")
                    self._put(StreamItem("fail", message=message))
                    return
            self._put(StreamItem("end", data="eof"))  # no [DONE]: the caller decides if the reply was whole
        except SSEError as e:
            self._put(StreamItem("fail", message=client.scrub(f"the server did not stream events ({e})")))
        except httpx.HTTPError as e:
            if not self._closed.is_set():
                self._put(StreamItem("fail", message=client.describe_exception(e)))
        except (OSError, ValueError) as e:  # a socket shut down under a read, or undecodable bytes
            if not self._closed.is_set():
                self._put(StreamItem("fail", message=client.scrub(f"the stream from the server broke: {e}")))
        finally:
            response.close()


def _shutdown_socket(response: httpx.Response) -> None:
    stream = response.extensions.get("network_stream")
    sock = stream.get_extra_info("socket") if stream is not None else None
    if sock is not None:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass  # already closed
