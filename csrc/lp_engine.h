/* The inference engine's internals: its state, shared by engine.c (the step), engine_setup.c (construction,
 * weights, KV cache edits) and engine_ops.c (the matrix product on its own), and the tables of its kernels.
 * The public engine API is in llamapy.h.
 */
#ifndef LP_ENGINE_H
#define LP_ENGINE_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "lp_core.h"
#include "lp_pool.h"

/* ---- kernels with a scalar reference (engine_kernels.c) and SIMD versions ---- */
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
    /* y[i] += a * x[i] (the weighted sum of dequantized V rows) */
    void (*axpy)(int n, float a, const float *x, float *y);
    /* rotate the pairs (x[r], x[r+1]) for even r in [r0, r1) by the angles of cs (cos, sin interleaved,
     * indexed by r % hd): x[r] = x0 cos - x1 sin, x[r+1] = x0 sin + x1 cos */
    void (*rope)(int hd, const float *cs, float *x, int r0, int r1);
    /* LoRA's products (engine_lora.c): y[r] += sum_j c[j] * B[r][j] for r in [r0, r1), j < rank, B packed in
       blocks of 8 rows (LP_LORA_B_AT), F32 or F16; the dot of an F16 row with F32 values (A x) */
    void (*lora_up)(int r0, int r1, int rank, const float *c, const float *b, float *y);
    void (*lora_up_f16)(int r0, int r1, int rank, const float *c, const uint16_t *b, float *y);
    float (*dot_f16_f32)(int n, const uint16_t *a, const float *x);
} lp_engine_kernels;

/* Matrix products with a fast path for some weight types, and their activation quantizers; a NULL entry
 * falls back to the row kernels of the kernel table. out[c * out_stride + r] = dot(row r of w, column c of x). */
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

void lp_engine_kernels_scalar(lp_engine_kernels *k);
void lp_engine_kernels_avx2(lp_engine_kernels *k);   /* overrides what it accelerates */
void lp_engine_kernels_neon(lp_engine_kernels *k);

/* ---- the engine's state ---- */
#define LP_MAX_PHASES_PER_LAYER 8
#define LP_SMALL_BATCH 4   /* up to this many tokens, every thread normalizes and quantizes all of them itself */

/* A LoRA pair on a weight: y += scale * mult * B (A x); a (rank, ne0) rows and b = B (ne1, rank) packed in
   blocks of 8 rows (each block rank x 8 values, column after column: element (r, j) at LP_LORA_B_AT), F32
   or F16 (f16), not owned; adapter indexes the engine's lora_scale (engine_lora.c) */
#define LP_LORA_B_AT(r, j, rank) ((size_t)((r) / 8) * 8 * (size_t)(rank) + (size_t)(j) * 8 + (size_t)((r) % 8))
typedef struct {
    const void *a, *b;
    int rank, adapter, f16;
    float mult;
} lp_lora_pair;

typedef struct {
    const void *data;            /* NULL when the slot is empty */
    int type;
    int64_t ne0, ne1;            /* row length, rows */
    size_t row_bytes;
    const lp_type_traits *tr;
    void *packed;                /* the first ne1 / pack_rows * pack_rows rows repacked, or NULL */
    int pack_rows;
    lp_lora_pair *lora;          /* (n_lora) low-rank pairs added beside the product, or NULL */
    int n_lora, lora_rank;       /* lora_rank: the sum of their ranks */
} lp_weight;

typedef struct {
    lp_weight attn_norm, q, k, v, o, q_b, k_b, v_b, o_b;
    lp_weight ffn_norm, gate, up, down, gate_b, up_b, down_b;
    lp_weight q_norm, k_norm, post_attn_norm, post_ffn_norm;   /* (head_dim), (n_embd); optional */
    lp_weight gate_inp, gate_exps, up_exps, down_exps;          /* experts (n_expert > 0) */
    lp_weight gate_inp_shexp, gate_shexp, up_shexp, down_shexp; /* the shared expert, optional */
} lp_layer_weights;

struct lp_engine {
    lp_engine_params p;
    int q_dim, kv_dim, max_dim;
    lp_weight tok_embd, output_norm, output, rope_freqs;
    lp_layer_weights *layers;
    lp_pool *pool;
    /* the kernels of the level active at creation, all from that one level (lp_kernels_set leaves them be) */
    const lp_type_traits *traits;   /* (LP_TYPE_COUNT) the kernel table */
    lp_engine_kernels kern;
    lp_engine_matmul mm;
    float theta_scale, corr_dims[2];
    float theta_scale_swa;       /* of the local (sliding-window) layers' RoPE */
    int has_swa_rope;            /* local layers rotate with their own base: a second table */

