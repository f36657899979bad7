/*  =========================================================================
    zg_json - a small validating JSON scanner for the data path

    Nothing here allocates: the validator keeps its container stack in a
    fixed array of ZG_JSON_MAX_DEPTH bytes, and the finders walk the bytes
    without building anything. No function reads past data + size, even on
    input that was not validated first.
    =========================================================================
*/

#include "common/zg_json.h"
#include "common/zg_selftest.h"

#include <assert.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define s_NOT_FOUND ((size_t) -1)

static inline bool
s_is_space (unsigned char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r';
}

static inline size_t
s_skip_space (const unsigned char *data, size_t size, size_t pos)
{
    while (pos < size && s_is_space (data [pos]))
        pos++;
    return pos;
}

static int
s_hex_digit (unsigned char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

//  Reads the four hex digits after "\u" at data[pos]; -1 if they are not
//  four hex digits.
static long
s_hex4 (const unsigned char *data, size_t size, size_t pos)
{
    if (pos > size || size - pos < 4)
        return -1;
    long value = 0;
    for (int index = 0; index < 4; index++) {
        int digit = s_hex_digit (data [pos + index]);
        if (digit < 0)
            return -1;
        value = value * 16 + digit;
    }
    return value;
}

//  Length of the well-formed UTF-8 sequence at data[pos] (Unicode table
//  3-7: no overlong forms, no encoded surrogates, nothing above U+10FFFF),
//  or 0 if it is not one.
static size_t
s_utf8_sequence (const unsigned char *data, size_t size, size_t pos)
{
    unsigned char lead = data [pos];
    size_t length;
    unsigned char low = 0x80, high = 0xBF;     //  range of the second byte
    if (lead < 0x80)
        return 1;
    else
    if (lead >= 0xC2 && lead <= 0xDF)
        length = 2;
    else
    if (lead >= 0xE0 && lead <= 0xEF) {
        length = 3;
        if (lead == 0xE0)
            low = 0xA0;
        else
        if (lead == 0xED)
            high = 0x9F;
    }
    else
    if (lead >= 0xF0 && lead <= 0xF4) {
        length = 4;
        if (lead == 0xF0)
            low = 0x90;
        else
        if (lead == 0xF4)
            high = 0x8F;
    }
    else
        return 0;
    if (size - pos < length)
        return 0;
    if (data [pos + 1] < low || data [pos + 1] > high)
        return 0;
    for (size_t index = 2; index < length; index++)
        if ((data [pos + index] & 0xC0) != 0x80)
            return 0;
    return length;
}

//  Bytes that hold none of the eight bytes of a word: the usual bit
//  tricks, exact for "is there any" (a carry can only misplace which)
#define S_ONES          0x0101010101010101ULL
#define S_HIGHS         0x8080808080808080ULL
#define S_ANY_ZERO(word)        (((word) - S_ONES) & ~(word) & S_HIGHS)
#define S_ANY_BYTE(word, byte)  S_ANY_ZERO ((word) ^ (S_ONES * (byte)))

static inline uint64_t
s_word (const unsigned char *data)
{
    uint64_t word;
    memcpy (&word, data, sizeof (word));
    return word;
}

//  Which byte of a word to look at first, given the marks of the tricks
//  above (the high bit of each byte that may be one of those sought)
static inline size_t
s_first_marked (uint64_t marks)
{
#if defined (__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    //  A carry only ever marks bytes after a truly marked one, so the
    //  lowest mark is exact
    return (size_t) __builtin_ctzll (marks) / 8;
#else
    //  Carries run toward the word's first bytes here: look from its start
    (void) marks;
    return 0;
#endif
}

//  Skips, eight at a time, the bytes of a string that need no look of
//  their own: printable ASCII other than the quote and the backslash.
//  Strings (message text above all) are most of a body's bytes. Returns
//  the offset of the first byte that needs a look: most strings are keys
//  shorter than a word, and stepping to the closing quote at once spares
//  a byte-wise walk up to it.
static inline size_t
s_plain_run (const unsigned char *data, size_t size, size_t pos)
{
    while (size - pos >= 8) {
        uint64_t word = s_word (data + pos);
        uint64_t special = (word & S_HIGHS)
                         | ((word - S_ONES * 0x20) & ~word & S_HIGHS)   //  a control character
                         | S_ANY_BYTE (word, '"') | S_ANY_BYTE (word, '\\');
        if (special)
            return pos + s_first_marked (special);
        pos += 8;
    }
    return pos;
}

//  Validates the string that opens at data[pos] ('"'). Returns the offset
//  just past the closing quote, or s_NOT_FOUND with *bad at the first bad
//  byte.
static size_t
s_scan_string (const unsigned char *data, size_t size, size_t pos, size_t *bad)
{
    pos++;
    while (pos < size) {
        pos = s_plain_run (data, size, pos);
        if (pos >= size)
            break;
        unsigned char c = data [pos];
        if (c == '"')
            return pos + 1;
        if (c < 0x20) {
            *bad = pos;
            return s_NOT_FOUND;
        }
        if (c == '\\') {
            if (pos + 1 >= size) {
                *bad = size;
                return s_NOT_FOUND;
            }
            unsigned char e = data [pos + 1];
            if (e == 'u') {
                long unit = s_hex4 (data, size, pos + 2);
                if (unit < 0) {
                    *bad = pos;
                    return s_NOT_FOUND;
                }
                if (unit >= 0xDC00 && unit <= 0xDFFF) {
                    *bad = pos;         //  a low surrogate with no high one before it
                    return s_NOT_FOUND;
                }
                if (unit >= 0xD800 && unit <= 0xDBFF) {
                    //  A high surrogate is only meaningful with its low half
                    if (pos + 7 >= size || data [pos + 6] != '\\' || data [pos + 7] != 'u') {
                        *bad = pos;
                        return s_NOT_FOUND;
                    }
                    long low = s_hex4 (data, size, pos + 8);
                    if (low < 0xDC00 || low > 0xDFFF) {
                        *bad = pos;
                        return s_NOT_FOUND;
                    }
                    pos += 12;
                }
                else
                    pos += 6;
                continue;
            }
            if (e == '"' || e == '\\' || e == '/' || e == 'b' || e == 'f'
            ||  e == 'n' || e == 'r' || e == 't') {
                pos += 2;
                continue;
            }
            *bad = pos + 1;
            return s_NOT_FOUND;
        }
        if (c < 0x80) {
            pos++;
            continue;
        }
        size_t length = s_utf8_sequence (data, size, pos);
        if (length == 0) {
            *bad = pos;
            return s_NOT_FOUND;
        }
        pos += length;
    }
    *bad = size;
    return s_NOT_FOUND;
}

static inline bool
s_is_digit (unsigned char c)
{
    return c >= '0' && c <= '9';
}

//  Number grammar: -? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?
//  What follows the number is for the caller to judge, which is how "01"
//  is rejected: the number is "0" and "1" cannot follow a value.
static size_t
s_scan_number (const unsigned char *data, size_t size, size_t pos, size_t *bad)
{
    if (pos < size && data [pos] == '-')
        pos++;
    if (pos >= size || !s_is_digit (data [pos])) {
        *bad = pos;
        return s_NOT_FOUND;
    }
    if (data [pos] == '0')
        pos++;
    else
        while (pos < size && s_is_digit (data [pos]))
            pos++;
    if (pos < size && data [pos] == '.') {
        pos++;
        if (pos >= size || !s_is_digit (data [pos])) {
            *bad = pos;
            return s_NOT_FOUND;
        }
        while (pos < size && s_is_digit (data [pos]))
            pos++;
    }
    if (pos < size && (data [pos] == 'e' || data [pos] == 'E')) {
        pos++;
        if (pos < size && (data [pos] == '+' || data [pos] == '-'))
            pos++;
        if (pos >= size || !s_is_digit (data [pos])) {
            *bad = pos;
            return s_NOT_FOUND;
        }
        while (pos < size && s_is_digit (data [pos]))
            pos++;
    }
    return pos;
}

static size_t
s_scan_literal (const unsigned char *data, size_t size, size_t pos, const char *word, size_t *bad)
{
    for (; *word; word++, pos++)
        if (pos >= size || data [pos] != (unsigned char) *word) {
            *bad = pos;
            return s_NOT_FOUND;
        }
    return pos;
}

static bool s_key_equals (const unsigned char *data, size_t start, size_t end, const char *key);
static zg_json_type_t s_type_of (unsigned char c);

//  The validator; with count > 0 it also notes the top-level members that
//  keys ask for (see zg_json_valid_find)
static bool
s_validate (const char *text, size_t size, size_t *error_at,
            const char *const *keys, zg_json_span_t *spans, size_t count)
{
    const unsigned char *data = (const unsigned char *) text;
    unsigned char stack [ZG_JSON_MAX_DEPTH];    //  '{' or '[' per open container
    size_t depth = 0;
    size_t bad = 0;
    size_t pos = 0;
    size_t wanted = count;          //  the key of the top-level member being read, if asked for
    size_t key_offset = 0;          //  of the wanted member
    size_t key_start = 0;           //  of the member being read, at any depth
    size_t value_offset = 0;
    if (!data && size > 0)
        goto invalid;
    pos = s_skip_space (data, size, pos);

value:
    if (pos >= size) {
        bad = size;
        goto invalid;
    }
    if (wanted < count && depth == 1)
        value_offset = pos;
    switch (data [pos]) {
        case '{':
        case '[':
            if (depth == ZG_JSON_MAX_DEPTH) {
                bad = pos;
                goto invalid;
            }
            stack [depth++] = data [pos];
            pos = s_skip_space (data, size, pos + 1);
            if (pos < size && data [pos] == (stack [depth - 1] == '{'? '}': ']')) {
                depth--;
                pos++;
                goto after_value;
            }
            if (stack [depth - 1] == '{')
                goto member;
            goto value;
        case '"':
            pos = s_scan_string (data, size, pos, &bad);
            break;
        case 't':
            pos = s_scan_literal (data, size, pos, "true", &bad);
            break;
        case 'f':
            pos = s_scan_literal (data, size, pos, "false", &bad);
            break;
        case 'n':
            pos = s_scan_literal (data, size, pos, "null", &bad);
            break;
        default:
            if (data [pos] == '-' || s_is_digit (data [pos]))
                pos = s_scan_number (data, size, pos, &bad);
            else {
                bad = pos;
                goto invalid;
            }
    }
    if (pos == s_NOT_FOUND)
        goto invalid;

after_value:
    if (wanted < count && depth == 1) {
        spans [wanted].type = s_type_of (data [value_offset]);
        spans [wanted].offset = value_offset;
        spans [wanted].length = pos - value_offset;
        spans [wanted].key_offset = key_offset;
        wanted = count;
    }
    pos = s_skip_space (data, size, pos);
    if (depth == 0) {
        if (pos == size)
            return true;
        bad = pos;                  //  trailing garbage
        goto invalid;
    }
    if (pos >= size) {
        bad = size;
        goto invalid;
    }
    if (data [pos] == ',') {
        pos = s_skip_space (data, size, pos + 1);
        if (stack [depth - 1] == '{')
            goto member;
        goto value;
    }
    if (data [pos] == (stack [depth - 1] == '{'? '}': ']')) {
        depth--;
        pos++;
        goto after_value;
    }
    bad = pos;
    goto invalid;

member:
    if (pos >= size || data [pos] != '"') {
        bad = pos < size? pos: size;
        goto invalid;
    }
    key_start = pos;
    pos = s_scan_string (data, size, pos, &bad);
    if (pos == s_NOT_FOUND)
        goto invalid;
    if (count && depth == 1) {
        for (wanted = 0; wanted < count; wanted++)
            if (spans [wanted].type == ZG_JSON_NONE
            &&  s_key_equals (data, key_start + 1, pos - 1, keys [wanted]))
                break;
        key_offset = key_start;
    }
    pos = s_skip_space (data, size, pos);
    if (pos >= size || data [pos] != ':') {
        bad = pos;
        goto invalid;
    }
    pos = s_skip_space (data, size, pos + 1);
    goto value;

invalid:
    if (error_at)
        *error_at = bad;
    for (size_t index = 0; index < count; index++)
        spans [index] = (zg_json_span_t) { .type = ZG_JSON_NONE };
    return false;
}

bool
zg_json_valid (const char *text, size_t size, size_t *error_at)
{
    return s_validate (text, size, error_at, NULL, NULL, 0);
}

bool
zg_json_valid_find (const char *text, size_t size, size_t *error_at,
                    const char *const *keys, zg_json_span_t *spans, size_t count)
{
    assert (count == 0 || (keys && spans));
    for (size_t index = 0; index < count; index++)
        spans [index] = (zg_json_span_t) { .type = ZG_JSON_NONE };
    return s_validate (text, size, error_at, keys, spans, count);
}


//  --------------------------------------------------------------------------
//  Finding values. These trust the document to be valid (that is the
//  contract) but stay inside data[0..size) whatever it holds.

//  Eight bytes at a time to the next quote or backslash (s_plain_run's
//  way), or to the last bytes of data
static inline size_t
s_quote_or_backslash (const unsigned char *data, size_t size, size_t pos)
{
    while (size - pos >= 8) {
        uint64_t word = s_word (data + pos);
        uint64_t special = S_ANY_BYTE (word, '"') | S_ANY_BYTE (word, '\\');
        if (special)
            return pos + s_first_marked (special);
        pos += 8;
    }
    return pos;
}

//  Offset just past the string that opens at data[pos], or s_NOT_FOUND
static size_t
s_skip_string (const unsigned char *data, size_t size, size_t pos)
{
    pos++;
    while (pos < size) {
        pos = s_quote_or_backslash (data, size, pos);
        if (pos >= size)
            break;
        unsigned char c = data [pos];
        if (c == '"')
            return pos + 1;
        pos += c == '\\'? 2: 1;
    }
    return s_NOT_FOUND;
}

//  Offset just past the value that starts at data[pos], or s_NOT_FOUND
static size_t
s_skip_value (const unsigned char *data, size_t size, size_t pos)
{
    if (pos >= size)
        return s_NOT_FOUND;
    unsigned char c = data [pos];
    if (c == '"')
        return s_skip_string (data, size, pos);
    if (c == '{' || c == '[') {
        size_t depth = 0;
        while (pos < size) {
            c = data [pos];
            if (c == '"') {
                pos = s_skip_string (data, size, pos);
                if (pos == s_NOT_FOUND)
                    return s_NOT_FOUND;
                continue;
            }
            if (c == '{' || c == '[')
                depth++;
            else
            if (c == '}' || c == ']') {
                if (--depth == 0)
                    return pos + 1;
            }
            pos++;
        }
        return s_NOT_FOUND;
    }
    size_t start = pos;
    while (pos < size) {
        c = data [pos];
        if (c == ',' || c == '}' || c == ']' || s_is_space (c))
            break;
        pos++;
    }
    return pos > start? pos: s_NOT_FOUND;
}

static zg_json_type_t
s_type_of (unsigned char c)
{
    switch (c) {
        case '{': return ZG_JSON_OBJECT;
        case '[': return ZG_JSON_ARRAY;
        case '"': return ZG_JSON_STRING;
        case 't': return ZG_JSON_TRUE;
        case 'f': return ZG_JSON_FALSE;
        case 'n': return ZG_JSON_NULL;
        default:  return (c == '-' || s_is_digit (c))? ZG_JSON_NUMBER: ZG_JSON_NONE;
    }
}

//  Decodes the escape at data[pos] ('\\') into UTF-8 in out[4]; returns
//  its length in bytes and sets *next past the escape. A lone or broken
//  surrogate becomes U+FFFD, so that unvalidated input still decodes.
static size_t
s_decode_escape (const unsigned char *data, size_t end, size_t pos, unsigned char out [4],
                 size_t *next)
{
    if (pos + 1 >= end) {
        *next = end;
        return 0;
    }
    unsigned char e = data [pos + 1];
    *next = pos + 2;
    switch (e) {
        case 'b': out [0] = '\b'; return 1;
        case 'f': out [0] = '\f'; return 1;
        case 'n': out [0] = '\n'; return 1;
        case 'r': out [0] = '\r'; return 1;
        case 't': out [0] = '\t'; return 1;
        case 'u': break;
        default:  out [0] = e; return 1;
    }
    long code = s_hex4 (data, end, pos + 2);
    if (code < 0) {
        *next = end < pos + 6? end: pos + 6;
        code = 0xFFFD;
    }
    else {
        *next = pos + 6;
        if (code >= 0xD800 && code <= 0xDBFF) {
            long low = (pos + 7 < end && data [pos + 6] == '\\' && data [pos + 7] == 'u')
                     ? s_hex4 (data, end, pos + 8): -1;
            if (low >= 0xDC00 && low <= 0xDFFF) {
                code = 0x10000 + ((code - 0xD800) << 10) + (low - 0xDC00);
                *next = pos + 12;
            }
            else
                code = 0xFFFD;
        }
        else
        if (code >= 0xDC00 && code <= 0xDFFF)
            code = 0xFFFD;
    }
    if (code < 0x80) {
        out [0] = (unsigned char) code;
        return 1;
    }
    if (code < 0x800) {
        out [0] = (unsigned char) (0xC0 | (code >> 6));
        out [1] = (unsigned char) (0x80 | (code & 0x3F));
        return 2;
    }
    if (code < 0x10000) {
        out [0] = (unsigned char) (0xE0 | (code >> 12));
        out [1] = (unsigned char) (0x80 | ((code >> 6) & 0x3F));
        out [2] = (unsigned char) (0x80 | (code & 0x3F));
        return 3;
    }
    out [0] = (unsigned char) (0xF0 | (code >> 18));
    out [1] = (unsigned char) (0x80 | ((code >> 12) & 0x3F));
    out [2] = (unsigned char) (0x80 | ((code >> 6) & 0x3F));
    out [3] = (unsigned char) (0x80 | (code & 0x3F));
    return 4;
}

//  True if the key string data[start..end) (between its quotes) equals
//  key once unescaped. Keys are nearly always plain, so bytes are compared
//  directly until a backslash asks for decoding.
static bool
s_key_equals (const unsigned char *data, size_t start, size_t end, const char *key)
{
    const unsigned char *want = (const unsigned char *) key;
    size_t pos = start;
    while (pos < end) {
        if (data [pos] == '\\') {
            unsigned char decoded [4];
            size_t next;
            size_t length = s_decode_escape (data, end, pos, decoded, &next);
            for (size_t index = 0; index < length; index++, want++)
                if (*want == 0 || *want != decoded [index])
                    return false;
            pos = next;
        }
        else {
            if (*want == 0 || *want != data [pos])
                return false;
            want++;
            pos++;
        }
    }
    return *want == 0;
}

//  Find key among the members of the object starting (after white space)
//  at data[0]; offsets in span are relative to data.
//  Duplicate keys: the first member wins. RFC 8259 leaves this open;
//  taking the first is stable and lets the search stop early.
static bool
s_find (const unsigned char *data, size_t size, const char *key, zg_json_span_t *span)
{
    size_t pos = s_skip_space (data, size, 0);
    if (pos >= size || data [pos] != '{')
        return false;
    pos = s_skip_space (data, size, pos + 1);
    while (pos < size && data [pos] == '"') {
        size_t key_offset = pos;
        size_t key_end = s_skip_string (data, size, pos);
        if (key_end == s_NOT_FOUND)
            return false;
        pos = s_skip_space (data, size, key_end);
        if (pos >= size || data [pos] != ':')
            return false;
        pos = s_skip_space (data, size, pos + 1);
        size_t value_end = s_skip_value (data, size, pos);
        if (value_end == s_NOT_FOUND)
            return false;
        if (s_key_equals (data, key_offset + 1, key_end - 1, key)) {
            span->type = s_type_of (data [pos]);
            span->offset = pos;
            span->length = value_end - pos;
            span->key_offset = key_offset;
            return span->type != ZG_JSON_NONE;
        }
        pos = s_skip_space (data, size, value_end);
        if (pos >= size || data [pos] != ',')
            return false;
        pos = s_skip_space (data, size, pos + 1);
    }
    return false;
}

static void
s_span_clear (zg_json_span_t *span)
{
    span->type = ZG_JSON_NONE;
    span->offset = 0;
    span->length = 0;
    span->key_offset = 0;
}

bool
zg_json_find (const char *data, size_t size, const char *key, zg_json_span_t *span)
{
    assert (span);
    s_span_clear (span);
    if (!data || !key)
        return false;
    if (s_find ((const unsigned char *) data, size, key, span))
        return true;
    s_span_clear (span);
    return false;
}

bool
zg_json_find_in (const char *data, size_t size, const zg_json_span_t *parent,
                 const char *key, zg_json_span_t *span)
{
    assert (span);
    s_span_clear (span);
    if (!data || !key || !parent || parent->type != ZG_JSON_OBJECT
    ||  parent->offset > size || parent->length > size - parent->offset)
        return false;
    if (s_find ((const unsigned char *) data + parent->offset, parent->length, key, span)) {
        span->offset += parent->offset;
        span->key_offset += parent->offset;
        return true;
    }
    s_span_clear (span);
    return false;
}

bool
zg_json_element (const char *text, size_t size, const zg_json_span_t *array,
                 size_t *cursor, zg_json_span_t *element)
{
    assert (cursor);
    assert (element);
    s_span_clear (element);
    if (!text || !array || array->type != ZG_JSON_ARRAY || array->length < 2
    ||  array->offset > size || array->length > size - array->offset)
        return false;
    const unsigned char *data = (const unsigned char *) text;
    size_t end = array->offset + array->length - 1;     //  the closing bracket
    size_t pos = *cursor ? *cursor : array->offset + 1;
    if (pos > end)
        return false;
    pos = s_skip_space (data, end, pos);
    if (pos < end && data [pos] == ',')
        pos = s_skip_space (data, end, pos + 1);
    if (pos >= end)
        return false;
    size_t value_end = s_skip_value (data, end, pos);
    if (value_end == s_NOT_FOUND)
        return false;
    element->type = s_type_of (data [pos]);
    element->offset = pos;
    element->length = value_end - pos;
    *cursor = value_end;
    return element->type != ZG_JSON_NONE;
}

bool
zg_json_member (const char *data, size_t size, const zg_json_span_t *object,
                size_t *cursor, zg_json_span_t *key, zg_json_span_t *value)
{
    assert (cursor && key && value);
    s_span_clear (key);
    s_span_clear (value);
    if (!data || !object || object->type != ZG_JSON_OBJECT
    ||  object->offset > size || object->length > size - object->offset || object->length < 2)
        return false;
    const unsigned char *bytes = (const unsigned char *) data;
    size_t end = object->offset + object->length - 1;       //  the closing '}'
    size_t pos = *cursor;
    if (pos == 0 || pos < object->offset || pos > end)
        pos = object->offset + 1;
    pos = s_skip_space (bytes, end, pos);
    if (pos < end && bytes [pos] == ',')
        pos = s_skip_space (bytes, end, pos + 1);
    if (pos >= end || bytes [pos] != '"')
        return false;
    size_t key_end = s_skip_string (bytes, end, pos);
    if (key_end == s_NOT_FOUND)
        return false;
    size_t colon = s_skip_space (bytes, end, key_end);
    if (colon >= end || bytes [colon] != ':')
        return false;
    size_t value_start = s_skip_space (bytes, end, colon + 1);
    size_t value_end = s_skip_value (bytes, end, value_start);
    if (value_end == s_NOT_FOUND || s_type_of (bytes [value_start]) == ZG_JSON_NONE)
        return false;
    key->type = ZG_JSON_STRING;
    key->offset = pos;
    key->length = key_end - pos;
    key->key_offset = pos;
    value->type = s_type_of (bytes [value_start]);
    value->offset = value_start;
    value->length = value_end - value_start;
    value->key_offset = pos;
    *cursor = value_end;
    return true;
}

int
zg_json_string (const char *text, const zg_json_span_t *span, char *out, size_t size)
{
    if (!text || !span || !out || size == 0 || span->type != ZG_JSON_STRING || span->length < 2)
        return -1;
    const unsigned char *data = (const unsigned char *) text;
    size_t end = span->offset + span->length - 1;   //  the closing quote
    size_t written = 0;
    size_t pos = span->offset + 1;
    while (pos < end) {
        if (data [pos] == '\\') {
            unsigned char decoded [4];
            size_t next;
            size_t length = s_decode_escape (data, end, pos, decoded, &next);
            if (written + length >= size)
                return -1;
            memcpy (out + written, decoded, length);
            written += length;
            pos = next;
        }
        else {
            //  Copy the run of plain bytes in one go
            size_t run = pos;
            while (run < end && data [run] != '\\')
                run++;
            if (written + (run - pos) >= size)
                return -1;
            memcpy (out + written, data + pos, run - pos);
            written += run - pos;
            pos = run;
        }
    }
    if (written > INT32_MAX)
        return -1;
    out [written] = 0;
    return (int) written;
}

bool
zg_json_int64 (const char *text, const zg_json_span_t *span, int64_t *out)
{
    if (!text || !span || !out || span->type != ZG_JSON_NUMBER || span->length == 0)
        return false;
    const unsigned char *data = (const unsigned char *) text + span->offset;
    size_t length = span->length;
    size_t pos = 0;
    bool negative = data [0] == '-';
    if (negative)
        pos++;
    //  Plain integers, the usual case, are read exactly
    uint64_t magnitude = 0;
    size_t digits_end = pos;
    while (digits_end < length && s_is_digit (data [digits_end]))
        digits_end++;
    if (digits_end == length && digits_end > pos) {
        for (; pos < length; pos++) {
            unsigned digit = data [pos] - '0';
            if (magnitude > (UINT64_MAX - digit) / 10)
                return false;
            magnitude = magnitude * 10 + digit;
        }
        if (negative) {
            if (magnitude > (uint64_t) INT64_MAX + 1)
                return false;
            *out = magnitude == (uint64_t) INT64_MAX + 1? INT64_MIN: -(int64_t) magnitude;
        }
        else {
            if (magnitude > (uint64_t) INT64_MAX)
                return false;
            *out = (int64_t) magnitude;
        }
        return true;
    }
    double value;
    if (!zg_json_double (text, span, &value))
        return false;
    value = trunc (value);
    //  -2^63 is representable; 2^63 is not
    if (!(value >= -9223372036854775808.0 && value < 9223372036854775808.0))
        return false;
    *out = (int64_t) value;
    return true;
}

bool
zg_json_double (const char *text, const zg_json_span_t *span, double *out)
{
    if (!text || !span || !out || span->type != ZG_JSON_NUMBER || span->length == 0)
        return false;
    //  strtod needs a terminator the caller's buffer may not have. Numbers
    //  longer than this buffer do not occur in the messages we read.
    char number [128];
    if (span->length >= sizeof (number))
        return false;
    memcpy (number, text + span->offset, span->length);
    number [span->length] = 0;
    char *end;
    errno = 0;
    double value = strtod (number, &end);
    if (end != number + span->length)
        return false;
    if (errno == ERANGE && isinf (value))
        return false;
    *out = value;
    return true;
}

//  1 for the bytes a JSON string takes as they are: printable ASCII but
//  the quote and the backslash
static const uint8_t s_plain [256] = {
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    1, 1, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 1, 1, 1,
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
};

int
zg_json_quote (const char *s, char *out, size_t size)
{
    if (!s)
        return -1;
    return zg_json_quote_n (s, strlen (s), out, size);
}

int
zg_json_quote_n (const char *s, size_t length, char *out, size_t size)
{
    static const char hex [] = "0123456789abcdef";
    if (!s || !out || size == 0)
        return -1;
    const unsigned char *text = (const unsigned char *) s;
    size_t written = 0;
    //  Leaves room for the closing quote and the NUL
    #define s_PUT(str, len) do { \
        if (written + (len) + 2 > size) return -1; \
        memcpy (out + written, (str), (len)); written += (len); \
    } while (0)
    s_PUT ("\"", 1);
    size_t pos = 0;
    while (pos < length) {
        unsigned char c = text [pos];
        if (s_plain [c]) {
            //  A run of what needs no escape goes in one copy, found eight
            //  bytes at a time (ids and hashes are plain from end to end)
            size_t end = s_plain_run (text, length, pos + 1);
            while (end < length && s_plain [text [end]])
                end++;
            s_PUT (text + pos, end - pos);
            pos = end;
            continue;
        }
        if (c == '"')
            s_PUT ("\\\"", 2);
        else
        if (c == '\\')
            s_PUT ("\\\\", 2);
        else
        if (c < 0x20) {
            //  The short forms Python's json.dumps uses, so our JSON log
            //  lines read like the reference's; \u00XX for the rest.
            switch (c) {
                case '\n': s_PUT ("\\n", 2); break;
                case '\r': s_PUT ("\\r", 2); break;
                case '\t': s_PUT ("\\t", 2); break;
                case '\b': s_PUT ("\\b", 2); break;
                case '\f': s_PUT ("\\f", 2); break;
                default: {
                    char escape [6] = { '\\', 'u', '0', '0', hex [c >> 4], hex [c & 15] };
                    s_PUT (escape, 6);
                }
            }
        }
        else {
            //  Invalid UTF-8 would make the whole literal invalid JSON
            size_t sequence = s_utf8_sequence (text, length, pos);
            if (sequence == 0) {
                s_PUT ("\\ufffd", 6);
                pos++;
                continue;
            }
            s_PUT (text + pos, sequence);
            pos += sequence;
            continue;
        }
        pos++;
    }
    #undef s_PUT
    out [written++] = '"';
    out [written] = 0;
    if (written > INT32_MAX)
        return -1;
    return (int) written;
}

