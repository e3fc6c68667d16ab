/* Binary min-heap on (tick, id) with caller-held positions; see lru_heap.h. */
#include "kvstore/lru_heap.h"

#include "common/alloc.h"

#include <string.h>

void kvt_lru_heap_init(kvt_lru_heap_t *heap) { memset(heap, 0, sizeof(*heap)); }

void kvt_lru_heap_cleanup(kvt_lru_heap_t *heap)
{
    kvt_free(heap->items);
    memset(heap, 0, sizeof(*heap));
}

static bool less(const kvt_lru_item_t *a, const kvt_lru_item_t *b)
{
    return a->tick < b->tick || (a->tick == b->tick && a->id < b->id);
}

static void place(kvt_lru_heap_t *heap, uint32_t *pos, uint32_t i, kvt_lru_item_t item)
{
    heap->items[i] = item;
    pos[item.id] = i;
}

static void sift_up(kvt_lru_heap_t *heap, uint32_t *pos, uint32_t i)
{
    kvt_lru_item_t item = heap->items[i];
    while (i > 0) {
        uint32_t parent = (i - 1) / 2;
        if (!less(&item, &heap->items[parent]))
            break;
        place(heap, pos, i, heap->items[parent]);
        i = parent;
    }
    place(heap, pos, i, item);
}

static void sift_down(kvt_lru_heap_t *heap, uint32_t *pos, uint32_t i)
{
    kvt_lru_item_t item = heap->items[i];
    for (;;) {
        uint32_t child = 2 * i + 1;
        if (child >= heap->n)
            break;
        if (child + 1 < heap->n && less(&heap->items[child + 1], &heap->items[child]))
            child++;
        if (!less(&heap->items[child], &item))
            break;
        place(heap, pos, i, heap->items[child]);
        i = child;
    }
    place(heap, pos, i, item);
}

kvt_status_t kvt_lru_heap_push(kvt_lru_heap_t *heap, uint32_t *pos, uint32_t id, uint64_t tick)
{
    if (heap->n == heap->cap) {
        uint32_t cap = heap->cap ? heap->cap * 2 : 64;
        kvt_lru_item_t *items = kvt_realloc("lru_heap", heap->items, (size_t)cap * sizeof(*items));
        if (!items)
            return KVT_ERR_NOMEM;
        heap->items = items;
        heap->cap = cap;
    }
    heap->items[heap->n] = (kvt_lru_item_t){.tick = tick, .id = id};
    pos[id] = heap->n;
    sift_up(heap, pos, heap->n++);
    return KVT_OK;
}

void kvt_lru_heap_remove(kvt_lru_heap_t *heap, uint32_t *pos, uint32_t id)
{
    uint32_t i = pos[id];
    if (i == KVT_LRU_NONE)
        return;
    pos[id] = KVT_LRU_NONE;
    if (--heap->n == i)
        return;
    kvt_lru_item_t last = heap->items[heap->n];
    place(heap, pos, i, last);
    sift_up(heap, pos, i);
    sift_down(heap, pos, pos[last.id]);
}

bool kvt_lru_heap_pop(kvt_lru_heap_t *heap, uint32_t *pos, uint32_t *id_p)
{
    if (heap->n == 0)
        return false;
    uint32_t id = heap->items[0].id;
    kvt_lru_heap_remove(heap, pos, id);
    *id_p = id;
    return true;
}

void kvt_lru_heap_update(kvt_lru_heap_t *heap, uint32_t *pos, uint32_t id, uint64_t tick)
{
    uint32_t i = pos[id];
    if (i == KVT_LRU_NONE)
        return;
    heap->items[i].tick = tick;
    sift_up(heap, pos, i);
    sift_down(heap, pos, pos[id]);
}
