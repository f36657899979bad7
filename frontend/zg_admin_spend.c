/*  =========================================================================
    zg_admin_spend - /spend/logs, /global/spend, /global/spend/reset

    /spend/logs reads LiteLLM_SpendLogs as the reference does: every row,
    or the rows of one key (api_key: a key or its hash), one request
    (request_id) or one user (user_id); with start_date and end_date
    (YYYY-MM-DD, both or neither) the rows whose startTime falls on those
    days, whole days, end date included, summarised per day unless
    summarize=false. At most ZG_ADMIN_SPEND_LOGS_MAX rows are returned,
    newest first: the table grows without bound, an answer may not.
    =========================================================================
*/
#include "frontend/zg_admin.h"
#include "frontend/zg_keystore.h"
#include "common/zg_log.h"

#include <assert.h>
#include <czmq.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#define ZG_ADMIN_SPEND_LOGS_MAX 10000
#define S_STRINGIFY(x) #x
#define S_NUMBER(x) S_STRINGIFY (x)

#define S_TS(column) column " AT TIME ZONE 'UTC' AS " column

//  Every column, timestamps as ISO 8601 in UTC
static const char *s_log_columns =
    "request_id, call_type, api_key, spend, total_tokens, prompt_tokens, completion_tokens, "
    S_TS ("\"startTime\"") ", " S_TS ("\"endTime\"") ", request_duration_ms, "
    S_TS ("\"completionStartTime\"") ", model, model_id, model_group, custom_llm_provider, "
    "api_base, \"user\", metadata, cache_hit, cache_key, request_tags, team_id, organization_id, "
    "end_user, requester_ip_address, messages, response, proxy_server_request, session_id, "
    "status, mcp_namespaced_tool_name, agent_id";

//  Rows matching the filters: $1 api_key hash, $2 request_id, $3 user,
//  $4 first day, $5 last day (each NULL = any)
#define S_FILTER \
    " WHERE ($1::text IS NULL OR api_key = $1) AND ($2::text IS NULL OR request_id = $2)" \
    " AND ($3::text IS NULL OR \"user\" = $3)" \
    " AND ($4::date IS NULL OR \"startTime\" >= $4::date)" \
    " AND ($5::date IS NULL OR \"startTime\" < $5::date + 1)"

//  A calendar date written YYYY-MM-DD, nothing else
static bool
s_valid_date (const char *text)
{
    int year, month, day;
    char tail;
    if (strlen (text) != 10 || text [4] != '-' || text [7] != '-'
    ||  sscanf (text, "%4d-%2d-%2d%c", &year, &month, &day, &tail) != 3)
        return false;
    for (int index = 0; index < 10; index++)
        if (index != 4 && index != 7 && (text [index] < '0' || text [index] > '9'))
            return false;
    struct tm date = { 0 };
    date.tm_year = year - 1900;
    date.tm_mon = month - 1;
    date.tm_mday = day;
    time_t seconds = timegm (&date);
    struct tm back;
    gmtime_r (&seconds, &back);
    return year >= 1 && back.tm_year == year - 1900 && back.tm_mon == month - 1
        && back.tm_mday == day;
}

static int
s_param (zg_admin_job_t *job, const char *name, char *out, size_t size, const char **value)
{
    int found = zg_admin_query_param (job->query, name, out, size);
    if (found < 0) {
        zg_admin_error (job, 400, "bad_request_error", name,
                        "Invalid '%s' query parameter (too long or badly encoded)", name);
        return -1;
    }
    *value = found && *out ? out : NULL;
    return 0;
}

