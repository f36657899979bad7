/*  fu_http: incremental HTTP/1.x request parser.

    The parser works on the connection's input buffer in place and keeps
    only offsets, so the buffer may be reallocated between calls. It is
    called again each time more bytes arrive, resuming where it stopped.
    Header names are lowercased in place; a chunked body is decoded in
    place right after the head, so once complete the body is contiguous
    at head_len and the request occupies total_len bytes of input
    (the next pipelined request starts there).  */

#ifndef FU_HTTP_H_INCLUDED
#define FU_HTTP_H_INCLUDED

#include <stdbool.h>
#include <stddef.h>

#define FU_HTTP_MAX_HEAD      (64 * 1024)
#define FU_HTTP_MAX_HEADERS   128
#define FU_HTTP_MAX_BODY      (8 * 1024 * 1024)

//  Results of fu_http_parse; errors are negative HTTP statuses.
#define FU_HTTP_MORE          0
#define FU_HTTP_COMPLETE      1

typedef struct {
    size_t name_off, name_len;
    size_t value_off, value_len;
} fu_http_header_t;

typedef struct {
    int stage;                  //  internal: head, body, done
    size_t head_scan;           //  internal: where to resume looking for the head's end
    size_t head_len;            //  bytes of request line, headers and blank line
    size_t method_off, method_len;
    size_t target_off, target_len;
    int minor_version;          //  HTTP/1.<minor>
    bool keep_alive;
    bool expect_continue;
    bool chunked;
    bool has_content_length;
    size_t content_length;
    size_t header_count;
    fu_http_header_t headers [FU_HTTP_MAX_HEADERS];
    //  Body decoding
    int chunk_state;
    size_t chunk_left;
    size_t scan;                //  next raw byte to decode
    size_t body_len;            //  decoded body bytes, at head_len
    size_t total_len;           //  raw bytes of the whole request once complete
    const char *error;          //  why a request was refused
} fu_http_request_t;

void fu_http_request_init (fu_http_request_t *self);
//  Parse what is in buf [0, len). Returns FU_HTTP_COMPLETE, FU_HTTP_MORE, or
//  -400, -413, -431, -501, -505 (the status to answer before closing).
int fu_http_parse (fu_http_request_t *self, char *buf, size_t len);
//  True when the head is parsed (the body may still be arriving).
bool fu_http_head_done (const fu_http_request_t *self);

#endif
