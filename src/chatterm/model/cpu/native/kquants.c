/* GGUF's K-quants (and IQ4_XS) as stored, times activations: y[M,N] = x[M,K] W^T (+ bias), W in super-blocks
 * of 256 values along K (ggml's layouts, read byte for byte):
 *   Q4_K (144 bytes): fp16 d, dmin; 12 bytes of 6-bit scales and mins for 8 sub-blocks of 32;
 *                     128 bytes of nibbles (chunk c of 64 values: byte l holds value l of
 *                     sub-block 2c low, of sub-block 2c+1 high). w = d sc q - dmin m, q 0..15.
 *   Q5_K (176 bytes): Q4_K's header, 32 bytes of fifth bits (byte l, bit j: value l of
 *                     sub-block j), then Q4_K's nibbles. q 0..31.
 *   Q6_K (210 bytes): 128 bytes of low nibbles, 64 of high bit pairs, 16 int8 scales (one per 16
 *                     values), fp16 d. w = d sc (q - 32), q 0..63.
 *   Q2_K (84 bytes):  16 bytes of 4-bit scale and min per 16 values, 64 bytes of 2-bit q, fp16 d,
 *                     dmin. w = d sc q - dmin m.
 *   Q3_K (110 bytes): 32 bytes of high bits, 64 of 2-bit q, 12 of 6-bit scales (minus 32), fp16
 *                     d. w = d sc q, q -4..3 (the high bit set means no -4).
 *   IQ4_XS (136 bytes, not a K-quant but laid out as one): fp16 d, 2 + 4 bytes of 6-bit scales
 *                     (minus 32) for 8 sub-blocks of 32, 128 bytes of nibbles (sub-block j's 16
 *                     bytes: value l low, l + 16 high) indexing 16 fixed levels. w = d sc level[q].
 * Activations are quantized per 256 to int8 with one float scale and the sum of each 16 (ggml's
 * q8_K): a sub-block's offset then costs one multiply by that sum, not a pass over its values.
 *
 * Why these: Q4_K_M / Q5_K_M / Q6_K files, the ones people download, are made of them (and
 * Q3_K_M / Q2_K of Q3_K and Q2_K); reading them as stored keeps a 4.5-bit model at 4.5 bits in
 * memory. Every type has AVX-512 VNNI and AVX2 loops (unsigned q times signed x with maddubs,
 * then the sub-block's scale with a 16-bit madd, or dpwssd on AVX-512, summed in integers per
 * super-block, scaled into floats once per super-block); the portable path unpacks a
 * super-block to 256 int8 values and 16 scales and offsets (the same unpacking gives the fp32
 * weights, so `dequantized()` and the kernels read one thing). Measured, one thread of the
 * AVX-512 Xeon, 2048x8192 (scripts/kernel_speed.py --threads 1 --cpu-time): Q4_K 0.64 ms,
 * Q5_K 0.96, Q6_K 0.66, Q3_K 0.76, Q2_K 0.54, IQ4_XS 0.85; Q8_0 0.64, Q4_0 0.44 (gemv.c).
 * A few rows at once (a short prompt) share each super-block's unpacking (dot_kq_rows): Q4_K
 * 2048x2048 at 16 rows 2.55 -> 1.42 ms.
 */
#include "common.h"

#define QK 256

static const int64_t block_bytes[] = {144, 176, 210, 84, 110, 136}; /* by CT_Q4_K .. CT_IQ4_XS */

static inline float half_at(const uint8_t *p) {
    uint16_t h;
    memcpy(&h, p, 2);
    return fp16_to_fp32(h);
}

/* Q4_K and Q5_K's 12 bytes -> 8 scales and 8 mins of 6 bits. */
static inline __attribute__((unused)) void scales_k4(const uint8_t *s, uint8_t *sc, uint8_t *mn) {
    for (int j = 0; j < 4; j++) {
        sc[j] = s[j] & 63;
        mn[j] = s[j + 4] & 63;
        sc[j + 4] = (s[j + 8] & 0x0f) | ((s[j] >> 6) << 4);
        mn[j + 4] = (s[j + 8] >> 4) | ((s[j + 4] >> 6) << 4);
    }
}

