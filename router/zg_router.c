/*  =========================================================================
    zg_router - the broker between frontends and workers

    The zguide's load-balancing broker (lbbroker) with Majordomo's per-
    service view and Paranoid Pirate's heartbeats, on two ROUTER sockets:

        frontends (DEALER) -> [frontend ROUTER]  router  [worker ROUTER] <- workers (DEALER)

    Workers announce READY with their capacity and return CREDIT as their
    transfers end; a REQUEST goes to the worker with the most free credit
    (ties: the one picked least recently), after the group's balancer has
    chosen a deployment. With no credit anywhere the request waits in one
    bounded FIFO queue, which is the only buffer: lbbroker stops reading
    its frontend while no worker is free, but zgate's frontend must also be
    able to CANCEL and heartbeat, so the router keeps reading and answers
    503 when the queue is full or a request waited too long.

    Replies are relayed as the frames that arrived (header and payload),
    without decoding more than the call id or re-encoding anything.

    A worker being recycled sends RETIRE: it keeps no credit from then on,
    so no new call goes to it, while the replies for the calls it holds
    are relayed as before; the router answers RETIRE (nothing is
    dispatched to it after that answer) and forgets the worker when its
    last call ends.

    Costs per message are O(1) or O(log n): calls are in an intrusive hash
    table keyed by call id, recycled through a free list; workers are in a
    heap ordered by free credit; deadlines are in a heap ordered by time.
    =========================================================================
*/
#include "router/zg_router.h"
#include "router/zg_balancer.h"
#include "router/zg_outbox.h"
#include "router/zg_model_loader.h"
#include "proto/zg_msg.h"
#include "common/zg_log.h"
#include "common/zg_scoreboard.h"
#include "common/zg_sha256.h"

#include <czmq.h>
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

//  A peer is dead after this many silent heartbeat intervals
#define LIVENESS            3
//  A call whose worker died before answering is dispatched again at most
//  this many times
#define MAX_REDISPATCH      2
//  Workers enforce the real timeout; the router only catches a worker
//  that forgot a call
#define DEADLINE_GRACE_MS   10000
//  Messages queued per peer before sends fail: enough for hundreds of
//  streams in flight, small enough to bound memory
#define SOCKET_HWM          100000
//  Messages read from one socket before the others get their turn; also
//  how many the loop handles at most before it looks for new ones elsewhere
#define DRAIN_BATCH         256
//  Call records are allocated this many at a time and never freed before
//  the router stops
#define CALL_BLOCK          256
//  Spend records kept in memory until the spend actor acks them; beyond,
//  they spill to a file
#define SPEND_RING          100000
//  Spend records sent and not yet acked
#define SPEND_WINDOW        2000
//  New spend records go out together, when this many wait or the oldest
//  has waited this long: one wake-up of the spend actor (and of both ZeroMQ
//  I/O threads) per run of records instead of one per call, while the
//  spend actor writes only every proxy_batch_write_at seconds anyway
#define SPEND_SEND_RECORDS  256
#define SPEND_SEND_MS       10
//  On stop, how long to wait for the spend actor to ack what is held
//  (ZGATE_SPEND_STOP_WAIT_MS overrides it)
#define SPEND_STOP_WAIT_MS  30000

typedef struct _call_t call_t;
typedef struct _worker_t worker_t;
typedef struct _frontend_t frontend_t;

typedef struct {
    call_t *prev;
    call_t *next;
} link_t;

typedef struct {
    call_t *head;
    call_t *tail;
    size_t  size;
} call_list_t;

typedef enum {
    CALL_QUEUED,                //  waiting for a worker with credit
    CALL_DISPATCHED,            //  a worker has it; nothing reached the client yet
    CALL_STARTED                //  HEAD went out: it can no longer be dispatched again
} call_state_t;

typedef struct _models_t models_t;

//  A model group: the deployments one client-facing model name maps to
typedef struct {
    const char *name;                       //  owned by its models' deployments
    models_t *models;                       //  the set it belongs to
    size_t *indexes;                        //  into models->deployments
    const zg_deployment_t **members;        //  the same, as pointers for the balancer
    size_t count;
    zg_balancer_t *balancer;
} group_t;

//  The deployments the router serves: the configuration's model_list and,
//  with store_model_in_db, the database's. A new set replaces the current
//  one as a whole; each call holds a reference to the set it was routed
//  with, so a call in flight keeps its group, balancer and deployment
//  (even one just deleted) until it ends, and the old set goes with the
//  last of them.
struct _models_t {
    size_t refs;                            //  the router's while current, and one per call
    zg_deployment_t *deployments;           //  shallow copies: strings owned by the
    size_t count;                           //  configuration or by db_list
    zg_deployment_wire_t *wire;             //  per deployment, built once
    zhashx_t *groups;                       //  model name -> group_t
    zhashx_t *pinned;                       //  deployment id -> group_t of it alone
    zg_model_list_t *db_list;               //  the database's deployments, owned
};

struct _call_t {
    char          call_id [ZG_CALL_ID_MAX + 1];
    uint64_t      hash;
    call_t       *hash_next;        //  bucket chain; the free list when unused
    call_state_t  state;
    group_t      *group;
    uint8_t       route;
    uint32_t      flags;
    uint32_t      timeout_ms;
    uint64_t      model_span;       //  the frontend's spans, passed on to every dispatch
    uint64_t      options_span;
    uint8_t       attempt;
    size_t        member;           //  the deployment, as an index in group->members
    frontend_t   *frontend;
    link_t        by_frontend;
    worker_t     *worker;           //  NULL while queued
    link_t        by_owner;         //  in the queue, or in its worker's list
    zmq_msg_t     body;             //  the frame that holds the body, kept until
                                    //  HEAD, for a re-dispatch
    size_t        body_offset;      //  where the body lies in it (after the
    size_t        body_size;        //  REQUEST's header when it came inline)
    bool          has_body;
    int64_t       deadline;
    size_t        heap_index;
    int64_t       dispatched_at;
    uint64_t      started_us;       //  wall clock, for the spend record
    //  Who pays, from the REQUEST; an empty key_hash is the master key's
    char          key_hash [ZG_KEY_HASH_MAX + 1];
    char          user_id [ZG_NAME_MAX + 1];
    char          team_id [ZG_NAME_MAX + 1];
};

struct _worker_t {
    zframe_t   *identity;
    char       *key;                //  the identity in hex, key of router->workers
    char        name [ZG_NAME_MAX + 1];
    uint32_t    pid;
    uint32_t    capacity;
    uint32_t    credit;
    call_list_t calls;              //  dispatched to it and not yet ended
    int64_t     last_heard;
    size_t      heap_index;
    uint64_t    last_pick;          //  router->pick_seq when last given a call
    bool        retiring;           //  sent RETIRE: no new calls; forgotten once it holds none
};

struct _frontend_t {
    zframe_t   *identity;
    char       *key;
    char        label [2 * 255 + 1];    //  for logs
    call_list_t calls;
    int64_t     last_heard;
    frontend_t *prev;
    frontend_t *next;
};

//  The sockets the loop reads, as bits of router_t's ready and sent; a turn
//  reads them in this order (workers first: their replies free credit)
enum {
    SOCKET_BACKEND  = 1,
    SOCKET_FRONTEND = 2,
    SOCKET_SPEND    = 4,
    SOCKET_LOADER   = 8,
    SOCKET_PIPE     = 16
};

//  The frames of one message as they arrived
typedef struct {
    zmq_msg_t identity;
    zmq_msg_t header;
    zmq_msg_t payload;
    bool      has_payload;          //  in a frame of its own: payload
    const uint8_t *inline_payload;  //  in header's frame, after the header (s_decode)
    size_t    inline_size;
} raw_t;

typedef struct {
    const zg_config_t *config;
    zsock_t    *frontend;
    zsock_t    *backend;
    void       *frontend_handle;
    void       *backend_handle;

    models_t   *models;             //  what new calls are routed with
    zg_model_loader_t *loader;      //  the database's deployments; NULL without

    zhashx_t   *workers;            //  identity hex -> worker_t
    worker_t  **worker_heap;        //  all workers; most credit on top
    size_t      worker_count;
    size_t      worker_heap_size;
    uint64_t    pick_seq;

    zhashx_t   *frontends;          //  identity hex -> frontend_t
    frontend_t *frontend_list;

    call_t    **buckets;
    size_t      bucket_count;       //  a power of two
    size_t      call_count;
    call_t     *free_calls;
    void      **blocks;
    size_t      block_count;

    call_list_t queue;
    call_t    **deadlines;          //  min-heap on call->deadline
    size_t      deadline_count;
    size_t      deadline_size;

    zg_rng_t    rng;
    zg_msg_t    in;
    zg_msg_t    out;
    raw_t       raw;
    uint8_t     encoded [ZG_HEADER_MAX_BYTES];

    uint32_t    pid;
    int64_t     heartbeat_ms;
    int64_t     next_heartbeat;

    //  Spend records to the spend actor, when one is configured
    zsock_t    *spend;
    void       *spend_handle;
    zg_outbox_t *outbox;
    int64_t     spend_heard;
    size_t      spend_waiting;      //  records pushed since the last flush
    int64_t     spend_send_at;      //  when they go at the latest; 0 = none wait
    bool        spend_push_failed;
    bool        spend_skip;         //  the error being sent is not a call's end

    zg_scoreboard_t *board;         //  heartbeat and gauges; may be NULL
    int         slot;
    char        key_hash [ZG_KEY_HASH_MAX + 1];
    zg_msg_t    record;

    //  The loop's wait: every socket's ZMQ_FD in one epoll set. ZMQ_FD
    //  signals only the commands that make a socket readable again after it
    //  was read dry, and a send may take that signal in passing, so the
    //  loop keeps, per socket, whether it may hold messages without a
    //  signal to come (ready: not read dry since it was signalled or sent
    //  on) and reads those without asking the kernel first.
    int         epoll_fd;
    unsigned    ready;              //  SOCKET_* to read before any wait
    unsigned    sent;               //  SOCKET_* sent on since read dry
    size_t      handled;            //  messages since the loop last looked
    bool        terminated;         //  the ZeroMQ context is ending
} router_t;

static const char *
s_route_path (int route)
{
    switch (route) {
        case ZG_ROUTE_COMPLETIONS: return "/completions";
        case ZG_ROUTE_EMBEDDINGS:  return "/embeddings";
        default:                   return "/chat/completions";
    }
}

//  For logs: a printable identity as it is, any other in hex
static void
s_identity_label (const uint8_t *data, size_t size, char *label, size_t label_size)
{
    bool printable = size > 0;
    for (size_t index = 0; index < size && printable; index++)
        printable = data [index] >= 0x20 && data [index] < 0x7f;
    if (printable) {
        snprintf (label, label_size, "%.*s", (int) size, (const char *) data);
        return;
    }
    size_t used = 0;
    for (size_t index = 0; index < size && used + 3 <= label_size; index++)
        used += (size_t) snprintf (label + used, label_size - used, "%02x", data [index]);
    if (used == 0 && label_size)
        label [0] = 0;
}

