/* AVX2+FMA+F16C versions of the engine's small kernels; scalar references in engine_kernels.c. */
#include "lp_core.h"
#include "lp_engine.h"

#if defined(__x86_64__) || defined(__i386__)
#pragma GCC target("avx2,fma,f16c")
#include <immintrin.h>
#include "lp_avx2.h"
#include <math.h>

/* exp(x), the reference's vector algorithm: x = n ln2 + b with n = round(x / ln2) (by the 1.5 * 2^23
 * shift), 2^n built in the exponent bits, exp(b) - 1 as a degree-5 polynomial; |n| > 126 scaled in two
 * steps so results near the float range's ends come out right (0 for -inf, inf above ~88.4). */
static inline __m256 exp_ps(__m256 x) {
    const __m256 shift = _mm256_set1_ps(0x1.8p23f);
    const __m256 z = _mm256_fmadd_ps(x, _mm256_set1_ps(0x1.715476p+0f), shift);
    const __m256 n = _mm256_sub_ps(z, shift);
    const __m256 b = _mm256_fnmadd_ps(n, _mm256_set1_ps(0x1.7f7d1cp-20f),
                                      _mm256_fnmadd_ps(n, _mm256_set1_ps(0x1.62e4p-1f), x));
    const __m256i e = _mm256_slli_epi32(_mm256_castps_si256(z), 23);
    const __m256 k = _mm256_castsi256_ps(_mm256_add_epi32(e, _mm256_castps_si256(_mm256_set1_ps(1))));
    const __m256 abs_n = _mm256_andnot_ps(_mm256_set1_ps(-0.f), n);
    const __m256 big = _mm256_cmp_ps(abs_n, _mm256_set1_ps(126), _CMP_GT_OQ);
    const __m256 u = _mm256_mul_ps(b, b);
    const __m256 hi = _mm256_fmadd_ps(_mm256_fmadd_ps(_mm256_set1_ps(0x1.0e4020p-7f), b, _mm256_set1_ps(0x1.573e2ep-5f)),
                                      u, _mm256_fmadd_ps(_mm256_set1_ps(0x1.555e66p-3f), b, _mm256_set1_ps(0x1.fffdb6p-2f)));
    const __m256 poly = _mm256_fmadd_ps(hi, u, _mm256_mul_ps(_mm256_set1_ps(0x1.ffffecp-1f), b));
    if (!_mm256_movemask_ps(big)) return _mm256_fmadd_ps(poly, k, k);
    const __m256i g = _mm256_and_si256(_mm256_castps_si256(_mm256_cmp_ps(n, _mm256_setzero_ps(), _CMP_LE_OQ)),
                                       _mm256_set1_epi32((int)0x82000000u));
    const __m256 s1 = _mm256_castsi256_ps(_mm256_add_epi32(g, _mm256_set1_epi32(0x7f000000)));
    const __m256 s2 = _mm256_castsi256_ps(_mm256_sub_epi32(e, g));
    const __m256 huge = _mm256_cmp_ps(abs_n, _mm256_set1_ps(192), _CMP_GT_OQ);
    const __m256 scaled = _mm256_mul_ps(_mm256_fmadd_ps(s2, poly, s2), s1);
    const __m256 normal = _mm256_fmadd_ps(k, poly, k);
    return _mm256_blendv_ps(_mm256_blendv_ps(normal, scaled, big), _mm256_mul_ps(s1, s1), huge);
}

