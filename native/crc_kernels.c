/*
 * CRC-32 (zlib's), CRC-32C and CRC-64/NVME kernels behind native._checksums.
 *
 * Theory of operation
 * -------------------
 * All three CRCs are "reflected": the first bit of the message is the highest power of x,
 * so the 32- or 64-bit register holds x^(w-1) in bit 0 and x^0 in bit w-1, shifts right,
 * and each input byte is XORed into its low end. CRC-32 (the one of zlib, gzip and PNG)
 * uses the reflected polynomial 0xEDB88320, CRC-32C 0x82F63B78, CRC-64/NVME
 * 0x9A6C9329AC4BC9B5; all start from an all-ones register and invert it at the end. To
 * continue from a finished CRC, invert it back into the register, run, and invert again
 * (the zlib.crc32 convention). The "raw" functions below work on the register itself,
 * without the inversions.
 *
 * Slicing-by-8 (portable, all three CRCs). Byte at a time, a table T0[256] holds the
 * register's change for each value of the byte leaving it:
 * reg = T0[(reg ^ byte) & 0xff] ^ (reg >> 8), one dependent lookup per byte. Slicing-by-8
 * takes eight bytes per step: XOR the next 8 input bytes (little-endian) into the register,
 * then look each of the 8 bytes of the result up in its own table, Tk[b] = the effect of
 * byte b followed by k zero bytes, built from T0 by Tk[b] = (Tk-1[b] >> 8) ^ T0[Tk-1[b] & 0xff].
 * The eight lookups are independent and XORed together into the new register, so the CPU
 * overlaps them. For the 32-bit CRCs the upper four input bytes meet an empty part of the
 * register, which changes nothing in the formula; the two share one implementation, each
 * with its own tables. Leftover bytes (fewer than 8) go through T0 one at a time.
 *
 * SSE4.2 (CRC-32C on x86-64). The crc32 instruction is the raw CRC-32C register update:
 * _mm_crc32_u64 folds 8 bytes per instruction, _mm_crc32_u8 finishes the tail. One
 * instruction takes three cycles but a new one can start every cycle, so the kernel runs
 * three independent registers over three adjacent stripes of CRC32C_STRIPE bytes, the
 * second and third starting from zero, and then joins them: the raw CRC is linear, so
 * raw(r, A || B) = shift(raw(r, A)) ^ raw(0, B), where shift(x) is the register x after
 * CRC32C_STRIPE zero bytes. shift is linear in x, so four 256-entry tables (one per byte
 * of x, built at init from its value on the 32 single bits) compute it in four lookups.
 * Inputs shorter than three stripes, and the rest after the last whole triple, run on one
 * register. (The instruction knows only the Castagnoli polynomial, hence no CRC-32 here.)
 *
 * PCLMULQDQ folding (CRC-32 and CRC-64/NVME on x86-64). With the register XORed into the
 * first w/8 bytes, the raw CRC of a message M is M(x) * x^w mod P, so any message
 * congruent to M modulo P (at the same distance from the end) has the same CRC. A 16-byte
 * block A that lies d bytes before block B contributes A(x) * x^(8d) to B's position;
 * splitting A into its first half H (higher powers) and second half L,
 * A * x^(8d) = H * x^(8d+64) + L * x^(8d), and replacing the powers by their residues mod P
 * gives two 64x64-bit carry-less products (one pclmulqdq each) whose XOR is congruent to A
 * moved onto B: XOR it into B and drop A. In the reflected order a carry-less product comes
 * out one bit position short, so the constants are x^(8d+63) and x^(8d-1) mod P, each as
 * a 64-bit reflected operand (x^e in bit 63 - e). The kernel keeps eight 16-byte
 * accumulators and folds each over d = 128 bytes per step (eight independent multiply
 * chains), then folds them into one over d = 16, folds any remaining whole blocks the same
 * way, and hands the last 16-byte accumulator and the tail (< 16 bytes) to the
 * slicing-by-8 code with a zero register. No Barrett reduction is needed: from a zero
 * register the tables compute B(x) * x^w mod P of the last block B, which is the reduction.
 *
 * The folding itself never looks at the width of the CRC; only three things do. First,
 * the constants: mod the 33-bit CRC-32 polynomial the residues have degree < 32, so as
 * 64-bit reflected operands they fill only the upper 32 bits (the 32-bit reflected residue
 * shifted left by 32, same exponents as for CRC-64); each product then has degree < 96
 * and lands in bits 32..126 of the 128-bit result, which still holds it whole. Second,
 * the initial register is XORed into the first 4 bytes instead of 8. Third, the last
 * accumulator and the tail go through the 32-bit tables (two slicing steps reduce the
 * 128-bit accumulator to the 32-bit register). The constants are computed at init by
 * multiplying 1 by x one bit at a time (a right shift in the reflected register).
 *
 * The x86 kernels are compiled for their instruction set alone and chosen at run time from
 * the CPU's flags; everything else is compiled for the baseline.
 */
