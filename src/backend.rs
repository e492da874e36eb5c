//! The runtime backend: one enum whose variants exist in every build. A
//! backend that was not compiled in is a typed [`Error::NotCompiled`]; one
//! that is compiled but cannot run here is [`Error::Unavailable`]. The
//! [`Backend`] and [`Pool`] enums and every match over their variants are
//! written once, by `runtime_backends!` from one list of backends.

use deltanet_core::{
    Capabilities, Checked, CommitBatch, ConvIo, DecodeBatch, DeltaIo, DeltaParams, Error, ExtendBatch, GateCall, GateIo, HostMemory,
    KernelDispatcher, Kernels, LayerInput, LayerWeights, LayerWorkspace, LayoutKind, MambaStatePool, ModelDims, PoolConfig, PoolOf, Result,
    StateLayout, TensorMut, VerifyBatch,
};
use std::any::{Any, TypeId};
use std::marker::PhantomData;

/// Uninhabited: the payload of a backend that was not compiled in.
#[derive(Debug, Clone, Copy)]
pub enum Never {}

/// Stand-in dispatcher for a backend compiled out. It can never be
/// constructed, so its methods are unreachable; it exists so that the
/// [`Backend`] and [`Pool`] variants are the same in every build.
#[derive(Debug)]
pub struct Disabled<L: StateLayout>(Never, PhantomData<L>);

impl<L: StateLayout> Kernels for Disabled<L> {
    type Layout = L;
    type Memory = HostMemory;
    fn capabilities(&self) -> &Capabilities {
        match self.0 {}
    }
    fn memory(&self) -> &HostMemory {
        match self.0 {}
    }
    fn run_gate(&self, _: GateCall<'_>) -> Result<()> {
        match self.0 {}
    }
    fn run_conv_extend(&self, _: &mut PoolOf<Self>, _: Checked<'_, ExtendBatch, ConvIo<'_>>) -> Result<()> {
        match self.0 {}
    }
    fn run_conv_update(&self, _: &mut PoolOf<Self>, _: Checked<'_, DecodeBatch, ConvIo<'_>>) -> Result<()> {
        match self.0 {}
    }
    fn run_conv_verify(&self, _: &mut PoolOf<Self>, _: Checked<'_, VerifyBatch, ConvIo<'_>>) -> Result<()> {
        match self.0 {}
    }
    fn run_extend(&self, _: &mut PoolOf<Self>, _: Checked<'_, ExtendBatch, DeltaIo<'_>>) -> Result<()> {
        match self.0 {}
    }
    fn run_decode(&self, _: &mut PoolOf<Self>, _: Checked<'_, DecodeBatch, DeltaIo<'_>>) -> Result<()> {
        match self.0 {}
    }
    fn run_verify(&self, _: &mut PoolOf<Self>, _: Checked<'_, VerifyBatch, DeltaIo<'_>>) -> Result<()> {
        match self.0 {}
    }
}

/// The CPU K-major dispatcher in this build.
#[cfg(feature = "cpu")]
pub type CpuKMajorDispatcher = deltanet_backend_cpu::CpuKMajor;
/// The CPU K-major dispatcher in this build (compiled out).
#[cfg(not(feature = "cpu"))]
pub type CpuKMajorDispatcher = Disabled<deltanet_core::KMajor>;
/// The CPU V-major dispatcher in this build.
#[cfg(feature = "cpu")]
pub type CpuVMajorDispatcher = deltanet_backend_cpu::CpuVMajor;
/// The CPU V-major dispatcher in this build (compiled out).
#[cfg(not(feature = "cpu"))]
pub type CpuVMajorDispatcher = Disabled<deltanet_core::VMajor>;
/// The CUDA dispatcher in this build.
#[cfg(feature = "cuda")]
pub type CudaDispatcher = deltanet_backend_cuda::CudaDispatcher;
/// The CUDA dispatcher in this build (compiled out).
#[cfg(not(feature = "cuda"))]
pub type CudaDispatcher = Disabled<deltanet_core::VMajor>;
/// The NPU dispatcher in this build.
#[cfg(feature = "npu")]
pub type NpuDispatcher = deltanet_backend_npu::NpuDispatcher;
/// The NPU dispatcher in this build (compiled out).
#[cfg(not(feature = "npu"))]
pub type NpuDispatcher = Disabled<deltanet_core::VMajor>;

