/* F32, F16 and BF16 rows: conversion and dot products (scalar reference). */
#include <math.h>
#include <string.h>

#include "lp_core.h"

static inline uint32_t f2u(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }
static inline float u2f(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }

float lp_fp16_to_fp32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000) << 16, exp = (h >> 10) & 0x1f, man = h & 0x3ff;
    if (exp == 0) {
        if (man == 0) return u2f(sign);
        float f = (float)man * (1.0f / 16777216.0f); /* subnormal: man * 2^-24 */
        return sign ? -f : f;
    }
    if (exp == 31) return u2f(sign | 0x7f800000u | (man << 13));
    return u2f(sign | ((exp + 112) << 23) | (man << 13));
}

uint16_t lp_fp32_to_fp16(float f) {
    /* round to nearest even, as the hardware conversion (F16C / NEON) does */
    uint32_t x = f2u(f), sign = (x >> 16) & 0x8000;
    uint32_t ax = x & 0x7fffffffu;
    if (ax >= 0x7f800000u) return (uint16_t)(sign | 0x7c00 | (ax > 0x7f800000u ? 0x200 : 0));
    if (ax >= 0x477ff000u) return (uint16_t)(sign | 0x7c00); /* overflow to inf */
    if (ax < 0x38800000u) { /* subnormal or zero in fp16 */
        float v = u2f(ax) * 16777216.0f; /* scale so that 1 ulp of fp16 subnormal = 1.0 */
        float r = nearbyintf(v);
        return (uint16_t)(sign | (uint32_t)r);
    }
    uint32_t mant_odd = (ax >> 13) & 1;
    ax += 0xfffu + mant_odd;
    return (uint16_t)(sign | ((ax - 0x38000000u) >> 13));
}

float lp_bf16_to_fp32(uint16_t h) { return u2f((uint32_t)h << 16); }

uint16_t lp_fp32_to_bf16(float f) {
    uint32_t u = f2u(f);
    if ((u & 0x7fffffff) > 0x7f800000) return (uint16_t)((u >> 16) | 64); /* quiet NaN */
    return (uint16_t)((u + (0x7fff + ((u >> 16) & 1))) >> 16);
}

static void f32_to_float(const void *x, float *y, int64_t n) { memcpy(y, x, (size_t)n * 4); }
static void f32_from_float(const float *x, void *y, int64_t n) { memcpy(y, x, (size_t)n * 4); }

/* F16 and BF16 rows: element by element through the conversions above */
static inline void half_to_float(const uint16_t *h, float *y, int64_t n, float (*to32)(uint16_t)) {
    for (int64_t i = 0; i < n; i++) y[i] = to32(h[i]);
}
static inline void half_from_float(const float *x, uint16_t *h, int64_t n, uint16_t (*from32)(float)) {
    for (int64_t i = 0; i < n; i++) h[i] = from32(x[i]);
}
static inline float half_dot(int n, const uint16_t *a, const uint16_t *b, float (*to32)(uint16_t)) {
    double sum = 0;
    for (int i = 0; i < n; i++) sum += (double)to32(a[i]) * to32(b[i]);
    return (float)sum;
}

static void f16_to_float(const void *x, float *y, int64_t n) { half_to_float(x, y, n, lp_fp16_to_fp32); }
static void f16_from_float(const float *x, void *y, int64_t n) { half_from_float(x, y, n, lp_fp32_to_fp16); }
static void f16_vec_dot(int n, float *s, const void *x, const void *y) { *s = half_dot(n, x, y, lp_fp16_to_fp32); }
static void bf16_to_float(const void *x, float *y, int64_t n) { half_to_float(x, y, n, lp_bf16_to_fp32); }
static void bf16_from_float(const float *x, void *y, int64_t n) { half_from_float(x, y, n, lp_fp32_to_bf16); }
static void bf16_vec_dot(int n, float *s, const void *x, const void *y) { *s = half_dot(n, x, y, lp_bf16_to_fp32); }

static void f32_vec_dot(int n, float *s, const void *x, const void *y) {
    const float *a = x, *b = y;
    double sum = 0;
    for (int i = 0; i < n; i++) sum += (double)a[i] * b[i];
    *s = (float)sum;
}

void lp_register_float_scalar(lp_type_traits *t) {
    t[LP_TYPE_F32] = (lp_type_traits){"f32", 1, 4, LP_TYPE_F32, f32_to_float, f32_from_float,
                                      f32_from_float, f32_vec_dot};
    t[LP_TYPE_F16] = (lp_type_traits){"f16", 1, 2, LP_TYPE_F16, f16_to_float, f16_from_float,
                                      f16_from_float, f16_vec_dot};
    t[LP_TYPE_BF16] = (lp_type_traits){"bf16", 1, 2, LP_TYPE_BF16, bf16_to_float, bf16_from_float,
                                       bf16_from_float, bf16_vec_dot};
}
