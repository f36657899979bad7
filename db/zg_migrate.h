/*  =========================================================================
    zg_migrate - versioned schema migrations, applied once each, in order

    A migration is a file NNNN_<name>.sql (the number is its version). The
    files of db/migrations/ are compiled into the binary; when
    LITELLM_MIGRATION_DIR names a directory holding such files, those are
    used instead (an empty directory, as LiteLLM's read-only setups mount,
    falls back to the compiled-in ones).

    Applying takes a PostgreSQL advisory lock (ZG_MIGRATE_LOCK_KEY), so
    that pods starting together run them once: the others wait, then find
    nothing pending. Each migration runs in its own transaction together
    with its row in "zgate_migrations" (version, name, checksum = SHA-256
    hex of the file's bytes, applied_at). A migration whose recorded
    checksum differs from its file's is refused, naming the file and both
    checksums, before anything is applied. Migrations never drop or reset
    data; files must not contain BEGIN/COMMIT of their own.
    =========================================================================
*/
#ifndef ZG_MIGRATE_H_INCLUDED
#define ZG_MIGRATE_H_INCLUDED

#include "common/zg_config.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

//  "zgatemig" in ASCII: the advisory lock every zgate takes to migrate
#define ZG_MIGRATE_LOCK_KEY         INT64_C(0x7a676174656d6967)

//  Seconds to wait for another process's migrations before giving up
#define ZG_MIGRATE_LOCK_WAIT_S      600

//  zg_migrate_run's and zg_migrate_apply's results besides 0
#define ZG_MIGRATE_FAILED           -1  //  refused or failed: do not start
#define ZG_MIGRATE_UNREACHABLE      -2  //  the database could not be reached

//  A migration file's bytes, as compiled in
typedef struct {
    const char          *file_name;     //  "0001_litellm_tables.sql"
    const unsigned char *data;
    size_t               size;
} zg_migration_file_t;

//  The compiled-in migrations, in file-name order, ending with a NULL name
extern const zg_migration_file_t zg_migrations_embedded [];
extern const size_t zg_migrations_embedded_count;

//  One migration of a set
typedef struct {
    int64_t     version;
    const char *name;           //  the part after NNNN_, without .sql
    const char *file_name;
    const char *sql;            //  the file's bytes and a NUL
    size_t      size;
    const char *checksum;       //  64 lowercase hex digits
} zg_migration_t;

typedef struct _zg_migration_set_t zg_migration_set_t;

//  Split "0012_add_things.sql" into 12 and "add_things". 0, or -1 if the
//  name is not NNNN_<name>.sql (digits, '_', letters/digits/_-., ".sql").
int zg_migration_parse_name (const char *file_name, int64_t *version,
                             char *name, size_t namesize);

//  An empty set
zg_migration_set_t *zg_migration_set_new (void);

void zg_migration_set_destroy (zg_migration_set_t **self_p);

//  Add a migration (copies the bytes), keeping the set in version order.
//  -1 with the reason in errbuf for a bad name or a version already there.
int zg_migration_set_add (zg_migration_set_t *self, const char *file_name,
                          const void *data, size_t size, char *errbuf, size_t errsize);

//  The compiled-in migrations
zg_migration_set_t *zg_migration_set_embedded (char *errbuf, size_t errsize);

//  The *.sql files of a directory (other files are ignored; a .sql file
//  with a bad name is an error). NULL with the reason in errbuf.
zg_migration_set_t *zg_migration_set_load_dir (const char *path, char *errbuf, size_t errsize);

//  The set to use here: LITELLM_MIGRATION_DIR's files, else compiled-in
zg_migration_set_t *zg_migration_set_from_environment (char *errbuf, size_t errsize);

size_t zg_migration_set_size (const zg_migration_set_t *self);

//  The index'th migration in version order; NULL past the end
const zg_migration_t *zg_migration_set_get (const zg_migration_set_t *self, size_t index);

//  Apply the set's pending migrations to the database at url, under the
//  advisory lock. Returns 0, ZG_MIGRATE_FAILED or ZG_MIGRATE_UNREACHABLE,
//  with the reason in errbuf. applied (may be NULL) gets how many ran.
int zg_migrate_apply (const char *url, const zg_migration_set_t *set,
                      size_t *applied, char *errbuf, size_t errsize);

//  `zgate migrate`: the environment's migrations applied to the configured
//  database (database_url / DATABASE_URL). Returns as zg_migrate_apply;
//  no database configured is ZG_MIGRATE_FAILED.
int zg_migrate_run (const zg_config_t *config, char *errbuf, size_t errsize);

//  At start-up: apply pending migrations unless no database is configured
//  or DISABLE_SCHEMA_UPDATE=true. An unreachable database is a warning
//  (zgate starts and serves without it). Returns 0 to go on, -1 to stop
//  (a refused or failing migration), having logged why.
int zg_migrate_at_start (const zg_config_t *config);

//  Self test (pure parts: names, order, checksums, directories)
void zg_migrate_test (bool verbose);

#ifdef __cplusplus
}
#endif

#endif
