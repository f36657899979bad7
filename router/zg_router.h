/*  =========================================================================
    zg_router - the broker between frontends and workers

    Binds a ROUTER socket for frontends and one for workers. Picks a
    deployment for each REQUEST with the configured routing strategy
    (zg_balancer) and a worker with free credit, forwards DISPATCH, relays
    HEAD/CHUNK/END/ERROR back to the frontend that asked, forwards CANCEL.
    Expires workers that stop heartbeating and re-dispatches what they held
    that had not started answering; answers 503 when no worker frees up
    within config->queue_timeout_ms, and 400 for a model it does not know.
    =========================================================================
*/
#ifndef ZG_ROUTER_H_INCLUDED
#define ZG_ROUTER_H_INCLUDED

#include "common/zg_config.h"

#ifdef __cplusplus
extern "C" {
#endif

//  Run the router in this thread until SIGTERM/SIGINT (zsys_interrupted).
//  Returns the process exit code: 0 after a clean stop, 1 if an endpoint
//  cannot be bound (with the reason logged).
int zg_router_run (const zg_config_t *config, const char *frontend_endpoint,
                   const char *worker_endpoint);

#ifdef __cplusplus
}
#endif
#endif
