#include "fu_http.h"

#include <string.h>
#include <strings.h>

enum { STAGE_HEAD, STAGE_BODY, STAGE_DONE };
enum { CHUNK_SIZE, CHUNK_DATA, CHUNK_DATA_END, CHUNK_TRAILER };

#define MAX_CHUNK_LINE 4096

void
fu_http_request_init (fu_http_request_t *self)
{
    //  The header table is large; only the fields read before being
    //  written need resetting.
    self->stage = STAGE_HEAD;
    self->head_scan = 0;
    self->head_len = 0;
    self->keep_alive = true;
    self->expect_continue = false;
    self->chunked = false;
    self->has_content_length = false;
    self->content_length = 0;
    self->header_count = 0;
    self->chunk_state = CHUNK_SIZE;
    self->chunk_left = 0;
    self->scan = 0;
    self->body_len = 0;
    self->total_len = 0;
    self->error = NULL;
}

bool
fu_http_head_done (const fu_http_request_t *self)
{
    return self->stage != STAGE_HEAD;
}

static bool
s_is_token_char (unsigned char c)
{
    if (c >= 'a' && c <= 'z')
        return true;
    if (c >= 'A' && c <= 'Z')
        return true;
    if (c >= '0' && c <= '9')
        return true;
    return c && strchr ("!#$%&'*+-.^_`|~", c) != NULL;
}

static int
s_fail (fu_http_request_t *self, int status, const char *why)
{
    self->error = why;
    return -status;
}

//  True if the comma-separated list value contains token (any case).
static bool
s_list_has (const char *value, size_t size, const char *token)
{
    size_t token_len = strlen (token);
    size_t at = 0;
    while (at < size) {
        while (at < size && (value [at] == ' ' || value [at] == '\t' || value [at] == ','))
            at++;
        size_t start = at;
        while (at < size && value [at] != ',')
            at++;
        size_t end = at;
        while (end > start && (value [end - 1] == ' ' || value [end - 1] == '\t'))
            end--;
        if (end - start == token_len && strncasecmp (value + start, token, token_len) == 0)
            return true;
    }
    return false;
}

static int
s_parse_request_line (fu_http_request_t *self, const char *buf, size_t start, size_t end)
{
    size_t at = start;
    self->method_off = at;
    while (at < end && s_is_token_char ((unsigned char) buf [at]))
        at++;
    self->method_len = at - start;
    if (self->method_len == 0 || at >= end || buf [at] != ' ')
        return s_fail (self, 400, "malformed request line");
    at++;
    self->target_off = at;
    while (at < end && (unsigned char) buf [at] > ' ' && buf [at] != 0x7F)
        at++;
    self->target_len = at - self->target_off;
    if (self->target_len == 0 || at >= end || buf [at] != ' ')
        return s_fail (self, 400, "malformed request target");
    if (buf [self->target_off] != '/')
        return s_fail (self, 400, "request target must be an absolute path");
    at++;
    if (end - at != 8 || memcmp (buf + at, "HTTP/", 5) != 0
    ||  buf [at + 6] != '.' || buf [at + 5] < '0' || buf [at + 5] > '9'
    ||  buf [at + 7] < '0' || buf [at + 7] > '9')
        return s_fail (self, 400, "malformed HTTP version");
    if (buf [at + 5] != '1')
        return s_fail (self, 505, "HTTP version not supported");
    self->minor_version = buf [at + 7] - '0';
    self->keep_alive = self->minor_version >= 1;
    return 0;
}

static bool
s_name_is (const char *buf, const fu_http_header_t *header, const char *name)
{
    size_t size = strlen (name);
    return header->name_len == size && memcmp (buf + header->name_off, name, size) == 0;
}

