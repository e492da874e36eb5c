//! The state pool: per-request conv and recurrent state (and speculative
//! scratch) for every GDN layer, allocated once in the backend's native
//! layout and dtype. One implementation, generic over device memory and layout.
//!
//! # Concurrency
//! `StatePool` is `Send + Sync`. Slot bookkeeping (`alloc`, `free`,
//! `is_allocated`) takes `&self` and is serialised by an internal mutex, so a
//! scheduler thread may allocate while another thread reads. Everything that
//! writes state bytes (`zero`, `copy`, `fork`, `import`, every kernel) takes
//! `&mut self`: the borrow checker guarantees no kernel runs while state is
//! changed elsewhere. Share a pool across threads as `Arc<Mutex<StatePool>>`
//! or `RwLock` when several threads issue kernels.
//!
//! # Slots and generations
//! A [`Slot`] handed out by `alloc` (or `fork`) carries the slot's generation;
//! `free` bumps it. Every operation checks the handle: a freed slot is
//! [`Error::SlotNotAllocated`] (`free`: [`Error::DoubleFree`]), and once its
//! index is allocated again, the old handle is [`Error::StaleSlot`]. A batch
//! records its handles when it is built and every operation re-checks them
//! when it is validated ([`crate::checked`]; tools that reach the buffers
//! without a checked call go through [`StatePool::kernel_parts`], which
//! checks them too), so a batch built before a free and a re-allocation never
//! runs on the index's new owner.
//!
//! # Speculative state: verify, then commit
//! Per slot and layer the pool knows whether the scratch holds a *current*
//! verify: the scratch steps were written by `verify` from the main state as
//! it still is. `commit` of a slot in a layer without one is
//! [`Error::NoCurrentVerify`], and the whole commit is refused. The rules:
//! - `verify` of a slot in a layer makes its scratch current (a failed verify
//!   leaves it not current);
//! - anything that writes the slot's main state makes it stale: `extend`,
//!   `decode`, `conv_extend`, `conv_update` of the slot in that layer (also as
//!   a snapshot target), and in every layer `import`, `zero`, `copy`/`fork`
//!   into it, and `free`;
//! - `commit` consumes it: after a commit the main state has moved on, so a
//!   second commit of the same verify (even of another accepted step) needs a
//!   new verify. A snapshot slot a commit writes is made stale likewise;
//! - `conv_verify` writes only the conv windows and changes nothing here: the
//!   commit copies whichever windows the last `conv_verify` left (the layer
//!   forward always runs both);
//! - raw access through [`StatePool::parts_mut`] makes every verify stale.

use crate::dims::ModelDims;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::layout::{convert_conv, convert_state, ConvLayoutKind, LayoutKind, StateLayout};
use crate::memory::DeviceMemory;
use crate::spec::SpecMode;
use crate::tensor::Device;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

pub use crate::access::KernelAccess;
use crate::batch::check_not_empty;
use crate::checked::{Checked, Ticket};
pub use crate::slot::Slot;
use crate::slot::SlotAllocator;

/// Speculative-decoding configuration of a pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpecConfig {
    /// Draft tokens verified per request per step (D).
    pub draft_tokens: usize,
    /// What the pool keeps between verify and commit ([`crate::spec`]).
    pub mode: SpecMode,
}

/// What a pool holds, built with named setters by [`PoolConfig::builder`]
/// (or positionally by [`PoolConfig::new`] and the `with_*` methods).
///
/// ```
/// use deltanet_core::{ModelDims, PoolConfig, DType};
/// let dims = ModelDims::builder().key_heads(2).value_heads(4).head_k_dim(32).head_v_dim(32).conv_width(4).build()?;
/// let cfg = PoolConfig::builder(dims).layers(3).slots(8).state_dtype(DType::BF16).speculative(4).build()?;
/// assert!(cfg.bytes_per_slot() > 0);
/// assert_eq!(cfg.slots_for_budget(cfg.bytes_per_slot() * 10), 9); // one row is the padding slot
/// # Ok::<(), deltanet_core::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PoolConfig {
    /// GDN layers (L).
    pub layers: usize,
    /// Allocatable slots (the buffers hold one more, slot 0).
    pub slots: usize,
    /// Dims of every layer.
    pub dims: ModelDims,
    /// Recurrent-state dtype (f32 or bf16).
    pub state_dtype: DType,
    /// Conv-state dtype (f32, bf16 or f16).
    pub conv_dtype: DType,
    /// Speculative buffers, if any.
    pub spec: Option<SpecConfig>,
    /// Refuse delta-rule calls with non-finite inputs or starting states
    /// ([`Error::NonFinite`], nothing written); host backends only. See [`crate::finite`].
    pub check_finite: bool,
}

