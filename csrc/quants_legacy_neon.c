/* NEON kernels: legacy formats and IQ4_NL (AArch64).
 *
 * As the AVX2 file: Q8_0/Q8_1 activation quantizers write exactly the scalar reference's bytes (FCVTAS
 * rounds halves away from zero, as roundf does), dequantizers give exactly the scalar floats (multiply,
 * then add), dot products agree with the scalar ones to rounding.
 */
#include "lp_core.h"

#if defined(__ARM_NEON) && defined(__aarch64__)
#include <arm_neon.h>
#include <string.h>

#include "lp_quants_legacy.h"

static inline float h2f(uint16_t h) {
    __fp16 f;
    memcpy(&f, &h, 2);
    return (float)f;
}

/* ---- Q8_0 / Q8_1 ------------------------------------------------------------------------------------ */
static inline float block_absmax(const float *x) {
    float32x4_t m = vabsq_f32(vld1q_f32(x));
    for (int k = 1; k < 8; k++) m = vmaxq_f32(m, vabsq_f32(vld1q_f32(x + 4 * k)));
    return vmaxvq_f32(m);
}

/* One Q8 block at scale amax / 127: stores the scale and the 32 values (rounded like roundf); returns the
 * sum of the values. */
static inline int quantize_block_q8(const float *x, uint16_t *dh, int8_t *qs, float *d_out) {
    const float d = block_absmax(x) / 127;
    const float id = d ? 1.0f / d : 0.0f;
    *dh = lp_fp32_to_fp16(d);
    *d_out = d;
    int32x4_t sum = vdupq_n_s32(0);
    for (int k = 0; k < 8; k += 2) {
        const int32x4_t a = vcvtaq_s32_f32(vmulq_n_f32(vld1q_f32(x + 4 * k), id));
        const int32x4_t b = vcvtaq_s32_f32(vmulq_n_f32(vld1q_f32(x + 4 * k + 4), id));
        sum = vaddq_s32(sum, vaddq_s32(a, b));
        const int16x8_t h = vcombine_s16(vmovn_s32(a), vmovn_s32(b));
        vst1_s8(qs + 4 * k, vmovn_s16(h));
    }
    return vaddvq_s32(sum);
}

static void quantize_row_q8_0(const float *x, void *vy, int64_t n) {
    lp_block_q8_0 *y = vy;
    float d;
    for (int64_t i = 0; i < n / LP_QK; i++, x += LP_QK) quantize_block_q8(x, &y[i].d, y[i].qs, &d);
}

static void quantize_row_q8_1(const float *x, void *vy, int64_t n) {
    lp_block_q8_1 *y = vy;
    for (int64_t i = 0; i < n / LP_QK; i++, x += LP_QK) {
        float d;
        const int sum = quantize_block_q8(x, &y[i].d, y[i].qs, &d);
        y[i].s = lp_fp32_to_fp16(sum * d);
    }
}

/* ---- unpacking ---------------------------------------------------------------------------------------- */
typedef struct {
    int8x16_t lo, hi; /* values 0..15, 16..31 */
} i8x32;

static inline i8x32 unpack_nibbles(const uint8_t *qs) {
    const uint8x16_t b = vld1q_u8(qs);
    return (i8x32){vreinterpretq_s8_u8(vandq_u8(b, vdupq_n_u8(0x0f))), vreinterpretq_s8_u8(vshrq_n_u8(b, 4))};
}

/* the fifth bits of a Q5 block, as 0x10 bytes */
static inline i8x32 high_bits(const uint8_t *qh) {
    static const uint8_t bit[16] = {1, 2, 4, 8, 16, 32, 64, 128, 1, 2, 4, 8, 16, 32, 64, 128};
    const uint8x16_t mask = vld1q_u8(bit), ten = vdupq_n_u8(0x10);
    const uint8x16_t lo = vcombine_u8(vdup_n_u8(qh[0]), vdup_n_u8(qh[1]));
    const uint8x16_t hi = vcombine_u8(vdup_n_u8(qh[2]), vdup_n_u8(qh[3]));
    return (i8x32){vreinterpretq_s8_u8(vandq_u8(vtstq_u8(lo, mask), ten)),
                   vreinterpretq_s8_u8(vandq_u8(vtstq_u8(hi, mask), ten))};
}

