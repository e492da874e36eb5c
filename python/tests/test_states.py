"""Final states deltanet holds: returned without a copy, advanced in place with
``inplace_final_state`` (what transformers' cache needs for decode), checked against the
f64 oracle; misuse gives the documented errors with the state unchanged."""

import numpy as np
import pytest
import torch

import deltanet
import deltanet.hf
from conftest import delta_inputs, oracle_delta, ratio


def pieces(x, s):
    return [t[:, s] for t in x]


@pytest.mark.parametrize("state_v_first", [False, True])
def test_inplace_decode_on_returned_state_matches_oracle_without_copies(gen, state_v_first):
    B, T, H, HV, K, V = 3, 70, 2, 4, 16, 8
    q, k, v, g, beta = delta_inputs(gen, B, T, H, HV, K, V)
    prefill = slice(0, 66)
    _, h = deltanet.chunk_gated_delta_rule(*pieces((q, k, v), prefill), g=g[:, prefill], beta=beta[:, prefill],
                                           output_final_state=True, state_v_first=state_v_first)  # fmt: skip
    ptr = h.data_ptr()
    assert h.dtype == torch.float32 and h.is_contiguous()
    outs = []
    for t in range(66, T):
        s = slice(t, t + 1)
        o, h2 = deltanet.fused_recurrent_gated_delta_rule(*pieces((q, k, v), s), g=g[:, s], beta=beta[:, s],
                                                          initial_state=h, output_final_state=True,
                                                          inplace_final_state=True, state_v_first=state_v_first)  # fmt: skip
        assert h2 is h and h.data_ptr() == ptr  # advanced in place, no new memory
        outs.append(o)
    for b in range(B):
        ref_o, ref_h = oracle_delta(q[b], k[b], v[b], g[b], beta[b], [0, T], scale=K**-0.5)
        got_h = h[b : b + 1].transpose(-1, -2) if state_v_first else h[b : b + 1]
        assert ratio(got_h, ref_h) < 1e-5
        assert ratio(torch.cat(outs, 1)[b], ref_o[66:]) < 1e-5


def deltanet_owned_copy(x, H, K, V, state_v_first):
    """A state deltanet holds (the final state of a call with H key heads, K, V and the layout
    of `state_v_first`, so a decode of those finds its pool), holding `x`'s values."""
    N, HV = x.shape[:2]
    qk = torch.zeros(N, 1, H, K)
    _, h = deltanet.chunk_gated_delta_rule(qk, qk, torch.zeros(N, 1, HV, V), torch.zeros(N, 1, HV), torch.zeros(N, 1, HV),
                                           output_final_state=True, state_v_first=state_v_first)  # fmt: skip
    h.copy_(x)
    return h


