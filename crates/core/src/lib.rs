//! # deltanet-core
//!
//! The backend-independent heart of deltanet: recurrent-state layouts
//! ([`KMajor`], [`VMajor`]), the state pool ([`StatePool`]), validated batch
//! metadata, the dispatcher contract (a backend implements [`Kernels`] over
//! calls core validated once, [`checked`]; engines call [`KernelDispatcher`]),
//! the batch planning the accelerator backends share ([`plan`]), the layer
//! forward written once over it
//! ([`forward_extend`], [`forward_decode`], [`forward_verify`], [`commit`]),
//! and the f64 [`oracle`] every test compares with.
//!
//! The state layout and dtype are declared by the backend and fixed when the
//! pool is made; kernels only accept a pool of their own layout (a compile
//! error on the typed API, [`Error::LayoutMismatch`] on the runtime one), and
//! no forward path branches on backend, layout or speculative mode.

#![warn(missing_docs)]

pub mod access;
pub mod batch;
pub mod capabilities;
pub mod checked;
pub mod device_tensor;
pub mod dims;
pub mod dispatch;
pub mod dtype;
pub mod error;
pub mod finite;
pub mod forward;
pub mod kernel_io;
pub mod layout;
pub mod memory;
pub mod oracle;
pub mod plan;
pub mod pool;
pub mod size;
pub mod slot;
pub mod spec;
pub mod tensor;
pub mod tolerance;

pub use batch::{Commit, CommitBatch, DecodeBatch, ExtendBatch, Snapshot, VerifyBatch};
pub use capabilities::{Capabilities, DimLimits};
pub use checked::{Checked, GateCall, Ticket};
pub use device_tensor::DeviceTensor;
pub use dims::{DeltaParams, HeadMapping, ModelDims, ModelDimsBuilder, L2NORM_EPS};
pub use dispatch::{KernelDispatcher, Kernels, PoolOf};
pub use dtype::{DType, Element};
pub use error::{Error, Result};
pub use forward::{commit, forward_decode, forward_extend, forward_verify, LayerInput, LayerWeights, LayerWorkspace};
pub use kernel_io::{ConvIo, DeltaIo, GateIo};
pub use layout::{convert_conv, convert_state, ConvLayoutKind, KMajor, LayoutKind, StateLayout, VMajor};
pub use memory::{DeviceMemory, HostBuffer, HostMemory};
pub use pool::{
    BufferBytes, BufferDescriptor, BufferKind, HostState, KernelAccess, MambaStatePool, PoolConfig, PoolConfigBuilder, PoolGeometry,
    PoolParts, Slot, SpecConfig, StatePool,
};
pub use spec::SpecMode;
pub use tensor::{Device, TensorMeta, TensorMut, TensorRef};
