/* The engine's construction, weights and KV cache edits (the forward step is in engine.c). */
#include <math.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "lp_core.h"
#include "lp_engine.h"

int lp_engine_fail(lp_engine *e, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e->err, sizeof e->err, fmt, ap);
    va_end(ap);
    return -1;
}

const char *lp_engine_error(const lp_engine *e) { return e->err; }
int lp_engine_n_threads(const lp_engine *e) { return lp_pool_size(e->pool); }
double lp_engine_eval_seconds(const lp_engine *e) { return e->eval_seconds; }
void lp_engine_set_exact_rows(lp_engine *e, int on) { e->exact_rows = on != 0; }

int64_t lp_engine_kv_bytes(const lp_engine *e) {
    const int64_t cells = (int64_t)e->p.n_layer * e->p.n_seq;
    return cells * e->p.n_ctx * (int64_t)e->k_row + cells * (e->v_trans ? e->kv_dim : e->p.n_ctx) * (int64_t)e->v_row;
}

int64_t lp_engine_kv_row_bytes(const lp_engine *e, int32_t is_v) { return (int64_t)(is_v ? e->v_row : e->k_row); }

/* whether t is a KV cache type for rows of head_dim values */
static int kv_type_ok(int t, int head_dim) {
    switch (t) {
    case LP_TYPE_F32: case LP_TYPE_F16: case LP_TYPE_BF16: case LP_TYPE_Q8_0: case LP_TYPE_Q4_0: case LP_TYPE_Q4_1:
    case LP_TYPE_IQ4_NL: case LP_TYPE_Q5_0: case LP_TYPE_Q5_1:
        break;
    default:
        return 0;
    }
    const lp_type_traits *tr = lp_get_traits(t);
    return tr && head_dim % tr->blck_size == 0;
}

/* ---- construction ------------------------------------------------------------------------ */

/* the engine's kernels of a type (from the table of its level); NULL for a type without them */
static const lp_type_traits *engine_traits(const lp_engine *e, int type) {
    if (type < 0 || type >= LP_TYPE_COUNT || e->traits[type].blck_size == 0) return NULL;
    return &e->traits[type];
}

static void free_packed(lp_weight *w) {
    free(w->packed);
    w->packed = NULL;
}

void lp_engine_free(lp_engine *e) {
    if (!e) return;
    if (e->pool) lp_pool_free(e->pool);
    lp_lora_free(e);
    lp_cvec_free(e);
    free_packed(&e->output);
    for (int l = 0; e->layers && l < e->p.n_layer; l++) {
        lp_layer_weights *L = &e->layers[l];
        lp_weight *ws[] = {&L->q, &L->k, &L->v, &L->o, &L->gate, &L->up, &L->down, &L->gate_exps, &L->up_exps,
                           &L->down_exps, &L->gate_shexp, &L->up_shexp, &L->down_shexp};
        for (size_t i = 0; i < sizeof ws / sizeof ws[0]; i++) free_packed(ws[i]);
    }
    free(e->layers);
    free(e->k_cache);
    free(e->v_cache);
    free(e->kvq);
    free(e->vtmp);
    free(e->x);
    free(e->xn);
    free(e->q);
    free(e->kbuf);
    free(e->vbuf);
    free(e->att);
    free(e->ffa);
    free(e->ffb);
    free(e->rope);
    free(e->rope_swa);
    for (int t = 0; t < LP_TYPE_COUNT; t++) free(e->qbuf[t]), free(e->qbuf2[t]), free(e->moe_xq[t]), free(e->moe_hq[t]);
    free(e->moe_sel);
    free(e->moe_w);
    free(e->moe_pair);
    free(e->moe_cnt);
    free(e->moe_off);
    free(e->moe_tok);
    free(e->moe_a);
    free(e->moe_b);
    free(e->moe_o);
    free(e->trow);
    for (int i = 0; e->tqbuf && i < e->p.n_threads * LP_TYPE_COUNT; i++) free(e->tqbuf[i]);
    free(e->tqbuf);
    free(e->txn);
    free(e->scores);
    free(e->p16);
    free(e->counters);
    free(e);
}

static float yarn_corr_dim(int n_dims, int n_ctx_orig, float n_rot, float base) {
    return n_dims * logf(n_ctx_orig / (n_rot * 2 * (float)M_PI)) / (2 * logf(base));
}

static void *falloc(size_t n) { return calloc(n ? n : 1, sizeof(float)); }

