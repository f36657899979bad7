//  Unit tests for zg_health: the separate health app against a private
//  scoreboard, over real HTTP on loopback.

#include "health/zg_health.h"
#include "tests/unit/zg_unit.h"

int
main (int argc, char *argv [])
{
    static const zg_unit_t tests [] = {
        { "zg_health", zg_health_test },
    };
    return zg_unit_run (tests, sizeof (tests) / sizeof (tests [0]), argc, argv);
}