impl PoolConfig {
    /// A builder with named setters for pools of `dims`: layers and slots must
    /// be set; f32 state and conv, no speculative buffers and no finite check
    /// unless set.
    pub fn builder(dims: ModelDims) -> PoolConfigBuilder {
        PoolConfigBuilder { layers: None, slots: None, mode: SpecMode::Scratch, config: PoolConfig::new(0, 0, dims) }
    }
    /// The positional shorthand of [`builder`](Self::builder), not validated
    /// (the pool validates it): `layers` GDN layers, `slots` allocatable slots,
    /// f32 state and conv, no speculative buffers.
    pub fn new(layers: usize, slots: usize, dims: ModelDims) -> Self {
        PoolConfig { layers, slots, dims, state_dtype: DType::F32, conv_dtype: DType::F32, spec: None, check_finite: false }
    }
    /// Turns on the non-finite input check ([`crate::finite`]).
    pub fn with_finite_check(mut self) -> Self {
        self.check_finite = true;
        self
    }
    /// Sets the recurrent-state dtype.
    pub fn with_state_dtype(mut self, d: DType) -> Self {
        self.state_dtype = d;
        self
    }
    /// Sets the conv-state dtype.
    pub fn with_conv_dtype(mut self, d: DType) -> Self {
        self.conv_dtype = d;
        self
    }
    /// Adds speculative buffers for `draft_tokens` per request, in
    /// [`SpecMode::Scratch`] unless [`with_spec_mode`](Self::with_spec_mode) follows.
    pub fn with_speculative(mut self, draft_tokens: usize) -> Self {
        self.spec = Some(SpecConfig { draft_tokens, mode: SpecMode::Scratch });
        self
    }
    /// Sets the speculative mode (after [`with_speculative`](Self::with_speculative);
    /// without it, a configuration of 0 draft tokens that validation refuses).
    pub fn with_spec_mode(mut self, mode: SpecMode) -> Self {
        self.spec = Some(SpecConfig { draft_tokens: self.draft_tokens(), mode });
        self
    }
    /// The speculative mode (`None` without speculative buffers).
    pub fn spec_mode(&self) -> Option<SpecMode> {
        self.spec.map(|s| s.mode)
    }
    /// Bytes of one draft step of one request in one layer, in the
    /// speculative buffers `(scratch, windows)`: a state and a conv window in
    /// [`SpecMode::Scratch`]; in [`SpecMode::Replay`] the step's k, v, g, beta
    /// per value head (f32, [`replay_record_elems`](Self::replay_record_elems))
    /// and its raw conv input (`conv_dim` values of the conv dtype).
    pub fn spec_step_bytes(&self) -> (usize, usize) {
        let d = &self.dims;
        match self.spec_mode() {
            Some(SpecMode::Replay) => (
                d.num_v_heads.saturating_mul(self.replay_record_elems()).saturating_mul(4),
                d.conv_dim().saturating_mul(self.conv_dtype.size()),
            ),
            _ => (d.state_elems().saturating_mul(self.state_dtype.size()), d.conv_elems().saturating_mul(self.conv_dtype.size())),
        }
    }
    /// f32 values a replay record holds per value head and draft step: k (K),
    /// v (V), g and beta, in that order.
    pub fn replay_record_elems(&self) -> usize {
        self.dims.head_k_dim.saturating_add(self.dims.head_v_dim).saturating_add(2)
    }
    /// Bytes of one request's speculative buffers across all layers (0
    /// without them): what the speculative mode costs per request.
    pub fn spec_bytes_per_slot(&self) -> usize {
        let (a, b) = self.spec_step_bytes();
        self.layers.saturating_mul(self.draft_tokens()).saturating_mul(a.saturating_add(b))
    }
    /// Draft tokens D (0 without speculative buffers).
    pub fn draft_tokens(&self) -> usize {
        self.spec.map_or(0, |s| s.draft_tokens)
    }
    /// Bytes one slot costs across all layers and buffers (saturating at
    /// `usize::MAX` for a configuration [`validate`](Self::validate) refuses).
    pub fn bytes_per_slot(&self) -> usize {
        let state = self.dims.state_elems().saturating_mul(self.state_dtype.size());
        let conv = self.dims.conv_elems().saturating_mul(self.conv_dtype.size());
        self.layers.saturating_mul(state.saturating_add(conv)).saturating_add(self.spec_bytes_per_slot())
    }
    /// Byte lengths of the pool's buffers, in checked arithmetic: an impossible
    /// size is [`Error::InvalidConfig`] naming the buffer. Every offset the
    /// [`PoolGeometry`] computes lies below these, so none wraps.
    pub fn buffer_bytes(&self) -> Result<BufferBytes> {
        self.dims.validate()?;
        let rows = crate::size::product("layers * (slots + 1)", &[self.layers, self.slots.saturating_add(1)])?;
        let state = self.dims.state_elems() * self.state_dtype.size();
        let conv = self.dims.conv_elems() * self.conv_dtype.size();
        let d = self.draft_tokens();
        // the step sizes are products of validated dims; the buffer products are checked here
        let (step, window) = self.spec_step_bytes();
        let b = BufferBytes {
            conv: crate::size::bytes("conv state buffer (layers * (slots + 1) * conv bytes)", &[rows, conv])?,
            temporal: crate::size::bytes("recurrent state buffer (layers * (slots + 1) * state bytes)", &[rows, state])?,
            scratch: crate::size::bytes("speculative scratch buffer (layers * (slots + 1) * D * step bytes)", &[rows, d, step])?,
            windows: crate::size::bytes("speculative conv windows (layers * (slots + 1) * D * window bytes)", &[rows, d, window])?,
        };
        crate::size::sum("pool bytes", &[b.conv, b.temporal, b.scratch, b.windows])?;
        Ok(b)
    }
    /// How many allocatable slots fit in `budget` bytes (slot 0 included in the cost).
    pub fn slots_for_budget(&self, budget: usize) -> usize {
        (budget / self.bytes_per_slot().max(1)).saturating_sub(1)
    }
    /// Checks the configuration independently of any backend.
    pub fn validate(&self) -> Result<()> {
        self.dims.validate()?;
        if self.layers == 0 || self.slots == 0 {
            return Err(Error::InvalidConfig(format!("layers {} and slots {} must be positive", self.layers, self.slots)));
        }
        if self.slots >= u32::MAX as usize {
            return Err(Error::InvalidConfig(format!("{} slots exceed u32", self.slots)));
        }
        if let Some(s) = self.spec {
            if s.draft_tokens == 0 {
                return Err(Error::InvalidConfig("speculative pool with 0 draft tokens".into()));
            }
        }
        if !matches!(self.state_dtype, DType::F32 | DType::BF16) {
            return Err(Error::InvalidConfig(format!("state dtype {} (f32 or bf16)", self.state_dtype)));
        }
        self.buffer_bytes()?;
        Ok(())
    }
}

