/* AVX2 matrix products for K-quant weights (Q4_K, Q5_K, Q6_K) repacked at load time.
 *
 * Layout: groups of GROUP rows with their blocks interleaved (block i of the group's row r at i * GROUP + r),
 * the same bytes as the rows they hold. A single-column product (decode) then reads the weights as one
 * sequential stream, which the hardware prefetcher follows, where GROUP separate rows read side by side
 * are GROUP short streams it does not; on top of that, while a group is summed, the group PF_GROUPS ahead is
 * prefetched, one block step of it per block step.
 *
 * Tiles: R weight rows x C activation columns. One column: a group at once for Q4_K and Q6_K, sharing the
 * activation's loads, block-sum pairs and Q6_K's offset products between the rows; a row at a time for Q5_K.
 * Several columns: a row x COLS columns, the row's quants and scales unpacked once for them. Each output is
 * bitwise what the format's own vec_dot (quants_kquants_avx2.c) gives for that row and column: the same int32
 * lanes per block, the same fused multiply-adds per lane in block order, the same horizontal sums.
 */
#include "lp_core.h"
#include "lp_engine.h"

#if defined(__x86_64__) || defined(__i386__)
#pragma GCC target("avx2,fma,f16c")
#include <immintrin.h>
#include "lp_avx2.h"
#include <math.h>
#include <string.h>

#include "lp_kquants.h"

#define GROUP 4       /* rows per packed group (the decode tile) */
#define COLS 4        /* activation columns per tile when there are several */
#define PF_GROUPS 1   /* prefetch distance, in groups */
_Static_assert(GROUP == 4, "q4_decode is written for 4 rows");

#define INLINE static inline __attribute__((always_inline))

/* What a tile prefetches: at block step i, the lines starting in [pf + i * step, pf + (i + 1) * step) below
 * end. pf NULL: nothing. */
typedef struct {
    const char *pf, *end;
    size_t step;
} ahead;

INLINE void prefetch_step(const ahead *a, int i) {
    if (!a->pf) return;
    const char *lo = a->pf + (size_t)i * a->step, *hi = lo + a->step;
    if (hi > a->end) hi = a->end;
    for (uintptr_t p = ((uintptr_t)lo + 63) & ~(uintptr_t)63; p < (uintptr_t)hi; p += 64) __builtin_prefetch((const void *)p);
}

/* Where a tile reads: block i of weight row r at w + r * rs + i * bs; activation column c at x + c * xs;
 * out[c * os + r]. */
typedef struct {
    const char *w;
    size_t rs, bs;
    const char *x;
    size_t xs;
    float *out;
    size_t os;
} tile_at;

static inline const lp_block_q8_K *act(const tile_at *t, int c, int i) {
    return (const lp_block_q8_K *)(t->x + (size_t)c * t->xs) + i;
}

/* ---- Q4_K and Q5_K ----------------------------------------------------------------------------- */

/* R rows x C columns of Q4_K, or Q5_K when has_qh: per block, sumi = Σ_j scale_j * (q_j . y_j) in 8 int32
 * lanes into acc with one fma; the mins' 4 lanes into accm with one fma (Q4_K) or summed to one int and
 * added with fmaf (Q5_K) */