/* One super-block -> q (256 int8), scale and offset per 16 values: w[i] = scale[i/16] q[i] - offset[i/16]. */
static __attribute__((unused)) void unpack(int type, const uint8_t *b, int8_t *q, float *scale, float *offset) {
    switch (type) {
    case CT_Q4_K:
    case CT_Q5_K: {
        float d = half_at(b), dmin = half_at(b + 2);
        uint8_t sc[8], mn[8];
        scales_k4(b + 4, sc, mn);
        const uint8_t *hi = b + 16, *qs = type == CT_Q5_K ? b + 48 : b + 16;
        for (int j = 0; j < 8; j++) {
            scale[2 * j] = scale[2 * j + 1] = d * (float)sc[j];
            offset[2 * j] = offset[2 * j + 1] = dmin * (float)mn[j];
            for (int l = 0; l < 32; l++) {
                int v = (qs[(j / 2) * 32 + l] >> (4 * (j & 1))) & 15;
                if (type == CT_Q5_K) v |= ((hi[l] >> j) & 1) << 4;
                q[j * 32 + l] = (int8_t)v;
            }
        }
        break;
    }
    case CT_Q6_K: {
        const uint8_t *ql = b, *qh = b + 128;
        const int8_t *sc = (const int8_t *)(b + 192);
        float d = half_at(b + 208);
        for (int g = 0; g < 16; g++) {
            scale[g] = d * (float)sc[g];
            offset[g] = 0.0f;
        }
        for (int h = 0; h < 2; h++)
            for (int l = 0; l < 32; l++) {
                const uint8_t *L = ql + 64 * h, H = qh[32 * h + l];
                int8_t *o = q + 128 * h;
                o[l] = (int8_t)(((L[l] & 15) | ((H & 3) << 4)) - 32);
                o[l + 32] = (int8_t)(((L[l + 32] & 15) | (((H >> 2) & 3) << 4)) - 32);
                o[l + 64] = (int8_t)(((L[l] >> 4) | (((H >> 4) & 3) << 4)) - 32);
                o[l + 96] = (int8_t)(((L[l + 32] >> 4) | (((H >> 6) & 3) << 4)) - 32);
            }
        break;
    }
    case CT_Q2_K: {
        const uint8_t *sc = b, *qs = b + 16;
        float d = half_at(b + 80), dmin = half_at(b + 82);
        for (int g = 0; g < 16; g++) {
            scale[g] = d * (float)(sc[g] & 15);
            offset[g] = dmin * (float)(sc[g] >> 4);
        }
        /* half h, shift s, l: value 128 h + 32 s + l = (qs[32 h + l] >> 2 s) & 3 */
        for (int h = 0; h < 2; h++)
            for (int s = 0; s < 4; s++)
                for (int l = 0; l < 32; l++) q[128 * h + 32 * s + l] = (int8_t)((qs[32 * h + l] >> (2 * s)) & 3);
        break;
    }
    case CT_IQ4_XS: {
        float d = half_at(b);
        uint16_t high;
        memcpy(&high, b + 2, 2);
        for (int j = 0; j < 8; j++) {
            int ls = ((b[4 + j / 2] >> (4 * (j % 2))) & 15) | (((high >> (2 * j)) & 3) << 4);
            scale[2 * j] = scale[2 * j + 1] = d * (float)(ls - 32);
            offset[2 * j] = offset[2 * j + 1] = 0.0f;
            for (int l = 0; l < 16; l++) {
                q[32 * j + l] = iq4_levels[b[8 + 16 * j + l] & 15];
                q[32 * j + l + 16] = iq4_levels[b[8 + 16 * j + l] >> 4];
            }
        }
        break;
    }
    default: { /* CT_Q3_K */
        const uint8_t *hmask = b, *qs = b + 32, *s = b + 96;
        float d = half_at(b + 108);
        for (int g = 0; g < 16; g++) {
            int low = (s[g % 8] >> (4 * (g / 8))) & 15, high = (s[8 + g % 4] >> (2 * (g / 4))) & 3;
            scale[g] = d * (float)((low | (high << 4)) - 32);
            offset[g] = 0.0f;
        }
        /* as Q2_K's values, less 4 where bit (value / 32) of hmask[value % 32] is clear */
        for (int h = 0; h < 2; h++)
            for (int s = 0; s < 4; s++)
                for (int l = 0; l < 32; l++) {
                    int high = (hmask[l] >> (4 * h + s)) & 1;
                    q[128 * h + 32 * s + l] = (int8_t)(((qs[32 * h + l] >> (2 * s)) & 3) - 4 + 4 * high);
                }
        break;
    }
    }
}

#ifdef CT_VARIANT /* the products: compiled once per variant (variant.c); the unpacking below them once */

