/*  =========================================================================
    zg_provider_openai - the OpenAI API and the servers that copy it

    Serves openai, text-completion-openai, custom_openai, openai_like and
    hosted_vllm: Bearer credentials, /chat/completions, /completions and
    /embeddings under api_base, usage in a top-level "usage" object, and
    for streams a last chunk with empty "choices" that carries the usage
    when stream_options.include_usage is true.
    =========================================================================
*/
#include "workers/zg_provider.h"
#include "common/zg_json.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define DEFAULT_API_BASE "https://api.openai.com/v1"

static int
s_build_url (const zg_deployment_wire_t *deployment, int route, char *url, size_t size)
{
    //  Built for every call: copies, not snprintf (0.2 us of the worker's
    //  time per chat call)
    const char *path;
    size_t path_size;
    switch (route) {
        case ZG_ROUTE_CHAT:        path = "/chat/completions"; break;
        case ZG_ROUTE_COMPLETIONS: path = "/completions"; break;
        case ZG_ROUTE_EMBEDDINGS:  path = "/embeddings"; break;
        default: return -1;
    }
    path_size = strlen (path);
    const char *base = deployment->api_base [0] ? deployment->api_base : DEFAULT_API_BASE;
    size_t base_size = strlen (base);
    while (base_size > 0 && base [base_size - 1] == '/')
        base_size--;
    if (base_size + path_size + 1 > size)
        return -1;
    memcpy (url, base, base_size);
    memcpy (url + base_size, path, path_size + 1);
    return 0;
}

static struct curl_slist *
s_request_headers (const zg_deployment_wire_t *deployment)
{
    struct curl_slist *list = NULL;
    if (deployment->api_key [0]) {
        char authorization [sizeof (deployment->api_key) + 32];
        snprintf (authorization, sizeof (authorization), "Authorization: Bearer %s",
                  deployment->api_key);
        list = curl_slist_append (list, authorization);
        //  The key does not stay on the stack longer than needed
        memset (authorization, 0, sizeof (authorization));
        if (!list)
            return NULL;
    }
    struct curl_slist *grown = curl_slist_append (list, "Content-Type: application/json");
    //  An empty value removes the header: libcurl would otherwise send
    //  "Expect: 100-continue" for large bodies and wait a round trip
    if (grown)
        grown = curl_slist_append (grown, "Expect:");
    if (!grown) {
        curl_slist_free_all (list);
        return NULL;
    }
    return grown;
}

//  One change to the request bytes: replace [offset, offset + removed)
//  with text
typedef struct {
    size_t offset;
    size_t removed;
    const char *text;
    size_t text_size;
} splice_t;

static size_t
s_skip_space (const char *data, size_t size, size_t at)
{
    while (at < size && (data [at] == ' ' || data [at] == '\t'
                     ||  data [at] == '\n' || data [at] == '\r'))
        at++;
    return at;
}

//  True if the object or array at span has no members
static bool
s_container_empty (const char *data, size_t size, const zg_json_span_t *span)
{
    size_t inside = s_skip_space (data, size, span->offset + 1);
    return inside < size && (data [inside] == '}' || data [inside] == ']');
}

static bool
s_is_space (char byte)
{
    return byte == ' ' || byte == '\t' || byte == '\n' || byte == '\r';
}

//  True if span (zg_msg_span) lies inside the object (open, close) and
//  holds a member's value bracketed by first and last (a closing quote
//  not escaped) that follows its ':'
static bool
s_member_value_at (const char *body, size_t open, size_t close, uint64_t span,
                   char first, char last)
{
    uint64_t offset = zg_msg_span_offset (span), length = zg_msg_span_length (span);
    if (offset <= open || length < 2 || offset + length > close
    ||  body [offset] != first || body [offset + length - 1] != last)
        return false;
    if (last == '"') {
        size_t escapes = 0;
        while (escapes < length - 2 && body [offset + length - 2 - escapes] == '\\')
            escapes++;
        if (escapes % 2)
            return false;
    }
    size_t before = offset;
    while (before > open + 1 && s_is_space (body [before - 1]))
        before--;
    return body [before - 1] == ':';
}

//  With ZG_FLAG_BODY_LOCATED, the frontend validated the body and sent
//  where its model and stream_options lie. Used if they point where they
//  say: the object's braces with only white space around them, a string
//  model and an object stream_options inside it after their ':', apart
//  from each other. The decoder checked the bounds against the payload;
//  they are checked again, cheaply, since a provider is handed spans by
//  whoever calls it.
static bool
s_spans_usable (const char *body, size_t size, uint32_t flags, uint64_t model_span,
                uint64_t options_span, size_t *open, size_t *close)
{
    if (!(flags & ZG_FLAG_BODY_LOCATED))
        return false;
    size_t start = s_skip_space (body, size, 0), end = size;
    while (end > start && s_is_space (body [end - 1]))
        end--;
    if (end - start < 2 || body [start] != '{' || body [end - 1] != '}')
        return false;
    *open = start;
    *close = end - 1;
    if (model_span && !s_member_value_at (body, *open, *close, model_span, '"', '"'))
        return false;
    if (options_span && !s_member_value_at (body, *open, *close, options_span, '{', '}'))
        return false;
    if (model_span && options_span) {
        uint64_t model = zg_msg_span_offset (model_span);
        uint64_t options = zg_msg_span_offset (options_span);
        if (model + zg_msg_span_length (model_span) > options
        &&  options + zg_msg_span_length (options_span) > model)
            return false;
    }
    return true;
}

