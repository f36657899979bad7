/*  =========================================================================
    zg_supervisor - runs every actor of one machine as a child process

    Binds the listening socket itself (so a busy port is an error before
    anything starts, and the socket outlives a frontend restart), makes the
    run directory for the ipc endpoints, starts the frontend (with the
    router as a thread of its process) and the workers by re-executing
    this binary with a role, and restarts any
    child that dies, with backoff. Recycles a worker that reports on its
    status pipe (ZGATE_STATUS_FD) that it reached its request count: the
    replacement starts and registers ("ready") before SIGUSR1 tells the
    old one to finish and exit. SIGTERM/SIGINT stop the children front to
    back and wait for them; a second signal, or SUPERVISORD_STOPWAITSECS,
    ends what they still hold. The supervisor itself never touches ZeroMQ,
    so forking is safe.
    =========================================================================
*/
#ifndef ZG_SUPERVISOR_H_INCLUDED
#define ZG_SUPERVISOR_H_INCLUDED

#include "common/zg_config.h"
#include "supervisor/zg_cli.h"

//  Exit code a child uses for an error that a restart cannot fix (a bad
//  configuration, an endpoint that cannot be bound): the supervisor stops
//  everything instead of restarting it in a loop. (sysexits' EX_CONFIG)
#define ZG_EXIT_FATAL 78

//  Run everything until SIGTERM/SIGINT; returns the process exit code.
int zg_supervisor_run (const zg_config_t *config, const zg_cli_t *cli);

//  Open a listening TCP socket on host:port (IPv4 or IPv6). Returns the
//  descriptor, or -1 with the reason in errbuf.
int zg_listen (const char *host, int port, char *errbuf, size_t errsize);

//  The endpoints the actors meet on: the configured ones, else ipc://
//  sockets in run_dir. Writes into the buffers.
void zg_endpoints (const zg_config_t *config, const char *run_dir,
                   char *frontend_ep, size_t fsize, char *worker_ep, size_t wsize);

#endif
