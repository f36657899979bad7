/*  =========================================================================
    zg_db - PostgreSQL through libpq: connections, a bounded pool, and
    queries that an actor can run from its own poller
    =========================================================================
*/
#include "db/zg_db.h"
#include "common/zg_selftest.h"
#include "common/zg_log.h"

#include <assert.h>
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

struct _zg_db_t {
    PGconn    *conn;
    bool       busy;            //  a query was sent and its end not collected
    bool       flushing;        //  its bytes are not all written yet
    PGresult  *result;          //  the query's last good result so far
    char       error [512];     //  its first error so far, "" if none
    char       sqlstate [6];    //  the last blocking statement's, "" if none
};

struct _zg_db_pool_t {
    char            *url;
    int              limit;
    pthread_mutex_t  mutex;
    pthread_cond_t   released;      //  a slot or an idle connection came back
    zg_db_t        **idle;          //  a stack of limit slots
    size_t           idle_count;
    size_t           open_count;    //  idle + acquired + being opened
};

//  libpq's messages end with newlines and may span lines ("\tIs the server
//  running..."): one line reads better in a log
static void
s_one_line (const char *text, char *out, size_t outsize)
{
    if (!outsize)
        return;
    size_t used = 0;
    bool space = false;
    for (const char *p = text ? text : ""; *p && used + 1 < outsize; p++) {
        if (*p == '\n' || *p == '\r' || *p == '\t' || *p == ' ') {
            space = used > 0;
            continue;
        }
        if (space && used + 2 < outsize)
            out [used++] = ' ';
        space = false;
        out [used++] = *p;
    }
    out [used] = 0;
}

static void
s_result_error (PGconn *conn, const PGresult *result, char *errbuf, size_t errsize)
{
    const char *primary = result? PQresultErrorField (result, PG_DIAG_MESSAGE_PRIMARY): NULL;
    const char *sqlstate = result? PQresultErrorField (result, PG_DIAG_SQLSTATE): NULL;
    char line [512];
    if (primary)
        s_one_line (primary, line, sizeof (line));
    else
    if (result && *PQresultErrorMessage (result))
        s_one_line (PQresultErrorMessage (result), line, sizeof (line));
    else
    if (conn && *PQerrorMessage (conn))
        s_one_line (PQerrorMessage (conn), line, sizeof (line));
    else
        snprintf (line, sizeof (line), "unexpected result %s",
                  result? PQresStatus (PQresultStatus (result)): "(none)");
    if (sqlstate)
        snprintf (errbuf, errsize, "%s (SQLSTATE %s)", line, sqlstate);
    else
        snprintf (errbuf, errsize, "%s", line);
}

//  The failed statement's SQLSTATE for zg_db_sqlstate
static void
s_keep_sqlstate (zg_db_t *self, const PGresult *result)
{
    const char *sqlstate = result? PQresultErrorField (result, PG_DIAG_SQLSTATE): NULL;
    snprintf (self->sqlstate, sizeof (self->sqlstate), "%s", sqlstate? sqlstate: "");
}

static bool
s_result_ok (const PGresult *result)
{
    ExecStatusType status = PQresultStatus (result);
    return status == PGRES_COMMAND_OK || status == PGRES_TUPLES_OK;
}

void
zg_db_url_redact (const char *url, char *out, size_t outsize)
{
    if (!outsize)
        return;
    snprintf (out, outsize, "%s", url? url: "");
    //  URI form: postgresql://user:secret@host/db
    char *scheme = strstr (out, "://");
    if (scheme) {
        char *authority = scheme + 3;
        char *end = authority + strcspn (authority, "/?");
        char *at = NULL;
        for (char *p = authority; p < end; p++)
            if (*p == '@')
                at = p;
        char *colon = at? memchr (authority, ':', at - authority): NULL;
        if (colon && at - colon > 1) {
            char rest [1024];
            snprintf (rest, sizeof (rest), "%s", at);
            snprintf (colon + 1, outsize - (colon + 1 - out), "****%s", rest);
        }
    }
    //  password=secret in a query string or in key=value form
    for (char *p = strstr (out, "password="); p; p = strstr (p, "password=")) {
        p += strlen ("password=");
        size_t length = strcspn (p, "& ");
        if (length == 0)
            continue;
        char rest [1024];
        snprintf (rest, sizeof (rest), "%s", p + length);
        snprintf (p, outsize - (p - out), "****%s", rest);
    }
}

