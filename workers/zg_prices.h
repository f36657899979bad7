/*  =========================================================================
    zg_prices - built-in USD prices per token of the common OpenAI models

    The worker prices a call with the deployment's own input_cost_per_token
    and output_cost_per_token when the configuration sets them, and with
    this table otherwise, so that spend is not zero for a deployment that
    names a well-known model and says nothing of its price.

    A name is looked up as it is, then, if it ends in a snapshot date
    (gpt-4o-mini-2024-07-18, gpt-4-0613), as its family (gpt-4o-mini,
    gpt-4). Snapshots priced unlike their family (gpt-4o-2024-05-13) are
    in the table under their own name, so the exact match finds them first.
    =========================================================================
*/

#ifndef ZG_PRICES_H_INCLUDED
#define ZG_PRICES_H_INCLUDED

#include <stdbool.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
    const char *model;              //  the upstream model name
    double input_cost_per_token;    //  USD per prompt token
    double output_cost_per_token;   //  USD per completion token (0 for embeddings)
} zg_price_t;

//  The price of an upstream model (without its provider prefix), or NULL
//  when the table does not know it. The entry is static: never freed.
const zg_price_t *zg_prices_lookup (const char *upstream_model);

//  Self test
void zg_prices_test (bool verbose);

#ifdef __cplusplus
}
#endif

#endif
