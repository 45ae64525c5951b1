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
#include "lp_avx2.h"
#include <math.h>
#include <string.h>

#include "lp_quants_legacy.h"

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

/* ---- per format: the bytes the reference feeds its dot product, and the block's scales ------------ */

enum { F_Q4_0, F_Q4_1, F_Q5_0, F_Q5_1, F_Q8_0 };
static const int W_SIZE[] = {18, 20, 22, 24, 34};

static inline int has_min(int f) { return f == F_Q4_1 || f == F_Q5_1; }   /* x = q d + m, dotted with Q8_1 */
static inline int x_size(int f) { return has_min(f) ? 36 : 34; }           /* the activation block */
static inline int x_qs(int f) { return has_min(f) ? 4 : 2; }

/* the weight bytes as unsigned values for maddubs (Q8_0: signed, handled by dot_ss) */
static inline __attribute__((always_inline)) __m256i w_bytes(int f, const char *blk) {
    switch (f) {
    case F_Q4_0: return nibbles32((const uint8_t *)blk + 2);   /* q; the value is q - 8 */
    case F_Q4_1: return nibbles32((const uint8_t *)blk + 4);
    case F_Q5_0:   /* q with its fifth bit; the value is q - 16 */
        return _mm256_or_si256(nibbles32((const uint8_t *)blk + 6),
                               _mm256_and_si256(bits32((const uint8_t *)blk + 2), _mm256_set1_epi8(0x10)));
    case F_Q5_1:
        return _mm256_or_si256(nibbles32((const uint8_t *)blk + 8),
                               _mm256_and_si256(bits32((const uint8_t *)blk + 4), _mm256_set1_epi8(0x10)));
    default: return _mm256_loadu_si256((const __m256i *)(blk + 2));
    }
}

/* Q4_0 and Q5_0 are stored with an offset (8, 16): their lanes are dot(q, x) - offset * sum(x), the same
   integers the reference gets from dot(q - offset, x); the per-lane sums of x, times the offset, are
   computed once per activation block */
static inline __attribute__((always_inline)) __m256i x_offset(int f, __m256i qx) {
    if (f != F_Q4_0 && f != F_Q5_0) return _mm256_setzero_si256();
    const __m256i sums = _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_set1_epi8(1), qx), _mm256_set1_epi16(1));
    return _mm256_slli_epi32(sums, f == F_Q4_0 ? 3 : 4);
}

static inline __attribute__((always_inline)) __m256 w_dot(int f, __m256i qw, __m256i qx, __m256i off) {
    if (f == F_Q8_0) return dot_ss(qw, qx);
    const __m256i lanes = _mm256_madd_epi16(_mm256_set1_epi16(1), _mm256_maddubs_epi16(qw, qx));
    return _mm256_cvtepi32_ps(f == F_Q4_0 || f == F_Q5_0 ? _mm256_sub_epi32(lanes, off) : lanes);
}

/* the fp16 pair at the start of a block (d and m, or d and s) as 2 floats in lanes 2k, 2k+1 of a
   4-block gather: [d0, m0, d1, m1, ...] */
static inline __m256 scales4(const char *b0, const char *b1, const char *b2, const char *b3) {
    int32_t v0, v1, v2, v3;
    memcpy(&v0, b0, 4), memcpy(&v1, b1, 4), memcpy(&v2, b2, 4), memcpy(&v3, b3, 4);
    return _mm256_cvtph_ps(_mm_setr_epi32(v0, v1, v2, v3));
}

/* ---- tiles: every output summed in the reference's order; each tile's lanes of the scale products
   and minimum terms are computed side by side in one vector, each lane its own chain ---------------- */

/* 2 weight rows x 4 activation columns (prompts). out[(c + j) * os + r + i]. xd / xsum: the
   activation blocks' d and s as floats, block b of column j at [b * xstride + j]. */
