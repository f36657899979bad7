/*  =========================================================================
    zg_cli - zgate's command line
    =========================================================================
*/
#include "supervisor/zg_cli.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const char *s_usage =
    "usage: zgate [--config FILE] [--host HOST] [--port PORT] [--num_workers N]\n"
    "             [--max_requests_before_restart N] [--run_gunicorn]\n"
    "             [--debug] [--detailed_debug] [--version] [--help]\n"
    "       zgate router   --config FILE [--frontend-endpoint E] [--worker-endpoint E]\n"
    "                      [--spend-endpoint E]\n"
    "       zgate worker   --config FILE [--worker-endpoint E] [--name NAME]\n"
    "       zgate frontend --config FILE [--frontend-endpoint E] [--host HOST] [--port PORT]\n"
    "                      [--with-router [--worker-endpoint E] [--spend-endpoint E]]\n"
    "       zgate spend    --config FILE [--spend-endpoint E]\n"
    "       zgate health   --config FILE\n"
    "       zgate migrate  [--config FILE]\n"
    "\n"
    "With no role, zgate runs the router, N workers and the frontend on this machine and\n"
    "supervises them. A role runs that one actor alone (one container per actor);\n"
    "frontend --with-router runs the router as a thread of the frontend's process.\n"
    "migrate applies pending database migrations (DATABASE_URL) and exits; spend writes\n"
    "the routers' spend records to the database (the supervisor runs it when one is set);\n"
    "health serves the health routes from every actor's heartbeats on SEPARATE_HEALTH_PORT\n"
    "(the supervisor runs it when SEPARATE_HEALTH_APP=1).\n"
    "Environment: CONFIG_FILE_PATH, HOST, PORT, NUM_WORKERS, MAX_REQUESTS_BEFORE_RESTART,\n"
    "LITELLM_LOG, ZGATE_RUN_DIR (where the ipc sockets live).\n";

const char *
zg_cli_usage (void)
{
    return s_usage;
}

//  Whole-string integer parse; the reference's click rejects "4000x" too
static int
s_parse_long (const char *text, long min, long max, long *out)
{
    if (!text || !*text)
        return -1;
    char *end;
    errno = 0;
    long value = strtol (text, &end, 10);
    if (errno || *end || value < min || value > max)
        return -1;
    *out = value;
    return 0;
}

static long
s_cpu_count (void)
{
    long n = sysconf (_SC_NPROCESSORS_ONLN);
    return n > 0 ? n : 1;
}

