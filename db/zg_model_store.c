/*  =========================================================================
    zg_model_store - deployments kept in the database (store_model_in_db)

    LiteLLM's model_management_endpoints encrypt each litellm_params value
    that is a string (encrypt_value_helper leaves other types alone) and
    decrypt each string value when the router loads the rows; zgate does
    the same, so either proxy reads what the other wrote.
    =========================================================================
*/
#include "db/zg_model_store.h"
#include "common/zg_crypt.h"
#include "common/zg_json.h"
#include "common/zg_selftest.h"
#include "common/zg_sha256.h"

#include <assert.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

//  ---------------------------------------------------------------------
//  A growing text buffer; a failed allocation sticks (failed) and the
//  caller reports it once at the end

typedef struct {
    char  *data;
    size_t size;
    size_t capacity;
    bool   failed;
} s_text_t;

static void
s_text_reserve (s_text_t *text, size_t more)
{
    if (text->failed || text->size + more + 1 <= text->capacity)
        return;
    size_t capacity = text->capacity? text->capacity: 256;
    while (capacity < text->size + more + 1)
        capacity *= 2;
    char *data = (char *) realloc (text->data, capacity);
    if (!data) {
        text->failed = true;
        return;
    }
    text->data = data;
    text->capacity = capacity;
}

static void
s_text_append (s_text_t *text, const char *bytes, size_t size)
{
    s_text_reserve (text, size);
    if (text->failed)
        return;
    memcpy (text->data + text->size, bytes, size);
    text->size += size;
    text->data [text->size] = 0;
}

static void
s_text_add (s_text_t *text, const char *string)
{
    s_text_append (text, string, strlen (string));
}

static void
s_text_quoted (s_text_t *text, const char *string)
{
    //  An escaped character takes at most six bytes (\u00XX)
    size_t room = strlen (string) * 6 + 3;
    s_text_reserve (text, room);
    if (text->failed)
        return;
    int written = zg_json_quote (string, text->data + text->size, room);
    if (written < 0)
        text->failed = true;
    else
        text->size += (size_t) written;
}

//  The text, owned by the caller; NULL if an allocation failed
static char *
s_text_take (s_text_t *text)
{
    if (text->failed || !text->data) {
        free (text->data);
        return text->failed? NULL: strdup ("");
    }
    return text->data;
}

//  ---------------------------------------------------------------------
//  Reading litellm_params

static const char *const s_secret_params [] = {
    "api_key", "client_secret", "vertex_credentials", "aws_access_key_id",
    "aws_secret_access_key", "aws_session_token", "azure_ad_token", "azure_password",
    "azure_ad_token_provider", NULL
};

bool
zg_model_param_is_secret (const char *name)
{
    if (!name)
        return false;
    for (const char *const *secret = s_secret_params; *secret; secret++)
        if (strcmp (name, *secret) == 0)
            return true;
    return false;
}

static int
s_fail (char *errbuf, size_t errsize, const char *format, ...)
{
    va_list args;
    va_start (args, format);
    vsnprintf (errbuf, errsize, format, args);
    va_end (args);
    return -1;
}

//  A JSON string value, unescaped, as a new string (NULL if out of memory)
static char *
s_json_text (const char *data, const zg_json_span_t *span)
{
    char *text = (char *) malloc (span->length + 1);
    if (text && zg_json_string (data, span, text, span->length + 1) < 0) {
        free (text);
        return NULL;
    }
    return text;
}

//  Reads a number that may also come as a string ("100"): LiteLLM's UI
//  sends some numbers as text, and encrypts them as strings
static int
s_number (const char *key, zg_json_type_t type, const char *data, const zg_json_span_t *span,
          const char *string, double *out, char *errbuf, size_t errsize)
{
    double value = 0;
    if (type == ZG_JSON_NUMBER && zg_json_double (data, span, &value))
        ;
    else
    if (type == ZG_JSON_STRING && string && *string) {
        char *end = NULL;
        errno = 0;
        value = strtod (string, &end);
        if (errno || *end)
            return s_fail (errbuf, errsize, "litellm_params.%s: expected a number, got \"%s\"",
                           key, string);
    }
    else
        return s_fail (errbuf, errsize, "litellm_params.%s: expected a number", key);
    if (!isfinite (value) || value < 0)
        return s_fail (errbuf, errsize, "litellm_params.%s: expected a number >= 0", key);
    *out = value;
    return 0;
}

