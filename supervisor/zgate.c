/*  =========================================================================
    zgate - the gateway's one binary: the supervisor, or one actor by role
    =========================================================================
*/
#include "common/zg_config.h"
#include "common/zg_log.h"
#include "common/zg_scoreboard.h"
#include "common/zg_sha256.h"
#include "db/zg_migrate.h"
#include "frontend/zg_frontend.h"
#include "health/zg_health.h"
#include "router/zg_router.h"
#include "spend/zg_spend.h"
#include "supervisor/zg_cli.h"
#include "supervisor/zg_dotenv.h"
#include "supervisor/zg_supervisor.h"
#include "workers/zg_worker.h"

#include <czmq.h>
#include <errno.h>
#include <limits.h>
#ifdef ZG_WITH_MIMALLOC
#include <mimalloc.h>
#endif
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const char *
s_component (zg_role_t role)
{
    switch (role) {
        case ZG_ROLE_ROUTER:   return "zgate.router";
        case ZG_ROLE_WORKER:   return "zgate.worker";
        case ZG_ROLE_FRONTEND: return "zgate.frontend";
        case ZG_ROLE_MIGRATE:  return "zgate.migrate";
        case ZG_ROLE_SPEND:    return "zgate.spend";
        case ZG_ROLE_HEALTH:   return "zgate.health";
        default:               return "zgate";
    }
}

//  The run directory of an actor started alone: ZGATE_RUN_DIR, else a
//  fixed one so that actors started by hand on one host find each other
static const char *
s_run_dir (const zg_config_t *config)
{
    if (config->run_dir)
        return config->run_dir;
    const char *env = getenv ("ZGATE_RUN_DIR");
    return env && *env ? env : "/tmp/zgate";
}

//  Where the frontend meets a router that runs as a thread of its process
#define ZG_ROUTER_INPROC "inproc://zgate-router"

//  The frontend, with the router as a thread of this process when asked
//  (--with-router): the frontend reaches it over inproc://, and the
//  router also binds the frontend endpoint, so that other frontends can
//  still join it. The router stops after the frontend has drained.
static int
s_run_frontend (const zg_config_t *config, const zg_cli_t *cli, const char *frontend_ep,
                const char *worker_ep, const char *events_ep, int listen_fd)
{
    //  libcrypto sets itself up on first use, in whichever thread that is;
    //  done by the router's or the keystore's thread, the state it keeps
    //  for that thread is never freed (LeakSanitizer reports it at exit).
    //  The main thread does it first.
    char unused [2 * ZG_SHA256_SIZE + 1];
    zg_sha256_hex ("", 0, unused);
    if (!cli->with_router)
        return zg_frontend_run (config, frontend_ep, events_ep, listen_fd);

    //  The router's thread inherits this mask, so SIGTERM/SIGINT reach the
    //  frontend's signalfd and never CZMQ's handler in another thread
    sigset_t mask;
    sigemptyset (&mask);
    sigaddset (&mask, SIGTERM);
    sigaddset (&mask, SIGINT);
    sigprocmask (SIG_BLOCK, &mask, NULL);
    zsys_handler_set (NULL);

    char endpoints [PATH_MAX + 64];
    snprintf (endpoints, sizeof (endpoints), "%s,%s", ZG_ROUTER_INPROC, frontend_ep);
    zactor_t *router = zg_router_start (config, endpoints, worker_ep);
    if (!router) {
        close (listen_fd);
        return 1;
    }
    int rc = zg_frontend_run (config, ZG_ROUTER_INPROC, events_ep, listen_fd);
    zactor_destroy (&router);
    return rc;
}