/* ---- activations: per 256, int8 values, one scale, the sum of each 16 (q8_K) ------------- */

typedef struct {
    int8_t *q;
    float *d;
    int16_t *sums;
} kacts;

static void quantize_row_k(const float *x, int8_t *q, float *d, int16_t *sums, int64_t K) {
    int64_t b = 0;
#ifdef CT_AVX2 /* the loop below 8 lanes at a time (the same bytes: common.h's quantize_32) */
    for (; b < K / QK; b++) {
        float nonfinite, s = absmax(x + b * QK, QK, &nonfinite) / 127.0f;
        s += nonfinite;
        for (int g = 0; g < QK / 16; g += 2) {
            int first, last;
            quantize_32(x + b * QK + g * 16, s > 0.0f ? 1.0f / s : 0.0f, q + b * QK + g * 16, &first, &last);
            sums[b * 16 + g] = (int16_t)first;
            sums[b * 16 + g + 1] = (int16_t)last;
        }
        d[b] = s;
    }
#endif
    for (; b < K / QK; b++) {
        const float *v = x + b * QK;
        float amax = 0.0f, nonfinite = 0.0f;
        for (int i = 0; i < QK; i++) {
            amax = fmaxf(amax, fabsf(v[i]));
            nonfinite += v[i] - v[i]; /* NaN for NaN or inf: carried into the scale (gemv.c's quantize_row) */
        }
        float s = amax / 127.0f + nonfinite, inv = s > 0.0f ? 1.0f / s : 0.0f;
        for (int g = 0; g < QK / 16; g++) {
            int sum = 0;
            for (int i = g * 16; i < g * 16 + 16; i++) {
                int v8 = (int)lrintf(v[i] * inv);
                v8 = v8 > 127 ? 127 : (v8 < -127 ? -127 : v8);
                q[b * QK + i] = (int8_t)v8;
                sum += v8;
            }
            sums[b * 16 + g] = (int16_t)sum;
        }
        d[b] = s;
    }
}

static int quantize_acts_k(const float *x, int64_t M, int64_t K, kacts *a) {
    int64_t nb = K / QK;
    a->q = (int8_t *)malloc((size_t)(M * K));
    a->d = (float *)malloc(sizeof(float) * (size_t)(M * nb));
    a->sums = (int16_t *)malloc(sizeof(int16_t) * (size_t)(M * nb * 16));
    if (!a->q || !a->d || !a->sums) {
        free(a->q); free(a->d); free(a->sums);
        return -1;
    }
    for (int64_t m = 0; m < M; m++) quantize_row_k(x + m * K, a->q + m * K, a->d + m * nb, a->sums + m * nb * 16, K);
    return 0;
}

static void free_acts_k(kacts *a) { free(a->q); free(a->d); free(a->sums); }

/* ---- one super-block times one of x ------------------------------------------------------
 * Each returns sum_i w_i xq_i for one super-block; the caller multiplies by x's scale. */

#ifndef CT_AVX2
static float block_portable(int type, const uint8_t *b, const int8_t *x, const int16_t *sums) {
    int8_t q[QK];
    float scale[16], offset[16], sum = 0.0f;
    unpack(type, b, q, scale, offset);
    for (int g = 0; g < 16; g++) {
        int dot = 0;
        for (int i = g * 16; i < g * 16 + 16; i++) dot += (int)q[i] * (int)x[i];
        sum += scale[g] * (float)dot - offset[g] * (float)sums[g];
    }
    return sum;
}
#endif

#if defined(CT_AVX2)
/* A super-block's integer sums stay in a vector (ivec) that is converted and scaled into a
 * float accumulator (fvec): one horizontal sum per row, not per super-block. */
#if defined(CT_AVX512)
typedef __m512i ivec;
typedef __m512 fvec;
#define FV_ZERO _mm512_setzero_ps()
#define FV_FMA(i, s, acc) _mm512_fmadd_ps(_mm512_cvtepi32_ps(i), _mm512_set1_ps(s), acc)
#define FV_SUM(v) _mm512_reduce_add_ps(v)
#else
typedef __m256i ivec;
typedef __m256 fvec;
#define FV_ZERO _mm256_setzero_ps()
#define FV_FMA(i, s, acc) _mm256_fmadd_ps(_mm256_cvtepi32_ps(i), _mm256_set1_ps(s), acc)
#define FV_SUM(v) hsum(v)
#endif

