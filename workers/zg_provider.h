/*  =========================================================================
    zg_provider - what a worker needs to know about one upstream API

    A provider is a small table of functions (in the manner of h2o's
    balancer interface): the worker owns the transfer, the event loop and
    the messages; the provider owns everything that depends on the API:
    the URL, the request headers, the rewriting of the request body, where
    usage is in a reply, and how failures map to gateway errors. One file
    per API: zg_provider_openai.c serves openai, text-completion-openai,
    custom_openai, openai_like and hosted_vllm.

    The functions are pure: no I/O, no global state, safe to call from any
    thread.
    =========================================================================
*/
#ifndef ZG_PROVIDER_H_INCLUDED
#define ZG_PROVIDER_H_INCLUDED

#include "proto/zg_msg.h"
#include "workers/zg_buffer.h"

#include <curl/curl.h>
#include <stdbool.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

//  The largest token count a call records: "LiteLLM_SpendLogs" keeps its
//  counts in INTEGER columns, and a row PostgreSQL refuses would never be
//  written. The counts come from the upstream's reply, i.e. from outside:
//  a count above this (or below 0) is recorded as this (or 0), and the
//  call's cost is computed from the very counts recorded.
#define ZG_USAGE_TOKENS_MAX INT32_MAX

//  Token counts of one call, each from 0 to ZG_USAGE_TOKENS_MAX
typedef struct {
    bool     found;                 //  the reply carried usage
    bool     clamped;               //  a count it carried was out of range
    uint32_t prompt_tokens;
    uint32_t completion_tokens;
    uint32_t total_tokens;
} zg_usage_t;

//  What went wrong with a transfer that produced no usable reply
typedef struct {
    CURLcode    code;               //  libcurl's result; CURLE_OK if the worker itself gave up
    const char *curl_error;         //  libcurl's error text (CURLOPT_ERRORBUFFER), may be empty
    bool        timed_out;          //  a deadline of ours or of libcurl expired
    uint32_t    timeout_ms;         //  the deadline that expired
} zg_provider_failure_t;

//  The gateway error to send instead (ERROR message fields)
typedef struct {
    uint16_t status;
    char     err_type [ZG_NAME_MAX + 1];
    char     message [ZG_MESSAGE_MAX + 1];
} zg_provider_error_t;

//  Bits returned by usage_from_event
#define ZG_PROVIDER_EVENT_USAGE       0x01  //  the event carried usage (now in *usage)
#define ZG_PROVIDER_EVENT_USAGE_ONLY  0x02  //  the event is only there to carry usage

typedef struct _zg_provider_t zg_provider_t;
struct _zg_provider_t {
    const char *name;

    //  Write the upstream URL of a route (zg_route_t) into url. 0, or -1
    //  if the route is unknown or the URL does not fit.
    int (*build_url) (const zg_deployment_wire_t *deployment, int route,
                      char *url, size_t size);

    //  A new list of request headers for this deployment (credentials,
    //  content type). The caller owns it (curl_slist_free_all) and may
    //  keep it for later transfers to the same deployment and key.
    //  NULL when out of memory.
    struct curl_slist *(*request_headers) (const zg_deployment_wire_t *deployment);

    //  Rewrite a request body for the deployment: flags are the DISPATCH
    //  flags (ZG_FLAG_STREAM, ZG_FLAG_CLIENT_USAGE), and with
    //  ZG_FLAG_BODY_LOCATED model_span and options_span say where the
    //  body's "model" and "stream_options" are (zg_msg_span); without it,
    //  or if they do not point where they say, the provider scans the
    //  body. Returns 1 with the new body in out, 0 if the body goes as it
    //  is (out untouched), -1 when out of memory.
    int (*rewrite_body) (const zg_deployment_wire_t *deployment, uint32_t flags,
                         const char *body, size_t size, uint64_t model_span,
                         uint64_t options_span, zg_buffer_t *out);

    //  Read usage from a whole reply body. True if found.
    bool (*usage_from_json) (const char *body, size_t size, zg_usage_t *usage);

    //  Look at one complete SSE event (bytes up to and including its blank
    //  line). Returns ZG_PROVIDER_EVENT_* bits; fills usage when present.
    int (*usage_from_event) (const char *event, size_t size, zg_usage_t *usage);

    //  The gateway error for a transfer that failed before or during the
    //  reply. deployment_id goes into messages; never the credentials.
    void (*map_failure) (const zg_deployment_wire_t *deployment,
                         const zg_provider_failure_t *failure,
                         zg_provider_error_t *error);

    //  The status to send to the client for an upstream HTTP status.
    uint16_t (*map_status) (uint16_t upstream_status);
};

//  The provider for a provider name ("openai"...), or NULL if none serves it.
const zg_provider_t *zg_provider_find (const char *provider);

//  The providers
extern const zg_provider_t zg_provider_openai;

//  Helpers shared by the provider files

//  Formats seconds as Python prints a float ("600.0", "0.25"), so that
//  messages match the reference's.
void zg_provider_format_seconds (uint32_t milliseconds, char *out, size_t size);

//  Locate the JSON text of an SSE event's single "data:" field. Returns
//  false if the event has no data field or more than one.
bool zg_provider_event_data (const char *event, size_t size,
                             const char **data, size_t *data_size);

#ifdef __cplusplus
}
#endif
#endif
