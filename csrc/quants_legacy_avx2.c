/* AVX2+FMA+F16C kernels: legacy formats and IQ4_NL.
 *
 * Q8_0/Q8_1 activation quantizers write exactly the bytes of the scalar reference (roundf is rebuilt from
 * truncation); dequantizers give exactly the scalar floats (multiply, then add: no fused multiply-add);
 * dot products accumulate in a different order than the scalar ones, so they agree to rounding.
 */
#if defined(__x86_64__) || defined(__i386__)
#pragma GCC target("avx2,fma,f16c")
#include <immintrin.h>
#include "lp_avx2.h"
#include <math.h>
#include <string.h>

#include "lp_quants_legacy.h"

static inline uint16_t f2h(float f) {
    /* the hardware keeps NaN payloads where the reference's software conversion does not */
    return isnan(f) ? lp_fp32_to_fp16(f) : (uint16_t)_cvtss_sh(f, 0);
}

static inline float block_absmax(const float *x) {
    const __m256 sign = _mm256_set1_ps(-0.0f);
    __m256 m = _mm256_andnot_ps(sign, _mm256_loadu_ps(x));
    for (int k = 1; k < 4; k++) m = _mm256_max_ps(m, _mm256_andnot_ps(sign, _mm256_loadu_ps(x + 8 * k)));
    return hmax_ps(m);
}

/* One Q8 block at scale amax / 127: stores the scale and the values; returns the sum of the values. */
static inline int quantize_block_q8(const float *x, uint16_t *dh, int8_t *qs, float *d_out) {
    const float d = block_absmax(x) / 127;
    const float id = d ? 1.0f / d : 0.0f;
    *dh = f2h(d);
    *d_out = d;
    return q8_block32(x, id, 1, qs);
}

static void quantize_row_q8_0(const float *x, void *vy, int64_t n) {
    lp_block_q8_0 *y = vy;
    float d;
    for (int64_t i = 0; i < n / LP_QK; i++, x += LP_QK) quantize_block_q8(x, &y[i].d, y[i].qs, &d);
}

static void quantize_row_q8_1(const float *x, void *vy, int64_t n) {
    lp_block_q8_1 *y = vy;
    for (int64_t i = 0; i < n / LP_QK; i++, x += LP_QK) {
        float d;
        const int sum = quantize_block_q8(x, &y[i].d, y[i].qs, &d);
        y[i].s = f2h(sum * d);
    }
}

/* ---- unpacking ------------------------------------------------------------------------------------ */
/* 16 bytes of nibbles -> 32 bytes: values 0..15 first (low nibbles), then 16..31 (high nibbles) */
static inline __m256i unpack_nibbles(const uint8_t *qs) {
    const __m128i b = _mm_loadu_si128((const __m128i *)qs);
    const __m128i m = _mm_set1_epi8(0x0f);
    return _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(b, 4), m), _mm_and_si128(b, m));
}

/* the 32 bits of qh -> 32 bytes, 0x10 where the bit is set */
static inline __m256i expand_high_bits(const uint8_t *qh_bytes) {
    uint32_t qh;
    memcpy(&qh, qh_bytes, 4);
    const __m256i spread = _mm256_shuffle_epi8(
        _mm256_set1_epi32((int)qh),
        _mm256_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3));
    const __m256i bit = _mm256_set1_epi64x((long long)0x8040201008040201ULL);
    const __m256i set = _mm256_cmpeq_epi8(_mm256_and_si256(spread, bit), bit);
    return _mm256_and_si256(set, _mm256_set1_epi8(0x10));
}

static inline __m256i iq4nl_lookup(__m256i nibbles) {
    const __m128i t = _mm_loadu_si128((const __m128i *)lp_iq4nl_values);
    return _mm256_shuffle_epi8(_mm256_set_m128i(t, t), nibbles);
}

