/*  =========================================================================
    zg_provider - the table of upstream APIs, and helpers they share
    =========================================================================
*/
#include "workers/zg_provider.h"

#include <stdio.h>
#include <string.h>

//  Provider names as LiteLLM spells them, and the table that serves each
static const struct {
    const char *name;
    const zg_provider_t *provider;
} s_providers [] = {
    { "openai",                 &zg_provider_openai },
    { "text-completion-openai", &zg_provider_openai },
    { "custom_openai",          &zg_provider_openai },
    { "openai_like",            &zg_provider_openai },
    { "hosted_vllm",            &zg_provider_openai },
};

const zg_provider_t *
zg_provider_find (const char *provider)
{
    if (!provider)
        return NULL;
    for (size_t index = 0; index < sizeof (s_providers) / sizeof (s_providers [0]); index++)
        if (strcmp (s_providers [index].name, provider) == 0)
            return s_providers [index].provider;
    return NULL;
}

void
zg_provider_format_seconds (uint32_t milliseconds, char *out, size_t size)
{
    if (milliseconds % 1000 == 0)
        snprintf (out, size, "%u.0", milliseconds / 1000);
    else
        snprintf (out, size, "%g", milliseconds / 1000.0);
}

bool
zg_provider_event_data (const char *event, size_t size,
                        const char **data, size_t *data_size)
{
    bool found = false;
    size_t line = 0;
    while (line < size) {
        size_t end = line;
        while (end < size && event [end] != '\n' && event [end] != '\r')
            end++;
        if (end - line >= 5 && memcmp (event + line, "data:", 5) == 0) {
            if (found)
                return false;       //  multi-line data: not a single JSON text
            found = true;
            size_t start = line + 5;
            if (start < end && event [start] == ' ')
                start++;
            *data = event + start;
            *data_size = end - start;
        }
        //  Step over the line terminator: \r\n, \n or \r
        if (end < size && event [end] == '\r')
            end++;
        if (end < size && event [end] == '\n')
            end++;
        line = end;
    }
    return found;
}
