/*  =========================================================================
    zg_admin_keys - /key/generate, info, update, delete, list, block,
    unblock, regenerate

    Only the SHA-256 hex of a key is stored; the plaintext appears once,
    in the answer that creates it. Every change is made in one
    transaction that also NOTIFYs ZG_KEYSTORE_CHANNEL_KEYS with the hash,
    so other instances reload that key when it commits; this instance's
    table is told through ctx->emit after the commit.

    Fields that are absent or null change nothing (as the reference,
    whose request models default every field to None).
    =========================================================================
*/
#include "frontend/zg_admin.h"
#include "frontend/zg_keystore.h"
#include "common/zg_json.h"
#include "common/zg_log.h"

#include <assert.h>
#include <czmq.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

//  A timestamp column as the reference's JSON shows one (ISO 8601, UTC)
#define S_TS(column) "to_jsonb (" column " AT TIME ZONE 'UTC')"

//  A key's fields as every answer shows them (without token and key)
#define S_KEY_FIELDS \
    "'key_name', key_name, 'key_alias', key_alias, 'spend', spend, 'max_budget', max_budget," \
    " 'expires', " S_TS ("expires") ", 'models', coalesce (to_jsonb (models), '[]')," \
    " 'aliases', aliases, 'config', config, 'user_id', user_id, 'team_id', team_id," \
    " 'permissions', permissions, 'max_parallel_requests', max_parallel_requests," \
    " 'metadata', metadata, 'blocked', blocked, 'tpm_limit', tpm_limit, 'rpm_limit', rpm_limit," \
    " 'budget_duration', budget_duration, 'budget_reset_at', " S_TS ("budget_reset_at") "," \
    " 'soft_budget', soft_budget, 'created_at', " S_TS ("created_at") "," \
    " 'updated_at', " S_TS ("updated_at") ", 'created_by', created_by, 'updated_by', updated_by"

#define S_TABLE "\"LiteLLM_VerificationToken\""
#define S_PARAMS_MAX 40
#define S_ACTOR "litellm_proxy_admin_name"    //  created_by/updated_by: the master key's user

//  ---------------------------------------------------------------------
//  Statement parameters, all text

typedef struct {
    const char *values [S_PARAMS_MAX];
    char        numbers [S_PARAMS_MAX][40];
    int         count;
} s_params_t;

static int
s_param (s_params_t *params, const char *value)
{
    assert (params->count < S_PARAMS_MAX);
    params->values [params->count] = value;
    return ++params->count;
}

static int
s_param_double (s_params_t *params, double value)
{
    assert (params->count < S_PARAMS_MAX);
    snprintf (params->numbers [params->count], 40, "%.17g", value);
    return s_param (params, params->numbers [params->count]);
}

static int
s_param_int (s_params_t *params, int64_t value)
{
    assert (params->count < S_PARAMS_MAX);
    snprintf (params->numbers [params->count], 40, "%" PRId64, value);
    return s_param (params, params->numbers [params->count]);
}

//  ---------------------------------------------------------------------
//  The request body

typedef struct {
    zg_admin_job_t *job;
    const char     *data;
    size_t          size;
} s_body_t;

//  The body as a JSON object; an empty body is {} unless required
static int
s_body_open (zg_admin_job_t *job, s_body_t *body)
{
    body->job = job;
    body->data = job->body;
    body->size = job->body_size;
    size_t blank = 0;
    while (blank < body->size && strchr (" \t\r\n", body->data [blank]))
        blank++;
    if (blank == body->size) {
        body->data = "{}";
        body->size = 2;
        return 0;
    }
    size_t error_at = 0;
    if (!zg_json_valid (body->data, body->size, &error_at)) {
        zg_admin_error (job, 400, "bad_request_error", NULL,
                        "Invalid JSON in the request body at byte %zu", error_at);
        return -1;
    }
    if (body->data [blank] != '{') {
        zg_admin_error (job, 400, "bad_request_error", NULL,
                        "The request body must be a JSON object");
        return -1;
    }
    return 0;
}

static const char *
s_type_name (zg_json_type_t type)
{
    switch (type) {
        case ZG_JSON_OBJECT: return "an object";
        case ZG_JSON_ARRAY:  return "a list";
        case ZG_JSON_STRING: return "a string";
        case ZG_JSON_NUMBER: return "a number";
        case ZG_JSON_TRUE:
        case ZG_JSON_FALSE:  return "a boolean";
        default:             return "null";
    }
}

static int
s_wrong (s_body_t *body, const char *name, const char *expected, zg_json_type_t got)
{
    zg_admin_error (body->job, 400, "bad_request_error", name,
                    "Invalid value for '%s': expected %s, got %s", name, expected, s_type_name (got));
    return -1;
}

//  Each reader: 0 with *present set (false for absent or null), or -1
//  after answering 400
static int
s_field (s_body_t *body, const char *name, zg_json_span_t *span, bool *present)
{
    *present = zg_json_find (body->data, body->size, name, span) && span->type != ZG_JSON_NULL;
    return 0;
}

static int
s_read_string (s_body_t *body, const char *name, char *out, size_t size, bool *present)
{
    zg_json_span_t span;
    s_field (body, name, &span, present);
    if (!*present)
        return 0;
    if (span.type != ZG_JSON_STRING)
        return s_wrong (body, name, "a string", span.type);
    int length = zg_json_string (body->data, &span, out, size);
    if (length < 0) {
        zg_admin_error (body->job, 400, "bad_request_error", name,
                        "Invalid value for '%s': longer than %zu bytes", name, size - 1);
        return -1;
    }
    if (strlen (out) != (size_t) length) {
        zg_admin_error (body->job, 400, "bad_request_error", name,
                        "Invalid value for '%s': contains a NUL character", name);
        return -1;
    }
    return 0;
}

