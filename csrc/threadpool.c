/* A persistent thread pool: workers spin briefly for the next task, then sleep on a condition
 * variable, so a forward step starts without a thread launch and an idle engine costs no CPU.
 * Inside a task, threads meet at spinning barriers (yielding when the machine is oversubscribed).
 */
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>

#include "lp_pool.h"

#define SPIN_BEFORE_YIELD 2000   /* pause instructions before sched_yield() in a barrier */
#define SPIN_BEFORE_SLEEP 20000  /* polls of an idle worker before it sleeps */

struct lp_pool {
    int n;                     /* threads, the caller included */
    pthread_t *threads;        /* (n - 1) workers */
    pthread_mutex_t mu;
    pthread_cond_t cv;
    lp_task_fn fn;
    void *arg;
    atomic_int gen;            /* bumped for every task */
    atomic_int n_done;         /* workers done with the current task */
    atomic_int stop;
    atomic_int bar_count;      /* threads waiting at the barrier */
    atomic_int bar_gen;        /* bumped when the barrier opens */
};

typedef struct {
    lp_pool *pool;
    int ith;
} worker_arg;

static inline void cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ volatile("yield");
#endif
}

static void *worker_main(void *p) {
    worker_arg wa = *(worker_arg *)p;
    free(p);
    lp_pool *pool = wa.pool;
    int seen = 0;
    for (;;) {
        int spins = 0;
        while (atomic_load_explicit(&pool->gen, memory_order_acquire) == seen &&
               !atomic_load_explicit(&pool->stop, memory_order_relaxed) && spins < SPIN_BEFORE_SLEEP) {
            cpu_relax();
            spins++;
        }
        if (atomic_load(&pool->gen) == seen && !atomic_load(&pool->stop)) {
            pthread_mutex_lock(&pool->mu);
            while (atomic_load(&pool->gen) == seen && !atomic_load(&pool->stop)) pthread_cond_wait(&pool->cv, &pool->mu);
            pthread_mutex_unlock(&pool->mu);
        }
        if (atomic_load(&pool->stop)) break;
        seen = atomic_load(&pool->gen);
        pool->fn(pool->arg, wa.ith, pool->n);
        atomic_fetch_add_explicit(&pool->n_done, 1, memory_order_release);
    }
    return NULL;
}

lp_pool *lp_pool_new(int n_threads) {
    if (n_threads < 1) n_threads = 1;
    lp_pool *pool = calloc(1, sizeof *pool);
    if (!pool) return NULL;
    pool->n = n_threads;
    pthread_mutex_init(&pool->mu, NULL);
    pthread_cond_init(&pool->cv, NULL);
    pool->threads = calloc((size_t)n_threads, sizeof(pthread_t));
    if (!pool->threads) {
        free(pool);
        return NULL;
    }
    for (int i = 1; i < n_threads; i++) {
        worker_arg *wa = malloc(sizeof *wa);
        if (wa) *wa = (worker_arg){pool, i};
        if (!wa || pthread_create(&pool->threads[i - 1], NULL, worker_main, wa) != 0) {
            free(wa);
            pool->n = i; /* run with the threads that started */
            break;
        }
    }
    return pool;
}

void lp_pool_free(lp_pool *pool) {
    if (!pool) return;
    pthread_mutex_lock(&pool->mu);
    atomic_store(&pool->stop, 1);
    pthread_cond_broadcast(&pool->cv);
    pthread_mutex_unlock(&pool->mu);
    for (int i = 1; i < pool->n; i++) pthread_join(pool->threads[i - 1], NULL);
    pthread_mutex_destroy(&pool->mu);
    pthread_cond_destroy(&pool->cv);
    free(pool->threads);
    free(pool);
}

int lp_pool_size(const lp_pool *pool) { return pool->n; }

void lp_pool_run(lp_pool *pool, lp_task_fn fn, void *arg) {
    if (pool->n == 1) {
        fn(arg, 0, 1);
        return;
    }
    pool->fn = fn;
    pool->arg = arg;
    atomic_store(&pool->n_done, 0);
    atomic_store(&pool->bar_count, 0);
    pthread_mutex_lock(&pool->mu);
    atomic_fetch_add_explicit(&pool->gen, 1, memory_order_release);
    pthread_cond_broadcast(&pool->cv);
    pthread_mutex_unlock(&pool->mu);
    fn(arg, 0, pool->n);
    int spins = 0;
    while (atomic_load_explicit(&pool->n_done, memory_order_acquire) < pool->n - 1) {
        if (++spins < SPIN_BEFORE_YIELD) cpu_relax();
        else sched_yield();
    }
}

void lp_pool_barrier(lp_pool *pool) {
    if (pool->n == 1) return;
    int g = atomic_load_explicit(&pool->bar_gen, memory_order_acquire);
    if (atomic_fetch_add_explicit(&pool->bar_count, 1, memory_order_acq_rel) == pool->n - 1) {
        atomic_store_explicit(&pool->bar_count, 0, memory_order_relaxed);
        atomic_fetch_add_explicit(&pool->bar_gen, 1, memory_order_release);
        return;
    }
    int spins = 0;
    while (atomic_load_explicit(&pool->bar_gen, memory_order_acquire) == g) {
        if (++spins < SPIN_BEFORE_YIELD) cpu_relax();
        else sched_yield();
    }
}
