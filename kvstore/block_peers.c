/* Block clients of several peers (kvstore/block_client.h,
 * kvt_block_peers_*): a decode node pulls from whichever node the
 * coordinator names, through one client per peer on one worker, connected
 * on first use (at most 64; the least recently used one is closed beyond).
 *
 * Ownership: the set owns its clients; the client kvt_block_peers_get
 * returns is valid until the next get or destroy.  Failure: a peer that
 * cannot be reached gives NULL (the connect has logged why); a dead
 * peer's client is closed at the next get and connected again on
 * demand. */
#include "kvstore/block_client.h"

#include "common/alloc.h"

#include <stdio.h>
#include <string.h>


#define PEERS_MAX 64

typedef struct {
    char addr[KVT_BLOCK_PEER_ADDR_MAX];
    kvt_block_client_t *client;
    uint64_t used;
} peer_t;

struct kvt_block_peers {
    kvt_net_worker_t *worker;
    peer_t peers[PEERS_MAX];
    uint64_t clock;
};

kvt_status_t kvt_block_peers_create(kvt_net_worker_t *worker, kvt_block_peers_t **peers_p)
{
    kvt_block_peers_t *p = kvt_calloc("block peers", 1, sizeof(*p));
    if (!p)
        return KVT_ERR_NOMEM;
    p->worker = worker;
    *peers_p = p;
    return KVT_OK;
}

void kvt_block_peers_destroy(kvt_block_peers_t *p)
{
    if (!p)
        return;
    for (size_t i = 0; i < PEERS_MAX; i++)
        kvt_block_client_close(p->peers[i].client);
    kvt_free(p);
}

/* The entry of addr, else a free one, else the least recently used one
 * (closed). */
static peer_t *peer_slot(kvt_block_peers_t *p, const char *addr)
{
    peer_t *free_e = NULL, *lru = &p->peers[0];
    for (size_t i = 0; i < PEERS_MAX; i++) {
        peer_t *e = &p->peers[i];
        if (e->client && strcmp(e->addr, addr) == 0)
            return e;
        if (!e->client && !free_e)
            free_e = e;
        if (e->used < lru->used)
            lru = e;
    }
    if (free_e)
        return free_e;
    kvt_block_client_close(lru->client);
    memset(lru, 0, sizeof(*lru));
    return lru;
}

kvt_block_client_t *kvt_block_peers_get(kvt_block_peers_t *p, const char *addr, int timeout_ms)
{
    if (!addr || strlen(addr) >= KVT_BLOCK_PEER_ADDR_MAX)
        return NULL;
    /* Dead peers' clients go, each time: a client's map of a dead
     * server's pool (local reads) keeps that memory alive until then. */
    for (size_t i = 0; i < PEERS_MAX; i++) {
        peer_t *d = &p->peers[i];
        if (d->client && !kvt_block_client_alive(d->client)) {
            kvt_block_client_close(d->client);
            memset(d, 0, sizeof(*d));
        }
    }
    peer_t *e = peer_slot(p, addr);
    if (!e->client) {
        if (kvt_block_client_connect(p->worker, addr, timeout_ms, &e->client) != KVT_OK) {
            e->client = NULL;
            return NULL;
        }
        snprintf(e->addr, sizeof(e->addr), "%s", addr);
    }
    e->used = ++p->clock;
    return e->client;
}
