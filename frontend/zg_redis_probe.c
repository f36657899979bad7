/*  =========================================================================
    zg_redis_probe - the frontend's watch on Redis, in a thread of its own

    A CZMQ actor whose only input is its pipe ($TERM): it sleeps on the pipe
    between checks, so stopping never waits for more than the check in
    progress. hiredis' blocking API with socket timeouts is enough here:
    the thread does nothing else, and every wait is bounded.
    =========================================================================
*/
#include "frontend/zg_redis_probe.h"
#include "common/zg_log.h"
#include "common/zg_selftest.h"

#include <assert.h>
#include <czmq.h>
#include <errno.h>
#include <hiredis/hiredis.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

//  What a check needs, copied from the configuration
typedef struct {
    char    *host;
    int      port;
    char    *username;
    char    *password;
    int      db;
    int      timeout_ms;
    int      interval_ms;
    zg_scoreboard_t *board;
    int      slot;
    redisContext *context;      //  kept between checks; NULL when closed
    int      last;              //  -1 not checked yet, 0 down, 1 up: logs name changes only
} s_watch_t;

struct _zg_redis_probe_t {
    s_watch_t *watch;
    zactor_t  *actor;
};

static uint64_t
s_now_us (void)
{
    struct timespec now;
    clock_gettime (CLOCK_MONOTONIC, &now);
    return (uint64_t) now.tv_sec * 1000000u + (uint64_t) now.tv_nsec / 1000u;
}

static void
s_watch_destroy (s_watch_t **self_p)
{
    s_watch_t *self = *self_p;
    if (!self)
        return;
    if (self->context)
        redisFree (self->context);
    free (self->host);
    free (self->username);
    free (self->password);
    free (self);
    *self_p = NULL;
}

static s_watch_t *
s_watch_new (const zg_config_t *config, zg_scoreboard_t *board, int slot)
{
    s_watch_t *self = (s_watch_t *) calloc (1, sizeof (s_watch_t));
    if (!self)
        return NULL;
    self->host = strdup (config->redis_host);
    self->port = config->redis_port > 0 ? config->redis_port : 6379;
    self->username = config->redis_username ? strdup (config->redis_username) : NULL;
    self->password = config->redis_password ? strdup (config->redis_password) : NULL;
    self->db = config->redis_db;
    self->timeout_ms = config->redis_timeout_ms > 0 ? config->redis_timeout_ms : 1000;
    self->interval_ms = config->redis_probe_interval_ms > 0 ? config->redis_probe_interval_ms : 5000;
    self->board = board;
    self->slot = slot;
    self->last = -1;
    if (!self->host || (config->redis_username && !self->username)
    ||  (config->redis_password && !self->password))
        s_watch_destroy (&self);
    return self;
}

static void
s_disconnect (s_watch_t *self)
{
    if (self->context)
        redisFree (self->context);
    self->context = NULL;
}

//  A reason must never carry the password, whatever a server echoes
static void
s_scrub (const s_watch_t *self, char *reason)
{
    size_t length = self->password ? strlen (self->password) : 0;
    char *found;
    while (length && (found = strstr (reason, self->password)) != NULL) {
        size_t mask = length < 4 ? length : 4;
        memset (found, '*', mask);
        memmove (found + mask, found + length, strlen (found + length) + 1);
    }
}

static void
s_reason (const s_watch_t *self, char *reason, size_t size, const char *format, ...)
    __attribute__ ((format (printf, 4, 5)));

static void
s_reason (const s_watch_t *self, char *reason, size_t size, const char *format, ...)
{
    va_list args;
    va_start (args, format);
    vsnprintf (reason, size, format, args);
    va_end (args);
    s_scrub (self, reason);
}

//  hiredis writes strerror's text for I/O errors; a socket timeout is
//  EAGAIN (a command) or ETIMEDOUT (connecting)
static bool
s_timed_out (const redisContext *context)
{
    return context->err == REDIS_ERR_IO
        && (strcmp (context->errstr, strerror (EAGAIN)) == 0
        ||  strcmp (context->errstr, strerror (EWOULDBLOCK)) == 0
        ||  strcmp (context->errstr, strerror (ETIMEDOUT)) == 0
        ||  strcmp (context->errstr, strerror (EINPROGRESS)) == 0);
}

static void
s_io_reason (const s_watch_t *self, const redisContext *context, const char *what,
             char *reason, size_t size)
{
    if (s_timed_out (context))
        s_reason (self, reason, size, "%s: no answer within %d ms", what, self->timeout_ms);
    else
    if (context->err == REDIS_ERR_EOF)
        s_reason (self, reason, size, "%s: connection closed by the server", what);
    else
        s_reason (self, reason, size, "%s: %s", what, context->errstr);
}