INLINE void k4_tile(const int R, const int C, int nb, const int has_qh, const tile_at *t, const ahead *pf) {
    const __m256i m4 = _mm256_set1_epi8(0xF), m1 = _mm256_set1_epi8(1);
    const int qs_at = has_qh ? 48 : 16;   /* d, dmin, 12 scale bytes; then Q5_K's qh; then qs */
    __m256 acc[GROUP][COLS];
    /* Q4_K's mins lanes, two columns' to a register: accm[r][c / 2] lanes 4 (c % 2).. of column c */
    __m256 accm[GROUP][(COLS + 1) / 2];
    float summs[GROUP][COLS];
    for (int r = 0; r < R; r++)
        for (int c = 0; c < C; c++) {
            acc[r][c] = _mm256_setzero_ps();
            accm[r][c / 2] = _mm256_setzero_ps();
            summs[r][c] = 0;
        }
    for (int i = 0; i < nb; i++) {
        prefetch_step(pf, i);
        const uint8_t *xb[GROUP];
        __m256i sc[GROUP], sumi[GROUP][COLS];
        __m256i bpairs[(COLS + 1) / 2];   /* column c's in half c % 2 */
        for (int c = 0; c < C; c += 2) {
            const __m256i b0 = loadu(act(t, c, i)->bsums);
            const __m256i b1 = c + 1 < C ? loadu(act(t, c + 1, i)->bsums) : b0;
            bpairs[c / 2] = _mm256_hadd_epi16(_mm256_permute2x128_si256(b0, b1, 0x20), _mm256_permute2x128_si256(b0, b1, 0x31));
        }
        for (int r = 0; r < R; r++) {
            xb[r] = (const uint8_t *)t->w + (size_t)r * t->rs + (size_t)i * t->bs;
            const __m256i sm16 = _mm256_cvtepu8_epi16(k4_scales_mins(xb[r] + 4));   /* [8 scales | 8 mins] */
            sc[r] = _mm256_permute2x128_si256(sm16, sm16, 0x00);
            const __m256i mins = _mm256_permute2x128_si256(sm16, sm16, 0x11);
            const float mx = h2f(((const uint16_t *)xb[r])[1]);
            for (int c = 0; c < C; c += 2) {
                const __m256i pm = _mm256_madd_epi16(mins, bpairs[c / 2]);
                const float dmin0 = -act(t, c, i)->d * mx, dmin1 = c + 1 < C ? -act(t, c + 1, i)->d * mx : 0.0f;
                if (has_qh) {
                    summs[r][c] = fmaf(dmin0, (float)hsum_epi32x4(_mm256_castsi256_si128(pm)), summs[r][c]);
                    if (c + 1 < C)
                        summs[r][c + 1] = fmaf(dmin1, (float)hsum_epi32x4(_mm256_extracti128_si256(pm, 1)), summs[r][c + 1]);
                } else {
                    accm[r][c / 2] = _mm256_fmadd_ps(_mm256_set_m128(_mm_set1_ps(dmin1), _mm_set1_ps(dmin0)),
                                                     _mm256_cvtepi32_ps(pm), accm[r][c / 2]);
                }
            }
            for (int c = 0; c < C; c++) sumi[r][c] = _mm256_setzero_si256();
        }
        for (int k = 0; k < 4; k++) {   /* sub-blocks 2k (low nibbles) and 2k + 1 (high nibbles) */
            __m256i y0[COLS], y1[COLS];
            for (int c = 0; c < C; c++) {
                y0[c] = loadu(act(t, c, i)->qs + 64 * k);
                y1[c] = loadu(act(t, c, i)->qs + 64 * k + 32);
            }
            const __m256i pick0 = _mm256_set1_epi16((short)(0x0101 * 4 * k + 0x0100));         /* int16 2k */
            const __m256i pick1 = _mm256_set1_epi16((short)(0x0101 * (4 * k + 2) + 0x0100));   /* int16 2k + 1 */
            for (int r = 0; r < R; r++) {
                const __m256i bits = loadu(xb[r] + qs_at + 32 * k);
                __m256i ql = _mm256_and_si256(bits, m4), qh = _mm256_and_si256(_mm256_srli_epi16(bits, 4), m4);
                if (has_qh) {
                    const __m256i hb = loadu(xb[r] + 16);
                    ql = _mm256_or_si256(ql, _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(hb, 2 * k), m1), 4));
                    qh = _mm256_or_si256(qh,
                                         _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(hb, 2 * k + 1), m1), 4));
                }
                const __m256i s0 = _mm256_shuffle_epi8(sc[r], pick0), s1 = _mm256_shuffle_epi8(sc[r], pick1);
                for (int c = 0; c < C; c++) {
                    const __m256i p0 = _mm256_madd_epi16(_mm256_maddubs_epi16(ql, y0[c]), s0);
                    const __m256i p1 = _mm256_madd_epi16(_mm256_maddubs_epi16(qh, y1[c]), s1);
                    sumi[r][c] = _mm256_add_epi32(sumi[r][c], _mm256_add_epi32(p0, p1));
                }
            }
        }
        for (int r = 0; r < R; r++) {
            const float dx = h2f(((const uint16_t *)xb[r])[0]);
            for (int c = 0; c < C; c++)
                acc[r][c] = _mm256_fmadd_ps(_mm256_set1_ps(act(t, c, i)->d * dx), _mm256_cvtepi32_ps(sumi[r][c]),
                                            acc[r][c]);
        }
    }
    for (int r = 0; r < R; r++)
        for (int c = 0; c < C; c++)
            t->out[(size_t)c * t->os + r] = hsum_ps(acc[r][c]) + (has_qh ? summs[r][c]
                                                                  : hsum_ps128(c % 2 ? _mm256_extractf128_ps(accm[r][c / 2], 1)
                                                                                     : _mm256_castps256_ps128(accm[r][c / 2])));
}

