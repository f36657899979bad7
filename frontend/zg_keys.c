/*  =========================================================================
    zg_keys - the virtual-key table: every key check on the data path,
    answered from memory

    Refusals follow the reference's 2026 builds (behaviour reference §1.5,
    and answers captured from LiteLLM in 2026):

      unknown key    401 token_not_found_in_db, param "key": the newer
                     builds' type. Older builds said auth_error; clients
                     that tell "no such key" from other 401s look for the
                     newer type, and both are 401 for those that do not.
      expired        401 expired_key (old builds: 400). The reference puts
                     the presented key in param; we put its key_name so an
                     error body or log never carries a whole key.
      blocked        401 auth_error, param "None" (the string, as captured)
      model denied   403 key_model_access_denied, param "model"
      over budget    429 budget_exceeded (400 before 2026), param null:
                     key, then team, then user, each with its own message
      rate limited   429 rate_limit_error with retry-after, rate_limit_type
                     and reset_at, and the v3 limiter's message

    Rate limits use a fixed window of ZG_KEYS_WINDOW seconds per key, as
    the reference's v3 limiter does: a window opens with the first request
    after the last one closed, and requests and tokens share it. A fixed
    window lets a key send up to twice its limit across a window boundary;
    a sliding log would cost memory per request, which a bounded table
    cannot give. The reference counts refused requests too; we do not, so
    a client that retries too early does not push its own window further.

    Shared counting (Redis): windows start on multiples of ZG_KEYS_WINDOW
    of unix time, so that every instance counts the same window. A key
    then also knows the shared totals of its window as Redis last told
    them (shared_*), which include the part of its own counts pushed by
    then (pushed_*). What others counted is shared - pushed, and a check
    adds it to every local count: local counting stays exact, the rest is
    at most one sync old.
    =========================================================================
*/
#include "frontend/zg_keys.h"
#include "common/zg_selftest.h"
#include "common/zg_number.h"
#include "common/zg_sha256.h"

#include <assert.h>
#include <ctype.h>
#include <czmq.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

enum { TICKET_NONE = 0, TICKET_IN_FLIGHT, TICKET_FINISHED };
enum { NEGATIVE_PENDING = 1, NEGATIVE_UNKNOWN };

//  One key: its record (pointing into strings, one allocation per key) and
//  what happens to it here
typedef struct {
    zg_key_record_t record;
    char           *strings;            //  every string and the models array
    uint64_t        generation;
    int64_t         window_start;       //  0 = no window open
    int64_t         window_requests;
    int64_t         window_tokens;
    int64_t         in_flight;
    int64_t         pushed_requests;    //  of the window's counts, those in shared_*
    int64_t         pushed_tokens;
    int64_t         shared_requests;    //  the window's totals across instances,
    int64_t         shared_tokens;      //  as last synced (0 = none known)
    uint64_t        sync_round;         //  the last zg_keys_sync_take that took it
    bool            sync_listed;        //  in the table's sync list
    bool            soft_budget_reported;
} s_key_t;

//  A user's or team's budget
typedef struct {
    double  spend;
    double  max_budget;
    int64_t budget_reset_at;
} s_budget_t;

//  The negative cache: a ring of hashes in arrival order, so the oldest
//  goes first when it is full, and an open-addressing index over it
typedef struct {
    uint8_t hash [ZG_SHA256_SIZE];
    int64_t until;
    uint8_t state;                      //  0 = hole
} s_negative_t;

struct _zg_keys_t {
    zhashx_t     *keys;                 //  hash -> s_key_t
    zhashx_t     *users;                //  user_id -> s_budget_t
    zhashx_t     *teams;                //  team_id -> s_budget_t
    s_key_t      *recent;               //  the key found last, or NULL
    uint64_t      generations;
    size_t        double_finishes;
    bool          db_available;
    bool          allow_on_db_unavailable;

    //  Shared counting: the keys counted in since they were last taken
    //  (hashes; a key is listed once until a take finds its window over)
    bool          shared;
    char        (*sync_list) [ZG_KEYS_HASH_HEX + 1];
    size_t        sync_count;
    size_t        sync_capacity;
    size_t        sync_cursor;          //  where the next take starts
    uint64_t      sync_rounds;

    s_negative_t *ring;
    size_t        ring_size;
    size_t        ring_head;            //  oldest
    size_t        ring_used;            //  slots from head, holes included
    uint32_t     *index;                //  ring slot + 1; 0 = empty
    size_t        index_mask;
    size_t        negative_count;       //  slots that are not holes
    int           negative_ttl;
};

//  ---------------------------------------------------------------------
//  Small helpers

//  Python's repr of a float, which is how the reference prints money in
//  its messages and headers
static void
s_format_number (double value, char *buf, size_t size)
{
    if (zg_number_repr (value, buf, size) < 0 && size)
        buf [0] = 0;
}

//  "2026-01-31 12:00:00" in UTC, then suffix
static void
s_format_time (int64_t when, const char *suffix, char *buf, size_t size)
{
    time_t seconds = (time_t) when;
    struct tm parts;
    if (!gmtime_r (&seconds, &parts)) {
        snprintf (buf, size, "%lld%s", (long long) when, suffix);
        return;
    }
    char text [32];
    strftime (text, sizeof (text), "%Y-%m-%d %H:%M:%S", &parts);
    snprintf (buf, size, "%s%s", text, suffix);
}

static int
s_hex_value (char digit)
{
    if (digit >= '0' && digit <= '9')
        return digit - '0';
    if (digit >= 'a' && digit <= 'f')
        return digit - 'a' + 10;
    return -1;
}

//  A stored hash is 64 lowercase hex digits and nothing else
static bool
s_hash_to_bytes (const char *hash, uint8_t bytes [ZG_SHA256_SIZE])
{
    if (!hash)
        return false;
    for (size_t index = 0; index < ZG_SHA256_SIZE; index++) {
        int high = s_hex_value (hash [2 * index]);
        int low = high < 0 ? -1 : s_hex_value (hash [2 * index + 1]);
        if (high < 0 || low < 0)
            return false;
        bytes [index] = (uint8_t) (high << 4 | low);
    }
    return hash [ZG_KEYS_HASH_HEX] == 0;
}

static bool
s_fits (const char *text, size_t max)
{
    return !text || strnlen (text, max + 1) <= max;
}

static void
s_free_item (void **item_p)
{
    free (*item_p);
    *item_p = NULL;
}

static void
s_key_destroy (void **item_p)
{
    s_key_t *key = (s_key_t *) *item_p;
    if (key) {
        free (key->strings);
        free (key);
        *item_p = NULL;
    }
}

//  ---------------------------------------------------------------------
//  Constructor and destructor

//  Tokens are hex SHA-256 digests, as random in their first 16 digits as
//  in all 64, and the data path looks one up several times per call:
//  those 16 are hashed (zhashx's default walks every character), a
//  shorter string whole
static size_t
s_token_hasher (const void *key)
{
    const unsigned char *text = (const unsigned char *) key;
    uint64_t hash = 14695981039346656037ULL;
    for (size_t index = 0; index < 16 && text [index]; index++)
        hash = (hash ^ text [index]) * 1099511628211ULL;
    return (size_t) hash;
}

zg_keys_t *
zg_keys_new (size_t negative_size, int negative_ttl)
{
    zg_keys_t *self = (zg_keys_t *) calloc (1, sizeof (zg_keys_t));
    if (!self)
        return NULL;
    self->db_available = true;
    self->negative_ttl = negative_ttl > 0 ? negative_ttl : ZG_KEYS_NEGATIVE_TTL;
    self->ring_size = negative_size ? negative_size : ZG_KEYS_NEGATIVE_SIZE;
    if (self->ring_size > UINT32_MAX / 4)
        self->ring_size = UINT32_MAX / 4;
    //  At most half full, so probes stay short
    size_t index_size = 16;
    while (index_size < self->ring_size * 2)
        index_size *= 2;
    self->index_mask = index_size - 1;
    self->ring = (s_negative_t *) calloc (self->ring_size, sizeof (s_negative_t));
    self->index = (uint32_t *) calloc (index_size, sizeof (uint32_t));
    self->keys = zhashx_new ();
    self->users = zhashx_new ();
    self->teams = zhashx_new ();
    if (!self->ring || !self->index || !self->keys || !self->users || !self->teams) {
        zg_keys_destroy (&self);
        return NULL;
    }
    zhashx_set_destructor (self->keys, s_key_destroy);
    zhashx_set_key_hasher (self->keys, s_token_hasher);
    zhashx_set_destructor (self->users, s_free_item);
    zhashx_set_destructor (self->teams, s_free_item);
    return self;
}

void
zg_keys_destroy (zg_keys_t **self_p)
{
    assert (self_p);
    zg_keys_t *self = *self_p;
    if (self) {
        zhashx_destroy (&self->keys);
        zhashx_destroy (&self->users);
        zhashx_destroy (&self->teams);
        free (self->sync_list);
        free (self->ring);
        free (self->index);
        free (self);
        *self_p = NULL;
    }
}

//  ---------------------------------------------------------------------
//  The negative cache

static size_t
s_index_home (zg_keys_t *self, const uint8_t *hash)
{
    //  The bytes of a SHA-256 are as good a hash as any
    uint32_t value;
    memcpy (&value, hash, sizeof (value));
    return value & self->index_mask;
}

//  Position in the index of a hash, or -1
static ptrdiff_t
s_negative_find (zg_keys_t *self, const uint8_t *hash)
{
    size_t position = s_index_home (self, hash);
    while (self->index [position]) {
        s_negative_t *entry = &self->ring [self->index [position] - 1];
        if (memcmp (entry->hash, hash, ZG_SHA256_SIZE) == 0)
            return (ptrdiff_t) position;
        position = (position + 1) & self->index_mask;
    }
    return -1;
}

//  Remove index entry at position, shifting back the entries of its probe
//  run that would no longer be found (linear probing has no tombstones)
static void
s_negative_unindex (zg_keys_t *self, size_t position)
{
    size_t hole = position;
    self->index [hole] = 0;
    size_t next = hole;
    while (true) {
        next = (next + 1) & self->index_mask;
        if (!self->index [next])
            break;
        size_t home = s_index_home (self, self->ring [self->index [next] - 1].hash);
        bool stays = hole <= next ? (hole < home && home <= next)
                                  : (hole < home || home <= next);
        if (stays)
            continue;
        self->index [hole] = self->index [next];
        self->index [next] = 0;
        hole = next;
    }
}

static void
s_negative_forget (zg_keys_t *self, const uint8_t *hash)
{
    ptrdiff_t position = s_negative_find (self, hash);
    if (position < 0)
        return;
    s_negative_t *entry = &self->ring [self->index [position] - 1];
    s_negative_unindex (self, (size_t) position);
    entry->state = 0;               //  a hole until the ring passes it
    self->negative_count--;
}

static void
s_negative_put (zg_keys_t *self, const uint8_t *hash, uint8_t state, int64_t until)
{
    ptrdiff_t position = s_negative_find (self, hash);
    if (position >= 0) {
        s_negative_t *entry = &self->ring [self->index [position] - 1];
        entry->state = state;
        entry->until = until;
        return;
    }
    if (self->ring_used == self->ring_size) {
        //  Full: the oldest goes
        s_negative_t *oldest = &self->ring [self->ring_head];
        if (oldest->state) {
            ptrdiff_t oldest_position = s_negative_find (self, oldest->hash);
            assert (oldest_position >= 0);
            s_negative_unindex (self, (size_t) oldest_position);
            self->negative_count--;
        }
        oldest->state = 0;
        self->ring_head = (self->ring_head + 1) % self->ring_size;
        self->ring_used--;
    }
    size_t slot = (self->ring_head + self->ring_used) % self->ring_size;
    self->ring_used++;
    s_negative_t *entry = &self->ring [slot];
    memcpy (entry->hash, hash, ZG_SHA256_SIZE);
    entry->state = state;
    entry->until = until;
    size_t free_position = s_index_home (self, hash);
    while (self->index [free_position])
        free_position = (free_position + 1) & self->index_mask;
    self->index [free_position] = (uint32_t) slot + 1;
    self->negative_count++;
}

