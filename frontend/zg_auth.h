/*  =========================================================================
    zg_auth - who may call the gateway

    Today: the master key (general_settings.master_key), presented as
    "Authorization: Bearer <key>", "x-litellm-api-key", "API-Key" or
    "x-api-key", compared in constant time. No master key means no auth.
    Virtual keys will plug in behind zg_auth_check: it is the one place
    that decides, and the frontend only asks it.
    =========================================================================
*/
#ifndef ZG_AUTH_H_INCLUDED
#define ZG_AUTH_H_INCLUDED

#include <stdbool.h>
#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum {
    ZG_AUTH_OK = 0,
    ZG_AUTH_MISSING,            //  no key in any header
    ZG_AUTH_MALFORMED,          //  Authorization without "Bearer "
    ZG_AUTH_INVALID             //  a key, but not one we know
} zg_auth_verdict_t;

typedef struct _zg_auth_t zg_auth_t;

//  master_key NULL or empty: every request is let in
zg_auth_t *zg_auth_new (const char *master_key);
void zg_auth_destroy (zg_auth_t **self_p);

//  True when requests must present a key
bool zg_auth_required (const zg_auth_t *self);

//  The key a request presents, from the values of its headers (each may be
//  NULL): Authorization first, then x-litellm-api-key, API-Key, x-api-key.
//  Returns a pointer into one of them, or NULL; *malformed is set when
//  the only candidate was an Authorization header without "Bearer ".
const char *zg_auth_presented_key (const char *authorization, const char *litellm_key,
                                   const char *api_key, const char *x_api_key,
                                   bool *malformed);

//  Decide. key is what zg_auth_presented_key returned.
zg_auth_verdict_t zg_auth_check (const zg_auth_t *self, const char *key, bool malformed);

//  The reference's message for a refusal, into buf. Never holds more of
//  the key than "sk-...<last 4>".
void zg_auth_message (zg_auth_verdict_t verdict, const char *key, char *buf, size_t size);

//  Self test
void zg_auth_test (bool verbose);

#ifdef __cplusplus
}
#endif

#endif