//  Peer identities are up to 255 bytes of anything; hex makes them a key
static void
s_identity_key (const uint8_t *data, size_t size, char *key)
{
    static const char digits [] = "0123456789abcdef";
    if (size > 255)
        size = 255;
    for (size_t index = 0; index < size; index++) {
        key [index * 2] = digits [data [index] >> 4];
        key [index * 2 + 1] = digits [data [index] & 15];
    }
    key [size * 2] = 0;
}

//  ---------------------------------------------------------------------
//  Intrusive lists of calls

static link_t *
s_link (call_t *call, size_t offset)
{
    return (link_t *) ((char *) call + offset);
}

static void
s_list_append (call_list_t *list, call_t *call, size_t offset)
{
    link_t *link = s_link (call, offset);
    link->prev = list->tail;
    link->next = NULL;
    if (list->tail)
        s_link (list->tail, offset)->next = call;
    else
        list->head = call;
    list->tail = call;
    list->size++;
}

static void
s_list_prepend (call_list_t *list, call_t *call, size_t offset)
{
    link_t *link = s_link (call, offset);
    link->prev = NULL;
    link->next = list->head;
    if (list->head)
        s_link (list->head, offset)->prev = call;
    else
        list->tail = call;
    list->head = call;
    list->size++;
}

static void
s_list_remove (call_list_t *list, call_t *call, size_t offset)
{
    link_t *link = s_link (call, offset);
    if (link->prev)
        s_link (link->prev, offset)->next = link->next;
    else
        list->head = link->next;
    if (link->next)
        s_link (link->next, offset)->prev = link->prev;
    else
        list->tail = link->prev;
    link->prev = link->next = NULL;
    list->size--;
}

#define BY_OWNER    offsetof (call_t, by_owner)
#define BY_FRONTEND offsetof (call_t, by_frontend)

//  ---------------------------------------------------------------------
//  The call table: chained hash on call id, records from a free list

static uint64_t
s_hash (const char *text)
{
    uint64_t hash = 14695981039346656037ULL;    //  FNV-1a
    for (; *text; text++) {
        hash ^= (uint8_t) *text;
        hash *= 1099511628211ULL;
    }
    return hash;
}

static call_t *
s_call_lookup (router_t *self, const char *call_id)
{
    uint64_t hash = s_hash (call_id);
    call_t *call = self->buckets [hash & (self->bucket_count - 1)];
    for (; call; call = call->hash_next)
        if (call->hash == hash && strcmp (call->call_id, call_id) == 0)
            return call;
    return NULL;
}

static int
s_table_grow (router_t *self)
{
    size_t bucket_count = self->bucket_count * 2;
    call_t **buckets = (call_t **) calloc (bucket_count, sizeof (call_t *));
    if (!buckets)
        return -1;
    for (size_t index = 0; index < self->bucket_count; index++) {
        call_t *call = self->buckets [index];
        while (call) {
            call_t *next = call->hash_next;
            size_t slot = call->hash & (bucket_count - 1);
            call->hash_next = buckets [slot];
            buckets [slot] = call;
            call = next;
        }
    }
    free (self->buckets);
    self->buckets = buckets;
    self->bucket_count = bucket_count;
    return 0;
}

static call_t *
s_call_new (router_t *self, const char *call_id)
{
    if (!self->free_calls) {
        call_t *block = (call_t *) calloc (CALL_BLOCK, sizeof (call_t));
        void **blocks = (void **) realloc (self->blocks, (self->block_count + 1) * sizeof (void *));
        if (!block || !blocks) {
            free (block);
            if (blocks)
                self->blocks = blocks;
            return NULL;
        }
        self->blocks = blocks;
        self->blocks [self->block_count++] = block;
        for (size_t index = 0; index < CALL_BLOCK; index++) {
            block [index].hash_next = self->free_calls;
            self->free_calls = &block [index];
        }
    }
    if (self->call_count >= self->bucket_count && s_table_grow (self))
        return NULL;
    call_t *call = self->free_calls;
    self->free_calls = call->hash_next;
    memset (call, 0, sizeof (*call));
    zmq_msg_init (&call->body);
    ZG_MSG_SET (call->call_id, call_id);
    call->hash = s_hash (call->call_id);
    size_t slot = call->hash & (self->bucket_count - 1);
    call->hash_next = self->buckets [slot];
    self->buckets [slot] = call;
    self->call_count++;
    call->heap_index = SIZE_MAX;
    return call;
}

//  ---------------------------------------------------------------------
//  Deadlines: a min-heap of calls

static void
s_deadline_swap (router_t *self, size_t a, size_t b)
{
    call_t *call = self->deadlines [a];
    self->deadlines [a] = self->deadlines [b];
    self->deadlines [b] = call;
    self->deadlines [a]->heap_index = a;
    self->deadlines [b]->heap_index = b;
}

static void
s_deadline_sift (router_t *self, size_t index)
{
    while (index > 0) {
        size_t parent = (index - 1) / 2;
        if (self->deadlines [parent]->deadline <= self->deadlines [index]->deadline)
            break;
        s_deadline_swap (self, parent, index);
        index = parent;
    }
    while (true) {
        size_t left = index * 2 + 1, right = left + 1, least = index;
        if (left < self->deadline_count
        &&  self->deadlines [left]->deadline < self->deadlines [least]->deadline)
            least = left;
        if (right < self->deadline_count
        &&  self->deadlines [right]->deadline < self->deadlines [least]->deadline)
            least = right;
        if (least == index)
            break;
        s_deadline_swap (self, index, least);
        index = least;
    }
}

static void
s_deadline_remove (router_t *self, call_t *call)
{
    size_t index = call->heap_index;
    if (index == SIZE_MAX)
        return;
    call->heap_index = SIZE_MAX;
    self->deadline_count--;
    if (index == self->deadline_count)
        return;
    self->deadlines [index] = self->deadlines [self->deadline_count];
    self->deadlines [index]->heap_index = index;
    s_deadline_sift (self, index);
}

static int
s_deadline_set (router_t *self, call_t *call, int64_t deadline)
{
    call->deadline = deadline;
    if (call->heap_index != SIZE_MAX) {
        s_deadline_sift (self, call->heap_index);
        return 0;
    }
    if (self->deadline_count == self->deadline_size) {
        size_t size = self->deadline_size? self->deadline_size * 2: 1024;
        call_t **deadlines = (call_t **) realloc (self->deadlines, size * sizeof (call_t *));
        if (!deadlines)
            return -1;
        self->deadlines = deadlines;
        self->deadline_size = size;
    }
    call->heap_index = self->deadline_count;
    self->deadlines [self->deadline_count++] = call;
    s_deadline_sift (self, call->heap_index);
    return 0;
}

//  Ends a call's life in the router: it leaves every structure it is in
static void s_models_release (models_t **models_p);

static void
s_call_destroy (router_t *self, call_t *call)
{
    call_t **link = &self->buckets [call->hash & (self->bucket_count - 1)];
    while (*link != call)
        link = &(*link)->hash_next;
    *link = call->hash_next;
    self->call_count--;

    if (call->state == CALL_QUEUED)
        s_list_remove (&self->queue, call, BY_OWNER);
    else
    if (call->worker)
        s_list_remove (&call->worker->calls, call, BY_OWNER);
    if (call->frontend)
        s_list_remove (&call->frontend->calls, call, BY_FRONTEND);
    s_deadline_remove (self, call);
    zmq_msg_close (&call->body);
    call->has_body = false;
    if (call->group) {
        models_t *models = call->group->models;
        call->group = NULL;
        s_models_release (&models);
    }
    call->hash_next = self->free_calls;
    self->free_calls = call;
}

//  ---------------------------------------------------------------------
//  Workers: a max-heap on free credit, least recently picked first

static bool
s_worker_before (const worker_t *a, const worker_t *b)
{
    if (a->credit != b->credit)
        return a->credit > b->credit;
    return a->last_pick < b->last_pick;
}

static void
s_worker_swap (router_t *self, size_t a, size_t b)
{
    worker_t *worker = self->worker_heap [a];
    self->worker_heap [a] = self->worker_heap [b];
    self->worker_heap [b] = worker;
    self->worker_heap [a]->heap_index = a;
    self->worker_heap [b]->heap_index = b;
}

static void
s_worker_sift (router_t *self, size_t index)
{
    while (index > 0) {
        size_t parent = (index - 1) / 2;
        if (!s_worker_before (self->worker_heap [index], self->worker_heap [parent]))
            break;
        s_worker_swap (self, parent, index);
        index = parent;
    }
    while (true) {
        size_t left = index * 2 + 1, right = left + 1, best = index;
        if (left < self->worker_count
        &&  s_worker_before (self->worker_heap [left], self->worker_heap [best]))
            best = left;
        if (right < self->worker_count
        &&  s_worker_before (self->worker_heap [right], self->worker_heap [best]))
            best = right;
        if (best == index)
            break;
        s_worker_swap (self, index, best);
        index = best;
    }
}

static worker_t *
s_worker_with_credit (router_t *self)
{
    if (self->worker_count == 0 || self->worker_heap [0]->credit == 0)
        return NULL;
    return self->worker_heap [0];
}

static worker_t *
s_worker_lookup (router_t *self, const zmq_msg_t *identity)
{
    char key [2 * 255 + 1];
    s_identity_key ((const uint8_t *) zmq_msg_data ((zmq_msg_t *) identity),
                    zmq_msg_size ((zmq_msg_t *) identity), key);
    return (worker_t *) zhashx_lookup (self->workers, key);
}

static worker_t *
s_worker_new (router_t *self, const zmq_msg_t *identity)
{
    if (self->worker_count == self->worker_heap_size) {
        size_t size = self->worker_heap_size? self->worker_heap_size * 2: 16;
        worker_t **heap = (worker_t **) realloc (self->worker_heap, size * sizeof (worker_t *));
        if (!heap)
            return NULL;
        self->worker_heap = heap;
        self->worker_heap_size = size;
    }
    worker_t *worker = (worker_t *) calloc (1, sizeof (worker_t));
    if (!worker)
        return NULL;
    size_t size = zmq_msg_size ((zmq_msg_t *) identity);
    worker->identity = zframe_new (zmq_msg_data ((zmq_msg_t *) identity), size);
    worker->key = (char *) malloc (2 * size + 1);
    if (!worker->identity || !worker->key) {
        zframe_destroy (&worker->identity);
        free (worker->key);
        free (worker);
        return NULL;
    }
    s_identity_key (zframe_data (worker->identity), size, worker->key);
    zhashx_insert (self->workers, worker->key, worker);
    worker->heap_index = self->worker_count;
    self->worker_heap [self->worker_count++] = worker;
    s_worker_sift (self, worker->heap_index);
    return worker;
}

