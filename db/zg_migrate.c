/*  =========================================================================
    zg_migrate - versioned schema migrations, applied once each, in order
    =========================================================================
*/
#include "db/zg_migrate.h"
#include "common/zg_selftest.h"
#include "db/zg_db.h"
#include "common/zg_log.h"
#include "common/zg_sha256.h"

#include <assert.h>
#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

struct _zg_migration_set_t {
    zg_migration_t *items;      //  in version order; strings owned
    size_t          count;
    size_t          capacity;
};

int
zg_migration_parse_name (const char *file_name, int64_t *version, char *name, size_t namesize)
{
    assert (file_name);
    const char *p = file_name;
    int64_t value = 0;
    int digits = 0;
    while (isdigit ((unsigned char) *p)) {
        if (++digits > 18)
            return -1;
        value = value * 10 + (*p++ - '0');
    }
    if (digits == 0 || *p++ != '_')
        return -1;
    size_t length = strlen (p);
    if (length <= 4 || strcmp (p + length - 4, ".sql") != 0)
        return -1;
    length -= 4;
    for (size_t index = 0; index < length; index++) {
        char c = p [index];
        if (!isalnum ((unsigned char) c) && c != '_' && c != '-' && c != '.')
            return -1;
    }
    if (name) {
        if (length >= namesize)
            return -1;
        memcpy (name, p, length);
        name [length] = 0;
    }
    if (version)
        *version = value;
    return 0;
}

zg_migration_set_t *
zg_migration_set_new (void)
{
    return calloc (1, sizeof (zg_migration_set_t));
}

void
zg_migration_set_destroy (zg_migration_set_t **self_p)
{
    assert (self_p);
    zg_migration_set_t *self = *self_p;
    if (!self)
        return;
    for (size_t index = 0; index < self->count; index++) {
        zg_migration_t *item = &self->items [index];
        free ((char *) item->name);
        free ((char *) item->file_name);
        free ((char *) item->sql);
        free ((char *) item->checksum);
    }
    free (self->items);
    free (self);
    *self_p = NULL;
}

int
zg_migration_set_add (zg_migration_set_t *self, const char *file_name,
                      const void *data, size_t size, char *errbuf, size_t errsize)
{
    assert (self);
    assert (file_name);
    int64_t version;
    char name [256];
    if (zg_migration_parse_name (file_name, &version, name, sizeof (name))) {
        snprintf (errbuf, errsize,
                  "%s: a migration's file name must be NNNN_<name>.sql "
                  "(digits, '_', then letters, digits, '_', '-' or '.')", file_name);
        return -1;
    }
    size_t position = self->count;
    for (size_t index = 0; index < self->count; index++) {
        if (self->items [index].version == version) {
            snprintf (errbuf, errsize, "%s: version %" PRId64 " is also %s",
                      file_name, version, self->items [index].file_name);
            return -1;
        }
        if (self->items [index].version > version && position == self->count)
            position = index;
    }
    if (self->count == self->capacity) {
        size_t capacity = self->capacity? self->capacity * 2: 8;
        zg_migration_t *items = realloc (self->items, capacity * sizeof (zg_migration_t));
        if (!items) {
            snprintf (errbuf, errsize, "out of memory");
            return -1;
        }
        self->items = items;
        self->capacity = capacity;
    }
    zg_migration_t item = { .version = version, .size = size };
    char checksum [2 * ZG_SHA256_SIZE + 1];
    zg_sha256_hex (data, size, checksum);
    char *sql = malloc (size + 1);
    item.name = strdup (name);
    item.file_name = strdup (file_name);
    item.checksum = strdup (checksum);
    if (!sql || !item.name || !item.file_name || !item.checksum) {
        free (sql);
        free ((char *) item.name);
        free ((char *) item.file_name);
        free ((char *) item.checksum);
        snprintf (errbuf, errsize, "out of memory");
        return -1;
    }
    if (size)
        memcpy (sql, data, size);
    sql [size] = 0;
    item.sql = sql;
    memmove (&self->items [position + 1], &self->items [position],
             (self->count - position) * sizeof (zg_migration_t));
    self->items [position] = item;
    self->count++;
    return 0;
}

