/* The forward pass of a llama-architecture model, one call per batch of tokens; its relatives (Qwen, Gemma,
 * Phi-3, mixtures of experts) differ by the traits in p.arch and the optional weights they set, not by a
 * step of their own.
 *
 * Every thread of the pool runs forward_task(): the same walk through the layers, meeting at
 * barriers between the phases of a layer. Matrix products split their rows into chunks that
 * threads take from a shared counter; each chunk ends in an epilogue (bias, RoPE, KV store,
 * residual add, SwiGLU) so the small ops need no phase of their own. Per layer:
 *
 *   xn = rmsnorm(x) * attn_norm                          -> quantized for wq/wk/wv
 *   q, k, v = wq xn, wk xn, wv xn; rope(q, k); k, v -> KV cache
 *   att = softmax(q K^T * scale) V                      (per token and head, causal by position)
 *   x += wo att
 *   xn = rmsnorm(x) * ffn_norm                           -> quantized for w_gate/w_up
 *   x += w_down (silu(w_gate xn) * w_up xn)
 *
 * Traits: biases after wq/wk/wv; q and k RMS-normed per head before RoPE (q_norm, k_norm); NEOX RoPE
 * (pairs i, i + head_dim/2); scores soft-capped; sliding-window layers (with their own RoPE base);
 * the outputs of wo and w_down RMS-normed before the residual add (post_attn_norm, post_ffn_norm);
 * GELU(tanh) instead of SiLU; embeddings scaled; logits soft-capped. Experts (n_expert > 0): the FFN
 * becomes route (softmax, top-k per token) -> group the (token, expert) pairs by expert -> each chosen
 * expert's gate/up and down rows for its tokens only -> weighted sum into x (plus the shared expert).
 */
#include <math.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "lp_core.h"
#include "lp_engine.h"
#include "lp_step.h"

static double now_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* ---- the pieces of a step ---------------------------------------------------------------- */

/* Which activation buffer a matmul by w reads (slot): thread `slot`'s own (slot >= 0), the shared one for
   normed inputs (NORMED) or the shared one for attention and SwiGLU outputs (INNER). */
#define NORMED (-1)
#define INNER (-2)
static inline char *act_buf(const lp_engine *e, const lp_weight *w, int slot) {
    int at = w->tr->vec_dot_type;
    return slot == NORMED ? e->qbuf[at] : slot == INNER ? e->qbuf2[at] : e->tqbuf[slot * LP_TYPE_COUNT + at];
}

/* quantize rows [t0, t1) of src (stride n) for several weights (each vec_dot type once) into buffer slot */
static void quantize_for(lp_engine *e, const lp_weight *const *ws, int nw, const float *src, int n, int t0, int t1,
                         int slot) {
    int done[8], nd = 0;
    for (int i = 0; i < nw; i++) {
        int vt = ws[i]->tr->vec_dot_type, seen = 0;
        for (int j = 0; j < nd; j++) seen |= done[j] == vt;
        if (seen) continue;
        done[nd++] = vt;
        lp_from_float_fn q = act_quantizer(e, vt);
        size_t rb = act_row_bytes(e, ws[i]);
        char *dst = act_buf(e, ws[i], slot);
        for (int t = t0; t < t1; t++) q(src + (size_t)t * n, dst + (size_t)t * rb, n);
    }
}

static void matmul_chunk(const lp_engine *e, const lp_weight *w, int r0, int r1, int n_tok, float *out, int out_stride,
                         int slot) {
    lp_matmul_chunk_x(e, w, r0, r1, n_tok, out, out_stride, act_buf(e, w, slot));
}

static void add_bias(const lp_weight *b, float *out, int stride, int n_tok, int r0, int r1) {
    if (!b->data) return;
    const float *bd = b->data;
    for (int t = 0; t < n_tok; t++)
        for (int r = r0; r < r1; r++) out[(size_t)t * stride + r] += bd[r];
}

/* the cos/sin tables of layer l's RoPE, one per token */
static inline const float *rope_of(const lp_engine *e, int l) {
    return e->has_swa_rope && lp_layer_is_swa(e, l) ? e->rope_swa : e->rope;
}

/* rows [r0, r1) (even r0; whole heads for NEOX RoPE or per-head norms) of q or k after the matmul: bias,
   per-head RMSNorm, RoPE with each token's table */