static int
s_read_number (s_body_t *body, const char *name, double *out, bool *present)
{
    zg_json_span_t span;
    s_field (body, name, &span, present);
    if (!*present)
        return 0;
    if (span.type != ZG_JSON_NUMBER || !zg_json_double (body->data, &span, out))
        return s_wrong (body, name, "a number", span.type);
    if (!isfinite (*out) || *out < 0) {
        zg_admin_error (body->job, 400, "bad_request_error", name,
                        "Invalid value for '%s': expected a number >= 0", name);
        return -1;
    }
    return 0;
}

static int
s_read_int (s_body_t *body, const char *name, int64_t *out, bool *present)
{
    zg_json_span_t span;
    s_field (body, name, &span, present);
    if (!*present)
        return 0;
    if (span.type != ZG_JSON_NUMBER)
        return s_wrong (body, name, "an integer", span.type);
    //  1.5, 1e3, and integers beyond 64 bits are not integers here
    bool integral = span.length <= 19;
    for (size_t index = 0; integral && index < span.length; index++) {
        char c = body->data [span.offset + index];
        integral = (c >= '0' && c <= '9') || (index == 0 && c == '-');
    }
    if (!integral || !zg_json_int64 (body->data, &span, out)) {
        zg_admin_error (body->job, 400, "bad_request_error", name,
                        "Invalid value for '%s': expected an integer", name);
        return -1;
    }
    if (*out < 0) {
        zg_admin_error (body->job, 400, "bad_request_error", name,
                        "Invalid value for '%s': expected an integer >= 0", name);
        return -1;
    }
    return 0;
}

static int
s_read_bool (s_body_t *body, const char *name, bool *out, bool *present)
{
    zg_json_span_t span;
    s_field (body, name, &span, present);
    if (!*present)
        return 0;
    if (span.type != ZG_JSON_TRUE && span.type != ZG_JSON_FALSE)
        return s_wrong (body, name, "a boolean", span.type);
    *out = span.type == ZG_JSON_TRUE;
    return 0;
}

//  The JSON text of an object or list value, copied (caller frees)
static int
s_read_json (s_body_t *body, const char *name, zg_json_type_t type, size_t max,
             char **out, bool *present)
{
    zg_json_span_t span;
    *out = NULL;
    s_field (body, name, &span, present);
    if (!*present)
        return 0;
    if (span.type != type)
        return s_wrong (body, name, type == ZG_JSON_OBJECT ? "an object" : "a list", span.type);
    if (span.length > max) {
        zg_admin_error (body->job, 400, "bad_request_error", name,
                        "Invalid value for '%s': longer than %zu bytes", name, max);
        return -1;
    }
    *out = strndup (body->data + span.offset, span.length);
    if (!*out) {
        zg_admin_error (body->job, 500, "internal_server_error", name, "Out of memory");
        return -1;
    }
    return 0;
}

//  A list of strings, each at most max_each bytes, at most max_count of
//  them, as JSON text (caller frees)
static int
s_read_names (s_body_t *body, const char *name, size_t max_count, size_t max_each,
              char **out, bool *present)
{
    if (s_read_json (body, name, ZG_JSON_ARRAY, SIZE_MAX, out, present) || !*present)
        return *present ? -1 : 0;
    zg_json_span_t list = { ZG_JSON_ARRAY, 0, strlen (*out), 0 }, element;
    size_t cursor = 0, count = 0;
    char item [ZG_KEYS_KEY_MAX + 2];
    while (zg_json_element (*out, list.length, &list, &cursor, &element)) {
        int length = element.type == ZG_JSON_STRING
                   ? zg_json_string (*out, &element, item, sizeof item) : -1;
        if (length < 0 || (size_t) length > max_each || (size_t) length != strlen (item)
        ||  ++count > max_count) {
            if (count > max_count)
                zg_admin_error (body->job, 400, "bad_request_error", name,
                                "Invalid value for '%s': more than %zu names", name, max_count);
            else
                zg_admin_error (body->job, 400, "bad_request_error", name,
                                "Invalid value for '%s': expected a list of strings of at most "
                                "%zu bytes", name, max_each);
            free (*out);
            *out = NULL;
            return -1;
        }
    }
    return 0;
}

//  ---------------------------------------------------------------------
//  The fields of generate and update

typedef struct {
    bool    has_key;             char key [ZG_KEYS_KEY_MAX + 1];
    bool    has_alias;           char alias [ZG_KEYS_ID_MAX + 1];
    bool    has_duration;        char duration [64];         int64_t expires;
    bool    has_models;          char *models;
    bool    has_max_budget;      double max_budget;
    bool    has_budget_duration; char budget_duration [ZG_KEYS_ID_MAX + 1];
                                 int64_t budget_reset_at;
    bool    has_soft_budget;     double soft_budget;
    bool    has_rpm;             int64_t rpm;
    bool    has_tpm;             int64_t tpm;
    bool    has_parallel;        int64_t parallel;
    bool    has_metadata;        char *metadata;
    bool    has_user;            char user [ZG_KEYS_ID_MAX + 1];
    bool    has_team;            char team [ZG_KEYS_ID_MAX + 1];
    bool    has_blocked;         bool blocked;
    bool    has_spend;           double spend;
} s_fields_t;

static void
s_fields_free (s_fields_t *fields)
{
    free (fields->models);
    free (fields->metadata);
    fields->models = fields->metadata = NULL;
}

