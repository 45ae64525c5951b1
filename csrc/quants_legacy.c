/* Scalar reference kernels: Q4_0 Q4_1 Q5_0 Q5_1 Q8_0 Q8_1 and IQ4_NL.
 *
 * The quantizers write the bytes the reference quantizer writes: every float operation below happens in
 * the same order and precision as there (single precision, no fused multiply-add: the build uses
 * -ffp-contract=off), truncating casts where it truncates and roundf where it rounds.
 * The SIMD files reproduce these bytes exactly and are tested against them.
 */
#include <float.h>
#include <math.h>
#include <string.h>

#include "lp_quants_legacy.h"

#define MIN(a, b) ((a) < (b) ? (a) : (b))
#define MAX(a, b) ((a) > (b) ? (a) : (b))

const int8_t lp_iq4nl_values[16] = {-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113};

#define H2F(h) lp_fp16_to_fp32(h)
#define F2H(f) lp_fp32_to_fp16(f)

/* The value of largest magnitude in a block; the first one wins a tie, 0 for an all-zero block. */
static inline float signed_absmax(const float *x, int n) {
    float amax = 0.0f, max = 0.0f;
    for (int j = 0; j < n; j++) {
        if (amax < fabsf(x[j])) {
            amax = fabsf(x[j]);
            max = x[j];
        }
    }
    return max;
}

/* A Q4_1/Q5_1 block's minimum and step d = (max - min) / nmax, both stored as fp16; returns 1 / d (0 if d is 0). */
static inline float block_min_step(const float *x, int nmax, uint16_t *dh, uint16_t *mh, float *min_out) {
    float min = FLT_MAX, max = -FLT_MAX;
    for (int j = 0; j < LP_QK; j++) {
        if (x[j] < min) min = x[j];
        if (x[j] > max) max = x[j];
    }
    const float d = (max - min) / nmax;
    *dh = F2H(d);
    *mh = F2H(min);
    *min_out = min;
    return d ? 1.0f / d : 0.0f;
}

/* Sum over a Q4 block of (q - off) * y: low nibbles against y[0..15], high nibbles against y[16..31]. */
static inline int dot_q4_block(const uint8_t *qs, const int8_t *y, int off) {
    int sumi = 0;
    for (int j = 0; j < LP_QK / 2; j++) {
        sumi += ((qs[j] & 0xf) - off) * y[j];
        sumi += ((qs[j] >> 4) - off) * y[j + LP_QK / 2];
    }
    return sumi;
}

/* ---- Q4_0 -------------------------------------------------------------------------------------- */
void lp_quantize_row_q4_0_ref(const float *x, void *vy, int64_t n) {
    lp_block_q4_0 *y = vy;
    for (int64_t i = 0; i < n / LP_QK; i++, x += LP_QK) {
        const float d = signed_absmax(x, LP_QK) / -8;
        const float id = d ? 1.0f / d : 0.0f;
        y[i].d = F2H(d);
        for (int j = 0; j < LP_QK / 2; j++) {
            const int q0 = MIN(15, (int)(x[j] * id + 8.5f));
            const int q1 = MIN(15, (int)(x[j + LP_QK / 2] * id + 8.5f));
            y[i].qs[j] = (uint8_t)(q0 | (q1 << 4));
        }
    }
}

static void dequantize_row_q4_0(const void *vx, float *y, int64_t n) {
    const lp_block_q4_0 *x = vx;
    for (int64_t i = 0; i < n / LP_QK; i++, y += LP_QK) {
        const float d = H2F(x[i].d);
        for (int j = 0; j < LP_QK / 2; j++) {
            y[j] = ((x[i].qs[j] & 0xf) - 8) * d;
            y[j + LP_QK / 2] = ((x[i].qs[j] >> 4) - 8) * d;
        }
    }
}

static void vec_dot_q4_0_q8_0(int n, float *s, const void *vx, const void *vy) {
    const lp_block_q4_0 *x = vx;
    const lp_block_q8_0 *y = vy;
    float sum = 0.0f;
    for (int i = 0; i < n / LP_QK; i++) {
        const int sumi = dot_q4_block(x[i].qs, y[i].qs, 8);
        sum += sumi * (H2F(x[i].d) * H2F(y[i].d));
    }
    *s = sum;
}

