/* A node's link to the coordinator: membership, load and KV events
 * (DESIGN.md section 4 and invariant 7).
 *
 * The link owns one thread with its own UCX worker.  It connects to the
 * coordinator (retrying with backoff for as long as it runs: a coordinator
 * that restarts is found again), says Hello and NodeRegister, sends a
 * snapshot of every block the node holds, then ordered deltas, a Heartbeat
 * with the node's load every heartbeat_ms, and whatever the node hands it
 * with kvt_node_link_send.  Messages from the coordinator go to on_msg.
 *
 * The link keeps its own mirror of the node's blocks (key -> tiers),
 * updated by kvt_node_link_event from the tiers' and the engine's event
 * callbacks: the snapshot is a dump of that mirror and the deltas are the
 * events since, under one lock, so the coordinator's copy converges to the
 * node's state.  A snapshot larger than one message goes as a snapshot of
 * its first part followed by deltas of STORED events.  A SnapshotRequest
 * (the coordinator saw a gap) gets a fresh snapshot.
 *
 * Failure: while the coordinator is unreachable, sends fail with
 * KVT_ERR_CLOSED (the coordinator retries or fails the requests it had in
 * flight here) and events only update the mirror; reconnecting sends a
 * fresh snapshot.  Nothing the coordinator sends can crash the link: a
 * message that does not decode is logged and dropped. */
#ifndef KVT_KVSTORE_NODE_LINK_H
#define KVT_KVSTORE_NODE_LINK_H

#include "kvstore/block.h"
#include "kvstore/events.h"
#include "proto/msg.h"

#include <stdbool.h>
#include <stdint.h>

typedef struct kvt_node_link kvt_node_link_t;

typedef struct {
    uint32_t active;     /* sequences running */
    uint32_t free_slots; /* more sequences it could take now */
    uint32_t queued;     /* requests waiting */
} kvt_node_load_t;

/* A decoded message from the coordinator (not a SnapshotRequest, which the
 * link answers itself).  Runs on the link thread: copy what must outlive
 * the call, hand the work to another thread, return quickly. */
typedef void (*kvt_node_link_msg_fn)(const kvt_msg_t *msg, void *arg);
/* The node's load for the next heartbeat (called on the link thread). */
typedef void (*kvt_node_link_load_fn)(kvt_node_load_t *load_p, void *arg);
/* The link (re)connected: the node may resend state it keeps elsewhere. */
typedef void (*kvt_node_link_up_fn)(bool up, void *arg);

typedef struct {
    const char *coord;          /* the coordinator's UCX HOST:PORT */
    const char *node_id;
    const char *role;           /* "prefill" | "decode" */
    const char *ucx_address;    /* the node's block server HOST:PORT, or "" */
    const char *http_address;   /* its HTTP health address, or "" */
    const char *device;         /* "cpu" | "cuda:N" */
    uint8_t fingerprint[KVT_FINGERPRINT_LEN];
    uint32_t block_tokens;
    uint32_t kv_slots;
    uint64_t host_capacity_bytes, disk_capacity_bytes;
    uint32_t heartbeat_ms;      /* 0: 1000 */
    kvt_node_link_msg_fn on_msg;
    kvt_node_link_load_fn load; /* may be NULL */
    kvt_node_link_up_fn on_up;  /* may be NULL */
    void *arg;                  /* passed to all three */
} kvt_node_link_params_t;

/* The link, not yet running: feed it the node's resident blocks with
 * kvt_node_link_event before kvt_node_link_start.  Strings are copied. */
kvt_status_t kvt_node_link_create(const kvt_node_link_params_t *params,
                                  kvt_node_link_t **link_p);
/* The node's block server address, when it is known only after create
 * (the server needs the tier, which needs the link for its events): call
 * before kvt_node_link_start.  KVT_ERR_NOMEM. */
kvt_status_t kvt_node_link_set_ucx_address(kvt_node_link_t *link, const char *ucx_address);
/* Start the thread (it connects in the background). */
kvt_status_t kvt_node_link_start(kvt_node_link_t *link);
/* Stop the thread, close the connection, free everything. */
void kvt_node_link_destroy(kvt_node_link_t *link);

/* A kvt_block_event_fn (arg = the link): any thread, any time after
 * create.  Updates the mirror and queues the event for the next delta. */
void kvt_node_link_event(const kvt_block_event_t *event, void *link);

/* Encode msg and queue it for the coordinator (thread-safe; msg is not
 * kept).  KVT_ERR_CLOSED when the link is not connected now, or the
 * encoder's errors. */
kvt_status_t kvt_node_link_send(kvt_node_link_t *link, kvt_msg_t *msg);
bool kvt_node_link_connected(kvt_node_link_t *link);
/* An Error envelope answering request_id (kvt_node_link_send's errors). */
kvt_status_t kvt_node_link_send_error(kvt_node_link_t *link, const char *request_id,
                                      kvt_status_t code, const char *message);

typedef struct {
    uint64_t connects, snapshots, deltas, events, heartbeats, sent, bad_messages;
    uint64_t mirror_blocks;
} kvt_node_link_stats_t;
void kvt_node_link_stats(kvt_node_link_t *link, kvt_node_link_stats_t *stats_p);

#endif
