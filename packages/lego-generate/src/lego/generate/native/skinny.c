/*
 * Skinny matrix products for decoding on x86-64 CPUs with AVX-512:
 *
 *     y (M, N) = x (M, K) @ W^T + b        M small: one row per sequence of a decode step
 *
 * At batch 1 a decode step is a chain of such products and every weight is read once per
 * token, so its speed is how fast the weights stream in from memory. These kernels read each
 * weight byte once per call, in address order, prefetching ahead of the stream, and use what
 * they read for all M rows of x while it is in registers or L1.
 *
 * Two layouts of the weight, both contiguous:
 *   - skinny_rows: W as nn.Linear stores it, (N, K). A block of ROWS weight rows is dotted
 *     with MB rows of x at a time, the ROWS x MB sums kept in registers.
 *   - skinny_rows_bf16dot: the same in bf16 on CPUs with AVX512-BF16, whose dot-product
 *     instruction (vdpbf16ps) multiplies 32 bf16 pairs and adds them into 16 fp32 sums in one
 *     step, with no widening. Its products are exact and its sums fp32, but values below
 *     fp32's normal range (|v| < 1.2e-38) count as zero. Fewer instructions per cache line
 *     let it stream bf16 weights measurably faster than widening them.
 *   - skinny_cols: W given as its transpose Wt, (K, N) (GPT-2's Conv1D layout). KU rows of Wt
 *     are streamed side by side, each scaled by x[m, k] and added into an fp32 accumulator
 *     row in L1/L2; every BLOCK_K rows the accumulator is folded into a running total, so
 *     rounding errors grow with BLOCK_K + K / BLOCK_K rather than with K.
 *
 * Element types: fp32 (dtype 0) or bf16 (dtype 1) for x, W, b and y alike. bf16 is widened
 * to fp32 exactly; products and sums are fp32 (fused multiply-add); bf16 outputs are rounded
 * to nearest even, as torch rounds. Threads: OpenMP (the runtime torch has already loaded),
 * each thread a contiguous range of the N outputs.
 *
 * The functions return 0, or 1 when scratch memory could not be allocated (y is then
 * unspecified). lego/generate/native/kernels.py checks shapes, dtypes and contiguity before
 * calling.
 */
#include <immintrin.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#define TARGET __attribute__((target("avx512f,avx512bw,avx512vl,fma")))
#define TARGET_DOT __attribute__((target("avx512f,avx512bw,avx512vl,fma,avx512bf16")))
#define ROWS 4           /* weight rows per register block (skinny_rows) */
#define MB 4             /* rows of x per register block (skinny_rows) */
#define KU 4             /* rows of Wt streamed together (skinny_cols) */
#define BLOCK_K 64       /* rows of Wt summed before folding into the total (skinny_cols) */
#define AHEAD_BYTES 8192 /* software prefetch distance along a weight row stream */

enum { F32 = 0, BF16 = 1 };

/* ---- elements ------------------------------------------------------------------------ */

static inline float bf16_to_f32(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static inline uint16_t f32_to_bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40); /* quiet NaN */
    u += 0x7fffu + ((u >> 16) & 1u); /* round to nearest, ties to even */
    return (uint16_t)(u >> 16);
}

static inline float load1(const void *p, int64_t i, int dtype) {
    return dtype == F32 ? ((const float *)p)[i] : bf16_to_f32(((const uint16_t *)p)[i]);
}

static inline void store1(void *p, int64_t i, float v, int dtype) {
    if (dtype == F32) ((float *)p)[i] = v;
    else ((uint16_t *)p)[i] = f32_to_bf16(v);
}

static inline __mmask16 tail_mask(int64_t n) {
    return n >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << n) - 1u);
}

