/* The mixture-of-experts FFN of the forward step (engine.c runs these phases when n_expert > 0): route each
 * token to its top-k experts (softmax gating, renormalised where the model says), group the (token, expert)
 * pairs by expert, run each chosen expert's gate/up and down rows for its tokens only (decode reads only the
 * active experts' weights), and add the weighted outputs (plus the shared expert's, under its gate) to x. */
#include <math.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "lp_core.h"
#include "lp_engine.h"
#include "lp_step.h"

/* expert g's rows of a 3-d expert tensor as a weight of its own (group n_expert: the shared expert) */
static lp_weight expert_view(const lp_engine *e, const lp_layer_weights *L, int which, int g) {
    const lp_weight *w = which == 0 ? (g < e->p.arch.n_expert ? &L->gate_exps : &L->gate_shexp)
                       : which == 1 ? (g < e->p.arch.n_expert ? &L->up_exps : &L->up_shexp)
                                    : (g < e->p.arch.n_expert ? &L->down_exps : &L->down_shexp);
    if (g >= e->p.arch.n_expert) return *w;
    lp_weight v = *w;
    const int64_t rows = w->ne1 / e->p.arch.n_expert, r0 = rows * g;
    v.ne1 = rows;
    v.data = (const char *)w->data + (size_t)r0 * w->row_bytes;
    v.packed = NULL;
    if (w->packed && rows % w->pack_rows == 0 && r0 + rows <= w->ne1 / w->pack_rows * w->pack_rows)
        v.packed = (char *)w->packed + (size_t)r0 * w->row_bytes;
    return v;
}

/* router: each token's experts and weights (the tokens split between the threads) */
void lp_phase_route(worker *w, int l) {
    lp_engine *e = w->e;
    const lp_layer_weights *L = &e->layers[l];
    const lp_arch_traits *a = &e->p.arch;
    const int n = e->p.n_embd, ne = a->n_expert, k = a->n_expert_used;
    float *row = e->trow + (size_t)w->ith * n, prob[ne];
    for (int t = w->ith; t < e->n_tok; t += w->nth) {
        const float *xt = e->xn + (size_t)t * n;
        float max = -INFINITY;
        for (int j = 0; j < ne; j++) {
            L->gate_inp.tr->to_float((const char *)L->gate_inp.data + (size_t)j * L->gate_inp.row_bytes, row, n);
            double s = 0;
            for (int i = 0; i < n; i++) s += (double)row[i] * xt[i];
            prob[j] = (float)s;
            if (prob[j] > max) max = prob[j];
        }
        double sum = 0;
        for (int j = 0; j < ne; j++) sum += prob[j] = expf(prob[j] - max);
        for (int j = 0; j < ne; j++) prob[j] = (float)(prob[j] / sum);
        int *sel = e->moe_sel + (size_t)t * k;
        float *wt = e->moe_w + (size_t)t * (k + 1), wsum = 0;
        for (int i = 0; i < k; i++) {   /* the k largest, equal ones in index order */
            int best = -1;
            for (int j = 0; j < ne; j++) {
                int taken = 0;
                for (int q = 0; q < i; q++) taken |= sel[q] == j;
                if (!taken && (best < 0 || prob[j] > prob[best])) best = j;
            }
            sel[i] = best;
            wt[i] = prob[best];
            wsum += prob[best];
        }
        if (a->expert_weights_norm)
            for (int i = 0; i < k; i++) wt[i] /= wsum;
        if (a->n_ff_shexp > 0) {
            /* the shared expert's gate: a product of one row, as the reference computes it (an F32 row against
             * the activations, another type against the activations in its dot-product type) */
            const lp_weight *gs = &L->gate_inp_shexp;
            double s = 0;
            if (gs->type == LP_TYPE_F32) {
                const float *g = gs->data;
                for (int i = 0; i < n; i++) s += (double)g[i] * xt[i];
            } else {
                const int vt = gs->tr->vec_dot_type;
                char qx[(size_t)(n / e->traits[vt].blck_size + 1) * (size_t)e->traits[vt].type_size];
                float d;
                act_quantizer(e, vt)(xt, qx, n);
                gs->tr->vec_dot(n, &d, gs->data, qx);
                s = d;
            }
            wt[k] = 1.0f / (1.0f + expf(-(float)s));
        }
    }
}