static void
s_logs (zg_admin_ctx_t *ctx, zg_admin_job_t *job)
{
    char api_key [ZG_KEYS_KEY_MAX + 1], request_id [256], user [ZG_KEYS_ID_MAX + 1];
    char start [16], end [16], summarize [16];
    const char *api_key_value, *request_value, *user_value, *start_value, *end_value;
    const char *summarize_value;
    if (s_param (job, "api_key", api_key, sizeof api_key, &api_key_value)
    ||  s_param (job, "request_id", request_id, sizeof request_id, &request_value)
    ||  s_param (job, "user_id", user, sizeof user, &user_value)
    ||  s_param (job, "start_date", start, sizeof start, &start_value)
    ||  s_param (job, "end_date", end, sizeof end, &end_value)
    ||  s_param (job, "summarize", summarize, sizeof summarize, &summarize_value))
        return;
    char hash [ZG_KEYS_HASH_HEX + 1] = "";
    if (api_key_value && zg_admin_key_hash (api_key_value, hash)) {
        zg_admin_answer (job, 200, "[]");       //  no key has such a hash
        return;
    }
    if (start_value && !s_valid_date (start_value)) {
        zg_admin_error (job, 400, "bad_request_error", "start_date",
                        "Invalid 'start_date': expected a date as YYYY-MM-DD");
        return;
    }
    if (end_value && !s_valid_date (end_value)) {
        zg_admin_error (job, 400, "bad_request_error", "end_date",
                        "Invalid 'end_date': expected a date as YYYY-MM-DD");
        return;
    }
    if (!start_value != !end_value) {
        zg_admin_error (job, 400, "bad_request_error", start_value ? "end_date" : "start_date",
                        "'start_date' and 'end_date' must be given together");
        return;
    }
    if (start_value && strcmp (start_value, end_value) > 0) {
        zg_admin_error (job, 400, "bad_request_error", "end_date",
                        "'end_date' is before 'start_date'");
        return;
    }
    bool summarized = start_value != NULL;
    if (summarize_value) {
        if (strcasecmp (summarize_value, "false") == 0 || streq (summarize_value, "0")
        ||  strcasecmp (summarize_value, "no") == 0 || strcasecmp (summarize_value, "off") == 0)
            summarized = false;
        else
        if (!(strcasecmp (summarize_value, "true") == 0 || streq (summarize_value, "1")
        ||    strcasecmp (summarize_value, "yes") == 0 || strcasecmp (summarize_value, "on") == 0)) {
            zg_admin_error (job, 400, "bad_request_error", "summarize",
                            "Invalid 'summarize': expected true or false");
            return;
        }
    }
    const char *params [] = {
        api_key_value ? hash : NULL, request_value, user_value, start_value, end_value
    };
    char sql [4096];
    if (summarized)
        //  One object per day: total, per user, per model, and per key
        //  hash as a member of its own (the reference's legacy shape);
        //  days after the last one with spend, up to end_date, at zero
        snprintf (sql, sizeof sql,
            "WITH l AS (SELECT \"startTime\"::date AS d, coalesce (api_key, '') AS k,"
            "   coalesce (\"user\", '') AS u, coalesce (model, '') AS m, spend"
            "   FROM \"LiteLLM_SpendLogs\"" S_FILTER "),"
            " days AS (SELECT d, sum (spend) AS spend FROM l GROUP BY d),"
            " shown AS (SELECT d, jsonb_build_object ('startTime', d, 'spend', spend,"
            "   'users', (SELECT jsonb_object_agg (u, s) FROM"
            "     (SELECT u, sum (spend) AS s FROM l WHERE l.d = days.d GROUP BY u) x),"
            "   'models', (SELECT jsonb_object_agg (m, s) FROM"
            "     (SELECT m, sum (spend) AS s FROM l WHERE l.d = days.d GROUP BY m) x))"
            "   || (SELECT jsonb_object_agg (k, s) FROM"
            "     (SELECT k, sum (spend) AS s FROM l WHERE l.d = days.d GROUP BY k) x) AS o"
            "   FROM days"
            "   UNION ALL"
            "   SELECT g::date, jsonb_build_object ('startTime', g::date, 'spend', 0,"
            "     'users', '{}'::jsonb, 'models', '{}'::jsonb)"
            "   FROM generate_series ((SELECT max (d) FROM days) + 1, $5::date, '1 day') g)"
            " SELECT coalesce (jsonb_agg (o ORDER BY d), '[]')::text FROM shown");
    else
        snprintf (sql, sizeof sql,
            "SELECT coalesce (json_agg (x), '[]')::text FROM (SELECT %s FROM \"LiteLLM_SpendLogs\""
            S_FILTER " ORDER BY \"startTime\" DESC, request_id"
            " LIMIT " S_NUMBER (ZG_ADMIN_SPEND_LOGS_MAX) ") x", s_log_columns);
    char errbuf [512] = "";
    PGresult *result = zg_db_exec (ctx->db, sql, 5, params, errbuf, sizeof errbuf);
    if (!result) {
        zg_admin_db_error (ctx, job, errbuf);
        return;
    }
    zg_admin_answer (job, 200, PQgetvalue (result, 0, 0));
    PQclear (result);
}

