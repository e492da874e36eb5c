"""The fla- and causal-conv1d-compatible functions against deltanet's f64 oracle and fla's own
naive torch reference: varlen, GVA, K != V, state_v_first, every input dtype, with and without
initial state, in-kernel gate and beta sigmoid, non-contiguous inputs, numpy inputs."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import deltanet
from conftest import DTYPES, delta_inputs, l2n, oracle_conv, oracle_delta, oracle_gate, randn, ratio

fla_naive = pytest.importorskip("fla.ops.gated_delta_rule.naive")

# Output tolerance per input dtype (the oracle runs on the same rounded inputs; outputs carry the
# dtype's rounding); the final state is f32 and owes f32 accuracy whatever the input dtype.
O_TOL = {"f32": 2e-5, "bf16": 1e-2, "f16": 2e-3}
STATE_TOL = 5e-5

FNS = {"chunk": deltanet.chunk_gated_delta_rule, "fused_recurrent": deltanet.fused_recurrent_gated_delta_rule}


def call(fn, q, k, v, g, beta, **kw):
    # by keyword: fused_recurrent's positional order is (q, k, v, g, gk, gv, beta), as in fla
    return FNS[fn](q, k, v, g=g, beta=beta, **kw)


def fla_reference(q, k, v, g, beta, h0, scale, l2):
    """fla's naive recurrence (f32), GVA by repeating key heads (grouped order), l2 applied first."""
    H, HV = q.shape[2], v.shape[2]
    if l2:
        q, k = l2n(q), l2n(k)
    q, k = q.float().repeat_interleave(HV // H, dim=2), k.float().repeat_interleave(HV // H, dim=2)
    return fla_naive.naive_recurrent_gated_delta_rule(
        q, k, v.float(), beta.float(), g.float(), scale=scale, initial_state=h0, output_final_state=True
    )


@pytest.mark.parametrize("fn", ["chunk", "fused_recurrent"])
@pytest.mark.parametrize("dtype", ["f32", "bf16", "f16"])
@pytest.mark.parametrize("B,T,H,HV,K,V", [(1, 67, 1, 1, 16, 16), (2, 130, 2, 4, 32, 16), (3, 1, 2, 2, 8, 24)])
@pytest.mark.parametrize("with_h0", [False, True])
@pytest.mark.parametrize("state_v_first", [False, True])
def test_against_oracle_and_fla(gen, fn, dtype, B, T, H, HV, K, V, with_h0, state_v_first):
    q, k, v, g, beta = delta_inputs(gen, B, T, H, HV, K, V, DTYPES[dtype])
    h0_kmajor = randn(gen, B, HV, K, V) if with_h0 else None
    h0 = None if h0_kmajor is None else (h0_kmajor.transpose(-1, -2).contiguous() if state_v_first else h0_kmajor)
    o, ht = call(fn, q, k, v, g, beta, initial_state=h0, output_final_state=True,
                 use_qk_l2norm_in_kernel=True, state_v_first=state_v_first)  # fmt: skip
    assert o.shape == (B, T, HV, V) and o.dtype == v.dtype
    assert ht.dtype == torch.float32
    assert ht.shape == ((B, HV, V, K) if state_v_first else (B, HV, K, V))
    ht_k = ht.transpose(-1, -2) if state_v_first else ht

    cu = [i * T for i in range(B + 1)]
    ro, rs = oracle_delta(q.reshape(B * T, H, K), k.reshape(B * T, H, K), v.reshape(B * T, HV, V),
                          g.reshape(B * T, HV), beta.reshape(B * T, HV), cu, h0_kmajor, l2=True)  # fmt: skip
    assert ratio(o.reshape(B * T, HV, V), ro) < O_TOL[dtype]
    assert ratio(ht_k, rs) < STATE_TOL

    fo, fs = fla_reference(q, k, v, g, beta, h0_kmajor, None, True)
    assert ratio(o, fo) < O_TOL[dtype]
    assert ratio(ht_k, fs) < (STATE_TOL if dtype == "f32" else 1e-4)


@pytest.mark.parametrize("fn", ["chunk", "fused_recurrent"])
@pytest.mark.parametrize("with_h0", [False, True])
def test_varlen(gen, fn, with_h0):
    H, HV, K, V = 2, 4, 16, 32
    cu = [0, 5, 70, 71, 200]
    T, N = cu[-1], len(cu) - 1
    q, k, v, g, beta = delta_inputs(gen, 1, T, H, HV, K, V)
    h0 = randn(gen, N, HV, K, V) if with_h0 else None
    o, ht = call(fn, q, k, v, g, beta, initial_state=h0, output_final_state=True,
                 cu_seqlens=torch.tensor(cu, dtype=torch.long), scale=0.3)  # fmt: skip
    ro, rs = oracle_delta(q[0], k[0], v[0], g[0], beta[0], cu, h0, scale=0.3)
    assert ratio(o[0], ro) < O_TOL["f32"]
    assert ratio(ht, rs) < STATE_TOL
    # fla's naive reference, one sequence at a time
    for i in range(N):
        s = slice(cu[i], cu[i + 1])
        fo, fs = fla_reference(q[:, s], k[:, s], v[:, s], g[:, s], beta[:, s],
                               None if h0 is None else h0[i : i + 1], 0.3, False)  # fmt: skip
        assert ratio(o[:, s], fo) < O_TOL["f32"]
        assert ratio(ht[i : i + 1], fs) < STATE_TOL


def test_varlen_equals_separate_calls(gen):
    """A packed batch gives each sequence what it gets alone (and cu_seqlens_cpu works the same)."""
    cu = [0, 64, 65, 130]
    q, k, v, g, beta = delta_inputs(gen, 1, cu[-1], 1, 2, 16, 16)
    o, ht = deltanet.chunk_gated_delta_rule(q, k, v, g, beta, output_final_state=True,
                                            cu_seqlens_cpu=torch.tensor(cu))  # fmt: skip
    for i in range(3):
        s = slice(cu[i], cu[i + 1])
        oi, hi = deltanet.chunk_gated_delta_rule(q[:, s], k[:, s], v[:, s], g[:, s], beta[:, s], output_final_state=True)
        assert torch.equal(o[:, s], oi)
        assert torch.equal(ht[i : i + 1], hi)


@pytest.mark.parametrize("fn", ["chunk", "fused_recurrent"])
@pytest.mark.parametrize("gate,sigmoid", [(True, False), (False, True), (True, True)])
def test_gate_and_beta_sigmoid_in_kernel(gen, fn, gate, sigmoid):
    B, T, H, HV, K, V = 2, 40, 1, 2, 16, 8
    q, k, v, _, _ = delta_inputs(gen, B, T, H, HV, K, V)
    a = randn(gen, B, T, HV)
    b = randn(gen, B, T, HV)
    A_log = randn(gen, HV)
    dt_bias = randn(gen, HV)
    g_ref, beta_ref = oracle_gate(a.reshape(-1, HV), b.reshape(-1, HV), A_log, dt_bias)
    g_in = a if gate else torch.tensor(g_ref, dtype=torch.float32).reshape(B, T, HV)
    beta_in = b if sigmoid else torch.tensor(beta_ref, dtype=torch.float32).reshape(B, T, HV)
    kw = dict(use_gate_in_kernel=True, A_log=A_log, dt_bias=dt_bias) if gate else {}
    o, ht = call(fn, q, k, v, g_in, beta_in, output_final_state=True, use_beta_sigmoid_in_kernel=sigmoid, **kw)
    cu = [0, T, 2 * T]
    ro, rs = oracle_delta(q.reshape(-1, H, K), k.reshape(-1, H, K), v.reshape(-1, HV, V),
                          torch.tensor(g_ref), torch.tensor(beta_ref), cu)  # fmt: skip
    assert ratio(o.reshape(-1, HV, V), ro) < 1e-5
    assert ratio(ht, rs) < 1e-5


def test_fused_recurrent_defaults_g_none_beta_none(gen):
    q, k, v, _, _ = delta_inputs(gen, 1, 9, 1, 1, 8, 8)
    o, ht = deltanet.fused_recurrent_gated_delta_rule(q, k, v, output_final_state=True)
    T = 9
    ro, rs = oracle_delta(q[0], k[0], v[0], torch.zeros(T, 1), torch.ones(T, 1), [0, T])
    assert ratio(o[0], ro) < 1e-5 and ratio(ht, rs) < 1e-5


def test_output_final_state_false_returns_none(gen):
    q, k, v, g, beta = delta_inputs(gen, 1, 5, 1, 1, 8, 8)
    o, ht = deltanet.chunk_gated_delta_rule(q, k, v, g, beta)
    assert ht is None and o.shape == v.shape


def test_decay_in_bf16_is_widened(gen):
    """fla callers often pass g in the input dtype; it is read as f32 (the same values)."""
    q, k, v, g, beta = delta_inputs(gen, 1, 20, 1, 1, 8, 8)
    gb = g.bfloat16()
    o, _ = deltanet.chunk_gated_delta_rule(q, k, v, gb, beta)
    o2, _ = deltanet.chunk_gated_delta_rule(q, k, v, gb.float(), beta)
    assert torch.equal(o, o2)


# --- non-contiguous inputs -------------------------------------------------------------------


def test_strided_slices_give_the_right_answer(gen):
    """Views with unit inner stride (slices of a fused projection, a batch that does not compose)
    run without a copy and give what contiguous copies give."""
    B, T, H, HV, K, V = 2, 70, 2, 2, 16, 16
    big = randn(gen, B, T + 3, 3 * H * K)  # a fused qkv-like projection, T+3 tokens per row
    q = big[:, :T, : H * K].unflatten(-1, (H, K))
    k = big[:, :T, H * K : 2 * H * K].unflatten(-1, (H, K))
    v = big[:, :T, 2 * H * K :].unflatten(-1, (HV, V))
    assert not q.is_contiguous() and q.stride(-1) == 1
    g = F.logsigmoid(randn(gen, B, T + 1, HV))[:, 1:]
    beta = torch.rand(B, T, HV, generator=gen)
    o, ht = deltanet.chunk_gated_delta_rule(q, k, v, g, beta, output_final_state=True, use_qk_l2norm_in_kernel=True)
    o2, ht2 = deltanet.chunk_gated_delta_rule(q.contiguous(), k.contiguous(), v.contiguous(), g.contiguous(),
                                              beta, output_final_state=True, use_qk_l2norm_in_kernel=True)  # fmt: skip
    assert torch.equal(o, o2) and torch.equal(ht, ht2)


def test_strided_initial_state(gen):
    q, k, v, g, beta = delta_inputs(gen, 2, 10, 1, 2, 8, 4)
    h0_big = randn(gen, 2, 2, 4, 8)
    h0 = h0_big.transpose(-1, -2)  # [N, HV, K=8, V=4] with inner stride 8
    o, ht = deltanet.chunk_gated_delta_rule(q, k, v, g, beta, initial_state=h0, output_final_state=True)
    o2, ht2 = deltanet.chunk_gated_delta_rule(q, k, v, g, beta, initial_state=h0.contiguous(), output_final_state=True)
    assert torch.equal(o, o2) and torch.equal(ht, ht2)


def test_inner_stride_not_one_is_a_layout_error(gen):
    q, k, v, g, beta = delta_inputs(gen, 1, 10, 1, 1, 8, 8)
    qt = q.transpose(-1, -3).contiguous().transpose(-1, -3)  # same values, inner stride != 1
    assert qt.stride(-1) != 1
    with pytest.raises(deltanet.LayoutError, match="`q`"):
        deltanet.chunk_gated_delta_rule(qt, k, v, g, beta)


def test_numpy_inputs(gen):
    q, k, v, g, beta = delta_inputs(gen, 1, 30, 1, 1, 8, 8)
    o, ht = deltanet.chunk_gated_delta_rule(q.numpy(), k.numpy(), v.numpy(), g.numpy(), beta.numpy(),
                                            output_final_state=True)  # fmt: skip
    assert isinstance(o, np.ndarray) and isinstance(ht, np.ndarray)
    o2, ht2 = deltanet.chunk_gated_delta_rule(q, k, v, g, beta, output_final_state=True)
    np.testing.assert_array_equal(o, o2.numpy())
    np.testing.assert_array_equal(ht, ht2.numpy())


def test_requires_grad_parameters_are_borrowed(gen):
    q, k, v, _, _ = delta_inputs(gen, 1, 12, 1, 2, 8, 8)
    A_log = torch.nn.Parameter(randn(gen, 2))
    dt_bias = torch.nn.Parameter(randn(gen, 2))
    a, b = randn(gen, 1, 12, 2), randn(gen, 1, 12, 2)
    with torch.no_grad():
        o, _ = deltanet.chunk_gated_delta_rule(q, k, v, a, b, use_gate_in_kernel=True, A_log=A_log, dt_bias=dt_bias,
                                               use_beta_sigmoid_in_kernel=True)  # fmt: skip
    o2, _ = deltanet.chunk_gated_delta_rule(q, k, v, a, b, use_gate_in_kernel=True, A_log=A_log.detach().clone(),
                                            dt_bias=dt_bias.detach().clone(), use_beta_sigmoid_in_kernel=True)  # fmt: skip
    assert torch.equal(o, o2)


# --- causal-conv1d -----------------------------------------------------------------------------


def torch_conv_reference(x, weight, bias, init=None):
    """The causal conv with torch ops: [B, dim, T], optional [B, dim, W-1] history."""
    W = weight.shape[1]
    x = x.float()
    hist = torch.zeros(x.shape[0], x.shape[1], W - 1) if init is None else init.float()
    xx = torch.cat([hist, x], -1)
    out = F.conv1d(xx, weight.float()[:, None], None if bias is None else bias.float(), groups=x.shape[1])
    return F.silu(out), xx[..., -(W - 1) :]


@pytest.mark.parametrize("dtype", ["f32", "bf16", "f16"])
@pytest.mark.parametrize("with_init", [False, True])
@pytest.mark.parametrize("with_bias", [False, True])
def test_causal_conv1d_fn(gen, dtype, with_init, with_bias):
    B, dim, T, W = 2, 40, 67, 4
    x = randn(gen, B, T, dim, dtype=DTYPES[dtype]).transpose(1, 2)  # transformers' layout: channel stride 1
    weight = randn(gen, dim, W)
    bias = randn(gen, dim) if with_bias else None
    init = randn(gen, B, dim, W - 1, dtype=DTYPES[dtype]) if with_init else None
    out, fin = deltanet.causal_conv1d_fn(x, weight, bias, initial_states=init, return_final_states=True, activation="silu")
    assert out.shape == (B, dim, T) and out.dtype == x.dtype and fin.shape == (B, dim, W - 1)
    ref, ref_fin = torch_conv_reference(x, weight, bias, init)
    tol = {"f32": 1e-6, "bf16": 1e-2, "f16": 2e-3}[dtype]
    assert ratio(out, ref) < tol
    assert torch.equal(fin.float(), ref_fin)
    # and the f64 oracle, packed
    xt = x.transpose(1, 2).reshape(B * T, dim)
    oo, os_ = oracle_conv(xt, weight, bias, [0, T, 2 * T], init)
    assert ratio(out.transpose(1, 2).reshape(B * T, dim), oo) < tol
    assert ratio(fin, os_) == 0.0


def test_causal_conv1d_fn_contiguous_x_and_final_states_out(gen):
    B, dim, T, W = 1, 12, 9, 4
    x = randn(gen, B, dim, T)  # contiguous [B, dim, T]: copied into token-major order first
    weight, bias = randn(gen, dim, W), randn(gen, dim)
    fso = torch.full((B, dim, W - 1), 7.0)
    out = deltanet.causal_conv1d_fn(x, weight, bias, final_states_out=fso, activation="swish")
    ref, ref_fin = torch_conv_reference(x, weight, bias)
    assert ratio(out, ref) < 1e-6
    assert torch.equal(fso, ref_fin)


@pytest.mark.parametrize("state_len", [3, 4, 6])
@pytest.mark.parametrize("T", [1, 2])
@pytest.mark.parametrize("squeeze", [True, False])
def test_causal_conv1d_update(gen, state_len, T, squeeze):
    B, dim, W = 3, 20, 4
    if squeeze and T != 1:
        pytest.skip("2-D x is one token")
    weight, bias = randn(gen, dim, W), randn(gen, dim)
    state = randn(gen, B, dim, state_len)
    before = state.clone()
    x = randn(gen, B, dim, T)
    out = deltanet.causal_conv1d_update(x[..., 0] if squeeze else x, state, weight, bias, activation="silu")
    ref, _ = torch_conv_reference(x, weight, bias, before[..., -(W - 1) :])
    assert ratio(out, ref[..., 0] if squeeze else ref) < 1e-6
    assert torch.equal(state, torch.cat([before, x], -1)[..., -state_len:])


@pytest.mark.parametrize("W,state_len,T", [(6, 5, 1), (6, 7, 2), (4, 3, 5), (2, 1, 3)])
def test_causal_conv1d_update_widths_and_long_steps(gen, W, state_len, T):
    """Window widths off the unrolled copies (W-1 = 5), and steps of more tokens than the state holds."""
    B, dim = 2, 9
    weight, bias = randn(gen, dim, W), randn(gen, dim)
    state = randn(gen, B, dim, state_len)
    before = state.clone()
    x = randn(gen, B, dim, T)
    out = deltanet.causal_conv1d_update(x, state, weight, bias, activation="silu")
    ref, _ = torch_conv_reference(x, weight, bias, before[..., -(W - 1) :])
    assert ratio(out, ref) < 1e-6
    assert torch.equal(state, torch.cat([before, x], -1)[..., -state_len:])


def test_conv_prefill_then_updates_equal_one_prefill(gen):
    """The decode conv continues the prefill's final states exactly."""
    B, dim, T, W = 2, 16, 10, 4
    x = randn(gen, B, dim, T)
    weight, bias = randn(gen, dim, W), randn(gen, dim)
    full = deltanet.causal_conv1d_fn(x, weight, bias, activation="silu")
    out, st = deltanet.causal_conv1d_fn(x[..., :7], weight, bias, return_final_states=True, activation="silu")
    steps = [deltanet.causal_conv1d_update(x[..., t], st, weight, bias, activation="silu") for t in range(7, T)]
    torch.testing.assert_close(torch.cat([out, torch.stack(steps, -1)], -1), full, rtol=0, atol=1e-6)


def test_chunked_prefill_then_decode_equals_one_prefill(gen):
    """The bug class deltanet exists for: state handed between chunks (not multiples of 64) and into decode."""
    q, k, v, g, beta = delta_inputs(gen, 1, 150, 2, 4, 16, 16)
    full, hfull = deltanet.chunk_gated_delta_rule(q, k, v, g, beta, output_final_state=True, use_qk_l2norm_in_kernel=True)
    h, outs = None, []
    for s in [slice(0, 37), slice(37, 101), slice(101, 148)]:
        o, h = deltanet.chunk_gated_delta_rule(q[:, s], k[:, s], v[:, s], g[:, s], beta[:, s], initial_state=h,
                                               output_final_state=True, use_qk_l2norm_in_kernel=True)  # fmt: skip
        outs.append(o)
    for t in (148, 149):
        s = slice(t, t + 1)
        o, h = deltanet.fused_recurrent_gated_delta_rule(q[:, s], k[:, s], v[:, s], g=g[:, s], beta=beta[:, s],
                                                         initial_state=h, output_final_state=True,
                                                         use_qk_l2norm_in_kernel=True)  # fmt: skip
        outs.append(o)
    assert ratio(torch.cat(outs, 1), full) < 1e-5
    assert ratio(h, hfull) < 1e-5
