/*  =========================================================================
    zg_worker - an upstream worker: DISPATCH in, upstream HTTP(S) out

    One process holds config->worker_capacity transfers at once, each in a
    preallocated slot with its own libcurl easy handle and buffers that
    are reused from call to call. All transfers share one libcurl multi
    handle, so connections to an upstream stay open and are reused
    (HTTP/1.1 keep-alive, or HTTP/2 multiplexing where TLS offers it).

    Event loop: libcurl's socket interface (curl_multi_socket_action)
    under an epoll set that also holds the DEALER socket's ZMQ_FD. We do
    not use curl_multi_poll/curl_multi_perform, because perform walks every
    transfer on every wake-up (a poll() per connection in libcurl 7.88),
    which costs O(transfers) per SSE chunk with hundreds of streams; with
    socket_action each wake-up touches only the connections that are ready.
    ZMQ_FD only tells that the socket's state may have changed, so the
    loop reads while ZMQ_EVENTS reports POLLIN, and checks ZMQ_EVENTS again
    before every sleep, since sends made by libcurl callbacks can consume
    the signal of an incoming message.

    Everything that depends on the upstream's API (URL, headers, body
    rewriting, usage, error mapping) is behind zg_provider.

    Conversation per DISPATCH (towards the router):
        JSON reply, or any non-stream / non-2xx / non event-stream reply:
            HEAD (FINAL: the whole body, usage, timings), nothing after it
        2xx text/event-stream reply to a stream request:
            HEAD  CHUNK*  END
        failure before any answer:  ERROR
        failure after HEAD of a stream:  ERROR with ZG_FLAG_STARTED
        after CANCEL:  nothing

    Recycling. After max_requests DISPATCHes the worker writes "retire" on
    its status descriptor (ZGATE_STATUS_FD, a pipe from the supervisor) and
    serves on; the supervisor starts a replacement, waits for its "ready"
    (written once the router has answered our READY), then sends SIGUSR1.
    On SIGUSR1 (from the supervisor, or an operator) the worker sends
    RETIRE; the router answers RETIRE and sends no DISPATCH after it, so
    once the answer is in and every slot is free the worker exits 0. A
    retiring worker that loses its router has nothing left to deliver to
    anyone, and exits too.
    =========================================================================
*/
#include "workers/zg_worker.h"
#include "workers/zg_provider.h"
#include "workers/zg_buffer.h"
#include "workers/zg_sse.h"
#include "workers/zg_prices.h"
#include "proto/zg_msg.h"
#include "common/zg_log.h"
#include "common/zg_scoreboard.h"

#include <czmq.h>
#include <curl/curl.h>
#include <errno.h>
#include <malloc.h>
#include <signal.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/signalfd.h>
#include <time.h>
#include <unistd.h>

//  A reply body or a single SSE event larger than this is refused (502)
#define BODY_MAX            (64u * 1024 * 1024)
//  Buffers that grew beyond this for one call are freed when it ends
#define BUFFER_KEEP         (256u * 1024)
//  The router is presumed dead after this many silent heartbeat intervals
#define LIVENESS            3
//  Messages handled per loop turn before libcurl gets its turn again
#define DRAIN_BATCH         256
#define EPOLL_BATCH         256

typedef struct _worker_t worker_t;

typedef enum {
    RETIRE_NONE,                            //  serving
    RETIRE_SENT,                            //  RETIRE sent, no answer yet: still takes DISPATCH
    RETIRE_ANSWERED,                        //  no DISPATCH will come: exit once empty
    RETIRE_DONE                             //  nothing left to finish: exit now
} retire_state_t;

typedef struct {
    worker_t *worker;
    CURL     *easy;                         //  reused for every call (curl_easy_reset)
    bool      busy;

    //  The call
    char      call_id [ZG_CALL_ID_MAX + 1];
    uint32_t  flags;
    int       board_group;                  //  the model group's index in the scoreboard
    zg_deployment_wire_t deployment;
    char      api_base [ZG_URL_MAX + 1];    //  without query string, for messages
    const zg_provider_t *provider;
    zframe_t *request;                      //  holds the DISPATCH payload, sent as is when
    const uint8_t *request_data;            //  unchanged: request_size bytes at
    size_t    request_size;                 //  request_data
    zg_buffer_t request_body;               //  the rewritten body, when changed
    char      url [ZG_URL_MAX + 64];
    uint32_t  timeout_ms;
    //  The URL parsed once while calls go to the same one: libcurl parses a
    //  CURLOPT_URL string again for every transfer, a CURLU handle it copies
    CURLU    *parsed_url;
    char      parsed_text [ZG_URL_MAX + 64];

    //  Request headers, kept while calls go to the same deployment and key
    struct curl_slist *header_list;
    const zg_provider_t *header_provider;
    char      header_deployment [ZG_NAME_MAX + 1];
    char      header_key [ZG_SECRET_MAX + 1];

    //  The reply
    zg_buffer_t headers;                    //  "name: value\r\n" lines to pass on
    char      content_type [ZG_NAME_MAX + 1];
    zg_buffer_t body;                       //  whole body, or SSE bytes not yet a whole event
    zg_sse_scanner_t sse;                   //  where the current event's end was looked for
    bool      body_started;
    bool      streaming;                    //  HEAD went out without FINAL
    bool      strip_usage_chunk;
    zg_usage_t usage;
    int64_t   start_us;
    int64_t   first_byte_us;
    int64_t   first_byte_deadline_us;       //  streams: 0 = none
    zg_provider_error_t local_error;        //  set when the worker itself stops the transfer
    bool      silent;                       //  the router cannot be told: end without messages
    char      curl_error [CURL_ERROR_SIZE];
} slot_t;

struct _worker_t {
    const zg_config_t *config;
    const char *endpoint;
    char      name [ZG_NAME_MAX + 1];
    uint32_t  pid;
    unsigned  generation;                   //  sockets made so far: part of the identity

    zsock_t  *dealer;
    int       zmq_fd;
    int       epoll_fd;
    CURLM    *multi;
    int64_t   curl_deadline_us;             //  libcurl's timer; -1 = none
    uint32_t *watched;                      //  by fd: epoll events registered, 0 = none
    bool     *parked;                       //  by fd: libcurl let it go, still registered
    size_t    watched_size;
    bool      zmq_unsettled;                //  sent since the last receive found nothing
    bool      proxy_from_environment;       //  a proxy variable is set: libcurl reads it

    slot_t   *slots;
    size_t    capacity;
    size_t   *free_slots;                   //  stack of free slot indexes
    size_t    free_count;
    zhashx_t *by_call_id;                   //  call_id -> slot_t *, keys owned by the slots
    size_t    awaiting_first_byte;          //  streams with a first-byte deadline running

    uint32_t  credit_pending;               //  slots freed and not yet returned by CREDIT
    uint32_t  credit_batch;                 //  returned at once when this many are pending
    int64_t   heartbeat_us;
    int64_t   next_heartbeat_us;
    int64_t   last_heard_us;

    //  Recycling
    uint64_t  max_requests;                 //  0 = never
    uint64_t  requests;                     //  DISPATCHes taken
    int       status_fd;                    //  to the supervisor; -1 = none
    int       signal_fd;                    //  SIGUSR1: retire
    bool      awaiting_registration;        //  READY sent, the router has not answered
    retire_state_t retire;

    zg_msg_t  in;
    zg_msg_t  out;

    zg_scoreboard_t *board;                 //  heartbeat and metrics; may be NULL
    int       board_slot;
};

static int64_t
s_now_us (void)
{
    struct timespec now;
    clock_gettime (CLOCK_MONOTONIC, &now);
    return (int64_t) now.tv_sec * 1000000 + now.tv_nsec / 1000;
}

