/* Matrix-vector kernels for CPU decoding: y[M,N] = x[M,K] W^T (+ bias), W stored as
 *   bf16  : W as bfloat16 (the top half of an fp32), activations fp32;
 *   q8    : W in blocks of 32 int8 values with one fp16 scale each (GGUF's Q8_0), activations
 *           quantized the same way at call time, dot products in integers;
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
 * Built by chatterm at first use with the system C compiler (native.py) and called through
 * ctypes. Linked against the libgomp that torch has already loaded, so these loops and torch's
 * share one OpenMP thread pool. Every function has a portable scalar path for CPUs without AVX2.
 * K must be a multiple of 32 (the Python side checks). Rows are split across threads.
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

int ct_has_avx2(void) {
#ifdef CT_AVX2
    return 1;
#else
    return 0;
#endif
}

/* ---- bf16 weights, fp32 activations ---------------------------------------------------- */

static float dot_bf16(const uint16_t *w, const float *x, int64_t K) {
    int64_t k = 0;
    float sum = 0.0f;
#if defined(CT_AVX512)
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

void ct_linear_bf16(const float *x, const uint16_t *w, const float *bias, float *y,
                    int64_t M, int64_t N, int64_t K, int nthreads) {
#pragma omp parallel for schedule(static) num_threads(nthreads) if (nthreads > 1 && N * K >= 65536)
    for (int64_t n = 0; n < N; n++) {
        const uint16_t *row = w + n * K;
        float b = bias ? bias[n] : 0.0f;
        for (int64_t m = 0; m < M; m++) y[m * N + n] = dot_bf16(row, x + m * K, K) + b;
    }
}

/* ---- f16 weights (GGUF's F16 as stored), fp32 activations: bf16's loop with F16C's
 *      conversion in place of the shift ------------------------------------------------------- */

static float dot_f16(const uint16_t *w, const float *x, int64_t K) {
    int64_t k = 0;
    float sum = 0.0f;
#if defined(CT_AVX512)
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

void ct_linear_f16(const float *x, const uint16_t *w, const float *bias, float *y,
                   int64_t M, int64_t N, int64_t K, int nthreads) {
#pragma omp parallel for schedule(static) num_threads(nthreads) if (nthreads > 1 && N * K >= 65536)
    for (int64_t n = 0; n < N; n++) {
        const uint16_t *row = w + n * K;
        float b = bias ? bias[n] : 0.0f;
        for (int64_t m = 0; m < M; m++) y[m * N + n] = dot_f16(row, x + m * K, K) + b;
    }
}

/* ---- activations quantized to blocks of 32 int8 ---------------------------------------- */

/* x (K) -> xq (K) int8, xd (K/32) scales, xs (K/32) = xd * sum(xq) per block (for q4's offsets). */
static void quantize_row(const float *x, int8_t *xq, float *xd, float *xs, int64_t K) {
    for (int64_t b = 0; b < K / BLOCK; b++) {
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
    const __m256i ones = _mm256_set1_epi16(1);
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
    for (; b + 2 <= nb; b += 2) {
        _mm_prefetch((const char *)(w + b * BLOCK + PREFETCH_BYTES), _MM_HINT_T0);
        __m256i w0 = _mm256_loadu_si256((const __m256i *)(w + b * BLOCK));
        __m256i x0 = _mm256_loadu_si256((const __m256i *)(xq + b * BLOCK));
        __m256i w1 = _mm256_loadu_si256((const __m256i *)(w + (b + 1) * BLOCK));
        __m256i x1 = _mm256_loadu_si256((const __m256i *)(xq + (b + 1) * BLOCK));
        /* |x| (unsigned) times w with x's sign: maddubs needs one unsigned operand. */
        __m256i p0 = _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_sign_epi8(x0, x0), _mm256_sign_epi8(w0, x0)), ones);
        __m256i p1 = _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_sign_epi8(x1, x1), _mm256_sign_epi8(w1, x1)), ones);
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

#ifdef CT_AVX512
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
#endif

int ct_linear_q8(const float *x, const int8_t *w, const uint16_t *wd, const float *bias, float *y,
                 int64_t M, int64_t N, int64_t K, int nthreads) {
    qacts a;
    if (quantize_acts(x, M, K, &a)) return -1;
    int64_t nb = K / BLOCK;
#ifdef CT_AVX512
    if (M == 1) { /* a decode step: rows two at a time, sharing the work on x */
#pragma omp parallel for schedule(static) num_threads(nthreads) if (nthreads > 1 && N * K >= 65536)
        for (int64_t i = 0; i < N / 2; i++) {
            int64_t n = 2 * i;
            float out[2];
            dot_q8_two_rows(w + n * K, w + (n + 1) * K, wd + n * nb, wd + (n + 1) * nb, a.q, a.d, nb, out);
            y[n] = out[0] + (bias ? bias[n] : 0.0f);
            y[n + 1] = out[1] + (bias ? bias[n + 1] : 0.0f);
        }
        if (N % 2)
            y[N - 1] = dot_q8(w + (N - 1) * K, wd + (N - 1) * nb, a.q, a.d, nb) + (bias ? bias[N - 1] : 0.0f);
        free_acts(&a);
        return 0;
    }
#endif
#pragma omp parallel for schedule(static) num_threads(nthreads) if (nthreads > 1 && N * K >= 65536)
    for (int64_t n = 0; n < N; n++) {
        float b = bias ? bias[n] : 0.0f;
        for (int64_t m = 0; m < M; m++)
            y[m * N + n] = dot_q8(w + n * K, wd + n * nb, a.q + m * K, a.d + m * nb, nb) + b;
    }
    free_acts(&a);
    return 0;
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
    const __m256i ones = _mm256_set1_epi16(1), low4 = _mm256_set1_epi8(0x0f);
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
    for (; b + 2 <= nb; b += 2) {
        _mm_prefetch((const char *)(w + b * BLOCK / 2) + PREFETCH_BYTES, _MM_HINT_T0);
        __m128i r0 = _mm_loadu_si128((const __m128i *)(w + b * BLOCK / 2));
        __m128i r1 = _mm_loadu_si128((const __m128i *)(w + (b + 1) * BLOCK / 2));
        __m256i q0 = _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(r0, 4), r0), low4);
        __m256i q1 = _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(r1, 4), r1), low4);
        __m256i x0 = _mm256_loadu_si256((const __m256i *)(xq + b * BLOCK));
        __m256i x1 = _mm256_loadu_si256((const __m256i *)(xq + (b + 1) * BLOCK));
        __m256i p0 = _mm256_madd_epi16(_mm256_maddubs_epi16(q0, x0), ones);
        __m256i p1 = _mm256_madd_epi16(_mm256_maddubs_epi16(q1, x1), ones);
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