/* Elements p[i .. i + 16) widened to fp32; lanes outside `mask` are 0. */
TARGET static inline __m512 load16(const void *p, int64_t i, __mmask16 mask, int dtype) {
    if (dtype == F32) return _mm512_maskz_loadu_ps(mask, (const float *)p + i);
    __m256i h = _mm256_maskz_loadu_epi16(mask, (const uint16_t *)p + i);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

static inline void prefetch(const char *p) { _mm_prefetch(p, _MM_HINT_T0); }

/* x as fp32: x itself, or a widened copy in `scratch` (M * K floats). */
static const float *as_f32(const void *x, int64_t count, int dtype, float *scratch) {
    if (dtype == F32) return (const float *)x;
    for (int64_t i = 0; i < count; ++i) scratch[i] = bf16_to_f32(((const uint16_t *)x)[i]);
    return scratch;
}

static inline int64_t element_size(int dtype) { return dtype == F32 ? 4 : 2; }

/* ---- W as (N, K) --------------------------------------------------------------------- */

/* y[m0 .. m0 + mb, n0 .. n0 + rows) (rows <= ROWS, mb <= MB): each weight vector is loaded
 * and widened once and used for the mb rows of x. */
TARGET static inline void rows_block(const float *x, const void *w, const void *b, void *y,
                                     int64_t N, int64_t K, int64_t m0, int mb, int64_t n0,
                                     int rows, int dtype) {
    const int64_t elem = element_size(dtype);
    const char *wr = (const char *)w + n0 * K * elem;
    __m512 acc[MB][ROWS];
    __m512 wv[ROWS];
    for (int i = 0; i < MB; ++i)
        for (int r = 0; r < ROWS; ++r) acc[i][r] = _mm512_setzero_ps();
    for (int r = 0; r < ROWS; ++r) wv[r] = _mm512_setzero_ps();
    for (int64_t k = 0; k < K; k += 16) {
        const __mmask16 mask = tail_mask(K - k);
        for (int r = 0; r < rows; ++r) {
            if (m0 == 0) prefetch(wr + (r * K + k) * elem + AHEAD_BYTES);
            wv[r] = load16(wr, r * K + k, mask, dtype);
        }
        for (int i = 0; i < mb; ++i) {
            const __m512 xv = _mm512_maskz_loadu_ps(mask, x + (m0 + i) * K + k);
            for (int r = 0; r < rows; ++r) acc[i][r] = _mm512_fmadd_ps(wv[r], xv, acc[i][r]);
        }
    }
    for (int i = 0; i < mb; ++i)
        for (int r = 0; r < rows; ++r) {
            float s = _mm512_reduce_add_ps(acc[i][r]);
            if (b) s += load1(b, n0 + r, dtype);
            store1(y, (m0 + i) * N + n0 + r, s, dtype);
        }
}

/* rows_block for bf16 with vdpbf16ps: x stays bf16, each step takes 32 elements (one cache
 * line of a weight row) into 16 fp32 sums per (row of x, weight row). */
TARGET_DOT static inline void rows_block_dot(const uint16_t *x, const uint16_t *w, const void *b,
                                             void *y, int64_t N, int64_t K, int64_t m0, int mb,
                                             int64_t n0, int rows) {
    const uint16_t *wr = w + n0 * K;
    __m512 acc[MB][ROWS];
    __m512bh wv[ROWS];
    for (int i = 0; i < MB; ++i)
        for (int r = 0; r < ROWS; ++r) acc[i][r] = _mm512_setzero_ps();
    for (int r = 0; r < ROWS; ++r) wv[r] = (__m512bh)_mm512_setzero_si512();
    for (int64_t k = 0; k < K; k += 32) {
        const __mmask32 mask =
            K - k >= 32 ? (__mmask32)0xffffffffu : (__mmask32)((1u << (K - k)) - 1u);
        for (int r = 0; r < rows; ++r) {
            if (m0 == 0) prefetch((const char *)(wr + r * K + k) + AHEAD_BYTES);
            wv[r] = (__m512bh)_mm512_maskz_loadu_epi16(mask, wr + r * K + k);
        }
        for (int i = 0; i < mb; ++i) {
            const __m512bh xv = (__m512bh)_mm512_maskz_loadu_epi16(mask, x + (m0 + i) * K + k);
            for (int r = 0; r < rows; ++r) acc[i][r] = _mm512_dpbf16_ps(acc[i][r], wv[r], xv);
        }
    }
    for (int i = 0; i < mb; ++i)
        for (int r = 0; r < rows; ++r) {
            float s = _mm512_reduce_add_ps(acc[i][r]);
            if (b) s += load1(b, n0 + r, BF16);
            store1(y, (m0 + i) * N + n0 + r, s, BF16);
        }
}

/* One (N, K) product: its operands, and a function computing one block of it. */
typedef struct {
    const void *x, *w, *b;
    void *y;
    int64_t M, N, K;
    int dtype;
} Product;

typedef void (*BlockFn)(const Product *p, int64_t m0, int mb, int64_t n0, int rows);

/* Constant block sizes in the common cases let the block loops unroll into registers. */
TARGET static void widened_block(const Product *p, int64_t m0, int mb, int64_t n0, int rows) {
    const float *x = (const float *)p->x; /* fp32 (or already widened) */
    const void *w = p->w, *b = p->b;
    void *y = p->y;
    if (rows == ROWS && mb == MB) rows_block(x, w, b, y, p->N, p->K, m0, MB, n0, ROWS, p->dtype);
    else if (rows == ROWS && mb == 1) rows_block(x, w, b, y, p->N, p->K, m0, 1, n0, ROWS, p->dtype);
    else rows_block(x, w, b, y, p->N, p->K, m0, mb, n0, rows, p->dtype);
}

TARGET_DOT static void dot_block(const Product *p, int64_t m0, int mb, int64_t n0, int rows) {
    const uint16_t *x = (const uint16_t *)p->x, *w = (const uint16_t *)p->w;
    if (rows == ROWS && mb == MB) rows_block_dot(x, w, p->b, p->y, p->N, p->K, m0, MB, n0, ROWS);
    else if (rows == ROWS && mb == 1) rows_block_dot(x, w, p->b, p->y, p->N, p->K, m0, 1, n0, ROWS);
    else rows_block_dot(x, w, p->b, p->y, p->N, p->K, m0, mb, n0, rows);
}

/* Every block of the product, each thread a contiguous range of ROWS-row blocks. */
static void over_blocks(const Product *p, BlockFn block, int threads) {
    const int64_t blocks = (p->N + ROWS - 1) / ROWS;
#pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t blk = 0; blk < blocks; ++blk) {
        const int64_t n0 = blk * ROWS;
        const int rows = p->N - n0 < ROWS ? (int)(p->N - n0) : ROWS;
        for (int64_t m0 = 0; m0 < p->M; m0 += MB)
            block(p, m0, p->M - m0 < MB ? (int)(p->M - m0) : MB, n0, rows);
    }
}