#include "crc_kernels.h"

#include <string.h>

#if defined(__x86_64__)
#include <nmmintrin.h>
#include <wmmintrin.h>
#define CRC_HAVE_X86 1
#else
#define CRC_HAVE_X86 0
#endif

#define CRC32_POLY 0xEDB88320u
#define CRC32C_POLY 0x82F63B78u
#define CRC64NVME_POLY 0x9A6C9329AC4BC9B5ull
/* Bytes per stripe of the three-way SSE4.2 loop (a multiple of 8). */
#define CRC32C_STRIPE 1024
/* The folding set-up needs 128 bytes (eight blocks); from there on it beats the tables
 * (measured: 128 bytes in 26 ns against 62 ns by slicing-by-8, both CRCs). */
#define CRC_FOLD_MIN 128

static uint32_t crc32_table[8][256];
static uint32_t crc32c_table[8][256];
/* crc32c_shift[k][b]: the raw register (b << 8k) after CRC32C_STRIPE zero bytes. */
static uint32_t crc32c_shift[4][256];
static uint64_t crc64nvme_table[8][256];
static int crc_sse42_detected;
static int crc_pclmul_detected;
/* Folding constants, 64-bit reflected: {x^(8d+63), x^(8d-1)} mod P for d = 128 and 16. */
static uint64_t crc32_fold128[2];
static uint64_t crc32_fold16[2];
static uint64_t crc64nvme_fold128[2];
static uint64_t crc64nvme_fold16[2];

static int crc_detect_sse42(void);
static int crc_detect_pclmul(void);

/* ---- tables and constants --------------------------------------------------------------- */

/* The 8 bytes at p as a little-endian integer (any alignment, any host byte order). */
static inline uint64_t load_le64(const uint8_t *p)
{
    uint64_t word;
    memcpy(&word, p, sizeof word);
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    word = __builtin_bswap64(word);
#endif
    return word;
}

/* The slicing-by-8 tables of a 32-bit CRC with the reflected polynomial `poly`. */
static void crc32_tables_build(uint32_t table[8][256], uint32_t poly)
{
    for (uint32_t b = 0; b < 256; b++) {
        uint32_t reg = b;
        for (int bit = 0; bit < 8; bit++)
            reg = (reg & 1) ? (reg >> 1) ^ poly : reg >> 1;
        table[0][b] = reg;
    }
    for (int k = 1; k < 8; k++)
        for (int b = 0; b < 256; b++) {
            uint32_t prev = table[k - 1][b];
            table[k][b] = (prev >> 8) ^ table[0][prev & 0xff];
        }
}

static void crc64nvme_build(void)
{
    for (uint64_t b = 0; b < 256; b++) {
        uint64_t reg = b;
        for (int bit = 0; bit < 8; bit++)
            reg = (reg & 1) ? (reg >> 1) ^ CRC64NVME_POLY : reg >> 1;
        crc64nvme_table[0][b] = reg;
    }
    for (int k = 1; k < 8; k++)
        for (int b = 0; b < 256; b++) {
            uint64_t prev = crc64nvme_table[k - 1][b];
            crc64nvme_table[k][b] = (prev >> 8) ^ crc64nvme_table[0][prev & 0xff];
        }
}

/* The tables of shift(x), the raw CRC-32C register x after CRC32C_STRIPE zero bytes. */
static void crc32c_shift_build(void)
{
    uint32_t bit_image[32];
    for (int i = 0; i < 32; i++) {
        uint32_t reg = 1u << i;
        for (int n = 0; n < CRC32C_STRIPE; n++)
            reg = crc32c_table[0][reg & 0xff] ^ (reg >> 8);
        bit_image[i] = reg;
    }
    for (int k = 0; k < 4; k++)
        for (int b = 0; b < 256; b++) {
            uint32_t image = 0;
            for (int i = 0; i < 8; i++)
                if (b & (1 << i))
                    image ^= bit_image[8 * k + i];
            crc32c_shift[k][b] = image;
        }
}

