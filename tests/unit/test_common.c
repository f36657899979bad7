//  Unit tests for zg_common: each module's self test runs in its own
//  process, so that a failed check (which aborts) is counted and the other
//  modules still run, and so that one test's environment changes do not
//  leak into the next.

#include "common/zg_json.h"
#include "common/zg_log.h"
#include "common/zg_number.h"
#include "common/zg_sha256.h"
#include "common/zg_config.h"
#include "common/zg_crypt.h"
#include "common/zg_scoreboard.h"
#include "tests/unit/zg_unit.h"

int
main (int argc, char *argv [])
{
    static const zg_unit_t tests [] = {
        { "zg_json", zg_json_test },
        { "zg_log", zg_log_test },
        { "zg_number", zg_number_test },
        { "zg_sha256", zg_sha256_test },
        { "zg_config", zg_config_test },
        { "zg_crypt", zg_crypt_test },
        { "zg_scoreboard", zg_scoreboard_test },
    };
    return zg_unit_run (tests, sizeof (tests) / sizeof (tests [0]), argc, argv);
}
