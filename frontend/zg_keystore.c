/*  =========================================================================
    zg_keystore - the frontend's link to PostgreSQL, in a thread of its own

    One connection does everything: it LISTENs, loads, looks up and runs
    the jobs. Notifications that arrive while a query runs are queued by
    libpq and read right after it, so nothing is missed, and one
    connection is one reconnect state and one slot of the pool limit.

    Commands (a lookup, a job) go to the thread over the actor's pipe as
    one frame each, sent without waiting; events come back as pointers on
    an inproc PUSH/PULL pair with no high-water mark, so the thread never
    waits on the frontend either. Bounds:
      - the pipe holds what the thread has not read yet (its high-water
        mark); a command the pipe refuses is answered at once by the
        frontend's side;
      - the thread holds at most ZG_KEYSTORE_QUEUE_MAX commands; one more
        is answered at once.
    Either way a lookup comes back KEY_UNKNOWN with db_available false
    ("could not ask", the negative cache is left alone) and a job 503, so
    the caller hears at once instead of waiting for an answer that is
    never coming.
    =========================================================================
*/
#include "frontend/zg_keystore.h"
#include "common/zg_json.h"
#include "common/zg_log.h"
#include "common/zg_selftest.h"
#include "db/zg_db.h"
#include "db/zg_migrate.h"

#include <assert.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

//  Reconnect backoff: doubles from the first to the last
#define RETRY_FIRST_MS          100
#define RETRY_LAST_MS           5000
//  How often ended budget periods are written back (spend 0, next reset).
//  The key table starts a new period at once on its own; this makes the
//  database, /key/info and every other instance agree.
#define BUDGET_SWEEP_MS         5000
//  Spend batches commit several times a second under load, and each one
//  notifies; reloading every key's, user's and team's spend for each would
//  cost the database a scan of the key table per batch. Notifications that
//  come closer together than this share one reload, still well within the
//  second in which changes reach the frontends.
#define SPEND_RELOAD_MIN_MS     250

typedef enum { COMMAND_LOOKUP = 1, COMMAND_JOB } s_command_kind_t;

//  One frame on the pipe (one process: plain bytes)
typedef struct {
    s_command_kind_t kind;
    char             hash [ZG_KEYS_HASH_HEX + 1];
    zg_admin_job_t  *job;
} s_command_t;

struct _zg_keystore_t {
    zactor_t *actor;
    zsock_t  *events;           //  PULL: what the thread and local answers push
    zsock_t  *local;            //  PUSH: answers the frontend's side gives itself
    char      endpoint [64];
};

//  ---------------------------------------------------------------------
//  Events

static zg_keystore_event_t *
s_event_new (zg_keystore_event_kind_t kind)
{
    zg_keystore_event_t *event = (zg_keystore_event_t *) calloc (1, sizeof (zg_keystore_event_t));
    if (event)
        event->kind = kind;
    return event;
}

static void
s_record_free (zg_key_record_t *record)
{
    free ((char *) record->token);
    free ((char *) record->key_name);
    free ((char *) record->key_alias);
    for (size_t index = 0; index < record->models_count; index++)
        free ((char *) record->models [index]);
    free ((void *) record->models);
    free ((char *) record->budget_duration);
    free ((char *) record->user_id);
    free ((char *) record->team_id);
    free ((char *) record->metadata);
    memset (record, 0, sizeof *record);
}

static bool
s_dup (const char **target, const char *source)
{
    *target = NULL;
    if (!source)
        return true;
    *target = strdup (source);
    return *target != NULL;
}

//  A deep copy of record into the event's own record
static int
s_record_copy (zg_key_record_t *copy, const zg_key_record_t *record)
{
    *copy = *record;
    copy->models = NULL;
    copy->models_count = 0;
    bool ok = s_dup (&copy->token, record->token)
           && s_dup (&copy->key_name, record->key_name)
           && s_dup (&copy->key_alias, record->key_alias)
           && s_dup (&copy->budget_duration, record->budget_duration)
           && s_dup (&copy->user_id, record->user_id)
           && s_dup (&copy->team_id, record->team_id)
           && s_dup (&copy->metadata, record->metadata);
    if (ok && record->models_count) {
        const char **models = (const char **) calloc (record->models_count, sizeof (char *));
        copy->models = models;
        ok = models != NULL;
        for (size_t index = 0; ok && index < record->models_count; index++) {
            ok = s_dup (&models [index], record->models [index]);
            copy->models_count = index + 1;
        }
    }
    if (!ok) {
        s_record_free (copy);
        return -1;
    }
    return 0;
}

void
zg_keystore_event_destroy (zg_keystore_event_t **event_p)
{
    assert (event_p);
    zg_keystore_event_t *event = *event_p;
    if (!event)
        return;
    s_record_free (&event->record);
    free (event->id);
    zg_admin_job_destroy (&event->job);
    free (event);
    *event_p = NULL;
}

static void
s_push (zsock_t *socket, zg_keystore_event_t **event_p)
{
    zg_keystore_event_t *event = *event_p;
    *event_p = NULL;
    if (!event)
        return;
    //  No high-water mark on this pair: the send queues, never waits
    if (zmq_send (zsock_resolve (socket), &event, sizeof event, 0) != sizeof event)
        zg_keystore_event_destroy (&event);
}

static zg_keystore_event_t *
s_unknown_event (const char *hash, bool asked)
{
    zg_keystore_event_t *event = s_event_new (ZG_KEYSTORE_KEY_UNKNOWN);
    if (event) {
        snprintf (event->hash, sizeof event->hash, "%s", hash);
        event->db_available = asked;
    }
    return event;
}

static zg_keystore_event_t *
s_done_event (zg_admin_job_t **job_p)
{
    zg_keystore_event_t *event = s_event_new (ZG_KEYSTORE_ADMIN_DONE);
    if (!event) {
        zg_admin_job_destroy (job_p);
        return NULL;
    }
    event->job = *job_p;
    *job_p = NULL;
    return event;
}

//  ---------------------------------------------------------------------
//  The thread

typedef struct {
    zsock_t           *pipe;
    zsock_t           *events;      //  PUSH to the frontend
    const zg_config_t *config;
    const char        *salt_key;
    zg_db_t           *db;
    zlistx_t          *queue;       //  s_command_t, in arrival order
    zhashx_t          *known;       //  hashes the frontend's table holds
    int                state;       //  -1 not known yet, 0 down, 1 up
    bool               loaded;
    int                retry_ms;
    int64_t            retry_at;    //  ms, monotonic
    int64_t            reload_at;   //  ms, monotonic
    int64_t            sweep_at;    //  ms, monotonic: next budget reset sweep
    bool               spend_due;   //  a batch committed since the last spend load
    int64_t            spend_loaded_at;    //  ms, monotonic
    bool               terminated;
} s_self_t;

typedef struct {
    const zg_config_t *config;
    const char        *endpoint;
} s_args_t;

static void
s_send (s_self_t *self, zg_keystore_event_t *event)
{
    s_push (self->events, &event);
}

static void
s_set_state (s_self_t *self, bool available)
{
    int state = available ? 1 : 0;
    if (self->state == state)
        return;
    self->state = state;
    if (available)
        zg_info ("keystore: the database is reachable");
    else
        zg_warning ("keystore: the database is not reachable");
    zg_keystore_event_t *event = s_event_new (ZG_KEYSTORE_DB_STATE);
    if (event)
        event->db_available = available;
    s_send (self, event);
}

static void
s_send_upsert (s_self_t *self, const zg_key_record_t *record, zhashx_t *known)
{
    zg_keystore_event_t *event = s_event_new (ZG_KEYSTORE_KEY_UPSERT);
    if (!event)
        return;
    if (s_record_copy (&event->record, record)) {
        zg_keystore_event_destroy (&event);
        return;
    }
    snprintf (event->hash, sizeof event->hash, "%s", record->token ? record->token : "");
    zhashx_update (known, event->hash, (void *) 1);
    s_send (self, event);
}

static void
s_send_remove (s_self_t *self, const char *hash)
{
    zg_keystore_event_t *event = s_event_new (ZG_KEYSTORE_KEY_REMOVE);
    if (!event)
        return;
    snprintf (event->hash, sizeof event->hash, "%s", hash);
    zhashx_delete (self->known, hash);
    s_send (self, event);
}

static void
s_send_budget (s_self_t *self, zg_keystore_event_kind_t kind, zg_keys_owner_t owner,
               const char *id, double spend, double max_budget, int64_t reset_at)
{
    zg_keystore_event_t *event = s_event_new (kind);
    if (!event)
        return;
    event->owner = owner;
    event->id = strdup (id);
    event->spend = spend;
    event->max_budget = max_budget;
    event->budget_reset_at = reset_at;
    if (!event->id)
        zg_keystore_event_destroy (&event);
    s_send (self, event);
}

//  The emit of zg_admin_ctx_t: a handler's change, as an event
static void
s_emit (void *arg, const zg_admin_change_t *change)
{
    s_self_t *self = (s_self_t *) arg;
    switch (change->kind) {
        case ZG_ADMIN_EMIT_KEY_UPSERT:
            if (change->record)
                s_send_upsert (self, change->record, self->known);
            break;
        case ZG_ADMIN_EMIT_KEY_REMOVE:
            if (change->id)
                s_send_remove (self, change->id);
            break;
        case ZG_ADMIN_EMIT_BUDGET:
            if (change->id)
                s_send_budget (self, ZG_KEYSTORE_BUDGET, change->owner, change->id, change->spend,
                               change->max_budget, change->budget_reset_at);
            break;
        case ZG_ADMIN_EMIT_SET_SPEND:
            if (change->id)
                s_send_budget (self, ZG_KEYSTORE_SET_SPEND, change->owner, change->id,
                               change->spend, 0, 0);
            break;
    }
}

static bool
s_connected (s_self_t *self)
{
    return self->db && PQstatus (zg_db_handle (self->db)) == CONNECTION_OK;
}

static void s_answer_queue_down (s_self_t *self);

//  The connection is gone: answer what waits, retry later
static void
s_lost (s_self_t *self, const char *why)
{
    //  Said once per outage, not at every retry
    if (self->db && self->state != 0)
        zg_warning ("keystore: lost the database connection: %s", why);
    else
        zg_debug ("keystore: %s", why);
    zg_db_destroy (&self->db);
    self->retry_ms = self->retry_ms ? self->retry_ms * 2 : RETRY_FIRST_MS;
    if (self->retry_ms > RETRY_LAST_MS)
        self->retry_ms = RETRY_LAST_MS;
    self->retry_at = zclock_mono () + self->retry_ms;
    s_set_state (self, false);
    s_answer_queue_down (self);
}

//  Run a statement; on a broken connection, the connection is dropped
static PGresult *
s_query (s_self_t *self, const char *sql, int count, const char *const *params)
{
    char errbuf [512] = "";
    PGresult *result = zg_db_exec (self->db, sql, count, params, errbuf, sizeof errbuf);
    if (!result) {
        if (!s_connected (self))
            s_lost (self, errbuf);
        else
        if (self->state != 0)
            zg_warning ("keystore: %s", errbuf);
        else
            zg_debug ("keystore: %s", errbuf);
    }
    return result;
}

