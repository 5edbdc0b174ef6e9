/* Reed-Solomon kernels; see rs_kernels.h for the theory of operation. */
#define _GNU_SOURCE
#include "rs_kernels.h"

#include <stdlib.h>
#include <string.h>

#if defined(__linux__)
#include <sys/mman.h>
#endif

#if (defined(__x86_64__) || defined(__i386__)) && defined(__GNUC__)
#define RS_HAVE_AVX2 1
#include <immintrin.h>
#else
#define RS_HAVE_AVX2 0
#endif

#define RS_POLY 0x11d
/* Columns per block: an L1/L2-sized slice of every input stays cached while all output
 * rows are computed from it. A multiple of 64 (the AVX2 loop's stride). */
#define RS_BLOCK_MAX 16384
#define RS_BLOCK_MIN 2048
#define RS_BLOCK_BUDGET (160 * 1024)

static uint8_t gf_exp[512];
static uint8_t gf_log[256];
static const uint8_t rs_zeros[RS_BLOCK_MAX] __attribute__((aligned(64)));
static uint64_t rs_stats[3];

void rs_init(void)
{
    unsigned x = 1;
    for (int i = 0; i < 255; i++) {
        gf_exp[i] = (uint8_t)x;
        gf_exp[i + 255] = (uint8_t)x;
        gf_log[x] = (uint8_t)i;
        x <<= 1;
        if (x & 0x100)
            x ^= RS_POLY;
    }
    gf_exp[510] = gf_exp[0];
    gf_exp[511] = gf_exp[1];
    gf_log[0] = 0; /* never used: zero is special-cased */
}

uint8_t rs_gf_mul(uint8_t a, uint8_t b)
{
    if (a == 0 || b == 0)
        return 0;
    return gf_exp[gf_log[a] + gf_log[b]];
}

uint8_t rs_gf_inv(uint8_t a)
{
    return gf_exp[255 - gf_log[a]];
}

void rs_generator_row(int k, int index, uint8_t *row)
{
    for (int j = 0; j < k; j++) {
        if (index < k)
            row[j] = (uint8_t)(index == j);
        else
            row[j] = rs_gf_inv((uint8_t)(index ^ j));
    }
}

/* Gauss-Jordan inversion of the n x n matrix a (destroyed) into inv. */
static int invert(int n, uint8_t *a, uint8_t *inv)
{
    memset(inv, 0, (size_t)n * (size_t)n);
    for (int i = 0; i < n; i++)
        inv[i * n + i] = 1;
    for (int col = 0; col < n; col++) {
        int pivot = col;
        while (pivot < n && a[pivot * n + col] == 0)
            pivot++;
        if (pivot == n)
            return -1;
        if (pivot != col) {
            for (int c = 0; c < n; c++) {
                uint8_t t = a[col * n + c];
                a[col * n + c] = a[pivot * n + c];
                a[pivot * n + c] = t;
                t = inv[col * n + c];
                inv[col * n + c] = inv[pivot * n + c];
                inv[pivot * n + c] = t;
            }
        }
        uint8_t scale = rs_gf_inv(a[col * n + col]);
        for (int c = 0; c < n; c++) {
            a[col * n + c] = rs_gf_mul(a[col * n + c], scale);
            inv[col * n + c] = rs_gf_mul(inv[col * n + c], scale);
        }
        for (int r = 0; r < n; r++) {
            uint8_t f = a[r * n + col];
            if (r == col || f == 0)
                continue;
            for (int c = 0; c < n; c++) {
                a[r * n + c] ^= rs_gf_mul(f, a[col * n + c]);
                inv[r * n + c] ^= rs_gf_mul(f, inv[col * n + c]);
            }
        }
    }
    return 0;
}

