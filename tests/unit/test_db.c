//  Unit tests for zg_db: each module's self test runs in its own process,
//  so that a failed check (which aborts) is counted and the other module
//  still runs. The database parts of zg_db's test run when
//  ZG_TEST_DATABASE_URL names a server (tests/e2e/test_migrations.py
//  starts one and runs this binary against it).

#include "db/zg_db.h"
#include "db/zg_migrate.h"
#include "db/zg_model_store.h"
#include "tests/unit/zg_unit.h"

int
main (int argc, char *argv [])
{
    static const zg_unit_t tests [] = {
        { "zg_db", zg_db_test },
        { "zg_migrate", zg_migrate_test },
        { "zg_model_store", zg_model_store_test },
    };
    return zg_unit_run (tests, sizeof (tests) / sizeof (tests [0]), argc, argv);
}
