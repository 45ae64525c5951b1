/* AVX2+FMA+F16C versions of the F32/F16/BF16 kernels (filled in by the float kernels' owner). */
#include "lp_core.h"

void lp_register_float_avx2(lp_type_traits *t) { (void)t; }
