/* What the numpy backend's C files share: kernels.py compiles every engine/backends/*.c into one
 * library, so a new family of kernels (quantized matvec, paged attention) lives in its own file and
 * uses the one worker pool kernels.c keeps. */
#ifndef WORKBENCH_KERNELS_H
#define WORKBENCH_KERNELS_H
#include <stdint.h>

typedef void (*task_fn)(void *ctx, int64_t part, int64_t parts);

/* fn(ctx, part, parts) once for each part in [0, parts), on up to `parts` threads (the calling one
 * among them), each part taken by whichever thread claims it first; one job at a time. */
void run_parallel(task_fn fn, void *ctx, int64_t parts);

/* The same on up to `threads` threads: more parts than threads balance the load between cores. */
void run_parts(task_fn fn, void *ctx, int64_t parts, int64_t threads);

#endif
