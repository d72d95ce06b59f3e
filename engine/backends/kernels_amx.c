/* Precision "bf16" (engine/precision.py): a prefill's products with bfloat16 weights on the CPU's
 * bfloat16 matrix unit (Intel AMX-BF16), the activations rounded to bfloat16 (to nearest, ties to
 * even, as torch rounds them), the sums kept in float32.
 *
 * y [m, n] = x [m, k] @ w.T for w [n, k], the checkpoint's bfloat16 bits as they are: the weight is
 * the tile multiplication's left operand (16 of its rows, 32 columns, loaded straight from the matrix
 * with the row stride), x the right one, repacked once per call into the pairs layout the unit reads
 * (for each 32 columns: 16 rows of pairs (x[t][2r], x[t][2r + 1]) for 16 tokens t). Each step holds
 * four accumulator tiles: 32 weight rows x 32 tokens. So the weight is never copied; what is written
 * per call is x in bfloat16 (m x k x 2 bytes) and y.
 *
 * Built when the compiler targets AMX (-march=native on a CPU that has it); elsewhere `bf16_gemm_ready`
 * says no and the backend keeps the exact float32 path. Linux hands out the tile registers' state only
 * to a process that asks for it (arch_prctl ARCH_REQ_XCOMP_PERM): refused, the same.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "kernels.h"

/* float32 -> bfloat16 bits, round to nearest even; a NaN stays a (quiet) NaN. */
static inline uint16_t round_bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40);
    return (uint16_t)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