//  Applies one parameter that zgate uses to the deployment
static int
s_apply (zg_deployment_t *deployment, const char *key, zg_json_type_t type, const char *data,
         const zg_json_span_t *span, const char *string, char **model_p, char **custom_p,
         double *input_cost, double *output_cost, char *errbuf, size_t errsize)
{
    char **target = NULL;
    if (strcmp (key, "model") == 0)
        target = model_p;
    else
    if (strcmp (key, "custom_llm_provider") == 0)
        target = custom_p;
    else
    if (strcmp (key, "api_key") == 0)
        target = &deployment->api_key;
    else
    if (strcmp (key, "api_base") == 0)
        target = &deployment->api_base;
    if (target) {
        if (type == ZG_JSON_NULL)
            return 0;
        if (type != ZG_JSON_STRING)
            return s_fail (errbuf, errsize, "litellm_params.%s: expected a string", key);
        free (*target);
        *target = strdup (string);
        return *target? 0: s_fail (errbuf, errsize, "out of memory");
    }
    double *number = NULL;
    if (strcmp (key, "timeout") == 0)
        number = &deployment->timeout_s;
    else
    if (strcmp (key, "stream_timeout") == 0)
        number = &deployment->stream_timeout_s;
    else
    if (strcmp (key, "weight") == 0)
        number = &deployment->weight;
    else
    if (strcmp (key, "input_cost_per_token") == 0)
        number = input_cost;
    else
    if (strcmp (key, "output_cost_per_token") == 0)
        number = output_cost;
    if (number)
        return type == ZG_JSON_NULL? 0:
               s_number (key, type, data, span, string, number, errbuf, errsize);
    bool is_rpm = strcmp (key, "rpm") == 0, is_tpm = strcmp (key, "tpm") == 0;
    bool is_retries = strcmp (key, "max_retries") == 0;
    if ((is_rpm || is_tpm || is_retries) && type != ZG_JSON_NULL) {
        double value;
        if (s_number (key, type, data, span, string, &value, errbuf, errsize))
            return -1;
        if (value != floor (value) || value > (is_retries? 1000.0: (double) LONG_MAX / 2))
            return s_fail (errbuf, errsize, "litellm_params.%s: expected a whole number", key);
        if (is_rpm)
            deployment->rpm = (long) value;
        else
        if (is_tpm)
            deployment->tpm = (long) value;
        else
            deployment->max_retries = (int) value;
    }
    return 0;
}

//  Reads the plaintext of a stored string value: decrypted with salt_key,
//  else unescaped as it is; then an "os.environ/NAME" is read from the
//  environment, as LiteLLM does for the rows it loads
static char *
s_plaintext (const char *salt_key, const char *data, const zg_json_span_t *span,
             const char *key, char *errbuf, size_t errsize)
{
    char *stored = s_json_text (data, span);
    if (!stored) {
        s_fail (errbuf, errsize, "out of memory");
        return NULL;
    }
    char *plain = stored;
    if (salt_key) {
        char reason [256];
        plain = zg_crypt_decrypt (salt_key, stored, reason, sizeof (reason));
        free (stored);
        if (!plain) {
            s_fail (errbuf, errsize, "litellm_params.%s: %s", key, reason);
            return NULL;
        }
    }
    if (strncmp (plain, "os.environ/", 11) == 0) {
        const char *value = getenv (plain + 11);
        if (!value) {
            s_fail (errbuf, errsize, "litellm_params.%s: environment variable %s is not set",
                    key, plain + 11);
            free (plain);
            return NULL;
        }
        char *resolved = strdup (value);
        free (plain);
        if (!resolved)
            s_fail (errbuf, errsize, "out of memory");
        return resolved;
    }
    return plain;
}

static void
s_wipe_free (char *text)
{
    if (text) {
        volatile char *bytes = text;
        while (*bytes)
            *bytes++ = 0;
        free (text);
    }
}

