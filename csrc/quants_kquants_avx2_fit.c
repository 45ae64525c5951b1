/* K-quants Q2_K..Q6_K: AVX2 weight quantizers that write the scalar reference's bytes.
 *
 * The slow half of each reference quantizer is the per-sub-block fit (a search over 16 to 21 trial
 * grids). Here lane j of every vector fits sub-block j: the scalar fit's float operations, in its order,
 * element by element (x[i] holds element i of 8 sub-blocks), with branches turned into lane masks and
 * rounding done by the reference's magic-number trick, garbage included. The second half (scales,
 * final quants, packing) is lp_qN_K_finish of quants_kquants_quantize.c. Built with -ffp-contract=off:
 * a fused multiply-add would change the bytes.
 */
#if defined(__x86_64__) || defined(__i386__)
#pragma GCC target("avx2,fma,f16c")
#include <immintrin.h>

#include "lp_core.h"
#include "lp_kquants.h"

static inline __m256i nearest_int8(__m256 f) {
    const __m256i i = _mm256_castps_si256(_mm256_add_ps(f, _mm256_set1_ps(12582912.f)));
    return _mm256_sub_epi32(_mm256_and_si256(i, _mm256_set1_epi32(0x007fffff)), _mm256_set1_epi32(0x00400000));
}

static inline __m256i clamp8(__m256i v, int lo, int hi) {
    return _mm256_max_epi32(_mm256_min_epi32(v, _mm256_set1_epi32(hi)), _mm256_set1_epi32(lo));
}

static inline __m256 cmp_gt(__m256 a, __m256 b) { return _mm256_cmp_ps(a, b, _CMP_GT_OQ); }
static inline __m256 sel(__m256 mask, __m256 yes, __m256 no) { return _mm256_blendv_ps(no, yes, mask); }
static inline __m256 absv(__m256 v) { return _mm256_andnot_ps(_mm256_set1_ps(-0.0f), v); }

/* values x[32*j + i] of n-element sub-blocks j = 0..7 -> xt[i] lane j */
static inline void transpose8(const float *x, int n, __m256 *xt) {
    float t[32 * 8] __attribute__((aligned(32)));
    for (int j = 0; j < 8; j++)
        for (int i = 0; i < n; i++) t[8 * i + j] = x[n * j + i];
    for (int i = 0; i < n; i++) xt[i] = _mm256_load_ps(t + 8 * i);
}

/* lane j of L[i] -> out[n*j + i] */
static inline void untranspose8_i32(const __m256i *L, int n, int32_t *out) {
    int32_t t[32 * 8] __attribute__((aligned(32)));
    for (int i = 0; i < n; i++) _mm256_store_si256((__m256i *)(t + 8 * i), L[i]);
    for (int j = 0; j < 8; j++)
        for (int i = 0; i < n; i++) out[n * j + i] = t[8 * i + j];
}

/* make_qkx2_quants of the scalar quantizers on G groups of 8 lanes (G = 1 or 2: two independent groups hide
 * the latency of the running sums): group g's element i is x[g*n + i]; scale, -min and quants L per lane */
