/*  =========================================================================
    zg_admin - the management jobs: their life, their answers, and the
    dispatch to one handler per family of routes

    The handlers build their answers in SQL (json_build_object and
    friends) wherever the answer comes from rows, so that quoting and the
    shapes of numbers, lists and timestamps are PostgreSQL's and the same
    for every route.
    =========================================================================
*/
#include "frontend/zg_admin.h"
#include "common/zg_json.h"
#include "common/zg_log.h"
#include "common/zg_selftest.h"

#include <assert.h>
#include <czmq.h>
#include <ctype.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static char *
s_strdup_or_empty (const char *text)
{
    return strdup (text ? text : "");
}

zg_admin_job_t *
zg_admin_job_new (zg_admin_op_t op, uint64_t handle, const char *path_key,
                  const char *query, const char *body, size_t body_size)
{
    zg_admin_job_t *self = (zg_admin_job_t *) calloc (1, sizeof (zg_admin_job_t));
    if (!self)
        return NULL;
    self->op = op;
    self->handle = handle;
    self->path_key = path_key ? strdup (path_key) : NULL;
    self->query = s_strdup_or_empty (query);
    self->body = (char *) malloc (body_size + 1);
    if ((path_key && !self->path_key) || !self->query || !self->body) {
        zg_admin_job_destroy (&self);
        return NULL;
    }
    if (body_size)
        memcpy (self->body, body, body_size);
    self->body [body_size] = 0;
    self->body_size = body_size;
    return self;
}

void
zg_admin_job_destroy (zg_admin_job_t **self_p)
{
    assert (self_p);
    zg_admin_job_t *self = *self_p;
    if (!self)
        return;
    free (self->path_key);
    free (self->query);
    free (self->body);
    free (self->answer);
    free (self);
    *self_p = NULL;
}

//  The answer when even an error answer cannot be allocated: static text,
//  copied into the job only if that allocation works, else status alone
static const char *s_out_of_memory =
    "{\"error\":{\"message\":\"Out of memory\",\"type\":\"internal_server_error\","
    "\"param\":null,\"code\":\"500\"}}";

void
zg_admin_answer (zg_admin_job_t *job, int status, const char *json)
{
    assert (job);
    assert (json);
    free (job->answer);
    job->answer = strdup (json);
    if (!job->answer) {
        job->status = 500;
        job->answer = strdup (s_out_of_memory);
        job->answer_size = job->answer ? strlen (job->answer) : 0;
        return;
    }
    job->status = status;
    job->answer_size = strlen (job->answer);
}

void
zg_admin_error (zg_admin_job_t *job, int status, const char *type, const char *param,
                const char *format, ...)
{
    assert (job);
    assert (type);
    char message [ZG_KEYS_MESSAGE_MAX];
    va_list args;
    va_start (args, format);
    vsnprintf (message, sizeof message, format, args);
    va_end (args);

    //  Every character may take six bytes quoted (\u00XX)
    size_t size = 6 * (strlen (message) + strlen (type) + (param ? strlen (param) : 0)) + 128;
    char *json = (char *) malloc (size);
    if (!json) {
        zg_admin_answer (job, 500, s_out_of_memory);
        return;
    }
    size_t used = (size_t) snprintf (json, size, "{\"error\":{\"message\":");
    used += (size_t) zg_json_quote (message, json + used, size - used);
    used += (size_t) snprintf (json + used, size - used, ",\"type\":");
    used += (size_t) zg_json_quote (type, json + used, size - used);
    used += (size_t) snprintf (json + used, size - used, ",\"param\":");
    if (param)
        used += (size_t) zg_json_quote (param, json + used, size - used);
    else
        used += (size_t) snprintf (json + used, size - used, "null");
    snprintf (json + used, size - used, ",\"code\":\"%d\"}}", status);
    zg_admin_answer (job, status, json);
    free (json);
}

void
zg_admin_db_error (zg_admin_ctx_t *ctx, zg_admin_job_t *job, const char *errbuf)
{
    if (!ctx->db || PQstatus (zg_db_handle (ctx->db)) != CONNECTION_OK)
        zg_admin_error (job, 503, "no_db_connection", NULL,
                        "Service Unavailable, the database is unreachable: %s", errbuf);
    else {
        zg_warning ("admin: %s failed: %s", zg_admin_op_name (job->op), errbuf);
        zg_admin_error (job, 500, "internal_server_error", NULL, "Database error: %s", errbuf);
    }
}