size_t
zg_migration_set_size (const zg_migration_set_t *self)
{
    assert (self);
    return self->count;
}

const zg_migration_t *
zg_migration_set_get (const zg_migration_set_t *self, size_t index)
{
    assert (self);
    return index < self->count? &self->items [index]: NULL;
}

zg_migration_set_t *
zg_migration_set_embedded (char *errbuf, size_t errsize)
{
    zg_migration_set_t *self = zg_migration_set_new ();
    if (!self) {
        snprintf (errbuf, errsize, "out of memory");
        return NULL;
    }
    for (size_t index = 0; index < zg_migrations_embedded_count; index++) {
        const zg_migration_file_t *file = &zg_migrations_embedded [index];
        if (zg_migration_set_add (self, file->file_name, file->data, file->size,
                                  errbuf, errsize)) {
            zg_migration_set_destroy (&self);
            return NULL;
        }
    }
    return self;
}

static int
s_read_file (const char *path, char **data_p, size_t *size_p, char *errbuf, size_t errsize)
{
    FILE *file = fopen (path, "rb");
    if (!file) {
        snprintf (errbuf, errsize, "%s: %s", path, strerror (errno));
        return -1;
    }
    char *data = NULL;
    size_t size = 0, capacity = 0;
    while (true) {
        if (size == capacity) {
            capacity = capacity? capacity * 2: 65536;
            char *bigger = realloc (data, capacity);
            if (!bigger) {
                free (data);
                fclose (file);
                snprintf (errbuf, errsize, "%s: out of memory", path);
                return -1;
            }
            data = bigger;
        }
        size_t got = fread (data + size, 1, capacity - size, file);
        size += got;
        if (got == 0)
            break;
    }
    int failed = ferror (file);
    fclose (file);
    if (failed) {
        free (data);
        snprintf (errbuf, errsize, "%s: read error", path);
        return -1;
    }
    *data_p = data;
    *size_p = size;
    return 0;
}

zg_migration_set_t *
zg_migration_set_load_dir (const char *path, char *errbuf, size_t errsize)
{
    assert (path);
    DIR *dir = opendir (path);
    if (!dir) {
        snprintf (errbuf, errsize, "%s: %s", path, strerror (errno));
        return NULL;
    }
    zg_migration_set_t *self = zg_migration_set_new ();
    if (!self) {
        closedir (dir);
        snprintf (errbuf, errsize, "out of memory");
        return NULL;
    }
    struct dirent *entry;
    while ((entry = readdir (dir))) {
        const char *name = entry->d_name;
        size_t length = strlen (name);
        if (name [0] == '.' || length < 4 || strcmp (name + length - 4, ".sql") != 0)
            continue;
        char file_path [4096];
        snprintf (file_path, sizeof (file_path), "%s/%s", path, name);
        struct stat info;
        if (stat (file_path, &info) || !S_ISREG (info.st_mode))
            continue;
        char *data;
        size_t size;
        if (s_read_file (file_path, &data, &size, errbuf, errsize)) {
            zg_migration_set_destroy (&self);
            break;
        }
        char reason [512];
        int rc = zg_migration_set_add (self, name, data, size, reason, sizeof (reason));
        free (data);
        if (rc) {
            snprintf (errbuf, errsize, "%s/%s", path, reason);
            zg_migration_set_destroy (&self);
            break;
        }
    }
    closedir (dir);
    return self;
}

zg_migration_set_t *
zg_migration_set_from_environment (char *errbuf, size_t errsize)
{
    const char *dir = getenv ("LITELLM_MIGRATION_DIR");
    if (!dir || !*dir)
        return zg_migration_set_embedded (errbuf, errsize);

    //  LiteLLM's read-only setups point this at an empty writable volume
    //  that LiteLLM fills itself: zgate's own migrations are in its binary
    struct stat info;
    if (stat (dir, &info) && errno == ENOENT) {
        zg_warning ("LITELLM_MIGRATION_DIR=%s does not exist: using the %zu migrations built in",
                    dir, zg_migrations_embedded_count);
        return zg_migration_set_embedded (errbuf, errsize);
    }
    zg_migration_set_t *self = zg_migration_set_load_dir (dir, errbuf, errsize);
    if (self && zg_migration_set_size (self) == 0) {
        zg_info ("LITELLM_MIGRATION_DIR=%s holds no NNNN_<name>.sql files: "
                 "using the %zu migrations built in", dir, zg_migrations_embedded_count);
        zg_migration_set_destroy (&self);
        return zg_migration_set_embedded (errbuf, errsize);
    }
    if (self)
        zg_info ("using the %zu migrations in LITELLM_MIGRATION_DIR=%s",
                 zg_migration_set_size (self), dir);
    return self;
}


