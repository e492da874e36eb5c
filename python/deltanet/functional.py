"""fla- and causal-conv1d-compatible functions running on deltanet's kernels.

Same names, argument names, defaults, shapes and return values as
``fla.ops.gated_delta_rule.chunk_gated_delta_rule`` /
``fused_recurrent_gated_delta_rule`` (fla-core 0.6) and
``causal_conv1d.causal_conv1d_fn`` / ``causal_conv1d_update``, so code written
against them runs on deltanet by changing an import.

Inputs are torch tensors or numpy arrays (f32, bf16, f16); they reach the
kernels without a copy (DLPack or the array interface: pointer, shape,
strides). Outputs are allocated here with the inputs' library (``torch.empty``
for torch inputs, ``numpy.empty`` for numpy) and written by the native call.
The few conversions made here are of small per-head tensors and are listed
where they happen: ``g`` (when it is already a decay) and ``A_log``/``dt_bias``
and conv weights/bias are widened to f32, because the kernels read those in f32.

An argument deltanet does not support raises
:class:`deltanet.UnsupportedArgumentError` naming it; nothing is silently
ignored. Bad shapes, dtypes and strides raise the :class:`deltanet.Error`
subclasses documented in :mod:`deltanet`.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence, Tuple, Union

from . import _native
from ._native import UnsupportedArgumentError

__all__ = [
    "chunk_gated_delta_rule",
    "fused_recurrent_gated_delta_rule",
    "causal_conv1d_fn",
    "causal_conv1d_update",
]

Tensor = Any  # a torch.Tensor or a numpy.ndarray


# --- tensor helpers: allocate outputs with the caller's library ------------------------------


def _is_torch(x: Tensor) -> bool:
    return type(x).__module__.startswith("torch")


def _empty(like: Tensor, shape: Sequence[int], dtype: Any = None) -> Tensor:
    """An uninitialised tensor of `shape` from the library of `like` (its dtype unless given)."""
    if _is_torch(like):
        import torch

        return torch.empty(tuple(shape), dtype=like.dtype if dtype is None else dtype, device=like.device)
    import numpy as np

    return np.empty(tuple(shape), dtype=like.dtype if dtype is None else dtype)


def _f32_dtype(like: Tensor) -> Any:
    if _is_torch(like):
        import torch

        return torch.float32
    import numpy as np

    return np.float32


def _as_f32(x: Optional[Tensor]) -> Optional[Tensor]:
    """`x` widened to f32 (the same object when it already is f32)."""
    if x is None:
        return None
    if _is_torch(x):
        import torch

        return x if x.dtype == torch.float32 else x.float()
    import numpy as np

    return x if x.dtype == np.float32 else x.astype(np.float32)


def _int_list(x: Any) -> Optional[list]:
    """`cu_seqlens` and slot indices as Python ints (tensors, arrays and sequences)."""
    if x is None:
        return None
    if hasattr(x, "tolist"):
        x = x.tolist()
    return [int(v) for v in x]


def _unsupported(name: str, why: str) -> UnsupportedArgumentError:
    return UnsupportedArgumentError(f"argument `{name}` is not supported by deltanet: {why}")


def _pop_fla_kwargs(kwargs: dict, state_v_first: bool) -> Tuple[bool, Optional[Tensor], Optional[Tensor], bool]:
    """The keyword-only arguments fla's `chunk_gated_delta_rule` reads from `**kwargs`."""
    use_gate_in_kernel = bool(kwargs.pop("use_gate_in_kernel", False))
    A_log = kwargs.pop("A_log", None)
    dt_bias = kwargs.pop("dt_bias", None)
    if "transpose_state_layout" in kwargs:
        if state_v_first:
            raise ValueError("Cannot pass both `state_v_first` and the deprecated `transpose_state_layout`.")
        state_v_first = bool(kwargs.pop("transpose_state_layout"))
    if "head_first" in kwargs:
        raise _unsupported("head_first", "removed by fla too; inputs are [B, T, H, ...]")
    chunk_size = kwargs.pop("chunk_size", 64)
    if chunk_size not in (16, 32, 64):
        raise ValueError(f"`chunk_size` must be 16, 32, or 64 for Gated Delta Rule, got {chunk_size}.")
    if kwargs:
        name = sorted(kwargs)[0]
        raise _unsupported(name, "unknown keyword argument")
    return use_gate_in_kernel, A_log, dt_bias, state_v_first


