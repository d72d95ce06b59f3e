/* MLX affine-quantized weights on the numpy backend, used packed (numpy_quant.py).
 *
 * Layout (as mlx's mx.quantize writes it): a [rows, cols] weight is uint32 words [rows, cols * bits / 32],
 * value k of a row at bits [(k % per_word) * bits, ...) of word k / per_word (per_word = 32 / bits);
 * scales and biases [rows, cols / group], float32, float16 or bfloat16 (`kind` 0, 1, 2: kept as the
 * checkpoint has them, since they are 1/8-1/4 of a 4-bit weight's bytes). Value = scale * q + bias.
 *
 * Decode: y[r] = sum_g scale[r,g] * dot(q[r, g], x[g]) + bias[r,g] * sum(x[g]), the group sums of x
 * computed once per call; q is widened to float in registers, never written out, so a step streams only
 * the packed bytes. Exact float arithmetic (no quantized activations), so the result equals the
 * dequantized weight's product to float32 rounding: the 1e-4 parity with the dequantized twin holds.
 * Paths: AVX2+FMA (x86), else a portable C loop (also callable on x86, for the tests to compare).
 * NEON and AVX-512 VNNI paths are not written: VNNI needs integer activations, which would break parity.
 *
 * Prefill: `dequant_rows` writes float32 rows into numpy_quant.py's reused buffer for BLAS.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "kernels.h"

#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#include <immintrin.h>
#define QUANT_AVX2 1
#endif

static inline float half_to_float(uint16_t h) {
    const uint32_t sign = (uint32_t)(h & 0x8000u) << 16, exp = (h >> 10) & 0x1fu, man = h & 0x3ffu;
    uint32_t bits;
    if (exp == 0x1f) {
        bits = sign | 0x7f800000u | (man << 13);
    } else if (exp == 0) { /* zero or subnormal: man * 2^-24, exact in float32 */
        const float f = (float)man * (1.0f / 16777216.0f);
        memcpy(&bits, &f, sizeof bits);
        bits |= sign;
    } else {
        bits = sign | ((exp + 112u) << 23) | (man << 13);
    }
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

static inline __attribute__((always_inline)) float scale_at(const void *p, int64_t i, int64_t kind) {
    if (kind == 0) return ((const float *)p)[i];
    const uint16_t h = ((const uint16_t *)p)[i];
    if (kind == 2) {
        const uint32_t bits = (uint32_t)h << 16;
        float f;
        memcpy(&f, &bits, sizeof f);
        return f;
    }
#ifdef QUANT_AVX2
    return _cvtsh_ss(h);
#else
    return half_to_float(h);
#endif
}

struct quant_args {
    const uint32_t *w;
    const void *scales, *biases;
    const float *x, *xsum;
    const float *xperm; /* 4-bit on AVX2: x in blocks of 64 reordered to match the words (see q4_rows) */
    float *y;
    int64_t kind, rows, cols, group, bits;
};

/* One row, any bits dividing 32: the portable path, and the rows after the last group of four. */
static float dot_row_portable(const struct quant_args *a, int64_t r) {
    const int64_t bits = a->bits, per_word = 32 / bits, groups = a->cols / a->group;
    const uint32_t mask = (1u << bits) - 1u;
    const uint32_t *w = a->w + r * (a->cols / per_word);
    float total = 0.0f;
    for (int64_t g = 0; g < groups; g++) {
        float d = 0.0f;
        const int64_t k0 = g * a->group;
#pragma omp simd reduction(+ : d)
        for (int64_t k = k0; k < k0 + a->group; k++)
            d += (float)((w[k / per_word] >> ((k % per_word) * bits)) & mask) * a->x[k];
        total += scale_at(a->scales, r * groups + g, a->kind) * d + scale_at(a->biases, r * groups + g, a->kind) * a->xsum[g];
    }
    return total;
}

static void portable_part(void *ctx, int64_t part, int64_t parts) {
    const struct quant_args *a = ctx;
    const int64_t r0 = a->rows * part / parts, r1 = a->rows * (part + 1) / parts;
    for (int64_t r = r0; r < r1; r++) a->y[r] = dot_row_portable(a, r);
}

