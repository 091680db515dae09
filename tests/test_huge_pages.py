"""A model's kernel weights moved into one huge-page arena (model/cpu/huge_pages.py): the layers
compute exactly what they computed, every buffer is a view of one 2 MB-aligned block in the
model's order, nothing keeps the old copies, and a model decodes the same with and without it."""

import copy
import weakref

import pytest
import torch
import torch.nn as nn

from chatterm.model.cpu import huge_pages, native
from chatterm.model.cpu.native_linear import Bf16Linear, NativeLinear, Q4Linear, Q8Linear

pytestmark = [pytest.mark.skipif(native.library() is None, reason=f"no native kernels: {native.unavailable_reason()}"),
              pytest.mark.skipif(not huge_pages.available(), reason="no transparent huge pages here")]


def _layers():
    torch.manual_seed(0)
    return nn.Sequential(Q8Linear.from_linear(nn.Linear(1024, 1024)), Q4Linear.from_linear(nn.Linear(1024, 1000)),
                         Bf16Linear.from_linear(nn.Linear(1000, 512)), Q8Linear.from_linear(nn.Linear(512, 96)))


def test_weights_move_into_one_aligned_arena_and_compute_the_same():
    model = _layers()
    x = torch.randn(1, 1024, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        want = model(x)
    old = weakref.ref(model[0].weight)
    moved = huge_pages.move_weights(model)
    assert old() is None  # nothing kept the old copy
    buffers = [t for layer in model for t in layer._buffers.values() if t is not None]
    assert moved >= sum(t.numel() * t.element_size() for t in buffers) > huge_pages.HUGE_PAGE
    storage = buffers[0].untyped_storage().data_ptr()
    assert all(t.untyped_storage().data_ptr() == storage for t in buffers)  # one block
    assert buffers[0].data_ptr() % huge_pages.HUGE_PAGE == 0
    assert [t.data_ptr() for t in buffers] == sorted(t.data_ptr() for t in buffers)  # in the model's order
    assert not any(t.is_inference() for t in buffers)
    with torch.inference_mode():
        assert torch.equal(model(x), want)
    assert torch.equal(model[0].rows(torch.tensor([3, 5])), model[0].dequantized()[[3, 5]])  # outside inference mode


def test_a_model_too_small_for_a_huge_page_stays_where_it_is():
    layer = Q8Linear.from_linear(nn.Linear(64, 64))
    before = layer.weight
    assert huge_pages.move_weights(nn.Sequential(layer)) == 0 and layer.weight is before


def test_without_memory_to_spare_for_the_copy_nothing_moves(monkeypatch):
    """A model that only just fits stays where it is (the move holds two copies of a buffer)."""
    model = _layers()
    before = model[0].weight
    monkeypatch.setattr(huge_pages, "available_bytes", lambda: 2 * before.numel())  # less than needed
    assert huge_pages.move_weights(model) == 0 and model[0].weight is before


def test_a_fused_decode_step_moves_the_weights_and_decodes_the_same(monkeypatch):
    from test_native_kernels import _decode

    from chatterm.model import GPT, pack_linears
    from chatterm.model.cpu import kernel_choice
    from chatterm.model.families.gpt2 import GPTConfig

    monkeypatch.setenv(kernel_choice.ENV, kernel_choice.offered()[0])  # both on one variant: the same sums,
    config = GPTConfig(n_layer=4, n_head=4, n_embd=256, block_size=64, vocab_size=300)
    model = GPT(config).init_weights(5).eval()
    pack_linears(model, 8)
    kernel_choice.choose(model)  # the prompt's products too (they run before the first fused step chooses)
    twin = copy.deepcopy(model)
    monkeypatch.setattr(huge_pages, "_available", [False])  # the model as it was
    want = _decode(model, [1, 2, 3], 12)
    monkeypatch.setattr(huge_pages, "_available", [True])
    got = _decode(twin, [1, 2, 3], 12)
    assert got[0] == want[0] and torch.equal(got[1], want[1])
    weights = [m.weight for m in twin.modules() if isinstance(m, NativeLinear)]
    assert len({t.untyped_storage().data_ptr() for t in weights}) == 1  # the first step moved them
    assert len({t.untyped_storage().data_ptr() for m in model.modules() if isinstance(m, NativeLinear)
                for t in [m.weight]}) == len(weights)  # and the other model's stayed apart


def test_a_loaded_model_is_ready_before_its_first_prompt(tmp_path, monkeypatch):
    """The loader moves the weights and chooses the variants as the model finishes loading: the
    first prompt's products run on them, and no step after the first token pauses to copy."""
    from test_native_kernels import _decode

    from chatterm.bench_llama import write_gpt2_gguf
    from chatterm.model import GPT, load_checkpoint
    from chatterm.model.cpu import kernel_choice
    from chatterm.model.families.gpt2 import GPTConfig

    source = GPT(GPTConfig(n_layer=4, n_head=4, n_embd=256, block_size=64, vocab_size=300)).init_weights(6).eval()
    write_gpt2_gguf(source, tmp_path / "m.gguf", "Q8_0")
    variant = kernel_choice.offered()[-1]  # the last offered: not what the library starts on
    monkeypatch.setenv(kernel_choice.ENV, variant)
    model = load_checkpoint(tmp_path / "m.gguf", inference=True).model
    assert kernel_choice.current("q8") == variant
    weights = [m.weight for m in model.modules() if isinstance(m, NativeLinear)]
    assert len({t.untyped_storage().data_ptr() for t in weights}) == 1  # one arena, already
    where = [t.data_ptr() for t in weights]
    _decode(model, [1, 2, 3], 4)
    assert [m.weight.data_ptr() for m in model.modules() if isinstance(m, NativeLinear)] == where  # not moved again
