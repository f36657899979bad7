/*  =========================================================================
    zg_keys - the virtual-key table: every key check on the data path,
    answered from memory

    The table holds one record per virtual key (keyed by the SHA-256 hex of
    the whole key string, as the reference stores it), the spend and budget
    of each user and team those keys belong to, per-key request windows and
    in-flight counts, and a bounded negative cache of hashes the database
    said it does not know. The database feeds it through zg_keys_upsert and
    friends (snapshots and change events arrive as messages); nothing here
    ever waits on the database.

    Time is always passed in (unix seconds), so callers and tests own the
    clock. A check does not allocate; upserts and usage records may.

    Not thread-safe: one owner (the frontend's loop) calls everything.
    =========================================================================
*/
#ifndef ZG_KEYS_H_INCLUDED
#define ZG_KEYS_H_INCLUDED

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define ZG_KEYS_HASH_HEX        64      //  lowercase hex SHA-256
#define ZG_KEYS_KEY_MAX         255     //  a presented or generated key
#define ZG_KEYS_ID_MAX          255     //  key_name, key_alias, user_id, team_id, budget_duration,
                                        //  and each model name
#define ZG_KEYS_MODELS_MAX      256     //  names in one key's models list
#define ZG_KEYS_METADATA_MAX    16384   //  bytes of one key's metadata JSON
#define ZG_KEYS_MESSAGE_MAX     2048    //  an error message, truncated to fit
#define ZG_KEYS_WINDOW          60      //  seconds in a rate-limit window
#define ZG_KEYS_NEGATIVE_TTL    10      //  default seconds an unknown hash is remembered
#define ZG_KEYS_NEGATIVE_SIZE   65536   //  default unknown hashes remembered at most

//  One key as the database describes it. Strings may be NULL (= empty).
//  zg_keys_upsert copies everything; zg_keys_lookup returns one whose
//  pointers belong to the table.
typedef struct {
    const char        *token;           //  64 lowercase hex digits (required)
    const char        *key_name;        //  "sk-...abcd"
    const char        *key_alias;
    const char *const *models;          //  allowed model names; none = every model
    size_t             models_count;
    int64_t            expires;         //  unix seconds; 0 = never
    bool               blocked;
    double             max_budget;      //  < 0: no budget
    double             spend;           //  USD
    double             soft_budget;     //  < 0: none; crossing it is reported, not refused
    const char        *budget_duration; //  "30d", "1mo"...; NULL or "" = spend never resets
    int64_t            budget_reset_at; //  unix seconds; 0 = not set
    int64_t            rpm_limit;       //  requests per window; < 0 = none (0 refuses all,
    int64_t            tpm_limit;       //  tokens per window;   < 0 = none  as the reference)
    int64_t            max_parallel_requests;  //  in flight at once; < 0 = none
    const char        *user_id;
    const char        *team_id;
    const char        *metadata;        //  opaque JSON text
} zg_key_record_t;

//  Why a check came out as it did
typedef enum {
    ZG_KEYS_OK = 0,
    ZG_KEYS_OK_UNPRIVILEGED,    //  unknown key let in while the database is down
                                //  (allow_requests_on_db_unavailable): never an admin
    ZG_KEYS_UNKNOWN,            //  401: see zg_keys_should_lookup before refusing
    ZG_KEYS_DB_UNAVAILABLE,     //  503: unknown key, database down, flag off
    ZG_KEYS_EXPIRED,            //  401
    ZG_KEYS_BLOCKED,            //  401
    ZG_KEYS_MODEL_DENIED,       //  403
    ZG_KEYS_KEY_OVER_BUDGET,    //  429
    ZG_KEYS_USER_OVER_BUDGET,   //  429
    ZG_KEYS_TEAM_OVER_BUDGET,   //  429
    ZG_KEYS_OVER_RPM,           //  429 + retry-after
    ZG_KEYS_OVER_TPM,           //  429 + retry-after
    ZG_KEYS_OVER_PARALLEL       //  429 + retry-after
} zg_keys_reason_t;

//  A verdict, filled by zg_keys_check and zg_keys_admit in the caller's
//  memory. For refusals, status/type/message/param are the reference's
//  error JSON fields (param NULL = JSON null); retry_after, rate_limit_type
//  and reset_at are the headers of a rate-limit 429 (retry_after 0 = none).
typedef struct {
    zg_keys_reason_t       reason;
    bool                   allowed;
    int                    status;              //  200 when allowed
    const char            *type;                //  static strings
    const char            *param;
    char                   message [ZG_KEYS_MESSAGE_MAX];
    int                    retry_after;         //  seconds
    const char            *rate_limit_type;     //  "requests", "tokens", "max_parallel_requests"
    char                   reset_at [48];       //  "YYYY-MM-DD HH:MM:SS UTC" (room for any year)
    const zg_key_record_t *key;                 //  the key when the table knows it
} zg_keys_verdict_t;