/* Q4_K / Q5_K: sum_j sc_j (q . x)_j as an ivec to scale by d; *offsets: 8 int32 summing to
 * sum_j m_j (x's sum over sub-block j), to scale by dmin. */
/* scales_k4 on words (x86 is little-endian): the 8 scales and the 8 mins as bytes of one
 * 64-bit value each. Byte-by-byte unpacking cost as much as a super-block's products. */
static inline void scales_k4_words(const uint8_t *s, uint64_t *sc, uint64_t *mn) {
    uint32_t a, b, c;
    memcpy(&a, s, 4);
    memcpy(&b, s + 4, 4);
    memcpy(&c, s + 8, 4);
    *sc = (a & 0x3f3f3f3fu) | (uint64_t)((c & 0x0f0f0f0fu) | ((a >> 2) & 0x30303030u)) << 32;
    *mn = (b & 0x3f3f3f3fu) | (uint64_t)(((c >> 4) & 0x0f0f0f0fu) | ((b >> 2) & 0x30303030u)) << 32;
}

static inline void block_k4(int type, const uint8_t *b, int R, const int8_t *const *x, const int16_t *const *sums,
                            ivec *dots, __m256i *offsets) {
    const uint8_t *qs = type == CT_Q5_K ? b + 48 : b + 16;
    uint64_t sc64, mn64;
    scales_k4_words(b + 4, &sc64, &mn64);
    __m128i m8 = _mm_cvtsi64_si128((long long)mn64);
    __m256i mins = _mm256_cvtepu8_epi16(_mm_unpacklo_epi8(m8, m8));
    for (int i = 0; i < R; i++) offsets[i] = _mm256_madd_epi16(mins, _mm256_loadu_si256((const __m256i *)sums[i]));
    const __m256i low4 = _mm256_set1_epi8(0x0f);
#if defined(CT_AVX512)
    /* 64 values a step: the two sub-blocks of a chunk side by side, each sum of two products
     * multiplied by its sub-block's scale and accumulated by one dpwssd. */
    const __m512i sixteen = _mm512_set1_epi8(16);
    __m512i scales = _mm512_castsi128_si512(_mm_cvtepu8_epi16(_mm_cvtsi64_si128((long long)sc64)));
    __m512i hbits = _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *)(b + 16)));
    for (int i = 0; i < R; i++) dots[i] = _mm512_setzero_si512();
    for (int c = 0; c < 4; c++) {
        __m256i r = _mm256_loadu_si256((const __m256i *)(qs + 32 * c));
        __m512i q = _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_and_si256(r, low4)),
                                       _mm256_and_si256(_mm256_srli_epi16(r, 4), low4), 1);
        if (type == CT_Q5_K) {
            __m512i bit = _mm512_inserti64x4(_mm512_set1_epi8((char)(1 << (2 * c))), _mm256_set1_epi8((char)(2 << (2 * c))), 1);
            q = _mm512_mask_add_epi8(q, _mm512_test_epi8_mask(hbits, bit), q, sixteen);
        }
        __m512i which = _mm512_inserti64x4(_mm512_set1_epi16((short)(2 * c)), _mm256_set1_epi16((short)(2 * c + 1)), 1);
        __m512i sc = _mm512_permutexvar_epi16(which, scales);
        for (int i = 0; i < R; i++)
            dots[i] = _mm512_dpwssd_epi32(dots[i], _mm512_maddubs_epi16(q, _mm512_loadu_si512((const void *)(x[i] + 64 * c))), sc);
    }
#else
    const __m256i sixteen = _mm256_set1_epi8(16);
    __m256i hbits = _mm256_loadu_si256((const __m256i *)(b + 16));
    for (int i = 0; i < R; i++) dots[i] = _mm256_setzero_si256();
    for (int c = 0; c < 4; c++) {
        __m256i r = _mm256_loadu_si256((const __m256i *)(qs + 32 * c));
        __m256i lo = _mm256_and_si256(r, low4), hi = _mm256_and_si256(_mm256_srli_epi16(r, 4), low4);
        if (type == CT_Q5_K) {
            __m256i b0 = _mm256_set1_epi8((char)(1 << (2 * c))), b1 = _mm256_set1_epi8((char)(2 << (2 * c)));
            lo = _mm256_or_si256(lo, _mm256_and_si256(_mm256_cmpeq_epi8(_mm256_and_si256(hbits, b0), b0), sixteen));
            hi = _mm256_or_si256(hi, _mm256_and_si256(_mm256_cmpeq_epi8(_mm256_and_si256(hbits, b1), b1), sixteen));
        }
        __m256i s0 = _mm256_set1_epi16((short)((sc64 >> (16 * c)) & 0xff));
        __m256i s1 = _mm256_set1_epi16((short)((sc64 >> (16 * c + 8)) & 0xff));
        for (int i = 0; i < R; i++) {
            __m256i p0 = _mm256_maddubs_epi16(lo, _mm256_loadu_si256((const __m256i *)(x[i] + 64 * c)));
            __m256i p1 = _mm256_maddubs_epi16(hi, _mm256_loadu_si256((const __m256i *)(x[i] + 64 * c + 32)));
            dots[i] = _mm256_add_epi32(dots[i], _mm256_add_epi32(_mm256_madd_epi16(p0, s0), _mm256_madd_epi16(p1, s1)));
        }
    }
