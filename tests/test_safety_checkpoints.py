"""Checkpoints and tokenizers from strangers: every failure is one line (CheckpointError, exit
code 2 on the command line), nothing blocks, and sizes are checked before anything is allocated."""

import io
import json
import os
import random
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import save as safetensors_bytes

from chatterm.model import CheckpointError, GPTConfig, load_checkpoint, save_checkpoint
from chatterm.session.backends.local import LocalBackend
from helpers import byte_tokenizer_spec, save_tiny_checkpoint, tiny_model

SRC = str(Path(__file__).parent.parent / "src")
MICRO = GPTConfig(block_size=8, vocab_size=16, n_layer=1, n_head=1, n_embd=8)


def _micro_state_dict():
    from chatterm.model import GPT

    torch.manual_seed(0)
    return {k: v.detach().clone() for k, v in GPT(MICRO).state_dict().items() if k != "lm_head.weight"}


def _nanogpt_bytes() -> bytes:
    buffer = io.BytesIO()
    model_args = {k: v for k, v in MICRO.to_dict().items() if k != "tie_embeddings"}
    torch.save({"model": _micro_state_dict(), "model_args": model_args, "iter_num": 3}, buffer)
    return buffer.getvalue()


def _safetensors_bytes() -> bytes:
    meta = {"chatterm": json.dumps({"model": MICRO.to_dict(), "name": "micro"})}
    return safetensors_bytes(_micro_state_dict(), metadata=meta)


def _gguf_bytes() -> bytes:
    """A tiny Llama as llama.cpp writes it (its tokenizer and template in the metadata)."""
    import tempfile

    from tiny_llama import hf_model, write_gguf

    with tempfile.TemporaryDirectory() as folder:
        model = hf_model(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                         num_key_value_heads=1)
        return write_gguf(Path(folder) / "m.gguf", model).read_bytes()


def _mutate(data: bytes, rng: random.Random) -> bytes:
    data = bytearray(data)
    # Half the damage lands in the first 400 bytes, where the headers, the pickle and the JSON are.
    where = lambda: rng.randrange(min(len(data), 400) if rng.random() < 0.5 else len(data))  # noqa: E731
    kind = rng.randrange(5)
    if kind == 0:
        for _ in range(rng.randint(1, 4)):
            data[where()] = rng.randrange(256)
    elif kind == 1:
        del data[where():]
    elif kind == 2:
        at = where()
        data[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 16)))
    elif kind == 3:
        at = where()
        del data[at : at + rng.randint(1, 64)]
    else:
        at = where()
        data[at : at + 8] = struct.pack("<Q", rng.choice([0, 1, 2**31, 2**63 - 1, 2**64 - 1, rng.randrange(2**64)]))
    return bytes(data)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("suffix, make", [(".pt", _nanogpt_bytes), (".safetensors", _safetensors_bytes),
                                          (".gguf", _gguf_bytes)])
def test_fuzzed_checkpoints_load_or_raise_checkpoint_error_and_nothing_else(tmp_path, suffix, make):
    original = make()
    good = load_checkpoint(_write(tmp_path / f"ok{suffix}", original))  # the seed file is good
    assert good.config == MICRO or suffix == ".gguf"
    rng = random.Random(1234)
    path = tmp_path / f"fuzzed{suffix}"
    refused, started = 0, time.monotonic()
    for i in range(1500):
        data = _mutate(original, rng)
        _write(path, data)
        try:
            load_checkpoint(path)
        except CheckpointError as e:
            text = str(e)
            assert "\n" not in text and str(path) in text, (i, text)
            refused += 1
        except BaseException as e:  # noqa: BLE001 - exactly what this test is about
            pytest.fail(f"mutation {i} raised {type(e).__module__}.{type(e).__name__}: {e}")
    assert refused > 600, refused  # most damage is caught; a flipped weight byte is still a model
    assert time.monotonic() - started < 60


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_fuzzed_gguf_files_through_the_whole_load(tmp_path):
    """Reading the file is the first step only: the backend then builds the tokenizer and chat
    template from its metadata and packs the weights for the CPU kernels, computing with them
    (a NaN weight once escaped from that check as a RuntimeError traceback)."""
    original = _gguf_bytes()
    LocalBackend.load(str(_write(tmp_path / "ok.gguf", original)))
    rng = random.Random(4321)
    path = tmp_path / "fuzzed.gguf"
    loaded = 0
    for i in range(300):
        _write(path, _mutate(original, rng))
        try:
            LocalBackend.load(str(path))
            loaded += 1
        except CheckpointError as e:
            assert "\n" not in str(e) and str(path) in str(e), (i, str(e))
        except BaseException as e:  # noqa: BLE001 - exactly what this test is about
            pytest.fail(f"mutation {i} raised {type(e).__module__}.{type(e).__name__}: {e}")
    assert loaded > 30, loaded  # damaged weights still make a model


