/*  =========================================================================
    zg_admin - the management routes that read and write PostgreSQL

    /key/..., /spend/..., /global/spend..., /model/new|update|delete and, with
    store_model_in_db, /model/info. The frontend never touches the database
    itself: it checks that the caller is the master key, packs the request
    into a zg_admin_job_t and hands it to the keystore (zg_keystore.h), whose
    thread runs the job's handler with a database connection and hands the
    job back with the answer. The frontend then writes the answer as it is.

    Handlers live in one file per family (zg_admin_keys.c, zg_admin_spend.c,
    zg_admin_models.c) and are found by zg_admin_run. A handler:
      - answers every outcome itself, in the reference's shapes: 200 with
        the route's JSON, or an error through zg_admin_error (400 for a bad
        body or query, 404 for an unknown key or model, 503 when the database
        cannot be reached); it never leaves status at 0;
      - tells the local key table what changed through zg_admin_ctx_t's
        emit (the keystore turns it into an event for the frontend) and every
        other instance through NOTIFY (zg_keystore.h names the channels);
      - never logs a key or a secret, only key names ("sk-...abcd").
    =========================================================================
*/
#ifndef ZG_ADMIN_H_INCLUDED
#define ZG_ADMIN_H_INCLUDED

#include "common/zg_config.h"
#include "db/zg_db.h"
#include "frontend/zg_keys.h"
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum {
    ZG_ADMIN_NONE = 0,
    ZG_ADMIN_KEY_GENERATE,          //  POST /key/generate
    ZG_ADMIN_KEY_INFO,              //  GET  /key/info?key=...
    ZG_ADMIN_KEY_UPDATE,            //  POST /key/update
    ZG_ADMIN_KEY_DELETE,            //  POST /key/delete  {"keys": [...]} or {"key_aliases": [...]}
    ZG_ADMIN_KEY_LIST,              //  GET  /key/list
    ZG_ADMIN_KEY_BLOCK,             //  POST /key/block   {"key": ...}
    ZG_ADMIN_KEY_UNBLOCK,           //  POST /key/unblock {"key": ...}
    ZG_ADMIN_KEY_REGENERATE,        //  POST /key/regenerate and /key/{key}/regenerate
    ZG_ADMIN_SPEND_LOGS,            //  GET  /spend/logs
    ZG_ADMIN_GLOBAL_SPEND,          //  GET  /global/spend
    ZG_ADMIN_GLOBAL_SPEND_RESET,    //  POST /global/spend/reset
    ZG_ADMIN_MODEL_NEW,             //  POST /model/new
    ZG_ADMIN_MODEL_UPDATE,          //  POST /model/update
    ZG_ADMIN_MODEL_DELETE,          //  POST /model/delete {"id": ...}
    ZG_ADMIN_MODEL_INFO,            //  GET  /model/info (config and database deployments)
    ZG_ADMIN_OP_COUNT
} zg_admin_op_t;

//  One management request, from the frontend to the keystore and back.
//  Everything is owned by the job (zg_admin_job_destroy frees it).
typedef struct {
    zg_admin_op_t op;
    uint64_t      handle;           //  the frontend's, to find its connection again
    char         *path_key;         //  /key/{key}/regenerate: the key in the path; else NULL
    char         *query;            //  URL query string without '?', "" when none
    char         *body;             //  request body (NUL-terminated), "" when none
    size_t        body_size;
    //  The answer, filled by the handler
    int           status;           //  HTTP status
    char         *answer;           //  JSON text (NUL-terminated), malloc'd
    size_t        answer_size;
} zg_admin_job_t;

//  A new job; copies path_key (may be NULL), query (may be NULL) and body
zg_admin_job_t *zg_admin_job_new (zg_admin_op_t op, uint64_t handle, const char *path_key,
                                  const char *query, const char *body, size_t body_size);
void zg_admin_job_destroy (zg_admin_job_t **self_p);

//  Set the job's answer: status and a copy of the JSON text
void zg_admin_answer (zg_admin_job_t *job, int status, const char *json);

//  Set the job's answer to the reference's error JSON
//  {"error":{"message","type","param","code"}} with code = status as a
//  string; param NULL = JSON null. type e.g. "bad_request_error",
//  "not_found_error", "auth_error", "internal_server_error".
void zg_admin_error (zg_admin_job_t *job, int status, const char *type, const char *param,
                     const char *format, ...) __attribute__ ((format (printf, 5, 6)));

