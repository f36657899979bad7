/*  =========================================================================
    test_workers - the provider's request rewriting and the worker actor

    The worker runs in a forked process, forked before this process makes
    its ZeroMQ context; this process plays the router on an ipc endpoint in
    a temporary directory and drives the fake OpenAI upstream
    (fakeupstream/fake_upstream, found next to this test's build folder).
    =========================================================================
*/
#include "workers/zg_worker.h"
#include "workers/zg_provider.h"
#include "workers/zg_buffer.h"
#include "workers/zg_sse.h"
#include "workers/zg_prices.h"
#include "proto/zg_msg.h"
#include "common/zg_json.h"
#include "common/zg_log.h"

#include <czmq.h>
#include <curl/curl.h>
#include <arpa/inet.h>
#include <fcntl.h>
#include <libgen.h>
#include <math.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

static int s_passed;
static int s_failed;

#define CHECK(condition) do { \
    if (condition) s_passed++; \
    else { s_failed++; fprintf (stderr, "FAIL %s:%d: %s\n", __FILE__, __LINE__, #condition); } \
} while (0)

#define CHECK_STR(actual, expected) do { \
    const char *a_ = (actual), *e_ = (expected); \
    if (a_ && e_ && strcmp (a_, e_) == 0) s_passed++; \
    else { s_failed++; fprintf (stderr, "FAIL %s:%d: %s\n   got:      %s\n   expected: %s\n", \
                                __FILE__, __LINE__, #actual, a_ ? a_ : "(null)", e_ ? e_ : "(null)"); } \
} while (0)

//  ---------------------------------------------------------------------
//  The provider, without processes

static zg_deployment_wire_t
s_deployment (const char *upstream_model)
{
    zg_deployment_wire_t deployment;
    memset (&deployment, 0, sizeof (deployment));
    ZG_MSG_SET (deployment.id, "dep-1");
    ZG_MSG_SET (deployment.provider, "openai");
    ZG_MSG_SET (deployment.upstream_model, upstream_model);
    deployment.input_cost_per_token = -1;
    deployment.output_cost_per_token = -1;
    return deployment;
}

//  The body as the upstream would get it, with the given spans (with
//  ZG_FLAG_BODY_LOCATED in flags); "=" when unchanged
static char *
s_rewrite_spans (uint32_t flags, const char *upstream_model, const char *body,
                 uint64_t model_span, uint64_t options_span)
{
    zg_deployment_wire_t deployment = s_deployment (upstream_model);
    zg_buffer_t out = { NULL, 0, 0 };
    int rc = zg_provider_openai.rewrite_body (&deployment, flags, body, strlen (body),
                                              model_span, options_span, &out);
    char *result;
    if (rc == 0)
        result = strdup ("=");
    else
    if (rc < 0)
        result = strdup ("(error)");
    else {
        result = (char *) malloc (out.size + 1);
        memcpy (result, out.data, out.size);
        result [out.size] = 0;
    }
    zg_buffer_release (&out);
    return result;
}

//  The spans as the frontend locates them (frontend/zg_frontend.c,
//  s_locate_body): false when it would send none
static bool
s_locate (const char *body, uint64_t *model_span, uint64_t *options_span)
{
    static const char *const keys [] = { "model", "stream", "stream_options" };
    zg_json_span_t found [3];
    size_t size = strlen (body);
    *model_span = *options_span = 0;
    if (!zg_json_valid_find (body, size, NULL, keys, found, 3)
    ||  body [strspn (body, " \t\r\n")] != '{'
    ||  (found [0].type != ZG_JSON_NONE && found [0].type != ZG_JSON_STRING)
    ||  (found [2].type != ZG_JSON_NONE && found [2].type != ZG_JSON_OBJECT))
        return false;
    if (found [0].type == ZG_JSON_STRING)
        *model_span = zg_msg_span ((uint32_t) found [0].offset, (uint32_t) found [0].length);
    if (found [2].type == ZG_JSON_OBJECT)
        *options_span = zg_msg_span ((uint32_t) found [2].offset, (uint32_t) found [2].length);
    return true;
}

static int s_located_bodies;

//  The body as the upstream would get it; "=" when unchanged. The same
//  with no spans (the scan), with the frontend's spans, and with spans
//  that do not point where they say (the scan again).
static char *
s_rewrite (uint32_t flags, const char *upstream_model, const char *body)
{
    char *scanned = s_rewrite_spans (flags, upstream_model, body, 0, 0);
    uint64_t model, options;
    if (!s_locate (body, &model, &options))
        return scanned;
    s_located_bodies++;
    const uint32_t located = flags | ZG_FLAG_BODY_LOCATED;
    char *with_spans = s_rewrite_spans (located, upstream_model, body, model, options);
    CHECK_STR (with_spans, scanned);
    free (with_spans);
    const uint64_t one_on = UINT64_C (1) << 32, one_more = 1;
    for (int wrong = 0; wrong < 10; wrong++) {
        uint64_t model_span = model, options_span = options;
        uint32_t used_flags = located;
        switch (wrong) {
            case 0:  used_flags = flags; break;                  //  said not located
            case 1:  if (!model) continue; model_span -= one_on; break;
            case 2:  if (!model) continue; model_span += one_on; break;
            case 3:  if (!model) continue; model_span += one_more; break;
            case 4:  if (!model) continue; model_span -= one_more; break;
            case 5:  if (!model) continue; model_span = zg_msg_span (0, 3); break;
            case 6:  if (!options) continue; options_span -= one_on; break;
            case 7:  if (!options) continue; options_span += one_on; break;
            case 8:  if (!options) continue; options_span += one_more; break;
            default:
                if (!model || !options) continue;
                options_span = model_span;
                break;
        }
        char *wrong_spans = s_rewrite_spans (used_flags, upstream_model, body, model_span,
                                             options_span);
        if (strcmp (wrong_spans, scanned) != 0)
            fprintf (stderr, "wrong spans %d used on %s\n", wrong, body);
        CHECK_STR (wrong_spans, scanned);
        free (wrong_spans);
    }
    return scanned;
}

#define CHECK_REWRITE(flags, model, body, expected) do { \
    char *rewritten_ = s_rewrite ((flags), (model), (body)); \
    CHECK_STR (rewritten_, (expected)); \
    free (rewritten_); \
} while (0)

static void
s_test_provider (void)
{
    const uint32_t stream = ZG_FLAG_STREAM;
    const uint32_t stream_usage = ZG_FLAG_STREAM | ZG_FLAG_CLIENT_USAGE;

    //  The model, and nothing else
    CHECK_REWRITE (0, "up", "{\"model\":\"gpt-4o\",\"messages\":[]}",
                   "{\"model\":\"up\",\"messages\":[]}");
    CHECK_REWRITE (0, "up", " { \"messages\" : [ ] ,\n\t\"model\"  :  \"gpt-4o\" , \"n\":1 }\n",
                   " { \"messages\" : [ ] ,\n\t\"model\"  :  \"up\" , \"n\":1 }\n");
    CHECK_REWRITE (0, "gpt-4o", "{\"model\":\"gpt-4o\"}", "=");
    //  Escapes: a "model" inside a string or a nested object is not the model
    CHECK_REWRITE (0, "up",
                   "{\"messages\":[{\"content\":\"say \\\"model\\\": \\\"x\\\" \\u00e9\"}],"
                   "\"metadata\":{\"model\":\"inner\"},\"model\":\"a\\\"b\\\\c\"}",
                   "{\"messages\":[{\"content\":\"say \\\"model\\\": \\\"x\\\" \\u00e9\"}],"
                   "\"metadata\":{\"model\":\"inner\"},\"model\":\"up\"}");
    CHECK_REWRITE (0, "org/m\"odel", "{\"model\":\"x\"}", "{\"model\":\"org/m\\\"odel\"}");
    CHECK_REWRITE (0, "up", "{\"model\":null}", "{\"model\":\"up\"}");
    CHECK_REWRITE (0, "up", "{\"messages\":[]}", "{\"model\":\"up\",\"messages\":[]}");
    CHECK_REWRITE (0, "up", "{}", "{\"model\":\"up\"}");
    //  What is not a JSON object goes as it is
    CHECK_REWRITE (0, "up", "{\"model\":\"x\",}", "=");
    CHECK_REWRITE (0, "up", "[{\"model\":\"x\"}]", "=");
    CHECK_REWRITE (0, "up", "", "=");

    //  Streams ask for usage
    CHECK_REWRITE (stream, "up", "{\"model\":\"m\",\"stream\":true}",
                   "{\"model\":\"up\",\"stream\":true,\"stream_options\":{\"include_usage\":true}}");
    CHECK_REWRITE (stream, "m", "{\"model\":\"m\", \"stream\": true }\n",
                   "{\"model\":\"m\", \"stream\": true ,\"stream_options\":{\"include_usage\":true}}\n");
    CHECK_REWRITE (stream, "up", "{}",
                   "{\"model\":\"up\",\"stream_options\":{\"include_usage\":true}}");
    CHECK_REWRITE (stream, "m",
                   "{\"stream_options\": {\"include_usage\": false}, \"model\":\"m\"}",
                   "{\"stream_options\": {\"include_usage\": true}, \"model\":\"m\"}");
    CHECK_REWRITE (stream, "m", "{\"stream_options\":null,\"model\":\"m\"}",
                   "{\"stream_options\":{\"include_usage\":true},\"model\":\"m\"}");
    CHECK_REWRITE (stream, "m", "{\"model\":\"m\",\"stream_options\":{ }}",
                   "{\"model\":\"m\",\"stream_options\":{\"include_usage\":true }}");
    CHECK_REWRITE (stream, "up", "{\"model\":\"m\",\"stream_options\":{\"x\":1}}",
                   "{\"model\":\"up\",\"stream_options\":{\"include_usage\":true,\"x\":1}}");
    CHECK_REWRITE (stream, "m", "{\"model\":\"m\",\"stream_options\":{\"include_usage\":true}}", "=");
    //  A nested stream_options is not the request's
    CHECK_REWRITE (stream, "m", "{\"model\":\"m\",\"x\":{\"stream_options\":null}}",
                   "{\"model\":\"m\",\"x\":{\"stream_options\":null},"
                   "\"stream_options\":{\"include_usage\":true}}");
    //  The client asked for usage itself: only the model changes
    CHECK_REWRITE (stream_usage, "up",
                   "{\"model\":\"m\",\"stream\":true,\"stream_options\":{\"include_usage\":true}}",
                   "{\"model\":\"up\",\"stream\":true,\"stream_options\":{\"include_usage\":true}}");
    CHECK_REWRITE (0, "up", " {\"model\" : \"a\\\"\"}  ", " {\"model\" : \"up\"}  ");
    CHECK_REWRITE (stream, "up", "\r\n{\"stream_options\":{\"x\":{}},\"model\":\"\"}\t",
                   "\r\n{\"stream_options\":{\"include_usage\":true,\"x\":{}},\"model\":\"up\"}\t");
    //  All but the five that are invalid or hold a model or stream_options
    //  of another type were located as the frontend would
    CHECK (s_located_bodies == 18);

    //  The spans are used as they are, not looked for again: a model span
    //  that points at another string value of the body is believed
    {
        const char *body = "{\"metadata\":{\"model\":\"inner\"},\"model\":\"a\"}";
        const char *spliced = "{\"metadata\":{\"model\":\"up\"},\"model\":\"a\"}";
        const char *scanned = "{\"metadata\":{\"model\":\"inner\"},\"model\":\"up\"}";
        char *rewritten = s_rewrite_spans (ZG_FLAG_BODY_LOCATED, "up", body,
                                           zg_msg_span (21, 7), 0);
        CHECK_STR (rewritten, spliced);
        free (rewritten);
        //  Not located, or located outside the body or the object: scanned
        rewritten = s_rewrite_spans (0, "up", body, zg_msg_span (21, 7), 0);
        CHECK_STR (rewritten, scanned);
        free (rewritten);
        rewritten = s_rewrite_spans (ZG_FLAG_BODY_LOCATED, "up", body,
                                     zg_msg_span (UINT32_MAX - 2, 2), 0);
        CHECK_STR (rewritten, scanned);
        free (rewritten);
        rewritten = s_rewrite_spans (ZG_FLAG_BODY_LOCATED, "up", body, UINT64_MAX, 0);
        CHECK_STR (rewritten, scanned);
        free (rewritten);
        rewritten = s_rewrite_spans (ZG_FLAG_BODY_LOCATED, "up", body, zg_msg_span (21, 7),
                                     zg_msg_span (40, 3));
        CHECK_STR (rewritten, scanned);
        free (rewritten);
        //  A body that is not an object, even said located: as it is
        rewritten = s_rewrite_spans (ZG_FLAG_BODY_LOCATED, "up", "[\"model\",\"x\"]",
                                     zg_msg_span (9, 3), 0);
        CHECK_STR (rewritten, "=");
        free (rewritten);
    }

    //  URLs
    zg_deployment_wire_t deployment = s_deployment ("up");
    char url [ZG_URL_MAX + 64];
    ZG_MSG_SET (deployment.api_base, "http://127.0.0.1:9/v1//");
    CHECK (zg_provider_openai.build_url (&deployment, ZG_ROUTE_CHAT, url, sizeof (url)) == 0);
    CHECK_STR (url, "http://127.0.0.1:9/v1/chat/completions");
    CHECK (zg_provider_openai.build_url (&deployment, ZG_ROUTE_COMPLETIONS, url, sizeof (url)) == 0);
    CHECK_STR (url, "http://127.0.0.1:9/v1/completions");
    CHECK (zg_provider_openai.build_url (&deployment, ZG_ROUTE_EMBEDDINGS, url, sizeof (url)) == 0);
    CHECK_STR (url, "http://127.0.0.1:9/v1/embeddings");
    CHECK (zg_provider_openai.build_url (&deployment, 99, url, sizeof (url)) == -1);
    CHECK (zg_provider_openai.build_url (&deployment, ZG_ROUTE_CHAT, url, 10) == -1);
    deployment.api_base [0] = 0;
    CHECK (zg_provider_openai.build_url (&deployment, ZG_ROUTE_CHAT, url, sizeof (url)) == 0);
    CHECK_STR (url, "https://api.openai.com/v1/chat/completions");

    //  Headers
    ZG_MSG_SET (deployment.api_key, "sk-secret");
    struct curl_slist *headers = zg_provider_openai.request_headers (&deployment);
    CHECK (headers && strcmp (headers->data, "Authorization: Bearer sk-secret") == 0);
    bool expect = false, content_type = false;
    for (struct curl_slist *item = headers; item; item = item->next) {
        expect |= strcmp (item->data, "Expect:") == 0;
        content_type |= strcmp (item->data, "Content-Type: application/json") == 0;
    }
    CHECK (expect && content_type);
    curl_slist_free_all (headers);
    deployment.api_key [0] = 0;
    headers = zg_provider_openai.request_headers (&deployment);
    CHECK (headers && strncmp (headers->data, "Authorization", 13) != 0);
    curl_slist_free_all (headers);

    //  Usage
    zg_usage_t usage = { .found = false };
    const char *reply = "{\"id\":\"x\",\"choices\":[{\"message\":{\"usage\":1}}],"
                        "\"usage\": {\"prompt_tokens\": 10, \"completion_tokens\": 8, \"total_tokens\": 18}}";
    CHECK (zg_provider_openai.usage_from_json (reply, strlen (reply), &usage));
    CHECK (usage.found && usage.prompt_tokens == 10 && usage.completion_tokens == 8
           && usage.total_tokens == 18);
    const char *embedding = "{\"data\":[],\"usage\":{\"prompt_tokens\":5,\"total_tokens\":5}}";
    memset (&usage, 0, sizeof (usage));
    CHECK (zg_provider_openai.usage_from_json (embedding, strlen (embedding), &usage));
    CHECK (usage.prompt_tokens == 5 && usage.completion_tokens == 0 && usage.total_tokens == 5);
    CHECK (!usage.clamped);
    //  Counts beyond what the spend tables hold are recorded at the limit,
    //  below 0 as 0, and said so; a total from clamped parts is clamped too
    const char *huge = "{\"usage\":{\"prompt_tokens\":3000000000,\"completion_tokens\":-7,"
                       "\"total_tokens\":99999999999999999999}}";
    CHECK (zg_provider_openai.usage_from_json (huge, strlen (huge), &usage));
    CHECK (usage.clamped && usage.prompt_tokens == ZG_USAGE_TOKENS_MAX
           && usage.completion_tokens == 0 && usage.total_tokens == ZG_USAGE_TOKENS_MAX);
    const char *parts = "{\"usage\":{\"prompt_tokens\":2147483647,\"completion_tokens\":2147483647}}";
    CHECK (zg_provider_openai.usage_from_json (parts, strlen (parts), &usage));
    CHECK (usage.clamped && usage.prompt_tokens == ZG_USAGE_TOKENS_MAX
           && usage.completion_tokens == ZG_USAGE_TOKENS_MAX
           && usage.total_tokens == ZG_USAGE_TOKENS_MAX);
    const char *at_limit = "{\"usage\":{\"prompt_tokens\":2147483647,\"total_tokens\":2147483647}}";
    CHECK (zg_provider_openai.usage_from_json (at_limit, strlen (at_limit), &usage));
    CHECK (!usage.clamped && usage.prompt_tokens == ZG_USAGE_TOKENS_MAX
           && usage.total_tokens == ZG_USAGE_TOKENS_MAX);
    const char *huge_event = "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":4294967296}}\n\n";
    CHECK (zg_provider_openai.usage_from_event (huge_event, strlen (huge_event), &usage)
           == (ZG_PROVIDER_EVENT_USAGE | ZG_PROVIDER_EVENT_USAGE_ONLY));
    CHECK (usage.clamped && usage.prompt_tokens == ZG_USAGE_TOKENS_MAX
           && usage.total_tokens == ZG_USAGE_TOKENS_MAX);
    CHECK (!zg_provider_openai.usage_from_json ("{\"usage\":null}", 14, &usage));
    CHECK (!zg_provider_openai.usage_from_json ("not json", 8, &usage));

    const char *usage_event = "data: {\"id\":\"c\",\"choices\":[],\"usage\":{\"prompt_tokens\":3,"
                              "\"completion_tokens\":4,\"total_tokens\":7}}\r\n\r\n";
    memset (&usage, 0, sizeof (usage));
    CHECK (zg_provider_openai.usage_from_event (usage_event, strlen (usage_event), &usage)
           == (ZG_PROVIDER_EVENT_USAGE | ZG_PROVIDER_EVENT_USAGE_ONLY));
    CHECK (usage.prompt_tokens == 3 && usage.completion_tokens == 4 && usage.total_tokens == 7);
    const char *content_event = "data: {\"choices\":[{\"delta\":{\"content\":\"\\\"usage\\\"\"}}],"
                                "\"usage\":null}\n\n";
    CHECK (zg_provider_openai.usage_from_event (content_event, strlen (content_event), &usage) == 0);
    const char *both_event = "data:{\"choices\":[{\"delta\":{}}],\"usage\":{\"prompt_tokens\":1}}\n\n";
    CHECK (zg_provider_openai.usage_from_event (both_event, strlen (both_event), &usage)
           == ZG_PROVIDER_EVENT_USAGE);
    CHECK (zg_provider_openai.usage_from_event ("data: [DONE]\n\n", 14, &usage) == 0);
    CHECK (zg_provider_openai.usage_from_event (": comment\n\n", 11, &usage) == 0);

    //  Failures
    zg_deployment_wire_t failing = s_deployment ("up");
    ZG_MSG_SET (failing.api_key, "sk-never-shown");
    zg_provider_error_t error;
    zg_provider_failure_t timeout = { CURLE_OPERATION_TIMEDOUT, "", true, 300 };
    zg_provider_openai.map_failure (&failing, &timeout, &error);
    CHECK (error.status == 408);
    CHECK_STR (error.err_type, "timeout");
    CHECK_STR (error.message, "litellm.Timeout: Request timed out after 0.3 seconds (deployment dep-1)");
    timeout.timeout_ms = 600000;
    zg_provider_openai.map_failure (&failing, &timeout, &error);
    CHECK_STR (error.message, "litellm.Timeout: Request timed out after 600.0 seconds (deployment dep-1)");
    zg_provider_failure_t refused = { CURLE_COULDNT_CONNECT, "Failed to connect", false, 0 };
    zg_provider_openai.map_failure (&failing, &refused, &error);
    CHECK (error.status == 502);
    CHECK_STR (error.err_type, "api_connection_error");
    CHECK_STR (error.message, "litellm.APIConnectionError: Failed to connect");
    refused.curl_error = "";
    zg_provider_openai.map_failure (&failing, &refused, &error);
    CHECK (strstr (error.message, curl_easy_strerror (CURLE_COULDNT_CONNECT)) != NULL);
    CHECK (zg_provider_openai.map_status (429) == 429);

    //  The table
    CHECK (zg_provider_find ("openai") == &zg_provider_openai);
    CHECK (zg_provider_find ("hosted_vllm") == &zg_provider_openai);
    CHECK (zg_provider_find ("text-completion-openai") == &zg_provider_openai);
    CHECK (zg_provider_find ("custom_openai") == &zg_provider_openai);
    CHECK (zg_provider_find ("openai_like") == &zg_provider_openai);
    CHECK (zg_provider_find ("nonsense") == NULL);
    CHECK (zg_provider_find (NULL) == NULL);

    //  The buffer
    zg_buffer_t buffer = { NULL, 0, 0 };
    CHECK (zg_buffer_append (&buffer, "hello world", 11) == 0);
    zg_buffer_consume (&buffer, 6);
    CHECK (buffer.size == 5 && memcmp (buffer.data, "world", 5) == 0);
    zg_buffer_trim (&buffer, 1 << 20);
    CHECK (buffer.size == 0 && buffer.data != NULL);
    zg_buffer_trim (&buffer, 16);
    CHECK (buffer.data == NULL);
    zg_buffer_release (&buffer);
}

