/* Scalar reference kernels: legacy formats. */
#include "lp_core.h"

void lp_register_legacy_scalar(lp_type_traits *t) { (void)t; }