//  The live negative entry for a hash, or NULL
static s_negative_t *
s_negative_get (zg_keys_t *self, const uint8_t *hash, int64_t now)
{
    ptrdiff_t position = s_negative_find (self, hash);
    if (position < 0)
        return NULL;
    s_negative_t *entry = &self->ring [self->index [position] - 1];
    return now < entry->until ? entry : NULL;
}

zg_keys_lookup_t
zg_keys_should_lookup (zg_keys_t *self, const char *hash, int64_t now)
{
    assert (self);
    uint8_t bytes [ZG_SHA256_SIZE];
    if (!s_hash_to_bytes (hash, bytes))
        return ZG_KEYS_LOOKUP_KNOWN_BAD;        //  no stored key has such a hash
    if (zhashx_lookup (self->keys, hash))
        return ZG_KEYS_LOOKUP_KNOWN;
    s_negative_t *entry = s_negative_get (self, bytes, now);
    if (entry)
        return entry->state == NEGATIVE_PENDING ? ZG_KEYS_LOOKUP_PENDING
                                                : ZG_KEYS_LOOKUP_KNOWN_BAD;
    s_negative_put (self, bytes, NEGATIVE_PENDING, now + self->negative_ttl);
    return ZG_KEYS_LOOKUP;
}

void
zg_keys_remember_unknown (zg_keys_t *self, const char *hash, int64_t now)
{
    assert (self);
    uint8_t bytes [ZG_SHA256_SIZE];
    if (s_hash_to_bytes (hash, bytes) && !zhashx_lookup (self->keys, hash))
        s_negative_put (self, bytes, NEGATIVE_UNKNOWN, now + self->negative_ttl);
}

size_t
zg_keys_negative_size (zg_keys_t *self)
{
    assert (self);
    return self->negative_count;
}

//  ---------------------------------------------------------------------
//  Feeding the table

//  Spend merge between what the table has and what the database says,
//  by budget period (see zg_keys_upsert in the header)
static void
s_merge_spend (double *spend, int64_t *reset_at, double incoming, int64_t incoming_reset_at)
{
    if (incoming_reset_at > *reset_at) {
        *spend = incoming;
        *reset_at = incoming_reset_at;
    }
    else
    if (incoming_reset_at == *reset_at && incoming > *spend)
        *spend = incoming;
}

//  Copy a record's strings into one allocation, with the record pointing
//  into it. NULL when a bound is broken or memory is short.
static char *
s_record_copy (const zg_key_record_t *source, zg_key_record_t *copy)
{
    const char *texts [] = { source->token, source->key_name, source->key_alias,
                             source->budget_duration, source->user_id, source->team_id };
    size_t total = 0;
    for (size_t index = 0; index < sizeof (texts) / sizeof (texts [0]); index++) {
        if (!s_fits (texts [index], ZG_KEYS_ID_MAX))
            return NULL;
        total += (texts [index] ? strlen (texts [index]) : 0) + 1;
    }
    if (!s_fits (source->metadata, ZG_KEYS_METADATA_MAX))
        return NULL;
    total += (source->metadata ? strlen (source->metadata) : 0) + 1;
    if (source->models_count > ZG_KEYS_MODELS_MAX
    || (source->models_count && !source->models))
        return NULL;
    for (size_t index = 0; index < source->models_count; index++) {
        if (!source->models [index] || !s_fits (source->models [index], ZG_KEYS_ID_MAX))
            return NULL;
        total += strlen (source->models [index]) + 1;
    }
    size_t array_size = source->models_count * sizeof (char *);
    char *strings = (char *) malloc (array_size + total);
    if (!strings)
        return NULL;
    *copy = *source;
    const char **models = (const char **) strings;
    char *cursor = strings + array_size;
    const char **targets [] = { &copy->token, &copy->key_name, &copy->key_alias,
                                &copy->budget_duration, &copy->user_id, &copy->team_id };
    for (size_t index = 0; index < sizeof (texts) / sizeof (texts [0]); index++) {
        size_t length = texts [index] ? strlen (texts [index]) : 0;
        memcpy (cursor, texts [index] ? texts [index] : "", length + 1);
        *targets [index] = cursor;
        cursor += length + 1;
    }
    size_t length = source->metadata ? strlen (source->metadata) : 0;
    memcpy (cursor, source->metadata ? source->metadata : "", length + 1);
    copy->metadata = cursor;
    cursor += length + 1;
    for (size_t index = 0; index < source->models_count; index++) {
        length = strlen (source->models [index]);
        memcpy (cursor, source->models [index], length + 1);
        models [index] = cursor;
        cursor += length + 1;
    }
    copy->models = source->models_count ? models : NULL;
    return strings;
}

int
zg_keys_upsert (zg_keys_t *self, const zg_key_record_t *record)
{
    assert (self);
    assert (record);
    uint8_t bytes [ZG_SHA256_SIZE];
    if (!s_hash_to_bytes (record->token, bytes))
        return -1;
    int64_t probe;
    if (record->budget_duration && *record->budget_duration
    &&  zg_keys_duration_end (record->budget_duration, 0, &probe) != 0)
        return -1;
    zg_key_record_t copy;
    char *strings = s_record_copy (record, &copy);
    if (!strings)
        return -1;

    s_key_t *key = (s_key_t *) zhashx_lookup (self->keys, record->token);
    if (key) {
        double spend = key->record.spend;
        int64_t reset_at = key->record.budget_reset_at;
        s_merge_spend (&spend, &reset_at, record->spend, record->budget_reset_at);
        free (key->strings);
        key->strings = strings;
        key->record = copy;
        key->record.spend = spend;
        key->record.budget_reset_at = reset_at;
    }
    else {
        key = (s_key_t *) calloc (1, sizeof (s_key_t));
        if (!key) {
            free (strings);
            return -1;
        }
        key->strings = strings;
        key->record = copy;
        key->generation = ++self->generations;
        if (zhashx_insert (self->keys, copy.token, key) != 0) {
            s_key_destroy ((void **) &key);
            return -1;
        }
    }
    if (key->record.soft_budget < 0 || key->record.spend < key->record.soft_budget)
        key->soft_budget_reported = false;
    s_negative_forget (self, bytes);
    return 0;
}

int
zg_keys_remove (zg_keys_t *self, const char *hash)
{
    assert (self);
    if (!hash || !zhashx_lookup (self->keys, hash))
        return -1;
    self->recent = NULL;
    zhashx_delete (self->keys, hash);
    return 0;
}

//  A call looks its key up at each of its steps (admit, request, usage,
//  finish, headers), mostly one right after the other: the key found last
//  is tried first, a string compare instead of hashing and a bucket walk
static s_key_t *
s_key_find (zg_keys_t *self, const char *hash)
{
    if (!hash)
        return NULL;
    if (self->recent && strcmp (self->recent->record.token, hash) == 0)
        return self->recent;
    s_key_t *key = (s_key_t *) zhashx_lookup (self->keys, hash);
    if (key)
        self->recent = key;
    return key;
}

const zg_key_record_t *
zg_keys_lookup (zg_keys_t *self, const char *hash)
{
    assert (self);
    s_key_t *key = s_key_find (self, hash);
    return key ? &key->record : NULL;
}

size_t
zg_keys_size (zg_keys_t *self)
{
    assert (self);
    return zhashx_size (self->keys);
}

static zhashx_t *
s_owners (zg_keys_t *self, zg_keys_owner_t owner)
{
    return owner == ZG_KEYS_FOR_USER ? self->users : self->teams;
}

//  A user's or team's budget, made when missing; NULL on a bad id
static s_budget_t *
s_budget_require (zg_keys_t *self, zg_keys_owner_t owner, const char *id)
{
    if (!id || !*id || !s_fits (id, ZG_KEYS_ID_MAX))
        return NULL;
    zhashx_t *owners = s_owners (self, owner);
    s_budget_t *budget = (s_budget_t *) zhashx_lookup (owners, id);
    if (!budget) {
        budget = (s_budget_t *) calloc (1, sizeof (s_budget_t));
        if (!budget)
            return NULL;
        budget->max_budget = -1;
        if (zhashx_insert (owners, id, budget) != 0) {
            free (budget);
            return NULL;
        }
    }
    return budget;
}

int
zg_keys_set_budget (zg_keys_t *self, zg_keys_owner_t owner, const char *id,
                    double spend, double max_budget, int64_t budget_reset_at)
{
    assert (self);
    if (owner == ZG_KEYS_FOR_KEY)
        return -1;
    s_budget_t *budget = s_budget_require (self, owner, id);
    if (!budget)
        return -1;
    budget->max_budget = max_budget;
    s_merge_spend (&budget->spend, &budget->budget_reset_at, spend, budget_reset_at);
    return 0;
}

int
zg_keys_set_spend (zg_keys_t *self, zg_keys_owner_t owner, const char *id, double spend)
{
    assert (self);
    if (!id)
        return -1;
    if (owner == ZG_KEYS_FOR_KEY) {
        s_key_t *key = (s_key_t *) zhashx_lookup (self->keys, id);
        if (!key)
            return -1;
        key->record.spend = spend;
        if (key->record.soft_budget < 0 || spend < key->record.soft_budget)
            key->soft_budget_reported = false;
        return 0;
    }
    s_budget_t *budget = (s_budget_t *) zhashx_lookup (s_owners (self, owner), id);
    if (!budget)
        return -1;
    budget->spend = spend;
    return 0;
}

//  ---------------------------------------------------------------------
//  The data path

void
zg_keys_set_db_available (zg_keys_t *self, bool available)
{
    assert (self);
    self->db_available = available;
}

void
zg_keys_set_allow_on_db_unavailable (zg_keys_t *self, bool allow)
{
    assert (self);
    self->allow_on_db_unavailable = allow;
}

//  A budget period that has ended starts again from zero here, at once,
//  rather than when the database's reset job gets to it
static void
s_budget_roll (s_key_t *key, int64_t now)
{
    zg_key_record_t *record = &key->record;
    if (!record->budget_duration || !*record->budget_duration || !record->budget_reset_at
    ||  now < record->budget_reset_at)
        return;
    int64_t next;
    if (zg_keys_duration_end (record->budget_duration, now, &next) != 0 || next <= now)
        return;                         //  a zero duration never rolls here
    record->spend = 0;
    record->budget_reset_at = next;
    key->soft_budget_reported = false;
}

static void
s_verdict_ok (zg_keys_verdict_t *verdict, zg_keys_reason_t reason)
{
    verdict->reason = reason;
    verdict->allowed = true;
    verdict->status = 200;
    verdict->type = NULL;
    verdict->param = NULL;
    verdict->message [0] = 0;
}

static void
s_verdict_refuse (zg_keys_verdict_t *verdict, zg_keys_reason_t reason, int status,
                  const char *type, const char *param)
{
    verdict->reason = reason;
    verdict->allowed = false;
    verdict->status = status;
    verdict->type = type;
    verdict->param = param;
}

static bool
s_model_allowed (const zg_key_record_t *record, const char *model)
{
    if (record->models_count == 0 || !model || !*model)
        return true;
    for (size_t index = 0; index < record->models_count; index++)
        if (strcmp (record->models [index], model) == 0)
            return true;
    return false;
}