/* one thread groups the (token, expert) pairs by expert and gathers their quantized activations */
void lp_moe_gather(lp_engine *e, int l) {
    const lp_layer_weights *L = &e->layers[l];
    const lp_arch_traits *a = &e->p.arch;
    const int k = a->n_expert_used, ng = a->n_ff_shexp > 0 ? e->n_groups : e->n_groups - 1;
    memset(e->moe_cnt, 0, sizeof(int) * (size_t)e->n_groups);
    for (int t = 0; t < e->n_tok; t++) {
        for (int i = 0; i < k; i++) e->moe_cnt[e->moe_sel[(size_t)t * k + i]]++;
        if (ng == e->n_groups) e->moe_cnt[a->n_expert]++;
    }
    for (int g = 0, off = 0; g < e->n_groups; off += e->moe_cnt[g], g++) e->moe_off[g] = off;
    int fill[e->n_groups];
    memset(fill, 0, sizeof fill);
    for (int t = 0; t < e->n_tok; t++)
        for (int i = 0; i <= k; i++) {
            int g = i < k ? e->moe_sel[(size_t)t * k + i] : a->n_expert;
            if (i == k && ng != e->n_groups) break;
            int pr = e->moe_off[g] + fill[g]++;
            e->moe_tok[pr] = t;
            e->moe_pair[(size_t)t * (k + 1) + i] = pr;
        }
    const lp_weight *ws[4] = {&L->gate_exps, &L->up_exps, &L->gate_shexp, &L->up_shexp};
    int done[4], nd = 0;
    for (int i = 0; i < (ng == e->n_groups ? 4 : 2); i++) {
        int vt = ws[i]->tr->vec_dot_type, seen = 0;
        for (int j = 0; j < nd; j++) seen |= done[j] == vt;
        if (seen) continue;
        done[nd++] = vt;
        size_t rb = act_row_bytes(e, ws[i]);
        int pairs = e->moe_off[e->n_groups - 1] + e->moe_cnt[e->n_groups - 1];
        for (int pr = 0; pr < pairs; pr++)
            memcpy((char *)e->moe_xq[vt] + (size_t)pr * rb, (const char *)e->qbuf[vt] + (size_t)e->moe_tok[pr] * rb, rb);
    }
}

/* work items of a phase over the groups: chunks of `rows(g)` rows for each group that has pairs */
static int moe_items(const lp_engine *e, int which, const int *chunk) {
    const lp_arch_traits *a = &e->p.arch;
    int n = 0;
    for (int g = 0; g < e->n_groups; g++) {
        if (!e->moe_cnt[g]) continue;
        int rows = which == 2 ? e->p.n_embd : g < a->n_expert ? a->n_ff_exp : a->n_ff_shexp;
        n += (rows + chunk[g] - 1) / chunk[g];
    }
    return n;
}

static void moe_find(const lp_engine *e, int which, const int *chunk, int c, int *g_out, int *r0, int *r1) {
    const lp_arch_traits *a = &e->p.arch;
    for (int g = 0; g < e->n_groups; g++) {
        if (!e->moe_cnt[g]) continue;
        int rows = which == 2 ? e->p.n_embd : g < a->n_expert ? a->n_ff_exp : a->n_ff_shexp;
        int nc = (rows + chunk[g] - 1) / chunk[g];
        if (c < nc) {
            *g_out = g;
            *r0 = c * chunk[g];
            *r1 = *r0 + chunk[g] < rows ? *r0 + chunk[g] : rows;
            return;
        }
        c -= nc;
    }
    *g_out = -1;
}

