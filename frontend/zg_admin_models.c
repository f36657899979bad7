/*  =========================================================================
    zg_admin_models - /model/new, /model/update, /model/delete and the
    database side of /model/info (general_settings.store_model_in_db)

    Rows of "LiteLLM_ProxyModelTable" as LiteLLM writes them: every string
    value of litellm_params encrypted with the salt key (v3:gcm; see
    db/zg_model_store.h), model_info as given with its "id". Each change
    runs in one transaction that also NOTIFYs ZG_KEYSTORE_CHANNEL_MODELS,
    so every router (zg_model_loader) reloads once it commits.

    Before a row is written, what it will hold is decoded as the router
    will decode it: a deployment zgate could not serve (no model, a
    provider zgate does not have, a bad number) is refused with 400 rather
    than stored and skipped later.

    /model/info lists the configuration's deployments, less those a
    database row of the same id replaces (the router's rule), then the
    database's, with db_model true; litellm_params never shows a secret.
    =========================================================================
*/
#include "frontend/zg_admin.h"
#include "frontend/zg_keystore.h"
#include "frontend/zg_reply.h"
#include "db/zg_model_store.h"
#include "common/zg_json.h"
#include "common/zg_log.h"

#include <assert.h>
#include <openssl/rand.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

//  Who the rows say made them: the reference's name for the master key
#define S_ADMIN_NAME "default_user_id"

//  A row as the answers show it (the reference returns the row it wrote,
//  litellm_params encrypted as stored)
#define S_ROW_JSON \
    "json_build_object ('model_id', model_id, 'model_name', model_name," \
    " 'litellm_params', litellm_params, 'model_info', model_info," \
    " 'created_at', to_jsonb (created_at AT TIME ZONE 'UTC'), 'created_by', created_by," \
    " 'updated_at', to_jsonb (updated_at AT TIME ZONE 'UTC'), 'updated_by', updated_by)::text"

//  litellm_params as an object, also when LiteLLM stored it as a JSON string
#define S_PARAMS_OBJECT \
    "(CASE WHEN jsonb_typeof (litellm_params) = 'string'" \
    " THEN (litellm_params #>> '{}')::jsonb ELSE litellm_params END)"

//  ---------------------------------------------------------------------
//  Small helpers

//  A string member of the body object, unescaped into a new string; NULL
//  when absent, null or not a string (*wrong_type then says which)
static char *
s_string (const char *json, size_t size, const zg_json_span_t *object, const char *key,
          bool *wrong_type)
{
    zg_json_span_t span;
    bool found = object? zg_json_find_in (json, size, object, key, &span)
                       : zg_json_find (json, size, key, &span);
    if (wrong_type)
        *wrong_type = found && span.type != ZG_JSON_STRING && span.type != ZG_JSON_NULL;
    if (!found || span.type != ZG_JSON_STRING)
        return NULL;
    char *text = (char *) malloc (span.length + 1);
    if (text && zg_json_string (json, &span, text, span.length + 1) < 0) {
        free (text);
        text = NULL;
    }
    return text;
}

//  The bytes of a member that must be an object, as a new string; NULL
//  when absent or null; *bad when it is something else
static char *
s_object (const char *json, size_t size, const char *key, bool *bad)
{
    zg_json_span_t span;
    *bad = false;
    if (!zg_json_find (json, size, key, &span) || span.type == ZG_JSON_NULL)
        return NULL;
    if (span.type != ZG_JSON_OBJECT) {
        *bad = true;
        return NULL;
    }
    return strndup (json + span.offset, span.length);
}

//  A random UUID (version 4), as LiteLLM gives a deployment without an id
static int
s_uuid (char out [37])
{
    unsigned char bytes [16];
    if (RAND_bytes (bytes, sizeof (bytes)) != 1)
        return -1;
    bytes [6] = (unsigned char) ((bytes [6] & 0x0F) | 0x40);
    bytes [8] = (unsigned char) ((bytes [8] & 0x3F) | 0x80);
    snprintf (out, 37, "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x",
              bytes [0], bytes [1], bytes [2], bytes [3], bytes [4], bytes [5], bytes [6],
              bytes [7], bytes [8], bytes [9], bytes [10], bytes [11], bytes [12], bytes [13],
              bytes [14], bytes [15]);
    return 0;
}

