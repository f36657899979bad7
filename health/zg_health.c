/*  =========================================================================
    zg_health - the separate health app

    libmicrohttpd serves from its own thread; this thread waits for a stop
    signal and heartbeats the slot. Every answer is computed from the
    scoreboard at the time of the probe, so nothing is shared between the
    two threads but the scoreboard, which is made for it.
    =========================================================================
*/
#include "health/zg_health.h"
#include "common/zg_log.h"
#include "common/zg_selftest.h"

#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

typedef struct {
    zg_scoreboard_t *board;
    const char *log_level;
    bool detailed_debug;
} s_health_t;

static const char s_alive [] = "\"I'm alive!\"";

static const char *
s_level_name (int level)
{
    if (level <= ZG_LOG_DEBUG)   return "DEBUG";
    if (level <= ZG_LOG_INFO)    return "INFO";
    if (level <= ZG_LOG_WARNING) return "WARNING";
    return "ERROR";
}

static enum MHD_Result
s_answer (struct MHD_Connection *connection, unsigned int status, const char *body,
          bool copy)
{
    struct MHD_Response *response = MHD_create_response_from_buffer (
        strlen (body), (void *) body, copy ? MHD_RESPMEM_MUST_COPY : MHD_RESPMEM_PERSISTENT);
    if (!response)
        return MHD_NO;
    MHD_add_response_header (response, MHD_HTTP_HEADER_CONTENT_TYPE, "application/json");
    enum MHD_Result result = MHD_queue_response (connection, status, response);
    MHD_destroy_response (response);
    return result;
}

static enum MHD_Result
s_on_request (void *cls, struct MHD_Connection *connection, const char *url,
              const char *method, const char *version, const char *upload_data,
              size_t *upload_data_size, void **con_cls)
{
    s_health_t *self = (s_health_t *) cls;
    //  Answer on the second call, once the request is read, so that a
    //  probe's keep-alive connection stays open
    if (*con_cls == NULL) {
        *con_cls = self;
        return MHD_YES;
    }
    if (*upload_data_size) {
        *upload_data_size = 0;
        return MHD_YES;
    }
    const char *path = strncmp (url, "/v1/", 4) == 0 ? url + 3 : url;
    bool known = strcmp (path, "/health/liveliness") == 0 || strcmp (path, "/health/liveness") == 0
              || strcmp (path, "/health/readiness") == 0;
    if (!known)
        return s_answer (connection, 404, "{\"detail\":\"Not Found\"}", false);
    if (strcmp (method, "GET") != 0 && strcmp (method, "HEAD") != 0)
        return s_answer (connection, 405, "{\"detail\":\"Method Not Allowed\"}", false);
    if (strcmp (path, "/health/readiness") != 0)
        return s_answer (connection, 200, s_alive, false);
    if (!self->board)
        return s_answer (connection, 503,
                         "{\"detail\":\"Service Unhealthy (no scoreboard: zgate's actors "
                         "cannot be seen from here)\",\"status\":\"unhealthy\"}", false);
    char *json = NULL;
    int status = zg_scoreboard_readiness (self->board, self->log_level, self->detailed_debug,
                                          &json);
    if (!json)
        return MHD_NO;
    enum MHD_Result result = s_answer (connection, (unsigned int) status, json, true);
    free (json);
    return result;
}

int
zg_health_run (const zg_config_t *config, zg_scoreboard_t *board, int slot, int listen_fd)
{
    assert (config);
    s_health_t self = { board, s_level_name (zg_log_level ()), zg_log_level () <= ZG_LOG_DEBUG };

    signal (SIGPIPE, SIG_IGN);
    sigset_t mask;
    sigemptyset (&mask);
    sigaddset (&mask, SIGTERM);
    sigaddset (&mask, SIGINT);
    //  Before MHD's thread starts, so that it inherits the mask and the
    //  signals reach only the descriptor
    sigprocmask (SIG_BLOCK, &mask, NULL);
    int signal_fd = signalfd (-1, &mask, SFD_CLOEXEC | SFD_NONBLOCK);
    if (signal_fd < 0) {
        zg_error ("health: signalfd: %s", strerror (errno));
        close (listen_fd);
        return 1;
    }
    int flags = fcntl (listen_fd, F_GETFL);
    if (flags >= 0)
        fcntl (listen_fd, F_SETFL, flags | O_NONBLOCK);
    struct MHD_Daemon *daemon = MHD_start_daemon (
        MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_EPOLL,
        0, NULL, NULL, s_on_request, &self,
        MHD_OPTION_LISTEN_SOCKET, (MHD_socket) listen_fd,
        MHD_OPTION_CONNECTION_LIMIT, 256u,
        MHD_OPTION_CONNECTION_TIMEOUT, 30u,
        MHD_OPTION_END);
    if (!daemon) {
        zg_error ("health: cannot start the HTTP server on descriptor %d", listen_fd);
        close (signal_fd);
        close (listen_fd);
        return 1;
    }
    zg_scoreboard_claim (board, slot, "health");
    zg_scoreboard_set_flags (board, slot, ZG_SB_ACCEPTING, 0);
    zg_info ("health app serving /health/liveliness, /health/liveness, /health/readiness");

    int interval = config->heartbeat_ms > 0 ? config->heartbeat_ms / 2 : 500;
    if (interval < 10)
        interval = 10;
    while (true) {
        zg_scoreboard_beat (board, slot);
        struct pollfd item = { signal_fd, POLLIN, 0 };
        int rc = poll (&item, 1, interval);
        if (rc < 0 && errno != EINTR)
            break;
        struct signalfd_siginfo info;
        if (rc > 0 && read (signal_fd, &info, sizeof (info)) == (ssize_t) sizeof (info))
            break;
    }
    zg_scoreboard_set_flags (board, slot, ZG_SB_DRAINING, ZG_SB_ACCEPTING);
    MHD_stop_daemon (daemon);
    close (signal_fd);
    zg_info ("health app stopped");
    return 0;
}


