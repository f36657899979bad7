/*  =========================================================================
    zg_config - the configuration model: LiteLLM's config.yaml, read once

    zg_config_load reads a LiteLLM proxy config.yaml (model_list,
    general_settings, litellm_settings, router_settings,
    environment_variables) plus zgate's own `zgate_settings` section.
    String values of the form "os.environ/NAME" are read from the
    environment. `environment_variables` are exported (setenv, not
    overriding what is already set) before anything else is resolved.

    Keys zgate knows but does not implement yet are accepted with one
    warning each (through zg_log). A wrong value stops loading with an
    error naming the file, the line and the key, e.g.

        config.yaml:12: model_list[0].litellm_params.rpm: expected an integer, got "fast"

    The struct is public and read-only after loading: every actor loads the
    same file and reads the fields directly.
    =========================================================================
*/

#ifndef ZG_CONFIG_H_INCLUDED
#define ZG_CONFIG_H_INCLUDED

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

//  One model_list entry
typedef struct {
    char   *model_name;             //  client-facing name (the model group)
    char   *id;                     //  model_info.id, or a deterministic hash of litellm_params
    char   *provider;               //  "openai" (the part before '/' in litellm_params.model)
    char   *upstream_model;         //  the part after the provider: what the upstream is asked for
    char   *api_base;               //  default "https://api.openai.com/v1"
    char   *api_key;                //  may be NULL
    double  timeout_s;              //  litellm_params.timeout; 0 = unset
    double  stream_timeout_s;       //  litellm_params.stream_timeout; 0 = unset
    long    rpm;                    //  0 = unset
    long    tpm;                    //  0 = unset
    double  weight;                 //  0 = unset
    int     max_retries;            //  -1 = unset
    double  input_cost_per_token;   //  < 0 = unset
    double  output_cost_per_token;  //  < 0 = unset
    char   *mode;                   //  model_info.mode ("chat", "embedding"...); NULL = chat
    int     line;                   //  where it starts in the file, for messages
} zg_deployment_t;

typedef struct {
    char   *path;                   //  the file it came from

    zg_deployment_t *deployments;   //  model_list, in file order
    size_t  deployment_count;

    //  general_settings
    char   *master_key;             //  NULL = no auth (also from LITELLM_MASTER_KEY)
    char   *database_url;           //  also from DATABASE_URL
    double  max_request_size_mb;    //  413 above this; default 32
    int     database_connection_pool_limit;  //  default 10
    double  proxy_batch_write_at;   //  default 10
    bool    disable_error_logs;
    bool    allow_requests_on_db_unavailable;
    double  user_api_key_cache_ttl; //  seconds between full reloads of the key table; default 60
    bool    store_model_in_db;      //  /model/new and the router read deployments from the
                                    //  database too (also STORE_MODEL_IN_DB=True)

    //  litellm_settings
    double  request_timeout_s;      //  default 6000
    bool    set_verbose;
    bool    json_logs;              //  also JSON_LOGS=true
    bool    require_auth_for_metrics_endpoint;  //  /metrics needs a key (default: public)

    //  router_settings
    char   *routing_strategy;       //  default "simple-shuffle"
    int     num_retries;            //  default 2

    //  zgate_settings (zgate's own; all optional)
    char   *frontend_endpoint;      //  router's socket for frontends; default ipc://<run_dir>/frontend.ipc
    char   *worker_endpoint;        //  router's socket for workers;   default ipc://<run_dir>/worker.ipc
    char   *events_endpoint;        //  the frontend's PUB socket for events; default ipc://<run_dir>/events.ipc
    char   *run_dir;                //  ZGATE_RUN_DIR, else NULL (the supervisor makes a temporary one)
    int     worker_capacity;        //  concurrent upstream transfers per worker; default 256
    int     queue_timeout_ms;       //  longest wait for a free worker before 503; default 5000
    int     max_queue;              //  requests the router holds while no worker is free; default 10000
    int     heartbeat_ms;           //  default 1000; a peer is dead after 3 missed
    int     redis_probe_interval_ms;    //  between two checks of Redis; default 5000
    int     redis_timeout_ms;       //  to connect, and for each command; default 1000
    int     redis_sync_interval_ms; //  between two syncs of the rate-limit counters with
                                    //  Redis; default 1000

    //  Redis: router_settings.redis_url, else redis_host/redis_port/
    //  redis_password, else litellm_settings.cache_params of type redis
    //  (host, port, password; REDIS_HOST, REDIS_PORT, REDIS_PASSWORD when
    //  it names none). zgate keeps the virtual keys' rate-limit counters
    //  there, shared by the instances, and watches it for /health/readiness
    //  and /metrics.
    char   *redis_host;             //  NULL = no Redis configured
    int     redis_port;             //  default 6379
    char   *redis_username;         //  redis_url's user (Redis 6 ACL); NULL = the default user
    char   *redis_password;         //  NULL = no AUTH
    int     redis_db;               //  redis_url's /db; default 0
} zg_config_t;

//  Load and validate a configuration file. Returns NULL on error, with the
//  error (file:line: key: reason) written into errbuf.
zg_config_t *zg_config_load (const char *path, char *errbuf, size_t errsize);

//  Built-in defaults and no models: for running with no --config.
zg_config_t *zg_config_new_default (void);

void zg_config_destroy (zg_config_t **self_p);

//  The deployments of a model group, for the router: fills out[] with
//  indexes into deployments[] and returns how many (at most max).
size_t zg_config_find_group (const zg_config_t *self, const char *model_name,
                             size_t *out, size_t max);

//  Where the frontend publishes events (zgate_settings.events_endpoint,
//  else ipc://<run_dir>/events.ipc), written into endpoint
void zg_config_events_endpoint (const zg_config_t *self, const char *run_dir,
                                char *endpoint, size_t size);

//  True if zgate can serve deployments of this provider (the part of
//  litellm_params.model before '/', or custom_llm_provider)
bool zg_config_provider_supported (const char *provider);

//  The api_base of a deployment that names none
#define ZG_CONFIG_DEFAULT_API_BASE "https://api.openai.com/v1"

//  Self test
void zg_config_test (bool verbose);

#ifdef __cplusplus
}
#endif

#endif