//  ---------------------------------------------------------------------
//  Messages to the router

static int
s_send (worker_t *self)
{
    //  A send may process the socket's pending commands and consume the
    //  signal of an incoming message: its state must be asked again
    self->zmq_unsettled = true;
    if (zg_msg_send (&self->out, zsock_resolve (self->dealer))) {
        zg_warning ("worker %s: cannot send %s to the router: %s", self->name,
                    zg_msg_type_name (self->out.type), zmq_strerror (zmq_errno ()));
        return -1;
    }
    return 0;
}

static void
s_send_ready (worker_t *self)
{
    zg_msg_reset (&self->out, ZG_MSG_READY);
    ZG_MSG_SET (self->out.name, self->name);
    self->out.pid = self->pid;
    self->out.capacity = (uint32_t) self->free_count;
    //  READY states the free slots afresh: credit not yet sent is in it
    self->credit_pending = 0;
    self->awaiting_registration = true;
    s_send (self);
}

//  One line to the supervisor ("ready", "retire"). The pipe holds far
//  more than the few lines a worker writes, so a write never blocks.
static void
s_status (worker_t *self, const char *line)
{
    if (self->status_fd < 0)
        return;
    char text [64];
    int size = snprintf (text, sizeof (text), "%s\n", line);
    if (write (self->status_fd, text, (size_t) size) != size)
        zg_warning ("worker %s: cannot tell the supervisor \"%s\": %s", self->name, line,
                    strerror (errno));
}

static void
s_send_retire (worker_t *self)
{
    zg_msg_reset (&self->out, ZG_MSG_RETIRE);
    ZG_MSG_SET (self->out.name, self->name);
    self->out.pid = self->pid;
    s_send (self);
}

static void
s_send_heartbeat (worker_t *self)
{
    zg_msg_reset (&self->out, ZG_MSG_HEARTBEAT);
    ZG_MSG_SET (self->out.name, self->name);
    self->out.pid = self->pid;
    s_send (self);
}

static void
s_flush_credit (worker_t *self)
{
    if (self->credit_pending == 0)
        return;
    zg_msg_reset (&self->out, ZG_MSG_CREDIT);
    self->out.credit = self->credit_pending;
    if (s_send (self) == 0)
        self->credit_pending = 0;
}

//  An ERROR for a call that has no slot (or whose slot is being given up)
static int
s_send_error (worker_t *self, const char *call_id, const zg_deployment_wire_t *deployment,
              const char *api_base, const zg_provider_error_t *error, bool started)
{
    zg_msg_reset (&self->out, ZG_MSG_ERROR);
    ZG_MSG_SET (self->out.call_id, call_id);
    self->out.status = error->status;
    self->out.flags = started ? ZG_FLAG_STARTED : 0;
    ZG_MSG_SET (self->out.err_type, error->err_type);
    ZG_MSG_SET (self->out.message, error->message);
    //  An upstream's error text could quote a credential back at us
    zg_log_redact (self->out.message);
    if (deployment)
        ZG_MSG_SET (self->out.deployment_id, deployment->id);
    if (api_base)
        ZG_MSG_SET (self->out.api_base, api_base);
    zg_warning ("worker %s: call %s (deployment %s): %u %s", self->name, call_id,
                deployment ? deployment->id : "-", error->status, self->out.message);
    return s_send (self);
}

static uint16_t
s_slot_status (slot_t *slot)
{
    long status = 0;
    curl_easy_getinfo (slot->easy, CURLINFO_RESPONSE_CODE, &status);
    return status > 0 && status < 1000 ? (uint16_t) status : 502;
}

static void s_set_usage (worker_t *self, slot_t *slot);

static int
s_send_head (worker_t *self, slot_t *slot, bool final)
{
    zg_msg_reset (&self->out, ZG_MSG_HEAD);
    ZG_MSG_SET (self->out.call_id, slot->call_id);
    self->out.status = slot->provider->map_status (s_slot_status (slot));
    self->out.flags = final ? ZG_FLAG_FINAL : 0;
    ZG_MSG_SET (self->out.content_type, slot->content_type);
    if (slot->headers.size > 0 && zg_buffer_append (&slot->headers, "", 1) == 0) {
        zg_msg_set_headers (&self->out, slot->headers.data);
        slot->headers.size--;
    }
    ZG_MSG_SET (self->out.deployment_id, slot->deployment.id);
    ZG_MSG_SET (self->out.api_base, slot->api_base);
    //  The frontend's x-litellm-overhead-duration-ms is its time minus this
    self->out.duration_us = (uint64_t) (s_now_us () - slot->start_us);
    if (final) {
        //  A whole answer is the call's only message: it says what END
        //  would have said
        s_set_usage (self, slot);
        //  Sent at once: the body stays as it is until then
        zg_msg_payload_borrow (&self->out, slot->body.data, slot->body.size);
    }
    return s_send (self);
}

static int
s_send_chunk (worker_t *self, slot_t *slot, const char *data, size_t size)
{
    zg_msg_reset (&self->out, ZG_MSG_CHUNK);
    ZG_MSG_SET (self->out.call_id, slot->call_id);
    zg_msg_payload_borrow (&self->out, data, size);
    return s_send (self);
}

//  The deployment's own prices win, each on its own; a price it does not
//  set comes from the built-in table of the upstream model, else is zero
static double
s_call_cost (const zg_deployment_wire_t *deployment, const zg_usage_t *usage)
{
    double input = deployment->input_cost_per_token;
    double output = deployment->output_cost_per_token;
    if (input < 0 || output < 0) {
        const zg_price_t *price = zg_prices_lookup (deployment->upstream_model);
        if (input < 0)
            input = price? price->input_cost_per_token: 0;
        if (output < 0)
            output = price? price->output_cost_per_token: 0;
    }
    return usage->prompt_tokens * input + usage->completion_tokens * output;
}

//  Usage, cost and timings of the call, into the END or final HEAD
//  (whose status is set), counted on the scoreboard: once per call
static void
s_set_usage (worker_t *self, slot_t *slot)
{
    self->out.prompt_tokens = slot->usage.prompt_tokens;
    self->out.completion_tokens = slot->usage.completion_tokens;
    self->out.total_tokens = slot->usage.total_tokens;
    self->out.cost = s_call_cost (&slot->deployment, &slot->usage);
    if (slot->usage.clamped)
        zg_warning ("worker %s: call %s (deployment %s): the upstream's usage has a token count"
                    " below 0 or above %d (what the spend logs hold): recorded as %u prompt,"
                    " %u completion, %u total tokens", self->name, slot->call_id,
                    slot->deployment.id, ZG_USAGE_TOKENS_MAX, slot->usage.prompt_tokens,
                    slot->usage.completion_tokens, slot->usage.total_tokens);
    int64_t end_us = s_now_us ();
    if (slot->body_started)
        self->out.ttfb_us = (uint64_t) (slot->first_byte_us - slot->start_us);
    else {
        curl_off_t start_transfer = 0;
        curl_easy_getinfo (slot->easy, CURLINFO_STARTTRANSFER_TIME_T, &start_transfer);
        self->out.ttfb_us = start_transfer > 0 ? (uint64_t) start_transfer : 0;
    }
    self->out.duration_us = (uint64_t) (end_us - slot->start_us);
    zg_scoreboard_count_usage (self->board, self->board_slot, slot->board_group,
                               self->out.prompt_tokens, self->out.completion_tokens,
                               self->out.total_tokens, self->out.cost);
    //  Latencies of successful calls, as the reference records them
    bool succeeded = self->out.status < 400;
    if (succeeded)
        zg_scoreboard_observe (self->board, self->board_slot, slot->board_group,
                               ZG_SB_LATENCY_LLM_API, self->out.duration_us);
    if (succeeded && (slot->flags & ZG_FLAG_STREAM))
        zg_scoreboard_observe (self->board, self->board_slot, slot->board_group,
                               ZG_SB_LATENCY_TTFT, self->out.ttfb_us);
}

