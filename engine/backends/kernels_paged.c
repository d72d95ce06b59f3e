/* Attention over a paged KV cache, and the guard that keeps file-backed pages from crashing the process.
 *
 * A page holds the keys (or values) of `cap` consecutive positions for every layer and kv head, laid out
 * as the KV block format stores them: [layers, kv_heads, cap, head_dim] float32 (or float16). Page i starts at
 * position start[i]; the pages of a cache cover positions 0.. back to back, so row s of kv head j in
 * layer l lives in the page with start[i] <= s < start[i] + cap[i] at
 *     base[i] + ((l * Hkv + j) * cap[i] + (s - start[i])) * D.
 * Pages are separate buffers (an mmapped block file, bytes received from Redis, a fresh writable page),
 * so nothing is copied to grow a cache or to restore one.
 *
 * attend_paged is attend_one of kernels.c reading its rows through that table: the same operations in
 * the same order, so its results equal the contiguous cache's bit for bit. gather_pages copies one
 * layer's rows into a contiguous [Hkv, S, D] scratch for the prefill, whose BLAS products need one.
 * The _f16 variants read float16 pages (half the bytes a long decode streams), widening as they load.
 */
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "kernels.h"
#if defined(__F16C__) && defined(__AVX__)
#include <immintrin.h>
#endif

/* The same polynomial as kernels.c's exp_poly (static there): equal bits need the same exp. */
static inline float exp_poly(float x) {
    x = x < -87.0f ? -87.0f : (x > 88.0f ? 88.0f : x);
    float n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
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

struct page_table {
    const int64_t *kbase, *vbase; /* addresses of each page's keys and values (layer 0, head 0, row 0) */
    const int64_t *start, *cap;   /* first position and rows of each page */
    int64_t pages, layer, Hkv, S, D;
};

/* float16 pages (an opt-in cache dtype, llama.cpp's default): each element is widened to float32 as it
 * is loaded (F16C's vcvtph2ps where the CPU has it; _Float16 conversions elsewhere, or the bit
 * arithmetic below where the compiler has no _Float16) and everything after is the float32 path, so
 * attention over float16 pages equals the float32 path over the same rounded numbers bit for bit. */
#if defined(__FLT16_MAX__)
typedef _Float16 half;
static inline float widen_half(half h) { return (float)h; }
#else
typedef uint16_t half;
static inline float widen_half(half h) {
    const uint32_t sign = (uint32_t)(h & 0x8000u) << 16, exp = (h >> 10) & 0x1fu, man = h & 0x3ffu;
    uint32_t bits;
    if (exp == 0x1f) bits = sign | 0x7f800000u | (man << 13); /* inf, nan */
    else if (exp != 0) bits = sign | ((exp + 112u) << 23) | (man << 13);
    else if (man == 0) bits = sign;
    else { /* subnormal: normalise */
        uint32_t e = 113u, m = man;
        while (!(m & 0x400u)) m <<= 1, e--;
        bits = sign | (e << 23) | ((m & 0x3ffu) << 13);
    }
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}
#endif
/* A row of n elements as float32: float32 rows are used in place; float16 rows are widened into `buf`
 * (in L1, D <= 256), 8 at a time with F16C where the CPU has it, so the arithmetic that follows is the
 * float32 kernel's own, on the same numbers, in the same order. */
static inline const float *row_f32(const float *row, float *buf, int64_t n) {
    (void)buf, (void)n;
    return row;
}
static inline const float *row_f16(const half *row, float *buf, int64_t n) {
    int64_t x = 0;
#if defined(__F16C__) && defined(__AVX__)
    for (; x + 8 <= n; x += 8)
        _mm256_storeu_ps(buf + x, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(const void *)(row + x))));
#endif
    for (; x < n; x++) buf[x] = widen_half(row[x]);
    return buf;
}

/* Rows prefetched ahead, into L2 (hint T1): on this Intel Xeon 32 rows to L2 measured 0.89x the time
 * of 12 rows to L1 for decode attention after 8k positions (L1's few outstanding misses stay free). */
#define AHEAD 32
#define PREFETCH_LOCALITY_KV 2

/* The row AHEAD rows on: in this page, or at the start of the next one (pages are separate buffers, so
 * the hardware prefetcher has to find each page's start anew; asking for it keeps the stream going). */
#define PREFETCH_ROW(page, next, r, rows, D) ((r) + AHEAD < (rows) ? (page) + ((r) + AHEAD) * (D) \
                                                                   : (next) + ((r) + AHEAD - (rows)) * (D))

