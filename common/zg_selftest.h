/*  =========================================================================
    zg_selftest - the check every module's self test uses

    ZG_CHECK stays on in release builds (unlike assert under NDEBUG): a
    self test that fails prints where and aborts, and the unit-test runner
    reports that module as failed.

    ZG_TALLY is for the self tests that run thousands of checks (codecs,
    fuzzing): it counts instead of stopping at the first failure, prints
    the first few failures, and zg_tally_finish prints the module's
    `N passed, M failed` line and aborts if any failed.
    =========================================================================
*/
#ifndef ZG_SELFTEST_H_INCLUDED
#define ZG_SELFTEST_H_INCLUDED

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>

#define ZG_CHECK(cond) do { \
    if (!(cond)) { \
        fprintf (stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond); \
        abort (); \
    } \
} while (0)

typedef struct {
    const char *module;         //  for the failure lines
    int passed;
    int failed;
} zg_tally_t;

#define ZG_TALLY(tally, cond) \
    zg_tally_check (&(tally), (cond), #cond, __FILE__, __LINE__)

static inline bool
zg_tally_check (zg_tally_t *tally, bool ok, const char *text, const char *file, int line)
{
    if (ok)
        tally->passed++;
    else
    if (tally->failed++ < 50)
        fprintf (stderr, "%s: %s:%d: check failed: %s\n", tally->module, file, line, text);
    return ok;
}

static inline void
zg_tally_finish (const zg_tally_t *tally)
{
    printf ("%s\n", tally->failed? "FAILED": "OK");
    printf ("%d passed, %d failed\n", tally->passed, tally->failed);
    fflush (stdout);
    if (tally->failed)
        abort ();
}

#endif