/* k4_scales_mins of two blocks at once: [8 scales, 8 mins of the block at lo | those of the block at hi] */
static inline __m256i k4_scales_mins2(const uint8_t *lo, const uint8_t *hi) {
    const __m256i v = _mm256_loadu2_m128i((const __m128i *)hi, (const __m128i *)lo);
    __m256i a = _mm256_shuffle_epi32(v, _MM_SHUFFLE(2, 1, 2, 0));
    a = _mm256_and_si256(_mm256_srlv_epi32(a, _mm256_setr_epi32(0, 0, 0, 4, 0, 0, 0, 4)),
                         _mm256_setr_epi32(0x3f3f3f3f, 0x0f0f0f0f, 0x3f3f3f3f, 0x0f0f0f0f, 0x3f3f3f3f, 0x0f0f0f0f,
                                           0x3f3f3f3f, 0x0f0f0f0f));
    const __m256i b = _mm256_srli_epi32(_mm256_shuffle_epi32(v, _MM_SHUFFLE(1, 1, 0, 0)), 2);
    return _mm256_or_si256(a, _mm256_and_si256(b, _mm256_setr_epi32(0, 0x30303030, 0, 0x30303030, 0, 0x30303030, 0,
                                                                     0x30303030)));
}

/* k4_tile(GROUP = 4, 1, ...) of Q4_K, the decode tile: the same sums, with the rows' scales and mins decoded two
 * at a time, the mins' lanes of two rows in one register, and the 4 rows' block scales converted together */