//  One command whose answer must be the status `expected`; -1 with why
static int
s_expect (s_watch_t *self, redisReply *reply, const char *what, const char *expected,
          char *reason, size_t size)
{
    if (!reply) {
        s_io_reason (self, self->context, what, reason, size);
        return -1;
    }
    int rc = 0;
    if (reply->type == REDIS_REPLY_ERROR)
        s_reason (self, reason, size, "%s refused: %s", what, reply->str ? reply->str : "");
    else
    if (reply->type != REDIS_REPLY_STATUS || !reply->str || strcmp (reply->str, expected) != 0)
        s_reason (self, reason, size, "%s: unexpected answer (not %s)", what, expected);
    else
        rc = 1;
    freeReplyObject (reply);
    return rc ? 0 : -1;
}

static int
s_connect (s_watch_t *self, char *reason, size_t size)
{
    struct timeval timeout = { self->timeout_ms / 1000, (self->timeout_ms % 1000) * 1000 };
    self->context = redisConnectWithTimeout (self->host, self->port, timeout);
    if (!self->context) {
        s_reason (self, reason, size, "connect: out of memory");
        return -1;
    }
    if (self->context->err) {
        s_io_reason (self, self->context, "connect", reason, size);
        s_disconnect (self);
        return -1;
    }
    int rc = redisSetTimeout (self->context, timeout) == REDIS_OK ? 0 : -1;
    if (rc)
        s_reason (self, reason, size, "connect: cannot set the socket timeouts");
    if (rc == 0 && self->password) {
        redisReply *reply = self->username
            ? (redisReply *) redisCommand (self->context, "AUTH %s %s", self->username, self->password)
            : (redisReply *) redisCommand (self->context, "AUTH %s", self->password);
        rc = s_expect (self, reply, "AUTH", "OK", reason, size);
    }
    if (rc == 0 && self->db != 0)
        rc = s_expect (self, (redisReply *) redisCommand (self->context, "SELECT %d", self->db),
                       "SELECT", "OK", reason, size);
    if (rc)
        s_disconnect (self);
    return rc;
}

//  A check: 0 and the PING's round trip, or -1 and why
static int
s_check (s_watch_t *self, uint64_t *latency_us, char *reason, size_t size)
{
    for (int attempt = 0; attempt < 2; attempt++) {
        bool kept = self->context != NULL;
        if (!kept && s_connect (self, reason, size))
            return -1;
        uint64_t started = s_now_us ();
        redisReply *reply = (redisReply *) redisCommand (self->context, "PING");
        uint64_t finished = s_now_us ();
        bool retry = !reply && kept && !s_timed_out (self->context);
        if (s_expect (self, reply, "PING", "PONG", reason, size) == 0) {
            *latency_us = finished - started;
            return 0;
        }
        s_disconnect (self);
        if (!retry)
            return -1;
    }
    return -1;
}

//  Check, report, and log what changed
static void
s_round (s_watch_t *self)
{
    char reason [ZG_SB_REASON_MAX];
    reason [0] = 0;
    uint64_t latency_us = 0;
    bool up = s_check (self, &latency_us, reason, sizeof (reason)) == 0;
    zg_scoreboard_redis_report (self->board, self->slot, up, latency_us, up ? NULL : reason);
    if (up && self->last != 1)
        zg_info ("redis %s:%d answers (PING %.3f ms)", self->host, self->port,
                 (double) latency_us / 1000.0);
    else
    if (!up && self->last != 0)
        zg_warning ("redis %s:%d: %s (reported in /health/readiness; zgate serves without it)",
                    self->host, self->port, reason);
    self->last = up ? 1 : 0;
}

static void
s_actor (zsock_t *pipe, void *args)
{
    s_watch_t *self = (s_watch_t *) args;
    //  hiredis writes with write (2): a server gone must be EPIPE, not a signal
    sigset_t mask;
    sigemptyset (&mask);
    sigaddset (&mask, SIGPIPE);
    pthread_sigmask (SIG_BLOCK, &mask, NULL);
    zpoller_t *poller = zpoller_new (pipe, NULL);
    zsock_signal (pipe, poller ? 0 : -1);
    if (!poller)
        return;
    int64_t next = zclock_mono ();
    while (true) {
        if (zclock_mono () >= next) {
            s_round (self);
            next = zclock_mono () + self->interval_ms;
        }
        int64_t wait = next - zclock_mono ();
        void *which = zpoller_wait (poller, wait > 0 ? (int) wait : 0);
        if (which == pipe) {
            char *command = zstr_recv (pipe);
            bool stop = !command || strcmp (command, "$TERM") == 0;
            zstr_free (&command);
            if (stop)
                break;
        }
        else
        if (zpoller_terminated (poller))
            break;
    }
    zpoller_destroy (&poller);
    s_disconnect (self);
}

