/*  fu_buf: a growable byte buffer for the fake upstream.

    Appends never fail loudly: an allocation failure sets `oom`, later
    appends are ignored, and the owner checks `oom` once after rendering a
    whole response (and drops the connection), so rendering code stays a
    straight line of appends.  */

#ifndef FU_BUF_H_INCLUDED
#define FU_BUF_H_INCLUDED

#include <stdbool.h>
#include <stddef.h>

typedef struct {
    char *data;
    size_t len;
    size_t cap;
    bool oom;
} fu_buf_t;

//  Make room for at least `extra` more bytes after len. 0 or -1.
int fu_buf_reserve (fu_buf_t *self, size_t extra);
void fu_buf_append (fu_buf_t *self, const void *bytes, size_t size);
void fu_buf_puts (fu_buf_t *self, const char *text);
void fu_buf_putu (fu_buf_t *self, unsigned long long value);
void fu_buf_printf (fu_buf_t *self, const char *format, ...)
    __attribute__ ((format (printf, 2, 3)));
//  Append `bytes` as a quoted JSON string. Valid UTF-8 passes through;
//  a byte that is not part of valid UTF-8 is written as \u00XX so the
//  result is always valid JSON.
void fu_buf_json_string (fu_buf_t *self, const char *bytes, size_t size);
//  Drop the first `size` bytes.
void fu_buf_consume (fu_buf_t *self, size_t size);
void fu_buf_reset (fu_buf_t *self);
void fu_buf_free (fu_buf_t *self);

#endif
