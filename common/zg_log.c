/*  =========================================================================
    zg_log - logging as the reference does it

    Every line, plain or JSON, is assembled in memory and handed to one
    write(2) on stdout or stderr: the actors are separate processes sharing
    those descriptors, and one write per line is what keeps their lines from
    interleaving. Secrets are masked before anything is formatted for output.
    =========================================================================
*/

#include "common/zg_log.h"
#include "common/zg_selftest.h"
#include "common/zg_json.h"

#include <ctype.h>
#include <errno.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

//  A message longer than this is cut; a log line is not a data channel
#define s_MESSAGE_MAX (64 * 1024)

static struct {
    bool initialized;
    char component [64];
    int level;
    bool json;
    bool warned_bad_level;      //  LITELLM_LOG is wrong: say so once per process
} s_log;

static void s_emit (int level, const char *message, bool access);

static const char *
s_level_name (int level)
{
    if (level >= ZG_LOG_ERROR)
        return "ERROR";
    if (level >= ZG_LOG_WARNING)
        return "WARNING";
    if (level >= ZG_LOG_INFO)
        return "INFO";
    return "DEBUG";
}

int
zg_log_level_parse (const char *text)
{
    if (!text)
        return -1;
    if (strcasecmp (text, "DEBUG") == 0)
        return ZG_LOG_DEBUG;
    if (strcasecmp (text, "INFO") == 0)
        return ZG_LOG_INFO;
    //  WARN is Python logging's alias, which LITELLM_LOG also accepts
    if (strcasecmp (text, "WARNING") == 0 || strcasecmp (text, "WARN") == 0)
        return ZG_LOG_WARNING;
    if (strcasecmp (text, "ERROR") == 0)
        return ZG_LOG_ERROR;
    return -1;
}

void
zg_log_init (const char *component, bool verbose, bool json)
{
    snprintf (s_log.component, sizeof (s_log.component), "%s",
              component && *component? component: "zgate");
    s_log.json = json;
    s_log.level = verbose? ZG_LOG_DEBUG: ZG_LOG_INFO;
    s_log.initialized = true;
    tzset ();

    const char *wanted = getenv ("LITELLM_LOG");
    if (wanted && *wanted) {
        int level = zg_log_level_parse (wanted);
        if (level >= 0)
            s_log.level = level;
        else {
            s_log.level = ZG_LOG_INFO;
            if (!s_log.warned_bad_level) {
                s_log.warned_bad_level = true;
                char message [256];
                snprintf (message, sizeof (message),
                          "LITELLM_LOG=%.64s is not one of DEBUG, INFO, WARNING, ERROR; using INFO",
                          wanted);
                zg_log_redact (message);
                s_emit (ZG_LOG_WARNING, message, false);
            }
        }
    }
}

//  A process that logs before zg_log_init still gets sensible output
static void
s_ensure_init (void)
{
    if (!s_log.initialized) {
        const char *json = getenv ("JSON_LOGS");
        zg_log_init (NULL, false, json && strcmp (json, "true") == 0);
    }
}

int
zg_log_level (void)
{
    s_ensure_init ();
    return s_log.level;
}

bool
zg_log_enabled (int level)
{
    s_ensure_init ();
    return level >= s_log.level;
}

static void
s_write_all (int fd, const char *data, size_t size)
{
    while (size > 0) {
        ssize_t written = write (fd, data, size);
        if (written < 0) {
            if (errno == EINTR)
                continue;
            return;             //  nowhere left to report it
        }
        data += written;
        size -= (size_t) written;
    }
}