lp_engine *lp_engine_new(const lp_engine_params *p) {
    if (p->n_vocab < 1 || p->n_embd < 1 || p->n_layer < 1 || p->n_head < 1 || p->n_head_kv < 1 ||
        p->head_dim < 2 || p->head_dim % 2 || p->n_ff < 1 || p->n_head % p->n_head_kv || p->n_ctx < 1 ||
        p->n_seq < 1 || p->n_batch < 1 || !kv_type_ok(p->type_k, p->head_dim) || !kv_type_ok(p->type_v, p->head_dim))
        return NULL;
    lp_engine *e = calloc(1, sizeof *e);
    if (!e) return NULL;
    e->p = *p;
    if (e->p.n_threads < 1) e->p.n_threads = 1;
    e->q_dim = p->n_head * p->head_dim;
    e->kv_dim = p->n_head_kv * p->head_dim;
    e->max_dim = p->n_embd;
    if (e->q_dim > e->max_dim) e->max_dim = e->q_dim;
    if (p->n_ff > e->max_dim) e->max_dim = p->n_ff;
    if (p->arch.n_ff_exp > e->max_dim) e->max_dim = p->arch.n_ff_exp;
    if (p->arch.n_ff_shexp > e->max_dim) e->max_dim = p->arch.n_ff_shexp;
    if (p->arch.n_expert < 0 || (p->arch.n_expert > 0 && (p->arch.n_expert_used < 1 || p->arch.n_expert_used > p->arch.n_expert ||
                                                          p->arch.n_ff_exp < 1))) {
        free(e);
        return NULL;
    }

    e->theta_scale = powf(p->rope_freq_base, -2.0f / p->head_dim);
    {
        const float base_swa = p->arch.rope_freq_base_swa > 0 ? p->arch.rope_freq_base_swa : p->rope_freq_base;
        e->theta_scale_swa = powf(base_swa, -2.0f / p->head_dim);
        e->has_swa_rope = p->arch.n_swa > 0 && p->arch.rope_freq_base_swa > 0;
    }
    float start = floorf(yarn_corr_dim(p->head_dim, p->n_ctx_orig, p->yarn_beta_fast, p->rope_freq_base));
    float end = ceilf(yarn_corr_dim(p->head_dim, p->n_ctx_orig, p->yarn_beta_slow, p->rope_freq_base));
    e->corr_dims[0] = start > 0 ? start : 0;
    e->corr_dims[1] = end < p->head_dim - 1 ? end : p->head_dim - 1;

    int level;
    e->traits = lp_kernels_table(&level);
    lp_engine_kernels_scalar(&e->kern);
    if (level == LP_KERNELS_AVX2) lp_engine_kernels_avx2(&e->kern);
    if (level == LP_KERNELS_NEON) lp_engine_kernels_neon(&e->kern);
    lp_engine_matmul_init(&e->mm, level);

    size_t nb = (size_t)p->n_batch, nt = (size_t)e->p.n_threads;
    size_t kv_cells = (size_t)p->n_layer * p->n_seq;
    e->type_k = p->type_k;
    e->type_v = p->type_v;
    e->v_trans = p->type_v == LP_TYPE_F16;
    e->k_row = (size_t)lp_row_size(p->type_k, e->kv_dim);
    e->v_row = e->v_trans ? (size_t)p->n_ctx * sizeof(uint16_t) : (size_t)lp_row_size(p->type_v, e->kv_dim);
    e->kvq_bytes = (size_t)lp_row_size(e->traits[p->type_k].vec_dot_type, p->head_dim);
    size_t p16_len = (size_t)(p->n_ctx > p->head_dim ? p->n_ctx : p->head_dim);
    e->layers = calloc((size_t)p->n_layer, sizeof(lp_layer_weights));
    e->k_cache = calloc(kv_cells * p->n_ctx, e->k_row);
    e->v_cache = calloc(kv_cells * (e->v_trans ? (size_t)e->kv_dim : (size_t)p->n_ctx), e->v_row);
    e->kvq = calloc(nt, e->kvq_bytes);
    e->vtmp = falloc(nt * e->kv_dim);
    e->x = falloc(nb * p->n_embd);
    e->xn = falloc(nb * p->n_embd);
    e->q = falloc(nb * e->q_dim);
    e->kbuf = falloc(nb * e->kv_dim);
    e->vbuf = falloc(nb * e->kv_dim);
    e->att = falloc(nb * e->q_dim);
    e->ffa = falloc(nb * p->n_ff);
    e->ffb = falloc(nb * p->n_ff);
    e->rope = falloc(nb * p->head_dim);
    e->rope_swa = falloc(nb * p->head_dim);
    e->scores = falloc(nt * p->n_ctx);
    e->p16 = calloc(nt * p16_len, sizeof(uint16_t));
    e->tqbuf = calloc(nt * LP_TYPE_COUNT, sizeof(void *));
    e->txn = falloc(nt * LP_SMALL_BATCH * p->n_embd);
    if (p->arch.n_expert > 0) {
        const size_t k = (size_t)p->arch.n_expert_used, pairs = nb * (k + 1);
        const size_t ffw = (size_t)(p->arch.n_ff_exp > p->arch.n_ff_shexp ? p->arch.n_ff_exp : p->arch.n_ff_shexp);
        e->n_groups = p->arch.n_expert + 1;
        e->moe_sel = calloc(nb * k, sizeof(int));
        e->moe_w = falloc(pairs);
        e->moe_pair = calloc(pairs, sizeof(int));
        e->moe_cnt = calloc((size_t)e->n_groups, sizeof(int));
        e->moe_off = calloc((size_t)e->n_groups, sizeof(int));
        e->moe_tok = calloc(pairs, sizeof(int));
        e->moe_a = falloc(pairs * ffw);
        e->moe_b = falloc(pairs * ffw);
        e->moe_o = falloc(pairs * p->n_embd);
        e->trow = falloc(nt * p->n_embd);
        if (!e->moe_sel || !e->moe_w || !e->moe_pair || !e->moe_cnt || !e->moe_off || !e->moe_tok || !e->moe_a ||
            !e->moe_b || !e->moe_o || !e->trow) {
            lp_engine_free(e);
            return NULL;
        }
    }
    e->n_counters = 2 + LP_MAX_PHASES_PER_LAYER * p->n_layer;
    e->counters = calloc((size_t)e->n_counters, sizeof(atomic_int));
    if (!e->layers || !e->k_cache || !e->v_cache || !e->kvq || !e->vtmp || !e->x || !e->xn || !e->q || !e->kbuf || !e->vbuf ||
        !e->att || !e->ffa || !e->ffb || !e->rope || !e->rope_swa || !e->scores || !e->p16 || !e->counters || !e->tqbuf || !e->txn) {
        lp_engine_free(e);
        return NULL;
    }
    e->pool = lp_pool_new(e->p.n_threads);
    if (!e->pool) {
        lp_engine_free(e);
        return NULL;
    }
    e->p.n_threads = lp_pool_size(e->pool);
    return e;
}

