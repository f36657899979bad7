/*  =========================================================================
    zg_routes - which endpoint an HTTP method and path name
    =========================================================================
*/
#include "frontend/zg_routes.h"
#include "frontend/zg_admin.h"
#include "common/zg_selftest.h"

#include <assert.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "proto/zg_msg.h"

static const char *s_allow_post = "POST";
static const char *s_allow_get = "GET, HEAD";

//  Paths that name an endpoint exactly, after any /v1 prefix
static const struct {
    const char   *path;
    zg_endpoint_t endpoint;
} s_exact [] = {
    { "/chat/completions",   ZG_ENDPOINT_CHAT },
    { "/completions",        ZG_ENDPOINT_COMPLETIONS },
    { "/embeddings",         ZG_ENDPOINT_EMBEDDINGS },
    { "/models",             ZG_ENDPOINT_MODELS },
    { "/model/info",         ZG_ENDPOINT_MODEL_INFO },
    { "/health/liveliness",  ZG_ENDPOINT_LIVENESS },
    { "/health/liveness",    ZG_ENDPOINT_LIVENESS },
    { "/health/readiness",   ZG_ENDPOINT_READINESS },
    { "/health",             ZG_ENDPOINT_HEALTH },
    { "/metrics",            ZG_ENDPOINT_METRICS },
    { "/",                   ZG_ENDPOINT_ROOT },
};

//  Suffixes after /engines/{model} and /openai/deployments/{model}; the
//  model may itself hold slashes ("openai/gpt-4o"), as the reference's
//  path parameters do, so the suffix is matched from the end
static const struct {
    const char   *suffix;
    zg_endpoint_t endpoint;
} s_model_suffix [] = {
    { "/chat/completions",   ZG_ENDPOINT_CHAT },
    { "/completions",        ZG_ENDPOINT_COMPLETIONS },
    { "/embeddings",         ZG_ENDPOINT_EMBEDDINGS },
};

static const char *s_model_prefix [] = { "/engines/", "/openai/deployments/" };

//  The management routes, matched exactly and never under /v1
static const struct {
    const char    *path;
    zg_http_method_t method;        //  GET also takes HEAD
    zg_admin_op_t  op;
} s_admin [] = {
    { "/key/generate",        ZG_HTTP_POST, ZG_ADMIN_KEY_GENERATE },
    { "/key/info",            ZG_HTTP_GET,  ZG_ADMIN_KEY_INFO },
    { "/key/update",          ZG_HTTP_POST, ZG_ADMIN_KEY_UPDATE },
    { "/key/delete",          ZG_HTTP_POST, ZG_ADMIN_KEY_DELETE },
    { "/key/list",            ZG_HTTP_GET,  ZG_ADMIN_KEY_LIST },
    { "/key/block",           ZG_HTTP_POST, ZG_ADMIN_KEY_BLOCK },
    { "/key/unblock",         ZG_HTTP_POST, ZG_ADMIN_KEY_UNBLOCK },
    { "/key/regenerate",      ZG_HTTP_POST, ZG_ADMIN_KEY_REGENERATE },
    { "/spend/logs",          ZG_HTTP_GET,  ZG_ADMIN_SPEND_LOGS },
    { "/global/spend",        ZG_HTTP_GET,  ZG_ADMIN_GLOBAL_SPEND },
    { "/global/spend/reset",  ZG_HTTP_POST, ZG_ADMIN_GLOBAL_SPEND_RESET },
    { "/model/new",           ZG_HTTP_POST, ZG_ADMIN_MODEL_NEW },
    { "/model/update",        ZG_HTTP_POST, ZG_ADMIN_MODEL_UPDATE },
    { "/model/delete",        ZG_HTTP_POST, ZG_ADMIN_MODEL_DELETE },
};

//  A management route: the op and its method, or false
static bool
s_match_admin (const char *path, zg_route_match_t *match, zg_http_method_t *method)
{
    for (size_t index = 0; index < sizeof (s_admin) / sizeof (s_admin [0]); index++)
        if (strcmp (path, s_admin [index].path) == 0) {
            match->admin_op = (int) s_admin [index].op;
            *method = s_admin [index].method;
            return true;
        }
    //  /key/{key}/regenerate: the key is one path segment
    static const char prefix [] = "/key/";
    static const char suffix [] = "/regenerate";
    size_t length = strlen (path);
    if (length > sizeof (prefix) - 1 + sizeof (suffix) - 1
    &&  strncmp (path, prefix, sizeof (prefix) - 1) == 0
    &&  strcmp (path + length - (sizeof (suffix) - 1), suffix) == 0) {
        const char *key = path + sizeof (prefix) - 1;
        size_t key_length = length - (sizeof (prefix) - 1) - (sizeof (suffix) - 1);
        if (memchr (key, '/', key_length))
            return false;
        match->admin_op = (int) ZG_ADMIN_KEY_REGENERATE;
        match->path_key = key;
        match->path_key_length = key_length;
        *method = ZG_HTTP_POST;
        return true;
    }
    return false;
}

