/* llamapy's public C API: the one header Python binds to.
 *
 * Everything between the LP_API markers is also the cffi cdef (llamapy/_build.py reads it from here), so
 * it holds plain C types only: no includes, macros or internal structs there. The internals (kernel table,
 * engine state, thread pool, block layouts) are in the lp_*.h headers, which only the C files include.
 */
#ifndef LLAMAPY_H
#define LLAMAPY_H

#include <stddef.h>
#include <stdint.h>

/* LP_API_BEGIN */
/* ---- tensor types and kernels (dispatch.c) ---- */

/* Tensor types: the same ids as GGML / GGUF. */
enum lp_type {
    LP_TYPE_F32 = 0,
    LP_TYPE_F16 = 1,
    LP_TYPE_Q4_0 = 2,
    LP_TYPE_Q4_1 = 3,
    LP_TYPE_Q5_0 = 6,
    LP_TYPE_Q5_1 = 7,
    LP_TYPE_Q8_0 = 8,
    LP_TYPE_Q8_1 = 9,
    LP_TYPE_Q2_K = 10,
    LP_TYPE_Q3_K = 11,
    LP_TYPE_Q4_K = 12,
    LP_TYPE_Q5_K = 13,
    LP_TYPE_Q6_K = 14,
    LP_TYPE_Q8_K = 15,
    LP_TYPE_IQ4_NL = 20,
    LP_TYPE_BF16 = 30,
    LP_TYPE_COUNT = 40
};

/* Kernel levels: LP_KERNELS_SCALAR always works; the others only where the CPU has them. */
enum lp_kernels { LP_KERNELS_SCALAR = 0, LP_KERNELS_AVX2 = 1, LP_KERNELS_NEON = 2 };

int lp_cpu_has_avx2(void);          /* AVX2 + FMA + F16C all present */
int lp_cpu_has_neon(void);
int lp_kernels_best(void);          /* the best level this CPU runs */
int lp_kernels_active(void);        /* the level in use */
int lp_kernels_set(int level);      /* 0 on success, -1 if this CPU can't run that level; any thread, any time */
const char *lp_kernels_name(int level);

/* Per-type facts and row kernels; all return 0 on success, -1 for a type without that kernel. */
int lp_type_supported(int type);
int64_t lp_blck_size(int type);
int64_t lp_type_size(int type);
int64_t lp_row_size(int type, int64_t n);          /* bytes of a row of n values; -1 if n % blck */
int lp_vec_dot_type(int type);                      /* the activation type `type` is dotted with */
int lp_quantize_row_ref(int type, const float *x, void *y, int64_t n);   /* scalar, byte-exact */
int lp_quantize_row(int type, const float *x, void *y, int64_t n);       /* active kernels */
int lp_dequantize_row(int type, const void *x, float *y, int64_t n);     /* active kernels */
int lp_vec_dot(int type, int64_t n, const void *x, const void *y, float *s); /* y: vec_dot_type */
/* s[j] = dot(x, row j of y) for j < nrc, y rows y_stride bytes apart (the vec_dot_type of `type`):
 * the multi-row kernel where the type has one, else one vec_dot per row. -1 for a type without vec_dot. */
int lp_vec_dot_rows(int type, int64_t n, int nrc, const void *x, const void *y, int64_t y_stride, float *s);

/* ---- the inference engine (engine*.c) ----
 *
 * One C call per forward step of a decoder model: llama, or a relative described by lp_arch_traits.
 * Python maps the GGUF, fills an lp_engine_params, creates the engine once (KV cache, scratch buffers, thread pool), hands it a pointer
 * to every weight, then calls lp_engine_eval() once per batch of tokens. The batch may mix sequences at
 * different positions; each sequence owns n_ctx KV positions and a token at position p attends to
 * positions 0..p of its own sequence. The KV cache is stored in the types type_k / type_v (F16 by
 * default; see lp_engine.h for the layout of each). lp_engine_kv_bytes() is its size. An engine runs the kernels that were active when it was created (lp_kernels_set
 * changes only engines created after it). */
typedef struct lp_engine lp_engine;

/* What sets one architecture's step apart from llama's (all zero: llama). The optional per-layer weights
 * (biases, q/k norms, post-attention / post-FFN norms) are used when their slot is set. */
typedef struct {
    int32_t rope_neox;        /* RoPE rotates the pairs (i, i + head_dim/2) of a head, not (2i, 2i+1) */
    int32_t act_gelu;         /* FFN: gelu_tanh(gate) * up instead of silu(gate) * up */
    float embd_scale;         /* token embeddings times this (0 -> 1) */
    float attn_softcap;       /* q.k scores -> cap * tanh(scores / cap) after scaling (0: none) */
    float final_softcap;      /* the same for the logits */
    int32_t n_swa;            /* sliding window: a local layer's token at p sees positions > p - n_swa (0: none) */
    int32_t swa_pattern;      /* layer l is global when (l + 1) % swa_pattern == 0, else local (0: all local) */
    float rope_freq_base_swa; /* > 0: the local layers rotate with this base, scale 1, no YaRN (else as the others) */
    /* mixture of experts (n_expert > 0): the FFN is the n_expert_used experts of highest router softmax,
     * weighted by those probabilities (renormalized to sum 1 when expert_weights_norm), plus, when its
     * weights are set, a shared expert weighted by sigmoid(ffn_gate_inp_shexp . x) */
    int32_t n_expert, n_expert_used, expert_weights_norm;
    int32_t n_ff_exp, n_ff_shexp;   /* FFN length of each expert and of the shared one */
} lp_arch_traits;

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
    lp_arch_traits arch;
    /* KV cache types (LP_TYPE_*): F32, F16, BF16, Q8_0, Q4_0, Q4_1, IQ4_NL, Q5_0, Q5_1; a block type needs
     * head_dim to be a multiple of its block size */
    int32_t type_k, type_v;
} lp_engine_params;