static void
s_emit (int level, const char *message, bool access)
{
    struct timespec now;
    clock_gettime (CLOCK_REALTIME, &now);
    struct tm local;
    localtime_r (&now.tv_sec, &local);

    size_t message_size = strlen (message);
    //  Worst case for JSON: every byte escaped as \u00XX, plus the frame
    size_t needed = 6 * message_size + sizeof (s_log.component) * 6 + 160;
    char stack [8192];
    char *line = needed <= sizeof (stack)? stack: malloc (needed);
    if (!line)
        return;
    size_t length = 0;

    if (s_log.json) {
        char timestamp [96];   /* room for any int the compiler can imagine */
        snprintf (timestamp, sizeof (timestamp), "%04d-%02d-%02dT%02d:%02d:%02d.%06ld",
                  local.tm_year + 1900, local.tm_mon + 1, local.tm_mday,
                  local.tm_hour, local.tm_min, local.tm_sec, (long) (now.tv_nsec / 1000) % 1000000);
        length += snprintf (line, needed, "{\"message\": ");
        int quoted = zg_json_quote (message, line + length, needed - length);
        if (quoted < 0)
            goto done;
        length += (size_t) quoted;
        length += snprintf (line + length, needed - length,
                            ", \"level\": \"%s\", \"timestamp\": \"%s\", \"component\": ",
                            s_level_name (level), timestamp);
        quoted = zg_json_quote (s_log.component, line + length, needed - length);
        if (quoted < 0)
            goto done;
        length += (size_t) quoted;
        length += snprintf (line + length, needed - length, "}\n");
    }
    else
    if (access)
        //  Uvicorn's form, with no prefix of our own
        length += snprintf (line, needed, "%s\n", message);
    else
        length += snprintf (line, needed, "%02d:%02d:%02d - %s:%s: %s\n",
                            local.tm_hour, local.tm_min, local.tm_sec,
                            s_log.component, s_level_name (level), message);
    if (length > needed - 1)
        length = needed - 1;
    s_write_all (level >= ZG_LOG_WARNING? STDERR_FILENO: STDOUT_FILENO, line, length);
done:
    if (line != stack)
        free (line);
}

void
zg_log_write (int level, const char *format, ...)
{
    s_ensure_init ();
    if (level < s_log.level || !format)
        return;
    char stack [4096];
    char *message = stack;
    va_list args;
    va_start (args, format);
    int size = vsnprintf (stack, sizeof (stack), format, args);
    va_end (args);
    if (size < 0)
        return;
    if ((size_t) size >= sizeof (stack)) {
        size_t wanted = (size_t) size < s_MESSAGE_MAX? (size_t) size + 1: s_MESSAGE_MAX;
        message = malloc (wanted);
        if (message) {
            va_start (args, format);
            vsnprintf (message, wanted, format, args);
            va_end (args);
        }
        else
            message = stack;    //  the truncated text is better than nothing
    }
    zg_log_redact (message);
    s_emit (level, message, false);
    if (message != stack)
        free (message);
}

void
zg_log_access (const char *client_ip, int client_port, const char *method,
               const char *path, int status)
{
    if (!zg_log_enabled (ZG_LOG_INFO))
        return;
    char line [2048];
    snprintf (line, sizeof (line), "INFO:     %s:%d - \"%s %s HTTP/1.1\" %d %s",
              client_ip? client_ip: "-", client_port, method? method: "-",
              path? path: "-", status, zg_http_reason (status));
    //  A request line with control characters must not forge log lines
    for (char *scan = line; *scan; scan++)
        if ((unsigned char) *scan < 0x20 || *scan == 0x7f)
            *scan = '?';
    zg_log_redact (line);
    s_emit (ZG_LOG_INFO, line, true);
}

const char *
zg_http_reason (int status)
{
    switch (status) {
        case 100: return "Continue";
        case 101: return "Switching Protocols";
        case 200: return "OK";
        case 201: return "Created";
        case 202: return "Accepted";
        case 204: return "No Content";
        case 206: return "Partial Content";
        case 301: return "Moved Permanently";
        case 302: return "Found";
        case 304: return "Not Modified";
        case 307: return "Temporary Redirect";
        case 308: return "Permanent Redirect";
        case 400: return "Bad Request";
        case 401: return "Unauthorized";
        case 402: return "Payment Required";
        case 403: return "Forbidden";
        case 404: return "Not Found";
        case 405: return "Method Not Allowed";
        case 406: return "Not Acceptable";
        case 408: return "Request Timeout";
        case 409: return "Conflict";
        case 410: return "Gone";
        case 411: return "Length Required";
        case 413: return "Request Entity Too Large";
        case 414: return "Request-URI Too Long";
        case 415: return "Unsupported Media Type";
        case 422: return "Unprocessable Entity";
        case 429: return "Too Many Requests";
        case 431: return "Request Header Fields Too Large";
        case 500: return "Internal Server Error";
        case 501: return "Not Implemented";
        case 502: return "Bad Gateway";
        case 503: return "Service Unavailable";
        case 504: return "Gateway Timeout";
        case 505: return "HTTP Version Not Supported";
        default:  break;
    }
    if (status >= 200 && status < 300)
        return "Success";
    if (status >= 300 && status < 400)
        return "Redirection";
    if (status >= 400 && status < 500)
        return "Client Error";
    if (status >= 500 && status < 600)
        return "Server Error";
    return "Unknown";
}