static int
s_send_end (worker_t *self, slot_t *slot)
{
    zg_msg_reset (&self->out, ZG_MSG_END);
    ZG_MSG_SET (self->out.call_id, slot->call_id);
    self->out.status = slot->provider->map_status (s_slot_status (slot));
    s_set_usage (self, slot);
    ZG_MSG_SET (self->out.deployment_id, slot->deployment.id);
    return s_send (self);
}

//  ---------------------------------------------------------------------
//  Slots

//  The deployment struct is mostly string space (about 4 KB): copy and
//  clear what the strings use, not the whole struct, on every call
static void
s_deployment_copy (zg_deployment_wire_t *to, const zg_deployment_wire_t *from)
{
    ZG_MSG_SET (to->id, from->id);
    ZG_MSG_SET (to->provider, from->provider);
    ZG_MSG_SET (to->upstream_model, from->upstream_model);
    ZG_MSG_SET (to->api_base, from->api_base);
    ZG_MSG_SET (to->api_key, from->api_key);
    to->timeout_ms = from->timeout_ms;
    to->stream_timeout_ms = from->stream_timeout_ms;
    to->input_cost_per_token = from->input_cost_per_token;
    to->output_cost_per_token = from->output_cost_per_token;
}

static void
s_deployment_clear (zg_deployment_wire_t *deployment)
{
    memset (deployment->api_key, 0, strnlen (deployment->api_key, sizeof (deployment->api_key)));
    deployment->id [0] = 0;
    deployment->provider [0] = 0;
    deployment->upstream_model [0] = 0;
    deployment->api_base [0] = 0;
    deployment->timeout_ms = 0;
    deployment->stream_timeout_ms = 0;
    deployment->input_cost_per_token = 0;
    deployment->output_cost_per_token = 0;
}

static void
s_slot_release (worker_t *self, slot_t *slot, bool credit)
{
    assert (slot->busy);
    curl_multi_remove_handle (self->multi, slot->easy);
    zhashx_delete (self->by_call_id, slot->call_id);
    zframe_destroy (&slot->request);
    if (slot->first_byte_deadline_us)
        self->awaiting_first_byte--;
    zg_buffer_trim (&slot->request_body, BUFFER_KEEP);
    zg_buffer_trim (&slot->headers, BUFFER_KEEP);
    zg_buffer_trim (&slot->body, BUFFER_KEEP);
    //  Credentials do not outlive the call in the copy of the deployment;
    //  the cached header list keeps its own copy for reuse
    s_deployment_clear (&slot->deployment);
    slot->busy = false;
    self->free_slots [self->free_count++] = (size_t) (slot - self->slots);
    if (credit)
        self->credit_pending++;
}

//  Ends a transfer that failed: tells the router, frees the slot
static void
s_slot_fail (worker_t *self, slot_t *slot, const zg_provider_error_t *error)
{
    if (!slot->silent)
        s_send_error (self, slot->call_id, &slot->deployment, slot->api_base,
                      error, slot->streaming);
    s_slot_release (self, slot, true);
}

static void
s_set_local_error (slot_t *slot, uint16_t status, const char *err_type, const char *message)
{
    slot->local_error.status = status;
    ZG_MSG_SET (slot->local_error.err_type, err_type);
    snprintf (slot->local_error.message, sizeof (slot->local_error.message),
              "%s (deployment %s)", message, slot->deployment.id);
}

//  Relays the complete SSE events in slot->body as one CHUNK, leaving a
//  partial event in the buffer. The usage-only event is dropped in place
//  when the client did not ask for it, so the rest goes out without
//  another copy. At the end of the stream (last), the bytes left over are
//  relayed too.
static int
s_relay_events (worker_t *self, slot_t *slot, bool last)
{
    char *data = slot->body.data;
    size_t size = slot->body.size;
    size_t event_start = 0;
    size_t relayed = 0;             //  bytes kept at the front of the buffer
    size_t event_size;
    while ((event_size = zg_sse_event_end (&slot->sse, data + event_start,
                                           size - event_start, last)) > 0) {
        zg_usage_t usage = { .found = false };
        int found = slot->provider->usage_from_event (data + event_start, event_size, &usage);
        if (found & ZG_PROVIDER_EVENT_USAGE)
            slot->usage = usage;
        if (!(slot->strip_usage_chunk && (found & ZG_PROVIDER_EVENT_USAGE_ONLY))) {
            if (relayed != event_start)
                memmove (data + relayed, data + event_start, event_size);
            relayed += event_size;
        }
        event_start += event_size;
    }
    int rc = 0;
    if (relayed > 0)
        rc = s_send_chunk (self, slot, data, relayed);
    zg_buffer_consume (&slot->body, event_start);
    return rc;
}

//  ---------------------------------------------------------------------
//  libcurl callbacks

//  Hop-by-hop and framing headers describe the upstream connection, not
//  the reply: the frontend frames its own. By length first, since every
//  header of every reply is looked at
static bool
s_dropped_header (const char *name, size_t size)
{
    if (size >= 6 && strncasecmp (name, "proxy-", 6) == 0)
        return true;
    switch (size) {
        case 2:  return strncasecmp (name, "te", 2) == 0;
        case 4:  return strncasecmp (name, "date", 4) == 0;
        case 6:  return strncasecmp (name, "server", 6) == 0;
        case 7:  return strncasecmp (name, "upgrade", 7) == 0
                     || strncasecmp (name, "trailer", 7) == 0;
        case 10: return strncasecmp (name, "connection", 10) == 0
                     || strncasecmp (name, "keep-alive", 10) == 0
                     || strncasecmp (name, "set-cookie", 10) == 0;
        case 14: return strncasecmp (name, "content-length", 14) == 0;
        case 16: return strncasecmp (name, "content-encoding", 16) == 0;
        case 17: return strncasecmp (name, "transfer-encoding", 17) == 0;
        default: return false;
    }
}

//  Headers arrive one line at a time, the status line first
static size_t
s_on_header (char *line, size_t size, size_t count, void *userp)
{
    slot_t *slot = (slot_t *) userp;
    size_t length = size * count;
    if (length >= 5 && memcmp (line, "HTTP/", 5) == 0) {
        //  A new response (after a 1xx): forget the interim one's headers
        slot->headers.size = 0;
        slot->content_type [0] = 0;
        return length;
    }
    const char *colon = memchr (line, ':', length);
    if (!colon)
        return length;              //  the blank line that ends the headers
    size_t name_size = (size_t) (colon - line);
    const char *value = colon + 1;
    const char *end = line + length;
    while (value < end && (*value == ' ' || *value == '\t'))
        value++;
    while (end > value && (end [-1] == '\r' || end [-1] == '\n' || end [-1] == ' ' || end [-1] == '\t'))
        end--;
    size_t value_size = (size_t) (end - value);

    if (s_dropped_header (line, name_size))
        return length;
    if (name_size == 12 && strncasecmp (line, "content-type", 12) == 0) {
        size_t copied = value_size < ZG_NAME_MAX ? value_size : ZG_NAME_MAX;
        memcpy (slot->content_type, value, copied);
        slot->content_type [copied] = 0;
    }
    //  Headers beyond the message limit are dropped, not the reply
    if (slot->headers.size + name_size + value_size + 4 < ZG_HEADERS_MAX) {
        zg_buffer_append (&slot->headers, line, name_size);
        zg_buffer_append (&slot->headers, ": ", 2);
        zg_buffer_append (&slot->headers, value, value_size);
        zg_buffer_append (&slot->headers, "\r\n", 2);
    }
    return length;
}

