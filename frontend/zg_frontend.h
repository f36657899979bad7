/*  =========================================================================
    zg_frontend - the HTTP side: libmicrohttpd in one event loop with a
    DEALER socket to the router

    Serves the OpenAI-compatible routes, authenticates, turns each LLM
    request into a REQUEST message and suspends the connection until the
    router's HEAD/CHUNK/END/ERROR arrive; answers /models, /model/info and
    the health routes itself. A client that goes away cancels its request.
    =========================================================================
*/
#ifndef ZG_FRONTEND_H_INCLUDED
#define ZG_FRONTEND_H_INCLUDED

#include "common/zg_config.h"

#ifdef __cplusplus
extern "C" {
#endif

//  Run the frontend in this thread until SIGTERM/SIGINT. listen_fd is a
//  socket already bound and listening (the supervisor binds it, so a busy
//  port is reported before anything starts and the socket outlives a
//  frontend restart). events_endpoint is bound by a PUB socket for the
//  events subscribers (BUDGET when a key crosses its soft budget). Returns
//  the process exit code.
int zg_frontend_run (const zg_config_t *config, const char *router_endpoint,
                     const char *events_endpoint, int listen_fd);

#ifdef __cplusplus
}
#endif
#endif