//  The server's notices ("column ... already exists, skipping" when a
//  migration meets a LiteLLM database) are details, not warnings: they go
//  to the debug log instead of libpq's default, stderr
static void
s_notice (void *args, const char *message)
{
    if (zg_log_enabled (ZG_LOG_DEBUG)) {
        char line [512];
        s_one_line (message, line, sizeof (line));
        zg_log_write (ZG_LOG_DEBUG, "database: %s", line);
    }
}

zg_db_t *
zg_db_connect (const char *url, char *errbuf, size_t errsize)
{
    if (!url || !*url) {
        snprintf (errbuf, errsize, "no database URL");
        return NULL;
    }
    char timeout [16];
    snprintf (timeout, sizeof (timeout), "%d", ZG_DB_CONNECT_TIMEOUT_S);
    //  dbname is expanded last, so what the URL says overrides these
    const char *keys [] = { "connect_timeout", "fallback_application_name", "dbname", NULL };
    const char *values [] = { timeout, "zgate", url, NULL };
    PGconn *conn = PQconnectdbParams (keys, values, 1);
    if (!conn) {
        snprintf (errbuf, errsize, "cannot connect to the database: out of memory");
        return NULL;
    }
    if (PQstatus (conn) != CONNECTION_OK) {
        char redacted [512], reason [512];
        zg_db_url_redact (url, redacted, sizeof (redacted));
        s_one_line (PQerrorMessage (conn), reason, sizeof (reason));
        snprintf (errbuf, errsize, "cannot connect to %s: %s", redacted, reason);
        PQfinish (conn);
        return NULL;
    }
    PQsetNoticeProcessor (conn, s_notice, NULL);
    //  Only the send/collect pair depends on this: PQexec and friends
    //  block whatever the mode
    if (PQsetnonblocking (conn, 1)) {
        char reason [512];
        s_one_line (PQerrorMessage (conn), reason, sizeof (reason));
        snprintf (errbuf, errsize, "cannot make the database connection non-blocking: %s", reason);
        PQfinish (conn);
        return NULL;
    }
    zg_db_t *self = calloc (1, sizeof (zg_db_t));
    if (!self) {
        PQfinish (conn);
        snprintf (errbuf, errsize, "out of memory");
        return NULL;
    }
    self->conn = conn;
    return self;
}

void
zg_db_destroy (zg_db_t **self_p)
{
    assert (self_p);
    zg_db_t *self = *self_p;
    if (!self)
        return;
    PQclear (self->result);
    PQfinish (self->conn);
    free (self);
    *self_p = NULL;
}

PGconn *
zg_db_handle (zg_db_t *self)
{
    assert (self);
    return self->conn;
}

bool
zg_db_ready (zg_db_t *self)
{
    assert (self);
    return !self->busy && PQstatus (self->conn) == CONNECTION_OK;
}

PGresult *
zg_db_exec (zg_db_t *self, const char *sql, int param_count,
            const char *const *params, char *errbuf, size_t errsize)
{
    assert (self);
    self->sqlstate [0] = 0;
    if (self->busy) {
        snprintf (errbuf, errsize, "a query is already in flight on this connection");
        return NULL;
    }
    PGresult *result = PQexecParams (self->conn, sql, param_count, NULL, params, NULL, NULL, 0);
    if (result && s_result_ok (result))
        return result;
    s_keep_sqlstate (self, result);
    s_result_error (self->conn, result, errbuf, errsize);
    PQclear (result);
    return NULL;
}

PGresult *
zg_db_exec_binary (zg_db_t *self, const char *sql, int param_count,
                   const char *const *values, const int *lengths,
                   char *errbuf, size_t errsize)
{
    assert (self);
    self->sqlstate [0] = 0;
    assert (param_count >= 0 && param_count <= ZG_DB_BINARY_PARAMS_MAX);
    if (self->busy) {
        snprintf (errbuf, errsize, "a query is already in flight on this connection");
        return NULL;
    }
    int formats [ZG_DB_BINARY_PARAMS_MAX];
    for (int index = 0; index < param_count; index++)
        formats [index] = 1;
    PGresult *result = PQexecParams (self->conn, sql, param_count, NULL, values, lengths,
                                     formats, 0);
    if (result && s_result_ok (result))
        return result;
    s_keep_sqlstate (self, result);
    s_result_error (self->conn, result, errbuf, errsize);
    PQclear (result);
    return NULL;
}

