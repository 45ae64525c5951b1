/* LoRA adapters at run time: each pair (A, B) of an adapter on a weight W adds scale * B (A x) to W x in the
 * forward step, beside the product with the (possibly quantized) W, which stays as it is. A and B are F32 rows
 * owned by the caller. Adapter scales are set between steps (lp_engine_lora_scale), so adapters switch on,
 * off or to another strength without reloading anything; a pair whose adapter has scale 0 costs nothing.
 *
 * In a phase, the threads first share out the rows of u = A x (rank values per token and pair) and say so on
 * the phase's sync counter; each chunk of rows of the product then adds scale * B u to the rows it produced,
 * before its epilogue (bias, RoPE, residual add, SwiGLU). A thread waits for the others' rows of u only
 * before its first such addition, after its first chunk of the product: by then they are done as a rule,
 * so the phase needs no barrier of its own and each A is read once per step.
 */
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "lp_core.h"
#include "lp_engine.h"

lp_weight *lp_engine_slot(lp_engine *e, int kind, int layer);   /* engine_setup.c */

void lp_lora_free(lp_engine *e) {
    if (!e) return;
    lp_weight *ws[] = {&e->output, NULL};
    for (int i = 0; ws[i]; i++) free(ws[i]->lora), ws[i]->lora = NULL;
    for (int l = 0; e->layers && l < e->p.n_layer; l++) {
        lp_layer_weights *L = &e->layers[l];
        lp_weight *lw[] = {&L->q, &L->k, &L->v, &L->o, &L->gate, &L->up, &L->down};
        for (size_t i = 0; i < sizeof lw / sizeof lw[0]; i++) free(lw[i]->lora), lw[i]->lora = NULL;
    }
    free(e->lora_scale);
    free(e->lora_u);
    free(e->lora_sync);
    e->lora_scale = NULL;
    e->lora_u = NULL;
    e->lora_sync = NULL;
}

void lp_lora_reset(lp_engine *e) {
    if (!e->lora_sync) return;
    for (int i = 0; i < LP_LORA_SYNCS(e->p.n_layer); i++) atomic_store_explicit(&e->lora_sync[i], 0, memory_order_relaxed);
}

int lp_engine_lora_add(lp_engine *e, int kind, int layer, int adapter, const void *a, const void *b, int rank, int type,
                       float mult) {
    switch (kind) {
    case LP_W_Q: case LP_W_K: case LP_W_V: case LP_W_O: case LP_W_GATE: case LP_W_UP: case LP_W_DOWN: case LP_W_OUTPUT:
        break;
    default:
        return lp_engine_fail(e, "LoRA on weight slot %d is not supported", kind);
    }
    lp_weight *w = lp_engine_slot(e, kind, layer);
    if (!w || !w->data) return lp_engine_fail(e, "LoRA on weight slot %d (layer %d): the base weight is not set", kind, layer);
    if (rank < 1 || rank > 256) return lp_engine_fail(e, "LoRA rank %d is not supported (1 to 256)", rank);
    if (adapter < 0 || adapter >= 4096) return lp_engine_fail(e, "LoRA adapter index %d out of range", adapter);
    if (!a || !b) return lp_engine_fail(e, "LoRA pair without data");
    if (type != LP_TYPE_F32 && type != LP_TYPE_F16) return lp_engine_fail(e, "LoRA pairs must be F32 or F16, not type %d", type);
    if (adapter >= e->n_lora_adapters) {
        float *s = realloc(e->lora_scale, sizeof(float) * (size_t)(adapter + 1));
        if (!s) return lp_engine_fail(e, "out of memory for LoRA scales");
        for (int i = e->n_lora_adapters; i <= adapter; i++) s[i] = 0.0f;
        e->lora_scale = s;
        e->n_lora_adapters = adapter + 1;
    }
    if (!e->lora_sync) {
        e->lora_sync = calloc((size_t)LP_LORA_SYNCS(e->p.n_layer), sizeof(atomic_int));
        if (!e->lora_sync) return lp_engine_fail(e, "out of memory for LoRA");
    }
    if (w->lora_rank + rank > e->lora_max_rank) {
        size_t n = LP_LORA_PER_PHASE * (size_t)e->p.n_batch * (size_t)(w->lora_rank + rank);
        float *u = realloc(e->lora_u, n * sizeof(float));
        if (!u) return lp_engine_fail(e, "out of memory for LoRA activations");
        e->lora_u = u;
        e->lora_max_rank = w->lora_rank + rank;
    }
    lp_lora_pair *p = realloc(w->lora, sizeof *p * (size_t)(w->n_lora + 1));
    if (!p) return lp_engine_fail(e, "out of memory for LoRA pairs");
    p[w->n_lora] = (lp_lora_pair){a, b, rank, adapter, type == LP_TYPE_F16, mult};
    w->lora = p;
    w->n_lora++;
    w->lora_rank += rank;
    return 0;
}

