/*  fu_render: the OpenAI-shaped bodies the fake upstream answers with.
    Everything is deterministic but the id and the creation time, so tests
    can compare a response through the gateway with one taken directly.  */

#ifndef FU_RENDER_H_INCLUDED
#define FU_RENDER_H_INCLUDED

#include "fu_buf.h"

#include <stdbool.h>

//  Fixed so that usage is predictable whatever the prompt (unless
//  --prompt-tokens or fake.prompt_tokens says otherwise).
#define FU_PROMPT_TOKENS 10
//  What --prompt-tokens and fake.prompt_tokens take: any count a gateway
//  may be sent, negative or beyond 32 bits
#define FU_PROMPT_TOKENS_LIMIT 999999999999999LL

typedef enum {
    FU_ROUTE_CHAT,
    FU_ROUTE_COMPLETIONS,
    FU_ROUTE_EMBEDDINGS
} fu_route_t;

typedef struct {
    fu_route_t route;
    unsigned long long id;
    long long created;
    const char *model;          //  a JSON string token, quotes included
    size_t model_len;
    long chunks;                //  completion tokens: one word per chunk
    long long prompt_tokens;    //  the usage's prompt_tokens, as told
    long inputs;                //  embeddings: vectors to return
    bool include_usage;
} fu_answer_t;

//  The whole non-streamed JSON body.
void fu_render_body (fu_buf_t *out, const fu_answer_t *answer);
//  SSE events: "data: ...\n\n". Event `index` of answer->chunks carries one word.
void fu_render_event (fu_buf_t *out, const fu_answer_t *answer, long index);
void fu_render_usage_event (fu_buf_t *out, const fu_answer_t *answer);
void fu_render_done_event (fu_buf_t *out);
//  OpenAI error JSON with code "<status>".
void fu_render_error (fu_buf_t *out, int status, const char *message);
const char *fu_render_reason (int status);

#endif
