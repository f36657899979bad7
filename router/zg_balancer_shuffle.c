/*  =========================================================================
    zg_balancer_shuffle - LiteLLM's "simple-shuffle" routing strategy

    A random pick among the deployments still eligible, weighted by
    litellm_params.weight if any of them has one, else by rpm if any has
    one, else by tpm if any has one, else uniform. As in LiteLLM, a
    deployment without the deciding value weighs 0 next to those that have
    it. The strategy keeps no state: each pick reads the deployments.
    =========================================================================
*/
#include "router/zg_balancer.h"

#include <stdlib.h>

typedef enum {
    BY_WEIGHT,
    BY_RPM,
    BY_TPM,
    UNIFORM
} basis_t;

static double
s_value (const zg_deployment_t *deployment, basis_t basis)
{
    switch (basis) {
        case BY_WEIGHT: return deployment->weight > 0? deployment->weight: 0;
        case BY_RPM:    return deployment->rpm > 0? (double) deployment->rpm: 0;
        case BY_TPM:    return deployment->tpm > 0? (double) deployment->tpm: 0;
        default:        return 1;
    }
}

static zg_balancer_t *
s_create (const zg_deployment_t *const *deployments, size_t count)
{
    return (zg_balancer_t *) calloc (1, sizeof (zg_balancer_t));
}

static void
s_destroy (zg_balancer_t *self)
{
    free (self);
}

static int
s_pick (zg_balancer_t *self, const zg_deployment_t *const *deployments, size_t count,
        const bool *excluded, zg_rng_t *rng)
{
    //  The basis is chosen among the eligible deployments only, as LiteLLM
    //  chooses it among the healthy ones
    bool has [UNIFORM] = { false, false, false };
    size_t eligible = 0;
    for (size_t index = 0; index < count; index++) {
        if (excluded && excluded [index])
            continue;
        eligible++;
        for (int basis = BY_WEIGHT; basis < UNIFORM; basis++)
            if (s_value (deployments [index], (basis_t) basis) > 0)
                has [basis] = true;
    }
    if (eligible == 0)
        return -1;

    basis_t basis = has [BY_WEIGHT]? BY_WEIGHT:
                    has [BY_RPM]?    BY_RPM:
                    has [BY_TPM]?    BY_TPM: UNIFORM;
    double total = 0;
    for (size_t index = 0; index < count; index++)
        if (!(excluded && excluded [index]))
            total += s_value (deployments [index], basis);

    double target = zg_rng_uniform (rng) * total;
    int last = -1;
    for (size_t index = 0; index < count; index++) {
        if (excluded && excluded [index])
            continue;
        double value = s_value (deployments [index], basis);
        if (value <= 0)
            continue;
        last = (int) index;
        if (target < value)
            return (int) index;
        target -= value;
    }
    //  Rounding can leave a sliver past the last weight
    return last;
}

const zg_balancer_strategy_t zg_balancer_shuffle = {
    .name = "simple-shuffle",
    .create = s_create,
    .destroy = s_destroy,
    .pick = s_pick,
    .feedback = NULL
};
