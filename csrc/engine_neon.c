/* NEON versions of the engine's small kernels: none yet, the scalar references run on ARM. */
#include "lp_engine.h"

void lp_engine_kernels_neon(lp_engine_kernels *k) { (void)k; }