/// Every runtime backend, listed once: variant, dispatcher type (the
/// [`Disabled`] stand-in when compiled out) and the name of the backend its
/// pools serve. From this one list the macro writes the [`Backend`] and
/// [`Pool`] enums and every match over their variants (`on_pool!` included,
/// the match the kernel and forward methods below run through), so a new
/// backend is one line here, its dispatcher type alias above and its
/// constructor on [`Backend`] (and its name in [`Backend::from_name`]).
///
/// The leading `$` is passed in so that the macro can define `on_pool!`,
/// whose own metavariables need a `$` the outer macro does not expand.
macro_rules! runtime_backends {
    ($dollar:tt $( $(#[$doc:meta])* $variant:ident($dispatcher:ty) = $name:literal, )*) => {
        /// A backend chosen at run time.
        ///
        /// ```
        /// let b = deltanet::Backend::from_name("cpu").unwrap();
        /// assert_eq!(b.name(), "cpu");
        /// assert!(matches!(deltanet::Backend::from_name("tpu:0"), Err(deltanet::Error::InvalidConfig(_))));
        /// ```
        // A backend is made once and held for the process's life: its size does not
        // matter, and boxing a variant would change the payload engines match on.
        #[allow(clippy::large_enum_variant)]
        #[non_exhaustive]
        pub enum Backend {
            $( $(#[$doc])* $variant($dispatcher), )*
        }

        /// A pool of any backend, carrying its layout. Handing it to another
        /// backend's operation is [`Error::LayoutMismatch`] (or a device mismatch
        /// when the layouts agree but the memory does not). Like [`Backend`] it
        /// may gain variants: match with a wildcard arm.
        #[non_exhaustive]
        pub enum Pool {
            $( #[doc = concat!("For [`Backend::", stringify!($variant), "`].")] $variant(PoolOf<$dispatcher>), )*
        }

        impl Backend {
            /// Runs generic code on the concrete dispatcher.
            pub fn visit<V: BackendVisitor>(&self, v: V) -> V::Output {
                match self {
                    $( Backend::$variant(d) => v.visit(d), )*
                }
            }

            /// The backend's capabilities.
            pub fn capabilities(&self) -> &Capabilities {
                match self {
                    $( Backend::$variant(d) => d.capabilities(), )*
                }
            }

            /// A pool in this backend's layout, memory and a supported dtype.
            pub fn new_pool(&self, config: PoolConfig) -> Result<Pool> {
                Ok(match self {
                    $( Backend::$variant(d) => Pool::$variant(d.new_pool(config)?), )*
                })
            }
        }

        impl Pool {
            /// The pool as the scheduler-facing trait object.
            pub fn as_dyn(&self) -> &dyn MambaStatePool {
                match self {
                    $( Pool::$variant(p) => p, )*
                }
            }

            /// Mutable trait object.
            pub fn as_dyn_mut(&mut self) -> &mut dyn MambaStatePool {
                match self {
                    $( Pool::$variant(p) => p, )*
                }
            }

            /// The concrete pool, for the downcast of [`Pool::typed_mut`].
            fn as_any_mut(&mut self) -> &mut dyn Any {
                match self {
                    $( Pool::$variant(p) => p, )*
                }
            }

            /// The backend that made this pool.
            pub fn backend_name(&self) -> &'static str {
                match self {
                    $( Pool::$variant(_) => $name, )*
                }
            }

            /// The name of the backend whose pools are `PoolOf<D>` (the first
            /// in the list with that pool type).
            fn backend_of<D: KernelDispatcher>() -> &'static str {
                let t = TypeId::of::<PoolOf<D>>();
                $( if t == TypeId::of::<PoolOf<$dispatcher>>() {
                    return $name;
                } )*
                "another backend"
            }
        }

        /// Runs `body` with `d` bound to `backend`'s concrete dispatcher and
        /// `p` to `pool` as that dispatcher's `PoolOf`, or returns the typed
        /// error of [`Pool::typed_mut`].
        macro_rules! on_pool {
            ($dollar backend:expr, $dollar pool:expr, |$dollar d:ident, $dollar p:ident| $dollar body:expr) => {
                match $dollar backend {
                    $( Backend::$variant($dollar d) => {
                        let $dollar p = $dollar pool.typed_mut::<$dispatcher>()?;
                        $dollar body
                    } )*
                }
            };
        }
    };
}

runtime_backends! {$
    /// CPU kernels on a K-major pool.
    CpuKMajor(CpuKMajorDispatcher) = "cpu",
    /// CPU kernels on a V-major pool (the NPU's and CUDA's layout, on any machine).
    CpuVMajor(CpuVMajorDispatcher) = "cpu-vk",
    /// NVIDIA GPU.
    Cuda(CudaDispatcher) = "cuda",
    /// Ascend NPU.
    Npu(NpuDispatcher) = "npu",
}

/// Generic code run on whichever dispatcher a [`Backend`] holds.
pub trait BackendVisitor {
    /// What the visit returns.
    type Output;
    /// Called with the concrete dispatcher.
    fn visit<D: KernelDispatcher>(self, d: &D) -> Self::Output;
}

/// Every backend name this build knows, compiled in or not.
pub const BACKEND_NAMES: [&str; 4] = ["cpu", "cpu-vk", "cuda:0", "npu:0"];

#[cfg(not(all(feature = "cpu", feature = "cuda", feature = "npu")))]
fn not_compiled(backend: &str, feature: &str) -> Error {
    Error::NotCompiled { backend: backend.into(), feature: feature.into() }
}

impl Backend {
    /// CPU, K-major pool, rayon's global thread count.
    pub fn cpu() -> Result<Self> {
        #[cfg(feature = "cpu")]
        return Ok(Backend::CpuKMajor(deltanet_backend_cpu::CpuKMajor::new()));
        #[cfg(not(feature = "cpu"))]
        Err(not_compiled("cpu", "cpu"))
    }

    /// CPU, V-major pool.
    pub fn cpu_vmajor() -> Result<Self> {
        #[cfg(feature = "cpu")]
        return Ok(Backend::CpuVMajor(deltanet_backend_cpu::CpuVMajor::new()));
        #[cfg(not(feature = "cpu"))]
        Err(not_compiled("cpu-vk", "cpu"))
    }

    /// NVIDIA GPU `ordinal`.
    pub fn cuda(ordinal: usize) -> Result<Self> {
        #[cfg(feature = "cuda")]
        return Ok(Backend::Cuda(deltanet_backend_cuda::CudaDispatcher::new(ordinal)?));
        #[cfg(not(feature = "cuda"))]
        {
            let _ = ordinal;
            Err(not_compiled("cuda", "cuda"))
        }
    }

    /// Ascend NPU `device`.
    pub fn npu(device: usize) -> Result<Self> {
        #[cfg(feature = "npu")]
        return Ok(Backend::Npu(deltanet_backend_npu::NpuDispatcher::new(device)?));
        #[cfg(not(feature = "npu"))]
        {
            let _ = device;
            Err(not_compiled("npu", "npu"))
        }
    }

    /// `"cpu"`, `"cpu-vk"`, `"cuda"`/`"cuda:N"`, `"npu"`/`"npu:N"`.
    pub fn from_name(name: &str) -> Result<Self> {
        let (kind, idx) = match name.split_once(':') {
            Some((k, i)) => {
                (k, Some(i.parse::<usize>().map_err(|_| Error::InvalidConfig(format!("bad device index in backend `{name}`")))?))
            }
            None => (name, None),
        };
        // The CPU has no devices to pick: `cpu:7` is a mistake, not the CPU.
        if matches!(kind, "cpu" | "cpu-vk" | "cpu-vmajor") && idx.is_some() {
            return Err(Error::InvalidConfig(format!("backend `{name}`: the CPU backends take no device index (use `{kind}`)")));
        }
        let idx = idx.unwrap_or(0);
        match kind {
            "cpu" => Self::cpu(),
            "cpu-vk" | "cpu-vmajor" => Self::cpu_vmajor(),
            "cuda" => Self::cuda(idx),
            "npu" => Self::npu(idx),
            _ => Err(Error::InvalidConfig(format!("unknown backend `{name}` (known: {})", BACKEND_NAMES.join(", ")))),
        }
    }

    /// The backend's name as its capabilities give it.
    pub fn name(&self) -> &str {
        &self.capabilities().backend
    }

    /// The native recurrent-state layout.
    pub fn layout(&self) -> LayoutKind {
        self.capabilities().native_layout
    }
}

impl Pool {
    /// The pool's recurrent layout.
    pub fn layout(&self) -> LayoutKind {
        self.as_dyn().geometry().layout
    }

    /// The concrete pool of dispatcher `D`, or the typed error for handing it to the wrong one.
    pub fn typed_mut<D: KernelDispatcher>(&mut self) -> Result<&mut PoolOf<D>> {
        let (layout, device, made_by) = (self.layout(), self.as_dyn().device(), self.backend_name());
        self.as_any_mut().downcast_mut::<PoolOf<D>>().ok_or_else(|| {
            if layout != D::Layout::KIND {
                Error::LayoutMismatch { expected: D::Layout::KIND, actual: layout }
            } else {
                // Same layout, another backend (e.g. a CPU v-major pool handed to CUDA): name both.
                Error::Unsupported {
                    backend: Self::backend_of::<D>().into(),
                    reason: format!(
                        "the pool was made by backend `{made_by}` ({} state on {device}); a pool serves only the backend that made it",
                        layout.name()
                    ),
                }
            }
        })
    }
}

impl Backend {
    /// [`KernelDispatcher::gate`].
    pub fn gate(&self, dims: &ModelDims, io: GateIo<'_>) -> Result<()> {
        self.visit(GateVisit(dims, io))
    }
    /// [`KernelDispatcher::conv_extend`] on a runtime pool.
    pub fn conv_extend(&self, pool: &mut Pool, layer: usize, batch: &ExtendBatch, io: ConvIo<'_>) -> Result<()> {
        on_pool!(self, pool, |d, p| d.conv_extend(p, layer, batch, io))
    }
    /// [`KernelDispatcher::conv_update`] on a runtime pool.
    pub fn conv_update(&self, pool: &mut Pool, layer: usize, batch: &DecodeBatch, io: ConvIo<'_>) -> Result<()> {
        on_pool!(self, pool, |d, p| d.conv_update(p, layer, batch, io))
    }
    /// [`KernelDispatcher::conv_verify`] on a runtime pool.
    pub fn conv_verify(&self, pool: &mut Pool, layer: usize, batch: &VerifyBatch, io: ConvIo<'_>) -> Result<()> {
        on_pool!(self, pool, |d, p| d.conv_verify(p, layer, batch, io))
    }
    /// [`KernelDispatcher::extend`] on a runtime pool.
    pub fn extend(&self, pool: &mut Pool, layer: usize, batch: &ExtendBatch, io: DeltaIo<'_>) -> Result<()> {
        on_pool!(self, pool, |d, p| d.extend(p, layer, batch, io))
    }
    /// [`KernelDispatcher::decode`] on a runtime pool.
    pub fn decode(&self, pool: &mut Pool, layer: usize, batch: &DecodeBatch, io: DeltaIo<'_>) -> Result<()> {
        on_pool!(self, pool, |d, p| d.decode(p, layer, batch, io))
    }
    /// [`KernelDispatcher::verify`] on a runtime pool.
    pub fn verify(&self, pool: &mut Pool, layer: usize, batch: &VerifyBatch, io: DeltaIo<'_>) -> Result<()> {
        on_pool!(self, pool, |d, p| d.verify(p, layer, batch, io))
    }
    /// [`KernelDispatcher::commit`] on a runtime pool.
    pub fn commit(&self, pool: &mut Pool, layer: usize, batch: &CommitBatch) -> Result<()> {
        on_pool!(self, pool, |d, p| d.commit(p, layer, batch))
    }
}

/// The layer forward on a runtime pool, for callers that cannot name the
/// dispatcher type (the C ABI). Each call makes its own [`LayerWorkspace`]
/// (device scratch sized to the batch); Rust callers that run many steps
/// should call [`deltanet_core::forward_extend`] and friends on the concrete
/// dispatcher with one reused workspace.
impl Backend {
    /// [`deltanet_core::forward_extend`] on a runtime pool.
    #[allow(clippy::too_many_arguments)]
    pub fn forward_extend(
        &self,
        pool: &mut Pool,
        layer: usize,
        batch: &ExtendBatch,
        weights: &LayerWeights<'_>,
        input: &LayerInput<'_>,
        params: DeltaParams,
        out: TensorMut<'_>,
    ) -> Result<()> {
        on_pool!(self, pool, |d, p| {
            let mut ws = workspace(d);
            deltanet_core::forward_extend(d, p, layer, batch, weights, input, params, &mut ws, out)
        })
    }
    /// [`deltanet_core::forward_decode`] on a runtime pool.
    #[allow(clippy::too_many_arguments)]
    pub fn forward_decode(
        &self,
        pool: &mut Pool,
        layer: usize,
        batch: &DecodeBatch,
        weights: &LayerWeights<'_>,
        input: &LayerInput<'_>,
        params: DeltaParams,
        out: TensorMut<'_>,
    ) -> Result<()> {
        on_pool!(self, pool, |d, p| {
            let mut ws = workspace(d);
            deltanet_core::forward_decode(d, p, layer, batch, weights, input, params, &mut ws, out)
        })
    }
    /// [`deltanet_core::forward_verify`] on a runtime pool.
    #[allow(clippy::too_many_arguments)]
    pub fn forward_verify(
        &self,
        pool: &mut Pool,
        layer: usize,
        batch: &VerifyBatch,
        weights: &LayerWeights<'_>,
        input: &LayerInput<'_>,
        params: DeltaParams,
        out: TensorMut<'_>,
    ) -> Result<()> {
        on_pool!(self, pool, |d, p| {
            let mut ws = workspace(d);
            deltanet_core::forward_verify(d, p, layer, batch, weights, input, params, &mut ws, out)
        })
    }
}

/// A fresh layer workspace on `d`'s memory.
fn workspace<D: KernelDispatcher>(d: &D) -> LayerWorkspace<D::Memory> {
    LayerWorkspace::new(d.memory().clone())
}

struct GateVisit<'d, 'a>(&'d ModelDims, GateIo<'a>);

impl BackendVisitor for GateVisit<'_, '_> {
    type Output = Result<()>;
    fn visit<D: KernelDispatcher>(self, d: &D) -> Result<()> {
        d.gate(self.0, self.1)
    }
}
