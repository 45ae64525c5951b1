/* The sampler chain in C: the same steps, in the same order and arithmetic, as llamapy/sampling.py
 * (which mirrors the reference and is the readable version the tests hold this one to). It exists so a
 * generated token costs one C call to sample instead of a few dozen numpy operations on cold caches.
 *
 * Chain (mirostat 0): logit bias -> penalties -> top-k -> typical -> top-p -> min-p -> temperature ->
 * softmax -> draw. Mirostat 1/2: logit bias -> temperature -> softmax -> mirostat -> draw.
 * The draw: std::mt19937 and libstdc++'s std::discrete_distribution (generate_canonical<double, 53>
 * from two 32-bit draws, lower_bound on the normalised cumulative sums; nothing drawn for one weight).
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

#include "llamapy.h"

#define MT_N 624
#define MT_M 397

struct lp_sampler {
    uint32_t mt[MT_N];
    int mti;
    float mu;
    int32_t n_vocab;
    int32_t *id, *tmp_id, *order;   /* (n_vocab) candidate ids, scratch, sort order */
    float *logit, *p, *work;        /* (n_vocab) */
    int32_t *count;                 /* (n_vocab) penalty counts, zeroed after use */
};

/* ---- std::mt19937 ---------------------------------------------------------------------------- */

static void mt_seed(lp_sampler *s, uint32_t seed) {
    s->mt[0] = seed;
    for (int i = 1; i < MT_N; i++) s->mt[i] = 1812433253u * (s->mt[i - 1] ^ (s->mt[i - 1] >> 30)) + (uint32_t)i;
    s->mti = MT_N;
}

static uint32_t mt_next(lp_sampler *s) {
    if (s->mti >= MT_N) {
        for (int i = 0; i < MT_N; i++) {
            uint32_t y = (s->mt[i] & 0x80000000u) | (s->mt[(i + 1) % MT_N] & 0x7fffffffu);
            s->mt[i] = s->mt[(i + MT_M) % MT_N] ^ (y >> 1) ^ ((y & 1u) ? 0x9908b0dfu : 0u);
        }
        s->mti = 0;
    }
    uint32_t y = s->mt[s->mti++];
    y ^= y >> 11;
    y ^= (y << 7) & 0x9d2c5680u;
    y ^= (y << 15) & 0xefc60000u;
    y ^= y >> 18;
    return y;
}

/* libstdc++ discrete_distribution over p[0..n) */
static int draw(lp_sampler *s, const float *p, int n) {
    if (n < 2) return 0;
    double sum = 0;
    for (int i = 0; i < n; i++) sum += (double)p[i];
    double lo = (double)mt_next(s), hi = (double)mt_next(s);
    double u = (lo + hi * 4294967296.0) / 18446744073709551616.0;
    if (u >= 1.0) u = nextafter(1.0, 0.0);
    double cum = 0;
    for (int i = 0; i < n - 1; i++) {
        cum += (double)p[i] / sum;
        if (cum >= u) return i;
    }
    return n - 1;
}

/* ---- candidates ------------------------------------------------------------------------------ */

typedef struct {
    lp_sampler *s;
    int n, sorted;
} cands;

/* stable merge sort of order[0..n) by key[order[i]], descending (desc = 1) or ascending */
static void sort_order(int32_t *order, int32_t *tmp, int n, const float *key, int desc) {
    for (int w = 1; w < n; w *= 2)
        for (int lo = 0; lo < n - w; lo += 2 * w) {
            int mid = lo + w, hi = lo + 2 * w < n ? lo + 2 * w : n, i = lo, j = mid, k = lo;
            while (i < mid && j < hi) {
                float a = key[order[i]], b = key[order[j]];
                int take_right = desc ? (b > a) : (b < a);
                tmp[k++] = take_right ? order[j++] : order[i++];
            }
            while (i < mid) tmp[k++] = order[i++];
            while (j < hi) tmp[k++] = order[j++];
            memcpy(order + lo, tmp + lo, (size_t)(hi - lo) * sizeof(int32_t));
        }
}

