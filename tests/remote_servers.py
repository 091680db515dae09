"""Servers for the remote backend's tests, all on 127.0.0.1 and a free port.

`make_bigram_model` writes a tiny real Hugging Face Llama whose greedy (and, with its huge
margins, sampled) continuation is fixed by a table of "next token" pairs: the embeddings are
one-hot, the attention and MLP outputs are zero, so the logits depend only on the last token and
the table is written straight into `lm_head`. A real model with predictable replies, built in
milliseconds, that `transformers serve` can serve.

`TransformersServer` runs `transformers serve FOLDER` as a child process (killed at exit).

`ScriptedServer` is a small http.server in a thread for the faults no real server produces on
demand: it answers each request with the next of a list of scripted responses.
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


def make_bigram_model(folder: Path, *, chat_template: bool = True) -> Path:
    import torch
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=256, special_tokens=["<|endoftext|>"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(["ab"], trainer)
    tok.add_tokens([AddedToken(w, normalized=False) for w in WORDS])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>")
    if chat_template:
        fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(folder)

    vocab = len(fast)
    config = LlamaConfig(vocab_size=vocab, hidden_size=vocab, intermediate_size=8, num_hidden_layers=1,
                         num_attention_heads=1, num_key_value_heads=1, max_position_embeddings=8192,
                         eos_token_id=fast.eos_token_id, bos_token_id=None, pad_token_id=fast.eos_token_id,
                         tie_word_embeddings=False)
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        model.model.embed_tokens.weight.copy_(torch.eye(vocab))
        for layer in model.model.layers:  # the layers add nothing to the residual stream
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        head = torch.zeros(vocab, vocab)
        for current, following in NEXT.items():
            head[_token_id(fast, following), _token_id(fast, current)] = 3.0  # logit 3*sqrt(vocab) ~ 50
        model.lm_head.weight.copy_(head)
    model.generation_config.eos_token_id = fast.eos_token_id
    model.generation_config.pad_token_id = fast.eos_token_id
    model.save_pretrained(folder)
    return folder


def _token_id(tokenizer, text: str) -> int:
    ids = tokenizer.encode(text, add_special_tokens=False)
    assert len(ids) == 1, (text, ids)
    return ids[0]


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
                stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
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
    in `body` pauses that many seconds; `stall=True` then hangs until the server stops)."""

    def __init__(self, status=200, body=(), headers=None, stall=False, json_body=None):
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


MODELS = {"object": "list", "data": [{"id": "scripted", "object": "model", "owned_by": "test"}]}


class ScriptedServer:
    """GET /v1/models lists one model; every other POST gets the next Scripted response (the last
    one repeats). Records the requests' paths, JSON bodies and headers."""

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
                if doc is None:
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
