/* AVX2 matrix products for the engine: tiles of weight rows x activation columns.
 *
 * Each output is summed exactly as the reference's AVX2 dot product of that format sums it: blocks in
 * order into one 8-lane accumulator (lane j holds the integer dot of values 4j..4j+3 of the block),
 * `acc = fma(d_w * d_x, lanes, acc)`, the lanes added as its horizontal sum does, and the Q4_1/Q5_1
 * minimum term summed with a fused multiply-add per block. Tiles only let one weight block serve
 * several activation columns (and one activation block several rows); they change no rounding.
 * The activation quantizers round as the reference's AVX2 ones do (nearest-even, scale 127/max).
 */
#include "lp_core.h"
#include "lp_engine.h"

#if defined(__x86_64__) || defined(__i386__)
#pragma GCC target("avx2,fma,f16c")
#include <immintrin.h>
#include <math.h>
#include <string.h>

#include "lp_quants_legacy.h"

static inline float h2f(uint16_t h) { return _cvtsh_ss(h); }

/* the reference's horizontal sum: high half + low half, then pairs, then the last two */
static inline float hsum8(__m256 x) {
    __m128 r = _mm_add_ps(_mm256_extractf128_ps(x, 1), _mm256_castps256_ps128(x));
    r = _mm_add_ps(r, _mm_movehl_ps(r, r));
    r = _mm_add_ss(r, _mm_movehdup_ps(r));
    return _mm_cvtss_f32(r);
}

static inline __m256i nibbles32(const uint8_t *qs) {
    const __m128i b = _mm_loadu_si128((const __m128i *)qs);
    return _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(b, 4), b), _mm256_set1_epi8(0x0f));
}

/* bytes 0x00 / 0xff from the 32 bits of qh */
static inline __m256i bits32(const uint8_t *qh) {
    uint32_t v;
    memcpy(&v, qh, 4);
    const __m256i shuf = _mm256_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1,
                                          2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3);
    __m256i bytes = _mm256_shuffle_epi8(_mm256_set1_epi32((int)v), shuf);
    const __m256i bit = _mm256_set1_epi64x((long long)0x7fbfdfeff7fbfdfeULL);
    bytes = _mm256_or_si256(bytes, bit);
    return _mm256_cmpeq_epi8(bytes, _mm256_set1_epi64x(-1));
}

/* unsigned x signed bytes -> 8 lanes of 4-term sums, as floats */
static inline __m256 dot_us(__m256i ux, __m256i sy) {
    return _mm256_cvtepi32_ps(_mm256_madd_epi16(_mm256_set1_epi16(1), _mm256_maddubs_epi16(ux, sy)));
}
/* signed x signed bytes, by moving x's sign onto y */
static inline __m256 dot_ss(__m256i x, __m256i y) {
    return dot_us(_mm256_sign_epi8(x, x), _mm256_sign_epi8(y, x));
}

/* ---- per format: the weight block as bytes the way the reference feeds them to its dot ---------- */

/* every format below: RM rows x RN columns of outputs, each summed in the reference's order.
   W(r, b) is block b of weight row r, X(c, b) block b of activation column c. */
#define TILE_LOOP(RM, RN, BODY, FINISH)                                                               \
    for (int r = 0; r + RM <= nr; r += RM)                                                              \
        for (int c = 0; c + RN <= nc; c += RN) {                                                        \
            __m256 acc[RM][RN];                                                                         \
            float summs[RM][RN];                                                                        \
            (void)summs;                                                                                \
            for (int i = 0; i < RM; i++)                                                                \
                for (int j = 0; j < RN; j++) acc[i][j] = _mm256_setzero_ps(), summs[i][j] = 0.0f;      \
            for (int b = 0; b < nb; b++) {                                                              \
                if (RN == 1)                                                                            \
                    for (int i = 0; i < RM; i++)                                                        \
                        _mm_prefetch(w + (size_t)(r + i + 2 * RM) * wrow + (size_t)b * wrow / nb, _MM_HINT_T0); \
                BODY                                                                                    \
            }                                                                                           \
            for (int i = 0; i < RM; i++)                                                                \
                for (int j = 0; j < RN; j++) out[(size_t)(c + j) * os + r + i] = FINISH;               \
        }

