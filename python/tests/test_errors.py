"""Bad arguments raise the documented exceptions (message kept, argument named) and change no
state: not the pool's, not an in-place conv state. Panics surface as InternalError."""

import numpy as np
import pytest
import torch

import deltanet
from conftest import delta_inputs, randn

HK, HV, K, V, W = 1, 2, 8, 4, 4


def test_hierarchy():
    builtin = {
        "LayoutError": ValueError, "ShapeError": ValueError, "DTypeError": TypeError, "SlotError": ValueError,
        "SpeculativeError": ValueError, "ConfigError": ValueError, "UnsupportedArgumentError": ValueError,
        "OutOfMemoryError": MemoryError, "DeviceError": RuntimeError, "UnavailableError": RuntimeError,
        "InternalError": RuntimeError,
    }  # fmt: skip
    for name, base in builtin.items():
        cls = getattr(deltanet, name)
        assert issubclass(cls, deltanet.Error) and issubclass(cls, base), name
        assert cls.__module__ == "deltanet" and cls.__doc__
    assert issubclass(deltanet.UnsupportedArgumentError, deltanet.ConfigError)


def test_panic_becomes_internal_error():
    with pytest.raises(deltanet.InternalError, match="deliberate test panic"):
        deltanet._native._panic_for_test()


@pytest.mark.parametrize(
    "kwargs,name",
    [
        (dict(cp_context=object()), "cp_context"),
        (dict(head_first=False), "head_first"),
        (dict(bogus=1), "bogus"),
        (dict(use_beta_sigmoid_in_kernel=True, allow_neg_eigval=True), "allow_neg_eigval"),
    ],
)
def test_chunk_unsupported_arguments_are_named(gen, kwargs, name):
    q, k, v, g, beta = delta_inputs(gen, 1, 4, 1, 1, 8, 8)
    with pytest.raises(deltanet.UnsupportedArgumentError, match=f"`{name}`"):
        deltanet.chunk_gated_delta_rule(q, k, v, g, beta, **kwargs)


@pytest.mark.parametrize("arg", ["gk", "gv"])
def test_fused_recurrent_unsupported_arguments(gen, arg):
    q, k, v, g, beta = delta_inputs(gen, 1, 4, 1, 1, 8, 8)
    with pytest.raises(deltanet.UnsupportedArgumentError, match=f"`{arg}`"):
        deltanet.fused_recurrent_gated_delta_rule(q, k, v, g=g, beta=beta, **{arg: g})


def test_conv_unsupported_arguments(gen):
    x, w = randn(gen, 1, 8, 5), randn(gen, 8, 4)
    with pytest.raises(deltanet.UnsupportedArgumentError, match="`activation`"):
        deltanet.causal_conv1d_fn(x, w, activation=None)
    with pytest.raises(deltanet.UnsupportedArgumentError, match="`seq_idx`"):
        deltanet.causal_conv1d_fn(x, w, seq_idx=torch.zeros(1, 5, dtype=torch.int32), activation="silu")
    st = randn(gen, 1, 8, 3)
    for kw in (dict(cache_seqlens=torch.zeros(1)), dict(conv_state_indices=torch.zeros(1))):
        with pytest.raises(deltanet.UnsupportedArgumentError, match=f"`{next(iter(kw))}`"):
            deltanet.causal_conv1d_update(x[..., 0], st, w, activation="silu", **kw)
    with pytest.raises(NotImplementedError):
        deltanet.causal_conv1d_fn(x, w, activation="relu")