static int
s_parse_header (fu_http_request_t *self, char *buf, size_t start, size_t end)
{
    if (buf [start] == ' ' || buf [start] == '\t')
        return s_fail (self, 400, "obsolete header line folding");
    size_t at = start;
    while (at < end && s_is_token_char ((unsigned char) buf [at])) {
        if (buf [at] >= 'A' && buf [at] <= 'Z')
            buf [at] = (char) (buf [at] - 'A' + 'a');
        at++;
    }
    if (at == start || at >= end || buf [at] != ':')
        return s_fail (self, 400, "malformed header line");
    if (self->header_count == FU_HTTP_MAX_HEADERS)
        return s_fail (self, 431, "too many header fields");
    fu_http_header_t *header = &self->headers [self->header_count++];
    header->name_off = start;
    header->name_len = at - start;
    at++;
    while (at < end && (buf [at] == ' ' || buf [at] == '\t'))
        at++;
    size_t value_end = end;
    while (value_end > at && (buf [value_end - 1] == ' ' || buf [value_end - 1] == '\t'))
        value_end--;
    for (size_t i = at; i < value_end; i++) {
        unsigned char c = (unsigned char) buf [i];
        if ((c < 0x20 && c != '\t') || c == 0x7F)
            return s_fail (self, 400, "control character in header value");
    }
    header->value_off = at;
    header->value_len = value_end - at;

    const char *value = buf + at;
    size_t value_len = header->value_len;
    if (s_name_is (buf, header, "content-length")) {
        if (value_len == 0 || value_len > 18)
            return s_fail (self, 400, "invalid Content-Length");
        size_t length = 0;
        for (size_t i = 0; i < value_len; i++) {
            if (value [i] < '0' || value [i] > '9')
                return s_fail (self, 400, "invalid Content-Length");
            length = length * 10 + (size_t) (value [i] - '0');
        }
        if (self->has_content_length && self->content_length != length)
            return s_fail (self, 400, "conflicting Content-Length headers");
        self->has_content_length = true;
        self->content_length = length;
    }
    else
    if (s_name_is (buf, header, "transfer-encoding")) {
        //  Only "chunked" alone: anything else cannot be decoded here.
        if (value_len != 7 || strncasecmp (value, "chunked", 7) != 0 || self->chunked)
            return s_fail (self, 501, "unsupported Transfer-Encoding");
        self->chunked = true;
    }
    else
    if (s_name_is (buf, header, "connection")) {
        if (s_list_has (value, value_len, "close"))
            self->keep_alive = false;
        else
        if (s_list_has (value, value_len, "keep-alive"))
            self->keep_alive = true;
    }
    else
    if (s_name_is (buf, header, "expect")) {
        if (value_len == 12 && strncasecmp (value, "100-continue", 12) == 0)
            self->expect_continue = true;
    }
    return 0;
}

//  Finds the end of the head; returns its length or 0 when not there yet.
static size_t
s_find_head_end (fu_http_request_t *self, const char *buf, size_t len)
{
    size_t at = self->head_scan;
    while (at < len) {
        const char *newline = memchr (buf + at, '\n', len - at);
        if (!newline)
            break;
        size_t next = (size_t) (newline - buf) + 1;
        //  A blank line ends the head: "\n\n" or "\n\r\n".
        if (next < len && buf [next] == '\n')
            return next + 1;
        if (next + 1 < len && buf [next] == '\r' && buf [next + 1] == '\n')
            return next + 2;
        if (next + 1 >= len) {
            //  Cannot tell yet: resume at this newline next time.
            self->head_scan = next - 1;
            return 0;
        }
        at = next;
    }
    self->head_scan = len > 0 ? len - 1 : 0;
    return 0;
}

static int
s_parse_head (fu_http_request_t *self, char *buf, size_t len)
{
    //  Robustness: blank lines before a request line are ignored.
    size_t leading = 0;
    while (leading < len && (buf [leading] == '\r' || buf [leading] == '\n'))
        leading++;
    if (leading == len) {
        if (len > FU_HTTP_MAX_HEAD)
            return s_fail (self, 400, "only blank lines");
        return FU_HTTP_MORE;
    }
    if (self->head_scan < leading)
        self->head_scan = leading;
    size_t head_len = s_find_head_end (self, buf, len);
    if (head_len == 0) {
        if (len > FU_HTTP_MAX_HEAD)
            return s_fail (self, 431, "request head too large");
        return FU_HTTP_MORE;
    }
    if (head_len > FU_HTTP_MAX_HEAD)
        return s_fail (self, 431, "request head too large");

    size_t at = leading;
    bool first = true;
    while (at < head_len) {
        const char *newline = memchr (buf + at, '\n', head_len - at);
        size_t end = (size_t) (newline - buf);
        size_t next = end + 1;
        if (end > at && buf [end - 1] == '\r')
            end--;
        if (end == at)
            break;                  //  the blank line
        for (size_t i = at; i < end; i++)
            if (buf [i] == '\r' || buf [i] == 0)
                return s_fail (self, 400, "stray control character in head");
        int rc = first? s_parse_request_line (self, buf, at, end)
                      : s_parse_header (self, buf, at, end);
        if (rc)
            return rc;
        first = false;
        at = next;
    }
    if (self->chunked && self->has_content_length)
        return s_fail (self, 400, "both Content-Length and Transfer-Encoding");
    if (self->chunked && self->minor_version == 0)
        return s_fail (self, 400, "Transfer-Encoding in an HTTP/1.0 request");
    if (self->content_length > FU_HTTP_MAX_BODY)
        return s_fail (self, 413, "request body too large");
    self->head_len = head_len;
    self->scan = head_len;
    self->stage = STAGE_BODY;
    return FU_HTTP_MORE;
}