//  Forgets a worker; its calls must have been moved off it first
static void
s_worker_destroy (router_t *self, worker_t *worker)
{
    assert (worker->calls.size == 0);
    size_t index = worker->heap_index;
    self->worker_count--;
    if (index != self->worker_count) {
        self->worker_heap [index] = self->worker_heap [self->worker_count];
        self->worker_heap [index]->heap_index = index;
        s_worker_sift (self, index);
    }
    zhashx_delete (self->workers, worker->key);
    zframe_destroy (&worker->identity);
    free (worker->key);
    free (worker);
}

//  ---------------------------------------------------------------------
//  Frontends

static frontend_t *
s_frontend_touch (router_t *self, const zmq_msg_t *identity, int64_t now)
{
    char key [2 * 255 + 1];
    size_t size = zmq_msg_size ((zmq_msg_t *) identity);
    s_identity_key ((const uint8_t *) zmq_msg_data ((zmq_msg_t *) identity), size, key);
    frontend_t *frontend = (frontend_t *) zhashx_lookup (self->frontends, key);
    if (!frontend) {
        frontend = (frontend_t *) calloc (1, sizeof (frontend_t));
        if (!frontend)
            return NULL;
        frontend->identity = zframe_new (zmq_msg_data ((zmq_msg_t *) identity), size);
        frontend->key = strdup (key);
        if (!frontend->identity || !frontend->key) {
            zframe_destroy (&frontend->identity);
            free (frontend->key);
            free (frontend);
            return NULL;
        }
        s_identity_label (zframe_data (frontend->identity), size, frontend->label,
                          sizeof (frontend->label));
        zhashx_insert (self->frontends, frontend->key, frontend);
        frontend->next = self->frontend_list;
        if (self->frontend_list)
            self->frontend_list->prev = frontend;
        self->frontend_list = frontend;
        zg_debug ("router: frontend %s connected", frontend->label);
    }
    frontend->last_heard = now;
    return frontend;
}

//  ---------------------------------------------------------------------
//  Sending

//  Sends a message we built, with an optional body: size bytes at offset
//  in the frame the call keeps. A small body is copied after the header,
//  in one frame; a large one is a frame of its own, shared (not copied)
//  with the call. The first frame is the one that can fail: once a ROUTER
//  accepts the identity, it takes the rest of the message.
static int
s_send (router_t *self, void *handle, zframe_t *identity, zg_msg_t *msg, zmq_msg_t *body,
        size_t offset, size_t body_size)
{
    int size = zg_msg_encode (msg, self->encoded, sizeof (self->encoded));
    if (size < 0) {
        zg_error ("router: cannot encode %s for call %s", zg_msg_type_name (msg->type),
                  msg->call_id);
        return -1;
    }
    self->sent |= handle == self->backend_handle? SOCKET_BACKEND: SOCKET_FRONTEND;
    if (zmq_send (handle, zframe_data (identity), zframe_size (identity),
                  ZMQ_SNDMORE | ZMQ_DONTWAIT) < 0)
        return -1;
    if (body && body_size <= ZG_PAYLOAD_INLINE_MAX) {
        uint8_t prefix [ZG_INLINE_PREFIX_MAX];
        size_t prefix_size = zg_msg_inline_prefix (prefix, body_size);
        zmq_msg_t frame;
        if (zmq_msg_init_size (&frame, (size_t) size + prefix_size + body_size) < 0)
            return -1;
        uint8_t *out = (uint8_t *) zmq_msg_data (&frame);
        memcpy (out, self->encoded, (size_t) size);
        memcpy (out + size, prefix, prefix_size);
        memcpy (out + size + prefix_size, (const uint8_t *) zmq_msg_data (body) + offset,
                body_size);
        if (zmq_msg_send (&frame, handle, 0) < 0) {
            zmq_msg_close (&frame);
            return -1;
        }
        return 0;
    }
    if (zmq_send (handle, self->encoded, (size_t) size, body? ZMQ_SNDMORE: 0) < 0)
        return -1;
    if (body) {
        //  A body above the inline limit came in a frame of its own
        assert (offset == 0 && body_size == zmq_msg_size (body));
        zmq_msg_t copy;
        zmq_msg_init (&copy);
        //  Large bodies are reference-counted by libzmq: no copy of the bytes
        zmq_msg_copy (&copy, body);
        if (zmq_msg_send (&copy, handle, 0) < 0) {
            zmq_msg_close (&copy);
            return -1;
        }
    }
    return 0;
}

static void s_spend_record (router_t *self, const call_t *call, const char *call_id,
                            const zg_msg_reply_t *end);

static void
s_send_error (router_t *self, frontend_t *frontend, const char *call_id, int status,
              const char *err_type, const char *param, uint32_t flags, const char *format, ...)
    __attribute__ ((format (printf, 8, 9)));

static void
s_send_error (router_t *self, frontend_t *frontend, const char *call_id, int status,
              const char *err_type, const char *param, uint32_t flags, const char *format, ...)
{
    zg_msg_t *out = &self->out;
    zg_msg_reset (out, ZG_MSG_ERROR);
    ZG_MSG_SET (out->call_id, call_id);
    out->status = (uint16_t) status;
    out->flags = flags;
    ZG_MSG_SET (out->err_type, err_type);
    ZG_MSG_SET (out->param, param? param: "");
    va_list args;
    va_start (args, format);
    vsnprintf (out->message, sizeof (out->message), format, args);
    va_end (args);
    zg_debug ("router: call %s: ERROR %d %s: %s", call_id, status, err_type, out->message);
    if (!self->spend_skip) {
        zg_msg_reply_t end = {
            .type = ZG_MSG_ERROR,
            .status = out->status,
            .err_type = zg_msg_text (out->err_type, sizeof out->err_type),
            .message = zg_msg_text (out->message, sizeof out->message)
        };
        s_spend_record (self, s_call_lookup (self, call_id), call_id, &end);
    }
    if (s_send (self, self->frontend_handle, frontend->identity, out, NULL, 0, 0))
        zg_debug ("router: call %s: cannot reach its frontend: %s", call_id,
                  zmq_strerror (zmq_errno ()));
}

static void
s_send_simple (router_t *self, void *handle, zframe_t *identity, int type, const char *call_id)
{
    zg_msg_t *out = &self->out;
    zg_msg_reset (out, type);
    if (call_id)
        ZG_MSG_SET (out->call_id, call_id);
    if (type == ZG_MSG_HEARTBEAT) {
        ZG_MSG_SET (out->name, "router");
        out->pid = self->pid;
    }
    if (s_send (self, handle, identity, out, NULL, 0, 0))
        zg_debug ("router: cannot send %s: %s", zg_msg_type_name (type),
                  zmq_strerror (zmq_errno ()));
}

//  DISCONNECT to a peer we only know by the identity of what it sent
static void
s_send_disconnect (router_t *self, const zmq_msg_t *identity)
{
    zframe_t *frame = zframe_new (zmq_msg_data ((zmq_msg_t *) identity),
                                  zmq_msg_size ((zmq_msg_t *) identity));
    if (!frame)
        return;
    s_send_simple (self, self->backend_handle, frame, ZG_MSG_DISCONNECT, NULL);
    zframe_destroy (&frame);
}

//  ---------------------------------------------------------------------
//  Spend records: one per call that reached the router, whatever its end

static uint64_t
s_wall_us (void)
{
    struct timespec now;
    clock_gettime (CLOCK_REALTIME, &now);
    return (uint64_t) now.tv_sec * 1000000 + (uint64_t) now.tv_nsec / 1000;
}

//  Sends what the window allows, in runs (zg_msg.h): the records' bytes as
//  the outbox holds them, back to back. A refused send leaves a hole after
//  it, so everything unacked goes again from the oldest, later.
static void
s_spend_flush (router_t *self)
{
    if (!self->outbox)
        return;
    self->spend_waiting = 0;
    self->spend_send_at = 0;
    const uint8_t *data;
    size_t size, count, in_flight;
    while ((in_flight = zg_outbox_in_flight (self->outbox)) < SPEND_WINDOW
       &&  zg_outbox_next_run (self->outbox, SPEND_WINDOW - in_flight, &data, &size, &count)) {
        self->sent |= SOCKET_SPEND;
        if (zmq_send (self->spend_handle, data, size, ZMQ_DONTWAIT) < 0) {
            zg_outbox_rewind (self->outbox);
            return;
        }
    }
}

//  A HEARTBEAT first tells the spend actor that what follows starts again
//  from the oldest unacked record
static void
s_spend_resend (router_t *self, int64_t now)
{
    zg_msg_t *out = &self->out;
    zg_msg_reset (out, ZG_MSG_HEARTBEAT);
    ZG_MSG_SET (out->name, "router");
    out->pid = self->pid;
    self->sent |= SOCKET_SPEND;
    if (zg_msg_send (out, self->spend_handle))
        zg_debug ("router: cannot reach the spend actor: %s", zmq_strerror (zmq_errno ()));
    zg_outbox_rewind (self->outbox);
    self->spend_heard = now;
    s_spend_flush (self);
}