static int
s_read_duration (s_body_t *body, const char *name, char *out, size_t size, int64_t now,
                 int64_t *end, bool *present)
{
    if (s_read_string (body, name, out, size, present))
        return -1;
    if (*present && zg_keys_duration_end (out, now, end)) {
        zg_admin_error (body->job, 400, "bad_request_error", name,
                        "Invalid value for '%s': expected a duration such as \"30s\", \"30m\", "
                        "\"30h\", \"30d\", \"4w\" or \"1mo\"", name);
        return -1;
    }
    return 0;
}

static int
s_read_fields (s_body_t *body, int64_t now, s_fields_t *f)
{
    memset (f, 0, sizeof *f);
    if (s_read_string (body, "key", f->key, sizeof f->key, &f->has_key)
    ||  s_read_string (body, "key_alias", f->alias, sizeof f->alias, &f->has_alias)
    ||  s_read_duration (body, "duration", f->duration, sizeof f->duration, now, &f->expires,
                         &f->has_duration)
    ||  s_read_names (body, "models", ZG_KEYS_MODELS_MAX, ZG_KEYS_ID_MAX, &f->models, &f->has_models)
    ||  s_read_number (body, "max_budget", &f->max_budget, &f->has_max_budget)
    ||  s_read_duration (body, "budget_duration", f->budget_duration, sizeof f->budget_duration,
                         now, &f->budget_reset_at, &f->has_budget_duration)
    ||  s_read_number (body, "soft_budget", &f->soft_budget, &f->has_soft_budget)
    ||  s_read_int (body, "rpm_limit", &f->rpm, &f->has_rpm)
    ||  s_read_int (body, "tpm_limit", &f->tpm, &f->has_tpm)
    ||  s_read_int (body, "max_parallel_requests", &f->parallel, &f->has_parallel)
    ||  s_read_json (body, "metadata", ZG_JSON_OBJECT, ZG_KEYS_METADATA_MAX, &f->metadata,
                     &f->has_metadata)
    ||  s_read_string (body, "user_id", f->user, sizeof f->user, &f->has_user)
    ||  s_read_string (body, "team_id", f->team, sizeof f->team, &f->has_team)
    ||  s_read_bool (body, "blocked", &f->blocked, &f->has_blocked)
    ||  s_read_number (body, "spend", &f->spend, &f->has_spend)) {
        s_fields_free (f);
        return -1;
    }
    if (f->has_parallel && f->parallel > INT32_MAX) {
        zg_admin_error (body->job, 400, "bad_request_error", "max_parallel_requests",
                        "Invalid value for 'max_parallel_requests': at most %d", INT32_MAX);
        s_fields_free (f);
        return -1;
    }
    return 0;
}

//  ---------------------------------------------------------------------
//  Statements

static PGresult *
s_exec (zg_admin_ctx_t *ctx, zg_admin_job_t *job, const char *sql, s_params_t *params)
{
    char errbuf [512] = "";
    PGresult *result = zg_db_exec (ctx->db, sql, params ? params->count : 0,
                                   params ? params->values : NULL, errbuf, sizeof errbuf);
    if (!result)
        zg_admin_db_error (ctx, job, errbuf);
    return result;
}

static int
s_command (zg_admin_ctx_t *ctx, zg_admin_job_t *job, const char *sql, s_params_t *params)
{
    PGresult *result = s_exec (ctx, job, sql, params);
    PQclear (result);
    return result ? 0 : -1;
}

static int
s_begin (zg_admin_ctx_t *ctx, zg_admin_job_t *job)
{
    return s_command (ctx, job, "BEGIN", NULL);
}

//  Rolls back what the handler started; the error is already answered
static void
s_abort (zg_admin_ctx_t *ctx)
{
    PGconn *conn = zg_db_handle (ctx->db);
    if (PQstatus (conn) == CONNECTION_OK && PQtransactionStatus (conn) != PQTRANS_IDLE) {
        char errbuf [256];
        zg_db_command (ctx->db, "ROLLBACK", 0, NULL, errbuf, sizeof errbuf);
    }
}

static int
s_notify (zg_admin_ctx_t *ctx, zg_admin_job_t *job, const char *payload)
{
    s_params_t params = { .count = 0 };
    s_param (&params, payload);
    return s_command (ctx, job, "SELECT pg_notify ('" ZG_KEYSTORE_CHANNEL_KEYS "', $1)", &params);
}

//  Serialises alias checks, so two requests cannot both take one alias
static int
s_alias_free (zg_admin_ctx_t *ctx, zg_admin_job_t *job, const char *alias, const char *except)
{
    if (s_command (ctx, job, "SELECT pg_advisory_xact_lock (hashtext ('zgate key_alias'))", NULL))
        return -1;
    s_params_t params = { .count = 0 };
    s_param (&params, alias);
    s_param (&params, except);
    PGresult *result = s_exec (ctx, job, "SELECT 1 FROM " S_TABLE
                               " WHERE key_alias = $1 AND token IS DISTINCT FROM $2", &params);
    if (!result)
        return -1;
    bool taken = PQntuples (result) > 0;
    PQclear (result);
    if (taken) {
        zg_admin_error (job, 400, "bad_request_error", "key_alias",
                        "Unique key aliases across all keys are required. Key alias '%s' "
                        "already exists.", alias);
        return -1;
    }
    return 0;
}

//  The user row the reference creates for a key's user_id, so that user
//  budgets have a row to live in
static int
s_ensure_user (zg_admin_ctx_t *ctx, zg_admin_job_t *job, const char *user_id)
{
    s_params_t params = { .count = 0 };
    s_param (&params, user_id);
    return s_command (ctx, job, "INSERT INTO \"LiteLLM_UserTable\" (user_id) VALUES ($1)"
                      " ON CONFLICT (user_id) DO NOTHING", &params);
}