int
zg_json_utf8_copy (const char *s, size_t length, char *out, size_t size)
{
    if ((!s && length) || (!out && size))
        return -1;
    const unsigned char *text = (const unsigned char *) s;
    //  Mostly ASCII from end to end (ids, hashes, URLs): one copy
    size_t pos = 0;
    while (length - pos >= 8 && (s_word (text + pos) & S_HIGHS) == 0)
        pos += 8;
    while (pos < length && text [pos] < 0x80)
        pos++;
    if (pos == length) {
        if (length > size || length > INT32_MAX)
            return -1;
        if (length)
            memcpy (out, text, length);
        return (int) length;
    }
    size_t written = 0;
    for (pos = 0; pos < length; ) {
        size_t sequence = s_utf8_sequence (text, length, pos);
        const unsigned char *bytes = sequence? text + pos: (const unsigned char *) "\xEF\xBF\xBD";
        size_t count = sequence? sequence: 3;
        if (written + count > size)
            return -1;
        memcpy (out + written, bytes, count);
        written += count;
        pos += sequence? sequence: 1;
    }
    if (written > INT32_MAX)
        return -1;
    return (int) written;
}


//  --------------------------------------------------------------------------
//  Self test. Checks stay on in release builds (NDEBUG): a failure prints
//  where and aborts.