zg_redis_probe_t *
zg_redis_probe_new (const zg_config_t *config, zg_scoreboard_t *board, int slot)
{
    assert (config);
    if (!config->redis_host)
        return NULL;
    zg_redis_probe_t *self = (zg_redis_probe_t *) calloc (1, sizeof (zg_redis_probe_t));
    if (self)
        self->watch = s_watch_new (config, board, slot);
    if (self && self->watch)
        self->actor = zactor_new (s_actor, self->watch);
    if (!self || !self->actor) {
        zg_error ("redis: cannot start the thread that watches %s:%d", config->redis_host,
                  config->redis_port);
        zg_redis_probe_destroy (&self);
        return NULL;
    }
    return self;
}

void
zg_redis_probe_destroy (zg_redis_probe_t **self_p)
{
    assert (self_p);
    zg_redis_probe_t *self = *self_p;
    if (!self)
        return;
    zactor_destroy (&self->actor);      //  the thread is gone after this
    s_watch_destroy (&self->watch);
    free (self);
    *self_p = NULL;
}

int
zg_redis_check (const zg_config_t *config, uint64_t *latency_us, char *reason, size_t size)
{
    assert (config);
    assert (latency_us);
    assert (reason && size);
    if (!config->redis_host) {
        snprintf (reason, size, "no Redis configured");
        return -1;
    }
    s_watch_t *watch = s_watch_new (config, NULL, -1);
    if (!watch) {
        snprintf (reason, size, "out of memory");
        return -1;
    }
    int rc = s_check (watch, latency_us, reason, size);
    s_watch_destroy (&watch);
    return rc;
}

struct redisContext *
zg_redis_connect (const zg_config_t *config, char *reason, size_t size)
{
    assert (config);
    assert (reason && size);
    if (!config->redis_host) {
        snprintf (reason, size, "no Redis configured");
        return NULL;
    }
    s_watch_t *watch = s_watch_new (config, NULL, -1);
    if (!watch) {
        snprintf (reason, size, "out of memory");
        return NULL;
    }
    redisContext *context = NULL;
    if (s_connect (watch, reason, size) == 0) {
        context = watch->context;
        watch->context = NULL;
    }
    s_watch_destroy (&watch);
    return context;
}


//  --------------------------------------------------------------------------
//  Self test: a fake Redis that speaks just enough RESP, in a thread

typedef enum {
    S_FAKE_ANSWER,              //  AUTH against its password, PONG to PING, OK to SELECT
    S_FAKE_SILENT,              //  reads and never answers
    S_FAKE_HANG_UP,             //  closes each connection once it answered a PING
} s_fake_mode_t;

typedef struct {
    int listen_fd;
    int port;
    int stop [2];
    _Atomic int mode;
    const char *password;
    _Atomic int connections;
    pthread_t thread;
} s_fake_t;

//  A whole command in buffer: its argument count and first arguments, and
//  its length; 0 while incomplete
static size_t
s_fake_parse (const char *buffer, size_t used, char arguments [3][64], int *count)
{
    const char *end = buffer + used;
    const char *cursor = buffer;
    if (cursor >= end || *cursor != '*')
        return 0;
    const char *line = memchr (cursor, '\n', (size_t) (end - cursor));
    if (!line)
        return 0;
    *count = atoi (cursor + 1);
    cursor = line + 1;
    for (int index = 0; index < *count; index++) {
        if (cursor >= end || *cursor != '$')
            return 0;
        line = memchr (cursor, '\n', (size_t) (end - cursor));
        if (!line)
            return 0;
        size_t length = (size_t) atoi (cursor + 1);
        cursor = line + 1;
        if ((size_t) (end - cursor) < length + 2)
            return 0;
        if (index < 3)
            snprintf (arguments [index], 64, "%.*s", (int) length, cursor);
        cursor += length + 2;
    }
    return (size_t) (cursor - buffer);
}

