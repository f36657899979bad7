#include "fu_server.h"
#include "fu_buf.h"
#include "fu_http.h"
#include "fu_json.h"
#include "fu_render.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

//  Raw bytes one request may occupy: a chunked body carries framing on top
//  of the decoded 8 MB.
#define MAX_RAW_REQUEST     (FU_HTTP_MAX_HEAD + 3 * FU_HTTP_MAX_BODY)
//  Stop taking pipelined requests while this much output waits for a slow reader.
#define OUT_HIGH_WATER      (1024 * 1024)
#define READ_CHUNK          (16 * 1024)
#define SLOW_BYTE_MS        100
//  Time for the bytes sent just before a reset fault to reach the client
//  before the RST discards what is still queued.
#define RESET_GRACE_MS      20
//  After an error that closes the connection, keep reading for this long so
//  the client sees our answer instead of a reset caused by its unread bytes.
#define LINGER_MS           2000
#define MAX_EMBEDDING_INPUTS 2048

//  epoll data: a pointer with its kind in the low bits.
enum { TAG_CONN = 0, TAG_TIMER = 1, TAG_LISTENER = 2, TAG_WAKE = 3 };
#define TAG_MASK 3u

typedef enum {
    PHASE_IDLE,                 //  reading requests
    PHASE_DELAY,                //  latency before the answer
    PHASE_STREAM,               //  between two SSE events
    PHASE_SLOW,                 //  dribbling the body
    PHASE_HANG,                 //  never answering
    PHASE_ABORT,                //  a reset fault, after its grace time
    PHASE_LINGER                //  answered an error; draining input before closing
} phase_t;

typedef enum {
    CLOSE_NORMAL,
    CLOSE_PEER_GONE,            //  the client went away
    CLOSE_RESET,                //  a fault: RST
    CLOSE_SHUTDOWN
} close_t;

typedef struct thread_s thread_t;
typedef struct conn_s conn_t;

struct conn_s {
    thread_t *thread;
    conn_t *prev, *next;
    int fd;
    int timer_fd;
    uint32_t events;
    bool dead;
    bool peer_eof;
    bool close_after_flush;
    bool linger_after_flush;

    fu_buf_t in;
    fu_http_request_t request;
    bool continue_sent;

    fu_buf_t out;
    size_t out_off;
    //  Answers fully rendered but still in `out`: completed once flushed.
    long done_unflushed;

    //  The answer in flight
    phase_t phase;
    bool keep_alive;
    bool http10;
    bool stream;
    bool chunked;
    long latency_ms;
    long chunk_interval_ms;
    long status;
    long header_bytes;
    fu_fault_t fault;
    long events_to_send;
    long events_sent;
    fu_answer_t answer;
    fu_buf_t model;
    fu_buf_t slow;
    size_t slow_off;
};

typedef struct {
    atomic_long requests;
    atomic_long completed;
    atomic_long client_disconnects;
    atomic_long active;
} stats_t;

struct thread_s {
    //  Written by other threads (summing); kept away from the loop's fields.
    _Alignas (64) stats_t stats;
    _Alignas (64) fu_server_t *server;
    int index;
    int epoll_fd;
    int listen_fd;
    int wake_fd;
    pthread_t pthread;
    bool started;
    conn_t *conns;
    conn_t *dead;
    fu_buf_t scratch;
};

struct _fu_server_t {
    fu_config_t config;
    char host [INET6_ADDRSTRLEN];
    int port;
    int thread_count;
    thread_t **threads;
    atomic_ullong next_id;

    //  The last LLM request, for GET /last_request.
    pthread_mutex_t last_lock;
    bool have_last;
    fu_buf_t last_head;
    fu_buf_t last_body;
    fu_http_request_t last_request;
};

static void s_conn_process (conn_t *self);
static void s_conn_flush (conn_t *self);
static void s_conn_close (conn_t *self, close_t how);


int
fu_fault_parse (const char *name, size_t size, fu_fault_t *fault)
{
    static const struct { const char *name; fu_fault_t fault; } faults [] = {
        { "", FU_FAULT_NONE }, { "none", FU_FAULT_NONE }, { "reset", FU_FAULT_RESET },
        { "hang", FU_FAULT_HANG }, { "slow", FU_FAULT_SLOW },
        { "reset_mid_stream", FU_FAULT_RESET_MID_STREAM }
    };
    for (size_t i = 0; i < sizeof faults / sizeof faults [0]; i++)
        if (strlen (faults [i].name) == size && memcmp (faults [i].name, name, size) == 0) {
            *fault = faults [i].fault;
            return 0;
        }
    return -1;
}

static void
s_stat_add (atomic_long *counter, long delta)
{
    atomic_fetch_add_explicit (counter, delta, memory_order_relaxed);
}

static long
s_stat_sum (fu_server_t *server, size_t field_offset)
{
    long sum = 0;
    for (int i = 0; i < server->thread_count; i++) {
        atomic_long *counter = (atomic_long *) ((char *) &server->threads [i]->stats + field_offset);
        sum += atomic_load_explicit (counter, memory_order_relaxed);
    }
    return sum;
}

static bool
s_in_flight (const conn_t *self)
{
    return self->phase != PHASE_IDLE && self->phase != PHASE_LINGER;
}


//  --------------------------------------------------------------------------
//  epoll plumbing