def test_shape_and_dtype_errors(gen):
    q, k, v, g, beta = delta_inputs(gen, 2, 6, 1, 2, 8, 4)
    with pytest.raises(deltanet.ShapeError):
        deltanet.chunk_gated_delta_rule(q, k[..., :4], v, g, beta)
    with pytest.raises(deltanet.ShapeError, match="batch size"):
        deltanet.chunk_gated_delta_rule(q, k, v, g, beta, cu_seqlens=torch.tensor([0, 3, 6]))
    with pytest.raises(deltanet.ShapeError, match="cu_seqlens"):
        deltanet.chunk_gated_delta_rule(q[:1], k[:1], v[:1], g[:1], beta[:1], cu_seqlens=[0, 3, 5])
    with pytest.raises(deltanet.ShapeError, match="initial states"):
        deltanet.chunk_gated_delta_rule(q, k, v, g, beta, initial_state=torch.zeros(3, 2, 8, 4))
    with pytest.raises(deltanet.ShapeError, match="initial_state"):
        deltanet.chunk_gated_delta_rule(q, k, v, g, beta, initial_state=torch.zeros(2, 2, 4, 8))
    with pytest.raises(deltanet.DTypeError, match="`q`"):
        deltanet.chunk_gated_delta_rule(q.double(), k, v, g, beta)
    with pytest.raises(ValueError):  # fla's own check, kept: HV must be a multiple of H
        deltanet.chunk_gated_delta_rule(torch.zeros(1, 2, 2, 8), torch.zeros(1, 2, 2, 8), torch.zeros(1, 2, 3, 4),
                                        torch.zeros(1, 2, 3), torch.zeros(1, 2, 3))  # fmt: skip
    with pytest.raises(deltanet.DTypeError):
        deltanet.chunk_gated_delta_rule([1.0], k, v, g, beta)


class FakeCudaTensor:
    """Announces a CUDA DLPack device, as a torch CUDA tensor does."""

    shape = (1, 2, 1, 8)

    def __dlpack_device__(self):
        return (2, 0)

    def __dlpack__(self, stream=None):
        raise AssertionError("must be refused before export")


def test_cuda_tensors_are_refused_clearly(gen):
    _, k, v, g, beta = delta_inputs(gen, 1, 2, 1, 1, 8, 8)
    with pytest.raises(deltanet.UnavailableError, match="does not accept an external stream yet"):
        deltanet.chunk_gated_delta_rule(FakeCudaTensor(), k, v, g, beta)


def test_conv_update_error_leaves_state_unchanged(gen):
    st = randn(gen, 2, 8, 3)
    before = st.clone()
    x = randn(gen, 2, 8)
    with pytest.raises(deltanet.ShapeError):
        deltanet.causal_conv1d_update(x, st, randn(gen, 7, 4), activation="silu")  # weight of 7 channels
    with pytest.raises(deltanet.DTypeError):
        deltanet.causal_conv1d_update(x.double(), st, randn(gen, 8, 4), activation="silu")
    assert torch.equal(st, before)


def test_conv_update_refuses_x_overlapping_its_state(gen):
    """The decode conv shifts the caller's state in place: an input over that memory is refused."""
    st = randn(gen, 2, 8, 4)
    before = st.clone()
    x = st.view(-1)[:16].view(2, 8)  # [2, 8], unit channel stride, over the first state rows
    with pytest.raises(deltanet.LayoutError, match="overlaps `conv_state`"):
        deltanet.causal_conv1d_update(x, st, randn(gen, 8, 4), activation="silu")
    assert torch.equal(st, before)


def make_pool(draft=2):
    return deltanet.Pool("cpu", layers=2, slots=3, num_k_heads=HK, num_v_heads=HV, head_k_dim=K, head_v_dim=V,
                         conv_width=W, draft_tokens=draft)  # fmt: skip


def delta_args(gen, T):
    return [randn(gen, T, HK, K), randn(gen, T, HK, K), randn(gen, T, HV, V), -torch.rand(T, HV, generator=gen),
            torch.rand(T, HV, generator=gen), torch.empty(T, HV, V)]  # fmt: skip


