//! The operators' symbols, resolved once: the first call of an operator looks
//! its two symbols up (`aclnnXxxGetWorkspaceSize`, `aclnnXxx`) across the
//! operator libraries; every later call reads them from a fixed table without
//! a lock, a lookup or a formatted name.

use crate::result::AclError;
use std::sync::OnceLock;

/// Every operator this backend calls (`OpCall::name`), in a fixed order: the
/// index of its symbols in [`OperatorSymbols`].
pub(super) const OPERATORS: [&str; 12] = [
    "aclnnChunkGatedDeltaRule",
    "aclnnRecurrentGatedDeltaRule",
    "aclnnCausalConv1dFn",
    "aclnnCausalConv1dUpdate",
    "aclnnExp",
    "aclnnNeg",
    "aclnnSigmoid",
    "aclnnMul",
    "aclnnAdd",
    "aclnnSoftplus",
    "aclnnCast",
    "aclnnRmsNorm",
];

/// Which of an operator's two symbols.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Phase {
    /// `aclnnXxxGetWorkspaceSize`.
    WorkspaceSize,
    /// `aclnnXxx`.
    Execute,
}

/// The resolved addresses, per operator and phase.
pub(super) struct OperatorSymbols {
    resolved: [[OnceLock<usize>; 2]; OPERATORS.len()],
}

impl OperatorSymbols {
    pub(super) fn new() -> Self {
        OperatorSymbols { resolved: std::array::from_fn(|_| [OnceLock::new(), OnceLock::new()]) }
    }

    /// The address of `op`'s `phase` symbol, looked up with `lookup` (given the
    /// symbol's name) the first time only. A lookup that fails is not kept, so
    /// the error is reported on every call. An operator missing from
    /// [`OPERATORS`] is looked up every time (a test keeps the list complete).
    pub(super) fn get(
        &self,
        op: &'static str,
        phase: Phase,
        lookup: impl FnOnce(&str) -> Result<usize, AclError>,
    ) -> Result<usize, AclError> {
        let name = || match phase {
            Phase::WorkspaceSize => format!("{op}GetWorkspaceSize"),
            Phase::Execute => op.to_string(),
        };
        let Some(i) = OPERATORS.iter().position(|&o| o == op) else {
            return lookup(&name());
        };
        let cell = &self.resolved[i][phase as usize];
        if let Some(&a) = cell.get() {
            return Ok(a);
        }
        let a = lookup(&name())?;
        Ok(*cell.get_or_init(|| a))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    #[test]
    fn every_operator_the_backend_calls_is_in_the_table() {
        // Every `=> "aclnn..."` arm of `OpCall::name` in ops.rs.
        let src = include_str!("../ops.rs");
        let body = &src[src.find("pub fn name(&self)").unwrap()..src.find("pub fn ffi_type(&self)").unwrap()];
        let named: Vec<&str> = body.split("=> \"").skip(1).map(|s| &s[..s.find('"').unwrap()]).collect();
        assert_eq!(named.len(), OPERATORS.len(), "{named:?}");
        for n in named {
            assert!(OPERATORS.contains(&n), "{n} is not in OPERATORS");
        }
    }

    #[test]
    fn a_symbol_is_looked_up_once_and_a_failure_every_time() {
        let s = OperatorSymbols::new();
        let calls = Cell::new(0);
        let ok = |name: &str| {
            calls.set(calls.get() + 1);
            assert_eq!(name, "aclnnMulGetWorkspaceSize");
            Ok(0x1000)
        };
        assert_eq!(s.get("aclnnMul", Phase::WorkspaceSize, ok).unwrap(), 0x1000);
        assert_eq!(s.get("aclnnMul", Phase::WorkspaceSize, ok).unwrap(), 0x1000);
        assert_eq!(calls.get(), 1);
        let missing = |name: &str| Err(AclError::MissingSymbol { symbol: name.into(), reason: "absent".into() });
        assert!(s.get("aclnnExp", Phase::Execute, missing).is_err());
        assert!(s.get("aclnnExp", Phase::Execute, missing).is_err());
        assert_eq!(
            s.get("aclnnExp", Phase::Execute, |n: &str| if n == "aclnnExp" { Ok(7) } else { Err(missing(n).unwrap_err()) }).unwrap(),
            7
        );
    }
}
