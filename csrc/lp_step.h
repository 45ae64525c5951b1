/* The forward step's shared pieces (engine.c and engine_moe.c): internal. */
#ifndef LP_STEP_H
#define LP_STEP_H

#include <stdatomic.h>
#include <math.h>
#include <stddef.h>

#include "lp_core.h"
#include "lp_engine.h"

static inline size_t act_row_bytes(const lp_engine *e, const lp_weight *w) {
    const lp_type_traits *vt = &e->traits[w->tr->vec_dot_type];
    return (size_t)(w->ne0 / vt->blck_size) * (size_t)vt->type_size;
}

static inline lp_from_float_fn act_quantizer(const lp_engine *e, int at) {
    return e->mm.quant[at] ? e->mm.quant[at] : e->traits[at].from_float;
}

typedef struct {
    lp_engine *e;
    int ith, nth, phase;
} worker;

/* next chunk of the current dynamic phase, or -1 when it is exhausted */
static inline int take(worker *w, int n_chunks) {
    int c = atomic_fetch_add_explicit(&w->e->counters[w->phase], 1, memory_order_relaxed);
    return c < n_chunks ? c : -1;
}


/* a = gelu_tanh(a) * b: the GELU FFN's gate (SiLU's is the kernel table's swiglu) */
static inline void lp_geglu(int n, float *a, const float *b) {
    const float c = 0.7978845608028654f;   /* sqrt(2 / pi) */
    for (int i = 0; i < n; i++) {
        float x = a[i];
        a[i] = 0.5f * x * (1.0f + tanhf(c * (x + 0.044715f * x * x * x))) * b[i];
    }
}

/* out[t*out_stride + r] = dot(row r of w, activation t) for r in [r0, r1), t < n_tok; activations xq
   (engine_ops.c) */
void lp_matmul_chunk_x(const lp_engine *e, const lp_weight *w, int r0, int r1, int n_tok, float *out,
                       int out_stride, const char *xq);
/* rows per chunk of a matrix product split between nth threads */
static inline int lp_chunk_rows(int rows, int nth) {
    int c = rows / (nth * 16);
    c = (c + 15) / 16 * 16;
    return c < 16 ? 16 : c;
}

/* mixture of experts (engine_moe.c) */
void lp_phase_route(worker *w, int l);
void lp_moe_gather(lp_engine *e, int l);
void lp_phase_moe_gate_up(worker *w, int l);
void lp_phase_moe_down(worker *w, int l);
void lp_phase_moe_combine(worker *w, float *tmp, int post_norm);

#endif
