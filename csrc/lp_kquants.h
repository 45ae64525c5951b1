/* K-quant super-block layouts (GGUF types Q2_K..Q6_K and the Q8_K activation type).
 *
 * Every block covers LP_QK_K = 256 values; the byte layouts are the GGUF ones, so rows can be read
 * from and written to files as they are. fp16 fields are stored as raw uint16_t bits.
 */
#ifndef LP_KQUANTS_H
#define LP_KQUANTS_H

#include <stdint.h>

#include "lp_core.h"

#define LP_QK_K 256
#define LP_K_SCALE_SIZE 12

/* x = d * (scales[j] & 15) * q - dmin * (scales[j] >> 4), 16 sub-blocks of 16, q in 0..3 */
typedef struct {
    uint8_t scales[LP_QK_K / 16];   /* low nibble: scale, high nibble: min */
    uint8_t qs[LP_QK_K / 4];        /* 2-bit quants, 4 per byte (packed as quants_kquants_quantize.c does) */
    uint16_t d;                     /* fp16 super-scale of the scales */
    uint16_t dmin;                  /* fp16 super-scale of the mins */
} lp_block_q2_K;
_Static_assert(sizeof(lp_block_q2_K) == 84, "lp_block_q2_K must be 84 bytes");

/* x = d * (s[j] - 32) * (q - 4), 16 sub-blocks of 16, q in 0..7 (2 low bits in qs, high bit in hmask) */
typedef struct {
    uint8_t hmask[LP_QK_K / 8];
    uint8_t qs[LP_QK_K / 4];
    uint8_t scales[12];             /* 16 6-bit scales */
    uint16_t d;
} lp_block_q3_K;
_Static_assert(sizeof(lp_block_q3_K) == 110, "lp_block_q3_K must be 110 bytes");

/* x = d * sc[j] * q - dmin * m[j], 8 sub-blocks of 32, q in 0..15, 6-bit sc and m */
typedef struct {
    uint16_t d;
    uint16_t dmin;
    uint8_t scales[LP_K_SCALE_SIZE];
    uint8_t qs[LP_QK_K / 2];
} lp_block_q4_K;
_Static_assert(sizeof(lp_block_q4_K) == 144, "lp_block_q4_K must be 144 bytes");

/* as Q4_K with a fifth bit per value in qh, q in 0..31 */
typedef struct {
    uint16_t d;
    uint16_t dmin;
    uint8_t scales[LP_K_SCALE_SIZE];
    uint8_t qh[LP_QK_K / 8];
    uint8_t qs[LP_QK_K / 2];
} lp_block_q5_K;
_Static_assert(sizeof(lp_block_q5_K) == 176, "lp_block_q5_K must be 176 bytes");

/* x = d * scales[j] * (q - 32), 16 sub-blocks of 16, q in 0..63 (4 low bits in ql, 2 high in qh) */
typedef struct {
    uint8_t ql[LP_QK_K / 2];
    uint8_t qh[LP_QK_K / 4];
    int8_t scales[LP_QK_K / 16];
    uint16_t d;
} lp_block_q6_K;
_Static_assert(sizeof(lp_block_q6_K) == 210, "lp_block_q6_K must be 210 bytes");

/* activations: x = d * qs, with the sums of each 16 quants precomputed for the min terms */
typedef struct {
    float d;
    int8_t qs[LP_QK_K];
    int16_t bsums[LP_QK_K / 16];
} lp_block_q8_K;
_Static_assert(sizeof(lp_block_q8_K) == 292, "lp_block_q8_K must be 292 bytes");

/* The 6-bit scale j (0..7) and min j of a Q4_K / Q5_K block, unpacked from its 12 scale bytes. */
static inline void lp_k4_scale_min(int j, const uint8_t *q, uint8_t *sc, uint8_t *m) {
    if (j < 4) {
        *sc = q[j] & 63;
        *m = q[j + 4] & 63;
    } else {
        *sc = (uint8_t)((q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4));
        *m = (uint8_t)((q[j + 4] >> 4) | ((q[j] >> 6) << 4));
    }
}