static lp_weight *slot(lp_engine *e, int kind, int layer);
lp_weight *lp_engine_slot(lp_engine *e, int kind, int layer) { return slot(e, kind, layer); }

static lp_weight *slot(lp_engine *e, int kind, int layer) {
    switch (kind) {
    case LP_W_TOKEN_EMBD: return &e->tok_embd;
    case LP_W_OUTPUT_NORM: return &e->output_norm;
    case LP_W_OUTPUT: return &e->output;
    case LP_W_ROPE_FREQS: return &e->rope_freqs;
    default: break;
    }
    if (layer < 0 || layer >= e->p.n_layer) return NULL;
    lp_layer_weights *L = &e->layers[layer];
    switch (kind) {
    case LP_W_ATTN_NORM: return &L->attn_norm;
    case LP_W_Q: return &L->q;
    case LP_W_K: return &L->k;
    case LP_W_V: return &L->v;
    case LP_W_O: return &L->o;
    case LP_W_Q_B: return &L->q_b;
    case LP_W_K_B: return &L->k_b;
    case LP_W_V_B: return &L->v_b;
    case LP_W_O_B: return &L->o_b;
    case LP_W_FFN_NORM: return &L->ffn_norm;
    case LP_W_GATE: return &L->gate;
    case LP_W_UP: return &L->up;
    case LP_W_DOWN: return &L->down;
    case LP_W_GATE_B: return &L->gate_b;
    case LP_W_UP_B: return &L->up_b;
    case LP_W_DOWN_B: return &L->down_b;
    case LP_W_Q_NORM: return &L->q_norm;
    case LP_W_K_NORM: return &L->k_norm;
    case LP_W_POST_ATTN_NORM: return &L->post_attn_norm;
    case LP_W_POST_FFN_NORM: return &L->post_ffn_norm;
    case LP_W_GATE_INP: return &L->gate_inp;
    case LP_W_GATE_EXPS: return &L->gate_exps;
    case LP_W_UP_EXPS: return &L->up_exps;
    case LP_W_DOWN_EXPS: return &L->down_exps;
    case LP_W_GATE_INP_SHEXP: return &L->gate_inp_shexp;
    case LP_W_GATE_SHEXP: return &L->gate_shexp;
    case LP_W_UP_SHEXP: return &L->up_shexp;
    case LP_W_DOWN_SHEXP: return &L->down_shexp;
    default: return NULL;
    }
}

