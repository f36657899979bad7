/*  =========================================================================
    zg_reply - the bodies and header values the frontend writes itself
    =========================================================================
*/
#include "frontend/zg_reply.h"
#include "common/zg_selftest.h"

#include <assert.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/zg_json.h"

#ifndef ZG_VERSION
#   define ZG_VERSION "0.0.0"
#endif

//  The reference's DEFAULT_MODEL_CREATED_AT_TIME
#define ZG_MODEL_CREATED_AT 1677610602

//  A growing text buffer for the documents built once at start
typedef struct {
    char  *data;
    size_t length;
    size_t cap;
} s_text_t;

static void
s_text_reserve (s_text_t *self, size_t more)
{
    if (self->length + more + 1 <= self->cap)
        return;
    size_t cap = self->cap ? self->cap : 256;
    while (cap < self->length + more + 1)
        cap *= 2;
    self->data = (char *) realloc (self->data, cap);
    assert (self->data);
    self->cap = cap;
}

static void
s_text_add (s_text_t *self, const char *format, ...)
{
    va_list args;
    va_start (args, format);
    va_list copy;
    va_copy (copy, args);
    int needed = vsnprintf (NULL, 0, format, copy);
    va_end (copy);
    assert (needed >= 0);
    s_text_reserve (self, (size_t) needed);
    vsnprintf (self->data + self->length, (size_t) needed + 1, format, args);
    self->length += (size_t) needed;
    va_end (args);
}

static void
s_text_quoted (s_text_t *self, const char *text)
{
    if (!text) {
        s_text_add (self, "null");
        return;
    }
    size_t room = strlen (text) * 6 + 3;
    s_text_reserve (self, room);
    int written = zg_json_quote (text, self->data + self->length, room + 1);
    assert (written >= 0);
    self->length += (size_t) written;
}

//  A number, or null when the configuration left it unset
static void
s_text_number (s_text_t *self, double value, bool set)
{
    if (set)
        s_text_add (self, "%.12g", value);
    else
        s_text_add (self, "null");
}

int
zg_reply_error_json (char *buf, size_t size, int status, const char *type,
                     const char *message, const char *param)
{
    assert (buf);
    size_t used = 0;
    int written = snprintf (buf, size, "{\"error\":{\"message\":");
    if (written < 0 || (size_t) written >= size)
        return -1;
    used += (size_t) written;

    written = zg_json_quote (message ? message : "", buf + used, size - used);
    if (written < 0)
        return -1;
    used += (size_t) written;

    written = snprintf (buf + used, size - used, ",\"type\":");
    if (written < 0 || (size_t) written >= size - used)
        return -1;
    used += (size_t) written;
    written = zg_json_quote (type && *type ? type : "internal_server_error",
                             buf + used, size - used);
    if (written < 0)
        return -1;
    used += (size_t) written;

    written = snprintf (buf + used, size - used, ",\"param\":");
    if (written < 0 || (size_t) written >= size - used)
        return -1;
    used += (size_t) written;
    if (param && *param)
        written = zg_json_quote (param, buf + used, size - used);
    else
        written = snprintf (buf + used, size - used, "null");
    if (written < 0 || (size_t) written >= size - used)
        return -1;
    used += (size_t) written;

    written = snprintf (buf + used, size - used, ",\"code\":\"%d\"}}", status);
    if (written < 0 || (size_t) written >= size - used)
        return -1;
    return (int) (used + (size_t) written);
}

int
zg_reply_stream_error (char *buf, size_t size, int status, const char *type,
                       const char *message, const char *param)
{
    static const char prefix [] = "data: ";
    static const char suffix [] = "\n\ndata: [DONE]\n\n";
    if (size < sizeof (prefix) + sizeof (suffix))
        return -1;
    memcpy (buf, prefix, sizeof (prefix) - 1);
    size_t used = sizeof (prefix) - 1;
    int written = zg_reply_error_json (buf + used, size - used - (sizeof (suffix) - 1),
                                       status, type, message, param);
    if (written < 0)
        return -1;
    used += (size_t) written;
    memcpy (buf + used, suffix, sizeof (suffix));
    return (int) (used + sizeof (suffix) - 1);
}

