//  Tests the spend actor's record rendering; its write path too when
//  ZG_TEST_DATABASE_URL names a server (tests/e2e/test_spend.py starts one
//  and runs this binary against it). -v for details.

#include "spend/zg_spend.h"

#include <string.h>

int
main (int argc, char *argv [])
{
    zg_spend_test (argc > 1 && strcmp (argv [1], "-v") == 0);
    return 0;
}