    /* The KV cache, byte-addressed (lp_k_row / lp_v_row / lp_v_col):
     *   K: (layer, seq, pos) rows of kv_dim values in type_k (blocks of type_k for a quantized type), k_row bytes
     *      each; F16 K is the (layer, seq, pos, kv_dim) fp16 array it always was.
     *   V of type F16 (v_trans): transposed, (layer, seq, kv_dim) columns of n_ctx fp16 values, v_row = n_ctx * 2
     *      bytes each (the reference's layout without flash attention);
     *   V of any other type: (layer, seq, pos) rows of kv_dim values in type_v, v_row bytes each (the layout of
     *      the reference's flash-attention path: a quantized row cannot be written one value at a time). */
    char *k_cache;
    char *v_cache;
    int type_k, type_v, v_trans;
    size_t k_row, v_row;
    void *kvq;                   /* (n_threads, kvq_bytes) a query head quantized for K's vec_dot type */
    size_t kvq_bytes;
    float *vtmp;                 /* (n_threads, kv_dim) a dequantized V row or K row */

    float *x;                    /* (n_batch, n_embd) residual stream */
    float *xn;                   /* (n_batch, n_embd) normed input of a matmul */
    float *q;                    /* (n_batch, q_dim) */
    float *kbuf, *vbuf;          /* (n_batch, kv_dim) before they go to the cache */
    float *att;                  /* (n_batch, q_dim) attention output */
    float *ffa, *ffb;            /* (n_batch, n_ff) gate then silu(gate)*up; up */
    float *rope;                 /* (n_batch, head_dim) cos, sin interleaved */
    float *rope_swa;             /* (n_batch, head_dim) the same for the local layers when has_swa_rope */
    void *qbuf[LP_TYPE_COUNT];   /* (n_batch, row_size(type, max_dim)) activations for each vec_dot type: */
    void *qbuf2[LP_TYPE_COUNT];  /* normed inputs in qbuf; attention and SwiGLU outputs in qbuf2 */
    void **tqbuf;                /* (n_threads, LP_TYPE_COUNT) -> (LP_SMALL_BATCH, row bytes): each thread's own */
    float *txn;                  /* (n_threads, LP_SMALL_BATCH, n_embd): each thread's normed activations */
    float *scores;               /* (n_threads, n_ctx) */
    uint16_t *p16;               /* (n_threads, max(n_ctx, head_dim)) */

    /* mixture of experts: the (token, expert) pairs of a step grouped by expert (the shared expert last) */
    int n_groups;                /* n_expert + 1 */
    int *moe_sel;                /* (n_batch, n_expert_used) chosen experts */
    float *moe_w;                /* (n_batch, n_expert_used + 1) their weights; the shared expert's last */
    int *moe_pair;               /* (n_batch, n_expert_used + 1) the pair of each choice */
    int *moe_cnt, *moe_off;      /* (n_groups) pairs of each group, first pair */
    int *moe_tok;                /* (pairs) the token of each pair */
    void *moe_xq[LP_TYPE_COUNT]; /* (pairs, row bytes of n_embd) gathered normed activations */
    void *moe_hq[LP_TYPE_COUNT]; /* (pairs, row bytes of the FFN length) activated, for down */
    float *moe_a, *moe_b;        /* (pairs, ffn length) gate, up */
    float *moe_o;                /* (pairs, n_embd) expert outputs */
    float *trow;                 /* (n_threads, n_embd) a dequantized router row */

    atomic_int *counters;        /* one chunk counter per dynamic phase of a step */
    int n_counters;

    /* the step being evaluated */
    int n_tok, n_out;
    const int32_t *tokens, *pos, *seq, *out_idx;
    float *logits, *hidden;

    double eval_seconds;         /* total wall time inside lp_engine_eval */
    int exact_rows;              /* every row of a batch summed as a one-token step sums it (lp_engine_set_exact_rows) */

