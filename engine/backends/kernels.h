/* What the numpy backend's C files share: kernels.py compiles every engine/backends/*.c into one
 * library, so a new family of kernels (quantized matvec, paged attention) lives in its own file and
 * uses the one worker pool kernels.c keeps. */
#ifndef WORKBENCH_KERNELS_H
#define WORKBENCH_KERNELS_H
#include <stdint.h>

typedef void (*task_fn)(void *ctx, int64_t part, int64_t parts);

/* fn(ctx, part, parts) for part in [0, parts), part 0 on the calling thread; one job at a time. */
void run_parallel(task_fn fn, void *ctx, int64_t parts);

#endif
