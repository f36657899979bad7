/*  =========================================================================
    zg_calls - the frontend's table of HTTP requests in flight

    Every HTTP request the frontend serves gets one zg_call_t from a free
    list (no malloc once the list is warm). A call that has been sent to
    the router is also indexed by its call id, so that HEAD/CHUNK/END/ERROR
    find their connection in O(1), and linked into the in-flight list that
    the deadline sweep walks. The table also makes call ids: UUID v4 from a
    per-process PRNG seeded once, so a request costs no syscall for it.

    The struct is visible to the frontend's own files only (it is not part
    of any contract with another actor); the table itself is opaque.
    =========================================================================
*/
#ifndef ZG_CALLS_H_INCLUDED
#define ZG_CALLS_H_INCLUDED

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <czmq.h>

#include "proto/zg_msg.h"
#include "frontend/zg_keys.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum {
    ZG_CALL_LOCAL = 0,      //  answered by the frontend itself (health, models, errors)
    ZG_CALL_UPLOADING,      //  LLM request: reading the body
    ZG_CALL_WAITING,        //  REQUEST sent; connection suspended until HEAD/ERROR
    ZG_CALL_ANSWERED,       //  a whole response is queued; nothing more from the router
    ZG_CALL_STREAMING,      //  a stream response is queued; CHUNKs feed it
    ZG_CALL_ADMIN           //  management job with the keystore; suspended until it is done
} zg_call_state_t;

//  Who the caller is
typedef enum {
    ZG_CALLER_NONE = 0,     //  no auth (no master key), or not decided yet
    ZG_CALLER_MASTER,       //  the master key
    ZG_CALLER_VIRTUAL,      //  a virtual key the table knows (ticket when admitted)
    ZG_CALLER_UNPRIVILEGED  //  an unknown key let in while the database is down
} zg_caller_t;

//  Where a call suspended for a key lookup starts again
typedef enum {
    ZG_KEY_WAIT_NONE = 0,
    ZG_KEY_WAIT_HEADERS,    //  decide the route again (GET /models...)
    ZG_KEY_WAIT_BODY        //  admit again, with the model from the body
} zg_key_wait_t;

struct MHD_Connection;
typedef struct _zg_call_t zg_call_t;

//  Stream bytes queued for the client: size bytes at data, held by frame
typedef struct {
    zframe_t      *frame;
    const uint8_t *data;
    size_t         size;
} zg_queued_t;

struct _zg_call_t {
    struct MHD_Connection *connection;
    void     *owner;                //  the frontend serving it, for MHD callbacks
    zg_call_state_t state;
    int       status;               //  what the client was answered, for the access line
    int       method;               //  zg_http_method_t, for the access line
    int       fd;                   //  the connection's socket
    bool      suspended;            //  MHD_suspend_connection is in force
    bool      routed;               //  in the call id index: router messages are expected
    bool      client_gone;          //  the client hung up; the next MHD call closes
    bool      headers_pending;      //  GET/HEAD: the route is served on the next MHD call
    bool      stream_ended;         //  no more bytes will be queued
    bool      saw_done;             //  the stream carried its own "data: [DONE]"
    uint8_t   route;                //  zg_route_t
    uint32_t  flags;                //  ZG_FLAG_STREAM...

    char      call_id [ZG_CALL_ID_MAX + 1];    //  on the wire; unique among calls in flight
    char      echo_id [ZG_CALL_ID_MAX + 1];    //  in x-litellm-call-id: the client's own id if it sent one
    char      model [ZG_NAME_MAX + 1];         //  model group asked for
    char      path [128];                      //  for the access line (truncated)
    size_t    head_bytes;           //  the request line and headers, as MHD holds them

    int64_t   started_us;           //  when the request arrived (monotonic)
    int64_t   overhead_us;          //  gateway time in the answer's head; -1 = unknown
    void     *check;                //  GET /health: the check it waits for, or the
                                    //  check a probe belongs to (connection NULL)
    size_t    check_index;          //  probe: its deployment
    int64_t   deadline_ms;          //  WAITING: 504 after this (monotonic ms)