def _delta_rule(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    g: Optional[Tensor],
    beta: Optional[Tensor],
    scale: Optional[float],
    initial_state: Optional[Tensor],
    output_final_state: bool,
    use_qk_l2norm_in_kernel: bool,
    use_gate_in_kernel: bool,
    A_log: Optional[Tensor],
    dt_bias: Optional[Tensor],
    use_beta_sigmoid_in_kernel: bool,
    allow_neg_eigval: bool,
    state_v_first: bool,
    cu_seqlens: Any,
    inplace_final_state: bool = False,
) -> Tuple[Tensor, Optional[Tensor]]:
    """The body both fla entry points share (they compute the same function)."""
    for name, x in (("q", q), ("k", k), ("v", v)):
        if not hasattr(x, "shape"):
            raise _native.DTypeError(f"`{name}` must be a torch tensor or numpy array, got {type(x).__name__}")
    if len(q.shape) != 4 or len(k.shape) != 4 or len(v.shape) != 4:
        raise _native.ShapeError(
            f"q, k, v must be [B, T, H, K] / [B, T, HV, V]; got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}"
        )
    if q.shape[2] != k.shape[2]:
        raise _native.ShapeError(
            f"q and k must have the same number of heads, but got q.shape[2]={q.shape[2]} and k.shape[2]={k.shape[2]}"
        )
    H, HV = q.shape[2], v.shape[2]
    if HV % H != 0:
        raise _native.ShapeError(f"For GVA, num_v_heads (HV={HV}) must be evenly divisible by num_heads (H={H})")
    if allow_neg_eigval:
        if not use_beta_sigmoid_in_kernel:
            raise ValueError("`allow_neg_eigval=True` requires `use_beta_sigmoid_in_kernel=True`.")
        raise _unsupported("allow_neg_eigval", "beta in [0, 2) is not implemented")
    cu = _int_list(cu_seqlens)
    if cu is not None and q.shape[0] != 1:
        raise _native.ShapeError(
            f"The batch size is expected to be 1 rather than {q.shape[0]} when using `cu_seqlens`."
        )
    B, T = q.shape[0], q.shape[1]
    N = B if cu is None else len(cu) - 1
    if initial_state is not None and initial_state.shape[0] != N:
        raise _native.ShapeError(
            f"The number of initial states is expected to be equal to the number of input sequences, "
            f"i.e., {N} rather than {initial_state.shape[0]}."
        )
    if use_gate_in_kernel:
        if A_log is None:
            raise ValueError("`A_log` must be provided when `use_gate_in_kernel=True`.")
        if g is None:
            raise ValueError("`g` (raw pre-activation) must be provided when `use_gate_in_kernel=True`.")
        A_log, dt_bias = _as_f32(A_log), _as_f32(dt_bias)
    else:
        A_log = dt_bias = None
        g = _as_f32(g)  # the kernels read the decay in f32
    K, V = k.shape[3], v.shape[3]
    if scale is None:
        scale = K**-0.5
    o = _empty(v, (B, T, HV, V))
    view = _native.gated_delta_rule(
        q,
        k,
        v,
        g,
        beta,
        o,
        scale=float(scale),
        initial_state=initial_state,
        output_final_state=bool(output_final_state),
        inplace=bool(inplace_final_state),
        cu_seqlens=cu,
        use_qk_l2norm=bool(use_qk_l2norm_in_kernel),
        state_v_first=bool(state_v_first),
        A_log=A_log,
        dt_bias=dt_bias,
        beta_sigmoid=bool(use_beta_sigmoid_in_kernel),
    )
    if inplace_final_state:
        return o, (initial_state if output_final_state else None)
    return o, (_state_tensor(view, like=q) if view is not None else None)


def _state_tensor(view: Any, like: Tensor) -> Tensor:
    """A final state deltanet holds (a `StateView`) as a tensor of `like`'s library, without a copy."""
    import numpy as np

    array = np.asarray(view)  # aliases the pool; keeps the view (and so the pool) alive
    if _is_torch(like):
        import torch

        return torch.from_numpy(array)
    return array


# --- fla ----------------------------------------------------------------------------------------


