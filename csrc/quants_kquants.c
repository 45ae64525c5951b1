/* K-quants Q2_K..Q6_K and Q8_K: scalar reference kernels.
 *
 * The quantizers write the bytes the reference quantizer writes without an importance matrix:
 * every float operation below is evaluated in the reference's order (this file is built with
 * -ffp-contract=off, so nothing is fused), and a change of order changes the output bytes.
 * The dot products multiply a K-quant row by a Q8_K row (the quantized activations).
 */
#include <math.h>
#include <string.h>

#include "lp_core.h"
#include "lp_kquants.h"

#define GROUP_MAX_EPS 1e-15f

static inline int imin(int a, int b) { return a < b ? a : b; }
static inline int imax(int a, int b) { return a > b ? a : b; }

/* Round to nearest, ties to even, by the float magic-number trick (exact for |f| < 2^22). */
static inline int nearest_int(float f) {
    float v = f + 12582912.f;
    int32_t i;
    memcpy(&i, &v, 4);
    return (i & 0x007fffff) - 0x00400000;
}

/* Asymmetric fit x ~ scale * L + min (L in 0..nmax, min <= 0) with weights w: a first guess from
 * the range, then nstep+1 trial grids, keeping the one with the least weighted error.
 * Returns scale; *the_min receives -min. */
static float make_qkx2_quants(int n, int nmax, const float *x, const float *w, uint8_t *L, float *the_min,
                              uint8_t *Laux, float rmin, float rdelta, int nstep, int use_mad) {
    float min = x[0], max = x[0];
    float sum_w = w[0];
    float sum_x = sum_w * x[0];
    for (int i = 1; i < n; i++) {
        if (x[i] < min) min = x[i];
        if (x[i] > max) max = x[i];
        sum_w += w[i];
        sum_x += w[i] * x[i];
    }
    if (min > 0) min = 0;
    if (max == min) {
        for (int i = 0; i < n; i++) L[i] = 0;
        *the_min = -min;
        return 0.f;
    }
    float iscale = nmax / (max - min);
    float scale = 1 / iscale;
    float best_mad = 0;
    for (int i = 0; i < n; i++) {
        L[i] = (uint8_t)imax(0, imin(nmax, nearest_int(iscale * (x[i] - min))));
        float diff = scale * L[i] + min - x[i];
        diff = use_mad ? fabsf(diff) : diff * diff;
        best_mad += w[i] * diff;
    }
    for (int is = 0; is <= nstep; is++) {
        iscale = (rmin + rdelta * is + nmax) / (max - min);
        float sum_l = 0, sum_l2 = 0, sum_xl = 0;
        for (int i = 0; i < n; i++) {
            int l = imax(0, imin(nmax, nearest_int(iscale * (x[i] - min))));
            Laux[i] = (uint8_t)l;
            sum_l += w[i] * l;
            sum_l2 += w[i] * l * l;
            sum_xl += w[i] * l * x[i];
        }
        float D = sum_w * sum_l2 - sum_l * sum_l;
        if (D > 0) {
            float this_scale = (sum_w * sum_xl - sum_x * sum_l) / D;
            float this_min = (sum_l2 * sum_x - sum_l * sum_xl) / D;
            if (this_min > 0) {
                this_min = 0;
                this_scale = sum_xl / sum_l2;
            }
            float mad = 0;
            for (int i = 0; i < n; i++) {
                float diff = this_scale * Laux[i] + this_min - x[i];
                diff = use_mad ? fabsf(diff) : diff * diff;
                mad += w[i] * diff;
            }
            if (mad < best_mad) {
                memcpy(L, Laux, (size_t)n);
                best_mad = mad;
                scale = this_scale;
                min = this_min;
            }
        }
    }
    *the_min = -min;
    return scale;
}

/* Symmetric fit x ~ scale * (L - nmax), L in 0..2*nmax-1, weights x^2: the scale from the largest
 * magnitude, then 18 nearby grids, keeping the best weighted least-squares scale. */