static void
s_rollback (s_self_t *self)
{
    if (s_connected (self) && PQtransactionStatus (zg_db_handle (self->db)) != PQTRANS_IDLE) {
        char errbuf [256];
        zg_db_command (self->db, "ROLLBACK", 0, NULL, errbuf, sizeof errbuf);
    }
}

static int64_t
s_int64 (PGresult *result, int row, int column)
{
    return PQgetisnull (result, row, column) ? 0 : strtoll (PQgetvalue (result, row, column), NULL, 10);
}

static double
s_double (PGresult *result, int row, int column)
{
    return PQgetisnull (result, row, column) ? 0 : strtod (PQgetvalue (result, row, column), NULL);
}

static const char *s_owner_budget_sql [] = {
    "SELECT user_id, spend, coalesce (max_budget, -1),"
    " coalesce (floor (extract (epoch FROM budget_reset_at))::bigint, 0) FROM \"LiteLLM_UserTable\"",
    "SELECT team_id, spend, coalesce (max_budget, -1),"
    " coalesce (floor (extract (epoch FROM budget_reset_at))::bigint, 0) FROM \"LiteLLM_TeamTable\""
};

//  Users' and teams' budgets: BUDGET (merged) or SET_SPEND (outright)
static int
s_load_owners (s_self_t *self, zg_keystore_event_kind_t kind)
{
    zg_keys_owner_t owners [] = { ZG_KEYS_FOR_USER, ZG_KEYS_FOR_TEAM };
    for (int index = 0; index < 2; index++) {
        PGresult *result = s_query (self, s_owner_budget_sql [index], 0, NULL);
        if (!result)
            return -1;
        for (int row = 0; row < PQntuples (result); row++)
            if (!PQgetisnull (result, row, 0))
                s_send_budget (self, kind, owners [index], PQgetvalue (result, row, 0),
                               s_double (result, row, 1), s_double (result, row, 2),
                               s_int64 (result, row, 3));
        PQclear (result);
    }
    return 0;
}

//  Every key, user and team; keys gone since the last load are removed
static int
s_full_load (s_self_t *self)
{
    self->reload_at = zclock_mono () + (int64_t) (self->config->user_api_key_cache_ttl * 1000);
    PGresult *result = s_query (self, "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY", 0, NULL);
    if (!result)
        return -1;
    PQclear (result);
    result = s_query (self, "SELECT " ZG_ADMIN_KEY_COLUMNS " FROM \"LiteLLM_VerificationToken\"",
                      0, NULL);
    if (!result) {
        s_rollback (self);
        return -1;
    }
    zhashx_t *known = zhashx_new ();
    assert (known);
    size_t skipped = 0;
    for (int row = 0; row < PQntuples (result); row++) {
        zg_key_record_t record;
        char *models = NULL;
        if (zg_admin_key_from_row (result, row, &record, &models) == 0)
            s_send_upsert (self, &record, known);
        else
            skipped++;
        free (models);
    }
    PQclear (result);
    if (skipped)
        zg_warning ("keystore: %zu keys have a models column that is not a list of names; "
                    "left out", skipped);
    if (s_load_owners (self, ZG_KEYSTORE_BUDGET)) {
        s_rollback (self);
        zhashx_destroy (&known);
        return -1;
    }
    s_rollback (self);          //  read only: ends the snapshot
    //  A key that was deleted while this thread was not listening
    for (void *item = zhashx_first (self->known); item; item = zhashx_next (self->known)) {
        const char *hash = (const char *) zhashx_cursor (self->known);
        if (!zhashx_lookup (known, hash)) {
            zg_keystore_event_t *event = s_event_new (ZG_KEYSTORE_KEY_REMOVE);
            if (event) {
                snprintf (event->hash, sizeof event->hash, "%s", hash);
                s_send (self, event);
            }
        }
    }
    zhashx_destroy (&self->known);
    self->known = known;
    if (!self->loaded) {
        self->loaded = true;
        zg_keystore_event_t *event = s_event_new (ZG_KEYSTORE_LOADED);
        if (event)
            event->count = zhashx_size (known);
        s_send (self, event);
    }
    zg_debug ("keystore: loaded %zu keys", zhashx_size (known));
    return 0;
}

//  One key, after a lookup or a notification. 1 found, 0 not, -1 error.
static int
s_load_key (s_self_t *self, const char *hash)
{
    const char *params [] = { hash };
    PGresult *result = s_query (self, "SELECT " ZG_ADMIN_KEY_COLUMNS
                                " FROM \"LiteLLM_VerificationToken\" WHERE token = $1", 1, params);
    if (!result)
        return -1;
    int found = 0;
    if (PQntuples (result) > 0) {
        zg_key_record_t record;
        char *models = NULL;
        if (zg_admin_key_from_row (result, 0, &record, &models) == 0) {
            s_send_upsert (self, &record, self->known);
            found = 1;
        }
        free (models);
    }
    PQclear (result);
    return found;
}

//  Spend of every key, user and team: merged (BUDGET) after a spend
//  batch, set outright (SET_SPEND) after a reset
static int
s_load_spend (s_self_t *self, bool reset)
{
    PGresult *result = s_query (self,
        "SELECT token, spend, coalesce (max_budget, -1),"
        " coalesce (floor (extract (epoch FROM budget_reset_at))::bigint, 0)"
        " FROM \"LiteLLM_VerificationToken\"", 0, NULL);
    if (!result)
        return -1;
    zg_keystore_event_kind_t kind = reset ? ZG_KEYSTORE_SET_SPEND : ZG_KEYSTORE_BUDGET;
    for (int row = 0; row < PQntuples (result); row++) {
        const char *hash = PQgetvalue (result, row, 0);
        if (zhashx_lookup (self->known, hash))
            s_send_budget (self, kind, ZG_KEYS_FOR_KEY, hash, s_double (result, row, 1),
                           s_double (result, row, 2), s_int64 (result, row, 3));
    }
    PQclear (result);
    return s_load_owners (self, kind);
}

//  Budget periods that ended: spend back to 0 and the next reset set, for
//  keys, users and teams, as the reference's reset job does. Rows are
//  locked and skipped when locked, so instances sharing the database
//  never reset one row twice; NOTIFY zgate_spend makes every keystore
//  reload spend, and the later budget_reset_at tells their tables that a
//  new period began (zg_keys_upsert's merge rule). Returns the rows reset,
//  or -1 on an error.
static const struct {
    const char *table;
    const char *id;
} s_budget_owners [] = {
    { "LiteLLM_VerificationToken", "token" },
    { "LiteLLM_UserTable",         "user_id" },
    { "LiteLLM_TeamTable",         "team_id" }
};

static int
s_sweep_budgets (s_self_t *self, int64_t now)
{
    PGresult *result = s_query (self, "BEGIN", 0, NULL);
    if (!result)
        return -1;
    PQclear (result);
    int reset = 0;
    for (size_t owner = 0; owner < sizeof s_budget_owners / sizeof s_budget_owners [0]; owner++) {
        char sql [512];
        snprintf (sql, sizeof sql,
                  "SELECT %s, budget_duration FROM \"%s\""
                  " WHERE budget_reset_at <= (now () AT TIME ZONE 'UTC')"
                  " AND coalesce (budget_duration, '') <> '' AND %s IS NOT NULL"
                  " FOR UPDATE SKIP LOCKED",
                  s_budget_owners [owner].id, s_budget_owners [owner].table,
                  s_budget_owners [owner].id);
        result = s_query (self, sql, 0, NULL);
        if (!result) {
            s_rollback (self);
            return -1;
        }
        snprintf (sql, sizeof sql,
                  "UPDATE \"%s\" SET spend = 0,"
                  " budget_reset_at = to_timestamp ($2::float8) AT TIME ZONE 'UTC'"
                  " WHERE %s = $1",
                  s_budget_owners [owner].table, s_budget_owners [owner].id);
        for (int row = 0; row < PQntuples (result); row++) {
            int64_t next;
            const char *duration = PQgetvalue (result, row, 1);
            if (zg_keys_duration_end (duration, now, &next) != 0 || next <= now) {
                zg_debug ("keystore: budget_duration '%.32s' cannot be scheduled; left as is",
                          duration);
                continue;
            }
            char next_text [32];
            snprintf (next_text, sizeof next_text, "%lld", (long long) next);
            const char *params [] = { PQgetvalue (result, row, 0), next_text };
            PGresult *updated = s_query (self, sql, 2, params);
            if (!updated) {
                PQclear (result);
                s_rollback (self);
                return -1;
            }
            PQclear (updated);
            reset++;
        }
        PQclear (result);
    }
    if (reset) {
        result = s_query (self, "NOTIFY " ZG_KEYSTORE_CHANNEL_SPEND, 0, NULL);
        if (!result) {
            s_rollback (self);
            return -1;
        }
        PQclear (result);
    }
    result = s_query (self, "COMMIT", 0, NULL);
    if (!result)
        return -1;
    PQclear (result);
    if (reset)
        zg_info ("keystore: %d budget periods ended; spend reset", reset);
    return reset;
}

//  What the notifications received so far ask for. True when there were
//  some: the queries run for them may have read more into libpq's queue,
//  where the socket no longer shows them, so the caller looks again
//  before it sleeps.
static bool
s_notifications (s_self_t *self)
{
    if (!s_connected (self))
        return false;
    PGconn *conn = zg_db_handle (self->db);
    if (!PQconsumeInput (conn)) {
        s_lost (self, PQerrorMessage (conn));
        return false;
    }
    bool any = false;
    bool everything = false, spend = false, reset = false;
    zlistx_t *hashes = zlistx_new ();
    assert (hashes);
    zlistx_set_duplicator (hashes, (czmq_duplicator *) strdup);
    zlistx_set_destructor (hashes, (czmq_destructor *) zstr_free);
    zlistx_set_comparator (hashes, (czmq_comparator *) strcmp);
    PGnotify *notify;
    while ((notify = PQnotifies (conn))) {
        any = true;
        if (streq (notify->relname, ZG_KEYSTORE_CHANNEL_KEYS)) {
            if (streq (notify->extra, "*"))
                everything = true;
            else
            if (strlen (notify->extra) == ZG_KEYS_HASH_HEX && !zlistx_find (hashes, notify->extra))
                zlistx_add_end (hashes, notify->extra);
        }
        else
        if (streq (notify->relname, ZG_KEYSTORE_CHANNEL_SPEND)) {
            if (streq (notify->extra, "reset"))
                reset = true;
            else
                spend = true;
        }
        PQfreemem (notify);
    }
    if (everything)
        s_full_load (self);
    else
        for (const char *hash = (const char *) zlistx_first (hashes); hash && s_connected (self);
             hash = (const char *) zlistx_next (hashes))
            if (s_load_key (self, hash) == 0 && zhashx_lookup (self->known, hash))
                s_send_remove (self, hash);
    zlistx_destroy (&hashes);
    //  A full load's keys carry spend merged already; a reset must still
    //  be applied outright, at once
    if (everything)
        self->spend_due = false;
    else
    if (spend)
        self->spend_due = true;
    if (reset && s_connected (self) && s_load_spend (self, true) == 0) {
        self->spend_due = false;
        self->spend_loaded_at = zclock_mono ();
    }
    return any;
}