//  What zg_keys_admit hands out and zg_keys_finish takes back. A plain
//  value the caller keeps with its request.
typedef struct {
    char     hash [ZG_KEYS_HASH_HEX + 1];
    uint64_t generation;        //  which life of the key admitted it
    int      state;             //  internal: nothing admitted, in flight, finished
} zg_keys_ticket_t;

//  Answers of zg_keys_should_lookup
typedef enum {
    ZG_KEYS_LOOKUP = 0,         //  ask the database; the caller is now the one asking
    ZG_KEYS_LOOKUP_PENDING,     //  someone asked less than a TTL ago: wait for the answer
    ZG_KEYS_LOOKUP_KNOWN_BAD,   //  the database said unknown less than a TTL ago: refuse
    ZG_KEYS_LOOKUP_KNOWN        //  the table has it: no need
} zg_keys_lookup_t;

typedef enum {
    ZG_KEYS_FOR_KEY = 0,        //  id is the token hash
    ZG_KEYS_FOR_USER,           //  id is a user_id
    ZG_KEYS_FOR_TEAM            //  id is a team_id
} zg_keys_owner_t;

typedef struct _zg_keys_t zg_keys_t;

//  negative_size: unknown hashes remembered at most (0 = ZG_KEYS_NEGATIVE_SIZE);
//  negative_ttl: seconds (0 = ZG_KEYS_NEGATIVE_TTL). NULL on allocation failure.
zg_keys_t *zg_keys_new (size_t negative_size, int negative_ttl);
void zg_keys_destroy (zg_keys_t **self_p);

//  ---------------------------------------------------------------------
//  Feeding the table (from the database, through messages)

//  Insert or replace a key. Keeps the key's request window and in-flight
//  count. Spend: the larger of the table's and the record's, so spend
//  recorded here and not yet written is not lost to an older snapshot;
//  but a record whose budget_reset_at is later than the table's starts a
//  new budget period and its spend wins, and one whose budget_reset_at is
//  earlier is a stale period and its spend is ignored. Forgets the hash in
//  the negative cache. Returns -1 when the record is invalid (bad token,
//  a string or list over its bound, a bad budget_duration): the table is
//  then unchanged.
int zg_keys_upsert (zg_keys_t *self, const zg_key_record_t *record);

//  Forget a key (deleted, or regenerated under a new hash). 0, or -1 when
//  unknown.
int zg_keys_remove (zg_keys_t *self, const char *hash);

//  The key, or NULL. Valid until the next upsert or remove of that key.
const zg_key_record_t *zg_keys_lookup (zg_keys_t *self, const char *hash);

//  Set a user's or team's budget; max_budget < 0 = none. Spend is merged
//  as in zg_keys_upsert, by budget_reset_at. -1 on an id over its bound.
int zg_keys_set_budget (zg_keys_t *self, zg_keys_owner_t owner, const char *id,
                        double spend, double max_budget, int64_t budget_reset_at);

//  Set spend outright, for resets (/global/spend/reset, a key's
//  reset_spend): no merge. -1 when the key, user or team is unknown.
int zg_keys_set_spend (zg_keys_t *self, zg_keys_owner_t owner, const char *id, double spend);

//  Number of keys in the table
size_t zg_keys_size (zg_keys_t *self);

//  ---------------------------------------------------------------------
//  The data path

//  Database state, from whoever talks to it, and
//  general_settings.allow_requests_on_db_unavailable
void zg_keys_set_db_available (zg_keys_t *self, bool available);
void zg_keys_set_allow_on_db_unavailable (zg_keys_t *self, bool allow);

//  Decide whether the key with this hash may call model (NULL or "" =
//  no model named, e.g. a listing) at time now. presented_key, when not
//  NULL, is used only for the "sk-...<last 4>" of the unknown-key message.
//  Changes nothing but a due budget reset. Always fills verdict; returns
//  0 when allowed, -1 when refused.
int zg_keys_check (zg_keys_t *self, const char *hash, const char *presented_key,
                   const char *model, int64_t now, zg_keys_verdict_t *verdict);

//  zg_keys_check, and when allowed, count the request in the key's window
//  and in flight. Every admitted request (ticket in flight) must be
//  finished once with zg_keys_finish.
int zg_keys_admit (zg_keys_t *self, const char *hash, const char *presented_key,
                   const char *model, int64_t now, zg_keys_verdict_t *verdict,
                   zg_keys_ticket_t *ticket);

//  The request has ended: no longer in flight. Finishing a ticket twice
//  changes nothing and is counted (zg_keys_double_finishes); a ticket from
//  a refused admit, or from a key since removed, is a no-op.
void zg_keys_finish (zg_keys_t *self, zg_keys_ticket_t *ticket);
size_t zg_keys_double_finishes (zg_keys_t *self);