static void
s_fake_serve (s_fake_t *self, int fd)
{
    char buffer [4096];
    size_t used = 0;
    bool authenticated = self->password == NULL;
    while (true) {
        struct pollfd items [2] = { { fd, POLLIN, 0 }, { self->stop [0], POLLIN, 0 } };
        if (poll (items, 2, -1) <= 0 || items [1].revents)
            break;
        ssize_t got = read (fd, buffer + used, sizeof (buffer) - used);
        if (got <= 0)
            break;
        used += (size_t) got;
        char arguments [3][64];
        int count = 0;
        size_t length;
        while ((length = s_fake_parse (buffer, used, arguments, &count)) > 0) {
            memmove (buffer, buffer + length, used - length);
            used -= length;
            if (atomic_load (&self->mode) == S_FAKE_SILENT)
                continue;
            const char *answer = "-ERR unknown command\r\n";
            if (strcasecmp (arguments [0], "AUTH") == 0) {
                authenticated = self->password
                             && strcmp (arguments [count == 3 ? 2 : 1], self->password) == 0;
                answer = authenticated ? "+OK\r\n"
                       : "-WRONGPASS invalid username-password pair or user is disabled.\r\n";
            }
            else
            if (!authenticated)
                answer = "-NOAUTH Authentication required.\r\n";
            else
            if (strcasecmp (arguments [0], "PING") == 0)
                answer = "+PONG\r\n";
            else
            if (strcasecmp (arguments [0], "SELECT") == 0)
                answer = atoi (arguments [1]) < 16 ? "+OK\r\n" : "-ERR DB index is out of range\r\n";
            if (write (fd, answer, strlen (answer)) < 0)
                return;
            if (atomic_load (&self->mode) == S_FAKE_HANG_UP && strcasecmp (arguments [0], "PING") == 0)
                return;
        }
    }
}

static void *
s_fake_run (void *args)
{
    s_fake_t *self = (s_fake_t *) args;
    while (true) {
        struct pollfd items [2] = { { self->listen_fd, POLLIN, 0 }, { self->stop [0], POLLIN, 0 } };
        if (poll (items, 2, -1) <= 0 || items [1].revents)
            break;
        int fd = accept (self->listen_fd, NULL, NULL);
        if (fd < 0)
            continue;
        atomic_fetch_add (&self->connections, 1);
        s_fake_serve (self, fd);
        close (fd);
    }
    return NULL;
}

static void
s_fake_start (s_fake_t *self, const char *password)
{
    memset (self, 0, sizeof (*self));
    self->password = password;
    self->listen_fd = zg_selftest_loopback_socket (true, &self->port);
    ZG_CHECK (pipe (self->stop) == 0);
    ZG_CHECK (pthread_create (&self->thread, NULL, s_fake_run, self) == 0);
}

static void
s_fake_stop (s_fake_t *self)
{
    ZG_CHECK (write (self->stop [1], "x", 1) == 1);
    pthread_join (self->thread, NULL);
    close (self->stop [0]);
    close (self->stop [1]);
    close (self->listen_fd);
}

//  Waits (at most 10 s) until readiness' text holds needle
static bool
s_readiness_shows (zg_scoreboard_t *board, const char *needle)
{
    for (int attempt = 0; attempt < 1000; attempt++) {
        char *json = NULL;
        zg_scoreboard_readiness (board, NULL, false, &json);
        bool found = json && strstr (json, needle);
        free (json);
        if (found)
            return true;
        usleep (10000);
    }
    return false;
}