static void
s_global_spend (zg_admin_ctx_t *ctx, zg_admin_job_t *job)
{
    //  The reference's "MonthlyGlobalSpend": the last 30 days of logs
    char errbuf [512] = "";
    PGresult *result = zg_db_exec (ctx->db,
        "SELECT json_build_object ('spend', coalesce (sum (spend), 0)::float8,"
        " 'max_budget', 0.0::float8)::text FROM \"LiteLLM_SpendLogs\""
        " WHERE \"startTime\" >= current_date - 30", 0, NULL, errbuf, sizeof errbuf);
    if (!result) {
        zg_admin_db_error (ctx, job, errbuf);
        return;
    }
    zg_admin_answer (job, 200, PQgetvalue (result, 0, 0));
    PQclear (result);
}

static void
s_emit_zero (zg_admin_ctx_t *ctx, zg_keys_owner_t owner, PGresult *result)
{
    for (int row = 0; ctx->emit && row < PQntuples (result); row++) {
        zg_admin_change_t change = { ZG_ADMIN_EMIT_SET_SPEND, NULL, owner,
                                     PQgetvalue (result, row, 0), 0, 0, 0 };
        ctx->emit (ctx->emit_arg, &change);
    }
}

//  Keys, users and teams at zero in one transaction. Other instances hear
//  "reset" on the spend channel and set their tables' spend outright,
//  which a reload could not do: a reload merges spend upward.
static void
s_global_spend_reset (zg_admin_ctx_t *ctx, zg_admin_job_t *job)
{
    static const char *statements [] = {
        "UPDATE \"LiteLLM_VerificationToken\" SET spend = 0 RETURNING token",
        "UPDATE \"LiteLLM_UserTable\" SET spend = 0 RETURNING user_id",
        "UPDATE \"LiteLLM_TeamTable\" SET spend = 0 RETURNING team_id"
    };
    zg_keys_owner_t owners [] = { ZG_KEYS_FOR_KEY, ZG_KEYS_FOR_USER, ZG_KEYS_FOR_TEAM };
    PGresult *results [3] = { NULL, NULL, NULL };
    char errbuf [512] = "";
    bool ok = zg_db_command (ctx->db, "BEGIN", 0, NULL, errbuf, sizeof errbuf) == 0;
    for (int index = 0; ok && index < 3; index++) {
        results [index] = zg_db_exec (ctx->db, statements [index], 0, NULL, errbuf, sizeof errbuf);
        ok = results [index] != NULL;
    }
    ok = ok && zg_db_command (ctx->db, "SELECT pg_notify ('" ZG_KEYSTORE_CHANNEL_SPEND "', 'reset')",
                              0, NULL, errbuf, sizeof errbuf) == 0
            && zg_db_command (ctx->db, "COMMIT", 0, NULL, errbuf, sizeof errbuf) == 0;
    if (ok) {
        for (int index = 0; index < 3; index++)
            s_emit_zero (ctx, owners [index], results [index]);
        zg_info ("admin: spend reset for %d keys, %d users and %d teams",
                 PQntuples (results [0]), PQntuples (results [1]), PQntuples (results [2]));
        zg_admin_answer (job, 200, "{\"message\":\"Spend for all API Keys and Teams reset "
                                   "successfully\",\"status\":\"success\"}");
    }
    else {
        zg_admin_db_error (ctx, job, errbuf);
        if (PQstatus (zg_db_handle (ctx->db)) == CONNECTION_OK)
            zg_db_command (ctx->db, "ROLLBACK", 0, NULL, errbuf, sizeof errbuf);
    }
    for (int index = 0; index < 3; index++)
        PQclear (results [index]);
}

void
zg_admin_spend_run (zg_admin_ctx_t *ctx, zg_admin_job_t *job)
{
    assert (ctx);
    assert (job);
    switch (job->op) {
        case ZG_ADMIN_SPEND_LOGS:         s_logs (ctx, job);               break;
        case ZG_ADMIN_GLOBAL_SPEND:       s_global_spend (ctx, job);       break;
        case ZG_ADMIN_GLOBAL_SPEND_RESET: s_global_spend_reset (ctx, job); break;
        default:
            zg_admin_error (job, 404, "not_found_error", NULL, "Unknown spend route");
    }
}