#define DEFINE_MM(NAME, WT, XT, BODY_RM_RN, FINISH)                                                   \
    static void NAME##_tile(int nb, int r0, int nr, int c0, int nc, const char *w, size_t wrow,      \
                            const char *x, size_t xrow, float *out, size_t os, int RM, int RN) {       \
        (void)RM;                                                                                       \
        (void)RN;                                                                                       \
        w += (size_t)r0 * wrow;                                                                         \
        x += (size_t)c0 * xrow;                                                                         \
        out += (size_t)c0 * os + r0;                                                                    \
        if (RM == 4 && RN == 2) {                                                                       \
            TILE_LOOP(4, 2, BODY_RM_RN(4, 2), FINISH)                                                   \
        } else if (RM == 4 && RN == 1) {                                                                \
            TILE_LOOP(4, 1, BODY_RM_RN(4, 1), FINISH)                                                   \
        } else if (RM == 1 && RN == 2) {                                                                \
            TILE_LOOP(1, 2, BODY_RM_RN(1, 2), FINISH)                                                   \
        } else {                                                                                        \
            TILE_LOOP(1, 1, BODY_RM_RN(1, 1), FINISH)                                                   \
        }                                                                                               \
    }                                                                                                   \
    static void NAME(int n, int nr, int nc, const void *w, size_t wrow, const void *x, size_t xrow,   \
                     float *out, size_t os) {                                                           \
        int nb = n / LP_QK, r4 = nr / 4 * 4, c2 = nc / 2 * 2;                                           \
        NAME##_tile(nb, 0, r4, 0, c2, w, wrow, x, xrow, out, os, 4, 2);                                 \
        NAME##_tile(nb, 0, r4, c2, nc - c2, w, wrow, x, xrow, out, os, 4, 1);                           \
        NAME##_tile(nb, r4, nr - r4, 0, c2, w, wrow, x, xrow, out, os, 1, 2);                           \
        NAME##_tile(nb, r4, nr - r4, c2, nc - c2, w, wrow, x, xrow, out, os, 1, 1);                     \
    }

#define WB(T, i) ((const T *)(w + (size_t)(r + (i)) * wrow) + b)
#define XB(T, j) ((const T *)(x + (size_t)(c + (j)) * xrow) + b)

/* Q4_0 x Q8_0: (nibble - 8) signed dot, scale d_w * d_x */
#define Q4_0_BODY(RM, RN)                                                                              \
    __m256i qx[RM];                                                                                     \
    float dw[RM];                                                                                       \
    for (int i = 0; i < RM; i++)                                                                        \
        qx[i] = _mm256_sub_epi8(nibbles32(WB(lp_block_q4_0, i)->qs), _mm256_set1_epi8(8)),             \
        dw[i] = h2f(WB(lp_block_q4_0, i)->d);                                                           \
    for (int j = 0; j < RN; j++) {                                                                      \
        const lp_block_q8_0 *y = XB(lp_block_q8_0, j);                                                  \
        const __m256i qy = _mm256_loadu_si256((const __m256i *)y->qs);                                  \
        const float dy = h2f(y->d);                                                                     \
        for (int i = 0; i < RM; i++)                                                                    \
            acc[i][j] = _mm256_fmadd_ps(_mm256_set1_ps(dw[i] * dy), dot_ss(qx[i], qy), acc[i][j]);     \
    }
DEFINE_MM(mm_q4_0, lp_block_q4_0, lp_block_q8_0, Q4_0_BODY, hsum8(acc[i][j]))

/* Q4_1 x Q8_1: unsigned nibble dot, scale d_w * d_x, plus m_w * s_x fused per block */
#define Q4_1_BODY(RM, RN)                                                                              \
    __m256i qx[RM];                                                                                     \
    float dw[RM], mw[RM];                                                                               \
    for (int i = 0; i < RM; i++) {                                                                      \
        const lp_block_q4_1 *blk = WB(lp_block_q4_1, i);                                                \
        qx[i] = nibbles32(blk->qs), dw[i] = h2f(blk->d), mw[i] = h2f(blk->m);                           \
    }                                                                                                   \
    for (int j = 0; j < RN; j++) {                                                                      \
        const lp_block_q8_1 *y = XB(lp_block_q8_1, j);                                                  \
        const __m256i qy = _mm256_loadu_si256((const __m256i *)y->qs);                                  \
        const float dy = h2f(y->d), sy = h2f(y->s);                                                     \
        for (int i = 0; i < RM; i++) {                                                                  \
            summs[i][j] = fmaf(mw[i], sy, summs[i][j]);                                                 \
            acc[i][j] = _mm256_fmadd_ps(_mm256_set1_ps(dw[i] * dy), dot_us(qx[i], qy), acc[i][j]);     \
        }                                                                                               \
    }
