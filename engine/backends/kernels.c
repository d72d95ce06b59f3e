/* Fused float32 loops for the numpy backend.
 *
 * Prefill: numpy runs rms_norm, rope and SwiGLU as 4-6 full passes over memory each (one ufunc per
 * step, a temporary per step); here each is one pass: read the input once, write the output once.
 * Matmuls stay in numpy's BLAS. These functions work on a range of rows [r0, r1) and keep no state,
 * so Python threads run disjoint ranges side by side (ctypes releases the GIL during the call).
 *
 * Decode (one new position): the attention over the KV cache, split over the cores by a small pool of
 * spinning workers (below, shared by every kernels*.c through kernels.h), since a Python thread
 * hand-off costs as much as one such call. The matrix-vector products are in kernels_matvec.c.
 *
 * Built and loaded by kernels.py; the backend uses plain numpy when they cannot be built.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "kernels.h"

/* RMSNorm as HF's Qwen/Llama (float32): out = x / sqrt(mean(x^2) + eps) * w.
 * Rows are (t, h) for t in [r0, r1), h in [0, H): row (t, h) starts at x + t * ldt + h * ldh;
 * out is contiguous [T, H, n]. */
void rms_norm(const float *restrict x, const float *restrict w, float *restrict out, int64_t r0, int64_t r1,
              int64_t H, int64_t n, int64_t ldt, int64_t ldh, float eps) {
    for (int64_t t = r0; t < r1; t++) {
        for (int64_t h = 0; h < H; h++) {
            const float *restrict row = x + t * ldt + h * ldh;
            float *restrict o = out + (t * H + h) * n;
            float ss = 0.0f;
#pragma omp simd reduction(+ : ss)
            for (int64_t i = 0; i < n; i++) ss += row[i] * row[i];
            float scale = 1.0f / sqrtf(ss / (float)n + eps);
#pragma omp simd
            for (int64_t i = 0; i < n; i++) o[i] = row[i] * scale * w[i];
        }
    }
}

/* Rotary embedding (HF rotate-half): for head h, position t, with c = cos[t], s = sin[t] ([T, D/2]):
 * out[h, t, :D/2] = x1 * c - x2 * s; out[h, t, D/2:] = x2 * c + x1 * s.
 * Input element (h, t, d) at x + h * ldh + t * ldt + d; out contiguous [H, T, D]. Rows are heads
 * [r0, r1). With norm_w (not NULL), each head vector is RMS-normalised first (Qwen3's q_norm, k_norm:
 * x * norm_w / sqrt(mean(x^2) + eps)), in the same pass. */
void rope(const float *restrict x, const float *restrict cosv, const float *restrict sinv, float *restrict out,
          int64_t r0, int64_t r1, int64_t T, int64_t D, int64_t ldh, int64_t ldt, const float *restrict norm_w,
          float eps) {
    const int64_t half = D / 2;
    for (int64_t h = r0; h < r1; h++) {
        for (int64_t t = 0; t < T; t++) {
            const float *restrict xi = x + h * ldh + t * ldt;
            const float *restrict c = cosv + t * half, *restrict s = sinv + t * half;
            float *restrict o = out + (h * T + t) * D;
            if (norm_w) {
                float ss = 0.0f;
#pragma omp simd reduction(+ : ss)
                for (int64_t i = 0; i < D; i++) ss += xi[i] * xi[i];
                const float scale = 1.0f / sqrtf(ss / (float)D + eps);
                const float *restrict w1 = norm_w, *restrict w2 = norm_w + half;
#pragma omp simd
                for (int64_t i = 0; i < half; i++) {
                    float x1 = xi[i] * scale * w1[i], x2 = xi[i + half] * scale * w2[i];
                    o[i] = x1 * c[i] - x2 * s[i];
                    o[i + half] = x2 * c[i] + x1 * s[i];
                }
                continue;
            }
#pragma omp simd
            for (int64_t i = 0; i < half; i++) {
                float x1 = xi[i], x2 = xi[i + half];
                o[i] = x1 * c[i] - x2 * s[i];
                o[i + half] = x2 * c[i] + x1 * s[i];
            }
        }
    }
}

