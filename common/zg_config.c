/*  =========================================================================
    zg_config - the configuration model: LiteLLM's config.yaml, read once

    The file is loaded with libyaml's document API, so every value keeps its
    line for messages. Loading runs in this order, as LiteLLM does:

    1. environment_variables are exported (without overriding),
    2. every "os.environ/NAME" anywhere in the file is checked, so that a
       missing variable is reported even under a section zgate ignores,
    3. the sections are read and checked, key by key.

    The first error stops loading; warnings (for settings that are accepted
    but not implemented) are logged once per key.
    =========================================================================
*/

#include "common/zg_config.h"
#include "common/zg_selftest.h"
#include "common/zg_log.h"
#include "common/zg_sha256.h"

#include <assert.h>
#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <yaml.h>

#define s_ENV_PREFIX        "os.environ/"
#define s_DEFAULT_API_BASE  ZG_CONFIG_DEFAULT_API_BASE
#define s_MAX_NESTING       64
//  Aliases can make a small file describe a huge tree; walks stop here
#define s_MAX_VISITS        1000000

//  One way of naming a Redis server, as a section of the file gives it
typedef struct {
    char *host;
    int port;                       //  0 = not given
    char *username;
    char *password;
    int db;
    bool named;                     //  the section names one (a redis cache, a key)
    const yaml_node_t *node;        //  where, for messages
} s_redis_t;

typedef struct {
    const char *path;               //  for messages
    yaml_document_t document;
    char *errbuf;
    size_t errsize;
    bool failed;
    char **warned;                  //  keys already warned about
    size_t warned_count;
    size_t visits;
    bool request_timeout_set;       //  by the file, which wins over the environment
    bool batch_write_set;
    zg_config_t *config;
    //  Redis as each section names it, until s_resolve_redis picks one
    s_redis_t router_redis;         //  router_settings.redis_host/port/password
    s_redis_t url_redis;            //  router_settings.redis_url
    s_redis_t cache_redis;          //  litellm_settings.cache_params (type redis)
} s_loader_t;

//  One key/value of a mapping, after merge keys ("<<") are applied
typedef struct {
    yaml_node_t *key;
    yaml_node_t *value;
} s_pair_t;

typedef struct {
    s_pair_t *pairs;
    size_t count;
} s_pairs_t;

//  --------------------------------------------------------------------------
//  Messages

static int
s_line (const yaml_node_t *node)
{
    return node? (int) node->start_mark.line + 1: 0;
}

static int
s_fail (s_loader_t *self, const yaml_node_t *node, const char *key, const char *format, ...)
    __attribute__ ((format (printf, 4, 5)));

static int
s_fail (s_loader_t *self, const yaml_node_t *node, const char *key, const char *format, ...)
{
    if (self->failed)
        return -1;              //  the first error is the one to fix
    self->failed = true;
    if (!self->errbuf || self->errsize == 0)
        return -1;
    char reason [512];
    va_list args;
    va_start (args, format);
    vsnprintf (reason, sizeof (reason), format, args);
    va_end (args);
    if (node && key && *key)
        snprintf (self->errbuf, self->errsize, "%s:%d: %s: %s", self->path, s_line (node), key, reason);
    else
    if (node)
        snprintf (self->errbuf, self->errsize, "%s:%d: %s", self->path, s_line (node), reason);
    else
    if (key && *key)
        snprintf (self->errbuf, self->errsize, "%s: %s: %s", self->path, key, reason);
    else
        snprintf (self->errbuf, self->errsize, "%s: %s", self->path, reason);
    return -1;
}

//  Warn about key once per load, whatever list entry it appears in
static void
s_warn_once (s_loader_t *self, const char *once_key, const yaml_node_t *node, const char *format, ...)
    __attribute__ ((format (printf, 4, 5)));

static void
s_warn_once (s_loader_t *self, const char *once_key, const yaml_node_t *node, const char *format, ...)
{
    for (size_t index = 0; index < self->warned_count; index++)
        if (strcmp (self->warned [index], once_key) == 0)
            return;
    char **warned = realloc (self->warned, (self->warned_count + 1) * sizeof (char *));
    if (!warned)
        return;
    self->warned = warned;
    self->warned [self->warned_count] = strdup (once_key);
    if (!self->warned [self->warned_count])
        return;
    self->warned_count++;

    char reason [512];
    va_list args;
    va_start (args, format);
    vsnprintf (reason, sizeof (reason), format, args);
    va_end (args);
    zg_warning ("%s:%d: %s", self->path, s_line (node), reason);
}

//  --------------------------------------------------------------------------
//  Nodes

static yaml_node_t *
s_node (s_loader_t *self, int index)
{
    return yaml_document_get_node (&self->document, index);
}

static const char *
s_raw (const yaml_node_t *node)
{
    return node && node->type == YAML_SCALAR_NODE? (const char *) node->data.scalar.value: NULL;
}

static bool
s_is_null (const yaml_node_t *node)
{
    if (!node)
        return true;
    if (node->type != YAML_SCALAR_NODE || node->data.scalar.style != YAML_PLAIN_SCALAR_STYLE)
        return false;
    const char *text = s_raw (node);
    return !*text || strcmp (text, "~") == 0 || strcmp (text, "null") == 0
        || strcmp (text, "Null") == 0 || strcmp (text, "NULL") == 0;
}

static const char *
s_kind (const yaml_node_t *node)
{
    if (!node || s_is_null (node))
        return "nothing";
    if (node->type == YAML_MAPPING_NODE)
        return "a mapping";
    if (node->type == YAML_SEQUENCE_NODE)
        return "a list";
    return "a value";
}

//  The text of a scalar, with "os.environ/NAME" read from the environment
//  (checked to exist before any section is read)
static const char *
s_text (const yaml_node_t *node)
{
    const char *text = s_raw (node);
    if (text && strncmp (text, s_ENV_PREFIX, strlen (s_ENV_PREFIX)) == 0) {
        const char *value = getenv (text + strlen (s_ENV_PREFIX));
        return value? value: "";
    }
    return text;
}

static void
s_pairs_destroy (s_pairs_t *pairs)
{
    free (pairs->pairs);
    pairs->pairs = NULL;
    pairs->count = 0;
}

static s_pair_t *
s_pairs_find (s_pairs_t *pairs, const char *key)
{
    for (size_t index = 0; index < pairs->count; index++)
        if (strcmp (s_raw (pairs->pairs [index].key), key) == 0)
            return &pairs->pairs [index];
    return NULL;
}

//  Adds the pairs of map; explicit keys replace earlier ones (the last of
//  duplicate keys wins, as in PyYAML); merged keys ("<<") only fill gaps.
static int
s_pairs_add (s_loader_t *self, s_pairs_t *pairs, yaml_node_t *map, const char *where,
             bool merged, int depth)
{
    if (depth > s_MAX_NESTING)
        return s_fail (self, map, where, "merge keys nested too deeply");
    yaml_node_pair_t *pair;
    //  Explicit keys first, so that merged ones can tell what is there
    for (int pass = 0; pass < 2; pass++)
    for (pair = map->data.mapping.pairs.start; pair < map->data.mapping.pairs.top; pair++) {
        yaml_node_t *key = s_node (self, pair->key);
        yaml_node_t *value = s_node (self, pair->value);
        if (!key || key->type != YAML_SCALAR_NODE)
            return s_fail (self, key? key: map, where, "expected a plain key, got %s", s_kind (key));
        bool is_merge = strcmp (s_raw (key), "<<") == 0
                     && key->data.scalar.style == YAML_PLAIN_SCALAR_STYLE;
        if (pass == 0 && !is_merge) {
            s_pair_t *existing = s_pairs_find (pairs, s_raw (key));
            if (existing) {
                if (!merged)
                    existing->value = value;
                continue;
            }
            s_pair_t *grown = realloc (pairs->pairs, (pairs->count + 1) * sizeof (s_pair_t));
            if (!grown)
                return s_fail (self, key, where, "out of memory");
            pairs->pairs = grown;
            pairs->pairs [pairs->count++] = (s_pair_t) { key, value };
        }
        else
        if (pass == 1 && is_merge) {
            if (value && value->type == YAML_MAPPING_NODE) {
                if (s_pairs_add (self, pairs, value, where, true, depth + 1))
                    return -1;
            }
            else
            if (value && value->type == YAML_SEQUENCE_NODE) {
                for (yaml_node_item_t *item = value->data.sequence.items.start;
                     item < value->data.sequence.items.top; item++) {
                    yaml_node_t *source = s_node (self, *item);
                    if (!source || source->type != YAML_MAPPING_NODE)
                        return s_fail (self, value, where, "a merge key (<<) takes mappings");
                    if (s_pairs_add (self, pairs, source, where, true, depth + 1))
                        return -1;
                }
            }
            else
                return s_fail (self, key, where, "a merge key (<<) takes mappings");
        }
    }
    return 0;
}

//  The pairs of a mapping value; nothing (null) is an empty mapping
static int
s_pairs_of (s_loader_t *self, yaml_node_t *map, const char *where, s_pairs_t *pairs)
{
    pairs->pairs = NULL;
    pairs->count = 0;
    if (s_is_null (map))
        return 0;
    if (map->type != YAML_MAPPING_NODE)
        return s_fail (self, map, where, "expected a mapping, got %s", s_kind (map));
    if (s_pairs_add (self, pairs, map, where, false, 0)) {
        s_pairs_destroy (pairs);
        return -1;
    }
    return 0;
}

static void
s_key_path (char *out, size_t size, const char *parent, const char *key)
{
    if (!key)
        key = "?";
    int length = parent && *parent? snprintf (out, size, "%s.%s", parent, key)
                                  : snprintf (out, size, "%s", key);
    //  A path cut short only shortens a message: mark that it was
    if (length >= (int) size && size > 4)
        memcpy (out + size - 4, "...", 4);
}

static bool
s_in_list (const char *word, const char *const *list)
{
    for (; *list; list++)
        if (strcmp (word, *list) == 0)
            return true;
    return false;
}

//  --------------------------------------------------------------------------
//  Values. Each reader leaves *out alone when the value is null, so that
//  defaults stay.

static void
s_quote_got (const char *text, char *out, size_t size)
{
    snprintf (out, size, "\"%.60s%s\"", text, strlen (text) > 60? "...": "");
}

static int
s_read_string (s_loader_t *self, yaml_node_t *node, const char *key, char **out)
{
    if (s_is_null (node))
        return 0;
    if (node->type != YAML_SCALAR_NODE)
        return s_fail (self, node, key, "expected a string, got %s", s_kind (node));
    char *copy = strdup (s_text (node));
    if (!copy)
        return s_fail (self, node, key, "out of memory");
    free (*out);
    *out = copy;
    return 0;
}

//  Numbers may be written quoted ("600") or come from the environment;
//  what counts is that the whole text is one finite number.
static bool
s_parse_number (const char *text, double *out)
{
    while (isspace ((unsigned char) *text))
        text++;
    if (!*text)
        return false;
    char *end;
    errno = 0;
    double value = strtod (text, &end);
    while (isspace ((unsigned char) *end))
        end++;
    if (*end || errno == ERANGE || !isfinite (value))
        return false;
    *out = value;
    return true;
}

static bool
s_parse_integer (const char *text, long *out)
{
    while (isspace ((unsigned char) *text))
        text++;
    char *end;
    errno = 0;
    long value = strtol (text, &end, 10);
    while (isspace ((unsigned char) *end))
        end++;
    if (end != text && !*end && errno == 0) {
        *out = value;
        return true;
    }
    //  10.0 is an integer too, as it is to LiteLLM's pydantic models
    double real;
    if (s_parse_number (text, &real) && real == floor (real) && fabs (real) < 9.0e15) {
        *out = (long) real;
        return true;
    }
    return false;
}

static int
s_read_number (s_loader_t *self, yaml_node_t *node, const char *key, double *out,
               double minimum, bool minimum_excluded)
{
    if (s_is_null (node))
        return 0;
    char got [80];
    double value;
    if (node->type != YAML_SCALAR_NODE)
        return s_fail (self, node, key, "expected a number, got %s", s_kind (node));
    s_quote_got (s_text (node), got, sizeof (got));
    if (!s_parse_number (s_text (node), &value))
        return s_fail (self, node, key, "expected a number, got %s", got);
    if (minimum_excluded && value <= minimum)
        return s_fail (self, node, key, "expected a number > %g, got %s", minimum, got);
    if (!minimum_excluded && value < minimum)
        return s_fail (self, node, key, "expected a number >= %g, got %s", minimum, got);
    *out = value;
    return 0;
}

static int
s_read_long (s_loader_t *self, yaml_node_t *node, const char *key, long *out, long minimum, long maximum)
{
    if (s_is_null (node))
        return 0;
    char got [80];
    long value;
    if (node->type != YAML_SCALAR_NODE)
        return s_fail (self, node, key, "expected an integer, got %s", s_kind (node));
    s_quote_got (s_text (node), got, sizeof (got));
    if (!s_parse_integer (s_text (node), &value))
        return s_fail (self, node, key, "expected an integer, got %s", got);
    if (value < minimum || value > maximum) {
        if (maximum == LONG_MAX)
            return s_fail (self, node, key, "expected an integer >= %ld, got %s", minimum, got);
        return s_fail (self, node, key, "expected an integer from %ld to %ld, got %s", minimum, maximum, got);
    }
    *out = value;
    return 0;
}

static int
s_read_int (s_loader_t *self, yaml_node_t *node, const char *key, int *out, long minimum, long maximum)
{
    long value = *out;
    if (s_read_long (self, node, key, &value, minimum, maximum))
        return -1;
    *out = (int) value;
    return 0;
}

//  The booleans of YAML 1.1, which is what PyYAML (and so LiteLLM) reads
static bool
s_parse_bool (const char *text, bool *out)
{
    static const char *const truths [] = { "true", "True", "TRUE", "yes", "Yes", "YES", "on", "On", "ON", NULL };
    static const char *const lies [] = { "false", "False", "FALSE", "no", "No", "NO", "off", "Off", "OFF", NULL };
    if (s_in_list (text, truths))
        *out = true;
    else
    if (s_in_list (text, lies))
        *out = false;
    else
        return false;
    return true;
}

static int
s_read_bool (s_loader_t *self, yaml_node_t *node, const char *key, bool *out)
{
    if (s_is_null (node))
        return 0;
    char got [80];
    if (node->type != YAML_SCALAR_NODE)
        return s_fail (self, node, key, "expected true or false, got %s", s_kind (node));
    s_quote_got (s_text (node), got, sizeof (got));
    if (!s_parse_bool (s_text (node), out))
        return s_fail (self, node, key, "expected true or false, got %s", got);
    return 0;
}

