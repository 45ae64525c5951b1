/* llamapy C core internals: the kernel table, its registration hooks and fp16 conversion.
 *
 * Every quant format registers its kernels in the kernel table through the lp_register_* hooks below, each
 * defined in the file that owns those kernels: a scalar reference first, then the instruction-set versions
 * the level has (see dispatch.c).
 */
#ifndef LP_CORE_H
#define LP_CORE_H

#include <stddef.h>
#include <stdint.h>

#include "llamapy.h"

typedef void (*lp_to_float_fn)(const void *x, float *y, int64_t n);
typedef void (*lp_from_float_fn)(const float *x, void *y, int64_t n);
typedef void (*lp_vec_dot_fn)(int n, float *s, const void *x, const void *y);
/* s[j * s_stride] = dot(x, y + j * y_stride) for j < nrc: one weight row against several activation rows */
typedef void (*lp_vec_dot_rows_fn)(int n, int nrc, float *s, size_t s_stride, const void *x, const void *y,
                                   size_t y_stride);

typedef struct {
    const char *name;
    int64_t blck_size;
    int64_t type_size;
    int vec_dot_type;
    lp_to_float_fn to_float;           /* dequantize a row */
    lp_from_float_fn from_float_ref;   /* scalar reference quantizer: the bytes the reference writes */
    lp_from_float_fn from_float;       /* fast quantizer for activations (may equal the reference) */
    lp_vec_dot_fn vec_dot;             /* dot of a row of this type with a row of vec_dot_type */
    lp_vec_dot_rows_fn vec_dot_rows;   /* optional (NULL: loop over vec_dot): decodes x once for all rows */
} lp_type_traits;

/* The active kernel table (LP_TYPE_COUNT entries, read-only, valid for good; see dispatch.c) and, when
 * level is not NULL, its level: one consistent read for callers that need both. */
const lp_type_traits *lp_kernels_table(int *level);
/* The active kernels of one type; NULL for a type without them. */
const lp_type_traits *lp_get_traits(int type);

/* Registration hooks, each defined in the file that owns those kernels.
 * The scalar ones fill every field; the SIMD ones override what they accelerate (lp_override). The SIMD
 * files compile to nothing off their architecture, so their hooks exist (and dispatch.c calls them) only
 * where LP_HAVE_AVX2_FILES / LP_HAVE_NEON_FILES say so. */
#if defined(__x86_64__) || defined(__i386__)
#define LP_HAVE_AVX2_FILES 1
#else
#define LP_HAVE_AVX2_FILES 0
#endif
#if defined(__ARM_NEON) && defined(__aarch64__)
#define LP_HAVE_NEON_FILES 1
#else
#define LP_HAVE_NEON_FILES 0
#endif
void lp_register_float_scalar(lp_type_traits *t);   /* F32, F16, BF16 */
void lp_register_float_avx2(lp_type_traits *t);
void lp_register_float_neon(lp_type_traits *t);
void lp_register_legacy_scalar(lp_type_traits *t);  /* Q4_0 Q4_1 Q5_0 Q5_1 Q8_0 Q8_1 IQ4_NL */
void lp_register_legacy_avx2(lp_type_traits *t);
void lp_register_legacy_quantize_avx2(lp_type_traits *t);  /* the byte-exact Q4_x/Q5_x row quantizers */
void lp_register_legacy_neon(lp_type_traits *t);
void lp_register_kquants_scalar(lp_type_traits *t); /* Q2_K..Q6_K, Q8_K */
void lp_register_kquants_avx2(lp_type_traits *t);
void lp_register_kquants_neon(lp_type_traits *t);

/* A SIMD file's kernels of one type: each one not NULL replaces the table's. */
static inline void lp_override(lp_type_traits *t, lp_to_float_fn to_float, lp_from_float_fn from_float,
                               lp_vec_dot_fn vec_dot, lp_vec_dot_rows_fn vec_dot_rows) {
    if (to_float) t->to_float = to_float;
    if (from_float) t->from_float = from_float;
    if (vec_dot) t->vec_dot = vec_dot;
    if (vec_dot_rows) t->vec_dot_rows = vec_dot_rows;
}

/* fp16 / bf16 conversion (scalar, IEEE round-to-nearest-even, as the reference) */
float lp_fp16_to_fp32(uint16_t h);
uint16_t lp_fp32_to_fp16(float f);
float lp_bf16_to_fp32(uint16_t h);
uint16_t lp_fp32_to_bf16(float f);

#endif