/* attend_group of kernels.c, rows found through the page table (and widened, row_f16, as they are read);
 * the prefetch stays within a page (a line every 64 bytes, whatever the element size). float16 pages
 * need D <= 256 (numpy_attention only calls it then). */
#define DEFINE_PAGED(T, SUFFIX)                                                                      \
    static inline const T *row_at_##SUFFIX(const struct page_table *t, const int64_t *base, int64_t i,   \
                                           int64_t j) {                                                   \
        return (const T *)(intptr_t)base[i] + (t->layer * t->Hkv + j) * t->cap[i] * t->D;               \
    }                                                                                                     \
    static inline __attribute__((always_inline)) void paged_group_##SUFFIX(                              \
        const float *restrict q, const struct page_table *t, int64_t j, float *restrict o,               \
        float *restrict p, int64_t G, const int64_t D, float scale) {                                    \
        float peak[16], sum[16], wide[256];                                                               \
        const int64_t S = t->S, line = 64 / (int64_t)sizeof(T);                                          \
        for (int64_t g = 0; g < G; g++) peak[g] = -INFINITY, sum[g] = 0.0f;                              \
        for (int64_t i = 0, s = 0; i < t->pages && s < S; i++) {                                         \
            const T *restrict K = row_at_##SUFFIX(t, t->kbase, i, j);                                    \
            const T *next = i + 1 < t->pages ? row_at_##SUFFIX(t, t->kbase, i + 1, j) : K;              \
            const int64_t rows = t->cap[i] < S - s ? t->cap[i] : S - s;                                  \
            for (int64_t r = 0; r < rows; r++, s++) {                                                    \
                const float *restrict row = row_##SUFFIX(K + r * D, wide, D);                             \
                const T *ahead = PREFETCH_ROW(K, next, r, rows, D);                                      \
                for (int64_t x = 0; x < D; x += line) __builtin_prefetch(ahead + x, 0, PREFETCH_LOCALITY_KV);                     \
                for (int64_t g = 0; g < G; g++) {                                                         \
                    const float *restrict qg = q + g * D;                                                 \
                    float acc = 0.0f;                                                                     \
                    _Pragma("omp simd reduction(+ : acc)") for (int64_t x = 0; x < D; x++) acc +=        \
                        qg[x] * row[x];                                                             \
                    acc *= scale;                                                                         \
                    p[g * S + s] = acc;                                                                   \
                    peak[g] = acc > peak[g] ? acc : peak[g];                                              \
                }                                                                                         \
            }                                                                                             \
        }                                                                                                 \
        for (int64_t g = 0; g < G; g++) {                                                                 \
            float *restrict pg = p + g * S;                                                               \
            const float m = peak[g];                                                                      \
            float total = 0.0f;                                                                           \
            _Pragma("omp simd reduction(+ : total)") for (int64_t s = 0; s < S; s++) {                   \
                const float e = exp_poly(pg[s] - m);                                                      \
                pg[s] = e;                                                                                \
                total += e;                                                                               \
            }                                                                                             \
            sum[g] = total;                                                                               \
        }                                                                                                 \
        for (int64_t x = 0; x < G * D; x++) o[x] = 0.0f;                                                  \
        for (int64_t i = 0, s = 0; i < t->pages && s < S; i++) {                                         \
            const T *restrict V = row_at_##SUFFIX(t, t->vbase, i, j);                                    \
            const T *next = i + 1 < t->pages ? row_at_##SUFFIX(t, t->vbase, i + 1, j) : V;              \
            const int64_t rows = t->cap[i] < S - s ? t->cap[i] : S - s;                                  \
            for (int64_t r = 0; r < rows; r++, s++) {                                                    \
                const float *restrict row = row_##SUFFIX(V + r * D, wide, D);                             \
                const T *ahead = PREFETCH_ROW(V, next, r, rows, D);                                      \
                for (int64_t x = 0; x < D; x += line) __builtin_prefetch(ahead + x, 0, PREFETCH_LOCALITY_KV);                     \
                for (int64_t g = 0; g < G; g++) {                                                         \
                    const float w = p[g * S + s];                                                         \
                    float *restrict og = o + g * D;                                                       \
                    _Pragma("omp simd") for (int64_t x = 0; x < D; x++) og[x] += w * row[x];       \
                }                                                                                         \
            }                                                                                             \
        }                                                                                                 \
        for (int64_t g = 0; g < G; g++) {                                                                 \
            const float inv = 1.0f / sum[g];                                                              \
            _Pragma("omp simd") for (int64_t x = 0; x < D; x++) o[g * D + x] *= inv;                     \
        }                                                                                                 \
    }                                                                                                     \
    static void paged_part_##SUFFIX(void *ctx, int64_t part, int64_t parts) {                            \
        const struct paged_args *a = ctx;                                                                 \
        const int64_t Hkv = a->t.Hkv, G = a->H / Hkv, D = a->t.D;                                        \
        const int64_t j0 = Hkv * part / parts, j1 = Hkv * (part + 1) / parts;                            \
        for (int64_t j = j0; j < j1; j++) {                                                               \
            for (int64_t g0 = 0; g0 < G; g0 += 16) {                                                      \
                const int64_t n = G - g0 < 16 ? G - g0 : 16, h = j * G + g0;                             \
                const float *q = a->q + h * D;                                                            \
                float *o = a->out + h * D, *p = a->scratch + h * a->t.S;                                  \
                if (D == 128)                                                                             \
                    paged_group_##SUFFIX(q, &a->t, j, o, p, n, 128, a->scale);                           \
                else if (D == 64)                                                                         \
                    paged_group_##SUFFIX(q, &a->t, j, o, p, n, 64, a->scale);                            \
                else                                                                                      \
                    paged_group_##SUFFIX(q, &a->t, j, o, p, n, D, a->scale);                             \
            }                                                                                             \
        }                                                                                                 \
    }                                                                                                     \
    static void gather_part_##SUFFIX(void *ctx, int64_t part, int64_t parts) {                           \
        const struct gather_args *a = ctx;                                                                \
        const struct page_table *t = &a->t;                                                               \
        const int64_t j0 = t->Hkv * part / parts, j1 = t->Hkv * (part + 1) / parts;                      \
        for (int64_t j = j0; j < j1; j++) {                                                               \
            for (int64_t i = 0, s = 0; i < t->pages && s < t->S; i++) {                                  \
                const int64_t rows = t->cap[i] < t->S - s ? t->cap[i] : t->S - s, n = rows * t->D;      \
                const T *restrict k = row_at_##SUFFIX(t, t->kbase, i, j);                                \
                const T *restrict v = row_at_##SUFFIX(t, t->vbase, i, j);                                \
                float *restrict ko = a->kout + (j * t->S + s) * t->D;                                     \
                float *restrict vo = a->vout + (j * t->S + s) * t->D;                                     \
                const float *kw = row_##SUFFIX(k, ko, n), *vw = row_##SUFFIX(v, vo, n);                  \
                if (kw != ko) memcpy(ko, kw, (size_t)n * sizeof(float));                                  \
                if (vw != vo) memcpy(vo, vw, (size_t)n * sizeof(float));                                  \
                s += rows;                                                                                \
            }                                                                                             \
        }                                                                                                 \
    }

