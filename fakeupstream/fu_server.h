/*  fu_server: the fake OpenAI upstream's event loops.

    One thread per --threads, each with its own epoll set and its own
    SO_REUSEPORT listener on the same port, so the kernel spreads
    connections and no lock sits on the request path (the statistics are
    per-thread atomics; only the last-request record takes a mutex).  */

#ifndef FU_SERVER_H_INCLUDED
#define FU_SERVER_H_INCLUDED

#include <stddef.h>

typedef enum {
    FU_FAULT_NONE,
    FU_FAULT_RESET,             //  RST without answering
    FU_FAULT_HANG,              //  never answer
    FU_FAULT_SLOW,              //  headers, then the body a byte every 100 ms
    FU_FAULT_RESET_MID_STREAM   //  half the answer, then RST
} fu_fault_t;

typedef struct {
    const char *host;
    int port;                   //  0: the kernel picks one
    int threads;
    long latency_ms;
    long chunks;
    long chunk_interval_ms;
    long status;                //  0: answer normally
    long long prompt_tokens;    //  the usage's prompt_tokens
    fu_fault_t fault;
} fu_config_t;

typedef struct _fu_server_t fu_server_t;

//  Parse a fault name ("reset", "hang", "slow", "reset_mid_stream", or
//  "none"/""). 0 or -1.
int fu_fault_parse (const char *name, size_t size, fu_fault_t *fault);

//  Binds the listeners. NULL (with a message on stderr) on failure.
//  The configuration is copied.
fu_server_t *fu_server_new (const fu_config_t *config);
//  The port actually bound.
int fu_server_port (fu_server_t *self);
//  The address actually bound, as text (owned by the server).
const char *fu_server_host (fu_server_t *self);
//  Starts the threads. 0 or -1.
int fu_server_start (fu_server_t *self);
//  Stops and joins the threads, closes every connection, frees everything.
void fu_server_destroy (fu_server_t **self_p);

#endif
