"""How ``deltanet.hf`` finds the kernel names of a layer's forward, on a synthetic module.

transformers changes how its GDN layers reach their kernels between releases: 5.25 calls the
conv kernels through a module-level helper (``causal_conv1d_forward``) and, with the ``kernels``
package, makes every kernel name an ``nn.Module`` ("Func") wrapping the function. A patch that
only rebinds the names the layer's forward uses would leave the conv on transformers' code (and
hand the delta rule channel-major inputs); these tests pin down that helpers are rebound too,
that wrapped names are seen through, and that a kernel name the forward no longer reaches is
refused by name instead of silently left unpatched.
"""

import types

import pytest
import torch

import deltanet
import deltanet.hf as hf

SOURCE = '''
def _func_module(func):
    # the shape of the `kernels` package's Func: a callable object whose class's forward calls
    # the wrapped function, held in forward's closure as `func`
    class Func:
        def forward(self, *args, **kwargs):
            return func(*args, **kwargs)

        def __call__(self, *args, **kwargs):
            return self.forward(*args, **kwargs)

    return Func()


def causal_conv1d_fn(x, weight, bias=None, activation=None, **kwargs):
    return "torch-conv"


def causal_conv1d_update(x, conv_state, weight, bias=None, activation=None):
    return "torch-update"


def torch_chunk_gated_delta_rule(q, k, v, g, beta, **kwargs):
    return "torch-chunk", None


def torch_recurrent_gated_delta_rule(q, k, v, g, beta, **kwargs):
    return "torch-recurrent", None


def causal_conv1d_forward(x, decode):
    if decode:
        return causal_conv1d_update(x, None, None)
    return causal_conv1d_fn(x, None)


causal_conv1d_fn = _func_module(causal_conv1d_fn)
causal_conv1d_forward = _func_module(causal_conv1d_forward)


class _Conv1d:  # the layer's conv1d, whose accelerate hooks the patched forward fires
    pass


class Layer:
    layer_idx = 0
    conv1d = _Conv1d()

    def forward(self, x, decode=False):
        conv = causal_conv1d_forward(x, decode)
        rule = torch_recurrent_gated_delta_rule if decode else torch_chunk_gated_delta_rule
        return conv, rule(x, x, x, g=x, beta=x)[0]
'''


X = torch.zeros(1, 2, 1, 4)  # what the synthetic layer is called with ([B, T, H, K])


def synthetic_module(source: str) -> types.ModuleType:
    module = types.ModuleType("synthetic_gdn_module")
    exec(source, module.__dict__)
    return module


def test_torch_kernels_are_reached_through_helpers_and_wrappers():
    layer_cls = synthetic_module(SOURCE).Layer
    forward = hf._patched_forward(layer_cls, "torch")
    assert forward(layer_cls(), X) == ("torch-conv", "torch-chunk")
    assert forward(layer_cls(), X, decode=True) == ("torch-update", "torch-recurrent")


def test_deltanet_kernels_replace_those_called_through_helpers(monkeypatch):
    monkeypatch.setattr(deltanet, "causal_conv1d_fn", lambda *a, **k: "deltanet-conv")
    monkeypatch.setattr(deltanet, "causal_conv1d_update", lambda *a, **k: "deltanet-update")
    monkeypatch.setattr(deltanet, "chunk_gated_delta_rule", lambda *a, **k: ("deltanet-chunk", None))
    monkeypatch.setattr(deltanet, "fused_recurrent_gated_delta_rule", lambda *a, **k: ("deltanet-recurrent", None))
    layer_cls = synthetic_module(SOURCE).Layer
    forward = hf._patched_forward(layer_cls, "deltanet")
    assert forward(layer_cls(), X) == ("deltanet-conv", "deltanet-chunk")
    assert forward(layer_cls(), X, decode=True) == ("deltanet-update", "deltanet-recurrent")
    # the module itself is untouched: other models keep transformers' kernels
    assert layer_cls().forward(X) == ("torch-conv", "torch-chunk")


def test_a_kernel_name_the_forward_no_longer_reaches_is_refused():
    # causal_conv1d_update still defined in the module, but nothing calls it any more
    source = SOURCE.replace("        return causal_conv1d_update(x, None, None)\n", "        return 'inline conv'\n")
    layer_cls = synthetic_module(source).Layer
    with pytest.raises(RuntimeError, match="causal_conv1d_update"):
        hf._patched_forward(layer_cls, "deltanet")
