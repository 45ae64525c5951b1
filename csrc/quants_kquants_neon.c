/* K-quants Q2_K..Q6_K and Q8_K: NEON kernels (AArch64; 32-bit ARM keeps the scalar ones).
 *
 * As on AVX2: the Q8_K activation quantizer writes exactly the scalar reference's bytes, the dequantizers
 * give exactly the scalar floats (multiply, then subtract: no fused multiply-add), and the dot products
 * sum each sub-block in int32 (SDOT where the CPU has it) and agree with the scalar ones to rounding.
 * The weight quantizers stay the scalar reference.
 */
#if defined(__ARM_NEON) && defined(__aarch64__)
#include <arm_neon.h>
#include <string.h>

#include "lp_core.h"
#include "lp_kquants.h"

static inline float h2f(uint16_t h) {
    __fp16 f;
    memcpy(&f, &h, 2);
    return (float)f;
}

/* acc + the 4 sums of 4 products of 16 int8 pairs */
static inline int32x4_t dot16(int32x4_t acc, int8x16_t a, int8x16_t b) {
#if defined(__ARM_FEATURE_DOTPROD)
    return vdotq_s32(acc, a, b);
#else
    const int16x8_t p0 = vmull_s8(vget_low_s8(a), vget_low_s8(b));
    const int16x8_t p1 = vmull_high_s8(a, b);
    return vaddq_s32(acc, vaddq_s32(vpaddlq_s16(p0), vpaddlq_s16(p1)));
#endif
}

static inline int dot32(const int8x16_t a[2], const int8_t *q8) {
    return vaddvq_s32(dot16(dot16(vdupq_n_s32(0), a[0], vld1q_s8(q8)), a[1], vld1q_s8(q8 + 16)));
}

static inline int dot_16(int8x16_t a, const int8_t *q8) { return vaddvq_s32(dot16(vdupq_n_s32(0), a, vld1q_s8(q8))); }

/* 16 bytes right-shifted by a run-time amount */
static inline uint8x16_t shr(uint8x16_t v, int n) { return vshlq_u8(v, vdupq_n_s8((int8_t)-n)); }

/* ---- Q8_K activations ------------------------------------------------------------------------ */

static void quantize_row_q8_K(const float *x, void *vy, int64_t k) {
    lp_block_q8_K *y = vy;
    for (int64_t i = 0; i < k / LP_QK_K; i++, x += LP_QK_K) {
        float32x4_t vmax = vld1q_f32(x), vmin = vmax;
        for (int j = 4; j < LP_QK_K; j += 4) {
            const float32x4_t v = vld1q_f32(x + j);
            vmax = vmaxq_f32(vmax, v);
            vmin = vminq_f32(vmin, v);
        }
        const float mx = vmaxvq_f32(vmax), mn = vminvq_f32(vmin);
        float max = mx, amax = mx;
        if (-mn > mx) {
            max = mn;
            amax = -mn;
        } else if (-mn == mx) { /* both +a and -a occur: the first one decides the sign */
            for (int j = 0; j < LP_QK_K; j++)
                if (x[j] == mx || x[j] == mn) { max = x[j]; break; }
        }
        if (!(amax > 0)) {
            memset(&y[i], 0, sizeof y[i]);
            continue;
        }
        const float iscale = -127.f / max;
        const float32x4_t vs = vdupq_n_f32(iscale);
        const int32x4_t top = vdupq_n_s32(127);
        for (int j = 0; j < LP_QK_K; j += 16) {
            int16x8_t h[2];
            for (int u = 0; u < 2; u++) {
                const int32x4_t a = vminq_s32(vcvtnq_s32_f32(vmulq_f32(vld1q_f32(x + j + 8 * u), vs)), top);
                const int32x4_t b = vminq_s32(vcvtnq_s32_f32(vmulq_f32(vld1q_f32(x + j + 8 * u + 4), vs)), top);
                h[u] = vcombine_s16(vqmovn_s32(a), vqmovn_s32(b));
            }
            const int8x16_t q = vcombine_s8(vqmovn_s16(h[0]), vqmovn_s16(h[1]));
            vst1q_s8(y[i].qs + j, q);
            y[i].bsums[j / 16] = vaddlvq_s8(q);
        }
        y[i].d = 1 / iscale;
    }
}

static void dequantize_row_q8_K(const void *vx, float *y, int64_t k) {
    const lp_block_q8_K *x = vx;
    for (int64_t i = 0; i < k / LP_QK_K; i++) {
        const float32x4_t d = vdupq_n_f32(x[i].d);
        for (int j = 0; j < LP_QK_K; j += 8, y += 8) {
            const int16x8_t q = vmovl_s8(vld1_s8(x[i].qs + j));
            vst1q_f32(y, vmulq_f32(d, vcvtq_f32_s32(vmovl_s16(vget_low_s16(q)))));
            vst1q_f32(y + 4, vmulq_f32(d, vcvtq_f32_s32(vmovl_high_s16(q))));
        }
    }
}