    //  Request body: one above ZG_PAYLOAD_INLINE_MAX preallocated by
    //  Content-Length straight into the frame that goes to the router; a
    //  smaller one (copied into the REQUEST's frame) or a chunked upload in
    //  body_buf, whose storage a released call keeps while it is small
    zframe_t *body_frame;
    char     *body_buf;
    size_t    body_size;
    size_t    body_cap;
    bool      body_too_large;
    size_t    discarded;            //  body bytes read and dropped after an early answer

    //  Stream bytes waiting for the client: a ring of frames (CHUNK payloads
    //  kept as they arrived, no copy) and how far the first one is sent
    zg_queued_t *queue;
    size_t    queue_cap;
    size_t    queue_head;
    size_t    queue_count;
    size_t    queue_offset;
    size_t    queued_bytes;
    char      tail [16];            //  last bytes of the stream, to see a split "[DONE]"
    size_t    tail_len;

    //  Virtual keys (frontend/zg_keys.h)
    uint8_t   caller;               //  zg_caller_t
    uint8_t   key_wait;             //  zg_key_wait_t: suspended until the key is looked up
    bool      key_waited;           //  it waited once already: the next verdict is final
    bool      key_wait_expired;     //  the lookup took too long, or could not be made
    bool      admitted;             //  the ticket is in flight: zg_keys_finish it once
    char      key_hash [ZG_KEYS_HASH_HEX + 1];
    const char *presented_key;      //  the key as presented, in MHD's copy of the request's
                                    //  headers (kept for the whole request): for messages
    zg_keys_ticket_t ticket;
    int64_t   key_wait_until;       //  monotonic ms
    zg_call_t *key_wait_prev;       //  the frontend's list of calls waiting for a key
    zg_call_t *key_wait_next;

    //  Management job
    int       admin_op;             //  zg_admin_op_t, 0 for others
    char     *path_key;             //  /key/{key}/regenerate: the key, until the job takes it
    uint64_t  admin_handle;         //  the job's handle while it runs

    //  Table links
    zg_call_t *hash_next;
    zg_call_t *prev;                //  in-flight list
    zg_call_t *next;
};

typedef struct _zg_calls_t zg_calls_t;

//  Create an empty table. seed 0 = seed the id generator from the kernel.
zg_calls_t *zg_calls_new (uint64_t seed);
void zg_calls_destroy (zg_calls_t **self_p);

//  A call, zeroed except for its reused buffers. Never NULL (aborts on OOM
//  like every CZMQ allocation).
zg_call_t *zg_calls_acquire (zg_calls_t *self);

//  Give a call back: frees its frames, unlinks it if still routed.
void zg_calls_release (zg_calls_t *self, zg_call_t *call);

//  Index a call by its call_id and put it on the in-flight list. Returns
//  -1 if another routed call already has that id.
int zg_calls_route (zg_calls_t *self, zg_call_t *call);

//  Remove a call from the index and the in-flight list (no-op if not routed)
void zg_calls_unroute (zg_calls_t *self, zg_call_t *call);

//  The routed call with this id, or NULL
zg_call_t *zg_calls_lookup (zg_calls_t *self, const char *call_id);

//  In-flight list, oldest first. Save next before unrouting the current one.
zg_call_t *zg_calls_first (zg_calls_t *self);

//  How many calls are routed
size_t zg_calls_routed (zg_calls_t *self);

//  Write a new UUID v4 ("xxxxxxxx-xxxx-4xxx-yxxx-xxxxxxxxxxxx") into out,
//  which must hold 37 bytes.
void zg_calls_new_id (zg_calls_t *self, char *out);

//  True if text is a call id we accept from a client: 1..64 characters of
//  [A-Za-z0-9._:-]
bool zg_calls_id_is_sane (const char *text);

//  Stream queue: append a frame (taking ownership), or size bytes at data
//  within a frame (taking the frame: a payload that arrived after its
//  header), copy up to max bytes out, and drop everything queued.
void   zg_call_queue_push (zg_call_t *self, zframe_t **frame_p);
void   zg_call_queue_push_part (zg_call_t *self, zframe_t **frame_p, const uint8_t *data,
                                size_t size);
size_t zg_call_queue_read (zg_call_t *self, char *out, size_t max);
void   zg_call_queue_clear (zg_call_t *self);

//  Self test
void zg_calls_test (bool verbose);

#ifdef __cplusplus
}
#endif

#endif