const char *
zg_db_sqlstate (zg_db_t *self)
{
    assert (self);
    return self->sqlstate;
}

int
zg_db_command (zg_db_t *self, const char *sql, int param_count,
               const char *const *params, char *errbuf, size_t errsize)
{
    PGresult *result = zg_db_exec (self, sql, param_count, params, errbuf, errsize);
    if (!result)
        return -1;
    PQclear (result);
    return 0;
}

int
zg_db_exec_script (zg_db_t *self, const char *sql, char *errbuf, size_t errsize)
{
    assert (self);
    if (self->busy) {
        snprintf (errbuf, errsize, "a query is already in flight on this connection");
        return -1;
    }
    //  PQexec stops at the first failing statement and returns its error
    PGresult *result = PQexec (self->conn, sql);
    int rc = 0;
    if (!result || !s_result_ok (result)) {
        s_result_error (self->conn, result, errbuf, errsize);
        rc = -1;
    }
    PQclear (result);
    return rc;
}

int
zg_db_socket (zg_db_t *self)
{
    assert (self);
    return PQstatus (self->conn) == CONNECTION_OK? PQsocket (self->conn): -1;
}

int
zg_db_send (zg_db_t *self, const char *sql, int param_count,
            const char *const *params, char *errbuf, size_t errsize)
{
    assert (self);
    if (self->busy) {
        snprintf (errbuf, errsize, "a query is already in flight on this connection");
        return -1;
    }
    if (!PQsendQueryParams (self->conn, sql, param_count, NULL, params, NULL, NULL, 0)) {
        s_one_line (PQerrorMessage (self->conn), errbuf, errsize);
        return -1;
    }
    int flush = PQflush (self->conn);
    if (flush < 0) {
        s_one_line (PQerrorMessage (self->conn), errbuf, errsize);
        return -1;
    }
    self->busy = true;
    self->flushing = flush == 1;
    self->error [0] = 0;
    return 0;
}

bool
zg_db_wants_write (zg_db_t *self)
{
    assert (self);
    return self->busy && self->flushing;
}

bool
zg_db_busy (zg_db_t *self)
{
    assert (self);
    return self->busy;
}

//  The query cannot finish: forget it, and say why
static int
s_broken (zg_db_t *self, char *errbuf, size_t errsize)
{
    char reason [512];
    s_one_line (PQerrorMessage (self->conn), reason, sizeof (reason));
    snprintf (errbuf, errsize, "database connection lost: %s", *reason? reason: "unknown error");
    PQclear (self->result);
    self->result = NULL;
    self->busy = false;
    self->flushing = false;
    return -1;
}

int
zg_db_collect (zg_db_t *self, PGresult **result_p, char *errbuf, size_t errsize)
{
    assert (self);
    assert (result_p);
    *result_p = NULL;
    if (!self->busy) {
        snprintf (errbuf, errsize, "no query in flight on this connection");
        return -1;
    }
    if (self->flushing) {
        int flush = PQflush (self->conn);
        if (flush < 0)
            return s_broken (self, errbuf, errsize);
        self->flushing = flush == 1;
    }
    if (!PQconsumeInput (self->conn) || PQstatus (self->conn) != CONNECTION_OK)
        return s_broken (self, errbuf, errsize);

    //  A query's end is the NULL after its results; PQisBusy says whether
    //  PQgetResult could block before that
    while (!PQisBusy (self->conn)) {
        PGresult *result = PQgetResult (self->conn);
        if (!result) {
            self->busy = false;
            if (*self->error) {
                snprintf (errbuf, errsize, "%s", self->error);
                PQclear (self->result);
                self->result = NULL;
                return 1;
            }
            *result_p = self->result;
            self->result = NULL;
            if (!*result_p)
                snprintf (errbuf, errsize, "the query returned no result");
            return 1;
        }
        if (s_result_ok (result)) {
            PQclear (self->result);
            self->result = result;
        }
        else {
            if (!*self->error)
                s_result_error (self->conn, result, self->error, sizeof (self->error));
            PQclear (result);
        }
    }
    if (PQstatus (self->conn) != CONNECTION_OK)
        return s_broken (self, errbuf, errsize);
    return 0;
}


