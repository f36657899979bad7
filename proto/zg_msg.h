/*  =========================================================================
    zg_msg - the messages that zgate's actors exchange over ZeroMQ

    This is the only place that knows the wire format. Every other module
    fills a zg_msg_t and calls zg_msg_send, or calls zg_msg_recv and reads
    the fields; on the hot paths of spend records, the router and the spend
    actor read and write them in place instead (zg_msg_read_reply,
    zg_msg_encode_spend, zg_msg_read_spend), with the same checks and bytes.

    Wire format (version 4). A message is a ZeroMQ multipart message:

        [ header ]            one frame, a msgpack array:
                              [ "ZG", 4, type, field, field, ... ]
                              the fields of each type in the order below,
                              then, for a payload of at most
                              ZG_PAYLOAD_INLINE_MAX bytes, the payload as
                              one msgpack bin (its length declared, then
                              its bytes, up to the end of the frame)
        [ payload ]           a larger payload: a second frame, raw bytes
                              (a request body, an SSE chunk, a reply body)

    A payload is never parsed by proto, so bodies cross the router without
    being re-encoded: a large one in a frame of its own, relayed without a
    copy, a small one in the header's frame, which spares each hop a frame
    (and its receiver an allocation) for the price of one copy of a few KB
    at most. A frame carries one or the other, never both.

    On a ROUTER socket the identity frame comes first; zg_msg_recv and
    zg_msg_send handle it through msg->routing_id.

    The conversation (see also DESIGN.md):

        frontend -> router   REQUEST   call_id route model flags timeout_ms
                                       key_hash user_id team_id model_span
                                       options_span                          + body
        router   -> worker   DISPATCH  call_id route model flags timeout_ms
                                       attempt deployment... model_span
                                       options_span                          + body
        worker   -> router -> frontend
                             HEAD      call_id status flags content_type
                                       headers deployment_id api_base
                                       duration_us prompt_tokens
                                       completion_tokens total_tokens cost
                                       ttfb_us                               [+ body]
                             CHUNK     call_id                               + bytes
                             END       call_id status prompt_tokens
                                       completion_tokens total_tokens cost
                                       ttfb_us duration_us deployment_id
                             ERROR     call_id status flags err_type message
                                       param deployment_id api_base
        frontend -> router -> worker
                             CANCEL    call_id
        worker   -> router   READY     name pid capacity
                             CREDIT    credit
        both ways            HEARTBEAT name pid
        router   -> worker/frontend
                             DISCONNECT   ("I do not know you: send READY again")
        router   -> spend    SPEND     seq call_id key_hash user_id team_id
                                       model deployment_id api_base route
                                       status prompt_tokens completion_tokens
                                       total_tokens cost start_us duration_us
                                       ttfb_us err_type message
                             (a run of SPEND, in seq order, may travel as
                             one frame of header frames back to back: one
                             send and one wake-up for many records; read
                             with zg_msg_decode_first)
        spend    -> router   SPEND_ACK seq   (cumulative: every SPEND with a
                                       seq <= this one is committed)
        spend    -> router   HEARTBEAT, DISCONNECT (its liveness, as above)
        frontend -> router   LIST      call_id  (which deployments do you serve?
                                       GET /health and /models ask it)
        router   -> frontend DEPLOYMENT call_id index count model
                                       deployment_id provider upstream_model
                                       api_base mode message
                             one per deployment, index 0..count-1, in the
                             router's order, all with the LIST's call_id;
                             count 0 (no deployment at all) is one
                             DEPLOYMENT with index 0 and nothing else.
                             model is the model group, mode model_info.mode
                             ("" = not set), message empty for a deployment
                             the router serves, else why it cannot (a
                             database row it cannot decrypt). Never a
                             credential. A router that sends them with
                             ZMQ_DONTWAIT may drop some: the asker waits
                             for count of them within a deadline.
        worker   -> router   RETIRE    name pid  (being recycled: send me no new
                                       DISPATCH; I finish what I hold, then go)
        router   -> worker   RETIRE    name pid  (the answer, name "router": no
                                       DISPATCH follows it on this connection,
                                       so the worker may exit once it holds
                                       nothing; the router forgets the worker
                                       when its last call ends)

    Events, PUBlished on the events endpoint (zgate_settings.events_endpoint)
    for whoever SUBscribes (the alerts actor, tests/tools/zg_events_tap); a
    subscriber that is slow or absent loses events, it never slows the
    publisher:

        frontend -> *        BUDGET    kind key_hash key_name key_alias
                                       user_id team_id spend soft_budget
                                       max_budget at_us
                             kind "soft_budget_crossed": this key's spend
                             reached its soft_budget (once per crossing).
                             key_name is the display form "sk-...abcd",
                             never the key; max_budget < 0 when it has none

    Every call that reached the router ends as exactly one SPEND, numbered
    by a per-router sequence; the router keeps it until a SPEND_ACK covers
    it and sends it again after the spend actor's silence or restart, so
    the spend actor must treat a repeated call_id as already written.

    A request's answer is a single HEAD with ZG_FLAG_FINAL (the whole body,
    and the usage and timings an END would report: nothing follows it); or
    HEAD without FINAL (its usage fields zero), CHUNK*, then END; or a
    single ERROR instead of HEAD; or, for a stream that already started,
    ERROR (with ZG_FLAG_STARTED) after some CHUNKs. A final HEAD ends the
    call for the router as END does: one message per whole answer on each
    hop, where version 1 sent HEAD then END.

    Version 2: HEAD carries the usage, cost and ttfb_us after duration_us
    (version 1 had none of them and followed a final HEAD with END).
    Version 3: REQUEST and DISPATCH carry model_span and options_span last.
    Version 4: a payload of at most ZG_PAYLOAD_INLINE_MAX bytes travels in
    the header's frame, after the array, as a msgpack bin.

    Encoding of the fields. DISPATCH's "deployment..." is one field, a
    nested array of the deployment's 9 fields in this order:

        [ id, provider, upstream_model, api_base, api_key,
          timeout_ms, stream_timeout_ms,
          input_cost_per_token, output_cost_per_token ]

    REQUEST's and DISPATCH's model_span and options_span are unsigned
    integers, each a span of the payload as offset * 2^32 + length (0:
    none), set only with ZG_FLAG_BODY_LOCATED (0 without it). Set, they
    lie inside the payload (offset >= 1, length >= 1) and apart from each
    other. zg_msg_recv and zg_msg_send check that against the payload
    (zg_msg_payload_check); zg_msg_encode and zg_msg_decode, which see no
    payload, do not.

    Strings are msgpack str, at most the ZG_*_MAX bytes of their field,
    without NUL bytes; ERROR.param and HEAD.headers travel as nil when empty
    (an empty str is accepted too). Integers are msgpack unsigned integers
    that must fit their field; route is 1..3, status at most 999. Doubles
    are msgpack float64 and finite. The whole header frame is at most
    ZG_HEADER_MAX_BYTES, with nothing after the array (but for a run of
    SPEND: each of them is such an array, none after the last) but for an
    inline payload: a msgpack bin (bin 8, 16 or 32) of at most
    ZG_PAYLOAD_INLINE_MAX bytes whose declared length reaches exactly the
    end of the frame. A payload, inline or in a frame of its own, is
    allowed only on REQUEST, DISPATCH, HEAD and CHUNK. zg_msg_encode and
    zg_msg_send refuse a message that breaks these rules; the decoder
    answers ZG_MSG_ERR_MALFORMED to one.
    =========================================================================
*/

