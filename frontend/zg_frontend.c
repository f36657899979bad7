/*  =========================================================================
    zg_frontend - the HTTP side: libmicrohttpd in one event loop with a
    DEALER socket to the router

    One thread runs everything: libmicrohttpd in external-select mode with
    its own epoll set (MHD creates no thread), the DEALER socket to the
    router, a second epoll set that watches suspended connections for a
    client hang-up, and a signalfd. zmq_poll waits on all four.

    Why no locks: every piece of state here (the call table, the fd table,
    MHD's connections, the ZeroMQ socket) is touched only from this thread.
    MHD calls our callbacks from inside MHD_run, which we call; we resume
    connections from our own loop, between MHD_run calls. Nothing is shared
    with another thread, so there is nothing to lock.

    Life of an LLM request:
        s_on_request (headers)   route, auth, limits -> UPLOADING
        s_on_request (body)      bytes copied once, into the REQUEST's frame
        s_on_request (end)       validate, send REQUEST, suspend -> WAITING
        HEAD final               queue the reply body (no copy) with its cost, resume
        HEAD stream              queue a reader response, resume -> STREAMING
        CHUNK                    queue the frame, resume if the reader waits
        s_stream_reader          copy queued bytes out, or suspend when dry
        END                      stream ends after what is queued
        s_on_completed           CANCEL if the client left early; log; free

    A suspended connection is invisible to MHD (it neither reads nor writes
    it), so MHD cannot see the client leave. The watch set catches the
    hang-up (EPOLLRDHUP/HUP/ERR) and turns it into a CANCEL to the router.
    =========================================================================
*/
#include "frontend/zg_frontend.h"
#include "frontend/zg_admin.h"
#include "frontend/zg_auth.h"
#include "frontend/zg_calls.h"
#include "frontend/zg_keys.h"
#include "frontend/zg_keystore.h"
#include "frontend/zg_redis_probe.h"
#include "frontend/zg_redis_sync.h"
#include "frontend/zg_reply.h"
#include "frontend/zg_routes.h"
#include "common/zg_json.h"
#include "common/zg_log.h"
#include "common/zg_number.h"
#include "common/zg_scoreboard.h"
#include "proto/zg_msg.h"

#include <arpa/inet.h>
#include <assert.h>
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <time.h>
#include <unistd.h>

#ifndef ZG_VERSION
#   define ZG_VERSION "0.0.0"
#endif

//  Bytes a stream may hold for a client that reads slower than the
//  upstream writes; past this the stream ends with an in-stream error
#define ZG_STREAM_QUEUE_MAX     (4 * 1024 * 1024)
//  Largest piece handed to MHD per reader call
#define ZG_STREAM_BLOCK         16384
//  Router messages handled per loop turn, so HTTP is never starved
#define ZG_ROUTER_BATCH         512
//  libmicrohttpd's memory per connection: the request head, the reply's
//  header block and the read buffer all live in it, and libmicrohttpd
//  0.9.75 clears the whole pool after every request, so its size is paid
//  per request (the default 32 KB cost about 1.3 us of the frontend's 13
//  per chat call). A reply whose header block does not fit beside the
//  request head is not sent at all (the connection just closes), so a
//  head over ZG_HEAD_MAX is answered 431 (a small reply that fits), and
//  the upstream's headers that would not fit beside the head are dropped
#define ZG_CONNECTION_POOL      16384
#define ZG_HEAD_MAX             12288
//  What else takes room in the pool: libmicrohttpd's entry for each
//  request header, and our own headers on a reply (about 1.5 KB at most,
//  with a virtual key's) with the status line
#define ZG_POOL_PER_HEADER      64
#define ZG_POOL_SLACK           3072
//  Idle keep-alive connections are closed after this (nginx's default)
#define ZG_IDLE_TIMEOUT_S       75
//  How often deadlines are checked; they are coarse (seconds) anyway
#define ZG_SWEEP_MS             250
//  Added to timeout + queue timeout for the frontend's own safety deadline
#define ZG_DEADLINE_SLACK_MS    10000
//  Keystore events handled per loop turn
#define ZG_KEYSTORE_BATCH       512
//  Calls suspended at once waiting for their key to be looked up, and how
//  long one waits before it is told the database is not answering
#define ZG_KEY_WAITERS_MAX      4096
#define ZG_KEY_WAIT_MS          5000
//  Events queued for the events subscribers; past this, with a slow or
//  absent subscriber, PUB drops them rather than block the loop
#define ZG_EVENTS_HWM           10000
//  GET /health: how long one deployment's check may take (the reference's
//  HEALTH_CHECK_TIMEOUT_SECONDS)
#define ZG_HEALTH_CHECK_TIMEOUT_MS  60000
//  GET /health, /models: how long the router may take to list its
//  deployments, and how many it may list
#define ZG_LIST_TIMEOUT_MS      5000
#define ZG_LIST_MAX             10000

static const char s_done_event [] = "data: [DONE]\n\n";

//  Longest presented key a connection remembers with its hash (generated
//  keys have 25 characters)
#define ZG_SOCKET_KEY_MAX       64

//  What the frontend knows about each socket, indexed by fd
typedef struct {
    zg_call_t *call;            //  the request the connection is serving, if any
    bool       watched;         //  registered in the watch set
    bool       peer_closed;     //  the client hung up
    //  The virtual key the connection presented last and its hash, wiped
    //  when the connection closes (see s_key_hash)
    uint8_t    key_length;      //  0 = none
    char       key [ZG_SOCKET_KEY_MAX];
    char       key_hash [ZG_KEYS_HASH_HEX + 1];
} s_socket_t;

//  Request headers the frontend reads, gathered in one pass
typedef struct {
    const char *authorization;
    const char *litellm_key;
    const char *api_key;
    const char *x_api_key;
    const char *call_id;
    const char *content_length;
    size_t      bytes;          //  names and values, with their separators
} s_headers_t;

typedef struct {
    const zg_config_t *config;
    struct MHD_Daemon *daemon;
    int        mhd_epoll_fd;
    int        watch_fd;
    int        signal_fd;
    zsock_t   *router;
    zsock_t   *events;          //  PUB: budget crossings for the alerts actor
    zg_calls_t *calls;
    zg_auth_t *auth;
    zg_msg_t   in;              //  reused for every message received
    zg_msg_t   out;             //  reused for every message sent

    //  Answers that never change, queued as they are (MHD refcounts them)
    struct MHD_Response *models_response;
    struct MHD_Response *model_info_response;
    struct MHD_Response *liveness_response;
    struct MHD_Response *ready_response;
    struct MHD_Response *unready_response;
    struct MHD_Response *root_response;

    //  Virtual keys: only with a database (keystore NULL = master key only)
    zg_keystore_t *keystore;
    zg_keys_t  *keys;
    bool       db_connected;    //  the keystore's last DB_STATE
    zhashx_t   *admin_calls;    //  job handle -> call, while the job runs
    uint64_t   admin_handle;    //  the last handle given
    zg_call_t  *key_waiters;    //  calls suspended until their key is looked up
    size_t     key_waiter_count;

    s_socket_t *sockets;
    size_t     socket_count;

    size_t     max_body;
    uint32_t   timeout_ms;
    int64_t    deadline_ms;     //  timeout + queue timeout + slack
    int64_t    heartbeat_ms;
    int64_t    next_heartbeat;
    int64_t    next_sweep;
    int64_t    router_seen;     //  last message from the router (monotonic ms)
    bool       router_answered; //  it answered since we started
    bool       router_alive;
    size_t     llm_active;      //  LLM requests accepted and not yet completed
    bool       draining;
    bool       terminated;
    char       name [64];
    char       scratch [ZG_REPLY_ERROR_MAX];

    zg_scoreboard_t *board;     //  heartbeat, readiness, metrics; may be NULL
    int        slot;
    zg_redis_probe_t *redis_probe;  //  watches Redis into the slot; NULL without Redis
    zg_redis_sync_t *redis_sync;    //  shares the keys' rate-limit counters; NULL without
                                    //  Redis or keys
    int64_t    sync_ms;         //  between two rounds of it
    int64_t    next_sync;
    zhashx_t  *deployments;     //  id -> zg_deployment_t, for x-litellm-timeout
    double     timeout_shown;   //  the last x-litellm-timeout and its text: the
    char       timeout_text [32];   //  same few values come back on every answer
} s_frontend_t;

//  A GET /health or GET /models in progress. The router is asked first
//  for the deployments it serves (LIST; one DEPLOYMENT back each, gathered
//  by the lister, a call without a connection); GET /health then sends one
//  probe call per deployment, each pinned to it. The client is answered
//  when the list is in (/models) or the last probe is back.
typedef struct {
    zg_call_t *client;          //  NULL once the client left
    bool       names_only;      //  GET /models: the list is the answer
    zg_call_t *lister;          //  while the router's list comes in
    zg_deployment_t *deployments;   //  the router's list (strings owned), or
    bool       borrowed;        //  the configuration's deployments (not owned)
    size_t     count;
    size_t     listed;          //  DEPLOYMENTs received
    size_t     pending;         //  probes out
    char     **errors;          //  per deployment: NULL while healthy
} s_check_t;


static struct MHD_Response *s_static_response (char *body, const char *content_type);
static const char *s_level_name (int level);


//  --------------------------------------------------------------------------
//  Small helpers

static s_socket_t *
s_socket (s_frontend_t *self, int fd)
{
    if (fd < 0)
        return NULL;
    if ((size_t) fd >= self->socket_count) {
        size_t count = self->socket_count ? self->socket_count : 1024;
        while (count <= (size_t) fd)
            count *= 2;
        s_socket_t *sockets = (s_socket_t *) realloc (self->sockets, count * sizeof (s_socket_t));
        assert (sockets);
        memset (sockets + self->socket_count, 0, (count - self->socket_count) * sizeof (s_socket_t));
        self->sockets = sockets;
        self->socket_count = count;
    }
    return &self->sockets [fd];
}

static int
s_connection_fd (struct MHD_Connection *connection)
{
    const union MHD_ConnectionInfo *info =
        MHD_get_connection_info (connection, MHD_CONNECTION_INFO_CONNECTION_FD);
    return info ? (int) info->connect_fd : -1;
}

static bool
s_router_usable (s_frontend_t *self, int64_t now)
{
    return now - self->router_seen <= 3 * self->heartbeat_ms;
}

static void
s_resume (s_frontend_t *self, zg_call_t *call)
{
    if (call->suspended) {
        call->suspended = false;
        MHD_resume_connection (call->connection);
    }
}

//  Watch a connection for a hang-up while MHD does not look at it. Once
//  per connection: the registration lasts until MHD closes the socket,
//  which removes it from the set.
static void
s_watch (s_frontend_t *self, zg_call_t *call)
{
    s_socket_t *socket = s_socket (self, call->fd);
    if (!socket || socket->watched)
        return;
    struct epoll_event event;
    memset (&event, 0, sizeof (event));
    event.events = EPOLLRDHUP | EPOLLET;
    event.data.fd = call->fd;
    if (epoll_ctl (self->watch_fd, EPOLL_CTL_ADD, call->fd, &event) == 0 || errno == EEXIST)
        socket->watched = true;
    else
        zg_debug ("cannot watch connection %d: %s", call->fd, strerror (errno));
}

static bool
s_peer_closed (s_frontend_t *self, zg_call_t *call)
{
    s_socket_t *socket = s_socket (self, call->fd);
    return socket && socket->peer_closed;
}

static void
s_send_heartbeat (s_frontend_t *self)
{
    zg_msg_reset (&self->out, ZG_MSG_HEARTBEAT);
    ZG_MSG_SET (self->out.name, self->name);
    self->out.pid = (uint32_t) getpid ();
    if (zg_msg_send (&self->out, self->router) != 0)
        zg_debug ("heartbeat not sent: %s", zmq_strerror (zmq_errno ()));
}

//  Tell the router a call is over for us. No-op for a call the router
//  no longer serves (answered, ended, or never sent).
static void
s_cancel (s_frontend_t *self, zg_call_t *call)
{
    if (!call->routed)
        return;
    zg_calls_unroute (self->calls, call);
    zg_msg_reset (&self->out, ZG_MSG_CANCEL);
    ZG_MSG_SET (self->out.call_id, call->call_id);
    if (zg_msg_send (&self->out, self->router) != 0)
        zg_debug ("CANCEL %s not sent: %s", call->call_id, zmq_strerror (zmq_errno ()));
}


//  --------------------------------------------------------------------------
//  Building responses