struct paged_args {
    struct page_table t;
    const float *q;
    float *out, *scratch;
    int64_t H;
    float scale;
};

struct gather_args {
    struct page_table t;
    float *kout, *vout;
};

DEFINE_PAGED(float, f32)
DEFINE_PAGED(half, f16)

/* Attention of one new position of `layer`: q [H, D] over the first S positions; out [H, D];
 * scratch [H, S]. Split over kv heads on `threads` cores, as attend_one is. Pages of float32
 * (attend_paged) or float16 (attend_paged_f16). */
void attend_paged(const float *q, const int64_t *kbase, const int64_t *vbase, const int64_t *start,
                  const int64_t *cap, int64_t pages, int64_t layer, float *out, float *scratch, int64_t H,
                  int64_t Hkv, int64_t S, int64_t D, float scale, int64_t threads) {
    struct paged_args a = {{kbase, vbase, start, cap, pages, layer, Hkv, S, D}, q, out, scratch, H, scale};
    run_parts(paged_part_f32, &a, Hkv, threads); /* as attend_one: a late core's kv heads go to the others */
}

void attend_paged_f16(const float *q, const int64_t *kbase, const int64_t *vbase, const int64_t *start,
                      const int64_t *cap, int64_t pages, int64_t layer, float *out, float *scratch, int64_t H,
                      int64_t Hkv, int64_t S, int64_t D, float scale, int64_t threads) {
    struct paged_args a = {{kbase, vbase, start, cap, pages, layer, Hkv, S, D}, q, out, scratch, H, scale};
    run_parts(paged_part_f16, &a, Hkv, threads);
}

/* kout, vout [Hkv, S, D] float32 <- the first S positions of `layer`, split over kv heads: from float32
 * pages (gather_pages) or widened from float16 ones (gather_pages_f16). */
