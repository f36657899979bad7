/*  =========================================================================
    zg_balancer - the routing strategy interface and the generator it uses

    Strategies live in their own files; this file only dispatches through
    the strategy table and knows which names map to which strategy.
    =========================================================================
*/
#include "router/zg_balancer.h"

#include <string.h>

void
zg_rng_seed (zg_rng_t *self, uint64_t seed)
{
    self->state = seed;
}

uint64_t
zg_rng_next (zg_rng_t *self)
{
    uint64_t value = (self->state += 0x9E3779B97F4A7C15ULL);
    value = (value ^ (value >> 30)) * 0xBF58476D1CE4E5B9ULL;
    value = (value ^ (value >> 27)) * 0x94D049BB133111EBULL;
    return value ^ (value >> 31);
}

double
zg_rng_uniform (zg_rng_t *self)
{
    //  53 random bits fill a double's mantissa exactly
    return (double) (zg_rng_next (self) >> 11) * (1.0 / 9007199254740992.0);
}

const zg_balancer_strategy_t *
zg_balancer_strategy_find (const char *name)
{
    if (!name || strcmp (name, zg_balancer_shuffle.name) == 0)
        return &zg_balancer_shuffle;
    return NULL;
}

zg_balancer_t *
zg_balancer_new (const zg_balancer_strategy_t *strategy,
                 const zg_deployment_t *const *deployments, size_t count)
{
    if (!strategy)
        return NULL;
    zg_balancer_t *self = strategy->create (deployments, count);
    if (self)
        self->strategy = strategy;
    return self;
}

void
zg_balancer_destroy (zg_balancer_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    zg_balancer_t *self = *self_p;
    self->strategy->destroy (self);
    *self_p = NULL;
}

int
zg_balancer_pick (zg_balancer_t *self, const zg_deployment_t *const *deployments,
                  size_t count, const bool *excluded, zg_rng_t *rng)
{
    return self->strategy->pick (self, deployments, count, excluded, rng);
}

void
zg_balancer_feedback (zg_balancer_t *self, size_t index, zg_outcome_t outcome,
                      uint64_t latency_us)
{
    if (self->strategy->feedback)
        self->strategy->feedback (self, index, outcome, latency_us);
}