int rs_solve(int k, const int *present, int nwanted, const int *wanted, uint8_t *coeffs)
{
    uint8_t a[RS_MAX_ROWS * RS_MAX_ROWS];
    uint8_t inv[RS_MAX_ROWS * RS_MAX_ROWS];
    uint8_t row[RS_MAX_ROWS];
    if (k <= 0 || k > RS_MAX_ROWS)
        return -1;
    for (int r = 0; r < k; r++)
        rs_generator_row(k, present[r], a + r * k);
    if (invert(k, a, inv) != 0)
        return -1;
    /* fragment w = G[w] . data and data = inv . present, so its coefficients are G[w] . inv */
    for (int w = 0; w < nwanted; w++) {
        rs_generator_row(k, wanted[w], row);
        for (int c = 0; c < k; c++) {
            uint8_t acc = 0;
            for (int d = 0; d < k; d++)
                acc ^= rs_gf_mul(row[d], inv[d * k + c]);
            coeffs[w * k + c] = acc;
        }
    }
    return 0;
}

void rs_make_tables(int n, const uint8_t *coeffs, uint8_t *out)
{
    for (int i = 0; i < n; i++) {
        uint8_t *t = out + (size_t)i * RS_TABLE_BYTES;
        for (int x = 0; x < 16; x++) {
            t[x] = t[x + 16] = rs_gf_mul(coeffs[i], (uint8_t)x);
            t[x + 32] = t[x + 48] = rs_gf_mul(coeffs[i], (uint8_t)(x << 4));
        }
    }
}

/* ---- portable kernel ------------------------------------------------------------------ */

/* full[r*k + j] is the 256-entry product table of coefficient (r, j). */
static void dot_portable(size_t n, int k, int rows, const uint8_t *full, const uint8_t *const *in,
                         uint8_t *const *out)
{
    for (int r = 0; r < rows; r++) {
        uint8_t *o = out[r];
        const uint8_t *t = full + (size_t)r * (size_t)k * 256;
        const uint8_t *p = in[0];
        for (size_t i = 0; i < n; i++)
            o[i] = t[p[i]];
        for (int j = 1; j < k; j++) {
            t += 256;
            p = in[j];
            size_t i = 0;
            for (; i + 8 <= n; i += 8) {
                o[i] ^= t[p[i]];
                o[i + 1] ^= t[p[i + 1]];
                o[i + 2] ^= t[p[i + 2]];
                o[i + 3] ^= t[p[i + 3]];
                o[i + 4] ^= t[p[i + 4]];
                o[i + 5] ^= t[p[i + 5]];
                o[i + 6] ^= t[p[i + 6]];
                o[i + 7] ^= t[p[i + 7]];
            }
            for (; i < n; i++)
                o[i] ^= t[p[i]];
        }
    }
}

/* Nibble-table scalar loop over columns [from, to), used for the AVX2 kernel's tails. */
static void dot_nibble(size_t from, size_t to, int k, int rows, size_t tstride,
                       const uint8_t *tables, const uint8_t *const *in, uint8_t *const *out)
{
    for (int r = 0; r < rows; r++) {
        const uint8_t *trow = tables + (size_t)r * tstride;
        for (size_t i = from; i < to; i++) {
            uint8_t acc = 0;
            for (int j = 0; j < k; j++) {
                const uint8_t *t = trow + (size_t)j * RS_TABLE_BYTES;
                uint8_t b = in[j][i];
                acc ^= t[b & 15] ^ t[32 + (b >> 4)];
            }
            out[r][i] = acc;
        }
    }
}

/* ---- AVX2 kernel ---------------------------------------------------------------------- */

#if RS_HAVE_AVX2
/* R output rows, 64 columns per iteration: 2R accumulators stay in registers while every
 * input is loaded once, split into nibbles and looked up with vpshufb. */
