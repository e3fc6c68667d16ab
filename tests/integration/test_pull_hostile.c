/* Inline block pulls from a hostile server: a server on its own thread and
 * UCX worker (127.0.0.1) that answers BlockFetchRequest with payloads in
 * the envelope's attachment as the real block server does, then breaks
 * the reply in the way a test picks -- a descriptor pointing past the
 * attachment, an attachment cut short, a flipped byte, offsets swapped
 * between blocks, an attachment that is not the last field, a reply with
 * fewer blocks than asked, RETRY for everything, Error BUSY (once, or
 * forever), or a same-host "local" reply whose addresses, pid or mapped
 * region are wrong.  The client must refuse exactly the broken blocks (each honest
 * neighbour still passes, so each refusal is the mode's doing), ask a busy
 * server again, and always finish. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "common/alloc.h"
#include "common/hash.h"
#include "common/le.h"
#include "kvstore/block_client.h"
#include "proto/msg.h"
#include "tests/support/net_thread.h"
#include "tests/support/testutil.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#define TIMEOUT_MS 3000
#define N_BLOCKS 4

typedef enum {
    B_HONEST,
    B_OFFSET_PAST_END, /* block 1's offset is past the attachment */
    B_SHORT_ATTACH,    /* the attachment lacks its last byte: block 3 runs past */
    B_FLIP,            /* a byte of block 2's payload changed */
    B_SWAP,            /* blocks 0 and 1 point at each other's payload */
    B_NOT_LAST,        /* a field after the attachment */
    B_FEWER_BLOCKS,    /* one descriptor less than keys asked */
    B_ALL_RETRY,       /* every block RETRY, forever */
    B_BUSY_ONCE,       /* Error BUSY (a full promotion queue), then honest */
    B_BUSY_FOREVER,    /* Error BUSY to every fetch */
    B_FAILED_BEHIND,   /* first fetch: block 0 RETRY, the rest FAILED (as when
                          block 0's promotion was refused); then honest */
    B_FAILED_STAYS,    /* as B_FAILED_BEHIND, but the rest FAILED every time */
    B_PARENT_BUSY,     /* a fetch of block 0: Error BUSY parent_busy_left
                          times; the others FAILED until block 0 is served */
    B_LOCAL,           /* a local reply: read the payloads in our memory */
    B_LOCAL_FLIP,      /* local, block 2's address holds a changed byte */
    B_LOCAL_UNMAPPED,  /* local, block 1's address is not mapped */
    B_LOCAL_SWAP,      /* local, blocks 0 and 1 at each other's address */
    B_LOCAL_GONE,      /* local, naming a process that has exited */
    B_MAP,             /* local, naming our sealed memfd region (as the block
                          server names its pool), payloads in it */
    B_MAP_FLIP,        /* mapped, block 2's address holds a changed byte */
    B_MAP_OUTSIDE,     /* mapped, block 1's address is past the region */
    B_MAP_UNSEALED,    /* local, naming a memfd that could shrink */
    B_MAP_OTHER,       /* local, naming the region with another inode */
    B_RKEY_UNASKED,    /* an RMA reply (a well-framed rkey of garbage) to a
                          client that did not ask for RMA */
} bmode_t;

typedef struct {
    tu_net_thread_t server;
    _Atomic int mode;
    _Atomic uint64_t fetches;
    _Atomic int mode_calls;      /* fetches answered since the mode was set */
    _Atomic size_t last_keys;    /* keys the last fetch asked for */
    _Atomic int parent_busy_left; /* B_PARENT_BUSY: BUSY answers to give */
    _Atomic bool parent_served;  /* B_PARENT_BUSY: block 0 went out */
    const tu_chain_t *chain;
    size_t payload_len;
    uint8_t *flipped;  /* block 2's payload with one byte changed */
    pid_t gone;        /* a child that has exited and been reaped */
    struct {
        uint8_t *p;    /* blocks 0..3, then block 2 flipped */
        int fd;
        uint64_t ino;
    } sealed, unsealed; /* memfd regions for the B_MAP modes */
    size_t region_len;
} hostile_t;