int ct_linear_q4(const float *x, const uint8_t *w, const uint16_t *wd, const uint16_t *wm, const float *bias,
                 float *y, int64_t M, int64_t N, int64_t K, int nthreads) {
    qacts a;
    if (quantize_acts(x, M, K, &a)) return -1;
    int64_t nb = K / BLOCK;
    int8_t *xp = a.q;
#ifdef CT_AVX512
    xp = (int8_t *)malloc((size_t)(M * K));
    if (!xp) {
        free_acts(&a);
        return -1;
    }
    for (int64_t m = 0; m < M; m++) nibble_order(a.q + m * K, xp + m * K, K);
#endif
#pragma omp parallel for schedule(static) num_threads(nthreads) if (nthreads > 1 && N * K >= 65536)
    for (int64_t n = 0; n < N; n++) {
        float b = bias ? bias[n] : 0.0f;
        for (int64_t m = 0; m < M; m++)
            y[m * N + n] = dot_q4(w + n * K / 2, wd + n * nb, wm + n * nb, a.q + m * K, xp + m * K, a.d + m * nb,
                                  a.s + m * nb, nb) + b;
    }
    if (xp != a.q) free(xp);
    free_acts(&a);
    return 0;
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
    const __m256i ones = _mm256_set1_epi16(1), low4 = _mm256_set1_epi8(0x0f), table = _mm256_broadcastsi128_si256(levels);
    __m256 acc = _mm256_setzero_ps();
    for (; b < nb; b++) {
        _mm_prefetch((const char *)(w + b * BLOCK / 2) + PREFETCH_BYTES, _MM_HINT_T0);
        __m128i r = _mm_loadu_si128((const __m128i *)(w + b * BLOCK / 2));
        __m256i q = _mm256_shuffle_epi8(table, _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(r, 4), r), low4));
        __m256i xv = _mm256_loadu_si256((const __m256i *)(xq + b * BLOCK));
        __m256i p = _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_sign_epi8(xv, xv), _mm256_sign_epi8(q, xv)), ones);
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

