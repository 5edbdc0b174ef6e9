/*
 * XSalsa20 stream cipher kernels behind native._xsalsa20.
 *
 * Theory of operation
 * -------------------
 * Salsa20/20 turns a 16-word (32-bit, little-endian) state into a 64-byte keystream block:
 *
 *     "expa"  key0   key1   key2
 *     key3    "nd 3" nonce0 nonce1
 *     ctr_lo  ctr_hi "2-by" key4
 *     key5    key6   key7   "te k"
 *
 * ten double rounds (a column round then a row round, each four independent quarter rounds
 * of b ^= (a + d) <<< 7, c ^= (b + a) <<< 9, d ^= (c + b) <<< 13, a ^= (d + c) <<< 18), and
 * the input state added back word by word. Block n of the stream uses counter n.
 *
 * XSalsa20 extends the nonce to 24 bytes: HSalsa20 (the same twenty rounds on the state
 * with the first 16 nonce bytes in words 6..9 and no final addition, output words
 * 0, 5, 10, 15, 6, 7, 8, 9) derives a subkey from the key and nonce[0..16), and the stream
 * is Salsa20 with that subkey and nonce[16..24). crypto_secretbox uses keystream bytes
 * 0..31 as the Poly1305 key and XORs the message with the bytes from 32 on, so the
 * callers ask for any starting byte `skip`: a partial first block comes from one scalar
 * block, the rest starts on a block boundary.
 *
 * Portable kernel: one block at a time in scalar code, XORed four bytes at a time.
 *
 * AVX-512 kernel: sixteen consecutive blocks at once. Each of the 16 state words lives in
 * one 512-bit register whose lane i belongs to block n + i (so only the counter words
 * differ between lanes, with the carry into the high word handled by a compare mask); a
 * quarter-round step is then one vpaddd, one vprold (AVX-512F has 32-bit rotates) and one
 * vpxord on all sixteen blocks. After the final addition, register w holds word w of the
 * sixteen blocks, so a 16x16 transpose of 32-bit words (vpunpck{l,h}dq, vpunpck{l,h}qdq,
 * two rounds of vshufi32x4) turns it into one register per block, XORed with 64 bytes of
 * input. A short tail (at most two blocks) runs on the portable code; a longer one is
 * computed as a whole batch into a stack buffer.
 *
 * The x86 kernel is compiled for its instruction set alone and chosen at run time from the
 * CPU's flags; everything else is compiled for the baseline. Copies of the subkey and of
 * keystream on the stack are wiped before returning.
 */
#include "salsa_kernels.h"

#include <string.h>

#if defined(__x86_64__)
#include <immintrin.h>
#define SALSA_HAVE_X86 1
#else
#define SALSA_HAVE_X86 0
#endif

#define SALSA_BLOCK 64
/* Blocks the AVX-512 kernel computes at once (one per 32-bit lane of a 512-bit register). */
#define SALSA_LANES 16
/* Tails of at most this many blocks run on the scalar code rather than on a whole batch. */
#define SALSA_SCALAR_TAIL_BLOCKS 2

static const uint32_t salsa_sigma[4] = {0x61707865u, 0x3320646eu, 0x79622d32u, 0x6b206574u};

static int salsa_avx512_detected;

static int salsa_detect_avx512(void);

/* ---- helpers ---------------------------------------------------------------------------- */

static inline uint32_t load_le32(const uint8_t *p)
{
    uint32_t word;
    memcpy(&word, p, sizeof word);
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    word = __builtin_bswap32(word);
#endif
    return word;
}

static inline void store_le32(uint8_t *p, uint32_t word)
{
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    word = __builtin_bswap32(word);
#endif
    memcpy(p, &word, sizeof word);
}

static inline uint32_t rotl32(uint32_t v, int n)
{
    return (v << n) | (v >> (32 - n));
}

/* Overwrite `len` bytes at p with zeros in a way the compiler does not drop. */
static void salsa_wipe(void *p, size_t len)
{
    volatile uint8_t *bytes = (volatile uint8_t *)p;
    while (len--)
        *bytes++ = 0;
}

/* ---- scalar Salsa20 core ------------------------------------------------------------------ */