static kvt_block_identity_t g_id;

static int chain_find(const tu_chain_t *c, const uint8_t *key)
{
    for (int i = 0; i < c->n; i++)
        if (memcmp(c->hdr[i].key.b, key, KVT_KEY_LEN) == 0)
            return i;
    return -1;
}

/* The reply's wire bytes: envelope || attachment prefix || attachment
 * (|| a trailing field for B_NOT_LAST), as mode breaks them. */
static uint8_t *hostile_wire(hostile_t *h, const Kvtier__BlockFetchRequest *req, size_t *len_p)
{
    bmode_t mode = (bmode_t)atomic_load(&h->mode);
    size_t n = req->n_keys, plen = h->payload_len, att_len = 0;
    Kvtier__BlockDescriptor *d = calloc(n + 1, sizeof(*d));
    Kvtier__BlockDescriptor **dp = calloc(n + 1, sizeof(*dp));
    uint8_t (*hdrs)[KVT_BLOCK_HEADER_MAX] = calloc(n + 1, KVT_BLOCK_HEADER_MAX);
    uint8_t *att = malloc(n * plen + 1);
    for (size_t k = 0; k < n; k++) {
        kvtier__block_descriptor__init(&d[k]);
        dp[k] = &d[k];
        d[k].key = req->keys[k];
        int i = chain_find(h->chain, req->keys[k].data);
        if (i < 0 || mode == B_ALL_RETRY) {
            d[k].status = i < 0 ? KVTIER__BLOCK_DESCRIPTOR__STATUS__MISSING
                                : KVTIER__BLOCK_DESCRIPTOR__STATUS__RETRY;
            continue;
        }
        size_t hl;
        assert_int_equal(kvt_block_header_encode(&h->chain->hdr[i], hdrs[k], KVT_BLOCK_HEADER_MAX, &hl), KVT_OK);
        d[k].header = (ProtobufCBinaryData){hl, hdrs[k]};
        d[k].length = plen;
        d[k].attach_offset = att_len;
        memcpy(att + att_len, h->chain->payload[i], plen);
        att_len += plen;
    }
    int call = atomic_load(&h->mode_calls);
    for (size_t k = 0; mode == B_PARENT_BUSY && k < n; k++) {
        if (chain_find(h->chain, req->keys[k].data) == 0)
            atomic_store(&h->parent_served, true);
        else if (!atomic_load(&h->parent_served))
            d[k].status = KVTIER__BLOCK_DESCRIPTOR__STATUS__FAILED;
    }
    bool fail_behind = (mode == B_FAILED_BEHIND && call == 1) || mode == B_FAILED_STAYS;
    for (size_t k = 0; fail_behind && k < n; k++) {
        int i = chain_find(h->chain, req->keys[k].data); /* by chain place, not request */
        if (i > 0 || call == 1)
            d[k].status = i ? KVTIER__BLOCK_DESCRIPTOR__STATUS__FAILED
                            : KVTIER__BLOCK_DESCRIPTOR__STATUS__RETRY;
    }
    bool local = mode >= B_LOCAL && mode <= B_MAP_OTHER;
    bool map = mode >= B_MAP && mode <= B_MAP_OTHER;
    const uint8_t *region = mode == B_MAP_UNSEALED ? h->unsealed.p : h->sealed.p;
    for (size_t k = 0; local && k < n; k++) {
        int i = chain_find(h->chain, req->keys[k].data);
        bool flip = (mode == B_LOCAL_FLIP || mode == B_MAP_FLIP) && i == 2;
        if (i >= 0 && map)
            d[k].addr = (uint64_t)(uintptr_t)(region + (size_t)(flip ? N_BLOCKS : i) * plen);
        else if (i >= 0)
            d[k].addr = (uint64_t)(uintptr_t)(flip ? h->flipped : h->chain->payload[i]);
    }
    Kvtier__LocalMap lm = KVTIER__LOCAL_MAP__INIT;
    lm.fd = (uint32_t)(mode == B_MAP_UNSEALED ? h->unsealed.fd : h->sealed.fd);
    lm.inode = (mode == B_MAP_UNSEALED ? h->unsealed.ino : h->sealed.ino) + (mode == B_MAP_OTHER);
    lm.addr = (uint64_t)(uintptr_t)region;
    lm.length = h->region_len;
    switch (mode) {
    case B_MAP_OUTSIDE: d[1].addr = lm.addr + lm.length; break;
    case B_LOCAL_UNMAPPED: d[1].addr = 4096; break;
    case B_LOCAL_SWAP: { uint64_t a = d[0].addr; d[0].addr = d[1].addr; d[1].addr = a; break; }
    case B_OFFSET_PAST_END: d[1].attach_offset = att_len + 1; break;
    case B_SHORT_ATTACH: att_len--; break;
    case B_FLIP: att[d[2].attach_offset + 5] ^= 0x40; break;
    case B_SWAP: d[0].attach_offset = d[1].attach_offset; d[1].attach_offset = 0; break;
    default: break;
    }
    if (local)
        att_len = 0; /* as the block server: no attachment, the pid says where */
    Kvtier__BlockFetchReply rep = KVTIER__BLOCK_FETCH_REPLY__INIT;
    rep.local_pid = !local ? 0 : mode == B_LOCAL_GONE ? (uint32_t)h->gone : (uint32_t)getpid();
    rep.local_map = map ? &lm : NULL;
    rep.n_blocks = mode == B_FEWER_BLOCKS ? n - 1 : n;
    uint8_t rkey[16 + 40]; /* our frame ("KVRK", length, xxh3) around bytes UCX would misparse */
    if (mode == B_RKEY_UNASKED) {
        memset(rkey + 16, 0xff, sizeof(rkey) - 16);
        kvt_le_put32(rkey, 0x4b52564bu);
        kvt_le_put32(rkey + 4, sizeof(rkey) - 16);
        kvt_le_put64(rkey + 8, kvt_xxh3_64(rkey + 16, sizeof(rkey) - 16));
        rep.rkey = (ProtobufCBinaryData){sizeof(rkey), rkey};
        rep.lease_id = 7;
        for (size_t k = 0; k < n; k++)
            d[k].addr = 4096;
        att_len = 0;
    }
    rep.blocks = dp;
    kvt_msg_t m = KVTIER__ENVELOPE__INIT;
    m.body_case = KVTIER__ENVELOPE__BODY_FETCH_REPLY;
    m.fetch_reply = &rep;
    uint8_t *env;
    size_t env_len;
    assert_int_equal(kvt_msg_encode(&m, &env, &env_len), KVT_OK);
    uint8_t *wire = malloc(env_len + KVT_MSG_ATTACH_PREFIX_MAX + att_len + 2);
    memcpy(wire, env, env_len);
    size_t len = env_len + kvt_msg_attach_prefix(att_len, wire + env_len);
    memcpy(wire + len, att, att_len);
    len += att_len;
    if (mode == B_NOT_LAST) { /* the version field once more */
        wire[len++] = 0x08;
        wire[len++] = KVT_PROTO_VERSION;
    }
    kvt_free(env);
    free(att);
    free(hdrs);
    free(dp);
    free(d);
    *len_p = len;
    return wire;
}

