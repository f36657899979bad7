/*  =========================================================================
    zg_calls - the frontend's table of HTTP requests in flight
    =========================================================================
*/
#include "frontend/zg_calls.h"
#include "common/zg_selftest.h"

#include <assert.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

struct _zg_calls_t {
    zg_call_t **buckets;
    size_t     bucket_count;        //  a power of two
    size_t     routed;
    zg_call_t *oldest;              //  in-flight list, in routing order
    zg_call_t *newest;
    zg_call_t *free_list;           //  through hash_next
    uint64_t   prng [4];            //  xoshiro256**
};

static uint64_t
s_rotl (uint64_t x, int k)
{
    return (x << k) | (x >> (64 - k));
}

static uint64_t
s_prng_next (uint64_t *s)
{
    uint64_t result = s_rotl (s [1] * 5, 7) * 9;
    uint64_t t = s [1] << 17;
    s [2] ^= s [0];
    s [3] ^= s [1];
    s [1] ^= s [2];
    s [0] ^= s [3];
    s [2] ^= t;
    s [3] = s_rotl (s [3], 45);
    return result;
}

static uint64_t
s_splitmix (uint64_t *x)
{
    uint64_t z = (*x += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

static uint64_t
s_hash (const char *text)
{
    //  FNV-1a: ids are short and already random, nothing fancier is needed
    uint64_t hash = 0xcbf29ce484222325ULL;
    for (const unsigned char *p = (const unsigned char *) text; *p; p++) {
        hash ^= *p;
        hash *= 0x100000001b3ULL;
    }
    return hash;
}

zg_calls_t *
zg_calls_new (uint64_t seed)
{
    zg_calls_t *self = (zg_calls_t *) zmalloc (sizeof (zg_calls_t));
    assert (self);
    self->bucket_count = 1024;
    self->buckets = (zg_call_t **) zmalloc (self->bucket_count * sizeof (zg_call_t *));
    assert (self->buckets);

    if (seed == 0) {
        //  One syscall per process; ids only need to be unique, not secret
        if (getrandom (&seed, sizeof (seed), 0) != (ssize_t) sizeof (seed)) {
            struct timespec now;
            clock_gettime (CLOCK_REALTIME, &now);
            seed = ((uint64_t) now.tv_sec * 1000000000ULL + (uint64_t) now.tv_nsec)
                 ^ ((uint64_t) getpid () << 32);
        }
    }
    for (int index = 0; index < 4; index++)
        self->prng [index] = s_splitmix (&seed);
    return self;
}

static void
s_call_free (zg_call_t *call)
{
    zg_call_queue_clear (call);
    free (call->queue);
    zframe_destroy (&call->body_frame);
    free (call->body_buf);
    free (call);
}

void
zg_calls_destroy (zg_calls_t **self_p)
{
    assert (self_p);
    zg_calls_t *self = *self_p;
    if (self) {
        //  Calls still routed belong to live connections; their owner
        //  releases them. Only the free list is ours alone.
        while (self->free_list) {
            zg_call_t *call = self->free_list;
            self->free_list = call->hash_next;
            s_call_free (call);
        }
        free (self->buckets);
        free (self);
        *self_p = NULL;
    }
}

zg_call_t *
zg_calls_acquire (zg_calls_t *self)
{
    assert (self);
    zg_call_t *call = self->free_list;
    if (call) {
        self->free_list = call->hash_next;
        //  Keep the queue ring's storage and a small body's buffer: streams
        //  are common, bodies more so, and each would be allocated again
        //  for every call otherwise
        zg_queued_t *queue = call->queue;
        size_t queue_cap = call->queue_cap;
        char *body_buf = call->body_buf;
        size_t body_cap = call->body_cap;
        memset (call, 0, sizeof (*call));
        call->queue = queue;
        call->queue_cap = queue_cap;
        call->body_buf = body_buf;
        call->body_cap = body_cap;
    }
    else {
        call = (zg_call_t *) zmalloc (sizeof (zg_call_t));
        assert (call);
    }
    call->fd = -1;
    call->overhead_us = -1;
    return call;
}

void
zg_calls_release (zg_calls_t *self, zg_call_t *call)
{
    assert (self);
    if (!call)
        return;
    zg_calls_unroute (self, call);
    zg_call_queue_clear (call);
    zframe_destroy (&call->body_frame);
    if (call->path_key) {
        memset (call->path_key, 0, strlen (call->path_key));
        free (call->path_key);
        call->path_key = NULL;
    }
    //  A chunked-upload buffer may be large; do not keep it around
    if (call->body_cap > ZG_PAYLOAD_INLINE_MAX) {
        free (call->body_buf);
        call->body_buf = NULL;
        call->body_cap = 0;
    }
    call->connection = NULL;
    call->hash_next = self->free_list;
    self->free_list = call;
}

static void
s_grow (zg_calls_t *self)
{
    size_t new_count = self->bucket_count * 2;
    zg_call_t **buckets = (zg_call_t **) zmalloc (new_count * sizeof (zg_call_t *));
    assert (buckets);
    for (size_t index = 0; index < self->bucket_count; index++) {
        zg_call_t *call = self->buckets [index];
        while (call) {
            zg_call_t *next = call->hash_next;
            size_t slot = s_hash (call->call_id) & (new_count - 1);
            call->hash_next = buckets [slot];
            buckets [slot] = call;
            call = next;
        }
    }
    free (self->buckets);
    self->buckets = buckets;
    self->bucket_count = new_count;
}

int
zg_calls_route (zg_calls_t *self, zg_call_t *call)
{
    assert (self);
    assert (call);
    assert (!call->routed);
    if (zg_calls_lookup (self, call->call_id))
        return -1;
    if (self->routed + 1 > self->bucket_count - self->bucket_count / 4)
        s_grow (self);
    size_t slot = s_hash (call->call_id) & (self->bucket_count - 1);
    call->hash_next = self->buckets [slot];
    self->buckets [slot] = call;

    call->next = NULL;
    call->prev = self->newest;
    if (self->newest)
        self->newest->next = call;
    else
        self->oldest = call;
    self->newest = call;

    call->routed = true;
    self->routed++;
    return 0;
}

void
zg_calls_unroute (zg_calls_t *self, zg_call_t *call)
{
    assert (self);
    if (!call || !call->routed)
        return;
    size_t slot = s_hash (call->call_id) & (self->bucket_count - 1);
    zg_call_t **link = &self->buckets [slot];
    while (*link && *link != call)
        link = &(*link)->hash_next;
    assert (*link == call);
    *link = call->hash_next;
    call->hash_next = NULL;

    if (call->prev)
        call->prev->next = call->next;
    else
        self->oldest = call->next;
    if (call->next)
        call->next->prev = call->prev;
    else
        self->newest = call->prev;
    call->prev = call->next = NULL;

    call->routed = false;
    self->routed--;
}

zg_call_t *
zg_calls_lookup (zg_calls_t *self, const char *call_id)
{
    assert (self);
    size_t slot = s_hash (call_id) & (self->bucket_count - 1);
    for (zg_call_t *call = self->buckets [slot]; call; call = call->hash_next)
        if (strcmp (call->call_id, call_id) == 0)
            return call;
    return NULL;
}

zg_call_t *
zg_calls_first (zg_calls_t *self)
{
    assert (self);
    return self->oldest;
}

size_t
zg_calls_routed (zg_calls_t *self)
{
    assert (self);
    return self->routed;
}

void
zg_calls_new_id (zg_calls_t *self, char *out)
{
    assert (self);
    uint8_t bytes [16];
    uint64_t high = s_prng_next (self->prng);
    uint64_t low = s_prng_next (self->prng);
    memcpy (bytes, &high, 8);
    memcpy (bytes + 8, &low, 8);
    bytes [6] = (bytes [6] & 0x0f) | 0x40;      //  version 4
    bytes [8] = (bytes [8] & 0x3f) | 0x80;      //  RFC 4122 variant

    static const char hex [] = "0123456789abcdef";
    char *cursor = out;
    for (int index = 0; index < 16; index++) {
        if (index == 4 || index == 6 || index == 8 || index == 10)
            *cursor++ = '-';
        *cursor++ = hex [bytes [index] >> 4];
        *cursor++ = hex [bytes [index] & 15];
    }
    *cursor = 0;
}

bool
zg_calls_id_is_sane (const char *text)
{
    if (!text || !*text)
        return false;
    size_t length = 0;
    for (const char *p = text; *p; p++, length++) {
        char c = *p;
        bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9')
               || c == '.' || c == '_' || c == ':' || c == '-';
        if (!ok || length >= ZG_CALL_ID_MAX)
            return false;
    }
    return true;
}

void
zg_call_queue_push (zg_call_t *self, zframe_t **frame_p)
{
    assert (frame_p);
    zframe_t *frame = *frame_p;
    zg_call_queue_push_part (self, frame_p, frame? zframe_data (frame): NULL,
                             frame? zframe_size (frame): 0);
}

void
zg_call_queue_push_part (zg_call_t *self, zframe_t **frame_p, const uint8_t *bytes,
                         size_t size)
{
    assert (self);
    assert (frame_p);
    zframe_t *frame = *frame_p;
    *frame_p = NULL;
    if (!frame)
        return;
    if (size == 0) {
        zframe_destroy (&frame);
        return;
    }
    //  Remember the stream's last bytes, to know whether the upstream's
    //  own "[DONE]" went by
    const char *data = (const char *) bytes;
    if (size >= sizeof (self->tail)) {
        memcpy (self->tail, data + size - sizeof (self->tail), sizeof (self->tail));
        self->tail_len = sizeof (self->tail);
    }
    else {
        size_t keep = sizeof (self->tail) - size;
        if (keep > self->tail_len)
            keep = self->tail_len;
        memmove (self->tail, self->tail + self->tail_len - keep, keep);
        memcpy (self->tail + keep, data, size);
        self->tail_len = keep + size;
    }

    if (self->queue_count == self->queue_cap) {
        size_t new_cap = self->queue_cap ? self->queue_cap * 2 : 8;
        zg_queued_t *ring = (zg_queued_t *) malloc (new_cap * sizeof (zg_queued_t));
        assert (ring);
        for (size_t index = 0; index < self->queue_count; index++)
            ring [index] = self->queue [(self->queue_head + index) % self->queue_cap];
        free (self->queue);
        self->queue = ring;
        self->queue_cap = new_cap;
        self->queue_head = 0;
    }
    self->queue [(self->queue_head + self->queue_count) % self->queue_cap] =
        (zg_queued_t) { frame, bytes, size };
    self->queue_count++;
    self->queued_bytes += size;
}

size_t
zg_call_queue_read (zg_call_t *self, char *out, size_t max)
{
    assert (self);
    size_t copied = 0;
    while (copied < max && self->queue_count) {
        zg_queued_t *queued = &self->queue [self->queue_head];
        size_t size = queued->size;
        size_t take = size - self->queue_offset;
        if (take > max - copied)
            take = max - copied;
        memcpy (out + copied, queued->data + self->queue_offset, take);
        copied += take;
        self->queue_offset += take;
        if (self->queue_offset == size) {
            zframe_destroy (&queued->frame);
            queued->data = NULL;
            self->queue_head = (self->queue_head + 1) % self->queue_cap;
            self->queue_count--;
            self->queue_offset = 0;
        }
    }
    self->queued_bytes -= copied;
    return copied;
}

void
zg_call_queue_clear (zg_call_t *self)
{
    assert (self);
    while (self->queue_count) {
        zframe_destroy (&self->queue [self->queue_head].frame);
        self->queue_head = (self->queue_head + 1) % self->queue_cap;
        self->queue_count--;
    }
    self->queue_head = 0;
    self->queue_offset = 0;
    self->queued_bytes = 0;
}



void
zg_call_queue_trim (zg_call_t *self)
{
    assert (self);
    size_t keep = self->queue_offset ? 1 : 0;
    while (self->queue_count > keep) {
        size_t last = (self->queue_head + self->queue_count - 1) % self->queue_cap;
        self->queued_bytes -= self->queue [last].size;
        zframe_destroy (&self->queue [last].frame);
        self->queue_count--;
    }
    if (self->queue_count == 0) {
        self->queue_head = 0;
        self->queue_offset = 0;
        self->queued_bytes = 0;
    }
}

void
zg_calls_test (bool verbose)
{
    if (verbose)
        printf (" * zg_calls: ");

    zg_calls_t *calls = zg_calls_new (42);
    ZG_CHECK (calls);

    //  Ids: shape, version, uniqueness
    char id_a [37], id_b [37];
    zg_calls_new_id (calls, id_a);
    zg_calls_new_id (calls, id_b);
    ZG_CHECK (strlen (id_a) == 36);
    ZG_CHECK (id_a [8] == '-' && id_a [13] == '-' && id_a [18] == '-' && id_a [23] == '-');
    ZG_CHECK (id_a [14] == '4');
    ZG_CHECK (strchr ("89ab", id_a [19]));
    ZG_CHECK (strcmp (id_a, id_b) != 0);
    ZG_CHECK (zg_calls_id_is_sane (id_a));
    ZG_CHECK (zg_calls_id_is_sane ("client.id:42_x-y"));
    ZG_CHECK (!zg_calls_id_is_sane (""));
    ZG_CHECK (!zg_calls_id_is_sane ("has space"));
    ZG_CHECK (!zg_calls_id_is_sane ("quote\""));
    char long_id [80];
    memset (long_id, 'a', 64);
    long_id [64] = 0;
    ZG_CHECK (zg_calls_id_is_sane (long_id));
    long_id [64] = 'a';
    long_id [65] = 0;
    ZG_CHECK (!zg_calls_id_is_sane (long_id));

    //  Routing many calls grows the index; lookups find each one
    enum { COUNT = 3000 };
    zg_call_t **all = (zg_call_t **) malloc (COUNT * sizeof (zg_call_t *));
    for (int index = 0; index < COUNT; index++) {
        all [index] = zg_calls_acquire (calls);
        zg_calls_new_id (calls, all [index]->call_id);
        ZG_CHECK (zg_calls_route (calls, all [index]) == 0);
    }
    ZG_CHECK (zg_calls_routed (calls) == COUNT);
    for (int index = 0; index < COUNT; index++)
        ZG_CHECK (zg_calls_lookup (calls, all [index]->call_id) == all [index]);
    ZG_CHECK (zg_calls_first (calls) == all [0]);

    //  A duplicate id is refused
    zg_call_t *twin = zg_calls_acquire (calls);
    strcpy (twin->call_id, all [7]->call_id);
    ZG_CHECK (zg_calls_route (calls, twin) == -1);
    zg_calls_release (calls, twin);

    //  Unrouting from the middle keeps the list and index whole
    zg_calls_unroute (calls, all [0]);
    zg_calls_unroute (calls, all [1500]);
    ZG_CHECK (zg_calls_lookup (calls, all [1500]->call_id) == NULL);
    ZG_CHECK (zg_calls_first (calls) == all [1]);
    size_t walked = 0;
    for (zg_call_t *call = zg_calls_first (calls); call; call = call->next)
        walked++;
    ZG_CHECK (walked == COUNT - 2);
    for (int index = 0; index < COUNT; index++)
        zg_calls_release (calls, all [index]);
    ZG_CHECK (zg_calls_routed (calls) == 0);
    ZG_CHECK (zg_calls_first (calls) == NULL);

    //  The free list hands calls back zeroed
    zg_call_t *again = zg_calls_acquire (calls);
    ZG_CHECK (again->call_id [0] == 0 && !again->routed && again->fd == -1);

    //  Stream queue: order, partial reads, tail tracking, growth
    for (int index = 0; index < 20; index++) {
        char text [32];
        snprintf (text, sizeof (text), "data: %02d\n\n", index);
        zframe_t *frame = zframe_new (text, strlen (text));
        zg_call_queue_push (again, &frame);
        ZG_CHECK (frame == NULL);
    }
    zframe_t *done = zframe_new ("data: [DONE]\n\n", 14);
    zg_call_queue_push (again, &done);
    ZG_CHECK (again->queued_bytes == 20 * 10 + 14);
    ZG_CHECK (again->tail_len == 16 && memcmp (again->tail + 2, "data: [DONE]\n\n", 14) == 0);
    char out [256];
    size_t got = zg_call_queue_read (again, out, 5);
    ZG_CHECK (got == 5 && memcmp (out, "data:", 5) == 0);
    got = zg_call_queue_read (again, out, sizeof (out));
    ZG_CHECK (got == 200 + 14 - 5);
    ZG_CHECK (memcmp (out, " 00\n\ndata: 01\n\n", 15) == 0);
    ZG_CHECK (memcmp (out + got - 14, "data: [DONE]\n\n", 14) == 0);
    ZG_CHECK (again->queued_bytes == 0 && again->queue_count == 0);
    ZG_CHECK (zg_call_queue_read (again, out, sizeof (out)) == 0);

    //  Small pushes keep the last 16 bytes across frames
    again->tail_len = 0;
    zframe_t *part = zframe_new ("data: [DO", 9);
    zg_call_queue_push (again, &part);
    part = zframe_new ("NE]\n\n", 5);
    zg_call_queue_push (again, &part);
    ZG_CHECK (again->tail_len == 14 && memcmp (again->tail, "data: [DONE]\n\n", 14) == 0);

    zg_calls_release (calls, again);

    free (all);
    zg_calls_destroy (&calls);
    ZG_CHECK (calls == NULL);
    if (verbose)
        printf ("OK\n");
}
