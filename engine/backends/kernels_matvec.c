/* Matrix-vector products of a decode step (float32 and bfloat16 weights) and the bfloat16 widening
 * prefill uses for BLAS. Split over the cores by kernels.c's pool (run_parallel, kernels.h).
 *
 * Built into the one kernels library with every engine/backends/*.c (kernels.py).
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "kernels.h"

/* y[r] = dot(w[r, :], x) for the rows of a C-contiguous [rows, cols] weight matrix, float32 or
 * bfloat16 (the checkpoint's own bits, kept to halve the bytes a decode step streams): four rows at
 * a time, so each load of x serves four of them. */
struct gemv_args {
    const void *w;
    const float *x;
    float *y;
    int64_t rows, cols;
    const float *xperm; /* gemv_bf16 on AVX2: x with each block of 16 reordered, evens then odds */
};

/* bfloat16 is the top half of a float32: widening is exact, so a product is the same as with the
 * weight converted to float32 beforehand. */
static inline __attribute__((always_inline)) float weight_at(const void *w, int64_t i, const int bf16) {
    if (!bf16) return ((const float *)w)[i];
    const uint32_t bits = (uint32_t)((const uint16_t *)w)[i] << 16;
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

static inline __attribute__((always_inline)) float dot_row(const void *w, int64_t row, const float *restrict x,
                                                           int64_t n, const int bf16) {
    float s = 0.0f;
#pragma omp simd reduction(+ : s)
    for (int64_t i = 0; i < n; i++) s += weight_at(w, row * n + i, bf16) * x[i];
    return s;
}

static void gemv_part(void *ctx, int64_t part, int64_t parts) {
    const struct gemv_args *a = ctx;
    const int64_t n = a->cols, quads = a->rows / 4;
    const int64_t q0 = quads * part / parts, q1 = quads * (part + 1) / parts;
    const float *restrict x = a->x, *w = a->w;
    for (int64_t q = q0; q < q1; q++) {
        const float *restrict w0 = w + 4 * q * n, *restrict w1 = w0 + n, *restrict w2 = w1 + n, *restrict w3 = w2 + n;
        float s0 = 0.0f, s1 = 0.0f, s2 = 0.0f, s3 = 0.0f;
#pragma omp simd reduction(+ : s0, s1, s2, s3)
        for (int64_t i = 0; i < n; i++) {
            s0 += w0[i] * x[i];
            s1 += w1[i] * x[i];
            s2 += w2[i] * x[i];
            s3 += w3[i] * x[i];
        }
        a->y[4 * q] = s0, a->y[4 * q + 1] = s1, a->y[4 * q + 2] = s2, a->y[4 * q + 3] = s3;
    }
    if (part == parts - 1) /* the last part also takes the rows after the last group of four */
        for (int64_t r = 4 * quads; r < a->rows; r++) a->y[r] = dot_row(w, r, x, n, 0);
}

/* bfloat16 rows, 32 columns (one 64-byte line of each row) per step, in vectors of 16 written with
 * the compiler's vector extensions (AVX-512 here, pairs of AVX2 or NEON registers elsewhere).
 * Widening slows the loop enough that the hardware prefetcher falls behind, so each step asks for
 * the same columns PREFETCH_QUADS groups of rows ahead: spread over the loop like this measured
 * 1.7-2.1x the float32 product's speed, against 1.5-1.6x when a group's prefetches went out in one
 * burst (more than the core's outstanding misses) and 1.15x without. */
#define PREFETCH_QUADS 2
/* Prefetch into L2, not L1 (hint T1): on this AMD EPYC (Zen 3, AVX2) measured 2.1x the bfloat16 product's
 * speed on one core (12.3 -> 26 GB/s), where T0 keeps the L1's few outstanding misses full. */
#ifndef PREFETCH_LOCALITY
#define PREFETCH_LOCALITY 2
#endif
typedef float f32x16 __attribute__((vector_size(64)));
typedef uint32_t u32x16 __attribute__((vector_size(64)));
typedef uint16_t u16x16 __attribute__((vector_size(32)));

static inline f32x16 widen16(const uint16_t *p) {
    u16x16 half;
    memcpy(&half, p, sizeof half);
    const u32x16 bits = __builtin_convertvector(half, u32x16) << 16;
    f32x16 f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

__attribute__((unused)) static void gemv_bf16_part(void *ctx, int64_t part, int64_t parts) {
    const struct gemv_args *a = ctx;
    const int64_t n = a->cols, quads = a->rows / 4, body = n - n % 32;
    const int64_t q0 = quads * part / parts, q1 = quads * (part + 1) / parts;
    const float *x = a->x;
    const uint16_t *w = a->w;
    for (int64_t q = q0; q < q1; q++) {
        const uint16_t *rows = w + 4 * q * n;
        f32x16 acc[4] = {{0}};
        for (int64_t i = 0; i < body; i += 32) {
            const uint16_t *ahead = rows + PREFETCH_QUADS * 4 * n + i; /* a prefetch never faults */
            for (int j = 0; j < 4; j++) __builtin_prefetch(ahead + j * n);
            f32x16 xa, xb;
            memcpy(&xa, x + i, sizeof xa);
            memcpy(&xb, x + i + 16, sizeof xb);
            for (int j = 0; j < 4; j++) acc[j] += widen16(rows + j * n + i) * xa + widen16(rows + j * n + i + 16) * xb;
        }
        for (int j = 0; j < 4; j++) {
            float s = 0.0f;
            for (int lane = 0; lane < 16; lane++) s += acc[j][lane];
            for (int64_t i = body; i < n; i++) s += weight_at(rows, j * n + i, 1) * x[i];
            a->y[4 * q + j] = s;
        }
    }
    if (part == parts - 1)
        for (int64_t r = 4 * quads; r < a->rows; r++) a->y[r] = dot_row(w, r, x, n, 1);
}

#if defined(__AVX2__) && defined(__FMA__) && !defined(__AVX512F__)
/* AVX2 without AVX-512: a 32-byte load holds 16 bfloat16s, two per 32-bit lane; shifting each lane left
 * by 16 makes the even ones floats and masking off its low half the odd ones, so 16 weights cost one
 * load and two integer operations (against two widening loads and two shifts), with x reordered once
 * per call to match (evens then odds in each block of 16: `xperm`). The 16-wide vectors above compile
 * here to pairs with the accumulators kept in memory: measured 5.5 G weights/s on one core, 0.6x the
 * float32 product's bytes/s. */
#include <immintrin.h>

static void gemv_bf16_avx2_part(void *ctx, int64_t part, int64_t parts) {
    const struct gemv_args *a = ctx;
    const int64_t n = a->cols, quads = a->rows / 4, body = n - n % 32;
    const int64_t q0 = quads * part / parts, q1 = quads * (part + 1) / parts;
    const float *x = a->x, *xp = a->xperm;
    const uint16_t *w = a->w;
    const __m256i high = _mm256_set1_epi32((int)0xffff0000u);
    for (int64_t q = q0; q < q1; q++) {
        const uint16_t *r[4] = {w + 4 * q * n, w + (4 * q + 1) * n, w + (4 * q + 2) * n, w + (4 * q + 3) * n};
        __m256 s[4], t[4];
        for (int j = 0; j < 4; j++) s[j] = _mm256_setzero_ps(), t[j] = _mm256_setzero_ps();
        for (int64_t i = 0; i < body; i += 32) {
            const uint16_t *ahead = r[0] + PREFETCH_QUADS * 4 * n + i; /* a prefetch never faults */
            for (int j = 0; j < 4; j++) __builtin_prefetch(ahead + j * n, 0, PREFETCH_LOCALITY);
            for (int64_t k = i; k < i + 32; k += 16) {
                const __m256 xe = _mm256_loadu_ps(xp + k), xo = _mm256_loadu_ps(xp + k + 8);
                for (int j = 0; j < 4; j++) {
                    const __m256i v = _mm256_loadu_si256((const __m256i *)(r[j] + k));
                    s[j] = _mm256_fmadd_ps(_mm256_castsi256_ps(_mm256_slli_epi32(v, 16)), xe, s[j]);
                    t[j] = _mm256_fmadd_ps(_mm256_castsi256_ps(_mm256_and_si256(v, high)), xo, t[j]);
                }
            }
        }
        for (int j = 0; j < 4; j++) {
            const __m256 sum = _mm256_add_ps(s[j], t[j]);
            __m128 h = _mm_add_ps(_mm256_castps256_ps128(sum), _mm256_extractf128_ps(sum, 1));
            h = _mm_add_ps(h, _mm_movehl_ps(h, h));
            float total = _mm_cvtss_f32(_mm_add_ss(h, _mm_movehdup_ps(h)));
            for (int64_t i = body; i < n; i++) total += weight_at(r[j], i, 1) * x[i];
            a->y[4 * q + j] = total;
        }
    }
    if (part == parts - 1)
        for (int64_t r = 4 * quads; r < a->rows; r++) a->y[r] = dot_row(w, r, x, n, 1);
}
#define GEMV_BF16_PART gemv_bf16_avx2_part
#define GEMV_BF16_XPERM 1
#else
#define GEMV_BF16_PART gemv_bf16_part
#endif

/* Parts of a product: a few per thread, so that a core that falls behind (another process took it for
 * a while) leaves its later parts to the others (run_parts), but each at least 64 rows. */
static int64_t gemv_parts(int64_t rows, int64_t threads) {
    if (rows >= 256 * threads) return 4 * threads;
    return rows >= 64 * threads ? threads : 1;
}

void gemv(const float *w, const float *x, float *y, int64_t rows, int64_t cols, int64_t threads) {
    struct gemv_args a = {w, x, y, rows, cols};
    run_parts(gemv_part, &a, gemv_parts(rows, threads), threads);
}

void gemv_bf16(const uint16_t *w, const float *x, float *y, int64_t rows, int64_t cols, int64_t threads) {
    struct gemv_args a = {w, x, y, rows, cols, NULL};
#ifdef GEMV_BF16_XPERM
    float stack[4096];
    float *xperm = cols <= 4096 ? stack : malloc(sizeof(float) * (size_t)cols);
    if (!xperm) return; /* out of memory for a few KB: y keeps what it had */
    for (int64_t b = 0; b + 16 <= cols; b += 16)
        for (int i = 0; i < 8; i++) xperm[b + i] = x[b + 2 * i], xperm[b + 8 + i] = x[b + 2 * i + 1];
    a.xperm = xperm;
#endif
    run_parts(GEMV_BF16_PART, &a, gemv_parts(rows, threads), threads);
#ifdef GEMV_BF16_XPERM
    if (xperm != stack) free(xperm);
#endif
}

/* dst[i] = float32 of the bfloat16 bits src[i], for i in [i0, i1): prefill widens a weight matrix
 * for BLAS, a token lookup widens embedding rows. */
void widen_bf16(const uint16_t *restrict src, float *restrict dst, int64_t i0, int64_t i1) {
#pragma omp simd
    for (int64_t i = i0; i < i1; i++) dst[i] = weight_at(src, i, 1);
}
