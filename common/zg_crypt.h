/*  =========================================================================
    zg_crypt - secrets at rest, encrypted the way LiteLLM stores them

    Deployment credentials kept in the database (an api_key and the like)
    are encrypted with the salt key: LITELLM_SALT_KEY, or the master key
    when that is not set. A LiteLLM database and a zgate database hold the
    same text, so either proxy reads what the other wrote.

    New values are written as

        "v3:gcm:" + base64url (nonce[12] || ciphertext || tag[16])

    with AES-256-GCM under HKDF-SHA256 (salt key, no salt, info
    "litellm-at-rest-v3", 32 bytes) and a fresh random nonce. base64url is
    Python's urlsafe_b64encode: '-' and '_', with '=' padding.

    Decryption reads all three forms LiteLLM has written:
      - "v3:gcm:..." as above;
      - "v2:gcm:..." the same layout, key = SHA-256 (salt key);
      - anything else: NaCl secretbox (XSalsa20-Poly1305), key = SHA-256
        (salt key), base64 of nonce[24] || tag[16] || ciphertext.
    base64 is read in either alphabet, padded and canonical; anything else,
    a value too short for its form, or a plaintext that is not UTF-8 is
    "not a valid encrypted value". A value that does not authenticate
    reads as "cannot decrypt: the value was encrypted with another salt key
    ...": a wrong key and an altered value look the same to the cipher.
    Neither ever yields a partial or garbage plaintext.

    Thread-safe: no state of its own (libcrypto and libsodium are
    initialised on first use, both safely across threads).
    =========================================================================
*/

#ifndef ZG_CRYPT_H_INCLUDED
#define ZG_CRYPT_H_INCLUDED

#include "common/zg_config.h"

#include <stdbool.h>
#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

//  The longest plaintext accepted (secrets are short; libcrypto counts in int)
#define ZG_CRYPT_MAX_PLAINTEXT (16 * 1024 * 1024)

//  Encrypts a UTF-8 plaintext under the salt key as a "v3:gcm:" value.
//  Returns a new string that the caller frees, or NULL with the reason in
//  errbuf (empty salt key, plaintext not UTF-8 or too long, no randomness).
char *zg_crypt_encrypt (const char *salt_key, const char *plaintext, char *errbuf, size_t errsize);

//  Decrypts a stored value in any of the forms above. Returns the plaintext
//  as a new string that the caller frees (and should wipe when done), or
//  NULL with the reason in errbuf.
char *zg_crypt_decrypt (const char *salt_key, const char *stored, char *errbuf, size_t errsize);

//  The salt key to use: LITELLM_SALT_KEY if set and not empty, else the
//  config's master_key (config may be NULL). Returns a new string that the
//  caller frees, or NULL with an error naming both settings when neither
//  is set.
char *zg_crypt_salt_key (const zg_config_t *config, char *errbuf, size_t errsize);

//  Self test
void zg_crypt_test (bool verbose);

#ifdef __cplusplus
}
#endif

#endif
