/*  =========================================================================
    zg_db - PostgreSQL through libpq: connections, a bounded pool, and
    queries that an actor can run from its own poller

    A connection (zg_db_t) is opened from a libpq URL or key=value string
    with a bounded connect timeout (ZG_DB_CONNECT_TIMEOUT_S unless the
    string sets connect_timeout itself), in UTC, and named "zgate" in
    pg_stat_activity. Errors come back as one readable line:

        relation "x" does not exist (SQLSTATE 42P01)
        cannot connect to 127.0.0.1:5432/litellm: connection refused ...

    Passwords never appear in those lines.

    Blocking use: zg_db_exec returns a PGresult that the caller PQclears.

    Non-blocking use, inside a zmq_poll/epoll loop:

        zg_db_send (db, sql, n, params, err, size);     //  queue and flush
        poll zg_db_socket (db) for input (and for output while
        zg_db_wants_write (db)), then on each wake-up:
        int rc = zg_db_collect (db, &result, err, size);
        //  1: done (result, or NULL with err); 0: not yet; -1: broken

    The pool (zg_db_pool_t) hands out at most `limit` connections per
    process (database_connection_pool_limit), opens them lazily, keeps idle
    ones for reuse, drops broken ones, and never makes a caller wait longer
    than the wait it asked for. It is thread-safe; connections are not.
    =========================================================================
*/
#ifndef ZG_DB_H_INCLUDED
#define ZG_DB_H_INCLUDED

#include "common/zg_config.h"

#include <libpq-fe.h>
#include <stdbool.h>
#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

//  Seconds a connection attempt may take when the URL does not say
#define ZG_DB_CONNECT_TIMEOUT_S 5

typedef struct _zg_db_t zg_db_t;
typedef struct _zg_db_pool_t zg_db_pool_t;

//  Open a connection. Returns NULL with the reason in errbuf.
zg_db_t *zg_db_connect (const char *url, char *errbuf, size_t errsize);

void zg_db_destroy (zg_db_t **self_p);

//  The libpq connection, for what this module does not wrap
PGconn *zg_db_handle (zg_db_t *self);

//  True while the connection is usable (not broken, no query in flight)
bool zg_db_ready (zg_db_t *self);

//  Run one statement with text parameters ($1, $2...; NULL = SQL NULL).
//  Returns the result (caller PQclears) when it is COMMAND_OK or
//  TUPLES_OK; else NULL with the server's message in errbuf.
PGresult *zg_db_exec (zg_db_t *self, const char *sql, int param_count,
                      const char *const *params, char *errbuf, size_t errsize);

//  Same, with every parameter in PostgreSQL's binary format: lengths[i]
//  bytes at values[i] (NULL: SQL NULL), of the type the statement casts it
//  to ($1::int8[]); at most ZG_DB_BINARY_PARAMS_MAX of them. No text is
//  formatted or parsed on either side: for many values at once (arrays).
#define ZG_DB_BINARY_PARAMS_MAX 32
PGresult *zg_db_exec_binary (zg_db_t *self, const char *sql, int param_count,
                             const char *const *values, const int *lengths,
                             char *errbuf, size_t errsize);

//  Same, for statements whose rows do not matter: 0 or -1
int zg_db_command (zg_db_t *self, const char *sql, int param_count,
                   const char *const *params, char *errbuf, size_t errsize);

//  The SQLSTATE of the statement zg_db_exec, zg_db_exec_binary or
//  zg_db_command ran last ("22003"), "" if it succeeded or failed without
//  one (the connection lost, nothing sent): tells a value the server
//  refuses (class 22, 23) from an outage (08, 57P01...) or no server
const char *zg_db_sqlstate (zg_db_t *self);

//  Run text that may hold several statements (simple query protocol, no
//  parameters): for migrations. 0 or -1 with the first error in errbuf.
int zg_db_exec_script (zg_db_t *self, const char *sql, char *errbuf, size_t errsize);

//  The connection's socket, for a poller; -1 when it is broken
int zg_db_socket (zg_db_t *self);

//  Start a query without waiting. 0, or -1 (another query is in flight,
//  or the connection is broken) with the reason in errbuf.
int zg_db_send (zg_db_t *self, const char *sql, int param_count,
                const char *const *params, char *errbuf, size_t errsize);

//  True while the query's bytes are not all sent: poll for output too
bool zg_db_wants_write (zg_db_t *self);

//  True between zg_db_send and the zg_db_collect that returns 1
bool zg_db_busy (zg_db_t *self);

//  Read what the server sent, never blocking. Returns 1 when the query is
//  over: *result_p is its result (caller PQclears), or NULL with the
//  server's error in errbuf; 0 while the answer is incomplete; -1 when the
//  connection broke (errbuf says how; the connection is then unusable).
int zg_db_collect (zg_db_t *self, PGresult **result_p, char *errbuf, size_t errsize);

//  A pool of at most limit connections (limit < 1 means 1) to url
zg_db_pool_t *zg_db_pool_new (const char *url, int limit);

//  A pool for this process from the configuration: database_url and
//  database_connection_pool_limit. NULL if no database is configured.
zg_db_pool_t *zg_db_pool_new_from_config (const zg_config_t *config);

//  Close every idle connection. Connections still acquired must have been
//  released first (a programming error otherwise).
void zg_db_pool_destroy (zg_db_pool_t **self_p);

//  A connection: an idle one, else a new one while under the limit, else
//  the first one released within wait_ms. Returns NULL with the reason in
//  errbuf when none comes in time or the database cannot be reached. Never
//  waits longer than wait_ms for a free slot, plus the connect timeout.
zg_db_t *zg_db_pool_acquire (zg_db_pool_t *self, int wait_ms, char *errbuf, size_t errsize);

//  Give a connection back and NULL the caller's pointer. A broken one, one
//  with a query in flight or one left inside a transaction is closed
//  instead of kept, so the next caller always gets a clean session.
void zg_db_pool_release (zg_db_pool_t *self, zg_db_t **db_p);

//  Connections open (idle and acquired), and idle ones
size_t zg_db_pool_size (zg_db_pool_t *self);
size_t zg_db_pool_idle (zg_db_pool_t *self);

//  The URL with any password replaced by "****", for messages
void zg_db_url_redact (const char *url, char *out, size_t outsize);

//  Self test. The parts that need a server run when ZG_TEST_DATABASE_URL
//  names one (tests/e2e/test_migrations.py starts one and sets it).
void zg_db_test (bool verbose);

#ifdef __cplusplus
}
#endif

#endif
