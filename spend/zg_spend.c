/*  =========================================================================
    zg_spend - writes the routers' spend records to the database

    A batch is one statement whose parameters are its columns, each one
    array in PostgreSQL's binary format (as array_send writes it), made
    rows again by unnest: one statement, so one transaction and one round
    trip whatever the number of rows, with no per-row round trip and no
    parameter limit. Binary columns cost least on both sides: numbers as
    their bytes (the spend the very double the worker computed), strings
    as they came (made valid UTF-8, as PostgreSQL wants them), nothing
    named, quoted or parsed, and about half the bytes of the same rows as
    JSON objects. The statement's CTEs insert the rows (ON CONFLICT DO
    NOTHING on the call id), then add to the key, user and team totals the
    spend of what RETURNING reports as inserted: a record that was already
    written adds nothing. Times are whole microseconds added to the epoch
    (exact, where to_timestamp of a numeric division is not and costs
    more).

    Cumulative acks need the records of one router to arrive without a
    gap. A router is "synced" once it has sent a HEARTBEAT: it promises to
    send, after it, everything unacked from the oldest, so what follows is
    contiguous with what was acked. SPEND from a router that is not synced
    is dropped and answered with DISCONNECT (once), which makes it send the
    HEARTBEAT and start again.
    =========================================================================
*/
#include "spend/zg_spend.h"
#include "common/zg_selftest.h"
#include "db/zg_db.h"
#include "db/zg_migrate.h"
#include "common/zg_json.h"
#include "common/zg_number.h"
#include "common/zg_log.h"
#include "common/zg_scoreboard.h"
#include "common/zg_sha256.h"

#include <czmq.h>
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

//  Records per write when they come fast. Each write costs the same
//  round trip and wake-ups whatever its size, so it carries many; it stays
//  below the routers' window of records sent and not yet acked (the
//  router's SPEND_WINDOW, 2000), so that it fills without waiting for
//  proxy_batch_write_at and the router sends the next records meanwhile.
#define BATCH_RECORDS       1500
//  Records held while the database is away; beyond, routers keep them
#define HELD_RECORDS_MAX    50000
#define RETRY_FIRST_MS      500
#define RETRY_MAX_MS        10000
//  On stop, how long to keep trying to write what is held
//  (ZGATE_SPEND_STOP_WAIT_MS overrides it)
#define STOP_WAIT_MS        15000
//  A router silent this long with nothing held is forgotten
#define PEER_FORGET_MS      60000

//  The columns of a batch, in the order of the statement's parameters
typedef enum {
    S_SPEND, S_PROMPT_TOKENS, S_COMPLETION_TOKENS, S_TOTAL_TOKENS,
    S_START_US, S_DURATION_US, S_TTFB_US, S_STATUS,
    S_REQUEST_ID, S_CALL_TYPE, S_API_KEY, S_MODEL_GROUP, S_MODEL_ID,
    S_API_BASE, S_USER_ID, S_TEAM_ID, S_ERR_TYPE, S_MESSAGE,
    S_COLUMNS
} s_column_id_t;

//  Element types (pg_type's oids, fixed since PostgreSQL 7)
#define S_FLOAT8_OID    701
#define S_INT8_OID      20
#define S_INT4_OID      23
#define S_TEXT_OID      25
static const uint32_t s_column_type [S_COLUMNS] = {
    S_FLOAT8_OID, S_INT8_OID, S_INT8_OID, S_INT8_OID, S_INT8_OID, S_INT8_OID, S_INT8_OID,
    S_INT4_OID, S_TEXT_OID, S_TEXT_OID, S_TEXT_OID, S_TEXT_OID, S_TEXT_OID, S_TEXT_OID,
    S_TEXT_OID, S_TEXT_OID, S_TEXT_OID, S_TEXT_OID
};

//  An array's header: dimensions (1), flags (no NULL), element type, then
//  the one dimension's length and lower bound, each 4 bytes
#define S_ARRAY_HEADER  20

//  One column: its array, the header filled in only when it is written
typedef struct {
    char   *data;
    size_t  used;
    size_t  size;
} column_t;

typedef struct {
    column_t columns [S_COLUMNS];
} batch_t;

//  A text column's element is at most its string's bytes three times (each
//  byte that is not UTF-8 becomes U+FFFD): the largest column of the most
//  records ever held stays within what libpq takes as a length
_Static_assert ((uint64_t) HELD_RECORDS_MAX * (4 + 3 * ZG_MESSAGE_MAX) + S_ARRAY_HEADER
                < INT32_MAX, "a batch's message column fits in a parameter");

typedef struct {
    zframe_t *identity;
    char     *key;
    bool      synced;
    bool      disconnect_sent;
    uint64_t  held_max;         //  highest seq held in the batch; 0 = none
    uint64_t  last_seq;         //  highest seq taken since the last HEARTBEAT
    bool      expect_any;       //  right after a HEARTBEAT: the oldest unacked comes
    bool      resync;           //  records dropped while full: DISCONNECT when room
    int64_t   last_heard;
} peer_t;

typedef struct {
    const zg_config_t *config;
    zsock_t  *socket;
    zhashx_t *peers;            //  identity hex -> peer_t
    peer_t   *last_peer;        //  the one heard last: records come in runs
    zg_msg_t  msg;

    batch_t   batch;
    size_t    held;             //  records in batch
    int64_t   first_held_at;    //  when the oldest held record arrived

    zg_db_t  *db;
    char     *url;
    bool      master_key_done;
    bool      outage;           //  the database failed and has not come back
    int       retry_ms;
    int64_t   retry_at;
    int64_t   interval_ms;
    int64_t   heartbeat_ms;
    int64_t   next_heartbeat;
} spend_t;

//  $1 to $18: the columns of the batch (s_column_id_t); $19: whether error
//  logs are off (general_settings.disable_error_logs)
static const char *s_write_sql =
    "WITH rows AS ("
    "  SELECT DISTINCT ON (request_id) * FROM unnest ($1::float8[], $2::int8[], $3::int8[],"
    "    $4::int8[], $5::int8[], $6::int8[], $7::int8[], $8::int4[], $9::text[], $10::text[],"
    "    $11::text[], $12::text[], $13::text[], $14::text[], $15::text[], $16::text[],"
    "    $17::text[], $18::text[])"
    "  AS r (spend, prompt_tokens, completion_tokens, total_tokens, start_us, duration_us,"
    "    ttfb_us, status, request_id, call_type, api_key, model_group, model_id, api_base,"
    "    user_id, team_id, err_type, message)"
    "), ins AS ("
    "  INSERT INTO \"LiteLLM_SpendLogs\" (request_id, call_type, api_key, spend,"
    "    total_tokens, prompt_tokens, completion_tokens, \"startTime\", \"endTime\","
    "    request_duration_ms, \"completionStartTime\", model, model_id, model_group,"
    "    api_base, \"user\", team_id, status)"
    "  SELECT request_id, call_type, api_key, spend, total_tokens, prompt_tokens,"
    "    completion_tokens,"
    "    timestamp 'epoch' + start_us * interval '1 microsecond',"
    "    timestamp 'epoch' + (start_us + duration_us) * interval '1 microsecond',"
    "    duration_us / 1000,"
    "    CASE WHEN ttfb_us > 0"
    "      THEN timestamp 'epoch' + (start_us + ttfb_us) * interval '1 microsecond' END,"
    "    model_group, model_id, model_group, api_base, user_id, NULLIF (team_id, ''),"
    "    CASE WHEN status < 400 THEN 'success' ELSE 'failure' END"
    "  FROM rows ON CONFLICT (request_id) DO NOTHING"
    "  RETURNING request_id, api_key, spend, \"user\", team_id"
    "), keys AS ("
    "  UPDATE \"LiteLLM_VerificationToken\" t SET spend = t.spend + s.total"
    "  FROM (SELECT api_key, sum (spend) AS total FROM ins WHERE api_key <> ''"
    "        GROUP BY api_key) s WHERE t.token = s.api_key RETURNING 1"
    "), users AS ("
    "  UPDATE \"LiteLLM_UserTable\" u SET spend = u.spend + s.total"
    "  FROM (SELECT \"user\", sum (spend) AS total FROM ins WHERE \"user\" <> ''"
    "        GROUP BY \"user\") s WHERE u.user_id = s.\"user\" RETURNING 1"
    "), teams AS ("
    "  UPDATE \"LiteLLM_TeamTable\" m SET spend = m.spend + s.total"
    "  FROM (SELECT team_id, sum (spend) AS total FROM ins WHERE team_id IS NOT NULL"
    "        GROUP BY team_id) s WHERE m.team_id = s.team_id RETURNING 1"
    "), errors AS ("
    "  INSERT INTO \"LiteLLM_ErrorLogs\" (request_id, \"startTime\", \"endTime\", api_base,"
    "    model_group, litellm_model_name, model_id, exception_type, exception_string,"
    "    status_code)"
    "  SELECT r.request_id,"
    "    timestamp 'epoch' + r.start_us * interval '1 microsecond',"
    "    timestamp 'epoch' + (r.start_us + r.duration_us) * interval '1 microsecond',"
    "    r.api_base, r.model_group, r.model_group, r.model_id, r.err_type, r.message,"
    "    r.status::text"
    "  FROM rows r JOIN ins USING (request_id)"
    "  WHERE r.status >= 400 AND NOT $19::boolean"
    "  ON CONFLICT (request_id) DO NOTHING RETURNING 1"
    "), counted AS (SELECT count (*) AS n FROM ins)"
    //  Frontends reload spend when this commits (zg_keystore.h); a batch
    //  of records already written changes nothing and tells nobody
    " SELECT n, CASE WHEN n > 0 THEN pg_notify ('zgate_spend', '') END FROM counted";

