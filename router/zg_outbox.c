/*  =========================================================================
    zg_outbox - the router's spend records until the spend actor commits them

    Records are encoded once, straight into blocks of ZG_OUTBOX_RUN_BYTES
    where they lie back to back in seq order, so that a run of them goes to
    the spend actor as the bytes they already are: no allocation, copy or
    free per record. A block is released (or, the last one, emptied for
    reuse) once every record in it is acked. Memory is bounded by
    ring_limit records of at most ZG_HEADER_MAX_BYTES each, two or more to
    a block. Once one record has spilled, every later one spills too until
    the file is read back empty: that keeps the order.

    Spill file: records of [ 4-byte little-endian length ][ frame ]. Frames
    in the file carry whatever seq they had; a record gets its real seq
    when it enters the ring, so seqs are consecutive there. A torn last
    record (a crash while appending) is ignored.
    =========================================================================
*/
#include "router/zg_outbox.h"
#include "common/zg_selftest.h"

#include <assert.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

//  Entries of the ring at first
#define RING_FIRST 1024

_Static_assert (ZG_OUTBOX_RUN_BYTES >= 2 * ZG_HEADER_MAX_BYTES,
                "a block holds at least two records of any size");

typedef struct _block_t block_t;
struct _block_t {
    block_t *next;              //  the next younger block
    size_t   used;              //  bytes of records appended
    size_t   live;              //  records in it not yet acked
    uint8_t  bytes [ZG_OUTBOX_RUN_BYTES];
};

typedef struct {
    uint64_t seq;
    block_t *block;
    uint32_t offset;
    uint32_t size;
} entry_t;

struct _zg_outbox_t {
    entry_t  *ring;             //  capacity entries, grown up to limit
    size_t    capacity;
    size_t    limit;
    size_t    head;             //  oldest unacked
    size_t    count;            //  unacked in the ring
    size_t    sent;             //  of those, handed out since the last rewind
    uint64_t  next_seq;

    block_t  *oldest;           //  blocks in seq order; records go to youngest
    block_t  *youngest;
    block_t  *spare;            //  one released block kept for the next

    char     *spill_path;
    FILE     *spill;            //  open while the file holds records
    long      spill_read_at;    //  offset of the oldest record not read back
    size_t    spilled;          //  records in the file not read back

    uint8_t   buffer [ZG_HEADER_MAX_BYTES];
};

static void
s_put_u32 (uint8_t *bytes, uint32_t value)
{
    for (int index = 0; index < 4; index++)
        bytes [index] = (uint8_t) (value >> (8 * index));
}

static uint32_t
s_get_u32 (const uint8_t *bytes)
{
    return (uint32_t) bytes [0] | (uint32_t) bytes [1] << 8
         | (uint32_t) bytes [2] << 16 | (uint32_t) bytes [3] << 24;
}

//  Reads the record at *offset into self->buffer; -1 at the end or on a
//  torn or impossible record
static int
s_spill_read (zg_outbox_t *self, long *offset, size_t *size)
{
    uint8_t length [4];
    if (fseek (self->spill, *offset, SEEK_SET)
    ||  fread (length, 1, 4, self->spill) != 4)
        return -1;
    uint32_t frame_size = s_get_u32 (length);
    if (frame_size == 0 || frame_size > ZG_HEADER_MAX_BYTES
    ||  fread (self->buffer, 1, frame_size, self->spill) != frame_size)
        return -1;
    *offset += 4 + (long) frame_size;
    *size = frame_size;
    return 0;
}

static int
s_spill_open (zg_outbox_t *self)
{
    if (self->spill)
        return 0;
    if (!self->spill_path)
        return -1;
    self->spill = fopen (self->spill_path, "a+b");
    return self->spill? 0: -1;
}

static void
s_spill_close_empty (zg_outbox_t *self)
{
    if (self->spill) {
        fclose (self->spill);
        self->spill = NULL;
    }
    if (self->spill_path)
        unlink (self->spill_path);
    self->spill_read_at = 0;
    self->spilled = 0;
}

static int
s_spill_append (zg_outbox_t *self, const uint8_t *data, size_t size)
{
    if (s_spill_open (self))
        return -1;
    uint8_t length [4];
    s_put_u32 (length, (uint32_t) size);
    if (fwrite (length, 1, 4, self->spill) != 4
    ||  fwrite (data, 1, size, self->spill) != size
    ||  fflush (self->spill))
        return -1;
    self->spilled++;
    return 0;
}