@pytest.mark.parametrize("state_v_first", [False, True])
@pytest.mark.parametrize("fused", [False, True], ids=["plain", "l2norm+gate+beta_sigmoid"])
def test_inplace_decode_on_a_caller_state_advances_it_where_it_lies(gen, state_v_first, fused):
    """A caller's own contiguous f32 state (an engine's cache buffer) is decoded in place: the
    same tensor object and memory, the same bits as the decode on a state deltanet holds, and
    the f64 oracle's values."""
    B, T, H, HV, K, V = 3, 4, 2, 4, 16, 8  # GVA; K != V, so a layout mix-up cannot pass
    q, k, v, g, beta = delta_inputs(gen, B, T, H, HV, K, V)
    kw = dict(state_v_first=state_v_first, use_qk_l2norm_in_kernel=fused)
    if fused:
        kw.update(use_gate_in_kernel=True, A_log=torch.randn(HV, generator=gen), dt_bias=torch.randn(HV, generator=gen),
                  use_beta_sigmoid_in_kernel=True)  # fmt: skip
        g = torch.randn(B, T, HV, generator=gen)  # raw gate input
        beta = torch.randn(B, T, HV, generator=gen)  # logits
    h0 = torch.randn(*((B, HV, V, K) if state_v_first else (B, HV, K, V)), generator=gen)
    h = h0.clone()  # the caller's
    owned = deltanet_owned_copy(h0, H, K, V, state_v_first)
    ptr = h.data_ptr()
    outs = []
    for t in range(T):
        s = slice(t, t + 1)
        o, h2 = deltanet.fused_recurrent_gated_delta_rule(*pieces((q, k, v), s), g=g[:, s], beta=beta[:, s],
                                                          initial_state=h, output_final_state=True,
                                                          inplace_final_state=True, **kw)  # fmt: skip
        assert h2 is h and h.data_ptr() == ptr  # advanced in place, nothing new returned
        o_own, own2 = deltanet.fused_recurrent_gated_delta_rule(*pieces((q, k, v), s), g=g[:, s], beta=beta[:, s],
                                                                initial_state=owned, output_final_state=True,
                                                                inplace_final_state=True, **kw)  # fmt: skip
        assert own2 is owned
        assert torch.equal(o, o_own), f"step {t}: outputs differ from the decode on deltanet's state"
        assert torch.equal(h, owned), f"step {t}: states differ from the decode on deltanet's state"
        outs.append(o)
    assert not torch.equal(h, h0)
    _, none = deltanet.fused_recurrent_gated_delta_rule(*pieces((q, k, v), slice(0, 1)), g=g[:, :1], beta=beta[:, :1],
                                                        initial_state=h, inplace_final_state=True, **kw)  # fmt: skip
    assert none is None
    if fused:
        return  # the gate's oracle is test_functional's; here the bits above tie it to the pool decode
    start = h0.transpose(-1, -2) if state_v_first else h0
    for b in range(B):
        ref_o, ref_h = oracle_delta(q[b], k[b], v[b], g[b], beta[b], [0, T], h0=start[b : b + 1], scale=K**-0.5)
        got_h = owned[b : b + 1].transpose(-1, -2) if state_v_first else owned[b : b + 1]
        assert ratio(got_h, ref_h) < 1e-5
        assert ratio(torch.cat(outs, 1)[b], ref_o) < 1e-5


def test_input_aliasing_a_caller_state_is_refused_and_changes_nothing(gen):
    B, HV, K, V = 2, 2, 8, 8
    q, k, v, g, beta = delta_inputs(gen, B, 1, 1, HV, K, V)
    h = torch.randn(B, HV, K, V, generator=gen)
    before = h.clone()
    alias_v = h.view(-1)[: B * HV * V].view(B, 1, HV, V)  # v reads the state's own first rows
    with pytest.raises(deltanet.LayoutError, match="overlaps `initial_state`"):
        deltanet.fused_recurrent_gated_delta_rule(q, k, alias_v, g=g, beta=beta, initial_state=h,
                                                  output_final_state=True, inplace_final_state=True)  # fmt: skip
    torch.testing.assert_close(h, before, rtol=0, atol=0)


def test_inplace_chunk_continues_a_returned_state(gen):
    q, k, v, g, beta = delta_inputs(gen, 1, 150, 1, 2, 16, 16)
    _, h = deltanet.chunk_gated_delta_rule(q[:, :37], k[:, :37], v[:, :37], g[:, :37], beta[:, :37], output_final_state=True)
    o, h2 = deltanet.chunk_gated_delta_rule(q[:, 37:], k[:, 37:], v[:, 37:], g[:, 37:], beta[:, 37:], initial_state=h,
                                            output_final_state=True, inplace_final_state=True)  # fmt: skip
    assert h2 is h
    ref_o, ref_h = oracle_delta(q[0], k[0], v[0], g[0], beta[0], [0, 150], scale=16**-0.5)
    assert ratio(o[0], ref_o[37:]) < 1e-5 and ratio(h, ref_h) < 1e-5