static int64_t
s_now_ms (void)
{
    return zclock_mono ();
}

static zg_msg_text_t
s_call_type (int route)
{
    switch (route) {
        case ZG_ROUTE_COMPLETIONS: return (zg_msg_text_t) { "atext_completion", 16 };
        case ZG_ROUTE_EMBEDDINGS:  return (zg_msg_text_t) { "aembedding", 10 };
        default:                   return (zg_msg_text_t) { "acompletion", 11 };
    }
}

//  Network byte order, as the binary format has every integer
static inline void
s_put_be (char *out, uint64_t value, int bytes)
{
    for (int index = bytes - 1; index >= 0; index--) {
        out [index] = (char) (value & 0xff);
        value >>= 8;
    }
}

//  Room for more bytes at the end of a column, whose first bytes are
//  kept for its header
static int
s_column_room (column_t *column, size_t more)
{
    if (column->data && column->size - column->used >= more)
        return 0;
    size_t used = column->data? column->used: S_ARRAY_HEADER;
    size_t grown = column->size? column->size * 2: 16384;
    while (grown - used < more)
        grown *= 2;
    char *data = (char *) realloc (column->data, grown);
    if (!data)
        return -1;
    column->data = data;
    column->used = used;
    column->size = grown;
    return 0;
}

//  An element: its length, then its bytes
static inline void
s_column_number (column_t *column, uint64_t value, int bytes)
{
    s_put_be (column->data + column->used, (uint64_t) bytes, 4);
    s_put_be (column->data + column->used + 4, value, bytes);
    column->used += 4 + (size_t) bytes;
}

//  int8 columns hold what fits; what would not is clamped, and still
//  refused by the statement's range checks, as its JSON text was
static inline uint64_t
s_int8 (uint64_t value)
{
    return value > INT64_MAX? INT64_MAX: value;
}

//  A string, its bytes made valid UTF-8 as a JSON literal's read back
//  (PostgreSQL refuses anything else); the column has room for three
//  times its bytes
static inline void
s_column_text (column_t *column, zg_msg_text_t value)
{
    int length = zg_json_utf8_copy (value.text, value.length, column->data + column->used + 4,
                                    3 * value.length);
    assert (length >= 0);
    s_put_be (column->data + column->used, (uint64_t) length, 4);
    column->used += 4 + (size_t) length;
}

//  Adds the record as a row, a value at the end of each column: 0, or -1
//  (out of memory) with the rows the batch had
static int
s_batch_add (batch_t *self, const zg_msg_spend_t *record)
{
    zg_msg_text_t texts [S_COLUMNS - S_REQUEST_ID] = {
        record->call_id, s_call_type (record->route), record->key_hash, record->model,
        record->deployment_id, record->api_base, record->user_id, record->team_id,
        record->err_type, record->message
    };
    column_t *columns = self->columns;
    for (int index = 0; index < S_REQUEST_ID; index++)
        if (s_column_room (&columns [index], 4 + 8))
            return -1;
    for (int index = S_REQUEST_ID; index < S_COLUMNS; index++)
        if (s_column_room (&columns [index], 4 + 3 * texts [index - S_REQUEST_ID].length))
            return -1;
    double cost = isfinite (record->cost) && record->cost > 0? record->cost: 0;
    uint64_t cost_bits;
    memcpy (&cost_bits, &cost, sizeof (cost_bits));
    s_column_number (&columns [S_SPEND], cost_bits, 8);
    s_column_number (&columns [S_PROMPT_TOKENS], record->prompt_tokens, 8);
    s_column_number (&columns [S_COMPLETION_TOKENS], record->completion_tokens, 8);
    s_column_number (&columns [S_TOTAL_TOKENS], record->total_tokens, 8);
    s_column_number (&columns [S_START_US], s_int8 (record->start_us), 8);
    s_column_number (&columns [S_DURATION_US], s_int8 (record->duration_us), 8);
    s_column_number (&columns [S_TTFB_US], s_int8 (record->ttfb_us), 8);
    s_column_number (&columns [S_STATUS], record->status, 4);
    for (int index = S_REQUEST_ID; index < S_COLUMNS; index++)
        s_column_text (&columns [index], texts [index - S_REQUEST_ID]);
    return 0;
}

//  The columns, rows long each (at least one), as the statement's
//  parameters: values[S_COLUMNS] and lengths[S_COLUMNS]
static void
s_batch_params (batch_t *self, size_t rows, const char **values, int *lengths)
{
    assert (rows > 0);
    for (int index = 0; index < S_COLUMNS; index++) {
        column_t *column = &self->columns [index];
        assert (column->data);
        s_put_be (column->data, 1, 4);
        s_put_be (column->data + 4, 0, 4);
        s_put_be (column->data + 8, s_column_type [index], 4);
        s_put_be (column->data + 12, rows, 4);
        s_put_be (column->data + 16, 1, 4);
        values [index] = column->data;
        lengths [index] = (int) column->used;
    }
}

//  Empty again, memory kept for the next rows
static void
s_batch_clear (batch_t *self)
{
    for (int index = 0; index < S_COLUMNS; index++)
        if (self->columns [index].data)
            self->columns [index].used = S_ARRAY_HEADER;
}

static void
s_batch_free (batch_t *self)
{
    for (int index = 0; index < S_COLUMNS; index++) {
        free (self->columns [index].data);
        self->columns [index] = (column_t) { NULL, 0, 0 };
    }
}

static uint64_t
s_get_be (const char *data, int bytes)
{
    uint64_t value = 0;
    for (int index = 0; index < bytes; index++)
        value = (value << 8) | (uint8_t) data [index];
    return value;
}

//  Where a row's element of a column starts (its length first) and where
//  the next one starts, in a batch built by s_batch_add
static size_t
s_batch_skip (const column_t *column, size_t at, size_t rows)
{
    for (size_t row = 0; row < rows; row++)
        at += 4 + (size_t) s_get_be (column->data + at, 4);
    return at;
}

//  The rows first to first + count - 1 of a batch, as a new batch (empty
//  on entry): 0, or -1 (out of memory)
static int
s_batch_slice (const batch_t *from, size_t first, size_t count, batch_t *to)
{
    for (int index = 0; index < S_COLUMNS; index++) {
        const column_t *source = &from->columns [index];
        size_t start = s_batch_skip (source, S_ARRAY_HEADER, first);
        size_t end = s_batch_skip (source, start, count);
        column_t *target = &to->columns [index];
        if (s_column_room (target, end - start))
            return -1;
        memcpy (target->data + target->used, source->data + start, end - start);
        target->used += end - start;
    }
    return 0;
}

