/* AVX2+FMA+F16C kernels: F32, F16 and BF16 rows.
 *
 * Conversions give exactly the scalar results (F16C rounds to nearest even, as the scalar code does;
 * only NaN payloads may differ); dot products use four FMA accumulators and end in a scalar tail.
 */
#if defined(__x86_64__) || defined(__i386__)
#pragma GCC target("avx2,fma,f16c")
#include <immintrin.h>
#include "lp_avx2.h"
#include <string.h>

#include "lp_core.h"

static inline __m256 load_bf16(const uint16_t *p) {
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)p)), 16));
}

static void f16_to_float(const void *vx, float *y, int64_t n) {
    const uint16_t *x = vx;
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(y + i, load_f16(x + i));
    for (; i < n; i++) y[i] = _cvtsh_ss(x[i]);
}

static void f16_from_float(const float *x, void *vy, int64_t n) {
    uint16_t *y = vy;
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm_storeu_si128((__m128i *)(y + i), _mm256_cvtps_ph(_mm256_loadu_ps(x + i), _MM_FROUND_TO_NEAREST_INT));
    for (; i < n; i++) y[i] = lp_fp32_to_fp16(x[i]);
}

static void bf16_to_float(const void *vx, float *y, int64_t n) {
    const uint16_t *x = vx;
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(y + i, load_bf16(x + i));
    for (; i < n; i++) y[i] = lp_bf16_to_fp32(x[i]);
}

static void bf16_from_float(const float *x, void *vy, int64_t n) {
    uint16_t *y = vy;
    int64_t i = 0;
    const __m256i abs_mask = _mm256_set1_epi32(0x7fffffff), inf = _mm256_set1_epi32(0x7f800000);
    for (; i + 8 <= n; i += 8) {
        const __m256i u = _mm256_loadu_si256((const __m256i *)(x + i));
        /* round to nearest even: add 0x7fff plus the lowest kept bit, keep the top half */
        const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
        const __m256i rounded = _mm256_srli_epi32(_mm256_add_epi32(u, _mm256_add_epi32(lsb, _mm256_set1_epi32(0x7fff))), 16);
        /* NaN: keep the top half and force it quiet */
        const __m256i quiet = _mm256_or_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(64));
        const __m256i is_nan = _mm256_cmpgt_epi32(_mm256_and_si256(u, abs_mask), inf);
        const __m256i r = _mm256_blendv_epi8(rounded, quiet, is_nan);
        /* 8 x int32 (each < 65536) -> 8 x uint16 */
        const __m128i packed = _mm_packus_epi32(_mm256_castsi256_si128(r), _mm256_extracti128_si256(r, 1));
        _mm_storeu_si128((__m128i *)(y + i), packed);
    }
    for (; i < n; i++) y[i] = lp_fp32_to_bf16(x[i]);
}

static void f32_vec_dot(int n, float *s, const void *vx, const void *vy) {
    const float *x = vx, *y = vy;
    __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
    int i = 0;
    for (; i + 32 <= n; i += 32)
        for (int k = 0; k < 4; k++)
            acc[k] = _mm256_fmadd_ps(_mm256_loadu_ps(x + i + 8 * k), _mm256_loadu_ps(y + i + 8 * k), acc[k]);
    for (; i + 8 <= n; i += 8) acc[0] = _mm256_fmadd_ps(_mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i), acc[0]);
    float sum = hsum_ps(_mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3])));
    for (; i < n; i++) sum += x[i] * y[i];
    *s = sum;
}

static void f16_vec_dot(int n, float *s, const void *vx, const void *vy) {
    const uint16_t *x = vx, *y = vy;
    __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
    int i = 0;
    for (; i + 32 <= n; i += 32)
        for (int k = 0; k < 4; k++)
            acc[k] = _mm256_fmadd_ps(load_f16(x + i + 8 * k), load_f16(y + i + 8 * k), acc[k]);
    for (; i + 8 <= n; i += 8) acc[0] = _mm256_fmadd_ps(load_f16(x + i), load_f16(y + i), acc[0]);
    float sum = hsum_ps(_mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3])));
    for (; i < n; i++) sum += _cvtsh_ss(x[i]) * _cvtsh_ss(y[i]);
    *s = sum;
}