static void sort_cands(cands *c) {
    if (c->sorted) return;
    lp_sampler *s = c->s;
    for (int i = 0; i < c->n; i++) s->order[i] = i;
    sort_order(s->order, s->tmp_id, c->n, s->logit, 1);
    for (int i = 0; i < c->n; i++) s->work[i] = s->logit[s->order[i]], s->tmp_id[i] = s->id[s->order[i]];
    memcpy(s->logit, s->work, (size_t)c->n * sizeof(float));
    memcpy(s->id, s->tmp_id, (size_t)c->n * sizeof(int32_t));
    c->sorted = 1;
}

/* p = expf(l - l_max), normalised by their sum in float (in order) */
static void softmax(cands *c) {
    sort_cands(c);
    lp_sampler *s = c->s;
    float total = 0.0f;
    for (int i = 0; i < c->n; i++) {
        float d = s->logit[i] - s->logit[0];
        float e = isnan(d) ? 0.0f : expf(d);
        s->p[i] = e;
        total += e;
    }
    for (int i = 0; i < c->n; i++) s->p[i] = s->p[i] / total;
}

static void truncate_to(cands *c, int m) {
    if (m < c->n) c->n = m;
}

/* ---- top-k ----------------------------------------------------------------------------------- */

/* the first index >= i whose value is > thr (n if none): with AVX2, 8 compared at once. The one AVX2
 * function of this file, so it selects the target itself; it runs only when the AVX2 kernels are active. */
#if defined(__x86_64__) || defined(__i386__)
__attribute__((target("avx2,fma,f16c"))) static int64_t find_above_avx2(const float *x, int64_t i, int64_t n,
                                                                         float thr) {
    const __m256 t = _mm256_set1_ps(thr);
    for (; i + 8 <= n; i += 8) {
        int mask = _mm256_movemask_ps(_mm256_cmp_ps(_mm256_loadu_ps(x + i), t, _CMP_GT_OQ));
        if (mask) return i + __builtin_ctz((unsigned)mask);
    }
    for (; i < n; i++)
        if (x[i] > thr) return i;
    return n;
}
#else
static int64_t find_above_avx2(const float *x, int64_t i, int64_t n, float thr) {   /* never called off x86 */
    for (; i < n; i++)
        if (x[i] > thr) return i;
    return n;
}
#endif

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
                i = find_above_avx2(x, i, n, thr);
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

/* ---- the chain ------------------------------------------------------------------------------- */

static void penalties(lp_sampler *s, float *lg, const int32_t *hist, int n_hist, const lp_sampler_params *p) {
    if (p->repeat_last_n == 0 || n_hist == 0 ||
        (p->repeat_penalty == 1.0f && p->frequency_penalty == 0.0f && p->presence_penalty == 0.0f))
        return;
    const int32_t *h = hist;
    int nh = n_hist;
    if (p->repeat_last_n > 0 && nh > p->repeat_last_n) h += nh - p->repeat_last_n, nh = p->repeat_last_n;
    for (int i = 0; i < nh; i++)
        if (h[i] >= 0 && h[i] < s->n_vocab) s->count[h[i]]++;
    for (int i = 0; i < nh; i++) {
        int t = h[i];
        if (t < 0 || t >= s->n_vocab || s->count[t] == 0) continue;
        float l = lg[t];
        l = l <= 0 ? l * p->repeat_penalty : l / p->repeat_penalty;
        lg[t] = l - ((float)s->count[t] * p->frequency_penalty + p->presence_penalty);
        s->count[t] = 0;   /* each token once */
    }
}

