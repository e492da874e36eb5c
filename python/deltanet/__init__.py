"""deltanet: Gated DeltaNet kernels and a per-request state pool (Qwen3-Next / Qwen3.5).

Two ways in:

* **fla-compatible functions** (:mod:`deltanet.functional`, re-exported here):
  :func:`chunk_gated_delta_rule`, :func:`fused_recurrent_gated_delta_rule` (fla-core 0.6
  signatures) and :func:`causal_conv1d_fn`, :func:`causal_conv1d_update` (causal-conv1d's).
  Code written against fla runs on deltanet by changing an import.
* **the pool API** for serving engines: :class:`Backend`, :class:`Pool` (slots, copies,
  import/export, buffer views) and the kernels on it (extend with snapshots, decode, verify
  as chain or tree, commit, gate, conv, the whole layer forward).

Tensors are torch tensors or numpy arrays, passed without copying (DLPack or the array
interface); strides are honoured or refused with :class:`LayoutError`. Kernels run with the
GIL released. Slots are Python ints (opaque raw handles).

Exceptions: every error is a :class:`Error`:

========================== ============================ ===========================================
class                      also a                       raised for
========================== ============================ ===========================================
``LayoutError``            ``ValueError``               pool/kernel layout mismatch, strides a
                                                        kernel cannot honour (inner stride != 1,
                                                        negative), a tensor overrunning its data
``ShapeError``             ``ValueError``               wrong shapes, list lengths, ``cu_seqlens``,
                                                        layer index, host-state dims, an empty
                                                        batch (no requests; ``alloc(0)``, ``free``
                                                        of none: one rule for every operation)
``DTypeError``             ``TypeError``                a dtype the tensor or backend cannot take
``SlotError``              ``ValueError``               padding slot 0, out of range, not
                                                        allocated, double free, duplicates, a batch
                                                        of another pool, a stale handle (kept past
                                                        a free; the slot was re-allocated)
``SpeculativeError``       ``ValueError``               verify/commit without speculative buffers,
                                                        accepted step, tree parents, snapshot
                                                        positions (none for a request a commit
                                                        skips with ``None``), a commit with no
                                                        current verify of that slot and layer
``ConfigError``            ``ValueError``               invalid or unsupported configuration
``UnsupportedArgumentError`` (a ``ConfigError``)        an fla/causal-conv1d argument deltanet does
                                                        not implement (named in the message)
``OutOfMemoryError``       ``MemoryError``              no free slots left in the pool
``DeviceError``            ``RuntimeError``             a tensor on the wrong device, a device
                                                        runtime failure
``UnavailableError``       ``RuntimeError``             backend not compiled in or not usable here
                                                        (e.g. CUDA tensors until the CUDA backend
                                                        accepts an external stream)
``InternalError``          ``RuntimeError``             a bug: a Rust panic, caught at the boundary
========================== ============================ ===========================================

A call that raised changed no pool state and no caller tensor it was to update in place.
"""

from ._native import (
    Backend,
    ConfigError,
    DeviceError,
    DTypeError,
    Error,
    InternalError,
    LayoutError,
    OutOfMemoryError,
    Pool,
    ShapeError,
    SlotError,
    SpeculativeError,
    UnavailableError,
    UnsupportedArgumentError,
    backend_names,
    slots_for_budget,
    version,
)
from .functional import (
    causal_conv1d_fn,
    causal_conv1d_update,
    chunk_gated_delta_rule,
    fused_recurrent_gated_delta_rule,
)

__version__ = version()

__all__ = [
    "Backend",
    "Pool",
    "backend_names",
    "slots_for_budget",
    "chunk_gated_delta_rule",
    "fused_recurrent_gated_delta_rule",
    "causal_conv1d_fn",
    "causal_conv1d_update",
    "Error",
    "LayoutError",
    "ShapeError",
    "DTypeError",
    "SlotError",
    "SpeculativeError",
    "ConfigError",
    "UnsupportedArgumentError",
    "OutOfMemoryError",
    "DeviceError",
    "UnavailableError",
    "InternalError",
]