def test_slot_errors():
    pool = make_pool()
    a, b = pool.alloc(2)
    pool.free([b])
    with pytest.raises(deltanet.SlotError, match="double free"):
        pool.free([b])
    with pytest.raises(deltanet.SlotError, match="padding"):
        pool.zero([0])
    with pytest.raises(deltanet.SlotError, match="out of range"):
        pool.copy(a, 99)
    with pytest.raises(deltanet.SlotError):
        pool.free([-1])
    with pytest.raises(deltanet.OutOfMemoryError, match="exhausted"):
        pool.alloc(5)
    with pytest.raises(deltanet.SlotError, match="twice"):
        pool.zero([a, a])
    with pytest.raises(deltanet.ConfigError):
        deltanet.Pool("cpu", layers=1, slots=1, num_k_heads=3, num_v_heads=4, head_k_dim=8, head_v_dim=8)
    with pytest.raises(deltanet.ConfigError):
        deltanet.Backend("tpu:0")


def test_refused_kernel_calls_change_no_state(gen):
    pool = make_pool()
    a, b = pool.alloc(2)
    q, k, v, g, beta, o = delta_args(gen, 5)
    pool.extend(1, q, k, v, g, beta, o, cu_seqlens=[0, 5], slots=[a], has_initial_state=False)
    digest = pool.digest()
    bad = [
        (deltanet.ShapeError, lambda: pool.extend(1, q, k, v, g, beta, torch.empty(5, HV, V + 1), cu_seqlens=[0, 5], slots=[a])),
        (deltanet.ShapeError, lambda: pool.extend(1, q, k, v, g, beta, o, cu_seqlens=[0, 4], slots=[a])),
        (deltanet.ShapeError, lambda: pool.extend(2, q, k, v, g, beta, o, cu_seqlens=[0, 5], slots=[a])),
        (deltanet.DTypeError, lambda: pool.extend(1, q, k, v, g.bfloat16(), beta, o, cu_seqlens=[0, 5], slots=[a])),
        (deltanet.LayoutError, lambda: pool.extend(1, q.transpose(0, 2).contiguous().transpose(0, 2), k, v, g, beta, o,
                                                    cu_seqlens=[0, 5], slots=[a])),  # fmt: skip
        (deltanet.SlotError, lambda: pool.extend(1, q, k, v, g, beta, o, cu_seqlens=[0, 5], slots=[3])),
        (deltanet.SpeculativeError, lambda: pool.extend(1, q, k, v, g, beta, o, cu_seqlens=[0, 5], slots=[a],
                                                         snapshots=[(0, 6, b)])),  # fmt: skip
        (deltanet.ShapeError, lambda: pool.decode(1, q[:2], k[:2], v[:2], g[:2], beta[:2], o[:2], slots=[a])),
        (deltanet.SpeculativeError, lambda: pool.verify(1, q[:2], k[:2], v[:2], g[:2], beta[:2], o[:2], slots=[a],
                                                         parents=[0, -1])),  # fmt: skip
        (deltanet.SpeculativeError, lambda: pool.commit(1, [a], [2])),
        (deltanet.ShapeError, lambda: pool.import_state(a, np.zeros((2, HV, K, V), np.float32), np.zeros((1, 2), np.float32))),
    ]
    for exc, fn in bad:
        with pytest.raises(exc):
            fn()
        assert pool.digest() == digest, exc
    nospec = make_pool(draft=0)
    (s,) = nospec.alloc(1)
    with pytest.raises(deltanet.SpeculativeError, match="speculative"):
        nospec.verify(0, q[:2], k[:2], v[:2], g[:2], beta[:2], o[:2], slots=[s])


def test_error_messages_are_rusts(gen):
    pool = make_pool()
    (a,) = pool.alloc(1)
    q, k, v, g, beta, o = delta_args(gen, 5)
    with pytest.raises(deltanet.ShapeError, match=r"tensor `o`: expected shape \[5, 2, 4\], got \[5, 2, 5\]"):
        pool.extend(0, q, k, v, g, beta, torch.empty(5, HV, V + 1), cu_seqlens=[0, 5], slots=[a])