def test_inplace_on_a_caller_tensor_overwrites_it(gen):
    q, k, v, g, beta = delta_inputs(gen, 2, 5, 1, 1, 8, 8)
    h0 = torch.randn(2, 1, 8, 8, generator=gen)
    expect_o, expect_h = deltanet.chunk_gated_delta_rule(q, k, v, g, beta, initial_state=h0.clone(), output_final_state=True)
    h = h0.clone()
    o, h2 = deltanet.chunk_gated_delta_rule(q, k, v, g, beta, initial_state=h, output_final_state=True, inplace_final_state=True)
    assert h2 is h
    torch.testing.assert_close(h, expect_h, rtol=0, atol=0)
    torch.testing.assert_close(o, expect_o, rtol=0, atol=0)


def test_without_inplace_the_initial_state_is_unchanged(gen):
    q, k, v, g, beta = delta_inputs(gen, 1, 4, 1, 1, 8, 8)
    _, h = deltanet.chunk_gated_delta_rule(q, k, v, g, beta, output_final_state=True)
    before = h.clone()
    _, h2 = deltanet.fused_recurrent_gated_delta_rule(q[:, :1], k[:, :1], v[:, :1], g=g[:, :1], beta=beta[:, :1],
                                                      initial_state=h, output_final_state=True)  # fmt: skip
    assert h2.data_ptr() != h.data_ptr()
    torch.testing.assert_close(h, before, rtol=0, atol=0)


def test_returned_state_outlives_everything_else(gen):
    q, k, v, g, beta = delta_inputs(gen, 1, 9, 1, 1, 8, 8)
    _, h = deltanet.chunk_gated_delta_rule(q, k, v, g, beta, output_final_state=True)
    view = h.numpy()
    del h  # numpy still aliases the pool memory, which must stay alive
    import gc

    gc.collect()
    _, ref_h = oracle_delta(q[0], k[0], v[0], g[0], beta[0], [0, 9], scale=8**-0.5)
    assert ratio(torch.from_numpy(np.array(view)), ref_h) < 1e-5


def test_inplace_without_initial_state_is_a_shape_error(gen):
    q, k, v, g, beta = delta_inputs(gen, 1, 4, 1, 1, 8, 8)
    with pytest.raises(deltanet.ShapeError, match="inplace_final_state"):
        deltanet.chunk_gated_delta_rule(q, k, v, g, beta, output_final_state=True, inplace_final_state=True)


def test_input_aliasing_the_state_it_updates_is_refused_and_changes_nothing(gen):
    HV, K, V = 1, 8, 8
    q, k, v, g, beta = delta_inputs(gen, 1, 1, 1, HV, K, V)
    _, h = deltanet.chunk_gated_delta_rule(q, k, v, g, beta, output_final_state=True)
    before = h.clone()
    alias_v = h.view(-1)[: V].view(1, 1, HV, V)  # v reads the state's own first row
    with pytest.raises(deltanet.LayoutError, match="overlaps"):
        deltanet.fused_recurrent_gated_delta_rule(q, k, alias_v, g=g, beta=beta, initial_state=h,
                                                  output_final_state=True, inplace_final_state=True)  # fmt: skip
    torch.testing.assert_close(h, before, rtol=0, atol=0)


def test_mismatched_returned_state_is_staged_not_reused(gen):
    """A view of another shape (here: a slice) is a plain caller tensor: read, then overwritten."""
    q, k, v, g, beta = delta_inputs(gen, 2, 3, 1, 1, 8, 8)
    _, h = deltanet.chunk_gated_delta_rule(q, k, v, g, beta, output_final_state=True)
    part = h[1:]
    expect_o, expect_h = deltanet.fused_recurrent_gated_delta_rule(q[1:, :1], k[1:, :1], v[1:, :1], g=g[1:, :1],
                                                                   beta=beta[1:, :1], initial_state=part.clone(),
                                                                   output_final_state=True)  # fmt: skip
    o, out = deltanet.fused_recurrent_gated_delta_rule(q[1:, :1], k[1:, :1], v[1:, :1], g=g[1:, :1], beta=beta[1:, :1],
                                                       initial_state=part, output_final_state=True,
                                                       inplace_final_state=True)  # fmt: skip
    assert out is part
    torch.testing.assert_close(part, expect_h, rtol=0, atol=0)
    torch.testing.assert_close(o, expect_o, rtol=0, atol=0)