static float make_qx_quants(int n, int nmax, const float *x, int8_t *L) {
    float max = 0, amax = 0;
    for (int i = 0; i < n; i++) {
        float ax = fabsf(x[i]);
        if (ax > amax) { amax = ax; max = x[i]; }
    }
    if (amax < GROUP_MAX_EPS) {
        for (int i = 0; i < n; i++) L[i] = 0;
        return 0.f;
    }
    float iscale = -nmax / max;
    float sumlx = 0, suml2 = 0;
    for (int i = 0; i < n; i++) {
        int l = imax(-nmax, imin(nmax - 1, nearest_int(iscale * x[i])));
        L[i] = (int8_t)(l + nmax);
        float w = x[i] * x[i];
        sumlx += w * x[i] * l;
        suml2 += w * l * l;
    }
    float scale = suml2 ? sumlx / suml2 : 0.0f;
    float best = scale * sumlx;
    for (int is = -9; is <= 9; is++) {
        if (is == 0) continue;
        iscale = -(nmax + 0.1f * is) / max;
        sumlx = suml2 = 0;
        for (int i = 0; i < n; i++) {
            int l = imax(-nmax, imin(nmax - 1, nearest_int(iscale * x[i])));
            float w = x[i] * x[i];
            sumlx += w * x[i] * l;
            suml2 += w * l * l;
        }
        if (suml2 > 0 && sumlx * sumlx > best * suml2) {
            for (int i = 0; i < n; i++)
                L[i] = (int8_t)(nmax + imax(-nmax, imin(nmax - 1, nearest_int(iscale * x[i]))));
            scale = sumlx / suml2;
            best = scale * sumlx;
        }
    }
    return scale;
}

/* Symmetric fit for Q3_K: start from the largest magnitude, then move single quants while that
 * improves the weighted (x^2) least-squares fit, for up to 5 passes. L is left offset by nmax. */
static float make_q3_quants(int n, int nmax, const float *x, int8_t *L) {
    float max = 0, amax = 0;
    for (int i = 0; i < n; i++) {
        float ax = fabsf(x[i]);
        if (ax > amax) { amax = ax; max = x[i]; }
    }
    if (amax < GROUP_MAX_EPS) {
        for (int i = 0; i < n; i++) L[i] = 0;
        return 0.f;
    }
    float iscale = -nmax / max;
    float sumlx = 0, suml2 = 0;
    for (int i = 0; i < n; i++) {
        int l = imax(-nmax, imin(nmax - 1, nearest_int(iscale * x[i])));
        L[i] = (int8_t)l;
        float w = x[i] * x[i];
        sumlx += w * x[i] * l;
        suml2 += w * l * l;
    }
    for (int itry = 0; itry < 5; itry++) {
        int n_changed = 0;
        for (int i = 0; i < n; i++) {
            float w = x[i] * x[i];
            float slx = sumlx - w * x[i] * L[i];
            if (slx > 0) {
                float sl2 = suml2 - w * L[i] * L[i];
                int new_l = imax(-nmax, imin(nmax - 1, nearest_int(x[i] * sl2 / slx)));
                if (new_l != L[i]) {
                    slx += w * x[i] * new_l;
                    sl2 += w * new_l * new_l;
                    if (sl2 > 0 && slx * slx * suml2 > sumlx * sumlx * sl2) {
                        L[i] = (int8_t)new_l;
                        sumlx = slx;
                        suml2 = sl2;
                        n_changed++;
                    }
                }
            }
        }
        if (!n_changed) break;
    }
    for (int i = 0; i < n; i++) L[i] = (int8_t)(L[i] + nmax);
    return sumlx / suml2;
}

