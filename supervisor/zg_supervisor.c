/*  =========================================================================
    zg_supervisor - runs every actor of one machine as a child process
    =========================================================================
*/
#include "supervisor/zg_supervisor.h"
#include "common/zg_log.h"
#include "spend/zg_spend.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <netdb.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

//  A child that lived this long is considered healthy again: its restart
//  backoff starts over
#define ZG_HEALTHY_AFTER_MS   30000
#define ZG_BACKOFF_FIRST_MS   100
#define ZG_BACKOFF_MAX_MS     10000

typedef struct {
    zg_role_t role;
    int       index;            //  worker number, 1-based; 0 for the others
    pid_t     pid;              //  0 while not running
    int64_t   started_at;       //  ms, monotonic
    int64_t   restart_at;       //  ms; when to start it again after it died
    int       backoff_ms;
    int       crashes;          //  consecutive short-lived runs
} s_child_t;

static int64_t
s_now_ms (void)
{
    struct timespec ts;
    clock_gettime (CLOCK_MONOTONIC, &ts);
    return (int64_t) ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static const char *
s_role_name (zg_role_t role)
{
    switch (role) {
        case ZG_ROLE_ROUTER:   return "router";
        case ZG_ROLE_WORKER:   return "worker";
        case ZG_ROLE_FRONTEND: return "frontend";
        case ZG_ROLE_SPEND:    return "spend";
        default:               return "zgate";
    }
}

int
zg_listen (const char *host, int port, char *errbuf, size_t errsize)
{
    char service [16];
    snprintf (service, sizeof (service), "%d", port);
    struct addrinfo hints, *result = NULL;
    memset (&hints, 0, sizeof (hints));
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
    int rc = getaddrinfo (host, service, &hints, &result);
    if (rc != 0) {
        snprintf (errbuf, errsize, "cannot listen on %s:%d: %s", host, port, gai_strerror (rc));
        return -1;
    }
    int fd = -1;
    int saved_errno = 0;
    for (struct addrinfo *ai = result; ai; ai = ai->ai_next) {
        fd = socket (ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, ai->ai_protocol);
        if (fd < 0) {
            saved_errno = errno;
            continue;
        }
        //  SO_REUSEADDR only lets us rebind over TIME_WAIT; it never lets two
        //  live listeners share the port, so a busy port still fails here
        int one = 1;
        setsockopt (fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof (one));
        if (bind (fd, ai->ai_addr, ai->ai_addrlen) == 0 && listen (fd, 4096) == 0)
            break;
        saved_errno = errno;
        close (fd);
        fd = -1;
    }
    freeaddrinfo (result);
    if (fd < 0)
        snprintf (errbuf, errsize, "cannot listen on %s:%d: %s (is another server using port %d?)",
                  host, port, strerror (saved_errno), port);
    return fd;
}

void
zg_endpoints (const zg_config_t *config, const char *run_dir,
              char *frontend_ep, size_t fsize, char *worker_ep, size_t wsize)
{
    if (config->frontend_endpoint)
        snprintf (frontend_ep, fsize, "%s", config->frontend_endpoint);
    else
        snprintf (frontend_ep, fsize, "ipc://%s/frontend.ipc", run_dir);
    if (config->worker_endpoint)
        snprintf (worker_ep, wsize, "%s", config->worker_endpoint);
    else
        snprintf (worker_ep, wsize, "ipc://%s/worker.ipc", run_dir);
}

//  Everything the children need to be started again
typedef struct {
    const zg_config_t *config;
    const zg_cli_t *cli;
    char   self_exe [PATH_MAX];
    char   run_dir [PATH_MAX];
    bool   own_run_dir;         //  we made it, so we remove it
    char   frontend_ep [PATH_MAX + 32];
    char   worker_ep [PATH_MAX + 32];
    char   spend_ep [PATH_MAX + 32];    //  empty: no database, no spend actor
    int    listen_fd;
    s_child_t *children;
    int    child_count;
    bool   stopping;
    bool   frontend_signalled;
    bool   backend_signalled;
    int    exit_code;
} s_supervisor_t;

//  A request crosses several threads of zgate (frontend, router, the
//  ZeroMQ I/O threads, a worker), each woken by a message from the one
//  before. Under the default policy the woken thread preempts its waker
//  at once, so on a busy CPU every message costs two context switches
//  and nothing is ever batched. SCHED_BATCH (same share of the CPU, same
//  nice value) only gives up that wake-up preemption: the waker finishes
//  its turn, and the woken thread then finds several messages waiting.
//  ZGATE_SCHED_BATCH=0 keeps the default policy. Inherited across exec
//  and by every thread the actor starts.
static void
s_schedule_for_throughput (void)
{
    const char *setting = getenv ("ZGATE_SCHED_BATCH");
    if (setting && strcmp (setting, "0") == 0)
        return;
    struct sched_param param = { .sched_priority = 0 };
    if (sched_setscheduler (0, SCHED_BATCH, &param) != 0)
        fprintf (stderr, "zgate: cannot use SCHED_BATCH, keeping the default policy: %s\n",
                 strerror (errno));
}

static pid_t
s_spawn (s_supervisor_t *self, s_child_t *child)
{
    char fd_text [16], name [64];
    snprintf (fd_text, sizeof (fd_text), "%d", self->listen_fd);
    snprintf (name, sizeof (name), "worker-%d", child->index);

    const char *argv [16];
    int argc = 0;
    argv [argc++] = self->self_exe;
    argv [argc++] = s_role_name (child->role);
    if (self->cli->config_path) {
        argv [argc++] = "--config";
        argv [argc++] = self->cli->config_path;
    }
    if (child->role == ZG_ROLE_ROUTER || child->role == ZG_ROLE_FRONTEND) {
        argv [argc++] = "--frontend-endpoint";
        argv [argc++] = self->frontend_ep;
    }
    if (child->role == ZG_ROLE_FRONTEND)
        argv [argc++] = "--with-router";
    if ((child->role == ZG_ROLE_FRONTEND || child->role == ZG_ROLE_SPEND) && self->spend_ep [0]) {
        argv [argc++] = "--spend-endpoint";
        argv [argc++] = self->spend_ep;
    }
    if (child->role != ZG_ROLE_ALL) {
        argv [argc++] = "--worker-endpoint";
        argv [argc++] = self->worker_ep;
    }
    if (child->role == ZG_ROLE_WORKER) {
        argv [argc++] = "--name";
        argv [argc++] = name;
    }
    if (child->role == ZG_ROLE_FRONTEND) {
        argv [argc++] = "--listen-fd";
        argv [argc++] = fd_text;
    }
    argv [argc] = NULL;

    pid_t pid = fork ();
    if (pid < 0) {
        zg_error ("cannot start the %s: fork: %s", s_role_name (child->role), strerror (errno));
        return -1;
    }
    if (pid == 0) {
        //  A child must not outlive the supervisor, or a restarted pod would
        //  find its ports and sockets taken by orphans
        prctl (PR_SET_PDEATHSIG, SIGTERM);
        sigset_t none;
        sigemptyset (&none);
        sigprocmask (SIG_SETMASK, &none, NULL);
        if (child->role == ZG_ROLE_FRONTEND) {
            int flags = fcntl (self->listen_fd, F_GETFD);
            fcntl (self->listen_fd, F_SETFD, flags & ~FD_CLOEXEC);
        }
        s_schedule_for_throughput ();
        setenv ("ZGATE_RUN_DIR", self->run_dir, 1);
        setenv ("ZGATE_SUPERVISED", "1", 1);
        execv (self->self_exe, (char **) argv);
        fprintf (stderr, "zgate: cannot execute %s: %s\n", self->self_exe, strerror (errno));
        _exit (ZG_EXIT_FATAL);
    }
    child->pid = pid;
    child->started_at = s_now_ms ();
    zg_info ("started %s%s%s (pid %d)", s_role_name (child->role),
             child->index ? " " : "", child->index ? name : "", (int) pid);
    return pid;
}

static void
s_signal_children (s_supervisor_t *self, int signum)
{
    for (int i = 0; i < self->child_count; i++)
        if (self->children [i].pid > 0)
            kill (self->children [i].pid, signum);
}

//  Stopping goes front to back: the frontend first, so it stops accepting
//  and lets the requests and streams it holds finish while its router and
//  the workers still serve them; the workers once the frontend has exited.
static void
s_stop_in_order (s_supervisor_t *self)
{
    bool frontend_running = false;
    for (int i = 0; i < self->child_count; i++)
        if (self->children [i].role == ZG_ROLE_FRONTEND && self->children [i].pid > 0) {
            frontend_running = true;
            if (!self->frontend_signalled)
                kill (self->children [i].pid, SIGTERM);
        }
    self->frontend_signalled = true;
    if (frontend_running || self->backend_signalled)
        return;
    for (int i = 0; i < self->child_count; i++)
        if (self->children [i].role != ZG_ROLE_FRONTEND && self->children [i].pid > 0)
            kill (self->children [i].pid, SIGTERM);
    self->backend_signalled = true;
}

static int
s_running_children (s_supervisor_t *self)
{
    int count = 0;
    for (int i = 0; i < self->child_count; i++)
        if (self->children [i].pid > 0)
            count++;
    return count;
}

//  A child exited: decide whether to start it again, and when
static void
s_child_exited (s_supervisor_t *self, pid_t pid, int status)
{
    for (int i = 0; i < self->child_count; i++) {
        s_child_t *child = &self->children [i];
        if (child->pid != pid)
            continue;
        child->pid = 0;
        if (self->stopping) {
            s_stop_in_order (self);
            return;
        }

        char how [64];
        if (WIFEXITED (status))
            snprintf (how, sizeof (how), "exited with code %d", WEXITSTATUS (status));
        else
            snprintf (how, sizeof (how), "was killed by signal %d", WTERMSIG (status));

        if (WIFEXITED (status) && WEXITSTATUS (status) == ZG_EXIT_FATAL) {
            zg_error ("%s (pid %d) %s: it cannot run with this configuration; stopping zgate",
                      s_role_name (child->role), (int) pid, how);
            self->stopping = true;
            self->exit_code = 1;
            s_signal_children (self, SIGTERM);
            return;
        }
        int64_t now = s_now_ms ();
        if (now - child->started_at >= ZG_HEALTHY_AFTER_MS) {
            child->backoff_ms = ZG_BACKOFF_FIRST_MS;
            child->crashes = 0;
        }
        else {
            child->crashes++;
            child->backoff_ms = child->backoff_ms ? child->backoff_ms * 2 : ZG_BACKOFF_FIRST_MS;
            if (child->backoff_ms > ZG_BACKOFF_MAX_MS)
                child->backoff_ms = ZG_BACKOFF_MAX_MS;
        }
        child->restart_at = now + (child->crashes ? child->backoff_ms : 0);
        if (child->crashes >= 5)
            zg_error ("%s (pid %d) %s; it is crash-looping (%d quick exits in a row), "
                      "next start in %d ms", s_role_name (child->role), (int) pid, how,
                      child->crashes, child->backoff_ms);
        else
            zg_warning ("%s (pid %d) %s; starting it again", s_role_name (child->role),
                        (int) pid, how);
        return;
    }
}

static int
s_make_run_dir (s_supervisor_t *self)
{
    const char *configured = self->config->run_dir ? self->config->run_dir : getenv ("ZGATE_RUN_DIR");
    if (configured && *configured) {
        snprintf (self->run_dir, sizeof (self->run_dir), "%s", configured);
        if (mkdir (self->run_dir, 0700) != 0 && errno != EEXIST) {
            zg_error ("cannot create the run directory %s: %s", self->run_dir, strerror (errno));
            return -1;
        }
        return 0;
    }
    const char *tmp = getenv ("TMPDIR");
    snprintf (self->run_dir, sizeof (self->run_dir), "%s/zgate-XXXXXX", tmp && *tmp ? tmp : "/tmp");
    if (!mkdtemp (self->run_dir)) {
        zg_error ("cannot create a run directory in %s: %s", tmp && *tmp ? tmp : "/tmp",
                  strerror (errno));
        return -1;
    }
    self->own_run_dir = true;
    return 0;
}

static void
s_remove_run_dir (s_supervisor_t *self)
{
    if (!self->own_run_dir)
        return;
    char path [PATH_MAX + 32];
    snprintf (path, sizeof (path), "%s/frontend.ipc", self->run_dir);
    unlink (path);
    snprintf (path, sizeof (path), "%s/worker.ipc", self->run_dir);
    unlink (path);
    snprintf (path, sizeof (path), "%s/spend.ipc", self->run_dir);
    unlink (path);
    rmdir (self->run_dir);
}

int
zg_supervisor_run (const zg_config_t *config, const zg_cli_t *cli)
{
    s_supervisor_t self;
    memset (&self, 0, sizeof (self));
    self.config = config;
    self.cli = cli;

    ssize_t len = readlink ("/proc/self/exe", self.self_exe, sizeof (self.self_exe) - 1);
    if (len <= 0) {
        zg_error ("cannot find my own executable: %s", strerror (errno));
        return 1;
    }
    self.self_exe [len] = 0;

    char errbuf [512];
    self.listen_fd = zg_listen (cli->host, cli->port, errbuf, sizeof (errbuf));
    if (self.listen_fd < 0) {
        zg_error ("%s", errbuf);
        return 1;
    }
    if (s_make_run_dir (&self)) {
        close (self.listen_fd);
        return 1;
    }
    zg_endpoints (config, self.run_dir, self.frontend_ep, sizeof (self.frontend_ep),
                  self.worker_ep, sizeof (self.worker_ep));

    if (cli->max_requests_before_restart > 0)
        zg_warning ("--max_requests_before_restart is not implemented yet; workers are not recycled");
    if (cli->run_gunicorn)
        zg_info ("--run_gunicorn is accepted and changes nothing: zgate supervises its own workers");

    //  The router runs as a thread of the frontend's process (frontend and
    //  router meet over inproc://, with no I/O thread or socket between
    //  them); workers stay processes of their own, so that one that dies
    //  is replaced while the others answer. The frontend starts first so
    //  the workers find the router's endpoint bound; ZeroMQ would
    //  reconnect anyway, this only avoids a burst of retries at start.
    //  With a database, one spend actor writes every router's records
    bool with_spend = config->database_url && *config->database_url;
    if (with_spend) {
        const char *spend_env = getenv ("ZGATE_SPEND_ENDPOINT");
        if (spend_env && *spend_env)
            snprintf (self.spend_ep, sizeof (self.spend_ep), "%s", spend_env);
        else
            zg_spend_endpoint (self.run_dir, self.spend_ep, sizeof (self.spend_ep));
    }
    self.child_count = 1 + cli->num_workers + (with_spend? 1: 0);
    self.children = calloc (self.child_count, sizeof (s_child_t));
    if (!self.children) {
        close (self.listen_fd);
        s_remove_run_dir (&self);
        return 1;
    }
    self.children [0].role = ZG_ROLE_FRONTEND;
    for (int i = 0; i < cli->num_workers; i++) {
        self.children [1 + i].role = ZG_ROLE_WORKER;
        self.children [1 + i].index = i + 1;
    }
    if (with_spend)
        self.children [1 + cli->num_workers].role = ZG_ROLE_SPEND;

    //  Signals arrive through a descriptor so the loop below has one place
    //  to wait and no async-signal-safety puzzles
    sigset_t mask;
    sigemptyset (&mask);
    sigaddset (&mask, SIGCHLD);
    sigaddset (&mask, SIGTERM);
    sigaddset (&mask, SIGINT);
    sigaddset (&mask, SIGHUP);
    sigprocmask (SIG_BLOCK, &mask, NULL);
    int sigfd = signalfd (-1, &mask, SFD_CLOEXEC | SFD_NONBLOCK);
    if (sigfd < 0) {
        zg_error ("signalfd: %s", strerror (errno));
        free (self.children);
        close (self.listen_fd);
        s_remove_run_dir (&self);
        return 1;
    }

    for (int i = 0; i < self.child_count; i++)
        s_spawn (&self, &self.children [i]);
    zg_info ("zgate %s listening on http://%s:%d (%d workers)", ZG_VERSION, cli->host,
             cli->port, cli->num_workers);

    const char *stopwait = getenv ("SUPERVISORD_STOPWAITSECS");
    int64_t stop_wait_ms = (stopwait && atol (stopwait) > 0 ? atol (stopwait) : 3600) * 1000LL;
    int64_t stop_deadline = 0;

    while (true) {
        if (self.stopping && s_running_children (&self) == 0)
            break;
        int64_t now = s_now_ms ();
        int timeout = 1000;
        if (!self.stopping) {
            for (int i = 0; i < self.child_count; i++) {
                s_child_t *child = &self.children [i];
                if (child->pid == 0) {
                    if (child->restart_at <= now)
                        s_spawn (&self, child);
                    else
                    if (child->restart_at - now < timeout)
                        timeout = (int) (child->restart_at - now);
                }
            }
        }
        else
        if (now >= stop_deadline) {
            zg_warning ("children still running after %lld s; killing them",
                        (long long) (stop_wait_ms / 1000));
            s_signal_children (&self, SIGKILL);
            stop_deadline = now + 3600 * 1000LL;
        }
        struct pollfd pfd = { .fd = sigfd, .events = POLLIN };
        if (poll (&pfd, 1, timeout) <= 0)
            continue;
        struct signalfd_siginfo info;
        while (read (sigfd, &info, sizeof (info)) == sizeof (info)) {
            if (info.ssi_signo == SIGCHLD) {
                int status;
                pid_t pid;
                while ((pid = waitpid (-1, &status, WNOHANG)) > 0)
                    s_child_exited (&self, pid, status);
            }
            else
            if (info.ssi_signo == SIGHUP)
                continue;
            else
            if (!self.stopping) {
                zg_info ("received %s; stopping", info.ssi_signo == SIGINT ? "SIGINT" : "SIGTERM");
                self.stopping = true;
                stop_deadline = s_now_ms () + stop_wait_ms;
                s_stop_in_order (&self);
            }
            else {
                //  A second signal means: do not wait any longer
                zg_warning ("second stop signal; killing what is left");
                s_signal_children (&self, SIGKILL);
            }
            //  Break out to re-check the loop's exit condition; pending
            //  signals stay queued in the descriptor
            break;
        }
    }
    close (sigfd);
    close (self.listen_fd);
    free (self.children);
    s_remove_run_dir (&self);
    zg_info ("stopped");
    return self.exit_code;
}
