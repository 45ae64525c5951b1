/* DRY ("don't repeat yourself"), the reference's step: a token that would extend a repeat of the history
 * longer than dry_allowed_length gets dry_multiplier * dry_base^(length - allowed) taken off its logit;
 * sequence breakers (tokens, or token sequences) end a repeat. The sampler's arrays hold its scratch. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "lp_sampler.h"

static int dry_grow(lp_sampler *s, int n) {
    if (n <= s->dry_cap) return 0;
    int32_t *t = realloc(s->dry_touched, (size_t)n * sizeof(int32_t));
    if (!t) return -1;
    s->dry_touched = t;
    int32_t *r = realloc(s->dry_rep, (size_t)n * sizeof(int32_t));
    if (!r) return -1;
    s->dry_rep = r;
    s->dry_cap = n;
    return 0;
}

int lp_sampler_set_dry_breakers(lp_sampler *s, const int32_t *seqs, int32_t n_ints) {
    const int nv = s->n_vocab;
    int n_seq = 0;
    for (int i = 0; i < n_ints; i += 1 + seqs[i]) {
        if (seqs[i] < 1 || i + 1 + seqs[i] > n_ints) return -1;
        for (int j = 1; j <= seqs[i]; j++)
            if (seqs[i + j] < 0 || seqs[i + j] >= nv) return -1;
        n_seq++;
    }
    free(s->brk), free(s->brk_start), free(s->brk_count), free(s->brk_single);
    s->brk = NULL, s->brk_start = s->brk_count = NULL, s->brk_single = NULL, s->n_brk = 0;
    if (n_seq == 0) return 0;
    s->brk = malloc((size_t)n_ints * sizeof(int32_t));
    s->brk_start = malloc((size_t)nv * sizeof(int32_t));
    s->brk_count = calloc((size_t)nv, sizeof(int32_t));
    s->brk_single = calloc((size_t)nv, 1);
    if (!s->brk || !s->brk_start || !s->brk_count || !s->brk_single) return -1;
    /* counting sort by head: brk_start[t] = where head t's breakers go */
    for (int i = 0; i < n_ints; i += 1 + seqs[i]) s->brk_count[seqs[i + 1]] += 1 + seqs[i];
    int off = 0;
    for (int t = 0; t < nv; t++) s->brk_start[t] = off, off += s->brk_count[t];
    for (int t = 0; t < nv; t++) s->brk_count[t] = 0;
    for (int i = 0; i < n_ints; i += 1 + seqs[i]) {
        int head = seqs[i + 1], at = s->brk_start[head] + s->brk_count[head];
        memcpy(s->brk + at, seqs + i, (size_t)(1 + seqs[i]) * sizeof(int32_t));
        s->brk_count[head] += 1 + seqs[i];
        if (seqs[i] == 1) s->brk_single[head] = 1;
    }
    for (int t = 0; t < nv; t++) {   /* brk_count: now the number of breakers of the head */
        int m = 0;
        for (int at = s->brk_start[t]; at < s->brk_start[t] + s->brk_count[t]; at += 1 + s->brk[at]) m++;
        s->brk_count[t] = m;
    }
    s->n_brk = n_seq;
    return 0;
}

/* Sets dry_max for the tokens that would extend a repeat of allowed_length or more and returns how many
 * (in dry_touched); -1 when the reference stops before penalizing (too short a history, a breaker too
 * close to the end), -2 when out of memory. The reference's steps, from the end of the history. */
