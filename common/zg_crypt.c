/*  =========================================================================
    zg_crypt - secrets at rest, encrypted the way LiteLLM stores them

    The ciphers come from libraries, never from here: libcrypto (OpenSSL)
    for AES-256-GCM, HKDF and SHA-256, libsodium for the legacy NaCl
    secretbox, which libcrypto does not have. Only the framing is ours:
    the version prefix, base64 and the length checks.
    =========================================================================
*/

#include "common/zg_crypt.h"
#include "common/zg_selftest.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/kdf.h>
#include <openssl/rand.h>
#include <sodium.h>

#include <assert.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define s_V3_PREFIX "v3:gcm:"
#define s_V2_PREFIX "v2:gcm:"
#define s_HKDF_INFO "litellm-at-rest-v3"
#define s_KEY_SIZE 32
#define s_GCM_NONCE_SIZE 12
#define s_GCM_TAG_SIZE 16

static const char s_wrong_key [] =
    "cannot decrypt: the value was encrypted with another salt key"
    " (LITELLM_SALT_KEY / master key changed?) or has been altered";
static const char s_invalid [] = "not a valid encrypted value";

static void
s_error (char *errbuf, size_t errsize, const char *format, ...)
{
    if (!errbuf || errsize == 0)
        return;
    va_list args;
    va_start (args, format);
    vsnprintf (errbuf, errsize, format, args);
    va_end (args);
}


//  --------------------------------------------------------------------------
//  base64: written as Python's urlsafe_b64encode, read as LiteLLM reads it
//  (URL-safe, falling back to standard: one pass that takes both alphabets
//  does the same). Reading is strict where Python is lax: padding must be
//  there and the unused low bits zero, so that every character of a stored
//  value counts and a changed character never decodes to the same bytes.

static const char s_urlsafe [] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

static char *
s_base64_encode (const uint8_t *data, size_t size, const char *prefix)
{
    size_t prefix_size = strlen (prefix);
    char *text = malloc (prefix_size + (size + 2) / 3 * 4 + 1);
    if (!text)
        return NULL;
    memcpy (text, prefix, prefix_size);
    char *out = text + prefix_size;
    size_t index = 0;
    for (; index + 3 <= size; index += 3) {
        uint32_t group = (uint32_t) data [index] << 16 | (uint32_t) data [index + 1] << 8
                       | data [index + 2];
        *out++ = s_urlsafe [group >> 18];
        *out++ = s_urlsafe [(group >> 12) & 63];
        *out++ = s_urlsafe [(group >> 6) & 63];
        *out++ = s_urlsafe [group & 63];
    }
    if (size - index == 1) {
        uint32_t group = (uint32_t) data [index] << 16;
        *out++ = s_urlsafe [group >> 18];
        *out++ = s_urlsafe [(group >> 12) & 63];
        *out++ = '=';
        *out++ = '=';
    }
    else
    if (size - index == 2) {
        uint32_t group = (uint32_t) data [index] << 16 | (uint32_t) data [index + 1] << 8;
        *out++ = s_urlsafe [group >> 18];
        *out++ = s_urlsafe [(group >> 12) & 63];
        *out++ = s_urlsafe [(group >> 6) & 63];
        *out++ = '=';
    }
    *out = 0;
    return text;
}

static int
s_base64_digit (char c)
{
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (c >= '0' && c <= '9')
        return c - '0' + 52;
    if (c == '-' || c == '+')
        return 62;
    if (c == '_' || c == '/')
        return 63;
    return -1;
}

//  Returns the decoded bytes (a new buffer, *size_p set; not NUL-terminated)
//  or NULL when the text is not canonical, padded base64 or memory ran out.
static uint8_t *
s_base64_decode (const char *text, size_t length, size_t *size_p)
{
    if (length % 4 != 0)
        return NULL;
    size_t padding = 0;
    if (length > 0 && text [length - 1] == '=')
        padding = length > 1 && text [length - 2] == '='? 2: 1;
    uint8_t *data = malloc (length / 4 * 3 + 1);
    if (!data)
        return NULL;
    size_t size = 0;
    for (size_t index = 0; index < length; index += 4) {
        bool last = index + 4 == length;
        size_t digits = last? 4 - padding: 4;
        uint32_t group = 0;
        for (size_t offset = 0; offset < 4; offset++) {
            int digit = offset < digits? s_base64_digit (text [index + offset]): 0;
            if (digit < 0) {
                free (data);
                return NULL;
            }
            group = group << 6 | (uint32_t) digit;
        }
        //  Bits that the padding says are unused must be zero
        if ((digits == 2 && (group & 0xffff) != 0) || (digits == 3 && (group & 0xff) != 0)) {
            free (data);
            return NULL;
        }
        data [size++] = (uint8_t) (group >> 16);
        if (digits > 2)
            data [size++] = (uint8_t) (group >> 8);
        if (digits > 3)
            data [size++] = (uint8_t) group;
    }
    *size_p = size;
    return data;
}


//  --------------------------------------------------------------------------
//  Python's str.decode ("utf-8") accepts exactly well-formed UTF-8: no
//  overlong forms, no surrogates, nothing past U+10FFFF.