@pytest.mark.parametrize("dtype", ["fp32", "bf16", "int8", "int4"])
def test_a_nan_weight_loads_and_the_reply_says_so(tmp_path, dtype):
    """A NaN in a linear layer's weight: loading computes with the layer once (to check the CPU
    kernels) and raised on a NaN tolerance; the quantized kernels turned a NaN activation into a
    finite block, so the model babbled. Now it loads, and the reply ends with the error."""
    import chatterm

    model = tiny_model(seed=0, n_embd=64)
    with torch.no_grad():
        model.transformer.h[0].attn.c_attn.weight[0, 0] = float("nan")
    path = save_tiny_checkpoint(tmp_path / "nan", model)
    done = chatterm.load(str(path), dtype=dtype).complete("hi", max_new_tokens=8, temperature=0)
    assert done.stop_reason == "error" and "no finite logits" in done.error


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _one_line_error(path, **kwargs) -> str:
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path, **kwargs)
    text = str(err.value)
    assert "\n" not in text and str(path) in text
    return text


def test_text_files_random_bytes_and_empty_files(tmp_path):
    rng = random.Random(0)
    for name, data in [("notes.pt", b"just some text, honest\n"), ("random.pt", rng.randbytes(5000)),
                       ("random.safetensors", rng.randbytes(5000)), ("empty.pt", b""), ("empty.safetensors", b""),
                       ("zero.bin", bytes(4096))]:
        _one_line_error(_write(tmp_path / name, data))
    # The unpickler fails on text with a bare KeyError or IndexError: the line says what the file is.
    for name, text in [("hello.pt", b"hello\n"), ("notes.pt", b"just some text, honest\n"), ("ab.pt", b"ab")]:
        assert "not a PyTorch weights file, or corrupt" in _one_line_error(_write(tmp_path / name, text)), name


@pytest.mark.parametrize("model, message", [
    ([1, 2, 3], "'model' entry is not a state dict"),
    ({"transformer.wte.weight": 1.5}, "is float, not a tensor"),
    ({"transformer.wte.weight": "abc"}, "is str, not a tensor"),
    ({}, "not a state dict"),
])
def test_nanogpt_dict_whose_model_is_not_tensors(tmp_path, model, message):
    path = tmp_path / "ckpt.pt"
    torch.save({"model": model, "model_args": {"n_layer": 1}}, path)
    assert message in _one_line_error(path)


def test_safetensors_header_that_is_a_list(tmp_path):
    header = b"[1, 2, 3]"
    path = _write(tmp_path / "list.safetensors", struct.pack("<Q", len(header)) + header)
    assert "safetensors" in _one_line_error(path)


@pytest.mark.parametrize("value", ["2", 2.0, True, -2, None])
def test_the_json_beside_a_plain_state_dict_is_never_coerced(tmp_path, value):
    """A plain .pt's head count comes from `<name>.json` beside it: int("2") or int(True) used to
    load silently, the last as a one-head model of the wrong shape."""
    path = tmp_path / "weights.pt"
    torch.save(_micro_state_dict(), path)
    (tmp_path / "weights.json").write_text(json.dumps({"n_head": value}))
    text = _one_line_error(path)
    assert "n_head" in text, text
    (tmp_path / "weights.json").write_text(json.dumps({"n_head": 1}))
    assert load_checkpoint(path).config.n_head == 1


@pytest.mark.parametrize("key, value, vtype", [
    ("llama.block_count", "1", "STRING"),
    ("llama.block_count", 1.5, "FLOAT32"),
    ("llama.attention.head_count", True, "BOOL"),
    ("llama.attention.layer_norm_rms_epsilon", "1e-6", "STRING"),
    ("llama.rope.freq_base", float("nan"), "FLOAT32"),
    ("tokenizer.ggml.add_bos_token", 1, "UINT32"),
])
def test_gguf_metadata_of_the_wrong_type_is_never_coerced(tmp_path, key, value, vtype):
    """GGUF values are typed; a string or float where a count belongs is a damaged or hostile
    file, and int("1") or int(1.5) would build another model than the one described."""
    from tiny_llama import hf_model, write_gguf

    model = hf_model(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                     num_key_value_heads=1)
    path = write_gguf(tmp_path / "m.gguf", model, metadata={key: (value, vtype)})
    with pytest.raises(CheckpointError) as err:
        LocalBackend.load(str(path))
    assert f"metadata {key} must be" in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("change, name", [
    ({"layer_norm_eps": "1e-5"}, "layer_norm_eps"),
    ({"n_layer": 2.0}, "n_layer"),
    ({"n_head": True}, "n_head"),
    ({"bias": "yes"}, "bias"),
    ({"dropout": float("nan")}, "dropout"),
    ({"block_size": [256]}, "block_size"),
])
def test_config_values_of_the_wrong_type(tmp_path, change, name):
    folder = tmp_path / "m"
    save_checkpoint(folder, tiny_model(), {"tokenizer": byte_tokenizer_spec()})
    meta = json.loads((folder / "chatterm.json").read_text())
    meta["model"].update(change)
    (folder / "chatterm.json").write_text(json.dumps(meta))
    assert f"bad model config (model config: {name} must be" in _one_line_error(folder)