static void qk_epilogue(const lp_engine *e, int l, const lp_weight *bias, const lp_weight *norm, float *x, int stride,
                        int n_tok, int r0, int r1) {
    const int hd = e->p.head_dim;
    const float *cs = rope_of(e, l);
    add_bias(bias, x, stride, n_tok, r0, r1);
    for (int t = 0; t < n_tok; t++) {
        float *xt = x + (size_t)t * stride;
        if (norm->data)
            for (int h0 = r0; h0 < r1; h0 += hd) e->kern.rms_norm(hd, xt + h0, norm->data, e->p.norm_eps, xt + h0);
        lp_engine_rope_heads(e, cs + (size_t)t * hd, xt, r0, r1);
    }
}

/* chunk rows of q or k: whole heads when a step works on heads */
static int qk_chunk_rows(const lp_engine *e, int rows, int nth) {
    const lp_layer_weights *L0 = &e->layers[0];
    int c = lp_chunk_rows(rows, nth), hd = e->p.head_dim;
    if (e->p.arch.rope_neox || L0->q_norm.data || L0->k_norm.data) c = (c + hd - 1) / hd * hd;
    return c;
}

/* whether pieces of `len` values (at multiples of len) can be quantized for w on their own */
static inline int fused_quant(const lp_engine *e, const lp_weight *w, int len) {
    return len % e->traits[w->tr->vec_dot_type].blck_size == 0;
}

/* scores of a query head against cached K rows of a type other than F16: the head quantized to K's vec_dot
   type, then the type's dot kernel per position (as the reference's flash-attention path) */
static void scores_rows(lp_engine *e, const float *qh, int l, int s, int g, int j0, int n_kv, float *sc, int ith) {
    const int hd = e->p.head_dim;
    const lp_type_traits *tk = &e->traits[e->type_k];
    char *qq = (char *)e->kvq + (size_t)ith * e->kvq_bytes;
    e->traits[tk->vec_dot_type].from_float(qh, qq, hd);
    const size_t off = (size_t)(g * hd / tk->blck_size) * tk->type_size;
    for (int j = 0; j < n_kv; j++) tk->vec_dot(hd, &sc[j], lp_k_row(e, l, s, j0 + j) + off, qq);
}

/* out = sum_j p[j] v_j over cached V rows of a type other than F16, each head segment dequantized */
static void values_rows(lp_engine *e, const float *pr, int l, int s, int g, int j0, int n_kv, float *out, int ith) {
    const int hd = e->p.head_dim;
    const lp_type_traits *tv = &e->traits[e->type_v];
    float *vt = e->vtmp + (size_t)ith * e->kv_dim;
    const size_t off = (size_t)(g * hd / tv->blck_size) * tv->type_size;
    for (int d = 0; d < hd; d++) out[d] = 0.0f;
    for (int j = 0; j < n_kv; j++) {
        tv->to_float(lp_v_row(e, l, s, j0 + j) + off, vt, hd);
        e->kern.axpy(hd, pr[j], vt, out);
    }
}