static inline __attribute__((always_inline)) void tile_2x4(int f, int nb, const char *w0, const char *w1,
                                                         const char *x0, size_t xrow, const float *xd,
                                                         const float *xsum, int xstride, float *out, size_t os) {
    const int ws = W_SIZE[f], xs = x_size(f), xq = x_qs(f);
    const char *x1 = x0 + xrow, *x2 = x1 + xrow, *x3 = x2 + xrow;
    __m256 acc[2][4];
    for (int i = 0; i < 2; i++)
        for (int j = 0; j < 4; j++) acc[i][j] = _mm256_setzero_ps();
    __m256 mins = _mm256_setzero_ps();   /* lane 4i + j: the minimum term of output (i, j) */
    for (int b = 0; b < nb; b++) {
        const char *a0 = w0 + (size_t)b * ws, *a1 = w1 + (size_t)b * ws;
        const size_t xo = (size_t)b * xs + xq;
        int32_t v0, v1;
        memcpy(&v0, a0, 4), memcpy(&v1, a1, 4);
        /* [d0 m0 d0 m0 d1 m1 d1 m1]: even lanes give the rows' d, odd lanes their m, four times each */
        const __m256 wdm = _mm256_cvtph_ps(_mm_setr_epi32(v0, v0, v1, v1));
        const __m256 xd4 = _mm256_broadcast_ps((const __m128 *)(xd + (size_t)b * xstride));
        const __m256 pv = _mm256_mul_ps(_mm256_moveldup_ps(wdm), xd4);
        const __m256 p0 = _mm256_permute2f128_ps(pv, pv, 0x00), p1 = _mm256_permute2f128_ps(pv, pv, 0x11);
        if (has_min(f))
            mins = _mm256_fmadd_ps(_mm256_movehdup_ps(wdm),
                                   _mm256_broadcast_ps((const __m128 *)(xsum + (size_t)b * xstride)), mins);
        const __m256i q0 = _mm256_loadu_si256((const __m256i *)(x0 + xo));
        const __m256i q1 = _mm256_loadu_si256((const __m256i *)(x1 + xo));
        const __m256i q2 = _mm256_loadu_si256((const __m256i *)(x2 + xo));
        const __m256i q3 = _mm256_loadu_si256((const __m256i *)(x3 + xo));
        const __m256i o0 = x_offset(f, q0), o1 = x_offset(f, q1), o2 = x_offset(f, q2), o3 = x_offset(f, q3);
        __m256i qw = w_bytes(f, a0);
        acc[0][0] = _mm256_fmadd_ps(_mm256_shuffle_ps(p0, p0, 0), w_dot(f, qw, q0, o0), acc[0][0]);
        acc[0][1] = _mm256_fmadd_ps(_mm256_shuffle_ps(p0, p0, 85), w_dot(f, qw, q1, o1), acc[0][1]);
        acc[0][2] = _mm256_fmadd_ps(_mm256_shuffle_ps(p0, p0, 170), w_dot(f, qw, q2, o2), acc[0][2]);
        acc[0][3] = _mm256_fmadd_ps(_mm256_shuffle_ps(p0, p0, 255), w_dot(f, qw, q3, o3), acc[0][3]);
        qw = w_bytes(f, a1);
        acc[1][0] = _mm256_fmadd_ps(_mm256_shuffle_ps(p1, p1, 0), w_dot(f, qw, q0, o0), acc[1][0]);
        acc[1][1] = _mm256_fmadd_ps(_mm256_shuffle_ps(p1, p1, 85), w_dot(f, qw, q1, o1), acc[1][1]);
        acc[1][2] = _mm256_fmadd_ps(_mm256_shuffle_ps(p1, p1, 170), w_dot(f, qw, q2, o2), acc[1][2]);
        acc[1][3] = _mm256_fmadd_ps(_mm256_shuffle_ps(p1, p1, 255), w_dot(f, qw, q3, o3), acc[1][3]);
    }
    float m[8];
    _mm256_storeu_ps(m, mins);
    for (int i = 0; i < 2; i++)
        for (int j = 0; j < 4; j++) out[(size_t)j * os + i] = hsum_ps(acc[i][j]) + (has_min(f) ? m[4 * i + j] : 0.0f);
}