static inline __attribute__((always_inline)) void make_qkx2_xg(int G, int n, int nmax, const __m256 *x,
                                                                const __m256 *w, __m256i *L, __m256 *scale_out,
                                                                __m256 *the_min, float rmin, float rdelta,
                                                                int nstep, int use_mad) {
    const __m256 zero = _mm256_setzero_ps();
    __m256 min[2], max[2], sum_w[2], sum_x[2], flat[2], scale[2], best_mad[2];
    for (int g = 0; g < G; g++) {
        const __m256 *xg = x + g * n, *wg = w + g * n;
        min[g] = max[g] = xg[0];
        sum_w[g] = wg[0];
        sum_x[g] = _mm256_mul_ps(wg[0], xg[0]);
        for (int i = 1; i < n; i++) {
            min[g] = _mm256_min_ps(xg[i], min[g]); /* x < min ? x : min */
            max[g] = _mm256_max_ps(xg[i], max[g]);
            sum_w[g] = _mm256_add_ps(sum_w[g], wg[i]);
            sum_x[g] = _mm256_add_ps(sum_x[g], _mm256_mul_ps(wg[i], xg[i]));
        }
        min[g] = sel(cmp_gt(min[g], zero), zero, min[g]);
        flat[g] = _mm256_cmp_ps(max[g], min[g], _CMP_EQ_OQ);
        const __m256 iscale = _mm256_div_ps(_mm256_set1_ps((float)nmax), _mm256_sub_ps(max[g], min[g]));
        scale[g] = _mm256_div_ps(_mm256_set1_ps(1.0f), iscale);
        best_mad[g] = zero;
        for (int i = 0; i < n; i++) {
            L[g * n + i] = clamp8(nearest_int8(_mm256_mul_ps(iscale, _mm256_sub_ps(xg[i], min[g]))), 0, nmax);
            __m256 diff = _mm256_sub_ps(
                _mm256_add_ps(_mm256_mul_ps(scale[g], _mm256_cvtepi32_ps(L[g * n + i])), min[g]), xg[i]);
            diff = use_mad ? absv(diff) : _mm256_mul_ps(diff, diff);
            best_mad[g] = _mm256_add_ps(best_mad[g], _mm256_mul_ps(wg[i], diff));
        }
    }
    __m256i Laux[64];
    for (int is = 0; is <= nstep; is++) {
        const float c = rmin + rdelta * is + nmax;
        __m256 iscale[2], sum_l[2], sum_l2[2], sum_xl[2];
        for (int g = 0; g < G; g++) {
            iscale[g] = _mm256_div_ps(_mm256_set1_ps(c), _mm256_sub_ps(max[g], min[g]));
            sum_l[g] = sum_l2[g] = sum_xl[g] = zero;
        }
        for (int i = 0; i < n; i++) {
            for (int g = 0; g < G; g++) {
                const __m256 xi = x[g * n + i], wi = w[g * n + i];
                const __m256 v = _mm256_mul_ps(iscale[g], _mm256_sub_ps(xi, min[g]));
                const __m256i l = clamp8(nearest_int8(v), 0, nmax);
                Laux[g * n + i] = l;
                const __m256 lf = _mm256_cvtepi32_ps(l), wl = _mm256_mul_ps(wi, lf);
                sum_l[g] = _mm256_add_ps(sum_l[g], wl);
                sum_l2[g] = _mm256_add_ps(sum_l2[g], _mm256_mul_ps(wl, lf));
                sum_xl[g] = _mm256_add_ps(sum_xl[g], _mm256_mul_ps(wl, xi));
            }
        }
        __m256 dpos[2], this_scale[2], this_min[2], mad[2], any = zero;
        for (int g = 0; g < G; g++) {
            const __m256 D = _mm256_sub_ps(_mm256_mul_ps(sum_w[g], sum_l2[g]), _mm256_mul_ps(sum_l[g], sum_l[g]));
            dpos[g] = cmp_gt(D, zero);
            any = _mm256_or_ps(any, dpos[g]);
            this_scale[g] = _mm256_div_ps(
                _mm256_sub_ps(_mm256_mul_ps(sum_w[g], sum_xl[g]), _mm256_mul_ps(sum_x[g], sum_l[g])), D);
            this_min[g] = _mm256_div_ps(
                _mm256_sub_ps(_mm256_mul_ps(sum_l2[g], sum_x[g]), _mm256_mul_ps(sum_l[g], sum_xl[g])), D);
            const __m256 mpos = cmp_gt(this_min[g], zero);
            this_min[g] = sel(mpos, zero, this_min[g]);
            this_scale[g] = sel(mpos, _mm256_div_ps(sum_xl[g], sum_l2[g]), this_scale[g]);
            mad[g] = zero;
        }
        if (_mm256_testz_ps(any, any)) continue;
        for (int i = 0; i < n; i++) {
            for (int g = 0; g < G; g++) {
                __m256 diff = _mm256_sub_ps(
                    _mm256_add_ps(_mm256_mul_ps(this_scale[g], _mm256_cvtepi32_ps(Laux[g * n + i])), this_min[g]),
                    x[g * n + i]);
                diff = use_mad ? absv(diff) : _mm256_mul_ps(diff, diff);
                mad[g] = _mm256_add_ps(mad[g], _mm256_mul_ps(w[g * n + i], diff));
            }
        }
        for (int g = 0; g < G; g++) {
            const __m256 better = _mm256_and_ps(dpos[g], _mm256_cmp_ps(mad[g], best_mad[g], _CMP_LT_OQ));
            if (_mm256_testz_ps(better, better)) continue;
            const __m256i bi = _mm256_castps_si256(better);
            for (int i = 0; i < n; i++) L[g * n + i] = _mm256_blendv_epi8(L[g * n + i], Laux[g * n + i], bi);
            best_mad[g] = sel(better, mad[g], best_mad[g]);
            scale[g] = sel(better, this_scale[g], scale[g]);
            min[g] = sel(better, this_min[g], min[g]);
        }
    }
    for (int g = 0; g < G; g++) {
        const __m256i fi = _mm256_castps_si256(flat[g]);
        for (int i = 0; i < n; i++) L[g * n + i] = _mm256_andnot_si256(fi, L[g * n + i]);
        scale_out[g] = sel(flat[g], zero, scale[g]);
        the_min[g] = _mm256_xor_ps(min[g], _mm256_set1_ps(-0.0f));
    }
}

