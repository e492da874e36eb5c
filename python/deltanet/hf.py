"""Run the Gated DeltaNet layers of a Hugging Face transformers model on deltanet.

One call::

    import deltanet.hf
    model = transformers.AutoModelForCausalLM.from_config(config)   # or from_pretrained
    deltanet.hf.patch_model(model)        # every Qwen3.5 / Qwen3-Next GDN layer now runs on deltanet
    model.generate(input_ids, max_new_tokens=32)

What changes, and what does not
-------------------------------
transformers' GDN layers (``Qwen3_5GatedDeltaNet``, ``Qwen3_5MoeGatedDeltaNet``,
``Qwen3NextGatedDeltaNet``) call four module-level kernels from their ``forward``:
``causal_conv1d_fn`` (prefill conv), ``causal_conv1d_update`` (decode conv, conv state
updated in place), ``torch_chunk_gated_delta_rule`` (prefill) and
``torch_recurrent_gated_delta_rule`` (decode). transformers binds those names at import
time to fla's / causal-conv1d's kernels when the packages are installed, else to its own
torch code. Since transformers 5.25 the conv kernels are reached through a module-level helper
(``causal_conv1d_forward``), and with the ``kernels`` package each name is an ``nn.Module``
wrapping the function; the patch follows both (tested with transformers 5.24 and 5.25).

:func:`patch_model` gives each GDN layer *of this model* a copy of transformers' own
``forward`` (and of the module helpers it calls them through) whose four kernel names
resolve to deltanet's fla- and causal-conv1d-compatible functions
(:func:`deltanet.chunk_gated_delta_rule` and friends). Everything else is transformers' code: the projections, the gate, the gated RMSNorm, and the cache — the
layer still reads and writes transformers' own cache objects (``cache.get_conv_state``,
``update_conv_state``, ``update_recurrent_state``), so ``generate``, chunked prefill through
the cache, batching and padding behave as they do upstream. Other models in the process,
and the class itself, are untouched; :func:`unpatch_model` restores the layers.

``patch_model(model, kernels="torch")`` does the same with transformers' own torch
functions (``inspect.unwrap`` of the names above). That is the path transformers runs when
neither fla nor causal-conv1d is installed; it is the reference the tests and the benchmark
compare with, and it works on a CPU machine where fla is installed (fla's Triton kernels
need a GPU).

State memory: the delta rule's final state is a tensor over memory deltanet holds. After a
prefill the patched layer puts that tensor into transformers' cache in place of the cache's
copy of it (same shape, dtype and values), and each decode step then advances it in place
(``inplace_final_state``): transformers' ``update_recurrent_state`` copies a tensor onto
itself, a no-op, so no state byte is copied per step. A cache whose tensor was replaced by
other code (beam-search reordering, say) still works: a contiguous f32 state of its own is
decoded in place where it lies, with no copy either (any other dtype or layout costs one state
copy in and out per step).
While the cache records past states for a later ``crop`` (transformers >= 5.25, assisted
decoding), states are not advanced in place: the cache clones its state after the forward as
the state before it and keeps every intermediate state the forward returns, so each call
returns a new state, as transformers' torch code does.

As in transformers' own dispatch to fla, keyword arguments the kernel does not take
(transformers' ``chunk_size`` and attention plumbing that reaches the layer) are dropped
before the call; every argument deltanet receives is honoured or refused with
:class:`deltanet.UnsupportedArgumentError`.

Limits: accelerate's offloading hooks on ``conv1d`` are fired as transformers does
(``force_accelerate_hooks``) when that helper exists; torch.compile of a patched layer is
not supported (the kernels are native calls).
"""

from __future__ import annotations

import functools
import importlib
import inspect
import threading
import types
from typing import Any, Callable, Dict, List

__all__ = ["KERNEL_NAMES", "gdn_layers", "patch_model", "unpatch_model", "patched_kernels"]

#: The module-level names a transformers GDN layer's ``forward`` calls its kernels by.
KERNEL_NAMES = (
    "causal_conv1d_fn",
    "causal_conv1d_update",
    "torch_chunk_gated_delta_rule",
    "torch_recurrent_gated_delta_rule",
)

# (module, class) of every transformers GDN layer this adapter knows. A module missing from
# the installed transformers is skipped; each class's forward is checked to use the four names.
_LAYER_CLASSES = (
    ("transformers.models.qwen3_5.modeling_qwen3_5", "Qwen3_5GatedDeltaNet"),
    ("transformers.models.qwen3_5_moe.modeling_qwen3_5_moe", "Qwen3_5MoeGatedDeltaNet"),
    ("transformers.models.qwen3_next.modeling_qwen3_next", "Qwen3NextGatedDeltaNet"),
)