//  The entry at distance from the head (distance < capacity): a compare
//  instead of a division, on every record's way in, out and back; the
//  capacity is not a power of two once it has grown to limit
static inline entry_t *
s_ring_at (const zg_outbox_t *self, size_t distance)
{
    size_t index = self->head + distance;
    return &self->ring [index < self->capacity? index: index - self->capacity];
}

static block_t *
s_block_new (zg_outbox_t *self)
{
    block_t *block = self->spare;
    if (block)
        self->spare = NULL;
    else {
        block = (block_t *) malloc (sizeof (block_t));
        if (!block)
            return NULL;
    }
    block->next = NULL;
    block->used = 0;
    block->live = 0;
    if (self->youngest)
        self->youngest->next = block;
    else
        self->oldest = block;
    self->youngest = block;
    return block;
}

//  The ring starts small and grows as records wait: under steady acks a
//  few thousand are unacked, and a ring of that size stays in the cache,
//  where one of ring_limit entries would take a cache miss per record
static int
s_ring_grow (zg_outbox_t *self)
{
    size_t capacity = self->capacity * 2 < self->limit? self->capacity * 2: self->limit;
    entry_t *ring = (entry_t *) realloc (self->ring, capacity * sizeof (entry_t));
    if (!ring)
        return -1;
    //  The entries from head to the old end move to the new end
    size_t tail = self->capacity - self->head;
    memmove (ring + capacity - tail, ring + self->head, tail * sizeof (entry_t));
    self->head = capacity - tail;
    self->ring = ring;
    self->capacity = capacity;
    return 0;
}

//  Encodes the record at the ring's tail with the next seq, at the end of
//  the youngest block, or of a new one when it does not fit there
static int
s_ring_add (zg_outbox_t *self, zg_msg_spend_t *record)
{
    assert (self->count < self->limit);
    if (self->count == self->capacity && s_ring_grow (self))
        return -1;
    record->seq = self->next_seq;
    block_t *block = self->youngest;
    int size = block
             ? zg_msg_encode_spend (record, block->bytes + block->used,
                                    sizeof block->bytes - block->used)
             : -1;
    if (size <= 0) {
        //  It did not fit what is left: a fresh block holds any record
        if (block && block->used == 0)
            return -1;
        block = s_block_new (self);
        if (!block)
            return -1;
        size = zg_msg_encode_spend (record, block->bytes, sizeof block->bytes);
        if (size <= 0)
            return -1;
    }
    entry_t *entry = s_ring_at (self, self->count);
    entry->seq = self->next_seq++;
    entry->block = block;
    entry->offset = (uint32_t) block->used;
    entry->size = (uint32_t) size;
    block->used += (size_t) size;
    block->live++;
    self->count++;
    return 0;
}

//  The oldest record is acked: its block goes once it holds no other
static void
s_ring_drop (zg_outbox_t *self)
{
    entry_t *entry = &self->ring [self->head];
    block_t *block = entry->block;
    entry->block = NULL;
    self->head = self->head + 1 < self->capacity? self->head + 1: 0;
    self->count--;
    assert (block && block == self->oldest && block->live > 0);
    if (--block->live)
        return;
    if (block == self->youngest) {
        //  All acked: the same block takes the next records from its start
        block->used = 0;
        return;
    }
    self->oldest = block->next;
    if (self->spare)
        free (block);
    else
        self->spare = block;
}

static const uint8_t *
s_entry_data (const entry_t *entry)
{
    return entry->block->bytes + entry->offset;
}

//  Moves records from the file into the ring while there is room: each
//  is read in place from the buffer and encoded again with its new seq
static void
s_refill (zg_outbox_t *self)
{
    while (self->spilled && self->count < self->limit) {
        size_t size, used;
        long offset = self->spill_read_at;
        zg_msg_spend_t record;
        if (s_spill_read (self, &offset, &size)
        ||  zg_msg_read_spend (&record, self->buffer, size, &used) != ZG_MSG_OK
        ||  used != size) {
            //  A record that cannot be read cannot be sent either
            self->spilled = 0;
            break;
        }
        self->spill_read_at = offset;
        self->spilled--;
        if (s_ring_add (self, &record))
            break;
    }
    if (self->spill && self->spilled == 0)
        s_spill_close_empty (self);
}