static bool
s_utf8_valid (const uint8_t *data, size_t size)
{
    size_t index = 0;
    while (index < size) {
        uint8_t lead = data [index];
        size_t extra;
        uint32_t code, minimum;
        if (lead < 0x80) {
            index++;
            continue;
        }
        else
        if ((lead & 0xe0) == 0xc0) {
            extra = 1; code = lead & 0x1f; minimum = 0x80;
        }
        else
        if ((lead & 0xf0) == 0xe0) {
            extra = 2; code = lead & 0x0f; minimum = 0x800;
        }
        else
        if ((lead & 0xf8) == 0xf0) {
            extra = 3; code = lead & 0x07; minimum = 0x10000;
        }
        else
            return false;
        if (size - index - 1 < extra)
            return false;
        for (size_t offset = 1; offset <= extra; offset++) {
            uint8_t next = data [index + offset];
            if ((next & 0xc0) != 0x80)
                return false;
            code = code << 6 | (next & 0x3f);
        }
        if (code < minimum || code > 0x10ffff || (code >= 0xd800 && code <= 0xdfff))
            return false;
        index += extra + 1;
    }
    return true;
}


//  --------------------------------------------------------------------------
//  Key derivation. The salt key's bytes are its UTF-8 text, as Python's
//  str.encode () gives them.

static int
s_sha256 (const void *data, size_t size, uint8_t digest [s_KEY_SIZE])
{
    unsigned int digest_size = 0;
    if (EVP_Digest (data, size, digest, &digest_size, EVP_sha256 (), NULL) != 1
    ||  digest_size != s_KEY_SIZE)
        return -1;
    return 0;
}

static int
s_hkdf_sha256 (const uint8_t *salt, size_t salt_size, const uint8_t *ikm, size_t ikm_size,
               const uint8_t *info, size_t info_size, uint8_t *okm, size_t okm_size)
{
    EVP_PKEY_CTX *context = EVP_PKEY_CTX_new_id (EVP_PKEY_HKDF, NULL);
    if (!context)
        return -1;
    int rc = -1;
    size_t derived_size = okm_size;
    if (EVP_PKEY_derive_init (context) == 1
    &&  EVP_PKEY_CTX_set_hkdf_md (context, EVP_sha256 ()) == 1
    &&  (salt_size == 0 || EVP_PKEY_CTX_set1_hkdf_salt (context, salt, (int) salt_size) == 1)
    &&  EVP_PKEY_CTX_set1_hkdf_key (context, ikm, (int) ikm_size) == 1
    &&  (info_size == 0 || EVP_PKEY_CTX_add1_hkdf_info (context, info, (int) info_size) == 1)
    &&  EVP_PKEY_derive (context, okm, &derived_size) == 1
    &&  derived_size == okm_size)
        rc = 0;
    EVP_PKEY_CTX_free (context);
    return rc;
}

//  LiteLLM passes salt=None, which RFC 5869 defines as HashLen zero bytes
static int
s_v3_key (const char *salt_key, uint8_t key [s_KEY_SIZE])
{
    static const uint8_t no_salt [32] = { 0 };
    return s_hkdf_sha256 (no_salt, sizeof (no_salt),
                          (const uint8_t *) salt_key, strlen (salt_key),
                          (const uint8_t *) s_HKDF_INFO, strlen (s_HKDF_INFO),
                          key, s_KEY_SIZE);
}


//  --------------------------------------------------------------------------
//  AES-256-GCM over nonce || ciphertext || tag, no associated data

static int
s_gcm_seal (const uint8_t key [s_KEY_SIZE], const uint8_t nonce [s_GCM_NONCE_SIZE],
            const uint8_t *plaintext, size_t size, uint8_t *ciphertext, uint8_t tag [s_GCM_TAG_SIZE])
{
    EVP_CIPHER_CTX *context = EVP_CIPHER_CTX_new ();
    if (!context)
        return -1;
    int rc = -1;
    int written = 0, final_written = 0;
    if (EVP_EncryptInit_ex (context, EVP_aes_256_gcm (), NULL, NULL, NULL) == 1
    &&  EVP_CIPHER_CTX_ctrl (context, EVP_CTRL_GCM_SET_IVLEN, s_GCM_NONCE_SIZE, NULL) == 1
    &&  EVP_EncryptInit_ex (context, NULL, NULL, key, nonce) == 1
    &&  (size == 0 || EVP_EncryptUpdate (context, ciphertext, &written, plaintext, (int) size) == 1)
    &&  EVP_EncryptFinal_ex (context, ciphertext + written, &final_written) == 1
    &&  (size_t) written + (size_t) final_written == size
    &&  EVP_CIPHER_CTX_ctrl (context, EVP_CTRL_GCM_GET_TAG, s_GCM_TAG_SIZE, tag) == 1)
        rc = 0;
    EVP_CIPHER_CTX_free (context);
    return rc;
}