#ifndef ZG_MSG_H_INCLUDED
#define ZG_MSG_H_INCLUDED

#include <czmq.h>
#include <stdbool.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define ZG_PROTO_VERSION 4

//  Message types
typedef enum {
    ZG_MSG_REQUEST    = 1,
    ZG_MSG_DISPATCH   = 2,
    ZG_MSG_HEAD       = 3,
    ZG_MSG_CHUNK      = 4,
    ZG_MSG_END        = 5,
    ZG_MSG_ERROR      = 6,
    ZG_MSG_CANCEL     = 7,
    ZG_MSG_READY      = 8,
    ZG_MSG_CREDIT     = 9,
    ZG_MSG_HEARTBEAT  = 10,
    ZG_MSG_DISCONNECT = 11,
    ZG_MSG_SPEND      = 12,
    ZG_MSG_SPEND_ACK  = 13,
    ZG_MSG_RETIRE     = 14,
    ZG_MSG_BUDGET     = 15,
    ZG_MSG_LIST       = 16,
    ZG_MSG_DEPLOYMENT = 17
} zg_msg_type_t;

//  Routes a REQUEST can carry
typedef enum {
    ZG_ROUTE_CHAT        = 1,     //  /chat/completions
    ZG_ROUTE_COMPLETIONS = 2,     //  /completions
    ZG_ROUTE_EMBEDDINGS  = 3      //  /embeddings
} zg_route_t;