/* x^n mod P for CRC-32, reflected (bit 31 is x^0). */
static uint32_t crc32_xpow(unsigned n)
{
    uint32_t reg = 1u << 31;
    for (unsigned i = 0; i < n; i++)
        reg = (reg & 1) ? (reg >> 1) ^ CRC32_POLY : reg >> 1;
    return reg;
}

/* x^n mod P for CRC-64/NVME, reflected (bit 63 is x^0). */
static uint64_t crc64nvme_xpow(unsigned n)
{
    uint64_t reg = 1ull << 63;
    for (unsigned i = 0; i < n; i++)
        reg = (reg & 1) ? (reg >> 1) ^ CRC64NVME_POLY : reg >> 1;
    return reg;
}

static void crc32_fold_constants(uint64_t out[2], unsigned distance_bytes)
{
    /* x^e is bit 31 - e of the 32-bit residue and must be bit 63 - e of the operand. */
    out[0] = (uint64_t)crc32_xpow(8 * distance_bytes + 63) << 32; /* first 8 bytes */
    out[1] = (uint64_t)crc32_xpow(8 * distance_bytes - 1) << 32;  /* last 8 bytes */
}

static void crc64nvme_fold_constants(uint64_t out[2], unsigned distance_bytes)
{
    out[0] = crc64nvme_xpow(8 * distance_bytes + 63); /* for the first 8 bytes of a block */
    out[1] = crc64nvme_xpow(8 * distance_bytes - 1);  /* for the last 8 bytes */
}

void crc_init(void)
{
    crc32_tables_build(crc32_table, CRC32_POLY);
    crc32_tables_build(crc32c_table, CRC32C_POLY);
    crc32c_shift_build();
    crc64nvme_build();
    crc32_fold_constants(crc32_fold128, 128);
    crc32_fold_constants(crc32_fold16, 16);
    crc64nvme_fold_constants(crc64nvme_fold128, 128);
    crc64nvme_fold_constants(crc64nvme_fold16, 16);
    crc_sse42_detected = crc_detect_sse42();
    crc_pclmul_detected = crc_detect_pclmul();
}

int crc32_pclmul_available(void)
{
    return crc_pclmul_detected;
}

int crc32c_sse42_available(void)
{
    return crc_sse42_detected;
}

int crc64nvme_pclmul_available(void)
{
    return crc_pclmul_detected;
}

/* ---- portable slicing-by-8 -------------------------------------------------------------- */

/* One slicing-by-8 step of a 32-bit CRC: the register after 8 more bytes, XORed into `word`. */
static inline uint32_t crc32w_slice8(uint32_t table[8][256], uint64_t word)
{
    return table[7][word & 0xff] ^ table[6][(word >> 8) & 0xff] ^ table[5][(word >> 16) & 0xff]
           ^ table[4][(word >> 24) & 0xff] ^ table[3][(word >> 32) & 0xff]
           ^ table[2][(word >> 40) & 0xff] ^ table[1][(word >> 48) & 0xff]
           ^ table[0][word >> 56];
}

/* The raw register of a 32-bit CRC (its tables) after data[0..len), from register `reg`. */
static inline uint32_t crc32w_raw(uint32_t table[8][256], uint32_t reg, const uint8_t *data,
                                  size_t len)
{
    for (; len >= 8; data += 8, len -= 8)
        reg = crc32w_slice8(table, load_le64(data) ^ reg);
    for (; len > 0; data++, len--)
        reg = table[0][(reg ^ *data) & 0xff] ^ (reg >> 8);
    return reg;
}

/* The raw CRC-32 register after data[0..len), starting from register `reg`. */
static uint32_t crc32_raw(uint32_t reg, const uint8_t *data, size_t len)
{
    return crc32w_raw(crc32_table, reg, data, len);
}

uint32_t crc32_portable(uint32_t crc, const uint8_t *data, size_t len)
{
    return ~crc32_raw(~crc, data, len);
}

uint32_t crc32c_portable(uint32_t crc, const uint8_t *data, size_t len)
{
    return ~crc32w_raw(crc32c_table, ~crc, data, len);
}