/// Named setters for [`PoolConfig`] ([`PoolConfig::builder`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PoolConfigBuilder {
    layers: Option<usize>,
    slots: Option<usize>,
    mode: SpecMode,
    config: PoolConfig,
}

impl PoolConfigBuilder {
    /// GDN layers (L).
    pub fn layers(mut self, n: usize) -> Self {
        self.layers = Some(n);
        self
    }
    /// Allocatable slots (requests the pool holds at once).
    pub fn slots(mut self, n: usize) -> Self {
        self.slots = Some(n);
        self
    }
    /// Recurrent-state dtype (f32 or bf16; default f32).
    pub fn state_dtype(mut self, d: DType) -> Self {
        self.config.state_dtype = d;
        self
    }
    /// Conv-state dtype (default f32).
    pub fn conv_dtype(mut self, d: DType) -> Self {
        self.config.conv_dtype = d;
        self
    }
    /// Speculative buffers for `draft_tokens` per request (default none).
    pub fn speculative(mut self, draft_tokens: usize) -> Self {
        self.config.spec = Some(SpecConfig { draft_tokens, mode: self.mode });
        self
    }
    /// The speculative mode of those buffers (default [`SpecMode::Scratch`]);
    /// takes effect with [`speculative`](Self::speculative), in either order.
    pub fn spec_mode(mut self, mode: SpecMode) -> Self {
        self.mode = mode;
        if let Some(s) = &mut self.config.spec {
            s.mode = mode;
        }
        self
    }
    /// Turns the non-finite input check ([`crate::finite`]) on or off (default off).
    pub fn finite_check(mut self, on: bool) -> Self {
        self.config.check_finite = on;
        self
    }
    /// The configuration, checked by [`PoolConfig::validate`]; [`Error::InvalidConfig`]
    /// naming `layers` or `slots` when one was not set.
    pub fn build(self) -> Result<PoolConfig> {
        let need = |v: Option<usize>, name: &str| v.ok_or_else(|| Error::InvalidConfig(format!("PoolConfig::builder: {name} not set")));
        let config = PoolConfig { layers: need(self.layers, "layers")?, slots: need(self.slots, "slots")?, ..self.config };
        config.validate()?;
        Ok(config)
    }
}

/// Byte lengths of a pool's buffers ([`PoolConfig::buffer_bytes`]); 0 for the
/// speculative ones of a pool without speculative buffers. What the
/// speculative buffers hold per step depends on the mode
/// ([`PoolConfig::spec_step_bytes`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BufferBytes {
    /// Conv state `[L, slots+1, conv]`.
    pub conv: usize,
    /// Recurrent state `[L, slots+1, state]`.
    pub temporal: usize,
    /// Speculative scratch `[L, slots+1, D, step]`: states (scratch mode) or
    /// k, v, g, beta records (replay mode).
    pub scratch: usize,
    /// Speculative conv windows `[L, slots+1, D, window]`: conv states
    /// (scratch mode) or raw conv inputs (replay mode).
    pub windows: usize,
}

/// Byte geometry of a pool's buffers: where each (layer, slot, step) lives.
/// Kernels use it to address state; nothing else computes offsets.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PoolGeometry {
    /// The configuration.
    pub config: PoolConfig,
    /// Recurrent layout of every state buffer (main, scratch).
    pub layout: LayoutKind,
    /// Conv layout of every conv buffer (main, windows).
    pub conv_layout: ConvLayoutKind,
}

impl PoolGeometry {
    /// Rows per layer: slots + the padding slot.
    pub fn rows(&self) -> usize {
        self.config.slots + 1
    }
    /// Bytes of one request's recurrent state in one layer.
    pub fn state_bytes(&self) -> usize {
        self.config.dims.state_elems() * self.config.state_dtype.size()
    }
    /// Bytes of one request's conv state in one layer.
    pub fn conv_bytes(&self) -> usize {
        self.config.dims.conv_elems() * self.config.conv_dtype.size()
    }
    /// Draft tokens D (0 without speculative buffers).
    pub fn draft(&self) -> usize {
        self.config.draft_tokens()
    }
    /// Byte offset of `slot`'s recurrent state in `layer`.
    pub fn temporal_offset(&self, layer: usize, slot: usize) -> usize {
        (layer * self.rows() + slot) * self.state_bytes()
    }
    /// Byte offset of `slot`'s conv state in `layer`.
    pub fn conv_offset(&self, layer: usize, slot: usize) -> usize {
        (layer * self.rows() + slot) * self.conv_bytes()
    }
    /// Byte offset of scratch step `step` of `slot` in `layer`: its state
    /// (scratch mode) or its replay record (replay mode; value head `h`'s
    /// k, v, g, beta start [`PoolConfig::replay_record_elems`]` * h` f32 further).
    pub fn scratch_offset(&self, layer: usize, slot: usize, step: usize) -> usize {
        ((layer * self.rows() + slot) * self.draft() + step) * self.config.spec_step_bytes().0
    }
    /// Byte offset of conv window `step` of `slot` in `layer`: its conv state
    /// (scratch mode) or its raw conv input `[conv_dim]` (replay mode).
    pub fn window_offset(&self, layer: usize, slot: usize, step: usize) -> usize {
        ((layer * self.rows() + slot) * self.draft() + step) * self.config.spec_step_bytes().1
    }
    /// The speculative mode (`None` without speculative buffers).
    pub fn spec_mode(&self) -> Option<SpecMode> {
        self.config.spec_mode()
    }
    /// Errors unless `layer < layers`.
    pub fn check_layer(&self, layer: usize) -> Result<()> {
        if layer >= self.config.layers {
            return Err(Error::LayerOutOfRange { layer, layers: self.config.layers });
        }
        Ok(())
    }
}