//  A number of the first row of a batch
static uint64_t
s_batch_number (const batch_t *self, int column)
{
    const char *data = self->columns [column].data + S_ARRAY_HEADER;
    return s_get_be (data + 4, (int) s_get_be (data, 4));
}

//  A string of the first row of a batch, as a C string (NULL: out of
//  memory), which the caller frees
static char *
s_batch_string (const batch_t *self, int column)
{
    const char *data = self->columns [column].data + S_ARRAY_HEADER;
    size_t length = (size_t) s_get_be (data, 4);
    char *string = (char *) malloc (length + 1);
    if (string) {
        memcpy (string, data + 4, length);
        string [length] = 0;
    }
    return string;
}

void
zg_spend_endpoint (const char *run_dir, char *endpoint, size_t size)
{
    snprintf (endpoint, size, "ipc://%s/spend.ipc", run_dir? run_dir: "/tmp");
}

static peer_t *s_peer_find (spend_t *self, zframe_t *identity, int64_t now);

static void
s_peer_destroy (void **item)
{
    peer_t *peer = (peer_t *) *item;
    zframe_destroy (&peer->identity);
    free (peer->key);
    free (peer);
    *item = NULL;
}

//  The router these bytes identify: records come in runs, mostly from the
//  one heard last, which is then found without a copy of its identity
static peer_t *
s_peer_touch (spend_t *self, const void *identity, size_t size, int64_t now)
{
    if (self->last_peer && zframe_size (self->last_peer->identity) == size
    &&  memcmp (zframe_data (self->last_peer->identity), identity, size) == 0) {
        self->last_peer->last_heard = now;
        return self->last_peer;
    }
    zframe_t *frame = zframe_new (identity, size);
    peer_t *peer = frame ? s_peer_find (self, frame, now) : NULL;
    zframe_destroy (&frame);
    if (peer)
        self->last_peer = peer;
    return peer;
}

static peer_t *
s_peer_find (spend_t *self, zframe_t *identity, int64_t now)
{
    char *key = zframe_strhex (identity);
    if (!key)
        return NULL;
    peer_t *peer = (peer_t *) zhashx_lookup (self->peers, key);
    if (peer) {
        free (key);
        peer->last_heard = now;
        return peer;
    }
    peer = (peer_t *) calloc (1, sizeof (peer_t));
    if (!peer) {
        free (key);
        return NULL;
    }
    peer->identity = zframe_dup (identity);
    peer->key = key;
    peer->last_heard = now;
    zhashx_insert (self->peers, key, peer);
    return peer;
}

static void
s_send_to (spend_t *self, peer_t *peer, int type, uint64_t seq)
{
    zg_msg_t *out = &self->msg;
    zg_msg_reset (out, type);
    out->routing_id = zframe_dup (peer->identity);
    if (type == ZG_MSG_HEARTBEAT) {
        ZG_MSG_SET (out->name, "spend");
        out->pid = (uint32_t) getpid ();
    }
    out->seq = seq;
    if (zg_msg_send (out, zsock_resolve (self->socket)))
        zg_debug ("cannot send %s to a router", zg_msg_type_name (type));
    zg_msg_reset (out, 0);
}

//  Adds the record to the batch
static int
s_hold (spend_t *self, const zg_msg_spend_t *record)
{
    if (s_batch_add (&self->batch, record))
        return -1;
    self->held++;
    return 0;
}

#define S_RECV_NONE 1

//  The next message if one is waiting, without asking the socket first
//  (ZMQ_EVENTS polls its mailbox: a system call per message), as its
//  identity and header frame (both initialised by the caller, who closes
//  them): ZG_MSG_OK, S_RECV_NONE when none is waiting, ZG_MSG_ERR_IO, or
//  ZG_MSG_ERR_MALFORMED for what is not an identity and one header frame
//  (consumed, dropped)
static int
s_recv (spend_t *self, zmq_msg_t *identity, zmq_msg_t *header)
{
    void *handle = zsock_resolve (self->socket);
    if (zmq_msg_recv (identity, handle, ZMQ_DONTWAIT) < 0)
        return zmq_errno () == EAGAIN ? S_RECV_NONE : ZG_MSG_ERR_IO;
    //  The frames of one message arrive together: the rest is there
    if (!zmq_msg_more (identity) || zmq_msg_recv (header, handle, 0) < 0)
        return ZG_MSG_ERR_MALFORMED;
    if (!zmq_msg_more (header))
        return ZG_MSG_OK;
    zmq_msg_t rest;
    zmq_msg_init (&rest);
    while (zmq_msg_recv (&rest, handle, 0) >= 0 && zmq_msg_more (&rest))
        ;
    zmq_msg_close (&rest);
    return ZG_MSG_ERR_MALFORMED;
}

//  The router's promise: everything unacked follows, oldest first
static void
s_on_heartbeat (spend_t *self, peer_t *peer)
{
    peer->synced = true;
    peer->disconnect_sent = false;
    peer->resync = false;
    peer->expect_any = true;
    s_send_to (self, peer, ZG_MSG_HEARTBEAT, 0);
}

//  One record of a router
static void
s_on_spend (spend_t *self, peer_t *peer, const zg_msg_spend_t *in, int64_t now)
{
    //  Every seq up to last_seq is held or committed: a re-sent one
    //  is already taken care of
    if (peer->synced && in->seq > 0 && in->seq <= peer->last_seq && !peer->expect_any)
        return;
    bool in_order = peer->synced && in->seq > 0
                 && (peer->expect_any || in->seq == peer->last_seq + 1);
    bool room = self->held < HELD_RECORDS_MAX;
    if (in_order && peer->expect_any && in->seq <= peer->last_seq) {
        //  The re-sent run begins with what we have: skip to the new
        peer->expect_any = false;
        return;
    }
    if (in_order && room && s_hold (self, in) == 0) {
        if (self->held == 1)
            self->first_held_at = now;
        peer->expect_any = false;
        peer->last_seq = in->seq;
        if (in->seq > peer->held_max)
            peer->held_max = in->seq;
    }
    else {
        //  A gap would make a later cumulative ack cover a record we
        //  never saw: stop taking this router's records until it
        //  starts again from its oldest. When full, it is told so
        //  only once there is room again, or it would re-send in a loop.
        peer->synced = false;
        if (!room || peer->resync)
            peer->resync = true;
        else
        if (!peer->disconnect_sent) {
            peer->disconnect_sent = true;
            s_send_to (self, peer, ZG_MSG_DISCONNECT, 0);
        }
    }
}

//  Takes one waiting message, every record of a run (zg_msg.h) in turn;
//  false when none was waiting
static bool
s_on_message (spend_t *self, int64_t now)
{
    zmq_msg_t identity, header;
    zmq_msg_init (&identity);
    zmq_msg_init (&header);
    int rc = s_recv (self, &identity, &header);
    if (rc == ZG_MSG_OK) {
        peer_t *peer = s_peer_touch (self, zmq_msg_data (&identity), zmq_msg_size (&identity), now);
        const uint8_t *data = (const uint8_t *) zmq_msg_data (&header);
        size_t left = zmq_msg_size (&header), used;
        //  Once, even for an empty frame: that is malformed too. Records
        //  are read in place (rendered, never kept); anything else whole.
        do {
            if (!peer)
                break;
            zg_msg_spend_t spend;
            if (zg_msg_read_spend (&spend, data, left, &used) == ZG_MSG_OK)
                s_on_spend (self, peer, &spend, now);
            else
            if (zg_msg_decode_first (&self->msg, data, left, &used) == ZG_MSG_OK) {
                if (self->msg.type == ZG_MSG_HEARTBEAT)
                    s_on_heartbeat (self, peer);
            }
            else {
                rc = ZG_MSG_ERR_MALFORMED;
                break;
            }
            data += used;
            left -= used;
        } while (left);
    }
    if (rc == ZG_MSG_ERR_MALFORMED)
        zg_warning ("spend: dropped a malformed message");
    zmq_msg_close (&header);
    zmq_msg_close (&identity);
    return rc == ZG_MSG_OK || rc == ZG_MSG_ERR_MALFORMED;
}