/* the sum of squares in double, in order (as the reference); the scaling in float vectors */
static void rms_norm(int n, const float *x, const float *w, float eps, float *y) {
    double sum = 0;
    for (int i = 0; i < n; i++) sum += (double)(x[i] * x[i]);
    const float mean = (float)(sum / n);
    const float scale = 1.0f / sqrtf(mean + eps);
    const __m256 vs = _mm256_set1_ps(scale);
    int i = 0;
    for (; i + 8 <= n; i += 8)
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

/* exp(x - max) in chunks of 8 (a short last chunk padded with -inf), each chunk's sum added in double */
static double softmax_exp(int n, const float *x, float max, float *y) {
    double sum = 0;
    const __m256 m = _mm256_set1_ps(max);
    for (int i = 0; i < n; i += 8) {
        __m256 v;
        if (i + 8 <= n) {
            v = exp_ps(_mm256_sub_ps(_mm256_loadu_ps(x + i), m));
            _mm256_storeu_ps(y + i, v);
        } else {
            float buf[8];
            for (int k = 0; k < 8; k++) buf[k] = i + k < n ? x[i + k] : -INFINITY;
            v = exp_ps(_mm256_sub_ps(_mm256_loadu_ps(buf), m));
            _mm256_storeu_ps(buf, v);
            for (int k = 0; i + k < n; k++) y[i + k] = buf[k];
        }
        sum += hsum_ps(v);
    }
    return sum;
}

/* up to 8 fp16 values as floats, zeros past n */
static inline __m256 load_f16_part(const uint16_t *p, int n) {
    if (n >= 8) return load_f16(p);
    uint16_t buf[8] = {0};
    for (int k = 0; k < n; k++) buf[k] = p[k];
    return load_f16(buf);
}

/* the reference's F16 dot of one step (a batch): one accumulator over chunks of 8, then hsum */
static inline float dot_f16_chain(int n, const uint16_t *a, const uint16_t *b) {
    __m256 acc = _mm256_setzero_ps();
    for (int l = 0; l < n; l += 8) acc = _mm256_fmadd_ps(load_f16_part(a + l, n - l), load_f16_part(b + l, n - l), acc);
    return hsum_ps(acc);
}

/* the reference's F16 dot of a single token: four accumulators over chunks of 32, added pairwise,
   halves added, then two horizontal adds; the rest (n % 32) in double */
static inline float dot_f16_four(int n, const uint16_t *a, const uint16_t *b, int pad) {
    __m256 s[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
    int np = pad ? (n + 31) / 32 * 32 : n / 32 * 32;
    for (int i = 0; i < np; i += 32)
        for (int j = 0; j < 4; j++) {
            int off = i + 8 * j;
            s[j] = _mm256_fmadd_ps(load_f16_part(a + off, n - off), load_f16_part(b + off, n - off), s[j]);
        }
    s[0] = _mm256_add_ps(s[0], s[2]);
    s[1] = _mm256_add_ps(s[1], s[3]);
    s[0] = _mm256_add_ps(s[0], s[1]);
    __m128 t = _mm_add_ps(_mm256_castps256_ps128(s[0]), _mm256_extractf128_ps(s[0], 1));
    t = _mm_hadd_ps(t, t);
    double sum = _mm_cvtss_f32(_mm_hadd_ps(t, t));
    for (int i = np; i < n; i++) sum += (double)(lp_fp16_to_fp32(a[i]) * lp_fp16_to_fp32(b[i]));
    return (float)sum;
}

/* the single-token reduction of four accumulators: pairs, halves, then two horizontal adds */
static inline float reduce_four(__m256 s0, __m256 s1, __m256 s2, __m256 s3) {
    s0 = _mm256_add_ps(s0, s2);
    s1 = _mm256_add_ps(s1, s3);
    s0 = _mm256_add_ps(s0, s1);
    __m128 t = _mm_add_ps(_mm256_castps256_ps128(s0), _mm256_extractf128_ps(s0, 1));
    t = _mm_hadd_ps(t, t);
    return _mm_cvtss_f32(_mm_hadd_ps(t, t));
}

/* Batch steps: each score and each output summed as dot_f16_chain sums it; four of them at a time so
   the chains of dependent multiply-adds overlap. Single-token steps: as dot_f16_four, with q (or p)
   converted once instead of per row. */
static void attn_scores_f16(int hd, int n, const uint16_t *q, const uint16_t *k, int64_t stride, float *s,
                            int single) {
    int j = 0;
    if (hd % 32 == 0 && hd <= 256) {
        __m256 qv[32];
        for (int l = 0; l < hd / 8; l++) qv[l] = load_f16(q + 8 * l);
        if (single) {
            /* eight rows at a time, their reductions done together: the same additions in the same order as
               reduce_four per row (the pairs, the halves, then two horizontal adds), fewer shuffles */
            for (; j + 8 <= n; j += 8) {
                __m256 r[8];
                for (int i = 0; i < 8; i++) {
                    const uint16_t *kj = k + (j + i) * stride;
                    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
                    for (int l = 0; l < hd / 8; l += 4) {
                        a0 = _mm256_fmadd_ps(load_f16(kj + 8 * l), qv[l], a0);
                        a1 = _mm256_fmadd_ps(load_f16(kj + 8 * l + 8), qv[l + 1], a1);
                        a2 = _mm256_fmadd_ps(load_f16(kj + 8 * l + 16), qv[l + 2], a2);
                        a3 = _mm256_fmadd_ps(load_f16(kj + 8 * l + 24), qv[l + 3], a3);
                    }
                    r[i] = _mm256_add_ps(_mm256_add_ps(a0, a2), _mm256_add_ps(a1, a3));
                }
                __m256 h[4];   /* [row 2i halves added | row 2i+1 halves added] */
                for (int i = 0; i < 4; i++)
                    h[i] = _mm256_add_ps(_mm256_permute2f128_ps(r[2 * i], r[2 * i + 1], 0x20),
                                         _mm256_permute2f128_ps(r[2 * i], r[2 * i + 1], 0x31));
                /* lanes: rows 0 2 4 6 | 1 3 5 7 */
                const __m256 t = _mm256_hadd_ps(_mm256_hadd_ps(h[0], h[1]), _mm256_hadd_ps(h[2], h[3]));
                _mm256_storeu_ps(s + j, _mm256_permutevar8x32_ps(t, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7)));
            }
            for (; j < n; j++) {
                const uint16_t *kj = k + j * stride;
                __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
                for (int l = 0; l < hd / 8; l += 4) {
                    a0 = _mm256_fmadd_ps(load_f16(kj + 8 * l), qv[l], a0);
                    a1 = _mm256_fmadd_ps(load_f16(kj + 8 * l + 8), qv[l + 1], a1);
                    a2 = _mm256_fmadd_ps(load_f16(kj + 8 * l + 16), qv[l + 2], a2);
                    a3 = _mm256_fmadd_ps(load_f16(kj + 8 * l + 24), qv[l + 3], a3);
                }
                s[j] = reduce_four(a0, a1, a2, a3);
            }
            return;
        }
        for (; j + 4 <= n; j += 4) {
            const uint16_t *k0 = k + j * stride, *k1 = k0 + stride, *k2 = k1 + stride, *k3 = k2 + stride;
            __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
            for (int l = 0; l < hd / 8; l++) {
                a0 = _mm256_fmadd_ps(load_f16(k0 + 8 * l), qv[l], a0);
                a1 = _mm256_fmadd_ps(load_f16(k1 + 8 * l), qv[l], a1);
                a2 = _mm256_fmadd_ps(load_f16(k2 + 8 * l), qv[l], a2);
                a3 = _mm256_fmadd_ps(load_f16(k3 + 8 * l), qv[l], a3);
            }
            s[j] = hsum_ps(a0), s[j + 1] = hsum_ps(a1), s[j + 2] = hsum_ps(a2), s[j + 3] = hsum_ps(a3);
        }
    }
    for (; j < n; j++) s[j] = single ? dot_f16_four(hd, k + j * stride, q, 0) : dot_f16_chain(hd, k + j * stride, q);
}

/* the cached positions padded to a multiple of 32 as the reference pads its KV view (zeros add nothing) */
static void attn_values_f16(int hd, int n, const uint16_t *p, const uint16_t *v, int64_t stride, float *out,
                            int single) {
    int d = 0;
    if (single) {
        /* p as floats once, zero-padded to whole steps of 32 */
        const int np = (n + 31) / 32 * 32, n8 = n / 8 * 8;
        float pf[np];
        for (int i = 0; i < n8; i += 8) _mm256_storeu_ps(pf + i, load_f16(p + i));
        for (int i = n8; i < np; i++) pf[i] = i < n ? lp_fp16_to_fp32(p[i]) : 0.0f;
        const int i_last = n / 32 * 32;
        for (; d < hd; d++) {
            const uint16_t *vd = v + d * stride;
            __m256 a[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
            for (int i = 0; i < i_last; i += 32)
                for (int k = 0; k < 4; k++)
                    a[k] = _mm256_fmadd_ps(load_f16(vd + i + 8 * k), _mm256_loadu_ps(pf + i + 8 * k), a[k]);
            /* the last, partial step: whole chunks of 8, the one holding position n - 1 zero-padded, the
               chunks past it add only zeros and are left out */
            for (int k = 0; k < 4 && i_last + 8 * k < n; k++) {
                const int at = i_last + 8 * k;
                a[k] = _mm256_fmadd_ps(at + 8 <= n ? load_f16(vd + at) : load_f16_part(vd + at, n - at),
                                       _mm256_loadu_ps(pf + at), a[k]);
            }
            out[d] = reduce_four(a[0], a[1], a[2], a[3]);
        }
        return;
    }
    int n8 = n / 8 * 8;
    uint16_t tail[8] = {0};
    for (int i = n8; i < n; i++) tail[i - n8] = p[i];
    for (; d + 4 <= hd; d += 4) {
        const uint16_t *v0 = v + d * stride, *v1 = v0 + stride, *v2 = v1 + stride, *v3 = v2 + stride;
        __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
        for (int l = 0; l < n8; l += 8) {
            const __m256 pl = load_f16(p + l);
            a0 = _mm256_fmadd_ps(load_f16(v0 + l), pl, a0);
            a1 = _mm256_fmadd_ps(load_f16(v1 + l), pl, a1);
            a2 = _mm256_fmadd_ps(load_f16(v2 + l), pl, a2);
            a3 = _mm256_fmadd_ps(load_f16(v3 + l), pl, a3);
        }
        if (n8 < n) {
            const __m256 pl = load_f16(tail);
            a0 = _mm256_fmadd_ps(load_f16_part(v0 + n8, n - n8), pl, a0);
            a1 = _mm256_fmadd_ps(load_f16_part(v1 + n8, n - n8), pl, a1);
            a2 = _mm256_fmadd_ps(load_f16_part(v2 + n8, n - n8), pl, a2);
            a3 = _mm256_fmadd_ps(load_f16_part(v3 + n8, n - n8), pl, a3);
        }
        out[d] = hsum_ps(a0), out[d + 1] = hsum_ps(a1), out[d + 2] = hsum_ps(a2), out[d + 3] = hsum_ps(a3);
    }
    for (; d < hd; d++) out[d] = dot_f16_chain(n, v + d * stride, p);
}

static void f32_to_f16(int n, const float *x, uint16_t *y) {
    int i = 0;
    for (; i + 8 <= n; i += 8)
        _mm_storeu_si128((__m128i *)(y + i), _mm256_cvtps_ph(_mm256_loadu_ps(x + i), _MM_FROUND_TO_NEAREST_INT));
    for (; i < n; i++) y[i] = lp_fp32_to_fp16(x[i]);
}

static void axpy(int n, float a, const float *x, float *y) {
    const __m256 va = _mm256_set1_ps(a);
    int i = 0;
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(y + i, _mm256_fmadd_ps(va, _mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i)));
    for (; i < n; i++) y[i] = fmaf(a, x[i], y[i]);
}

/* as the reference is compiled: x0's products fused, x1's rounded first
   (x[r] = fma(x0, c, -(x1 s)), x[r+1] = fma(x0, s, x1 c)) */
static void rope(int hd, const float *cs, float *x, int r0, int r1) {
    int r = r0;
    if (hd % 8 == 0)
        for (; r + 8 <= r1 && r % hd + 8 <= hd; r += 8) {
            const __m256 v = _mm256_loadu_ps(x + r), t = _mm256_loadu_ps(cs + r % hd);
            const __m256 c = _mm256_moveldup_ps(t), s = _mm256_movehdup_ps(t);
            const __m256 x0 = _mm256_moveldup_ps(v), x1 = _mm256_movehdup_ps(v);
            /* even lanes: x0 c - (x1 s); odd lanes: x0 s + (x1 c) */
            const __m256 a = _mm256_blend_ps(c, s, 0xaa), b = _mm256_blend_ps(s, c, 0xaa);
            _mm256_storeu_ps(x + r, _mm256_fmaddsub_ps(x0, a, _mm256_mul_ps(x1, b)));
        }
    for (; r < r1; r += 2) {
        int i0 = r % hd;
        float c = cs[i0], s = cs[i0 + 1], x0 = x[r], x1 = x[r + 1];
        x[r] = fmaf(x0, c, -(x1 * s));
        x[r + 1] = fmaf(x0, s, x1 * c);
    }
}

/* element i of a LoRA B matrix held as F32, or (f16) as F16 bits; and 8 of them */
static inline __attribute__((always_inline)) float lora_b(const void *b, size_t i, int f16) {
    return f16 ? lp_fp16_to_fp32(((const uint16_t *)b)[i]) : ((const float *)b)[i];
}
static inline __attribute__((always_inline)) __m256 lora_b8(const void *b, size_t i, int f16) {
    return f16 ? load_f16((const uint16_t *)b + i) : _mm256_loadu_ps((const float *)b + i);
}

/* the sums in the scalar reference's order (y, then j = 0, 1, ...), products and sums rounded apart; the
   rows of whole blocks 8 at a time. One body for F32 and F16 B (f16 is a constant where it is inlined). */
static inline __attribute__((always_inline)) void lora_up_rows(int r0, int r1, int rank, const float *c,
                                                               const void *b, float *y, int f16) {
    int r = r0;
    for (; r < r1 && (r % 8 || r + 8 > r1); r++) {
        float acc = y[r];
        for (int j = 0; j < rank; j++) acc += c[j] * lora_b(b, LP_LORA_B_AT(r, j, rank), f16);
        y[r] = acc;
    }
    for (; r + 8 <= r1; r += 8) {
        const size_t blk = LP_LORA_B_AT(r, 0, rank);
        __m256 acc = _mm256_loadu_ps(y + r);
        for (int j = 0; j < rank; j++)
            acc = _mm256_add_ps(acc, _mm256_mul_ps(_mm256_set1_ps(c[j]), lora_b8(b, blk + 8 * (size_t)j, f16)));
        _mm256_storeu_ps(y + r, acc);
    }
    for (; r < r1; r++) {
        float acc = y[r];
        for (int j = 0; j < rank; j++) acc += c[j] * lora_b(b, LP_LORA_B_AT(r, j, rank), f16);
        y[r] = acc;
    }
}

static void lora_up(int r0, int r1, int rank, const float *c, const float *b, float *y) {
    lora_up_rows(r0, r1, rank, c, b, y, 0);
}

static void lora_up_f16(int r0, int r1, int rank, const float *c, const uint16_t *b, float *y) {
    lora_up_rows(r0, r1, rank, c, b, y, 1);
}

static float dot_f16_f32(int n, const uint16_t *a, const float *x) {
    __m256 acc[2] = {_mm256_setzero_ps(), _mm256_setzero_ps()};
    int i = 0;
    for (; i + 16 <= n; i += 16) {
        acc[0] = _mm256_fmadd_ps(load_f16(a + i), _mm256_loadu_ps(x + i), acc[0]);
        acc[1] = _mm256_fmadd_ps(load_f16(a + i + 8), _mm256_loadu_ps(x + i + 8), acc[1]);
    }
    for (; i + 8 <= n; i += 8) acc[0] = _mm256_fmadd_ps(load_f16(a + i), _mm256_loadu_ps(x + i), acc[0]);
    float sum = hsum_ps(_mm256_add_ps(acc[0], acc[1]));
    for (; i < n; i++) sum += lp_fp16_to_fp32(a[i]) * x[i];
    return sum;
}

void lp_engine_kernels_avx2(lp_engine_kernels *k) {
    k->lora_up = lora_up;
    k->lora_up_f16 = lora_up_f16;
    k->dot_f16_f32 = dot_f16_f32;
    k->rms_norm = rms_norm;
    k->swiglu = swiglu;
    k->softmax_exp = softmax_exp;
    k->attn_scores_f16 = attn_scores_f16;
    k->attn_values_f16 = attn_values_f16;
    k->f32_to_f16 = f32_to_f16;
    k->rope = rope;
    k->axpy = axpy;
}
#else
void lp_engine_kernels_avx2(lp_engine_kernels *k) { (void)k; }
#endif
