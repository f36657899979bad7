/*  =========================================================================
    zg_supervisor - runs every actor of one machine as a child process
    =========================================================================
*/
#include "supervisor/zg_supervisor.h"
#include "common/zg_log.h"
#include "common/zg_scoreboard.h"
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
//  Recycling: how long a replacement worker has to register with the
//  router (ZGATE_RECYCLE_READY_MS overrides it), and how long the old
//  one serves on before another replacement is tried
#define ZG_RECYCLE_READY_MS   30000
#define ZG_RECYCLE_RETRY_MS   5000
//  After a second stop signal (or the stop deadline) the children end
//  what they hold at once; this bounds the bookkeeping that follows
//  (the router's and the spend actor's last writes) before SIGKILL
#define ZG_FORCED_STOP_MS     60000
//  A role is crash-looping while it had this many restarts within the
//  window; reported in the log and in readiness
#define ZG_CRASH_LOOP_RESTARTS  5
#define ZG_CRASH_LOOP_WINDOW_MS 60000

typedef struct {
    zg_role_t role;
    int       index;            //  worker number, 1-based; 0 for the others
    pid_t     pid;              //  0 while not running
    int64_t   started_at;       //  ms, monotonic
    int64_t   restart_at;       //  ms; when to start it again after it died
    int       backoff_ms;
    int       crashes;          //  consecutive short-lived runs

    //  Workers being recycled
    int       status_fd;        //  read end of its status pipe; -1 = none
    char      status_text [64]; //  a line not yet complete
    size_t    status_size;
    bool      standby;          //  a replacement not yet registered: never restarted
    bool      retiring;         //  told to go: never restarted, forgotten when it exits
    bool      wants_retire;     //  it said "retire"
    pid_t     replacement;      //  the standby started for it; 0 = none
    int64_t   replacement_deadline;
    int64_t   retry_at;         //  when to try a replacement again; 0 = not waiting

    int       slot;             //  its slot in the scoreboard; -1 = none yet
} s_child_t;

//  The last restarts of one role, for crash-loop detection
typedef struct {
    int64_t   at [ZG_CRASH_LOOP_RESTARTS];  //  ring, ms
    int       next;
    bool      looping;
} s_restarts_t;

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
        case ZG_ROLE_HEALTH:   return "health";
        default:               return "zgate";
    }
}