int
main (int argc, char **argv)
{
    //  Before the command line, as the reference does: .env may hold PORT,
    //  HOST, the master key... Children inherit the result from the
    //  supervisor and do not read the file again.
    if (!getenv ("ZGATE_SUPERVISED") && zg_dotenv_load_for_mode () < 0)
        fprintf (stderr, "zgate: cannot read .env; going on without it\n");

    zg_cli_t cli;
    char errbuf [1024];
    if (zg_cli_parse (&cli, argc, argv, errbuf, sizeof (errbuf))) {
        fprintf (stderr, "zgate: %s\n\n%s", errbuf, zg_cli_usage ());
        return 2;
    }
    if (cli.show_help) {
        fputs (zg_cli_usage (), stdout);
        return 0;
    }
    if (cli.show_version) {
        printf ("zgate %s\n", ZG_VERSION);
#ifdef ZG_WITH_MIMALLOC
        //  mi_version() is the library actually loaded, not the header's
        int allocator = mi_version ();
        printf ("allocator: mimalloc %d.%d.%d\n",
                allocator / 100, allocator / 10 % 10, allocator % 10);
#elif defined (__SANITIZE_ADDRESS__)
        printf ("allocator: AddressSanitizer\n");
#else
        printf ("allocator: glibc malloc\n");
#endif
        return 0;
    }
    if (cli.log_level && !getenv ("LITELLM_LOG"))
        setenv ("LITELLM_LOG", cli.log_level, 1);

    //  The supervisor has already reported the configuration's warnings;
    //  children load the same file quietly so each warning shows once
    bool supervised = getenv ("ZGATE_SUPERVISED") != NULL;
    const char *json_env = getenv ("JSON_LOGS");
    bool json = json_env && strcmp (json_env, "true") == 0;
    if (supervised) {
        char *saved = getenv ("LITELLM_LOG") ? strdup (getenv ("LITELLM_LOG")) : NULL;
        setenv ("LITELLM_LOG", "ERROR", 1);
        zg_log_init (s_component (cli.role), false, json);
        if (saved) {
            setenv ("LITELLM_LOG", saved, 1);
            free (saved);
        }
        else
            unsetenv ("LITELLM_LOG");
    }
    else
        zg_log_init (s_component (cli.role), false, json);

    zg_config_t *config;
    if (cli.config_path)
        config = zg_config_load (cli.config_path, errbuf, sizeof (errbuf));
    else
        config = zg_config_new_default ();
    if (!config) {
        zg_error ("%s", errbuf);
        fprintf (stderr, "zgate: invalid configuration: %s\n", errbuf);
        return supervised ? ZG_EXIT_FATAL : 1;
    }
    zg_log_init (s_component (cli.role), config->set_verbose, config->json_logs);
    if (!cli.config_path && cli.role == ZG_ROLE_ALL)
        zg_warning ("no --config given: running with no models");

    char frontend_ep [PATH_MAX + 32], worker_ep [PATH_MAX + 32];
    zg_endpoints (config, s_run_dir (config), frontend_ep, sizeof (frontend_ep),
                  worker_ep, sizeof (worker_ep));
    if (cli.frontend_endpoint)
        snprintf (frontend_ep, sizeof (frontend_ep), "%s", cli.frontend_endpoint);
    if (cli.worker_endpoint)
        snprintf (worker_ep, sizeof (worker_ep), "%s", cli.worker_endpoint);
    char events_ep [PATH_MAX + 32];
    zg_config_events_endpoint (config, s_run_dir (config), events_ep, sizeof (events_ep));
    if (cli.role != ZG_ROLE_ALL && cli.role != ZG_ROLE_MIGRATE && !supervised
    &&  (strncmp (frontend_ep, "ipc://", 6) == 0
      || (cli.role == ZG_ROLE_FRONTEND && strncmp (events_ep, "ipc://", 6) == 0)))
        zsys_dir_create ("%s", s_run_dir (config));

    //  The router finds the spend actor through the environment, so that
    //  a router started by any role sends its records to the same place
    if (cli.spend_endpoint && cli.role != ZG_ROLE_SPEND) {
        setenv ("ZGATE_SPEND_ENDPOINT", cli.spend_endpoint, 1);
        if (!getenv ("ZGATE_SPILL_DIR")) {
            char spill_dir [PATH_MAX + 16];
            snprintf (spill_dir, sizeof (spill_dir), "%s/spill", s_run_dir (config));
            setenv ("ZGATE_SPILL_DIR", spill_dir, 1);
        }
    }

    //  The scoreboard the supervisor made, or, for a frontend run alone,
    //  one of its own so that its readiness and /metrics still work
    zg_scoreboard_t *board = NULL;
    const char *board_path = getenv ("ZGATE_SCOREBOARD");
    if (cli.role != ZG_ROLE_ALL && cli.role != ZG_ROLE_MIGRATE) {
        if (board_path && *board_path) {
            board = zg_scoreboard_attach (board_path);
            if (!board)
                zg_warning ("cannot use the scoreboard %s (%s): this process reports no "
                            "heartbeat or metrics", board_path, strerror (errno));
        }
        else
        if (cli.role == ZG_ROLE_HEALTH) {
            char path [PATH_MAX + 16];
            snprintf (path, sizeof (path), "%s/scoreboard", s_run_dir (config));
            board = zg_scoreboard_attach (path);
            if (!board)
                zg_warning ("no scoreboard at %s (%s): readiness will say so", path,
                            strerror (errno));
        }
        else
        if (cli.role == ZG_ROLE_FRONTEND) {
            board = zg_scoreboard_new_private (config, 2);
            if (board) {
                zg_scoreboard_assign (board, 0, ZG_SB_FRONTEND);
                zg_scoreboard_expect (board, ZG_SB_FRONTEND);
                setenv ("ZGATE_SLOT", "0", 1);
                if (cli.with_router) {
                    zg_scoreboard_assign (board, 1, ZG_SB_ROUTER);
                    zg_scoreboard_expect (board, ZG_SB_ROUTER);
                    setenv ("ZGATE_ROUTER_SLOT", "1", 1);
                }
            }
        }
    }
    zg_scoreboard_set_process (board);

    int rc = 0;
    switch (cli.role) {
        case ZG_ROLE_ALL:
            //  Before any child starts, so none sees an old schema
            rc = zg_migrate_at_start (config)? 1: zg_supervisor_run (config, &cli);
            break;
        case ZG_ROLE_MIGRATE:
            if (zg_migrate_run (config, errbuf, sizeof (errbuf))) {
                zg_error ("%s", errbuf);
                rc = 1;
            }
            break;
        case ZG_ROLE_ROUTER:
            rc = zg_router_run (config, frontend_ep, worker_ep);
            break;
        case ZG_ROLE_SPEND: {
            char spend_ep [PATH_MAX + 32];
            if (cli.spend_endpoint)
                snprintf (spend_ep, sizeof (spend_ep), "%s", cli.spend_endpoint);
            else
                zg_spend_endpoint (s_run_dir (config), spend_ep, sizeof (spend_ep));
            rc = zg_spend_run (config, spend_ep);
            break;
        }
        case ZG_ROLE_WORKER: {
            char name [64];
            if (cli.name)
                snprintf (name, sizeof (name), "%s", cli.name);
            else
                snprintf (name, sizeof (name), "worker-%d", (int) getpid ());
            //  The supervisor's pipe for "ready" and "retire"; only a
            //  supervised worker has one
            int status_fd = -1;
            const char *status_env = getenv ("ZGATE_STATUS_FD");
            if (supervised && status_env && *status_env) {
                char *end;
                long value = strtol (status_env, &end, 10);
                if (*end == 0 && value > 2 && value < INT_MAX)
                    status_fd = (int) value;
                else
                    zg_warning ("ZGATE_STATUS_FD \"%s\" is not a descriptor: the worker "
                                "will not be recycled", status_env);
            }
            unsetenv ("ZGATE_STATUS_FD");
            rc = zg_worker_run (config, worker_ep, name,
                                (uint64_t) cli.max_requests_before_restart, status_fd);
            break;
        }
        case ZG_ROLE_FRONTEND: {
            int fd = cli.listen_fd;
            if (fd < 0) {
                fd = zg_listen (cli.host, cli.port, errbuf, sizeof (errbuf));
                if (fd < 0) {
                    zg_error ("%s", errbuf);
                    rc = supervised ? ZG_EXIT_FATAL : 1;
                    break;
                }
            }
            rc = s_run_frontend (config, &cli, frontend_ep, worker_ep, events_ep, fd);
            break;
        }
        case ZG_ROLE_HEALTH: {
            int fd = cli.listen_fd;
            if (fd < 0) {
                const char *port_text = getenv ("SEPARATE_HEALTH_PORT");
                int port = port_text && atoi (port_text) > 0 ? atoi (port_text) : 4001;
                fd = zg_listen (cli.host, port, errbuf, sizeof (errbuf));
                if (fd < 0) {
                    zg_error ("%s", errbuf);
                    rc = supervised ? ZG_EXIT_FATAL : 1;
                    break;
                }
            }
            rc = zg_health_run (config, board, zg_scoreboard_env_slot ("ZGATE_SLOT"), fd);
            break;
        }
    }
    zg_scoreboard_set_process (NULL);
    zg_scoreboard_destroy (&board);
    zg_config_destroy (&config);
    return rc;
}
