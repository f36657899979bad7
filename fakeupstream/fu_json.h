/*  fu_json: just enough JSON for the fake upstream. Validates a whole
    request body and picks out the few top-level fields that shape the
    answer, without building a tree.  */

#ifndef FU_JSON_H_INCLUDED
#define FU_JSON_H_INCLUDED

#include <stdbool.h>
#include <stddef.h>

//  A value's bytes inside the body; size 0 when absent.
typedef struct {
    const char *at;
    size_t size;
} fu_json_span_t;

//  Per-request overrides from the body's top-level "fake" object;
//  -1 when not given.
typedef struct {
    long latency_ms;
    long chunks;
    long chunk_interval_ms;
    long status;
    long header_bytes;          //  an extra x-fake-padding header of this many bytes
    bool has_prompt_tokens;     //  any integer is a prompt_tokens, -1 too
    long long prompt_tokens;    //  the usage's prompt_tokens
    fu_json_span_t fault;       //  the string's content, without quotes
} fu_json_fake_t;

typedef struct {
    fu_json_span_t model;       //  the raw JSON string token, quotes included
    bool stream;
    bool include_usage;
    bool has_input;
    long input_count;           //  embeddings: how many inputs "input" holds
    fu_json_fake_t fake;
} fu_json_llm_body_t;

//  Validate body as a JSON object and fill `out`. Returns 0, or -1 with
//  *error set to a static message suitable for a 400 answer.
int fu_json_parse_llm_body (const char *body, size_t size, fu_json_llm_body_t *out,
                            const char **error);

#endif
