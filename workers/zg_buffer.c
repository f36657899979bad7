/*  =========================================================================
    zg_buffer - a growable byte buffer that a worker slot keeps and reuses
    =========================================================================
*/
#include "workers/zg_buffer.h"

#include <stdlib.h>
#include <string.h>

int
zg_buffer_reserve (zg_buffer_t *self, size_t capacity)
{
    if (capacity <= self->capacity)
        return 0;
    //  Grow geometrically so that a body arriving in many small reads
    //  costs a logarithmic number of reallocations
    size_t grown = self->capacity ? self->capacity : 4096;
    while (grown < capacity) {
        if (grown > ((size_t) -1) / 2)
            return -1;
        grown *= 2;
    }
    char *data = (char *) realloc (self->data, grown);
    if (!data)
        return -1;
    self->data = data;
    self->capacity = grown;
    return 0;
}

int
zg_buffer_append (zg_buffer_t *self, const void *data, size_t size)
{
    if (size == 0)
        return 0;
    if (size > ((size_t) -1) - self->size
    ||  zg_buffer_reserve (self, self->size + size))
        return -1;
    memcpy (self->data + self->size, data, size);
    self->size += size;
    return 0;
}

void
zg_buffer_consume (zg_buffer_t *self, size_t size)
{
    if (size >= self->size) {
        self->size = 0;
        return;
    }
    memmove (self->data, self->data + size, self->size - size);
    self->size -= size;
}

void
zg_buffer_trim (zg_buffer_t *self, size_t keep)
{
    self->size = 0;
    if (self->capacity > keep)
        zg_buffer_release (self);
}

void
zg_buffer_release (zg_buffer_t *self)
{
    free (self->data);
    self->data = NULL;
    self->size = 0;
    self->capacity = 0;
}
