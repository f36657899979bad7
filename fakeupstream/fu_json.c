#include "fu_json.h"
#include "fu_render.h"

#include <string.h>

//  Deep enough for any real request; bounds the recursion on hostile input.
#define MAX_DEPTH 128

typedef struct {
    const char *at;
    const char *end;
    const char *error;
} scanner_t;

static void
s_skip_ws (scanner_t *self)
{
    while (self->at < self->end
       && (*self->at == ' ' || *self->at == '\t' || *self->at == '\n' || *self->at == '\r'))
        self->at++;
}

static int
s_fail (scanner_t *self, const char *why)
{
    if (!self->error)
        self->error = why;
    return -1;
}

static bool
s_is_hex (char c)
{
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
}

//  At an opening quote; leaves `at` after the closing one.
static int
s_skip_string (scanner_t *self)
{
    self->at++;
    while (self->at < self->end) {
        unsigned char c = (unsigned char) *self->at;
        if (c == '"') {
            self->at++;
            return 0;
        }
        if (c < 0x20)
            return s_fail (self, "control character in JSON string");
        if (c == '\\') {
            if (self->end - self->at < 2)
                break;
            char escaped = self->at [1];
            if (escaped == 'u') {
                if (self->end - self->at < 6)
                    break;
                for (int i = 2; i < 6; i++)
                    if (!s_is_hex (self->at [i]))
                        return s_fail (self, "bad \\u escape in JSON string");
                self->at += 6;
                continue;
            }
            if (!strchr ("\"\\/bfnrt", escaped) || escaped == 0)
                return s_fail (self, "bad escape in JSON string");
            self->at += 2;
            continue;
        }
        self->at++;
    }
    return s_fail (self, "unterminated JSON string");
}

static int
s_skip_number (scanner_t *self)
{
    const char *p = self->at;
    const char *end = self->end;
    if (p < end && *p == '-')
        p++;
    if (p >= end || *p < '0' || *p > '9')
        return s_fail (self, "malformed JSON number");
    if (*p == '0')
        p++;
    else
        while (p < end && *p >= '0' && *p <= '9')
            p++;
    if (p < end && *p == '.') {
        p++;
        if (p >= end || *p < '0' || *p > '9')
            return s_fail (self, "malformed JSON number");
        while (p < end && *p >= '0' && *p <= '9')
            p++;
    }
    if (p < end && (*p == 'e' || *p == 'E')) {
        p++;
        if (p < end && (*p == '+' || *p == '-'))
            p++;
        if (p >= end || *p < '0' || *p > '9')
            return s_fail (self, "malformed JSON number");
        while (p < end && *p >= '0' && *p <= '9')
            p++;
    }
    self->at = p;
    return 0;
}

static int
s_skip_literal (scanner_t *self, const char *word)
{
    size_t size = strlen (word);
    if ((size_t) (self->end - self->at) < size || memcmp (self->at, word, size) != 0)
        return s_fail (self, "invalid JSON");
    self->at += size;
    return 0;
}

static int s_skip_value (scanner_t *self, int depth);

//  Calls visit for each member of the object at `at` (which is '{').
typedef int (member_fn) (scanner_t *self, fu_json_span_t key, void *arg);

static int
s_walk_object (scanner_t *self, int depth, member_fn *visit, void *arg)
{
    if (depth > MAX_DEPTH)
        return s_fail (self, "JSON nested too deeply");
    self->at++;
    s_skip_ws (self);
    if (self->at < self->end && *self->at == '}') {
        self->at++;
        return 0;
    }
    while (true) {
        s_skip_ws (self);
        if (self->at >= self->end || *self->at != '"')
            return s_fail (self, "expected a JSON object key");
        fu_json_span_t key = { self->at + 1, 0 };
        if (s_skip_string (self))
            return -1;
        key.size = (size_t) (self->at - 1 - key.at);
        s_skip_ws (self);
        if (self->at >= self->end || *self->at != ':')
            return s_fail (self, "expected ':' in JSON object");
        self->at++;
        s_skip_ws (self);
        if (visit) {
            if (visit (self, key, arg))
                return -1;
        }
        else
        if (s_skip_value (self, depth + 1))
            return -1;
        s_skip_ws (self);
        if (self->at >= self->end)
            return s_fail (self, "unterminated JSON object");
        if (*self->at == '}') {
            self->at++;
            return 0;
        }
        if (*self->at != ',')
            return s_fail (self, "expected ',' or '}' in JSON object");
        self->at++;
    }
}

