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

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

//  Run a worker in this thread until SIGTERM/SIGINT, or until it retires.
//  name identifies it in logs and READY ("worker-3"). After max_requests
//  DISPATCHes (0: never) it writes "retire" on status_fd (a pipe to the
//  supervisor; -1: none, and the count only logs); it writes "ready" there
//  each time the router answers its READY. SIGUSR1 retires it: RETIRE to
//  the router, what it holds finished, exit 0. Blocks SIGUSR1 in the
//  calling thread. Returns the process exit code.
int zg_worker_run (const zg_config_t *config, const char *worker_endpoint,
                   const char *name, uint64_t max_requests, int status_fd);

#ifdef __cplusplus
}
#endif
#endif