/* ---- Q4_1 -------------------------------------------------------------------------------------- */
void lp_quantize_row_q4_1_ref(const float *x, void *vy, int64_t n) {
    lp_block_q4_1 *y = vy;
    for (int64_t i = 0; i < n / LP_QK; i++, x += LP_QK) {
        float min;
        const float id = block_min_step(x, 15, &y[i].d, &y[i].m, &min);
        for (int j = 0; j < LP_QK / 2; j++) {
            const int q0 = MIN(15, (int)((x[j] - min) * id + 0.5f));
            const int q1 = MIN(15, (int)((x[j + LP_QK / 2] - min) * id + 0.5f));
            y[i].qs[j] = (uint8_t)(q0 | (q1 << 4));
        }
    }
}

static void dequantize_row_q4_1(const void *vx, float *y, int64_t n) {
    const lp_block_q4_1 *x = vx;
    for (int64_t i = 0; i < n / LP_QK; i++, y += LP_QK) {
        const float d = H2F(x[i].d), m = H2F(x[i].m);
        for (int j = 0; j < LP_QK / 2; j++) {
            y[j] = (x[i].qs[j] & 0xf) * d + m;
            y[j + LP_QK / 2] = (x[i].qs[j] >> 4) * d + m;
        }
    }
}

static void vec_dot_q4_1_q8_1(int n, float *s, const void *vx, const void *vy) {
    const lp_block_q4_1 *x = vx;
    const lp_block_q8_1 *y = vy;
    float sum = 0.0f;
    for (int i = 0; i < n / LP_QK; i++) {
        const int sumi = dot_q4_block(x[i].qs, y[i].qs, 0);
        sum += (H2F(x[i].d) * H2F(y[i].d)) * sumi + H2F(x[i].m) * H2F(y[i].s);
    }
    *s = sum;
}

/* ---- Q5_0 / Q5_1: four low bits as in Q4, the fifth bits packed in qh ----------------------------- */
static inline void pack_q5(const int *q, uint8_t *qs, uint8_t *qh_bytes) {
    uint32_t qh = 0;
    for (int j = 0; j < LP_QK / 2; j++) {
        qs[j] = (uint8_t)((q[j] & 0xf) | ((q[j + LP_QK / 2] & 0xf) << 4));
        qh |= (uint32_t)((q[j] >> 4) & 1) << j;
        qh |= (uint32_t)((q[j + LP_QK / 2] >> 4) & 1) << (j + LP_QK / 2);
    }
    memcpy(qh_bytes, &qh, 4);
}

static inline void unpack_q5(const uint8_t *qs, const uint8_t *qh_bytes, int *q) {
    uint32_t qh;
    memcpy(&qh, qh_bytes, 4);
    for (int j = 0; j < LP_QK / 2; j++) {
        q[j] = (qs[j] & 0xf) | (int)(((qh >> j) & 1) << 4);
        q[j + LP_QK / 2] = (qs[j] >> 4) | (int)(((qh >> (j + LP_QK / 2)) & 1) << 4);
    }
}

/* Sum over a Q5 block of (q - off) * y. */
static inline int dot_q5_block(const uint8_t *qs, const uint8_t *qh, const int8_t *y, int off) {
    int q[LP_QK];
    unpack_q5(qs, qh, q);
    int sumi = 0;
    for (int j = 0; j < LP_QK; j++) sumi += (q[j] - off) * y[j];
    return sumi;
}

void lp_quantize_row_q5_0_ref(const float *x, void *vy, int64_t n) {
    lp_block_q5_0 *y = vy;
    int q[LP_QK];
    for (int64_t i = 0; i < n / LP_QK; i++, x += LP_QK) {
        const float d = signed_absmax(x, LP_QK) / -16;
        const float id = d ? 1.0f / d : 0.0f;
        y[i].d = F2H(d);
        for (int j = 0; j < LP_QK; j++) q[j] = MIN(31, (int)(x[j] * id + 16.5f));
        pack_q5(q, y[i].qs, y[i].qh);
    }
}

