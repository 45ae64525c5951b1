/* The forward pass of a llama-architecture model, one call per batch of tokens.
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
 */
#include <math.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

#include "lp_core.h"
#include "lp_engine.h"

#define MAX_PHASES_PER_LAYER 8
#define SMALL_BATCH 4   /* up to this many tokens, every thread normalizes and quantizes all of them itself */

typedef struct {
    const void *data;            /* NULL when the slot is empty */
    int type;
    int64_t ne0, ne1;            /* row length, rows */
    size_t row_bytes;
    const lp_type_traits *tr;
    void *packed;                /* the first ne1 / pack_rows * pack_rows rows repacked, or NULL */
    int pack_rows;
} weight;

typedef struct {
    weight attn_norm, q, k, v, o, q_b, k_b, v_b, o_b;
    weight ffn_norm, gate, up, down, gate_b, up_b, down_b;
} layer_weights;

struct lp_engine {
    lp_engine_params p;
    int q_dim, kv_dim, max_dim;
    weight tok_embd, output_norm, output, rope_freqs;
    layer_weights *layers;
    lp_pool *pool;
    lp_engine_kernels kern;
    lp_engine_matmul mm;
    float theta_scale, corr_dims[2];

    uint16_t *k_cache;           /* (layer, seq, pos, kv_dim) fp16 */
    uint16_t *v_cache;           /* (layer, seq, kv_dim, pos) fp16, transposed */

    float *x;                    /* (n_batch, n_embd) residual stream */
    float *xn;                   /* (n_batch, n_embd) normed input of a matmul */
    float *q;                    /* (n_batch, q_dim) */
    float *kbuf, *vbuf;          /* (n_batch, kv_dim) before they go to the cache */
    float *att;                  /* (n_batch, q_dim) attention output */
    float *ffa, *ffb;            /* (n_batch, n_ff) gate then silu(gate)*up; up */
    float *rope;                 /* (n_batch, head_dim) cos, sin interleaved */
    void *qbuf[LP_TYPE_COUNT];   /* (n_batch, row_size(type, max_dim)) activations for each vec_dot type: */
    void *qbuf2[LP_TYPE_COUNT];  /* normed inputs in qbuf; attention and SwiGLU outputs in qbuf2 */
    void **tqbuf;                /* (n_threads, LP_TYPE_COUNT) -> (SMALL_BATCH, row bytes): each thread's own */
    float *txn;                  /* (n_threads, SMALL_BATCH, n_embd): each thread's normed activations */
    float *scores;               /* (n_threads, n_ctx) */
    uint16_t *p16;               /* (n_threads, max(n_ctx, head_dim)) */

    atomic_int *counters;        /* one chunk counter per dynamic phase of a step */
    int n_counters;

    /* the step being evaluated */
    int n_tok, n_out;
    const int32_t *tokens, *pos, *seq, *out_idx;
    float *logits, *hidden;

    double eval_seconds;         /* total wall time inside lp_engine_eval */

    char err[256];
};

static int fail(lp_engine *e, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e->err, sizeof e->err, fmt, ap);
    va_end(ap);
    return -1;
}

const char *lp_engine_error(const lp_engine *e) { return e->err; }
int lp_engine_n_threads(const lp_engine *e) { return lp_pool_size(e->pool); }
double lp_engine_eval_seconds(const lp_engine *e) { return e->eval_seconds; }

static double now_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

int64_t lp_engine_kv_bytes(const lp_engine *e) {
    return 2 * (int64_t)e->p.n_layer * e->p.n_seq * e->p.n_ctx * e->kv_dim * (int64_t)sizeof(uint16_t);
}

/* ---- construction ------------------------------------------------------------------------ */

static void free_packed(weight *w) {
    free(w->packed);
    w->packed = NULL;
}