_MARK = "_deltanet_kernels"  # instance attribute: which kernels a patched layer runs

# The recurrent state the delta-rule adapter produced during the current layer forward (per
# thread): a tensor over memory deltanet holds, which the patched forward then hands to the
# cache in place of the cache's own copy of it (see `_adopt_state`).
_produced = threading.local()


# --- the kernels deltanet substitutes ------------------------------------------------------------
# Each adapter takes exactly the arguments transformers' torch function takes (transformers
# calls these names with its torch functions' signatures) and calls the fla- or
# causal-conv1d-compatible deltanet function, looked up on the package at call time.


def _deltanet():
    import deltanet

    return deltanet


def _chunk_gated_delta_rule(
    query,
    key,
    value,
    g,
    beta,
    chunk_size: int = 64,
    initial_state=None,
    output_final_state: bool = False,
    use_qk_l2norm_in_kernel: bool = False,
    cu_seqlens=None,
    **kwargs: Any,
):
    # chunk_size: transformers' torch chunking; deltanet's result does not depend on it.
    # kwargs: attention plumbing transformers' own wrapper also drops before calling fla.
    del chunk_size, kwargs
    if query.shape[1] == 0:
        # transformers >= 5.25 recording past states (assisted decoding): when every token of
        # the forward is kept, the chunked part is empty and all of them take the recurrent path
        return _no_tokens(value, key.shape[-1], initial_state, output_final_state)
    return _produce(
        _deltanet().chunk_gated_delta_rule(
            query,
            key,
            value,
            g=g,
            beta=beta,
            initial_state=initial_state,
            output_final_state=output_final_state,
            use_qk_l2norm_in_kernel=use_qk_l2norm_in_kernel,
            cu_seqlens=cu_seqlens,
            inplace_final_state=_in_place(initial_state, output_final_state),
        ),
        initial_state,
    )


def _recurrent_gated_delta_rule(
    query,
    key,
    value,
    g,
    beta,
    initial_state=None,
    output_final_state: bool = False,
    use_qk_l2norm_in_kernel: bool = False,
    cu_seqlens=None,
    **kwargs: Any,
):
    del kwargs  # as above
    return _produce(
        _deltanet().fused_recurrent_gated_delta_rule(
            query,
            key,
            value,
            g=g,
            beta=beta,
            initial_state=initial_state,
            output_final_state=output_final_state,
            use_qk_l2norm_in_kernel=use_qk_l2norm_in_kernel,
            cu_seqlens=cu_seqlens,
            inplace_final_state=_in_place(initial_state, output_final_state),
        ),
        initial_state,
    )


def _no_tokens(value, k_dim: int, initial_state, output_final_state: bool):
    """transformers' torch result for a chunk of no tokens: no output, the initial state unchanged."""
    import torch

    B, _, HV, V = value.shape
    out = value.new_empty((B, 0, HV, V))
    if not output_final_state:
        return out, None
    if initial_state is None:
        return out, torch.zeros((B, HV, k_dim, V), dtype=torch.float32, device=value.device)
    return out, initial_state


def _in_place(initial_state, output_final_state: bool) -> bool:
    # transformers replaces the cached state with the final one (`update_recurrent_state`
    # copies it in, a no-op when it is the cached tensor itself): advancing the initial state
    # in place gives the same cache contents, and on deltanet's own state memory copies nothing.
    # Not while the cache records past states (`_patched_forward`): it clones the cached state
    # after the forward as the state before it, and keeps each intermediate state the forward
    # returns, so those must be new tensors, as transformers' torch code makes them.
    return initial_state is not None and output_final_state and getattr(_produced, "in_place", True)


def _records_past(cache, layer_idx: int) -> bool:
    """Whether transformers' cache keeps past states of this layer for a later ``crop`` (>= 5.25)."""
    recording = getattr(cache, "is_recording_past", None)
    if recording is None:
        return False
    try:
        return bool(recording(layer_idx))
    except (AttributeError, IndexError, TypeError):
        return False


def _produce(result, initial_state):
    """Notes a final state that is new memory (not ``initial_state`` advanced in place)."""
    final = result[1]
    if final is not None and final is not initial_state:
        _produced.state = final
    return result


