/* The inference engine: one C call per forward step of a llama-architecture model.
 *
 * Python maps the GGUF, fills an lp_engine_params, creates the engine once (KV cache, scratch
 * buffers, thread pool), hands it a pointer to every weight, then calls lp_engine_eval() once per
 * batch of tokens. The batch may mix sequences at different positions; each sequence owns n_ctx
 * KV positions and a token at position p attends to positions 0..p of its own sequence.
 * The KV cache is F16: K as (layer, seq, pos, n_head_kv*head_dim), V transposed as
 * (layer, seq, n_head_kv*head_dim, pos), the layout the reference uses without flash attention.
 * Text between the LP_API markers is also the cffi cdef: plain C types only.
 */
#ifndef LP_ENGINE_H
#define LP_ENGINE_H

#include <stddef.h>
#include <stdint.h>

#include "lp_core.h"

/* LP_API_BEGIN */
typedef struct lp_engine lp_engine;

/* Hyperparameters and context settings; Python fills every field. */
typedef struct {
    int32_t n_vocab, n_embd, n_layer, n_head, n_head_kv, head_dim, n_ff;
    int32_t n_ctx;            /* KV positions per sequence */
    int32_t n_seq;            /* independent sequences sharing the engine */
    int32_t n_batch;          /* most tokens one lp_engine_eval() call takes */
    int32_t n_threads;
    float norm_eps;           /* RMSNorm epsilon */
    float attn_scale;         /* scale of q.k; 0 -> 1/sqrt(head_dim) */
    float rope_freq_base, rope_freq_scale;
    float yarn_ext_factor, yarn_attn_factor, yarn_beta_fast, yarn_beta_slow;
    int32_t n_ctx_orig;       /* training context YaRN corrects from */
} lp_engine_params;

/* Weight slots; "layer" is ignored for the global ones. */
enum lp_weight_kind {
    LP_W_TOKEN_EMBD = 0, LP_W_OUTPUT_NORM = 1, LP_W_OUTPUT = 2, LP_W_ROPE_FREQS = 3,
    LP_W_ATTN_NORM = 10, LP_W_Q = 11, LP_W_K = 12, LP_W_V = 13, LP_W_O = 14,
    LP_W_Q_B = 15, LP_W_K_B = 16, LP_W_V_B = 17, LP_W_O_B = 18,
    LP_W_FFN_NORM = 20, LP_W_GATE = 21, LP_W_UP = 22, LP_W_DOWN = 23,
    LP_W_GATE_B = 24, LP_W_UP_B = 25, LP_W_DOWN_B = 26
};

lp_engine *lp_engine_new(const lp_engine_params *p);   /* NULL when out of memory or params invalid */
void lp_engine_free(lp_engine *e);
const char *lp_engine_error(const lp_engine *e);      /* message of the last failed call */
int lp_engine_n_threads(const lp_engine *e);
double lp_engine_eval_seconds(const lp_engine *e);   /* wall time spent inside lp_engine_eval so far */
int64_t lp_engine_kv_bytes(const lp_engine *e);

/* Point a slot at weight data (not copied; must outlive the engine). ne0 = row length, ne1 = rows
 * (1 for vectors). Returns 0, or -1 for a slot, type or shape that does not fit (see lp_engine_error). */
int lp_engine_set_weight(lp_engine *e, int kind, int layer, const void *data, int type, int64_t ne0, int64_t ne1);

/* One forward step. tokens/pos/seq: n_tokens entries each. out_idx: the n_out batch indices whose
 * results are wanted. logits (n_out, n_vocab) and hidden (n_out, n_embd; the final-normed hidden
 * states) may each be NULL. Returns 0, or -1 with lp_engine_error() set (nothing is evaluated). */
int lp_engine_eval(lp_engine *e, int32_t n_tokens, const int32_t *tokens, const int32_t *pos,
                   const int32_t *seq, int32_t n_out, const int32_t *out_idx, float *logits, float *hidden);

/* Move the KV entries of positions [p0, p1) of a sequence by delta positions (K re-rotated);
 * what was at the destination is overwritten. */
int lp_engine_kv_shift(lp_engine *e, int32_t seq, int32_t p0, int32_t p1, int32_t delta);
/* Copy positions [0, n) of sequence src to sequence dst. */
int lp_engine_kv_copy(lp_engine *e, int32_t src, int32_t dst, int32_t n);