void
zg_model_clear (zg_model_t *model)
{
    if (!model)
        return;
    zg_deployment_t *deployment = &model->deployment;
    free (deployment->model_name);
    free (deployment->id);
    free (deployment->provider);
    free (deployment->upstream_model);
    free (deployment->api_base);
    s_wipe_free (deployment->api_key);
    free (model->litellm_params);
    free (model->model_info);
    memset (model, 0, sizeof (*model));
}

//  Reads model_info's prices, which litellm_params' win over
static void
s_info_prices (const char *info, double *input_cost, double *output_cost)
{
    size_t size = strlen (info);
    zg_json_span_t span;
    double value;
    if (*input_cost < 0 && zg_json_find (info, size, "input_cost_per_token", &span)
    &&  zg_json_double (info, &span, &value) && value >= 0)
        *input_cost = value;
    if (*output_cost < 0 && zg_json_find (info, size, "output_cost_per_token", &span)
    &&  zg_json_double (info, &span, &value) && value >= 0)
        *output_cost = value;
}

int
zg_model_decode (zg_model_t *model, const char *salt_key, const char *model_id,
                 const char *model_name, const char *params, const char *info,
                 char *errbuf, size_t errsize)
{
    assert (model);
    memset (model, 0, sizeof (*model));
    zg_deployment_t *deployment = &model->deployment;
    deployment->max_retries = -1;
    deployment->input_cost_per_token = -1;
    deployment->output_cost_per_token = -1;
    if (!model_id || !*model_id)
        return s_fail (errbuf, errsize, "the model id is missing");
    if (!model_name || !*model_name)
        return s_fail (errbuf, errsize, "model_name is missing");
    if (!params || !zg_json_valid (params, strlen (params), NULL))
        return s_fail (errbuf, errsize, "litellm_params is not valid JSON");

    //  LiteLLM has also stored litellm_params as a JSON string holding the object
    char *unwrapped = NULL;
    zg_json_span_t whole = { ZG_JSON_NONE, 0, 0, 0 };
    size_t start = 0;
    while (params [start] == ' ' || params [start] == '\t' || params [start] == '\n'
       ||  params [start] == '\r')
        start++;
    if (params [start] == '"') {
        zg_json_span_t string = { ZG_JSON_STRING, start, strlen (params) - start, 0 };
        while (string.length && params [start + string.length - 1] != '"')
            string.length--;
        unwrapped = s_json_text (params, &string);
        if (!unwrapped || !zg_json_valid (unwrapped, strlen (unwrapped), NULL)) {
            free (unwrapped);
            return s_fail (errbuf, errsize, "litellm_params is not a JSON object");
        }
        params = unwrapped;
        start = 0;
        while (params [start] == ' ' || params [start] == '\n')
            start++;
    }
    if (params [start] != '{') {
        free (unwrapped);
        return s_fail (errbuf, errsize, "litellm_params is not a JSON object");
    }
    whole.type = ZG_JSON_OBJECT;
    whole.offset = start;
    whole.length = strlen (params) - start;
    while (whole.length && params [start + whole.length - 1] != '}')
        whole.length--;

    s_text_t shown = { NULL, 0, 0, false };
    s_text_add (&shown, "{");
    bool first = true;
    char *model_text = NULL, *custom_provider = NULL;
    double input_cost = -1, output_cost = -1;
    int rc = 0;
    size_t cursor = 0;
    zg_json_span_t key_span, value;
    while (rc == 0 && zg_json_member (params, strlen (params), &whole, &cursor, &key_span, &value)) {
        char *key = s_json_text (params, &key_span);
        if (!key) {
            rc = s_fail (errbuf, errsize, "out of memory");
            break;
        }
        char *string = NULL;
        if (value.type == ZG_JSON_STRING) {
            string = s_plaintext (salt_key, params, &value, key, errbuf, errsize);
            if (!string)
                rc = -1;
        }
        if (rc == 0)
            rc = s_apply (deployment, key, value.type, params, &value, string, &model_text,
                          &custom_provider, &input_cost, &output_cost, errbuf, errsize);
        if (rc == 0 && !zg_model_param_is_secret (key)) {
            s_text_add (&shown, first? "": ",");
            s_text_quoted (&shown, key);
            s_text_add (&shown, ":");
            if (string)
                s_text_quoted (&shown, string);
            else
                s_text_append (&shown, params + value.offset, value.length);
            first = false;
        }
        s_wipe_free (string);
        free (key);
    }
    s_text_add (&shown, "}");
    model->litellm_params = s_text_take (&shown);
    free (unwrapped);

    if (rc == 0 && (!model_text || !*model_text))
        rc = s_fail (errbuf, errsize, "litellm_params.model is required");
    if (rc == 0) {
        const char *slash = strchr (model_text, '/');
        if (custom_provider && *custom_provider) {
            deployment->provider = strdup (custom_provider);
            deployment->upstream_model = strdup (model_text);
        }
        else
        if (slash) {
            deployment->provider = strndup (model_text, (size_t) (slash - model_text));
            deployment->upstream_model = strdup (slash + 1);
        }
        else {
            deployment->provider = strdup ("openai");
            deployment->upstream_model = strdup (model_text);
        }
        if (!deployment->provider || !deployment->upstream_model)
            rc = s_fail (errbuf, errsize, "out of memory");
        else
        if (!*deployment->provider || !*deployment->upstream_model)
            rc = s_fail (errbuf, errsize, "litellm_params.model: expected \"<provider>/<model>\", "
                         "got \"%s\"", model_text);
        else
        if (!zg_config_provider_supported (deployment->provider))
            rc = s_fail (errbuf, errsize, "litellm_params.model: provider '%s' is not supported "
                         "by zgate yet", deployment->provider);
    }
    free (model_text);
    free (custom_provider);

    if (rc == 0) {
        bool has_info = info && *info && strcmp (info, "null") != 0;
        if (has_info && !zg_json_valid (info, strlen (info), NULL))
            rc = s_fail (errbuf, errsize, "model_info is not valid JSON");
        else {
            model->model_info = strdup (has_info? info: "{}");
            if (has_info)
                s_info_prices (info, &input_cost, &output_cost);
        }
    }
    if (rc == 0) {
        deployment->input_cost_per_token = input_cost;
        deployment->output_cost_per_token = output_cost;
        deployment->id = strdup (model_id);
        deployment->model_name = strdup (model_name);
        if (!deployment->api_base)
            deployment->api_base = strdup (ZG_CONFIG_DEFAULT_API_BASE);
        if (!deployment->id || !deployment->model_name || !deployment->api_base
        ||  !model->litellm_params || !model->model_info)
            rc = s_fail (errbuf, errsize, "out of memory");
    }
    if (rc)
        zg_model_clear (model);
    return rc;
}