def chunk_gated_delta_rule(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    g: Tensor,
    beta: Tensor,
    scale: Optional[float] = None,
    initial_state: Optional[Tensor] = None,
    output_final_state: bool = False,
    use_qk_l2norm_in_kernel: bool = False,
    use_beta_sigmoid_in_kernel: bool = False,
    allow_neg_eigval: bool = False,
    state_v_first: bool = False,
    cu_seqlens: Optional[Tensor] = None,
    cu_seqlens_cpu: Optional[Tensor] = None,
    chunk_indices: Optional[Tensor] = None,
    cp_context: Any = None,
    inplace_final_state: bool = False,
    **kwargs: Any,
) -> Tuple[Tensor, Optional[Tensor]]:
    r"""Chunked gated delta rule, fla's signature (fla-core 0.6).

    Args:
        q, k: ``[B, T, H, K]``.  v: ``[B, T, HV, V]``, ``HV`` a multiple of ``H`` (GVA:
            value head ``h`` reads key head ``h // (HV // H)``).
        g: ``[B, T, HV]`` log-space decay; with ``use_gate_in_kernel=True`` (keyword) the raw
            input of ``-exp(A_log) * softplus(g + dt_bias)``.
        beta: ``[B, T, HV]``; raw logits with ``use_beta_sigmoid_in_kernel=True``.
        scale: defaults to ``K ** -0.5``.
        initial_state: ``[N, HV, K, V]`` (``[N, HV, V, K]`` with ``state_v_first``), f32/bf16/f16.
        output_final_state: return the final state, f32, same layout as ``initial_state``
            (a tensor over memory deltanet holds; no copy is made).
        use_qk_l2norm_in_kernel: L2-normalise q and k (``x / sqrt(sum x^2 + 1e-6)``).
        state_v_first: V-first ``[V, K]`` state layout (runs on a V-major pool).
        cu_seqlens: ``[N+1]`` offsets of N packed sequences; requires ``B == 1``.
        cu_seqlens_cpu: the same offsets on the host; used instead of ``cu_seqlens`` when given.
        chunk_indices: fla's precomputed chunk table; accepted and not needed (deltanet derives
            its chunks from ``cu_seqlens``; results do not depend on it).
        cp_context: context parallelism is not supported (error when given).
        inplace_final_state: deltanet's extension (not an fla argument): write the final state
            into ``initial_state`` (required) instead of a new tensor, as a cache that replaces
            the old state with the new one wants. When ``initial_state`` is a final state a
            deltanet call returned (contiguous f32, unchanged shape), the call runs in place on
            the memory deltanet holds it in and no state byte is copied. So does a decode step
            (one token per sequence) on the caller's own contiguous f32 tensor (an engine's
            state buffer): the kernel advances it where it lies, with the same results as on a
            state deltanet holds; inputs that overlap it raise :class:`LayoutError`. Any other
            tensor is read and then overwritten.
        kwargs: ``use_gate_in_kernel``, ``A_log``, ``dt_bias``, ``chunk_size`` (16/32/64, accepted;
            deltanet's chunk is 64 and results do not depend on it), ``transpose_state_layout``
            (deprecated alias of ``state_v_first``). Any other keyword raises
            :class:`UnsupportedArgumentError`.

    Returns:
        ``(o, final_state)``: ``o`` ``[B, T, HV, V]`` in ``v``'s dtype; ``final_state`` or ``None``.
    """
    if cp_context is not None:
        raise _unsupported("cp_context", "context parallelism")
    use_gate_in_kernel, A_log, dt_bias, state_v_first = _pop_fla_kwargs(dict(kwargs), state_v_first)
    del chunk_indices  # see the docstring: an fla launch table, not an input
    if cu_seqlens_cpu is not None:
        cu_seqlens = cu_seqlens_cpu
    return _delta_rule(
        q, k, v, g, beta, scale, initial_state, output_final_state, use_qk_l2norm_in_kernel,
        use_gate_in_kernel, A_log, dt_bias, use_beta_sigmoid_in_kernel, allow_neg_eigval,
        state_v_first, cu_seqlens, inplace_final_state,
    )  # fmt: skip