//  Skips the array at `at`; counts its elements and whether the first is a number.
static int
s_walk_array (scanner_t *self, int depth, long *count, bool *first_is_number)
{
    if (depth > MAX_DEPTH)
        return s_fail (self, "JSON nested too deeply");
    self->at++;
    long elements = 0;
    s_skip_ws (self);
    if (self->at < self->end && *self->at == ']') {
        self->at++;
    }
    else
        while (true) {
            s_skip_ws (self);
            if (elements == 0 && first_is_number && self->at < self->end)
                *first_is_number = *self->at == '-' || (*self->at >= '0' && *self->at <= '9');
            if (s_skip_value (self, depth + 1))
                return -1;
            elements++;
            s_skip_ws (self);
            if (self->at >= self->end)
                return s_fail (self, "unterminated JSON array");
            if (*self->at == ']') {
                self->at++;
                break;
            }
            if (*self->at != ',')
                return s_fail (self, "expected ',' or ']' in JSON array");
            self->at++;
        }
    if (count)
        *count = elements;
    return 0;
}

static int
s_skip_value (scanner_t *self, int depth)
{
    s_skip_ws (self);
    if (self->at >= self->end)
        return s_fail (self, "expected a JSON value");
    switch (*self->at) {
        case '{': return s_walk_object (self, depth, NULL, NULL);
        case '[': return s_walk_array (self, depth, NULL, NULL);
        case '"': return s_skip_string (self);
        case 't': return s_skip_literal (self, "true");
        case 'f': return s_skip_literal (self, "false");
        case 'n': return s_skip_literal (self, "null");
        default:  return s_skip_number (self);
    }
}

static bool
s_key_is (fu_json_span_t key, const char *name)
{
    size_t size = strlen (name);
    return key.size == size && memcmp (key.at, name, size) == 0;
}

//  An integer, maybe negative, of at most `max` in magnitude.
static int
s_read_integer (scanner_t *self, long long max, long long *value, const char *error)
{
    const char *start = self->at;
    if (s_skip_value (self, 1))
        return -1;
    size_t size = (size_t) (self->at - start);
    size_t at = size && start [0] == '-' ? 1 : 0;
    if (size == at || size - at > 15)
        return s_fail (self, error);
    long long number = 0;
    for (size_t i = at; i < size; i++) {
        if (start [i] < '0' || start [i] > '9')
            return s_fail (self, error);
        number = number * 10 + (start [i] - '0');
    }
    if (number > max)
        return s_fail (self, error);
    *value = at ? -number : number;
    return 0;
}

//  A non-negative integer value no larger than `max`.
static int
s_read_count (scanner_t *self, long max, long *value, const char *error)
{
    long long number;
    if (s_read_integer (self, max, &number, error))
        return -1;
    if (number < 0)
        return s_fail (self, error);
    *value = (long) number;
    return 0;
}