//  ---------------------------------------------------------------------
//  Writing litellm_params

char *
zg_model_encrypt_params (const char *salt_key, const char *params, size_t size,
                         char *errbuf, size_t errsize)
{
    if (!salt_key || !*salt_key) {
        s_fail (errbuf, errsize, "no salt key: set LITELLM_SALT_KEY or a master key");
        return NULL;
    }
    if (!params || !zg_json_valid (params, size, NULL)) {
        s_fail (errbuf, errsize, "litellm_params is not valid JSON");
        return NULL;
    }
    size_t start = 0;
    while (start < size && strchr (" \t\r\n", params [start]))
        start++;
    size_t end = size;
    while (end > start && strchr (" \t\r\n", params [end - 1]))
        end--;
    if (start >= end || params [start] != '{') {
        s_fail (errbuf, errsize, "litellm_params must be a JSON object");
        return NULL;
    }
    zg_json_span_t whole = { ZG_JSON_OBJECT, start, end - start, 0 };
    s_text_t out = { NULL, 0, 0, false };
    s_text_add (&out, "{");
    size_t cursor = 0;
    bool first = true;
    int rc = 0;
    zg_json_span_t key, value;
    while (rc == 0 && zg_json_member (params, size, &whole, &cursor, &key, &value)) {
        s_text_add (&out, first? "": ",");
        s_text_append (&out, params + key.offset, key.length);
        s_text_add (&out, ":");
        first = false;
        if (value.type != ZG_JSON_STRING) {
            s_text_append (&out, params + value.offset, value.length);
            continue;
        }
        char *plain = s_json_text (params, &value);
        char reason [256];
        char *sealed = plain? zg_crypt_encrypt (salt_key, plain, reason, sizeof (reason)): NULL;
        if (!sealed)
            rc = s_fail (errbuf, errsize, "cannot encrypt litellm_params: %s",
                         plain? reason: "out of memory");
        else
            s_text_quoted (&out, sealed);
        s_wipe_free (plain);
        free (sealed);
    }
    s_text_add (&out, "}");
    char *text = s_text_take (&out);
    if (rc || !text) {
        if (rc == 0)
            s_fail (errbuf, errsize, "out of memory");
        free (text);
        return NULL;
    }
    return text;
}

