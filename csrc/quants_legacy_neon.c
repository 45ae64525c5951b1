/* NEON kernels: legacy formats. */
#include "lp_core.h"

void lp_register_legacy_neon(lp_type_traits *t) { (void)t; }
