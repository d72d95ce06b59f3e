/* Decode matvec for MLX affine-quantized weights with int8 activations: the opt-in precision "int8"
 * (numpy_quant.py). The exact path (kernels_quant.c) widens every weight to float and is bound by that
 * work (~13-14 G weights/s per core); here the products are integer, as llama.cpp's Q8_0/Q4_0 are.
 *
 * Maths. Weight w = s_g * q + b_g (q unsigned, 0..255 or 0..15; s, b per group g of 32/64/128 columns).
 * x is quantized once per call, per block of 32 columns: d_k = max|x| / 127, xq = round(x / d_k) in
 * -127..127 (never -128: the 8-bit sign trick below relies on it). Then, with B(g) the blocks of group g,
 *     y = sum_g s_g * sum_{k in B(g)} d_k * sum_{i in k} q_i * xq_i  +  b_g * sum_{i in g} x_i,
 * the integer sums exact in int32 (at most 32 * 255 * 127 per block) and the bias term on the float x
 * (exact up to float rounding). The only change from the exact product is xq * d_k in place of x.
 *
 * Paths: AVX2 (maddubs + madd, one instruction per 32 multiply-adds) and a portable C loop over the same
 * quantized x. Both sum the same integers per block; they differ only in the order of float additions.
 * Rows are split over kernels.c's pool (run_parallel).
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "kernels.h"

#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#include <immintrin.h>
#define Q8ACT_AVX2 1
#endif

#define AI inline __attribute__((always_inline))

static AI float coef_at(const void *p, int64_t i, int64_t kind) { /* scale or bias: f32, f16, bf16 bits */
    if (kind == 0) return ((const float *)p)[i];
    const uint16_t h = ((const uint16_t *)p)[i];
    uint32_t bits;
    if (kind == 2) {
        bits = (uint32_t)h << 16;
    } else { /* float16: one instruction with F16C (the branches below cost more than a group's dots) */
#ifdef Q8ACT_AVX2
        return _cvtsh_ss(h);
#endif
        const uint32_t sign = (uint32_t)(h & 0x8000u) << 16, exp = (h >> 10) & 0x1fu, man = h & 0x3ffu;
        if (exp == 0) {
            const float f = (float)man * (1.0f / 16777216.0f);
            memcpy(&bits, &f, sizeof bits);
            bits |= sign;
        } else {
            bits = sign | (exp == 0x1f ? 0x7f800000u | (man << 13) : ((exp + 112u) << 23) | (man << 13));
        }
    }
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

/* x quantized per block of 32: q [cols] (natural order), d [cols / 32]; q8_back [8 * blocks]: per block
 * [128 * sum(xq), 0 x 7] (the 8-bit sign trick's correction); q4_perm: per 64 columns the even-indexed
 * xq then the odd-indexed ones (the order of a 32-byte load's low and high nibbles); q4_d [8 per 64
 * columns]: the two blocks' d, four lanes each. */
struct act {
    int8_t *q, *q4_perm;
    float *d, *q4_d, *xsum;
    int32_t *q8_back;
};

struct q8act_args {
    const uint32_t *w;
    const void *scales, *biases;
    struct act x;
    float *y;
    int64_t kind, rows, cols, group, bits;
};

/* d [cols / 32] and q [cols] of x (cols a multiple of 32): the one quantizer both paths read. */
void q8act_quantize(const float *x, int64_t cols, int8_t *q, float *d) {
    for (int64_t k0 = 0; k0 < cols; k0 += 32) {
        float amax = 0.0f;
        for (int i = 0; i < 32; i++) amax = x[k0 + i] > amax ? x[k0 + i] : (-x[k0 + i] > amax ? -x[k0 + i] : amax);
        const float dk = amax / 127.0f, inv = dk > 0.0f ? 1.0f / dk : 0.0f;
        d[k0 / 32] = dk;
        for (int i = 0; i < 32; i++) {
            const float v = __builtin_rintf(x[k0 + i] * inv); /* round half to even, as numpy's rint */
            q[k0 + i] = (int8_t)(v > 127.0f ? 127.0f : (v < -127.0f ? -127.0f : v));
        }
    }
}

/* One row in plain C: the portable path, and rows of a 4-bit weight whose columns are not a multiple of
 * 64. q of value k: bits [(k % per_word) * bits, ...) of word k / per_word. */