//  model_info with "id" set to id: the given object with id first, its own
//  "id" member (if any) left out
static char *
s_info_with_id (const char *info, const char *id)
{
    size_t room = 6 * strlen (id) + (info? strlen (info): 0) + 16;
    char *out = (char *) malloc (room);
    if (!out)
        return NULL;
    size_t used = (size_t) snprintf (out, room, "{\"id\":");
    used += (size_t) zg_json_quote (id, out + used, room - used);
    if (info) {
        zg_json_span_t whole = { ZG_JSON_OBJECT, 0, strlen (info), 0 }, key, value;
        size_t cursor = 0;
        while (zg_json_member (info, strlen (info), &whole, &cursor, &key, &value)) {
            if (key.length == 4 && memcmp (info + key.offset, "\"id\"", 4) == 0)
                continue;
            used += (size_t) snprintf (out + used, room - used, ",%.*s:%.*s",
                                       (int) key.length, info + key.offset,
                                       (int) value.length, info + value.offset);
        }
    }
    snprintf (out + used, room - used, "}");
    return out;
}

static int
s_command (zg_admin_ctx_t *ctx, zg_admin_job_t *job, const char *sql, int count,
           const char *const *params)
{
    char errbuf [512];
    if (zg_db_command (ctx->db, sql, count, params, errbuf, sizeof (errbuf)) == 0)
        return 0;
    zg_admin_db_error (ctx, job, errbuf);
    return -1;
}

static void
s_rollback (zg_admin_ctx_t *ctx)
{
    char errbuf [256];
    zg_db_command (ctx->db, "ROLLBACK", 0, NULL, errbuf, sizeof (errbuf));
}

//  NOTIFY in the transaction, then COMMIT; answers 200 with row_json
static void
s_commit (zg_admin_ctx_t *ctx, zg_admin_job_t *job, const char *model_id, const char *row_json)
{
    const char *params [] = { model_id };
    if (s_command (ctx, job, "SELECT pg_notify ('" ZG_KEYSTORE_CHANNEL_MODELS "', $1)", 1, params)
    ||  s_command (ctx, job, "COMMIT", 0, NULL)) {
        s_rollback (ctx);
        return;
    }
    zg_admin_answer (job, 200, row_json);
}

//  The body as JSON, or a 400 answered
static bool
s_body_ok (zg_admin_job_t *job)
{
    if (job->body_size && zg_json_valid (job->body, job->body_size, NULL)
    &&  job->body [strspn (job->body, " \t\r\n")] == '{')
        return true;
    zg_admin_error (job, 400, "bad_request_error", NULL,
                    "Invalid request body: expected a JSON object");
    return false;
}

//  Decodes what a row will hold, as the router will; a 400 answered if it
//  cannot be served. salt_key NULL: params are the client's plaintext
static bool
s_servable (zg_admin_job_t *job, const char *salt_key, const char *id, const char *name,
            const char *params, const char *info)
{
    zg_model_t model;
    char reason [512];
    if (zg_model_decode (&model, salt_key, id, name, params, info, reason, sizeof (reason))) {
        zg_admin_error (job, 400, "bad_request_error", "litellm_params",
                        "This deployment cannot be served: %s", reason);
        return false;
    }
    zg_model_clear (&model);
    return true;
}

//  ---------------------------------------------------------------------
//  POST /model/new