#ifdef QUANT_AVX2
static inline float hsum(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* Eight values k..k+7 of a row as floats. 8-bit: two words, bytes in order. 4-bit: one word, nibble j
 * shifted down by 4j in lane j. */
static inline __attribute__((always_inline)) __m256 eight(const uint32_t *row, int64_t k, const int bits,
                                                          __m256i shifts, __m256i mask) {
    if (bits == 8) return _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(row + k / 4))));
    const __m256i word = _mm256_set1_epi32((int)row[k / 8]);
    return _mm256_cvtepi32_ps(_mm256_and_si256(_mm256_srlv_epi32(word, shifts), mask));
}

/* NR rows from row r (NR = 4: each load of x serves four rows), bits and group fixed at compile time so
 * the group loop unrolls. Each step asks for the same columns of the rows PREFETCH_AHEAD rows on, as
 * gemv_bf16 does: the widening keeps the hardware prefetcher behind otherwise (6.3 -> 8.5 GB/s). */
#ifndef PREFETCH_AHEAD
#define PREFETCH_AHEAD 32
#endif
#ifndef PREFETCH_LOCALITY
#define PREFETCH_LOCALITY 2 /* into L2, as gemv_bf16 (kernels.c): 8.5 -> 13-15 GB/s on one core, 8-bit */
#endif
static inline __attribute__((always_inline)) void rows_avx2(const struct quant_args *a, int64_t r, const int NR,
                                                            const int bits, const int64_t group) {
    const int64_t words = a->cols * bits / 32, groups = a->cols / group;
    const __m256i shifts = _mm256_setr_epi32(0, 4, 8, 12, 16, 20, 24, 28), mask = _mm256_set1_epi32(15);
    const uint32_t *row[4];
    const float *x = a->x;
    __m256 acc[4];
    float bias[4] = {0};
    for (int j = 0; j < NR; j++) row[j] = a->w + (r + j) * words, acc[j] = _mm256_setzero_ps();
    for (int64_t g = 0; g < groups; g++) {
        const int64_t k0 = g * group;
        const int64_t word0 = k0 * bits / 32, group_words = group * bits / 32;
        for (int64_t wd = 0; wd < group_words; wd += 16) /* one 64-byte line per row */
            for (int j = 0; j < NR; j++) __builtin_prefetch(row[j] + PREFETCH_AHEAD * words + word0 + wd, 0, PREFETCH_LOCALITY);
        __m256 d[4];
        for (int j = 0; j < NR; j++) d[j] = _mm256_setzero_ps();
        for (int64_t k = k0; k < k0 + group; k += 8) {
            const __m256 xv = _mm256_loadu_ps(x + k);
            for (int j = 0; j < NR; j++) d[j] = _mm256_fmadd_ps(eight(row[j], k, bits, shifts, mask), xv, d[j]);
        }
        const float xs = a->xsum[g];
        for (int j = 0; j < NR; j++) {
            const int64_t at = (r + j) * groups + g;
            acc[j] = _mm256_fmadd_ps(d[j], _mm256_set1_ps(scale_at(a->scales, at, a->kind)), acc[j]);
            bias[j] += scale_at(a->biases, at, a->kind) * xs;
        }
    }
    for (int j = 0; j < NR; j++) a->y[r + j] = hsum(acc[j]) + bias[j];
}

/* 4-bit, NR rows from row r, columns a multiple of 64: one 32-byte load is 8 words, lane i holding values
 * 8i..8i+7 of a block of 64, nibble n of every lane is one shift and one mask away, and multiplies
 * xperm[64b + 8n + i] = x[64b + 8i + n]. Against a broadcast word per 8 values: fewer operations per
 * value (the 4-bit product is bound by them, not by memory). A lane's 8 values are in one group, so
 * groups of 32 take a scale vector of two halves. */