static void vec_dot_q8_K_q8_K(int n, float *s, const void *vx, const void *vy) {
    const lp_block_q8_K *x = vx, *y = vy;
    float sumf = 0;
    for (int i = 0; i < n / LP_QK_K; i++) {
        int32x4_t acc = vdupq_n_s32(0);
        for (int j = 0; j < LP_QK_K; j += 16) acc = dot16(acc, vld1q_s8(x[i].qs + j), vld1q_s8(y[i].qs + j));
        sumf += x[i].d * y[i].d * vaddvq_s32(acc);
    }
    *s = sumf;
}

/* y[0..15] = d * q - m for 16 quants given as bytes (signed when is_signed) */
static inline void store16(float *y, int8x16_t q, int is_signed, float d, float m) {
    const float32x4_t vd = vdupq_n_f32(d), vm = vdupq_n_f32(m);
    const uint8x16_t u = vreinterpretq_u8_s8(q);
    const int16x8_t lo = is_signed ? vmovl_s8(vget_low_s8(q)) : vreinterpretq_s16_u16(vmovl_u8(vget_low_u8(u)));
    const int16x8_t hi = is_signed ? vmovl_high_s8(q) : vreinterpretq_s16_u16(vmovl_high_u8(u));
    const int16x8_t h[2] = {lo, hi};
    for (int u = 0; u < 2; u++) {
        const float32x4_t a = vcvtq_f32_s32(vmovl_s16(vget_low_s16(h[u])));
        const float32x4_t b = vcvtq_f32_s32(vmovl_high_s16(h[u]));
        vst1q_f32(y + 8 * u, vsubq_f32(vmulq_f32(vd, a), vm));
        vst1q_f32(y + 8 * u + 4, vsubq_f32(vmulq_f32(vd, b), vm));
    }
}

/* ---- Q2_K ------------------------------------------------------------------------------------ */

/* the 2-bit quants of group g (16 values) of a Q2_K / Q3_K block */
static inline uint8x16_t q2_group(const uint8_t *qs, int g) {
    return vandq_u8(shr(vld1q_u8(qs + 32 * (g / 8) + 16 * (g % 2)), 2 * ((g / 2) % 4)), vdupq_n_u8(3));
}

static void vec_dot_q2_K_q8_K(int n, float *s, const void *vx, const void *vy) {
    const lp_block_q2_K *x = vx;
    const lp_block_q8_K *y = vy;
    float sumf = 0;
    for (int i = 0; i < n / LP_QK_K; i++) {
        const uint8x16_t sc = vld1q_u8(x[i].scales);
        const int16x8_t m0 = vreinterpretq_s16_u16(vmovl_u8(vget_low_u8(vshrq_n_u8(sc, 4))));
        const int16x8_t m1 = vreinterpretq_s16_u16(vmovl_high_u8(vshrq_n_u8(sc, 4)));
        const int16x8_t b0 = vld1q_s16(y[i].bsums), b1 = vld1q_s16(y[i].bsums + 8);
        int32x4_t pm = vmull_s16(vget_low_s16(m0), vget_low_s16(b0));
        pm = vmlal_high_s16(pm, m0, b0);
        pm = vmlal_s16(pm, vget_low_s16(m1), vget_low_s16(b1));
        pm = vmlal_high_s16(pm, m1, b1);
        int isum = 0;
        for (int g = 0; g < 16; g++)
            isum += (x[i].scales[g] & 0xF) * dot_16(vreinterpretq_s8_u8(q2_group(x[i].qs, g)), y[i].qs + 16 * g);
        const float dall = y[i].d * h2f(x[i].d), dmin = y[i].d * h2f(x[i].dmin);
        sumf += dall * isum - dmin * vaddvq_s32(pm);
    }
    *s = sumf;
}

static void dequantize_row_q2_K(const void *vx, float *y, int64_t k) {
    const lp_block_q2_K *x = vx;
    for (int64_t i = 0; i < k / LP_QK_K; i++) {
        const float d = h2f(x[i].d), min = h2f(x[i].dmin);
        for (int g = 0; g < 16; g++, y += 16) {
            const uint8_t sc = x[i].scales[g];
            store16(y, vreinterpretq_s8_u8(q2_group(x[i].qs, g)), 0, d * (sc & 0xF), min * (sc >> 4));
        }
    }
}

/* ---- Q3_K ------------------------------------------------------------------------------------ */

