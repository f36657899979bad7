//  Runs the wire protocol's self test; -v for details

#include "proto/zg_msg.h"

int
main (int argc, char *argv [])
{
    zg_msg_test (argc > 1 && streq (argv [1], "-v"));
    return 0;
}