//  end: the END, final HEAD or ERROR that ended the call (from the
//  worker, or made here), or NULL for a cancelled call. The record is
//  encoded straight from the strings where they are (the call, its
//  deployment, the reply's frame) into the outbox; each is cut as
//  ZG_MSG_SET would cut it into a zg_msg_t's field, so the bytes are those
//  of the zg_msg_t the record once was.
static void
s_spend_record (router_t *self, const call_t *call, const char *call_id,
                const zg_msg_reply_t *end)
{
    if (!self->outbox)
        return;
    zg_msg_spend_t record;
    memset (&record, 0, sizeof record);
    record.call_id = zg_msg_text (call_id, ZG_CALL_ID_MAX + 1);
    uint64_t now_us = s_wall_us ();
    //  A virtual key's calls are its own; the master key's (and an open
    //  gateway's) go to the master key's row, as they always have
    const char *key_hash = call ? call->key_hash : self->in.key_hash;
    if (key_hash [0]) {
        record.key_hash = zg_msg_text (key_hash, ZG_KEY_HASH_MAX + 1);
        record.user_id = zg_msg_text (call ? call->user_id : self->in.user_id, ZG_NAME_MAX + 1);
        record.team_id = zg_msg_text (call ? call->team_id : self->in.team_id, ZG_NAME_MAX + 1);
    }
    else
        record.key_hash = zg_msg_text (self->key_hash, ZG_KEY_HASH_MAX + 1);
    if (call) {
        record.model = zg_msg_text (call->group->name, ZG_NAME_MAX + 1);
        record.route = call->route;
        record.start_us = call->started_us;
        if (call->dispatched_at) {
            const zg_deployment_wire_t *wire =
                &call->group->models->wire [call->group->indexes [call->member]];
            record.deployment_id = zg_msg_text (wire->id, ZG_NAME_MAX + 1);
            record.api_base = zg_msg_text (wire->api_base, ZG_URL_MAX + 1);
        }
    }
    else {
        //  Refused before it became a call: the REQUEST being handled
        record.model = zg_msg_text (self->in.model, ZG_NAME_MAX + 1);
        record.route = self->in.route;
        record.start_us = now_us;
    }
    if (record.route < ZG_ROUTE_CHAT || record.route > ZG_ROUTE_EMBEDDINGS)
        record.route = ZG_ROUTE_CHAT;
    if (end && (end->type == ZG_MSG_END || end->type == ZG_MSG_HEAD)) {
        record.status = end->status;
        record.prompt_tokens = end->prompt_tokens;
        record.completion_tokens = end->completion_tokens;
        record.total_tokens = end->total_tokens;
        record.cost = isfinite (end->cost) && end->cost > 0? end->cost: 0;
        record.ttfb_us = end->ttfb_us;
        if (end->deployment_id.length)
            record.deployment_id = end->deployment_id;
    }
    else
    if (end) {
        record.status = end->status;
        record.err_type = end->err_type;
        record.message = end->message;
        if (end->deployment_id.length)
            record.deployment_id = end->deployment_id;
        if (end->api_base.length)
            record.api_base = end->api_base;
    }
    else {
        record.status = 499;
        record.err_type = zg_msg_text ("cancelled", ZG_NAME_MAX + 1);
        record.message = zg_msg_text ("the client went away before the answer ended",
                                      ZG_MESSAGE_MAX + 1);
    }
    record.duration_us = now_us > record.start_us? now_us - record.start_us: 0;
    if (zg_outbox_push (self->outbox, &record)) {
        if (!self->spend_push_failed)
            zg_error ("router: cannot keep the spend record of call %s: it is lost (%s)",
                      call_id, strerror (errno));
        self->spend_push_failed = true;
    }
    else
        self->spend_push_failed = false;
    if (++self->spend_waiting >= SPEND_SEND_RECORDS)
        s_spend_flush (self);
    else
    if (!self->spend_send_at)
        self->spend_send_at = zclock_mono () + SPEND_SEND_MS;
}

//  Returns true when the socket was read dry
static bool
s_on_spend_message (router_t *self, int64_t now)
{
    zg_msg_t *in = &self->record;
    bool dry = false;
    for (int count = 0; count < DRAIN_BATCH; count++) {
        if (!(zsock_events (self->spend) & ZMQ_POLLIN)) {
            self->sent &= ~SOCKET_SPEND;
            dry = true;
            break;
        }
        int rc = zg_msg_recv (in, self->spend_handle);
        if (rc == ZG_MSG_ERR_IO)
            break;
        if (rc != ZG_MSG_OK) {
            zg_warning ("router: malformed message from the spend actor: dropped");
            continue;
        }
        self->spend_heard = now;
        if (in->type == ZG_MSG_SPEND_ACK)
            zg_outbox_ack (self->outbox, in->seq);
        else
        if (in->type == ZG_MSG_DISCONNECT) {
            zg_debug ("router: the spend actor does not know us: sending from the oldest");
            s_spend_resend (self, now);
        }
        zg_msg_reset (in, 0);
        self->handled++;
    }
    s_spend_flush (self);
    return dry;
}

static void
s_spend_tick (router_t *self, int64_t now)
{
    if (!self->outbox)
        return;
    if (zg_outbox_pending (self->outbox) == 0)
        self->spend_heard = now;
    else
    if (now - self->spend_heard > LIVENESS * self->heartbeat_ms) {
        zg_debug ("router: the spend actor is silent; %zu records unacked",
                  zg_outbox_pending (self->outbox));
        s_spend_resend (self, now);
    }
    else
        s_spend_flush (self);
}

//  The spend actor's endpoint comes from the environment (the supervisor
//  sets it when a database is configured); the spill file lives under
//  ZGATE_SPILL_DIR
static int
s_spend_start (router_t *self)
{
    const char *endpoint = getenv ("ZGATE_SPEND_ENDPOINT");
    if (!endpoint || !*endpoint)
        return 0;
    const char *master_key = self->config->master_key;
    if (master_key && *master_key)
        zg_sha256_hex (master_key, strlen (master_key), self->key_hash);
    const char *spill_dir = getenv ("ZGATE_SPILL_DIR");
    char path [4096];
    if (spill_dir && *spill_dir) {
        mkdir (spill_dir, 0700);
        snprintf (path, sizeof path, "%s/spend.spill", spill_dir);
    }
    else
        snprintf (path, sizeof path, "/tmp/zgate-spend-%u.spill", (unsigned) getuid ());
    self->outbox = zg_outbox_new (SPEND_RING, path);
    if (!self->outbox) {
        //  Serving matters more than spilling: records then live in memory only
        zg_error ("router: cannot open the spend spill file %s: %s; keeping at most %d "
                  "spend records, in memory only", path, strerror (errno), SPEND_RING);
        self->outbox = zg_outbox_new (SPEND_RING, NULL);
        if (!self->outbox)
            return -1;
    }
    self->spend = zsock_new (ZMQ_DEALER);
    if (!self->spend)
        return -1;
    zsock_set_sndhwm (self->spend, SOCKET_HWM);
    zsock_set_rcvhwm (self->spend, SOCKET_HWM);
    zsock_set_linger (self->spend, 0);
    if (zsock_connect (self->spend, "%s", endpoint) < 0) {
        zg_error ("router: cannot connect to the spend actor at %s: %s", endpoint,
                  zmq_strerror (zmq_errno ()));
        return -1;
    }
    self->spend_handle = zsock_resolve (self->spend);
    if (zg_outbox_pending (self->outbox))
        zg_info ("router: %zu spend records from the last run to send first",
                 zg_outbox_pending (self->outbox));
    s_spend_resend (self, zclock_mono ());
    return 0;
}

//  On stop: wait, bounded, for the spend actor to ack what is held
static void
s_spend_drain (router_t *self)
{
    if (!self->outbox || zg_outbox_pending (self->outbox) == 0)
        return;
    s_spend_flush (self);
    const char *wait_env = getenv ("ZGATE_SPEND_STOP_WAIT_MS");
    int64_t wait_ms = wait_env && atol (wait_env) >= 0? atol (wait_env): SPEND_STOP_WAIT_MS;
    int64_t give_up = zclock_mono () + wait_ms;
    zmq_pollitem_t item = { self->spend_handle, 0, ZMQ_POLLIN, 0 };
    while (zg_outbox_pending (self->outbox)) {
        int64_t now = zclock_mono ();
        if (now >= give_up)
            break;
        int64_t wait = give_up - now < self->heartbeat_ms? give_up - now: self->heartbeat_ms;
        if (zmq_poll (&item, 1, (long) wait) < 0 && zmq_errno () != EINTR)
            break;
        now = zclock_mono ();
        if (item.revents & ZMQ_POLLIN)
            s_on_spend_message (self, now);
        s_spend_tick (self, now);
    }
}

//  ---------------------------------------------------------------------
//  Dispatching

static uint32_t
s_deadline_ms (router_t *self, const call_t *call)
{
    uint64_t limit = call->timeout_ms;
    const zg_deployment_wire_t *wire =
        &call->group->models->wire [call->group->indexes [call->member]];
    if (wire->timeout_ms > limit)
        limit = wire->timeout_ms;
    if (limit == 0)
        limit = (uint64_t) (self->config->request_timeout_s * 1000);
    limit += DEADLINE_GRACE_MS;
    return limit > UINT32_MAX? UINT32_MAX: (uint32_t) limit;
}

//  Sends a call to a worker. Returns 0, or -1 with the call untouched if
//  the worker cannot take it (errno from libzmq says why).
static int
s_dispatch (router_t *self, call_t *call, worker_t *worker, int64_t now)
{
    group_t *group = call->group;
    int member = zg_balancer_pick (group->balancer, group->members, group->count, NULL,
                                   &self->rng);
    if (member < 0)
        member = 0;             //  no exclusions are passed: cannot happen
    size_t deployment = group->indexes [member];

    zg_msg_t *out = &self->out;
    zg_msg_reset (out, ZG_MSG_DISPATCH);
    memcpy (out->call_id, call->call_id, sizeof (out->call_id));
    out->route = call->route;
    ZG_MSG_SET (out->model, group->name);
    out->flags = call->flags;
    out->timeout_ms = call->timeout_ms;
    out->attempt = call->attempt;
    out->deployment = group->models->wire [deployment];
    out->model_span = call->model_span;
    out->options_span = call->options_span;
    if (s_send (self, self->backend_handle, worker->identity, out,
                call->has_body? &call->body: NULL, call->body_offset, call->body_size))
        return -1;

    call->member = (size_t) member;
    call->state = CALL_DISPATCHED;
    call->worker = worker;
    call->dispatched_at = now;
    s_list_append (&worker->calls, call, BY_OWNER);
    s_deadline_set (self, call, now + s_deadline_ms (self, call));
    worker->credit--;
    worker->last_pick = ++self->pick_seq;
    s_worker_sift (self, worker->heap_index);
    zg_debug ("router: call %s (%s) -> worker %s, deployment %s, attempt %d",
              call->call_id, group->name, worker->name, group->models->wire [deployment].id,
              call->attempt);
    return 0;
}

static void s_worker_expire (router_t *self, worker_t *worker, const char *why, int64_t now);

//  Hands queued calls to workers while any has credit
static void
s_pump (router_t *self, int64_t now)
{
    while (self->queue.head) {
        worker_t *worker = s_worker_with_credit (self);
        if (!worker)
            break;
        call_t *call = self->queue.head;
        s_list_remove (&self->queue, call, BY_OWNER);
        s_deadline_remove (self, call);
        call->state = CALL_DISPATCHED;      //  out of the queue, for s_worker_expire
        if (s_dispatch (self, call, worker, now) == 0)
            continue;
        int error = zmq_errno ();
        call->state = CALL_QUEUED;
        s_list_prepend (&self->queue, call, BY_OWNER);
        s_deadline_set (self, call, now + self->config->queue_timeout_ms);
        if (error == EHOSTUNREACH)
            //  Its connection is gone: what it held will not be answered
            s_worker_expire (self, worker, "its connection closed", now);
        else {
            //  Its pipe is full: it is not reading; try again next turn
            zg_warning ("router: worker %s is not reading its messages: %s", worker->name,
                        zmq_strerror (error));
            break;
        }
    }
}

//  ---------------------------------------------------------------------
//  Expiry