//  Validates a copy in a buffer of exactly size bytes, so that the
//  sanitizers see any read past the end.
static bool
s_valid_exact (const char *text, size_t size, size_t *error_at)
{
    char *copy = malloc (size? size: 1);
    ZG_CHECK (copy);
    memcpy (copy, text, size);
    bool valid = zg_json_valid (copy, size, error_at);
    free (copy);
    return valid;
}

static bool
s_valid (const char *text)
{
    return s_valid_exact (text, strlen (text), NULL);
}

//  A tiny deterministic generator; tests must not depend on luck
static uint32_t
s_random (uint32_t *state)
{
    *state ^= *state << 13;
    *state ^= *state >> 17;
    *state ^= *state << 5;
    return *state;
}

static void
s_exercise_finders (const char *data, size_t size)
{
    zg_json_span_t span, inner;
    char text [256];
    int64_t integer;
    double real;
    const char *keys [] = { "model", "a", "stream_options", "usage", "x", "" };
    for (size_t index = 0; index < sizeof (keys) / sizeof (keys [0]); index++) {
        if (zg_json_find (data, size, keys [index], &span)) {
            ZG_CHECK (span.offset + span.length <= size);
            zg_json_string (data, &span, text, sizeof (text));
            zg_json_int64 (data, &span, &integer);
            zg_json_double (data, &span, &real);
            if (zg_json_find_in (data, size, &span, "include_usage", &inner))
                ZG_CHECK (inner.offset + inner.length <= size);
            size_t cursor = 0;
            zg_json_span_t key, value;
            int members = 0;
            while (members++ < 1000 && zg_json_member (data, size, &span, &cursor, &key, &value))
                ZG_CHECK (value.offset + value.length <= size && key.offset < value.offset);
        }
    }
}