static int
s_rewrite_body (const zg_deployment_wire_t *deployment, uint32_t flags,
                const char *body, size_t size, uint64_t model_span, uint64_t options_span,
                zg_buffer_t *out)
{
    if (!body || size == 0)
        return 0;
    zg_json_span_t found [2];
    zg_json_span_t top = { .type = ZG_JSON_OBJECT };
    size_t closing;                     //  the top-level object's '}'
    if (s_spans_usable (body, size, flags, model_span, options_span, &top.offset, &closing)) {
        found [0] = (zg_json_span_t) {
            .type = model_span? ZG_JSON_STRING: ZG_JSON_NONE,
            .offset = zg_msg_span_offset (model_span),
            .length = zg_msg_span_length (model_span) };
        found [1] = (zg_json_span_t) {
            .type = options_span? ZG_JSON_OBJECT: ZG_JSON_NONE,
            .offset = zg_msg_span_offset (options_span),
            .length = zg_msg_span_length (options_span) };
    }
    else {
        //  A body that is not a JSON object goes upstream as it is: the
        //  upstream answers it with its own 400, which the client then sees
        static const char *const keys [] = { "model", "stream_options" };
        if (!zg_json_valid_find (body, size, NULL, keys, found, 2))
            return 0;
        top.offset = s_skip_space (body, size, 0);
        if (top.offset >= size || body [top.offset] != '{')
            return 0;
        closing = size;
        while (closing > top.offset && body [closing - 1] != '}')
            closing--;
        closing--;
    }
    bool members = !s_container_empty (body, size, &top);

    splice_t splices [3];
    size_t splice_count = 0;

    //  The model as the upstream knows it
    char model [ZG_NAME_MAX * 6 + 3];
    char model_member [sizeof (model) + 16];
    if (deployment->upstream_model [0]) {
        int model_size = zg_json_quote (deployment->upstream_model, model, sizeof (model));
        if (model_size < 0)
            return 0;
        const zg_json_span_t span = found [0];
        if (span.type != ZG_JSON_NONE) {
            if (span.length != (size_t) model_size
            ||  memcmp (body + span.offset, model, span.length) != 0)
                splices [splice_count++] = (splice_t) {
                    span.offset, span.length, model, (size_t) model_size };
        }
        else {
            int member_size = snprintf (model_member, sizeof (model_member), "\"model\":%s%s",
                                        model, members ? "," : "");
            splices [splice_count++] = (splice_t) {
                top.offset + 1, 0, model_member, (size_t) member_size };
            members = true;
        }
    }

    //  Usage must always be known, so a stream asks for its usage chunk
    //  even when the client did not (the worker strips it again)
    if ((flags & ZG_FLAG_STREAM) && !(flags & ZG_FLAG_CLIENT_USAGE)) {
        const zg_json_span_t options = found [1];
        if (options.type != ZG_JSON_NONE) {
            if (options.type == ZG_JSON_OBJECT) {
                zg_json_span_t include;
                if (zg_json_find_in (body, size, &options, "include_usage", &include)) {
                    if (include.type != ZG_JSON_TRUE)
                        splices [splice_count++] = (splice_t) {
                            include.offset, include.length, "true", 4 };
                }
                else
                if (s_container_empty (body, size, &options))
                    splices [splice_count++] = (splice_t) {
                        options.offset + 1, 0, "\"include_usage\":true", 20 };
                else
                    splices [splice_count++] = (splice_t) {
                        options.offset + 1, 0, "\"include_usage\":true,", 21 };
            }
            else
                splices [splice_count++] = (splice_t) {
                    options.offset, options.length, "{\"include_usage\":true}", 22 };
        }
        else {
            static const char member [] = ",\"stream_options\":{\"include_usage\":true}";
            size_t skip = members ? 0 : 1;
            splices [splice_count++] = (splice_t) {
                closing, 0, member + skip, sizeof (member) - 1 - skip };
        }
    }
    if (splice_count == 0)
        return 0;

    //  Apply in the order of the bytes; at most three, so a stable
    //  insertion sort keeps splices at the same offset in the order made
    for (size_t index = 1; index < splice_count; index++)
        for (size_t at = index; at > 0 && splices [at - 1].offset > splices [at].offset; at--) {
            splice_t swap = splices [at];
            splices [at] = splices [at - 1];
            splices [at - 1] = swap;
        }
    size_t total = size;
    for (size_t index = 0; index < splice_count; index++)
        total += splices [index].text_size;
    out->size = 0;
    if (zg_buffer_reserve (out, total))
        return -1;
    size_t copied = 0;
    for (size_t index = 0; index < splice_count; index++) {
        const splice_t *splice = &splices [index];
        zg_buffer_append (out, body + copied, splice->offset - copied);
        zg_buffer_append (out, splice->text, splice->text_size);
        copied = splice->offset + splice->removed;
    }
    zg_buffer_append (out, body + copied, size - copied);
    return 1;
}

