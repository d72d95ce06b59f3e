/* What the numpy backend's C files share: kernels.py compiles every engine/backends/*.c into one
 * library, so a new family of kernels (quantized matvec, paged attention) lives in its own file and
 * uses the one worker pool kernels.c keeps. */
#ifndef WORKBENCH_KERNELS_H
#define WORKBENCH_KERNELS_H
#include <stdint.h>
#include <string.h>

typedef void (*task_fn)(void *ctx, int64_t part, int64_t parts);

/* fn(ctx, part, parts) once for each part in [0, parts), on up to `parts` threads (the calling one
 * among them), each part taken by whichever thread claims it first; one job at a time. */
void run_parallel(task_fn fn, void *ctx, int64_t parts);

/* The same on up to `threads` threads: more parts than threads balance the load between cores. */
void run_parts(task_fn fn, void *ctx, int64_t parts, int64_t threads);

/* exp(x): 2^n * p(r), |r| <= ln2/2, degree-6 Taylor polynomial (relative error < 2e-7). Written out
 * so that the loops calling it vectorise (a libm call per element does not); the one exp of every
 * kernel, so that fused and unfused paths give the same bits. */
static inline float exp_poly6(float x) {
    x = x < -87.0f ? -87.0f : (x > 88.0f ? 88.0f : x);
    float n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f; /* round(x / ln2) */
    float r = x - n * 0.693359375f + n * 2.12194440e-4f;
    float p = 1.0f / 720.0f;
    p = p * r + 1.0f / 120.0f;
    p = p * r + 1.0f / 24.0f;
    p = p * r + 1.0f / 6.0f;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    int32_t bits = ((int32_t)n + 127) << 23;
    float scale;
    memcpy(&scale, &bits, sizeof scale);
    return p * scale;
}

/* kernels_matvec.c: y [rows] = w [rows, cols] x, float32 or bfloat16 weights, on up to `threads` cores. */
void gemv(const float *w, const float *x, float *y, int64_t rows, int64_t cols, int64_t threads);
void gemv_bf16(const uint16_t *w, const float *x, float *y, int64_t rows, int64_t cols, int64_t threads);

#endif