/* The engine's matrix product with the active kernels, for tests and benchmarks: x (nc, n) float
 * activations are quantized as the engine quantizes them, then out[c * nr + r] = dot(row r of w, x_c).
 * Returns 0, or -1 for a type without kernels or n not a multiple of its blocks. */
int lp_matmul(int type, int64_t n, int64_t nr, int64_t nc, const void *w, const float *x, float *out);
/* x (n floats) quantized to the activation type `type` as the engine does it (active kernels). */
int lp_quantize_activations(int type, const float *x, void *y, int64_t n);

/* The sampler chain (the reference's, as llamapy/sampling.py spells it out) in one call. */
typedef struct lp_sampler lp_sampler;
typedef struct {
    float temp;
    int32_t top_k;
    float top_p, min_p, typical_p;
    float repeat_penalty;
    int32_t repeat_last_n;
    float presence_penalty, frequency_penalty;
    int32_t mirostat;
    float mirostat_tau, mirostat_eta;
    int32_t min_keep;
} lp_sampler_params;
lp_sampler *lp_sampler_new(uint32_t seed, int32_t n_vocab);
void lp_sampler_free(lp_sampler *s);
void lp_sampler_reset(lp_sampler *s, uint32_t seed, float mu);   /* generator from seed; mirostat's mu */
float lp_sampler_mu(const lp_sampler *s);
/* The next token from logits (n_vocab): bias (n_bias id/value pairs) and penalties over hist (n_hist
 * ids, oldest first) applied first. The final candidates, most likely first, go to cand_ids / cand_p
 * (up to max_cand; either may be NULL) and their count to *n_cand. */
int32_t lp_sampler_sample(lp_sampler *s, const lp_sampler_params *p, const float *logits, const int32_t *bias_ids,
                          const float *bias, int32_t n_bias, const int32_t *hist, int32_t n_hist, int32_t max_cand,
                          int32_t *cand_ids, float *cand_p, int32_t *n_cand);

/* The indices of the k largest of x[0..n), largest first, equal values in index order (the sampler's
 * top-k without sorting the whole vocabulary). Returns how many were written: min(k, n). */
int lp_top_k(const float *x, int64_t n, int32_t k, int32_t *idx);
/* LP_API_END */

/* ---- internal: the thread pool (csrc/threadpool.c) ---- */
typedef struct lp_pool lp_pool;
typedef void (*lp_task_fn)(void *arg, int ith, int nth);
lp_pool *lp_pool_new(int n_threads);
void lp_pool_free(lp_pool *p);
int lp_pool_size(const lp_pool *p);
/* Run fn(arg, ith, nth) on every thread (the caller is thread 0); returns when all are done. */
void lp_pool_run(lp_pool *p, lp_task_fn fn, void *arg);
/* Wait until every thread of the running task reaches this point. */
void lp_pool_barrier(lp_pool *p);

/* ---- internal: kernels with a scalar reference (engine_kernels.c) and SIMD versions ---- */
typedef struct {
    /* y = x * 1/sqrt(mean(x^2) + eps) * w */
    void (*rms_norm)(int n, const float *x, const float *w, float eps, float *y);
    /* a[i] = silu(a[i]) * b[i] */
    void (*swiglu)(int n, float *a, const float *b);
    /* y[i] = exp(x[i] - max), returns the sum */
    double (*softmax_exp)(int n, const float *x, float max, float *y);
    /* s[j] = dot(q, k_j) for j < n; k_j = k + j*stride (fp16), q fp16 rounded; hd values each.
     * `single`: a one-token step, which the reference sums in another order than a batch */
    void (*attn_scores_f16)(int hd, int n, const uint16_t *q, const uint16_t *k, int64_t stride, float *s,
                            int single);
    /* out[d] = dot(p, v_d) for d < hd; v_d = v + d*stride (fp16), p fp16 rounded; n values each */
    void (*attn_values_f16)(int hd, int n, const uint16_t *p, const uint16_t *v, int64_t stride, float *out,
                            int single);
    void (*f32_to_f16)(int n, const float *x, uint16_t *y);
    /* rotate the pairs (x[r], x[r+1]) for even r in [r0, r1) by the angles of cs (cos, sin interleaved,
     * indexed by r % hd): x[r] = x0 cos - x1 sin, x[r+1] = x0 sin + x1 cos */
    void (*rope)(int hd, const float *cs, float *x, int r0, int r1);
} lp_engine_kernels;

