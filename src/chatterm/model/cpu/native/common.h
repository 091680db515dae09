/* What the C files of this folder share: the instruction-set switches, fp16/bf16 conversions, a
 * horizontal sum, the table of kernel variants, and the entry points one file calls in another.
 *
 * The build (native/__init__.py) compiles variant.c (gemv.c and kquants.c's loops) once per
 * variant with that variant's instruction-set flags and nothing else, and kernels.c (attention,
 * the fused decode step, unpacking, the dispatch) once for the CPU it runs on; the predefined
 * macros of each compilation choose the paths below: AVX-512 VNNI, AVX-512 (float loops 512
 * bits wide, integer ones AVX2's), 256-bit VNNI (AVX-VNNI, or AVX-512 VNNI kept to 256 bits
 * with CT_WIDTH256: what suits CPUs that run 512-bit instructions as two halves, Zen 4),
 * AVX2 (with FMA and F16C), else the portable scalar C. */
#ifndef CT_COMMON_H
#define CT_COMMON_H
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#include <immintrin.h>
#define CT_AVX2 1
#endif
/* AVX-512 with VNNI (Intel since Cascade Lake, AMD since Zen 4): the same loops twice as wide,
 * and one dpbusd for AVX2's maddubs + madd. Measured on a 2-core Xeon whose 300 MiB L3 holds
 * GPT-2 small's int8 weights, where the loops are compute-bound: BENCHMARKS.md. */
#if defined(CT_AVX2) && defined(__AVX512F__) && defined(__AVX512BW__) && !defined(CT_WIDTH256)
#define CT_AVX512F 1 /* the float (bf16, f16) loops 512 bits wide */
#if defined(__AVX512VNNI__)
#define CT_AVX512 1
#endif
#endif
/* 256-bit dpbusd: AVX-VNNI (VEX, Intel since Alder Lake, AMD since Zen 5) or AVX-512 VNNI with
 * VL. The AVX2 integer loops then do in one instruction what maddubs + madd do in two. */
#if defined(CT_AVX2) && !defined(CT_AVX512) && (defined(__AVXVNNI__) || (defined(__AVX512VNNI__) && defined(__AVX512VL__)))
#define CT_VNNI256 1
#endif

#define BLOCK 32
/* How far ahead of the weight stream the kernels ask for cache lines: the hardware prefetcher
 * alone left a decode step latency-bound (measured: q8 over GPT-2 small's 48 block matrices,
 * one thread, 11.5 ms without, 8.9 ms at 2048 bytes ahead). */
#ifndef PREFETCH_BYTES
#define PREFETCH_BYTES 2048
#endif

static inline float fp16_to_fp32(uint16_t h) {
#ifdef CT_AVX2
    return _cvtsh_ss(h);
#else
    uint32_t sign = (uint32_t)(h & 0x8000) << 16, exp = (h >> 10) & 0x1f, mant = h & 0x3ff, bits;
    if (exp == 0) {
        if (mant == 0) {
            bits = sign;
        } else { /* subnormal: normalise */
            exp = 127 - 15 + 1;
            while (!(mant & 0x400)) { mant <<= 1; exp--; }
            bits = sign | (exp << 23) | ((mant & 0x3ff) << 13);
        }
    } else if (exp == 31) {
        bits = sign | 0x7f800000 | (mant << 13);
    } else {
        bits = sign | ((exp + 127 - 15) << 23) | (mant << 13);
    }
    float f;
    memcpy(&f, &bits, 4);
    return f;
#endif
}

static inline float bf16_to_fp32(uint16_t h) {
    uint32_t bits = (uint32_t)h << 16;
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

#ifdef CT_AVX2
/* sum of u8 times s8 products, four by four into int32 lanes (u <= 127 and |s| <= 127: maddubs's
 * int16 pairs cannot saturate, so both ways give the same integers) */
static inline __m256i dot_u8s8(__m256i u, __m256i s) {
#if defined(CT_VNNI256) && defined(__AVX512VNNI__) && defined(__AVX512VL__)
    return _mm256_dpbusd_epi32(_mm256_setzero_si256(), u, s);
#elif defined(CT_VNNI256)
    return _mm256_dpbusd_avx_epi32(_mm256_setzero_si256(), u, s);
#else
    return _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1));
