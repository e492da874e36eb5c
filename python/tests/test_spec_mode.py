"""Speculative modes from Python: a pool made with ``spec_mode="replay"`` keeps the drafts' inputs
instead of per-step states, and its verify and commit give the same bits as a scratch pool's (the
CPU backend's contract), on both CPU layouts; its size, buffer views and refusals."""

import numpy as np
import pytest
import torch

import deltanet
from conftest import randn, ratio
from test_pool import HK, HV, TOL, V, W, K, Stream, make_pool, packed, state_of


@pytest.fixture(params=["cpu", "cpu-vk"])
def backend(request):
    return request.param


def prefilled_pair(backend, gen, n, draft=3):
    """A scratch and a replay pool, each with two slots prefilled with the same tokens."""
    A, B = Stream(gen, n + draft), Stream(gen, n + draft)
    pools = []
    for mode in ["scratch", "replay"]:
        pool = make_pool(backend, draft=draft, spec_mode=mode)
        a, b = pool.alloc(2)
        q, k, v, g, beta = packed([(A, range(n)), (B, range(n))])
        pool.extend(0, q, k, v, g, beta, torch.empty(2 * n, HV, V), cu_seqlens=[0, n, 2 * n], slots=[a, b],
                    has_initial_state=False)  # fmt: skip
        pools.append((pool, a, b))
    return pools, A, B


def test_chain_verify_and_commit_equal_scratch_bitwise(backend, gen):
    n = 40
    pools, A, B = prefilled_pair(backend, gen, n)
    outs, states = [], []
    for pool, a, b in pools:
        q, k, v, g, beta = packed([(A, range(n, n + 3)), (B, range(n, n + 3))])
        o = torch.empty(6, HV, V)
        before = state_of(pool, a, 0).copy()
        pool.verify(0, q, k, v, g, beta, o, slots=[a, b])
        assert np.array_equal(state_of(pool, a, 0), before)  # verify writes no state
        pool.commit(0, [a, b], accepted=[1, 2])
        outs.append(o)
        states.append((state_of(pool, a, 0), state_of(pool, b, 0)))
    assert torch.equal(outs[0], outs[1])
    assert all(np.array_equal(x, y) for x, y in zip(*states))
    # and against the oracle: a took drafts 0..1, b took all three
    assert ratio(states[1][0], A.oracle(range(n + 2))[1]) < TOL
    assert ratio(states[1][1], B.oracle(range(n + 3))[1]) < TOL
    assert ratio(outs[1][:3], A.oracle(range(n + 3))[0][n:]) < TOL


def test_tree_verify_commit_with_snapshot_and_skip(backend, gen):
    n = 25
    pools, A, B = prefilled_pair(backend, gen, n)
    results = []
    for pool, a, b in pools:
        q, k, v, g, beta = packed([(A, [n, n + 1, n + 2]), (B, [n, n + 1, n + 2])])
        o = torch.empty(6, HV, V)
        pool.verify(0, q, k, v, g, beta, o, slots=[a, b], parents=[-1, 0, 0] * 2)
        b_before = state_of(pool, b, 0).copy()
        (snap,) = pool.alloc(1)
        pool.commit(0, [a, b], accepted=[2, None], snapshots=[snap, None])
        assert np.array_equal(state_of(pool, b, 0), b_before)  # skipped: untouched
        assert np.array_equal(state_of(pool, snap, 0), state_of(pool, a, 0))
        results.append((o, state_of(pool, a, 0), pool.export_state(a)[1][0]))
    (o0, s0, c0), (o1, s1, c1) = results
    assert torch.equal(o0, o1) and np.array_equal(s0, s1) and np.array_equal(c0, c1)
    assert ratio(s1, A.oracle(list(range(n)) + [n, n + 2])[1]) < TOL


def test_layer_forward_verify_and_commit_equal_scratch_bitwise(backend, gen):
    w, x, a, b, outs, states = None, None, None, None, [], []
    for mode in ["scratch", "replay"]:
        pool = make_pool(backend, draft=2, layers=1, spec_mode=mode)
        C = pool.conv_dim
        if w is None:
            w = dict(A_log=randn(gen, HV), dt_bias=randn(gen, HV), conv_weight=randn(gen, C, W) * 0.5,
                     conv_bias=randn(gen, C))  # fmt: skip
            x, a, b = randn(gen, 22, C), randn(gen, 22, HV), randn(gen, 22, HV)
        (s,) = pool.alloc(1)
        pool.forward("extend", 0, x[:20], a[:20], b[:20], torch.empty(20, HV, V), slots=[s], cu_seqlens=[0, 20],
                     has_initial_state=False, **w)  # fmt: skip
        out = torch.empty(2, HV, V)
        pool.forward("verify", 0, x[20:22], a[20:22], b[20:22], out, slots=[s], **w)
        pool.commit(0, [s], [1])
        outs.append(out)
        states.append(pool.export_state(s))
    assert torch.equal(outs[0], outs[1])
    assert np.array_equal(states[0][0], states[1][0]) and np.array_equal(states[0][1], states[1][1])


def test_sizes_views_and_refusals():
    scratch = make_pool("cpu", draft=4, layers=2, slots=3)
    replay = make_pool("cpu", draft=4, layers=2, slots=3, spec_mode="replay")
    assert (scratch.spec_mode, replay.spec_mode, make_pool("cpu", draft=0).spec_mode) == ("scratch", "replay", None)
    assert replay.bytes() < scratch.bytes()
    conv_dim = 2 * HK * K + HV * V
    main = HV * K * V * 4 + conv_dim * (W - 1) * 4  # a state and a conv window, f32
    step = HV * (K + V + 2) * 4 + conv_dim * 4  # per draft: k, v, g, beta per value head and the raw conv input
    assert scratch.bytes_per_slot() == 2 * main * (1 + 4)
    assert replay.bytes_per_slot() == 2 * (main + 4 * step)
    assert np.asarray(replay.buffer("scratch", 1)).shape == (4, 4, HV, K + V + 2)
    assert np.asarray(replay.buffer("conv_windows", 0)).shape == (4, 4, conv_dim)
    kw = dict(layers=2, num_k_heads=HK, num_v_heads=HV, head_k_dim=K, head_v_dim=V, draft_tokens=4)
    budget = scratch.bytes_per_slot() * 10
    assert deltanet.slots_for_budget(budget, spec_mode="replay", **kw) > deltanet.slots_for_budget(budget, **kw)
    with pytest.raises(deltanet.ConfigError, match="spec"):
        make_pool("cpu", draft=4, spec_mode="eager")
    with pytest.raises(deltanet.ConfigError):
        make_pool("cpu", draft=0, spec_mode="replay")
