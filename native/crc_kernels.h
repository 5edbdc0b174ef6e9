/*
 * CRC-32 (zlib's), CRC-32C (Castagnoli) and CRC-64/NVME kernels behind native._checksums;
 * see crc_kernels.c for the theory of operation.
 *
 * Every function continues from a previous *finished* CRC, like zlib.crc32(data, crc):
 * pass 0 to start, or the result over the earlier bytes to get the result over the
 * concatenation. The tables are built by crc_init(), which must run once before any other
 * call (the Cython module calls it at import, with the GIL held).
 */
#ifndef BALLAST_CRC_KERNELS_H
#define BALLAST_CRC_KERNELS_H

#include <stddef.h>
#include <stdint.h>

enum { CRC32_KERNEL_PORTABLE = 0, CRC32_KERNEL_PCLMUL = 1 };
enum { CRC32C_KERNEL_PORTABLE = 0, CRC32C_KERNEL_SSE42 = 1 };
enum { CRC64NVME_KERNEL_PORTABLE = 0, CRC64NVME_KERNEL_PCLMUL = 1 };

/* Build the tables and folding constants and read the CPU's flags. Idempotent. */
void crc_init(void);

/* 1 if this build and CPU can run the PCLMULQDQ CRC-32 kernel, else 0. */
int crc32_pclmul_available(void);

/* 1 if this build and CPU can run the SSE4.2 CRC-32C kernel, else 0. */
int crc32c_sse42_available(void);

/* 1 if this build and CPU can run the PCLMULQDQ CRC-64/NVME kernel, else 0. */
int crc64nvme_pclmul_available(void);

/* CRC-32 (zlib.crc32) of data[0..len) continuing from crc, with the portable slicing-by-8
 * kernel. */
uint32_t crc32_portable(uint32_t crc, const uint8_t *data, size_t len);

/* CRC-32 by PCLMULQDQ folding; only call when crc32_pclmul_available(). */
uint32_t crc32_pclmul(uint32_t crc, const uint8_t *data, size_t len);

/* CRC-32 with the given kernel (CRC32_KERNEL_*); an unavailable one falls back to the
 * portable kernel. */
uint32_t crc32_run(int kernel, uint32_t crc, const uint8_t *data, size_t len);

/* CRC-32C of data[0..len) continuing from crc, with the portable slicing-by-8 kernel. */
uint32_t crc32c_portable(uint32_t crc, const uint8_t *data, size_t len);

/* CRC-32C with the SSE4.2 crc32 instruction; only call when crc32c_sse42_available(). */
uint32_t crc32c_sse42(uint32_t crc, const uint8_t *data, size_t len);

/* CRC-32C with the given kernel (CRC32C_KERNEL_*); an unavailable one falls back to the
 * portable kernel. */
uint32_t crc32c_run(int kernel, uint32_t crc, const uint8_t *data, size_t len);

/* CRC-64/NVME of data[0..len) continuing from crc, with the portable slicing-by-8 kernel. */
uint64_t crc64nvme_portable(uint64_t crc, const uint8_t *data, size_t len);

/* CRC-64/NVME by PCLMULQDQ folding; only call when crc64nvme_pclmul_available(). */
uint64_t crc64nvme_pclmul(uint64_t crc, const uint8_t *data, size_t len);

/* CRC-64/NVME with the given kernel (CRC64NVME_KERNEL_*); an unavailable one falls back to
 * the portable kernel. */
uint64_t crc64nvme_run(int kernel, uint64_t crc, const uint8_t *data, size_t len);

#endif /* BALLAST_CRC_KERNELS_H */