#endif
}

/* The activations' 8-bit rounding, 32 values at a time: v times inv, rounded to nearest even
 * (cvtps, as lrintf does: the same bytes as the scalar loops), clamped to -127..127, stored in
 * order at out; *first, *last: the sums of the first and the last 16. */
static inline void quantize_32(const float *v, float inv, int8_t *out, int *first, int *last) {
    const __m256i lo = _mm256_set1_epi32(-127), hi = _mm256_set1_epi32(127);
    const __m256 vi = _mm256_set1_ps(inv);
    __m256i q[4];
    for (int j = 0; j < 4; j++)
        q[j] = _mm256_max_epi32(lo, _mm256_min_epi32(hi, _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(v + 8 * j), vi))));
    /* packs work within 128-bit lanes: the permute puts the 32 bytes back in order */
    __m256i bytes = _mm256_packs_epi16(_mm256_packs_epi32(q[0], q[1]), _mm256_packs_epi32(q[2], q[3]));
    _mm256_storeu_si256((__m256i *)out, _mm256_permutevar8x32_epi32(bytes, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7)));
    __m256i a = _mm256_add_epi32(q[0], q[1]), b = _mm256_add_epi32(q[2], q[3]);
    /* the two sums side by side: lanes 0-3 of a + 4-7 of a, then of b */
    __m256i ab = _mm256_add_epi32(_mm256_permute2x128_si256(a, b, 0x20), _mm256_permute2x128_si256(a, b, 0x31));
    ab = _mm256_hadd_epi32(ab, ab);
    ab = _mm256_hadd_epi32(ab, ab);
    *first = _mm256_extract_epi32(ab, 0);
    *last = _mm256_extract_epi32(ab, 4);
}

/* max |v| over n (a multiple of 8) floats, and their sum of v - v: 0, or NaN where one is NaN or inf */
static inline float absmax(const float *v, int64_t n, float *nonfinite) {
    const __m256 sign = _mm256_set1_ps(-0.0f);
    __m256 m = _mm256_setzero_ps(), bad = _mm256_setzero_ps();
    for (int64_t i = 0; i < n; i += 8) {
        __m256 x = _mm256_loadu_ps(v + i);
        m = _mm256_max_ps(m, _mm256_andnot_ps(sign, x)); /* a NaN lane keeps m: `bad` reports it */
        bad = _mm256_add_ps(bad, _mm256_sub_ps(x, x));
    }
    __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
    m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
    m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
    __m128 b4 = _mm_add_ps(_mm256_castps256_ps128(bad), _mm256_extractf128_ps(bad, 1));
    b4 = _mm_add_ps(b4, _mm_movehl_ps(b4, b4));
    *nonfinite = _mm_cvtss_f32(_mm_add_ss(b4, _mm_movehdup_ps(b4)));
    return _mm_cvtss_f32(m4);
}

static inline float hsum(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}
#endif

/* Who shares a product's rows: `nthreads` >= 1 opens a parallel region of that many threads (one
 * thread where the product is small); CT_TEAM means every thread of an enclosing parallel region
 * is calling, each with its own copy of the quantized activations, and the rows are shared among
 * them by orphaned `omp for`s (the fused decode step: one region for a whole step, kernels.c).
 * In a team every thread must reach every `omp for` (its barrier): a thread whose allocation
 * failed still takes its share of the loop, skipping the work, and reports the failure.
 * The rows go in equal contiguous parts (schedule(static)). Tried and measured on SmolLM2 and
 * GPT-2 small at two threads: chunks of 16 rows handed out in turn (libgomp's dynamic) were 25%
 * slower (the threads' weight streams interleaved), and parts claimed chunk by chunk with the
 * early thread taking the rest of the other's were no faster (what the barriers' waits freed,
 * the memory bus took back: the 8-bit step already reads at the machine's bandwidth). */