DEFINE_MM(mm_q4_1, lp_block_q4_1, lp_block_q8_1, Q4_1_BODY, hsum8(acc[i][j]) + summs[i][j])

/* Q5_0 x Q8_0: nibble | (missing fifth bit -> 0xf0), i.e. value - 16, signed dot */
#define Q5_0_BODY(RM, RN)                                                                              \
    __m256i qx[RM];                                                                                     \
    float dw[RM];                                                                                       \
    for (int i = 0; i < RM; i++) {                                                                      \
        const lp_block_q5_0 *blk = WB(lp_block_q5_0, i);                                                \
        __m256i hi = _mm256_andnot_si256(bits32(blk->qh), _mm256_set1_epi8((char)0xf0));                \
        qx[i] = _mm256_or_si256(nibbles32(blk->qs), hi), dw[i] = h2f(blk->d);                           \
    }                                                                                                   \
    for (int j = 0; j < RN; j++) {                                                                      \
        const lp_block_q8_0 *y = XB(lp_block_q8_0, j);                                                  \
        const __m256i qy = _mm256_loadu_si256((const __m256i *)y->qs);                                  \
        const float dy = h2f(y->d);                                                                     \
        for (int i = 0; i < RM; i++)                                                                    \
            acc[i][j] = _mm256_fmadd_ps(_mm256_set1_ps(dw[i] * dy), dot_ss(qx[i], qy), acc[i][j]);     \
    }
DEFINE_MM(mm_q5_0, lp_block_q5_0, lp_block_q8_0, Q5_0_BODY, hsum8(acc[i][j]))

/* Q5_1 x Q8_1: unsigned 5-bit dot; lanes times (d_w * d_x), minimum fused per block */
#define Q5_1_BODY(RM, RN)                                                                              \
    __m256i qx[RM];                                                                                     \
    float dw[RM], mw[RM];                                                                               \
    for (int i = 0; i < RM; i++) {                                                                      \
        const lp_block_q5_1 *blk = WB(lp_block_q5_1, i);                                                \
        __m256i hi = _mm256_and_si256(bits32(blk->qh), _mm256_set1_epi8(0x10));                         \
        qx[i] = _mm256_or_si256(nibbles32(blk->qs), hi), dw[i] = h2f(blk->d), mw[i] = h2f(blk->m);      \
    }                                                                                                   \
    for (int j = 0; j < RN; j++) {                                                                      \
        const lp_block_q8_1 *y = XB(lp_block_q8_1, j);                                                  \
        const __m256i qy = _mm256_loadu_si256((const __m256i *)y->qs);                                  \
        const float dy = h2f(y->d), sy = h2f(y->s);                                                     \
        for (int i = 0; i < RM; i++) {                                                                  \
            summs[i][j] = fmaf(mw[i], sy, summs[i][j]);                                                 \
            acc[i][j] = _mm256_fmadd_ps(dot_us(qx[i], qy), _mm256_set1_ps(dw[i] * dy), acc[i][j]);     \
        }                                                                                               \
    }
DEFINE_MM(mm_q5_1, lp_block_q5_1, lp_block_q8_1, Q5_1_BODY, hsum8(acc[i][j]) + summs[i][j])

