/*
 * XSalsa20 (Salsa20/20 with a 192-bit nonce, as in libsodium's crypto_stream_xsalsa20 and
 * crypto_secretbox) kernels behind native._xsalsa20; see salsa_kernels.c for the theory of
 * operation.
 *
 * salsa_init() reads the CPU's flags; it must run once before xsalsa20_run or xsalsa20_xor
 * (the Cython module calls it at import, with the GIL held). Everything else is pure.
 */
#ifndef BALLAST_SALSA_KERNELS_H
#define BALLAST_SALSA_KERNELS_H

#include <stddef.h>
#include <stdint.h>

enum { XSALSA20_KERNEL_PORTABLE = 0, XSALSA20_KERNEL_AVX512 = 1 };

/* Read the CPU's flags. Idempotent. */
void salsa_init(void);

/* 1 if this build and CPU can run the AVX-512 XSalsa20 kernel, else 0. */
int xsalsa20_avx512_available(void);

/* HSalsa20: the 32-byte subkey of `key` for the 16-byte input `in` (the first 16 bytes of
 * an XSalsa20 nonce), as crypto_core_hsalsa20 with the default constants. */
void hsalsa20(uint8_t out[32], const uint8_t in[16], const uint8_t key[32]);

/* One 64-byte Salsa20/20 keystream block of `key`, 8-byte `nonce` and block `counter`. */
void salsa20_block(uint8_t out[64], const uint8_t key[32], const uint8_t nonce[8],
                   uint64_t counter);

/* out[i] = in[i] ^ keystream[skip + i] for i in [0, len), where keystream is the XSalsa20
 * stream of the 24-byte `nonce` and 32-byte `key` (block counter starting at 0 and wrapping
 * at 2^64). `skip` is any byte offset. out may equal in (in place); otherwise they must not
 * overlap. These run the portable and the AVX-512 kernel; only call the AVX-512 one when
 * xsalsa20_avx512_available(). */
void xsalsa20_xor_portable(uint8_t *out, const uint8_t *in, size_t len, const uint8_t nonce[24],
                           const uint8_t key[32], uint64_t skip);
void xsalsa20_xor_avx512(uint8_t *out, const uint8_t *in, size_t len, const uint8_t nonce[24],
                         const uint8_t key[32], uint64_t skip);

/* As above with the given kernel (XSALSA20_KERNEL_*); an unavailable one falls back to the
 * portable kernel. */
void xsalsa20_run(int kernel, uint8_t *out, const uint8_t *in, size_t len,
                  const uint8_t nonce[24], const uint8_t key[32], uint64_t skip);

/* As above with the fastest kernel this CPU runs (the environment is not consulted). */
void xsalsa20_xor(uint8_t *out, const uint8_t *in, size_t len, const uint8_t nonce[24],
                  const uint8_t key[32], uint64_t skip);

#endif /* BALLAST_SALSA_KERNELS_H */
