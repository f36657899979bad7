/*  =========================================================================
    zg_json - a small validating JSON scanner for the data path

    The gateway forwards request and response bodies as bytes and only
    needs a few values out of them (model, stream, stream_options,
    usage...). zg_json validates a document (RFC 8259, depth-limited) and
    finds values by key without allocating or building a tree; the caller
    splices changes into the bytes.

    Spans are (offset, length) into the caller's buffer; the buffer does not
    need to be NUL-terminated.
    =========================================================================
*/

#ifndef ZG_JSON_H_INCLUDED
#define ZG_JSON_H_INCLUDED

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define ZG_JSON_MAX_DEPTH 64

typedef enum {
    ZG_JSON_NONE = 0,       //  not found
    ZG_JSON_OBJECT,
    ZG_JSON_ARRAY,
    ZG_JSON_STRING,
    ZG_JSON_NUMBER,
    ZG_JSON_TRUE,
    ZG_JSON_FALSE,
    ZG_JSON_NULL
} zg_json_type_t;

typedef struct {
    zg_json_type_t type;
    size_t offset;          //  first byte of the value (the '"' of a string, the '{' of an object)
    size_t length;          //  bytes of the whole value, quotes and brackets included
    size_t key_offset;      //  when found by key: the '"' that opens the key
} zg_json_span_t;

//  True if data[0..size) is exactly one valid JSON value, with optional
//  white space around it. On false, *error_at (if not NULL) is the offset
//  of the first bad byte.
bool zg_json_valid (const char *data, size_t size, size_t *error_at);

//  zg_json_valid, and in the same pass the values of keys [0..count) among
//  the members of the top-level object, into spans [0..count) (the first
//  member of a name wins, as with zg_json_find; type NONE when absent or
//  when the document is not an object). One walk over the bytes where
//  zg_json_valid and a zg_json_find per key took one each. On false the
//  spans are all NONE.
bool zg_json_valid_find (const char *data, size_t size, size_t *error_at,
                         const char *const *keys, zg_json_span_t *spans, size_t count);

//  Find the value of key among the members of the object that starts at
//  data[0] (after white space); only that object's own members, not
//  nested ones. Returns false (span->type NONE) if data is not an object or
//  the key is absent. Meant for valid documents (zg_json_valid first); on
//  any other bytes it and the readers below stay inside data[0..size),
//  with answers that mean nothing.
bool zg_json_find (const char *data, size_t size, const char *key, zg_json_span_t *span);

//  The same, for the object value described by parent (e.g. find
//  "include_usage" inside "stream_options").
bool zg_json_find_in (const char *data, size_t size, const zg_json_span_t *parent,
                      const char *key, zg_json_span_t *span);

//  Walk the elements of the array described by array: *cursor starts at
//  0; each call that returns true sets element to the next one. Returns
//  false (element->type NONE) after the last element or if array is not
//  an array. The document must be valid.
bool zg_json_element (const char *data, size_t size, const zg_json_span_t *array,
                      size_t *cursor, zg_json_span_t *element);

//  Copy a string value, unescaped, into out (NUL-terminated). Returns the
//  unescaped length, or -1 if span is not a string or out is too small.
int zg_json_string (const char *data, const zg_json_span_t *span, char *out, size_t size);

//  Read a number value as an integer (truncated toward zero) or double.
//  Return false if span is not a number.
bool zg_json_int64 (const char *data, const zg_json_span_t *span, int64_t *out);
bool zg_json_double (const char *data, const zg_json_span_t *span, double *out);

//  Walk the members of the object described by object: *cursor starts at
//  0; each call that returns true sets key (a string span, quotes
//  included) and value to the next member, in document order. Returns
//  false (both spans NONE) after the last member or if object is not an
//  object. The document must be valid.
bool zg_json_member (const char *data, size_t size, const zg_json_span_t *object,
                     size_t *cursor, zg_json_span_t *key, zg_json_span_t *value);

//  Write s as a JSON string literal (with quotes, escaped) into out.
//  Returns the number of bytes written (without the NUL), or -1 if it does
//  not fit.
int zg_json_quote (const char *s, char *out, size_t size);

//  The same for the length bytes at s, which need no NUL after them (a NUL
//  among them is written \u0000)
int zg_json_quote_n (const char *s, size_t length, char *out, size_t size);

//  Copy the length bytes at s into out as the text that zg_json_quote_n's
//  literal reads back as: valid UTF-8, each byte that begins no valid
//  sequence replaced by U+FFFD (its three bytes), nothing escaped, no NUL
//  after them. Returns the number of bytes written, or -1 if they do not
//  fit in size.
int zg_json_utf8_copy (const char *s, size_t length, char *out, size_t size);

//  Self test
void zg_json_test (bool verbose);

#ifdef __cplusplus
}
#endif

#endif