//  Ms until the spend owed to notifications may be loaded; -1 when none is
static int64_t
s_spend_wait (s_self_t *self, int64_t now)
{
    if (!self->spend_due || !self->db)
        return -1;
    int64_t due = self->spend_loaded_at + SPEND_RELOAD_MIN_MS;
    return due > now ? due - now : 0;
}

static void
s_spend_reload (s_self_t *self)
{
    int64_t now = zclock_mono ();
    if (s_spend_wait (self, now) == 0 && s_connected (self)) {
        self->spend_loaded_at = now;
        if (s_load_spend (self, false) == 0)
            self->spend_due = false;
    }
}

static void
s_connect (s_self_t *self)
{
    char errbuf [512] = "";
    self->db = zg_db_connect (self->config->database_url, errbuf, sizeof errbuf);
    if (!self->db) {
        zg_debug ("keystore: %s", errbuf);
        s_lost (self, errbuf);
        return;
    }
    PGresult *result = s_query (self, "LISTEN " ZG_KEYSTORE_CHANNEL_KEYS, 0, NULL);
    if (result) {
        PQclear (result);
        result = s_query (self, "LISTEN " ZG_KEYSTORE_CHANNEL_SPEND, 0, NULL);
    }
    if (!result) {
        if (self->db)
            s_lost (self, "LISTEN failed");
        return;
    }
    PQclear (result);
    if (s_full_load (self)) {
        if (self->db)
            s_lost (self, "the first load failed");
        return;
    }
    self->retry_ms = 0;
    self->retry_at = 0;
    s_set_state (self, true);
}

static void
s_answer_now (s_self_t *self, s_command_t *command, bool asked)
{
    if (command->kind == COMMAND_LOOKUP)
        s_send (self, s_unknown_event (command->hash, asked));
    else {
        zg_admin_error (command->job, 503, "no_db_connection", NULL,
                        "Service Unavailable, the database is unreachable. Please retry shortly.");
        s_send (self, s_done_event (&command->job));
    }
}

static void
s_answer_queue_down (s_self_t *self)
{
    s_command_t *command;
    while ((command = (s_command_t *) zlistx_detach (self->queue, NULL))) {
        s_answer_now (self, command, false);
        free (command);
    }
}

static void
s_run (s_self_t *self, s_command_t *command)
{
    if (!s_connected (self)) {
        s_answer_now (self, command, false);
        return;
    }
    if (command->kind == COMMAND_LOOKUP) {
        int found = s_load_key (self, command->hash);
        if (found == 0)
            s_send (self, s_unknown_event (command->hash, true));
        else
        if (found < 0)
            s_send (self, s_unknown_event (command->hash, false));
        return;
    }
    zg_admin_ctx_t ctx = {
        self->db, self->config, self->salt_key, (int64_t) time (NULL), s_emit, self
    };
    zg_admin_run (&ctx, command->job);
    zg_debug ("keystore: %s answered %d", zg_admin_op_name (command->job->op), command->job->status);
    s_send (self, s_done_event (&command->job));
    if (!s_connected (self))
        s_lost (self, "connection lost during a job");
}

//  Everything the pipe holds now
static void
s_read_pipe (s_self_t *self)
{
    while (!self->terminated && (zsock_events (self->pipe) & ZMQ_POLLIN)) {
        zframe_t *frame = zframe_recv (self->pipe);
        if (!frame) {
            self->terminated = true;
            break;
        }
        if (zframe_size (frame) == sizeof (s_command_t)) {
            s_command_t *command = (s_command_t *) malloc (sizeof (s_command_t));
            if (command)
                memcpy (command, zframe_data (frame), sizeof (s_command_t));
            else {
                //  Cannot hold it: answer from the frame itself
                s_command_t copy;
                memcpy (&copy, zframe_data (frame), sizeof copy);
                s_answer_now (self, &copy, false);
            }
            if (command
            &&  (!s_connected (self) || zlistx_size (self->queue) >= ZG_KEYSTORE_QUEUE_MAX)) {
                s_answer_now (self, command, false);
                free (command);
            }
            else
            if (command)
                zlistx_add_end (self->queue, command);
        }
        else
        if (zframe_streq (frame, "$TERM"))
            self->terminated = true;
        zframe_destroy (&frame);
    }
}

static void
s_actor (zsock_t *pipe, void *args)
{
    const s_args_t *arguments = (const s_args_t *) args;
    s_self_t self;
    memset (&self, 0, sizeof self);
    self.pipe = pipe;
    self.config = arguments->config;
    self.state = -1;
    self.salt_key = getenv ("LITELLM_SALT_KEY");
    if (!self.salt_key || !*self.salt_key)
        self.salt_key = self.config->master_key;
    self.events = zsock_new (ZMQ_PUSH);
    self.queue = zlistx_new ();
    self.known = zhashx_new ();
    if (!self.events || !self.queue || !self.known) {
        zsock_destroy (&self.events);
        zlistx_destroy (&self.queue);
        zhashx_destroy (&self.known);
        zsock_signal (pipe, 1);
        return;
    }
    zsock_set_sndhwm (self.events, 0);
    zsock_set_linger (self.events, -1);
    int rc = zsock_connect (self.events, "%s", arguments->endpoint);
    zsock_signal (pipe, rc == 0 ? 0 : 1);
    if (rc != 0)
        self.terminated = true;

    while (!self.terminated) {
        int64_t now = zclock_mono ();
        if (!self.db && now >= self.retry_at)
            s_connect (&self);
        else
        if (self.db && now >= self.reload_at)
            s_full_load (&self);
        if (self.db && now >= self.sweep_at) {
            self.sweep_at = now + BUDGET_SWEEP_MS;
            s_sweep_budgets (&self, (int64_t) time (NULL));
        }
        bool notified = s_notifications (&self);
        s_spend_reload (&self);

        long timeout = 0;
        if (zlistx_size (self.queue) == 0 && !notified) {
            now = zclock_mono ();
            int64_t due = self.db ? (self.reload_at < self.sweep_at ? self.reload_at
                                                                    : self.sweep_at)
                                  : self.retry_at;
            timeout = due > now ? (long) (due - now) : 0;
            int64_t spend_wait = s_spend_wait (&self, now);
            if (spend_wait >= 0 && spend_wait < timeout)
                timeout = (long) spend_wait;
        }
        zmq_pollitem_t items [2] = {
            { zsock_resolve (pipe), 0, ZMQ_POLLIN, 0 },
            { NULL, self.db ? zg_db_socket (self.db) : -1, ZMQ_POLLIN, 0 }
        };
        int count = self.db && zg_db_socket (self.db) >= 0 ? 2 : 1;
        if (zmq_poll (items, count, timeout) < 0)
            break;                  //  interrupted: the process is stopping
        s_read_pipe (&self);
        if (self.terminated)
            break;
        s_command_t *command = (s_command_t *) zlistx_detach (self.queue, NULL);
        if (command) {
            s_run (&self, command);
            free (command);
        }
    }
    //  Jobs not run are dropped (destroyed with their events' owner gone)
    s_command_t *command;
    while ((command = (s_command_t *) zlistx_detach (self.queue, NULL))) {
        zg_admin_job_destroy (&command->job);
        free (command);
    }
    //  Marks the end, so the frontend's side knows it has every event
    zg_keystore_event_t *last = NULL;
    zmq_send (zsock_resolve (self.events), &last, sizeof last, 0);
    zg_db_destroy (&self.db);
    zlistx_destroy (&self.queue);
    zhashx_destroy (&self.known);
    zsock_destroy (&self.events);
}

//  ---------------------------------------------------------------------
//  The frontend's side

zg_keystore_t *
zg_keystore_new (const zg_config_t *config)
{
    assert (config);
    if (!config->database_url || !*config->database_url)
        return NULL;
    zg_keystore_t *self = (zg_keystore_t *) calloc (1, sizeof (zg_keystore_t));
    if (!self)
        return NULL;
    snprintf (self->endpoint, sizeof self->endpoint, "inproc://zg-keystore-%p", (void *) self);
    self->events = zsock_new (ZMQ_PULL);
    self->local = zsock_new (ZMQ_PUSH);
    if (!self->events || !self->local) {
        zg_keystore_destroy (&self);
        return NULL;
    }
    zsock_set_rcvhwm (self->events, 0);
    zsock_set_sndhwm (self->local, 0);
    if (zsock_bind (self->events, "%s", self->endpoint) != 0
    ||  zsock_connect (self->local, "%s", self->endpoint) != 0) {
        zg_keystore_destroy (&self);
        return NULL;
    }
    s_args_t args = { config, self->endpoint };
    self->actor = zactor_new (s_actor, &args);
    if (!self->actor)
        zg_keystore_destroy (&self);
    return self;
}

void
zg_keystore_destroy (zg_keystore_t **self_p)
{
    assert (self_p);
    zg_keystore_t *self = *self_p;
    if (!self)
        return;
    bool marked = self->actor != NULL;
    zactor_destroy (&self->actor);
    if (self->events) {
        //  Everything sent before the thread's end mark is there to take;
        //  local answers may still follow, hence the non-blocking drain after
        zsock_set_rcvtimeo (self->events, 5000);
        void *socket = zsock_resolve (self->events);
        zg_keystore_event_t *event;
        while (marked && zmq_recv (socket, &event, sizeof event, 0) == sizeof event && event)
            zg_keystore_event_destroy (&event);
        while (zmq_recv (socket, &event, sizeof event, ZMQ_DONTWAIT) == sizeof event)
            zg_keystore_event_destroy (&event);
    }
    zsock_destroy (&self->local);
    zsock_destroy (&self->events);
    free (self);
    *self_p = NULL;
}

void *
zg_keystore_socket (zg_keystore_t *self)
{
    assert (self);
    return zsock_resolve (self->events);
}

zg_keystore_event_t *
zg_keystore_recv (zg_keystore_t *self)
{
    assert (self);
    zg_keystore_event_t *event = NULL;
    while (zmq_recv (zsock_resolve (self->events), &event, sizeof event, ZMQ_DONTWAIT)
           == sizeof event) {
        if (event)
            return event;
        //  The end mark of a thread that stopped: nothing follows from it
    }
    return NULL;
}

//  A command the pipe would not take now: answered here, at once
static void
s_refuse (zg_keystore_t *self, s_command_t *command)
{
    zg_keystore_event_t *event;
    if (command->kind == COMMAND_LOOKUP)
        event = s_unknown_event (command->hash, false);
    else {
        zg_admin_error (command->job, 503, "no_db_connection", NULL,
                        "Service Unavailable, too many management requests are waiting for "
                        "the database. Please retry shortly.");
        event = s_done_event (&command->job);
    }
    s_push (self->local, &event);
}

static void
s_command_send (zg_keystore_t *self, s_command_t *command)
{
    if (zmq_send (zsock_resolve (zactor_sock (self->actor)), command, sizeof *command,
                  ZMQ_DONTWAIT) != (int) sizeof *command)
        s_refuse (self, command);
}

void
zg_keystore_lookup (zg_keystore_t *self, const char *hash)
{
    assert (self);
    assert (hash);
    s_command_t command;
    memset (&command, 0, sizeof command);
    command.kind = COMMAND_LOOKUP;
    snprintf (command.hash, sizeof command.hash, "%s", hash);
    s_command_send (self, &command);
}