static void
s_model_new (zg_admin_ctx_t *ctx, zg_admin_job_t *job)
{
    if (!s_body_ok (job))
        return;
    const char *body = job->body;
    size_t size = job->body_size;
    bool wrong = false, bad_params = false, bad_info = false;
    char *name = s_string (body, size, NULL, "model_name", &wrong);
    char *params = s_object (body, size, "litellm_params", &bad_params);
    char *info = s_object (body, size, "model_info", &bad_info);
    char *id = NULL, *info_text = NULL, *sealed = NULL;
    if (!name || !*name || wrong)
        zg_admin_error (job, 400, "bad_request_error", "model_name",
                        "model_name is required and must be a non-empty string");
    else
    if (!params)
        zg_admin_error (job, 400, "bad_request_error", "litellm_params",
                        "litellm_params is required and must be an object");
    else
    if (bad_info)
        zg_admin_error (job, 400, "bad_request_error", "model_info", "model_info must be an object");
    else {
        zg_json_span_t info_span = { ZG_JSON_OBJECT, 0, info? strlen (info): 0, 0 };
        id = info? s_string (info, strlen (info), &info_span, "id", &wrong): NULL;
        char generated [37];
        if (wrong || (id && !*id))
            zg_admin_error (job, 400, "bad_request_error", "model_info.id",
                            "model_info.id must be a non-empty string");
        else
        if (!id && (s_uuid (generated) || !(id = strdup (generated))))
            zg_admin_error (job, 500, "internal_server_error", NULL, "Cannot make a model id");
        else
        if (!(info_text = s_info_with_id (info, id)))
            zg_admin_error (job, 500, "internal_server_error", NULL, "Out of memory");
        else
        if (s_servable (job, NULL, id, name, params, info_text)) {
            char errbuf [512];
            sealed = zg_model_encrypt_params (ctx->salt_key, params, strlen (params),
                                              errbuf, sizeof (errbuf));
            if (!sealed)
                zg_admin_error (job, 500, "internal_server_error", NULL, "%s", errbuf);
        }
    }
    if (sealed && s_command (ctx, job, "BEGIN", 0, NULL) == 0) {
        const char *values [] = { id, name, sealed, info_text, S_ADMIN_NAME };
        char errbuf [512];
        PGresult *result = zg_db_exec (ctx->db,
            "INSERT INTO \"LiteLLM_ProxyModelTable\" (model_id, model_name, litellm_params,"
            " model_info, created_by, updated_by) VALUES ($1, $2, $3::jsonb, $4::jsonb, $5, $5)"
            " ON CONFLICT (model_id) DO NOTHING RETURNING " S_ROW_JSON,
            5, values, errbuf, sizeof (errbuf));
        if (!result) {
            zg_admin_db_error (ctx, job, errbuf);
            s_rollback (ctx);
        }
        else
        if (PQntuples (result) == 0) {
            s_rollback (ctx);
            zg_admin_error (job, 400, "bad_request_error", "model_info.id",
                            "A model with id=%s already exists", id);
        }
        else {
            s_commit (ctx, job, id, PQgetvalue (result, 0, 0));
            if (job->status == 200)
                zg_info ("models: %s (%s) added", id, name);
        }
        PQclear (result);
    }
    free (name);
    free (params);
    free (info);
    free (id);
    free (info_text);
    free (sealed);
}

//  ---------------------------------------------------------------------
//  POST /model/update: {"model_info": {"id", ...}, "litellm_params": {...},
//  "model_name"}; absent or null fields keep what is stored

static void
s_model_update (zg_admin_ctx_t *ctx, zg_admin_job_t *job)
{
    if (!s_body_ok (job))
        return;
    const char *body = job->body;
    size_t size = job->body_size;
    bool wrong_name = false, bad_params = false, bad_info = false, wrong_id = false;
    char *name = s_string (body, size, NULL, "model_name", &wrong_name);
    char *params = s_object (body, size, "litellm_params", &bad_params);
    char *info = s_object (body, size, "model_info", &bad_info);
    zg_json_span_t info_span = { ZG_JSON_OBJECT, 0, info? strlen (info): 0, 0 };
    char *id = info? s_string (info, strlen (info), &info_span, "id", &wrong_id): NULL;
    if (!id && !wrong_id)
        id = s_string (body, size, NULL, "id", &wrong_id);
    char *sealed = NULL, *info_text = NULL;
    char errbuf [512];
    if (bad_params || bad_info)
        zg_admin_error (job, 400, "bad_request_error", bad_params? "litellm_params": "model_info",
                        "%s must be an object", bad_params? "litellm_params": "model_info");
    else
    if (!id || !*id || wrong_id)
        zg_admin_error (job, 400, "bad_request_error", "model_info.id",
                        "model_info.id is required: the id of the model to update");
    else
    if (wrong_name || (name && !*name))
        zg_admin_error (job, 400, "bad_request_error", "model_name",
                        "model_name must be a non-empty string");
    else
    if (!(sealed = zg_model_encrypt_params (ctx->salt_key, params? params: "{}",
                                            params? strlen (params): 2, errbuf, sizeof (errbuf))))
        zg_admin_error (job, 500, "internal_server_error", NULL, "%s", errbuf);
    else
    if (!(info_text = s_info_with_id (info, id)))
        zg_admin_error (job, 500, "internal_server_error", NULL, "Out of memory");

    if (job->status == 0 && s_command (ctx, job, "BEGIN", 0, NULL) == 0) {
        const char *values [] = { id, sealed, name, info_text, S_ADMIN_NAME };
        PGresult *result = zg_db_exec (ctx->db,
            "UPDATE \"LiteLLM_ProxyModelTable\" SET"
            " litellm_params = " S_PARAMS_OBJECT " || jsonb_strip_nulls ($2::jsonb),"
            " model_name = coalesce ($3, model_name),"
            " model_info = coalesce (model_info, '{}'::jsonb) || $4::jsonb,"
            " updated_at = now (), updated_by = $5"
            " WHERE model_id = $1"
            " RETURNING model_name, litellm_params::text, model_info::text, " S_ROW_JSON,
            5, values, errbuf, sizeof (errbuf));
        if (!result) {
            zg_admin_db_error (ctx, job, errbuf);
            s_rollback (ctx);
        }
        else
        if (PQntuples (result) == 0) {
            s_rollback (ctx);
            zg_admin_error (job, 404, "not_found_error", "model_info.id",
                            "Model with id=%s not found in db", id);
        }
        else
        //  The row as it now is must still decrypt and make a deployment
        if (!s_servable (job, ctx->salt_key, id, PQgetvalue (result, 0, 0),
                         PQgetvalue (result, 0, 1), PQgetvalue (result, 0, 2)))
            s_rollback (ctx);
        else {
            s_commit (ctx, job, id, PQgetvalue (result, 0, 3));
            if (job->status == 200)
                zg_info ("models: %s updated", id);
        }
        PQclear (result);
    }
    free (name);
    free (params);
    free (info);
    free (id);
    free (sealed);
    free (info_text);
}

