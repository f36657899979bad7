/*  =========================================================================
    zg_auth - who may call the gateway
    =========================================================================
*/
#include "frontend/zg_auth.h"
#include "common/zg_selftest.h"

#include <assert.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

struct _zg_auth_t {
    char  *master_key;
    size_t master_length;
};

zg_auth_t *
zg_auth_new (const char *master_key)
{
    zg_auth_t *self = (zg_auth_t *) calloc (1, sizeof (zg_auth_t));
    assert (self);
    if (master_key && *master_key) {
        self->master_key = strdup (master_key);
        assert (self->master_key);
        self->master_length = strlen (master_key);
    }
    return self;
}

void
zg_auth_destroy (zg_auth_t **self_p)
{
    assert (self_p);
    zg_auth_t *self = *self_p;
    if (self) {
        if (self->master_key) {
            //  Do not leave the key lying in freed heap memory
            volatile char *wipe = self->master_key;
            for (size_t index = 0; index < self->master_length; index++)
                wipe [index] = 0;
            free (self->master_key);
        }
        free (self);
        *self_p = NULL;
    }
}

bool
zg_auth_required (const zg_auth_t *self)
{
    assert (self);
    return self->master_key != NULL;
}

const char *
zg_auth_presented_key (const char *authorization, const char *litellm_key,
                       const char *api_key, const char *x_api_key, bool *malformed)
{
    assert (malformed);
    *malformed = false;
    if (authorization && *authorization) {
        if (strncasecmp (authorization, "Bearer ", 7) == 0) {
            const char *key = authorization + 7;
            while (*key == ' ')
                key++;
            return key;
        }
        *malformed = true;
    }
    const char *candidates [] = { litellm_key, api_key, x_api_key };
    for (size_t index = 0; index < 3; index++)
        if (candidates [index] && *candidates [index]) {
            *malformed = false;
            return candidates [index];
        }
    return NULL;
}

//  Compare a presented key with the master key in time that depends on the
//  master key's length only, never on where the bytes first differ
static bool
s_equal (const char *secret, size_t secret_length, const char *presented)
{
    size_t presented_length = strlen (presented);
    volatile uint8_t diff = (uint8_t) (presented_length != secret_length);
    for (size_t index = 0; index < secret_length; index++) {
        uint8_t theirs = presented_length
                       ? (uint8_t) presented [index % presented_length] : 0;
        diff |= (uint8_t) secret [index] ^ theirs;
    }
    return diff == 0;
}

zg_auth_verdict_t
zg_auth_check (const zg_auth_t *self, const char *key, bool malformed)
{
    assert (self);
    if (!self->master_key)
        return ZG_AUTH_OK;
    if (malformed)
        return ZG_AUTH_MALFORMED;
    if (!key || !*key)
        return ZG_AUTH_MISSING;
    return s_equal (self->master_key, self->master_length, key)
         ? ZG_AUTH_OK : ZG_AUTH_INVALID;
}

void
zg_auth_message (zg_auth_verdict_t verdict, const char *key, char *buf, size_t size)
{
    assert (buf && size);
    switch (verdict) {
        case ZG_AUTH_OK:
            snprintf (buf, size, "OK");
            break;
        case ZG_AUTH_MISSING:
            snprintf (buf, size, "Authentication Error, No api key passed in.");
            break;
        case ZG_AUTH_MALFORMED:
            snprintf (buf, size, "Authentication Error, Malformed API Key passed in. "
                      "Ensure Key has `Bearer ` prefix.");
            break;
        case ZG_AUTH_INVALID: {
            //  The reference's abbreviation, and only when the key is long
            //  enough that 4 characters give away little of it
            char shown [16] = "sk-...";
            size_t length = key ? strlen (key) : 0;
            if (length >= 12)
                snprintf (shown, sizeof (shown), "sk-...%s", key + length - 4);
            snprintf (buf, size, "Authentication Error, Invalid proxy server token passed. "
                      "Received API Key = %s, Unable to find token in cache or "
                      "`LiteLLM_VerificationTokenTable`", shown);
            break;
        }
    }
}


