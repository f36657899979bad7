/*  =========================================================================
    zg_prices - built-in USD prices per token of the common OpenAI models

    Source: LiteLLM's model_prices_and_context_window.json (BerriAI/litellm,
    main branch, commit 00035b69f416), the input_cost_per_token and
    output_cost_per_token of each "litellm_provider": "openai" entry, as
    published. o1-mini has since been retired from that file; its price is
    the one its last entry there carried (1.1e-06 / 4.4e-06, the same as
    o3-mini). Update this table from the same file when OpenAI changes a
    price; a deployment can always override it with its own
    input_cost_per_token / output_cost_per_token.
    =========================================================================
*/

#include "workers/zg_prices.h"
#include "common/zg_selftest.h"

#include <ctype.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

static const zg_price_t s_prices [] = {
    { "gpt-4o",                  2.5e-06,  1e-05 },
    { "gpt-4o-2024-05-13",       5e-06,    1.5e-05 },
    { "gpt-4o-mini",             1.5e-07,  6e-07 },
    { "gpt-4.1",                 2e-06,    8e-06 },
    { "gpt-4.1-mini",            4e-07,    1.6e-06 },
    { "gpt-4.1-nano",            1e-07,    4e-07 },
    { "o1",                      1.5e-05,  6e-05 },
    { "o1-mini",                 1.1e-06,  4.4e-06 },
    { "o3",                      2e-06,    8e-06 },
    { "o3-mini",                 1.1e-06,  4.4e-06 },
    { "o4-mini",                 1.1e-06,  4.4e-06 },
    { "gpt-4-turbo",             1e-05,    3e-05 },
    { "gpt-4-turbo-preview",     1e-05,    3e-05 },
    { "gpt-4-0125-preview",      1e-05,    3e-05 },
    { "gpt-4-1106-preview",      1e-05,    3e-05 },
    { "gpt-4",                   3e-05,    6e-05 },
    { "gpt-3.5-turbo",           5e-07,    1.5e-06 },
    { "gpt-3.5-turbo-1106",      1e-06,    2e-06 },
    { "gpt-3.5-turbo-16k",       3e-06,    4e-06 },
    { "text-embedding-3-small",  2e-08,    0 },
    { "text-embedding-3-large",  1.3e-07,  0 },
    { "text-embedding-ada-002",  1e-07,    0 },
};

#define PRICE_COUNT (sizeof (s_prices) / sizeof (s_prices [0]))

static const zg_price_t *
s_find (const char *name, size_t length)
{
    for (size_t index = 0; index < PRICE_COUNT; index++)
        if (strlen (s_prices [index].model) == length
        &&  memcmp (s_prices [index].model, name, length) == 0)
            return &s_prices [index];
    return NULL;
}

static bool
s_digits (const char *text, size_t count)
{
    for (size_t index = 0; index < count; index++)
        if (!isdigit ((unsigned char) text [index]))
            return false;
    return true;
}

//  The length of the name without its snapshot suffix: "-YYYY-MM-DD"
//  (gpt-4o-2024-08-06) or "-MMDD" (gpt-4-0613); the whole length if none
static size_t
s_family_length (const char *name, size_t length)
{
    if (length > 11) {
        const char *tail = name + length - 11;
        if (tail [0] == '-' && s_digits (tail + 1, 4) && tail [5] == '-'
        &&  s_digits (tail + 6, 2) && tail [8] == '-' && s_digits (tail + 9, 2))
            return length - 11;
    }
    if (length > 5) {
        const char *tail = name + length - 5;
        if (tail [0] == '-' && s_digits (tail + 1, 4))
            return length - 5;
    }
    return length;
}

const zg_price_t *
zg_prices_lookup (const char *upstream_model)
{
    if (!upstream_model || !*upstream_model)
        return NULL;
    size_t length = strlen (upstream_model);
    const zg_price_t *price = s_find (upstream_model, length);
    if (!price) {
        size_t family = s_family_length (upstream_model, length);
        if (family < length)
            price = s_find (upstream_model, family);
    }
    return price;
}