static void
s_watch (conn_t *self)
{
    uint32_t events = 0;
    if (!self->peer_eof)
        events |= EPOLLIN | EPOLLRDHUP;
    if (self->out_off < self->out.len)
        events |= EPOLLOUT;
    if (events == self->events)
        return;
    struct epoll_event event = { .events = events, .data.u64 = (uintptr_t) self | TAG_CONN };
    if (epoll_ctl (self->thread->epoll_fd, EPOLL_CTL_MOD, self->fd, &event) == 0)
        self->events = events;
}

//  One-shot timer in `ms` (>= 1) from now; the timerfd is made on first use.
static int
s_timer_arm (conn_t *self, long ms)
{
    if (ms < 1)
        ms = 1;
    if (self->timer_fd < 0) {
        int fd = timerfd_create (CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
        if (fd < 0)
            return -1;
        struct epoll_event event = { .events = EPOLLIN, .data.u64 = (uintptr_t) self | TAG_TIMER };
        if (epoll_ctl (self->thread->epoll_fd, EPOLL_CTL_ADD, fd, &event)) {
            close (fd);
            return -1;
        }
        self->timer_fd = fd;
    }
    struct itimerspec spec = { .it_value = { ms / 1000, (ms % 1000) * 1000000L } };
    return timerfd_settime (self->timer_fd, 0, &spec, NULL);
}

static void
s_timer_arm_or_drop (conn_t *self, long ms)
{
    if (s_timer_arm (self, ms)) {
        fprintf (stderr, "fake_upstream: timer: %s\n", strerror (errno));
        s_conn_close (self, CLOSE_NORMAL);
    }
}


//  --------------------------------------------------------------------------
//  Writing answers

static void
s_put_head (conn_t *self, int status, const char *content_type, long long content_length,
            bool llm)
{
    fu_buf_t *out = &self->out;
    fu_buf_puts (out, "HTTP/1.1 ");
    fu_buf_putu (out, (unsigned long long) status);
    fu_buf_puts (out, " ");
    fu_buf_puts (out, fu_render_reason (status));
    fu_buf_puts (out, "\r\ncontent-type: ");
    fu_buf_puts (out, content_type);
    if (content_length >= 0) {
        fu_buf_puts (out, "\r\ncontent-length: ");
        fu_buf_putu (out, (unsigned long long) content_length);
    }
    else
    if (self->chunked)
        fu_buf_puts (out, "\r\ntransfer-encoding: chunked\r\ncache-control: no-cache");
    if (llm) {
        fu_buf_puts (out, "\r\nopenai-processing-ms: ");
        fu_buf_putu (out, (unsigned long long) self->latency_ms);
        fu_buf_puts (out, "\r\nx-request-id: req-fake-");
        fu_buf_putu (out, self->answer.id);
        if (self->header_bytes > 0) {
            fu_buf_puts (out, "\r\nx-fake-padding: ");
            for (long index = 0; index < self->header_bytes; index++)
                fu_buf_append (out, "p", 1);
        }
    }
    if (status == 429)
        fu_buf_puts (out, "\r\nretry-after: 1");
    if (!self->keep_alive)
        fu_buf_puts (out, "\r\nconnection: close");
    else
    if (self->http10)
        fu_buf_puts (out, "\r\nconnection: keep-alive");
    fu_buf_puts (out, "\r\n\r\n");
}

//  A complete answer that is not an LLM answer (no statistics).
static void
s_respond (conn_t *self, int status, const char *content_type, const char *body, size_t size)
{
    s_put_head (self, status, content_type, (long long) size, false);
    fu_buf_append (&self->out, body, size);
    if (!self->keep_alive)
        self->close_after_flush = true;
}

static void
s_respond_error (conn_t *self, int status, const char *message)
{
    fu_buf_t *scratch = &self->thread->scratch;
    fu_buf_reset (scratch);
    fu_render_error (scratch, status, message);
    s_respond (self, status, "application/json", scratch->data, scratch->len);
}

//  The request cannot be framed: answer and close, reading what the client
//  still sends meanwhile so our answer is not lost to a reset.
static void
s_respond_fatal (conn_t *self, int status, const char *message)
{
    self->keep_alive = false;
    s_respond_error (self, status, message);
    self->close_after_flush = true;
    self->linger_after_flush = true;
}

static void
s_finish_answer (conn_t *self)
{
    self->phase = PHASE_IDLE;
    self->done_unflushed++;
    if (!self->keep_alive)
        self->close_after_flush = true;
}

//  One SSE event from scratch, framed as an HTTP chunk when chunked.
static void
s_put_event (conn_t *self, const fu_buf_t *event)
{
    if (self->chunked) {
        char size [24];
        int n = snprintf (size, sizeof size, "%zx\r\n", event->len);
        fu_buf_append (&self->out, size, (size_t) n);
    }
    fu_buf_append (&self->out, event->data, event->len);
    if (self->chunked)
        fu_buf_append (&self->out, "\r\n", 2);
}

static void
s_stream_pump (conn_t *self)
{
    fu_buf_t *event = &self->thread->scratch;
    while (self->events_sent < self->events_to_send) {
        fu_buf_reset (event);
        fu_render_event (event, &self->answer, self->events_sent);
        s_put_event (self, event);
        self->events_sent++;
        if (self->chunk_interval_ms > 0 && self->events_sent < self->events_to_send) {
            self->phase = PHASE_STREAM;
            s_timer_arm_or_drop (self, self->chunk_interval_ms);
            return;
        }
    }
    if (self->fault == FU_FAULT_RESET_MID_STREAM) {
        self->phase = PHASE_ABORT;
        s_timer_arm_or_drop (self, self->chunk_interval_ms > 0 ? self->chunk_interval_ms
                                                               : RESET_GRACE_MS);
        return;
    }
    if (self->answer.include_usage) {
        fu_buf_reset (event);
        fu_render_usage_event (event, &self->answer);
        s_put_event (self, event);
    }
    fu_buf_reset (event);
    fu_render_done_event (event);
    s_put_event (self, event);
    if (self->chunked)
        fu_buf_append (&self->out, "0\r\n\r\n", 5);
    s_finish_answer (self);
}

static void
s_stream_start (conn_t *self)
{
    //  HTTP/1.0 has no chunked encoding: the end of the stream is the close.
    self->chunked = !self->http10;
    if (self->http10)
        self->keep_alive = false;
    s_put_head (self, 200, "text/event-stream", -1, true);
    self->events_sent = 0;
    self->events_to_send = self->answer.chunks;
    if (self->fault == FU_FAULT_RESET_MID_STREAM)
        self->events_to_send /= 2;
    s_stream_pump (self);
}

//  The answer after any latency: an error status, a fault, or the real thing.
static void
s_start_answer (conn_t *self)
{
    self->phase = PHASE_IDLE;
    if (self->status && self->status != 200) {
        char message [64];
        snprintf (message, sizeof message, "fake upstream error %ld", self->status);
        fu_buf_t *scratch = &self->thread->scratch;
        fu_buf_reset (scratch);
        fu_render_error (scratch, (int) self->status, message);
        s_put_head (self, (int) self->status, "application/json", (long long) scratch->len, true);
        fu_buf_append (&self->out, scratch->data, scratch->len);
        s_finish_answer (self);
        return;
    }
    bool stream = self->stream && self->answer.route != FU_ROUTE_EMBEDDINGS;
    switch (self->fault) {
        case FU_FAULT_RESET:
            self->phase = PHASE_ABORT;      //  in flight until the reset
            s_conn_close (self, CLOSE_RESET);
            return;
        case FU_FAULT_HANG:
            self->phase = PHASE_HANG;
            return;
        case FU_FAULT_SLOW: {
            //  Render the whole answer aside, send the head, dribble the rest.
            fu_buf_t saved_out = self->out;
            size_t saved_off = self->out_off;
            self->out = self->slow;
            self->out_off = 0;
            fu_buf_reset (&self->out);
            if (stream) {
                //  All events at once into the aside buffer.
                long interval = self->chunk_interval_ms;
                self->chunk_interval_ms = 0;
                self->fault = FU_FAULT_NONE;
                s_stream_start (self);
                self->fault = FU_FAULT_SLOW;
                self->chunk_interval_ms = interval;
            }
            else {
                fu_buf_t *scratch = &self->thread->scratch;
                fu_buf_reset (scratch);
                fu_render_body (scratch, &self->answer);
                s_put_head (self, 200, "application/json", (long long) scratch->len, true);
                fu_buf_append (&self->out, scratch->data, scratch->len);
            }
            self->slow = self->out;
            self->out = saved_out;
            self->out_off = saved_off;
            //  Whatever the pump decided, the answer is now only bytes to dribble.
            self->done_unflushed -= stream;
            const char *head_end = self->slow.len ? memmem (self->slow.data, self->slow.len,
                                                            "\r\n\r\n", 4) : NULL;
            size_t head_len = head_end ? (size_t) (head_end - self->slow.data) + 4 : 0;
            fu_buf_append (&self->out, self->slow.data, head_len);
            self->slow_off = head_len;
            self->phase = PHASE_SLOW;
            s_timer_arm_or_drop (self, SLOW_BYTE_MS);
            return;
        }
        case FU_FAULT_RESET_MID_STREAM:
            if (stream) {
                s_stream_start (self);
                return;
            }
            else {
                fu_buf_t *scratch = &self->thread->scratch;
                fu_buf_reset (scratch);
                fu_render_body (scratch, &self->answer);
                s_put_head (self, 200, "application/json", (long long) scratch->len, true);
                fu_buf_append (&self->out, scratch->data, scratch->len / 2);
                self->phase = PHASE_ABORT;
                s_timer_arm_or_drop (self, RESET_GRACE_MS);
                return;
            }
        case FU_FAULT_NONE:
            break;
    }
    if (stream) {
        s_stream_start (self);
        return;
    }
    fu_buf_t *scratch = &self->thread->scratch;
    fu_buf_reset (scratch);
    fu_render_body (scratch, &self->answer);
    s_put_head (self, 200, "application/json", (long long) scratch->len, true);
    fu_buf_append (&self->out, scratch->data, scratch->len);
    s_finish_answer (self);
}

static void
s_slow_next (conn_t *self)
{
    if (self->slow_off < self->slow.len)
        fu_buf_append (&self->out, self->slow.data + self->slow_off++, 1);
    if (self->slow_off < self->slow.len)
        s_timer_arm_or_drop (self, SLOW_BYTE_MS);
    else
        s_finish_answer (self);
}


//  --------------------------------------------------------------------------
//  Requests

static void
s_record_last_request (conn_t *self, const char *base)
{
    fu_server_t *server = self->thread->server;
    const fu_http_request_t *request = &self->request;
    pthread_mutex_lock (&server->last_lock);
    fu_buf_reset (&server->last_head);
    fu_buf_reset (&server->last_body);
    fu_buf_append (&server->last_head, base, request->head_len);
    fu_buf_append (&server->last_body, base + request->head_len, request->body_len);
    memcpy (&server->last_request, request, offsetof (fu_http_request_t, headers)
            + request->header_count * sizeof (fu_http_header_t));
    server->have_last = !server->last_head.oom && !server->last_body.oom;
    pthread_mutex_unlock (&server->last_lock);
}

static void
s_render_last_request (fu_server_t *server, fu_buf_t *out)
{
    pthread_mutex_lock (&server->last_lock);
    if (!server->have_last) {
        fu_buf_puts (out, "{\"method\":null,\"path\":null,\"headers\":{},\"body\":null}");
        pthread_mutex_unlock (&server->last_lock);
        return;
    }
    const fu_http_request_t *request = &server->last_request;
    const char *head = server->last_head.data;
    fu_buf_puts (out, "{\"method\":");
    fu_buf_json_string (out, head + request->method_off, request->method_len);
    fu_buf_puts (out, ",\"path\":");
    fu_buf_json_string (out, head + request->target_off, request->target_len);
    fu_buf_puts (out, ",\"headers\":{");
    bool first = true;
    for (size_t i = 0; i < request->header_count; i++) {
        const fu_http_header_t *header = &request->headers [i];
        bool seen = false;
        for (size_t j = 0; j < i && !seen; j++)
            seen = request->headers [j].name_len == header->name_len
                && memcmp (head + request->headers [j].name_off, head + header->name_off,
                           header->name_len) == 0;
        if (seen)
            continue;
        //  Repeated fields are joined as one, the way HTTP allows.
        fu_buf_t value = { 0 };
        for (size_t j = i; j < request->header_count; j++) {
            const fu_http_header_t *other = &request->headers [j];
            if (other->name_len != header->name_len
            ||  memcmp (head + other->name_off, head + header->name_off, header->name_len))
                continue;
            if (value.len)
                fu_buf_append (&value, ", ", 2);
            fu_buf_append (&value, head + other->value_off, other->value_len);
        }
        if (!first)
            fu_buf_puts (out, ",");
        first = false;
        fu_buf_json_string (out, head + header->name_off, header->name_len);
        fu_buf_puts (out, ":");
        fu_buf_json_string (out, value.data ? value.data : "", value.len);
        fu_buf_free (&value);
    }
    fu_buf_puts (out, "},\"body\":");
    fu_buf_json_string (out, server->last_body.data ? server->last_body.data : "",
                        server->last_body.len);
    fu_buf_puts (out, "}");
    pthread_mutex_unlock (&server->last_lock);
}

static void
s_render_stats (fu_server_t *server, fu_buf_t *out)
{
    fu_buf_printf (out,
        "{\"requests\":%ld,\"completed\":%ld,\"client_disconnects\":%ld,\"active\":%ld}",
        s_stat_sum (server, offsetof (stats_t, requests)),
        s_stat_sum (server, offsetof (stats_t, completed)),
        s_stat_sum (server, offsetof (stats_t, client_disconnects)),
        s_stat_sum (server, offsetof (stats_t, active)));
}

static void
s_reset_stats (fu_server_t *server)
{
    //  "active" is what is in flight now, not a count since the last reset.
    for (int i = 0; i < server->thread_count; i++) {
        stats_t *stats = &server->threads [i]->stats;
        atomic_store_explicit (&stats->requests, 0, memory_order_relaxed);
        atomic_store_explicit (&stats->completed, 0, memory_order_relaxed);
        atomic_store_explicit (&stats->client_disconnects, 0, memory_order_relaxed);
    }
}

//  An LLM request: counted, recorded, then answered now or after a timer.
static void
s_handle_llm (conn_t *self, fu_route_t route, const char *base)
{
    thread_t *thread = self->thread;
    fu_server_t *server = thread->server;
    const fu_config_t *config = &server->config;
    const fu_http_request_t *request = &self->request;

    s_stat_add (&thread->stats.requests, 1);
    s_stat_add (&thread->stats.active, 1);
    s_record_last_request (self, base);

    memset (&self->answer, 0, sizeof self->answer);
    self->answer.route = route;
    self->answer.id = atomic_fetch_add_explicit (&server->next_id, 1, memory_order_relaxed) + 1;
    self->answer.created = (long long) time (NULL);
    self->latency_ms = 0;
    self->fault = FU_FAULT_NONE;
    self->status = 0;
    self->header_bytes = 0;
    self->stream = false;

    fu_json_llm_body_t body;
    const char *error = NULL;
    if (fu_json_parse_llm_body (base + request->head_len, request->body_len, &body, &error) == 0) {
        if (body.model.size == 0)
            error = "you must provide a model parameter";
        else
        if (route == FU_ROUTE_EMBEDDINGS && !body.has_input)
            error = "'input' is a required property";
        else
        if (route == FU_ROUTE_EMBEDDINGS && body.input_count == 0)
            error = "'input' must not be empty";
        else
        if (route == FU_ROUTE_EMBEDDINGS && body.input_count > MAX_EMBEDDING_INPUTS)
            error = "'input' holds more than 2048 items";
        else
        if (body.fake.status >= 0
        && (body.fake.status < 200 || body.fake.status > 599
        ||  body.fake.status == 204 || body.fake.status == 304))
            error = "fake.status must be an HTTP status from 200 to 599 that carries a body";
        else
        if (body.fake.fault.at
        &&  fu_fault_parse (body.fake.fault.at, body.fake.fault.size, &self->fault))
            error = "fake.fault must be one of reset, hang, slow, reset_mid_stream";
    }
    if (error) {
        fu_buf_t *scratch = &thread->scratch;
        fu_buf_reset (scratch);
        fu_render_error (scratch, 400, error);
        s_put_head (self, 400, "application/json", (long long) scratch->len, true);
        fu_buf_append (&self->out, scratch->data, scratch->len);
        s_finish_answer (self);
        return;
    }
    if (!body.fake.fault.at)
        self->fault = config->fault;
    self->latency_ms = body.fake.latency_ms >= 0 ? body.fake.latency_ms : config->latency_ms;
    self->chunk_interval_ms = body.fake.chunk_interval_ms >= 0 ? body.fake.chunk_interval_ms
                                                               : config->chunk_interval_ms;
    self->status = body.fake.status >= 0 ? body.fake.status : config->status;
    self->header_bytes = body.fake.header_bytes > 0 ? body.fake.header_bytes : 0;
    self->stream = body.stream;
    self->answer.chunks = body.fake.chunks >= 0 ? body.fake.chunks : config->chunks;
    self->answer.prompt_tokens = body.fake.has_prompt_tokens ? body.fake.prompt_tokens
                                                             : config->prompt_tokens;
    self->answer.inputs = body.input_count;
    self->answer.include_usage = body.include_usage;
    //  The body is consumed before a delayed answer is written: keep the model.
    fu_buf_reset (&self->model);
    fu_buf_append (&self->model, body.model.at, body.model.size);
    if (self->model.oom) {
        s_conn_close (self, CLOSE_NORMAL);
        return;
    }
    self->answer.model = self->model.data;
    self->answer.model_len = self->model.len;

    if (self->latency_ms > 0) {
        self->phase = PHASE_DELAY;
        s_timer_arm_or_drop (self, self->latency_ms);
    }
    else
        s_start_answer (self);
}

static bool
s_is (const char *path, size_t size, const char *name)
{
    size_t name_len = strlen (name);
    return size == name_len && memcmp (path, name, size) == 0;
}

static void
s_handle_request (conn_t *self, const char *base)
{
    const fu_http_request_t *request = &self->request;
    const char *method = base + request->method_off;
    size_t method_len = request->method_len;
    const char *path = base + request->target_off;
    size_t path_len = request->target_len;
    const char *query = memchr (path, '?', path_len);
    if (query)
        path_len = (size_t) (query - path);
    if (path_len >= 3 && memcmp (path, "/v1", 3) == 0 && (path_len == 3 || path [3] == '/')) {
        path += 3;
        path_len -= 3;
    }
    bool get = s_is (method, method_len, "GET");
    bool post = s_is (method, method_len, "POST");
    self->keep_alive = request->keep_alive;
    self->http10 = request->minor_version == 0;
    self->chunked = false;
    self->latency_ms = 0;
    fu_server_t *server = self->thread->server;
    fu_buf_t *scratch = &self->thread->scratch;

    int route = -1;
    if (s_is (path, path_len, "/chat/completions"))
        route = FU_ROUTE_CHAT;
    else
    if (s_is (path, path_len, "/completions"))
        route = FU_ROUTE_COMPLETIONS;
    else
    if (s_is (path, path_len, "/embeddings"))
        route = FU_ROUTE_EMBEDDINGS;
    if (route >= 0) {
        if (post)
            s_handle_llm (self, (fu_route_t) route, base);
        else
            s_respond_error (self, 405, "Method Not Allowed");
        return;
    }
    bool is_models = s_is (path, path_len, "/models");
    bool is_model = path_len > 8 && memcmp (path, "/models/", 8) == 0;
    bool is_stats = s_is (path, path_len, "/stats");
    bool is_reset = s_is (path, path_len, "/stats/reset");
    bool is_last = s_is (path, path_len, "/last_request");
    if (!is_models && !is_model && !is_stats && !is_reset && !is_last) {
        char message [400];
        snprintf (message, sizeof message, "Unknown request URL: %.*s %.*s",
                  (int) (method_len > 32 ? 32 : method_len), method,
                  (int) (request->target_len > 256 ? 256 : request->target_len),
                  base + request->target_off);
        s_respond_error (self, 404, message);
        return;
    }
    if (is_reset ? !post : !get) {
        s_respond_error (self, 405, "Method Not Allowed");
        return;
    }
    fu_buf_reset (scratch);
    if (is_models)
        fu_buf_puts (scratch, "{\"object\":\"list\",\"data\":[{\"id\":\"fake\",\"object\":\"model\","
                              "\"created\":0,\"owned_by\":\"fake\"}]}");
    else
    if (is_model) {
        fu_buf_puts (scratch, "{\"id\":");
        fu_buf_json_string (scratch, path + 8, path_len - 8);
        fu_buf_puts (scratch, ",\"object\":\"model\",\"created\":0,\"owned_by\":\"fake\"}");
    }
    else
    if (is_stats)
        s_render_stats (server, scratch);
    else
    if (is_reset) {
        s_reset_stats (server);
        s_render_stats (server, scratch);
    }
    else
        s_render_last_request (server, scratch);
    if (scratch->oom) {
        s_conn_close (self, CLOSE_NORMAL);
        return;
    }
    s_respond (self, 200, "application/json", scratch->data, scratch->len);
}

//  Parses and answers the requests waiting in `in`, one at a time: the next
//  pipelined request waits until the answer before it is rendered.
static void
s_conn_process (conn_t *self)
{
    while (true) {
        size_t pos = 0;
        bool paused = false;
        while (!self->dead && self->phase == PHASE_IDLE && !self->close_after_flush
           &&  pos < self->in.len) {
            if (self->out.len - self->out_off >= OUT_HIGH_WATER) {
                paused = true;
                break;
            }
            char *base = self->in.data + pos;
            size_t avail = self->in.len - pos;
            int rc = fu_http_parse (&self->request, base, avail);
            if (rc == FU_HTTP_MORE) {
                if (avail > MAX_RAW_REQUEST) {
                    s_respond_fatal (self, 413, "request too large");
                    break;
                }
                if (fu_http_head_done (&self->request) && self->request.expect_continue
                &&  !self->continue_sent) {
                    fu_buf_puts (&self->out, "HTTP/1.1 100 Continue\r\n\r\n");
                    self->continue_sent = true;
                }
                break;
            }
            if (rc < 0) {
                const char *why = self->request.error ? self->request.error : "bad request";
                if (-rc == 413)
                    why = "request body larger than 8 MB";
                s_respond_fatal (self, -rc, why);
                break;
            }
            s_handle_request (self, base);
            pos += self->request.total_len;
            fu_http_request_init (&self->request);
            self->continue_sent = false;
        }
        if (self->dead)
            return;
        fu_buf_consume (&self->in, pos);
        if (self->close_after_flush)
            self->in.len = 0;
        if (self->peer_eof && self->phase == PHASE_IDLE && !paused)
            self->close_after_flush = true;
        if (self->out.oom || self->in.oom || self->slow.oom) {
            s_conn_close (self, CLOSE_NORMAL);
            return;
        }
        s_conn_flush (self);
        //  Paused for a full output buffer that the socket took at once:
        //  no event will come to resume, so go on here.
        if (!paused || self->dead || self->out.len > 0)
            return;
    }
}

static void
s_conn_flush (conn_t *self)
{
    while (self->out_off < self->out.len) {
        ssize_t sent = send (self->fd, self->out.data + self->out_off,
                             self->out.len - self->out_off, MSG_NOSIGNAL);
        if (sent > 0) {
            self->out_off += (size_t) sent;
            continue;
        }
        if (sent < 0 && errno == EINTR)
            continue;
        if (sent < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            s_watch (self);
            return;
        }
        s_conn_close (self, CLOSE_PEER_GONE);
        return;
    }
    self->out.len = 0;
    self->out_off = 0;
    if (self->done_unflushed) {
        s_stat_add (&self->thread->stats.completed, self->done_unflushed);
        s_stat_add (&self->thread->stats.active, -self->done_unflushed);
        self->done_unflushed = 0;
    }
    if (self->close_after_flush && self->phase == PHASE_IDLE) {
        if (self->linger_after_flush && !self->peer_eof) {
            shutdown (self->fd, SHUT_WR);
            self->phase = PHASE_LINGER;
            self->in.len = 0;
            s_timer_arm_or_drop (self, LINGER_MS);
        }
        else {
            s_conn_close (self, CLOSE_NORMAL);
            return;
        }
    }
    s_watch (self);
}

static void
s_conn_on_readable (conn_t *self)
{
    size_t discarded = 0;
    while (true) {
        if (fu_buf_reserve (&self->in, READ_CHUNK)) {
            s_conn_close (self, CLOSE_NORMAL);
            return;
        }
        size_t space = self->in.cap - self->in.len;
        ssize_t got = recv (self->fd, self->in.data + self->in.len, space, 0);
        if (got > 0) {
            if (self->phase == PHASE_LINGER) {
                //  Discarded; a bounded amount per wake-up keeps the loop fair.
                discarded += (size_t) got;
                if (discarded > OUT_HIGH_WATER)
                    break;
                continue;
            }
            self->in.len += (size_t) got;
            if ((size_t) got < space || self->in.len > MAX_RAW_REQUEST)
                break;
            continue;
        }
        if (got == 0) {
            self->peer_eof = true;
            break;
        }
        if (errno == EINTR)
            continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK)
            break;
        s_conn_close (self, CLOSE_PEER_GONE);
        return;
    }
    if (self->phase == PHASE_LINGER) {
        if (self->peer_eof)
            s_conn_close (self, CLOSE_NORMAL);
        return;
    }
    if (self->peer_eof && s_in_flight (self)) {
        //  Cannot tell a half-close from a close: a client that stops
        //  sending while waiting for its answer is taken as gone.
        s_conn_close (self, CLOSE_PEER_GONE);
        return;
    }
    if (s_in_flight (self)) {
        //  Pipelined bytes wait for the answer in flight; only so many.
        if (self->in.len > MAX_RAW_REQUEST)
            s_conn_close (self, CLOSE_NORMAL);
        return;
    }
    s_conn_process (self);
}