//  --------------------------------------------------------------------------
//  Environment

//  Every "os.environ/NAME" in the tree must name a set variable
static int
s_check_environment (s_loader_t *self, yaml_node_t *node, const char *where, int depth)
{
    if (!node)
        return 0;
    if (++self->visits > s_MAX_VISITS)
        return s_fail (self, node, where, "too many nodes (aliases expanding without end?)");
    if (depth > s_MAX_NESTING)
        return s_fail (self, node, where, "nested too deeply");
    char path [512];
    if (node->type == YAML_SCALAR_NODE) {
        const char *text = s_raw (node);
        if (strncmp (text, s_ENV_PREFIX, strlen (s_ENV_PREFIX)) == 0) {
            const char *name = text + strlen (s_ENV_PREFIX);
            if (!*name)
                return s_fail (self, node, where, "\"%s\" names no variable", text);
            if (!getenv (name))
                return s_fail (self, node, where, "environment variable %s is not set", name);
        }
    }
    else
    if (node->type == YAML_SEQUENCE_NODE) {
        int index = 0;
        for (yaml_node_item_t *item = node->data.sequence.items.start;
             item < node->data.sequence.items.top; item++, index++) {
            snprintf (path, sizeof (path), "%s[%d]", where, index);
            if (s_check_environment (self, s_node (self, *item), path, depth + 1))
                return -1;
        }
    }
    else
    if (node->type == YAML_MAPPING_NODE) {
        for (yaml_node_pair_t *pair = node->data.mapping.pairs.start;
             pair < node->data.mapping.pairs.top; pair++) {
            const char *key = s_raw (s_node (self, pair->key));
            s_key_path (path, sizeof (path), where, key? key: "?");
            if (s_check_environment (self, s_node (self, pair->value), path, depth + 1))
                return -1;
        }
    }
    return 0;
}

static int
s_load_environment_variables (s_loader_t *self, yaml_node_t *section)
{
    s_pairs_t pairs;
    if (s_pairs_of (self, section, "environment_variables", &pairs))
        return -1;
    int rc = 0;
    for (size_t index = 0; index < pairs.count && rc == 0; index++) {
        const char *name = s_raw (pairs.pairs [index].key);
        yaml_node_t *value = pairs.pairs [index].value;
        char key [256];
        s_key_path (key, sizeof (key), "environment_variables", name);
        if (s_is_null (value))
            continue;
        if (value->type != YAML_SCALAR_NODE)
            rc = s_fail (self, value, key, "expected a string or a number, got %s", s_kind (value));
        else
        if (!*name || strchr (name, '='))
            rc = s_fail (self, pairs.pairs [index].key, key, "not a valid variable name");
        else
        if ((rc = s_check_environment (self, value, key, 0)) == 0)
            setenv (name, s_text (value), 0);
    }
    s_pairs_destroy (&pairs);
    return rc;
}

//  A value from the environment, when the file has none
static int
s_env_number (s_loader_t *self, const char *name, double *out)
{
    const char *text = getenv (name);
    if (!text || !*text)
        return 0;
    double value;
    if (!s_parse_number (text, &value) || value <= 0) {
        char got [80];
        s_quote_got (text, got, sizeof (got));
        return s_fail (self, NULL, name, "environment variable: expected a number > 0, got %s", got);
    }
    *out = value;
    return 0;
}

static char *
s_env_string (const char *name)
{
    const char *text = getenv (name);
    return text && *text? strdup (text): NULL;
}

//  --------------------------------------------------------------------------
//  Deployment ids

typedef struct {
    char *data;
    size_t size;
    size_t allocated;
    bool failed;
} s_text_buffer_t;

static void
s_append (s_text_buffer_t *buffer, const char *data, size_t size)
{
    if (buffer->failed)
        return;
    if (buffer->size + size + 1 > buffer->allocated) {
        size_t allocated = (buffer->allocated + size + 1) * 2;
        char *grown = realloc (buffer->data, allocated);
        if (!grown) {
            buffer->failed = true;
            return;
        }
        buffer->data = grown;
        buffer->allocated = allocated;
    }
    memcpy (buffer->data + buffer->size, data, size);
    buffer->size += size;
    buffer->data [buffer->size] = 0;
}

//  Scalars are length-prefixed so that no value can imitate the framing
static void
s_append_scalar (s_text_buffer_t *buffer, const char *text)
{
    char length [32];
    snprintf (length, sizeof (length), "%zu:", strlen (text));
    s_append (buffer, length, strlen (length));
    s_append (buffer, text, strlen (text));
}

static int
s_compare_pairs (const void *left, const void *right)
{
    return strcmp (s_raw (((const s_pair_t *) left)->key), s_raw (((const s_pair_t *) right)->key));
}

//  A canonical form of a value: mappings with sorted keys, scalars as
//  written. "os.environ/NAME" stays unresolved, so that rotating a key does
//  not change the id and no secret goes into it.
static int
s_canonical (s_loader_t *self, yaml_node_t *node, const char *where, s_text_buffer_t *buffer, int depth)
{
    if (++self->visits > s_MAX_VISITS)
        return s_fail (self, node, where, "too many nodes (aliases expanding without end?)");
    if (depth > s_MAX_NESTING)
        return s_fail (self, node, where, "nested too deeply");
    if (!node || s_is_null (node))
        s_append (buffer, "~", 1);
    else
    if (node->type == YAML_SCALAR_NODE)
        s_append_scalar (buffer, s_raw (node));
    else
    if (node->type == YAML_SEQUENCE_NODE) {
        s_append (buffer, "[", 1);
        for (yaml_node_item_t *item = node->data.sequence.items.start;
             item < node->data.sequence.items.top; item++) {
            if (s_canonical (self, s_node (self, *item), where, buffer, depth + 1))
                return -1;
            s_append (buffer, ",", 1);
        }
        s_append (buffer, "]", 1);
    }
    else {
        s_pairs_t pairs;
        if (s_pairs_of (self, node, where, &pairs))
            return -1;
        qsort (pairs.pairs, pairs.count, sizeof (s_pair_t), s_compare_pairs);
        s_append (buffer, "{", 1);
        for (size_t index = 0; index < pairs.count; index++) {
            s_append_scalar (buffer, s_raw (pairs.pairs [index].key));
            s_append (buffer, "=", 1);
            if (s_canonical (self, pairs.pairs [index].value, where, buffer, depth + 1)) {
                s_pairs_destroy (&pairs);
                return -1;
            }
            s_append (buffer, ";", 1);
        }
        s_append (buffer, "}", 1);
        s_pairs_destroy (&pairs);
    }
    return 0;
}

static char *
s_deployment_id (s_loader_t *self, const char *model_name, yaml_node_t *params,
                 const char *where, int occurrence)
{
    s_text_buffer_t buffer = { NULL, 0, 0, false };
    s_append (&buffer, "model_name=", 11);
    s_append_scalar (&buffer, model_name);
    s_append (&buffer, "\nlitellm_params=", 16);
    if (s_canonical (self, params, where, &buffer, 0)) {
        free (buffer.data);
        return NULL;
    }
    //  Identical entries are still distinct deployments
    if (occurrence > 0) {
        char suffix [32];
        snprintf (suffix, sizeof (suffix), "\noccurrence=%d", occurrence);
        s_append (&buffer, suffix, strlen (suffix));
    }
    char *id = NULL;
    if (!buffer.failed) {
        id = malloc (2 * ZG_SHA256_SIZE + 1);
        if (id)
            zg_sha256_hex (buffer.data, buffer.size, id);
    }
    free (buffer.data);
    if (!id)
        s_fail (self, params, where, "out of memory");
    return id;
}

//  --------------------------------------------------------------------------
//  model_list

static const char *const s_supported_providers [] = {
    "openai", "text-completion-openai", "custom_openai", "openai_like", "hosted_vllm", NULL
};

//  litellm_params keys LiteLLM knows that change nothing in zgate yet, or
//  that are passed on by the worker as request defaults
static const char *const s_quiet_params [] = {
    "organization", "api_version", "drop_params", "max_tokens", "temperature", "top_p", "n",
    "stop", "seed", "presence_penalty", "frequency_penalty", "logit_bias", "user", "response_format",
    "tools", "tool_choice", "parallel_tool_calls", "max_completion_tokens", "reasoning_effort",
    "region_name", "aws_access_key_id", "aws_secret_access_key", "aws_session_token",
    "aws_region_name", "aws_profile_name", "aws_role_name", "aws_session_name", "aws_bedrock_runtime_endpoint",
    "vertex_project", "vertex_location", "vertex_credentials", "vertex_ai_project", "vertex_ai_location",
    "azure_ad_token", "azure_ad_token_provider", "tenant_id", "client_id", "client_secret", "azure_username",
    "azure_password", "api_type", "deployment_id", "base_model", "custom_llm_provider",
    "max_parallel_requests", "order", "tags", "headers", "extra_headers", "extra_body",
    "input_cost_per_second", "output_cost_per_second", "cache_creation_input_token_cost",
    "cache_read_input_token_cost", "litellm_credential_name", "use_in_pass_through",
    "use_litellm_proxy", "merge_reasoning_content_in_choices", "configurable_clientside_auth_params",
    "mock_response", "model_info", "litellm_trace_id", "auto_router_config", "budget_duration",
    "max_budget", "stream", "num_retries", "cooldown_time", "metadata", "watsonx_region_name",
    "additional_drop_params", "supports_system_message", "rpm_limit", "tpm_limit", NULL
};

static int
s_load_model_info (s_loader_t *self, yaml_node_t *node, const char *where, zg_deployment_t *deployment)
{
    s_pairs_t pairs;
    if (s_pairs_of (self, node, where, &pairs))
        return -1;
    int rc = 0;
    double input_cost = -1, output_cost = -1;
    for (size_t index = 0; index < pairs.count && rc == 0; index++) {
        const char *name = s_raw (pairs.pairs [index].key);
        yaml_node_t *value = pairs.pairs [index].value;
        char key [512];
        s_key_path (key, sizeof (key), where, name);
        if (strcmp (name, "id") == 0) {
            rc = s_read_string (self, value, key, &deployment->id);
            if (rc == 0 && deployment->id && !*deployment->id)
                rc = s_fail (self, value, key, "must not be empty");
        }
        else
        if (strcmp (name, "input_cost_per_token") == 0)
            rc = s_read_number (self, value, key, &input_cost, 0, false);
        else
        if (strcmp (name, "output_cost_per_token") == 0)
            rc = s_read_number (self, value, key, &output_cost, 0, false);
        else
        if (strcmp (name, "mode") == 0)
            rc = s_read_string (self, value, key, &deployment->mode);
        //  model_info is free-form metadata that /model/info returns
    }
    //  Prices in litellm_params (read before) win over these
    if (deployment->input_cost_per_token < 0)
        deployment->input_cost_per_token = input_cost;
    if (deployment->output_cost_per_token < 0)
        deployment->output_cost_per_token = output_cost;
    s_pairs_destroy (&pairs);
    return rc;
}

static int
s_load_litellm_params (s_loader_t *self, yaml_node_t *node, const char *where, zg_deployment_t *deployment)
{
    s_pairs_t pairs;
    if (s_pairs_of (self, node, where, &pairs))
        return -1;
    int rc = 0;
    yaml_node_t *model = NULL;
    char *custom_provider = NULL;
    double input_cost = -1, output_cost = -1;
    for (size_t index = 0; index < pairs.count && rc == 0; index++) {
        const char *name = s_raw (pairs.pairs [index].key);
        yaml_node_t *value = pairs.pairs [index].value;
        char key [512];
        s_key_path (key, sizeof (key), where, name);
        if (strcmp (name, "model") == 0)
            model = value;
        else
        if (strcmp (name, "custom_llm_provider") == 0)
            rc = s_read_string (self, value, key, &custom_provider);
        else
        if (strcmp (name, "api_key") == 0)
            rc = s_read_string (self, value, key, &deployment->api_key);
        else
        if (strcmp (name, "api_base") == 0)
            rc = s_read_string (self, value, key, &deployment->api_base);
        else
        if (strcmp (name, "timeout") == 0)
            rc = s_read_number (self, value, key, &deployment->timeout_s, 0, true);
        else
        if (strcmp (name, "stream_timeout") == 0)
            rc = s_read_number (self, value, key, &deployment->stream_timeout_s, 0, true);
        else
        if (strcmp (name, "rpm") == 0)
            rc = s_read_long (self, value, key, &deployment->rpm, 0, LONG_MAX);
        else
        if (strcmp (name, "tpm") == 0)
            rc = s_read_long (self, value, key, &deployment->tpm, 0, LONG_MAX);
        else
        if (strcmp (name, "weight") == 0)
            rc = s_read_number (self, value, key, &deployment->weight, 0, false);
        else
        if (strcmp (name, "max_retries") == 0)
            rc = s_read_int (self, value, key, &deployment->max_retries, 0, 1000);
        else
        if (strcmp (name, "input_cost_per_token") == 0)
            rc = s_read_number (self, value, key, &input_cost, 0, false);
        else
        if (strcmp (name, "output_cost_per_token") == 0)
            rc = s_read_number (self, value, key, &output_cost, 0, false);
        else
        if (!s_in_list (name, s_quiet_params)) {
            char once [256];
            snprintf (once, sizeof (once), "litellm_params.%s", name);
            s_warn_once (self, once, pairs.pairs [index].key,
                         "%s: not a litellm_params key zgate knows; ignored", key);
        }
    }
    //  Prices in litellm_params are what LiteLLM registers for the call,
    //  so they win over model_info's
    if (input_cost >= 0)
        deployment->input_cost_per_token = input_cost;
    if (output_cost >= 0)
        deployment->output_cost_per_token = output_cost;

    char key [512];
    s_key_path (key, sizeof (key), where, "model");
    if (rc == 0 && (s_is_null (model) || (model->type == YAML_SCALAR_NODE && !*s_text (model))))
        rc = s_fail (self, model? model: node, key, "required, but missing");
    if (rc == 0 && model->type != YAML_SCALAR_NODE)
        rc = s_fail (self, model, key, "expected a string, got %s", s_kind (model));
    if (rc == 0) {
        const char *text = s_text (model);
        const char *slash = strchr (text, '/');
        if (custom_provider && *custom_provider) {
            deployment->provider = strdup (custom_provider);
            deployment->upstream_model = strdup (text);
        }
        else
        if (slash) {
            deployment->provider = strndup (text, slash - text);
            deployment->upstream_model = strdup (slash + 1);
        }
        else {
            //  A bare name is an OpenAI model, as in LiteLLM for gpt-*
            deployment->provider = strdup ("openai");
            deployment->upstream_model = strdup (text);
        }
        if (!deployment->provider || !deployment->upstream_model)
            rc = s_fail (self, model, key, "out of memory");
        else
        if (!s_in_list (deployment->provider, s_supported_providers))
            rc = s_fail (self, model, key, "provider '%s' is not supported by zgate yet", deployment->provider);
        else
        if (!*deployment->upstream_model || !*deployment->provider)
            rc = s_fail (self, model, key, "expected \"<provider>/<model>\", got \"%s\"", text);
    }
    if (rc == 0 && !deployment->api_base && !(deployment->api_base = strdup (s_DEFAULT_API_BASE)))
        rc = s_fail (self, node, where, "out of memory");
    free (custom_provider);
    s_pairs_destroy (&pairs);
    return rc;
}

