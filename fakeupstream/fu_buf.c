#include "fu_buf.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int
fu_buf_reserve (fu_buf_t *self, size_t extra)
{
    if (self->oom)
        return -1;
    if (self->cap - self->len >= extra)
        return 0;
    size_t cap = self->cap ? self->cap : 256;
    while (cap - self->len < extra) {
        if (cap > ((size_t) -1) / 2) {
            self->oom = true;
            return -1;
        }
        cap *= 2;
    }
    char *data = realloc (self->data, cap);
    if (!data) {
        self->oom = true;
        return -1;
    }
    self->data = data;
    self->cap = cap;
    return 0;
}

void
fu_buf_append (fu_buf_t *self, const void *bytes, size_t size)
{
    if (size == 0 || fu_buf_reserve (self, size))
        return;
    memcpy (self->data + self->len, bytes, size);
    self->len += size;
}

void
fu_buf_puts (fu_buf_t *self, const char *text)
{
    fu_buf_append (self, text, strlen (text));
}

void
fu_buf_putu (fu_buf_t *self, unsigned long long value)
{
    char digits [24];
    size_t at = sizeof digits;
    do {
        digits [--at] = (char) ('0' + value % 10);
        value /= 10;
    } while (value);
    fu_buf_append (self, digits + at, sizeof digits - at);
}

void
fu_buf_printf (fu_buf_t *self, const char *format, ...)
{
    if (fu_buf_reserve (self, 128))
        return;
    va_list args;
    va_start (args, format);
    int size = vsnprintf (self->data + self->len, self->cap - self->len, format, args);
    va_end (args);
    if (size < 0) {
        self->oom = true;
        return;
    }
    if ((size_t) size >= self->cap - self->len) {
        if (fu_buf_reserve (self, (size_t) size + 1))
            return;
        va_start (args, format);
        vsnprintf (self->data + self->len, self->cap - self->len, format, args);
        va_end (args);
    }
    self->len += (size_t) size;
}

//  Length of the valid UTF-8 sequence at p (1..4), or 0 if invalid.
static size_t
s_utf8_sequence (const unsigned char *p, size_t avail)
{
    unsigned char c = p [0];
    size_t need;
    unsigned min;
    unsigned code;
    if (c >= 0xC2 && c <= 0xDF) {
        need = 2; code = c & 0x1F; min = 0x80;
    }
    else
    if (c >= 0xE0 && c <= 0xEF) {
        need = 3; code = c & 0x0F; min = 0x800;
    }
    else
    if (c >= 0xF0 && c <= 0xF4) {
        need = 4; code = c & 0x07; min = 0x10000;
    }
    else
        return 0;
    if (avail < need)
        return 0;
    for (size_t i = 1; i < need; i++) {
        if ((p [i] & 0xC0) != 0x80)
            return 0;
        code = (code << 6) | (p [i] & 0x3F);
    }
    if (code < min || code > 0x10FFFF || (code >= 0xD800 && code <= 0xDFFF))
        return 0;
    return need;
}

void
fu_buf_json_string (fu_buf_t *self, const char *bytes, size_t size)
{
    static const char hex [] = "0123456789abcdef";
    //  Worst case every byte becomes \u00XX.
    if (fu_buf_reserve (self, size * 6 + 2))
        return;
    char *out = self->data + self->len;
    const unsigned char *p = (const unsigned char *) bytes;
    const unsigned char *end = p + size;
    *out++ = '"';
    while (p < end) {
        unsigned char c = *p;
        if (c >= 0x20 && c < 0x80 && c != '"' && c != '\\') {
            *out++ = (char) c;
            p++;
            continue;
        }
        if (c == '"' || c == '\\') {
            *out++ = '\\';
            *out++ = (char) c;
            p++;
            continue;
        }
        if (c >= 0x80) {
            size_t seq = s_utf8_sequence (p, (size_t) (end - p));
            if (seq) {
                memcpy (out, p, seq);
                out += seq;
                p += seq;
                continue;
            }
        }
        char escaped = 0;
        switch (c) {
            case '\n': escaped = 'n'; break;
            case '\r': escaped = 'r'; break;
            case '\t': escaped = 't'; break;
            case '\b': escaped = 'b'; break;
            case '\f': escaped = 'f'; break;
        }
        *out++ = '\\';
        if (escaped)
            *out++ = escaped;
        else {
            *out++ = 'u';
            *out++ = '0';
            *out++ = '0';
            *out++ = hex [c >> 4];
            *out++ = hex [c & 15];
        }
        p++;
    }
    *out++ = '"';
    self->len = (size_t) (out - self->data);
}

void
fu_buf_consume (fu_buf_t *self, size_t size)
{
    if (size >= self->len)
        self->len = 0;
    else {
        memmove (self->data, self->data + size, self->len - size);
        self->len -= size;
    }
}

void
fu_buf_reset (fu_buf_t *self)
{
    self->len = 0;
    self->oom = false;
}

void
fu_buf_free (fu_buf_t *self)
{
    free (self->data);
    self->data = NULL;
    self->len = self->cap = 0;
    self->oom = false;
}
