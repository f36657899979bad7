/*  =========================================================================
    zg_reply - the bodies and header values the frontend writes itself

    Error JSON in the reference's exact shape, in-stream error events, the
    /models, /model/info, readiness and root documents (built once from the
    configuration, since it never changes while the frontend runs), and the
    small text helpers for response headers.
    =========================================================================
*/
#ifndef ZG_REPLY_H_INCLUDED
#define ZG_REPLY_H_INCLUDED

#include <stdbool.h>
#include <stddef.h>

#include "common/zg_config.h"

#ifdef __cplusplus
extern "C" {
#endif

//  Enough for any error body: a message of ZG_MESSAGE_MAX bytes escaped
//  as \u00XX everywhere, plus the rest
#define ZG_REPLY_ERROR_MAX 32768

//  {"error":{"message":..,"type":..,"param":null|"..","code":"<status>"}}
//  into buf. param NULL or empty = null. Returns the length, or -1 if it
//  does not fit.
int zg_reply_error_json (char *buf, size_t size, int status, const char *type,
                         const char *message, const char *param);

//  The same error as an SSE event, "data: {...}\n\n", followed by
//  "data: [DONE]\n\n". Returns the length or -1.
int zg_reply_stream_error (char *buf, size_t size, int status, const char *type,
                           const char *message, const char *param);

//  Documents built from deployments; the caller frees them.
//  /models: each model name once, in order; allowed NULL = every name,
//  else only the allowed_count names of allowed (a virtual key's models)
char *zg_reply_models_json (const zg_deployment_t *deployments, size_t count,
                            const char *const *allowed, size_t allowed_count);
char *zg_reply_model_info_json (const zg_config_t *config);
//  db: "connected"/"disconnected", NULL = "Not connected" (no database);
//  cache: "redis" when Redis is configured, NULL = null;
//  detail: why it is not ready, or NULL
char *zg_reply_readiness_json (bool healthy, const char *db, const char *cache, const char *detail,
                               const char *log_level, bool detailed_debug);
char *zg_reply_root_json (void);

//  GET /health: every deployment, in order, as healthy (errors [i] NULL)
//  or unhealthy with its error, with no secret:
//  {"healthy_endpoints":[...],"unhealthy_endpoints":[...],
//   "healthy_count":N,"unhealthy_count":M}
char *zg_reply_health_json (const zg_deployment_t *deployments, size_t count,
                            const char *const *errors);

//  A deployment's mode: model_info.mode, else "embedding" when the
//  upstream model's name says so, else "chat"
const char *zg_reply_mode (const zg_deployment_t *deployment);

//  Copy url into out without its query string or fragment. Returns out.
char *zg_reply_strip_query (const char *url, char *out, size_t size);

//  Walk "name: value\r\n" lines (the HEAD headers field). Returns the next
//  cursor, or NULL at the end; name and value spans are trimmed. Lines
//  without a colon or with an empty name are skipped.
const char *zg_reply_next_header (const char *cursor,
                                  const char **name, size_t *name_length,
                                  const char **value, size_t *value_length);

//  Self test
void zg_reply_test (bool verbose);

#ifdef __cplusplus
}
#endif

#endif