/* Weight slots; "layer" is ignored for the global ones. */
enum lp_weight_kind {
    LP_W_TOKEN_EMBD = 0, LP_W_OUTPUT_NORM = 1, LP_W_OUTPUT = 2, LP_W_ROPE_FREQS = 3,
    LP_W_ATTN_NORM = 10, LP_W_Q = 11, LP_W_K = 12, LP_W_V = 13, LP_W_O = 14,
    LP_W_Q_B = 15, LP_W_K_B = 16, LP_W_V_B = 17, LP_W_O_B = 18,
    LP_W_FFN_NORM = 20, LP_W_GATE = 21, LP_W_UP = 22, LP_W_DOWN = 23,
    LP_W_GATE_B = 24, LP_W_UP_B = 25, LP_W_DOWN_B = 26,
    LP_W_Q_NORM = 30, LP_W_K_NORM = 31, LP_W_POST_ATTN_NORM = 32, LP_W_POST_FFN_NORM = 33,
    /* experts: ne1 = rows of one expert x n_expert (the GGUF's 3-d tensors, experts one after the other) */
    LP_W_GATE_INP = 40, LP_W_GATE_EXPS = 41, LP_W_UP_EXPS = 42, LP_W_DOWN_EXPS = 43,
    LP_W_GATE_INP_SHEXP = 44, LP_W_GATE_SHEXP = 45, LP_W_UP_SHEXP = 46, LP_W_DOWN_SHEXP = 47
};

lp_engine *lp_engine_new(const lp_engine_params *p);   /* NULL when out of memory or params invalid */
void lp_engine_free(lp_engine *e);
const char *lp_engine_error(const lp_engine *e);      /* message of the last failed call */
int lp_engine_n_threads(const lp_engine *e);
double lp_engine_eval_seconds(const lp_engine *e);   /* wall time spent inside lp_engine_eval so far */
/* on: every row of a batch gets the logits a one-token step would give it (attention summed in the one-token
 * order), so a batch can verify a speculative draft exactly; off (the default): the reference's batch order */
void lp_engine_set_exact_rows(lp_engine *e, int on);
int64_t lp_engine_kv_bytes(const lp_engine *e);
/* bytes of one cached K row (one position, all KV heads) and of one V row (a position's row when V is not
 * F16) or V column (one value index over n_ctx positions when V is F16) */
int64_t lp_engine_kv_row_bytes(const lp_engine *e, int32_t is_v);

/* Point a slot at weight data (not copied; must outlive the engine). ne0 = row length, ne1 = rows
 * (1 for vectors). Returns 0, or -1 for a slot, type or shape that does not fit (see lp_engine_error). */
int lp_engine_set_weight(lp_engine *e, int kind, int layer, const void *data, int type, int64_t ne0, int64_t ne1);

/* LoRA: add the pair (a: rank rows of ne0 values; b: B, ne1 rows of rank values, packed in blocks of 8 rows,
 * each block the rank columns of its 8 rows one after the other (rows padded to a multiple of 8); both of
 * `type` F32 or F16; not copied, must outlive the engine) of adapter number `adapter` (rank at most 256) to the
 * weight in slot (kind, layer) (q, k, v, o, gate, up, down or output): the step adds
 * scale(adapter) * mult * B (a x) to its product. Scales start at 0. */
int lp_engine_lora_add(lp_engine *e, int kind, int layer, int adapter, const void *a, const void *b, int rank,
                       int type, float mult);
int lp_engine_lora_scale(lp_engine *e, int adapter, float scale);

/* Control vector: after layer `layer` (0-based), the step adds the n_embd floats of data (copied) to every
 * token's residual stream; data NULL removes it. Returns 0, or -1 for a layer outside the model. */
int lp_engine_set_cvec(lp_engine *e, int layer, const float *data);

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
/* The KV state of positions [0, n) of a sequence as bytes, out to a caller's buffer and back in (for saved
 * states). The layout is the engine's own: per layer, K rows then V, in the cache's types (kv_type_k/v,
 * lp_type ids; today F16). size must be lp_engine_kv_state_size(e, n) (-1 for n outside [0, n_ctx]).
 * Returns 0, or -1 with lp_engine_error() set (nothing copied). */