static void hostile_on_msg(kvt_net_ep_t *ep, uint64_t req_id, uint32_t flags, const void *data,
                           size_t len, void *arg)
{
    (void)flags;
    hostile_t *h = arg;
    kvt_msg_t *req = NULL;
    if (kvt_msg_decode(data, len, &req) != KVT_OK)
        return;
    int busy = B_BUSY_ONCE;
    bool parent_busy = req->body_case == KVTIER__ENVELOPE__BODY_FETCH_REQUEST &&
                       atomic_load(&h->mode) == B_PARENT_BUSY &&
                       req->fetch_request->n_keys > 0 &&
                       chain_find(h->chain, req->fetch_request->keys[0].data) == 0 &&
                       atomic_load(&h->parent_busy_left) > 0;
    if (parent_busy)
        atomic_fetch_sub(&h->parent_busy_left, 1);
    if (req->body_case == KVTIER__ENVELOPE__BODY_FETCH_REQUEST &&
        (parent_busy || atomic_compare_exchange_strong(&h->mode, &busy, B_HONEST) ||
         busy == B_BUSY_FOREVER)) {
        atomic_fetch_add(&h->fetches, 1);
        uint8_t *buf;
        size_t n;
        assert_int_equal(kvt_msg_encode_error(KVT_ERR_BUSY, "busy", &buf, &n), KVT_OK);
        kvt_net_send(ep, req_id, KVT_NET_FLAG_REPLY, buf, n);
        kvt_free(buf);
    } else if (req->body_case == KVTIER__ENVELOPE__BODY_FETCH_REQUEST) {
        atomic_fetch_add(&h->fetches, 1);
        atomic_fetch_add(&h->mode_calls, 1);
        atomic_store(&h->last_keys, req->fetch_request->n_keys);
        size_t n;
        uint8_t *wire = hostile_wire(h, req->fetch_request, &n);
        kvt_net_send(ep, req_id, KVT_NET_FLAG_REPLY, wire, n);
        free(wire);
    }
    kvt_msg_free(req);
}