//  A worker is gone: calls it had not started answering go to the head of
//  the queue (attempt + 1); those that had started end with an in-stream
//  error, since bytes already reached the client.
static void
s_worker_expire (router_t *self, worker_t *worker, const char *why, int64_t now)
{
    zg_info ("router: worker %s (pid %u) expired: %s; %zu call(s) in flight",
             worker->name, worker->pid, why, worker->calls.size);
    //  From the tail, so that prepending keeps the calls in their order
    while (worker->calls.tail) {
        call_t *call = worker->calls.tail;
        s_list_remove (&worker->calls, call, BY_OWNER);
        call->worker = NULL;
        if (call->state == CALL_STARTED) {
            s_send_error (self, call->frontend, call->call_id, 502, "api_connection_error",
                          NULL, ZG_FLAG_STARTED, "worker %s stopped during the response",
                          worker->name);
            s_call_destroy (self, call);
        }
        else
        if (call->attempt >= MAX_REDISPATCH || !call->has_body) {
            s_send_error (self, call->frontend, call->call_id, 502, "api_connection_error",
                          NULL, 0, "worker %s stopped before answering, after %d attempts",
                          worker->name, call->attempt + 1);
            s_call_destroy (self, call);
        }
        else {
            call->attempt++;
            call->state = CALL_QUEUED;
            s_list_prepend (&self->queue, call, BY_OWNER);
            s_deadline_set (self, call, now + self->config->queue_timeout_ms);
            zg_debug ("router: call %s queued again (attempt %d)", call->call_id,
                      call->attempt);
        }
    }
    s_worker_destroy (self, worker);
}

//  A retiring worker that holds no call is done: forget it
static void
s_worker_retire_check (router_t *self, worker_t *worker)
{
    if (!worker || !worker->retiring || worker->calls.size)
        return;
    zg_info ("router: worker %s (pid %u) retired", worker->name, worker->pid);
    s_worker_destroy (self, worker);
}

//  Cancels a call at its worker (if any) and forgets it
static void
s_call_cancel (router_t *self, call_t *call)
{
    worker_t *worker = call->state != CALL_QUEUED? call->worker: NULL;
    if (worker)
        //  The worker returns the credit through CREDIT when it lets go
        s_send_simple (self, self->backend_handle, worker->identity, ZG_MSG_CANCEL,
                       call->call_id);
    s_call_destroy (self, call);
    s_worker_retire_check (self, worker);
}

static void
s_frontend_expire (router_t *self, frontend_t *frontend)
{
    if (frontend->calls.size)
        zg_info ("router: frontend %s went silent: cancelling %zu call(s)", frontend->label,
                 frontend->calls.size);
    while (frontend->calls.head) {
        s_spend_record (self, frontend->calls.head, frontend->calls.head->call_id, NULL);
        s_call_cancel (self, frontend->calls.head);
    }
    if (frontend->prev)
        frontend->prev->next = frontend->next;
    else
        self->frontend_list = frontend->next;
    if (frontend->next)
        frontend->next->prev = frontend->prev;
    zhashx_delete (self->frontends, frontend->key);
    zframe_destroy (&frontend->identity);
    free (frontend->key);
    free (frontend);
}

static void
s_check_deadlines (router_t *self, int64_t now)
{
    while (self->deadline_count && self->deadlines [0]->deadline <= now) {
        call_t *call = self->deadlines [0];
        if (call->state == CALL_QUEUED) {
            s_send_error (self, call->frontend, call->call_id, 503, "service_unavailable",
                          NULL, 0,
                          "No worker available to take the request within %d ms. Retry shortly.",
                          self->config->queue_timeout_ms);
            s_call_destroy (self, call);
        }
        else {
            zg_warning ("router: call %s: no answer from worker %s in time: cancelled",
                        call->call_id, call->worker? call->worker->name: "?");
            zg_balancer_feedback (call->group->balancer, call->member, ZG_OUTCOME_TIMEOUT,
                                  (uint64_t) (now - call->dispatched_at) * 1000);
            s_send_error (self, call->frontend, call->call_id, 504, "timeout", NULL,
                          call->state == CALL_STARTED? ZG_FLAG_STARTED: 0,
                          "litellm.Timeout: no answer within %u ms",
                          s_deadline_ms (self, call) - DEADLINE_GRACE_MS);
            s_call_cancel (self, call);
        }
    }
}

//  Heartbeats out, silent peers out
static void
s_tick (router_t *self, int64_t now)
{
    int64_t silence = LIVENESS * self->heartbeat_ms;
    size_t index = 0;
    while (index < self->worker_count) {
        worker_t *worker = self->worker_heap [index];
        if (now - worker->last_heard > silence) {
            char why [64];
            snprintf (why, sizeof (why), "silent for %d heartbeats", LIVENESS);
            s_worker_expire (self, worker, why, now);
            index = 0;          //  the heap moved
        }
        else
            index++;
    }
    for (index = 0; index < self->worker_count; index++)
        s_send_simple (self, self->backend_handle, self->worker_heap [index]->identity,
                       ZG_MSG_HEARTBEAT, NULL);
    s_spend_tick (self, now);

    frontend_t *frontend = self->frontend_list;
    while (frontend) {
        frontend_t *next = frontend->next;
        if (now - frontend->last_heard > silence)
            s_frontend_expire (self, frontend);
        frontend = next;
    }
    s_pump (self, now);
}

//  ---------------------------------------------------------------------
//  Receiving

//  Reads one message without blocking. Returns ZG_MSG_OK, ZG_MSG_ERR_IO
//  when none is waiting, or ZG_MSG_ERR_MALFORMED when its frames are not
//  identity + header [+ payload].
static int
s_recv_raw (void *handle, raw_t *raw)
{
    raw->has_payload = false;
    raw->inline_payload = NULL;
    raw->inline_size = 0;
    if (zmq_msg_recv (&raw->identity, handle, ZMQ_DONTWAIT) < 0)
        return ZG_MSG_ERR_IO;
    if (!zmq_msg_more (&raw->identity))
        return ZG_MSG_ERR_MALFORMED;
    //  The rest of a multipart message is already here
    if (zmq_msg_recv (&raw->header, handle, 0) < 0)
        return ZG_MSG_ERR_IO;
    if (!zmq_msg_more (&raw->header))
        return ZG_MSG_OK;
    if (zmq_msg_recv (&raw->payload, handle, 0) < 0)
        return ZG_MSG_ERR_IO;
    if (!zmq_msg_more (&raw->payload)) {
        raw->has_payload = true;
        return ZG_MSG_OK;
    }
    while (zmq_msg_more (&raw->payload))
        if (zmq_msg_recv (&raw->payload, handle, 0) < 0)
            break;
    return ZG_MSG_ERR_MALFORMED;
}

static int
s_decode (router_t *self)
{
    raw_t *raw = &self->raw;
    int rc = zg_msg_decode_frame (&self->in, (const uint8_t *) zmq_msg_data (&raw->header),
                                  zmq_msg_size (&raw->header), &raw->inline_payload,
                                  &raw->inline_size);
    if (rc != ZG_MSG_OK)
        return rc;
    //  As zg_msg_recv does: one payload at most, only where the protocol
    //  has one, and a request's spans inside it
    if (raw->inline_payload && raw->has_payload)
        return ZG_MSG_ERR_MALFORMED;
    if (raw->inline_payload)
        return zg_msg_payload_check (&self->in, true, raw->inline_size);
    return zg_msg_payload_check (&self->in, raw->has_payload,
                                 raw->has_payload? zmq_msg_size (&raw->payload): 0);
}

static void
s_on_request (router_t *self, frontend_t *frontend, int64_t now)
{
    zg_msg_t *in = &self->in;
    if (!self->raw.has_payload && !self->raw.inline_payload) {
        zg_warning ("router: REQUEST %s without a body: refused", in->call_id);
        s_send_error (self, frontend, in->call_id, 400, "bad_request_error", NULL, 0,
                      "the request reached the router without a body");
        return;
    }
    group_t *group;
    if (in->flags & ZG_FLAG_PIN_DEPLOYMENT) {
        group = (group_t *) zhashx_lookup (self->models->pinned, in->model);
        if (!group) {
            s_send_error (self, frontend, in->call_id, 400, "bad_request_error", "model", 0,
                          "No deployment with id %s", in->model);
            return;
        }
    }
    else
        group = (group_t *) zhashx_lookup (self->models->groups, in->model);
    if (!group) {
        s_send_error (self, frontend, in->call_id, 400, "bad_request_error", "model", 0,
                      "%s: Invalid model name passed in model=%s. Call /v1/models to view "
                      "available models for your key.", s_route_path (in->route), in->model);
        return;
    }
    if (s_call_lookup (self, in->call_id)) {
        //  The call in flight under that id will have the record
        self->spend_skip = true;
        s_send_error (self, frontend, in->call_id, 400, "bad_request_error", NULL, 0,
                      "x-litellm-call-id %s is already in use by a request in flight",
                      in->call_id);
        self->spend_skip = false;
        return;
    }
    worker_t *worker = self->queue.size? NULL: s_worker_with_credit (self);
    if (!worker && self->queue.size >= (size_t) (self->config->max_queue > 0?
                                                 self->config->max_queue: 0)) {
        s_send_error (self, frontend, in->call_id, 503, "service_unavailable", NULL, 0,
                      "No worker available and %zu requests already waiting. Retry shortly.",
                      self->queue.size);
        return;
    }
    call_t *call = s_call_new (self, in->call_id);
    if (!call) {
        s_send_error (self, frontend, in->call_id, 503, "service_unavailable", NULL, 0,
                      "The router is out of memory. Retry shortly.");
        return;
    }
    call->group = group;
    group->models->refs++;
    call->started_us = s_wall_us ();
    call->route = in->route;
    call->flags = in->flags & ~(uint32_t) ZG_FLAG_PIN_DEPLOYMENT;
    call->timeout_ms = in->timeout_ms;
    call->model_span = in->model_span;
    call->options_span = in->options_span;
    ZG_MSG_SET (call->key_hash, in->key_hash);
    ZG_MSG_SET (call->user_id, in->user_id);
    ZG_MSG_SET (call->team_id, in->team_id);
    call->frontend = frontend;
    s_list_append (&frontend->calls, call, BY_FRONTEND);
    //  The frame the body came in is kept as it is, header and all when
    //  the body came inline
    raw_t *raw = &self->raw;
    if (raw->inline_payload) {
        call->body_offset = (size_t) (raw->inline_payload
                                      - (const uint8_t *) zmq_msg_data (&raw->header));
        call->body_size = raw->inline_size;
        zmq_msg_move (&call->body, &raw->header);
    }
    else {
        call->body_offset = 0;
        call->body_size = zmq_msg_size (&raw->payload);
        zmq_msg_move (&call->body, &raw->payload);
    }
    call->has_body = true;
    raw->has_payload = false;
    raw->inline_payload = NULL;
    raw->inline_size = 0;

    call->state = CALL_QUEUED;
    s_list_append (&self->queue, call, BY_OWNER);
    s_deadline_set (self, call, now + self->config->queue_timeout_ms);
    if (worker)
        s_pump (self, now);
    else
        zg_debug ("router: call %s queued (%zu waiting)", call->call_id, self->queue.size);
}