static void
s_conn_on_timer (conn_t *self)
{
    uint64_t ticks;
    if (read (self->timer_fd, &ticks, sizeof ticks) < 0)
        return;                     //  spurious: the timer was re-armed meanwhile
    switch (self->phase) {
        case PHASE_DELAY:
            s_start_answer (self);
            break;
        case PHASE_STREAM:
            s_stream_pump (self);
            break;
        case PHASE_SLOW:
            s_slow_next (self);
            break;
        case PHASE_ABORT:
            s_conn_flush (self);
            if (!self->dead)
                s_conn_close (self, CLOSE_RESET);
            return;
        case PHASE_LINGER:
            s_conn_close (self, CLOSE_NORMAL);
            return;
        default:
            return;
    }
    if (self->dead)
        return;
    if (self->phase == PHASE_IDLE)
        s_conn_process (self);
    else
        s_conn_flush (self);
}

static void
s_conn_close (conn_t *self, close_t how)
{
    if (self->dead)
        return;
    thread_t *thread = self->thread;
    long unfinished = self->done_unflushed + (s_in_flight (self) ? 1 : 0);
    if (unfinished && how != CLOSE_SHUTDOWN) {
        s_stat_add (&thread->stats.active, -unfinished);
        if (how == CLOSE_PEER_GONE)
            s_stat_add (&thread->stats.client_disconnects, unfinished);
    }
    if (how == CLOSE_RESET) {
        struct linger linger = { .l_onoff = 1, .l_linger = 0 };
        setsockopt (self->fd, SOL_SOCKET, SO_LINGER, &linger, sizeof linger);
    }
    close (self->fd);
    if (self->timer_fd >= 0)
        close (self->timer_fd);
    self->fd = self->timer_fd = -1;
    self->dead = true;
    if (self->prev)
        self->prev->next = self->next;
    else
        thread->conns = self->next;
    if (self->next)
        self->next->prev = self->prev;
    //  Freed after the current batch of events, which may still name it.
    self->next = thread->dead;
    self->prev = NULL;
    thread->dead = self;
}