/* the shape a slot must have: ne0, ne1, and whether it is a matrix the engine multiplies by */
static int expected_shape(const lp_engine *e, int kind, int64_t *ne0, int64_t *ne1) {
    const lp_engine_params *p = &e->p;
    *ne1 = 1;
    switch (kind) {
    case LP_W_TOKEN_EMBD: *ne0 = p->n_embd; *ne1 = p->n_vocab; return 0;
    case LP_W_OUTPUT: *ne0 = p->n_embd; *ne1 = p->n_vocab; return 1;
    case LP_W_OUTPUT_NORM: case LP_W_ATTN_NORM: case LP_W_FFN_NORM: case LP_W_POST_ATTN_NORM: case LP_W_POST_FFN_NORM:
    case LP_W_O_B: case LP_W_DOWN_B: *ne0 = p->n_embd; return 0;
    case LP_W_ROPE_FREQS: *ne0 = p->head_dim / 2; return 0;
    case LP_W_Q_NORM: case LP_W_K_NORM: *ne0 = p->head_dim; return 0;
    default: break;
    }
    const lp_arch_traits *a = &p->arch;
    if (kind >= LP_W_GATE_INP && kind <= LP_W_DOWN_SHEXP && a->n_expert < 1) return -1;
    if (kind >= LP_W_GATE_SHEXP && kind <= LP_W_DOWN_SHEXP && a->n_ff_shexp < 1) return -1;
    switch (kind) {
    case LP_W_GATE_INP: *ne0 = p->n_embd; *ne1 = a->n_expert; return 0;
    case LP_W_GATE_EXPS: case LP_W_UP_EXPS: *ne0 = p->n_embd; *ne1 = (int64_t)a->n_ff_exp * a->n_expert; return 1;
    case LP_W_DOWN_EXPS: *ne0 = a->n_ff_exp; *ne1 = (int64_t)p->n_embd * a->n_expert; return 1;
    case LP_W_GATE_INP_SHEXP: *ne0 = p->n_embd; return 0;
    case LP_W_GATE_SHEXP: case LP_W_UP_SHEXP: *ne0 = p->n_embd; *ne1 = a->n_ff_shexp; return 1;
    case LP_W_DOWN_SHEXP: *ne0 = a->n_ff_shexp; *ne1 = p->n_embd; return 1;
    case LP_W_Q: *ne0 = p->n_embd; *ne1 = e->q_dim; return 1;
    case LP_W_K: case LP_W_V: *ne0 = p->n_embd; *ne1 = e->kv_dim; return 1;
    case LP_W_O: *ne0 = e->q_dim; *ne1 = p->n_embd; return 1;
    case LP_W_Q_B: *ne0 = e->q_dim; return 0;
    case LP_W_K_B: case LP_W_V_B: *ne0 = e->kv_dim; return 0;
    case LP_W_GATE: case LP_W_UP: *ne0 = p->n_embd; *ne1 = p->n_ff; return 1;
    case LP_W_DOWN: *ne0 = p->n_ff; *ne1 = p->n_embd; return 1;
    case LP_W_GATE_B: case LP_W_UP_B: *ne0 = p->n_ff; return 0;
    default: return -1;
    }
}

/* tell the kernel the (file-backed) pages of [p, p + n) are not needed for now; they fault back in if read */
static void release_pages(const void *p, size_t n) {
    const uintptr_t page = 4096, a = ((uintptr_t)p + page - 1) & ~(page - 1), b = ((uintptr_t)p + n) & ~(page - 1);
    if (b > a) madvise((void *)a, b - a, MADV_DONTNEED);
}

/* w->packed filled from w->data, its groups split between the pool's threads (a group takes as many bytes packed as unpacked) */
typedef struct {
    const lp_engine *e;
    const lp_weight *w;
} pack_job;

