"""Weight-only int8/int4 linears: the kernels compute the dequantized weight's matmul, the tied
embedding shares the 8-bit table, the parrot still recites under int8, `--dtype int8` loads
through the command line, and a GGUF Q8_0 file quantized to int8 matches its dequantized model."""

import copy
import os
import subprocess
import sys

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from chatterm.model import pack_linears
from chatterm.model.cpu import native
from chatterm.model.cpu.linear import TiedEmbedding
from chatterm.model.cpu.native_linear import Q8Linear
from chatterm.model.cpu.torch_quantized import Int4Linear, Int8Linear, dequantized_reference, quantize_linear
from chatterm.session.backends.local import LocalBackend

pytestmark = pytest.mark.skipif(not hasattr(torch.ops.aten, "_weight_int4pack_mm_for_cpu"), reason="no weight-only kernels")


def linear(n_in, n_out, bias=True, seed=0):
    torch.manual_seed(seed)
    return nn.Linear(n_in, n_out, bias=bias)


@pytest.mark.parametrize("bits,kind", [(8, Int8Linear), (4, Int4Linear)])
@pytest.mark.parametrize("bias", [True, False])
def test_quantized_linear_computes_the_dequantized_matmul(bits, kind, bias):
    layer = linear(128, 96, bias)
    quantized = quantize_linear(layer, bits)
    assert isinstance(quantized, kind)
    x = torch.randn(2, 5, 128, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        want = F.linear(x, dequantized_reference(layer.weight, bits), layer.bias)
        got = quantized(x)
        plain = layer(x)
    assert got.shape == want.shape and got.dtype == x.dtype
    scale = float(want.abs().max())
    assert float((got - want).abs().max()) < 0.02 * scale  # bf16 activations inside the kernel
    # and the quantization itself stays close to the float layer (8 bits much closer than 4)
    assert float((got - plain).abs().max()) < (0.03 if bits == 8 else 0.2) * scale


def test_int4_falls_back_to_int8_where_its_shape_rules_fail():
    assert isinstance(quantize_linear(linear(100, 64), 4), Int8Linear)  # 100 inputs: not groups of 32
    assert isinstance(quantize_linear(linear(64, 40), 4), Int8Linear)  # 40 outputs: not a multiple of 16


@pytest.mark.parametrize("bits", [8, 4])
def test_tied_embedding_reads_the_one_int8_table(parrot, bits):
    model = copy.deepcopy(parrot[0])
    embedding = model.transformer.wte.weight.detach().clone()
    assert pack_linears(model, bits) == 9  # 2 layers x 4 linears + the output projection
    wte = model.transformer.wte
    assert isinstance(wte, TiedEmbedding) and wte.table is model.lm_head
    assert isinstance(model.lm_head, Q8Linear if native.library() else Int8Linear)  # 8 bits at int4 too
    assert not any(isinstance(m, nn.Linear) for m in model.modules())
    ids = torch.tensor([[3, 70, 200]])
    rows = wte(ids)[0]
    assert float((rows - embedding[ids[0]]).abs().max()) < 0.01 * float(embedding.abs().max())


@pytest.mark.parametrize("bits", [8, 4])
def test_parrot_recites_the_same_tokens_quantized(parrot, bits):
    model, tok = parrot

    def greedy(m, n=40):
        ids = tok.encode("User: hi\nAssistant:")
        with torch.inference_mode():
            for _ in range(n):
                ids.append(int(m(torch.tensor([ids]))[0, -1].argmax()))
        return ids

    want = greedy(model)
    assert "hello there, friend" in tok.decode(want)
    quantized = copy.deepcopy(model)
    assert pack_linears(quantized, bits) > 0
    assert greedy(quantized) == want


@pytest.mark.slow
def test_dtype_int8_loads_through_the_command_line(parrot_checkpoint):
    r = subprocess.run(
        [sys.executable, "-m", "chatterm", "generate", str(parrot_checkpoint), "--dtype", "int8", "--prompt", "-",
         "--chat", "--temperature", "0"],
        input="hi", capture_output=True, text=True, timeout=120, env=dict(os.environ),
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "hello there, friend"


def test_backend_reports_the_quantized_dtype_and_refuses_other_devices(parrot_checkpoint):
    backend = LocalBackend.load(parrot_checkpoint, dtype="int4")
    assert backend.info.dtype == "int4"
    import torch

    from chatterm.model.device import pick_precision

    with pytest.raises(ValueError, match="CPU only"):  # checked before any GPU is touched
        pick_precision("int8", torch.device("cuda"))


def test_gguf_q8_0_file_quantized_to_int8_matches_its_dequantized_model(tmp_path):
    pytest.importorskip("gguf")
    from tiny_llama import hf_model, write_gguf

    path = write_gguf(tmp_path / "q8.gguf", hf_model("llama", seed=3), "llama", qtype="Q8_0")
    dequantized = LocalBackend.load(path).generator.model
    quantized = LocalBackend.load(path, dtype="int8").generator.model
    assert isinstance(quantized.layers[0].mlp.down, Q8Linear if native.library() else Int8Linear)
    ids = torch.tensor([[5, 77, 120, 33, 260, 9, 41]])
    with torch.inference_mode():
        want, got = dequantized(ids)[0], quantized(ids)[0]
    assert float((got - want).abs().max()) < 0.02 * float(want.abs().max())
    assert torch.equal(got.argmax(-1), want.argmax(-1))


@pytest.mark.parametrize("qtype", ["Q4_0", "Q4_1"])
def test_int4_puts_gguf_q4_weights_back_on_their_own_grid(qtype):
    gguf = pytest.importorskip("gguf")
    import numpy as np

    from chatterm.model.cpu.torch_quantized import quantize_int4

    rows = np.random.default_rng(0).standard_normal((32, 128)).astype(np.float32)
    kind = gguf.GGMLQuantizationType[qtype]
    weight = torch.from_numpy(np.ascontiguousarray(gguf.quants.dequantize(gguf.quants.quantize(rows, kind), kind)))
    q, scale, zero = quantize_int4(weight)
    rebuilt = ((q.view(32, 4, 32).float() - 8) * scale[..., None] + zero[..., None]).view(32, 128)
    assert float((rebuilt - weight).abs().max()) < 1e-5  # exact but for float rounding