static void attention_item(lp_engine *e, int l, int t, int h, int ith) {
    const lp_engine_params *p = &e->p;
    int hd = p->head_dim, g = h / (p->n_head / p->n_head_kv), s = e->seq[t], n_kv = e->pos[t] + 1;
    float *sc = e->scores + (size_t)ith * p->n_ctx;
    uint16_t *b16 = e->p16 + (size_t)ith * (p->n_ctx > hd ? p->n_ctx : hd);
    float scale = p->attn_scale != 0.0f ? p->attn_scale : 1.0f / sqrtf((float)hd);
    /* a sliding-window layer sees the last n_swa positions only */
    int j0 = lp_layer_is_swa(e, l) && n_kv > p->arch.n_swa ? n_kv - p->arch.n_swa : 0;
    n_kv -= j0;

    if (e->type_k == LP_TYPE_F16) {
        e->kern.f32_to_f16(hd, e->q + (size_t)t * e->q_dim + (size_t)h * hd, b16);
        e->kern.attn_scores_f16(hd, n_kv, b16, lp_k_at(e, l, s, j0) + (size_t)g * hd, e->kv_dim, sc, e->n_tok == 1 || e->exact_rows);
    } else {
        scores_rows(e, e->q + (size_t)t * e->q_dim + (size_t)h * hd, l, s, g, j0, n_kv, sc, ith);
    }
    float max = -INFINITY;
    const float cap = p->arch.attn_softcap;
    for (int j = 0; j < n_kv; j++) {
        sc[j] *= scale;
        if (cap != 0.0f) sc[j] = cap * tanhf(sc[j] / cap);
        if (sc[j] > max) max = sc[j];
    }
    float inv = (float)(1.0 / e->kern.softmax_exp(n_kv, sc, max, sc));
    for (int j = 0; j < n_kv; j++) sc[j] *= inv;
    float *out = e->att + (size_t)t * e->q_dim + (size_t)h * hd;
    if (e->v_trans) {
        e->kern.f32_to_f16(n_kv, sc, b16);
        e->kern.attn_values_f16(hd, n_kv, b16, lp_v_at(e, l, s, g * hd) + j0, p->n_ctx, out, e->n_tok == 1 || e->exact_rows);
    } else {
        values_rows(e, sc, l, s, g, j0, n_kv, out, ith);
    }
    const lp_weight *wo = &e->layers[l].o;
    if (fused_quant(e, wo, hd)) {   /* this head's blocks of the output projection's input */
        const lp_type_traits *vt = &e->traits[wo->tr->vec_dot_type];
        char *dst = act_buf(e, wo, INNER) + (size_t)t * act_row_bytes(e, wo) + (size_t)(h * hd / vt->blck_size) * vt->type_size;
        act_quantizer(e, wo->tr->vec_dot_type)(out, dst, hd);
    }
}

/* LoRA: the A x products of a phase's adapted weights ws (all with input x), split between the threads;
   returns a mask of the weights that have active pairs (0: nothing to add) */
static int lora_begin(worker *w, const lp_weight *const *ws, int n, const float *x, int x_stride, int n_tok, int sync) {
    int mask = 0;
    for (int i = 0; i < n; i++)
        if (ws[i]->n_lora && lp_lora_active(w->e, ws[i])) mask |= 1 << i;
    if (mask) lp_lora_down(w->e, ws, n, x, x_stride, n_tok, w->ith, w->nth, sync);
    return mask;
}

/* out rows [r0, r1) += the pairs' B u of weight i of the phase (waiting for the others' rows of u the first time) */
static void lora_add(worker *w, int *mask, int i, const lp_weight *wt, int sync, int n_tok, int r0, int r1, float *out,
                     int stride) {
    if (!(*mask & (1 << i))) return;
    if (!(*mask & (1 << 8))) {
        lp_lora_wait(w->e, sync, w->nth);
        *mask |= 1 << 8;
    }
    lp_lora_up(w->e, wt, lp_lora_u(w->e, i), n_tok, r0, r1, out, stride);
}

/* ---- the step ---------------------------------------------------------------------------- */

/* x normalized and quantized for the weights ws: split between the threads into the shared buffers, or
   (priv) by every thread for all tokens into its own, which saves the barrier after it */
static void phase_norm_quant(worker *w, const float *x, const lp_weight *norm, const lp_weight *const *ws, int nw, int priv) {
    lp_engine *e = w->e;
    int n = e->p.n_embd;
    if (priv) {
        float *xn = e->txn + (size_t)w->ith * LP_SMALL_BATCH * n;
        for (int t = 0; t < e->n_tok; t++) e->kern.rms_norm(n, x + (size_t)t * n, norm->data, e->p.norm_eps, xn + (size_t)t * n);
        quantize_for(e, ws, nw, xn, n, 0, e->n_tok, w->ith);
        return;
    }
    for (int t = w->ith; t < e->n_tok; t += w->nth) {
        e->kern.rms_norm(n, x + (size_t)t * n, norm->data, e->p.norm_eps, e->xn + (size_t)t * n);
        quantize_for(e, ws, nw, e->xn, n, t, t + 1, NORMED);
    }
}