//  Returns 0 and the plaintext in out (size bytes), or -1 when the value
//  does not authenticate under key
static int
s_gcm_open (const uint8_t key [s_KEY_SIZE], const uint8_t *raw, size_t raw_size, uint8_t *out)
{
    const uint8_t *nonce = raw;
    const uint8_t *ciphertext = raw + s_GCM_NONCE_SIZE;
    size_t size = raw_size - s_GCM_NONCE_SIZE - s_GCM_TAG_SIZE;
    uint8_t tag [s_GCM_TAG_SIZE];
    memcpy (tag, ciphertext + size, s_GCM_TAG_SIZE);

    EVP_CIPHER_CTX *context = EVP_CIPHER_CTX_new ();
    if (!context)
        return -1;
    int rc = -1;
    int written = 0, final_written = 0;
    if (EVP_DecryptInit_ex (context, EVP_aes_256_gcm (), NULL, NULL, NULL) == 1
    &&  EVP_CIPHER_CTX_ctrl (context, EVP_CTRL_GCM_SET_IVLEN, s_GCM_NONCE_SIZE, NULL) == 1
    &&  EVP_DecryptInit_ex (context, NULL, NULL, key, nonce) == 1
    &&  (size == 0 || EVP_DecryptUpdate (context, out, &written, ciphertext, (int) size) == 1)
    &&  EVP_CIPHER_CTX_ctrl (context, EVP_CTRL_GCM_SET_TAG, s_GCM_TAG_SIZE, tag) == 1
    //  Final is where the tag is checked: before it, out is unauthenticated
    &&  EVP_DecryptFinal_ex (context, out + written, &final_written) == 1
    &&  (size_t) written + (size_t) final_written == size)
        rc = 0;
    EVP_CIPHER_CTX_free (context);
    if (rc != 0)
        OPENSSL_cleanse (out, size);
    return rc;
}


//  --------------------------------------------------------------------------

char *
zg_crypt_encrypt (const char *salt_key, const char *plaintext, char *errbuf, size_t errsize)
{
    assert (salt_key);
    assert (plaintext);
    if (*salt_key == 0) {
        s_error (errbuf, errsize, "cannot encrypt: the salt key is empty");
        return NULL;
    }
    size_t size = strlen (plaintext);
    if (size > ZG_CRYPT_MAX_PLAINTEXT) {
        s_error (errbuf, errsize, "cannot encrypt: %zu bytes is longer than the %d allowed",
                 size, ZG_CRYPT_MAX_PLAINTEXT);
        return NULL;
    }
    //  LiteLLM would fail to decode anything else as a str
    if (!s_utf8_valid ((const uint8_t *) plaintext, size)) {
        s_error (errbuf, errsize, "cannot encrypt: the value is not UTF-8 text");
        return NULL;
    }
    size_t raw_size = s_GCM_NONCE_SIZE + size + s_GCM_TAG_SIZE;
    uint8_t *raw = malloc (raw_size);
    if (!raw) {
        s_error (errbuf, errsize, "cannot encrypt: out of memory");
        return NULL;
    }
    uint8_t key [s_KEY_SIZE];
    char *stored = NULL;
    if (RAND_bytes (raw, s_GCM_NONCE_SIZE) != 1)
        s_error (errbuf, errsize, "cannot encrypt: no random nonce from libcrypto");
    else
    if (s_v3_key (salt_key, key) != 0
    ||  s_gcm_seal (key, raw, (const uint8_t *) plaintext, size,
                    raw + s_GCM_NONCE_SIZE, raw + s_GCM_NONCE_SIZE + size) != 0)
        s_error (errbuf, errsize, "cannot encrypt: AES-256-GCM failed in libcrypto");
    else {
        stored = s_base64_encode (raw, raw_size, s_V3_PREFIX);
        if (!stored)
            s_error (errbuf, errsize, "cannot encrypt: out of memory");
    }
    OPENSSL_cleanse (key, sizeof (key));
    free (raw);
    return stored;
}

//  Decrypts raw (already base64-decoded) into a new NUL-terminated string
static char *
s_decrypt_raw (const char *salt_key, int version, const uint8_t *raw, size_t raw_size,
               char *errbuf, size_t errsize)
{
    size_t overhead = version == 0
                    ? crypto_secretbox_NONCEBYTES + crypto_secretbox_MACBYTES
                    : s_GCM_NONCE_SIZE + s_GCM_TAG_SIZE;
    if (raw_size < overhead) {
        s_error (errbuf, errsize, "%s: %zu bytes is too short for a %s value", s_invalid, raw_size,
                 version == 3? "v3:gcm": version == 2? "v2:gcm": "NaCl secretbox");
        return NULL;
    }
    size_t size = raw_size - overhead;
    if (size > ZG_CRYPT_MAX_PLAINTEXT) {
        s_error (errbuf, errsize, "%s: %zu bytes is too long", s_invalid, raw_size);
        return NULL;
    }
    char *plaintext = malloc (size + 1);
    if (!plaintext) {
        s_error (errbuf, errsize, "cannot decrypt: out of memory");
        return NULL;
    }
    uint8_t key [s_KEY_SIZE];
    int rc = -1;
    bool derived = version == 3
                 ? s_v3_key (salt_key, key) == 0
                 : s_sha256 (salt_key, strlen (salt_key), key) == 0;
    if (!derived)
        s_error (errbuf, errsize, "cannot decrypt: key derivation failed in libcrypto");
    else
    if (version == 0) {
        if (sodium_init () < 0)
            s_error (errbuf, errsize, "cannot decrypt: libsodium did not initialise");
        else
        if (crypto_secretbox_open_easy ((unsigned char *) plaintext,
                                        raw + crypto_secretbox_NONCEBYTES,
                                        raw_size - crypto_secretbox_NONCEBYTES, raw, key) == 0)
            rc = 0;
        else
            s_error (errbuf, errsize, "%s", s_wrong_key);
    }
    else {
        if (s_gcm_open (key, raw, raw_size, (uint8_t *) plaintext) == 0)
            rc = 0;
        else
            s_error (errbuf, errsize, "%s", s_wrong_key);
    }
    OPENSSL_cleanse (key, sizeof (key));

    //  Authenticated, so written by someone holding the key: still refused
    //  when it cannot be handed on as a C string of text
    if (rc == 0 && memchr (plaintext, 0, size)) {
        s_error (errbuf, errsize, "%s: the plaintext holds a NUL byte", s_invalid);
        rc = -1;
    }
    if (rc == 0 && !s_utf8_valid ((const uint8_t *) plaintext, size)) {
        s_error (errbuf, errsize, "%s: the plaintext is not UTF-8 text", s_invalid);
        rc = -1;
    }
    if (rc != 0) {
        OPENSSL_cleanse (plaintext, size);
        free (plaintext);
        return NULL;
    }
    plaintext [size] = 0;
    return plaintext;
}