static bool
s_is_event_stream (const char *content_type)
{
    return strncasecmp (content_type, "text/event-stream", 17) == 0;
}

static size_t
s_on_body (char *data, size_t size, size_t count, void *userp)
{
    slot_t *slot = (slot_t *) userp;
    worker_t *self = slot->worker;
    size_t length = size * count;

    if (!slot->body_started) {
        slot->body_started = true;
        slot->first_byte_us = s_now_us ();
        if (slot->first_byte_deadline_us) {
            slot->first_byte_deadline_us = 0;
            self->awaiting_first_byte--;
        }
        uint16_t status = s_slot_status (slot);
        if ((slot->flags & ZG_FLAG_STREAM) && status >= 200 && status < 300
        &&  s_is_event_stream (slot->content_type)) {
            if (s_send_head (self, slot, false)) {
                slot->silent = true;
                return 0;
            }
            slot->streaming = true;
        }
    }
    if (slot->body.size + length > BODY_MAX) {
        s_set_local_error (slot, 502, "api_error", slot->streaming
            ? "litellm.APIError: upstream stream event larger than 64 MiB"
            : "litellm.APIError: upstream reply larger than 64 MiB");
        return 0;
    }
    if (zg_buffer_append (&slot->body, data, length)) {
        s_set_local_error (slot, 500, "internal_server_error",
                           "litellm.InternalServerError: out of memory");
        return 0;
    }
    if (slot->streaming && s_relay_events (self, slot, false)) {
        slot->silent = true;
        return 0;
    }
    return length;
}

//  Makes room in the descriptor tables for fd
static int
s_watched_grow (worker_t *self, int fd)
{
    if ((size_t) fd < self->watched_size)
        return 0;
    size_t size = self->watched_size ? self->watched_size : 256;
    while (size <= (size_t) fd)
        size *= 2;
    uint32_t *watched = (uint32_t *) realloc (self->watched, size * sizeof (uint32_t));
    if (watched)
        self->watched = watched;
    bool *parked = (bool *) realloc (self->parked, size * sizeof (bool));
    if (parked)
        self->parked = parked;
    if (!watched || !parked)
        return -1;
    memset (self->watched + self->watched_size, 0, (size - self->watched_size) * sizeof (uint32_t));
    memset (self->parked + self->watched_size, 0, (size - self->watched_size) * sizeof (bool));
    self->watched_size = size;
    return 0;
}

//  libcurl tells which of its sockets to watch; we keep them in epoll.
//  A keep-alive connection is handed back and taken again for every
//  request, so a socket libcurl lets go stays registered ("parked")
//  rather than being removed and added again (two system calls per
//  request): an event on a parked socket removes it then. The close
//  callback forgets a socket, so that a new one on the same descriptor
//  is registered afresh.
static int
s_on_curl_socket (CURL *easy, curl_socket_t socket, int what, void *userp, void *socketp)
{
    worker_t *self = (worker_t *) userp;
    if (socket < 0 || s_watched_grow (self, socket)) {
        zg_error ("worker %s: cannot watch a connection: out of memory", self->name);
        return -1;
    }
    if (what == CURL_POLL_REMOVE) {
        if (self->watched [socket])
            self->parked [socket] = true;
        return 0;
    }
    uint32_t events = 0;
    if (what & CURL_POLL_IN)
        events |= EPOLLIN;
    if (what & CURL_POLL_OUT)
        events |= EPOLLOUT;
    self->parked [socket] = false;
    if (events == self->watched [socket])
        return 0;
    struct epoll_event event = { .events = events, .data.fd = socket };
    int op = self->watched [socket] ? EPOLL_CTL_MOD : EPOLL_CTL_ADD;
    int rc = epoll_ctl (self->epoll_fd, op, socket, &event);
    if (rc != 0 && errno == ENOENT)
        rc = epoll_ctl (self->epoll_fd, EPOLL_CTL_ADD, socket, &event);
    else
    if (rc != 0 && errno == EEXIST)
        rc = epoll_ctl (self->epoll_fd, EPOLL_CTL_MOD, socket, &event);
    if (rc != 0) {
        self->watched [socket] = 0;
        zg_error ("worker %s: cannot watch a connection: %s", self->name, strerror (errno));
        return -1;
    }
    self->watched [socket] = events;
    return 0;
}

//  Closing a descriptor takes it out of the epoll set
static int
s_on_curl_close (void *userp, curl_socket_t socket)
{
    worker_t *self = (worker_t *) userp;
    if (socket >= 0 && (size_t) socket < self->watched_size) {
        self->watched [socket] = 0;
        self->parked [socket] = false;
    }
    return close (socket);
}

//  Something happened on a socket libcurl no longer watches (an idle
//  keep-alive connection that the upstream closed): stop watching it;
//  libcurl finds out for itself before it reuses the connection
static void
s_unpark (worker_t *self, int socket)
{
    epoll_ctl (self->epoll_fd, EPOLL_CTL_DEL, socket, NULL);
    self->watched [socket] = 0;
    self->parked [socket] = false;
}

static int
s_on_curl_timer (CURLM *multi, long timeout_ms, void *userp)
{
    worker_t *self = (worker_t *) userp;
    self->curl_deadline_us = timeout_ms < 0 ? -1 : s_now_us () + (int64_t) timeout_ms * 1000;
    return 0;
}

//  ---------------------------------------------------------------------
//  Transfers

//  A transfer that libcurl finished, well or not
static void
s_on_done (worker_t *self, slot_t *slot, CURLcode result)
{
    if (slot->silent) {
        s_slot_release (self, slot, true);
        return;
    }
    if (slot->local_error.status) {
        s_slot_fail (self, slot, &slot->local_error);
        return;
    }
    if (result != CURLE_OK) {
        zg_provider_failure_t failure = {
            .code = result,
            .curl_error = slot->curl_error,
            .timed_out = result == CURLE_OPERATION_TIMEDOUT,
            .timeout_ms = slot->timeout_ms
        };
        zg_provider_error_t error;
        memset (&error, 0, sizeof (error));
        slot->provider->map_failure (&slot->deployment, &failure, &error);
        s_slot_fail (self, slot, &error);
        return;
    }
    if (slot->streaming) {
        if (s_relay_events (self, slot, true) == 0)
            s_send_end (self, slot);
    }
    else {
        uint16_t status = s_slot_status (slot);
        if (status >= 200 && status < 300)
            slot->provider->usage_from_json (slot->body.data, slot->body.size, &slot->usage);
        //  The final HEAD carries the usage and timings: no END follows
        s_send_head (self, slot, true);
    }
    s_slot_release (self, slot, true);
}

static void
s_collect_done (worker_t *self)
{
    CURLMsg *info;
    int left;
    while ((info = curl_multi_info_read (self->multi, &left))) {
        if (info->msg != CURLMSG_DONE)
            continue;
        char *private_data = NULL;
        curl_easy_getinfo (info->easy_handle, CURLINFO_PRIVATE, &private_data);
        slot_t *slot = (slot_t *) private_data;
        if (slot && slot->busy)
            s_on_done (self, slot, info->data.result);
    }
}