//  zg_json_valid_find says what zg_json_valid and zg_json_find say
static void
s_check_valid_find (const char *data, size_t size)
{
    static const char *const keys [] = { "model", "a", "stream_options", "usage", "x", "",
                                         "choices", "stream" };
    const size_t count = sizeof (keys) / sizeof (keys [0]);
    zg_json_span_t spans [sizeof (keys) / sizeof (keys [0])];
    size_t where = 0, where_too = 0;
    bool valid = zg_json_valid (data, size, &where);
    ZG_CHECK (zg_json_valid_find (data, size, &where_too, keys, spans, count) == valid);
    for (size_t index = 0; index < count; index++) {
        if (!valid) {
            ZG_CHECK (where == where_too && spans [index].type == ZG_JSON_NONE);
            continue;
        }
        zg_json_span_t span;
        if (zg_json_find (data, size, keys [index], &span))
            ZG_CHECK (spans [index].type == span.type && spans [index].offset == span.offset
                   && spans [index].length == span.length
                   && spans [index].key_offset == span.key_offset);
        else
            ZG_CHECK (spans [index].type == ZG_JSON_NONE);
    }
}

void
zg_json_test (bool verbose)
{
    printf (" * zg_json: ");

    //  Strings are skipped eight bytes at a time: whatever needs a look
    //  of its own is seen at every position of a word
    {
        static const struct {
            const char *bytes;
            bool valid;
        } specials [] = {
            { "\\\"", true }, { "\\\\", true }, { "\\u00e9", true }, { "\xc3\xa9", true },
            { "\x01", false }, { "\x1f", false }, { "\x7f", true }, { "\xff", false },
            { "\"", false }, { " ", true }
        };
        char doc [128];
        for (size_t special = 0; special < sizeof (specials) / sizeof (specials [0]); special++)
            for (int before = 0; before < 20; before++)
                for (int after = 0; after < 12; after++) {
                    int size = snprintf (doc, sizeof (doc), "{\"k\":\"%.*s%s%.*s\",\"z\":1}",
                                         before, "aaaaaaaaaaaaaaaaaaaaaaaa",
                                         specials [special].bytes,
                                         after, "bbbbbbbbbbbbbbbbbbbbbbbbb");
                    ZG_CHECK (zg_json_valid (doc, (size_t) size, NULL) == specials [special].valid);
                    s_check_valid_find (doc, (size_t) size);
                    zg_json_span_t span;
                    if (specials [special].valid) {
                        ZG_CHECK (zg_json_find (doc, (size_t) size, "z", &span)
                               && span.type == ZG_JSON_NUMBER);
                        ZG_CHECK (zg_json_find (doc, (size_t) size, "k", &span)
                               && span.length == (size_t) (before + after + 2)
                                               + strlen (specials [special].bytes));
                    }
                }
        //  Two in one word: the first needs its look, whatever follows
        size_t count = sizeof (specials) / sizeof (specials [0]);
        for (size_t first = 0; first < count; first++)
            for (size_t second = 0; second < count; second++)
                for (int before = 0; before < 9; before++)
                    for (int gap = 0; gap < 4; gap++) {
                        int size = snprintf (doc, sizeof (doc),
                                             "{\"k\":\"%.*s%s%.*s%s bbbbbbbbb\",\"z\":1}",
                                             before, "aaaaaaaaaaaa", specials [first].bytes,
                                             gap, "ccc", specials [second].bytes);
                        ZG_CHECK (zg_json_valid (doc, (size_t) size, NULL)
                               == (specials [first].valid && specials [second].valid));
                        s_check_valid_find (doc, (size_t) size);
                    }
    }

    //  Quoting takes plain runs eight bytes at a time: what needs an escape
    //  (or a look at its UTF-8) is seen at every position of a word
    {
        static const char *const specials [] = {
            "\"", "\\", "\n", "\x01", "\x1f", "\x7f", "\xc3\xa9", "\xe2\x82\xac", "\xff", " "
        };
        char text [64], literal [400], wrapped [420], back [64];
        for (size_t special = 0; special < sizeof (specials) / sizeof (specials [0]); special++)
            for (int before = 0; before < 20; before++)
                for (int after = 0; after < 12; after++) {
                    snprintf (text, sizeof (text), "%.*s%s%.*s", before, "aaaaaaaaaaaaaaaaaaaaaaaa",
                              specials [special], after, "bbbbbbbbbbbbbbbbbbbbbbbbb");
                    int length = zg_json_quote (text, literal, sizeof (literal));
                    ZG_CHECK (length > 0 && (size_t) length == strlen (literal));
                    int size = snprintf (wrapped, sizeof (wrapped), "{\"k\":%s}", literal);
                    zg_json_span_t span;
                    ZG_CHECK (zg_json_valid (wrapped, (size_t) size, NULL)
                           && zg_json_find (wrapped, (size_t) size, "k", &span)
                           && zg_json_string (wrapped, &span, back, sizeof (back)) >= 0);
                    if (strcmp (specials [special], "\xff") == 0)
                        ZG_CHECK (strstr (literal, "\\ufffd") && strlen (back) == strlen (text) + 2);
                    else
                        ZG_CHECK (strcmp (back, text) == 0);
                }
    }

    //  One pass, several keys: first member of a name wins, nested members
    //  and non-objects are not looked into
    {
        const char *doc = "{\"stream\":true, \"o\":{\"model\":\"inner\"}, \"model\" : \"gpt\", "
                          "\"mo\\u0064el\":\"escaped\", \"stream_options\":{\"include_usage\":false}}";
        static const char *const keys [] = { "model", "stream", "stream_options", "absent" };
        zg_json_span_t spans [4];
        ZG_CHECK (zg_json_valid_find (doc, strlen (doc), NULL, keys, spans, 4));
        ZG_CHECK (spans [0].type == ZG_JSON_STRING
               && strncmp (doc + spans [0].offset, "\"gpt\"", 5) == 0);
        ZG_CHECK (spans [1].type == ZG_JSON_TRUE && spans [1].length == 4);
        ZG_CHECK (spans [2].type == ZG_JSON_OBJECT && doc [spans [2].offset + spans [2].length - 1] == '}');
        ZG_CHECK (spans [3].type == ZG_JSON_NONE);
        s_check_valid_find (doc, strlen (doc));
        ZG_CHECK (zg_json_valid_find ("[{\"model\":1}]", 13, NULL, keys, spans, 1)
               && spans [0].type == ZG_JSON_NONE);
        ZG_CHECK (!zg_json_valid_find ("{\"model\":1", 10, NULL, keys, spans, 1)
               && spans [0].type == ZG_JSON_NONE);
        ZG_CHECK (zg_json_valid_find ("{\"model\":{}}", 12, NULL, keys, spans, 1)
               && spans [0].type == ZG_JSON_OBJECT && spans [0].length == 2);
    }

    //  Array elements, nested values skipped whole
    {
        const char *doc = "{\"a\": [ \"x\" , {\"b\": [1,2]}, [], 3.5 ], \"e\": []}";
        zg_json_span_t array, element, empty;
        ZG_CHECK (zg_json_find (doc, strlen (doc), "a", &array));
        size_t cursor = 0;
        zg_json_type_t expected [] = { ZG_JSON_STRING, ZG_JSON_OBJECT, ZG_JSON_ARRAY, ZG_JSON_NUMBER };
        int count = 0;
        while (zg_json_element (doc, strlen (doc), &array, &cursor, &element)) {
            ZG_CHECK (count < 4 && element.type == expected [count]);
            count++;
        }
        ZG_CHECK (count == 4 && element.type == ZG_JSON_NONE);
        ZG_CHECK (zg_json_find (doc, strlen (doc), "e", &empty));
        cursor = 0;
        ZG_CHECK (!zg_json_element (doc, strlen (doc), &empty, &cursor, &element));
        cursor = 0;
        ZG_CHECK (!zg_json_element (doc, strlen (doc), &element, &cursor, &element));
    }

    //  Valid documents
    const char *valid [] = {
        "{}", "[]", "0", "-0", "1", "-1", "0.5", "-0.5e10", "1E+2", "1e-2", "123456789012345678901234567890",
        "true", "false", "null", "\"\"", "\"a\"", " \t\r\n{ } \n",
        "{\"a\":1}", "{\"a\" : [1, 2, {\"b\": null}], \"c\": \"d\"}",
        "[[[[]]]]", "[1,\"2\",true,false,null,{},[]]",
        "\"\\\"\\\\\\/\\b\\f\\n\\r\\t\"", "\"\\u0041\\u00e9\\u20AC\"",
        "\"\\ud83d\\ude00\"",                     //  a surrogate pair
        "\"\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80\"", //  raw UTF-8: é € 😀
        "{\"\":0}", "{\"a\":{\"a\":{\"a\":{}}}}",
        "\"\x7f\"",
    };
    for (size_t index = 0; index < sizeof (valid) / sizeof (valid [0]); index++) {
        if (!s_valid (valid [index]))
            fprintf (stderr, "should be valid: %s\n", valid [index]);
        ZG_CHECK (s_valid (valid [index]));
    }

    //  Invalid documents
    const char *invalid [] = {
        "", " ", "1.", "01", "-", "-01", "+1", ".5", "1e", "1e+", "0x10", "1.e5", "--1", "NaN", "Infinity",
        "tru", "truex", "nul", "True", "[1,]", "{\"a\":1,}", "{,}", "[,1]", "{\"a\"}", "{\"a\" 1}",
        "{a:1}", "{'a':1}", "{\"a\":1 \"b\":2}", "[1 2]", "{\"a\":1]", "[1}", "[", "]", "{", "}",
        "\"abc", "\"abc\\\"", "\"\\x\"", "\"\\u12\"", "\"\\u12g4\"", "\"\\ud800\"", "\"\\udc00\"",
        "\"\\ud800\\u0041\"", "\"\\ud800x\"", "\"\\ude00\\ud83d\"", "\"tab\there\"", "\"new\nline\"",
        "{} {}", "1 2", "{}x", "[]]", "\"a\"\"b\"",
        "\"\xc0\xaf\"", "\"\xed\xa0\x80\"", "\"\xf4\x90\x80\x80\"", "\"\xff\"", "\"\xe2\x82\"",
        "\"\x80\"", "\xef\xbb\xbf{}",
    };
    for (size_t index = 0; index < sizeof (invalid) / sizeof (invalid [0]); index++) {
        if (s_valid (invalid [index]))
            fprintf (stderr, "should be invalid: %s\n", invalid [index]);
        ZG_CHECK (!s_valid (invalid [index]));
    }

    //  NUL bytes, inside and outside strings
    ZG_CHECK (!s_valid_exact ("{}\0", 3, NULL));
    ZG_CHECK (!s_valid_exact ("\"a\0b\"", 5, NULL));
    ZG_CHECK (!s_valid_exact ("[1,\0 2]", 7, NULL));
    ZG_CHECK (!zg_json_valid (NULL, 1, NULL));

    //  Where the first bad byte is
    size_t error_at = 0;
    ZG_CHECK (!s_valid_exact ("{\"a\":1,}", 8, &error_at));
    ZG_CHECK (error_at == 7);
    ZG_CHECK (!s_valid_exact ("[1, 2", 5, &error_at));
    ZG_CHECK (error_at == 5);
    ZG_CHECK (!s_valid_exact ("{}  x", 5, &error_at));
    ZG_CHECK (error_at == 4);

    //  Depth: ZG_JSON_MAX_DEPTH nested containers are fine, one more is not
    char deep [2 * (ZG_JSON_MAX_DEPTH + 1) + 1];
    for (int depth = ZG_JSON_MAX_DEPTH; depth <= ZG_JSON_MAX_DEPTH + 1; depth++) {
        memset (deep, '[', depth);
        memset (deep + depth, ']', depth);
        ZG_CHECK (s_valid_exact (deep, 2 * depth, NULL) == (depth <= ZG_JSON_MAX_DEPTH));
    }
    {
        //  Deep objects too, and the failure is at the 65th opener
        char objects [8 * (ZG_JSON_MAX_DEPTH + 1) + 1];
        size_t length = 0;
        for (int depth = 0; depth < ZG_JSON_MAX_DEPTH + 1; depth++)
            length += sprintf (objects + length, "{\"a\":");
        length += sprintf (objects + length, "1");
        for (int depth = 0; depth < ZG_JSON_MAX_DEPTH + 1; depth++)
            objects [length++] = '}';
        ZG_CHECK (!s_valid_exact (objects, length, &error_at));
        ZG_CHECK (error_at == 5 * ZG_JSON_MAX_DEPTH);
    }

    //  Every proper prefix of a valid document is invalid
    const char *document =
        "{\"model\": \"gpt-4o\", \"messages\": [{\"role\": \"user\", \"content\": \"h\\u00e9llo \\ud83d\\ude00 \\\"q\\\"\"}],"
        " \"stream\": true, \"temperature\": -0.5e-1, \"stream_options\": {\"include_usage\": false}, \"n\": null}";
    size_t document_size = strlen (document);
    ZG_CHECK (s_valid_exact (document, document_size, NULL));
    for (size_t prefix = 0; prefix < document_size; prefix++)
        ZG_CHECK (!s_valid_exact (document, prefix, NULL));

    //  Finding top-level members
    zg_json_span_t span, inner;
    char text [128];
    ZG_CHECK (zg_json_find (document, document_size, "model", &span));
    ZG_CHECK (span.type == ZG_JSON_STRING);
    ZG_CHECK (span.length == 8 && memcmp (document + span.offset, "\"gpt-4o\"", 8) == 0);
    ZG_CHECK (memcmp (document + span.key_offset, "\"model\"", 7) == 0);
    ZG_CHECK (zg_json_string (document, &span, text, sizeof (text)) == 6);
    ZG_CHECK (strcmp (text, "gpt-4o") == 0);
    ZG_CHECK (zg_json_string (document, &span, text, 7) == 6);
    ZG_CHECK (zg_json_string (document, &span, text, 6) == -1);       //  no room for the NUL

    ZG_CHECK (zg_json_find (document, document_size, "stream", &span));
    ZG_CHECK (span.type == ZG_JSON_TRUE && span.length == 4);
    ZG_CHECK (zg_json_find (document, document_size, "n", &span));
    ZG_CHECK (span.type == ZG_JSON_NULL);
    ZG_CHECK (zg_json_find (document, document_size, "messages", &span));
    ZG_CHECK (span.type == ZG_JSON_ARRAY && document [span.offset + span.length - 1] == ']');
    ZG_CHECK (!zg_json_find_in (document, document_size, &span, "role", &inner));   //  not an object
    ZG_CHECK (inner.type == ZG_JSON_NONE);

    //  Keys inside nested objects and inside strings are not members
    ZG_CHECK (!zg_json_find (document, document_size, "role", &span));
    ZG_CHECK (span.type == ZG_JSON_NONE);
    ZG_CHECK (!zg_json_find (document, document_size, "content", &span));
    ZG_CHECK (!zg_json_find (document, document_size, "include_usage", &span));
    ZG_CHECK (!zg_json_find (document, document_size, "q", &span));
    ZG_CHECK (!zg_json_find (document, document_size, "gpt-4o", &span));
    const char *tricky = "{\"x\": \"\\\"model\\\": 1\", \"y\": {\"model\": 2}, \"z\": [\"model\", {\"model\": 3}]}";
    ZG_CHECK (!zg_json_find (tricky, strlen (tricky), "model", &span));
    ZG_CHECK (zg_json_find (tricky, strlen (tricky), "y", &span));
    ZG_CHECK (zg_json_find_in (tricky, strlen (tricky), &span, "model", &inner));
    int64_t integer = 0;
    ZG_CHECK (zg_json_int64 (tricky, &inner, &integer) && integer == 2);

    //  Nested lookup
    ZG_CHECK (zg_json_find (document, document_size, "stream_options", &span));
    ZG_CHECK (span.type == ZG_JSON_OBJECT);
    ZG_CHECK (zg_json_find_in (document, document_size, &span, "include_usage", &inner));
    ZG_CHECK (inner.type == ZG_JSON_FALSE);
    ZG_CHECK (memcmp (document + inner.offset, "false", 5) == 0);
    ZG_CHECK (memcmp (document + inner.key_offset, "\"include_usage\"", 15) == 0);
    ZG_CHECK (!zg_json_find_in (document, document_size, &span, "model", &inner));

    //  Duplicate keys: the first one wins
    const char *duplicate = "{\"model\": \"first\", \"model\": \"second\"}";
    ZG_CHECK (zg_json_find (duplicate, strlen (duplicate), "model", &span));
    ZG_CHECK (zg_json_string (duplicate, &span, text, sizeof (text)) == 5 && strcmp (text, "first") == 0);

    //  Escaped keys match their unescaped form; prefixes do not match
    const char *escaped = "  {\"mod\\u0065l\": 1, \"a\\\"b\": 2, \"modelx\": 3, \"\\u00e9\": 4}  ";
    ZG_CHECK (zg_json_find (escaped, strlen (escaped), "model", &span));
    ZG_CHECK (zg_json_int64 (escaped, &span, &integer) && integer == 1);
    ZG_CHECK (zg_json_find (escaped, strlen (escaped), "a\"b", &span));
    ZG_CHECK (zg_json_int64 (escaped, &span, &integer) && integer == 2);
    ZG_CHECK (zg_json_find (escaped, strlen (escaped), "\xc3\xa9", &span));
    ZG_CHECK (!zg_json_find (escaped, strlen (escaped), "mode", &span));
    ZG_CHECK (!zg_json_find (escaped, strlen (escaped), "modelxy", &span));
    ZG_CHECK (!zg_json_find ("[1]", 3, "a", &span));
    ZG_CHECK (!zg_json_find ("{}", 2, "a", &span));
    ZG_CHECK (!zg_json_find ("\"a\"", 3, "a", &span));

    //  Unescaping
    const char *strings = "{\"s\": \"a\\n\\t\\\"\\\\\\/\\u0041\\u00e9\\u20ac\\ud83d\\ude00\", \"e\": \"\"}";
    ZG_CHECK (zg_json_find (strings, strlen (strings), "s", &span));
    const char *expected = "a\n\t\"\\/A\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80";
    ZG_CHECK (zg_json_string (strings, &span, text, sizeof (text)) == (int) strlen (expected));
    ZG_CHECK (strcmp (text, expected) == 0);
    ZG_CHECK (zg_json_string (strings, &span, text, strlen (expected)) == -1);
    ZG_CHECK (zg_json_find (strings, strlen (strings), "e", &span));
    ZG_CHECK (zg_json_string (strings, &span, text, 1) == 0 && text [0] == 0);
    ZG_CHECK (zg_json_find (strings, strlen (strings), "s", &span));
    span.type = ZG_JSON_NUMBER;
    ZG_CHECK (zg_json_string (strings, &span, text, sizeof (text)) == -1);

    //  Numbers
    const char *numbers = "{\"i\": 42, \"n\": -17, \"d\": 2.75, \"nd\": -2.75, \"e\": 1.5e3, \"big\": 9223372036854775807,"
                          " \"min\": -9223372036854775808, \"over\": 9223372036854775808, \"huge\": 1e400,"
                          " \"s\": \"1\", \"z\": -0}";
    size_t numbers_size = strlen (numbers);
    ZG_CHECK (s_valid_exact (numbers, numbers_size, NULL));
    double real = 0;
    ZG_CHECK (zg_json_find (numbers, numbers_size, "i", &span) && zg_json_int64 (numbers, &span, &integer) && integer == 42);
    ZG_CHECK (zg_json_double (numbers, &span, &real) && real == 42.0);
    ZG_CHECK (zg_json_find (numbers, numbers_size, "n", &span) && zg_json_int64 (numbers, &span, &integer) && integer == -17);
    ZG_CHECK (zg_json_find (numbers, numbers_size, "d", &span) && zg_json_int64 (numbers, &span, &integer) && integer == 2);
    ZG_CHECK (zg_json_double (numbers, &span, &real) && real == 2.75);
    ZG_CHECK (zg_json_find (numbers, numbers_size, "nd", &span) && zg_json_int64 (numbers, &span, &integer) && integer == -2);
    ZG_CHECK (zg_json_find (numbers, numbers_size, "e", &span) && zg_json_int64 (numbers, &span, &integer) && integer == 1500);
    ZG_CHECK (zg_json_find (numbers, numbers_size, "big", &span) && zg_json_int64 (numbers, &span, &integer) && integer == INT64_MAX);
    ZG_CHECK (zg_json_find (numbers, numbers_size, "min", &span) && zg_json_int64 (numbers, &span, &integer) && integer == INT64_MIN);
    ZG_CHECK (zg_json_find (numbers, numbers_size, "over", &span) && !zg_json_int64 (numbers, &span, &integer));
    ZG_CHECK (zg_json_double (numbers, &span, &real) && real > 9.2e18);
    ZG_CHECK (zg_json_find (numbers, numbers_size, "huge", &span) && !zg_json_int64 (numbers, &span, &integer));
    ZG_CHECK (!zg_json_double (numbers, &span, &real));
    ZG_CHECK (zg_json_find (numbers, numbers_size, "s", &span) && !zg_json_int64 (numbers, &span, &integer));
    ZG_CHECK (!zg_json_double (numbers, &span, &real));
    ZG_CHECK (zg_json_find (numbers, numbers_size, "z", &span) && zg_json_int64 (numbers, &span, &integer) && integer == 0);
    //  A number that ends the buffer, with no terminator after it
    zg_json_span_t bare = { ZG_JSON_NUMBER, 0, 3, 0 };
    char *unterminated = malloc (3);
    ZG_CHECK (unterminated);
    memcpy (unterminated, "125", 3);
    ZG_CHECK (zg_json_int64 (unterminated, &bare, &integer) && integer == 125);
    ZG_CHECK (zg_json_double (unterminated, &bare, &real) && real == 125.0);
    free (unterminated);

    //  Quoting
    char quoted [64];
    ZG_CHECK (zg_json_quote ("plain", quoted, sizeof (quoted)) == 7 && strcmp (quoted, "\"plain\"") == 0);
    ZG_CHECK (zg_json_quote ("", quoted, sizeof (quoted)) == 2 && strcmp (quoted, "\"\"") == 0);
    int length = zg_json_quote ("a\"b\\c\nd\x01\x1f\xc3\xa9", quoted, sizeof (quoted));
    ZG_CHECK (strcmp (quoted, "\"a\\\"b\\\\c\\nd\\u0001\\u001f\xc3\xa9\"") == 0);
    ZG_CHECK (length == (int) strlen (quoted));
    ZG_CHECK (s_valid (quoted));
    ZG_CHECK (zg_json_quote ("bad \xff utf8 \xc3", quoted, sizeof (quoted)) > 0);
    ZG_CHECK (strcmp (quoted, "\"bad \\ufffd utf8 \\ufffd\"") == 0);
    ZG_CHECK (s_valid (quoted));
    ZG_CHECK (zg_json_quote_n ("ab\0cdef", 4, quoted, sizeof (quoted)) == 11
           && strcmp (quoted, "\"ab\\u0000c\"") == 0);
    ZG_CHECK (zg_json_quote_n ("abcdef", 3, quoted, sizeof (quoted)) == 5
           && strcmp (quoted, "\"abc\"") == 0);
    ZG_CHECK (zg_json_quote ("abc", quoted, 5) == -1);
    ZG_CHECK (zg_json_quote ("abc", quoted, 6) == 5);
    ZG_CHECK (zg_json_quote ("\x01", quoted, 8) == -1);
    ZG_CHECK (zg_json_quote ("\x01", quoted, 9) == 8);
    {
        //  quote and unescape are inverses
        const char *original = "tab\there \"quoted\" back\\slash \x02 caf\xc3\xa9";
        char literal [128], wrapped [160], decoded [128];
        ZG_CHECK (zg_json_quote (original, literal, sizeof (literal)) > 0);
        snprintf (wrapped, sizeof (wrapped), "{\"k\":%s}", literal);
        ZG_CHECK (s_valid (wrapped));
        ZG_CHECK (zg_json_find (wrapped, strlen (wrapped), "k", &span));
        ZG_CHECK (zg_json_string (wrapped, &span, decoded, sizeof (decoded)) == (int) strlen (original));
        ZG_CHECK (strcmp (decoded, original) == 0);
    }
    {
        //  zg_json_utf8_copy gives what quote_n's literal reads back as:
        //  ASCII, valid sequences of every length, every kind of invalid
        //  byte (stray continuation, overlong, surrogate, beyond U+10FFFF,
        //  cut short), then random bytes, each at every length
        char copy [64];
        ZG_CHECK (zg_json_utf8_copy ("plain ascii, long enough", 24, copy, sizeof (copy)) == 24
               && memcmp (copy, "plain ascii, long enough", 24) == 0);
        ZG_CHECK (zg_json_utf8_copy ("abc", 3, copy, 2) == -1);
        ZG_CHECK (zg_json_utf8_copy ("abc", 3, copy, 3) == 3);
        ZG_CHECK (zg_json_utf8_copy ("", 0, copy, 0) == 0);
        ZG_CHECK (zg_json_utf8_copy ("a\xff", 2, copy, 3) == -1);
        ZG_CHECK (zg_json_utf8_copy ("a\xff", 2, copy, 4) == 4
               && memcmp (copy, "a\xef\xbf\xbd", 4) == 0);
        const char *samples [] = {
            "caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80 ok", "\x80 stray", "\xc0\xaf overlong",
            "\xe0\x80\xaf overlong", "\xed\xa0\x80 surrogate", "\xf4\x90\x80\x80 too high",
            "cut \xe2\x82", "cut \xf0\x9f\x98", "\xc3", "mixed \xc3\xa9\xff\xfe\xc3\xa9 end"
        };
        unsigned int seed = 12345;
        char random [40];
        for (size_t sample = 0; sample < sizeof (samples) / sizeof (samples [0]) + 200; sample++) {
            const char *text = sample < sizeof (samples) / sizeof (samples [0])? samples [sample]: random;
            size_t full = text == random? sizeof (random): strlen (text);
            if (text == random)
                for (size_t index = 0; index < full; index++) {
                    seed = seed * 1103515245 + 12345;
                    random [index] = (char) ((seed >> 16) & 0xff? (seed >> 16) & 0xff: 'z');
                }
            for (size_t cut = 0; cut <= full; cut++) {
                char literal [300], wrapped [320], decoded [160], exact [160];
                ZG_CHECK (zg_json_quote_n (text, cut, literal, sizeof (literal)) > 0);
                snprintf (wrapped, sizeof (wrapped), "{\"k\":%s}", literal);
                ZG_CHECK (zg_json_find (wrapped, strlen (wrapped), "k", &span));
                int decoded_length = zg_json_string (wrapped, &span, decoded, sizeof (decoded));
                int copied = zg_json_utf8_copy (text, cut, exact, sizeof (exact));
                ZG_CHECK (copied == decoded_length && memcmp (exact, decoded, (size_t) copied) == 0);
                ZG_CHECK (zg_json_utf8_copy (text, cut, exact, (size_t) copied) == copied);
                ZG_CHECK (copied == 0 || zg_json_utf8_copy (text, cut, exact, (size_t) copied - 1) == -1);
            }
        }
    }

    {
        //  Members in order, nested ones skipped, an empty object has none
        const char *object = " { \"a\" : 1 , \"b\":{\"c\":[1,{\"d\":2}]},\"e\\\"\":\"x,}\" } ";
        ZG_CHECK (s_valid (object));
        zg_json_span_t whole = { ZG_JSON_OBJECT, 1, strlen (object) - 2, 0 }, key, value;
        size_t cursor = 0;
        char name [16];
        ZG_CHECK (zg_json_member (object, strlen (object), &whole, &cursor, &key, &value));
        ZG_CHECK (zg_json_string (object, &key, name, sizeof (name)) == 1 && strcmp (name, "a") == 0);
        ZG_CHECK (value.type == ZG_JSON_NUMBER && value.length == 1);
        ZG_CHECK (zg_json_member (object, strlen (object), &whole, &cursor, &key, &value));
        ZG_CHECK (value.type == ZG_JSON_OBJECT && object [value.offset + value.length - 1] == '}');
        ZG_CHECK (zg_json_member (object, strlen (object), &whole, &cursor, &key, &value));
        ZG_CHECK (zg_json_string (object, &key, name, sizeof (name)) == 2 && strcmp (name, "e\"") == 0);
        ZG_CHECK (value.type == ZG_JSON_STRING && value.length == 5);
        ZG_CHECK (!zg_json_member (object, strlen (object), &whole, &cursor, &key, &value));
        ZG_CHECK (key.type == ZG_JSON_NONE && value.type == ZG_JSON_NONE);
        const char *empty = "{ }";
        zg_json_span_t none = { ZG_JSON_OBJECT, 0, 3, 0 };
        cursor = 0;
        ZG_CHECK (!zg_json_member (empty, 3, &none, &cursor, &key, &value));
        zg_json_span_t array = { ZG_JSON_ARRAY, 0, 3, 0 };
        cursor = 0;
        ZG_CHECK (!zg_json_member ("[1]", 3, &array, &cursor, &key, &value));
    }

    //  Random byte flips: never a crash or a read out of bounds, and the
    //  finders stay inside the buffer on whatever the validator accepts.
    uint32_t state = 0x2545F491;
    char *mutant = malloc (document_size);
    ZG_CHECK (mutant);
    for (int round = 0; round < 20000; round++) {
        memcpy (mutant, document, document_size);
        int flips = 1 + s_random (&state) % 4;
        for (int flip = 0; flip < flips; flip++) {
            size_t where = s_random (&state) % document_size;
            if (s_random (&state) % 2)
                mutant [where] = (char) (s_random (&state) & 0xFF);
            else
                mutant [where] ^= (char) (1 << (s_random (&state) % 8));
        }
        size_t size = s_random (&state) % 8 == 0? s_random (&state) % document_size: document_size;
        size_t where;
        if (zg_json_valid (mutant, size, &where))
            s_exercise_finders (mutant, size);
        else
            ZG_CHECK (where <= size);
        s_check_valid_find (mutant, size);
        //  The finders must also stay in bounds on what was not validated
        s_exercise_finders (mutant, size);
    }
    free (mutant);

    if (verbose)
        printf ("(%d valid, %d invalid) ", (int) (sizeof (valid) / sizeof (valid [0])),
                (int) (sizeof (invalid) / sizeof (invalid [0])));
    printf ("OK\n");
}