def _adopt_state(cache, layer_idx: int, state) -> None:
    """Makes ``state`` (deltanet's memory) the cache's recurrent state tensor of ``layer_idx``.

    transformers has just copied ``state`` into its own tensor (``update_recurrent_state``), so
    the values are equal; from now on the layer's decode steps run in place on deltanet's memory
    instead of copying the state in and out each step. Only done for transformers' linear
    attention cache layers holding a tensor of the same shape and dtype; otherwise the cache
    keeps its tensor (correct, with a copy per step).
    """
    try:
        import torch

        states = cache.layers[layer_idx].recurrent_states
    except (AttributeError, IndexError, TypeError, ImportError):
        return
    # transformers >= 5 keys a layer's states by `state_idx` in a dict; earlier versions, a list.
    if isinstance(states, dict):
        current = states.get(0)
    elif isinstance(states, list) and states:
        current = states[0]
    else:
        return
    if not isinstance(current, torch.Tensor):
        return
    if current.shape == state.shape and current.dtype == state.dtype and current.device == state.device:
        states[0] = state


def _causal_conv1d_fn(hidden_states, weight, bias=None, activation=None, **kwargs: Any):
    del kwargs  # as above (transformers forwards the layer's kwargs; causal-conv1d takes none of them)
    return _deltanet().causal_conv1d_fn(hidden_states, weight, bias, activation=activation)


def _causal_conv1d_update(hidden_states, conv_state, weight, bias=None, activation=None):
    # conv_state is transformers' cache tensor [B, conv_dim, W]: updated in place, as upstream.
    return _deltanet().causal_conv1d_update(hidden_states, conv_state, weight, bias, activation)


_DELTANET_KERNELS: Dict[str, Callable] = {
    "causal_conv1d_fn": _causal_conv1d_fn,
    "causal_conv1d_update": _causal_conv1d_update,
    "torch_chunk_gated_delta_rule": _chunk_gated_delta_rule,
    "torch_recurrent_gated_delta_rule": _recurrent_gated_delta_rule,
}


# --- finding and patching the layers ---------------------------------------------------------------


def _layer_classes() -> List[type]:
    classes = []
    for module_name, class_name in _LAYER_CLASSES:
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        cls = getattr(module, class_name, None)
        if cls is not None:
            classes.append(cls)
    return classes


def gdn_layers(model) -> List[Any]:
    """The transformers GDN layers of ``model`` (``nn.Module`` instances), in module order."""
    classes = tuple(_layer_classes())
    if not classes:
        return []
    return [m for m in model.modules() if isinstance(m, classes)]


def _function_behind(obj: Any) -> Any:
    """The Python function a transformers kernel name stands for, wrappers removed.

    transformers decorates its kernel functions (fla / causal-conv1d / kernels-hub dispatch,
    ``functools.wraps`` wrappers that ``inspect.unwrap`` removes). With the ``kernels`` package
    installed (transformers >= 5.25 requires it), each module-level kernel name is moreover an
    ``nn.Module`` ("Func") whose ``forward`` calls the decorated function it was made from, held
    in the closure of ``forward`` as ``func``.
    """
    if not inspect.isfunction(obj):
        forward = getattr(type(obj), "forward", None)
        code = getattr(forward, "__code__", None)
        if code is not None and "func" in code.co_freevars and forward.__closure__:
            obj = forward.__closure__[code.co_freevars.index("func")].cell_contents
    return inspect.unwrap(obj)


def _rebound(fn: Callable, namespace: Dict[str, Any]) -> Callable:
    """``fn`` (a plain function) over ``namespace`` as its globals: same code, defaults, closure."""
    out = types.FunctionType(fn.__code__, namespace, fn.__name__, fn.__defaults__, fn.__closure__)
    out.__kwdefaults__ = fn.__kwdefaults__
    out.__qualname__ = fn.__qualname__
    out.__doc__ = fn.__doc__
    return out


def _kernel_callers(raw: Callable) -> Dict[str, Callable]:
    """Module-level helpers of ``raw``'s module that ``raw`` calls and that call a kernel name.

    transformers >= 5.25 reaches the conv kernels through ``causal_conv1d_forward(conv1d,
    hidden_states, cache, layer_idx, ...)`` instead of calling them from the layer's forward;
    such a helper is rebuilt over the patched names too, or the layer would run transformers'
    conv while the delta rule ran on deltanet.
    """
    module_globals = raw.__globals__
    callers: Dict[str, Callable] = {}
    pending = [raw]
    while pending:
        for name in pending.pop().__code__.co_names:
            if name in KERNEL_NAMES or name in callers or name not in module_globals:
                continue
            try:
                fn = _function_behind(module_globals[name])
            except (TypeError, ValueError):
                continue
            if not inspect.isfunction(fn) or fn.__globals__ is not module_globals:
                continue  # not code of this module (torch, builtins, other modules)
            if any(k in fn.__code__.co_names for k in KERNEL_NAMES):
                callers[name] = fn
                pending.append(fn)
    return callers