zg_outbox_t *
zg_outbox_new (size_t ring_limit, const char *spill_path)
{
    zg_outbox_t *self = (zg_outbox_t *) calloc (1, sizeof (zg_outbox_t));
    if (!self)
        return NULL;
    self->limit = ring_limit? ring_limit: 1;
    self->capacity = self->limit < RING_FIRST? self->limit: RING_FIRST;
    self->ring = (entry_t *) calloc (self->capacity, sizeof (entry_t));
    self->spill_path = spill_path? strdup (spill_path): NULL;
    self->next_seq = 1;
    if (!self->ring || (spill_path && !self->spill_path)) {
        zg_outbox_destroy (&self);
        return NULL;
    }
    if (self->spill_path && access (self->spill_path, F_OK) == 0) {
        if (s_spill_open (self)) {
            zg_outbox_destroy (&self);
            return NULL;
        }
        long offset = 0;
        size_t size;
        while (s_spill_read (self, &offset, &size) == 0)
            self->spilled++;
        if (self->spilled == 0)
            s_spill_close_empty (self);
        else
        if (ftruncate (fileno (self->spill), offset))
            self->spilled = self->spilled;  //  the torn tail stays behind; appends follow it
        s_refill (self);
    }
    return self;
}

void
zg_outbox_destroy (zg_outbox_t **self_p)
{
    assert (self_p);
    zg_outbox_t *self = *self_p;
    if (!self)
        return;
    while (self->oldest) {
        block_t *next = self->oldest->next;
        free (self->oldest);
        self->oldest = next;
    }
    free (self->spare);
    free (self->ring);
    if (self->spill)
        fclose (self->spill);
    free (self->spill_path);
    free (self);
    *self_p = NULL;
}

int
zg_outbox_push (zg_outbox_t *self, zg_msg_spend_t *record)
{
    assert (self && record);
    if (self->spilled == 0 && self->count < self->limit)
        return s_ring_add (self, record);
    record->seq = 0;
    int size = zg_msg_encode_spend (record, self->buffer, sizeof self->buffer);
    if (size <= 0)
        return -1;
    return s_spill_append (self, self->buffer, (size_t) size);
}

bool
zg_outbox_next_run (zg_outbox_t *self, size_t max_records,
                    const uint8_t **data, size_t *size, size_t *count)
{
    assert (self && data && size && count);
    if (self->sent >= self->count || max_records == 0)
        return false;
    const entry_t *first = s_ring_at (self, self->sent);
    size_t taken = 1;
    size_t end = first->offset + first->size;
    while (taken < max_records && self->sent + taken < self->count) {
        const entry_t *entry = s_ring_at (self, self->sent + taken);
        if (entry->block != first->block || entry->offset != end)
            break;
        end += entry->size;
        taken++;
    }
    self->sent += taken;
    *data = s_entry_data (first);
    *size = end - first->offset;
    *count = taken;
    return true;
}

void
zg_outbox_ack (zg_outbox_t *self, uint64_t seq)
{
    assert (self);
    while (self->count && self->ring [self->head].seq <= seq) {
        s_ring_drop (self);
        if (self->sent)
            self->sent--;
    }
    s_refill (self);
}

void
zg_outbox_rewind (zg_outbox_t *self)
{
    assert (self);
    self->sent = 0;
}

size_t
zg_outbox_pending (zg_outbox_t *self)
{
    assert (self);
    return self->count + self->spilled;
}

size_t
zg_outbox_in_flight (zg_outbox_t *self)
{
    assert (self);
    return self->sent;
}

size_t
zg_outbox_in_memory (zg_outbox_t *self)
{
    assert (self);
    return self->count;
}

int
zg_outbox_save (zg_outbox_t *self)
{
    assert (self);
    if (!self->spill_path)
        return self->count? -1: 0;
    if (self->count == 0 && self->spilled == 0) {
        s_spill_close_empty (self);
        return 0;
    }
    size_t path_size = strlen (self->spill_path) + 8;
    char *temporary = (char *) malloc (path_size);
    if (!temporary)
        return -1;
    snprintf (temporary, path_size, "%s.new", self->spill_path);
    FILE *file = fopen (temporary, "wb");
    int rc = file? 0: -1;
    uint8_t length [4];
    for (size_t index = 0; rc == 0 && index < self->count; index++) {
        const entry_t *entry = s_ring_at (self, index);
        s_put_u32 (length, entry->size);
        if (fwrite (length, 1, 4, file) != 4
        ||  fwrite (s_entry_data (entry), 1, entry->size, file) != entry->size)
            rc = -1;
    }
    long offset = self->spill_read_at;
    for (size_t index = 0; rc == 0 && index < self->spilled; index++) {
        size_t size;
        if (s_spill_read (self, &offset, &size))
            break;
        s_put_u32 (length, (uint32_t) size);
        if (fwrite (length, 1, 4, file) != 4 || fwrite (self->buffer, 1, size, file) != size)
            rc = -1;
    }
    if (file) {
        if (fflush (file) || fsync (fileno (file)))
            rc = -1;
        if (fclose (file))
            rc = -1;
    }
    if (rc == 0 && rename (temporary, self->spill_path))
        rc = -1;
    if (rc)
        unlink (temporary);
    free (temporary);
    return rc;
}


