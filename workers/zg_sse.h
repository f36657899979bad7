/*  =========================================================================
    zg_sse - finds where server-sent events end, across reads

    An event ends at a blank line; lines end with \r\n, \n or \r (the SSE
    specification's rules). Bytes arrive in arbitrary pieces, so the
    scanner remembers how far it has looked into the current event and
    never reads a byte twice, however the event is split.
    =========================================================================
*/
#ifndef ZG_SSE_H_INCLUDED
#define ZG_SSE_H_INCLUDED

#include <stdbool.h>
#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
    size_t scanned;         //  bytes of the current event already looked at
    bool   line_start;      //  the scan stopped at the start of a line
} zg_sse_scanner_t;

//  Ready to scan a new event
void zg_sse_scanner_reset (zg_sse_scanner_t *self);

//  data[0..size) is the current event so far (it starts at data). Returns
//  its size up to and including the blank line once it is complete (and
//  resets the scanner for the next event, which starts there), or 0 while
//  it is not. With last (the stream has ended), an unterminated rest
//  counts as a whole event.
size_t zg_sse_event_end (zg_sse_scanner_t *self, const char *data, size_t size, bool last);

#ifdef __cplusplus
}
#endif
#endif