/* All 8 scales then all 8 mins of a Q4_K / Q5_K block, one byte each (out[0..7] scales, out[8..15] mins). */
static inline void lp_k4_unpack_scales(const uint8_t *q, uint8_t out[16]) {
    for (int j = 0; j < 8; j++) lp_k4_scale_min(j, q, &out[j], &out[8 + j]);
}

/* The 16 signed scales (-32..31) of a Q3_K block. */
static inline void lp_q3_unpack_scales(const uint8_t *q, int8_t out[16]) {
    for (int j = 0; j < 16; j++) {
        int lo = j < 8 ? q[j] & 0xF : q[j - 8] >> 4;
        int hi = (q[8 + j % 4] >> (2 * (j / 4))) & 3;
        out[j] = (int8_t)((lo | (hi << 4)) - 32);
    }
}

/* The scalar reference quantizers (quants_kquants_quantize.c): the bytes the reference writes. */
void lp_quantize_row_q2_K_ref(const float *x, void *y, int64_t n);
void lp_quantize_row_q3_K_ref(const float *x, void *y, int64_t n);
void lp_quantize_row_q4_K_ref(const float *x, void *y, int64_t n);
void lp_quantize_row_q5_K_ref(const float *x, void *y, int64_t n);
void lp_quantize_row_q6_K_ref(const float *x, void *y, int64_t n);
void lp_quantize_row_q8_K_ref(const float *x, void *y, int64_t n);

/* The second half of each reference quantizer, shared by the scalar and SIMD versions (which differ only
 * in how they fit the sub-blocks): from the per-sub-block fits (scales, mins, quants L as the fits left
 * them) of the 256 values x to the finished block. L is overwritten with the final quants. */
void lp_q2_K_finish(const float *x, const float *scales, const float *mins, uint8_t *L, lp_block_q2_K *y);
void lp_q3_K_finish(const float *x, const float *scales, int8_t *L, lp_block_q3_K *y);
void lp_q4_K_finish(const float *x, const float *scales, const float *mins, uint8_t *L, lp_block_q4_K *y);
void lp_q5_K_finish(const float *x, const float *scales, const float *mins, uint8_t *L, lp_block_q5_K *y);
void lp_q6_K_finish(const float *x, const float *scales, int8_t *L, lp_block_q6_K *y);

/* Parts of the AVX2 kernels registered by lp_register_kquants_avx2: the weight quantizers (same bytes as the
 * reference; quants_kquants_avx2_fit.c) and the Q4_K / Q5_K kernels (quants_kquants_avx2_k4.c). */
void lp_register_kquants_avx2_quantizers(lp_type_traits *t);
void lp_register_kquants_avx2_k4(lp_type_traits *t);

/* ---- the SIMD files' multi-row dots (vec_dot_rows) ---- */

/* Activation row j of y, rows by bytes apart */
static inline const lp_block_q8_K *lp_q8_K_row(const void *y, size_t by, int j) {
    return (const lp_block_q8_K *)((const char *)y + (size_t)j * by);
}

/* A weight row x against LP_ROWS4 activation rows: s[t * bs] for t < 4, each bitwise what vec_dot gives */
#define LP_ROWS4 4
typedef void (*lp_rows4_fn)(int n, const void *x, float *s, size_t bs, const void *y, size_t by);

/* vec_dot_rows from a 4-row kernel and vec_dot: the rows 4 at a time, the last nrc % 4 one at a time */
static inline void lp_vec_dot_rows_by4(lp_rows4_fn rows4, lp_vec_dot_fn dot, int n, int nrc, float *s, size_t bs,
                                       const void *x, const void *y, size_t by) {
    int j = 0;
    for (; j + LP_ROWS4 <= nrc; j += LP_ROWS4) rows4(n, x, s + j * bs, bs, lp_q8_K_row(y, by, j), by);
    for (; j < nrc; j++) dot(n, s + j * bs, x, lp_q8_K_row(y, by, j));
}

#endif