/* The twenty Salsa20 rounds on x, in place (no final addition). */
static void salsa20_rounds(uint32_t x[16])
{
    for (int i = 0; i < 10; i++) {
        /* column round */
        x[4] ^= rotl32(x[0] + x[12], 7);
        x[8] ^= rotl32(x[4] + x[0], 9);
        x[12] ^= rotl32(x[8] + x[4], 13);
        x[0] ^= rotl32(x[12] + x[8], 18);
        x[9] ^= rotl32(x[5] + x[1], 7);
        x[13] ^= rotl32(x[9] + x[5], 9);
        x[1] ^= rotl32(x[13] + x[9], 13);
        x[5] ^= rotl32(x[1] + x[13], 18);
        x[14] ^= rotl32(x[10] + x[6], 7);
        x[2] ^= rotl32(x[14] + x[10], 9);
        x[6] ^= rotl32(x[2] + x[14], 13);
        x[10] ^= rotl32(x[6] + x[2], 18);
        x[3] ^= rotl32(x[15] + x[11], 7);
        x[7] ^= rotl32(x[3] + x[15], 9);
        x[11] ^= rotl32(x[7] + x[3], 13);
        x[15] ^= rotl32(x[11] + x[7], 18);
        /* row round */
        x[1] ^= rotl32(x[0] + x[3], 7);
        x[2] ^= rotl32(x[1] + x[0], 9);
        x[3] ^= rotl32(x[2] + x[1], 13);
        x[0] ^= rotl32(x[3] + x[2], 18);
        x[6] ^= rotl32(x[5] + x[4], 7);
        x[7] ^= rotl32(x[6] + x[5], 9);
        x[4] ^= rotl32(x[7] + x[6], 13);
        x[5] ^= rotl32(x[4] + x[7], 18);
        x[11] ^= rotl32(x[10] + x[9], 7);
        x[8] ^= rotl32(x[11] + x[10], 9);
        x[9] ^= rotl32(x[8] + x[11], 13);
        x[10] ^= rotl32(x[9] + x[8], 18);
        x[12] ^= rotl32(x[15] + x[14], 7);
        x[13] ^= rotl32(x[12] + x[15], 9);
        x[14] ^= rotl32(x[13] + x[12], 13);
        x[15] ^= rotl32(x[14] + x[13], 18);
    }
}

/* The Salsa20 state of `key` (32 bytes) and the 16 bytes `in` in words 6..9. */
static void salsa20_state(uint32_t state[16], const uint8_t key[32], const uint8_t in[16])
{
    state[0] = salsa_sigma[0];
    state[5] = salsa_sigma[1];
    state[10] = salsa_sigma[2];
    state[15] = salsa_sigma[3];
    for (int i = 0; i < 4; i++) {
        state[1 + i] = load_le32(key + 4 * i);
        state[11 + i] = load_le32(key + 16 + 4 * i);
        state[6 + i] = load_le32(in + 4 * i);
    }
}

/* The 16 keystream words of the block with `counter` (state words 8, 9 are replaced). */
static inline void salsa20_words(uint32_t out[16], const uint32_t state[16], uint64_t counter)
{
    uint32_t input[16];
    memcpy(input, state, sizeof input);
    input[8] = (uint32_t)counter;
    input[9] = (uint32_t)(counter >> 32);
    memcpy(out, input, sizeof input);
    salsa20_rounds(out);
    for (int i = 0; i < 16; i++)
        out[i] += input[i];
    salsa_wipe(input, sizeof input);
}

void hsalsa20(uint8_t out[32], const uint8_t in[16], const uint8_t key[32])
{
    uint32_t x[16];
    salsa20_state(x, key, in);
    salsa20_rounds(x);
    static const int picks[8] = {0, 5, 10, 15, 6, 7, 8, 9};
    for (int i = 0; i < 8; i++)
        store_le32(out + 4 * i, x[picks[i]]);
    salsa_wipe(x, sizeof x);
}

void salsa20_block(uint8_t out[64], const uint8_t key[32], const uint8_t nonce[8],
                   uint64_t counter)
{
    uint8_t in[16] = {0};
    memcpy(in, nonce, 8);
    uint32_t state[16], words[16];
    salsa20_state(state, key, in);
    salsa20_words(words, state, counter);
    for (int i = 0; i < 16; i++)
        store_le32(out + 4 * i, words[i]);
    salsa_wipe(state, sizeof state);
    salsa_wipe(words, sizeof words);
}