/// One slot's state for every layer, in canonical order: recurrent `[L, HV, K, V]`
/// (K-major) and conv `[L, conv_dim, W-1]` (channels-first), in the dtypes it was
/// exported in. Moving between pools of either layout with the same dtypes is exact.
#[derive(Debug, Clone, PartialEq)]
pub struct HostState {
    /// Layers.
    pub layers: usize,
    /// Dims.
    pub dims: ModelDims,
    /// Dtype of `temporal`.
    pub state_dtype: DType,
    /// Dtype of `conv`.
    pub conv_dtype: DType,
    /// Little-endian recurrent state bytes, canonical K-major.
    pub temporal: Vec<u8>,
    /// Little-endian conv state bytes, canonical channels-first.
    pub conv: Vec<u8>,
}

impl HostState {
    /// Builds a host state from f32 values in canonical order, stored in the given dtypes.
    pub fn from_f32(layers: usize, dims: ModelDims, state_dtype: DType, conv_dtype: DType, temporal: &[f32], conv: &[f32]) -> Result<Self> {
        dims.validate()?;
        let (ns, nc) = (
            crate::size::product("layers * state_elems", &[layers, dims.state_elems()])?,
            crate::size::product("layers * conv_elems", &[layers, dims.conv_elems()])?,
        );
        if temporal.len() != ns || conv.len() != nc {
            return Err(Error::StateMismatch(format!(
                "expected {} state and {} conv values, got {} and {}",
                ns,
                nc,
                temporal.len(),
                conv.len()
            )));
        }
        Ok(HostState {
            layers,
            dims,
            state_dtype,
            conv_dtype,
            temporal: state_dtype.encode_vec(temporal),
            conv: conv_dtype.encode_vec(conv),
        })
    }
    /// Recurrent state as f32, canonical `[L, HV, K, V]`.
    pub fn temporal_f32(&self) -> Vec<f32> {
        self.state_dtype.decode_vec(&self.temporal)
    }
    /// Conv state as f32, canonical `[L, conv_dim, W-1]`.
    pub fn conv_f32(&self) -> Vec<f32> {
        self.conv_dtype.decode_vec(&self.conv)
    }
}

/// Which buffer a [`BufferDescriptor`] describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BufferKind {
    /// Conv state `[slots+1, conv]` of one layer.
    Conv,
    /// Recurrent state `[slots+1, state]` of one layer.
    Temporal,
    /// Speculative scratch `[slots+1, D, step]` of one layer: states (scratch
    /// mode) or k, v, g, beta records (replay mode).
    Scratch,
    /// Speculative conv windows `[slots+1, D, window]` of one layer: conv
    /// states (scratch mode) or raw conv inputs (replay mode).
    ConvWindows,
}

/// One layer's part of one buffer, for transfer engines (RDMA, offload):
/// slot `s` occupies `addr + s*bytes_per_slot .. + bytes_per_slot`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BufferDescriptor {
    /// Which buffer.
    pub kind: BufferKind,
    /// Layer.
    pub layer: usize,
    /// Device the address is on.
    pub device: Device,
    /// Address of slot 0 of this layer.
    pub addr: u64,
    /// Bytes of this layer's part (all rows).
    pub bytes: usize,
    /// Bytes per slot row.
    pub bytes_per_slot: usize,
}

/// What a scheduler calls: slot lifecycle, copies, import/export, sizes.
/// Object-safe, so engines can hold `&mut dyn MambaStatePool`.
///
/// Slot bookkeeping (`alloc`, `free`, queries) takes `&self`: it touches only
/// the allocator behind its own mutex, so a scheduler thread can allocate and
/// free while another holds the pool shared. Everything that writes state
/// bytes (`zero`, `copy`, `fork`, `import`, and every kernel) takes
/// `&mut self`, so the borrow checker rules out a write racing a kernel.
pub trait MambaStatePool: Send + Sync {
    /// Process-unique id, recorded by validated batches.
    fn id(&self) -> u64;
    /// Buffer geometry (config, layouts).
    fn geometry(&self) -> &PoolGeometry;
    /// Device the buffers live on.
    fn device(&self) -> Device;
    /// Allocatable slots.
    fn capacity(&self) -> usize {
        self.geometry().config.slots
    }
    /// Slots currently free.
    fn free_count(&self) -> usize;
    /// Whether `slot` is currently allocated.
    fn is_allocated(&self, slot: Slot) -> bool;
    /// Checks `slots` are allocated, in range, not padding and distinct.
    fn check_slots(&self, slots: &[Slot]) -> Result<()>;
    /// Allocates `n >= 1` slots (contents unspecified: zero them, import, or extend without initial state);
    /// `n = 0` is [`Error::EmptyBatch`], as for every operation on no requests.
    fn alloc(&self, n: usize) -> Result<Vec<Slot>>;
    /// Frees slots (at least one); all or nothing.
    fn free(&self, slots: &[Slot]) -> Result<()>;
    /// Zeroes the conv and recurrent state of `slots` (at least one) in every layer.
    fn zero(&mut self, slots: &[Slot]) -> Result<()>;
    /// Copies `src`'s conv and recurrent state into `dst` (both allocated, distinct).
    fn copy(&mut self, src: Slot, dst: Slot) -> Result<()>;
    /// Allocates a slot holding a copy of `src`.
    fn fork(&mut self, src: Slot) -> Result<Slot> {
        // Check the source first: otherwise forking a free slot could allocate
        // that very slot and report a confusing duplicate instead.
        self.check_slots(&[src])?;
        let dst = self.alloc(1)?[0];
        if let Err(e) = self.copy(src, dst) {
            self.free(&[dst])?;
            return Err(e);
        }
        Ok(dst)
    }
    /// One slot's state in canonical order.
    fn export(&self, slot: Slot) -> Result<HostState>;
    /// Overwrites one slot's state from canonical order (converting dtype if they differ).
    fn import(&mut self, slot: Slot, state: &HostState) -> Result<()>;
    /// Total bytes of every buffer.
    fn bytes(&self) -> usize;
    /// Per-layer descriptors of every buffer.
    fn descriptors(&self) -> Vec<BufferDescriptor>;
    /// A hash of every byte of every buffer (tests: "nothing changed").
    fn digest(&self) -> Result<u64>;
}

