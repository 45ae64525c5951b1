/* K-quants Q4_K and Q5_K (8 sub-blocks of 32 with 6-bit scales and mins): AVX2+FMA+F16C dequantizers and dot
 * products, as quants_kquants_avx2.c has them for the other K-quants (its opening comment says how they follow
 * the reference's). Q5_K is Q4_K with a fifth bit per value in qh: the kernels are shared where the blocks are.
 */
#if defined(__x86_64__) || defined(__i386__)
#pragma GCC target("avx2,fma,f16c")
#include <immintrin.h>
#include "lp_avx2.h"
#include <math.h>

#include "lp_core.h"
#include "lp_kquants.h"

#define ROWS LP_ROWS4

/* Σ min_j * (bsum 2j + bsum 2j+1) of a Q4_K / Q5_K block as 4 int32 lanes; mins = the 8 mins as int16 */
static inline __m128i k4_mins_dot(__m128i mins, const int16_t *bsums) {
    const __m256i bs = loadu(bsums);
    return _mm_madd_epi16(mins, _mm_hadd_epi16(_mm256_castsi256_si128(bs), _mm256_extracti128_si256(bs, 1)));
}

/* one Q4_K / Q5_K block: acc += d * Σ_j scale_j * (q_j . q8_j) (8 int32 lanes); returns the mins' lanes */
static inline __m128i k4_block(const uint8_t *scales, const lp_block_q8_K *yb, float d, const __m256i q[8],
                               __m256 *acc) {
    const __m256i sm16 = _mm256_cvtepu8_epi16(k4_scales_mins(scales)); /* [8 scales | 8 mins] */
    const __m256i sc = _mm256_permute2x128_si256(sm16, sm16, 0x00);
    __m256i sumi = _mm256_setzero_si256();
    for (int j = 0; j < 8; j++) {
        const __m256i pick = _mm256_set1_epi16((short)(0x0100 * (2 * j + 1) + 2 * j)); /* int16 j everywhere */
        const __m256i p = _mm256_maddubs_epi16(q[j], loadu(yb->qs + 32 * j));
        sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(p, _mm256_shuffle_epi8(sc, pick)));
    }
    *acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(sumi), *acc);
    return k4_mins_dot(_mm256_extracti128_si256(sm16, 1), yb->bsums);
}

static void vec_dot_q4_K_q8_K(int n, float *s, const void *vx, const void *vy) {
    const lp_block_q4_K *x = vx;
    const lp_block_q8_K *y = vy;
    const __m256i m4 = _mm256_set1_epi8(0xF);
    __m256 acc = _mm256_setzero_ps();
    __m128 accm = _mm_setzero_ps();
    for (int i = 0; i < n / LP_QK_K; i++) {
        __m256i q[8];
        for (int c = 0; c < 4; c++) {
            const __m256i bits = loadu(x[i].qs + 32 * c);
            q[2 * c] = _mm256_and_si256(bits, m4);
            q[2 * c + 1] = _mm256_and_si256(_mm256_srli_epi16(bits, 4), m4);
        }
        const float dmin = -y[i].d * h2f(x[i].dmin);
        const __m128i pm = k4_block(x[i].scales, &y[i], y[i].d * h2f(x[i].d), q, &acc);
        accm = _mm_fmadd_ps(_mm_set1_ps(dmin), _mm_cvtepi32_ps(pm), accm);
    }
    *s = hsum_ps(acc) + hsum_ps128(accm);
}

static void vec_dot_q5_K_q8_K(int n, float *s, const void *vx, const void *vy) {
    const lp_block_q5_K *x = vx;
    const lp_block_q8_K *y = vy;
    const __m256i m4 = _mm256_set1_epi8(0xF), m1 = _mm256_set1_epi8(1);
    __m256 acc = _mm256_setzero_ps();
    float summs = 0;
    for (int i = 0; i < n / LP_QK_K; i++) {
        __m256i q[8];
        const __m256i hb = loadu(x[i].qh);
        for (int c = 0; c < 4; c++) {
            const __m256i bits = loadu(x[i].qs + 32 * c);
            const __m256i h0 = _mm256_and_si256(_mm256_srli_epi16(hb, 2 * c), m1);
            const __m256i h1 = _mm256_and_si256(_mm256_srli_epi16(hb, 2 * c + 1), m1);
            q[2 * c] = _mm256_or_si256(_mm256_and_si256(bits, m4), _mm256_slli_epi16(h0, 4));
            q[2 * c + 1] =
                _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(bits, 4), m4), _mm256_slli_epi16(h1, 4));
        }
        const float dmin = -y[i].d * h2f(x[i].dmin);
        const __m128i pm = k4_block(x[i].scales, &y[i], y[i].d * h2f(x[i].d), q, &acc);
        summs = fmaf(dmin, (float)hsum_epi32x4(pm), summs);
    }
    *s = hsum_ps(acc) + summs;
}