//  --------------------------------------------------------------------------
//  Self test

//  One request on a new connection; the whole answer into reply
static int
s_get (int port, const char *request, char *reply, size_t size)
{
    int fd = socket (AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in address;
    memset (&address, 0, sizeof (address));
    address.sin_family = AF_INET;
    address.sin_addr.s_addr = htonl (INADDR_LOOPBACK);
    address.sin_port = htons ((uint16_t) port);
    if (fd < 0 || connect (fd, (struct sockaddr *) &address, sizeof (address)) != 0)
        return -1;
    ssize_t sent = write (fd, request, strlen (request));
    size_t used = 0;
    ssize_t got;
    while (sent > 0 && used + 1 < size && (got = read (fd, reply + used, size - 1 - used)) > 0)
        used += (size_t) got;
    reply [used] = 0;
    close (fd);
    return (int) used;
}

void
zg_health_test (bool verbose)
{
    printf (" * zg_health: ");
    zg_config_t *config = zg_config_new_default ();
    ZG_CHECK (config);
    zg_scoreboard_t *board = zg_scoreboard_new_private (config, 2);
    ZG_CHECK (board);
    zg_scoreboard_expect (board, ZG_SB_FRONTEND);
    zg_scoreboard_assign (board, 0, ZG_SB_HEALTH);
    zg_scoreboard_assign (board, 1, ZG_SB_FRONTEND);

    int port = 0;
    int listen_fd = zg_selftest_loopback_socket (true, &port);
    pid_t child = fork ();
    ZG_CHECK (child >= 0);
    if (child == 0)
        _exit (zg_health_run (config, board, 0, listen_fd));
    close (listen_fd);

    //  The anonymous mapping is shared with the child: a frontend that
    //  claims its slot here is seen there
    char reply [8192];
    const char *close_header = "Connection: close\r\n\r\n";
    char request [256];
    snprintf (request, sizeof (request), "GET /health/liveliness HTTP/1.1\r\nHost: x\r\n%s",
              close_header);
    ZG_CHECK (s_get (port, request, reply, sizeof (reply)) > 0);
    ZG_CHECK (strstr (reply, "HTTP/1.1 200") && strstr (reply, s_alive));
    snprintf (request, sizeof (request), "GET /health/readiness HTTP/1.1\r\nHost: x\r\n%s",
              close_header);
    ZG_CHECK (s_get (port, request, reply, sizeof (reply)) > 0);
    ZG_CHECK (strstr (reply, "HTTP/1.1 503") && strstr (reply, "frontend not running"));
    zg_scoreboard_claim (board, 1, "frontend");
    zg_scoreboard_set_flags (board, 1, ZG_SB_ACCEPTING, 0);
    ZG_CHECK (s_get (port, request, reply, sizeof (reply)) > 0);
    if (verbose)
        puts (reply);
    ZG_CHECK (strstr (reply, "HTTP/1.1 200") && strstr (reply, "\"status\":\"healthy\""));
    snprintf (request, sizeof (request), "GET /nope HTTP/1.1\r\nHost: x\r\n%s", close_header);
    ZG_CHECK (s_get (port, request, reply, sizeof (reply)) > 0 && strstr (reply, "HTTP/1.1 404"));
    snprintf (request, sizeof (request), "DELETE /health/liveness HTTP/1.1\r\nHost: x\r\n%s",
              close_header);
    ZG_CHECK (s_get (port, request, reply, sizeof (reply)) > 0 && strstr (reply, "HTTP/1.1 405"));

    kill (child, SIGTERM);
    int status = 0;
    ZG_CHECK (waitpid (child, &status, 0) == child);
    ZG_CHECK (WIFEXITED (status) && WEXITSTATUS (status) == 0);
    zg_scoreboard_destroy (&board);
    zg_config_destroy (&config);
    printf ("OK\n");
}