void
zg_keystore_submit (zg_keystore_t *self, zg_admin_job_t **job_p)
{
    assert (self);
    assert (job_p && *job_p);
    s_command_t command;
    memset (&command, 0, sizeof command);
    command.kind = COMMAND_JOB;
    command.job = *job_p;
    *job_p = NULL;
    s_command_send (self, &command);
}

//  A key's spend merged as zg_keys_upsert merges it: the key as it is,
//  with the database's spend, budget and period
static int
s_apply_key_budget (const zg_keystore_event_t *event, zg_keys_t *keys)
{
    const zg_key_record_t *current = zg_keys_lookup (keys, event->id);
    if (!current)
        return -1;
    zg_key_record_t record = *current;
    record.spend = event->spend;
    record.max_budget = event->max_budget;
    record.budget_reset_at = event->budget_reset_at;
    return zg_keys_upsert (keys, &record);
}

int
zg_keystore_apply (const zg_keystore_event_t *event, zg_keys_t *keys, int64_t now)
{
    assert (event);
    assert (keys);
    switch (event->kind) {
        case ZG_KEYSTORE_KEY_UPSERT:
            return zg_keys_upsert (keys, &event->record);
        case ZG_KEYSTORE_KEY_REMOVE:
            zg_keys_remove (keys, event->hash);
            return 0;
        case ZG_KEYSTORE_KEY_UNKNOWN:
            //  Only the database's "no" is remembered; "could not ask" is not
            if (event->db_available)
                zg_keys_remember_unknown (keys, event->hash, now);
            return 0;
        case ZG_KEYSTORE_BUDGET:
            if (!event->id)
                return -1;
            if (event->owner == ZG_KEYS_FOR_KEY)
                return s_apply_key_budget (event, keys);
            return zg_keys_set_budget (keys, event->owner, event->id, event->spend,
                                       event->max_budget, event->budget_reset_at);
        case ZG_KEYSTORE_SET_SPEND:
            if (!event->id)
                return -1;
            //  A reset for someone the table does not hold changes nothing
            zg_keys_set_spend (keys, event->owner, event->id, event->spend);
            return 0;
        case ZG_KEYSTORE_DB_STATE:
            zg_keys_set_db_available (keys, event->db_available);
            return 0;
        case ZG_KEYSTORE_LOADED:
            return 0;
        default:
            return -1;
    }
}

//  ---------------------------------------------------------------------
//  Self test

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

typedef struct {
    zg_keystore_t *store;
    zg_keys_t     *keys;
    uint64_t       handle;
    int            db_down;         //  DB_STATE false events seen
    int            db_up;           //  DB_STATE true events seen
    bool           verbose;
} s_test_t;

//  Takes events, applying table events to the table, until one of kind
//  (about hash or id, when given) arrives: that one is returned (caller
//  destroys), or NULL after timeout_ms
static zg_keystore_event_t *
s_test_wait (s_test_t *test, zg_keystore_event_kind_t kind, const char *about, int timeout_ms)
{
    int64_t deadline = zclock_mono () + timeout_ms;
    while (true) {
        zg_keystore_event_t *event;
        while ((event = zg_keystore_recv (test->store))) {
            if (event->kind != ZG_KEYSTORE_ADMIN_DONE)
                zg_keystore_apply (event, test->keys, (int64_t) time (NULL));
            if (event->kind == ZG_KEYSTORE_DB_STATE) {
                if (event->db_available)
                    test->db_up++;
                else
                    test->db_down++;
            }
            if (event->kind == kind
            &&  (!about || streq (event->hash, about) || (event->id && streq (event->id, about))))
                return event;
            zg_keystore_event_destroy (&event);
        }
        int64_t left = deadline - zclock_mono ();
        if (left <= 0)
            return NULL;
        zmq_pollitem_t item = { zg_keystore_socket (test->store), 0, ZMQ_POLLIN, 0 };
        zmq_poll (&item, 1, (long) left);
    }
}

static bool
s_test_seen (s_test_t *test, zg_keystore_event_kind_t kind, const char *about, int timeout_ms)
{
    zg_keystore_event_t *event = s_test_wait (test, kind, about, timeout_ms);
    bool seen = event != NULL;
    zg_keystore_event_destroy (&event);
    return seen;
}

//  Run a job through the keystore and return it answered
static zg_admin_job_t *
s_test_job (s_test_t *test, zg_admin_op_t op, const char *path_key, const char *query,
            const char *body)
{
    zg_admin_job_t *job = zg_admin_job_new (op, ++test->handle, path_key, query,
                                            body, body ? strlen (body) : 0);
    ZG_CHECK (job);
    zg_keystore_submit (test->store, &job);
    ZG_CHECK (job == NULL);
    zg_keystore_event_t *event = s_test_wait (test, ZG_KEYSTORE_ADMIN_DONE, NULL, 30000);
    ZG_CHECK (event && event->job);
    job = event->job;
    event->job = NULL;
    zg_keystore_event_destroy (&event);
    ZG_CHECK (job->handle == test->handle);
    ZG_CHECK (job->answer && zg_json_valid (job->answer, job->answer_size, NULL));
    if (test->verbose)
        printf ("   %s %s -> %d %.300s\n", zg_admin_op_name (op), query && *query ? query : "",
                job->status, job->answer);
    return job;
}

static void
s_test_apply (void)
{
    zg_keys_t *keys = zg_keys_new (0, 0);
    ZG_CHECK (keys);
    char hash [ZG_KEYS_HASH_HEX + 1], other [ZG_KEYS_HASH_HEX + 1];
    zg_keys_hash ("sk-apply-0001", hash);
    zg_keys_hash ("sk-apply-0002", other);
    const char *models [] = { "gpt-4o", "m2" };
    zg_key_record_t record = {
        hash, "sk-...0001", "alias", models, 2, 0, false, 10, 1.5, -1, "30d", 1000,
        5, -1, -1, "u1", "t1", "{}"
    };
    //  An upsert event owns a deep copy
    zg_keystore_event_t *event = s_event_new (ZG_KEYSTORE_KEY_UPSERT);
    ZG_CHECK (event && s_record_copy (&event->record, &record) == 0);
    ZG_CHECK (event->record.models [1] != models [1] && streq (event->record.models [1], "m2"));
    ZG_CHECK (zg_keystore_apply (event, keys, 100) == 0);
    zg_keystore_event_destroy (&event);
    const zg_key_record_t *held = zg_keys_lookup (keys, hash);
    ZG_CHECK (held && held->spend == 1.5 && held->models_count == 2 && streq (held->user_id, "u1"));

    //  A key's spend from the database merges upward, in the same period
    event = s_event_new (ZG_KEYSTORE_BUDGET);
    event->owner = ZG_KEYS_FOR_KEY;
    event->id = strdup (hash);
    event->spend = 1.0;
    event->max_budget = 20;
    event->budget_reset_at = 1000;
    ZG_CHECK (zg_keystore_apply (event, keys, 100) == 0);
    held = zg_keys_lookup (keys, hash);
    ZG_CHECK (held->spend == 1.5 && held->max_budget == 20 && streq (held->key_alias, "alias"));
    event->spend = 3.0;
    ZG_CHECK (zg_keystore_apply (event, keys, 100) == 0);
    ZG_CHECK (zg_keys_lookup (keys, hash)->spend == 3.0);
    free (event->id);
    event->id = strdup (other);         //  a key the table does not hold
    ZG_CHECK (zg_keystore_apply (event, keys, 100) == -1);
    //  Users and teams
    event->owner = ZG_KEYS_FOR_USER;
    free (event->id);
    event->id = strdup ("u1");
    ZG_CHECK (zg_keystore_apply (event, keys, 100) == 0);
    zg_keystore_event_destroy (&event);

    //  Resets are outright
    event = s_event_new (ZG_KEYSTORE_SET_SPEND);
    event->owner = ZG_KEYS_FOR_KEY;
    event->id = strdup (hash);
    ZG_CHECK (zg_keystore_apply (event, keys, 100) == 0);
    ZG_CHECK (zg_keys_lookup (keys, hash)->spend == 0);
    free (event->id);
    event->id = strdup (other);         //  unknown: nothing to reset
    ZG_CHECK (zg_keystore_apply (event, keys, 100) == 0);
    zg_keystore_event_destroy (&event);

    //  Unknown: remembered only when the database said so
    event = s_unknown_event (other, false);
    ZG_CHECK (zg_keys_should_lookup (keys, other, 100) == ZG_KEYS_LOOKUP);
    ZG_CHECK (zg_keystore_apply (event, keys, 100) == 0);
    ZG_CHECK (zg_keys_should_lookup (keys, other, 100) == ZG_KEYS_LOOKUP_PENDING);
    event->db_available = true;
    ZG_CHECK (zg_keystore_apply (event, keys, 100) == 0);
    ZG_CHECK (zg_keys_should_lookup (keys, other, 100) == ZG_KEYS_LOOKUP_KNOWN_BAD);
    zg_keystore_event_destroy (&event);

    //  Database state
    zg_keys_verdict_t verdict;
    event = s_event_new (ZG_KEYSTORE_DB_STATE);
    ZG_CHECK (zg_keystore_apply (event, keys, 100) == 0);
    char third [ZG_KEYS_HASH_HEX + 1];
    zg_keys_hash ("sk-apply-0003", third);
    ZG_CHECK (zg_keys_check (keys, third, NULL, NULL, 100, &verdict) == -1);
    ZG_CHECK (verdict.reason == ZG_KEYS_DB_UNAVAILABLE);
    event->db_available = true;
    ZG_CHECK (zg_keystore_apply (event, keys, 100) == 0);
    ZG_CHECK (zg_keys_check (keys, third, NULL, NULL, 100, &verdict) == -1);
    ZG_CHECK (verdict.reason == ZG_KEYS_UNKNOWN);
    zg_keystore_event_destroy (&event);

    //  Remove, twice: the second changes nothing
    event = s_event_new (ZG_KEYSTORE_KEY_REMOVE);
    snprintf (event->hash, sizeof event->hash, "%s", hash);
    ZG_CHECK (zg_keystore_apply (event, keys, 100) == 0);
    ZG_CHECK (zg_keys_lookup (keys, hash) == NULL);
    ZG_CHECK (zg_keystore_apply (event, keys, 100) == 0);
    zg_keystore_event_destroy (&event);
    event = s_event_new (ZG_KEYSTORE_LOADED);
    ZG_CHECK (zg_keystore_apply (event, keys, 100) == 0);
    event->kind = ZG_KEYSTORE_ADMIN_DONE;
    ZG_CHECK (zg_keystore_apply (event, keys, 100) == -1);
    zg_keystore_event_destroy (&event);
    ZG_CHECK (event == NULL);
    zg_keys_destroy (&keys);
}