//  LIST: one DEPLOYMENT per deployment served, then one per database row
//  left out (with why), for GET /health to check them and /models to name
//  them. Never a credential.
static void
s_on_list (router_t *self, frontend_t *frontend)
{
    const models_t *models = self->models;
    const zg_model_list_t *db_list = models->db_list;
    size_t left_out = db_list? db_list->skipped_count: 0;
    size_t count = models->count + left_out;
    if (count > UINT32_MAX)
        count = UINT32_MAX;
    char call_id [ZG_CALL_ID_MAX + 1];
    ZG_MSG_SET (call_id, self->in.call_id);
    zg_msg_t *out = &self->out;
    for (size_t index = 0; index < count || index == 0; index++) {
        zg_msg_reset (out, ZG_MSG_DEPLOYMENT);
        ZG_MSG_SET (out->call_id, call_id);
        out->index = (uint32_t) index;
        out->count = (uint32_t) count;
        if (index < models->count) {
            const zg_deployment_t *deployment = &models->deployments [index];
            ZG_MSG_SET (out->model, deployment->model_name);
            ZG_MSG_SET (out->deployment_id, deployment->id);
            ZG_MSG_SET (out->provider, deployment->provider);
            ZG_MSG_SET (out->upstream_model, deployment->upstream_model);
            ZG_MSG_SET (out->api_base, deployment->api_base);
            ZG_MSG_SET (out->mode, deployment->mode);
        }
        else
        if (index < count) {
            const zg_model_skipped_t *row = &db_list->skipped [index - models->count];
            ZG_MSG_SET (out->model, row->model_name);
            ZG_MSG_SET (out->deployment_id, row->model_id);
            snprintf (out->message, sizeof (out->message),
                      "Not served: the database row cannot be used: %s", row->reason);
        }
        if (s_send (self, self->frontend_handle, frontend->identity, out, NULL, 0, 0)) {
            zg_debug ("router: LIST %s: cannot reach frontend %s: %s", call_id,
                      frontend->label, zmq_strerror (zmq_errno ()));
            break;
        }
    }
}

static void
s_on_frontend_message (router_t *self, int64_t now)
{
    frontend_t *frontend = s_frontend_touch (self, &self->raw.identity, now);
    if (!frontend)
        return;
    if (s_decode (self) != ZG_MSG_OK) {
        zg_warning ("router: malformed message from frontend %s: dropped", frontend->label);
        return;
    }
    zg_msg_t *in = &self->in;
    zg_debug ("router: %s %s from frontend", zg_msg_type_name (in->type), in->call_id);
    switch (in->type) {
        case ZG_MSG_REQUEST:
            s_on_request (self, frontend, now);
            break;
        case ZG_MSG_CANCEL: {
            call_t *call = s_call_lookup (self, in->call_id);
            if (call && call->frontend == frontend) {
                s_spend_record (self, call, call->call_id, NULL);
                s_call_cancel (self, call);
            }
            break;
        }
        case ZG_MSG_HEARTBEAT:
            s_send_simple (self, self->frontend_handle, frontend->identity, ZG_MSG_HEARTBEAT,
                           NULL);
            break;
        case ZG_MSG_LIST:
            s_on_list (self, frontend);
            break;
        default:
            zg_warning ("router: unexpected %s from frontend %s: dropped",
                        zg_msg_type_name (in->type), frontend->label);
            break;
    }
}

//  HEAD / CHUNK / END / ERROR from the worker that holds the call: the
//  frames go to the frontend as they came
static void
s_on_reply (router_t *self, worker_t *worker, int type, const char *call_id, uint16_t status,
            uint32_t flags, int64_t now)
{
    call_t *call = s_call_lookup (self, call_id);
    if (!call || call->worker != worker) {
        zg_debug ("router: %s for call %s that is not in flight on worker %s: dropped",
                  zg_msg_type_name (type), call_id, worker->name);
        return;
    }
    raw_t *raw = &self->raw;
    //  The spend record needs the usage: read in place before the frames
    //  go (the record is encoded from the frame's bytes), every field
    //  checked as a decode would, nothing copied. A final HEAD (the whole
    //  answer) ends the call as END does
    bool ends = type == ZG_MSG_END || type == ZG_MSG_ERROR
             || (type == ZG_MSG_HEAD && (flags & ZG_FLAG_FINAL));
    zg_msg_reply_t reply;
    bool decoded = ends && self->outbox
                && zg_msg_read_reply (&reply, (const uint8_t *) zmq_msg_data (&raw->header),
                                      zmq_msg_size (&raw->header)) == ZG_MSG_OK
                && reply.type == type;
    //  The record is made before the header frame goes: zmq_msg_send
    //  leaves the message empty, and the reply's views point into it
    if (ends && self->outbox) {
        if (!decoded) {
            //  Relayed as it came; the record still says how it ended
            memset (&reply, 0, sizeof reply);
            reply.type = ZG_MSG_ERROR;
            reply.status = status;
            reply.err_type = zg_msg_text ("internal_server_error", ZG_NAME_MAX + 1);
        }
        s_spend_record (self, call, call->call_id, &reply);
    }
    void *handle = self->frontend_handle;
    self->sent |= SOCKET_FRONTEND;
    bool delivered =
        zmq_send (handle, zframe_data (call->frontend->identity),
                  zframe_size (call->frontend->identity), ZMQ_SNDMORE | ZMQ_DONTWAIT) >= 0
        && zmq_msg_send (&raw->header, handle, raw->has_payload? ZMQ_SNDMORE: 0) >= 0
        && (!raw->has_payload || zmq_msg_send (&raw->payload, handle, 0) >= 0);

    if (ends) {
        zg_balancer_feedback (call->group->balancer, call->member,
                              type != ZG_MSG_ERROR && status < 400?
                              ZG_OUTCOME_SUCCESS: ZG_OUTCOME_FAILURE,
                              (uint64_t) (now - call->dispatched_at) * 1000);
        zg_debug ("router: call %s ended (%s %u)", call->call_id,
                  zg_msg_type_name (type), status);
        s_call_destroy (self, call);
        s_worker_retire_check (self, worker);
        return;
    }
    if (type == ZG_MSG_HEAD) {
        call->state = CALL_STARTED;
        //  Nothing will dispatch it again: the body is no longer needed
        zmq_msg_close (&call->body);
        zmq_msg_init (&call->body);
        call->has_body = false;
    }
    if (!delivered) {
        zg_warning ("router: call %s: cannot reach its frontend (%s): cancelled",
                    call->call_id, zmq_strerror (zmq_errno ()));
        s_spend_record (self, call, call->call_id, NULL);
        s_call_cancel (self, call);
    }
}

static void
s_on_worker_message (router_t *self, int64_t now)
{
    worker_t *worker = s_worker_lookup (self, &self->raw.identity);
    if (worker)
        worker->last_heard = now;
    //  Replies, the bulk of the traffic, are relayed as they came: the
    //  router reads only the type, the call id and the status, and the
    //  frontend decodes them in full
    int type;
    char call_id [ZG_CALL_ID_MAX + 1];
    uint16_t status;
    uint32_t flags;
    const uint8_t *header = (const uint8_t *) zmq_msg_data (&self->raw.header);
    if (worker
    &&  zg_msg_peek (header, zmq_msg_size (&self->raw.header), &type, call_id, &status,
                     &flags) == ZG_MSG_OK
    &&  type != ZG_MSG_CANCEL) {
        if (self->raw.has_payload && (type == ZG_MSG_END || type == ZG_MSG_ERROR)) {
            zg_warning ("router: malformed message from worker %s: dropped", worker->name);
            return;
        }
        zg_debug ("router: %s %s from worker %s", zg_msg_type_name (type), call_id,
                  worker->name);
        s_on_reply (self, worker, type, call_id, status, flags, now);
        return;
    }
    if (s_decode (self) != ZG_MSG_OK) {
        zg_warning ("router: malformed message from worker %s: dropped",
                    worker? worker->name: "(unknown)");
        return;
    }
    zg_msg_t *in = &self->in;
    zg_debug ("router: %s %s from worker %s", zg_msg_type_name (in->type), in->call_id,
              worker? worker->name: "(unknown)");
    if (in->type == ZG_MSG_READY) {
        bool joined = !worker;
        if (!worker) {
            worker = s_worker_new (self, &self->raw.identity);
            if (!worker)
                return;
            worker->last_heard = now;
        }
        ZG_MSG_SET (worker->name, in->name);
        worker->pid = in->pid;
        worker->capacity = in->capacity;
        //  Calls it still holds for us come back through CREDIT
        worker->credit = in->capacity > worker->calls.size && !worker->retiring?
                         in->capacity - (uint32_t) worker->calls.size: 0;
        s_worker_sift (self, worker->heap_index);
        zg_info ("router: worker %s (pid %u) %s, capacity %u", worker->name, worker->pid,
                 joined? "joined": "registered again", worker->capacity);
        //  Answered at once: the worker knows from this that it is
        //  registered (a replacement in a recycle waits for it)
        s_send_simple (self, self->backend_handle, worker->identity, ZG_MSG_HEARTBEAT, NULL);
        s_pump (self, now);
        return;
    }
    if (!worker) {
        zg_debug ("router: %s from an unknown worker: DISCONNECT", zg_msg_type_name (in->type));
        s_send_disconnect (self, &self->raw.identity);
        return;
    }
    switch (in->type) {
        case ZG_MSG_HEARTBEAT:
            break;
        case ZG_MSG_RETIRE: {
            if (!worker->retiring)
                zg_info ("router: worker %s (pid %u) retiring; %zu call(s) in flight",
                         worker->name, worker->pid, worker->calls.size);
            worker->retiring = true;
            worker->credit = 0;
            s_worker_sift (self, worker->heap_index);
            zg_msg_t *out = &self->out;
            zg_msg_reset (out, ZG_MSG_RETIRE);
            ZG_MSG_SET (out->name, "router");
            out->pid = self->pid;
            if (s_send (self, self->backend_handle, worker->identity, out, NULL, 0, 0))
                zg_debug ("router: cannot answer RETIRE of worker %s: %s", worker->name,
                          zmq_strerror (zmq_errno ()));
            s_worker_retire_check (self, worker);
            break;
        }
        case ZG_MSG_CREDIT: {
            if (worker->retiring)
                break;          //  it takes no new calls
            uint64_t credit = (uint64_t) worker->credit + in->credit;
            worker->credit = credit > worker->capacity? worker->capacity: (uint32_t) credit;
            s_worker_sift (self, worker->heap_index);
            zg_debug ("router: worker %s: credit +%u = %u", worker->name, in->credit,
                      worker->credit);
            s_pump (self, now);
            break;
        }
        case ZG_MSG_HEAD:
        case ZG_MSG_CHUNK:
        case ZG_MSG_END:
        case ZG_MSG_ERROR:
            s_on_reply (self, worker, self->in.type, self->in.call_id, self->in.status,
                        self->in.flags, now);
            break;
        default:
            zg_warning ("router: unexpected %s from worker %s: dropped",
                        zg_msg_type_name (in->type), worker->name);
            break;
    }
}

