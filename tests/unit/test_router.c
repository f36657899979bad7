//  Tests the balancer strategies and the router as a broker: the router
//  runs in a child process on ipc:// endpoints in a temporary directory,
//  and this process plays a frontend and fake workers. -v for details.

#include "router/zg_router.h"
#include "router/zg_balancer.h"
#include "proto/zg_msg.h"
#include "common/zg_config.h"
#include "common/zg_log.h"

#include <czmq.h>
#include <dirent.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static bool s_verbose;
static int s_passed;
static int s_failed;

#define CHECK(cond) s_check ((cond), #cond, __FILE__, __LINE__)

static bool
s_check (bool ok, const char *text, const char *file, int line)
{
    if (ok)
        s_passed++;
    else {
        s_failed++;
        fprintf (stderr, "FAIL %s:%d: %s\n", file, line, text);
    }
    return ok;
}

//  ---------------------------------------------------------------------
//  Balancer

static zg_deployment_t
s_deployment (double weight, long rpm, long tpm)
{
    zg_deployment_t deployment;
    memset (&deployment, 0, sizeof (deployment));
    deployment.weight = weight;
    deployment.rpm = rpm;
    deployment.tpm = tpm;
    deployment.input_cost_per_token = -1;
    deployment.output_cost_per_token = -1;
    deployment.max_retries = -1;
    return deployment;
}

//  Picks many times and checks each deployment's share against expected[]
static void
s_check_shares (const char *what, zg_deployment_t *deployments, size_t count,
                const bool *excluded, const double *expected)
{
    const zg_deployment_t *members [8];
    for (size_t index = 0; index < count; index++)
        members [index] = &deployments [index];
    zg_balancer_t *balancer = zg_balancer_new (&zg_balancer_shuffle, members, count);
    if (!CHECK (balancer))
        return;
    zg_rng_t rng;
    zg_rng_seed (&rng, 42);
    size_t hits [8] = { 0 };
    const int picks = 40000;
    bool in_range = true;
    for (int pick = 0; pick < picks; pick++) {
        int index = zg_balancer_pick (balancer, members, count, excluded, &rng);
        if (index < 0 || (size_t) index >= count) {
            in_range = false;
            break;
        }
        hits [index]++;
    }
    CHECK (in_range);
    for (size_t index = 0; index < count; index++) {
        double share = (double) hits [index] / picks;
        if (s_verbose)
            printf ("  %s: deployment %zu: %.4f (expected %.4f)\n", what, index, share,
                    expected [index]);
        if (!CHECK (fabs (share - expected [index]) <= 0.02))
            fprintf (stderr, "  %s: deployment %zu: share %.4f, expected %.4f\n", what,
                     index, share, expected [index]);
    }
    zg_balancer_feedback (balancer, 0, ZG_OUTCOME_SUCCESS, 1000);   //  a no-op here
    zg_balancer_destroy (&balancer);
    CHECK (balancer == NULL);
    zg_balancer_destroy (&balancer);
}

static void
s_test_balancer (void)
{
    CHECK (zg_balancer_strategy_find ("simple-shuffle") == &zg_balancer_shuffle);
    CHECK (zg_balancer_strategy_find (NULL) == &zg_balancer_shuffle);
    CHECK (zg_balancer_strategy_find ("latency-based-routing") == NULL);

    //  weight 1:3
    zg_deployment_t weighted [2] = { s_deployment (1, 0, 0), s_deployment (3, 0, 0) };
    s_check_shares ("weight 1:3", weighted, 2, NULL, (double []) { 0.25, 0.75 });

    //  weight decides over rpm; a deployment without weight is never picked
    zg_deployment_t mixed [3] = {
        s_deployment (2, 1000, 0), s_deployment (0, 9000, 0), s_deployment (2, 0, 0)
    };
    s_check_shares ("weight over rpm", mixed, 3, NULL, (double []) { 0.5, 0, 0.5 });

    //  rpm 100:300:600
    zg_deployment_t by_rpm [3] = {
        s_deployment (0, 100, 5), s_deployment (0, 300, 0), s_deployment (0, 600, 0)
    };
    s_check_shares ("rpm", by_rpm, 3, NULL, (double []) { 0.1, 0.3, 0.6 });

    //  tpm only
    zg_deployment_t by_tpm [2] = { s_deployment (0, 0, 40000), s_deployment (0, 0, 60000) };
    s_check_shares ("tpm", by_tpm, 2, NULL, (double []) { 0.4, 0.6 });

    //  nothing set: uniform
    zg_deployment_t plain [4] = {
        s_deployment (0, 0, 0), s_deployment (0, 0, 0), s_deployment (0, 0, 0),
        s_deployment (0, 0, 0)
    };
    s_check_shares ("uniform", plain, 4, NULL, (double []) { 0.25, 0.25, 0.25, 0.25 });

    //  excluded deployments are never picked; the basis is chosen among the rest
    bool excluded [4] = { false, true, false, false };
    s_check_shares ("uniform, one excluded", plain, 4, excluded,
                    (double []) { 1.0 / 3, 0, 1.0 / 3, 1.0 / 3 });
    bool skip_heavy [2] = { false, true };
    s_check_shares ("weight, heavy excluded", weighted, 2, skip_heavy, (double []) { 1, 0 });
    zg_deployment_t only_other_weighted [2] = { s_deployment (0, 0, 0), s_deployment (5, 0, 0) };
    s_check_shares ("weighted one excluded: uniform rest", only_other_weighted, 2, skip_heavy,
                    (double []) { 1, 0 });

    //  nothing to pick
    const zg_deployment_t *members [2] = { &weighted [0], &weighted [1] };
    zg_balancer_t *balancer = zg_balancer_new (&zg_balancer_shuffle, members, 2);
    zg_rng_t rng;
    zg_rng_seed (&rng, 7);
    bool all [2] = { true, true };
    CHECK (zg_balancer_pick (balancer, members, 2, all, &rng) == -1);
    CHECK (zg_balancer_pick (balancer, members, 0, NULL, &rng) == -1);

    //  a fixed seed gives a fixed sequence
    zg_rng_t first, second;
    zg_rng_seed (&first, 1234);
    zg_rng_seed (&second, 1234);
    bool same = true;
    for (int pick = 0; pick < 1000; pick++)
        if (zg_balancer_pick (balancer, members, 2, NULL, &first)
        !=  zg_balancer_pick (balancer, members, 2, NULL, &second))
            same = false;
    CHECK (same);
    zg_balancer_destroy (&balancer);

    double low = 1, high = 0;
    for (int draw = 0; draw < 10000; draw++) {
        double value = zg_rng_uniform (&rng);
        low = value < low? value: low;
        high = value > high? value: high;
    }
    CHECK (low >= 0 && low < 0.01 && high < 1 && high > 0.99);
}