static void dequantize_row_q5_0(const void *vx, float *y, int64_t n) {
    const lp_block_q5_0 *x = vx;
    int q[LP_QK];
    for (int64_t i = 0; i < n / LP_QK; i++, y += LP_QK) {
        const float d = H2F(x[i].d);
        unpack_q5(x[i].qs, x[i].qh, q);
        for (int j = 0; j < LP_QK; j++) y[j] = (q[j] - 16) * d;
    }
}

static void vec_dot_q5_0_q8_0(int n, float *s, const void *vx, const void *vy) {
    const lp_block_q5_0 *x = vx;
    const lp_block_q8_0 *y = vy;
    float sum = 0.0f;
    for (int i = 0; i < n / LP_QK; i++) {
        const int sumi = dot_q5_block(x[i].qs, x[i].qh, y[i].qs, 16);
        sum += (H2F(x[i].d) * H2F(y[i].d)) * sumi;
    }
    *s = sum;
}

void lp_quantize_row_q5_1_ref(const float *x, void *vy, int64_t n) {
    lp_block_q5_1 *y = vy;
    int q[LP_QK];
    for (int64_t i = 0; i < n / LP_QK; i++, x += LP_QK) {
        float min;
        const float id = block_min_step(x, 31, &y[i].d, &y[i].m, &min);
        for (int j = 0; j < LP_QK; j++) q[j] = (uint8_t)(int)((x[j] - min) * id + 0.5f);
        pack_q5(q, y[i].qs, y[i].qh);
    }
}

static void dequantize_row_q5_1(const void *vx, float *y, int64_t n) {
    const lp_block_q5_1 *x = vx;
    int q[LP_QK];
    for (int64_t i = 0; i < n / LP_QK; i++, y += LP_QK) {
        const float d = H2F(x[i].d), m = H2F(x[i].m);
        unpack_q5(x[i].qs, x[i].qh, q);
        for (int j = 0; j < LP_QK; j++) y[j] = q[j] * d + m;
    }
}

static void vec_dot_q5_1_q8_1(int n, float *s, const void *vx, const void *vy) {
    const lp_block_q5_1 *x = vx;
    const lp_block_q8_1 *y = vy;
    float sum = 0.0f;
    for (int i = 0; i < n / LP_QK; i++) {
        const int sumi = dot_q5_block(x[i].qs, x[i].qh, y[i].qs, 0);
        sum += (H2F(x[i].d) * H2F(y[i].d)) * sumi + H2F(x[i].m) * H2F(y[i].s);
    }
    *s = sum;
}

/* ---- Q8_0 / Q8_1 --------------------------------------------------------------------------------- */
/* One Q8 block: the 32 values rounded at scale amax / 127; returns that scale. */
static inline float quantize_block_q8_ref(const float *x, int8_t *qs) {
    float amax = 0.0f;
    for (int j = 0; j < LP_QK; j++) amax = MAX(amax, fabsf(x[j]));
    const float d = amax / 127;
    const float id = d ? 1.0f / d : 0.0f;
    for (int j = 0; j < LP_QK; j++) qs[j] = (int8_t)roundf(x[j] * id);
    return d;
}

static inline void dequantize_block_q8(const int8_t *qs, uint16_t dh, float *y) {
    const float d = H2F(dh);
    for (int j = 0; j < LP_QK; j++) y[j] = qs[j] * d;
}

void lp_quantize_row_q8_0_ref(const float *x, void *vy, int64_t n) {
    lp_block_q8_0 *y = vy;
    for (int64_t i = 0; i < n / LP_QK; i++, x += LP_QK) y[i].d = F2H(quantize_block_q8_ref(x, y[i].qs));
}

static void dequantize_row_q8_0(const void *vx, float *y, int64_t n) {
    const lp_block_q8_0 *x = vx;
    for (int64_t i = 0; i < n / LP_QK; i++, y += LP_QK) dequantize_block_q8(x[i].qs, x[i].d, y);
}