int ct_linear_iq4nl(const float *x, const uint8_t *w, const uint16_t *wd, const float *bias, float *y, int64_t M,
                    int64_t N, int64_t K, int nthreads) {
    qacts a;
    if (quantize_acts(x, M, K, &a)) return -1;
    int64_t nb = K / BLOCK;
#pragma omp parallel for schedule(static) num_threads(nthreads) if (nthreads > 1 && N * K >= 65536)
    for (int64_t n = 0; n < N; n++) {
        float b = bias ? bias[n] : 0.0f;
        for (int64_t m = 0; m < M; m++)
            y[m * N + n] = dot_iq4nl(w + n * K / 2, wd + n * nb, a.q + m * K, a.d + m * nb, nb) + b;
    }
    free_acts(&a);
    return 0;
}

/* ---- whole matrices back to fp32 (prefill: many rows at once go through a float GEMM) ---- */

void ct_dequant_bf16(const uint16_t *w, float *out, int64_t N, int64_t K, int nthreads) {
#pragma omp parallel for schedule(static) num_threads(nthreads) if (nthreads > 1)
    for (int64_t n = 0; n < N; n++)
        for (int64_t k = 0; k < K; k++) out[n * K + k] = bf16_to_fp32(w[n * K + k]);
}

void ct_dequant_f16(const uint16_t *w, float *out, int64_t N, int64_t K, int nthreads) {
#pragma omp parallel for schedule(static) num_threads(nthreads) if (nthreads > 1)
    for (int64_t n = 0; n < N; n++)
        for (int64_t k = 0; k < K; k++) out[n * K + k] = fp16_to_fp32(w[n * K + k]);
}

void ct_dequant_q8(const int8_t *w, const uint16_t *wd, float *out, int64_t N, int64_t K, int nthreads) {
    int64_t nb = K / BLOCK;
#pragma omp parallel for schedule(static) num_threads(nthreads) if (nthreads > 1)
    for (int64_t n = 0; n < N; n++)
        for (int64_t b = 0; b < nb; b++) {
            float d = fp16_to_fp32(wd[n * nb + b]);
            for (int i = 0; i < BLOCK; i++) out[n * K + b * BLOCK + i] = d * (float)w[n * K + b * BLOCK + i];
        }
}

void ct_dequant_iq4nl(const uint8_t *w, const uint16_t *wd, float *out, int64_t N, int64_t K, int nthreads) {
    int64_t nb = K / BLOCK;
#pragma omp parallel for schedule(static) num_threads(nthreads) if (nthreads > 1)
    for (int64_t n = 0; n < N; n++)
        for (int64_t b = 0; b < nb; b++) {
            float d = fp16_to_fp32(wd[n * nb + b]);
            const uint8_t *r = w + n * K / 2 + b * BLOCK / 2;
            float *o = out + n * K + b * BLOCK;
            for (int j = 0; j < BLOCK / 2; j++) {
                o[j] = d * (float)iq4_levels[r[j] & 0x0f];
                o[j + BLOCK / 2] = d * (float)iq4_levels[r[j] >> 4];
            }
        }
}

