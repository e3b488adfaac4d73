/* An open-addressing hash map from a device address or driver handle to what it was charged.
 * Not thread-safe: its user holds a lock around every call. Key 0 means an empty slot. */
#ifndef HAMI_PTRMAP_H
#define HAMI_PTRMAP_H

#include <stddef.h>
#include <stdint.h>

#include "vgpu.h"

struct ment {
    uint64_t key; /* 0 = empty */
    uint64_t size;
    uint64_t aux; /* VMM: map count; VA map: handle; pooled: the pool */
    int32_t dev;
    uint16_t kind;
    uint16_t refs; /* VMM: references to the handle (its creation, retains) not yet released */
};
struct ptrmap {
    struct ment *t;
    size_t cap, n;
};

/* the entry for `key`, or NULL; valid until the next put or take */
VGPU_HIDDEN struct ment *ptrmap_find(struct ptrmap *m, uint64_t key);
/* inserts or replaces e->key; -1 when out of host memory (the map is unchanged) */
VGPU_HIDDEN int ptrmap_put(struct ptrmap *m, const struct ment *e);
/* removes `key` into *out: 1, or 0 if absent */
VGPU_HIDDEN int ptrmap_take(struct ptrmap *m, uint64_t key, struct ment *out);
/* frees the table and empties the map */
VGPU_HIDDEN void ptrmap_clear(struct ptrmap *m);

#endif
