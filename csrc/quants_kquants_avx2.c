/* K-quants Q2_K..Q6_K and Q8_K: AVX2+FMA+F16C kernels of Q8_K and of the formats of 16 groups of 16
 * (Q2_K, Q3_K, Q6_K); those of Q4_K and Q5_K are in quants_kquants_avx2_k4.c, the weight quantizers in
 * quants_kquants_avx2_fit.c.
 *
 * The Q8_K activation quantizer writes exactly the scalar reference's bytes (the reference uses its scalar
 * one on x86 too); the dequantizers give exactly the scalar floats (multiply, then subtract: nothing fused).
 * The dot products follow the reference's AVX2 ones step for step: the same int32 lane holds the same
 * partial sum (offsets such as Q6_K's -32 are taken per value, not through the block sums), and the
 * blocks are accumulated with the same fused multiply-adds in the same order, then summed across lanes
 * the same way; where the reference adds a scalar `a += b * c`, its -march=native build fuses it, and so
 * does fmaf() here. They differ from the scalar kernels in float order only.
 */
#if defined(__x86_64__) || defined(__i386__)
#pragma GCC target("avx2,fma,f16c")
#include <immintrin.h>
#include "lp_avx2.h"
#include <math.h>
#include <string.h>

#include "lp_core.h"
#include "lp_kquants.h"

/* ---- Q8_K activations ------------------------------------------------------------------------ */

/* the signed value of the first element of largest magnitude (the reference's choice); *amax = |it| */
static inline float block_signed_absmax(const float *x, float *amax) {
    __m256 vmax = _mm256_loadu_ps(x), vmin = vmax;
    for (int j = 8; j < LP_QK_K; j += 8) {
        const __m256 v = _mm256_loadu_ps(x + j);
        vmax = _mm256_max_ps(vmax, v);
        vmin = _mm256_min_ps(vmin, v);
    }
    const float mx = hmax_ps(vmax), mn = hmin_ps(vmin);
    if (mx > -mn) { *amax = mx; return mx; }
    if (-mn > mx) { *amax = -mn; return mn; }
    *amax = mx; /* both +a and -a occur (or all zero): the first one decides the sign */
    for (int j = 0; j < LP_QK_K; j++)
        if (fabsf(x[j]) == mx) return x[j];
    return mx;
}

static void quantize_row_q8_K(const float *x, void *vy, int64_t k) {
    lp_block_q8_K *y = vy;
    const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    const __m256i ones8 = _mm256_set1_epi8(1), ones16 = _mm256_set1_epi16(1), top = _mm256_set1_epi32(127);
    for (int64_t i = 0; i < k / LP_QK_K; i++, x += LP_QK_K) {
        float amax;
        const float max = block_signed_absmax(x, &amax);
        if (!(amax > 0)) {
            memset(&y[i], 0, sizeof y[i]);
            continue;
        }
        const float iscale = -127.f / max;
        const __m256 vs = _mm256_set1_ps(iscale);
        __m256i quad[8]; /* quad[j] lane l: sum of values 32j + 4l .. 32j + 4l + 3 */
        for (int j = 0; j < 8; j++) {
            __m256i q[4];
            for (int u = 0; u < 4; u++) {
                const __m256 v = _mm256_mul_ps(_mm256_loadu_ps(x + 32 * j + 8 * u), vs);
                const __m256 r = _mm256_round_ps(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
                q[u] = _mm256_min_epi32(_mm256_cvtps_epi32(r), top);
            }
            /* packs work per 128-bit lane: the permute puts the groups of 4 back in order */
            const __m256i p = _mm256_packs_epi16(_mm256_packs_epi32(q[0], q[1]), _mm256_packs_epi32(q[2], q[3]));
            const __m256i q8 = _mm256_permutevar8x32_epi32(p, order);
            _mm256_storeu_si256((__m256i *)(y[i].qs + 32 * j), q8);
            quad[j] = _mm256_madd_epi16(_mm256_maddubs_epi16(ones8, q8), ones16);
        }
        /* quads -> sums of 16: hadd twice gives [j=0..3 first 16 | j=0..3 second 16] per 4 j's */
        const __m256i a =
            _mm256_hadd_epi32(_mm256_hadd_epi32(quad[0], quad[1]), _mm256_hadd_epi32(quad[2], quad[3]));
        const __m256i b =
            _mm256_hadd_epi32(_mm256_hadd_epi32(quad[4], quad[5]), _mm256_hadd_epi32(quad[6], quad[7]));
        const __m256i s = _mm256_packs_epi32(a, b); /* [first 16 of j=0..7 | second 16 of j=0..7] */
        const __m128i lo = _mm256_castsi256_si128(s), hi = _mm256_extracti128_si256(s, 1);
        _mm_storeu_si128((__m128i *)y[i].bsums, _mm_unpacklo_epi16(lo, hi));
        _mm_storeu_si128((__m128i *)(y[i].bsums + 8), _mm_unpackhi_epi16(lo, hi));
        y[i].d = 1 / iscale;
    }
}

static void dequantize_row_q8_K(const void *vx, float *y, int64_t k) {
    const lp_block_q8_K *x = vx;
    for (int64_t i = 0; i < k / LP_QK_K; i++) {
        const __m256 d = _mm256_set1_ps(x[i].d);
        for (int j = 0; j < LP_QK_K; j += 8) {
            const __m256i q = _mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(x[i].qs + j)));
            _mm256_storeu_ps(y + j, _mm256_mul_ps(d, _mm256_cvtepi32_ps(q)));
        }
        y += LP_QK_K;
    }
}

