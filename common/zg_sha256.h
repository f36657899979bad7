/*  =========================================================================
    zg_sha256 - SHA-256 (FIPS 180-4)

    For identifiers that must be stable across restarts and processes
    (deployment ids, key hashes, migration checksums).
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

//  The digest of data as 64 lowercase hex digits and a NUL
void zg_sha256_hex (const void *data, size_t size, char hex [2 * ZG_SHA256_SIZE + 1]);

//  Self test
void zg_sha256_test (bool verbose);

#ifdef __cplusplus
}
#endif

#endif