static void phase_qkv(worker *w, int l, int priv) {
    lp_engine *e = w->e;
    lp_layer_weights *L = &e->layers[l];
    int n_tok = e->n_tok, cq = qk_chunk_rows(e, e->q_dim, w->nth), ck = qk_chunk_rows(e, e->kv_dim, w->nth);
    if (e->type_k != LP_TYPE_F16 || !e->v_trans) {   /* chunks of whole blocks of the cache's types (head_dim is a multiple) */
        int bk = (int)e->traits[e->type_k].blck_size, bv = (int)e->traits[e->type_v].blck_size;
        int bs = bk > bv ? bk : bv;
        ck = (ck + bs - 1) / bs * bs;
    }
    int nq = (e->q_dim + cq - 1) / cq, nk = (e->kv_dim + ck - 1) / ck;
    int c;
    const float *xin = priv ? e->txn + (size_t)w->ith * LP_SMALL_BATCH * e->p.n_embd : e->xn;
    const lp_weight *qkv[3] = {&L->q, &L->k, &L->v};
    const int sync = 4 * l;
    int lora = lora_begin(w, qkv, 3, xin, e->p.n_embd, n_tok, sync);
    while ((c = take(w, nq + 2 * nk)) >= 0) {
        if (c < nq) {
            int r0 = c * cq, r1 = r0 + cq < e->q_dim ? r0 + cq : e->q_dim;
            matmul_chunk(e, &L->q, r0, r1, n_tok, e->q, e->q_dim, priv ? w->ith : NORMED);
            lora_add(w, &lora, 0, &L->q, sync, n_tok, r0, r1, e->q, e->q_dim);
            qk_epilogue(e, l, &L->q_b, &L->q_norm, e->q, e->q_dim, n_tok, r0, r1);
            continue;
        }
        int is_v = c >= nq + nk, r0 = (c - nq - (is_v ? nk : 0)) * ck;
        int r1 = r0 + ck < e->kv_dim ? r0 + ck : e->kv_dim;
        float *buf = is_v ? e->vbuf : e->kbuf;
        matmul_chunk(e, is_v ? &L->v : &L->k, r0, r1, n_tok, buf, e->kv_dim, priv ? w->ith : NORMED);
        lora_add(w, &lora, 1 + is_v, qkv[1 + is_v], sync, n_tok, r0, r1, buf, e->kv_dim);
        if (is_v)
            add_bias(&L->v_b, buf, e->kv_dim, n_tok, r0, r1);
        else
            qk_epilogue(e, l, &L->k_b, &L->k_norm, buf, e->kv_dim, n_tok, r0, r1);
        for (int t = 0; t < n_tok; t++) {
            const float *src = buf + (size_t)t * e->kv_dim;
            if (!is_v && e->type_k == LP_TYPE_F16) {
                e->kern.f32_to_f16(r1 - r0, src + r0, lp_k_at(e, l, e->seq[t], e->pos[t]) + r0);
            } else if (!is_v || !e->v_trans) {   /* rows quantized as they are written */
                const lp_type_traits *tr = &e->traits[is_v ? e->type_v : e->type_k];
                char *row = is_v ? lp_v_row(e, l, e->seq[t], e->pos[t]) : lp_k_row(e, l, e->seq[t], e->pos[t]);
                tr->from_float_ref(src + r0, row + (size_t)(r0 / tr->blck_size) * tr->type_size, r1 - r0);
            } else {
                for (int r = r0; r < r1; r++) lp_v_at(e, l, e->seq[t], r)[e->pos[t]] = lp_fp32_to_fp16(src[r]);
            }
        }
    }
}

static void phase_attention(worker *w, int l) {
    lp_engine *e = w->e;
    int n_items = e->n_tok * e->p.n_head, c;
    while ((c = take(w, n_items)) >= 0) attention_item(e, l, c / e->p.n_head, c % e->p.n_head, w->ith);
}

/* out rows of w, added into the residual stream x (plus bias); with a post-norm only into tmp (plus bias);
   in: w's input in F32 (stride in_stride), for its LoRA pairs */