static void typical(cands *c, float typ, int min_keep) {
    if (typ >= 1.0f) return;
    softmax(c);
    lp_sampler *s = c->s;
    float entropy = 0.0f;
    float *logp = s->work;
    for (int i = 0; i < c->n; i++) {
        logp[i] = logf(s->p[i]);
        entropy += -s->p[i] * logp[i];
    }
    float *shifted = s->work + c->n;
    for (int i = 0; i < c->n; i++) shifted[i] = fabsf(-logp[i] - entropy);
    for (int i = 0; i < c->n; i++) s->order[i] = i;
    sort_order(s->order, s->tmp_id, c->n, shifted, 0);
    float cum = 0.0f;
    int last = c->n, first_i = min_keep > 0 ? min_keep - 1 : c->n;
    for (int i = 0; i < c->n; i++) {
        cum += s->p[s->order[i]];
        if (cum > typ && i >= first_i) {
            last = i + 1;
            break;
        }
    }
    /* reorder to the typical order, keeping `last` */
    int32_t *ids = s->tmp_id;
    float *lgs = s->work;
    for (int i = 0; i < last; i++) ids[i] = s->id[s->order[i]], lgs[i] = s->logit[s->order[i]];
    memcpy(s->id, ids, (size_t)last * sizeof(int32_t));
    memcpy(s->logit, lgs, (size_t)last * sizeof(float));
    c->n = last;
    c->sorted = 0;
}

static void top_p(cands *c, float tp, int min_keep) {
    if (tp >= 1.0f) return;
    softmax(c);
    float cum = 0.0f;
    for (int i = 0; i < c->n; i++) {
        cum += c->s->p[i];
        if (cum >= tp && i + 1 >= min_keep) {
            truncate_to(c, i + 1);
            return;
        }
    }
}

static void min_p(cands *c, float mp, int min_keep) {
    if (mp <= 0.0f || c->n == 0) return;
    lp_sampler *s = c->s;
    if (!c->sorted) {
        float mx = s->logit[0];
        for (int i = 1; i < c->n; i++) mx = s->logit[i] > mx ? s->logit[i] : mx;
        const float lim = mx + logf(mp);
        int m = 0;
        for (int i = 0; i < c->n; i++) m += s->logit[i] >= lim;
        if (m >= min_keep) {
            m = 0;
            for (int i = 0; i < c->n; i++)
                if (s->logit[i] >= lim) s->id[m] = s->id[i], s->logit[m] = s->logit[i], m++;
            c->n = m;
            return;
        }
        sort_cands(c);
    }
    const float lim = s->logit[0] + logf(mp);
    int i = 1;
    while (i < c->n && !(s->logit[i] < lim && i >= min_keep)) i++;
    truncate_to(c, i);
}

static void temperature(cands *c, float temp) {
    lp_sampler *s = c->s;
    if (temp <= 0.0f) {
        int best = 0;
        for (int i = 1; i < c->n; i++)
            if (s->logit[i] > s->logit[best]) best = i;
        for (int i = 0; i < c->n; i++)
            if (i != best) s->logit[i] = -INFINITY;
        return;
    }
    for (int i = 0; i < c->n; i++) s->logit[i] = s->logit[i] / temp;
}

lp_sampler *lp_sampler_new(uint32_t seed, int32_t n_vocab) {
    if (n_vocab < 1) return NULL;
    lp_sampler *s = calloc(1, sizeof *s);
    if (!s) return NULL;
    size_t n = (size_t)n_vocab;
    s->n_vocab = n_vocab;
    s->id = malloc(n * sizeof(int32_t));
    s->tmp_id = malloc(n * sizeof(int32_t));
    s->order = malloc(n * sizeof(int32_t));
    s->logit = malloc(n * sizeof(float));
    s->p = malloc(n * sizeof(float));
    s->work = malloc(2 * n * sizeof(float));
    s->count = calloc(n, sizeof(int32_t));
    if (!s->id || !s->tmp_id || !s->order || !s->logit || !s->p || !s->work || !s->count) {
        lp_sampler_free(s);
        return NULL;
    }
    mt_seed(s, seed);
    return s;
}