static void
s_deployment_clear (zg_deployment_t *deployment)
{
    free (deployment->model_name);
    free (deployment->id);
    free (deployment->provider);
    free (deployment->upstream_model);
    free (deployment->api_base);
    free (deployment->api_key);
    free (deployment->mode);
}

static int
s_load_deployment (s_loader_t *self, yaml_node_t *node, int position, zg_deployment_t *deployment)
{
    char where [64];
    snprintf (where, sizeof (where), "model_list[%d]", position);
    *deployment = (zg_deployment_t) {
        .max_retries = -1,
        .input_cost_per_token = -1,
        .output_cost_per_token = -1,
        .line = s_line (node),
    };
    if (!node || node->type != YAML_MAPPING_NODE)
        return s_fail (self, node, where, "expected a mapping with model_name and litellm_params, got %s",
                       s_kind (node));
    s_pairs_t pairs;
    if (s_pairs_of (self, node, where, &pairs))
        return -1;
    int rc = 0;
    yaml_node_t *model_name = NULL, *params = NULL, *info = NULL;
    for (size_t index = 0; index < pairs.count; index++) {
        const char *name = s_raw (pairs.pairs [index].key);
        if (strcmp (name, "model_name") == 0)
            model_name = pairs.pairs [index].value;
        else
        if (strcmp (name, "litellm_params") == 0)
            params = pairs.pairs [index].value;
        else
        if (strcmp (name, "model_info") == 0)
            info = pairs.pairs [index].value;
        else {
            char key [256], once [256];
            s_key_path (key, sizeof (key), where, name);
            snprintf (once, sizeof (once), "model_list[].%s", name);
            s_warn_once (self, once, pairs.pairs [index].key, "%s: not a model_list key zgate knows; ignored", key);
        }
    }
    char key [256];
    s_key_path (key, sizeof (key), where, "model_name");
    if (s_is_null (model_name) || (model_name->type == YAML_SCALAR_NODE && !*s_raw (model_name)))
        rc = s_fail (self, model_name? model_name: node, key, "required, but missing");
    else
        rc = s_read_string (self, model_name, key, &deployment->model_name);
    s_key_path (key, sizeof (key), where, "litellm_params");
    if (rc == 0 && s_is_null (params))
        rc = s_fail (self, params? params: node, key, "required, but missing");
    if (rc == 0)
        rc = s_load_litellm_params (self, params, key, deployment);
    s_key_path (key, sizeof (key), where, "model_info");
    if (rc == 0)
        rc = s_load_model_info (self, info, key, deployment);
    s_pairs_destroy (&pairs);
    return rc;
}

static int
s_load_model_list (s_loader_t *self, yaml_node_t *section)
{
    if (s_is_null (section))
        return 0;
    if (section->type != YAML_SEQUENCE_NODE)
        return s_fail (self, section, "model_list", "expected a list, got %s", s_kind (section));
    zg_config_t *config = self->config;
    size_t count = section->data.sequence.items.top - section->data.sequence.items.start;
    if (count == 0)
        return 0;
    config->deployments = calloc (count, sizeof (zg_deployment_t));
    if (!config->deployments)
        return s_fail (self, section, "model_list", "out of memory");
    for (size_t position = 0; position < count; position++) {
        yaml_node_t *node = s_node (self, section->data.sequence.items.start [position]);
        zg_deployment_t *deployment = &config->deployments [position];
        int rc = s_load_deployment (self, node, (int) position, deployment);
        config->deployment_count = position + 1;    //  so that destroy frees it
        if (rc)
            return -1;
        char where [64];
        snprintf (where, sizeof (where), "model_list[%zu].model_info.id", position);
        if (deployment->id) {
            for (size_t other = 0; other < position; other++)
                if (strcmp (config->deployments [other].id, deployment->id) == 0)
                    return s_fail (self, node, where, "id '%s' is already used by model_list[%zu]",
                                   deployment->id, other);
            continue;
        }
        //  The default id: stable across restarts and processes, since
        //  every actor loads the same file and must agree on it
        s_pairs_t pairs;
        if (s_pairs_of (self, node, where, &pairs))
            return -1;
        s_pair_t *params = s_pairs_find (&pairs, "litellm_params");
        for (int occurrence = 0; !deployment->id; occurrence++) {
            deployment->id = s_deployment_id (self, deployment->model_name, params->value, where, occurrence);
            if (!deployment->id)
                break;
            for (size_t other = 0; other < position; other++)
                if (strcmp (config->deployments [other].id, deployment->id) == 0) {
                    free (deployment->id);
                    deployment->id = NULL;
                    break;
                }
        }
        s_pairs_destroy (&pairs);
        if (!deployment->id)
            return -1;
    }
    return 0;
}

//  --------------------------------------------------------------------------
//  Settings sections

static const char *const s_general_known [] = {
    "database_connection_timeout", "database_connect_timeout", "database_socket_timeout",
    "database_disable_prepared_statements", "database_statement_timeout", "database_lock_timeout",
    "database_idle_in_transaction_session_timeout", "database_max_idle_connection_lifetime",
    "database_extra_connection_params", "proxy_budget_rescheduler_min_time",
    "proxy_budget_rescheduler_max_time", "disable_spend_logs", "store_prompts_in_spend_logs",
    "alerting", "alerting_threshold", "alert_types", "alert_to_webhook_url", "alerting_args",
    "spend_report_frequency", "alert_type_config", "background_health_checks",
    "health_check_interval", "health_check_details", "max_parallel_requests",
    "global_max_parallel_requests", "use_redis_transaction_buffer",
    "litellm_key_header_name", "enforce_user_param", "allowed_routes", "public_routes",
    "custom_auth", "enable_jwt_auth", "use_x_forwarded_for", "forward_client_headers_to_llm_api",
    "maximum_spend_logs_retention_period",
    "maximum_spend_logs_retention_interval", "disable_reset_budget", "disable_master_key_return",
    "infer_model_from_keys", "encryption_algorithm", "always_include_stream_usage",
    "pass_through_endpoints", "ui_access_mode", "allowed_ips", "admin_only_routes",
    "disable_retry_on_max_parallel_request_limit_error", "key_management_system",
    "key_management_settings", "use_google_kms", "use_azure_key_vault", "custom_key_generate",
    "proxy_batch_polling_interval", "disable_adding_master_key_hash_to_db", "otel",
    "disable_prisma_schema_update", "enable_oauth2_auth", "service_account_settings",
    "default_team_disabled", "embedding_model", "moderation_model", "user_header_name",
    "disable_responses_id_security", "enforced_params", "reject_clientside_metadata_tags",
    "mcp_client_side_auth_header_name", "proxy_admin_email", "max_request_size_mb_exceeded",
    "max_response_size_mb", "enable_public_model_hub", "callback_settings", "supported_db_objects",
    "allow_client_side_credentials", "cost_discount_config", NULL
};

static const char *const s_litellm_known [] = {
    "num_retries", "fallbacks", "context_window_fallbacks", "content_policy_fallbacks",
    "default_fallbacks", "cache", "cache_params", "enable_redis_auth_cache", "callbacks",
    "success_callback", "failure_callback", "service_callbacks", "turn_off_message_logging",
    "redact_user_api_key_info", "max_budget", "budget_duration", "force_ipv4", "drop_params",
    "cost_discount_config", "cost_margin_config", "network_mock", "require_auth_for_metrics_endpoint",
    "modify_params", "telemetry", "default_team_settings", "upperbound_key_generate_params",
    "default_key_generate_params", "default_internal_user_params", "max_internal_user_budget",
    "internal_user_budget_duration", "key_generation_settings", "disable_end_user_cost_tracking",
    "callback_settings", "redact_messages_in_exceptions", "log_raw_request_response",
    "max_end_user_budget", "allowed_fails", "retry_after", "cooldown_time", "default_max_internal_user_budget",
    "request_timeout", "ssl_verify", "ssl_certificate", "langfuse_default_tags", "model_group_alias_map",
    "enable_preview_features", "return_response_headers", "disable_add_transform_inline_image_block",
    "mcp_aliases", "prometheus_initialize_budget_metrics", "public_model_groups", "public_model_groups_links",
    NULL
};

static const char *const s_router_known [] = {
    "redis_host", "redis_port", "redis_password", "redis_url", "model_group_alias", "timeout",
    "stream_timeout", "retry_after", "retry_policy", "fallbacks", "context_window_fallbacks",
    "content_policy_fallbacks", "default_fallbacks", "max_fallbacks", "allowed_fails",
    "allowed_fails_policy", "cooldown_time", "disable_cooldowns", "routing_strategy_args",
    "enable_pre_call_checks", "optional_pre_call_checks", "default_max_parallel_requests",
    "cache_responses", "cache_kwargs", "client_ttl", "polling_interval", "provider_budget_config",
    "enable_tag_filtering", "tag_filtering_match_any", "model_group_retry_policy", "set_verbose",
    "debug_level", "default_litellm_params", "alerting_config", "assistants_config",
    "router_general_settings", "deployment_affinity_ttl_seconds", "ignore_invalid_deployments", NULL
};

static const char *const s_router_redis [] = {
    "redis_host", "redis_port", "redis_password", "redis_url", NULL
};

static const char *const s_routing_strategies [] = {
    "simple-shuffle", "least-busy", "usage-based-routing", "usage-based-routing-v2",
    "latency-based-routing", "cost-based-routing", NULL
};

static void
s_warn_unimplemented (s_loader_t *self, const char *section, const char *name, yaml_node_t *key,
                      const char *const *known)
{
    char path [256];
    s_key_path (path, sizeof (path), section, name);
    if (s_in_list (name, known))
        s_warn_once (self, path, key, "%s is not implemented by zgate yet; ignored", path);
    else
        s_warn_once (self, path, key, "%s is not a setting zgate knows; ignored", path);
}

//  --------------------------------------------------------------------------
//  Redis. zgate keeps the virtual keys' rpm/tpm counters there, shared by
//  the instances (synced every redis_sync_interval_ms, never on a request's
//  path), and watches it for readiness and /metrics. Key changes reach the
//  other instances through PostgreSQL LISTEN/NOTIFY; the reference's other
//  uses of it (cooldowns, usage-based routing, caching) are not zgate's.

#define s_REDIS_USE "used for the virtual keys' rpm/tpm limits, counted across the " \
                    "instances that share this Redis (synced every " \
                    "zgate_settings.redis_sync_interval_ms; each instance counts alone while " \
                    "Redis is unreachable), and watched for /health/readiness and /metrics; " \
                    "max_parallel_requests, deployment cooldowns and routing stay per instance"

static void
s_redis_clear (s_redis_t *redis)
{
    free (redis->host);
    free (redis->username);
    free (redis->password);
    memset (redis, 0, sizeof (*redis));
}

//  Decodes %XX in place; false on a broken escape
static bool
s_percent_decode (char *text)
{
    char *write = text;
    for (const char *read = text; *read; read++) {
        if (*read == '%') {
            if (!isxdigit ((unsigned char) read [1]) || !isxdigit ((unsigned char) read [2]))
                return false;
            char hex [3] = { read [1], read [2], 0 };
            *write++ = (char) strtol (hex, NULL, 16);
            read += 2;
        }
        else
            *write++ = *read;
    }
    *write = 0;
    return true;
}

//  redis://[[username]:password@]host[:port][/db], as redis-py reads it.
//  Messages never quote the value: it may hold the password.
static int
s_parse_redis_url (s_loader_t *self, const yaml_node_t *node, const char *key, const char *url,
                   s_redis_t *out)
{
    static const char usage [] = "expected redis://[[username]:password@]host[:port][/db]";
    if (strncasecmp (url, "rediss://", 9) == 0)
        return s_fail (self, node, key, "rediss:// (Redis over TLS) is not supported: "
                       "zgate's Redis client is built without TLS; use redis:// on a private network");
    if (strncasecmp (url, "unix://", 7) == 0)
        return s_fail (self, node, key, "unix:// sockets are not supported; %s", usage);
    if (strncasecmp (url, "redis://", 8) != 0)
        return s_fail (self, node, key, "%s", usage);
    char *copy = strdup (url + 8);
    if (!copy)
        return s_fail (self, node, key, "out of memory");
    s_redis_t redis = { .node = node, .named = true };
    const char *problem = NULL;
    //  The password may hold '@' or '/' unescaped: the host follows the last '@'
    char *host = copy;
    char *at = strrchr (copy, '@');
    if (at) {
        *at = 0;
        host = at + 1;
        char *colon = strchr (copy, ':');
        if (colon)
            *colon = 0;
        if (!s_percent_decode (copy) || (colon && !s_percent_decode (colon + 1)))
            problem = "a broken %-escape in the user information";
        else {
            if (*copy)
                redis.username = strdup (copy);
            if (colon && colon [1])
                redis.password = strdup (colon + 1);
        }
    }
    char *path = strchr (host, '/');
    if (path)
        *path++ = 0;
    if (!problem && strpbrk (host, "?#"))
        problem = "query parameters are not supported";
    if (!problem && path && strpbrk (path, "?#"))
        problem = "query parameters are not supported";
    char *port = NULL;
    if (!problem && *host == '[') {
        char *close = strchr (host, ']');
        if (!close || (close [1] && close [1] != ':'))
            problem = "a bracketed IPv6 address must end with ']'";
        else {
            *close = 0;
            host++;
            port = close [1] == ':' ? close + 2 : NULL;
        }
    }
    else
    if (!problem) {
        port = strrchr (host, ':');
        if (port)
            *port++ = 0;
    }
    long number = 0;
    if (!problem && !*host)
        problem = "no host";
    if (!problem && port) {
        if (!s_parse_integer (port, &number) || number < 1 || number > 65535)
            problem = "the port must be an integer from 1 to 65535";
        else
            redis.port = (int) number;
    }
    if (!problem && path && *path) {
        if (!s_parse_integer (path, &number) || number < 0 || number > INT_MAX)
            problem = "the database (/db) must be an integer >= 0";
        else
            redis.db = (int) number;
    }
    if (!problem && !(redis.host = strdup (host)))
        problem = "out of memory";
    free (copy);
    if (problem) {
        s_redis_clear (&redis);
        return s_fail (self, node, key, "%s; %s", problem, usage);
    }
    *out = redis;
    return 0;
}