//  Has this model name already been listed? Groups are few; a scan of the
//  ones before is cheaper than a set
static bool
s_seen_before (const zg_deployment_t *deployments, size_t index)
{
    for (size_t before = 0; before < index; before++)
        if (deployments [before].model_name
        &&  strcmp (deployments [before].model_name, deployments [index].model_name) == 0)
            return true;
    return false;
}

static bool
s_allowed (const char *name, const char *const *allowed, size_t allowed_count)
{
    if (!allowed)
        return true;
    for (size_t index = 0; index < allowed_count; index++)
        if (allowed [index] && strcmp (allowed [index], name) == 0)
            return true;
    return false;
}

char *
zg_reply_models_json (const zg_deployment_t *deployments, size_t count,
                      const char *const *allowed, size_t allowed_count)
{
    assert (deployments || count == 0);
    s_text_t text = { NULL, 0, 0 };
    s_text_add (&text, "{\"data\":[");
    bool first = true;
    for (size_t index = 0; index < count; index++) {
        const zg_deployment_t *deployment = &deployments [index];
        if (!deployment->model_name || !*deployment->model_name
        ||  !s_allowed (deployment->model_name, allowed, allowed_count)
        ||  s_seen_before (deployments, index))
            continue;
        s_text_add (&text, "%s{\"id\":", first ? "" : ",");
        s_text_quoted (&text, deployment->model_name);
        s_text_add (&text, ",\"object\":\"model\",\"created\":%d,\"owned_by\":\"openai\"}",
                    ZG_MODEL_CREATED_AT);
        first = false;
    }
    s_text_add (&text, "],\"object\":\"list\"}");
    return text.data;
}

//  The reference takes mode from model_info.mode, else its model cost
//  map; without one, the upstream model's name is the best hint there is
const char *
zg_reply_mode (const zg_deployment_t *deployment)
{
    if (deployment->mode && *deployment->mode)
        return deployment->mode;
    const char *name = deployment->upstream_model ? deployment->upstream_model : "";
    return strstr (name, "embed") ? "embedding" : "chat";
}

char *
zg_reply_model_info_json (const zg_config_t *config)
{
    assert (config);
    s_text_t text = { NULL, 0, 0 };
    s_text_add (&text, "{\"data\":[");
    for (size_t index = 0; index < config->deployment_count; index++) {
        const zg_deployment_t *deployment = &config->deployments [index];
        s_text_add (&text, "%s{\"model_name\":", index ? "," : "");
        s_text_quoted (&text, deployment->model_name);

        //  litellm_params as configured, less the secret
        s_text_add (&text, ",\"litellm_params\":{\"model\":");
        char model [1024];
        snprintf (model, sizeof (model), "%s/%s",
                  deployment->provider ? deployment->provider : "openai",
                  deployment->upstream_model ? deployment->upstream_model : "");
        s_text_quoted (&text, model);
        if (deployment->api_base) {
            s_text_add (&text, ",\"api_base\":");
            s_text_quoted (&text, deployment->api_base);
        }
        if (deployment->timeout_s > 0)
            s_text_add (&text, ",\"timeout\":%.12g", deployment->timeout_s);
        if (deployment->stream_timeout_s > 0)
            s_text_add (&text, ",\"stream_timeout\":%.12g", deployment->stream_timeout_s);
        if (deployment->rpm > 0)
            s_text_add (&text, ",\"rpm\":%ld", deployment->rpm);
        if (deployment->tpm > 0)
            s_text_add (&text, ",\"tpm\":%ld", deployment->tpm);
        if (deployment->weight > 0)
            s_text_add (&text, ",\"weight\":%.12g", deployment->weight);
        if (deployment->max_retries >= 0)
            s_text_add (&text, ",\"max_retries\":%d", deployment->max_retries);
        s_text_add (&text, "}");

        s_text_add (&text, ",\"model_info\":{\"id\":");
        s_text_quoted (&text, deployment->id);
        s_text_add (&text, ",\"db_model\":false,\"input_cost_per_token\":");
        s_text_number (&text, deployment->input_cost_per_token,
                       deployment->input_cost_per_token >= 0);
        s_text_add (&text, ",\"output_cost_per_token\":");
        s_text_number (&text, deployment->output_cost_per_token,
                       deployment->output_cost_per_token >= 0);
        s_text_add (&text, ",\"litellm_provider\":");
        s_text_quoted (&text, deployment->provider ? deployment->provider : "openai");
        s_text_add (&text, ",\"mode\":\"%s\"}}", zg_reply_mode (deployment));
    }
    s_text_add (&text, "]}");
    return text.data;
}