/* SwiGLU: out[t, i] = silu(g) * u with g = gate_up[t, i], u = gate_up[t, I + i] (row stride ld). */
void silu_mul(const float *restrict gate_up, float *restrict out, int64_t r0, int64_t r1, int64_t I,
              int64_t ld) {
    for (int64_t t = r0; t < r1; t++) {
        const float *restrict g = gate_up + t * ld, *restrict u = g + I;
        float *restrict o = out + t * I;
#pragma omp simd
        for (int64_t i = 0; i < I; i++) o[i] = g[i] / (1.0f + exp_poly6(-g[i])) * u[i];
    }
}

/* Causal softmax over keys of keys-major scores, in place: scores [n_heads, S, R], R = G * T columns;
 * column c is the query at position offset + c % T, which sees keys 0 .. offset + c % T (the rest
 * become 0). Heads [h0, h1); sums [n_heads, R] receives each column's sum. Columns go in chunks of
 * COLS so that both passes (max, then exp and sum) read them from cache. */
#define COLS 128

void softmax_keys(float *restrict scores, float *restrict sums, int64_t h0, int64_t h1, int64_t S, int64_t R,
                  int64_t T, int64_t offset) {
    float peak[COLS], acc[COLS];
    int32_t limit[COLS];
    for (int64_t h = h0; h < h1; h++) {
        float *restrict x = scores + h * S * R;
        for (int64_t c0 = 0; c0 < R; c0 += COLS) {
            const int nc = R - c0 < COLS ? (int)(R - c0) : COLS;
            int64_t lowest = S;
            for (int c = 0; c < nc; c++) {
                int64_t lim = offset + (c0 + c) % T;
                limit[c] = (int32_t)(lim < S ? lim : S);
                peak[c] = -INFINITY;
                acc[c] = 0.0f;
                if (lim < lowest) lowest = lim;
            }
            const int64_t open = lowest + 1 < S ? lowest + 1 : S; /* keys every column sees */
            for (int64_t s = 0; s < S; s++) {
                const float *restrict row = x + s * R + c0;
                if (s < open) {
#pragma omp simd
                    for (int c = 0; c < nc; c++) peak[c] = row[c] > peak[c] ? row[c] : peak[c];
                } else {
#pragma omp simd
                    for (int c = 0; c < nc; c++) peak[c] = (s <= limit[c] && row[c] > peak[c]) ? row[c] : peak[c];
                }
            }
            for (int64_t s = 0; s < S; s++) {
                float *restrict row = x + s * R + c0;
#pragma omp simd
                for (int c = 0; c < nc; c++) {
                    float e = exp_poly6(row[c] - peak[c]);
                    e = s <= limit[c] ? e : 0.0f;
                    row[c] = e;
                    acc[c] += e;
                }
            }
            for (int c = 0; c < nc; c++) sums[h * R + c0 + c] = acc[c];
        }
    }
}

/* ---- Decode: matrix-vector products and attention split over the cores by a small pool. ----
 *
 * A decode step is ~100 matrix-vector products and a KV-cache read per layer, each a few hundred
 * microseconds: handing work to Python threads (~140 us here) or waking sleeping threads for each
 * would cost as much as the work. These workers spin, yielding their core, for SPIN_NS after their
 * last job and then sleep. numpy's OpenBLAS is not called during decode, so its own workers sleep and
 * leave the cores to these (two sets of spinning workers on one core halve each other's speed).
 *
 * Parts are claimed, not assigned: the caller and the workers take the next unclaimed part until none
 * is left, and the caller waits only for workers that joined. On a machine shared with other work a
 * worker whose core was taken (its time slice, another process) would otherwise hold up every call
 * until it runs again; here the caller does that worker's parts itself. A worker joins a job by
 * counting itself `active` and then checking that the job is still `open`: the caller closes it
 * (after the last part is claimed) before it waits for `active` to drop to 0, so a late worker either
 * is waited for or sees the job closed and never touches its arguments. */
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <time.h>

#define MAX_THREADS 16
#define SPIN_NS 1000000LL

static pthread_mutex_t run_lock = PTHREAD_MUTEX_INITIALIZER; /* one parallel job at a time */
static pthread_mutex_t wake_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t wake_cond = PTHREAD_COND_INITIALIZER;
static _Atomic uint64_t posted;    /* job counter */
static _Atomic uint64_t open_job;  /* the job workers may still join (0: none) */
static _Atomic int64_t active;     /* workers inside a job */
static _Atomic int64_t next_part;  /* the current job's next unclaimed part */
static _Atomic int64_t sleepers;   /* workers waiting on wake_cond */
static task_fn job_fn;
static void *job_ctx;
static int64_t job_parts, job_threads;
static int64_t n_workers; /* started; ids 1..n_workers */
static uint64_t first_job[MAX_THREADS]; /* the job counter when worker i was started */
static int atfork_set;

