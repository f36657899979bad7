/*  =========================================================================
    zg_health - the separate health app: liveness and readiness on a port
    of their own (SEPARATE_HEALTH_APP=1, SEPARATE_HEALTH_PORT)

    The reference runs a second small server next to the proxy so that
    Kubernetes probes answer even when the proxy is saturated. Here it is a
    process with its own libmicrohttpd thread that reads the scoreboard
    (the heartbeats of every actor), so its readiness is the same as the
    main port's, and it keeps answering while the frontend is stopped,
    saturated or gone: then its readiness says why.

        GET /health/liveliness, /health/liveness   200 "I'm alive!"
        GET /health/readiness                      200 or 503, reference shape
    =========================================================================
*/
#ifndef ZG_HEALTH_H_INCLUDED
#define ZG_HEALTH_H_INCLUDED

#include "common/zg_config.h"
#include "common/zg_scoreboard.h"

#ifdef __cplusplus
extern "C" {
#endif

//  Serve on listen_fd (bound and listening) until SIGTERM/SIGINT. board is
//  the instance's scoreboard (NULL: readiness is always 503, saying so);
//  slot is this process' slot in it, -1 for none. Returns the exit code.
int zg_health_run (const zg_config_t *config, zg_scoreboard_t *board, int slot, int listen_fd);

//  Self test
void zg_health_test (bool verbose);

#ifdef __cplusplus
}
#endif
#endif
