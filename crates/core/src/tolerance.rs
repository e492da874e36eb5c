//! The one table of tolerances. Every comparison of a kernel result with the
//! f64 [`oracle`](crate::oracle) — in the conformance suite, the backends'
//! tests, the C ABI's tests, `deltanet run` and `deltanet replay` — is an
//! error ratio ([`oracle::error_ratio`](crate::oracle::error_ratio),
//! `rms(x - ref) / rms(ref)`) held to one of these, so that a tolerance is
//! changed here, once, with its reason, and no test quietly holds a backend
//! to another bar.
//!
//! | constant | value | comparison | why |
//! |---|---|---|---|
//! | [`F32`] | 2e-6 | delta rule, f32 inputs and state, sequences up to [`LONG_SEQUENCE`] tokens | a few f32 roundings per output; what a correct f32 kernel meets |
//! | [`F32_LONG`] | 1e-5 | the same with a sequence longer than [`LONG_SEQUENCE`] tokens | f32 rounding of the long recurrence itself, not the kernel, dominates |
//! | [`F16`] | 2e-3 | f16 inputs and outputs | f16's 11-bit mantissa on every input and output |
//! | [`BF16`] | 5e-3 | bf16 inputs and outputs, or a bf16 recurrent state | bf16's 8-bit mantissa, re-rounded into the state at every step |
//! | [`CROSS_FACTOR`] | 2 | two kernel results compared with each other (split vs one extend, one layout vs the other) | each side is held to its tolerance against the oracle, so they may differ by the sum |
//! | [`F32_ELEMENTWISE`] | 1e-6 | the short conv and the gate, f32 | one f32 rounding per output, no recurrence |
//! | [`REFERENCE`] | 1e-5 | fixed external references: fla's and transformers' outputs in the golden and replay files; whole layers through the C ABI | both sides round in f32, in their own order, over whole sequences |
//! | [`SERVE_F32`] | 1e-5 | `deltanet run`, f32 state: every layer of a model, prefill, decode, verify and commit | hundreds of tokens per request, as [`F32_LONG`] |
//! | [`SERVE_BF16_STATE`] | 1e-2 | `deltanet run`, bf16 state | bf16 state re-rounded after every chunk, step and commit of a whole serving run |
//! | [`NPU_DEVICE`] | 3e-2 | the aclnn operators on an Ascend device, bf16 inputs and state | the vendor operators' bf16 accumulation order on top of [`BF16`]'s rounding |
//!
//! Bitwise checks (batch invariance, determinism, layout round trips, strides)
//! have no tolerance: they count differing elements.

use crate::dtype::DType;

/// Delta rule, f32 inputs and state, every sequence at most [`LONG_SEQUENCE`] tokens.
pub const F32: f64 = 2e-6;

/// Delta rule, f32, a sequence longer than [`LONG_SEQUENCE`] tokens: f32
/// rounding of the long recurrence itself, not the kernel, dominates.
pub const F32_LONG: f64 = 1e-5;

/// Sequence length (tokens) above which [`F32_LONG`] applies.
pub const LONG_SEQUENCE: usize = 256;

/// f16 inputs and outputs.
pub const F16: f64 = 2e-3;

/// bf16 inputs and outputs, or a bf16 recurrent state.
pub const BF16: f64 = 5e-3;

/// Two kernel results compared with each other, each held to a tolerance
/// against the oracle, are held to this multiple of it.
pub const CROSS_FACTOR: f64 = 2.0;

/// The short conv and the gate in f32: one rounding per output.
pub const F32_ELEMENTWISE: f64 = 1e-6;

/// Fixed external references (fla's and transformers' outputs in the golden
/// and replay files) and whole layers through the C ABI.
pub const REFERENCE: f64 = 1e-5;

/// `deltanet run` with an f32 state: every phase of a serving run.
pub const SERVE_F32: f64 = 1e-5;

/// `deltanet run` with a bf16 state.
pub const SERVE_BF16_STATE: f64 = 1e-2;

/// The aclnn operators on an Ascend device, bf16 inputs and state.
pub const NPU_DEVICE: f64 = 3e-2;

/// The delta-rule tolerance for inputs in `input`, state in `state` and a
/// longest sequence of `longest` tokens: [`BF16`], [`F16`], [`F32_LONG`] or [`F32`].
pub fn delta_rule(input: DType, state: DType, longest: usize) -> f64 {
    if input == DType::BF16 || state == DType::BF16 {
        BF16
    } else if input == DType::F16 {
        F16
    } else if longest > LONG_SEQUENCE {
        F32_LONG
    } else {
        F32
    }
}

/// `deltanet run`'s tolerance for a serving run with state dtype `state`.
pub fn serve(state: DType) -> f64 {
    if state == DType::BF16 {
        SERVE_BF16_STATE
    } else {
        SERVE_F32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delta_rule_picks_the_row_of_the_table() {
        assert_eq!(delta_rule(DType::F32, DType::F32, LONG_SEQUENCE), F32);
        assert_eq!(delta_rule(DType::F32, DType::F32, LONG_SEQUENCE + 1), F32_LONG);
        assert_eq!(delta_rule(DType::F16, DType::F32, 1), F16);
        assert_eq!(delta_rule(DType::BF16, DType::F32, 1), BF16);
        assert_eq!(delta_rule(DType::F16, DType::BF16, 1), BF16);
        assert_eq!(serve(DType::F32), SERVE_F32);
        assert_eq!(serve(DType::BF16), SERVE_BF16_STATE);
    }
}
