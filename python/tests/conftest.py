"""Shared helpers: random inputs, the fla error ratio, and deltanet's f64 oracle on numpy."""

import numpy as np
import pytest
import torch

from deltanet import _native

DTYPES = {"f32": torch.float32, "bf16": torch.bfloat16, "f16": torch.float16}


def ratio(x, ref) -> float:
    """fla's error measure: rms(x - ref) / rms(ref), in f64."""
    x = np.asarray(torch.as_tensor(x).double().numpy() if isinstance(x, torch.Tensor) else x, dtype=np.float64)
    ref = np.asarray(ref.double().numpy() if isinstance(ref, torch.Tensor) else ref, dtype=np.float64)
    assert x.shape == ref.shape, (x.shape, ref.shape)
    return float(np.sqrt(np.mean((x - ref) ** 2)) / np.sqrt(np.mean(ref**2)))


def f64(b: bytes, shape):
    return np.frombuffer(b, dtype=np.float64).reshape(shape)


def oracle_delta(q, k, v, g, beta, cu, h0=None, scale=None, l2=False):
    """deltanet's f64 oracle on packed `[T, ...]` torch tensors; returns (o [T,HV,V], state [N,HV,K,V])."""
    T, HV, V = v.shape
    K = q.shape[-1]
    c = lambda t: None if t is None else t.detach().float().contiguous()
    o, s = _native.oracle_gated_delta_rule(c(q), c(k), c(v), c(g), c(beta), list(cu), c(h0), scale, l2)
    return f64(o, (T, HV, V)), f64(s, (len(cu) - 1, HV, K, V))


def oracle_gate(a, b, A_log, dt_bias):
    c = lambda t: t.detach().float().contiguous()
    g, beta = _native.oracle_gate(c(a), c(b), c(A_log), c(dt_bias))
    return f64(g, a.shape), f64(beta, b.shape)


def oracle_conv(x, weight, bias, cu, state=None):
    """x `[T, dim]` packed; returns (out [T, dim], state [N, dim, W-1])."""
    c = lambda t: None if t is None else t.detach().float().contiguous()
    dim, W = weight.shape
    out, st = _native.oracle_causal_conv1d(c(x), c(weight), c(bias), list(cu), c(state))
    return f64(out, x.shape), f64(st, (len(cu) - 1, dim, W - 1))


def l2n(x):
    """fla's in-kernel L2 norm, in f32."""
    x = x.float()
    return x * torch.rsqrt((x * x).sum(-1, keepdim=True) + 1e-6)


@pytest.fixture
def gen():
    return torch.Generator().manual_seed(1234)


def randn(gen, *shape, dtype=torch.float32):
    return torch.randn(*shape, generator=gen).to(dtype)


def delta_inputs(gen, B, T, H, HV, K, V, dtype=torch.float32):
    """Fresh random q, k, v, g (log decay < 0), beta in (0, 1)."""
    q = randn(gen, B, T, H, K, dtype=dtype)
    k = randn(gen, B, T, H, K, dtype=dtype)
    v = randn(gen, B, T, HV, V, dtype=dtype)
    g = torch.nn.functional.logsigmoid(torch.randn(B, T, HV, generator=gen) + 2.0)
    beta = torch.rand(B, T, HV, generator=gen).to(dtype)
    return q, k, v, g, beta