/* the first x of largest magnitude in each lane (the scalar `if (ax > amax)` scan), and whether it is ~0 */
static inline __m256 lane_absmax(int n, const __m256 *x, __m256 *zero_mask) {
    __m256 amax = _mm256_setzero_ps(), max = amax;
    for (int i = 0; i < n; i++) {
        const __m256 ax = absv(x[i]), upd = cmp_gt(ax, amax);
        amax = sel(upd, ax, amax);
        max = sel(upd, x[i], max);
    }
    *zero_mask = _mm256_cmp_ps(amax, _mm256_set1_ps(1e-15f), _CMP_LT_OQ);
    return max;
}

/* Σ w*x*l and Σ w*l*l (w = x^2) and the clamped l for one grid of make_qx_quants */
static inline void qx_sums(int n, int nmax, const __m256 *x, __m256 iscale, __m256i *l, __m256 *sumlx,
                           __m256 *suml2) {
    __m256 a = _mm256_setzero_ps(), b = a;
    for (int i = 0; i < n; i++) {
        l[i] = clamp8(nearest_int8(_mm256_mul_ps(iscale, x[i])), -nmax, nmax - 1);
        const __m256 lf = _mm256_cvtepi32_ps(l[i]), w = _mm256_mul_ps(x[i], x[i]);
        a = _mm256_add_ps(a, _mm256_mul_ps(_mm256_mul_ps(w, x[i]), lf));
        b = _mm256_add_ps(b, _mm256_mul_ps(_mm256_mul_ps(w, lf), lf));
    }
    *sumlx = a;
    *suml2 = b;
}

/* make_qx_quants (weights x^2) of the scalar quantizers on 8 lanes; L[i] offset by nmax (0 in all-zero lanes) */
static __m256 make_qx_x8(int n, int nmax, const __m256 *x, __m256i *L) {
    const __m256 zero = _mm256_setzero_ps();
    __m256 is_zero;
    const __m256 max = lane_absmax(n, x, &is_zero);
    __m256i l[16];
    __m256 sumlx, suml2;
    qx_sums(n, nmax, x, _mm256_div_ps(_mm256_set1_ps((float)-nmax), max), l, &sumlx, &suml2);
    const __m256i off = _mm256_set1_epi32(nmax);
    for (int i = 0; i < n; i++) L[i] = _mm256_add_epi32(l[i], off);
    __m256 scale = sel(_mm256_cmp_ps(suml2, zero, _CMP_NEQ_UQ), _mm256_div_ps(sumlx, suml2), zero);
    __m256 best = _mm256_mul_ps(scale, sumlx);
    for (int is = -9; is <= 9; is++) {
        if (is == 0) continue;
        const float c = -(nmax + 0.1f * is);
        qx_sums(n, nmax, x, _mm256_div_ps(_mm256_set1_ps(c), max), l, &sumlx, &suml2);
        const __m256 gain = cmp_gt(_mm256_mul_ps(sumlx, sumlx), _mm256_mul_ps(best, suml2));
        const __m256 upd = _mm256_and_ps(cmp_gt(suml2, zero), gain);
        if (_mm256_testz_ps(upd, upd)) continue;
        const __m256i ui = _mm256_castps_si256(upd);
        for (int i = 0; i < n; i++) L[i] = _mm256_blendv_epi8(L[i], _mm256_add_epi32(l[i], off), ui);
        scale = sel(upd, _mm256_div_ps(sumlx, suml2), scale);
        best = sel(upd, _mm256_mul_ps(scale, sumlx), best);
    }
    const __m256i zi = _mm256_castps_si256(is_zero);
    for (int i = 0; i < n; i++) L[i] = _mm256_andnot_si256(zi, L[i]);
    return sel(is_zero, zero, scale);
}