void lp_engine_free(lp_engine *e) {
    if (!e) return;
    if (e->pool) lp_pool_free(e->pool);
    free_packed(&e->output);
    for (int l = 0; e->layers && l < e->p.n_layer; l++) {
        layer_weights *L = &e->layers[l];
        weight *ws[] = {&L->q, &L->k, &L->v, &L->o, &L->gate, &L->up, &L->down};
        for (size_t i = 0; i < sizeof ws / sizeof ws[0]; i++) free_packed(ws[i]);
    }
    free(e->layers);
    free(e->k_cache);
    free(e->v_cache);
    free(e->x);
    free(e->xn);
    free(e->q);
    free(e->kbuf);
    free(e->vbuf);
    free(e->att);
    free(e->ffa);
    free(e->ffb);
    free(e->rope);
    for (int t = 0; t < LP_TYPE_COUNT; t++) free(e->qbuf[t]), free(e->qbuf2[t]);
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
        p->n_seq < 1 || p->n_batch < 1)
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

    e->theta_scale = powf(p->rope_freq_base, -2.0f / p->head_dim);
    float start = floorf(yarn_corr_dim(p->head_dim, p->n_ctx_orig, p->yarn_beta_fast, p->rope_freq_base));
    float end = ceilf(yarn_corr_dim(p->head_dim, p->n_ctx_orig, p->yarn_beta_slow, p->rope_freq_base));
    e->corr_dims[0] = start > 0 ? start : 0;
    e->corr_dims[1] = end < p->head_dim - 1 ? end : p->head_dim - 1;

    lp_engine_kernels_scalar(&e->kern);
    if (lp_kernels_active() == LP_KERNELS_AVX2) lp_engine_kernels_avx2(&e->kern);
    if (lp_kernels_active() == LP_KERNELS_NEON) lp_engine_kernels_neon(&e->kern);
    if (lp_kernels_active() == LP_KERNELS_AVX2) lp_engine_matmul_avx2(&e->mm);

    size_t nb = (size_t)p->n_batch, nt = (size_t)e->p.n_threads;
    size_t kv_elems = (size_t)p->n_layer * p->n_seq * p->n_ctx * e->kv_dim;
    size_t p16_len = (size_t)(p->n_ctx > p->head_dim ? p->n_ctx : p->head_dim);
    e->layers = calloc((size_t)p->n_layer, sizeof(layer_weights));
    e->k_cache = calloc(kv_elems, sizeof(uint16_t));
    e->v_cache = calloc(kv_elems, sizeof(uint16_t));
    e->x = falloc(nb * p->n_embd);
    e->xn = falloc(nb * p->n_embd);
    e->q = falloc(nb * e->q_dim);
    e->kbuf = falloc(nb * e->kv_dim);
    e->vbuf = falloc(nb * e->kv_dim);
    e->att = falloc(nb * e->q_dim);
    e->ffa = falloc(nb * p->n_ff);
    e->ffb = falloc(nb * p->n_ff);
    e->rope = falloc(nb * p->head_dim);
    e->scores = falloc(nt * p->n_ctx);
    e->p16 = calloc(nt * p16_len, sizeof(uint16_t));
    e->tqbuf = calloc(nt * LP_TYPE_COUNT, sizeof(void *));
    e->txn = falloc(nt * SMALL_BATCH * p->n_embd);
    e->n_counters = 2 + MAX_PHASES_PER_LAYER * p->n_layer;
    e->counters = calloc((size_t)e->n_counters, sizeof(atomic_int));
    if (!e->layers || !e->k_cache || !e->v_cache || !e->x || !e->xn || !e->q || !e->kbuf || !e->vbuf ||
        !e->att || !e->ffa || !e->ffb || !e->rope || !e->scores || !e->p16 || !e->counters || !e->tqbuf || !e->txn) {
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

static weight *slot(lp_engine *e, int kind, int layer) {
    switch (kind) {
    case LP_W_TOKEN_EMBD: return &e->tok_embd;
    case LP_W_OUTPUT_NORM: return &e->output_norm;
    case LP_W_OUTPUT: return &e->output;
    case LP_W_ROPE_FREQS: return &e->rope_freqs;
    default: break;
    }
    if (layer < 0 || layer >= e->p.n_layer) return NULL;
    layer_weights *L = &e->layers[layer];
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
    case LP_W_OUTPUT_NORM: case LP_W_ATTN_NORM: case LP_W_FFN_NORM:
    case LP_W_O_B: case LP_W_DOWN_B: *ne0 = p->n_embd; return 0;
    case LP_W_ROPE_FREQS: *ne0 = p->head_dim / 2; return 0;
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

int lp_engine_set_weight(lp_engine *e, int kind, int layer, const void *data, int type, int64_t ne0, int64_t ne1) {
    weight *w = slot(e, kind, layer);
    int64_t want0, want1;
    int is_matrix = expected_shape(e, kind, &want0, &want1);
    if (!w || is_matrix < 0) return fail(e, "weight slot %d (layer %d) does not exist", kind, layer);
    if (ne0 != want0 || ne1 != want1)
        return fail(e, "weight slot %d (layer %d): shape [%lld, %lld], expected [%lld, %lld]", kind, layer,
                    (long long)ne0, (long long)ne1, (long long)want0, (long long)want1);
    const lp_type_traits *tr = lp_get_traits(type);
    if (!tr) return fail(e, "weight slot %d (layer %d): tensor type %d is not supported", kind, layer, type);
    if (!is_matrix && kind != LP_W_TOKEN_EMBD && type != LP_TYPE_F32)
        return fail(e, "weight slot %d (layer %d): vectors must be F32, not %s", kind, layer, tr->name);
    if (ne0 % tr->blck_size)
        return fail(e, "weight slot %d (layer %d): row length %lld is not a multiple of %s's block of %lld", kind,
                    layer, (long long)ne0, tr->name, (long long)tr->blck_size);
    if (kind == LP_W_TOKEN_EMBD && !tr->to_float)
        return fail(e, "token_embd: type %s can't be dequantized", tr->name);
    if (is_matrix) {
        const lp_type_traits *vt = lp_get_traits(tr->vec_dot_type);
        if (!tr->vec_dot || !vt || !vt->from_float)
            return fail(e, "weight slot %d (layer %d): no dot-product kernel for type %s", kind, layer, tr->name);
        if (ne0 % vt->blck_size)
            return fail(e, "weight slot %d (layer %d): row length %lld is not a multiple of %s's block of %lld",
                        kind, layer, (long long)ne0, vt->name, (long long)vt->blck_size);
        int at = tr->vec_dot_type;
        if (!e->qbuf[at]) {
            size_t rb = (size_t)(e->max_dim / vt->blck_size + 1) * (size_t)vt->type_size;
            e->qbuf[at] = calloc((size_t)e->p.n_batch, rb);
            e->qbuf2[at] = calloc((size_t)e->p.n_batch, rb);
            if (!e->qbuf[at] || !e->qbuf2[at]) return fail(e, "out of memory for activations of type %s", vt->name);
            for (int i = 0; i < e->p.n_threads; i++) {
                e->tqbuf[i * LP_TYPE_COUNT + at] = calloc(SMALL_BATCH, rb);
                if (!e->tqbuf[i * LP_TYPE_COUNT + at]) return fail(e, "out of memory for activations");
            }
        }
    }
    free_packed(w);
    *w = (weight){data, type, ne0, ne1, (size_t)(ne0 / tr->blck_size * tr->type_size), tr, NULL, 0};
    int pr = is_matrix ? e->mm.pack_rows[type] : 0;
    if (pr && ne1 >= pr && ne0 <= 16384) {
        /* repacked once for the engine's faster product; the file's pages of it are then let go */
        size_t bytes = (size_t)(ne1 / pr) * (size_t)pr * w->row_bytes;
        w->packed = malloc(bytes);
        if (w->packed) {
            e->mm.pack[type](data, w->row_bytes, w->packed, ne0, ne1);
            w->pack_rows = pr;
            release_pages(data, bytes);
        }
    }
    return 0;
}

static const char *missing_weight(const lp_engine *e) {
    static char buf[64];
    if (!e->tok_embd.data) return "token_embd";
    if (!e->output_norm.data) return "output_norm";
    if (!e->output.data) return "output";
    for (int l = 0; l < e->p.n_layer; l++) {
        const layer_weights *L = &e->layers[l];
        const char *m = !L->attn_norm.data ? "attn_norm" : !L->q.data ? "attn_q" : !L->k.data ? "attn_k"
                      : !L->v.data ? "attn_v" : !L->o.data ? "attn_output" : !L->ffn_norm.data ? "ffn_norm"
                      : !L->gate.data ? "ffn_gate" : !L->up.data ? "ffn_up" : !L->down.data ? "ffn_down" : NULL;
        if (m) {
            snprintf(buf, sizeof buf, "blk.%d.%s", l, m);
            return buf;
        }
    }
    return NULL;
}

/* ---- the pieces of a step ---------------------------------------------------------------- */

static inline size_t act_row_bytes(const weight *w) {
    const lp_type_traits *vt = &lp_traits[w->tr->vec_dot_type];
    return (size_t)(w->ne0 / vt->blck_size) * (size_t)vt->type_size;
}

static inline lp_from_float_fn act_quantizer(const lp_engine *e, int at) {
    return e->mm.quant[at] ? e->mm.quant[at] : lp_traits[at].from_float;
}

/* Which activation buffer a matmul by w reads (slot): thread `slot`'s own (slot >= 0), the shared one for
   normed inputs (NORMED) or the shared one for attention and SwiGLU outputs (INNER). */
#define NORMED (-1)
#define INNER (-2)
static inline char *act_buf(const lp_engine *e, const weight *w, int slot) {
    int at = w->tr->vec_dot_type;
    return slot == NORMED ? e->qbuf[at] : slot == INNER ? e->qbuf2[at] : e->tqbuf[slot * LP_TYPE_COUNT + at];
}

/* quantize rows [t0, t1) of src (stride n) for several weights (each vec_dot type once) into buffer slot */
static void quantize_for(lp_engine *e, const weight *const *ws, int nw, const float *src, int n, int t0, int t1,
                         int slot) {
    int done[8], nd = 0;
    for (int i = 0; i < nw; i++) {
        int vt = ws[i]->tr->vec_dot_type, seen = 0;
        for (int j = 0; j < nd; j++) seen |= done[j] == vt;
        if (seen) continue;
        done[nd++] = vt;
        lp_from_float_fn q = act_quantizer(e, vt);
        size_t rb = act_row_bytes(ws[i]);
        char *dst = act_buf(e, ws[i], slot);
        for (int t = t0; t < t1; t++) q(src + (size_t)t * n, dst + (size_t)t * rb, n);
    }
}

/* out[t*out_stride + r] = dot(row r of w, activation t) for r in [r0, r1), t < n_tok; activations from
   buffer slot (see act_buf) */
static void matmul_chunk(const lp_engine *e, const weight *w, int r0, int r1, int n_tok, float *out, int out_stride,
                         int slot) {
    const char *xq = act_buf(e, w, slot);
    size_t xrb = act_row_bytes(w);
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
        /* one weight row decoded once for several activation rows; activations in L1-sized groups */
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

static int chunk_rows(int rows, int nth) {
    int c = rows / (nth * 16);
    c = (c + 15) / 16 * 16;
    return c < 16 ? 16 : c;
}

static void add_bias(const weight *b, float *out, int stride, int n_tok, int r0, int r1) {
    if (!b->data) return;
    const float *bd = b->data;
    for (int t = 0; t < n_tok; t++)
        for (int r = r0; r < r1; r++) out[(size_t)t * stride + r] += bd[r];
}

/* rotate the pairs (2i, 2i+1) of rows [r0, r1) (even r0) with each token's cos/sin table */
static void rope_rows(const lp_engine *e, float *x, int stride, int n_tok, int r0, int r1) {
    for (int t = 0; t < n_tok; t++)
        e->kern.rope(e->p.head_dim, e->rope + (size_t)t * e->p.head_dim, x + (size_t)t * stride, r0, r1);
}

static inline uint16_t *k_at(const lp_engine *e, int l, int s, int pos) {
    return e->k_cache + (((size_t)l * e->p.n_seq + s) * e->p.n_ctx + pos) * e->kv_dim;
}
static inline uint16_t *v_at(const lp_engine *e, int l, int s, int d) {
    return e->v_cache + (((size_t)l * e->p.n_seq + s) * e->kv_dim + d) * e->p.n_ctx;
}

/* cos/sin table of one position: YaRN-corrected angles (plain RoPE when ext_factor is 0), scaled by
 * the YaRN magnitude when `magnitude` is set (not when re-rotating cached keys) */
static void rope_table(const lp_engine *e, int pos, int magnitude, float *cs) {
    const lp_engine_params *p = &e->p;
    const float *ff = e->rope_freqs.data;
    float theta = (float)pos;
    for (int i0 = 0; i0 < p->head_dim; i0 += 2) {
        float theta_extrap = ff ? theta / ff[i0 / 2] : theta;
        float theta_interp = p->rope_freq_scale * theta_extrap;
        float th = theta_interp, mscale = p->yarn_attn_factor;
        if (p->yarn_ext_factor != 0.0f) {
            float y = (i0 / 2 - e->corr_dims[0]) / fmaxf(0.001f, e->corr_dims[1] - e->corr_dims[0]);
            float ramp = 1 - fminf(1, fmaxf(0, y));
            float mix = ramp * p->yarn_ext_factor;
            th = theta_interp * (1 - mix) + theta_extrap * mix;
            mscale *= 1.0f + 0.1f * logf(1.0f / p->rope_freq_scale);
        }
        if (!magnitude) mscale = 1.0f;
        cs[i0] = cosf(th) * mscale;
        cs[i0 + 1] = sinf(th) * mscale;
        theta *= e->theta_scale;
    }
}

/* whether pieces of `len` values (at multiples of len) can be quantized for w on their own */
static inline int fused_quant(const weight *w, int len) {
    return len % lp_traits[w->tr->vec_dot_type].blck_size == 0;
}

static void attention_item(lp_engine *e, int l, int t, int h, int ith) {
    const lp_engine_params *p = &e->p;
    int hd = p->head_dim, g = h / (p->n_head / p->n_head_kv), s = e->seq[t], n_kv = e->pos[t] + 1;
    float *sc = e->scores + (size_t)ith * p->n_ctx;
    uint16_t *b16 = e->p16 + (size_t)ith * (p->n_ctx > hd ? p->n_ctx : hd);
    float scale = p->attn_scale != 0.0f ? p->attn_scale : 1.0f / sqrtf((float)hd);

    e->kern.f32_to_f16(hd, e->q + (size_t)t * e->q_dim + (size_t)h * hd, b16);
    e->kern.attn_scores_f16(hd, n_kv, b16, k_at(e, l, s, 0) + (size_t)g * hd, e->kv_dim, sc, e->n_tok == 1);
    float max = -INFINITY;
    for (int j = 0; j < n_kv; j++) {
        sc[j] *= scale;
        if (sc[j] > max) max = sc[j];
    }
    float inv = (float)(1.0 / e->kern.softmax_exp(n_kv, sc, max, sc));
    for (int j = 0; j < n_kv; j++) sc[j] *= inv;
    e->kern.f32_to_f16(n_kv, sc, b16);
    float *out = e->att + (size_t)t * e->q_dim + (size_t)h * hd;
    e->kern.attn_values_f16(hd, n_kv, b16, v_at(e, l, s, g * hd), p->n_ctx, out, e->n_tok == 1);
    const weight *wo = &e->layers[l].o;
    if (fused_quant(wo, hd)) {   /* this head's blocks of the output projection's input */
        const lp_type_traits *vt = &lp_traits[wo->tr->vec_dot_type];
        char *dst = act_buf(e, wo, INNER) + (size_t)t * act_row_bytes(wo) + (size_t)(h * hd / vt->blck_size) * vt->type_size;
        act_quantizer(e, wo->tr->vec_dot_type)(out, dst, hd);
    }
}

/* ---- the step ---------------------------------------------------------------------------- */

typedef struct {
    lp_engine *e;
    int ith, nth, phase;
} worker;

/* next chunk of the current dynamic phase, or -1 when it is exhausted */
static inline int take(worker *w, int n_chunks) {
    int c = atomic_fetch_add_explicit(&w->e->counters[w->phase], 1, memory_order_relaxed);
    return c < n_chunks ? c : -1;
}

/* x normalized and quantized for the weights ws: split between the threads into the shared buffers, or
   (priv) by every thread for all tokens into its own, which saves the barrier after it */
static void phase_norm_quant(worker *w, const float *x, const weight *norm, const weight *const *ws, int nw, int priv) {
    lp_engine *e = w->e;
    int n = e->p.n_embd;
    if (priv) {
        float *xn = e->txn + (size_t)w->ith * SMALL_BATCH * n;
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
    layer_weights *L = &e->layers[l];
    int n_tok = e->n_tok, cq = chunk_rows(e->q_dim, w->nth), ck = chunk_rows(e->kv_dim, w->nth);
    int nq = (e->q_dim + cq - 1) / cq, nk = (e->kv_dim + ck - 1) / ck;
    int c;
    while ((c = take(w, nq + 2 * nk)) >= 0) {
        if (c < nq) {
            int r0 = c * cq, r1 = r0 + cq < e->q_dim ? r0 + cq : e->q_dim;
            matmul_chunk(e, &L->q, r0, r1, n_tok, e->q, e->q_dim, priv ? w->ith : NORMED);
            add_bias(&L->q_b, e->q, e->q_dim, n_tok, r0, r1);
            rope_rows(e, e->q, e->q_dim, n_tok, r0, r1);
            continue;
        }
        int is_v = c >= nq + nk, r0 = (c - nq - (is_v ? nk : 0)) * ck;
        int r1 = r0 + ck < e->kv_dim ? r0 + ck : e->kv_dim;
        float *buf = is_v ? e->vbuf : e->kbuf;
        matmul_chunk(e, is_v ? &L->v : &L->k, r0, r1, n_tok, buf, e->kv_dim, priv ? w->ith : NORMED);
        add_bias(is_v ? &L->v_b : &L->k_b, buf, e->kv_dim, n_tok, r0, r1);
        if (!is_v) rope_rows(e, buf, e->kv_dim, n_tok, r0, r1);
        for (int t = 0; t < n_tok; t++) {
            const float *src = buf + (size_t)t * e->kv_dim;
            if (!is_v) {
                e->kern.f32_to_f16(r1 - r0, src + r0, k_at(e, l, e->seq[t], e->pos[t]) + r0);
            } else {
                for (int r = r0; r < r1; r++) v_at(e, l, e->seq[t], r)[e->pos[t]] = lp_fp32_to_fp16(src[r]);
            }
        }
    }
}

static void phase_attention(worker *w, int l) {
    lp_engine *e = w->e;
    int n_items = e->n_tok * e->p.n_head, c;
    while ((c = take(w, n_items)) >= 0) attention_item(e, l, c / e->p.n_head, c % e->p.n_head, w->ith);
}

/* out rows of w, added into the residual stream x (plus bias) */
static void phase_matmul_residual(worker *w, const weight *wt, const weight *bias, float *tmp) {
    lp_engine *e = w->e;
    int rows = (int)wt->ne1, cr = chunk_rows(rows, w->nth), n_chunks = (rows + cr - 1) / cr, c;
    int n = e->p.n_embd;
    while ((c = take(w, n_chunks)) >= 0) {
        int r0 = c * cr, r1 = r0 + cr < rows ? r0 + cr : rows;
        matmul_chunk(e, wt, r0, r1, e->n_tok, tmp, n, INNER);
        for (int t = 0; t < e->n_tok; t++) {
            float *xt = e->x + (size_t)t * n, *ot = tmp + (size_t)t * n;
            const float *b = bias->data;
            for (int r = r0; r < r1; r++) xt[r] += b ? ot[r] + b[r] : ot[r];
        }
    }
}

/* the rows of ffn_gate/ffn_up, SwiGLU, and the result quantized for ffn_down chunk by chunk */
static void phase_gate_up(worker *w, int l, int priv) {
    lp_engine *e = w->e;
    layer_weights *L = &e->layers[l];
    int rows = e->p.n_ff, cr = chunk_rows(rows, w->nth), c;
    {   /* chunks of whole activation blocks of ffn_down's input, each quantized by the thread making it */
        int bs = (int)lp_traits[L->down.tr->vec_dot_type].blck_size;
        cr = (cr + bs - 1) / bs * bs;
    }
    int n_chunks = (rows + cr - 1) / cr;
    while ((c = take(w, n_chunks)) >= 0) {
        int r0 = c * cr, r1 = r0 + cr < rows ? r0 + cr : rows;
        matmul_chunk(e, &L->gate, r0, r1, e->n_tok, e->ffa, rows, priv ? w->ith : NORMED);
        matmul_chunk(e, &L->up, r0, r1, e->n_tok, e->ffb, rows, priv ? w->ith : NORMED);
        add_bias(&L->gate_b, e->ffa, rows, e->n_tok, r0, r1);
        add_bias(&L->up_b, e->ffb, rows, e->n_tok, r0, r1);
        for (int t = 0; t < e->n_tok; t++)
            e->kern.swiglu(r1 - r0, e->ffa + (size_t)t * rows + r0, e->ffb + (size_t)t * rows + r0);
        {
            const lp_type_traits *vt = &lp_traits[L->down.tr->vec_dot_type];
            lp_from_float_fn q = act_quantizer(e, L->down.tr->vec_dot_type);
            size_t rb = act_row_bytes(&L->down), off = (size_t)(r0 / vt->blck_size) * vt->type_size;
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
    const int priv = e->n_tok <= SMALL_BATCH && nth > 1;

    for (int t = ith; t < e->n_tok; t += nth) {
        const weight *te = &e->tok_embd;
        te->tr->to_float((const char *)te->data + (size_t)e->tokens[t] * te->row_bytes, e->x + (size_t)t * n, n);
        rope_table(e, e->pos[t], 1, e->rope + (size_t)t * p->head_dim);
    }
    lp_pool_barrier(e->pool);

    for (int l = 0; l < p->n_layer; l++) {
        layer_weights *L = &e->layers[l];
        const weight *qkv[3] = {&L->q, &L->k, &L->v};
        const weight *gu[2] = {&L->gate, &L->up};
        const weight *o[1] = {&L->o};
        /* attention heads and SwiGLU chunks quantize their own output when its blocks allow */
        const int fuse_o = fused_quant(&L->o, p->head_dim);

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
        phase_matmul_residual(&w, &L->o, &L->o_b, e->xn);
        w.phase++;
        lp_pool_barrier(e->pool);
        phase_norm_quant(&w, e->x, &L->ffn_norm, gu, 2, priv);
        if (!priv) lp_pool_barrier(e->pool);
        phase_gate_up(&w, l, priv);
        w.phase++;
        lp_pool_barrier(e->pool);
        phase_matmul_residual(&w, &L->down, &L->down_b, e->xn);
        w.phase++;
        lp_pool_barrier(e->pool);
    }

    /* the wanted tokens: final norm, hidden states, logits */
    const weight *out[1] = {&e->output};
    const int opriv = e->n_out <= SMALL_BATCH && nth > 1;
    for (int i = opriv ? 0 : ith; i < e->n_out; i += opriv ? 1 : nth) {
        float *xi = (opriv ? e->txn + (size_t)ith * SMALL_BATCH * n : e->xn) + (size_t)i * n;
        e->kern.rms_norm(n, e->x + (size_t)e->out_idx[i] * n, e->output_norm.data, p->norm_eps, xi);
        if (e->hidden && (!opriv || ith == 0)) memcpy(e->hidden + (size_t)i * n, xi, (size_t)n * sizeof(float));
        if (e->logits) quantize_for(e, out, 1, xi - (size_t)i * n, n, i, i + 1, opriv ? ith : NORMED);
    }
    if (!e->logits) return;
    if (!opriv) lp_pool_barrier(e->pool);
    int rows = p->n_vocab, cr = chunk_rows(rows, nth), n_chunks = (rows + cr - 1) / cr, c;
    while ((c = take(&w, n_chunks)) >= 0) {
        int r0 = c * cr, r1 = r0 + cr < rows ? r0 + cr : rows;
        matmul_chunk(e, &e->output, r0, r1, e->n_out, e->logits, rows, opriv ? ith : NORMED);
    }
}

int lp_engine_eval(lp_engine *e, int32_t n_tokens, const int32_t *tokens, const int32_t *pos, const int32_t *seq,
                   int32_t n_out, const int32_t *out_idx, float *logits, float *hidden) {
    const lp_engine_params *p = &e->p;
    const char *m = missing_weight(e);
    if (m) return fail(e, "weight %s was never set", m);
    if (n_tokens < 1 || n_tokens > p->n_batch)
        return fail(e, "batch of %d tokens (must be 1 to n_batch = %d)", n_tokens, p->n_batch);
    if (n_out < 0 || n_out > n_tokens) return fail(e, "%d outputs for %d tokens", n_out, n_tokens);
    for (int t = 0; t < n_tokens; t++) {
        if (tokens[t] < 0 || tokens[t] >= p->n_vocab)
            return fail(e, "token id %d at batch index %d is outside the vocabulary (%d)", tokens[t], t, p->n_vocab);
        if (pos[t] < 0 || pos[t] >= p->n_ctx)
            return fail(e, "position %d at batch index %d is outside the context (%d)", pos[t], t, p->n_ctx);
        if (seq[t] < 0 || seq[t] >= p->n_seq)
            return fail(e, "sequence %d at batch index %d (have %d)", seq[t], t, p->n_seq);
    }
    for (int i = 0; i < n_out; i++)
        if (out_idx[i] < 0 || out_idx[i] >= n_tokens) return fail(e, "output index %d outside the batch", out_idx[i]);
    e->n_tok = n_tokens;
    e->tokens = tokens;
    e->pos = pos;
    e->seq = seq;
    e->n_out = n_out;
    e->out_idx = out_idx;
    e->logits = logits;
    e->hidden = hidden;
    for (int i = 0; i < e->n_counters; i++) atomic_store_explicit(&e->counters[i], 0, memory_order_relaxed);
    double t0 = now_seconds();
    lp_pool_run(e->pool, forward_task, e);
    e->eval_seconds += now_seconds() - t0;
    return 0;
}

/* ---- KV cache edits ---------------------------------------------------------------------- */

int lp_engine_kv_shift(lp_engine *e, int32_t seq, int32_t p0, int32_t p1, int32_t delta) {
    const lp_engine_params *p = &e->p;
    if (seq < 0 || seq >= p->n_seq) return fail(e, "kv_shift: no sequence %d", seq);
    if (p0 < 0 || p1 > p->n_ctx || p0 > p1 || p0 + delta < 0 || p1 + delta > p->n_ctx)
        return fail(e, "kv_shift: positions [%d, %d) moved by %d leave the context (%d)", p0, p1, delta, p->n_ctx);
    int n = p1 - p0, hd = p->head_dim;
    if (n == 0 || delta == 0) return 0;
    /* the angle is linear in the position, so rotating by the angles of position `delta`
       moves a cached key from position j to j + delta */
    float cs[hd];
    rope_table(e, delta, 0, cs);
    for (int l = 0; l < p->n_layer; l++) {
        memmove(k_at(e, l, seq, p0 + delta), k_at(e, l, seq, p0), (size_t)n * e->kv_dim * sizeof(uint16_t));
        for (int d = 0; d < e->kv_dim; d++) {
            uint16_t *vd = v_at(e, l, seq, d);
            memmove(vd + p0 + delta, vd + p0, (size_t)n * sizeof(uint16_t));
        }
        for (int j = p0 + delta; j < p1 + delta; j++) {
            uint16_t *k = k_at(e, l, seq, j);
            for (int r = 0; r < e->kv_dim; r += 2) {
                int i0 = r % hd;
                float x0 = lp_fp16_to_fp32(k[r]), x1 = lp_fp16_to_fp32(k[r + 1]);
                k[r] = lp_fp32_to_fp16(x0 * cs[i0] - x1 * cs[i0 + 1]);
                k[r + 1] = lp_fp32_to_fp16(x0 * cs[i0 + 1] + x1 * cs[i0]);
            }
        }
    }
    return 0;
}

int lp_engine_kv_copy(lp_engine *e, int32_t src, int32_t dst, int32_t n) {
    const lp_engine_params *p = &e->p;
    if (src < 0 || src >= p->n_seq || dst < 0 || dst >= p->n_seq) return fail(e, "kv_copy: no such sequence");
    if (n < 0 || n > p->n_ctx) return fail(e, "kv_copy: %d positions (context %d)", n, p->n_ctx);
    if (src == dst || n == 0) return 0;
    for (int l = 0; l < p->n_layer; l++) {
        memcpy(k_at(e, l, dst, 0), k_at(e, l, src, 0), (size_t)n * e->kv_dim * sizeof(uint16_t));
        for (int d = 0; d < e->kv_dim; d++)
            memcpy(v_at(e, l, dst, d), v_at(e, l, src, d), (size_t)n * sizeof(uint16_t));
    }
    return 0;
}

/* ---- the matrix product on its own (tests, benchmarks) ----------------------------------------- */

static void active_matmul(lp_engine_matmul *m) {
    memset(m, 0, sizeof *m);
    if (lp_kernels_active() == LP_KERNELS_AVX2) lp_engine_matmul_avx2(m);
}

int lp_quantize_activations(int type, const float *x, void *y, int64_t n) {
    const lp_type_traits *t = lp_get_traits(type);
    if (!t || !t->from_float || n % t->blck_size) return -1;
    lp_engine_matmul m;
    active_matmul(&m);
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
    active_matmul(&m);
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

/* ---- top-k for the sampler ------------------------------------------------------------------------ */

int lp_top_k(const float *x, int64_t n, int32_t k, int32_t *idx) {
    if (k <= 0 || n <= 0) return 0;
    if (k > n) k = (int32_t)n;
    const int fast = lp_kernels_active() == LP_KERNELS_AVX2;
    /* idx[0..m) sorted: larger values first, equal values by index; once full, only a value above the
       last one enters (NaN never does), and the scan skips ahead to the next such value */
    int m = 0;
    for (int64_t i = 0; i < n; i++) {
        if (m == k) {
            const float thr = x[idx[m - 1]];
            if (fast) {
                i = lp_find_above_avx2(x, i, n, thr);
                if (i == n) break;
            } else if (!(x[i] > thr)) {
                continue;
            }
        }
        const float v = x[i];
        int j = m < k ? m++ : m - 1;
        while (j > 0 && v > x[idx[j - 1]]) {
            idx[j] = idx[j - 1];
            j--;
        }
        idx[j] = (int32_t)i;
    }
    return m;
}