static NEXT_POOL_ID: AtomicU64 = AtomicU64::new(1);

/// The one pool implementation: buffers on `M` in layout `L`.
///
/// ```
/// use deltanet_core::*;
/// let dims = ModelDims::builder().key_heads(1).value_heads(2).head_k_dim(4).head_v_dim(3).conv_width(4).build().unwrap();
/// let caps = Capabilities::host_reference(LayoutKind::KMajor);
/// let config = PoolConfig::builder(dims).layers(2).slots(4).build().unwrap();
/// let mut pool: StatePool<HostMemory, KMajor> = StatePool::new(HostMemory, config, &caps).unwrap();
/// let s = pool.alloc(2).unwrap();
/// pool.zero(&s).unwrap();
/// let st = pool.export(s[0]).unwrap();
/// pool.import(s[1], &st).unwrap();
/// pool.free(&s).unwrap();
/// assert!(matches!(pool.free(&s[..1]), Err(Error::DoubleFree { .. })));
/// ```
pub struct StatePool<M: DeviceMemory, L: StateLayout> {
    id: u64,
    memory: M,
    geometry: PoolGeometry,
    conv: M::Buffer,
    temporal: M::Buffer,
    scratch: Option<M::Buffer>,
    windows: Option<M::Buffer>,
    /// The draft tree of each (layer, slot)'s last successful verify,
    /// `[L, slots+1, D]` (what a replay commit walks from `a` to the root).
    verify_parents: Vec<i64>,
    slots: Mutex<SlotAllocator>,
    _layout: PhantomData<L>,
}

/// Mutable access to a pool's buffers, for kernels.
pub struct PoolParts<'p, M: DeviceMemory> {
    /// Where everything is.
    pub geometry: &'p PoolGeometry,
    /// The memory the buffers live on.
    pub memory: &'p M,
    /// Conv state `[L, slots+1, conv]`.
    pub conv: &'p mut M::Buffer,
    /// Recurrent state `[L, slots+1, state]`.
    pub temporal: &'p mut M::Buffer,
    /// Speculative scratch `[L, slots+1, D, state]`.
    pub scratch: Option<&'p mut M::Buffer>,
    /// Speculative conv windows `[L, slots+1, D, conv]`.
    pub windows: Option<&'p mut M::Buffer>,
    /// Parent of each draft step in the last successful verify of each
    /// (layer, slot), `[L, slots+1, D]` (`-1`: the slot's state); see
    /// [`PoolParts::replay_path`].
    pub verify_parents: &'p [i64],
}

impl<M: DeviceMemory> PoolParts<'_, M> {
    /// The draft steps from the root to step `a` (inclusive, root first) of
    /// the last verify of `slot` in `layer`: the path a replay commit applies.
    pub fn replay_path(&self, layer: usize, slot: usize, a: usize) -> Vec<usize> {
        replay_path(self.geometry, self.verify_parents, layer, slot, a)
    }
}

/// The path a replay commit applies, from a pool's verify parents `[L, slots+1, D]`.
fn replay_path(geometry: &PoolGeometry, verify_parents: &[i64], layer: usize, slot: usize, a: usize) -> Vec<usize> {
    let d = geometry.draft();
    let row = (layer * geometry.rows() + slot) * d;
    crate::plan::path_to(&verify_parents[row..row + d], a)
}

impl<M: DeviceMemory, L: StateLayout> StatePool<M, L> {
    /// Allocates every buffer zeroed, in layout `L` and the configured dtypes,
    /// after checking them against the backend's capabilities.
    pub fn new(memory: M, config: PoolConfig, caps: &crate::capabilities::Capabilities) -> Result<Self> {
        config.validate()?;
        if caps.native_layout != L::KIND {
            return Err(Error::LayoutMismatch { expected: caps.native_layout, actual: L::KIND });
        }
        caps.check_pool_config(&config)?;
        let geometry = PoolGeometry { config, layout: L::KIND, conv_layout: caps.conv_layout };
        let sizes = config.buffer_bytes()?;
        let conv = memory.alloc_zeroed(sizes.conv)?;
        let temporal = memory.alloc_zeroed(sizes.temporal)?;
        let (scratch, windows) = if config.draft_tokens() > 0 {
            (Some(memory.alloc_zeroed(sizes.scratch)?), Some(memory.alloc_zeroed(sizes.windows)?))
        } else {
            (None, None)
        };
        // After the buffers, which are larger: an impossible pool fails there first.
        let slots = SlotAllocator::new(config.slots, config.layers)?;
        let verify_parents = vec![-1; config.layers * geometry.rows() * config.draft_tokens()];
        Ok(StatePool {
            id: NEXT_POOL_ID.fetch_add(1, Ordering::Relaxed),
            memory,
            geometry,
            conv,
            temporal,
            scratch,
            windows,
            verify_parents,
            slots: Mutex::new(slots),
            _layout: PhantomData,
        })
    }

    /// The memory the buffers were allocated on.
    pub fn memory(&self) -> &M {
        &self.memory
    }

    /// The layout tag (`L::KIND`).
    pub fn layout(&self) -> LayoutKind {
        L::KIND
    }

    /// [`PoolParts::replay_path`] without the buffers: the draft steps from
    /// the root to step `a` (root first) of the last verify of `slot` in
    /// `layer`, for a backend that builds a replay commit's tables before
    /// its kernels run. `layer`, `slot` and `a` must be in range (a validated
    /// commit's).
    pub fn replay_path(&self, layer: usize, slot: usize, a: usize) -> Vec<usize> {
        replay_path(&self.geometry, &self.verify_parents, layer, slot, a)
    }