/* One CRC-64/NVME slicing-by-8 step: the register after 8 more bytes, XORed into `word`. */
static inline uint64_t crc64nvme_slice8(uint64_t word)
{
    return crc64nvme_table[7][word & 0xff] ^ crc64nvme_table[6][(word >> 8) & 0xff]
           ^ crc64nvme_table[5][(word >> 16) & 0xff] ^ crc64nvme_table[4][(word >> 24) & 0xff]
           ^ crc64nvme_table[3][(word >> 32) & 0xff] ^ crc64nvme_table[2][(word >> 40) & 0xff]
           ^ crc64nvme_table[1][(word >> 48) & 0xff] ^ crc64nvme_table[0][word >> 56];
}

/* The raw CRC-64/NVME register after data[0..len), starting from register `reg`. */
static uint64_t crc64nvme_raw(uint64_t reg, const uint8_t *data, size_t len)
{
    for (; len >= 8; data += 8, len -= 8)
        reg = crc64nvme_slice8(load_le64(data) ^ reg);
    for (; len > 0; data++, len--)
        reg = crc64nvme_table[0][(reg ^ *data) & 0xff] ^ (reg >> 8);
    return reg;
}

uint64_t crc64nvme_portable(uint64_t crc, const uint8_t *data, size_t len)
{
    return ~crc64nvme_raw(~crc, data, len);
}

/* ---- x86-64 kernels --------------------------------------------------------------------- */

#if CRC_HAVE_X86

/* The raw CRC-32C register `reg` after CRC32C_STRIPE zero bytes. */
static inline uint32_t crc32c_shift_stripe(uint32_t reg)
{
    return crc32c_shift[0][reg & 0xff] ^ crc32c_shift[1][(reg >> 8) & 0xff]
           ^ crc32c_shift[2][(reg >> 16) & 0xff] ^ crc32c_shift[3][reg >> 24];
}

/* The raw register after three stripes (3 * CRC32C_STRIPE bytes) starting at `data`. */
__attribute__((target("sse4.2"))) static inline uint32_t crc32c_sse42_triple(uint32_t reg,
                                                                            const uint8_t *data)
{
    uint64_t r0 = reg, r1 = 0, r2 = 0;
    for (size_t i = 0; i < CRC32C_STRIPE; i += 8) {
        uint64_t w0, w1, w2;
        memcpy(&w0, data + i, 8); /* x86 is little-endian */
        memcpy(&w1, data + CRC32C_STRIPE + i, 8);
        memcpy(&w2, data + 2 * CRC32C_STRIPE + i, 8);
        r0 = _mm_crc32_u64(r0, w0);
        r1 = _mm_crc32_u64(r1, w1);
        r2 = _mm_crc32_u64(r2, w2);
    }
    uint32_t joined = crc32c_shift_stripe((uint32_t)r0) ^ (uint32_t)r1;
    return crc32c_shift_stripe(joined) ^ (uint32_t)r2;
}

__attribute__((target("sse4.2"))) uint32_t crc32c_sse42(uint32_t crc, const uint8_t *data,
                                                        size_t len)
{
    uint32_t reg32 = ~crc;
    for (; len >= 3 * CRC32C_STRIPE; data += 3 * CRC32C_STRIPE, len -= 3 * CRC32C_STRIPE)
        reg32 = crc32c_sse42_triple(reg32, data);
    uint64_t reg = reg32;
    for (; len >= 8; data += 8, len -= 8) {
        uint64_t word;
        memcpy(&word, data, sizeof word);
        reg = _mm_crc32_u64(reg, word);
    }
    reg32 = (uint32_t)reg;
    for (; len > 0; data++, len--)
        reg32 = _mm_crc32_u8(reg32, *data);
    return ~reg32;
}

static inline __m128i load128(const uint8_t *p)
{
    return _mm_loadu_si128((const __m128i *)(const void *)p);
}

/* Move the 16-byte block `acc` onto `next` (see the theory of operation): the folded sum. */
__attribute__((target("pclmul"))) static inline __m128i crc_fold_step(__m128i acc, __m128i next,
                                                                     __m128i constants)
{
    __m128i first = _mm_clmulepi64_si128(acc, constants, 0x00);
    __m128i last = _mm_clmulepi64_si128(acc, constants, 0x11);
    return _mm_xor_si128(next, _mm_xor_si128(first, last));
}

/* Fold data[0..len) (len >= 128), with `init` XORed into its first block, into one 16-byte
 * block congruent to all of it at the place of the last whole block, using the constants of
 * a CRC for d = 128 and d = 16; the last len % 16 bytes are left out. */
