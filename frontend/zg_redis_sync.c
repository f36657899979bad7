/*  =========================================================================
    zg_redis_sync - the virtual keys' rate-limit counters, shared through
    Redis by every instance that uses it, from a thread of their own

    A CZMQ actor: its pipe brings a round (SYNC and the entries, as the key
    table filled them) and takes the same entries back with their totals.
    hiredis' blocking API with socket timeouts is enough: the thread does
    nothing else, every wait is bounded, and the loop that owns the key
    table only ever reads the answer when it is there. Entries cross the
    pipe as raw bytes of zg_keys_sync_t: both ends are this process.
    =========================================================================
*/
#include "frontend/zg_redis_sync.h"
#include "frontend/zg_redis_probe.h"
#include "common/zg_log.h"
#include "common/zg_selftest.h"

#include <assert.h>
#include <errno.h>
#include <hiredis/hiredis.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

//  The thread's state
typedef struct {
    const zg_config_t *config;  //  the caller's, which outlives the thread
    redisContext *context;      //  kept between rounds; NULL when closed
    int      timeout_ms;
    int      last;              //  -1 no round yet, 0 down, 1 up: logs name changes only
} s_state_t;

struct _zg_redis_sync_t {
    s_state_t      *state;
    zactor_t       *actor;
    zg_keys_sync_t *entries;    //  a round's keys, taken from the table
    bool            busy;       //  a round is out
};

static void
s_disconnect (s_state_t *self)
{
    if (self->context)
        redisFree (self->context);
    self->context = NULL;
}

static void
s_report (s_state_t *self, bool up, const char *reason)
{
    const zg_config_t *config = self->config;
    if (!up && self->last != 0)
        zg_warning ("redis %s:%d: %s; rate limits are counted per instance until it answers",
                    config->redis_host, config->redis_port, reason);
    else
    if (up && self->last == 0)
        zg_info ("redis %s:%d answers again: rate limits are shared again",
                 config->redis_host, config->redis_port);
    self->last = up ? 1 : 0;
}

//  zgate:rl:<window start>:<first 16 hex digits of the hash>:<what>
static void
s_counter_name (const zg_keys_sync_t *entry, const char *what, char *name, size_t size)
{
    snprintf (name, size, "zgate:rl:%lld:%.16s:%s", (long long) entry->window_start,
              entry->hash, what);
}

static int
s_append (s_state_t *self, const zg_keys_sync_t *entry, const char *what, int64_t add)
{
    char name [64];
    s_counter_name (entry, what, name, sizeof (name));
    if (add <= 0)
        return redisAppendCommand (self->context, "GET %s", name) == REDIS_OK ? 0 : -1;
    if (redisAppendCommand (self->context, "INCRBY %s %lld", name, (long long) add) != REDIS_OK)
        return -1;
    return redisAppendCommand (self->context, "EXPIRE %s %d", name, 2 * ZG_KEYS_WINDOW)
           == REDIS_OK ? 0 : -1;
}

//  One counter's answers: its total in *total, or -1 when the server
//  answered something else (the connection is fine), or -2 when the
//  connection failed (reason says why)
static int
s_read (s_state_t *self, int64_t add, int64_t *total, char *reason, size_t size)
{
    int rc = 0;
    for (int answer = 0; answer < (add > 0 ? 2 : 1); answer++) {
        redisReply *reply = NULL;
        if (redisGetReply (self->context, (void **) &reply) != REDIS_OK || !reply) {
            const redisContext *context = self->context;
            bool timed_out = context->err == REDIS_ERR_IO
                          && (strcmp (context->errstr, strerror (EAGAIN)) == 0
                          ||  strcmp (context->errstr, strerror (EWOULDBLOCK)) == 0);
            if (timed_out)
                snprintf (reason, size, "no answer within %d ms", self->timeout_ms);
            else
            if (context->err == REDIS_ERR_EOF)
                snprintf (reason, size, "connection closed by the server");
            else
                snprintf (reason, size, "%s", context->errstr);
            if (reply)
                freeReplyObject (reply);
            return -2;
        }
        if (answer == 0) {
            if (reply->type == REDIS_REPLY_INTEGER)
                *total = (int64_t) reply->integer;
            else
            if (reply->type == REDIS_REPLY_NIL)
                *total = 0;
            else
            if (reply->type == REDIS_REPLY_STRING && reply->str) {
                char *end = NULL;
                errno = 0;
                long long value = strtoll (reply->str, &end, 10);
                if (errno || end == reply->str || *end || value < 0)
                    rc = -1;
                *total = (int64_t) value;
            }
            else {
                if (reply->type == REDIS_REPLY_ERROR && reply->str)
                    snprintf (reason, size, "%s", reply->str);
                rc = -1;
            }
        }
        freeReplyObject (reply);
    }
    return rc;
}

