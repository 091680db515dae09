/* Matrix-vector kernels for CPU decoding: y[M,N] = x[M,K] W^T (+ bias), W stored as
 *   bf16  : W as bfloat16 (the top half of an fp32), activations fp32;
 *   q8    : W in blocks of 32 int8 values with one fp16 scale each (GGUF's Q8_0), activations
 *           quantized the same way at call time, dot products in integers; with an fp16 offset
 *           per block too where given, w = q * d + m (GGUF's Q5_1, its 5-bit q widened);
 *   q4    : W in blocks of 32 4-bit values q (0..15) with an fp16 scale d and an fp16 offset m,
 *           w = q * d + m (GGUF's Q4_1; Q4_0 is m = -8 d), activations as for q8;
 *   iq4nl : GGUF's IQ4_NL, Q4_0's nibbles as indexes into a fixed grid of 16 levels;
 *   f16   : GGUF's F16 as stored, bf16's loop with F16C's conversion.
 * (kquants.c has the super-block types: the K-quants and IQ4_XS.)
 *
 * Why: a decode step is one matrix-vector product per layer, so its speed is the bytes of W it
 * reads. PyTorch's CPU weight-only kernels widen int8/int4 to floats inside the loop, which
 * costs more than the memory it saves on a 2-core AVX2 machine; integer dot products on
 * quantized activations (what llama.cpp does) keep the loop memory-bound.
 *
 * K must be a multiple of 32 (the Python side checks). Rows are split across threads. This file
 * is compiled once per variant (variant.c), with that variant's instruction-set flags; every
 * function has a portable scalar path for CPUs without AVX2.
 */
#include "common.h"

#ifdef CT_AVX512
/* The blocked loops below take two blocks (64 values) a step: one dpbusd gives 16 sums of 4
 * products, the first 8 of block b, the last 8 of block b + 1. Each sum is scaled by its
 * block's wd * xd. */

/* 16 floats: a in the first 8, b in the last 8 (the scales of two blocks side by side). */
static inline __m512 two_scales(float a, float b) {
    return _mm512_castpd_ps(_mm512_insertf64x4(_mm512_castps_pd(_mm512_set1_ps(a)), _mm256_castps_pd(_mm256_set1_ps(b)), 1));
}

/* The scales of blocks b..b+3, converted and multiplied four at a time (scalar conversions
 * cost more than the dot products here): `lo` for the pair b, b+1, `hi` for b+2, b+3. */
static inline void four_scales(const uint16_t *wd, const float *xd, __m512 *lo, __m512 *hi) {
    __m128 s = _mm_mul_ps(_mm_cvtph_ps(_mm_loadl_epi64((const __m128i *)wd)), _mm_loadu_ps(xd));
    __m512 wide = _mm512_castps128_ps512(s);
    *lo = _mm512_permutexvar_ps(_mm512_set_epi32(1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0), wide);
    *hi = _mm512_permutexvar_ps(_mm512_set_epi32(3, 3, 3, 3, 3, 3, 3, 3, 2, 2, 2, 2, 2, 2, 2, 2), wide);
}

/* Two q8 blocks of w times two of x. dpbusd multiplies unsigned by signed bytes: |x| times w
 * with x's sign. */
static inline __m512 q8_pair(const int8_t *w, const int8_t *x) {
    __m512i wv = _mm512_loadu_si512((const void *)w), xv = _mm512_loadu_si512((const void *)x);
    __m512i ws = _mm512_mask_sub_epi8(wv, _mm512_movepi8_mask(xv), _mm512_setzero_si512(), wv);
    return _mm512_cvtepi32_ps(_mm512_dpbusd_epi32(_mm512_setzero_si512(), _mm512_abs_epi8(xv), ws));
}

/* Two q4 blocks (32 bytes of nibbles) times two of x; the nibbles are unsigned already. */
static inline __m512 q4_pair(const uint8_t *w, const int8_t *x) {
    const __m256i low4 = _mm256_set1_epi8(0x0f);
    __m256i r = _mm256_loadu_si256((const __m256i *)w);
    __m256i lo = _mm256_and_si256(r, low4), hi = _mm256_and_si256(_mm256_srli_epi16(r, 4), low4);
    /* 128-bit lanes [b0 lo, b1 lo, b0 hi, b1 hi] -> [b0 lo, b0 hi, b1 lo, b1 hi]: values in x's order */
    __m512i q = _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1);
    q = _mm512_shuffle_i64x2(q, q, _MM_SHUFFLE(3, 1, 2, 0));
    return _mm512_cvtepi32_ps(_mm512_dpbusd_epi32(_mm512_setzero_si512(), q, _mm512_loadu_si512((const void *)x)));
}

static inline float hsum128(__m128 s) {
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    return _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)));
}
#endif

/* ---- bf16 weights, fp32 activations ---------------------------------------------------- */