#endif
}

/* The types with a scale per 16 values (Q6_K, Q2_K, Q3_K), q taken unsigned:
 *   Q6_K: q 0..63,  w = d sc (q - 32):  d * (sum_g sc_g (q . x)_g) - 32 d * sum_g sc_g (x's sum over g)
 *   Q3_K: q 0..7,   w = d sc (q - 4):   the same with 4 for 32 (sc 6-bit, less 32)
 *   Q2_K: q 0..3,   w = d sc q - dmin m: the offsets are the 4-bit mins m, scaled by dmin
 * The first sum is returned as an ivec (to scale by d), the second in *offsets (8 int32). A half
 * (128 values) is 4 vectors of 32 values, values 32 s .. 32 s + 31 in q[s], in all three. */
static inline void block_g16(int type, const uint8_t *b, int R, const int8_t *const *x, const int16_t *const *sums,
                             ivec *dots, __m256i *offsets) {
    const __m256i low4 = _mm256_set1_epi8(0x0f), low2 = _mm256_set1_epi8(0x03), one = _mm256_set1_epi8(1);
    __m256i sc16, by16;
    if (type == CT_Q6_K) {
        sc16 = by16 = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(b + 192)));
    } else if (type == CT_Q2_K) {
        __m128i raw = _mm_loadu_si128((const __m128i *)b);
        sc16 = _mm256_cvtepu8_epi16(_mm_and_si128(raw, _mm_set1_epi8(0x0f)));
        by16 = _mm256_cvtepu8_epi16(_mm_and_si128(_mm_srli_epi16(raw, 4), _mm_set1_epi8(0x0f)));
    } else { /* Q3_K's 12 bytes on words (unpack's loop, 16 scales at once): low nibbles of bytes 0..7
              * for scales 0..7, high ones for 8..15; two bits each from bytes 8..11 on top */
        uint64_t a, lo, hi;
        uint32_t c;
        memcpy(&a, b + 96, 8);
        memcpy(&c, b + 104, 4);
        lo = (a & 0x0f0f0f0f0f0f0f0fULL) | ((uint64_t)(c & 0x03030303u) | (uint64_t)((c >> 2) & 0x03030303u) << 32) << 4;
        hi = ((a >> 4) & 0x0f0f0f0f0f0f0f0fULL) |
             ((uint64_t)((c >> 4) & 0x03030303u) | (uint64_t)((c >> 6) & 0x03030303u) << 32) << 4;
        sc16 = by16 = _mm256_sub_epi16(_mm256_cvtepu8_epi16(_mm_set_epi64x((long long)hi, (long long)lo)), _mm256_set1_epi16(32));
    }
    for (int i = 0; i < R; i++) offsets[i] = _mm256_madd_epi16(by16, _mm256_loadu_si256((const __m256i *)sums[i]));
#if defined(CT_AVX512)
    static const int16_t lane_eighths[32] = {0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1,
                                             2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3};
    const __m512i eighths = _mm512_loadu_si512((const void *)lane_eighths); /* int16 lane i -> i / 8 */
    __m512i scales = _mm512_castsi256_si512(sc16);
    for (int i = 0; i < R; i++) dots[i] = _mm512_setzero_si512();
#else
    int16_t sc[16];
    _mm256_storeu_si256((__m256i *)sc, sc16);
    for (int i = 0; i < R; i++) dots[i] = _mm256_setzero_si256();