//  ---------------------------------------------------------------------
//  Self test

static void
s_check_price (const char *model, double input, double output)
{
    const zg_price_t *price = zg_prices_lookup (model);
    if (!price) {
        fprintf (stderr, "zg_prices: no price for %s\n", model);
        ZG_CHECK (price);
    }
    ZG_CHECK (fabs (price->input_cost_per_token - input) < 1e-15);
    ZG_CHECK (fabs (price->output_cost_per_token - output) < 1e-15);
}

void
zg_prices_test (bool verbose)
{
    if (verbose)
        printf (" * zg_prices: ");

    //  Every family the table promises, at LiteLLM's published price
    s_check_price ("gpt-4o", 2.5e-06, 1e-05);
    s_check_price ("gpt-4o-mini", 1.5e-07, 6e-07);
    s_check_price ("gpt-4.1", 2e-06, 8e-06);
    s_check_price ("gpt-4.1-mini", 4e-07, 1.6e-06);
    s_check_price ("gpt-4.1-nano", 1e-07, 4e-07);
    s_check_price ("o1", 1.5e-05, 6e-05);
    s_check_price ("o1-mini", 1.1e-06, 4.4e-06);
    s_check_price ("o3", 2e-06, 8e-06);
    s_check_price ("o3-mini", 1.1e-06, 4.4e-06);
    s_check_price ("o4-mini", 1.1e-06, 4.4e-06);
    s_check_price ("gpt-4-turbo", 1e-05, 3e-05);
    s_check_price ("gpt-4", 3e-05, 6e-05);
    s_check_price ("gpt-3.5-turbo", 5e-07, 1.5e-06);
    s_check_price ("text-embedding-3-small", 2e-08, 0);
    s_check_price ("text-embedding-3-large", 1.3e-07, 0);
    s_check_price ("text-embedding-ada-002", 1e-07, 0);

    //  Snapshots resolve to their family, not to a shorter prefix
    s_check_price ("gpt-4o-mini-2024-07-18", 1.5e-07, 6e-07);
    s_check_price ("gpt-4o-2024-08-06", 2.5e-06, 1e-05);
    s_check_price ("gpt-4.1-nano-2025-04-14", 1e-07, 4e-07);
    s_check_price ("o3-mini-2025-01-31", 1.1e-06, 4.4e-06);
    s_check_price ("o1-2024-12-17", 1.5e-05, 6e-05);
    s_check_price ("gpt-4-turbo-2024-04-09", 1e-05, 3e-05);
    s_check_price ("gpt-4-0613", 3e-05, 6e-05);
    s_check_price ("gpt-3.5-turbo-0125", 5e-07, 1.5e-06);
    //  ... except the snapshots priced unlike their family
    s_check_price ("gpt-4o-2024-05-13", 5e-06, 1.5e-05);
    s_check_price ("gpt-3.5-turbo-1106", 1e-06, 2e-06);

    //  Unknown names, look-alikes and malformed dates are not priced
    ZG_CHECK (zg_prices_lookup ("fake-model") == NULL);
    ZG_CHECK (zg_prices_lookup ("gpt-4o-turbo") == NULL);
    ZG_CHECK (zg_prices_lookup ("gpt-4o-") == NULL);
    ZG_CHECK (zg_prices_lookup ("GPT-4O") == NULL);
    ZG_CHECK (zg_prices_lookup ("gpt-4o-2024-0806") == NULL);
    ZG_CHECK (zg_prices_lookup ("gpt-4o-2024-08-0x") == NULL);
    ZG_CHECK (zg_prices_lookup ("gpt-5-2025-08-07") == NULL);
    ZG_CHECK (zg_prices_lookup ("-0613") == NULL);
    ZG_CHECK (zg_prices_lookup ("") == NULL);
    ZG_CHECK (zg_prices_lookup (NULL) == NULL);

    if (verbose)
        printf ("OK\n");
}
