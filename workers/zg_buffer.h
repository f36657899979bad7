/*  =========================================================================
    zg_buffer - a growable byte buffer that a worker slot keeps and reuses

    A plain struct so that it can live inside a preallocated slot without
    an extra allocation. The memory grows on demand and is kept between
    transfers; zg_buffer_trim gives back what an unusually large transfer
    needed so that one big reply does not pin memory in every slot.
    =========================================================================
*/
#ifndef ZG_BUFFER_H_INCLUDED
#define ZG_BUFFER_H_INCLUDED

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
    char  *data;        //  owned; NULL until the first reserve
    size_t size;        //  bytes in use
    size_t capacity;    //  bytes allocated
} zg_buffer_t;

//  Make room for at least capacity bytes (contents kept). 0 or -1 (no memory).
int zg_buffer_reserve (zg_buffer_t *self, size_t capacity);

//  Append bytes. 0 or -1 (no memory; the buffer is unchanged).
int zg_buffer_append (zg_buffer_t *self, const void *data, size_t size);

//  Drop the first size bytes, keeping the rest.
void zg_buffer_consume (zg_buffer_t *self, size_t size);

//  Empty the buffer; free its memory if it grew beyond keep bytes.
void zg_buffer_trim (zg_buffer_t *self, size_t keep);

//  Free the memory.
void zg_buffer_release (zg_buffer_t *self);

#ifdef __cplusplus
}
#endif
#endif
