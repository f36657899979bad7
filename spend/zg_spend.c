/*  =========================================================================
    zg_spend - writes the routers' spend records to the database

    A batch is one JSON array handed to PostgreSQL as a single parameter
    and unpacked there with json_to_recordset: one statement, so one
    transaction, whatever the number of rows, with no per-row round trip
    and no parameter limit. The statement's CTEs insert the rows (ON
    CONFLICT DO NOTHING on the call id), then add to the key, user and
    team totals the spend of what RETURNING reports as inserted: a record
    that was already written adds nothing. What PostgreSQL does per row is
    kept cheap: json (parsed once, never built into jsonb), times as whole
    microseconds added to the epoch (exact, where to_timestamp of a
    numeric division is not and costs more).

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
#include "common/zg_json.h"
#include "common/zg_number.h"
#include "common/zg_log.h"
#include "common/zg_scoreboard.h"
#include "common/zg_sha256.h"

#include <czmq.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

//  Records per write when they come fast
#define BATCH_RECORDS       500
//  Records held while the database is away; beyond, routers keep them
#define HELD_RECORDS_MAX    50000
#define RETRY_FIRST_MS      500
#define RETRY_MAX_MS        10000
//  On stop, how long to keep trying to write what is held
//  (ZGATE_SPEND_STOP_WAIT_MS overrides it)
#define STOP_WAIT_MS        15000
//  A router silent this long with nothing held is forgotten
#define PEER_FORGET_MS      60000
//  One rendered record is at most the sum of its fields, escaped
#define RECORD_MAX          (8 * ZG_MESSAGE_MAX + 4 * ZG_URL_MAX + 4096)

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

    char     *batch;            //  "[{...},{...}": the closing bracket goes on
                                //  only while it is written
    size_t    batch_used;
    size_t    batch_size;
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

static const char *s_write_sql =
    "WITH rows AS ("
    "  SELECT DISTINCT ON (request_id) * FROM json_to_recordset ($1::json) AS r ("
    "    request_id text, call_type text, api_key text, spend float8, prompt_tokens int,"
    "    completion_tokens int, total_tokens int, start_us bigint, duration_us bigint,"
    "    ttfb_us bigint, model_group text, model_id text, api_base text, user_id text,"
    "    team_id text, status int, err_type text, message text)"
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
    "  WHERE r.status >= 400 AND NOT $2::boolean"
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

//  Appends text to out; false if it does not fit with a NUL after it (the
//  NUL itself is written once, at the end of the record)
static inline bool
s_put_text (char *out, size_t size, size_t *used, const char *text, size_t length)
{
    if (*used + length + 1 > size)
        return false;
    memcpy (out + *used, text, length);
    *used += length;
    return true;
}

//  The ,"name": that leads a field, as a literal and its length, so that
//  a record's keys cost a copy each rather than a strlen and three copies
#define S_KEY(name) ",\"" name "\":", sizeof (",\"" name "\":") - 1

//  Appends the key (S_KEY) and <decimal>. A record is rendered for every
//  call, so its numbers are spelled here rather than by printf.
static bool
s_put_number (char *out, size_t size, size_t *used,
              const char *key, size_t key_length, uint64_t value)
{
    char digits [ZG_NUMBER_UINT_MAX];
    char *end = digits + sizeof (digits);
    char *start = zg_number_uint_text (value, end);
    return s_put_text (out, size, used, key, key_length)
        && s_put_text (out, size, used, start, (size_t) (end - start));
}

//  Appends the key (S_KEY) and <quoted value>
static bool
s_put_string (char *out, size_t size, size_t *used,
              const char *key, size_t key_length, zg_msg_text_t value)
{
    if (!s_put_text (out, size, used, key, key_length))
        return false;
    int written = zg_json_quote_n (value.text, value.length, out + *used, size - *used);
    if (written < 0)
        return false;
    *used += (size_t) written;
    return true;
}

int
zg_spend_render (const zg_msg_spend_t *record, char *out, size_t size)
{
    assert (record && out);
    double cost = isfinite (record->cost) && record->cost > 0? record->cost: 0;
    //  Digits that read back: PostgreSQL's float8 is the same double (17 of
    //  them, found in integer arithmetic, rather than the shortest)
    char spend [ZG_NUMBER_TEXT_MAX];
    int spend_length = zg_number_json_quick (cost, spend, sizeof (spend));
    size_t used = 0;
    if (spend_length < 0
    ||  !s_put_text (out, size, &used, "{\"spend\":", 9)
    ||  !s_put_text (out, size, &used, spend, (size_t) spend_length)
    ||  !s_put_number (out, size, &used, S_KEY ("prompt_tokens"), record->prompt_tokens)
    ||  !s_put_number (out, size, &used, S_KEY ("completion_tokens"), record->completion_tokens)
    ||  !s_put_number (out, size, &used, S_KEY ("total_tokens"), record->total_tokens)
    ||  !s_put_number (out, size, &used, S_KEY ("start_us"), record->start_us)
    ||  !s_put_number (out, size, &used, S_KEY ("duration_us"), record->duration_us)
    ||  !s_put_number (out, size, &used, S_KEY ("ttfb_us"), record->ttfb_us)
    ||  !s_put_number (out, size, &used, S_KEY ("status"), record->status)
    ||  !s_put_string (out, size, &used, S_KEY ("request_id"), record->call_id)
    ||  !s_put_string (out, size, &used, S_KEY ("call_type"), s_call_type (record->route))
    ||  !s_put_string (out, size, &used, S_KEY ("api_key"), record->key_hash)
    ||  !s_put_string (out, size, &used, S_KEY ("model_group"), record->model)
    ||  !s_put_string (out, size, &used, S_KEY ("model_id"), record->deployment_id)
    ||  !s_put_string (out, size, &used, S_KEY ("api_base"), record->api_base)
    ||  !s_put_string (out, size, &used, S_KEY ("user_id"), record->user_id)
    ||  !s_put_string (out, size, &used, S_KEY ("team_id"), record->team_id)
    ||  !s_put_string (out, size, &used, S_KEY ("err_type"), record->err_type)
    ||  !s_put_string (out, size, &used, S_KEY ("message"), record->message)
    ||  !s_put_text (out, size, &used, "}", 1))
        return -1;
    out [used] = 0;
    return (int) used;
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

//  Renders the record at the end of the batch, which keeps room for the
//  largest one
static int
s_hold (spend_t *self, const zg_msg_spend_t *record)
{
    //  The record (and the closing bracket and NUL) always fit
    size_t need = self->batch_used + 1 + RECORD_MAX + 2;
    if (need > self->batch_size) {
        size_t grown = self->batch_size? self->batch_size * 2: 65536;
        while (grown < need)
            grown *= 2;
        char *batch = (char *) realloc (self->batch, grown);
        if (!batch)
            return -1;
        if (!self->batch) {
            batch [0] = '[';
            self->batch_used = 1;
        }
        self->batch = batch;
        self->batch_size = grown;
    }
    size_t start = self->batch_used + (self->held? 1: 0);
    int size = zg_spend_render (record, self->batch + start, RECORD_MAX);
    if (size < 0) {
        self->batch [self->batch_used] = 0;
        return -1;
    }
    if (self->held)
        self->batch [self->batch_used] = ',';
    self->batch_used = start + (size_t) size;
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

//  Writes what is held in one statement; acks each router after the commit
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
    //  The batch is the parameter itself, closed for the call, so that its
    //  bytes are not copied once more before libpq copies them
    self->batch [self->batch_used] = ']';
    self->batch [self->batch_used + 1] = 0;
    const char *params [] = { self->batch, self->config->disable_error_logs? "true": "false" };
    PGresult *result = zg_db_exec (self->db, s_write_sql, 2, params, errbuf, sizeof errbuf);
    self->batch [self->batch_used] = 0;
    if (!result) {
        s_failed (self, errbuf, now);
        return -1;
    }
    zg_debug ("spend: wrote %s new of %zu records", PQgetvalue (result, 0, 0), self->held);
    PQclear (result);
    s_succeeded (self);
    self->batch_used = 1;
    self->batch [1] = 0;
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
    free (self.batch);
    return rc;
}


//  --------------------------------------------------------------------------
//  Self test

//  Renders the record as the spend actor does: encoded, read in place
static int
s_test_render (const zg_msg_t *record, char *out, size_t size)
{
    static uint8_t frame [ZG_HEADER_MAX_BYTES];
    int length = zg_msg_encode (record, frame, sizeof frame);
    zg_msg_spend_t spend;
    size_t used;
    if (length <= 0
    ||  zg_msg_read_spend (&spend, frame, (size_t) length, &used) != ZG_MSG_OK
    ||  used != (size_t) length)
        return -2;
    return zg_spend_render (&spend, out, size);
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
    char *out = (char *) malloc (RECORD_MAX);
    if (!record || !out)
        abort ();
    zg_msg_init (record, ZG_MSG_SPEND);
    ZG_MSG_SET (record->call_id, "call-1");
    ZG_MSG_SET (record->model, "gpt \"quoted\"");
    ZG_MSG_SET (record->message, "line\nbreak");
    record->route = ZG_ROUTE_EMBEDDINGS;
    record->status = 429;
    record->cost = 0.1 + 0.2;
    record->start_us = 1700000000000000ULL;
    int size = s_test_render (record, out, RECORD_MAX);
    S_CHECK (size > 0);
    S_CHECK (zg_json_valid (out, (size_t) size, NULL));
    zg_json_span_t span;
    char text [64];
    S_CHECK (zg_json_find (out, (size_t) size, "model_group", &span)
          && zg_json_string (out, &span, text, sizeof text) >= 0 && streq (text, "gpt \"quoted\""));
    double cost = 0;
    S_CHECK (zg_json_find (out, (size_t) size, "spend", &span)
          && zg_json_double (out, &span, &cost) && cost == 0.1 + 0.2);
    //  Digits that read back, as an integer and an exponent
    S_CHECK (strncmp (out, "{\"spend\":30000000000000004e-17,", 31) == 0);
    record->cost = 13 * 2.5e-06 + 9 * 1e-05;
    S_CHECK (s_test_render (record, out, RECORD_MAX) > 0
          && zg_json_find (out, strlen (out), "spend", &span)
          && zg_json_double (out, &span, &cost) && cost == 13 * 2.5e-06 + 9 * 1e-05);
    record->cost = 0.1 + 0.2;
    S_CHECK (zg_json_find (out, (size_t) size, "call_type", &span)
          && zg_json_string (out, &span, text, sizeof text) >= 0 && streq (text, "aembedding"));
    int64_t start = 0;
    S_CHECK (zg_json_find (out, (size_t) size, "start_us", &span)
          && zg_json_int64 (out, &span, &start) && start == 1700000000000000LL);
    int64_t number = -1;
    S_CHECK (zg_json_find (out, (size_t) size, "status", &span)
          && zg_json_int64 (out, &span, &number) && number == 429);
    S_CHECK (zg_json_find (out, (size_t) size, "ttfb_us", &span)
          && zg_json_int64 (out, &span, &number) && number == 0);
    record->prompt_tokens = UINT32_MAX;
    record->duration_us = UINT64_MAX;
    size = s_test_render (record, out, RECORD_MAX);
    S_CHECK (size > 0 && strstr (out, ",\"prompt_tokens\":4294967295,")
          && strstr (out, ",\"duration_us\":18446744073709551615,"));
    S_CHECK (s_test_render (record, out, (size_t) size + 1) == size);
    S_CHECK (s_test_render (record, out, (size_t) size) == -1);
    //  Too small a buffer is refused, never overrun
    S_CHECK (s_test_render (record, out, 16) == -1);
    //  A record at every maximum still fits
    memset (record->message, 'x', ZG_MESSAGE_MAX);
    record->message [ZG_MESSAGE_MAX] = 0;
    memset (record->api_base, '"', ZG_URL_MAX);
    record->api_base [ZG_URL_MAX] = 0;
    S_CHECK (s_test_render (record, out, RECORD_MAX) > 0);
    char endpoint [64];
    zg_spend_endpoint ("/run", endpoint, sizeof endpoint);
    S_CHECK (streq (endpoint, "ipc:///run/spend.ipc"));

    zg_msg_reset (record, 0);
    free (record);
    free (out);
    zg_tally_finish (&tally);
}
