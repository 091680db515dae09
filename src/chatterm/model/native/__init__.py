"""chatterm's own CPU matrix-vector kernels (kernels.c), built at first use and called via ctypes.

Why native code: PyTorch's weight-only int8/int4 kernels widen the weights to floats inside the
loop, and its bf16 matrix-vector product has no bf16 instructions to use on an AVX2 CPU; both
end up well below what the memory bus allows (BENCHMARKS.md, issue 16). kernels.c does what
llama.cpp does: bf16 weights widened in registers, and 8/4-bit weights multiplied by 8-bit
activations in integers, with AVX2 or, where `-march=native` finds it, AVX-512 VNNI.

How: the C files (kernels.c; kquants.c for GGUF's K-quants; common.h between them) ship with the
package. `library()` compiles them into one library once per (sources, compiler, CPU)
with the system C compiler (`$CC`, else gcc, else cc) into the user's cache folder
(`$CHATTERM_CACHE_DIR`, else platformdirs' cache dir), atomically, and loads it. No compiler,
a failed build, a non-Linux OpenMP runtime or `CHATTERM_NATIVE=0`: `library()` is None and
callers keep PyTorch's kernels (`unavailable_reason()` says why). The library links libgomp by
its soname, which torch has already loaded, so these loops share torch's OpenMP thread pool
instead of starting a second one that would spin against it on a 2-core machine.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import threading
from pathlib import Path

from ...atomic import atomic_write

# Every C file here goes into the one library; the header is hashed too (a change to it is a new build).
SOURCES = sorted(Path(__file__).parent.glob("*.c"))
HEADERS = sorted(Path(__file__).parent.glob("*.h"))
FLAGS = ["-O3", "-march=native", "-fPIC", "-shared", "-fopenmp", "-fno-math-errno"]
_lock = threading.Lock()
_state: dict = {}  # "lib": CDLL | None, "reason": str


def library():
    """The loaded kernel library, or None when it cannot be built here (see unavailable_reason)."""
    with _lock:
        if "lib" not in _state:
            try:
                _state["lib"], _state["reason"] = _load(), ""
            except _Unavailable as e:
                _state["lib"], _state["reason"] = None, str(e)
        return _state["lib"]


def unavailable_reason() -> str:
    """Why `library()` is None ("" when it is not)."""
    library()
    return _state["reason"]


class _Unavailable(Exception):
    pass


def _load():
    if os.environ.get("CHATTERM_NATIVE", "1").strip().lower() in ("0", "no", "off", "false"):
        raise _Unavailable("turned off by CHATTERM_NATIVE=0")
    if platform.system() != "Linux":
        raise _Unavailable("native kernels are built on Linux only")  # OpenMP runtimes differ elsewhere
    compiler = _compiler()
    path = _cache_dir() / f"kernels-{_build_key(compiler)}.so"
    if not path.exists():
        _build(compiler, path)
    try:
        lib = ctypes.CDLL(str(path))
    except OSError as e:
        raise _Unavailable(f"cannot load {path.name}: {e}") from e
    return declare(lib)


def _compiler() -> str:
    for name in (os.environ.get("CC"), "gcc", "cc"):
        if name and shutil.which(name):
            return shutil.which(name)
    raise _Unavailable("no C compiler (install gcc, or set CC)")


def _build_key(compiler: str) -> str:
    """Changes with the sources, the flags, the compiler and the CPU (-march=native)."""
    digest = hashlib.sha256()
    for source in (*SOURCES, *HEADERS):
        digest.update(source.name.encode() + b"\0" + source.read_bytes())
    digest.update(" ".join(FLAGS).encode())
    try:
        version = subprocess.run([compiler, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError) as e:
        raise _Unavailable(f"{compiler} does not run: {e}") from e
    digest.update(version.encode())
    digest.update(_cpu_flags().encode())
    return digest.hexdigest()[:16]


def cpu_has(flag: str) -> bool:
    """Whether this CPU lists `flag` (e.g. "amx_bf16") among its features in /proc/cpuinfo."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            return any(line.startswith("flags") and flag in line.split() for line in f)
    except OSError:
        return False