#define RS_DEFINE_AVX2(R)                                                                    \
    __attribute__((target("avx2"))) static void dot_avx2_##R(                               \
        size_t n, int k, size_t tstride, const uint8_t *tables, const uint8_t *const *in,    \
        uint8_t *const *out)                                                                 \
    {                                                                                        \
        const __m256i mask = _mm256_set1_epi8(0x0f);                                         \
        size_t n64 = n & ~(size_t)63;                                                        \
        for (size_t i = 0; i < n64; i += 64) {                                               \
            __m256i acc[2 * (R)];                                                            \
            for (int r = 0; r < 2 * (R); r++)                                                \
                acc[r] = _mm256_setzero_si256();                                             \
            const uint8_t *t = tables;                                                       \
            for (int j = 0; j < k; j++, t += RS_TABLE_BYTES) {                               \
                const uint8_t *p = in[j] + i;                                                \
                __m256i x0 = _mm256_loadu_si256((const __m256i *)p);                         \
                __m256i x1 = _mm256_loadu_si256((const __m256i *)(p + 32));                  \
                __m256i l0 = _mm256_and_si256(x0, mask);                                     \
                __m256i l1 = _mm256_and_si256(x1, mask);                                     \
                __m256i h0 = _mm256_and_si256(_mm256_srli_epi64(x0, 4), mask);               \
                __m256i h1 = _mm256_and_si256(_mm256_srli_epi64(x1, 4), mask);               \
                for (int r = 0; r < (R); r++) {                                              \
                    const uint8_t *tr = t + (size_t)r * tstride;                             \
                    __m256i tl = _mm256_load_si256((const __m256i *)tr);                     \
                    __m256i th = _mm256_load_si256((const __m256i *)(tr + 32));              \
                    acc[2 * r] = _mm256_xor_si256(                                           \
                        acc[2 * r], _mm256_xor_si256(_mm256_shuffle_epi8(tl, l0),            \
                                                     _mm256_shuffle_epi8(th, h0)));          \
                    acc[2 * r + 1] = _mm256_xor_si256(                                       \
                        acc[2 * r + 1], _mm256_xor_si256(_mm256_shuffle_epi8(tl, l1),        \
                                                         _mm256_shuffle_epi8(th, h1)));      \
                }                                                                            \
            }                                                                                \
            for (int r = 0; r < (R); r++) {                                                  \
                _mm256_storeu_si256((__m256i *)(out[r] + i), acc[2 * r]);                    \
                _mm256_storeu_si256((__m256i *)(out[r] + i + 32), acc[2 * r + 1]);           \
            }                                                                                \
        }                                                                                    \
        if (n64 < n)                                                                         \
            dot_nibble(n64, n, k, (R), tstride, tables, in, out);                            \
    }

RS_DEFINE_AVX2(1)
RS_DEFINE_AVX2(2)
RS_DEFINE_AVX2(3)
RS_DEFINE_AVX2(4)

typedef void (*rs_avx2_fn)(size_t, int, size_t, const uint8_t *, const uint8_t *const *,
                           uint8_t *const *);
static const rs_avx2_fn avx2_fns[5] = {NULL, dot_avx2_1, dot_avx2_2, dot_avx2_3, dot_avx2_4};
#define RS_AVX2_GROUP 4
#endif

int rs_avx2_available(void)
{
#if RS_HAVE_AVX2
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") ? 1 : 0;
#else
    return 0;
#endif
}

static void run_rows(int kernel, size_t n, int k, int rows, const uint8_t *tables,
                     const uint8_t *full, const uint8_t *const *in, uint8_t *const *out)
{
    if (rows == 0 || n == 0)
        return;
#if RS_HAVE_AVX2
    if (kernel == RS_KERNEL_AVX2) {
        size_t tstride = (size_t)k * RS_TABLE_BYTES;
        int r = 0;
        while (r < rows) {
            int left = rows - r;
            /* groups of 4, but 5 -> 3+2 and 6 -> 3+3 rather than leaving a lone row */
            int g = left <= RS_AVX2_GROUP ? left : (left == 5 || left == 6 ? 3 : RS_AVX2_GROUP);
            avx2_fns[g](n, k, tstride, tables + (size_t)r * tstride, in, out + r);
            r += g;
        }
        __atomic_fetch_add(&rs_stats[1], (uint64_t)(n & ~(size_t)63) * (uint64_t)rows,
                           __ATOMIC_RELAXED);
        __atomic_fetch_add(&rs_stats[2], (uint64_t)(n & 63) * (uint64_t)rows, __ATOMIC_RELAXED);
        return;
    }
#else
    (void)tables;
#endif
    dot_portable(n, k, rows, full, in, out);
    __atomic_fetch_add(&rs_stats[0], (uint64_t)n * (uint64_t)rows, __ATOMIC_RELAXED);
}