//  Bits of msg->flags
#define ZG_FLAG_STREAM        0x01   //  REQUEST/DISPATCH: client asked "stream": true
#define ZG_FLAG_CLIENT_USAGE  0x02   //  REQUEST/DISPATCH: client itself asked for the usage chunk
#define ZG_FLAG_FINAL         0x04   //  HEAD: the payload is the whole body; no CHUNK/END follow
#define ZG_FLAG_STARTED       0x08   //  ERROR: bytes already reached the client (in-stream error)
#define ZG_FLAG_PIN_DEPLOYMENT 0x10  //  REQUEST: model is a deployment id (model_info.id), not a
                                     //  group: the router sends the call to exactly that
                                     //  deployment (GET /health checks each one this way)
#define ZG_FLAG_BODY_LOCATED  0x20   //  REQUEST/DISPATCH: the sender validated the body, whose
                                     //  top-level value is an object; model_span and
                                     //  options_span say where its "model" (a string) and
                                     //  "stream_options" (an object) values are, 0 when it has
                                     //  none. A worker splices there without scanning the body.

//  Limits: a decoder rejects a message whose field is longer
#define ZG_CALL_ID_MAX     64
#define ZG_NAME_MAX        255      //  model names, deployment ids, error types, worker names
#define ZG_URL_MAX         2047     //  api_base
#define ZG_SECRET_MAX      1023     //  api_key
#define ZG_MESSAGE_MAX     4095     //  error messages
#define ZG_HEADERS_MAX     16384    //  HEAD.headers
#define ZG_HEADER_MAX_BYTES 32768   //  the whole encoded header frame
#define ZG_KEY_HASH_MAX    64       //  SHA-256 hex of an API key
#define ZG_PAYLOAD_INLINE_MAX 4096  //  a payload up to this size travels in the header's frame
#define ZG_INLINE_PREFIX_MAX 5      //  the msgpack bin tag and length before an inline payload
//  The longest header frame: a header and an inline payload
#define ZG_FRAME_MAX_BYTES (ZG_HEADER_MAX_BYTES + ZG_INLINE_PREFIX_MAX + ZG_PAYLOAD_INLINE_MAX)

//  Decoder results
#define ZG_MSG_OK          0
#define ZG_MSG_ERR_IO     -1        //  nothing could be read (interrupted, socket closed)
#define ZG_MSG_ERR_MALFORMED -2     //  a message arrived but is not a valid zgate message

//  A deployment as the router hands it to a worker
typedef struct {
    char     id [ZG_NAME_MAX + 1];             //  model_info.id
    char     provider [ZG_NAME_MAX + 1];       //  "openai"
    char     upstream_model [ZG_NAME_MAX + 1]; //  the model name the upstream knows
    char     api_base [ZG_URL_MAX + 1];
    char     api_key [ZG_SECRET_MAX + 1];      //  may be empty
    uint32_t timeout_ms;                       //  whole request; 0 = msg->timeout_ms
    uint32_t stream_timeout_ms;                //  time to first byte of a stream; 0 = none
    double   input_cost_per_token;             //  < 0 when not configured
    double   output_cost_per_token;            //  < 0 when not configured
} zg_deployment_wire_t;

