/*  =========================================================================
    zg_redis_sync - the virtual keys' rate-limit counters, shared through
    Redis by every instance that uses it, from a thread of their own

    The frontend's loop counts every request and token in its key table
    (zg_keys) as without Redis, and never waits on Redis. Every
    redis_sync_interval_ms it starts a round: the keys' increments since
    their last push (zg_keys_sync_take) go to this thread in one message;
    the thread adds them to Redis with one pipelined batch and sends the
    window's totals back; the loop hands them to the table
    (zg_keys_sync_learn) when the answer comes. One round at a time: while
    one is out, later ticks are skipped.

    In Redis, per key and window (a minute of unix time, the same on every
    instance), under the first 16 hex digits of the key's hash:

        zgate:rl:<window start>:<hash prefix>:rpm   requests (INCRBY)
        zgate:rl:<window start>:<hash prefix>:tpm   tokens (INCRBY)

    each expiring after two windows; a key with nothing new is read (GET).

    Redis down, refusing or slow: each call waits at most redis_timeout_ms,
    and a round at most twice that; its keys stay unpushed, so each instance
    counts alone and pushes what it counted once Redis answers again. A
    push whose answer is lost may be counted twice (the limit then bites
    early, never late). Messages name the host and port, never the password.
    =========================================================================
*/
#ifndef ZG_REDIS_SYNC_H_INCLUDED
#define ZG_REDIS_SYNC_H_INCLUDED

#include "common/zg_config.h"
#include "frontend/zg_keys.h"

#include <czmq.h>
#include <stdbool.h>
#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

#define ZG_REDIS_SYNC_BATCH     4096    //  keys in one round at most; the rest take turns

typedef struct _zg_redis_sync_t zg_redis_sync_t;

//  Start the thread for the configuration's Redis. NULL when it names
//  none, or when the thread cannot start (logged).
zg_redis_sync_t *zg_redis_sync_new (const zg_config_t *config);

//  Stop the thread: at once between rounds, else once the round in
//  progress ends (bounded by its timeouts)
void zg_redis_sync_destroy (zg_redis_sync_t **self_p);

//  Poll this for answers, then call zg_redis_sync_finish
zsock_t *zg_redis_sync_socket (zg_redis_sync_t *self);

//  Start a round with what keys counted (now: unix seconds). Nothing is
//  sent while a round is out or when no key has anything to sync. Returns
//  the keys sent, 0 when none, -1 when the message could not be sent.
int zg_redis_sync_start (zg_redis_sync_t *self, zg_keys_t *keys, int64_t now);

//  The round's answer, read from the socket and handed to keys. Returns
//  the keys whose totals were learned, -1 on a stray or bad message.
int zg_redis_sync_finish (zg_redis_sync_t *self, zg_keys_t *keys);

//  Whether a round is out
bool zg_redis_sync_busy (zg_redis_sync_t *self);

//  Self test
void zg_redis_sync_test (bool verbose);

#ifdef __cplusplus
}
#endif

#endif
