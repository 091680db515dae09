"""Servers for the remote backend's tests, all on 127.0.0.1 and a free port.

`make_bigram_model` writes a tiny real Hugging Face Llama whose greedy (and, with its huge
margins, sampled) continuation is fixed by a table of "next token" pairs: the embeddings are
one-hot, the attention and MLP outputs are zero, so the logits depend only on the last token and
the table is written straight into `lm_head`. A real model with predictable replies, built in
milliseconds, that `transformers serve` can serve.

`TransformersServer` runs `transformers serve FOLDER` as a child process (killed at exit).

`ScriptedServer` is a small http.server in a thread for the faults no real server produces on
demand: it answers each request with the next of a list of scripted responses. `endless`,
`gzip_bomb` and `drip` make hostile bodies (far past chatterm's caps, or a byte at a time) that
still end by themselves, so a test that fails does not hang or fill the machine.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx

CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
WORDS = ["<|user|>", "<|system|>", "<|assistant|>", "User:", "Assistant:", " hello", " there", " friend",
         " good", " day", "Loop:", " la"]
# The replies: chat mode (the prompt ends with <|assistant|>) says " hello there friend" and ends;
# completion mode (the prompt ends with "Assistant:") says " good day", then starts the next
# "User:" line; after "Loop:" the model says " la" forever.
NEXT = {"<|assistant|>": " hello", " hello": " there", " there": " friend", " friend": "<|endoftext|>",
        "Assistant:": " good", " good": " day", " day": "\n", "\n": "User:", "User:": " hello",
        "Loop:": " la", " la": " la"}
CHAT_REPLY = " hello there friend"
COMPLETION_REPLY = " good day\n"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_bigram_model(folder: Path, *, chat_template: bool | str = True, words=WORDS, table=None) -> Path:
    """Write the model folder (config, tokenizer, safetensors weights) without importing
    transformers: only `transformers serve` needs it, and it loads in the server's process.
    `chat_template` may be the template's text; `words` and `table` replace WORDS and NEXT."""
    import torch
    from safetensors.torch import save_file
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers

    folder.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=256, special_tokens=["<|endoftext|>"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(["ab"], trainer)
    tok.add_tokens([AddedToken(w, normalized=False) for w in words])
    tok.save(str(folder / "tokenizer.json"))
    eos = tok.token_to_id("<|endoftext|>")
    tokenizer_config = {"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": "<|endoftext|>",
                        "pad_token": "<|endoftext|>", "model_max_length": 8192}
    if chat_template:
        tokenizer_config["chat_template"] = chat_template if isinstance(chat_template, str) else CHAT_TEMPLATE
    _write_json(folder / "tokenizer_config.json", tokenizer_config)

    vocab = tok.get_vocab_size()
    hidden = vocab + vocab % 2  # rotary embeddings want an even head size
    _write_json(folder / "config.json", {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": vocab, "hidden_size": hidden,
        "intermediate_size": 8, "num_hidden_layers": 1, "num_attention_heads": 1, "num_key_value_heads": 1,
        "max_position_embeddings": 8192, "rms_norm_eps": 1e-6, "eos_token_id": eos, "pad_token_id": eos,
        "bos_token_id": None, "tie_word_embeddings": False, "dtype": "float32"})
    _write_json(folder / "generation_config.json", {"eos_token_id": eos, "pad_token_id": eos})

    def token_id(text: str) -> int:
        ids = tok.encode(text).ids
        assert len(ids) == 1, (text, ids)
        return ids[0]

    head = torch.zeros(vocab, hidden)
    for current, following in (NEXT if table is None else table).items():
        head[token_id(following), token_id(current)] = 3.0  # a logit of 3 * sqrt(hidden), about 50
    zeros = lambda *shape: torch.zeros(*shape)  # noqa: E731
    weights = {
        "model.embed_tokens.weight": torch.eye(vocab, hidden),  # one-hot: the residual is the token
        "model.norm.weight": torch.ones(hidden),
        "lm_head.weight": head,
        # One layer that adds nothing to the residual stream (its output projections are zero).
        "model.layers.0.input_layernorm.weight": torch.ones(hidden),
        "model.layers.0.post_attention_layernorm.weight": torch.ones(hidden),
        **{f"model.layers.0.self_attn.{p}_proj.weight": zeros(hidden, hidden) for p in "qkvo"},
        "model.layers.0.mlp.gate_proj.weight": zeros(8, hidden),
        "model.layers.0.mlp.up_proj.weight": zeros(8, hidden),
        "model.layers.0.mlp.down_proj.weight": zeros(hidden, 8),
    }
    save_file(weights, str(folder / "model.safetensors"), metadata={"format": "pt"})
    return folder


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=1))


def _die_with_parent() -> None:
    """Linux: the server is killed if the test process dies without tearing down (killed, say)."""
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