static float row_portable(const struct q8act_args *a, int64_t r) {
    const int64_t bits = a->bits, per_word = 32 / bits, groups = a->cols / a->group;
    const uint32_t mask = (1u << bits) - 1u, *w = a->w + r * (a->cols / per_word);
    float total = 0.0f;
    for (int64_t g = 0; g < groups; g++) {
        float dot = 0.0f;
        for (int64_t k0 = g * a->group; k0 < (g + 1) * a->group; k0 += 32) {
            int32_t sum = 0;
            for (int64_t k = k0; k < k0 + 32; k++)
                sum += (int32_t)((w[k / per_word] >> ((k % per_word) * bits)) & mask) * a->x.q[k];
            dot += (float)sum * a->x.d[k0 / 32];
        }
        const int64_t at = r * groups + g;
        total += coef_at(a->scales, at, a->kind) * dot + coef_at(a->biases, at, a->kind) * a->x.xsum[g];
    }
    return total;
}

static void portable_part(void *ctx, int64_t part, int64_t parts) {
    const struct q8act_args *a = ctx;
    for (int64_t r = a->rows * part / parts; r < a->rows * (part + 1) / parts; r++) a->y[r] = row_portable(a, r);
}

#ifdef Q8ACT_AVX2
#ifndef Q8ACT_AHEAD
#define Q8ACT_AHEAD 32 /* rows ahead to prefetch into L2, as kernels_quant.c (its measurements) */
#endif

static AI float hsum8(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    return _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)));
}

static AI __m256 coef8(const void *p, int64_t i, int64_t kind) { /* eight scales or biases as floats */
    if (kind == 0) return _mm256_loadu_ps((const float *)p + i);
    const __m128i h = _mm_loadu_si128((const __m128i *)((const uint16_t *)p + i));
    if (kind == 1) return _mm256_cvtph_ps(h);
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}

/* sum_g b_g * xsum_g of one row: the bias term, eight groups per step. */
static AI float bias_dot(const struct q8act_args *a, int64_t r) {
    const int64_t groups = a->cols / a->group, at = r * groups;
    __m256 acc = _mm256_setzero_ps();
    int64_t g = 0;
    for (; g + 8 <= groups; g += 8)
        acc = _mm256_fmadd_ps(coef8(a->biases, at + g, a->kind), _mm256_loadu_ps(a->x.xsum + g), acc);
    float total = hsum8(acc);
    for (; g < groups; g++) total += coef_at(a->biases, at + g, a->kind) * a->x.xsum[g];
    return total;
}

/* Scales of groups [g0, g0 + n) of row r as floats (n <= SPAN), eight per step: a broadcast from this
 * buffer is one load, where converting a 16-bit scale per group per row cost four instructions. */
#define SPAN 64
static AI void span_scales(const struct q8act_args *a, int64_t r, int64_t g0, int64_t n, float *out) {
    const int64_t at = r * (a->cols / a->group) + g0;
    int64_t g = 0;
    for (; g + 8 <= n; g += 8) _mm256_storeu_ps(out + g, coef8(a->scales, at + g, a->kind));
    for (; g < n; g++) out[g] = coef_at(a->scales, at + g, a->kind);
}

/* 32 8-bit q (bytes, 0..255) times 32 xq: 8 int32 lanes, lane j = sum over values 4j..4j+3.
 * maddubs multiplies unsigned by signed bytes and adds pairs into int16 with saturation; q * xq pairs
 * reach 2 * 255 * 127 = 64770, over 32767. So it multiplies |q - 128| (0..128 as unsigned) by xq with
 * the sign of q - 128 (-127..127: xq is never -128, so negating it cannot overflow): pairs are at most
 * 2 * 128 * 127 = 32512 <= 32767, never saturated. That is (q - 128) * xq; the caller adds the block's
 * 128 * sum(xq) back (q8_back), exactly, in int32. */
static AI __m256i q8_dot32(__m256i q, __m256i xq) {
    const __m256i centred = _mm256_xor_si256(q, _mm256_set1_epi8((char)0x80));
    const __m256i magnitude = _mm256_sign_epi8(centred, centred), signed_x = _mm256_sign_epi8(xq, centred);
    return _mm256_madd_epi16(_mm256_maddubs_epi16(magnitude, signed_x), _mm256_set1_epi16(1));
}