//  --------------------------------------------------------------------------
//  Pool

zg_db_pool_t *
zg_db_pool_new (const char *url, int limit)
{
    assert (url);
    zg_db_pool_t *self = calloc (1, sizeof (zg_db_pool_t));
    if (!self)
        return NULL;
    self->limit = limit < 1? 1: limit;
    self->url = strdup (url);
    self->idle = calloc (self->limit, sizeof (zg_db_t *));
    if (!self->url || !self->idle) {
        free (self->url);
        free (self->idle);
        free (self);
        return NULL;
    }
    pthread_mutex_init (&self->mutex, NULL);
    pthread_condattr_t attr;
    pthread_condattr_init (&attr);
    pthread_condattr_setclock (&attr, CLOCK_MONOTONIC);
    pthread_cond_init (&self->released, &attr);
    pthread_condattr_destroy (&attr);
    return self;
}

zg_db_pool_t *
zg_db_pool_new_from_config (const zg_config_t *config)
{
    assert (config);
    if (!config->database_url || !*config->database_url)
        return NULL;
    return zg_db_pool_new (config->database_url, config->database_connection_pool_limit);
}

void
zg_db_pool_destroy (zg_db_pool_t **self_p)
{
    assert (self_p);
    zg_db_pool_t *self = *self_p;
    if (!self)
        return;
    assert (self->open_count == self->idle_count);
    for (size_t index = 0; index < self->idle_count; index++)
        zg_db_destroy (&self->idle [index]);
    pthread_cond_destroy (&self->released);
    pthread_mutex_destroy (&self->mutex);
    free (self->idle);
    free (self->url);
    free (self);
    *self_p = NULL;
}

zg_db_t *
zg_db_pool_acquire (zg_db_pool_t *self, int wait_ms, char *errbuf, size_t errsize)
{
    assert (self);
    struct timespec deadline;
    clock_gettime (CLOCK_MONOTONIC, &deadline);
    if (wait_ms > 0) {
        deadline.tv_sec += wait_ms / 1000;
        deadline.tv_nsec += (long) (wait_ms % 1000) * 1000000L;
        if (deadline.tv_nsec >= 1000000000L) {
            deadline.tv_sec++;
            deadline.tv_nsec -= 1000000000L;
        }
    }
    pthread_mutex_lock (&self->mutex);
    while (true) {
        if (self->idle_count > 0) {
            zg_db_t *db = self->idle [--self->idle_count];
            if (zg_db_ready (db)) {
                pthread_mutex_unlock (&self->mutex);
                return db;
            }
            //  The server or the network closed it while it was idle
            self->open_count--;
            pthread_mutex_unlock (&self->mutex);
            zg_db_destroy (&db);
            pthread_mutex_lock (&self->mutex);
            continue;
        }
        if (self->open_count < (size_t) self->limit) {
            //  Hold the slot while connecting, outside the lock
            self->open_count++;
            pthread_mutex_unlock (&self->mutex);
            zg_db_t *db = zg_db_connect (self->url, errbuf, errsize);
            if (db)
                return db;
            pthread_mutex_lock (&self->mutex);
            self->open_count--;
            pthread_cond_signal (&self->released);
            pthread_mutex_unlock (&self->mutex);
            return NULL;
        }
        int rc = wait_ms > 0
               ? pthread_cond_timedwait (&self->released, &self->mutex, &deadline)
               : ETIMEDOUT;
        if (rc == ETIMEDOUT && self->idle_count == 0 && self->open_count >= (size_t) self->limit) {
            pthread_mutex_unlock (&self->mutex);
            snprintf (errbuf, errsize,
                      "all %d database connections of this process are in use (waited %d ms)",
                      self->limit, wait_ms > 0? wait_ms: 0);
            return NULL;
        }
    }
}