char *
zg_crypt_decrypt (const char *salt_key, const char *stored, char *errbuf, size_t errsize)
{
    assert (salt_key);
    assert (stored);
    if (*salt_key == 0) {
        s_error (errbuf, errsize, "cannot decrypt: the salt key is empty");
        return NULL;
    }
    int version = 0;
    const char *encoded = stored;
    if (strncmp (stored, s_V3_PREFIX, strlen (s_V3_PREFIX)) == 0) {
        version = 3;
        encoded += strlen (s_V3_PREFIX);
    }
    else
    if (strncmp (stored, s_V2_PREFIX, strlen (s_V2_PREFIX)) == 0) {
        version = 2;
        encoded += strlen (s_V2_PREFIX);
    }
    size_t length = strlen (encoded);
    //  Checked before decoding so that a huge value costs no allocation
    if (length / 4 * 3 > (size_t) ZG_CRYPT_MAX_PLAINTEXT + 64) {
        s_error (errbuf, errsize, "%s: %zu characters is too long", s_invalid, length);
        return NULL;
    }
    size_t raw_size = 0;
    uint8_t *raw = s_base64_decode (encoded, length, &raw_size);
    if (!raw) {
        s_error (errbuf, errsize, "%s: not base64 (or truncated)", s_invalid);
        return NULL;
    }
    char *plaintext = s_decrypt_raw (salt_key, version, raw, raw_size, errbuf, errsize);
    free (raw);
    return plaintext;
}

char *
zg_crypt_salt_key (const zg_config_t *config, char *errbuf, size_t errsize)
{
    const char *salt_key = getenv ("LITELLM_SALT_KEY");
    if (!salt_key || *salt_key == 0)
        salt_key = config && config->master_key && *config->master_key? config->master_key: NULL;
    if (!salt_key) {
        s_error (errbuf, errsize, "no key to encrypt stored credentials with:"
                 " set LITELLM_SALT_KEY (or general_settings.master_key / LITELLM_MASTER_KEY),"
                 " and keep it unchanged once models are stored");
        return NULL;
    }
    char *copy = strdup (salt_key);
    if (!copy)
        s_error (errbuf, errsize, "out of memory");
    return copy;
}


//  --------------------------------------------------------------------------
//  Self test


//  Values stored by an independent implementation, the way LiteLLM writes
//  them: printed by tests/vectors/crypt_vectors.js (Node's crypto for
//  AES-256-GCM and HKDF, tweetnacl 1.0.3 for the secretbox); the output is
//  kept in tests/vectors/crypt_vectors.txt.
typedef struct {
    const char *label;
    const char *salt_key;
    const char *plaintext;
    const char *stored;
} s_vector_t;

#define s_LONG_PLAINTEXT "sk-proj-" \
    "abcdefghijklmnopqrstuvwxyz0123456789abcdefghijklmnopqrstuvwxyz0123456789" \
    "abcdefghijklmnopqrstuvwxyz0123456789abcdefghijklmnopqrstuvwxyz0123456789" \
    "abcdefghijklmnopqrstuvwxyz0123456789abcdefghijklmnopqrstuvwxyz0123456789" \
    "abcdefghijklmnopqrstuvwxyz0123456789abcdefghijklmnopqrstuvwxyz0123456789"