static void
s_check_first_byte_deadlines (worker_t *self, int64_t now)
{
    if (self->awaiting_first_byte == 0)
        return;
    for (size_t index = 0; index < self->capacity; index++) {
        slot_t *slot = &self->slots [index];
        if (!slot->busy || !slot->first_byte_deadline_us || slot->first_byte_deadline_us > now)
            continue;
        zg_provider_failure_t failure = {
            .code = CURLE_OPERATION_TIMEDOUT,
            .curl_error = "",
            .timed_out = true,
            .timeout_ms = slot->deployment.stream_timeout_ms
        };
        zg_provider_error_t error;
        memset (&error, 0, sizeof (error));
        slot->provider->map_failure (&slot->deployment, &failure, &error);
        s_slot_fail (self, slot, &error);
    }
}

static int64_t
s_earliest_first_byte_deadline (worker_t *self)
{
    int64_t earliest = -1;
    if (self->awaiting_first_byte == 0)
        return earliest;
    for (size_t index = 0; index < self->capacity; index++) {
        int64_t deadline = self->slots [index].first_byte_deadline_us;
        if (self->slots [index].busy && deadline && (earliest < 0 || deadline < earliest))
            earliest = deadline;
    }
    return earliest;
}

static void
s_copy_api_base (char *out, size_t size, const char *api_base)
{
    //  Query strings can hold credentials (api-version is harmless, keys
    //  are not); the reference strips them too
    size_t length = strcspn (api_base, "?");
    if (length >= size)
        length = size - 1;
    memcpy (out, api_base, length);
    out [length] = 0;
}

//  An immediate answer for a DISPATCH that cannot start
static void
s_refuse (worker_t *self, slot_t *slot, uint16_t status, const char *err_type,
          const char *message)
{
    zg_provider_error_t error;
    error.status = status;
    ZG_MSG_SET (error.err_type, err_type);
    snprintf (error.message, sizeof (error.message), "%s (deployment %s)",
              message, slot->deployment.id);
    s_slot_fail (self, slot, &error);
}

//  The options every transfer of a slot shares, set once rather than
//  reset and set again for every request
static void
s_easy_setup (worker_t *self, slot_t *slot)
{
    CURL *easy = slot->easy;
    curl_easy_setopt (easy, CURLOPT_HEADERFUNCTION, s_on_header);
    curl_easy_setopt (easy, CURLOPT_HEADERDATA, slot);
    curl_easy_setopt (easy, CURLOPT_WRITEFUNCTION, s_on_body);
    curl_easy_setopt (easy, CURLOPT_WRITEDATA, slot);
    curl_easy_setopt (easy, CURLOPT_PRIVATE, slot);
    curl_easy_setopt (easy, CURLOPT_ERRORBUFFER, slot->curl_error);
    curl_easy_setopt (easy, CURLOPT_CLOSESOCKETFUNCTION, s_on_curl_close);
    curl_easy_setopt (easy, CURLOPT_CLOSESOCKETDATA, self);
    curl_easy_setopt (easy, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt (easy, CURLOPT_TCP_KEEPALIVE, 1L);
    curl_easy_setopt (easy, CURLOPT_TCP_KEEPIDLE, 30L);
    curl_easy_setopt (easy, CURLOPT_TCP_KEEPINTVL, 15L);
    curl_easy_setopt (easy, CURLOPT_HTTP_VERSION, (long) CURL_HTTP_VERSION_2TLS);
    curl_easy_setopt (easy, CURLOPT_SSL_VERIFYPEER, 1L);
    curl_easy_setopt (easy, CURLOPT_SSL_VERIFYHOST, 2L);
    //  A private CA (an internal LLM endpoint) is trusted the way the
    //  reference's HTTP client does it: SSL_CERT_FILE names the bundle.
    //  Verification itself is never turned off.
    const char *ca_file = getenv ("SSL_CERT_FILE");
    if (ca_file && *ca_file)
        curl_easy_setopt (easy, CURLOPT_CAINFO, ca_file);
#if LIBCURL_VERSION_NUM >= 0x075500
    curl_easy_setopt (easy, CURLOPT_PROTOCOLS_STR, "http,https");
#else
    curl_easy_setopt (easy, CURLOPT_PROTOCOLS, (long) (CURLPROTO_HTTP | CURLPROTO_HTTPS));
#endif
    //  libcurl reads the proxy variables from the environment for every
    //  transfer; when none is set, saying "no proxy" once is the same
    //  answer without the lookups
    if (!self->proxy_from_environment) {
        curl_easy_setopt (easy, CURLOPT_PROXY, "");
        curl_easy_setopt (easy, CURLOPT_NOPROXY, "");
    }
}

//  The variables libcurl would read to choose a proxy
static bool
s_proxy_in_environment (void)
{
    static const char *names [] = {
        "http_proxy", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY",
        "no_proxy", "NO_PROXY", NULL
    };
    for (size_t index = 0; names [index]; index++) {
        const char *value = getenv (names [index]);
        if (value && *value)
            return true;
    }
    return false;
}

//  The URL goes to libcurl parsed, with the flags libcurl itself would
//  parse CURLOPT_URL with; one it cannot parse goes as text, so that the
//  transfer fails with libcurl's own error, as before
static void
s_set_url (slot_t *slot)
{
    if (slot->parsed_url && strcmp (slot->parsed_text, slot->url) == 0)
        return;
    slot->parsed_text [0] = 0;
    if (!slot->parsed_url)
        slot->parsed_url = curl_url ();
    if (slot->parsed_url
    &&  curl_url_set (slot->parsed_url, CURLUPART_URL, slot->url,
                      CURLU_GUESS_SCHEME | CURLU_NON_SUPPORT_SCHEME) == CURLUE_OK) {
        curl_easy_setopt (slot->easy, CURLOPT_CURLU, slot->parsed_url);
        ZG_MSG_SET (slot->parsed_text, slot->url);
    }
    else {
        curl_easy_setopt (slot->easy, CURLOPT_CURLU, NULL);
        curl_easy_setopt (slot->easy, CURLOPT_URL, slot->url);
    }
}

static void
s_on_dispatch (worker_t *self, zg_msg_t *msg)
{
    if (zhashx_lookup (self->by_call_id, msg->call_id)) {
        zg_warning ("worker %s: DISPATCH for call %s already in flight: ignored",
                    self->name, msg->call_id);
        return;
    }
    if (self->free_count == 0) {
        zg_provider_error_t error = { .status = 503 };
        ZG_MSG_SET (error.err_type, "service_unavailable");
        snprintf (error.message, sizeof (error.message),
                  "litellm.ServiceUnavailableError: worker %s has no free slot", self->name);
        char api_base [ZG_URL_MAX + 1];
        s_copy_api_base (api_base, sizeof (api_base), msg->deployment.api_base);
        s_send_error (self, msg->call_id, &msg->deployment, api_base, &error, false);
        return;
    }
    slot_t *slot = &self->slots [self->free_slots [--self->free_count]];
    slot->busy = true;
    self->requests++;
    if (self->max_requests && self->requests == self->max_requests) {
        if (self->status_fd >= 0) {
            zg_info ("worker %s: %llu requests taken: asking to be recycled", self->name,
                     (unsigned long long) self->requests);
            s_status (self, "retire");
        }
        else
            zg_warning ("worker %s: %llu requests taken, but recycling needs the supervisor: "
                        "serving on", self->name, (unsigned long long) self->requests);
    }
    ZG_MSG_SET (slot->call_id, msg->call_id);
    zhashx_insert (self->by_call_id, slot->call_id, slot);
    slot->flags = msg->flags;
    slot->board_group = zg_scoreboard_group (self->board, msg->model);
    s_deployment_copy (&slot->deployment, &msg->deployment);
    s_copy_api_base (slot->api_base, sizeof (slot->api_base), slot->deployment.api_base);
    slot->request = zg_msg_payload_take (msg, &slot->request_data, &slot->request_size);
    slot->headers.size = 0;
    slot->content_type [0] = 0;
    slot->body.size = 0;
    zg_sse_scanner_reset (&slot->sse);
    slot->body_started = false;
    slot->streaming = false;
    slot->strip_usage_chunk = (slot->flags & ZG_FLAG_STREAM) && !(slot->flags & ZG_FLAG_CLIENT_USAGE);
    memset (&slot->usage, 0, sizeof (slot->usage));
    slot->first_byte_us = 0;
    slot->first_byte_deadline_us = 0;
    memset (&slot->local_error, 0, sizeof (slot->local_error));
    slot->silent = false;
    slot->curl_error [0] = 0;
    slot->start_us = s_now_us ();
    //  Until the transfer runs, the slot's answers use the generic provider
    slot->provider = &zg_provider_openai;

    const zg_provider_t *provider = zg_provider_find (slot->deployment.provider);
    if (!provider) {
        char message [ZG_NAME_MAX + 64];
        snprintf (message, sizeof (message),
                  "litellm.BadRequestError: LLM Provider NOT supported: %s",
                  slot->deployment.provider);
        s_refuse (self, slot, 400, "invalid_request_error", message);
        return;
    }
    slot->provider = provider;
    if (provider->build_url (&slot->deployment, msg->route, slot->url, sizeof (slot->url))) {
        s_refuse (self, slot, 400, "invalid_request_error",
                  "litellm.BadRequestError: route not supported by this provider");
        return;
    }

    const char *body = "";
    size_t body_size = 0;
    if (slot->request) {
        body = (const char *) slot->request_data;
        body_size = slot->request_size;
    }
    int rewritten = provider->rewrite_body (&slot->deployment, slot->flags, body, body_size,
                                            msg->model_span, msg->options_span,
                                            &slot->request_body);
    if (rewritten < 0) {
        s_refuse (self, slot, 500, "internal_server_error",
                  "litellm.InternalServerError: out of memory");
        return;
    }
    if (rewritten > 0) {
        body = slot->request_body.data;
        body_size = slot->request_body.size;
    }

    if (!slot->header_list
    ||  slot->header_provider != provider
    ||  strcmp (slot->header_deployment, slot->deployment.id) != 0
    ||  strcmp (slot->header_key, slot->deployment.api_key) != 0) {
        curl_slist_free_all (slot->header_list);
        slot->header_list = provider->request_headers (&slot->deployment);
        slot->header_provider = provider;
        ZG_MSG_SET (slot->header_deployment, slot->deployment.id);
        ZG_MSG_SET (slot->header_key, slot->deployment.api_key);
        if (!slot->header_list) {
            s_refuse (self, slot, 500, "internal_server_error",
                      "litellm.InternalServerError: out of memory");
            return;
        }
    }

    slot->timeout_ms = slot->deployment.timeout_ms ? slot->deployment.timeout_ms : msg->timeout_ms;
    if ((slot->flags & ZG_FLAG_STREAM) && slot->deployment.stream_timeout_ms) {
        slot->first_byte_deadline_us = slot->start_us
                                     + (int64_t) slot->deployment.stream_timeout_ms * 1000;
        self->awaiting_first_byte++;
    }

    //  The options that never change were set once (s_easy_setup)
    CURL *easy = slot->easy;
    s_set_url (slot);
    curl_easy_setopt (easy, CURLOPT_POSTFIELDS, body);
    curl_easy_setopt (easy, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t) body_size);
    curl_easy_setopt (easy, CURLOPT_HTTPHEADER, slot->header_list);
    curl_easy_setopt (easy, CURLOPT_TIMEOUT_MS, (long) slot->timeout_ms);
    CURLMcode added = curl_multi_add_handle (self->multi, easy);
    if (added != CURLM_OK) {
        char message [256];
        snprintf (message, sizeof (message), "litellm.InternalServerError: %s",
                  curl_multi_strerror (added));
        s_refuse (self, slot, 500, "internal_server_error", message);
        return;
    }
    zg_debug ("worker %s: call %s -> deployment %s", self->name, slot->call_id,
              slot->deployment.id);
}

