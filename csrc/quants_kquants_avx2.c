/* AVX2 kernels: kquants formats. */
#include "lp_core.h"

void lp_register_kquants_avx2(lp_type_traits *t) { (void)t; }
