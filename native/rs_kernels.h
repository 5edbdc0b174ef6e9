/*
 * Reed-Solomon over GF(2^8) (polynomial 0x11d): arithmetic, the Cauchy generator matrix and
 * the multiply-accumulate kernels behind native._reed_solomon.
 *
 * Theory of operation
 * -------------------
 * The code is systematic: fragments 0..k-1 are the data, fragment k+i (0 <= i < m) is
 * sum_j C[i][j] * data_j with the Cauchy matrix C[i][j] = 1 / ((k + i) ^ j). Every square
 * submatrix of a Cauchy matrix is invertible, so the generator [I; C] is MDS: any k of the
 * k+m fragments determine the data (the same matrix as ISA-L's gf_gen_cauchy1_matrix).
 *
 * Every encode, decode and rebuild is one "dot" job: out_r = sum_j coeff[r][j] * in_j over a
 * run of bytes. A coefficient c is stored as a 64-byte table: the products c*x for the
 * sixteen low nibbles x (twice, to fill a 256-bit register) then c*(x<<4) for the sixteen
 * high nibbles (twice), so c*b = lo[b & 15] ^ hi[b >> 4]. The AVX2 kernel does that lookup
 * 32 bytes at a time with vpshufb; the portable kernel expands each table to all 256
 * products and looks bytes up one by one.
 *
 * rs_run walks the columns in cache-sized blocks. For each block it computes every output
 * row (in groups that fit in registers, so each input byte is loaded once per group) and
 * performs the job's plain copies, so a decode that copies the surviving data fragments
 * into place touches each input block once while it is in cache. Inputs shorter than the
 * job read as zeros past their end, and outputs shorter than the job are written only up to
 * their end: that is how the zero padding of the last data fragment(s) is handled without
 * copying the input.
 */
#ifndef BALLAST_RS_KERNELS_H
#define BALLAST_RS_KERNELS_H

#include <stddef.h>
#include <stdint.h>

#define RS_TABLE_BYTES 64
/* Upper bound on the inputs and output rows of one job (k <= 32, rows <= k + m <= 48). */
#define RS_MAX_ROWS 64

enum { RS_KERNEL_PORTABLE = 0, RS_KERNEL_AVX2 = 1 };

typedef struct {
    size_t len;                     /* columns (bytes per fragment) */
    int k;                          /* number of inputs */
    int rows;                       /* number of outputs */
    const uint8_t *tables;          /* rows * k * RS_TABLE_BYTES, row-major, 32-byte aligned */
    const uint8_t *const *src;      /* k input pointers */
    const size_t *src_len;          /* bytes present in each input (rest reads as 0), or NULL */
    uint8_t *const *dst;            /* rows output pointers */
    const size_t *dst_len;          /* bytes to write in each output, or NULL for len */
    int ncopy;                      /* plain copies done in the same blocked pass */
    const uint8_t *const *copy_src;
    uint8_t *const *copy_dst;
    const size_t *copy_len;         /* each copy moves copy_len[i] bytes (may exceed len) */
} rs_job_t;

/* Builds the GF(2^8) log/exp tables; call once before anything else. */
void rs_init(void);

uint8_t rs_gf_mul(uint8_t a, uint8_t b);
uint8_t rs_gf_inv(uint8_t a); /* a != 0 */

/* Row `index` (0 <= index < k + m) of the k-column systematic generator matrix. */
void rs_generator_row(int k, int index, uint8_t *row);

/* Coefficients that compute fragments wanted[0..nwanted) from the k fragments whose
 * indexes are present[0..k) (distinct, each < k + m): coeffs is nwanted * k, row-major.
 * Returns 0, or -1 if the chosen fragments are not independent (cannot happen for the
 * Cauchy generator; checked anyway). */
int rs_solve(int k, const int *present, int nwanted, const int *wanted, uint8_t *coeffs);

/* Expands n coefficients into n 64-byte nibble tables (out must be 32-byte aligned). */
void rs_make_tables(int n, const uint8_t *coeffs, uint8_t *out);

/* 1 if this CPU (and this build) can run the AVX2 kernel. */
int rs_avx2_available(void);

/* Runs a job with the given kernel. Returns 0, or -1 when scratch memory ran out. */
int rs_run(int kernel, const rs_job_t *job);

/* Bytes produced by each kernel since start: [portable, avx2 vector loop, avx2 scalar tails]. */
void rs_statistics(uint64_t out[3]);

/* Buffer memory: 64-byte aligned; large blocks are 2 MiB aligned and advised as huge pages
 * so that filling a fresh multi-megabyte result costs few page faults. */
void *rs_alloc(size_t size);
void rs_free(void *ptr);

#endif
