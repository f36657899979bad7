/*  =========================================================================
    zg_seal - encrypt a value the way LiteLLM stores secrets, for tests

        zg_seal v3 SALT_KEY PLAINTEXT     v3:gcm value (what zgate writes)
        zg_seal nacl SALT_KEY PLAINTEXT   legacy NaCl secretbox value (what
                                          older LiteLLM versions wrote)

    prints the stored value. The e2e tests build database rows with it:
    Python's standard library has no XSalsa20-Poly1305 or AES-GCM.
    =========================================================================
*/
#include "common/zg_crypt.h"

#include <openssl/evp.h>
#include <openssl/sha.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int
s_nacl (const char *salt_key, const char *plaintext)
{
    if (sodium_init () < 0)
        return 1;
    unsigned char key [crypto_secretbox_KEYBYTES];
    SHA256 ((const unsigned char *) salt_key, strlen (salt_key), key);
    size_t size = strlen (plaintext);
    size_t sealed_size = crypto_secretbox_NONCEBYTES + crypto_secretbox_MACBYTES + size;
    unsigned char *sealed = (unsigned char *) malloc (sealed_size);
    char *text = (char *) malloc (4 * (sealed_size / 3 + 1) + 1);
    if (!sealed || !text)
        return 1;
    randombytes_buf (sealed, crypto_secretbox_NONCEBYTES);
    crypto_secretbox_easy (sealed + crypto_secretbox_NONCEBYTES,
                           (const unsigned char *) plaintext, size, sealed, key);
    //  Python's urlsafe_b64encode: the standard encoding, then '-' and '_'
    int length = EVP_EncodeBlock ((unsigned char *) text, sealed, (int) sealed_size);
    for (int index = 0; index < length; index++)
        text [index] = text [index] == '+'? '-': text [index] == '/'? '_': text [index];
    printf ("%s\n", text);
    free (sealed);
    free (text);
    return 0;
}

int
main (int argc, char *argv [])
{
    if (argc != 4 || (strcmp (argv [1], "v3") != 0 && strcmp (argv [1], "nacl") != 0)) {
        fprintf (stderr, "usage: zg_seal v3|nacl SALT_KEY PLAINTEXT\n");
        return 2;
    }
    if (strcmp (argv [1], "nacl") == 0)
        return s_nacl (argv [2], argv [3]);
    char errbuf [256];
    char *stored = zg_crypt_encrypt (argv [2], argv [3], errbuf, sizeof (errbuf));
    if (!stored) {
        fprintf (stderr, "zg_seal: %s\n", errbuf);
        return 1;
    }
    printf ("%s\n", stored);
    free (stored);
    return 0;
}