//  --------------------------------------------------------------------------
//  Redaction. The text is rewritten in place from left to right: every
//  replacement is no longer than what it replaces, so the write position
//  never passes the read position and nothing unread is overwritten.

static inline bool
s_is_token (unsigned char c)
{
    return isalnum (c) || c == '-' || c == '_';
}

//  Writes a mask for a secret of length bytes at out; returns its length
static size_t
s_mask (char *out, size_t length)
{
    size_t masked = length < 4? length: 4;
    memset (out, '*', masked);
    return masked;
}

static bool
s_starts_with_nocase (const char *text, size_t length, size_t pos, const char *word)
{
    size_t size = strlen (word);
    return length - pos >= size && strncasecmp (text + pos, word, size) == 0;
}

//  "sk-<token>" -> "sk-...<last 4>"; a short key is masked whole, since its
//  last four characters would be most of it.
static bool
s_redact_sk (char *text, size_t length, size_t *read, size_t *write)
{
    size_t pos = *read;
    if (length - pos < 4 || strncmp (text + pos, "sk-", 3) != 0)
        return false;
    size_t end = pos + 3;
    while (end < length && s_is_token ((unsigned char) text [end]))
        end++;
    size_t body = end - pos - 3;
    if (body == 0)
        return false;
    char tail [4];
    if (body >= 8)
        memcpy (tail, text + end - 4, 4);
    size_t out = *write;
    memmove (text + out, "sk-", 3);
    out += 3;
    if (body >= 8) {
        memcpy (text + out, "...", 3);
        memcpy (text + out + 3, tail, 4);
        out += 7;
    }
    else
    if (body >= 3) {
        memcpy (text + out, "...", 3);
        out += 3;
    }
    else
        out += s_mask (text + out, body);
    *read = end;
    *write = out;
    return true;
}

//  "Bearer <credential>" -> "Bearer ****"
static bool
s_redact_bearer (char *text, size_t length, size_t *read, size_t *write)
{
    size_t pos = *read;
    if (!s_starts_with_nocase (text, length, pos, "bearer "))
        return false;
    size_t value = pos + 6;
    while (value < length && text [value] == ' ')
        value++;
    size_t end = value;
    while (end < length && !isspace ((unsigned char) text [end])
    &&     text [end] != '"' && text [end] != '\'' && text [end] != ',')
        end++;
    if (end == value)
        return false;
    size_t prefix = value - pos;
    memmove (text + *write, text + pos, prefix);
    *write += prefix;
    *write += s_mask (text + *write, end - value);
    *read = end;
    return true;
}