static void
s_on_cancel (worker_t *self, const char *call_id)
{
    slot_t *slot = (slot_t *) zhashx_lookup (self->by_call_id, call_id);
    if (!slot)
        return;             //  already finished: its answer crossed the CANCEL
    zg_debug ("worker %s: call %s cancelled", self->name, call_id);
    //  Removing an unfinished transfer closes its connection, so the
    //  upstream sees the client go away and stops generating
    s_slot_release (self, slot, true);
}

//  Give up every transfer without a word: the router that held them is
//  gone, and the one we reach next does not know them
static void
s_abort_all (worker_t *self)
{
    for (size_t index = 0; index < self->capacity; index++)
        if (self->slots [index].busy)
            s_slot_release (self, &self->slots [index], false);
    self->credit_pending = 0;
}

//  ---------------------------------------------------------------------
//  The router connection

//  linger_ms: how long the process's exit may wait for what is still
//  queued to reach the router
static void
s_socket_close (worker_t *self, int linger_ms)
{
    if (!self->dealer)
        return;
    epoll_ctl (self->epoll_fd, EPOLL_CTL_DEL, self->zmq_fd, NULL);
    zsock_set_linger (self->dealer, linger_ms);
    zsock_destroy (&self->dealer);
    self->zmq_fd = -1;
}

static int
s_socket_open (worker_t *self)
{
    self->dealer = zsock_new (ZMQ_DEALER);
    if (!self->dealer)
        return -1;
    //  A fresh identity per socket: the router may still hold the old
    //  connection and would refuse a duplicate
    char identity [ZG_NAME_MAX + 48];
    if (self->generation == 0)
        snprintf (identity, sizeof (identity), "%s-%u", self->name, self->pid);
    else
        snprintf (identity, sizeof (identity), "%s-%u.%u", self->name, self->pid,
                  self->generation);
    self->generation++;
    zsock_set_identity (self->dealer, identity);
    //  Chunks of hundreds of streams queue here while the router catches
    //  up; a router that takes longer than a heartbeat to drain them is
    //  treated as gone for those transfers
    int hwm = (int) (self->capacity * 64 < 1000 ? 1000 : self->capacity * 64);
    zsock_set_sndhwm (self->dealer, hwm);
    zsock_set_sndtimeo (self->dealer, (int) (self->heartbeat_us / 1000));
    zsock_set_rcvtimeo (self->dealer, 0);
    zsock_set_linger (self->dealer, 1000);
    if (zsock_connect (self->dealer, "%s", self->endpoint)) {
        zg_error ("worker %s: cannot connect to %s", self->name, self->endpoint);
        zsock_destroy (&self->dealer);
        return -1;
    }
    self->zmq_fd = zsock_fd (self->dealer);
    self->zmq_unsettled = true;
    struct epoll_event event = { .events = EPOLLIN, .data.fd = self->zmq_fd };
    if (epoll_ctl (self->epoll_fd, EPOLL_CTL_ADD, self->zmq_fd, &event)) {
        zg_error ("worker %s: epoll: %s", self->name, strerror (errno));
        s_socket_close (self, 0);
        return -1;
    }
    return 0;
}