    /// Mutable access to every buffer, untracked: the pool cannot know what
    /// is written through it, so afterwards no verify counts as current (a
    /// commit needs a new verify). Kernels use [`kernel_parts`](Self::kernel_parts).
    pub fn parts_mut(&mut self) -> PoolParts<'_, M> {
        self.slots.get_mut().unwrap_or_else(|p| p.into_inner()).forget_all_verifies();
        self.raw_parts()
    }

    fn raw_parts(&mut self) -> PoolParts<'_, M> {
        PoolParts {
            geometry: &self.geometry,
            memory: &self.memory,
            conv: &mut self.conv,
            temporal: &mut self.temporal,
            scratch: self.scratch.as_mut(),
            windows: self.windows.as_mut(),
            verify_parents: &self.verify_parents,
        }
    }

    /// Runs `kernel` on the buffers for the access `ticket` proves core
    /// validated ([`crate::checked`]): the way a backend's kernel reaches a
    /// pool's state. Only the pool's identity is checked again (the batch's
    /// slots cannot change while the kernel holds the pool mutably). After
    /// `kernel`, the verify bookkeeping follows what it wrote (see the
    /// [module docs](self)); if `kernel` fails, everything it may have written
    /// counts as stale.
    pub fn checked_parts<R>(&mut self, ticket: Ticket<'_>, kernel: impl FnOnce(PoolParts<'_, M>) -> Result<R>) -> Result<R> {
        if ticket.pool_id() != self.id {
            return Err(Error::ForeignBatch { batch_pool: ticket.pool_id(), pool: self.id });
        }
        self.parts_for(ticket.layer(), ticket.access(), kernel)
    }

    /// Runs `kernel` on the buffers for `access` in `layer` without a checked
    /// call (tools and tests that write the pool themselves): first the batch
    /// is checked again (this pool, every slot still allocated under the
    /// generation the batch was built with, so a batch built before a free and
    /// re-allocation is [`Error::StaleSlot`]) and so is the layer; a commit
    /// needs a current verify of each of its slots in `layer`
    /// ([`Error::NoCurrentVerify`]). Refused here, nothing changed. The
    /// bookkeeping afterwards is that of [`checked_parts`](Self::checked_parts).
    pub fn kernel_parts<R>(
        &mut self,
        layer: usize,
        access: KernelAccess<'_>,
        kernel: impl FnOnce(PoolParts<'_, M>) -> Result<R>,
    ) -> Result<R> {
        access.check_pool(self)?;
        self.geometry.check_layer(layer)?;
        if let KernelAccess::Commit(b) = access {
            self.check_current_verifies(layer, b)?;
        }
        self.parts_for(layer, access, kernel)
    }

    /// [`Error::NoCurrentVerify`] unless every slot of `batch` has a current verify in `layer`.
    /// (A skipped request needs none: nothing of its scratch is read.)
    pub(crate) fn check_current_verifies(&self, layer: usize, batch: &crate::batch::CommitBatch) -> Result<()> {
        let a = self.allocator();
        match batch.commits().find(|c| !a.verified(layer, c.slot.index())) {
            Some(c) => Err(Error::NoCurrentVerify { index: c.request, slot: c.slot.index_u32(), layer }),
            None => Ok(()),
        }
    }

    fn parts_for<R>(&mut self, layer: usize, access: KernelAccess<'_>, kernel: impl FnOnce(PoolParts<'_, M>) -> Result<R>) -> Result<R> {
        let r = kernel(self.raw_parts());
        let a = self.slots.get_mut().unwrap_or_else(|p| p.into_inner());
        access.for_each_main_write(|s| a.set_verified(layer, s.index(), false));
        if let KernelAccess::Verify(b) = access {
            let (rows, d) = (self.geometry.rows(), self.geometry.draft());
            for (i, s) in b.slots().iter().enumerate() {
                a.set_verified(layer, s.index(), r.is_ok());
                if r.is_ok() {
                    let row = (layer * rows + s.index()) * d;
                    self.verify_parents[row..row + d].copy_from_slice(&b.parents()[i * d..(i + 1) * d]);
                }
            }
        }
        r
    }

    /// Whether the scratch of `slot` in `layer` holds a current verify (what
    /// a commit of it needs). False for a slot not allocated under this handle.
    pub fn has_current_verify(&self, slot: Slot, layer: usize) -> bool {
        let a = self.allocator();
        a.is_allocated(slot) && layer < self.geometry.config.layers && a.verified(layer, slot.index())
    }

    /// Read access to the conv and recurrent buffers.
    pub fn buffers(&self) -> (&M::Buffer, &M::Buffer) {
        (&self.conv, &self.temporal)
    }

    fn allocator(&self) -> std::sync::MutexGuard<'_, SlotAllocator> {
        // A panic while holding the lock cannot leave the allocator half-updated
        // (every mutation is a single push/pop/flag), so poisoning is ignored.
        self.slots.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The low-level commit, for tools and tests that hold a pool but no
    /// backend: copies each committed request's accepted scratch step (state
    /// and conv window) of `layer` through the pool's memory into its main
    /// slot, and into its snapshot slot when one is named, checking the batch
    /// first as [`kernel_parts`](Self::kernel_parts) does.
    ///
    /// Engines do not call this: the commit an engine calls is
    /// [`KernelDispatcher::commit`](crate::KernelDispatcher::commit) (on a
    /// runtime pool, `Backend::commit`), which validates once and runs the
    /// backend's own commit kernel (fused on CUDA, synchronised on the NPU).
    pub fn commit_accepted(&mut self, layer: usize, batch: &crate::batch::CommitBatch) -> Result<()> {
        self.kernel_parts(layer, KernelAccess::Commit(batch), |p| copy_accepted(p, layer, batch))
    }

    /// The default commit kernel ([`crate::Kernels::run_commit`]): [`commit_accepted`](Self::commit_accepted) of a checked call.
    pub fn commit_checked(&mut self, call: &Checked<'_, crate::batch::CommitBatch, ()>) -> Result<()> {
        let (layer, batch) = (call.layer(), call.batch());
        self.checked_parts(call.ticket(), |p| copy_accepted(p, layer, batch))
    }

    fn state_elem_convert(&self, from: LayoutKind, to: LayoutKind, src: &[u8], dst: &mut [u8]) -> Result<()> {
        let dims = &self.geometry.config.dims;
        let (h, k, v) = (dims.num_v_heads, dims.head_k_dim, dims.head_v_dim);
        match self.geometry.config.state_dtype.size() {
            4 => convert_state::<[u8; 4]>(from, to, h, k, v, bytemuck::cast_slice(src), bytemuck::cast_slice_mut(dst)),
            _ => convert_state::<[u8; 2]>(from, to, h, k, v, bytemuck::cast_slice(src), bytemuck::cast_slice_mut(dst)),
        }
    }

    fn conv_elem_convert(&self, from: ConvLayoutKind, to: ConvLayoutKind, src: &[u8], dst: &mut [u8]) -> Result<()> {
        let dims = &self.geometry.config.dims;
        let (c, w) = (dims.conv_dim(), dims.conv_state_len());
        match self.geometry.config.conv_dtype.size() {
            4 => convert_conv::<[u8; 4]>(from, to, c, w, bytemuck::cast_slice(src), bytemuck::cast_slice_mut(dst)),
            _ => convert_conv::<[u8; 2]>(from, to, c, w, bytemuck::cast_slice(src), bytemuck::cast_slice_mut(dst)),
        }
    }
}

