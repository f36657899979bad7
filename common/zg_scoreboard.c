/*  =========================================================================
    zg_scoreboard - what every process of one zgate instance shows the
    others: liveness and metrics, in one shared memory file
    =========================================================================
*/
#include "common/zg_scoreboard.h"
#include "common/zg_selftest.h"
#include "common/zg_json.h"

#include <czmq.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#ifndef ZG_VERSION
#   define ZG_VERSION "0.0.0"
#endif

#define S_MAGIC         0x5a47534255ULL     //  "ZGSBU"
#define S_VERSION       2
#define S_NAME_MAX      256
#define S_SLOT_NAME     64
//  Groups beyond this count under the unnamed group: labels stay bounded
#define S_GROUPS_MAX    1024
//  Heartbeats older than this many intervals are stale
#define S_LIVENESS      3

//  The reference's LATENCY_BUCKETS, in seconds; the last bucket is +Inf
static const double s_bounds [] = {
    0.005, 0.00625, 0.0125, 0.025, 0.05, 0.1, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0,
    4.5, 5.0, 5.5, 6.0, 6.5, 7.0, 7.5, 8.0, 8.5, 9.0, 9.5, 10.0, 15.0, 20.0, 25.0,
    30.0, 60.0, 120.0, 180.0, 240.0, 300.0
};
#define S_BOUNDS    (sizeof (s_bounds) / sizeof (s_bounds [0]))
#define S_BUCKETS   (S_BOUNDS + 1)

//  Status classes 1xx..5xx, and one for anything else
#define S_CLASSES   6

typedef struct {
    _Atomic uint64_t buckets [S_BUCKETS];   //  per bucket, made cumulative when read
    _Atomic uint64_t count;
    _Atomic uint64_t sum_us;
} s_histogram_t;

typedef struct {
    _Atomic uint64_t requests [S_CLASSES];
    _Atomic uint64_t input_tokens;
    _Atomic uint64_t output_tokens;
    _Atomic uint64_t total_tokens;
    _Atomic uint64_t spend_nano_usd;        //  integers add atomically; doubles do not
    s_histogram_t    latency [ZG_SB_LATENCIES];
} s_group_t;

typedef struct {
    _Atomic uint32_t role;
    _Atomic int32_t  pid;
    char             name [S_SLOT_NAME];
    _Atomic int64_t  heartbeat_ms;
    _Atomic uint32_t flags;
    _Atomic int64_t  gauges [ZG_SB_GAUGES];
    //  Supervisor's slot: per role
    _Atomic uint64_t restarts [ZG_SB_ROLES];
    _Atomic uint32_t crash_loop [ZG_SB_ROLES];
    //  Redis as the slot's watcher found it. The reason is text other
    //  processes read while it may change: a sequence number, odd while
    //  it is written, tells a reader to read again (a seqlock).
    _Atomic uint32_t redis_sequence;
    char             redis_reason [ZG_SB_REASON_MAX];
    _Atomic int64_t  redis_checked_ms;
    _Atomic uint64_t redis_latency_us;      //  the last answered PING's
    _Atomic uint64_t redis_fails;
    s_histogram_t    redis_latency;
} s_slot_t;

typedef struct {
    uint64_t magic;
    uint32_t version;
    uint32_t slot_count;
    uint32_t group_count;           //  named groups; index 0 is the unnamed one
    uint32_t heartbeat_ms;
    uint32_t expected;              //  bit per zg_sb_role_t
    uint32_t db_required;
    uint32_t redis_configured;      //  the configuration names a Redis server
    uint32_t slot_size;             //  slot plus its groups, bytes
    uint64_t total_size;
} s_header_t;

struct _zg_scoreboard_t {
    uint8_t    *base;
    size_t      size;
    s_header_t *header;
    zhashx_t   *groups;             //  name -> index + 1
};

static size_t
s_align (size_t size)
{
    return (size + 63) & ~(size_t) 63;
}

static size_t
s_names_offset (void)
{
    return s_align (sizeof (s_header_t));
}

static size_t
s_slots_offset (uint32_t group_count)
{
    return s_align (s_names_offset () + (size_t) group_count * S_NAME_MAX);
}

static const char *
s_group_name (zg_scoreboard_t *self, int group)
{
    if (group <= 0)
        return "";
    return (const char *) self->base + s_names_offset () + (size_t) (group - 1) * S_NAME_MAX;
}

static s_slot_t *
s_slot (zg_scoreboard_t *self, int slot)
{
    if (!self || slot < 0 || (uint32_t) slot >= self->header->slot_count)
        return NULL;
    return (s_slot_t *) (self->base + s_slots_offset (self->header->group_count)
                         + (size_t) slot * self->header->slot_size);
}

static s_group_t *
s_group (zg_scoreboard_t *self, s_slot_t *slot, int group)
{
    if (group < 0 || (uint32_t) group > self->header->group_count)
        group = 0;
    return (s_group_t *) ((uint8_t *) slot + s_align (sizeof (s_slot_t)))
           + group;
}

int64_t
zg_scoreboard_now_ms (void)
{
    struct timespec now;
    clock_gettime (CLOCK_MONOTONIC, &now);
    return (int64_t) now.tv_sec * 1000 + now.tv_nsec / 1000000;
}

const char *
zg_sb_role_name (zg_sb_role_t role)
{
    switch (role) {
        case ZG_SB_SUPERVISOR: return "supervisor";
        case ZG_SB_FRONTEND:   return "frontend";
        case ZG_SB_ROUTER:     return "router";
        case ZG_SB_WORKER:     return "worker";
        case ZG_SB_SPEND:      return "spend";
        case ZG_SB_HEALTH:     return "health";
        default:               return "none";
    }
}

//  The index of every group name, for this process
static int
s_index_groups (zg_scoreboard_t *self)
{
    self->groups = zhashx_new ();
    if (!self->groups)
        return -1;
    for (uint32_t index = 1; index <= self->header->group_count; index++)
        zhashx_insert (self->groups, s_group_name (self, (int) index),
                       (void *) (uintptr_t) index);
    return 0;
}

static zg_scoreboard_t *
s_map (int fd, size_t size, bool anonymous)
{
    zg_scoreboard_t *self = (zg_scoreboard_t *) calloc (1, sizeof (zg_scoreboard_t));
    if (!self)
        return NULL;
    void *base = mmap (NULL, size, PROT_READ | PROT_WRITE,
                       anonymous ? MAP_SHARED | MAP_ANONYMOUS : MAP_SHARED, fd, 0);
    if (base == MAP_FAILED) {
        free (self);
        return NULL;
    }
    self->base = (uint8_t *) base;
    self->size = size;
    self->header = (s_header_t *) base;
    return self;
}

//  Distinct model names, in file order, at most S_GROUPS_MAX
static uint32_t
s_config_groups (const zg_config_t *config, const char **names)
{
    uint32_t count = 0;
    for (size_t index = 0; config && index < config->deployment_count; index++) {
        const char *name = config->deployments [index].model_name;
        if (!name || !*name || strlen (name) >= S_NAME_MAX)
            continue;
        bool seen = false;
        for (uint32_t other = 0; other < count && !seen; other++)
            seen = strcmp (names [other], name) == 0;
        if (!seen && count < S_GROUPS_MAX)
            names [count++] = name;
    }
    return count;
}