void
zg_db_pool_release (zg_db_pool_t *self, zg_db_t **db_p)
{
    assert (self);
    assert (db_p);
    zg_db_t *db = *db_p;
    if (!db)
        return;
    *db_p = NULL;
    bool keep = zg_db_ready (db) && PQtransactionStatus (db->conn) == PQTRANS_IDLE;
    pthread_mutex_lock (&self->mutex);
    assert (self->open_count > self->idle_count);
    if (keep)
        self->idle [self->idle_count++] = db;
    else
        self->open_count--;
    pthread_cond_signal (&self->released);
    pthread_mutex_unlock (&self->mutex);
    if (!keep)
        zg_db_destroy (&db);
}

size_t
zg_db_pool_size (zg_db_pool_t *self)
{
    assert (self);
    pthread_mutex_lock (&self->mutex);
    size_t size = self->open_count;
    pthread_mutex_unlock (&self->mutex);
    return size;
}

size_t
zg_db_pool_idle (zg_db_pool_t *self)
{
    assert (self);
    pthread_mutex_lock (&self->mutex);
    size_t size = self->idle_count;
    pthread_mutex_unlock (&self->mutex);
    return size;
}


//  --------------------------------------------------------------------------
//  Self test


static int64_t
s_now_ms (void)
{
    struct timespec ts;
    clock_gettime (CLOCK_MONOTONIC, &ts);
    return (int64_t) ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

//  Drive a non-blocking query to its end the way an actor's poller would
static int
s_collect_by_poll (zg_db_t *db, PGresult **result_p, char *errbuf, size_t errsize,
                   int *wakeups)
{
    int64_t deadline = s_now_ms () + 30000;
    while (s_now_ms () < deadline) {
        struct pollfd item = { zg_db_socket (db), POLLIN, 0 };
        if (zg_db_wants_write (db))
            item.events |= POLLOUT;
        if (item.fd < 0)
            return -1;
        if (poll (&item, 1, 1000) < 0 && errno != EINTR)
            return -1;
        (*wakeups)++;
        int rc = zg_db_collect (db, result_p, errbuf, errsize);
        if (rc != 0)
            return rc;
    }
    snprintf (errbuf, errsize, "no answer within 30 s");
    return -1;
}

typedef struct {
    zg_db_pool_t *pool;
    zg_db_t *db;
    int delay_ms;
} s_release_later_t;

static void *
s_release_later (void *args)
{
    s_release_later_t *job = args;
    usleep (job->delay_ms * 1000);
    zg_db_pool_release (job->pool, &job->db);
    return NULL;
}

static void
s_test_live (const char *url, bool verbose)
{
    char errbuf [512];
    zg_db_t *db = zg_db_connect (url, errbuf, sizeof (errbuf));
    if (!db)
        fprintf (stderr, "%s\n", errbuf);
    ZG_CHECK (db);
    ZG_CHECK (zg_db_ready (db));

    //  Blocking, with parameters, NULL and errors
    const char *params [] = { "41", NULL };
    PGresult *result = zg_db_exec (db, "SELECT $1::int + 1, $2::text IS NULL", 2, params,
                                   errbuf, sizeof (errbuf));
    ZG_CHECK (result);
    ZG_CHECK (strcmp (PQgetvalue (result, 0, 0), "42") == 0);
    ZG_CHECK (strcmp (PQgetvalue (result, 0, 1), "t") == 0);
    PQclear (result);
    ZG_CHECK (zg_db_exec (db, "SELECT * FROM zg_no_such_table", 0, NULL,
                         errbuf, sizeof (errbuf)) == NULL);
    ZG_CHECK (strstr (errbuf, "zg_no_such_table") && strstr (errbuf, "SQLSTATE 42P01"));
    ZG_CHECK (zg_db_command (db, "SELECT 1", 0, NULL, errbuf, sizeof (errbuf)) == 0);
    ZG_CHECK (zg_db_exec_script (db,
        "CREATE TEMP TABLE zg_t (n int); INSERT INTO zg_t VALUES (1), (2);",
        errbuf, sizeof (errbuf)) == 0);
    ZG_CHECK (zg_db_exec_script (db, "INSERT INTO zg_t VALUES (3); SELEC 1;",
                                errbuf, sizeof (errbuf)) == -1);
    ZG_CHECK (strstr (errbuf, "syntax error"));

    //  Binary parameters: arrays as array_send writes them (dimensions,
    //  element type, then each element's length and bytes), a bool, a NULL
    char ints [20 + 3 * 12], texts [20 + 2 * 4 + 5];
    const uint8_t int_array [] = {
        0, 0, 0, 1,  0, 0, 0, 0,  0, 0, 0, 20,  0, 0, 0, 3,  0, 0, 0, 1,
        0, 0, 0, 8,  0, 0, 0, 0, 0, 0, 0, 5,
        0, 0, 0, 8,  0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        0, 0, 0, 8,  0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xfe };
    const uint8_t text_array [] = {
        0, 0, 0, 1,  0, 0, 0, 0,  0, 0, 0, 25,  0, 0, 0, 2,  0, 0, 0, 1,
        0, 0, 0, 3,  'a', '\t', 'b',  0, 0, 0, 2,  0xc3, 0xa9 };
    memcpy (ints, int_array, sizeof (ints));
    memcpy (texts, text_array, sizeof (texts));
    const char *values [] = { ints, texts, "\1", NULL };
    const int lengths [] = { sizeof (ints), sizeof (texts), 1, 0 };
    result = zg_db_exec_binary (db,
        "SELECT sum (n)::text, string_agg (t, '|'), $3::boolean, $4::int8 IS NULL"
        " FROM unnest ($1::int8[], $2::text[]) AS r (n, t)",
        4, values, lengths, errbuf, sizeof (errbuf));
    ZG_CHECK (result && PQntuples (result) == 1);
    ZG_CHECK (result && strcmp (PQgetvalue (result, 0, 0), "9223372036854775810") == 0);
    ZG_CHECK (result && strcmp (PQgetvalue (result, 0, 1), "a\tb|\xc3\xa9") == 0);
    ZG_CHECK (result && strcmp (PQgetvalue (result, 0, 2), "t") == 0
           && strcmp (PQgetvalue (result, 0, 3), "t") == 0);
    PQclear (result);
    //  Refused: an element type other than the cast's, bytes that are not
    //  UTF-8; the connection stays usable
    ZG_CHECK (!zg_db_exec_binary (db, "SELECT $1::text[]", 1, values, lengths,
                                  errbuf, sizeof (errbuf)));
    ZG_CHECK (strstr (errbuf, "element type") && strstr (errbuf, "42804"));
    texts [sizeof (texts) - 1] = (char) 0xff;
    ZG_CHECK (!zg_db_exec_binary (db, "SELECT $1::text[]", 1, values + 1, lengths + 1,
                                  errbuf, sizeof (errbuf)));
    ZG_CHECK (strstr (errbuf, "invalid byte sequence"));
    ZG_CHECK (strcmp (zg_db_sqlstate (db), "22021") == 0);
    ZG_CHECK (zg_db_command (db, "SELECT 1", 0, NULL, errbuf, sizeof (errbuf)) == 0);
    ZG_CHECK (strcmp (zg_db_sqlstate (db), "") == 0);
    //  The SQLSTATE tells a refused value from an outage
    ZG_CHECK (!zg_db_exec (db, "SELECT 2147483648::int4", 0, NULL, errbuf, sizeof (errbuf)));
    ZG_CHECK (strcmp (zg_db_sqlstate (db), "22003") == 0);

    //  Non-blocking: the query is sent, the caller returns to its poller,
    //  and the answer is collected over several wake-ups
    ZG_CHECK (zg_db_socket (db) >= 0);
    const char *sleep_params [] = { "0.2" };
    ZG_CHECK (zg_db_send (db, "SELECT pg_sleep($1::float8), 'done'", 1, sleep_params,
                         errbuf, sizeof (errbuf)) == 0);
    ZG_CHECK (zg_db_busy (db) && !zg_db_ready (db));
    ZG_CHECK (zg_db_send (db, "SELECT 1", 0, NULL, errbuf, sizeof (errbuf)) == -1);
    ZG_CHECK (zg_db_exec (db, "SELECT 1", 0, NULL, errbuf, sizeof (errbuf)) == NULL);
    ZG_CHECK (zg_db_collect (db, &result, errbuf, sizeof (errbuf)) == 0 && !result);
    int wakeups = 0;
    ZG_CHECK (s_collect_by_poll (db, &result, errbuf, sizeof (errbuf), &wakeups) == 1);
    ZG_CHECK (result && strcmp (PQgetvalue (result, 0, 1), "done") == 0);
    PQclear (result);
    ZG_CHECK (zg_db_ready (db));
    if (verbose)
        printf ("  non-blocking query collected after %d wake-ups\n", wakeups);

    //  A failing non-blocking query ends with its error, and the
    //  connection stays usable
    ZG_CHECK (zg_db_send (db, "SELECT 1/0", 0, NULL, errbuf, sizeof (errbuf)) == 0);
    ZG_CHECK (s_collect_by_poll (db, &result, errbuf, sizeof (errbuf), &wakeups) == 1);
    ZG_CHECK (!result && strstr (errbuf, "division by zero") && strstr (errbuf, "22012"));
    ZG_CHECK (zg_db_ready (db));

    //  A large query is flushed through zg_db_wants_write / zg_db_collect
    size_t big = 4 * 1024 * 1024;
    char *text = malloc (big + 1);
    ZG_CHECK (text);
    memset (text, 'x', big);
    text [big] = 0;
    const char *big_params [] = { text };
    ZG_CHECK (zg_db_send (db, "SELECT length($1)", 1, big_params, errbuf, sizeof (errbuf)) == 0);
    ZG_CHECK (s_collect_by_poll (db, &result, errbuf, sizeof (errbuf), &wakeups) == 1);
    ZG_CHECK (result && atol (PQgetvalue (result, 0, 0)) == (long) big);
    PQclear (result);
    free (text);

    //  A connection the server ends is reported as lost
    zg_db_t *victim = zg_db_connect (url, errbuf, sizeof (errbuf));
    ZG_CHECK (victim);
    char pid [32];
    snprintf (pid, sizeof (pid), "%d", PQbackendPID (zg_db_handle (victim)));
    const char *kill_params [] = { pid };
    ZG_CHECK (zg_db_command (db, "SELECT pg_terminate_backend($1::int)", 1, kill_params,
                            errbuf, sizeof (errbuf)) == 0);
    int rc = zg_db_send (victim, "SELECT 1", 0, NULL, errbuf, sizeof (errbuf));
    if (rc == 0)
        rc = s_collect_by_poll (victim, &result, errbuf, sizeof (errbuf), &wakeups);
    ZG_CHECK (rc == -1 || (rc == 1 && !result));
    ZG_CHECK (!zg_db_ready (victim));
    zg_db_destroy (&victim);
    zg_db_destroy (&db);
    ZG_CHECK (db == NULL);

    //  The pool: at most limit connections, reuse, bounded waits
    zg_db_pool_t *pool = zg_db_pool_new (url, 2);
    ZG_CHECK (pool);
    zg_db_t *first = zg_db_pool_acquire (pool, 1000, errbuf, sizeof (errbuf));
    zg_db_t *second = zg_db_pool_acquire (pool, 1000, errbuf, sizeof (errbuf));
    ZG_CHECK (first && second && first != second);
    ZG_CHECK (zg_db_pool_size (pool) == 2 && zg_db_pool_idle (pool) == 0);
    int64_t start = s_now_ms ();
    ZG_CHECK (zg_db_pool_acquire (pool, 100, errbuf, sizeof (errbuf)) == NULL);
    ZG_CHECK (s_now_ms () - start >= 90);
    ZG_CHECK (strstr (errbuf, "all 2 database connections"));
    ZG_CHECK (zg_db_pool_acquire (pool, 0, errbuf, sizeof (errbuf)) == NULL);

    //  A waiter gets the connection another thread releases
    s_release_later_t job = { pool, second, 100 };
    second = NULL;
    pthread_t thread;
    ZG_CHECK (pthread_create (&thread, NULL, s_release_later, &job) == 0);
    zg_db_t *third = zg_db_pool_acquire (pool, 30000, errbuf, sizeof (errbuf));
    pthread_join (thread, NULL);
    ZG_CHECK (third && job.db == NULL);
    ZG_CHECK (zg_db_pool_size (pool) == 2);

    //  Released inside a transaction: closed, never handed out again
    ZG_CHECK (zg_db_command (third, "BEGIN", 0, NULL, errbuf, sizeof (errbuf)) == 0);
    zg_db_pool_release (pool, &third);
    ZG_CHECK (third == NULL);
    ZG_CHECK (zg_db_pool_size (pool) == 1 && zg_db_pool_idle (pool) == 0);
    zg_db_pool_release (pool, &first);
    ZG_CHECK (zg_db_pool_size (pool) == 1 && zg_db_pool_idle (pool) == 1);
    zg_db_t *again = zg_db_pool_acquire (pool, 0, errbuf, sizeof (errbuf));
    ZG_CHECK (again);
    result = zg_db_exec (again, "SELECT 1", 0, NULL, errbuf, sizeof (errbuf));
    ZG_CHECK (result);
    PQclear (result);
    zg_db_pool_release (pool, &again);
    zg_db_pool_destroy (&pool);
    ZG_CHECK (pool == NULL);
}

void
zg_db_test (bool verbose)
{
    printf (" * zg_db: ");
    if (verbose)
        printf ("\n");

    char out [256];
    zg_db_url_redact ("postgresql://llm:s3cret@db.internal:5432/litellm", out, sizeof (out));
    ZG_CHECK (strcmp (out, "postgresql://llm:****@db.internal:5432/litellm") == 0);
    zg_db_url_redact ("postgres://llm@db/x?password=s3cret&sslmode=require", out, sizeof (out));
    ZG_CHECK (strcmp (out, "postgres://llm@db/x?password=****&sslmode=require") == 0);
    zg_db_url_redact ("host=db user=llm password=s3cret dbname=x", out, sizeof (out));
    ZG_CHECK (strcmp (out, "host=db user=llm password=**** dbname=x") == 0);
    zg_db_url_redact ("postgresql://db/x", out, sizeof (out));
    ZG_CHECK (strcmp (out, "postgresql://db/x") == 0);
    zg_db_url_redact ("postgresql://a:b@c:d@host/x", out, sizeof (out));
    ZG_CHECK (strcmp (out, "postgresql://a:****@host/x") == 0);

    //  Nothing listens on port 1: refused at once, with a clear reason and
    //  no password in it
    char errbuf [512];
    int64_t start = s_now_ms ();
    zg_db_t *db = zg_db_connect ("postgresql://zg:hunter2@127.0.0.1:1/zg", errbuf, sizeof (errbuf));
    ZG_CHECK (db == NULL);
    ZG_CHECK (strstr (errbuf, "cannot connect to postgresql://zg:****@127.0.0.1:1/zg: "));
    ZG_CHECK (!strstr (errbuf, "hunter2"));
    ZG_CHECK (s_now_ms () - start < 10000);
    ZG_CHECK (zg_db_connect ("", errbuf, sizeof (errbuf)) == NULL);
    ZG_CHECK (zg_db_connect ("not a url = = =", errbuf, sizeof (errbuf)) == NULL);
    ZG_CHECK (*errbuf);

    //  A pool that cannot connect gives its slot back
    zg_db_pool_t *pool = zg_db_pool_new ("postgresql://zg@127.0.0.1:1/zg", 0);
    ZG_CHECK (pool);
    ZG_CHECK (zg_db_pool_acquire (pool, 1000, errbuf, sizeof (errbuf)) == NULL);
    ZG_CHECK (strstr (errbuf, "cannot connect"));
    ZG_CHECK (zg_db_pool_size (pool) == 0);
    zg_db_pool_destroy (&pool);

    zg_config_t *config = zg_config_new_default ();
    ZG_CHECK (config);
    free (config->database_url);
    config->database_url = NULL;
    ZG_CHECK (zg_db_pool_new_from_config (config) == NULL);
    config->database_url = strdup ("postgresql://zg@127.0.0.1:1/zg");
    pool = zg_db_pool_new_from_config (config);
    ZG_CHECK (pool && pool->limit == config->database_connection_pool_limit);
    zg_db_pool_destroy (&pool);
    zg_config_destroy (&config);

    const char *url = getenv ("ZG_TEST_DATABASE_URL");
    if (url && *url)
        s_test_live (url, verbose);
    else
    if (verbose)
        printf ("  ZG_TEST_DATABASE_URL is not set: no live tests\n");
    printf ("OK\n");
}