void ct_dequant_q4(const uint8_t *w, const uint16_t *wd, const uint16_t *wm, float *out, int64_t N, int64_t K,
                   int nthreads) {
    int64_t nb = K / BLOCK;
#pragma omp parallel for schedule(static) num_threads(nthreads) if (nthreads > 1)
    for (int64_t n = 0; n < N; n++)
        for (int64_t b = 0; b < nb; b++) {
            float d = fp16_to_fp32(wd[n * nb + b]), m = fp16_to_fp32(wm[n * nb + b]);
            const uint8_t *r = w + n * K / 2 + b * BLOCK / 2;
            float *o = out + n * K + b * BLOCK;
            for (int j = 0; j < BLOCK / 2; j++) {
                o[j] = d * (float)(r[j] & 0x0f) + m;
                o[j + BLOCK / 2] = d * (float)(r[j] >> 4) + m;
            }
        }
}

/* ---- attention of one new token over the cached keys/values (decode) ----------------------
 * q: head h at q + h * q_head_stride (hs floats); keys/values of kv head g, position j at
 * k + g * kv_head_stride + j * pos_stride; query head h reads kv head h / (n_head / n_kv_head).
 * out: (n_head, hs). One pass of scores, a softmax, one weighted sum: the few small ops a
 * general attention kernel spends most of a decode step's attention time setting up. */

/* The cache holds fp32, or fp16 (half the bytes a long chat's attention reads, as llama.cpp's
 * default cache; values past fp16's range are clamped to it, never turned into inf). */

static inline uint16_t fp32_to_fp16(float f) {
#ifdef CT_AVX2
    return _cvtss_sh(f, _MM_FROUND_TO_NEAREST_INT);
#else
    uint32_t x;
    memcpy(&x, &f, 4);
    uint32_t sign = (x >> 16) & 0x8000, mant = x & 0x7fffff;
    int32_t exp = (int32_t)((x >> 23) & 0xff) - 127 + 15;
    if (((x >> 23) & 0xff) == 0xff) return (uint16_t)(sign | 0x7c00 | (mant ? 0x200 : 0));
    if (exp >= 31) return (uint16_t)(sign | 0x7c00);
    if (exp <= 0) {
        if (exp < -10) return (uint16_t)sign;
        mant |= 0x800000;
        uint32_t shift = (uint32_t)(14 - exp), half = mant >> shift, rest = mant & ((1u << shift) - 1), mid = 1u << (shift - 1);
        if (rest > mid || (rest == mid && (half & 1))) half++;
        return (uint16_t)(sign | half);
    }
    uint32_t half = sign | ((uint32_t)exp << 10) | (mant >> 13), rest = mant & 0x1fff;
    if (rest > 0x1000 || (rest == 0x1000 && (half & 1))) half++;
    return (uint16_t)half;
#endif
}

static float dot_kv(const float *q, const void *k, int64_t n, int half) {
    int64_t i = 0;
    float sum = 0.0f;
    const float *kf = (const float *)k;
    const uint16_t *kh = (const uint16_t *)k;
#ifdef CT_AVX2
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
    for (; i + 16 <= n; i += 16) {
        __m256 k0 = half ? _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(kh + i))) : _mm256_loadu_ps(kf + i);
        __m256 k1 = half ? _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(kh + i + 8))) : _mm256_loadu_ps(kf + i + 8);
        acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(q + i), k0, acc0);
        acc1 = _mm256_fmadd_ps(_mm256_loadu_ps(q + i + 8), k1, acc1);
    }
    sum = hsum(_mm256_add_ps(acc0, acc1));
#endif
    for (; i < n; i++) sum += q[i] * (half ? fp16_to_fp32(kh[i]) : kf[i]);
    return sum;
}