/* Matrix products with a fast path for some weight types, and their activation quantizers; a NULL entry
 * falls back to the lp_traits row kernels. out[c * out_stride + r] = dot(row r of w, column c of x). */
typedef void (*lp_matmul_fn)(int n, int nr, int nc, const void *w, size_t w_row, const void *x, size_t x_row,
                             float *out, size_t out_stride);
typedef void (*lp_pack_fn)(const void *src, size_t src_row, void *dst, int64_t n, int64_t rows);
typedef struct {
    lp_matmul_fn mm[LP_TYPE_COUNT];          /* by weight type */
    lp_from_float_fn quant[LP_TYPE_COUNT];   /* by activation type */
    /* Weights repacked at load time for a faster product: groups of pack_rows rows interleaved
     * (same size as the rows they hold). mm_packed takes w at a group and w_row = bytes per group;
     * nr a multiple of pack_rows. */
    int pack_rows[LP_TYPE_COUNT];
    lp_pack_fn pack[LP_TYPE_COUNT];
    lp_matmul_fn mm_packed[LP_TYPE_COUNT];
} lp_engine_matmul;
void lp_engine_matmul_avx2(lp_engine_matmul *m);
void lp_engine_matmul_kquants_avx2(lp_engine_matmul *m);   /* packed Q4_K, Q5_K, Q6_K */

/* lp_top_k's scan: the first index >= i whose value is > thr (n if none); AVX2 version compares 8 at once */
int64_t lp_find_above_avx2(const float *x, int64_t i, int64_t n, float thr);

void lp_engine_kernels_scalar(lp_engine_kernels *k);
void lp_engine_kernels_avx2(lp_engine_kernels *k);   /* overrides what it accelerates */
void lp_engine_kernels_neon(lp_engine_kernels *k);


#include <stdatomic.h>

/* ---- internal: the engine's state, shared by engine.c (the step), engine_setup.c (construction, weights,
 * KV cache edits) and engine_ops.c (standalone kernels) ---- */
#define LP_MAX_PHASES_PER_LAYER 8
#define LP_SMALL_BATCH 4   /* up to this many tokens, every thread normalizes and quantizes all of them itself */

typedef struct {
    const void *data;            /* NULL when the slot is empty */
    int type;
    int64_t ne0, ne1;            /* row length, rows */
    size_t row_bytes;
    const lp_type_traits *tr;
    void *packed;                /* the first ne1 / pack_rows * pack_rows rows repacked, or NULL */
    int pack_rows;
} lp_weight;

typedef struct {
    lp_weight attn_norm, q, k, v, o, q_b, k_b, v_b, o_b;
    lp_weight ffn_norm, gate, up, down, gate_b, up_b, down_b;
} lp_layer_weights;

struct lp_engine {
    lp_engine_params p;
    int q_dim, kv_dim, max_dim;
    lp_weight tok_embd, output_norm, output, rope_freqs;
    lp_layer_weights *layers;
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
    void **tqbuf;                /* (n_threads, LP_TYPE_COUNT) -> (LP_SMALL_BATCH, row bytes): each thread's own */
    float *txn;                  /* (n_threads, LP_SMALL_BATCH, n_embd): each thread's normed activations */
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

int lp_engine_fail(lp_engine *e, const char *fmt, ...);
const char *lp_engine_missing_weight(const lp_engine *e);
/* cos/sin of each rotated pair at position pos (scaled by the YaRN magnitude when `magnitude`) */
void lp_engine_rope_table(const lp_engine *e, int pos, int magnitude, float *cs);
void lp_engine_active_matmul(lp_engine_matmul *m);   /* the fast paths the active kernels have */

static inline uint16_t *lp_k_at(const lp_engine *e, int l, int s, int pos) {
    return e->k_cache + (((size_t)l * e->p.n_seq + s) * e->p.n_ctx + pos) * e->kv_dim;
}
static inline uint16_t *lp_v_at(const lp_engine *e, int l, int s, int d) {
    return e->v_cache + (((size_t)l * e->p.n_seq + s) * e->kv_dim + d) * e->p.n_ctx;
}


#endif