int skinny_rows(const void *x, const void *w, const void *b, void *y, int64_t M, int64_t N,
                int64_t K, int dtype, int threads) {
    float *scratch = dtype == F32 ? NULL : (float *)malloc((size_t)(M * K) * sizeof(float));
    if (dtype != F32 && !scratch) return 1;
    const Product p = {as_f32(x, M * K, dtype, scratch), w, b, y, M, N, K, dtype};
    over_blocks(&p, widened_block, threads);
    free(scratch);
    return 0;
}

/* skinny_rows for bf16 on rows_block_dot (dtype is ignored): only where the CPU has
 * avx512_bf16. Needs no scratch memory, so it always returns 0. */
int skinny_rows_bf16dot(const void *x, const void *w, const void *b, void *y, int64_t M,
                        int64_t N, int64_t K, int dtype, int threads) {
    (void)dtype;
    const Product p = {x, w, b, y, M, N, K, BF16};
    over_blocks(&p, dot_block, threads);
    return 0;
}

/* ---- W as its transpose Wt, (K, N) --------------------------------------------------- */

/* acc[m, :] += x[m, k .. k + kn) @ Wt[k .. k + kn, n0 .. n0 + width) for kn <= KU rows,
 * each accumulator vector loaded and stored once per kn rows. */