static inline i8x32 add_i8(i8x32 a, i8x32 b) { return (i8x32){vaddq_s8(a.lo, b.lo), vaddq_s8(a.hi, b.hi)}; }

static inline i8x32 sub_const(i8x32 a, int8_t c) {
    return (i8x32){vsubq_s8(a.lo, vdupq_n_s8(c)), vsubq_s8(a.hi, vdupq_n_s8(c))};
}

static inline i8x32 iq4nl_lookup(i8x32 q) {
    const int8x16_t t = vld1q_s8(lp_iq4nl_values);
    return (i8x32){vqtbl1q_s8(t, vreinterpretq_u8_s8(q.lo)), vqtbl1q_s8(t, vreinterpretq_u8_s8(q.hi))};
}

static inline i8x32 load_i8x32(const int8_t *p) { return (i8x32){vld1q_s8(p), vld1q_s8(p + 16)}; }

/* 16 int8 -> 16 floats, times d (plus m when given): the scalar dequantizers' exact values */
static inline void store16(int8x16_t q, float d, const float *m, float *y) {
    const int16x8_t h[2] = {vmovl_s8(vget_low_s8(q)), vmovl_s8(vget_high_s8(q))};
    for (int k = 0; k < 2; k++) {
        const int32x4_t w[2] = {vmovl_s16(vget_low_s16(h[k])), vmovl_s16(vget_high_s16(h[k]))};
        for (int l = 0; l < 2; l++) {
            float32x4_t v = vmulq_n_f32(vcvtq_f32_s32(w[l]), d);
            if (m) v = vaddq_f32(v, vdupq_n_f32(*m));
            vst1q_f32(y + 8 * k + 4 * l, v);
        }
    }
}

static inline void store32(i8x32 q, float d, const float *m, float *y) {
    store16(q.lo, d, m, y);
    store16(q.hi, d, m, y + 16);
}

static void dequantize_row_q4_0(const void *vx, float *y, int64_t n) {
    const lp_block_q4_0 *x = vx;
    for (int64_t i = 0; i < n / LP_QK; i++, y += LP_QK) store32(sub_const(unpack_nibbles(x[i].qs), 8), h2f(x[i].d), NULL, y);
}

static void dequantize_row_q4_1(const void *vx, float *y, int64_t n) {
    const lp_block_q4_1 *x = vx;
    for (int64_t i = 0; i < n / LP_QK; i++, y += LP_QK) {
        const float m = h2f(x[i].m);
        store32(unpack_nibbles(x[i].qs), h2f(x[i].d), &m, y);
    }
}

static void dequantize_row_q5_0(const void *vx, float *y, int64_t n) {
    const lp_block_q5_0 *x = vx;
    for (int64_t i = 0; i < n / LP_QK; i++, y += LP_QK)
        store32(sub_const(add_i8(unpack_nibbles(x[i].qs), high_bits(x[i].qh)), 16), h2f(x[i].d), NULL, y);
}

static void dequantize_row_q5_1(const void *vx, float *y, int64_t n) {
    const lp_block_q5_1 *x = vx;
    for (int64_t i = 0; i < n / LP_QK; i++, y += LP_QK) {
        const float m = h2f(x[i].m);
        store32(add_i8(unpack_nibbles(x[i].qs), high_bits(x[i].qh)), h2f(x[i].d), &m, y);
    }
}

static void dequantize_row_q8_0(const void *vx, float *y, int64_t n) {
    const lp_block_q8_0 *x = vx;
    for (int64_t i = 0; i < n / LP_QK; i++, y += LP_QK) store32(load_i8x32(x[i].qs), h2f(x[i].d), NULL, y);
}

static void dequantize_row_iq4_nl(const void *vx, float *y, int64_t n) {
    const lp_block_iq4_nl *x = vx;
    for (int64_t i = 0; i < n / LP_QK; i++, y += LP_QK)
        store32(iq4nl_lookup(unpack_nibbles(x[i].qs)), h2f(x[i].d), NULL, y);
}