//  Handles what is waiting on one socket, at most DRAIN_BATCH messages.
//  Returns true when the socket was read dry: its ZMQ_FD signals the next
//  message then, unless a send takes the signal first.
static bool
s_drain (router_t *self, void *handle, bool from_workers)
{
    for (int count = 0; count < DRAIN_BATCH; count++) {
        int rc = s_recv_raw (handle, &self->raw);
        if (rc == ZG_MSG_ERR_IO) {
            if (zmq_errno () == ETERM)
                self->terminated = true;
            self->sent &= from_workers? ~SOCKET_BACKEND: ~SOCKET_FRONTEND;
            return true;
        }
        self->handled++;
        int64_t now = zclock_mono ();
        if (rc == ZG_MSG_ERR_MALFORMED) {
            zg_warning ("router: malformed frames from a %s: dropped",
                        from_workers? "worker": "frontend");
            continue;
        }
        if (from_workers)
            s_on_worker_message (self, now);
        else
            s_on_frontend_message (self, now);
    }
    return false;
}

//  ---------------------------------------------------------------------
//  Set-up and tear-down

static void
s_group_destroy (void **item)
{
    group_t *group = (group_t *) *item;
    if (!group)
        return;
    zg_balancer_destroy (&group->balancer);
    free (group->indexes);
    free (group->members);
    free (group);
    *item = NULL;
}

static uint32_t
s_ms (double seconds)
{
    double ms = seconds * 1000.0;
    if (ms <= 0)
        return 0;
    return ms >= (double) UINT32_MAX? UINT32_MAX: (uint32_t) (ms + 0.5);
}

static void
s_models_release (models_t **models_p)
{
    models_t *models = *models_p;
    *models_p = NULL;
    if (!models || --models->refs > 0)
        return;
    zhashx_destroy (&models->groups);
    zhashx_destroy (&models->pinned);
    free (models->deployments);
    free (models->wire);
    zg_model_list_destroy (&models->db_list);
    free (models);
}

//  Adds deployments[index] to its group, making the group if it is the first
static int
s_models_group (models_t *models, size_t index)
{
    const char *name = models->deployments [index].model_name;
    if (!name)
        return 0;
    group_t *group = (group_t *) zhashx_lookup (models->groups, name);
    if (!group) {
        group = (group_t *) calloc (1, sizeof (group_t));
        if (!group)
            return -1;
        group->name = name;
        group->models = models;
        group->indexes = (size_t *) calloc (models->count, sizeof (size_t));
        group->members = (const zg_deployment_t **) calloc (models->count,
                                                            sizeof (zg_deployment_t *));
        if (!group->indexes || !group->members || zhashx_insert (models->groups, name, group)) {
            void *item = group;
            s_group_destroy (&item);
            return -1;
        }
    }
    group->indexes [group->count] = index;
    group->members [group->count] = &models->deployments [index];
    group->count++;
    return 0;
}

//  The set of the configuration's deployments and the database's (db_list,
//  may be NULL; the set takes it). A database deployment with the id of a
//  configuration one replaces it, as LiteLLM's upsert_deployment does; the
//  configuration's comes back when the row is deleted. NULL if memory runs
//  out (db_list is then freed).
static models_t *
s_models_new (const zg_config_t *config, zg_model_list_t *db_list)
{
    const zg_balancer_strategy_t *strategy =
        zg_balancer_strategy_find (config->routing_strategy);
    if (!strategy)
        strategy = &zg_balancer_shuffle;
    size_t most = config->deployment_count + (db_list? db_list->count: 0);
    models_t *models = (models_t *) calloc (1, sizeof (models_t));
    if (models) {
        models->refs = 1;
        models->db_list = db_list;
        models->deployments = (zg_deployment_t *) calloc (most + 1, sizeof (zg_deployment_t));
        models->wire = (zg_deployment_wire_t *) calloc (most + 1, sizeof (zg_deployment_wire_t));
        models->groups = zhashx_new ();
        models->pinned = zhashx_new ();
    }
    else
        zg_model_list_destroy (&db_list);
    if (!models || !models->deployments || !models->wire || !models->groups
    ||  !models->pinned) {
        s_models_release (&models);
        return NULL;
    }
    zhashx_set_destructor (models->groups, s_group_destroy);
    zhashx_set_destructor (models->pinned, s_group_destroy);
    for (size_t index = 0; index < config->deployment_count; index++) {
        const zg_deployment_t *source = &config->deployments [index];
        if (db_list && source->id && zg_model_list_find (db_list, source->id))
            continue;
        models->deployments [models->count++] = *source;
    }
    for (size_t index = 0; db_list && index < db_list->count; index++)
        models->deployments [models->count++] = db_list->models [index].deployment;

    int rc = 0;
    for (size_t index = 0; index < models->count && rc == 0; index++) {
        const zg_deployment_t *source = &models->deployments [index];
        zg_deployment_wire_t *wire = &models->wire [index];
        ZG_MSG_SET (wire->id, source->id? source->id: "");
        ZG_MSG_SET (wire->provider, source->provider? source->provider: "");
        ZG_MSG_SET (wire->upstream_model, source->upstream_model? source->upstream_model: "");
        ZG_MSG_SET (wire->api_base, source->api_base? source->api_base: "");
        ZG_MSG_SET (wire->api_key, source->api_key? source->api_key: "");
        wire->timeout_ms = s_ms (source->timeout_s);
        wire->stream_timeout_ms = s_ms (source->stream_timeout_s);
        wire->input_cost_per_token = source->input_cost_per_token;
        wire->output_cost_per_token = source->output_cost_per_token;
        rc = s_models_group (models, index);
    }
    //  Balancers once the groups are complete: a strategy may size its
    //  state by the group
    group_t *group = (group_t *) zhashx_first (models->groups);
    while (group && rc == 0) {
        group->balancer = zg_balancer_new (strategy, group->members, group->count);
        if (!group->balancer)
            rc = -1;
        group = (group_t *) zhashx_next (models->groups);
    }
    //  A group of each deployment alone, for calls pinned to it (GET /health)
    for (size_t index = 0; index < models->count && rc == 0; index++) {
        const zg_deployment_t *source = &models->deployments [index];
        if (!source->id || !source->model_name || zhashx_lookup (models->pinned, source->id))
            continue;
        group_t *pinned = (group_t *) calloc (1, sizeof (group_t));
        if (!pinned) {
            rc = -1;
            break;
        }
        pinned->name = source->model_name;
        pinned->models = models;
        pinned->indexes = (size_t *) calloc (1, sizeof (size_t));
        pinned->members = (const zg_deployment_t **) calloc (1, sizeof (zg_deployment_t *));
        if (pinned->indexes && pinned->members) {
            pinned->count = 1;
            pinned->indexes [0] = index;
            pinned->members [0] = source;
            pinned->balancer = zg_balancer_new (strategy, pinned->members, 1);
        }
        if (!pinned->balancer || zhashx_insert (models->pinned, source->id, pinned)) {
            void *item = pinned;
            s_group_destroy (&item);
            rc = -1;
        }
    }
    if (rc)
        s_models_release (&models);
    return models;
}

//  A new list from the database: routed with from the next call on
static void
s_on_models (router_t *self)
{
    zg_model_list_t *list = zg_model_loader_take (self->loader);
    if (!list)
        return;
    size_t from_db = list->count;
    models_t *models = s_models_new (self->config, list);
    if (!models) {
        zg_error ("router: out of memory while loading the database's deployments; "
                  "keeping the ones served");
        return;
    }
    s_models_release (&self->models);
    self->models = models;
    zg_info ("router: serving %zu model group(s), %zu deployment(s) from the database",
             zhashx_size (models->groups), from_db);
}

static void
s_router_destroy (router_t *self)
{
    while (self->frontend_list)
        s_frontend_expire (self, self->frontend_list);
    if (self->outbox) {
        s_spend_drain (self);
        size_t left = zg_outbox_pending (self->outbox);
        if (zg_outbox_save (self->outbox))
            zg_error ("router: cannot save %zu unacked spend records: they are lost", left);
        else
        if (left)
            zg_warning ("router: %zu spend records not acked; saved for the next start", left);
        zg_outbox_destroy (&self->outbox);
    }
    zsock_destroy (&self->spend);
    zg_msg_reset (&self->record, 0);
    //  Calls still queued belong to no worker: forget them
    while (self->queue.head)
        s_call_destroy (self, self->queue.head);
    while (self->worker_count) {
        worker_t *worker = self->worker_heap [0];
        while (worker->calls.head)
            s_call_destroy (self, worker->calls.head);
        s_worker_destroy (self, worker);
    }
    s_models_release (&self->models);
    zg_model_loader_destroy (&self->loader);
    zhashx_destroy (&self->workers);
    zhashx_destroy (&self->frontends);
    free (self->worker_heap);
    free (self->buckets);
    free (self->deadlines);
    for (size_t index = 0; index < self->block_count; index++)
        free (self->blocks [index]);
    free (self->blocks);
    zmq_msg_close (&self->raw.identity);
    zmq_msg_close (&self->raw.header);
    zmq_msg_close (&self->raw.payload);
    zg_msg_reset (&self->in, 0);
    zg_msg_reset (&self->out, 0);
    zsock_destroy (&self->frontend);
    zsock_destroy (&self->backend);
    if (self->epoll_fd >= 0)
        close (self->epoll_fd);
    self->epoll_fd = -1;
}

//  Puts a socket's ZMQ_FD in the loop's epoll set. The socket is ready at
//  first: whatever came before it was watched has not been signalled.
static int
s_watch (router_t *self, void *handle, unsigned socket)
{
    int fd;
    size_t size = sizeof (fd);
    if (zmq_getsockopt (handle, ZMQ_FD, &fd, &size)) {
        zg_error ("router: cannot watch its sockets: %s", zmq_strerror (zmq_errno ()));
        return -1;
    }
    struct epoll_event event = { .events = EPOLLIN, .data.u32 = socket };
    if (epoll_ctl (self->epoll_fd, EPOLL_CTL_ADD, fd, &event)) {
        zg_error ("router: cannot watch its sockets: %s", strerror (errno));
        return -1;
    }
    self->ready |= socket;
    return 0;
}