@pytest.mark.parametrize("change, name", [
    ({"num_hidden_layers": 2.0}, "num_hidden_layers must be an integer"),
    ({"hidden_size": True}, "hidden_size must be an integer"),
    ({"num_attention_heads": "4"}, "num_attention_heads must be an integer"),
    ({"rms_norm_eps": "1e-6"}, "rms_norm_eps must be a finite number"),
    ({"rope_parameters": {"rope_type": "default", "rope_theta": float("nan")}}, "rope_theta must be a finite number"),
    ({"tie_word_embeddings": "false"}, "tie_word_embeddings must be true or false"),
    ({"num_attention_heads": 0}, "n_head must be a positive integer"),
    ({"rope_parameters": [1, 2]}, "rope_scaling must be an object"),
])
def test_llama_config_values_of_the_wrong_type(tmp_path, change, name):
    """A Llama-family config.json is not coerced: "false" is not true, 2.0 layers are refused."""
    from tiny_llama import hf_model, save_hf_folder

    folder = save_hf_folder(tmp_path / "llama", hf_model())
    config = json.loads((folder / "config.json").read_text())
    config.update(change)
    (folder / "config.json").write_text(json.dumps(config))
    text = _one_line_error(folder)
    assert "config.json: bad model config (" in text and name in text, text


def _with_tokenizer(tmp_path, spec):
    folder = tmp_path / "t"
    save_tiny_checkpoint(folder, tiny_model(), spec)
    return folder


@pytest.mark.parametrize("spec", [
    {**byte_tokenizer_spec(), "ranks": byte_tokenizer_spec()["ranks"][:100]},  # truncated: tiktoken panics
    {**byte_tokenizer_spec(), "ranks": ["%%%", "not base64"]},
    {**byte_tokenizer_spec(), "special_tokens": [1, 2]},
    {**byte_tokenizer_spec(), "special_tokens": {"<|endoftext|>": 10**30}},
    {**byte_tokenizer_spec(), "pat_str": "(("},
    ["not", "a", "spec"],
])
def test_malformed_or_truncated_tokenizer_data(tmp_path, spec):
    folder = _with_tokenizer(tmp_path, spec)
    with pytest.raises(CheckpointError) as err:
        LocalBackend.load(folder)
    assert str(folder) in str(err.value) and "\n" not in str(err.value)


def test_a_rust_panic_becomes_a_checkpoint_error_but_ctrl_c_does_not():
    import tiktoken

    from chatterm.model.errors import reading

    broken = tiktoken.Encoding(name="broken", pat_str=r"\S+|\s+", mergeable_ranks={b"a": 0}, special_tokens={})
    with pytest.raises(BaseException) as raw:
        broken.encode_ordinary("b")  # no token for "b": tiktoken's Rust core panics
    assert type(raw.value).__name__ == "PanicException" and not isinstance(raw.value, Exception)
    with pytest.raises(CheckpointError, match="x.json: cannot load its tokenizer .its reader crashed"):
        with reading("x.json", "its tokenizer"):
            broken.encode_ordinary("b")
    for passthrough in (KeyboardInterrupt, SystemExit):
        with pytest.raises(passthrough):
            with reading("x.json"):
                raise passthrough()


def _never_blocks(fn, timeout=15):
    outcome = []

    def run():
        try:
            fn()
            outcome.append("returned")
        except BaseException as e:  # noqa: BLE001
            outcome.append(e)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout)
    return outcome[0] if outcome else None


def test_fifos_and_devices_are_refused_without_blocking(tmp_path):
    fifo = tmp_path / "model.pt"
    os.mkfifo(fifo)
    folder = tmp_path / "m"
    save_tiny_checkpoint(folder, tiny_model())
    (folder / "model.safetensors").unlink()
    os.mkfifo(folder / "model.safetensors")
    side = tmp_path / "s"
    save_tiny_checkpoint(side, tiny_model())
    (side / "chatterm.json").unlink()
    os.mkfifo(side / "chatterm.json")
    try:
        for path in (fifo, folder, side, Path("/dev/zero"), Path("/dev/null")):
            outcome = _never_blocks(lambda: load_checkpoint(path))
            assert isinstance(outcome, CheckpointError), (path, outcome)
            assert "FIFO" in str(outcome) or "device" in str(outcome)
    finally:
        for f in (fifo, folder / "model.safetensors", side / "chatterm.json"):  # release any blocked reader
            try:
                os.close(os.open(f, os.O_WRONLY | os.O_NONBLOCK))
            except OSError:
                pass