//  ---------------------------------------------------------------------
//  The broker, end to end

#define HEARTBEAT_MS    500
#define QUEUE_TIMEOUT   200
#define SAFETY_MS       5000

typedef struct {
    zsock_t *sock;
    const char *name;
    bool alive;             //  heartbeats while the test waits
} peer_t;

static peer_t *s_peers [16];
static size_t s_peer_count;
static int64_t s_last_beat;

static void
s_heartbeat (peer_t *peer)
{
    zg_msg_t msg;
    zg_msg_init (&msg, ZG_MSG_HEARTBEAT);
    ZG_MSG_SET (msg.name, peer->name);
    msg.pid = (uint32_t) getpid ();
    zg_msg_send (&msg, zsock_resolve (peer->sock));
    zg_msg_reset (&msg, 0);
}

//  Live peers heartbeat well within the router's liveness window
static void
s_beat (void)
{
    int64_t now = zclock_mono ();
    if (now - s_last_beat < HEARTBEAT_MS / 5)
        return;
    s_last_beat = now;
    for (size_t index = 0; index < s_peer_count; index++)
        if (s_peers [index]->alive)
            s_heartbeat (s_peers [index]);
}

//  The next message on one of peers[] that is not a router HEARTBEAT
//  (unless heartbeats are wanted). Returns the index of the peer that got
//  it, or -1 if nothing came within timeout_ms.
static int
s_expect_any (peer_t **peers, size_t count, zg_msg_t *msg, bool heartbeats, int timeout_ms)
{
    int64_t end = zclock_mono () + timeout_ms;
    while (true) {
        s_beat ();
        for (size_t index = 0; index < count; index++) {
            while (zsock_events (peers [index]->sock) & ZMQ_POLLIN) {
                zg_msg_reset (msg, 0);
                int rc = zg_msg_recv (msg, zsock_resolve (peers [index]->sock));
                if (rc != ZG_MSG_OK) {
                    fprintf (stderr, "  %s: unreadable message (%d)\n", peers [index]->name, rc);
                    continue;
                }
                if (msg->type == ZG_MSG_HEARTBEAT && !heartbeats)
                    continue;
                if (s_verbose)
                    printf ("  %s <- %s %s\n", peers [index]->name,
                            zg_msg_type_name (msg->type), msg->call_id);
                return (int) index;
            }
        }
        int64_t left = end - zclock_mono ();
        if (left <= 0)
            return -1;
        zmq_pollitem_t items [8];
        for (size_t index = 0; index < count; index++)
            items [index] = (zmq_pollitem_t) { zsock_resolve (peers [index]->sock), 0,
                                               ZMQ_POLLIN, 0 };
        zmq_poll (items, (int) count, left < 20? left: 20);
    }
}

static bool
s_expect (peer_t *peer, zg_msg_t *msg, int type, const char *call_id, int timeout_ms)
{
    if (s_expect_any (&peer, 1, msg, type == ZG_MSG_HEARTBEAT, timeout_ms) != 0) {
        fprintf (stderr, "  %s: no %s %s in time\n", peer->name, zg_msg_type_name (type),
                 call_id? call_id: "");
        return false;
    }
    if (msg->type != type || (call_id && strcmp (msg->call_id, call_id))) {
        fprintf (stderr, "  %s: got %s %s, expected %s %s (%s)\n", peer->name,
                 zg_msg_type_name (msg->type), msg->call_id, zg_msg_type_name (type),
                 call_id? call_id: "", msg->message);
        return false;
    }
    return true;
}

//  Nothing but heartbeats for a while. This can only miss a stray message,
//  never fail a correct router.
static bool
s_expect_nothing (peer_t *peer, zg_msg_t *msg, int quiet_ms)
{
    if (s_expect_any (&peer, 1, msg, false, quiet_ms) < 0)
        return true;
    fprintf (stderr, "  %s: unexpected %s %s\n", peer->name, zg_msg_type_name (msg->type),
             msg->call_id);
    return false;
}

static bool
s_payload_is (const zg_msg_t *msg, const char *text)
{
    return zg_msg_has_payload (msg) && zg_msg_payload_size (msg) == strlen (text)
        && memcmp (zg_msg_payload_data (msg), text, strlen (text)) == 0;
}

//  A REQUEST; model_span and options_span, if not both 0, as a frontend
//  located them in body
static void
s_send_request_spans (peer_t *peer, const char *call_id, const char *model, int route,
                      uint32_t timeout_ms, const char *body, uint64_t model_span,
                      uint64_t options_span)
{
    zg_msg_t msg;
    zg_msg_init (&msg, ZG_MSG_REQUEST);
    ZG_MSG_SET (msg.call_id, call_id);
    ZG_MSG_SET (msg.model, model);
    msg.route = (uint8_t) route;
    msg.flags = ZG_FLAG_STREAM;
    msg.timeout_ms = timeout_ms;
    if (model_span || options_span) {
        msg.flags |= ZG_FLAG_BODY_LOCATED;
        msg.model_span = model_span;
        msg.options_span = options_span;
    }
    zg_msg_payload_borrow (&msg, body, strlen (body));
    CHECK (zg_msg_send (&msg, zsock_resolve (peer->sock)) == 0);
    zg_msg_reset (&msg, 0);
}

static void
s_send_request (peer_t *peer, const char *call_id, const char *model, int route,
                uint32_t timeout_ms, const char *body)
{
    s_send_request_spans (peer, call_id, model, route, timeout_ms, body, 0, 0);
}