void
zg_admin_run (zg_admin_ctx_t *ctx, zg_admin_job_t *job)
{
    assert (ctx);
    assert (job);
    job->status = 0;
    if (!ctx->db || !zg_db_ready (ctx->db)) {
        zg_admin_error (job, 503, "no_db_connection", NULL,
                        "Service Unavailable, the database is unreachable. Please retry shortly.");
        return;
    }
    switch (job->op) {
        case ZG_ADMIN_KEY_GENERATE:
        case ZG_ADMIN_KEY_INFO:
        case ZG_ADMIN_KEY_UPDATE:
        case ZG_ADMIN_KEY_DELETE:
        case ZG_ADMIN_KEY_LIST:
        case ZG_ADMIN_KEY_BLOCK:
        case ZG_ADMIN_KEY_UNBLOCK:
        case ZG_ADMIN_KEY_REGENERATE:
            zg_admin_keys_run (ctx, job);
            break;
        case ZG_ADMIN_SPEND_LOGS:
        case ZG_ADMIN_GLOBAL_SPEND:
        case ZG_ADMIN_GLOBAL_SPEND_RESET:
            zg_admin_spend_run (ctx, job);
            break;
        case ZG_ADMIN_MODEL_NEW:
        case ZG_ADMIN_MODEL_UPDATE:
        case ZG_ADMIN_MODEL_DELETE:
        case ZG_ADMIN_MODEL_INFO:
            zg_admin_models_run (ctx, job);
            break;
        default:
            zg_admin_error (job, 404, "not_found_error", NULL, "Unknown management route");
            break;
    }
    PGconn *conn = zg_db_handle (ctx->db);
    if (PQstatus (conn) != CONNECTION_OK) {
        //  A success was committed before the connection went; anything
        //  else may or may not have been, and the caller may retry
        if (job->status < 200 || job->status >= 300)
            zg_admin_error (job, 503, "no_db_connection", NULL,
                            "Service Unavailable, the database connection was lost. "
                            "Please retry shortly.");
        return;
    }
    if (PQtransactionStatus (conn) != PQTRANS_IDLE) {
        //  A handler that returned inside a transaction did not commit
        //  what it answered: nothing of it may stay
        char errbuf [256];
        zg_db_command (ctx->db, "ROLLBACK", 0, NULL, errbuf, sizeof errbuf);
        if (job->status >= 200 && job->status < 300)
            zg_admin_error (job, 500, "internal_server_error", NULL, "The change was not committed");
    }
    if (job->status == 0)
        zg_admin_error (job, 500, "internal_server_error", NULL, "No answer");
}

const char *
zg_admin_op_name (zg_admin_op_t op)
{
    switch (op) {
        case ZG_ADMIN_KEY_GENERATE:       return "/key/generate";
        case ZG_ADMIN_KEY_INFO:           return "/key/info";
        case ZG_ADMIN_KEY_UPDATE:         return "/key/update";
        case ZG_ADMIN_KEY_DELETE:         return "/key/delete";
        case ZG_ADMIN_KEY_LIST:           return "/key/list";
        case ZG_ADMIN_KEY_BLOCK:          return "/key/block";
        case ZG_ADMIN_KEY_UNBLOCK:        return "/key/unblock";
        case ZG_ADMIN_KEY_REGENERATE:     return "/key/regenerate";
        case ZG_ADMIN_SPEND_LOGS:         return "/spend/logs";
        case ZG_ADMIN_GLOBAL_SPEND:       return "/global/spend";
        case ZG_ADMIN_GLOBAL_SPEND_RESET: return "/global/spend/reset";
        case ZG_ADMIN_MODEL_NEW:          return "/model/new";
        case ZG_ADMIN_MODEL_UPDATE:       return "/model/update";
        case ZG_ADMIN_MODEL_DELETE:       return "/model/delete";
        case ZG_ADMIN_MODEL_INFO:         return "/model/info";
        default:                          return "unknown";
    }
}

//  ---------------------------------------------------------------------
//  Shared helpers

static const char *
s_value (PGresult *result, int row, int column)
{
    return PQgetisnull (result, row, column) ? NULL : PQgetvalue (result, row, column);
}

static int64_t
s_int64 (PGresult *result, int row, int column)
{
    const char *text = s_value (result, row, column);
    return text ? strtoll (text, NULL, 10) : 0;
}

static double
s_double (PGresult *result, int row, int column)
{
    const char *text = s_value (result, row, column);
    return text ? strtod (text, NULL) : 0;
}