static void
s_on_message (worker_t *self, zg_msg_t *msg)
{
    switch (msg->type) {
        case ZG_MSG_DISPATCH:
            s_on_dispatch (self, msg);
            break;
        case ZG_MSG_CANCEL:
            s_on_cancel (self, msg->call_id);
            break;
        case ZG_MSG_DISCONNECT:
            if (self->retire != RETIRE_NONE) {
                //  It holds nothing of ours: what we hold cannot be delivered
                zg_info ("worker %s: the router does not know us while we retire: stopping",
                         self->name);
                s_abort_all (self);
                self->retire = RETIRE_DONE;
                break;
            }
            zg_info ("worker %s: the router does not know us: registering again", self->name);
            s_send_ready (self);
            break;
        case ZG_MSG_HEARTBEAT:
            break;
        case ZG_MSG_RETIRE:
            if (self->retire == RETIRE_SENT) {
                self->retire = RETIRE_ANSWERED;
                zg_info ("worker %s: retiring after %llu requests; finishing %zu in flight",
                         self->name, (unsigned long long) self->requests,
                         self->capacity - self->free_count);
            }
            break;
        default:
            zg_warning ("worker %s: unexpected %s from the router: dropped", self->name,
                        zg_msg_type_name (msg->type));
            break;
    }
}

//  Reads until nothing is waiting (the socket never blocks), so that the
//  last receive settles the socket's state: ZMQ_FD signals the next
//  message, unless something is sent before the loop sleeps
static void
s_drain_socket (worker_t *self, int64_t now)
{
    for (int handled = 0; handled < DRAIN_BATCH && !zsys_interrupted; handled++) {
        int rc = zg_msg_recv (&self->in, zsock_resolve (self->dealer));
        if (rc == ZG_MSG_ERR_IO) {
            self->zmq_unsettled = false;
            break;
        }
        self->last_heard_us = now;
        if (rc == ZG_MSG_ERR_MALFORMED)
            zg_warning ("worker %s: malformed message from the router: dropped", self->name);
        else {
            if (self->awaiting_registration && self->in.type != ZG_MSG_DISCONNECT) {
                //  The router answered our READY: it may dispatch to us now
                self->awaiting_registration = false;
                s_status (self, "ready");
            }
            s_on_message (self, &self->in);
        }
        zg_msg_reset (&self->in, 0);
    }
}

static void
s_keep_alive (worker_t *self, int64_t now)
{
    if (now - self->last_heard_us > LIVENESS * self->heartbeat_us
    &&  self->retire != RETIRE_NONE) {
        zg_warning ("worker %s: no word from the router for %d heartbeats while retiring: "
                    "stopping", self->name, LIVENESS);
        s_abort_all (self);
        self->retire = RETIRE_DONE;
        return;
    }
    if (now - self->last_heard_us > LIVENESS * self->heartbeat_us) {
        zg_warning ("worker %s: no word from the router for %d heartbeats: reconnecting",
                    self->name, LIVENESS);
        s_abort_all (self);
        s_socket_close (self, 0);
        if (s_socket_open (self) == 0)
            s_send_ready (self);
        self->last_heard_us = now;
        self->next_heartbeat_us = now + self->heartbeat_us;
        return;
    }
    if (now >= self->next_heartbeat_us) {
        s_send_heartbeat (self);
        //  An answer lost on the way (a router that restarted) is asked again
        if (self->retire == RETIRE_SENT)
            s_send_retire (self);
        self->next_heartbeat_us = now + self->heartbeat_us;
    }
}

//  SIGUSR1: stop taking work, finish what is held, exit
static void
s_on_signal (worker_t *self)
{
    struct signalfd_siginfo info;
    bool retire = false;
    while (read (self->signal_fd, &info, sizeof (info)) == (ssize_t) sizeof (info))
        retire = retire || info.ssi_signo == SIGUSR1;
    if (!retire || self->retire != RETIRE_NONE)
        return;
    zg_info ("worker %s: asked to retire after %llu requests", self->name,
             (unsigned long long) self->requests);
    self->retire = RETIRE_SENT;
    s_send_retire (self);
}

//  ---------------------------------------------------------------------
//  Life cycle

static void
s_worker_destroy (worker_t **self_p)
{
    worker_t *self = *self_p;
    if (!self)
        return;
    if (self->slots) {
        for (size_t index = 0; index < self->capacity; index++) {
            slot_t *slot = &self->slots [index];
            if (slot->busy)
                s_slot_release (self, slot, false);
            if (slot->easy)
                curl_easy_cleanup (slot->easy);
            curl_url_cleanup (slot->parsed_url);
            curl_slist_free_all (slot->header_list);
            zg_buffer_release (&slot->request_body);
            zg_buffer_release (&slot->headers);
            zg_buffer_release (&slot->body);
        }
        free (self->slots);
    }
    free (self->free_slots);
    if (self->multi)
        curl_multi_cleanup (self->multi);
    //  After libcurl, whose cleanup closes sockets through s_on_curl_close
    free (self->watched);
    free (self->parked);
    if (self->dealer)
        s_socket_close (self, 0);
    if (self->epoll_fd >= 0)
        close (self->epoll_fd);
    if (self->signal_fd >= 0)
        close (self->signal_fd);
    zhashx_destroy (&self->by_call_id);
    zg_msg_reset (&self->in, 0);
    zg_msg_reset (&self->out, 0);
    free (self);
    *self_p = NULL;
}

static worker_t *
s_worker_new (const zg_config_t *config, const char *endpoint, const char *name)
{
    worker_t *self = (worker_t *) calloc (1, sizeof (worker_t));
    if (!self)
        return NULL;
    self->epoll_fd = -1;
    self->zmq_fd = -1;
    self->signal_fd = -1;
    self->status_fd = -1;
    self->config = config;
    self->endpoint = endpoint;
    ZG_MSG_SET (self->name, name && *name ? name : "worker");
    self->pid = (uint32_t) getpid ();
    self->capacity = config->worker_capacity > 0 ? (size_t) config->worker_capacity : 256;
    self->credit_batch = self->capacity >= 16 ? (uint32_t) (self->capacity / 8) : 1;
    self->proxy_from_environment = s_proxy_in_environment ();
    self->heartbeat_us = (int64_t) (config->heartbeat_ms > 0 ? config->heartbeat_ms : 1000) * 1000;
    self->curl_deadline_us = -1;
    zg_msg_init (&self->in, 0);
    zg_msg_init (&self->out, 0);

    self->slots = (slot_t *) calloc (self->capacity, sizeof (slot_t));
    self->free_slots = (size_t *) calloc (self->capacity, sizeof (size_t));
    self->by_call_id = zhashx_new ();
    self->multi = curl_multi_init ();
    self->epoll_fd = epoll_create1 (EPOLL_CLOEXEC);
    if (!self->slots || !self->free_slots || !self->by_call_id || !self->multi
    ||  self->epoll_fd < 0) {
        s_worker_destroy (&self);
        return NULL;
    }
    //  Keys point into the slots, which outlive their entries
    zhashx_set_key_duplicator (self->by_call_id, NULL);
    zhashx_set_key_destructor (self->by_call_id, NULL);

    //  One connection per concurrent HTTP/1.1 transfer to a host at most,
    //  and room to keep as many idle ones for reuse
    curl_multi_setopt (self->multi, CURLMOPT_MAX_HOST_CONNECTIONS, (long) self->capacity);
    curl_multi_setopt (self->multi, CURLMOPT_MAXCONNECTS, (long) self->capacity);
    curl_multi_setopt (self->multi, CURLMOPT_PIPELINING, (long) CURLPIPE_MULTIPLEX);
    curl_multi_setopt (self->multi, CURLMOPT_SOCKETFUNCTION, s_on_curl_socket);
    curl_multi_setopt (self->multi, CURLMOPT_SOCKETDATA, self);
    curl_multi_setopt (self->multi, CURLMOPT_TIMERFUNCTION, s_on_curl_timer);
    curl_multi_setopt (self->multi, CURLMOPT_TIMERDATA, self);

    for (size_t index = 0; index < self->capacity; index++) {
        slot_t *slot = &self->slots [index];
        slot->worker = self;
        slot->easy = curl_easy_init ();
        if (!slot->easy) {
            s_worker_destroy (&self);
            return NULL;
        }
        s_easy_setup (self, slot);
        //  Popped from the end: slot 0 is used first
        self->free_slots [index] = self->capacity - 1 - index;
    }
    self->free_count = self->capacity;
    return self;
}