//  A database nobody answers: DB_STATE false, lookups "could not ask",
//  jobs 503, all at once; and stopping is prompt
static void
s_test_unreachable (bool verbose)
{
    zg_config_t *config = zg_config_new_default ();
    ZG_CHECK (config);
    ZG_CHECK (zg_keystore_new (config) == NULL);        //  no database: no keystore
    char url [128];
    snprintf (url, sizeof url, "postgresql://zgate@127.0.0.1:%d/zgate?connect_timeout=2",
              zg_selftest_closed_port ());
    config->database_url = strdup (url);
    s_test_t test = { zg_keystore_new (config), zg_keys_new (0, 0), 0, 0, 0, verbose };
    ZG_CHECK (test.store && test.keys);
    ZG_CHECK (s_test_seen (&test, ZG_KEYSTORE_DB_STATE, NULL, 20000));
    ZG_CHECK (test.db_down == 1 && test.db_up == 0);
    char hash [ZG_KEYS_HASH_HEX + 1];
    zg_keys_hash ("sk-unreachable-1", hash);
    zg_keystore_lookup (test.store, hash);
    zg_keystore_event_t *event = s_test_wait (&test, ZG_KEYSTORE_KEY_UNKNOWN, hash, 20000);
    ZG_CHECK (event && !event->db_available);
    zg_keystore_event_destroy (&event);
    zg_admin_job_t *job = s_test_job (&test, ZG_ADMIN_KEY_LIST, NULL, "", "");
    ZG_CHECK (job->status == 503 && strstr (job->answer, "\"no_db_connection\""));
    ZG_CHECK (strstr (job->answer, "\"code\":\"503\""));
    zg_admin_job_destroy (&job);
    //  Jobs and lookups left in flight are dropped on destroy, no leak
    for (int index = 0; index < 50; index++) {
        zg_keystore_lookup (test.store, hash);
        job = zg_admin_job_new (ZG_ADMIN_GLOBAL_SPEND, 1, NULL, NULL, NULL, 0);
        zg_keystore_submit (test.store, &job);
    }
    zg_keystore_destroy (&test.store);
    ZG_CHECK (test.store == NULL);
    zg_keystore_destroy (&test.store);
    zg_keys_destroy (&test.keys);
    zg_config_destroy (&config);
}

static void s_test_live (const char *url, bool verbose);

void
zg_keystore_test (bool verbose)
{
    printf (" * zg_keystore: ");
    if (verbose)
        printf ("\n");
    s_test_apply ();
    s_test_unreachable (verbose);
    const char *url = getenv ("ZG_TEST_DATABASE_URL");
    if (url && *url)
        s_test_live (url, verbose);
    else
    if (verbose)
        printf ("   ZG_TEST_DATABASE_URL is not set: no live tests\n");
    printf ("OK\n");
}

//  Direct SQL from the test's own connection
static void
s_test_sql (zg_db_t *db, const char *sql)
{
    char errbuf [512] = "";
    int rc = zg_db_command (db, sql, 0, NULL, errbuf, sizeof errbuf);
    if (rc)
        fprintf (stderr, "test SQL failed: %s: %s\n", sql, errbuf);
    ZG_CHECK (rc == 0);
}

//  The first value of a query, copied into out
static void
s_test_value (zg_db_t *db, const char *sql, const char *param, char *out, size_t size)
{
    char errbuf [512] = "";
    const char *params [] = { param };
    PGresult *result = zg_db_exec (db, sql, param ? 1 : 0, param ? params : NULL,
                                   errbuf, sizeof errbuf);
    ZG_CHECK (result);
    snprintf (out, size, "%s", PQntuples (result) ? PQgetvalue (result, 0, 0) : "");
    PQclear (result);
}

//  A string member of the job's answer ("info.key_alias" reaches inside)
static bool
s_test_member (zg_admin_job_t *job, const char *path, char *out, size_t size)
{
    zg_json_span_t span, parent;
    const char *dot = strchr (path, '.');
    if (dot) {
        char first [64];
        snprintf (first, sizeof first, "%.*s", (int) (dot - path), path);
        if (!zg_json_find (job->answer, job->answer_size, first, &parent)
        ||  !zg_json_find_in (job->answer, job->answer_size, &parent, dot + 1, &span))
            return false;
    }
    else
    if (!zg_json_find (job->answer, job->answer_size, path, &span))
        return false;
    if (span.type == ZG_JSON_STRING)
        return zg_json_string (job->answer, &span, out, size) >= 0;
    snprintf (out, size, "%.*s", (int) span.length, job->answer + span.offset);
    return true;
}

static bool
s_test_member_is (zg_admin_job_t *job, const char *path, const char *expected)
{
    char value [4096];
    bool ok = s_test_member (job, path, value, sizeof value) && streq (value, expected);
    if (!ok)
        fprintf (stderr, "member %s of %s is not %s\n", path, job->answer, expected);
    return ok;
}

//  Runs a job that must fail with status, param, and a message holding text
static void
s_test_refused (s_test_t *test, zg_admin_op_t op, const char *path_key, const char *query,
                const char *body, int status, const char *param, const char *text)
{
    zg_admin_job_t *job = s_test_job (test, op, path_key, query, body);
    bool ok = job->status == status && strstr (job->answer, text);
    char code [8];
    snprintf (code, sizeof code, "%d", status);
    ok = ok && s_test_member_is (job, "error.code", code);
    ok = ok && (param ? s_test_member_is (job, "error.param", param)
                      : s_test_member_is (job, "error.param", "null"));
    if (!ok)
        fprintf (stderr, "%s %s %s: expected %d %s, got %d %s\n", zg_admin_op_name (op),
                 query ? query : "", body ? body : "", status, text, job->status, job->answer);
    ZG_CHECK (ok);
    zg_admin_job_destroy (&job);
}

//  Tells whoever drives the test to halt or start the server (stdout),
//  and waits for its word (a line on stdin)
static void
s_test_control (const char *command)
{
    printf ("@@ZG_DB %s\n", command);
    fflush (stdout);
    char line [64];
    ZG_CHECK (fgets (line, sizeof line, stdin) != NULL);
}