/* one F16 row x against two rows y0, y1: each summed exactly as f16_vec_dot sums it (the same accumulators,
   FMAs in the same order, the same horizontal sum and tail); x is converted once for both */
static inline void f16_vec_dot2(int n, float *s0, float *s1, const uint16_t *x, const uint16_t *y0,
                                const uint16_t *y1) {
    __m256 a0[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
    __m256 a1[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
    int i = 0;
    for (; i + 32 <= n; i += 32)
        for (int k = 0; k < 4; k++) {
            const __m256 w = load_f16(x + i + 8 * k);
            a0[k] = _mm256_fmadd_ps(w, load_f16(y0 + i + 8 * k), a0[k]);
            a1[k] = _mm256_fmadd_ps(w, load_f16(y1 + i + 8 * k), a1[k]);
        }
    for (; i + 8 <= n; i += 8) {
        const __m256 w = load_f16(x + i);
        a0[0] = _mm256_fmadd_ps(w, load_f16(y0 + i), a0[0]);
        a1[0] = _mm256_fmadd_ps(w, load_f16(y1 + i), a1[0]);
    }
    float sum0 = hsum_ps(_mm256_add_ps(_mm256_add_ps(a0[0], a0[1]), _mm256_add_ps(a0[2], a0[3])));
    float sum1 = hsum_ps(_mm256_add_ps(_mm256_add_ps(a1[0], a1[1]), _mm256_add_ps(a1[2], a1[3])));
    for (; i < n; i++) {
        sum0 += _cvtsh_ss(x[i]) * _cvtsh_ss(y0[i]);
        sum1 += _cvtsh_ss(x[i]) * _cvtsh_ss(y1[i]);
    }
    *s0 = sum0;
    *s1 = sum1;
}

/* one F16 weight row against nrc activation rows (a batch's tokens): two at a time, so the weights are read
   and converted once per pair instead of once per token; bitwise f16_vec_dot per row */
static void f16_vec_dot_rows(int n, int nrc, float *s, size_t bs, const void *vx, const void *vy, size_t by) {
    const uint16_t *x = vx;
    const char *y = vy;
    int c = 0;
    for (; c + 2 <= nrc; c += 2)
        f16_vec_dot2(n, &s[c * bs], &s[(c + 1) * bs], x, (const uint16_t *)(y + c * by),
                     (const uint16_t *)(y + (c + 1) * by));
    if (c < nrc) f16_vec_dot(n, &s[c * bs], vx, y + c * by);
}

static void bf16_vec_dot(int n, float *s, const void *vx, const void *vy) {
    const uint16_t *x = vx, *y = vy;
    __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
    int i = 0;
    for (; i + 32 <= n; i += 32)
        for (int k = 0; k < 4; k++)
            acc[k] = _mm256_fmadd_ps(load_bf16(x + i + 8 * k), load_bf16(y + i + 8 * k), acc[k]);
    for (; i + 8 <= n; i += 8) acc[0] = _mm256_fmadd_ps(load_bf16(x + i), load_bf16(y + i), acc[0]);
    float sum = hsum_ps(_mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3])));
    for (; i < n; i++) sum += lp_bf16_to_fp32(x[i]) * lp_bf16_to_fp32(y[i]);
    *s = sum;
}

void lp_register_float_avx2(lp_type_traits *t) {
    lp_override(&t[LP_TYPE_F32], NULL, NULL, f32_vec_dot, NULL);
    lp_override(&t[LP_TYPE_F16], f16_to_float, f16_from_float, f16_vec_dot, f16_vec_dot_rows);
    lp_override(&t[LP_TYPE_BF16], bf16_to_float, bf16_from_float, bf16_vec_dot, NULL);
}
#endif