static int
s_wait_ms (worker_t *self, int64_t now)
{
    int64_t deadline = self->next_heartbeat_us;
    int64_t liveness = self->last_heard_us + LIVENESS * self->heartbeat_us + 1;
    if (liveness < deadline)
        deadline = liveness;
    if (self->curl_deadline_us >= 0 && self->curl_deadline_us < deadline)
        deadline = self->curl_deadline_us;
    int64_t first_byte = s_earliest_first_byte_deadline (self);
    if (first_byte >= 0 && first_byte < deadline)
        deadline = first_byte;
    if (deadline <= now)
        return 0;
    //  Round up: waking a little early would just spin once more
    return (int) ((deadline - now + 999) / 1000);
}

//  SIGUSR1 through a descriptor in the epoll set: it changes what the
//  loop does, so the loop is where it is read
static int
s_signal_open (worker_t *self)
{
    sigset_t mask;
    sigemptyset (&mask);
    sigaddset (&mask, SIGUSR1);
    sigprocmask (SIG_BLOCK, &mask, NULL);
    self->signal_fd = signalfd (-1, &mask, SFD_CLOEXEC | SFD_NONBLOCK);
    struct epoll_event event = { .events = EPOLLIN, .data.fd = self->signal_fd };
    if (self->signal_fd < 0 || epoll_ctl (self->epoll_fd, EPOLL_CTL_ADD, self->signal_fd, &event)) {
        zg_error ("worker %s: cannot watch SIGUSR1: %s", self->name, strerror (errno));
        return -1;
    }
    return 0;
}

int
zg_worker_run (const zg_config_t *config, const char *worker_endpoint, const char *name,
               uint64_t max_requests, int status_fd)
{
    assert (config);
    assert (worker_endpoint);
    //  A supervisor that died leaves the status pipe without a reader
    signal (SIGPIPE, SIG_IGN);
#ifndef ZG_WITH_MIMALLOC
    //  Under glibc's malloc (mimalloc, the default, needs none of this):
    //  every call frees blocks at the top of the heap that the next call
    //  takes again. Under glibc's default trim threshold (128 KB, moving
    //  with the largest mmap freed) the top went back to the kernel and
    //  came again (brk), with the fast bins consolidated, about once per
    //  call: 0.6 us of the worker's 16 per chat call
    mallopt (M_TRIM_THRESHOLD, 4 * 1024 * 1024);
    mallopt (M_TOP_PAD, 1024 * 1024);
    //  libcurl (7.88) allocates its 16 KB receive buffer for every transfer
    //  and frees it at the end; glibc consolidates the fast bins before
    //  every allocation that large. Without fast bins (small blocks still
    //  come from the per-thread cache) there is nothing to consolidate:
    //  0.2 us per call
    mallopt (M_MXFAST, 0);
#endif
    if (curl_global_init (CURL_GLOBAL_DEFAULT) != CURLE_OK) {
        zg_error ("worker %s: libcurl cannot start", name ? name : "");
        return 1;
    }
    worker_t *self = s_worker_new (config, worker_endpoint, name);
    if (!self) {
        zg_error ("worker %s: out of memory", name ? name : "");
        curl_global_cleanup ();
        return 1;
    }
    self->max_requests = max_requests;
    self->status_fd = status_fd;
    if (s_signal_open (self) || s_socket_open (self)) {
        s_worker_destroy (&self);
        curl_global_cleanup ();
        return 1;
    }
    zg_info ("worker %s: connected to %s, capacity %zu", self->name, worker_endpoint,
             self->capacity);
    if (max_requests)
        zg_info ("worker %s: to be recycled after %llu requests", self->name,
                 (unsigned long long) max_requests);
    int64_t now = s_now_us ();
    self->last_heard_us = now;
    self->next_heartbeat_us = now + self->heartbeat_us;
    self->board = zg_scoreboard_process ();
    self->board_slot = zg_scoreboard_env_slot ("ZGATE_SLOT");
    zg_scoreboard_claim (self->board, self->board_slot, self->name);
    s_send_ready (self);

    struct epoll_event events [EPOLL_BATCH];
    int exit_code = 0;
    while (!zsys_interrupted) {
        if (self->retire == RETIRE_DONE
        || (self->retire == RETIRE_ANSWERED && self->free_count == self->capacity))
            break;
        now = s_now_us ();
        zg_scoreboard_beat (self->board, self->board_slot);
        int wait_ms = s_wait_ms (self, now);
        //  Credit goes back in batches while the worker is busy, and all of
        //  it before the worker sleeps
        if (wait_ms > 0 && self->credit_pending)
            s_flush_credit (self);
        //  Only a send since the last empty receive can hide a message
        //  from ZMQ_FD; otherwise the socket's state is known
        if (wait_ms > 0 && self->zmq_unsettled && (zsock_events (self->dealer) & ZMQ_POLLIN))
            wait_ms = 0;
        int count = epoll_wait (self->epoll_fd, events, EPOLL_BATCH, wait_ms);
        if (count < 0) {
            if (errno == EINTR)
                continue;
            zg_error ("worker %s: epoll_wait: %s", self->name, strerror (errno));
            exit_code = 1;
            break;
        }
        int running;
        for (int index = 0; index < count; index++) {
            int fd = events [index].data.fd;
            if (fd == self->zmq_fd)
                continue;           //  the socket is read below, whatever woke us
            if (fd == self->signal_fd) {
                s_on_signal (self);
                continue;
            }
            if ((size_t) fd < self->watched_size && self->parked [fd]) {
                s_unpark (self, fd);
                continue;
            }
            int flags = 0;
            if (events [index].events & EPOLLIN)
                flags |= CURL_CSELECT_IN;
            if (events [index].events & EPOLLOUT)
                flags |= CURL_CSELECT_OUT;
            if (events [index].events & (EPOLLERR | EPOLLHUP))
                flags |= CURL_CSELECT_ERR;
            curl_multi_socket_action (self->multi, fd, flags, &running);
        }
        now = s_now_us ();
        if (self->curl_deadline_us >= 0 && self->curl_deadline_us <= now) {
            self->curl_deadline_us = -1;
            curl_multi_socket_action (self->multi, CURL_SOCKET_TIMEOUT, 0, &running);
        }
        s_collect_done (self);
        s_check_first_byte_deadlines (self, now);
        s_keep_alive (self, now);
        if (!self->dealer) {
            zg_error ("worker %s: lost the router socket", self->name);
            exit_code = 1;
            break;
        }
        //  A batch of credit goes before the socket is read, so that the
        //  read is the last thing the socket sees before the loop sleeps
        if (self->credit_pending >= self->credit_batch)
            s_flush_credit (self);
        s_drain_socket (self, now);
    }
    if (self->retire != RETIRE_NONE) {
        //  The last answers may still be queued: the exit waits for them
        zg_info ("worker %s: retired", self->name);
        s_flush_credit (self);
        s_socket_close (self, 5000);
    }
    else
        zg_info ("worker %s: stopping", self->name);
    s_worker_destroy (&self);
    curl_global_cleanup ();
    return exit_code;
}
