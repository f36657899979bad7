/*  =========================================================================
    zg_routes - which endpoint an HTTP method and path name

    A fixed table, matched without allocating: the LLM routes (each also
    under /v1, and chat/completions/embeddings under /engines/{model}/ and
    /openai/deployments/{model}/, where the path names the model), the
    model listings, the health routes, /metrics and /, and the management
    routes of zg_admin.h (not under /v1, as the reference's). A known path
    with the wrong method is told apart from an unknown path, with the
    methods it allows.
    =========================================================================
*/
#ifndef ZG_ROUTES_H_INCLUDED
#define ZG_ROUTES_H_INCLUDED

#include <stdbool.h>
#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum {
    ZG_ENDPOINT_NOT_FOUND = 0,      //  no such path
    ZG_ENDPOINT_BAD_METHOD,         //  path known, method not: see allow
    ZG_ENDPOINT_CHAT,               //  POST, LLM
    ZG_ENDPOINT_COMPLETIONS,        //  POST, LLM
    ZG_ENDPOINT_EMBEDDINGS,         //  POST, LLM
    ZG_ENDPOINT_MODELS,             //  GET, key required
    ZG_ENDPOINT_MODEL_INFO,         //  GET, key required
    ZG_ENDPOINT_LIVENESS,           //  GET, public
    ZG_ENDPOINT_READINESS,          //  GET, public
    ZG_ENDPOINT_ROOT,               //  GET, public
    ZG_ENDPOINT_HEALTH,             //  GET, key required: checks every deployment
    ZG_ENDPOINT_METRICS,            //  GET, public unless require_auth_for_metrics_endpoint
    ZG_ENDPOINT_ADMIN               //  management: see admin_op; master key only
} zg_endpoint_t;

typedef enum {
    ZG_HTTP_OTHER = 0,
    ZG_HTTP_GET,
    ZG_HTTP_HEAD,
    ZG_HTTP_POST,
    ZG_HTTP_PUT,
    ZG_HTTP_DELETE,
    ZG_HTTP_PATCH,
    ZG_HTTP_OPTIONS
} zg_http_method_t;

typedef struct {
    zg_endpoint_t endpoint;
    const char   *allow;            //  BAD_METHOD: value of the Allow header
    const char   *model;            //  LLM routes: model named by the path, or NULL
    size_t        model_length;
    int           admin_op;         //  ADMIN: the zg_admin_op_t
    const char   *path_key;         //  /key/{key}/regenerate: the key, in path; else NULL
    size_t        path_key_length;
} zg_route_match_t;

//  Classify a method name ("GET"...)
zg_http_method_t zg_http_method (const char *method);

//  The method's name, for logs
const char *zg_http_method_name (zg_http_method_t method);

//  Match a request. path is the URL path (no query string). The model
//  span points into path. Returns match->endpoint.
zg_endpoint_t zg_route_match (zg_http_method_t method, const char *path,
                              zg_route_match_t *match);

//  True for the endpoints that become REQUESTs to the router
bool zg_endpoint_is_llm (zg_endpoint_t endpoint);

//  True for the endpoints that need a key when a master key is set
bool zg_endpoint_needs_auth (zg_endpoint_t endpoint);

//  The zg_route_t a LLM endpoint maps to (0 for others)
int zg_endpoint_route (zg_endpoint_t endpoint);

//  Self test
void zg_routes_test (bool verbose);

#ifdef __cplusplus
}
#endif

#endif