/* NR rows of an 8-bit weight from row r (each x load serves NR rows), group fixed at compile time. */
static AI void q8_rows(const struct q8act_args *a, int64_t r, const int NR, const int64_t group) {
    const int64_t cols = a->cols, groups = cols / group;
    const uint8_t *row[4];
    float scale[4][SPAN];
    __m256 acc[4];
    for (int j = 0; j < NR; j++) row[j] = (const uint8_t *)a->w + (r + j) * cols, acc[j] = _mm256_setzero_ps();
    for (int64_t g0 = 0; g0 < groups; g0 += SPAN) {
        const int64_t n = groups - g0 < SPAN ? groups - g0 : SPAN;
        for (int j = 0; j < NR; j++) span_scales(a, r + j, g0, n, scale[j]);
        for (int64_t g = g0; g < g0 + n; g++) {
            const int64_t k0 = g * group;
            for (int64_t line = 0; line < group; line += 64)
                for (int j = 0; j < NR; j++) __builtin_prefetch(row[j] + Q8ACT_AHEAD * cols + k0 + line, 0, 2);
            __m256 dot[4];
            for (int j = 0; j < NR; j++) dot[j] = _mm256_setzero_ps();
            for (int64_t k = k0; k < k0 + group; k += 32) {
                const __m256i xq = _mm256_loadu_si256((const __m256i *)(a->x.q + k));
                const __m256i back = _mm256_loadu_si256((const __m256i *)(a->x.q8_back + k / 4));
                const __m256 d = _mm256_broadcast_ss(a->x.d + k / 32);
                for (int j = 0; j < NR; j++) {
                    const __m256i q = _mm256_loadu_si256((const __m256i *)(row[j] + k));
                    const __m256i sum = _mm256_add_epi32(q8_dot32(q, xq), back);
                    dot[j] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sum), d, dot[j]);
                }
            }
            for (int j = 0; j < NR; j++)
                acc[j] = _mm256_fmadd_ps(dot[j], _mm256_broadcast_ss(&scale[j][g - g0]), acc[j]);
        }
    }
    for (int j = 0; j < NR; j++) a->y[r + j] = hsum8(acc[j]) + bias_dot(a, r + j);
}

/* 64 4-bit q (one 32-byte load: byte i holds values 2i, low nibble, and 2i + 1) times xq in q4_perm's
 * order: 8 int32 lanes, lanes 0-3 the first block of 32, 4-7 the second. q <= 15, so maddubs pairs are
 * at most 2 * 15 * 127 = 3810 and the two products' sum 7620: no int16 saturation. */
static AI __m256i q4_dot64(__m256i v, __m256i x_even, __m256i x_odd) {
    const __m256i low = _mm256_set1_epi8(15);
    const __m256i even = _mm256_and_si256(v, low), odd = _mm256_and_si256(_mm256_srli_epi16(v, 4), low);
    const __m256i pairs = _mm256_add_epi16(_mm256_maddubs_epi16(even, x_even), _mm256_maddubs_epi16(odd, x_odd));
    return _mm256_madd_epi16(pairs, _mm256_set1_epi16(1));
}

/* The scale of 64 columns: one group's, or for groups of 32 two (four lanes each); s: the first. */
static AI __m256 q4_scale(const float *s, const int64_t group) {
    if (group > 32) return _mm256_broadcast_ss(s);
    return _mm256_set_m128(_mm_broadcast_ss(s + 1), _mm_broadcast_ss(s));
}

/* NR rows of a 4-bit weight (columns a multiple of 64) from row r, group fixed at compile time. */
static AI void q4_rows(const struct q8act_args *a, int64_t r, const int NR, const int64_t group) {
    const int64_t cols = a->cols, bytes = cols / 2, step = group > 64 ? group : 64;
    const int64_t span_cols = SPAN * group; /* a multiple of step */
    const uint8_t *row[4];
    float scale[4][SPAN];
    __m256 acc[4];
    for (int j = 0; j < NR; j++) row[j] = (const uint8_t *)a->w + (r + j) * bytes, acc[j] = _mm256_setzero_ps();
    for (int64_t c0 = 0; c0 < cols; c0 += span_cols) {
        const int64_t g0 = c0 / group, c1 = cols - c0 < span_cols ? cols : c0 + span_cols;
        for (int j = 0; j < NR; j++) span_scales(a, r + j, g0, (c1 - c0) / group, scale[j]);
        for (int64_t k0 = c0; k0 < c1; k0 += step) { /* one group, or two of 32 */
            for (int64_t line = 0; line < step / 2; line += 64)
                for (int j = 0; j < NR; j++) __builtin_prefetch(row[j] + Q8ACT_AHEAD * bytes + k0 / 2 + line, 0, 2);
            __m256 dot[4];
            for (int j = 0; j < NR; j++) dot[j] = _mm256_setzero_ps();
            for (int64_t k = k0; k < k0 + step; k += 64) {
                const __m256i x_even = _mm256_loadu_si256((const __m256i *)(a->x.q4_perm + k));
                const __m256i x_odd = _mm256_loadu_si256((const __m256i *)(a->x.q4_perm + k + 32));
                const __m256 d = _mm256_loadu_ps(a->x.q4_d + k / 8);
                for (int j = 0; j < NR; j++) {
                    const __m256i v = _mm256_loadu_si256((const __m256i *)(row[j] + k / 2));
                    dot[j] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(q4_dot64(v, x_even, x_odd)), d, dot[j]);
                }
            }
            for (int j = 0; j < NR; j++)
                acc[j] = _mm256_fmadd_ps(dot[j], q4_scale(&scale[j][k0 / group - g0], group), acc[j]);
        }
    }
    for (int j = 0; j < NR; j++) a->y[r + j] = hsum8(acc[j]) + bias_dot(a, r + j);
}

