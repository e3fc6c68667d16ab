/* Open-addressing key -> u32 map; see keymap.h. */
#include "kvstore/keymap.h"

#include "common/alloc.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <xxhash.h>

static uint64_t g_seed;
static pthread_once_t g_seed_once = PTHREAD_ONCE_INIT;

static void seed_init(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    uint64_t parts[3] = {(uint64_t)ts.tv_nsec, (uint64_t)ts.tv_sec, (uint64_t)getpid()};
    g_seed = XXH3_64bits(parts, sizeof(parts));
}

static uint32_t slot_of(const kvt_keymap_t *map, const kvt_block_key_t *key)
{
    return (uint32_t)XXH3_64bits_withSeed(key->b, KVT_KEY_LEN, g_seed) & (map->cap - 1);
}

static kvt_status_t alloc_table(kvt_keymap_t *map, uint32_t cap)
{
    map->keys = kvt_malloc("keymap.keys", (size_t)cap * sizeof(*map->keys));
    map->vals = kvt_malloc("keymap.vals", (size_t)cap * sizeof(*map->vals));
    map->used = kvt_calloc("keymap.used", cap, 1);
    if (!map->keys || !map->vals || !map->used) {
        kvt_free(map->keys);
        kvt_free(map->vals);
        kvt_free(map->used);
        map->keys = NULL;
        map->vals = NULL;
        map->used = NULL;
        return KVT_ERR_NOMEM;
    }
    map->cap = cap;
    map->count = 0;
    return KVT_OK;
}

kvt_status_t kvt_keymap_init(kvt_keymap_t *map, uint32_t expected)
{
    pthread_once(&g_seed_once, seed_init);
    uint32_t cap = 16;
    while (cap < 0x40000000u && cap * 7ull / 10 < expected)
        cap <<= 1;
    memset(map, 0, sizeof(*map));
    return alloc_table(map, cap);
}

void kvt_keymap_cleanup(kvt_keymap_t *map)
{
    kvt_free(map->keys);
    kvt_free(map->vals);
    kvt_free(map->used);
    memset(map, 0, sizeof(*map));
}

static bool find(const kvt_keymap_t *map, const kvt_block_key_t *key, uint32_t *pos_p)
{
    uint32_t mask = map->cap - 1;
    for (uint32_t i = slot_of(map, key);; i = (i + 1) & mask) {
        if (!map->used[i]) {
            *pos_p = i;
            return false;
        }
        if (kvt_block_key_eq(&map->keys[i], key)) {
            *pos_p = i;
            return true;
        }
    }
}

bool kvt_keymap_get(const kvt_keymap_t *map, const kvt_block_key_t *key, uint32_t *val_p)
{
    uint32_t pos;
    if (!find(map, key, &pos))
        return false;
    *val_p = map->vals[pos];
    return true;
}

static kvt_status_t grow(kvt_keymap_t *map)
{
    kvt_keymap_t bigger;
    if (map->cap >= 0x80000000u)
        return KVT_ERR_NOMEM;
    kvt_status_t st = alloc_table(&bigger, map->cap * 2);
    if (st != KVT_OK)
        return st;
    for (uint32_t i = 0; i < map->cap; i++) {
        if (!map->used[i])
            continue;
        uint32_t pos;
        find(&bigger, &map->keys[i], &pos);
        bigger.keys[pos] = map->keys[i];
        bigger.vals[pos] = map->vals[i];
        bigger.used[pos] = 1;
        bigger.count++;
    }
    kvt_keymap_cleanup(map);
    *map = bigger;
    return KVT_OK;
}

kvt_status_t kvt_keymap_put(kvt_keymap_t *map, const kvt_block_key_t *key, uint32_t val)
{
    uint32_t pos;
    if (find(map, key, &pos)) {
        map->vals[pos] = val;
        return KVT_OK;
    }
    if ((uint64_t)(map->count + 1) * 10 > (uint64_t)map->cap * 7) {
        kvt_status_t st = grow(map);
        if (st != KVT_OK)
            return st;
        find(map, key, &pos);
    }
    map->keys[pos] = *key;
    map->vals[pos] = val;
    map->used[pos] = 1;
    map->count++;
    return KVT_OK;
}

bool kvt_keymap_del(kvt_keymap_t *map, const kvt_block_key_t *key)
{
    uint32_t pos;
    if (!find(map, key, &pos))
        return false;
    uint32_t mask = map->cap - 1, hole = pos;
    /* Backward shift: pull later members of the probe run into the hole
     * when their home slot is not between the hole and their position. */
    for (uint32_t i = (hole + 1) & mask; map->used[i]; i = (i + 1) & mask) {
        uint32_t home = slot_of(map, &map->keys[i]);
        if (((i - home) & mask) >= ((i - hole) & mask)) {
            map->keys[hole] = map->keys[i];
            map->vals[hole] = map->vals[i];
            hole = i;
        }
    }
    map->used[hole] = 0;
    map->count--;
    return true;
}

void kvt_keymap_foreach(const kvt_keymap_t *map, kvt_keymap_visit_fn fn, void *arg)
{
    for (uint32_t i = 0; i < map->cap; i++)
        if (map->used[i])
            fn(&map->keys[i], map->vals[i], arg);
}