static void
s_conn_free (conn_t *self)
{
    fu_buf_free (&self->in);
    fu_buf_free (&self->out);
    fu_buf_free (&self->model);
    fu_buf_free (&self->slow);
    free (self);
}

static void
s_accept (thread_t *thread)
{
    while (true) {
        int fd = accept4 (thread->listen_fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EINTR || errno == ECONNABORTED)
                continue;
            if (errno != EAGAIN && errno != EWOULDBLOCK)
                fprintf (stderr, "fake_upstream: accept: %s\n", strerror (errno));
            return;
        }
        int one = 1;
        setsockopt (fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        conn_t *conn = calloc (1, sizeof *conn);
        if (!conn) {
            close (fd);
            continue;
        }
        conn->thread = thread;
        conn->fd = fd;
        conn->timer_fd = -1;
        conn->phase = PHASE_IDLE;
        fu_http_request_init (&conn->request);
        conn->events = EPOLLIN | EPOLLRDHUP;
        struct epoll_event event = { .events = conn->events, .data.u64 = (uintptr_t) conn };
        if (epoll_ctl (thread->epoll_fd, EPOLL_CTL_ADD, fd, &event)) {
            close (fd);
            free (conn);
            continue;
        }
        conn->next = thread->conns;
        if (thread->conns)
            thread->conns->prev = conn;
        thread->conns = conn;
    }
}