//  A request of this key used tokens and cost: tokens go to the key's
//  window, cost to the key's, user's and team's spend, so budgets bite
//  before the database catches up. Budgets are checked on admit and cost
//  is known only at the end, so a budget can be overshot by the cost of
//  the requests in flight when it was crossed (at most
//  max_parallel_requests of them when that is set), plus what other
//  frontends spent and have not published yet. Returns 1 when this call took the
//  key's spend to or over its soft_budget (once per crossing: again only
//  after the spend went back under it), 0 otherwise, -1 when the key is
//  unknown.
int zg_keys_record_usage (zg_keys_t *self, const char *hash, int64_t tokens, double cost,
                          int64_t now);

//  The key's x-ratelimit-* and x-litellm-key-* response headers, only
//  those that apply, handed one by one to header (arg, name, value);
//  value is valid during the call only. Returns how many, 0 for an
//  unknown key.
typedef void (zg_keys_header_fn) (void *arg, const char *name, const char *value);
int zg_keys_each_header (zg_keys_t *self, const char *hash, int64_t now,
                         zg_keys_header_fn *header, void *arg);

//  ---------------------------------------------------------------------
//  Rate limits shared by instances (through Redis, by the caller)
//
//  With shared counting on, windows start on multiples of ZG_KEYS_WINDOW
//  of unix time, the same for every instance. Each sync interval the
//  caller takes what the keys counted since their last push
//  (zg_keys_sync_take), adds it to the shared totals (Redis), and hands
//  back the totals (zg_keys_sync_learn). Checks count this instance's
//  requests and tokens of the window plus what the others had counted
//  at the last sync: a key can overshoot its limit by what the other
//  instances admit within one sync (interval and round trip). When no
//  totals come back, counts stay local and are pushed once Redis answers.

//  One key's window between the table and the shared totals
typedef struct {
    char     hash [ZG_KEYS_HASH_HEX + 1];
    uint64_t generation;        //  which life of the key
    int64_t  window_start;      //  unix seconds, a multiple of ZG_KEYS_WINDOW
    int64_t  add_requests;      //  counted here since the last push
    int64_t  add_tokens;
    int64_t  total_requests;    //  the shared totals once added (set by the caller)
    int64_t  total_tokens;
    bool     known;             //  the caller set the totals
} zg_keys_sync_t;

//  Shared counting on or off (off by default: windows open with a key's
//  first request, as the reference's). Set before the first request.
void zg_keys_set_shared (zg_keys_t *self, bool shared);

//  Fill at most max entries with the keys counted in during their open
//  window (with an rpm or tpm limit), the increments since their last
//  learned push; keys whose window is over are dropped. Takes the
//  rest in later calls when there are more than max. Only one batch may be
//  out at a time: learn (or drop) it before taking again. Returns the count.
size_t zg_keys_sync_take (zg_keys_t *self, int64_t now, zg_keys_sync_t *entries, size_t max);

//  The shared totals of an entry taken: its increments are now pushed.
//  Totals under what this instance pushed mean the shared store lost the
//  window: what it pushed before goes again next time. -1 when
//  the entry is not known, or its key is gone or in another window.
int zg_keys_sync_learn (zg_keys_t *self, const zg_keys_sync_t *entry);

//  ---------------------------------------------------------------------
//  Unknown keys

//  Whether to ask the database about a hash the table does not have. The
//  first caller gets ZG_KEYS_LOOKUP and the hash is marked pending for a
//  TTL, so the database is asked at most once per unknown key per TTL,
//  whatever the flood.
zg_keys_lookup_t zg_keys_should_lookup (zg_keys_t *self, const char *hash, int64_t now);

//  The database does not know this hash: refuse it for a TTL
void zg_keys_remember_unknown (zg_keys_t *self, const char *hash, int64_t now);

//  Hashes held by the negative cache (pending or unknown, fresh or stale)
size_t zg_keys_negative_size (zg_keys_t *self);

//  ---------------------------------------------------------------------
//  Keys and durations

//  A new key: "sk-" and 16 bytes from getrandom in URL-safe base64 without
//  padding (22 characters), as secrets.token_urlsafe(16). 0, or -1 when
//  the system has no randomness to give.
int zg_keys_generate (char key [ZG_KEYS_KEY_MAX + 1]);

//  The stored form of a key: lowercase hex SHA-256 of the whole string
void zg_keys_hash (const char *key, char hash [ZG_KEYS_HASH_HEX + 1]);

//  "sk-...<last 4>", the reference's key_name
void zg_keys_key_name (const char *key, char *buf, size_t size);

//  from + a duration: "<n>s", "<n>m", "<n>h", "<n>d", "<n>w" or "<n>mo"
//  (calendar months, the day clamped to the month's last). Used for a
//  key's expiry (duration) and its next budget reset (budget_duration).
//  0, or -1 for anything else (no unit, unknown unit, sign, spaces,
//  trailing text, overflow).
int zg_keys_duration_end (const char *duration, int64_t from, int64_t *end);

//  Self test
void zg_keys_test (bool verbose);

#ifdef __cplusplus
}
#endif

#endif