static zg_sb_role_t
s_board_role (zg_role_t role)
{
    switch (role) {
        case ZG_ROLE_WORKER:   return ZG_SB_WORKER;
        case ZG_ROLE_FRONTEND: return ZG_SB_FRONTEND;
        case ZG_ROLE_SPEND:    return ZG_SB_SPEND;
        case ZG_ROLE_HEALTH:   return ZG_SB_HEALTH;
        default:               return ZG_SB_ROUTER;
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
    int    health_fd;           //  SEPARATE_HEALTH_APP's port; -1 when off
    zg_scoreboard_t *board;
    char   board_path [PATH_MAX + 16];
    int    router_slot;         //  the router thread of the frontend's process
    s_restarts_t restarts [ZG_SB_ROLES];
    s_child_t *children;
    int    child_count;
    int    child_capacity;
    bool   stopping;
    bool   forced;              //  a second signal or the deadline: end what is left now
    bool   frontend_signalled;
    bool   backend_signalled;
    int    exit_code;
    int64_t recycle_ready_ms;
    uint64_t recycles;          //  workers replaced so far
} s_supervisor_t;

//  A new child entry (not started); returns its index, or -1. The
//  array may move: pointers into it do not survive this call.
static int
s_child_add (s_supervisor_t *self, zg_role_t role, int index)
{
    if (self->child_count == self->child_capacity) {
        int capacity = self->child_capacity? self->child_capacity * 2: 8;
        s_child_t *children = (s_child_t *) realloc (self->children,
                                                     capacity * sizeof (s_child_t));
        if (!children)
            return -1;
        self->children = children;
        self->child_capacity = capacity;
    }
    s_child_t *child = &self->children [self->child_count];
    memset (child, 0, sizeof (*child));
    child->role = role;
    child->index = index;
    child->status_fd = -1;
    child->slot = -1;
    return self->child_count++;
}

static void
s_child_remove (s_supervisor_t *self, int at)
{
    if (self->children [at].status_fd >= 0)
        close (self->children [at].status_fd);
    memmove (&self->children [at], &self->children [at + 1],
             (self->child_count - at - 1) * sizeof (s_child_t));
    self->child_count--;
}

static int
s_child_find (s_supervisor_t *self, pid_t pid)
{
    for (int i = 0; i < self->child_count; i++)
        if (self->children [i].pid == pid && pid > 0)
            return i;
    return -1;
}

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

//  A slot of the role's kind that no child entry holds: a replacement
//  worker takes a spare while the worker it replaces still has its own
static int
s_free_slot (s_supervisor_t *self, zg_role_t role)
{
    for (int slot = 0; slot < zg_scoreboard_slots (self->board); slot++) {
        if (zg_scoreboard_role (self->board, slot) != s_board_role (role)
        ||  slot == self->router_slot)
            continue;
        bool held = false;
        for (int i = 0; i < self->child_count && !held; i++)
            held = self->children [i].slot == slot;
        if (!held)
            return slot;
    }
    return -1;
}

static pid_t
s_spawn (s_supervisor_t *self, s_child_t *child)
{
    //  A frontend that stopped shut the socket down so that it stopped
    //  accepting at once: its successor needs it listening again
    int listen_fd = child->role == ZG_ROLE_HEALTH? self->health_fd: self->listen_fd;
    if ((child->role == ZG_ROLE_FRONTEND || child->role == ZG_ROLE_HEALTH)
    &&  listen (listen_fd, 4096) != 0)
        zg_warning ("cannot listen again on the socket: %s", strerror (errno));
    if (child->slot < 0)
        child->slot = s_free_slot (self, child->role);
    char fd_text [16], name [64], max_requests [32];
    snprintf (fd_text, sizeof (fd_text), "%d", listen_fd);
    snprintf (name, sizeof (name), "worker-%d", child->index);
    //  A little jitter, so that workers started together do not all
    //  recycle together
    long limit = self->cli->max_requests_before_restart;
    if (limit > 0 && limit / 10 > 0)
        limit += random () % (limit / 10 + 1);
    snprintf (max_requests, sizeof (max_requests), "%ld", limit);

    //  A worker that may be recycled tells us "ready" and "retire" on a pipe
    int status_pipe [2] = { -1, -1 };
    if (child->role == ZG_ROLE_WORKER && limit > 0
    &&  pipe2 (status_pipe, O_CLOEXEC) != 0) {
        zg_warning ("cannot make a status pipe for worker-%d (%s): it will not be recycled",
                    child->index, strerror (errno));
        status_pipe [0] = status_pipe [1] = -1;
    }

    const char *argv [20];
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
    if (child->role != ZG_ROLE_ALL && child->role != ZG_ROLE_HEALTH) {
        argv [argc++] = "--worker-endpoint";
        argv [argc++] = self->worker_ep;
    }
    if (child->role == ZG_ROLE_WORKER) {
        argv [argc++] = "--name";
        argv [argc++] = name;
        //  Always given, so that the worker does not read the variable
        //  the command line overrode
        argv [argc++] = "--max_requests_before_restart";
        argv [argc++] = status_pipe [1] >= 0? max_requests: "0";
    }
    if (child->role == ZG_ROLE_FRONTEND || child->role == ZG_ROLE_HEALTH) {
        argv [argc++] = "--listen-fd";
        argv [argc++] = fd_text;
    }
    argv [argc] = NULL;

    pid_t pid = fork ();
    if (pid < 0) {
        zg_error ("cannot start the %s: fork: %s", s_role_name (child->role), strerror (errno));
        if (status_pipe [0] >= 0) {
            close (status_pipe [0]);
            close (status_pipe [1]);
        }
        return -1;
    }
    if (pid == 0) {
        //  A child must not outlive the supervisor, or a restarted pod would
        //  find its ports and sockets taken by orphans
        prctl (PR_SET_PDEATHSIG, SIGTERM);
        sigset_t none;
        sigemptyset (&none);
        sigprocmask (SIG_SETMASK, &none, NULL);
        if (child->role == ZG_ROLE_FRONTEND || child->role == ZG_ROLE_HEALTH) {
            int flags = fcntl (listen_fd, F_GETFD);
            fcntl (listen_fd, F_SETFD, flags & ~FD_CLOEXEC);
        }
        char slot_text [16];
        setenv ("ZGATE_SCOREBOARD", self->board_path, 1);
        snprintf (slot_text, sizeof (slot_text), "%d", child->slot);
        setenv ("ZGATE_SLOT", slot_text, 1);
        snprintf (slot_text, sizeof (slot_text), "%d", self->router_slot);
        if (child->role == ZG_ROLE_FRONTEND)
            setenv ("ZGATE_ROUTER_SLOT", slot_text, 1);
        if (status_pipe [1] >= 0) {
            char status_text [16];
            snprintf (status_text, sizeof (status_text), "%d", status_pipe [1]);
            fcntl (status_pipe [1], F_SETFD, 0);
            setenv ("ZGATE_STATUS_FD", status_text, 1);
        }
        else
            unsetenv ("ZGATE_STATUS_FD");
        s_schedule_for_throughput ();
        setenv ("ZGATE_RUN_DIR", self->run_dir, 1);
        setenv ("ZGATE_SUPERVISED", "1", 1);
        execv (self->self_exe, (char **) argv);
        fprintf (stderr, "zgate: cannot execute %s: %s\n", self->self_exe, strerror (errno));
        _exit (ZG_EXIT_FATAL);
    }
    if (child->status_fd >= 0)
        close (child->status_fd);
    child->status_fd = -1;
    child->status_size = 0;
    if (status_pipe [0] >= 0) {
        close (status_pipe [1]);
        fcntl (status_pipe [0], F_SETFL, O_NONBLOCK);
        child->status_fd = status_pipe [0];
    }
    child->wants_retire = false;
    child->replacement = 0;
    child->retry_at = 0;
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
//  the workers still serve them; the others once the frontend has exited,
//  so that the router's last spend records still reach the spend actor.
//  A forced stop ends the workers' transfers at once too.
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

//  A second SIGTERM to the frontend ends the requests it still holds; the
//  workers stop their transfers. The router (in the frontend's process)
//  still saves its spend records, so the spend actor waits for it.
static void
s_stop_forced (s_supervisor_t *self)
{
    self->forced = true;
    for (int i = 0; i < self->child_count; i++) {
        s_child_t *child = &self->children [i];
        if (child->pid > 0 && (child->role == ZG_ROLE_FRONTEND || child->role == ZG_ROLE_WORKER))
            kill (child->pid, SIGTERM);
    }
    s_stop_in_order (self);
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

//  ---------------------------------------------------------------------
//  Recycling workers

static int64_t
s_recycle_ready_ms (void)
{
    const char *text = getenv ("ZGATE_RECYCLE_READY_MS");
    long value = text && *text? atol (text): 0;
    return value > 0? value: ZG_RECYCLE_READY_MS;
}

//  Starts the standby that will take the place of the worker at `at`
static void
s_replacement_start (s_supervisor_t *self, int at, int64_t now)
{
    int index = self->children [at].index;
    int standby = s_child_add (self, ZG_ROLE_WORKER, index);
    s_child_t *old = &self->children [at];
    if (standby < 0 || s_spawn (self, &self->children [standby]) <= 0) {
        if (standby >= 0)
            s_child_remove (self, standby);
        old = &self->children [at];
        zg_warning ("cannot start a replacement for worker-%d (pid %d): it serves on; "
                    "trying again in %d ms", index, (int) old->pid, ZG_RECYCLE_RETRY_MS);
        old->retry_at = now + ZG_RECYCLE_RETRY_MS;
        return;
    }
    self->children [standby].standby = true;
    old->replacement = self->children [standby].pid;
    old->replacement_deadline = now + self->recycle_ready_ms;
    old->retry_at = 0;
}

//  The worker at `at` reached its request count
static void
s_on_retire_asked (s_supervisor_t *self, int at, int64_t now)
{
    s_child_t *child = &self->children [at];
    if (self->stopping || child->retiring || child->standby || child->wants_retire)
        return;
    child->wants_retire = true;
    zg_info ("worker-%d (pid %d) reached its request count: starting its replacement",
             child->index, (int) child->pid);
    s_replacement_start (self, at, now);
}

//  A standby registered with the router: the worker it replaces may go.
//  SIGUSR1 makes it send RETIRE, finish what it holds and exit 0.
static void
s_on_ready (s_supervisor_t *self, int at)
{
    s_child_t *standby = &self->children [at];
    if (!standby->standby)
        return;
    standby->standby = false;
    for (int i = 0; i < self->child_count; i++) {
        s_child_t *old = &self->children [i];
        if (old->replacement != standby->pid)
            continue;
        old->replacement = 0;
        old->retiring = true;
        kill (old->pid, SIGUSR1);
        self->recycles++;
        zg_info ("recycling worker-%d: pid %d takes work, pid %d finishes what it holds "
                 "and exits", old->index, (int) standby->pid, (int) old->pid);
        return;
    }
}

//  A standby that did not register in time is let go (it may hold work
//  by now, so it retires as a recycled worker does); the old worker
//  serves on and another replacement is tried later
static void
s_replacement_failed (s_supervisor_t *self, int at, const char *why, int64_t now)
{
    s_child_t *old = &self->children [at];
    int standby = s_child_find (self, old->replacement);
    old->replacement = 0;
    old->retry_at = now + ZG_RECYCLE_RETRY_MS;
    zg_warning ("the replacement for worker-%d %s; pid %d serves on, next try in %d ms",
                old->index, why, (int) old->pid, ZG_RECYCLE_RETRY_MS);
    if (standby >= 0 && self->children [standby].pid > 0) {
        self->children [standby].standby = false;
        self->children [standby].retiring = true;
        kill (self->children [standby].pid, SIGUSR1);
    }
}

//  Replacements that are late, and retries that are due. Returns the
//  milliseconds until the next of these, at most max_wait.
static int
s_recycle_timers (s_supervisor_t *self, int64_t now, int max_wait)
{
    int wait = max_wait;
    for (int i = 0; i < self->child_count; i++) {
        s_child_t *child = &self->children [i];
        if (child->pid <= 0 || child->retiring)
            continue;
        if (child->replacement) {
            if (now >= child->replacement_deadline) {
                char why [96];
                snprintf (why, sizeof (why), "(pid %d) did not register within %lld ms",
                          (int) child->replacement, (long long) self->recycle_ready_ms);
                s_replacement_failed (self, i, why, now);
                child = &self->children [i];
            }
            else
            if (child->replacement_deadline - now < wait)
                wait = (int) (child->replacement_deadline - now);
        }
        if (child->wants_retire && !child->replacement && child->retry_at) {
            if (now >= child->retry_at) {
                s_replacement_start (self, i, now);
                child = &self->children [i];
            }
            else
            if (child->retry_at - now < wait)
                wait = (int) (child->retry_at - now);
        }
    }
    return wait;
}

//  Reads the lines a worker wrote on its status pipe
static void
s_read_status (s_supervisor_t *self, pid_t pid, int64_t now)
{
    int at = s_child_find (self, pid);
    if (at < 0 || self->children [at].status_fd < 0)
        return;
    while (true) {
        s_child_t *child = &self->children [at];
        char *free_space = child->status_text + child->status_size;
        size_t room = sizeof (child->status_text) - child->status_size - 1;
        ssize_t got = read (child->status_fd, free_space, room);
        if (got <= 0) {
            if (got == 0 || (errno != EAGAIN && errno != EINTR)) {
                //  It exited, or closed the pipe: nothing more will come
                close (child->status_fd);
                child->status_fd = -1;
            }
            return;
        }
        child->status_size += (size_t) got;
        child->status_text [child->status_size] = 0;
        char *line = child->status_text;
        char *end;
        while ((end = strchr (line, '\n'))) {
            *end = 0;
            if (streq (line, "ready"))
                s_on_ready (self, at);
            else
            if (streq (line, "retire"))
                s_on_retire_asked (self, at, now);
            else
                zg_warning ("worker-%d (pid %d) said \"%s\" on its status pipe: ignored",
                            self->children [at].index, (int) pid, line);
            at = s_child_find (self, pid);
            if (at < 0)
                return;
            line = end + 1;
        }
        child = &self->children [at];
        size_t left = strlen (line);
        if (left == sizeof (child->status_text) - 1)
            left = 0;           //  no line is this long: drop it
        memmove (child->status_text, line, left);
        child->status_size = left;
    }
}

//  Counts a restart of the role; true when that puts the role in a crash
//  loop it was not in (logged here, once, and shown in readiness)
static bool
s_count_restart (s_supervisor_t *self, zg_role_t role, int64_t now)
{
    zg_sb_role_t board_role = s_board_role (role);
    s_restarts_t *restarts = &self->restarts [board_role];
    restarts->at [restarts->next] = now;
    restarts->next = (restarts->next + 1) % ZG_CRASH_LOOP_RESTARTS;
    zg_scoreboard_count_restart (self->board, 0, board_role);
    //  The oldest of the last ZG_CRASH_LOOP_RESTARTS is where next points
    int64_t oldest = restarts->at [restarts->next];
    if (restarts->looping || oldest == 0 || now - oldest > ZG_CRASH_LOOP_WINDOW_MS)
        return false;
    restarts->looping = true;
    zg_scoreboard_set_crash_loop (self->board, 0, board_role, true);
    zg_error ("%s processes are crash-looping: %d restarts within %d s; readiness reports it",
              zg_sb_role_name (board_role), ZG_CRASH_LOOP_RESTARTS,
              ZG_CRASH_LOOP_WINDOW_MS / 1000);
    return true;
}

//  A role leaves its crash loop once its last restarts span more than the
//  window
static void
s_check_crash_loops (s_supervisor_t *self, int64_t now)
{
    for (int role = 0; role < ZG_SB_ROLES; role++) {
        s_restarts_t *restarts = &self->restarts [role];
        int last = (restarts->next + ZG_CRASH_LOOP_RESTARTS - 1) % ZG_CRASH_LOOP_RESTARTS;
        if (restarts->looping && now - restarts->at [last] > ZG_CRASH_LOOP_WINDOW_MS) {
            restarts->looping = false;
            zg_scoreboard_set_crash_loop (self->board, 0, (zg_sb_role_t) role, false);
            zg_info ("%s processes are no longer crash-looping",
                     zg_sb_role_name ((zg_sb_role_t) role));
        }
    }
}

//  A child exited: decide whether to start it again, and when
static void
s_child_exited (s_supervisor_t *self, pid_t pid, int status)
{
    int at = s_child_find (self, pid);
    if (at < 0)
        return;
    s_child_t *child = &self->children [at];
    child->pid = 0;
    zg_scoreboard_vacate (self->board, child->slot);
    if (child->status_fd >= 0) {
        close (child->status_fd);
        child->status_fd = -1;
    }
    char how [64];
    if (WIFEXITED (status))
        snprintf (how, sizeof (how), "exited with code %d", WEXITSTATUS (status));
    else
        snprintf (how, sizeof (how), "was killed by signal %d", WTERMSIG (status));
    bool clean = WIFEXITED (status) && WEXITSTATUS (status) == 0;

    if (self->stopping) {
        if (clean)
            zg_info ("%s (pid %d) stopped", s_role_name (child->role), (int) pid);
        else {
            zg_warning ("%s (pid %d) %s while stopping", s_role_name (child->role), (int) pid,
                        how);
            if (!self->forced)
                self->exit_code = 1;
        }
        s_stop_in_order (self);
        return;
    }
    if (child->retiring) {
        //  Recycled (or a standby let go): its replacement serves
        if (clean)
            zg_info ("worker-%d (pid %d) retired", child->index, (int) pid);
        else
            zg_warning ("worker-%d (pid %d) %s while retiring", child->index, (int) pid, how);
        s_child_remove (self, at);
        return;
    }
    if (child->standby) {
        //  Died before it registered: the old worker serves on
        for (int i = 0; i < self->child_count; i++)
            if (self->children [i].replacement == pid) {
                char why [160];     //  room for the pid and the longest "how"
                snprintf (why, sizeof (why), "(pid %d) %s before it registered", (int) pid, how);
                s_replacement_failed (self, i, why, s_now_ms ());
                break;
            }
        s_child_remove (self, at);
        return;
    }
    if (child->replacement) {
        //  Died while its replacement starts: the replacement takes its place
        int standby = s_child_find (self, child->replacement);
        zg_warning ("worker-%d (pid %d) %s while being recycled; pid %d takes its place",
                    child->index, (int) pid, how, (int) child->replacement);
        if (standby >= 0)
            self->children [standby].standby = false;
        s_child_remove (self, at);
        return;
    }

    if (WIFEXITED (status) && WEXITSTATUS (status) == ZG_EXIT_FATAL) {
        zg_error ("%s (pid %d) %s: it cannot run with this configuration; stopping zgate",
                  s_role_name (child->role), (int) pid, how);
        self->stopping = true;
        self->exit_code = 1;
        zg_scoreboard_set_flags (self->board, 0, ZG_SB_DRAINING, 0);
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
    s_count_restart (self, child->role, now);
    if (self->health_fd >= 0
    &&  (child->role == ZG_ROLE_FRONTEND || child->role == ZG_ROLE_HEALTH)) {
        //  As the reference's supervisord does with a separate health
        //  app: the probes answer from another process, so they cannot
        //  vouch for a main gateway (or health app) that died; the whole
        //  zgate exits non-zero and the orchestrator restarts the pod
        zg_error ("%s (pid %d) %s; with SEPARATE_HEALTH_APP=1 this stops zgate so that "
                  "the orchestrator restarts it", s_role_name (child->role), (int) pid, how);
        self->stopping = true;
        self->exit_code = 1;
        zg_scoreboard_set_flags (self->board, 0, ZG_SB_DRAINING, 0);
        s_stop_in_order (self);
        return;
    }
    if (child->crashes >= 5)
        zg_error ("%s (pid %d) %s; it is crash-looping (%d quick exits in a row), "
                  "next start in %d ms", s_role_name (child->role), (int) pid, how,
                  child->crashes, child->backoff_ms);
    else
        zg_warning ("%s (pid %d) %s; starting it again", s_role_name (child->role),
                    (int) pid, how);
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
    snprintf (path, sizeof (path), "%s/events.ipc", self->run_dir);
    unlink (path);
    unlink (self->board_path);
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
    self.health_fd = -1;
    self.listen_fd = zg_listen (cli->host, cli->port, errbuf, sizeof (errbuf));
    if (self.listen_fd < 0) {
        zg_error ("%s", errbuf);
        return 1;
    }
    //  The health app's port is bound here too, so that a busy one is an
    //  error before anything starts
    const char *separate_health = getenv ("SEPARATE_HEALTH_APP");
    int health_port = 4001;
    if (separate_health && strcmp (separate_health, "1") == 0) {
        const char *port_text = getenv ("SEPARATE_HEALTH_PORT");
        if (port_text && *port_text) {
            char *end;
            long port = strtol (port_text, &end, 10);
            if (*end || port <= 0 || port > 65535) {
                zg_error ("SEPARATE_HEALTH_PORT: expected a port number, got \"%s\"", port_text);
                close (self.listen_fd);
                return 1;
            }
            health_port = (int) port;
        }
        self.health_fd = zg_listen (cli->host, health_port, errbuf, sizeof (errbuf));
        if (self.health_fd < 0) {
            zg_error ("health app (SEPARATE_HEALTH_PORT): %s", errbuf);
            close (self.listen_fd);
            return 1;
        }
    }
    if (s_make_run_dir (&self)) {
        close (self.listen_fd);
        if (self.health_fd >= 0)
            close (self.health_fd);
        return 1;
    }
    zg_endpoints (config, self.run_dir, self.frontend_ep, sizeof (self.frontend_ep),
                  self.worker_ep, sizeof (self.worker_ep));

    self.recycle_ready_ms = s_recycle_ready_ms ();
    srandom ((unsigned) (time (NULL) ^ getpid ()));
    if (cli->max_requests_before_restart > 0)
        zg_info ("workers are recycled after %ld requests (plus up to a tenth, at random)",
                 cli->max_requests_before_restart);
    if (cli->run_gunicorn)
        zg_info ("--run_gunicorn is accepted and changes nothing: zgate supervises and "
                 "recycles its own workers");
    const char *non_root = getenv ("LITELLM_NON_ROOT");
    if (non_root && strcasecmp (non_root, "true") == 0)
        zg_info ("LITELLM_NON_ROOT=true: accepted; zgate runs as the user that starts it "
                 "(uid %d) and writes only to %s", (int) getuid (), self.run_dir);

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
    bool added = s_child_add (&self, ZG_ROLE_FRONTEND, 0) >= 0;
    for (int i = 0; i < cli->num_workers && added; i++)
        added = s_child_add (&self, ZG_ROLE_WORKER, i + 1) >= 0;
    if (added && with_spend)
        added = s_child_add (&self, ZG_ROLE_SPEND, 0) >= 0;
    bool with_health = self.health_fd >= 0;
    if (added && with_health)
        added = s_child_add (&self, ZG_ROLE_HEALTH, 0) >= 0;

    //  The scoreboard: slot 0 is ours, then the frontend, its router
    //  thread, each child, and as many spare worker slots as workers, for
    //  replacements that start before the worker they replace has gone
    snprintf (self.board_path, sizeof (self.board_path), "%s/scoreboard", self.run_dir);
    int slot_count = 2 + self.child_count + cli->num_workers;
    if (added) {
        self.board = zg_scoreboard_create (self.board_path, config, slot_count);
        if (!self.board)
            zg_error ("cannot create the scoreboard %s: %s", self.board_path, strerror (errno));
    }
    if (!added || !self.board) {
        free (self.children);
        close (self.listen_fd);
        if (self.health_fd >= 0)
            close (self.health_fd);
        s_remove_run_dir (&self);
        return 1;
    }
    zg_scoreboard_require_db (self.board, with_spend && !config->allow_requests_on_db_unavailable);
    zg_scoreboard_assign (self.board, 0, ZG_SB_SUPERVISOR);
    zg_scoreboard_claim (self.board, 0, "supervisor");
    self.router_slot = 2;
    zg_scoreboard_assign (self.board, self.router_slot, ZG_SB_ROUTER);
    zg_scoreboard_expect (self.board, ZG_SB_ROUTER);
    int next_slot = 1;
    for (int i = 0; i < self.child_count; i++) {
        s_child_t *child = &self.children [i];
        child->slot = next_slot;
        next_slot += child->role == ZG_ROLE_FRONTEND? 2: 1;
        zg_scoreboard_assign (self.board, child->slot, s_board_role (child->role));
        zg_scoreboard_expect (self.board, s_board_role (child->role));
    }
    while (next_slot < slot_count)
        zg_scoreboard_assign (self.board, next_slot++, ZG_SB_WORKER);

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
    if (with_health)
        zg_info ("health app on http://%s:%d", cli->host, health_port);

    const char *stopwait = getenv ("SUPERVISORD_STOPWAITSECS");
    int64_t stop_wait_ms = (stopwait && atol (stopwait) > 0 ? atol (stopwait) : 3600) * 1000LL;
    int64_t stop_deadline = 0;
    int signals = 0;            //  stop signals received
    struct pollfd *pfds = NULL;
    pid_t *pfd_pids = NULL;
    int pfd_size = 0;

    while (true) {
        if (self.stopping && s_running_children (&self) == 0)
            break;
        int64_t now = s_now_ms ();
        int timeout = config->heartbeat_ms > 0 && config->heartbeat_ms < 1000
                    ? config->heartbeat_ms : 1000;
        zg_scoreboard_beat (self.board, 0);
        s_check_crash_loops (&self, now);
        if (self.stopping && stop_deadline == 0)
            //  Stopping for a reason of our own (a child that cannot run)
            stop_deadline = now + stop_wait_ms;
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
            timeout = s_recycle_timers (&self, now, timeout);
        }
        else
        if (now >= stop_deadline) {
            if (!self.forced) {
                zg_warning ("requests still running %lld s after the stop signal "
                            "(SUPERVISORD_STOPWAITSECS): ending them",
                            (long long) (stop_wait_ms / 1000));
                s_stop_forced (&self);
                stop_deadline = now + ZG_FORCED_STOP_MS;
            }
            else {
                zg_warning ("children still running %d s after they were told to end "
                            "at once; killing them", ZG_FORCED_STOP_MS / 1000);
                s_signal_children (&self, SIGKILL);
                self.exit_code = 1;
                stop_deadline = now + 3600 * 1000LL;
            }
        }
        if (self.stopping && stop_deadline - now < timeout)
            timeout = stop_deadline - now > 0? (int) (stop_deadline - now): 0;

        //  The signals, and the status pipes of the workers that have one
        if (pfd_size < self.child_count + 1) {
            pfd_size = self.child_count + 1;
            struct pollfd *grown = (struct pollfd *) realloc (pfds, pfd_size * sizeof (*pfds));
            if (grown)
                pfds = grown;
            pid_t *grown_pids = (pid_t *) realloc (pfd_pids, pfd_size * sizeof (pid_t));
            if (grown_pids)
                pfd_pids = grown_pids;
            if (!grown || !grown_pids) {
                pfd_size = 0;
                continue;
            }
        }
        int pfd_count = 0;
        pfds [pfd_count++] = (struct pollfd) { .fd = sigfd, .events = POLLIN };
        for (int i = 0; i < self.child_count; i++)
            if (self.children [i].status_fd >= 0) {
                pfd_pids [pfd_count] = self.children [i].pid;
                pfds [pfd_count++] = (struct pollfd) {
                    .fd = self.children [i].status_fd, .events = POLLIN };
            }
        if (poll (pfds, pfd_count, timeout) <= 0)
            continue;
        now = s_now_ms ();
        //  Status lines before exits: a worker's last words count
        for (int i = 1; i < pfd_count; i++)
            if (pfds [i].revents)
                s_read_status (&self, pfd_pids [i], now);
        if (!pfds [0].revents)
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
            else {
                const char *name = info.ssi_signo == SIGINT? "SIGINT": "SIGTERM";
                signals++;
                if (signals == 1) {
                    zg_info ("received %s; stopping once the requests in flight end "
                             "(at most %lld s)", name, (long long) (stop_wait_ms / 1000));
                    //  Readiness turns 503 at once, wherever it is asked
                    zg_scoreboard_set_flags (self.board, 0, ZG_SB_DRAINING, 0);
                    self.stopping = true;
                    stop_deadline = s_now_ms () + stop_wait_ms;
                    s_stop_in_order (&self);
                }
                else
                if (signals == 2) {
                    zg_warning ("second %s: ending the requests in flight now", name);
                    s_stop_forced (&self);
                    stop_deadline = s_now_ms () + ZG_FORCED_STOP_MS;
                }
                else {
                    zg_warning ("third stop signal: killing what is left");
                    s_signal_children (&self, SIGKILL);
                    self.exit_code = 1;
                }
            }
            //  Break out to re-check the loop's exit condition; pending
            //  signals stay queued in the descriptor
            break;
        }
    }
    free (pfds);
    free (pfd_pids);
    close (sigfd);
    close (self.listen_fd);
    if (self.health_fd >= 0)
        close (self.health_fd);
    zg_scoreboard_destroy (&self.board);
    for (int i = 0; i < self.child_count; i++)
        if (self.children [i].status_fd >= 0)
            close (self.children [i].status_fd);
    free (self.children);
    s_remove_run_dir (&self);
    if (self.recycles)
        zg_info ("%llu workers recycled", (unsigned long long) self.recycles);
    zg_info ("stopped");
    return self.exit_code;
}
