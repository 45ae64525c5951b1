/* K-quants Q2_K..Q6_K and Q8_K: scalar reference dequantizers and dot products, and the scalar kernels'
 * registration (the reference quantizers are in quants_kquants_quantize.c).
 *
 * The dot products multiply a K-quant row by a Q8_K row (the quantized activations).
 */
#include "lp_core.h"
#include "lp_kquants.h"

/* ---- Q2_K ------------------------------------------------------------------------------------ */

static void dequantize_row_q2_K(const void *vx, float *y, int64_t k) {
    const lp_block_q2_K *x = vx;
    for (int64_t i = 0; i < k / LP_QK_K; i++) {
        const float d = lp_fp16_to_fp32(x[i].d), min = lp_fp16_to_fp32(x[i].dmin);
        for (int v = 0; v < LP_QK_K; v++) {
            const uint8_t sc = x[i].scales[v / 16];
            const int q = (x[i].qs[32 * (v / 128) + v % 32] >> (2 * ((v / 32) % 4))) & 3;
            const float dl = d * (sc & 0xF), ml = min * (sc >> 4);
            *y++ = dl * q - ml;
        }
    }
}

static void vec_dot_q2_K_q8_K(int n, float *s, const void *vx, const void *vy) {
    const lp_block_q2_K *x = vx;
    const lp_block_q8_K *y = vy;
    float sumf = 0;
    for (int i = 0; i < n / LP_QK_K; i++) {
        int summs = 0, isum = 0;
        for (int j = 0; j < 16; j++) summs += y[i].bsums[j] * (x[i].scales[j] >> 4);
        for (int v = 0; v < LP_QK_K; v += 16) {
            int sub = 0;
            for (int l = v; l < v + 16; l++)
                sub += ((x[i].qs[32 * (l / 128) + l % 32] >> (2 * ((l / 32) % 4))) & 3) * y[i].qs[l];
            isum += (x[i].scales[v / 16] & 0xF) * sub;
        }
        const float dall = y[i].d * lp_fp16_to_fp32(x[i].d);
        const float dmin = y[i].d * lp_fp16_to_fp32(x[i].dmin);
        sumf += dall * isum - dmin * summs;
    }
    *s = sumf;
}

/* ---- Q3_K ------------------------------------------------------------------------------------ */

static void dequantize_row_q3_K(const void *vx, float *y, int64_t k) {
    const lp_block_q3_K *x = vx;
    for (int64_t i = 0; i < k / LP_QK_K; i++) {
        const float d_all = lp_fp16_to_fp32(x[i].d);
        int8_t sc[16];
        lp_q3_unpack_scales(x[i].scales, sc);
        for (int v = 0; v < LP_QK_K; v++) {
            const int q = (x[i].qs[32 * (v / 128) + v % 32] >> (2 * ((v / 32) % 4))) & 3;
            const int h = (x[i].hmask[v % 32] >> (v / 32)) & 1;
            const float dl = d_all * sc[v / 16];
            *y++ = dl * (q - (h ? 0 : 4));
        }
    }
}

static void vec_dot_q3_K_q8_K(int n, float *s, const void *vx, const void *vy) {
    const lp_block_q3_K *x = vx;
    const lp_block_q8_K *y = vy;
    float sumf = 0;
    for (int i = 0; i < n / LP_QK_K; i++) {
        int8_t sc[16];
        lp_q3_unpack_scales(x[i].scales, sc);
        int isum = 0;
        for (int v = 0; v < LP_QK_K; v += 16) {
            int sub = 0;
            for (int l = v; l < v + 16; l++) {
                int q = (x[i].qs[32 * (l / 128) + l % 32] >> (2 * ((l / 32) % 4))) & 3;
                q -= ((x[i].hmask[l % 32] >> (l / 32)) & 1) ? 0 : 4;
                sub += q * y[i].qs[l];
            }
            isum += sc[v / 16] * sub;
        }
        sumf += lp_fp16_to_fp32(x[i].d) * y[i].d * isum;
    }
    *s = sumf;
}