static float dot_bf16(const uint16_t *w, const float *x, int64_t K) {
    int64_t k = 0;
    float sum = 0.0f;
#if defined(CT_AVX512F)
    __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps();
    for (; k + 32 <= K; k += 32) {
        _mm_prefetch((const char *)(w + k) + PREFETCH_BYTES, _MM_HINT_T0);
        __m512i wv = _mm512_loadu_si512((const void *)(w + k));
        __m512 f0 = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm512_castsi512_si256(wv)), 16));
        __m512 f1 = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm512_extracti64x4_epi64(wv, 1)), 16));
        a0 = _mm512_fmadd_ps(f0, _mm512_loadu_ps(x + k), a0);
        a1 = _mm512_fmadd_ps(f1, _mm512_loadu_ps(x + k + 16), a1);
    }
    sum = _mm512_reduce_add_ps(_mm512_add_ps(a0, a1));
#elif defined(CT_AVX2)
    __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps(), a2 = _mm256_setzero_ps(), a3 = _mm256_setzero_ps();
    for (; k + 32 <= K; k += 32) {
        _mm_prefetch((const char *)(w + k) + PREFETCH_BYTES, _MM_HINT_T0);
        __m256i w0 = _mm256_loadu_si256((const __m256i *)(w + k));
        __m256i w1 = _mm256_loadu_si256((const __m256i *)(w + k + 16));
        __m256 f0 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm256_castsi256_si128(w0)), 16));
        __m256 f1 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm256_extracti128_si256(w0, 1)), 16));
        __m256 f2 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm256_castsi256_si128(w1)), 16));
        __m256 f3 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm256_extracti128_si256(w1, 1)), 16));
        a0 = _mm256_fmadd_ps(f0, _mm256_loadu_ps(x + k), a0);
        a1 = _mm256_fmadd_ps(f1, _mm256_loadu_ps(x + k + 8), a1);
        a2 = _mm256_fmadd_ps(f2, _mm256_loadu_ps(x + k + 16), a2);
        a3 = _mm256_fmadd_ps(f3, _mm256_loadu_ps(x + k + 24), a3);
    }
    sum = hsum(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
#endif
    for (; k < K; k++) sum += bf16_to_fp32(w[k]) * x[k];
    return sum;
}

/* ---- f16 weights (GGUF's F16 as stored), fp32 activations: bf16's loop with F16C's
 *      conversion in place of the shift ------------------------------------------------------- */

static float dot_f16(const uint16_t *w, const float *x, int64_t K) {
    int64_t k = 0;
    float sum = 0.0f;
#if defined(CT_AVX512F)
    __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps();
    for (; k + 32 <= K; k += 32) {
        _mm_prefetch((const char *)(w + k) + PREFETCH_BYTES, _MM_HINT_T0);
        a0 = _mm512_fmadd_ps(_mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(w + k))), _mm512_loadu_ps(x + k), a0);
        a1 = _mm512_fmadd_ps(_mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(w + k + 16))),
                             _mm512_loadu_ps(x + k + 16), a1);
    }
    sum = _mm512_reduce_add_ps(_mm512_add_ps(a0, a1));
#elif defined(CT_AVX2)
    __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps(), a2 = _mm256_setzero_ps(), a3 = _mm256_setzero_ps();
    for (; k + 32 <= K; k += 32) {
        _mm_prefetch((const char *)(w + k) + PREFETCH_BYTES, _MM_HINT_T0);
        a0 = _mm256_fmadd_ps(_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(w + k))), _mm256_loadu_ps(x + k), a0);
        a1 = _mm256_fmadd_ps(_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(w + k + 8))), _mm256_loadu_ps(x + k + 8), a1);
        a2 = _mm256_fmadd_ps(_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(w + k + 16))), _mm256_loadu_ps(x + k + 16), a2);
        a3 = _mm256_fmadd_ps(_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(w + k + 24))), _mm256_loadu_ps(x + k + 24), a3);
    }
    sum = hsum(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
#endif
    for (; k < K; k++) sum += fp16_to_fp32(w[k]) * x[k];
    return sum;
}

/* The rows of a 16-bit weight: bf16, or IEEE half (f16 = 1) */
static void half_rows(const float *x, const uint16_t *w, const float *bias, float *y, int64_t M, int64_t N,
                      int64_t K, int f16) {
#pragma omp for schedule(static)
    for (int64_t n = 0; n < N; n++) {
        const uint16_t *row = w + n * K;
        float b = bias ? bias[n] : 0.0f;
        for (int64_t m = 0; m < M; m++) y[m * N + n] = (f16 ? dot_f16 : dot_bf16)(row, x + m * K, K) + b;
    }
}

/* nthreads: CT_TEAM or a thread count (common.h) */
static void gemv_bf16(const float *x, const uint16_t *w, const float *bias, float *y,
                    int64_t M, int64_t N, int64_t K, int nthreads) {
    CT_SHARE_ROWS(half_rows(x, w, bias, y, M, N, K, 0));
}