//  --------------------------------------------------------------------------
//  Self test

static zg_tally_t s_tally = { "zg_outbox", 0, 0 };

#define S_CHECK(condition) ZG_TALLY (s_tally, condition)

static void
s_test_record (zg_msg_t *msg, int number)
{
    zg_msg_reset (msg, ZG_MSG_SPEND);
    snprintf (msg->call_id, sizeof msg->call_id, "call-%d", number);
    ZG_MSG_SET (msg->model, "gpt");
    msg->route = ZG_ROUTE_CHAT;
    msg->status = 200;
    msg->cost = 0.001 * number;
}

//  Pushes msg's fields as the router gives them: views of its strings
static int
s_test_push (zg_outbox_t *outbox, const zg_msg_t *msg)
{
    zg_msg_spend_t record = {
        .seq = 12345,           //  the outbox's own replaces it
        .call_id = zg_msg_text (msg->call_id, sizeof msg->call_id),
        .model = zg_msg_text (msg->model, sizeof msg->model),
        .route = msg->route,
        .status = msg->status,
        .cost = msg->cost,
        .message = zg_msg_text (msg->message, sizeof msg->message)
    };
    return zg_outbox_push (outbox, &record);
}

//  Takes everything handed out now; checks call ids follow from *expected.
//  Returns how many came and the last seq.
static size_t
s_test_drain (zg_outbox_t *outbox, zg_msg_t *msg, int *expected, uint64_t *last_seq)
{
    const uint8_t *data;
    size_t size, count, taken = 0;
    while (zg_outbox_next_run (outbox, 1, &data, &size, &count)) {
        S_CHECK (zg_msg_decode (msg, data, size) == ZG_MSG_OK);
        char want [32];
        snprintf (want, sizeof want, "call-%d", *expected);
        S_CHECK (streq (msg->call_id, want));
        S_CHECK (*last_seq == 0 || msg->seq == *last_seq + 1);
        *last_seq = msg->seq;
        (*expected)++;
        taken++;
    }
    return taken;
}