/// Copies each request's accepted scratch step into its main (and snapshot) slot.
fn copy_accepted<M: DeviceMemory>(p: PoolParts<'_, M>, layer: usize, batch: &crate::batch::CommitBatch) -> Result<()> {
    let g = p.geometry;
    if g.spec_mode() == Some(SpecMode::Replay) {
        return Err(Error::Unsupported {
            backend: "pool".into(),
            reason: "copying scratch steps: a replay pool holds no per-step states and commits through its backend's dispatcher".into(),
        });
    }
    let (scratch, windows) = match (p.scratch, p.windows) {
        (Some(s), Some(w)) => (s, w),
        _ => return Err(Error::NoSpeculativeBuffers),
    };
    for c in batch.commits() {
        let (slot, a) = (c.slot, c.step);
        for dst in std::iter::once(slot).chain(c.snapshot) {
            let (s, d) = (g.scratch_offset(layer, slot.index(), a), g.temporal_offset(layer, dst.index()));
            p.memory.copy_between(scratch, s, p.temporal, d, g.state_bytes())?;
            let (s, d) = (g.window_offset(layer, slot.index(), a), g.conv_offset(layer, dst.index()));
            p.memory.copy_between(windows, s, p.conv, d, g.conv_bytes())?;
        }
    }
    Ok(())
}

impl<M: DeviceMemory, L: StateLayout> std::fmt::Debug for StatePool<M, L> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StatePool").field("id", &self.id).field("geometry", &self.geometry).finish()
    }
}