typedef struct {
    tu_chain_t chain;
    hostile_t h;
    kvt_net_worker_t *worker;
    kvt_block_client_t *client;
    kvt_pull_t items[N_BLOCKS];
    uint8_t *dst[N_BLOCKS];
} fx_t;

/* The B_MAP modes' regions: blocks 0..3 and block 2 flipped, in a sealed
 * memfd (kvt_alloc_shared, as the block server's pool) and in one that is
 * not sealed. */
static void regions_make(hostile_t *h, const tu_chain_t *chain)
{
    h->region_len = (N_BLOCKS + 1) * h->payload_len;
    h->sealed.p = kvt_alloc_shared("hostile region", h->region_len, &h->sealed.fd);
    h->unsealed.fd = memfd_create("hostile region", MFD_CLOEXEC);
    assert_true(h->sealed.p && h->sealed.fd >= 0 && h->unsealed.fd >= 0);
    assert_int_equal(ftruncate(h->unsealed.fd, (off_t)h->region_len), 0);
    h->unsealed.p = mmap(NULL, h->region_len, PROT_READ | PROT_WRITE, MAP_SHARED, h->unsealed.fd, 0);
    assert_true(h->unsealed.p != MAP_FAILED);
    struct stat sb;
    assert_int_equal(fstat(h->sealed.fd, &sb), 0);
    h->sealed.ino = (uint64_t)sb.st_ino;
    assert_int_equal(fstat(h->unsealed.fd, &sb), 0);
    h->unsealed.ino = (uint64_t)sb.st_ino;
    for (int i = 0; i <= N_BLOCKS; i++) {
        const uint8_t *src = i < N_BLOCKS ? chain->payload[i] : h->flipped;
        memcpy(h->sealed.p + (size_t)i * h->payload_len, src, h->payload_len);
        memcpy(h->unsealed.p + (size_t)i * h->payload_len, src, h->payload_len);
    }
}

static int fx_setup(void **state)
{
    fx_t *fx = calloc(1, sizeof(*fx));
    tu_chain_make(&fx->chain, &g_id, N_BLOCKS, 7, NULL, 0);
    fx->h = (hostile_t){.chain = &fx->chain, .payload_len = tu_payload_len(&g_id)};
    fx->h.flipped = malloc(fx->h.payload_len);
    memcpy(fx->h.flipped, fx->chain.payload[2], fx->h.payload_len);
    fx->h.flipped[5] ^= 0x40;
    fx->h.gone = fork();
    if (fx->h.gone == 0)
        _exit(0);
    waitpid(fx->h.gone, NULL, 0);
    regions_make(&fx->h, &fx->chain);
    tu_net_thread_start(&fx->h.server, hostile_on_msg, &fx->h);
    kvt_net_worker_params_t wp = {0};
    assert_int_equal(kvt_net_worker_create(&wp, &fx->worker), KVT_OK);
    assert_int_equal(kvt_block_client_connect(fx->worker, fx->h.server.addr, TIMEOUT_MS, &fx->client), KVT_OK);
    for (int i = 0; i < N_BLOCKS; i++)
        fx->dst[i] = malloc(fx->h.payload_len);
    *state = fx;
    return 0;
}

