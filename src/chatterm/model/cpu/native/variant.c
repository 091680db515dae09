/* One variant of the matrix-vector loops: gemv.c's and kquants.c's, compiled by the build
 * (native/__init__.py) once per variant with that variant's instruction-set flags and
 * -DCT_VARIANT=<name>, into a table `ct_kernels_<name>` that kernels.c dispatches through.
 *
 * Why variants and not -march=native: the fastest loop is not always the widest one the CPU
 * has. Zen 4 runs 512-bit instructions as two 256-bit halves, narrow models (SmolLM2's
 * 576-wide rows) gain from sharing x's work over two rows or lose to it, and a new CPU should
 * not need a new rule. So every variant the CPU runs is offered, and the one measured fastest on
 * the model's own shapes is used (model/cpu/kernel_choice.py). */
#ifndef CT_VARIANT
#error "variant.c is compiled with -DCT_VARIANT=<name> (native/__init__.py)"
#endif
#include "gemv.c"
#include "kquants.c"

/* Whether this CPU runs what this file was compiled for: every instruction set the compiler was
 * told it may use (its predefined macros) must be one the CPU (and the OS, for AVX-512's
 * registers: libgcc checks XCR0) supports. */
static int supported(void) {
    int ok = 1;
#if defined(__x86_64__) || defined(__i386__)
    __builtin_cpu_init();
#ifdef __AVX2__
    ok &= __builtin_cpu_supports("avx2") != 0;
#endif
#ifdef __FMA__
    ok &= __builtin_cpu_supports("fma") != 0;
#endif
#ifdef __F16C__
    ok &= __builtin_cpu_supports("f16c") != 0;
#endif
#ifdef __AVX512F__
    ok &= __builtin_cpu_supports("avx512f") != 0;
#endif
#ifdef __AVX512BW__
    ok &= __builtin_cpu_supports("avx512bw") != 0;
#endif
#ifdef __AVX512VL__
    ok &= __builtin_cpu_supports("avx512vl") != 0;
#endif
#ifdef __AVX512DQ__
    ok &= __builtin_cpu_supports("avx512dq") != 0;
#endif
#ifdef __AVX512VNNI__
    ok &= __builtin_cpu_supports("avx512vnni") != 0;
#endif
#ifdef __AVXVNNI__
    ok &= __builtin_cpu_supports("avxvnni") != 0;
#endif
#endif
    return ok;
}

#define CT_CAT2(a, b) a##b
#define CT_CAT(a, b) CT_CAT2(a, b)
#define CT_STR2(a) #a
#define CT_STR(a) CT_STR2(a)

const ct_kernels CT_CAT(ct_kernels_, CT_VARIANT) = {CT_STR(CT_VARIANT), supported, gemv_bf16, gemv_f16, gemv_q8,
                                                    gemv_q4, gemv_iq4nl, gemv_kq};