/* make_q3_quants of the scalar quantizers on 8 lanes; L[i] offset by nmax (0 in all-zero lanes) */
static __m256 make_q3_x8(int n, int nmax, const __m256 *x, __m256i *L) {
    const __m256 zero = _mm256_setzero_ps();
    __m256 is_zero;
    const __m256 max = lane_absmax(n, x, &is_zero);
    __m256 sumlx, suml2;
    qx_sums(n, nmax, x, _mm256_div_ps(_mm256_set1_ps((float)-nmax), max), L, &sumlx, &suml2);
    __m256 active = _mm256_xor_ps(is_zero, _mm256_castsi256_ps(_mm256_set1_epi32(-1)));
    for (int itry = 0; itry < 5 && !_mm256_testz_ps(active, active); itry++) {
        __m256 changed = zero;
        for (int i = 0; i < n; i++) {
            const __m256 w = _mm256_mul_ps(x[i], x[i]), wx = _mm256_mul_ps(w, x[i]);
            const __m256 li = _mm256_cvtepi32_ps(L[i]);
            const __m256 slx = _mm256_sub_ps(sumlx, _mm256_mul_ps(wx, li));
            const __m256 sl2 = _mm256_sub_ps(suml2, _mm256_mul_ps(_mm256_mul_ps(w, li), li));
            const __m256 guess = _mm256_div_ps(_mm256_mul_ps(x[i], sl2), slx);
            const __m256i new_l = clamp8(nearest_int8(guess), -nmax, nmax - 1);
            const __m256 nl = _mm256_cvtepi32_ps(new_l);
            const __m256 slx2 = _mm256_add_ps(slx, _mm256_mul_ps(wx, nl));
            const __m256 sl22 = _mm256_add_ps(sl2, _mm256_mul_ps(_mm256_mul_ps(w, nl), nl));
            const __m256 differs = _mm256_castsi256_ps(
                _mm256_xor_si256(_mm256_cmpeq_epi32(new_l, L[i]), _mm256_set1_epi32(-1)));
            const __m256 gain = cmp_gt(_mm256_mul_ps(_mm256_mul_ps(slx2, slx2), suml2),
                                       _mm256_mul_ps(_mm256_mul_ps(sumlx, sumlx), sl22));
            __m256 ok = _mm256_and_ps(_mm256_and_ps(active, cmp_gt(slx, zero)), differs);
            ok = _mm256_and_ps(ok, _mm256_and_ps(cmp_gt(sl22, zero), gain));
            L[i] = _mm256_blendv_epi8(L[i], new_l, _mm256_castps_si256(ok));
            sumlx = sel(ok, slx2, sumlx);
            suml2 = sel(ok, sl22, suml2);
            changed = _mm256_or_ps(changed, ok);
        }
        active = _mm256_and_ps(active, changed);
    }
    const __m256i zi = _mm256_castps_si256(is_zero), off = _mm256_set1_epi32(nmax);
    for (int i = 0; i < n; i++) L[i] = _mm256_andnot_si256(zi, _mm256_add_epi32(L[i], off));
    return sel(is_zero, zero, _mm256_div_ps(sumlx, suml2));
}

static void quantize_row_q2_K(const float *x, void *vy, int64_t k) {
    lp_block_q2_K *y = vy;
    float scales[16], mins[16];
    int32_t L32[LP_QK_K];
    uint8_t L[LP_QK_K];
    for (int64_t i = 0; i < k / LP_QK_K; i++, x += LP_QK_K) {
        __m256 xt[32], w[32], sc[2], mn[2];
        __m256i Lv[32];
        for (int half = 0; half < 2; half++) transpose8(x + 128 * half, 16, xt + 16 * half);
        for (int l = 0; l < 32; l++) w[l] = absv(xt[l]);
        make_qkx2_xg(2, 16, 3, xt, w, Lv, sc, mn, -0.5f, 0.1f, 15, 1);
        for (int half = 0; half < 2; half++) {
            _mm256_storeu_ps(scales + 8 * half, sc[half]);
            _mm256_storeu_ps(mins + 8 * half, mn[half]);
            untranspose8_i32(Lv + 16 * half, 16, L32 + 128 * half);
        }
        for (int j = 0; j < LP_QK_K; j++) L[j] = (uint8_t)L32[j];
        lp_q2_K_finish(x, scales, mins, L, &y[i]);
    }
}

/* Q3_K (make_q3_quants, nmax 4) and Q6_K (make_qx_quants, nmax 32) rows: the 16 signed sub-block fits of a
 * block, 8 at a time, then finished */
static inline __attribute__((always_inline)) void quantize_row_signed16(const float *x, char *y, size_t ysize,
                                                                        int64_t k, int q6) {
    float scales[16];
    int32_t L32[LP_QK_K];
    int8_t L[LP_QK_K];
    for (int64_t i = 0; i < k / LP_QK_K; i++, x += LP_QK_K) {
        for (int half = 0; half < 2; half++) {
            __m256 xt[16];
            __m256i Lv[16];
            transpose8(x + 128 * half, 16, xt);
            _mm256_storeu_ps(scales + 8 * half, q6 ? make_qx_x8(16, 32, xt, Lv) : make_q3_x8(16, 4, xt, Lv));
            untranspose8_i32(Lv, 16, L32 + 128 * half);
        }
        for (int j = 0; j < LP_QK_K; j++) L[j] = (int8_t)L32[j];
        void *out = y + (size_t)i * ysize;
        if (q6) lp_q6_K_finish(x, scales, L, out);
        else lp_q3_K_finish(x, scales, L, out);
    }
}

