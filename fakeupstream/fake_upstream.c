/*  fake_upstream: an OpenAI-compatible upstream for zgate's tests, `make run`
    and the benchmark. See fu_server.h for the design and the README in
    this folder for the interface.  */

#include "fu_server.h"
#include "fu_render.h"

#include <errno.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void
s_usage (FILE *stream)
{
    fputs ("usage: fake_upstream [--host 127.0.0.1] [--port N] [--threads N] [--latency-ms N]\n"
           "                     [--chunks N] [--chunk-interval-ms N] [--status N]\n"
           "                     [--fault reset|hang|slow|reset_mid_stream] [--prompt-tokens N]\n"
           "\n"
           "  --prompt-tokens N  the prompt_tokens every answer's usage reports (default 10;\n"
           "                     negative or beyond 32 bits too, at most 15 digits), total_tokens\n"
           "                     N + completion tokens; a body's \"fake\":{\"prompt_tokens\":N}\n"
           "                     sets it for one answer\n", stream);
}

static int
s_parse_long (const char *option, const char *text, long min, long max, long *value)
{
    char *end = NULL;
    errno = 0;
    long parsed = strtol (text, &end, 10);
    if (errno || end == text || *end || parsed < min || parsed > max) {
        fprintf (stderr, "fake_upstream: %s wants an integer from %ld to %ld, not '%s'\n",
                 option, min, max, text);
        return -1;
    }
    *value = parsed;
    return 0;
}

int
main (int argc, char *argv [])
{
    fu_config_t config = {
        .host = "127.0.0.1", .port = 0, .threads = 1,
        .latency_ms = 0, .chunks = 8, .chunk_interval_ms = 0, .status = 0,
        .fault = FU_FAULT_NONE, .prompt_tokens = FU_PROMPT_TOKENS
    };
    for (int i = 1; i < argc; i++) {
        const char *option = argv [i];
        if (strcmp (option, "--help") == 0 || strcmp (option, "-h") == 0) {
            s_usage (stdout);
            return 0;
        }
        //  Both "--option value" and "--option=value".
        const char *value = NULL;
        char name [64];
        const char *equals = strchr (option, '=');
        if (equals && (size_t) (equals - option) < sizeof name) {
            memcpy (name, option, (size_t) (equals - option));
            name [equals - option] = 0;
            option = name;
            value = equals + 1;
        }
        else
        if (i + 1 < argc)
            value = argv [++i];
        if (!value || strncmp (option, "--", 2) != 0) {
            fprintf (stderr, "fake_upstream: bad argument '%s'\n", argv [i]);
            s_usage (stderr);
            return 2;
        }
        long number = 0;
        int rc = 0;
        if (strcmp (option, "--host") == 0)
            config.host = value;
        else
        if (strcmp (option, "--port") == 0) {
            rc = s_parse_long (option, value, 0, 65535, &number);
            config.port = (int) number;
        }
        else
        if (strcmp (option, "--threads") == 0) {
            rc = s_parse_long (option, value, 1, 256, &number);
            config.threads = (int) number;
        }
        else
        if (strcmp (option, "--latency-ms") == 0)
            rc = s_parse_long (option, value, 0, 3600000, &config.latency_ms);
        else
        if (strcmp (option, "--chunks") == 0)
            rc = s_parse_long (option, value, 0, 100000, &config.chunks);
        else
        if (strcmp (option, "--chunk-interval-ms") == 0)
            rc = s_parse_long (option, value, 0, 3600000, &config.chunk_interval_ms);
        else
        if (strcmp (option, "--status") == 0) {
            rc = s_parse_long (option, value, 200, 599, &config.status);
            if (rc == 0 && (config.status == 204 || config.status == 304)) {
                fprintf (stderr, "fake_upstream: --status needs a status with a body\n");
                rc = -1;
            }
        }
        else
        if (strcmp (option, "--prompt-tokens") == 0) {
            char *end = NULL;
            errno = 0;
            long long parsed = strtoll (value, &end, 10);
            if (errno || end == value || *end
            ||  parsed > FU_PROMPT_TOKENS_LIMIT || parsed < -FU_PROMPT_TOKENS_LIMIT) {
                fprintf (stderr, "fake_upstream: --prompt-tokens wants an integer of at most"
                         " 15 digits, not '%s'\n", value);
                rc = -1;
            }
            config.prompt_tokens = parsed;
        }
        else
        if (strcmp (option, "--fault") == 0) {
            if (fu_fault_parse (value, strlen (value), &config.fault)) {
                fprintf (stderr, "fake_upstream: unknown fault '%s'\n", value);
                rc = -1;
            }
        }
        else {
            fprintf (stderr, "fake_upstream: unknown option '%s'\n", option);
            s_usage (stderr);
            return 2;
        }
        if (rc)
            return 2;
    }

    //  Signals go to sigwait here only, never interrupting the loops.
    sigset_t signals;
    sigemptyset (&signals);
    sigaddset (&signals, SIGINT);
    sigaddset (&signals, SIGTERM);
    pthread_sigmask (SIG_BLOCK, &signals, NULL);
    signal (SIGPIPE, SIG_IGN);

    fu_server_t *server = fu_server_new (&config);
    if (!server)
        return 1;
    if (fu_server_start (server)) {
        fprintf (stderr, "fake_upstream: cannot start threads\n");
        fu_server_destroy (&server);
        return 1;
    }
    printf ("fake_upstream listening on %s:%d\n", fu_server_host (server), fu_server_port (server));
    fflush (stdout);

    int received = 0;
    sigwait (&signals, &received);
    fu_server_destroy (&server);
    return 0;
}