/* The Salsa20 state (without counter) of the XSalsa20 stream of `nonce` and `key`. */
static void xsalsa20_state(uint32_t state[16], const uint8_t nonce[24], const uint8_t key[32])
{
    uint8_t subkey[32], in[16] = {0};
    hsalsa20(subkey, nonce, key);
    memcpy(in, nonce + 16, 8);
    salsa20_state(state, subkey, in);
    salsa_wipe(subkey, sizeof subkey);
}

/* out = in ^ keystream[offset .. offset + len) of block `counter`; offset + len <= 64. */
static void salsa20_xor_partial(uint8_t *out, const uint8_t *in, size_t len,
                                const uint32_t state[16], uint64_t counter, size_t offset)
{
    uint32_t words[16];
    uint8_t block[SALSA_BLOCK];
    salsa20_words(words, state, counter);
    for (int i = 0; i < 16; i++)
        store_le32(block + 4 * i, words[i]);
    for (size_t i = 0; i < len; i++)
        out[i] = in[i] ^ block[offset + i];
    salsa_wipe(words, sizeof words);
    salsa_wipe(block, sizeof block);
}

/* out = in ^ keystream from the start of block `counter`, len bytes, one block at a time. */
static void salsa20_xor_scalar(uint8_t *out, const uint8_t *in, size_t len,
                               const uint32_t state[16], uint64_t counter)
{
    uint32_t words[16];
    for (; len >= SALSA_BLOCK; in += SALSA_BLOCK, out += SALSA_BLOCK, len -= SALSA_BLOCK) {
        salsa20_words(words, state, counter++);
        for (int i = 0; i < 16; i++)
            store_le32(out + 4 * i, load_le32(in + 4 * i) ^ words[i]);
    }
    if (len > 0)
        salsa20_xor_partial(out, in, len, state, counter, 0);
    salsa_wipe(words, sizeof words);
}

typedef void (*salsa20_bulk_fn)(uint8_t *out, const uint8_t *in, size_t len,
                                const uint32_t state[16], uint64_t counter);

/* The XSalsa20 XOR of the header, with the block-aligned part done by `bulk`. */
static void xsalsa20_xor_with(salsa20_bulk_fn bulk, uint8_t *out, const uint8_t *in, size_t len,
                              const uint8_t nonce[24], const uint8_t key[32], uint64_t skip)
{
    if (len == 0)
        return;
    uint32_t state[16];
    xsalsa20_state(state, nonce, key);
    uint64_t counter = skip / SALSA_BLOCK;
    size_t offset = (size_t)(skip % SALSA_BLOCK);
    if (offset != 0) {
        size_t head = SALSA_BLOCK - offset < len ? SALSA_BLOCK - offset : len;
        salsa20_xor_partial(out, in, head, state, counter++, offset);
        in += head;
        out += head;
        len -= head;
    }
    if (len > 0)
        bulk(out, in, len, state, counter);
    salsa_wipe(state, sizeof state);
}

void xsalsa20_xor_portable(uint8_t *out, const uint8_t *in, size_t len, const uint8_t nonce[24],
                           const uint8_t key[32], uint64_t skip)
{
    xsalsa20_xor_with(salsa20_xor_scalar, out, in, len, nonce, key, skip);
}

/* ---- x86-64 AVX-512 kernel ------------------------------------------------------------- */

#if SALSA_HAVE_X86

#define SALSA_STEP(a, b, c, r) a = _mm512_xor_si512(a, _mm512_rol_epi32(_mm512_add_epi32(b, c), r))