char *
zg_reply_readiness_json (bool healthy, const char *db, const char *cache, const char *detail,
                         const char *log_level, bool detailed_debug)
{
    s_text_t text = { NULL, 0, 0 };
    s_text_add (&text, "{\"status\":\"%s\",\"db\":", healthy ? "healthy" : "unhealthy");
    s_text_quoted (&text, db ? db : "Not connected");
    s_text_add (&text, ",\"cache\":");
    if (cache)
        s_text_quoted (&text, cache);
    else
        s_text_add (&text, "null");
    s_text_add (&text, ",\"litellm_version\":\"%s\",\"success_callbacks\":[],\"log_level\":",
                ZG_VERSION);
    s_text_quoted (&text, log_level ? log_level : "INFO");
    s_text_add (&text, ",\"is_detailed_debug\":%s", detailed_debug ? "true" : "false");
    if (detail) {
        s_text_add (&text, ",\"detail\":");
        s_text_quoted (&text, detail);
    }
    s_text_add (&text, "}");
    return text.data;
}

char *
zg_reply_root_json (void)
{
    s_text_t text = { NULL, 0, 0 };
    s_text_add (&text, "{\"message\":\"zgate: OpenAI-compatible LLM gateway\","
                "\"version\":\"%s\",\"docs\":\"/v1/models\"}", ZG_VERSION);
    return text.data;
}

char *
zg_reply_health_json (const zg_deployment_t *deployments, size_t count,
                      const char *const *errors)
{
    assert (deployments || count == 0);
    s_text_t text = { NULL, 0, 0 };
    size_t counts [2] = { 0, 0 };
    for (int healthy = 1; healthy >= 0; healthy--) {
        s_text_add (&text, healthy ? "{\"healthy_endpoints\":[" : "],\"unhealthy_endpoints\":[");
        for (size_t index = 0; index < count; index++) {
            const zg_deployment_t *deployment = &deployments [index];
            if ((errors [index] == NULL) != (healthy == 1))
                continue;
            char api_base [2048];
            zg_reply_strip_query (deployment->api_base, api_base, sizeof (api_base));
            s_text_add (&text, "%s{\"model\":", counts [healthy]++ ? "," : "");
            //  A database row that cannot be read has neither
            const char *provider = deployment->provider ? deployment->provider : "";
            const char *upstream = deployment->upstream_model ? deployment->upstream_model : "";
            char model [600];
            snprintf (model, sizeof (model), "%s%s%s", provider,
                      *provider || *upstream ? "/" : "", upstream);
            s_text_quoted (&text, model);
            s_text_add (&text, ",\"api_base\":");
            s_text_quoted (&text, api_base);
            s_text_add (&text, ",\"model_name\":");
            s_text_quoted (&text, deployment->model_name ? deployment->model_name : "");
            s_text_add (&text, ",\"model_id\":");
            s_text_quoted (&text, deployment->id ? deployment->id : "");
            if (!healthy) {
                s_text_add (&text, ",\"error\":");
                s_text_quoted (&text, errors [index]);
            }
            s_text_add (&text, "}");
        }
    }
    s_text_add (&text, "],\"healthy_count\":%zu,\"unhealthy_count\":%zu}", counts [1], counts [0]);
    return text.data;
}