static void
s_db_drop (spend_t *self)
{
    zg_db_destroy (&self->db);
}

static int
s_db_ready (spend_t *self, char *errbuf, size_t errsize)
{
    if (self->db && zg_db_ready (self->db))
        return 0;
    s_db_drop (self);
    self->db = zg_db_connect (self->url, errbuf, errsize);
    return self->db? 0: -1;
}

//  The master key's row, so that its spend has somewhere to go
static int
s_upsert_master_key (spend_t *self, char *errbuf, size_t errsize)
{
    const char *key = self->config->master_key;
    if (!key || !*key)
        return 0;
    char hash [2 * ZG_SHA256_SIZE + 1];
    zg_sha256_hex (key, strlen (key), hash);
    size_t length = strlen (key);
    char name [32];
    snprintf (name, sizeof name, "sk-...%s", length >= 4? key + length - 4: key);
    const char *params [] = { hash, name };
    return zg_db_command (self->db,
        "INSERT INTO \"LiteLLM_VerificationToken\" (token, key_name, user_id)"
        " VALUES ($1, $2, 'default_user_id') ON CONFLICT (token) DO NOTHING",
        2, params, errbuf, errsize);
}

static void
s_failed (spend_t *self, const char *errbuf, int64_t now)
{
    if (!self->outage) {
        char redacted [512];
        zg_db_url_redact (self->url, redacted, sizeof redacted);
        zg_error ("spend: cannot write to the database at %s: %s; holding %zu records and retrying",
                  redacted, errbuf, self->held);
        self->outage = true;
    }
    s_db_drop (self);
    self->retry_ms = self->retry_ms? self->retry_ms * 2: RETRY_FIRST_MS;
    if (self->retry_ms > RETRY_MAX_MS)
        self->retry_ms = RETRY_MAX_MS;
    self->retry_at = now + self->retry_ms;
}

static void
s_succeeded (spend_t *self)
{
    if (self->outage)
        zg_info ("spend: the database is back");
    self->outage = false;
    self->retry_ms = 0;
    self->retry_at = 0;
}

//  A failed statement whose rows, not the database, are at fault: a value
//  a column refuses (class 22: out of range, bad encoding...), a
//  constraint (23), a row beyond a limit (54), on a connection still up.
//  Anything else (connection lost, server shutting down: 08, 57P0x; no
//  table yet...) is an outage: the batch is kept and tried again.
static bool
s_refused_by_data (spend_t *self)
{
    if (!self->db || !zg_db_ready (self->db))
        return false;
    const char *sqlstate = zg_db_sqlstate (self->db);
    return strncmp (sqlstate, "22", 2) == 0 || strncmp (sqlstate, "23", 2) == 0
        || strncmp (sqlstate, "54", 2) == 0;
}

//  The exception_type of a spend record the database refused, in
//  "LiteLLM_ErrorLogs"
#define S_REFUSED_TYPE  "SpendLogRefused"

//  A record the database refuses (a one-row batch) is not lost: it goes
//  to "LiteLLM_ErrorLogs" under its call id (its times there are when it
//  was refused: its own may be what was refused), with every value of the
//  record and the reason in exception_string, and to the log. Keyed by
//  call id, so a record refused twice is kept once. 0, or -1 (with errbuf)
//  when the database is away: the batch is then tried again, whole.
static int
s_put_aside (spend_t *self, const batch_t *record, const char *reason, char *errbuf,
             size_t errsize)
{
    char *texts [S_COLUMNS] = { NULL };
    bool complete = true;
    for (int index = S_REQUEST_ID; index < S_COLUMNS; index++)
        complete = (texts [index] = s_batch_string (record, index)) && complete;
    double spend;
    uint64_t spend_bits = s_batch_number (record, S_SPEND);
    memcpy (&spend, &spend_bits, sizeof (spend));
    char *details = complete? zsys_sprintf (
        "the database refused this call's spend record (%s): spend %.17g, prompt_tokens %" PRIu64
        ", completion_tokens %" PRIu64 ", total_tokens %" PRIu64 ", start_us %" PRIu64
        ", duration_us %" PRIu64 ", ttfb_us %" PRIu64 ", status %" PRIu64 ", call_type %s,"
        " api_key %s, model %s, model_id %s, api_base %s, user %s, team %s, error %s: %s",
        reason, spend, s_batch_number (record, S_PROMPT_TOKENS),
        s_batch_number (record, S_COMPLETION_TOKENS), s_batch_number (record, S_TOTAL_TOKENS),
        s_batch_number (record, S_START_US), s_batch_number (record, S_DURATION_US),
        s_batch_number (record, S_TTFB_US), s_batch_number (record, S_STATUS),
        texts [S_CALL_TYPE], texts [S_API_KEY], texts [S_MODEL_GROUP], texts [S_MODEL_ID],
        texts [S_API_BASE], texts [S_USER_ID], texts [S_TEAM_ID], texts [S_ERR_TYPE],
        texts [S_MESSAGE]): NULL;
    int rc = 0;
    if (!details)
        zg_error ("spend: the database refused a spend record (%s) and there is no memory"
                  " to keep it", reason);
    else
    if (self->config->disable_error_logs)
        zg_error ("spend: call %s: %s; not written (disable_error_logs is set)",
                  texts [S_REQUEST_ID], details);
    else {
        char status [16];
        snprintf (status, sizeof status, "%" PRIu64, s_batch_number (record, S_STATUS));
        const char *params [] = {
            texts [S_REQUEST_ID], texts [S_API_BASE], texts [S_MODEL_GROUP], texts [S_MODEL_ID],
            details, status
        };
        char error [512] = "";
        rc = zg_db_command (self->db,
            "INSERT INTO \"LiteLLM_ErrorLogs\" (request_id, api_base, model_group,"
            "  litellm_model_name, model_id, exception_type, exception_string, status_code)"
            " VALUES ($1, $2, $3, $3, $4, '" S_REFUSED_TYPE "', $5, $6)"
            " ON CONFLICT (request_id) DO NOTHING", 6, params, error, sizeof error);
        if (rc == 0)
            zg_error ("spend: call %s: %s; kept in LiteLLM_ErrorLogs as " S_REFUSED_TYPE,
                      texts [S_REQUEST_ID], details);
        else
        if (s_refused_by_data (self)) {
            zg_error ("spend: call %s: %s; not written, and refused by LiteLLM_ErrorLogs too: %s",
                      texts [S_REQUEST_ID], details, error);
            rc = 0;
        }
        else
            snprintf (errbuf, errsize, "%s", error);
    }
    zstr_free (&details);
    for (int index = S_REQUEST_ID; index < S_COLUMNS; index++)
        free (texts [index]);
    return rc;
}

//  Writes rows of a batch in one statement; if the database refuses one
//  of them (s_refused_by_data), the two halves in turn, down to the row
//  refused, which is put aside: every other row is written, at the cost
//  of twice the log of the rows in statements per row refused. Each
//  statement commits on its own: a part written before an outage is
//  written again with the rest, and adds nothing (ON CONFLICT on the call
//  id). 0, or -1 with errbuf (the database is away, or no memory).
static int
s_write_rows (spend_t *self, batch_t *batch, size_t rows, size_t *inserted, size_t *refused,
              char *errbuf, size_t errsize)
{
    const char *values [S_COLUMNS + 1];
    int lengths [S_COLUMNS + 1];
    s_batch_params (batch, rows, values, lengths);
    values [S_COLUMNS] = self->config->disable_error_logs? "\1": "\0";
    lengths [S_COLUMNS] = 1;
    PGresult *result = zg_db_exec_binary (self->db, s_write_sql, S_COLUMNS + 1, values, lengths,
                                          errbuf, errsize);
    if (result) {
        *inserted += (size_t) atol (PQgetvalue (result, 0, 0));
        PQclear (result);
        return 0;
    }
    if (!s_refused_by_data (self))
        return -1;
    if (rows == 1) {
        char reason [512];
        snprintf (reason, sizeof reason, "%s", errbuf);
        if (s_put_aside (self, batch, reason, errbuf, errsize))
            return -1;
        (*refused)++;
        return 0;
    }
    size_t first [2] = { 0, rows / 2 };
    size_t count [2] = { rows / 2, rows - rows / 2 };
    for (int part = 0; part < 2; part++) {
        batch_t half = { 0 };
        int rc = s_batch_slice (batch, first [part], count [part], &half);
        if (rc)
            snprintf (errbuf, errsize, "out of memory");
        else
            rc = s_write_rows (self, &half, count [part], inserted, refused, errbuf, errsize);
        s_batch_free (&half);
        if (rc)
            return -1;
    }
    return 0;
}