//  A span of a payload as REQUEST and DISPATCH carry it: offset * 2^32 +
//  length, 0 for none
static inline uint64_t
zg_msg_span (uint32_t offset, uint32_t length)
{
    return (uint64_t) offset << 32 | length;
}

static inline uint32_t
zg_msg_span_offset (uint64_t span)
{
    return (uint32_t) (span >> 32);
}

static inline uint32_t
zg_msg_span_length (uint64_t span)
{
    return (uint32_t) span;
}

//  One message. The struct is public so that actors can keep one on the
//  stack and reuse it: zg_msg_recv overwrites every field of the type it
//  reads. Strings are always NUL-terminated. Fields that a type does not
//  carry are left zero/empty by zg_msg_recv and ignored by zg_msg_send.
typedef struct {
    zframe_t *routing_id;       //  peer identity on ROUTER sockets; owned, may be NULL
    int       type;             //  zg_msg_type_t

    char      call_id [ZG_CALL_ID_MAX + 1];
    uint8_t   route;            //  zg_route_t
    char      model [ZG_NAME_MAX + 1];     //  client-facing model group
    uint32_t  flags;            //  ZG_FLAG_*
    uint32_t  timeout_ms;       //  REQUEST/DISPATCH: deadline for the whole request
    uint64_t  model_span;       //  REQUEST/DISPATCH with ZG_FLAG_BODY_LOCATED: the "model"
                                //  value in payload, quotes included (zg_msg_span); 0 = none
    uint64_t  options_span;     //  the same for "stream_options", braces included
    uint8_t   attempt;          //  DISPATCH: 0 for the first, 1.. for re-dispatches

    zg_deployment_wire_t deployment;       //  DISPATCH

    uint16_t  status;           //  HEAD/END/ERROR: HTTP status
    char      content_type [ZG_NAME_MAX + 1];       //  HEAD
    char     *headers;          //  HEAD: "name: value\r\n" lines of upstream headers
                                //  to pass on (prefixed llm_provider- by the frontend);
                                //  owned, heap, may be NULL
    char      deployment_id [ZG_NAME_MAX + 1];      //  HEAD/END/ERROR
    char      api_base [ZG_URL_MAX + 1];            //  HEAD/ERROR

    uint32_t  prompt_tokens;    //  END, and HEAD with ZG_FLAG_FINAL
    uint32_t  completion_tokens;
    uint32_t  total_tokens;
    double    cost;             //  END/final HEAD: USD, 0 when unknown
    uint64_t  ttfb_us;          //  END/final HEAD: time to first upstream byte
    uint64_t  duration_us;      //  END: whole upstream call; HEAD: upstream time so far
                                //  (the whole call when FINAL, else to its headers)

    char      err_type [ZG_NAME_MAX + 1];           //  ERROR: e.g. "timeout", "internal_server_error"
    char      message [ZG_MESSAGE_MAX + 1];         //  ERROR
    char      param [ZG_NAME_MAX + 1];              //  ERROR: empty = null

    char      name [ZG_NAME_MAX + 1];               //  READY/HEARTBEAT: sender's name
    uint32_t  pid;              //  READY/HEARTBEAT
    uint32_t  capacity;         //  READY: how many requests it can hold at once
    uint32_t  credit;           //  CREDIT: how many more it can take now

    uint64_t  seq;              //  SPEND/SPEND_ACK: per-router record sequence
    char      key_hash [ZG_KEY_HASH_MAX + 1];       //  REQUEST/SPEND: SHA-256 hex of the
                                                    //  caller's key; may be empty
    char      user_id [ZG_NAME_MAX + 1];            //  REQUEST/SPEND: may be empty
    char      team_id [ZG_NAME_MAX + 1];            //  REQUEST/SPEND: may be empty
    uint64_t  start_us;         //  SPEND: call start, unix microseconds

    char      kind [ZG_NAME_MAX + 1];               //  BUDGET: "soft_budget_crossed"
    char      key_name [ZG_NAME_MAX + 1];           //  BUDGET: "sk-...abcd", never the key
    char      key_alias [ZG_NAME_MAX + 1];          //  BUDGET: may be empty
    double    spend;            //  BUDGET: the key's spend, USD
    double    soft_budget;      //  BUDGET
    double    max_budget;       //  BUDGET: < 0 when the key has none
    uint64_t  at_us;            //  BUDGET: when it happened, unix microseconds

    uint32_t  index;            //  DEPLOYMENT: this one's place in the list
    uint32_t  count;            //  DEPLOYMENT: how many the list holds
    char      provider [ZG_NAME_MAX + 1];           //  DEPLOYMENT: "openai"
    char      upstream_model [ZG_NAME_MAX + 1];     //  DEPLOYMENT: what the upstream is asked for
    char      mode [ZG_NAME_MAX + 1];               //  DEPLOYMENT: model_info.mode; "" = not set

    //  REQUEST/DISPATCH/HEAD/CHUNK body bytes, reached only through
    //  zg_msg_payload_* (never directly: where the bytes lie depends on how
    //  they came). payload_frame, owned, may be NULL, holds them: the frame
    //  the message arrived in (an inline payload) or one given; without a
    //  frame, the bytes are borrowed from the caller
    zframe_t      *payload_frame;
    const uint8_t *payload_data;
    size_t         payload_size;
    bool           has_payload;
} zg_msg_t;