//  What a change means for the frontend's key table
typedef enum {
    ZG_ADMIN_EMIT_KEY_UPSERT = 1,   //  record: the key as it now is
    ZG_ADMIN_EMIT_KEY_REMOVE,       //  id: the hash
    ZG_ADMIN_EMIT_BUDGET,           //  owner, id, spend, max_budget, budget_reset_at
    ZG_ADMIN_EMIT_SET_SPEND         //  owner, id, spend (resets)
} zg_admin_emit_kind_t;

typedef struct {
    zg_admin_emit_kind_t   kind;
    const zg_key_record_t *record;
    zg_keys_owner_t        owner;
    const char            *id;
    double                 spend;
    double                 max_budget;
    int64_t                budget_reset_at;
} zg_admin_change_t;

//  What a handler gets besides its job
typedef struct {
    zg_db_t            *db;         //  a connection of the keystore's, ready
    const zg_config_t  *config;
    const char         *salt_key;   //  LITELLM_SALT_KEY, else the master key (for
                                    //  encrypting credentials at rest)
    int64_t             now;        //  unix seconds
    //  Tell the local key table (copies what it needs before returning)
    void (*emit) (void *emit_arg, const zg_admin_change_t *change);
    void               *emit_arg;
} zg_admin_ctx_t;

typedef void (zg_admin_handler_fn) (zg_admin_ctx_t *ctx, zg_admin_job_t *job);

//  The handlers, one per op family
zg_admin_handler_fn zg_admin_keys_run;      //  ZG_ADMIN_KEY_*
zg_admin_handler_fn zg_admin_spend_run;     //  ZG_ADMIN_SPEND_LOGS, ZG_ADMIN_GLOBAL_*
zg_admin_handler_fn zg_admin_models_run;    //  ZG_ADMIN_MODEL_*

//  Run the job's handler. A database error (connection lost) becomes 503.
void zg_admin_run (zg_admin_ctx_t *ctx, zg_admin_job_t *job);

//  Name of an op, for logs
const char *zg_admin_op_name (zg_admin_op_t op);

//  ---------------------------------------------------------------------
//  Shared by the handlers and the keystore

//  The columns a key is read with, in the order zg_admin_key_from_row
//  expects: SELECT ZG_ADMIN_KEY_COLUMNS FROM "LiteLLM_VerificationToken"
#define ZG_ADMIN_KEY_COLUMNS \
    "token, key_name, key_alias, coalesce (array_to_json (models), '[]')::text," \
    " coalesce (floor (extract (epoch FROM expires))::bigint, 0), coalesce (blocked, false)," \
    " coalesce (max_budget, -1), spend, coalesce (soft_budget, -1), budget_duration," \
    " coalesce (floor (extract (epoch FROM budget_reset_at))::bigint, 0)," \
    " coalesce (rpm_limit, -1), coalesce (tpm_limit, -1), coalesce (max_parallel_requests, -1)," \
    " user_id, team_id, metadata::text"

//  Read a row selected with ZG_ADMIN_KEY_COLUMNS into record. Strings
//  point into result, the model names into *models_p (one block, the
//  caller frees it; NULL when there are none). -1 when the row cannot be
//  read (models not a list of strings, out of memory).
int zg_admin_key_from_row (PGresult *result, int row, zg_key_record_t *record, char **models_p);

//  The stored hash of what a caller passed as a key: a key ("sk-...") is
//  hashed, anything else is taken as a hash already (as the reference
//  does). -1 when it cannot be either (empty, or too long for a hash).
int zg_admin_key_hash (const char *given, char hash [ZG_KEYS_HASH_HEX + 1]);

//  Answer a failed statement: 503 no_db_connection when the connection is
//  gone, else 500 with the server's message
void zg_admin_db_error (zg_admin_ctx_t *ctx, zg_admin_job_t *job, const char *errbuf);

//  The value of name in a URL query string, percent-decoded, into out.
//  1 when found, 0 when absent, -1 when it does not fit or is badly encoded.
int zg_admin_query_param (const char *query, const char *name, char *out, size_t size);

//  Self test (what needs no database; zg_keystore_test drives the
//  handlers against one)
void zg_admin_test (bool verbose);

#ifdef __cplusplus
}
#endif

#endif
