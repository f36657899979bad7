#include "fu_render.h"

#include <string.h>

#define PUT(literal) fu_buf_append (out, literal, sizeof (literal) - 1)

static void
s_put_header (fu_buf_t *out, const fu_answer_t *answer, const char *id_prefix,
              const char *object)
{
    PUT ("{\"id\":\"");
    fu_buf_puts (out, id_prefix);
    fu_buf_putu (out, answer->id);
    PUT ("\",\"object\":\"");
    fu_buf_puts (out, object);
    PUT ("\",\"created\":");
    fu_buf_putu (out, (unsigned long long) answer->created);
    PUT (",\"model\":");
    fu_buf_append (out, answer->model, answer->model_len);
}

static void
s_put_signed (fu_buf_t *out, long long value)
{
    if (value < 0) {
        PUT ("-");
        fu_buf_putu (out, 0ULL - (unsigned long long) value);
    }
    else
        fu_buf_putu (out, (unsigned long long) value);
}

static void
s_put_usage (fu_buf_t *out, const fu_answer_t *answer, long completion_tokens,
             bool with_completion)
{
    PUT ("\"usage\":{\"prompt_tokens\":");
    s_put_signed (out, answer->prompt_tokens);
    if (with_completion) {
        PUT (",\"completion_tokens\":");
        fu_buf_putu (out, (unsigned long long) completion_tokens);
    }
    PUT (",\"total_tokens\":");
    s_put_signed (out, answer->prompt_tokens + completion_tokens);
    PUT ("}");
}

static void
s_put_words (fu_buf_t *out, long words)
{
    for (long i = 0; i < words; i++) {
        if (i)
            PUT (" tok");
        else
            PUT ("tok");
    }
}

//  Same vector for every input: only the shape matters to a gateway.
static const char *s_embedding =
    "[0.0123,-0.0456,0.0789,-0.1011,0.1213,-0.1415,0.1617,-0.1819]";

void
fu_render_body (fu_buf_t *out, const fu_answer_t *answer)
{
    switch (answer->route) {
        case FU_ROUTE_CHAT:
            s_put_header (out, answer, "chatcmpl-fake-", "chat.completion");
            PUT (",\"choices\":[{\"index\":0,\"message\":{\"role\":\"assistant\",\"content\":\"");
            s_put_words (out, answer->chunks);
            PUT ("\"},\"logprobs\":null,\"finish_reason\":\"stop\"}],");
            s_put_usage (out, answer, answer->chunks, true);
            PUT ("}");
            break;
        case FU_ROUTE_COMPLETIONS:
            s_put_header (out, answer, "cmpl-fake-", "text_completion");
            PUT (",\"choices\":[{\"text\":\"");
            s_put_words (out, answer->chunks);
            PUT ("\",\"index\":0,\"logprobs\":null,\"finish_reason\":\"stop\"}],");
            s_put_usage (out, answer, answer->chunks, true);
            PUT ("}");
            break;
        case FU_ROUTE_EMBEDDINGS:
            PUT ("{\"object\":\"list\",\"data\":[");
            for (long i = 0; i < answer->inputs; i++) {
                if (i)
                    PUT (",");
                PUT ("{\"object\":\"embedding\",\"index\":");
                fu_buf_putu (out, (unsigned long long) i);
                PUT (",\"embedding\":");
                fu_buf_puts (out, s_embedding);
                PUT ("}");
            }
            PUT ("],\"model\":");
            fu_buf_append (out, answer->model, answer->model_len);
            PUT (",");
            s_put_usage (out, answer, 0, false);
            PUT ("}");
            break;
    }
}

void
fu_render_event (fu_buf_t *out, const fu_answer_t *answer, long index)
{
    bool last = index == answer->chunks - 1;
    PUT ("data: ");
    if (answer->route == FU_ROUTE_COMPLETIONS) {
        s_put_header (out, answer, "cmpl-fake-", "text_completion");
        PUT (",\"choices\":[{\"text\":\"");
        if (index)
            PUT (" ");
        PUT ("tok\",\"index\":0,\"logprobs\":null,\"finish_reason\":");
    }
    else {
        s_put_header (out, answer, "chatcmpl-fake-", "chat.completion.chunk");
        PUT (",\"choices\":[{\"index\":0,\"delta\":{");
        if (index == 0)
            PUT ("\"role\":\"assistant\",\"content\":\"tok\"");
        else
            PUT ("\"content\":\" tok\"");
        PUT ("},\"logprobs\":null,\"finish_reason\":");
    }
    if (last)
        PUT ("\"stop\"}]}\n\n");
    else
        PUT ("null}]}\n\n");
}

void
fu_render_usage_event (fu_buf_t *out, const fu_answer_t *answer)
{
    PUT ("data: ");
    if (answer->route == FU_ROUTE_COMPLETIONS)
        s_put_header (out, answer, "cmpl-fake-", "text_completion");
    else
        s_put_header (out, answer, "chatcmpl-fake-", "chat.completion.chunk");
    PUT (",\"choices\":[],");
    s_put_usage (out, answer, answer->chunks, true);
    PUT ("}\n\n");
}

void
fu_render_done_event (fu_buf_t *out)
{
    PUT ("data: [DONE]\n\n");
}

void
fu_render_error (fu_buf_t *out, int status, const char *message)
{
    PUT ("{\"error\":{\"message\":");
    fu_buf_json_string (out, message, strlen (message));
    PUT (",\"type\":\"");
    fu_buf_puts (out, status >= 500 ? "server_error" : "invalid_request_error");
    PUT ("\",\"param\":null,\"code\":\"");
    fu_buf_putu (out, (unsigned long long) status);
    PUT ("\"}}");
}

const char *
fu_render_reason (int status)
{
    switch (status) {
        case 200: return "OK";
        case 201: return "Created";
        case 202: return "Accepted";
        case 204: return "No Content";
        case 400: return "Bad Request";
        case 401: return "Unauthorized";
        case 402: return "Payment Required";
        case 403: return "Forbidden";
        case 404: return "Not Found";
        case 405: return "Method Not Allowed";
        case 408: return "Request Timeout";
        case 409: return "Conflict";
        case 413: return "Payload Too Large";
        case 422: return "Unprocessable Entity";
        case 429: return "Too Many Requests";
        case 431: return "Request Header Fields Too Large";
        case 500: return "Internal Server Error";
        case 501: return "Not Implemented";
        case 502: return "Bad Gateway";
        case 503: return "Service Unavailable";
        case 504: return "Gateway Timeout";
        case 505: return "HTTP Version Not Supported";
        case 529: return "Overloaded";
        default:  return "Status";
    }
}