//  Writes what is held in one statement, but for the records the database
//  refuses, put aside; acks each router after the commit
static int
s_write (spend_t *self, int64_t now)
{
    char errbuf [512] = "";
    if (s_db_ready (self, errbuf, sizeof errbuf)) {
        s_failed (self, errbuf, now);
        return -1;
    }
    if (!self->master_key_done) {
        if (s_upsert_master_key (self, errbuf, sizeof errbuf)) {
            s_failed (self, errbuf, now);
            return -1;
        }
        self->master_key_done = true;
    }
    if (self->held == 0) {
        s_succeeded (self);
        return 0;
    }
    size_t inserted = 0, refused = 0;
    if (s_write_rows (self, &self->batch, self->held, &inserted, &refused,
                      errbuf, sizeof errbuf)) {
        s_failed (self, errbuf, now);
        return -1;
    }
    if (refused)
        zg_warning ("spend: the database refused %zu of %zu records, put aside; wrote the others",
                    refused, self->held);
    zg_debug ("spend: wrote %zu new of %zu records", inserted, self->held);
    s_succeeded (self);
    s_batch_clear (&self->batch);
    self->held = 0;
    for (peer_t *peer = (peer_t *) zhashx_first (self->peers); peer;
         peer = (peer_t *) zhashx_next (self->peers))
        if (peer->held_max) {
            s_send_to (self, peer, ZG_MSG_SPEND_ACK, peer->held_max);
            peer->held_max = 0;
        }
    return 0;
}

static bool
s_write_due (spend_t *self, int64_t now)
{
    if (self->retry_at && now < self->retry_at)
        return false;
    if (self->held >= BATCH_RECORDS)
        return true;
    return self->held && now - self->first_held_at >= self->interval_ms;
}

static void
s_heartbeat (spend_t *self, int64_t now)
{
    zlistx_t *forget = NULL;
    for (peer_t *peer = (peer_t *) zhashx_first (self->peers); peer;
         peer = (peer_t *) zhashx_next (self->peers)) {
        if (peer->held_max == 0 && now - peer->last_heard > PEER_FORGET_MS) {
            if (!forget)
                forget = zlistx_new ();
            if (forget)
                zlistx_add_end (forget, peer->key);
        }
        else
        if (peer->synced)
            s_send_to (self, peer, ZG_MSG_HEARTBEAT, 0);
        else
        if (peer->resync && self->held < HELD_RECORDS_MAX) {
            peer->resync = false;
            peer->disconnect_sent = true;
            s_send_to (self, peer, ZG_MSG_DISCONNECT, 0);
        }
    }
    if (forget) {
        self->last_peer = NULL;
        for (char *key = (char *) zlistx_first (forget); key; key = (char *) zlistx_next (forget))
            zhashx_delete (self->peers, key);
        zlistx_destroy (&forget);
    }
    self->next_heartbeat = now + self->heartbeat_ms;
}

int
zg_spend_run (const zg_config_t *config, const char *endpoint)
{
    assert (config && endpoint);
    if (!config->database_url || !*config->database_url) {
        zg_error ("spend: no database_url configured");
        return 1;
    }
    spend_t self;
    memset (&self, 0, sizeof self);
    self.config = config;
    self.url = config->database_url;
    self.interval_ms = config->proxy_batch_write_at > 0
                     ? (int64_t) (config->proxy_batch_write_at * 1000): 10000;
    self.heartbeat_ms = config->heartbeat_ms > 0? config->heartbeat_ms: 1000;
    self.peers = zhashx_new ();
    self.socket = zsock_new (ZMQ_ROUTER);
    if (!self.peers || !self.socket) {
        zhashx_destroy (&self.peers);
        zsock_destroy (&self.socket);
        return 1;
    }
    zhashx_set_destructor (self.peers, s_peer_destroy);
    zg_msg_init (&self.msg, 0);
    zsock_set_router_mandatory (self.socket, 0);
    zsock_set_sndhwm (self.socket, 100000);
    zsock_set_rcvhwm (self.socket, 100000);
    int rc = 0;
    if (zsock_bind (self.socket, "%s", endpoint) < 0) {
        zg_error ("spend: cannot bind %s: %s", endpoint, zmq_strerror (zmq_errno ()));
        rc = 1;
    }
    else {
        zg_info ("spend: serving routers on %s", endpoint);
        if (s_write (&self, s_now_ms ()) == 0)
            zg_debug ("spend: database ready");
        zpoller_t *poller = zpoller_new (self.socket, NULL);
        self.next_heartbeat = s_now_ms () + self.heartbeat_ms;
        zg_scoreboard_t *board = zg_scoreboard_process ();
        int slot = zg_scoreboard_env_slot ("ZGATE_SLOT");
        zg_scoreboard_claim (board, slot, "spend");
        while (poller && !zsys_interrupted) {
            zg_scoreboard_beat (board, slot);
            int64_t now = s_now_ms ();
            int64_t wait = self.next_heartbeat - now;
            if (self.held) {
                int64_t due = self.first_held_at + self.interval_ms;
                if (self.retry_at > due)
                    due = self.retry_at;
                if (due - now < wait)
                    wait = due - now;
            }
            if (wait < 0)
                wait = 0;
            void *which = zpoller_wait (poller, (int) wait);
            if (which == NULL && zpoller_terminated (poller))
                break;
            now = s_now_ms ();
            if (which) {
                for (int count = 0; count < 1000; count++) {
                    if (!s_on_message (&self, now))
                        break;
                    if (self.held >= BATCH_RECORDS)
                        break;
                }
            }
            if (s_write_due (&self, now))
                s_write (&self, now);
            if (now >= self.next_heartbeat)
                s_heartbeat (&self, now);
        }
        zpoller_destroy (&poller);
        //  Stopping: what is held is written if the database lets us
        const char *wait_env = getenv ("ZGATE_SPEND_STOP_WAIT_MS");
        int64_t wait_ms = wait_env && atol (wait_env) >= 0? atol (wait_env): STOP_WAIT_MS;
        int64_t give_up = s_now_ms () + wait_ms;
        while (self.held && s_now_ms () < give_up) {
            int64_t now = s_now_ms ();
            if (!self.retry_at || now >= self.retry_at)
                s_write (&self, now);
            else
                zclock_sleep ((int) (self.retry_at - now < 200? self.retry_at - now: 200));
        }
        if (self.held)
            zg_error ("spend: stopping with %zu records not written; their routers still hold them",
                      self.held);
    }
    s_db_drop (&self);
    zg_msg_reset (&self.msg, 0);
    zhashx_destroy (&self.peers);
    zsock_destroy (&self.socket);
    s_batch_free (&self.batch);
    return rc;
}


//  --------------------------------------------------------------------------
//  Self test

//  Adds the record as the spend actor does: encoded, read in place
static int
s_test_add (batch_t *batch, const zg_msg_t *record)
{
    static uint8_t frame [ZG_HEADER_MAX_BYTES];
    int length = zg_msg_encode (record, frame, sizeof frame);
    zg_msg_spend_t spend;
    size_t used;
    if (length <= 0
    ||  zg_msg_read_spend (&spend, frame, (size_t) length, &used) != ZG_MSG_OK
    ||  used != (size_t) length)
        return -2;
    return s_batch_add (batch, &spend);
}