/* 32 int8 -> 4 x 8 floats, scaled (and shifted when m != NULL): the scalar dequantizers' exact values */
static inline void store_scaled(__m256i q, float d, const float *m, float *y) {
    const __m256 vd = _mm256_set1_ps(d);
    const __m128i lo = _mm256_castsi256_si128(q), hi = _mm256_extracti128_si256(q, 1);
    const __m128i parts[4] = {lo, _mm_srli_si128(lo, 8), hi, _mm_srli_si128(hi, 8)};
    for (int k = 0; k < 4; k++) {
        __m256 v = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(parts[k])), vd);
        if (m) v = _mm256_add_ps(v, _mm256_set1_ps(*m));
        _mm256_storeu_ps(y + 8 * k, v);
    }
}

static void dequantize_row_q4_0(const void *vx, float *y, int64_t n) {
    const lp_block_q4_0 *x = vx;
    for (int64_t i = 0; i < n / LP_QK; i++, y += LP_QK)
        store_scaled(_mm256_sub_epi8(unpack_nibbles(x[i].qs), _mm256_set1_epi8(8)), h2f(x[i].d), NULL, y);
}

static void dequantize_row_q4_1(const void *vx, float *y, int64_t n) {
    const lp_block_q4_1 *x = vx;
    for (int64_t i = 0; i < n / LP_QK; i++, y += LP_QK) {
        const float m = h2f(x[i].m);
        store_scaled(unpack_nibbles(x[i].qs), h2f(x[i].d), &m, y);
    }
}

static void dequantize_row_q5_0(const void *vx, float *y, int64_t n) {
    const lp_block_q5_0 *x = vx;
    for (int64_t i = 0; i < n / LP_QK; i++, y += LP_QK) {
        const __m256i q = _mm256_or_si256(unpack_nibbles(x[i].qs), expand_high_bits(x[i].qh));
        store_scaled(_mm256_sub_epi8(q, _mm256_set1_epi8(16)), h2f(x[i].d), NULL, y);
    }
}

static void dequantize_row_q5_1(const void *vx, float *y, int64_t n) {
    const lp_block_q5_1 *x = vx;
    for (int64_t i = 0; i < n / LP_QK; i++, y += LP_QK) {
        const float m = h2f(x[i].m);
        store_scaled(_mm256_or_si256(unpack_nibbles(x[i].qs), expand_high_bits(x[i].qh)), h2f(x[i].d), &m, y);
    }
}

static void dequantize_row_q8_0(const void *vx, float *y, int64_t n) {
    const lp_block_q8_0 *x = vx;
    for (int64_t i = 0; i < n / LP_QK; i++, y += LP_QK)
        store_scaled(_mm256_loadu_si256((const __m256i *)x[i].qs), h2f(x[i].d), NULL, y);
}

static void dequantize_row_iq4_nl(const void *vx, float *y, int64_t n) {
    const lp_block_iq4_nl *x = vx;
    for (int64_t i = 0; i < n / LP_QK; i++, y += LP_QK) {
        /* the scalar code computes d * value: same product, either order */
        store_scaled(iq4nl_lookup(unpack_nibbles(x[i].qs)), h2f(x[i].d), NULL, y);
    }
}

/* ---- dot products ----------------------------------------------------------------------------------- */
/* sum of products of 32 signed bytes, as 8 int32 lanes (|x| <= 128, |y| <= 127: no int16 saturation) */
static inline __m256i dot_i8(__m256i x, __m256i y) {
    const __m256i ax = _mm256_sign_epi8(x, x);
    const __m256i sy = _mm256_sign_epi8(y, x);
    return _mm256_madd_epi16(_mm256_maddubs_epi16(ax, sy), _mm256_set1_epi16(1));
}

/* unsigned bytes (<= 31) times signed bytes */
static inline __m256i dot_u8_i8(__m256i x, __m256i y) {
    return _mm256_madd_epi16(_mm256_maddubs_epi16(x, y), _mm256_set1_epi16(1));
}

