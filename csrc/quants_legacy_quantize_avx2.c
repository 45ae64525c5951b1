/* AVX2 row quantizers of Q4_0 Q4_1 Q5_0 Q5_1 Q8_0: exactly the scalar reference's bytes (quants_legacy.c).
 *
 * Each float operation is the scalar one, lane by lane: a multiply then an add (the build never fuses
 * them), a truncating conversion where the scalar code casts to int. Where the scalar loops' order matters
 * they are rebuilt: the value of largest magnitude is the first lane holding the block's largest |x|; a
 * minimum or maximum of zero takes its sign from the first zero, as the scalar strict comparisons do. A
 * block holding a NaN or an infinity goes to the scalar quantizer whole (the comparisons differ there), as
 * does a Q8_0 block so small that 1 / d overflows (the scalar cast of an infinite level keeps no bits).
 */
#if defined(__x86_64__) || defined(__i386__)
#pragma GCC target("avx2,fma,f16c")
#include <float.h>
#include <immintrin.h>
#include <math.h>
#include <string.h>

#include "lp_avx2.h"
#include "lp_quants_legacy.h"

static inline uint16_t f2h(float f) { return (uint16_t)_cvtss_sh(f, 0); }  /* finite values only */

typedef struct {
    __m256 v[4];
} block32;

/* loads a block; 0 if it holds a NaN or an infinity */
static inline int load_finite(const float *x, block32 *b) {
    const __m256 sign = _mm256_set1_ps(-0.0f), big = _mm256_set1_ps(FLT_MAX);
    __m256 ok = _mm256_castsi256_ps(_mm256_set1_epi32(-1));
    for (int k = 0; k < 4; k++) {
        b->v[k] = _mm256_loadu_ps(x + 8 * k);
        ok = _mm256_and_ps(ok, _mm256_cmp_ps(_mm256_andnot_ps(sign, b->v[k]), big, _CMP_LE_OQ));
    }
    return _mm256_movemask_ps(ok) == 0xff;
}

/* bit j set where lane j of the block equals m */
static inline uint32_t lanes_equal(const __m256 *v, __m256 m) {
    uint32_t mask = 0;
    for (int k = 0; k < 4; k++) mask |= (uint32_t)_mm256_movemask_ps(_mm256_cmp_ps(v[k], m, _CMP_EQ_OQ)) << (8 * k);
    return mask;
}

/* signed_absmax: the first value of largest magnitude; +0 for a block of zeros */
static inline float first_absmax(const float *x, const block32 *b) {
    const __m256 sign = _mm256_set1_ps(-0.0f);
    __m256 a[4], m;
    for (int k = 0; k < 4; k++) a[k] = _mm256_andnot_ps(sign, b->v[k]);
    m = _mm256_max_ps(_mm256_max_ps(a[0], a[1]), _mm256_max_ps(a[2], a[3]));
    const float amax = hmax_ps(m);
    if (amax == 0.0f) return 0.0f;
    return x[__builtin_ctz(lanes_equal(a, _mm256_set1_ps(amax)))];
}

/* the scalar min and max loops (strict comparisons from FLT_MAX / -FLT_MAX): a zero result is the first zero */
static inline void min_max(const float *x, const block32 *b, float *min, float *max) {
    __m256 lo = _mm256_min_ps(_mm256_min_ps(b->v[0], b->v[1]), _mm256_min_ps(b->v[2], b->v[3]));
    __m256 hi = _mm256_max_ps(_mm256_max_ps(b->v[0], b->v[1]), _mm256_max_ps(b->v[2], b->v[3]));
    *min = hmin_ps(lo);
    *max = hmax_ps(hi);
    if (*min == 0.0f || *max == 0.0f) {
        const float z = x[__builtin_ctz(lanes_equal(b->v, _mm256_setzero_ps()))];
        if (*min == 0.0f) *min = z;
        if (*max == 0.0f) *max = z;
    }
}

