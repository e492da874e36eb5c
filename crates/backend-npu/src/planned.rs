//! [`Planned`]: the dispatcher with one step's plan, as the [`Kernels`] the
//! layer forward and the raw entry points run on. Every operation of the
//! step reads the plan's device tables: no table is built, uploaded or
//! allocated per layer. A call whose batch is not the plan's is refused
//! before anything is queued.

use crate::memory::NpuMemory;
use crate::step_plan::{StepPlan, StepRef};
use crate::NpuDispatcher;
use deltanet_core::{
    Capabilities, Checked, CommitBatch, ConvIo, DecodeBatch, DeltaIo, ExtendBatch, GateCall, Kernels, PoolOf, Result, VMajor, VerifyBatch,
};

/// A dispatcher bound to one step's [`StepPlan`] (see
/// [`NpuDispatcher::planned`]). It works on the dispatcher's pools.
pub struct Planned<'a> {
    d: &'a NpuDispatcher,
    plan: &'a StepPlan,
}

impl std::fmt::Debug for Planned<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Planned").field("plan", self.plan).finish_non_exhaustive()
    }
}

impl NpuDispatcher {
    /// This dispatcher running the step `plan` was built for: hand it to the
    /// layer forward (`forward_decode(&d.planned(&plan), ...)`) or call its
    /// `KernelDispatcher` methods, for every layer of the step.
    pub fn planned<'a>(&'a self, plan: &'a StepPlan) -> Planned<'a> {
        Planned { d: self, plan }
    }
}

impl Kernels for Planned<'_> {
    type Layout = VMajor;
    type Memory = NpuMemory;

    fn capabilities(&self) -> &Capabilities {
        self.d.capabilities()
    }
    fn memory(&self) -> &NpuMemory {
        self.d.memory()
    }
    fn run_gate(&self, call: GateCall<'_>) -> Result<()> {
        self.d.gate_on(call)
    }
    fn run_conv_extend(&self, pool: &mut PoolOf<Self>, call: Checked<'_, ExtendBatch, ConvIo<'_>>) -> Result<()> {
        let t = self.plan.tables_for(StepRef::Extend(call.batch()))?;
        self.d.conv_extend_on(pool, call, t)
    }
    fn run_conv_update(&self, pool: &mut PoolOf<Self>, call: Checked<'_, DecodeBatch, ConvIo<'_>>) -> Result<()> {
        let t = self.plan.tables_for(StepRef::Decode(call.batch()))?;
        self.d.conv_update_on(pool, call, t)
    }
    fn run_conv_verify(&self, pool: &mut PoolOf<Self>, call: Checked<'_, VerifyBatch, ConvIo<'_>>) -> Result<()> {
        let t = self.plan.tables_for(StepRef::Verify(call.batch()))?;
        self.d.conv_verify_on(pool, call, t)
    }
    fn run_extend(&self, pool: &mut PoolOf<Self>, call: Checked<'_, ExtendBatch, DeltaIo<'_>>) -> Result<()> {
        let t = self.plan.tables_for(StepRef::Extend(call.batch()))?;
        self.d.extend_on(pool, call, t)
    }
    fn run_decode(&self, pool: &mut PoolOf<Self>, call: Checked<'_, DecodeBatch, DeltaIo<'_>>) -> Result<()> {
        let t = self.plan.tables_for(StepRef::Decode(call.batch()))?;
        self.d.decode_on(pool, call, t)
    }
    fn run_verify(&self, pool: &mut PoolOf<Self>, call: Checked<'_, VerifyBatch, DeltaIo<'_>>) -> Result<()> {
        let t = self.plan.tables_for(StepRef::Verify(call.batch()))?;
        self.d.verify_on(pool, call, t)
    }
    fn run_commit(&self, pool: &mut PoolOf<Self>, call: Checked<'_, CommitBatch, ()>) -> Result<()> {
        let t = self.plan.tables_for(StepRef::Commit(call.batch()))?;
        self.d.commit_on(pool, call, t)
    }
}