//  A string setting; empty is the same as not set
static int
s_read_redis_string (s_loader_t *self, yaml_node_t *node, const char *key, char **out)
{
    if (s_read_string (self, node, key, out))
        return -1;
    if (*out && !**out) {
        free (*out);
        *out = NULL;
    }
    return 0;
}

//  litellm_settings.cache_params: only a cache of type redis names a server
static int
s_load_cache_params (s_loader_t *self, yaml_node_t *section, const char *where, yaml_node_t *key_node)
{
    s_pairs_t pairs;
    if (s_pairs_of (self, section, where, &pairs))
        return -1;
    s_redis_t *redis = &self->cache_redis;
    s_pair_t *type = s_pairs_find (&pairs, "type");
    char *kind = NULL;
    char key [256];
    s_key_path (key, sizeof (key), where, "type");
    int rc = type ? s_read_string (self, type->value, key, &kind) : 0;
    if (rc == 0 && kind && strcmp (kind, "redis") == 0) {
        redis->named = true;
        redis->node = key_node;
        for (size_t index = 0; index < pairs.count && rc == 0; index++) {
            const char *name = s_raw (pairs.pairs [index].key);
            yaml_node_t *value = pairs.pairs [index].value;
            s_key_path (key, sizeof (key), where, name);
            if (strcmp (name, "host") == 0)
                rc = s_read_redis_string (self, value, key, &redis->host);
            else
            if (strcmp (name, "port") == 0)
                rc = s_read_int (self, value, key, &redis->port, 1, 65535);
            else
            if (strcmp (name, "password") == 0)
                rc = s_read_redis_string (self, value, key, &redis->password);
            else
            if (strcmp (name, "username") == 0)
                rc = s_read_redis_string (self, value, key, &redis->username);
            else
            if (strcmp (name, "ssl") == 0) {
                bool ssl = false;
                rc = s_read_bool (self, value, key, &ssl);
                if (rc == 0 && ssl)
                    rc = s_fail (self, value, key, "Redis over TLS is not supported: zgate's "
                                 "Redis client is built without TLS");
            }
        }
        if (rc == 0)
            s_warn_once (self, where, key_node, "%s is %s; responses are not cached "
                         "(the response cache is not implemented by zgate yet)", where, s_REDIS_USE);
    }
    else
    if (rc == 0)
        s_warn_once (self, where, key_node, "%s is not implemented by zgate yet; ignored", where);
    free (kind);
    s_pairs_destroy (&pairs);
    return rc;
}

//  The server zgate watches: redis_url wins over redis_host (as LiteLLM's
//  client takes the url when it has one), router_settings over the cache's
static int
s_resolve_redis (s_loader_t *self)
{
    zg_config_t *config = self->config;
    s_redis_t *chosen = NULL;
    if (self->url_redis.host) {
        chosen = &self->url_redis;
        if (self->router_redis.host)
            s_warn_once (self, "router_settings.redis_host (url)", self->router_redis.node,
                         "router_settings.redis_host: redis_url is set and is used instead");
    }
    else
    if (self->router_redis.host)
        chosen = &self->router_redis;
    else
    if (self->router_redis.named)
        s_warn_once (self, "router_settings.redis_host (missing)", self->router_redis.node,
                     "router_settings: redis_port or redis_password without redis_host or "
                     "redis_url: no Redis is used");
    s_redis_t *cache = &self->cache_redis;
    if (!chosen && cache->named) {
        //  As LiteLLM's Redis cache, the environment fills what the file leaves out
        if (!cache->host && getenv ("REDIS_URL") && *getenv ("REDIS_URL")) {
            s_redis_t from_env;
            if (s_parse_redis_url (self, NULL, "REDIS_URL (environment variable)",
                                   getenv ("REDIS_URL"), &from_env))
                return -1;
            s_redis_clear (cache);
            *cache = from_env;
        }
        if (!cache->host)
            cache->host = s_env_string ("REDIS_HOST");
        if (!cache->password)
            cache->password = s_env_string ("REDIS_PASSWORD");
        const char *port = getenv ("REDIS_PORT");
        long number;
        if (!cache->port && port && *port) {
            if (!s_parse_integer (port, &number) || number < 1 || number > 65535)
                return s_fail (self, NULL, "REDIS_PORT", "environment variable: expected an "
                               "integer from 1 to 65535");
            cache->port = (int) number;
        }
        if (cache->host)
            chosen = cache;
        else
            s_warn_once (self, "litellm_settings.cache_params (no host)", cache->node,
                         "litellm_settings.cache_params: a redis cache with no host (nor "
                         "REDIS_HOST or REDIS_URL): no Redis is used");
    }
    if (!chosen)
        return 0;
    config->redis_host = chosen->host;
    config->redis_username = chosen->username;
    config->redis_password = chosen->password;
    config->redis_port = chosen->port ? chosen->port : 6379;
    config->redis_db = chosen->db;
    chosen->host = chosen->username = chosen->password = NULL;
    return 0;
}

static int
s_load_general_settings (s_loader_t *self, yaml_node_t *section)
{
    zg_config_t *config = self->config;
    s_pairs_t pairs;
    if (s_pairs_of (self, section, "general_settings", &pairs))
        return -1;
    int rc = 0;
    for (size_t index = 0; index < pairs.count && rc == 0; index++) {
        const char *name = s_raw (pairs.pairs [index].key);
        yaml_node_t *value = pairs.pairs [index].value;
        char key [256];
        s_key_path (key, sizeof (key), "general_settings", name);
        if (strcmp (name, "master_key") == 0) {
            rc = s_read_string (self, value, key, &config->master_key);
            if (rc == 0 && config->master_key && strncmp (config->master_key, "sk-", 3) != 0)
                rc = s_fail (self, value, key, "must start with 'sk-'");
        }
        else
        if (strcmp (name, "database_url") == 0)
            rc = s_read_string (self, value, key, &config->database_url);
        else
        if (strcmp (name, "max_request_size_mb") == 0)
            rc = s_read_number (self, value, key, &config->max_request_size_mb, 0, true);
        else
        if (strcmp (name, "database_connection_pool_limit") == 0)
            rc = s_read_int (self, value, key, &config->database_connection_pool_limit, 1, 100000);
        else
        if (strcmp (name, "proxy_batch_write_at") == 0) {
            rc = s_read_number (self, value, key, &config->proxy_batch_write_at, 0, true);
            self->batch_write_set = !s_is_null (value);
        }
        else
        if (strcmp (name, "disable_error_logs") == 0)
            rc = s_read_bool (self, value, key, &config->disable_error_logs);
        else
        if (strcmp (name, "allow_requests_on_db_unavailable") == 0)
            rc = s_read_bool (self, value, key, &config->allow_requests_on_db_unavailable);
        else
        if (strcmp (name, "user_api_key_cache_ttl") == 0)
            rc = s_read_number (self, value, key, &config->user_api_key_cache_ttl, 0, true);
        else
        if (strcmp (name, "store_model_in_db") == 0)
            rc = s_read_bool (self, value, key, &config->store_model_in_db);
        else
            s_warn_unimplemented (self, "general_settings", name, pairs.pairs [index].key, s_general_known);
    }
    s_pairs_destroy (&pairs);
    return rc;
}

static int
s_load_litellm_settings (s_loader_t *self, yaml_node_t *section)
{
    zg_config_t *config = self->config;
    s_pairs_t pairs;
    if (s_pairs_of (self, section, "litellm_settings", &pairs))
        return -1;
    int rc = 0;
    for (size_t index = 0; index < pairs.count && rc == 0; index++) {
        const char *name = s_raw (pairs.pairs [index].key);
        yaml_node_t *value = pairs.pairs [index].value;
        char key [256];
        s_key_path (key, sizeof (key), "litellm_settings", name);
        if (strcmp (name, "request_timeout") == 0) {
            rc = s_read_number (self, value, key, &config->request_timeout_s, 0, true);
            self->request_timeout_set = !s_is_null (value);
        }
        else
        if (strcmp (name, "set_verbose") == 0)
            rc = s_read_bool (self, value, key, &config->set_verbose);
        else
        if (strcmp (name, "json_logs") == 0)
            rc = s_read_bool (self, value, key, &config->json_logs);
        else
        if (strcmp (name, "require_auth_for_metrics_endpoint") == 0)
            rc = s_read_bool (self, value, key, &config->require_auth_for_metrics_endpoint);
        else
        if (strcmp (name, "cache_params") == 0)
            rc = s_load_cache_params (self, value, key, pairs.pairs [index].key);
        else
            s_warn_unimplemented (self, "litellm_settings", name, pairs.pairs [index].key, s_litellm_known);
    }
    s_pairs_destroy (&pairs);
    return rc;
}

static int
s_load_router_settings (s_loader_t *self, yaml_node_t *section)
{
    zg_config_t *config = self->config;
    s_pairs_t pairs;
    if (s_pairs_of (self, section, "router_settings", &pairs))
        return -1;
    int rc = 0;
    for (size_t index = 0; index < pairs.count && rc == 0; index++) {
        const char *name = s_raw (pairs.pairs [index].key);
        yaml_node_t *value = pairs.pairs [index].value;
        char key [256];
        s_key_path (key, sizeof (key), "router_settings", name);
        if (strcmp (name, "routing_strategy") == 0) {
            char *strategy = NULL;
            rc = s_read_string (self, value, key, &strategy);
            if (rc == 0 && strategy && !s_in_list (strategy, s_routing_strategies)) {
                char got [80];
                s_quote_got (strategy, got, sizeof (got));
                rc = s_fail (self, value, key, "expected one of simple-shuffle, least-busy, "
                             "usage-based-routing, usage-based-routing-v2, latency-based-routing, "
                             "cost-based-routing, got %s", got);
            }
            if (rc == 0 && strategy) {
                if (strcmp (strategy, "simple-shuffle") != 0)
                    s_warn_once (self, key, value, "%s: %s is not implemented, using simple-shuffle",
                                 key, strategy);
                //  The name as written: the router decides what it can run
                free (config->routing_strategy);
                config->routing_strategy = strategy;
                strategy = NULL;
            }
            free (strategy);
        }
        else
        if (strcmp (name, "num_retries") == 0)
            rc = s_read_int (self, value, key, &config->num_retries, 0, 1000);
        else
        if (strncmp (name, "redis_", 6) == 0 && s_in_list (name, s_router_redis)) {
            s_redis_t *redis = &self->router_redis;
            if (strcmp (name, "redis_host") == 0)
                rc = s_read_redis_string (self, value, key, &redis->host);
            else
            if (strcmp (name, "redis_port") == 0)
                rc = s_read_int (self, value, key, &redis->port, 1, 65535);
            else
            if (strcmp (name, "redis_password") == 0)
                rc = s_read_redis_string (self, value, key, &redis->password);
            else {
                char *url = NULL;
                rc = s_read_redis_string (self, value, key, &url);
                s_redis_clear (&self->url_redis);
                if (rc == 0 && url)
                    rc = s_parse_redis_url (self, value, key, url, &self->url_redis);
                free (url);
            }
            if (strcmp (name, "redis_url") != 0 && !s_is_null (value)) {
                redis->named = true;
                if (!redis->node)
                    redis->node = pairs.pairs [index].key;
            }
            if (rc == 0)
                s_warn_once (self, key, pairs.pairs [index].key, "%s is %s", key, s_REDIS_USE);
        }
        else
            s_warn_unimplemented (self, "router_settings", name, pairs.pairs [index].key, s_router_known);
    }
    s_pairs_destroy (&pairs);
    return rc;
}

static int
s_load_zgate_settings (s_loader_t *self, yaml_node_t *section)
{
    zg_config_t *config = self->config;
    s_pairs_t pairs;
    if (s_pairs_of (self, section, "zgate_settings", &pairs))
        return -1;
    int rc = 0;
    for (size_t index = 0; index < pairs.count && rc == 0; index++) {
        const char *name = s_raw (pairs.pairs [index].key);
        yaml_node_t *value = pairs.pairs [index].value;
        char key [256];
        s_key_path (key, sizeof (key), "zgate_settings", name);
        if (strcmp (name, "frontend_endpoint") == 0)
            rc = s_read_string (self, value, key, &config->frontend_endpoint);
        else
        if (strcmp (name, "worker_endpoint") == 0)
            rc = s_read_string (self, value, key, &config->worker_endpoint);
        else
        if (strcmp (name, "events_endpoint") == 0)
            rc = s_read_string (self, value, key, &config->events_endpoint);
        else
        if (strcmp (name, "run_dir") == 0)
            rc = s_read_string (self, value, key, &config->run_dir);
        else
        if (strcmp (name, "worker_capacity") == 0)
            rc = s_read_int (self, value, key, &config->worker_capacity, 1, 65535);
        else
        if (strcmp (name, "queue_timeout_ms") == 0)
            rc = s_read_int (self, value, key, &config->queue_timeout_ms, 1, INT32_MAX);
        else
        if (strcmp (name, "max_queue") == 0)
            rc = s_read_int (self, value, key, &config->max_queue, 1, INT32_MAX);
        else
        if (strcmp (name, "heartbeat_ms") == 0)
            rc = s_read_int (self, value, key, &config->heartbeat_ms, 10, 60000);
        else
        if (strcmp (name, "redis_probe_interval_ms") == 0)
            rc = s_read_int (self, value, key, &config->redis_probe_interval_ms, 100, 3600000);
        else
        if (strcmp (name, "redis_timeout_ms") == 0)
            rc = s_read_int (self, value, key, &config->redis_timeout_ms, 10, 60000);
        else
        if (strcmp (name, "redis_sync_interval_ms") == 0)
            rc = s_read_int (self, value, key, &config->redis_sync_interval_ms, 50, 60000);
        else
            //  Our own section: a typo here is a mistake, not a LiteLLM feature
            rc = s_fail (self, pairs.pairs [index].key, key, "unknown zgate setting");
    }
    s_pairs_destroy (&pairs);
    return rc;
}

//  --------------------------------------------------------------------------
//  The whole file

static const char *const s_top_known [] = {
    "guardrails", "mcp_servers", "mcp_tools", "mcp_aliases", "credential_list", "callback_settings",
    "files_settings", "finetune_settings", "assistant_settings", "vector_store_registry",
    "search_tools", "prompts", "policies", "include", "agent_list", "model_group_settings",
    "pass_through_endpoints", "general_settings_overrides", NULL
};

