//  Tests the spend actor's record rendering. The database side is covered
//  end to end by tests/e2e/test_spend.py. -v for details.

#include "spend/zg_spend.h"

#include <string.h>

int
main (int argc, char *argv [])
{
    zg_spend_test (argc > 1 && strcmp (argv [1], "-v") == 0);
    return 0;
}