INLINE void q4_decode(int nb, const tile_at *t, const ahead *pf) {
    const __m256i m4 = _mm256_set1_epi8(0xF), zero = _mm256_setzero_si256();
    __m256 acc[4], accm[2];   /* accm[p]: [the mins' 4 lanes of row 2p | of row 2p + 1] */
    for (int r = 0; r < 4; r++) acc[r] = _mm256_setzero_ps();
    accm[0] = accm[1] = _mm256_setzero_ps();
    for (int i = 0; i < nb; i++) {
        prefetch_step(pf, i);
        const lp_block_q8_K *y = act(t, 0, i);
        const uint8_t *xb[4];
        uint32_t dm[4];
        for (int r = 0; r < 4; r++) {
            xb[r] = (const uint8_t *)t->w + (size_t)r * t->rs + (size_t)i * t->bs;
            memcpy(&dm[r], xb[r], 4);
        }
        /* [y.d * d_r, -y.d * dmin_r] for r = 0..3: the products the row kernel forms one by one */
        const __m256 f = _mm256_mul_ps(_mm256_cvtph_ps(_mm_setr_epi32((int)dm[0], (int)dm[1], (int)dm[2], (int)dm[3])),
                                       _mm256_setr_ps(y->d, -y->d, y->d, -y->d, y->d, -y->d, y->d, -y->d));
        const __m256i bsum = loadu(y->bsums);
        const __m128i bp = _mm_hadd_epi16(_mm256_castsi256_si128(bsum), _mm256_extracti128_si256(bsum, 1));
        const __m256i bp2 = _mm256_set_m128i(bp, bp);
        __m256i sc[4], sumi[4];
        for (int p = 0; p < 2; p++) {
            const __m256i sm = k4_scales_mins2(xb[2 * p] + 4, xb[2 * p + 1] + 4);
            const __m256i s16 = _mm256_unpacklo_epi8(sm, zero), pm = _mm256_madd_epi16(_mm256_unpackhi_epi8(sm, zero), bp2);
            sc[2 * p] = _mm256_permute2x128_si256(s16, s16, 0x00);
            sc[2 * p + 1] = _mm256_permute2x128_si256(s16, s16, 0x11);
            const __m256 dmin = _mm256_permutevar8x32_ps(f, _mm256_setr_epi32(4 * p + 1, 4 * p + 1, 4 * p + 1, 4 * p + 1,
                                                                             4 * p + 3, 4 * p + 3, 4 * p + 3, 4 * p + 3));
            accm[p] = _mm256_fmadd_ps(dmin, _mm256_cvtepi32_ps(pm), accm[p]);
        }
        for (int r = 0; r < 4; r++) sumi[r] = _mm256_setzero_si256();
        for (int k = 0; k < 4; k++) {
            const __m256i y0 = loadu(y->qs + 64 * k), y1 = loadu(y->qs + 64 * k + 32);
            const __m256i pick0 = _mm256_set1_epi16((short)(0x0101 * 4 * k + 0x0100));
            const __m256i pick1 = _mm256_set1_epi16((short)(0x0101 * (4 * k + 2) + 0x0100));
            for (int r = 0; r < 4; r++) {
                const __m256i bits = loadu(xb[r] + 16 + 32 * k);
                const __m256i ql = _mm256_and_si256(bits, m4), qh = _mm256_and_si256(_mm256_srli_epi16(bits, 4), m4);
                const __m256i p0 = _mm256_madd_epi16(_mm256_maddubs_epi16(ql, y0), _mm256_shuffle_epi8(sc[r], pick0));
                const __m256i p1 = _mm256_madd_epi16(_mm256_maddubs_epi16(qh, y1), _mm256_shuffle_epi8(sc[r], pick1));
                sumi[r] = _mm256_add_epi32(sumi[r], _mm256_add_epi32(p0, p1));
            }
        }
        for (int r = 0; r < 4; r++)
            acc[r] = _mm256_fmadd_ps(_mm256_permutevar8x32_ps(f, _mm256_set1_epi32(2 * r)), _mm256_cvtepi32_ps(sumi[r]),
                                     acc[r]);
    }
    for (int r = 0; r < 4; r++) {
        const __m128 mins = r % 2 ? _mm256_extractf128_ps(accm[r / 2], 1) : _mm256_castps256_ps128(accm[r / 2]);
        t->out[r] = hsum_ps(acc[r]) + hsum_ps128(mins);
    }
}

/* ---- Q6_K ---------------------------------------------------------------------------------------- */

/* R rows x C columns of Q6_K: per block, sumi = Σ_part scales . ((q . y) - (32 . y)) in 8 int32 lanes into
 * acc with one fma */
