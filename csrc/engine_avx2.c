/* AVX2+FMA+F16C versions of the engine's small kernels; scalar references in engine_kernels.c. */
#include "lp_core.h"
#include "lp_engine.h"

#if defined(__x86_64__) || defined(__i386__)
#pragma GCC target("avx2,fma,f16c")
#include <immintrin.h>
#include <math.h>

static inline float hsum(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

static inline __m256 load_f16(const uint16_t *p) { return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p)); }

/* exp(x) for x <= 0 (and moderate x > 0): 2^n * p(r), r = x - n ln2, degree-6 polynomial; rel. error ~2e-7 */
static inline __m256 exp_ps(__m256 x) {
    const __m256 lo = _mm256_set1_ps(-87.3f), hi = _mm256_set1_ps(88.3f);
    x = _mm256_min_ps(_mm256_max_ps(x, lo), hi);
    __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                               _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
    __m256 p = _mm256_set1_ps(1.9875691500e-4f);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
    __m256 r2 = _mm256_mul_ps(r, r);
    p = _mm256_fmadd_ps(p, r2, _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
    __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}

static void rms_norm(int n, const float *x, const float *w, float eps, float *y) {
    __m256d acc0 = _mm256_setzero_pd(), acc1 = _mm256_setzero_pd();
    int i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 v = _mm256_loadu_ps(x + i);
        __m256 sq = _mm256_mul_ps(v, v);
        acc0 = _mm256_add_pd(acc0, _mm256_cvtps_pd(_mm256_castps256_ps128(sq)));
        acc1 = _mm256_add_pd(acc1, _mm256_cvtps_pd(_mm256_extractf128_ps(sq, 1)));
    }
    double t[4];
    _mm256_storeu_pd(t, _mm256_add_pd(acc0, acc1));
    double sum = t[0] + t[1] + t[2] + t[3];
    for (; i < n; i++) sum += (double)(x[i] * x[i]);
    const float scale = 1.0f / sqrtf((float)(sum / n) + eps);
    const __m256 vs = _mm256_set1_ps(scale);
    for (i = 0; i + 8 <= n; i += 8)
        _mm256_storeu_ps(y + i, _mm256_mul_ps(_mm256_mul_ps(_mm256_loadu_ps(x + i), vs), _mm256_loadu_ps(w + i)));
    for (; i < n; i++) y[i] = (x[i] * scale) * w[i];
}

static void swiglu(int n, float *a, const float *b) {
    int i = 0;
    const __m256 one = _mm256_set1_ps(1.0f), zero = _mm256_setzero_ps();
    for (; i + 8 <= n; i += 8) {
        __m256 v = _mm256_loadu_ps(a + i);
        __m256 s = _mm256_div_ps(v, _mm256_add_ps(one, exp_ps(_mm256_sub_ps(zero, v))));
        _mm256_storeu_ps(a + i, _mm256_mul_ps(s, _mm256_loadu_ps(b + i)));
    }
    for (; i < n; i++) a[i] = a[i] / (1.0f + expf(-a[i])) * b[i];
}

static double softmax_exp(int n, const float *x, float max, float *y) {
    int i = 0;
    double sum = 0;
    const __m256 m = _mm256_set1_ps(max);
    for (; i + 8 <= n; i += 8) {
        __m256 v = exp_ps(_mm256_sub_ps(_mm256_loadu_ps(x + i), m));
        _mm256_storeu_ps(y + i, v);
        sum += hsum(v);
    }
    for (; i < n; i++) {
        y[i] = expf(x[i] - max);
        sum += y[i];
    }
    return sum;
}

static void attn_scores_f16(int hd, int n, const uint16_t *q, const uint16_t *k, int64_t stride, float *s) {
    if (hd % 8 || hd > 256) {
        lp_engine_kernels sc;
        lp_engine_kernels_scalar(&sc);
        sc.attn_scores_f16(hd, n, q, k, stride, s);
        return;
    }
    __m256 qv[32];
    int nv = hd / 8;
    for (int i = 0; i < nv; i++) qv[i] = load_f16(q + 8 * i);
    for (int j = 0; j < n; j++) {
        const uint16_t *kj = k + j * stride;
        __m256 acc0 = _mm256_mul_ps(qv[0], load_f16(kj)), acc1 = _mm256_setzero_ps();
        int i = 1;
        for (; i + 2 <= nv; i += 2) {
            acc1 = _mm256_fmadd_ps(qv[i], load_f16(kj + 8 * i), acc1);
            acc0 = _mm256_fmadd_ps(qv[i + 1], load_f16(kj + 8 * i + 8), acc0);
        }
        if (i < nv) acc1 = _mm256_fmadd_ps(qv[i], load_f16(kj + 8 * i), acc1);
        s[j] = hsum(_mm256_add_ps(acc0, acc1));
    }
}

static void attn_values_f16(int hd, int n, const uint16_t *p, const uint16_t *v, int64_t stride, float *out) {
    for (int d = 0; d < hd; d++) {
        const uint16_t *vd = v + d * stride;
        __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps(), a2 = _mm256_setzero_ps(), a3 = _mm256_setzero_ps();
        int j = 0;
        for (; j + 32 <= n; j += 32) {
            a0 = _mm256_fmadd_ps(load_f16(p + j), load_f16(vd + j), a0);
            a1 = _mm256_fmadd_ps(load_f16(p + j + 8), load_f16(vd + j + 8), a1);
            a2 = _mm256_fmadd_ps(load_f16(p + j + 16), load_f16(vd + j + 16), a2);
            a3 = _mm256_fmadd_ps(load_f16(p + j + 24), load_f16(vd + j + 24), a3);
        }
        for (; j + 8 <= n; j += 8) a0 = _mm256_fmadd_ps(load_f16(p + j), load_f16(vd + j), a0);
        float sum = hsum(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
        for (; j < n; j++) sum += lp_fp16_to_fp32(p[j]) * lp_fp16_to_fp32(vd[j]);
        out[d] = sum;
    }
}

static void f32_to_f16(int n, const float *x, uint16_t *y) {
    int i = 0;
    for (; i + 8 <= n; i += 8)
        _mm_storeu_si128((__m128i *)(y + i), _mm256_cvtps_ph(_mm256_loadu_ps(x + i), _MM_FROUND_TO_NEAREST_INT));
    for (; i < n; i++) y[i] = lp_fp32_to_fp16(x[i]);
}

void lp_engine_kernels_avx2(lp_engine_kernels *k) {
    k->rms_norm = rms_norm;
    k->swiglu = swiglu;
    k->softmax_exp = softmax_exp;
    k->attn_scores_f16 = attn_scores_f16;
    k->attn_values_f16 = attn_values_f16;
    k->f32_to_f16 = f32_to_f16;
}
#else
void lp_engine_kernels_avx2(lp_engine_kernels *k) { (void)k; }
#endif