static void gemv_f16(const float *x, const uint16_t *w, const float *bias, float *y,
                   int64_t M, int64_t N, int64_t K, int nthreads) {
    CT_SHARE_ROWS(half_rows(x, w, bias, y, M, N, K, 1));
}

/* ---- activations quantized to blocks of 32 int8 ---------------------------------------- */

/* x (K) -> xq (K) int8, xd (K/32) scales, xs (K/32) = xd * sum(xq) per block (for q4's offsets). */
static void quantize_row(const float *x, int8_t *xq, float *xd, float *xs, int64_t K) {
    int64_t b = 0;
#ifdef CT_AVX2
    /* The scalar loop below, 8 lanes at a time: it cost ~3.4 ns a value, serial before every
     * product (SmolLM2: ~0.3 ms of a 6 ms step at two threads). */
    for (; b < K / BLOCK; b++) {
        float nonfinite, amax = absmax(x + b * BLOCK, BLOCK, &nonfinite), d = amax / 127.0f + nonfinite;
        int first, last;
        quantize_32(x + b * BLOCK, d > 0.0f ? 1.0f / d : 0.0f, xq + b * BLOCK, &first, &last);
        xd[b] = d;
        xs[b] = d * (float)(first + last);
    }
#endif
    for (; b < K / BLOCK; b++) {
        const float *v = x + b * BLOCK;
        float amax = 0.0f, nonfinite = 0.0f;
        for (int i = 0; i < BLOCK; i++) {
            amax = fmaxf(amax, fabsf(v[i]));
            nonfinite += v[i] - v[i]; /* 0 for a number, NaN for NaN or inf */
        }
        /* fmaxf skips NaN and lrintf(NaN) is any integer: a NaN or inf activation would come out
         * as a finite block, and a broken model would babble instead of being reported ("no
         * finite logits"). A NaN scale carries it into the outputs as PyTorch's kernels would. */
        float d = amax / 127.0f + nonfinite, inv = d > 0.0f ? 1.0f / d : 0.0f;
        int sum = 0;
        for (int i = 0; i < BLOCK; i++) {
            int q = (int)lrintf(v[i] * inv);
            q = q > 127 ? 127 : (q < -127 ? -127 : q);
            xq[b * BLOCK + i] = (int8_t)q;
            sum += q;
        }
        xd[b] = d;
        xs[b] = d * (float)sum;
    }
}

typedef struct {
    int8_t *q;
    float *d, *s;
} qacts;

static int quantize_acts(const float *x, int64_t M, int64_t K, qacts *a) {
    int64_t nb = K / BLOCK;
    a->q = (int8_t *)malloc((size_t)(M * K));
    a->d = (float *)malloc(sizeof(float) * (size_t)(M * nb));
    a->s = (float *)malloc(sizeof(float) * (size_t)(M * nb));
    if (!a->q || !a->d || !a->s) {
        free(a->q); free(a->d); free(a->s);
        return -1;
    }
    for (int64_t m = 0; m < M; m++) quantize_row(x + m * K, a->q + m * K, a->d + m * nb, a->s + m * nb, K);
    return 0;
}

static void free_acts(qacts *a) { free(a->q); free(a->d); free(a->s); }

/* ---- q8: W int8 (N, K), wd fp16 (N, K/32) ------------------------------------------------ */

static float dot_q8(const int8_t *w, const uint16_t *wd, const int8_t *xq, const float *xd, int64_t nb) {
    int64_t b = 0;
    float sum = 0.0f;
#if defined(CT_AVX512)
    __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps(), lo, hi;
    for (; b + 4 <= nb; b += 4) {
        _mm_prefetch((const char *)(w + b * BLOCK + PREFETCH_BYTES), _MM_HINT_T0);
        _mm_prefetch((const char *)(w + b * BLOCK + PREFETCH_BYTES + 64), _MM_HINT_T0);
        four_scales(wd + b, xd + b, &lo, &hi);
        acc0 = _mm512_fmadd_ps(lo, q8_pair(w + b * BLOCK, xq + b * BLOCK), acc0);
        acc1 = _mm512_fmadd_ps(hi, q8_pair(w + (b + 2) * BLOCK, xq + (b + 2) * BLOCK), acc1);
    }
    for (; b + 2 <= nb; b += 2)
        acc0 = _mm512_fmadd_ps(two_scales(fp16_to_fp32(wd[b]) * xd[b], fp16_to_fp32(wd[b + 1]) * xd[b + 1]),
                               q8_pair(w + b * BLOCK, xq + b * BLOCK), acc0);
    sum = _mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1));
