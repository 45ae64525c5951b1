/* llamapy C core: tensor types, CPU feature detection and the kernel table.
 *
 * Every quant format registers its kernels in lp_traits[] (see lp_quants.h for the registration
 * functions): a scalar reference first, then the instruction-set versions the CPU supports.
 * Text between the LP_API markers is also the cffi cdef: plain C types only.
 */
#ifndef LP_CORE_H
#define LP_CORE_H

#include <stddef.h>
#include <stdint.h>

/* LP_API_BEGIN */
/* Tensor types: the same ids as GGML / GGUF. */
enum lp_type {
    LP_TYPE_F32 = 0,
    LP_TYPE_F16 = 1,
    LP_TYPE_Q4_0 = 2,
    LP_TYPE_Q4_1 = 3,
    LP_TYPE_Q5_0 = 6,
    LP_TYPE_Q5_1 = 7,
    LP_TYPE_Q8_0 = 8,
    LP_TYPE_Q8_1 = 9,
    LP_TYPE_Q2_K = 10,
    LP_TYPE_Q3_K = 11,
    LP_TYPE_Q4_K = 12,
    LP_TYPE_Q5_K = 13,
    LP_TYPE_Q6_K = 14,
    LP_TYPE_Q8_K = 15,
    LP_TYPE_IQ4_NL = 20,
    LP_TYPE_BF16 = 30,
    LP_TYPE_COUNT = 40
};

/* Kernel levels: LP_KERNELS_SCALAR always works; the others only where the CPU has them. */
enum lp_kernels { LP_KERNELS_SCALAR = 0, LP_KERNELS_AVX2 = 1, LP_KERNELS_NEON = 2 };

int lp_cpu_has_avx2(void);          /* AVX2 + FMA + F16C all present */
int lp_cpu_has_neon(void);
int lp_kernels_best(void);          /* the best level this CPU runs */
int lp_kernels_active(void);        /* the level in use */
int lp_kernels_set(int level);      /* 0 on success, -1 if this CPU can't run that level */
const char *lp_kernels_name(int level);

/* Per-type facts and row kernels; all return 0 on success, -1 for a type without that kernel. */
int lp_type_supported(int type);
int64_t lp_blck_size(int type);
int64_t lp_type_size(int type);
int64_t lp_row_size(int type, int64_t n);          /* bytes of a row of n values; -1 if n % blck */
int lp_vec_dot_type(int type);                      /* the activation type `type` is dotted with */
int lp_quantize_row_ref(int type, const float *x, void *y, int64_t n);   /* scalar, byte-exact */
int lp_quantize_row(int type, const float *x, void *y, int64_t n);       /* active kernels */
int lp_dequantize_row(int type, const void *x, float *y, int64_t n);     /* active kernels */
int lp_vec_dot(int type, int64_t n, const void *x, const void *y, float *s); /* y: vec_dot_type */
/* LP_API_END */

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

/* The table in use; filled once by lp_kernels_set() / the first call that needs it. */
extern lp_type_traits lp_traits[LP_TYPE_COUNT];
const lp_type_traits *lp_get_traits(int type);

/* Registration hooks, each defined in the file that owns those kernels.
 * The scalar ones fill every field; the SIMD ones override what they accelerate. */
void lp_register_float_scalar(lp_type_traits *t);   /* F32, F16, BF16 */
void lp_register_float_avx2(lp_type_traits *t);
void lp_register_float_neon(lp_type_traits *t);
void lp_register_legacy_scalar(lp_type_traits *t);  /* Q4_0 Q4_1 Q5_0 Q5_1 Q8_0 Q8_1 IQ4_NL */
void lp_register_legacy_avx2(lp_type_traits *t);
void lp_register_legacy_neon(lp_type_traits *t);
void lp_register_kquants_scalar(lp_type_traits *t); /* Q2_K..Q6_K, Q8_K */
void lp_register_kquants_avx2(lp_type_traits *t);
void lp_register_kquants_neon(lp_type_traits *t);

/* fp16 / bf16 conversion (scalar, IEEE round-to-nearest-even, as the reference) */
float lp_fp16_to_fp32(uint16_t h);
uint16_t lp_fp32_to_fp16(float f);
float lp_bf16_to_fp32(uint16_t h);
uint16_t lp_fp32_to_bf16(float f);

#endif