void lp_phase_moe_gate_up(worker *w, int l) {
    lp_engine *e = w->e;
    const lp_layer_weights *L = &e->layers[l];
    const lp_arch_traits *a = &e->p.arch;
    const int ffw = a->n_ff_exp > a->n_ff_shexp ? a->n_ff_exp : a->n_ff_shexp;
    int chunk[e->n_groups];
    for (int g = 0; g < e->n_groups; g++) {
        lp_weight down = expert_view(e, L, 2, g < a->n_expert ? g : a->n_expert);
        int rows = g < a->n_expert ? a->n_ff_exp : a->n_ff_shexp;
        int cr = lp_chunk_rows(rows, w->nth), bs = down.data ? (int)e->traits[down.tr->vec_dot_type].blck_size : 1;
        chunk[g] = (cr + bs - 1) / bs * bs;
    }
    int n_items = moe_items(e, 0, chunk), c;
    while ((c = take(w, n_items)) >= 0) {
        int g = -1, r0 = 0, r1 = 0;
        moe_find(e, 0, chunk, c, &g, &r0, &r1);
        if (g < 0) continue;
        lp_weight gw = expert_view(e, L, 0, g), uw = expert_view(e, L, 1, g), dw = expert_view(e, L, 2, g);
        const int off = e->moe_off[g], cnt = e->moe_cnt[g];
        float *ga = e->moe_a + (size_t)off * ffw, *ub = e->moe_b + (size_t)off * ffw;
        size_t xrb = act_row_bytes(e, &gw);
        lp_matmul_chunk_x(e, &gw, r0, r1, cnt, ga, ffw, (const char *)e->moe_xq[gw.tr->vec_dot_type] + (size_t)off * xrb);
        xrb = act_row_bytes(e, &uw);
        lp_matmul_chunk_x(e, &uw, r0, r1, cnt, ub, ffw, (const char *)e->moe_xq[uw.tr->vec_dot_type] + (size_t)off * xrb);
        const lp_type_traits *vt = &e->traits[dw.tr->vec_dot_type];
        lp_from_float_fn q = act_quantizer(e, dw.tr->vec_dot_type);
        size_t rb = act_row_bytes(e, &dw), qoff = (size_t)(r0 / vt->blck_size) * vt->type_size;
        for (int i = 0; i < cnt; i++) {
            float *gi = ga + (size_t)i * ffw + r0;
            (a->act_gelu ? lp_geglu : e->kern.swiglu)(r1 - r0, gi, ub + (size_t)i * ffw + r0);
            q(gi, (char *)e->moe_hq[dw.tr->vec_dot_type] + (size_t)(off + i) * rb + qoff, r1 - r0);
        }
    }
}

void lp_phase_moe_down(worker *w, int l) {
    lp_engine *e = w->e;
    const lp_layer_weights *L = &e->layers[l];
    const int n = e->p.n_embd;
    int chunk[e->n_groups];
    for (int g = 0; g < e->n_groups; g++) chunk[g] = lp_chunk_rows(n, w->nth);
    int n_items = moe_items(e, 2, chunk), c;
    while ((c = take(w, n_items)) >= 0) {
        int g = -1, r0 = 0, r1 = 0;
        moe_find(e, 2, chunk, c, &g, &r0, &r1);
        if (g < 0) continue;
        lp_weight dw = expert_view(e, L, 2, g);
        const int off = e->moe_off[g];
        size_t rb = act_row_bytes(e, &dw);
        lp_matmul_chunk_x(e, &dw, r0, r1, e->moe_cnt[g], e->moe_o + (size_t)off * n, n,
                       (const char *)e->moe_hq[dw.tr->vec_dot_type] + (size_t)off * rb);
    }
}

/* x += (or tmp =, with a post-norm) the weighted sum of each token's expert outputs */
void lp_phase_moe_combine(worker *w, float *tmp, int post_norm) {
    lp_engine *e = w->e;
    const lp_arch_traits *a = &e->p.arch;
    const int n = e->p.n_embd, k = a->n_expert_used, kk = a->n_ff_shexp > 0 ? k + 1 : k;
    for (int t = w->ith; t < e->n_tok; t += w->nth) {
        float *dst = post_norm ? tmp + (size_t)t * n : e->x + (size_t)t * n;
        if (post_norm) memset(dst, 0, sizeof(float) * (size_t)n);
        for (int i = 0; i < kk; i++) {
            const float wt = e->moe_w[(size_t)t * (k + 1) + i];
            const float *o = e->moe_o + (size_t)e->moe_pair[(size_t)t * (k + 1) + i] * n;
            for (int r = 0; r < n; r++) dst[r] += wt * o[r];
        }
    }
}

