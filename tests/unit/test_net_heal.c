/* Tests for net/ (the UCX transport) on 127.0.0.1: a worker's limits and
 * its healing -- rendezvous receives (forced with raw UCX sends, so the
 * test includes netInt.h) that complete at once or go over the receive
 * budget, the cap on accepted connections, a server that rebuilds its
 * worker, a listener that listens again after a rebuild, and a probe of a
 * healthy worker.  The server is tests/support/net_fx.h's (the opcodes it
 * answers are listed in test_net.c); requests, RMA, timeouts and killed
 * peers are in test_net.c. */
#include "tests/support/net_fx.h"

/* --- rendezvous receives --- */

/* A message sent with UCX directly, forced to rendezvous whatever its size
 * (kvt_net_send leaves the protocol to UCX); hdr lives until completion. */
typedef struct {
    uint8_t hdr[16];
    void *req;
} raw_send_t;

static void raw_send(kvt_net_ep_t *ep, raw_send_t *rs, uint32_t flags, const void *data,
                     size_t len)
{
    kvt_le_put64(rs->hdr, 0);
    kvt_le_put32(rs->hdr + 8, flags);
    kvt_le_put32(rs->hdr + 12, (uint32_t)len);
    ucp_request_param_t prm = {.op_attr_mask = UCP_OP_ATTR_FIELD_FLAGS,
                               .flags = UCP_AM_SEND_FLAG_REPLY | UCP_AM_SEND_FLAG_RNDV};
    rs->req = ucp_am_send_nbx(ep->uep, NET_AM_DATA, rs->hdr, NET_HDR_LEN, data, len, &prm);
    assert_false(UCS_PTR_IS_ERR(rs->req));
}

/* Progress until every send completed (a dropped one completes too). */
static void raw_wait(kvt_net_worker_t *w, raw_send_t *rs, size_t n)
{
    double end = kvt_time_s() + 10;
    for (size_t i = 0; i < n; i++) {
        if (!rs[i].req)
            continue;
        while (ucp_request_check_status(rs[i].req) == UCS_INPROGRESS && kvt_time_s() < end)
            kvt_net_worker_wait(w, 10);
        assert_int_equal(ucp_request_check_status(rs[i].req), UCS_OK);
        ucp_request_free(rs[i].req);
        rs[i].req = NULL;
    }
}

static srv_stats_t srv_stats(kvt_net_ep_t *ep)
{
    void *reply;
    size_t rl;
    srv_stats_t st;
    assert_int_equal(kvt_net_request(ep, "N", 1, 3000, &reply, &rl), KVT_OK);
    assert_int_equal(rl, sizeof(st));
    memcpy(&st, reply, sizeof(st));
    kvt_free(reply);
    return st;
}

/* Ask until the server has tallied want messages and holds no receive. */
static srv_stats_t srv_settle(kvt_net_ep_t *ep, uint32_t want)
{
    srv_stats_t st = srv_stats(ep);
    for (int i = 0; i < 500 && (st.tally < want || st.inflight); i++) {
        usleep(10 * 1000);
        st = srv_stats(ep);
    }
    return st;
}

/* An empty rendezvous message completes inside ucp_am_recv_data_nbx; that
 * path once unlinked a receive that was never linked and emptied the list
 * of those in flight (so closing their endpoint no longer orphaned them).
 * The large one's RTS is ahead on the stream and its data needs us to
 * progress, so it is in flight when the empty one arrives. */
static void test_rndv_zero_length(void **state)
{
    server_t s;
    server_start(&s);
    kvt_net_worker_t *w = client_create(0);
    kvt_net_ep_t *ep;
    assert_int_equal(kvt_net_connect(w, s.addr, 3000, &ep), KVT_OK);
    size_t len = 2u << 20;
    uint8_t *buf = malloc(len);
    fill_request(buf, len, 'T', 1);
    raw_send_t rs[3];
    raw_send(ep, &rs[0], 0, buf, len);
    raw_send(ep, &rs[1], TEST_FLAG_ZERO, NULL, 0);
    raw_send(ep, &rs[2], TEST_FLAG_ZERO, NULL, 0);
    srv_stats_t st = srv_settle(ep, 1);
    raw_wait(w, rs, 3);
    assert_int_equal(st.zeros, 2);
    assert_int_equal(st.zero_inflight, 1); /* the large one, still listed */
    assert_int_equal(st.tally, 1);         /* ... and delivered intact */
    assert_int_equal(st.tally_bad, 0);
    assert_int_equal(st.inflight, 0);
    assert_int_equal(st.rndv_bytes, 0);
    echo_once(ep, buf, 4096, 2);
    free(buf);
    kvt_net_ep_close(ep);
    server_quit(w, &s);
    kvt_net_worker_destroy(w);
}

/* The server (max_msg 4 MiB) lets an endpoint hold 16 MiB of rendezvous
 * receives: three of 4 MiB.  Announced without our progress (their data
 * needs it), the 4th and 5th are over budget: they wait, and are received
 * once the first ones' data has arrived (nothing is lost); the endpoint
 * stays up, and the budget comes back. */