@pytest.mark.parametrize("name", ["config.json", "tokenizer.json", "model.safetensors", "tokenizer_config.json",
                                  "chat_template.jinja"])
def test_fifos_in_a_hugging_face_folder_are_refused_without_blocking(tmp_path, name):
    from tiny_llama import hf_model, save_hf_folder

    folder = save_hf_folder(tmp_path / "llama", hf_model())
    (folder / name).unlink(missing_ok=True)
    os.mkfifo(folder / name)
    try:
        outcome = _never_blocks(lambda: LocalBackend.load(folder))
        assert isinstance(outcome, CheckpointError), (name, outcome)
        assert "is a FIFO" in str(outcome) and "\n" not in str(outcome)
    finally:
        try:  # release a blocked reader, if any
            os.close(os.open(folder / name, os.O_WRONLY | os.O_NONBLOCK))
        except OSError:
            pass


@pytest.mark.parametrize("change, what", [
    ({"n_layer": 10**9}, "1,000,000,000 layers"),
    ({"n_layer": 4000, "block_size": 100_000}, "4,000 layers"),
])
def test_sizes_are_checked_before_anything_is_allocated(tmp_path, change, what):
    """A config describing far more than the weights hold is the config's fault: one line that
    says so, before anything is built (the memory check with the real sizes comes after:
    test_as_stored.py)."""
    folder = tmp_path / "huge"
    save_checkpoint(folder, tiny_model(), {"tokenizer": byte_tokenizer_spec()})
    meta = json.loads((folder / "chatterm.json").read_text())
    meta["model"].update(change)
    (folder / "chatterm.json").write_text(json.dumps(meta))
    started = time.monotonic()
    text = _one_line_error(folder)
    assert time.monotonic() - started < 2
    assert "the config does not match the weights" in text and what in text


def test_sizes_of_llama_family_folders_and_gguf_files_are_checked_before_their_weights(tmp_path):
    """A Hugging Face folder and a GGUF file whose config asks for far more than its weights hold:
    refused at once, naming the config, before a weight is read (both formats once read their
    weights first and failed later, or not at all on a big enough real model)."""
    from tiny_llama import hf_model, save_hf_folder, write_gguf

    model = hf_model()
    folder = save_hf_folder(tmp_path / "llama", model)
    for tie in (False, True):  # the estimate counts what the module holds
        loaded = load_checkpoint(save_hf_folder(tmp_path / f"tie{tie}", hf_model(tie=tie)))
        assert loaded.config.num_params() == loaded.model.num_params()
    config = json.loads((folder / "config.json").read_text())
    config.update(hidden_size=16384, intermediate_size=65536, num_hidden_layers=400, num_attention_heads=128,
                  num_key_value_heads=8, head_dim=128)
    (folder / "config.json").write_text(json.dumps(config))
    gguf = write_gguf(tmp_path / "m.gguf", model)
    data = bytearray(gguf.read_bytes())
    at = data.index(b"llama.block_count") + len(b"llama.block_count")
    assert struct.unpack_from("<I", data, at)[0] == 4  # its type: uint32, then the value
    struct.pack_into("<I", data, at + 4, 10**8)
    gguf.write_bytes(bytes(data))
    for path, layers in ((folder, "400 layers"), (gguf, "100,000,000 layers")):
        started = time.monotonic()
        text = _one_line_error(path)
        assert time.monotonic() - started < 2
        assert "the config does not match the weights" in text, text
        assert layers in text


@pytest.mark.slow
def test_loader_errors_on_the_command_line_are_one_line_and_exit_code_2(tmp_path):
    fifo = tmp_path / "pipe.pt"
    os.mkfifo(fifo)
    notes = _write(tmp_path / "notes.pt", b"hello\n")
    nano = tmp_path / "list.pt"
    torch.save({"model": [1], "model_args": {}}, nano)
    env = {**os.environ, "PYTHONPATH": SRC}
    for bad in (fifo, notes, nano):
        r = subprocess.run([sys.executable, "-m", "chatterm", "generate", str(bad), "--prompt", "x"],
                           capture_output=True, text=True, env=env, timeout=60)
        assert r.returncode == 2, r.stderr
        assert r.stderr.count("\n") == 1 and r.stderr.startswith("chatterm: error: ") and "Traceback" not in r.stderr