def _cpu_flags() -> str:
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith(("flags", "Features", "model name")):
                    return line
    except OSError:
        pass
    return platform.processor()


def _cache_dir() -> Path:
    from platformdirs import user_cache_dir

    return Path(os.environ.get("CHATTERM_CACHE_DIR") or user_cache_dir("chatterm")) / "kernels"


def _build(compiler: str, path: Path, flags: list[str] = FLAGS) -> None:
    def compile_to(tmp: str) -> None:
        try:
            done = subprocess.run([compiler, *flags, *map(str, SOURCES), "-o", tmp, "-lm"],
                                  capture_output=True, text=True, timeout=300)
        except (OSError, subprocess.SubprocessError) as e:
            raise _Unavailable(f"{compiler} failed: {e}") from e
        if done.returncode != 0:
            first = (done.stderr.strip().splitlines() or ["no output"])[0]
            raise _Unavailable(f"{compiler} failed to build the kernels: {first[:200]}")

    try:
        atomic_write(path, compile_to, new_mode=0o644)
    except OSError as e:
        raise _Unavailable(f"cannot write {path}: {e.strerror or e}") from e


def declare(lib):
    """`lib` with the C signatures of kernels.c's functions set (ctypes does not know them)."""
    p, i64, i32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
    lib.ct_has_avx2.restype = i32
    lib.ct_linear_bf16.argtypes = [p, p, p, p, i64, i64, i64, i32]
    lib.ct_linear_bf16.restype = None
    lib.ct_linear_q8.argtypes = [p, p, p, p, p, i64, i64, i64, i32]
    lib.ct_linear_q8.restype = i32
    lib.ct_linear_q4.argtypes = [p, p, p, p, p, p, i64, i64, i64, i32]
    lib.ct_linear_q4.restype = i32
    lib.ct_linear_f16.argtypes = [p, p, p, p, i64, i64, i64, i32]
    lib.ct_linear_f16.restype = None
    lib.ct_linear_kq.argtypes = [i32, p, p, p, p, i64, i64, i64, i32]
    lib.ct_linear_kq.restype = i32
    lib.ct_linear_iq4nl.argtypes = [p, p, p, p, p, i64, i64, i64, i32]
    lib.ct_linear_iq4nl.restype = i32
    lib.ct_dequant_bf16.argtypes = [p, p, i64, i64, i32]
    lib.ct_dequant_f16.argtypes = [p, p, i64, i64, i32]
    lib.ct_dequant_kq.argtypes = [i32, p, p, i64, i64, i32]
    lib.ct_dequant_iq4nl.argtypes = [p, p, p, i64, i64, i32]
    lib.ct_dequant_q8.argtypes = [p, p, p, i64, i64, i32]
    lib.ct_dequant_q4.argtypes = [p, p, p, p, i64, i64, i32]
    lib.ct_attend_one.argtypes = [p, i64, p, p, i64, i64, p, i64, i64, i64, i64, ctypes.c_float, i32, i32]
    lib.ct_attend_one.restype = i32
    f32 = ctypes.c_float
    lib.ct_gpt2_layers_step.argtypes = [p, i64, f32, p, i64, i64, i64, i64, i32, i32]
    lib.ct_gpt2_layers_step.restype = i32
    lib.ct_llama_layers_step.argtypes = [p, i64, f32, p, p, p, i64, i64, i64, i64, i64, i32, i32]
    lib.ct_llama_layers_step.restype = i32
    for name in ("ct_dequant_bf16", "ct_dequant_f16", "ct_dequant_q8", "ct_dequant_q4", "ct_dequant_kq", "ct_dequant_iq4nl"):
        getattr(lib, name).restype = None
    return lib
