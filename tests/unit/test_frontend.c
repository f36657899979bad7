/*  =========================================================================
    test_frontend - the frontend's classes, then the frontend itself as a
    separate process, driven over HTTP, against a fake router

    Two frontends are forked before this process creates any ZeroMQ
    context: one with a master key, one without. Each listens on a socket
    this test bound on 127.0.0.1:0 and talks to a ROUTER this test binds
    on ipc:// in a temporary directory. The fake router (an actor) answers
    heartbeats and answers each REQUEST according to its model name:

        json        HEAD final with a JSON body and upstream headers
        stream      HEAD, 3 CHUNKs (the last is "data: [DONE]"), END
        step        HEAD, 1 CHUNK; the rest (1 CHUNK, END without
                    [DONE]) when the test says NEXT
        err         ERROR 429 before any HEAD
        midstream   HEAD, 1 CHUNK, ERROR with ZG_FLAG_STARTED
        midevent    HEAD, half an event, ERROR with ZG_FLAG_STARTED
        flood       HEAD, 16 MiB of CHUNKs, END
        hold        nothing: the client waits
        anything else  ERROR 400 "Invalid model name"

    and each LIST as the test last said with "LIST <mode>" (see
    s_send_list): by default not at all.
    =========================================================================
*/
#include "frontend/zg_frontend.h"
#include "frontend/zg_auth.h"
#include "frontend/zg_calls.h"
#include "frontend/zg_keys.h"
#include "frontend/zg_admin.h"
#include "frontend/zg_keystore.h"
#include "frontend/zg_redis_sync.h"
#include "frontend/zg_redis_probe.h"
#include "tests/unit/zg_unit.h"
#include "frontend/zg_reply.h"
#include "frontend/zg_routes.h"
#include "common/zg_config.h"
#include "common/zg_log.h"
#include "proto/zg_msg.h"

#include <arpa/inet.h>
#include <czmq.h>
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

static int s_passed = 0;
static int s_failed = 0;
static bool s_verbose = false;