//  Prepare a message for use: all fields zero. Call once per zg_msg_t.
void zg_msg_init (zg_msg_t *self, int type);

//  Release what the message owns (routing_id, headers, payload) and zero
//  it again, ready for reuse with the given type.
void zg_msg_reset (zg_msg_t *self, int type);

//  The payload: whether the message has one (it may be empty), its bytes
//  (NULL when none) and its size. Valid until the message is received
//  into, reset or sent, or the payload taken.
static inline bool
zg_msg_has_payload (const zg_msg_t *self)
{
    return self->has_payload;
}

static inline const uint8_t *
zg_msg_payload_data (const zg_msg_t *self)
{
    return self->payload_data;
}

static inline size_t
zg_msg_payload_size (const zg_msg_t *self)
{
    return self->payload_size;
}

//  Give the message a frame's bytes as its payload: the frame is taken
//  (*frame_p becomes NULL), the previous payload released; a NULL frame
//  only releases it.
void zg_msg_payload_give (zg_msg_t *self, zframe_t **frame_p);

//  Give the message size bytes at data as its payload, borrowed: nothing
//  is copied here, zg_msg_send copies them once (into the header's frame
//  or a frame of their own), so the caller keeps them valid and unchanged
//  until the message is sent or reset.
void zg_msg_payload_borrow (zg_msg_t *self, const void *data, size_t size);

//  Release the payload, if any; the rest of the message stays as it is.
void zg_msg_payload_drop (zg_msg_t *self);

//  Take the payload away from the message: returns the frame that holds
//  its bytes, owned by the caller (who destroys it), *data and *size the
//  payload within it (the frame may hold a header before them). Nothing is
//  copied but a borrowed payload, which gets a frame of its own. NULL
//  (*data NULL, *size 0) when the message has no payload or memory runs
//  out.
zframe_t *zg_msg_payload_take (zg_msg_t *self, const uint8_t **data, size_t *size);

//  Receive one message from a socket. On a ROUTER socket the identity frame
//  is read into routing_id. Returns ZG_MSG_OK, ZG_MSG_ERR_IO when nothing
//  was received (interrupted), or ZG_MSG_ERR_MALFORMED when what arrived is
//  not a valid message (wrong magic/version/type, a field of the wrong
//  msgpack type or too long, missing or extra fields, extra frames); the
//  malformed message is consumed and discarded. Never asserts on input.
int zg_msg_recv (zg_msg_t *self, void *socket);

//  Send the message on a socket. On a ROUTER socket routing_id must be set;
//  it is sent first. The payload goes in the header's frame when it is at
//  most ZG_PAYLOAD_INLINE_MAX bytes, else in a frame of its own (a given
//  frame without a copy); either way the message keeps none (the payload
//  is released); routing_id is kept so the same struct can answer again.
//  Returns 0 on success, -1 on failure (the payload is released anyway).
int zg_msg_send (zg_msg_t *self, void *socket);