//  The model names of a JSON list into one block: the pointers first,
//  then the strings. -1 unless it is a list of strings.
static int
s_models_block (const char *json, char **block_p, size_t *count_p)
{
    *block_p = NULL;
    *count_p = 0;
    size_t size = strlen (json);
    zg_json_span_t list, element;
    if (!zg_json_valid (json, size, NULL))
        return -1;
    list.type = ZG_JSON_ARRAY;
    list.offset = 0;
    while (list.offset < size && isspace ((unsigned char) json [list.offset]))
        list.offset++;
    if (list.offset >= size || json [list.offset] != '[')
        return -1;
    list.length = size - list.offset;
    while (list.length && isspace ((unsigned char) json [list.offset + list.length - 1]))
        list.length--;
    size_t count = 0, cursor = 0;
    while (zg_json_element (json, size, &list, &cursor, &element)) {
        if (element.type != ZG_JSON_STRING)
            return -1;
        count++;
    }
    if (count == 0)
        return 0;
    //  Unescaped strings are never longer than their JSON text
    char *block = (char *) malloc (count * sizeof (char *) + size + count);
    if (!block)
        return -1;
    char **names = (char **) block;
    char *text = block + count * sizeof (char *);
    cursor = 0;
    size_t index = 0, room = size + count;
    while (zg_json_element (json, size, &list, &cursor, &element)) {
        int length = zg_json_string (json, &element, text, room);
        if (length < 0) {
            free (block);
            return -1;
        }
        names [index++] = text;
        text += length + 1;
        room -= (size_t) length + 1;
    }
    *block_p = block;
    *count_p = count;
    return 0;
}

int
zg_admin_key_from_row (PGresult *result, int row, zg_key_record_t *record, char **models_p)
{
    assert (result);
    assert (record);
    assert (models_p);
    memset (record, 0, sizeof *record);
    *models_p = NULL;
    if (PQnfields (result) < 17 || row >= PQntuples (result))
        return -1;
    size_t count = 0;
    if (s_models_block (PQgetvalue (result, row, 3), models_p, &count))
        return -1;
    record->token = s_value (result, row, 0);
    record->key_name = s_value (result, row, 1);
    record->key_alias = s_value (result, row, 2);
    record->models = (const char *const *) *models_p;
    record->models_count = count;
    record->expires = s_int64 (result, row, 4);
    record->blocked = streq (PQgetvalue (result, row, 5), "t");
    record->max_budget = s_double (result, row, 6);
    record->spend = s_double (result, row, 7);
    record->soft_budget = s_double (result, row, 8);
    record->budget_duration = s_value (result, row, 9);
    record->budget_reset_at = s_int64 (result, row, 10);
    record->rpm_limit = s_int64 (result, row, 11);
    record->tpm_limit = s_int64 (result, row, 12);
    record->max_parallel_requests = s_int64 (result, row, 13);
    record->user_id = s_value (result, row, 14);
    record->team_id = s_value (result, row, 15);
    record->metadata = s_value (result, row, 16);
    return 0;
}

int
zg_admin_key_hash (const char *given, char hash [ZG_KEYS_HASH_HEX + 1])
{
    if (!given || !*given)
        return -1;
    if (strncmp (given, "sk-", 3) == 0) {
        zg_keys_hash (given, hash);
        return 0;
    }
    if (strlen (given) > ZG_KEYS_HASH_HEX)
        return -1;
    strcpy (hash, given);
    return 0;
}

static int
s_hex_value (char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    c = (char) tolower ((unsigned char) c);
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    return -1;
}

int
zg_admin_query_param (const char *query, const char *name, char *out, size_t size)
{
    assert (name);
    assert (out && size);
    size_t name_length = strlen (name);
    const char *pair = query;
    while (pair && *pair) {
        const char *end = strchr (pair, '&');
        if (!end)
            end = pair + strlen (pair);
        if ((size_t) (end - pair) >= name_length && strncmp (pair, name, name_length) == 0
        &&  (pair [name_length] == '=' || pair + name_length == end)) {
            const char *value = pair + name_length + (pair [name_length] == '=' ? 1 : 0);
            size_t used = 0;
            while (value < end) {
                char c = *value++;
                if (c == '+')
                    c = ' ';
                else
                if (c == '%') {
                    int high = value < end ? s_hex_value (value [0]) : -1;
                    int low = value + 1 < end ? s_hex_value (value [1]) : -1;
                    if (high < 0 || low < 0 || (high == 0 && low == 0))
                        return -1;
                    c = (char) (high * 16 + low);
                    value += 2;
                }
                if (used + 1 >= size)
                    return -1;
                out [used++] = c;
            }
            out [used] = 0;
            return 1;
        }
        pair = *end ? end + 1 : end;
    }
    return 0;
}

//  ---------------------------------------------------------------------
//  Self test