static void pack_task(void *arg, int ith, int nth) {
    const pack_job *j = arg;
    const lp_weight *w = j->w;
    const int64_t groups = w->ne1 / w->pack_rows, g0 = groups * ith / nth, g1 = groups * (ith + 1) / nth;
    const size_t group = (size_t)w->pack_rows * w->row_bytes;
    if (g1 > g0)
        j->e->mm.pack[w->type]((const char *)w->data + (size_t)g0 * group, w->row_bytes, (char *)w->packed + (size_t)g0 * group,
                               w->ne0, (g1 - g0) * w->pack_rows);
}

int lp_engine_set_weight(lp_engine *e, int kind, int layer, const void *data, int type, int64_t ne0, int64_t ne1) {
    lp_weight *w = slot(e, kind, layer);
    int64_t want0, want1;
    int is_matrix = expected_shape(e, kind, &want0, &want1);
    if (!w || is_matrix < 0) return lp_engine_fail(e, "weight slot %d (layer %d) does not exist", kind, layer);
    if (ne0 != want0 || ne1 != want1)
        return lp_engine_fail(e, "weight slot %d (layer %d): shape [%lld, %lld], expected [%lld, %lld]", kind, layer,
                    (long long)ne0, (long long)ne1, (long long)want0, (long long)want1);
    const lp_type_traits *tr = engine_traits(e, type);
    if (!tr) return lp_engine_fail(e, "weight slot %d (layer %d): tensor type %d is not supported", kind, layer, type);
    /* the routers are dot products of one row each: any type that dequantizes (F16 as converted to f16) */
    const int router = kind == LP_W_GATE_INP || kind == LP_W_GATE_INP_SHEXP;
    if (!is_matrix && kind != LP_W_TOKEN_EMBD && !router && type != LP_TYPE_F32)
        return lp_engine_fail(e, "weight slot %d (layer %d): vectors must be F32, not %s", kind, layer, tr->name);
    if (ne0 % tr->blck_size)
        return lp_engine_fail(e, "weight slot %d (layer %d): row length %lld is not a multiple of %s's block of %lld", kind,
                    layer, (long long)ne0, tr->name, (long long)tr->blck_size);
    if ((kind == LP_W_TOKEN_EMBD || router) && !tr->to_float)
        return lp_engine_fail(e, "token_embd: type %s can't be dequantized", tr->name);
    if (is_matrix) {
        const lp_type_traits *vt = engine_traits(e, tr->vec_dot_type);
        if (!tr->vec_dot || !vt || !vt->from_float)
            return lp_engine_fail(e, "weight slot %d (layer %d): no dot-product kernel for type %s", kind, layer, tr->name);
        if (ne0 % vt->blck_size)
            return lp_engine_fail(e, "weight slot %d (layer %d): row length %lld is not a multiple of %s's block of %lld",
                        kind, layer, (long long)ne0, vt->name, (long long)vt->blck_size);
        int at = tr->vec_dot_type;
        if (!e->qbuf[at]) {
            size_t rb = (size_t)(e->max_dim / vt->blck_size + 1) * (size_t)vt->type_size;
            e->qbuf[at] = calloc((size_t)e->p.n_batch, rb);
            e->qbuf2[at] = calloc((size_t)e->p.n_batch, rb);
            if (!e->qbuf[at] || !e->qbuf2[at]) return lp_engine_fail(e, "out of memory for activations of type %s", vt->name);
            for (int i = 0; i < e->p.n_threads; i++) {
                e->tqbuf[i * LP_TYPE_COUNT + at] = calloc(LP_SMALL_BATCH, rb);
                if (!e->tqbuf[i * LP_TYPE_COUNT + at]) return lp_engine_fail(e, "out of memory for activations");
            }
        }
        if (kind >= LP_W_GATE_EXPS && kind <= LP_W_DOWN_SHEXP && kind != LP_W_GATE_INP_SHEXP) {
            /* gathered activations of the (token, expert) pairs */
            void **buf = kind == LP_W_DOWN_EXPS || kind == LP_W_DOWN_SHEXP ? &e->moe_hq[at] : &e->moe_xq[at];
            if (!*buf) {
                size_t rb = (size_t)(e->max_dim / vt->blck_size + 1) * (size_t)vt->type_size;
                *buf = calloc((size_t)e->p.n_batch * (size_t)(e->p.arch.n_expert_used + 1), rb);
                if (!*buf) return lp_engine_fail(e, "out of memory for expert activations");
            }
        }
    }
    free_packed(w);
    *w = (lp_weight){data, type, ne0, ne1, (size_t)(ne0 / tr->blck_size * tr->type_size), tr, NULL, 0};
    int pr = is_matrix ? e->mm.pack_rows[type] : 0;
    if (pr && ne1 >= pr && ne0 <= 16384) {
        /* repacked once for the engine's faster product; the file's pages of it are then let go */
        size_t bytes = (size_t)(ne1 / pr) * (size_t)pr * w->row_bytes;
        w->packed = malloc(bytes);
        if (w->packed) {
            w->pack_rows = pr;
            pack_job job = {e, w};
            lp_pool_run(e->pool, pack_task, &job);
            release_pages(data, bytes);
        }
    }
    return 0;
}