//  The table's view of the key whose row is in result (selected with
//  ZG_ADMIN_KEY_COLUMNS first), and of its user's budget
static void
s_emit_key (zg_admin_ctx_t *ctx, PGresult *result)
{
    zg_key_record_t record;
    char *models = NULL;
    if (ctx->emit && zg_admin_key_from_row (result, 0, &record, &models) == 0) {
        zg_admin_change_t change = { ZG_ADMIN_EMIT_KEY_UPSERT, &record, ZG_KEYS_FOR_KEY,
                                     record.token, 0, 0, 0 };
        ctx->emit (ctx->emit_arg, &change);
    }
    free (models);
}

static void
s_emit_remove (zg_admin_ctx_t *ctx, const char *hash)
{
    if (ctx->emit) {
        zg_admin_change_t change = { ZG_ADMIN_EMIT_KEY_REMOVE, NULL, ZG_KEYS_FOR_KEY, hash, 0, 0, 0 };
        ctx->emit (ctx->emit_arg, &change);
    }
}

static void
s_emit_user (zg_admin_ctx_t *ctx, zg_admin_job_t *job, const char *user_id)
{
    s_params_t params = { .count = 0 };
    s_param (&params, user_id);
    PGresult *result = s_exec (ctx, job,
        "SELECT spend, coalesce (max_budget, -1),"
        " coalesce (floor (extract (epoch FROM budget_reset_at))::bigint, 0)"
        " FROM \"LiteLLM_UserTable\" WHERE user_id = $1", &params);
    if (result && PQntuples (result) == 1 && ctx->emit) {
        zg_admin_change_t change = { ZG_ADMIN_EMIT_BUDGET, NULL, ZG_KEYS_FOR_USER, user_id,
                                     strtod (PQgetvalue (result, 0, 0), NULL),
                                     strtod (PQgetvalue (result, 0, 1), NULL),
                                     strtoll (PQgetvalue (result, 0, 2), NULL, 10) };
        ctx->emit (ctx->emit_arg, &change);
    }
    PQclear (result);
}

//  Commit; on success the answer is the last column of result's row
static int
s_commit_and_answer (zg_admin_ctx_t *ctx, zg_admin_job_t *job, PGresult *result)
{
    if (s_command (ctx, job, "COMMIT", NULL))
        return -1;
    zg_admin_answer (job, 200, PQgetvalue (result, 0, PQnfields (result) - 1));
    return 0;
}

static void
s_not_found (zg_admin_job_t *job, const char *given)
{
    char name [32];
    zg_keys_key_name (given ? given : "", name, sizeof name);
    zg_admin_error (job, 404, "not_found_error", "key", "Key not found in database: %s",
                    strncmp (given ? given : "", "sk-", 3) == 0 ? name : (given ? given : ""));
}

//  The key a request names (body "key", or the path's), hashed
static int
s_named_key (zg_admin_job_t *job, s_body_t *body, char *given, size_t size,
             char hash [ZG_KEYS_HASH_HEX + 1])
{
    bool present = false;
    if (job->path_key && *job->path_key) {
        snprintf (given, size, "%s", job->path_key);
        present = true;
    }
    else
    if (s_read_string (body, "key", given, size, &present))
        return -1;
    if (!present || !*given) {
        zg_admin_error (job, 400, "bad_request_error", "key", "Missing 'key' in the request body");
        return -1;
    }
    if (zg_admin_key_hash (given, hash)) {
        s_not_found (job, given);
        return -1;
    }
    return 0;
}

//  ---------------------------------------------------------------------
//  /key/generate

