/* The sampler chain in C: the same steps, in the same order and arithmetic, as llamapy/sampling.py
 * (which mirrors the reference and is the readable version the tests hold this one to). It exists so a
 * generated token costs one C call to sample instead of a few dozen numpy operations on cold caches.
 *
 * Chain (mirostat 0): logit bias -> the steps in the order asked (by default penalties -> DRY -> top-k ->
 * typical -> top-p -> min-p -> XTC -> temperature, dynamic or not) -> softmax -> draw. With top-n-sigma:
 * logit bias -> top-k -> temperature -> top-n-sigma -> draw. Mirostat 1/2: logit bias -> temperature ->
 * softmax -> mirostat -> draw.
 * The draw: std::mt19937 and libstdc++'s std::discrete_distribution (generate_canonical<double, 53>
 * from two 32-bit draws, lower_bound on the normalised cumulative sums; nothing drawn for one weight).
 * XTC has a std::mt19937 of its own, seeded alike, and draws std::uniform_real_distribution<float>(0, 1)
 * (generate_canonical<float, 24>: one 32-bit draw) each time it runs on two or more candidates.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

#include "llamapy.h"
#include "lp_sampler.h"

/* ---- std::mt19937 ---------------------------------------------------------------------------- */

static void mt_seed(mt19937 *m, uint32_t seed) {
    m->v[0] = seed;
    for (int i = 1; i < MT_N; i++) m->v[i] = 1812433253u * (m->v[i - 1] ^ (m->v[i - 1] >> 30)) + (uint32_t)i;
    m->i = MT_N;
}

static uint32_t mt_next(mt19937 *m) {
    if (m->i >= MT_N) {
        for (int i = 0; i < MT_N; i++) {
            uint32_t y = (m->v[i] & 0x80000000u) | (m->v[(i + 1) % MT_N] & 0x7fffffffu);
            m->v[i] = m->v[(i + MT_M) % MT_N] ^ (y >> 1) ^ ((y & 1u) ? 0x9908b0dfu : 0u);
        }
        m->i = 0;
    }
    uint32_t y = m->v[m->i++];
    y ^= y >> 11;
    y ^= (y << 7) & 0x9d2c5680u;
    y ^= (y << 15) & 0xefc60000u;
    y ^= y >> 18;
    return y;
}

/* libstdc++ uniform_real_distribution<float>(0, 1) */
static float uniform_float(mt19937 *m) {
    float u = (float)mt_next(m) / 4294967296.0f;
    return u >= 1.0f ? nextafterf(1.0f, 0.0f) : u;
}

