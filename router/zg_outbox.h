/*  =========================================================================
    zg_outbox - the router's spend records until the spend actor commits them

    A record (a SPEND message) enters the outbox when its call ends and
    leaves it only when a SPEND_ACK covers its seq. Records wait in a
    bounded in-memory ring; when the ring is full they are appended to a
    spill file, and read back, in order, as the ring empties. Seqs are
    given when a record enters the ring, so the ring always holds one run
    of consecutive seqs and a cumulative ack simply drops its head.

    zg_outbox_save writes what is unacked to the spill file (on stop); the
    next zg_outbox_new on the same path takes it back first. A crash loses
    only the ring; what the spend actor sees twice it writes once (it keys
    rows on call_id).
    =========================================================================
*/
#ifndef ZG_OUTBOX_H_INCLUDED
#define ZG_OUTBOX_H_INCLUDED

#include "proto/zg_msg.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct _zg_outbox_t zg_outbox_t;

//  An outbox holding at most ring_limit records in memory (at least 1);
//  spill_path may be NULL (nothing spills: push fails when the ring is
//  full). An existing spill file at spill_path is taken as the oldest
//  records. Returns NULL when the spill file cannot be opened.
zg_outbox_t *zg_outbox_new (size_t ring_limit, const char *spill_path);

//  Free the outbox without saving anything (see zg_outbox_save)
void zg_outbox_destroy (zg_outbox_t **self_p);

//  Add a SPEND record, its strings as views (zg_msg_encode_spend encodes
//  it straight into the memory it is kept in); its seq is given by the
//  outbox (the one in record is overwritten). 0, or -1 when it can be
//  neither kept in memory nor spilled (the record is lost; logged by the
//  caller).
int zg_outbox_push (zg_outbox_t *self, zg_msg_spend_t *record);

//  Records lie back to back in memory, in blocks of this many bytes: a
//  run never holds more (and always holds a whole record)
#define ZG_OUTBOX_RUN_BYTES 65536

//  The next records not yet handed out, as many as lie back to back in
//  memory (at most max_records, at most ZG_OUTBOX_RUN_BYTES), handed out
//  together: their header frames one after the other, as a run of SPEND
//  travels (zg_msg.h), valid until the next call on the outbox; *count
//  says how many. Returns false when every record in memory has been
//  handed out (or max_records is 0).
bool zg_outbox_next_run (zg_outbox_t *self, size_t max_records,
                         const uint8_t **data, size_t *size, size_t *count);

//  Every record with a seq <= seq is committed: forget them
void zg_outbox_ack (zg_outbox_t *self, uint64_t seq);

//  Hand out everything unacked again, from the oldest
void zg_outbox_rewind (zg_outbox_t *self);

//  Records not yet acked (in memory and spilled), handed out and not acked
size_t zg_outbox_pending (zg_outbox_t *self);
size_t zg_outbox_in_flight (zg_outbox_t *self);
//  Records in memory now
size_t zg_outbox_in_memory (zg_outbox_t *self);

//  Write every unacked record, oldest first, to the spill file (replacing
//  it atomically), or remove the file when there is none. 0 or -1.
int zg_outbox_save (zg_outbox_t *self);

//  Self test
void zg_outbox_test (bool verbose);

#ifdef __cplusplus
}
#endif
#endif