static inline __attribute__((always_inline)) void q4_rows(const struct quant_args *a, int64_t r, const int NR,
                                                          const int64_t group) {
    const int64_t words = a->cols / 8, groups = a->cols / group, blocks = a->cols / 64;
    const __m256i mask = _mm256_set1_epi32(15);
    const float *xp = a->xperm;
    const uint32_t *row[4];
    __m256 acc[4];
    for (int j = 0; j < NR; j++) row[j] = a->w + (r + j) * words, acc[j] = _mm256_setzero_ps();
    for (int64_t b = 0; b < blocks; b++) {
        if (b % 2 == 0) /* one 64-byte line per row: two blocks */
            for (int j = 0; j < NR; j++) __builtin_prefetch(row[j] + PREFETCH_AHEAD * words + 8 * b, 0, PREFETCH_LOCALITY);
        __m256i v[4];
        __m256 d[4];
        for (int j = 0; j < NR; j++) v[j] = _mm256_loadu_si256((const __m256i *)(row[j] + 8 * b)), d[j] = _mm256_setzero_ps();
        for (int n = 0; n < 8; n++) {
            const __m256 xv = _mm256_loadu_ps(xp + 64 * b + 8 * n);
            for (int j = 0; j < NR; j++) {
                __m256i q = n == 7 ? _mm256_srli_epi32(v[j], 28) : _mm256_srli_epi32(v[j], 4 * n);
                if (n < 7) q = _mm256_and_si256(q, mask);
                d[j] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(q), xv, d[j]);
            }
        }
        for (int j = 0; j < NR; j++) {
            const int64_t at = (r + j) * groups + 64 * b / group;
            const __m256 sv = group == 32 ? _mm256_set_m128(_mm_set1_ps(scale_at(a->scales, at + 1, a->kind)),
                                                            _mm_set1_ps(scale_at(a->scales, at, a->kind)))
                                          : _mm256_set1_ps(scale_at(a->scales, at, a->kind));
            acc[j] = _mm256_fmadd_ps(d[j], sv, acc[j]);
        }
    }
    for (int j = 0; j < NR; j++) {
        float bias = 0.0f;
        for (int64_t g = 0; g < groups; g++) bias += scale_at(a->biases, (r + j) * groups + g, a->kind) * a->xsum[g];
        a->y[r + j] = hsum(acc[j]) + bias;
    }
}

#define Q4_CASE(GROUP)                                                                                    \
    if (a->bits == 4 && a->group == GROUP && a->xperm) {                                                  \
        for (int64_t q = q0; q < q1; q++) q4_rows(a, 4 * q, 4, GROUP);                                    \
        if (part == parts - 1)                                                                            \
            for (int64_t r = 4 * quads; r < a->rows; r++) q4_rows(a, r, 1, GROUP);                        \
        return;                                                                                           \
    }

#define ROWS_CASE(BITS, GROUP)                                                                            \
    if (a->bits == BITS && a->group == GROUP) {                                                           \
        for (int64_t q = q0; q < q1; q++) rows_avx2(a, 4 * q, 4, BITS, GROUP);                            \
        if (part == parts - 1)                                                                            \
            for (int64_t r = 4 * quads; r < a->rows; r++) rows_avx2(a, r, 1, BITS, GROUP);                \
        return;                                                                                           \
    }

static void avx2_part(void *ctx, int64_t part, int64_t parts) {
    const struct quant_args *a = ctx;
    const int64_t quads = a->rows / 4, q0 = quads * part / parts, q1 = quads * (part + 1) / parts;
    Q4_CASE(32) Q4_CASE(64) Q4_CASE(128)
    ROWS_CASE(8, 32) ROWS_CASE(8, 64) ROWS_CASE(8, 128) ROWS_CASE(4, 32) ROWS_CASE(4, 64) ROWS_CASE(4, 128)
    for (int64_t r = 4 * q0; r < (part == parts - 1 ? a->rows : 4 * q1); r++) a->y[r] = dot_row_portable(a, r);
}
#endif

/* Whether gemv_quant has a vector path on this build (else every call takes the portable one). */
int64_t quant_vector_path(void) {
#ifdef QUANT_AVX2
    return 1;
#else
    return 0;
#endif
}

