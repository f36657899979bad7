/*  =========================================================================
    zg_dotenv - the `.env` file LiteLLM's proxy loads at start-up

    Unless LITELLM_MODE is PRODUCTION, LiteLLM reads `.env` in the working
    directory before anything else (python-dotenv's load_dotenv), never
    overriding a variable that is already set. zgate does the same, so a
    deployment that relies on it keeps working; in PRODUCTION the file is
    not read at all (production guide §5).

    Accepted lines: KEY=VALUE, `export KEY=VALUE`, blank lines and # comments;
    VALUE may be 'single-quoted' (taken as is), "double-quoted" (\n, \t, \"
    and \\ escapes) or bare (an unquoted " #" starts a comment). A line that
    is none of these is skipped with a warning naming the file and line.
    =========================================================================
*/
#ifndef ZG_DOTENV_H_INCLUDED
#define ZG_DOTENV_H_INCLUDED

#include <stdbool.h>
#include <stddef.h>

//  Load path into the environment without overriding what is set. Returns
//  the number of variables set, 0 when the file does not exist, -1 when it
//  exists but cannot be read. Warnings go to stderr (logging is not set up
//  this early).
int zg_dotenv_load (const char *path);

//  Load ./.env unless LITELLM_MODE is PRODUCTION (any case). Returns what
//  zg_dotenv_load returns, or 0 in PRODUCTION.
int zg_dotenv_load_for_mode (void);

#endif