/* Blocks of 512 KiB (8 layers x 4 kv heads x head_dim 128, B = 16, f32):
 * large enough that the client asks a same-host server to read locally. */
static int fx_setup_big(void **state)
{
    g_id.layout = (kvt_block_layout_t){.n_layers = 8, .n_kv_heads = 4, .head_dim = 128,
                                       .block_tokens = 16, .dtype = KVT_DTYPE_F32};
    return fx_setup(state);
}

static int fx_teardown(void **state)
{
    fx_t *fx = *state;
    kvt_block_client_close(fx->client);
    kvt_net_worker_destroy(fx->worker);
    tu_net_thread_stop(&fx->h.server);
    free(fx->h.flipped);
    kvt_free_shared(fx->h.sealed.p, fx->h.region_len, fx->h.sealed.fd);
    kvt_free_shared(fx->h.unsealed.p, fx->h.region_len, fx->h.unsealed.fd);
    for (int i = 0; i < N_BLOCKS; i++)
        free(fx->dst[i]);
    tu_chain_free(&fx->chain);
    free(fx);
    g_id = tu_identity(); /* after fx_setup_big */
    return 0;
}

/* Pulls the whole chain under mode; statuses land in fx->items. */
static kvt_status_t pull_all_within(fx_t *fx, bmode_t mode, int timeout_ms)
{
    atomic_store(&fx->h.mode, mode);
    atomic_store(&fx->h.mode_calls, 0);
    for (int i = 0; i < N_BLOCKS; i++) {
        memset(fx->dst[i], 0, fx->h.payload_len);
        fx->items[i] = (kvt_pull_t){.key = fx->chain.hdr[i].key, .dst = fx->dst[i],
                                    .cap = fx->h.payload_len};
    }
    return kvt_block_client_pull(fx->client, fx->items, N_BLOCKS, &g_id, timeout_ms);
}

static kvt_status_t pull_all(fx_t *fx, bmode_t mode) { return pull_all_within(fx, mode, TIMEOUT_MS); }

/* Each mode breaks exactly the blocks it names; the others pass with the
 * right bytes. */
static void test_broken_blocks_refused(void **state)
{
    fx_t *fx = *state;
    static const struct {
        bmode_t mode;
        int bad[N_BLOCKS]; /* 1: expect CORRUPT */
    } cases[] = {
        {B_HONEST, {0, 0, 0, 0}},       {B_OFFSET_PAST_END, {0, 1, 0, 0}},
        {B_SHORT_ATTACH, {0, 0, 0, 1}}, {B_FLIP, {0, 0, 1, 0}},
        {B_SWAP, {1, 1, 0, 0}},         {B_HONEST, {0, 0, 0, 0}},
    };
    for (size_t c = 0; c < sizeof(cases) / sizeof(cases[0]); c++) {
        assert_int_equal(pull_all(fx, cases[c].mode), KVT_OK);
        for (int i = 0; i < N_BLOCKS; i++) {
            kvt_status_t want = cases[c].bad[i] ? KVT_ERR_CORRUPT : KVT_OK;
            if (fx->items[i].status != want)
                fail_msg("mode %d block %d: st=%d want=%d", cases[c].mode, i,
                         fx->items[i].status, want);
            if (want == KVT_OK)
                assert_true(tu_payload_ok(&g_id, &fx->chain.hdr[i].key, fx->dst[i]));
        }
    }
}