void
zg_redis_probe_test (bool verbose)
{
    printf (" * zg_redis_probe: ");
    signal (SIGPIPE, SIG_IGN);
    zg_config_t *config = zg_config_new_default ();
    ZG_CHECK (config);
    char reason [ZG_SB_REASON_MAX];
    uint64_t latency_us = 0;

    //  No Redis configured: nothing to watch
    ZG_CHECK (zg_redis_probe_new (config, NULL, -1) == NULL);
    ZG_CHECK (zg_redis_check (config, &latency_us, reason, sizeof (reason)) == -1);
    zg_redis_probe_t *probe = NULL;
    zg_redis_probe_destroy (&probe);

    s_fake_t fake;
    s_fake_start (&fake, "right-password");
    config->redis_host = strdup ("127.0.0.1");
    config->redis_port = fake.port;
    config->redis_timeout_ms = 200;
    config->redis_probe_interval_ms = 100;

    //  No password: the server asks for one
    ZG_CHECK (zg_redis_check (config, &latency_us, reason, sizeof (reason)) == -1);
    ZG_CHECK (strcmp (reason, "PING refused: NOAUTH Authentication required.") == 0);
    //  A wrong one: refused, and the reason never holds it
    config->redis_password = strdup ("wrong-password");
    ZG_CHECK (zg_redis_check (config, &latency_us, reason, sizeof (reason)) == -1);
    ZG_CHECK (strcmp (reason, "AUTH refused: WRONGPASS invalid username-password pair or user "
                              "is disabled.") == 0);
    //  The right one, with an ACL user and a database
    free (config->redis_password);
    config->redis_password = strdup ("right-password");
    config->redis_username = strdup ("ops");
    config->redis_db = 3;
    ZG_CHECK (zg_redis_check (config, &latency_us, reason, sizeof (reason)) == 0);
    config->redis_db = 99;
    ZG_CHECK (zg_redis_check (config, &latency_us, reason, sizeof (reason)) == -1);
    ZG_CHECK (strcmp (reason, "SELECT refused: ERR DB index is out of range") == 0);
    config->redis_db = 0;

    //  A server that echoes the password back never gets it into a reason
    s_watch_t *watch = s_watch_new (config, NULL, -1);
    ZG_CHECK (watch);
    s_reason (watch, reason, sizeof (reason), "AUTH refused: bad right-password for ops");
    ZG_CHECK (strcmp (reason, "AUTH refused: bad **** for ops") == 0);
    s_watch_destroy (&watch);

    //  Nothing listening: refused at once
    int closed = zg_selftest_closed_port ();
    config->redis_port = closed;
    ZG_CHECK (zg_redis_check (config, &latency_us, reason, sizeof (reason)) == -1);
    ZG_CHECK (strcmp (reason, "connect: Connection refused") == 0);
    config->redis_port = fake.port;

    //  A server that accepts and never answers: one timeout, not a hang
    atomic_store (&fake.mode, S_FAKE_SILENT);
    int64_t started = zclock_mono ();
    ZG_CHECK (zg_redis_check (config, &latency_us, reason, sizeof (reason)) == -1);
    ZG_CHECK (zclock_mono () - started < 5000);
    ZG_CHECK (strcmp (reason, "AUTH: no answer within 200 ms") == 0);
    atomic_store (&fake.mode, S_FAKE_ANSWER);

    //  The thread: its checks reach readiness and /metrics
    zg_scoreboard_t *board = zg_scoreboard_new_private (config, 1);
    ZG_CHECK (board);
    zg_scoreboard_assign (board, 0, ZG_SB_FRONTEND);
    zg_scoreboard_claim (board, 0, "frontend");
    probe = zg_redis_probe_new (config, board, 0);
    ZG_CHECK (probe);
    ZG_CHECK (s_readiness_shows (board, "\"redis\":\"healthy\""));
    //  A server that closes idle connections: the check is retried on a
    //  new connection, and Redis stays healthy
    atomic_store (&fake.mode, S_FAKE_HANG_UP);
    int connections = atomic_load (&fake.connections);
    for (int attempt = 0; attempt < 1000 && atomic_load (&fake.connections) < connections + 3;
         attempt++) {
        zg_scoreboard_beat (board, 0);
        usleep (10000);
    }
    ZG_CHECK (atomic_load (&fake.connections) >= connections + 3);
    char *text = zg_scoreboard_metrics (board, config);
    ZG_CHECK (text && strstr (text, "litellm_redis_fails_total{redis=\"redis\"} 0\n"));
    free (text);
    ZG_CHECK (s_readiness_shows (board, "\"redis\":\"healthy\""));
    //  Silent: reported with the reason, readiness itself never waits
    atomic_store (&fake.mode, S_FAKE_SILENT);
    for (int attempt = 0; attempt < 1000; attempt++) {
        zg_scoreboard_beat (board, 0);
        char *json = NULL;
        int64_t asked = zclock_mono ();
        zg_scoreboard_readiness (board, NULL, false, &json);
        ZG_CHECK (zclock_mono () - asked < 1000);
        bool found = json && strstr (json, "\"redis\":\"unhealthy: AUTH: no answer within 200 ms\"");
        if (verbose && found)
            puts (json);
        free (json);
        if (found)
            break;
        usleep (10000);
    }
    ZG_CHECK (s_readiness_shows (board, "\"redis\":\"unhealthy: AUTH: no answer within 200 ms\""));
    text = zg_scoreboard_metrics (board, config);
    ZG_CHECK (text && !strstr (text, "litellm_redis_fails_total{redis=\"redis\"} 0\n"));
    ZG_CHECK (strstr (text, "zgate_redis_up 0\n"));
    free (text);
    //  Stopping waits for the check in progress at most
    started = zclock_mono ();
    zg_redis_probe_destroy (&probe);
    ZG_CHECK (probe == NULL);
    ZG_CHECK (zclock_mono () - started < 5000);
    zg_redis_probe_destroy (&probe);

    s_fake_stop (&fake);
    zg_scoreboard_destroy (&board);
    zg_config_destroy (&config);
    printf ("OK\n");
}
