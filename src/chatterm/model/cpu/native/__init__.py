"""chatterm's own CPU kernels (the C files here), built at first use and called via ctypes.

Why native code: PyTorch's weight-only int8/int4 kernels widen the weights to floats inside the
loop, and its bf16 matrix-vector product has no bf16 instructions to use on an AVX2 CPU; both
end up well below what the memory bus allows (BENCHMARKS.md, issue 16). kernels.c does what
llama.cpp does: bf16 weights widened in registers, and 8/4-bit weights multiplied by 8-bit
activations in integers, with AVX2, AVX-VNNI or AVX-512 (VNNI) loops.

How: the C files ship with the package. `library()` compiles them into one library once per
(sources, compiler, CPU) with the system C compiler (`$CC`, else gcc, else cc) into the user's
cache folder (`$CHATTERM_CACHE_DIR`, else platformdirs' cache dir), atomically, and loads it:
kernels.c and kquants.c (attention, the fused decode step, unpacking, the dispatch) for this CPU
(-march=native), and variant.c (the matrix-vector loops of gemv.c and kquants.c) once per entry
of VARIANTS with exactly that variant's flags, so each variant is the code it names whatever
the build machine; which one each family uses is chosen by measuring (kernel_choice.py). A
variant the compiler cannot build (an older gcc without -mavxvnni) is left out. No compiler, a
failed build, a non-Linux OpenMP runtime or `CHATTERM_NATIVE=0`: `library()` is None and
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
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from ....atomic import atomic_write
from ....cache_folder import cache_folder

HERE = Path(__file__).parent
# Every C file here is hashed into the build key, the header too (a change to any is a new build).
SOURCES = sorted(HERE.glob("*.c"))
HEADERS = sorted(HERE.glob("*.h"))
BASE_SOURCES = [HERE / "kernels.c", HERE / "kquants.c"]  # built for this CPU; variant.c includes the rest
FLAGS = ["-O3", "-fPIC", "-fopenmp", "-fno-math-errno"]
NATIVE_FLAGS = ["-march=native"]
_AVX2 = ["-mavx2", "-mfma", "-mf16c"]
_AVX512 = [*_AVX2, "-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq"]
# name -> the flags variant.c is compiled with for it (common.h's CT_VARIANT_LIST: the same
# names, in the order of preference before anything is measured). On other processors only
# the portable C is built.
X86_VARIANTS = {
    "avx512vnni": [*_AVX512, "-mavx512vnni"],  # 512-bit loops; q8 takes two weight rows per pass over x
    "avx512vnni_1row": [*_AVX512, "-mavx512vnni", "-DCT_ONE_ROW"],  # the same, one row at a time
    "avx512vnni_256": [*_AVX512, "-mavx512vnni", "-DCT_WIDTH256", "-mprefer-vector-width=256"],  # 256-bit dpbusd
    "avx512": _AVX512,  # AVX-512 without VNNI (Skylake-X): 512-bit float loops, AVX2's integer ones
    "avxvnni": [*_AVX2, "-mavxvnni"],  # 256-bit dpbusd without AVX-512 (Alder Lake, Zen 5 client)
    "avx2": _AVX2,  # q8 two rows a pass, as avx512vnni
    "avx2_1row": [*_AVX2, "-DCT_ONE_ROW"],
    "scalar": [],
}
VARIANTS = X86_VARIANTS if platform.machine().lower() in ("x86_64", "amd64") else {"scalar": []}
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


def build_name() -> str:
    """The loaded library's name (kernels-<build key>): changes with its sources, compiler and CPU."""
    library()
    return _state.get("build", "")


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
    path = cache_dir() / f"kernels-{_build_key(compiler)}.so"
    if not path.exists():
        _build(compiler, path)
    try:
        lib = ctypes.CDLL(str(path))
    except OSError as e:
        raise _Unavailable(f"cannot load {path.name}: {e}") from e
    _state["build"] = path.stem
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
    digest.update(" ".join([*FLAGS, *NATIVE_FLAGS]).encode())
    digest.update(repr(sorted(VARIANTS.items())).encode())
    try:
        version = subprocess.run([compiler, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError) as e:
        raise _Unavailable(f"{compiler} does not run: {e}") from e
    digest.update(version.encode())
    digest.update(cpu_identity().encode())
    return digest.hexdigest()[:16]


def cpu_has(flag: str) -> bool:
    """Whether this CPU lists `flag` (e.g. "amx_bf16") among its features in /proc/cpuinfo."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            return any(line.startswith("flags") and flag in line.split() for line in f)
    except OSError:
        return False


def cpu_identity() -> str:
    """The CPU's model name and a hash of its feature flags (/proc/cpuinfo): what a build for
    -march=native and a measured kernel choice hold for. Both, since a model name can stand for
    CPUs with different flags (a cloud VM's "Intel(R) Xeon(R) Processor")."""
    model, flags = "", ""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("model name") and not model:
                    model = line.partition(":")[2].strip()
                elif line.startswith(("flags", "Features")) and not flags:
                    flags = line.partition(":")[2].strip()
    except OSError:
        pass
    return f"{model or platform.processor() or 'unknown CPU'} flags:{hashlib.sha256(flags.encode()).hexdigest()[:12]}"


def cache_dir() -> Path:
    """Where the built library (and kernel_choice's measurements) live."""
    return cache_folder("kernels")


def _build(compiler: str, path: Path, native_flags: list[str] | None = None) -> None:
    """The library at `path`: the base sources with `native_flags` (default NATIVE_FLAGS; [] is
    the portable build), each variant with its own flags, compiled side by side, then linked."""
    native_flags = NATIVE_FLAGS if native_flags is None else native_flags

    def compile_object(args: list[str], out: str) -> str:
        try:
            done = subprocess.run([compiler, *FLAGS, "-c", *args, "-o", out], capture_output=True, text=True, timeout=300)
        except (OSError, subprocess.SubprocessError) as e:
            return f"{compiler} failed: {e}"
        return "" if done.returncode == 0 else (done.stderr.strip().splitlines() or ["no output"])[0][:200]

    def build_to(tmp: str) -> None:
        with tempfile.TemporaryDirectory() as objects:
            base = [([*native_flags, str(source)], f"{objects}/{source.stem}.o") for source in BASE_SOURCES]
            variants = [([*flags, f"-DCT_VARIANT={name}", str(HERE / "variant.c")], f"{objects}/variant-{name}.o")
                        for name, flags in VARIANTS.items()]
            with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
                errors = list(pool.map(lambda job: compile_object(*job), base + variants))
            failed_base = next((e for e in errors[:len(base)] if e), "")
            if failed_base:
                raise _Unavailable(f"{compiler} failed to build the kernels: {failed_base}")
            built = [out for (_, out), error in zip(variants, errors[len(base):]) if not error]
            if not built:
                raise _Unavailable(f"{compiler} failed to build any kernel variant: {errors[len(base)]}")
            try:
                done = subprocess.run([compiler, "-shared", "-fopenmp", *(out for _, out in base), *built, "-o", tmp,
                                       "-lm"], capture_output=True, text=True, timeout=300)
            except (OSError, subprocess.SubprocessError) as e:
                raise _Unavailable(f"{compiler} failed: {e}") from e
            if done.returncode != 0:
                first = (done.stderr.strip().splitlines() or ["no output"])[0]
                raise _Unavailable(f"{compiler} failed to link the kernels: {first[:200]}")

    try:
        atomic_write(path, build_to, new_mode=0o644)
    except OSError as e:
        raise _Unavailable(f"cannot write {path}: {e.strerror or e}") from e


def declare(lib):
    """`lib` with the C signatures of kernels.c's functions set (ctypes does not know them)."""
    p, i64, i32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
    lib.ct_variant_count.restype = i32
    lib.ct_variant_name.argtypes = [i32]
    lib.ct_variant_name.restype = ctypes.c_char_p
    lib.ct_variant_supported.argtypes = [i32]
    lib.ct_variant_supported.restype = i32
    lib.ct_variant_set.argtypes = [i32, i32]
    lib.ct_variant_set.restype = i32
    lib.ct_variant_get.argtypes = [i32]
    lib.ct_variant_get.restype = i32
    lib.ct_linear_bf16.argtypes = [p, p, p, p, i64, i64, i64, i32]
    lib.ct_linear_bf16.restype = None
    lib.ct_linear_q8.argtypes = [p, p, p, p, p, p, i64, i64, i64, i32]
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
    lib.ct_dequant_q8.argtypes = [p, p, p, p, i64, i64, i32]
    lib.ct_dequant_q4.argtypes = [p, p, p, p, i64, i64, i32]
    lib.ct_attend_one.argtypes = [p, i64, p, p, i64, i64, p, i64, i64, i64, i64, ctypes.c_float, i32, i32]
    lib.ct_attend_one.restype = i32
    f32 = ctypes.c_float
    lib.ct_gpt2_layers_step.argtypes = [p, i64, f32, p, i64, i64, i64, i64, i32, p, p, i32]
    lib.ct_gpt2_layers_step.restype = i32
    lib.ct_llama_layers_step.argtypes = [p, i64, f32, p, p, p, i64, i64, i64, i64, i64, i32, p, p, p, i32]
    lib.ct_llama_layers_step.restype = i32
    for name in ("ct_dequant_bf16", "ct_dequant_f16", "ct_dequant_q8", "ct_dequant_q4", "ct_dequant_kq", "ct_dequant_iq4nl"):
        getattr(lib, name).restype = None
    return lib