TARGET static inline void cols_rows(const float *x, const void *wt, float *acc, int64_t M,
                                    int64_t N, int64_t K, int64_t n0, int64_t width, int64_t k,
                                    int kn, int dtype) {
    const int64_t elem = element_size(dtype);
    const char *row = (const char *)wt + (k * N + n0) * elem;
    const int64_t stride = N * elem;
    __m512 wv[KU];
    for (int r = 0; r < KU; ++r) wv[r] = _mm512_setzero_ps();
    for (int64_t j = 0; j < width; j += 16) {
        const __mmask16 mask = tail_mask(width - j);
        for (int r = 0; r < kn; ++r) {
            if (((j * elem) & 63) == 0) prefetch(row + r * stride + j * elem + KU * stride);
            wv[r] = load16(row + r * stride, j, mask, dtype);
        }
        for (int64_t m = 0; m < M; ++m) {
            float *a = acc + m * width + j;
            __m512 sum = _mm512_maskz_loadu_ps(mask, a);
            for (int r = 0; r < kn; ++r)
                sum = _mm512_fmadd_ps(wv[r], _mm512_set1_ps(x[m * K + k + r]), sum);
            _mm512_mask_storeu_ps(a, mask, sum);
        }
    }
}

TARGET int skinny_cols(const void *x, const void *wt, const void *b, void *y, int64_t M,
                       int64_t N, int64_t K, int dtype, int threads) {
    float *scratch = dtype == F32 ? NULL : (float *)malloc((size_t)(M * K) * sizeof(float));
    if (dtype != F32 && !scratch) return 1;
    const float *xf = as_f32(x, M * K, dtype, scratch);
    int failed = 0;
#pragma omp parallel num_threads(threads) reduction(| : failed)
    {
        int t = 0, nt = 1;
#ifdef _OPENMP
        t = omp_get_thread_num();
        nt = omp_get_num_threads();
#endif
        /* Columns split in whole cache lines, so threads never write the same line. */
        int64_t per = (N + nt - 1) / nt;
        per = (per + 31) / 32 * 32;
        const int64_t n0 = t * per < N ? t * per : N;
        const int64_t n1 = n0 + per < N ? n0 + per : N;
        const int64_t width = n1 - n0;
        /* part: the current BLOCK_K rows; total: the blocks before. */
        float *part = width > 0 ? (float *)calloc((size_t)(2 * M * width), sizeof(float)) : NULL;
        if (width > 0 && !part) failed = 1;
        if (part) {
            float *total = part + M * width;
            for (int64_t k0 = 0; k0 < K; k0 += BLOCK_K) {
                const int64_t k1 = k0 + BLOCK_K < K ? k0 + BLOCK_K : K;
                int64_t k = k0;
                for (; k + KU <= k1; k += KU) cols_rows(xf, wt, part, M, N, K, n0, width, k, KU, dtype);
                for (; k < k1; ++k) cols_rows(xf, wt, part, M, N, K, n0, width, k, 1, dtype);
                for (int64_t i = 0; i < M * width; ++i) {
                    total[i] += part[i];
                    part[i] = 0.0f;
                }
            }
            for (int64_t m = 0; m < M; ++m)
                for (int64_t n = n0; n < n1; ++n) {
                    float s = total[m * width + (n - n0)];
                    if (b) s += load1(b, n, dtype);
                    store1(y, m * N + n, s, dtype);
                }
            free(part);
        }
    }
    free(scratch);
    return failed;
}
