/* Machine measurements for the benchmarks. */
#ifndef LP_BENCH_H
#define LP_BENCH_H

#include <stddef.h>

/* LP_API_BEGIN */
/* Read bandwidth in GB/s: n_threads threads each stream over their own `bytes` (first touched by that thread)
 * at the same time, best of `reps` passes; the roofline decode is measured against. -1 on failure. */
double lp_read_bandwidth(int n_threads, size_t bytes, int reps);
/* LP_API_END */

#endif