//  A round: every entry's increments added and totals read, in one
//  pipelined batch. Entries not answered stay unknown.
static void
s_round (s_state_t *self, zg_keys_sync_t *entries, size_t count)
{
    char reason [256] = "";
    if (!self->context) {
        self->context = zg_redis_connect (self->config, reason, sizeof (reason));
        if (!self->context) {
            s_report (self, false, reason);
            return;
        }
    }
    int64_t deadline = zclock_mono () + 2 * (int64_t) self->timeout_ms;
    for (size_t index = 0; index < count; index++)
        if (s_append (self, &entries [index], "rpm", entries [index].add_requests)
        ||  s_append (self, &entries [index], "tpm", entries [index].add_tokens)) {
            s_disconnect (self);
            s_report (self, false, "out of memory");
            return;
        }
    bool refused = false;
    for (size_t index = 0; index < count; index++) {
        zg_keys_sync_t *entry = &entries [index];
        int rc_requests = s_read (self, entry->add_requests, &entry->total_requests,
                                  reason, sizeof (reason));
        int rc_tokens = rc_requests == -2 ? -2
                      : s_read (self, entry->add_tokens, &entry->total_tokens,
                                reason, sizeof (reason));
        if (rc_requests == -2 || rc_tokens == -2) {
            s_disconnect (self);
            s_report (self, false, reason);
            return;
        }
        entry->known = rc_requests == 0 && rc_tokens == 0;
        refused = refused || !entry->known;
        if (zclock_mono () > deadline && index + 1 < count) {
            snprintf (reason, sizeof (reason), "a round took over %d ms", 2 * self->timeout_ms);
            s_disconnect (self);
            s_report (self, false, reason);
            return;
        }
    }
    if (refused && self->last != 0)
        zg_warning ("redis %s:%d: a rate-limit counter was refused: %s", self->config->redis_host,
                    self->config->redis_port, *reason ? reason : "not a number");
    s_report (self, true, NULL);
}

static void
s_actor (zsock_t *pipe, void *args)
{
    s_state_t *self = (s_state_t *) args;
    //  hiredis writes with write (2): a server gone must be EPIPE, not a signal
    sigset_t mask;
    sigemptyset (&mask);
    sigaddset (&mask, SIGPIPE);
    pthread_sigmask (SIG_BLOCK, &mask, NULL);
    zsock_signal (pipe, 0);
    while (true) {
        zmsg_t *message = zmsg_recv (pipe);
        if (!message)
            break;
        char *command = zmsg_popstr (message);
        bool stop = !command || strcmp (command, "$TERM") == 0;
        if (!stop && strcmp (command, "SYNC") == 0) {
            zframe_t *frame = zmsg_pop (message);
            size_t size = frame ? zframe_size (frame) : 0;
            size_t count = size / sizeof (zg_keys_sync_t);
            //  A copy: the frame's bytes need not be aligned for the struct
            zg_keys_sync_t *entries = count ? (zg_keys_sync_t *) malloc (size) : NULL;
            if (entries && size % sizeof (zg_keys_sync_t) == 0) {
                memcpy (entries, zframe_data (frame), size);
                s_round (self, entries, count);
                zframe_reset (frame, entries, size);
            }
            free (entries);
            if (!frame)
                frame = zframe_new (NULL, 0);
            if (frame)
                zframe_send (&frame, pipe, 0);
        }
        zstr_free (&command);
        zmsg_destroy (&message);
        if (stop)
            break;
    }
    s_disconnect (self);
}