/* ---- Q4_K and Q5_K (8 sub-blocks of 32 with 6-bit scales and mins) --------------------------- */

/* The 256 values of a Q4_K block, or of a Q5_K block with its fifth bits qh */
static void k4_dequant(const uint8_t *scales, const uint8_t *qs, const uint8_t *qh, uint16_t d16, uint16_t dmin16,
                       float *y) {
    const float d = lp_fp16_to_fp32(d16), min = lp_fp16_to_fp32(dmin16);
    for (int j = 0; j < 8; j++) {
        uint8_t sc, m;
        lp_k4_scale_min(j, scales, &sc, &m);
        const float d1 = d * sc, m1 = min * m;
        const uint8_t *q = qs + 32 * (j / 2);
        const int shift = 4 * (j % 2);
        for (int l = 0; l < 32; l++) {
            int v = (q[l] >> shift) & 0xF;
            if (qh) v += ((qh[l] >> j) & 1) << 4;
            *y++ = d1 * v - m1;
        }
    }
}

/* A Q4_K block (qh NULL) or Q5_K block dotted with a Q8_K block */
static float k4_dot(const uint8_t *scales, const uint8_t *qs, const uint8_t *qh, uint16_t d16, uint16_t dmin16,
                    const lp_block_q8_K *yb) {
    uint8_t sm[16];
    lp_k4_unpack_scales(scales, sm);
    int isum = 0, summs = 0;
    for (int j = 0; j < 8; j++) {
        const uint8_t *q = qs + 32 * (j / 2);
        const int8_t *q8 = yb->qs + 32 * j;
        const int shift = 4 * (j % 2);
        int sub = 0;
        for (int l = 0; l < 32; l++) {
            int v = (q[l] >> shift) & 0xF;
            if (qh) v |= ((qh[l] >> j) & 1) << 4;
            sub += v * q8[l];
        }
        isum += sm[j] * sub;
        summs += sm[8 + j] * (yb->bsums[2 * j] + yb->bsums[2 * j + 1]);
    }
    const float d = yb->d * lp_fp16_to_fp32(d16);
    const float dmin = yb->d * lp_fp16_to_fp32(dmin16);
    return d * isum - dmin * summs;
}

static void dequantize_row_q4_K(const void *vx, float *y, int64_t k) {
    const lp_block_q4_K *x = vx;
    for (int64_t i = 0; i < k / LP_QK_K; i++, y += LP_QK_K) k4_dequant(x[i].scales, x[i].qs, NULL, x[i].d, x[i].dmin, y);
}

static void vec_dot_q4_K_q8_K(int n, float *s, const void *vx, const void *vy) {
    const lp_block_q4_K *x = vx;
    const lp_block_q8_K *y = vy;
    float sumf = 0;
    for (int i = 0; i < n / LP_QK_K; i++) sumf += k4_dot(x[i].scales, x[i].qs, NULL, x[i].d, x[i].dmin, &y[i]);
    *s = sumf;
}

static void dequantize_row_q5_K(const void *vx, float *y, int64_t k) {
    const lp_block_q5_K *x = vx;
    for (int64_t i = 0; i < k / LP_QK_K; i++, y += LP_QK_K) k4_dequant(x[i].scales, x[i].qs, x[i].qh, x[i].d, x[i].dmin, y);
}

static void vec_dot_q5_K_q8_K(int n, float *s, const void *vx, const void *vy) {
    const lp_block_q5_K *x = vx;
    const lp_block_q8_K *y = vy;
    float sumf = 0;
    for (int i = 0; i < n / LP_QK_K; i++) sumf += k4_dot(x[i].scales, x[i].qs, x[i].qh, x[i].d, x[i].dmin, &y[i]);
    *s = sumf;
}

/* ---- Q6_K ------------------------------------------------------------------------------------ */

/* The 6-bit quant v (0..255) of a Q6_K block, minus 32. */
static inline int q6_value(const lp_block_q6_K *b, int v) {
    const int h = v / 128, r = v % 128, l = r % 32, part = r / 32;
    const int lo = (b->ql[64 * h + l + 32 * (part & 1)] >> (4 * (part >> 1))) & 0xF;
    const int hi = (b->qh[32 * h + l] >> (2 * part)) & 3;
    return (lo | (hi << 4)) - 32;
}