#elif defined(CT_AVX2)
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
    for (; b + 2 <= nb; b += 2) {
        _mm_prefetch((const char *)(w + b * BLOCK + PREFETCH_BYTES), _MM_HINT_T0);
        __m256i w0 = _mm256_loadu_si256((const __m256i *)(w + b * BLOCK));
        __m256i x0 = _mm256_loadu_si256((const __m256i *)(xq + b * BLOCK));
        __m256i w1 = _mm256_loadu_si256((const __m256i *)(w + (b + 1) * BLOCK));
        __m256i x1 = _mm256_loadu_si256((const __m256i *)(xq + (b + 1) * BLOCK));
        /* |x| (unsigned) times w with x's sign: maddubs needs one unsigned operand. */
        __m256i p0 = dot_u8s8(_mm256_sign_epi8(x0, x0), _mm256_sign_epi8(w0, x0));
        __m256i p1 = dot_u8s8(_mm256_sign_epi8(x1, x1), _mm256_sign_epi8(w1, x1));
        acc0 = _mm256_fmadd_ps(_mm256_set1_ps(fp16_to_fp32(wd[b]) * xd[b]), _mm256_cvtepi32_ps(p0), acc0);
        acc1 = _mm256_fmadd_ps(_mm256_set1_ps(fp16_to_fp32(wd[b + 1]) * xd[b + 1]), _mm256_cvtepi32_ps(p1), acc1);
    }
    sum = hsum(_mm256_add_ps(acc0, acc1));
#endif
    for (; b < nb; b++) {
        int isum = 0;
        for (int i = 0; i < BLOCK; i++) isum += (int)w[b * BLOCK + i] * (int)xq[b * BLOCK + i];
        sum += fp16_to_fp32(wd[b]) * xd[b] * (float)isum;
    }
    return sum;
}

#if !defined(CT_ONE_ROW) && defined(CT_AVX512)
#define CT_TWO_ROWS 1
/* Rows w0 and w1 times one x: x's bytes, their absolute values and signs are loaded and worked
 * out once for both rows. On narrow models (SmolLM2's 576-wide rows are 18 blocks) that work,
 * repeated for every row, was as much as the products themselves. */
static inline void q8_pair_two_rows(const int8_t *w0, const int8_t *w1, const int8_t *x, __m512 *p0, __m512 *p1) {
    const __m512i zero = _mm512_setzero_si512();
    __m512i xv = _mm512_loadu_si512((const void *)x), ax = _mm512_abs_epi8(xv);
    __mmask64 neg = _mm512_movepi8_mask(xv);
    __m512i v0 = _mm512_loadu_si512((const void *)w0), v1 = _mm512_loadu_si512((const void *)w1);
    *p0 = _mm512_cvtepi32_ps(_mm512_dpbusd_epi32(zero, ax, _mm512_mask_sub_epi8(v0, neg, zero, v0)));
    *p1 = _mm512_cvtepi32_ps(_mm512_dpbusd_epi32(zero, ax, _mm512_mask_sub_epi8(v1, neg, zero, v1)));
}