/* ---- one weight row against 4 activation rows (prompt processing): the quants and scales decoded once per
 * block for the 4 rows; each row's sums and float steps are vec_dot's, so the results are bitwise its ---- */

/* Q4_K (qh NULL) and Q5_K rows */
static inline void k4_rows4(int nb, const uint8_t *xb, size_t xbs, int has_qh, float *s, size_t bs, const void *vy,
                            size_t by) {
    const __m256i m4 = _mm256_set1_epi8(0xF), m1 = _mm256_set1_epi8(1);
    const lp_block_q8_K *y[ROWS];
    for (int t = 0; t < ROWS; t++) y[t] = lp_q8_K_row(vy, by, t);
    __m256 acc[ROWS];
    __m128 accm[ROWS]; /* Q4_K: the mins' 4 lanes */
    float summs[ROWS]; /* Q5_K: the mins' scalar sum */
    for (int t = 0; t < ROWS; t++) {
        acc[t] = _mm256_setzero_ps();
        accm[t] = _mm_setzero_ps();
        summs[t] = 0;
    }
    for (int i = 0; i < nb; i++, xb += xbs) {
        /* Q4_K and Q5_K start alike: d, dmin, 12 scale bytes; then Q5_K's qh; then qs */
        const uint16_t *dd = (const uint16_t *)xb;
        const uint8_t *qs = xb + 16 + (has_qh ? 32 : 0);
        const __m256i sm16 = _mm256_cvtepu8_epi16(k4_scales_mins(xb + 4));
        const __m128i mins = _mm256_extracti128_si256(sm16, 1);
        const __m256i sc = _mm256_permute2x128_si256(sm16, sm16, 0x00);
        const __m256i hb = has_qh ? loadu(xb + 16) : _mm256_setzero_si256();
        __m256i sumi[ROWS];
        for (int t = 0; t < ROWS; t++) sumi[t] = _mm256_setzero_si256();
        for (int c = 0; c < 4; c++) {
            const __m256i bits = loadu(qs + 32 * c);
            __m256i ql = _mm256_and_si256(bits, m4), qh = _mm256_and_si256(_mm256_srli_epi16(bits, 4), m4);
            if (has_qh) {
                const __m256i h0 = _mm256_and_si256(_mm256_srli_epi16(hb, 2 * c), m1);
                const __m256i h1 = _mm256_and_si256(_mm256_srli_epi16(hb, 2 * c + 1), m1);
                ql = _mm256_or_si256(ql, _mm256_slli_epi16(h0, 4));
                qh = _mm256_or_si256(qh, _mm256_slli_epi16(h1, 4));
            }
            const __m256i s0 = _mm256_shuffle_epi8(sc, _mm256_set1_epi16((short)(0x0101 * 4 * c + 0x0100)));
            const __m256i s1 = _mm256_shuffle_epi8(sc, _mm256_set1_epi16((short)(0x0101 * (4 * c + 2) + 0x0100)));
            for (int t = 0; t < ROWS; t++) {
                const __m256i p0 = _mm256_madd_epi16(_mm256_maddubs_epi16(ql, loadu(y[t][i].qs + 64 * c)), s0);
                const __m256i p1 = _mm256_madd_epi16(_mm256_maddubs_epi16(qh, loadu(y[t][i].qs + 64 * c + 32)), s1);
                sumi[t] = _mm256_add_epi32(sumi[t], _mm256_add_epi32(p0, p1));
            }
        }
        const float dx = h2f(dd[0]), mx = h2f(dd[1]);
        for (int t = 0; t < ROWS; t++) {
            const __m128i pm = k4_mins_dot(mins, y[t][i].bsums);
            const float dmin = -y[t][i].d * mx;
            acc[t] = _mm256_fmadd_ps(_mm256_set1_ps(y[t][i].d * dx), _mm256_cvtepi32_ps(sumi[t]), acc[t]);
            if (has_qh) summs[t] = fmaf(dmin, (float)hsum_epi32x4(pm), summs[t]);
            else accm[t] = _mm_fmadd_ps(_mm_set1_ps(dmin), _mm_cvtepi32_ps(pm), accm[t]);
        }
    }
    for (int t = 0; t < ROWS; t++) s[t * bs] = hsum_ps(acc[t]) + (has_qh ? summs[t] : hsum_ps128(accm[t]));
}

