/*  =========================================================================
    zg_events_tap - print the events a gateway publishes, one JSON line each

        zg_events_tap ENDPOINT      e.g. ipc:///run/zgate/events.ipc

    subscribes to every event on ENDPOINT (zgate_settings.events_endpoint,
    by default ipc://<run_dir>/events.ipc) and writes each to stdout as one
    JSON object, flushed per line, until SIGINT or SIGTERM:

        {"type": "BUDGET", "kind": "soft_budget_crossed", "key_hash": "...",
         "key_name": "sk-...abcd", "key_alias": "", "user_id": "", "team_id": "",
         "spend": 0.000068, "soft_budget": 0.00005, "max_budget": null,
         "at_us": 1700000000000000}

    A type it does not know is printed as {"type": "NAME"} alone. A message
    that is not a zgate message is reported on stderr and skipped. Like
    every subscriber of a PUB socket it sees only what is published after
    it has connected, and misses what it is too slow to take.
    =========================================================================
*/
#include "common/zg_json.h"
#include "proto/zg_msg.h"

#include <czmq.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

//  An escaped field is at most 6 bytes per byte of ZG_NAME_MAX, plus quotes
#define S_QUOTED_MAX (6 * ZG_NAME_MAX + 3)

static void
s_print_string (const char *name, const char *value)
{
    char quoted [S_QUOTED_MAX];
    if (zg_json_quote (value, quoted, sizeof quoted) < 0)
        snprintf (quoted, sizeof quoted, "null");
    printf (", \"%s\": %s", name, quoted);
}

//  The shortest text that reads back as the same number; null when absent
//  (a negative budget means none)
static void
s_print_number (const char *name, double value, bool negative_is_null)
{
    if (!isfinite (value) || (negative_is_null && value < 0)) {
        printf (", \"%s\": null", name);
        return;
    }
    char text [40];
    for (int precision = 15; precision <= 17; precision++) {
        snprintf (text, sizeof text, "%.*g", precision, value);
        if (strtod (text, NULL) == value)
            break;
    }
    printf (", \"%s\": %s", name, text);
}

static void
s_print (const zg_msg_t *msg)
{
    printf ("{\"type\": \"%s\"", zg_msg_type_name (msg->type));
    if (msg->type == ZG_MSG_BUDGET) {
        s_print_string ("kind", msg->kind);
        s_print_string ("key_hash", msg->key_hash);
        s_print_string ("key_name", msg->key_name);
        s_print_string ("key_alias", msg->key_alias);
        s_print_string ("user_id", msg->user_id);
        s_print_string ("team_id", msg->team_id);
        s_print_number ("spend", msg->spend, false);
        s_print_number ("soft_budget", msg->soft_budget, true);
        s_print_number ("max_budget", msg->max_budget, true);
        printf (", \"at_us\": %" PRIu64, msg->at_us);
    }
    printf ("}\n");
    fflush (stdout);
}

int
main (int argc, char *argv [])
{
    if (argc != 2 || argv [1][0] == '-') {
        fprintf (stderr, "usage: zg_events_tap ENDPOINT\n");
        return 2;
    }
    zsock_t *events = zsock_new (ZMQ_SUB);
    if (!events)
        return 1;
    zsock_set_subscribe (events, "");
    //  Wakes the loop now and then, so a signal is never waited on for long
    zsock_set_rcvtimeo (events, 500);
    if (zsock_connect (events, "%s", argv [1]) != 0) {
        fprintf (stderr, "zg_events_tap: cannot connect to %s: %s\n", argv [1],
                 zmq_strerror (zmq_errno ()));
        zsock_destroy (&events);
        return 1;
    }
    fprintf (stderr, "zg_events_tap: subscribed to %s\n", argv [1]);

    zg_msg_t *msg = (zg_msg_t *) malloc (sizeof (zg_msg_t));
    if (!msg) {
        zsock_destroy (&events);
        return 1;
    }
    zg_msg_init (msg, 0);
    while (!zsys_interrupted) {
        int rc = zg_msg_recv (msg, events);
        if (rc == ZG_MSG_OK)
            s_print (msg);
        else
        if (rc == ZG_MSG_ERR_MALFORMED)
            fprintf (stderr, "zg_events_tap: skipped a message that is not a zgate event\n");
    }
    zg_msg_reset (msg, 0);
    free (msg);
    zsock_destroy (&events);
    return 0;
}