const char *lp_engine_missing_weight(const lp_engine *e) {
    static char buf[64];
    if (!e->tok_embd.data) return "token_embd";
    if (!e->output_norm.data) return "output_norm";
    if (!e->output.data) return "output";
    for (int l = 0; l < e->p.n_layer; l++) {
        const lp_layer_weights *L = &e->layers[l];
        const char *m = !L->attn_norm.data ? "attn_norm" : !L->q.data ? "attn_q" : !L->k.data ? "attn_k"
                      : !L->v.data ? "attn_v" : !L->o.data ? "attn_output" : !L->ffn_norm.data ? "ffn_norm" : NULL;
        if (!m && e->p.arch.n_expert > 0)
            m = !L->gate_inp.data ? "ffn_gate_inp" : !L->gate_exps.data ? "ffn_gate_exps" : !L->up_exps.data ? "ffn_up_exps"
              : !L->down_exps.data ? "ffn_down_exps"
              : e->p.arch.n_ff_shexp > 0 && !L->gate_inp_shexp.data ? "ffn_gate_inp_shexp"
              : e->p.arch.n_ff_shexp > 0 && !L->gate_shexp.data ? "ffn_gate_shexp"
              : e->p.arch.n_ff_shexp > 0 && !L->up_shexp.data ? "ffn_up_shexp"
              : e->p.arch.n_ff_shexp > 0 && !L->down_shexp.data ? "ffn_down_shexp" : NULL;
        else if (!m)
            m = !L->gate.data ? "ffn_gate" : !L->up.data ? "ffn_up" : !L->down.data ? "ffn_down" : NULL;
        if (m) {
            snprintf(buf, sizeof buf, "blk.%d.%s", l, m);
            return buf;
        }
    }
    return NULL;
}

/* cos/sin table of one position: YaRN-corrected angles (plain RoPE when ext_factor is 0), scaled by
 * the YaRN magnitude when `magnitude` is set (not when re-rotating cached keys) */
void lp_engine_rope_table(const lp_engine *e, int pos, int magnitude, int local, float *cs) {
    const lp_engine_params *p = &e->p;
    const float *ff = e->rope_freqs.data;
    const float freq_scale = local ? 1.0f : p->rope_freq_scale, ext_factor = local ? 0.0f : p->yarn_ext_factor;
    const float theta_scale = local ? e->theta_scale_swa : e->theta_scale;
    float theta = (float)pos;
    for (int i0 = 0; i0 < p->head_dim; i0 += 2) {
        float theta_extrap = ff ? theta / ff[i0 / 2] : theta;
        float theta_interp = freq_scale * theta_extrap;
        float th = theta_interp, mscale = local ? 1.0f : p->yarn_attn_factor;
        if (ext_factor != 0.0f) {
            float y = (i0 / 2 - e->corr_dims[0]) / fmaxf(0.001f, e->corr_dims[1] - e->corr_dims[0]);
            float ramp = 1 - fminf(1, fmaxf(0, y));
            float mix = ramp * ext_factor;
            th = theta_interp * (1 - mix) + theta_extrap * mix;
            mscale *= 1.0f + 0.1f * logf(1.0f / p->rope_freq_scale);
        }
        if (!magnitude) mscale = 1.0f;
        cs[i0] = cosf(th) * mscale;
        cs[i0 + 1] = sinf(th) * mscale;
        theta *= theta_scale;
    }
}