//  The line at scan, without its CR LF; returns 0 when incomplete.
static int
s_chunk_line (fu_http_request_t *self, const char *buf, size_t len,
              size_t *line_end, size_t *next)
{
    size_t avail = len - self->scan;
    const char *newline = memchr (buf + self->scan, '\n', avail);
    if (!newline) {
        if (avail > MAX_CHUNK_LINE)
            return s_fail (self, 400, "chunk line too long");
        return 0;
    }
    *next = (size_t) (newline - buf) + 1;
    *line_end = (size_t) (newline - buf);
    if (*line_end > self->scan && buf [*line_end - 1] == '\r')
        (*line_end)--;
    if (*next - self->scan > MAX_CHUNK_LINE)
        return s_fail (self, 400, "chunk line too long");
    return 1;
}

static int
s_parse_chunked (fu_http_request_t *self, char *buf, size_t len)
{
    while (true) {
        size_t line_end, next;
        int rc;
        switch (self->chunk_state) {
            case CHUNK_SIZE: {
                rc = s_chunk_line (self, buf, len, &line_end, &next);
                if (rc <= 0)
                    return rc;
                size_t at = self->scan;
                size_t size = 0;
                size_t digits = 0;
                while (at < line_end) {
                    char c = buf [at];
                    int value;
                    if (c >= '0' && c <= '9')
                        value = c - '0';
                    else
                    if (c >= 'a' && c <= 'f')
                        value = c - 'a' + 10;
                    else
                    if (c >= 'A' && c <= 'F')
                        value = c - 'A' + 10;
                    else
                        break;
                    if (++digits > 15)
                        return s_fail (self, 413, "chunk too large");
                    size = size * 16 + (size_t) value;
                    at++;
                }
                while (at < line_end && (buf [at] == ' ' || buf [at] == '\t'))
                    at++;
                if (digits == 0 || (at < line_end && buf [at] != ';'))
                    return s_fail (self, 400, "malformed chunk size");
                self->scan = next;
                if (size == 0)
                    self->chunk_state = CHUNK_TRAILER;
                else {
                    if (size > FU_HTTP_MAX_BODY - self->body_len)
                        return s_fail (self, 413, "request body too large");
                    self->chunk_left = size;
                    self->chunk_state = CHUNK_DATA;
                }
                break;
            }
            case CHUNK_DATA: {
                size_t avail = len - self->scan;
                if (avail > self->chunk_left)
                    avail = self->chunk_left;
                //  Decoded bytes always trail the raw ones: each chunk had a size line.
                memmove (buf + self->head_len + self->body_len, buf + self->scan, avail);
                self->body_len += avail;
                self->scan += avail;
                self->chunk_left -= avail;
                if (self->chunk_left > 0)
                    return FU_HTTP_MORE;
                self->chunk_state = CHUNK_DATA_END;
                break;
            }
            case CHUNK_DATA_END:
                if (self->scan >= len)
                    return FU_HTTP_MORE;
                if (buf [self->scan] == '\n')
                    self->scan++;
                else
                if (buf [self->scan] == '\r') {
                    if (self->scan + 1 >= len)
                        return FU_HTTP_MORE;
                    if (buf [self->scan + 1] != '\n')
                        return s_fail (self, 400, "chunk data not followed by CRLF");
                    self->scan += 2;
                }
                else
                    return s_fail (self, 400, "chunk data not followed by CRLF");
                self->chunk_state = CHUNK_SIZE;
                break;
            case CHUNK_TRAILER: {
                rc = s_chunk_line (self, buf, len, &line_end, &next);
                if (rc <= 0)
                    return rc;
                //  Trailer fields are read past and ignored; a blank line ends them.
                bool blank = line_end == self->scan;
                self->scan = next;
                if (blank) {
                    self->total_len = self->scan;
                    self->stage = STAGE_DONE;
                    return FU_HTTP_COMPLETE;
                }
                break;
            }
        }
    }
}

int
fu_http_parse (fu_http_request_t *self, char *buf, size_t len)
{
    if (self->stage == STAGE_DONE)
        return FU_HTTP_COMPLETE;
    if (self->stage == STAGE_HEAD) {
        int rc = s_parse_head (self, buf, len);
        if (rc < 0 || self->stage == STAGE_HEAD)
            return rc;
    }
    if (self->chunked)
        return s_parse_chunked (self, buf, len);
    if (len - self->head_len < self->content_length)
        return FU_HTTP_MORE;
    self->body_len = self->content_length;
    self->total_len = self->head_len + self->content_length;
    self->stage = STAGE_DONE;
    return FU_HTTP_COMPLETE;
}