static void
s_send_simple (peer_t *peer, int type, const char *call_id, uint32_t number)
{
    zg_msg_t msg;
    zg_msg_init (&msg, type);
    if (call_id)
        ZG_MSG_SET (msg.call_id, call_id);
    if (type == ZG_MSG_READY || type == ZG_MSG_RETIRE) {
        ZG_MSG_SET (msg.name, peer->name);
        msg.pid = (uint32_t) getpid ();
        msg.capacity = number;
    }
    if (type == ZG_MSG_CREDIT)
        msg.credit = number;
    CHECK (zg_msg_send (&msg, zsock_resolve (peer->sock)) == 0);
    zg_msg_reset (&msg, 0);
}

static void
s_send_reply (peer_t *worker, int type, const char *call_id, int status, uint32_t flags,
              const char *payload)
{
    zg_msg_t msg;
    zg_msg_init (&msg, type);
    ZG_MSG_SET (msg.call_id, call_id);
    msg.status = (uint16_t) status;
    msg.flags = flags;
    if (type == ZG_MSG_HEAD)
        ZG_MSG_SET (msg.content_type, "application/json");
    if (type == ZG_MSG_ERROR) {
        ZG_MSG_SET (msg.err_type, "internal_server_error");
        ZG_MSG_SET (msg.message, "upstream failed");
    }
    if (type == ZG_MSG_END || (type == ZG_MSG_HEAD && (flags & ZG_FLAG_FINAL)))
        msg.total_tokens = 7;
    if (payload)
        zg_msg_payload_borrow (&msg, payload, strlen (payload));
    CHECK (zg_msg_send (&msg, zsock_resolve (worker->sock)) == 0);
    zg_msg_reset (&msg, 0);
}

//  A worker is registered once the router heartbeats it
static bool
s_join (peer_t *worker, uint32_t capacity, zg_msg_t *msg)
{
    s_send_simple (worker, ZG_MSG_READY, NULL, capacity);
    return s_expect (worker, msg, ZG_MSG_HEARTBEAT, NULL, SAFETY_MS)
        && streq (msg->name, "router");
}

static peer_t *
s_peer_new (const char *name, const char *endpoint, bool alive)
{
    peer_t *peer = (peer_t *) zmalloc (sizeof (peer_t));
    peer->sock = zsock_new (ZMQ_DEALER);
    assert (peer->sock);
    peer->name = name;
    peer->alive = alive;
    zsock_set_identity (peer->sock, name);
    zsock_set_linger (peer->sock, 0);
    CHECK (zsock_connect (peer->sock, "%s", endpoint) == 0);
    assert (s_peer_count < 16);
    s_peers [s_peer_count++] = peer;
    return peer;
}