static void q4_rows4(int n, const void *x, float *s, size_t bs, const void *y, size_t by) {
    k4_rows4(n / LP_QK_K, x, sizeof(lp_block_q4_K), 0, s, bs, y, by);
}

static void q5_rows4(int n, const void *x, float *s, size_t bs, const void *y, size_t by) {
    k4_rows4(n / LP_QK_K, x, sizeof(lp_block_q5_K), 1, s, bs, y, by);
}

static void vec_dot_rows_q4_K(int n, int nrc, float *s, size_t bs, const void *vx, const void *vy, size_t by) {
    lp_vec_dot_rows_by4(q4_rows4, vec_dot_q4_K_q8_K, n, nrc, s, bs, vx, vy, by);
}

static void vec_dot_rows_q5_K(int n, int nrc, float *s, size_t bs, const void *vx, const void *vy, size_t by) {
    lp_vec_dot_rows_by4(q5_rows4, vec_dot_q5_K_q8_K, n, nrc, s, bs, vx, vy, by);
}

static inline void store_affine32(float *y, __m256i q8bytes, float d1, float m1) {
    const __m256 vd = _mm256_set1_ps(d1), vm = _mm256_set1_ps(m1);
    const __m128i lo = _mm256_castsi256_si128(q8bytes), hi = _mm256_extracti128_si256(q8bytes, 1);
    const __m128i part[4] = {lo, _mm_srli_si128(lo, 8), hi, _mm_srli_si128(hi, 8)};
    for (int u = 0; u < 4; u++) {
        const __m256 q = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(part[u]));
        _mm256_storeu_ps(y + 8 * u, _mm256_sub_ps(_mm256_mul_ps(vd, q), vm));
    }
}

static void dequantize_row_q4_K(const void *vx, float *y, int64_t k) {
    const lp_block_q4_K *x = vx;
    const __m256i m4 = _mm256_set1_epi8(0xF);
    for (int64_t i = 0; i < k / LP_QK_K; i++, y += LP_QK_K) {
        const float d = h2f(x[i].d), min = h2f(x[i].dmin);
        uint8_t sm[16];
        _mm_storeu_si128((__m128i *)sm, k4_scales_mins(x[i].scales));
        for (int c = 0; c < 4; c++) {
            const __m256i bits = loadu(x[i].qs + 32 * c);
            store_affine32(y + 64 * c, _mm256_and_si256(bits, m4), d * sm[2 * c], min * sm[8 + 2 * c]);
            store_affine32(y + 64 * c + 32, _mm256_and_si256(_mm256_srli_epi16(bits, 4), m4), d * sm[2 * c + 1],
                           min * sm[9 + 2 * c]);
        }
    }
}

static void dequantize_row_q5_K(const void *vx, float *y, int64_t k) {
    const lp_block_q5_K *x = vx;
    const __m256i m4 = _mm256_set1_epi8(0xF), m1 = _mm256_set1_epi8(1);
    for (int64_t i = 0; i < k / LP_QK_K; i++, y += LP_QK_K) {
        const float d = h2f(x[i].d), min = h2f(x[i].dmin);
        uint8_t sm[16];
        _mm_storeu_si128((__m128i *)sm, k4_scales_mins(x[i].scales));
        const __m256i hb = loadu(x[i].qh);
        for (int j = 0; j < 8; j++) {
            const __m256i bits = loadu(x[i].qs + 32 * (j / 2));
            const __m256i lo = _mm256_and_si256(j % 2 ? _mm256_srli_epi16(bits, 4) : bits, m4);
            const __m256i h = _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(hb, j), m1), 4);
            store_affine32(y + 32 * j, _mm256_or_si256(lo, h), d * sm[j], min * sm[8 + j]);
        }
    }
}

void lp_register_kquants_avx2_k4(lp_type_traits *t) {
    lp_override(&t[LP_TYPE_Q4_K], dequantize_row_q4_K, NULL, vec_dot_q4_K_q8_K, vec_dot_rows_q4_K);
    lp_override(&t[LP_TYPE_Q5_K], dequantize_row_q5_K, NULL, vec_dot_q5_K_q8_K, vec_dot_rows_q5_K);
}
#endif