static void phase_matmul_residual(worker *w, const lp_weight *wt, const lp_weight *bias, float *tmp, int post_norm,
                                  const float *in, int in_stride, int sync) {
    lp_engine *e = w->e;
    int rows = (int)wt->ne1, cr = lp_chunk_rows(rows, w->nth), n_chunks = (rows + cr - 1) / cr, c;
    int n = e->p.n_embd;
    int lora = lora_begin(w, &wt, 1, in, in_stride, e->n_tok, sync);
    while ((c = take(w, n_chunks)) >= 0) {
        int r0 = c * cr, r1 = r0 + cr < rows ? r0 + cr : rows;
        matmul_chunk(e, wt, r0, r1, e->n_tok, tmp, n, INNER);
        lora_add(w, &lora, 0, wt, sync, e->n_tok, r0, r1, tmp, n);
        if (post_norm) {
            add_bias(bias, tmp, n, e->n_tok, r0, r1);
            continue;
        }
        for (int t = 0; t < e->n_tok; t++) {
            float *xt = e->x + (size_t)t * n, *ot = tmp + (size_t)t * n;
            const float *b = bias->data;
            for (int r = r0; r < r1; r++) xt[r] += b ? ot[r] + b[r] : ot[r];
        }
    }
}

/* x += rmsnorm(tmp) * norm, the tokens split between the threads */
static void phase_post_norm_add(worker *w, const lp_weight *norm, float *tmp) {
    lp_engine *e = w->e;
    int n = e->p.n_embd;
    for (int t = w->ith; t < e->n_tok; t += w->nth) {
        float *xt = e->x + (size_t)t * n, *ot = tmp + (size_t)t * n;
        e->kern.rms_norm(n, ot, norm->data, e->p.norm_eps, ot);
        for (int r = 0; r < n; r++) xt[r] += ot[r];
    }
}

/* a[i] = gelu(a[i]) * b[i], GELU's tanh approximation */
/* the rows of ffn_gate/ffn_up, SwiGLU, and the result quantized for ffn_down chunk by chunk */
static void phase_gate_up(worker *w, int l, int priv) {
    lp_engine *e = w->e;
    lp_layer_weights *L = &e->layers[l];
    int rows = e->p.n_ff, cr = lp_chunk_rows(rows, w->nth), c;
    {   /* chunks of whole activation blocks of ffn_down's input, each quantized by the thread making it */
        int bs = (int)e->traits[L->down.tr->vec_dot_type].blck_size;
        cr = (cr + bs - 1) / bs * bs;
    }
    int n_chunks = (rows + cr - 1) / cr;
    const float *xin = priv ? e->txn + (size_t)w->ith * LP_SMALL_BATCH * e->p.n_embd : e->xn;
    const lp_weight *gu[2] = {&L->gate, &L->up};
    const int sync = 4 * l + 2;
    int lora = lora_begin(w, gu, 2, xin, e->p.n_embd, e->n_tok, sync);
    while ((c = take(w, n_chunks)) >= 0) {
        int r0 = c * cr, r1 = r0 + cr < rows ? r0 + cr : rows;
        matmul_chunk(e, &L->gate, r0, r1, e->n_tok, e->ffa, rows, priv ? w->ith : NORMED);
        matmul_chunk(e, &L->up, r0, r1, e->n_tok, e->ffb, rows, priv ? w->ith : NORMED);
        lora_add(w, &lora, 0, &L->gate, sync, e->n_tok, r0, r1, e->ffa, rows);
        lora_add(w, &lora, 1, &L->up, sync, e->n_tok, r0, r1, e->ffb, rows);
        add_bias(&L->gate_b, e->ffa, rows, e->n_tok, r0, r1);
        add_bias(&L->up_b, e->ffb, rows, e->n_tok, r0, r1);
        for (int t = 0; t < e->n_tok; t++)
            (e->p.arch.act_gelu ? lp_geglu : e->kern.swiglu)(r1 - r0, e->ffa + (size_t)t * rows + r0, e->ffb + (size_t)t * rows + r0);
        {
            const lp_type_traits *vt = &e->traits[L->down.tr->vec_dot_type];
            lp_from_float_fn q = act_quantizer(e, L->down.tr->vec_dot_type);
            size_t rb = act_row_bytes(e, &L->down), off = (size_t)(r0 / vt->blck_size) * vt->type_size;
            char *dst = act_buf(e, &L->down, INNER);
            for (int t = 0; t < e->n_tok; t++) q(e->ffa + (size_t)t * rows + r0, dst + (size_t)t * rb + off, r1 - r0);
        }
    }
}