/* the quants of group g of a Q3_K block, -4..3 */
static inline int8x16_t q3_group(const lp_block_q3_K *b, int g) {
    const int h = g / 8, p = (g / 2) % 4, off = 16 * (g % 2);
    const uint8x16_t hb = vandq_u8(shr(vld1q_u8(b->hmask + off), 4 * h + p), vdupq_n_u8(1));
    const uint8x16_t q = vorrq_u8(q2_group(b->qs, g), vshlq_n_u8(hb, 2));
    return vsubq_s8(vreinterpretq_s8_u8(q), vdupq_n_s8(4));
}

static void vec_dot_q3_K_q8_K(int n, float *s, const void *vx, const void *vy) {
    const lp_block_q3_K *x = vx;
    const lp_block_q8_K *y = vy;
    float sumf = 0;
    for (int i = 0; i < n / LP_QK_K; i++) {
        int8_t sc[16];
        lp_q3_unpack_scales(x[i].scales, sc);
        int isum = 0;
        for (int g = 0; g < 16; g++) isum += sc[g] * dot_16(q3_group(&x[i], g), y[i].qs + 16 * g);
        sumf += y[i].d * h2f(x[i].d) * isum;
    }
    *s = sumf;
}

static void dequantize_row_q3_K(const void *vx, float *y, int64_t k) {
    const lp_block_q3_K *x = vx;
    for (int64_t i = 0; i < k / LP_QK_K; i++) {
        const float d_all = h2f(x[i].d);
        int8_t sc[16];
        lp_q3_unpack_scales(x[i].scales, sc);
        for (int g = 0; g < 16; g++, y += 16) {
            const float32x4_t dl = vdupq_n_f32(d_all * sc[g]);
            const int8x16_t q = q3_group(&x[i], g);
            const int16x8_t h[2] = {vmovl_s8(vget_low_s8(q)), vmovl_high_s8(q)};
            for (int u = 0; u < 2; u++) {
                vst1q_f32(y + 8 * u, vmulq_f32(dl, vcvtq_f32_s32(vmovl_s16(vget_low_s16(h[u])))));
                vst1q_f32(y + 8 * u + 4, vmulq_f32(dl, vcvtq_f32_s32(vmovl_high_s16(h[u]))));
            }
        }
    }
}

/* ---- Q4_K and Q5_K --------------------------------------------------------------------------- */

/* the 32 quants of sub-block j of a Q4_K / Q5_K block (qh NULL for Q4_K) */
static inline void k4_quants(const uint8_t *qs, const uint8_t *qh, int j, int8x16_t q[2]) {
    for (int u = 0; u < 2; u++) {
        const uint8x16_t bits = vld1q_u8(qs + 32 * (j / 2) + 16 * u);
        uint8x16_t v = j % 2 ? vshrq_n_u8(bits, 4) : vandq_u8(bits, vdupq_n_u8(0xF));
        if (qh) v = vorrq_u8(v, vshlq_n_u8(vandq_u8(shr(vld1q_u8(qh + 16 * u), j), vdupq_n_u8(1)), 4));
        q[u] = vreinterpretq_s8_u8(v);
    }
}

static inline float k4_dot(const uint8_t *scales, const uint8_t *qs, const uint8_t *qh, uint16_t d16, uint16_t dmin16,
                           const lp_block_q8_K *yb) {
    uint8_t sm[16];
    lp_k4_unpack_scales(scales, sm);
    const int16x8_t bs = vpaddq_s16(vld1q_s16(yb->bsums), vld1q_s16(yb->bsums + 8)); /* sums of 32 */
    const int16x8_t mins = vreinterpretq_s16_u16(vmovl_u8(vld1_u8(sm + 8)));
    const int summs = vaddvq_s32(vmlal_high_s16(vmull_s16(vget_low_s16(mins), vget_low_s16(bs)), mins, bs));
    int isum = 0;
    for (int j = 0; j < 8; j++) {
        int8x16_t q[2];
        k4_quants(qs, qh, j, q);
        isum += sm[j] * dot32(q, yb->qs + 32 * j);
    }
    return yb->d * h2f(d16) * isum - yb->d * h2f(dmin16) * summs;
}

static void vec_dot_q4_K_q8_K(int n, float *s, const void *vx, const void *vy) {
    const lp_block_q4_K *x = vx;
    const lp_block_q8_K *y = vy;
    float sumf = 0;
    for (int i = 0; i < n / LP_QK_K; i++) sumf += k4_dot(x[i].scales, x[i].qs, NULL, x[i].d, x[i].dmin, &y[i]);
    *s = sumf;
}

static void vec_dot_q5_K_q8_K(int n, float *s, const void *vx, const void *vy) {
    const lp_block_q5_K *x = vx;
    const lp_block_q8_K *y = vy;
    float sumf = 0;
    for (int i = 0; i < n / LP_QK_K; i++) sumf += k4_dot(x[i].scales, x[i].qs, x[i].qh, x[i].d, x[i].dmin, &y[i]);
    *s = sumf;
}

