/*  =========================================================================
    zg_selftest - the check every module's self test uses

    ZG_CHECK stays on in release builds (unlike assert under NDEBUG): a
    self test that fails prints where and aborts, and the unit-test runner
    reports that module as failed.
    =========================================================================
*/
#ifndef ZG_SELFTEST_H_INCLUDED
#define ZG_SELFTEST_H_INCLUDED

#include <stdio.h>
#include <stdlib.h>

#define ZG_CHECK(cond) do { \
    if (!(cond)) { \
        fprintf (stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond); \
        abort (); \
    } \
} while (0)

#endif
