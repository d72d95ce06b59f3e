/* One decode-step linear layer with what surrounds it, in one call from Python.
 *
 * A decode step is ~280 small C calls, and the Python around each (argument checks, addresses, the
 * output array) costs about as much as a short one: ~3 ms of a ~45 ms step on Qwen3-0.6B. The backend
 * ops that a layer's products come with are done here, on the calling thread, around one gemv:
 * the RMSNorm of the input (x [cols] normalised, then multiplied by norm_w), the bias, SwiGLU of a
 * stacked gate_up output (y[i] = silu(z[i]) * z[half + i]) and a residual add. Each is the same
 * arithmetic as its own kernel in kernels.c (rms_norm, silu_mul), so the fused path gives the same
 * numbers as the separate calls. The model code stays the one definition (engine/models/): these are
 * the numpy backend's implementation of `linear(..., norm=, residual=)` and `swiglu_linear`.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>

#include "kernels.h"

static void rms_norm_row(const float *restrict x, const float *restrict w, float *restrict out, int64_t n,
                         float eps) {
    float ss = 0.0f;
#pragma omp simd reduction(+ : ss)
    for (int64_t i = 0; i < n; i++) ss += x[i] * x[i];
    const float scale = 1.0f / sqrtf(ss / (float)n + eps);
#pragma omp simd
    for (int64_t i = 0; i < n; i++) out[i] = x[i] * scale * w[i];
}

/* y = [swiglu](w @ [rms_norm](x) + bias) + residual for one row x [cols]; w [rows, cols] float32
 * (bf16 == 0) or bfloat16 bits. norm_w, bias, residual may be NULL (not applied). half > 0: rows ==
 * 2 * half and y [half] = silu(z[:half]) * z[half:]; else y [rows] = z. Returns 0, or -1 when out of
 * memory (y is then not written). */
int64_t gemv_fused(const void *w, int64_t bf16, const float *x, float *y, int64_t rows, int64_t cols,
                   int64_t threads, const float *norm_w, float eps, const float *bias, const float *residual,
                   int64_t half) {
    float *scratch = NULL;
    const int64_t need = (norm_w ? cols : 0) + (half ? rows : 0);
    if (need && !(scratch = malloc(sizeof(float) * (size_t)need))) return -1;
    const float *in = x;
    if (norm_w) {
        rms_norm_row(x, norm_w, scratch, cols, eps);
        in = scratch;
    }
    float *z = half ? scratch + (norm_w ? cols : 0) : y;
    if (bf16)
        gemv_bf16(w, in, z, rows, cols, threads);
    else
        gemv(w, in, z, rows, cols, threads);
    if (bias)
        for (int64_t r = 0; r < rows; r++) z[r] += bias[r];
    const int64_t n = half ? half : rows;
    if (half) {
        const float *restrict g = z, *restrict u = z + half;
#pragma omp simd
        for (int64_t i = 0; i < half; i++) y[i] = g[i] / (1.0f + exp_poly6(-g[i])) * u[i];
    }
    if (residual)
        for (int64_t i = 0; i < n; i++) y[i] += residual[i];
    free(scratch);
    return 0;
}
