/*  =========================================================================
    zg_sha256 - SHA-256, through libcrypto's EVP interface

    libcrypto is already a dependency (at-rest encryption, and libcurl and
    libpq link it), so the digest is its well-tested implementation; this
    module only keeps the small stack-friendly API the rest of zgate uses.
    =========================================================================
*/

#include "common/zg_sha256.h"
#include "common/zg_selftest.h"

#include <assert.h>
#include <openssl/evp.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

//  The implementation, looked up once: EVP_sha256 () alone makes every
//  digest look it up again among the providers, which costs more than
//  hashing a key (the frontend hashes the key of every request). Kept for
//  the life of the process. Each thread keeps a digest context too, where
//  EVP_Digest would allocate, set up and free one per digest.
static EVP_MD *s_fetched;
static pthread_key_t s_context_key;
static bool s_context_key_made;
static pthread_once_t s_fetched_once = PTHREAD_ONCE_INIT;

static void
s_context_free (void *context)
{
    EVP_MD_CTX_free ((EVP_MD_CTX *) context);
}

static void
s_fetch (void)
{
    s_fetched = EVP_MD_fetch (NULL, "SHA256", NULL);
    s_context_key_made = pthread_key_create (&s_context_key, s_context_free) == 0;
}

//  This thread's context, or NULL when it cannot have one
static EVP_MD_CTX *
s_context (void)
{
    if (!s_context_key_made)
        return NULL;
    EVP_MD_CTX *context = (EVP_MD_CTX *) pthread_getspecific (s_context_key);
    if (!context) {
        context = EVP_MD_CTX_new ();
        if (context && pthread_setspecific (s_context_key, context) != 0) {
            EVP_MD_CTX_free (context);
            context = NULL;
        }
    }
    return context;
}

void
zg_sha256_hex (const void *data, size_t size, char hex [2 * ZG_SHA256_SIZE + 1])
{
    static const char digits [] = "0123456789abcdef";
    uint8_t digest [ZG_SHA256_SIZE];
    unsigned int length = 0;
    pthread_once (&s_fetched_once, s_fetch);
    const EVP_MD *md = s_fetched ? s_fetched : EVP_sha256 ();
    EVP_MD_CTX *context = s_context ();
    int rc = context
           ? EVP_DigestInit_ex2 (context, md, NULL) == 1
             && EVP_DigestUpdate (context, data, size) == 1
             && EVP_DigestFinal_ex (context, digest, &length) == 1
           : EVP_Digest (data, size, digest, &length, md, NULL) == 1;
    assert (rc && length == ZG_SHA256_SIZE);
    (void) rc;
    for (size_t index = 0; index < ZG_SHA256_SIZE; index++) {
        hex [2 * index] = digits [digest [index] >> 4];
        hex [2 * index + 1] = digits [digest [index] & 15];
    }
    hex [2 * ZG_SHA256_SIZE] = 0;
}


//  --------------------------------------------------------------------------
//  Self test: the FIPS 180-4 examples (NIST CSRC "SHA256.pdf") and the
//  million-'a' vector


void
zg_sha256_test (bool verbose)
{
    printf (" * zg_sha256: ");
    char hex [2 * ZG_SHA256_SIZE + 1];

    zg_sha256_hex ("abc", 3, hex);
    ZG_CHECK (strcmp (hex, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad") == 0);
    zg_sha256_hex ("", 0, hex);
    ZG_CHECK (strcmp (hex, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855") == 0);
    const char *two_blocks = "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq";
    zg_sha256_hex (two_blocks, strlen (two_blocks), hex);
    ZG_CHECK (strcmp (hex, "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1") == 0);
    const char *long_message = "abcdefghbcdefghicdefghijdefghijkefghijklfghijklmghijklmn"
                               "hijklmnoijklmnopjklmnopqklmnopqrlmnopqrsmnopqrstnopqrstu";
    zg_sha256_hex (long_message, strlen (long_message), hex);
    ZG_CHECK (strcmp (hex, "cf5b16a778af8380036ce59e7b0492370b249b11e8f07a51afac45037afee9d1") == 0);

    //  One million 'a'
    char *million_a = malloc (1000000);
    ZG_CHECK (million_a);
    memset (million_a, 'a', 1000000);
    zg_sha256_hex (million_a, 1000000, hex);
    free (million_a);
    ZG_CHECK (strcmp (hex, "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0") == 0);
    char chunk [64];
    memset (chunk, 'a', sizeof (chunk));

    //  Padding edges: 55, 56 and 64 bytes
    zg_sha256_hex (chunk, 55, hex);
    ZG_CHECK (strcmp (hex, "9f4390f8d30c2dd92ec9f095b65e2b9ae9b0a925a5258e241c9f1e910f734318") == 0);
    zg_sha256_hex (chunk, 56, hex);
    ZG_CHECK (strcmp (hex, "b35439a4ac6f0948b6d6f9e3c6af0f5f590ce20f1bde7090ef7970686ec6738a") == 0);
    zg_sha256_hex (chunk, 64, hex);
    ZG_CHECK (strcmp (hex, "ffe054fe7ae0cb6dc65c3af9b61d5209f439851db43d0ba5997337df154668eb") == 0);

    printf ("OK\n");
}