/* 4 values of 2 bits per byte: qs[32*h + l] holds L[128*h + 32*s + l] at bits 2*s (Q2_K and Q3_K). */
static void pack_2bit(const uint8_t *L, uint8_t *qs) {
    for (int j = 0; j < LP_QK_K; j += 128)
        for (int l = 0; l < 32; l++)
            qs[j / 4 + l] = (uint8_t)(L[j + l] | (L[j + l + 32] << 2) | (L[j + l + 64] << 4) | (L[j + l + 96] << 6));
}

/* ---- Q2_K ------------------------------------------------------------------------------------ */

void lp_q2_K_finish(const float *x, const float *scales, const float *mins, uint8_t *L, lp_block_q2_K *y) {
    float max_scale = 0, max_min = 0;
    for (int j = 0; j < 16; j++) {
        if (scales[j] > max_scale) max_scale = scales[j];
        if (mins[j] > max_min) max_min = mins[j];
    }
    if (max_scale > 0) {
        float iscale = 15.f / max_scale;
        for (int j = 0; j < 16; j++) y->scales[j] = (uint8_t)nearest_int(iscale * scales[j]);
        y->d = lp_fp32_to_fp16(max_scale / 15.f);
    } else {
        memset(y->scales, 0, 16);
        y->d = lp_fp32_to_fp16(0.f);
    }
    if (max_min > 0) {
        float iscale = 15.f / max_min;
        for (int j = 0; j < 16; j++) y->scales[j] |= (uint8_t)(nearest_int(iscale * mins[j]) << 4);
        y->dmin = lp_fp32_to_fp16(max_min / 15.f);
    } else {
        y->dmin = lp_fp32_to_fp16(0.f);
    }
    for (int j = 0; j < 16; j++) {
        const float d = lp_fp16_to_fp32(y->d) * (y->scales[j] & 0xF);
        if (!d) continue; /* keeps the quants of the sub-block fit */
        const float dm = lp_fp16_to_fp32(y->dmin) * (y->scales[j] >> 4);
        for (int ii = 0; ii < 16; ii++)
            L[16 * j + ii] = (uint8_t)imax(0, imin(3, nearest_int((x[16 * j + ii] + dm) / d)));
    }
    pack_2bit(L, y->qs);
}

static void quantize_row_q2_K_ref(const float *x, void *vy, int64_t k) {
    lp_block_q2_K *y = vy;
    uint8_t L[LP_QK_K], Laux[16];
    float weights[16], mins[16], scales[16];
    for (int64_t i = 0; i < k / LP_QK_K; i++, x += LP_QK_K) {
        for (int j = 0; j < 16; j++) {
            for (int l = 0; l < 16; l++) weights[l] = fabsf(x[16 * j + l]);
            scales[j] = make_qkx2_quants(16, 3, x + 16 * j, weights, L + 16 * j, &mins[j], Laux, -0.5f, 0.1f, 15, 1);
        }
        lp_q2_K_finish(x, scales, mins, L, &y[i]);
    }
}

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

void lp_q3_K_finish(const float *x, const float *scales, int8_t *L, lp_block_q3_K *y) {
    float max_scale = 0, amax = 0;
    for (int j = 0; j < 16; j++) {
        float scale = fabsf(scales[j]);
        if (scale > amax) { amax = scale; max_scale = scales[j]; }
    }
    memset(y->scales, 0, 12);
    if (max_scale) {
        float iscale = -32.f / max_scale;
        for (int j = 0; j < 16; j++) {
            int8_t l8 = (int8_t)nearest_int(iscale * scales[j]);
            int l = imax(-32, imin(31, l8)) + 32;
            if (j < 8) y->scales[j] = (uint8_t)(l & 0xF);
            else y->scales[j - 8] |= (uint8_t)((l & 0xF) << 4);
            y->scales[j % 4 + 8] |= (uint8_t)((l >> 4) << (2 * (j / 4)));
        }
        y->d = lp_fp32_to_fp16(1 / iscale);
    } else {
        y->d = lp_fp32_to_fp16(0.f);
    }
    int8_t sc[16];
    lp_q3_unpack_scales(y->scales, sc);
    for (int j = 0; j < 16; j++) {
        float d = lp_fp16_to_fp32(y->d) * sc[j];
        if (!d) continue;
        for (int ii = 0; ii < 16; ii++)
            L[16 * j + ii] = (int8_t)(imax(-4, imin(3, nearest_int(x[16 * j + ii] / d))) + 4);
    }
    memset(y->hmask, 0, 32);
    uint8_t low[LP_QK_K];
    for (int j = 0; j < LP_QK_K; j++) {
        int l = L[j];
        if (l > 3) {
            y->hmask[j % 32] |= (uint8_t)(1 << (j / 32));
            l -= 4;
        }
        low[j] = (uint8_t)l;
    }
    pack_2bit(low, y->qs);
}