static inline void k4_dequant(const uint8_t *scales, const uint8_t *qs, const uint8_t *qh, uint16_t d16,
                              uint16_t dmin16, float *y) {
    const float d = h2f(d16), min = h2f(dmin16);
    uint8_t sm[16];
    lp_k4_unpack_scales(scales, sm);
    for (int j = 0; j < 8; j++) {
        int8x16_t q[2];
        k4_quants(qs, qh, j, q);
        store16(y + 32 * j, q[0], 0, d * sm[j], min * sm[8 + j]);
        store16(y + 32 * j + 16, q[1], 0, d * sm[j], min * sm[8 + j]);
    }
}

static void dequantize_row_q4_K(const void *vx, float *y, int64_t k) {
    const lp_block_q4_K *x = vx;
    for (int64_t i = 0; i < k / LP_QK_K; i++)
        k4_dequant(x[i].scales, x[i].qs, NULL, x[i].d, x[i].dmin, y + LP_QK_K * i);
}

static void dequantize_row_q5_K(const void *vx, float *y, int64_t k) {
    const lp_block_q5_K *x = vx;
    for (int64_t i = 0; i < k / LP_QK_K; i++)
        k4_dequant(x[i].scales, x[i].qs, x[i].qh, x[i].d, x[i].dmin, y + LP_QK_K * i);
}

/* ---- Q6_K ------------------------------------------------------------------------------------ */

/* the quants of group g of a Q6_K block, -32..31 */
static inline int8x16_t q6_group(const lp_block_q6_K *b, int g) {
    const int h = g / 8, p = (g / 2) % 4, off = 16 * (g % 2);
    const uint8x16_t ql = vld1q_u8(b->ql + 64 * h + 32 * (p & 1) + off);
    const uint8x16_t lo = p < 2 ? vandq_u8(ql, vdupq_n_u8(0xF)) : vshrq_n_u8(ql, 4);
    const uint8x16_t hi = vandq_u8(shr(vld1q_u8(b->qh + 32 * h + off), 2 * p), vdupq_n_u8(3));
    return vsubq_s8(vreinterpretq_s8_u8(vorrq_u8(lo, vshlq_n_u8(hi, 4))), vdupq_n_s8(32));
}

static void vec_dot_q6_K_q8_K(int n, float *s, const void *vx, const void *vy) {
    const lp_block_q6_K *x = vx;
    const lp_block_q8_K *y = vy;
    float sumf = 0;
    for (int i = 0; i < n / LP_QK_K; i++) {
        int isum = 0;
        for (int g = 0; g < 16; g++) isum += x[i].scales[g] * dot_16(q6_group(&x[i], g), y[i].qs + 16 * g);
        sumf += y[i].d * h2f(x[i].d) * isum;
    }
    *s = sumf;
}

static void dequantize_row_q6_K(const void *vx, float *y, int64_t k) {
    const lp_block_q6_K *x = vx;
    for (int64_t i = 0; i < k / LP_QK_K; i++) {
        const float d = h2f(x[i].d);
        for (int g = 0; g < 16; g++, y += 16) {
            const float32x4_t dl = vdupq_n_f32(d * x[i].scales[g]);
            const int8x16_t q = q6_group(&x[i], g);
            const int16x8_t h[2] = {vmovl_s8(vget_low_s8(q)), vmovl_high_s8(q)};
            for (int u = 0; u < 2; u++) {
                vst1q_f32(y + 8 * u, vmulq_f32(dl, vcvtq_f32_s32(vmovl_s16(vget_low_s16(h[u])))));
                vst1q_f32(y + 8 * u + 4, vmulq_f32(dl, vcvtq_f32_s32(vmovl_high_s16(h[u]))));
            }
        }
    }
}

void lp_register_kquants_neon(lp_type_traits *t) {
    lp_override(&t[LP_TYPE_Q2_K], dequantize_row_q2_K, NULL, vec_dot_q2_K_q8_K, NULL);
    lp_override(&t[LP_TYPE_Q3_K], dequantize_row_q3_K, NULL, vec_dot_q3_K_q8_K, NULL);
    lp_override(&t[LP_TYPE_Q4_K], dequantize_row_q4_K, NULL, vec_dot_q4_K_q8_K, NULL);
    lp_override(&t[LP_TYPE_Q5_K], dequantize_row_q5_K, NULL, vec_dot_q5_K_q8_K, NULL);
    lp_override(&t[LP_TYPE_Q6_K], dequantize_row_q6_K, NULL, vec_dot_q6_K_q8_K, NULL);
    lp_override(&t[LP_TYPE_Q8_K], dequantize_row_q8_K, quantize_row_q8_K, vec_dot_q8_K_q8_K, NULL);
}
#endif