static void vec_dot_q4_0_q8_0(int n, float *s, const void *vx, const void *vy) {
    const lp_block_q4_0 *x = vx;
    const lp_block_q8_0 *y = vy;
    const int nb = n / LP_QK;
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
    int i = 0;
    for (; i + 1 < nb; i += 2) {
        const __m256i q0 = _mm256_sub_epi8(unpack_nibbles(x[i].qs), _mm256_set1_epi8(8));
        const __m256i q1 = _mm256_sub_epi8(unpack_nibbles(x[i + 1].qs), _mm256_set1_epi8(8));
        const __m256i p0 = dot_i8(q0, _mm256_loadu_si256((const __m256i *)y[i].qs));
        const __m256i p1 = dot_i8(q1, _mm256_loadu_si256((const __m256i *)y[i + 1].qs));
        acc0 = _mm256_fmadd_ps(_mm256_set1_ps(h2f(x[i].d) * h2f(y[i].d)), _mm256_cvtepi32_ps(p0), acc0);
        acc1 = _mm256_fmadd_ps(_mm256_set1_ps(h2f(x[i + 1].d) * h2f(y[i + 1].d)), _mm256_cvtepi32_ps(p1), acc1);
    }
    for (; i < nb; i++) {
        const __m256i q = _mm256_sub_epi8(unpack_nibbles(x[i].qs), _mm256_set1_epi8(8));
        const __m256i p = dot_i8(q, _mm256_loadu_si256((const __m256i *)y[i].qs));
        acc0 = _mm256_fmadd_ps(_mm256_set1_ps(h2f(x[i].d) * h2f(y[i].d)), _mm256_cvtepi32_ps(p), acc0);
    }
    *s = hsum_ps(_mm256_add_ps(acc0, acc1));
}

static void vec_dot_q4_1_q8_1(int n, float *s, const void *vx, const void *vy) {
    const lp_block_q4_1 *x = vx;
    const lp_block_q8_1 *y = vy;
    const int nb = n / LP_QK;
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
    float summs = 0.0f;
    int i = 0;
    for (; i + 1 < nb; i += 2) {
        const __m256i p0 = dot_u8_i8(unpack_nibbles(x[i].qs), _mm256_loadu_si256((const __m256i *)y[i].qs));
        const __m256i p1 = dot_u8_i8(unpack_nibbles(x[i + 1].qs), _mm256_loadu_si256((const __m256i *)y[i + 1].qs));
        acc0 = _mm256_fmadd_ps(_mm256_set1_ps(h2f(x[i].d) * h2f(y[i].d)), _mm256_cvtepi32_ps(p0), acc0);
        acc1 = _mm256_fmadd_ps(_mm256_set1_ps(h2f(x[i + 1].d) * h2f(y[i + 1].d)), _mm256_cvtepi32_ps(p1), acc1);
        summs += h2f(x[i].m) * h2f(y[i].s) + h2f(x[i + 1].m) * h2f(y[i + 1].s);
    }
    for (; i < nb; i++) {
        const __m256i p = dot_u8_i8(unpack_nibbles(x[i].qs), _mm256_loadu_si256((const __m256i *)y[i].qs));
        acc0 = _mm256_fmadd_ps(_mm256_set1_ps(h2f(x[i].d) * h2f(y[i].d)), _mm256_cvtepi32_ps(p), acc0);
        summs += h2f(x[i].m) * h2f(y[i].s);
    }
    *s = hsum_ps(_mm256_add_ps(acc0, acc1)) + summs;
}