static zg_scoreboard_t *
s_new (const char *path, const zg_config_t *config, int slot_count)
{
    if (slot_count <= 0) {
        errno = EINVAL;
        return NULL;
    }
    const char **names = (const char **) calloc (S_GROUPS_MAX, sizeof (char *));
    if (!names)
        return NULL;
    uint32_t group_count = s_config_groups (config, names);
    size_t slot_size = s_align (s_align (sizeof (s_slot_t))
                                + (group_count + 1) * sizeof (s_group_t));
    size_t size = s_slots_offset (group_count) + (size_t) slot_count * slot_size;

    zg_scoreboard_t *self = NULL;
    if (path) {
        char temp [4096];
        snprintf (temp, sizeof (temp), "%s.new", path);
        int fd = open (temp, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
        if (fd >= 0 && ftruncate (fd, (off_t) size) == 0)
            self = s_map (fd, size, false);
        int saved = errno;
        if (fd >= 0)
            close (fd);
        //  Readers never see a half-written header: the file appears whole
        if (self && rename (temp, path) != 0) {
            saved = errno;
            zg_scoreboard_destroy (&self);
        }
        if (!self)
            unlink (temp);
        errno = saved;
    }
    else
        self = s_map (-1, size, true);
    if (!self) {
        free (names);
        return NULL;
    }
    //  A new file and an anonymous mapping both start zeroed
    s_header_t *header = self->header;
    header->version = S_VERSION;
    header->slot_count = (uint32_t) slot_count;
    header->group_count = group_count;
    header->heartbeat_ms = config && config->heartbeat_ms > 0 ? (uint32_t) config->heartbeat_ms : 1000;
    header->slot_size = (uint32_t) slot_size;
    header->total_size = size;
    header->redis_configured = config && config->redis_host ? 1 : 0;
    for (uint32_t index = 0; index < group_count; index++)
        snprintf ((char *) self->base + s_names_offset () + (size_t) index * S_NAME_MAX,
                  S_NAME_MAX, "%s", names [index]);
    free (names);
    atomic_thread_fence (memory_order_release);
    header->magic = S_MAGIC;
    if (s_index_groups (self)) {
        zg_scoreboard_destroy (&self);
        return NULL;
    }
    return self;
}

zg_scoreboard_t *
zg_scoreboard_create (const char *path, const zg_config_t *config, int slot_count)
{
    assert (path);
    return s_new (path, config, slot_count);
}

zg_scoreboard_t *
zg_scoreboard_new_private (const zg_config_t *config, int slot_count)
{
    return s_new (NULL, config, slot_count);
}

zg_scoreboard_t *
zg_scoreboard_attach (const char *path)
{
    if (!path || !*path) {
        errno = EINVAL;
        return NULL;
    }
    int fd = open (path, O_RDWR | O_CLOEXEC);
    if (fd < 0)
        return NULL;
    struct stat info;
    s_header_t header;
    zg_scoreboard_t *self = NULL;
    if (fstat (fd, &info) == 0 && (size_t) info.st_size >= sizeof (header)
    &&  pread (fd, &header, sizeof (header), 0) == (ssize_t) sizeof (header)) {
        bool sane = header.magic == S_MAGIC && header.version == S_VERSION
                 && header.total_size == (uint64_t) info.st_size
                 && header.slot_count > 0 && header.group_count <= S_GROUPS_MAX
                 && header.slot_size >= sizeof (s_slot_t)
                 && s_slots_offset (header.group_count)
                    + (uint64_t) header.slot_count * header.slot_size == header.total_size;
        if (sane)
            self = s_map (fd, (size_t) info.st_size, false);
        else
            errno = EPROTO;
    }
    else
    if (errno == 0)
        errno = EPROTO;
    int saved = errno;
    close (fd);
    errno = saved;
    if (self && s_index_groups (self))
        zg_scoreboard_destroy (&self);
    return self;
}

void
zg_scoreboard_destroy (zg_scoreboard_t **self_p)
{
    assert (self_p);
    zg_scoreboard_t *self = *self_p;
    if (!self)
        return;
    zhashx_destroy (&self->groups);
    munmap (self->base, self->size);
    free (self);
    *self_p = NULL;
}

void
zg_scoreboard_set_heartbeat_ms (zg_scoreboard_t *self, int heartbeat_ms)
{
    assert (self);
    self->header->heartbeat_ms = heartbeat_ms > 0 ? (uint32_t) heartbeat_ms : 1000;
}

void
zg_scoreboard_expect (zg_scoreboard_t *self, zg_sb_role_t role)
{
    assert (self);
    self->header->expected |= 1u << role;
}

void
zg_scoreboard_require_db (zg_scoreboard_t *self, bool required)
{
    assert (self);
    self->header->db_required = required ? 1 : 0;
}

void
zg_scoreboard_assign (zg_scoreboard_t *self, int slot, zg_sb_role_t role)
{
    s_slot_t *entry = s_slot (self, slot);
    assert (entry);
    atomic_store (&entry->role, (uint32_t) role);
}

int
zg_scoreboard_slots (zg_scoreboard_t *self)
{
    return self ? (int) self->header->slot_count : 0;
}

zg_sb_role_t
zg_scoreboard_role (zg_scoreboard_t *self, int slot)
{
    s_slot_t *entry = s_slot (self, slot);
    return entry ? (zg_sb_role_t) atomic_load (&entry->role) : ZG_SB_NONE;
}

int
zg_scoreboard_free_slot (zg_scoreboard_t *self, zg_sb_role_t role)
{
    for (int index = 0; index < zg_scoreboard_slots (self); index++) {
        s_slot_t *entry = s_slot (self, index);
        if (atomic_load (&entry->role) != (uint32_t) role)
            continue;
        pid_t pid = atomic_load (&entry->pid);
        if (pid <= 0 || (kill (pid, 0) != 0 && errno == ESRCH))
            return index;
    }
    return -1;
}

void
zg_scoreboard_vacate (zg_scoreboard_t *self, int slot)
{
    s_slot_t *entry = s_slot (self, slot);
    if (!entry)
        return;
    atomic_store (&entry->pid, 0);
    atomic_store (&entry->flags, 0);
    for (int gauge = 0; gauge < ZG_SB_GAUGES; gauge++)
        atomic_store (&entry->gauges [gauge], 0);
}

void
zg_scoreboard_claim (zg_scoreboard_t *self, int slot, const char *name)
{
    s_slot_t *entry = s_slot (self, slot);
    if (!entry)
        return;
    snprintf (entry->name, sizeof (entry->name), "%s", name ? name : "");
    atomic_store (&entry->flags, 0);
    atomic_store (&entry->heartbeat_ms, zg_scoreboard_now_ms ());
    atomic_store (&entry->pid, (int32_t) getpid ());
}

void
zg_scoreboard_beat (zg_scoreboard_t *self, int slot)
{
    s_slot_t *entry = s_slot (self, slot);
    if (entry)
        atomic_store_explicit (&entry->heartbeat_ms, zg_scoreboard_now_ms (),
                               memory_order_relaxed);
}

void
zg_scoreboard_set_flags (zg_scoreboard_t *self, int slot, uint32_t set, uint32_t clear)
{
    s_slot_t *entry = s_slot (self, slot);
    if (!entry)
        return;
    atomic_fetch_or (&entry->flags, set);
    atomic_fetch_and (&entry->flags, ~clear | set);
}

void
zg_scoreboard_gauge (zg_scoreboard_t *self, int slot, zg_sb_gauge_t gauge, int64_t value)
{
    s_slot_t *entry = s_slot (self, slot);
    if (entry && gauge >= 0 && gauge < ZG_SB_GAUGES)
        atomic_store_explicit (&entry->gauges [gauge], value, memory_order_relaxed);
}

int
zg_scoreboard_group (zg_scoreboard_t *self, const char *model_group)
{
    if (!self || !model_group || !*model_group)
        return 0;
    return (int) (uintptr_t) zhashx_lookup (self->groups, model_group);
}

static int
s_status_class (int status)
{
    return status >= 100 && status <= 599 ? status / 100 - 1 : S_CLASSES - 1;
}

void
zg_scoreboard_count_request (zg_scoreboard_t *self, int slot, int group, int status)
{
    s_slot_t *entry = s_slot (self, slot);
    if (entry)
        atomic_fetch_add_explicit (&s_group (self, entry, group)->requests [s_status_class (status)],
                                   1, memory_order_relaxed);
}

void
zg_scoreboard_count_usage (zg_scoreboard_t *self, int slot, int group,
                           uint64_t input_tokens, uint64_t output_tokens,
                           uint64_t total_tokens, double cost)
{
    s_slot_t *entry = s_slot (self, slot);
    if (!entry)
        return;
    s_group_t *counts = s_group (self, entry, group);
    atomic_fetch_add_explicit (&counts->input_tokens, input_tokens, memory_order_relaxed);
    atomic_fetch_add_explicit (&counts->output_tokens, output_tokens, memory_order_relaxed);
    atomic_fetch_add_explicit (&counts->total_tokens, total_tokens, memory_order_relaxed);
    if (isfinite (cost) && cost > 0 && cost < 1e9)
        atomic_fetch_add_explicit (&counts->spend_nano_usd, (uint64_t) llround (cost * 1e9),
                                   memory_order_relaxed);
}

//  One observation, into the reference's buckets
static void
s_histogram_add (s_histogram_t *histogram, uint64_t microseconds)
{
    double seconds = (double) microseconds / 1e6;
    size_t bucket = 0;
    while (bucket < S_BOUNDS && seconds > s_bounds [bucket])
        bucket++;
    atomic_fetch_add_explicit (&histogram->buckets [bucket], 1, memory_order_relaxed);
    atomic_fetch_add_explicit (&histogram->sum_us, microseconds, memory_order_relaxed);
    atomic_fetch_add_explicit (&histogram->count, 1, memory_order_relaxed);
}

void
zg_scoreboard_observe (zg_scoreboard_t *self, int slot, int group,
                       zg_sb_latency_t latency, uint64_t microseconds)
{
    s_slot_t *entry = s_slot (self, slot);
    if (!entry || latency < 0 || latency >= ZG_SB_LATENCIES)
        return;
    s_histogram_add (&s_group (self, entry, group)->latency [latency], microseconds);
}

void
zg_scoreboard_count_restart (zg_scoreboard_t *self, int slot, zg_sb_role_t role)
{
    s_slot_t *entry = s_slot (self, slot);
    if (entry && role > ZG_SB_NONE && role < ZG_SB_ROLES)
        atomic_fetch_add (&entry->restarts [role], 1);
}

void
zg_scoreboard_set_crash_loop (zg_scoreboard_t *self, int slot, zg_sb_role_t role,
                              bool in_crash_loop)
{
    s_slot_t *entry = s_slot (self, slot);
    if (entry && role > ZG_SB_NONE && role < ZG_SB_ROLES)
        atomic_store (&entry->crash_loop [role], in_crash_loop ? 1 : 0);
}

void
zg_scoreboard_redis_report (zg_scoreboard_t *self, int slot, bool up, uint64_t latency_us,
                            const char *reason)
{
    s_slot_t *entry = s_slot (self, slot);
    if (!entry)
        return;
    //  One writer per slot (its watcher): readers retry while it is odd
    atomic_fetch_add_explicit (&entry->redis_sequence, 1, memory_order_acq_rel);
    atomic_thread_fence (memory_order_release);
    snprintf (entry->redis_reason, sizeof (entry->redis_reason), "%s", reason ? reason : "");
    atomic_thread_fence (memory_order_release);
    atomic_fetch_add_explicit (&entry->redis_sequence, 1, memory_order_acq_rel);
    atomic_store (&entry->redis_checked_ms, zg_scoreboard_now_ms ());
    if (up) {
        atomic_store (&entry->redis_latency_us, latency_us);
        s_histogram_add (&entry->redis_latency, latency_us);
    }
    else
        atomic_fetch_add (&entry->redis_fails, 1);
    zg_scoreboard_set_flags (self, slot, ZG_SB_REDIS_KNOWN | (up ? ZG_SB_REDIS_UP : 0),
                             up ? 0 : ZG_SB_REDIS_UP);
}

//  The slot's reason, as it was between two writes; "" if it kept changing
static void
s_redis_reason (s_slot_t *entry, char *reason, size_t size)
{
    for (int attempt = 0; attempt < 1000; attempt++) {
        uint32_t before = atomic_load_explicit (&entry->redis_sequence, memory_order_acquire);
        if (before & 1)
            continue;
        memcpy (reason, entry->redis_reason, size < ZG_SB_REASON_MAX ? size : ZG_SB_REASON_MAX);
        reason [size - 1] = 0;
        atomic_thread_fence (memory_order_acquire);
        if (atomic_load_explicit (&entry->redis_sequence, memory_order_acquire) == before)
            return;
    }
    reason [0] = 0;
}

static zg_scoreboard_t *s_process_board;

void
zg_scoreboard_set_process (zg_scoreboard_t *board)
{
    s_process_board = board;
}

zg_scoreboard_t *
zg_scoreboard_process (void)
{
    return s_process_board;
}

int
zg_scoreboard_env_slot (const char *variable)
{
    const char *text = getenv (variable);
    if (!text || !*text || !s_process_board)
        return -1;
    char *end;
    long slot = strtol (text, &end, 10);
    if (*end || slot < 0 || slot >= zg_scoreboard_slots (s_process_board))
        return -1;
    return (int) slot;
}


//  --------------------------------------------------------------------------
//  Reading

typedef struct {
    char  *data;
    size_t size;
    size_t used;
    bool   failed;
} s_text_t;

static void
s_add (s_text_t *text, const char *format, ...) __attribute__ ((format (printf, 2, 3)));

static void
s_add (s_text_t *text, const char *format, ...)
{
    if (text->failed)
        return;
    while (true) {
        va_list args;
        va_start (args, format);
        size_t room = text->size - text->used;
        int length = vsnprintf (text->data ? text->data + text->used : NULL, room, format, args);
        va_end (args);
        if (length < 0) {
            text->failed = true;
            return;
        }
        if ((size_t) length < room) {
            text->used += (size_t) length;
            return;
        }
        size_t size = text->size ? text->size * 2 : 4096;
        while (size < text->used + (size_t) length + 1)
            size *= 2;
        char *grown = (char *) realloc (text->data, size);
        if (!grown) {
            text->failed = true;
            return;
        }
        text->data = grown;
        text->size = size;
    }
}

static char *
s_finish (s_text_t *text)
{
    if (text->failed) {
        free (text->data);
        return NULL;
    }
    if (!text->data)
        return strdup ("");
    return text->data;
}

static bool
s_fresh (zg_scoreboard_t *self, s_slot_t *entry, int64_t now)
{
    if (atomic_load (&entry->pid) <= 0)
        return false;
    int64_t age = now - atomic_load (&entry->heartbeat_ms);
    return age <= (int64_t) S_LIVENESS * self->header->heartbeat_ms;
}

int
zg_scoreboard_workers_alive (zg_scoreboard_t *self)
{
    int64_t now = zg_scoreboard_now_ms ();
    int alive = 0;
    for (int index = 0; index < zg_scoreboard_slots (self); index++) {
        s_slot_t *entry = s_slot (self, index);
        if (atomic_load (&entry->role) == ZG_SB_WORKER && s_fresh (self, entry, now))
            alive++;
    }
    return alive;
}

typedef struct {
    int      fresh;
    int      running;           //  has a pid, fresh or not
    int64_t  stalest_ms;        //  oldest heartbeat among the running, as an age
    uint32_t flags;             //  or of the fresh ones'
    bool     crash_loop;
} s_role_state_t;

static void
s_role_states (zg_scoreboard_t *self, s_role_state_t *states, int64_t now)
{
    memset (states, 0, sizeof (s_role_state_t) * ZG_SB_ROLES);
    for (int index = 0; index < zg_scoreboard_slots (self); index++) {
        s_slot_t *entry = s_slot (self, index);
        uint32_t role = atomic_load (&entry->role);
        if (role >= ZG_SB_ROLES)
            continue;
        if (role == ZG_SB_SUPERVISOR)
            for (int other = 0; other < ZG_SB_ROLES; other++)
                if (atomic_load (&entry->crash_loop [other]))
                    states [other].crash_loop = true;
        if (atomic_load (&entry->pid) <= 0)
            continue;
        s_role_state_t *state = &states [role];
        state->running++;
        int64_t age = now - atomic_load (&entry->heartbeat_ms);
        if (age > state->stalest_ms)
            state->stalest_ms = age;
        if (s_fresh (self, entry, now)) {
            state->fresh++;
            state->flags |= atomic_load (&entry->flags);
        }
        else
        if (role == ZG_SB_SUPERVISOR)
            state->flags |= atomic_load (&entry->flags);
    }
}

//  A JSON string's content
static void
s_add_escaped (s_text_t *text, const char *value)
{
    for (const unsigned char *cursor = (const unsigned char *) value; *cursor; cursor++) {
        if (*cursor == '"' || *cursor == '\\')
            s_add (text, "\\%c", *cursor);
        else
        if (*cursor < 0x20)
            s_add (text, "\\u%04x", *cursor);
        else
            s_add (text, "%c", *cursor);
    }
}

//  Redis as the fresh slots that watch it last found it; a watcher that
//  finds it down wins over one that finds it up
typedef struct {
    bool     known;
    bool     up;
    int64_t  age_ms;            //  since the check
    uint64_t latency_us;
    char     reason [ZG_SB_REASON_MAX];
} s_redis_state_t;

static void
s_redis_state (zg_scoreboard_t *self, int64_t now, s_redis_state_t *state)
{
    memset (state, 0, sizeof (*state));
    for (int index = 0; index < zg_scoreboard_slots (self); index++) {
        s_slot_t *entry = s_slot (self, index);
        uint32_t flags = atomic_load (&entry->flags);
        if (!(flags & ZG_SB_REDIS_KNOWN) || !s_fresh (self, entry, now))
            continue;
        bool up = flags & ZG_SB_REDIS_UP;
        if (state->known && (!state->up || up))
            continue;
        state->known = true;
        state->up = up;
        state->age_ms = now - atomic_load (&entry->redis_checked_ms);
        state->latency_us = atomic_load (&entry->redis_latency_us);
        s_redis_reason (entry, state->reason, sizeof (state->reason));
    }
}

//  One role's line in "checks" and, when it fails, in the reason
static void
s_check_role (s_text_t *checks, s_text_t *reasons, const char *name,
              const s_role_state_t *state, bool needed, bool *first)
{
    const char *verdict;
    if (!needed)
        verdict = "not running here";
    else
    if (state->crash_loop)
        verdict = "crash-looping";
    else
    if (state->fresh)
        verdict = "healthy";
    else
    if (state->running)
        verdict = "not heartbeating";
    else
        verdict = "not running";
    s_add (checks, "%s\"%s\":\"%s\"", *first ? "" : ",", name, verdict);
    *first = false;
    if (needed && (state->crash_loop || !state->fresh)) {
        if (state->running && !state->fresh && !state->crash_loop)
            s_add (reasons, "%s%s not heartbeating for %lld ms", reasons->used ? "; " : "",
                   name, (long long) state->stalest_ms);
        else
            s_add (reasons, "%s%s %s", reasons->used ? "; " : "", name, verdict);
    }
}

int
zg_scoreboard_readiness (zg_scoreboard_t *self, const char *log_level,
                         bool detailed_debug, char **json_p)
{
    assert (self);
    assert (json_p);
    int64_t now = zg_scoreboard_now_ms ();
    s_role_state_t states [ZG_SB_ROLES];
    s_role_states (self, states, now);
    uint32_t expected = self->header->expected;

    s_text_t checks = { NULL, 0, 0, false };
    s_text_t reasons = { NULL, 0, 0, false };
    bool first = true;
    s_check_role (&checks, &reasons, "router", &states [ZG_SB_ROUTER],
                  expected & (1u << ZG_SB_ROUTER), &first);
    s_check_role (&checks, &reasons, "frontend", &states [ZG_SB_FRONTEND],
                  expected & (1u << ZG_SB_FRONTEND), &first);
    if (expected & (1u << ZG_SB_SPEND))
        s_check_role (&checks, &reasons, "spend", &states [ZG_SB_SPEND], true, &first);
    if (expected & (1u << ZG_SB_HEALTH))
        s_check_role (&checks, &reasons, "health", &states [ZG_SB_HEALTH], true, &first);

    //  Workers: one fresh is enough; a crash loop of the role is not
    bool workers_needed = expected & (1u << ZG_SB_WORKER);
    const s_role_state_t *workers = &states [ZG_SB_WORKER];
    s_add (&checks, ",\"workers_alive\":%d", workers->fresh);
    if (workers_needed && workers->crash_loop)
        s_add (&reasons, "%sworkers crash-looping", reasons.used ? "; " : "");
    else
    if (workers_needed && workers->fresh == 0)
        s_add (&reasons, "%sno worker alive (%d running, none heartbeating)",
               reasons.used ? "; " : "", workers->running);

    uint32_t frontend_flags = states [ZG_SB_FRONTEND].flags;
    if ((expected & (1u << ZG_SB_FRONTEND)) && states [ZG_SB_FRONTEND].fresh
    &&  !(frontend_flags & ZG_SB_ACCEPTING) && !(frontend_flags & ZG_SB_DRAINING))
        s_add (&reasons, "%sfrontend not accepting connections", reasons.used ? "; " : "");
    bool draining = (states [ZG_SB_SUPERVISOR].flags | frontend_flags) & ZG_SB_DRAINING;
    if (draining)
        s_add (&reasons, "%sshutting down", reasons.used ? "; " : "");

    //  The database as whoever watches it reports it
    bool db_known = false, db_down = false;
    for (int role = 0; role < ZG_SB_ROLES; role++)
        if (states [role].fresh && (states [role].flags & ZG_SB_DB_KNOWN)) {
            db_known = true;
            db_down |= !(states [role].flags & ZG_SB_DB_UP);
        }
    //  "Not connected" with no database at all, as the reference says it
    const char *db = !db_known ? "Not connected" : db_down ? "disconnected" : "connected";
    if (db_down && self->header->db_required)
        s_add (&reasons, "%sdatabase not reachable", reasons.used ? "; " : "");

    //  Redis: reported, never a reason to be unready. zgate serves without
    //  it (rate limits then count per instance); a Redis down taking every pod out of
    //  service would turn a cache outage into a gateway outage (and the
    //  reference's readiness does not check Redis at all).
    if (self->header->redis_configured) {
        s_redis_state_t redis;
        s_redis_state (self, now, &redis);
        if (!redis.known)
            s_add (&checks, ",\"redis\":\"unknown: no recent check\"");
        else {
            if (redis.up)
                s_add (&checks, ",\"redis\":\"healthy\",\"redis_ping_ms\":%.3f",
                       (double) redis.latency_us / 1000.0);
            else {
                s_add (&checks, ",\"redis\":\"unhealthy: ");
                s_add_escaped (&checks, redis.reason);
                s_add (&checks, "\"");
            }
            s_add (&checks, ",\"redis_checked_ms_ago\":%lld", (long long) redis.age_ms);
        }
    }

    bool ready = reasons.used == 0 && !reasons.failed;
    s_text_t text = { NULL, 0, 0, false };
    if (ready)
        s_add (&text, "{\"status\":\"healthy\"");
    else
        s_add (&text, "{\"detail\":\"Service Unhealthy (%s)\",\"status\":\"%s\"",
               reasons.data ? reasons.data : "", draining ? "shutting_down" : "unhealthy");
    s_add (&text, ",\"db\":\"%s\",\"cache\":%s,\"litellm_version\":\"%s\","
           "\"success_callbacks\":[],\"use_aiohttp_transport\":false,\"log_level\":\"%s\","
           "\"is_detailed_debug\":%s,\"checks\":{%s}}", db,
           self->header->redis_configured ? "\"redis\"" : "null", ZG_VERSION,
           log_level ? log_level : "INFO", detailed_debug ? "true" : "false",
           checks.data ? checks.data : "");
    free (checks.data);
    free (reasons.data);
    *json_p = s_finish (&text);
    return ready ? 200 : 503;
}

//  A label value as Prometheus' text format escapes it
static void
s_add_label (s_text_t *text, const char *value)
{
    for (const char *cursor = value; cursor && *cursor; cursor++) {
        if (*cursor == '\\')
            s_add (text, "\\\\");
        else
        if (*cursor == '"')
            s_add (text, "\\\"");
        else
        if (*cursor == '\n')
            s_add (text, "\\n");
        else
            s_add (text, "%c", *cursor);
    }
}

static void
s_sum_group (zg_scoreboard_t *self, int group, s_group_t *sum)
{
    memset (sum, 0, sizeof (*sum));
    for (int index = 0; index < zg_scoreboard_slots (self); index++) {
        s_group_t *counts = s_group (self, s_slot (self, index), group);
        for (int class = 0; class < S_CLASSES; class++)
            sum->requests [class] += atomic_load_explicit (&counts->requests [class],
                                                           memory_order_relaxed);
        sum->input_tokens += atomic_load_explicit (&counts->input_tokens, memory_order_relaxed);
        sum->output_tokens += atomic_load_explicit (&counts->output_tokens, memory_order_relaxed);
        sum->total_tokens += atomic_load_explicit (&counts->total_tokens, memory_order_relaxed);
        sum->spend_nano_usd += atomic_load_explicit (&counts->spend_nano_usd,
                                                     memory_order_relaxed);
        for (int latency = 0; latency < ZG_SB_LATENCIES; latency++) {
            s_histogram_t *from = &counts->latency [latency];
            s_histogram_t *to = &sum->latency [latency];
            for (size_t bucket = 0; bucket < S_BUCKETS; bucket++)
                to->buckets [bucket] += atomic_load_explicit (&from->buckets [bucket],
                                                              memory_order_relaxed);
            to->count += atomic_load_explicit (&from->count, memory_order_relaxed);
            to->sum_us += atomic_load_explicit (&from->sum_us, memory_order_relaxed);
        }
    }
}

static const char *s_class_labels [S_CLASSES] = { "1xx", "2xx", "3xx", "4xx", "5xx", "other" };

static const struct {
    const char *name;
    const char *help;
} s_latency_metrics [ZG_SB_LATENCIES] = {
    { "litellm_request_total_latency_metric",
      "Total latency (seconds) for a request to the proxy" },
    { "litellm_llm_api_latency_metric", "Total latency (seconds) for a model's LLM API call" },
    { "litellm_overhead_latency_metric", "Latency overhead (seconds) added by the proxy" },
    { "litellm_llm_api_time_to_first_token_metric",
      "Time to first token (seconds) for a model's LLM API call, streaming requests" },
};

//  The reference's Redis service metrics (litellm_redis_latency, labelled
//  by service as its services logger does; litellm_redis_fails, as its
//  docs name the failures), from zgate's checks of Redis
static void
s_add_redis_metrics (zg_scoreboard_t *self, s_text_t *text)
{
    s_histogram_t latency;
    memset (&latency, 0, sizeof (latency));
    uint64_t fails = 0;
    for (int index = 0; index < zg_scoreboard_slots (self); index++) {
        s_slot_t *entry = s_slot (self, index);
        for (size_t bucket = 0; bucket < S_BUCKETS; bucket++)
            latency.buckets [bucket] += atomic_load (&entry->redis_latency.buckets [bucket]);
        latency.count += atomic_load (&entry->redis_latency.count);
        latency.sum_us += atomic_load (&entry->redis_latency.sum_us);
        fails += atomic_load (&entry->redis_fails);
    }
    s_add (text, "# HELP litellm_redis_latency Latency for redis service (seconds of a PING)\n"
           "# TYPE litellm_redis_latency histogram\n");
    uint64_t cumulative = 0;
    for (size_t bucket = 0; bucket < S_BUCKETS; bucket++) {
        cumulative += latency.buckets [bucket];
        if (bucket < S_BOUNDS)
            s_add (text, "litellm_redis_latency_bucket{redis=\"redis\",le=\"%g\"} %llu\n",
                   s_bounds [bucket], (unsigned long long) cumulative);
        else
            s_add (text, "litellm_redis_latency_bucket{redis=\"redis\",le=\"+Inf\"} %llu\n",
                   (unsigned long long) cumulative);
    }
    s_add (text, "litellm_redis_latency_count{redis=\"redis\"} %llu\n"
           "litellm_redis_latency_sum{redis=\"redis\"} %.6f\n",
           (unsigned long long) latency.count, (double) latency.sum_us / 1e6);
    s_add (text, "# HELP litellm_redis_fails Failed checks of redis service\n"
           "# TYPE litellm_redis_fails counter\nlitellm_redis_fails_total{redis=\"redis\"} %llu\n",
           (unsigned long long) fails);
    s_add (text, "# HELP litellm_redis_total_requests Total checks of redis service\n"
           "# TYPE litellm_redis_total_requests counter\n"
           "litellm_redis_total_requests_total{redis=\"redis\"} %llu\n",
           (unsigned long long) (fails + latency.count));
    s_redis_state_t state;
    s_redis_state (self, zg_scoreboard_now_ms (), &state);
    s_add (text, "# HELP zgate_redis_up 1 while Redis answers zgate's checks\n"
           "# TYPE zgate_redis_up gauge\nzgate_redis_up %d\n", state.known && state.up ? 1 : 0);
}

char *
zg_scoreboard_metrics (zg_scoreboard_t *self, const zg_config_t *config)
{
    assert (self);
    int group_total = (int) self->header->group_count + 1;
    s_group_t *sums = (s_group_t *) calloc ((size_t) group_total, sizeof (s_group_t));
    if (!sums)
        return NULL;
    for (int group = 0; group < group_total; group++)
        s_sum_group (self, group, &sums [group]);

    s_text_t text = { NULL, 0, 0, false };
    //  Requests, and the failed ones (4xx and 5xx), by group and status class
    for (int failed = 0; failed < 2; failed++) {
        const char *name = failed ? "litellm_proxy_failed_requests_metric"
                                  : "litellm_proxy_total_requests_metric";
        s_add (&text, "# HELP %s %s\n# TYPE %s counter\n", name,
               failed ? "Total number of failed responses from proxy"
                      : "Total number of requests made to the proxy server", name);
        for (int group = 0; group < group_total; group++)
            for (int class = failed ? 3 : 0; class < S_CLASSES; class++) {
                uint64_t count = sums [group].requests [class];
                if (count == 0 || (failed && class == S_CLASSES - 1))
                    continue;
                s_add (&text, "%s_total{requested_model=\"", name);
                s_add_label (&text, s_group_name (self, group));
                s_add (&text, "\",status_code=\"%s\"} %llu\n", s_class_labels [class],
                       (unsigned long long) count);
            }
    }
    static const char *token_names [] = {
        "litellm_input_tokens_metric", "litellm_output_tokens_metric",
        "litellm_total_tokens_metric"
    };
    for (int kind = 0; kind < 3; kind++) {
        s_add (&text, "# HELP %s Tokens of LLM calls\n# TYPE %s counter\n",
               token_names [kind], token_names [kind]);
        for (int group = 0; group < group_total; group++) {
            s_group_t *sum = &sums [group];
            uint64_t value = kind == 0 ? sum->input_tokens
                           : kind == 1 ? sum->output_tokens : sum->total_tokens;
            if (value == 0 && sum->latency [ZG_SB_LATENCY_LLM_API].count == 0)
                continue;
            s_add (&text, "%s_total{requested_model=\"", token_names [kind]);
            s_add_label (&text, s_group_name (self, group));
            s_add (&text, "\"} %llu\n", (unsigned long long) value);
        }
    }
    s_add (&text, "# HELP litellm_spend_metric Total spend on LLM requests (USD)\n"
           "# TYPE litellm_spend_metric counter\n");
    for (int group = 0; group < group_total; group++) {
        s_group_t *sum = &sums [group];
        if (sum->spend_nano_usd == 0 && sum->latency [ZG_SB_LATENCY_LLM_API].count == 0)
            continue;
        s_add (&text, "litellm_spend_metric_total{requested_model=\"");
        s_add_label (&text, s_group_name (self, group));
        s_add (&text, "\"} %.9f\n", (double) sum->spend_nano_usd / 1e9);
    }
    for (int latency = 0; latency < ZG_SB_LATENCIES; latency++) {
        const char *name = s_latency_metrics [latency].name;
        s_add (&text, "# HELP %s %s\n# TYPE %s histogram\n", name,
               s_latency_metrics [latency].help, name);
        for (int group = 0; group < group_total; group++) {
            s_histogram_t *histogram = &sums [group].latency [latency];
            if (histogram->count == 0)
                continue;
            uint64_t cumulative = 0;
            for (size_t bucket = 0; bucket < S_BUCKETS; bucket++) {
                cumulative += histogram->buckets [bucket];
                s_add (&text, "%s_bucket{requested_model=\"", name);
                s_add_label (&text, s_group_name (self, group));
                if (bucket < S_BOUNDS)
                    s_add (&text, "\",le=\"%g\"} %llu\n", s_bounds [bucket],
                           (unsigned long long) cumulative);
                else
                    s_add (&text, "\",le=\"+Inf\"} %llu\n", (unsigned long long) cumulative);
            }
            s_add (&text, "%s_count{requested_model=\"", name);
            s_add_label (&text, s_group_name (self, group));
            s_add (&text, "\"} %llu\n%s_sum{requested_model=\"", (unsigned long long) histogram->count,
                   name);
            s_add_label (&text, s_group_name (self, group));
            s_add (&text, "\"} %.6f\n", (double) histogram->sum_us / 1e6);
        }
    }
    free (sums);

    //  Gauges and the supervisor's counts
    int64_t gauges [ZG_SB_GAUGES] = { 0 };
    uint64_t restarts [ZG_SB_ROLES] = { 0 };
    uint32_t crash_loop [ZG_SB_ROLES] = { 0 };
    for (int index = 0; index < zg_scoreboard_slots (self); index++) {
        s_slot_t *entry = s_slot (self, index);
        if (atomic_load (&entry->pid) > 0)
            for (int gauge = 0; gauge < ZG_SB_GAUGES; gauge++)
                gauges [gauge] += atomic_load_explicit (&entry->gauges [gauge],
                                                        memory_order_relaxed);
        for (int role = 0; role < ZG_SB_ROLES; role++) {
            restarts [role] += atomic_load (&entry->restarts [role]);
            crash_loop [role] |= atomic_load (&entry->crash_loop [role]);
        }
    }
    s_add (&text, "# HELP litellm_in_flight_requests Requests being served by the proxy\n"
           "# TYPE litellm_in_flight_requests gauge\nlitellm_in_flight_requests %lld\n",
           (long long) gauges [ZG_SB_IN_FLIGHT]);

    //  Cooldowns are not implemented: every deployment is healthy (0)
    s_add (&text, "# HELP litellm_deployment_state The state of the deployment: "
           "0 = healthy, 1 = partial outage, 2 = complete outage\n"
           "# TYPE litellm_deployment_state gauge\n");
    for (size_t index = 0; config && index < config->deployment_count; index++) {
        const zg_deployment_t *deployment = &config->deployments [index];
        char api_base [2048];
        snprintf (api_base, sizeof (api_base), "%s", deployment->api_base ? deployment->api_base : "");
        api_base [strcspn (api_base, "?#")] = 0;        //  a query may hold a key
        s_add (&text, "litellm_deployment_state{litellm_model_name=\"");
        s_add_label (&text, deployment->model_name);
        s_add (&text, "\",model_id=\"");
        s_add_label (&text, deployment->id);
        s_add (&text, "\",api_base=\"");
        s_add_label (&text, api_base);
        s_add (&text, "\",api_provider=\"");
        s_add_label (&text, deployment->provider);
        s_add (&text, "\"} 0\n");
    }
    s_add (&text, "# HELP litellm_deployment_cooled_down Deployments put in cooldown\n"
           "# TYPE litellm_deployment_cooled_down counter\n");

    if (self->header->redis_configured)
        s_add_redis_metrics (self, &text);

    s_add (&text, "# HELP zgate_router_queue_depth Requests waiting for a free worker\n"
           "# TYPE zgate_router_queue_depth gauge\nzgate_router_queue_depth %lld\n",
           (long long) gauges [ZG_SB_QUEUE_DEPTH]);
    s_add (&text, "# HELP zgate_workers_alive Worker processes with a fresh heartbeat\n"
           "# TYPE zgate_workers_alive gauge\nzgate_workers_alive %d\n",
           zg_scoreboard_workers_alive (self));
    s_add (&text, "# HELP zgate_router_workers_connected Workers registered with the router\n"
           "# TYPE zgate_router_workers_connected gauge\nzgate_router_workers_connected %lld\n",
           (long long) gauges [ZG_SB_WORKERS_CONNECTED]);
    s_add (&text, "# HELP zgate_restarts_total Processes restarted after they died, by role\n"
           "# TYPE zgate_restarts_total counter\n");
    for (int role = ZG_SB_FRONTEND; role < ZG_SB_ROLES; role++)
        if (role != ZG_SB_ROUTER)       //  a thread of the frontend's process
            s_add (&text, "zgate_restarts_total{role=\"%s\"} %llu\n", zg_sb_role_name (role),
                   (unsigned long long) restarts [role]);
    s_add (&text, "# HELP zgate_crash_loop 1 while processes of the role keep dying at start\n"
           "# TYPE zgate_crash_loop gauge\n");
    for (int role = ZG_SB_FRONTEND; role < ZG_SB_ROLES; role++)
        if (role != ZG_SB_ROUTER)
            s_add (&text, "zgate_crash_loop{role=\"%s\"} %u\n", zg_sb_role_name (role),
                   crash_loop [role]);
    return s_finish (&text);
}


//  --------------------------------------------------------------------------
//  Self test

void
zg_scoreboard_test (bool verbose)
{
    printf (" * zg_scoreboard: ");
    zg_config_t *config = zg_config_new_default ();
    ZG_CHECK (config);

    char dir [] = "/tmp/zg-scoreboard-XXXXXX";
    ZG_CHECK (mkdtemp (dir));
    char path [256];
    snprintf (path, sizeof (path), "%s/scoreboard", dir);

    //  Not there, or not a scoreboard
    ZG_CHECK (zg_scoreboard_attach (path) == NULL);
    FILE *junk = fopen (path, "w");
    ZG_CHECK (junk);
    fputs ("not a scoreboard at all, but long enough to hold a header of one", junk);
    fclose (junk);
    ZG_CHECK (zg_scoreboard_attach (path) == NULL && errno == EPROTO);
    ZG_CHECK (zg_scoreboard_create (path, config, 0) == NULL);

    zg_scoreboard_t *board = zg_scoreboard_create (path, config, 6);
    ZG_CHECK (board);
    zg_scoreboard_expect (board, ZG_SB_FRONTEND);
    zg_scoreboard_expect (board, ZG_SB_ROUTER);
    zg_scoreboard_expect (board, ZG_SB_WORKER);
    zg_scoreboard_set_heartbeat_ms (board, 100);
    zg_scoreboard_assign (board, 0, ZG_SB_SUPERVISOR);
    zg_scoreboard_assign (board, 1, ZG_SB_FRONTEND);
    zg_scoreboard_assign (board, 2, ZG_SB_ROUTER);
    zg_scoreboard_assign (board, 3, ZG_SB_WORKER);
    zg_scoreboard_assign (board, 4, ZG_SB_WORKER);
    ZG_CHECK (zg_scoreboard_slots (board) == 6);
    ZG_CHECK (zg_scoreboard_role (board, 3) == ZG_SB_WORKER);
    ZG_CHECK (zg_scoreboard_role (board, 6) == ZG_SB_NONE);
    ZG_CHECK (zg_scoreboard_free_slot (board, ZG_SB_WORKER) == 3);
    ZG_CHECK (zg_scoreboard_free_slot (board, ZG_SB_SPEND) == -1);

    //  Nothing runs yet: not ready, and each reason is named
    char *json = NULL;
    ZG_CHECK (zg_scoreboard_readiness (board, "INFO", false, &json) == 503);
    ZG_CHECK (strstr (json, "\"detail\":\"Service Unhealthy (router not running; "
                            "frontend not running; no worker alive"));
    free (json);

    //  A second mapping, as another process has: writes meet
    zg_scoreboard_t *other = zg_scoreboard_attach (path);
    ZG_CHECK (other);
    zg_scoreboard_claim (board, 0, "supervisor");
    zg_scoreboard_claim (other, 1, "frontend-1");
    zg_scoreboard_set_flags (other, 1, ZG_SB_ACCEPTING, 0);
    zg_scoreboard_claim (other, 2, "router");
    zg_scoreboard_claim (board, 3, "worker-1");
    zg_scoreboard_claim (board, 4, "worker-2");
    ZG_CHECK (zg_scoreboard_free_slot (board, ZG_SB_WORKER) == -1);
    ZG_CHECK (zg_scoreboard_workers_alive (other) == 2);
    ZG_CHECK (zg_scoreboard_readiness (other, "DEBUG", true, &json) == 200);
    ZG_CHECK (strstr (json, "{\"status\":\"healthy\""));
    ZG_CHECK (strstr (json, "\"litellm_version\":\"" ZG_VERSION "\""));
    ZG_CHECK (strstr (json, "\"is_detailed_debug\":true"));
    ZG_CHECK (strstr (json, "\"workers_alive\":2"));
    ZG_CHECK (strstr (json, "\"cache\":null") && !strstr (json, "redis"));
    free (json);

    //  Not accepting, draining, crash-looping: each one is a reason
    zg_scoreboard_set_flags (board, 1, 0, ZG_SB_ACCEPTING);
    ZG_CHECK (zg_scoreboard_readiness (board, NULL, false, &json) == 503);
    ZG_CHECK (strstr (json, "frontend not accepting connections"));
    free (json);
    zg_scoreboard_set_flags (board, 1, ZG_SB_ACCEPTING, 0);
    zg_scoreboard_set_crash_loop (board, 0, ZG_SB_WORKER, true);
    ZG_CHECK (zg_scoreboard_readiness (board, NULL, false, &json) == 503);
    ZG_CHECK (strstr (json, "workers crash-looping"));
    free (json);
    zg_scoreboard_set_crash_loop (board, 0, ZG_SB_WORKER, false);
    zg_scoreboard_set_flags (board, 0, ZG_SB_DRAINING, 0);
    ZG_CHECK (zg_scoreboard_readiness (board, NULL, false, &json) == 503);
    ZG_CHECK (strstr (json, "shutting down") && strstr (json, "\"status\":\"shutting_down\""));
    free (json);
    zg_scoreboard_set_flags (board, 0, 0, ZG_SB_DRAINING);

    //  A stale heartbeat: the spend actor expected and silent
    zg_scoreboard_expect (board, ZG_SB_SPEND);
    zg_scoreboard_assign (board, 5, ZG_SB_SPEND);
    zg_scoreboard_claim (board, 5, "spend");
    ZG_CHECK (zg_scoreboard_readiness (board, NULL, false, &json) == 200);
    free (json);
    int64_t started = zg_scoreboard_now_ms ();
    while (zg_scoreboard_now_ms () - started < 400) {
        zg_scoreboard_beat (board, 0);
        zg_scoreboard_beat (board, 1);
        zg_scoreboard_beat (board, 2);
        zg_scoreboard_beat (board, 3);
        usleep (20000);
    }
    ZG_CHECK (zg_scoreboard_workers_alive (board) == 1);
    ZG_CHECK (zg_scoreboard_readiness (board, NULL, false, &json) == 503);
    ZG_CHECK (strstr (json, "spend not heartbeating for"));
    ZG_CHECK (strstr (json, "\"spend\":\"not heartbeating\""));
    ZG_CHECK (zg_json_valid (json, strlen (json), NULL));
    free (json);
    zg_scoreboard_vacate (board, 4);
    ZG_CHECK (zg_scoreboard_free_slot (board, ZG_SB_WORKER) == 4);

    //  The database as the spend actor reports it
    zg_scoreboard_beat (board, 5);
    zg_scoreboard_set_flags (board, 5, ZG_SB_DB_KNOWN | ZG_SB_DB_UP, 0);
    ZG_CHECK (zg_scoreboard_readiness (board, NULL, false, &json) == 200);
    ZG_CHECK (strstr (json, "\"db\":\"connected\""));
    free (json);
    zg_scoreboard_set_flags (board, 5, ZG_SB_DB_KNOWN, ZG_SB_DB_UP);
    ZG_CHECK (zg_scoreboard_readiness (board, NULL, false, &json) == 200);
    ZG_CHECK (strstr (json, "\"db\":\"disconnected\""));
    free (json);
    zg_scoreboard_require_db (board, true);
    ZG_CHECK (zg_scoreboard_readiness (board, NULL, false, &json) == 503);
    ZG_CHECK (strstr (json, "database not reachable"));
    free (json);

    //  Metrics from two processes' slots add up; unknown groups count
    //  under the unnamed one; slot -1 is ignored
    ZG_CHECK (zg_scoreboard_group (board, "no-such-model") == 0);
    ZG_CHECK (zg_scoreboard_group (board, NULL) == 0);
    zg_scoreboard_count_request (board, 1, 0, 200);
    zg_scoreboard_count_request (other, 1, 0, 200);
    zg_scoreboard_count_request (board, 3, 0, 503);
    zg_scoreboard_count_request (board, 3, 0, 1000);
    zg_scoreboard_count_request (board, -1, 0, 200);
    zg_scoreboard_count_usage (board, 3, 0, 10, 5, 15, 0.25);
    zg_scoreboard_count_usage (other, 4, 0, 1, 2, 3, NAN);
    zg_scoreboard_observe (board, 1, 0, ZG_SB_LATENCY_TOTAL, 3000);        //  0.003 s
    zg_scoreboard_observe (other, 1, 0, ZG_SB_LATENCY_TOTAL, 400000000);   //  400 s
    zg_scoreboard_observe (board, 3, 0, ZG_SB_LATENCY_LLM_API, 1000000);
    zg_scoreboard_gauge (board, 1, ZG_SB_IN_FLIGHT, 3);
    zg_scoreboard_gauge (board, 2, ZG_SB_QUEUE_DEPTH, 7);
    zg_scoreboard_count_restart (board, 0, ZG_SB_WORKER);
    zg_scoreboard_count_restart (board, 0, ZG_SB_WORKER);
    char *text = zg_scoreboard_metrics (other, config);
    ZG_CHECK (text);
    if (verbose)
        puts (text);
    ZG_CHECK (strstr (text, "litellm_proxy_total_requests_metric_total{requested_model=\"\","
                            "status_code=\"2xx\"} 2\n"));
    ZG_CHECK (strstr (text, "litellm_proxy_total_requests_metric_total{requested_model=\"\","
                            "status_code=\"5xx\"} 1\n"));
    ZG_CHECK (strstr (text, "litellm_proxy_failed_requests_metric_total{requested_model=\"\","
                            "status_code=\"5xx\"} 1\n"));
    ZG_CHECK (!strstr (text, "litellm_proxy_failed_requests_metric_total{requested_model=\"\","
                             "status_code=\"2xx\"}"));
    ZG_CHECK (strstr (text, "litellm_input_tokens_metric_total{requested_model=\"\"} 11\n"));
    ZG_CHECK (strstr (text, "litellm_total_tokens_metric_total{requested_model=\"\"} 18\n"));
    ZG_CHECK (strstr (text, "litellm_spend_metric_total{requested_model=\"\"} 0.250000000\n"));
    ZG_CHECK (strstr (text, "litellm_request_total_latency_metric_bucket{requested_model=\"\","
                            "le=\"0.005\"} 1\n"));
    ZG_CHECK (strstr (text, "litellm_request_total_latency_metric_bucket{requested_model=\"\","
                            "le=\"300\"} 1\n"));
    ZG_CHECK (strstr (text, "litellm_request_total_latency_metric_bucket{requested_model=\"\","
                            "le=\"+Inf\"} 2\n"));
    ZG_CHECK (strstr (text, "litellm_request_total_latency_metric_count{requested_model=\"\"} 2\n"));
    ZG_CHECK (strstr (text, "litellm_request_total_latency_metric_sum{requested_model=\"\"} 400.003000\n"));
    ZG_CHECK (strstr (text, "litellm_in_flight_requests 3\n"));
    ZG_CHECK (strstr (text, "zgate_router_queue_depth 7\n"));
    ZG_CHECK (strstr (text, "zgate_restarts_total{role=\"worker\"} 2\n"));
    ZG_CHECK (!strstr (text, "redis"));
    free (text);
    zg_scoreboard_destroy (&other);
    zg_scoreboard_destroy (&board);
    zg_scoreboard_destroy (&board);

    //  Named groups from the configuration; label values escaped
    char config_path [256];
    snprintf (config_path, sizeof (config_path), "%s/config.yaml", dir);
    FILE *file = fopen (config_path, "w");
    ZG_CHECK (file);
    fputs ("model_list:\n"
           "  - model_name: gpt-4o\n"
           "    litellm_params: {model: openai/gpt-4o, api_base: \"http://a/v1?key=secret\"}\n"
           "  - model_name: \"odd\\\"name\"\n"
           "    litellm_params: {model: openai/x}\n"
           "  - model_name: gpt-4o\n"
           "    litellm_params: {model: openai/gpt-4o-2}\n", file);
    fclose (file);
    char errbuf [512];
    zg_config_t *models = zg_config_load (config_path, errbuf, sizeof (errbuf));
    ZG_CHECK (models);
    board = zg_scoreboard_new_private (models, 2);
    ZG_CHECK (board);
    ZG_CHECK (zg_scoreboard_group (board, "gpt-4o") == 1);
    ZG_CHECK (zg_scoreboard_group (board, "odd\"name") == 2);
    zg_scoreboard_claim (board, 0, "frontend");
    zg_scoreboard_count_request (board, 0, 1, 429);
    zg_scoreboard_count_request (board, 0, 2, 200);
    text = zg_scoreboard_metrics (board, models);
    ZG_CHECK (strstr (text, "litellm_proxy_failed_requests_metric_total{requested_model=\"gpt-4o\","
                            "status_code=\"4xx\"} 1\n"));
    ZG_CHECK (strstr (text, "{requested_model=\"odd\\\"name\",status_code=\"2xx\"} 1\n"));
    ZG_CHECK (strstr (text, "litellm_deployment_state{litellm_model_name=\"gpt-4o\""));
    ZG_CHECK (strstr (text, "api_base=\"http://a/v1\""));
    ZG_CHECK (!strstr (text, "secret"));
    free (text);
    zg_scoreboard_destroy (&board);
    zg_config_destroy (&models);

    //  Redis in the configuration: reported as its watcher finds it, never
    //  a reason to be unready
    config->redis_host = strdup ("127.0.0.1");
    ZG_CHECK (config->redis_host);
    board = zg_scoreboard_new_private (config, 2);
    ZG_CHECK (board);
    zg_scoreboard_expect (board, ZG_SB_FRONTEND);
    zg_scoreboard_assign (board, 0, ZG_SB_FRONTEND);
    zg_scoreboard_claim (board, 0, "frontend");
    zg_scoreboard_set_flags (board, 0, ZG_SB_ACCEPTING, 0);
    ZG_CHECK (zg_scoreboard_readiness (board, NULL, false, &json) == 200);
    ZG_CHECK (strstr (json, "\"cache\":\"redis\""));
    ZG_CHECK (strstr (json, "\"redis\":\"unknown: no recent check\""));
    free (json);
    zg_scoreboard_redis_report (board, -1, false, 0, "nobody's");
    zg_scoreboard_redis_report (board, 0, true, 1500, NULL);
    ZG_CHECK (zg_scoreboard_readiness (board, NULL, false, &json) == 200);
    ZG_CHECK (strstr (json, "\"redis\":\"healthy\",\"redis_ping_ms\":1.500,\"redis_checked_ms_ago\":"));
    free (json);
    text = zg_scoreboard_metrics (board, config);
    ZG_CHECK (strstr (text, "zgate_redis_up 1\n"));
    free (text);
    zg_scoreboard_redis_report (board, 0, false, 0, "AUTH refused: WRONGPASS \"x\"\n");
    ZG_CHECK (zg_scoreboard_readiness (board, NULL, false, &json) == 200);
    ZG_CHECK (zg_json_valid (json, strlen (json), NULL));
    ZG_CHECK (strstr (json, "\"redis\":\"unhealthy: AUTH refused: WRONGPASS \\\"x\\\"\\u000a\""));
    ZG_CHECK (strstr (json, "\"status\":\"healthy\""));
    free (json);
    char long_reason [400];
    memset (long_reason, 'r', sizeof (long_reason) - 1);
    long_reason [sizeof (long_reason) - 1] = 0;
    zg_scoreboard_redis_report (board, 0, false, 0, long_reason);
    ZG_CHECK (zg_scoreboard_readiness (board, NULL, false, &json) == 200);
    ZG_CHECK (strstr (json, long_reason + sizeof (long_reason) - ZG_SB_REASON_MAX));
    ZG_CHECK (!strstr (json, long_reason + sizeof (long_reason) - ZG_SB_REASON_MAX - 1));
    free (json);
    text = zg_scoreboard_metrics (board, config);
    ZG_CHECK (text);
    if (verbose)
        puts (text);
    ZG_CHECK (strstr (text, "# TYPE litellm_redis_latency histogram\n"));
    ZG_CHECK (strstr (text, "litellm_redis_latency_bucket{redis=\"redis\",le=\"0.005\"} 1\n"));
    ZG_CHECK (strstr (text, "litellm_redis_latency_bucket{redis=\"redis\",le=\"+Inf\"} 1\n"));
    ZG_CHECK (strstr (text, "litellm_redis_latency_count{redis=\"redis\"} 1\n"));
    ZG_CHECK (strstr (text, "litellm_redis_latency_sum{redis=\"redis\"} 0.001500\n"));
    ZG_CHECK (strstr (text, "# TYPE litellm_redis_fails counter\nlitellm_redis_fails_total{redis=\"redis\"} 2\n"));
    ZG_CHECK (strstr (text, "litellm_redis_total_requests_total{redis=\"redis\"} 3\n"));
    ZG_CHECK (strstr (text, "zgate_redis_up 0\n"));
    free (text);
    //  A restarted process starts unknown; the counts stay
    zg_scoreboard_claim (board, 0, "frontend");
    ZG_CHECK (zg_scoreboard_readiness (board, NULL, false, &json) == 503);
    ZG_CHECK (strstr (json, "\"redis\":\"unknown: no recent check\""));
    free (json);
    text = zg_scoreboard_metrics (board, config);
    ZG_CHECK (strstr (text, "litellm_redis_fails_total{redis=\"redis\"} 2\n"));
    free (text);
    zg_scoreboard_destroy (&board);
    zg_config_destroy (&config);

    unlink (config_path);
    unlink (path);
    rmdir (dir);
    printf ("OK\n");
}