INLINE void q6_tile(const int R, const int C, int nb, const tile_at *t, const ahead *pf) {
    const __m256i m4 = _mm256_set1_epi8(0xF), m30 = _mm256_set1_epi8(0x30), m32 = _mm256_set1_epi8(32);
    __m256 acc[GROUP][COLS];
    for (int r = 0; r < R; r++)
        for (int c = 0; c < C; c++) acc[r][c] = _mm256_setzero_ps();
    for (int i = 0; i < nb; i++) {
        prefetch_step(pf, i);
        const lp_block_q6_K *xb[GROUP];
        __m256i sc16[GROUP], sumi[GROUP][COLS];
        for (int r = 0; r < R; r++) {
            xb[r] = (const lp_block_q6_K *)(t->w + (size_t)r * t->rs + (size_t)i * t->bs);
            sc16[r] = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)xb[r]->scales));
            for (int c = 0; c < C; c++) sumi[r][c] = _mm256_setzero_si256();
        }
        for (int h = 0; h < 2; h++) {
            /* parts p and p + 2 of half h come from the same 32 bytes of ql; their high bits are bits 2p, 2p + 1
             * and 2p + 4, 2p + 5 of qh */
            for (int p = 0; p < 2; p++) {
                for (int r = 0; r < R; r++) {
                    const __m256i half = h ? _mm256_permute2x128_si256(sc16[r], sc16[r], 0x11)
                                           : _mm256_permute2x128_si256(sc16[r], sc16[r], 0x00);
                    const __m256i sa = _mm256_shuffle_epi8(half, part_pick(p));
                    const __m256i sb = _mm256_shuffle_epi8(half, part_pick(p + 2));
                    const __m256i l = loadu(xb[r]->ql + 64 * h + 32 * p), hb = loadu(xb[r]->qh + 32 * h);
                    const __m256i ha = p ? _mm256_slli_epi16(hb, 2) : _mm256_slli_epi16(hb, 4);
                    const __m256i hc = p ? _mm256_srli_epi16(hb, 2) : hb;
                    const __m256i qa = _mm256_or_si256(_mm256_and_si256(l, m4), _mm256_and_si256(ha, m30));
                    const __m256i qb = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l, 4), m4),
                                                       _mm256_and_si256(hc, m30));
                    for (int c = 0; c < C; c++) {   /* the activation's bytes and offset products formed per row:
                                                       prompts take one row at a time, so nothing is shared */
                        const __m256i va = loadu(act(t, c, i)->qs + 128 * h + 32 * p);
                        const __m256i vb = loadu(act(t, c, i)->qs + 128 * h + 32 * (p + 2));
                        const __m256i pa = _mm256_sub_epi16(_mm256_maddubs_epi16(qa, va), _mm256_maddubs_epi16(m32, va));
                        const __m256i pb = _mm256_sub_epi16(_mm256_maddubs_epi16(qb, vb), _mm256_maddubs_epi16(m32, vb));
                        sumi[r][c] = _mm256_add_epi32(sumi[r][c], _mm256_madd_epi16(pa, sa));
                        sumi[r][c] = _mm256_add_epi32(sumi[r][c], _mm256_madd_epi16(pb, sb));
                    }
                }
            }
        }
        for (int r = 0; r < R; r++) {
            const float dx = h2f(xb[r]->d);
            for (int c = 0; c < C; c++)
                acc[r][c] = _mm256_fmadd_ps(_mm256_set1_ps(act(t, c, i)->d * dx), _mm256_cvtepi32_ps(sumi[r][c]),
                                            acc[r][c]);
        }
    }
    for (int r = 0; r < R; r++)
        for (int c = 0; c < C; c++) t->out[(size_t)c * t->os + r] = hsum_ps(acc[r][c]);
}

/* q6_tile(GROUP = 4, 1, ...), the decode tile: the activation's offset products formed once per block, then a
 * row at a time as the row kernel goes (each half's 4 parts unpacked together), the rows' block scales converted
 * together */