zg_http_method_t
zg_http_method (const char *method)
{
    if (!method)
        return ZG_HTTP_OTHER;
    //  The common ones first; methods are case-sensitive (RFC 9110)
    if (strcmp (method, "POST") == 0)    return ZG_HTTP_POST;
    if (strcmp (method, "GET") == 0)     return ZG_HTTP_GET;
    if (strcmp (method, "HEAD") == 0)    return ZG_HTTP_HEAD;
    if (strcmp (method, "PUT") == 0)     return ZG_HTTP_PUT;
    if (strcmp (method, "DELETE") == 0)  return ZG_HTTP_DELETE;
    if (strcmp (method, "PATCH") == 0)   return ZG_HTTP_PATCH;
    if (strcmp (method, "OPTIONS") == 0) return ZG_HTTP_OPTIONS;
    return ZG_HTTP_OTHER;
}

const char *
zg_http_method_name (zg_http_method_t method)
{
    switch (method) {
        case ZG_HTTP_GET:     return "GET";
        case ZG_HTTP_HEAD:    return "HEAD";
        case ZG_HTTP_POST:    return "POST";
        case ZG_HTTP_PUT:     return "PUT";
        case ZG_HTTP_DELETE:  return "DELETE";
        case ZG_HTTP_PATCH:   return "PATCH";
        case ZG_HTTP_OPTIONS: return "OPTIONS";
        default:              return "OTHER";
    }
}

bool
zg_endpoint_is_llm (zg_endpoint_t endpoint)
{
    return endpoint == ZG_ENDPOINT_CHAT
        || endpoint == ZG_ENDPOINT_COMPLETIONS
        || endpoint == ZG_ENDPOINT_EMBEDDINGS;
}

bool
zg_endpoint_needs_auth (zg_endpoint_t endpoint)
{
    return zg_endpoint_is_llm (endpoint)
        || endpoint == ZG_ENDPOINT_MODELS
        || endpoint == ZG_ENDPOINT_MODEL_INFO
        || endpoint == ZG_ENDPOINT_HEALTH;
}

int
zg_endpoint_route (zg_endpoint_t endpoint)
{
    switch (endpoint) {
        case ZG_ENDPOINT_CHAT:        return ZG_ROUTE_CHAT;
        case ZG_ENDPOINT_COMPLETIONS: return ZG_ROUTE_COMPLETIONS;
        case ZG_ENDPOINT_EMBEDDINGS:  return ZG_ROUTE_EMBEDDINGS;
        default:                      return 0;
    }
}

static zg_endpoint_t
s_match_path (const char *path, zg_route_match_t *match)
{
    for (size_t index = 0; index < sizeof (s_exact) / sizeof (s_exact [0]); index++)
        if (strcmp (path, s_exact [index].path) == 0)
            return s_exact [index].endpoint;

    size_t path_length = strlen (path);
    for (size_t p = 0; p < sizeof (s_model_prefix) / sizeof (s_model_prefix [0]); p++) {
        size_t prefix_length = strlen (s_model_prefix [p]);
        if (strncmp (path, s_model_prefix [p], prefix_length) != 0)
            continue;
        for (size_t s = 0; s < sizeof (s_model_suffix) / sizeof (s_model_suffix [0]); s++) {
            size_t suffix_length = strlen (s_model_suffix [s].suffix);
            if (path_length <= prefix_length + suffix_length)
                continue;
            if (strcmp (path + path_length - suffix_length, s_model_suffix [s].suffix) != 0)
                continue;
            const char *model = path + prefix_length;
            size_t model_length = path_length - prefix_length - suffix_length;
            if (model [0] == '/' || model [model_length - 1] == '/')
                continue;
            match->model = model;
            match->model_length = model_length;
            return s_model_suffix [s].endpoint;
        }
    }
    return ZG_ENDPOINT_NOT_FOUND;
}