int
zg_cli_parse (zg_cli_t *cli, int argc, char **argv, char *errbuf, size_t errsize)
{
    memset (cli, 0, sizeof (*cli));
    cli->role = ZG_ROLE_ALL;
    cli->host = "0.0.0.0";
    cli->port = 4000;
    cli->num_workers = (int) s_cpu_count ();
    cli->listen_fd = -1;

    //  Environment first, the command line overrides it
    const char *env;
    long value;
    if ((env = getenv ("CONFIG_FILE_PATH")) && *env)
        cli->config_path = env;
    if ((env = getenv ("HOST")) && *env)
        cli->host = env;
    if ((env = getenv ("PORT")) && *env) {
        if (s_parse_long (env, 0, 65535, &value)) {
            snprintf (errbuf, errsize, "PORT: expected a port number, got \"%s\"", env);
            return -1;
        }
        cli->port = (int) value;
    }
    if ((env = getenv ("NUM_WORKERS")) && *env) {
        if (s_parse_long (env, 1, 1024, &value)) {
            snprintf (errbuf, errsize, "NUM_WORKERS: expected 1..1024, got \"%s\"", env);
            return -1;
        }
        cli->num_workers = (int) value;
    }
    if ((env = getenv ("MAX_REQUESTS_BEFORE_RESTART")) && *env) {
        if (s_parse_long (env, 0, LONG_MAX, &value)) {
            snprintf (errbuf, errsize,
                      "MAX_REQUESTS_BEFORE_RESTART: expected a number, got \"%s\"", env);
            return -1;
        }
        cli->max_requests_before_restart = value;
    }

    int index = 1;
    if (index < argc && argv [index][0] != '-') {
        const char *role = argv [index++];
        if (strcmp (role, "router") == 0)
            cli->role = ZG_ROLE_ROUTER;
        else
        if (strcmp (role, "worker") == 0)
            cli->role = ZG_ROLE_WORKER;
        else
        if (strcmp (role, "frontend") == 0)
            cli->role = ZG_ROLE_FRONTEND;
        else
        if (strcmp (role, "migrate") == 0)
            cli->role = ZG_ROLE_MIGRATE;
        else
        if (strcmp (role, "spend") == 0)
            cli->role = ZG_ROLE_SPEND;
        else
        if (strcmp (role, "health") == 0)
            cli->role = ZG_ROLE_HEALTH;
        else {
            snprintf (errbuf, errsize, "unknown role \"%s\" (router, worker, frontend, spend, health or migrate)", role);
            return -1;
        }
    }
    for (; index < argc; index++) {
        const char *arg = argv [index];
        //  Accept both --flag value and --flag=value
        char name [64];
        const char *inline_value = NULL;
        const char *eq = strchr (arg, '=');
        if (strncmp (arg, "--", 2) == 0 && eq && (size_t) (eq - arg) < sizeof (name)) {
            memcpy (name, arg, eq - arg);
            name [eq - arg] = 0;
            inline_value = eq + 1;
        }
        else
            snprintf (name, sizeof (name), "%s", arg);

#define TAKE_VALUE(var) \
        do { \
            if (inline_value) var = inline_value; \
            else if (index + 1 < argc) var = argv [++index]; \
            else { snprintf (errbuf, errsize, "%s needs a value", name); return -1; } \
        } while (0)

        const char *text = NULL;
        if (!strcmp (name, "--config") || !strcmp (name, "-c"))
            TAKE_VALUE (cli->config_path);
        else
        if (!strcmp (name, "--host"))
            TAKE_VALUE (cli->host);
        else
        if (!strcmp (name, "--port")) {
            TAKE_VALUE (text);
            if (s_parse_long (text, 0, 65535, &value)) {
                snprintf (errbuf, errsize, "--port: expected a port number, got \"%s\"", text);
                return -1;
            }
            cli->port = (int) value;
        }
        else
        if (!strcmp (name, "--num_workers")) {
            TAKE_VALUE (text);
            if (s_parse_long (text, 1, 1024, &value)) {
                snprintf (errbuf, errsize, "--num_workers: expected 1..1024, got \"%s\"", text);
                return -1;
            }
            cli->num_workers = (int) value;
        }
        else
        if (!strcmp (name, "--max_requests_before_restart")) {
            TAKE_VALUE (text);
            if (s_parse_long (text, 0, LONG_MAX, &value)) {
                snprintf (errbuf, errsize,
                          "--max_requests_before_restart: expected a number, got \"%s\"", text);
                return -1;
            }
            cli->max_requests_before_restart = value;
        }
        else
        if (!strcmp (name, "--run_gunicorn"))
            cli->run_gunicorn = true;
        else
        if (!strcmp (name, "--debug"))
            cli->log_level = "INFO";
        else
        if (!strcmp (name, "--detailed_debug"))
            cli->log_level = "DEBUG";
        else
        if (!strcmp (name, "--frontend-endpoint"))
            TAKE_VALUE (cli->frontend_endpoint);
        else
        if (!strcmp (name, "--worker-endpoint"))
            TAKE_VALUE (cli->worker_endpoint);
        else
        if (!strcmp (name, "--name"))
            TAKE_VALUE (cli->name);
        else
        if (!strcmp (name, "--spend-endpoint"))
            TAKE_VALUE (cli->spend_endpoint);
        else
        if (!strcmp (name, "--with-router"))
            cli->with_router = true;
        else
        if (!strcmp (name, "--listen-fd")) {
            TAKE_VALUE (text);
            if (s_parse_long (text, 0, INT_MAX, &value)) {
                snprintf (errbuf, errsize, "--listen-fd: expected a descriptor, got \"%s\"", text);
                return -1;
            }
            cli->listen_fd = (int) value;
        }
        else
        if (!strcmp (name, "--version") || !strcmp (name, "-v"))
            cli->show_version = true;
        else
        if (!strcmp (name, "--help") || !strcmp (name, "-h"))
            cli->show_help = true;
        else {
            snprintf (errbuf, errsize, "unknown option \"%s\"", arg);
            return -1;
        }
#undef TAKE_VALUE
    }
    return 0;
}