static void test_rndv_budget(void **state)
{
    server_t s;
    server_start(&s);
    kvt_net_worker_t *w = client_create(0);
    kvt_net_ep_t *ep;
    assert_int_equal(kvt_net_connect(w, s.addr, 3000, &ep), KVT_OK);
    uint8_t *buf = malloc(MAX_MSG);
    fill_request(buf, MAX_MSG, 'T', 1);
    raw_send_t rs[5];
    for (int i = 0; i < 5; i++)
        raw_send(ep, &rs[i], 0, buf, MAX_MSG);
    srv_stats_t st = srv_settle(ep, 5);
    raw_wait(w, rs, 5);
    usleep(100 * 1000); /* a message taken twice would land now */
    st = srv_settle(ep, 5);
    assert_int_equal(st.tally, 5);
    assert_int_equal(st.tally_bad, 0);
    assert_int_equal(st.rndv_bytes, 0);
    assert_true(kvt_net_ep_alive(ep));

    for (int i = 0; i < 3; i++) /* a full budget again */
        raw_send(ep, &rs[i], 0, buf, MAX_MSG);
    st = srv_settle(ep, 8);
    raw_wait(w, rs, 3);
    assert_int_equal(st.tally, 8);
    assert_int_equal(st.tally_bad, 0);
    echo_once(ep, buf, MAX_MSG, 3);
    free(buf);
    kvt_net_ep_close(ep);
    server_quit(w, &s);
    assert_int_equal(g_ev.down, 0);
    kvt_net_worker_destroy(w);
}

/* --- the cap on accepted connections --- */

static srv_conns_t srv_conns(kvt_net_ep_t *ep)
{
    void *reply;
    size_t rl;
    srv_conns_t c;
    assert_int_equal(kvt_net_request(ep, "C", 1, 3000, &reply, &rl), KVT_OK);
    assert_int_equal(rl, sizeof(c));
    memcpy(&c, reply, sizeof(c));
    kvt_free(reply);
    return c;
}

/* Ask until the server holds want accepted endpoints (it closes a dead
 * one when it hears of the death, which is not at once). */
static srv_conns_t srv_conns_settle(kvt_net_ep_t *ep, uint64_t want)
{
    srv_conns_t c = srv_conns(ep);
    for (int i = 0; i < 500 && c.accepted != want; i++) {
        usleep(10 * 1000);
        c = srv_conns(ep);
    }
    return c;
}

/* A server capped at 2 accepted connections refuses a third while the two
 * keep working, and takes a new one once one of them has closed. */
static void test_conn_cap(void **state)
{
    server_t s;
    server_start_capped(&s, 2);
    kvt_net_worker_t *w = client_create(0);
    kvt_net_ep_t *ep[2], *extra = NULL;
    uint8_t buf[256];
    assert_int_equal(kvt_net_connect(w, s.addr, 3000, &ep[0]), KVT_OK);
    assert_int_equal(kvt_net_connect(w, s.addr, 3000, &ep[1]), KVT_OK);
    assert_int_not_equal(kvt_net_connect(w, s.addr, 3000, &extra), KVT_OK);
    assert_null(extra);
    echo_once(ep[0], buf, sizeof(buf), 1);
    echo_once(ep[1], buf, sizeof(buf), 2);
    srv_conns_t c = srv_conns(ep[0]);
    assert_int_equal(c.accepted, 2);
    assert_int_equal(c.refused, 1); /* refused for the cap, not for another reason */

    kvt_net_ep_close(ep[1]);
    c = srv_conns_settle(ep[0], 1);
    assert_int_equal(c.accepted, 1);
    assert_int_equal(kvt_net_connect(w, s.addr, 3000, &ep[1]), KVT_OK);
    echo_once(ep[1], buf, sizeof(buf), 3);
    echo_once(ep[0], buf, sizeof(buf), 4);
    c = srv_conns(ep[1]);
    assert_int_equal(c.accepted, 2);
    assert_int_equal(c.refused, 1);
    assert_int_equal(g_ev.down, 0);

    /* Quit over a held endpoint: at the cap, server_quit's connect would
     * be refused. */
    void *r;
    size_t rl;
    assert_int_equal(kvt_net_request(ep[0], "Q", 1, 3000, &r, &rl), KVT_OK);
    kvt_free(r);
    kvt_net_ep_close(ep[0]);
    kvt_net_ep_close(ep[1]);
    int st = server_reap(&s);
    assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    kvt_net_worker_destroy(w);
}

/* A server that rebuilds its UCX worker (what it does by itself when
 * wedged): the client's endpoint is reported down, a fresh connect to the
 * same port works, over a same-host lane again, and so do requests and RMA
 * reads of memory registered before the rebuild. */