/* The keystream of the 16 blocks counter .. counter + 15, transposed: ks[i] is block i. */
__attribute__((target("avx512f"))) static inline void salsa20_avx512_batch(
    __m512i ks[16], const uint32_t state[16], uint64_t counter)
{
    __m512i s[16], x[16];
    for (int i = 0; i < 16; i++)
        s[i] = _mm512_set1_epi32((int)state[i]);
    const __m512i lo = _mm512_set1_epi32((int)(uint32_t)counter);
    const __m512i hi = _mm512_set1_epi32((int)(uint32_t)(counter >> 32));
    s[8] = _mm512_add_epi32(lo, _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13,
                                                  14, 15));
    __mmask16 carry = _mm512_cmplt_epu32_mask(s[8], lo);
    s[9] = _mm512_mask_add_epi32(hi, carry, hi, _mm512_set1_epi32(1));
    for (int i = 0; i < 16; i++)
        x[i] = s[i];
    for (int round = 0; round < 10; round++) {
        SALSA_STEP(x[4], x[0], x[12], 7);
        SALSA_STEP(x[9], x[5], x[1], 7);
        SALSA_STEP(x[14], x[10], x[6], 7);
        SALSA_STEP(x[3], x[15], x[11], 7);
        SALSA_STEP(x[8], x[4], x[0], 9);
        SALSA_STEP(x[13], x[9], x[5], 9);
        SALSA_STEP(x[2], x[14], x[10], 9);
        SALSA_STEP(x[7], x[3], x[15], 9);
        SALSA_STEP(x[12], x[8], x[4], 13);
        SALSA_STEP(x[1], x[13], x[9], 13);
        SALSA_STEP(x[6], x[2], x[14], 13);
        SALSA_STEP(x[11], x[7], x[3], 13);
        SALSA_STEP(x[0], x[12], x[8], 18);
        SALSA_STEP(x[5], x[1], x[13], 18);
        SALSA_STEP(x[10], x[6], x[2], 18);
        SALSA_STEP(x[15], x[11], x[7], 18);

        SALSA_STEP(x[1], x[0], x[3], 7);
        SALSA_STEP(x[6], x[5], x[4], 7);
        SALSA_STEP(x[11], x[10], x[9], 7);
        SALSA_STEP(x[12], x[15], x[14], 7);
        SALSA_STEP(x[2], x[1], x[0], 9);
        SALSA_STEP(x[7], x[6], x[5], 9);
        SALSA_STEP(x[8], x[11], x[10], 9);
        SALSA_STEP(x[13], x[12], x[15], 9);
        SALSA_STEP(x[3], x[2], x[1], 13);
        SALSA_STEP(x[4], x[7], x[6], 13);
        SALSA_STEP(x[9], x[8], x[11], 13);
        SALSA_STEP(x[14], x[13], x[12], 13);
        SALSA_STEP(x[0], x[3], x[2], 18);
        SALSA_STEP(x[5], x[4], x[7], 18);
        SALSA_STEP(x[10], x[9], x[8], 18);
        SALSA_STEP(x[15], x[14], x[13], 18);
    }
    for (int i = 0; i < 16; i++)
        x[i] = _mm512_add_epi32(x[i], s[i]);

    /* 16x16 transpose of 32-bit words. Pairs of rows interleaved by dwords, then by
     * qwords: u[4g + j] holds, in its 128-bit lane k, word 4k + j of rows 4g .. 4g + 3. */
    __m512i t[16], u[16];
    for (int i = 0; i < 16; i += 2) {
        t[i] = _mm512_unpacklo_epi32(x[i], x[i + 1]);
        t[i + 1] = _mm512_unpackhi_epi32(x[i], x[i + 1]);
    }
    for (int g = 0; g < 16; g += 4) {
        u[g + 0] = _mm512_unpacklo_epi64(t[g + 0], t[g + 2]);
        u[g + 1] = _mm512_unpackhi_epi64(t[g + 0], t[g + 2]);
        u[g + 2] = _mm512_unpacklo_epi64(t[g + 1], t[g + 3]);
        u[g + 3] = _mm512_unpackhi_epi64(t[g + 1], t[g + 3]);
    }
    /* Block 4k + j gathers lane k of u[j], u[4 + j], u[8 + j], u[12 + j]. */
    for (int j = 0; j < 4; j++) {
        __m512i v0 = _mm512_shuffle_i32x4(u[j], u[4 + j], 0x88);     /* a0 a2 b0 b2 */
        __m512i v1 = _mm512_shuffle_i32x4(u[j], u[4 + j], 0xdd);     /* a1 a3 b1 b3 */
        __m512i w0 = _mm512_shuffle_i32x4(u[8 + j], u[12 + j], 0x88); /* c0 c2 d0 d2 */
        __m512i w1 = _mm512_shuffle_i32x4(u[8 + j], u[12 + j], 0xdd); /* c1 c3 d1 d3 */
        ks[j] = _mm512_shuffle_i32x4(v0, w0, 0x88);                  /* lane 0 */
        ks[4 + j] = _mm512_shuffle_i32x4(v1, w1, 0x88);              /* lane 1 */
        ks[8 + j] = _mm512_shuffle_i32x4(v0, w0, 0xdd);              /* lane 2 */
        ks[12 + j] = _mm512_shuffle_i32x4(v1, w1, 0xdd);             /* lane 3 */
    }
}