static void
s_test_keys (s_test_t *test, zg_db_t *db)
{
    char value [4096], hash [ZG_KEYS_HASH_HEX + 1], key [ZG_KEYS_KEY_MAX + 1];
    const zg_key_record_t *record;

    //  Generate: every default, then every field
    zg_admin_job_t *job = s_test_job (test, ZG_ADMIN_KEY_GENERATE, NULL, "", "");
    ZG_CHECK (job->status == 200);
    ZG_CHECK (s_test_member (job, "key", key, sizeof key) && strncmp (key, "sk-", 3) == 0);
    ZG_CHECK (strlen (key) == 25);
    zg_keys_hash (key, hash);
    ZG_CHECK (s_test_member_is (job, "token", hash) && s_test_member_is (job, "token_id", hash));
    zg_keys_key_name (key, value, sizeof value);
    ZG_CHECK (s_test_member_is (job, "key_name", value));
    ZG_CHECK (s_test_member_is (job, "expires", "null") && s_test_member_is (job, "models", "[]"));
    ZG_CHECK (s_test_member_is (job, "spend", "0") && s_test_member_is (job, "max_budget", "null"));
    ZG_CHECK (s_test_member_is (job, "metadata", "{}"));
    zg_admin_job_destroy (&job);
    ZG_CHECK (zg_keys_lookup (test->keys, hash) != NULL);       //  emitted before the answer
    s_test_value (db, "SELECT count (*) FROM \"LiteLLM_VerificationToken\" WHERE token = $1",
                  hash, value, sizeof value);
    ZG_CHECK (streq (value, "1"));
    s_test_value (db, "SELECT count (*) FROM \"LiteLLM_VerificationToken\" WHERE token = $1",
                  key, value, sizeof value);
    ZG_CHECK (streq (value, "0"));                              //  never the plaintext

    const char *full =
        "{\"key\": \"sk-custom-0001\", \"key_alias\": \"alias-1\", \"duration\": \"30d\","
        " \"models\": [\"gpt-4o\", \"m2\"], \"max_budget\": 10, \"budget_duration\": \"1mo\","
        " \"soft_budget\": 5.5, \"rpm_limit\": 100, \"tpm_limit\": 1000,"
        " \"max_parallel_requests\": 3, \"metadata\": {\"team\": \"x\", \"n\": [1]},"
        " \"user_id\": \"u1\", \"team_id\": \"t1\", \"blocked\": false, \"unknown\": 1}";
    job = s_test_job (test, ZG_ADMIN_KEY_GENERATE, NULL, "", full);
    ZG_CHECK (job->status == 200);
    zg_keys_hash ("sk-custom-0001", hash);
    ZG_CHECK (s_test_member_is (job, "key", "sk-custom-0001") && s_test_member_is (job, "token", hash));
    ZG_CHECK (s_test_member_is (job, "key_name", "sk-...0001"));
    ZG_CHECK (s_test_member_is (job, "key_alias", "alias-1"));
    ZG_CHECK (s_test_member_is (job, "models", "[\"gpt-4o\", \"m2\"]"));
    ZG_CHECK (s_test_member_is (job, "max_budget", "10") && s_test_member_is (job, "soft_budget", "5.5"));
    ZG_CHECK (s_test_member_is (job, "rpm_limit", "100") && s_test_member_is (job, "tpm_limit", "1000"));
    ZG_CHECK (s_test_member_is (job, "max_parallel_requests", "3"));
    ZG_CHECK (s_test_member_is (job, "user_id", "u1") && s_test_member_is (job, "team_id", "t1"));
    ZG_CHECK (s_test_member_is (job, "blocked", "false") && s_test_member_is (job, "duration", "30d"));
    ZG_CHECK (s_test_member_is (job, "budget_duration", "1mo"));
    ZG_CHECK (s_test_member (job, "expires", value, sizeof value) && strlen (value) >= 20);
    ZG_CHECK (s_test_member (job, "budget_reset_at", value, sizeof value) && strlen (value) >= 20);
    zg_admin_job_destroy (&job);
    record = zg_keys_lookup (test->keys, hash);
    ZG_CHECK (record && record->models_count == 2 && streq (record->models [1], "m2"));
    ZG_CHECK (record->max_budget == 10 && record->soft_budget == 5.5 && record->rpm_limit == 100);
    ZG_CHECK (record->tpm_limit == 1000 && record->max_parallel_requests == 3 && !record->blocked);
    ZG_CHECK (streq (record->user_id, "u1") && streq (record->team_id, "t1"));
    ZG_CHECK (streq (record->budget_duration, "1mo") && record->budget_reset_at > time (NULL));
    int64_t in_30_days = (int64_t) time (NULL) + 30 * 86400;
    ZG_CHECK (record->expires > in_30_days - 60 && record->expires <= in_30_days + 1);
    s_test_value (db, "SELECT count (*) FROM \"LiteLLM_UserTable\" WHERE user_id = $1",
                  "u1", value, sizeof value);
    ZG_CHECK (streq (value, "1"));                              //  the user row

    //  Generate refused
    s_test_refused (test, ZG_ADMIN_KEY_GENERATE, NULL, "", "{\"key_alias\": \"alias-1\"}",
                    400, "key_alias", "alias-1");
    s_test_refused (test, ZG_ADMIN_KEY_GENERATE, NULL, "", "{\"key\": \"sk-custom-0001\"}",
                    400, "key", "already exists");
    s_test_refused (test, ZG_ADMIN_KEY_GENERATE, NULL, "", "{\"key\": \"pk-1234\"}",
                    400, "key", "must start with 'sk-'");
    s_test_refused (test, ZG_ADMIN_KEY_GENERATE, NULL, "", "{\"max_budget\": \"10\"}",
                    400, "max_budget", "Invalid value for 'max_budget': expected a number, got a string");
    s_test_refused (test, ZG_ADMIN_KEY_GENERATE, NULL, "", "{\"max_budget\": -1}",
                    400, "max_budget", ">= 0");
    s_test_refused (test, ZG_ADMIN_KEY_GENERATE, NULL, "", "{\"models\": \"gpt-4o\"}",
                    400, "models", "expected a list, got a string");
    s_test_refused (test, ZG_ADMIN_KEY_GENERATE, NULL, "", "{\"models\": [\"a\", 1]}",
                    400, "models", "list of strings");
    s_test_refused (test, ZG_ADMIN_KEY_GENERATE, NULL, "", "{\"rpm_limit\": 1.5}",
                    400, "rpm_limit", "expected an integer");
    s_test_refused (test, ZG_ADMIN_KEY_GENERATE, NULL, "", "{\"tpm_limit\": true}",
                    400, "tpm_limit", "expected an integer, got a boolean");
    s_test_refused (test, ZG_ADMIN_KEY_GENERATE, NULL, "", "{\"max_parallel_requests\": -2}",
                    400, "max_parallel_requests", ">= 0");
    s_test_refused (test, ZG_ADMIN_KEY_GENERATE, NULL, "", "{\"metadata\": [1]}",
                    400, "metadata", "expected an object, got a list");
    s_test_refused (test, ZG_ADMIN_KEY_GENERATE, NULL, "", "{\"duration\": \"30 days\"}",
                    400, "duration", "expected a duration");
    s_test_refused (test, ZG_ADMIN_KEY_GENERATE, NULL, "", "{\"budget_duration\": 30}",
                    400, "budget_duration", "expected a string, got a number");
    s_test_refused (test, ZG_ADMIN_KEY_GENERATE, NULL, "", "{\"blocked\": \"no\"}",
                    400, "blocked", "expected a boolean");
    s_test_refused (test, ZG_ADMIN_KEY_GENERATE, NULL, "", "{\"user_id\": 7}",
                    400, "user_id", "expected a string, got a number");
    s_test_refused (test, ZG_ADMIN_KEY_GENERATE, NULL, "", "{\"soft_budget\": {}}",
                    400, "soft_budget", "expected a number, got an object");
    s_test_refused (test, ZG_ADMIN_KEY_GENERATE, NULL, "", "{\"key_alias\": \"a\\u0000b\"}",
                    400, "key_alias", "NUL");
    s_test_refused (test, ZG_ADMIN_KEY_GENERATE, NULL, "", "{\"max_budget\": 1",
                    400, NULL, "Invalid JSON");
    s_test_refused (test, ZG_ADMIN_KEY_GENERATE, NULL, "", "[1]", 400, NULL, "JSON object");
    char long_alias [400];
    snprintf (long_alias, sizeof long_alias, "{\"key_alias\": \"%0300d\"}", 0);
    s_test_refused (test, ZG_ADMIN_KEY_GENERATE, NULL, "", long_alias, 400, "key_alias", "longer than");
    s_test_value (db, "SELECT count (*) FROM \"LiteLLM_VerificationToken\"", NULL, value, sizeof value);
    ZG_CHECK (streq (value, "3"));                  //  the seeded key and two generated

    //  Info, by key and by hash
    job = s_test_job (test, ZG_ADMIN_KEY_INFO, NULL, "key=sk-custom-0001", "");
    ZG_CHECK (job->status == 200 && s_test_member_is (job, "key", "sk-custom-0001"));
    ZG_CHECK (s_test_member_is (job, "info.key_alias", "alias-1"));
    ZG_CHECK (s_test_member_is (job, "info.spend", "0") && s_test_member_is (job, "info.key_name", "sk-...0001"));
    ZG_CHECK (!s_test_member (job, "info.token", value, sizeof value));
    zg_admin_job_destroy (&job);
    char query [128];
    snprintf (query, sizeof query, "key=%s", hash);
    job = s_test_job (test, ZG_ADMIN_KEY_INFO, NULL, query, "");
    ZG_CHECK (job->status == 200 && s_test_member_is (job, "info.user_id", "u1"));
    zg_admin_job_destroy (&job);
    s_test_refused (test, ZG_ADMIN_KEY_INFO, NULL, "", "", 400, "key", "Missing 'key'");
    s_test_refused (test, ZG_ADMIN_KEY_INFO, NULL, "key=%zz", "", 400, "key", "Invalid 'key'");
    s_test_refused (test, ZG_ADMIN_KEY_INFO, NULL, "key=sk-nobody-1234", "", 404, "key",
                    "Key not found in database: sk-...1234");

    //  Update
    job = s_test_job (test, ZG_ADMIN_KEY_UPDATE, NULL, "",
                      "{\"key\": \"sk-custom-0001\", \"max_budget\": 20, \"models\": [\"x\"],"
                      " \"rpm_limit\": null, \"metadata\": {\"a\": 1}, \"user_id\": \"u2\"}");
    ZG_CHECK (job->status == 200 && s_test_member_is (job, "key", "sk-custom-0001"));
    ZG_CHECK (s_test_member_is (job, "token", hash) && s_test_member_is (job, "max_budget", "20"));
    ZG_CHECK (s_test_member_is (job, "rpm_limit", "100"));          //  null changes nothing
    zg_admin_job_destroy (&job);
    record = zg_keys_lookup (test->keys, hash);
    ZG_CHECK (record && record->max_budget == 20 && record->models_count == 1);
    ZG_CHECK (streq (record->models [0], "x") && record->rpm_limit == 100);
    ZG_CHECK (streq (record->metadata, "{\"a\": 1}") && streq (record->user_id, "u2"));
    s_test_refused (test, ZG_ADMIN_KEY_UPDATE, NULL, "", "{\"max_budget\": 1}", 400, "key", "Missing 'key'");
    s_test_refused (test, ZG_ADMIN_KEY_UPDATE, NULL, "", "{\"key\": \"sk-nobody-1234\"}",
                    404, "key", "not found");
    s_test_refused (test, ZG_ADMIN_KEY_UPDATE, NULL, "",
                    "{\"key\": \"sk-custom-0001\", \"tpm_limit\": \"many\"}", 400, "tpm_limit", "integer");
    s_test_refused (test, ZG_ADMIN_KEY_UPDATE, NULL, "", "{\"key\": 12}", 400, "key", "a string");
    //  Its own alias is not taken; another key's is
    job = s_test_job (test, ZG_ADMIN_KEY_UPDATE, NULL, "",
                      "{\"key\": \"sk-custom-0001\", \"key_alias\": \"alias-1\"}");
    ZG_CHECK (job->status == 200);
    zg_admin_job_destroy (&job);
    s_test_refused (test, ZG_ADMIN_KEY_UPDATE, NULL, "",
                    "{\"key\": \"sk-seeded-0001\", \"key_alias\": \"alias-1\"}", 400, "key_alias",
                    "already exists");

    //  Block and unblock
    job = s_test_job (test, ZG_ADMIN_KEY_BLOCK, NULL, "", "{\"key\": \"sk-custom-0001\"}");
    ZG_CHECK (job->status == 200 && s_test_member_is (job, "blocked", "true"));
    zg_admin_job_destroy (&job);
    ZG_CHECK (zg_keys_lookup (test->keys, hash)->blocked);
    job = s_test_job (test, ZG_ADMIN_KEY_UNBLOCK, NULL, "", "{\"key\": \"sk-custom-0001\"}");
    ZG_CHECK (job->status == 200 && s_test_member_is (job, "blocked", "false"));
    zg_admin_job_destroy (&job);
    ZG_CHECK (!zg_keys_lookup (test->keys, hash)->blocked);
    s_test_refused (test, ZG_ADMIN_KEY_BLOCK, NULL, "", "{\"key\": \"sk-nobody-1234\"}", 404, "key", "not found");
    s_test_refused (test, ZG_ADMIN_KEY_UNBLOCK, NULL, "", "{}", 400, "key", "Missing 'key'");

    //  List
    job = s_test_job (test, ZG_ADMIN_KEY_LIST, NULL, "", "");
    ZG_CHECK (job->status == 200 && s_test_member_is (job, "total_count", "3"));
    ZG_CHECK (s_test_member_is (job, "current_page", "1") && s_test_member_is (job, "total_pages", "1"));
    ZG_CHECK (s_test_member (job, "keys", value, sizeof value) && strstr (value, hash));
    zg_admin_job_destroy (&job);
    job = s_test_job (test, ZG_ADMIN_KEY_LIST, NULL, "page=2&size=2", "");
    ZG_CHECK (job->status == 200 && s_test_member_is (job, "total_pages", "2"));
    ZG_CHECK (s_test_member (job, "keys", value, sizeof value) && strlen (value) == 2 + 2 + 64);
    zg_admin_job_destroy (&job);
    job = s_test_job (test, ZG_ADMIN_KEY_LIST, NULL, "user_id=u2", "");
    ZG_CHECK (job->status == 200 && s_test_member_is (job, "total_count", "1"));
    zg_admin_job_destroy (&job);
    s_test_refused (test, ZG_ADMIN_KEY_LIST, NULL, "page=0", "", 400, "page", "from 1");
    s_test_refused (test, ZG_ADMIN_KEY_LIST, NULL, "size=101", "", 400, "size", "to 100");
    s_test_refused (test, ZG_ADMIN_KEY_LIST, NULL, "size=ten", "", 400, "size", "integer");

    //  Regenerate: the path form, then the body form with a new key given
    job = s_test_job (test, ZG_ADMIN_KEY_REGENERATE, "sk-custom-0001", "", "");
    ZG_CHECK (job->status == 200);
    ZG_CHECK (s_test_member (job, "key", key, sizeof key) && strncmp (key, "sk-", 3) == 0);
    char new_hash [ZG_KEYS_HASH_HEX + 1];
    zg_keys_hash (key, new_hash);
    ZG_CHECK (s_test_member_is (job, "token", new_hash) && s_test_member_is (job, "key_alias", "alias-1"));
    zg_admin_job_destroy (&job);
    ZG_CHECK (zg_keys_lookup (test->keys, hash) == NULL);
    record = zg_keys_lookup (test->keys, new_hash);
    ZG_CHECK (record && record->max_budget == 20);
    s_test_refused (test, ZG_ADMIN_KEY_INFO, NULL, "key=sk-custom-0001", "", 404, "key", "not found");
    char body [512];
    snprintf (body, sizeof body, "{\"key\": \"%s\", \"new_key\": \"sk-custom-0002\"}", key);
    job = s_test_job (test, ZG_ADMIN_KEY_REGENERATE, NULL, "", body);
    ZG_CHECK (job->status == 200 && s_test_member_is (job, "key", "sk-custom-0002"));
    zg_admin_job_destroy (&job);
    ZG_CHECK (zg_keys_lookup (test->keys, new_hash) == NULL);
    zg_keys_hash ("sk-custom-0002", hash);
    ZG_CHECK (zg_keys_lookup (test->keys, hash) != NULL);
    s_test_refused (test, ZG_ADMIN_KEY_REGENERATE, "sk-nobody-1234", "", "", 404, "key", "not found");
    s_test_refused (test, ZG_ADMIN_KEY_REGENERATE, NULL, "", "{}", 400, "key", "Missing 'key'");
    s_test_refused (test, ZG_ADMIN_KEY_REGENERATE, NULL, "",
                    "{\"key\": \"sk-custom-0002\", \"new_key\": \"x\"}", 400, "new_key", "'sk-'");
    s_test_refused (test, ZG_ADMIN_KEY_REGENERATE, NULL, "",
                    "{\"key\": \"sk-custom-0002\", \"new_key\": \"sk-seeded-0001\"}", 400, "new_key",
                    "already exists");

    //  Delete: all or nothing
    s_test_refused (test, ZG_ADMIN_KEY_DELETE, NULL, "",
                    "{\"keys\": [\"sk-custom-0002\", \"sk-nobody-1234\"]}", 404, "key", "sk-...1234");
    ZG_CHECK (zg_keys_lookup (test->keys, hash) != NULL);
    s_test_refused (test, ZG_ADMIN_KEY_DELETE, NULL, "", "{\"key_aliases\": [\"nope\"]}",
                    404, "key_aliases", "nope");
    s_test_refused (test, ZG_ADMIN_KEY_DELETE, NULL, "", "{}", 400, "keys", "non-empty");
    s_test_refused (test, ZG_ADMIN_KEY_DELETE, NULL, "", "{\"keys\": [ ]}", 400, "keys", "non-empty");
    s_test_refused (test, ZG_ADMIN_KEY_DELETE, NULL, "", "{\"keys\": \"sk-custom-0002\"}",
                    400, "keys", "expected a list");
    job = s_test_job (test, ZG_ADMIN_KEY_DELETE, NULL, "", "{\"key_aliases\": [\"alias-1\"]}");
    ZG_CHECK (job->status == 200 && s_test_member_is (job, "deleted_keys", "[\"alias-1\"]"));
    zg_admin_job_destroy (&job);
    ZG_CHECK (zg_keys_lookup (test->keys, hash) == NULL);
}