__attribute__((target("pclmul"))) static inline __m128i crc_fold(__m128i init,
                                                                 const uint8_t *data, size_t len,
                                                                 const uint64_t fold128[2],
                                                                 const uint64_t fold16[2])
{
    const __m128i k128 = _mm_set_epi64x((long long)fold128[1], (long long)fold128[0]);
    const __m128i k16 = _mm_set_epi64x((long long)fold16[1], (long long)fold16[0]);
    __m128i acc[8];
    for (int i = 0; i < 8; i++)
        acc[i] = load128(data + 16 * i);
    acc[0] = _mm_xor_si128(acc[0], init);
    for (data += 128, len -= 128; len >= 128; data += 128, len -= 128)
        for (int i = 0; i < 8; i++)
            acc[i] = crc_fold_step(acc[i], load128(data + 16 * i), k128);
    __m128i sum = acc[0];
    for (int i = 1; i < 8; i++)
        sum = crc_fold_step(sum, acc[i], k16);
    for (; len >= 16; data += 16, len -= 16)
        sum = crc_fold_step(sum, load128(data), k16);
    return sum;
}

__attribute__((target("pclmul"))) uint32_t crc32_pclmul(uint32_t crc, const uint8_t *data,
                                                        size_t len)
{
    if (len < CRC_FOLD_MIN)
        return crc32_portable(crc, data, len);
    __m128i sum = crc_fold(_mm_cvtsi32_si128((int)~crc), data, len, crc32_fold128, crc32_fold16);
    uint8_t last[16];
    _mm_storeu_si128((__m128i *)(void *)last, sum);
    size_t tail = len % 16;
    return ~crc32_raw(crc32_raw(0, last, sizeof last), data + len - tail, tail);
}

__attribute__((target("pclmul"))) uint64_t crc64nvme_pclmul(uint64_t crc, const uint8_t *data,
                                                            size_t len)
{
    if (len < CRC_FOLD_MIN)
        return crc64nvme_portable(crc, data, len);
    __m128i sum = crc_fold(_mm_cvtsi64_si128((long long)~crc), data, len, crc64nvme_fold128,
                           crc64nvme_fold16);
    uint8_t last[16];
    _mm_storeu_si128((__m128i *)(void *)last, sum);
    size_t tail = len % 16;
    return ~crc64nvme_raw(crc64nvme_raw(0, last, sizeof last), data + len - tail, tail);
}

static int crc_detect_sse42(void)
{
    __builtin_cpu_init();
    return __builtin_cpu_supports("sse4.2") ? 1 : 0;
}

static int crc_detect_pclmul(void)
{
    __builtin_cpu_init();
    return __builtin_cpu_supports("pclmul") ? 1 : 0;
}

#else

uint32_t crc32_pclmul(uint32_t crc, const uint8_t *data, size_t len)
{
    return crc32_portable(crc, data, len);
}

uint32_t crc32c_sse42(uint32_t crc, const uint8_t *data, size_t len)
{
    return crc32c_portable(crc, data, len);
}

uint64_t crc64nvme_pclmul(uint64_t crc, const uint8_t *data, size_t len)
{
    return crc64nvme_portable(crc, data, len);
}

static int crc_detect_sse42(void)
{
    return 0;
}

static int crc_detect_pclmul(void)
{
    return 0;
}

#endif

/* ---- dispatch --------------------------------------------------------------------------- */

uint32_t crc32_run(int kernel, uint32_t crc, const uint8_t *data, size_t len)
{
    if (kernel == CRC32_KERNEL_PCLMUL && crc_pclmul_detected)
        return crc32_pclmul(crc, data, len);
    return crc32_portable(crc, data, len);
}

uint32_t crc32c_run(int kernel, uint32_t crc, const uint8_t *data, size_t len)
{
    if (kernel == CRC32C_KERNEL_SSE42 && crc_sse42_detected)
        return crc32c_sse42(crc, data, len);
    return crc32c_portable(crc, data, len);
}

uint64_t crc64nvme_run(int kernel, uint64_t crc, const uint8_t *data, size_t len)
{
    if (kernel == CRC64NVME_KERNEL_PCLMUL && crc_pclmul_detected)
        return crc64nvme_pclmul(crc, data, len);
    return crc64nvme_portable(crc, data, len);
}
