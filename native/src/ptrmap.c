/* The open-addressing hash map behind the allocation and context accounting (ptrmap.h). */
#include <stdlib.h>
#include <string.h>

#include "ptrmap.h"

static inline size_t hslot(uint64_t k, size_t cap) { return (size_t)((k * 0x9E3779B97F4A7C15ULL) >> 17) & (cap - 1); }

struct ment *ptrmap_find(struct ptrmap *m, uint64_t k) {
    if (!m->cap) return NULL;
    for (size_t i = hslot(k, m->cap);; i = (i + 1) & (m->cap - 1)) {
        if (m->t[i].key == k) return &m->t[i];
        if (!m->t[i].key) return NULL;
    }
}

int ptrmap_put(struct ptrmap *m, const struct ment *e) {
    if ((m->n + 1) * 2 > m->cap) {
        size_t nc = m->cap ? m->cap * 2 : 64;
        struct ment *nt = calloc(nc, sizeof *nt);
        if (!nt) return -1;
        for (size_t i = 0; i < m->cap; i++) {
            if (!m->t[i].key) continue;
            size_t j = hslot(m->t[i].key, nc);
            while (nt[j].key) j = (j + 1) & (nc - 1);
            nt[j] = m->t[i];
        }
        free(m->t);
        m->t = nt;
        m->cap = nc;
    }
    size_t i = hslot(e->key, m->cap);
    while (m->t[i].key && m->t[i].key != e->key) i = (i + 1) & (m->cap - 1);
    if (!m->t[i].key) m->n++;
    m->t[i] = *e;
    return 0;
}

/* remove with backward-shift deletion: no tombstones, so a million cycles leave no residue */
int ptrmap_take(struct ptrmap *m, uint64_t k, struct ment *out) {
    struct ment *e = ptrmap_find(m, k);
    if (!e) return 0;
    *out = *e;
    size_t i = (size_t)(e - m->t), mask = m->cap - 1;
    for (size_t j = (i + 1) & mask; m->t[j].key; j = (j + 1) & mask) {
        size_t h = hslot(m->t[j].key, m->cap);
        if (((j - h) & mask) >= ((j - i) & mask)) {
            m->t[i] = m->t[j];
            i = j;
        }
    }
    memset(&m->t[i], 0, sizeof m->t[i]);
    m->n--;
    return 1;
}

void ptrmap_clear(struct ptrmap *m) {
    free(m->t);
    memset(m, 0, sizeof *m);
}