//  Whether a payload may travel with a decoded message: ZG_MSG_OK, or
//  ZG_MSG_ERR_MALFORMED for a payload on a type that carries none, or
//  REQUEST or DISPATCH spans that do not lie inside the payload of
//  payload_size bytes (with_payload false: none came) or that are set
//  without ZG_FLAG_BODY_LOCATED. zg_msg_recv and zg_msg_send call it; a
//  broker that reads the frames itself calls it after zg_msg_decode.
int zg_msg_payload_check (const zg_msg_t *self, bool with_payload, size_t payload_size);

//  Pure codec, for tests and for code that does not use a socket:
//  encode the header frame of self into buf (at most size bytes). Returns
//  the number of bytes written, or -1 if it does not fit.
int zg_msg_encode (const zg_msg_t *self, uint8_t *buf, size_t size);

//  Decode a header frame into self (which must have been initialised; its
//  owned fields are released first). Returns ZG_MSG_OK or
//  ZG_MSG_ERR_MALFORMED. Does not touch routing_id or payload.
int zg_msg_decode (zg_msg_t *self, const uint8_t *data, size_t size);

//  Decode a header frame that may carry an inline payload after the
//  header, as zg_msg_decode does, but for that payload: *payload and
//  *payload_size say where it lies in data (*payload NULL when there is
//  none). Every check of the inline payload is made (a bin of at most
//  ZG_PAYLOAD_INLINE_MAX bytes, up to the end of the frame exactly, on a
//  type that carries one), not zg_msg_payload_check's. Returns ZG_MSG_OK or
//  ZG_MSG_ERR_MALFORMED.
int zg_msg_decode_frame (zg_msg_t *self, const uint8_t *data, size_t size,
                         const uint8_t **payload, size_t *payload_size);

//  Write before an inline payload of size bytes (at most
//  ZG_PAYLOAD_INLINE_MAX) what says its length, into prefix
//  (ZG_INLINE_PREFIX_MAX bytes); returns how many bytes it took. For a
//  broker that builds a frame of a header encoded with zg_msg_encode, then
//  this, then the payload.
size_t zg_msg_inline_prefix (uint8_t *prefix, size_t size);

//  Decode the first of the header frames that lie back to back in data
//  (a run of SPEND) into self, as zg_msg_decode does; *used is set to its
//  length, where the next one starts (0 when malformed). Returns ZG_MSG_OK
//  or ZG_MSG_ERR_MALFORMED.
int zg_msg_decode_first (zg_msg_t *self, const uint8_t *data, size_t size, size_t *used);

//  A string of a message read in place: its bytes in the frame, without a
//  NUL after them (and none among them)
typedef struct {
    const char *text;
    size_t      length;
} zg_msg_text_t;

//  A SPEND read in place, for the spend actor, which reads one per call
//  only to render it: its numbers, and its strings as views of the frame,
//  valid while the frame is. The fields of zg_msg_t that SPEND carries.
typedef struct {
    uint64_t      seq;
    zg_msg_text_t call_id;
    zg_msg_text_t key_hash;
    zg_msg_text_t user_id;
    zg_msg_text_t team_id;
    zg_msg_text_t model;
    zg_msg_text_t deployment_id;
    zg_msg_text_t api_base;
    uint8_t       route;
    uint16_t      status;
    uint32_t      prompt_tokens;
    uint32_t      completion_tokens;
    uint32_t      total_tokens;
    double        cost;
    uint64_t      start_us;
    uint64_t      duration_us;
    uint64_t      ttfb_us;
    zg_msg_text_t err_type;
    zg_msg_text_t message;
} zg_msg_spend_t;

//  Read the first of the header frames that lie back to back in data (a
//  run of SPEND) as a SPEND, in place, with every check zg_msg_decode_first
//  makes: ZG_MSG_OK with *used set to its length, or ZG_MSG_ERR_MALFORMED
//  (*used 0) for what zg_msg_decode_first refuses and for a message of
//  another type (which zg_msg_decode_first may then read).
int zg_msg_read_spend (zg_msg_spend_t *spend, const uint8_t *data, size_t size, size_t *used);