//  Events of text fed in two pieces split at split, joined with '|'
static void
s_sse_split (const char *text, size_t split, char *out, size_t out_size)
{
    zg_sse_scanner_t scanner;
    zg_sse_scanner_reset (&scanner);
    size_t size = strlen (text);
    size_t start = 0;           //  first byte of the current event
    size_t arrived = split;
    out [0] = 0;
    while (true) {
        bool last = arrived == size;
        size_t end = zg_sse_event_end (&scanner, text + start, arrived - start, last);
        if (end) {
            strncat (out, text + start, end);
            strncat (out, "|", out_size - strlen (out) - 1);
            start += end;
            continue;
        }
        if (last)
            break;
        arrived = size;
    }
}

static void
s_test_sse (void)
{
    const char *text = "data: a\n\ndata: b\r\n\r\n: note\r\rdata: {\"x\":1}\r\n"
                       "data: 2\n\n\ndata: tail\n";
    const char *expected = "data: a\n\n|data: b\r\n\r\n|: note\r\r|data: {\"x\":1}\r\n"
                           "data: 2\n\n|\n|data: tail\n|";
    bool all_equal = true;
    for (size_t split = 0; split <= strlen (text); split++) {
        char events [512];
        s_sse_split (text, split, events, sizeof (events));
        if (strcmp (events, expected) != 0) {
            fprintf (stderr, "split at %zu: %s\n", split, events);
            all_equal = false;
        }
    }
    CHECK (all_equal);
    //  A \r at the end of a read waits for what follows
    zg_sse_scanner_t scanner;
    zg_sse_scanner_reset (&scanner);
    CHECK (zg_sse_event_end (&scanner, "data: x\r\r", 9, false) == 0);
    CHECK (zg_sse_event_end (&scanner, "data: x\r\r\n", 10, false) == 10);
    CHECK (zg_sse_event_end (&scanner, "", 0, true) == 0);
}