/* Pulls the chain under mode and checks each block's status against
 * want, and every OK block's bytes; returns how many were OK. */
static int pull_expect(fx_t *fx, bmode_t mode, const kvt_status_t want[N_BLOCKS])
{
    assert_int_equal(pull_all(fx, mode), KVT_OK);
    int ok = 0;
    for (int i = 0; i < N_BLOCKS; i++) {
        if (fx->items[i].status != want[i])
            fail_msg("mode %d block %d: st=%d want=%d", mode, i, fx->items[i].status, want[i]);
        if (want[i] == KVT_OK)
            assert_true(tu_payload_ok(&g_id, &fx->chain.hdr[i].key, fx->dst[i]));
        ok += want[i] == KVT_OK;
    }
    return ok;
}

/* A local reply (a same-host server names its pid and where each payload
 * lies in its memory), to a client that asked for one over a lane (512
 * KiB blocks), is read with kvt_net_local_read and checked like any
 * other: a changed byte or swapped addresses are CORRUPT, an address not
 * mapped there fails that block (IO), a process that is gone fails every
 * block (CLOSED); the neighbours pass, with the right bytes. */
static void test_local_reads_checked(void **state)
{
    fx_t *fx = *state;
    assert_true(kvt_block_client_lane(fx->client));
    static const struct {
        bmode_t mode;
        kvt_status_t want[N_BLOCKS];
    } cases[] = {
        {B_LOCAL, {KVT_OK, KVT_OK, KVT_OK, KVT_OK}},
        {B_LOCAL_FLIP, {KVT_OK, KVT_OK, KVT_ERR_CORRUPT, KVT_OK}},
        {B_LOCAL_UNMAPPED, {KVT_OK, KVT_ERR_IO, KVT_OK, KVT_OK}},
        {B_LOCAL_SWAP, {KVT_ERR_CORRUPT, KVT_ERR_CORRUPT, KVT_OK, KVT_OK}},
        {B_LOCAL_GONE, {KVT_ERR_CLOSED, KVT_ERR_CLOSED, KVT_ERR_CLOSED, KVT_ERR_CLOSED}},
        {B_HONEST, {KVT_OK, KVT_OK, KVT_OK, KVT_OK}},
    };
    uint64_t local_before = kvt_block_client_local_reads(fx->client);
    for (size_t c = 0; c < sizeof(cases) / sizeof(cases[0]); c++)
        pull_expect(fx, cases[c].mode, cases[c].want);
    /* 4 + 3 + 3 + 2 good blocks were read locally */
    assert_int_equal(kvt_block_client_local_reads(fx->client) - local_before, 12);
}

/* A local reply naming a region to map (as the block server names its
 * pool's memfd) is read through the mapping and checked like any other: a
 * changed byte is CORRUPT, an address outside the region fails that block
 * (IO).  A region the client must not map -- one that is not sealed
 * against shrinking (its loads could fault), or not the file named -- is
 * not mapped: its blocks are read by process_vm_readv, just as right. */
static void test_mapped_reads_checked(void **state)
{
    fx_t *fx = *state;
    static const struct {
        bmode_t mode;
        kvt_status_t want[N_BLOCKS];
        int mapped; /* blocks read through the mapping */
    } cases[] = {
        {B_MAP, {KVT_OK, KVT_OK, KVT_OK, KVT_OK}, 4},
        {B_MAP_FLIP, {KVT_OK, KVT_OK, KVT_ERR_CORRUPT, KVT_OK}, 3},
        {B_MAP_OUTSIDE, {KVT_OK, KVT_ERR_IO, KVT_OK, KVT_OK}, 3},
        {B_MAP_UNSEALED, {KVT_OK, KVT_OK, KVT_OK, KVT_OK}, 0},
        {B_MAP_OTHER, {KVT_OK, KVT_OK, KVT_OK, KVT_OK}, 0},
        {B_MAP, {KVT_OK, KVT_OK, KVT_OK, KVT_OK}, 4},
    };
    for (size_t c = 0; c < sizeof(cases) / sizeof(cases[0]); c++) {
        uint64_t local = kvt_block_client_local_reads(fx->client);
        uint64_t mapped = kvt_block_client_mapped_reads(fx->client);
        int ok = pull_expect(fx, cases[c].mode, cases[c].want);
        assert_int_equal(kvt_block_client_local_reads(fx->client) - local, ok);
        assert_int_equal(kvt_block_client_mapped_reads(fx->client) - mapped, cases[c].mapped);
    }
}