static void quantize_row_q3_K_ref(const float *x, void *vy, int64_t k) {
    lp_block_q3_K *y = vy;
    int8_t L[LP_QK_K];
    float scales[16];
    for (int64_t i = 0; i < k / LP_QK_K; i++, x += LP_QK_K) {
        for (int j = 0; j < 16; j++) scales[j] = make_q3_quants(16, 4, x + 16 * j, L + 16 * j);
        lp_q3_K_finish(x, scales, L, &y[i]);
    }
}

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

/* The sub-block fits of a Q4_K / Q5_K block: scales[8], mins[8] and the quants L (0..nmax) */
static void k4_fit(const float *x, int nmax, float rmin, int nstep, float *scales, float *mins, uint8_t *L) {
    uint8_t Laux[32];
    float weights[32];
    for (int j = 0; j < 8; j++) {
        float sum_x2 = 0;
        for (int l = 0; l < 32; l++) sum_x2 += x[32 * j + l] * x[32 * j + l];
        float av_x = sqrtf(sum_x2 / 32);
        for (int l = 0; l < 32; l++) weights[l] = av_x + fabsf(x[32 * j + l]);
        scales[j] = make_qkx2_quants(32, nmax, x + 32 * j, weights, L + 32 * j, &mins[j], Laux, rmin, 0.1f, nstep, 0);
    }
}

/* From the fits to the packed scales, d, dmin and the final quants L of a Q4_K / Q5_K block */
static void k4_finish(const float *x, int nmax, const float *scales, const float *mins, uint8_t *L,
                      uint8_t *scales_out, uint16_t *d_out, uint16_t *dmin_out) {
    float max_scale = 0, max_min = 0;
    for (int j = 0; j < 8; j++) {
        if (scales[j] > max_scale) max_scale = scales[j];
        if (mins[j] > max_min) max_min = mins[j];
    }
    float inv_scale = max_scale > 0 ? 63.f / max_scale : 0.f;
    float inv_min = max_min > 0 ? 63.f / max_min : 0.f;
    for (int j = 0; j < 8; j++) {
        uint8_t ls = (uint8_t)nearest_int(inv_scale * scales[j]);
        uint8_t lm = (uint8_t)nearest_int(inv_min * mins[j]);
        ls = ls < 63 ? ls : 63;
        lm = lm < 63 ? lm : 63;
        if (j < 4) {
            scales_out[j] = ls;
            scales_out[j + 4] = lm;
        } else {
            scales_out[j + 4] = (uint8_t)((ls & 0xF) | ((lm & 0xF) << 4));
            scales_out[j - 4] |= (uint8_t)((ls >> 4) << 6);
            scales_out[j] |= (uint8_t)((lm >> 4) << 6);
        }
    }
    *d_out = lp_fp32_to_fp16(max_scale / 63.f);
    *dmin_out = lp_fp32_to_fp16(max_min / 63.f);
    for (int j = 0; j < 8; j++) {
        uint8_t sc, m;
        lp_k4_scale_min(j, scales_out, &sc, &m);
        const float d = lp_fp16_to_fp32(*d_out) * sc;
        if (!d) continue;
        const float dm = lp_fp16_to_fp32(*dmin_out) * m;
        for (int ii = 0; ii < 32; ii++)
            L[32 * j + ii] = (uint8_t)imax(0, imin(nmax, nearest_int((x[32 * j + ii] + dm) / d)));
    }
}