/* (int)((x - sub) * id + add) for the 32 values, as 32 bytes in order (each value fits a byte, or is 0
   where the scalar cast of a huge value keeps no low bits), at most `top` when top >= 0 */
static inline __m256i levels(const block32 *b, float sub, float id, float add, int top) {
    const __m256 vs = _mm256_set1_ps(sub), vid = _mm256_set1_ps(id), va = _mm256_set1_ps(add);
    __m256i q[4];
    for (int k = 0; k < 4; k++) {
        __m256 v = sub == 0.0f ? b->v[k] : _mm256_sub_ps(b->v[k], vs);
        q[k] = _mm256_cvttps_epi32(_mm256_add_ps(_mm256_mul_ps(v, vid), va));
        if (top >= 0) q[k] = _mm256_min_epi32(q[k], _mm256_set1_epi32(top));
    }
    __m256i p = _mm256_packus_epi16(_mm256_packs_epi32(q[0], q[1]), _mm256_packs_epi32(q[2], q[3]));
    return _mm256_permutevar8x32_epi32(p, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
}

/* values j and j + 16 into byte j: low nibbles */
static inline void pack_nibbles(__m256i q, uint8_t *qs) {
    const __m128i m = _mm_set1_epi8(0x0f);
    const __m128i lo = _mm_and_si128(_mm256_castsi256_si128(q), m);
    const __m128i hi = _mm_and_si128(_mm256_extracti128_si256(q, 1), m);
    _mm_storeu_si128((__m128i *)qs, _mm_or_si128(lo, _mm_slli_epi16(hi, 4)));
}

/* the fifth bit of value j into bit j */
static inline void pack_fifth_bits(__m256i q, uint8_t *qh) {
    const uint32_t bits = (uint32_t)_mm256_movemask_epi8(_mm256_slli_epi16(q, 3));
    memcpy(qh, &bits, 4);
}

static void quantize_row_q4_0(const float *x, void *vy, int64_t n) {
    lp_block_q4_0 *y = vy;
    block32 b;
    for (int64_t i = 0; i < n / LP_QK; i++, x += LP_QK) {
        if (!load_finite(x, &b)) {
            lp_quantize_row_q4_0_ref(x, &y[i], LP_QK);
            continue;
        }
        const float d = first_absmax(x, &b) / -8;
        const float id = d ? 1.0f / d : 0.0f;
        y[i].d = f2h(d);
        pack_nibbles(levels(&b, 0.0f, id, 8.5f, 15), y[i].qs);
    }
}

static void quantize_row_q5_0(const float *x, void *vy, int64_t n) {
    lp_block_q5_0 *y = vy;
    block32 b;
    for (int64_t i = 0; i < n / LP_QK; i++, x += LP_QK) {
        if (!load_finite(x, &b)) {
            lp_quantize_row_q5_0_ref(x, &y[i], LP_QK);
            continue;
        }
        const float d = first_absmax(x, &b) / -16;
        const float id = d ? 1.0f / d : 0.0f;
        y[i].d = f2h(d);
        const __m256i q = levels(&b, 0.0f, id, 16.5f, 31);
        pack_nibbles(q, y[i].qs);
        pack_fifth_bits(q, y[i].qh);
    }
}

/* Q4_1 / Q5_1: the minimum and the step (max - min) / nmax as fp16; returns 1 / step (0 for 0) */
static inline float min_step(const float *x, const block32 *b, int nmax, uint16_t *dh, uint16_t *mh, float *min) {
    float max;
    min_max(x, b, min, &max);
    const float d = (max - *min) / nmax;
    *dh = f2h(d);
    *mh = f2h(*min);
    return d ? 1.0f / d : 0.0f;
}

static void quantize_row_q4_1(const float *x, void *vy, int64_t n) {
    lp_block_q4_1 *y = vy;
    block32 b;
    for (int64_t i = 0; i < n / LP_QK; i++, x += LP_QK) {
        if (!load_finite(x, &b)) {
            lp_quantize_row_q4_1_ref(x, &y[i], LP_QK);
            continue;
        }
        float min;
        const float id = min_step(x, &b, 15, &y[i].d, &y[i].m, &min);
        /* x - min with min == 0 is x, whatever zero's sign: levels() skips the subtraction then */
        pack_nibbles(levels(&b, min, id, 0.5f, 15), y[i].qs);
    }
}

static void quantize_row_q5_1(const float *x, void *vy, int64_t n) {
    lp_block_q5_1 *y = vy;
    block32 b;
    for (int64_t i = 0; i < n / LP_QK; i++, x += LP_QK) {
        if (!load_finite(x, &b)) {
            lp_quantize_row_q5_1_ref(x, &y[i], LP_QK);
            continue;
        }
        float min;
        const float id = min_step(x, &b, 31, &y[i].d, &y[i].m, &min);
        const __m256i q = levels(&b, min, id, 0.5f, -1);  /* the scalar code keeps the low bits, no clamp */
        pack_nibbles(q, y[i].qs);
        pack_fifth_bits(q, y[i].qh);
    }
}

static void quantize_row_q8_0(const float *x, void *vy, int64_t n) {
    lp_block_q8_0 *y = vy;
    const __m256 sign = _mm256_set1_ps(-0.0f);
    block32 b;
    for (int64_t i = 0; i < n / LP_QK; i++, x += LP_QK) {
        if (load_finite(x, &b)) {
            __m256 m = _mm256_max_ps(_mm256_max_ps(_mm256_andnot_ps(sign, b.v[0]), _mm256_andnot_ps(sign, b.v[1])),
                                     _mm256_max_ps(_mm256_andnot_ps(sign, b.v[2]), _mm256_andnot_ps(sign, b.v[3])));
            const float d = hmax_ps(m) / 127;
            const float id = d ? 1.0f / d : 0.0f;
            if (isfinite(id)) {
                y[i].d = f2h(d);
                q8_block32(x, id, 1, y[i].qs);
                continue;
            }
        }
        lp_quantize_row_q8_0_ref(x, &y[i], LP_QK);
    }
}

void lp_register_legacy_quantize_avx2(lp_type_traits *t) {
    lp_override(&t[LP_TYPE_Q4_0], NULL, quantize_row_q4_0, NULL, NULL);
    lp_override(&t[LP_TYPE_Q4_1], NULL, quantize_row_q4_1, NULL, NULL);
    lp_override(&t[LP_TYPE_Q5_0], NULL, quantize_row_q5_0, NULL, NULL);
    lp_override(&t[LP_TYPE_Q5_1], NULL, quantize_row_q5_1, NULL, NULL);
    lp_override(&t[LP_TYPE_Q8_0], NULL, quantize_row_q8_0, NULL, NULL);  /* the engine quantizes its own activations */
}

#else
#include "lp_quants_legacy.h"
static void quantize_row_q8_0(const float *x, void *vy, int64_t n) {
    lp_block_q8_0 *y = vy;
    const __m256 sign = _mm256_set1_ps(-0.0f);
    block32 b;
    for (int64_t i = 0; i < n / LP_QK; i++, x += LP_QK) {
        if (load_finite(x, &b)) {
            __m256 m = _mm256_max_ps(_mm256_max_ps(_mm256_andnot_ps(sign, b.v[0]), _mm256_andnot_ps(sign, b.v[1])),
                                     _mm256_max_ps(_mm256_andnot_ps(sign, b.v[2]), _mm256_andnot_ps(sign, b.v[3])));
            const float d = hmax_ps(m) / 127;
            const float id = d ? 1.0f / d : 0.0f;
            if (isfinite(id)) {
                y[i].d = f2h(d);
                q8_block32(x, id, 1, y[i].qs);
                continue;
            }
        }
        lp_quantize_row_q8_0_ref(x, &y[i], LP_QK);
    }
}

void lp_register_legacy_quantize_avx2(lp_type_traits *t) { (void)t; }
#endif