//  --------------------------------------------------------------------------
//  Applying

//  An error on a connection that has since broken means the database went
//  away, which start-up treats differently from a migration that failed
static int
s_failure (zg_db_t *db)
{
    return zg_db_socket (db) < 0? ZG_MIGRATE_UNREACHABLE: ZG_MIGRATE_FAILED;
}

static int
s_lock (zg_db_t *db, const char *key, char *errbuf, size_t errsize)
{
    char reason [512];
    const char *params [] = { key };
    PGresult *result = zg_db_exec (db, "SELECT pg_try_advisory_lock($1::bigint)", 1, params,
                                   reason, sizeof (reason));
    if (!result) {
        snprintf (errbuf, errsize, "cannot take the migration lock: %s", reason);
        return s_failure (db);
    }
    bool locked = strcmp (PQgetvalue (result, 0, 0), "t") == 0;
    PQclear (result);
    if (locked)
        return 0;

    zg_info ("another process is applying migrations: waiting for it (at most %d s)",
             ZG_MIGRATE_LOCK_WAIT_S);
    char timeout [64];
    snprintf (timeout, sizeof (timeout), "SET lock_timeout = '%ds'", ZG_MIGRATE_LOCK_WAIT_S);
    if (zg_db_command (db, timeout, 0, NULL, reason, sizeof (reason))
    ||  zg_db_command (db, "SELECT pg_advisory_lock($1::bigint)", 1, params,
                       reason, sizeof (reason))) {
        snprintf (errbuf, errsize, "cannot take the migration lock: %s", reason);
        return s_failure (db);
    }
    if (zg_db_command (db, "RESET lock_timeout", 0, NULL, reason, sizeof (reason))) {
        snprintf (errbuf, errsize, "%s", reason);
        return s_failure (db);
    }
    return 0;
}

static const char *s_table_sql =
    "CREATE TABLE IF NOT EXISTS \"zgate_migrations\" ("
    " \"version\" BIGINT NOT NULL PRIMARY KEY,"
    " \"name\" TEXT NOT NULL,"
    " \"checksum\" TEXT NOT NULL,"
    " \"applied_at\" TIMESTAMPTZ NOT NULL DEFAULT now())";

//  Every recorded migration must still be the file it was: checked for all
//  of them before anything is applied
static int
s_verify (zg_db_t *db, const zg_migration_set_t *set, bool *recorded,
          char *errbuf, size_t errsize)
{
    char reason [512];
    PGresult *result = zg_db_exec (db,
        "SELECT \"version\", \"name\", \"checksum\" FROM \"zgate_migrations\" ORDER BY \"version\"",
        0, NULL, reason, sizeof (reason));
    if (!result) {
        snprintf (errbuf, errsize, "cannot read zgate_migrations: %s", reason);
        return s_failure (db);
    }
    int rc = 0;
    for (int row = 0; row < PQntuples (result) && rc == 0; row++) {
        int64_t version = strtoll (PQgetvalue (result, row, 0), NULL, 10);
        const char *name = PQgetvalue (result, row, 1);
        const char *checksum = PQgetvalue (result, row, 2);
        size_t index;
        for (index = 0; index < set->count; index++)
            if (set->items [index].version == version)
                break;
        if (index == set->count) {
            zg_warning ("the database has migration %04" PRId64 "_%s.sql, which this zgate "
                        "does not know: it was applied by a newer version", version, name);
            continue;
        }
        const zg_migration_t *migration = &set->items [index];
        if (strcmp (migration->checksum, checksum) != 0) {
            snprintf (errbuf, errsize,
                      "migration %s was changed after it was applied: the database recorded "
                      "checksum %s, the file now has %s; refusing to migrate (restore the "
                      "file as it was, and put changes in a new migration)",
                      migration->file_name, checksum, migration->checksum);
            rc = ZG_MIGRATE_FAILED;
        }
        recorded [index] = true;
    }
    PQclear (result);
    return rc;
}