#endif
    for (int h = 0; h < 2; h++) {
        __m256i q[4];
        if (type == CT_Q6_K) {
            __m256i L0 = _mm256_loadu_si256((const __m256i *)(b + 64 * h));
            __m256i L1 = _mm256_loadu_si256((const __m256i *)(b + 64 * h + 32));
            __m256i H = _mm256_loadu_si256((const __m256i *)(b + 128 + 32 * h));
            q[0] = _mm256_or_si256(_mm256_and_si256(L0, low4), _mm256_slli_epi16(_mm256_and_si256(H, low2), 4));
            q[1] = _mm256_or_si256(_mm256_and_si256(L1, low4),
                                   _mm256_slli_epi16(_mm256_and_si256(H, _mm256_set1_epi8(0x0c)), 2));
            q[2] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(L0, 4), low4), _mm256_and_si256(H, _mm256_set1_epi8(0x30)));
            q[3] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(L1, 4), low4),
                                   _mm256_srli_epi16(_mm256_and_si256(H, _mm256_set1_epi8((char)0xc0)), 2));
        } else {
            __m256i Q = _mm256_loadu_si256((const __m256i *)(b + (type == CT_Q2_K ? 16 : 32) + 32 * h));
            for (int s = 0; s < 4; s++) q[s] = _mm256_and_si256(_mm256_srli_epi16(Q, 2 * s), low2);
            if (type == CT_Q3_K) { /* the high bit: bit 4h + s of hmask[l] */
                __m256i H = _mm256_loadu_si256((const __m256i *)b);
                for (int s = 0; s < 4; s++)
                    q[s] = _mm256_or_si256(q[s], _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(H, 4 * h + s), one), 2));
            }
        }
#if defined(CT_AVX512)
        for (int p = 0; p < 2; p++) { /* values 64 p .. 64 p + 63 of this half: scales 8h + 4p .. + 3, 16 values each */
            __m512i qq = _mm512_inserti64x4(_mm512_castsi256_si512(q[2 * p]), q[2 * p + 1], 1);
            __m512i which = _mm512_add_epi16(_mm512_set1_epi16((short)(8 * h + 4 * p)), eighths);
            __m512i sc = _mm512_permutexvar_epi16(which, scales);
            for (int i = 0; i < R; i++)
                dots[i] = _mm512_dpwssd_epi32(
                    dots[i], _mm512_maddubs_epi16(qq, _mm512_loadu_si512((const void *)(x[i] + 128 * h + 64 * p))), sc);
        }
#else
        for (int s = 0; s < 4; s++) {
            int g = 8 * h + 2 * s;
            __m256i scale = _mm256_set_m128i(_mm_set1_epi16(sc[g + 1]), _mm_set1_epi16(sc[g]));
            for (int i = 0; i < R; i++) {
                __m256i pairs = _mm256_maddubs_epi16(q[s], _mm256_loadu_si256((const __m256i *)(x[i] + 128 * h + 32 * s)));
                dots[i] = _mm256_add_epi32(dots[i], _mm256_madd_epi16(pairs, scale));
            }
        }
#endif
    }
}
/* IQ4_XS: sum_j ls_j (level(q) . x)_j, levels signed: |x| times the level with x's sign
 * (maddubs wants one unsigned operand), then the sub-block's scale ls - 32. Sub-block j's 16
 * bytes hold its values l (low nibble) and l + 16 (high), as Q4_0's do. */