static void
s_generate (zg_admin_ctx_t *ctx, zg_admin_job_t *job)
{
    s_body_t body;
    s_fields_t f;
    if (s_body_open (job, &body) || s_read_fields (&body, ctx->now, &f))
        return;
    if (f.has_key) {
        if (strncmp (f.key, "sk-", 3) != 0 || strlen (f.key) < 4) {
            zg_admin_error (job, 400, "bad_request_error", "key",
                            "Invalid value for 'key': a custom key must start with 'sk-'");
            s_fields_free (&f);
            return;
        }
    }
    else
    if (zg_keys_generate (f.key)) {
        zg_admin_error (job, 500, "internal_server_error", NULL, "No randomness to make a key");
        s_fields_free (&f);
        return;
    }
    char hash [ZG_KEYS_HASH_HEX + 1], key_name [32];
    zg_keys_hash (f.key, hash);
    zg_keys_key_name (f.key, key_name, sizeof key_name);

    s_params_t p = { .count = 0 };
    s_param (&p, hash);                                                     //  1
    s_param (&p, key_name);                                                 //  2
    s_param (&p, f.has_alias ? f.alias : NULL);                             //  3
    s_param (&p, f.has_models ? f.models : "[]");                           //  4
    if (f.has_duration) s_param_int (&p, f.expires); else s_param (&p, NULL);   //  5
    s_param (&p, f.has_blocked ? (f.blocked ? "true" : "false") : NULL);    //  6
    if (f.has_max_budget) s_param_double (&p, f.max_budget); else s_param (&p, NULL);  //  7
    s_param_double (&p, f.has_spend ? f.spend : 0);                         //  8
    if (f.has_soft_budget) s_param_double (&p, f.soft_budget); else s_param (&p, NULL); //  9
    s_param (&p, f.has_budget_duration ? f.budget_duration : NULL);         //  10
    if (f.has_budget_duration) s_param_int (&p, f.budget_reset_at); else s_param (&p, NULL); //  11
    if (f.has_rpm) s_param_int (&p, f.rpm); else s_param (&p, NULL);        //  12
    if (f.has_tpm) s_param_int (&p, f.tpm); else s_param (&p, NULL);        //  13
    if (f.has_parallel) s_param_int (&p, f.parallel); else s_param (&p, NULL);  //  14
    s_param (&p, f.has_user ? f.user : NULL);                               //  15
    s_param (&p, f.has_team ? f.team : NULL);                               //  16
    s_param (&p, f.has_metadata ? f.metadata : "{}");                       //  17
    s_param (&p, f.key);                                                    //  18
    s_param (&p, f.has_duration ? f.duration : NULL);                       //  19
    static const char *sql =
        "INSERT INTO " S_TABLE " (token, key_name, key_alias, models, expires, blocked,"
        " max_budget, spend, soft_budget, budget_duration, budget_reset_at, rpm_limit, tpm_limit,"
        " max_parallel_requests, user_id, team_id, metadata, created_by, updated_by,"
        " created_at, updated_at)"
        " VALUES ($1, $2, $3, ARRAY (SELECT jsonb_array_elements_text ($4::jsonb)),"
        " to_timestamp ($5::float8) AT TIME ZONE 'UTC', $6::boolean, $7::float8, $8::float8,"
        " $9::float8, $10, to_timestamp ($11::float8) AT TIME ZONE 'UTC', $12::bigint,"
        " $13::bigint, $14::integer, $15, $16, $17::jsonb, '" S_ACTOR "', '" S_ACTOR "',"
        " now () AT TIME ZONE 'UTC', now () AT TIME ZONE 'UTC')"
        " RETURNING " ZG_ADMIN_KEY_COLUMNS ", json_build_object ('key', $18::text,"
        " 'token', token, 'token_id', token, 'duration', $19::text, " S_KEY_FIELDS ")::text";

    PGresult *result = NULL;
    if (s_begin (ctx, job))
        goto done;
    if (f.has_alias && s_alias_free (ctx, job, f.alias, NULL))
        goto done;
    s_params_t exists = { .count = 0 };
    s_param (&exists, hash);
    result = s_exec (ctx, job, "SELECT 1 FROM " S_TABLE " WHERE token = $1", &exists);
    if (!result)
        goto done;
    if (PQntuples (result) > 0) {
        zg_admin_error (job, 400, "bad_request_error", "key",
                        "Key with token %s already exists", key_name);
        goto done;
    }
    PQclear (result);
    if (f.has_user && s_ensure_user (ctx, job, f.user))
        goto done;
    result = s_exec (ctx, job, sql, &p);
    if (!result || s_notify (ctx, job, hash) || s_commit_and_answer (ctx, job, result))
        goto done;
    s_emit_key (ctx, result);
    if (f.has_user)
        s_emit_user (ctx, job, f.user);
    zg_info ("admin: generated key %s", key_name);
done:
    PQclear (result);
    s_abort (ctx);
    s_fields_free (&f);
}

//  ---------------------------------------------------------------------
//  /key/info

static void
s_info (zg_admin_ctx_t *ctx, zg_admin_job_t *job)
{
    char given [ZG_KEYS_KEY_MAX + 1], hash [ZG_KEYS_HASH_HEX + 1];
    int found = zg_admin_query_param (job->query, "key", given, sizeof given);
    if (found < 0) {
        zg_admin_error (job, 400, "bad_request_error", "key", "Invalid 'key' query parameter");
        return;
    }
    if (found == 0 || !*given) {
        zg_admin_error (job, 400, "bad_request_error", "key", "Missing 'key' query parameter");
        return;
    }
    if (zg_admin_key_hash (given, hash)) {
        s_not_found (job, given);
        return;
    }
    s_params_t p = { .count = 0 };
    s_param (&p, hash);
    s_param (&p, given);
    PGresult *result = s_exec (ctx, job,
        "SELECT json_build_object ('key', $2::text, 'info', json_build_object ("
        S_KEY_FIELDS ", 'last_active', " S_TS ("last_active") "))::text"
        " FROM " S_TABLE " WHERE token = $1", &p);
    if (!result)
        return;
    if (PQntuples (result) == 0)
        s_not_found (job, given);
    else
        zg_admin_answer (job, 200, PQgetvalue (result, 0, 0));
    PQclear (result);
}

//  ---------------------------------------------------------------------
//  /key/update, /key/block, /key/unblock

//  The SET list of an update, from the fields given
static void
s_set (char *sql, size_t size, const char *column, const char *expression, int param)
{
    size_t used = strlen (sql);
    snprintf (sql + used, size - used, ", %s = ", column);
    used = strlen (sql);
    snprintf (sql + used, size - used, expression, param);
}