void lp_q4_K_finish(const float *x, const float *scales, const float *mins, uint8_t *L, lp_block_q4_K *y) {
    k4_finish(x, 15, scales, mins, L, y->scales, &y->d, &y->dmin);
    for (int j = 0; j < LP_QK_K; j += 64)
        for (int l = 0; l < 32; l++) y->qs[j / 2 + l] = (uint8_t)(L[j + l] | (L[j + l + 32] << 4));
}

/* Q4_K (nmax 15, rmin -1, 20 steps) and Q5_K (31, -0.5, 15) rows */
static void quantize_row_k4_ref(const float *x, char *y, size_t ysize, int64_t k, int nmax, float rmin, int nstep,
                                int q5) {
    uint8_t L[LP_QK_K];
    float scales[8], mins[8];
    for (int64_t i = 0; i < k / LP_QK_K; i++, x += LP_QK_K) {
        k4_fit(x, nmax, rmin, nstep, scales, mins, L);
        void *out = y + (size_t)i * ysize;
        if (q5) lp_q5_K_finish(x, scales, mins, L, out);
        else lp_q4_K_finish(x, scales, mins, L, out);
    }
}

static void quantize_row_q4_K_ref(const float *x, void *vy, int64_t k) {
    quantize_row_k4_ref(x, vy, sizeof(lp_block_q4_K), k, 15, -1.f, 20, 0);
}

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

void lp_q5_K_finish(const float *x, const float *scales, const float *mins, uint8_t *L, lp_block_q5_K *y) {
    k4_finish(x, 31, scales, mins, L, y->scales, &y->d, &y->dmin);
    memset(y->qh, 0, 32);
    for (int j = 0; j < LP_QK_K; j += 64) {
        for (int l = 0; l < 32; l++) {
            int l1 = L[j + l], l2 = L[j + l + 32];
            if (l1 > 15) { l1 -= 16; y->qh[l] |= (uint8_t)(1 << (j / 32)); }
            if (l2 > 15) { l2 -= 16; y->qh[l] |= (uint8_t)(2 << (j / 32)); }
            y->qs[j / 2 + l] = (uint8_t)(l1 | (l2 << 4));
        }
    }
}

