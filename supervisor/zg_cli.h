/*  =========================================================================
    zg_cli - zgate's command line, as LiteLLM's proxy CLI spells it

        zgate [--config FILE] [--host H] [--port P] [--num_workers N]
              [--max_requests_before_restart N] [--run_gunicorn] [--debug]
              [--detailed_debug] [--version] [--help]
        zgate router   --config FILE [--frontend-endpoint E] [--worker-endpoint E]
                       [--spend-endpoint E]
        zgate worker   --config FILE [--worker-endpoint E] [--name NAME]
        zgate frontend --config FILE [--frontend-endpoint E] [--host H] [--port P]
                       [--with-router [--worker-endpoint E] [--spend-endpoint E]]
        zgate spend    --config FILE [--spend-endpoint E]
        zgate health   --config FILE     (on SEPARATE_HEALTH_PORT, default 4001)
        zgate migrate  [--config FILE]

    Environment fallbacks as the reference: CONFIG_FILE_PATH, HOST, PORT,
    NUM_WORKERS, MAX_REQUESTS_BEFORE_RESTART.
    =========================================================================
*/
#ifndef ZG_CLI_H_INCLUDED
#define ZG_CLI_H_INCLUDED

#include <stdbool.h>
#include <stddef.h>

typedef enum {
    ZG_ROLE_ALL = 0,        //  the supervisor: everything on this machine
    ZG_ROLE_ROUTER,
    ZG_ROLE_WORKER,
    ZG_ROLE_FRONTEND,
    ZG_ROLE_MIGRATE,        //  apply pending database migrations and exit
    ZG_ROLE_SPEND,          //  write the routers' spend records to the database
    ZG_ROLE_HEALTH          //  the separate health app (SEPARATE_HEALTH_APP=1)
} zg_role_t;

typedef struct {
    zg_role_t   role;
    const char *config_path;            //  NULL = built-in defaults, no models
    const char *host;                   //  default 0.0.0.0
    int         port;                   //  default 4000
    int         num_workers;            //  default: number of CPUs
    long        max_requests_before_restart;    //  0 = never
    bool        run_gunicorn;
    const char *log_level;              //  from --debug / --detailed_debug, else NULL
    const char *frontend_endpoint;      //  NULL = from configuration
    const char *worker_endpoint;
    const char *spend_endpoint;         //  spend actor's socket; frontend: its router sends there
    const char *name;                   //  worker name
    int         listen_fd;              //  frontend: inherited listening socket, -1 = bind itself
    bool        show_version;
    bool        show_help;
    bool        with_router;            //  frontend: run the router as a thread of it
} zg_cli_t;

//  Parse argv into cli. Returns 0, or -1 with a message in errbuf.
int zg_cli_parse (zg_cli_t *cli, int argc, char **argv, char *errbuf, size_t errsize);

//  The usage text
const char *zg_cli_usage (void);

#endif