int rs_run(int kernel, const rs_job_t *job)
{
    const size_t len = job->len;
    const int k = job->k, rows = job->rows;
    const uint8_t *ip[RS_MAX_ROWS];
    uint8_t *op[RS_MAX_ROWS];
    uint8_t *scratch = NULL, *full = NULL;
    int partial = 0;

    if (k < 1 || k > RS_MAX_ROWS || rows < 0 || rows > RS_MAX_ROWS)
        return -1;
    if (len == 0)
        return 0;
    if (kernel != RS_KERNEL_AVX2 || !RS_HAVE_AVX2)
        kernel = RS_KERNEL_PORTABLE;

    size_t blk = RS_BLOCK_BUDGET / (size_t)(k + rows + job->ncopy);
    blk &= ~(size_t)63;
    if (blk < RS_BLOCK_MIN)
        blk = RS_BLOCK_MIN;
    if (blk > RS_BLOCK_MAX)
        blk = RS_BLOCK_MAX;

    if (rows > 0) {
        for (int j = 0; j < k; j++)
            partial |= job->src_len != NULL && job->src_len[j] < len;
        for (int r = 0; r < rows; r++)
            partial |= job->dst_len != NULL && job->dst_len[r] < len;
        if (partial) {
            scratch = rs_alloc((size_t)(k + rows) * blk);
            if (scratch == NULL)
                return -1;
        }
        if (kernel == RS_KERNEL_PORTABLE) {
            full = malloc((size_t)rows * (size_t)k * 256);
            if (full == NULL) {
                rs_free(scratch);
                return -1;
            }
            for (int c = 0; c < rows * k; c++) {
                const uint8_t *t = job->tables + (size_t)c * RS_TABLE_BYTES;
                for (int x = 0; x < 256; x++)
                    full[(size_t)c * 256 + (size_t)x] = t[x & 15] ^ t[32 + (x >> 4)];
            }
        }
    }

    for (size_t a = 0; a < len; a += blk) {
        size_t b = a + blk < len ? a + blk : len;
        size_t n = b - a;
        if (rows > 0) {
            for (int j = 0; j < k; j++) {
                size_t have = job->src_len ? job->src_len[j] : len;
                if (have >= b) {
                    ip[j] = job->src[j] + a;
                } else if (have <= a) {
                    ip[j] = rs_zeros;
                } else {
                    uint8_t *s = scratch + (size_t)j * blk;
                    memcpy(s, job->src[j] + a, have - a);
                    memset(s + (have - a), 0, b - have);
                    ip[j] = s;
                }
            }
            for (int r = 0; r < rows; r++) {
                size_t want = job->dst_len ? job->dst_len[r] : len;
                op[r] = want >= b ? job->dst[r] + a : scratch + (size_t)(k + r) * blk;
            }
            run_rows(kernel, n, k, rows, job->tables, full, ip, op);
            if (partial) {
                for (int r = 0; r < rows; r++) {
                    size_t want = job->dst_len ? job->dst_len[r] : len;
                    if (want < b && want > a)
                        memcpy(job->dst[r] + a, op[r], want - a);
                }
            }
        }
        for (int c = 0; c < job->ncopy; c++) {
            size_t cl = job->copy_len[c];
            if (cl > a)
                memcpy(job->copy_dst[c] + a, job->copy_src[c] + a, (cl < b ? cl : b) - a);
        }
    }
    /* copies longer than the job's columns (never produced by the Python layer) finish here */
    for (int c = 0; c < job->ncopy; c++) {
        if (job->copy_len[c] > len)
            memcpy(job->copy_dst[c] + len, job->copy_src[c] + len, job->copy_len[c] - len);
    }
    free(full);
    rs_free(scratch);
    return 0;
}

void rs_statistics(uint64_t out[3])
{
    for (int i = 0; i < 3; i++)
        out[i] = __atomic_load_n(&rs_stats[i], __ATOMIC_RELAXED);
}

#define RS_HUGE (2u * 1024 * 1024)

void *rs_alloc(size_t size)
{
    void *p = NULL;
    size_t align = size >= 2 * RS_HUGE ? RS_HUGE : 64;
    if (size == 0)
        size = 64;
    if (posix_memalign(&p, align, size) != 0)
        return NULL;
#if defined(__linux__) && defined(MADV_HUGEPAGE)
    if (align == RS_HUGE)
        (void)madvise(p, size & ~(size_t)4095, MADV_HUGEPAGE); /* advice only */
#endif
    return p;
}

void rs_free(void *ptr)
{
    free(ptr);
}
