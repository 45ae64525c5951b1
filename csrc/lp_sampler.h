/* The sampler's state, shared by the chain (sampler.c) and its DRY step (sampler_dry.c): internal. */
#ifndef LP_SAMPLER_H
#define LP_SAMPLER_H

#include <stdint.h>

#include "llamapy.h"

#define MT_N 624
#define MT_M 397

typedef struct {
    uint32_t v[MT_N];
    int i;
} mt19937;

struct lp_sampler {
    mt19937 rng, xtc_rng;           /* the draw's, XTC's */
    float mu;
    int32_t n_vocab;
    int32_t *id, *tmp_id, *order;   /* (n_vocab) candidate ids, scratch, sort order */
    float *logit, *p, *work;        /* (n_vocab) */
    int32_t *count;                 /* (n_vocab) penalty counts, zeroed after use */
    /* DRY */
    int32_t *dry_max;               /* (n_vocab) longest repeat a token would extend, -1: none */
    int32_t *dry_touched, *dry_rep; /* (dry_cap) tokens with dry_max set; repeat counts */
    int32_t dry_cap;
    int32_t *brk, n_brk;            /* breakers: [len, ids...]..., sorted by head */
    int32_t *brk_start, *brk_count; /* (n_vocab) a head's first breaker (offset into brk) and how many */
    uint8_t *brk_single;            /* (n_vocab) the token alone is a breaker */
};

/* the candidates of one sampling step: s's id/logit/p arrays, n of them, sorted by logit or not */
typedef struct {
    lp_sampler *s;
    int n, sorted;
} cands;

/* the history a step looks back on: its last last_n (-1: all) of hist; *h moves to its start */
static inline int lp_sampler_window(const int32_t **h, int n_hist, int32_t last_n) {
    if (last_n >= 0 && n_hist > last_n) {
        *h += n_hist - last_n;
        return last_n;
    }
    return n_hist;
}

/* DRY (sampler_dry.c): penalise tokens that would extend a repeat of the history; full: lg holds every token's
 * logit, else the candidates'. -1 when memory runs out. */
int lp_sampler_dry(cands *c, float *lg, int full, const int32_t *hist, int n_hist, const lp_sampler_params *p);

#endif