static void
s_test_broker (const char *frontend_ep, const char *worker_ep)
{
    zg_msg_t msg;
    zg_msg_init (&msg, 0);
    peer_t *frontend = s_peer_new ("frontend-1", frontend_ep, true);

    //  A frontend's heartbeat is answered
    s_heartbeat (frontend);
    CHECK (s_expect (frontend, &msg, ZG_MSG_HEARTBEAT, NULL, SAFETY_MS));
    CHECK (streq (msg.name, "router") && msg.pid > 0);

    //  LIST: one DEPLOYMENT per deployment, in order, without credentials
    s_send_simple (frontend, ZG_MSG_LIST, "l1", 0);
    if (CHECK (s_expect (frontend, &msg, ZG_MSG_DEPLOYMENT, "l1", SAFETY_MS))) {
        CHECK (msg.index == 0 && msg.count == 2);
        CHECK (streq (msg.model, "gpt-4o") && streq (msg.deployment_id, "dep-a"));
        CHECK (streq (msg.provider, "openai") && streq (msg.upstream_model, "gpt-4o-upstream"));
        CHECK (streq (msg.api_base, "http://127.0.0.1:9/v1"));
        CHECK (streq (msg.mode, "") && streq (msg.message, ""));
        CHECK (streq (msg.deployment.api_key, ""));
    }
    if (CHECK (s_expect (frontend, &msg, ZG_MSG_DEPLOYMENT, "l1", SAFETY_MS))) {
        CHECK (msg.index == 1 && msg.count == 2);
        CHECK (streq (msg.model, "embed") && strlen (msg.deployment_id) > 0);
        CHECK (streq (msg.upstream_model, "text-embedding-3-small"));
    }
    CHECK (s_expect_nothing (frontend, &msg, 100));

    //  Unknown model: 400 naming the route
    s_send_request (frontend, "u1", "no-such-model", ZG_ROUTE_CHAT, 0, "{}");
    if (CHECK (s_expect (frontend, &msg, ZG_MSG_ERROR, "u1", SAFETY_MS))) {
        CHECK (msg.status == 400);
        CHECK (streq (msg.err_type, "bad_request_error"));
        CHECK (streq (msg.param, "model"));
        CHECK (streq (msg.message, "/chat/completions: Invalid model name passed in "
                      "model=no-such-model. Call /v1/models to view available models for "
                      "your key."));
    }
    s_send_request (frontend, "u2", "nope", ZG_ROUTE_EMBEDDINGS, 0, "{}");
    if (CHECK (s_expect (frontend, &msg, ZG_MSG_ERROR, "u2", SAFETY_MS)))
        CHECK (strncmp (msg.message, "/embeddings: Invalid model name", 31) == 0);

    //  No worker: 503 once the request waited queue_timeout_ms
    int64_t sent = zclock_mono ();
    s_send_request (frontend, "q0", "gpt-4o", ZG_ROUTE_CHAT, 0, "{}");
    if (CHECK (s_expect (frontend, &msg, ZG_MSG_ERROR, "q0", SAFETY_MS))) {
        CHECK (zclock_mono () - sent >= QUEUE_TIMEOUT - 5);
        CHECK (msg.status == 503);
        CHECK (streq (msg.err_type, "service_unavailable"));
        CHECK (streq (msg.message,
                      "No worker available to take the request within 200 ms. Retry shortly."));
    }

    //  Queue full (max_queue 2): the third is refused at once
    s_send_request (frontend, "q1", "gpt-4o", ZG_ROUTE_CHAT, 0, "{}");
    s_send_request (frontend, "q2", "gpt-4o", ZG_ROUTE_CHAT, 0, "{}");
    s_send_request (frontend, "q3", "gpt-4o", ZG_ROUTE_CHAT, 0, "{}");
    if (CHECK (s_expect (frontend, &msg, ZG_MSG_ERROR, "q3", SAFETY_MS)))
        CHECK (msg.status == 503 && streq (msg.err_type, "service_unavailable"));
    CHECK (s_expect (frontend, &msg, ZG_MSG_ERROR, "q1", SAFETY_MS) && msg.status == 503);
    CHECK (s_expect (frontend, &msg, ZG_MSG_ERROR, "q2", SAFETY_MS) && msg.status == 503);

    //  A worker joins; a request goes to it and the answer comes back
    peer_t *worker_a = s_peer_new ("worker-a", worker_ep, true);
    CHECK (s_join (worker_a, 2, &msg));
    //  with the spans the frontend located in the body, as they came
    s_send_request_spans (frontend, "c1", "gpt-4o", ZG_ROUTE_CHAT, 1234, "{\"model\":\"gpt-4o\"}",
                          zg_msg_span (9, 8), 0);
    if (CHECK (s_expect (worker_a, &msg, ZG_MSG_DISPATCH, "c1", SAFETY_MS))) {
        CHECK (s_payload_is (&msg, "{\"model\":\"gpt-4o\"}"));
        CHECK (msg.model_span == zg_msg_span (9, 8) && msg.options_span == 0);
        CHECK (streq (msg.model, "gpt-4o"));
        CHECK (msg.route == ZG_ROUTE_CHAT);
        CHECK (msg.flags == (ZG_FLAG_STREAM | ZG_FLAG_BODY_LOCATED));
        CHECK (msg.timeout_ms == 1234);
        CHECK (msg.attempt == 0);
        CHECK (streq (msg.deployment.provider, "openai"));
        CHECK (streq (msg.deployment.upstream_model, "gpt-4o-upstream"));
        CHECK (streq (msg.deployment.api_base, "http://127.0.0.1:9/v1"));
        CHECK (streq (msg.deployment.api_key, "sk-test-key"));
        CHECK (streq (msg.deployment.id, "dep-a"));
        CHECK (msg.deployment.timeout_ms == 30000);
        CHECK (msg.deployment.stream_timeout_ms == 5000);
        CHECK (msg.deployment.input_cost_per_token < 0);
        CHECK (fabs (msg.deployment.output_cost_per_token - 0.002) < 1e-12);
    }
    //  A final HEAD is the whole answer, usage included: it ends the call
    s_send_reply (worker_a, ZG_MSG_HEAD, "c1", 200, ZG_FLAG_FINAL, "{\"id\":\"x\"}");
    s_send_simple (worker_a, ZG_MSG_CREDIT, NULL, 1);
    if (CHECK (s_expect (frontend, &msg, ZG_MSG_HEAD, "c1", SAFETY_MS))) {
        CHECK (msg.status == 200 && (msg.flags & ZG_FLAG_FINAL));
        CHECK (s_payload_is (&msg, "{\"id\":\"x\"}"));
        CHECK (streq (msg.content_type, "application/json"));
        CHECK (msg.total_tokens == 7);
    }

    //  Credit: capacity 2 takes two calls; the third waits for CREDIT
    s_send_request (frontend, "c2", "gpt-4o", ZG_ROUTE_CHAT, 0, "two");
    s_send_request (frontend, "c3", "gpt-4o", ZG_ROUTE_CHAT, 0, "three");
    CHECK (s_expect (worker_a, &msg, ZG_MSG_DISPATCH, "c2", SAFETY_MS));
    CHECK (s_expect (worker_a, &msg, ZG_MSG_DISPATCH, "c3", SAFETY_MS));
    s_send_request (frontend, "c4", "gpt-4o", ZG_ROUTE_CHAT, 0, "four");
    CHECK (s_expect_nothing (worker_a, &msg, 100));
    s_send_simple (worker_a, ZG_MSG_CREDIT, NULL, 1);
    if (CHECK (s_expect (worker_a, &msg, ZG_MSG_DISPATCH, "c4", SAFETY_MS)))
        CHECK (s_payload_is (&msg, "four"));
    //  Streams relayed frame by frame
    s_send_reply (worker_a, ZG_MSG_HEAD, "c2", 200, 0, NULL);
    s_send_reply (worker_a, ZG_MSG_CHUNK, "c2", 0, 0, "data: one\n\n");
    s_send_reply (worker_a, ZG_MSG_CHUNK, "c2", 0, 0, "data: two\n\n");
    s_send_reply (worker_a, ZG_MSG_END, "c2", 200, 0, NULL);
    CHECK (s_expect (frontend, &msg, ZG_MSG_HEAD, "c2", SAFETY_MS));
    CHECK (s_expect (frontend, &msg, ZG_MSG_CHUNK, "c2", SAFETY_MS)
           && s_payload_is (&msg, "data: one\n\n"));
    CHECK (s_expect (frontend, &msg, ZG_MSG_CHUNK, "c2", SAFETY_MS)
           && s_payload_is (&msg, "data: two\n\n"));
    CHECK (s_expect (frontend, &msg, ZG_MSG_END, "c2", SAFETY_MS));
    s_send_reply (worker_a, ZG_MSG_ERROR, "c3", 500, 0, NULL);
    if (CHECK (s_expect (frontend, &msg, ZG_MSG_ERROR, "c3", SAFETY_MS)))
        CHECK (msg.status == 500 && streq (msg.message, "upstream failed"));
    //  A message for a call that has ended is dropped
    s_send_reply (worker_a, ZG_MSG_CHUNK, "c3", 0, 0, "late");
    //  and so is an END after a final HEAD, which already ended its call
    s_send_reply (worker_a, ZG_MSG_HEAD, "c4", 200, ZG_FLAG_FINAL, "{}");
    s_send_reply (worker_a, ZG_MSG_END, "c4", 200, 0, NULL);
    CHECK (s_expect (frontend, &msg, ZG_MSG_HEAD, "c4", SAFETY_MS));
    CHECK (s_expect_nothing (frontend, &msg, 100));

    //  Credit never goes above capacity: 100 back still means 2 free
    s_send_simple (worker_a, ZG_MSG_CREDIT, NULL, 100);
    s_send_request (frontend, "k1", "gpt-4o", ZG_ROUTE_CHAT, 0, "k1");
    s_send_request (frontend, "k2", "gpt-4o", ZG_ROUTE_CHAT, 0, "k2");
    s_send_request (frontend, "k3", "gpt-4o", ZG_ROUTE_CHAT, 0, "k3");
    CHECK (s_expect (worker_a, &msg, ZG_MSG_DISPATCH, "k1", SAFETY_MS));
    CHECK (s_expect (worker_a, &msg, ZG_MSG_DISPATCH, "k2", SAFETY_MS));
    if (CHECK (s_expect (frontend, &msg, ZG_MSG_ERROR, "k3", SAFETY_MS)))
        CHECK (msg.status == 503);
    CHECK (s_expect_nothing (worker_a, &msg, 50));

    //  Duplicate call id of a live call
    s_send_request (frontend, "k1", "gpt-4o", ZG_ROUTE_CHAT, 0, "again");
    if (CHECK (s_expect (frontend, &msg, ZG_MSG_ERROR, "k1", SAFETY_MS))) {
        CHECK (msg.status == 400 && streq (msg.err_type, "bad_request_error"));
        CHECK (strstr (msg.message, "x-litellm-call-id") && strstr (msg.message, "in use"));
    }

    //  CANCEL goes to the worker; what the worker still sends is dropped
    s_send_simple (frontend, ZG_MSG_CANCEL, "k1", 0);
    CHECK (s_expect (worker_a, &msg, ZG_MSG_CANCEL, "k1", SAFETY_MS));
    s_send_reply (worker_a, ZG_MSG_CHUNK, "k1", 0, 0, "after cancel");
    s_send_reply (worker_a, ZG_MSG_END, "k2", 200, 0, NULL);
    CHECK (s_expect (frontend, &msg, ZG_MSG_END, "k2", SAFETY_MS));
    //  Credit comes back only through CREDIT: still none
    s_send_request (frontend, "k4", "gpt-4o", ZG_ROUTE_CHAT, 0, "k4");
    if (CHECK (s_expect (frontend, &msg, ZG_MSG_ERROR, "k4", SAFETY_MS)))
        CHECK (msg.status == 503);
    s_send_simple (worker_a, ZG_MSG_CREDIT, NULL, 2);

    //  A second worker: most free credit first, ties to the least recent
    peer_t *worker_b = s_peer_new ("worker-b", worker_ep, true);
    CHECK (s_join (worker_b, 2, &msg));
    peer_t *workers [2] = { worker_a, worker_b };
    s_send_request (frontend, "d1", "gpt-4o", ZG_ROUTE_CHAT, 0, "d1");
    int first = s_expect_any (workers, 2, &msg, false, SAFETY_MS);
    CHECK (first >= 0 && msg.type == ZG_MSG_DISPATCH && streq (msg.call_id, "d1"));
    s_send_request (frontend, "d2", "gpt-4o", ZG_ROUTE_CHAT, 0, "d2");
    int second = s_expect_any (workers, 2, &msg, false, SAFETY_MS);
    CHECK (second >= 0 && second != first && msg.type == ZG_MSG_DISPATCH
           && streq (msg.call_id, "d2"));
    const char *d3_body = "{\"x\":\"d3\",\"stream_options\":{},\"model\":\"gpt-4o\"}";
    s_send_request_spans (frontend, "d3", "gpt-4o", ZG_ROUTE_CHAT, 0, d3_body,
                          zg_msg_span (38, 8), zg_msg_span (27, 2));
    int third = s_expect_any (workers, 2, &msg, false, SAFETY_MS);
    CHECK (third == first && msg.type == ZG_MSG_DISPATCH && streq (msg.call_id, "d3"));
    if (first < 0 || second < 0 || first == second) {
        zg_msg_reset (&msg, 0);
        return;
    }

    //  The worker holding d1 (started) and d3 (not started) dies: d1 ends
    //  with an in-stream 502, d3 goes to the other worker
    peer_t *dying = workers [first];
    peer_t *survivor = workers [second];
    s_send_reply (dying, ZG_MSG_HEAD, "d1", 200, 0, NULL);
    s_send_reply (dying, ZG_MSG_CHUNK, "d1", 0, 0, "data: partial\n\n");
    CHECK (s_expect (frontend, &msg, ZG_MSG_HEAD, "d1", SAFETY_MS));
    CHECK (s_expect (frontend, &msg, ZG_MSG_CHUNK, "d1", SAFETY_MS));
    dying->alive = false;
    if (CHECK (s_expect (frontend, &msg, ZG_MSG_ERROR, "d1", SAFETY_MS))) {
        CHECK (msg.status == 502);
        CHECK (streq (msg.err_type, "api_connection_error"));
        //  ERROR carries no flags field on the wire (zg_msg.h): the frontend
        //  knows the call started from the HEAD it already relayed
        char expected [128];
        snprintf (expected, sizeof (expected), "worker %s stopped during the response",
                  dying->name);
        CHECK (streq (msg.message, expected));
    }
    if (CHECK (s_expect (survivor, &msg, ZG_MSG_DISPATCH, "d3", SAFETY_MS))) {
        CHECK (msg.attempt == 1);
        CHECK (s_payload_is (&msg, d3_body));
        CHECK (msg.flags & ZG_FLAG_BODY_LOCATED);
        CHECK (msg.model_span == zg_msg_span (38, 8) && msg.options_span == zg_msg_span (27, 2));
    }
    //  The expired worker is a stranger now
    s_heartbeat (dying);
    CHECK (s_expect (dying, &msg, ZG_MSG_DISCONNECT, NULL, SAFETY_MS));
    s_send_reply (dying, ZG_MSG_CHUNK, "d3", 0, 0, "stale");
    CHECK (s_expect (dying, &msg, ZG_MSG_DISCONNECT, NULL, SAFETY_MS));
    s_send_reply (survivor, ZG_MSG_END, "d2", 200, 0, NULL);
    s_send_reply (survivor, ZG_MSG_HEAD, "d3", 200, ZG_FLAG_FINAL, "d3 answer");
    s_send_simple (survivor, ZG_MSG_CREDIT, NULL, 2);
    CHECK (s_expect (frontend, &msg, ZG_MSG_END, "d2", SAFETY_MS));
    if (CHECK (s_expect (frontend, &msg, ZG_MSG_HEAD, "d3", SAFETY_MS)))
        CHECK (s_payload_is (&msg, "d3 answer"));

    //  A worker that never said READY is told to
    peer_t *stranger = s_peer_new ("stranger", worker_ep, false);
    s_send_simple (stranger, ZG_MSG_CREDIT, NULL, 1);
    CHECK (s_expect (stranger, &msg, ZG_MSG_DISCONNECT, NULL, SAFETY_MS));

    //  Malformed frames are dropped and the router serves on
    zstr_send (frontend->sock, "garbage");
    zstr_sendx (frontend->sock, "a", "b", "c", "d", NULL);
    {
        uint8_t header [256];
        zg_msg_t cancel;
        zg_msg_init (&cancel, ZG_MSG_CANCEL);
        ZG_MSG_SET (cancel.call_id, "m0");
        int size = zg_msg_encode (&cancel, header, sizeof (header));
        CHECK (size > 0);
        zmq_send (zsock_resolve (frontend->sock), header, (size_t) size, ZMQ_SNDMORE);
        zmq_send (zsock_resolve (frontend->sock), "no payload here", 15, 0);
        zg_msg_reset (&cancel, 0);
        zmq_send (zsock_resolve (frontend->sock), header, 3, 0);
        //  A REQUEST whose spans lie past its body: not dispatched, and
        //  no answer either, as for any malformed message
        zg_msg_t request;
        zg_msg_init (&request, ZG_MSG_REQUEST);
        ZG_MSG_SET (request.call_id, "m0");
        ZG_MSG_SET (request.model, "gpt-4o");
        request.route = ZG_ROUTE_CHAT;
        request.flags = ZG_FLAG_BODY_LOCATED;
        request.model_span = zg_msg_span (9, 8);
        size = zg_msg_encode (&request, header, sizeof (header));
        CHECK (size > 0);
        zmq_send (zsock_resolve (frontend->sock), header, (size_t) size, ZMQ_SNDMORE);
        zmq_send (zsock_resolve (frontend->sock), "{\"model\":\"gpt\"}", 15, 0);
        zg_msg_reset (&request, 0);
    }
    zstr_send (survivor->sock, "junk");
    zsock_send (survivor->sock, "b", "\x92\xa2ZG", (size_t) 4);
    s_heartbeat (frontend);
    CHECK (s_expect (frontend, &msg, ZG_MSG_HEARTBEAT, NULL, SAFETY_MS));
    s_send_request (frontend, "m1", "gpt-4o", ZG_ROUTE_CHAT, 0, "m1");
    CHECK (s_expect (survivor, &msg, ZG_MSG_DISPATCH, "m1", SAFETY_MS));
    s_send_reply (survivor, ZG_MSG_HEAD, "m1", 200, ZG_FLAG_FINAL, "{}");
    s_send_simple (survivor, ZG_MSG_CREDIT, NULL, 1);
    CHECK (s_expect (frontend, &msg, ZG_MSG_HEAD, "m1", SAFETY_MS));

    //  A frontend that goes silent has its calls cancelled
    peer_t *quiet = s_peer_new ("frontend-2", frontend_ep, false);
    s_send_request (quiet, "e1", "gpt-4o", ZG_ROUTE_CHAT, 0, "e1");
    CHECK (s_expect (survivor, &msg, ZG_MSG_DISPATCH, "e1", SAFETY_MS));
    CHECK (s_expect (survivor, &msg, ZG_MSG_CANCEL, "e1", SAFETY_MS));
    s_send_simple (survivor, ZG_MSG_CREDIT, NULL, 1);

    //  A call its worker forgets ends with 504 after its timeout plus the
    //  router's grace, and is cancelled at the worker
    s_send_request (frontend, "t1", "embed", ZG_ROUTE_EMBEDDINGS, 1, "t1");
    CHECK (s_expect (survivor, &msg, ZG_MSG_DISPATCH, "t1", SAFETY_MS));
    if (CHECK (s_expect (frontend, &msg, ZG_MSG_ERROR, "t1", 30000))) {
        CHECK (msg.status == 504);
        CHECK (streq (msg.err_type, "timeout"));
    }
    CHECK (s_expect (survivor, &msg, ZG_MSG_CANCEL, "t1", SAFETY_MS));
    s_send_simple (survivor, ZG_MSG_CREDIT, NULL, 1);

    //  Recycling: a worker that sends RETIRE is answered, gets no new
    //  call, has its replies relayed, and is forgotten once it holds none
    peer_t *fresh = s_peer_new ("worker-fresh", worker_ep, true);
    CHECK (s_join (fresh, 2, &msg));
    peer_t *pair [2] = { survivor, fresh };
    s_send_request (frontend, "r1", "gpt-4o", ZG_ROUTE_CHAT, 0, "r1");
    int held = s_expect_any (pair, 2, &msg, false, SAFETY_MS);
    if (!CHECK (held >= 0 && msg.type == ZG_MSG_DISPATCH && streq (msg.call_id, "r1"))) {
        zg_msg_reset (&msg, 0);
        return;
    }
    peer_t *retiring = pair [held];
    peer_t *staying = pair [1 - held];
    s_send_simple (retiring, ZG_MSG_RETIRE, NULL, 0);
    if (CHECK (s_expect (retiring, &msg, ZG_MSG_RETIRE, NULL, SAFETY_MS)))
        CHECK (streq (msg.name, "router") && msg.pid > 0);
    //  Credit it returns no longer counts
    s_send_simple (retiring, ZG_MSG_CREDIT, NULL, 2);
    s_send_request (frontend, "r2", "gpt-4o", ZG_ROUTE_CHAT, 0, "r2");
    CHECK (s_expect (staying, &msg, ZG_MSG_DISPATCH, "r2", SAFETY_MS));
    s_send_request (frontend, "r3", "gpt-4o", ZG_ROUTE_CHAT, 0, "r3");
    CHECK (s_expect (staying, &msg, ZG_MSG_DISPATCH, "r3", SAFETY_MS));
    CHECK (s_expect_nothing (retiring, &msg, 100));
    //  What it held still reaches the client
    s_send_reply (retiring, ZG_MSG_HEAD, "r1", 200, 0, NULL);
    s_send_reply (retiring, ZG_MSG_CHUNK, "r1", 0, 0, "data: last\n\n");
    s_send_reply (retiring, ZG_MSG_END, "r1", 200, 0, NULL);
    CHECK (s_expect (frontend, &msg, ZG_MSG_HEAD, "r1", SAFETY_MS));
    CHECK (s_expect (frontend, &msg, ZG_MSG_CHUNK, "r1", SAFETY_MS)
           && s_payload_is (&msg, "data: last\n\n"));
    CHECK (s_expect (frontend, &msg, ZG_MSG_END, "r1", SAFETY_MS));
    //  Its last call ended: the router forgot it
    retiring->alive = false;
    s_heartbeat (retiring);
    CHECK (s_expect (retiring, &msg, ZG_MSG_DISCONNECT, NULL, SAFETY_MS));
    s_send_reply (staying, ZG_MSG_HEAD, "r2", 200, ZG_FLAG_FINAL, "{}");
    CHECK (s_expect (frontend, &msg, ZG_MSG_HEAD, "r2", SAFETY_MS));
    //  A retiring worker's call cancelled by its client: forgotten too
    s_send_simple (staying, ZG_MSG_RETIRE, NULL, 0);
    CHECK (s_expect (staying, &msg, ZG_MSG_RETIRE, NULL, SAFETY_MS));
    s_send_simple (frontend, ZG_MSG_CANCEL, "r3", 0);
    CHECK (s_expect (staying, &msg, ZG_MSG_CANCEL, "r3", SAFETY_MS));
    staying->alive = false;
    s_heartbeat (staying);
    CHECK (s_expect (staying, &msg, ZG_MSG_DISCONNECT, NULL, SAFETY_MS));
    //  No worker takes work now: the queue times out
    s_send_request (frontend, "r4", "gpt-4o", ZG_ROUTE_CHAT, 0, "r4");
    if (CHECK (s_expect (frontend, &msg, ZG_MSG_ERROR, "r4", SAFETY_MS)))
        CHECK (msg.status == 503);
    //  A worker that retires holding nothing is forgotten at once
    peer_t *idle = s_peer_new ("worker-idle", worker_ep, false);
    CHECK (s_join (idle, 1, &msg));
    s_send_simple (idle, ZG_MSG_RETIRE, NULL, 0);
    CHECK (s_expect (idle, &msg, ZG_MSG_RETIRE, NULL, SAFETY_MS));
    s_heartbeat (idle);
    CHECK (s_expect (idle, &msg, ZG_MSG_DISCONNECT, NULL, SAFETY_MS));
    //  RETIRE from a stranger: DISCONNECT
    s_send_simple (stranger, ZG_MSG_RETIRE, NULL, 0);
    CHECK (s_expect (stranger, &msg, ZG_MSG_DISCONNECT, NULL, SAFETY_MS));

    zg_msg_reset (&msg, 0);
}