    /* LoRA adapters (engine_lora.c): a scale per adapter; the A x products of a phase, shared */
    float *lora_scale;           /* (n_lora_adapters) */
    int n_lora_adapters;
    int lora_max_rank;           /* the largest lora_rank of a weight */
    float *lora_u;               /* (LP_LORA_PER_PHASE, n_batch, lora_max_rank) */
    atomic_int *lora_sync;       /* (LP_LORA_SYNCS): threads done with their part of a phase's A x, 0 each step */

    /* control vectors (engine_cvec.c): NULL, or per layer NULL or the n_embd row added after the layer */
    const float **cvec;
    float *cvec_data;            /* (n_layer, n_embd) the rows, owned */

    char err[256];
};

int lp_engine_fail(lp_engine *e, const char *fmt, ...);
const char *lp_engine_missing_weight(const lp_engine *e);
/* cos/sin of each rotated pair at position pos (scaled by the YaRN magnitude when `magnitude`); `local`:
   the RoPE of the sliding-window layers */
void lp_engine_rope_table(const lp_engine *e, int pos, int magnitude, int local, float *cs);
/* whether layer l attends through the sliding window */
static inline int lp_layer_is_swa(const lp_engine *e, int l) {
    const lp_arch_traits *a = &e->p.arch;
    return a->n_swa > 0 && (a->swa_pattern <= 0 || (l + 1) % a->swa_pattern != 0);
}
/* rotate x (n heads of head_dim values each, laid out head after head) in place by the table cs */
void lp_engine_rope_heads(const lp_engine *e, const float *cs, float *x, int r0, int r1);
void lp_engine_matmul_init(lp_engine_matmul *m, int level);   /* the fast paths kernel level `level` has */

/* LoRA in the step (engine_lora.c). A phase with adapted weights ws (n <= LP_LORA_PER_PHASE, same input x:
   n_tok rows, stride x_stride) calls lp_lora_down on every thread: u = A x for each pair of non-zero scale,
   the rows split between the nth threads into the shared buffers (weight i's in buffer i), the thread's
   part announced on sync point `sync` (< LP_LORA_SYNCS, one per phase of the step). Before its first
   lp_lora_up (out rows [r0, r1) += scale * B u) a thread waits for the others' parts (lp_lora_wait), which
   they have finished by then as a rule: the wait hides behind the thread's first chunk of the product. */
#define LP_LORA_PER_PHASE 3
#define LP_LORA_SYNCS(n_layer) (4 * (n_layer) + 1)   /* per layer: q/k/v, o, gate/up, down; then the output */
int lp_lora_active(const lp_engine *e, const lp_weight *w);
void lp_lora_down(lp_engine *e, const lp_weight *const *ws, int n, const float *x, int x_stride, int n_tok, int ith,
                  int nth, int sync);
void lp_lora_wait(lp_engine *e, int sync, int nth);
const float *lp_lora_u(const lp_engine *e, int which);
void lp_lora_up(const lp_engine *e, const lp_weight *w, const float *u, int n_tok, int r0, int r1, float *out,
                int out_stride);
void lp_lora_reset(lp_engine *e);   /* at the start of a step */
void lp_lora_free(lp_engine *e);
void lp_cvec_add(lp_engine *e, int l, int ith, int nth);   /* engine_cvec.c */
void lp_cvec_free(lp_engine *e);

/* the cached K row of position pos (k_row bytes), any type */
static inline char *lp_k_row(const lp_engine *e, int l, int s, int pos) {
    return e->k_cache + (((size_t)l * e->p.n_seq + s) * e->p.n_ctx + pos) * e->k_row;
}
/* the cached V row of position pos (v_row bytes) when !v_trans */
static inline char *lp_v_row(const lp_engine *e, int l, int s, int pos) {
    return e->v_cache + (((size_t)l * e->p.n_seq + s) * e->p.n_ctx + pos) * e->v_row;
}
/* the cached V column of value index d (n_ctx fp16 values) when v_trans */
static inline char *lp_v_col(const lp_engine *e, int l, int s, int d) {
    return e->v_cache + (((size_t)l * e->p.n_seq + s) * e->kv_dim + d) * e->v_row;
}
/* F16 views: K when type_k is F16, V (transposed) when v_trans */
static inline uint16_t *lp_k_at(const lp_engine *e, int l, int s, int pos) { return (uint16_t *)lp_k_row(e, l, s, pos); }
static inline uint16_t *lp_v_at(const lp_engine *e, int l, int s, int d) { return (uint16_t *)lp_v_col(e, l, s, d); }

#endif
