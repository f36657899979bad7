/*  =========================================================================
    zg_sha256 - SHA-256 (FIPS 180-4)

    Written here because libcrypto is not one of zgate's dependencies and
    the ids it makes are not worth adding one.
    =========================================================================
*/

#include "common/zg_sha256.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const uint32_t s_round_constants [64] = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2
};

static inline uint32_t
s_rotr (uint32_t x, int n)
{
    return (x >> n) | (x << (32 - n));
}

static void
s_compress (uint32_t state [8], const uint8_t block [64])
{
    uint32_t w [64];
    for (int t = 0; t < 16; t++)
        w [t] = (uint32_t) block [4 * t] << 24 | (uint32_t) block [4 * t + 1] << 16
              | (uint32_t) block [4 * t + 2] << 8 | (uint32_t) block [4 * t + 3];
    for (int t = 16; t < 64; t++) {
        uint32_t s0 = s_rotr (w [t - 15], 7) ^ s_rotr (w [t - 15], 18) ^ (w [t - 15] >> 3);
        uint32_t s1 = s_rotr (w [t - 2], 17) ^ s_rotr (w [t - 2], 19) ^ (w [t - 2] >> 10);
        w [t] = w [t - 16] + s0 + w [t - 7] + s1;
    }
    uint32_t a = state [0], b = state [1], c = state [2], d = state [3];
    uint32_t e = state [4], f = state [5], g = state [6], h = state [7];
    for (int t = 0; t < 64; t++) {
        uint32_t t1 = h + (s_rotr (e, 6) ^ s_rotr (e, 11) ^ s_rotr (e, 25))
                    + ((e & f) ^ (~e & g)) + s_round_constants [t] + w [t];
        uint32_t t2 = (s_rotr (a, 2) ^ s_rotr (a, 13) ^ s_rotr (a, 22))
                    + ((a & b) ^ (a & c) ^ (b & c));
        h = g; g = f; f = e; e = d + t1;
        d = c; c = b; b = a; a = t1 + t2;
    }
    state [0] += a; state [1] += b; state [2] += c; state [3] += d;
    state [4] += e; state [5] += f; state [6] += g; state [7] += h;
}

void
zg_sha256_init (zg_sha256_t *self)
{
    static const uint32_t initial [8] = {
        0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19
    };
    memcpy (self->state, initial, sizeof (initial));
    self->total = 0;
    self->used = 0;
}

void
zg_sha256_update (zg_sha256_t *self, const void *data, size_t size)
{
    const uint8_t *bytes = data;
    self->total += size;
    if (self->used > 0) {
        size_t take = 64 - self->used < size? 64 - self->used: size;
        memcpy (self->block + self->used, bytes, take);
        self->used += take;
        bytes += take;
        size -= take;
        if (self->used < 64)
            return;
        s_compress (self->state, self->block);
        self->used = 0;
    }
    for (; size >= 64; bytes += 64, size -= 64)
        s_compress (self->state, bytes);
    memcpy (self->block, bytes, size);
    self->used = size;
}

void
zg_sha256_final (zg_sha256_t *self, uint8_t digest [ZG_SHA256_SIZE])
{
    uint64_t bits = self->total * 8;
    self->block [self->used++] = 0x80;
    if (self->used > 56) {
        memset (self->block + self->used, 0, 64 - self->used);
        s_compress (self->state, self->block);
        self->used = 0;
    }
    memset (self->block + self->used, 0, 56 - self->used);
    for (int index = 0; index < 8; index++)
        self->block [56 + index] = (uint8_t) (bits >> (56 - 8 * index));
    s_compress (self->state, self->block);
    for (int index = 0; index < 8; index++) {
        digest [4 * index]     = (uint8_t) (self->state [index] >> 24);
        digest [4 * index + 1] = (uint8_t) (self->state [index] >> 16);
        digest [4 * index + 2] = (uint8_t) (self->state [index] >> 8);
        digest [4 * index + 3] = (uint8_t) self->state [index];
    }
}

