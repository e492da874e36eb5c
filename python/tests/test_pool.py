"""The pool API as a serving engine drives it: chunked prefill with a prefix snapshot, decode,
chain and tree verify + commit, the whole layer forward, and the pool's slot lifecycle,
import/export and buffer views, on both CPU layouts, against deltanet's f64 oracle."""

import numpy as np
import pytest
import torch

import deltanet
from conftest import oracle_conv, oracle_delta, oracle_gate, randn, ratio

HK, HV, K, V, W = 1, 2, 16, 8, 4
TOL = 1e-5


def make_pool(backend, draft=3, layers=2, slots=6, **kw):
    return deltanet.Pool(backend, layers=layers, slots=slots, num_k_heads=HK, num_v_heads=HV, head_k_dim=K,
                         head_v_dim=V, conv_width=W, draft_tokens=draft, **kw)  # fmt: skip


class Stream:
    """One request's token stream of delta-rule inputs, and the oracle along any path through it."""

    def __init__(self, gen, n):
        self.q = randn(gen, n, HK, K)
        self.k = randn(gen, n, HK, K)
        self.v = randn(gen, n, HV, V)
        self.g = torch.nn.functional.logsigmoid(randn(gen, n, HV) + 2)
        self.beta = torch.rand(n, HV, generator=gen)

    def take(self, idx):
        idx = torch.as_tensor(idx)
        return [t[idx] for t in (self.q, self.k, self.v, self.g, self.beta)]

    def oracle(self, idx):
        """(outputs at each token of the path, final state [HV, K, V])."""
        o, s = oracle_delta(*self.take(idx), [0, len(idx)], l2=True)
        return o, s[0]


def packed(streams_and_idx):
    parts = [s.take(i) for s, i in streams_and_idx]
    return [torch.cat([p[j] for p in parts]) for j in range(5)]


def state_of(pool, slot, layer):
    return pool.export_state(slot)[0][layer]


@pytest.fixture(params=["cpu", "cpu-vk"])
def backend(request):
    return request.param


def test_chunked_prefill_snapshot_decode_verify_commit(backend, gen):
    pool = make_pool(backend)
    L = 1
    a, b, snap = pool.alloc(3)
    pool.zero([a, b, snap])
    A, B = Stream(gen, 105), Stream(gen, 35)

    # chunked prefill: [a 0:37 | b 0:30] without initial state, snapshot of a after 20 tokens
    q, k, v, g, beta = packed([(A, range(0, 37)), (B, range(0, 30))])
    o = torch.empty(67, HV, V)
    pool.extend(L, q, k, v, g, beta, o, cu_seqlens=[0, 37, 67], slots=[a, b], has_initial_state=[False, False],
                snapshots=[(0, 20, snap)])  # fmt: skip
    ra, _ = A.oracle(range(37))
    rb, _ = B.oracle(range(30))
    assert ratio(o[:37], ra) < TOL and ratio(o[37:], rb) < TOL
    assert ratio(state_of(pool, snap, L), A.oracle(range(20))[1]) < TOL
    # continuation of a, 63 tokens (not a multiple of 64 from the start), from its slot
    q, k, v, g, beta = packed([(A, range(37, 100))])
    o = torch.empty(63, HV, V)
    pool.extend(L, q, k, v, g, beta, o, cu_seqlens=torch.tensor([0, 63]), slots=torch.tensor([a]))
    ra, sa = A.oracle(range(100))
    assert ratio(o, ra[37:]) < TOL
    assert ratio(state_of(pool, a, L), sa) < TOL
    assert not state_of(pool, a, 0).any(), "layer 0 untouched"

    # two decode steps for both
    for step in range(2):
        ia, ib = 100 + step, 30 + step
        q, k, v, g, beta = packed([(A, [ia]), (B, [ib])])
        o = torch.empty(2, HV, V)
        pool.decode(L, q, k, v, g, beta, o, slots=np.array([a, b]))
        assert ratio(o[0], A.oracle(range(ia + 1))[0][-1]) < TOL
        assert ratio(o[1], B.oracle(range(ib + 1))[0][-1]) < TOL

    # chain verify of 3 drafts each: outputs along the chain, main state untouched
    before = (pool.export_bytes(a), pool.export_bytes(b))
    q, k, v, g, beta = packed([(A, range(102, 105)), (B, range(32, 35))])
    o = torch.empty(6, HV, V)
    pool.verify(L, q, k, v, g, beta, o, slots=[a, b])
    assert ratio(o[:3], A.oracle(range(105))[0][102:]) < TOL
    assert ratio(o[3:], B.oracle(range(35))[0][32:]) < TOL
    assert (pool.export_bytes(a), pool.export_bytes(b)) == before
    pool.commit(L, [a, b], accepted=[1, 2])
    assert ratio(state_of(pool, a, L), A.oracle(range(104))[1]) < TOL
    assert ratio(state_of(pool, b, L), B.oracle(range(35))[1]) < TOL


