/* What a decode step runs besides the variants' matrix-vector loops (gemv.c, kquants.c, built
 * once per variant through variant.c): the dispatch to the variant chosen per family
 * (ct_variant_*, ct_linear_*), the unpacking of whole matrices to fp32 for prompts, attention of
 * one token over the cache, and the fused decode step of GPT-2 and Llama-family blocks.
 *
 * Built by chatterm at first use with the system C compiler (native/__init__.py), this file for
 * the CPU it runs on (-march=native), and called through ctypes. Linked against the libgomp
 * that torch has already loaded, so these loops and torch's share one OpenMP thread pool. Every
 * function has a portable scalar path for CPUs without AVX2.
 */
#include "common.h"
#include <omp.h>

/* ---- the variants: each family's loops through the table chosen for it ---------------------- */

#define CT_DECLARE(name) extern const ct_kernels ct_kernels_##name __attribute__((weak));
CT_VARIANT_LIST(CT_DECLARE)
#define CT_ADDRESS(name) &ct_kernels_##name,
/* weak: a variant the build left out (its compiler flags failed) is a null address here */
static const ct_kernels *const listed[] = {CT_VARIANT_LIST(CT_ADDRESS)};
static const ct_kernels *built[sizeof listed / sizeof listed[0]];
static int n_built = -1;
static const ct_kernels *chosen[CT_FAMILIES];

/* Once, at load: the variants present, and each family's default, the first this CPU runs. */
__attribute__((constructor)) static void find_variants(void) {
    n_built = 0;
    for (size_t i = 0; i < sizeof listed / sizeof listed[0]; i++)
        if (listed[i]) built[n_built++] = listed[i];
    for (int f = 0; f < CT_FAMILIES; f++)
        for (int i = 0; i < n_built && !chosen[f]; i++)
            if (built[i]->supported()) chosen[f] = built[i];
}

int ct_variant_count(void) { return n_built; }

const char *ct_variant_name(int i) { return i >= 0 && i < n_built ? built[i]->name : NULL; }

int ct_variant_supported(int i) { return i >= 0 && i < n_built && built[i]->supported(); }

/* Use variant i for `family`: 0, or -1 (nothing changed) where there is no such variant or this CPU cannot run it. */
int ct_variant_set(int family, int i) {
    if (family < 0 || family >= CT_FAMILIES || !ct_variant_supported(i)) return -1;
    chosen[family] = built[i];
    return 0;
}

/* The index of the variant `family` uses, or -1 (no variant runs here). */
int ct_variant_get(int family) {
    for (int i = 0; family >= 0 && family < CT_FAMILIES && i < n_built; i++)
        if (built[i] == chosen[family]) return i;
    return -1;
}

void ct_linear_bf16(const float *x, const uint16_t *w, const float *bias, float *y, int64_t M, int64_t N, int64_t K,
                    int nthreads) {
    chosen[CT_FAMILY_BF16]->bf16(x, w, bias, y, M, N, K, nthreads);
}

void ct_linear_f16(const float *x, const uint16_t *w, const float *bias, float *y, int64_t M, int64_t N, int64_t K,
                   int nthreads) {
    chosen[CT_FAMILY_F16]->f16(x, w, bias, y, M, N, K, nthreads);
}

int ct_linear_q8(const float *x, const int8_t *w, const uint16_t *wd, const uint16_t *wm, const float *bias, float *y,
                 int64_t M, int64_t N, int64_t K, int nthreads) {
    return chosen[CT_FAMILY_Q8]->q8(x, w, wd, wm, bias, y, M, N, K, nthreads);
}

int ct_linear_q4(const float *x, const uint8_t *w, const uint16_t *wd, const uint16_t *wm, const float *bias, float *y,
                 int64_t M, int64_t N, int64_t K, int nthreads) {
    return chosen[CT_FAMILY_Q4]->q4(x, w, wd, wm, bias, y, M, N, K, nthreads);
}

int ct_linear_iq4nl(const float *x, const uint8_t *w, const uint16_t *wd, const float *bias, float *y, int64_t M,
                    int64_t N, int64_t K, int nthreads) {
    return chosen[CT_FAMILY_IQ4NL]->iq4nl(x, w, wd, bias, y, M, N, K, nthreads);
}