char *
zg_reply_strip_query (const char *url, char *out, size_t size)
{
    assert (out && size);
    size_t length = url ? strcspn (url, "?#") : 0;
    if (length >= size)
        length = size - 1;
    if (length)
        memcpy (out, url, length);
    out [length] = 0;
    return out;
}

const char *
zg_reply_next_header (const char *cursor, const char **name, size_t *name_length,
                      const char **value, size_t *value_length)
{
    while (cursor && *cursor) {
        const char *line_end = cursor + strcspn (cursor, "\r\n");
        const char *next = line_end;
        while (*next == '\r' || *next == '\n')
            next++;
        const char *colon = memchr (cursor, ':', (size_t) (line_end - cursor));
        if (colon && colon > cursor) {
            const char *name_end = colon;
            while (name_end > cursor && (name_end [-1] == ' ' || name_end [-1] == '\t'))
                name_end--;
            const char *value_start = colon + 1;
            while (value_start < line_end && (*value_start == ' ' || *value_start == '\t'))
                value_start++;
            const char *value_end = line_end;
            while (value_end > value_start && (value_end [-1] == ' ' || value_end [-1] == '\t'))
                value_end--;
            if (name_end > cursor) {
                *name = cursor;
                *name_length = (size_t) (name_end - cursor);
                *value = value_start;
                *value_length = (size_t) (value_end - value_start);
                return next;
            }
        }
        cursor = next;
    }
    return NULL;
}