//  Binds each endpoint of a comma-separated list on one ROUTER socket
static zsock_t *
s_bind (const char *endpoints)
{
    zsock_t *sock = zsock_new (ZMQ_ROUTER);
    if (!sock) {
        zg_error ("cannot bind %s: %s", endpoints, zmq_strerror (zmq_errno ()));
        return NULL;
    }
    zsock_set_router_mandatory (sock, 1);
    zsock_set_sndhwm (sock, SOCKET_HWM);
    zsock_set_rcvhwm (sock, SOCKET_HWM);
    zsock_set_linger (sock, 0);
    const char *cursor = endpoints;
    while (*cursor) {
        size_t length = strcspn (cursor, ",");
        if (length && zsock_bind (sock, "%.*s", (int) length, cursor) < 0) {
            zg_error ("cannot bind %.*s: %s", (int) length, cursor, zmq_strerror (zmq_errno ()));
            zsock_destroy (&sock);
            return NULL;
        }
        cursor += length;
        if (*cursor == ',')
            cursor++;
    }
    return sock;
}

//  Everything up to the first message: tables, model groups, both
//  endpoints bound. Returns 0, or -1 with the reason logged (the caller
//  still calls s_router_destroy).
static int
s_router_start (router_t *self, const zg_config_t *config, const char *frontend_endpoints,
                const char *worker_endpoint)
{
    memset (self, 0, sizeof (*self));
    self->epoll_fd = -1;
    self->config = config;
    self->pid = (uint32_t) getpid ();
    self->heartbeat_ms = config->heartbeat_ms > 0? config->heartbeat_ms: 1000;
    zg_msg_init (&self->in, 0);
    zg_msg_init (&self->out, 0);
    zg_msg_init (&self->record, 0);
    zmq_msg_init (&self->raw.identity);
    zmq_msg_init (&self->raw.header);
    zmq_msg_init (&self->raw.payload);
    zg_rng_seed (&self->rng, (uint64_t) zclock_time () ^ ((uint64_t) self->pid << 32)
                             ^ (uint64_t) (uintptr_t) self);

    self->workers = zhashx_new ();
    self->frontends = zhashx_new ();
    self->bucket_count = 1024;
    self->buckets = (call_t **) calloc (self->bucket_count, sizeof (call_t *));
    if (!self->workers || !self->frontends || !self->buckets) {
        zg_error ("router: out of memory");
        return -1;
    }
    //  The router may be a thread of the frontend's process: its slot is
    //  its own, and it never looks a name up in the board (not thread-safe)
    self->board = zg_scoreboard_process ();
    self->slot = zg_scoreboard_env_slot ("ZGATE_ROUTER_SLOT");
    zg_scoreboard_claim (self->board, self->slot, "router");
    if (!zg_balancer_strategy_find (config->routing_strategy))
        zg_warning ("router: routing_strategy \"%s\" is not implemented: using %s",
                    config->routing_strategy, zg_balancer_shuffle.name);
    self->models = s_models_new (config, NULL);
    if (!self->models) {
        zg_error ("router: out of memory while loading the model groups");
        return -1;
    }
    self->frontend = s_bind (frontend_endpoints);
    if (!self->frontend)
        return -1;
    self->backend = s_bind (worker_endpoint);
    if (!self->backend)
        return -1;
    self->frontend_handle = zsock_resolve (self->frontend);
    self->backend_handle = zsock_resolve (self->backend);
    if (s_spend_start (self))
        return -1;
    //  NULL unless store_model_in_db asks for the database's deployments
    self->loader = zg_model_loader_new (config);
    self->epoll_fd = epoll_create1 (EPOLL_CLOEXEC);
    if (self->epoll_fd < 0) {
        zg_error ("router: cannot watch its sockets: %s", strerror (errno));
        return -1;
    }
    if (s_watch (self, self->backend_handle, SOCKET_BACKEND)
    ||  s_watch (self, self->frontend_handle, SOCKET_FRONTEND)
    ||  (self->spend_handle && s_watch (self, self->spend_handle, SOCKET_SPEND))
    ||  (self->loader
         && s_watch (self, zsock_resolve (zg_model_loader_socket (self->loader)), SOCKET_LOADER)))
        return -1;
    zg_info ("router: serving %zu model group(s); frontends on %s, workers on %s",
             zhashx_size (self->models->groups), frontend_endpoints, worker_endpoint);
    return 0;
}

//  Reads the actor's pipe: 1 when $TERM came (or the pipe broke), 0 when it
//  was read dry, -1 when a signal interrupted the read
static int
s_on_pipe (void *pipe_handle)
{
    char command [16];
    while (true) {
        int size = zmq_recv (pipe_handle, command, sizeof (command), ZMQ_DONTWAIT);
        if (size == 5 && memcmp (command, "$TERM", 5) == 0)
            return 1;
        if (size >= 0)
            continue;           //  nothing else is a command to us
        if (zmq_errno () == EAGAIN)
            return 0;
        return zmq_errno () == EINTR? -1: 1;
    }
}

//  How long the loop may sleep: until the next heartbeat, deadline or
//  spend flush
static int
s_timeout (router_t *self, int64_t now)
{
    int64_t wake = self->next_heartbeat;
    if (self->deadline_count && self->deadlines [0]->deadline < wake)
        wake = self->deadlines [0]->deadline;
    if (self->spend_send_at && self->spend_send_at < wake)
        wake = self->spend_send_at;
    return wake > now? (int) (wake - now): 0;
}

//  Serves until SIGTERM/SIGINT (zsys_interrupted) when pipe is NULL, else
//  until $TERM arrives on the actor's pipe.
//
//  A turn reads the sockets that are ready, each until it is dry or for
//  DRAIN_BATCH messages, then fires the timers. A socket sent on after it
//  was read dry is ready in the next turn: the send may have taken the
//  signal of a message that came meanwhile. The loop asks the epoll set
//  which sockets were signalled only when none is ready (and then sleeps
//  until the next timer at most), or once DRAIN_BATCH messages were handled
//  since it last asked, so that sockets kept busy cannot starve the others.
//  So while there is work, the only system calls are libzmq's own, in the
//  receive that finds a socket dry.
static void
s_router_loop (router_t *self, zsock_t *pipe)
{
    void *backend = self->backend_handle;
    void *frontend = self->frontend_handle;
    void *pipe_handle = pipe? zsock_resolve (pipe): NULL;
    struct epoll_event events [8];
    self->next_heartbeat = zclock_mono () + self->heartbeat_ms;
    while ((pipe || !zsys_interrupted) && !self->terminated) {
        if (!self->ready || self->handled >= DRAIN_BATCH) {
            int timeout = self->ready? 0: s_timeout (self, zclock_mono ());
            int count = epoll_wait (self->epoll_fd, events, 8, timeout);
            if (count < 0) {
                if (errno == EINTR)
                    continue;
                zg_error ("router: epoll_wait failed: %s", strerror (errno));
                break;
            }
            for (int index = 0; index < count; index++)
                self->ready |= events [index].data.u32;
            self->handled = 0;
        }
        //  Each socket read here stays ready only if it is not read dry
        unsigned ready = self->ready;
        self->ready = 0;
        if (ready & SOCKET_PIPE) {
            int rc = s_on_pipe (pipe_handle);
            if (rc == 1)
                break;
            if (rc == -1)
                self->ready |= SOCKET_PIPE;
        }
        if ((ready & SOCKET_BACKEND) && !s_drain (self, backend, true))
            self->ready |= SOCKET_BACKEND;
        if ((ready & SOCKET_FRONTEND) && !s_drain (self, frontend, false))
            self->ready |= SOCKET_FRONTEND;
        int64_t now = zclock_mono ();
        if ((ready & SOCKET_SPEND) && !s_on_spend_message (self, now))
            self->ready |= SOCKET_SPEND;
        if (ready & SOCKET_LOADER)
            s_on_models (self);         //  reads it dry
        s_check_deadlines (self, now);
        if (self->spend_send_at && now >= self->spend_send_at)
            s_spend_flush (self);
        if (now >= self->next_heartbeat) {
            s_tick (self, now);
            self->next_heartbeat = now + self->heartbeat_ms;
        }
        self->ready |= self->sent;
        self->sent = 0;
        zg_scoreboard_beat (self->board, self->slot);
        zg_scoreboard_gauge (self->board, self->slot, ZG_SB_QUEUE_DEPTH,
                             (int64_t) self->queue.size);
        zg_scoreboard_gauge (self->board, self->slot, ZG_SB_WORKERS_CONNECTED,
                             (int64_t) self->worker_count);
    }
}

int
zg_router_run (const zg_config_t *config, const char *frontend_endpoint,
               const char *worker_endpoint)
{
    assert (config);
    assert (frontend_endpoint);
    assert (worker_endpoint);
    router_t router;
    int rc = 1;
    if (s_router_start (&router, config, frontend_endpoint, worker_endpoint) == 0) {
        s_router_loop (&router, NULL);
        zg_info ("router: stopping");
        rc = 0;
    }
    s_router_destroy (&router);
    return rc;
}

typedef struct {
    const zg_config_t *config;
    const char *frontend_endpoints;
    const char *worker_endpoint;
} s_actor_args_t;

//  The actor: signals once for zactor_new, then again with the outcome of
//  the start (0 bound, -1 not), then serves until $TERM. A failed start
//  still waits for $TERM, so that zactor_destroy finds it listening.
static void
s_router_actor (zsock_t *pipe, void *args)
{
    s_actor_args_t *actor_args = (s_actor_args_t *) args;
    router_t router;
    int rc = s_router_start (&router, actor_args->config, actor_args->frontend_endpoints,
                             actor_args->worker_endpoint);
    if (rc == 0)
        rc = s_watch (&router, zsock_resolve (pipe), SOCKET_PIPE);
    zsock_signal (pipe, 0);
    zsock_signal (pipe, rc == 0? 0: 1);
    if (rc == 0)
        s_router_loop (&router, pipe);
    else
        while (true) {
            char *command = zstr_recv (pipe);
            bool term = !command || streq (command, "$TERM");
            zstr_free (&command);
            if (term)
                break;
        }
    s_router_destroy (&router);
}

zactor_t *
zg_router_start (const zg_config_t *config, const char *frontend_endpoints,
                 const char *worker_endpoint)
{
    assert (config);
    assert (frontend_endpoints);
    assert (worker_endpoint);
    //  The strings are read before the actor's second signal, so the
    //  arguments may live on this stack
    s_actor_args_t args = { config, frontend_endpoints, worker_endpoint };
    zactor_t *actor = zactor_new (s_router_actor, &args);
    if (!actor)
        return NULL;
    if (zsock_wait (actor) != 0)
        zactor_destroy (&actor);
    return actor;
}