static void dot_q8_two_rows(const int8_t *w0, const int8_t *w1, const uint16_t *wd0, const uint16_t *wd1,
                            const int8_t *xq, const float *xd, int64_t nb, float *out) {
    __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps(), lo0, hi0, lo1, hi1, p0, p1;
    int64_t b = 0;
    for (; b + 4 <= nb; b += 4) {
        _mm_prefetch((const char *)(w0 + b * BLOCK + PREFETCH_BYTES), _MM_HINT_T0);
        _mm_prefetch((const char *)(w0 + b * BLOCK + PREFETCH_BYTES + 64), _MM_HINT_T0);
        _mm_prefetch((const char *)(w1 + b * BLOCK + PREFETCH_BYTES), _MM_HINT_T0);
        _mm_prefetch((const char *)(w1 + b * BLOCK + PREFETCH_BYTES + 64), _MM_HINT_T0);
        four_scales(wd0 + b, xd + b, &lo0, &hi0);
        four_scales(wd1 + b, xd + b, &lo1, &hi1);
        q8_pair_two_rows(w0 + b * BLOCK, w1 + b * BLOCK, xq + b * BLOCK, &p0, &p1);
        acc0 = _mm512_fmadd_ps(lo0, p0, acc0);
        acc1 = _mm512_fmadd_ps(lo1, p1, acc1);
        q8_pair_two_rows(w0 + (b + 2) * BLOCK, w1 + (b + 2) * BLOCK, xq + (b + 2) * BLOCK, &p0, &p1);
        acc0 = _mm512_fmadd_ps(hi0, p0, acc0);
        acc1 = _mm512_fmadd_ps(hi1, p1, acc1);
    }
    for (; b + 2 <= nb; b += 2) {
        q8_pair_two_rows(w0 + b * BLOCK, w1 + b * BLOCK, xq + b * BLOCK, &p0, &p1);
        acc0 = _mm512_fmadd_ps(two_scales(fp16_to_fp32(wd0[b]) * xd[b], fp16_to_fp32(wd0[b + 1]) * xd[b + 1]), p0, acc0);
        acc1 = _mm512_fmadd_ps(two_scales(fp16_to_fp32(wd1[b]) * xd[b], fp16_to_fp32(wd1[b + 1]) * xd[b + 1]), p1, acc1);
    }
    out[0] = _mm512_reduce_add_ps(acc0);
    out[1] = _mm512_reduce_add_ps(acc1);
    for (; b < nb; b++) {
        int s0 = 0, s1 = 0;
        for (int i = 0; i < BLOCK; i++) {
            s0 += (int)w0[b * BLOCK + i] * (int)xq[b * BLOCK + i];
            s1 += (int)w1[b * BLOCK + i] * (int)xq[b * BLOCK + i];
        }
        out[0] += fp16_to_fp32(wd0[b]) * xd[b] * (float)s0;
        out[1] += fp16_to_fp32(wd1[b]) * xd[b] * (float)s1;
    }
}
#elif !defined(CT_ONE_ROW) && defined(CT_AVX2)
#define CT_TWO_ROWS 1
/* The same for the 256-bit loops: one block a step, x's absolute values loaded once for both rows. */
static void dot_q8_two_rows(const int8_t *w0, const int8_t *w1, const uint16_t *wd0, const uint16_t *wd1,
                            const int8_t *xq, const float *xd, int64_t nb, float *out) {
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
    int64_t b = 0;
    for (; b + 4 <= nb; b += 4) {
        _mm_prefetch((const char *)(w0 + b * BLOCK + PREFETCH_BYTES), _MM_HINT_T0);
        _mm_prefetch((const char *)(w0 + b * BLOCK + PREFETCH_BYTES + 64), _MM_HINT_T0);
        _mm_prefetch((const char *)(w1 + b * BLOCK + PREFETCH_BYTES), _MM_HINT_T0);
        _mm_prefetch((const char *)(w1 + b * BLOCK + PREFETCH_BYTES + 64), _MM_HINT_T0);
        /* four blocks' scales converted and multiplied at once, for each row */
        __m128 xs = _mm_loadu_ps(xd + b);
        __m128 s0 = _mm_mul_ps(_mm_cvtph_ps(_mm_loadl_epi64((const __m128i *)(wd0 + b))), xs);
        __m128 s1 = _mm_mul_ps(_mm_cvtph_ps(_mm_loadl_epi64((const __m128i *)(wd1 + b))), xs);
        float f0[4], f1[4];
        _mm_storeu_ps(f0, s0);
        _mm_storeu_ps(f1, s1);
        for (int j = 0; j < 4; j++) {
            const int64_t o = (b + j) * BLOCK;
            __m256i xv = _mm256_loadu_si256((const __m256i *)(xq + o)), ax = _mm256_sign_epi8(xv, xv);
            __m256i v0 = _mm256_sign_epi8(_mm256_loadu_si256((const __m256i *)(w0 + o)), xv);
            __m256i v1 = _mm256_sign_epi8(_mm256_loadu_si256((const __m256i *)(w1 + o)), xv);
            acc0 = _mm256_fmadd_ps(_mm256_set1_ps(f0[j]), _mm256_cvtepi32_ps(dot_u8s8(ax, v0)), acc0);
            acc1 = _mm256_fmadd_ps(_mm256_set1_ps(f1[j]), _mm256_cvtepi32_ps(dot_u8s8(ax, v1)), acc1);
        }
    }
    out[0] = hsum(acc0);
    out[1] = hsum(acc1);
    for (; b < nb; b++) {
        int s0 = 0, s1 = 0;
        for (int i = 0; i < BLOCK; i++) {
            s0 += (int)w0[b * BLOCK + i] * (int)xq[b * BLOCK + i];
            s1 += (int)w1[b * BLOCK + i] * (int)xq[b * BLOCK + i];
        }
        out[0] += fp16_to_fp32(wd0[b]) * xd[b] * (float)s0;
        out[1] += fp16_to_fp32(wd1[b]) * xd[b] * (float)s1;
    }
}
#endif

/* sum over blocks of wm[b] * xs[b]: per-block offsets (w = d q + m: GGUF's Q5_1 held as int8)
 * times the activations' block sums */
static float offsets_dot(const uint16_t *wm, const float *xs, int64_t nb) {
    int64_t b = 0;
    float sum = 0.0f;
#ifdef CT_AVX2
    __m256 acc = _mm256_setzero_ps();
    for (; b + 8 <= nb; b += 8)
        acc = _mm256_fmadd_ps(_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(wm + b))), _mm256_loadu_ps(xs + b), acc);
    sum = hsum(acc);
#endif
    for (; b < nb; b++) sum += fp16_to_fp32(wm[b]) * xs[b];
    return sum;
}

/* ok = 0: this thread's activations could not be allocated; it takes its share of the rows and
 * skips them. wm: per-block offsets, or NULL (Q8_0) */