static void quantize_row_q5_K_ref(const float *x, void *vy, int64_t k) {
    quantize_row_k4_ref(x, vy, sizeof(lp_block_q5_K), k, 31, -0.5f, 15, 1);
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

void lp_q6_K_finish(const float *x, const float *scales, int8_t *L, lp_block_q6_K *y) {
    float max_scale = 0, max_abs_scale = 0;
    for (int ib = 0; ib < 16; ib++) {
        if (fabsf(scales[ib]) > max_abs_scale) {
            max_abs_scale = fabsf(scales[ib]);
            max_scale = scales[ib];
        }
    }
    if (max_abs_scale < GROUP_MAX_EPS) {
        memset(y, 0, sizeof *y);
        return;
    }
    float iscale = -128.f / max_scale;
    y->d = lp_fp32_to_fp16(1 / iscale);
    for (int ib = 0; ib < 16; ib++) y->scales[ib] = (int8_t)imin(127, nearest_int(iscale * scales[ib]));
    for (int j = 0; j < 16; j++) {
        float d = lp_fp16_to_fp32(y->d) * y->scales[j];
        if (!d) continue;
        for (int ii = 0; ii < 16; ii++)
            L[16 * j + ii] = (int8_t)(imax(-32, imin(31, nearest_int(x[16 * j + ii] / d))) + 32);
    }
    for (int j = 0; j < LP_QK_K; j += 128) {
        uint8_t *ql = y->ql + j / 2, *qh = y->qh + j / 4;
        for (int l = 0; l < 32; l++) {
            const uint8_t q1 = L[j + l], q2 = L[j + l + 32], q3 = L[j + l + 64], q4 = L[j + l + 96];
            ql[l] = (uint8_t)((q1 & 0xF) | ((q3 & 0xF) << 4));
            ql[l + 32] = (uint8_t)((q2 & 0xF) | ((q4 & 0xF) << 4));
            qh[l] = (uint8_t)((q1 >> 4) | ((q2 >> 4) << 2) | ((q3 >> 4) << 4) | ((q4 >> 4) << 6));
        }
    }
}

static void quantize_row_q6_K_ref(const float *x, void *vy, int64_t k) {
    lp_block_q6_K *y = vy;
    int8_t L[LP_QK_K];
    float scales[16];
    for (int64_t i = 0; i < k / LP_QK_K; i++, x += LP_QK_K) {
        for (int ib = 0; ib < 16; ib++) scales[ib] = make_qx_quants(16, 32, x + 16 * ib, L + 16 * ib);
        lp_q6_K_finish(x, scales, L, &y[i]);
    }
}

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

static void quantize_row_q8_K_ref(const float *x, void *vy, int64_t k) {
    lp_block_q8_K *y = vy;
    for (int64_t i = 0; i < k / LP_QK_K; i++, x += LP_QK_K) {
        float max = 0, amax = 0;
        for (int j = 0; j < LP_QK_K; j++) {
            float ax = fabsf(x[j]);
            if (ax > amax) { amax = ax; max = x[j]; }
        }
        if (!amax) {
            memset(&y[i], 0, sizeof y[i]);
            continue;
        }
        const float iscale = -127.f / max;
        for (int j = 0; j < LP_QK_K; j++) y[i].qs[j] = (int8_t)imin(127, nearest_int(iscale * x[j]));
        for (int j = 0; j < 16; j++) {
            int sum = 0;
            for (int ii = 0; ii < 16; ii++) sum += y[i].qs[16 * j + ii];
            y[i].bsums[j] = (int16_t)sum;
        }
        y[i].d = 1 / iscale;
    }
}

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
        {LP_TYPE_Q2_K, "q2_K", sizeof(lp_block_q2_K), dequantize_row_q2_K, quantize_row_q2_K_ref, vec_dot_q2_K_q8_K},
        {LP_TYPE_Q3_K, "q3_K", sizeof(lp_block_q3_K), dequantize_row_q3_K, quantize_row_q3_K_ref, vec_dot_q3_K_q8_K},
        {LP_TYPE_Q4_K, "q4_K", sizeof(lp_block_q4_K), dequantize_row_q4_K, quantize_row_q4_K_ref, vec_dot_q4_K_q8_K},
        {LP_TYPE_Q5_K, "q5_K", sizeof(lp_block_q5_K), dequantize_row_q5_K, quantize_row_q5_K_ref, vec_dot_q5_K_q8_K},
        {LP_TYPE_Q6_K, "q6_K", sizeof(lp_block_q6_K), dequantize_row_q6_K, quantize_row_q6_K_ref, vec_dot_q6_K_q8_K},
        {LP_TYPE_Q8_K, "q8_K", sizeof(lp_block_q8_K), dequantize_row_q8_K, quantize_row_q8_K_ref, vec_dot_q8_K_q8_K},
    };
    for (size_t i = 0; i < sizeof k / sizeof k[0]; i++)
        t[k[i].type] = (lp_type_traits){k[i].name, LP_QK_K, k[i].size, LP_TYPE_Q8_K,
                                        k[i].to_float, k[i].from_float, k[i].from_float, k[i].vec_dot, NULL};
}