void lp_sampler_free(lp_sampler *s) {
    if (!s) return;
    free(s->id), free(s->tmp_id), free(s->order), free(s->logit), free(s->p), free(s->work), free(s->count);
    free(s);
}

void lp_sampler_reset(lp_sampler *s, uint32_t seed, float mu) {
    mt_seed(s, seed);
    s->mu = mu;
}

float lp_sampler_mu(const lp_sampler *s) { return s->mu; }

int32_t lp_sampler_sample(lp_sampler *s, const lp_sampler_params *p, const float *logits, const int32_t *bias_ids,
                          const float *bias, int32_t n_bias, const int32_t *hist, int32_t n_hist, int32_t max_cand,
                          int32_t *cand_ids, float *cand_p, int32_t *n_cand) {
    const int n = s->n_vocab;
    const float *lg = logits;
    int penalize = p->mirostat == 0 && p->repeat_last_n != 0 && n_hist > 0 &&
                   (p->repeat_penalty != 1.0f || p->frequency_penalty != 0.0f || p->presence_penalty != 0.0f);
    if (n_bias > 0 || penalize) {
        float *w = s->p;   /* scratch: the adjusted logits */
        memcpy(w, logits, (size_t)n * sizeof(float));
        for (int i = 0; i < n_bias; i++)
            if (bias_ids[i] >= 0 && bias_ids[i] < n) w[bias_ids[i]] += bias[i];
        if (penalize) penalties(s, w, hist, n_hist, p);
        lg = w;
    }
    cands c = {s, 0, 0};
    if (p->mirostat == 0 && p->top_k > 0 && p->top_k < n) {
        c.n = lp_top_k(lg, n, p->top_k, s->id);
        for (int i = 0; i < c.n; i++) s->logit[i] = lg[s->id[i]];
        c.sorted = 1;
    } else {
        for (int i = 0; i < n; i++) s->id[i] = i, s->logit[i] = lg[i];
        c.n = n;
        if (p->mirostat == 0) sort_cands(&c);   /* top-k of everything */
    }
    if (p->mirostat == 0) {
        typical(&c, p->typical_p, p->min_keep);
        top_p(&c, p->top_p, p->min_keep);
        min_p(&c, p->min_p, p->min_keep);
    }
    temperature(&c, p->temp);
    softmax(&c);
    if (p->mirostat == 1) {   /* in float, as the reference */
        int m = c.n - 1 < 99 ? c.n - 1 : 99;
        float tb = 0.0f, tt = 0.0f;
        for (int i = 0; i < m; i++) {
            float t = logf((float)(i + 2) / (float)(i + 1));
            float b = logf(s->p[i] / s->p[i + 1]);
            tb += t * b;
            tt += t * t;
        }
        const float s_hat = tb / tt, eps = s_hat - 1;
        const float k = powf((eps * powf(2, s->mu)) / (1 - powf((float)n, -eps)), 1 / s_hat);
        truncate_to(&c, k >= 1.0f && k < 2147483648.0f ? (int)k : k < 1.0f ? 1 : c.n);
        softmax(&c);
    } else if (p->mirostat == 2) {
        int m = c.n;
        for (int i = 0; i < c.n; i++)
            if (-log2f(s->p[i]) > s->mu) {
                m = i;
                break;
            }
        truncate_to(&c, m < 1 ? 1 : m);
        softmax(&c);
    }
    int idx = draw(s, s->p, c.n);
    if (p->mirostat) s->mu = s->mu - p->mirostat_eta * (-log2f(s->p[idx]) - p->mirostat_tau);
    int m = c.n < max_cand ? c.n : max_cand;
    for (int i = 0; i < m; i++) {
        if (cand_ids) cand_ids[i] = s->id[i];
        if (cand_p) cand_p[i] = s->p[i];
    }
    if (n_cand) *n_cand = m;
    return s->id[idx];
}