static void axpy_kv(float a, const void *x, float *y, int64_t n, int half) {
    int64_t i = 0;
    const float *xf = (const float *)x;
    const uint16_t *xh = (const uint16_t *)x;
#ifdef CT_AVX2
    __m256 va = _mm256_set1_ps(a);
    for (; i + 8 <= n; i += 8) {
        __m256 xv = half ? _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(xh + i))) : _mm256_loadu_ps(xf + i);
        _mm256_storeu_ps(y + i, _mm256_fmadd_ps(va, xv, _mm256_loadu_ps(y + i)));
    }
#endif
    for (; i < n; i++) y[i] += a * (half ? fp16_to_fp32(xh[i]) : xf[i]);
}

static void store_kv(void *dst, const float *src, int64_t n, int half) {
    if (!half) {
        memcpy(dst, src, sizeof(float) * (size_t)n);
        return;
    }
    uint16_t *d = (uint16_t *)dst;
    for (int64_t i = 0; i < n; i++) d[i] = fp32_to_fp16(fmaxf(-65504.0f, fminf(65504.0f, src[i])));
}

/* k, v: the cache of one layer; element size 4 (fp32) or 2 (half = 1); strides in elements. */
int ct_attend_one(const float *q, int64_t q_head_stride, const void *k, const void *v, int64_t kv_head_stride,
                  int64_t pos_stride, float *out, int64_t n_head, int64_t n_kv_head, int64_t S, int64_t hs,
                  float scale, int half, int nthreads) {
    int64_t group = n_head / n_kv_head, size = half ? 2 : 4;
    int failed = 0;
#pragma omp parallel for schedule(static) num_threads(nthreads) if (nthreads > 1 && n_head * S * hs >= 16384)
    for (int64_t h = 0; h < n_head; h++) {
        const float *qh = q + h * q_head_stride;
        const char *kh = (const char *)k + (h / group) * kv_head_stride * size;
        const char *vh = (const char *)v + (h / group) * kv_head_stride * size;
        float *oh = out + h * hs;
        float *scores = (float *)malloc(sizeof(float) * (size_t)S);
        if (!scores) {
            failed = 1;
            continue;
        }
        float top = -INFINITY, total = 0.0f;
        for (int64_t j = 0; j < S; j++) {
            scores[j] = dot_kv(qh, kh + j * pos_stride * size, hs, half) * scale;
            top = fmaxf(top, scores[j]);
        }
        for (int64_t j = 0; j < S; j++) {
            scores[j] = expf(scores[j] - top);
            total += scores[j];
        }
        memset(oh, 0, sizeof(float) * (size_t)hs);
        for (int64_t j = 0; j < S; j++) axpy_kv(scores[j] / total, vh + j * pos_stride * size, oh, hs, half);
        free(scores);
    }
    return failed ? -1 : 0;
}

/* ---- one decode step of a whole GPT-2 block --------------------------------------------------
 * Why: at one token per step, a block is ~20 small operations, and through PyTorch each costs
 * its dispatch, allocation and Python call (measured ~0.5 ms per block on GPT-2 small, a fifth
 * of an 8-bit step). Here the block is one call: LayerNorm, the fused q/k/v projection, the
 * cache write at `pos`, attention over positions 0..pos, the output projection and residual,
 * LayerNorm, the MLP with GELU (tanh) and residual. x (C) is updated in place. */

typedef struct ct_lin_s {
    int64_t kind; /* 0: bf16, 1: q8, 2: q4, 3: f16, 4 + CT_Q4_K..CT_KQ_LAST: a K-quant (w: its super-blocks),
                   * 4 + CT_KQ_LAST + 1 (10): iq4nl */
    int64_t N, K;
    const void *w;
    const uint16_t *scale, *offset;
    const float *bias;
    /* The next rows of the same projection, in another type (a file may store q and k in Q4_K and
     * v in Q6_K; each part keeps its own blocks and kernel): its outputs follow ours in y. */
    const struct ct_lin_s *next;
} ct_lin;

