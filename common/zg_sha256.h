/*  =========================================================================
    zg_sha256 - SHA-256 (FIPS 180-4)

    For identifiers that must be stable across restarts and processes
    (deployment ids, cache keys). Not for secrets that need constant-time
    handling. A context is a plain value: put it on the stack.
    =========================================================================
*/

#ifndef ZG_SHA256_H_INCLUDED
#define ZG_SHA256_H_INCLUDED

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define ZG_SHA256_SIZE 32

typedef struct {
    uint32_t state [8];
    uint64_t total;             //  bytes hashed so far
    uint8_t  block [64];
    size_t   used;              //  bytes waiting in block
} zg_sha256_t;

void zg_sha256_init (zg_sha256_t *self);
void zg_sha256_update (zg_sha256_t *self, const void *data, size_t size);
void zg_sha256_final (zg_sha256_t *self, uint8_t digest [ZG_SHA256_SIZE]);

//  The digest of data as 64 lowercase hex digits and a NUL
void zg_sha256_hex (const void *data, size_t size, char hex [2 * ZG_SHA256_SIZE + 1]);

//  Self test
void zg_sha256_test (bool verbose);

#ifdef __cplusplus
}
#endif

#endif