void
zg_sha256_hex (const void *data, size_t size, char hex [2 * ZG_SHA256_SIZE + 1])
{
    static const char digits [] = "0123456789abcdef";
    zg_sha256_t context;
    uint8_t digest [ZG_SHA256_SIZE];
    zg_sha256_init (&context);
    zg_sha256_update (&context, data, size);
    zg_sha256_final (&context, digest);
    for (int index = 0; index < ZG_SHA256_SIZE; index++) {
        hex [2 * index] = digits [digest [index] >> 4];
        hex [2 * index + 1] = digits [digest [index] & 15];
    }
    hex [2 * ZG_SHA256_SIZE] = 0;
}


//  --------------------------------------------------------------------------
//  Self test: the FIPS 180-4 examples (NIST CSRC "SHA256.pdf") and the
//  million-'a' vector

#define s_check(cond) do { \
    if (!(cond)) { \
        fprintf (stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond); \
        abort (); \
    } \
} while (0)

void
zg_sha256_test (bool verbose)
{
    printf (" * zg_sha256: ");
    char hex [2 * ZG_SHA256_SIZE + 1];

    zg_sha256_hex ("abc", 3, hex);
    s_check (strcmp (hex, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad") == 0);
    zg_sha256_hex ("", 0, hex);
    s_check (strcmp (hex, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855") == 0);
    const char *two_blocks = "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq";
    zg_sha256_hex (two_blocks, strlen (two_blocks), hex);
    s_check (strcmp (hex, "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1") == 0);
    const char *long_message = "abcdefghbcdefghicdefghijdefghijkefghijklfghijklmghijklmn"
                               "hijklmnoijklmnopjklmnopqklmnopqrlmnopqrsmnopqrstnopqrstu";
    zg_sha256_hex (long_message, strlen (long_message), hex);
    s_check (strcmp (hex, "cf5b16a778af8380036ce59e7b0492370b249b11e8f07a51afac45037afee9d1") == 0);

    //  One million 'a', fed in uneven pieces to exercise the block buffer
    char chunk [997];
    memset (chunk, 'a', sizeof (chunk));
    zg_sha256_t context;
    zg_sha256_init (&context);
    size_t remaining = 1000000;
    for (size_t piece = 1; remaining > 0; piece = (piece * 7 + 13) % sizeof (chunk) + 1) {
        size_t take = piece < remaining? piece: remaining;
        zg_sha256_update (&context, chunk, take);
        remaining -= take;
    }
    uint8_t digest [ZG_SHA256_SIZE];
    zg_sha256_final (&context, digest);
    static const uint8_t million [ZG_SHA256_SIZE] = {
        0xcd, 0xc7, 0x6e, 0x5c, 0x99, 0x14, 0xfb, 0x92, 0x81, 0xa1, 0xc7, 0xe2, 0x84, 0xd7, 0x3e, 0x67,
        0xf1, 0x80, 0x9a, 0x48, 0xa4, 0x97, 0x20, 0x0e, 0x04, 0x6d, 0x39, 0xcc, 0xc7, 0x11, 0x2c, 0xd0
    };
    s_check (memcmp (digest, million, sizeof (million)) == 0);

    //  Padding edges: 55, 56 and 64 bytes
    zg_sha256_hex (chunk, 55, hex);
    s_check (strcmp (hex, "9f4390f8d30c2dd92ec9f095b65e2b9ae9b0a925a5258e241c9f1e910f734318") == 0);
    zg_sha256_hex (chunk, 56, hex);
    s_check (strcmp (hex, "b35439a4ac6f0948b6d6f9e3c6af0f5f590ce20f1bde7090ef7970686ec6738a") == 0);
    zg_sha256_hex (chunk, 64, hex);
    s_check (strcmp (hex, "ffe054fe7ae0cb6dc65c3af9b61d5209f439851db43d0ba5997337df154668eb") == 0);

    printf ("OK\n");
}
