/* What alloc_account.c offers context_account.c: the map of tracked objects (arrays, mipmapped
 * arrays, contexts), keyed by their driver handle. */
#ifndef HAMI_ACCOUNT_H
#define HAMI_ACCOUNT_H

#include "ptrmap.h"

/* struct ment.kind */
enum { K_LINEAR = 1, K_ASYNC, K_MANAGED, K_PITCH, K_VMM, K_ARRAY, K_MIPMAP, K_CTX, K_POOLED };

/* remembers that object `key` holds `size` charged bytes on `dev`; the obj_destroy wrappers of
 * hooks.def uncharge it */
VGPU_HIDDEN void vgpu_obj_track(uint64_t key, uint64_t size, int dev, int kind);

#endif