static zg_config_t *
s_config_new (void)
{
    zg_config_t *self = calloc (1, sizeof (zg_config_t));
    if (!self)
        return NULL;
    self->max_request_size_mb = 32;
    self->database_connection_pool_limit = 10;
    self->proxy_batch_write_at = 10;
    self->user_api_key_cache_ttl = 60;
    self->request_timeout_s = 6000;
    self->routing_strategy = strdup ("simple-shuffle");
    self->num_retries = 2;
    self->worker_capacity = 256;
    self->queue_timeout_ms = 5000;
    self->max_queue = 10000;
    self->heartbeat_ms = 1000;
    self->redis_probe_interval_ms = 5000;
    self->redis_timeout_ms = 1000;
    self->redis_sync_interval_ms = 1000;
    self->redis_port = 6379;
    if (!self->routing_strategy)
        zg_config_destroy (&self);
    return self;
}

//  Settings that come from the environment when the file does not set them
static int
s_apply_environment (s_loader_t *self)
{
    zg_config_t *config = self->config;
    if (!self->request_timeout_set
    &&  s_env_number (self, "REQUEST_TIMEOUT", &config->request_timeout_s))
        return -1;
    if (!self->batch_write_set
    &&  s_env_number (self, "PROXY_BATCH_WRITE_AT", &config->proxy_batch_write_at))
        return -1;
    if (!config->master_key) {
        config->master_key = s_env_string ("LITELLM_MASTER_KEY");
        if (config->master_key && strncmp (config->master_key, "sk-", 3) != 0)
            return s_fail (self, NULL, "LITELLM_MASTER_KEY", "environment variable: must start with 'sk-'");
    }
    if (!config->database_url)
        config->database_url = s_env_string ("DATABASE_URL");
    if (!config->run_dir)
        config->run_dir = s_env_string ("ZGATE_RUN_DIR");
    const char *json = getenv ("JSON_LOGS");
    if (json && strcmp (json, "true") == 0)
        config->json_logs = true;
    //  LiteLLM reads it as Python's str == "True"; any casing is kinder
    const char *store = getenv ("STORE_MODEL_IN_DB");
    if (store && strcasecmp (store, "true") == 0)
        config->store_model_in_db = true;
    return 0;
}

static int
s_load_document (s_loader_t *self)
{
    yaml_node_t *root = yaml_document_get_root_node (&self->document);
    if (s_is_null (root))
        return 0;           //  an empty file: defaults, no models
    if (root->type != YAML_MAPPING_NODE)
        return s_fail (self, root, NULL, "expected a mapping of settings at the top level, got %s",
                       s_kind (root));
    s_pairs_t pairs;
    if (s_pairs_of (self, root, "", &pairs))
        return -1;
    int rc = 0;
    s_pair_t *environment = s_pairs_find (&pairs, "environment_variables");
    if (environment)
        rc = s_load_environment_variables (self, environment->value);
    if (rc == 0)
        rc = s_check_environment (self, root, "", 0);
    //  Sections in a fixed order, so that errors do not depend on layout
    //  and model_list sees the settings
    static const char *const sections [] = {
        "general_settings", "litellm_settings", "router_settings", "zgate_settings", "model_list", NULL
    };
    for (int index = 0; sections [index] && rc == 0; index++) {
        s_pair_t *pair = s_pairs_find (&pairs, sections [index]);
        if (!pair)
            continue;
        if (index == 0)
            rc = s_load_general_settings (self, pair->value);
        else
        if (index == 1)
            rc = s_load_litellm_settings (self, pair->value);
        else
        if (index == 2)
            rc = s_load_router_settings (self, pair->value);
        else
        if (index == 3)
            rc = s_load_zgate_settings (self, pair->value);
        else
            rc = s_load_model_list (self, pair->value);
    }
    for (size_t index = 0; index < pairs.count && rc == 0; index++) {
        const char *name = s_raw (pairs.pairs [index].key);
        if (s_in_list (name, sections) || strcmp (name, "environment_variables") == 0)
            continue;
        if (s_in_list (name, s_top_known))
            s_warn_once (self, name, pairs.pairs [index].key, "%s is not implemented by zgate yet; ignored", name);
        else
            s_warn_once (self, name, pairs.pairs [index].key, "%s is not a setting zgate knows; ignored", name);
    }
    s_pairs_destroy (&pairs);
    return rc;
}

zg_config_t *
zg_config_load (const char *path, char *errbuf, size_t errsize)
{
    if (errbuf && errsize)
        errbuf [0] = 0;
    s_loader_t loader = { .path = path? path: "(no path)", .errbuf = errbuf, .errsize = errsize };
    if (!path) {
        s_fail (&loader, NULL, NULL, "no configuration file given");
        return NULL;
    }
    FILE *file = fopen (path, "rb");
    if (!file) {
        s_fail (&loader, NULL, NULL, "cannot open the configuration file: %s", strerror (errno));
        return NULL;
    }
    yaml_parser_t parser;
    if (!yaml_parser_initialize (&parser)) {
        fclose (file);
        s_fail (&loader, NULL, NULL, "out of memory");
        return NULL;
    }
    yaml_parser_set_input_file (&parser, file);
    if (!yaml_parser_load (&parser, &loader.document)) {
        if (errbuf && errsize) {
            if (parser.context)
                snprintf (errbuf, errsize, "%s:%d: YAML syntax error: %s (%s)", path,
                          (int) parser.problem_mark.line + 1, parser.problem? parser.problem: "",
                          parser.context);
            else
                snprintf (errbuf, errsize, "%s:%d: YAML syntax error: %s", path,
                          (int) parser.problem_mark.line + 1, parser.problem? parser.problem: "unreadable");
        }
        yaml_parser_delete (&parser);
        fclose (file);
        return NULL;
    }
    yaml_parser_delete (&parser);
    fclose (file);

    loader.config = s_config_new ();
    int rc = -1;
    if (!loader.config)
        s_fail (&loader, NULL, NULL, "out of memory");
    else
    if ((loader.config->path = strdup (path)) == NULL)
        s_fail (&loader, NULL, NULL, "out of memory");
    else
        rc = s_load_document (&loader);
    if (rc == 0)
        rc = s_resolve_redis (&loader);
    if (rc == 0)
        rc = s_apply_environment (&loader);
    s_redis_clear (&loader.router_redis);
    s_redis_clear (&loader.url_redis);
    s_redis_clear (&loader.cache_redis);

    yaml_document_delete (&loader.document);
    for (size_t index = 0; index < loader.warned_count; index++)
        free (loader.warned [index]);
    free (loader.warned);
    if (rc)
        zg_config_destroy (&loader.config);
    return loader.config;
}

zg_config_t *
zg_config_new_default (void)
{
    s_loader_t loader = { .path = "(defaults)" };
    char errbuf [256];
    loader.errbuf = errbuf;
    loader.errsize = sizeof (errbuf);
    loader.config = s_config_new ();
    if (!loader.config)
        return NULL;
    //  The environment still counts with no file, as it does for LiteLLM;
    //  a bad value there is reported and left out
    if (s_apply_environment (&loader)) {
        zg_warning ("%s", errbuf);
        zg_config_destroy (&loader.config);
        loader.config = s_config_new ();
    }
    return loader.config;
}

void
zg_config_destroy (zg_config_t **self_p)
{
    assert (self_p);
    zg_config_t *self = *self_p;
    if (!self)
        return;
    for (size_t index = 0; index < self->deployment_count; index++)
        s_deployment_clear (&self->deployments [index]);
    free (self->deployments);
    free (self->path);
    free (self->master_key);
    free (self->database_url);
    free (self->routing_strategy);
    free (self->frontend_endpoint);
    free (self->worker_endpoint);
    free (self->events_endpoint);
    free (self->run_dir);
    free (self->redis_host);
    free (self->redis_username);
    free (self->redis_password);
    free (self);
    *self_p = NULL;
}

void
zg_config_events_endpoint (const zg_config_t *self, const char *run_dir,
                           char *endpoint, size_t size)
{
    assert (self);
    assert (endpoint && size);
    if (self->events_endpoint && *self->events_endpoint)
        snprintf (endpoint, size, "%s", self->events_endpoint);
    else
        snprintf (endpoint, size, "ipc://%s/events.ipc", run_dir? run_dir: "/tmp/zgate");
}

bool
zg_config_provider_supported (const char *provider)
{
    return provider && s_in_list (provider, s_supported_providers);
}

size_t
zg_config_find_group (const zg_config_t *self, const char *model_name, size_t *out, size_t max)
{
    assert (self);
    if (!model_name)
        return 0;
    size_t found = 0;
    for (size_t index = 0; index < self->deployment_count && found < max; index++)
        if (strcmp (self->deployments [index].model_name, model_name) == 0)
            out [found++] = index;
    return found;
}


//  --------------------------------------------------------------------------
//  Self test

#include <fcntl.h>
#include <unistd.h>


static char s_test_dir [64];
static char s_test_path [128];

//  Loads text as <tmp>/config.yaml; returns the config, with the error in
//  errbuf and what was logged to stderr (warnings) in *warnings if wanted
static zg_config_t *
s_test_load (const char *text, char *errbuf, size_t errsize, char **warnings)
{
    FILE *file = fopen (s_test_path, "wb");
    ZG_CHECK (file);
    ZG_CHECK (fwrite (text, 1, strlen (text), file) == strlen (text));
    fclose (file);

    char capture_path [128];
    snprintf (capture_path, sizeof (capture_path), "%s/stderr.txt", s_test_dir);
    fflush (stderr);
    int saved = dup (STDERR_FILENO);
    int fd = open (capture_path, O_CREAT | O_TRUNC | O_WRONLY | O_APPEND, 0600);
    ZG_CHECK (saved >= 0 && fd >= 0);
    dup2 (fd, STDERR_FILENO);
    close (fd);
    zg_config_t *config = zg_config_load (s_test_path, errbuf, errsize);
    dup2 (saved, STDERR_FILENO);
    close (saved);

    file = fopen (capture_path, "rb");
    ZG_CHECK (file);
    char *logged = calloc (1, 65536);
    ZG_CHECK (logged);
    size_t size = fread (logged, 1, 65535, file);
    logged [size] = 0;
    fclose (file);
    unlink (capture_path);
    if (warnings)
        *warnings = logged;
    else {
        if (*logged)
            fputs (logged, stderr);
        free (logged);
    }
    return config;
}

static zg_config_t *
s_test_load_ok (const char *text)
{
    char errbuf [512];
    char *warnings;
    zg_config_t *config = s_test_load (text, errbuf, sizeof (errbuf), &warnings);
    free (warnings);
    if (!config)
        fprintf (stderr, "unexpected error: %s\n", errbuf);
    ZG_CHECK (config);
    return config;
}

//  expected is the error after "<path>:"
static void
s_test_error (const char *text, const char *expected)
{
    char errbuf [512], wanted [640];
    zg_config_t *config = s_test_load (text, errbuf, sizeof (errbuf), NULL);
    snprintf (wanted, sizeof (wanted), "%s:%s", s_test_path, expected);
    if (config || strcmp (errbuf, wanted) != 0)
        fprintf (stderr, "error: %s\n  got: %s\n want: %s\n", config? "none": "wrong", errbuf, wanted);
    ZG_CHECK (!config);
    ZG_CHECK (strcmp (errbuf, wanted) == 0);
}

static size_t
s_count (const char *text, const char *needle)
{
    size_t count = 0;
    for (const char *scan = strstr (text, needle); scan; scan = strstr (scan + 1, needle))
        count++;
    return count;
}

static const char *s_production_config =
    //  litellm-production-guide.md section 1, without the docs' admonition lines
    "model_list:\n"
    "  - model_name: fake-openai-endpoint\n"
    "    litellm_params:\n"
    "      model: openai/fake\n"
    "      api_key: fake-key\n"
    "      api_base: https://exampleopenaiendpoint-production.up.railway.app/\n"
    "\n"
    "general_settings:\n"
    "  master_key: sk-1234      # enter your own master key, ensure it starts with 'sk-'\n"
    "  alerting: [\"slack\"]      # Setup slack alerting - get alerts on LLM exceptions, Budget Alerts, Slow LLM Responses\n"
    "  proxy_batch_write_at: 60 # Batch write spend updates every 60s\n"
    "  database_connection_pool_limit: 10 # connection pool limit per worker process. Total connections = limit \xc3\x97 workers \xc3\x97 instances. Calculate: MAX_DB_CONNECTIONS / (instances \xc3\x97 workers). Default: 10.\n"
    "\n"
    "\n"
    "  # OPTIONAL Best Practices\n"
    "  disable_error_logs: True # turn off writing LLM Exceptions to DB\n"
    "  allow_requests_on_db_unavailable: True # Only USE when running LiteLLM on your VPC. Allow requests to still be processed even if the DB is unavailable. We recommend doing this if you're running LiteLLM on VPC that cannot be accessed from the public internet.\n"
    "\n"
    "litellm_settings:\n"
    "  request_timeout: 600    # raise Timeout error if call takes longer than 600 seconds. Default value is 6000seconds if not set\n"
    "  set_verbose: False      # Switch off Debug Logging, ensure your logs do not have any debugging on\n"
    "  json_logs: true         # Get debug logs in json format\n";

static const char *s_redis_config =
    //  litellm-production-guide.md section 4
    "router_settings:\n"
    "  routing_strategy: simple-shuffle # (default) - recommended for best performance\n"
    "  # redis_url: \"os.environ/REDIS_URL\"\n"
    "  redis_host: os.environ/REDIS_HOST\n"
    "  redis_port: os.environ/REDIS_PORT\n"
    "  redis_password: os.environ/REDIS_PASSWORD\n"
    "\n"
    "litellm_settings:\n"
    "  cache: True\n"
    "  cache_params:\n"
    "    type: redis\n"
    "    host: os.environ/REDIS_HOST\n"
    "    port: os.environ/REDIS_PORT\n"
    "    password: os.environ/REDIS_PASSWORD\n";