INLINE void q6_decode(int nb, const tile_at *t, const ahead *pf) {
    const __m256i m4 = _mm256_set1_epi8(0xF), m30 = _mm256_set1_epi8(0x30), m32 = _mm256_set1_epi8(32);
    __m256 acc[4];
    for (int r = 0; r < 4; r++) acc[r] = _mm256_setzero_ps();
    for (int i = 0; i < nb; i++) {
        prefetch_step(pf, i);
        const lp_block_q8_K *y = act(t, 0, i);
        __m256i off[8];   /* 32 . y of each part */
        for (int p = 0; p < 8; p++) off[p] = _mm256_maddubs_epi16(m32, loadu(y->qs + 32 * p));
        const lp_block_q6_K *xb[4];
        uint16_t dh[4];
        for (int r = 0; r < 4; r++) {
            xb[r] = (const lp_block_q6_K *)(t->w + (size_t)r * t->rs + (size_t)i * t->bs);
            dh[r] = xb[r]->d;
        }
        /* y.d * d_r for r = 0..3 */
        const __m128 d = _mm_mul_ps(_mm_cvtph_ps(_mm_loadl_epi64((const __m128i *)dh)), _mm_set1_ps(y->d));
        for (int r = 0; r < 4; r++) {
            const __m256i sc16 = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)xb[r]->scales));
            __m256i sumi = _mm256_setzero_si256();
            for (int h = 0; h < 2; h++) {
                const __m256i half = h ? _mm256_permute2x128_si256(sc16, sc16, 0x11)
                                       : _mm256_permute2x128_si256(sc16, sc16, 0x00);
                const __m256i l0 = loadu(xb[r]->ql + 64 * h), l1 = loadu(xb[r]->ql + 64 * h + 32);
                const __m256i hb = loadu(xb[r]->qh + 32 * h);
                const __m256i q[4] = {
                    _mm256_or_si256(_mm256_and_si256(l0, m4), _mm256_and_si256(_mm256_slli_epi16(hb, 4), m30)),
                    _mm256_or_si256(_mm256_and_si256(l1, m4), _mm256_and_si256(_mm256_slli_epi16(hb, 2), m30)),
                    _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l0, 4), m4), _mm256_and_si256(hb, m30)),
                    _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l1, 4), m4),
                                    _mm256_and_si256(_mm256_srli_epi16(hb, 2), m30))};
                for (int p = 0; p < 4; p++) {
                    const __m256i v = loadu(y->qs + 128 * h + 32 * p);
                    const __m256i prod = _mm256_sub_epi16(_mm256_maddubs_epi16(q[p], v), off[4 * h + p]);
                    sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(prod, _mm256_shuffle_epi8(half, part_pick(p))));
                }
            }
            acc[r] = _mm256_fmadd_ps(_mm256_broadcastss_ps(_mm_permutevar_ps(d, _mm_set1_epi32(r))),
                                     _mm256_cvtepi32_ps(sumi), acc[r]);
        }
    }
    for (int r = 0; r < 4; r++) t->out[r] = hsum_ps(acc[r]);
}

/* ---- packing and the products ---------------------------------------------------------------------- */

enum { K_Q4, K_Q5, K_Q6 };
static const size_t BLOCK[] = {sizeof(lp_block_q4_K), sizeof(lp_block_q5_K), sizeof(lp_block_q6_K)};

/* rows [0, rows / GROUP * GROUP) of src into groups of GROUP rows, block i of the group's row r at i * GROUP + r */
static void pack_groups(const void *src, size_t src_row, void *dst, int64_t n, int64_t rows) {
    const int64_t nb = n / LP_QK_K;
    const size_t bsz = src_row / (size_t)nb;
    char *o = dst;
    for (int64_t g = 0; g + GROUP <= rows; g += GROUP)
        for (int64_t i = 0; i < nb; i++)
            for (int r = 0; r < GROUP; r++, o += bsz) memcpy(o, (const char *)src + (size_t)(g + r) * src_row + (size_t)i * bsz, bsz);
}

INLINE void tile(const int kind, const int R, const int C, int nb, const tile_at *t, const ahead *pf) {
    if (kind == K_Q6) q6_tile(R, C, nb, t, pf);
    else k4_tile(R, C, nb, kind == K_Q5, t, pf);
}