/* y [rows] = W x for a quantized W [rows, cols]; portable != 0 forces the portable loop. */
void gemv_quant(const uint32_t *w, const void *scales, const void *biases, int64_t kind, const float *x, float *y,
                int64_t rows, int64_t cols, int64_t group, int64_t bits, int64_t threads, int64_t portable) {
    const int64_t groups = cols / group;
    float stack[1024];
    float *xsum = groups <= 1024 ? stack : malloc(sizeof(float) * (size_t)groups);
    if (!xsum) return; /* out of memory for a few KB: y keeps what it had */
    for (int64_t g = 0; g < groups; g++) {
        float s = 0.0f;
#pragma omp simd reduction(+ : s)
        for (int64_t k = g * group; k < (g + 1) * group; k++) s += x[k];
        xsum[g] = s;
    }
    struct quant_args a = {w, scales, biases, x, xsum, NULL, y, kind, rows, cols, group, bits};
    task_fn fn = portable_part;
    float perm_stack[4096], *xperm = NULL;
#ifdef QUANT_AVX2
    if (!portable) fn = avx2_part;
    if (!portable && bits == 4 && cols % 64 == 0) {
        xperm = cols <= 4096 ? perm_stack : malloc(sizeof(float) * (size_t)cols);
        if (xperm)
            for (int64_t b = 0; b < cols; b += 64)
                for (int n = 0; n < 8; n++)
                    for (int i = 0; i < 8; i++) xperm[b + 8 * n + i] = x[b + 8 * i + n];
        a.xperm = xperm; /* NULL (no memory): the broadcast-word loop, which needs no reordering */
    }
#endif
    (void)portable;
    run_parallel(fn, &a, rows >= 64 * threads ? threads : 1);
    if (xsum != stack) free(xsum);
    if (xperm && xperm != perm_stack) free(xperm);
}

/* One row's groups, bits and group fixed at compile time: the inner loop then vectorises (with them
 * as run-time values it did not: measured 0.39 G values/s). */
static inline __attribute__((always_inline)) void dequant_row(const uint32_t *restrict row, const void *scales,
                                                              const void *biases, int64_t kind, float *restrict o,
                                                              int64_t at, int64_t groups, const int bits,
                                                              const int64_t group) {
    const int per_word = 32 / bits;
    const uint32_t mask = (1u << bits) - 1u;
    for (int64_t g = 0; g < groups; g++) {
        const float s = scale_at(scales, at + g, kind), b = scale_at(biases, at + g, kind);
        const uint32_t *restrict wg = row + g * group / per_word;
        float *restrict og = o + g * group;
        for (int64_t wd = 0; wd < group / per_word; wd++) {
            const uint32_t word = wg[wd];
#pragma omp simd
            for (int j = 0; j < per_word; j++) og[wd * per_word + j] = s * (float)((word >> (j * bits)) & mask) + b;
        }
    }
}

/* out[i, :] = float32 of row r0 + i, for rows [r0, r1) of the quantized W (out: [r1 - r0, cols]). */
void dequant_rows(const uint32_t *w, const void *scales, const void *biases, int64_t kind, float *out, int64_t r0,
                  int64_t r1, int64_t cols, int64_t group, int64_t bits) {
    const int64_t groups = cols / group, words = cols * bits / 32;
    for (int64_t r = r0; r < r1; r++) {
        const uint32_t *row = w + r * words;
        float *o = out + (r - r0) * cols;
#define DEQUANT_CASE(BITS, GROUP)                                                                         \
    if (bits == BITS && group == GROUP) {                                                                 \
        dequant_row(row, scales, biases, kind, o, r * groups, groups, BITS, GROUP);                       \
        continue;                                                                                         \
    }
        DEQUANT_CASE(8, 32) DEQUANT_CASE(8, 64) DEQUANT_CASE(8, 128)
        DEQUANT_CASE(4, 32) DEQUANT_CASE(4, 64) DEQUANT_CASE(4, 128)
        const int64_t per_word = 32 / bits;
        const uint32_t mask = (1u << bits) - 1u;
        for (int64_t g = 0; g < groups; g++) { /* any other bits dividing 32 */
            const float s = scale_at(scales, r * groups + g, kind), b = scale_at(biases, r * groups + g, kind);
            for (int64_t k = g * group; k < (g + 1) * group; k++)
                o[k] = s * (float)((row[k / per_word] >> ((k % per_word) * bits)) & mask) + b;
        }
    }
}
