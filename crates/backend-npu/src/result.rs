//! Checked layer: ACL runtime codes (`aclError`) and operator codes
//! (`aclnnStatus`) turned into typed errors that carry the call's name and
//! the status code, and their mapping into [`deltanet_core::Error`].

use crate::sys::bindings::{
    aclError, aclnnStatus, ACLNN_ERR_INNER_TILING_ERROR, ACLNN_ERR_PARAM_INVALID, ACLNN_ERR_PARAM_NULLPTR, ACL_ERROR_BAD_ALLOC,
    ACL_ERROR_RT_MEMORY_ALLOCATION,
};
use crate::sys::LoadError;

/// Backend name used in every error.
pub const BACKEND: &str = "npu";

/// A failed ACL or aclnn call.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum AclError {
    /// An ACL runtime call (`aclrt*`, `aclInit`) returned a non-zero `aclError`.
    #[error("{call} failed with aclError {code}")]
    Runtime {
        /// The native call.
        call: String,
        /// Its status code.
        code: aclError,
    },
    /// An aclnn operator (either phase) returned a non-zero `aclnnStatus`.
    #[error("{op} failed with aclnnStatus {code} ({})", status_name(*.code))]
    Operator {
        /// The native call (`aclnnXxxGetWorkspaceSize` or `aclnnXxx`).
        op: String,
        /// Its status code.
        code: aclnnStatus,
    },
    /// A constructor (`aclCreateTensor`...) returned null.
    #[error("{call} returned null")]
    Null {
        /// The native call.
        call: String,
    },
    /// An operator's argument list does not have the kind of argument its FFI
    /// signature takes at `index` (an internal inconsistency, caught before the call).
    #[error("{op}: argument {index} is not a {expected}")]
    Marshal {
        /// The operator.
        op: String,
        /// Parameter position.
        index: usize,
        /// The kind the signature takes there.
        expected: &'static str,
    },
    /// A symbol this call needs is missing from the loaded libraries (an older CANN).
    #[error("symbol {symbol} not found in the loaded CANN libraries ({reason})")]
    MissingSymbol {
        /// The symbol.
        symbol: String,
        /// The loader's message.
        reason: String,
    },
}

/// Name of a documented aclnn status code.
pub fn status_name(code: aclnnStatus) -> &'static str {
    match code {
        0 => "ACLNN_SUCCESS",
        ACLNN_ERR_PARAM_NULLPTR => "ACLNN_ERR_PARAM_NULLPTR",
        ACLNN_ERR_PARAM_INVALID => "ACLNN_ERR_PARAM_INVALID",
        ACLNN_ERR_INNER_TILING_ERROR => "ACLNN_ERR_INNER_TILING_ERROR",
        161003..=161999 => "ACLNN_ERR_PARAM_*",
        361001..=361999 => "ACLNN_ERR_RUNTIME_*",
        561000..=561999 => "ACLNN_ERR_INNER_*",
        _ => "unknown",
    }
}

impl AclError {
    /// Whether this is an allocation failure (device or host): `ACL_ERROR_BAD_ALLOC`
    /// or `ACL_ERROR_RT_MEMORY_ALLOCATION`, both checked against the headers.
    pub fn is_out_of_memory(&self) -> bool {
        matches!(self, AclError::Runtime { code: ACL_ERROR_BAD_ALLOC | ACL_ERROR_RT_MEMORY_ALLOCATION, .. })
    }
}

/// `Ok` when an ACL runtime call returned `ACL_SUCCESS`.
pub fn check(call: &str, code: aclError) -> Result<(), AclError> {
    if code == 0 {
        Ok(())
    } else {
        Err(AclError::Runtime { call: call.to_string(), code })
    }
}

/// `Ok` when an aclnn call returned `ACLNN_SUCCESS`.
pub fn check_nn(op: &str, code: aclnnStatus) -> Result<(), AclError> {
    if code == 0 {
        Ok(())
    } else {
        Err(AclError::Operator { op: op.to_string(), code })
    }
}

impl From<AclError> for deltanet_core::Error {
    fn from(e: AclError) -> Self {
        let op = match &e {
            AclError::Runtime { call, .. } | AclError::Null { call } => call.clone(),
            AclError::Operator { op, .. } | AclError::Marshal { op, .. } => op.clone(),
            AclError::MissingSymbol { symbol, .. } => symbol.clone(),
        };
        deltanet_core::Error::Device { backend: BACKEND.into(), op, message: e.to_string() }
    }
}

impl From<LoadError> for deltanet_core::Error {
    fn from(e: LoadError) -> Self {
        deltanet_core::Error::Unavailable { backend: BACKEND.into(), reason: e.to_string() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_map_to_typed_errors_with_name_and_code() {
        assert!(check("aclrtMalloc", 0).is_ok());
        let e = check("aclrtMalloc", 207001).unwrap_err();
        assert_eq!(e, AclError::Runtime { call: "aclrtMalloc".into(), code: 207001 });
        let e = check_nn("aclnnChunkGatedDeltaRuleGetWorkspaceSize", 161002).unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("aclnnChunkGatedDeltaRuleGetWorkspaceSize") && msg.contains("161002") && msg.contains("PARAM_INVALID"),
            "{msg}"
        );
        match deltanet_core::Error::from(e) {
            deltanet_core::Error::Device { backend, op, message } => {
                assert_eq!(backend, "npu");
                assert_eq!(op, "aclnnChunkGatedDeltaRuleGetWorkspaceSize");
                assert!(message.contains("161002"));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn exactly_the_headers_allocation_codes_are_out_of_memory() {
        // Values as CANN's headers define them (acl_base_rt.h ACL_ERROR_BAD_ALLOC,
        // error_codes/rt_error_codes.h ACL_ERROR_RT_MEMORY_ALLOCATION); check-bindings.sh
        // proves the bindings' constants equal them.
        for code in [200000, 207001] {
            assert!(check("aclrtMalloc", code).unwrap_err().is_out_of_memory(), "{code}");
        }
        // ACL_ERROR_RT_MEMORY_FREE, ACL_ERROR_REPEAT_INITIALIZE, an aclnn status: not allocation failures.
        for code in [207002, 100002, 161001] {
            assert!(!check("aclrtMalloc", code).unwrap_err().is_out_of_memory(), "{code}");
        }
        assert!(!check_nn("aclnnExp", 207001).unwrap_err().is_out_of_memory(), "an operator status is not a runtime code");
    }
}
