/*  =========================================================================
    zg_sha256 - SHA-256 (FIPS 180-4)

    For identifiers that must be stable across restarts and processes
    (deployment ids, key hashes, migration checksums). zg_sha256_hex is the
    one-shot form; init/update/final stream, and final releases the context.
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
    void *context;              //  libcrypto's EVP_MD_CTX, owned until final
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