def test_tree_verify_and_commit(backend, gen):
    pool = make_pool(backend)
    L = 0
    (a,) = pool.alloc(1)
    A = Stream(gen, 24)
    q, k, v, g, beta = packed([(A, range(20))])
    pool.extend(L, q, k, v, g, beta, torch.empty(20, HV, V), cu_seqlens=[0, 20], slots=[a], has_initial_state=False)
    # drafts 20, 21, 22 with parents [-1, 0, 0]: token 22 branches off token 20
    q, k, v, g, beta = packed([(A, [20, 21, 22])])
    o = torch.empty(3, HV, V)
    pool.verify(L, q, k, v, g, beta, o, slots=[a], parents=[-1, 0, 0])
    path = list(range(20)) + [20, 22]
    ro, rs = A.oracle(path)
    assert ratio(o[0], A.oracle(range(21))[0][-1]) < TOL
    assert ratio(o[1], A.oracle(range(22))[0][-1]) < TOL
    assert ratio(o[2], ro[-1]) < TOL
    snap = pool.alloc(1)[0]
    pool.commit(L, [a], [2], snapshots=[snap])
    assert ratio(state_of(pool, a, L), rs) < TOL
    assert np.array_equal(state_of(pool, snap, L), state_of(pool, a, L))


def test_commit_skips_a_request_that_accepted_nothing(backend, gen):
    pool = make_pool(backend)
    L = 1
    a, b = pool.alloc(2)
    A, B = Stream(gen, 13), Stream(gen, 13)
    q, k, v, g, beta = packed([(A, range(10)), (B, range(10))])
    pool.extend(L, q, k, v, g, beta, torch.empty(20, HV, V), cu_seqlens=[0, 10, 20], slots=[a, b], has_initial_state=False)
    q, k, v, g, beta = packed([(A, range(10, 13)), (B, range(10, 13))])
    pool.verify(L, q, k, v, g, beta, torch.empty(6, HV, V), slots=[a, b])
    before_b = pool.export_bytes(b)
    # a accepts drafts 10 and 11 (step 1); b accepts nothing: its slot is untouched
    pool.commit(L, [a, b], accepted=[1, None])
    assert ratio(state_of(pool, a, L), A.oracle(range(12))[1]) < TOL
    assert pool.export_bytes(b) == before_b
    # b's verify is still current: committing it later equals decoding its path
    pool.commit(L, [b], accepted=[2])
    assert ratio(state_of(pool, b, L), B.oracle(range(13))[1]) < TOL
    with pytest.raises(deltanet.SpeculativeError, match="skipped"):
        pool.commit(L, [a], accepted=[None], snapshots=[b])


def test_empty_batches_are_refused_everywhere():
    pool = make_pool("cpu")
    pool.alloc(1)
    digest = pool.digest()
    for call in [lambda: pool.alloc(0), lambda: pool.free([]), lambda: pool.zero([]), lambda: pool.commit(0, [], [])]:
        with pytest.raises(deltanet.ShapeError, match="no requests"):
            call()
        assert pool.digest() == digest