static inline void block_iq4xs(const uint8_t *b, int R, const int8_t *const *x, ivec *dots) {
    /* scale j: nibble j of the 4 bytes at b + 4 (little-endian), and bits 2j, 2j + 1 of the
     * 16 at b + 2 above it, less 32; spread into bytes with pdep where BMI2 has it */
    uint16_t high;
    uint32_t low;
    memcpy(&high, b + 2, 2);
    memcpy(&low, b + 4, 4);
#if defined(__BMI2__)
    uint64_t bytes = _pdep_u64(low, 0x0f0f0f0f0f0f0f0fULL) | _pdep_u64(high, 0x3030303030303030ULL);
#else
    uint64_t bytes = 0;
    for (int j = 0; j < 8; j++) bytes |= (uint64_t)(((low >> (4 * j)) & 15) | (((high >> (2 * j)) & 3) << 4)) << (8 * j);
#endif
    __m128i ls16 = _mm_sub_epi16(_mm_cvtepu8_epi16(_mm_cvtsi64_si128((long long)bytes)), _mm_set1_epi16(32));
    const __m128i levels = _mm_loadu_si128((const __m128i *)iq4_levels);
    const __m256i low4 = _mm256_set1_epi8(0x0f);
#if defined(CT_AVX512)
    const __m512i table = _mm512_broadcast_i32x4(levels), zero = _mm512_setzero_si512();
    __m512i scales = _mm512_castsi128_si512(ls16);
    for (int i = 0; i < R; i++) dots[i] = zero;
    for (int j = 0; j < 8; j += 2) { /* sub-blocks j, j + 1: 64 values */
        __m256i r = _mm256_loadu_si256((const __m256i *)(b + 8 + 16 * j));
        __m512i q = _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_and_si256(r, low4)),
                                       _mm256_and_si256(_mm256_srli_epi16(r, 4), low4), 1);
        q = _mm512_shuffle_epi8(table, _mm512_shuffle_i64x2(q, q, _MM_SHUFFLE(3, 1, 2, 0)));
        __m512i which = _mm512_inserti64x4(_mm512_set1_epi16((short)j), _mm256_set1_epi16((short)(j + 1)), 1);
        __m512i sc = _mm512_permutexvar_epi16(which, scales);
        for (int i = 0; i < R; i++) {
            __m512i xv = _mm512_loadu_si512((const void *)(x[i] + 32 * j));
            __m512i signed_q = _mm512_mask_sub_epi8(q, _mm512_movepi8_mask(xv), zero, q);
            dots[i] = _mm512_dpwssd_epi32(dots[i], _mm512_maddubs_epi16(_mm512_abs_epi8(xv), signed_q), sc);
        }
    }
#else
    const __m256i table = _mm256_broadcastsi128_si256(levels);
    for (int i = 0; i < R; i++) dots[i] = _mm256_setzero_si256();
    int16_t ls[8];
    _mm_storeu_si128((__m128i *)ls, ls16);
    for (int j = 0; j < 8; j++) {
        __m128i r = _mm_loadu_si128((const __m128i *)(b + 8 + 16 * j));
        __m256i q = _mm256_shuffle_epi8(table, _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(r, 4), r), low4));
        __m256i scale = _mm256_set1_epi16(ls[j]);
        for (int i = 0; i < R; i++) {
            __m256i xv = _mm256_loadu_si256((const __m256i *)(x[i] + 32 * j));
            __m256i pairs = _mm256_maddubs_epi16(_mm256_sign_epi8(xv, xv), _mm256_sign_epi8(q, xv));
            dots[i] = _mm256_add_epi32(dots[i], _mm256_madd_epi16(pairs, scale));
        }
    }
#endif
}
#endif

/* Weight row w times R rows of x (row r: xq + r K, its scales xd + r nb, its sums sums + r nb 16)
 * -> out[0..R-1]. The weight's unpacking (nibbles, bits, scales) is done once per super-block
 * for all R rows: a few rows at once (a short prompt) cost less than R single rows. */
#if defined(CT_AVX512)
#define KQ_ROWS 4
#else
#define KQ_ROWS 2 /* AVX2's 16 registers */
#endif

static inline __attribute__((always_inline)) void dot_kq_rows(int type, const uint8_t *w, int R, const int8_t *xq,
                                                              const float *xd, const int16_t *sums, int64_t K,
                                                              int64_t nb, float *out) {
    int64_t bytes = block_bytes[type];
#if defined(CT_AVX2)
    fvec acc[KQ_ROWS];
    __m256 off[KQ_ROWS];
    for (int r = 0; r < R; r++) {
        acc[r] = FV_ZERO;
        off[r] = _mm256_setzero_ps();
    }
    for (int64_t i = 0; i < nb; i++) {
        const uint8_t *b = w + i * bytes;
        const int8_t *x[KQ_ROWS];
        const int16_t *s[KQ_ROWS];
        ivec dots[KQ_ROWS];
        __m256i o[KQ_ROWS];
        __builtin_prefetch((const char *)b + PREFETCH_BYTES);
        __builtin_prefetch((const char *)b + PREFETCH_BYTES + 64);
        for (int r = 0; r < R; r++) {
            x[r] = xq + r * K + i * QK;
            s[r] = sums + (r * nb + i) * 16;
        }
        float d, dmin; /* the weight's, times each row's scale below */
        if (type == CT_Q6_K || type == CT_Q3_K) {
            block_g16(type, b, R, x, s, dots, o);
            d = half_at(b + (type == CT_Q6_K ? 208 : 108));
            dmin = (type == CT_Q6_K ? 32.0f : 4.0f) * d;
        } else if (type == CT_Q2_K) {
            block_g16(type, b, R, x, s, dots, o);
            d = half_at(b + 80);
            dmin = half_at(b + 82);
        } else if (type == CT_IQ4_XS) {
            block_iq4xs(b, R, x, dots);
            for (int r = 0; r < R; r++) o[r] = _mm256_setzero_si256();
            d = half_at(b);
            dmin = 0.0f;
        } else {
            block_k4(type, b, R, x, s, dots, o);
            d = half_at(b);
            dmin = half_at(b + 2);
        }
        for (int r = 0; r < R; r++) {
            float dx = xd[r * nb + i];
            acc[r] = FV_FMA(dots[r], d * dx, acc[r]);
            off[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(o[r]), _mm256_set1_ps(dmin * dx), off[r]);
        }
    }
    for (int r = 0; r < R; r++) out[r] = FV_SUM(acc[r]) - hsum(off[r]);
#else
    for (int r = 0; r < R; r++) {
        float sum = 0.0f;
        for (int64_t i = 0; i < nb; i++) {
            const uint8_t *b = w + i * bytes;
            __builtin_prefetch((const char *)b + PREFETCH_BYTES);
            sum += xd[r * nb + i] * block_portable(type, b, xq + r * K + i * QK, sums + (r * nb + i) * 16);
        }
        out[r] = sum;
    }
#endif
}