/* libstdc++ discrete_distribution over p[0..n) */
static int draw(mt19937 *m, const float *p, int n) {
    if (n < 2) return 0;
    double sum = 0;
    for (int i = 0; i < n; i++) sum += (double)p[i];
    double lo = (double)mt_next(m), hi = (double)mt_next(m);
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

/* The candidates start as the whole vocabulary in order with its logits in `lg` (c->full); the steps that
 * only change some logits (penalties, DRY) work there, top-k picks from there, and any other step first
 * copies them to the candidate arrays (materialize). */
static void materialize(cands *c, const float *lg) {
    lp_sampler *s = c->s;
    for (int i = 0; i < s->n_vocab; i++) s->id[i] = i, s->logit[i] = lg[i];
    c->n = s->n_vocab;
    c->sorted = 0;
}

/* the candidates: the top k of every token's logits lg, sorted (k <= 0 or >= n_vocab: all of them) */
static void top_k_from(cands *c, const float *lg, int32_t k) {
    lp_sampler *s = c->s;
    if (k > 0 && k < s->n_vocab) {
        c->n = lp_top_k(lg, s->n_vocab, k, s->id);
        for (int i = 0; i < c->n; i++) s->logit[i] = lg[s->id[i]];
        c->sorted = 1;
    } else {
        materialize(c, lg);
        sort_cands(c);
    }
}

/* full: lg holds every token's logit (candidate i is token i); else the candidates */
static void penalties(cands *c, float *lg, int full, const int32_t *hist, int n_hist, const lp_sampler_params *p) {
    if (p->repeat_last_n == 0 || (p->repeat_penalty == 1.0f && p->frequency_penalty == 0.0f && p->presence_penalty == 0.0f))
        return;
    lp_sampler *s = c->s;
    c->sorted = 0;
    const int32_t *h = hist;
    const int nh = lp_sampler_window(&h, n_hist, p->repeat_last_n);
    for (int i = 0; i < nh; i++)
        if (h[i] >= 0 && h[i] < s->n_vocab) s->count[h[i]]++;
    if (full) {
        for (int i = 0; i < nh; i++) {
            int t = h[i];
            if (t < 0 || t >= s->n_vocab || s->count[t] == 0) continue;
            float l = lg[t];
            l = l <= 0 ? l * p->repeat_penalty : l / p->repeat_penalty;
            lg[t] = l - ((float)s->count[t] * p->frequency_penalty + p->presence_penalty);
            s->count[t] = 0;   /* each token once */
        }
        return;
    }
    for (int i = 0; i < c->n; i++) {
        int k = s->count[s->id[i]];
        if (k == 0) continue;
        float l = s->logit[i];
        l = l <= 0 ? l * p->repeat_penalty : l / p->repeat_penalty;
        s->logit[i] = l - ((float)k * p->frequency_penalty + p->presence_penalty);
    }
    for (int i = 0; i < nh; i++)
        if (h[i] >= 0 && h[i] < s->n_vocab) s->count[h[i]] = 0;
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

/* the reference's temp-ext: with range > 0 the temperature follows the candidates' normalised entropy */
static void temperature_ext(cands *c, float temp, float range, float exponent) {
    if (range <= 0.0f) {
        temperature(c, temp);
        return;
    }
    if (c->n <= 1) return;
    const float min_temp = temp - range > 0.0f ? temp - range : 0.0f, max_temp = temp + range;
    const float max_entropy = -logf(1.0f / (float)c->n);
    softmax(c);
    lp_sampler *s = c->s;
    float entropy = 0.0f;
    for (int i = 0; i < c->n; i++)
        if (s->p[i] > 0.0f) entropy -= s->p[i] * logf(s->p[i]);
    const float norm = entropy / max_entropy;
    temperature(c, min_temp + (max_temp - min_temp) * powf(norm, exponent));
    /* (the reference then recomputes the probabilities; every later step recomputes them again) */
}

/* XTC: with probability xtc_probability, drop every candidate but the least likely of those at or above
 * the threshold */
static void xtc(cands *c, const lp_sampler_params *p) {
    if (p->xtc_probability <= 0.0f || p->xtc_threshold > 0.5f || c->n < 2) return;
    lp_sampler *s = c->s;
    if (uniform_float(&s->xtc_rng) > p->xtc_probability) return;
    softmax(c);
    int last = 0;
    for (int i = 0; i < c->n && s->p[i] >= p->xtc_threshold; i++) last = i;
    if (c->n - last >= (p->min_keep > 0 ? p->min_keep : 0) && last > 0) {
        memmove(s->id, s->id + last, (size_t)(c->n - last) * sizeof(int32_t));
        memmove(s->logit, s->logit + last, (size_t)(c->n - last) * sizeof(float));
        memmove(s->p, s->p + last, (size_t)(c->n - last) * sizeof(float));
        c->n -= last;
    }
}

static void top_n_sigma(cands *c, float nsig) {
    lp_sampler *s = c->s;
    float mx = s->logit[0], sum = 0.0f;
    for (int i = 0; i < c->n; i++) {
        if (s->logit[i] > mx) mx = s->logit[i];
        sum += s->logit[i];
    }
    const float mean = sum / (float)c->n;
    float acc = 0.0f;
    for (int i = 0; i < c->n; i++) {
        double d = (double)(s->logit[i] - mean);
        acc = (float)((double)acc + d * d);
    }
    const float sd = sqrtf(acc / (float)c->n), lim = mx - nsig * sd;
    for (int i = 0; i < c->n; i++)
        if (s->logit[i] < lim) s->logit[i] = -INFINITY;
    softmax(c);
}

/* top-k of candidates that are no longer the whole vocabulary */
static void top_k_cands(cands *c, int k) {
    if (k <= 0 || k > c->n) k = c->n;
    if (c->sorted) {
        truncate_to(c, k);
        return;
    }
    if (k == c->n) {
        sort_cands(c);
        return;
    }
    lp_sampler *s = c->s;
    int32_t *idx = s->order;
    int m = lp_top_k(s->logit, c->n, k, idx);
    for (int i = 0; i < m; i++) s->work[i] = s->logit[idx[i]], s->tmp_id[i] = s->id[idx[i]];
    memcpy(s->logit, s->work, (size_t)m * sizeof(float));
    memcpy(s->id, s->tmp_id, (size_t)m * sizeof(int32_t));
    c->n = m;
    c->sorted = 1;
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
    s->dry_max = malloc(n * sizeof(int32_t));
    if (!s->id || !s->tmp_id || !s->order || !s->logit || !s->p || !s->work || !s->count || !s->dry_max) {
        lp_sampler_free(s);
        return NULL;
    }
    for (size_t i = 0; i < n; i++) s->dry_max[i] = -1;
    lp_sampler_reset(s, seed, 0.0f);
    return s;
}

void lp_sampler_free(lp_sampler *s) {
    if (!s) return;
    free(s->id), free(s->tmp_id), free(s->order), free(s->logit), free(s->p), free(s->work), free(s->count);
    free(s->dry_max), free(s->dry_touched), free(s->dry_rep);
    free(s->brk), free(s->brk_start), free(s->brk_count), free(s->brk_single);
    free(s);
}

void lp_sampler_reset(lp_sampler *s, uint32_t seed, float mu) {
    mt_seed(&s->rng, seed);
    mt_seed(&s->xtc_rng, seed);
    s->mu = mu;
}

float lp_sampler_mu(const lp_sampler *s) { return s->mu; }

int32_t lp_sampler_sample(lp_sampler *s, const lp_sampler_params *p, const float *logits, const int32_t *bias_ids,
                          const float *bias, int32_t n_bias, const int32_t *hist, int32_t n_hist, int32_t max_cand,
                          int32_t *cand_ids, float *cand_p, int32_t *n_cand) {
    const int n = s->n_vocab;
    float *w = s->p;   /* scratch while the candidates are the whole vocabulary: their adjusted logits */
    const float *lg = logits;
    if (n_bias > 0) {
        memcpy(w, logits, (size_t)n * sizeof(float));
        for (int i = 0; i < n_bias; i++)
            if (bias_ids[i] >= 0 && bias_ids[i] < n) w[bias_ids[i]] += bias[i];
        lg = w;
    }
    cands c = {s, n, 0};
    int full = 1;
    if (p->mirostat == 0 && p->top_n_sigma >= 0.0f) {
        full = 0;
        top_k_from(&c, lg, p->top_k);
        temperature(&c, p->temp);
        top_n_sigma(&c, p->top_n_sigma);
    } else if (p->mirostat == 0) {
        for (int k = 0; k < p->n_samplers && k < 16; k++) {
            const int kind = p->samplers[k];
            if (kind == LP_SAMPLER_PENALTIES || kind == LP_SAMPLER_DRY) {
                if (full && lg != w) {
                    memcpy(w, logits, (size_t)n * sizeof(float));
                    lg = w;
                }
                if (kind == LP_SAMPLER_PENALTIES) penalties(&c, w, full, hist, n_hist, p);
                else if (lp_sampler_dry(&c, w, full, hist, n_hist, p) < 0) return -1;
                continue;
            }
            if (kind == LP_SAMPLER_TOP_K && full) {
                full = 0;
                top_k_from(&c, lg, p->top_k);
                continue;
            }
            if (full) materialize(&c, lg), full = 0;
            switch (kind) {
            case LP_SAMPLER_TOP_K: top_k_cands(&c, p->top_k); break;
            case LP_SAMPLER_TYPICAL_P: typical(&c, p->typical_p, p->min_keep); break;
            case LP_SAMPLER_TOP_P: top_p(&c, p->top_p, p->min_keep); break;
            case LP_SAMPLER_MIN_P: min_p(&c, p->min_p, p->min_keep); break;
            case LP_SAMPLER_XTC: xtc(&c, p); break;
            case LP_SAMPLER_TEMPERATURE: temperature_ext(&c, p->temp, p->dynatemp_range, p->dynatemp_exponent); break;
            default: return -1;
            }
        }
        if (full) materialize(&c, lg);
    } else {
        materialize(&c, lg);
        temperature(&c, p->temp);
    }
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
    int idx = draw(&s->rng, s->p, c.n);
    if (p->mirostat) s->mu = s->mu - p->mirostat_eta * (-log2f(s->p[idx]) - p->mirostat_tau);
    int m = c.n < max_cand ? c.n : max_cand;
    for (int i = 0; i < m; i++) {
        if (cand_ids) cand_ids[i] = s->id[i];
        if (cand_p) cand_p[i] = s->p[i];
    }
    if (n_cand) *n_cand = m;
    return s->id[idx];
}