static void vec_dot_q8_0_q8_0(int n, float *s, const void *vx, const void *vy) {
    const lp_block_q8_0 *x = vx;
    const lp_block_q8_0 *y = vy;
    float sum = 0.0f;
    for (int i = 0; i < n / LP_QK; i++) {
        int sumi = 0;
        for (int j = 0; j < LP_QK; j++) sumi += x[i].qs[j] * y[i].qs[j];
        sum += sumi * (H2F(x[i].d) * H2F(y[i].d));
    }
    *s = sum;
}

void lp_quantize_row_q8_1_ref(const float *x, void *vy, int64_t n) {
    lp_block_q8_1 *y = vy;
    for (int64_t i = 0; i < n / LP_QK; i++, x += LP_QK) {
        const float d = quantize_block_q8_ref(x, y[i].qs);
        y[i].d = F2H(d);
        int sum = 0;
        for (int j = 0; j < LP_QK; j++) sum += y[i].qs[j];
        y[i].s = F2H(sum * d);
    }
}

static void dequantize_row_q8_1(const void *vx, float *y, int64_t n) {
    const lp_block_q8_1 *x = vx;
    for (int64_t i = 0; i < n / LP_QK; i++, y += LP_QK) dequantize_block_q8(x[i].qs, x[i].d, y);
}

/* ---- IQ4_NL ---------------------------------------------------------------------------------------
 * Each value is one of 16 fixed levels times the block scale. The scale is searched: a first guess from
 * the largest value, then 15 trial scales around it, keeping the one with the best weighted fit
 * (weights x^2). This is the quantizer the reference's model quantizer runs (its "7 tries" path, without
 * an importance matrix), so it defines the bytes in quantized files.
 */
static inline int iq4nl_nearest(float v) {
    const int8_t *val = lp_iq4nl_values;
    if (v <= val[0]) return 0;
    if (v >= val[15]) return 15;
    int lo = 0, hi = 15;
    while (hi - lo > 1) {
        int mid = (lo + hi) / 2;
        if (v < val[mid]) hi = mid;
        else lo = mid;
    }
    return v - val[hi - 1] < val[hi] - v ? hi - 1 : hi;
}

#define IQ4NL_NTRY 7

/* The weighted fit of a block to the levels at inverse scale id: sum w*q*x and sum w*q*q. */
static inline void iq4nl_fit(const float *x, const float *w, float id, float *sumqx_out, float *sumq2_out) {
    float sumqx = 0, sumq2 = 0;
    for (int j = 0; j < LP_QK; j++) {
        const float q = lp_iq4nl_values[iq4nl_nearest(id * x[j])];
        sumqx += w[j] * q * x[j];
        sumq2 += w[j] * q * q;
    }
    *sumqx_out = sumqx;
    *sumq2_out = sumq2;
}

void lp_quantize_row_iq4_nl_ref(const float *x, void *vy, int64_t n) {
    lp_block_iq4_nl *y = vy;
    uint8_t L[LP_QK];
    float w[LP_QK];
    for (int64_t i = 0; i < n / LP_QK; i++, x += LP_QK) {
        for (int j = 0; j < LP_QK; j++) w[j] = x[j] * x[j];
        float amax = 0.0f, max = 0.0f;
        for (int j = 0; j < LP_QK; j++) {
            if (amax < fabsf(x[j])) {
                amax = fabsf(x[j]);
                max = x[j];
            }
        }
        float d = 0.0f;
        if (amax >= 1e-15f) {
            d = -max / lp_iq4nl_values[0];
            float id = 1 / d;
            float sumqx, sumq2;
            iq4nl_fit(x, w, id, &sumqx, &sumq2);
            d = sumqx / sumq2;
            float best = d * sumqx;
            for (int itry = -IQ4NL_NTRY; itry <= IQ4NL_NTRY; itry++) {
                id = (itry + lp_iq4nl_values[0]) / max;
                iq4nl_fit(x, w, id, &sumqx, &sumq2);
                if (sumq2 > 0 && sumqx * sumqx > best * sumq2) {
                    d = sumqx / sumq2;
                    best = d * sumqx;
                }
            }
        }
        y[i].d = F2H(d);
        const float id = d ? 1 / d : 0;
        for (int j = 0; j < LP_QK; j++) L[j] = (uint8_t)iq4nl_nearest(id * x[j]);
        for (int j = 0; j < LP_QK / 2; j++) y[i].qs[j] = (uint8_t)(L[j] | (L[j + LP_QK / 2] << 4));
    }
}