zg_redis_sync_t *
zg_redis_sync_new (const zg_config_t *config)
{
    assert (config);
    if (!config->redis_host)
        return NULL;
    zg_redis_sync_t *self = (zg_redis_sync_t *) calloc (1, sizeof (zg_redis_sync_t));
    if (self)
        self->state = (s_state_t *) calloc (1, sizeof (s_state_t));
    if (self && self->state) {
        self->state->config = config;
        self->state->timeout_ms = config->redis_timeout_ms > 0 ? config->redis_timeout_ms : 1000;
        self->state->last = -1;
        self->actor = zactor_new (s_actor, self->state);
    }
    if (!self || !self->actor) {
        zg_error ("redis: cannot start the thread that shares rate limits through %s:%d",
                  config->redis_host, config->redis_port);
        zg_redis_sync_destroy (&self);
        return NULL;
    }
    return self;
}

void
zg_redis_sync_destroy (zg_redis_sync_t **self_p)
{
    assert (self_p);
    zg_redis_sync_t *self = *self_p;
    if (!self)
        return;
    zactor_destroy (&self->actor);      //  the thread is gone after this
    free (self->state);
    free (self->entries);
    free (self);
    *self_p = NULL;
}

zsock_t *
zg_redis_sync_socket (zg_redis_sync_t *self)
{
    assert (self);
    return zactor_sock (self->actor);
}

bool
zg_redis_sync_busy (zg_redis_sync_t *self)
{
    assert (self);
    return self->busy;
}

int
zg_redis_sync_start (zg_redis_sync_t *self, zg_keys_t *keys, int64_t now)
{
    assert (self);
    assert (keys);
    if (self->busy)
        return 0;
    if (!self->entries)
        self->entries = (zg_keys_sync_t *) calloc (ZG_REDIS_SYNC_BATCH, sizeof (zg_keys_sync_t));
    if (!self->entries)
        return -1;
    size_t count = zg_keys_sync_take (keys, now, self->entries, ZG_REDIS_SYNC_BATCH);
    if (!count)
        return 0;
    zmsg_t *message = zmsg_new ();
    if (!message)
        return -1;
    if (zmsg_addstr (message, "SYNC")
    ||  zmsg_addmem (message, self->entries, count * sizeof (zg_keys_sync_t))
    ||  zmsg_send (&message, self->actor)) {
        zmsg_destroy (&message);
        return -1;                      //  the counts stay unpushed for the next round
    }
    self->busy = true;
    return (int) count;
}

int
zg_redis_sync_finish (zg_redis_sync_t *self, zg_keys_t *keys)
{
    assert (self);
    assert (keys);
    zframe_t *frame = zframe_recv (self->actor);
    if (!frame)
        return -1;
    self->busy = false;
    size_t size = zframe_size (frame);
    if (size % sizeof (zg_keys_sync_t) != 0) {
        zframe_destroy (&frame);
        return -1;
    }
    int learned = 0;
    for (size_t offset = 0; offset < size; offset += sizeof (zg_keys_sync_t)) {
        zg_keys_sync_t entry;
        memcpy (&entry, zframe_data (frame) + offset, sizeof (entry));
        if (zg_keys_sync_learn (keys, &entry) == 0)
            learned++;
    }
    zframe_destroy (&frame);
    return learned;
}


//  --------------------------------------------------------------------------
//  Self test: a Redis that is not there, and one that never answers. A real
//  one is tests/e2e/test_ratelimit_redis.py's.