static const s_vector_t s_vectors [] = {
    { "v3 short", "sk-1234", "sk-test-0123456789abcdef",
      "v3:gcm:AIFbHG1rmmC8XzEypXcTo5xV0_hZRxth_aX9RLiaxTu1KDhLyxrW-k62JGy404JYFindrg==" },
    { "v3 empty", "sk-1234", "",
      "v3:gcm:t4z9UVYrPe-vpyF91px1N8CYXs_9a64QfdA44Q==" },
    { "v3 utf8", "cl\xc3\xa9-sal\xc3\xa9""e \xe2\x9c\x93",
      "\xd0\xba\xd0\xbb\xd1\x8e\xd1\x87 \xf0\x9f\x94\x91 \x22quoted\x22\x09\x5c",
      "v3:gcm:BcOxnDJaKSwKto68AMQ5KH8zUqDU3cqwK6NXlGwzK16MDFV_9Zc06OIzLH-10i92WHfgtg==" },
    { "v3 long", "LITELLM_SALT_KEY-x9", s_LONG_PLAINTEXT,
      "v3:gcm:VV8PrC0jVOyHOlzc19eSR4ln_NVPXK30EXTSZe71QuBmkfe4kE5UX2m5-EvuygrwogrWN0euGL41fhg12JA0"
      "159fd1AnD21vF6JZwExZ5SZpbnFULIGGkWM0kCnZaz6yGX6FS50I30SuN4VBZC4_jyQZmkrfJ5CB8T5lo_RhpnwGC9C"
      "FuPe9f06jDrcQowTZs3oGQ6y91ytY-aRZRYe8MXRqsg5gxR6Ptjc16pX9IbyU-HZH90o8J1tnAxYDzFz-kHUxjRV66D"
      "SojFLWROczV4GkYz7Tt0GDVuEmy9KpI-C0q2x9cvrUKuber4dVN2pE8qzCY0SPwWA-lk7o4EDNk_xte-bl7Y1gE_iIE"
      "ZILY8uRmc9zkrEW1KXhNx3ZxtuugfzHM0Dpr1E1XuW81VUlH09KpPb63G2UyWUD0vSJ8vDUKvML" },
    { "v2 short", "sk-1234", "sk-test-0123456789abcdef",
      "v2:gcm:VQqQxsR6piTQfjExZ4yLfjUsj-cpLrAVEaepkr3546mKRhGghodkRMOtNMyrFvt-zrIrEg==" },
    { "v2 utf8", "cl\xc3\xa9-sal\xc3\xa9""e \xe2\x9c\x93", "\xd0\xba\xd0\xbb\xd1\x8e\xd1\x87 \xf0\x9f\x94\x91",
      "v2:gcm:YxNEYJTXvLZJBXMEwrF4XUI3MKgKlU8m7wHQ-ECdy8as1m8IZhC3n90=" },
    { "nacl short", "sk-1234", "sk-test-0123456789abcdef",
      "-Z6YHwsT5QHX-hSPjUDXy8Sf2jJLwR5wZUzwvP_JaA7hRmip_DDofHyMWAMk1EQiG9EWQQAyUzCoImYmFKu5Qw==" },
    { "nacl empty", "sk-1234", "",
      "f-ix2Rww-sTfkfWwuG2KOgqHC8Dn_VT6NwK5CuBHBG61TFXyL4JmmQ==" },
    { "nacl utf8", "cl\xc3\xa9-sal\xc3\xa9""e \xe2\x9c\x93",
      "\xd0\xba\xd0\xbb\xd1\x8e\xd1\x87 \xf0\x9f\x94\x91 \x22quoted\x22",
      "gKrXIo6xrU7XHHYFioX3BO7NHZHNc63hsMp4KuYTWatDDKoWHI9-RlzjKiBoAi1WK_208q2efqiepbLsi9Q=" },
    { "nacl long", "LITELLM_SALT_KEY-x9", s_LONG_PLAINTEXT,
      "GmGfXkUR_jGe2MFNMLddI5Y6hoQWf9-l4okacJoLZ3EuDyIv7OsXYoJ7PRSJCiKJN1-n78MsLUwG3-9GqLWDaaB1aZw"
      "FkZOPKMYvOI9IqtuFS0ZxPQmvByjfkXAHwBpZR3DB-rRuxRmkEw8GvXQOcHCC4HtRei4YzPDiEV_nN78zYzFF2NpJqO"
      "nDX82lHa2CH6zX7rFlbBZxW_ZiwOG2Cys-fp3wukCf-UXv5IFUUaqNQO2G6mVTPog05SPcMrj1DhI_hBLo03r4FZ144"
      "DOGs5HbbTgdBwCjnhsifDS2HwXWyE-XNjmCRI7zwvcaJP3bC9co-8Z2DMYH6YiY6bQ_PgYgR7NfDp5ssmDOhhLULOxk"
      "rafba0fCVwUiHq1M-JbMOHSJjtgYsfW-GQNo0h9M7puLwQ2dcOBhaM-EkZjiTKKU4nXySO1klC5NrvnF-e0Z" },
    //  Standard base64 alphabet ('+', '/'), which LiteLLM falls back to
    { "nacl std 0", "sk-1234", "sk-standard-b64",
      "2gLlbv/dsP4B58rZ1rM88zvfY68P2LTOuAZvMLcO7KT2NwjadwzwYbUk6wwZwuZ0U58U+DQdfw==" },
};

//  RFC 5869 appendix A, test cases 1 to 3 (HKDF-SHA256)
typedef struct {
    const char *ikm, *salt, *info, *okm;    //  hex
} s_hkdf_case_t;