//  The value of a secret-named key: api_key=..., "api_key": "...",
//  x-api-key: ..., 'master_key': '...', redis_password: ...
static bool
s_redact_named (char *text, size_t length, size_t *read, size_t *write)
{
    static const char *names [] = { "api_key", "api-key", "master_key", "password" };
    size_t pos = *read;
    size_t name_end = 0;
    for (size_t index = 0; index < sizeof (names) / sizeof (names [0]); index++)
        if (s_starts_with_nocase (text, length, pos, names [index])) {
            name_end = pos + strlen (names [index]);
            break;
        }
    if (name_end == 0)
        return false;
    size_t scan = name_end;
    if (scan < length && (text [scan] == '"' || text [scan] == '\''))
        scan++;
    while (scan < length && text [scan] == ' ')
        scan++;
    if (scan >= length || (text [scan] != '=' && text [scan] != ':'))
        return false;
    scan++;
    while (scan < length && text [scan] == ' ')
        scan++;
    char quote = 0;
    if (scan < length && (text [scan] == '"' || text [scan] == '\''))
        quote = text [scan++];
    size_t value = scan;
    size_t end = value;
    if (quote)
        while (end < length && text [end] != quote)
            end += (text [end] == '\\' && end + 1 < length)? 2: 1;
    else
        while (end < length && !isspace ((unsigned char) text [end]) && !strchr (",;&\"'})]", text [end]))
            end++;
    if (end > length)
        end = length;
    //  A reference to the environment is not the secret itself
    if (end == value || (end - value >= 11 && strncmp (text + value, "os.environ/", 11) == 0))
        return false;
    size_t prefix = value - pos;
    memmove (text + *write, text + pos, prefix);
    *write += prefix;
    *write += s_mask (text + *write, end - value);
    *read = end;
    return true;
}

//  "scheme://user:password@host" -> "scheme://user:****@host"
static bool
s_redact_userinfo (char *text, size_t length, size_t *read, size_t *write)
{
    size_t pos = *read;
    if (length - pos < 3 || strncmp (text + pos, "://", 3) != 0)
        return false;
    size_t scan = pos + 3;
    size_t colon = 0;
    while (scan < length && text [scan] != '@' && text [scan] != '/'
    &&     !isspace ((unsigned char) text [scan]) && text [scan] != '"' && text [scan] != '\'') {
        if (text [scan] == ':' && colon == 0)
            colon = scan;
        scan++;
    }
    if (scan >= length || text [scan] != '@' || colon == 0 || scan == colon + 1)
        return false;
    size_t prefix = colon + 1 - pos;
    memmove (text + *write, text + pos, prefix);
    *write += prefix;
    *write += s_mask (text + *write, scan - colon - 1);
    *read = scan;
    return true;
}

void
zg_log_redact (char *text)
{
    if (!text)
        return;
    size_t length = strlen (text);
    size_t read = 0, write = 0;
    //  The original bytes before read (the text there may be rewritten).
    //  A key starts a word; digits and escapes such as "\n" (JSON inside a
    //  message) or "%3D" (URL encoding) do not hide one.
    unsigned char previous = 0, before_previous = 0, third = 0;
    while (read < length) {
        unsigned char c = (unsigned char) text [read];
        bool boundary = !isalpha (previous) || before_previous == '\\'
                     || (third == '%' && isxdigit (before_previous) && isxdigit (previous));
        bool redacted = false;
        if (c == 's' && boundary)
            redacted = s_redact_sk (text, length, &read, &write);
        else
        if ((c == 'B' || c == 'b') && boundary)
            redacted = s_redact_bearer (text, length, &read, &write);
        else
        if (c == ':')
            redacted = s_redact_userinfo (text, length, &read, &write);
        if (!redacted && strchr ("aAmMpP", c))
            redacted = s_redact_named (text, length, &read, &write);
        if (redacted) {
            //  Every redaction ends inside a token or a value, so the byte
            //  before read was not a boundary
            third = before_previous = previous = 'x';
            continue;
        }
        text [write++] = (char) c;
        third = before_previous;
        before_previous = previous;
        previous = c;
        read++;
    }
    text [write] = 0;
}


//  --------------------------------------------------------------------------
//  Self test

#include <fcntl.h>
#include <sys/stat.h>
#include <sys/wait.h>


static void
s_check_redact (const char *input, const char *expected)
{
    char buffer [512];
    snprintf (buffer, sizeof (buffer), "%s", input);
    zg_log_redact (buffer);
    if (strcmp (buffer, expected) != 0)
        fprintf (stderr, "redact (%s) = %s, expected %s\n", input, buffer, expected);
    ZG_CHECK (strcmp (buffer, expected) == 0);
}

