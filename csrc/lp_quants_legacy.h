/* Block layouts of the legacy formats (Q4_0 Q4_1 Q5_0 Q5_1 Q8_0 Q8_1) and IQ4_NL: byte-for-byte the
 * GGML blocks. Every block holds 32 values; `d` (and `m`, `s`) are fp16 bit patterns.
 *
 * Nothing here is part of the cffi API: Python sees the blocks as bytes, through llamapy.h.
 */
#ifndef LP_QUANTS_LEGACY_H
#define LP_QUANTS_LEGACY_H

#include <stdint.h>

#include "lp_core.h"

#define LP_QK 32 /* values per block, every type in this file */

typedef struct {
    uint16_t d;              /* scale: x = (q - 8) * d */
    uint8_t qs[LP_QK / 2];   /* byte j: value j in the low nibble, value j+16 in the high nibble */
} lp_block_q4_0;
_Static_assert(sizeof(lp_block_q4_0) == 18, "block_q4_0 is 18 bytes");

typedef struct {
    uint16_t d;              /* scale: x = q * d + m */
    uint16_t m;              /* minimum */
    uint8_t qs[LP_QK / 2];
} lp_block_q4_1;
_Static_assert(sizeof(lp_block_q4_1) == 20, "block_q4_1 is 20 bytes");

typedef struct {
    uint16_t d;              /* scale: x = (q - 16) * d */
    uint8_t qh[4];           /* fifth bit of value j in bit j (little-endian uint32) */
    uint8_t qs[LP_QK / 2];   /* low four bits, nibbles as in Q4_0 */
} lp_block_q5_0;
_Static_assert(sizeof(lp_block_q5_0) == 22, "block_q5_0 is 22 bytes");

typedef struct {
    uint16_t d;              /* scale: x = q * d + m */
    uint16_t m;
    uint8_t qh[4];
    uint8_t qs[LP_QK / 2];
} lp_block_q5_1;
_Static_assert(sizeof(lp_block_q5_1) == 24, "block_q5_1 is 24 bytes");

typedef struct {
    uint16_t d;              /* scale: x = q * d */
    int8_t qs[LP_QK];
} lp_block_q8_0;
_Static_assert(sizeof(lp_block_q8_0) == 34, "block_q8_0 is 34 bytes");

typedef struct {
    uint16_t d;              /* scale: x = q * d */
    uint16_t s;              /* d * sum(qs): lets Q4_1/Q5_1 dots add their minimum in one multiply */
    int8_t qs[LP_QK];
} lp_block_q8_1;
_Static_assert(sizeof(lp_block_q8_1) == 36, "block_q8_1 is 36 bytes");

typedef struct {
    uint16_t d;              /* scale: x = lp_iq4nl_values[q] * d */
    uint8_t qs[LP_QK / 2];   /* nibbles as in Q4_0 */
} lp_block_iq4_nl;
_Static_assert(sizeof(lp_block_iq4_nl) == 18, "block_iq4_nl is 18 bytes");

/* The 16 non-linear levels of IQ4_NL. */
extern const int8_t lp_iq4nl_values[16];

/* Scalar reference kernels, shared with the SIMD files for their tails and for the parts they leave alone. */
void lp_quantize_row_q4_0_ref(const float *x, void *y, int64_t n);
void lp_quantize_row_q4_1_ref(const float *x, void *y, int64_t n);
void lp_quantize_row_q5_0_ref(const float *x, void *y, int64_t n);
void lp_quantize_row_q5_1_ref(const float *x, void *y, int64_t n);
void lp_quantize_row_q8_0_ref(const float *x, void *y, int64_t n);
void lp_quantize_row_q8_1_ref(const float *x, void *y, int64_t n);
void lp_quantize_row_iq4_nl_ref(const float *x, void *y, int64_t n);

/* The SIMD files (quants_legacy_avx2.c, quants_legacy_neon.c) accelerate the same kernels, each under the
 * same static names; this registers them, so the two lists cannot drift apart. */
#define LP_LEGACY_SIMD_REGISTER(t)                                                                  \
    do {                                                                                            \
        lp_override(&(t)[LP_TYPE_Q4_0], dequantize_row_q4_0, NULL, vec_dot_q4_0_q8_0, NULL);        \
        lp_override(&(t)[LP_TYPE_Q4_1], dequantize_row_q4_1, NULL, vec_dot_q4_1_q8_1, NULL);        \
        lp_override(&(t)[LP_TYPE_Q5_0], dequantize_row_q5_0, NULL, vec_dot_q5_0_q8_0, NULL);        \
        lp_override(&(t)[LP_TYPE_Q5_1], dequantize_row_q5_1, NULL, vec_dot_q5_1_q8_1, NULL);        \
        lp_override(&(t)[LP_TYPE_Q8_0], dequantize_row_q8_0, quantize_row_q8_0, vec_dot_q8_0_q8_0, NULL); \
        lp_override(&(t)[LP_TYPE_Q8_1], NULL, quantize_row_q8_1, NULL, NULL);                       \
        lp_override(&(t)[LP_TYPE_IQ4_NL], dequantize_row_iq4_nl, NULL, vec_dot_iq4_nl_q8_0, NULL);  \
    } while (0)

#endif