static int64_t now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (int64_t)t.tv_sec * 1000000000LL + t.tv_nsec;
}

static void claim_parts(task_fn fn, void *ctx, int64_t parts) {
    for (int64_t p; (p = atomic_fetch_add(&next_part, 1)) < parts;) fn(ctx, p, parts);
}

static void join_job(int64_t id, uint64_t job) {
    atomic_fetch_add(&active, 1); /* seq_cst, before the check: the caller waits for us or we see it closed */
    if (atomic_load(&open_job) == job && id < job_threads) claim_parts(job_fn, job_ctx, job_parts);
    atomic_fetch_sub(&active, 1);
}

static void *worker_main(void *arg) {
    const int64_t id = (int64_t)(intptr_t)arg;
    uint64_t seen = first_job[id]; /* not `posted`: the job it was started for may be posted already */
    int64_t idle_since = now_ns();
    for (unsigned spins = 1;; spins++) {
        const uint64_t p = atomic_load_explicit(&posted, memory_order_acquire);
        if (p != seen) {
            seen = p;
            join_job(id, p);
            idle_since = now_ns();
            continue;
        }
        if (spins % 64 == 0 && now_ns() - idle_since > SPIN_NS) {
            pthread_mutex_lock(&wake_lock);
            atomic_fetch_add(&sleepers, 1); /* seq_cst: the poster sees us, or we see its job */
            while (atomic_load(&posted) == seen) pthread_cond_wait(&wake_cond, &wake_lock);
            atomic_fetch_sub(&sleepers, 1);
            pthread_mutex_unlock(&wake_lock);
            continue;
        }
        sched_yield();
    }
    return NULL;
}

static void forget_workers(void) { /* in a forked child: the workers stayed with the parent */
    n_workers = 0;
    pthread_mutex_init(&run_lock, NULL);
    pthread_mutex_init(&wake_lock, NULL);
    pthread_cond_init(&wake_cond, NULL);
    atomic_store(&active, 0);
    atomic_store(&open_job, 0);
    atomic_store(&sleepers, 0);
}

static void start_workers(int64_t wanted) {
    if (!atfork_set) atfork_set = !pthread_atfork(NULL, NULL, forget_workers);
    while (n_workers < wanted) {
        pthread_t t;
        first_job[n_workers + 1] = atomic_load(&posted);
        if (pthread_create(&t, NULL, worker_main, (void *)(intptr_t)(n_workers + 1)) != 0) break;
        pthread_detach(t);
        n_workers++;
    }
}

/* fn(ctx, part, parts) once for each part in [0, parts), by the calling thread and up to threads - 1
 * workers, whichever claims it first (a part is never split, so it may keep per-part state). */
void run_parts(task_fn fn, void *ctx, int64_t parts, int64_t threads) {
    if (threads > MAX_THREADS) threads = MAX_THREADS;
    if (threads > parts) threads = parts;
    if (threads <= 1) {
        for (int64_t p = 0; p < parts; p++) fn(ctx, p, parts);
        return;
    }
    pthread_mutex_lock(&run_lock);
    start_workers(threads - 1);
    job_fn = fn, job_ctx = ctx, job_parts = parts, job_threads = threads;
    atomic_store(&next_part, 0);
    const uint64_t job = atomic_load(&posted) + 1;
    atomic_store(&open_job, job);
    atomic_store(&posted, job); /* seq_cst: publishes the fields above */
    if (atomic_load(&sleepers) > 0) {
        pthread_mutex_lock(&wake_lock);
        pthread_cond_broadcast(&wake_cond);
        pthread_mutex_unlock(&wake_lock);
    }
    claim_parts(fn, ctx, parts);
    atomic_store(&open_job, 0);
    for (unsigned n = 0; atomic_load(&active) > 0; n++) {
        if (n > 64) sched_yield();
    }
    pthread_mutex_unlock(&run_lock);
}

/* fn(ctx, part, parts) for part in [0, parts), one part per thread while the threads are there. */
void run_parallel(task_fn fn, void *ctx, int64_t parts) { run_parts(fn, ctx, parts, parts); }

