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

#include <netinet/in.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

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

//  A TCP socket bound to a free loopback port (listening when listening is
//  true, backlog 16); the port in *port
static inline int
zg_selftest_loopback_socket (bool listening, int *port)
{
    int fd = socket (AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in address;
    memset (&address, 0, sizeof (address));
    address.sin_family = AF_INET;
    address.sin_addr.s_addr = htonl (INADDR_LOOPBACK);
    socklen_t length = sizeof (address);
    ZG_CHECK (fd >= 0 && bind (fd, (struct sockaddr *) &address, sizeof (address)) == 0);
    ZG_CHECK (!listening || listen (fd, 16) == 0);
    ZG_CHECK (getsockname (fd, (struct sockaddr *) &address, &length) == 0);
    *port = ntohs (address.sin_port);
    return fd;
}

//  A loopback port nothing listens on: bound, then closed
static inline int
zg_selftest_closed_port (void)
{
    int port;
    close (zg_selftest_loopback_socket (false, &port));
    return port;
}

#endif
