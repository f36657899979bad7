/*  =========================================================================
    zg_model_store - deployments kept in the database (store_model_in_db)

    LiteLLM keeps the deployments added through /model/new in
    "LiteLLM_ProxyModelTable": model_id (the deployment id, model_info.id),
    model_name, litellm_params and model_info as JSON. Every string value of
    litellm_params is stored encrypted with the salt key (zg_crypt: v3:gcm
    for what zgate writes; v2 and NaCl values read too); numbers, booleans
    and nested values are stored as they are. The same rows serve LiteLLM
    and zgate.

    This module turns rows into deployments (zg_deployment_t, the same
    model the configuration's model_list makes) for the router and for
    /model/info, and encrypts litellm_params for the management handlers.
    A row that cannot be decrypted (another salt key, an altered value) or
    that names nothing zgate can serve is left out, with the reason, for
    the caller to log once (the router's loader logs one ERROR line per
    row and version): never a half-decrypted deployment.
    =========================================================================
*/
#ifndef ZG_MODEL_STORE_H_INCLUDED
#define ZG_MODEL_STORE_H_INCLUDED

#include "common/zg_config.h"
#include "db/zg_db.h"

#include <stdbool.h>
#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

//  One deployment read from the database
typedef struct {
    zg_deployment_t deployment;     //  every string owned; line is 0
    char *litellm_params;           //  JSON object, decrypted, secrets left out (for /model/info)
    char *model_info;               //  JSON object as stored ("{}" when there is none)
} zg_model_t;

//  A row left out, and why
typedef struct {
    char *model_id;
    char *model_name;               //  as stored (never encrypted)
    char *version;                  //  its updated_at, so a fixed row is told apart
    char *reason;                   //  never holds a secret
} zg_model_skipped_t;

//  Every deployment the database holds, as one list (owned by whoever holds it)
typedef struct {
    zg_model_t *models;
    size_t      count;
    zg_model_skipped_t *skipped;    //  rows left out; the caller decides what to log
    size_t      skipped_count;
    char        digest [65];        //  of the rows as read: same digest, same rows
} zg_model_list_t;

//  Read every row, decrypting with salt_key. NULL with the reason in
//  errbuf when the query fails (the connection may then be broken).
zg_model_list_t *zg_model_store_load (zg_db_t *db, const char *salt_key,
                                      char *errbuf, size_t errsize);

void zg_model_list_destroy (zg_model_list_t **self_p);

//  The stored model of that id in the list, or NULL
const zg_model_t *zg_model_list_find (const zg_model_list_t *self, const char *model_id);

//  Make a model of one row. params is litellm_params (a JSON object, or a
//  JSON string holding one, as LiteLLM has also written it); its string
//  values are decrypted with salt_key, or taken as plaintext when salt_key
//  is NULL (a request's body, to validate it). info is model_info (NULL or
//  "null" = none). 0, or -1 with the reason in errbuf (the model is then
//  left cleared).
int zg_model_decode (zg_model_t *model, const char *salt_key, const char *model_id,
                     const char *model_name, const char *params, const char *info,
                     char *errbuf, size_t errsize);

//  Free the model's strings and zero it
void zg_model_clear (zg_model_t *model);

//  litellm_params as LiteLLM stores it: the JSON object params[0..size)
//  with every string value encrypted under salt_key (v3:gcm), other values
//  as they are. A new string the caller frees, or NULL with the reason.
char *zg_model_encrypt_params (const char *salt_key, const char *params, size_t size,
                               char *errbuf, size_t errsize);

//  True for the litellm_params that /model/info never shows
bool zg_model_param_is_secret (const char *name);

//  Self test (what needs no database; zg_admin_models' live test covers
//  the rest)
void zg_model_store_test (bool verbose);

#ifdef __cplusplus
}
#endif

#endif
