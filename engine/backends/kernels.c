/* Fused float32 loops for the numpy backend's elementwise work in prefill.
 *
 * numpy runs rms_norm, rope and SwiGLU as 4-6 full passes over memory each (one ufunc per step, a
 * temporary per step); here each is one pass: read the input once, write the output once. Matmuls
 * stay in numpy's BLAS. Every function works on a range of rows [r0, r1) and keeps no state, so
 * Python threads run disjoint ranges side by side (ctypes releases the GIL during the call).
 * Built and loaded by kernels.py; the backend uses plain numpy when they cannot be built.
 */
#include <math.h>
#include <stdint.h>
#include <string.h>

/* exp(x): 2^n * p(r), |r| <= ln2/2, degree-6 Taylor polynomial (relative error < 2e-7). Written out
 * so that the loops calling it vectorise (a libm call per element does not). */
static inline float exp_poly(float x) {
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
 * [r0, r1). */
void rope(const float *restrict x, const float *restrict cosv, const float *restrict sinv, float *restrict out,
          int64_t r0, int64_t r1, int64_t T, int64_t D, int64_t ldh, int64_t ldt) {
    const int64_t half = D / 2;
    for (int64_t h = r0; h < r1; h++) {
        for (int64_t t = 0; t < T; t++) {
            const float *restrict xi = x + h * ldh + t * ldt;
            const float *restrict c = cosv + t * half, *restrict s = sinv + t * half;
            float *restrict o = out + (h * T + t) * D;
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
        for (int64_t i = 0; i < I; i++) o[i] = g[i] / (1.0f + exp_poly(-g[i])) * u[i];
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
                    float e = exp_poly(row[c] - peak[c]);
                    e = s <= limit[c] ? e : 0.0f;
                    row[c] = e;
                    acc[c] += e;
                }
            }
            for (int c = 0; c < nc; c++) sums[h * R + c0 + c] = acc[c];
        }
    }
}