/* 4 weight rows x 1 activation column (generation, and the edges of prompts), with the rows three
   tiles ahead prefetched: one column leaves the weights streaming from memory. */
static inline __attribute__((always_inline)) void tile_4x1(int f, int nb, const char *w0, size_t wrow,
                                                         const char *x0, float *out) {
    const int ws = W_SIZE[f], xs = x_size(f), xq = x_qs(f);
    const char *w1 = w0 + wrow, *w2 = w1 + wrow, *w3 = w2 + wrow;
    __m256 acc0 = _mm256_setzero_ps(), acc1 = acc0, acc2 = acc0, acc3 = acc0;
    __m128 mins = _mm_setzero_ps();   /* lane i: the minimum term of row i */
    /* the 4 rows are contiguous, and so are the tiles after them: the rows three tiles ahead are fetched
       as one steady stream, 4 blocks' bytes of it per block */
    const char *pf = w0 + 12 * wrow;
    const size_t step = 4 * (size_t)ws;
    for (int b = 0; b < nb; b++) {
        const size_t off = (size_t)b * ws;
        for (uintptr_t p = ((uintptr_t)(pf + b * step) + 63) & ~(uintptr_t)63; p < (uintptr_t)(pf + (b + 1) * step);
             p += 64)
            _mm_prefetch((const char *)p, _MM_HINT_T0);
        const char *y = x0 + (size_t)b * xs;
        const __m256 wdm = scales4(w0 + off, w1 + off, w2 + off, w3 + off);          /* d0 m0 d1 m1 .. */
        const __m128 wd = _mm256_castps256_ps128(_mm256_permutevar8x32_ps(wdm, _mm256_setr_epi32(0, 2, 4, 6, 0, 0, 0, 0)));
        uint32_t ydsv;
        memcpy(&ydsv, y, 4);
        const __m128 yds = _mm_cvtph_ps(_mm_cvtsi32_si128((int)ydsv));                /* d s - - */
        const __m128 p4 = _mm_mul_ps(wd, _mm_shuffle_ps(yds, yds, 0x00));
        const __m256 pv = _mm256_set_m128(p4, p4);
        if (has_min(f)) {
            const __m128 wm = _mm256_castps256_ps128(_mm256_permutevar8x32_ps(wdm, _mm256_setr_epi32(1, 3, 5, 7, 0, 0, 0, 0)));
            mins = _mm_fmadd_ps(wm, _mm_shuffle_ps(yds, yds, 0x55), mins);
        }
        const __m256i q = _mm256_loadu_si256((const __m256i *)(y + xq)), o = x_offset(f, q);
        acc0 = _mm256_fmadd_ps(_mm256_shuffle_ps(pv, pv, 0), w_dot(f, w_bytes(f, w0 + off), q, o), acc0);
        acc1 = _mm256_fmadd_ps(_mm256_shuffle_ps(pv, pv, 85), w_dot(f, w_bytes(f, w1 + off), q, o), acc1);
        acc2 = _mm256_fmadd_ps(_mm256_shuffle_ps(pv, pv, 170), w_dot(f, w_bytes(f, w2 + off), q, o), acc2);
        acc3 = _mm256_fmadd_ps(_mm256_shuffle_ps(pv, pv, 255), w_dot(f, w_bytes(f, w3 + off), q, o), acc3);
    }
    float m[4];
    _mm_storeu_ps(m, mins);
    out[0] = hsum_ps(acc0) + (has_min(f) ? m[0] : 0.0f);
    out[1] = hsum_ps(acc1) + (has_min(f) ? m[1] : 0.0f);
    out[2] = hsum_ps(acc2) + (has_min(f) ? m[2] : 0.0f);
    out[3] = hsum_ps(acc3) + (has_min(f) ? m[3] : 0.0f);
}