def fused_recurrent_gated_delta_rule(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    g: Optional[Tensor] = None,
    gk: Optional[Tensor] = None,
    gv: Optional[Tensor] = None,
    beta: Optional[Tensor] = None,
    scale: Optional[float] = None,
    initial_state: Optional[Tensor] = None,
    output_final_state: bool = False,
    use_qk_l2norm_in_kernel: bool = False,
    use_gate_in_kernel: bool = False,
    A_log: Optional[Tensor] = None,
    dt_bias: Optional[Tensor] = None,
    use_beta_sigmoid_in_kernel: bool = False,
    allow_neg_eigval: bool = False,
    state_v_first: bool = False,
    cu_seqlens: Optional[Tensor] = None,
    inplace_final_state: bool = False,
    **kwargs: Any,
) -> Tuple[Tensor, Optional[Tensor]]:
    r"""Token-by-token gated delta rule (decode), fla's signature (fla-core 0.6).

    Same arguments and results as :func:`chunk_gated_delta_rule` (``inplace_final_state``
    included), plus: ``g=None`` means no
    decay, ``beta=None`` means ``beta = 1``; per-key ``gk`` and per-value ``gv`` decays are not
    supported (error when given). Computes the same function as the chunked form.
    """
    if gk is not None:
        raise _unsupported("gk", "per-key decay")
    if gv is not None:
        raise _unsupported("gv", "per-value decay")
    if "transpose_state_layout" in kwargs:
        if state_v_first:
            raise ValueError("Cannot pass both `state_v_first` and the deprecated `transpose_state_layout`.")
        kwargs = dict(kwargs)
        state_v_first = bool(kwargs.pop("transpose_state_layout"))
    if kwargs:
        raise _unsupported(sorted(kwargs)[0], "unknown keyword argument")
    if g is None:
        if use_gate_in_kernel:
            raise ValueError("`g` (raw pre-activation) must be provided when `use_gate_in_kernel=True`.")
        g = _zeros_like_heads(v)
    if beta is None:
        beta = _ones_like_heads(v)
    return _delta_rule(
        q, k, v, g, beta, scale, initial_state, output_final_state, use_qk_l2norm_in_kernel,
        use_gate_in_kernel, A_log, dt_bias, use_beta_sigmoid_in_kernel, allow_neg_eigval,
        state_v_first, cu_seqlens, inplace_final_state,
    )  # fmt: skip


def _zeros_like_heads(v: Tensor) -> Tensor:
    x = _empty(v, tuple(v.shape[:3]), _f32_dtype(v))
    x[...] = 0
    return x


def _ones_like_heads(v: Tensor) -> Tensor:
    x = _empty(v, tuple(v.shape[:3]), _f32_dtype(v))
    x[...] = 1
    return x


# --- causal-conv1d ------------------------------------------------------------------------------


def _check_activation(activation: Optional[str]) -> None:
    if activation not in (None, "silu", "swish"):
        raise NotImplementedError("activation must be None, silu, or swish")
    if activation is None:
        raise _unsupported("activation", "deltanet's conv always applies SiLU; pass activation='silu'")


def causal_conv1d_fn(
    x: Tensor,
    weight: Tensor,
    bias: Optional[Tensor] = None,
    seq_idx: Optional[Tensor] = None,
    initial_states: Optional[Tensor] = None,
    return_final_states: bool = False,
    final_states_out: Optional[Tensor] = None,
    activation: Optional[str] = None,
) -> Union[Tensor, Tuple[Tensor, Tensor]]:
    """Depthwise causal conv1d + SiLU, causal-conv1d's signature.

    Args:
        x: ``[B, dim, T]`` (channel stride 1, as transformers passes a transposed projection,
            runs without a copy; any other stride is copied into that order first).
        weight: ``[dim, W]``.  bias: ``[dim]`` or ``None`` (both widened to f32).
        seq_idx: not supported (error when given).
        initial_states: ``[B, dim, W-1]`` or ``None`` (zeros).
        return_final_states: also return the last ``W-1`` inputs, ``[B, dim, W-1]``.
        final_states_out: where to write them (``[B, dim, W-1]``); allocated when ``None``.
        activation: ``"silu"``/``"swish"``; ``None`` (no activation) is not supported.

    Returns:
        ``out`` ``[B, dim, T]`` in ``x``'s dtype (a transposed view of token-major memory, as
        transformers' projections are), or ``(out, final_states)``.
    """
    if seq_idx is not None:
        raise _unsupported("seq_idx", "packed conv sequences; call once per sequence batch")
    _check_activation(activation)
    if len(x.shape) != 3:
        raise _native.ShapeError(f"x must be [B, dim, T], got {tuple(x.shape)}")
    B, dim, T = x.shape
    out_tm = _empty(x, (B, T, dim))  # token-major, returned as its [B, dim, T] transpose
    final_states = None
    if return_final_states or final_states_out is not None:
        W = weight.shape[-1]
        final_states = final_states_out if final_states_out is not None else _empty(x, (B, dim, W - 1))
    _native.causal_conv1d(
        _token_major(x), _as_f32(weight), _as_f32(bias), out_tm, initial_states, final_states
    )
    out = _transpose_last(out_tm)
    if return_final_states:
        return out, final_states
    return out