/* a group x 1 column */
INLINE void decode(const int kind, int nb, const tile_at *t, const ahead *pf) {
    if (kind == K_Q4) {
        q4_decode(nb, t, pf);
    } else if (kind == K_Q6) {
        q6_decode(nb, t, pf);
    } else {   /* Q5_K: a row at a time (4 rows' fifth bits leave too few registers, and measure slower) */
        const ahead none = {NULL, NULL, 0};
        for (int r = 0; r < GROUP; r++) {
            tile_at u = *t;
            u.w += (size_t)r * t->rs;
            u.out += r;
            k4_tile(1, 1, nb, 1, &u, r ? &none : pf);
        }
    }
}

/* the engine's mm_packed: w at a group, wgroup bytes per group, nr a multiple of GROUP */
INLINE void mm_groups(const int kind, int n, int nr, int nc, const void *w, size_t wgroup, const void *x,
                      size_t x_row, float *out, size_t os) {
    const int nb = n / LP_QK_K, ng = nr / GROUP;
    const size_t bsz = BLOCK[kind];
    const char *wg = w, *end = wg + (size_t)ng * wgroup;
    if (nc == 1) {
        for (int g = 0; g < ng; g++) {
            const char *t0 = wg + (size_t)g * wgroup, *pf = t0 + (size_t)PF_GROUPS * wgroup;
            const tile_at t = {t0, bsz, GROUP * bsz, x, x_row, out + (size_t)g * GROUP, os};
            const ahead a = {pf < end ? pf : NULL, end, GROUP * bsz};
            decode(kind, nb, &t, &a);
        }
        return;
    }
    /* COLS columns at a time, each weight row's quants and scales unpacked once for them */
    const ahead none = {NULL, NULL, 0};
    for (int c0 = 0; c0 < nc; c0 += COLS) {
        const int C = nc - c0 < COLS ? nc - c0 : COLS;
        for (int g = 0; g < ng; g++)
            for (int r = 0; r < GROUP; r++) {
                const tile_at t = {wg + (size_t)g * wgroup + (size_t)r * bsz, bsz, GROUP * bsz,
                                   (const char *)x + (size_t)c0 * x_row, x_row, out + (size_t)c0 * os + g * GROUP + r, os};
                if (C == 4) tile(kind, 1, 4, nb, &t, &none);
                else if (C == 3) tile(kind, 1, 3, nb, &t, &none);
                else if (C == 2) tile(kind, 1, 2, nb, &t, &none);
                else tile(kind, 1, 1, nb, &t, &none);
            }
    }
}

static void mm_q4_K(int n, int nr, int nc, const void *w, size_t wg, const void *x, size_t xr, float *out, size_t os) {
    mm_groups(K_Q4, n, nr, nc, w, wg, x, xr, out, os);
}

static void mm_q5_K(int n, int nr, int nc, const void *w, size_t wg, const void *x, size_t xr, float *out, size_t os) {
    mm_groups(K_Q5, n, nr, nc, w, wg, x, xr, out, os);
}

static void mm_q6_K(int n, int nr, int nc, const void *w, size_t wg, const void *x, size_t xr, float *out, size_t os) {
    mm_groups(K_Q6, n, nr, nc, w, wg, x, xr, out, os);
}

void lp_engine_matmul_kquants_avx2(lp_engine_matmul *m) {
    const int types[] = {LP_TYPE_Q4_K, LP_TYPE_Q5_K, LP_TYPE_Q6_K};
    const lp_matmul_fn fns[] = {mm_q4_K, mm_q5_K, mm_q6_K};
    for (int k = 0; k < 3; k++) {
        m->pack_rows[types[k]] = GROUP;
        m->pack[types[k]] = pack_groups;
        m->mm_packed[types[k]] = fns[k];
    }
}
#else
void lp_engine_matmul_kquants_avx2(lp_engine_matmul *m) { (void)m; }
#endif