/* A local reply to a client that did not ask for one (blocks too small to
 * read locally; the same over TCP) is refused without reading anything:
 * a server cannot make the client read a process's memory on its word. */
static void test_unasked_local_refused(void **state)
{
    fx_t *fx = *state;
    assert_int_equal(pull_all(fx, B_LOCAL), KVT_ERR_CORRUPT);
    for (int i = 0; i < N_BLOCKS; i++)
        assert_int_equal(fx->items[i].status, KVT_ERR_CORRUPT);
    assert_int_equal(kvt_block_client_local_reads(fx->client), 0);
    assert_int_equal(pull_all(fx, B_HONEST), KVT_OK);
}

/* An RMA reply to a client that did not ask for one: its rkey is never
 * unpacked (UCX would parse these bytes trusting them), every block of it
 * is CORRUPT, and the connection serves the next pull. */
static void test_unasked_rkey_refused(void **state)
{
    fx_t *fx = *state;
    assert_int_equal(pull_all(fx, B_RKEY_UNASKED), KVT_ERR_CORRUPT);
    for (int i = 0; i < N_BLOCKS; i++)
        assert_int_equal(fx->items[i].status, KVT_ERR_CORRUPT);
    assert_int_equal(pull_all(fx, B_HONEST), KVT_OK);
}

/* A reply that does not parse as ours, or does not answer the fetch,
 * fails the whole pull: no block counts. */
static void test_broken_reply_fails_pull(void **state)
{
    fx_t *fx = *state;
    const bmode_t modes[] = {B_NOT_LAST, B_FEWER_BLOCKS};
    for (size_t m = 0; m < sizeof(modes) / sizeof(modes[0]); m++) {
        assert_int_equal(pull_all(fx, modes[m]), KVT_ERR_CORRUPT);
        for (int i = 0; i < N_BLOCKS; i++)
            assert_int_equal(fx->items[i].status, KVT_ERR_CORRUPT);
    }
    assert_int_equal(pull_all(fx, B_HONEST), KVT_OK); /* the connection is still good */
}

/* A server that answers RETRY forever cannot keep the client looping:
 * every round settles one block (TOO_LARGE), so N_BLOCKS rounds end it. */
static void test_retry_forever_ends(void **state)
{
    fx_t *fx = *state;
    uint64_t before = atomic_load(&fx->h.fetches);
    assert_int_equal(pull_all(fx, B_ALL_RETRY), KVT_OK);
    for (int i = 0; i < N_BLOCKS; i++)
        assert_int_equal(fx->items[i].status, KVT_ERR_TOO_LARGE);
    assert_int_equal(atomic_load(&fx->h.fetches) - before, N_BLOCKS);
}

/* A busy server is asked again, and its next answer counts. */
static void test_busy_asked_again(void **state)
{
    fx_t *fx = *state;
    uint64_t before = atomic_load(&fx->h.fetches);
    assert_int_equal(pull_all(fx, B_BUSY_ONCE), KVT_OK);
    for (int i = 0; i < N_BLOCKS; i++) {
        assert_int_equal(fx->items[i].status, KVT_OK);
        assert_true(tu_payload_ok(&g_id, &fx->chain.hdr[i].key, fx->dst[i]));
    }
    assert_int_equal(atomic_load(&fx->h.fetches) - before, 2);
}

/* A block FAILED behind one the server asked to be fetched again (its
 * promotion was refused, so the later ones had no parent in T1) is asked
 * for once more after that one is served, and served; one that fails
 * again stays failed, after exactly one more fetch. */
