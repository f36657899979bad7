//  Unit tests for zg_common: each module's self test runs in its own
//  process, so that a failed check (which aborts) is counted and the other
//  modules still run, and so that one test's environment changes do not
//  leak into the next.

#include "common/zg_json.h"
#include "common/zg_log.h"
#include "common/zg_sha256.h"
#include "common/zg_config.h"
#include "common/zg_crypt.h"

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

typedef struct {
    const char *name;
    void (*test) (bool verbose);
} s_test_t;

int
main (int argc, char *argv [])
{
    bool verbose = argc > 1 && strcmp (argv [1], "-v") == 0;
    s_test_t tests [] = {
        { "zg_json", zg_json_test },
        { "zg_log", zg_log_test },
        { "zg_sha256", zg_sha256_test },
        { "zg_config", zg_config_test },
        { "zg_crypt", zg_crypt_test },
    };
    int passed = 0, failed = 0;
    for (size_t index = 0; index < sizeof (tests) / sizeof (tests [0]); index++) {
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