static void
s_update (zg_admin_ctx_t *ctx, zg_admin_job_t *job, int blocked)
{
    s_body_t body;
    s_fields_t f;
    char given [ZG_KEYS_KEY_MAX + 1], hash [ZG_KEYS_HASH_HEX + 1];
    if (s_body_open (job, &body) || s_named_key (job, &body, given, sizeof given, hash))
        return;
    if (blocked >= 0)
        memset (&f, 0, sizeof f);
    else
    if (s_read_fields (&body, ctx->now, &f))
        return;
    if (blocked >= 0) {
        f.has_blocked = true;
        f.blocked = blocked == 1;
    }

    s_params_t p = { .count = 0 };
    s_param (&p, hash);                 //  $1
    s_param (&p, given);                //  $2
    char sql [4096] = "UPDATE " S_TABLE " SET updated_at = now () AT TIME ZONE 'UTC',"
                      " updated_by = '" S_ACTOR "'";
    if (f.has_alias)
        s_set (sql, sizeof sql, "key_alias", "$%d", s_param (&p, f.alias));
    if (f.has_duration)
        s_set (sql, sizeof sql, "expires", "to_timestamp ($%d::float8) AT TIME ZONE 'UTC'",
               s_param_int (&p, f.expires));
    if (f.has_models)
        s_set (sql, sizeof sql, "models", "ARRAY (SELECT jsonb_array_elements_text ($%d::jsonb))",
               s_param (&p, f.models));
    if (f.has_max_budget)
        s_set (sql, sizeof sql, "max_budget", "$%d::float8", s_param_double (&p, f.max_budget));
    if (f.has_budget_duration) {
        s_set (sql, sizeof sql, "budget_duration", "$%d", s_param (&p, f.budget_duration));
        s_set (sql, sizeof sql, "budget_reset_at", "to_timestamp ($%d::float8) AT TIME ZONE 'UTC'",
               s_param_int (&p, f.budget_reset_at));
    }
    if (f.has_soft_budget)
        s_set (sql, sizeof sql, "soft_budget", "$%d::float8", s_param_double (&p, f.soft_budget));
    if (f.has_rpm)
        s_set (sql, sizeof sql, "rpm_limit", "$%d::bigint", s_param_int (&p, f.rpm));
    if (f.has_tpm)
        s_set (sql, sizeof sql, "tpm_limit", "$%d::bigint", s_param_int (&p, f.tpm));
    if (f.has_parallel)
        s_set (sql, sizeof sql, "max_parallel_requests", "$%d::integer", s_param_int (&p, f.parallel));
    if (f.has_metadata)
        s_set (sql, sizeof sql, "metadata", "$%d::jsonb", s_param (&p, f.metadata));
    if (f.has_user)
        s_set (sql, sizeof sql, "user_id", "$%d", s_param (&p, f.user));
    if (f.has_team)
        s_set (sql, sizeof sql, "team_id", "$%d", s_param (&p, f.team));
    if (f.has_blocked)
        s_set (sql, sizeof sql, "blocked", "$%d::boolean", s_param (&p, f.blocked ? "true" : "false"));
    if (f.has_spend)
        s_set (sql, sizeof sql, "spend", "$%d::float8", s_param_double (&p, f.spend));
    size_t used = strlen (sql);
    if (blocked >= 0)
        snprintf (sql + used, sizeof sql - used, " WHERE token = $1 RETURNING " ZG_ADMIN_KEY_COLUMNS
                  ", (json_build_object ('token', token, " S_KEY_FIELDS ")::jsonb"
                  " || jsonb_build_object ('key', $2::text))::text");
    else
        snprintf (sql + used, sizeof sql - used, " WHERE token = $1 RETURNING " ZG_ADMIN_KEY_COLUMNS
                  ", (jsonb_build_object ('key', $2::text, 'token', token)"
                  " || json_build_object (" S_KEY_FIELDS ")::jsonb)::text");

    PGresult *result = NULL;
    if (s_begin (ctx, job))
        goto done;
    if (f.has_alias && s_alias_free (ctx, job, f.alias, hash))
        goto done;
    if (f.has_user && s_ensure_user (ctx, job, f.user))
        goto done;
    result = s_exec (ctx, job, sql, &p);
    if (!result)
        goto done;
    if (PQntuples (result) == 0) {
        s_not_found (job, given);
        goto done;
    }
    if (s_notify (ctx, job, hash) || s_commit_and_answer (ctx, job, result))
        goto done;
    s_emit_key (ctx, result);
    if (f.has_user)
        s_emit_user (ctx, job, f.user);
done:
    PQclear (result);
    s_abort (ctx);
    s_fields_free (&f);
}

//  ---------------------------------------------------------------------
//  /key/delete

//  The JSON list of hashes of a JSON list of keys (caller frees)
static char *
s_hashes_of (const char *keys, size_t *count_p)
{
    size_t size = strlen (keys);
    zg_json_span_t list = { ZG_JSON_ARRAY, 0, size, 0 }, element;
    size_t count = 0, cursor = 0;
    while (zg_json_element (keys, size, &list, &cursor, &element))
        count++;
    *count_p = count;
    size_t room = count * (6 * ZG_KEYS_HASH_HEX + 3) + 3;
    char *out = (char *) malloc (room);
    if (!out)
        return NULL;
    size_t used = 0;
    out [used++] = '[';
    cursor = 0;
    char given [ZG_KEYS_KEY_MAX + 2], hash [ZG_KEYS_HASH_HEX + 1];
    while (zg_json_element (keys, size, &list, &cursor, &element)) {
        zg_json_string (keys, &element, given, sizeof given);
        if (zg_admin_key_hash (given, hash))
            snprintf (hash, sizeof hash, "-");      //  matches no stored key
        if (used > 1)
            out [used++] = ',';
        used += (size_t) zg_json_quote (hash, out + used, room - used);
    }
    out [used++] = ']';
    out [used] = 0;
    return out;
}