static int lin_apply_one(const ct_lin *L, const float *x, float *y, int nthreads);

static int lin_apply(const ct_lin *L, const float *x, float *y, int nthreads) {
    for (; L; y += L->N, L = L->next)
        if (lin_apply_one(L, x, y, nthreads))
            return -1;
    return 0;
}

static int lin_apply_one(const ct_lin *L, const float *x, float *y, int nthreads) {
    switch (L->kind) {
    case 0:
        ct_linear_bf16(x, (const uint16_t *)L->w, L->bias, y, 1, L->N, L->K, nthreads);
        return 0;
    case 1:
        return ct_linear_q8(x, (const int8_t *)L->w, L->scale, L->bias, y, 1, L->N, L->K, nthreads);
    case 2:
        return ct_linear_q4(x, (const uint8_t *)L->w, L->scale, L->offset, L->bias, y, 1, L->N, L->K, nthreads);
    case 3:
        ct_linear_f16(x, (const uint16_t *)L->w, L->bias, y, 1, L->N, L->K, nthreads);
        return 0;
    case 4 + CT_KQ_LAST + 1:
        return ct_linear_iq4nl(x, (const uint8_t *)L->w, L->scale, L->bias, y, 1, L->N, L->K, nthreads);
    default:
        if (L->kind >= 4 && L->kind <= 4 + CT_KQ_LAST)
            return ct_linear_kq((int)(L->kind - 4), x, (const uint8_t *)L->w, L->bias, y, 1, L->N, L->K, nthreads);
    }
    return -1;
}

static void layer_norm(const float *x, const float *w, const float *b, float *out, int64_t C, float eps) {
    double mean = 0.0, var = 0.0;
    for (int64_t i = 0; i < C; i++) mean += x[i];
    mean /= (double)C;
    for (int64_t i = 0; i < C; i++) var += ((double)x[i] - mean) * ((double)x[i] - mean);
    float rstd = (float)(1.0 / sqrt(var / (double)C + (double)eps)), m = (float)mean;
    for (int64_t i = 0; i < C; i++) out[i] = (x[i] - m) * rstd * w[i] + (b ? b[i] : 0.0f);
}

#ifdef CT_AVX2
/* exp(x) for 8 floats: x = n ln2 + r, a degree-6 polynomial for exp(r), 2^n into the exponent
 * (relative error ~2e-7 over the range GELU needs; inputs clamped so 2^n stays finite). */
static inline __m256 exp8(__m256 x) {
    x = _mm256_max_ps(_mm256_min_ps(x, _mm256_set1_ps(88.0f)), _mm256_set1_ps(-87.0f));
    __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                               _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
    __m256 p = _mm256_set1_ps(1.9875691500e-4f);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
    p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
    __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}
#endif

/* GELU, tanh form: 0.5 v (1 + tanh(u)) = v / (1 + exp(-2u)), u = sqrt(2/pi) (v + 0.044715 v^3). */
static void gelu_tanh(float *x, int64_t n) {
    const float c = 0.7978845608028654f; /* sqrt(2 / pi) */
    int64_t i = 0;
#ifdef CT_AVX2
    const __m256 m2c = _mm256_set1_ps(-2.0f * c), k = _mm256_set1_ps(0.044715f), one = _mm256_set1_ps(1.0f);
    for (; i + 8 <= n; i += 8) {
        __m256 v = _mm256_loadu_ps(x + i);
        __m256 inner = _mm256_fmadd_ps(_mm256_mul_ps(k, v), _mm256_mul_ps(v, v), v); /* v + 0.044715 v^3 */
        __m256 e = exp8(_mm256_mul_ps(m2c, inner));
        _mm256_storeu_ps(x + i, _mm256_div_ps(v, _mm256_add_ps(one, e)));
    }
#endif
    for (; i < n; i++) {
        float v = x[i];
        x[i] = 0.5f * v * (1.0f + tanhf(c * (v + 0.044715f * v * v * v)));
    }
}

