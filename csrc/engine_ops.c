/* The engine's matrix product: the row chunks every step uses (lp_matmul_chunk_x), and on its own for tests
 * and benchmarks, with the engine's activation
 * quantizers and fast paths. */
#include <stdlib.h>
#include <string.h>

#include "lp_core.h"
#include "lp_engine.h"
#include "lp_step.h"

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

/* out[t*out_stride + r] = dot(row r of w, activation t) for r in [r0, r1), t < n_tok; activations from
   buffer slot (see act_buf) */
void lp_matmul_chunk_x(const lp_engine *e, const lp_weight *w, int r0, int r1, int n_tok, float *out,
                           int out_stride, const char *xq) {
    size_t xrb = act_row_bytes(e, w);
    const char *wd = w->data;
    if (w->packed && r0 % w->pack_rows == 0) {
        const int pr = w->pack_rows, rows = (int)(w->ne1 / pr * pr);
        const int r1p = r1 < rows ? (r1 - r0) / pr * pr + r0 : rows;
        if (r1p > r0) {
            const size_t group = (size_t)pr * w->row_bytes;
            e->mm.mm_packed[w->type]((int)w->ne0, r1p - r0, n_tok, (const char *)w->packed + (size_t)(r0 / pr) * group,
                                     group, xq, xrb, out + r0, (size_t)out_stride);
            r0 = r1p;
            if (r0 >= r1) return;
        }
    }
    lp_matmul_fn mm = e->mm.mm[w->type];
    if (mm) {
        mm((int)w->ne0, r1 - r0, n_tok, wd + (size_t)r0 * w->row_bytes, w->row_bytes, xq, xrb, out + r0,
           (size_t)out_stride);
        return;
    }
    lp_vec_dot_fn dot = w->tr->vec_dot;
    lp_vec_dot_rows_fn dot_rows = w->tr->vec_dot_rows;
    int n = (int)w->ne0;
    if (dot_rows && n_tok > 1) {
        /* one lp_weight row decoded once for several activation rows; activations in L1-sized groups */
        int tb = (int)(16384 / xrb);
        tb = tb < 4 ? 4 : tb / 4 * 4;
        for (int t0 = 0; t0 < n_tok; t0 += tb) {
            int nt = n_tok - t0 < tb ? n_tok - t0 : tb;
            for (int r = r0; r < r1; r++)
                dot_rows(n, nt, out + (size_t)t0 * out_stride + r, (size_t)out_stride, wd + (size_t)r * w->row_bytes,
                         xq + (size_t)t0 * xrb, xrb);
        }
        return;
    }
    if (n_tok == 1) {   /* one column streams the weights: fetch the row after next ahead of time */
        for (int r = r0; r < r1; r++) {
            if (r + 2 < r1) {
                const char *ahead = wd + (size_t)(r + 2) * w->row_bytes;
                for (size_t off = 0; off < w->row_bytes; off += 64) __builtin_prefetch(ahead + off);
            }
            dot(n, &out[r], wd + (size_t)r * w->row_bytes, xq);
        }
        return;
    }
    for (int t = 0; t < n_tok; t++) {
        const char *xt = xq + (size_t)t * xrb;
        float *ot = out + (size_t)t * out_stride;
        for (int r = r0; r < r1; r++) dot(n, &ot[r], wd + (size_t)r * w->row_bytes, xt);
    }
}