//  One round against what config names: it must end, within bound_ms,
//  with nothing learned and the counts still to push
static void
s_test_round_fails (const zg_config_t *config, zg_keys_t *keys, const char *hash, int64_t now,
                    int64_t bound_ms)
{
    zg_redis_sync_t *sync = zg_redis_sync_new (config);
    ZG_CHECK (sync);
    int64_t started = zclock_mono ();
    ZG_CHECK (zg_redis_sync_start (sync, keys, now) == 1);
    ZG_CHECK (zg_redis_sync_busy (sync));
    //  While it is out, nothing else is sent
    ZG_CHECK (zg_redis_sync_start (sync, keys, now) == 0);
    zpoller_t *poller = zpoller_new (zg_redis_sync_socket (sync), NULL);
    ZG_CHECK (poller);
    ZG_CHECK (zpoller_wait (poller, (int) bound_ms) != NULL);
    ZG_CHECK (zclock_mono () - started < bound_ms);
    ZG_CHECK (zg_redis_sync_finish (sync, keys) == 0);
    ZG_CHECK (!zg_redis_sync_busy (sync));
    zpoller_destroy (&poller);
    zg_redis_sync_destroy (&sync);
    zg_keys_sync_t entry;
    ZG_CHECK (zg_keys_sync_take (keys, now, &entry, 1) == 1);
    ZG_CHECK (strcmp (entry.hash, hash) == 0 && entry.add_requests == 1);
}

void
zg_redis_sync_test (bool verbose)
{
    printf (" * zg_redis_sync: ");
    signal (SIGPIPE, SIG_IGN);
    zg_config_t *config = zg_config_new_default ();
    ZG_CHECK (config);
    //  No Redis: no thread
    ZG_CHECK (zg_redis_sync_new (config) == NULL);
    zg_redis_sync_t *sync = NULL;
    zg_redis_sync_destroy (&sync);

    zg_keys_t *keys = zg_keys_new (0, 0);
    ZG_CHECK (keys);
    zg_keys_set_shared (keys, true);
    char hash [ZG_KEYS_HASH_HEX + 1];
    zg_keys_hash ("sk-sync-test", hash);
    zg_key_record_t record;
    memset (&record, 0, sizeof (record));
    record.token = hash;
    record.max_budget = record.soft_budget = -1;
    record.rpm_limit = 5;
    record.tpm_limit = -1;
    record.max_parallel_requests = -1;
    ZG_CHECK (zg_keys_upsert (keys, &record) == 0);
    const int64_t now = 1767225600 + 5;
    zg_keys_verdict_t verdict;
    zg_keys_ticket_t ticket;
    ZG_CHECK (zg_keys_admit (keys, hash, NULL, "gpt-4o", now, &verdict, &ticket) == 0);
    zg_keys_finish (keys, &ticket);

    //  Nothing listening: the round fails at once
    int silent_port;
    int silent = zg_selftest_loopback_socket (true, &silent_port);
    close (silent);
    config->redis_host = strdup ("127.0.0.1");
    config->redis_port = silent_port;
    config->redis_timeout_ms = 200;
    s_test_round_fails (config, keys, hash, now, 5000);

    //  A server that never answers: the round ends on its timeouts
    silent = zg_selftest_loopback_socket (true, &silent_port);
    config->redis_port = silent_port;
    s_test_round_fails (config, keys, hash, now, 5000);
    close (silent);

    //  Nothing to sync: no round
    sync = zg_redis_sync_new (config);
    ZG_CHECK (sync);
    zg_keys_t *idle = zg_keys_new (0, 0);
    ZG_CHECK (idle);
    ZG_CHECK (zg_redis_sync_start (sync, idle, now) == 0);
    ZG_CHECK (!zg_redis_sync_busy (sync));
    zg_keys_destroy (&idle);
    zg_redis_sync_destroy (&sync);
    ZG_CHECK (sync == NULL);

    zg_keys_destroy (&keys);
    zg_config_destroy (&config);
    if (verbose)
        printf ("(no Redis, a silent one) ");
    printf ("OK\n");
}