static int dry_scan(lp_sampler *s, const int32_t *hist, int n_hist, const lp_sampler_params *p) {
    const int32_t *h = hist;
    const int n = lp_sampler_window(&h, n_hist, p->dry_penalty_last_n);
#define RAT(i) h[n - 1 - (i)]
    if (n <= p->dry_allowed_length) return -1;
    if (dry_grow(s, n) < 0) return -2;
    /* 1: a sequence breaker limits how far back a repeat may reach */
    int rep_limit = n;
    for (int i = 0; i < n && s->n_brk; i++) {
        int t = RAT(i);
        if (t < 0 || t >= s->n_vocab || s->brk_count[t] == 0) continue;
        int longest = -1;
        for (int k = 0, at = s->brk_start[t]; k < s->brk_count[t]; k++, at += 1 + s->brk[at]) {
            int tail = s->brk[at] - 1;
            if (tail > longest && tail <= i) {
                int match = 1;
                for (int o = 0; o < tail && match; o++) match = s->brk[at + 2 + o] == RAT(i - o - 1);
                if (match) longest = tail;
            }
        }
        if (longest >= 0) {
            rep_limit = i - longest;
            break;
        }
    }
    if (rep_limit < p->dry_allowed_length) return -1;
    /* 2: rep[last - k] = how many tokens before position k from the end repeat the end (Z-algorithm) */
    int32_t *rep = s->dry_rep;
    memset(rep, 0, (size_t)n * sizeof(int32_t));
    const int last = n - 1;
    int rt = 0, lt = 0;
    for (int k = 1; k < n; k++) {
        if (k > rt) {
            int m = 0;
            while (m + k < n && RAT(m) == RAT(m + k)) m++;
            rep[last - k] = m < rep_limit ? m : rep_limit;
            if (m > 0) lt = k, rt = k + m - 1;
        } else {
            int pk = k - lt, right = rt - k + 1;
            if (rep[last - pk] < right) {
                int m = rep[last - pk];
                rep[last - k] = m < rep_limit ? m : rep_limit;
            } else {
                int i = rt + 1;
                while (i < n && RAT(i) == RAT(i - k)) i++;
                int m = i - k;
                rep[last - k] = m < rep_limit ? m : rep_limit;
                lt = k, rt = i - 1;
            }
        }
    }
    /* 3: the token after each repeat would extend it */
    int n_touched = 0;
    for (int i = 0; i < n - 1; i++) {
        int len = rep[i];
        if (len < p->dry_allowed_length) continue;
        int t = RAT(n - 2 - i);
        if (t < 0 || t >= s->n_vocab) continue;
        if (s->dry_max[t] < 0) s->dry_touched[n_touched++] = t;
        if (s->dry_max[t] < len) s->dry_max[t] = len;
    }
#undef RAT
    return n_touched;
}

static float dry_penalty(const lp_sampler_params *p, int len) {
    int max_exponent = 0;
    if (p->dry_base > 1.000001f) max_exponent = (int)(88.7228391f / logf(p->dry_base));
    int e = len - p->dry_allowed_length;
    if (max_exponent > 0 && e > max_exponent) e = max_exponent;
    return (float)((double)p->dry_multiplier * pow((double)p->dry_base, (double)e));
}

int lp_sampler_dry(cands *c, float *lg, int full, const int32_t *hist, int n_hist, const lp_sampler_params *p) {
    if (p->dry_multiplier == 0.0f || p->dry_base < 1.0f || p->dry_penalty_last_n == 0) return 0;
    lp_sampler *s = c->s;
    int m = dry_scan(s, hist, n_hist, p);
    if (m == -2) return -1;
    if (m == -1) return 0;
    c->sorted = 0;   /* as the reference, once it gets to penalizing */
    if (full) {
        for (int k = 0; k < m; k++) {
            int t = s->dry_touched[k];
            if (!s->brk_single || !s->brk_single[t]) lg[t] -= dry_penalty(p, s->dry_max[t]);
        }
    } else {
        for (int i = 0; i < c->n; i++) {
            int t = s->id[i];
            if (s->dry_max[t] >= 0 && !(s->brk_single && s->brk_single[t])) s->logit[i] -= dry_penalty(p, s->dry_max[t]);
        }
    }
    for (int k = 0; k < m; k++) s->dry_max[s->dry_touched[k]] = -1;
    return 0;
}

