/*  =========================================================================
    zg_spend - writes the routers' spend records to the database

    Binds a ROUTER socket for routers (DEALER). Each router sends SPEND
    records numbered by its own sequence; the spend actor writes them in
    batches (every general_settings.proxy_batch_write_at seconds, or at 1500
    records), each batch in one statement: the rows of "LiteLLM_SpendLogs"
    keyed by call id, and the spend of the rows actually inserted added to
    the key's (and user's, team's) total, so that a record sent twice is
    counted once. After the commit it answers SPEND_ACK with the highest
    seq of the batch to each router concerned; nothing uncommitted is ever
    acked. A record the database refuses (a value a column cannot hold: not
    an outage, which keeps the batch and retries) is found by writing the
    batch in halves, and put aside in "LiteLLM_ErrorLogs" (exception_type
    SpendLogRefused) and the log; every other record is written.
    A router it does not know (it restarted, or the router did) gets
    DISCONNECT and must send a HEARTBEAT and then everything unacked again,
    oldest first.
    =========================================================================
*/
#ifndef ZG_SPEND_H_INCLUDED
#define ZG_SPEND_H_INCLUDED

#include "common/zg_config.h"
#include "proto/zg_msg.h"

#include <stdbool.h>
#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

//  Serve on endpoint until SIGTERM/SIGINT, then write what is held (a
//  bounded wait) and return 0; 1 if the endpoint cannot be bound or no
//  database is configured.
int zg_spend_run (const zg_config_t *config, const char *endpoint);

//  The default endpoint under a run directory: ipc://<run_dir>/spend.ipc
void zg_spend_endpoint (const char *run_dir, char *endpoint, size_t size);

//  Self test
void zg_spend_test (bool verbose);

#ifdef __cplusplus
}
#endif
#endif