void lp_engine_rope_heads(const lp_engine *e, const float *cs, float *x, int r0, int r1) {
    const int hd = e->p.head_dim;
    if (!e->p.arch.rope_neox) {
        e->kern.rope(hd, cs, x, r0, r1);
        return;
    }
    for (int h0 = r0 / hd * hd; h0 < r1; h0 += hd) {   /* NEOX: whole heads, pair i with i + hd/2 */
        float *xh = x + h0;
        for (int i = 0; i < hd / 2; i++) {
            float c = cs[2 * i], s = cs[2 * i + 1], x0 = xh[i], x1 = xh[i + hd / 2];
            xh[i] = x0 * c - x1 * s;
            xh[i + hd / 2] = x0 * s + x1 * c;
        }
    }
}

/* ---- KV cache edits ---------------------------------------------------------------------- */

int lp_engine_kv_shift(lp_engine *e, int32_t seq, int32_t p0, int32_t p1, int32_t delta) {
    const lp_engine_params *p = &e->p;
    if (seq < 0 || seq >= p->n_seq) return lp_engine_fail(e, "kv_shift: no sequence %d", seq);
    if (p0 < 0 || p1 > p->n_ctx || p0 > p1 || p0 + delta < 0 || p1 + delta > p->n_ctx)
        return lp_engine_fail(e, "kv_shift: positions [%d, %d) moved by %d leave the context (%d)", p0, p1, delta, p->n_ctx);
    int n = p1 - p0, hd = p->head_dim;
    if (n == 0 || delta == 0) return 0;
    /* the angle is linear in the position, so rotating by the angles of position `delta`
       moves a cached key from position j to j + delta */
    float cs[hd], cs_swa[hd], kf[hd];
    lp_engine_rope_table(e, delta, 0, 0, cs);
    lp_engine_rope_table(e, delta, 0, 1, cs_swa);
    for (int l = 0; l < p->n_layer; l++) {
        const float *c = e->has_swa_rope && lp_layer_is_swa(e, l) ? cs_swa : cs;
        memmove(lp_k_row(e, l, seq, p0 + delta), lp_k_row(e, l, seq, p0), (size_t)n * e->k_row);
        if (e->v_trans) {
            for (int d = 0; d < e->kv_dim; d++) {
                uint16_t *vd = lp_v_at(e, l, seq, d);
                memmove(vd + p0 + delta, vd + p0, (size_t)n * sizeof(uint16_t));
            }
        } else {
            memmove(lp_v_row(e, l, seq, p0 + delta), lp_v_row(e, l, seq, p0), (size_t)n * e->v_row);
        }
        for (int j = p0 + delta; j < p1 + delta; j++) {
            if (e->type_k != LP_TYPE_F16) {   /* dequantize, rotate, quantize again */
                const lp_type_traits *tk = &e->traits[e->type_k];
                char *k = lp_k_row(e, l, seq, j);
                tk->to_float(k, e->vtmp, e->kv_dim);
                lp_engine_rope_heads(e, c, e->vtmp, 0, e->kv_dim);
                tk->from_float_ref(e->vtmp, k, e->kv_dim);
                continue;
            }
            uint16_t *k = lp_k_at(e, l, seq, j);
            if (!p->arch.rope_neox) {
                for (int r = 0; r < e->kv_dim; r += 2) {
                    int i0 = r % hd;
                    float x0 = lp_fp16_to_fp32(k[r]), x1 = lp_fp16_to_fp32(k[r + 1]);
                    k[r] = lp_fp32_to_fp16(x0 * c[i0] - x1 * c[i0 + 1]);
                    k[r + 1] = lp_fp32_to_fp16(x0 * c[i0 + 1] + x1 * c[i0]);
                }
                continue;
            }
            for (int h0 = 0; h0 < e->kv_dim; h0 += hd) {
                for (int i = 0; i < hd; i++) kf[i] = lp_fp16_to_fp32(k[h0 + i]);
                lp_engine_rope_heads(e, c, kf, 0, hd);
                for (int i = 0; i < hd; i++) k[h0 + i] = lp_fp32_to_fp16(kf[i]);
            }
        }
    }
    return 0;
}