static uint64_t
s_test_be (const uint8_t *data, int bytes)
{
    uint64_t value = 0;
    for (int index = 0; index < bytes; index++)
        value = (value << 8) | data [index];
    return value;
}

//  The element at row of a column as s_batch_params hands it out, after
//  every check of its header and of every element's length up to the end
typedef struct {
    const uint8_t *data;
    size_t         length;
} s_test_element_t;

static bool
s_test_element (const char *value, int length, int column, size_t rows, size_t row,
                s_test_element_t *element)
{
    const uint8_t *data = (const uint8_t *) value;
    if (length < S_ARRAY_HEADER
    ||  s_test_be (data, 4) != 1 || s_test_be (data + 4, 4) != 0
    ||  s_test_be (data + 8, 4) != s_column_type [column]
    ||  s_test_be (data + 12, 4) != rows || s_test_be (data + 16, 4) != 1)
        return false;
    size_t used = S_ARRAY_HEADER;
    for (size_t index = 0; index < rows; index++) {
        if ((size_t) length - used < 4)
            return false;
        size_t size = (size_t) s_test_be (data + used, 4);
        used += 4;
        if ((size_t) length - used < size)
            return false;
        if (index == row)
            *element = (s_test_element_t) { data + used, size };
        used += size;
    }
    return used == (size_t) length;
}

static bool
s_test_text_is (batch_t *batch, size_t rows, size_t row, int column, const char *text)
{
    const char *values [S_COLUMNS];
    int lengths [S_COLUMNS];
    s_batch_params (batch, rows, values, lengths);
    s_test_element_t element = { NULL, 0 };
    return s_test_element (values [column], lengths [column], column, rows, row, &element)
        && element.length == strlen (text) && memcmp (element.data, text, element.length) == 0;
}

static bool
s_test_number_is (batch_t *batch, size_t rows, size_t row, int column, uint64_t value)
{
    const char *values [S_COLUMNS];
    int lengths [S_COLUMNS];
    s_batch_params (batch, rows, values, lengths);
    s_test_element_t element = { NULL, 0 };
    size_t width = s_column_type [column] == S_INT4_OID? 4: 8;
    return s_test_element (values [column], lengths [column], column, rows, row, &element)
        && element.length == width && s_test_be (element.data, (int) width) == value;
}

static bool
s_test_spend_is (batch_t *batch, size_t rows, size_t row, double cost)
{
    uint64_t bits;
    memcpy (&bits, &cost, sizeof (bits));
    return s_test_number_is (batch, rows, row, S_SPEND, bits);
}

//  One number (or NULL as "") of a query on the test's own connection
static void
s_test_scalar (zg_db_t *db, const char *sql, char *out, size_t size)
{
    char errbuf [512];
    PGresult *result = zg_db_exec (db, sql, 0, NULL, errbuf, sizeof errbuf);
    snprintf (out, size, "%s", result && PQntuples (result) == 1? PQgetvalue (result, 0, 0):
                               errbuf);
    PQclear (result);
}

static bool
s_test_scalar_is (zg_db_t *db, const char *sql, const char *expected)
{
    char value [4096];
    s_test_scalar (db, sql, value, sizeof value);
    if (strcmp (value, expected))
        printf ("    %s: '%s', not '%s'\n", sql, value, expected);
    return strcmp (value, expected) == 0;
}

//  Holds a record as one a router sent
static int
s_test_hold (spend_t *self, zg_msg_t *record, const char *call_id)
{
    ZG_MSG_SET (record->call_id, call_id);
    if (s_test_add (&self->batch, record))
        return -1;
    self->held++;
    return 0;
}