static int
s_apply_one (zg_db_t *db, const zg_migration_t *migration, char *errbuf, size_t errsize)
{
    char reason [1024];
    char version [32];
    snprintf (version, sizeof (version), "%" PRId64, migration->version);
    const char *params [] = { version, migration->name, migration->checksum };
    if (zg_db_command (db, "BEGIN", 0, NULL, reason, sizeof (reason))
    ||  zg_db_exec_script (db, migration->sql, reason, sizeof (reason))
    ||  zg_db_command (db,
            "INSERT INTO \"zgate_migrations\" (\"version\", \"name\", \"checksum\") "
            "VALUES ($1::bigint, $2, $3)", 3, params, reason, sizeof (reason))
    ||  zg_db_command (db, "COMMIT", 0, NULL, reason, sizeof (reason))) {
        char ignored [256];
        if (zg_db_socket (db) >= 0)
            zg_db_command (db, "ROLLBACK", 0, NULL, ignored, sizeof (ignored));
        snprintf (errbuf, errsize, "migration %s failed and was rolled back: %s",
                  migration->file_name, reason);
        return s_failure (db);
    }
    return 0;
}

int
zg_migrate_apply (const char *url, const zg_migration_set_t *set,
                  size_t *applied, char *errbuf, size_t errsize)
{
    assert (set);
    if (applied)
        *applied = 0;
    zg_db_t *db = zg_db_connect (url, errbuf, errsize);
    if (!db)
        return ZG_MIGRATE_UNREACHABLE;

    //  The session's end releases the lock too, should this process die
    char key [32];
    snprintf (key, sizeof (key), "%" PRId64, ZG_MIGRATE_LOCK_KEY);
    int rc = s_lock (db, key, errbuf, errsize);
    if (rc) {
        zg_db_destroy (&db);
        return rc;
    }
    char reason [512];
    bool *recorded = calloc (set->count + 1, sizeof (bool));
    if (!recorded) {
        snprintf (errbuf, errsize, "out of memory");
        rc = ZG_MIGRATE_FAILED;
    }
    else
    if (zg_db_command (db, s_table_sql, 0, NULL, reason, sizeof (reason))) {
        snprintf (errbuf, errsize, "cannot create zgate_migrations: %s", reason);
        rc = s_failure (db);
    }
    else
        rc = s_verify (db, set, recorded, errbuf, errsize);

    size_t count = 0;
    for (size_t index = 0; rc == 0 && index < set->count; index++) {
        if (recorded [index])
            continue;
        const zg_migration_t *migration = &set->items [index];
        rc = s_apply_one (db, migration, errbuf, errsize);
        if (rc == 0) {
            zg_info ("applied migration %s (checksum %.12s...)",
                     migration->file_name, migration->checksum);
            count++;
        }
    }
    if (rc == 0 && count)
        zg_info ("database schema is up to date: applied %zu of %zu migrations", count, set->count);
    else
    if (rc == 0)
        zg_info ("database schema is up to date: all %zu migrations were applied before",
                 set->count);
    free (recorded);
    if (zg_db_socket (db) >= 0) {
        const char *params [] = { key };
        zg_db_command (db, "SELECT pg_advisory_unlock($1::bigint)", 1, params,
                       reason, sizeof (reason));
    }
    zg_db_destroy (&db);
    if (applied)
        *applied = count;
    return rc;
}

