/*  =========================================================================
    zg_dotenv - the `.env` file LiteLLM's proxy loads at start-up
    =========================================================================
*/
#include "supervisor/zg_dotenv.h"

#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

static char *
s_trim (char *text)
{
    while (*text == ' ' || *text == '\t')
        text++;
    char *end = text + strlen (text);
    while (end > text && (end [-1] == ' ' || end [-1] == '\t' || end [-1] == '\r' || end [-1] == '\n'))
        *--end = 0;
    return text;
}

static bool
s_valid_name (const char *name)
{
    if (!*name || isdigit ((unsigned char) *name))
        return false;
    for (const char *c = name; *c; c++)
        if (!isalnum ((unsigned char) *c) && *c != '_' && *c != '.' && *c != '-')
            return false;
    return true;
}

//  Parse the value in place; returns NULL if a quote is not closed
static char *
s_value (char *text)
{
    if (*text == '\'') {
        char *end = strchr (text + 1, '\'');
        if (!end)
            return NULL;
        *end = 0;
        return text + 1;
    }
    if (*text == '"') {
        char *out = text, *in = text + 1;
        for (; *in && *in != '"'; in++) {
            if (*in == '\\' && in [1]) {
                in++;
                *out++ = *in == 'n'? '\n': *in == 't'? '\t': *in == 'r'? '\r': *in;
            }
            else
                *out++ = *in;
        }
        if (*in != '"')
            return NULL;
        *out = 0;
        return text;
    }
    //  Bare value: " #" starts a comment, as python-dotenv reads it
    for (char *c = text; *c; c++)
        if (*c == '#' && (c == text || c [-1] == ' ' || c [-1] == '\t')) {
            *c = 0;
            break;
        }
    return s_trim (text);
}

int
zg_dotenv_load (const char *path)
{
    FILE *file = fopen (path, "r");
    if (!file)
        return errno == ENOENT? 0: -1;
    char line [8192];
    int count = 0, number = 0;
    while (fgets (line, sizeof (line), file)) {
        number++;
        char *text = s_trim (line);
        if (!*text || *text == '#')
            continue;
        if (strncmp (text, "export ", 7) == 0)
            text = s_trim (text + 7);
        char *eq = strchr (text, '=');
        if (!eq) {
            fprintf (stderr, "zgate: %s:%d: not NAME=VALUE; line skipped\n", path, number);
            continue;
        }
        *eq = 0;
        char *name = s_trim (text);
        char *value = s_value (s_trim (eq + 1));
        if (!s_valid_name (name) || !value) {
            fprintf (stderr, "zgate: %s:%d: %s; line skipped\n", path, number,
                     value? "not a valid variable name": "unterminated quote");
            continue;
        }
        //  Never override: the environment the operator set wins
        if (!getenv (name) && setenv (name, value, 0) == 0)
            count++;
    }
    fclose (file);
    return count;
}

int
zg_dotenv_load_for_mode (void)
{
    const char *mode = getenv ("LITELLM_MODE");
    if (mode && strcasecmp (mode, "PRODUCTION") == 0)
        return 0;
    return zg_dotenv_load (".env");
}