static void dequantize_row_q6_K(const void *vx, float *y, int64_t k) {
    const lp_block_q6_K *x = vx;
    for (int64_t i = 0; i < k / LP_QK_K; i++) {
        const float d = lp_fp16_to_fp32(x[i].d);
        for (int v = 0; v < LP_QK_K; v++) *y++ = d * x[i].scales[v / 16] * q6_value(&x[i], v);
    }
}

static void vec_dot_q6_K_q8_K(int n, float *s, const void *vx, const void *vy) {
    const lp_block_q6_K *x = vx;
    const lp_block_q8_K *y = vy;
    float sumf = 0;
    for (int i = 0; i < n / LP_QK_K; i++) {
        int isum = 0;
        for (int v = 0; v < LP_QK_K; v += 16) {
            int sub = 0;
            for (int l = v; l < v + 16; l++) sub += q6_value(&x[i], l) * y[i].qs[l];
            isum += x[i].scales[v / 16] * sub;
        }
        sumf += lp_fp16_to_fp32(x[i].d) * y[i].d * isum;
    }
    *s = sumf;
}

/* ---- Q8_K ------------------------------------------------------------------------------------ */

static void dequantize_row_q8_K(const void *vx, float *y, int64_t k) {
    const lp_block_q8_K *x = vx;
    for (int64_t i = 0; i < k / LP_QK_K; i++)
        for (int j = 0; j < LP_QK_K; j++) *y++ = x[i].d * x[i].qs[j];
}

static void vec_dot_q8_K_q8_K(int n, float *s, const void *vx, const void *vy) {
    const lp_block_q8_K *x = vx, *y = vy;
    float sumf = 0;
    for (int i = 0; i < n / LP_QK_K; i++) {
        int isum = 0;
        for (int j = 0; j < LP_QK_K; j++) isum += x[i].qs[j] * y[i].qs[j];
        sumf += x[i].d * y[i].d * isum;
    }
    *s = sumf;
}

void lp_register_kquants_scalar(lp_type_traits *t) {
    static const struct {
        int type;
        const char *name;
        int64_t size;
        lp_to_float_fn to_float;
        lp_from_float_fn from_float;
        lp_vec_dot_fn vec_dot;
    } k[] = {
        {LP_TYPE_Q2_K, "q2_K", sizeof(lp_block_q2_K), dequantize_row_q2_K, lp_quantize_row_q2_K_ref, vec_dot_q2_K_q8_K},
        {LP_TYPE_Q3_K, "q3_K", sizeof(lp_block_q3_K), dequantize_row_q3_K, lp_quantize_row_q3_K_ref, vec_dot_q3_K_q8_K},
        {LP_TYPE_Q4_K, "q4_K", sizeof(lp_block_q4_K), dequantize_row_q4_K, lp_quantize_row_q4_K_ref, vec_dot_q4_K_q8_K},
        {LP_TYPE_Q5_K, "q5_K", sizeof(lp_block_q5_K), dequantize_row_q5_K, lp_quantize_row_q5_K_ref, vec_dot_q5_K_q8_K},
        {LP_TYPE_Q6_K, "q6_K", sizeof(lp_block_q6_K), dequantize_row_q6_K, lp_quantize_row_q6_K_ref, vec_dot_q6_K_q8_K},
        {LP_TYPE_Q8_K, "q8_K", sizeof(lp_block_q8_K), dequantize_row_q8_K, lp_quantize_row_q8_K_ref, vec_dot_q8_K_q8_K},
    };
    for (size_t i = 0; i < sizeof k / sizeof k[0]; i++)
        t[k[i].type] = (lp_type_traits){k[i].name, LP_QK_K, k[i].size, LP_TYPE_Q8_K,
                                        k[i].to_float, k[i].from_float, k[i].from_float, k[i].vec_dot, NULL};
}