static void dequantize_row_iq4_nl(const void *vx, float *y, int64_t n) {
    const lp_block_iq4_nl *x = vx;
    for (int64_t i = 0; i < n / LP_QK; i++, y += LP_QK) {
        const float d = H2F(x[i].d);
        for (int j = 0; j < LP_QK / 2; j++) {
            y[j] = d * lp_iq4nl_values[x[i].qs[j] & 0xf];
            y[j + LP_QK / 2] = d * lp_iq4nl_values[x[i].qs[j] >> 4];
        }
    }
}

static void vec_dot_iq4_nl_q8_0(int n, float *s, const void *vx, const void *vy) {
    const lp_block_iq4_nl *x = vx;
    const lp_block_q8_0 *y = vy;
    float sum = 0.0f;
    for (int i = 0; i < n / LP_QK; i++) {
        int sumi = 0;
        for (int j = 0; j < LP_QK / 2; j++) {
            sumi += y[i].qs[j] * lp_iq4nl_values[x[i].qs[j] & 0xf];
            sumi += y[i].qs[j + LP_QK / 2] * lp_iq4nl_values[x[i].qs[j] >> 4];
        }
        sum += (H2F(y[i].d) * H2F(x[i].d)) * sumi;
    }
    *s = sum;
}

void lp_register_legacy_scalar(lp_type_traits *t) {
    t[LP_TYPE_Q4_0] = (lp_type_traits){"q4_0", LP_QK, sizeof(lp_block_q4_0), LP_TYPE_Q8_0, dequantize_row_q4_0,
                                       lp_quantize_row_q4_0_ref, lp_quantize_row_q4_0_ref, vec_dot_q4_0_q8_0};
    t[LP_TYPE_Q4_1] = (lp_type_traits){"q4_1", LP_QK, sizeof(lp_block_q4_1), LP_TYPE_Q8_1, dequantize_row_q4_1,
                                       lp_quantize_row_q4_1_ref, lp_quantize_row_q4_1_ref, vec_dot_q4_1_q8_1};
    t[LP_TYPE_Q5_0] = (lp_type_traits){"q5_0", LP_QK, sizeof(lp_block_q5_0), LP_TYPE_Q8_0, dequantize_row_q5_0,
                                       lp_quantize_row_q5_0_ref, lp_quantize_row_q5_0_ref, vec_dot_q5_0_q8_0};
    t[LP_TYPE_Q5_1] = (lp_type_traits){"q5_1", LP_QK, sizeof(lp_block_q5_1), LP_TYPE_Q8_1, dequantize_row_q5_1,
                                       lp_quantize_row_q5_1_ref, lp_quantize_row_q5_1_ref, vec_dot_q5_1_q8_1};
    t[LP_TYPE_Q8_0] = (lp_type_traits){"q8_0", LP_QK, sizeof(lp_block_q8_0), LP_TYPE_Q8_0, dequantize_row_q8_0,
                                       lp_quantize_row_q8_0_ref, lp_quantize_row_q8_0_ref, vec_dot_q8_0_q8_0};
    t[LP_TYPE_Q8_1] = (lp_type_traits){"q8_1", LP_QK, sizeof(lp_block_q8_1), LP_TYPE_Q8_1, dequantize_row_q8_1,
                                       lp_quantize_row_q8_1_ref, lp_quantize_row_q8_1_ref, NULL};
    t[LP_TYPE_IQ4_NL] = (lp_type_traits){"iq4_nl", LP_QK, sizeof(lp_block_iq4_nl), LP_TYPE_Q8_0,
                                         dequantize_row_iq4_nl, lp_quantize_row_iq4_nl_ref,
                                         lp_quantize_row_iq4_nl_ref, vec_dot_iq4_nl_q8_0};
}
