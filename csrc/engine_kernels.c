/* Scalar reference versions of the engine's small kernels (norm, SwiGLU, softmax, attention dots).
 * The SIMD files override these; tests compare both.
 */
#include <math.h>

#include "lp_core.h"
#include "lp_engine.h"

static void rms_norm(int n, const float *x, const float *w, float eps, float *y) {
    double sum = 0;
    for (int i = 0; i < n; i++) sum += (double)(x[i] * x[i]);
    const float scale = 1.0f / sqrtf((float)(sum / n) + eps);
    for (int i = 0; i < n; i++) y[i] = (x[i] * scale) * w[i];
}

static void swiglu(int n, float *a, const float *b) {
    for (int i = 0; i < n; i++) a[i] = a[i] / (1.0f + expf(-a[i])) * b[i];
}

static double softmax_exp(int n, const float *x, float max, float *y) {
    double sum = 0;
    for (int i = 0; i < n; i++) {
        y[i] = expf(x[i] - max);
        sum += y[i];
    }
    return sum;
}

static void attn_scores_f16(int hd, int n, const uint16_t *q, const uint16_t *k, int64_t stride, float *s,
                            int single) {
    (void)single;
    float qf[hd];
    for (int d = 0; d < hd; d++) qf[d] = lp_fp16_to_fp32(q[d]);
    for (int j = 0; j < n; j++) {
        const uint16_t *kj = k + j * stride;
        double sum = 0;
        for (int d = 0; d < hd; d++) sum += (double)(qf[d] * lp_fp16_to_fp32(kj[d]));
        s[j] = (float)sum;
    }
}

static void attn_values_f16(int hd, int n, const uint16_t *p, const uint16_t *v, int64_t stride, float *out,
                            int single) {
    (void)single;
    for (int d = 0; d < hd; d++) {
        const uint16_t *vd = v + d * stride;
        double sum = 0;
        for (int j = 0; j < n; j++) sum += (double)(lp_fp16_to_fp32(p[j]) * lp_fp16_to_fp32(vd[j]));
        out[d] = (float)sum;
    }
}

static void f32_to_f16(int n, const float *x, uint16_t *y) {
    for (int i = 0; i < n; i++) y[i] = lp_fp32_to_fp16(x[i]);
}

static void axpy(int n, float a, const float *x, float *y) {
    for (int i = 0; i < n; i++) y[i] += a * x[i];
}

static void rope(int hd, const float *cs, float *x, int r0, int r1) {
    for (int r = r0; r < r1; r += 2) {
        int i0 = r % hd;
        float c = cs[i0], s = cs[i0 + 1], x0 = x[r], x1 = x[r + 1];
        x[r] = x0 * c - x1 * s;
        x[r + 1] = x0 * s + x1 * c;
    }
}

static void lora_up(int r0, int r1, int rank, const float *c, const float *b, float *y) {
    for (int r = r0; r < r1; r++) {
        float acc = y[r];
        for (int j = 0; j < rank; j++) acc += c[j] * b[LP_LORA_B_AT(r, j, rank)];
        y[r] = acc;
    }
}

static void lora_up_f16(int r0, int r1, int rank, const float *c, const uint16_t *b, float *y) {
    for (int r = r0; r < r1; r++) {
        float acc = y[r];
        for (int j = 0; j < rank; j++) acc += c[j] * lp_fp16_to_fp32(b[LP_LORA_B_AT(r, j, rank)]);
        y[r] = acc;
    }
}

static float dot_f16_f32(int n, const uint16_t *a, const float *x) {
    double sum = 0;
    for (int i = 0; i < n; i++) sum += (double)lp_fp16_to_fp32(a[i]) * x[i];
    return (float)sum;
}

void lp_engine_kernels_scalar(lp_engine_kernels *k) {
    k->rms_norm = rms_norm;
    k->swiglu = swiglu;
    k->softmax_exp = softmax_exp;
    k->attn_scores_f16 = attn_scores_f16;
    k->attn_values_f16 = attn_values_f16;
    k->f32_to_f16 = f32_to_f16;
    k->rope = rope;
    k->lora_up = lora_up;
    k->lora_up_f16 = lora_up_f16;
    k->dot_f16_f32 = dot_f16_f32;
    k->axpy = axpy;
}