class TransformersServer:
    """`transformers serve FOLDER` on 127.0.0.1:PORT, ready (its /health answers) when started."""

    def __init__(self, folder: Path, log: Path) -> None:
        self.folder = folder
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self.log = log
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 120.0) -> "TransformersServer":
        exe = Path(sys.executable).with_name("transformers")
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1"}
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(
                [str(exe), "serve", str(self.folder), "--host", "127.0.0.1", "--port", str(self.port),
                 "--device", "cpu", "--log-level", "warning"],
                stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True, preexec_fn=_die_with_parent)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"transformers serve exited: {self.log.read_text()[-2000:]}")
            try:
                if httpx.get(f"http://127.0.0.1:{self.port}/health", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)  # polling for readiness, not a fixed wait
        self.stop()
        raise RuntimeError(f"transformers serve did not start in {timeout:g} s: {self.log.read_text()[-2000:]}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)  # only the group this object started
            self.process.wait(timeout=10)


class Scripted:
    """One scripted response: a status, headers, and a body sent as given (bytes pieces; a float
    in `body` pauses that many seconds; `stall=True` then hangs until the server stops). With
    `raw=True` the body is the whole response, status line and headers included."""

    def __init__(self, status=200, body=(), headers=None, stall=False, json_body=None, raw=False):
        self.raw = raw
        self.status = status
        self.headers = dict(headers or {})
        if json_body is not None:
            body = [json.dumps(json_body).encode()]
            self.headers.setdefault("Content-Type", "application/json")
        self.headers.setdefault("Content-Type", "text/event-stream")
        self.body = list(body)
        self.stall = stall


def sse(*chunks, done=True) -> list[bytes]:
    """Chunks (dicts or raw strings) as server-sent events."""
    out = [f"data: {c if isinstance(c, str) else json.dumps(c)}\n\n".encode() for c in chunks]
    return out + ([b"data: [DONE]\n\n"] if done else [])


def chat_chunk(text=None, finish=None, **extra) -> dict:
    delta = {"content": text} if text is not None else {}
    return {"choices": [{"index": 0, "delta": delta, "finish_reason": finish, **extra}]}


def endless(piece: bytes, total: int) -> list[bytes]:
    """`piece` again and again up to `total` bytes: a body far past any cap that still ends."""
    return [piece] * max(1, total // len(piece))


def gzip_bomb(inflated: int) -> bytes:
    """A gzip body of `inflated` zero bytes (about a thousandth of that on the wire)."""
    z = zlib.compressobj(9, zlib.DEFLATED, zlib.MAX_WBITS | 16)
    block = bytes(1024 * 1024)
    out = [z.compress(block) for _ in range(inflated // len(block))]
    return b"".join(out) + z.flush()


def drip(data: bytes, every: float) -> list:
    """`data` a byte at a time, `every` seconds apart: never silent long enough for a read timeout."""
    out = []
    for i in range(len(data)):
        out += [data[i:i + 1], every]
    return out


MODELS = {"object": "list", "data": [{"id": "scripted", "object": "model", "owned_by": "test"}]}


class ScriptedServer:
    """GET /v1/models lists one model (or answers `models` itself when it is a Scripted); every
    other POST gets the next Scripted response (the last one repeats). Records the requests'
    paths, JSON bodies and headers."""

    def __init__(self, responses, models=MODELS, routes=None) -> None:
        self.responses = list(responses)
        self.models = models
        self.routes = dict(routes or {})  # extra routes: GET path -> JSON, POST path -> f(body) -> JSON
        self.requests: list[dict] = []  # the JSON bodies of the scripted POSTs
        self.paths: list[str] = []
        self.headers: list[dict] = []
        self.stopping = threading.Event()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_GET(self):
                self.headers_seen()
                doc = server.models if self.path == "/v1/models" else server.routes.get(self.path)
                if isinstance(doc, Scripted):
                    self._send(doc)
                elif doc is None:
                    self._send(Scripted(404, json_body={"error": {"message": "no such route"}}))
                else:
                    self._send(Scripted(200, json_body=doc))

            def do_POST(self):
                self.headers_seen()
                length = int(self.headers.get("Content-Length", 0))
                body = json.loads(self.rfile.read(length) or b"{}")
                if self.path in server.routes:  # e.g. /tokenize: answered, not recorded
                    self._send(Scripted(200, json_body=server.routes[self.path](body)))
                    return
                server.requests.append(body)
                server.paths.append(self.path)
                index = min(len(server.requests) - 1, len(server.responses) - 1)
                self._send(server.responses[index])

            def headers_seen(self):
                server.headers.append(dict(self.headers))

            def _send(self, r: Scripted):
                if not r.raw:
                    self.send_response(r.status)
                    for k, v in r.headers.items():
                        self.send_header(k, v)
                    self.send_header("Connection", "close")
                    self.end_headers()
                try:
                    for piece in r.body:
                        if isinstance(piece, float):
                            server.stopping.wait(piece)
                            continue
                        self.wfile.write(piece)
                        self.wfile.flush()
                    if r.stall:
                        server.stopping.wait(30)
                except OSError:
                    pass  # the client went away: that is what some tests do
                self.close_connection = True

        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.http.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.http.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.http.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def __enter__(self) -> "ScriptedServer":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stopping.set()
        self.http.shutdown()
        self.http.server_close()