int lp_engine_kv_copy(lp_engine *e, int32_t src, int32_t dst, int32_t n) {
    const lp_engine_params *p = &e->p;
    if (src < 0 || src >= p->n_seq || dst < 0 || dst >= p->n_seq) return lp_engine_fail(e, "kv_copy: no such sequence");
    if (n < 0 || n > p->n_ctx) return lp_engine_fail(e, "kv_copy: %d positions (context %d)", n, p->n_ctx);
    if (src == dst || n == 0) return 0;
    for (int l = 0; l < p->n_layer; l++) {
        memcpy(lp_k_row(e, l, dst, 0), lp_k_row(e, l, src, 0), (size_t)n * e->k_row);
        if (!e->v_trans) {
            memcpy(lp_v_row(e, l, dst, 0), lp_v_row(e, l, src, 0), (size_t)n * e->v_row);
            continue;
        }
        for (int d = 0; d < e->kv_dim; d++)
            memcpy(lp_v_at(e, l, dst, d), lp_v_at(e, l, src, d), (size_t)n * sizeof(uint16_t));
    }
    return 0;
}


/* ---- KV state of one sequence: out to a buffer and back in ----------------------------------
 * The buffer holds, layer after layer, the K rows of positions [0, n) (n rows of k_row bytes, in the cache's
 * K type) and then V: n rows of v_row bytes in the V type, or, for the transposed F16 layout, kv_dim runs of
 * n values. */

int32_t lp_engine_kv_type_k(const lp_engine *e) { return e->type_k; }
int32_t lp_engine_kv_type_v(const lp_engine *e) { return e->type_v; }

static size_t kv_k_layer_bytes(const lp_engine *e, int32_t n) { return (size_t)n * e->k_row; }
static size_t kv_v_layer_bytes(const lp_engine *e, int32_t n) {
    return e->v_trans ? (size_t)n * e->kv_dim * sizeof(uint16_t) : (size_t)n * e->v_row;
}

/* copy the K rows [0, n) of layer l, sequence s, to (out=1) or from (out=0) buf */
static void kv_k_rows_io(lp_engine *e, int l, int s, int32_t n, uint8_t *buf, int out) {
    char *k = lp_k_row(e, l, s, 0);
    const size_t bytes = kv_k_layer_bytes(e, n);
    if (out) memcpy(buf, k, bytes);
    else memcpy(k, buf, bytes);
}

/* the same for V: rows, or one run of n positions per cache dimension when transposed */
static void kv_v_io(lp_engine *e, int l, int s, int32_t n, uint8_t *buf, int out) {
    if (!e->v_trans) {
        char *v = lp_v_row(e, l, s, 0);
        if (out) memcpy(buf, v, kv_v_layer_bytes(e, n));
        else memcpy(v, buf, kv_v_layer_bytes(e, n));
        return;
    }
    const size_t run = (size_t)n * sizeof(uint16_t);
    for (int d = 0; d < e->kv_dim; d++, buf += run) {
        uint16_t *v = lp_v_at(e, l, s, d);
        if (out) memcpy(buf, v, run);
        else memcpy(v, buf, run);
    }
}

int64_t lp_engine_kv_state_size(const lp_engine *e, int32_t n) {
    if (n < 0 || n > e->p.n_ctx) return -1;
    return (int64_t)e->p.n_layer * (int64_t)(kv_k_layer_bytes(e, n) + kv_v_layer_bytes(e, n));
}

static int kv_state_io(lp_engine *e, int32_t seq, int32_t n, uint8_t *buf, int64_t size, int out) {
    const char *what = out ? "kv_state_get" : "kv_state_set";
    if (seq < 0 || seq >= e->p.n_seq) return lp_engine_fail(e, "%s: no sequence %d", what, seq);
    if (n < 0 || n > e->p.n_ctx) return lp_engine_fail(e, "%s: %d positions (context %d)", what, n, e->p.n_ctx);
    const int64_t need = lp_engine_kv_state_size(e, n);
    if (size != need)
        return lp_engine_fail(e, "%s: buffer of %lld bytes, %d positions take %lld", what, (long long)size, n, (long long)need);
    for (int l = 0; l < e->p.n_layer; l++) {
        kv_k_rows_io(e, l, seq, n, buf, out);
        buf += kv_k_layer_bytes(e, n);
        kv_v_io(e, l, seq, n, buf, out);
        buf += kv_v_layer_bytes(e, n);
    }
    return 0;
}

int lp_engine_kv_state_get(lp_engine *e, int32_t seq, int32_t n, void *buf, int64_t size) {
    return kv_state_io(e, seq, n, buf, size, 1);
}

int lp_engine_kv_state_set(lp_engine *e, int32_t seq, int32_t n, const void *buf, int64_t size) {
    return kv_state_io(e, seq, n, (uint8_t *)buf, size, 0);
}
