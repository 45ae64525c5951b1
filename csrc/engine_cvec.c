/* Control vectors (llama.cpp's --control-vector): a direction per layer added to the residual stream after
 * that layer, x += cvec[l] for every token of the step. The engine keeps its own copy, one n_embd row per
 * layer; a layer without one costs a NULL test. Set between steps. */
#include <stdlib.h>
#include <string.h>

#include "lp_core.h"
#include "lp_engine.h"

int lp_engine_set_cvec(lp_engine *e, int layer, const float *data) {
    const int n = e->p.n_embd;
    if (layer < 0 || layer >= e->p.n_layer) return lp_engine_fail(e, "control vector for layer %d (have %d)", layer, e->p.n_layer);
    if (!data) {
        if (e->cvec) e->cvec[layer] = NULL;
        return 0;
    }
    if (!e->cvec) {
        e->cvec = calloc((size_t)e->p.n_layer, sizeof *e->cvec);
        e->cvec_data = malloc((size_t)e->p.n_layer * n * sizeof(float));
        if (!e->cvec || !e->cvec_data) {
            free(e->cvec), free(e->cvec_data);
            e->cvec = NULL, e->cvec_data = NULL;
            return lp_engine_fail(e, "out of memory for control vectors");
        }
    }
    float *row = e->cvec_data + (size_t)layer * n;
    memcpy(row, data, (size_t)n * sizeof(float));
    e->cvec[layer] = row;
    return 0;
}

void lp_cvec_free(lp_engine *e) {
    free(e->cvec);
    free(e->cvec_data);
    e->cvec = NULL, e->cvec_data = NULL;
}

/* x += cvec[l] for the tokens of thread ith (the caller meets the others at a barrier after) */
void lp_cvec_add(lp_engine *e, int l, int ith, int nth) {
    const float *v = e->cvec[l];
    const int n = e->p.n_embd;
    for (int t = ith; t < e->n_tok; t += nth) {
        float *xt = e->x + (size_t)t * n;
        for (int i = 0; i < n; i++) xt[i] += v[i];
    }
}