void
zg_admin_test (bool verbose)
{
    printf (" * zg_admin: ");
    if (verbose)
        printf ("\n");

    zg_admin_job_t *job = zg_admin_job_new (ZG_ADMIN_KEY_INFO, 7, NULL, NULL, "{}", 2);
    ZG_CHECK (job && job->handle == 7 && streq (job->query, "") && streq (job->body, "{}"));
    ZG_CHECK (job->path_key == NULL && job->status == 0 && job->answer == NULL);
    zg_admin_error (job, 404, "not_found_error", "key", "Key not found: %s \"q\"\n", "sk-...abcd");
    ZG_CHECK (job->status == 404);
    ZG_CHECK (streq (job->answer, "{\"error\":{\"message\":\"Key not found: sk-...abcd \\\"q\\\"\\n\","
                                  "\"type\":\"not_found_error\",\"param\":\"key\",\"code\":\"404\"}}"));
    ZG_CHECK (job->answer_size == strlen (job->answer));
    zg_admin_error (job, 400, "bad_request_error", NULL, "x");
    ZG_CHECK (streq (job->answer, "{\"error\":{\"message\":\"x\",\"type\":\"bad_request_error\","
                                  "\"param\":null,\"code\":\"400\"}}"));
    zg_admin_answer (job, 200, "{\"ok\":true}");
    ZG_CHECK (job->status == 200 && streq (job->answer, "{\"ok\":true}"));
    ZG_CHECK (zg_json_valid (job->answer, job->answer_size, NULL));
    zg_admin_job_destroy (&job);
    ZG_CHECK (job == NULL);
    zg_admin_job_destroy (&job);

    job = zg_admin_job_new (ZG_ADMIN_KEY_REGENERATE, 1, "sk-abc", "a=b", NULL, 0);
    ZG_CHECK (job && streq (job->path_key, "sk-abc") && streq (job->body, "") && job->body_size == 0);
    //  No connection: 503 before any handler runs
    zg_admin_ctx_t ctx = { NULL, NULL, NULL, 0, NULL, NULL };
    zg_admin_run (&ctx, job);
    ZG_CHECK (job->status == 503 && strstr (job->answer, "\"type\":\"no_db_connection\""));
    zg_admin_job_destroy (&job);

    //  Every op has a name
    for (int op = ZG_ADMIN_KEY_GENERATE; op < ZG_ADMIN_OP_COUNT; op++)
        ZG_CHECK (zg_admin_op_name ((zg_admin_op_t) op) [0] == '/');
    ZG_CHECK (streq (zg_admin_op_name (ZG_ADMIN_NONE), "unknown"));

    //  Keys and hashes
    char hash [ZG_KEYS_HASH_HEX + 1], expected [ZG_KEYS_HASH_HEX + 1];
    zg_keys_hash ("sk-1234", expected);
    ZG_CHECK (zg_admin_key_hash ("sk-1234", hash) == 0 && streq (hash, expected));
    ZG_CHECK (zg_admin_key_hash (expected, hash) == 0 && streq (hash, expected));
    ZG_CHECK (zg_admin_key_hash ("", hash) == -1 && zg_admin_key_hash (NULL, hash) == -1);
    char longer [80];
    memset (longer, 'a', 70);
    longer [70] = 0;
    ZG_CHECK (zg_admin_key_hash (longer, hash) == -1);

    //  Query strings
    char value [16];
    ZG_CHECK (zg_admin_query_param ("key=sk-a%2Bb+c&page=2", "key", value, sizeof value) == 1);
    ZG_CHECK (streq (value, "sk-a+b c"));
    ZG_CHECK (zg_admin_query_param ("key=sk-a&page=2", "page", value, sizeof value) == 1);
    ZG_CHECK (streq (value, "2"));
    ZG_CHECK (zg_admin_query_param ("keys=1&page=", "key", value, sizeof value) == 0);
    ZG_CHECK (zg_admin_query_param ("page=", "page", value, sizeof value) == 1 && streq (value, ""));
    ZG_CHECK (zg_admin_query_param ("", "page", value, sizeof value) == 0);
    ZG_CHECK (zg_admin_query_param (NULL, "page", value, sizeof value) == 0);
    ZG_CHECK (zg_admin_query_param ("a=%zz", "a", value, sizeof value) == -1);
    ZG_CHECK (zg_admin_query_param ("a=%2", "a", value, sizeof value) == -1);
    ZG_CHECK (zg_admin_query_param ("a=%00", "a", value, sizeof value) == -1);
    ZG_CHECK (zg_admin_query_param ("a=0123456789abcdef", "a", value, sizeof value) == -1);

    //  Models lists as the database gives them
    char *block;
    size_t count;
    ZG_CHECK (s_models_block ("[]", &block, &count) == 0 && block == NULL && count == 0);
    ZG_CHECK (s_models_block ("[\"gpt-4o\",\"a\\\"b\"]", &block, &count) == 0 && count == 2);
    ZG_CHECK (streq (((char **) block) [0], "gpt-4o") && streq (((char **) block) [1], "a\"b"));
    free (block);
    ZG_CHECK (s_models_block ("[1]", &block, &count) == -1);
    ZG_CHECK (s_models_block ("{}", &block, &count) == -1);
    ZG_CHECK (s_models_block ("[", &block, &count) == -1);
    if (verbose)
        printf ("   ");
    printf ("OK\n");
}