static void test_server_rebuild(void **state)
{
    server_t s;
    server_start(&s);
    kvt_net_worker_t *w = client_create(0);
    kvt_net_ep_t *ep;
    uint8_t buf[300000]; /* rendezvous-sized */
    assert_int_equal(kvt_net_connect(w, s.addr, 3000, &ep), KVT_OK);
    bool lane = kvt_net_ep_lane(ep);
    echo_once(ep, buf, sizeof(buf), 1);
    void *r;
    size_t rl;
    assert_int_equal(kvt_net_request(ep, "W", 1, 3000, &r, &rl), KVT_OK);
    kvt_free(r);
    for (int i = 0; i < 500 && g_ev.down == 0; i++)
        kvt_net_worker_wait(w, 10);
    assert_int_equal(g_ev.down, 1);
    assert_ptr_equal(g_ev.down_ep, ep);
    assert_false(kvt_net_ep_alive(ep));
    assert_int_not_equal(kvt_net_request(ep, "E", 1, 1000, &r, &rl), KVT_OK);
    kvt_net_ep_close(ep);

    assert_int_equal(kvt_net_connect_retry(w, s.addr, 10000, &ep), KVT_OK);
    assert_int_equal(kvt_net_ep_lane(ep), lane);
    echo_once(ep, buf, sizeof(buf), 2);
    srv_conns_t c = srv_conns(ep);
    assert_int_equal(c.rebuilds, 1);
    assert_int_equal(c.accepted, 1); /* the old connection gave its place back */
    uint64_t base;
    kvt_net_rkey_t *rk = fetch_rkey(ep, &base);
    static uint8_t local[65536];
    kvt_net_get_t op = {.local = local, .remote_addr = base + 4096, .len = sizeof(local),
                        .status = KVT_ERR_INVALID};
    assert_int_equal(kvt_net_get_batch(ep, rk, &op, 1, 5000), KVT_OK);
    assert_int_equal(op.status, KVT_OK);
    for (size_t j = 0; j < sizeof(local); j++)
        if (local[j] != pat(4096 + j))
            fail_msg("byte %zu: got %u want %u", j, local[j], pat(4096 + j));
    kvt_net_rkey_destroy(rk);
    kvt_net_ep_close(ep);
    server_quit(w, &s);
    kvt_net_worker_destroy(w);
}

/* A listener that cannot listen again (after a rebuild, its port was
 * taken meanwhile: the test server's L squats it) tries again once a
 * second at the worker's top-level calls, and listens again once the port
 * is free (l): new clients get in, and the connection it had lives on. */
static void test_listen_again(void **state)
{
    (void)state;
    server_t s;
    server_start(&s);
    kvt_net_worker_t *w = client_create(0);
    kvt_net_ep_t *ep, *ep2;
    uint8_t buf[1000];
    assert_int_equal(kvt_net_connect(w, s.addr, 3000, &ep), KVT_OK);
    void *r;
    size_t rl;
    assert_int_equal(kvt_net_request(ep, "L", 1, 3000, &r, &rl), KVT_OK);
    kvt_free(r);
    echo_once(ep, buf, sizeof(buf), 1); /* the server did its L and still serves ep */
    assert_int_equal(kvt_net_request(ep, "l", 1, 3000, &r, &rl), KVT_OK);
    kvt_free(r);
    assert_int_equal(kvt_net_connect_retry(w, s.addr, 10000, &ep2), KVT_OK);
    echo_once(ep2, buf, sizeof(buf), 2);
    echo_once(ep, buf, sizeof(buf), 3);
    kvt_net_ep_close(ep2);
    server_quit(w, &s);
    kvt_net_ep_close(ep);
    kvt_net_worker_destroy(w);
}

/* A worker marked suspect (what a long run of busy wakeups does) whose
 * shared memory moves: the probe arrives, so nothing is rebuilt and the
 * connection lives on; a second probe reuses the prober. */
static void test_probe_healthy(void **state)
{
    server_t s;
    server_start(&s);
    kvt_net_worker_t *w = client_create(0);
    kvt_net_ep_t *ep;
    uint8_t buf[4096];
    assert_int_equal(kvt_net_connect(w, s.addr, 3000, &ep), KVT_OK);
    for (int i = 1; i <= 2; i++) {
        w->wedged = true;
        kvt_net_worker_wait(w, 10);
        assert_false(w->wedged);
        assert_int_equal(w->probes, i);
        assert_int_equal(w->probe_seen, i);
        assert_int_equal(kvt_net_worker_rebuilds(w), 0);
        assert_true(kvt_net_ep_alive(ep));
        echo_once(ep, buf, sizeof(buf), (unsigned)i);
    }
    assert_int_equal(g_ev.down, 0);
    kvt_net_ep_close(ep);
    server_quit(w, &s);
    kvt_net_worker_destroy(w);
}

int main(int argc, char **argv)
{
    kvt_log_level_t level;
    if (getenv("KVT_LOG_LEVEL") && kvt_log_level_parse(getenv("KVT_LOG_LEVEL"), &level) == KVT_OK)
        kvt_log_set_level(level);
    if (argc == 4 && strcmp(argv[1], "--net-server") == 0)
        return server_main(atoi(argv[2]), (size_t)strtoul(argv[3], NULL, 10));
    signal(SIGPIPE, SIG_IGN);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_rndv_zero_length),
        cmocka_unit_test(test_rndv_budget),
        cmocka_unit_test(test_conn_cap),
        cmocka_unit_test(test_server_rebuild),
        cmocka_unit_test(test_listen_again),
        cmocka_unit_test(test_probe_healthy),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