static void forward_task(void *arg, int ith, int nth) {
    lp_engine *e = arg;
    const lp_engine_params *p = &e->p;
    worker w = {e, ith, nth, 0};
    int n = p->n_embd;
    /* few tokens: each thread normalizes and quantizes them all itself (no barrier after) */
    const int priv = e->n_tok <= LP_SMALL_BATCH && nth > 1;

    for (int t = ith; t < e->n_tok; t += nth) {
        const lp_weight *te = &e->tok_embd;
        float *xt = e->x + (size_t)t * n;
        te->tr->to_float((const char *)te->data + (size_t)e->tokens[t] * te->row_bytes, xt, n);
        if (p->arch.embd_scale != 0.0f)
            for (int i = 0; i < n; i++) xt[i] *= p->arch.embd_scale;
        lp_engine_rope_table(e, e->pos[t], 1, 0, e->rope + (size_t)t * p->head_dim);
        if (e->has_swa_rope) lp_engine_rope_table(e, e->pos[t], 1, 1, e->rope_swa + (size_t)t * p->head_dim);
    }
    lp_pool_barrier(e->pool);

    for (int l = 0; l < p->n_layer; l++) {
        lp_layer_weights *L = &e->layers[l];
        const lp_weight *qkv[3] = {&L->q, &L->k, &L->v};
        const lp_weight *gu[2] = {&L->gate, &L->up};
        const lp_weight *o[1] = {&L->o};
        /* attention heads and SwiGLU chunks quantize their own output when its blocks allow */
        const int fuse_o = fused_quant(e, &L->o, p->head_dim);

        phase_norm_quant(&w, e->x, &L->attn_norm, qkv, 3, priv);
        if (!priv) lp_pool_barrier(e->pool);
        phase_qkv(&w, l, priv);
        w.phase++;
        lp_pool_barrier(e->pool);
        phase_attention(&w, l);
        w.phase++;
        lp_pool_barrier(e->pool);
        if (!fuse_o) {
            for (int t = ith; t < e->n_tok; t += nth) quantize_for(e, o, 1, e->att, e->q_dim, t, t + 1, INNER);
            lp_pool_barrier(e->pool);
        }
        phase_matmul_residual(&w, &L->o, &L->o_b, e->xn, L->post_attn_norm.data != NULL, e->att, e->q_dim, 4 * l + 1);
        w.phase++;
        lp_pool_barrier(e->pool);
        if (L->post_attn_norm.data) {
            phase_post_norm_add(&w, &L->post_attn_norm, e->xn);
            lp_pool_barrier(e->pool);
        }
        if (p->arch.n_expert > 0) {   /* experts: route, group the pairs by expert, run only those rows */
            const lp_weight *egu[4] = {&L->gate_exps, &L->up_exps, &L->gate_shexp, &L->up_shexp};
            phase_norm_quant(&w, e->x, &L->ffn_norm, egu, p->arch.n_ff_shexp > 0 ? 4 : 2, 0);
            lp_pool_barrier(e->pool);
            lp_phase_route(&w, l);
            lp_pool_barrier(e->pool);
            if (ith == 0) lp_moe_gather(e, l);
            lp_pool_barrier(e->pool);
            lp_phase_moe_gate_up(&w, l);
            w.phase++;
            lp_pool_barrier(e->pool);
            lp_phase_moe_down(&w, l);
            w.phase++;
            lp_pool_barrier(e->pool);
            lp_phase_moe_combine(&w, e->xn, L->post_ffn_norm.data != NULL);
            lp_pool_barrier(e->pool);
        } else {
            phase_norm_quant(&w, e->x, &L->ffn_norm, gu, 2, priv);
            if (!priv) lp_pool_barrier(e->pool);
            phase_gate_up(&w, l, priv);
            w.phase++;
            lp_pool_barrier(e->pool);
            phase_matmul_residual(&w, &L->down, &L->down_b, e->xn, L->post_ffn_norm.data != NULL, e->ffa, p->n_ff,
                                  4 * l + 3);
            w.phase++;
            lp_pool_barrier(e->pool);
        }
        if (L->post_ffn_norm.data) {
            phase_post_norm_add(&w, &L->post_ffn_norm, e->xn);
            lp_pool_barrier(e->pool);
        }
        if (e->cvec && e->cvec[l]) {   /* a control vector: x += its row for this layer */
            lp_cvec_add(e, l, ith, nth);
            lp_pool_barrier(e->pool);
        }
    }

    /* the wanted tokens: final norm, hidden states, logits */
    const lp_weight *out[1] = {&e->output};
    const int opriv = e->n_out <= LP_SMALL_BATCH && nth > 1;
    for (int i = opriv ? 0 : ith; i < e->n_out; i += opriv ? 1 : nth) {
        float *xi = (opriv ? e->txn + (size_t)ith * LP_SMALL_BATCH * n : e->xn) + (size_t)i * n;
        e->kern.rms_norm(n, e->x + (size_t)e->out_idx[i] * n, e->output_norm.data, p->norm_eps, xi);
        if (e->hidden && (!opriv || ith == 0)) memcpy(e->hidden + (size_t)i * n, xi, (size_t)n * sizeof(float));
        if (e->logits) quantize_for(e, out, 1, xi - (size_t)i * n, n, i, i + 1, opriv ? ith : NORMED);
    }
    if (!e->logits) return;
    if (!opriv) lp_pool_barrier(e->pool);
    int rows = p->n_vocab, cr = lp_chunk_rows(rows, nth), n_chunks = (rows + cr - 1) / cr, c;
    const lp_weight *ow = &e->output;
    const int osync = 4 * p->n_layer;
    int lora = lora_begin(&w, &ow, 1, opriv ? e->txn + (size_t)ith * LP_SMALL_BATCH * n : e->xn, n, e->n_out, osync);
    while ((c = take(&w, n_chunks)) >= 0) {
        int r0 = c * cr, r1 = r0 + cr < rows ? r0 + cr : rows;
        matmul_chunk(e, &e->output, r0, r1, e->n_out, e->logits, rows, opriv ? ith : NORMED);
        lora_add(&w, &lora, 0, ow, osync, e->n_out, r0, r1, e->logits, rows);
        const float cap = p->arch.final_softcap;
        if (cap != 0.0f)
            for (int i = 0; i < e->n_out; i++)
                for (int r = r0; r < r1; r++) {
                    float *v = &e->logits[(size_t)i * rows + r];
                    *v = cap * tanhf(*v / cap);
                }
    }
}