//  The Date header (RFC 9110 IMF-fixdate), formatted once a second:
//  libmicrohttpd formats its own for every response without one (gmtime_r,
//  under glibc's time zone lock)
static const char *
s_http_date (void)
{
    static const char days [7][4] = { "Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat" };
    static const char months [12][4] = { "Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                         "Jul", "Aug", "Sep", "Oct", "Nov", "Dec" };
    static __thread time_t shown = -1;
    static __thread char text [40];
    time_t now = time (NULL);
    if (now != shown) {
        struct tm tm;
        if (!gmtime_r (&now, &tm))
            return NULL;
        snprintf (text, sizeof (text), "%s, %02d %s %04d %02d:%02d:%02d GMT",
                  days [tm.tm_wday % 7], tm.tm_mday, months [tm.tm_mon % 12],
                  tm.tm_year + 1900, tm.tm_hour, tm.tm_min, tm.tm_sec);
        shown = now;
    }
    return text;
}

static void
s_add_common_headers (zg_call_t *call, struct MHD_Response *response)
{
    const char *date = s_http_date ();
    if (date)
        MHD_add_response_header (response, MHD_HTTP_HEADER_DATE, date);
    if (call->echo_id [0])
        MHD_add_response_header (response, "x-litellm-call-id", call->echo_id);
    MHD_add_response_header (response, "x-litellm-version", ZG_VERSION);
}

static struct MHD_Response *
s_error_response (s_frontend_t *self, zg_call_t *call, int status, const char *type,
                  const char *message, const char *param)
{
    int length = zg_reply_error_json (self->scratch, sizeof (self->scratch),
                                      status, type, message, param);
    if (length < 0)
        length = zg_reply_error_json (self->scratch, sizeof (self->scratch), status,
                                      type, "error message too long to show", NULL);
    assert (length >= 0);
    struct MHD_Response *response = MHD_create_response_from_buffer (
        (size_t) length, self->scratch, MHD_RESPMEM_MUST_COPY);
    if (!response)
        return NULL;
    MHD_add_response_header (response, MHD_HTTP_HEADER_CONTENT_TYPE, "application/json");
    s_add_common_headers (call, response);
    return response;
}

//  Queue a response from inside the access handler
static enum MHD_Result
s_reply (zg_call_t *call, int status, struct MHD_Response *response, bool owned)
{
    if (!response)
        return MHD_NO;
    enum MHD_Result result = MHD_queue_response (call->connection, (unsigned int) status, response);
    if (owned)
        MHD_destroy_response (response);
    if (result == MHD_YES) {
        call->status = status;
        call->state = call->state == ZG_CALL_LOCAL ? ZG_CALL_LOCAL : ZG_CALL_ANSWERED;
    }
    return result;
}

static enum MHD_Result
s_reply_error (s_frontend_t *self, zg_call_t *call, int status, const char *type,
               const char *message, const char *param)
{
    return s_reply (call, status, s_error_response (self, call, status, type, message, param), true);
}

//  Answer a call whose connection is suspended waiting for the router
static void
s_finish_waiting (s_frontend_t *self, zg_call_t *call, int status, struct MHD_Response *response)
{
    zg_calls_unroute (self->calls, call);
    if (response
    &&  MHD_queue_response (call->connection, (unsigned int) status, response) == MHD_YES) {
        call->status = status;
        call->state = ZG_CALL_ANSWERED;
    }
    else
        call->client_gone = true;       //  the access handler closes it
    if (response)
        MHD_destroy_response (response);
    s_resume (self, call);
}

static void s_probe_done (s_frontend_t *self, zg_call_t *probe, const char *error);
static void s_on_deployment (s_frontend_t *self, zg_call_t *lister, const zg_msg_t *msg);

static void
s_fail_waiting (s_frontend_t *self, zg_call_t *call, int status, const char *type,
                const char *message, const char *param)
{
    if (!call->connection) {
        s_probe_done (self, call, message && *message ? message : type);
        return;
    }
    s_finish_waiting (self, call, status,
                      s_error_response (self, call, status, type, message, param));
}

//  End a stream with an error event and [DONE] after what is queued
static void
s_fail_stream (s_frontend_t *self, zg_call_t *call, int status, const char *type,
               const char *message, const char *param)
{
    //  If the stream stopped inside an event, close that event first so
    //  the error is an event of its own that clients can parse
    size_t used = 0;
    if (call->tail_len
    &&  !(call->tail_len >= 2 && memcmp (call->tail + call->tail_len - 2, "\n\n", 2) == 0)
    &&  !(call->tail_len >= 4 && memcmp (call->tail + call->tail_len - 4, "\r\n\r\n", 4) == 0)) {
        memcpy (self->scratch, "\n\n", 2);
        used = 2;
    }
    int length = zg_reply_stream_error (self->scratch + used, sizeof (self->scratch) - used,
                                        status, type, message, param);
    if (length < 0)
        length = zg_reply_stream_error (self->scratch + used, sizeof (self->scratch) - used,
                                        status, type, "stream failed", NULL);
    zframe_t *event = zframe_new (self->scratch, used + (size_t) length);
    zg_call_queue_push (call, &event);
    call->stream_ended = true;
    zg_calls_unroute (self->calls, call);
    s_resume (self, call);
}

static void
s_free_frame (void *cls)
{
    zframe_t *frame = (zframe_t *) cls;
    zframe_destroy (&frame);
}

//  RFC 9110 token characters: visible ASCII but the separators. A table,
//  since every byte of every upstream header name is looked at
static const bool s_token_char [256] = {
    ['!'] = true, ['#'] = true, ['$'] = true, ['%'] = true, ['&'] = true, ['\''] = true,
    ['*'] = true, ['+'] = true, ['-'] = true, ['.'] = true, ['^'] = true, ['_'] = true,
    ['`'] = true, ['|'] = true, ['~'] = true,
    ['0'] = true, ['1'] = true, ['2'] = true, ['3'] = true, ['4'] = true, ['5'] = true,
    ['6'] = true, ['7'] = true, ['8'] = true, ['9'] = true,
    ['A'] = true, ['B'] = true, ['C'] = true, ['D'] = true, ['E'] = true, ['F'] = true,
    ['G'] = true, ['H'] = true, ['I'] = true, ['J'] = true, ['K'] = true, ['L'] = true,
    ['M'] = true, ['N'] = true, ['O'] = true, ['P'] = true, ['Q'] = true, ['R'] = true,
    ['S'] = true, ['T'] = true, ['U'] = true, ['V'] = true, ['W'] = true, ['X'] = true,
    ['Y'] = true, ['Z'] = true,
    ['a'] = true, ['b'] = true, ['c'] = true, ['d'] = true, ['e'] = true, ['f'] = true,
    ['g'] = true, ['h'] = true, ['i'] = true, ['j'] = true, ['k'] = true, ['l'] = true,
    ['m'] = true, ['n'] = true, ['o'] = true, ['p'] = true, ['q'] = true, ['r'] = true,
    ['s'] = true, ['t'] = true, ['u'] = true, ['v'] = true, ['w'] = true, ['x'] = true,
    ['y'] = true, ['z'] = true
};

static bool
s_header_name_ok (const char *name, size_t length)
{
    if (length == 0 || length > 256)
        return false;
    for (size_t index = 0; index < length; index++)
        if (!s_token_char [(unsigned char) name [index]])
            return false;
    return true;
}

//  Microseconds as milliseconds with three decimals ("12.345"), without
//  the cost of printf's floating point on every answer
static void
s_format_ms (char *text, int64_t us)
{
    if (us < 0)
        us = 0;
    char digits [24];
    int count = 0;
    uint64_t value = (uint64_t) us;
    do {
        digits [count++] = (char) ('0' + value % 10);
        value /= 10;
    } while (value || count < 4);       //  at least "0.000"
    char *cursor = text;
    while (count > 3)
        *cursor++ = digits [--count];
    *cursor++ = '.';
    while (count > 0)
        *cursor++ = digits [--count];
    *cursor = 0;
}

//  The headers the reference puts on every LLM answer, and the upstream's
//  own headers prefixed llm_provider-. Names and values are assembled in
//  the reused scratch buffer; MHD copies them.
static void
s_add_answer_headers (s_frontend_t *self, zg_call_t *call, struct MHD_Response *response,
                      const zg_msg_t *head)
{
    s_add_common_headers (call, response);
    if (head->deployment_id [0])
        MHD_add_response_header (response, "x-litellm-model-id", head->deployment_id);
    if (call->model [0])
        MHD_add_response_header (response, "x-litellm-model-group", call->model);
    if (head->api_base [0]) {
        char api_base [ZG_URL_MAX + 1];
        zg_reply_strip_query (head->api_base, api_base, sizeof (api_base));
        MHD_add_response_header (response, "x-litellm-model-api-base", api_base);
    }
    char duration [32];
    int64_t elapsed_us = zclock_usecs () - call->started_us;
    s_format_ms (duration, elapsed_us);
    MHD_add_response_header (response, "x-litellm-response-duration-ms", duration);
    //  The gateway's share: all but the upstream's time so far
    call->overhead_us = elapsed_us - (int64_t) head->duration_us;
    if (call->overhead_us < 0)
        call->overhead_us = 0;
    s_format_ms (duration, call->overhead_us);
    MHD_add_response_header (response, "x-litellm-overhead-duration-ms", duration);
    //  Retries and fallbacks are not implemented: the one attempt
    MHD_add_response_header (response, "x-litellm-attempted-retries", "0");
    const zg_deployment_t *deployment = head->deployment_id [0] && self->deployments
        ? (const zg_deployment_t *) zhashx_lookup (self->deployments, head->deployment_id)
        : NULL;
    double timeout_s = deployment && deployment->timeout_s > 0
                     ? deployment->timeout_s : self->timeout_ms / 1000.0;
    if (timeout_s != self->timeout_shown || !self->timeout_text [0]) {
        snprintf (self->timeout_text, sizeof (self->timeout_text), "%g", timeout_s);
        self->timeout_shown = timeout_s;
    }
    MHD_add_response_header (response, "x-litellm-timeout", self->timeout_text);

    static const char prefix [] = "llm_provider-";
    //  What the upstream's headers may take in the pool
    size_t room = ZG_CONNECTION_POOL - ZG_POOL_SLACK - call->head_bytes;
    const char *cursor = head->headers;
    const char *name, *value;
    size_t name_length, value_length;
    while ((cursor = zg_reply_next_header (cursor, &name, &name_length, &value, &value_length))) {
        if (!s_header_name_ok (name, name_length))
            continue;
        size_t need = sizeof (prefix) - 1 + name_length + 1 + value_length + 1;
        if (need > sizeof (self->scratch))
            continue;
        if (need + 2 > room) {
            zg_debug ("call %s: upstream header %.*s dropped: no room beside the request head",
                      call->call_id, (int) name_length, name);
            continue;
        }
        room -= need + 2;
        char *header = self->scratch;
        memcpy (header, prefix, sizeof (prefix) - 1);
        memcpy (header + sizeof (prefix) - 1, name, name_length);
        header [sizeof (prefix) - 1 + name_length] = 0;
        char *header_value = header + sizeof (prefix) + name_length;
        memcpy (header_value, value, value_length);
        header_value [value_length] = 0;
        MHD_add_response_header (response, header, header_value);
    }
}

static int
s_http_status (int status)
{
    return status >= 100 && status <= 599 ? status : 502;
}


//  --------------------------------------------------------------------------
//  Virtual keys, costs and management jobs

static int64_t
s_wall_s (void)
{
    return (int64_t) time (NULL);
}

//  A cost as the reference writes it (Python's str of a float): the
//  shortest text that reads back as the same number, never "nan"
static void
s_format_cost (double cost, char *text, size_t size)
{
    if (!isfinite (cost) || cost < 0)
        cost = 0;
    if (zg_number_repr (cost, text, size) < 0 && size)
        text [0] = 0;
}

//  The key's x-ratelimit-* and x-litellm-key-* headers, on the answers to
//  a virtual key's calls
static void
s_add_key_header (void *response, const char *name, const char *value)
{
    MHD_add_response_header ((struct MHD_Response *) response, name, value);
}

static void
s_add_key_headers (s_frontend_t *self, zg_call_t *call, struct MHD_Response *response)
{
    if (call->caller != ZG_CALLER_VIRTUAL || !self->keys)
        return;
    zg_keys_each_header (self->keys, call->key_hash, s_wall_s (), s_add_key_header, response);
}

static void
s_add_cost_header (struct MHD_Response *response, double cost)
{
    char text [40];
    s_format_cost (cost, text, sizeof (text));
    MHD_add_response_header (response, "x-litellm-response-cost", text);
}

//  A refusal of the key table, with the rate-limit headers of a 429
static struct MHD_Response *
s_verdict_response (s_frontend_t *self, zg_call_t *call, const zg_keys_verdict_t *verdict)
{
    struct MHD_Response *response = s_error_response (self, call, verdict->status, verdict->type,
                                                      verdict->message, verdict->param);
    if (response && verdict->retry_after > 0) {
        char value [16];
        snprintf (value, sizeof (value), "%d", verdict->retry_after);
        MHD_add_response_header (response, "retry-after", value);
        if (verdict->rate_limit_type)
            MHD_add_response_header (response, "rate_limit_type", verdict->rate_limit_type);
        if (verdict->reset_at [0])
            MHD_add_response_header (response, "reset_at", verdict->reset_at);
    }
    return response;
}

//  The call no longer counts as in flight for its key. Every admitted call
//  comes here once, from whichever of END, ERROR or its completion is first.
static void
s_key_finish (s_frontend_t *self, zg_call_t *call)
{
    if (call->admitted) {
        call->admitted = false;
        zg_keys_finish (self->keys, &call->ticket);
    }
}

//  Best effort by design: PUB drops what a slow or absent subscriber
//  cannot take, so the data path never waits on alerting
static void
s_publish_budget (s_frontend_t *self, const char *key_hash, const zg_key_record_t *key,
                  const char *kind)
{
    if (!self->events)
        return;
    zg_msg_reset (&self->out, ZG_MSG_BUDGET);
    ZG_MSG_SET (self->out.kind, kind);
    ZG_MSG_SET (self->out.key_hash, key_hash);
    ZG_MSG_SET (self->out.key_name, key->key_name);
    ZG_MSG_SET (self->out.key_alias, key->key_alias);
    ZG_MSG_SET (self->out.user_id, key->user_id);
    ZG_MSG_SET (self->out.team_id, key->team_id);
    self->out.spend = isfinite (key->spend) ? key->spend : 0;
    self->out.soft_budget = isfinite (key->soft_budget) ? key->soft_budget : -1;
    self->out.max_budget = isfinite (key->max_budget) ? key->max_budget : -1;
    struct timespec now;
    clock_gettime (CLOCK_REALTIME, &now);
    self->out.at_us = (uint64_t) now.tv_sec * 1000000 + (uint64_t) now.tv_nsec / 1000;
    if (zg_msg_send (&self->out, self->events) != 0)
        zg_warning ("frontend: the %s event of key %s was not published",
                    kind, key->key_name && *key->key_name ? key->key_name : "(unnamed)");
}

//  The usage of an END counts against the key at once, so that budgets
//  and token limits bite before the database has the spend
static void
s_key_usage (s_frontend_t *self, zg_call_t *call, const zg_msg_t *end)
{
    if (call->caller != ZG_CALLER_VIRTUAL || !self->keys)
        return;
    if (zg_keys_record_usage (self->keys, call->key_hash, (int64_t) end->total_tokens,
                              end->cost, s_wall_s ()) == 1) {
        const zg_key_record_t *key = zg_keys_lookup (self->keys, call->key_hash);
        if (key) {
            zg_warning ("key %s crossed its soft budget: spend %.6f, soft budget %.6f",
                        key->key_name && *key->key_name ? key->key_name : "(unnamed)",
                        key->spend, key->soft_budget);
            s_publish_budget (self, call->key_hash, key, "soft_budget_crossed");
        }
    }
}

static void
s_key_wait_unlink (s_frontend_t *self, zg_call_t *call)
{
    if (!call->key_wait_prev && self->key_waiters != call)
        return;
    if (call->key_wait_prev)
        call->key_wait_prev->key_wait_next = call->key_wait_next;
    else
        self->key_waiters = call->key_wait_next;
    if (call->key_wait_next)
        call->key_wait_next->key_wait_prev = call->key_wait_prev;
    call->key_wait_prev = call->key_wait_next = NULL;
    self->key_waiter_count--;
}

//  Suspend the call until the keystore says what its key is
static void
s_key_wait (s_frontend_t *self, zg_call_t *call, zg_key_wait_t phase)
{
    call->key_wait = (uint8_t) phase;
    call->key_wait_until = zclock_mono () + ZG_KEY_WAIT_MS;
    call->key_wait_prev = NULL;
    call->key_wait_next = self->key_waiters;
    if (self->key_waiters)
        self->key_waiters->key_wait_prev = call;
    self->key_waiters = call;
    self->key_waiter_count++;
    MHD_suspend_connection (call->connection);
    call->suspended = true;
    s_watch (self, call);
}

//  The answer is in, or will not come in time: the access handler runs
//  again and decides for good
static void
s_key_wake (s_frontend_t *self, zg_call_t *call, bool expired)
{
    s_key_wait_unlink (self, call);
    call->key_waited = true;
    call->key_wait_expired = expired;
    s_resume (self, call);
}

//  Wake the calls waiting for this hash (NULL: every call); unanswered:
//  the database could not be asked
static void
s_key_wake_hash (s_frontend_t *self, const char *hash, bool unanswered)
{
    zg_call_t *call = self->key_waiters;
    while (call) {
        zg_call_t *next = call->key_wait_next;
        if (!hash || strcmp (call->key_hash, hash) == 0)
            s_key_wake (self, call, unanswered);
        call = next;
    }
}

//  Wake the calls whose key the table now has (after a full load)
static void
s_key_wake_known (s_frontend_t *self)
{
    zg_call_t *call = self->key_waiters;
    while (call) {
        zg_call_t *next = call->key_wait_next;
        if (zg_keys_lookup (self->keys, call->key_hash))
            s_key_wake (self, call, false);
        call = next;
    }
}

static void
s_admin_handle_key (uint64_t handle, char *key, size_t size)
{
    snprintf (key, size, "%" PRIu64, handle);
}

//  The keystore answered a management job: write the answer as it is
static void
s_on_admin_done (s_frontend_t *self, zg_admin_job_t *job)
{
    char key [24];
    s_admin_handle_key (job->handle, key, sizeof (key));
    zg_call_t *call = (zg_call_t *) zhashx_lookup (self->admin_calls, key);
    if (!call) {
        zg_debug ("%s answered after its client left: dropped", zg_admin_op_name (job->op));
        return;
    }
    zhashx_delete (self->admin_calls, key);
    call->admin_handle = 0;
    int status = job->status >= 100 && job->status <= 599 ? job->status : 500;
    struct MHD_Response *response;
    if (job->answer && job->answer_size) {
        response = MHD_create_response_from_buffer_with_free_callback (
            job->answer_size, job->answer, free);
        if (response)
            job->answer = NULL;         //  MHD frees it with the response
    }
    else
        response = MHD_create_response_from_buffer (0, (void *) "", MHD_RESPMEM_PERSISTENT);
    if (response) {
        MHD_add_response_header (response, MHD_HTTP_HEADER_CONTENT_TYPE, "application/json");
        s_add_common_headers (call, response);
    }
    s_finish_waiting (self, call, status, response);
}

static void
s_on_keystore (s_frontend_t *self)
{
    for (int count = 0; count < ZG_KEYSTORE_BATCH; count++) {
        zg_keystore_event_t *event = zg_keystore_recv (self->keystore);
        if (!event)
            break;
        int64_t now = s_wall_s ();
        switch (event->kind) {
            case ZG_KEYSTORE_ADMIN_DONE:
                if (event->job)
                    s_on_admin_done (self, event->job);
                break;
            case ZG_KEYSTORE_DB_STATE:
                zg_keystore_apply (event, self->keys, now);
                if (event->db_available != self->db_connected)
                    zg_info ("database %s", event->db_available ? "reachable" : "not reachable");
                self->db_connected = event->db_available;
                zg_scoreboard_set_flags (self->board, self->slot,
                                         ZG_SB_DB_KNOWN | (self->db_connected ? ZG_SB_DB_UP : 0),
                                         self->db_connected ? 0 : ZG_SB_DB_UP);
                //  Unknown keys are now decided without the database
                if (!event->db_available)
                    s_key_wake_hash (self, NULL, false);
                break;
            case ZG_KEYSTORE_LOADED:
                zg_keystore_apply (event, self->keys, now);
                zg_info ("key table loaded: %zu keys", zg_keys_size (self->keys));
                s_key_wake_known (self);
                break;
            case ZG_KEYSTORE_KEY_UPSERT:
                if (zg_keystore_apply (event, self->keys, now) != 0)
                    zg_warning ("key %s from the database refused by the key table",
                                event->record.key_name ? event->record.key_name : "?");
                if (event->record.token)
                    s_key_wake_hash (self, event->record.token, false);
                break;
            case ZG_KEYSTORE_KEY_UNKNOWN:
                zg_keystore_apply (event, self->keys, now);
                //  Without db_available the keystore could not ask: the
                //  waiting calls are told so, not that the key is unknown
                s_key_wake_hash (self, event->hash, !event->db_available);
                break;
            default:
                if (zg_keystore_apply (event, self->keys, now) != 0)
                    zg_debug ("keystore event %d refused by the key table", (int) event->kind);
                break;
        }
        zg_keystore_event_destroy (&event);
    }
}


//  --------------------------------------------------------------------------
//  Streams

//  Did the stream carry the upstream's own "data: [DONE]" at its end?
static bool
s_stream_has_done (const zg_call_t *call)
{
    size_t length = call->tail_len;
    while (length && (call->tail [length - 1] == '\n' || call->tail [length - 1] == '\r'
                  ||  call->tail [length - 1] == ' '))
        length--;
    if (length < 6 || memcmp (call->tail + length - 6, "[DONE]", 6) != 0)
        return false;
    length -= 6;
    while (length && call->tail [length - 1] == ' ')
        length--;
    return length >= 5 && memcmp (call->tail + length - 5, "data:", 5) == 0;
}

//  MHD asks for the next piece of a stream. With nothing queued, the
//  connection is suspended (returning 0 alone would make MHD poll the
//  reader in a busy loop); a CHUNK, END or ERROR resumes it.
static ssize_t
s_stream_reader (void *cls, uint64_t position, char *buf, size_t max)
{
    zg_call_t *call = (zg_call_t *) cls;
    s_frontend_t *self = (s_frontend_t *) call->owner;
    if (call->client_gone)
        return MHD_CONTENT_READER_END_WITH_ERROR;
    size_t copied = zg_call_queue_read (call, buf, max);
    if (copied)
        return (ssize_t) copied;
    if (call->stream_ended)
        return MHD_CONTENT_READER_END_OF_STREAM;
    if (s_peer_closed (self, call)) {
        s_cancel (self, call);
        call->client_gone = true;
        return MHD_CONTENT_READER_END_WITH_ERROR;
    }
    MHD_suspend_connection (call->connection);
    call->suspended = true;
    s_watch (self, call);
    return 0;
}


//  --------------------------------------------------------------------------
//  Messages from the router

static void
s_on_head (s_frontend_t *self, zg_call_t *call, zg_msg_t *head)
{
    if (call->state != ZG_CALL_WAITING)
        return;
    int status = s_http_status (head->status ? head->status : 200);
    const char *content_type = head->content_type [0] ? head->content_type : NULL;
    if (!call->connection) {
        //  A probe: an answer that began is a deployment that answers
        char message [64];
        snprintf (message, sizeof (message), "the deployment answered HTTP %d", status);
        if (!(head->flags & ZG_FLAG_FINAL))
            s_cancel (self, call);
        s_probe_done (self, call, status < 400 ? NULL : message);
        return;
    }

    if (head->flags & ZG_FLAG_FINAL) {
        //  The reply body stays in the frame it arrived in; MHD frees it
        struct MHD_Response *response;
        const uint8_t *body;
        size_t body_size;
        zframe_t *payload = zg_msg_payload_take (head, &body, &body_size);
        if (payload && body_size) {
            response = MHD_create_response_from_buffer_with_free_callback_cls (
                body_size, (void *) body, s_free_frame, payload);
            if (!response)
                zframe_destroy (&payload);
        }
        else {
            zframe_destroy (&payload);
            response = MHD_create_response_from_buffer (0, (void *) "", MHD_RESPMEM_PERSISTENT);
        }
        if (!response) {
            s_finish_waiting (self, call, status, NULL);
            return;
        }
        MHD_add_response_header (response, MHD_HTTP_HEADER_CONTENT_TYPE,
                                 content_type ? content_type : "application/json");
        s_add_answer_headers (self, call, response, head);
        //  A whole answer is the call's last message: it says what the
        //  call cost, as a stream's END does
        s_key_usage (self, call, head);
        s_key_finish (self, call);
        s_add_cost_header (response, head->cost);
        s_add_key_headers (self, call, response);
        s_finish_waiting (self, call, status, response);
        return;
    }
    struct MHD_Response *response = MHD_create_response_from_callback (
        MHD_SIZE_UNKNOWN, ZG_STREAM_BLOCK, s_stream_reader, call, NULL);
    if (!response) {
        s_cancel (self, call);
        s_finish_waiting (self, call, 500, NULL);
        return;
    }
    MHD_add_response_header (response, MHD_HTTP_HEADER_CONTENT_TYPE,
                             content_type ? content_type : "text/event-stream");
    s_add_answer_headers (self, call, response, head);
    //  A stream's cost is known only at its end, after the headers: like
    //  the reference, it goes without x-litellm-response-cost, and the
    //  key's headers say where the key stood when the stream began
    s_add_key_headers (self, call, response);
    if (MHD_queue_response (call->connection, (unsigned int) status, response) == MHD_YES) {
        call->status = status;
        call->state = ZG_CALL_STREAMING;
        if (zg_msg_has_payload (head)) {
            const uint8_t *bytes;
            size_t size;
            zframe_t *frame = zg_msg_payload_take (head, &bytes, &size);
            zg_call_queue_push_part (call, &frame, bytes, size);
        }
    }
    else {
        s_cancel (self, call);
        call->client_gone = true;
    }
    MHD_destroy_response (response);
    s_resume (self, call);
}

static void
s_on_chunk (s_frontend_t *self, zg_call_t *call, zg_msg_t *chunk)
{
    if (call->state != ZG_CALL_STREAMING || call->stream_ended)
        return;
    const uint8_t *bytes;
    size_t size;
    zframe_t *frame = zg_msg_payload_take (chunk, &bytes, &size);
    zg_call_queue_push_part (call, &frame, bytes, size);
    if (call->queued_bytes > ZG_STREAM_QUEUE_MAX) {
        //  The client reads slower than the upstream writes: what is
        //  queued still goes out, then the error, and the upstream stops
        s_cancel (self, call);
        s_fail_stream (self, call, 500, "internal_server_error",
                       "Stream stopped: the client did not read it fast enough", NULL);
        return;
    }
    s_resume (self, call);
}

static void
s_on_end (s_frontend_t *self, zg_call_t *call, zg_msg_t *end)
{
    s_key_usage (self, call, end);
    s_key_finish (self, call);
    if (call->state == ZG_CALL_WAITING) {
        s_fail_waiting (self, call, 502, "internal_server_error",
                        "The upstream answer ended before it began", NULL);
        return;
    }
    if (call->state != ZG_CALL_STREAMING || call->stream_ended)
        return;
    if (!s_stream_has_done (call)) {
        zframe_t *done = zframe_new (s_done_event, sizeof (s_done_event) - 1);
        zg_call_queue_push (call, &done);
    }
    call->stream_ended = true;
    zg_calls_unroute (self->calls, call);
    s_resume (self, call);
}

static void
s_on_error (s_frontend_t *self, zg_call_t *call, zg_msg_t *error)
{
    int status = s_http_status (error->status ? error->status : 500);
    const char *type = error->err_type [0] ? error->err_type : "internal_server_error";
    const char *param = error->param [0] ? error->param : NULL;
    s_key_finish (self, call);
    if (call->state == ZG_CALL_WAITING)
        s_fail_waiting (self, call, status, type, error->message, param);
    else
    if (call->state == ZG_CALL_STREAMING && !call->stream_ended)
        s_fail_stream (self, call, status, type, error->message, param);
}

//  Handle one message; -1 when none was waiting (the socket never blocks)
static int
s_on_router_message (s_frontend_t *self)
{
    int rc = zg_msg_recv (&self->in, self->router);
    if (rc == ZG_MSG_ERR_MALFORMED) {
        zg_warning ("malformed message from the router, dropped");
        return 0;
    }
    if (rc != ZG_MSG_OK)
        return -1;
    self->router_seen = zclock_mono ();
    self->router_answered = true;

    switch (self->in.type) {
        case ZG_MSG_HEARTBEAT:
            break;
        case ZG_MSG_DISCONNECT:
            //  The router restarted and does not know us: introduce ourselves
            s_send_heartbeat (self);
            break;
        case ZG_MSG_HEAD:
        case ZG_MSG_CHUNK:
        case ZG_MSG_END:
        case ZG_MSG_ERROR: {
            zg_call_t *call = zg_calls_lookup (self->calls, self->in.call_id);
            if (!call) {
                //  Late news for a call that was answered or cancelled
                zg_debug ("%s for unknown call %s dropped",
                          zg_msg_type_name (self->in.type), self->in.call_id);
                break;
            }
            if (self->in.type == ZG_MSG_HEAD)
                s_on_head (self, call, &self->in);
            else
            if (self->in.type == ZG_MSG_CHUNK)
                s_on_chunk (self, call, &self->in);
            else
            if (self->in.type == ZG_MSG_END)
                s_on_end (self, call, &self->in);
            else
                s_on_error (self, call, &self->in);
            break;
        }
        case ZG_MSG_DEPLOYMENT: {
            zg_call_t *lister = zg_calls_lookup (self->calls, self->in.call_id);
            if (lister && !lister->connection && lister->check)
                s_on_deployment (self, lister, &self->in);
            else
                zg_debug ("DEPLOYMENT for unknown list %s dropped", self->in.call_id);
            break;
        }
        default:
            zg_debug ("unexpected %s from the router", zg_msg_type_name (self->in.type));
            break;
    }
    //  A payload nobody took goes now; the rest is overwritten by the next
    //  receive (a full reset would clear the whole struct per message)
    zg_msg_payload_drop (&self->in);
    return 0;
}


//  --------------------------------------------------------------------------
//  Timers: heartbeats, router liveness, deadlines

static void
s_fail_all (s_frontend_t *self, int status, const char *type, const char *message)
{
    zg_call_t *call = zg_calls_first (self->calls);
    while (call) {
        zg_call_t *next = call->next;
        //  Tell the router anyway: if it is only slow, it can stop the work
        s_cancel (self, call);
        if (call->state == ZG_CALL_WAITING)
            s_fail_waiting (self, call, status, type, message, NULL);
        else
        if (call->state == ZG_CALL_STREAMING && !call->stream_ended)
            s_fail_stream (self, call, status, type, message, NULL);
        call = next;
    }
}

static void
s_on_timers (s_frontend_t *self, int64_t now)
{
    if (now >= self->next_heartbeat) {
        s_send_heartbeat (self);
        self->next_heartbeat = now + self->heartbeat_ms;
    }
    bool alive = s_router_usable (self, now);
    if (!alive && self->router_alive) {
        zg_warning ("router not reachable (no heartbeat for %lld ms); failing %zu requests",
                    (long long) (now - self->router_seen), zg_calls_routed (self->calls));
        s_fail_all (self, 503, "service_unavailable", "Router not reachable");
    }
    else
    if (alive && !self->router_alive)
        zg_info ("router reachable");
    self->router_alive = alive;

    if (self->redis_sync && now >= self->next_sync) {
        self->next_sync = now + self->sync_ms;
        if (zg_redis_sync_start (self->redis_sync, self->keys, s_wall_s ()) < 0)
            zg_warning ("frontend: cannot start a sync of the rate limits with Redis");
    }

    if (now >= self->next_sweep) {
        self->next_sweep = now + ZG_SWEEP_MS;
        zg_call_t *call = zg_calls_first (self->calls);
        while (call) {
            zg_call_t *next = call->next;
            if (call->state == ZG_CALL_WAITING && now > call->deadline_ms) {
                s_cancel (self, call);
                //  A probe or a list waits less than a client's request
                int64_t waited_ms = call->connection ? self->deadline_ms
                                                     : now - call->started_us / 1000;
                char message [128];
                snprintf (message, sizeof (message),
                          "Request timed out: no answer within %lld ms", (long long) waited_ms);
                s_fail_waiting (self, call, 504, "timeout", message, NULL);
            }
            call = next;
        }
        call = self->key_waiters;
        while (call) {
            zg_call_t *next = call->key_wait_next;
            if (now > call->key_wait_until)
                s_key_wake (self, call, true);
            call = next;
        }
    }
}

//  --------------------------------------------------------------------------
//  GET /health and GET /models

static void
s_check_forget_list (s_check_t *check)
{
    if (!check->borrowed)
        for (size_t index = 0; check->deployments && index < check->count; index++) {
            zg_deployment_t *deployment = &check->deployments [index];
            free (deployment->model_name);
            free (deployment->id);
            free (deployment->provider);
            free (deployment->upstream_model);
            free (deployment->api_base);
            free (deployment->mode);
        }
    if (!check->borrowed)
        free (check->deployments);
    for (size_t index = 0; check->errors && index < check->count; index++)
        free (check->errors [index]);
    free (check->errors);
    check->deployments = NULL;
    check->errors = NULL;
    check->borrowed = false;
    check->count = 0;
    check->listed = 0;
}

//  A call of the frontend's own for a check (a deployment's probe, the
//  router's deployment list), routed under a fresh id (a second one in
//  the unlikely case the first is taken)
static zg_call_t *
s_check_call (s_frontend_t *self, s_check_t *check)
{
    zg_call_t *call = zg_calls_acquire (self->calls);
    call->owner = self;
    call->check = check;
    call->started_us = zclock_usecs ();
    zg_calls_new_id (self->calls, call->call_id);
    if (zg_calls_route (self->calls, call) != 0) {
        zg_calls_new_id (self->calls, call->call_id);
        zg_calls_route (self->calls, call);
    }
    return call;
}

static void
s_check_destroy (s_check_t **check_p)
{
    s_check_t *check = *check_p;
    if (!check)
        return;
    s_check_forget_list (check);
    free (check);
    *check_p = NULL;
}

//  The configuration's deployments instead of the router's list, each
//  unhealthy for reason when there is one. -1 when memory runs out.
static int
s_check_use_config (s_frontend_t *self, s_check_t *check, const char *reason)
{
    s_check_forget_list (check);
    size_t count = self->config->deployment_count;
    check->errors = (char **) calloc (count + 1, sizeof (char *));
    if (!check->errors)
        return -1;
    check->deployments = self->config->deployments;
    check->borrowed = true;
    check->count = count;
    for (size_t index = 0; reason && index < count; index++)
        if (!(check->errors [index] = strdup (reason)))
            return -1;
    return 0;
}

//  The models a virtual key may use (NULL: every model). Its list is read
//  again at answer time: the table may have changed while the router was
//  asked, and a key gone since may see none.
static const char *const *
s_key_models (s_frontend_t *self, zg_call_t *call, size_t *count)
{
    static const char *const none [1] = { NULL };
    *count = 0;
    if (call->caller != ZG_CALLER_VIRTUAL || !self->keys)
        return NULL;
    const zg_key_record_t *key = zg_keys_lookup (self->keys, call->key_hash);
    if (!key)
        return none;
    if (key->models_count == 0)
        return NULL;
    *count = key->models_count;
    return key->models;
}

//  /models: the model names of what is served, those the caller may use
static char *
s_models_json (s_frontend_t *self, zg_call_t *call, const zg_deployment_t *deployments,
               const char *const *errors, size_t count)
{
    size_t allowed_count;
    const char *const *allowed = s_key_models (self, call, &allowed_count);
    if (!errors)
        return zg_reply_models_json (deployments, count, allowed, allowed_count);
    //  A database row the router cannot use names nothing it serves
    zg_deployment_t *served = (zg_deployment_t *) calloc (count + 1, sizeof (zg_deployment_t));
    if (!served)
        return NULL;
    size_t served_count = 0;
    for (size_t index = 0; index < count; index++)
        if (!errors [index])
            served [served_count++] = deployments [index];
    char *json = zg_reply_models_json (served, served_count, allowed, allowed_count);
    free (served);
    return json;
}

static struct MHD_Response *
s_check_response (s_frontend_t *self, s_check_t *check)
{
    char *json = check->names_only
               ? s_models_json (self, check->client, check->deployments,
                                (const char *const *) check->errors, check->count)
               : zg_reply_health_json (check->deployments, check->count,
                                       (const char *const *) check->errors);
    if (!json)
        return NULL;
    struct MHD_Response *response = MHD_create_response_from_buffer (
        strlen (json), json, MHD_RESPMEM_MUST_FREE);
    if (!response) {
        free (json);
        return NULL;
    }
    MHD_add_response_header (response, MHD_HTTP_HEADER_CONTENT_TYPE, "application/json");
    s_add_common_headers (check->client, response);
    return response;
}

//  The check is complete: answer its client, if still there (suspended
//  while the router was asked) and forget the check
static void
s_check_finish (s_frontend_t *self, s_check_t *check)
{
    if (check->client) {
        zg_call_t *client = check->client;
        client->check = NULL;
        struct MHD_Response *response = s_check_response (self, check);
        if (response)
            s_finish_waiting (self, client, 200, response);
        else
            s_fail_waiting (self, client, 500, "internal_server_error", "Out of memory", NULL);
    }
    s_check_destroy (&check);
}

static void s_list_failed (s_frontend_t *self, s_check_t *check, const char *error);

//  A probe is back (error NULL: healthy); the last one answers the client.
//  The lister ends here too when the router did not list in time.
static void
s_probe_done (s_frontend_t *self, zg_call_t *probe, const char *error)
{
    s_check_t *check = (s_check_t *) probe->check;
    assert (check && !probe->connection);
    if (probe == check->lister) {
        s_list_failed (self, check, error ? error : "no answer");
        return;
    }
    if (error && !check->errors [probe->check_index])
        check->errors [probe->check_index] = strdup (error);
    zg_calls_release (self->calls, probe);
    if (--check->pending == 0)
        s_check_finish (self, check);
}

//  One minimal real request per deployment of the list, each pinned to
//  it: a one-token chat, an embedding of "ping" for embedding deployments.
//  Deployments already unhealthy (rows the router cannot use) are not sent.
static void
s_check_probe_all (s_frontend_t *self, s_check_t *check)
{
    uint32_t timeout_ms = self->timeout_ms < ZG_HEALTH_CHECK_TIMEOUT_MS
                        ? self->timeout_ms : ZG_HEALTH_CHECK_TIMEOUT_MS;
    //  Counted before any probe can end, so that none answers too soon
    check->pending = 1;
    for (size_t index = 0; index < check->count; index++) {
        const zg_deployment_t *deployment = &check->deployments [index];
        if (check->errors [index])
            continue;
        if (!deployment->id || !*deployment->id) {
            check->errors [index] = strdup ("the deployment has no id");
            continue;
        }
        zg_call_t *probe = s_check_call (self, check);
        probe->check_index = index;
        const char *mode = zg_reply_mode (deployment);
        char body [ZG_NAME_MAX * 2 + 128];
        char quoted_id [ZG_NAME_MAX * 2 + 8];
        if (zg_json_quote (deployment->id, quoted_id, sizeof (quoted_id)) < 0)
            snprintf (quoted_id, sizeof (quoted_id), "\"\"");
        if (strcmp (mode, "embedding") == 0) {
            probe->route = ZG_ROUTE_EMBEDDINGS;
            snprintf (body, sizeof (body), "{\"model\":%s,\"input\":\"ping\"}", quoted_id);
        }
        else
        if (strcmp (mode, "completion") == 0) {
            probe->route = ZG_ROUTE_COMPLETIONS;
            snprintf (body, sizeof (body), "{\"model\":%s,\"prompt\":\"ping\",\"max_tokens\":1}",
                      quoted_id);
        }
        else {
            probe->route = ZG_ROUTE_CHAT;
            snprintf (body, sizeof (body), "{\"model\":%s,\"messages\":[{\"role\":\"user\","
                      "\"content\":\"ping\"}],\"max_tokens\":1}", quoted_id);
        }
        zg_msg_reset (&self->out, ZG_MSG_REQUEST);
        ZG_MSG_SET (self->out.call_id, probe->call_id);
        ZG_MSG_SET (self->out.model, deployment->id);
        self->out.route = probe->route;
        self->out.flags = ZG_FLAG_PIN_DEPLOYMENT;
        self->out.timeout_ms = timeout_ms;
        zg_msg_payload_borrow (&self->out, body, strlen (body));
        if (zg_msg_send (&self->out, self->router) != 0) {
            check->errors [index] = strdup ("Router not reachable");
            zg_calls_release (self->calls, probe);
            continue;
        }
        probe->state = ZG_CALL_WAITING;
        probe->deadline_ms = zclock_mono () + timeout_ms;
        check->pending++;
    }
    if (--check->pending == 0)
        s_check_finish (self, check);
}

//  The router's list is complete: the answer for /models, the probes for
//  GET /health (none when its client left)
static void
s_list_done (s_frontend_t *self, s_check_t *check)
{
    zg_call_t *lister = check->lister;
    check->lister = NULL;
    zg_calls_release (self->calls, lister);
    if (check->names_only || !check->client)
        s_check_finish (self, check);
    else
        s_check_probe_all (self, check);
}

//  The router did not give its list (gone, too slow, nonsense): answer
//  from the configuration, GET /health with every deployment unhealthy
static void
s_list_failed (s_frontend_t *self, s_check_t *check, const char *error)
{
    zg_warning ("the router did not list its deployments: %s", error);
    zg_call_t *lister = check->lister;
    check->lister = NULL;
    zg_calls_release (self->calls, lister);
    char reason [ZG_MESSAGE_MAX + 64];
    snprintf (reason, sizeof (reason), "Router not reachable: %s", error);
    if (s_check_use_config (self, check, check->names_only ? NULL : reason) != 0)
        s_check_forget_list (check);
    s_check_finish (self, check);
}

//  One DEPLOYMENT of the list the router is sending
static void
s_on_deployment (s_frontend_t *self, zg_call_t *lister, const zg_msg_t *msg)
{
    s_check_t *check = (s_check_t *) lister->check;
    if (!check || check->lister != lister)
        return;
    if (msg->count > ZG_LIST_MAX) {
        s_list_failed (self, check, "its list is longer than the frontend takes");
        return;
    }
    if (!check->deployments) {
        check->count = msg->count;
        check->deployments = (zg_deployment_t *) calloc (check->count + 1,
                                                         sizeof (zg_deployment_t));
        check->errors = (char **) calloc (check->count + 1, sizeof (char *));
        if (!check->deployments || !check->errors) {
            s_list_failed (self, check, "out of memory");
            return;
        }
    }
    else
    if (msg->count != check->count) {
        s_list_failed (self, check, "its list changed length while it was sent");
        return;
    }
    if (check->count == 0) {
        s_list_done (self, check);
        return;
    }
    zg_deployment_t *deployment = msg->index < check->count
                                ? &check->deployments [msg->index] : NULL;
    if (!deployment || deployment->model_name) {
        zg_warning ("DEPLOYMENT %u of %u from the router: %s", msg->index, msg->count,
                    deployment ? "a repeat, dropped" : "out of range, dropped");
        return;
    }
    deployment->model_name = strdup (msg->model);
    deployment->id = strdup (msg->deployment_id);
    deployment->provider = strdup (msg->provider);
    deployment->upstream_model = strdup (msg->upstream_model);
    deployment->api_base = strdup (msg->api_base);
    deployment->mode = msg->mode [0] ? strdup (msg->mode) : NULL;
    if (msg->message [0])
        check->errors [msg->index] = strdup (msg->message);
    if (!deployment->model_name || !deployment->id || !deployment->provider
    ||  !deployment->upstream_model || !deployment->api_base
    ||  (msg->mode [0] && !deployment->mode)
    ||  (msg->message [0] && !check->errors [msg->index])) {
        s_list_failed (self, check, "out of memory");
        return;
    }
    if (++check->listed == check->count)
        s_list_done (self, check);
}

//  GET /health (names_only false) and, with store_model_in_db, GET
//  /models: ask the router for the deployments it serves (the
//  configuration's and the database's), then probe them or list their
//  names. The client is suspended meanwhile; nothing here waits.
static enum MHD_Result
s_start_check (s_frontend_t *self, zg_call_t *call, bool names_only)
{
    s_check_t *check = (s_check_t *) calloc (1, sizeof (s_check_t));
    if (!check)
        return s_reply_error (self, call, 500, "internal_server_error", "Out of memory", NULL);
    check->client = call;
    check->names_only = names_only;
    if (!s_router_usable (self, zclock_mono ())) {
        //  As before a router was ever asked: the configuration's list
        enum MHD_Result result = MHD_NO;
        if (s_check_use_config (self, check, names_only ? NULL : "Router not reachable") == 0)
            result = s_reply (call, 200, s_check_response (self, check), true);
        else
            result = s_reply_error (self, call, 500, "internal_server_error", "Out of memory",
                                    NULL);
        s_check_destroy (&check);
        return result;
    }
    zg_call_t *lister = s_check_call (self, check);
    check->lister = lister;
    zg_msg_reset (&self->out, ZG_MSG_LIST);
    ZG_MSG_SET (self->out.call_id, lister->call_id);
    if (zg_msg_send (&self->out, self->router) != 0) {
        check->lister = NULL;
        zg_calls_release (self->calls, lister);
        enum MHD_Result result = MHD_NO;
        if (s_check_use_config (self, check, names_only ? NULL : "Router not reachable") == 0)
            result = s_reply (call, 200, s_check_response (self, check), true);
        s_check_destroy (&check);
        return result;
    }
    lister->state = ZG_CALL_WAITING;
    lister->deadline_ms = zclock_mono () + ZG_LIST_TIMEOUT_MS;
    call->check = check;
    call->state = ZG_CALL_WAITING;
    MHD_suspend_connection (call->connection);
    call->suspended = true;
    s_watch (self, call);
    return MHD_YES;
}

//  --------------------------------------------------------------------------
//  Readiness and metrics

static const char *s_level_name (int level);

static enum MHD_Result
s_reply_metrics (s_frontend_t *self, zg_call_t *call)
{
    char *text = self->board ? zg_scoreboard_metrics (self->board, self->config) : strdup ("");
    struct MHD_Response *response = text
        ? MHD_create_response_from_buffer (strlen (text), text, MHD_RESPMEM_MUST_FREE) : NULL;
    if (!response) {
        free (text);
        return MHD_NO;
    }
    MHD_add_response_header (response, MHD_HTTP_HEADER_CONTENT_TYPE,
                             "text/plain; version=0.0.4; charset=utf-8");
    return s_reply (call, 200, response, true);
}

//  Clients that hung up while their connection was suspended
static void
s_on_watch (s_frontend_t *self)
{
    struct epoll_event events [256];
    int count = epoll_wait (self->watch_fd, events, 256, 0);
    for (int index = 0; index < count; index++) {
        s_socket_t *socket = s_socket (self, events [index].data.fd);
        if (!socket)
            continue;
        socket->peer_closed = true;
        zg_call_t *call = socket->call;
        if (call && call->suspended) {
            zg_debug ("call %s: client hung up", call->call_id);
            s_cancel (self, call);
            call->client_gone = true;
            s_resume (self, call);
        }
    }
}


//  --------------------------------------------------------------------------
//  HTTP requests

static enum MHD_Result
s_collect_header (void *cls, enum MHD_ValueKind kind, const char *key, const char *value)
{
    s_headers_t *headers = (s_headers_t *) cls;
    if (!key || !value)
        return MHD_YES;
    size_t key_length = strlen (key);
    headers->bytes += key_length + strlen (value) + 4 + ZG_POOL_PER_HEADER;
    switch (key_length) {
        case 7:
            if (strcasecmp (key, "API-Key") == 0)
                headers->api_key = value;
            break;
        case 9:
            if (strcasecmp (key, "x-api-key") == 0)
                headers->x_api_key = value;
            break;
        case 13:
            if (strcasecmp (key, "Authorization") == 0)
                headers->authorization = value;
            break;
        case 14:
            if (strcasecmp (key, "Content-Length") == 0)
                headers->content_length = value;
            break;
        case 17:
            if (strcasecmp (key, "x-litellm-call-id") == 0)
                headers->call_id = value;
            else
            if (strcasecmp (key, "x-litellm-api-key") == 0)
                headers->litellm_key = value;
            break;
    }
    return MHD_YES;
}

//  The hash of the key a call presents. A keep-alive connection presents
//  the same key call after call: the socket keeps the last key and its
//  hash (until the connection closes), so that SHA-256 runs once per key
//  and connection instead of once per call. Only an exact match of the
//  whole key reuses the hash.
static void
s_key_hash (s_frontend_t *self, zg_call_t *call, const char *key)
{
    size_t length = strlen (key);
    s_socket_t *socket = s_socket (self, call->fd);
    if (socket && length && socket->key_length == length
    &&  memcmp (socket->key, key, length) == 0) {
        memcpy (call->key_hash, socket->key_hash, sizeof (call->key_hash));
        return;
    }
    zg_keys_hash (key, call->key_hash);
    if (!socket)
        return;
    explicit_bzero (socket->key, sizeof (socket->key));
    socket->key_length = 0;
    if (length && length <= sizeof (socket->key)) {
        memcpy (socket->key, key, length);
        memcpy (socket->key_hash, call->key_hash, sizeof (socket->key_hash));
        socket->key_length = (uint8_t) length;
    }
}

//  Who the caller is. The master key (or no master key at all) goes on;
//  with a key table, any other key is taken for a virtual key, decided
//  later by s_key_decide; without one, it is refused. Queues the 401 and
//  returns false on a refusal.
static bool
s_identify (s_frontend_t *self, zg_call_t *call, const s_headers_t *headers,
            enum MHD_Result *result)
{
    call->caller = ZG_CALLER_NONE;
    if (!zg_auth_required (self->auth))
        return true;
    bool malformed;
    const char *key = zg_auth_presented_key (headers->authorization, headers->litellm_key,
                                             headers->api_key, headers->x_api_key, &malformed);
    zg_auth_verdict_t verdict = zg_auth_check (self->auth, key, malformed);
    if (verdict == ZG_AUTH_OK) {
        call->caller = ZG_CALLER_MASTER;
        return true;
    }
    if (verdict == ZG_AUTH_INVALID && self->keys) {
        call->caller = ZG_CALLER_VIRTUAL;
        call->presented_key = key;
        s_key_hash (self, call, key);
        return true;
    }
    char message [512];
    zg_auth_message (verdict, key, message, sizeof (message));
    *result = s_reply_error (self, call, 401, "auth_error", message, NULL);
    return false;
}

typedef enum {
    S_KEY_ALLOWED,
    S_KEY_REFUSED,              //  answered
    S_KEY_WAITING               //  suspended until the keystore answers
} s_key_outcome_t;

//  Decide on the virtual key of a call, for model (NULL: none named).
//  admit: count the call in the key's window and in flight (LLM calls).
//  An unknown key is asked of the database, at most once per key and TTL
//  whatever the number of callers. With a wait phase the call waits for
//  the answer (once: the verdict after it is final); without one the
//  decision is left for later and the call goes on.
static s_key_outcome_t
s_key_decide (s_frontend_t *self, zg_call_t *call, const char *model, bool admit,
              zg_key_wait_t wait_phase, enum MHD_Result *result)
{
    int64_t now = s_wall_s ();
    zg_keys_verdict_t verdict;
    int rc = admit ? zg_keys_admit (self->keys, call->key_hash, call->presented_key, model, now,
                                    &verdict, &call->ticket)
                   : zg_keys_check (self->keys, call->key_hash, call->presented_key, model, now,
                                    &verdict);
    if (rc == 0) {
        if (admit || wait_phase != ZG_KEY_WAIT_NONE)
            call->caller = verdict.reason == ZG_KEYS_OK_UNPRIVILEGED ? ZG_CALLER_UNPRIVILEGED
                                                                     : ZG_CALLER_VIRTUAL;
        call->admitted = admit;
        return S_KEY_ALLOWED;
    }
    if (verdict.reason == ZG_KEYS_UNKNOWN && !call->key_waited) {
        zg_keys_lookup_t lookup = zg_keys_should_lookup (self->keys, call->key_hash, now);
        if (lookup == ZG_KEYS_LOOKUP) {
            zg_debug ("key lookup %.12s...", call->key_hash);
            zg_keystore_lookup (self->keystore, call->key_hash);
        }
        if (lookup == ZG_KEYS_LOOKUP || lookup == ZG_KEYS_LOOKUP_PENDING) {
            if (wait_phase == ZG_KEY_WAIT_NONE)
                return S_KEY_ALLOWED;
            if (self->key_waiter_count < ZG_KEY_WAITERS_MAX) {
                s_key_wait (self, call, wait_phase);
                *result = MHD_YES;
                return S_KEY_WAITING;
            }
            *result = s_reply_error (self, call, 503, "service_unavailable",
                                     "Too many requests are waiting for their key to be "
                                     "checked. Retry shortly.", NULL);
            return S_KEY_REFUSED;
        }
    }
    if (verdict.reason == ZG_KEYS_UNKNOWN && call->key_wait_expired) {
        //  The database did not answer in time, or could not be asked: it
        //  may well know the key
        *result = s_reply_error (self, call, 503, "no_db_connection",
                                 "Service Unavailable, the authentication database is "
                                 "temporarily unreachable. Please retry shortly.", NULL);
        return S_KEY_REFUSED;
    }
    *result = s_reply (call, verdict.status, s_verdict_response (self, call, &verdict), true);
    return S_KEY_REFUSED;
}

static const char *
s_route_label (int route)
{
    switch (route) {
        case ZG_ROUTE_CHAT:        return "/chat/completions";
        case ZG_ROUTE_COMPLETIONS: return "/completions";
        case ZG_ROUTE_EMBEDDINGS:  return "/embeddings";
        default:                   return "";
    }
}

static enum MHD_Result
s_too_large (s_frontend_t *self, zg_call_t *call)
{
    char message [160];
    snprintf (message, sizeof (message),
              "Request size is too large. Max size is %g MB",
              self->config->max_request_size_mb);
    return s_reply_error (self, call, 413, "bad_request_error", message, NULL);
}

//  Get ready to read a body: refuse an over-size one before reading it,
//  and size the frame it will travel in, so it is copied once, from MHD's
//  buffer to it
static enum MHD_Result
s_expect_body (s_frontend_t *self, zg_call_t *call, const s_headers_t *headers)
{
    if (headers->content_length) {
        char *end;
        errno = 0;
        unsigned long long length = strtoull (headers->content_length, &end, 10);
        if (errno || end == headers->content_length || *end)
            return s_reply_error (self, call, 400, "bad_request_error",
                                  "Invalid Content-Length", NULL);
        if (length > self->max_body)
            return s_too_large (self, call);
        if (length > ZG_PAYLOAD_INLINE_MAX) {
            call->body_frame = zframe_new (NULL, (size_t) length);
            call->body_cap = (size_t) length;
        }
        else
        if (length > call->body_cap) {
            //  A small body travels in the REQUEST's own frame, copied
            //  there: it waits in the call's buffer, kept from call to call
            char *grown = (char *) realloc (call->body_buf, ZG_PAYLOAD_INLINE_MAX);
            assert (grown);
            call->body_buf = grown;
            call->body_cap = ZG_PAYLOAD_INLINE_MAX;
        }
    }
    call->state = ZG_CALL_UPLOADING;
    return MHD_YES;
}

//  The query string again, for a management job: MHD hands it over
//  decoded, so it is encoded back, argument by argument
typedef struct {
    char  *data;
    size_t size;
    size_t cap;
} s_query_t;

static void
s_query_put (s_query_t *query, const char *text, bool encode)
{
    static const char hex [] = "0123456789ABCDEF";
    for (const unsigned char *c = (const unsigned char *) text; *c; c++) {
        if (query->size + 4 > query->cap) {
            size_t cap = query->cap ? query->cap * 2 : 256;
            char *grown = (char *) realloc (query->data, cap);
            assert (grown);
            query->data = grown;
            query->cap = cap;
        }
        if (!encode || isalnum (*c) || strchr ("-._~", *c))
            query->data [query->size++] = (char) *c;
        else {
            query->data [query->size++] = '%';
            query->data [query->size++] = hex [*c >> 4];
            query->data [query->size++] = hex [*c & 15];
        }
    }
    if (query->data)
        query->data [query->size] = 0;
}

static enum MHD_Result
s_collect_argument (void *cls, enum MHD_ValueKind kind, const char *key, const char *value)
{
    (void) kind;
    s_query_t *query = (s_query_t *) cls;
    if (!key)
        return MHD_YES;
    if (query->size)
        s_query_put (query, "&", false);
    s_query_put (query, key, true);
    if (value) {
        s_query_put (query, "=", false);
        s_query_put (query, value, true);
    }
    return MHD_YES;
}

//  Hand the call's management job to the keystore and suspend until it
//  comes back (ADMIN_DONE)
static enum MHD_Result
s_admin_submit (s_frontend_t *self, zg_call_t *call, const char *body, size_t size)
{
    s_query_t query = { NULL, 0, 0 };
    MHD_get_connection_values (call->connection, MHD_GET_ARGUMENT_KIND, s_collect_argument,
                               &query);
    uint64_t handle = ++self->admin_handle;
    zg_admin_job_t *job = zg_admin_job_new ((zg_admin_op_t) call->admin_op, handle,
                                            call->path_key, query.data ? query.data : "",
                                            body ? body : "", body ? size : 0);
    free (query.data);
    if (call->path_key) {
        memset (call->path_key, 0, strlen (call->path_key));
        free (call->path_key);
        call->path_key = NULL;
    }
    if (!job)
        return s_reply_error (self, call, 500, "internal_server_error",
                              "Out of memory for the request", NULL);
    char key [24];
    s_admin_handle_key (handle, key, sizeof (key));
    zhashx_insert (self->admin_calls, key, call);
    call->admin_handle = handle;
    call->state = ZG_CALL_ADMIN;
    zg_keystore_submit (self->keystore, &job);
    MHD_suspend_connection (call->connection);
    call->suspended = true;
    s_watch (self, call);
    return MHD_YES;
}

//  A management route: the master key's alone, and only with a database
static enum MHD_Result
s_on_admin_headers (s_frontend_t *self, zg_call_t *call, const s_headers_t *headers,
                    const zg_route_match_t *match)
{
    enum MHD_Result result = MHD_YES;
    if (!s_identify (self, call, headers, &result))
        return result;
    if (call->caller == ZG_CALLER_VIRTUAL) {
        //  A key the table knows is told it may not; any other key is
        //  refused as the data path would refuse it
        zg_keys_verdict_t verdict;
        int rc = zg_keys_check (self->keys, call->key_hash, call->presented_key, NULL,
                                s_wall_s (), &verdict);
        if (rc == 0 || (verdict.key && verdict.reason != ZG_KEYS_EXPIRED
                                    && verdict.reason != ZG_KEYS_BLOCKED))
            return s_reply_error (self, call, 403, "auth_error",
                                  "Admin-only endpoint. Not allowed to access this.", NULL);
        return s_reply (call, verdict.status, s_verdict_response (self, call, &verdict), true);
    }
    if (!self->keystore)
        return s_reply_error (self, call, 500, "internal_server_error",
                              "DB not connected. See https://docs.litellm.ai/docs/proxy/virtual_keys",
                              NULL);
    if (self->draining)
        return s_reply_error (self, call, 503, "service_unavailable",
                              "Server is shutting down", NULL);
    call->admin_op = match->admin_op;
    if (match->path_key) {
        if (match->path_key_length > ZG_KEYS_KEY_MAX)
            return s_reply_error (self, call, 400, "bad_request_error", "Key too long", "key");
        call->path_key = strndup (match->path_key, match->path_key_length);
        assert (call->path_key);
    }
    if (call->method == ZG_HTTP_GET || call->method == ZG_HTTP_HEAD)
        return s_admin_submit (self, call, NULL, 0);
    return s_expect_body (self, call, headers);
}

//  GET /models: with store_model_in_db the router's list, which has the
//  database's deployments; else the configuration's, built once, less the
//  names a virtual key may not use
static enum MHD_Result
s_reply_models (s_frontend_t *self, zg_call_t *call)
{
    if (self->config->store_model_in_db && !self->draining)
        return s_start_check (self, call, true);
    size_t allowed_count;
    if (!s_key_models (self, call, &allowed_count))
        return s_reply (call, 200, self->models_response, false);
    char *json = s_models_json (self, call, self->config->deployments, NULL,
                                self->config->deployment_count);
    if (!json)
        return s_reply_error (self, call, 500, "internal_server_error", "Out of memory", NULL);
    return s_reply (call, 200, s_static_response (json, "application/json"), true);
}

//  /health/readiness. With a database, "db" says whether it is reachable;
//  a database down makes the gateway unready, unless
//  allow_requests_on_db_unavailable keeps it serving (production guide
//  §6: readiness then stays 200).
static enum MHD_Result
s_readiness (s_frontend_t *self, zg_call_t *call)
{
    bool router_ready = self->router_answered && s_router_usable (self, zclock_mono ())
                     && !self->draining;
    if (self->board && router_ready) {
        //  Every actor's heartbeat, and the database as this frontend's
        //  keystore (or the spend actor) last found it
        int level = zg_log_level ();
        char *json = NULL;
        int status = zg_scoreboard_readiness (self->board, s_level_name (level),
                                              level <= ZG_LOG_DEBUG, &json);
        struct MHD_Response *response = json
            ? MHD_create_response_from_buffer (strlen (json), json, MHD_RESPMEM_MUST_FREE)
            : NULL;
        if (!response) {
            free (json);
            return MHD_NO;
        }
        MHD_add_response_header (response, MHD_HTTP_HEADER_CONTENT_TYPE, "application/json");
        return s_reply (call, status, response, true);
    }
    if (!self->keystore)
        return router_ready ? s_reply (call, 200, self->ready_response, false)
                            : s_reply (call, 503, self->unready_response, false);
    bool db_ready = self->db_connected || self->config->allow_requests_on_db_unavailable;
    bool ready = router_ready && db_ready;
    const char *detail = !router_ready ? "router not reachable"
                       : !db_ready ? "database not reachable" : NULL;
    int level = zg_log_level ();
    char *body = zg_reply_readiness_json (ready, self->db_connected ? "connected" : "disconnected",
                                          self->config->redis_host ? "redis" : NULL,
                                          detail, s_level_name (level), level <= ZG_LOG_DEBUG);
    return s_reply (call, ready ? 200 : 503, s_static_response (body, "application/json"), true);
}

//  First call for a request: the headers are in
static enum MHD_Result
s_on_headers (s_frontend_t *self, zg_call_t *call, const char *url)
{
    zg_route_match_t match;
    zg_endpoint_t endpoint = zg_route_match ((zg_http_method_t) call->method, url, &match);
    if (endpoint == ZG_ENDPOINT_NOT_FOUND)
        return s_reply_error (self, call, 404, "not_found_error", "Not Found", NULL);
    if (endpoint == ZG_ENDPOINT_BAD_METHOD) {
        struct MHD_Response *response = s_error_response (self, call, 405, "method_not_allowed",
                                                          "Method Not Allowed", NULL);
        if (response)
            MHD_add_response_header (response, MHD_HTTP_HEADER_ALLOW, match.allow);
        return s_reply (call, 405, response, true);
    }

    s_headers_t headers;
    memset (&headers, 0, sizeof (headers));
    MHD_get_connection_values (call->connection, MHD_HEADER_KIND, s_collect_header, &headers);
    call->head_bytes = headers.bytes + strlen (url) + 32;
    if (call->head_bytes > ZG_HEAD_MAX)
        return s_reply_error (self, call, 431, "bad_request_error",
                              "Request header fields too large", NULL);
    if (endpoint == ZG_ENDPOINT_ADMIN)
        return s_on_admin_headers (self, call, &headers, &match);

    bool llm = zg_endpoint_is_llm (endpoint);
    if (llm) {
        //  Set before auth, so that refused requests count in the metrics
        call->route = (uint8_t) zg_endpoint_route (endpoint);
        if (zg_calls_id_is_sane (headers.call_id))
            ZG_MSG_SET (call->echo_id, headers.call_id);
        else
            zg_calls_new_id (self->calls, call->echo_id);
        memcpy (call->call_id, call->echo_id, sizeof (call->call_id));
    }
    enum MHD_Result result = MHD_YES;
    bool needs_auth = zg_endpoint_needs_auth (endpoint)
                   || (endpoint == ZG_ENDPOINT_METRICS
                       && self->config->require_auth_for_metrics_endpoint);
    if (needs_auth && !s_identify (self, call, &headers, &result))
        return result;

    switch (endpoint) {
        case ZG_ENDPOINT_MODELS:
        case ZG_ENDPOINT_MODEL_INFO:
            if (call->caller == ZG_CALLER_VIRTUAL
            &&  s_key_decide (self, call, NULL, false, ZG_KEY_WAIT_HEADERS, &result)
                != S_KEY_ALLOWED)
                return result;
            //  With store_model_in_db the database's deployments are listed
            //  too; while it is down, the configuration's still are
            if (endpoint == ZG_ENDPOINT_MODEL_INFO && self->config->store_model_in_db
            &&  self->keystore && self->db_connected && !self->draining) {
                call->admin_op = ZG_ADMIN_MODEL_INFO;
                return s_admin_submit (self, call, NULL, 0);
            }
            if (endpoint == ZG_ENDPOINT_MODELS)
                return s_reply_models (self, call);
            return s_reply (call, 200, self->model_info_response, false);
        case ZG_ENDPOINT_LIVENESS:
            return s_reply (call, 200, self->liveness_response, false);
        case ZG_ENDPOINT_ROOT:
            return s_reply (call, 200, self->root_response, false);
        case ZG_ENDPOINT_READINESS:
            return s_readiness (self, call);
        case ZG_ENDPOINT_METRICS:
            return s_reply_metrics (self, call);
        case ZG_ENDPOINT_HEALTH:
            return s_start_check (self, call, false);
        default:
            break;
    }
    assert (llm);
    if (self->draining)
        return s_reply_error (self, call, 503, "service_unavailable",
                              "Server is shutting down", NULL);
    if (!s_router_usable (self, zclock_mono ()))
        return s_reply_error (self, call, 503, "service_unavailable",
                              "Router not reachable", NULL);
    if (match.model) {
        if (match.model_length > ZG_NAME_MAX)
            return s_reply_error (self, call, 400, "bad_request_error",
                                  "Model name too long", "model");
        memcpy (call->model, match.model, match.model_length);
        call->model [match.model_length] = 0;
    }
    //  A key refused whatever the model (unknown to the database, expired,
    //  blocked, over budget or limits) is refused before its body is read;
    //  an unknown one is looked up while the body comes in
    if (call->caller == ZG_CALLER_VIRTUAL
    &&  s_key_decide (self, call, call->model [0] ? call->model : NULL, false,
                      ZG_KEY_WAIT_NONE, &result) != S_KEY_ALLOWED)
        return result;
    return s_expect_body (self, call, &headers);
}

static void
s_on_upload (s_frontend_t *self, zg_call_t *call, const char *data, size_t size)
{
    if (call->body_too_large)
        return;
    if (size > self->max_body - call->body_size) {
        call->body_too_large = true;
        zframe_destroy (&call->body_frame);
        free (call->body_buf);
        call->body_buf = NULL;
        call->body_cap = call->body_size = 0;
        return;
    }
    if (call->body_frame) {
        //  MHD enforces Content-Length, so this cannot overflow; be sure
        if (size > call->body_cap - call->body_size) {
            call->body_too_large = true;
            return;
        }
        memcpy (zframe_data (call->body_frame) + call->body_size, data, size);
    }
    else {
        if (call->body_size + size > call->body_cap) {
            size_t cap = call->body_cap ? call->body_cap : 16384;
            while (cap < call->body_size + size)
                cap *= 2;
            if (cap > self->max_body)
                cap = self->max_body;
            char *grown = (char *) realloc (call->body_buf, cap);
            assert (grown);
            call->body_buf = grown;
            call->body_cap = cap;
        }
        memcpy (call->body_buf + call->body_size, data, size);
    }
    call->body_size += size;
}

//  Where a worker splices, from what the validation found (model, stream,
//  stream_options), sent with the body so that the worker does not scan
//  it again. Not located (the worker then scans) for the shapes it has no
//  spans for: a top-level value that is not an object, a model that is
//  not a string, stream_options that are not an object.
static void
s_locate_body (const char *body, size_t size, const zg_json_span_t *found, zg_msg_t *out)
{
    out->model_span = out->options_span = 0;
    size_t start = 0;
    while (start < size && (body [start] == ' ' || body [start] == '\t'
                        ||  body [start] == '\n' || body [start] == '\r'))
        start++;
    if (size > UINT32_MAX || start >= size || body [start] != '{'
    ||  (found [0].type != ZG_JSON_NONE && found [0].type != ZG_JSON_STRING)
    ||  (found [2].type != ZG_JSON_NONE && found [2].type != ZG_JSON_OBJECT))
        return;
    out->flags |= ZG_FLAG_BODY_LOCATED;
    if (found [0].type == ZG_JSON_STRING)
        out->model_span = zg_msg_span ((uint32_t) found [0].offset, (uint32_t) found [0].length);
    if (found [2].type == ZG_JSON_OBJECT)
        out->options_span = zg_msg_span ((uint32_t) found [2].offset,
                                         (uint32_t) found [2].length);
}

//  The whole body is in: check it, send the REQUEST, suspend
static enum MHD_Result
s_on_body_complete (s_frontend_t *self, zg_call_t *call)
{
    if (call->body_too_large)
        return s_too_large (self, call);
    const char *body = call->body_frame ? (const char *) zframe_data (call->body_frame)
                                        : call->body_buf;
    size_t size = call->body_size;
    if (call->admin_op) {
        if (s_peer_closed (self, call))
            return MHD_NO;
        return s_admin_submit (self, call, body, size);
    }
    size_t error_at = 0;
    static const char *const body_keys [] = { "model", "stream", "stream_options" };
    zg_json_span_t found [3];
    if (!body || size == 0 || !zg_json_valid_find (body, size, &error_at, body_keys, found, 3)) {
        char message [160];
        snprintf (message, sizeof (message),
                  "Invalid JSON payload: the body is not valid JSON (at byte %zu)", error_at);
        return s_reply_error (self, call, 400, "bad_request_error", message, NULL);
    }
    if (!call->model [0]) {
        if (found [0].type != ZG_JSON_STRING
        ||  zg_json_string (body, &found [0], call->model, sizeof (call->model)) <= 0) {
            call->model [0] = 0;
            char message [256];
            snprintf (message, sizeof (message),
                      "%s: Invalid model name passed in model=None. "
                      "Call /v1/models to view available models for your key.",
                      s_route_label (call->route));
            return s_reply_error (self, call, 400, "bad_request_error", message, "model");
        }
    }
    call->flags = 0;
    if (found [1].type == ZG_JSON_TRUE)
        call->flags |= ZG_FLAG_STREAM;
    zg_json_span_t span;
    if (found [2].type == ZG_JSON_OBJECT
    &&  zg_json_find_in (body, size, &found [2], "include_usage", &span)
    &&  span.type == ZG_JSON_TRUE)
        call->flags |= ZG_FLAG_CLIENT_USAGE;

    if (call->caller == ZG_CALLER_VIRTUAL) {
        enum MHD_Result result = MHD_YES;
        if (s_key_decide (self, call, call->model, true, ZG_KEY_WAIT_BODY, &result)
            != S_KEY_ALLOWED)
            return result;
    }
    if (!s_router_usable (self, zclock_mono ()))
        return s_reply_error (self, call, 503, "service_unavailable",
                              "Router not reachable", NULL);
    if (s_peer_closed (self, call))
        return MHD_NO;

    //  A client may reuse its own call id while the first call is still in
    //  flight; the wire id must be unique, the echoed one stays the client's
    if (zg_calls_route (self->calls, call) != 0) {
        zg_calls_new_id (self->calls, call->call_id);
        if (zg_calls_route (self->calls, call) != 0)
            return s_reply_error (self, call, 500, "internal_server_error",
                                  "Duplicate call id", NULL);
    }
    zg_msg_reset (&self->out, ZG_MSG_REQUEST);
    ZG_MSG_SET (self->out.call_id, call->call_id);
    ZG_MSG_SET (self->out.model, call->model);
    self->out.route = call->route;
    self->out.flags = call->flags;
    self->out.timeout_ms = self->timeout_ms;
    s_locate_body (body, size, found, &self->out);
    //  Whose spend it is: the master key's calls go without, as before
    if (call->caller == ZG_CALLER_VIRTUAL || call->caller == ZG_CALLER_UNPRIVILEGED) {
        ZG_MSG_SET (self->out.key_hash, call->key_hash);
        const zg_key_record_t *key = call->caller == ZG_CALLER_VIRTUAL
                                   ? zg_keys_lookup (self->keys, call->key_hash) : NULL;
        if (key && key->user_id)
            ZG_MSG_SET (self->out.user_id, key->user_id);
        if (key && key->team_id)
            ZG_MSG_SET (self->out.team_id, key->team_id);
    }
    int sent;
    if (call->body_frame) {
        zg_msg_payload_give (&self->out, &call->body_frame);
        sent = zg_msg_send (&self->out, self->router);
    }
    else {
        zg_msg_payload_borrow (&self->out, call->body_buf, size);
        sent = zg_msg_send (&self->out, self->router);
        if (call->body_cap > ZG_PAYLOAD_INLINE_MAX) {
            free (call->body_buf);
            call->body_buf = NULL;
            call->body_cap = 0;
        }
    }
    if (sent != 0) {
        zg_calls_unroute (self->calls, call);
        return s_reply_error (self, call, 503, "service_unavailable",
                              "Router not reachable", NULL);
    }
    call->deadline_ms = zclock_mono () + self->deadline_ms;
    call->state = ZG_CALL_WAITING;
    self->llm_active++;
    MHD_suspend_connection (call->connection);
    call->suspended = true;
    s_watch (self, call);
    return MHD_YES;
}

//  Drop body bytes nobody will use. A client that keeps sending far past
//  the limit is cut off rather than read forever.
static enum MHD_Result
s_discard (s_frontend_t *self, zg_call_t *call, size_t *upload_data_size)
{
    call->discarded += *upload_data_size;
    *upload_data_size = 0;
    return call->discarded > self->max_body + 1024 * 1024 ? MHD_NO : MHD_YES;
}

static enum MHD_Result
s_on_request (void *cls, struct MHD_Connection *connection, const char *url,
              const char *method, const char *version, const char *upload_data,
              size_t *upload_data_size, void **con_cls)
{
    s_frontend_t *self = (s_frontend_t *) cls;
    zg_call_t *call = (zg_call_t *) *con_cls;
    if (!call) {
        call = zg_calls_acquire (self->calls);
        *con_cls = call;
        call->owner = self;
        call->connection = connection;
        call->started_us = zclock_usecs ();
        call->method = zg_http_method (method);
        size_t path_length = url ? strnlen (url, sizeof (call->path) - 1) : 0;
        memcpy (call->path, url ? url : "", path_length);
        call->path [path_length] = 0;
        call->fd = s_connection_fd (connection);
        s_socket_t *socket = s_socket (self, call->fd);
        if (socket)
            socket->call = call;
        //  libmicrohttpd 0.9.75 takes a response queued in this first call
        //  as an early answer to a request whose body is still unread, and
        //  closes the connection after it. A GET or HEAD is answered on the
        //  next call, which follows at once, so that probes and clients
        //  polling /models keep their connection. Requests with a body are
        //  still refused here, before their body is read.
        if (call->method == ZG_HTTP_GET || call->method == ZG_HTTP_HEAD) {
            call->headers_pending = true;
            return MHD_YES;
        }
        return s_on_headers (self, call, url);
    }
    if (call->key_wait) {
        //  Back from a key lookup (or the client left meanwhile)
        zg_key_wait_t phase = (zg_key_wait_t) call->key_wait;
        call->key_wait = ZG_KEY_WAIT_NONE;
        s_key_wait_unlink (self, call);
        if (call->client_gone)
            return MHD_NO;
        if (phase == ZG_KEY_WAIT_BODY)
            return s_on_body_complete (self, call);
        enum MHD_Result result = s_on_headers (self, call, url);
        if (result != MHD_YES || call->state == ZG_CALL_UPLOADING)
            return result;
        return s_discard (self, call, upload_data_size);
    }
    if (call->headers_pending) {
        call->headers_pending = false;
        enum MHD_Result result = s_on_headers (self, call, url);
        if (result != MHD_YES)
            return result;
        if (call->state != ZG_CALL_UPLOADING)
            return s_discard (self, call, upload_data_size);
        //  An LLM route reached with GET: this call may carry its body
    }
    switch (call->state) {
        case ZG_CALL_UPLOADING:
            if (*upload_data_size) {
                bool was_too_large = call->body_too_large;
                s_on_upload (self, call, upload_data, *upload_data_size);
                if (was_too_large)
                    return s_discard (self, call, upload_data_size);
                *upload_data_size = 0;
                //  Answer as soon as the limit is crossed. libmicrohttpd
                //  0.9.75 sends no answer before the body is read, so the
                //  rest is read and dropped and the 413 goes out at the end
                if (call->body_too_large)
                    s_too_large (self, call);
                return MHD_YES;
            }
            return s_on_body_complete (self, call);
        case ZG_CALL_WAITING:
        case ZG_CALL_ADMIN:
            //  Resumed with no answer queued: the client hung up
            return MHD_NO;
        default:
            //  Answered early (401, 413...): whatever body follows is dropped
            return s_discard (self, call, upload_data_size);
    }
}

static void
s_access_log (zg_call_t *call)
{
    if (!zg_log_enabled (ZG_LOG_INFO) || call->status == 0)
        return;
    char address [INET6_ADDRSTRLEN] = "-";
    int port = 0;
    const union MHD_ConnectionInfo *info =
        MHD_get_connection_info (call->connection, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
    if (info && info->client_addr) {
        const struct sockaddr *peer = info->client_addr;
        if (peer->sa_family == AF_INET) {
            const struct sockaddr_in *in4 = (const struct sockaddr_in *) peer;
            inet_ntop (AF_INET, &in4->sin_addr, address, sizeof (address));
            port = ntohs (in4->sin_port);
        }
        else
        if (peer->sa_family == AF_INET6) {
            const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *) peer;
            inet_ntop (AF_INET6, &in6->sin6_addr, address, sizeof (address));
            port = ntohs (in6->sin6_port);
        }
    }
    zg_log_access (address, port, zg_http_method_name ((zg_http_method_t) call->method),
                   call->path, call->status);
}

static void
s_on_completed (void *cls, struct MHD_Connection *connection, void **con_cls,
                enum MHD_RequestTerminationCode code)
{
    s_frontend_t *self = (s_frontend_t *) cls;
    zg_call_t *call = (zg_call_t *) *con_cls;
    if (!call)
        return;
    *con_cls = NULL;
    if (code != MHD_REQUEST_TERMINATED_COMPLETED_OK && call->routed)
        zg_debug ("call %s: client went away (%d)", call->call_id, (int) code);
    s_cancel (self, call);
    s_access_log (call);
    if (call->deadline_ms)          //  it was sent to the router
        self->llm_active--;
    s_key_finish (self, call);
    s_key_wait_unlink (self, call);
    if (call->admin_handle) {
        char key [24];
        s_admin_handle_key (call->admin_handle, key, sizeof (key));
        zhashx_delete (self->admin_calls, key);
        call->admin_handle = 0;
    }
    if (call->check) {
        //  GET /health whose client left: the probes end on their own
        ((s_check_t *) call->check)->client = NULL;
        call->check = NULL;
    }
    if (call->route && self->board) {
        int group = zg_scoreboard_group (self->board, call->model);
        int64_t total_us = zclock_usecs () - call->started_us;
        zg_scoreboard_count_request (self->board, self->slot, group,
                                     call->status ? call->status : 499);
        //  Latencies of successful calls, as the reference's success
        //  callback records them
        if (call->status >= 200 && call->status < 400)
            zg_scoreboard_observe (self->board, self->slot, group, ZG_SB_LATENCY_TOTAL,
                                   (uint64_t) (total_us > 0 ? total_us : 0));
        if (call->overhead_us >= 0 && call->status >= 200 && call->status < 400)
            zg_scoreboard_observe (self->board, self->slot, group, ZG_SB_LATENCY_OVERHEAD,
                                   (uint64_t) call->overhead_us);
    }
    s_socket_t *socket = s_socket (self, call->fd);
    if (socket && socket->call == call)
        socket->call = NULL;
    zg_calls_release (self->calls, call);
}

static void
s_on_connection (void *cls, struct MHD_Connection *connection, void **socket_context,
                 enum MHD_ConnectionNotificationCode code)
{
    s_frontend_t *self = (s_frontend_t *) cls;
    s_socket_t *socket = s_socket (self, s_connection_fd (connection));
    if (socket)
        explicit_bzero (socket, sizeof (*socket));      //  and the key it remembered
}

static void
s_mhd_log (void *cls, const char *format, va_list args)
{
    if (!zg_log_enabled (ZG_LOG_DEBUG))
        return;
    char line [512];
    vsnprintf (line, sizeof (line), format, args);
    size_t length = strlen (line);
    while (length && line [length - 1] == '\n')
        line [--length] = 0;
    zg_debug ("libmicrohttpd: %s", line);
}


//  --------------------------------------------------------------------------
//  Start, loop, stop

static struct MHD_Response *
s_static_response (char *body, const char *content_type)
{
    assert (body);
    struct MHD_Response *response = MHD_create_response_from_buffer (
        strlen (body), body, MHD_RESPMEM_MUST_COPY);
    free (body);
    assert (response);
    MHD_add_response_header (response, MHD_HTTP_HEADER_CONTENT_TYPE, content_type);
    return response;
}

static const char *
s_level_name (int level)
{
    if (level <= ZG_LOG_DEBUG)   return "DEBUG";
    if (level <= ZG_LOG_INFO)    return "INFO";
    if (level <= ZG_LOG_WARNING) return "WARNING";
    return "ERROR";
}

static unsigned int
s_connection_limit (void)
{
    //  Each connection is a descriptor: take all the process may have
    struct rlimit limit;
    if (getrlimit (RLIMIT_NOFILE, &limit) != 0)
        return 1000;
    if (limit.rlim_cur < limit.rlim_max) {
        limit.rlim_cur = limit.rlim_max;
        setrlimit (RLIMIT_NOFILE, &limit);
        getrlimit (RLIMIT_NOFILE, &limit);
    }
    rlim_t usable = limit.rlim_cur > 1000000 ? 1000000 : limit.rlim_cur;
    return usable > 128 ? (unsigned int) (usable - 64) : 64;
}

static void
s_destroy (s_frontend_t *self)
{
    if (self->daemon) {
        //  Probes of GET /health end first: that answers their clients
        zg_call_t *probe = zg_calls_first (self->calls);
        while (probe) {
            zg_call_t *next = probe->next;
            if (!probe->connection) {
                s_cancel (self, probe);
                s_probe_done (self, probe, "the gateway is stopping");
            }
            probe = next;
        }
        //  MHD must not be stopped with connections suspended: resume them
        //  all (their handlers close them) and let MHD see that
        zg_call_t *call = zg_calls_first (self->calls);
        while (call) {
            zg_call_t *next = call->next;
            s_cancel (self, call);
            call->client_gone = true;
            s_resume (self, call);
            call = next;
        }
        while (self->key_waiters) {
            call = self->key_waiters;
            s_key_wait_unlink (self, call);
            call->client_gone = true;
            s_resume (self, call);
        }
        if (self->admin_calls)
            for (call = (zg_call_t *) zhashx_first (self->admin_calls); call;
                 call = (zg_call_t *) zhashx_next (self->admin_calls)) {
                call->client_gone = true;
                s_resume (self, call);
            }
        MHD_run (self->daemon);
        MHD_run (self->daemon);
        MHD_stop_daemon (self->daemon);
        self->daemon = NULL;
    }
    struct MHD_Response **responses [] = {
        &self->models_response, &self->model_info_response, &self->liveness_response,
        &self->ready_response, &self->unready_response, &self->root_response
    };
    for (size_t index = 0; index < sizeof (responses) / sizeof (responses [0]); index++)
        if (*responses [index]) {
            MHD_destroy_response (*responses [index]);
            *responses [index] = NULL;
        }
    zg_msg_reset (&self->in, 0);
    zg_msg_reset (&self->out, 0);
    zsock_destroy (&self->router);
    zsock_destroy (&self->events);
    zg_keystore_destroy (&self->keystore);
    zg_redis_probe_destroy (&self->redis_probe);
    zg_redis_sync_destroy (&self->redis_sync);
    if (self->keys && zg_keys_double_finishes (self->keys))
        zg_error ("frontend: %zu calls were finished twice in the key table",
                  zg_keys_double_finishes (self->keys));
    zg_keys_destroy (&self->keys);
    zhashx_destroy (&self->admin_calls);
    zg_calls_destroy (&self->calls);
    zg_auth_destroy (&self->auth);
    zhashx_destroy (&self->deployments);
    zg_scoreboard_set_flags (self->board, self->slot, ZG_SB_DRAINING, ZG_SB_ACCEPTING);
    if (self->watch_fd >= 0)
        close (self->watch_fd);
    if (self->signal_fd >= 0)
        close (self->signal_fd);
    if (self->sockets)
        explicit_bzero (self->sockets, self->socket_count * sizeof (s_socket_t));
    free (self->sockets);
}

int
zg_frontend_run (const zg_config_t *config, const char *router_endpoint,
                 const char *events_endpoint, int listen_fd)
{
    assert (config);
    assert (router_endpoint);
    assert (events_endpoint);
    s_frontend_t frontend;
    s_frontend_t *self = &frontend;
    memset (self, 0, sizeof (*self));
    self->config = config;
    self->watch_fd = -1;
    self->signal_fd = -1;
    self->mhd_epoll_fd = -1;
    zg_msg_init (&self->in, 0);
    zg_msg_init (&self->out, 0);

    //  SIGTERM/SIGINT arrive through a descriptor in the poll set, so the
    //  loop decides when to stop; CZMQ's own handler is not wanted here
    signal (SIGPIPE, SIG_IGN);
    zsys_handler_set (NULL);
    sigset_t mask;
    sigemptyset (&mask);
    sigaddset (&mask, SIGTERM);
    sigaddset (&mask, SIGINT);
    sigprocmask (SIG_BLOCK, &mask, NULL);
    self->signal_fd = signalfd (-1, &mask, SFD_CLOEXEC | SFD_NONBLOCK);
    self->watch_fd = epoll_create1 (EPOLL_CLOEXEC);
    if (self->signal_fd < 0 || self->watch_fd < 0) {
        zg_error ("frontend: cannot create descriptors: %s", strerror (errno));
        s_destroy (self);
        return 1;
    }

    self->heartbeat_ms = config->heartbeat_ms > 0 ? config->heartbeat_ms : 1000;
    double max_body = config->max_request_size_mb > 0 ? config->max_request_size_mb : 32;
    self->max_body = (size_t) (max_body * 1024 * 1024);
    double timeout_ms = (config->request_timeout_s > 0 ? config->request_timeout_s : 6000) * 1000;
    self->timeout_ms = timeout_ms >= (double) UINT32_MAX ? UINT32_MAX : (uint32_t) timeout_ms;
    self->deadline_ms = (int64_t) self->timeout_ms
                      + (config->queue_timeout_ms > 0 ? config->queue_timeout_ms : 0)
                      + ZG_DEADLINE_SLACK_MS;
    snprintf (self->name, sizeof (self->name), "frontend-%d", (int) getpid ());

    self->calls = zg_calls_new (0);
    self->auth = zg_auth_new (config->master_key);
    self->board = zg_scoreboard_process ();
    self->slot = zg_scoreboard_env_slot ("ZGATE_SLOT");
    zg_scoreboard_claim (self->board, self->slot, self->name);
    self->deployments = zhashx_new ();
    assert (self->deployments);
    for (size_t index = 0; index < config->deployment_count; index++)
        if (config->deployments [index].id)
            zhashx_insert (self->deployments, config->deployments [index].id,
                           &config->deployments [index]);
    self->models_response = s_static_response (
        zg_reply_models_json (config->deployments, config->deployment_count, NULL, 0),
        "application/json");
    self->model_info_response = s_static_response (zg_reply_model_info_json (config),
                                                   "application/json");
    self->liveness_response = s_static_response (strdup ("\"I'm alive!\""), "application/json");
    int level = zg_log_level ();
    self->ready_response = s_static_response (
        zg_reply_readiness_json (true, NULL, config->redis_host ? "redis" : NULL, NULL,
                                 s_level_name (level), level <= ZG_LOG_DEBUG),
        "application/json");
    self->unready_response = s_static_response (
        zg_reply_readiness_json (false, NULL, config->redis_host ? "redis" : NULL,
                                 "router not reachable", s_level_name (level),
                                 level <= ZG_LOG_DEBUG),
        "application/json");
    self->root_response = s_static_response (zg_reply_root_json (), "application/json");
    //  Off the request path: a thread of its own reports into the slot
    self->redis_probe = zg_redis_probe_new (config, self->board, self->slot);

    //  Virtual keys need the database; without one only the master key works
    if (config->database_url && *config->database_url) {
        self->keys = zg_keys_new (0, 0);
        self->admin_calls = zhashx_new ();
        self->keystore = self->keys && self->admin_calls ? zg_keystore_new (config) : NULL;
        if (!self->keystore) {
            zg_error ("frontend: cannot start the keystore");
            s_destroy (self);
            return 1;
        }
        zg_keys_set_allow_on_db_unavailable (self->keys, config->allow_requests_on_db_unavailable);
        self->db_connected = true;      //  until the keystore says otherwise
        //  With Redis, the keys' rate limits count every instance's
        //  requests; the thread that syncs them is off the request path
        self->redis_sync = zg_redis_sync_new (config);
        if (self->redis_sync) {
            zg_keys_set_shared (self->keys, true);
            self->sync_ms = config->redis_sync_interval_ms > 0 ? config->redis_sync_interval_ms
                                                               : 1000;
        }
    }

    self->router = zsock_new (ZMQ_DEALER);
    if (!self->router) {
        zg_error ("frontend: cannot create the router socket");
        s_destroy (self);
        return 1;
    }
    //  Never block the event loop: a send to a full pipe fails at once (the
    //  client gets a 503) and a receive with nothing waiting returns
    zsock_set_sndtimeo (self->router, 0);
    zsock_set_rcvtimeo (self->router, 0);
    zsock_set_sndhwm (self->router, 100000);
    zsock_set_rcvhwm (self->router, 100000);
    zsock_set_linger (self->router, 0);
    if (zsock_connect (self->router, "%s", router_endpoint) != 0) {
        zg_error ("frontend: cannot connect to the router at %s", router_endpoint);
        s_destroy (self);
        return 1;
    }

    //  PUB never blocks a send: at the high-water mark it drops. A bind
    //  that fails is an error, as a busy port is: events are not silently
    //  switched off
    self->events = zsock_new (ZMQ_PUB);
    if (!self->events) {
        zg_error ("frontend: cannot create the events socket");
        s_destroy (self);
        return 1;
    }
    zsock_set_sndhwm (self->events, ZG_EVENTS_HWM);
    zsock_set_sndtimeo (self->events, 0);
    zsock_set_linger (self->events, 0);
    if (zsock_bind (self->events, "%s", events_endpoint) < 0) {
        zg_error ("frontend: cannot bind the events endpoint %s: %s", events_endpoint,
                  zmq_strerror (zmq_errno ()));
        s_destroy (self);
        return 1;
    }

    int flags = fcntl (listen_fd, F_GETFL);
    if (flags < 0 || fcntl (listen_fd, F_SETFL, flags | O_NONBLOCK) != 0) {
        zg_error ("frontend: listening socket %d is not usable: %s", listen_fd, strerror (errno));
        s_destroy (self);
        return 1;
    }
    self->daemon = MHD_start_daemon (
        MHD_USE_EPOLL | MHD_ALLOW_SUSPEND_RESUME | MHD_USE_TURBO | MHD_USE_ERROR_LOG,
        0, NULL, NULL, s_on_request, self,
        MHD_OPTION_EXTERNAL_LOGGER, s_mhd_log, self,
        MHD_OPTION_LISTEN_SOCKET, (MHD_socket) listen_fd,
        MHD_OPTION_NOTIFY_COMPLETED, s_on_completed, self,
        MHD_OPTION_NOTIFY_CONNECTION, s_on_connection, self,
        MHD_OPTION_CONNECTION_LIMIT, s_connection_limit (),
        MHD_OPTION_CONNECTION_TIMEOUT, (unsigned int) ZG_IDLE_TIMEOUT_S,
        MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t) ZG_CONNECTION_POOL,
        MHD_OPTION_END);
    if (!self->daemon) {
        zg_error ("frontend: cannot start the HTTP server on descriptor %d", listen_fd);
        s_destroy (self);
        return 1;
    }
    const union MHD_DaemonInfo *info = MHD_get_daemon_info (self->daemon, MHD_DAEMON_INFO_EPOLL_FD);
    if (!info || info->epoll_fd < 0) {
        zg_error ("frontend: libmicrohttpd has no epoll descriptor");
        s_destroy (self);
        return 1;
    }
    self->mhd_epoll_fd = info->epoll_fd;
    zg_scoreboard_set_flags (self->board, self->slot, ZG_SB_ACCEPTING, 0);

    int64_t now = zclock_mono ();
    //  A grace period: requests are accepted (and queue in the socket)
    //  while the router comes up; readiness waits for its first answer
    self->router_seen = now;
    self->router_alive = true;
    self->next_heartbeat = now;
    self->next_sweep = now + ZG_SWEEP_MS;
    self->next_sync = now + self->sync_ms;
    zg_info ("frontend %s serving HTTP, router at %s, events at %s", self->name,
             router_endpoint, events_endpoint);

    void *router_handle = zsock_resolve (self->router);
    void *keystore_handle = self->keystore ? zsock_resolve (zg_keystore_socket (self->keystore))
                                           : NULL;
    void *sync_handle = self->redis_sync ? zsock_resolve (zg_redis_sync_socket (self->redis_sync))
                                         : NULL;
    while (!self->terminated) {
        now = zclock_mono ();
        zg_scoreboard_beat (self->board, self->slot);
        zg_scoreboard_gauge (self->board, self->slot, ZG_SB_IN_FLIGHT, (int64_t) self->llm_active);
        s_on_timers (self, now);
        if (self->draining && self->llm_active == 0)
            break;

        int64_t wait = self->next_heartbeat < self->next_sweep ? self->next_heartbeat
                                                                : self->next_sweep;
        wait -= now;
        if (self->redis_sync && self->next_sync - now < wait)
            wait = self->next_sync - now;
        if (wait < 0)
            wait = 0;
        MHD_UNSIGNED_LONG_LONG mhd_wait;
        if (MHD_get_timeout (self->daemon, &mhd_wait) == MHD_YES && (int64_t) mhd_wait < wait)
            wait = (int64_t) mhd_wait;

        zmq_pollitem_t items [] = {
            { router_handle, 0, ZMQ_POLLIN, 0 },
            { NULL, self->mhd_epoll_fd, ZMQ_POLLIN, 0 },
            { NULL, self->watch_fd, ZMQ_POLLIN, 0 },
            { NULL, self->signal_fd, ZMQ_POLLIN, 0 },
            { keystore_handle, 0, ZMQ_POLLIN, 0 },
            { sync_handle, 0, ZMQ_POLLIN, 0 }
        };
        //  The optional sockets last, those absent left out
        int count = 4;
        if (keystore_handle)
            count++;
        if (sync_handle)
            items [count++] = items [5];
        int rc = zmq_poll (items, count, (long) wait);
        if (rc < 0 && zmq_errno () != EINTR) {
            zg_error ("frontend: poll failed: %s", zmq_strerror (zmq_errno ()));
            break;
        }
        if (rc > 0 && (items [3].revents & ZMQ_POLLIN)) {
            struct signalfd_siginfo signal_info;
            while (read (self->signal_fd, &signal_info, sizeof (signal_info))
                   == (ssize_t) sizeof (signal_info)) {
                if (self->draining) {
                    zg_info ("frontend: second stop signal; stopping now");
                    self->terminated = true;
                }
                else {
                    zg_info ("frontend: stopping; finishing %zu requests", self->llm_active);
                    self->draining = true;
                    zg_scoreboard_set_flags (self->board, self->slot, ZG_SB_DRAINING,
                                             ZG_SB_ACCEPTING);
                    //  Quiescing only stops this process from accepting; the
                    //  kernel would still queue new connections on a socket
                    //  the supervisor also holds. Shut down, the socket
                    //  refuses them at once, for every process that holds it.
                    MHD_socket listening = MHD_quiesce_daemon (self->daemon);
                    if (listening != MHD_INVALID_SOCKET)
                        shutdown (listening, SHUT_RDWR);
                }
            }
        }
        if (rc > 0 && (items [2].revents & ZMQ_POLLIN))
            s_on_watch (self);
        if (rc > 0 && (items [0].revents & ZMQ_POLLIN))
            for (int count = 0; count < ZG_ROUTER_BATCH; count++)
                if (s_on_router_message (self) == -1)
                    break;
        if (rc > 0 && keystore_handle && (items [4].revents & ZMQ_POLLIN))
            s_on_keystore (self);
        if (rc > 0 && sync_handle && (items [count - 1].revents & ZMQ_POLLIN))
            zg_redis_sync_finish (self->redis_sync, self->keys);
        MHD_run (self->daemon);
    }
    zg_info ("frontend %s stopped", self->name);
    s_destroy (self);
    return 0;
}
