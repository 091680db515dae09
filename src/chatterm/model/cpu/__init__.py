"""The CPU layers and kernels: the one seam between the model and the processor.

- `native/`: chatterm's C kernels (gemv.c: bf16, f16, q8, q4, iq4nl; kquants.c: the K-quants
  and IQ4_XS; both built once per instruction-set variant through variant.c; kernels.c:
  attention, the fused decode step and the dispatch to each family's variant), built at first use;
- `kernel_choice.py`: which variant each family runs, measured on the model's shapes and cached;
- `huge_pages.py`: the kernel layers' weights moved into one block of 2 MB pages;
- `native_linear.py`: the layers over them, and `stored_layer`, which turns a GGUF tensor's
  blocks into the layer that computes with them as stored;
- `native_blocks.py`, `native_attention.py`: a decode step's blocks and attention in one call;
- `linear.py`: which layer a linear becomes (oneDNN-packed fp32, the kernels' layers,
  PyTorch's weight-only int8/int4 in `torch_quantized.py` where the kernels do not build).
"""