//  ---------------------------------------------------------------------
//  POST /model/delete {"id"}

static void
s_model_delete (zg_admin_ctx_t *ctx, zg_admin_job_t *job)
{
    if (!s_body_ok (job))
        return;
    bool wrong = false;
    char *id = s_string (job->body, job->body_size, NULL, "id", &wrong);
    if (!id || !*id || wrong) {
        zg_admin_error (job, 400, "bad_request_error", "id",
                        "id is required: the id of the model to delete");
        free (id);
        return;
    }
    if (s_command (ctx, job, "BEGIN", 0, NULL) == 0) {
        const char *values [] = { id };
        char errbuf [512];
        PGresult *result = zg_db_exec (ctx->db,
            "DELETE FROM \"LiteLLM_ProxyModelTable\" WHERE model_id = $1 RETURNING model_id",
            1, values, errbuf, sizeof (errbuf));
        if (!result) {
            zg_admin_db_error (ctx, job, errbuf);
            s_rollback (ctx);
        }
        else
        if (PQntuples (result) == 0) {
            s_rollback (ctx);
            zg_admin_error (job, 404, "not_found_error", "id",
                            "Model with id=%s not found in db", id);
        }
        else {
            size_t room = 6 * strlen (id) + 64;
            char *answer = (char *) malloc (room);
            if (answer) {
                char message [600];
                snprintf (message, sizeof (message), "Model: %s deleted successfully", id);
                size_t used = (size_t) snprintf (answer, room, "{\"message\":");
                if (zg_json_quote (message, answer + used, room - used) > 0)
                    strcat (answer, "}");
                s_commit (ctx, job, id, answer);
                free (answer);
            }
            else {
                s_rollback (ctx);
                zg_admin_error (job, 500, "internal_server_error", NULL, "Out of memory");
            }
            if (job->status == 200)
                zg_info ("models: %s deleted", id);
        }
        PQclear (result);
    }
    free (id);
}

//  ---------------------------------------------------------------------
//  GET /model/info

static bool
s_shown_info_key (const char *json, const zg_json_span_t *key)
{
    static const char *const computed [] = {
        "\"id\"", "\"db_model\"", "\"input_cost_per_token\"", "\"output_cost_per_token\"",
        "\"litellm_provider\"", "\"mode\"", NULL
    };
    for (const char *const *name = computed; *name; name++)
        if (key->length == strlen (*name) && memcmp (json + key->offset, *name, key->length) == 0)
            return false;
    return true;
}