/* one output: the reference's dot product itself */
static inline __attribute__((always_inline)) float dot_1x1(int f, int nb, const char *w0, const char *x0) {
    const int ws = W_SIZE[f], xs = x_size(f), xq = x_qs(f);
    __m256 acc = _mm256_setzero_ps();
    float mins = 0.0f;
    for (int b = 0; b < nb; b++) {
        const char *a = w0 + (size_t)b * ws, *y = x0 + (size_t)b * xs;
        uint16_t h[2], g[2];
        memcpy(h, a, 4), memcpy(g, y, 4);
        if (has_min(f)) mins = fmaf(h2f(h[1]), h2f(g[1]), mins);
        const __m256i q = _mm256_loadu_si256((const __m256i *)(y + xq));
        acc = _mm256_fmadd_ps(_mm256_set1_ps(h2f(h[0]) * h2f(g[0])), w_dot(f, w_bytes(f, a), q, x_offset(f, q)), acc);
    }
    return hsum_ps(acc) + mins;
}

#define MAX_BLOCKS 512    /* rows of up to 16384 values take the tiled path */

static inline __attribute__((always_inline)) void mm_any(int f, int n, int nr, int nc, const char *w, size_t wrow,
                                                       const char *x, size_t xrow, float *out, size_t os) {
    const int nb = n / LP_QK, r2 = nr / 2 * 2, r4 = nr / 4 * 4, xs = x_size(f);
    int c4 = nc / 4 * 4;
    if (nb > MAX_BLOCKS) c4 = 0;
    /* rows in blocks whose weights stay in the L1 cache while 4 columns at a time pass over them */
    int rb = (int)(16384 / wrow) / 2 * 2;
    rb = rb < 2 ? 2 : rb;
    float xd[MAX_BLOCKS * 4], xsum[MAX_BLOCKS * 4];   /* one group of 4 columns' block scales */
    for (int r0 = 0; r0 < r2; r0 += rb) {
        const int r1 = r0 + rb < r2 ? r0 + rb : r2;
        for (int c = 0; c < c4; c += 4) {
            for (int b = 0; b < nb; b++)
                for (int j = 0; j < 4; j++) {
                    uint16_t h[2];
                    memcpy(h, x + (size_t)(c + j) * xrow + (size_t)b * xs, 4);
                    xd[4 * b + j] = h2f(h[0]);
                    xsum[4 * b + j] = h2f(h[1]);
                }
            for (int r = r0; r < r1; r += 2)
                tile_2x4(f, nb, w + (size_t)r * wrow, w + (size_t)(r + 1) * wrow, x + (size_t)c * xrow, xrow, xd,
                         xsum, 4, out + (size_t)c * os + r, os);
        }
    }
    for (int c = c4; c < nc; c++) {   /* the last columns: 4 rows at a time */
        for (int r = 0; r < r4; r += 4)
            tile_4x1(f, nb, w + (size_t)r * wrow, wrow, x + (size_t)c * xrow, out + (size_t)c * os + r);
        for (int r = r4; r < nr; r++) out[(size_t)c * os + r] = dot_1x1(f, nb, w + (size_t)r * wrow, x + (size_t)c * xrow);
    }
    if (r2 < nr)   /* an odd last row */
        for (int c = 0; c < c4; c++)
            out[(size_t)c * os + r2] = dot_1x1(f, nb, w + (size_t)r2 * wrow, x + (size_t)c * xrow);
}

#define DEFINE_MM(NAME, F)                                                                              \
    static void NAME(int n, int nr, int nc, const void *w, size_t wrow, const void *x, size_t xrow,     \
                     float *out, size_t os) {                                                             \
        mm_any(F, n, nr, nc, w, wrow, x, xrow, out, os);                                                  \
    }
DEFINE_MM(mm_q4_0, F_Q4_0)
DEFINE_MM(mm_q4_1, F_Q4_1)
DEFINE_MM(mm_q5_0, F_Q5_0)
DEFINE_MM(mm_q5_1, F_Q5_1)
DEFINE_MM(mm_q8_0, F_Q8_0)

/* ---- activation quantizers -------------------------------------------------------------------- */

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
        q8_block32(x, amax != 0.0f ? 127.f / amax : 0.0f, 0, y[i].qs);
    }
}

