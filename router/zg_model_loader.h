/*  =========================================================================
    zg_model_loader - the database's deployments, for the router

    With general_settings.store_model_in_db and a database, the router
    serves the deployments of "LiteLLM_ProxyModelTable" (zg_model_store)
    besides the configuration's. Reading them must never hold up the
    router's loop, so a thread of its own does it: it connects, LISTENs on
    zgate_models (the management handlers NOTIFY it in the transaction of
    each change), reads every row at start, on each notification and every
    ZGATE_MODELS_RELOAD_S seconds (default 10, LiteLLM's refresh interval)
    as a safety net, and hands each list that differs from the last one to
    the router as a whole.

    While the database cannot be reached it retries with backoff (1 s
    doubling to 30 s) and hands over nothing, so the router keeps serving
    the last list it got.
    =========================================================================
*/
#ifndef ZG_MODEL_LOADER_H_INCLUDED
#define ZG_MODEL_LOADER_H_INCLUDED

#include "common/zg_config.h"
#include "db/zg_model_store.h"

#include <czmq.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct _zg_model_loader_t zg_model_loader_t;

//  Start the thread. NULL (with the reason logged when it is a problem)
//  when the configuration does not ask for database deployments, there is
//  no salt key to read them with, or the thread cannot start. config must
//  outlive the loader.
zg_model_loader_t *zg_model_loader_new (const zg_config_t *config);

//  Stop the thread (it may be waiting on a connect timeout) and free any
//  list not taken. NULLs the pointer.
void zg_model_loader_destroy (zg_model_loader_t **self_p);

//  The socket to poll for ZMQ_POLLIN: a new list is waiting
zsock_t *zg_model_loader_socket (zg_model_loader_t *self);

//  The newest list (the caller owns it), or NULL when none is waiting.
//  Never blocks; older lists not taken in time were freed.
zg_model_list_t *zg_model_loader_take (zg_model_loader_t *self);

#ifdef __cplusplus
}
#endif

#endif