zg_endpoint_t
zg_route_match (zg_http_method_t method, const char *path, zg_route_match_t *match)
{
    assert (match);
    memset (match, 0, sizeof (*match));
    if (!path || *path != '/')
        return match->endpoint = ZG_ENDPOINT_NOT_FOUND;

    zg_http_method_t admin_method;
    if (s_match_admin (path, match, &admin_method)) {
        bool method_ok = method == admin_method
                      || (admin_method == ZG_HTTP_GET && method == ZG_HTTP_HEAD);
        if (!method_ok) {
            match->allow = admin_method == ZG_HTTP_GET ? s_allow_get : s_allow_post;
            match->admin_op = 0;
            match->path_key = NULL;
            match->path_key_length = 0;
            return match->endpoint = ZG_ENDPOINT_BAD_METHOD;
        }
        return match->endpoint = ZG_ENDPOINT_ADMIN;
    }

    //  Every route also lives under /v1 (but "/v1" alone is not "/")
    if (strncmp (path, "/v1/", 4) == 0)
        path += 3;

    zg_endpoint_t endpoint = s_match_path (path, match);
    if (endpoint == ZG_ENDPOINT_NOT_FOUND)
        return match->endpoint = endpoint;

    bool method_ok;
    if (zg_endpoint_is_llm (endpoint)) {
        method_ok = method == ZG_HTTP_POST;
        match->allow = s_allow_post;
    }
    else {
        method_ok = method == ZG_HTTP_GET || method == ZG_HTTP_HEAD;
        match->allow = s_allow_get;
    }
    if (!method_ok) {
        match->model = NULL;
        match->model_length = 0;
        return match->endpoint = ZG_ENDPOINT_BAD_METHOD;
    }
    match->allow = NULL;
    return match->endpoint = endpoint;
}