//  One database deployment, in /model/info's shape, appended to text
static int
s_info_entry (char **text, size_t *size, const zg_model_t *model)
{
    const zg_deployment_t *deployment = &model->deployment;
    size_t room = 6 * (strlen (deployment->model_name) + strlen (deployment->id)
                       + strlen (deployment->provider)) + strlen (model->litellm_params)
                + strlen (model->model_info) + 256;
    char *grown = (char *) realloc (*text, *size + room);
    if (!grown)
        return -1;
    *text = grown;
    char *out = grown + *size;
    size_t used = (size_t) snprintf (out, room, "{\"model_name\":");
    used += (size_t) zg_json_quote (deployment->model_name, out + used, room - used);
    used += (size_t) snprintf (out + used, room - used, ",\"litellm_params\":%s,\"model_info\":"
                               "{\"id\":", model->litellm_params);
    used += (size_t) zg_json_quote (deployment->id, out + used, room - used);
    used += (size_t) snprintf (out + used, room - used, ",\"db_model\":true,\"input_cost_per_token\":");
    if (deployment->input_cost_per_token >= 0)
        used += (size_t) snprintf (out + used, room - used, "%.12g", deployment->input_cost_per_token);
    else
        used += (size_t) snprintf (out + used, room - used, "null");
    used += (size_t) snprintf (out + used, room - used, ",\"output_cost_per_token\":");
    if (deployment->output_cost_per_token >= 0)
        used += (size_t) snprintf (out + used, room - used, "%.12g", deployment->output_cost_per_token);
    else
        used += (size_t) snprintf (out + used, room - used, "null");
    used += (size_t) snprintf (out + used, room - used, ",\"litellm_provider\":");
    used += (size_t) zg_json_quote (deployment->provider, out + used, room - used);
    used += (size_t) snprintf (out + used, room - used, ",\"mode\":\"%s\"",
                               strstr (deployment->upstream_model, "embed")? "embedding": "chat");
    //  The stored model_info's own keys (max_tokens, custom ones...)
    const char *info = model->model_info;
    zg_json_span_t whole = { ZG_JSON_OBJECT, 0, strlen (info), 0 }, key, value;
    size_t cursor = 0;
    while (info [0] == '{' && zg_json_member (info, strlen (info), &whole, &cursor, &key, &value))
        if (s_shown_info_key (info, &key))
            used += (size_t) snprintf (out + used, room - used, ",%.*s:%.*s",
                                       (int) key.length, info + key.offset,
                                       (int) value.length, info + value.offset);
    used += (size_t) snprintf (out + used, room - used, "}}");
    *size += used;
    return 0;
}

static void
s_model_info (zg_admin_ctx_t *ctx, zg_admin_job_t *job)
{
    zg_model_list_t *list = NULL;
    if (ctx->config->store_model_in_db) {
        char errbuf [512];
        list = zg_model_store_load (ctx->db, ctx->salt_key, errbuf, sizeof (errbuf));
        if (!list) {
            zg_admin_db_error (ctx, job, errbuf);
            return;
        }
    }
    //  The configuration's deployments, less those a row replaces, in the
    //  shape the frontend already gives them
    const zg_config_t *config = ctx->config;
    zg_deployment_t *kept = (zg_deployment_t *) calloc (config->deployment_count + 1,
                                                        sizeof (zg_deployment_t));
    char *text = NULL;
    if (kept) {
        zg_config_t shown = *config;
        shown.deployments = kept;
        shown.deployment_count = 0;
        for (size_t index = 0; index < config->deployment_count; index++)
            if (!zg_model_list_find (list, config->deployments [index].id))
                kept [shown.deployment_count++] = config->deployments [index];
        text = zg_reply_model_info_json (&shown);
        free (kept);
    }
    //  ... then the database's, before the closing "]}"
    size_t size = text? strlen (text): 0;
    bool ok = text && size >= 2 && strcmp (text + size - 2, "]}") == 0;
    if (ok)
        size -= 2;
    bool first = ok && text [size - 1] == '[';
    for (size_t index = 0; ok && list && index < list->count; index++) {
        if (!first) {
            char *grown = (char *) realloc (text, size + 2);
            ok = grown != NULL;
            if (ok) {
                text = grown;
                text [size++] = ',';
            }
        }
        first = false;
        ok = ok && s_info_entry (&text, &size, &list->models [index]) == 0;
    }
    char *grown = ok? (char *) realloc (text, size + 3): NULL;
    if (grown) {
        text = grown;
        memcpy (text + size, "]}", 3);
        zg_admin_answer (job, 200, text);
    }
    else
        zg_admin_error (job, 500, "internal_server_error", NULL, "Out of memory");
    free (grown? grown: text);
    zg_model_list_destroy (&list);
}

//  ---------------------------------------------------------------------

void
zg_admin_models_run (zg_admin_ctx_t *ctx, zg_admin_job_t *job)
{
    assert (ctx);
    assert (job);
    if (job->op == ZG_ADMIN_MODEL_INFO) {
        s_model_info (ctx, job);
        return;
    }
    //  The reference refuses these without it (model_management_endpoints)
    if (!ctx->config->store_model_in_db) {
        zg_admin_error (job, 500, "internal_server_error", NULL,
                        "Set `'STORE_MODEL_IN_DB='True'` in your env to enable this feature.");
        return;
    }
    switch (job->op) {
        case ZG_ADMIN_MODEL_NEW:
            s_model_new (ctx, job);
            break;
        case ZG_ADMIN_MODEL_UPDATE:
            s_model_update (ctx, job);
            break;
        case ZG_ADMIN_MODEL_DELETE:
            s_model_delete (ctx, job);
            break;
        default:
            zg_admin_error (job, 404, "not_found_error", NULL, "Unknown model route");
            break;
    }
}