void
zg_auth_test (bool verbose)
{
    if (verbose)
        printf (" * zg_auth: ");
    bool malformed;

    //  Header precedence and parsing
    const char *key = zg_auth_presented_key ("Bearer sk-1", "sk-2", "sk-3", "sk-4", &malformed);
    ZG_CHECK (key && strcmp (key, "sk-1") == 0 && !malformed);
    key = zg_auth_presented_key ("bearer   sk-1", NULL, NULL, NULL, &malformed);
    ZG_CHECK (key && strcmp (key, "sk-1") == 0);
    key = zg_auth_presented_key (NULL, "sk-2", "sk-3", "sk-4", &malformed);
    ZG_CHECK (key && strcmp (key, "sk-2") == 0);
    key = zg_auth_presented_key (NULL, NULL, "sk-3", "sk-4", &malformed);
    ZG_CHECK (key && strcmp (key, "sk-3") == 0);
    key = zg_auth_presented_key (NULL, "", "", "sk-4", &malformed);
    ZG_CHECK (key && strcmp (key, "sk-4") == 0);
    key = zg_auth_presented_key ("Basic abc", NULL, NULL, NULL, &malformed);
    ZG_CHECK (key == NULL && malformed);
    key = zg_auth_presented_key ("Basic abc", NULL, NULL, "sk-4", &malformed);
    ZG_CHECK (key && strcmp (key, "sk-4") == 0 && !malformed);
    key = zg_auth_presented_key (NULL, NULL, NULL, NULL, &malformed);
    ZG_CHECK (key == NULL && !malformed);

    //  Open gateway
    zg_auth_t *open_gate = zg_auth_new (NULL);
    ZG_CHECK (!zg_auth_required (open_gate));
    ZG_CHECK (zg_auth_check (open_gate, NULL, false) == ZG_AUTH_OK);
    ZG_CHECK (zg_auth_check (open_gate, "anything", false) == ZG_AUTH_OK);
    zg_auth_destroy (&open_gate);
    ZG_CHECK (open_gate == NULL);
    zg_auth_destroy (&open_gate);

    //  Master key
    zg_auth_t *auth = zg_auth_new ("sk-master-1234");
    ZG_CHECK (zg_auth_required (auth));
    ZG_CHECK (zg_auth_check (auth, "sk-master-1234", false) == ZG_AUTH_OK);
    ZG_CHECK (zg_auth_check (auth, "sk-master-1235", false) == ZG_AUTH_INVALID);
    ZG_CHECK (zg_auth_check (auth, "sk-master-123", false) == ZG_AUTH_INVALID);
    ZG_CHECK (zg_auth_check (auth, "sk-master-12345", false) == ZG_AUTH_INVALID);
    //  A key that repeats to match must not pass the wrap-around compare
    ZG_CHECK (zg_auth_check (auth, "sk-master-1234sk-master-1234", false) == ZG_AUTH_INVALID);
    ZG_CHECK (zg_auth_check (auth, "", false) == ZG_AUTH_MISSING);
    ZG_CHECK (zg_auth_check (auth, NULL, false) == ZG_AUTH_MISSING);
    ZG_CHECK (zg_auth_check (auth, NULL, true) == ZG_AUTH_MALFORMED);

    //  Messages never echo the key
    char message [512];
    zg_auth_message (ZG_AUTH_MISSING, NULL, message, sizeof (message));
    ZG_CHECK (strcmp (message, "Authentication Error, No api key passed in.") == 0);
    zg_auth_message (ZG_AUTH_INVALID, "sk-secret-value-wxyz", message, sizeof (message));
    ZG_CHECK (strstr (message, "Invalid proxy server token passed"));
    ZG_CHECK (strstr (message, "sk-...wxyz"));
    ZG_CHECK (!strstr (message, "secret"));
    zg_auth_message (ZG_AUTH_INVALID, "short", message, sizeof (message));
    ZG_CHECK (!strstr (message, "short") && !strstr (message, "hort"));
    zg_auth_message (ZG_AUTH_MALFORMED, NULL, message, sizeof (message));
    ZG_CHECK (strstr (message, "Malformed API Key"));
    zg_auth_destroy (&auth);

    if (verbose)
        printf ("OK\n");
}
