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

#include <czmq.h>

#ifdef __cplusplus
extern "C" {
#endif

//  Run the router in this thread until SIGTERM/SIGINT (zsys_interrupted).
//  Returns the process exit code: 0 after a clean stop, 1 if an endpoint
//  cannot be bound (with the reason logged).
int zg_router_run (const zg_config_t *config, const char *frontend_endpoint,
                   const char *worker_endpoint);

//  Start the router as an actor (a thread of this process), for the
//  all-in-one mode where it shares the frontend's process and the
//  frontend reaches it over inproc:// (same ZeroMQ context: CZMQ's).
//  frontend_endpoints is a comma-separated list of endpoints to bind for
//  frontends. Returns once both sides are bound, or NULL (the reason
//  logged) if one cannot be. zactor_destroy stops it. config must
//  outlive the actor; the strings need not outlive the call. Block
//  SIGTERM/SIGINT in the calling thread first: the actor's thread
//  inherits the mask, so the process's own signal handling stays in
//  charge of stopping.
zactor_t *zg_router_start (const zg_config_t *config, const char *frontend_endpoints,
                           const char *worker_endpoint);

#ifdef __cplusplus
}
#endif
#endif