//  The write path against the database ZG_TEST_DATABASE_URL names (a
//  throw-away one: tests/e2e/test_spend.py): records the database refuses
//  are put aside and every other record of their batch is written, once;
//  an outage keeps the batch whole
static void
s_test_live (zg_tally_t *tally, zg_msg_t *record, bool verbose)
{
#define S_LIVE_CHECK(condition) ZG_TALLY (*tally, condition)
    const char *url = getenv ("ZG_TEST_DATABASE_URL");
    if (!url || !*url) {
        if (verbose)
            printf ("   ZG_TEST_DATABASE_URL is not set: no live tests\n");
        return;
    }
    char errbuf [512];
    zg_migration_set_t *migrations = zg_migration_set_embedded (errbuf, sizeof errbuf);
    S_LIVE_CHECK (migrations
               && zg_migrate_apply (url, migrations, NULL, errbuf, sizeof errbuf) == 0);
    zg_migration_set_destroy (&migrations);
    zg_db_t *db = zg_db_connect (url, errbuf, sizeof errbuf);
    S_LIVE_CHECK (db);
    if (!db)
        return;
    const char *key = "88dc28d0f030c55ed4ab77ed8faf098196cb1c05df778539800c9f1243fe6b4b";
    S_LIVE_CHECK (zg_db_command (db, "INSERT INTO \"LiteLLM_VerificationToken\" (token, spend)"
                                 " VALUES ('88dc28d0f030c55ed4ab77ed8faf098196cb1c05df778539800c9f"
                                 "1243fe6b4b', 0)", 0, NULL, errbuf, sizeof errbuf) == 0);
    zg_config_t config;
    memset (&config, 0, sizeof config);
    spend_t self;
    memset (&self, 0, sizeof self);
    self.config = &config;
    self.url = (char *) url;
    self.peers = zhashx_new ();
    S_LIVE_CHECK (self.peers);

    zg_msg_reset (record, ZG_MSG_SPEND);
    ZG_MSG_SET (record->key_hash, key);
    ZG_MSG_SET (record->model, "gpt-4o");
    ZG_MSG_SET (record->deployment_id, "d-1");
    ZG_MSG_SET (record->api_base, "http://127.0.0.1:1/v1");
    record->route = ZG_ROUTE_CHAT;
    record->status = 200;
    record->prompt_tokens = 10;
    record->completion_tokens = 8;
    record->total_tokens = 18;
    record->cost = 0.25;
    record->start_us = 1700000000000000ULL;
    record->duration_us = 1000;
    //  A batch of good records with two that the columns refuse: a count
    //  beyond INTEGER (as a worker before the counts were clamped sent,
    //  and as a router's spill file may still hold), a time beyond an
    //  interval's range; and a failed call, whose error row is written
    S_LIVE_CHECK (s_test_hold (&self, record, "good-1") == 0);
    S_LIVE_CHECK (s_test_hold (&self, record, "good-2") == 0);
    record->prompt_tokens = 3000000000U;
    S_LIVE_CHECK (s_test_hold (&self, record, "huge-tokens") == 0);
    record->prompt_tokens = 10;
    S_LIVE_CHECK (s_test_hold (&self, record, "good-3") == 0);
    record->start_us = UINT64_MAX;
    S_LIVE_CHECK (s_test_hold (&self, record, "far-future") == 0);
    record->start_us = 1700000000000000ULL;
    record->status = 500;
    ZG_MSG_SET (record->err_type, "InternalServerError");
    ZG_MSG_SET (record->message, "upstream failed");
    S_LIVE_CHECK (s_test_hold (&self, record, "failed-1") == 0);
    record->status = 200;
    ZG_MSG_SET (record->err_type, "");
    ZG_MSG_SET (record->message, "");
    for (int index = 4; index <= 9; index++) {
        char call_id [32];
        snprintf (call_id, sizeof call_id, "good-%d", index);
        S_LIVE_CHECK (s_test_hold (&self, record, call_id) == 0);
    }
    size_t held = self.held;
    S_LIVE_CHECK (s_write (&self, s_now_ms ()) == 0 && self.held == 0 && !self.outage);
    S_LIVE_CHECK (s_test_scalar_is (db, "SELECT string_agg (request_id, ',' ORDER BY request_id)"
                                    " FROM \"LiteLLM_SpendLogs\"",
                                    "failed-1,good-1,good-2,good-3,good-4,good-5,good-6,good-7,"
                                    "good-8,good-9"));
    S_LIVE_CHECK (s_test_scalar_is (db, "SELECT spend FROM \"LiteLLM_VerificationToken\""
                                    " WHERE token LIKE '88dc%'", "2.5"));
    S_LIVE_CHECK (s_test_scalar_is (db, "SELECT string_agg (request_id || ':' || exception_type"
                                    " || ':' || status_code, ',' ORDER BY request_id)"
                                    " FROM \"LiteLLM_ErrorLogs\"",
                                    "failed-1:InternalServerError:500,"
                                    "far-future:" S_REFUSED_TYPE ":200,"
                                    "huge-tokens:" S_REFUSED_TYPE ":200"));
    //  What was refused, why, and every value of the record
    S_LIVE_CHECK (s_test_scalar_is (db, "SELECT count (*) FROM \"LiteLLM_ErrorLogs\""
                                    " WHERE request_id = 'huge-tokens'"
                                    " AND exception_string LIKE '%SQLSTATE 22003%'"
                                    " AND exception_string LIKE '%prompt_tokens 3000000000,%'"
                                    " AND exception_string LIKE '%spend 0.25,%'"
                                    " AND exception_string LIKE '%api_key 88dc28d0%'"
                                    " AND model_group = 'gpt-4o' AND model_id = 'd-1'", "1"));
    S_LIVE_CHECK (s_test_scalar_is (db, "SELECT count (*) FROM \"LiteLLM_ErrorLogs\""
                                    " WHERE request_id = 'far-future'"
                                    " AND exception_string LIKE '%SQLSTATE 22008%'"
                                    " AND exception_string LIKE '%start_us 9223372036854775807,%'",
                                    "1"));
    //  The same records again (a router that missed the ack re-sends
    //  them): nothing is written or counted twice
    zg_msg_reset (record, ZG_MSG_SPEND);
    ZG_MSG_SET (record->key_hash, key);
    record->route = ZG_ROUTE_CHAT;
    record->status = 200;
    record->cost = 0.25;
    record->start_us = 1700000000000000ULL;
    record->prompt_tokens = 3000000000U;
    S_LIVE_CHECK (s_test_hold (&self, record, "huge-tokens") == 0);
    record->prompt_tokens = 10;
    S_LIVE_CHECK (s_test_hold (&self, record, "good-1") == 0);
    S_LIVE_CHECK (s_test_hold (&self, record, "good-10") == 0);
    S_LIVE_CHECK (s_write (&self, s_now_ms ()) == 0 && self.held == 0);
    S_LIVE_CHECK (s_test_scalar_is (db, "SELECT count (*) FROM \"LiteLLM_SpendLogs\"", "11"));
    S_LIVE_CHECK (s_test_scalar_is (db, "SELECT count (*) FROM \"LiteLLM_ErrorLogs\"", "3"));
    S_LIVE_CHECK (s_test_scalar_is (db, "SELECT spend FROM \"LiteLLM_VerificationToken\""
                                    " WHERE token LIKE '88dc%'", "2.75"));
    //  An error that is not the records' (no table) keeps the batch, as
    //  an outage does, until the table is back
    S_LIVE_CHECK (zg_db_command (db, "ALTER TABLE \"LiteLLM_SpendLogs\" RENAME TO spendlogs_away",
                                 0, NULL, errbuf, sizeof errbuf) == 0);
    S_LIVE_CHECK (s_test_hold (&self, record, "good-11") == 0);
    record->prompt_tokens = 3000000000U;
    S_LIVE_CHECK (s_test_hold (&self, record, "huge-2") == 0);
    record->prompt_tokens = 10;
    S_LIVE_CHECK (s_write (&self, s_now_ms ()) == -1 && self.held == 2 && self.outage);
    S_LIVE_CHECK (zg_db_command (db, "ALTER TABLE spendlogs_away RENAME TO \"LiteLLM_SpendLogs\"",
                                 0, NULL, errbuf, sizeof errbuf) == 0);
    S_LIVE_CHECK (s_write (&self, s_now_ms ()) == 0 && self.held == 0 && !self.outage);
    //  The connection lost (the server ends it): the batch is kept too
    S_LIVE_CHECK (s_test_hold (&self, record, "good-12") == 0);
    char sql [128];
    snprintf (sql, sizeof sql, "SELECT pg_terminate_backend (%d)",
              PQbackendPID (zg_db_handle (self.db)));
    S_LIVE_CHECK (zg_db_command (db, sql, 0, NULL, errbuf, sizeof errbuf) == 0);
    S_LIVE_CHECK (s_write (&self, s_now_ms ()) == -1 && self.held == 1 && self.outage);
    S_LIVE_CHECK (s_write (&self, s_now_ms ()) == 0 && self.held == 0 && !self.outage);
    S_LIVE_CHECK (s_test_scalar_is (db, "SELECT count (*) FROM \"LiteLLM_SpendLogs\""
                                    " WHERE request_id IN ('good-11', 'good-12')", "2"));
    S_LIVE_CHECK (s_test_scalar_is (db, "SELECT count (*) FROM \"LiteLLM_ErrorLogs\""
                                    " WHERE request_id = 'huge-2'", "1"));
    //  With error logs off, a refused record is in the log only
    config.disable_error_logs = true;
    record->prompt_tokens = 3000000000U;
    S_LIVE_CHECK (s_test_hold (&self, record, "huge-3") == 0);
    record->prompt_tokens = 10;
    S_LIVE_CHECK (s_test_hold (&self, record, "good-13") == 0);
    S_LIVE_CHECK (s_write (&self, s_now_ms ()) == 0 && self.held == 0);
    S_LIVE_CHECK (s_test_scalar_is (db, "SELECT count (*) FROM \"LiteLLM_ErrorLogs\""
                                    " WHERE request_id = 'huge-3'", "0"));
    S_LIVE_CHECK (s_test_scalar_is (db, "SELECT count (*) FROM \"LiteLLM_SpendLogs\""
                                    " WHERE request_id IN ('good-13', 'huge-3')", "1"));
    if (verbose)
        printf ("   live: %zu records, 2 refused and put aside, the others written\n", held);
    s_db_drop (&self);
    zhashx_destroy (&self.peers);
    s_batch_free (&self.batch);
    zg_db_destroy (&db);
}