void
zg_routes_test (bool verbose)
{
    if (verbose)
        printf (" * zg_routes: ");
    zg_route_match_t match;

    ZG_CHECK (zg_http_method ("POST") == ZG_HTTP_POST);
    ZG_CHECK (zg_http_method ("GET") == ZG_HTTP_GET);
    ZG_CHECK (zg_http_method ("get") == ZG_HTTP_OTHER);
    ZG_CHECK (zg_http_method (NULL) == ZG_HTTP_OTHER);
    ZG_CHECK (strcmp (zg_http_method_name (ZG_HTTP_DELETE), "DELETE") == 0);

    struct {
        zg_http_method_t method;
        const char *path;
        zg_endpoint_t endpoint;
        const char *model;
    } cases [] = {
        { ZG_HTTP_POST, "/chat/completions",         ZG_ENDPOINT_CHAT, NULL },
        { ZG_HTTP_POST, "/v1/chat/completions",      ZG_ENDPOINT_CHAT, NULL },
        { ZG_HTTP_POST, "/completions",              ZG_ENDPOINT_COMPLETIONS, NULL },
        { ZG_HTTP_POST, "/v1/completions",           ZG_ENDPOINT_COMPLETIONS, NULL },
        { ZG_HTTP_POST, "/embeddings",               ZG_ENDPOINT_EMBEDDINGS, NULL },
        { ZG_HTTP_POST, "/v1/embeddings",            ZG_ENDPOINT_EMBEDDINGS, NULL },
        { ZG_HTTP_POST, "/engines/gpt-4o/chat/completions", ZG_ENDPOINT_CHAT, "gpt-4o" },
        { ZG_HTTP_POST, "/v1/engines/m1/completions", ZG_ENDPOINT_COMPLETIONS, "m1" },
        { ZG_HTTP_POST, "/engines/openai/gpt-4o/embeddings", ZG_ENDPOINT_EMBEDDINGS, "openai/gpt-4o" },
        { ZG_HTTP_POST, "/openai/deployments/azure-gpt/chat/completions", ZG_ENDPOINT_CHAT, "azure-gpt" },
        { ZG_HTTP_POST, "/v1/openai/deployments/d/embeddings", ZG_ENDPOINT_EMBEDDINGS, "d" },
        { ZG_HTTP_POST, "/engines//chat/completions", ZG_ENDPOINT_NOT_FOUND, NULL },
        { ZG_HTTP_POST, "/engines/chat/completions", ZG_ENDPOINT_COMPLETIONS, "chat" },
        { ZG_HTTP_POST, "/engines/x/", ZG_ENDPOINT_NOT_FOUND, NULL },
        { ZG_HTTP_GET,  "/models",                   ZG_ENDPOINT_MODELS, NULL },
        { ZG_HTTP_GET,  "/v1/models",                ZG_ENDPOINT_MODELS, NULL },
        { ZG_HTTP_HEAD, "/v1/models",                ZG_ENDPOINT_MODELS, NULL },
        { ZG_HTTP_GET,  "/model/info",               ZG_ENDPOINT_MODEL_INFO, NULL },
        { ZG_HTTP_GET,  "/v1/model/info",            ZG_ENDPOINT_MODEL_INFO, NULL },
        { ZG_HTTP_GET,  "/health/liveliness",        ZG_ENDPOINT_LIVENESS, NULL },
        { ZG_HTTP_GET,  "/health/liveness",          ZG_ENDPOINT_LIVENESS, NULL },
        { ZG_HTTP_GET,  "/health/readiness",         ZG_ENDPOINT_READINESS, NULL },
        { ZG_HTTP_GET,  "/",                         ZG_ENDPOINT_ROOT, NULL },
        { ZG_HTTP_GET,  "/health",                   ZG_ENDPOINT_HEALTH, NULL },
        { ZG_HTTP_GET,  "/metrics",                  ZG_ENDPOINT_METRICS, NULL },
        { ZG_HTTP_POST, "/metrics",                  ZG_ENDPOINT_BAD_METHOD, NULL },
        { ZG_HTTP_GET,  "/v1",                       ZG_ENDPOINT_NOT_FOUND, NULL },
        { ZG_HTTP_GET,  "/v1/no/such/route",         ZG_ENDPOINT_NOT_FOUND, NULL },
        { ZG_HTTP_GET,  "",                          ZG_ENDPOINT_NOT_FOUND, NULL },
        { ZG_HTTP_POST, "/chat/completions/",        ZG_ENDPOINT_NOT_FOUND, NULL },
        { ZG_HTTP_GET,  "/chat/completions",         ZG_ENDPOINT_BAD_METHOD, NULL },
        { ZG_HTTP_PUT,  "/v1/embeddings",            ZG_ENDPOINT_BAD_METHOD, NULL },
        { ZG_HTTP_POST, "/models",                   ZG_ENDPOINT_BAD_METHOD, NULL },
        { ZG_HTTP_DELETE, "/health/readiness",       ZG_ENDPOINT_BAD_METHOD, NULL },
    };
    for (size_t index = 0; index < sizeof (cases) / sizeof (cases [0]); index++) {
        zg_endpoint_t endpoint = zg_route_match (cases [index].method, cases [index].path, &match);
        ZG_CHECK (endpoint == cases [index].endpoint);
        ZG_CHECK (match.endpoint == endpoint);
        if (cases [index].model) {
            ZG_CHECK (match.model_length == strlen (cases [index].model));
            ZG_CHECK (memcmp (match.model, cases [index].model, match.model_length) == 0);
        }
        else
            ZG_CHECK (match.model == NULL);
    }
    zg_route_match (ZG_HTTP_GET, "/chat/completions", &match);
    ZG_CHECK (strcmp (match.allow, "POST") == 0);
    zg_route_match (ZG_HTTP_POST, "/models", &match);
    ZG_CHECK (strcmp (match.allow, "GET, HEAD") == 0);

    //  Management routes
    struct {
        zg_http_method_t method;
        const char *path;
        zg_endpoint_t endpoint;
        zg_admin_op_t op;
    } admin [] = {
        { ZG_HTTP_POST, "/key/generate",          ZG_ENDPOINT_ADMIN, ZG_ADMIN_KEY_GENERATE },
        { ZG_HTTP_GET,  "/key/info",              ZG_ENDPOINT_ADMIN, ZG_ADMIN_KEY_INFO },
        { ZG_HTTP_HEAD, "/key/info",              ZG_ENDPOINT_ADMIN, ZG_ADMIN_KEY_INFO },
        { ZG_HTTP_POST, "/key/update",            ZG_ENDPOINT_ADMIN, ZG_ADMIN_KEY_UPDATE },
        { ZG_HTTP_POST, "/key/delete",            ZG_ENDPOINT_ADMIN, ZG_ADMIN_KEY_DELETE },
        { ZG_HTTP_GET,  "/key/list",              ZG_ENDPOINT_ADMIN, ZG_ADMIN_KEY_LIST },
        { ZG_HTTP_POST, "/key/block",             ZG_ENDPOINT_ADMIN, ZG_ADMIN_KEY_BLOCK },
        { ZG_HTTP_POST, "/key/unblock",           ZG_ENDPOINT_ADMIN, ZG_ADMIN_KEY_UNBLOCK },
        { ZG_HTTP_POST, "/key/regenerate",        ZG_ENDPOINT_ADMIN, ZG_ADMIN_KEY_REGENERATE },
        { ZG_HTTP_POST, "/key/sk-abc/regenerate", ZG_ENDPOINT_ADMIN, ZG_ADMIN_KEY_REGENERATE },
        { ZG_HTTP_GET,  "/spend/logs",            ZG_ENDPOINT_ADMIN, ZG_ADMIN_SPEND_LOGS },
        { ZG_HTTP_GET,  "/global/spend",          ZG_ENDPOINT_ADMIN, ZG_ADMIN_GLOBAL_SPEND },
        { ZG_HTTP_POST, "/global/spend/reset",    ZG_ENDPOINT_ADMIN, ZG_ADMIN_GLOBAL_SPEND_RESET },
        { ZG_HTTP_POST, "/model/new",             ZG_ENDPOINT_ADMIN, ZG_ADMIN_MODEL_NEW },
        { ZG_HTTP_POST, "/model/update",          ZG_ENDPOINT_ADMIN, ZG_ADMIN_MODEL_UPDATE },
        { ZG_HTTP_POST, "/model/delete",          ZG_ENDPOINT_ADMIN, ZG_ADMIN_MODEL_DELETE },
        { ZG_HTTP_GET,  "/key/generate",          ZG_ENDPOINT_BAD_METHOD, ZG_ADMIN_NONE },
        { ZG_HTTP_POST, "/key/info",              ZG_ENDPOINT_BAD_METHOD, ZG_ADMIN_NONE },
        { ZG_HTTP_POST, "/v1/key/generate",       ZG_ENDPOINT_NOT_FOUND, ZG_ADMIN_NONE },
        { ZG_HTTP_POST, "/key//regenerate",       ZG_ENDPOINT_NOT_FOUND, ZG_ADMIN_NONE },
        { ZG_HTTP_POST, "/key/a/b/regenerate",    ZG_ENDPOINT_NOT_FOUND, ZG_ADMIN_NONE },
        { ZG_HTTP_POST, "/key/",                  ZG_ENDPOINT_NOT_FOUND, ZG_ADMIN_NONE },
    };
    for (size_t index = 0; index < sizeof (admin) / sizeof (admin [0]); index++) {
        zg_endpoint_t endpoint = zg_route_match (admin [index].method, admin [index].path, &match);
        ZG_CHECK (endpoint == admin [index].endpoint);
        ZG_CHECK (match.admin_op == (int) admin [index].op);
    }
    zg_route_match (ZG_HTTP_POST, "/key/sk-abc/regenerate", &match);
    ZG_CHECK (match.path_key_length == 6 && memcmp (match.path_key, "sk-abc", 6) == 0);
    zg_route_match (ZG_HTTP_POST, "/key/generate", &match);
    ZG_CHECK (match.path_key == NULL);
    zg_route_match (ZG_HTTP_GET, "/key/generate", &match);
    ZG_CHECK (strcmp (match.allow, "POST") == 0);
    zg_route_match (ZG_HTTP_DELETE, "/spend/logs", &match);
    ZG_CHECK (strcmp (match.allow, "GET, HEAD") == 0);

    ZG_CHECK (zg_endpoint_is_llm (ZG_ENDPOINT_EMBEDDINGS));
    ZG_CHECK (!zg_endpoint_is_llm (ZG_ENDPOINT_MODELS));
    ZG_CHECK (zg_endpoint_needs_auth (ZG_ENDPOINT_MODEL_INFO));
    ZG_CHECK (!zg_endpoint_needs_auth (ZG_ENDPOINT_READINESS));
    ZG_CHECK (!zg_endpoint_needs_auth (ZG_ENDPOINT_LIVENESS));
    ZG_CHECK (zg_endpoint_needs_auth (ZG_ENDPOINT_HEALTH));
    //  Public unless require_auth_for_metrics_endpoint: the frontend decides
    ZG_CHECK (!zg_endpoint_needs_auth (ZG_ENDPOINT_METRICS));
    ZG_CHECK (zg_endpoint_route (ZG_ENDPOINT_COMPLETIONS) == ZG_ROUTE_COMPLETIONS);
    ZG_CHECK (zg_endpoint_route (ZG_ENDPOINT_ROOT) == 0);
    if (verbose)
        printf ("OK\n");
}