int lp_engine_lora_scale(lp_engine *e, int adapter, float scale) {
    if (adapter < 0 || adapter >= e->n_lora_adapters)
        return lp_engine_fail(e, "LoRA adapter %d does not exist (have %d)", adapter, e->n_lora_adapters);
    e->lora_scale[adapter] = scale;
    return 0;
}

int lp_lora_active(const lp_engine *e, const lp_weight *w) {
    for (int i = 0; i < w->n_lora; i++)
        if (e->lora_scale[w->lora[i].adapter] != 0.0f) return 1;
    return 0;
}

const float *lp_lora_u(const lp_engine *e, int which) {
    return e->lora_u + (size_t)which * (size_t)e->p.n_batch * (size_t)e->lora_max_rank;
}

void lp_lora_down(lp_engine *e, const lp_weight *const *ws, int n, const float *x, int x_stride, int n_tok, int ith,
                  int nth, int sync) {
    const lp_vec_dot_fn dot = e->traits[LP_TYPE_F32].vec_dot;
    int item = 0;   /* (token, weight, pair, row of A) in order; this thread takes every nth */
    for (int t = 0; t < n_tok; t++) {
        const float *xt = x + (size_t)t * x_stride;
        for (int i = 0; i < n; i++) {
            const lp_weight *w = ws[i];
            float *ut = (float *)lp_lora_u(e, i) + (size_t)t * w->lora_rank;
            const int len = (int)w->ne0;
            for (int k = 0, off = 0; k < w->n_lora; off += w->lora[k].rank, k++) {
                const lp_lora_pair *p = &w->lora[k];
                if (e->lora_scale[p->adapter] == 0.0f) continue;
                int j = (ith - item) % nth;
                if (j < 0) j += nth;
                for (; j < p->rank; j += nth) {
                    if (p->f16)
                        ut[off + j] = e->kern.dot_f16_f32(len, (const uint16_t *)p->a + (size_t)j * len, xt);
                    else
                        dot(len, &ut[off + j], (const float *)p->a + (size_t)j * len, xt);
                }
                item += p->rank;
            }
        }
    }
    atomic_fetch_add_explicit(&e->lora_sync[sync], 1, memory_order_release);
}

void lp_lora_wait(lp_engine *e, int sync, int nth) {
    int spins = 0;
    while (atomic_load_explicit(&e->lora_sync[sync], memory_order_acquire) < nth) {
        if (++spins > 2000) {   /* an oversubscribed machine: let the others run */
            sched_yield();
            spins = 0;
        }
    }
}

void lp_lora_up(const lp_engine *e, const lp_weight *w, const float *u, int n_tok, int r0, int r1, float *out,
                int out_stride) {
    const int lr = w->lora_rank;
    for (int i = 0, off = 0; i < w->n_lora; off += w->lora[i].rank, i++) {
        const lp_lora_pair *p = &w->lora[i];
        if (e->lora_scale[p->adapter] == 0.0f) continue;
        const float s = e->lora_scale[p->adapter] * p->mult;
        float c[256];
        for (int t = 0; t < n_tok; t++) {
            const float *ut = u + (size_t)t * lr + off;
            float *ot = out + (size_t)t * out_stride;
            for (int j = 0; j < p->rank; j++) c[j] = s * ut[j];
            if (p->f16)
                e->kern.lora_up_f16(r0, r1, p->rank, c, p->b, ot);
            else
                e->kern.lora_up(r0, r1, p->rank, c, p->b, ot);
        }
    }
}