static const s_hkdf_case_t s_hkdf_cases [] = {
    { "0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b",
      "000102030405060708090a0b0c",
      "f0f1f2f3f4f5f6f7f8f9",
      "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865" },
    { "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f"
      "202122232425262728292a2b2c2d2e2f303132333435363738393a3b3c3d3e3f"
      "404142434445464748494a4b4c4d4e4f",
      "606162636465666768696a6b6c6d6e6f707172737475767778797a7b7c7d7e7f"
      "808182838485868788898a8b8c8d8e8f909192939495969798999a9b9c9d9e9f"
      "a0a1a2a3a4a5a6a7a8a9aaabacadaeaf",
      "b0b1b2b3b4b5b6b7b8b9babbbcbdbebfc0c1c2c3c4c5c6c7c8c9cacbcccdcecf"
      "d0d1d2d3d4d5d6d7d8d9dadbdcdddedfe0e1e2e3e4e5e6e7e8e9eaebecedeeef"
      "f0f1f2f3f4f5f6f7f8f9fafbfcfdfeff",
      "b11e398dc80327a1c8e7f78c596a49344f012eda2d4efad8a050cc4c19afa97c"
      "59045a99cac7827271cb41c65e590e09da3275600c2f09b8367793a9aca3db71"
      "cc30c58179ec3e87c14c01d5c1f3434f1d87" },
    { "0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b",
      "",
      "",
      "8da4e775a563c18f715f802a063c5a31b8a11f5c5ee1879ec3454e5f3c738d2d9d201395faa4b61a96c8" },
};

static size_t
s_unhex (const char *hex, uint8_t *bytes)
{
    size_t size = strlen (hex) / 2;
    for (size_t index = 0; index < size; index++) {
        unsigned int byte;
        ZG_CHECK (sscanf (hex + 2 * index, "%2x", &byte) == 1);
        bytes [index] = (uint8_t) byte;
    }
    return size;
}

//  Decrypting stored must fail, with message starting as expected (or any
//  message when expected is NULL)
static void
s_check_refused (const char *salt_key, const char *stored, const char *expected)
{
    char error [256] = "";
    char *plaintext = zg_crypt_decrypt (salt_key, stored, error, sizeof (error));
    if (plaintext)
        fprintf (stderr, "decrypted what it should not: '%s'\n", stored);
    ZG_CHECK (plaintext == NULL);
    ZG_CHECK (*error);
    if (expected && strncmp (error, expected, strlen (expected)) != 0)
        fprintf (stderr, "for '%s': '%s'\n", stored, error);
    ZG_CHECK (!expected || strncmp (error, expected, strlen (expected)) == 0);
}

//  Every single-byte change of the decoded value and every single-character
//  change of the text must be refused, and so must every truncation
static void
s_check_tamper_proof (const char *salt_key, const char *stored)
{
    const char *encoded = stored;
    if (strncmp (stored, s_V3_PREFIX, 7) == 0 || strncmp (stored, s_V2_PREFIX, 7) == 0)
        encoded += 7;
    char prefix [8] = "";
    memcpy (prefix, stored, (size_t) (encoded - stored));
    prefix [encoded - stored] = 0;

    size_t raw_size = 0;
    uint8_t *raw = s_base64_decode (encoded, strlen (encoded), &raw_size);
    ZG_CHECK (raw);
    for (size_t index = 0; index < raw_size; index++) {
        for (int bit = 0; bit < 8; bit += 7) {
            raw [index] ^= (uint8_t) (1 << bit);
            char *altered = s_base64_encode (raw, raw_size, prefix);
            ZG_CHECK (altered);
            s_check_refused (salt_key, altered, "cannot decrypt: ");
            free (altered);
            raw [index] ^= (uint8_t) (1 << bit);
        }
    }
    free (raw);

    char *text = strdup (stored);
    ZG_CHECK (text);
    size_t length = strlen (text);
    for (size_t index = 0; index < length; index++) {
        char original = text [index];
        text [index] = original == 'A'? 'B': 'A';
        s_check_refused (salt_key, text, NULL);
        text [index] = original;
    }
    for (size_t index = 0; index < length; index++) {
        text [index] = 0;
        s_check_refused (salt_key, text, NULL);
        text [index] = stored [index];
    }
    free (text);
}

