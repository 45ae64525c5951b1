/* lp_read_bandwidth: see llamapy.h. A plain XOR reduction (the compiler vectorizes it) keeps far ahead of
 * memory, so the time is the memory's. */
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "llamapy.h"

typedef struct {
    pthread_mutex_t lock;
    pthread_cond_t cond;
    int go; /* 0: wait, 1: measure, -1: give up (a thread could not be started) */
} bw_gate;

typedef struct {
    bw_gate *gate;
    pthread_barrier_t *start, *stop;
    size_t words;
    int reps;
    int ok;
    uint64_t sink;
} bw_task;

static double seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void *bw_worker(void *arg) {
    bw_task *t = arg;
    uint64_t *buf = malloc(t->words * sizeof(uint64_t));
    t->ok = buf != NULL;
    if (buf) memset(buf, 1, t->words * sizeof(uint64_t));
    uint64_t acc[8] = {0};
    pthread_mutex_lock(&t->gate->lock);
    while (!t->gate->go) pthread_cond_wait(&t->gate->cond, &t->gate->lock);
    const int go = t->gate->go;
    pthread_mutex_unlock(&t->gate->lock);
    for (int r = 0; go > 0 && r < t->reps; r++) {
        pthread_barrier_wait(t->start);
        if (buf)   /* 8 independent chains (a cache line a step), so no dependency holds the loads back */
            for (size_t i = 0; i + 8 <= t->words; i += 8)
                for (int k = 0; k < 8; k++) acc[k] ^= buf[i + k];
        pthread_barrier_wait(t->stop);
    }
    for (int k = 0; k < 8; k++) t->sink ^= acc[k];
    free(buf);
    return NULL;
}

double lp_read_bandwidth(int n_threads, size_t bytes, int reps) {
    if (n_threads < 1 || n_threads > 256 || reps < 1 || bytes < 4096) return -1.0;
    bw_gate gate = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0};
    pthread_barrier_t start, stop;
    pthread_barrier_init(&start, NULL, (unsigned)n_threads + 1);
    pthread_barrier_init(&stop, NULL, (unsigned)n_threads + 1);
    bw_task *tasks = calloc((size_t)n_threads, sizeof *tasks);
    pthread_t *th = calloc((size_t)n_threads, sizeof *th);
    int started = 0;
    double best = -1.0;
    if (tasks && th) {
        for (; started < n_threads; started++) {
            tasks[started] = (bw_task){&gate, &start, &stop, bytes / sizeof(uint64_t), reps, 0, 0};
            if (pthread_create(&th[started], NULL, bw_worker, &tasks[started])) break;
        }
    }
    pthread_mutex_lock(&gate.lock);
    gate.go = started == n_threads ? 1 : -1;
    pthread_cond_broadcast(&gate.cond);
    pthread_mutex_unlock(&gate.lock);
    if (started == n_threads) {
        for (int r = 0; r < reps; r++) {
            pthread_barrier_wait(&start);
            const double t0 = seconds();
            pthread_barrier_wait(&stop);
            const double dt = seconds() - t0;
            const double gbs = (double)n_threads * (double)(bytes / 64 * 64) / dt / 1e9;
            if (gbs > best) best = gbs;
        }
        for (int i = 0; i < n_threads; i++) best = tasks[i].ok ? best : -1.0;
    }
    for (int i = 0; i < started; i++) pthread_join(th[i], NULL);
    pthread_barrier_destroy(&start);
    pthread_barrier_destroy(&stop);
    pthread_mutex_destroy(&gate.lock);
    pthread_cond_destroy(&gate.cond);
    free(tasks);
    free(th);
    return best;
}