int ct_gpt2_block_step(const ct_lin *lins, const float *ln1_w, const float *ln1_b, const float *ln2_w,
                       const float *ln2_b, float eps, float *x, void *kc, void *vc, int64_t pos, int64_t max_len,
                       int64_t n_head, int64_t hs, int half, int nthreads) {
    const ct_lin *qkv = &lins[0], *proj = &lins[1], *fc = &lins[2], *fc_proj = &lins[3];
    int64_t C = n_head * hs, H = fc->N;
    float *buf = (float *)malloc(sizeof(float) * (size_t)(C + 3 * C + C + H));
    if (!buf) return -1;
    float *h = buf, *q = buf + C, *att = q + 3 * C, *hidden = att + C;
    int failed = 0;
    layer_norm(x, ln1_w, ln1_b, h, C, eps);
    failed |= lin_apply(qkv, h, q, nthreads);
    int64_t size = half ? 2 : 4;
    for (int64_t head = 0; head < n_head; head++) {
        store_kv((char *)kc + (head * max_len + pos) * hs * size, q + C + head * hs, hs, half);
        store_kv((char *)vc + (head * max_len + pos) * hs * size, q + 2 * C + head * hs, hs, half);
    }
    failed |= ct_attend_one(q, hs, kc, vc, max_len * hs, hs, att, n_head, n_head, pos + 1, hs,
                            1.0f / sqrtf((float)hs), half, nthreads);
    failed |= lin_apply(proj, att, h, nthreads);
    for (int64_t i = 0; i < C; i++) x[i] += h[i];
    layer_norm(x, ln2_w, ln2_b, h, C, eps);
    failed |= lin_apply(fc, h, hidden, nthreads);
    gelu_tanh(hidden, H);
    failed |= lin_apply(fc_proj, hidden, h, nthreads);
    for (int64_t i = 0; i < C; i++) x[i] += h[i];
    free(buf);
    return failed ? -1 : 0;
}

/* ---- one decode step of a whole Llama-family block -------------------------------------------
 * RMSNorm, the fused q/k/v projection (Qwen2's biases in the descriptor), rotary embedding of
 * q and k in the "rotate half" layout (cos/sin: this position's rows, hs values each), the cache
 * write, grouped-query attention, the output projection and residual, RMSNorm, SwiGLU (gate and
 * up fused: gate first) and residual. x (C) is updated in place. */

static void rms_norm(const float *x, const float *w, float *out, int64_t C, float eps) {
    double sum = 0.0;
    for (int64_t i = 0; i < C; i++) sum += (double)x[i] * (double)x[i];
    float r = (float)(1.0 / sqrt(sum / (double)C + (double)eps));
    for (int64_t i = 0; i < C; i++) out[i] = x[i] * r * w[i];
}

static void rope(float *v, const float *cos, const float *sin, int64_t heads, int64_t hs) {
    int64_t half = hs / 2;
    for (int64_t h = 0; h < heads; h++, v += hs)
        for (int64_t i = 0; i < half; i++) {
            float x1 = v[i], x2 = v[i + half];
            v[i] = x1 * cos[i] - x2 * sin[i];
            v[i + half] = x2 * cos[i + half] + x1 * sin[i + half];
        }
}

/* out[i] = silu(gate[i]) * up[i] */
static void swiglu(const float *gate, const float *up, float *out, int64_t n) {
    int64_t i = 0;
#ifdef CT_AVX2
    const __m256 one = _mm256_set1_ps(1.0f), zero = _mm256_setzero_ps();
    for (; i + 8 <= n; i += 8) {
        __m256 g = _mm256_loadu_ps(gate + i);
        __m256 silu = _mm256_div_ps(g, _mm256_add_ps(one, exp8(_mm256_sub_ps(zero, g))));
        _mm256_storeu_ps(out + i, _mm256_mul_ps(silu, _mm256_loadu_ps(up + i)));
    }
#endif
    for (; i < n; i++) out[i] = gate[i] / (1.0f + expf(-gate[i])) * up[i];
}