void gather_pages(const int64_t *kbase, const int64_t *vbase, const int64_t *start, const int64_t *cap,
                  int64_t pages, int64_t layer, float *kout, float *vout, int64_t Hkv, int64_t S, int64_t D,
                  int64_t threads) {
    struct gather_args a = {{kbase, vbase, start, cap, pages, layer, Hkv, S, D}, kout, vout};
    run_parallel(gather_part_f32, &a, threads < Hkv ? threads : Hkv);
}

void gather_pages_f16(const int64_t *kbase, const int64_t *vbase, const int64_t *start, const int64_t *cap,
                      int64_t pages, int64_t layer, float *kout, float *vout, int64_t Hkv, int64_t S,
                      int64_t D, int64_t threads) {
    struct gather_args a = {{kbase, vbase, start, cap, pages, layer, Hkv, S, D}, kout, vout};
    run_parallel(gather_part_f16, &a, threads < Hkv ? threads : Hkv);
}

/* ---- The guard over file-backed pages. ----
 *
 * A block file mapped into a cache can be truncated by another process (a crash-recovery tool, a user,
 * a store that rewrites in place): touching a page of the mapping past the new end of the file raises
 * SIGBUS, which would kill the process. Guarded ranges turn that fault into a page of zeros mapped over
 * the lost page (the instruction then completes) and count the loss. The numbers read there are wrong,
 * so the cache checks its pages after every pass (the file's size and mtime, and these counters) and
 * recomputes what a lost page held before anything computed from it is used. Faults outside every
 * guarded range go to the handler installed before this one (Python's faulthandler, or the default). */
#define GUARD_SLOTS 8192

static _Atomic uintptr_t guard_lo[GUARD_SLOTS], guard_hi[GUARD_SLOTS];
static _Atomic int64_t guard_lost_count[GUARD_SLOTS];
static struct sigaction previous_bus;
static pthread_mutex_t guard_lock = PTHREAD_MUTEX_INITIALIZER;
static int guard_installed;

static void on_sigbus(int sig, siginfo_t *info, void *uctx) {
    const uintptr_t at = (uintptr_t)info->si_addr;
    const uintptr_t page = (uintptr_t)sysconf(_SC_PAGESIZE);
    for (int64_t i = 0; i < GUARD_SLOTS; i++) {
        const uintptr_t lo = atomic_load(&guard_lo[i]), hi = atomic_load(&guard_hi[i]);
        if (lo && at >= lo && at < hi) {
            void *zero = mmap((void *)(at & ~(page - 1)), page, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED,
                              -1, 0);
            if (zero != MAP_FAILED) {
                atomic_fetch_add(&guard_lost_count[i], 1);
                return;
            }
        }
    }
    if (previous_bus.sa_flags & SA_SIGINFO) {
        previous_bus.sa_sigaction(sig, info, uctx);
    } else if (previous_bus.sa_handler != SIG_DFL && previous_bus.sa_handler != SIG_IGN) {
        previous_bus.sa_handler(sig);
    } else {
        signal(sig, SIG_DFL); /* the default action: the process ends as it would have */
        raise(sig);
    }
}

/* Guard [address, address + length); returns the slot (for guard_lost, guard_release), -1 when full. */
int64_t guard_range(int64_t address, int64_t length) {
    int64_t slot = -1;
    pthread_mutex_lock(&guard_lock);
    if (!guard_installed) {
        struct sigaction sa;
        memset(&sa, 0, sizeof sa);
        sa.sa_sigaction = on_sigbus;
        sa.sa_flags = SA_SIGINFO | SA_NODEFER;
        sigemptyset(&sa.sa_mask);
        guard_installed = sigaction(SIGBUS, &sa, &previous_bus) == 0;
    }
    for (int64_t i = 0; guard_installed && i < GUARD_SLOTS; i++) {
        if (atomic_load(&guard_lo[i]) == 0) {
            atomic_store(&guard_lost_count[i], 0);
            atomic_store(&guard_hi[i], (uintptr_t)(address + length));
            atomic_store(&guard_lo[i], (uintptr_t)address);
            slot = i;
            break;
        }
    }
    pthread_mutex_unlock(&guard_lock);
    return slot;
}

void guard_release(int64_t slot) {
    if (slot < 0 || slot >= GUARD_SLOTS) return;
    pthread_mutex_lock(&guard_lock);
    atomic_store(&guard_lo[slot], 0);
    atomic_store(&guard_hi[slot], 0);
    pthread_mutex_unlock(&guard_lock);
}

/* Pages of the slot's range lost (replaced by zeros) so far. */
int64_t guard_lost(int64_t slot) {
    return slot < 0 || slot >= GUARD_SLOTS ? 0 : atomic_load(&guard_lost_count[slot]);
}
