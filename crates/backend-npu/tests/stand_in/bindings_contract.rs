//! Every operator's argument list against its FFI parameter list in
//! `src/sys/bindings.rs`: names, order, kinds and written tensors.

use deltanet_backend_npu::api::{AclDType, OpCall, UnaryOp};

/// One call of every operator, with distinct dummy handles (never dereferenced).
fn every_op_call() -> Vec<OpCall> {
    use deltanet_backend_npu::api::{ScalarHandle, TensorHandle as T};
    let s = ScalarHandle(100);
    vec![
        OpCall::ChunkGatedDeltaRule {
            query: T(1),
            key: T(2),
            value: T(3),
            beta: T(4),
            initial_state: T(5),
            actual_seq_lengths: T(6),
            g: Some(T(7)),
            scale: 0.125,
            out: T(8),
            final_state: T(9),
        },
        OpCall::RecurrentGatedDeltaRule {
            query: T(1),
            key: T(2),
            value: T(3),
            beta: T(4),
            state: T(5),
            actual_seq_lengths: T(6),
            ssm_state_indices: T(7),
            g: Some(T(8)),
            gk: None,
            num_accepted_tokens: T(9),
            scale: 0.125,
            out: T(10),
        },
        OpCall::CausalConv1dFn {
            x: T(1),
            weight: T(2),
            conv_states: T(3),
            bias: None,
            query_start_loc: Some(T(4)),
            cache_indices: Some(T(5)),
            initial_state_mode: Some(T(6)),
            activation: c"silu",
            null_block_id: -1,
            block_size_to_align: 0,
            y: T(7),
        },
        OpCall::CausalConv1dUpdate {
            x: T(1),
            weight: T(2),
            conv_states: T(3),
            bias: None,
            query_start_loc: Some(T(4)),
            cache_indices: Some(T(5)),
            num_accepted_tokens: Some(T(6)),
            activation: c"silu",
            null_block_id: -1,
            max_query_len: -1,
            y: T(7),
        },
        OpCall::Unary { op: UnaryOp::Exp, input: T(1), out: T(2) },
        OpCall::Mul { a: T(1), b: T(2), out: T(3) },
        OpCall::Add { a: T(1), b: T(2), alpha: s, out: T(3) },
        OpCall::Softplus { input: T(1), beta: s, threshold: ScalarHandle(101), out: T(2) },
        OpCall::Cast { input: T(1), dtype: AclDType::F32, out: T(2) },
        OpCall::RmsNorm { x: T(1), gamma: T(2), epsilon: 1e-6, y: T(3), rstd: T(4) },
    ]
}

#[test]
fn every_operator_argument_list_matches_its_binding() {
    use deltanet_backend_npu::testing::check_args;
    for call in every_op_call() {
        let args = call.args();
        let written = check_args(call.ffi_type(), &args).unwrap_or_else(|e| panic!("{e}"));
        let written: Vec<&str> = args.iter().zip(&written).filter(|(_, w)| **w).map(|((n, _), _)| *n).collect();
        // What each operator writes, per its public header (ops-transformer / CANN API reference).
        let expected: &[&str] = match call {
            OpCall::ChunkGatedDeltaRule { .. } => &["out", "finalState"],
            OpCall::RecurrentGatedDeltaRule { .. } => &["stateRef", "out"],
            OpCall::CausalConv1dFn { .. } | OpCall::CausalConv1dUpdate { .. } => &["convStatesRef", "y"],
            // Its header declares both outputs `const aclTensor *`.
            OpCall::RmsNorm { .. } => &[],
            _ => &["out"],
        };
        assert_eq!(written, expected, "{}", call.name());
    }
}

#[test]
fn argument_lists_that_disagree_with_the_bindings_are_refused() {
    use deltanet_backend_npu::api::Arg;
    use deltanet_backend_npu::testing::check_args;
    let call = &every_op_call()[1];
    let ty = call.ffi_type();
    let good = call.args();
    assert!(check_args(ty, &good).is_ok());
    let mut renamed = good.clone();
    renamed[4].0 = "state";
    assert!(check_args(ty, &renamed).unwrap_err().contains("`stateRef`"));
    let mut swapped = good.clone();
    swapped.swap(0, 1);
    assert!(check_args(ty, &swapped).unwrap_err().contains("argument 0 is `key`"));
    let mut wrong_kind = good.clone();
    wrong_kind[10].1 = Arg::I64(1);
    assert!(check_args(ty, &wrong_kind).unwrap_err().contains("`f32`"));
    let short = &good[..good.len() - 1];
    assert!(check_args(ty, short).unwrap_err().contains("11 arguments, the bindings take 12"));
}