//  Closes the peers made since first, for a test that made its own
static void
s_peers_destroy_from (size_t first)
{
    for (size_t index = first; index < s_peer_count; index++) {
        zsock_destroy (&s_peers [index]->sock);
        free (s_peers [index]);
    }
    s_peer_count = first;
}

//  The router as an actor of this process, as the all-in-one mode runs it
//  beside the frontend: a frontend over inproc://, another over ipc://,
//  a worker over ipc://; a start that cannot bind reports it; $TERM stops
static void
s_test_actor (const zg_config_t *config, const char *dir)
{
    char frontends [PATH_MAX + 64], frontend_ep [PATH_MAX + 16], worker_ep [PATH_MAX + 16];
    snprintf (frontend_ep, sizeof (frontend_ep), "ipc://%s/actor-frontend.ipc", dir);
    snprintf (frontends, sizeof (frontends), "inproc://zg-router-test,%s", frontend_ep);
    snprintf (worker_ep, sizeof (worker_ep), "ipc://%s/actor-worker.ipc", dir);
    zactor_t *router = zg_router_start (config, frontends, worker_ep);
    if (!CHECK (router))
        return;
    //  The inproc endpoint is taken now: a second router cannot start
    CHECK (zg_router_start (config, "inproc://zg-router-test", worker_ep) == NULL);
    CHECK (zg_router_start (config, "inproc://zg-router-other",
                            "ipc:///nonexistent-zg-dir/worker.ipc") == NULL);

    zg_msg_t msg;
    zg_msg_init (&msg, 0);
    size_t first_peer = s_peer_count;
    peer_t *near = s_peer_new ("frontend-inproc", "inproc://zg-router-test", true);
    peer_t *far = s_peer_new ("frontend-ipc", frontend_ep, true);
    peer_t *worker = s_peer_new ("worker-actor", worker_ep, true);
    CHECK (s_join (worker, 4, &msg));
    const char *calls [2] = { "a1", "a2" };
    peer_t *asking [2] = { near, far };
    for (int index = 0; index < 2; index++) {
        s_send_request (asking [index], calls [index], "gpt-4o", ZG_ROUTE_CHAT, 1000, "{}");
        if (CHECK (s_expect (worker, &msg, ZG_MSG_DISPATCH, calls [index], SAFETY_MS)))
            CHECK (streq (msg.deployment.id, "dep-a"));
        s_send_reply (worker, ZG_MSG_HEAD, calls [index], 200, ZG_FLAG_FINAL, "{\"ok\":1}");
        if (CHECK (s_expect (asking [index], &msg, ZG_MSG_HEAD, calls [index], SAFETY_MS)))
            CHECK (s_payload_is (&msg, "{\"ok\":1}"));
    }
    zg_msg_reset (&msg, 0);
    s_peers_destroy_from (first_peer);
    zactor_destroy (&router);
    CHECK (router == NULL);
}