/* Attention of one new position: q [H, D]; keys and values of kv head j at k + j * ldh, v + j * ldh,
 * one row of D per position, S positions; out [H, D]; scratch [H, S]. Query head h reads kv head
 * h / (H / Hkv). Split over kv heads, so that no kv head is read by two threads. */
struct attend_args {
    const float *q, *k, *v;
    float *out, *scratch;
    int64_t H, Hkv, S, D, ldh;
    float scale;
};

#define AHEAD 12 /* rows prefetched ahead (a prefetch never faults, even past the end): measured 1.6x */

/* The G query heads q [G, D] that share one kv head, in one pass over its keys and one over its
 * values: each row is loaded once for all G. p [G, S] scratch; o [G, D]. */
static inline __attribute__((always_inline)) void attend_group(const float *restrict q, const float *restrict K,
                                                               const float *restrict V, float *restrict o,
                                                               float *restrict p, int64_t G, int64_t S, int64_t D,
                                                               float scale) {
    float peak[16], sum[16];
    for (int64_t g = 0; g < G; g++) peak[g] = -INFINITY, sum[g] = 0.0f;
    for (int64_t s = 0; s < S; s++) {
        const float *restrict row = K + s * D;
        for (int64_t i = 0; i < D; i += 16) __builtin_prefetch(row + AHEAD * D + i);
        for (int64_t g = 0; g < G; g++) {
            const float *restrict qg = q + g * D;
            float acc = 0.0f;
#pragma omp simd reduction(+ : acc)
            for (int64_t i = 0; i < D; i++) acc += qg[i] * row[i];
            acc *= scale;
            p[g * S + s] = acc;
            peak[g] = acc > peak[g] ? acc : peak[g];
        }
    }
    for (int64_t g = 0; g < G; g++) {
        float *restrict pg = p + g * S;
        const float m = peak[g];
        float total = 0.0f;
#pragma omp simd reduction(+ : total)
        for (int64_t s = 0; s < S; s++) {
            const float e = exp_poly6(pg[s] - m);
            pg[s] = e;
            total += e;
        }
        sum[g] = total;
    }
    for (int64_t i = 0; i < G * D; i++) o[i] = 0.0f;
    for (int64_t s = 0; s < S; s++) {
        const float *restrict row = V + s * D;
        for (int64_t i = 0; i < D; i += 16) __builtin_prefetch(row + AHEAD * D + i);
        for (int64_t g = 0; g < G; g++) {
            const float w = p[g * S + s];
            float *restrict og = o + g * D;
#pragma omp simd
            for (int64_t i = 0; i < D; i++) og[i] += w * row[i];
        }
    }
    for (int64_t g = 0; g < G; g++) {
        const float inv = 1.0f / sum[g];
#pragma omp simd
        for (int64_t i = 0; i < D; i++) o[g * D + i] *= inv;
    }
}

static void attend_part(void *ctx, int64_t part, int64_t parts) {
    const struct attend_args *a = ctx;
    const int64_t G = a->H / a->Hkv, j0 = a->Hkv * part / parts, j1 = a->Hkv * (part + 1) / parts;
    for (int64_t j = j0; j < j1; j++) {
        const int64_t D = a->D;
        for (int64_t g0 = 0; g0 < G; g0 += 16) { /* groups of at most 16 heads (peak, sum on the stack) */
            const int64_t n = G - g0 < 16 ? G - g0 : 16, h = j * G + g0;
            const float *q = a->q + h * D, *k = a->k + j * a->ldh, *v = a->v + j * a->ldh;
            float *o = a->out + h * D, *p = a->scratch + h * a->S;
            if (D == 128) /* the usual head sizes, unrolled */
                attend_group(q, k, v, o, p, n, a->S, 128, a->scale);
            else if (D == 64)
                attend_group(q, k, v, o, p, n, a->S, 64, a->scale);
            else
                attend_group(q, k, v, o, p, n, a->S, D, a->scale);
        }
    }
}

void attend_one(const float *q, const float *k, const float *v, float *out, float *scratch, int64_t H,
                int64_t Hkv, int64_t S, int64_t D, int64_t ldh, float scale, int64_t threads) {
    struct attend_args a = {q, k, v, out, scratch, H, Hkv, S, D, ldh, scale};
    run_parts(attend_part, &a, Hkv, threads); /* one kv head per part: a late core's heads go to the others */
}