static void q8_rows(const qacts *a, int ok, const int8_t *w, const uint16_t *wd, const uint16_t *wm,
                    const float *bias, float *y, int64_t M, int64_t N, int64_t K) {
    int64_t nb = K / BLOCK;
#ifdef CT_TWO_ROWS
    if (M == 1) { /* a decode step: rows two at a time, sharing the work on x (an odd last row alone) */
#pragma omp for schedule(static)
        for (int64_t i = 0; i < (N + 1) / 2; i++) {
            int64_t n = 2 * i;
            if (!ok) continue;
            if (n + 1 == N) {
                y[n] = dot_q8(w + n * K, wd + n * nb, a->q, a->d, nb) + (bias ? bias[n] : 0.0f) +
                       (wm ? offsets_dot(wm + n * nb, a->s, nb) : 0.0f);
                continue;
            }
            float out[2];
            dot_q8_two_rows(w + n * K, w + (n + 1) * K, wd + n * nb, wd + (n + 1) * nb, a->q, a->d, nb, out);
            y[n] = out[0] + (bias ? bias[n] : 0.0f) + (wm ? offsets_dot(wm + n * nb, a->s, nb) : 0.0f);
            y[n + 1] = out[1] + (bias ? bias[n + 1] : 0.0f) + (wm ? offsets_dot(wm + (n + 1) * nb, a->s, nb) : 0.0f);
        }
        return;
    }
#endif
#pragma omp for schedule(static)
    for (int64_t n = 0; n < N; n++) {
        if (!ok) continue;
        float b = bias ? bias[n] : 0.0f;
        for (int64_t m = 0; m < M; m++)
            y[m * N + n] = dot_q8(w + n * K, wd + n * nb, a->q + m * K, a->d + m * nb, nb) + b +
                           (wm ? offsets_dot(wm + n * nb, a->s + m * nb, nb) : 0.0f);
    }
}

static int gemv_q8(const float *x, const int8_t *w, const uint16_t *wd, const uint16_t *wm, const float *bias,
                   float *y, int64_t M, int64_t N, int64_t K, int nthreads) {
    qacts a;
    int ok = quantize_acts(x, M, K, &a) == 0;
    if (!ok && nthreads != CT_TEAM) return -1;
    CT_SHARE_ROWS(q8_rows(&a, ok, w, wd, wm, bias, y, M, N, K));
    if (ok) free_acts(&a);
    return ok ? 0 : -1;
}

/* ---- q4: W nibbles (N, K/2): block b's byte j holds value j (low) and j+16 (high);
 *          wd, wm fp16 (N, K/32) ------------------------------------------------------------ */

#ifdef CT_AVX512
/* x's int8 values for the q4 loop: each group of 4 blocks as their values 0..15 (the low
 * nibbles' partners), then their values 16..31 (the high ones'), so that 4 blocks of nibbles,
 * masked and shifted in place, meet x without a shuffle. Blocks past the last group of 4 stay. */
static void nibble_order(const int8_t *xq, int8_t *xp, int64_t K) {
    int64_t k = 0;
    for (; k + 4 * BLOCK <= K; k += 4 * BLOCK)
        for (int j = 0; j < 4; j++) {
            memcpy(xp + k + 16 * j, xq + k + BLOCK * j, 16);
            memcpy(xp + k + 64 + 16 * j, xq + k + BLOCK * j + 16, 16);
        }
    memcpy(xp + k, xq + k, (size_t)(K - k));
}
#endif

/* xp: xq in nibble_order (AVX-512; elsewhere xq itself) */
static float dot_q4(const uint8_t *w, const uint16_t *wd, const uint16_t *wm, const int8_t *xq, const int8_t *xp,
                    const float *xd, const float *xs, int64_t nb) {
    int64_t b = 0;
    float sum = 0.0f, offsets = 0.0f;
    (void)xp; /* read on AVX-512 only */
#if defined(CT_AVX512)
    /* 4 blocks a step: 64 bytes of nibbles, the low and the high ones each one dpbusd against
     * x in nibble order, summed in integers: int32 lanes 4j..4j+3 are block j's. */
    const __m512i low4 = _mm512_set1_epi8(0x0f), zero = _mm512_setzero_si512();
    const __m512i quads = _mm512_set_epi32(3, 3, 3, 3, 2, 2, 2, 2, 1, 1, 1, 1, 0, 0, 0, 0);
    __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps();
    __m128 off = _mm_setzero_ps();
    for (; b + 4 <= nb; b += 4) {
        _mm_prefetch((const char *)(w + b * BLOCK / 2) + PREFETCH_BYTES, _MM_HINT_T0);
        __m512i r = _mm512_loadu_si512((const void *)(w + b * BLOCK / 2));
        __m512i dots = _mm512_dpbusd_epi32(zero, _mm512_and_si512(r, low4), _mm512_loadu_si512((const void *)(xp + b * BLOCK)));
        dots = _mm512_dpbusd_epi32(dots, _mm512_and_si512(_mm512_srli_epi16(r, 4), low4),
                                   _mm512_loadu_si512((const void *)(xp + b * BLOCK + 64)));
        __m128 s = _mm_mul_ps(_mm_cvtph_ps(_mm_loadl_epi64((const __m128i *)(wd + b))), _mm_loadu_ps(xd + b));
        __m512 scales = _mm512_permutexvar_ps(quads, _mm512_castps128_ps512(s));
        if (b & 4) acc1 = _mm512_fmadd_ps(scales, _mm512_cvtepi32_ps(dots), acc1);
        else acc0 = _mm512_fmadd_ps(scales, _mm512_cvtepi32_ps(dots), acc0);
        off = _mm_fmadd_ps(_mm_cvtph_ps(_mm_loadl_epi64((const __m128i *)(wm + b))), _mm_loadu_ps(xs + b), off);
    }
    for (; b + 2 <= nb; b += 2) {
        acc0 = _mm512_fmadd_ps(two_scales(fp16_to_fp32(wd[b]) * xd[b], fp16_to_fp32(wd[b + 1]) * xd[b + 1]),
                               q4_pair(w + b * BLOCK / 2, xq + b * BLOCK), acc0);
        offsets += fp16_to_fp32(wm[b]) * xs[b] + fp16_to_fp32(wm[b + 1]) * xs[b + 1];
    }
    sum = _mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1));
    offsets += hsum128(off);