//  Bursts of several times what the router reads from one socket in a
//  turn, of messages it answers with nothing, then one it answers: what a
//  turn leaves must be read without a new signal (ZeroMQ signals a socket
//  only once it was read dry). The router's own heartbeats, which would
//  hide a miss, are an hour apart here.
static void
s_test_burst (zg_config_t *config, const char *dir)
{
    char worker_ep [PATH_MAX + 16];
    snprintf (worker_ep, sizeof (worker_ep), "ipc://%s/burst-worker.ipc", dir);
    int heartbeat_ms = config->heartbeat_ms;
    config->heartbeat_ms = 3600 * 1000;
    zactor_t *router = zg_router_start (config, "inproc://zg-router-burst", worker_ep);
    config->heartbeat_ms = heartbeat_ms;
    if (!CHECK (router))
        return;
    zg_msg_t msg;
    zg_msg_init (&msg, 0);
    size_t first_peer = s_peer_count;
    peer_t *frontend = s_peer_new ("frontend-burst", "inproc://zg-router-burst", false);
    peer_t *worker = s_peer_new ("worker-burst", worker_ep, false);
    CHECK (s_join (worker, 1, &msg));
    for (int index = 0; index < 800; index++) {
        char call_id [16];
        snprintf (call_id, sizeof (call_id), "gone-%d", index);
        s_send_simple (frontend, ZG_MSG_CANCEL, call_id, 0);
        s_send_simple (worker, ZG_MSG_CREDIT, NULL, 1);
    }
    s_heartbeat (frontend);
    CHECK (s_expect (frontend, &msg, ZG_MSG_HEARTBEAT, NULL, SAFETY_MS));
    s_send_simple (worker, ZG_MSG_RETIRE, NULL, 0);
    CHECK (s_expect (worker, &msg, ZG_MSG_RETIRE, NULL, SAFETY_MS));
    zg_msg_reset (&msg, 0);
    s_peers_destroy_from (first_peer);
    zactor_destroy (&router);
}