//  Captures stdout and stderr into two temporary files while the test logs
typedef struct {
    int saved [2];
    char path [2][64];
} s_capture_t;

static void
s_capture_start (s_capture_t *capture)
{
    fflush (stdout);
    fflush (stderr);
    for (int index = 0; index < 2; index++) {
        snprintf (capture->path [index], sizeof (capture->path [index]), "/tmp/zg_log_test_XXXXXX");
        int fd = mkstemp (capture->path [index]);
        ZG_CHECK (fd >= 0);
        int flags = fcntl (fd, F_GETFL);
        fcntl (fd, F_SETFL, flags | O_APPEND);
        capture->saved [index] = dup (index + 1);
        ZG_CHECK (capture->saved [index] >= 0);
        ZG_CHECK (dup2 (fd, index + 1) == index + 1);
        close (fd);
    }
}

//  Stops capturing; returns what was written to stdout (0) and stderr (1),
//  which the caller frees.
static void
s_capture_stop (s_capture_t *capture, char *output [2])
{
    for (int index = 0; index < 2; index++) {
        ZG_CHECK (dup2 (capture->saved [index], index + 1) == index + 1);
        close (capture->saved [index]);
        FILE *file = fopen (capture->path [index], "rb");
        ZG_CHECK (file);
        fseek (file, 0, SEEK_END);
        long size = ftell (file);
        fseek (file, 0, SEEK_SET);
        output [index] = malloc ((size_t) size + 1);
        ZG_CHECK (output [index]);
        ZG_CHECK (fread (output [index], 1, (size_t) size, file) == (size_t) size);
        output [index][size] = 0;
        fclose (file);
        unlink (capture->path [index]);
    }
}

static size_t
s_count_lines (const char *text)
{
    size_t lines = 0;
    for (; *text; text++)
        if (*text == '\n')
            lines++;
    return lines;
}

static bool
s_is_plain_time (const char *line)
{
    //  HH:MM:SS followed by " - "
    for (int index = 0; index < 8; index++)
        if (index == 2 || index == 5? line [index] != ':': !isdigit ((unsigned char) line [index]))
            return false;
    return strncmp (line + 8, " - ", 3) == 0;
}

//  Checks one JSON log line and returns its message in out
static void
s_check_json_line (const char *line, size_t size, const char *level, char *out, size_t out_size)
{
    zg_json_span_t span;
    char text [128];
    ZG_CHECK (zg_json_valid (line, size, NULL));
    ZG_CHECK (zg_json_find (line, size, "level", &span));
    ZG_CHECK (zg_json_string (line, &span, text, sizeof (text)) > 0 && strcmp (text, level) == 0);
    ZG_CHECK (zg_json_find (line, size, "component", &span));
    ZG_CHECK (zg_json_string (line, &span, text, sizeof (text)) > 0 && strcmp (text, "zgate.test") == 0);
    ZG_CHECK (zg_json_find (line, size, "timestamp", &span));
    ZG_CHECK (zg_json_string (line, &span, text, sizeof (text)) == 26);
    //  2026-11-24T16:02:11.123456
    const char *shape = "dddd-dd-ddTdd:dd:dd.dddddd";
    for (int index = 0; shape [index]; index++)
        ZG_CHECK (shape [index] == 'd'? isdigit ((unsigned char) text [index]) != 0: text [index] == shape [index]);
    ZG_CHECK (zg_json_find (line, size, "message", &span));
    ZG_CHECK (zg_json_string (line, &span, out, out_size) >= 0);
    //  The reference's key order
    ZG_CHECK (strncmp (line, "{\"message\": ", 12) == 0);
}

