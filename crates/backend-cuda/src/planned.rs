//! [`Planned`]: the dispatcher with one step's plan, as the [`Kernels`] the
//! layer forward and the raw entry points run on. Every operation of the
//! step reads the plan's device tables: no table is built, uploaded or
//! allocated per layer. A call whose batch is not the plan's is refused
//! before anything is queued.

use crate::launcher::Launcher;
use crate::step_plan::{ReplayPaths, StepPlan, StepRef};
use crate::CudaDispatcher;
use deltanet_core::{
    Capabilities, Checked, CommitBatch, ConvIo, DecodeBatch, DeltaIo, ExtendBatch, GateCall, Kernels, PoolOf, Result, VMajor, VerifyBatch,
};

/// A dispatcher bound to one step's [`StepPlan`] (see
/// [`CudaDispatcher::planned`]). It works on the dispatcher's pools: its
/// `PoolOf` is the dispatcher's.
pub struct Planned<'a, L: Launcher> {
    d: &'a CudaDispatcher<L>,
    plan: &'a StepPlan<L>,
}

impl<L: Launcher> std::fmt::Debug for Planned<'_, L> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Planned").field("plan", self.plan).finish_non_exhaustive()
    }
}

impl<L: Launcher> CudaDispatcher<L> {
    /// This dispatcher running the step `plan` was built for: hand it to the
    /// layer forward (`forward_decode(&d.planned(&plan), ...)`) or call its
    /// `KernelDispatcher` methods, for every layer of the step.
    pub fn planned<'a>(&'a self, plan: &'a StepPlan<L>) -> Planned<'a, L> {
        Planned { d: self, plan }
    }
}

impl<L: Launcher> Kernels for Planned<'_, L> {
    type Layout = VMajor;
    type Memory = L::Memory;

    fn capabilities(&self) -> &Capabilities {
        self.d.capabilities()
    }
    fn memory(&self) -> &L::Memory {
        self.d.memory()
    }
    fn run_gate(&self, call: GateCall<'_>) -> Result<()> {
        self.d.run_gate(call)
    }
    fn run_conv_extend(&self, pool: &mut PoolOf<Self>, call: Checked<'_, ExtendBatch, ConvIo<'_>>) -> Result<()> {
        let t = self.plan.addrs_for(StepRef::Extend(call.batch()))?;
        self.d.conv_extend_on(pool, call, &t)
    }
    fn run_conv_update(&self, pool: &mut PoolOf<Self>, call: Checked<'_, DecodeBatch, ConvIo<'_>>) -> Result<()> {
        let t = self.plan.addrs_for(StepRef::Decode(call.batch()))?;
        self.d.conv_update_on(pool, call, &t)
    }
    fn run_conv_verify(&self, pool: &mut PoolOf<Self>, call: Checked<'_, VerifyBatch, ConvIo<'_>>) -> Result<()> {
        let t = self.plan.addrs_for(StepRef::Verify(call.batch()))?;
        self.d.conv_verify_on(pool, call, &t)
    }
    fn run_extend(&self, pool: &mut PoolOf<Self>, call: Checked<'_, ExtendBatch, DeltaIo<'_>>) -> Result<()> {
        let t = self.plan.addrs_for(StepRef::Extend(call.batch()))?;
        self.d.extend_on(pool, call, &t)
    }
    fn run_decode(&self, pool: &mut PoolOf<Self>, call: Checked<'_, DecodeBatch, DeltaIo<'_>>) -> Result<()> {
        let t = self.plan.addrs_for(StepRef::Decode(call.batch()))?;
        self.d.decode_on(pool, call, &t)
    }
    fn run_verify(&self, pool: &mut PoolOf<Self>, call: Checked<'_, VerifyBatch, DeltaIo<'_>>) -> Result<()> {
        let t = self.plan.addrs_for(StepRef::Verify(call.batch()))?;
        self.d.verify_on(pool, call, &t)
    }
    fn run_commit(&self, pool: &mut PoolOf<Self>, call: Checked<'_, CommitBatch, ()>) -> Result<()> {
        let t = self.plan.addrs_for(StepRef::Commit(call.batch()))?;
        self.d.commit_on(pool, call, &t)
    }
    fn run_conv_verify_replay(&self, pool: &mut PoolOf<Self>, call: Checked<'_, VerifyBatch, ConvIo<'_>>) -> Result<()> {
        let t = self.plan.addrs_for(StepRef::Verify(call.batch()))?;
        self.d.conv_verify_replay_on(pool, call, &t)
    }
    fn run_verify_replay(&self, pool: &mut PoolOf<Self>, call: Checked<'_, VerifyBatch, DeltaIo<'_>>) -> Result<()> {
        let t = self.plan.addrs_for(StepRef::Verify(call.batch()))?;
        self.d.verify_replay_on(pool, call, &t)
    }
    fn run_commit_replay(&self, pool: &mut PoolOf<Self>, call: Checked<'_, CommitBatch, ()>) -> Result<()> {
        // the plan holds the paths of the verify it was built after: this layer's must be the same
        let paths = ReplayPaths::of(pool, call.layer(), call.batch());
        let t = self.plan.addrs_for(StepRef::CommitReplay(call.batch(), &paths))?;
        self.d.commit_replay_on(pool, call, &t)
    }
}
