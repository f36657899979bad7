/*  =========================================================================
    zg_unit - runs a library's module self tests, each in its own process

    A failed check aborts, so each self test runs in a child: the failure is
    counted, the other modules still run, and one test's environment changes
    do not leak into the next. Prints the `N passed, M failed` line ctest's
    readers expect and returns the exit status for main.
    =========================================================================
*/
#ifndef ZG_UNIT_H_INCLUDED
#define ZG_UNIT_H_INCLUDED

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

typedef struct {
    const char *name;
    void (*test) (bool verbose);
} zg_unit_t;

static inline int
zg_unit_run (const zg_unit_t *tests, size_t count, int argc, char *argv [])
{
    bool verbose = argc > 1 && strcmp (argv [1], "-v") == 0;
    int passed = 0, failed = 0;
    for (size_t index = 0; index < count; index++) {
        fflush (stdout);
        pid_t pid = fork ();
        if (pid == 0) {
            tests [index].test (verbose);
            //  exit, not _exit: the leak checker runs at exit
            exit (0);
        }
        int status = 0;
        if (pid < 0 || waitpid (pid, &status, 0) < 0
        ||  !WIFEXITED (status) || WEXITSTATUS (status) != 0) {
            printf ("%s: FAILED\n", tests [index].name);
            failed++;
        }
        else
            passed++;
    }
    printf ("%d passed, %d failed\n", passed, failed);
    return failed? 1: 0;
}

#endif