static void vec_dot_q8_K_q8_K(int n, float *s, const void *vx, const void *vy) {
    const lp_block_q8_K *x = vx, *y = vy;
    const __m256i ones = _mm256_set1_epi16(1);
    __m256 acc = _mm256_setzero_ps();
    for (int i = 0; i < n / LP_QK_K; i++) {
        __m256i sumi = _mm256_setzero_si256();
        for (int j = 0; j < LP_QK_K; j += 32) {
            const __m256i a = loadu(x[i].qs + j), b = loadu(y[i].qs + j);
            const __m256i p = _mm256_maddubs_epi16(_mm256_sign_epi8(a, a), _mm256_sign_epi8(b, a));
            sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(p, ones));
        }
        acc = _mm256_fmadd_ps(_mm256_set1_ps(x[i].d * y[i].d), _mm256_cvtepi32_ps(sumi), acc);
    }
    *s = hsum_ps(acc);
}

/* ---- shared pieces of the 16-groups-of-16 formats (Q2_K, Q3_K, Q6_K) -------------------------- */

/* A block's values come in 2 halves h of 128, each in 4 parts p of 32; part (h, p) covers the groups
 * 8h + 2p and 8h + 2p + 1. group_scales() returns, for each part, the int16 vector
 * [scale of group 8h+2p x 8 | scale of group 8h+2p+1 x 8] that _mm256_madd_epi16 wants (see part_pick). */
static inline void group_scales(__m128i sc8, int is_signed, __m256i out[8]) {
    const __m256i sc16 = is_signed ? _mm256_cvtepi8_epi16(sc8) : _mm256_cvtepu8_epi16(sc8);
    const __m256i lo = _mm256_permute2x128_si256(sc16, sc16, 0x00);
    const __m256i hi = _mm256_permute2x128_si256(sc16, sc16, 0x11);
    for (int p = 0; p < 4; p++) {
        out[p] = _mm256_shuffle_epi8(lo, part_pick(p));
        out[4 + p] = _mm256_shuffle_epi8(hi, part_pick(p));
    }
}

/* Σ over groups of scale * bsum, as 8 int32 lanes (sum them for the total) */
static inline __m256i scaled_bsums(__m128i sc8, int is_signed, const int16_t *bsums) {
    const __m256i sc16 = is_signed ? _mm256_cvtepi8_epi16(sc8) : _mm256_cvtepu8_epi16(sc8);
    return _mm256_madd_epi16(sc16, loadu(bsums));
}

/* ---- Q2_K ------------------------------------------------------------------------------------ */

