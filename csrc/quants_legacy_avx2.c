/* AVX2 kernels: legacy formats. */
#include "lp_core.h"

void lp_register_legacy_avx2(lp_type_traits *t) { (void)t; }