int ct_linear_kq(int type, const float *x, const uint8_t *w, const float *bias, float *y, int64_t M, int64_t N,
                 int64_t K, int nthreads) {
    if (type < CT_Q4_K || type > CT_KQ_LAST) return -1;
    return chosen[CT_FAMILY_KQ]->kq(type, x, w, bias, y, M, N, K, nthreads);
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

/* wm: per-block offsets (w = d q + m), or NULL */
void ct_dequant_q8(const int8_t *w, const uint16_t *wd, const uint16_t *wm, float *out, int64_t N, int64_t K,
                   int nthreads) {
    int64_t nb = K / BLOCK;
#pragma omp parallel for schedule(static) num_threads(nthreads) if (nthreads > 1)
    for (int64_t n = 0; n < N; n++)
        for (int64_t b = 0; b < nb; b++) {
            float d = fp16_to_fp32(wd[n * nb + b]), m = wm ? fp16_to_fp32(wm[n * nb + b]) : 0.0f;
            for (int i = 0; i < BLOCK; i++) out[n * K + b * BLOCK + i] = d * (float)w[n * K + b * BLOCK + i] + m;
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

/* k, v: the cache of one layer; element size 4 (fp32) or 2 (half = 1); strides in elements.
 * The heads are shared by the calling team's threads (an orphaned `omp for`; called outside a
 * parallel region, one thread takes them all). 0, or -1 where this thread's scratch could not be
 * allocated (it still reaches the loop's barrier: see CT_TEAM in common.h). */
static int attend_heads(const float *q, int64_t q_head_stride, const void *k, const void *v, int64_t kv_head_stride,
                        int64_t pos_stride, float *out, int64_t n_head, int64_t n_kv_head, int64_t S, int64_t hs,
                        float scale, int half) {
    int64_t group = n_head / n_kv_head, size = half ? 2 : 4;
    float *scores = (float *)malloc(sizeof(float) * (size_t)S); /* one per thread, for each of its heads */
#pragma omp for schedule(static)
    for (int64_t h = 0; h < n_head; h++) {
        if (!scores) continue;
        const float *qh = q + h * q_head_stride;
        const char *kh = (const char *)k + (h / group) * kv_head_stride * size;
        const char *vh = (const char *)v + (h / group) * kv_head_stride * size;
        float *oh = out + h * hs;
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
    }
    int failed = !scores;
    free(scores);
    return failed ? -1 : 0;
}

int ct_attend_one(const float *q, int64_t q_head_stride, const void *k, const void *v, int64_t kv_head_stride,
                  int64_t pos_stride, float *out, int64_t n_head, int64_t n_kv_head, int64_t S, int64_t hs,
                  float scale, int half, int nthreads) {
    int failed = 0;
#pragma omp parallel num_threads(nthreads) if (nthreads > 1 && n_head * S * hs >= 16384) reduction(| : failed)
    failed |= attend_heads(q, q_head_stride, k, v, kv_head_stride, pos_stride, out, n_head, n_kv_head, S, hs, scale,
                           half) != 0;
    return failed ? -1 : 0;
}

/* ---- the parts of a decode step's blocks ------------------------------------------------------
 * A linear layer as the fused step reads it, and the element-wise work between the products. */

typedef struct {
    int64_t kind; /* 0: bf16, 1: q8 (offset: per-block offsets, or NULL), 2: q4, 3: f16, 4 + CT_Q4_K..CT_KQ_LAST: a
                   * K-quant (w: its super-blocks),
                   * 4 + CT_KQ_LAST + 1 (10): iq4nl, CT_STACKED (11): w is `parts` ct_lins whose outputs
                   * follow one another (q, k and v of one projection stored as different types) */
    int64_t N, K;
    const void *w;
    const uint16_t *scale, *offset;
    const float *bias;
    int64_t parts;
} ct_lin;

#define CT_STACKED 11

static int lin_apply(const ct_lin *L, const float *x, float *y, int nthreads) {
    switch (L->kind) {
    case 0:
        ct_linear_bf16(x, (const uint16_t *)L->w, L->bias, y, 1, L->N, L->K, nthreads);
        return 0;
    case 1:
        return ct_linear_q8(x, (const int8_t *)L->w, L->scale, L->offset, L->bias, y, 1, L->N, L->K, nthreads);
    case 2:
        return ct_linear_q4(x, (const uint8_t *)L->w, L->scale, L->offset, L->bias, y, 1, L->N, L->K, nthreads);
    case 3:
        ct_linear_f16(x, (const uint16_t *)L->w, L->bias, y, 1, L->N, L->K, nthreads);
        return 0;
    case 4 + CT_KQ_LAST + 1:
        return ct_linear_iq4nl(x, (const uint8_t *)L->w, L->scale, L->bias, y, 1, L->N, L->K, nthreads);
    case CT_STACKED: {
        const ct_lin *parts = (const ct_lin *)L->w;
        int failed = 0;
        for (int64_t p = 0, row = 0; p < L->parts; row += parts[p].N, p++)
            failed |= parts[p].kind == CT_STACKED || lin_apply(&parts[p], x, y + row, nthreads);
        return failed ? -1 : 0;
    }
    default:
        if (L->kind >= 4 && L->kind <= 4 + CT_KQ_LAST)
            return ct_linear_kq((int)(L->kind - 4), x, (const uint8_t *)L->w, L->bias, y, 1, L->N, L->K, nthreads);
    }
    return -1;
}

/* Row `id` of L's weight in fp32: a token's embedding read from the tied output projection. */
static int lin_row(const ct_lin *L, int64_t id, float *out) {
    int64_t K = L->K, nb = K / BLOCK;
    if (id < 0 || id >= L->N) return -1;
    switch (L->kind) {
    case 0:
        ct_dequant_bf16((const uint16_t *)L->w + id * K, out, 1, K, 1);
        return 0;
    case 1:
        ct_dequant_q8((const int8_t *)L->w + id * K, L->scale + id * nb, L->offset ? L->offset + id * nb : NULL, out,
                      1, K, 1);
        return 0;
    case 2:
        ct_dequant_q4((const uint8_t *)L->w + id * K / 2, L->scale + id * nb, L->offset + id * nb, out, 1, K, 1);
        return 0;
    case 3:
        ct_dequant_f16((const uint16_t *)L->w + id * K, out, 1, K, 1);
        return 0;
    case 4 + CT_KQ_LAST + 1:
        ct_dequant_iq4nl((const uint8_t *)L->w + id * K / 2, L->scale + id * nb, out, 1, K, 1);
        return 0;
    default:
        if (L->kind >= 4 && L->kind <= 4 + CT_KQ_LAST) {
            int type = (int)(L->kind - 4);
            ct_dequant_kq(type, (const uint8_t *)L->w + id * ct_kq_row_bytes(type, K), out, 1, K, 1);
            return 0;
        }
    }
    return -1; /* a stacked projection is no embedding */
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

static void rms_norm(const float *x, const float *w, float *out, int64_t C, float eps) {
    double sum = 0.0;
    for (int64_t i = 0; i < C; i++) sum += (double)x[i] * (double)x[i];
    float r = (float)(1.0 / sqrt(sum / (double)C + (double)eps));
    for (int64_t i = 0; i < C; i++) out[i] = x[i] * r * w[i];
}

/* One head's first `rotated` dims (even) turned in the "rotate half" layout: dims i and
 * i + rotated/2 form a pair; cos, sin: `rotated` values. The rest of the head stays (Phi-4-mini
 * turns 3/4 of each head). */
static void rope(float *v, const float *cos, const float *sin, int64_t rotated) {
    int64_t half = rotated / 2;
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

/* ---- a whole decode step in one call -------------------------------------------------------
 * Why one call: at one token per step, a block is ~20 small operations, and through PyTorch each
 * costs its dispatch, allocation and Python call (measured ~0.5 ms per block on GPT-2 small, a
 * fifth of an 8-bit step).
 * Why one parallel region for the step: every thread walks the same layers, the products' rows,
 * the attention heads and the element-wise work shared among them by `omp for`s (whose ends are
 * the step's barriers), as llama.cpp's graph compute does. With a region per product, the work
 * between products (norms, rotary, the cache write, SwiGLU, each product's activation
 * quantization) ran on one thread while the others waited: SmolLM2-135M Q4_0 at two threads
 * decodes ~5% faster this way (where the 8-bit step streams its weights at the machine's read
 * bandwidth, it is the same). Each thread computes the norms itself into its own buffer (576
 * values: less than a barrier costs) and quantizes a product's activations itself, so x and the
 * norms are read, never written, between barriers. */

typedef struct {
    ct_lin lins[4];
    const float *norm[6]; /* GPT-2: ln_1 weight, bias, ln_2 weight, bias. Llama: the two RMSNorm weights; the q
                           * and k norms' (Qwen3, Gemma 3: over each head, before the rotation); the norms of
                           * the attention's and the MLP's outputs (Gemma 3); NULL where absent */
    void *kc, *vc;        /* this layer's cache: (heads, max_len, hs) */
    int64_t rotary_dims;  /* Llama: each head's leading dims the rotary embedding turns; 0: none (SmolLM3's
                           * NoPE layers) */
    int64_t window;       /* Llama: the positions a query sees, itself included (Gemma 3's local layers, which
                           * also take the local rotary rows); 0: all */
} ct_layer;

/* What follows the last block, done in the same call when the caller gives it: the final norm
 * and the vocabulary projection into `logits`. Why: after a step has streamed every weight, the
 * few PyTorch operations that did this found their code and data out of the caches; a 576-wide
 * RMSNorm that takes 8 us alone took ~110 us there. */
typedef struct {
    int64_t is_layer_norm; /* 1: LayerNorm (norm_b its bias, or NULL), 0: RMSNorm */
    const float *norm_w, *norm_b;
    double eps;
    const ct_lin *head;
    float *logits;
} ct_head;

/* x += y, shared by the team */
static void add_shared(float *x, const float *y, int64_t n) {
#pragma omp for schedule(static)
    for (int64_t i = 0; i < n; i++) x[i] += y[i];
}

/* The element-wise activations in chunks of 64 (a multiple of the vector width: every value takes
 * the path it takes in one call), shared by the team. */
#define CT_CHUNK 64

static void gelu_shared(float *x, int64_t n) {
#pragma omp for schedule(static)
    for (int64_t c = 0; c < (n + CT_CHUNK - 1) / CT_CHUNK; c++)
        gelu_tanh(x + c * CT_CHUNK, n - c * CT_CHUNK < CT_CHUNK ? n - c * CT_CHUNK : CT_CHUNK);
}

/* out = act(gate) * up: SiLU (SwiGLU), or GELU-tanh (gelu: Gemma's GeGLU) */
static void gated_shared(const float *gate, const float *up, float *out, int64_t n, int gelu) {
#pragma omp for schedule(static)
    for (int64_t c = 0; c < (n + CT_CHUNK - 1) / CT_CHUNK; c++) {
        int64_t at = c * CT_CHUNK, m = n - at < CT_CHUNK ? n - at : CT_CHUNK;
        if (!gelu) {
            swiglu(gate + at, up + at, out + at, m);
            continue;
        }
        memcpy(out + at, gate + at, sizeof(float) * (size_t)m);
        gelu_tanh(out + at, m);
        for (int64_t i = at; i < at + m; i++) out[i] *= up[i];
    }
}

/* x += RMSNorm(y) (w: its weight): every thread sums y's squares itself, then the team adds. */
static void add_normed_shared(float *x, const float *y, const float *w, int64_t n, float eps) {
    double sum = 0.0;
    for (int64_t i = 0; i < n; i++) sum += (double)y[i] * (double)y[i];
    float r = (float)(1.0 / sqrt(sum / (double)n + (double)eps));
#pragma omp for schedule(static)
    for (int64_t i = 0; i < n; i++) x[i] += y[i] * r * w[i];
}

static int head_apply(const ct_head *head, const float *x, float *h, int64_t C) {
    if (head->is_layer_norm) layer_norm(x, head->norm_w, head->norm_b, h, C, (float)head->eps);
    else rms_norm(x, head->norm_w, h, C, (float)head->eps);
    return lin_apply(head->head, h, head->logits, CT_TEAM);
}

static int team_size(int nthreads) { return nthreads > 1 ? nthreads : 1; }

/* Where the step's input comes from: x as given (token < 0), or token `token`'s row of `table` (the
 * token embedding as a packed layer: a tied model's output projection, or a table of its own),
 * plus GPT-2's learned position embedding: `position_row` (fp32) or row `position` of
 * `positions` (a packed table); neither where there is none. Why: the
 * embedding's few PyTorch operations, run just after the previous step had streamed every
 * weight, cost ~50 us of a 5 ms SmolLM2 step. */
typedef struct {
    int64_t token;
    const ct_lin *table;
    const float *position_row;
    const ct_lin *positions;
    int64_t position;
    double scale; /* the token's row times this (Gemma 3: sqrt of the width); 0: 1 */
} ct_input;

static int read_input(const ct_input *in, float *x, int64_t C) {
    if (!in || in->token < 0) return 0;
    if (!in->table || in->table->K != C || lin_row(in->table, in->token, x)) return -1;
    if (in->scale > 0)
        for (int64_t i = 0; i < C; i++) x[i] *= (float)in->scale;
    if (in->position_row)
        for (int64_t i = 0; i < C; i++) x[i] += in->position_row[i];
    if (in->positions) {
        float *row = (float *)malloc(sizeof(float) * (size_t)C);
        int failed = !row || in->positions->K != C || lin_row(in->positions, in->position, row);
        for (int64_t i = 0; !failed && i < C; i++) x[i] += row[i];
        free(row);
        return failed ? -1 : 0;
    }
    return 0;
}

/* GPT-2: LayerNorm, the fused q/k/v projection, the cache write at `pos`, attention over
 * positions 0..pos, the output projection and residual, LayerNorm, the MLP with GELU (tanh) and
 * residual, for every layer; x (C) is updated in place. */
int ct_gpt2_layers_step(const ct_layer *layers, int64_t n_layer, float eps, float *x, int64_t pos, int64_t max_len,
                        int64_t n_head, int64_t hs, int half, const ct_input *in, const ct_head *head, int nthreads) {
    int64_t C = n_head * hs, H = layers[0].lins[2].N, size = half ? 2 : 4, teams = team_size(nthreads);
    if (read_input(in, x, C)) return -1;
    float *buf = (float *)malloc(sizeof(float) * (size_t)(3 * C + C + H + C + teams * C));
    if (!buf) return -1;
    float *q = buf, *att = q + 3 * C, *hidden = att + C, *y = hidden + H, *own = y + C;
    int failed = 0;
#pragma omp parallel num_threads(teams) if (teams > 1) reduction(| : failed)
    {
        float *h = own + omp_get_thread_num() * C;
        for (int64_t l = 0; l < n_layer; l++) {
            const ct_layer *L = &layers[l];
            const ct_lin *qkv = &L->lins[0], *proj = &L->lins[1], *fc = &L->lins[2], *fc_proj = &L->lins[3];
            layer_norm(x, L->norm[0], L->norm[1], h, C, eps);
            failed |= lin_apply(qkv, h, q, CT_TEAM) != 0;
#pragma omp for schedule(static)
            for (int64_t g = 0; g < n_head; g++) {
                store_kv((char *)L->kc + (g * max_len + pos) * hs * size, q + C + g * hs, hs, half);
                store_kv((char *)L->vc + (g * max_len + pos) * hs * size, q + 2 * C + g * hs, hs, half);
            }
            failed |= attend_heads(q, hs, L->kc, L->vc, max_len * hs, hs, att, n_head, n_head, pos + 1, hs,
                                   1.0f / sqrtf((float)hs), half) != 0;
            failed |= lin_apply(proj, att, y, CT_TEAM) != 0;
            add_shared(x, y, C);
            layer_norm(x, L->norm[2], L->norm[3], h, C, eps);
            failed |= lin_apply(fc, h, hidden, CT_TEAM) != 0;
            gelu_shared(hidden, H);
            failed |= lin_apply(fc_proj, hidden, y, CT_TEAM) != 0;
            add_shared(x, y, C);
        }
        if (head) failed |= head_apply(head, x, h, C) != 0;
    }
    free(buf);
    return failed ? -1 : 0;
}

/* What the Llama family's members add (NULL: plain Llama): the local layers' rotary rows for this
 * position, the attention's scale, the MLP's gate. */
typedef struct {
    const float *cos_local, *sin_local; /* Gemma 3: the rows of the local layers' table */
    double attn_scale;                  /* the scores' scale; 0: 1/sqrt(hs) */
    int64_t gelu;                       /* 1: GELU-tanh gate (Gemma's GeGLU); 0: SiLU (SwiGLU) */
} ct_llama_opts;

/* The Llama family: RMSNorm, the fused q/k/v projection (Qwen2's biases in the descriptor),
 * Qwen3's RMSNorm over each head's q and k, the rotary embedding of q and k in the "rotate half"
 * layout over each layer's rotary_dims (cos/sin: this position's rows, that many values each;
 * none in SmolLM3's NoPE layers), the cache write, grouped-query attention, the output
 * projection and residual, RMSNorm, SwiGLU (gate and up fused: gate first) and residual, for
 * every layer. eps: every RMSNorm's. */
int ct_llama_layers_step(const ct_layer *layers, int64_t n_layer, float eps, const float *cos, const float *sin,
                         float *x, int64_t pos, int64_t max_len, int64_t n_head, int64_t n_kv_head, int64_t hs,
                         int half, const ct_llama_opts *opts, const ct_input *in, const ct_head *head,
                         int nthreads) {
    int64_t C = layers[0].lins[0].K, qw = n_head * hs, kvw = n_kv_head * hs, H = layers[0].lins[3].K;
    float scale = opts && opts->attn_scale > 0 ? (float)opts->attn_scale : 1.0f / sqrtf((float)hs);
    int gelu = opts && opts->gelu;
    if (read_input(in, x, C)) return -1;
    int64_t size = half ? 2 : 4, teams = team_size(nthreads);
    float *buf = (float *)malloc(sizeof(float) * (size_t)(qw + 2 * kvw + qw + 2 * H + H + C + teams * C));
    if (!buf) return -1;
    float *q = buf, *att = q + qw + 2 * kvw, *gu = att + qw, *act = gu + 2 * H, *y = act + H, *own = y + C;
    float *k = q + qw, *v = k + kvw;
    int failed = 0;
#pragma omp parallel num_threads(teams) if (teams > 1) reduction(| : failed)
    {
        float *h = own + omp_get_thread_num() * C;
        for (int64_t l = 0; l < n_layer; l++) {
            const ct_layer *L = &layers[l];
            const ct_lin *qkv = &L->lins[0], *proj = &L->lins[1], *gate_up = &L->lins[2], *down = &L->lins[3];
            rms_norm(x, L->norm[0], h, C, eps);
            failed |= lin_apply(qkv, h, q, CT_TEAM) != 0;
#pragma omp for schedule(static)
            for (int64_t j = 0; j < n_head + n_kv_head; j++) { /* q's heads, then k's (k follows q) */
                const float *head_norm = L->norm[j < n_head ? 2 : 3];
                if (head_norm) rms_norm(q + j * hs, head_norm, q + j * hs, hs, eps); /* in place: it sums first */
                if (L->rotary_dims && L->window && opts && opts->cos_local)
                    rope(q + j * hs, opts->cos_local, opts->sin_local, L->rotary_dims);
                else if (L->rotary_dims)
                    rope(q + j * hs, cos, sin, L->rotary_dims);
                if (j >= n_head) {
                    int64_t g = j - n_head;
                    store_kv((char *)L->kc + (g * max_len + pos) * hs * size, k + g * hs, hs, half);
                    store_kv((char *)L->vc + (g * max_len + pos) * hs * size, v + g * hs, hs, half);
                }
            }
            int64_t first = L->window && pos + 1 > L->window ? pos + 1 - L->window : 0; /* the oldest key seen */
            failed |= attend_heads(q, hs, (const char *)L->kc + first * hs * size, (const char *)L->vc + first * hs * size,
                                   max_len * hs, hs, att, n_head, n_kv_head, pos + 1 - first, hs, scale, half) != 0;
            failed |= lin_apply(proj, att, y, CT_TEAM) != 0;
            if (L->norm[4]) add_normed_shared(x, y, L->norm[4], C, eps);
            else add_shared(x, y, C);
            rms_norm(x, L->norm[1], h, C, eps);
            failed |= lin_apply(gate_up, h, gu, CT_TEAM) != 0;
            gated_shared(gu, gu + H, act, H, gelu);
            failed |= lin_apply(down, act, y, CT_TEAM) != 0;
            if (L->norm[5]) add_normed_shared(x, y, L->norm[5], C, eps);
            else add_shared(x, y, C);
        }
        if (head) failed |= head_apply(head, x, h, C) != 0;
    }
    free(buf);
    return failed ? -1 : 0;
}