static void quantize_row_q3_K(const float *x, void *vy, int64_t k) {
    quantize_row_signed16(x, vy, sizeof(lp_block_q3_K), k, 0);
}

/* the Q4_K / Q5_K fits of G consecutive blocks: weights av_x + |x| with av_x = sqrt(Σx²/32) per sub-block */
static inline __attribute__((always_inline)) void k4_fit_xg(int G, const float *x, int nmax, float rmin, int nstep,
                                                             float *scales, float *mins, uint8_t *L) {
    __m256 xt[64], w[64], sc[2], mn[2];
    __m256i Lv[64];
    int32_t L32[LP_QK_K];
    for (int g = 0; g < G; g++) {
        transpose8(x + LP_QK_K * g, 32, xt + 32 * g);
        __m256 sum_x2 = _mm256_setzero_ps();
        for (int l = 0; l < 32; l++) sum_x2 = _mm256_add_ps(sum_x2, _mm256_mul_ps(xt[32 * g + l], xt[32 * g + l]));
        const __m256 av_x = _mm256_sqrt_ps(_mm256_div_ps(sum_x2, _mm256_set1_ps(32.f)));
        for (int l = 0; l < 32; l++) w[32 * g + l] = _mm256_add_ps(av_x, absv(xt[32 * g + l]));
    }
    make_qkx2_xg(G, 32, nmax, xt, w, Lv, sc, mn, rmin, 0.1f, nstep, 0);
    for (int g = 0; g < G; g++) {
        _mm256_storeu_ps(scales + 8 * g, sc[g]);
        _mm256_storeu_ps(mins + 8 * g, mn[g]);
        untranspose8_i32(Lv + 32 * g, 32, L32);
        for (int j = 0; j < LP_QK_K; j++) L[LP_QK_K * g + j] = (uint8_t)L32[j];
    }
}

/* Q4_K (nmax 15, rmin -1, 20 steps) and Q5_K (31, -0.5, 15) rows: blocks fitted two at a time, then finished */
static inline __attribute__((always_inline)) void quantize_row_k4(const float *x, char *y, size_t ysize, int64_t k,
                                                                  int nmax, float rmin, int nstep, int q5) {
    float scales[16], mins[16];
    uint8_t L[2 * LP_QK_K];
    const int64_t nb = k / LP_QK_K;
    for (int64_t i = 0; i < nb; i += 2, x += 2 * LP_QK_K) {
        const int G = nb - i >= 2 ? 2 : 1;
        if (G == 2) k4_fit_xg(2, x, nmax, rmin, nstep, scales, mins, L);
        else k4_fit_xg(1, x, nmax, rmin, nstep, scales, mins, L);
        for (int g = 0; g < G; g++) {
            void *out = y + (size_t)(i + g) * ysize;
            if (q5) lp_q5_K_finish(x + LP_QK_K * g, scales + 8 * g, mins + 8 * g, L + LP_QK_K * g, out);
            else lp_q4_K_finish(x + LP_QK_K * g, scales + 8 * g, mins + 8 * g, L + LP_QK_K * g, out);
        }
    }
}

static void quantize_row_q4_K(const float *x, void *vy, int64_t k) {
    quantize_row_k4(x, vy, sizeof(lp_block_q4_K), k, 15, -1.f, 20, 0);
}

static void quantize_row_q5_K(const float *x, void *vy, int64_t k) {
    quantize_row_k4(x, vy, sizeof(lp_block_q5_K), k, 31, -0.5f, 15, 1);
}

static void quantize_row_q6_K(const float *x, void *vy, int64_t k) {
    quantize_row_signed16(x, vy, sizeof(lp_block_q6_K), k, 1);
}

void lp_register_kquants_avx2_quantizers(lp_type_traits *t) {
    t[LP_TYPE_Q2_K].from_float = quantize_row_q2_K;
    t[LP_TYPE_Q3_K].from_float = quantize_row_q3_K;
    t[LP_TYPE_Q4_K].from_float = quantize_row_q4_K;
    t[LP_TYPE_Q5_K].from_float = quantize_row_q5_K;
    t[LP_TYPE_Q6_K].from_float = quantize_row_q6_K;
}
#endif