/* out = in ^ keystream from the start of block `counter`, len bytes, 16 blocks at a time. */
__attribute__((target("avx512f"))) static void salsa20_xor_avx512(uint8_t *out, const uint8_t *in,
                                                                 size_t len,
                                                                 const uint32_t state[16],
                                                                 uint64_t counter)
{
    __m512i ks[16];
    for (; len >= SALSA_LANES * SALSA_BLOCK;
         in += SALSA_LANES * SALSA_BLOCK, out += SALSA_LANES * SALSA_BLOCK,
         len -= SALSA_LANES * SALSA_BLOCK, counter += SALSA_LANES) {
        salsa20_avx512_batch(ks, state, counter);
        for (int i = 0; i < 16; i++) {
            __m512i data = _mm512_loadu_si512((const void *)(in + SALSA_BLOCK * i));
            _mm512_storeu_si512((void *)(out + SALSA_BLOCK * i), _mm512_xor_si512(data, ks[i]));
        }
    }
    if (len == 0)
        return;
    if (len <= SALSA_SCALAR_TAIL_BLOCKS * SALSA_BLOCK) {
        salsa20_xor_scalar(out, in, len, state, counter);
        return;
    }
    uint8_t stream[SALSA_LANES * SALSA_BLOCK];
    salsa20_avx512_batch(ks, state, counter);
    for (int i = 0; i < 16; i++) {
        _mm512_storeu_si512((void *)(stream + SALSA_BLOCK * i), ks[i]);
        ks[i] = _mm512_setzero_si512();
    }
    for (size_t i = 0; i < len; i++)
        out[i] = in[i] ^ stream[i];
    salsa_wipe(stream, sizeof stream);
}

void xsalsa20_xor_avx512(uint8_t *out, const uint8_t *in, size_t len, const uint8_t nonce[24],
                         const uint8_t key[32], uint64_t skip)
{
    xsalsa20_xor_with(salsa20_xor_avx512, out, in, len, nonce, key, skip);
}

static int salsa_detect_avx512(void)
{
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") ? 1 : 0;
}

#else

void xsalsa20_xor_avx512(uint8_t *out, const uint8_t *in, size_t len, const uint8_t nonce[24],
                         const uint8_t key[32], uint64_t skip)
{
    xsalsa20_xor_portable(out, in, len, nonce, key, skip);
}

static int salsa_detect_avx512(void)
{
    return 0;
}

#endif

/* ---- dispatch --------------------------------------------------------------------------- */

void salsa_init(void)
{
    salsa_avx512_detected = salsa_detect_avx512();
}

int xsalsa20_avx512_available(void)
{
    return salsa_avx512_detected;
}

void xsalsa20_run(int kernel, uint8_t *out, const uint8_t *in, size_t len,
                  const uint8_t nonce[24], const uint8_t key[32], uint64_t skip)
{
    if (kernel == XSALSA20_KERNEL_AVX512 && salsa_avx512_detected)
        xsalsa20_xor_avx512(out, in, len, nonce, key, skip);
    else
        xsalsa20_xor_portable(out, in, len, nonce, key, skip);
}

void xsalsa20_xor(uint8_t *out, const uint8_t *in, size_t len, const uint8_t nonce[24],
                  const uint8_t key[32], uint64_t skip)
{
    xsalsa20_run(salsa_avx512_detected ? XSALSA20_KERNEL_AVX512 : XSALSA20_KERNEL_PORTABLE, out,
                 in, len, nonce, key, skip);
}