int ct_llama_block_step(const ct_lin *lins, const float *attn_norm_w, const float *mlp_norm_w, float eps,
                        const float *cos, const float *sin, float *x, void *kc, void *vc, int64_t pos,
                        int64_t max_len, int64_t n_head, int64_t n_kv_head, int64_t hs, int half, int nthreads) {
    const ct_lin *qkv = &lins[0], *proj = &lins[1], *gate_up = &lins[2], *down = &lins[3];
    int64_t C = qkv->K, qw = n_head * hs, kvw = n_kv_head * hs, H = down->K, size = half ? 2 : 4;
    float *buf = (float *)malloc(sizeof(float) * (size_t)(C + qw + 2 * kvw + qw + 2 * H + H));
    if (!buf) return -1;
    float *h = buf, *q = h + C, *att = q + qw + 2 * kvw, *gu = att + qw, *act = gu + 2 * H;
    float *k = q + qw, *v = k + kvw;
    int failed = 0;
    rms_norm(x, attn_norm_w, h, C, eps);
    failed |= lin_apply(qkv, h, q, nthreads);
    rope(q, cos, sin, n_head, hs);
    rope(k, cos, sin, n_kv_head, hs);
    for (int64_t head = 0; head < n_kv_head; head++) {
        store_kv((char *)kc + (head * max_len + pos) * hs * size, k + head * hs, hs, half);
        store_kv((char *)vc + (head * max_len + pos) * hs * size, v + head * hs, hs, half);
    }
    failed |= ct_attend_one(q, hs, kc, vc, max_len * hs, hs, att, n_head, n_kv_head, pos + 1, hs,
                            1.0f / sqrtf((float)hs), half, nthreads);
    failed |= lin_apply(proj, att, h, nthreads);
    for (int64_t i = 0; i < C; i++) x[i] += h[i];
    rms_norm(x, mlp_norm_w, h, C, eps);
    failed |= lin_apply(gate_up, h, gu, nthreads);
    swiglu(gu, gu + H, act, H);
    failed |= lin_apply(down, act, h, nthreads);
    for (int64_t i = 0; i < C; i++) x[i] += h[i];
    free(buf);
    return failed ? -1 : 0;
}

/* ---- a whole decode step's blocks in one call --------------------------------------------- */

typedef struct {
    ct_lin lins[4];
    const float *norm[4]; /* GPT-2: ln_1 weight, bias, ln_2 weight, bias; Llama: the two RMSNorm weights */
    void *kc, *vc;        /* this layer's cache: (heads, max_len, hs) */
} ct_layer;

int ct_gpt2_layers_step(const ct_layer *layers, int64_t n_layer, float eps, float *x, int64_t pos, int64_t max_len,
                        int64_t n_head, int64_t hs, int half, int nthreads) {
    for (int64_t l = 0; l < n_layer; l++) {
        const ct_layer *L = &layers[l];
        if (ct_gpt2_block_step(L->lins, L->norm[0], L->norm[1], L->norm[2], L->norm[3], eps, x, L->kc, L->vc, pos,
                               max_len, n_head, hs, half, nthreads))
            return -1;
    }
    return 0;
}

int ct_llama_layers_step(const ct_layer *layers, int64_t n_layer, float eps, const float *cos, const float *sin,
                         float *x, int64_t pos, int64_t max_len, int64_t n_head, int64_t n_kv_head, int64_t hs,
                         int half, int nthreads) {
    for (int64_t l = 0; l < n_layer; l++) {
        const ct_layer *L = &layers[l];
        if (ct_llama_block_step(L->lins, L->norm[0], L->norm[1], eps, cos, sin, x, L->kc, L->vc, pos, max_len,
                                n_head, n_kv_head, hs, half, nthreads))
            return -1;
    }
    return 0;
}