void
zg_log_test (bool verbose)
{
    printf (" * zg_log: ");

    //  Levels
    ZG_CHECK (zg_log_level_parse ("DEBUG") == ZG_LOG_DEBUG);
    ZG_CHECK (zg_log_level_parse ("info") == ZG_LOG_INFO);
    ZG_CHECK (zg_log_level_parse ("Warning") == ZG_LOG_WARNING);
    ZG_CHECK (zg_log_level_parse ("ERROR") == ZG_LOG_ERROR);
    ZG_CHECK (zg_log_level_parse ("LOUD") == -1);
    ZG_CHECK (zg_log_level_parse ("") == -1);
    ZG_CHECK (zg_log_level_parse (NULL) == -1);

    unsetenv ("LITELLM_LOG");
    zg_log_init ("zgate.test", false, false);
    ZG_CHECK (zg_log_level () == ZG_LOG_INFO);
    ZG_CHECK (!zg_log_enabled (ZG_LOG_DEBUG) && zg_log_enabled (ZG_LOG_INFO));
    zg_log_init ("zgate.test", true, false);
    ZG_CHECK (zg_log_level () == ZG_LOG_DEBUG);
    setenv ("LITELLM_LOG", "error", 1);
    zg_log_init ("zgate.test", true, false);        //  LITELLM_LOG wins over verbose
    ZG_CHECK (zg_log_level () == ZG_LOG_ERROR);
    ZG_CHECK (!zg_log_enabled (ZG_LOG_WARNING));

    //  Reason phrases
    ZG_CHECK (strcmp (zg_http_reason (200), "OK") == 0);
    ZG_CHECK (strcmp (zg_http_reason (201), "Created") == 0);
    ZG_CHECK (strcmp (zg_http_reason (204), "No Content") == 0);
    ZG_CHECK (strcmp (zg_http_reason (400), "Bad Request") == 0);
    ZG_CHECK (strcmp (zg_http_reason (401), "Unauthorized") == 0);
    ZG_CHECK (strcmp (zg_http_reason (403), "Forbidden") == 0);
    ZG_CHECK (strcmp (zg_http_reason (404), "Not Found") == 0);
    ZG_CHECK (strcmp (zg_http_reason (405), "Method Not Allowed") == 0);
    ZG_CHECK (strcmp (zg_http_reason (408), "Request Timeout") == 0);
    ZG_CHECK (strcmp (zg_http_reason (409), "Conflict") == 0);
    ZG_CHECK (strcmp (zg_http_reason (413), "Request Entity Too Large") == 0);
    ZG_CHECK (strcmp (zg_http_reason (422), "Unprocessable Entity") == 0);
    ZG_CHECK (strcmp (zg_http_reason (429), "Too Many Requests") == 0);
    ZG_CHECK (strcmp (zg_http_reason (500), "Internal Server Error") == 0);
    ZG_CHECK (strcmp (zg_http_reason (501), "Not Implemented") == 0);
    ZG_CHECK (strcmp (zg_http_reason (502), "Bad Gateway") == 0);
    ZG_CHECK (strcmp (zg_http_reason (503), "Service Unavailable") == 0);
    ZG_CHECK (strcmp (zg_http_reason (504), "Gateway Timeout") == 0);
    ZG_CHECK (strcmp (zg_http_reason (599), "Server Error") == 0);
    ZG_CHECK (strcmp (zg_http_reason (999), "Unknown") == 0);

    //  Redaction
    s_check_redact ("key sk-abcdef123456 used", "key sk-...3456 used");
    s_check_redact ("sk-1234", "sk-...");
    s_check_redact ("sk-12", "sk-**");
    s_check_redact ("sk-upstream-key", "sk-...-key");
    s_check_redact ("[sk-abcdefgh_ijkl,sk-zzzzzzzz9999]", "[sk-...ijkl,sk-...9999]");
    s_check_redact ("already sk-...3456 masked", "already sk-...3456 masked");
    s_check_redact ("task-1234 and disk-usage stay", "task-1234 and disk-usage stay");
    s_check_redact ("{\\\"key\\\":\\nsk-abcdef123456}", "{\\\"key\\\":\\nsk-...3456}");
    s_check_redact ("?key%3Dsk-abcdef123456", "?key%3Dsk-...3456");
    s_check_redact ("Authorization: Bearer sk-1234567890", "Authorization: Bearer ****");
    s_check_redact ("authorization: bearer abc", "authorization: bearer ***");
    s_check_redact ("{\"Authorization\": \"Bearer eyJhbGciOi.xyz\"}", "{\"Authorization\": \"Bearer ****\"}");
    s_check_redact ("Bearer", "Bearer");
    s_check_redact ("api_key=abcdef123&model=x", "api_key=****&model=x");
    s_check_redact ("{\"api_key\": \"secret-value\", \"model\": \"gpt\"}", "{\"api_key\": \"****\", \"model\": \"gpt\"}");
    s_check_redact ("{'api_key': 'secret-value'}", "{'api_key': '****'}");
    s_check_redact ("x-api-key: sk-1234", "x-api-key: ****");
    s_check_redact ("API-Key: hunter22", "API-Key: ****");
    s_check_redact ("openai_api_key=\"a\\\"bcdef\" next", "openai_api_key=\"****\" next");
    s_check_redact ("api_key: os.environ/OPENAI_API_KEY", "api_key: os.environ/OPENAI_API_KEY");
    s_check_redact ("master_key: sk-1234", "master_key: ****");
    s_check_redact ("postgresql://llm:dbpass@db:5432/litellm", "postgresql://llm:****@db:5432/litellm");
    s_check_redact ("http://host:8080/v1 stays", "http://host:8080/v1 stays");
    s_check_redact ("redis_password=abc", "redis_password=***");
    s_check_redact ("redis://:hunter2@cache:6379/0", "redis://:****@cache:6379/0");
    s_check_redact ("url redis://ops:hunter2@[::1]:7000 down", "url redis://ops:****@[::1]:7000 down");
    s_check_redact ("rediss://default:pw@cache", "rediss://default:**@cache");
    s_check_redact ("api_keys are fine", "api_keys are fine");
    s_check_redact ("", "");
    zg_log_redact (NULL);

    //  Plain lines: below WARNING to stdout, the rest to stderr; secrets
    //  masked; one line each
    unsetenv ("LITELLM_LOG");
    zg_log_init ("zgate.test", true, false);
    s_capture_t capture;
    char *output [2];
    s_capture_start (&capture);
    zg_debug ("debug %d", 1);
    zg_info ("info with key sk-abcdef123456 inside");
    zg_warning ("warning %s", "two");
    zg_error ("error: Bearer sk-verysecret");
    zg_log_access ("127.0.0.1", 54321, "POST", "/chat/completions", 200);
    s_capture_stop (&capture, output);
    ZG_CHECK (s_count_lines (output [0]) == 3);
    ZG_CHECK (s_count_lines (output [1]) == 2);
    ZG_CHECK (s_is_plain_time (output [0]));
    ZG_CHECK (strstr (output [0], " - zgate.test:DEBUG: debug 1\n"));
    ZG_CHECK (strstr (output [0], " - zgate.test:INFO: info with key sk-...3456 inside\n"));
    ZG_CHECK (!strstr (output [0], "sk-abcdef123456"));
    ZG_CHECK (strstr (output [0], "\nINFO:     127.0.0.1:54321 - \"POST /chat/completions HTTP/1.1\" 200 OK\n"));
    ZG_CHECK (s_is_plain_time (output [1]));
    ZG_CHECK (strstr (output [1], " - zgate.test:WARNING: warning two\n"));
    ZG_CHECK (strstr (output [1], " - zgate.test:ERROR: error: Bearer ****\n"));
    ZG_CHECK (!strstr (output [1], "verysecret"));
    free (output [0]);
    free (output [1]);

    //  Access lines are silent above INFO; a long message is not lost
    setenv ("LITELLM_LOG", "WARNING", 1);
    zg_log_init ("zgate.test", false, false);
    char *long_text = malloc (20000);
    ZG_CHECK (long_text);
    memset (long_text, 'x', 19999);
    long_text [19999] = 0;
    s_capture_start (&capture);
    zg_log_access ("127.0.0.1", 1, "GET", "/health", 200);
    zg_info ("not shown");
    zg_log_write (ZG_LOG_INFO, "not shown either");
    zg_warning ("%s", long_text);
    s_capture_stop (&capture, output);
    ZG_CHECK (output [0][0] == 0);
    ZG_CHECK (s_count_lines (output [1]) == 1);
    ZG_CHECK (strstr (output [1], long_text));
    free (output [0]);
    free (output [1]);

    //  JSON lines
    unsetenv ("LITELLM_LOG");
    zg_log_init ("zgate.test", false, true);
    s_capture_start (&capture);
    zg_info ("quote \" backslash \\ newline \n tab \t key sk-abcdef123456 done");
    zg_warning ("%s", long_text);
    zg_log_access ("127.0.0.1", 54321, "POST", "/chat/completions", 404);
    s_capture_stop (&capture, output);
    ZG_CHECK (s_count_lines (output [0]) == 2);
    ZG_CHECK (s_count_lines (output [1]) == 1);
    char *message = malloc (20001);
    ZG_CHECK (message);
    char *newline = strchr (output [0], '\n');
    s_check_json_line (output [0], newline - output [0], "INFO", message, 20001);
    ZG_CHECK (strcmp (message, "quote \" backslash \\ newline \n tab \t key sk-...3456 done") == 0);
    char *second = newline + 1;
    newline = strchr (second, '\n');
    s_check_json_line (second, newline - second, "INFO", message, 20001);
    ZG_CHECK (strcmp (message, "INFO:     127.0.0.1:54321 - \"POST /chat/completions HTTP/1.1\" 404 Not Found") == 0);
    s_check_json_line (output [1], strlen (output [1]) - 1, "WARNING", message, 20001);
    ZG_CHECK (strcmp (message, long_text) == 0);
    free (message);
    free (output [0]);
    free (output [1]);
    free (long_text);

    //  An invalid LITELLM_LOG: one warning per process, then INFO
    setenv ("LITELLM_LOG", "LOUD", 1);
    s_capture_start (&capture);
    zg_log_init ("zgate.test", true, false);
    zg_log_init ("zgate.test", true, false);
    s_capture_stop (&capture, output);
    ZG_CHECK (zg_log_level () == ZG_LOG_INFO);
    ZG_CHECK (output [0][0] == 0);
    ZG_CHECK (s_count_lines (output [1]) == 1);
    ZG_CHECK (strstr (output [1], ":WARNING: LITELLM_LOG=LOUD is not one of"));
    free (output [0]);
    free (output [1]);
    unsetenv ("LITELLM_LOG");

    //  Lines from concurrent processes never interleave
    zg_log_init ("zgate.test", false, false);
    s_capture_start (&capture);
    char filler [301];
    memset (filler, 'y', 300);
    filler [300] = 0;
    const int writers = 4, lines_each = 200;
    for (int writer = 0; writer < writers; writer++) {
        pid_t pid = fork ();
        ZG_CHECK (pid >= 0);
        if (pid == 0) {
            for (int line = 0; line < lines_each; line++)
                zg_info ("writer %d line %d %s end", writer, line, filler);
            _exit (0);
        }
    }
    for (int writer = 0; writer < writers; writer++) {
        int status;
        ZG_CHECK (wait (&status) > 0 && WIFEXITED (status) && WEXITSTATUS (status) == 0);
    }
    s_capture_stop (&capture, output);
    ZG_CHECK (s_count_lines (output [0]) == (size_t) (writers * lines_each));
    for (char *line = output [0]; *line; ) {
        char *end = strchr (line, '\n');
        ZG_CHECK (end);
        *end = 0;
        int writer, number;
        char tail [8];
        ZG_CHECK (s_is_plain_time (line));
        ZG_CHECK (sscanf (strstr (line, "INFO: ") + 6, "writer %d line %d %*s %7s", &writer, &number, tail) == 3);
        ZG_CHECK (strcmp (tail, "end") == 0);
        char expected [512];
        snprintf (expected, sizeof (expected), "%.8s - zgate.test:INFO: writer %d line %d %s end",
                  line, writer, number, filler);
        ZG_CHECK (strcmp (line, expected) == 0);
        line = end + 1;
    }
    free (output [0]);
    free (output [1]);

    if (verbose)
        printf ("(%d lines from %d processes) ", writers * lines_each, writers);
    printf ("OK\n");
}