static void
s_delete (zg_admin_ctx_t *ctx, zg_admin_job_t *job)
{
    s_body_t body;
    if (s_body_open (job, &body))
        return;
    char *keys = NULL, *aliases = NULL, *hashes = NULL;
    bool has_keys = false, has_aliases = false;
    PGresult *result = NULL;
    if (s_read_names (&body, "keys", 10000, ZG_KEYS_KEY_MAX, &keys, &has_keys)
    ||  s_read_names (&body, "key_aliases", 10000, ZG_KEYS_ID_MAX, &aliases, &has_aliases))
        goto done;
    size_t key_count = 0, alias_count = 0;
    hashes = s_hashes_of (has_keys ? keys : "[]", &key_count);
    if (has_aliases) {
        zg_json_span_t list = { ZG_JSON_ARRAY, 0, strlen (aliases), 0 }, element;
        size_t cursor = 0;
        while (zg_json_element (aliases, list.length, &list, &cursor, &element))
            alias_count++;
    }
    if (!hashes) {
        zg_admin_error (job, 500, "internal_server_error", NULL, "Out of memory");
        goto done;
    }
    if (key_count + alias_count == 0) {
        zg_admin_error (job, 400, "bad_request_error", "keys",
                        "Either 'keys' or 'key_aliases' must be a non-empty list");
        goto done;
    }
    s_params_t p = { .count = 0 };
    s_param (&p, hashes);
    s_param (&p, has_aliases ? aliases : "[]");
    s_param (&p, has_keys ? keys : "[]");
    if (s_begin (ctx, job))
        goto done;
    //  Which of the names match no key (all or nothing is deleted), and
    //  the answer: what was asked for, as the reference lists it
    result = s_exec (ctx, job,
        "SELECT coalesce ((SELECT json_agg (g.k ORDER BY g.n) FROM"
        "   jsonb_array_elements_text ($1::jsonb) WITH ORDINALITY h (t, n)"
        "   JOIN jsonb_array_elements_text ($3::jsonb) WITH ORDINALITY g (k, n) USING (n)"
        "   WHERE NOT EXISTS (SELECT 1 FROM " S_TABLE " WHERE token = h.t)), '[]')::text,"
        " coalesce ((SELECT json_agg (a ORDER BY n) FROM"
        "   jsonb_array_elements_text ($2::jsonb) WITH ORDINALITY x (a, n)"
        "   WHERE NOT EXISTS (SELECT 1 FROM " S_TABLE " WHERE key_alias = x.a)), '[]')::text,"
        " json_build_object ('deleted_keys', coalesce ((SELECT json_agg (e ORDER BY s, n) FROM"
        "   (SELECT e, 1 AS s, n FROM jsonb_array_elements ($3::jsonb) WITH ORDINALITY a (e, n)"
        "    UNION ALL"
        "    SELECT e, 2, n FROM jsonb_array_elements ($2::jsonb) WITH ORDINALITY b (e, n)) u),"
        "   '[]'))::text", &p);
    if (!result)
        goto done;
    if (!streq (PQgetvalue (result, 0, 0), "[]")) {
        //  The first one, shown as a key name when it is a key
        const char *missing = PQgetvalue (result, 0, 0);
        zg_json_span_t list = { ZG_JSON_ARRAY, 0, strlen (missing), 0 }, element;
        size_t cursor = 0;
        char first [ZG_KEYS_KEY_MAX + 2] = "";
        if (zg_json_element (missing, list.length, &list, &cursor, &element))
            zg_json_string (missing, &element, first, sizeof first);
        s_not_found (job, first);
        goto done;
    }
    if (!streq (PQgetvalue (result, 0, 1), "[]")) {
        zg_admin_error (job, 404, "not_found_error", "key_aliases",
                        "Key aliases not found in database: %s", PQgetvalue (result, 0, 1));
        goto done;
    }
    char *answer = strdup (PQgetvalue (result, 0, 2));
    PQclear (result);
    s_params_t gone = { .count = 0 };
    s_param (&gone, hashes);
    s_param (&gone, has_aliases ? aliases : "[]");
    result = s_exec (ctx, job,
        "WITH gone AS (DELETE FROM " S_TABLE " WHERE token IN"
        "   (SELECT jsonb_array_elements_text ($1::jsonb))"
        "   OR key_alias IN (SELECT jsonb_array_elements_text ($2::jsonb)) RETURNING token)"
        " SELECT token, pg_notify ('" ZG_KEYSTORE_CHANNEL_KEYS "', token) FROM gone", &gone);
    if (!answer)
        zg_admin_error (job, 500, "internal_server_error", NULL, "Out of memory");
    else
    if (result && s_command (ctx, job, "COMMIT", NULL) == 0) {
        for (int row = 0; row < PQntuples (result); row++)
            s_emit_remove (ctx, PQgetvalue (result, row, 0));
        zg_info ("admin: deleted %d keys", PQntuples (result));
        zg_admin_answer (job, 200, answer);
    }
    free (answer);
done:
    PQclear (result);
    s_abort (ctx);
    free (keys);
    free (aliases);
    free (hashes);
}

//  ---------------------------------------------------------------------
//  /key/list

static int
s_query_int (zg_admin_job_t *job, const char *name, int64_t fallback, int64_t low, int64_t high,
             int64_t *out)
{
    char text [32];
    int found = zg_admin_query_param (job->query, name, text, sizeof text);
    *out = fallback;
    if (found == 0)
        return 0;
    char *end = NULL;
    long long value = found > 0 ? strtoll (text, &end, 10) : 0;
    if (found < 0 || !*text || *end || value < low || value > high) {
        zg_admin_error (job, 400, "bad_request_error", name,
                        "Invalid '%s' query parameter: expected an integer from %" PRId64
                        " to %" PRId64, name, low, high);
        return -1;
    }
    *out = value;
    return 0;
}

static int
s_query_text (zg_admin_job_t *job, const char *name, char *out, size_t size, const char **value)
{
    int found = zg_admin_query_param (job->query, name, out, size);
    if (found < 0) {
        zg_admin_error (job, 400, "bad_request_error", name, "Invalid '%s' query parameter", name);
        return -1;
    }
    *value = found ? out : NULL;
    return 0;
}