#define CHECK(cond) do { \
    if (cond) s_passed++; \
    else { s_failed++; fprintf (stderr, "FAIL %s:%d: %s\n", __FILE__, __LINE__, #cond); } \
} while (0)

//  For the harness itself: stops the test where it cannot go on
#define REQUIRE(cond) do { \
    if (!(cond)) { \
        fprintf (stderr, "%s:%d: required: %s\n", __FILE__, __LINE__, #cond); \
        abort (); \
    } \
} while (0)

#define MASTER_KEY "sk-test-master-0001"
#define AUTH "Authorization: Bearer " MASTER_KEY "\r\n"
#define BODY_LIMIT 10485            //  0.01 MB

//  ---------------------------------------------------------------------
//  The fake router

typedef struct {
    zframe_t *peer;                 //  routing id of the step call's frontend
    char      call_id [ZG_CALL_ID_MAX + 1];
    bool      active;
} s_step_t;

static void
s_send_reply (zsock_t *router, zg_msg_t *reply, zframe_t *peer)
{
    reply->routing_id = zframe_dup (peer);
    int rc = zg_msg_send (reply, router);
    REQUIRE (rc == 0);
}

static void
s_send_chunk (zsock_t *router, zframe_t *peer, const char *call_id, const char *text)
{
    zg_msg_t chunk;
    zg_msg_init (&chunk, ZG_MSG_CHUNK);
    ZG_MSG_SET (chunk.call_id, call_id);
    zg_msg_payload_borrow (&chunk, text, strlen (text));
    s_send_reply (router, &chunk, peer);
    zg_msg_reset (&chunk, 0);
}

static void
s_send_head (zsock_t *router, zframe_t *peer, const char *call_id, bool final,
             const char *body)
{
    zg_msg_t head;
    zg_msg_init (&head, ZG_MSG_HEAD);
    ZG_MSG_SET (head.call_id, call_id);
    head.status = 200;
    head.flags = final ? ZG_FLAG_FINAL : 0;
    ZG_MSG_SET (head.content_type, final ? "application/json" : "text/event-stream");
    zg_msg_set_headers (&head, "x-request-id: req-123\r\nopenai-processing-ms: 7\r\n");
    ZG_MSG_SET (head.deployment_id, "dep-1");
    ZG_MSG_SET (head.api_base, "http://up.example/v1?api-version=2024");
    if (final) {
        //  A whole answer reports its usage itself: no END follows it
        head.prompt_tokens = 3;
        head.completion_tokens = 4;
        head.total_tokens = 7;
        head.cost = 0.000125;
    }
    if (body)
        zg_msg_payload_borrow (&head, body, strlen (body));
    s_send_reply (router, &head, peer);
    zg_msg_reset (&head, 0);
}

static void
s_send_end (zsock_t *router, zframe_t *peer, const char *call_id)
{
    zg_msg_t end;
    zg_msg_init (&end, ZG_MSG_END);
    ZG_MSG_SET (end.call_id, call_id);
    end.status = 200;
    s_send_reply (router, &end, peer);
    zg_msg_reset (&end, 0);
}

static void
s_send_error (zsock_t *router, zframe_t *peer, const char *call_id, int status,
              const char *type, const char *message, uint32_t flags)
{
    zg_msg_t error;
    zg_msg_init (&error, ZG_MSG_ERROR);
    ZG_MSG_SET (error.call_id, call_id);
    error.status = (uint16_t) status;
    error.flags = flags;
    ZG_MSG_SET (error.err_type, type);
    ZG_MSG_SET (error.message, message);
    s_send_reply (router, &error, peer);
    zg_msg_reset (&error, 0);
}

static void
s_send_listed (zsock_t *router, zframe_t *peer, const char *call_id, uint32_t index,
               uint32_t count, const char *model, const char *id, const char *mode,
               const char *message)
{
    zg_msg_t listed;
    zg_msg_init (&listed, ZG_MSG_DEPLOYMENT);
    ZG_MSG_SET (listed.call_id, call_id);
    listed.index = index;
    listed.count = count;
    ZG_MSG_SET (listed.model, model);
    ZG_MSG_SET (listed.deployment_id, id);
    if (!message) {
        ZG_MSG_SET (listed.provider, "openai");
        ZG_MSG_SET (listed.upstream_model, "up-model");
        ZG_MSG_SET (listed.api_base, "http://127.0.0.1:9/v1?api-version=1");
    }
    ZG_MSG_SET (listed.mode, mode);
    ZG_MSG_SET (listed.message, message);
    s_send_reply (router, &listed, peer);
    zg_msg_reset (&listed, 0);
}

//  The answer to a LIST, by mode:
//      good     four deployments, with a stray index and a repeat among them
//      empty    none at all
//      changed  a list whose length changes half way
//      huge     a list longer than the frontend takes
//      none     no answer (also any other mode)
static void
s_send_list (zsock_t *router, zframe_t *peer, const char *call_id, const char *mode)
{
    if (streq (mode, "good")) {
        s_send_listed (router, peer, call_id, 7, 4, "stray", "json", NULL, NULL);
        s_send_listed (router, peer, call_id, 0, 4, "gpt-4o", "json", NULL, NULL);
        s_send_listed (router, peer, call_id, 0, 4, "repeat", "err", NULL, NULL);
        s_send_listed (router, peer, call_id, 1, 4, "db-model", "err", NULL, NULL);
        s_send_listed (router, peer, call_id, 2, 4, "db-broken", "row-x", NULL,
                       "Not served: the database row cannot be used: wrong salt key");
        s_send_listed (router, peer, call_id, 3, 4, "db-embed", "json", "embedding", NULL);
    }
    else
    if (streq (mode, "empty"))
        s_send_listed (router, peer, call_id, 0, 0, "", "", NULL, NULL);
    else
    if (streq (mode, "changed")) {
        s_send_listed (router, peer, call_id, 0, 2, "gpt-4o", "json", NULL, NULL);
        s_send_listed (router, peer, call_id, 1, 3, "gpt-4o", "json", NULL, NULL);
    }
    else
    if (streq (mode, "huge"))
        s_send_listed (router, peer, call_id, 0, 1000000, "gpt-4o", "json", NULL, NULL);
}

static void
s_fake_router (zsock_t *pipe, void *args)
{
    const char *endpoint = (const char *) args;
    zsock_t *router = zsock_new (ZMQ_ROUTER);
    REQUIRE (router);
    zsock_set_linger (router, 0);
    int rc = zsock_bind (router, "%s", endpoint);
    REQUIRE (rc == 0);
    zpoller_t *poller = zpoller_new (pipe, router, NULL);
    zsock_signal (pipe, 0);

    bool muted = false;
    char list_mode [32] = "none";
    int requests = 0;
    int heartbeats = 0;
    int cancels = 0;
    char last_cancel [ZG_CALL_ID_MAX + 1] = "";
    zg_msg_t last;                  //  the last REQUEST, payload kept
    zg_msg_init (&last, 0);
    s_step_t step = { NULL, "", false };
    zg_msg_t msg;
    zg_msg_init (&msg, 0);

    while (true) {
        zsock_t *which = (zsock_t *) zpoller_wait (poller, -1);
        if (which == pipe) {
            char *command = zstr_recv (pipe);
            if (!command || streq (command, "$TERM")) {
                zstr_free (&command);
                break;
            }
            if (strncmp (command, "LIST ", 5) == 0) {
                snprintf (list_mode, sizeof (list_mode), "%s", command + 5);
                zsock_signal (pipe, 0);
            }
            else
            if (streq (command, "MUTE") || streq (command, "UNMUTE")) {
                muted = streq (command, "MUTE");
                zsock_signal (pipe, 0);
            }
            else
            if (streq (command, "LAST")) {
                zframe_t *body = zg_msg_has_payload (&last)
                               ? zframe_new (zg_msg_payload_data (&last), zg_msg_payload_size (&last))
                               : zframe_new_empty ();
                zsock_send (pipe, "ss444f88", last.call_id, last.model, (uint32_t) last.route,
                            last.flags, last.timeout_ms, body, last.model_span,
                            last.options_span);
                zframe_destroy (&body);
            }
            else
            if (streq (command, "COUNTS"))
                zsock_send (pipe, "iiis", requests, heartbeats, cancels, last_cancel);
            else
            if (streq (command, "NEXT")) {
                //  Finish the step stream, unless it was cancelled
                if (step.active && strcmp (last_cancel, step.call_id) != 0) {
                    s_send_chunk (router, step.peer, step.call_id, "data: {\"n\":2}\n\n");
                    s_send_end (router, step.peer, step.call_id);
                }
                step.active = false;
                zsock_signal (pipe, 0);
            }
            zstr_free (&command);
            continue;
        }
        if (which != router)
            break;
        if (zg_msg_recv (&msg, router) != ZG_MSG_OK)
            continue;
        if (muted) {
            zg_msg_reset (&msg, 0);
            continue;
        }
        if (msg.type == ZG_MSG_HEARTBEAT) {
            heartbeats++;
            zg_msg_t beat;
            zg_msg_init (&beat, ZG_MSG_HEARTBEAT);
            ZG_MSG_SET (beat.name, "router");
            beat.pid = (uint32_t) getpid ();
            s_send_reply (router, &beat, msg.routing_id);
            zg_msg_reset (&beat, 0);
        }
        else
        if (msg.type == ZG_MSG_LIST)
            s_send_list (router, msg.routing_id, msg.call_id, list_mode);
        else
        if (msg.type == ZG_MSG_CANCEL) {
            cancels++;
            ZG_MSG_SET (last_cancel, msg.call_id);
        }
        else
        if (msg.type == ZG_MSG_REQUEST) {
            requests++;
            zg_msg_reset (&last, 0);
            ZG_MSG_SET (last.call_id, msg.call_id);
            ZG_MSG_SET (last.model, msg.model);
            last.route = msg.route;
            last.flags = msg.flags;
            last.timeout_ms = msg.timeout_ms;
            last.model_span = msg.model_span;
            last.options_span = msg.options_span;
            if (zg_msg_has_payload (&msg)) {
                zframe_t *body = zframe_new (zg_msg_payload_data (&msg),
                                             zg_msg_payload_size (&msg));
                zg_msg_payload_give (&last, &body);
            }

            zframe_t *peer = msg.routing_id;
            const char *id = msg.call_id;
            if (streq (msg.model, "json"))
                s_send_head (router, peer, id, true, "{\"object\":\"chat.completion\",\"ok\":true}");
            else
            if (streq (msg.model, "echo")) {
                //  The request's body as the whole answer
                size_t size = zg_msg_payload_size (&last);
                char *echo = (char *) malloc (size + 1);
                REQUIRE (echo);
                memcpy (echo, zg_msg_payload_data (&last), size);
                echo [size] = 0;
                s_send_head (router, peer, id, true, echo);
                free (echo);
            }
            else
            if (streq (msg.model, "stream")) {
                s_send_head (router, peer, id, false, NULL);
                s_send_chunk (router, peer, id, "data: {\"n\":1}\n\n");
                s_send_chunk (router, peer, id, "data: {\"n\":2}\n\n");
                s_send_chunk (router, peer, id, "data: [DONE]\n\n");
                s_send_end (router, peer, id);
            }
            else
            if (streq (msg.model, "step")) {
                s_send_head (router, peer, id, false, NULL);
                s_send_chunk (router, peer, id, "data: {\"n\":1}\n\n");
                zframe_destroy (&step.peer);
                step.peer = zframe_dup (peer);
                ZG_MSG_SET (step.call_id, id);
                step.active = true;
            }
            else
            if (streq (msg.model, "err"))
                s_send_error (router, peer, id, 429, "rate_limit_error", "slow down", 0);
            else
            if (streq (msg.model, "midstream")) {
                s_send_head (router, peer, id, false, NULL);
                s_send_chunk (router, peer, id, "data: {\"n\":1}\n\n");
                s_send_error (router, peer, id, 500, "internal_server_error",
                              "upstream reset", ZG_FLAG_STARTED);
            }
            else
            if (streq (msg.model, "midevent")) {
                s_send_head (router, peer, id, false, NULL);
                s_send_chunk (router, peer, id, "data: {\"n\":");
                s_send_error (router, peer, id, 502, "internal_server_error",
                              "upstream reset", ZG_FLAG_STARTED);
            }
            else
            if (streq (msg.model, "flood")) {
                s_send_head (router, peer, id, false, NULL);
                size_t size = 65536;
                char *event = (char *) malloc (size + 1);
                memset (event, 'x', size);
                memcpy (event, "data: ", 6);
                memcpy (event + size - 2, "\n\n", 2);
                event [size] = 0;
                for (int index = 0; index < 256; index++)
                    s_send_chunk (router, peer, id, event);
                free (event);
                s_send_end (router, peer, id);
            }
            else
            if (!streq (msg.model, "hold")) {
                char message [512];
                snprintf (message, sizeof (message),
                          "Invalid model name passed in model=%s", msg.model);
                s_send_error (router, peer, id, 400, "bad_request_error", message, 0);
            }
        }
        zg_msg_reset (&msg, 0);
    }
    zframe_destroy (&step.peer);
    zg_msg_reset (&last, 0);
    zg_msg_reset (&msg, 0);
    zpoller_destroy (&poller);
    zsock_destroy (&router);
}

typedef struct {
    char     call_id [ZG_CALL_ID_MAX + 1];
    char     model [ZG_NAME_MAX + 1];
    uint32_t route;
    uint32_t flags;
    uint32_t timeout_ms;
    char    *body;
    size_t   body_size;
    uint64_t model_span;
    uint64_t options_span;
} s_last_t;

static void
s_last (zactor_t *fake, s_last_t *last)
{
    char *call_id = NULL, *model = NULL;
    zframe_t *body = NULL;
    zstr_send (fake, "LAST");
    zsock_recv (fake, "ss444f88", &call_id, &model, &last->route, &last->flags,
                &last->timeout_ms, &body, &last->model_span, &last->options_span);
    snprintf (last->call_id, sizeof (last->call_id), "%s", call_id ? call_id : "");
    snprintf (last->model, sizeof (last->model), "%s", model ? model : "");
    free (last->body);
    last->body_size = body ? zframe_size (body) : 0;
    last->body = (char *) malloc (last->body_size + 1);
    if (last->body_size)
        memcpy (last->body, zframe_data (body), last->body_size);
    last->body [last->body_size] = 0;
    zstr_free (&call_id);
    zstr_free (&model);
    zframe_destroy (&body);
}

typedef struct {
    int  requests;
    int  heartbeats;
    int  cancels;
    char last_cancel [ZG_CALL_ID_MAX + 1];
} s_counts_t;

static void
s_counts (zactor_t *fake, s_counts_t *counts)
{
    char *last_cancel = NULL;
    zstr_send (fake, "COUNTS");
    zsock_recv (fake, "iiis", &counts->requests, &counts->heartbeats, &counts->cancels,
                &last_cancel);
    snprintf (counts->last_cancel, sizeof (counts->last_cancel), "%s",
              last_cancel ? last_cancel : "");
    zstr_free (&last_cancel);
}

static void
s_command (zactor_t *fake, const char *command)
{
    zstr_send (fake, command);
    zsock_wait (fake);
}

//  ---------------------------------------------------------------------
//  A small HTTP/1.1 client on plain sockets

typedef struct {
    char  *data;
    size_t size;
    size_t cap;
} s_buf_t;

static void
s_buf_add (s_buf_t *buf, const char *data, size_t size)
{
    if (buf->size + size + 1 > buf->cap) {
        buf->cap = (buf->size + size + 1) * 2;
        buf->data = (char *) realloc (buf->data, buf->cap);
        REQUIRE (buf->data);
    }
    memcpy (buf->data + buf->size, data, size);
    buf->size += size;
    buf->data [buf->size] = 0;
}

typedef struct {
    int    status;
    char  *head;                //  status line and headers
    char  *body;                //  decoded body
    size_t body_size;
} s_resp_t;

static void
s_resp_free (s_resp_t *resp)
{
    free (resp->head);
    free (resp->body);
    memset (resp, 0, sizeof (*resp));
}

static int
s_connect (int port)
{
    int fd = socket (AF_INET, SOCK_STREAM, 0);
    REQUIRE (fd >= 0);
    struct sockaddr_in address;
    memset (&address, 0, sizeof (address));
    address.sin_family = AF_INET;
    address.sin_port = htons ((uint16_t) port);
    address.sin_addr.s_addr = htonl (INADDR_LOOPBACK);
    if (connect (fd, (struct sockaddr *) &address, sizeof (address)) != 0) {
        close (fd);
        return -1;
    }
    //  A safety net only: nothing here waits for a timeout to pass
    struct timeval timeout = { 20, 0 };
    setsockopt (fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof (timeout));
    return fd;
}

static bool
s_send_all (int fd, const char *data, size_t size)
{
    while (size) {
        ssize_t sent = send (fd, data, size, MSG_NOSIGNAL);
        if (sent <= 0)
            return false;
        data += sent;
        size -= (size_t) sent;
    }
    return true;
}

//  Read until needle appears in buf (or EOF when needle is NULL)
static bool
s_read_until (int fd, s_buf_t *buf, const char *needle)
{
    char chunk [16384];
    while (!needle || !buf->data || !strstr (buf->data, needle)) {
        ssize_t got = recv (fd, chunk, sizeof (chunk), 0);
        if (got == 0)
            return needle == NULL;
        if (got < 0)
            return false;
        s_buf_add (buf, chunk, (size_t) got);
    }
    return true;
}

static const char *
s_find_header (const char *head, const char *name, char *out, size_t size)
{
    size_t name_length = strlen (name);
    const char *line = strstr (head, "\r\n");
    while (line && line [2]) {
        line += 2;
        if (strncasecmp (line, name, name_length) == 0 && line [name_length] == ':') {
            const char *value = line + name_length + 1;
            while (*value == ' ')
                value++;
            size_t length = strcspn (value, "\r\n");
            if (length >= size)
                length = size - 1;
            memcpy (out, value, length);
            out [length] = 0;
            return out;
        }
        line = strstr (line, "\r\n");
    }
    return NULL;
}

//  Split what was read into status, head and decoded body
static int
s_parse (s_buf_t *raw, s_resp_t *resp)
{
    memset (resp, 0, sizeof (*resp));
    if (!raw->data)
        return -1;
    char *end = strstr (raw->data, "\r\n\r\n");
    if (!end || strncmp (raw->data, "HTTP/1.", 7) != 0)
        return -1;
    resp->status = atoi (raw->data + 9);
    resp->head = strndup (raw->data, (size_t) (end - raw->data) + 2);
    const char *body = end + 4;
    size_t body_size = raw->size - (size_t) (body - raw->data);
    char value [64];
    s_buf_t decoded = { NULL, 0, 0 };
    s_buf_add (&decoded, "", 0);
    if (s_find_header (resp->head, "Transfer-Encoding", value, sizeof (value))
    &&  strcasecmp (value, "chunked") == 0) {
        const char *cursor = body;
        const char *limit = body + body_size;
        while (cursor < limit) {
            char *after;
            unsigned long length = strtoul (cursor, &after, 16);
            const char *data = strstr (after, "\r\n");
            if (!data)
                break;
            data += 2;
            if (length == 0 || data + length > limit)
                break;
            s_buf_add (&decoded, data, length);
            cursor = data + length + 2;
        }
    }
    else
        s_buf_add (&decoded, body, body_size);
    resp->body = decoded.data;
    resp->body_size = decoded.size;
    return resp->status;
}

//  One request on its own connection ("Connection: close"), read to EOF
static int
s_http (int port, const char *request, size_t size, s_resp_t *resp)
{
    memset (resp, 0, sizeof (*resp));
    int fd = s_connect (port);
    if (fd < 0)
        return -1;
    s_buf_t raw = { NULL, 0, 0 };
    int status = -1;
    if (s_send_all (fd, request, size) && s_read_until (fd, &raw, NULL))
        status = s_parse (&raw, resp);
    free (raw.data);
    close (fd);
    return status;
}

static char *
s_format_request (const char *method, const char *path, const char *headers,
                  const char *body, size_t *size)
{
    size_t body_size = body ? strlen (body) : 0;
    char *text = NULL;
    int length;
    if (body)
        length = asprintf (&text, "%s %s HTTP/1.1\r\nHost: test\r\nConnection: close\r\n"
                           "Content-Type: application/json\r\nContent-Length: %zu\r\n%s\r\n%s",
                           method, path, body_size, headers ? headers : "", body);
    else
        length = asprintf (&text, "%s %s HTTP/1.1\r\nHost: test\r\nConnection: close\r\n%s\r\n",
                           method, path, headers ? headers : "");
    REQUIRE (length > 0);
    *size = (size_t) length;
    return text;
}

static int
s_call (int port, const char *method, const char *path, const char *headers,
        const char *body, s_resp_t *resp)
{
    size_t size;
    char *request = s_format_request (method, path, headers, body, &size);
    int status = s_http (port, request, size, resp);
    free (request);
    return status;
}

static bool
s_header_is (const s_resp_t *resp, const char *name, const char *expected)
{
    char value [512];
    return resp->head && s_find_header (resp->head, name, value, sizeof (value))
        && strcmp (value, expected) == 0;
}

static bool
s_has_header (const s_resp_t *resp, const char *name)
{
    char value [512];
    return resp->head && s_find_header (resp->head, name, value, sizeof (value)) && *value;
}

static bool
s_body_is (const s_resp_t *resp, const char *expected)
{
    return resp->body && strcmp (resp->body, expected) == 0;
}

static bool
s_body_has (const s_resp_t *resp, const char *part)
{
    return resp->body && strstr (resp->body, part);
}

static bool
s_is_uuid (const char *text)
{
    if (strlen (text) != 36 || text [14] != '4')
        return false;
    for (int index = 0; index < 36; index++) {
        bool dash = index == 8 || index == 13 || index == 18 || index == 23;
        if (dash ? text [index] != '-' : !strchr ("0123456789abcdef", text [index]))
            return false;
    }
    return true;
}

//  CPU time (user + system, ms) a process has used
static long
s_cpu_ms (pid_t pid)
{
    char path [64];
    snprintf (path, sizeof (path), "/proc/%d/stat", (int) pid);
    FILE *file = fopen (path, "r");
    if (!file)
        return -1;
    char text [1024];
    size_t got = fread (text, 1, sizeof (text) - 1, file);
    fclose (file);
    text [got] = 0;
    char *cursor = strrchr (text, ')');
    if (!cursor)
        return -1;
    unsigned long utime = 0, stime = 0;
    //  After ")": state is field 3; utime and stime are fields 14 and 15
    if (sscanf (cursor + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu",
                &utime, &stime) != 2)
        return -1;
    return (long) ((utime + stime) * 1000 / (unsigned long) sysconf (_SC_CLK_TCK));
}

//  ---------------------------------------------------------------------
//  Processes

typedef struct {
    pid_t pid;
    int   port;
    char  endpoint [256];
    char  events_endpoint [256];
    char  config_path [256];
    char  log_path [256];
    int   listen_fd;
} s_frontend_proc_t;

static int
s_listen_socket (int *port)
{
    int fd = socket (AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    REQUIRE (fd >= 0);
    struct sockaddr_in address;
    memset (&address, 0, sizeof (address));
    address.sin_family = AF_INET;
    address.sin_addr.s_addr = htonl (INADDR_LOOPBACK);
    int rc = bind (fd, (struct sockaddr *) &address, sizeof (address));
    REQUIRE (rc == 0);
    rc = listen (fd, 1024);
    REQUIRE (rc == 0);
    socklen_t length = sizeof (address);
    getsockname (fd, (struct sockaddr *) &address, &length);
    *port = ntohs (address.sin_port);
    return fd;
}

static void
s_write_config (const char *path, bool with_key)
{
    FILE *file = fopen (path, "w");
    REQUIRE (file);
    fprintf (file,
        "model_list:\n"
        "  - model_name: gpt-4o\n"
        "    litellm_params:\n"
        "      model: openai/gpt-4o\n"
        "      api_key: sk-upstream-secret-key\n"
        "      api_base: http://127.0.0.1:9/v1\n"
        "    model_info:\n"
        "      id: dep-gpt-4o\n"
        "  - model_name: gpt-4o\n"
        "    litellm_params:\n"
        "      model: openai/gpt-4o-mini\n"
        "      api_key: sk-upstream-secret-key\n"
        "      api_base: http://127.0.0.1:9/v1\n"
        "  - model_name: text-embedding-3-small\n"
        "    litellm_params:\n"
        "      model: openai/text-embedding-3-small\n"
        "      api_base: http://127.0.0.1:9/v1\n"
        "general_settings:\n"
        "%s"
        "  max_request_size_mb: 0.01\n"
        "litellm_settings:\n"
        "  request_timeout: 30\n"
        "zgate_settings:\n"
        "  heartbeat_ms: 500\n"
        "  queue_timeout_ms: 1000\n",
        with_key ? "  master_key: " MASTER_KEY "\n" : "");
    fclose (file);
}

//  events_endpoint NULL: ipc://<dir>/<name>-events.ipc; with one given,
//  the frontend's log goes to log_path (unless verbose), for the test to read
static void
s_start_frontend (s_frontend_proc_t *proc, const char *dir, const char *name, bool with_key,
                  int other_fd, const char *events_endpoint)
{
    snprintf (proc->endpoint, sizeof (proc->endpoint), "ipc://%s/%s.ipc", dir, name);
    if (events_endpoint)
        snprintf (proc->events_endpoint, sizeof (proc->events_endpoint), "%s", events_endpoint);
    else
        snprintf (proc->events_endpoint, sizeof (proc->events_endpoint), "ipc://%s/%s-events.ipc",
                  dir, name);
    snprintf (proc->log_path, sizeof (proc->log_path), "%s/%s.log", dir, name);
    snprintf (proc->config_path, sizeof (proc->config_path), "%s/%s.yaml", dir, name);
    s_write_config (proc->config_path, with_key);
    proc->listen_fd = s_listen_socket (&proc->port);
    fflush (stdout);
    fflush (stderr);
    proc->pid = fork ();
    REQUIRE (proc->pid >= 0);
    if (proc->pid == 0) {
        if (other_fd >= 0)
            close (other_fd);
        if (!s_verbose && !freopen ("/dev/null", "w", stdout))
            _exit (3);
        if (!s_verbose && events_endpoint && !freopen (proc->log_path, "w", stderr))
            _exit (3);
        char errbuf [512];
        zg_config_t *config = zg_config_load (proc->config_path, errbuf, sizeof (errbuf));
        if (!config) {
            fprintf (stderr, "test_frontend: %s\n", errbuf);
            _exit (2);
        }
        zg_log_init ("zgate.frontend", s_verbose, false);
        int rc = zg_frontend_run (config, proc->endpoint, proc->events_endpoint, proc->listen_fd);
        zg_config_destroy (&config);
        //  exit, not _exit: the sanitizers' leak check runs at exit
        exit (rc);
    }
}

static int
s_stop_frontend (s_frontend_proc_t *proc)
{
    kill (proc->pid, SIGTERM);
    int status = 0;
    for (int tries = 0; tries < 200; tries++) {
        pid_t done = waitpid (proc->pid, &status, WNOHANG);
        if (done == proc->pid)
            return WIFEXITED (status) ? WEXITSTATUS (status) : 128 + WTERMSIG (status);
        usleep (50 * 1000);
    }
    kill (proc->pid, SIGKILL);
    waitpid (proc->pid, &status, 0);
    return -1;
}

static char *
s_read_file (const char *path)
{
    FILE *file = fopen (path, "r");
    if (!file)
        return NULL;
    char *text = (char *) calloc (1, 65536);
    if (text && fread (text, 1, 65535, file) == 0 && ferror (file)) {
        free (text);
        text = NULL;
    }
    fclose (file);
    return text;
}

//  The exit code of a frontend that stops by itself (safety net: 30 s)
static int
s_wait_exit (s_frontend_proc_t *proc)
{
    int status = 0;
    for (int tries = 0; tries < 600; tries++) {
        if (waitpid (proc->pid, &status, WNOHANG) == proc->pid)
            return WIFEXITED (status) ? WEXITSTATUS (status) : 128 + WTERMSIG (status);
        usleep (50 * 1000);
    }
    return s_stop_frontend (proc) == 0 ? -1 : -2;
}

//  Poll readiness until it answers the wanted status (safety net: 10 s)
static bool
s_wait_readiness (int port, int wanted)
{
    for (int tries = 0; tries < 200; tries++) {
        s_resp_t resp;
        int status = s_call (port, "GET", "/health/readiness", NULL, NULL, &resp);
        s_resp_free (&resp);
        if (status == wanted)
            return true;
        usleep (50 * 1000);
    }
    return false;
}

static bool
s_wait_cancel (zactor_t *fake, const char *call_id)
{
    for (int tries = 0; tries < 200; tries++) {
        s_counts_t counts;
        s_counts (fake, &counts);
        if (strcmp (counts.last_cancel, call_id) == 0)
            return true;
        usleep (50 * 1000);
    }
    return false;
}

static bool
s_wait_requests (zactor_t *fake, int wanted)
{
    for (int tries = 0; tries < 200; tries++) {
        s_counts_t counts;
        s_counts (fake, &counts);
        if (counts.requests >= wanted)
            return true;
        usleep (50 * 1000);
    }
    return false;
}

//  ---------------------------------------------------------------------
//  The tests against a running frontend

static void
s_test_public_routes (int port)
{
    s_resp_t resp;
    const char *paths [] = { "/health/liveliness", "/health/liveness", "/v1/health/liveness" };
    for (size_t index = 0; index < 3; index++) {
        CHECK (s_call (port, "GET", paths [index], NULL, NULL, &resp) == 200);
        CHECK (s_body_is (&resp, "\"I'm alive!\""));
        CHECK (s_header_is (&resp, "Content-Type", "application/json"));
        s_resp_free (&resp);
    }
    CHECK (s_call (port, "GET", "/health/readiness", NULL, NULL, &resp) == 200);
    CHECK (s_body_has (&resp, "\"status\":\"healthy\""));
    CHECK (s_body_has (&resp, "\"db\":\"Not connected\""));
    CHECK (s_body_has (&resp, "\"cache\":null"));
    CHECK (s_body_has (&resp, "\"litellm_version\":\"" ZG_VERSION "\""));
    CHECK (s_body_has (&resp, "\"success_callbacks\":[]"));
    CHECK (s_body_has (&resp, "\"log_level\":"));
    CHECK (s_body_has (&resp, "\"is_detailed_debug\":"));
    s_resp_free (&resp);

    CHECK (s_call (port, "GET", "/", NULL, NULL, &resp) == 200);
    CHECK (s_header_is (&resp, "Content-Type", "application/json"));
    CHECK (s_body_has (&resp, "{"));
    s_resp_free (&resp);

    //  HEAD is served like GET, without a body
    CHECK (s_call (port, "HEAD", "/health/liveness", NULL, NULL, &resp) == 200);
    CHECK (resp.body_size == 0);
    s_resp_free (&resp);
}

static void
s_test_model_listings (int port)
{
    s_resp_t resp;
    const char *models =
        "{\"data\":[{\"id\":\"gpt-4o\",\"object\":\"model\",\"created\":1677610602,\"owned_by\":\"openai\"},"
        "{\"id\":\"text-embedding-3-small\",\"object\":\"model\",\"created\":1677610602,"
        "\"owned_by\":\"openai\"}],\"object\":\"list\"}";
    CHECK (s_call (port, "GET", "/models", NULL, NULL, &resp) == 401);
    CHECK (s_body_has (&resp, "\"type\":\"auth_error\""));
    s_resp_free (&resp);
    CHECK (s_call (port, "GET", "/v1/models", AUTH, NULL, &resp) == 200);
    CHECK (s_body_is (&resp, models));
    CHECK (s_header_is (&resp, "Content-Type", "application/json"));
    s_resp_free (&resp);
    CHECK (s_call (port, "GET", "/models", AUTH, NULL, &resp) == 200);
    CHECK (s_body_is (&resp, models));
    s_resp_free (&resp);

    CHECK (s_call (port, "GET", "/model/info", NULL, NULL, &resp) == 401);
    s_resp_free (&resp);
    CHECK (s_call (port, "GET", "/v1/model/info", AUTH, NULL, &resp) == 200);
    CHECK (s_body_has (&resp, "{\"data\":[{\"model_name\":\"gpt-4o\",\"litellm_params\":{"));
    CHECK (s_body_has (&resp, "\"model\":\"openai/gpt-4o-mini\""));
    CHECK (s_body_has (&resp, "\"model_name\":\"text-embedding-3-small\""));
    CHECK (s_body_has (&resp, "\"model_info\":{\"id\":\"dep-gpt-4o\""));
    CHECK (s_body_has (&resp, "\"litellm_provider\":\"openai\""));
    CHECK (s_body_has (&resp, "\"mode\":\"embedding\""));
    CHECK (s_body_has (&resp, "\"input_cost_per_token\":"));
    CHECK (!s_body_has (&resp, "api_key"));
    CHECK (!s_body_has (&resp, "sk-upstream-secret-key"));
    CHECK (!s_body_has (&resp, MASTER_KEY));
    s_resp_free (&resp);
}

static void
s_test_not_found_and_methods (int port)
{
    s_resp_t resp;
    CHECK (s_call (port, "GET", "/v1/no/such/route", AUTH, NULL, &resp) == 404);
    CHECK (s_body_is (&resp, "{\"error\":{\"message\":\"Not Found\",\"type\":\"not_found_error\","
                             "\"param\":null,\"code\":\"404\"}}"));
    CHECK (s_header_is (&resp, "Content-Type", "application/json"));
    s_resp_free (&resp);
    CHECK (s_call (port, "POST", "/v1/no-such-thing", AUTH, "{\"model\":\"json\"}", &resp) == 404);
    s_resp_free (&resp);

    CHECK (s_call (port, "GET", "/chat/completions", AUTH, NULL, &resp) == 405);
    CHECK (s_header_is (&resp, "Allow", "POST"));
    CHECK (s_body_has (&resp, "\"code\":\"405\""));
    s_resp_free (&resp);
    CHECK (s_call (port, "DELETE", "/v1/embeddings", AUTH, NULL, &resp) == 405);
    CHECK (s_header_is (&resp, "Allow", "POST"));
    s_resp_free (&resp);
    CHECK (s_call (port, "POST", "/models", AUTH, "{}", &resp) == 405);
    CHECK (s_header_is (&resp, "Allow", "GET, HEAD"));
    s_resp_free (&resp);
    CHECK (s_call (port, "PUT", "/health/readiness", NULL, NULL, &resp) == 405);
    s_resp_free (&resp);
}

static void
s_test_auth (int port, zactor_t *fake)
{
    s_resp_t resp;
    const char *body = "{\"model\":\"json\"}";
    s_counts_t before, after;
    s_counts (fake, &before);

    CHECK (s_call (port, "POST", "/chat/completions", NULL, body, &resp) == 401);
    CHECK (s_body_is (&resp, "{\"error\":{\"message\":\"Authentication Error, No api key passed in.\","
                             "\"type\":\"auth_error\",\"param\":null,\"code\":\"401\"}}"));
    CHECK (s_has_header (&resp, "x-litellm-call-id"));
    s_resp_free (&resp);

    CHECK (s_call (port, "POST", "/chat/completions",
                   "Authorization: Bearer sk-wrong-key-abcd1234\r\n", body, &resp) == 401);
    CHECK (s_body_has (&resp, "Authentication Error, Invalid proxy server token passed."));
    CHECK (s_body_has (&resp, "sk-...1234"));
    CHECK (!s_body_has (&resp, "sk-wrong-key"));
    CHECK (s_body_has (&resp, "\"type\":\"auth_error\""));
    s_resp_free (&resp);

    CHECK (s_call (port, "POST", "/chat/completions", "x-api-key: sk-wrong\r\n", body, &resp) == 401);
    CHECK (!s_body_has (&resp, "sk-wrong"));
    s_resp_free (&resp);

    CHECK (s_call (port, "POST", "/chat/completions", "Authorization: " MASTER_KEY "\r\n",
                   body, &resp) == 401);
    CHECK (s_body_has (&resp, "Malformed API Key"));
    s_resp_free (&resp);

    s_counts (fake, &after);
    CHECK (after.requests == before.requests);      //  no refused request reached the router

    const char *forms [] = {
        AUTH,
        "authorization: bearer " MASTER_KEY "\r\n",
        "x-api-key: " MASTER_KEY "\r\n",
        "API-Key: " MASTER_KEY "\r\n",
        "x-litellm-api-key: " MASTER_KEY "\r\n",
    };
    for (size_t index = 0; index < sizeof (forms) / sizeof (forms [0]); index++) {
        CHECK (s_call (port, "POST", "/chat/completions", forms [index], body, &resp) == 200);
        s_resp_free (&resp);
    }
}

static void
s_test_bad_requests (int port, zactor_t *fake)
{
    s_resp_t resp;
    s_counts_t before, after;
    s_counts (fake, &before);

    CHECK (s_call (port, "POST", "/chat/completions", AUTH, "{\"model\": \"json\", ", &resp) == 400);
    CHECK (s_body_has (&resp, "\"type\":\"bad_request_error\""));
    CHECK (s_body_has (&resp, "\"code\":\"400\""));
    CHECK (s_header_is (&resp, "Content-Type", "application/json"));
    CHECK (s_has_header (&resp, "x-litellm-call-id"));
    s_resp_free (&resp);
    CHECK (s_call (port, "POST", "/chat/completions", AUTH, "not json at all", &resp) == 400);
    s_resp_free (&resp);
    CHECK (s_call (port, "POST", "/chat/completions", AUTH, "", &resp) == 400);
    s_resp_free (&resp);

    CHECK (s_call (port, "POST", "/chat/completions", AUTH, "{\"messages\":[]}", &resp) == 400);
    CHECK (s_body_has (&resp, "\"param\":\"model\""));
    CHECK (s_body_has (&resp, "Invalid model name passed in model=None"));
    s_resp_free (&resp);
    CHECK (s_call (port, "POST", "/v1/embeddings", AUTH, "{\"model\":5}", &resp) == 400);
    CHECK (s_body_has (&resp, "\"param\":\"model\""));
    s_resp_free (&resp);
    CHECK (s_call (port, "POST", "/v1/embeddings", AUTH, "[\"model\"]", &resp) == 400);
    s_resp_free (&resp);

    //  413 from Content-Length alone: only the headers are sent, the
    //  answer comes without the body being read
    char request [512];
    int length = snprintf (request, sizeof (request),
        "POST /chat/completions HTTP/1.1\r\nHost: test\r\nConnection: close\r\n" AUTH
        "Content-Type: application/json\r\nContent-Length: %d\r\n\r\n", BODY_LIMIT + 1);
    CHECK (s_http (port, request, (size_t) length, &resp) == 413);
    CHECK (s_body_has (&resp, "\"code\":\"413\""));
    CHECK (s_has_header (&resp, "x-litellm-call-id"));
    s_resp_free (&resp);

    //  413 while counting a chunked upload
    s_buf_t upload = { NULL, 0, 0 };
    const char *head = "POST /chat/completions HTTP/1.1\r\nHost: test\r\nConnection: close\r\n" AUTH
                       "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n";
    s_buf_add (&upload, head, strlen (head));
    char piece [1024];
    memset (piece, 'x', sizeof (piece));
    for (int index = 0; index < 12; index++) {
        char size_line [16];
        snprintf (size_line, sizeof (size_line), "%zx\r\n", sizeof (piece));
        s_buf_add (&upload, size_line, strlen (size_line));
        s_buf_add (&upload, piece, sizeof (piece));
        s_buf_add (&upload, "\r\n", 2);
    }
    s_buf_add (&upload, "0\r\n\r\n", 5);
    CHECK (s_http (port, upload.data, upload.size, &resp) == 413);
    CHECK (s_body_has (&resp, "\"code\":\"413\""));
    s_resp_free (&resp);
    free (upload.data);

    //  A chunked upload under the limit goes through, whole
    upload.data = NULL;
    upload.size = upload.cap = 0;
    s_buf_add (&upload, head, strlen (head));
    s_buf_add (&upload, "6\r\n{\"mode\r\n", 11);
    s_buf_add (&upload, "a\r\nl\":\"json\"}\r\n0\r\n\r\n", 20);
    CHECK (s_http (port, upload.data, upload.size, &resp) == 200);
    s_resp_free (&resp);
    free (upload.data);
    s_last_t last = { .body = NULL };
    s_last (fake, &last);
    CHECK (strcmp (last.body, "{\"model\":\"json\"}") == 0);
    free (last.body);

    s_counts (fake, &after);
    CHECK (after.requests == before.requests + 1);
}

//  Bodies on either side of the size that travels in a message's own
//  frame (ZG_PAYLOAD_INLINE_MAX), with a Content-Length and chunked, one
//  after the other (a call's buffer is kept for the next): each reaches
//  the router whole and comes back whole as the answer
static void
s_test_body_sizes (int port, zactor_t *fake)
{
    const size_t sizes [] = { 40, ZG_PAYLOAD_INLINE_MAX - 1, ZG_PAYLOAD_INLINE_MAX,
                              ZG_PAYLOAD_INLINE_MAX + 1, BODY_LIMIT, 100 };
    const char *head = "POST /chat/completions HTTP/1.1\r\nHost: test\r\nConnection: close\r\n" AUTH
                       "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n";
    for (size_t which = 0; which < sizeof (sizes) / sizeof (sizes [0]); which++) {
        for (int chunked = 0; chunked < 2; chunked++) {
            size_t size = sizes [which];
            const char *open = "{\"model\":\"echo\",\"pad\":\"";
            char *body = (char *) malloc (size + 1);
            REQUIRE (body);
            memset (body, 'a', size);
            memcpy (body, open, strlen (open));
            for (size_t at = strlen (open); at < size - 2; at++)
                body [at] = (char) ('a' + at % 26);
            memcpy (body + size - 2, "\"}", 2);
            body [size] = 0;
            s_resp_t resp;
            if (chunked) {
                s_buf_t upload = { NULL, 0, 0 };
                s_buf_add (&upload, head, strlen (head));
                for (size_t at = 0; at < size; at += 1000) {
                    size_t piece = size - at < 1000? size - at: 1000;
                    char size_line [16];
                    snprintf (size_line, sizeof (size_line), "%zx\r\n", piece);
                    s_buf_add (&upload, size_line, strlen (size_line));
                    s_buf_add (&upload, body + at, piece);
                    s_buf_add (&upload, "\r\n", 2);
                }
                s_buf_add (&upload, "0\r\n\r\n", 5);
                CHECK (s_http (port, upload.data, upload.size, &resp) == 200);
                free (upload.data);
            }
            else
                CHECK (s_call (port, "POST", "/chat/completions", AUTH, body, &resp) == 200);
            CHECK (resp.body_size == size && s_body_is (&resp, body));
            s_resp_free (&resp);
            s_last_t last = { .body = NULL };
            s_last (fake, &last);
            CHECK (last.body_size == size && strcmp (last.body, body) == 0);
            free (last.body);
            free (body);
        }
    }
}

static void
s_test_forwarding (int port, zactor_t *fake)
{
    s_resp_t resp;
    s_last_t last = { .body = NULL };

    //  The body reaches the router byte for byte, with the fields read from it
    const char *body = "{ \"messages\":[{\"role\":\"user\",\"content\":\"hi \\u00e9 there\"}],\n"
                       "  \"model\" :  \"json\",  \"temperature\":0.25, \"stream\" : false }";
    CHECK (s_call (port, "POST", "/v1/chat/completions", AUTH, body, &resp) == 200);
    s_last (fake, &last);
    CHECK (strcmp (last.body, body) == 0);
    CHECK (last.body_size == strlen (body));
    CHECK (strcmp (last.model, "json") == 0);
    CHECK (last.route == ZG_ROUTE_CHAT);
    //  validated, and where the worker will splice: the model's value
    CHECK (last.flags == ZG_FLAG_BODY_LOCATED);
    CHECK (last.timeout_ms == 30000);
    CHECK (last.model_span == zg_msg_span ((uint32_t) (strstr (body, "\"json\"") - body), 6)
        && last.options_span == 0);
    //  A new call id, a UUID v4, echoed to the client
    CHECK (s_is_uuid (last.call_id));
    CHECK (s_header_is (&resp, "x-litellm-call-id", last.call_id));
    //  The answer: the router's body and the reference's headers
    CHECK (s_body_is (&resp, "{\"object\":\"chat.completion\",\"ok\":true}"));
    CHECK (s_header_is (&resp, "Content-Type", "application/json"));
    CHECK (s_header_is (&resp, "x-litellm-model-id", "dep-1"));
    CHECK (s_header_is (&resp, "x-litellm-model-group", "json"));
    CHECK (s_header_is (&resp, "x-litellm-model-api-base", "http://up.example/v1"));
    CHECK (s_header_is (&resp, "x-litellm-version", ZG_VERSION));
    CHECK (s_has_header (&resp, "x-litellm-response-duration-ms"));
    CHECK (s_header_is (&resp, "llm_provider-x-request-id", "req-123"));
    CHECK (s_header_is (&resp, "llm_provider-openai-processing-ms", "7"));
    //  The cost came with the final HEAD
    CHECK (s_header_is (&resp, "x-litellm-response-cost", "0.000125"));
    s_resp_free (&resp);

    //  Flags, routes, and the model named by the path
    CHECK (s_call (port, "POST", "/completions", AUTH,
                   "{\"model\":\"json\",\"stream\":true,\"stream_options\":{\"include_usage\":true}}",
                   &resp) == 200);
    s_resp_free (&resp);
    s_last (fake, &last);
    CHECK (last.route == ZG_ROUTE_COMPLETIONS);
    CHECK (last.flags == (ZG_FLAG_STREAM | ZG_FLAG_CLIENT_USAGE | ZG_FLAG_BODY_LOCATED));
    CHECK (last.model_span == zg_msg_span (9, 6) && last.options_span == zg_msg_span (47, 22));
    CHECK (s_call (port, "POST", "/embeddings", AUTH,
                   "{\"model\":\"json\",\"stream_options\":{\"include_usage\":false},\"stream\":1}",
                   &resp) == 200);
    s_resp_free (&resp);
    s_last (fake, &last);
    CHECK (last.route == ZG_ROUTE_EMBEDDINGS);
    CHECK (last.flags == ZG_FLAG_BODY_LOCATED);
    CHECK (s_call (port, "POST", "/engines/json/chat/completions", AUTH, "{\"messages\":[]}",
                   &resp) == 200);
    CHECK (s_header_is (&resp, "x-litellm-model-group", "json"));
    s_resp_free (&resp);
    s_last (fake, &last);
    CHECK (strcmp (last.model, "json") == 0);
    CHECK (last.route == ZG_ROUTE_CHAT);
    CHECK (last.flags == ZG_FLAG_BODY_LOCATED && last.model_span == 0 && last.options_span == 0);
    CHECK (s_call (port, "POST", "/openai/deployments/json/embeddings", AUTH,
                   " \n{\"model\":\"other\"}\r\n", &resp) == 200);
    s_resp_free (&resp);
    s_last (fake, &last);
    CHECK (strcmp (last.model, "json") == 0);
    CHECK (last.route == ZG_ROUTE_EMBEDDINGS);
    CHECK (last.flags == ZG_FLAG_BODY_LOCATED && last.model_span == zg_msg_span (11, 7));
    //  Shapes a worker has no spans for: none sent, it scans
    static const char *const unlocated [] = {
        "{\"model\":7}", "{\"model\":null,\"stream_options\":{}}", "[{\"model\":\"x\"}]",
        "{\"model\":\"json\",\"stream_options\":null}", "\"json\""
    };
    for (size_t index = 0; index < sizeof unlocated / sizeof unlocated [0]; index++) {
        CHECK (s_call (port, "POST", "/openai/deployments/json/chat/completions", AUTH,
                       unlocated [index], &resp) == 200);
        s_resp_free (&resp);
        s_last (fake, &last);
        CHECK (strcmp (last.body, unlocated [index]) == 0);
        CHECK (last.flags == 0 && last.model_span == 0 && last.options_span == 0);
    }

    //  The client's own call id is used and echoed; an insane one is not
    CHECK (s_call (port, "POST", "/chat/completions", AUTH "x-litellm-call-id: my-call.id:42\r\n",
                   "{\"model\":\"json\"}", &resp) == 200);
    CHECK (s_header_is (&resp, "x-litellm-call-id", "my-call.id:42"));
    s_resp_free (&resp);
    s_last (fake, &last);
    CHECK (strcmp (last.call_id, "my-call.id:42") == 0);
    CHECK (s_call (port, "POST", "/chat/completions", AUTH "x-litellm-call-id: bad/id\r\n",
                   "{\"model\":\"json\"}", &resp) == 200);
    s_resp_free (&resp);
    s_last (fake, &last);
    CHECK (s_is_uuid (last.call_id));
    free (last.body);

    //  An unknown model: the router's ERROR, rendered by the frontend
    CHECK (s_call (port, "POST", "/chat/completions", AUTH, "{\"model\":\"nope\"}", &resp) == 400);
    CHECK (s_body_is (&resp, "{\"error\":{\"message\":\"Invalid model name passed in model=nope\","
                             "\"type\":\"bad_request_error\",\"param\":null,\"code\":\"400\"}}"));
    s_resp_free (&resp);
}

static void
s_test_answers (int port, zactor_t *fake, pid_t frontend_pid)
{
    s_resp_t resp;

    //  A stream relayed in order, the upstream's [DONE] not doubled
    CHECK (s_call (port, "POST", "/chat/completions", AUTH,
                   "{\"model\":\"stream\",\"stream\":true}", &resp) == 200);
    CHECK (s_header_is (&resp, "Content-Type", "text/event-stream"));
    CHECK (s_header_is (&resp, "Transfer-Encoding", "chunked"));
    CHECK (s_header_is (&resp, "x-litellm-model-group", "stream"));
    CHECK (s_has_header (&resp, "x-litellm-call-id"));
    CHECK (s_header_is (&resp, "llm_provider-x-request-id", "req-123"));
    CHECK (s_body_is (&resp, "data: {\"n\":1}\n\ndata: {\"n\":2}\n\ndata: [DONE]\n\n"));
    s_resp_free (&resp);

    //  ERROR before HEAD: a JSON error with the router's status
    CHECK (s_call (port, "POST", "/chat/completions", AUTH, "{\"model\":\"err\"}", &resp) == 429);
    CHECK (s_body_is (&resp, "{\"error\":{\"message\":\"slow down\",\"type\":\"rate_limit_error\","
                             "\"param\":null,\"code\":\"429\"}}"));
    CHECK (s_header_is (&resp, "Content-Type", "application/json"));
    CHECK (s_has_header (&resp, "x-litellm-call-id"));
    s_resp_free (&resp);

    //  ERROR after the stream started: in-stream, then [DONE]
    CHECK (s_call (port, "POST", "/chat/completions", AUTH,
                   "{\"model\":\"midstream\",\"stream\":true}", &resp) == 200);
    CHECK (s_body_is (&resp, "data: {\"n\":1}\n\n"
                             "data: {\"error\":{\"message\":\"upstream reset\","
                             "\"type\":\"internal_server_error\",\"param\":null,\"code\":\"500\"}}\n\n"
                             "data: [DONE]\n\n"));
    s_resp_free (&resp);

    //  An error inside an event: the event is closed, the error is its own
    CHECK (s_call (port, "POST", "/chat/completions", AUTH,
                   "{\"model\":\"midevent\",\"stream\":true}", &resp) == 200);
    CHECK (s_body_is (&resp, "data: {\"n\":\n\n"
                             "data: {\"error\":{\"message\":\"upstream reset\","
                             "\"type\":\"internal_server_error\",\"param\":null,\"code\":\"502\"}}\n\n"
                             "data: [DONE]\n\n"));
    s_resp_free (&resp);

    //  A stream delivered chunk by chunk: the first chunk reaches the
    //  client while the rest does not exist yet; waiting costs no CPU;
    //  a stream that ends without [DONE] gets one
    size_t size;
    char *request = s_format_request ("POST", "/chat/completions", AUTH,
                                      "{\"model\":\"step\",\"stream\":true}", &size);
    int fd = s_connect (port);
    CHECK (fd >= 0);
    s_buf_t raw = { NULL, 0, 0 };
    CHECK (s_send_all (fd, request, size));
    CHECK (s_read_until (fd, &raw, "data: {\"n\":1}\n\n"));
    long cpu_before = s_cpu_ms (frontend_pid);
    usleep (600 * 1000);
    long cpu_after = s_cpu_ms (frontend_pid);
    if (s_verbose)
        printf ("   frontend CPU while a stream waited 600 ms: %ld ms\n", cpu_after - cpu_before);
    CHECK (cpu_before >= 0 && cpu_after - cpu_before < 300);
    s_command (fake, "NEXT");
    CHECK (s_read_until (fd, &raw, NULL));
    CHECK (s_parse (&raw, &resp) == 200);
    CHECK (s_body_is (&resp, "data: {\"n\":1}\n\ndata: {\"n\":2}\n\ndata: [DONE]\n\n"));
    s_resp_free (&resp);
    free (raw.data);
    close (fd);

    //  Client gone mid-stream: the router is told
    fd = s_connect (port);
    raw.data = NULL;
    raw.size = raw.cap = 0;
    CHECK (s_send_all (fd, request, size));
    CHECK (s_read_until (fd, &raw, "data: {\"n\":1}\n\n"));
    char id [ZG_CALL_ID_MAX + 1] = "";
    s_find_header (raw.data, "x-litellm-call-id", id, sizeof (id));
    CHECK (*id);
    close (fd);
    CHECK (s_wait_cancel (fake, id));
    s_command (fake, "NEXT");           //  a no-op: the call was cancelled
    free (raw.data);
    free (request);

    //  Client gone while waiting for the first byte: the router is told
    s_counts_t counts;
    s_counts (fake, &counts);
    request = s_format_request ("POST", "/chat/completions", AUTH "x-litellm-call-id: held-1\r\n",
                                "{\"model\":\"hold\"}", &size);
    fd = s_connect (port);
    CHECK (s_send_all (fd, request, size));
    CHECK (s_wait_requests (fake, counts.requests + 1));
    struct linger abort_now = { 1, 0 };     //  close with a reset
    setsockopt (fd, SOL_SOCKET, SO_LINGER, &abort_now, sizeof (abort_now));
    close (fd);
    CHECK (s_wait_cancel (fake, "held-1"));
    free (request);

    //  A client that does not read while the upstream floods: the queue
    //  stays bounded, the router is told to stop, and the client gets what
    //  was queued (whole events), then an in-stream error
    request = s_format_request ("POST", "/chat/completions", AUTH "x-litellm-call-id: flood-1\r\n",
                                "{\"model\":\"flood\",\"stream\":true}", &size);
    fd = socket (AF_INET, SOCK_STREAM, 0);
    int small = 4096;
    setsockopt (fd, SOL_SOCKET, SO_RCVBUF, &small, sizeof (small));
    struct sockaddr_in address;
    memset (&address, 0, sizeof (address));
    address.sin_family = AF_INET;
    address.sin_port = htons ((uint16_t) port);
    address.sin_addr.s_addr = htonl (INADDR_LOOPBACK);
    CHECK (connect (fd, (struct sockaddr *) &address, sizeof (address)) == 0);
    struct timeval timeout = { 20, 0 };
    setsockopt (fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof (timeout));
    CHECK (s_send_all (fd, request, size));
    CHECK (s_wait_cancel (fake, "flood-1"));
    raw.data = NULL;
    raw.size = raw.cap = 0;
    CHECK (s_read_until (fd, &raw, NULL));
    CHECK (s_parse (&raw, &resp) == 200);
    const char *tail = "data: {\"error\":{\"message\":\"Stream stopped: the client did not read it "
                       "fast enough\",\"type\":\"internal_server_error\",\"param\":null,"
                       "\"code\":\"500\"}}\n\ndata: [DONE]\n\n";
    CHECK (resp.body_size < 256 * 65536);
    CHECK (resp.body_size > 4 * 1024 * 1024);
    CHECK (resp.body_size % 65536 == strlen (tail) % 65536);
    CHECK (resp.body_size > strlen (tail)
        && strcmp (resp.body + resp.body_size - strlen (tail), tail) == 0);
    if (s_verbose)
        printf ("   flooded client received %zu bytes\n", resp.body_size);
    s_resp_free (&resp);
    free (raw.data);
    free (request);
    close (fd);

    //  And the frontend still serves
    CHECK (s_call (port, "POST", "/chat/completions", AUTH, "{\"model\":\"json\"}", &resp) == 200);
    s_resp_free (&resp);
}

static void
s_test_router_gone (int port, zactor_t *fake)
{
    s_resp_t resp;
    s_counts_t counts;
    s_counts (fake, &counts);

    //  A request waiting and a stream running when the router goes quiet
    size_t size;
    char *held = s_format_request ("POST", "/chat/completions", AUTH, "{\"model\":\"hold\"}", &size);
    int held_fd = s_connect (port);
    CHECK (s_send_all (held_fd, held, size));
    CHECK (s_wait_requests (fake, counts.requests + 1));
    free (held);
    char *step = s_format_request ("POST", "/chat/completions", AUTH,
                                   "{\"model\":\"step\",\"stream\":true}", &size);
    int step_fd = s_connect (port);
    s_buf_t step_raw = { NULL, 0, 0 };
    CHECK (s_send_all (step_fd, step, size));
    CHECK (s_read_until (step_fd, &step_raw, "data: {\"n\":1}\n\n"));
    free (step);

    s_command (fake, "MUTE");
    CHECK (s_wait_readiness (port, 503));
    CHECK (s_call (port, "GET", "/health/readiness", NULL, NULL, &resp) == 503);
    CHECK (s_body_has (&resp, "\"status\":\"unhealthy\""));
    CHECK (s_body_has (&resp, "router not reachable"));
    s_resp_free (&resp);

    //  New requests: 503 at once
    CHECK (s_call (port, "POST", "/chat/completions", AUTH, "{\"model\":\"json\"}", &resp) == 503);
    CHECK (s_body_has (&resp, "Router not reachable"));
    CHECK (s_body_has (&resp, "\"code\":\"503\""));
    s_resp_free (&resp);

    //  The waiting request failed with 503
    s_buf_t raw = { NULL, 0, 0 };
    CHECK (s_read_until (held_fd, &raw, NULL));
    CHECK (s_parse (&raw, &resp) == 503);
    CHECK (s_body_has (&resp, "Router not reachable"));
    s_resp_free (&resp);
    free (raw.data);
    close (held_fd);

    //  The stream ended with an in-stream error
    CHECK (s_read_until (step_fd, &step_raw, NULL));
    CHECK (s_parse (&step_raw, &resp) == 200);
    CHECK (s_body_has (&resp, "data: {\"n\":1}\n\ndata: {\"error\":{\"message\":\"Router not reachable\""));
    CHECK (s_body_has (&resp, "\"code\":\"503\"}}\n\ndata: [DONE]\n\n"));
    s_resp_free (&resp);
    free (step_raw.data);
    close (step_fd);

    //  Liveness does not depend on the router
    CHECK (s_call (port, "GET", "/health/liveness", NULL, NULL, &resp) == 200);
    s_resp_free (&resp);

    s_command (fake, "UNMUTE");
    s_command (fake, "NEXT");           //  forget the step stream
    CHECK (s_wait_readiness (port, 200));
    CHECK (s_call (port, "POST", "/chat/completions", AUTH, "{\"model\":\"json\"}", &resp) == 200);
    s_resp_free (&resp);
}

static void
s_test_no_master_key (int port)
{
    s_resp_t resp;
    CHECK (s_call (port, "POST", "/chat/completions", NULL, "{\"model\":\"json\"}", &resp) == 200);
    CHECK (s_body_is (&resp, "{\"object\":\"chat.completion\",\"ok\":true}"));
    s_resp_free (&resp);
    CHECK (s_call (port, "POST", "/chat/completions", "Authorization: Bearer whatever\r\n",
                   "{\"model\":\"json\"}", &resp) == 200);
    s_resp_free (&resp);
    CHECK (s_call (port, "GET", "/v1/models", NULL, NULL, &resp) == 200);
    s_resp_free (&resp);
    CHECK (s_call (port, "GET", "/model/info", NULL, NULL, &resp) == 200);
    s_resp_free (&resp);
}

//  Many requests on one keep-alive connection, and many connections at once
static void
s_test_keep_alive_and_concurrency (int port)
{
    int fd = s_connect (port);
    CHECK (fd >= 0);
    const char *body = "{\"model\":\"json\"}";
    char request [512];
    int length = snprintf (request, sizeof (request),
        "POST /chat/completions HTTP/1.1\r\nHost: test\r\n" AUTH
        "Content-Type: application/json\r\nContent-Length: %zu\r\n\r\n%s", strlen (body), body);
    int good = 0;
    for (int index = 0; index < 20; index++) {
        s_buf_t raw = { NULL, 0, 0 };
        if (s_send_all (fd, request, (size_t) length)
        &&  s_read_until (fd, &raw, "\"ok\":true}")
        &&  strncmp (raw.data, "HTTP/1.1 200", 12) == 0)
            good++;
        free (raw.data);
    }
    CHECK (good == 20);
    close (fd);

    enum { PARALLEL = 200 };
    int fds [PARALLEL];
    for (int index = 0; index < PARALLEL; index++) {
        fds [index] = s_connect (port);
        s_send_all (fds [index], request, (size_t) length);
    }
    good = 0;
    for (int index = 0; index < PARALLEL; index++) {
        s_buf_t raw = { NULL, 0, 0 };
        if (fds [index] >= 0 && s_read_until (fds [index], &raw, "\"ok\":true}")
        &&  strncmp (raw.data, "HTTP/1.1 200", 12) == 0)
            good++;
        free (raw.data);
        if (fds [index] >= 0)
            close (fds [index]);
    }
    CHECK (good == PARALLEL);
}

//  GET /health: the router's list of deployments, each probed pinned to
//  it (one it cannot serve reported without a probe); a list that does not
//  come, or comes wrong, gives the configuration's deployments, unhealthy
static void
s_test_health_check (int port, zactor_t *router)
{
    s_resp_t resp;
    s_counts_t before, after;
    s_command (router, "LIST good");
    s_counts (router, &before);
    CHECK (s_call (port, "GET", "/health", AUTH, NULL, &resp) == 200);
    CHECK (s_body_has (&resp, "\"healthy_count\":2,\"unhealthy_count\":2}"));
    CHECK (s_body_has (&resp, "{\"model\":\"openai/up-model\",\"api_base\":\"http://127.0.0.1:9/v1\","
                              "\"model_name\":\"gpt-4o\",\"model_id\":\"json\"}"));
    CHECK (s_body_has (&resp, "\"model_name\":\"db-embed\",\"model_id\":\"json\"}"));
    CHECK (s_body_has (&resp, "\"model_name\":\"db-model\",\"model_id\":\"err\","
                              "\"error\":\"slow down\"}"));
    CHECK (s_body_has (&resp, "{\"model\":\"\",\"api_base\":\"\",\"model_name\":\"db-broken\","
                              "\"model_id\":\"row-x\",\"error\":\"Not served: the database row "
                              "cannot be used: wrong salt key\"}"));
    CHECK (!s_body_has (&resp, "stray") && !s_body_has (&resp, "repeat"));
    CHECK (!s_body_has (&resp, "sk-upstream-secret-key"));
    s_resp_free (&resp);
    s_counts (router, &after);
    CHECK (after.requests == before.requests + 3);
    s_last_t last = { .body = NULL };
    s_last (router, &last);
    CHECK (last.flags == ZG_FLAG_PIN_DEPLOYMENT);
    free (last.body);

    s_command (router, "LIST empty");
    CHECK (s_call (port, "GET", "/health", AUTH, NULL, &resp) == 200);
    CHECK (s_body_is (&resp, "{\"healthy_endpoints\":[],\"unhealthy_endpoints\":[],"
                             "\"healthy_count\":0,\"unhealthy_count\":0}"));
    s_resp_free (&resp);

    //  The configuration's three, each unhealthy with why
    const char *modes [] = { "changed", "huge", "none" };
    const char *reasons [] = { "its list changed length while it was sent",
                               "its list is longer than the frontend takes",
                               "Request timed out" };
    for (size_t index = 0; index < 3; index++) {
        char command [32];
        snprintf (command, sizeof (command), "LIST %s", modes [index]);
        s_command (router, command);
        s_counts (router, &before);
        CHECK (s_call (port, "GET", "/health", AUTH, NULL, &resp) == 200);
        CHECK (s_body_has (&resp, "\"healthy_count\":0,\"unhealthy_count\":3}"));
        CHECK (s_body_has (&resp, "\"model_id\":\"dep-gpt-4o\",\"error\":\"Router not reachable: "));
        CHECK (s_body_has (&resp, reasons [index]));
        s_resp_free (&resp);
        s_counts (router, &after);
        CHECK (after.requests == before.requests);
    }
    s_command (router, "LIST none");
}

//  The self tests of the frontend's threads: the database side and the
//  watch on Redis. Each runs in a child (zg_unit_run): they start threads
//  and ZeroMQ contexts, which this process must not have when it forks
//  the frontends.
static const zg_unit_t s_db_side [] = {
    { "zg_admin", zg_admin_test },
    { "zg_keystore", zg_keystore_test },
    { "zg_redis_probe", zg_redis_probe_test },
    { "zg_redis_sync", zg_redis_sync_test },
};

int
main (int argc, char *argv [])
{
    s_verbose = argc > 1 && streq (argv [1], "-v");
    setvbuf (stdout, NULL, _IONBF, 0);
    unsetenv ("LITELLM_MASTER_KEY");
    unsetenv ("LITELLM_LOG");

    //  `test_frontend [-v] zg_keystore ...`: only those self tests
    //  (tests/e2e/test_keystore.py runs zg_keystore against a server)
    int first = s_verbose ? 2 : 1;
    if (argc > first) {
        zg_unit_t chosen [sizeof (s_db_side) / sizeof (s_db_side [0])];
        size_t count = 0;
        for (int arg = first; arg < argc; arg++)
            for (size_t index = 0; index < sizeof (s_db_side) / sizeof (s_db_side [0]); index++)
                if (streq (argv [arg], s_db_side [index].name))
                    chosen [count++] = s_db_side [index];
        if (count != (size_t) (argc - first)) {
            fprintf (stderr, "usage: test_frontend [-v] [zg_admin|zg_keystore|zg_redis_probe|zg_redis_sync]...\n");
            return 2;
        }
        return zg_unit_run (chosen, count, argc, argv);
    }
    size_t db_side_count = sizeof (s_db_side) / sizeof (s_db_side [0]);
    if (zg_unit_run (s_db_side, db_side_count, argc, argv) == 0)
        s_passed += (int) db_side_count;
    else
        s_failed++;

    //  The classes the frontend is made of
    zg_routes_test (s_verbose);
    s_passed++;
    zg_auth_test (s_verbose);
    s_passed++;
    zg_calls_test (s_verbose);
    s_passed++;
    zg_reply_test (s_verbose);
    s_passed++;
    zg_keys_test (s_verbose);
    s_passed++;

    //  The frontend as a process. Fork first: no ZeroMQ context may exist
    //  in a process that forks.
    char dir [] = "/tmp/zg-frontend-XXXXXX";
    if (!mkdtemp (dir)) {
        perror ("mkdtemp");
        return 1;
    }
    s_frontend_proc_t keyed, open_gate, busy_events;
    s_start_frontend (&keyed, dir, "keyed", true, -1, NULL);
    s_start_frontend (&open_gate, dir, "open", false, keyed.listen_fd, NULL);
    //  Its events endpoint is keyed's HTTP port, which keyed holds
    char busy [64];
    snprintf (busy, sizeof (busy), "tcp://127.0.0.1:%d", keyed.port);
    s_start_frontend (&busy_events, dir, "busy", false, keyed.listen_fd, busy);
    close (keyed.listen_fd);
    close (open_gate.listen_fd);
    close (busy_events.listen_fd);

    zactor_t *keyed_router = zactor_new (s_fake_router, keyed.endpoint);
    zactor_t *open_router = zactor_new (s_fake_router, open_gate.endpoint);
    REQUIRE (keyed_router && open_router);

    bool ready = s_wait_readiness (keyed.port, 200) && s_wait_readiness (open_gate.port, 200);
    CHECK (ready);
    if (ready) {
        s_test_public_routes (keyed.port);
        s_test_model_listings (keyed.port);
        s_test_not_found_and_methods (keyed.port);
        s_test_auth (keyed.port, keyed_router);
        s_test_bad_requests (keyed.port, keyed_router);
        s_test_forwarding (keyed.port, keyed_router);
        s_test_body_sizes (keyed.port, keyed_router);
        s_test_answers (keyed.port, keyed_router, keyed.pid);
        s_test_keep_alive_and_concurrency (keyed.port);
        s_test_health_check (keyed.port, keyed_router);
        s_test_no_master_key (open_gate.port);
        s_test_router_gone (keyed.port, keyed_router);
    }

    //  An events endpoint that cannot be bound stops the frontend at start
    //  with the endpoint in the message, as a busy port does
    CHECK (s_wait_exit (&busy_events) == 1);
    if (!s_verbose) {
        char *log = s_read_file (busy_events.log_path);
        CHECK (log && strstr (log, "cannot bind the events endpoint") && strstr (log, busy));
        free (log);
    }

    CHECK (s_stop_frontend (&keyed) == 0);
    CHECK (s_stop_frontend (&open_gate) == 0);
    zactor_destroy (&keyed_router);
    zactor_destroy (&open_router);

    char path [512];
    const char *names [] = { "keyed.yaml", "open.yaml", "busy.yaml", "keyed.ipc", "open.ipc",
                             "keyed-events.ipc", "open-events.ipc", "busy.log" };
    for (size_t index = 0; index < sizeof (names) / sizeof (names [0]); index++) {
        snprintf (path, sizeof (path), "%s/%s", dir, names [index]);
        unlink (path);
    }
    rmdir (dir);

    printf ("%d passed, %d failed\n", s_passed, s_failed);
    return s_failed ? 1 : 0;
}