void
zg_crypt_test (bool verbose)
{
    printf (" * zg_crypt: ");
    char error [256];

    //  HKDF through libcrypto agrees with RFC 5869
    for (size_t index = 0; index < sizeof (s_hkdf_cases) / sizeof (s_hkdf_cases [0]); index++) {
        const s_hkdf_case_t *test = &s_hkdf_cases [index];
        uint8_t ikm [80], salt [80], info [80], okm [82], derived [82];
        size_t ikm_size = s_unhex (test->ikm, ikm);
        size_t salt_size = s_unhex (test->salt, salt);
        size_t info_size = s_unhex (test->info, info);
        size_t okm_size = s_unhex (test->okm, okm);
        ZG_CHECK (s_hkdf_sha256 (salt, salt_size, ikm, ikm_size, info, info_size,
                                derived, okm_size) == 0);
        ZG_CHECK (memcmp (derived, okm, okm_size) == 0);
        if (salt_size == 0) {
            //  "not provided" is HashLen zeros, the salt s_v3_key passes
            uint8_t zeros [32] = { 0 };
            ZG_CHECK (s_hkdf_sha256 (zeros, sizeof (zeros), ikm, ikm_size, info, info_size,
                                    derived, okm_size) == 0);
            ZG_CHECK (memcmp (derived, okm, okm_size) == 0);
        }
    }

    //  base64 as Python writes it
    char *text = s_base64_encode ((const uint8_t *) "\xfb\xff\xfe", 3, "");
    ZG_CHECK (text && strcmp (text, "-__-") == 0);
    free (text);
    text = s_base64_encode ((const uint8_t *) "ab", 2, "p:");
    ZG_CHECK (text && strcmp (text, "p:YWI=") == 0);
    free (text);
    text = s_base64_encode ((const uint8_t *) "a", 1, "");
    ZG_CHECK (text && strcmp (text, "YQ==") == 0);
    free (text);
    size_t size = 0;
    uint8_t *bytes = s_base64_decode ("-__-+//+", 8, &size);
    ZG_CHECK (bytes && size == 6 && memcmp (bytes, "\xfb\xff\xfe\xfb\xff\xfe", 6) == 0);
    free (bytes);
    ZG_CHECK (!s_base64_decode ("YQ=", 3, &size));          //  short padding
    ZG_CHECK (!s_base64_decode ("YQ", 2, &size));           //  none
    ZG_CHECK (!s_base64_decode ("YR==", 4, &size));         //  unused bits set
    ZG_CHECK (!s_base64_decode ("YWJ=", 4, &size));         //  unused bits set
    ZG_CHECK (!s_base64_decode ("Y===", 4, &size));
    ZG_CHECK (!s_base64_decode ("YQ==YQ==", 8, &size));     //  padding inside
    ZG_CHECK (!s_base64_decode ("YW I", 4, &size));
    ZG_CHECK (!s_base64_decode ("YW.I", 4, &size));

    //  UTF-8 as Python's decoder takes it
    ZG_CHECK (s_utf8_valid ((const uint8_t *) "\xf4\x8f\xbf\xbf \xc2\x80 \xef\xbf\xbf", 11));
    ZG_CHECK (!s_utf8_valid ((const uint8_t *) "\xc0\xaf", 2));         //  overlong
    ZG_CHECK (!s_utf8_valid ((const uint8_t *) "\xed\xa0\x80", 3));     //  surrogate
    ZG_CHECK (!s_utf8_valid ((const uint8_t *) "\xf4\x90\x80\x80", 4)); //  past U+10FFFF
    ZG_CHECK (!s_utf8_valid ((const uint8_t *) "\xe2\x9c", 2));         //  cut short
    ZG_CHECK (!s_utf8_valid ((const uint8_t *) "\xff", 1));

    //  Values written by the independent implementation decrypt, and are
    //  refused under another key, when altered and when cut short
    for (size_t index = 0; index < sizeof (s_vectors) / sizeof (s_vectors [0]); index++) {
        const s_vector_t *vector = &s_vectors [index];
        if (verbose)
            printf ("\n   vector %s", vector->label);
        *error = 0;
        char *plaintext = zg_crypt_decrypt (vector->salt_key, vector->stored, error, sizeof (error));
        if (!plaintext)
            fprintf (stderr, "%s: %s\n", vector->label, error);
        ZG_CHECK (plaintext);
        ZG_CHECK (strcmp (plaintext, vector->plaintext) == 0);
        free (plaintext);
        s_check_refused ("sk-12345", vector->stored, s_wrong_key);
        s_check_refused ("another key", vector->stored,
                         "cannot decrypt: the value was encrypted with another salt key"
                         " (LITELLM_SALT_KEY / master key changed?)");
        s_check_tamper_proof (vector->salt_key, vector->stored);
    }

    //  Round trips of new writes
    const char *plaintexts [] = {
        "", "k", "sk-1234", s_LONG_PLAINTEXT,
        "\xd0\xba\xd0\xbb\xd1\x8e\xd1\x87 \xf0\x9f\x94\x91 \x01\x7f \t\r\n \"{}\" \\ \xef\xbf\xbf",
    };
    for (size_t index = 0; index < sizeof (plaintexts) / sizeof (plaintexts [0]); index++) {
        char *stored = zg_crypt_encrypt ("my salt key", plaintexts [index], error, sizeof (error));
        ZG_CHECK (stored);
        ZG_CHECK (strncmp (stored, "v3:gcm:", 7) == 0);
        ZG_CHECK (strlen (stored) == 7 + (12 + strlen (plaintexts [index]) + 16 + 2) / 3 * 4);
        ZG_CHECK (strspn (stored + 7, s_urlsafe) + strspn (stored + 7 + strspn (stored + 7, s_urlsafe), "=")
                 == strlen (stored + 7));
        char *again = zg_crypt_encrypt ("my salt key", plaintexts [index], error, sizeof (error));
        ZG_CHECK (again && strcmp (again, stored) != 0);     //  a fresh nonce each time
        char *plaintext = zg_crypt_decrypt ("my salt key", stored, error, sizeof (error));
        ZG_CHECK (plaintext && strcmp (plaintext, plaintexts [index]) == 0);
        free (plaintext);
        plaintext = zg_crypt_decrypt ("my salt key", again, error, sizeof (error));
        ZG_CHECK (plaintext && strcmp (plaintext, plaintexts [index]) == 0);
        free (plaintext);
        s_check_refused ("my salt key!", stored, s_wrong_key);
        if (strlen (plaintexts [index]) < 64)
            s_check_tamper_proof ("my salt key", stored);
        free (again);
        free (stored);
    }

    //  Refusals on the way in
    ZG_CHECK (!zg_crypt_encrypt ("", "secret", error, sizeof (error)));
    ZG_CHECK (strstr (error, "salt key is empty"));
    ZG_CHECK (!zg_crypt_encrypt ("key", "bad \xc3\x28 utf8", error, sizeof (error)));
    ZG_CHECK (strstr (error, "not UTF-8"));
    ZG_CHECK (!zg_crypt_encrypt ("", "x", NULL, 0));         //  no errbuf is fine
    ZG_CHECK (!zg_crypt_decrypt ("", s_vectors [0].stored, error, sizeof (error)));

    //  Malformed stored values
    s_check_refused ("sk-1234", "", s_invalid);             //  no bytes at all
    s_check_refused ("sk-1234", "v3:gcm:", s_invalid);
    s_check_refused ("sk-1234", "v2:gcm:", s_invalid);
    s_check_refused ("sk-1234", "v3:gcm:not base64!", s_invalid);
    s_check_refused ("sk-1234", "v3:gcm:AIFbHG1rmmC8XzEypXcTo5xV", s_invalid);
    s_check_refused ("sk-1234", "sk-plaintext-key", s_invalid);
    s_check_refused ("sk-1234", "v4:gcm:AAAA", s_invalid);
    uint8_t zeros [40] = { 0 };
    for (size_t raw_size = 0; raw_size <= sizeof (zeros); raw_size++) {
        text = s_base64_encode (zeros, raw_size, "v3:gcm:");
        s_check_refused ("sk-1234", text, raw_size < 28? s_invalid: s_wrong_key);
        free (text);
        text = s_base64_encode (zeros, raw_size, "v2:gcm:");
        s_check_refused ("sk-1234", text, raw_size < 28? s_invalid: s_wrong_key);
        free (text);
        text = s_base64_encode (zeros, raw_size, "");
        s_check_refused ("sk-1234", text, raw_size < 40? s_invalid: s_wrong_key);
        free (text);
    }

    //  An authenticated value that is not text is refused, not returned
    uint8_t key [s_KEY_SIZE];
    uint8_t raw [12 + 3 + 16] = { 0 };
    ZG_CHECK (s_v3_key ("sk-1234", key) == 0);
    ZG_CHECK (s_gcm_seal (key, raw, (const uint8_t *) "a\0b", 3, raw + 12, raw + 15) == 0);
    text = s_base64_encode (raw, sizeof (raw), "v3:gcm:");
    s_check_refused ("sk-1234", text, s_invalid);
    free (text);
    ZG_CHECK (s_gcm_seal (key, raw, (const uint8_t *) "a\xff""b", 3, raw + 12, raw + 15) == 0);
    text = s_base64_encode (raw, sizeof (raw), "v3:gcm:");
    s_check_refused ("sk-1234", text, s_invalid);
    free (text);

    //  The salt key: LITELLM_SALT_KEY, then the master key, else an error
    unsetenv ("LITELLM_SALT_KEY");
    unsetenv ("LITELLM_MASTER_KEY");        //  the default config reads it
    ZG_CHECK (!zg_crypt_salt_key (NULL, error, sizeof (error)));
    ZG_CHECK (strstr (error, "LITELLM_SALT_KEY") && strstr (error, "master_key"));
    zg_config_t *config = zg_config_new_default ();
    ZG_CHECK (config);
    ZG_CHECK (!zg_crypt_salt_key (config, error, sizeof (error)));
    free (config->master_key);
    config->master_key = strdup ("sk-master");
    char *salt_key = zg_crypt_salt_key (config, error, sizeof (error));
    ZG_CHECK (salt_key && strcmp (salt_key, "sk-master") == 0);
    free (salt_key);
    setenv ("LITELLM_SALT_KEY", "", 1);
    salt_key = zg_crypt_salt_key (config, error, sizeof (error));
    ZG_CHECK (salt_key && strcmp (salt_key, "sk-master") == 0);
    free (salt_key);
    setenv ("LITELLM_SALT_KEY", "salty", 1);
    salt_key = zg_crypt_salt_key (config, error, sizeof (error));
    ZG_CHECK (salt_key && strcmp (salt_key, "salty") == 0);
    free (salt_key);
    salt_key = zg_crypt_salt_key (NULL, error, sizeof (error));
    ZG_CHECK (salt_key && strcmp (salt_key, "salty") == 0);
    free (salt_key);
    unsetenv ("LITELLM_SALT_KEY");
    zg_config_destroy (&config);

    printf (verbose? "\n   OK\n": "OK\n");
}
