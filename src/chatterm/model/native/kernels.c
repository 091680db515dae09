/* Matrix-vector kernels for CPU decoding: y[M,N] = x[M,K] W^T (+ bias), W stored as
 *   bf16  : W as bfloat16 (the top half of an fp32), activations fp32;
 *   q8    : W in blocks of 32 int8 values with one fp16 scale each (GGUF's Q8_0), activations
 *           quantized the same way at call time, dot products in integers;
 *   q4    : W in blocks of 32 4-bit values q (0..15) with an fp16 scale d and an fp16 offset m,
 *           w = q * d + m (GGUF's Q4_1; Q4_0 is m = -8 d), activations as for q8.
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
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#include <immintrin.h>
#define CT_AVX2 1
#endif

#define BLOCK 32

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
#ifdef CT_AVX2
    __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps(), a2 = _mm256_setzero_ps(), a3 = _mm256_setzero_ps();
    for (; k + 32 <= K; k += 32) {
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

/* ---- activations quantized to blocks of 32 int8 ---------------------------------------- */

/* x (K) -> xq (K) int8, xd (K/32) scales, xs (K/32) = xd * sum(xq) per block (for q4's offsets). */
static void quantize_row(const float *x, int8_t *xq, float *xd, float *xs, int64_t K) {
    for (int64_t b = 0; b < K / BLOCK; b++) {
        const float *v = x + b * BLOCK;
        float amax = 0.0f;
        for (int i = 0; i < BLOCK; i++) amax = fmaxf(amax, fabsf(v[i]));
        float d = amax / 127.0f, inv = d > 0.0f ? 1.0f / d : 0.0f;
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
#ifdef CT_AVX2
    const __m256i ones = _mm256_set1_epi16(1);
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
    for (; b + 2 <= nb; b += 2) {
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

int ct_linear_q8(const float *x, const int8_t *w, const uint16_t *wd, const float *bias, float *y,
                 int64_t M, int64_t N, int64_t K, int nthreads) {
    qacts a;
    if (quantize_acts(x, M, K, &a)) return -1;
    int64_t nb = K / BLOCK;
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

static float dot_q4(const uint8_t *w, const uint16_t *wd, const uint16_t *wm, const int8_t *xq, const float *xd,
                    const float *xs, int64_t nb) {
    int64_t b = 0;
    float sum = 0.0f, offsets = 0.0f;
#ifdef CT_AVX2
    const __m256i ones = _mm256_set1_epi16(1), low4 = _mm256_set1_epi8(0x0f);
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
    for (; b + 2 <= nb; b += 2) {
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
#pragma omp parallel for schedule(static) num_threads(nthreads) if (nthreads > 1 && N * K >= 65536)
    for (int64_t n = 0; n < N; n++) {
        float b = bias ? bias[n] : 0.0f;
        for (int64_t m = 0; m < M; m++)
            y[m * N + n] = dot_q4(w + n * K / 2, wd + n * nb, wm + n * nb, a.q + m * K, a.d + m * nb, a.s + m * nb, nb) + b;
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

void ct_dequant_q8(const int8_t *w, const uint16_t *wd, float *out, int64_t N, int64_t K, int nthreads) {
    int64_t nb = K / BLOCK;
#pragma omp parallel for schedule(static) num_threads(nthreads) if (nthreads > 1)
    for (int64_t n = 0; n < N; n++)
        for (int64_t b = 0; b < nb; b++) {
            float d = fp16_to_fp32(wd[n * nb + b]);
            for (int i = 0; i < BLOCK; i++) out[n * K + b * BLOCK + i] = d * (float)w[n * K + b * BLOCK + i];
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