static int
s_visit_fake (scanner_t *self, fu_json_span_t key, void *arg)
{
    fu_json_fake_t *fake = arg;
    if (s_key_is (key, "latency_ms"))
        return s_read_count (self, 3600000, &fake->latency_ms,
                             "fake.latency_ms must be an integer from 0 to 3600000");
    if (s_key_is (key, "chunks"))
        return s_read_count (self, 100000, &fake->chunks,
                             "fake.chunks must be an integer from 0 to 100000");
    if (s_key_is (key, "chunk_interval_ms"))
        return s_read_count (self, 3600000, &fake->chunk_interval_ms,
                             "fake.chunk_interval_ms must be an integer from 0 to 3600000");
    if (s_key_is (key, "status"))
        return s_read_count (self, 999, &fake->status,
                             "fake.status must be an integer HTTP status");
    if (s_key_is (key, "header_bytes"))
        return s_read_count (self, 65536, &fake->header_bytes,
                             "fake.header_bytes must be an integer from 0 to 65536");
    if (s_key_is (key, "prompt_tokens")) {
        fake->has_prompt_tokens = true;
        return s_read_integer (self, FU_PROMPT_TOKENS_LIMIT, &fake->prompt_tokens,
                               "fake.prompt_tokens must be an integer of at most 15 digits");
    }
    if (s_key_is (key, "fault")) {
        if (self->at < self->end && *self->at == 'n')
            return s_skip_literal (self, "null");
        if (self->at >= self->end || *self->at != '"')
            return s_fail (self, "fake.fault must be a string");
        const char *start = self->at;
        if (s_skip_string (self))
            return -1;
        fake->fault.at = start + 1;
        fake->fault.size = (size_t) (self->at - start - 2);
        return 0;
    }
    return s_skip_value (self, 2);
}

static int
s_visit_stream_options (scanner_t *self, fu_json_span_t key, void *arg)
{
    fu_json_llm_body_t *out = arg;
    if (s_key_is (key, "include_usage") && self->at < self->end && *self->at == 't') {
        out->include_usage = true;
        return s_skip_literal (self, "true");
    }
    return s_skip_value (self, 2);
}

static int
s_visit_top (scanner_t *self, fu_json_span_t key, void *arg)
{
    fu_json_llm_body_t *out = arg;
    bool at_object = self->at < self->end && *self->at == '{';
    if (s_key_is (key, "model")) {
        const char *start = self->at;
        if (self->at >= self->end || *self->at != '"')
            return s_fail (self, "model must be a string");
        if (s_skip_string (self))
            return -1;
        out->model.at = start;
        out->model.size = (size_t) (self->at - start);
        return 0;
    }
    if (s_key_is (key, "stream") && self->at < self->end && *self->at == 't') {
        out->stream = true;
        return s_skip_literal (self, "true");
    }
    if (s_key_is (key, "stream") && self->at < self->end && *self->at == 'f')
        out->stream = false;
    if (s_key_is (key, "stream_options") && at_object)
        return s_walk_object (self, 1, s_visit_stream_options, out);
    if (s_key_is (key, "fake") && at_object)
        return s_walk_object (self, 1, s_visit_fake, &out->fake);
    if (s_key_is (key, "input")) {
        out->has_input = true;
        if (self->at < self->end && *self->at == '[') {
            bool tokens = false;
            if (s_walk_array (self, 1, &out->input_count, &tokens))
                return -1;
            //  One list of token ids is one input.
            if (tokens)
                out->input_count = 1;
            return 0;
        }
        if (self->at < self->end && *self->at == '"') {
            out->input_count = 1;
            return s_skip_string (self);
        }
        return s_fail (self, "input must be a string or an array");
    }
    return s_skip_value (self, 1);
}

int
fu_json_parse_llm_body (const char *body, size_t size, fu_json_llm_body_t *out,
                        const char **error)
{
    memset (out, 0, sizeof *out);
    out->fake.latency_ms = out->fake.chunks = out->fake.chunk_interval_ms = -1;
    out->fake.status = out->fake.header_bytes = -1;
    scanner_t scanner = { body, body + size, NULL };
    s_skip_ws (&scanner);
    if (scanner.at >= scanner.end || *scanner.at != '{') {
        *error = size ? "request body must be a JSON object" : "request body is empty";
        return -1;
    }
    if (s_walk_object (&scanner, 0, s_visit_top, out)) {
        *error = scanner.error ? scanner.error : "invalid JSON";
        return -1;
    }
    s_skip_ws (&scanner);
    if (scanner.at != scanner.end) {
        *error = "trailing bytes after the JSON object";
        return -1;
    }
    return 0;
}