def layer_oracle(x, a, b, w):
    """conv -> gate -> delta rule in f64 along one request's whole stream (from zero state)."""
    n = x.shape[0]
    co, cst = oracle_conv(x, w["conv_weight"], w["conv_bias"], [0, n])
    co = torch.tensor(co, dtype=torch.float32)
    q = co[:, : HK * K].reshape(n, HK, K)
    k = co[:, HK * K : 2 * HK * K].reshape(n, HK, K)
    v = co[:, 2 * HK * K :].reshape(n, HV, V)
    g, beta = oracle_gate(a, b, w["A_log"], w["dt_bias"])
    o, s = oracle_delta(q, k, v, torch.tensor(g), torch.tensor(beta), [0, n], l2=True)
    return o, s[0], cst[0]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_layer_forward_extend_decode_verify_commit(backend, gen, dtype):
    pool = make_pool(backend, draft=2, layers=1)
    C = pool.conv_dim
    w = dict(A_log=randn(gen, HV), dt_bias=randn(gen, HV), conv_weight=randn(gen, C, W) * 0.5, conv_bias=randn(gen, C))
    n = 60
    X, Aa, Bb = randn(gen, n, C, dtype=dtype), randn(gen, n, HV, dtype=dtype), randn(gen, n, HV, dtype=dtype)
    s1, s2 = pool.alloc(2)
    tol = TOL if dtype == torch.float32 else 1e-2
    # prefill: s1 gets tokens 0:50 in pieces 0:21 and 21:50, s2 gets its own 0:30
    Y, Ya, Yb = randn(gen, 30, C, dtype=dtype), randn(gen, 30, HV, dtype=dtype), randn(gen, 30, HV, dtype=dtype)
    out = torch.empty(51, HV, V, dtype=dtype)
    pool.forward("extend", 0, torch.cat([X[:21], Y]), torch.cat([Aa[:21], Ya]), torch.cat([Bb[:21], Yb]), out,
                 slots=[s1, s2], cu_seqlens=[0, 21, 51], has_initial_state=False, **w)  # fmt: skip
    ro, _, _ = layer_oracle(X[:50], Aa[:50], Bb[:50], w)
    ry, rys, ryc = layer_oracle(Y, Ya, Yb, w)
    assert ratio(out[:21], ro[:21]) < tol and ratio(out[21:], ry) < tol
    out = torch.empty(29, HV, V, dtype=dtype)
    pool.forward("extend", 0, X[21:50], Aa[21:50], Bb[21:50], out, slots=[s1], cu_seqlens=[0, 29], **w)
    assert ratio(out, ro[21:50]) < tol
    # decode token 50, then verify 51, 52 and commit the first
    out = torch.empty(1, HV, V, dtype=dtype)
    pool.forward("decode", 0, X[50:51], Aa[50:51], Bb[50:51], out, slots=[s1], **w)
    ro, _, _ = layer_oracle(X[:53], Aa[:53], Bb[:53], w)
    assert ratio(out[0], ro[50]) < tol
    out = torch.empty(2, HV, V, dtype=dtype)
    pool.forward("verify", 0, X[51:53], Aa[51:53], Bb[51:53], out, slots=[s1], **w)
    assert ratio(out, ro[51:53]) < tol
    pool.commit(0, [s1], [0])
    _, rs, rc = layer_oracle(X[:52], Aa[:52], Bb[:52], w)
    temporal, conv = pool.export_state(s1)
    assert ratio(temporal[0], rs) < (TOL if dtype == torch.float32 else 1e-4)
    assert ratio(conv[0], rc) == 0.0  # the conv state is the raw inputs
    temporal, conv = pool.export_state(s2)
    assert ratio(temporal[0], rys) < (TOL if dtype == torch.float32 else 1e-4) and ratio(conv[0], ryc) == 0.0


def test_conv_and_gate_entry_points(backend, gen):
    pool = make_pool(backend, draft=2, layers=1)
    C = pool.conv_dim
    weight, bias = randn(gen, C, W), randn(gen, C)
    x = randn(gen, 13, C)
    (s,) = pool.alloc(1)
    out = torch.empty(10, C)
    pool.conv_extend(0, x[:10], weight, bias, out, cu_seqlens=[0, 10], slots=[s], has_initial_state=False)
    ro, _ = oracle_conv(x[:11], weight, bias, [0, 11])
    assert ratio(out, ro[:10]) < 1e-6
    out = torch.empty(1, C)
    pool.conv_update(0, x[10:11], weight, bias, out, slots=[s])
    assert ratio(out, ro[10:]) < 1e-6
    out = torch.empty(2, C)
    pool.conv_verify(0, x[11:13], weight, bias, out, slots=[s])
    ro, _ = oracle_conv(x, weight, bias, [0, 13])
    assert ratio(out, ro[11:]) < 1e-6
    out2 = torch.empty(2, C)
    pool.conv_verify(0, x[11:13], weight, bias, out2, slots=[s])  # verify left the conv state alone
    assert torch.equal(out, out2)
    a, b, A_log, dt_bias = randn(gen, 5, HV), randn(gen, 5, HV), randn(gen, HV), randn(gen, HV)
    g, beta = torch.empty(5, HV), torch.empty(5, HV)
    deltanet.Backend(backend).gate(a, b, A_log, dt_bias, g, beta)
    rg, rb = oracle_gate(a, b, A_log, dt_bias)
    assert ratio(g, rg) < 1e-6 and ratio(beta, rb) < 1e-6