static void
s_test_spend (s_test_t *test, zg_db_t *db)
{
    char seeded [ZG_KEYS_HASH_HEX + 1], value [4096], sql [1024];
    zg_keys_hash ("sk-seeded-0001", seeded);
    snprintf (sql, sizeof sql,
        "INSERT INTO \"LiteLLM_SpendLogs\" (request_id, api_key, spend, \"startTime\", model, \"user\")"
        " VALUES ('r1', '%s', 1.5, '2024-01-01 10:00', 'gpt-4o', 'u-seed'),"
        " ('r2', '%s', 2, '2024-01-02 23:59:59', 'm2', 'u-seed'),"
        " ('r3', 'other', 4, '2024-01-03 00:00', 'gpt-4o', ''),"
        " ('r4', 'other', 0.25, now () AT TIME ZONE 'UTC', 'gpt-4o', '')", seeded, seeded);
    s_test_sql (db, sql);

    zg_admin_job_t *job = s_test_job (test, ZG_ADMIN_SPEND_LOGS, NULL, "", "");
    ZG_CHECK (job->status == 200 && job->answer [0] == '[');
    ZG_CHECK (strstr (job->answer, "\"r1\"") && strstr (job->answer, "\"r4\""));
    ZG_CHECK (strstr (job->answer, "\"startTime\":\"2024-01-01T10:00:00+00:00\""));
    zg_admin_job_destroy (&job);
    job = s_test_job (test, ZG_ADMIN_SPEND_LOGS, NULL, "api_key=sk-seeded-0001", "");
    ZG_CHECK (job->status == 200 && strstr (job->answer, "\"r1\"") && strstr (job->answer, "\"r2\""));
    ZG_CHECK (!strstr (job->answer, "\"r3\""));
    zg_admin_job_destroy (&job);
    snprintf (sql, sizeof sql, "api_key=%s", seeded);
    job = s_test_job (test, ZG_ADMIN_SPEND_LOGS, NULL, sql, "");
    ZG_CHECK (job->status == 200 && strstr (job->answer, "\"r2\"") && !strstr (job->answer, "\"r4\""));
    zg_admin_job_destroy (&job);
    job = s_test_job (test, ZG_ADMIN_SPEND_LOGS, NULL, "request_id=r3", "");
    ZG_CHECK (job->status == 200 && strstr (job->answer, "\"r3\"") && !strstr (job->answer, "\"r1\""));
    zg_admin_job_destroy (&job);
    job = s_test_job (test, ZG_ADMIN_SPEND_LOGS, NULL, "request_id=none", "");
    ZG_CHECK (job->status == 200 && streq (job->answer, "[]"));
    zg_admin_job_destroy (&job);
    job = s_test_job (test, ZG_ADMIN_SPEND_LOGS, NULL, "user_id=u-seed", "");
    ZG_CHECK (strstr (job->answer, "\"r1\"") && !strstr (job->answer, "\"r3\""));
    zg_admin_job_destroy (&job);
    //  Days: the end date is included whole (r2 at 23:59:59), r3 is the next day
    job = s_test_job (test, ZG_ADMIN_SPEND_LOGS, NULL,
                      "start_date=2024-01-01&end_date=2024-01-02&summarize=false", "");
    ZG_CHECK (job->status == 200 && strstr (job->answer, "\"r1\"") && strstr (job->answer, "\"r2\""));
    ZG_CHECK (!strstr (job->answer, "\"r3\""));
    zg_admin_job_destroy (&job);
    //  Summarised per day, days after the last spend up to end_date at zero
    job = s_test_job (test, ZG_ADMIN_SPEND_LOGS, NULL, "start_date=2024-01-01&end_date=2024-01-04", "");
    ZG_CHECK (job->status == 200);
    snprintf (sql, sizeof sql, "[{\"spend\": 1.5, \"users\": {\"u-seed\": 1.5}, "
              "\"models\": {\"gpt-4o\": 1.5}, \"startTime\": \"2024-01-01\", \"%s\": 1.5}", seeded);
    ZG_CHECK (strncmp (job->answer, sql, strlen (sql)) == 0);
    ZG_CHECK (strstr (job->answer, "{\"spend\": 0, \"users\": {}, \"models\": {}, \"startTime\": \"2024-01-04\"}]"));
    zg_admin_job_destroy (&job);
    job = s_test_job (test, ZG_ADMIN_SPEND_LOGS, NULL, "start_date=2020-01-01&end_date=2020-01-02", "");
    ZG_CHECK (job->status == 200 && streq (job->answer, "[]"));
    zg_admin_job_destroy (&job);
    s_test_refused (test, ZG_ADMIN_SPEND_LOGS, NULL, "start_date=2024-02-30&end_date=2024-03-01", "",
                    400, "start_date", "YYYY-MM-DD");
    s_test_refused (test, ZG_ADMIN_SPEND_LOGS, NULL, "start_date=2024-01-01&end_date=tomorrow", "",
                    400, "end_date", "YYYY-MM-DD");
    s_test_refused (test, ZG_ADMIN_SPEND_LOGS, NULL, "start_date=2024-01-01", "",
                    400, "end_date", "together");
    s_test_refused (test, ZG_ADMIN_SPEND_LOGS, NULL, "start_date=2024-01-02&end_date=2024-01-01", "",
                    400, "end_date", "before");
    s_test_refused (test, ZG_ADMIN_SPEND_LOGS, NULL, "start_date=2024-01-01&end_date=2024-01-02&summarize=maybe",
                    "", 400, "summarize", "true or false");

    //  Global spend: the last 30 days
    job = s_test_job (test, ZG_ADMIN_GLOBAL_SPEND, NULL, "", "");
    ZG_CHECK (job->status == 200 && s_test_member_is (job, "spend", "0.25"));
    ZG_CHECK (s_test_member_is (job, "max_budget", "0"));
    zg_admin_job_destroy (&job);

    //  Spend written by someone else reaches the table on NOTIFY zgate_spend
    s_test_sql (db, "UPDATE \"LiteLLM_VerificationToken\" SET spend = 7 WHERE key_alias = 'seeded'");
    s_test_sql (db, "UPDATE \"LiteLLM_TeamTable\" SET spend = 3 WHERE team_id = 't-seed'");
    s_test_sql (db, "NOTIFY " ZG_KEYSTORE_CHANNEL_SPEND);
    ZG_CHECK (s_test_seen (test, ZG_KEYSTORE_BUDGET, "t-seed", 20000));
    ZG_CHECK (zg_keys_lookup (test->keys, seeded)->spend == 7);
    zg_keys_verdict_t verdict;          //  the team's budget is 2: over it
    ZG_CHECK (zg_keys_check (test->keys, seeded, NULL, NULL, time (NULL), &verdict) == -1);
    ZG_CHECK (verdict.reason == ZG_KEYS_TEAM_OVER_BUDGET);

    //  Reset: zero in the database and in the table, at once
    job = s_test_job (test, ZG_ADMIN_GLOBAL_SPEND_RESET, NULL, "", "");
    ZG_CHECK (job->status == 200);
    ZG_CHECK (streq (job->answer, "{\"message\":\"Spend for all API Keys and Teams reset "
                                  "successfully\",\"status\":\"success\"}"));
    zg_admin_job_destroy (&job);
    ZG_CHECK (zg_keys_lookup (test->keys, seeded)->spend == 0);
    ZG_CHECK (zg_keys_check (test->keys, seeded, NULL, NULL, time (NULL), &verdict) == 0);
    s_test_value (db, "SELECT (SELECT sum (spend) FROM \"LiteLLM_VerificationToken\")"
                      " + (SELECT sum (spend) FROM \"LiteLLM_TeamTable\")"
                      " + (SELECT sum (spend) FROM \"LiteLLM_UserTable\")", NULL, value, sizeof value);
    ZG_CHECK (streq (value, "0"));
    //  The reset's own notification comes back too (as to every instance)
    ZG_CHECK (s_test_seen (test, ZG_KEYSTORE_SET_SPEND, seeded, 20000));
    //  Another instance's reset arrives as SET_SPEND events
    s_test_sql (db, "UPDATE \"LiteLLM_VerificationToken\" SET spend = 9 WHERE key_alias = 'seeded'");
    s_test_sql (db, "NOTIFY " ZG_KEYSTORE_CHANNEL_SPEND);
    ZG_CHECK (s_test_seen (test, ZG_KEYSTORE_BUDGET, seeded, 20000));
    ZG_CHECK (zg_keys_lookup (test->keys, seeded)->spend == 9);
    s_test_sql (db, "UPDATE \"LiteLLM_VerificationToken\" SET spend = 0");
    s_test_sql (db, "NOTIFY " ZG_KEYSTORE_CHANNEL_SPEND ", 'reset'");
    ZG_CHECK (s_test_seen (test, ZG_KEYSTORE_SET_SPEND, seeded, 20000));
    ZG_CHECK (zg_keys_lookup (test->keys, seeded)->spend == 0);

    //  Models: refused without store_model_in_db, as the reference does
    //  (tests/e2e/test_models_db.py covers them with it)
    job = s_test_job (test, ZG_ADMIN_MODEL_NEW, NULL, "", "{}");
    ZG_CHECK (job->status == 500 && strstr (job->answer, "STORE_MODEL_IN_DB"));
    zg_admin_job_destroy (&job);
}

