//! The one error type of deltanet. Every rejected call returns one of these
//! variants and leaves every pool buffer unchanged.

use crate::dtype::DType;
use crate::layout::LayoutKind;
use crate::tensor::Device;

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Typed errors. Variants that concern one sequence of a batch name its index.
/// New kinds may be added: match with a wildcard arm, or on [`Error::code`].
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A pool of one recurrent-state layout was handed to a kernel of another.
    #[error("layout mismatch: the kernel needs a {} pool, got a {} pool", expected.name(), actual.name())]
    LayoutMismatch {
        /// The kernel's native layout.
        expected: LayoutKind,
        /// The layout of the pool it was given.
        actual: LayoutKind,
    },
    /// A dtype the backend does not support for this buffer or tensor.
    #[error("backend {backend} does not support dtype {dtype} for {what}")]
    UnsupportedDType {
        /// Backend name.
        backend: String,
        /// What was to hold that dtype (e.g. "recurrent state", "q").
        what: String,
        /// The rejected dtype.
        dtype: DType,
    },
    /// Model dims or a configuration the backend cannot run.
    #[error("unsupported by backend {backend}: {reason}")]
    Unsupported {
        /// Backend name.
        backend: String,
        /// Why.
        reason: String,
    },
    /// A configuration that is invalid on every backend (zero heads, HV not a multiple of HK...).
    #[error("invalid configuration: {0}")]
    InvalidConfig(String),
    /// A tensor of the wrong shape.
    #[error("tensor `{name}`: expected shape {expected:?}, got {actual:?}")]
    ShapeMismatch {
        /// Tensor name.
        name: String,
        /// Expected dims.
        expected: Vec<usize>,
        /// Actual dims.
        actual: Vec<usize>,
    },
    /// A tensor of the wrong dtype.
    #[error("tensor `{name}`: expected dtype {expected}, got {actual}")]
    DTypeMismatch {
        /// Tensor name.
        name: String,
        /// Expected dtype (or the first of the accepted ones).
        expected: DType,
        /// Actual dtype.
        actual: DType,
    },
    /// A tensor whose strides the kernel cannot honour, or that overruns its data.
    #[error("tensor `{name}`: bad strides: {reason}")]
    BadStrides {
        /// Tensor name.
        name: String,
        /// What is wrong.
        reason: String,
    },
    /// A tensor on another device than the kernel's.
    #[error("tensor `{name}` is on {actual}, the kernel runs on {expected}")]
    DeviceMismatch {
        /// Tensor name.
        name: String,
        /// The kernel's device.
        expected: Device,
        /// The tensor's device.
        actual: Device,
    },
    /// Slot index 0 (the padding slot) was named where a real slot is needed.
    #[error("slot 0 is the padding slot and is never handed out (sequence {index})")]
    PaddingSlot {
        /// Position in the batch or list.
        index: usize,
    },
    /// A slot index beyond the pool.
    #[error("slot {slot} out of range: the pool has slots 1..={capacity} (sequence {index})")]
    SlotOutOfRange {
        /// Position in the batch or list.
        index: usize,
        /// The slot index.
        slot: u32,
        /// Number of allocatable slots.
        capacity: usize,
    },
    /// A slot that is not currently allocated (never allocated, or freed).
    #[error("slot {slot} is not allocated (sequence {index})")]
    SlotNotAllocated {
        /// Position in the batch or list.
        index: usize,
        /// The slot index.
        slot: u32,
    },
    /// A slot handle kept past a free: the index was re-allocated since, under a
    /// newer generation (the handle, or a batch built from it, is stale).
    #[error("slot {slot} is stale: handle of generation {generation}, the slot is now generation {current} (sequence {index})")]
    StaleSlot {
        /// Position in the batch or list.
        index: usize,
        /// The slot index.
        slot: u32,
        /// Generation of the handle.
        generation: u32,
        /// Generation the slot has now.
        current: u32,
    },
    /// `free` of a slot already free.
    #[error("double free of slot {slot}")]
    DoubleFree {
        /// The slot index.
        slot: u32,
    },
    /// The same slot twice in one batch (or list that must be distinct).
    #[error("slot {slot} appears twice in one batch (sequences {first} and {second})")]
    DuplicateSlot {
        /// The slot index.
        slot: u32,
        /// First position.
        first: usize,
        /// Second position.
        second: usize,
    },
    /// Not enough free slots.
    #[error("pool exhausted: requested {requested} slots, {available} free")]
    PoolExhausted {
        /// Requested count.
        requested: usize,
        /// Free count.
        available: usize,
    },
    /// `cu_seqlens` malformed.
    #[error("cu_seqlens[{index}] = {value}: {reason}")]
    BadCuSeqlens {
        /// Offending index into cu_seqlens.
        index: usize,
        /// The value there.
        value: usize,
        /// What is wrong.
        reason: String,
    },
    /// A per-sequence list whose length does not match the number of sequences.
    #[error("`{name}` has {actual} entries, the batch has {expected} sequences")]
    LengthMismatch {
        /// List name.
        name: String,
        /// Sequences in the batch.
        expected: usize,
        /// Entries given.
        actual: usize,
    },
    /// Draft-token count different from the pool's speculative configuration
    /// (kept for its stable code; batches now take D from the pool).
    #[error("draft count {actual} does not match the pool's {expected} draft tokens (request {index})")]
    DraftMismatch {
        /// Request index.
        index: usize,
        /// The pool's D.
        expected: usize,
        /// Given.
        actual: usize,
    },
    /// An operation on no requests: a batch of no sequences or slots, `alloc(0)`,
    /// `free` or `zero` of no slots. One rule for every operation (see
    /// [`crate::batch`]): refused, nothing changed.
    #[error("{what} of no requests: every batch and slot operation needs at least one")]
    EmptyBatch {
        /// The operation (`"decode"`, `"alloc"`, ...).
        what: &'static str,
    },
    /// A commit names a snapshot slot for a request it skips (accepted `None`):
    /// there is no accepted step to copy into it.
    #[error("commit request {index} is skipped (nothing accepted) but names a snapshot slot")]
    SnapshotOfSkipped {
        /// Request index in the commit batch.
        index: usize,
    },
    /// The pool has no speculative buffers but a verify or commit was requested.
    #[error("the pool was created without speculative-decoding buffers")]
    NoSpeculativeBuffers,
    /// A commit of a slot whose scratch holds no current verify in that layer:
    /// never verified, already committed, or its state changed since (decode,
    /// extend, import, zero, copy into it, free).
    #[error("commit of slot {slot} in layer {layer}: no current verify in the scratch (request {index})")]
    NoCurrentVerify {
        /// Request index in the commit batch.
        index: usize,
        /// The slot index.
        slot: u32,
        /// Layer.
        layer: usize,
    },
    /// Accepted step `>= D`.
    #[error("request {index}: accepted step {accepted} out of range for {draft} draft tokens")]
    AcceptedOutOfRange {
        /// Request index.
        index: usize,
        /// Accepted step given.
        accepted: usize,
        /// Draft tokens.
        draft: usize,
    },
    /// A tree parent that does not precede its token.
    #[error("request {index}: token {token} has parent {parent}; a parent must be -1 (the slot state) or an earlier token")]
    BadParent {
        /// Request index.
        index: usize,
        /// Token index within the request.
        token: usize,
        /// Given parent.
        parent: i64,
    },
    /// A snapshot position outside the extended range.
    #[error("snapshot {index}: position {position} outside 1..={len} of sequence {seq}")]
    BadSnapshot {
        /// Snapshot index.
        index: usize,
        /// Sequence the snapshot refers to.
        seq: usize,
        /// Position given.
        position: usize,
        /// Length of that sequence in this extend.
        len: usize,
    },
    /// A layer index beyond the pool.
    #[error("layer {layer} out of range: the pool has {layers} layers")]
    LayerOutOfRange {
        /// Given layer.
        layer: usize,
        /// Layers in the pool.
        layers: usize,
    },
    /// A batch validated against another pool was used with this one.
    #[error("batch was validated against pool {batch_pool}, not pool {pool}")]
    ForeignBatch {
        /// Pool id recorded in the batch.
        batch_pool: u64,
        /// Pool id it was used with.
        pool: u64,
    },
    /// With the pool's finite check on ([`PoolConfig::with_finite_check`](crate::PoolConfig::with_finite_check)):
    /// the first non-finite input or starting state of the call. Nothing was written.
    #[error("non-finite {what} in sequence {seq} at token {token}")]
    NonFinite {
        /// Sequence (request) index in the batch.
        seq: usize,
        /// Token position within that sequence in this call (0 for a starting state).
        token: usize,
        /// Which input or state.
        what: String,
    },
    /// A host state whose dims do not match the pool.
    #[error("host state does not match the pool: {0}")]
    StateMismatch(String),
    /// The backend exists in this build but cannot run here.
    #[error("device unavailable: {backend}: {reason}")]
    Unavailable {
        /// Backend name.
        backend: String,
        /// Why (library not found, no device, ...).
        reason: String,
    },
    /// The backend was not compiled in.
    #[error("backend {backend} not compiled in: rebuild with `--features {feature}`")]
    NotCompiled {
        /// Backend name.
        backend: String,
        /// Cargo feature that enables it.
        feature: String,
    },
    /// An allocation the host or device could not satisfy.
    #[error("out of memory: could not allocate {bytes} bytes")]
    OutOfMemory {
        /// Bytes asked for.
        bytes: usize,
    },
    /// A failure reported by the device runtime.
    #[error("{backend} runtime error in {op}: {message}")]
    Device {
        /// Backend name.
        backend: String,
        /// Operation or native call.
        op: String,
        /// Message or status code.
        message: String,
    },
}