void
zg_outbox_test (bool verbose)
{
    printf (" * zg_outbox: ");
    if (verbose)
        printf ("\n");
    s_tally.passed = 0;
    s_tally.failed = 0;

    char directory [] = "/tmp/zg_outbox_test_XXXXXX";
    if (!mkdtemp (directory)) {
        fprintf (stderr, "zg_outbox: cannot make %s\n", directory);
        abort ();
    }
    char path [128];
    snprintf (path, sizeof path, "%s/spend.spill", directory);
    zg_msg_t *msg = (zg_msg_t *) malloc (sizeof (zg_msg_t));
    if (!msg)
        abort ();
    zg_msg_init (msg, 0);

    //  In memory only: push, hand out, ack, rewind
    zg_outbox_t *outbox = zg_outbox_new (4, NULL);
    S_CHECK (outbox);
    for (int number = 0; number < 4; number++) {
        s_test_record (msg, number);
        S_CHECK (s_test_push (outbox, msg) == 0);
    }
    s_test_record (msg, 4);
    S_CHECK (s_test_push (outbox, msg) == -1);      //  full, nowhere to spill
    int expected = 0;
    uint64_t last_seq = 0;
    S_CHECK (s_test_drain (outbox, msg, &expected, &last_seq) == 4 && last_seq == 4);
    S_CHECK (zg_outbox_in_flight (outbox) == 4);
    zg_outbox_ack (outbox, 2);
    S_CHECK (zg_outbox_pending (outbox) == 2 && zg_outbox_in_flight (outbox) == 2);
    zg_outbox_rewind (outbox);
    expected = 2;
    last_seq = 0;
    S_CHECK (s_test_drain (outbox, msg, &expected, &last_seq) == 2 && last_seq == 4);
    zg_outbox_ack (outbox, 1);                          //  stale ack: nothing
    S_CHECK (zg_outbox_pending (outbox) == 2);
    zg_outbox_ack (outbox, 100);
    S_CHECK (zg_outbox_pending (outbox) == 0 && zg_outbox_in_flight (outbox) == 0);
    zg_outbox_destroy (&outbox);
    S_CHECK (outbox == NULL);

    //  Runs: records back to back, whole, in order, never beyond a block;
    //  big records fill blocks quickly, so runs end at block boundaries and
    //  blocks are released and reused as acks come
    outbox = zg_outbox_new (64, NULL);
    S_CHECK (outbox);
    expected = 0;
    last_seq = 0;
    int pushed = 0;
    size_t runs = 0, short_runs = 0;
    for (int round = 0; round < 20; round++) {
        while (zg_outbox_in_memory (outbox) < 64) {
            s_test_record (msg, pushed);
            memset (msg->message, 'm', (size_t) (pushed * 997) % ZG_MESSAGE_MAX);
            msg->message [(pushed * 997) % ZG_MESSAGE_MAX] = 0;
            S_CHECK (s_test_push (outbox, msg) == 0);
            pushed++;
        }
        const uint8_t *data;
        size_t size, count;
        while (zg_outbox_next_run (outbox, 5, &data, &size, &count)) {
            runs++;
            S_CHECK (count >= 1 && count <= 5 && size <= ZG_OUTBOX_RUN_BYTES);
            if (count < 5)
                short_runs++;
            size_t used = 0;
            for (size_t index = 0; index < count; index++) {
                size_t length = 0;
                S_CHECK (zg_msg_decode_first (msg, data + used, size - used, &length) == ZG_MSG_OK);
                char want [32];
                snprintf (want, sizeof want, "call-%d", expected);
                S_CHECK (streq (msg->call_id, want));
                S_CHECK (msg->seq == last_seq + 1);
                last_seq = msg->seq;
                expected++;
                used += length;
                if (length == 0)
                    break;
            }
            S_CHECK (used == size);
        }
        S_CHECK (zg_outbox_next_run (outbox, 5, &data, &size, &count) == false);
        //  Acked in two steps: part of a block, then the rest
        zg_outbox_ack (outbox, last_seq - 10);
        S_CHECK (zg_outbox_pending (outbox) == 10 && zg_outbox_in_flight (outbox) == 10);
        zg_outbox_rewind (outbox);
        S_CHECK (zg_outbox_next_run (outbox, 0, &data, &size, &count) == false);
        S_CHECK (zg_outbox_next_run (outbox, 100, &data, &size, &count));
        S_CHECK (zg_msg_decode_first (msg, data, size, &size) == ZG_MSG_OK
              && msg->seq == last_seq - 9);
        zg_outbox_ack (outbox, last_seq);
        S_CHECK (zg_outbox_pending (outbox) == 0 && zg_outbox_in_flight (outbox) == 0);
    }
    S_CHECK (expected == pushed && short_runs > 0 && runs > (size_t) pushed / 5);
    zg_outbox_destroy (&outbox);

    //  The ring grows while it wraps around: order and seqs hold
    outbox = zg_outbox_new (5000, NULL);
    S_CHECK (outbox);
    for (int number = 0; number < 700; number++) {
        s_test_record (msg, number);
        S_CHECK (s_test_push (outbox, msg) == 0);
    }
    expected = 0;
    last_seq = 0;
    S_CHECK (s_test_drain (outbox, msg, &expected, &last_seq) == 700);
    zg_outbox_ack (outbox, 500);
    for (int number = 700; number < 4000; number++) {
        s_test_record (msg, number);
        S_CHECK (s_test_push (outbox, msg) == 0);
    }
    S_CHECK (zg_outbox_pending (outbox) == 3500 && zg_outbox_in_flight (outbox) == 200);
    S_CHECK (s_test_drain (outbox, msg, &expected, &last_seq) == 3300 && last_seq == 4000);
    zg_outbox_rewind (outbox);
    expected = 500;
    last_seq = 0;
    S_CHECK (s_test_drain (outbox, msg, &expected, &last_seq) == 3500 && expected == 4000);
    zg_outbox_ack (outbox, last_seq);
    S_CHECK (zg_outbox_pending (outbox) == 0);
    zg_outbox_destroy (&outbox);

    //  Unacked records across blocks are saved whole, and come back
    outbox = zg_outbox_new (64, path);
    for (int number = 0; number < 40; number++) {
        s_test_record (msg, number);
        memset (msg->message, 'm', 3000);
        msg->message [3000] = 0;
        S_CHECK (s_test_push (outbox, msg) == 0);
    }
    S_CHECK (zg_outbox_save (outbox) == 0);
    zg_outbox_destroy (&outbox);
    outbox = zg_outbox_new (64, path);
    S_CHECK (outbox && zg_outbox_pending (outbox) == 40);
    expected = 0;
    last_seq = 0;
    S_CHECK (s_test_drain (outbox, msg, &expected, &last_seq) == 40
          && strlen (msg->message) == 3000);
    zg_outbox_ack (outbox, last_seq);
    S_CHECK (zg_outbox_save (outbox) == 0 && access (path, F_OK) != 0);
    zg_outbox_destroy (&outbox);

    //  Spilling: memory stays at the limit, order and consecutive seqs hold
    const int total = 1000;
    const size_t limit = 16;
    outbox = zg_outbox_new (limit, path);
    S_CHECK (outbox);
    for (int number = 0; number < total; number++) {
        s_test_record (msg, number);
        S_CHECK (s_test_push (outbox, msg) == 0);
        S_CHECK (zg_outbox_in_memory (outbox) <= limit);
    }
    S_CHECK (zg_outbox_pending (outbox) == (size_t) total);
    S_CHECK (access (path, F_OK) == 0);
    expected = 0;
    last_seq = 0;
    size_t received = 0;
    while (received < (size_t) total) {
        size_t taken = s_test_drain (outbox, msg, &expected, &last_seq);
        S_CHECK (taken > 0 && taken <= limit);
        if (taken == 0)
            break;
        received += taken;
        zg_outbox_ack (outbox, last_seq);
        S_CHECK (zg_outbox_in_memory (outbox) <= limit);
    }
    S_CHECK (received == (size_t) total && expected == total);
    S_CHECK (zg_outbox_pending (outbox) == 0);
    S_CHECK (access (path, F_OK) != 0);                 //  drained: removed

    //  Save on stop, take back at the next start, before anything new
    for (int number = 0; number < 40; number++) {
        s_test_record (msg, number);
        S_CHECK (s_test_push (outbox, msg) == 0);
    }
    expected = 0;
    last_seq = 0;
    S_CHECK (s_test_drain (outbox, msg, &expected, &last_seq) == limit);
    zg_outbox_ack (outbox, last_seq - 6);               //  10 acked, 6 in flight
    S_CHECK (zg_outbox_pending (outbox) == 30);
    S_CHECK (zg_outbox_save (outbox) == 0);
    zg_outbox_destroy (&outbox);

    outbox = zg_outbox_new (limit, path);
    S_CHECK (outbox && zg_outbox_pending (outbox) == 30);
    s_test_record (msg, 40);
    S_CHECK (s_test_push (outbox, msg) == 0);
    expected = 10;
    last_seq = 0;
    received = 0;
    while (outbox && zg_outbox_pending (outbox)) {
        size_t taken = s_test_drain (outbox, msg, &expected, &last_seq);
        if (taken == 0)
            break;
        received += taken;
        zg_outbox_ack (outbox, last_seq);
    }
    S_CHECK (received == 31 && expected == 41);
    S_CHECK (zg_outbox_save (outbox) == 0);
    S_CHECK (access (path, F_OK) != 0);                 //  nothing left: no file
    zg_outbox_destroy (&outbox);

    //  A torn last record is ignored
    outbox = zg_outbox_new (1, path);
    for (int number = 0; number < 3; number++) {
        s_test_record (msg, number);
        S_CHECK (s_test_push (outbox, msg) == 0);
    }
    S_CHECK (zg_outbox_save (outbox) == 0);
    zg_outbox_destroy (&outbox);
    FILE *file = fopen (path, "ab");
    S_CHECK (file && fwrite ("\x40\x00\x00\x00zz", 1, 6, file) == 6);
    if (file)
        fclose (file);
    outbox = zg_outbox_new (8, path);
    S_CHECK (outbox && zg_outbox_pending (outbox) == 3);
    expected = 0;
    last_seq = 0;
    S_CHECK (s_test_drain (outbox, msg, &expected, &last_seq) == 3);
    zg_outbox_ack (outbox, last_seq);
    S_CHECK (zg_outbox_save (outbox) == 0);
    zg_outbox_destroy (&outbox);

    zg_msg_reset (msg, 0);
    free (msg);
    unlink (path);
    rmdir (directory);

    zg_tally_finish (&s_tally);
}