//  Changes made through another connection, and lookups
static void
s_test_notify (s_test_t *test, zg_db_t *db)
{
    char hash [ZG_KEYS_HASH_HEX + 1], sql [512];
    zg_keys_hash ("sk-elsewhere-0001", hash);
    snprintf (sql, sizeof sql, "INSERT INTO \"LiteLLM_VerificationToken\" (token, key_name, rpm_limit)"
              " VALUES ('%s', 'sk-...0001', 5); NOTIFY " ZG_KEYSTORE_CHANNEL_KEYS ", '%s'", hash, hash);
    ZG_CHECK (zg_db_exec_script (db, sql, sql, sizeof sql) == 0);
    ZG_CHECK (s_test_seen (test, ZG_KEYSTORE_KEY_UPSERT, hash, 20000));
    ZG_CHECK (zg_keys_lookup (test->keys, hash) && zg_keys_lookup (test->keys, hash)->rpm_limit == 5);
    snprintf (sql, sizeof sql, "DELETE FROM \"LiteLLM_VerificationToken\" WHERE token = '%s';"
              " NOTIFY " ZG_KEYSTORE_CHANNEL_KEYS ", '%s'", hash, hash);
    ZG_CHECK (zg_db_exec_script (db, sql, sql, sizeof sql) == 0);
    ZG_CHECK (s_test_seen (test, ZG_KEYSTORE_KEY_REMOVE, hash, 20000));
    ZG_CHECK (zg_keys_lookup (test->keys, hash) == NULL);

    //  Lookups: a key nobody announced, and one nobody has
    snprintf (sql, sizeof sql, "INSERT INTO \"LiteLLM_VerificationToken\" (token, key_name)"
              " VALUES ('%s', 'sk-...0001')", hash);
    s_test_sql (db, sql);
    int64_t now = (int64_t) time (NULL);
    ZG_CHECK (zg_keys_should_lookup (test->keys, hash, now) == ZG_KEYS_LOOKUP);
    zg_keystore_lookup (test->store, hash);
    ZG_CHECK (s_test_seen (test, ZG_KEYSTORE_KEY_UPSERT, hash, 20000));
    ZG_CHECK (zg_keys_should_lookup (test->keys, hash, now) == ZG_KEYS_LOOKUP_KNOWN);
    char unknown [ZG_KEYS_HASH_HEX + 1];
    zg_keys_hash ("sk-nobody-at-all", unknown);
    ZG_CHECK (zg_keys_should_lookup (test->keys, unknown, now) == ZG_KEYS_LOOKUP);
    zg_keystore_lookup (test->store, unknown);
    zg_keystore_event_t *event = s_test_wait (test, ZG_KEYSTORE_KEY_UNKNOWN, unknown, 20000);
    ZG_CHECK (event && event->db_available);
    zg_keystore_event_destroy (&event);
    ZG_CHECK (zg_keys_should_lookup (test->keys, unknown, now) == ZG_KEYS_LOOKUP_KNOWN_BAD);

    //  "*": everything again; a key deleted without a word is removed
    snprintf (sql, sizeof sql, "DELETE FROM \"LiteLLM_VerificationToken\" WHERE token = '%s'", hash);
    s_test_sql (db, sql);
    s_test_sql (db, "NOTIFY " ZG_KEYSTORE_CHANNEL_KEYS ", '*'");
    ZG_CHECK (s_test_seen (test, ZG_KEYSTORE_KEY_REMOVE, hash, 20000));
    ZG_CHECK (zg_keys_lookup (test->keys, hash) == NULL);
}

//  The thread busy (a job waiting on a lock): lookups beyond what the pipe
//  and the queue hold are answered at once, "could not ask"
static void
s_test_bounds (s_test_t *test, zg_db_t *db)
{
    s_test_sql (db, "BEGIN");
    s_test_sql (db, "LOCK TABLE \"LiteLLM_VerificationToken\" IN ACCESS EXCLUSIVE MODE");
    zg_admin_job_t *job = zg_admin_job_new (ZG_ADMIN_KEY_LIST, 99, NULL, "", NULL, 0);
    zg_keystore_submit (test->store, &job);
    enum { LOOKUPS = 4000 };
    char hash [ZG_KEYS_HASH_HEX + 1];
    for (int index = 0; index < LOOKUPS; index++) {
        char key [32];
        snprintf (key, sizeof key, "sk-flood-%d", index);
        zg_keys_hash (key, hash);
        zg_keystore_lookup (test->store, hash);
    }
    //  While the thread waits, the pipe refused some: answered already
    int not_asked = 0, asked = 0;
    zg_keystore_event_t *event = s_test_wait (test, ZG_KEYSTORE_KEY_UNKNOWN, NULL, 20000);
    ZG_CHECK (event && !event->db_available);
    not_asked++;
    zg_keystore_event_destroy (&event);
    s_test_sql (db, "COMMIT");
    bool done = false;
    while (asked + not_asked < LOOKUPS || !done) {
        zg_keystore_event_t *any = zg_keystore_recv (test->store);
        if (!any) {
            zmq_pollitem_t item = { zg_keystore_socket (test->store), 0, ZMQ_POLLIN, 0 };
            if (zmq_poll (&item, 1, 30000) <= 0)
                break;
            continue;
        }
        if (any->kind == ZG_KEYSTORE_ADMIN_DONE) {
            //  The job's answer, in order with the lookups
            ZG_CHECK (any->job->handle == 99 && any->job->status == 200);
            done = true;
        }
        else
        if (any->kind == ZG_KEYSTORE_KEY_UNKNOWN) {
            if (any->db_available)
                asked++;
            else
                not_asked++;
        }
        zg_keystore_event_destroy (&any);
    }
    if (test->verbose)
        printf ("   %d lookups while busy: %d asked, %d answered at once\n", LOOKUPS, asked, not_asked);
    ZG_CHECK (done && asked + not_asked == LOOKUPS);
    ZG_CHECK (asked > 0 && asked <= ZG_KEYSTORE_QUEUE_MAX + 1000 && not_asked > 0);
}

//  The keystore's connection killed: it says so, reconnects, says so
static void
s_test_reconnect (s_test_t *test, zg_db_t *db)
{
    int down = test->db_down, up = test->db_up;
    s_test_sql (db, "SELECT pg_terminate_backend (pid) FROM pg_stat_activity"
                    " WHERE datname = current_database () AND pid <> pg_backend_pid ()"
                    " AND application_name = 'zgate'");
    zg_keystore_event_t *event = s_test_wait (test, ZG_KEYSTORE_DB_STATE, NULL, 20000);
    ZG_CHECK (event && !event->db_available);
    zg_keystore_event_destroy (&event);
    event = s_test_wait (test, ZG_KEYSTORE_DB_STATE, NULL, 20000);
    ZG_CHECK (event && event->db_available);
    zg_keystore_event_destroy (&event);
    ZG_CHECK (test->db_down == down + 1 && test->db_up == up + 1);
    zg_admin_job_t *job = s_test_job (test, ZG_ADMIN_GLOBAL_SPEND, NULL, "", "");
    ZG_CHECK (job->status == 200);
    zg_admin_job_destroy (&job);
}

//  The server halted and started again by whoever runs the test
static void
s_test_server_down (s_test_t *test)
{
    int down = test->db_down, up = test->db_up;
    s_test_control ("halt");
    ZG_CHECK (s_test_seen (test, ZG_KEYSTORE_DB_STATE, NULL, 30000));
    ZG_CHECK (test->db_down == down + 1);
    char hash [ZG_KEYS_HASH_HEX + 1];
    zg_keys_hash ("sk-while-down", hash);
    zg_keystore_lookup (test->store, hash);
    zg_keystore_event_t *event = s_test_wait (test, ZG_KEYSTORE_KEY_UNKNOWN, hash, 20000);
    ZG_CHECK (event && !event->db_available);
    zg_keystore_event_destroy (&event);
    zg_admin_job_t *job = s_test_job (test, ZG_ADMIN_KEY_INFO, NULL, "key=sk-seeded-0001", "");
    ZG_CHECK (job->status == 503 && strstr (job->answer, "\"no_db_connection\""));
    zg_admin_job_destroy (&job);
    //  Known keys stay known
    zg_keys_hash ("sk-seeded-0001", hash);
    ZG_CHECK (zg_keys_lookup (test->keys, hash) != NULL);
    s_test_control ("start");
    event = s_test_wait (test, ZG_KEYSTORE_DB_STATE, NULL, 60000);
    ZG_CHECK (event && event->db_available && test->db_up == up + 1);
    zg_keystore_event_destroy (&event);
    job = s_test_job (test, ZG_ADMIN_KEY_INFO, NULL, "key=sk-seeded-0001", "");
    ZG_CHECK (job->status == 200);
    zg_admin_job_destroy (&job);
}

static void
s_test_live (const char *url, bool verbose)
{
    zg_config_t *config = zg_config_new_default ();
    ZG_CHECK (config);
    config->database_url = strdup (url);
    config->master_key = strdup ("sk-master-test-0001");
    char errbuf [512] = "";
    int rc = zg_migrate_run (config, errbuf, sizeof errbuf);
    if (rc)
        fprintf (stderr, "migrations: %s\n", errbuf);
    ZG_CHECK (rc == 0);
    zg_db_t *db = zg_db_connect (url, errbuf, sizeof errbuf);
    ZG_CHECK (db);
    s_test_sql (db, "SET application_name = 'zgate-test'");
    s_test_sql (db, "TRUNCATE \"LiteLLM_VerificationToken\", \"LiteLLM_UserTable\","
                    " \"LiteLLM_TeamTable\", \"LiteLLM_SpendLogs\"");
    char seeded [ZG_KEYS_HASH_HEX + 1], sql [512];
    zg_keys_hash ("sk-seeded-0001", seeded);
    snprintf (sql, sizeof sql, "INSERT INTO \"LiteLLM_VerificationToken\""
              " (token, key_name, key_alias, user_id, team_id, created_at)"
              " VALUES ('%s', 'sk-...0001', 'seeded', 'u-seed', 't-seed', '2000-01-01')", seeded);
    s_test_sql (db, sql);
    s_test_sql (db, "INSERT INTO \"LiteLLM_UserTable\" (user_id, max_budget) VALUES ('u-seed', 100)");
    s_test_sql (db, "INSERT INTO \"LiteLLM_TeamTable\" (team_id, max_budget) VALUES ('t-seed', 2)");

    s_test_t test = { zg_keystore_new (config), zg_keys_new (0, 0), 0, 0, 0, verbose };
    ZG_CHECK (test.store && test.keys);
    zg_keystore_event_t *event = s_test_wait (&test, ZG_KEYSTORE_LOADED, NULL, 30000);
    ZG_CHECK (event && event->count == 1);
    zg_keystore_event_destroy (&event);
    ZG_CHECK (s_test_seen (&test, ZG_KEYSTORE_DB_STATE, NULL, 20000) && test.db_up == 1);
    const zg_key_record_t *record = zg_keys_lookup (test.keys, seeded);
    ZG_CHECK (record && streq (record->key_alias, "seeded") && streq (record->team_id, "t-seed"));

    s_test_keys (&test, db);
    s_test_spend (&test, db);
    s_test_notify (&test, db);
    s_test_bounds (&test, db);
    s_test_reconnect (&test, db);
    if (getenv ("ZG_TEST_DB_CONTROL"))
        s_test_server_down (&test);
    else
    if (verbose)
        printf ("   ZG_TEST_DB_CONTROL is not set: no server halt\n");

    zg_keystore_destroy (&test.store);
    zg_keys_destroy (&test.keys);
    zg_db_destroy (&db);
    zg_config_destroy (&config);
}