#elif defined(CT_AVX2)
    const __m256i low4 = _mm256_set1_epi8(0x0f);
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
    for (; b + 2 <= nb; b += 2) {
        _mm_prefetch((const char *)(w + b * BLOCK / 2) + PREFETCH_BYTES, _MM_HINT_T0);
        __m128i r0 = _mm_loadu_si128((const __m128i *)(w + b * BLOCK / 2));
        __m128i r1 = _mm_loadu_si128((const __m128i *)(w + (b + 1) * BLOCK / 2));
        __m256i q0 = _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(r0, 4), r0), low4);
        __m256i q1 = _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(r1, 4), r1), low4);
        __m256i x0 = _mm256_loadu_si256((const __m256i *)(xq + b * BLOCK));
        __m256i x1 = _mm256_loadu_si256((const __m256i *)(xq + (b + 1) * BLOCK));
        __m256i p0 = dot_u8s8(q0, x0);
        __m256i p1 = dot_u8s8(q1, x1);
        acc0 = _mm256_fmadd_ps(_mm256_set1_ps(fp16_to_fp32(wd[b]) * xd[b]), _mm256_cvtepi32_ps(p0), acc0);
        acc1 = _mm256_fmadd_ps(_mm256_set1_ps(fp16_to_fp32(wd[b + 1]) * xd[b + 1]), _mm256_cvtepi32_ps(p1), acc1);
        offsets += fp16_to_fp32(wm[b]) * xs[b] + fp16_to_fp32(wm[b + 1]) * xs[b + 1];
    }
    sum = hsum(_mm256_add_ps(acc0, acc1));
#endif
    for (; b < nb; b++) {
        const uint8_t *r = w + b * BLOCK / 2;
        const int8_t *v = xq + b * BLOCK;
        int isum = 0;
        for (int j = 0; j < BLOCK / 2; j++) isum += (int)(r[j] & 0x0f) * v[j] + (int)(r[j] >> 4) * v[j + BLOCK / 2];
        sum += fp16_to_fp32(wd[b]) * xd[b] * (float)isum;
        offsets += fp16_to_fp32(wm[b]) * xs[b];
    }
    return sum + offsets;
}

static void q4_rows(const qacts *a, const int8_t *xp, int ok, const uint8_t *w, const uint16_t *wd,
                    const uint16_t *wm, const float *bias, float *y, int64_t M, int64_t N, int64_t K) {
    int64_t nb = K / BLOCK;
#pragma omp for schedule(static)
    for (int64_t n = 0; n < N; n++) {
        if (!ok) continue;
        float b = bias ? bias[n] : 0.0f;
        for (int64_t m = 0; m < M; m++)
            y[m * N + n] = dot_q4(w + n * K / 2, wd + n * nb, wm + n * nb, a->q + m * K, xp + m * K, a->d + m * nb,
                                  a->s + m * nb, nb) + b;
    }
}

static int gemv_q4(const float *x, const uint8_t *w, const uint16_t *wd, const uint16_t *wm, const float *bias,
                 float *y, int64_t M, int64_t N, int64_t K, int nthreads) {
    qacts a;
    int ok = quantize_acts(x, M, K, &a) == 0;
    int8_t *xp = ok ? a.q : NULL;
#ifdef CT_AVX512
    if (ok) {
        xp = (int8_t *)malloc((size_t)(M * K));
        if (xp)
            for (int64_t m = 0; m < M; m++) nibble_order(a.q + m * K, xp + m * K, K);
        else {
            free_acts(&a);
            ok = 0;
        }
    }
#endif
    if (!ok && nthreads != CT_TEAM) return -1;
    CT_SHARE_ROWS(q4_rows(&a, xp, ok, w, wd, wm, bias, y, M, N, K));
    if (ok) {
        if (xp != a.q) free(xp);
        free_acts(&a);
    }
    return ok ? 0 : -1;
}

