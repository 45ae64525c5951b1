/* Scalar reference kernels: kquants formats. */
#include "lp_core.h"

void lp_register_kquants_scalar(lp_type_traits *t) { (void)t; }