int lp_engine_eval(lp_engine *e, int32_t n_tokens, const int32_t *tokens, const int32_t *pos, const int32_t *seq,
                   int32_t n_out, const int32_t *out_idx, float *logits, float *hidden) {
    const lp_engine_params *p = &e->p;
    const char *m = lp_engine_missing_weight(e);
    if (m) return lp_engine_fail(e, "lp_weight %s was never set", m);
    if (n_tokens < 1 || n_tokens > p->n_batch)
        return lp_engine_fail(e, "batch of %d tokens (must be 1 to n_batch = %d)", n_tokens, p->n_batch);
    if (n_out < 0 || n_out > n_tokens) return lp_engine_fail(e, "%d outputs for %d tokens", n_out, n_tokens);
    for (int t = 0; t < n_tokens; t++) {
        if (tokens[t] < 0 || tokens[t] >= p->n_vocab)
            return lp_engine_fail(e, "token id %d at batch index %d is outside the vocabulary (%d)", tokens[t], t, p->n_vocab);
        if (pos[t] < 0 || pos[t] >= p->n_ctx)
            return lp_engine_fail(e, "position %d at batch index %d is outside the context (%d)", pos[t], t, p->n_ctx);
        if (seq[t] < 0 || seq[t] >= p->n_seq)
            return lp_engine_fail(e, "sequence %d at batch index %d (have %d)", seq[t], t, p->n_seq);
    }
    for (int i = 0; i < n_out; i++)
        if (out_idx[i] < 0 || out_idx[i] >= n_tokens) return lp_engine_fail(e, "output index %d outside the batch", out_idx[i]);
    e->n_tok = n_tokens;
    e->tokens = tokens;
    e->pos = pos;
    e->seq = seq;
    e->n_out = n_out;
    e->out_idx = out_idx;
    e->logits = logits;
    e->hidden = hidden;
    for (int i = 0; i < e->n_counters; i++) atomic_store_explicit(&e->counters[i], 0, memory_order_relaxed);
    lp_lora_reset(e);
    double t0 = now_seconds();
    lp_pool_run(e->pool, forward_task, e);
    e->eval_seconds += now_seconds() - t0;
    return 0;
}

