/*  =========================================================================
    zg_scoreboard - what every process of one zgate instance shows the
    others: liveness and metrics, in one shared memory file

    The supervisor creates a file in the run directory (zg_scoreboard_create)
    with one slot per actor it runs, each slot's role fixed, and passes each
    child the file (ZGATE_SCOREBOARD) and its slot (ZGATE_SLOT; the router
    thread of the frontend's process gets ZGATE_ROUTER_SLOT). A child maps
    the file (zg_scoreboard_attach) and from then on writes only its own
    slot: a heartbeat (monotonic ms) every loop turn, state flags, gauges,
    and per model group counters and fixed-bucket latency histograms, all
    with relaxed atomic adds: no lock, no system call on the data path.
    Readers (readiness, /metrics, the health app) sum over the slots, as
    Prometheus' multiprocess mode does, without a file per metric.

    A slot's counters outlive its process: a restarted child takes the
    same slot and keeps adding, so sums only go up. The supervisor's own
    slot holds restarts and crash loops per role, and the draining flag.

    The model groups of the configuration are listed once in the file, so
    a label is an index; a name the list lacks (a model that does not
    exist, a request refused before its model was read) counts under
    index 0, the group with no name.

    A process started alone, without a supervisor, uses a private
    scoreboard (zg_scoreboard_new_private) that covers only itself.

    Layout (version 1), all little-endian native structs, one machine:
        header | group names | slot 0 | groups of slot 0 | slot 1 | ...
    =========================================================================
*/
#ifndef ZG_SCOREBOARD_H_INCLUDED
#define ZG_SCOREBOARD_H_INCLUDED

#include "common/zg_config.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct _zg_scoreboard_t zg_scoreboard_t;

//  Who owns a slot
typedef enum {
    ZG_SB_NONE = 0,
    ZG_SB_SUPERVISOR,
    ZG_SB_FRONTEND,
    ZG_SB_ROUTER,
    ZG_SB_WORKER,
    ZG_SB_SPEND,
    ZG_SB_HEALTH,
    ZG_SB_ROLES                 //  count
} zg_sb_role_t;

//  Slot flags
#define ZG_SB_ACCEPTING     0x01    //  frontend: its listening socket takes connections
#define ZG_SB_DRAINING      0x02    //  stopping: readiness is 503 at once
#define ZG_SB_DB_KNOWN      0x04    //  the slot reports the database state...
#define ZG_SB_DB_UP         0x08    //  ...and it is reachable
#define ZG_SB_REDIS_KNOWN   0x10    //  the slot watches Redis (zg_scoreboard_redis_report)...
#define ZG_SB_REDIS_UP      0x20    //  ...and it answered the last PING

//  Gauges, summed over slots
typedef enum {
    ZG_SB_IN_FLIGHT = 0,        //  frontend: LLM requests being served
    ZG_SB_QUEUE_DEPTH,          //  router: requests waiting for a worker
    ZG_SB_WORKERS_CONNECTED,    //  router: workers registered with it
    ZG_SB_GAUGES
} zg_sb_gauge_t;

//  Latency histograms, per model group, of successful calls
typedef enum {
    ZG_SB_LATENCY_TOTAL = 0,    //  litellm_request_total_latency_metric (frontend)
    ZG_SB_LATENCY_LLM_API,      //  litellm_llm_api_latency_metric (worker)
    ZG_SB_LATENCY_OVERHEAD,     //  litellm_overhead_latency_metric (frontend)
    ZG_SB_LATENCY_TTFT,         //  litellm_llm_api_time_to_first_token_metric (worker, streams)
    ZG_SB_LATENCIES
} zg_sb_latency_t;

//  Create the file at path (replacing any), sized for slot_count slots
//  and the configuration's model groups, all slots unassigned. Returns
//  NULL with errno set on failure.
zg_scoreboard_t *zg_scoreboard_create (const char *path, const zg_config_t *config,
                                       int slot_count);

//  An anonymous scoreboard for a process run alone; same rules.
zg_scoreboard_t *zg_scoreboard_new_private (const zg_config_t *config, int slot_count);

//  Map an existing file. NULL with errno set if it is missing or not a
//  scoreboard of this version.
zg_scoreboard_t *zg_scoreboard_attach (const char *path);

//  Unmap (the file stays for the other processes)
void zg_scoreboard_destroy (zg_scoreboard_t **self_p);

//  Settings the readers need, written by the creator before any child
//  starts: how old a heartbeat may be, and which roles are expected.
void zg_scoreboard_set_heartbeat_ms (zg_scoreboard_t *self, int heartbeat_ms);
void zg_scoreboard_expect (zg_scoreboard_t *self, zg_sb_role_t role);

//  A database that a slot reports down (ZG_SB_DB_KNOWN without
//  ZG_SB_DB_UP) makes the instance unready; not set with
//  allow_requests_on_db_unavailable, as the reference's guide says
void zg_scoreboard_require_db (zg_scoreboard_t *self, bool required);

