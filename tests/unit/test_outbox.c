//  Tests the router's spend outbox: ring, spill file, replay order, save
//  and take back. -v for details.

#include "router/zg_outbox.h"

#include <string.h>

int
main (int argc, char *argv [])
{
    zg_outbox_test (argc > 1 && strcmp (argv [1], "-v") == 0);
    return 0;
}