/* ---- dot products ------------------------------------------------------------------------------------ */
/* sum of the 32 products x[j] * y[j] (int8 each; products fit int16) */
static inline int32_t dot32(i8x32 x, i8x32 y) {
#if defined(__ARM_FEATURE_DOTPROD)
    return vaddvq_s32(vdotq_s32(vdotq_s32(vdupq_n_s32(0), x.lo, y.lo), x.hi, y.hi));
#else
    int32x4_t s = vpaddlq_s16(vmull_s8(vget_low_s8(x.lo), vget_low_s8(y.lo)));
    s = vpadalq_s16(s, vmull_high_s8(x.lo, y.lo));
    s = vpadalq_s16(s, vmull_s8(vget_low_s8(x.hi), vget_low_s8(y.hi)));
    s = vpadalq_s16(s, vmull_high_s8(x.hi, y.hi));
    return vaddvq_s32(s);
#endif
}

static void vec_dot_q4_0_q8_0(int n, float *s, const void *vx, const void *vy) {
    const lp_block_q4_0 *x = vx;
    const lp_block_q8_0 *y = vy;
    float sum = 0.0f;
    for (int i = 0; i < n / LP_QK; i++)
        sum += dot32(sub_const(unpack_nibbles(x[i].qs), 8), load_i8x32(y[i].qs)) * (h2f(x[i].d) * h2f(y[i].d));
    *s = sum;
}

static void vec_dot_q4_1_q8_1(int n, float *s, const void *vx, const void *vy) {
    const lp_block_q4_1 *x = vx;
    const lp_block_q8_1 *y = vy;
    float sum = 0.0f;
    for (int i = 0; i < n / LP_QK; i++)
        sum += (h2f(x[i].d) * h2f(y[i].d)) * dot32(unpack_nibbles(x[i].qs), load_i8x32(y[i].qs)) +
               h2f(x[i].m) * h2f(y[i].s);
    *s = sum;
}

static void vec_dot_q5_0_q8_0(int n, float *s, const void *vx, const void *vy) {
    const lp_block_q5_0 *x = vx;
    const lp_block_q8_0 *y = vy;
    float sum = 0.0f;
    for (int i = 0; i < n / LP_QK; i++) {
        const i8x32 q = sub_const(add_i8(unpack_nibbles(x[i].qs), high_bits(x[i].qh)), 16);
        sum += (h2f(x[i].d) * h2f(y[i].d)) * dot32(q, load_i8x32(y[i].qs));
    }
    *s = sum;
}

static void vec_dot_q5_1_q8_1(int n, float *s, const void *vx, const void *vy) {
    const lp_block_q5_1 *x = vx;
    const lp_block_q8_1 *y = vy;
    float sum = 0.0f;
    for (int i = 0; i < n / LP_QK; i++) {
        const i8x32 q = add_i8(unpack_nibbles(x[i].qs), high_bits(x[i].qh));
        sum += (h2f(x[i].d) * h2f(y[i].d)) * dot32(q, load_i8x32(y[i].qs)) + h2f(x[i].m) * h2f(y[i].s);
    }
    *s = sum;
}

static void vec_dot_q8_0_q8_0(int n, float *s, const void *vx, const void *vy) {
    const lp_block_q8_0 *x = vx;
    const lp_block_q8_0 *y = vy;
    float sum = 0.0f;
    for (int i = 0; i < n / LP_QK; i++)
        sum += dot32(load_i8x32(x[i].qs), load_i8x32(y[i].qs)) * (h2f(x[i].d) * h2f(y[i].d));
    *s = sum;
}

static void vec_dot_iq4_nl_q8_0(int n, float *s, const void *vx, const void *vy) {
    const lp_block_iq4_nl *x = vx;
    const lp_block_q8_0 *y = vy;
    float sum = 0.0f;
    for (int i = 0; i < n / LP_QK; i++)
        sum += (h2f(y[i].d) * h2f(x[i].d)) * dot32(iq4nl_lookup(unpack_nibbles(x[i].qs)), load_i8x32(y[i].qs));
    *s = sum;
}

void lp_register_legacy_neon(lp_type_traits *t) { LP_LEGACY_SIMD_REGISTER(t); }
#endif
