/* CPU detection, the run-time choice of kernels, and the public row API that dispatches to them. */
#include <pthread.h>
#include <stdatomic.h>

#include "lp_core.h"

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#define LP_X86 1
#endif

int lp_cpu_has_avx2(void) {
#ifdef LP_X86
    unsigned a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d)) return 0;
    int fma = (c >> 12) & 1, osxsave = (c >> 27) & 1, avx = (c >> 28) & 1, f16c = (c >> 29) & 1;
    if (!(fma && osxsave && avx && f16c)) return 0;
    unsigned xlo, xhi;
    __asm__ volatile("xgetbv" : "=a"(xlo), "=d"(xhi) : "c"(0));
    if ((xlo & 6) != 6) return 0; /* OS saves XMM and YMM state */
    if (__get_cpuid_max(0, NULL) < 7) return 0;
    __cpuid_count(7, 0, a, b, c, d);
    return (b >> 5) & 1;
#else
    return 0;
#endif
}

int lp_cpu_has_neon(void) {
#if defined(__aarch64__) || defined(__ARM_NEON)
    return 1;
#else
    return 0;
#endif
}

int lp_kernels_best(void) {
    if (lp_cpu_has_avx2()) return LP_KERNELS_AVX2;
    if (lp_cpu_has_neon()) return LP_KERNELS_NEON;
    return LP_KERNELS_SCALAR;
}

const char *lp_kernels_name(int level) {
    switch (level) {
    case LP_KERNELS_SCALAR: return "scalar";
    case LP_KERNELS_AVX2: return "avx2+fma+f16c";
    case LP_KERNELS_NEON: return "neon";
    default: return "unknown";
    }
}

/* ---- the kernel tables ----
 *
 * One table per level, filled the first time that level is chosen and never written again: readers need no
 * lock, and a table pointer stays valid for the life of the process. Switching levels only changes which
 * table is active (an atomic store, after the table is complete). The first use picks the best level, once
 * (pthread_once), whichever thread gets there first.
 *
 * So lp_kernels_set() may be called at any time from any thread. An engine keeps the table and kernels of
 * the level active when it was created (lp_engine_new), so a switch never changes an engine, running or not;
 * a row-API call that races with a switch runs either level's kernels. */

#define LP_LEVELS (LP_KERNELS_NEON + 1)

static lp_type_traits tables[LP_LEVELS][LP_TYPE_COUNT];
static int built[LP_LEVELS];                                   /* under build_lock */
static pthread_mutex_t build_lock = PTHREAD_MUTEX_INITIALIZER;
static atomic_int active = -1;
static pthread_once_t first_use = PTHREAD_ONCE_INIT;

static void fill_table(int level, lp_type_traits *t) {
    lp_register_float_scalar(t);
    lp_register_legacy_scalar(t);
    lp_register_kquants_scalar(t);
#if LP_HAVE_AVX2_FILES
    if (level == LP_KERNELS_AVX2) {
        lp_register_float_avx2(t);
        lp_register_legacy_avx2(t);
        lp_register_legacy_quantize_avx2(t);
        lp_register_kquants_avx2(t);
    }
#endif
#if LP_HAVE_NEON_FILES
    if (level == LP_KERNELS_NEON) {
        lp_register_float_neon(t);
        lp_register_legacy_neon(t);
        lp_register_kquants_neon(t);
    }
#endif
    (void)level;
}

static void activate(int level) {
    pthread_mutex_lock(&build_lock);
    if (!built[level]) {
        fill_table(level, tables[level]);
        built[level] = 1;
    }
    atomic_store_explicit(&active, level, memory_order_release);
    pthread_mutex_unlock(&build_lock);
}

static void activate_best(void) { activate(lp_kernels_best()); }

int lp_kernels_set(int level) {
    if (level == LP_KERNELS_AVX2 && !lp_cpu_has_avx2()) return -1;
    if (level == LP_KERNELS_NEON && !lp_cpu_has_neon()) return -1;
    if (level < 0 || level > LP_KERNELS_NEON) return -1;
    pthread_once(&first_use, activate_best);   /* first, so that a later first use can't undo this choice */
    activate(level);
    return 0;
}

const lp_type_traits *lp_kernels_table(int *level) {
    pthread_once(&first_use, activate_best);
    const int l = atomic_load_explicit(&active, memory_order_acquire);
    if (level) *level = l;
    return tables[l];
}

int lp_kernels_active(void) {
    int level;
    lp_kernels_table(&level);
    return level;
}

const lp_type_traits *lp_get_traits(int type) {
    const lp_type_traits *t = lp_kernels_table(NULL);
    if (type < 0 || type >= LP_TYPE_COUNT || t[type].blck_size == 0) return NULL;
    return &t[type];
}

int lp_type_supported(int type) { return lp_get_traits(type) != NULL; }

int64_t lp_blck_size(int type) {
    const lp_type_traits *t = lp_get_traits(type);
    return t ? t->blck_size : -1;
}

int64_t lp_type_size(int type) {
    const lp_type_traits *t = lp_get_traits(type);
    return t ? t->type_size : -1;
}

int64_t lp_row_size(int type, int64_t n) {
    const lp_type_traits *t = lp_get_traits(type);
    if (!t || n < 0 || n % t->blck_size) return -1;
    return n / t->blck_size * t->type_size;
}

int lp_vec_dot_type(int type) {
    const lp_type_traits *t = lp_get_traits(type);
    return t ? t->vec_dot_type : -1;
}

int lp_quantize_row_ref(int type, const float *x, void *y, int64_t n) {
    const lp_type_traits *t = lp_get_traits(type);
    if (!t || !t->from_float_ref || n % t->blck_size) return -1;
    t->from_float_ref(x, y, n);
    return 0;
}

int lp_quantize_row(int type, const float *x, void *y, int64_t n) {
    const lp_type_traits *t = lp_get_traits(type);
    if (!t || !t->from_float || n % t->blck_size) return -1;
    t->from_float(x, y, n);
    return 0;
}

int lp_dequantize_row(int type, const void *x, float *y, int64_t n) {
    const lp_type_traits *t = lp_get_traits(type);
    if (!t || !t->to_float || n % t->blck_size) return -1;
    t->to_float(x, y, n);
    return 0;
}

int lp_vec_dot(int type, int64_t n, const void *x, const void *y, float *s) {
    const lp_type_traits *t = lp_get_traits(type);
    if (!t || !t->vec_dot || n % t->blck_size || n > 0x7fffffff) return -1;
    t->vec_dot((int)n, s, x, y);
    return 0;
}

int lp_vec_dot_rows(int type, int64_t n, int nrc, const void *x, const void *y, int64_t y_stride, float *s) {
    const lp_type_traits *t = lp_get_traits(type);
    if (!t || !t->vec_dot || n % t->blck_size || n > 0x7fffffff || nrc < 0 || y_stride < 0) return -1;
    if (t->vec_dot_rows) {
        t->vec_dot_rows((int)n, nrc, s, 1, x, y, (size_t)y_stride);
    } else {
        for (int j = 0; j < nrc; j++) t->vec_dot((int)n, &s[j], x, (const char *)y + j * y_stride);
    }
    return 0;
}