static void
s_list (zg_admin_ctx_t *ctx, zg_admin_job_t *job)
{
    int64_t page, size;
    char user [ZG_KEYS_ID_MAX + 1], team [ZG_KEYS_ID_MAX + 1], alias [ZG_KEYS_ID_MAX + 1];
    const char *user_id, *team_id, *key_alias;
    if (s_query_int (job, "page", 1, 1, 1000000000, &page)
    ||  s_query_int (job, "size", 10, 1, 100, &size)
    ||  s_query_text (job, "user_id", user, sizeof user, &user_id)
    ||  s_query_text (job, "team_id", team, sizeof team, &team_id)
    ||  s_query_text (job, "key_alias", alias, sizeof alias, &key_alias))
        return;
    s_params_t p = { .count = 0 };
    s_param_int (&p, page);
    s_param_int (&p, size);
    s_param (&p, user_id);
    s_param (&p, team_id);
    s_param (&p, key_alias);
    PGresult *result = s_exec (ctx, job,
        "WITH chosen AS (SELECT token, created_at FROM " S_TABLE
        "   WHERE ($3::text IS NULL OR user_id = $3) AND ($4::text IS NULL OR team_id = $4)"
        "   AND ($5::text IS NULL OR key_alias = $5)),"
        " total AS (SELECT count (*) AS n FROM chosen),"
        " shown AS (SELECT token, created_at FROM chosen"
        "   ORDER BY created_at DESC NULLS LAST, token"
        "   LIMIT $2::bigint OFFSET ($1::bigint - 1) * $2::bigint)"
        " SELECT json_build_object ("
        "   'keys', coalesce ((SELECT json_agg (token ORDER BY created_at DESC NULLS LAST, token)"
        "                      FROM shown), '[]'),"
        "   'total_count', (SELECT n FROM total),"
        "   'current_page', $1::bigint,"
        "   'total_pages', (SELECT ceil (n::numeric / $2::bigint)::bigint FROM total))::text", &p);
    if (!result)
        return;
    zg_admin_answer (job, 200, PQgetvalue (result, 0, 0));
    PQclear (result);
}

//  ---------------------------------------------------------------------
//  /key/regenerate

static void
s_regenerate (zg_admin_ctx_t *ctx, zg_admin_job_t *job)
{
    s_body_t body;
    char given [ZG_KEYS_KEY_MAX + 1], hash [ZG_KEYS_HASH_HEX + 1];
    char key [ZG_KEYS_KEY_MAX + 1];
    bool custom = false;
    if (s_body_open (job, &body) || s_named_key (job, &body, given, sizeof given, hash)
    ||  s_read_string (&body, "new_key", key, sizeof key, &custom))
        return;
    if (custom && (strncmp (key, "sk-", 3) != 0 || strlen (key) < 4)) {
        zg_admin_error (job, 400, "bad_request_error", "new_key",
                        "Invalid value for 'new_key': a custom key must start with 'sk-'");
        return;
    }
    if (!custom && zg_keys_generate (key)) {
        zg_admin_error (job, 500, "internal_server_error", NULL, "No randomness to make a key");
        return;
    }
    char new_hash [ZG_KEYS_HASH_HEX + 1], key_name [32];
    zg_keys_hash (key, new_hash);
    zg_keys_key_name (key, key_name, sizeof key_name);
    s_params_t p = { .count = 0 };
    s_param (&p, hash);
    s_param (&p, new_hash);
    s_param (&p, key_name);
    s_param (&p, key);
    PGresult *result = NULL;
    if (s_begin (ctx, job))
        goto done;
    s_params_t exists = { .count = 0 };
    s_param (&exists, new_hash);
    result = s_exec (ctx, job, "SELECT 1 FROM " S_TABLE " WHERE token = $1", &exists);
    if (!result)
        goto done;
    if (PQntuples (result) > 0) {
        zg_admin_error (job, 400, "bad_request_error", "new_key",
                        "Key with token %s already exists", key_name);
        goto done;
    }
    PQclear (result);
    result = s_exec (ctx, job,
        "UPDATE " S_TABLE " SET token = $2, key_name = $3,"
        " rotation_count = coalesce (rotation_count, 0) + 1,"
        " last_rotation_at = now () AT TIME ZONE 'UTC', updated_at = now () AT TIME ZONE 'UTC',"
        " updated_by = '" S_ACTOR "' WHERE token = $1"
        " RETURNING " ZG_ADMIN_KEY_COLUMNS ", json_build_object ('key', $4::text,"
        " 'token', token, 'token_id', token, " S_KEY_FIELDS ")::text", &p);
    if (!result)
        goto done;
    if (PQntuples (result) == 0) {
        s_not_found (job, given);
        goto done;
    }
    if (s_notify (ctx, job, hash) || s_notify (ctx, job, new_hash)
    ||  s_commit_and_answer (ctx, job, result))
        goto done;
    s_emit_remove (ctx, hash);
    s_emit_key (ctx, result);
    zg_info ("admin: regenerated a key as %s", key_name);
done:
    PQclear (result);
    s_abort (ctx);
}

void
zg_admin_keys_run (zg_admin_ctx_t *ctx, zg_admin_job_t *job)
{
    assert (ctx);
    assert (job);
    switch (job->op) {
        case ZG_ADMIN_KEY_GENERATE:   s_generate (ctx, job);     break;
        case ZG_ADMIN_KEY_INFO:       s_info (ctx, job);         break;
        case ZG_ADMIN_KEY_UPDATE:     s_update (ctx, job, -1);   break;
        case ZG_ADMIN_KEY_BLOCK:      s_update (ctx, job, 1);    break;
        case ZG_ADMIN_KEY_UNBLOCK:    s_update (ctx, job, 0);    break;
        case ZG_ADMIN_KEY_DELETE:     s_delete (ctx, job);       break;
        case ZG_ADMIN_KEY_LIST:       s_list (ctx, job);         break;
        case ZG_ADMIN_KEY_REGENERATE: s_regenerate (ctx, job);   break;
        default:
            zg_admin_error (job, 404, "not_found_error", NULL, "Unknown key route");
    }
}