static void vec_dot_q2_K_q8_K(int n, float *s, const void *vx, const void *vy) {
    const lp_block_q2_K *x = vx;
    const lp_block_q8_K *y = vy;
    const __m256i m3 = _mm256_set1_epi8(3);
    const __m128i m4 = _mm_set1_epi8(0xF);
    __m256 acc = _mm256_setzero_ps();
    for (int i = 0; i < n / LP_QK_K; i++) {
        const float dall = y[i].d * h2f(x[i].d), dmin = -y[i].d * h2f(x[i].dmin);
        const __m128i sb = _mm_loadu_si128((const __m128i *)x[i].scales);
        const __m256i summs = scaled_bsums(_mm_and_si128(_mm_srli_epi16(sb, 4), m4), 0, y[i].bsums);
        __m256i sc[8];
        group_scales(_mm_and_si128(sb, m4), 0, sc);
        const int8_t *q8 = y[i].qs;
        __m256i sumi = _mm256_setzero_si256();
        for (int h = 0; h < 2; h++) {
            const __m256i bits = loadu(x[i].qs + 32 * h);
            for (int p = 0; p < 4; p++, q8 += 32) {
                const __m256i q = _mm256_and_si256(_mm256_srli_epi16(bits, 2 * p), m3);
                sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(_mm256_maddubs_epi16(q, loadu(q8)), sc[4 * h + p]));
            }
        }
        acc = _mm256_fmadd_ps(_mm256_set1_ps(dmin), _mm256_cvtepi32_ps(summs), acc);
        acc = _mm256_fmadd_ps(_mm256_set1_ps(dall), _mm256_cvtepi32_ps(sumi), acc);
    }
    *s = hsum_ps(acc);
}

static void dequantize_row_q2_K(const void *vx, float *y, int64_t k) {
    const lp_block_q2_K *x = vx;
    for (int64_t i = 0; i < k / LP_QK_K; i++) {
        const float d = h2f(x[i].d), min = h2f(x[i].dmin);
        for (int g = 0; g < 16; g++, y += 16) {
            const uint8_t sc = x[i].scales[g];
            const __m256 dl = _mm256_set1_ps(d * (sc & 0xF)), ml = _mm256_set1_ps(min * (sc >> 4));
            const int shift = 2 * ((g / 2) % 4);
            const __m128i bits = _mm_loadu_si128((const __m128i *)(x[i].qs + 32 * (g / 8) + 16 * (g % 2)));
            const __m128i q = _mm_and_si128(_mm_srli_epi16(bits, shift), _mm_set1_epi8(3));
            const __m256 q0 = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(q));
            const __m256 q1 = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(q, 8)));
            _mm256_storeu_ps(y, _mm256_sub_ps(_mm256_mul_ps(dl, q0), ml));
            _mm256_storeu_ps(y + 8, _mm256_sub_ps(_mm256_mul_ps(dl, q1), ml));
        }
    }
}

/* ---- Q3_K ------------------------------------------------------------------------------------ */

/* the 16 6-bit scales of a Q3_K block, as signed bytes -32..31 */
static inline __m128i q3_scales(const uint8_t *b) {
    uint32_t a, c, e;
    memcpy(&a, b, 4);
    memcpy(&c, b + 4, 4);
    memcpy(&e, b + 8, 4);
    const uint32_t m4 = 0x0f0f0f0f, m2 = 0x03030303;
    const __m128i v = _mm_setr_epi32((int)((a & m4) | ((e & m2) << 4)), (int)((c & m4) | (((e >> 2) & m2) << 4)),
                                     (int)(((a >> 4) & m4) | (((e >> 4) & m2) << 4)),
                                     (int)(((c >> 4) & m4) | (((e >> 6) & m2) << 4)));
    return _mm_sub_epi8(v, _mm_set1_epi8(32));
}

/* part (h, p) of a Q3_K block against q8: the int16 pair sums of (low bits - 4 * !high bit) * q8 */
static inline __m256i q3_pairs(__m256i bits, __m256i hm, int h, int p, __m256i q8) {
    const __m256i m3 = _mm256_set1_epi8(3), m1 = _mm256_set1_epi8(1);
    const __m256i lo = _mm256_and_si256(_mm256_srli_epi16(bits, 2 * p), m3);
    const __m256i clear = _mm256_xor_si256(_mm256_and_si256(_mm256_srli_epi16(hm, 4 * h + p), m1), m1);
    return _mm256_sub_epi16(_mm256_maddubs_epi16(lo, q8), _mm256_maddubs_epi16(_mm256_slli_epi16(clear, 2), q8));
}

