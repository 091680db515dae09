/* What kernels.c and kquants.c share: the instruction-set switches, fp16/bf16 conversions, a
 * horizontal sum, and the entry points one file calls in the other. The build compiles every .c
 * file of this folder into one library (native/__init__.py), with -march=native choosing the
 * paths: AVX-512 VNNI, else AVX2 (with FMA and F16C), else the portable scalar C. */
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
#if defined(CT_AVX2) && defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VNNI__)
#define CT_AVX512 1
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
static inline float hsum(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}
#endif

/* IQ4_NL's and IQ4_XS's 16 levels (ggml's kvalues_iq4nl): a non-uniform grid, denser near 0. */
static const int8_t iq4_levels[16] = {-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113};

/* K-quant (and IQ4_XS) weights (kquants.c): the `type` codes of ct_linear_kq / ct_dequant_kq. */
enum { CT_Q4_K = 0, CT_Q5_K = 1, CT_Q6_K = 2, CT_Q2_K = 3, CT_Q3_K = 4, CT_IQ4_XS = 5, CT_KQ_LAST = CT_IQ4_XS };
int ct_linear_kq(int type, const float *x, const uint8_t *w, const float *bias, float *y, int64_t M, int64_t N,
                 int64_t K, int nthreads);

#endif
