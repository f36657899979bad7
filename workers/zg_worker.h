/*  =========================================================================
    zg_worker - an upstream worker: DISPATCH in, upstream HTTP(S) out

    Connects a DEALER socket to the router's worker endpoint, announces
    READY with its capacity, and runs libcurl's multi interface in the same
    event loop: each DISPATCH becomes a transfer to the deployment's
    upstream through its provider (zg_provider), relayed back as
    HEAD / CHUNK* / END or ERROR. Returns credit as transfers finish,
    heartbeats the router and re-registers if the router restarts.
    =========================================================================
*/
#ifndef ZG_WORKER_H_INCLUDED
#define ZG_WORKER_H_INCLUDED

#include "common/zg_config.h"

#ifdef __cplusplus
extern "C" {
#endif

//  Run a worker in this thread until SIGTERM/SIGINT. name identifies it in
//  logs and READY ("worker-3"). Returns the process exit code.
int zg_worker_run (const zg_config_t *config, const char *worker_endpoint,
                   const char *name);

#ifdef __cplusplus
}
#endif
#endif
