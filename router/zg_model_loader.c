/*  =========================================================================
    zg_model_loader - the database's deployments, for the router

    The thread owns its connection; the lists cross to the router through
    one slot under a mutex, and the pipe only carries a wake-up. A list is
    never in flight in a socket, so whatever is not taken when the router
    stops is still in the slot for the destructor to free.
    =========================================================================
*/
#include "router/zg_model_loader.h"
#include "common/zg_crypt.h"
#include "common/zg_log.h"
#include "db/zg_db.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#define BACKOFF_MIN_MS      1000
#define BACKOFF_MAX_MS      30000
#define RELOAD_DEFAULT_S    10

typedef struct {
    pthread_mutex_t  lock;
    zg_model_list_t *pending;       //  the newest list not taken yet
} s_slot_t;

typedef struct {
    const zg_config_t *config;
    char      *salt_key;
    s_slot_t  *slot;
} s_args_t;

struct _zg_model_loader_t {
    zactor_t *actor;
    s_slot_t  slot;
    s_args_t *args;                 //  read by the thread until it stops
};

typedef struct {
    zsock_t   *pipe;
    s_args_t  *args;
    zg_db_t   *db;
    int64_t    next_connect;
    int64_t    next_reload;
    int64_t    backoff_ms;
    int64_t    reload_ms;
    char       digest [65];         //  of the last list handed over
    zhashx_t  *reported;            //  "id version" of the rows left out and logged
    bool       handed_over;
    bool       failing;             //  for one log line per outage, not per retry
} s_loader_t;

static void
s_publish (s_loader_t *self, zg_model_list_t *list)
{
    s_slot_t *slot = self->args->slot;
    pthread_mutex_lock (&slot->lock);
    zg_model_list_t *older = slot->pending;
    slot->pending = list;
    pthread_mutex_unlock (&slot->lock);
    zg_model_list_destroy (&older);
    zstr_send (self->pipe, "MODELS");
}

static void
s_disconnect (s_loader_t *self, int64_t now)
{
    zg_db_destroy (&self->db);
    self->next_connect = now + self->backoff_ms;
    self->backoff_ms *= 2;
    if (self->backoff_ms > BACKOFF_MAX_MS)
        self->backoff_ms = BACKOFF_MAX_MS;
}

static void
s_trouble (s_loader_t *self, const char *what, const char *errbuf)
{
    if (!self->failing)
        zg_warning ("models: %s: %s; serving the deployments already loaded, retrying",
                    what, errbuf);
    else
        zg_debug ("models: %s: %s", what, errbuf);
    self->failing = true;
}

static void
s_load (s_loader_t *self, int64_t now)
{
    char errbuf [512];
    self->next_reload = now + self->reload_ms;
    zg_model_list_t *list = zg_model_store_load (self->db, self->args->salt_key,
                                                 errbuf, sizeof (errbuf));
    if (!list) {
        s_trouble (self, "cannot read the deployments from the database", errbuf);
        if (PQstatus (zg_db_handle (self->db)) != CONNECTION_OK)
            s_disconnect (self, now);
        return;
    }
    if (self->failing)
        zg_info ("models: the database is back");
    self->failing = false;
    self->backoff_ms = BACKOFF_MIN_MS;
    //  One ERROR line per row left out, not one per reload
    zhashx_t *reported = zhashx_new ();
    for (size_t index = 0; reported && index < list->skipped_count; index++) {
        const zg_model_skipped_t *skipped = &list->skipped [index];
        char *key = zsys_sprintf ("%s %s", skipped->model_id, skipped->version);
        if (!key)
            continue;
        if (!self->reported || !zhashx_lookup (self->reported, key))
            zg_error ("models: deployment %s from the database is not served: %s%s",
                      skipped->model_id, skipped->reason,
                      strstr (skipped->reason, "salt key")?
                      " (did LITELLM_SALT_KEY or the master key change since it was added?)": "");
        zhashx_insert (reported, key, (void *) 1);
        zstr_free (&key);
    }
    if (reported) {
        zhashx_destroy (&self->reported);
        self->reported = reported;
    }
    if (self->handed_over && strcmp (list->digest, self->digest) == 0) {
        zg_model_list_destroy (&list);
        return;
    }
    zg_info ("models: %zu deployment(s) from the database%s", list->count,
             list->skipped_count? " (some left out: see the errors)": "");
    memcpy (self->digest, list->digest, sizeof (self->digest));
    self->handed_over = true;
    s_publish (self, list);
}

static void
s_connect (s_loader_t *self, int64_t now)
{
    char errbuf [512];
    self->db = zg_db_connect (self->args->config->database_url, errbuf, sizeof (errbuf));
    if (self->db
    &&  zg_db_command (self->db, "LISTEN zgate_models", 0, NULL, errbuf, sizeof (errbuf)) == 0) {
        s_load (self, now);
        return;
    }
    s_trouble (self, "cannot reach the database for its deployments", errbuf);
    s_disconnect (self, now);
}