static void vec_dot_q5_0_q8_0(int n, float *s, const void *vx, const void *vy) {
    const lp_block_q5_0 *x = vx;
    const lp_block_q8_0 *y = vy;
    __m256 acc = _mm256_setzero_ps();
    for (int i = 0; i < n / LP_QK; i++) {
        __m256i q = _mm256_or_si256(unpack_nibbles(x[i].qs), expand_high_bits(x[i].qh));
        q = _mm256_sub_epi8(q, _mm256_set1_epi8(16));
        const __m256i p = dot_i8(q, _mm256_loadu_si256((const __m256i *)y[i].qs));
        acc = _mm256_fmadd_ps(_mm256_set1_ps(h2f(x[i].d) * h2f(y[i].d)), _mm256_cvtepi32_ps(p), acc);
    }
    *s = hsum_ps(acc);
}

static void vec_dot_q5_1_q8_1(int n, float *s, const void *vx, const void *vy) {
    const lp_block_q5_1 *x = vx;
    const lp_block_q8_1 *y = vy;
    __m256 acc = _mm256_setzero_ps();
    float summs = 0.0f;
    for (int i = 0; i < n / LP_QK; i++) {
        const __m256i q = _mm256_or_si256(unpack_nibbles(x[i].qs), expand_high_bits(x[i].qh));
        const __m256i p = dot_u8_i8(q, _mm256_loadu_si256((const __m256i *)y[i].qs));
        acc = _mm256_fmadd_ps(_mm256_set1_ps(h2f(x[i].d) * h2f(y[i].d)), _mm256_cvtepi32_ps(p), acc);
        summs += h2f(x[i].m) * h2f(y[i].s);
    }
    *s = hsum_ps(acc) + summs;
}

static void vec_dot_q8_0_q8_0(int n, float *s, const void *vx, const void *vy) {
    const lp_block_q8_0 *x = vx;
    const lp_block_q8_0 *y = vy;
    const int nb = n / LP_QK;
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
    int i = 0;
    for (; i + 1 < nb; i += 2) {
        const __m256i p0 = dot_i8(_mm256_loadu_si256((const __m256i *)x[i].qs),
                                  _mm256_loadu_si256((const __m256i *)y[i].qs));
        const __m256i p1 = dot_i8(_mm256_loadu_si256((const __m256i *)x[i + 1].qs),
                                  _mm256_loadu_si256((const __m256i *)y[i + 1].qs));
        acc0 = _mm256_fmadd_ps(_mm256_set1_ps(h2f(x[i].d) * h2f(y[i].d)), _mm256_cvtepi32_ps(p0), acc0);
        acc1 = _mm256_fmadd_ps(_mm256_set1_ps(h2f(x[i + 1].d) * h2f(y[i + 1].d)), _mm256_cvtepi32_ps(p1), acc1);
    }
    for (; i < nb; i++) {
        const __m256i p = dot_i8(_mm256_loadu_si256((const __m256i *)x[i].qs),
                                 _mm256_loadu_si256((const __m256i *)y[i].qs));
        acc0 = _mm256_fmadd_ps(_mm256_set1_ps(h2f(x[i].d) * h2f(y[i].d)), _mm256_cvtepi32_ps(p), acc0);
    }
    *s = hsum_ps(_mm256_add_ps(acc0, acc1));
}

static void vec_dot_iq4_nl_q8_0(int n, float *s, const void *vx, const void *vy) {
    const lp_block_iq4_nl *x = vx;
    const lp_block_q8_0 *y = vy;
    __m256 acc = _mm256_setzero_ps();
    for (int i = 0; i < n / LP_QK; i++) {
        const __m256i q = iq4nl_lookup(unpack_nibbles(x[i].qs));
        const __m256i p = dot_i8(q, _mm256_loadu_si256((const __m256i *)y[i].qs));
        acc = _mm256_fmadd_ps(_mm256_set1_ps(h2f(y[i].d) * h2f(x[i].d)), _mm256_cvtepi32_ps(p), acc);
    }
    *s = hsum_ps(acc);
}

void lp_register_legacy_avx2(lp_type_traits *t) { LP_LEGACY_SIMD_REGISTER(t); }
#endif