def test_slots_copy_fork_zero_and_migration_between_layouts(gen):
    pk, pv = make_pool("cpu"), make_pool("cpu-vk")
    assert (pk.layout, pv.layout) == ("k-major", "v-major")
    A = Stream(gen, 40)
    states = []
    for pool in (pk, pv):
        (a,) = pool.alloc(1)
        q, k, v, g, beta = packed([(A, range(40))])
        pool.extend(1, q, k, v, g, beta, torch.empty(40, HV, V), cu_seqlens=[0, 40], slots=[a], has_initial_state=False)
        states.append((pool, a))
    (pk, a), (pv, av) = states
    # both layouts give the same canonical state (up to the kernels' rounding)
    assert ratio(pk.export_state(a)[0], pv.export_state(av)[0]) < TOL
    # migration K-major -> V-major -> K-major is exact
    (m,) = pv.alloc(1)
    pv.import_bytes(m, pk.export_bytes(a))
    assert pv.export_bytes(m) == pk.export_bytes(a)
    (back,) = pk.alloc(1)
    pk.import_state(back, *pv.export_state(m))
    assert pk.export_bytes(back) == pk.export_bytes(a)
    # fork, copy, zero
    f = pk.fork(a)
    assert pk.export_bytes(f) == pk.export_bytes(a)
    pk.zero([f])
    assert not pk.export_state(f)[0].any()
    pk.copy(a, f)
    assert pk.export_bytes(f) == pk.export_bytes(a)
    free_before = pk.free_count()
    pk.free(torch.tensor([f, back]))
    assert pk.free_count() == free_before + 2 and not pk.is_allocated(f)


@pytest.mark.parametrize("backend_name", ["cpu", "cpu-vk"])
def test_buffer_views_and_descriptors_alias_the_pool(gen, backend_name):
    pool = make_pool(backend_name)
    A = Stream(gen, 10)
    (a,) = pool.alloc(1)
    q, k, v, g, beta = packed([(A, range(10))])
    pool.extend(1, q, k, v, g, beta, torch.empty(10, HV, V), cu_seqlens=[0, 10], slots=[a], has_initial_state=False)
    view = np.asarray(pool.buffer("temporal", 1))
    assert view.shape == ((7, HV, K, V) if backend_name == "cpu" else (7, HV, V, K))
    canonical = view[a] if backend_name == "cpu" else view[a].transpose(0, 2, 1)
    assert np.array_equal(canonical, state_of(pool, a, 1))
    desc = {(d["kind"], d["layer"]): d for d in pool.descriptors()}
    assert set(k for k, _ in desc) == {"conv", "temporal", "scratch", "conv_windows"}
    d = desc[("temporal", 1)]
    assert d["addr"] == view.__array_interface__["data"][0]
    assert d["bytes_per_slot"] == HV * K * V * 4 and d["bytes"] == 7 * d["bytes_per_slot"]
    assert np.asarray(pool.buffer("scratch", 0)).shape[:2] == (7, 3)
    # the view is the pool's memory: writing through it shows in the export
    view[a] = 0
    assert not state_of(pool, a, 1).any()
    assert sum(x["bytes"] for x in pool.descriptors()) == pool.bytes()


def test_sizes_and_budget():
    pool = make_pool("cpu", draft=2, layers=3, slots=4, state_dtype="bf16")
    per = pool.bytes_per_slot()
    conv_dim = 2 * HK * K + HV * V
    assert per == 3 * (HV * K * V * 2 + conv_dim * (W - 1) * 4) * 3
    assert pool.bytes() == per * 5
    n = deltanet.slots_for_budget(per * 10 + 5, layers=3, num_k_heads=HK, num_v_heads=HV, head_k_dim=K,
                                  head_v_dim=V, state_dtype="bf16", draft_tokens=2)  # fmt: skip
    assert n == 9
    assert np.asarray(pool.buffer("temporal", 0)).dtype == np.uint16  # bf16 as raw bits
    caps = deltanet.Backend("cpu").capabilities()
    assert "bf16" in caps["state_dtypes"] and caps["native_layout"] == "k-major"