static void vec_dot_q3_K_q8_K(int n, float *s, const void *vx, const void *vy) {
    const lp_block_q3_K *x = vx;
    const lp_block_q8_K *y = vy;
    __m256 acc = _mm256_setzero_ps();
    for (int i = 0; i < n / LP_QK_K; i++) {
        const float d = y[i].d * h2f(x[i].d);
        const __m128i sc8 = q3_scales(x[i].scales);
        __m256i sc[8];
        group_scales(sc8, 1, sc);
        const __m256i hm = loadu(x[i].hmask);
        const int8_t *q8 = y[i].qs;
        __m256i sumi = _mm256_setzero_si256();
        for (int h = 0; h < 2; h++) {
            const __m256i bits = loadu(x[i].qs + 32 * h);
            for (int p = 0; p < 4; p++, q8 += 32) {
                const __m256i prod = q3_pairs(bits, hm, h, p, loadu(q8));
                sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(prod, sc[4 * h + p]));
            }
        }
        acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(sumi), acc);
    }
    *s = hsum_ps(acc);
}

static void dequantize_row_q3_K(const void *vx, float *y, int64_t k) {
    const lp_block_q3_K *x = vx;
    for (int64_t i = 0; i < k / LP_QK_K; i++) {
        const float d_all = h2f(x[i].d);
        int8_t sc[16];
        _mm_storeu_si128((__m128i *)sc, q3_scales(x[i].scales));
        for (int g = 0; g < 16; g++, y += 16) {
            const __m256 dl = _mm256_set1_ps(d_all * sc[g]);
            const int h = g / 8, p = (g / 2) % 4, off = 16 * (g % 2);
            const __m128i bits = _mm_loadu_si128((const __m128i *)(x[i].qs + 32 * h + off));
            const __m128i lo = _mm_and_si128(_mm_srli_epi16(bits, 2 * p), _mm_set1_epi8(3));
            const __m128i hb = _mm_and_si128(_mm_srli_epi16(_mm_loadu_si128((const __m128i *)(x[i].hmask + off)),
                                                            4 * h + p), _mm_set1_epi8(1));
            /* q - 4 when the high bit is clear, q when it is set */
            const __m128i q = _mm_sub_epi8(lo, _mm_andnot_si128(_mm_slli_epi16(hb, 2), _mm_set1_epi8(4)));
            const __m256 q0 = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q));
            const __m256 q1 = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(q, 8)));
            _mm256_storeu_ps(y, _mm256_mul_ps(dl, q0));
            _mm256_storeu_ps(y + 8, _mm256_mul_ps(dl, q1));
        }
    }
}

/* ---- Q6_K ------------------------------------------------------------------------------------ */

/* the 4 parts of 32 quants (0..63 unsigned) of half h of a Q6_K block */
static inline void q6_half(const lp_block_q6_K *b, int h, __m256i q[4]) {
    const __m256i m4 = _mm256_set1_epi8(0xF), m30 = _mm256_set1_epi8(0x30);
    const __m256i l0 = loadu(b->ql + 64 * h), l1 = loadu(b->ql + 64 * h + 32), hb = loadu(b->qh + 32 * h);
    q[0] = _mm256_or_si256(_mm256_and_si256(l0, m4), _mm256_and_si256(_mm256_slli_epi16(hb, 4), m30));
    q[1] = _mm256_or_si256(_mm256_and_si256(l1, m4), _mm256_and_si256(_mm256_slli_epi16(hb, 2), m30));
    q[2] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l0, 4), m4), _mm256_and_si256(hb, m30));
    q[3] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l1, 4), m4),
                           _mm256_and_si256(_mm256_srli_epi16(hb, 2), m30));
}

static void vec_dot_q6_K_q8_K(int n, float *s, const void *vx, const void *vy) {
    const lp_block_q6_K *x = vx;
    const lp_block_q8_K *y = vy;
    __m256 acc = _mm256_setzero_ps();
    for (int i = 0; i < n / LP_QK_K; i++) {
        const float d = y[i].d * h2f(x[i].d);
        const __m128i sc8 = _mm_loadu_si128((const __m128i *)x[i].scales);
        __m256i sc[8];
        group_scales(sc8, 1, sc);
        const __m256i m32 = _mm256_set1_epi8(32);
        __m256i sumi = _mm256_setzero_si256();
        const int8_t *q8 = y[i].qs;
        for (int h = 0; h < 2; h++) {
            __m256i q[4];
            q6_half(&x[i], h, q);
            for (int p = 0; p < 4; p++, q8 += 32) {
                const __m256i v = loadu(q8);
                const __m256i prod = _mm256_sub_epi16(_mm256_maddubs_epi16(q[p], v), _mm256_maddubs_epi16(m32, v));
                sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(prod, sc[4 * h + p]));
            }
        }
        acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(sumi), acc);
    }
    *s = hsum_ps(acc);
}