int
zg_migrate_run (const zg_config_t *config, char *errbuf, size_t errsize)
{
    assert (config);
    if (!config->database_url || !*config->database_url) {
        snprintf (errbuf, errsize,
                  "no database configured: set DATABASE_URL or general_settings.database_url");
        return ZG_MIGRATE_FAILED;
    }
    if (getenv ("USE_PRISMA_MIGRATE"))
        zg_debug ("USE_PRISMA_MIGRATE is accepted: zgate always applies versioned "
                  "migrations (deploy semantics), never pushes a schema");
    zg_migration_set_t *set = zg_migration_set_from_environment (errbuf, errsize);
    if (!set)
        return ZG_MIGRATE_FAILED;
    int rc = zg_migrate_apply (config->database_url, set, NULL, errbuf, errsize);
    zg_migration_set_destroy (&set);
    return rc;
}

int
zg_migrate_at_start (const zg_config_t *config)
{
    assert (config);
    if (!config->database_url || !*config->database_url)
        return 0;
    const char *disable = getenv ("DISABLE_SCHEMA_UPDATE");
    if (disable && strcasecmp (disable, "true") == 0) {
        zg_info ("DISABLE_SCHEMA_UPDATE=true: no migrations at start (run `zgate migrate`)");
        return 0;
    }
    char errbuf [1024];
    int rc = zg_migrate_run (config, errbuf, sizeof (errbuf));
    if (rc == ZG_MIGRATE_UNREACHABLE) {
        zg_warning ("database migrations skipped: %s; starting without the database", errbuf);
        return 0;
    }
    if (rc) {
        zg_error ("%s", errbuf);
        return -1;
    }
    return 0;
}


//  --------------------------------------------------------------------------
//  Self test


static void
s_write (const char *dir, const char *name, const char *text)
{
    char path [4096];
    snprintf (path, sizeof (path), "%s/%s", dir, name);
    FILE *file = fopen (path, "wb");
    ZG_CHECK (file);
    ZG_CHECK (fwrite (text, 1, strlen (text), file) == strlen (text));
    fclose (file);
}

static void
s_remove_dir (const char *path)
{
    DIR *dir = opendir (path);
    if (!dir)
        return;
    struct dirent *entry;
    while ((entry = readdir (dir))) {
        if (strcmp (entry->d_name, ".") == 0 || strcmp (entry->d_name, "..") == 0)
            continue;
        char child [4096];
        snprintf (child, sizeof (child), "%s/%s", path, entry->d_name);
        struct stat info;
        if (lstat (child, &info) == 0 && S_ISDIR (info.st_mode))
            s_remove_dir (child);
        else
            unlink (child);
    }
    closedir (dir);
    rmdir (path);
}

