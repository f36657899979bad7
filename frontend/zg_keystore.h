/*  =========================================================================
    zg_keystore - the frontend's link to PostgreSQL, in a thread of its own

    The frontend's loop must never wait on the database, so everything that
    does runs here: a CZMQ actor (a thread of the frontend process) with its
    own connections (at most database_connection_pool_limit, counted with
    the frontend's), talking to the frontend over the actor's pipe.

    What it does:
      - feeds the frontend's key table (zg_keys.h): at start every key, user
        and team budget; then every change as it happens: it LISTENs on
        ZG_KEYSTORE_CHANNEL_KEYS (payload: a key hash, or "*" for "reload
        everything") and ZG_KEYSTORE_CHANNEL_SPEND (sent by the spend actor
        after each committed batch: reload spend, at most every 250 ms, so
        that batches in quick succession share one reload), so a change
        made through any instance reaches every instance at once (spend
        within 250 ms); and a full reload every user_api_key_cache_ttl
        seconds as a safety net;
      - looks up a key hash the table does not know (zg_keystore_lookup):
        the answer comes back as KEY_UPSERT or KEY_UNKNOWN;
      - runs management jobs (zg_admin.h) and hands them back answered;
      - tracks whether the database can be reached (DB_STATE events), and
        reconnects with backoff when it cannot; while it is down, lookups
        are answered KEY_UNKNOWN with db_available false and jobs 503.
        The same answers, at once, for what the thread cannot take (more
        than ZG_KEYSTORE_QUEUE_MAX waiting, or a full pipe): KEY_UNKNOWN
        with db_available false means "could not ask" (the negative cache
        is left alone; the requests waiting on it are owed a 503, not a
        401), and only true means the database does not know the key.

    The frontend polls zg_keystore_socket for input, takes each event with
    zg_keystore_recv and either answers a job (ADMIN_DONE) or hands the
    event to zg_keystore_apply, which updates the table.

    Events cross the pipe as pointers (one process, one owner at a time):
    nothing here is a wire format.
    =========================================================================
*/
#ifndef ZG_KEYSTORE_H_INCLUDED
#define ZG_KEYSTORE_H_INCLUDED

#include "common/zg_config.h"
#include "frontend/zg_admin.h"
#include "frontend/zg_keys.h"
#include <czmq.h>

#ifdef __cplusplus
extern "C" {
#endif

#define ZG_KEYSTORE_CHANNEL_KEYS   "zgate_keys"
#define ZG_KEYSTORE_CHANNEL_SPEND  "zgate_spend"
#define ZG_KEYSTORE_CHANNEL_MODELS "zgate_models"

//  Lookups and jobs the thread holds at most, waiting for the database
#define ZG_KEYSTORE_QUEUE_MAX      1024

typedef enum {
    ZG_KEYSTORE_KEY_UPSERT = 1,     //  record
    ZG_KEYSTORE_KEY_REMOVE,         //  hash
    ZG_KEYSTORE_KEY_UNKNOWN,        //  hash: the database does not know it
    ZG_KEYSTORE_BUDGET,             //  owner, id, spend, max_budget, budget_reset_at
    ZG_KEYSTORE_SET_SPEND,          //  owner, id, spend
    ZG_KEYSTORE_DB_STATE,           //  db_available
    ZG_KEYSTORE_LOADED,             //  the first full load is done (count = keys)
    ZG_KEYSTORE_ADMIN_DONE          //  job, answered
} zg_keystore_event_kind_t;

//  One event. Owns its strings, its record's strings and its job.
typedef struct {
    zg_keystore_event_kind_t kind;
    zg_key_record_t  record;            //  KEY_UPSERT
    char             hash [ZG_KEYS_HASH_HEX + 1];
    zg_keys_owner_t  owner;
    char            *id;
    double           spend;
    double           max_budget;
    int64_t          budget_reset_at;
    bool             db_available;
    size_t           count;
    zg_admin_job_t  *job;               //  ADMIN_DONE
} zg_keystore_event_t;

typedef struct _zg_keystore_t zg_keystore_t;

//  Start the thread. NULL when the configuration names no database (then
//  virtual keys are off and only the master key works).
zg_keystore_t *zg_keystore_new (const zg_config_t *config);

//  Stop the thread: jobs not yet run are dropped (their connections are
//  being closed anyway). NULLs the pointer.
void zg_keystore_destroy (zg_keystore_t **self_p);

//  The socket to poll for ZMQ_POLLIN (events are waiting)
void *zg_keystore_socket (zg_keystore_t *self);

//  Next event, or NULL when none is waiting (never blocks)
zg_keystore_event_t *zg_keystore_recv (zg_keystore_t *self);
void zg_keystore_event_destroy (zg_keystore_event_t **event_p);

//  Apply a table event (anything but ADMIN_DONE) to the key table, with
//  now for the negative cache. Returns 0, or -1 when the table refused it.
int zg_keystore_apply (const zg_keystore_event_t *event, zg_keys_t *keys, int64_t now);

//  Ask about a hash the table does not have (after zg_keys_should_lookup
//  said ZG_KEYS_LOOKUP). Never blocks.
void zg_keystore_lookup (zg_keystore_t *self, const char *hash);

//  Hand over a management job (takes ownership; it comes back as
//  ADMIN_DONE). Never blocks.
void zg_keystore_submit (zg_keystore_t *self, zg_admin_job_t **job_p);

//  Self test (the parts that need a server run when ZG_TEST_DATABASE_URL
//  names one)
void zg_keystore_test (bool verbose);

#ifdef __cplusplus
}
#endif

#endif