static void *
s_thread_main (void *arg)
{
    thread_t *thread = arg;
    struct epoll_event events [256];
    bool running = true;
    while (running) {
        int count = epoll_wait (thread->epoll_fd, events, 256, -1);
        if (count < 0) {
            if (errno == EINTR)
                continue;
            fprintf (stderr, "fake_upstream: epoll_wait: %s\n", strerror (errno));
            break;
        }
        for (int i = 0; i < count; i++) {
            uint64_t data = events [i].data.u64;
            unsigned tag = (unsigned) (data & TAG_MASK);
            uint32_t mask = events [i].events;
            if (tag == TAG_LISTENER)
                s_accept (thread);
            else
            if (tag == TAG_WAKE)
                running = false;
            else {
                conn_t *conn = (conn_t *) (uintptr_t) (data & ~(uint64_t) TAG_MASK);
                if (conn->dead)
                    continue;
                if (tag == TAG_TIMER)
                    s_conn_on_timer (conn);
                else {
                    if (mask & EPOLLOUT) {
                        s_conn_flush (conn);
                        if (!conn->dead && conn->phase == PHASE_IDLE
                        &&  conn->out_off == conn->out.len && conn->in.len)
                            s_conn_process (conn);
                    }
                    if (!conn->dead && (mask & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR)))
                        s_conn_on_readable (conn);
                }
            }
        }
        while (thread->dead) {
            conn_t *conn = thread->dead;
            thread->dead = conn->next;
            s_conn_free (conn);
        }
    }
    while (thread->conns)
        s_conn_close (thread->conns, CLOSE_SHUTDOWN);
    while (thread->dead) {
        conn_t *conn = thread->dead;
        thread->dead = conn->next;
        s_conn_free (conn);
    }
    return NULL;
}