//  ---------------------------------------------------------------------
//  Loading every row

#define SELECT_MODELS \
    "SELECT model_id, model_name, litellm_params::text, coalesce (model_info::text, 'null')," \
    " floor (extract (epoch FROM updated_at) * 1000)::bigint::text" \
    " FROM \"LiteLLM_ProxyModelTable\" ORDER BY created_at, model_id"

void
zg_model_list_destroy (zg_model_list_t **self_p)
{
    assert (self_p);
    zg_model_list_t *self = *self_p;
    if (!self)
        return;
    for (size_t index = 0; index < self->count; index++)
        zg_model_clear (&self->models [index]);
    for (size_t index = 0; index < self->skipped_count; index++) {
        free (self->skipped [index].model_id);
        free (self->skipped [index].model_name);
        free (self->skipped [index].version);
        free (self->skipped [index].reason);
    }
    free (self->models);
    free (self->skipped);
    free (self);
    *self_p = NULL;
}

const zg_model_t *
zg_model_list_find (const zg_model_list_t *self, const char *model_id)
{
    if (!self || !model_id)
        return NULL;
    for (size_t index = 0; index < self->count; index++)
        if (strcmp (self->models [index].deployment.id, model_id) == 0)
            return &self->models [index];
    return NULL;
}

zg_model_list_t *
zg_model_store_load (zg_db_t *db, const char *salt_key, char *errbuf, size_t errsize)
{
    assert (db);
    PGresult *result = zg_db_exec (db, SELECT_MODELS, 0, NULL, errbuf, errsize);
    if (!result)
        return NULL;
    int rows = PQntuples (result);
    zg_model_list_t *self = (zg_model_list_t *) calloc (1, sizeof (zg_model_list_t));
    if (self && rows > 0) {
        self->models = (zg_model_t *) calloc ((size_t) rows, sizeof (zg_model_t));
        self->skipped = (zg_model_skipped_t *) calloc ((size_t) rows, sizeof (zg_model_skipped_t));
    }
    s_text_t rows_text = { NULL, 0, 0, false };
    if (!self || (rows > 0 && (!self->models || !self->skipped))) {
        PQclear (result);
        zg_model_list_destroy (&self);
        s_fail (errbuf, errsize, "out of memory");
        return NULL;
    }
    for (int row = 0; row < rows; row++) {
        const char *id = PQgetvalue (result, row, 0);
        for (int column = 0; column < 5; column++) {
            s_text_add (&rows_text, PQgetvalue (result, row, column));
            s_text_append (&rows_text, "\x1f", 1);
        }
        char reason [512];
        zg_model_t *model = &self->models [self->count];
        if (zg_model_decode (model, salt_key, id, PQgetvalue (result, row, 1),
                             PQgetvalue (result, row, 2), PQgetvalue (result, row, 3),
                             reason, sizeof (reason)) == 0)
            self->count++;
        else {
            zg_model_skipped_t *skipped = &self->skipped [self->skipped_count++];
            skipped->model_id = strdup (id);
            skipped->model_name = strdup (PQgetvalue (result, row, 1));
            skipped->version = strdup (PQgetvalue (result, row, 4));
            skipped->reason = strdup (reason);
            if (!skipped->model_id || !skipped->model_name || !skipped->version
            ||  !skipped->reason)
                rows_text.failed = true;
        }
    }
    PQclear (result);
    zg_sha256_hex (rows_text.data? rows_text.data: "", rows_text.size, self->digest);
    free (rows_text.data);
    if (rows_text.failed) {
        zg_model_list_destroy (&self);
        s_fail (errbuf, errsize, "out of memory");
    }
    return self;
}