static void test_failed_behind_retry_asked_again(void **state)
{
    fx_t *fx = *state;
    static const kvt_status_t all_ok[N_BLOCKS] = {KVT_OK, KVT_OK, KVT_OK, KVT_OK};
    uint64_t before = atomic_load(&fx->h.fetches);
    pull_expect(fx, B_FAILED_BEHIND, all_ok);
    /* all four; block 0 alone; then the three behind it */
    assert_int_equal(atomic_load(&fx->h.fetches) - before, 3);
    assert_int_equal(atomic_load(&fx->h.last_keys), N_BLOCKS - 1);
    static const kvt_status_t stays[N_BLOCKS] = {KVT_OK, KVT_ERR_IO, KVT_ERR_IO, KVT_ERR_IO};
    before = atomic_load(&fx->h.fetches);
    pull_expect(fx, B_FAILED_STAYS, stays);
    assert_int_equal(atomic_load(&fx->h.fetches) - before, 3);
    assert_int_equal(atomic_load(&fx->h.last_keys), N_BLOCKS - 1);
}

/* The same across requests (blocks of 512 KiB, inline: one a request):
 * block 0's request is refused BUSY twice while the others are FAILED for
 * want of it.  The client does not spend its one more ask on them while
 * block 0 is still refused: once block 0 is served, they are asked for
 * and served. */
static void test_failed_behind_busy_request(void **state)
{
    fx_t *fx = *state;
    kvt_block_client_close(fx->client);
    setenv("KVT_NET_LOCAL_READS", "0", 1); /* a local request would ask for all four */
    assert_int_equal(kvt_block_client_connect(fx->worker, fx->h.server.addr, TIMEOUT_MS, &fx->client), KVT_OK);
    unsetenv("KVT_NET_LOCAL_READS");
    static const kvt_status_t all_ok[N_BLOCKS] = {KVT_OK, KVT_OK, KVT_OK, KVT_OK};
    uint64_t before = atomic_load(&fx->h.fetches);
    atomic_store(&fx->h.parent_busy_left, 2);
    atomic_store(&fx->h.parent_served, false);
    pull_expect(fx, B_PARENT_BUSY, all_ok);
    assert_int_equal(atomic_load(&fx->h.parent_busy_left), 0);
    assert_int_equal(atomic_load(&fx->h.last_keys), 1); /* one key a request */
    assert_true(atomic_load(&fx->h.fetches) - before >= 4 + 2 + 3);
}

/* A server that is busy forever cannot keep the client looping either:
 * it asks again (pausing) until nothing was served for its timeout, and
 * every block is then BUSY, none read. */
static void test_busy_forever_ends(void **state)
{
    fx_t *fx = *state;
    uint64_t before = atomic_load(&fx->h.fetches);
    assert_int_equal(pull_all_within(fx, B_BUSY_FOREVER, 1000), KVT_OK);
    for (int i = 0; i < N_BLOCKS; i++) {
        assert_int_equal(fx->items[i].status, KVT_ERR_BUSY);
        for (size_t b = 0; b < fx->h.payload_len; b++)
            assert_int_equal(fx->dst[i][b], 0);
    }
    assert_true(atomic_load(&fx->h.fetches) - before >= 2);
    assert_int_equal(pull_all(fx, B_HONEST), KVT_OK); /* the connection is still good */
}

int main(void)
{
    g_id = tu_identity();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_broken_blocks_refused, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_broken_reply_fails_pull, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_local_reads_checked, fx_setup_big, fx_teardown),
        cmocka_unit_test_setup_teardown(test_mapped_reads_checked, fx_setup_big, fx_teardown),
        cmocka_unit_test_setup_teardown(test_unasked_local_refused, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_unasked_rkey_refused, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_retry_forever_ends, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_busy_asked_again, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_busy_forever_ends, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_failed_behind_retry_asked_again, fx_setup, fx_teardown),
        cmocka_unit_test_setup_teardown(test_failed_behind_busy_request, fx_setup_big, fx_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