//  "key not allowed to access model. This key can only access
//  models=['a', 'b']. Tried to access x", the list as Python prints it
static void
s_model_denied_message (const zg_key_record_t *record, const char *model, char *buf, size_t size)
{
    size_t used = (size_t) snprintf (buf, size, "key not allowed to access model. "
                                     "This key can only access models=[");
    for (size_t index = 0; index < record->models_count && used < size; index++)
        used += (size_t) snprintf (buf + used, size - used, "%s'%s'",
                                   index ? ", " : "", record->models [index]);
    if (used < size)
        snprintf (buf + used, size - used, "]. Tried to access %s", model);
}

static void
s_rate_limited (zg_keys_verdict_t *verdict, zg_keys_reason_t reason, const char *hash,
                const char *limit_type, int64_t limit, int64_t resets, int64_t now)
{
    s_verdict_refuse (verdict, reason, 429, "rate_limit_error", NULL);
    verdict->rate_limit_type = limit_type;
    verdict->retry_after = resets > now ? (int) (resets - now) : 1;
    s_format_time (resets, " UTC", verdict->reset_at, sizeof (verdict->reset_at));
    snprintf (verdict->message, sizeof (verdict->message),
              "Rate limit exceeded for api_key: %s. Limit type: %s. Current limit: %lld, "
              "Remaining: 0. Limit resets at: %s",
              hash, limit_type, (long long) limit, verdict->reset_at);
}

static bool
s_over_budget (double spend, double max_budget)
{
    return max_budget >= 0 && spend >= max_budget;
}

//  The whole check; key is the table's entry or NULL
//  ---------------------------------------------------------------------
//  Rate-limit windows

static bool
s_window_open (const s_key_t *key, int64_t now)
{
    return key->window_start && now - key->window_start < ZG_KEYS_WINDOW;
}

//  The window's counts as a check sees them: this instance's, and what
//  the others counted as last synced
static void
s_window_counts (const s_key_t *key, int64_t now, int64_t *requests, int64_t *tokens)
{
    if (!s_window_open (key, now)) {
        *requests = *tokens = 0;
        return;
    }
    int64_t others = key->shared_requests - key->pushed_requests;
    *requests = key->window_requests + (others > 0 ? others : 0);
    others = key->shared_tokens - key->pushed_tokens;
    *tokens = key->window_tokens + (others > 0 ? others : 0);
}

//  Lists a key counted in since it was last taken for syncing, once. When
//  the list cannot grow the key is counted here alone, as without Redis.
static void
s_sync_note (zg_keys_t *self, s_key_t *key)
{
    if (key->sync_listed || (key->record.rpm_limit < 0 && key->record.tpm_limit < 0))
        return;
    if (self->sync_count == self->sync_capacity) {
        size_t capacity = self->sync_capacity ? self->sync_capacity * 2 : 64;
        void *list = realloc (self->sync_list, capacity * sizeof (self->sync_list [0]));
        if (!list)
            return;
        self->sync_list = (char (*) [ZG_KEYS_HASH_HEX + 1]) list;
        self->sync_capacity = capacity;
    }
    memcpy (self->sync_list [self->sync_count++], key->record.token, ZG_KEYS_HASH_HEX + 1);
    key->sync_listed = true;
}

//  A new window when the last one is over: from now, or with shared
//  counting from the multiple of ZG_KEYS_WINDOW that holds now
static void
s_window_roll (zg_keys_t *self, s_key_t *key, int64_t now)
{
    if (self->shared)
        s_sync_note (self, key);
    if (s_window_open (key, now))
        return;
    key->window_start = self->shared ? now - ((now % ZG_KEYS_WINDOW) + ZG_KEYS_WINDOW)
                                             % ZG_KEYS_WINDOW
                                     : now;
    key->window_requests = 0;
    key->window_tokens = 0;
    key->pushed_requests = 0;
    key->pushed_tokens = 0;
    key->shared_requests = 0;
    key->shared_tokens = 0;
}

void
zg_keys_set_shared (zg_keys_t *self, bool shared)
{
    assert (self);
    self->shared = shared;
}

size_t
zg_keys_sync_take (zg_keys_t *self, int64_t now, zg_keys_sync_t *entries, size_t max)
{
    assert (self);
    assert (entries || !max);
    uint64_t round = ++self->sync_rounds;
    //  Keep the keys whose window is still open, each once (a key removed
    //  and made again may be listed twice)
    size_t kept = 0;
    for (size_t index = 0; index < self->sync_count; index++) {
        s_key_t *key = (s_key_t *) zhashx_lookup (self->keys, self->sync_list [index]);
        if (!key || key->sync_round == round)
            continue;
        if (!s_window_open (key, now)
        ||  (key->record.rpm_limit < 0 && key->record.tpm_limit < 0)) {
            key->sync_listed = false;
            continue;
        }
        key->sync_round = round;
        if (kept != index)
            memcpy (self->sync_list [kept], self->sync_list [index], ZG_KEYS_HASH_HEX + 1);
        kept++;
    }
    self->sync_count = kept;
    //  More keys than a round takes: the next round goes on from here
    size_t taken = kept < max ? kept : max;
    size_t start = self->sync_cursor < kept ? self->sync_cursor : 0;
    for (size_t count = 0; count < taken; count++) {
        const char *hash = self->sync_list [(start + count) % kept];
        s_key_t *key = (s_key_t *) zhashx_lookup (self->keys, hash);
        assert (key);
        zg_keys_sync_t *entry = &entries [count];
        memset (entry, 0, sizeof (*entry));
        memcpy (entry->hash, hash, ZG_KEYS_HASH_HEX + 1);
        entry->generation = key->generation;
        entry->window_start = key->window_start;
        entry->add_requests = key->window_requests - key->pushed_requests;
        entry->add_tokens = key->window_tokens - key->pushed_tokens;
    }
    self->sync_cursor = kept ? (start + taken) % kept : 0;
    return taken;
}

int
zg_keys_sync_learn (zg_keys_t *self, const zg_keys_sync_t *entry)
{
    assert (self);
    assert (entry);
    s_key_t *key = (s_key_t *) zhashx_lookup (self->keys, entry->hash);
    if (!entry->known || !key || key->generation != entry->generation
    ||  key->window_start != entry->window_start)
        return -1;
    //  Totals under what this instance pushed: the store lost the window
    //  (a restart without persistence, an eviction) and holds only this
    //  push of ours. The rest goes again with the next.
    if (entry->total_requests < key->pushed_requests + entry->add_requests)
        key->pushed_requests = entry->add_requests;
    else
        key->pushed_requests += entry->add_requests;
    if (entry->total_tokens < key->pushed_tokens + entry->add_tokens)
        key->pushed_tokens = entry->add_tokens;
    else
        key->pushed_tokens += entry->add_tokens;
    key->shared_requests = entry->total_requests;
    key->shared_tokens = entry->total_tokens;
    return 0;
}

static int
s_evaluate (zg_keys_t *self, s_key_t *key, const char *hash, const char *presented_key,
            const char *model, int64_t now, zg_keys_verdict_t *verdict)
{
    verdict->retry_after = 0;
    verdict->rate_limit_type = NULL;
    verdict->reset_at [0] = 0;
    verdict->key = key ? &key->record : NULL;

    if (!key) {
        uint8_t bytes [ZG_SHA256_SIZE];
        bool valid = s_hash_to_bytes (hash, bytes);
        s_negative_t *known_bad = valid ? s_negative_get (self, bytes, now) : NULL;
        bool bad = !valid || (known_bad && known_bad->state == NEGATIVE_UNKNOWN);
        if (!self->db_available && !bad) {
            //  Production guide §6: the database cannot say no, so with
            //  the flag the caller comes in, but as nobody in particular
            if (self->allow_on_db_unavailable) {
                s_verdict_ok (verdict, ZG_KEYS_OK_UNPRIVILEGED);
                return 0;
            }
            s_verdict_refuse (verdict, ZG_KEYS_DB_UNAVAILABLE, 503, "no_db_connection", NULL);
            snprintf (verdict->message, sizeof (verdict->message),
                      "Service Unavailable, the authentication database is temporarily "
                      "unreachable. Please retry shortly.");
            return -1;
        }
        char shown [16] = "sk-...";
        size_t length = presented_key ? strlen (presented_key) : 0;
        //  As zg_auth: 4 characters only of a key long enough that they
        //  give little of it away
        if (length >= 12)
            snprintf (shown, sizeof (shown), "sk-...%s", presented_key + length - 4);
        s_verdict_refuse (verdict, ZG_KEYS_UNKNOWN, 401, "token_not_found_in_db", "key");
        snprintf (verdict->message, sizeof (verdict->message),
                  "Authentication Error, Invalid proxy server token passed. Received API Key = "
                  "%s, Key Hash (Token) =%.64s. Unable to find token in cache or "
                  "`LiteLLM_VerificationTokenTable`", shown, hash ? hash : "");
        return -1;
    }

    zg_key_record_t *record = &key->record;
    //  The reference refuses only once expiry is in the past
    if (record->expires && now > record->expires) {
        s_verdict_refuse (verdict, ZG_KEYS_EXPIRED, 401, "expired_key", record->key_name);
        char expiry [48], current [48];
        s_format_time (record->expires, "+00:00", expiry, sizeof (expiry));
        s_format_time (now, "+00:00", current, sizeof (current));
        snprintf (verdict->message, sizeof (verdict->message),
                  "Authentication Error - Expired Key. Key Expiry time %s and current time %s",
                  expiry, current);
        return -1;
    }
    if (record->blocked) {
        s_verdict_refuse (verdict, ZG_KEYS_BLOCKED, 401, "auth_error", "None");
        snprintf (verdict->message, sizeof (verdict->message),
                  "Authentication Error, Key is blocked. Update via `/key/unblock` if you're "
                  "an admin.");
        return -1;
    }
    if (!s_model_allowed (record, model)) {
        s_verdict_refuse (verdict, ZG_KEYS_MODEL_DENIED, 403, "key_model_access_denied", "model");
        s_model_denied_message (record, model, verdict->message, sizeof (verdict->message));
        return -1;
    }

    s_budget_roll (key, now);
    char spend [40], limit [40];
    if (s_over_budget (record->spend, record->max_budget)) {
        s_verdict_refuse (verdict, ZG_KEYS_KEY_OVER_BUDGET, 429, "budget_exceeded", NULL);
        s_format_number (record->spend, spend, sizeof (spend));
        s_format_number (record->max_budget, limit, sizeof (limit));
        snprintf (verdict->message, sizeof (verdict->message),
                  "Budget has been exceeded! Current cost: %s, Max budget: %s", spend, limit);
        return -1;
    }
    s_budget_t *team = *record->team_id
                     ? (s_budget_t *) zhashx_lookup (self->teams, record->team_id) : NULL;
    if (team && s_over_budget (team->spend, team->max_budget)) {
        s_verdict_refuse (verdict, ZG_KEYS_TEAM_OVER_BUDGET, 429, "budget_exceeded", NULL);
        s_format_number (team->spend, spend, sizeof (spend));
        s_format_number (team->max_budget, limit, sizeof (limit));
        snprintf (verdict->message, sizeof (verdict->message),
                  "Budget has been exceeded! Team=%s Current cost: %s, Max budget: %s",
                  record->team_id, spend, limit);
        return -1;
    }
    s_budget_t *user = *record->user_id
                     ? (s_budget_t *) zhashx_lookup (self->users, record->user_id) : NULL;
    if (user && s_over_budget (user->spend, user->max_budget)) {
        s_verdict_refuse (verdict, ZG_KEYS_USER_OVER_BUDGET, 429, "budget_exceeded", NULL);
        s_format_number (user->spend, spend, sizeof (spend));
        s_format_number (user->max_budget, limit, sizeof (limit));
        snprintf (verdict->message, sizeof (verdict->message),
                  "ExceededBudget: User=%s over budget. Spend=%s, Budget=%s",
                  record->user_id, spend, limit);
        return -1;
    }

    bool window_open = s_window_open (key, now);
    int64_t window_end = key->window_start + ZG_KEYS_WINDOW;
    int64_t requests, tokens;
    s_window_counts (key, now, &requests, &tokens);
    if (window_open && record->rpm_limit >= 0 && requests >= record->rpm_limit) {
        s_rate_limited (verdict, ZG_KEYS_OVER_RPM, record->token, "requests",
                        record->rpm_limit, window_end, now);
        return -1;
    }
    if (!window_open && record->rpm_limit == 0) {
        s_rate_limited (verdict, ZG_KEYS_OVER_RPM, record->token, "requests", 0,
                        now + ZG_KEYS_WINDOW, now);
        return -1;
    }
    if (record->tpm_limit >= 0
    &&  tokens >= record->tpm_limit) {
        s_rate_limited (verdict, ZG_KEYS_OVER_TPM, record->token, "tokens", record->tpm_limit,
                        window_open ? window_end : now + ZG_KEYS_WINDOW, now);
        return -1;
    }
    //  A slot frees when any call of the key ends, which no clock says:
    //  tell the client to try again in a second rather than a window
    if (record->max_parallel_requests >= 0 && key->in_flight >= record->max_parallel_requests) {
        s_rate_limited (verdict, ZG_KEYS_OVER_PARALLEL, record->token, "max_parallel_requests",
                        record->max_parallel_requests, now + 1, now);
        return -1;
    }
    s_verdict_ok (verdict, ZG_KEYS_OK);
    return 0;
}