//  Reads what the server sent; true if a change was announced
static bool
s_notified (s_loader_t *self, int64_t now)
{
    PGconn *conn = zg_db_handle (self->db);
    if (!PQconsumeInput (conn)) {
        s_trouble (self, "lost the database connection", PQerrorMessage (conn));
        s_disconnect (self, now);
        return false;
    }
    bool changed = false;
    PGnotify *notify;
    while ((notify = PQnotifies (conn)) != NULL) {
        changed = true;
        PQfreemem (notify);
    }
    return changed;
}

static void
s_loader_actor (zsock_t *pipe, void *arg)
{
    s_loader_t self = { .pipe = pipe, .args = (s_args_t *) arg, .backoff_ms = BACKOFF_MIN_MS };
    const char *reload = getenv ("ZGATE_MODELS_RELOAD_S");
    double seconds = reload? atof (reload): RELOAD_DEFAULT_S;
    self.reload_ms = seconds > 0? (int64_t) (seconds * 1000): RELOAD_DEFAULT_S * 1000;
    zsock_signal (pipe, 0);

    void *pipe_handle = zsock_resolve (pipe);
    while (true) {
        int64_t now = zclock_mono ();
        if (!self.db && now >= self.next_connect)
            s_connect (&self, now);
        now = zclock_mono ();
        if (self.db && now >= self.next_reload)
            s_load (&self, now);
        int64_t wake = self.db? self.next_reload: self.next_connect;
        now = zclock_mono ();
        zmq_pollitem_t items [2] = {
            { pipe_handle, 0, ZMQ_POLLIN, 0 },
            { NULL, self.db? zg_db_socket (self.db): -1, ZMQ_POLLIN, 0 }
        };
        int count = self.db && items [1].fd >= 0? 2: 1;
        if (zmq_poll (items, count, wake > now? wake - now: 0) < 0) {
            if (zmq_errno () == EINTR)
                continue;
            break;
        }
        if (items [0].revents & ZMQ_POLLIN) {
            char *command = zstr_recv (pipe);
            bool term = !command || streq (command, "$TERM");
            zstr_free (&command);
            if (term)
                break;
        }
        if (count == 2 && (items [1].revents & ZMQ_POLLIN) && s_notified (&self, zclock_mono ()))
            s_load (&self, zclock_mono ());
    }
    zg_db_destroy (&self.db);
    zhashx_destroy (&self.reported);
}

zg_model_loader_t *
zg_model_loader_new (const zg_config_t *config)
{
    assert (config);
    if (!config->store_model_in_db || !config->database_url)
        return NULL;
    char errbuf [256];
    char *salt_key = zg_crypt_salt_key (config, errbuf, sizeof (errbuf));
    if (!salt_key) {
        zg_error ("models: store_model_in_db: %s; the database's deployments are not served",
                  errbuf);
        return NULL;
    }
    zg_model_loader_t *self = (zg_model_loader_t *) calloc (1, sizeof (zg_model_loader_t));
    s_args_t *args = (s_args_t *) calloc (1, sizeof (s_args_t));
    if (!self || !args) {
        free (self);
        free (args);
        free (salt_key);
        return NULL;
    }
    pthread_mutex_init (&self->slot.lock, NULL);
    args->config = config;
    args->salt_key = salt_key;
    args->slot = &self->slot;
    self->actor = zactor_new (s_loader_actor, args);
    if (!self->actor) {
        zg_error ("models: cannot start the thread that reads the database's deployments");
        pthread_mutex_destroy (&self->slot.lock);
        free (self);
        free (salt_key);
        free (args);
        return NULL;
    }
    self->args = args;
    return self;
}

void
zg_model_loader_destroy (zg_model_loader_t **self_p)
{
    assert (self_p);
    zg_model_loader_t *self = *self_p;
    if (!self)
        return;
    zactor_destroy (&self->actor);
    memset (self->args->salt_key, 0, strlen (self->args->salt_key));
    free (self->args->salt_key);
    free (self->args);
    zg_model_list_destroy (&self->slot.pending);
    pthread_mutex_destroy (&self->slot.lock);
    free (self);
    *self_p = NULL;
}

zsock_t *
zg_model_loader_socket (zg_model_loader_t *self)
{
    assert (self);
    return zactor_sock (self->actor);
}

zg_model_list_t *
zg_model_loader_take (zg_model_loader_t *self)
{
    assert (self);
    //  The wake-ups: however many there are, the slot holds the newest list
    void *handle = zsock_resolve (zactor_sock (self->actor));
    char buffer [16];
    while (zmq_recv (handle, buffer, sizeof (buffer), ZMQ_DONTWAIT) >= 0)
        ;
    pthread_mutex_lock (&self->slot.lock);
    zg_model_list_t *list = self->slot.pending;
    self->slot.pending = NULL;
    pthread_mutex_unlock (&self->slot.lock);
    return list;
}
