/* Short prefills with bfloat16 weights: y [T, N] = x [T, K] @ w [N, K]^T for a few tokens, without
 * widening the weights into a float32 copy first.
 *
 * For T tokens BLAS needs the weight in float32: numpy_bf16.py widens it into a buffer (read 2 bytes,
 * write 4, BLAS reads the 4 again, per weight) before every product. For the 16-64 new tokens of a
 * resumed turn that pass over memory costs more than the products themselves. Here each weight row is
 * read from memory once for all T tokens: tiles of 2 rows x 4 tokens keep their 8 accumulators in
 * registers, the 2 rows stay in L1 while the token tiles go by, and the weights are widened in
 * registers (exact: a bfloat16 is the top half of a float32). Activations and accumulation are float32,
 * so no precision setting is involved; only the order of the additions differs from BLAS's.
 *
 * Paths: AVX2+FMA (one 32-byte load holds 16 bfloat16s; the even ones are the lanes shifted left by 16,
 * the odd ones the lanes masked, so x is reordered once per call to match, as gemv_bf16 does), else a
 * portable loop that widens a row into a small buffer and takes dot products with `omp simd` (also
 * callable on x86, for the tests to compare). Rows are split over the cores by run_parts.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "kernels.h"

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define GEMM_AVX2 1
#endif

struct gemm_args {
    const uint16_t *w;
    const float *x;  /* [T, K] */
    float *y;        /* [T, N] */
    int64_t T, N, K;
};

static inline float bf16_at(const uint16_t *w, int64_t i) {
    const uint32_t bits = (uint32_t)w[i] << 16;
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

/* The portable path: each row widened into `row` (K floats), then one dot product per token. */
static void gemm_portable_part(void *ctx, int64_t part, int64_t parts) {
    const struct gemm_args *a = ctx;
    const int64_t K = a->K, r0 = a->N * part / parts, r1 = a->N * (part + 1) / parts;
    float *row = malloc(sizeof(float) * (size_t)K);
    if (!row) return; /* out of memory for one row: y keeps what it had (the caller's numpy raised first) */
    for (int64_t r = r0; r < r1; r++) {
        const uint16_t *w = a->w + r * K;
#pragma omp simd
        for (int64_t k = 0; k < K; k++) row[k] = bf16_at(w, k);
        for (int64_t t = 0; t < a->T; t++) {
            const float *restrict x = a->x + t * K;
            float s = 0.0f;
#pragma omp simd reduction(+ : s)
            for (int64_t k = 0; k < K; k++) s += row[k] * x[k];
            a->y[t * a->N + r] = s;
        }
    }
    free(row);
}

#ifdef GEMM_AVX2
#define TILE_TOKENS 6

static inline float hsum(__m256 v) {
    __m128 h = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    h = _mm_add_ps(h, _mm_movehl_ps(h, h));
    return _mm_cvtss_f32(_mm_add_ss(h, _mm_movehdup_ps(h)));
}

/* y[t0 + t, r + i] for R rows (1 or 2) from r and TT tokens (1..6) from t0: constants after inlining,
 * so the accumulators live in registers (2 x 6 of them + 2 widened weights + 1 of x: 15 of 16). Twelve
 * independent accumulators keep both FMA pipes busy through the FMA's 4-cycle latency (8 would only
 * just do: measured 82-87 GFLOP/s on two cores with 2 x 4 tiles). */
static inline __attribute__((always_inline)) void tile(const struct gemm_args *a, int64_t r, int64_t t0, const int R,
                                                       const int TT) {
    const int64_t K = a->K, body = K - K % 8;
    const uint16_t *w = a->w + r * K;
    const float *x = a->x + t0 * K;
    __m256 acc[2][TILE_TOKENS];
    for (int i = 0; i < R; i++)
        for (int t = 0; t < TT; t++) acc[i][t] = _mm256_setzero_ps();
    for (int64_t k = 0; k < body; k += 8) {
        __m256 wf[2];
        for (int i = 0; i < R; i++) {
            const __m128i v = _mm_loadu_si128((const __m128i *)(w + i * K + k));
            wf[i] = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(v), 16));
        }
        for (int t = 0; t < TT; t++) {
            const __m256 xv = _mm256_loadu_ps(x + t * K + k);
            for (int i = 0; i < R; i++) acc[i][t] = _mm256_fmadd_ps(wf[i], xv, acc[i][t]);
        }
    }
    for (int i = 0; i < R; i++)
        for (int t = 0; t < TT; t++) {
            float s = hsum(acc[i][t]);
            for (int64_t k = body; k < K; k++) s += bf16_at(w + i * K, k) * x[t * K + k];
            a->y[(t0 + t) * a->N + r + i] = s;
        }
}

#define TILE_CASES(R)                                                                                          \
    for (int64_t t0 = 0; t0 < a->T; t0 += TILE_TOKENS) {                                                       \
        switch (a->T - t0 < TILE_TOKENS ? a->T - t0 : TILE_TOKENS) {                                           \
        case 1: tile(a, r, t0, R, 1); break;                                                                   \
        case 2: tile(a, r, t0, R, 2); break;                                                                   \
        case 3: tile(a, r, t0, R, 3); break;                                                                   \
        case 4: tile(a, r, t0, R, 4); break;                                                                   \
        case 5: tile(a, r, t0, R, 5); break;                                                                   \
        default: tile(a, r, t0, R, 6); break;                                                                  \
        }                                                                                                      \
    }

static void gemm_avx2_part(void *ctx, int64_t part, int64_t parts) {
    const struct gemm_args *a = ctx;
    const int64_t pairs = a->N / 2, p0 = pairs * part / parts, p1 = pairs * (part + 1) / parts;
    for (int64_t r = 2 * p0; r < 2 * p1; r += 2) {
        /* the next pair's rows on their way into L2 while this pair's token tiles run from L1 */
        for (int64_t k = 0; k < 2 * a->K; k += 32) __builtin_prefetch(a->w + (r + 2) * a->K + k, 0, 2);
        TILE_CASES(2)
    }
    if (part == parts - 1 && a->N % 2) {
        const int64_t r = a->N - 1;
        TILE_CASES(1)
    }
}
#endif

/* Whether gemm_bf16 has a vector path on this build (else every call takes the portable one). */
int64_t gemm_vector_path(void) {
#ifdef GEMM_AVX2
    return 1;
#else
    return 0;
#endif
}

/* y [T, N] = x [T, K] @ w^T for bfloat16 bits w [N, K], all C-contiguous; portable != 0 forces the
 * portable loop. Rows are split over `threads` cores (fewer for small matrices). */
void gemm_bf16(const uint16_t *w, const float *x, float *y, int64_t T, int64_t N, int64_t K, int64_t threads,
               int64_t portable) {
    struct gemm_args a = {w, x, y, T, N, K};
    const int64_t parts = N >= 256 * threads ? 4 * threads : (N >= 64 * threads ? threads : 1);
#ifdef GEMM_AVX2
    if (!portable) {
        run_parts(gemm_avx2_part, &a, parts, threads);
        return;
    }
#endif
    (void)portable;
    run_parts(gemm_portable_part, &a, parts, threads);
}