/* Q8_0 x Q8_0: signed dot */
#define Q8_0_BODY(RM, RN)                                                                              \
    __m256i qx[RM];                                                                                     \
    float dw[RM];                                                                                       \
    for (int i = 0; i < RM; i++)                                                                        \
        qx[i] = _mm256_loadu_si256((const __m256i *)WB(lp_block_q8_0, i)->qs),                          \
        dw[i] = h2f(WB(lp_block_q8_0, i)->d);                                                           \
    for (int j = 0; j < RN; j++) {                                                                      \
        const lp_block_q8_0 *y = XB(lp_block_q8_0, j);                                                  \
        const __m256i qy = _mm256_loadu_si256((const __m256i *)y->qs);                                  \
        const float dy = h2f(y->d);                                                                     \
        for (int i = 0; i < RM; i++)                                                                    \
            acc[i][j] = _mm256_fmadd_ps(_mm256_set1_ps(dw[i] * dy), dot_ss(qx[i], qy), acc[i][j]);     \
    }
DEFINE_MM(mm_q8_0, lp_block_q8_0, lp_block_q8_0, Q8_0_BODY, hsum8(acc[i][j]))

/* ---- activation quantizers -------------------------------------------------------------------- */

/* 32 floats -> 32 int8 rounded to nearest even after scaling by id; returns their sum */
static inline int q8_block(const float *x, float id, int8_t *qs) {
    const __m256 mul = _mm256_set1_ps(id);
    __m256i q[4];
    for (int k = 0; k < 4; k++)
        q[k] = _mm256_cvtps_epi32(_mm256_round_ps(_mm256_mul_ps(_mm256_loadu_ps(x + 8 * k), mul),
                                                  _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
    __m256i s = _mm256_add_epi32(_mm256_add_epi32(q[0], q[1]), _mm256_add_epi32(q[2], q[3]));
    __m128i s4 = _mm_add_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256(s, 1));
    s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, _MM_SHUFFLE(1, 0, 3, 2)));
    s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, _MM_SHUFFLE(2, 3, 0, 1)));
    __m256i p = _mm256_packs_epi16(_mm256_packs_epi32(q[0], q[1]), _mm256_packs_epi32(q[2], q[3]));
    p = _mm256_permutevar8x32_epi32(p, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
    _mm256_storeu_si256((__m256i *)qs, p);
    return _mm_cvtsi128_si32(s4);
}

static inline float block_amax(const float *x) {
    const __m256 sign = _mm256_set1_ps(-0.0f);
    __m256 m = _mm256_andnot_ps(sign, _mm256_loadu_ps(x));
    for (int k = 1; k < 4; k++) m = _mm256_max_ps(m, _mm256_andnot_ps(sign, _mm256_loadu_ps(x + 8 * k)));
    __m128 m4 = _mm_max_ps(_mm256_extractf128_ps(m, 1), _mm256_castps256_ps128(m));
    m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
    m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
    return _mm_cvtss_f32(m4);
}

static void quant_q8_0(const float *x, void *vy, int64_t n) {
    lp_block_q8_0 *y = vy;
    for (int64_t i = 0; i < n / LP_QK; i++, x += LP_QK) {
        const float amax = block_amax(x);
        y[i].d = lp_fp32_to_fp16(amax / 127.f);
        q8_block(x, amax != 0.0f ? 127.f / amax : 0.0f, y[i].qs);
    }
}

static void quant_q8_1(const float *x, void *vy, int64_t n) {
    lp_block_q8_1 *y = vy;
    for (int64_t i = 0; i < n / LP_QK; i++, x += LP_QK) {
        const float amax = block_amax(x), d = amax / 127.f;
        y[i].d = lp_fp32_to_fp16(d);
        const int sum = q8_block(x, amax != 0.0f ? 127.f / amax : 0.0f, y[i].qs);
        y[i].s = lp_fp32_to_fp16(d * (float)sum);
    }
}

void lp_engine_matmul_avx2(lp_engine_matmul *m) {
    m->mm[LP_TYPE_Q4_0] = mm_q4_0;
    m->mm[LP_TYPE_Q4_1] = mm_q4_1;
    m->mm[LP_TYPE_Q5_0] = mm_q5_0;
    m->mm[LP_TYPE_Q5_1] = mm_q5_1;
    m->mm[LP_TYPE_Q8_0] = mm_q8_0;
    m->quant[LP_TYPE_Q8_0] = quant_q8_0;
    m->quant[LP_TYPE_Q8_1] = quant_q8_1;
}
#else
void lp_engine_matmul_avx2(lp_engine_matmul *m) { (void)m; }
#endif