fn fnv1a(mut h: u64, bytes: &[u8]) -> u64 {
    for b in bytes {
        h ^= *b as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    h
}

impl<M: DeviceMemory, L: StateLayout> MambaStatePool for StatePool<M, L> {
    fn id(&self) -> u64 {
        self.id
    }
    fn geometry(&self) -> &PoolGeometry {
        &self.geometry
    }
    fn device(&self) -> Device {
        self.memory.device()
    }
    fn free_count(&self) -> usize {
        self.allocator().free_count()
    }
    fn is_allocated(&self, slot: Slot) -> bool {
        self.allocator().is_allocated(slot)
    }
    fn check_slots(&self, slots: &[Slot]) -> Result<()> {
        self.allocator().check_distinct(slots)
    }

    fn alloc(&self, n: usize) -> Result<Vec<Slot>> {
        let _span = tracing::debug_span!("pool.alloc", n).entered();
        check_not_empty("alloc", n)?;
        self.allocator().alloc(n)
    }

    fn free(&self, slots: &[Slot]) -> Result<()> {
        let _span = tracing::debug_span!("pool.free", n = slots.len()).entered();
        check_not_empty("free", slots.len())?;
        self.allocator().free(slots)
    }

    fn zero(&mut self, slots: &[Slot]) -> Result<()> {
        let _span = tracing::debug_span!("pool.zero", n = slots.len()).entered();
        check_not_empty("zero", slots.len())?;
        let a = self.slots.get_mut().unwrap_or_else(|p| p.into_inner());
        a.check_distinct(slots)?;
        slots.iter().for_each(|s| a.forget_verify(s.index()));
        let g = self.geometry;
        for layer in 0..g.config.layers {
            for s in slots {
                self.memory.zero(&mut self.temporal, g.temporal_offset(layer, s.index()), g.state_bytes())?;
                self.memory.zero(&mut self.conv, g.conv_offset(layer, s.index()), g.conv_bytes())?;
            }
        }
        Ok(())
    }

    fn copy(&mut self, src: Slot, dst: Slot) -> Result<()> {
        let _span = tracing::debug_span!("pool.copy", src = src.index(), dst = dst.index()).entered();
        let a = self.slots.get_mut().unwrap_or_else(|p| p.into_inner());
        a.check_distinct(&[src, dst])?;
        a.forget_verify(dst.index());
        let g = self.geometry;
        for layer in 0..g.config.layers {
            let (s, d) = (g.temporal_offset(layer, src.index()), g.temporal_offset(layer, dst.index()));
            self.memory.copy_within(&mut self.temporal, s, d, g.state_bytes())?;
            let (s, d) = (g.conv_offset(layer, src.index()), g.conv_offset(layer, dst.index()));
            self.memory.copy_within(&mut self.conv, s, d, g.conv_bytes())?;
        }
        Ok(())
    }

    fn export(&self, slot: Slot) -> Result<HostState> {
        let _span = tracing::debug_span!("pool.export", slot = slot.index()).entered();
        self.allocator().check(0, slot)?;
        let g = self.geometry;
        let (sb, cb) = (g.state_bytes(), g.conv_bytes());
        let mut temporal = vec![0u8; g.config.layers * sb];
        let mut conv = vec![0u8; g.config.layers * cb];
        let mut raw = vec![0u8; sb.max(cb)];
        for layer in 0..g.config.layers {
            self.memory.read(&self.temporal, g.temporal_offset(layer, slot.index()), &mut raw[..sb])?;
            self.state_elem_convert(L::KIND, LayoutKind::KMajor, &raw[..sb], &mut temporal[layer * sb..(layer + 1) * sb])?;
            self.memory.read(&self.conv, g.conv_offset(layer, slot.index()), &mut raw[..cb])?;
            self.conv_elem_convert(g.conv_layout, ConvLayoutKind::ChannelsFirst, &raw[..cb], &mut conv[layer * cb..(layer + 1) * cb])?;
        }
        Ok(HostState {
            layers: g.config.layers,
            dims: g.config.dims,
            state_dtype: g.config.state_dtype,
            conv_dtype: g.config.conv_dtype,
            temporal,
            conv,
        })
    }

    fn import(&mut self, slot: Slot, state: &HostState) -> Result<()> {
        let _span = tracing::debug_span!("pool.import", slot = slot.index()).entered();
        self.allocator().check(0, slot)?;
        let g = self.geometry;
        let dims = &g.config.dims;
        let same = |a: &ModelDims, b: &ModelDims| {
            // Field by field (conv_dim follows from these): `state.dims` is
            // caller-made and may not be valid, so nothing is multiplied.
            (a.num_k_heads, a.num_v_heads, a.head_k_dim, a.head_v_dim, a.conv_width)
                == (b.num_k_heads, b.num_v_heads, b.head_k_dim, b.head_v_dim, b.conv_width)
        };
        if state.layers != g.config.layers || !same(&state.dims, dims) {
            return Err(Error::StateMismatch(format!(
                "state has {} layers of {:?}, pool has {} layers of {:?}",
                state.layers, state.dims, g.config.layers, dims
            )));
        }
        // `state.layers` equals the pool's layers here, so these products cannot overflow.
        if state.temporal.len() != state.layers * dims.state_elems() * state.state_dtype.size()
            || state.conv.len() != state.layers * dims.conv_elems() * state.conv_dtype.size()
        {
            return Err(Error::StateMismatch("byte lengths do not match dims and dtypes".into()));
        }
        // Re-encode into the pool's dtypes (identity, hence exact, when they agree).
        let temporal = if state.state_dtype == g.config.state_dtype {
            state.temporal.clone()
        } else {
            g.config.state_dtype.encode_vec(&state.temporal_f32())
        };
        let conv =
            if state.conv_dtype == g.config.conv_dtype { state.conv.clone() } else { g.config.conv_dtype.encode_vec(&state.conv_f32()) };
        self.slots.get_mut().unwrap_or_else(|p| p.into_inner()).forget_verify(slot.index());
        let (sb, cb) = (g.state_bytes(), g.conv_bytes());
        let mut raw = vec![0u8; sb.max(cb)];
        for layer in 0..g.config.layers {
            self.state_elem_convert(LayoutKind::KMajor, L::KIND, &temporal[layer * sb..(layer + 1) * sb], &mut raw[..sb])?;
            self.memory.write(&mut self.temporal, g.temporal_offset(layer, slot.index()), &raw[..sb])?;
            self.conv_elem_convert(ConvLayoutKind::ChannelsFirst, g.conv_layout, &conv[layer * cb..(layer + 1) * cb], &mut raw[..cb])?;
            self.memory.write(&mut self.conv, g.conv_offset(layer, slot.index()), &raw[..cb])?;
        }
        Ok(())
    }

    fn bytes(&self) -> usize {
        let m = &self.memory;
        m.len(&self.conv)
            + m.len(&self.temporal)
            + self.scratch.as_ref().map_or(0, |b| m.len(b))
            + self.windows.as_ref().map_or(0, |b| m.len(b))
    }

    fn descriptors(&self) -> Vec<BufferDescriptor> {
        let g = self.geometry;
        let d = g.draft();
        let mut out = Vec::new();
        let mut push = |kind, buf: &M::Buffer, per_slot: usize| {
            for layer in 0..g.config.layers {
                let bytes = per_slot * g.rows();
                out.push(BufferDescriptor {
                    kind,
                    layer,
                    device: self.memory.device(),
                    addr: self.memory.addr(buf) + (layer * bytes) as u64,
                    bytes,
                    bytes_per_slot: per_slot,
                });
            }
        };
        push(BufferKind::Conv, &self.conv, g.conv_bytes());
        push(BufferKind::Temporal, &self.temporal, g.state_bytes());
        if let (Some(s), Some(w)) = (&self.scratch, &self.windows) {
            let (step, window) = g.config.spec_step_bytes();
            push(BufferKind::Scratch, s, step * d);
            push(BufferKind::ConvWindows, w, window * d);
        }
        out
    }

    fn digest(&self) -> Result<u64> {
        let mut h = 0xcbf29ce484222325;
        for buf in [Some(&self.conv), Some(&self.temporal), self.scratch.as_ref(), self.windows.as_ref()].into_iter().flatten() {
            let mut host = vec![0u8; self.memory.len(buf)];
            self.memory.read(buf, 0, &mut host)?;
            h = fnv1a(h, &host);
        }
        Ok(h)
    }
}