#define CT_TEAM (-1)
#define CT_SHARE_ROWS(...)                                                                                   \
    do {                                                                                                    \
        if (nthreads == CT_TEAM) {                                                                          \
            __VA_ARGS__;                                                                                    \
        } else {                                                                                            \
            _Pragma("omp parallel num_threads(nthreads) if (nthreads > 1 && N * K >= 65536)") { __VA_ARGS__; } \
        }                                                                                                   \
    } while (0)

/* IQ4_NL's and IQ4_XS's 16 levels (ggml's kvalues_iq4nl): a non-uniform grid, denser near 0. */
static const int8_t iq4_levels[16] = {-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113};

/* K-quant (and IQ4_XS) weights (kquants.c): the `type` codes of ct_linear_kq / ct_dequant_kq. */
enum { CT_Q4_K = 0, CT_Q5_K = 1, CT_Q6_K = 2, CT_Q2_K = 3, CT_Q3_K = 4, CT_IQ4_XS = 5, CT_KQ_LAST = CT_IQ4_XS };
int64_t ct_kq_row_bytes(int type, int64_t K);
void ct_dequant_kq(int type, const uint8_t *w, float *out, int64_t N, int64_t K, int nthreads);
int ct_linear_kq(int type, const float *x, const uint8_t *w, const float *bias, float *y, int64_t M, int64_t N,
                 int64_t K, int nthreads);

/* ---- kernel variants ------------------------------------------------------------------------
 * One variant's matrix-vector loops, one function per family (the signatures of kernels.c's
 * ct_linear_*). variant.c defines one table per variant, `ct_kernels_<name>`; kernels.c's
 * ct_linear_* call through the table chosen for each family (ct_variant_set). */
enum { CT_FAMILY_BF16, CT_FAMILY_F16, CT_FAMILY_Q8, CT_FAMILY_Q4, CT_FAMILY_IQ4NL, CT_FAMILY_KQ, CT_FAMILIES };

typedef struct {
    const char *name;
    int (*supported)(void); /* whether this CPU (and OS) runs every instruction the variant was built with */
    void (*bf16)(const float *x, const uint16_t *w, const float *bias, float *y, int64_t M, int64_t N, int64_t K,
                 int nthreads);
    void (*f16)(const float *x, const uint16_t *w, const float *bias, float *y, int64_t M, int64_t N, int64_t K,
                int nthreads);
    int (*q8)(const float *x, const int8_t *w, const uint16_t *wd, const uint16_t *wm, const float *bias, float *y,
              int64_t M, int64_t N, int64_t K, int nthreads);
    int (*q4)(const float *x, const uint8_t *w, const uint16_t *wd, const uint16_t *wm, const float *bias, float *y,
              int64_t M, int64_t N, int64_t K, int nthreads);
    int (*iq4nl)(const float *x, const uint8_t *w, const uint16_t *wd, const float *bias, float *y, int64_t M,
                 int64_t N, int64_t K, int nthreads);
    int (*kq)(int type, const float *x, const uint8_t *w, const float *bias, float *y, int64_t M, int64_t N,
              int64_t K, int nthreads);
} ct_kernels;

/* Every variant the build knows, in the order of preference before anything is measured (the
 * first this CPU runs is each family's default). Their compiler flags: native/__init__.py's
 * VARIANTS (the same names). A variant whose build failed (an older compiler) is left out. */
#define CT_VARIANT_LIST(X) X(avx512vnni) X(avx512vnni_1row) X(avx512vnni_256) X(avx512) X(avxvnni) X(avx2) X(avx2_1row) X(scalar)

#endif
