/*  =========================================================================
    zg_redis_probe - the frontend's watch on Redis, in a thread of its own

    When the configuration names a Redis server (the reference's
    router_settings.redis_* or a redis cache_params), zgate keeps the
    virtual keys' rate-limit counters there (zg_redis_sync, a thread of its
    own) and says whether it answers, as the operations issue asks of
    readiness.

    Every redis_probe_interval_ms the thread checks the server: connect,
    AUTH when a password is set, SELECT when a database other than 0 is
    named, PING. Connecting and each command wait at most redis_timeout_ms,
    so a server that accepts and never answers costs one timeout per check,
    in this thread only. The result goes to the process' scoreboard slot
    (zg_scoreboard_redis_report), where /health/readiness and /metrics of
    the main port and of the separate health app read it: no request and
    no probe of the gateway ever waits on Redis.

    The connection is kept between checks. A PING that fails on a kept
    connection for any reason but a timeout is tried once more on a new
    one, since a server may close idle connections (its `timeout`).

    Messages name the host and port, never the password.
    =========================================================================
*/
#ifndef ZG_REDIS_PROBE_H_INCLUDED
#define ZG_REDIS_PROBE_H_INCLUDED

#include "common/zg_config.h"
#include "common/zg_scoreboard.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct _zg_redis_probe_t zg_redis_probe_t;

//  Start watching the configuration's Redis, reporting into the board's
//  slot (either may be absent: the checks are then only logged). Returns
//  NULL when the configuration names no Redis, or when the thread cannot
//  start (logged). Copies what it needs from config.
zg_redis_probe_t *zg_redis_probe_new (const zg_config_t *config, zg_scoreboard_t *board, int slot);

//  Stop the thread: at once between checks, else once the check in
//  progress ends (bounded by its timeouts)
void zg_redis_probe_destroy (zg_redis_probe_t **self_p);

//  One check now, in the caller's thread, on a new connection: 0 with
//  the PING's round trip, or -1 with why (never the password)
int zg_redis_check (const zg_config_t *config, uint64_t *latency_us, char *reason, size_t size);

//  A connection made as the probe makes its own (connect, AUTH, SELECT,
//  socket timeouts of redis_timeout_ms), for the other threads that talk
//  to Redis; the caller owns it (redisFree). NULL with why (never the
//  password).
struct redisContext;
struct redisContext *zg_redis_connect (const zg_config_t *config, char *reason, size_t size);

//  Self test
void zg_redis_probe_test (bool verbose);

#ifdef __cplusplus
}
#endif

#endif