//  ---------------------------------------------------------------------
//  Processes: the fake upstream and the worker

#define WORKER_NAME     "wtest"
#define WORKER_CAPACITY 4
#define HEARTBEAT_MS    500
#define WAIT_MS         15000       //  safety net only

typedef struct {
    pid_t pid;
    int   port;
} fake_t;

static char s_fake_path [4096];
static char s_temp_dir [256];
static char s_endpoint [512];
static pid_t s_worker_pid;
static zsock_t *s_router;
static zframe_t *s_worker_id;
static int s_readies;
static uint32_t s_ready_capacity;
static uint32_t s_ready_pid;
static char s_ready_name [ZG_NAME_MAX + 1];
static int s_heartbeats;
static uint32_t s_credits;
static bool s_answer_heartbeats = true;

static bool
s_find_fake (void)
{
    char self_path [4096];
    ssize_t length = readlink ("/proc/self/exe", self_path, sizeof (self_path) - 1);
    if (length <= 0)
        return false;
    self_path [length] = 0;
    snprintf (s_fake_path, sizeof (s_fake_path), "%s/../fakeupstream/fake_upstream",
              dirname (self_path));
    return access (s_fake_path, X_OK) == 0;
}

//  Starts fake_upstream --port 0 and reads the port it prints. Its output
//  goes to a file, so that it never blocks on a pipe nobody reads.
static int
s_fake_start (fake_t *fake, const char *extra)
{
    char out_path [600];
    snprintf (out_path, sizeof (out_path), "%s/fake_upstream.out", s_temp_dir);
    pid_t pid = fork ();
    if (pid < 0)
        return -1;
    if (pid == 0) {
        int out = open (out_path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
        if (out >= 0) {
            dup2 (out, STDOUT_FILENO);
            close (out);
        }
        if (extra)
            execl (s_fake_path, s_fake_path, "--port", "0", extra, (char *) NULL);
        else
            execl (s_fake_path, s_fake_path, "--port", "0", (char *) NULL);
        _exit (127);
    }
    fake->pid = pid;
    fake->port = 0;
    const char *marker = "listening on 127.0.0.1:";
    for (int tries = 0; tries < WAIT_MS / 20 && fake->port == 0; tries++) {
        char text [4096] = "";
        FILE *file = fopen (out_path, "r");
        if (file) {
            size_t got = fread (text, 1, sizeof (text) - 1, file);
            text [got] = 0;
            fclose (file);
        }
        const char *found = strstr (text, marker);
        if (found && strchr (found, '\n'))
            fake->port = atoi (found + strlen (marker));
        else
        if (waitpid (pid, NULL, WNOHANG) == pid) {
            fake->pid = 0;
            return -1;
        }
        else
            usleep (20 * 1000);
    }
    unlink (out_path);
    return fake->port > 0 ? 0 : -1;
}

//  SIGTERM, then SIGKILL if it does not stop; returns the exit status
//  (-1 when it had to be killed)
static int
s_process_stop (pid_t pid)
{
    if (pid <= 0)
        return -1;
    kill (pid, SIGTERM);
    int status = 0;
    for (int tries = 0; tries < 200; tries++) {
        if (waitpid (pid, &status, WNOHANG) == pid)
            return WIFEXITED (status) ? WEXITSTATUS (status) : -1;
        usleep (50 * 1000);
    }
    kill (pid, SIGKILL);
    waitpid (pid, NULL, 0);
    return -1;
}

//  status_pipe: NULL, or a pipe whose write end the worker gets as its
//  status descriptor. go_fd >= 0: the worker starts once a byte arrives
//  there (it is forked before this process has a ZeroMQ context, which a
//  child could not use)
static int s_go_pipe [2][2] = { { -1, -1 }, { -1, -1 } };

static pid_t
s_worker_start_recycled (uint64_t max_requests, int *status_pipe, int go_fd)
{
    pid_t pid = fork ();
    if (pid == 0) {
        for (int index = 0; index < 2; index++)
            if (s_go_pipe [index][1] >= 0)
                close (s_go_pipe [index][1]);
        char go;
        if (go_fd >= 0 && read (go_fd, &go, 1) != 1)
            exit (1);
        zg_log_init ("zgate.worker", false, false);
        zg_config_t config;
        memset (&config, 0, sizeof (config));
        config.worker_capacity = WORKER_CAPACITY;
        config.heartbeat_ms = HEARTBEAT_MS;
        int status_fd = -1;
        if (status_pipe) {
            close (status_pipe [0]);
            status_fd = status_pipe [1];
        }
        //  exit, not _exit: the sanitizers' leak check runs at exit
        exit (zg_worker_run (&config, s_endpoint, WORKER_NAME, max_requests, status_fd));
    }
    return pid;
}

static pid_t
s_worker_start (void)
{
    return s_worker_start_recycled (0, NULL, -1);
}

//  GET from the fake (libcurl easy); returns a new string or NULL
static size_t
s_collect_text (char *data, size_t size, size_t count, void *userp)
{
    zg_buffer_append ((zg_buffer_t *) userp, data, size * count);
    return size * count;
}

static char *
s_http_get (int port, const char *path)
{
    char url [256];
    snprintf (url, sizeof (url), "http://127.0.0.1:%d%s", port, path);
    zg_buffer_t text = { NULL, 0, 0 };
    CURL *easy = curl_easy_init ();
    curl_easy_setopt (easy, CURLOPT_URL, url);
    curl_easy_setopt (easy, CURLOPT_WRITEFUNCTION, s_collect_text);
    curl_easy_setopt (easy, CURLOPT_WRITEDATA, &text);
    curl_easy_setopt (easy, CURLOPT_TIMEOUT_MS, 5000L);
    CURLcode rc = curl_easy_perform (easy);
    curl_easy_cleanup (easy);
    if (rc != CURLE_OK) {
        zg_buffer_release (&text);
        return NULL;
    }
    zg_buffer_append (&text, "", 1);
    return text.data;
}

//  A string member of a JSON object (unescaped), into out; nested objects
//  through a dotted path of at most two keys
static bool
s_json_text (const char *json, const char *key, const char *inner, char *out, size_t size)
{
    if (!json || !zg_json_valid (json, strlen (json), NULL))
        return false;
    zg_json_span_t span, value;
    if (!zg_json_find (json, strlen (json), key, &span))
        return false;
    if (inner) {
        if (!zg_json_find_in (json, strlen (json), &span, inner, &value))
            return false;
        span = value;
    }
    return zg_json_string (json, &span, out, size) >= 0;
}

static int64_t
s_json_int (const char *json, const char *key)
{
    zg_json_span_t span;
    int64_t value = -1;
    if (json && zg_json_valid (json, strlen (json), NULL)
    &&  zg_json_find (json, strlen (json), key, &span))
        zg_json_int64 (json, &span, &value);
    return value;
}

//  ---------------------------------------------------------------------
//  Playing the router

//  Next message from the worker that is not bookkeeping. HEARTBEAT,
//  CREDIT and READY are counted (and heartbeats answered) on the way.
//  Returns 0, or -1 after timeout_ms.
static int
s_next (zg_msg_t *msg, int timeout_ms)
{
    int64_t deadline = zclock_mono () + timeout_ms;
    while (true) {
        int64_t left = deadline - zclock_mono ();
        if (left <= 0)
            return -1;
        zsock_set_rcvtimeo (s_router, (int) left);
        int rc = zg_msg_recv (msg, zsock_resolve (s_router));
        if (rc == ZG_MSG_ERR_IO)
            continue;
        if (rc != ZG_MSG_OK) {
            fprintf (stderr, "router: malformed message from the worker\n");
            continue;
        }
        if (msg->type == ZG_MSG_HEARTBEAT) {
            s_heartbeats++;
            if (s_answer_heartbeats) {
                zg_msg_t answer;
                zg_msg_init (&answer, ZG_MSG_HEARTBEAT);
                answer.routing_id = zframe_dup (msg->routing_id);
                ZG_MSG_SET (answer.name, "router");
                answer.pid = (uint32_t) getpid ();
                zg_msg_send (&answer, zsock_resolve (s_router));
                zg_msg_reset (&answer, 0);
            }
            continue;
        }
        if (msg->type == ZG_MSG_CREDIT) {
            s_credits += msg->credit;
            continue;
        }
        if (msg->type == ZG_MSG_READY) {
            s_readies++;
            s_ready_capacity = msg->capacity;
            s_ready_pid = msg->pid;
            ZG_MSG_SET (s_ready_name, msg->name);
            zframe_destroy (&s_worker_id);
            s_worker_id = zframe_dup (msg->routing_id);
            continue;
        }
        return 0;
    }
}

//  Keep the conversation going for a while, counting bookkeeping; any
//  other message is returned as unexpected (counted in *unexpected)
static void
s_pump (int milliseconds, int *unexpected)
{
    zg_msg_t msg;
    zg_msg_init (&msg, 0);
    int64_t deadline = zclock_mono () + milliseconds;
    while (zclock_mono () < deadline) {
        int left = (int) (deadline - zclock_mono ());
        if (left > 0 && s_next (&msg, left) == 0) {
            if (unexpected)
                (*unexpected)++;
            fprintf (stderr, "router: unexpected %s for %s\n",
                     zg_msg_type_name (msg.type), msg.call_id);
        }
    }
    zg_msg_reset (&msg, 0);
}

static bool
s_wait_for (int *counter, int above, int timeout_ms)
{
    int64_t deadline = zclock_mono () + timeout_ms;
    while (*counter <= above && zclock_mono () < deadline)
        s_pump (50, NULL);
    return *counter > above;
}

static zg_deployment_wire_t s_dispatch_deployment;

static void
s_dispatch (const char *call_id, int route, uint32_t flags, const char *body)
{
    zg_msg_t msg;
    zg_msg_init (&msg, ZG_MSG_DISPATCH);
    msg.routing_id = zframe_dup (s_worker_id);
    ZG_MSG_SET (msg.call_id, call_id);
    msg.route = (uint8_t) route;
    ZG_MSG_SET (msg.model, "gpt-test");
    msg.flags = flags;
    msg.timeout_ms = 30000;
    msg.deployment = s_dispatch_deployment;
    zg_msg_payload_borrow (&msg, body, strlen (body));
    zg_msg_send (&msg, zsock_resolve (s_router));
    zg_msg_reset (&msg, 0);
}

static void
s_send_simple (int type, const char *call_id)
{
    zg_msg_t msg;
    zg_msg_init (&msg, type);
    msg.routing_id = zframe_dup (s_worker_id);
    if (call_id)
        ZG_MSG_SET (msg.call_id, call_id);
    zg_msg_send (&msg, zsock_resolve (s_router));
    zg_msg_reset (&msg, 0);
}

//  Everything the worker said about one call
typedef struct {
    bool     head;
    uint16_t head_status;
    uint32_t head_flags;
    char     content_type [ZG_NAME_MAX + 1];
    char     head_deployment [ZG_NAME_MAX + 1];
    char     head_api_base [ZG_URL_MAX + 1];
    char    *headers;
    zg_buffer_t body;               //  HEAD payload, or CHUNKs one after the other
    int      chunks;
    bool     end;                   //  an END arrived
    bool     usage;                 //  an END or a final HEAD reported the usage
    uint16_t end_status;
    uint32_t prompt_tokens, completion_tokens, total_tokens;
    double   cost;
    uint64_t ttfb_us, duration_us;
    char     end_deployment [ZG_NAME_MAX + 1];
    bool     error;
    uint16_t error_status;
    uint32_t error_flags;
    char     err_type [ZG_NAME_MAX + 1];
    char     message [ZG_MESSAGE_MAX + 1];
    int      stray;                 //  messages for other calls
} answer_t;

static void
s_answer_free (answer_t *answer)
{
    free (answer->headers);
    zg_buffer_release (&answer->body);
    memset (answer, 0, sizeof (*answer));
}

//  Reads until a final HEAD, END or ERROR for call_id (stop_after_chunks
//  > 0: or until that many CHUNKs). Returns 0, or -1 on timeout.
static void
s_take_usage (answer_t *answer, const zg_msg_t *msg)
{
    answer->usage = true;
    answer->end_status = msg->status;
    answer->prompt_tokens = msg->prompt_tokens;
    answer->completion_tokens = msg->completion_tokens;
    answer->total_tokens = msg->total_tokens;
    answer->cost = msg->cost;
    answer->ttfb_us = msg->ttfb_us;
    answer->duration_us = msg->duration_us;
    ZG_MSG_SET (answer->end_deployment, msg->deployment_id);
}

static int
s_collect (const char *call_id, answer_t *answer, int stop_after_chunks)
{
    memset (answer, 0, sizeof (*answer));
    zg_msg_t msg;
    zg_msg_init (&msg, 0);
    int rc = -1;
    while (s_next (&msg, WAIT_MS) == 0) {
        if (strcmp (msg.call_id, call_id) != 0) {
            answer->stray++;
            continue;
        }
        if (msg.type == ZG_MSG_HEAD) {
            answer->head = true;
            answer->head_status = msg.status;
            answer->head_flags = msg.flags;
            ZG_MSG_SET (answer->content_type, msg.content_type);
            ZG_MSG_SET (answer->head_deployment, msg.deployment_id);
            ZG_MSG_SET (answer->head_api_base, msg.api_base);
            answer->headers = msg.headers ? strdup (msg.headers) : NULL;
            if (zg_msg_has_payload (&msg))
                zg_buffer_append (&answer->body, zg_msg_payload_data (&msg),
                                  zg_msg_payload_size (&msg));
            if (msg.flags & ZG_FLAG_FINAL) {
                s_take_usage (answer, &msg);
                rc = 0;
                break;
            }
        }
        else
        if (msg.type == ZG_MSG_CHUNK) {
            answer->chunks++;
            if (zg_msg_has_payload (&msg))
                zg_buffer_append (&answer->body, zg_msg_payload_data (&msg),
                                  zg_msg_payload_size (&msg));
            if (stop_after_chunks && answer->chunks >= stop_after_chunks) {
                rc = 0;
                break;
            }
        }
        else
        if (msg.type == ZG_MSG_END) {
            answer->end = true;
            s_take_usage (answer, &msg);
            rc = 0;
            break;
        }
        else
        if (msg.type == ZG_MSG_ERROR) {
            answer->error = true;
            answer->error_status = msg.status;
            answer->error_flags = msg.flags;
            ZG_MSG_SET (answer->err_type, msg.err_type);
            ZG_MSG_SET (answer->message, msg.message);
            rc = 0;
            break;
        }
    }
    zg_msg_reset (&msg, 0);
    zg_buffer_append (&answer->body, "", 1);
    answer->body.size--;
    return rc;
}

static int
s_count (const char *text, const char *needle)
{
    int count = 0;
    for (const char *at = text; at && (at = strstr (at, needle)); at += strlen (needle))
        count++;
    return count;
}

//  ---------------------------------------------------------------------
//  The worker, against the fake upstream

#define CHAT_BODY "{ \"messages\":[{\"role\":\"user\",\"content\":\"hi \\\"model\\\" \\u00e9\"}],\n" \
                  "  \"model\" :  \"gpt-test\",  \"temperature\":0.25 }"
#define CHAT_SENT "{ \"messages\":[{\"role\":\"user\",\"content\":\"hi \\\"model\\\" \\u00e9\"}],\n" \
                  "  \"model\" :  \"fake-model\",  \"temperature\":0.25 }"

static void
s_test_worker (fake_t *fake)
{
    answer_t answer;
    char text [8192];
    uint32_t credits;

    //  READY and HEARTBEAT
    CHECK (s_wait_for (&s_readies, 0, WAIT_MS));
    CHECK (s_ready_capacity == WORKER_CAPACITY);
    CHECK (s_ready_pid == (uint32_t) s_worker_pid);
    CHECK_STR (s_ready_name, WORKER_NAME);
    CHECK (s_wait_for (&s_heartbeats, 0, WAIT_MS));
    if (!s_worker_id)
        return;

    memset (&s_dispatch_deployment, 0, sizeof (s_dispatch_deployment));
    ZG_MSG_SET (s_dispatch_deployment.id, "dep-1");
    ZG_MSG_SET (s_dispatch_deployment.provider, "openai");
    ZG_MSG_SET (s_dispatch_deployment.upstream_model, "fake-model");
    snprintf (s_dispatch_deployment.api_base, sizeof (s_dispatch_deployment.api_base),
              "http://127.0.0.1:%d/v1/", fake->port);
    ZG_MSG_SET (s_dispatch_deployment.api_key, "sk-test-secret-1234");
    s_dispatch_deployment.input_cost_per_token = 0.001;
    s_dispatch_deployment.output_cost_per_token = 0.002;

    //  A JSON chat: one final HEAD with the whole body and the usage
    credits = s_credits;
    s_dispatch ("call-json", ZG_ROUTE_CHAT, 0, CHAT_BODY);
    CHECK (s_collect ("call-json", &answer, 0) == 0);
    CHECK (answer.head && answer.head_status == 200);
    CHECK (answer.head_flags & ZG_FLAG_FINAL);
    CHECK (strncmp (answer.content_type, "application/json", 16) == 0);
    CHECK_STR (answer.head_deployment, "dep-1");
    CHECK (strstr (answer.head_api_base, "http://127.0.0.1:") == answer.head_api_base);
    CHECK (answer.body.size > 0 && zg_json_valid (answer.body.data, answer.body.size, NULL));
    CHECK (strstr (answer.body.data, "\"chat.completion\"") != NULL);
    CHECK (answer.chunks == 0);
    CHECK (answer.usage && answer.end_status == 200);
    CHECK (answer.prompt_tokens == 10 && answer.completion_tokens == 8 && answer.total_tokens == 18);
    CHECK (answer.cost > 0.0259 && answer.cost < 0.0261);
    CHECK (answer.duration_us >= answer.ttfb_us && answer.duration_us > 0);
    CHECK_STR (answer.end_deployment, "dep-1");
    //  Nothing follows a final HEAD
    {
        zg_msg_t late;
        zg_msg_init (&late, 0);
        CHECK (s_next (&late, 200) == -1);
        zg_msg_reset (&late, 0);
    }
    //  Framing headers stay behind; content-type passes
    CHECK (answer.headers && strcasestr (answer.headers, "content-type: ") != NULL);
    CHECK (!answer.headers || !strcasestr (answer.headers, "content-length"));
    CHECK (!answer.headers || !strcasestr (answer.headers, "connection:"));
    CHECK (!answer.headers || !strcasestr (answer.headers, "date:"));
    s_answer_free (&answer);
    s_pump (100, NULL);
    CHECK (s_credits == credits + 1);

    //  Cost without the deployment's prices: the built-in table of the
    //  upstream model (a dated snapshot priced as its family), each price
    //  the deployment sets overriding its side, zero for an unknown model
    zg_deployment_wire_t priced = s_dispatch_deployment;
    s_dispatch_deployment.input_cost_per_token = -1;
    s_dispatch_deployment.output_cost_per_token = -1;
    ZG_MSG_SET (s_dispatch_deployment.upstream_model, "gpt-4o-mini-2024-07-18");
    s_dispatch ("call-table-price", ZG_ROUTE_CHAT, 0, CHAT_BODY);
    CHECK (s_collect ("call-table-price", &answer, 0) == 0);
    CHECK (answer.usage && answer.prompt_tokens == 10 && answer.completion_tokens == 8);
    CHECK (fabs (answer.cost - (10 * 1.5e-07 + 8 * 6e-07)) < 1e-12);
    s_answer_free (&answer);
    s_dispatch_deployment.input_cost_per_token = 0.001;
    ZG_MSG_SET (s_dispatch_deployment.upstream_model, "gpt-4o");
    s_dispatch ("call-half-price", ZG_ROUTE_CHAT, 0, CHAT_BODY);
    CHECK (s_collect ("call-half-price", &answer, 0) == 0);
    CHECK (answer.usage && fabs (answer.cost - (10 * 0.001 + 8 * 1e-05)) < 1e-12);
    s_answer_free (&answer);
    s_dispatch_deployment.input_cost_per_token = -1;
    ZG_MSG_SET (s_dispatch_deployment.upstream_model, "fake-model");
    s_dispatch ("call-no-price", ZG_ROUTE_CHAT, 0, CHAT_BODY);
    CHECK (s_collect ("call-no-price", &answer, 0) == 0);
    CHECK (answer.usage && answer.cost == 0);
    s_answer_free (&answer);
    s_dispatch_deployment = priced;
    s_pump (100, NULL);

    //  What the upstream got: the body byte for byte but for the model,
    //  the key as a Bearer token, no Expect
    char *last = s_http_get (fake->port, "/last_request");
    CHECK (last != NULL);
    CHECK (s_json_text (last, "path", NULL, text, sizeof (text)) && strcmp (text, "/v1/chat/completions") == 0);
    CHECK (s_json_text (last, "method", NULL, text, sizeof (text)) && strcmp (text, "POST") == 0);
    CHECK (s_json_text (last, "body", NULL, text, sizeof (text)));
    CHECK_STR (text, CHAT_SENT);
    CHECK (s_json_text (last, "headers", "authorization", text, sizeof (text)));
    CHECK_STR (text, "Bearer sk-test-secret-1234");
    CHECK (!s_json_text (last, "headers", "expect", text, sizeof (text)));
    free (last);

    //  A stream, client did not ask for usage: the usage chunk is
    //  requested upstream, read, and not relayed
    s_dispatch ("call-stream", ZG_ROUTE_CHAT, ZG_FLAG_STREAM,
                "{\"model\":\"gpt-test\",\"stream\":true,\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}");
    CHECK (s_collect ("call-stream", &answer, 0) == 0);
    CHECK (answer.head && answer.head_status == 200 && !(answer.head_flags & ZG_FLAG_FINAL));
    CHECK (strncmp (answer.content_type, "text/event-stream", 17) == 0);
    CHECK (answer.chunks >= 1);
    CHECK (s_count (answer.body.data, "data: ") >= 2);
    CHECK (strstr (answer.body.data, "\"choices\":[]") == NULL);
    CHECK (strstr (answer.body.data, "\"chat.completion.chunk\"") != NULL);
    size_t size = answer.body.size;
    CHECK (size > 14 && strcmp (answer.body.data + size - 14, "data: [DONE]\n\n") == 0);
    CHECK (answer.end && answer.end_status == 200);
    CHECK (answer.prompt_tokens == 10 && answer.completion_tokens > 0
           && answer.total_tokens == answer.prompt_tokens + answer.completion_tokens);
    CHECK (answer.ttfb_us > 0 && answer.ttfb_us <= answer.duration_us);
    s_answer_free (&answer);
    last = s_http_get (fake->port, "/last_request");
    CHECK (s_json_text (last, "body", NULL, text, sizeof (text)));
    CHECK_STR (text, "{\"model\":\"fake-model\",\"stream\":true,\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],"
                     "\"stream_options\":{\"include_usage\":true}}");
    free (last);

    //  A stream whose client asked for usage keeps the usage chunk
    s_dispatch ("call-stream-usage", ZG_ROUTE_CHAT, ZG_FLAG_STREAM | ZG_FLAG_CLIENT_USAGE,
                "{\"model\":\"gpt-test\",\"stream\":true,\"stream_options\":{\"include_usage\":true},"
                "\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],\"fake\":{\"chunks\":3}}");
    CHECK (s_collect ("call-stream-usage", &answer, 0) == 0);
    CHECK (answer.head && !(answer.head_flags & ZG_FLAG_FINAL));
    CHECK (strstr (answer.body.data, "\"choices\":[]") != NULL);
    CHECK (s_count (answer.body.data, "\"usage\":{") == 1);
    size = answer.body.size;
    CHECK (size > 14 && strcmp (answer.body.data + size - 14, "data: [DONE]\n\n") == 0);
    CHECK (answer.end && answer.prompt_tokens == 10 && answer.completion_tokens == 3);
    s_answer_free (&answer);

    //  Embeddings
    s_dispatch ("call-embed", ZG_ROUTE_EMBEDDINGS, 0,
                "{\"model\":\"gpt-test\",\"input\":\"hello world\"}");
    CHECK (s_collect ("call-embed", &answer, 0) == 0);
    CHECK (answer.head && answer.head_status == 200 && (answer.head_flags & ZG_FLAG_FINAL));
    CHECK (strstr (answer.body.data, "\"embedding\"") != NULL);
    CHECK (answer.usage && answer.prompt_tokens > 0 && answer.total_tokens == answer.prompt_tokens);
    s_answer_free (&answer);
    last = s_http_get (fake->port, "/last_request");
    CHECK (s_json_text (last, "path", NULL, text, sizeof (text)) && strcmp (text, "/v1/embeddings") == 0);
    free (last);

    //  Completions
    s_dispatch ("call-completion", ZG_ROUTE_COMPLETIONS, 0,
                "{\"model\":\"gpt-test\",\"prompt\":\"once upon\"}");
    CHECK (s_collect ("call-completion", &answer, 0) == 0);
    CHECK (answer.head && answer.head_status == 200 && answer.usage);
    s_answer_free (&answer);

    //  An upstream error passes through with its status and body
    s_dispatch ("call-500", ZG_ROUTE_CHAT, 0,
                "{\"model\":\"gpt-test\",\"messages\":[],\"fake\":{\"status\":500}}");
    CHECK (s_collect ("call-500", &answer, 0) == 0);
    CHECK (answer.head && answer.head_status == 500 && (answer.head_flags & ZG_FLAG_FINAL));
    CHECK (answer.body.size > 0 && strstr (answer.body.data, "\"error\"") != NULL);
    CHECK (!answer.error);
    s_answer_free (&answer);
    //  ... also for a stream request
    s_dispatch ("call-stream-429", ZG_ROUTE_CHAT, ZG_FLAG_STREAM,
                "{\"model\":\"gpt-test\",\"stream\":true,\"messages\":[],\"fake\":{\"status\":429}}");
    CHECK (s_collect ("call-stream-429", &answer, 0) == 0);
    CHECK (answer.head && answer.head_status == 429 && (answer.head_flags & ZG_FLAG_FINAL));
    CHECK (answer.chunks == 0);
    s_answer_free (&answer);

    //  Timeouts: the deployment's, and a stream's first byte
    s_dispatch_deployment.timeout_ms = 300;
    s_dispatch ("call-timeout", ZG_ROUTE_CHAT, 0,
                "{\"model\":\"gpt-test\",\"messages\":[],\"fake\":{\"latency_ms\":5000}}");
    CHECK (s_collect ("call-timeout", &answer, 0) == 0);
    CHECK (answer.error && answer.error_status == 408 && !answer.head);
    CHECK_STR (answer.err_type, "timeout");
    CHECK_STR (answer.message, "litellm.Timeout: Request timed out after 0.3 seconds (deployment dep-1)");
    s_answer_free (&answer);
    s_dispatch_deployment.timeout_ms = 0;
    s_dispatch_deployment.stream_timeout_ms = 250;
    s_dispatch ("call-stream-timeout", ZG_ROUTE_CHAT, ZG_FLAG_STREAM,
                "{\"model\":\"gpt-test\",\"stream\":true,\"messages\":[],\"fake\":{\"latency_ms\":5000}}");
    CHECK (s_collect ("call-stream-timeout", &answer, 0) == 0);
    CHECK (answer.error && answer.error_status == 408 && !answer.head);
    CHECK_STR (answer.message, "litellm.Timeout: Request timed out after 0.25 seconds (deployment dep-1)");
    s_answer_free (&answer);
    //  The first-byte deadline does not cut a stream that has started
    s_dispatch ("call-stream-long", ZG_ROUTE_CHAT, ZG_FLAG_STREAM,
                "{\"model\":\"gpt-test\",\"stream\":true,\"messages\":[],"
                "\"fake\":{\"chunks\":4,\"chunk_interval_ms\":150}}");
    CHECK (s_collect ("call-stream-long", &answer, 0) == 0);
    CHECK (answer.end && !answer.error && answer.completion_tokens == 4);
    s_answer_free (&answer);
    s_dispatch_deployment.stream_timeout_ms = 0;

    //  A reset in the middle of a stream: ERROR flagged STARTED
    s_dispatch ("call-reset", ZG_ROUTE_CHAT, ZG_FLAG_STREAM,
                "{\"model\":\"gpt-test\",\"stream\":true,\"messages\":[],"
                "\"fake\":{\"chunks\":6,\"chunk_interval_ms\":50,\"fault\":\"reset_mid_stream\"}}");
    CHECK (s_collect ("call-reset", &answer, 0) == 0);
    //  ERROR carries no flags on the wire (proto/zg_msg.h lists none), so
    //  "started" shows as a HEAD and CHUNKs before the ERROR
    CHECK (answer.head && answer.chunks > 0 && answer.error && !answer.end);
    CHECK (answer.error_status == 502);
    CHECK_STR (answer.err_type, "api_connection_error");
    s_answer_free (&answer);

    //  A closed port
    int probe = socket (AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in address = { .sin_family = AF_INET };
    address.sin_addr.s_addr = htonl (INADDR_LOOPBACK);
    socklen_t address_size = sizeof (address);
    bind (probe, (struct sockaddr *) &address, sizeof (address));
    getsockname (probe, (struct sockaddr *) &address, &address_size);
    close (probe);
    zg_deployment_wire_t saved = s_dispatch_deployment;
    snprintf (s_dispatch_deployment.api_base, sizeof (s_dispatch_deployment.api_base),
              "http://127.0.0.1:%d/v1?key=sk-in-query-1234", ntohs (address.sin_port));
    s_dispatch ("call-refused", ZG_ROUTE_CHAT, 0, CHAT_BODY);
    CHECK (s_collect ("call-refused", &answer, 0) == 0);
    CHECK (answer.error && answer.error_status == 502 && !answer.head);
    CHECK_STR (answer.err_type, "api_connection_error");
    CHECK (strncmp (answer.message, "litellm.APIConnectionError: ", 28) == 0);
    CHECK (strstr (answer.message, "sk-test-secret") == NULL);
    s_answer_free (&answer);
    s_dispatch_deployment = saved;

    //  An unknown provider is refused at once, and its slot comes back
    ZG_MSG_SET (s_dispatch_deployment.provider, "no-such-provider");
    s_dispatch ("call-provider", ZG_ROUTE_CHAT, 0, CHAT_BODY);
    CHECK (s_collect ("call-provider", &answer, 0) == 0);
    CHECK (answer.error && answer.error_status == 400);
    s_answer_free (&answer);
    s_dispatch_deployment = saved;

    //  CANCEL in the middle of a stream: nothing more for that call, and
    //  the upstream sees the client go away
    char *stats = s_http_get (fake->port, "/stats");
    int64_t disconnects = s_json_int (stats, "client_disconnects");
    free (stats);
    CHECK (disconnects >= 0);
    s_dispatch ("call-cancel", ZG_ROUTE_CHAT, ZG_FLAG_STREAM,
                "{\"model\":\"gpt-test\",\"stream\":true,\"messages\":[],"
                "\"fake\":{\"chunks\":200,\"chunk_interval_ms\":50}}");
    CHECK (s_collect ("call-cancel", &answer, 1) == 0);
    CHECK (answer.head && answer.chunks == 1 && !answer.end);
    s_answer_free (&answer);
    credits = s_credits;
    s_send_simple (ZG_MSG_CANCEL, "call-cancel");
    int unexpected = 0;
    //  Chunks already on their way may still arrive; then silence
    zg_msg_t msg;
    zg_msg_init (&msg, 0);
    int64_t quiet_until = zclock_mono () + 600;
    while (zclock_mono () < quiet_until) {
        if (s_next (&msg, 100) == 0) {
            if (msg.type != ZG_MSG_CHUNK || strcmp (msg.call_id, "call-cancel") != 0)
                unexpected++;
            quiet_until = zclock_mono () + 600;
        }
    }
    zg_msg_reset (&msg, 0);
    CHECK (unexpected == 0);
    CHECK (s_credits == credits + 1);
    int64_t deadline = zclock_mono () + WAIT_MS;
    int64_t now_disconnects = disconnects;
    while (now_disconnects <= disconnects && zclock_mono () < deadline) {
        s_pump (100, NULL);
        stats = s_http_get (fake->port, "/stats");
        now_disconnects = s_json_int (stats, "client_disconnects");
        free (stats);
    }
    CHECK (now_disconnects > disconnects);

    //  No free slot: 503 (the router should never ask); a duplicate is ignored
    credits = s_credits;
    const char *slow = "{\"model\":\"gpt-test\",\"messages\":[],\"fake\":{\"latency_ms\":60000}}";
    s_dispatch ("call-slow-0", ZG_ROUTE_CHAT, 0, slow);
    s_dispatch ("call-slow-0", ZG_ROUTE_CHAT, 0, slow);
    s_dispatch ("call-slow-1", ZG_ROUTE_CHAT, 0, slow);
    s_dispatch ("call-slow-2", ZG_ROUTE_CHAT, 0, slow);
    s_dispatch ("call-slow-3", ZG_ROUTE_CHAT, 0, slow);
    s_dispatch ("call-slow-4", ZG_ROUTE_CHAT, 0, slow);
    CHECK (s_collect ("call-slow-4", &answer, 0) == 0);
    CHECK (answer.error && answer.error_status == 503 && answer.stray == 0);
    s_answer_free (&answer);
    //  DISCONNECT: READY again, with the free slots as they are now
    int readies = s_readies;
    s_send_simple (ZG_MSG_DISCONNECT, NULL);
    CHECK (s_wait_for (&s_readies, readies, WAIT_MS));
    CHECK (s_ready_capacity == 0);
    for (int index = 0; index < 4; index++) {
        char call_id [32];
        snprintf (call_id, sizeof (call_id), "call-slow-%d", index);
        s_send_simple (ZG_MSG_CANCEL, call_id);
    }
    unexpected = 0;
    s_pump (300, &unexpected);
    CHECK (unexpected == 0);
    CHECK (s_credits == credits + 4);

    //  Malformed messages are dropped, and the worker goes on
    zmsg_t *garbage = zmsg_new ();
    zmsg_addmem (garbage, zframe_data (s_worker_id), zframe_size (s_worker_id));
    zmsg_addstr (garbage, "this is not msgpack");
    zmsg_send (&garbage, s_router);
    garbage = zmsg_new ();
    zmsg_addmem (garbage, zframe_data (s_worker_id), zframe_size (s_worker_id));
    zmsg_addmem (garbage, "\x93\xa2ZG\x01", 5);
    zmsg_addstr (garbage, "extra");
    zmsg_addstr (garbage, "frames");
    zmsg_send (&garbage, s_router);
    s_send_simple (ZG_MSG_READY, NULL);         //  a type a worker does not take
    s_send_simple (ZG_MSG_CANCEL, "no-such-call");
    s_dispatch ("call-after-garbage", ZG_ROUTE_CHAT, 0, CHAT_BODY);
    CHECK (s_collect ("call-after-garbage", &answer, 0) == 0);
    CHECK (answer.head && answer.head_status == 200 && answer.usage);
    s_answer_free (&answer);

    //  Many at once on one worker, more than its capacity in total
    s_pump (100, NULL);
    credits = s_credits;
    int done = 0;
    for (int round = 0; round < 3; round++) {
        char call_ids [WORKER_CAPACITY][48];
        for (int index = 0; index < WORKER_CAPACITY; index++) {
            snprintf (call_ids [index], sizeof (call_ids [index]), "call-many-%d-%d", round, index);
            s_dispatch (call_ids [index], ZG_ROUTE_CHAT, index % 2 ? ZG_FLAG_STREAM : 0,
                        "{\"model\":\"gpt-test\",\"stream\":true,\"messages\":[]}");
        }
        zg_msg_init (&msg, 0);
        int ended = 0;
        while (ended < WORKER_CAPACITY && s_next (&msg, WAIT_MS) == 0)
            ended += msg.type == ZG_MSG_END
                  || (msg.type == ZG_MSG_HEAD && (msg.flags & ZG_FLAG_FINAL));
        zg_msg_reset (&msg, 0);
        done += ended;
        s_pump (50, NULL);
    }
    CHECK (done == 3 * WORKER_CAPACITY);
    CHECK (s_credits == credits + 3 * WORKER_CAPACITY);
    if (s_credits != credits + 3 * WORKER_CAPACITY)
        fprintf (stderr, "credits %u, expected %u\n", s_credits, credits + 3 * WORKER_CAPACITY);

    //  The router falls silent: after three heartbeats the worker gives up
    //  on it and registers again, on a new socket
    readies = s_readies;
    zframe_t *old_id = zframe_dup (s_worker_id);
    s_answer_heartbeats = false;
    CHECK (s_wait_for (&s_readies, readies, WAIT_MS));
    s_answer_heartbeats = true;
    CHECK (s_ready_capacity == WORKER_CAPACITY);
    CHECK (!zframe_eq (old_id, s_worker_id));
    zframe_destroy (&old_id);
    s_dispatch ("call-after-reconnect", ZG_ROUTE_CHAT, 0, CHAT_BODY);
    CHECK (s_collect ("call-after-reconnect", &answer, 0) == 0);
    CHECK (answer.head && answer.head_status == 200 && answer.usage);
    s_answer_free (&answer);
}

//  ---------------------------------------------------------------------
//  Recycling: "ready" and "retire" on the status pipe, RETIRE on SIGUSR1

//  The next line on the status pipe, keeping the router side talking
static bool
s_status_line (int fd, const char *expected)
{
    char line [64];
    size_t size = 0;
    int64_t deadline = zclock_mono () + WAIT_MS;
    while (zclock_mono () < deadline && size < sizeof (line) - 1) {
        s_pump (20, NULL);
        ssize_t got = read (fd, line + size, 1);
        if (got == 1 && line [size] == '\n') {
            line [size] = 0;
            if (!streq (line, expected))
                fprintf (stderr, "status pipe: \"%s\", expected \"%s\"\n", line, expected);
            return streq (line, expected);
        }
        if (got == 1)
            size++;
    }
    fprintf (stderr, "status pipe: no \"%s\"\n", expected);
    return false;
}

//  Waits for the worker's exit; its exit code, or -1
static int
s_exit_code (pid_t pid)
{
    int status = 0;
    int64_t deadline = zclock_mono () + WAIT_MS;
    while (zclock_mono () < deadline) {
        if (waitpid (pid, &status, WNOHANG) == pid)
            return WIFEXITED (status) ? WEXITSTATUS (status) : -1;
        s_pump (20, NULL);
    }
    return -1;
}

//  Two workers forked early, each waiting for a byte on a go pipe of its
//  own (with one shared pipe either could take the first byte). A child
//  keeps no write end of any go pipe, so closing them at the end stops a
//  worker that never got its byte.
static int s_status_pipe [2] = { -1, -1 };
static pid_t s_recycled [2];

static void
s_recycled_fork (void)
{
    if (pipe (s_status_pipe) || pipe (s_go_pipe [0]) || pipe (s_go_pipe [1]))
        return;
    fcntl (s_status_pipe [0], F_SETFL, O_NONBLOCK);
    s_recycled [0] = s_worker_start_recycled (2, s_status_pipe, s_go_pipe [0][0]);
    s_recycled [1] = s_worker_start_recycled (0, NULL, s_go_pipe [1][0]);
    close (s_status_pipe [1]);
    close (s_go_pipe [0][0]);
    close (s_go_pipe [1][0]);
}

static void
s_test_recycling (void)
{
    answer_t answer;
    zg_msg_t msg;
    zg_msg_init (&msg, 0);
    CHECK (s_recycled [0] > 0 && s_recycled [1] > 0);
    if (s_recycled [0] <= 0 || s_recycled [1] <= 0)
        return;
    pid_t pid = s_recycled [0];
    int readies = s_readies;
    CHECK (write (s_go_pipe [0][1], "1", 1) == 1);
    CHECK (s_wait_for (&s_readies, readies, WAIT_MS));
    //  "ready" once the router said something back
    CHECK (s_status_line (s_status_pipe [0], "ready"));
    s_dispatch ("recycle-1", ZG_ROUTE_CHAT, 0, CHAT_BODY);
    CHECK (s_collect ("recycle-1", &answer, 0) == 0 && answer.usage);
    s_answer_free (&answer);
    s_dispatch ("recycle-2", ZG_ROUTE_CHAT, 0, CHAT_BODY);
    CHECK (s_collect ("recycle-2", &answer, 0) == 0 && answer.usage);
    s_answer_free (&answer);
    CHECK (s_status_line (s_status_pipe [0], "retire"));
    //  It serves on until told to go; then RETIRE, and until the router's
    //  answer a DISPATCH is still taken
    kill (pid, SIGUSR1);
    CHECK (s_next (&msg, WAIT_MS) == 0 && msg.type == ZG_MSG_RETIRE);
    CHECK_STR (msg.name, WORKER_NAME);
    s_dispatch ("recycle-3", ZG_ROUTE_CHAT, 0, CHAT_BODY);
    zg_msg_reset (&msg, ZG_MSG_RETIRE);
    msg.routing_id = zframe_dup (s_worker_id);
    ZG_MSG_SET (msg.name, "router");
    zg_msg_send (&msg, zsock_resolve (s_router));
    CHECK (s_collect ("recycle-3", &answer, 0) == 0 && answer.head && answer.usage);
    s_answer_free (&answer);
    CHECK (s_exit_code (pid) == 0);

    //  Retiring, and the router does not know it: nothing it holds can be
    //  delivered, so it stops at once
    pid = s_recycled [1];
    readies = s_readies;
    CHECK (write (s_go_pipe [1][1], "1", 1) == 1);
    CHECK (s_wait_for (&s_readies, readies, WAIT_MS));
    s_pump (100, NULL);
    kill (pid, SIGUSR1);
    CHECK (s_next (&msg, WAIT_MS) == 0 && msg.type == ZG_MSG_RETIRE);
    s_send_simple (ZG_MSG_DISCONNECT, NULL);
    CHECK (s_exit_code (pid) == 0);
    zg_msg_reset (&msg, 0);
    close (s_status_pipe [0]);
    close (s_go_pipe [0][1]);
    close (s_go_pipe [1][1]);
}

int
main (int argc, char *argv [])
{
    bool verbose = argc > 1 && strcmp (argv [1], "-v") == 0;
    zg_log_init ("zgate.test", verbose, false);
    curl_global_init (CURL_GLOBAL_DEFAULT);

    s_test_provider ();
    s_test_sse ();
    //  Aborts on a failed check, which fails this test
    zg_prices_test (verbose);
    s_passed++;

    if (!s_find_fake ())
        printf ("test_workers: %s not found: worker tests skipped\n", s_fake_path);
    else {
        snprintf (s_temp_dir, sizeof (s_temp_dir), "/tmp/zg-workers-XXXXXX");
        CHECK (mkdtemp (s_temp_dir) != NULL);
        snprintf (s_endpoint, sizeof (s_endpoint), "ipc://%s/worker.ipc", s_temp_dir);
        fake_t fake = { 0, 0 };
        int started = s_fake_start (&fake, NULL);
        CHECK (started == 0);
        //  Forked before this process has a ZeroMQ context
        s_worker_pid = s_worker_start ();
        s_recycled_fork ();
        CHECK (s_worker_pid > 0);
        if (started == 0 && s_worker_pid > 0) {
            s_router = zsock_new (ZMQ_ROUTER);
            CHECK (s_router && zsock_bind (s_router, "%s", s_endpoint) == 0);
            s_test_worker (&fake);
        }
        //  A clean stop on SIGTERM, leak-free under the sanitizers
        CHECK (s_process_stop (s_worker_pid) == 0);
        if (started == 0 && s_worker_pid > 0)
            s_test_recycling ();
        s_process_stop (fake.pid);
        zframe_destroy (&s_worker_id);
        zsock_destroy (&s_router);
        char path [600];
        snprintf (path, sizeof (path), "%s/worker.ipc", s_temp_dir);
        unlink (path);
        rmdir (s_temp_dir);
    }
    curl_global_cleanup ();
    printf ("%d passed, %d failed\n", s_passed, s_failed);
    return s_failed ? 1 : 0;
}