/* ---- one weight row against 4 activation rows (prompt processing) ----------------------------
 *
 * The weight quants and scales are decoded once per block for 4 activation rows. Each row's int32 sums
 * and float steps are the single-row kernel's, so the results are bitwise those of vec_dot. */

#define ROWS LP_ROWS4

enum { G16_Q2, G16_Q3, G16_Q6 };

/* Q2_K, Q3_K or Q6_K (f, a constant) against 4 activation rows. Per part of 32 values: the unsigned quants q,
 * the offset subtracted from each value (Q3_K: 4 where the high bit is clear; Q6_K: 32; Q2_K: none, its
 * mins are summed through the block sums), then q . y - offset . y scaled by the groups' scales. */
static inline __attribute__((always_inline)) void g16_rows4(const int f, int n, const void *vx, float *s, size_t bs,
                                                            const void *vy, size_t by) {
    const size_t xbs = f == G16_Q2 ? sizeof(lp_block_q2_K) : f == G16_Q3 ? sizeof(lp_block_q3_K)
                                                                   : sizeof(lp_block_q6_K);
    const __m256i m3 = _mm256_set1_epi8(3), m1 = _mm256_set1_epi8(1), m32 = _mm256_set1_epi8(32);
    const __m128i m4 = _mm_set1_epi8(0xF);
    const lp_block_q8_K *y[ROWS];
    __m256 acc[ROWS];
    for (int t = 0; t < ROWS; t++) {
        y[t] = lp_q8_K_row(vy, by, t);
        acc[t] = _mm256_setzero_ps();
    }
    for (int i = 0; i < n / LP_QK_K; i++) {
        const uint8_t *xb = (const uint8_t *)vx + (size_t)i * xbs;
        const lp_block_q2_K *b2 = (const lp_block_q2_K *)xb;
        const lp_block_q3_K *b3 = (const lp_block_q3_K *)xb;
        const lp_block_q6_K *b6 = (const lp_block_q6_K *)xb;
        __m256i sc16, hm = _mm256_setzero_si256();
        __m128i mins8 = _mm_setzero_si128();
        if (f == G16_Q2) {
            const __m128i sb = _mm_loadu_si128((const __m128i *)b2->scales);
            sc16 = _mm256_cvtepu8_epi16(_mm_and_si128(sb, m4));
            mins8 = _mm_and_si128(_mm_srli_epi16(sb, 4), m4);
        } else if (f == G16_Q3) {
            sc16 = _mm256_cvtepi8_epi16(q3_scales(b3->scales));
            hm = loadu(b3->hmask);
        } else {
            sc16 = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)b6->scales));
        }
        __m256i sumi[ROWS];
        for (int t = 0; t < ROWS; t++) sumi[t] = _mm256_setzero_si256();
        for (int h = 0; h < 2; h++) {
            __m256i bits = _mm256_setzero_si256(), q6[4];
            if (f == G16_Q6) q6_half(b6, h, q6);
            else bits = loadu((f == G16_Q2 ? b2->qs : b3->qs) + 32 * h);
            const __m256i half = h ? _mm256_permute2x128_si256(sc16, sc16, 0x11)
                                   : _mm256_permute2x128_si256(sc16, sc16, 0x00);
            for (int p = 0; p < 4; p++) {
                __m256i q, off = m32;
                if (f == G16_Q6) {
                    q = q6[p];
                } else {
                    q = _mm256_and_si256(_mm256_srli_epi16(bits, 2 * p), m3);
                    if (f == G16_Q3) {
                        const __m256i hbit = _mm256_and_si256(_mm256_srli_epi16(hm, 4 * h + p), m1);
                        off = _mm256_slli_epi16(_mm256_xor_si256(hbit, m1), 2);
                    }
                }
                const __m256i scp = _mm256_shuffle_epi8(half, part_pick(p));
                for (int t = 0; t < ROWS; t++) {
                    const __m256i v = loadu(y[t][i].qs + 128 * h + 32 * p);
                    __m256i prod = _mm256_maddubs_epi16(q, v);
                    if (f != G16_Q2) prod = _mm256_sub_epi16(prod, _mm256_maddubs_epi16(off, v));
                    sumi[t] = _mm256_add_epi32(sumi[t], _mm256_madd_epi16(prod, scp));
                }
            }
        }
        const float dx = h2f(f == G16_Q2 ? b2->d : f == G16_Q3 ? b3->d : b6->d);
        const float mx = f == G16_Q2 ? h2f(b2->dmin) : 0.0f;
        for (int t = 0; t < ROWS; t++) {
            if (f == G16_Q2) {
                const __m256i summs = scaled_bsums(mins8, 0, y[t][i].bsums);
                acc[t] = _mm256_fmadd_ps(_mm256_set1_ps(-y[t][i].d * mx), _mm256_cvtepi32_ps(summs), acc[t]);
            }
            acc[t] = _mm256_fmadd_ps(_mm256_set1_ps(y[t][i].d * dx), _mm256_cvtepi32_ps(sumi[t]), acc[t]);
        }
    }
    for (int t = 0; t < ROWS; t++) s[t * bs] = hsum_ps(acc[t]);
}