static inline float bf16_float(uint16_t bits) {
    const uint32_t u = (uint32_t)bits << 16;
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

/* x rounded to bfloat16 exactly as the tiles see it, times bfloat16 weights, over columns [k0, k1):
 * the rows and columns a tile does not cover (n % 32, k % 32) and the portable reference. */
static float rounded_dot(const uint16_t *w_row, const float *x_row, int64_t k0, int64_t k1) {
    float s = 0.0f;
    for (int64_t i = k0; i < k1; i++) s += bf16_float(w_row[i]) * bf16_float(round_bf16(x_row[i]));
    return s;
}

#if defined(__AMX_TILE__) && defined(__AMX_BF16__) && defined(__linux__)
#include <immintrin.h>
#include <sys/syscall.h>
#include <unistd.h>

#define ARCH_REQ_XCOMP_PERM 0x1023
#define XFEATURE_XTILEDATA 18
#define TOKENS_PER_CHUNK 256 /* tokens whose packed activations (256 x k x 2 bytes) stay in L2 */

static int permission; /* 0: not asked yet, 1: granted, -1: refused */

static int tiles_granted(void) {
    int state = __atomic_load_n(&permission, __ATOMIC_ACQUIRE);
    if (state == 0) {
        state = syscall(SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) == 0 ? 1 : -1;
        __atomic_store_n(&permission, state, __ATOMIC_RELEASE);
    }
    return state == 1;
}

struct tile_config {
    uint8_t palette, start_row, reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
};

/* Tiles 0-3 accumulate (float32, 16 x 16), 4-5 hold weight rows, 6-7 packed tokens: all 16 x 64 bytes. */
static void configure_tiles(void) {
    struct tile_config config;
    memset(&config, 0, sizeof config);
    config.palette = 1;
    for (int t = 0; t < 8; t++) config.colsb[t] = 64, config.rows[t] = 16;
    _tile_loadconfig(&config);
}

struct amx_args {
    const uint16_t *w;
    const float *x;
    uint16_t *xp; /* packed: [m_pad / 16][k / 32][16 pairs][16 tokens][2] */
    float *y;
    int64_t m, n, k, blocks_k, m_pad;
};

static void pack_part(void *ctx, int64_t part, int64_t parts) {
    const struct amx_args *a = ctx;
    const int64_t groups = a->m_pad / 16, g0 = groups * part / parts, g1 = groups * (part + 1) / parts;
    for (int64_t g = g0; g < g1; g++)
        for (int64_t t = 0; t < 16; t++) {
            const int64_t token = 16 * g + t;
            uint16_t *dst = a->xp + g * a->blocks_k * 512 + 2 * t;
            const float *src = a->x + token * a->k;
            for (int64_t kb = 0; kb < a->blocks_k; kb++)
                for (int64_t i = 0; i < 32; i++) /* padding tokens are zeros */
                    dst[kb * 512 + (i / 2) * 32 + (i & 1)] = token < a->m ? round_bf16(src[32 * kb + i]) : 0;
        }
}

/* The four accumulators of weight rows [n0, n0 + 32) x tokens [t0, t0 + 32) into y, transposed
 * (a tile holds y's columns as its rows), with the columns past the last whole 32 added. */
static void store_block(const struct amx_args *a, int64_t n0, int64_t t0, int both) {
    float c[4][16][16] __attribute__((aligned(64)));
    _tile_stored(0, c[0], 64);
    _tile_stored(1, c[1], 64);
    if (both) {
        _tile_stored(2, c[2], 64);
        _tile_stored(3, c[3], 64);
    }
    const int64_t k_done = 32 * a->blocks_k;
    for (int half_t = 0; half_t < 1 + both; half_t++)
        for (int64_t j = 0; j < 16; j++) {
            const int64_t token = t0 + 16 * half_t + j;
            if (token >= a->m) break;
            float *row = a->y + token * a->n + n0;
            for (int half_n = 0; half_n < 2; half_n++)
                for (int64_t i = 0; i < 16; i++) {
                    const int64_t r = 16 * half_n + i;
                    float s = c[2 * half_t + half_n][i][j];
                    if (k_done < a->k) s += rounded_dot(a->w + (n0 + r) * a->k, a->x + token * a->k, k_done, a->k);
                    row[r] = s;
                }
        }
}

static void amx_part(void *ctx, int64_t part, int64_t parts) {
    const struct amx_args *a = ctx;
    const int64_t pairs = a->n / 32, p0 = pairs * part / parts, p1 = pairs * (part + 1) / parts;
    const int64_t stride = a->k * 2, kbs = a->blocks_k;
    configure_tiles();
    for (int64_t chunk = 0; chunk < a->m_pad; chunk += TOKENS_PER_CHUNK) {
        const int64_t chunk_end = chunk + TOKENS_PER_CHUNK < a->m_pad ? chunk + TOKENS_PER_CHUNK : a->m_pad;
        for (int64_t p = p0; p < p1; p++) {
            const uint16_t *w0 = a->w + 32 * p * a->k, *w1 = w0 + 16 * a->k;
            for (int64_t t0 = chunk; t0 < chunk_end; t0 += 32) {
                const int both = t0 + 16 < chunk_end;
                const uint16_t *b0 = a->xp + (t0 / 16) * kbs * 512, *b1 = b0 + kbs * 512;
                _tile_zero(0);
                _tile_zero(1);
                _tile_zero(2);
                _tile_zero(3);
                for (int64_t kb = 0; kb < kbs; kb++) {
                    _tile_loadd(4, w0 + 32 * kb, stride);
                    _tile_loadd(5, w1 + 32 * kb, stride);
                    _tile_loadd(6, b0 + 512 * kb, 64);
                    _tile_dpbf16ps(0, 4, 6);
                    _tile_dpbf16ps(1, 5, 6);
                    if (both) {
                        _tile_loadd(7, b1 + 512 * kb, 64);
                        _tile_dpbf16ps(2, 4, 7);
                        _tile_dpbf16ps(3, 5, 7);
                    }
                }
                store_block(a, 32 * p, t0, both);
            }
        }
    }
    _tile_release();
    if (part == parts - 1) /* the rows after the last whole 32 */
        for (int64_t r = 32 * pairs; r < a->n; r++)
            for (int64_t t = 0; t < a->m; t++) a->y[t * a->n + r] = rounded_dot(a->w + r * a->k, a->x + t * a->k, 0, a->k);
}

int64_t bf16_gemm_ready(void) { return tiles_granted(); }

/* 0 done; 1 no tiles (not granted); 2 no memory for the packed activations. */
int64_t gemm_bf16_amx(const uint16_t *w, const float *x, float *y, int64_t m, int64_t n, int64_t k,
                      int64_t threads) {
    if (!tiles_granted()) return 1;
    struct amx_args a = {w, x, NULL, y, m, n, k, k / 32, (m + 15) / 16 * 16};
    a.xp = aligned_alloc(64, (size_t)(a.m_pad * a.blocks_k * 32 * 2 + 64));
    if (!a.xp) return 2;
    run_parts(pack_part, &a, a.m_pad / 16 < threads ? 1 : threads, threads);
    const int64_t pairs = n / 32;
    const int64_t parts = pairs >= 16 * threads ? 4 * threads : (pairs >= threads ? threads : 1);
    run_parts(amx_part, &a, parts, threads);
    free(a.xp);
    return 0;
}

#else
int64_t bf16_gemm_ready(void) { return 0; }

int64_t gemm_bf16_amx(const uint16_t *w, const float *x, float *y, int64_t m, int64_t n, int64_t k,
                      int64_t threads) {
    (void)w, (void)x, (void)y, (void)m, (void)n, (void)k, (void)threads;
    return 1;
}
#endif

/* The same products in plain C, one at a time: what the tiles must agree with (tests). */
void gemm_bf16_rounded_reference(const uint16_t *w, const float *x, float *y, int64_t m, int64_t n, int64_t k) {
    for (int64_t t = 0; t < m; t++)
        for (int64_t r = 0; r < n; r++) y[t * n + r] = rounded_dot(w + r * k, x + t * k, 0, k);
}