//  Creator: give a slot its role, before its process starts
void zg_scoreboard_assign (zg_scoreboard_t *self, int slot, zg_sb_role_t role);

//  The slot count, and a slot's role
int zg_scoreboard_slots (zg_scoreboard_t *self);
zg_sb_role_t zg_scoreboard_role (zg_scoreboard_t *self, int slot);

//  First slot of that role whose process is not running (pid 0, or no
//  such process); -1 if none. For the supervisor's spares.
int zg_scoreboard_free_slot (zg_scoreboard_t *self, zg_sb_role_t role);

//  Creator: the slot's process is gone (clears its pid and flags)
void zg_scoreboard_vacate (zg_scoreboard_t *self, int slot);

//  ----------------------------------------------------------------------
//  Writing one's own slot. Every function accepts slot < 0 (no scoreboard
//  slot: the call does nothing), so callers need no branches.

//  Take the slot: pid, name, a first heartbeat
void zg_scoreboard_claim (zg_scoreboard_t *self, int slot, const char *name);

//  Now (monotonic ms) as the heartbeat
void zg_scoreboard_beat (zg_scoreboard_t *self, int slot);

void zg_scoreboard_set_flags (zg_scoreboard_t *self, int slot, uint32_t set, uint32_t clear);
void zg_scoreboard_gauge (zg_scoreboard_t *self, int slot, zg_sb_gauge_t gauge, int64_t value);

//  The index of a model group (0: unknown). Costs one hash lookup.
int zg_scoreboard_group (zg_scoreboard_t *self, const char *model_group);

//  One request ended with an HTTP status
void zg_scoreboard_count_request (zg_scoreboard_t *self, int slot, int group, int status);

//  Usage of one upstream call; cost in USD
void zg_scoreboard_count_usage (zg_scoreboard_t *self, int slot, int group,
                                uint64_t input_tokens, uint64_t output_tokens,
                                uint64_t total_tokens, double cost);

void zg_scoreboard_observe (zg_scoreboard_t *self, int slot, int group,
                            zg_sb_latency_t latency, uint64_t microseconds);

//  Redis as the slot's watcher last found it: up (the PING's round trip
//  in microseconds) or not, and why (at most ZG_SB_REASON_MAX - 1 bytes
//  are kept; never a password). A check that failed counts in
//  litellm_redis_fails, one that answered in litellm_redis_latency.
#define ZG_SB_REASON_MAX    160
void zg_scoreboard_redis_report (zg_scoreboard_t *self, int slot, bool up,
                                 uint64_t latency_us, const char *reason);

//  Supervisor: a child of that role was restarted; in_crash_loop says
//  whether the role is crash-looping now (set or cleared)
void zg_scoreboard_count_restart (zg_scoreboard_t *self, int slot, zg_sb_role_t role);
void zg_scoreboard_set_crash_loop (zg_scoreboard_t *self, int slot, zg_sb_role_t role,
                                   bool in_crash_loop);

//  ----------------------------------------------------------------------
//  Reading the sums

//  Readiness as the reference's /health/readiness: returns 200 or 503 and
//  a new JSON body (caller frees). Ready: a fresh router, at least one
//  fresh worker, a fresh frontend accepting, a fresh spend actor when
//  expected (and the health app when expected), no role crash-looping,
//  nothing draining. log_level, detailed_debug: echoed as the reference
//  does. With Redis in the configuration, "cache" is "redis" and "checks"
//  says how its watcher last found it; a Redis down is reported, never a
//  reason to be unready (zgate serves without it, counting rate limits per instance).
int zg_scoreboard_readiness (zg_scoreboard_t *self, const char *log_level,
                             bool detailed_debug, char **json_p);

//  Everything in Prometheus text format (version 0.0.4), with the
//  reference's metric names; config gives the deployments for
//  litellm_deployment_state. Returns a new string (caller frees).
char *zg_scoreboard_metrics (zg_scoreboard_t *self, const zg_config_t *config);

//  Workers with a fresh heartbeat
int zg_scoreboard_workers_alive (zg_scoreboard_t *self);

//  ----------------------------------------------------------------------
//  The process' scoreboard: main attaches it once (from ZGATE_SCOREBOARD,
//  or a private one) before starting actors, and the actors of the process
//  find it here. NULL when there is none: every call above then does
//  nothing. Not owned by the register.
void zg_scoreboard_set_process (zg_scoreboard_t *board);
zg_scoreboard_t *zg_scoreboard_process (void);

//  A slot number from an environment variable (ZGATE_SLOT,
//  ZGATE_ROUTER_SLOT); -1 when unset or not a slot of the process' board
int zg_scoreboard_env_slot (const char *variable);

//  Monotonic milliseconds, the clock of heartbeats
int64_t zg_scoreboard_now_ms (void);

//  The role's name: "router", "worker"...
const char *zg_sb_role_name (zg_sb_role_t role);

//  Self test
void zg_scoreboard_test (bool verbose);

#ifdef __cplusplus
}
#endif

#endif