void
zg_spend_test (bool verbose)
{
    printf (" * zg_spend: ");
    if (verbose)
        printf ("\n");
    zg_tally_t tally = { "zg_spend", 0, 0 };
#define S_CHECK(condition) ZG_TALLY (tally, condition)

    zg_msg_t *record = (zg_msg_t *) malloc (sizeof (zg_msg_t));
    if (!record)
        abort ();
    batch_t batch = { 0 };
    zg_msg_init (record, ZG_MSG_SPEND);
    ZG_MSG_SET (record->call_id, "call-1");
    ZG_MSG_SET (record->key_hash, "88dc28d0f030c55ed4ab77ed8faf098196cb1c05df778539800c9f1243fe6b4b");
    ZG_MSG_SET (record->model, "gpt \"quoted\"");
    ZG_MSG_SET (record->deployment_id, "d-1");
    ZG_MSG_SET (record->api_base, "http://127.0.0.1:8080/v1");
    ZG_MSG_SET (record->user_id, "u-1");
    ZG_MSG_SET (record->err_type, "RateLimitError");
    ZG_MSG_SET (record->message, "line\nbreak\ttab \\ caf\xc3\xa9");
    record->route = ZG_ROUTE_EMBEDDINGS;
    record->status = 429;
    record->prompt_tokens = 13;
    record->completion_tokens = 9;
    record->total_tokens = 22;
    record->cost = 0.1 + 0.2;
    record->start_us = 1700000000000000ULL;
    record->duration_us = 1234;
    record->ttfb_us = 567;
    //  Two rows: every column an array of two, numbers as their bytes (the
    //  spend the very double), strings as they came
    S_CHECK (s_test_add (&batch, record) == 0);
    ZG_MSG_SET (record->call_id, "call-2");
    record->route = ZG_ROUTE_CHAT;
    record->status = 200;
    record->cost = 13 * 2.5e-06 + 9 * 1e-05;
    ZG_MSG_SET (record->err_type, "");
    ZG_MSG_SET (record->message, "");
    S_CHECK (s_test_add (&batch, record) == 0);
    S_CHECK (s_test_spend_is (&batch, 2, 0, 0.1 + 0.2));
    S_CHECK (s_test_number_is (&batch, 2, 0, S_PROMPT_TOKENS, 13));
    S_CHECK (s_test_number_is (&batch, 2, 0, S_COMPLETION_TOKENS, 9));
    S_CHECK (s_test_number_is (&batch, 2, 0, S_TOTAL_TOKENS, 22));
    S_CHECK (s_test_number_is (&batch, 2, 0, S_START_US, 1700000000000000ULL));
    S_CHECK (s_test_number_is (&batch, 2, 0, S_DURATION_US, 1234));
    S_CHECK (s_test_number_is (&batch, 2, 0, S_TTFB_US, 567));
    S_CHECK (s_test_number_is (&batch, 2, 0, S_STATUS, 429));
    S_CHECK (s_test_text_is (&batch, 2, 0, S_REQUEST_ID, "call-1"));
    S_CHECK (s_test_text_is (&batch, 2, 0, S_CALL_TYPE, "aembedding"));
    S_CHECK (s_test_text_is (&batch, 2, 0, S_API_KEY, record->key_hash));
    S_CHECK (s_test_text_is (&batch, 2, 0, S_MODEL_GROUP, "gpt \"quoted\""));
    S_CHECK (s_test_text_is (&batch, 2, 0, S_MODEL_ID, "d-1"));
    S_CHECK (s_test_text_is (&batch, 2, 0, S_API_BASE, "http://127.0.0.1:8080/v1"));
    S_CHECK (s_test_text_is (&batch, 2, 0, S_USER_ID, "u-1"));
    S_CHECK (s_test_text_is (&batch, 2, 0, S_TEAM_ID, ""));
    S_CHECK (s_test_text_is (&batch, 2, 0, S_ERR_TYPE, "RateLimitError"));
    S_CHECK (s_test_text_is (&batch, 2, 0, S_MESSAGE, "line\nbreak\ttab \\ caf\xc3\xa9"));
    S_CHECK (s_test_spend_is (&batch, 2, 1, 13 * 2.5e-06 + 9 * 1e-05));
    S_CHECK (s_test_number_is (&batch, 2, 1, S_STATUS, 200));
    S_CHECK (s_test_text_is (&batch, 2, 1, S_REQUEST_ID, "call-2"));
    S_CHECK (s_test_text_is (&batch, 2, 1, S_CALL_TYPE, "acompletion"));
    S_CHECK (s_test_text_is (&batch, 2, 1, S_MESSAGE, ""));
    //  The statement takes each column as an array of its type, in order
    for (int column = 0; column < S_COLUMNS; column++) {
        char cast [32];
        uint32_t type = s_column_type [column];
        snprintf (cast, sizeof cast, "$%d::%s[]", column + 1,
                  type == S_FLOAT8_OID? "float8": type == S_INT8_OID? "int8":
                  type == S_INT4_OID? "int4": "text");
        S_CHECK (strstr (s_write_sql, cast));
    }
    S_CHECK (strstr (s_write_sql, "$19::boolean") && !strstr (s_write_sql, "$20"));
    //  Emptied, the next rows start again from the first
    s_batch_clear (&batch);
    ZG_MSG_SET (record->call_id, "call-3");
    record->route = ZG_ROUTE_COMPLETIONS;
    S_CHECK (s_test_add (&batch, record) == 0);
    S_CHECK (s_test_text_is (&batch, 1, 0, S_REQUEST_ID, "call-3"));
    S_CHECK (s_test_text_is (&batch, 1, 0, S_CALL_TYPE, "atext_completion"));
    //  A cost that is no spend is 0 (the codec refuses NaN: never sent)
    s_batch_clear (&batch);
    zg_msg_spend_t direct = { .cost = NAN };
    S_CHECK (s_batch_add (&batch, &direct) == 0);
    S_CHECK (s_test_spend_is (&batch, 1, 0, 0) && s_test_text_is (&batch, 1, 0, S_REQUEST_ID, ""));
    record->cost = -1;
    S_CHECK (s_test_add (&batch, record) == 0 && s_test_spend_is (&batch, 2, 1, 0));
    //  Bytes that are not UTF-8 read as U+FFFD, as in a JSON literal
    ZG_MSG_SET (record->message, "bad \xff end \xc3");
    S_CHECK (s_test_add (&batch, record) == 0
          && s_test_text_is (&batch, 3, 2, S_MESSAGE, "bad \xef\xbf\xbd" " end \xef\xbf\xbd"));
    //  Numbers at their maximum: an int8 column takes the largest it holds
    record->prompt_tokens = UINT32_MAX;
    record->duration_us = UINT64_MAX;
    record->status = 999;
    S_CHECK (s_test_add (&batch, record) == 0
          && s_test_number_is (&batch, 4, 3, S_PROMPT_TOKENS, UINT32_MAX)
          && s_test_number_is (&batch, 4, 3, S_DURATION_US, INT64_MAX)
          && s_test_number_is (&batch, 4, 3, S_STATUS, 999));
    //  A record at every maximum, every byte not UTF-8, many times over:
    //  the columns grow, and every row is whole
    memset (record->message, '\xff', ZG_MESSAGE_MAX);
    record->message [ZG_MESSAGE_MAX] = 0;
    memset (record->api_base, '\x80', ZG_URL_MAX);
    record->api_base [ZG_URL_MAX] = 0;
    size_t rows = 4;
    for (; rows < 40; rows++)
        S_CHECK (s_test_add (&batch, record) == 0);
    const char *values [S_COLUMNS];
    int lengths [S_COLUMNS];
    s_batch_params (&batch, rows, values, lengths);
    s_test_element_t element = { NULL, 0 };
    S_CHECK (s_test_element (values [S_MESSAGE], lengths [S_MESSAGE], S_MESSAGE, rows, rows - 1,
                             &element) && element.length == 3 * ZG_MESSAGE_MAX);
    S_CHECK (s_test_element (values [S_API_BASE], lengths [S_API_BASE], S_API_BASE, rows, rows - 1,
                             &element) && element.length == 3 * ZG_URL_MAX);
    S_CHECK (s_test_text_is (&batch, rows, 2, S_MESSAGE, "bad \xef\xbf\xbd" " end \xef\xbf\xbd"));
    char endpoint [64];
    zg_spend_endpoint ("/run", endpoint, sizeof endpoint);
    S_CHECK (streq (endpoint, "ipc:///run/spend.ipc"));

    //  A slice of a batch is its rows as they were
    s_batch_clear (&batch);
    zg_msg_reset (record, ZG_MSG_SPEND);
    record->route = ZG_ROUTE_CHAT;
    record->status = 200;
    for (int index = 0; index < 5; index++) {
        char call_id [16];
        snprintf (call_id, sizeof call_id, "call-%d", index);
        ZG_MSG_SET (record->call_id, call_id);
        record->prompt_tokens = (uint32_t) index;
        S_CHECK (s_test_add (&batch, record) == 0);
    }
    batch_t slice = { 0 };
    S_CHECK (s_batch_slice (&batch, 2, 3, &slice) == 0);
    S_CHECK (s_test_text_is (&slice, 3, 0, S_REQUEST_ID, "call-2")
          && s_test_text_is (&slice, 3, 2, S_REQUEST_ID, "call-4")
          && s_test_number_is (&slice, 3, 1, S_PROMPT_TOKENS, 3));
    s_batch_free (&slice);
    S_CHECK (s_batch_slice (&batch, 4, 1, &slice) == 0);
    S_CHECK (s_test_text_is (&slice, 1, 0, S_REQUEST_ID, "call-4")
          && s_batch_number (&slice, S_PROMPT_TOKENS) == 4);
    char *call_id = s_batch_string (&slice, S_REQUEST_ID);
    S_CHECK (call_id && streq (call_id, "call-4"));
    free (call_id);
    s_batch_free (&slice);

    s_test_live (&tally, record, verbose);

    s_batch_free (&batch);
    zg_msg_reset (record, 0);
    free (record);
    zg_tally_finish (&tally);
}
