/* NEON versions of the F32/F16/BF16 kernels. */
#include "lp_core.h"

void lp_register_float_neon(lp_type_traits *t) { (void)t; }
