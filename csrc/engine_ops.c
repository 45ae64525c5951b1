/* The engine's matrix product on its own, for tests and benchmarks: with the engine's activation
 * quantizers and fast paths. */
#include <stdlib.h>
#include <string.h>

#include "lp_core.h"
#include "lp_engine.h"

void lp_engine_matmul_init(lp_engine_matmul *m, int level) {
    memset(m, 0, sizeof *m);
    if (level == LP_KERNELS_AVX2) {
        lp_engine_matmul_avx2(m);
        lp_engine_matmul_kquants_avx2(m);
    }
}

int lp_quantize_activations(int type, const float *x, void *y, int64_t n) {
    const lp_type_traits *t = lp_get_traits(type);
    if (!t || !t->from_float || n % t->blck_size) return -1;
    lp_engine_matmul m;
    lp_engine_matmul_init(&m, lp_kernels_active());
    (m.quant[type] ? m.quant[type] : t->from_float)(x, y, n);
    return 0;
}

int lp_matmul(int type, int64_t n, int64_t nr, int64_t nc, const void *w, const float *x, float *out) {
    const lp_type_traits *t = lp_get_traits(type);
    if (!t || !t->vec_dot || n % t->blck_size || n > 0x7fffffff || nr < 0 || nc < 0) return -1;
    const lp_type_traits *vt = lp_get_traits(t->vec_dot_type);
    if (!vt || !vt->from_float || n % vt->blck_size) return -1;
    size_t wrow = (size_t)(n / t->blck_size * t->type_size), xrow = (size_t)(n / vt->blck_size * vt->type_size);
    char *xq = malloc(xrow * (size_t)(nc ? nc : 1));
    if (!xq) return -1;
    for (int64_t c = 0; c < nc; c++) lp_quantize_activations(t->vec_dot_type, x + c * n, xq + c * xrow, n);
    lp_engine_matmul m;
    lp_engine_matmul_init(&m, lp_kernels_active());
    const int pr = m.pack_rows[type];
    if (pr && nr >= pr && n <= 16384) {
        const int64_t rows = nr / pr * pr;
        void *packed = malloc((size_t)rows * wrow);
        if (!packed) {
            free(xq);
            return -1;
        }
        m.pack[type](w, wrow, packed, n, rows);
        m.mm_packed[type]((int)n, (int)rows, (int)nc, packed, (size_t)pr * wrow, xq, xrow, out, (size_t)nr);
        free(packed);
        if (rows < nr) {   /* the last rows the usual way */
            float *tmp = malloc(sizeof(float) * (size_t)(nr - rows) * (size_t)(nc ? nc : 1));
            if (!tmp) {
                free(xq);
                return -1;
            }
            const char *wr = (const char *)w + rows * wrow;
            if (m.mm[type]) m.mm[type]((int)n, (int)(nr - rows), (int)nc, wr, wrow, xq, xrow, tmp, (size_t)(nr - rows));
            else
                for (int64_t c = 0; c < nc; c++)
                    for (int64_t r = 0; r < nr - rows; r++)
                        t->vec_dot((int)n, &tmp[c * (nr - rows) + r], wr + r * wrow, xq + c * xrow);
            for (int64_t c = 0; c < nc; c++)
                for (int64_t r = rows; r < nr; r++) out[c * nr + r] = tmp[c * (nr - rows) + (r - rows)];
            free(tmp);
        }
    } else if (m.mm[type]) {
        m.mm[type]((int)n, (int)nr, (int)nc, w, wrow, xq, xrow, out, (size_t)nr);
    } else if (t->vec_dot_rows && nc > 1) {
        for (int64_t r = 0; r < nr; r++)
            t->vec_dot_rows((int)n, (int)nc, out + r, (size_t)nr, (const char *)w + r * wrow, xq, xrow);
    } else {
        for (int64_t c = 0; c < nc; c++)
            for (int64_t r = 0; r < nr; r++) t->vec_dot((int)n, &out[c * nr + r], (const char *)w + r * wrow, xq + c * xrow);
    }
    free(xq);
    return 0;
}