static void
s_remove_tree (const char *path)
{
    DIR *dir = opendir (path);
    if (dir) {
        struct dirent *entry;
        while ((entry = readdir (dir))) {
            if (streq (entry->d_name, ".") || streq (entry->d_name, ".."))
                continue;
            char child [PATH_MAX];
            snprintf (child, sizeof (child), "%s/%s", path, entry->d_name);
            unlink (child);
        }
        closedir (dir);
    }
    rmdir (path);
}

static const char *s_config_text =
    "model_list:\n"
    "  - model_name: gpt-4o\n"
    "    litellm_params:\n"
    "      model: openai/gpt-4o-upstream\n"
    "      api_base: http://127.0.0.1:9/v1\n"
    "      api_key: sk-test-key\n"
    "      timeout: 30\n"
    "      stream_timeout: 5\n"
    "    model_info:\n"
    "      id: dep-a\n"
    "      output_cost_per_token: 0.002\n"
    "  - model_name: embed\n"
    "    litellm_params:\n"
    "      model: openai/text-embedding-3-small\n"
    "      api_base: http://127.0.0.1:9/v1\n"
    "router_settings:\n"
    "  routing_strategy: simple-shuffle\n"
    "zgate_settings:\n"
    "  queue_timeout_ms: 200\n"
    "  max_queue: 2\n"
    "  heartbeat_ms: 500\n";