void
zg_migrate_test (bool verbose)
{
    printf (" * zg_migrate: ");
    if (verbose)
        printf ("\n");
    zg_log_init ("zgate.test", false, false);

    //  File names
    int64_t version;
    char name [64];
    ZG_CHECK (zg_migration_parse_name ("0001_litellm_tables.sql", &version, name, sizeof (name)) == 0);
    ZG_CHECK (version == 1 && strcmp (name, "litellm_tables") == 0);
    ZG_CHECK (zg_migration_parse_name ("20260101_a-b.c.sql", &version, name, sizeof (name)) == 0);
    ZG_CHECK (version == 20260101 && strcmp (name, "a-b.c") == 0);
    ZG_CHECK (zg_migration_parse_name ("12_x.sql", &version, NULL, 0) == 0 && version == 12);
    ZG_CHECK (zg_migration_parse_name ("0001_.sql", NULL, NULL, 0) == -1);
    ZG_CHECK (zg_migration_parse_name ("0001.sql", NULL, NULL, 0) == -1);
    ZG_CHECK (zg_migration_parse_name ("_x.sql", NULL, NULL, 0) == -1);
    ZG_CHECK (zg_migration_parse_name ("x_0001.sql", NULL, NULL, 0) == -1);
    ZG_CHECK (zg_migration_parse_name ("0001_x.SQL", NULL, NULL, 0) == -1);
    ZG_CHECK (zg_migration_parse_name ("0001_x.sql.bak", NULL, NULL, 0) == -1);
    ZG_CHECK (zg_migration_parse_name ("0001_a b.sql", NULL, NULL, 0) == -1);
    ZG_CHECK (zg_migration_parse_name ("0001_../x.sql", NULL, NULL, 0) == -1);
    ZG_CHECK (zg_migration_parse_name ("1234567890123456789_x.sql", NULL, NULL, 0) == -1);
    ZG_CHECK (zg_migration_parse_name ("0001_long_name.sql", &version, name, 5) == -1);

    //  Order is the version's, whatever the order of adding; checksums
    //  are SHA-256 of the exact bytes
    char errbuf [512];
    zg_migration_set_t *set = zg_migration_set_new ();
    ZG_CHECK (set);
    ZG_CHECK (zg_migration_set_add (set, "0010_c.sql", "SELECT 10;", 10, errbuf, sizeof (errbuf)) == 0);
    ZG_CHECK (zg_migration_set_add (set, "0002_b.sql", "SELECT 2;", 9, errbuf, sizeof (errbuf)) == 0);
    ZG_CHECK (zg_migration_set_add (set, "0001_a.sql", "", 0, errbuf, sizeof (errbuf)) == 0);
    ZG_CHECK (zg_migration_set_add (set, "0003_d.sql", "SELECT 3;", 9, errbuf, sizeof (errbuf)) == 0);
    ZG_CHECK (zg_migration_set_add (set, "2_again.sql", "x", 1, errbuf, sizeof (errbuf)) == -1);
    ZG_CHECK (strstr (errbuf, "2_again.sql: version 2 is also 0002_b.sql"));
    ZG_CHECK (zg_migration_set_add (set, "b.sql", "x", 1, errbuf, sizeof (errbuf)) == -1);
    ZG_CHECK (strstr (errbuf, "b.sql: a migration's file name must be NNNN_<name>.sql"));
    ZG_CHECK (zg_migration_set_size (set) == 4);
    int64_t expected [] = { 1, 2, 3, 10 };
    for (size_t index = 0; index < 4; index++)
        ZG_CHECK (zg_migration_set_get (set, index)->version == expected [index]);
    ZG_CHECK (zg_migration_set_get (set, 4) == NULL);
    const zg_migration_t *empty = zg_migration_set_get (set, 0);
    ZG_CHECK (strcmp (empty->checksum,
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855") == 0);
    ZG_CHECK (strcmp (empty->sql, "") == 0 && strcmp (empty->file_name, "0001_a.sql") == 0);
    char hex [65];
    zg_sha256_hex ("SELECT 10;", 10, hex);
    ZG_CHECK (strcmp (zg_migration_set_get (set, 3)->checksum, hex) == 0);
    zg_migration_set_destroy (&set);
    ZG_CHECK (set == NULL);

    //  The compiled-in migrations are the files of db/migrations, byte for byte
    set = zg_migration_set_embedded (errbuf, sizeof (errbuf));
    ZG_CHECK (set);
    ZG_CHECK (zg_migration_set_size (set) >= 2 && zg_migration_set_size (set) == zg_migrations_embedded_count);
    ZG_CHECK (zg_migration_set_get (set, 0)->version == 1);
    ZG_CHECK (strstr (zg_migration_set_get (set, 0)->sql, "\"LiteLLM_VerificationToken\""));
    ZG_CHECK (strstr (zg_migration_set_get (set, 0)->sql, "\"LiteLLM_SpendLogs\""));
#ifdef ZG_MIGRATIONS_SOURCE_DIR
    if (access (ZG_MIGRATIONS_SOURCE_DIR, R_OK) == 0) {
        zg_migration_set_t *files = zg_migration_set_load_dir (ZG_MIGRATIONS_SOURCE_DIR,
                                                               errbuf, sizeof (errbuf));
        ZG_CHECK (files);
        ZG_CHECK (zg_migration_set_size (files) == zg_migration_set_size (set));
        for (size_t index = 0; index < zg_migration_set_size (set); index++) {
            const zg_migration_t *a = zg_migration_set_get (set, index);
            const zg_migration_t *b = zg_migration_set_get (files, index);
            ZG_CHECK (strcmp (a->file_name, b->file_name) == 0);
            ZG_CHECK (strcmp (a->checksum, b->checksum) == 0);
            ZG_CHECK (a->size == b->size && memcmp (a->sql, b->sql, a->size) == 0);
        }
        zg_migration_set_destroy (&files);
    }
#endif
    //  Never anything that drops or empties data
    for (size_t index = 0; index < zg_migration_set_size (set); index++) {
        const char *sql = zg_migration_set_get (set, index)->sql;
        ZG_CHECK (!strcasestr (sql, "DROP ") && !strcasestr (sql, "TRUNCATE")
              && !strcasestr (sql, "DELETE "));
    }
    zg_migration_set_destroy (&set);

    //  A directory: *.sql files only, in version order; a bad name is an
    //  error naming the file; an empty directory falls back to built-in
    char dir [] = "/tmp/zg-migrate-test-XXXXXX";
    ZG_CHECK (mkdtemp (dir));
    s_write (dir, "0002_second.sql", "SELECT 2;\n");
    s_write (dir, "0001_first.sql", "SELECT 1;\n");
    s_write (dir, "README.md", "not a migration");
    s_write (dir, ".0003_hidden.sql", "SELECT 3;\n");
    set = zg_migration_set_load_dir (dir, errbuf, sizeof (errbuf));
    ZG_CHECK (set && zg_migration_set_size (set) == 2);
    ZG_CHECK (strcmp (zg_migration_set_get (set, 0)->name, "first") == 0);
    ZG_CHECK (strcmp (zg_migration_set_get (set, 1)->sql, "SELECT 2;\n") == 0);
    zg_migration_set_destroy (&set);

    setenv ("LITELLM_MIGRATION_DIR", dir, 1);
    set = zg_migration_set_from_environment (errbuf, sizeof (errbuf));
    ZG_CHECK (set && zg_migration_set_size (set) == 2);
    zg_migration_set_destroy (&set);

    s_write (dir, "notes.sql", "SELECT 0;\n");
    ZG_CHECK (zg_migration_set_load_dir (dir, errbuf, sizeof (errbuf)) == NULL);
    ZG_CHECK (strstr (errbuf, "/notes.sql: a migration's file name"));
    ZG_CHECK (zg_migration_set_from_environment (errbuf, sizeof (errbuf)) == NULL);
    s_remove_dir (dir);

    strcpy (dir, "/tmp/zg-migrate-test-XXXXXX");
    ZG_CHECK (mkdtemp (dir));
    setenv ("LITELLM_MIGRATION_DIR", dir, 1);
    set = zg_migration_set_from_environment (errbuf, sizeof (errbuf));
    ZG_CHECK (set && zg_migration_set_size (set) == zg_migrations_embedded_count);
    zg_migration_set_destroy (&set);
    s_remove_dir (dir);
    set = zg_migration_set_from_environment (errbuf, sizeof (errbuf));
    ZG_CHECK (set && zg_migration_set_size (set) == zg_migrations_embedded_count);
    zg_migration_set_destroy (&set);
    unsetenv ("LITELLM_MIGRATION_DIR");
    ZG_CHECK (zg_migration_set_load_dir ("/nonexistent/zg", errbuf, sizeof (errbuf)) == NULL);
    ZG_CHECK (strstr (errbuf, "/nonexistent/zg: No such file"));

    //  No database: an error for `zgate migrate`, nothing to do at start;
    //  an unreachable one: a warning at start, an error for `zgate migrate`
    zg_config_t *config = zg_config_new_default ();
    ZG_CHECK (config);
    free (config->database_url);
    config->database_url = NULL;
    ZG_CHECK (zg_migrate_run (config, errbuf, sizeof (errbuf)) == ZG_MIGRATE_FAILED);
    ZG_CHECK (strstr (errbuf, "no database configured"));
    ZG_CHECK (zg_migrate_at_start (config) == 0);
    config->database_url = strdup ("postgresql://zg@127.0.0.1:1/zg");
    ZG_CHECK (zg_migrate_run (config, errbuf, sizeof (errbuf)) == ZG_MIGRATE_UNREACHABLE);
    ZG_CHECK (strstr (errbuf, "cannot connect to postgresql://zg@127.0.0.1:1/zg"));
    ZG_CHECK (zg_migrate_at_start (config) == 0);
    zg_config_destroy (&config);

    printf ("OK\n");
}