int
zg_keys_check (zg_keys_t *self, const char *hash, const char *presented_key,
               const char *model, int64_t now, zg_keys_verdict_t *verdict)
{
    assert (self);
    assert (verdict);
    s_key_t *key = s_key_find (self, hash);
    return s_evaluate (self, key, hash, presented_key, model, now, verdict);
}

int
zg_keys_admit (zg_keys_t *self, const char *hash, const char *presented_key,
               const char *model, int64_t now, zg_keys_verdict_t *verdict,
               zg_keys_ticket_t *ticket)
{
    assert (self);
    assert (verdict);
    assert (ticket);
    memset (ticket, 0, sizeof (*ticket));
    s_key_t *key = s_key_find (self, hash);
    int rc = s_evaluate (self, key, hash, presented_key, model, now, verdict);
    if (rc == 0 && key) {
        s_window_roll (self, key, now);
        key->window_requests++;
        key->in_flight++;
        memcpy (ticket->hash, key->record.token, ZG_KEYS_HASH_HEX + 1);
        ticket->generation = key->generation;
        ticket->state = TICKET_IN_FLIGHT;
    }
    return rc;
}

void
zg_keys_finish (zg_keys_t *self, zg_keys_ticket_t *ticket)
{
    assert (self);
    assert (ticket);
    if (ticket->state == TICKET_FINISHED) {
        self->double_finishes++;
        return;
    }
    if (ticket->state != TICKET_IN_FLIGHT)
        return;
    ticket->state = TICKET_FINISHED;
    s_key_t *key = s_key_find (self, ticket->hash);
    if (key && key->generation == ticket->generation && key->in_flight > 0)
        key->in_flight--;
}

size_t
zg_keys_double_finishes (zg_keys_t *self)
{
    assert (self);
    return self->double_finishes;
}

int
zg_keys_record_usage (zg_keys_t *self, const char *hash, int64_t tokens, double cost,
                      int64_t now)
{
    assert (self);
    s_key_t *key = s_key_find (self, hash);
    if (!key)
        return -1;
    if (tokens < 0)
        tokens = 0;
    if (!(cost >= 0))
        cost = 0;                       //  negative or NaN cost from a bad upstream
    zg_key_record_t *record = &key->record;
    s_budget_roll (key, now);
    s_window_roll (self, key, now);
    key->window_tokens += tokens;
    record->spend += cost;
    s_budget_t *user = s_budget_require (self, ZG_KEYS_FOR_USER, record->user_id);
    if (user)
        user->spend += cost;
    s_budget_t *team = s_budget_require (self, ZG_KEYS_FOR_TEAM, record->team_id);
    if (team)
        team->spend += cost;
    if (record->soft_budget >= 0 && record->spend >= record->soft_budget
    &&  !key->soft_budget_reported) {
        key->soft_budget_reported = true;
        return 1;
    }
    return 0;
}

//  value in decimal, ending at end (which gets the NUL); returns its start
static char *
s_integer_text (int64_t value, char *end)
{
    uint64_t magnitude = value < 0 ? 0 - (uint64_t) value : (uint64_t) value;
    *end = 0;
    char *cursor = zg_number_uint_text (magnitude, end);
    if (value < 0)
        *--cursor = '-';
    return cursor;
}

int
zg_keys_each_header (zg_keys_t *self, const char *hash, int64_t now,
                     zg_keys_header_fn *header, void *arg)
{
    assert (self);
    assert (header);
    s_key_t *key = s_key_find (self, hash);
    if (!key)
        return 0;
    const zg_key_record_t *record = &key->record;
    int64_t requests, tokens;
    s_window_counts (key, now, &requests, &tokens);
    //  Spelled here rather than by printf: this runs for every answer
    char number [40], limit [24];
    char *limit_end = limit + sizeof (limit) - 1;
    char *number_end = number + sizeof (number) - 1;
    int count = 0;
    if (record->rpm_limit >= 0) {
        int64_t remaining = record->rpm_limit - requests;
        header (arg, "x-ratelimit-remaining-requests",
                s_integer_text (remaining > 0 ? remaining : 0, number_end));
        header (arg, "x-ratelimit-limit-requests", s_integer_text (record->rpm_limit, limit_end));
        count += 2;
    }
    if (record->tpm_limit >= 0) {
        int64_t remaining = record->tpm_limit - tokens;
        header (arg, "x-ratelimit-remaining-tokens",
                s_integer_text (remaining > 0 ? remaining : 0, number_end));
        header (arg, "x-ratelimit-limit-tokens", s_integer_text (record->tpm_limit, limit_end));
        count += 2;
    }
    s_format_number (record->spend, number, sizeof (number));
    header (arg, "x-litellm-key-spend", number);
    count++;
    if (record->max_budget >= 0) {
        s_format_number (record->max_budget, number, sizeof (number));
        header (arg, "x-litellm-key-max-budget", number);
        count++;
    }
    return count;
}

typedef struct {
    char   *buf;
    size_t  size;
    size_t  used;
    bool    fits;
} s_header_text_t;

//  Appends "name: value\r\n" when it fits with its NUL
static void
s_header_text_add (void *arg, const char *name, const char *value)
{
    s_header_text_t *text = (s_header_text_t *) arg;
    size_t name_length = strlen (name);
    size_t value_length = strlen (value);
    size_t length = name_length + 2 + value_length + 2;
    if (!text->fits || text->used + length >= text->size) {
        text->fits = false;
        return;
    }
    char *cursor = text->buf + text->used;
    memcpy (cursor, name, name_length);
    cursor += name_length;
    memcpy (cursor, ": ", 2);
    cursor += 2;
    memcpy (cursor, value, value_length);
    cursor += value_length;
    memcpy (cursor, "\r\n", 3);
    text->used += length;
}

//  The headers as "name: value\r\n" lines, for the self test: the
//  length, 0 for an unknown key, -1 when buf is too small
static int
s_headers_text (zg_keys_t *self, const char *hash, int64_t now, char *buf, size_t size)
{
    assert (self);
    assert (buf && size);
    buf [0] = 0;
    s_header_text_t text = { buf, size, 0, true };
    zg_keys_each_header (self, hash, now, s_header_text_add, &text);
    if (!text.fits) {
        buf [0] = 0;
        return -1;
    }
    return (int) text.used;
}

//  ---------------------------------------------------------------------
//  Keys and durations