/* ---- iq4nl: GGUF's IQ4_NL, Q4_0's nibbles (N, K/2) and fp16 scales (N, K/32), each nibble an
 *      index into a fixed grid of 16 levels: w = d * level[q] ------------------------------ */

static float dot_iq4nl(const uint8_t *w, const uint16_t *wd, const int8_t *xq, const float *xd, int64_t nb) {
    int64_t b = 0;
    float sum = 0.0f;
#if defined(CT_AVX2)
    const __m128i levels = _mm_loadu_si128((const __m128i *)iq4_levels);
#endif
#if defined(CT_AVX512)
    /* two blocks a step as q4_pair, the nibbles looked up; levels are signed: |x| times the
     * level with x's sign */
    const __m512i table = _mm512_broadcast_i32x4(levels), zero = _mm512_setzero_si512();
    const __m256i low4 = _mm256_set1_epi8(0x0f);
    __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps(), lo, hi;
    for (; b + 4 <= nb; b += 4) {
        _mm_prefetch((const char *)(w + b * BLOCK / 2) + PREFETCH_BYTES, _MM_HINT_T0);
        four_scales(wd + b, xd + b, &lo, &hi);
        for (int half = 0; half < 2; half++) {
            __m256i r = _mm256_loadu_si256((const __m256i *)(w + (b + 2 * half) * BLOCK / 2));
            __m512i q = _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_and_si256(r, low4)),
                                           _mm256_and_si256(_mm256_srli_epi16(r, 4), low4), 1);
            q = _mm512_shuffle_epi8(table, _mm512_shuffle_i64x2(q, q, _MM_SHUFFLE(3, 1, 2, 0)));
            __m512i xv = _mm512_loadu_si512((const void *)(xq + (b + 2 * half) * BLOCK));
            __m512i dots = _mm512_dpbusd_epi32(zero, _mm512_abs_epi8(xv), _mm512_mask_sub_epi8(q, _mm512_movepi8_mask(xv), zero, q));
            if (half) acc1 = _mm512_fmadd_ps(hi, _mm512_cvtepi32_ps(dots), acc1);
            else acc0 = _mm512_fmadd_ps(lo, _mm512_cvtepi32_ps(dots), acc0);
        }
    }
    sum = _mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1));
#elif defined(CT_AVX2)
    const __m256i low4 = _mm256_set1_epi8(0x0f), table = _mm256_broadcastsi128_si256(levels);
    __m256 acc = _mm256_setzero_ps();
    for (; b < nb; b++) {
        _mm_prefetch((const char *)(w + b * BLOCK / 2) + PREFETCH_BYTES, _MM_HINT_T0);
        __m128i r = _mm_loadu_si128((const __m128i *)(w + b * BLOCK / 2));
        __m256i q = _mm256_shuffle_epi8(table, _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(r, 4), r), low4));
        __m256i xv = _mm256_loadu_si256((const __m256i *)(xq + b * BLOCK));
        __m256i p = dot_u8s8(_mm256_sign_epi8(xv, xv), _mm256_sign_epi8(q, xv));
        acc = _mm256_fmadd_ps(_mm256_set1_ps(fp16_to_fp32(wd[b]) * xd[b]), _mm256_cvtepi32_ps(p), acc);
    }
    sum = hsum(acc);
#endif
    for (; b < nb; b++) {
        const uint8_t *r = w + b * BLOCK / 2;
        const int8_t *v = xq + b * BLOCK;
        int isum = 0;
        for (int j = 0; j < BLOCK / 2; j++)
            isum += iq4_levels[r[j] & 0x0f] * v[j] + iq4_levels[r[j] >> 4] * v[j + BLOCK / 2];
        sum += fp16_to_fp32(wd[b]) * xd[b] * (float)isum;
    }
    return sum;
}

static void iq4nl_rows(const qacts *a, int ok, const uint8_t *w, const uint16_t *wd, const float *bias, float *y,
                       int64_t M, int64_t N, int64_t K) {
    int64_t nb = K / BLOCK;
#pragma omp for schedule(static)
    for (int64_t n = 0; n < N; n++) {
        if (!ok) continue;
        float b = bias ? bias[n] : 0.0f;
        for (int64_t m = 0; m < M; m++)
            y[m * N + n] = dot_iq4nl(w + n * K / 2, wd + n * nb, a->q + m * K, a->d + m * nb, nb) + b;
    }
}

static int gemv_iq4nl(const float *x, const uint8_t *w, const uint16_t *wd, const float *bias, float *y, int64_t M,
                    int64_t N, int64_t K, int nthreads) {
    qacts a;
    int ok = quantize_acts(x, M, K, &a) == 0;
    if (!ok && nthreads != CT_TEAM) return -1;
    CT_SHARE_ROWS(iq4nl_rows(&a, ok, w, wd, bias, y, M, N, K));
    if (ok) free_acts(&a);
    return ok ? 0 : -1;
}