int
main (int argc, char *argv [])
{
    s_verbose = argc > 1 && strcmp (argv [1], "-v") == 0;
    s_test_balancer ();

    char dir [] = "/tmp/zg-router-test-XXXXXX";
    if (!mkdtemp (dir)) {
        perror ("mkdtemp");
        return 1;
    }
    char config_path [PATH_MAX], frontend_ep [PATH_MAX + 16], worker_ep [PATH_MAX + 16];
    snprintf (config_path, sizeof (config_path), "%s/config.yaml", dir);
    snprintf (frontend_ep, sizeof (frontend_ep), "ipc://%s/frontend.ipc", dir);
    snprintf (worker_ep, sizeof (worker_ep), "ipc://%s/worker.ipc", dir);
    FILE *file = fopen (config_path, "w");
    if (!file) {
        perror ("config");
        s_remove_tree (dir);
        return 1;
    }
    fputs (s_config_text, file);
    fclose (file);

    char errbuf [512] = "";
    zg_config_t *config = zg_config_load (config_path, errbuf, sizeof (errbuf));
    if (!CHECK (config)) {
        fprintf (stderr, "  config: %s\n", errbuf);
        s_remove_tree (dir);
        printf ("%d passed, %d failed\n", s_passed, s_failed);
        return 1;
    }
    CHECK (config->queue_timeout_ms == QUEUE_TIMEOUT);
    CHECK (config->heartbeat_ms == HEARTBEAT_MS);
    CHECK (config->max_queue == 2);

    //  The router gets its own ZeroMQ context: fork before this process
    //  creates one
    fflush (stdout);
    fflush (stderr);
    pid_t child = fork ();
    if (child == 0) {
        if (!s_verbose)
            setenv ("LITELLM_LOG", "ERROR", 1);
        zg_log_init ("zgate.router", s_verbose, false);
        int rc = zg_router_run (config, frontend_ep, worker_ep);
        zg_config_destroy (&config);
        exit (rc);
    }
    CHECK (child > 0);
    if (child > 0) {
        s_test_broker (frontend_ep, worker_ep);
        //  An endpoint that cannot be bound: exit code 1 at once
        if (!s_verbose)
            setenv ("LITELLM_LOG", "ERROR", 1);
        zg_log_init ("zgate.router", false, false);
        CHECK (zg_router_run (config, "ipc:///nonexistent-zg-dir/frontend.ipc",
                              "ipc:///nonexistent-zg-dir/worker.ipc") == 1);
        s_test_actor (config, dir);
        s_test_burst (config, dir);
        for (size_t index = 0; index < s_peer_count; index++) {
            zsock_destroy (&s_peers [index]->sock);
            free (s_peers [index]);
        }
        kill (child, SIGTERM);
        int status = 0;
        CHECK (waitpid (child, &status, 0) == child);
        CHECK (WIFEXITED (status) && WEXITSTATUS (status) == 0);
        if (!WIFEXITED (status) || WEXITSTATUS (status) != 0)
            fprintf (stderr, "  router exit status %d\n", status);
    }
    zg_config_destroy (&config);
    s_remove_tree (dir);
    printf ("%d passed, %d failed\n", s_passed, s_failed);
    return s_failed? 1: 0;
}