int32_t lp_engine_kv_type_k(const lp_engine *e);
int32_t lp_engine_kv_type_v(const lp_engine *e);
int64_t lp_engine_kv_state_size(const lp_engine *e, int32_t n);
int lp_engine_kv_state_get(lp_engine *e, int32_t seq, int32_t n, void *buf, int64_t size);
int lp_engine_kv_state_set(lp_engine *e, int32_t seq, int32_t n, const void *buf, int64_t size);

/* The engine's matrix product with the active kernels, for tests and benchmarks: x (nc, n) float
 * activations are quantized as the engine quantizes them, then out[c * nr + r] = dot(row r of w, x_c).
 * Returns 0, or -1 for a type without kernels or n not a multiple of its blocks. */
int lp_matmul(int type, int64_t n, int64_t nr, int64_t nc, const void *w, const float *x, float *out);
/* x (n floats) quantized to the activation type `type` as the engine does it (active kernels). */
int lp_quantize_activations(int type, const float *x, void *y, int64_t n);

/* ---- the sampler chain (sampler.c): the reference's, as llamapy/sampling.py spells it out ---- */
typedef struct lp_sampler lp_sampler;
/* The steps a chain may run, in any order (the reference's --samplers). */
enum lp_sampler_kind {
    LP_SAMPLER_PENALTIES = 0, LP_SAMPLER_DRY = 1, LP_SAMPLER_TOP_K = 2, LP_SAMPLER_TYPICAL_P = 3,
    LP_SAMPLER_TOP_P = 4, LP_SAMPLER_MIN_P = 5, LP_SAMPLER_XTC = 6, LP_SAMPLER_TEMPERATURE = 7
};
typedef struct {
    float temp;
    int32_t top_k;
    float top_p, min_p, typical_p;
    float repeat_penalty;
    int32_t repeat_last_n;              /* -1: the whole history given */
    float presence_penalty, frequency_penalty;
    int32_t mirostat;
    float mirostat_tau, mirostat_eta;
    int32_t min_keep;
    float dry_multiplier, dry_base;
    int32_t dry_allowed_length, dry_penalty_last_n;   /* last_n -1: the whole history given */
    float xtc_probability, xtc_threshold;
    float dynatemp_range, dynatemp_exponent;
    float top_n_sigma;                  /* >= 0: the chain is top-k -> temperature -> top-n-sigma */
    int32_t n_samplers;                 /* the steps of the chain (mirostat 0, no top-n-sigma), in order */
    int32_t samplers[16];
} lp_sampler_params;
lp_sampler *lp_sampler_new(uint32_t seed, int32_t n_vocab);
void lp_sampler_free(lp_sampler *s);
/* The generators (the draw's and XTC's, both from seed) start over; mirostat's mu is set. */
void lp_sampler_reset(lp_sampler *s, uint32_t seed, float mu);
float lp_sampler_mu(const lp_sampler *s);
/* DRY's sequence breakers as token sequences in text order: seqs holds, one after another, a length n >= 1
 * and n token ids. Replaces any set before. 0, or -1 when out of memory or the layout is bad. */
int lp_sampler_set_dry_breakers(lp_sampler *s, const int32_t *seqs, int32_t n_ints);
/* The next token from logits (n_vocab): bias (n_bias id/value pairs) first, then the chain; penalties and
 * DRY look back on hist (n_hist ids, oldest first; each takes its own last_n of them). The final
 * candidates, most likely first, go to cand_ids / cand_p (up to max_cand; either may be NULL) and their
 * count to *n_cand. */
int32_t lp_sampler_sample(lp_sampler *s, const lp_sampler_params *p, const float *logits, const int32_t *bias_ids,
                          const float *bias, int32_t n_bias, const int32_t *hist, int32_t n_hist, int32_t max_cand,
                          int32_t *cand_ids, float *cand_p, int32_t *n_cand);

/* The indices of the k largest of x[0..n), largest first, equal values in index order (the sampler's
 * top-k without sorting the whole vocabulary). Returns how many were written: min(k, n). */
int lp_top_k(const float *x, int64_t n, int32_t k, int32_t *idx);

/* ---- GGUF metadata (gguf_strings.c): a vocabulary is 10^5 length-prefixed strings, too many for a
 * Python loop at every start ---- */

/* Walk n GGUF strings (a little-endian u64 length, then the bytes) starting at buf[pos], within size bytes.
 * out NULL: returns the offset just past them and sets *total to their bytes, or -1 if a length runs
 * past size. With out (cap bytes, *total + n needed): also copies each string followed by a 0 byte; returns
 * -1 if they don't fit, -2 if a string holds a 0 byte itself (the caller then splits them its own way). */
int64_t lp_gguf_strings(const uint8_t *buf, uint64_t size, uint64_t pos, uint64_t n, uint8_t *out, uint64_t cap,
                        uint64_t *total);

/* ---- machine measurements for the benchmarks (bandwidth.c) ---- */

/* Read bandwidth in GB/s: n_threads threads each stream over their own `bytes` (first touched by that thread)
 * at the same time, best of `reps` passes; the roofline decode is measured against. -1 on failure. */
double lp_read_bandwidth(int n_threads, size_t bytes, int reps);
/* LP_API_END */

#endif
