/* Small AVX2 helpers shared by the AVX2 kernel files (quants_*_avx2*.c, engine_*avx2.c).
 *
 * Include it only in a file's x86 section, after the file has selected the AVX2 target
 * (#pragma GCC target("avx2,fma,f16c")): the helpers are AVX2 code.
 */
#ifndef LP_AVX2_H
#define LP_AVX2_H

#include <immintrin.h>
#include <stdint.h>

static inline float h2f(uint16_t h) { return _cvtsh_ss(h); }

static inline __m256i loadu(const void *p) { return _mm256_loadu_si256((const __m256i *)p); }

/* 8 fp16 values as floats */
static inline __m256 load_f16(const uint16_t *p) { return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p)); }

/* the reference's horizontal sums: high half + low half, then pairs, then the last two */
static inline float hsum_ps128(__m128 s) {
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

static inline float hsum_ps(__m256 v) {
    return hsum_ps128(_mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1)));
}

static inline int hsum_epi32x4(__m128i v) {
    v = _mm_add_epi32(v, _mm_shuffle_epi32(v, _MM_SHUFFLE(1, 0, 3, 2)));
    v = _mm_add_epi32(v, _mm_shuffle_epi32(v, _MM_SHUFFLE(2, 3, 0, 1)));
    return _mm_cvtsi128_si32(v);
}

static inline int hsum_epi32(__m256i v) {
    return hsum_epi32x4(_mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1)));
}

/* the largest (smallest) of 8 floats: high half against low half, then pairs, then the last two */
static inline float hmax_ps(__m256 v) {
    __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    m = _mm_max_ss(m, _mm_movehdup_ps(m));
    return _mm_cvtss_f32(m);
}

static inline float hmin_ps(__m256 v) {
    __m128 m = _mm_min_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    m = _mm_min_ps(m, _mm_movehl_ps(m, m));
    m = _mm_min_ss(m, _mm_movehdup_ps(m));
    return _mm_cvtss_f32(m);
}

/* roundf (halves away from zero), from truncation: exact, unlike the round-to-even instruction */
static inline __m256 round_half_away(__m256 v) {
    const __m256 sign = _mm256_set1_ps(-0.0f);
    const __m256 t = _mm256_round_ps(v, _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC);
    const __m256 frac = _mm256_andnot_ps(sign, _mm256_sub_ps(v, t));
    const __m256 up = _mm256_cmp_ps(frac, _mm256_set1_ps(0.5f), _CMP_GE_OQ);
    const __m256 one = _mm256_or_ps(_mm256_set1_ps(1.0f), _mm256_and_ps(v, sign));
    return _mm256_add_ps(t, _mm256_and_ps(up, one));
}

/* 32 floats times id -> 32 int8 at qs, rounded halves away from zero as roundf (away) or to nearest even;
 * returns their sum. The Q8_0 / Q8_1 activation blocks. */
static inline int q8_block32(const float *x, float id, int away, int8_t *qs) {
    const __m256 vid = _mm256_set1_ps(id);
    __m256i q[4];
    for (int k = 0; k < 4; k++) {
        const __m256 v = _mm256_mul_ps(_mm256_loadu_ps(x + 8 * k), vid);
        q[k] = _mm256_cvtps_epi32(away ? round_half_away(v)
                                       : _mm256_round_ps(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
    }
    const int sum = hsum_epi32(_mm256_add_epi32(_mm256_add_epi32(q[0], q[1]), _mm256_add_epi32(q[2], q[3])));
    /* packs work per 128-bit lane: the permute puts the four groups of 4 back in order */
    __m256i p = _mm256_packs_epi16(_mm256_packs_epi32(q[0], q[1]), _mm256_packs_epi32(q[2], q[3]));
    p = _mm256_permutevar8x32_epi32(p, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
    _mm256_storeu_si256((__m256i *)qs, p);
    return sum;
}

/* For the formats whose 256 values come in 2 halves h of 128, each in 4 parts p of 32 covering the groups
 * of 16 8h + 2p and 8h + 2p + 1 (Q2_K, Q3_K, Q6_K): the pshufb mask taking int16 2p of the low 128-bit lane
 * to all of it and int16 2p + 1 of the high lane to all of it, which turns the groups' 8 int16 scales of a
 * half (in both lanes) into the multipliers _mm256_madd_epi16 wants for part p. */
static inline __m256i part_pick(int p) {
    const short a = (short)(0x0100 * (4 * p + 1) + 4 * p), b = (short)(0x0100 * (4 * p + 3) + 4 * p + 2);
    return _mm256_setr_epi16(a, a, a, a, a, a, a, a, b, b, b, b, b, b, b, b);
}

/* 8 scales (bytes 0..7) then 8 mins (bytes 8..15) of a Q4_K / Q5_K block from its 12 scale bytes at b.
 * dwords a, c, e = bytes 0-3, 4-7, 8-11 (the 4 bytes read past them are the block's first quants):
 * [a & 0x3f.., (e & 0x0f..) | ((a >> 6) & 3..) << 4, c & 0x3f.., ((e >> 4) & 0x0f..) | ((c >> 6) & 3..) << 4] */
static inline __m128i k4_scales_mins(const uint8_t *b) {
    const __m128i v = _mm_loadu_si128((const __m128i *)b);
    __m128i lo = _mm_shuffle_epi32(v, _MM_SHUFFLE(2, 1, 2, 0)); /* a, e, c, e */
    lo = _mm_and_si128(_mm_srlv_epi32(lo, _mm_setr_epi32(0, 0, 0, 4)),
                       _mm_setr_epi32(0x3f3f3f3f, 0x0f0f0f0f, 0x3f3f3f3f, 0x0f0f0f0f));
    const __m128i hi = _mm_srli_epi32(_mm_shuffle_epi32(v, _MM_SHUFFLE(1, 1, 0, 0)), 2); /* a, a, c, c */
    return _mm_or_si128(lo, _mm_and_si128(hi, _mm_setr_epi32(0, 0x30303030, 0, 0x30303030)));
}

#endif