def causal_conv1d_update(
    x: Tensor,
    conv_state: Tensor,
    weight: Tensor,
    bias: Optional[Tensor] = None,
    activation: Optional[str] = None,
    cache_seqlens: Optional[Tensor] = None,
    conv_state_indices: Optional[Tensor] = None,
) -> Tensor:
    """One (or a few) decode steps of the causal conv, causal-conv1d's signature.

    Args:
        x: ``[B, dim]`` or ``[B, dim, T]``.
        conv_state: ``[B, dim, S]`` with ``S >= W-1``; updated in place to the last ``S`` inputs
            (the kernel convolves over its last ``W-1`` columns). For one token and a
            contiguous f32 state (transformers' cache) the kernel reads and shifts it where it
            lies; otherwise its newest ``W-1`` columns are copied in and the rows shifted after.
            An ``x`` or output over the state's memory is refused (:class:`deltanet.LayoutError`).
        weight: ``[dim, W]``.  bias: ``[dim]`` or ``None``.
        activation: ``"silu"``/``"swish"``; ``None`` is not supported.
        cache_seqlens, conv_state_indices: not supported (error when given).

    Returns:
        ``out`` with ``x``'s shape and dtype.
    """
    if cache_seqlens is not None:
        raise _unsupported("cache_seqlens", "circular conv state buffers")
    if conv_state_indices is not None:
        raise _unsupported("conv_state_indices", "use deltanet.Pool for indexed conv state")
    _check_activation(activation)
    squeeze = len(x.shape) == 2
    x3 = x[..., None] if squeeze else x
    if len(x3.shape) != 3:
        raise _native.ShapeError(f"x must be [B, dim] or [B, dim, T], got {tuple(x.shape)}")
    B, dim, T = x3.shape
    if T == 1 and _channel_stride(x3) == 1:
        # A decode step (transformers' case): `x` and a `[B, dim, 1]` output are already
        # token-major memory; the native side reads them through their strides, no view ops here.
        out = _empty(x3, (B, dim, 1))
        _native.causal_conv1d_update(x3, conv_state, _as_f32(weight), _as_f32(bias), out, channels_first=True)
        return out[..., 0] if squeeze else out
    out_tm = _empty(x3, (B, T, dim))
    _native.causal_conv1d_update(_token_major(x3), conv_state, _as_f32(weight), _as_f32(bias), out_tm)
    out = _transpose_last(out_tm)
    return out[..., 0] if squeeze else out


def _channel_stride(x: Tensor) -> int:
    """The element stride of dim 1 of `[B, dim, T]`."""
    return x.stride(1) if _is_torch(x) else x.strides[1] // x.itemsize


def _transpose_last(x: Tensor) -> Tensor:
    """`[B, dim, T]` -> a `[B, T, dim]` view of the same memory."""
    if _is_torch(x):
        return x.transpose(1, 2)
    return x.swapaxes(1, 2)


def _token_major(x: Tensor) -> Tensor:
    """`[B, dim, T]` as a `[B, T, dim]` view with unit channel stride (copied into that order otherwise)."""
    xt = _transpose_last(x)
    stride = xt.stride(2) if _is_torch(xt) else xt.strides[2] // xt.itemsize
    if xt.shape[2] > 1 and stride != 1:
        if _is_torch(xt):
            xt = xt.contiguous()
        else:
            import numpy as np

            xt = np.ascontiguousarray(xt)
    return xt