//  --------------------------------------------------------------------------
//  Server

static int
s_listen (const struct sockaddr *address, socklen_t size)
{
    int fd = socket (address->sa_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    int one = 1;
    setsockopt (fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (setsockopt (fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one)
    ||  bind (fd, address, size) || listen (fd, 4096)) {
        int saved = errno;
        close (fd);
        errno = saved;
        return -1;
    }
    return fd;
}

static void
s_thread_destroy (thread_t **thread_p)
{
    thread_t *thread = *thread_p;
    if (!thread)
        return;
    if (thread->listen_fd >= 0)
        close (thread->listen_fd);
    if (thread->wake_fd >= 0)
        close (thread->wake_fd);
    if (thread->epoll_fd >= 0)
        close (thread->epoll_fd);
    fu_buf_free (&thread->scratch);
    free (thread);
    *thread_p = NULL;
}

static thread_t *
s_thread_new (fu_server_t *server, int index, int listen_fd)
{
    thread_t *thread = aligned_alloc (64, (sizeof (thread_t) + 63) / 64 * 64);
    if (!thread) {
        close (listen_fd);
        return NULL;
    }
    memset (thread, 0, sizeof *thread);
    thread->server = server;
    thread->index = index;
    thread->listen_fd = listen_fd;
    thread->epoll_fd = epoll_create1 (EPOLL_CLOEXEC);
    thread->wake_fd = eventfd (0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (thread->epoll_fd < 0 || thread->wake_fd < 0) {
        s_thread_destroy (&thread);
        return NULL;
    }
    struct epoll_event listen_event = { .events = EPOLLIN, .data.u64 = TAG_LISTENER };
    struct epoll_event wake_event = { .events = EPOLLIN, .data.u64 = TAG_WAKE };
    if (epoll_ctl (thread->epoll_fd, EPOLL_CTL_ADD, listen_fd, &listen_event)
    ||  epoll_ctl (thread->epoll_fd, EPOLL_CTL_ADD, thread->wake_fd, &wake_event)) {
        s_thread_destroy (&thread);
        return NULL;
    }
    return thread;
}

fu_server_t *
fu_server_new (const fu_config_t *config)
{
    fu_server_t *self = calloc (1, sizeof *self);
    if (!self)
        return NULL;
    self->config = *config;
    pthread_mutex_init (&self->last_lock, NULL);
    fu_http_request_init (&self->last_request);
    int threads = config->threads > 0 ? config->threads : 1;
    self->threads = calloc ((size_t) threads, sizeof *self->threads);
    if (!self->threads) {
        fu_server_destroy (&self);
        return NULL;
    }

    struct addrinfo hints = { .ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM,
                              .ai_flags = AI_PASSIVE | AI_NUMERICSERV };
    struct addrinfo *found = NULL;
    char port [16];
    snprintf (port, sizeof port, "%d", config->port);
    int rc = getaddrinfo (config->host, port, &hints, &found);
    if (rc) {
        fprintf (stderr, "fake_upstream: cannot resolve %s: %s\n", config->host, gai_strerror (rc));
        fu_server_destroy (&self);
        return NULL;
    }
    struct sockaddr_storage address;
    socklen_t address_len = (socklen_t) found->ai_addrlen;
    memcpy (&address, found->ai_addr, found->ai_addrlen);
    freeaddrinfo (found);

    for (int i = 0; i < threads; i++) {
        int fd = s_listen ((struct sockaddr *) &address, address_len);
        if (fd < 0) {
            fprintf (stderr, "fake_upstream: cannot listen on %s:%d: %s\n",
                     config->host, config->port, strerror (errno));
            fu_server_destroy (&self);
            return NULL;
        }
        if (i == 0) {
            //  With port 0 the others must join the port the first one got.
            getsockname (fd, (struct sockaddr *) &address, &address_len);
            void *raw = address.ss_family == AF_INET6
                ? (void *) &((struct sockaddr_in6 *) &address)->sin6_addr
                : (void *) &((struct sockaddr_in *) &address)->sin_addr;
            inet_ntop (address.ss_family, raw, self->host, sizeof self->host);
            self->port = ntohs (address.ss_family == AF_INET6
                ? ((struct sockaddr_in6 *) &address)->sin6_port
                : ((struct sockaddr_in *) &address)->sin_port);
        }
        self->threads [i] = s_thread_new (self, i, fd);
        if (!self->threads [i]) {
            fu_server_destroy (&self);
            return NULL;
        }
        self->thread_count = i + 1;
    }
    return self;
}

int
fu_server_port (fu_server_t *self)
{
    return self->port;
}

const char *
fu_server_host (fu_server_t *self)
{
    return self->host;
}

int
fu_server_start (fu_server_t *self)
{
    for (int i = 0; i < self->thread_count; i++) {
        thread_t *thread = self->threads [i];
        if (pthread_create (&thread->pthread, NULL, s_thread_main, thread))
            return -1;
        thread->started = true;
    }
    return 0;
}

void
fu_server_destroy (fu_server_t **self_p)
{
    fu_server_t *self = *self_p;
    if (!self)
        return;
    for (int i = 0; i < self->thread_count; i++) {
        thread_t *thread = self->threads [i];
        if (thread && thread->started) {
            uint64_t one = 1;
            if (write (thread->wake_fd, &one, sizeof one) < 0)
                fprintf (stderr, "fake_upstream: wake: %s\n", strerror (errno));
            pthread_join (thread->pthread, NULL);
        }
        s_thread_destroy (&self->threads [i]);
    }
    free (self->threads);
    fu_buf_free (&self->last_head);
    fu_buf_free (&self->last_body);
    pthread_mutex_destroy (&self->last_lock);
    free (self);
    *self_p = NULL;
}