//  ---------------------------------------------------------------------
//  Self test

void
zg_model_store_test (bool verbose)
{
    if (verbose)
        printf (" * zg_model_store: ");
    char errbuf [512];
    const char *salt = "sk-salt-for-the-test";

    //  Encrypting: every string, nothing else; the result decodes back
    const char *params = "{\"model\":\"openai/gpt-4o-mini\",\"api_key\":\"sk-upstream-secret\","
                         "\"api_base\":\"http://127.0.0.1:9/v1\",\"rpm\":600,\"timeout\":\"30\","
                         "\"tags\":[\"a\"],\"weight\":null,\"input_cost_per_token\":0.5}";
    char *sealed = zg_model_encrypt_params (salt, params, strlen (params), errbuf, sizeof (errbuf));
    ZG_CHECK (sealed);
    ZG_CHECK (!strstr (sealed, "sk-upstream-secret") && !strstr (sealed, "gpt-4o-mini"));
    ZG_CHECK (strstr (sealed, "\"model\":\"v3:gcm:") && strstr (sealed, "\"api_key\":\"v3:gcm:"));
    ZG_CHECK (strstr (sealed, "\"rpm\":600") && strstr (sealed, "\"tags\":[\"a\"]"));
    ZG_CHECK (strstr (sealed, "\"weight\":null"));
    zg_model_t model;
    ZG_CHECK (zg_model_decode (&model, salt, "id-1", "mini", sealed,
                               "{\"id\":\"id-1\",\"output_cost_per_token\":2}",
                               errbuf, sizeof (errbuf)) == 0);
    zg_deployment_t *deployment = &model.deployment;
    ZG_CHECK (strcmp (deployment->id, "id-1") == 0 && strcmp (deployment->model_name, "mini") == 0);
    ZG_CHECK (strcmp (deployment->provider, "openai") == 0);
    ZG_CHECK (strcmp (deployment->upstream_model, "gpt-4o-mini") == 0);
    ZG_CHECK (strcmp (deployment->api_key, "sk-upstream-secret") == 0);
    ZG_CHECK (strcmp (deployment->api_base, "http://127.0.0.1:9/v1") == 0);
    ZG_CHECK (deployment->rpm == 600 && deployment->timeout_s == 30);
    ZG_CHECK (deployment->input_cost_per_token == 0.5 && deployment->output_cost_per_token == 2);
    ZG_CHECK (deployment->max_retries == -1 && deployment->weight == 0);
    //  Shown decrypted, without the secret
    ZG_CHECK (!strstr (model.litellm_params, "api_key") && !strstr (model.litellm_params, "sk-upstream"));
    ZG_CHECK (strstr (model.litellm_params, "\"model\":\"openai/gpt-4o-mini\""));
    ZG_CHECK (strstr (model.litellm_params, "\"rpm\":600"));
    ZG_CHECK (zg_json_valid (model.litellm_params, strlen (model.litellm_params), NULL));
    zg_model_clear (&model);

    //  A wrong salt key: a clear error, nothing half-read
    ZG_CHECK (zg_model_decode (&model, "sk-another-salt", "id-1", "mini", sealed, NULL,
                               errbuf, sizeof (errbuf)) == -1);
    ZG_CHECK (strstr (errbuf, "litellm_params.") && strstr (errbuf, "salt key"));
    ZG_CHECK (model.deployment.api_key == NULL && model.litellm_params == NULL);
    free (sealed);

    //  Stored as a JSON string holding the object, and plaintext (a request)
    const char *wrapped = "\"{\\\"model\\\": \\\"gpt-4o\\\", \\\"api_key\\\": \\\"k\\\"}\"";
    ZG_CHECK (zg_model_decode (&model, NULL, "id-2", "g", wrapped, "null", errbuf, sizeof (errbuf)) == 0);
    ZG_CHECK (strcmp (model.deployment.provider, "openai") == 0);
    ZG_CHECK (strcmp (model.deployment.api_base, ZG_CONFIG_DEFAULT_API_BASE) == 0);
    ZG_CHECK (strcmp (model.model_info, "{}") == 0);
    zg_model_clear (&model);

    //  os.environ/ references are read at load
    setenv ("ZG_MODEL_STORE_TEST_KEY", "sk-from-env", 1);
    ZG_CHECK (zg_model_decode (&model, NULL, "id-3", "g",
                               "{\"model\":\"hosted_vllm/m\",\"api_key\":\"os.environ/ZG_MODEL_STORE_TEST_KEY\"}",
                               NULL, errbuf, sizeof (errbuf)) == 0);
    ZG_CHECK (strcmp (model.deployment.api_key, "sk-from-env") == 0);
    zg_model_clear (&model);
    unsetenv ("ZG_MODEL_STORE_TEST_KEY");
    ZG_CHECK (zg_model_decode (&model, NULL, "id-3", "g",
                               "{\"model\":\"m\",\"api_key\":\"os.environ/ZG_MODEL_STORE_TEST_KEY\"}",
                               NULL, errbuf, sizeof (errbuf)) == -1);
    ZG_CHECK (strstr (errbuf, "ZG_MODEL_STORE_TEST_KEY is not set"));

    //  Bad rows
    struct { const char *params; const char *info; const char *error; } bad [] = {
        { "{\"api_key\":\"k\"}", NULL, "litellm_params.model is required" },
        { "{\"model\":\"\"}", NULL, "litellm_params.model is required" },
        { "{\"model\":\"azure/gpt-4o\"}", NULL, "provider 'azure' is not supported" },
        { "{\"model\":\"openai/\"}", NULL, "expected \"<provider>/<model>\"" },
        { "{\"model\":\"m\",\"rpm\":\"fast\"}", NULL, "litellm_params.rpm: expected a number" },
        { "{\"model\":\"m\",\"rpm\":1.5}", NULL, "litellm_params.rpm: expected a whole number" },
        { "{\"model\":\"m\",\"timeout\":-1}", NULL, "litellm_params.timeout: expected a number >= 0" },
        { "{\"model\":7}", NULL, "litellm_params.model: expected a string" },
        { "[1]", NULL, "not a JSON object" },
        { "{\"model\":", NULL, "not valid JSON" },
        { "\"not json\"", NULL, "not a JSON object" },
        { "{\"model\":\"m\"}", "{bad", "model_info is not valid JSON" },
    };
    for (size_t index = 0; index < sizeof (bad) / sizeof (bad [0]); index++) {
        int rc = zg_model_decode (&model, NULL, "id", "name", bad [index].params, bad [index].info,
                                  errbuf, sizeof (errbuf));
        if (rc != -1 || !strstr (errbuf, bad [index].error))
            fprintf (stderr, "zg_model_store: %s: got \"%s\"\n", bad [index].params, errbuf);
        ZG_CHECK (rc == -1 && strstr (errbuf, bad [index].error));
    }
    ZG_CHECK (zg_model_decode (&model, NULL, "", "name", "{\"model\":\"m\"}", NULL,
                               errbuf, sizeof (errbuf)) == -1);
    ZG_CHECK (zg_model_decode (&model, NULL, "id", NULL, "{\"model\":\"m\"}", NULL,
                               errbuf, sizeof (errbuf)) == -1);

    //  Encrypting refuses what is not an object, and works without a key never
    ZG_CHECK (!zg_model_encrypt_params (salt, "[1]", 3, errbuf, sizeof (errbuf)));
    ZG_CHECK (!zg_model_encrypt_params (salt, "{", 1, errbuf, sizeof (errbuf)));
    ZG_CHECK (!zg_model_encrypt_params (NULL, "{}", 2, errbuf, sizeof (errbuf)));
    ZG_CHECK (strstr (errbuf, "LITELLM_SALT_KEY"));
    char *empty = zg_model_encrypt_params (salt, " { } ", 5, errbuf, sizeof (errbuf));
    ZG_CHECK (empty && strcmp (empty, "{}") == 0);
    free (empty);

    ZG_CHECK (zg_model_param_is_secret ("api_key") && !zg_model_param_is_secret ("api_base"));
    if (verbose)
        printf ("OK\n");
}