static void q2_rows4(int n, const void *x, float *s, size_t bs, const void *y, size_t by) {
    g16_rows4(G16_Q2, n, x, s, bs, y, by);
}

static void q3_rows4(int n, const void *x, float *s, size_t bs, const void *y, size_t by) {
    g16_rows4(G16_Q3, n, x, s, bs, y, by);
}

static void q6_rows4(int n, const void *x, float *s, size_t bs, const void *y, size_t by) {
    g16_rows4(G16_Q6, n, x, s, bs, y, by);
}

static void vec_dot_rows_q2_K(int n, int nrc, float *s, size_t bs, const void *vx, const void *vy, size_t by) {
    lp_vec_dot_rows_by4(q2_rows4, vec_dot_q2_K_q8_K, n, nrc, s, bs, vx, vy, by);
}

static void vec_dot_rows_q3_K(int n, int nrc, float *s, size_t bs, const void *vx, const void *vy, size_t by) {
    lp_vec_dot_rows_by4(q3_rows4, vec_dot_q3_K_q8_K, n, nrc, s, bs, vx, vy, by);
}

static void vec_dot_rows_q6_K(int n, int nrc, float *s, size_t bs, const void *vx, const void *vy, size_t by) {
    lp_vec_dot_rows_by4(q6_rows4, vec_dot_q6_K_q8_K, n, nrc, s, bs, vx, vy, by);
}

static void dequantize_row_q6_K(const void *vx, float *y, int64_t k) {
    const lp_block_q6_K *x = vx;
    const __m128i m32 = _mm_set1_epi8(32);
    for (int64_t i = 0; i < k / LP_QK_K; i++) {
        const float d = h2f(x[i].d);
        for (int h = 0; h < 2; h++) {
            __m256i q[4];
            q6_half(&x[i], h, q);
            for (int p = 0; p < 4; p++) {
                for (int half = 0; half < 2; half++, y += 16) {
                    const __m256 dl = _mm256_set1_ps(d * x[i].scales[8 * h + 2 * p + half]);
                    const __m128i v = _mm_sub_epi8(half ? _mm256_extracti128_si256(q[p], 1)
                                                        : _mm256_castsi256_si128(q[p]), m32);
                    _mm256_storeu_ps(y, _mm256_mul_ps(dl, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(v))));
                    _mm256_storeu_ps(y + 8, _mm256_mul_ps(dl, _mm256_cvtepi32_ps(
                                                                  _mm256_cvtepi8_epi32(_mm_srli_si128(v, 8)))));
                }
            }
        }
    }
}

void lp_register_kquants_avx2(lp_type_traits *t) {
    lp_register_kquants_avx2_quantizers(t);
    lp_register_kquants_avx2_k4(t);
    lp_override(&t[LP_TYPE_Q2_K], dequantize_row_q2_K, NULL, vec_dot_q2_K_q8_K, vec_dot_rows_q2_K);
    lp_override(&t[LP_TYPE_Q3_K], dequantize_row_q3_K, NULL, vec_dot_q3_K_q8_K, vec_dot_rows_q3_K);
    lp_override(&t[LP_TYPE_Q6_K], dequantize_row_q6_K, NULL, vec_dot_q6_K_q8_K, vec_dot_rows_q6_K);
    lp_override(&t[LP_TYPE_Q8_K], dequantize_row_q8_K, quantize_row_q8_K, vec_dot_q8_K_q8_K, NULL);
}
#endif