static void quant_q8_1(const float *x, void *vy, int64_t n) {
    lp_block_q8_1 *y = vy;
    for (int64_t i = 0; i < n / LP_QK; i++, x += LP_QK) {
        const float amax = block_amax(x), d = amax / 127.f;
        y[i].d = lp_fp32_to_fp16(d);
        const int sum = q8_block32(x, amax != 0.0f ? 127.f / amax : 0.0f, 0, y[i].qs);
        y[i].s = lp_fp32_to_fp16(d * (float)sum);
    }
}

/* ---- Q4_0, eight rows interleaved ---------------------------------------------------------------
 * A group of 8 rows stores, for each block: the 8 fp16 scales, then 4 chunks of 32 bytes; chunk k
 * holds bytes 4k..4k+3 of each row's 16 quant bytes, row r at bytes 4r..4r+3. The low nibbles of
 * chunk k are values 4k..4k+3 of the 8 rows, the high nibbles values 16+4k..16+4k+3: one int32 lane
 * per row. Each row's block dot is then an exact integer and is accumulated as the reference's
 * repacked Q4_0 kernels do: acc = fma(isum, d_w * d_x, acc), one lane per row. */

#define Q4X8_BLOCK (16 + 128)

static void pack_q4_0x8(const void *src, size_t src_row, void *dst, int64_t n, int64_t rows) {
    const int64_t nb = n / LP_QK;
    uint8_t *o = dst;
    for (int64_t g = 0; g + 8 <= rows; g += 8)
        for (int64_t b = 0; b < nb; b++, o += Q4X8_BLOCK) {
            for (int r = 0; r < 8; r++) {
                const lp_block_q4_0 *blk = (const lp_block_q4_0 *)((const char *)src + (size_t)(g + r) * src_row) + b;
                memcpy(o + 2 * r, &blk->d, 2);
                for (int k = 0; k < 4; k++) memcpy(o + 16 + 32 * k + 4 * r, blk->qs + 4 * k, 4);
            }
        }
}

/* 8 rows (a packed group) x NC columns; out[c * os + r]. yoff / yd: per column c and block b at
   [c * nb + b], the activation block's 8 * sum(q) and scale. */
static inline __attribute__((always_inline)) void tile_q4x8(int NC, int nb, const uint8_t *w, const char *x0,
                                                          size_t xrow, const int32_t *yoff, const float *yd,
                                                          float *out, size_t os, const char *pf,
                                                          const char *pf_end) {
    const __m256i m4 = _mm256_set1_epi8(0x0f), ones = _mm256_set1_epi16(1);
    __m256 acc[4];
    for (int c = 0; c < NC; c++) acc[c] = _mm256_setzero_ps();
    for (int b = 0; b < nb; b++, w += Q4X8_BLOCK) {
        if (pf) {   /* the next group, a block's bytes of it per block: one steady stream ahead */
            const char *lo = pf + (size_t)b * Q4X8_BLOCK, *hi = lo + Q4X8_BLOCK < pf_end ? lo + Q4X8_BLOCK : pf_end;
            for (uintptr_t p = ((uintptr_t)lo + 63) & ~(uintptr_t)63; p < (uintptr_t)hi; p += 64)
                _mm_prefetch((const char *)p, _MM_HINT_T0);
        }
        __m256i lo[4], hi[4];
        for (int k = 0; k < 4; k++) {
            const __m256i v = _mm256_loadu_si256((const __m256i *)(w + 16 + 32 * k));
            lo[k] = _mm256_and_si256(v, m4);
            hi[k] = _mm256_and_si256(_mm256_srli_epi16(v, 4), m4);
        }
        const __m256 dw = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)w));
        for (int c = 0; c < NC; c++) {
            const int32_t *yq = (const int32_t *)(x0 + (size_t)c * xrow + (size_t)b * sizeof(lp_block_q8_0) + 2);
            __m256i s16 = _mm256_maddubs_epi16(lo[0], _mm256_set1_epi32(yq[0]));
            s16 = _mm256_add_epi16(s16, _mm256_maddubs_epi16(lo[1], _mm256_set1_epi32(yq[1])));
            s16 = _mm256_add_epi16(s16, _mm256_maddubs_epi16(lo[2], _mm256_set1_epi32(yq[2])));
            s16 = _mm256_add_epi16(s16, _mm256_maddubs_epi16(lo[3], _mm256_set1_epi32(yq[3])));
            s16 = _mm256_add_epi16(s16, _mm256_maddubs_epi16(hi[0], _mm256_set1_epi32(yq[4])));
            s16 = _mm256_add_epi16(s16, _mm256_maddubs_epi16(hi[1], _mm256_set1_epi32(yq[5])));
            s16 = _mm256_add_epi16(s16, _mm256_maddubs_epi16(hi[2], _mm256_set1_epi32(yq[6])));
            s16 = _mm256_add_epi16(s16, _mm256_maddubs_epi16(hi[3], _mm256_set1_epi32(yq[7])));
            /* |each product pair| <= 2 * 15 * 127: eight fit int16; minus 8 * sum(y) makes q into q - 8 */
            const __m256i isum = _mm256_sub_epi32(_mm256_madd_epi16(s16, ones), _mm256_set1_epi32(yoff[c * nb + b]));
            acc[c] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum), _mm256_mul_ps(dw, _mm256_set1_ps(yd[c * nb + b])), acc[c]);
        }
    }
    for (int c = 0; c < NC; c++) _mm256_storeu_ps(out + (size_t)c * os, acc[c]);
}