void
zg_reply_test (bool verbose)
{
    if (verbose)
        printf (" * zg_reply: ");
    char buf [ZG_REPLY_ERROR_MAX];

    int length = zg_reply_error_json (buf, sizeof (buf), 401, "auth_error",
                                      "Authentication Error, No api key passed in.", NULL);
    const char *expected = "{\"error\":{\"message\":\"Authentication Error, No api key passed in.\","
                           "\"type\":\"auth_error\",\"param\":null,\"code\":\"401\"}}";
    ZG_CHECK (length == (int) strlen (expected));
    ZG_CHECK (strcmp (buf, expected) == 0);
    ZG_CHECK (zg_json_valid (buf, (size_t) length, NULL));

    length = zg_reply_error_json (buf, sizeof (buf), 400, "bad_request_error",
                                  "say \"hi\"\n", "model");
    ZG_CHECK (length > 0 && zg_json_valid (buf, (size_t) length, NULL));
    ZG_CHECK (strstr (buf, "\"param\":\"model\""));
    ZG_CHECK (strstr (buf, "\"code\":\"400\""));
    ZG_CHECK (zg_reply_error_json (buf, 20, 400, "t", "m", NULL) == -1);

    //  The longest message the wire allows, all escaped, still fits
    char message [4096];
    memset (message, 1, sizeof (message) - 1);
    message [sizeof (message) - 1] = 0;
    length = zg_reply_error_json (buf, sizeof (buf), 500, NULL, message, NULL);
    ZG_CHECK (length > 0 && zg_json_valid (buf, (size_t) length, NULL));
    ZG_CHECK (strstr (buf, "\"type\":\"internal_server_error\""));

    length = zg_reply_stream_error (buf, sizeof (buf), 429, "rate_limit_error", "slow down", NULL);
    ZG_CHECK (length > 0);
    ZG_CHECK (strncmp (buf, "data: {\"error\":{", 16) == 0);
    ZG_CHECK (strstr (buf, "\"code\":\"429\"}}\n\ndata: [DONE]\n\n"));
    ZG_CHECK ((size_t) length == strlen (buf));

    //  Documents from a configuration
    zg_deployment_t deployments [3];
    memset (deployments, 0, sizeof (deployments));
    char *names [] = { "gpt-4o", "text-embedding-3-small", "gpt-4o" };
    char *ids [] = { "id-a", "id-b", "id-c" };
    char *upstream [] = { "gpt-4o", "text-embedding-3-small", "gpt-4o-mini" };
    for (int index = 0; index < 3; index++) {
        deployments [index].model_name = names [index];
        deployments [index].id = ids [index];
        deployments [index].provider = "openai";
        deployments [index].upstream_model = upstream [index];
        deployments [index].api_base = "http://127.0.0.1:4010/v1";
        deployments [index].api_key = "sk-upstream-secret";
        deployments [index].max_retries = -1;
        deployments [index].input_cost_per_token = -1;
        deployments [index].output_cost_per_token = -1;
    }
    deployments [0].input_cost_per_token = 2.5e-06;
    deployments [0].output_cost_per_token = 1e-05;
    deployments [0].rpm = 60;
    zg_config_t config;
    memset (&config, 0, sizeof (config));
    config.deployments = deployments;
    config.deployment_count = 3;

    char *models = zg_reply_models_json (deployments, 3, NULL, 0);
    ZG_CHECK (zg_json_valid (models, strlen (models), NULL));
    ZG_CHECK (strcmp (models,
        "{\"data\":[{\"id\":\"gpt-4o\",\"object\":\"model\",\"created\":1677610602,\"owned_by\":\"openai\"},"
        "{\"id\":\"text-embedding-3-small\",\"object\":\"model\",\"created\":1677610602,\"owned_by\":\"openai\"}],"
        "\"object\":\"list\"}") == 0);
    free (models);

    char *info = zg_reply_model_info_json (&config);
    ZG_CHECK (zg_json_valid (info, strlen (info), NULL));
    ZG_CHECK (!strstr (info, "api_key"));
    ZG_CHECK (!strstr (info, "sk-upstream-secret"));
    ZG_CHECK (strstr (info, "\"model\":\"openai/gpt-4o-mini\""));
    ZG_CHECK (strstr (info, "\"input_cost_per_token\":2.5e-06"));
    ZG_CHECK (strstr (info, "\"output_cost_per_token\":null"));
    ZG_CHECK (strstr (info, "\"rpm\":60"));
    ZG_CHECK (strstr (info, "\"mode\":\"embedding\""));
    ZG_CHECK (strstr (info, "\"id\":\"id-c\""));
    free (info);

    models = zg_reply_models_json (deployments, 0, NULL, 0);
    ZG_CHECK (strcmp (models, "{\"data\":[],\"object\":\"list\"}") == 0);
    free (models);
    //  A key's models: only those, each once, in the deployments' order;
    //  an empty list allows none
    const char *allowed [] = { "text-embedding-3-small", "gpt-4o", "not-served" };
    models = zg_reply_models_json (deployments, 3, allowed, 3);
    ZG_CHECK (strcmp (models,
        "{\"data\":[{\"id\":\"gpt-4o\",\"object\":\"model\",\"created\":1677610602,\"owned_by\":\"openai\"},"
        "{\"id\":\"text-embedding-3-small\",\"object\":\"model\",\"created\":1677610602,\"owned_by\":\"openai\"}],"
        "\"object\":\"list\"}") == 0);
    free (models);
    models = zg_reply_models_json (deployments, 3, allowed, 1);
    ZG_CHECK (strcmp (models, "{\"data\":[{\"id\":\"text-embedding-3-small\",\"object\":\"model\","
                              "\"created\":1677610602,\"owned_by\":\"openai\"}],\"object\":\"list\"}") == 0);
    free (models);
    models = zg_reply_models_json (deployments, 3, allowed, 0);
    ZG_CHECK (strcmp (models, "{\"data\":[],\"object\":\"list\"}") == 0);
    free (models);

    char *ready = zg_reply_readiness_json (true, NULL, NULL, NULL, "INFO", false);
    ZG_CHECK (zg_json_valid (ready, strlen (ready), NULL));
    ZG_CHECK (strstr (ready, "\"status\":\"healthy\""));
    ZG_CHECK (strstr (ready, "\"litellm_version\":\"" ZG_VERSION "\""));
    ZG_CHECK (!strstr (ready, "\"detail\""));
    ZG_CHECK (strstr (ready, "\"db\":\"Not connected\""));
    ZG_CHECK (strstr (ready, "\"cache\":null"));
    free (ready);
    ready = zg_reply_readiness_json (false, "disconnected", "redis", "router not reachable", "DEBUG",
                                     true);
    ZG_CHECK (strstr (ready, "\"cache\":\"redis\""));
    ZG_CHECK (strstr (ready, "\"db\":\"disconnected\""));
    ZG_CHECK (zg_json_valid (ready, strlen (ready), NULL));
    ZG_CHECK (strstr (ready, "\"status\":\"unhealthy\""));
    ZG_CHECK (strstr (ready, "\"detail\":\"router not reachable\""));
    ZG_CHECK (strstr (ready, "\"is_detailed_debug\":true"));
    free (ready);
    const char *errors [] = { NULL, "Connection refused \"x\"", NULL };
    char *health = zg_reply_health_json (deployments, 3, errors);
    ZG_CHECK (zg_json_valid (health, strlen (health), NULL));
    ZG_CHECK (!strstr (health, "sk-upstream-secret"));
    ZG_CHECK (strstr (health, "\"healthy_count\":2,\"unhealthy_count\":1}"));
    ZG_CHECK (strstr (health, "\"unhealthy_endpoints\":[{\"model\":\"openai/text-embedding-3-small\""));
    ZG_CHECK (strstr (health, "\"error\":\"Connection refused \\\"x\\\"\"}]"));
    free (health);
    deployments [0].mode = "embedding";
    ZG_CHECK (strcmp (zg_reply_mode (&deployments [0]), "embedding") == 0);
    ZG_CHECK (strcmp (zg_reply_mode (&deployments [2]), "chat") == 0);
    deployments [0].mode = NULL;

    char *root = zg_reply_root_json ();
    ZG_CHECK (zg_json_valid (root, strlen (root), NULL));
    free (root);

    char url [64];
    ZG_CHECK (strcmp (zg_reply_strip_query ("https://x.azure.com/v1?api-version=1", url, sizeof (url)),
                    "https://x.azure.com/v1") == 0);
    ZG_CHECK (strcmp (zg_reply_strip_query ("http://a/b", url, sizeof (url)), "http://a/b") == 0);
    ZG_CHECK (strcmp (zg_reply_strip_query ("", url, sizeof (url)), "") == 0);
    ZG_CHECK (strcmp (zg_reply_strip_query (NULL, url, sizeof (url)), "") == 0);

    const char *lines = "x-request-id: abc\r\nbroken line\r\n: novalue\r\n"
                        "openai-processing-ms:  12 \r\nempty:\r\n";
    const char *name, *value;
    size_t name_length, value_length;
    const char *cursor = zg_reply_next_header (lines, &name, &name_length, &value, &value_length);
    ZG_CHECK (cursor && name_length == 12 && memcmp (name, "x-request-id", 12) == 0);
    ZG_CHECK (value_length == 3 && memcmp (value, "abc", 3) == 0);
    cursor = zg_reply_next_header (cursor, &name, &name_length, &value, &value_length);
    ZG_CHECK (cursor && memcmp (name, "openai-processing-ms", name_length) == 0);
    ZG_CHECK (value_length == 2 && memcmp (value, "12", 2) == 0);
    cursor = zg_reply_next_header (cursor, &name, &name_length, &value, &value_length);
    ZG_CHECK (cursor && name_length == 5 && value_length == 0);
    ZG_CHECK (zg_reply_next_header (cursor, &name, &name_length, &value, &value_length) == NULL);
    ZG_CHECK (zg_reply_next_header (NULL, &name, &name_length, &value, &value_length) == NULL);

    if (verbose)
        printf ("OK\n");
}
