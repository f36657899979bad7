/*  =========================================================================
    zg_balancer - the routing strategy that picks a deployment of a group

    One interface, one file per strategy (zg_balancer_<strategy>.c). A
    strategy is a small table of functions; a balancer is one instance of a
    strategy for one model group, so a strategy that keeps state (in-flight
    counts, latencies, failures) keeps it per group. The router calls pick
    for every dispatch and feedback when a call ends, so that later
    strategies can let outcomes shape the next choice.

    Randomness comes from a zg_rng_t the caller owns: the router seeds one
    per process; tests seed it with a constant to be deterministic.
    =========================================================================
*/
#ifndef ZG_BALANCER_H_INCLUDED
#define ZG_BALANCER_H_INCLUDED

#include "common/zg_config.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

//  A small, fast generator (splitmix64): good enough to spread load, not
//  for anything secret
typedef struct {
    uint64_t state;
} zg_rng_t;

void     zg_rng_seed (zg_rng_t *self, uint64_t seed);
uint64_t zg_rng_next (zg_rng_t *self);
//  Uniform in [0, 1)
double   zg_rng_uniform (zg_rng_t *self);

//  How a call on a deployment ended
typedef enum {
    ZG_OUTCOME_SUCCESS = 0,     //  END with a status below 400
    ZG_OUTCOME_FAILURE = 1,     //  an upstream error (ERROR, or END with a 4xx/5xx)
    ZG_OUTCOME_TIMEOUT = 2      //  no answer within the deadline
} zg_outcome_t;

typedef struct _zg_balancer_t zg_balancer_t;

//  A strategy: what each balancer of that kind can do
typedef struct {
    const char *name;           //  routing_strategy value, e.g. "simple-shuffle"
    //  A balancer for a group of count deployments (in the order pick
    //  will see them). Returns NULL if memory runs out.
    zg_balancer_t *(*create) (const zg_deployment_t *const *deployments, size_t count);
    void (*destroy) (zg_balancer_t *self);
    //  Index of the chosen deployment in deployments[0..count), skipping
    //  those whose excluded[] is true (excluded may be NULL); -1 when every
    //  deployment is excluded or count is 0.
    int (*pick) (zg_balancer_t *self, const zg_deployment_t *const *deployments,
                 size_t count, const bool *excluded, zg_rng_t *rng);
    //  Optional (may be NULL): the outcome of a call on deployments[index]
    void (*feedback) (zg_balancer_t *self, size_t index, zg_outcome_t outcome,
                      uint64_t latency_us);
} zg_balancer_strategy_t;

//  Every balancer starts with this, so the generic calls find their strategy
struct _zg_balancer_t {
    const zg_balancer_strategy_t *strategy;
};

//  The strategies zgate implements
extern const zg_balancer_strategy_t zg_balancer_shuffle;

//  The strategy of a routing_strategy name, or NULL if zgate does not
//  implement it (NULL name: the default, simple-shuffle).
const zg_balancer_strategy_t *zg_balancer_strategy_find (const char *name);

//  Create a balancer of a strategy for a group. Returns NULL on failure.
zg_balancer_t *zg_balancer_new (const zg_balancer_strategy_t *strategy,
                                const zg_deployment_t *const *deployments, size_t count);

//  Destroy a balancer; *self_p becomes NULL. Safe on NULL.
void zg_balancer_destroy (zg_balancer_t **self_p);

int  zg_balancer_pick (zg_balancer_t *self, const zg_deployment_t *const *deployments,
                       size_t count, const bool *excluded, zg_rng_t *rng);

void zg_balancer_feedback (zg_balancer_t *self, size_t index, zg_outcome_t outcome,
                           uint64_t latency_us);

#ifdef __cplusplus
}
#endif
#endif