static void kq_rows(int type, const kacts *a, int ok, const uint8_t *w, const float *bias, float *y, int64_t M,
                    int64_t N, int64_t K) {
    int64_t nb = K / QK, row = nb * block_bytes[type];
#pragma omp for schedule(static)
    for (int64_t n = 0; n < N; n++) {
        if (!ok) continue;
        float b = bias ? bias[n] : 0.0f, out[KQ_ROWS];
        for (int64_t m = 0; m < M; m += KQ_ROWS) {
            const int8_t *xq = a->q + m * K;
            const float *xd = a->d + m * nb;
            const int16_t *sums = a->sums + m * nb * 16;
            int R = M - m < KQ_ROWS ? (int)(M - m) : KQ_ROWS;
            /* R as a constant in each call: the row loops unrolled, the accumulators in registers */
            if (R == KQ_ROWS)
                dot_kq_rows(type, w + n * row, KQ_ROWS, xq, xd, sums, K, nb, out);
#if KQ_ROWS > 2
            else if (R == 3)
                dot_kq_rows(type, w + n * row, 3, xq, xd, sums, K, nb, out);
            else if (R == 2)
                dot_kq_rows(type, w + n * row, 2, xq, xd, sums, K, nb, out);
#endif
            else
                dot_kq_rows(type, w + n * row, 1, xq, xd, sums, K, nb, out);
            for (int r = 0; r < R; r++) y[(m + r) * N + n] = out[r] + b;
        }
    }
}

/* nthreads: CT_TEAM or a thread count (common.h) */
static int gemv_kq(int type, const float *x, const uint8_t *w, const float *bias, float *y, int64_t M, int64_t N,
                   int64_t K, int nthreads) {
    kacts a;
    if (type < CT_Q4_K || type > CT_KQ_LAST) return -1; /* the same answer in every thread of a team */
    int ok = quantize_acts_k(x, M, K, &a) == 0;
    if (!ok && nthreads != CT_TEAM) return -1;
    CT_SHARE_ROWS(kq_rows(type, &a, ok, w, bias, y, M, N, K));
    if (ok) free_acts_k(&a);
    return ok ? 0 : -1;
}

#else

/* The bytes of one row of K values of `type`. */
int64_t ct_kq_row_bytes(int type, int64_t K) { return K / QK * block_bytes[type]; }

/* W (N rows of super-blocks) -> fp32 (N, K): the values the kernels compute with. */
void ct_dequant_kq(int type, const uint8_t *w, float *out, int64_t N, int64_t K, int nthreads) {
    int64_t nb = K / QK, row = nb * block_bytes[type];
#pragma omp parallel for schedule(static) num_threads(nthreads) if (nthreads > 1 && N * K >= 65536)
    for (int64_t n = 0; n < N; n++)
        for (int64_t i = 0; i < nb; i++) {
            int8_t q[QK];
            float scale[16], offset[16], *o = out + n * K + i * QK;
            unpack(type, w + n * row + i * block_bytes[type], q, scale, offset);
            for (int j = 0; j < QK; j++) o[j] = scale[j / 16] * (float)q[j] - offset[j / 16];
        }
}
#endif
