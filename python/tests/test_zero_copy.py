"""Tensors reach the kernels without copies: the address, shape and strides deltanet sees are the
caller's, and outputs land in caller-provided strided views. Kernels run with the GIL released."""

import threading
import time

import numpy as np
import pytest
import torch

import deltanet
from deltanet import _native
from conftest import delta_inputs, randn


def test_torch_address_shape_strides_are_the_callers(gen):
    t = randn(gen, 4, 6, 8)
    for view in (t, t[1:, ::2, :5], t.transpose(0, 1), t[2]):
        addr, shape, strides, dtype = _native.tensor_info(view)
        assert addr == view.data_ptr()
        assert tuple(shape) == tuple(view.shape) and tuple(strides) == view.stride()
        assert dtype == "f32"
    for dt, name in ((torch.bfloat16, "bf16"), (torch.float16, "f16")):
        x = t.to(dt)[:, 1:]
        assert _native.tensor_info(x)[0] == x.data_ptr() and _native.tensor_info(x)[3] == name


def test_numpy_address_and_readonly_arrays(gen):
    a = randn(gen, 3, 5).numpy()[:, 1:]
    addr, shape, strides, _ = _native.tensor_info(a)
    assert addr == a.__array_interface__["data"][0]
    assert tuple(strides) == tuple(s // 4 for s in a.strides)
    ro = np.broadcast_to(np.float32(1.0), (2, 3))  # read-only, zero strides: readable
    assert tuple(_native.tensor_info(ro)[2]) == (0, 0)


def test_torch_capsule_is_consumed_and_released(gen):
    """The DLPack capsule's deleter runs: the tensor's refcount returns to where it was."""
    import sys

    t = randn(gen, 8, 8)
    before = sys.getrefcount(t)
    for _ in range(50):
        _native.tensor_info(t)
    assert sys.getrefcount(t) == before


def test_outputs_land_in_a_caller_strided_view(gen):
    HK, HV, K, V = 1, 2, 8, 4
    pool = deltanet.Pool("cpu", layers=1, slots=2, num_k_heads=HK, num_v_heads=HV, head_k_dim=K, head_v_dim=V)
    (s,) = pool.alloc(1)
    T = 6
    q, k, v = randn(gen, T, HK, K), randn(gen, T, HK, K), randn(gen, T, HV, V)
    g, beta = -torch.rand(T, HV, generator=gen), torch.rand(T, HV, generator=gen)
    big = torch.zeros(T, HV, 3 * V)  # e.g. an engine's output buffer with other heads interleaved
    o = big[:, :, V : 2 * V]
    assert not o.is_contiguous()
    pool.extend(0, q, k, v, g, beta, o, cu_seqlens=[0, T], slots=[s], has_initial_state=False)
    ref = torch.empty(T, HV, V)
    pool.extend(0, q, k, v, g, beta, ref, cu_seqlens=[0, T], slots=[s], has_initial_state=False)
    assert torch.equal(big[:, :, V : 2 * V], ref)
    assert not big[:, :, :V].any() and not big[:, :, 2 * V :].any()


def test_gil_is_released_while_kernels_run(gen):
    """A Python thread makes progress while another thread is inside a long deltanet call."""
    q, k, v, g, beta = delta_inputs(gen, 4, 2048, 2, 4, 64, 64)
    ticks = []
    done = threading.Event()

    def ticker():
        while not done.is_set():
            ticks.append(time.perf_counter())
            time.sleep(0.001)

    t0 = time.perf_counter()
    deltanet.chunk_gated_delta_rule(q, k, v, g, beta)
    alone = time.perf_counter() - t0
    th = threading.Thread(target=ticker)
    th.start()
    time.sleep(0.01)
    t1 = time.perf_counter()
    deltanet.chunk_gated_delta_rule(q, k, v, g, beta)
    t2 = time.perf_counter()
    done.set()
    th.join()
    inside = [t for t in ticks if t1 < t < t2]
    if alone < 0.02:
        pytest.skip(f"kernel too fast to observe ({alone:.4f} s)")
    # with the GIL held, the ticker could not run at all during the call
    assert len(inside) >= 3, (len(inside), t2 - t1)