static void mm_q4_0x8(int n, int nr, int nc, const void *w, size_t wgroup, const void *x, size_t xrow, float *out,
                      size_t os) {
    const int nb = n / LP_QK;
    int32_t yoff[4 * MAX_BLOCKS];
    float yd[4 * MAX_BLOCKS];
    for (int c0 = 0; c0 < nc; c0 += 4) {
        const int NC = nc - c0 < 4 ? nc - c0 : 4;
        for (int c = 0; c < NC; c++)
            for (int b = 0; b < nb; b++) {
                const lp_block_q8_0 *y = (const lp_block_q8_0 *)((const char *)x + (size_t)(c0 + c) * xrow) + b;
                const __m256i q = _mm256_loadu_si256((const __m256i *)y->qs);
                const __m256i s = _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_set1_epi8(1), q), _mm256_set1_epi16(1));
                __m128i s4 = _mm_add_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256(s, 1));
                s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, _MM_SHUFFLE(1, 0, 3, 2)));
                s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, _MM_SHUFFLE(2, 3, 0, 1)));
                yoff[c * nb + b] = 8 * _mm_cvtsi128_si32(s4);
                yd[c * nb + b] = h2f(y->d);
            }
        const char *xc = (const char *)x + (size_t)c0 * xrow;
        const char *end = (const char *)w + (size_t)(nr / 8) * wgroup;
        for (int g = 0; g < nr / 8; g++) {
            const uint8_t *wg = (const uint8_t *)w + (size_t)g * wgroup;
            float *o = out + (size_t)c0 * os + 8 * g;
            const char *pf = nc == 1 && g + 1 < nr / 8 ? (const char *)wg + wgroup : NULL;   /* decode streams */
            if (NC == 4) tile_q4x8(4, nb, wg, xc, xrow, yoff, yd, o, os, NULL, NULL);
            else if (NC == 3) tile_q4x8(3, nb, wg, xc, xrow, yoff, yd, o, os, NULL, NULL);
            else if (NC == 2) tile_q4x8(2, nb, wg, xc, xrow, yoff, yd, o, os, NULL, NULL);
            else tile_q4x8(1, nb, wg, xc, xrow, yoff, yd, o, os, pf, end);
        }
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
    m->pack_rows[LP_TYPE_Q4_0] = 8;
    m->pack[LP_TYPE_Q4_0] = pack_q4_0x8;
    m->mm_packed[LP_TYPE_Q4_0] = mm_q4_0x8;
}
#else
void lp_engine_matmul_avx2(lp_engine_matmul *m) { (void)m; }
#endif