#define Q8ACT_CASE(BITS, GROUP, ROWS)                                                                     \
    if (a->bits == BITS && a->group == GROUP) {                                                           \
        for (int64_t q = q0; q < q1; q++) ROWS(a, 4 * q, 4, GROUP);                                       \
        if (part == parts - 1)                                                                            \
            for (int64_t r = 4 * quads; r < a->rows; r++) ROWS(a, r, 1, GROUP);                           \
        return;                                                                                           \
    }

static void avx2_part(void *ctx, int64_t part, int64_t parts) {
    const struct q8act_args *a = ctx;
    const int64_t quads = a->rows / 4, q0 = quads * part / parts, q1 = quads * (part + 1) / parts;
    Q8ACT_CASE(8, 32, q8_rows) Q8ACT_CASE(8, 64, q8_rows) Q8ACT_CASE(8, 128, q8_rows)
    if (a->cols % 64 == 0) {
        Q8ACT_CASE(4, 32, q4_rows) Q8ACT_CASE(4, 64, q4_rows) Q8ACT_CASE(4, 128, q4_rows)
    }
    for (int64_t r = 4 * q0; r < (part == parts - 1 ? a->rows : 4 * q1); r++) a->y[r] = row_portable(a, r);
}
#endif

/* The x side of a call: quantized blocks, group sums, and the AVX2 layouts. `mem` holds 4 * cols bytes. */
static void prepare(const float *x, int64_t cols, int64_t group, struct act *s, char *mem) {
    const int64_t blocks = cols / 32, groups = cols / group;
    s->q = (int8_t *)mem, s->q4_perm = s->q + cols;
    s->d = (float *)(mem + 2 * cols), s->q4_d = s->d + blocks, s->xsum = s->q4_d + 4 * blocks;
    s->q8_back = (int32_t *)(s->xsum + groups);
    q8act_quantize(x, cols, s->q, s->d);
    for (int64_t g = 0; g < groups; g++) {
        float sum = 0.0f;
        for (int64_t k = g * group; k < (g + 1) * group; k++) sum += x[k];
        s->xsum[g] = sum;
    }
    for (int64_t k0 = 0; k0 + 64 <= cols; k0 += 64)
        for (int i = 0; i < 32; i++)
            s->q4_perm[k0 + i] = s->q[k0 + 2 * i], s->q4_perm[k0 + 32 + i] = s->q[k0 + 2 * i + 1];
    for (int64_t b = 0; b < blocks; b++) {
        int32_t sum = 0;
        for (int i = 0; i < 32; i++) sum += s->q[32 * b + i];
        s->q4_d[b / 2 * 8 + b % 2 * 4 + 0] = s->q4_d[b / 2 * 8 + b % 2 * 4 + 1] = s->d[b];
        s->q4_d[b / 2 * 8 + b % 2 * 4 + 2] = s->q4_d[b / 2 * 8 + b % 2 * 4 + 3] = s->d[b];
        memset(s->q8_back + 8 * b, 0, 8 * sizeof(int32_t));
        s->q8_back[8 * b] = 128 * sum;
    }
}

/* Bytes prepare() lays out: int8 q and q4_perm (cols each); float d (one per block), q4_d (four per
 * block), xsum (one per group: a block at most); int32 q8_back (eight per block). */
static size_t prepare_bytes(int64_t cols) {
    const int64_t blocks = cols / 32;
    return (size_t)(2 * cols + 4 * (blocks + 4 * blocks + blocks) + 4 * 8 * blocks);
}

/* y [rows] = W x for a quantized W [rows, cols] (cols a multiple of 32) with x quantized to int8 per
 * block of 32; portable != 0 forces the portable loop (for the tests). Same arguments as gemv_quant. */
void gemv_q8act(const uint32_t *w, const void *scales, const void *biases, int64_t kind, const float *x, float *y,
                int64_t rows, int64_t cols, int64_t group, int64_t bits, int64_t threads, int64_t portable) {
    _Alignas(64) char stack[32 * 1024]; /* x of up to 8738 columns */
    const size_t need = prepare_bytes(cols);
    char *mem = need <= sizeof stack ? stack : malloc(need);
    if (!mem) return; /* out of memory: y keeps what it had */
    struct q8act_args a = {w, scales, biases, {0}, y, kind, rows, cols, group, bits};
    prepare(x, cols, group, &a.x, mem);
    task_fn fn = portable_part;
#ifdef Q8ACT_AVX2
    if (!portable) fn = avx2_part;
#endif
    (void)portable;
    run_parallel(fn, &a, rows >= 64 * threads ? threads : 1);
    if (mem != stack) free(mem);
}