impl Error {
    /// Shorthand for [`Error::ShapeMismatch`].
    pub fn shape(name: &str, expected: &[usize], actual: &[usize]) -> Self {
        Error::ShapeMismatch { name: name.to_string(), expected: expected.to_vec(), actual: actual.to_vec() }
    }
}

impl Error {
    /// The largest [`code`](Self::code).
    pub const MAX_CODE: u16 = 33;

    /// A stable number per kind, 1..=[`MAX_CODE`](Self::MAX_CODE): the C ABI's
    /// `dn_status` values. A kind keeps its number; new kinds take the next one.
    pub fn code(&self) -> u16 {
        match self {
            Error::LayoutMismatch { .. } => 1,
            Error::UnsupportedDType { .. } => 2,
            Error::Unsupported { .. } => 3,
            Error::InvalidConfig(_) => 4,
            Error::ShapeMismatch { .. } => 5,
            Error::DTypeMismatch { .. } => 6,
            Error::BadStrides { .. } => 7,
            Error::DeviceMismatch { .. } => 8,
            Error::PaddingSlot { .. } => 9,
            Error::SlotOutOfRange { .. } => 10,
            Error::SlotNotAllocated { .. } => 11,
            Error::DoubleFree { .. } => 12,
            Error::DuplicateSlot { .. } => 13,
            Error::PoolExhausted { .. } => 14,
            Error::BadCuSeqlens { .. } => 15,
            Error::LengthMismatch { .. } => 16,
            Error::DraftMismatch { .. } => 17,
            Error::NoSpeculativeBuffers => 18,
            Error::AcceptedOutOfRange { .. } => 19,
            Error::BadParent { .. } => 20,
            Error::BadSnapshot { .. } => 21,
            Error::LayerOutOfRange { .. } => 22,
            Error::ForeignBatch { .. } => 23,
            Error::StateMismatch(_) => 24,
            Error::Unavailable { .. } => 25,
            Error::NotCompiled { .. } => 26,
            Error::OutOfMemory { .. } => 27,
            Error::Device { .. } => 28,
            Error::StaleSlot { .. } => 29,
            Error::NoCurrentVerify { .. } => 30,
            Error::NonFinite { .. } => 31,
            Error::EmptyBatch { .. } => 32,
            Error::SnapshotOfSkipped { .. } => 33,
        }
    }
}