void
zg_config_test (bool verbose)
{
    printf (" * zg_config: ");
    //  Nothing from the caller's environment may change what is tested
    const char *clear [] = {
        "LITELLM_LOG", "LITELLM_MASTER_KEY", "DATABASE_URL", "JSON_LOGS", "REQUEST_TIMEOUT",
        "PROXY_BATCH_WRITE_AT", "ZGATE_RUN_DIR", "STORE_MODEL_IN_DB", "REDIS_HOST", "REDIS_PORT", "REDIS_PASSWORD",
        "REDIS_URL",
        "ZG_TEST_KEY", "ZG_TEST_RPM", "ZG_TEST_SET_BY_FILE", "ZG_TEST_ALREADY", "ZG_TEST_CHAINED", NULL
    };
    for (int index = 0; clear [index]; index++)
        unsetenv (clear [index]);
    zg_log_init ("zgate.test", false, false);
    snprintf (s_test_dir, sizeof (s_test_dir), "/tmp/zg_config_test_XXXXXX");
    ZG_CHECK (mkdtemp (s_test_dir));
    snprintf (s_test_path, sizeof (s_test_path), "%s/config.yaml", s_test_dir);
    char errbuf [512];
    char *warnings;

    //  Defaults
    zg_config_t *config = zg_config_new_default ();
    ZG_CHECK (config);
    ZG_CHECK (config->deployment_count == 0 && config->deployments == NULL);
    ZG_CHECK (config->master_key == NULL && config->database_url == NULL);
    ZG_CHECK (config->max_request_size_mb == 32);
    ZG_CHECK (config->database_connection_pool_limit == 10);
    ZG_CHECK (config->proxy_batch_write_at == 10);
    ZG_CHECK (config->user_api_key_cache_ttl == 60);
    ZG_CHECK (!config->disable_error_logs && !config->allow_requests_on_db_unavailable);
    ZG_CHECK (!config->store_model_in_db);
    ZG_CHECK (config->request_timeout_s == 6000);
    ZG_CHECK (!config->set_verbose && !config->json_logs);
    ZG_CHECK (strcmp (config->routing_strategy, "simple-shuffle") == 0);
    ZG_CHECK (config->num_retries == 2);
    ZG_CHECK (!config->frontend_endpoint && !config->worker_endpoint && !config->run_dir);
    ZG_CHECK (!config->events_endpoint);
    ZG_CHECK (!config->redis_host && !config->redis_password && config->redis_port == 6379);
    ZG_CHECK (config->redis_probe_interval_ms == 5000 && config->redis_timeout_ms == 1000);
    ZG_CHECK (config->redis_sync_interval_ms == 1000);
    char events [64];
    zg_config_events_endpoint (config, "/run/zg", events, sizeof (events));
    ZG_CHECK (strcmp (events, "ipc:///run/zg/events.ipc") == 0);
    ZG_CHECK (config->worker_capacity == 256 && config->queue_timeout_ms == 5000);
    ZG_CHECK (config->max_queue == 10000 && config->heartbeat_ms == 1000);
    size_t group [4];
    ZG_CHECK (zg_config_find_group (config, "gpt-4o", group, 4) == 0);
    zg_config_destroy (&config);
    zg_config_destroy (&config);
    ZG_CHECK (config == NULL);

    //  An empty file is the defaults too
    config = s_test_load_ok ("# nothing yet\n");
    ZG_CHECK (config->deployment_count == 0 && config->request_timeout_s == 6000);
    zg_config_destroy (&config);

    //  The production guide's config loads, with one warning (alerting)
    config = s_test_load (s_production_config, errbuf, sizeof (errbuf), &warnings);
    if (!config)
        fprintf (stderr, "production config: %s\n", errbuf);
    ZG_CHECK (config);
    ZG_CHECK (s_count (warnings, "WARNING") == 1);
    ZG_CHECK (strstr (warnings, "config.yaml:10: general_settings.alerting is not implemented by zgate yet; ignored"));
    free (warnings);
    ZG_CHECK (config->deployment_count == 1);
    zg_deployment_t *deployment = &config->deployments [0];
    ZG_CHECK (strcmp (deployment->model_name, "fake-openai-endpoint") == 0);
    ZG_CHECK (strcmp (deployment->provider, "openai") == 0);
    ZG_CHECK (strcmp (deployment->upstream_model, "fake") == 0);
    ZG_CHECK (strcmp (deployment->api_key, "fake-key") == 0);
    ZG_CHECK (strcmp (deployment->api_base, "https://exampleopenaiendpoint-production.up.railway.app/") == 0);
    ZG_CHECK (deployment->line == 2);
    ZG_CHECK (strlen (deployment->id) == 64);
    ZG_CHECK (deployment->timeout_s == 0 && deployment->stream_timeout_s == 0);
    ZG_CHECK (deployment->rpm == 0 && deployment->tpm == 0 && deployment->weight == 0);
    ZG_CHECK (deployment->max_retries == -1);
    ZG_CHECK (deployment->input_cost_per_token < 0 && deployment->output_cost_per_token < 0);
    ZG_CHECK (strcmp (config->master_key, "sk-1234") == 0);
    ZG_CHECK (config->proxy_batch_write_at == 60);
    ZG_CHECK (config->database_connection_pool_limit == 10);
    ZG_CHECK (config->disable_error_logs && config->allow_requests_on_db_unavailable);
    ZG_CHECK (config->request_timeout_s == 600);
    ZG_CHECK (!config->set_verbose && config->json_logs);
    ZG_CHECK (strcmp (config->path, s_test_path) == 0);
    //  The id is deterministic: the same file gives the same id
    char first_id [65];
    snprintf (first_id, sizeof (first_id), "%s", deployment->id);
    zg_config_destroy (&config);
    config = s_test_load (s_production_config, errbuf, sizeof (errbuf), &warnings);
    free (warnings);
    ZG_CHECK (config && strcmp (config->deployments [0].id, first_id) == 0);
    zg_config_destroy (&config);
    //  ...and does not depend on key order or layout, only on content
    config = s_test_load_ok (
        "model_list:\n"
        "  - litellm_params: {api_base: \"https://exampleopenaiendpoint-production.up.railway.app/\","
        " api_key: fake-key, model: openai/fake}\n"
        "    model_name: fake-openai-endpoint\n");
    ZG_CHECK (strcmp (config->deployments [0].id, first_id) == 0);
    zg_config_destroy (&config);
    config = s_test_load_ok (
        "model_list:\n"
        "  - model_name: fake-openai-endpoint\n"
        "    litellm_params: {model: openai/fake, api_key: other-key,"
        " api_base: \"https://exampleopenaiendpoint-production.up.railway.app/\"}\n");
    ZG_CHECK (strcmp (config->deployments [0].id, first_id) != 0);
    zg_config_destroy (&config);

    //  Section 4's Redis block: accepted with warnings once REDIS_* are set
    s_test_error (s_redis_config, "4: router_settings.redis_host: environment variable REDIS_HOST is not set");
    setenv ("REDIS_HOST", "localhost", 1);
    setenv ("REDIS_PORT", "6379", 1);
    setenv ("REDIS_PASSWORD", "hunter2", 1);
    config = s_test_load (s_redis_config, errbuf, sizeof (errbuf), &warnings);
    if (!config)
        fprintf (stderr, "redis config: %s\n", errbuf);
    ZG_CHECK (config);
    ZG_CHECK (s_count (warnings, "WARNING") == 5);
    ZG_CHECK (strstr (warnings, "config.yaml:4: router_settings.redis_host is used for the "
                                "virtual keys' rpm/tpm limits, counted across the instances that "
                                "share this Redis (synced every zgate_settings.redis_sync_interval_ms; "
                                "each instance counts alone while Redis is unreachable), and watched "
                                "for /health/readiness and /metrics; max_parallel_requests, "
                                "deployment cooldowns and routing stay per instance"));
    ZG_CHECK (strstr (warnings, "config.yaml:5: router_settings.redis_port is used for the virtual keys' rpm/tpm limits"));
    ZG_CHECK (strstr (warnings, "config.yaml:6: router_settings.redis_password is used for the virtual keys' rpm/tpm limits"));
    ZG_CHECK (strstr (warnings, "config.yaml:9: litellm_settings.cache is not implemented"));
    ZG_CHECK (strstr (warnings, "config.yaml:10: litellm_settings.cache_params is used for the virtual keys' rpm/tpm limits"));
    ZG_CHECK (strstr (warnings, "responses are not cached"));
    ZG_CHECK (!strstr (warnings, "hunter2"));
    free (warnings);
    ZG_CHECK (strcmp (config->redis_host, "localhost") == 0 && config->redis_port == 6379);
    ZG_CHECK (strcmp (config->redis_password, "hunter2") == 0);
    ZG_CHECK (!config->redis_username && config->redis_db == 0);
    ZG_CHECK (strcmp (config->routing_strategy, "simple-shuffle") == 0);
    ZG_CHECK (config->deployment_count == 0);
    zg_config_destroy (&config);

    //  A full deployment, os.environ references, environment_variables,
    //  quoted numbers, YAML 1.1 booleans, groups
    setenv ("ZG_TEST_KEY", "sk-upstream", 1);
    setenv ("ZG_TEST_ALREADY", "from-environment", 1);
    config = s_test_load (
        "environment_variables:\n"
        "  ZG_TEST_SET_BY_FILE: from-file\n"
        "  ZG_TEST_ALREADY: from-file\n"
        "  ZG_TEST_RPM: 600\n"
        "  ZG_TEST_CHAINED: os.environ/ZG_TEST_KEY\n"
        "model_list:\n"
        "  - model_name: gpt-4o\n"
        "    litellm_params:\n"
        "      model: openai/gpt-4o-2024-08-06\n"
        "      api_key: os.environ/ZG_TEST_KEY\n"
        "      api_base: http://127.0.0.1:8080/v1\n"
        "      timeout: \"30\"\n"
        "      stream_timeout: 2.5\n"
        "      rpm: os.environ/ZG_TEST_RPM\n"
        "      tpm: 100000\n"
        "      weight: 2\n"
        "      max_retries: 3\n"
        "      input_cost_per_token: 0.0000025\n"
        "      output_cost_per_token: 1e-5\n"
        "      organization: org-1\n"
        "      temperature: 0.2\n"
        "      frobnicate: 1\n"
        "    model_info:\n"
        "      id: deployment-a\n"
        "      mode: chat\n"
        "  - model_name: gpt-4o\n"
        "    litellm_params:\n"
        "      model: hosted_vllm/meta/llama-3\n"
        "      api_base: http://127.0.0.1:8081/v1\n"
        "      frobnicate: 2\n"
        "    model_info:\n"
        "      input_cost_per_token: 0.5\n"
        "  - model_name: mini\n"
        "    litellm_params:\n"
        "      model: gpt-4o-mini\n"
        "      input_cost_per_token: 0.25\n"
        "    model_info:\n"
        "      input_cost_per_token: 0.5\n"
        "      output_cost_per_token: 0.75\n"
        "  - model_name: gpt-4o\n"
        "    litellm_params: {model: custom_openai/x, api_base: \"http://h/v1\"}\n"
        "general_settings:\n"
        "  database_url: os.environ/ZG_TEST_CHAINED\n"
        "  max_request_size_mb: 0.5\n"
        "  disable_error_logs: yes\n"
        "  allow_requests_on_db_unavailable: off\n"
        "litellm_settings:\n"
        "  set_verbose: True\n"
        "  json_logs: no\n"
        "router_settings:\n"
        "  routing_strategy: least-busy\n"
        "  num_retries: 0\n"
        "zgate_settings:\n"
        "  frontend_endpoint: ipc:///tmp/x/frontend.ipc\n"
        "  worker_endpoint: tcp://127.0.0.1:5556\n"
        "  events_endpoint: tcp://127.0.0.1:5557\n"
        "  run_dir: /tmp/x\n"
        "  worker_capacity: 65535\n"
        "  queue_timeout_ms: 1\n"
        "  max_queue: 1\n"
        "  heartbeat_ms: 10\n",
        errbuf, sizeof (errbuf), &warnings);
    if (!config)
        fprintf (stderr, "full config: %s\n", errbuf);
    ZG_CHECK (config);
    ZG_CHECK (s_count (warnings, "WARNING") == 2);       //  frobnicate once, least-busy once
    ZG_CHECK (strstr (warnings, "config.yaml:22: model_list[0].litellm_params.frobnicate: not a litellm_params key zgate knows; ignored"));
    ZG_CHECK (strstr (warnings, "config.yaml:51: router_settings.routing_strategy: least-busy is not implemented, using simple-shuffle"));
    free (warnings);
    ZG_CHECK (strcmp (getenv ("ZG_TEST_SET_BY_FILE"), "from-file") == 0);
    ZG_CHECK (strcmp (getenv ("ZG_TEST_ALREADY"), "from-environment") == 0);
    ZG_CHECK (strcmp (getenv ("ZG_TEST_RPM"), "600") == 0);
    ZG_CHECK (config->deployment_count == 4);
    deployment = &config->deployments [0];
    ZG_CHECK (strcmp (deployment->id, "deployment-a") == 0);
    ZG_CHECK (strcmp (deployment->provider, "openai") == 0);
    ZG_CHECK (strcmp (deployment->upstream_model, "gpt-4o-2024-08-06") == 0);
    ZG_CHECK (strcmp (deployment->api_key, "sk-upstream") == 0);
    ZG_CHECK (strcmp (deployment->api_base, "http://127.0.0.1:8080/v1") == 0);
    ZG_CHECK (deployment->timeout_s == 30 && deployment->stream_timeout_s == 2.5);
    ZG_CHECK (deployment->rpm == 600 && deployment->tpm == 100000);
    ZG_CHECK (deployment->weight == 2 && deployment->max_retries == 3);
    ZG_CHECK (deployment->input_cost_per_token == 0.0000025 && deployment->output_cost_per_token == 1e-5);
    ZG_CHECK (deployment->line == 7);
    deployment = &config->deployments [1];
    ZG_CHECK (strcmp (deployment->provider, "hosted_vllm") == 0);
    ZG_CHECK (strcmp (deployment->upstream_model, "meta/llama-3") == 0);
    ZG_CHECK (deployment->api_key == NULL);
    ZG_CHECK (deployment->input_cost_per_token == 0.5 && deployment->output_cost_per_token < 0);
    ZG_CHECK (strlen (deployment->id) == 64);
    deployment = &config->deployments [2];
    ZG_CHECK (strcmp (deployment->provider, "openai") == 0);
    ZG_CHECK (strcmp (deployment->upstream_model, "gpt-4o-mini") == 0);
    ZG_CHECK (strcmp (deployment->api_base, "https://api.openai.com/v1") == 0);
    ZG_CHECK (deployment->input_cost_per_token == 0.25 && deployment->output_cost_per_token == 0.75);
    ZG_CHECK (strcmp (config->deployments [3].provider, "custom_openai") == 0);
    ZG_CHECK (strcmp (config->database_url, "sk-upstream") == 0);
    ZG_CHECK (config->max_request_size_mb == 0.5);
    ZG_CHECK (config->disable_error_logs && !config->allow_requests_on_db_unavailable);
    ZG_CHECK (config->set_verbose && !config->json_logs);
    ZG_CHECK (strcmp (config->routing_strategy, "least-busy") == 0);
    ZG_CHECK (config->num_retries == 0);
    ZG_CHECK (strcmp (config->frontend_endpoint, "ipc:///tmp/x/frontend.ipc") == 0);
    ZG_CHECK (strcmp (config->worker_endpoint, "tcp://127.0.0.1:5556") == 0);
    ZG_CHECK (strcmp (config->events_endpoint, "tcp://127.0.0.1:5557") == 0);
    char events_ep [64];
    zg_config_events_endpoint (config, "/tmp/x", events_ep, sizeof (events_ep));
    ZG_CHECK (strcmp (events_ep, "tcp://127.0.0.1:5557") == 0);
    ZG_CHECK (strcmp (config->run_dir, "/tmp/x") == 0);
    ZG_CHECK (config->worker_capacity == 65535 && config->queue_timeout_ms == 1);
    ZG_CHECK (config->max_queue == 1 && config->heartbeat_ms == 10);
    //  Groups: three deployments share gpt-4o
    ZG_CHECK (zg_config_find_group (config, "gpt-4o", group, 4) == 3);
    ZG_CHECK (group [0] == 0 && group [1] == 1 && group [2] == 3);
    ZG_CHECK (zg_config_find_group (config, "gpt-4o", group, 2) == 2);
    ZG_CHECK (zg_config_find_group (config, "mini", group, 4) == 1 && group [0] == 2);
    ZG_CHECK (zg_config_find_group (config, "fake-openai-endpoint", group, 4) == 0);
    ZG_CHECK (zg_config_find_group (config, NULL, group, 4) == 0);
    zg_config_destroy (&config);

    //  Identical deployments are one group with distinct, stable ids
    const char *twins =
        "model_list:\n"
        "  - model_name: twin\n"
        "    litellm_params: {model: openai/gpt-4o, api_key: os.environ/ZG_TEST_KEY}\n"
        "  - model_name: twin\n"
        "    litellm_params: {model: openai/gpt-4o, api_key: os.environ/ZG_TEST_KEY}\n";
    config = s_test_load_ok (twins);
    ZG_CHECK (zg_config_find_group (config, "twin", group, 4) == 2);
    ZG_CHECK (strcmp (config->deployments [0].id, config->deployments [1].id) != 0);
    char twin_ids [2][65];
    snprintf (twin_ids [0], 65, "%s", config->deployments [0].id);
    snprintf (twin_ids [1], 65, "%s", config->deployments [1].id);
    zg_config_destroy (&config);
    //  A rotated secret does not change the ids
    setenv ("ZG_TEST_KEY", "sk-rotated", 1);
    config = s_test_load_ok (twins);
    ZG_CHECK (strcmp (config->deployments [0].id, twin_ids [0]) == 0);
    ZG_CHECK (strcmp (config->deployments [1].id, twin_ids [1]) == 0);
    ZG_CHECK (strcmp (config->deployments [0].api_key, "sk-rotated") == 0);
    zg_config_destroy (&config);

    //  Anchors, aliases and merge keys, as PyYAML reads them
    config = s_test_load_ok (
        "defaults: &defaults\n"
        "  api_base: http://127.0.0.1:9/v1\n"
        "  timeout: 10\n"
        "model_list:\n"
        "  - model_name: a\n"
        "    litellm_params:\n"
        "      <<: *defaults\n"
        "      model: openai/a\n"
        "      timeout: 20\n");
    ZG_CHECK (strcmp (config->deployments [0].api_base, "http://127.0.0.1:9/v1") == 0);
    ZG_CHECK (config->deployments [0].timeout_s == 20);
    zg_config_destroy (&config);

    //  Warnings: once per key, LiteLLM's own keys told apart from unknown
    config = s_test_load (
        "guardrails: []\n"
        "mcp_servers: {}\n"
        "credential_list: []\n"
        "callback_settings: {}\n"
        "no_such_section: 1\n"
        "model_list:\n"
        "  - model_name: a\n"
        "    litellm_params: {model: openai/a, weird: 1}\n"
        "    extra: 1\n"
        "  - model_name: b\n"
        "    litellm_params: {model: openai/b, weird: 2}\n"
        "    extra: 2\n"
        "general_settings:\n"
        "  store_model_in_db: true\n"
        "  background_health_checks: true\n"
        "  health_check_interval: 300\n"
        "  no_such_key: 1\n"
        "litellm_settings:\n"
        "  num_retries: 3\n"
        "  fallbacks: [{a: [b]}]\n"
        "  success_callback: [prometheus]\n"
        "router_settings:\n"
        "  redis_url: redis://localhost\n"
        "  cooldown_time: 5\n",
        errbuf, sizeof (errbuf), &warnings);
    ZG_CHECK (config);
    ZG_CHECK (strstr (warnings, "config.yaml:1: guardrails is not implemented by zgate yet; ignored"));
    ZG_CHECK (strstr (warnings, "config.yaml:2: mcp_servers is not implemented by zgate yet; ignored"));
    ZG_CHECK (strstr (warnings, "config.yaml:3: credential_list is not implemented by zgate yet; ignored"));
    ZG_CHECK (strstr (warnings, "config.yaml:4: callback_settings is not implemented by zgate yet; ignored"));
    ZG_CHECK (strstr (warnings, "config.yaml:5: no_such_section is not a setting zgate knows; ignored"));
    ZG_CHECK (strstr (warnings, "config.yaml:8: model_list[0].litellm_params.weird: not a litellm_params key"));
    ZG_CHECK (strstr (warnings, "config.yaml:9: model_list[0].extra: not a model_list key"));
    ZG_CHECK (s_count (warnings, "weird") == 1 && s_count (warnings, "extra") == 1);
    ZG_CHECK (config->store_model_in_db);
    ZG_CHECK (!strstr (warnings, "store_model_in_db"));
    ZG_CHECK (strstr (warnings, "config.yaml:15: general_settings.background_health_checks is not implemented"));
    ZG_CHECK (strstr (warnings, "config.yaml:16: general_settings.health_check_interval is not implemented"));
    ZG_CHECK (strstr (warnings, "config.yaml:17: general_settings.no_such_key is not a setting zgate knows"));
    ZG_CHECK (strstr (warnings, "config.yaml:19: litellm_settings.num_retries is not implemented"));
    ZG_CHECK (strstr (warnings, "config.yaml:20: litellm_settings.fallbacks is not implemented"));
    ZG_CHECK (strstr (warnings, "config.yaml:21: litellm_settings.success_callback is not implemented"));
    ZG_CHECK (strstr (warnings, "config.yaml:23: router_settings.redis_url is used for the virtual keys' rpm/tpm limits"));
    ZG_CHECK (strstr (warnings, "config.yaml:24: router_settings.cooldown_time is not implemented"));
    ZG_CHECK (s_count (warnings, "WARNING") == 15);
    free (warnings);
    zg_config_destroy (&config);

    //  Redis: the URL form, which wins over redis_host
    config = s_test_load (
        "router_settings:\n"
        "  redis_host: other\n"
        "  redis_url: \"redis://:s3cr%40t@cache.internal:6380/2\"\n",
        errbuf, sizeof (errbuf), &warnings);
    ZG_CHECK (config);
    ZG_CHECK (strcmp (config->redis_host, "cache.internal") == 0 && config->redis_port == 6380);
    ZG_CHECK (strcmp (config->redis_password, "s3cr@t") == 0 && !config->redis_username);
    ZG_CHECK (config->redis_db == 2);
    ZG_CHECK (strstr (warnings, "config.yaml:2: router_settings.redis_host: redis_url is set and is used instead"));
    ZG_CHECK (!strstr (warnings, "s3cr"));
    free (warnings);
    zg_config_destroy (&config);
    config = s_test_load_ok ("router_settings:\n  redis_url: redis://ops:p:w@d@[::1]:7000/\n");
    ZG_CHECK (strcmp (config->redis_host, "::1") == 0 && config->redis_port == 7000);
    ZG_CHECK (strcmp (config->redis_username, "ops") == 0);
    ZG_CHECK (strcmp (config->redis_password, "p:w@d") == 0 && config->redis_db == 0);
    zg_config_destroy (&config);
    config = s_test_load_ok ("router_settings:\n  redis_url: REDIS://127.0.0.1\n");
    ZG_CHECK (strcmp (config->redis_host, "127.0.0.1") == 0 && config->redis_port == 6379);
    ZG_CHECK (!config->redis_password);
    zg_config_destroy (&config);
    //  An empty value (an unset variable's default) names no Redis
    setenv ("REDIS_URL", "", 1);
    config = s_test_load_ok ("router_settings:\n  redis_url: os.environ/REDIS_URL\n");
    ZG_CHECK (!config->redis_host);
    zg_config_destroy (&config);
    //  Broken URLs name the key and never quote the value
    s_test_error ("router_settings:\n  redis_url: rediss://:topsecret@host:6380\n",
                  "2: router_settings.redis_url: rediss:// (Redis over TLS) is not supported: "
                  "zgate's Redis client is built without TLS; use redis:// on a private network");
    s_test_error ("router_settings:\n  redis_url: http://:topsecret@host\n",
                  "2: router_settings.redis_url: expected redis://[[username]:password@]host[:port][/db]");
    s_test_error ("router_settings:\n  redis_url: unix:///run/redis.sock\n",
                  "2: router_settings.redis_url: unix:// sockets are not supported; "
                  "expected redis://[[username]:password@]host[:port][/db]");
    s_test_error ("router_settings:\n  redis_url: redis://:topsecret@host:99999\n",
                  "2: router_settings.redis_url: the port must be an integer from 1 to 65535; "
                  "expected redis://[[username]:password@]host[:port][/db]");
    s_test_error ("router_settings:\n  redis_url: redis://:topsecret@\n",
                  "2: router_settings.redis_url: no host; "
                  "expected redis://[[username]:password@]host[:port][/db]");
    s_test_error ("router_settings:\n  redis_url: redis://host/zero\n",
                  "2: router_settings.redis_url: the database (/db) must be an integer >= 0; "
                  "expected redis://[[username]:password@]host[:port][/db]");
    s_test_error ("router_settings:\n  redis_url: redis://host?ssl_cert_reqs=none\n",
                  "2: router_settings.redis_url: query parameters are not supported; "
                  "expected redis://[[username]:password@]host[:port][/db]");
    s_test_error ("router_settings:\n  redis_url: \"redis://:top%4secret@host\"\n",
                  "2: router_settings.redis_url: a broken %-escape in the user information; "
                  "expected redis://[[username]:password@]host[:port][/db]");
    s_test_error ("router_settings:\n  redis_url: redis://[::1:6379\n",
                  "2: router_settings.redis_url: a bracketed IPv6 address must end with ']'; "
                  "expected redis://[[username]:password@]host[:port][/db]");
    s_test_error ("router_settings:\n  redis_host: h\n  redis_port: six\n",
                  "3: router_settings.redis_port: expected an integer, got \"six\"");
    s_test_error ("router_settings:\n  redis_host: h\n  redis_port: 0\n",
                  "3: router_settings.redis_port: expected an integer from 1 to 65535, got \"0\"");
    s_test_error ("router_settings:\n  redis_url: [redis://h]\n",
                  "2: router_settings.redis_url: expected a string, got a list");
    //  A port or password alone names no server
    config = s_test_load ("router_settings:\n  redis_password: pw\n", errbuf, sizeof (errbuf),
                          &warnings);
    ZG_CHECK (config && !config->redis_host);
    ZG_CHECK (strstr (warnings, "config.yaml:2: router_settings: redis_port or redis_password "
                                "without redis_host or redis_url: no Redis is used"));
    free (warnings);
    zg_config_destroy (&config);
    //  A redis cache: its host, else the environment's, as LiteLLM's cache reads it
    config = s_test_load_ok ("litellm_settings:\n  cache_params: {type: redis, host: c, port: 7001,"
                             " password: pw, namespace: x}\n");
    ZG_CHECK (strcmp (config->redis_host, "c") == 0 && config->redis_port == 7001);
    ZG_CHECK (strcmp (config->redis_password, "pw") == 0);
    zg_config_destroy (&config);
    setenv ("REDIS_HOST", "envhost", 1);
    setenv ("REDIS_PORT", "7002", 1);
    config = s_test_load_ok ("litellm_settings:\n  cache_params: {type: redis}\n");
    ZG_CHECK (strcmp (config->redis_host, "envhost") == 0 && config->redis_port == 7002);
    ZG_CHECK (strcmp (config->redis_password, "hunter2") == 0);
    zg_config_destroy (&config);
    setenv ("REDIS_URL", "redis://:urlpw@urlhost:7003/1", 1);
    config = s_test_load_ok ("litellm_settings:\n  cache_params: {type: redis}\n");
    ZG_CHECK (strcmp (config->redis_host, "urlhost") == 0 && config->redis_port == 7003);
    ZG_CHECK (strcmp (config->redis_password, "urlpw") == 0 && config->redis_db == 1);
    zg_config_destroy (&config);
    setenv ("REDIS_URL", "rediss://urlhost", 1);
    s_test_error ("litellm_settings:\n  cache_params: {type: redis}\n",
                  " REDIS_URL (environment variable): rediss:// (Redis over TLS) is not supported: "
                  "zgate's Redis client is built without TLS; use redis:// on a private network");
    unsetenv ("REDIS_URL");
    setenv ("REDIS_PORT", "many", 1);
    s_test_error ("litellm_settings:\n  cache_params: {type: redis}\n",
                  " REDIS_PORT: environment variable: expected an integer from 1 to 65535");
    unsetenv ("REDIS_HOST");
    unsetenv ("REDIS_PORT");
    unsetenv ("REDIS_PASSWORD");
    config = s_test_load ("litellm_settings:\n  cache_params: {type: redis}\n", errbuf,
                          sizeof (errbuf), &warnings);
    ZG_CHECK (config && !config->redis_host);
    ZG_CHECK (strstr (warnings, "config.yaml:2: litellm_settings.cache_params: a redis cache with no host"));
    free (warnings);
    zg_config_destroy (&config);
    //  router_settings wins over the cache; a cache of another type names nothing
    config = s_test_load_ok ("router_settings: {redis_host: r}\n"
                             "litellm_settings:\n  cache_params: {type: redis, host: c}\n");
    ZG_CHECK (strcmp (config->redis_host, "r") == 0 && !config->redis_password);
    zg_config_destroy (&config);
    config = s_test_load ("litellm_settings:\n  cache_params: {type: local, host: c}\n", errbuf,
                          sizeof (errbuf), &warnings);
    ZG_CHECK (config && !config->redis_host);
    ZG_CHECK (strstr (warnings, "config.yaml:2: litellm_settings.cache_params is not implemented by zgate yet; ignored"));
    free (warnings);
    zg_config_destroy (&config);
    s_test_error ("litellm_settings:\n  cache_params: {type: redis, host: c, ssl: true}\n",
                  "2: litellm_settings.cache_params.ssl: Redis over TLS is not supported: zgate's "
                  "Redis client is built without TLS");
    s_test_error ("litellm_settings:\n  cache_params: {type: redis, port: 0}\n",
                  "2: litellm_settings.cache_params.port: expected an integer from 1 to 65535, got \"0\"");
    s_test_error ("litellm_settings:\n  cache_params: [redis]\n",
                  "2: litellm_settings.cache_params: expected a mapping, got a list");
    //  How often and how long zgate waits for it
    config = s_test_load_ok ("zgate_settings: {redis_probe_interval_ms: 250, redis_timeout_ms: 50}\n");
    ZG_CHECK (config->redis_probe_interval_ms == 250 && config->redis_timeout_ms == 50);
    zg_config_destroy (&config);
    s_test_error ("zgate_settings:\n  redis_probe_interval_ms: 99\n",
                  "2: zgate_settings.redis_probe_interval_ms: expected an integer from 100 to 3600000, got \"99\"");
    config = s_test_load_ok ("zgate_settings: {redis_sync_interval_ms: 50}\n");
    ZG_CHECK (config->redis_sync_interval_ms == 50);
    zg_config_destroy (&config);
    s_test_error ("zgate_settings:\n  redis_sync_interval_ms: 49\n",
                  "2: zgate_settings.redis_sync_interval_ms: expected an integer from 50 to 60000, got \"49\"");
    s_test_error ("zgate_settings:\n  redis_timeout_ms: 60001\n",
                  "2: zgate_settings.redis_timeout_ms: expected an integer from 10 to 60000, got \"60001\"");

    //  Settings from the environment when the file has none
    setenv ("LITELLM_MASTER_KEY", "sk-from-env", 1);
    setenv ("DATABASE_URL", "postgresql://u:p@h/db", 1);
    setenv ("JSON_LOGS", "true", 1);
    setenv ("REQUEST_TIMEOUT", "42", 1);
    setenv ("PROXY_BATCH_WRITE_AT", "7", 1);
    setenv ("ZGATE_RUN_DIR", "/tmp/run", 1);
    config = s_test_load_ok ("model_list: []\n");
    ZG_CHECK (strcmp (config->master_key, "sk-from-env") == 0);
    ZG_CHECK (strcmp (config->database_url, "postgresql://u:p@h/db") == 0);
    ZG_CHECK (config->json_logs && config->request_timeout_s == 42 && config->proxy_batch_write_at == 7);
    ZG_CHECK (strcmp (config->run_dir, "/tmp/run") == 0);
    zg_config_destroy (&config);
    config = zg_config_new_default ();
    ZG_CHECK (strcmp (config->master_key, "sk-from-env") == 0 && config->request_timeout_s == 42);
    zg_config_destroy (&config);
    //  ...but the file wins
    config = s_test_load_ok (
        "general_settings: {master_key: sk-file, database_url: db, proxy_batch_write_at: 3}\n"
        "litellm_settings: {request_timeout: 5}\n"
        "zgate_settings: {run_dir: /tmp/file}\n");
    ZG_CHECK (strcmp (config->master_key, "sk-file") == 0 && strcmp (config->database_url, "db") == 0);
    ZG_CHECK (config->request_timeout_s == 5 && config->proxy_batch_write_at == 3);
    ZG_CHECK (strcmp (config->run_dir, "/tmp/file") == 0);
    zg_config_destroy (&config);
    setenv ("REQUEST_TIMEOUT", "soon", 1);
    s_test_error ("model_list: []\n", " REQUEST_TIMEOUT: environment variable: expected a number > 0, got \"soon\"");
    unsetenv ("REQUEST_TIMEOUT");
    setenv ("LITELLM_MASTER_KEY", "1234", 1);
    s_test_error ("model_list: []\n", " LITELLM_MASTER_KEY: environment variable: must start with 'sk-'");
    for (int index = 0; clear [index]; index++)
        unsetenv (clear [index]);

    //  Every class of error, with file, line and key
    s_test_error (
        "model_list:\n"
        "  - model_name: gpt-4o\n"
        "    litellm_params:\n"
        "      model: openai/gpt-4o\n"
        "      rpm: fast\n",
        "5: model_list[0].litellm_params.rpm: expected an integer, got \"fast\"");
    s_test_error (
        "model_list:\n"
        "  - model_name: a\n"
        "    litellm_params: {model: openai/a}\n"
        "  - model_name: b\n"
        "    litellm_params:\n"
        "      model: openai/b\n"
        "      tpm: -1\n",
        "7: model_list[1].litellm_params.tpm: expected an integer >= 0, got \"-1\"");
    s_test_error ("model_list:\n  - model_name: a\n    litellm_params: {model: openai/a, rpm: 1.5}\n",
                  "3: model_list[0].litellm_params.rpm: expected an integer, got \"1.5\"");
    s_test_error ("model_list:\n  - model_name: a\n    litellm_params: {model: openai/a, timeout: [1]}\n",
                  "3: model_list[0].litellm_params.timeout: expected a number, got a list");
    s_test_error ("model_list:\n  - model_name: a\n    litellm_params: {model: openai/a, timeout: 0}\n",
                  "3: model_list[0].litellm_params.timeout: expected a number > 0, got \"0\"");
    s_test_error ("model_list:\n  - model_name: a\n    litellm_params: {model: openai/a, stream_timeout: soon}\n",
                  "3: model_list[0].litellm_params.stream_timeout: expected a number, got \"soon\"");
    s_test_error ("model_list:\n  - model_name: a\n    litellm_params: {model: openai/a, weight: -2}\n",
                  "3: model_list[0].litellm_params.weight: expected a number >= 0, got \"-2\"");
    s_test_error ("model_list:\n  - model_name: a\n    litellm_params: {model: openai/a, max_retries: x}\n",
                  "3: model_list[0].litellm_params.max_retries: expected an integer, got \"x\"");
    s_test_error ("model_list:\n  - model_name: a\n    litellm_params: {model: openai/a, input_cost_per_token: -1}\n",
                  "3: model_list[0].litellm_params.input_cost_per_token: expected a number >= 0, got \"-1\"");
    s_test_error ("model_list:\n  - model_name: a\n    litellm_params: {model: openai/a}\n"
                  "    model_info:\n      output_cost_per_token: free\n",
                  "5: model_list[0].model_info.output_cost_per_token: expected a number, got \"free\"");
    s_test_error ("model_list:\n  - model_name: a\n    litellm_params: {model: openai/a}\n    model_info: [1]\n",
                  "4: model_list[0].model_info: expected a mapping, got a list");
    s_test_error ("model_list:\n  - model_name: a\n    litellm_params:\n      model: azure/gpt-4o\n",
                  "4: model_list[0].litellm_params.model: provider 'azure' is not supported by zgate yet");
    s_test_error ("model_list:\n  - model_name: a\n    litellm_params:\n      model: anthropic/claude-3\n",
                  "4: model_list[0].litellm_params.model: provider 'anthropic' is not supported by zgate yet");
    s_test_error ("model_list:\n  - model_name: a\n    litellm_params: {model: openai/}\n",
                  "3: model_list[0].litellm_params.model: expected \"<provider>/<model>\", got \"openai/\"");
    s_test_error ("model_list:\n  - model_name: a\n    litellm_params:\n      api_key: x\n",
                  "4: model_list[0].litellm_params.model: required, but missing");
    s_test_error ("model_list:\n  - litellm_params: {model: openai/a}\n",
                  "2: model_list[0].model_name: required, but missing");
    s_test_error ("model_list:\n  - model_name: a\n",
                  "2: model_list[0].litellm_params: required, but missing");
    s_test_error ("model_list:\n  - model_name: a\n    litellm_params: openai/a\n",
                  "3: model_list[0].litellm_params: expected a mapping, got a value");
    s_test_error ("model_list:\n  - gpt-4o\n",
                  "2: model_list[0]: expected a mapping with model_name and litellm_params, got a value");
    s_test_error ("model_list: {a: 1}\n", "1: model_list: expected a list, got a mapping");
    s_test_error ("model_list:\n  - model_name: a\n    litellm_params: {model: openai/a}\n    model_info: {id: x}\n"
                  "  - model_name: b\n    litellm_params: {model: openai/b}\n    model_info: {id: x}\n",
                  "5: model_list[1].model_info.id: id 'x' is already used by model_list[0]");
    s_test_error ("model_list:\n  - model_name: a\n    litellm_params:\n      model: openai/a\n"
                  "      api_key: os.environ/ZG_TEST_KEY\n",
                  "5: model_list[0].litellm_params.api_key: environment variable ZG_TEST_KEY is not set");
    s_test_error ("guardrails:\n  - name: x\n    key: os.environ/ZG_TEST_KEY\n",
                  "3: guardrails[0].key: environment variable ZG_TEST_KEY is not set");
    s_test_error ("environment_variables:\n  ZG_TEST_CHAINED: os.environ/ZG_TEST_KEY\n",
                  "2: environment_variables.ZG_TEST_CHAINED: environment variable ZG_TEST_KEY is not set");
    s_test_error ("environment_variables:\n  ZG_TEST_CHAINED: [1]\n",
                  "2: environment_variables.ZG_TEST_CHAINED: expected a string or a number, got a list");
    s_test_error ("general_settings:\n  master_key: 1234\n",
                  "2: general_settings.master_key: must start with 'sk-'");
    s_test_error ("general_settings:\n  max_request_size_mb: 0\n",
                  "2: general_settings.max_request_size_mb: expected a number > 0, got \"0\"");
    s_test_error ("general_settings:\n  database_connection_pool_limit: 0\n",
                  "2: general_settings.database_connection_pool_limit: expected an integer from 1 to 100000, got \"0\"");
    s_test_error ("general_settings:\n  proxy_batch_write_at: -1\n",
                  "2: general_settings.proxy_batch_write_at: expected a number > 0, got \"-1\"");
    s_test_error ("general_settings:\n  user_api_key_cache_ttl: 0\n",
                  "2: general_settings.user_api_key_cache_ttl: expected a number > 0, got \"0\"");
    s_test_error ("general_settings:\n  disable_error_logs: maybe\n",
                  "2: general_settings.disable_error_logs: expected true or false, got \"maybe\"");
    s_test_error ("general_settings:\n  allow_requests_on_db_unavailable: {}\n",
                  "2: general_settings.allow_requests_on_db_unavailable: expected true or false, got a mapping");
    s_test_error ("general_settings: [1]\n", "1: general_settings: expected a mapping, got a list");
    s_test_error ("litellm_settings:\n  request_timeout: 0\n",
                  "2: litellm_settings.request_timeout: expected a number > 0, got \"0\"");
    s_test_error ("litellm_settings:\n  set_verbose: 2\n",
                  "2: litellm_settings.set_verbose: expected true or false, got \"2\"");
    s_test_error ("litellm_settings:\n  json_logs: \"\"\n",
                  "2: litellm_settings.json_logs: expected true or false, got \"\"");
    s_test_error ("router_settings:\n  routing_strategy: fastest\n",
                  "2: router_settings.routing_strategy: expected one of simple-shuffle, least-busy, "
                  "usage-based-routing, usage-based-routing-v2, latency-based-routing, cost-based-routing, "
                  "got \"fastest\"");
    s_test_error ("router_settings:\n  num_retries: -1\n",
                  "2: router_settings.num_retries: expected an integer from 0 to 1000, got \"-1\"");
    s_test_error ("zgate_settings:\n  worker_capacity: 0\n",
                  "2: zgate_settings.worker_capacity: expected an integer from 1 to 65535, got \"0\"");
    s_test_error ("zgate_settings:\n  worker_capacity: 65536\n",
                  "2: zgate_settings.worker_capacity: expected an integer from 1 to 65535, got \"65536\"");
    s_test_error ("zgate_settings:\n  queue_timeout_ms: 0\n",
                  "2: zgate_settings.queue_timeout_ms: expected an integer from 1 to 2147483647, got \"0\"");
    s_test_error ("zgate_settings:\n  max_queue: many\n",
                  "2: zgate_settings.max_queue: expected an integer, got \"many\"");
    s_test_error ("zgate_settings:\n  heartbeat_ms: 9\n",
                  "2: zgate_settings.heartbeat_ms: expected an integer from 10 to 60000, got \"9\"");
    s_test_error ("zgate_settings:\n  heartbeat_ms: 60001\n",
                  "2: zgate_settings.heartbeat_ms: expected an integer from 10 to 60000, got \"60001\"");
    s_test_error ("zgate_settings:\n  run_dir: /tmp\n  workers: 4\n",
                  "3: zgate_settings.workers: unknown zgate setting");
    s_test_error ("zgate_settings:\n  run_dir: [a]\n",
                  "2: zgate_settings.run_dir: expected a string, got a list");
    s_test_error ("- a\n- b\n", "1: expected a mapping of settings at the top level, got a list");
    s_test_error ("model_list:\n  - model_name: a\n    litellm_params: {model: openai/a\n",
                  "4: YAML syntax error: did not find expected ',' or '}' (while parsing a flow mapping)");
    s_test_error ("model_list:\n  - model_name: a\n   bad: indentation\n",
                  "3: YAML syntax error: did not find expected '-' indicator (while parsing a block collection)");
    s_test_error ("a: *missing\n", "1: YAML syntax error: found undefined alias");

    //  A missing file
    char missing [160];
    snprintf (missing, sizeof (missing), "%s/absent.yaml", s_test_dir);
    ZG_CHECK (zg_config_load (missing, errbuf, sizeof (errbuf)) == NULL);
    char wanted [256];
    snprintf (wanted, sizeof (wanted), "%s: cannot open the configuration file: No such file or directory", missing);
    ZG_CHECK (strcmp (errbuf, wanted) == 0);
    ZG_CHECK (zg_config_load (NULL, errbuf, sizeof (errbuf)) == NULL);
    ZG_CHECK (zg_config_load (missing, NULL, 0) == NULL);

    //  Aliases that expand without end stop with an error, not a hang
    ZG_CHECK (s_test_load (
        "a: &a [x, x, x, x, x, x, x, x, x, x]\n"
        "b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a]\n"
        "c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b, *b]\n"
        "d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c, *c]\n"
        "e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d, *d]\n"
        "f: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e, *e]\n"
        "g: &g [*f, *f, *f, *f, *f, *f, *f, *f, *f, *f]\n",
        errbuf, sizeof (errbuf), NULL) == NULL);
    ZG_CHECK (strstr (errbuf, "too many nodes"));

    unlink (s_test_path);
    ZG_CHECK (rmdir (s_test_dir) == 0);
    if (verbose)
        printf ("(last error: %s) ", errbuf);
    printf ("OK\n");
}