def _kernels_for(cls: type, kernels: str) -> Dict[str, Callable]:
    raw = inspect.unwrap(cls.forward)
    module_globals = raw.__globals__
    reached = set(raw.__code__.co_names).union(*(fn.__code__.co_names for fn in _kernel_callers(raw).values()))
    missing = [name for name in KERNEL_NAMES if name not in module_globals or name not in reached]
    if missing:
        raise RuntimeError(
            f"{cls.__qualname__}.forward no longer calls {missing} (transformers changed); "
            "deltanet.hf does not know how to patch it"
        )
    if kernels == "deltanet":
        return dict(_DELTANET_KERNELS)
    if kernels == "torch":
        # transformers' own torch code, under whatever fla/kernels-hub wrappers it was given.
        return {name: _function_behind(module_globals[name]) for name in KERNEL_NAMES}
    raise ValueError(f"kernels must be 'deltanet' or 'torch', got {kernels!r}")


@functools.lru_cache(maxsize=None)
def _patched_forward(cls: type, kernels: str) -> Callable:
    """``cls.forward`` with its kernel names bound to ``kernels`` (one function per class and kind).

    transformers' undecorated ``forward`` is rebuilt over a copy of its module's globals in
    which the four kernel names are replaced, and so is every module-level helper through which
    it reaches them (:func:`_kernel_callers`); the code objects, defaults and closures are the
    originals, so the layer's logic (cache handling included) is exactly transformers'.
    """
    raw = inspect.unwrap(cls.forward)
    namespace = dict(raw.__globals__)
    namespace.update(_kernels_for(cls, kernels))
    for name, helper in _kernel_callers(raw).items():
        namespace[name] = _rebound(helper, namespace)
    forward = _rebound(raw, namespace)
    try:  # transformers fires accelerate's hooks on conv1d (its weight is used directly)
        from transformers.integrations.accelerate import force_accelerate_hooks

        forward = force_accelerate_hooks("conv1d")(forward)
    except ImportError:
        pass

    def patched(self, *args, **kwargs):
        if "cache_params" in kwargs and "cache" not in kwargs:  # transformers' deprecated name
            kwargs["cache"] = kwargs.pop("cache_params")
        if kernels != "deltanet":
            return forward(self, *args, **kwargs)
        cache = kwargs.get("cache", args[1] if len(args) > 1 else None)
        _produced.state = None
        _produced.in_place = cache is None or not _records_past(cache, self.layer_idx)
        try:
            out = forward(self, *args, **kwargs)
            if _produced.state is not None and cache is not None:
                _adopt_state(cache, self.layer_idx, _produced.state)
        finally:
            _produced.state = None
            _produced.in_place = True
        return out

    patched.__doc__ = raw.__doc__
    return patched


def patch_model(model, kernels: str = "deltanet") -> int:
    """Make every Qwen3.5 / Qwen3-Next GDN layer of ``model`` run its conv and delta rule on ``kernels``.

    Args:
        model: a transformers model (``Qwen3_5ForCausalLM``, ``Qwen3_5ForConditionalGeneration``,
            ``Qwen3NextForCausalLM``, their MoE variants, or any module containing their GDN layers).
        kernels: ``"deltanet"`` (deltanet's kernels) or ``"torch"`` (transformers' own torch
            functions, the reference path, whatever fla/causal-conv1d installation is present).

    Returns:
        The number of layers patched. Calling it again re-patches (e.g. to switch ``kernels``).

    Raises:
        ValueError: ``model`` has no GDN layer, or ``kernels`` is not one of the two names.
    """
    layers = gdn_layers(model)
    if not layers:
        raise ValueError(
            f"{type(model).__name__} has no Qwen3.5 / Qwen3-Next GatedDeltaNet layer for deltanet to run"
        )
    if kernels not in ("deltanet", "torch"):
        raise ValueError(f"kernels must be 'deltanet' or 'torch', got {kernels!r}")
    if kernels == "deltanet":
        _deltanet()  # fail here, not in the middle of a forward, if the native module is missing
    for layer in layers:
        layer.forward = types.MethodType(_patched_forward(type(layer), kernels), layer)
        setattr(layer, _MARK, kernels)
    return len(layers)


def unpatch_model(model) -> int:
    """Undo :func:`patch_model`: the GDN layers run transformers' class ``forward`` again.

    Returns the number of layers restored.
    """
    restored = 0
    for layer in gdn_layers(model):
        if getattr(layer, _MARK, None) is not None:
            del layer.forward  # the instance attribute; the class method shows through again
            delattr(layer, _MARK)
            restored += 1
    return restored


def patched_kernels(layer) -> "str | None":
    """``"deltanet"``, ``"torch"`` or ``None`` (not patched) for one GDN layer."""
    return getattr(layer, _MARK, None)
