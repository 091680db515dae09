"""Build a family's module from a tensor source, each tensor going straight into its final layer.

The module is built empty on the meta device; then, one linear layer at a time, its stored
tensors are read, stacked where the family fuses them (q, k, v), and turned into the layer that
will compute with them: on the CPU, chatterm's kernels on the blocks as stored (Q8_0, Q4_0,
Q4_1, Q5_0 and Q5_1 as Q8_0, the K-quants, F16, BF16: `stored.stored_layer`), oneDNN for fp32,
and readied as it finishes (cpu/ready.py: huge pages, the kernel variants chosen). A type without a
kernel is dequantized to bf16 for that one tensor; nothing passes through an fp32 copy of the
model unless the user asks for `--dtype fp32`. Sources read each tensor into memory of its own
(GGUF with pread, not through the map), which the layer keeps or copies from, so a load peaks at
about the model's final size plus one tensor.

`precision`: None keeps each tensor as stored (the default); "fp32", "bf16", "fp16", "int8",
"int4" convert, one tensor at a time. `inference=False` (training, `convert`) or a device other
than the CPU gives plain torch layers in a float dtype instead.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from .cpu import native
from .cpu.linear import TiedEmbedding, float_linear_layer, quantized_layer, replace_module, return_freed_memory
from .cpu.native_linear import stack_layers
from .cpu.ready import ready
from .cpu.stored import has_kernel, stored_layer
from .errors import CheckpointError
from .families import Family, Sources, TensorMap
from .formats.gguf import StoredTensor, dequantize

FLOAT_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
QUANTIZED_BITS = {"int8": 8, "int4": 4}


def check_config_matches(config, source, where: Path) -> None:
    """Refuse, before anything is built, a config that describes more weights than the file
    holds: a config from a stranger (10^8 layers, a 10^5-token learned position table) must not
    cost minutes building an empty module, and it is the config's fault, not the machine's."""
    stored = sum(_numel(source, name) for name in source.names())
    claimed = config.num_params()
    # Twice what is stored, and then some: a config off by a layer still reaches the per-tensor
    # checks below, whose message names the tensor; this one is for configs that are absurd.
    if claimed > 2 * stored + 2**20:
        raise CheckpointError(
            f"{where}: its config describes {claimed:,} parameters ({config.n_layer:,} layers, width "
            f"{config.n_embd:,}), and the weights hold {stored:,}: the config does not match the weights "
            "(a wrong or damaged config, or a truncated file)"
        )


def empty_model(family: Family, config) -> nn.Module:
    """The family's module on the meta device, its initialisers skipped: on meta they only
    cost time (nn.init.normal_ there goes through torch._refs and imports torch._dynamo,
    2.7 s of a 1B model's start)."""
    from unittest import mock

    skipped = ("normal_", "uniform_", "kaiming_uniform_", "trunc_normal_", "zeros_", "ones_", "constant_")
    with torch.device("meta"), mock.patch.multiple(nn.init, **{n: (lambda t, *a, **k: t) for n in skipped}):
        return family.module_class(config)


def check_tensors(model: nn.Module, source, tensor_map: TensorMap, where: Path, *, strict: bool) -> None:
    """Every tensor the module needs is stored, with the shape it needs; `strict`: and nothing
    else is (for in-memory state dicts, where a stray name means the wrong kind of model)."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    for ours, shape in expected.items():
        sources = tensor_map.get(ours)
        present = sources is not None and all(source.has(p.name) for p in sources.parts)
        if not present:
            if sources is not None and sources.optional:
                continue
            missing = ours if sources is None else next(p.name for p in sources.parts if not source.has(p.name))
            raise CheckpointError(f"{where}: weights are missing tensor {missing!r}")
        shapes = [source.shape(p.name) for p in sources.parts]
        got = (sum(s[0] for s in shapes), *shapes[0][1:]) if all(len(s) == len(shapes[0]) for s in shapes) else None
        if len(shapes) > 1 and any(s[1:] != shapes[0][1:] for s in shapes):
            got = None
        if got != shape:
            raise CheckpointError(f"{where}: tensor {sources.parts[0].name!r} has shape {shapes[0]}, the config needs {shape}")
    if strict:
        stored = {p.name for s in tensor_map.values() for p in s.parts}
        extra = sorted(n for n in source.names() if n not in stored)
        if extra:
            raise CheckpointError(f"{where}: unexpected tensor {extra[0]!r} (and {len(extra) - 1} more)")


def stored_bytes(model: nn.Module, source, tensor_map: TensorMap, precision: str | None, *, cpu: bool) -> int:
    """The bytes the loaded weights will take: each tensor as stored where it stays so, else at
    the size `precision` gives it (fp32 for stored floats without a kernel)."""
    element = {"fp32": 4, "bf16": 2, "fp16": 2, "int8": 34 / 32, "int4": 20 / 32}.get(precision)
    if cpu and native.library() is None and element is None:
        element = 4  # without the kernels everything is widened to fp32 (PyTorch's layers)
    total = 0
    state = model.state_dict()
    for ours, t in state.items():
        sources = tensor_map.get(ours)
        if ours == "lm_head.weight" and model.config.tie_embeddings and cpu:
            # a tied fp32 table: oneDNN's packed projection holds a reordered copy beside the rows
            sources = tensor_map.get(f"{_tied_embedding_name(model)}.weight")
            if sources is None or not _fp32_stays(source, sources, precision):
                continue
        if sources is None or not all(source.has(p.name) for p in sources.parts):
            continue
        numel = t.numel()
        if element is not None:
            total += int(numel * (element if t.dim() == 2 else 4))
        elif cpu and t.dim() == 2:  # as stored, or bf16 where no kernel takes the type
            total += sum(_held_bytes(source, p.name) if _kept_as_stored(source, p.name) else 2 * numel // len(sources.parts)
                         for p in sources.parts)
        else:
            total += numel * 4
    return total


def _tied_embedding_name(model: nn.Module, output: nn.Module | None = None) -> str:
    """The name of the embedding sharing its weight with the output projection (`output`, when
    the model's own has already been replaced)."""
    weight = (output or model.lm_head).weight
    return next(n for n, m in model.named_modules() if isinstance(m, nn.Embedding) and m.weight is weight)


def _fp32_stays(source, sources: Sources, precision: str | None) -> bool:
    """Whether the tensor will be held as fp32 (stored so and kept, or asked for)."""
    if precision == "fp32":
        return True
    if precision is not None:
        return False
    info = getattr(source, "tensors", {}).get(sources.parts[0].name)
    return (info.type_name == "F32") if info is not None else source.nbytes(sources.parts[0].name) >= 4 * _numel(source, sources.parts[0].name)


def _numel(source, name: str) -> int:
    n = 1
    for d in source.shape(name):
        n *= int(d)
    return n


def _held_bytes(source, name: str) -> int:
    """Bytes a stored tensor takes in its layer: its own, but Q4_0 gains Q4_1's offset plane and
    Q5_0 and Q5_1 are held as Q8_0 (34 bytes a block of 32, not 22; with Q5_1's offsets 36, not 24)."""
    info = getattr(source, "tensors", {}).get(name)
    grows = {"Q4_0": (20, 18), "Q5_0": (34, 22), "Q5_1": (36, 24)}.get(info.type_name) if info is not None else None
    return source.nbytes(name) * grows[0] // grows[1] if grows else source.nbytes(name)


def _kept_as_stored(source, name: str) -> bool:
    info = getattr(source, "tensors", {}).get(name)
    return info is None or info.type_name == "F32" or has_kernel(info.type_name)


def assemble(family: Family, model: nn.Module, source, tensor_map: TensorMap, where: Path, *,
             precision: str | None = None, device: torch.device = torch.device("cpu"), inference: bool = True,
             strict: bool = False, progress=None) -> nn.Module:
    """`model` (the family's `empty_model`) with every tensor read from `source` (see the
    module docstring). Names and shapes are checked before anything is read."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # loading is thousands of small copies: each would wake the OpenMP team
    try:
        return _assemble(family, model, source, tensor_map, where, precision, device, inference, strict, progress)
    finally:
        torch.set_num_threads(threads)


def _assemble(family, model, source, tensor_map, where, precision, device, inference, strict, progress):
    config = model.config
    check_tensors(model, source, tensor_map, where, strict=strict)
    if config.tie_embeddings:  # the output projection is read from the embedding's rows
        tensor_map = {**tensor_map, "lm_head.weight": tensor_map[f"{_tied_embedding_name(model)}.weight"]}
    cpu_kernels = inference and device.type == "cpu"
    targets = [(n, m) for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Embedding))]
    done = 0
    for name, module in targets:
        if progress is not None and done % 8 == 0:
            progress("reading weights", done / len(targets))
        done += 1
        if isinstance(module, nn.Embedding):
            if config.tie_embeddings and module.weight is model.lm_head.weight:
                continue  # made with the output projection
            weight = _read(source, tensor_map[f"{name}.weight"])
            replace_module(model, name, _embedding(weight, precision, cpu_kernels, device))
            continue
        weight = _read(source, tensor_map[f"{name}.weight"])
        bias_sources = tensor_map.get(f"{name}.bias")
        bias = None
        if module.bias is not None and bias_sources is not None and all(source.has(p.name) for p in bias_sources.parts):
            bias = _as_float(_read(source, bias_sources), torch.float32)
        layer = _linear(weight, bias, precision) if cpu_kernels else \
            _plain_linear(weight, bias, _plain_dtype(weight, precision, device), device)
        replace_module(model, name, layer)
        if config.tie_embeddings and name == "lm_head":
            replace_module(model, _tied_embedding_name(model, module), _tied_embedding(layer, weight))
        for p in tensor_map[f"{name}.weight"].parts:
            source.release(p.name)
    _read_the_rest(model, source, tensor_map, precision, cpu_kernels, device)
    if progress is not None:
        progress("weights read", 1.0)
    return_freed_memory()
    model.eval()
    family.after_load(model)
    if cpu_kernels:
        model.kv_cache_dtype = cache_dtype(precision, device, inference)
        ready(model)  # huge pages, kernel variants: before the first prompt, not after its first token
    return model


def cap_context(model: nn.Module, context: int | None, family: Family) -> None:
    """Shrink a loaded model's window to `context` positions (a no-op when it is already smaller)."""
    if context and context < model.config.block_size:
        model.config = replace(model.config, block_size=int(context))
        family.after_load(model)


# -- reading one tensor ------------------------------------------------------------------------


def _read(source, sources: Sources):
    """One of our tensors from its stored parts, rows stacked: a torch tensor, a StoredTensor
    (all parts quantized in one type), or a list of parts when their types differ (a Q4_K_M file
    keeps some layers' v projection in Q6_K beside Q4_K q and k)."""
    stacked = _read_stacked(source, sources)
    if stacked is not None:
        return stacked
    parts = []
    for part in sources.parts:
        value = source.get(part.name)
        if part.unpermute_heads:
            value = _unpermute(value, part.unpermute_heads)
        if part.offset:
            value = _as_float(value, torch.float32) + part.offset
        parts.append(value)
    groups = [[parts[0]]]  # runs of parts of one kind, stacked together
    for part in parts[1:]:
        if _kind(part) == _kind(groups[-1][-1]):
            groups[-1].append(part)
        else:
            groups.append([part])
    stacked = [_stack(g) for g in groups]
    if len(stacked) == 1:
        return stacked[0]
    if all(isinstance(p, torch.Tensor) for p in stacked):  # float parts of different dtypes
        return torch.cat([p.float() for p in stacked])
    return stacked


def _read_stacked(source, sources: Sources) -> StoredTensor | None:
    """Parts quantized in one type, read by the source straight into one array (GGUF's
    read_into): q, k and v, or gate and up, without a copy to stack them. None otherwise."""
    infos = [getattr(source, "tensors", {}).get(p.name) for p in sources.parts]
    if len(infos) < 2 or not hasattr(source, "read_into") or any(i is None for i in infos) \
            or len({i.type_name for i in infos}) != 1 or infos[0].type_name in ("F32", "F16", "BF16"):
        return None
    row_bytes = {i.nbytes // i.shape[0] for i in infos}
    if len(row_bytes) != 1 or any(len(i.shape) != 2 for i in infos):
        return None
    rows = sum(i.shape[0] for i in infos)
    out = np.empty((rows, row_bytes.pop()), dtype=np.uint8)
    start = 0
    for part, info in zip(sources.parts, infos):
        piece = out[start:start + info.shape[0]]
        source.read_into(part.name, piece)
        if part.unpermute_heads:
            piece[:] = _unpermute(StoredTensor(info.type_name, info.shape, piece), part.unpermute_heads).raw
        start += info.shape[0]
    return StoredTensor(infos[0].type_name, (rows, infos[0].shape[1]), out)


def _kind(value) -> str:
    return value.type_name if isinstance(value, StoredTensor) else str(value.dtype)


def _stack(parts: list):
    """Parts of one kind, rows stacked: float tensors, or rows of blocks of one type."""
    if len(parts) == 1:
        return parts[0]
    if isinstance(parts[0], torch.Tensor):
        return torch.cat(parts)
    rows = sum(p.shape[0] for p in parts)
    return StoredTensor(parts[0].type_name, (rows, *parts[0].shape[1:]), np.concatenate([p.raw for p in parts]))


def _unpermute(value, n_head: int):
    """Undo llama.cpp's q/k row order (rows 2i, 2i+1 of a head rotate together; we keep halves:
    i and i + hs/2): a row permutation, the same on float rows and on rows of quantized blocks."""
    def permute(a):
        rows = a.shape[0]
        return a.reshape(n_head, rows // n_head // 2, 2, *a.shape[1:]).swapaxes(1, 2).reshape(a.shape)

    if isinstance(value, StoredTensor):
        return StoredTensor(value.type_name, value.shape, np.ascontiguousarray(permute(value.raw)))
    return permute(value).contiguous()


def _as_float(value, dtype: torch.dtype) -> torch.Tensor:
    if isinstance(value, list):
        return torch.cat([_as_float(v, dtype) for v in value])
    if isinstance(value, StoredTensor):
        return dequantize(value).to(dtype)
    return value.to(dtype)


# -- the final layers ---------------------------------------------------------------------------


def _linear(weight, bias: torch.Tensor | None, precision: str | None) -> nn.Module:
    """The CPU layer that computes with `weight` (see the module docstring)."""
    if isinstance(weight, list) and precision is None:  # each part its own layer, with its share of the bias
        ends = np.cumsum([0, *(w.shape[0] for w in weight)])
        return stack_layers([_linear(w, None if bias is None else bias[a:b], precision)
                             for w, a, b in zip(weight, ends[:-1], ends[1:])])
    if precision in QUANTIZED_BITS:
        return quantized_layer(_float_linear(_as_float(weight, torch.float32), bias), QUANTIZED_BITS[precision])
    if precision is None and native.library() is not None:
        layer = _stored_layer(weight, bias)
        if layer is not None:
            return layer
        if isinstance(weight, StoredTensor):  # no kernel for this type: bf16, this tensor only
            return _stored_layer(_as_float(weight, torch.bfloat16), bias)
    dtype = FLOAT_DTYPES.get(precision, torch.float32)
    if dtype != torch.float32:  # 16 bits asked for: chatterm's 16-bit kernel, activations in fp32
        rounded = _as_float(weight, dtype)
        layer = _stored_layer(rounded, bias) if native.library() is not None else None
        # without it, fp32 layers computing with the rounded values: the arithmetic asked for
        return layer if layer is not None else float_linear_layer(_float_linear(rounded.float(), bias))
    return float_linear_layer(_float_linear(_as_float(weight, dtype), bias))


def _stored_layer(weight, bias):
    """chatterm's kernel layer for stored blocks or a 16-bit tensor, or None (fp32, or a type
    without a kernel)."""
    if isinstance(weight, torch.Tensor):
        name = {torch.bfloat16: "BF16", torch.float16: "F16"}.get(weight.dtype)
        if name is None:
            return None
        weight = StoredTensor(name, tuple(weight.shape), weight.contiguous().view(torch.uint8).numpy())
    layer = stored_layer(weight.type_name, weight.raw, weight.shape, bias)
    if layer is not None:
        layer.stored_type = weight.type_name  # for the model's description (linear.weights_label)
    return layer


def _float_linear(weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Linear:
    layer = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, device="meta")
    layer.weight = nn.Parameter(weight, requires_grad=False)
    if bias is not None:
        layer.bias = nn.Parameter(bias.to(weight.dtype), requires_grad=False)
    return layer


def _plain_dtype(weight, precision: str | None, device) -> torch.dtype:
    """The float dtype of a plain (trainable, or GPU) layer: the one asked for, else the stored
    float type (quantized blocks: fp32 on the CPU, bf16 on a GPU)."""
    if precision in FLOAT_DTYPES:
        return FLOAT_DTYPES[precision]
    stored = weight.dtype if isinstance(weight, torch.Tensor) else None
    if device.type == "cpu":
        return torch.float32 if stored in (None, torch.float16) else stored
    return stored if stored in (torch.bfloat16, torch.float16) else torch.bfloat16


def _plain_linear(weight, bias, dtype: torch.dtype, device) -> nn.Linear:
    layer = _float_linear(_as_float(weight, dtype).to(device), None if bias is None else bias.to(device))
    layer.weight.requires_grad_(True)
    if layer.bias is not None:
        layer.bias.requires_grad_(True)
    return layer


def _embedding(weight, precision: str | None, cpu_kernels: bool, device) -> nn.Module:
    """A token (or position) embedding. On the CPU, stored blocks and 16-bit rows stay as they
    are and are read a row at a time (`TiedEmbedding` over a kernel layer): Llama 3's 128k x 2048
    table is 1 GB in fp32 against 140 MB at Q4_K."""
    layer = None
    if cpu_kernels and native.library() is not None and not isinstance(weight, list):
        if precision is None and (isinstance(weight, StoredTensor) or weight.dtype in (torch.bfloat16, torch.float16)):
            layer = _stored_layer(weight, None) or _stored_layer(_as_float(weight, torch.bfloat16), None)
        elif precision in ("bf16", "fp16"):  # the rows in the precision asked for, not fp32
            layer = _stored_layer(_as_float(weight, FLOAT_DTYPES[precision]), None)
        elif precision in QUANTIZED_BITS:  # 8-bit rows at int8 and int4 (the table most sensitive to rounding)
            layer = quantized_layer(_float_linear(_as_float(weight, torch.float32), None), 8)
    if layer is not None and hasattr(layer, "rows"):
        return TiedEmbedding(layer, torch.float32)
    dtype = torch.float32 if cpu_kernels else _plain_dtype(weight, precision, device)
    table = _as_float(weight, dtype).to(device)
    module = nn.Embedding(table.shape[0], table.shape[1], device="meta")
    module.weight = nn.Parameter(table, requires_grad=not cpu_kernels)
    return module


def _tied_embedding(output_layer: nn.Module, weight) -> nn.Module:
    """The embedding of a tied model: rows read from the output projection's layer where it
    can give them (one copy of the vocabulary matrix), else the float matrix itself (a plain
    layer shares it; oneDNN's packed layer holds a reordered copy of its own)."""
    if hasattr(output_layer, "rows"):
        return TiedEmbedding(output_layer, torch.float32)
    module = nn.Embedding(*output_layer.weight.shape, device="meta") if isinstance(output_layer, nn.Linear) \
        else nn.Embedding(output_layer.out_features, output_layer.in_features, device="meta")
    module.weight = output_layer.weight if isinstance(output_layer, nn.Linear) else \
        nn.Parameter(_as_float(weight, torch.float32), requires_grad=False)
    return module


def _read_the_rest(model, source, tensor_map: TensorMap, precision, cpu_kernels: bool, device) -> None:
    """Norms, biases of layers that stayed plain, and anything else still on the meta device:
    fp32 on the CPU for inference (the kernels compute in it), else the plain dtype."""
    for module_name, module in model.named_modules():
        for key, param in list(module._parameters.items()):
            if param is None or not param.is_meta:
                continue
            full = f"{module_name}.{key}" if module_name else key
            sources = tensor_map.get(full)
            if sources is None or not all(source.has(p.name) for p in sources.parts):
                if key == "bias":  # optional and absent: zeros (a textbook model without q/k/v biases)
                    value = torch.zeros(param.shape)
                else:
                    raise CheckpointError(f"weights are missing tensor {full!r}")
            else:
                value = _read(source, sources)
            dtype = torch.float32 if cpu_kernels else _plain_dtype(value, precision, device)
            module._parameters[key] = nn.Parameter(_as_float(value, dtype).to(device).contiguous(),
                                                   requires_grad=not cpu_kernels)


def cache_dtype(precision: str | None, device: torch.device, inference: bool) -> torch.dtype | None:
    """The KV cache's dtype, decided once for the memory check and the loaded model: fp16 on the
    CPU wherever chatterm's kernels run (their attention reads an fp16 cache, as llama.cpp's
    default: half the bytes a long chat's attention reads per token, half the memory), unless
    fp32 was asked for; else the model's own float dtype (None)."""
    if inference and device.type == "cpu" and native.library() is not None and precision != "fp32":
        return torch.float16
    return None