int
zg_keys_generate (char key [ZG_KEYS_KEY_MAX + 1])
{
    assert (key);
    static const char alphabet [] =
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    uint8_t random [16];
    size_t got = 0;
    while (got < sizeof (random)) {
        ssize_t rc = getrandom (random + got, sizeof (random) - got, 0);
        if (rc < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        got += (size_t) rc;
    }
    char *out = key;
    memcpy (out, "sk-", 3);
    out += 3;
    //  16 bytes: five groups of 3 (20 characters), then 1 byte (2 more)
    for (size_t index = 0; index < 15; index += 3) {
        uint32_t group = (uint32_t) random [index] << 16 | (uint32_t) random [index + 1] << 8
                       | random [index + 2];
        *out++ = alphabet [group >> 18 & 63];
        *out++ = alphabet [group >> 12 & 63];
        *out++ = alphabet [group >> 6 & 63];
        *out++ = alphabet [group & 63];
    }
    *out++ = alphabet [random [15] >> 2];
    *out++ = alphabet [(random [15] & 3) << 4];
    *out = 0;
    explicit_bzero (random, sizeof (random));
    return 0;
}

void
zg_keys_hash (const char *key, char hash [ZG_KEYS_HASH_HEX + 1])
{
    assert (key);
    zg_sha256_hex (key, strlen (key), hash);
}

void
zg_keys_key_name (const char *key, char *buf, size_t size)
{
    assert (key);
    assert (buf && size);
    size_t length = strlen (key);
    snprintf (buf, size, "sk-...%s", key + (length > 4 ? length - 4 : 0));
}

int
zg_keys_duration_end (const char *duration, int64_t from, int64_t *end)
{
    assert (end);
    if (!duration || *duration < '0' || *duration > '9')
        return -1;
    int64_t value = 0;
    const char *cursor = duration;
    while (*cursor >= '0' && *cursor <= '9') {
        if (value > 1000000000)         //  no duration needs more digits
            return -1;
        value = value * 10 + (*cursor++ - '0');
    }
    int64_t unit = 0;
    if (streq (cursor, "s"))
        unit = 1;
    else
    if (streq (cursor, "m"))
        unit = 60;
    else
    if (streq (cursor, "h"))
        unit = 3600;
    else
    if (streq (cursor, "d"))
        unit = 86400;
    else
    if (streq (cursor, "w"))
        unit = 604800;
    else
    if (streq (cursor, "mo")) {
        //  Calendar months, the day clamped to the target month's last,
        //  as the reference's duration_in_seconds does
        time_t seconds = (time_t) from;
        struct tm parts;
        if (!gmtime_r (&seconds, &parts))
            return -1;
        int64_t months = (int64_t) parts.tm_mon + value;
        int64_t year = (int64_t) parts.tm_year + months / 12;
        if (year > 100000)
            return -1;
        parts.tm_year = (int) year;
        parts.tm_mon = (int) (months % 12);
        static const int days_in [] = { 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31 };
        int full_year = parts.tm_year + 1900;
        bool leap = (full_year % 4 == 0 && full_year % 100 != 0) || full_year % 400 == 0;
        int last = days_in [parts.tm_mon] + (parts.tm_mon == 1 && leap);
        if (parts.tm_mday > last)
            parts.tm_mday = last;
        *end = (int64_t) timegm (&parts);
        return 0;
    }
    else
        return -1;
    if (value > (INT64_MAX - (from > 0 ? from : 0)) / unit)
        return -1;
    *end = from + value * unit;
    return 0;
}

//  ---------------------------------------------------------------------
//  Self test


//  A key record with every limit off, for the tests to adjust
static zg_key_record_t
s_test_record (const char *hash)
{
    zg_key_record_t record;
    memset (&record, 0, sizeof (record));
    record.token = hash;
    record.key_name = "sk-...test";
    record.max_budget = -1;
    record.soft_budget = -1;
    record.rpm_limit = -1;
    record.tpm_limit = -1;
    record.max_parallel_requests = -1;
    return record;
}

static void
s_test_hash_of (int seed, char hash [ZG_KEYS_HASH_HEX + 1])
{
    char text [32];
    snprintf (text, sizeof (text), "test-key-%d", seed);
    zg_keys_hash (text, hash);
}

//  A stand-in for Redis: the shared totals of one key's window
typedef struct {
    int64_t window;
    int64_t requests;
    int64_t tokens;
} s_test_store_t;

//  One sync of a table against the store (up), or against a store that
//  does not answer; returns the entries taken
static size_t
s_test_sync (zg_keys_t *keys, s_test_store_t *store, int64_t now, bool up)
{
    zg_keys_sync_t entries [4];
    size_t count = zg_keys_sync_take (keys, now, entries, 4);
    for (size_t index = 0; index < count && up; index++) {
        zg_keys_sync_t *entry = &entries [index];
        if (entry->window_start != store->window) {
            store->window = entry->window_start;
            store->requests = store->tokens = 0;
        }
        store->requests += entry->add_requests;
        store->tokens += entry->add_tokens;
        entry->total_requests = store->requests;
        entry->total_tokens = store->tokens;
        entry->known = true;
        ZG_CHECK (zg_keys_sync_learn (keys, entry) == 0);
    }
    return count;
}

static int
s_test_admit (zg_keys_t *keys, const char *hash, int64_t now, zg_keys_verdict_t *verdict)
{
    zg_keys_ticket_t ticket;
    int rc = zg_keys_admit (keys, hash, NULL, "gpt-4o", now, verdict, &ticket);
    zg_keys_finish (keys, &ticket);
    return rc;
}

//  Two instances sharing one store: local counts plus the others' as
//  last synced, windows aligned and rolling over, the store down or lost
static void
s_test_shared (int64_t now)
{
    zg_keys_t *first = zg_keys_new (0, 0);
    zg_keys_t *second = zg_keys_new (0, 0);
    ZG_CHECK (first && second);
    zg_keys_set_shared (first, true);
    zg_keys_set_shared (second, true);
    char hash [ZG_KEYS_HASH_HEX + 1], free_hash [ZG_KEYS_HASH_HEX + 1];
    s_test_hash_of (7001, hash);
    s_test_hash_of (7002, free_hash);
    zg_key_record_t record = s_test_record (hash);
    record.rpm_limit = 10;
    record.tpm_limit = 1000;
    ZG_CHECK (zg_keys_upsert (first, &record) == 0);
    ZG_CHECK (zg_keys_upsert (second, &record) == 0);
    zg_key_record_t unlimited = s_test_record (free_hash);
    ZG_CHECK (zg_keys_upsert (first, &unlimited) == 0);
    s_test_store_t store = { 0, 0, 0 };
    zg_keys_verdict_t verdict;
    char buf [512];

    //  The window is the minute that holds the first request, on both
    const int64_t window = now + 600;       //  now is on a minute
    int64_t at = window + 7;
    for (int count = 0; count < 3; count++)
        ZG_CHECK (s_test_admit (first, hash, at, &verdict) == 0);
    for (int count = 0; count < 2; count++)
        ZG_CHECK (s_test_admit (second, hash, at, &verdict) == 0);
    //  A key without limits is never synced
    ZG_CHECK (s_test_admit (first, free_hash, at, &verdict) == 0);
    ZG_CHECK (s_headers_text (first, hash, at, buf, sizeof (buf)) > 0);
    ZG_CHECK (strstr (buf, "x-ratelimit-remaining-requests: 7\r\n"));

    //  Syncs: the store adds up, each learns the others' part
    ZG_CHECK (s_test_sync (first, &store, at, true) == 1);
    ZG_CHECK (store.window == window && store.requests == 3);
    ZG_CHECK (s_test_sync (second, &store, at, true) == 1);
    ZG_CHECK (store.requests == 5);
    ZG_CHECK (s_headers_text (second, hash, at, buf, sizeof (buf)) > 0);
    ZG_CHECK (strstr (buf, "x-ratelimit-remaining-requests: 5\r\n"));
    //  Nothing new here: the totals are learned all the same
    ZG_CHECK (s_test_sync (first, &store, at, true) == 1);
    ZG_CHECK (store.requests == 5);
    ZG_CHECK (s_headers_text (first, hash, at, buf, sizeof (buf)) > 0);
    ZG_CHECK (strstr (buf, "x-ratelimit-remaining-requests: 5\r\n"));

    //  The first admits up to the shared limit, then refuses till the
    //  window's end
    for (int count = 0; count < 5; count++)
        ZG_CHECK (s_test_admit (first, hash, at + 1, &verdict) == 0);
    ZG_CHECK (s_test_admit (first, hash, at + 1, &verdict) == -1);
    ZG_CHECK (verdict.reason == ZG_KEYS_OVER_RPM && verdict.retry_after == 60 - 8);
    //  The second has not heard yet: it admits (the bounded overshoot)
    //  until a sync tells it
    ZG_CHECK (s_test_admit (second, hash, at + 1, &verdict) == 0);
    ZG_CHECK (s_test_sync (first, &store, at + 1, true) == 1);
    ZG_CHECK (s_test_sync (second, &store, at + 1, true) == 1);
    ZG_CHECK (store.requests == 11);
    ZG_CHECK (s_test_admit (second, hash, at + 1, &verdict) == -1);
    ZG_CHECK (verdict.reason == ZG_KEYS_OVER_RPM);
    ZG_CHECK (zg_keys_check (second, hash, NULL, "gpt-4o", at + 1, &verdict) == -1);

    //  Tokens likewise
    ZG_CHECK (zg_keys_record_usage (first, hash, 600, 0, at + 2) == 0);
    ZG_CHECK (zg_keys_record_usage (second, hash, 300, 0, at + 2) == 0);
    ZG_CHECK (s_test_sync (first, &store, at + 2, true) == 1);
    ZG_CHECK (s_test_sync (second, &store, at + 2, true) == 1);
    ZG_CHECK (store.tokens == 900);
    ZG_CHECK (s_headers_text (second, hash, at + 2, buf, sizeof (buf)) > 0);
    ZG_CHECK (strstr (buf, "x-ratelimit-remaining-tokens: 100\r\n"));
    ZG_CHECK (zg_keys_record_usage (second, hash, 100, 0, at + 2) == 0);
    ZG_CHECK (s_headers_text (second, hash, at + 2, buf, sizeof (buf)) > 0);
    ZG_CHECK (strstr (buf, "x-ratelimit-remaining-tokens: 0\r\n"));

    //  The next minute starts from zero everywhere, whatever was pushed;
    //  a batch taken in the old window is not learned in the new one
    zg_keys_sync_t stale [4];
    ZG_CHECK (zg_keys_sync_take (first, at + 2, stale, 4) == 1);
    at = window + 60;
    ZG_CHECK (s_test_admit (first, hash, at, &verdict) == 0);
    stale [0].known = true;
    stale [0].total_requests = stale [0].total_tokens = 1000000;
    ZG_CHECK (zg_keys_sync_learn (first, &stale [0]) == -1);
    ZG_CHECK (s_headers_text (first, hash, at, buf, sizeof (buf)) > 0);
    ZG_CHECK (strstr (buf, "x-ratelimit-remaining-requests: 9\r\n"));
    ZG_CHECK (strstr (buf, "x-ratelimit-remaining-tokens: 1000\r\n"));
    //  The second's window is over: it is no longer synced
    ZG_CHECK (s_test_sync (second, &store, at, true) == 0);
    ZG_CHECK (zg_keys_check (second, hash, NULL, "gpt-4o", at, &verdict) == 0);
    ZG_CHECK (s_test_sync (first, &store, at, true) == 1);
    ZG_CHECK (store.window == window + 60 && store.requests == 1 && store.tokens == 0);

    //  The store down: counts stay local, taken again until it answers
    ZG_CHECK (s_test_admit (first, hash, at + 1, &verdict) == 0);
    ZG_CHECK (s_test_sync (first, &store, at + 1, false) == 1);
    ZG_CHECK (s_test_admit (first, hash, at + 1, &verdict) == 0);
    zg_keys_sync_t entries [4];
    ZG_CHECK (zg_keys_sync_take (first, at + 1, entries, 4) == 1);
    ZG_CHECK (entries [0].add_requests == 2 && entries [0].window_start == window + 60);
    ZG_CHECK (zg_keys_sync_learn (first, &entries [0]) == -1);     //  not known
    ZG_CHECK (s_test_sync (first, &store, at + 1, true) == 1);
    ZG_CHECK (store.requests == 3);
    //  The store lost the window (restarted): everything is pushed again
    store.requests = store.tokens = 0;
    ZG_CHECK (s_test_admit (first, hash, at + 2, &verdict) == 0);
    ZG_CHECK (s_test_sync (first, &store, at + 2, true) == 1);
    ZG_CHECK (store.requests == 1);
    ZG_CHECK (s_test_sync (first, &store, at + 2, true) == 1);
    ZG_CHECK (store.requests == 4);

    //  More keys than a round takes: they take turns
    char other [ZG_KEYS_HASH_HEX + 1];
    s_test_hash_of (7003, other);
    record.token = other;
    ZG_CHECK (zg_keys_upsert (first, &record) == 0);
    ZG_CHECK (s_test_admit (first, other, at + 2, &verdict) == 0);
    ZG_CHECK (zg_keys_sync_take (first, at + 2, entries, 1) == 1);
    char taken [ZG_KEYS_HASH_HEX + 1];
    memcpy (taken, entries [0].hash, sizeof (taken));
    ZG_CHECK (zg_keys_sync_take (first, at + 2, entries, 1) == 1);
    ZG_CHECK (strcmp (taken, entries [0].hash) != 0);
    //  A key removed and made again is listed once
    ZG_CHECK (zg_keys_remove (first, other) == 0);
    ZG_CHECK (zg_keys_upsert (first, &record) == 0);
    ZG_CHECK (s_test_admit (first, other, at + 2, &verdict) == 0);
    ZG_CHECK (zg_keys_sync_take (first, at + 2, entries, 4) == 2);
    ZG_CHECK (strcmp (entries [0].hash, entries [1].hash) != 0);

    zg_keys_destroy (&first);
    zg_keys_destroy (&second);
}

void
zg_keys_test (bool verbose)
{
    if (verbose)
        printf (" * zg_keys: ");
    const int64_t now = 1767225600;     //  2026-01-01 00:00:00 UTC
    zg_keys_verdict_t verdict;
    zg_keys_ticket_t ticket;
    char buf [1024];

    //  Numbers as Python prints them
    s_format_number (0.5, buf, sizeof (buf));
    ZG_CHECK (streq (buf, "0.5"));
    s_format_number (10, buf, sizeof (buf));
    ZG_CHECK (streq (buf, "10.0"));
    s_format_number (0, buf, sizeof (buf));
    ZG_CHECK (streq (buf, "0.0"));
    s_format_number (1e-05, buf, sizeof (buf));
    ZG_CHECK (streq (buf, "1e-05"));
    s_format_number (3.7e-05, buf, sizeof (buf));
    ZG_CHECK (streq (buf, "3.7e-05"));
    s_format_number (0.0001, buf, sizeof (buf));
    ZG_CHECK (streq (buf, "0.0001"));
    s_format_number (0.1 + 0.2, buf, sizeof (buf));
    ZG_CHECK (streq (buf, "0.30000000000000004"));
    s_format_number (1e16, buf, sizeof (buf));
    ZG_CHECK (streq (buf, "1e+16"));
    s_format_number (1e15, buf, sizeof (buf));
    ZG_CHECK (streq (buf, "1000000000000000.0"));
    s_format_number (123456.789, buf, sizeof (buf));
    ZG_CHECK (streq (buf, "123456.789"));
    s_format_number (-2.5e-07, buf, sizeof (buf));
    ZG_CHECK (streq (buf, "-2.5e-07"));
    s_format_number (-0.0, buf, sizeof (buf));
    ZG_CHECK (streq (buf, "-0.0"));
    s_format_number (1.0 / 3, buf, sizeof (buf));
    ZG_CHECK (streq (buf, "0.3333333333333333"));
    //  Every other value: zg_number's self test compares zg_number_repr,
    //  which this is, with trying every length in turn on 300000 of them

    //  Key generation, hash, key_name
    char key [ZG_KEYS_KEY_MAX + 1], other [ZG_KEYS_KEY_MAX + 1];
    ZG_CHECK (zg_keys_generate (key) == 0);
    ZG_CHECK (zg_keys_generate (other) == 0);
    ZG_CHECK (strlen (key) == 3 + 22);
    ZG_CHECK (strncmp (key, "sk-", 3) == 0);
    ZG_CHECK (strspn (key + 3, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
                              "0123456789-_") == 22);
    //  The last character carries 2 bits of the last byte and 4 zero bits
    ZG_CHECK (strchr ("AQgw", key [24]));
    ZG_CHECK (!streq (key, other));
    char hash [ZG_KEYS_HASH_HEX + 1];
    //  The reference's documentation key, hashed as hashlib.sha256 does
    zg_keys_hash ("sk-RV-l2BJEZ_LYNChSx2EueQ", hash);
    ZG_CHECK (streq (hash, "d42b36f063f305737b1de9c8dfc07a69150fadfa51d5def119c8b100832e0ade"));
    zg_keys_hash ("sk-1234", hash);
    ZG_CHECK (streq (hash, "88dc28d0f030c55ed4ab77ed8faf098196cb1c05df778539800c9f1243fe6b4b"));
    zg_keys_hash ("abc", hash);
    ZG_CHECK (streq (hash, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"));
    zg_keys_key_name ("sk-RV-l2BJEZ_LYNChSx2EueQ", buf, sizeof (buf));
    ZG_CHECK (streq (buf, "sk-...EueQ"));
    zg_keys_key_name ("sk", buf, sizeof (buf));
    ZG_CHECK (streq (buf, "sk-...sk"));

    //  Durations
    int64_t end;
    ZG_CHECK (zg_keys_duration_end ("30s", now, &end) == 0 && end == now + 30);
    ZG_CHECK (zg_keys_duration_end ("30m", now, &end) == 0 && end == now + 1800);
    ZG_CHECK (zg_keys_duration_end ("30h", now, &end) == 0 && end == now + 108000);
    ZG_CHECK (zg_keys_duration_end ("30d", now, &end) == 0 && end == now + 2592000);
    ZG_CHECK (zg_keys_duration_end ("1w", now, &end) == 0 && end == now + 604800);
    ZG_CHECK (zg_keys_duration_end ("1mo", now, &end) == 0 && end == now + 31 * 86400);
    ZG_CHECK (zg_keys_duration_end ("13mo", now, &end) == 0
          && end == now + (365 + 31) * 86400);
    //  31 January + 1 month = 28 February (2026 is not a leap year)
    ZG_CHECK (zg_keys_duration_end ("1mo", now + 30 * 86400, &end) == 0
          && end == now + (31 + 27) * 86400);
    ZG_CHECK (zg_keys_duration_end ("0d", now, &end) == 0 && end == now);
    const char *bad [] = { "", "30", "d", "30x", "30dd", " 30d", "30d ", "-1d", "+1d",
                           "1.5h", "30S", "1mon", "m30", "99999999999999999999s", NULL };
    for (size_t index = 0; bad [index]; index++)
        ZG_CHECK (zg_keys_duration_end (bad [index], now, &end) == -1);
    ZG_CHECK (zg_keys_duration_end (NULL, now, &end) == -1);

    zg_keys_t *keys = zg_keys_new (0, 0);
    ZG_CHECK (keys);

    //  Unknown key: the 2026 shape
    s_test_hash_of (1, hash);
    ZG_CHECK (zg_keys_check (keys, hash, "sk-0123abcdWXYZ", "gpt-4o", now, &verdict) == -1);
    ZG_CHECK (verdict.reason == ZG_KEYS_UNKNOWN && !verdict.allowed);
    ZG_CHECK (verdict.status == 401);
    ZG_CHECK (streq (verdict.type, "token_not_found_in_db"));
    ZG_CHECK (streq (verdict.param, "key"));
    snprintf (buf, sizeof (buf), "Authentication Error, Invalid proxy server token passed. "
              "Received API Key = sk-...WXYZ, Key Hash (Token) =%s. Unable to find token in "
              "cache or `LiteLLM_VerificationTokenTable`", hash);
    ZG_CHECK (streq (verdict.message, buf));
    ZG_CHECK (verdict.key == NULL);
    ZG_CHECK (zg_keys_check (keys, "not-a-hash", NULL, NULL, now, &verdict) == -1);
    ZG_CHECK (verdict.reason == ZG_KEYS_UNKNOWN);

    //  A known key with no limits
    zg_key_record_t record = s_test_record (hash);
    record.key_alias = "alias";
    record.metadata = "{\"team\":\"x\"}";
    ZG_CHECK (zg_keys_upsert (keys, &record) == 0);
    ZG_CHECK (zg_keys_size (keys) == 1);
    const zg_key_record_t *found = zg_keys_lookup (keys, hash);
    ZG_CHECK (found && streq (found->key_alias, "alias") && streq (found->metadata, "{\"team\":\"x\"}"));
    ZG_CHECK (found->token != hash && streq (found->token, hash));
    ZG_CHECK (zg_keys_check (keys, hash, NULL, "gpt-4o", now, &verdict) == 0);
    ZG_CHECK (verdict.allowed && verdict.reason == ZG_KEYS_OK && verdict.status == 200);
    ZG_CHECK (verdict.key == found);

    //  Invalid records leave the table as it was
    zg_key_record_t broken = s_test_record ("ABC");
    ZG_CHECK (zg_keys_upsert (keys, &broken) == -1);
    char upper [ZG_KEYS_HASH_HEX + 1];
    for (size_t index = 0; index <= ZG_KEYS_HASH_HEX; index++)
        upper [index] = (char) toupper ((unsigned char) hash [index]);
    broken.token = upper;
    ZG_CHECK (zg_keys_upsert (keys, &broken) == -1);
    broken = s_test_record (hash);
    broken.budget_duration = "soon";
    ZG_CHECK (zg_keys_upsert (keys, &broken) == -1);
    char *long_alias = (char *) malloc (ZG_KEYS_ID_MAX + 2);
    memset (long_alias, 'a', ZG_KEYS_ID_MAX + 1);
    long_alias [ZG_KEYS_ID_MAX + 1] = 0;
    broken = s_test_record (hash);
    broken.key_alias = long_alias;
    ZG_CHECK (zg_keys_upsert (keys, &broken) == -1);
    free (long_alias);
    broken = s_test_record (hash);
    broken.models_count = ZG_KEYS_MODELS_MAX + 1;
    ZG_CHECK (zg_keys_upsert (keys, &broken) == -1);
    ZG_CHECK (streq (zg_keys_lookup (keys, hash)->key_alias, "alias"));

    //  Models list
    const char *models [] = { "gpt-4o", "gpt-4o-mini" };
    record.models = models;
    record.models_count = 2;
    ZG_CHECK (zg_keys_upsert (keys, &record) == 0);
    ZG_CHECK (zg_keys_check (keys, hash, NULL, "gpt-4o-mini", now, &verdict) == 0);
    ZG_CHECK (zg_keys_check (keys, hash, NULL, NULL, now, &verdict) == 0);
    ZG_CHECK (zg_keys_check (keys, hash, NULL, "o3", now, &verdict) == -1);
    ZG_CHECK (verdict.reason == ZG_KEYS_MODEL_DENIED && verdict.status == 403);
    ZG_CHECK (streq (verdict.type, "key_model_access_denied") && streq (verdict.param, "model"));
    ZG_CHECK (streq (verdict.message, "key not allowed to access model. This key can only access "
                    "models=['gpt-4o', 'gpt-4o-mini']. Tried to access o3"));
    record.models = NULL;
    record.models_count = 0;

    //  Expiry: refused only once the expiry time is past
    record.expires = now + 60;
    ZG_CHECK (zg_keys_upsert (keys, &record) == 0);
    ZG_CHECK (zg_keys_check (keys, hash, NULL, "gpt-4o", now + 59, &verdict) == 0);
    ZG_CHECK (zg_keys_check (keys, hash, NULL, "gpt-4o", now + 60, &verdict) == 0);
    ZG_CHECK (zg_keys_check (keys, hash, NULL, "gpt-4o", now + 61, &verdict) == -1);
    ZG_CHECK (verdict.reason == ZG_KEYS_EXPIRED && verdict.status == 401);
    ZG_CHECK (streq (verdict.type, "expired_key") && streq (verdict.param, "sk-...test"));
    ZG_CHECK (streq (verdict.message, "Authentication Error - Expired Key. Key Expiry time "
                    "2026-01-01 00:01:00+00:00 and current time 2026-01-01 00:01:01+00:00"));
    record.expires = 0;

    //  Blocked
    record.blocked = true;
    ZG_CHECK (zg_keys_upsert (keys, &record) == 0);
    ZG_CHECK (zg_keys_check (keys, hash, NULL, "gpt-4o", now, &verdict) == -1);
    ZG_CHECK (verdict.reason == ZG_KEYS_BLOCKED && verdict.status == 401);
    ZG_CHECK (streq (verdict.type, "auth_error") && streq (verdict.param, "None"));
    ZG_CHECK (streq (verdict.message, "Authentication Error, Key is blocked. Update via "
                    "`/key/unblock` if you're an admin."));
    record.blocked = false;
    ZG_CHECK (zg_keys_upsert (keys, &record) == 0);
    ZG_CHECK (zg_keys_check (keys, hash, NULL, "gpt-4o", now, &verdict) == 0);

    //  Key budget: refused at spend >= max_budget; record_usage makes it bite
    record.max_budget = 1.0;
    record.spend = 0.25;
    ZG_CHECK (zg_keys_upsert (keys, &record) == 0);
    ZG_CHECK (zg_keys_check (keys, hash, NULL, "gpt-4o", now, &verdict) == 0);
    ZG_CHECK (zg_keys_record_usage (keys, hash, 10, 0.5, now) == 0);
    ZG_CHECK (zg_keys_check (keys, hash, NULL, "gpt-4o", now, &verdict) == 0);
    ZG_CHECK (zg_keys_record_usage (keys, hash, 10, 0.25, now) == 0);
    ZG_CHECK (zg_keys_lookup (keys, hash)->spend == 1.0);
    ZG_CHECK (zg_keys_check (keys, hash, NULL, "gpt-4o", now, &verdict) == -1);
    ZG_CHECK (verdict.reason == ZG_KEYS_KEY_OVER_BUDGET && verdict.status == 429);
    ZG_CHECK (streq (verdict.type, "budget_exceeded") && verdict.param == NULL);
    ZG_CHECK (streq (verdict.message, "Budget has been exceeded! Current cost: 1.0, Max budget: 1.0"));
    //  An older snapshot does not undo spend recorded here...
    record.spend = 0.25;
    ZG_CHECK (zg_keys_upsert (keys, &record) == 0);
    ZG_CHECK (zg_keys_lookup (keys, hash)->spend == 1.0);
    //  ...a higher one (other frontends' spend) wins...
    record.spend = 1.5;
    ZG_CHECK (zg_keys_upsert (keys, &record) == 0);
    ZG_CHECK (zg_keys_lookup (keys, hash)->spend == 1.5);
    //  ...and a reset is set outright
    ZG_CHECK (zg_keys_set_spend (keys, ZG_KEYS_FOR_KEY, hash, 0) == 0);
    ZG_CHECK (zg_keys_check (keys, hash, NULL, "gpt-4o", now, &verdict) == 0);
    ZG_CHECK (zg_keys_set_spend (keys, ZG_KEYS_FOR_KEY, "nope", 0) == -1);

    //  budget_duration: the period ends, spend starts again from zero
    record.spend = 2.0;
    record.budget_duration = "1d";
    record.budget_reset_at = now + 100;
    ZG_CHECK (zg_keys_upsert (keys, &record) == 0);
    ZG_CHECK (zg_keys_check (keys, hash, NULL, "gpt-4o", now + 99, &verdict) == -1);
    ZG_CHECK (zg_keys_check (keys, hash, NULL, "gpt-4o", now + 100, &verdict) == 0);
    found = zg_keys_lookup (keys, hash);
    ZG_CHECK (found->spend == 0 && found->budget_reset_at == now + 100 + 86400);
    //  The database, not yet reset, sends the old period: ignored
    ZG_CHECK (zg_keys_upsert (keys, &record) == 0);
    ZG_CHECK (zg_keys_lookup (keys, hash)->spend == 0);
    //  The database's next period wins
    record.spend = 0.125;
    record.budget_reset_at = now + 100 + 86400;
    ZG_CHECK (zg_keys_upsert (keys, &record) == 0);
    ZG_CHECK (zg_keys_lookup (keys, hash)->spend == 0.125);
    record.spend = 0;
    record.max_budget = -1;
    record.budget_duration = NULL;
    record.budget_reset_at = 0;
    ZG_CHECK (zg_keys_set_spend (keys, ZG_KEYS_FOR_KEY, hash, 0) == 0);
    ZG_CHECK (zg_keys_upsert (keys, &record) == 0);

    //  Team and user budgets
    record.user_id = "ishaan";
    record.team_id = "team-1";
    ZG_CHECK (zg_keys_upsert (keys, &record) == 0);
    ZG_CHECK (zg_keys_set_budget (keys, ZG_KEYS_FOR_TEAM, "team-1", 0.5, 1.0, 0) == 0);
    ZG_CHECK (zg_keys_set_budget (keys, ZG_KEYS_FOR_USER, "ishaan", 0, 2.0, 0) == 0);
    ZG_CHECK (zg_keys_set_budget (keys, ZG_KEYS_FOR_KEY, hash, 0, 2.0, 0) == -1);
    ZG_CHECK (zg_keys_set_budget (keys, ZG_KEYS_FOR_USER, "", 0, 2.0, 0) == -1);
    ZG_CHECK (zg_keys_check (keys, hash, NULL, "gpt-4o", now, &verdict) == 0);
    ZG_CHECK (zg_keys_record_usage (keys, hash, 0, 0.5, now) == 0);
    ZG_CHECK (zg_keys_check (keys, hash, NULL, "gpt-4o", now, &verdict) == -1);
    ZG_CHECK (verdict.reason == ZG_KEYS_TEAM_OVER_BUDGET && verdict.status == 429);
    ZG_CHECK (streq (verdict.type, "budget_exceeded"));
    ZG_CHECK (streq (verdict.message,
                    "Budget has been exceeded! Team=team-1 Current cost: 1.0, Max budget: 1.0"));
    //  An older team snapshot keeps the spend recorded here; a reset does not
    ZG_CHECK (zg_keys_set_budget (keys, ZG_KEYS_FOR_TEAM, "team-1", 0, 1.0, 0) == 0);
    ZG_CHECK (zg_keys_check (keys, hash, NULL, "gpt-4o", now, &verdict) == -1);
    ZG_CHECK (verdict.reason == ZG_KEYS_TEAM_OVER_BUDGET);
    ZG_CHECK (zg_keys_set_spend (keys, ZG_KEYS_FOR_TEAM, "team-1", 0) == 0);
    ZG_CHECK (zg_keys_check (keys, hash, NULL, "gpt-4o", now, &verdict) == 0);
    ZG_CHECK (zg_keys_set_budget (keys, ZG_KEYS_FOR_TEAM, "team-1", 0, -1, 0) == 0);
    ZG_CHECK (zg_keys_record_usage (keys, hash, 0, 1.5, now) == 0);
    ZG_CHECK (zg_keys_check (keys, hash, NULL, "gpt-4o", now, &verdict) == -1);
    ZG_CHECK (verdict.reason == ZG_KEYS_USER_OVER_BUDGET && verdict.status == 429);
    ZG_CHECK (streq (verdict.type, "budget_exceeded") && verdict.param == NULL);
    ZG_CHECK (streq (verdict.message, "ExceededBudget: User=ishaan over budget. Spend=2.0, Budget=2.0"));
    ZG_CHECK (zg_keys_set_spend (keys, ZG_KEYS_FOR_USER, "ishaan", 0) == 0);
    ZG_CHECK (zg_keys_set_spend (keys, ZG_KEYS_FOR_USER, "nobody", 0) == -1);
    ZG_CHECK (zg_keys_check (keys, hash, NULL, "gpt-4o", now, &verdict) == 0);
    record.user_id = NULL;
    record.team_id = NULL;
    ZG_CHECK (zg_keys_set_spend (keys, ZG_KEYS_FOR_KEY, hash, 0) == 0);

    //  rpm over a fixed window, rolled over with the injected clock
    record.rpm_limit = 3;
    ZG_CHECK (zg_keys_upsert (keys, &record) == 0);
    int64_t start = now + 1000;
    for (int index = 0; index < 3; index++) {
        ZG_CHECK (zg_keys_admit (keys, hash, NULL, "gpt-4o", start + index, &verdict, &ticket) == 0);
        zg_keys_finish (keys, &ticket);
    }
    ZG_CHECK (zg_keys_admit (keys, hash, NULL, "gpt-4o", start + 10, &verdict, &ticket) == -1);
    ZG_CHECK (verdict.reason == ZG_KEYS_OVER_RPM && verdict.status == 429);
    ZG_CHECK (streq (verdict.type, "rate_limit_error") && verdict.param == NULL);
    ZG_CHECK (verdict.retry_after == 50);
    ZG_CHECK (streq (verdict.rate_limit_type, "requests"));
    s_format_time (start + 60, " UTC", buf, sizeof (buf));
    ZG_CHECK (streq (verdict.reset_at, buf));
    char expected [ZG_KEYS_MESSAGE_MAX];
    snprintf (expected, sizeof (expected), "Rate limit exceeded for api_key: %s. Limit type: "
              "requests. Current limit: 3, Remaining: 0. Limit resets at: %s", hash, buf);
    ZG_CHECK (streq (verdict.message, expected));
    zg_keys_finish (keys, &ticket);     //  refused: nothing to finish
    ZG_CHECK (zg_keys_double_finishes (keys) == 0);
    //  Refusals are not counted, and the window ends on time
    ZG_CHECK (zg_keys_admit (keys, hash, NULL, "gpt-4o", start + 59, &verdict, &ticket) == -1);
    ZG_CHECK (verdict.retry_after == 1);
    ZG_CHECK (zg_keys_admit (keys, hash, NULL, "gpt-4o", start + 60, &verdict, &ticket) == 0);
    zg_keys_finish (keys, &ticket);
    //  Headers after one request of the new window
    int length = s_headers_text (keys, hash, start + 61, buf, sizeof (buf));
    ZG_CHECK (length > 0 && (size_t) length == strlen (buf));
    ZG_CHECK (streq (buf, "x-ratelimit-remaining-requests: 2\r\n"
                         "x-ratelimit-limit-requests: 3\r\n"
                         "x-litellm-key-spend: 0.0\r\n"));
    //  rpm_limit 0 refuses all, as in the reference
    record.rpm_limit = 0;
    ZG_CHECK (zg_keys_upsert (keys, &record) == 0);
    ZG_CHECK (zg_keys_admit (keys, hash, NULL, "gpt-4o", start + 500, &verdict, &ticket) == -1);
    ZG_CHECK (verdict.reason == ZG_KEYS_OVER_RPM);
    record.rpm_limit = -1;

    //  tpm: tokens recorded at the end of requests fill the window
    record.tpm_limit = 100;
    ZG_CHECK (zg_keys_upsert (keys, &record) == 0);
    start = now + 2000;
    ZG_CHECK (zg_keys_admit (keys, hash, NULL, "gpt-4o", start, &verdict, &ticket) == 0);
    ZG_CHECK (zg_keys_record_usage (keys, hash, 60, 0, start + 1) == 0);
    zg_keys_finish (keys, &ticket);
    ZG_CHECK (zg_keys_admit (keys, hash, NULL, "gpt-4o", start + 2, &verdict, &ticket) == 0);
    ZG_CHECK (zg_keys_record_usage (keys, hash, 40, 0, start + 3) == 0);
    zg_keys_finish (keys, &ticket);
    ZG_CHECK (zg_keys_admit (keys, hash, NULL, "gpt-4o", start + 4, &verdict, &ticket) == -1);
    ZG_CHECK (verdict.reason == ZG_KEYS_OVER_TPM && verdict.status == 429);
    ZG_CHECK (streq (verdict.rate_limit_type, "tokens") && verdict.retry_after == 56);
    ZG_CHECK (strstr (verdict.message, "Limit type: tokens. Current limit: 100, Remaining: 0."));
    ZG_CHECK (zg_keys_admit (keys, hash, NULL, "gpt-4o", start + 60, &verdict, &ticket) == 0);
    zg_keys_finish (keys, &ticket);
    record.tpm_limit = -1;

    //  Parallel: admit counts, finish releases, a double finish is harmless
    record.max_parallel_requests = 2;
    ZG_CHECK (zg_keys_upsert (keys, &record) == 0);
    zg_keys_ticket_t first, second, third;
    start = now + 3000;
    ZG_CHECK (zg_keys_admit (keys, hash, NULL, "gpt-4o", start, &verdict, &first) == 0);
    ZG_CHECK (zg_keys_admit (keys, hash, NULL, "gpt-4o", start, &verdict, &second) == 0);
    ZG_CHECK (zg_keys_admit (keys, hash, NULL, "gpt-4o", start, &verdict, &third) == -1);
    ZG_CHECK (verdict.reason == ZG_KEYS_OVER_PARALLEL && verdict.status == 429);
    ZG_CHECK (streq (verdict.rate_limit_type, "max_parallel_requests") && verdict.retry_after == 1);
    ZG_CHECK (strstr (verdict.message, "Limit type: max_parallel_requests. Current limit: 2,"));
    zg_keys_finish (keys, &first);
    zg_keys_finish (keys, &first);      //  twice: counted, and must not free a second slot
    ZG_CHECK (zg_keys_double_finishes (keys) == 1);
    ZG_CHECK (zg_keys_admit (keys, hash, NULL, "gpt-4o", start, &verdict, &first) == 0);
    ZG_CHECK (zg_keys_admit (keys, hash, NULL, "gpt-4o", start, &verdict, &third) == -1);
    //  A ticket from a key's earlier life does not free its new life's slots
    ZG_CHECK (zg_keys_lookup (keys, hash));
    ZG_CHECK (zg_keys_remove (keys, hash) == 0);
    ZG_CHECK (zg_keys_lookup (keys, hash) == NULL);     //  not the key found last
    ZG_CHECK (zg_keys_remove (keys, hash) == -1);
    ZG_CHECK (zg_keys_upsert (keys, &record) == 0);
    ZG_CHECK (zg_keys_admit (keys, hash, NULL, "gpt-4o", start, &verdict, &third) == 0);
    zg_keys_finish (keys, &first);
    zg_keys_finish (keys, &second);
    ZG_CHECK (zg_keys_admit (keys, hash, NULL, "gpt-4o", start, &verdict, &first) == 0);
    ZG_CHECK (zg_keys_admit (keys, hash, NULL, "gpt-4o", start, &verdict, &second) == -1);
    zg_keys_finish (keys, &first);
    zg_keys_finish (keys, &third);
    ZG_CHECK (zg_keys_double_finishes (keys) == 1);
    //  Parallel slots survive an upsert of the same key
    ZG_CHECK (zg_keys_admit (keys, hash, NULL, "gpt-4o", start, &verdict, &first) == 0);
    ZG_CHECK (zg_keys_admit (keys, hash, NULL, "gpt-4o", start, &verdict, &second) == 0);
    ZG_CHECK (zg_keys_upsert (keys, &record) == 0);
    ZG_CHECK (zg_keys_admit (keys, hash, NULL, "gpt-4o", start, &verdict, &third) == -1);
    zg_keys_finish (keys, &first);
    zg_keys_finish (keys, &second);
    record.max_parallel_requests = -1;

    //  Headers: every one that applies, and a buffer too small
    record.rpm_limit = 10;
    record.tpm_limit = 1000;
    record.max_budget = 5;
    ZG_CHECK (zg_keys_upsert (keys, &record) == 0);
    start = now + 4000;
    ZG_CHECK (zg_keys_admit (keys, hash, NULL, "gpt-4o", start, &verdict, &ticket) == 0);
    ZG_CHECK (zg_keys_record_usage (keys, hash, 250, 0.0125, start) == 0);
    zg_keys_finish (keys, &ticket);
    length = s_headers_text (keys, hash, start, buf, sizeof (buf));
    ZG_CHECK (streq (buf, "x-ratelimit-remaining-requests: 9\r\n"
                         "x-ratelimit-limit-requests: 10\r\n"
                         "x-ratelimit-remaining-tokens: 750\r\n"
                         "x-ratelimit-limit-tokens: 1000\r\n"
                         "x-litellm-key-spend: 0.0125\r\n"
                         "x-litellm-key-max-budget: 5.0\r\n"));
    ZG_CHECK (s_headers_text (keys, hash, start, buf, 40) == -1 && buf [0] == 0);
    ZG_CHECK (s_headers_text (keys, "unknown", start, buf, sizeof (buf)) == 0);
    //  One by one: the same names and values, in the same order
    s_header_text_t text = { buf, sizeof (buf), 0, true };
    ZG_CHECK (zg_keys_each_header (keys, hash, start, s_header_text_add, &text) == 6);
    ZG_CHECK (text.fits && streq (buf, "x-ratelimit-remaining-requests: 9\r\n"
                                       "x-ratelimit-limit-requests: 10\r\n"
                                       "x-ratelimit-remaining-tokens: 750\r\n"
                                       "x-ratelimit-limit-tokens: 1000\r\n"
                                       "x-litellm-key-spend: 0.0125\r\n"
                                       "x-litellm-key-max-budget: 5.0\r\n"));
    ZG_CHECK (zg_keys_each_header (keys, "unknown", start, s_header_text_add, &text) == 0);
    //  A closed window shows the whole limit again
    s_headers_text (keys, hash, start + 60, buf, sizeof (buf));
    ZG_CHECK (strstr (buf, "x-ratelimit-remaining-requests: 10\r\n"));
    ZG_CHECK (strstr (buf, "x-ratelimit-remaining-tokens: 1000\r\n"));
    record.rpm_limit = -1;
    record.tpm_limit = -1;
    record.max_budget = -1;

    //  Soft budget: the crossing is reported once
    record.soft_budget = 1.0;
    ZG_CHECK (zg_keys_set_spend (keys, ZG_KEYS_FOR_KEY, hash, 0) == 0);
    ZG_CHECK (zg_keys_upsert (keys, &record) == 0);
    ZG_CHECK (zg_keys_record_usage (keys, hash, 0, 0.5, now) == 0);
    ZG_CHECK (zg_keys_record_usage (keys, hash, 0, 0.5, now) == 1);
    ZG_CHECK (zg_keys_record_usage (keys, hash, 0, 0.5, now) == 0);
    ZG_CHECK (zg_keys_upsert (keys, &record) == 0);      //  a snapshot is not a new crossing
    ZG_CHECK (zg_keys_record_usage (keys, hash, 0, 0.5, now) == 0);
    ZG_CHECK (zg_keys_set_spend (keys, ZG_KEYS_FOR_KEY, hash, 0) == 0);
    ZG_CHECK (zg_keys_record_usage (keys, hash, 0, 2, now) == 1);
    ZG_CHECK (zg_keys_record_usage (keys, "unknown", 0, 2, now) == -1);
    //  Bad usage from a bad upstream changes nothing
    double before = zg_keys_lookup (keys, hash)->spend;
    ZG_CHECK (zg_keys_record_usage (keys, hash, -5, NAN, now) == 0);
    ZG_CHECK (zg_keys_record_usage (keys, hash, 0, -1, now) == 0);
    ZG_CHECK (zg_keys_lookup (keys, hash)->spend == before);
    record.soft_budget = -1;

    //  Negative cache: one lookup per unknown key per TTL
    char unknown [ZG_KEYS_HASH_HEX + 1];
    s_test_hash_of (2, unknown);
    ZG_CHECK (zg_keys_should_lookup (keys, unknown, now) == ZG_KEYS_LOOKUP);
    ZG_CHECK (zg_keys_should_lookup (keys, unknown, now) == ZG_KEYS_LOOKUP_PENDING);
    zg_keys_remember_unknown (keys, unknown, now);
    ZG_CHECK (zg_keys_should_lookup (keys, unknown, now + 9) == ZG_KEYS_LOOKUP_KNOWN_BAD);
    ZG_CHECK (zg_keys_should_lookup (keys, unknown, now + 10) == ZG_KEYS_LOOKUP);
    ZG_CHECK (zg_keys_should_lookup (keys, hash, now) == ZG_KEYS_LOOKUP_KNOWN);
    ZG_CHECK (zg_keys_should_lookup (keys, "zz", now) == ZG_KEYS_LOOKUP_KNOWN_BAD);
    //  A pending lookup that never got its answer may be asked again
    s_test_hash_of (3, other);
    ZG_CHECK (zg_keys_should_lookup (keys, other, now) == ZG_KEYS_LOOKUP);
    ZG_CHECK (zg_keys_should_lookup (keys, other, now + 10) == ZG_KEYS_LOOKUP);
    //  A key created meanwhile works at once
    zg_keys_remember_unknown (keys, other, now);
    size_t remembered = zg_keys_negative_size (keys);
    zg_key_record_t created = s_test_record (other);
    ZG_CHECK (zg_keys_upsert (keys, &created) == 0);
    ZG_CHECK (zg_keys_negative_size (keys) == remembered - 1);
    ZG_CHECK (zg_keys_should_lookup (keys, other, now) == ZG_KEYS_LOOKUP_KNOWN);
    ZG_CHECK (zg_keys_check (keys, other, NULL, NULL, now, &verdict) == 0);
    zg_keys_remember_unknown (keys, other, now);        //  known: not remembered
    ZG_CHECK (zg_keys_negative_size (keys) == remembered - 1);
    ZG_CHECK (zg_keys_remove (keys, other) == 0);

    //  Database down: known keys keep working, unknown ones are refused
    //  (503) or, with the flag, let in unprivileged; known-bad stay out
    zg_keys_set_db_available (keys, false);
    ZG_CHECK (zg_keys_check (keys, hash, NULL, "gpt-4o", now, &verdict) == 0);
    ZG_CHECK (verdict.reason == ZG_KEYS_OK);
    s_test_hash_of (4, other);
    ZG_CHECK (zg_keys_admit (keys, other, NULL, "gpt-4o", now, &verdict, &ticket) == -1);
    ZG_CHECK (verdict.reason == ZG_KEYS_DB_UNAVAILABLE && verdict.status == 503);
    ZG_CHECK (streq (verdict.type, "no_db_connection"));
    ZG_CHECK (streq (verdict.message, "Service Unavailable, the authentication database is "
                    "temporarily unreachable. Please retry shortly."));
    zg_keys_set_allow_on_db_unavailable (keys, true);
    ZG_CHECK (zg_keys_admit (keys, other, NULL, "gpt-4o", now, &verdict, &ticket) == 0);
    ZG_CHECK (verdict.allowed && verdict.reason == ZG_KEYS_OK_UNPRIVILEGED && verdict.key == NULL);
    zg_keys_finish (keys, &ticket);
    ZG_CHECK (zg_keys_double_finishes (keys) == 1);
    zg_keys_remember_unknown (keys, unknown, now);
    ZG_CHECK (zg_keys_check (keys, unknown, NULL, "gpt-4o", now, &verdict) == -1);
    ZG_CHECK (verdict.reason == ZG_KEYS_UNKNOWN);
    ZG_CHECK (zg_keys_check (keys, "garbage", NULL, "gpt-4o", now, &verdict) == -1);
    ZG_CHECK (verdict.reason == ZG_KEYS_UNKNOWN);
    //  And the flag does nothing while the database is up
    zg_keys_set_db_available (keys, true);
    ZG_CHECK (zg_keys_check (keys, other, NULL, "gpt-4o", now, &verdict) == -1);
    ZG_CHECK (verdict.reason == ZG_KEYS_UNKNOWN && verdict.status == 401);
    zg_keys_destroy (&keys);
    ZG_CHECK (keys == NULL);
    zg_keys_destroy (&keys);

    //  A flood of random bad keys: memory stays bounded, the oldest go
    //  first, and every remembered hash is still found through the index
    keys = zg_keys_new (1000, 10);
    ZG_CHECK (keys);
    enum { FLOOD = 100000 };
    for (int index = 0; index < FLOOD; index++) {
        s_test_hash_of (100 + index, hash);
        ZG_CHECK (zg_keys_should_lookup (keys, hash, now) == ZG_KEYS_LOOKUP);
        zg_keys_remember_unknown (keys, hash, now);
        ZG_CHECK (zg_keys_negative_size (keys) <= 1000);
    }
    ZG_CHECK (zg_keys_negative_size (keys) == 1000);
    for (int index = FLOOD - 1000; index < FLOOD; index++) {
        s_test_hash_of (100 + index, hash);
        ZG_CHECK (zg_keys_should_lookup (keys, hash, now) == ZG_KEYS_LOOKUP_KNOWN_BAD);
    }
    s_test_hash_of (100 + FLOOD - 1001, hash);
    ZG_CHECK (zg_keys_should_lookup (keys, hash, now) == ZG_KEYS_LOOKUP);
    //  Holes left by keys that came to exist are reused
    for (int index = 0; index < 500; index++) {
        s_test_hash_of (100 + FLOOD - 500 + index, hash);
        record = s_test_record (hash);
        ZG_CHECK (zg_keys_upsert (keys, &record) == 0);
    }
    ZG_CHECK (zg_keys_negative_size (keys) == 500);
    for (int index = 0; index < 5000; index++) {
        s_test_hash_of (1000000 + index, hash);
        zg_keys_remember_unknown (keys, hash, now);
    }
    ZG_CHECK (zg_keys_negative_size (keys) == 1000);
    for (int index = 4000; index < 5000; index++) {
        s_test_hash_of (1000000 + index, hash);
        ZG_CHECK (zg_keys_should_lookup (keys, hash, now + 9) == ZG_KEYS_LOOKUP_KNOWN_BAD);
    }
    ZG_CHECK (zg_keys_size (keys) == 500);
    zg_keys_destroy (&keys);

    s_test_shared (now);

    if (verbose)
        printf ("OK\n");
}