//  A count brought into what the spend tables hold (zg_provider.h): the
//  only place usage enters, so every consumer (the spend row, the cost
//  computed from it, the metrics) sees the same numbers
static uint32_t
s_count_clamped (int64_t value, bool *clamped)
{
    if (value < 0) {
        *clamped = true;
        return 0;
    }
    if (value > ZG_USAGE_TOKENS_MAX) {
        *clamped = true;
        return ZG_USAGE_TOKENS_MAX;
    }
    return (uint32_t) value;
}

static uint32_t
s_count (const char *data, size_t size, const zg_json_span_t *usage, const char *key,
         bool *clamped)
{
    zg_json_span_t span;
    if (!zg_json_find_in (data, size, usage, key, &span))
        return 0;
    int64_t value;
    if (zg_json_int64 (data, &span, &value))
        return s_count_clamped (value, clamped);
    //  A number beyond int64 is beyond the limit too
    double real;
    if (zg_json_double (data, &span, &real) && (real > 0 || real < 0))
        return s_count_clamped (real > 0? INT64_MAX: -1, clamped);
    return 0;
}

//  Read the usage object (span, found in the document)
static bool
s_usage_of (const char *data, size_t size, const zg_json_span_t *found, zg_usage_t *usage)
{
    const zg_json_span_t span = *found;
    if (span.type != ZG_JSON_OBJECT)
        return false;
    usage->found = true;
    usage->clamped = false;
    usage->prompt_tokens = s_count (data, size, &span, "prompt_tokens", &usage->clamped);
    usage->completion_tokens = s_count (data, size, &span, "completion_tokens", &usage->clamped);
    usage->total_tokens = s_count (data, size, &span, "total_tokens", &usage->clamped);
    if (usage->total_tokens == 0)
        usage->total_tokens = s_count_clamped ((int64_t) usage->prompt_tokens
                                               + usage->completion_tokens, &usage->clamped);
    return true;
}

//  The answer goes to the client as it came; what the gateway needs of it
//  is the usage member, found without validating the whole document (the
//  validator's walk was 0.3 us of the worker's time per chat call). On a
//  malformed answer the finders stay inside the buffer (zg_json's self
//  test runs them on mutated documents) and at worst read counts from
//  broken bytes, which only the spend record sees.
static bool
s_usage_from_json (const char *body, size_t size, zg_usage_t *usage)
{
    zg_json_span_t found;
    if (!body || size == 0 || !zg_json_find (body, size, "usage", &found))
        return false;
    return s_usage_of (body, size, &found, usage);
}

static int
s_usage_from_event (const char *event, size_t size, zg_usage_t *usage)
{
    const char *data;
    size_t data_size;
    if (!zg_provider_event_data (event, size, &data, &data_size))
        return 0;
    //  Most chunks carry no usage at all: a byte search spares them the
    //  JSON scan
    static const char *const keys [] = { "usage", "choices" };
    zg_json_span_t found [2];
    if (!memmem (data, data_size, "\"usage\"", 7)
    ||  !zg_json_valid_find (data, data_size, NULL, keys, found, 2)
    ||  !s_usage_of (data, data_size, &found [0], usage))
        return 0;
    int result = ZG_PROVIDER_EVENT_USAGE;
    const zg_json_span_t choices = found [1];
    if (choices.type == ZG_JSON_ARRAY
    &&  s_container_empty (data, data_size, &choices))
        result |= ZG_PROVIDER_EVENT_USAGE_ONLY;
    return result;
}

static void
s_map_failure (const zg_deployment_wire_t *deployment,
               const zg_provider_failure_t *failure, zg_provider_error_t *error)
{
    if (failure->timed_out || failure->code == CURLE_OPERATION_TIMEDOUT) {
        char seconds [32];
        zg_provider_format_seconds (failure->timeout_ms, seconds, sizeof (seconds));
        error->status = 408;
        ZG_MSG_SET (error->err_type, "timeout");
        snprintf (error->message, sizeof (error->message),
                  "litellm.Timeout: Request timed out after %s seconds (deployment %s)",
                  seconds, deployment->id);
        return;
    }
    const char *text = failure->curl_error && failure->curl_error [0]
                     ? failure->curl_error : curl_easy_strerror (failure->code);
    error->status = 502;
    ZG_MSG_SET (error->err_type, "api_connection_error");
    snprintf (error->message, sizeof (error->message),
              "litellm.APIConnectionError: %s", text);
}

static uint16_t
s_map_status (uint16_t upstream_status)
{
    //  OpenAI's statuses and error bodies are already what clients expect
    return upstream_status;
}

const zg_provider_t zg_provider_openai = {
    .name = "openai",
    .build_url = s_build_url,
    .request_headers = s_request_headers,
    .rewrite_body = s_rewrite_body,
    .usage_from_json = s_usage_from_json,
    .usage_from_event = s_usage_from_event,
    .map_failure = s_map_failure,
    .map_status = s_map_status,
};
