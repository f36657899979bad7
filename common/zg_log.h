/*  =========================================================================
    zg_log - logging as the reference does it

    Levels follow LITELLM_LOG (DEBUG, INFO, WARNING, ERROR; default INFO,
    or DEBUG with litellm_settings.set_verbose). Lines below WARNING go to
    stdout, the rest to stderr.

    Plain form:   16:02:11 - zgate.router:WARNING: message
    JSON form:    {"message": "...", "level": "WARNING", "timestamp": "2026-11-24T16:02:11.123456", "component": "zgate.router"}
                  (json_logs / JSON_LOGS=true)
    Access lines: INFO:     127.0.0.1:54321 - "POST /chat/completions HTTP/1.1" 200 OK
                  at INFO; silent at WARNING and above; in JSON form the
                  same text is the "message".

    Secrets never reach a log: zg_log_redact masks "sk-..." tokens and
    "Bearer ..." values in the formatted text before it is written.
    =========================================================================
*/

#ifndef ZG_LOG_H_INCLUDED
#define ZG_LOG_H_INCLUDED

#include <stdbool.h>
#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum {
    ZG_LOG_DEBUG = 10,
    ZG_LOG_INFO = 20,
    ZG_LOG_WARNING = 30,
    ZG_LOG_ERROR = 40
} zg_log_level_t;

//  Set up logging for this process. component names the actor
//  ("zgate.frontend"...). The level comes from LITELLM_LOG if set, else
//  DEBUG if verbose, else INFO. json: json_logs.
void zg_log_init (const char *component, bool verbose, bool json);

//  Parse "DEBUG"/"INFO"/"WARNING"/"ERROR" (any case); -1 if not one.
int zg_log_level_parse (const char *text);

int  zg_log_level (void);
bool zg_log_enabled (int level);

void zg_log_write (int level, const char *format, ...)
    __attribute__ ((format (printf, 2, 3)));

#define zg_debug(...)   do { if (zg_log_enabled (ZG_LOG_DEBUG))   zg_log_write (ZG_LOG_DEBUG, __VA_ARGS__); } while (0)
#define zg_info(...)    do { if (zg_log_enabled (ZG_LOG_INFO))    zg_log_write (ZG_LOG_INFO, __VA_ARGS__); } while (0)
#define zg_warning(...) do { if (zg_log_enabled (ZG_LOG_WARNING)) zg_log_write (ZG_LOG_WARNING, __VA_ARGS__); } while (0)
#define zg_error(...)   zg_log_write (ZG_LOG_ERROR, __VA_ARGS__)

//  One access line, in the reference's form. reason: "OK", "Not Found"...
void zg_log_access (const char *client_ip, int client_port, const char *method,
                    const char *path, int status);

//  The reason phrase of an HTTP status ("OK", "Bad Request", ...)
const char *zg_http_reason (int status);

//  Mask secrets in text, in place: "sk-abcdef123456" -> "sk-...3456",
//  "Bearer xyz..." -> "Bearer ****".
void zg_log_redact (char *text);

//  Self test
void zg_log_test (bool verbose);

#ifdef __cplusplus
}
#endif

#endif