//  Encode a SPEND from its fields as zg_msg_read_spend gives them, the
//  strings as views (text may be NULL where length is 0), into buf: the
//  very bytes zg_msg_encode writes for a zg_msg_t holding the same fields.
//  For the router, which holds every string of a record already and would
//  only copy them into a zg_msg_t to have them measured and copied again.
//  Refuses what zg_msg_encode refuses: a string longer than its field's
//  limit or holding a NUL byte, a route or status out of range, a cost
//  that is not finite. Returns the number of bytes written, or -1 (also
//  when it does not fit in size bytes).
int zg_msg_encode_spend (const zg_msg_spend_t *spend, uint8_t *buf, size_t size);

//  A view of value as ZG_MSG_SET would keep it in a field of size bytes:
//  cut on a character boundary when it is longer; value may be NULL
zg_msg_text_t zg_msg_text (const char *value, size_t size);

//  A HEAD, END or ERROR read in place: the fields of zg_msg_t these types
//  carry, strings as views of the frame, valid while the frame is; fields
//  the type does not carry are zero or empty. For a broker that relays the
//  frame as it came and keeps only how the call ended (status, usage,
//  cost, deployment, error): no message cleared, no string or header
//  copied.
typedef struct {
    int           type;             //  ZG_MSG_HEAD, ZG_MSG_END or ZG_MSG_ERROR
    zg_msg_text_t call_id;
    uint16_t      status;
    uint32_t      flags;            //  HEAD, ERROR
    zg_msg_text_t content_type;     //  HEAD
    zg_msg_text_t headers;          //  HEAD; nil reads as empty
    zg_msg_text_t deployment_id;
    zg_msg_text_t api_base;         //  HEAD, ERROR
    uint64_t      duration_us;      //  HEAD, END
    uint32_t      prompt_tokens;    //  END, HEAD
    uint32_t      completion_tokens;
    uint32_t      total_tokens;
    double        cost;
    uint64_t      ttfb_us;
    zg_msg_text_t err_type;         //  ERROR
    zg_msg_text_t message;
    zg_msg_text_t param;            //  nil reads as empty
} zg_msg_reply_t;

//  Read a header frame as a HEAD, END or ERROR, in place, with every check
//  zg_msg_decode_frame makes (the whole frame: nothing after the message
//  but a HEAD's inline payload, which is checked and skipped):
//  ZG_MSG_OK, or ZG_MSG_ERR_MALFORMED (reply all zero) for what
//  zg_msg_decode refuses and for a message of another type.
int zg_msg_read_reply (zg_msg_reply_t *reply, const uint8_t *data, size_t size);

//  Read only what a broker needs to relay a message without decoding it:
//  the type, the call id (into call_id, ZG_CALL_ID_MAX + 1 bytes), for
//  HEAD, END and ERROR the status, and for HEAD and ERROR the flags (a
//  final HEAD ends its call); status and flags are 0 for the other types.
//  Only HEAD, CHUNK, END, ERROR and CANCEL are peeked. The magic, version, field count and the fields read are
//  checked; the rest of the frame is not looked at, so the actor that
//  receives it must decode it in full. Returns ZG_MSG_OK or
//  ZG_MSG_ERR_MALFORMED. Never reads past size.
int zg_msg_peek (const uint8_t *data, size_t size, int *type, char *call_id, uint16_t *status,
                 uint32_t *flags);

//  Set owned string fields (copying)
void zg_msg_set_headers (zg_msg_t *self, const char *headers);

//  Copy a C string into a fixed field, truncating to the field's size.
//  Used as ZG_MSG_SET(msg.call_id, value).
#define ZG_MSG_SET(field, value) zg_msg_strset ((field), sizeof (field), (value))
void zg_msg_strset (char *field, size_t size, const char *value);

//  A name for the type, for logs ("REQUEST", ...); "?" if unknown
const char *zg_msg_type_name (int type);

//  Self test
void zg_msg_test (bool verbose);

#ifdef __cplusplus
}
#endif

#endif
