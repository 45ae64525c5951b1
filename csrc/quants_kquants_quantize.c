/* K-quants Q2_K..Q6_K and Q8_K: the scalar reference quantizers (dequantizers and dot products are in
 * quants_kquants.c).
 *
 * They write the bytes the reference quantizer writes without an importance matrix: every float operation
 * below is evaluated in the reference's order (this file is built with -ffp-contract=off, so nothing is
 * fused), and a change of order changes the output bytes. Each weight quantizer is a fit per sub-block
 * followed by lp_qN_K_finish (scales, final quants, packing), which the AVX2 quantizers share.
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

/* The start of the symmetric fits: the signed value of the first x of largest magnitude, or 0 (with L
 * cleared) when that magnitude is below GROUP_MAX_EPS. */
static float symmetric_max(int n, const float *x, int8_t *L) {
    float max = 0, amax = 0;
    for (int i = 0; i < n; i++) {
        float ax = fabsf(x[i]);
        if (ax > amax) { amax = ax; max = x[i]; }
    }
    if (amax < GROUP_MAX_EPS) {
        for (int i = 0; i < n; i++) L[i] = 0;
        return 0.f;
    }
    return max;
}

/* One grid of the symmetric fits: l = nearest(iscale * x) clamped to -nmax..nmax-1 (stored in L plus
 * offset, unless L is NULL), and Σ w x l, Σ w l² with weights w = x^2. */
static void symmetric_grid(int n, int nmax, const float *x, float iscale, int8_t *L, int offset, float *sumlx,
                           float *suml2) {
    float slx = 0, sl2 = 0;
    for (int i = 0; i < n; i++) {
        int l = imax(-nmax, imin(nmax - 1, nearest_int(iscale * x[i])));
        if (L) L[i] = (int8_t)(l + offset);
        float w = x[i] * x[i];
        slx += w * x[i] * l;
        sl2 += w * l * l;
    }
    *sumlx = slx;
    *suml2 = sl2;
}

/* Symmetric fit x ~ scale * (L - nmax), L in 0..2*nmax-1, weights x^2: the scale from the largest
 * magnitude, then 18 nearby grids, keeping the best weighted least-squares scale. */
static float make_qx_quants(int n, int nmax, const float *x, int8_t *L) {
    const float max = symmetric_max(n, x, L);
    if (max == 0) return 0.f;
    float sumlx, suml2;
    symmetric_grid(n, nmax, x, -nmax / max, L, nmax, &sumlx, &suml2);
    float scale = suml2 ? sumlx / suml2 : 0.0f;
    float best = scale * sumlx;
    for (int is = -9; is <= 9; is++) {
        if (is == 0) continue;
        const float iscale = -(nmax + 0.1f * is) / max;
        symmetric_grid(n, nmax, x, iscale, NULL, 0, &sumlx, &suml2);
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
    const float max = symmetric_max(n, x, L);
    if (max == 0) return 0.f;
    float sumlx, suml2;
    symmetric_grid(n, nmax, x, -nmax / max, L, 0, &sumlx, &suml2);
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

void lp_quantize_row_q2_K_ref(const float *x, void *vy, int64_t k) {
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

void lp_quantize_row_q4_K_ref(const float *x, void *vy, int64_t k) {
    quantize_row_k4_ref(x, vy, sizeof(lp_block_q4_K), k, 15, -1.f, 20, 0);
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

void lp_quantize_row_q5_K_ref(const float *x, void *vy, int64_t k) {
    quantize_row_k4_ref(x, vy, sizeof(lp_block_q5_K), k, 31, -0.5f, 15, 1);
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

/* Q3_K (make_q3_quants, nmax 4) and Q6_K (make_qx_quants, nmax 32) rows: the 16 signed sub-block fits of a
 * block, then finished (lp_q3_K_finish / lp_q6_K_finish) */
static void quantize_row_signed16_ref(const float *x, char *y, size_t ysize, int64_t k, int q6) {
    int8_t L[LP_QK_K];
    float scales[16];
    for (int64_t i = 0; i < k / LP_QK_K; i++, x += LP_QK_K) {
        for (int j = 0; j < 16; j++)
            scales[j] = q6 ? make_qx_quants(16, 32, x + 16 * j, L + 16 * j) : make_q3_quants(16, 4, x + 16 * j, L + 16 * j);
        void *out = y + (size_t)i * ysize;
        if (q6) lp_q6_K_finish(x, scales, L, out);
        else lp_q3_K_finish(x, scales, L, out);
    }
}

void lp_quantize_row_q3_K_ref(const float *x, void *vy, int64_t k) {
    quantize_row_signed16_ref(x, vy, sizeof(lp_block_q3_K), k, 0);
}

void lp_quantize_row_q6_K_ref(const float *x, void *vy, int64_t k) {
    quantize_row_signed16_ref(x, vy, sizeof(lp_block_q6_K), k, 1);
}

/* ---- Q8_K ------------------------------------------------------------------------------------ */

void lp_quantize_row_q8_K_ref(const float *x, void *vy, int64_t k) {
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
