/* A persistent thread pool (threadpool.c): the engine's workers. */
#ifndef LP_POOL_H
#define LP_POOL_H

typedef struct lp_pool lp_pool;
typedef void (*lp_task_fn)(void *arg, int ith, int nth);

lp_pool *lp_pool_new(int n_threads);
void lp_pool_free(lp_pool *p);
int lp_pool_size(const lp_pool *p);
/* Run fn(arg, ith, nth) on every thread (the caller is thread 0); returns when all are done. */
void lp_pool_run(lp_pool *p, lp_task_fn fn, void *arg);
/* Wait until every thread of the running task reaches this point. */
void lp_pool_barrier(lp_pool *p);

#endif
