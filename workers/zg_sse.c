/*  =========================================================================
    zg_sse - finds where server-sent events end, across reads
    =========================================================================
*/
#include "workers/zg_sse.h"

void
zg_sse_scanner_reset (zg_sse_scanner_t *self)
{
    self->scanned = 0;
    self->line_start = true;
}

size_t
zg_sse_event_end (zg_sse_scanner_t *self, const char *data, size_t size, bool last)
{
    size_t at = self->scanned;
    bool line_start = self->line_start;
    while (at < size) {
        char byte = data [at];
        if (byte != '\r' && byte != '\n') {
            line_start = false;
            at++;
            continue;
        }
        size_t next = at + 1;
        if (byte == '\r') {
            //  A \r as the last byte may be the first half of \r\n: look
            //  again when more bytes come
            if (next == size && !last)
                break;
            if (next < size && data [next] == '\n')
                next++;
        }
        at = next;
        if (line_start) {
            zg_sse_scanner_reset (self);
            return at;
        }
        line_start = true;
    }
    if (last && size > 0) {
        zg_sse_scanner_reset (self);
        return size;
    }
    self->scanned = at;
    self->line_start = line_start;
    return 0;
}
