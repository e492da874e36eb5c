// The layout of every kernel argument struct (../args.h) as the host C++
// compiler lays it out: sizeof, and offsetof of each field in declaration
// order. A test of the Rust crate compares it with its #[repr(C)] mirrors
// (crates/backend-cuda/src/args.rs), field by field.
#include <cstddef>

#include "../args.h"

struct FieldLayout {
    const char* type;  // struct name
    const char* field; // field name
    size_t offset;     // offsetof(type, field)
    size_t type_size;  // sizeof(type)
};

namespace {
#define F(T, f) {#T, #f, offsetof(T, f), sizeof(T)}
const FieldLayout FIELDS[] = {
    F(GateArgs, a), F(GateArgs, b), F(GateArgs, a_log), F(GateArgs, dt_bias), F(GateArgs, g), F(GateArgs, beta),
    F(GateArgs, tokens), F(GateArgs, hv), F(GateArgs, a_row), F(GateArgs, b_row), F(GateArgs, g_row), F(GateArgs, beta_row),
    F(GateArgs, a_dtype), F(GateArgs, b_dtype),

    F(ConvArgs, x), F(ConvArgs, weight), F(ConvArgs, bias), F(ConvArgs, out), F(ConvArgs, state), F(ConvArgs, windows),
    F(ConvArgs, seqs), F(ConvArgs, snapshots), F(ConvArgs, parents), F(ConvArgs, channels), F(ConvArgs, width),
    F(ConvArgs, x_row), F(ConvArgs, out_row), F(ConvArgs, draft), F(ConvArgs, x_dtype), F(ConvArgs, out_dtype),
    F(ConvArgs, state_dtype), F(ConvArgs, mode),

    F(DeltaArgs, q), F(DeltaArgs, k), F(DeltaArgs, v), F(DeltaArgs, g), F(DeltaArgs, beta), F(DeltaArgs, o),
    F(DeltaArgs, q_token), F(DeltaArgs, q_head), F(DeltaArgs, k_token), F(DeltaArgs, k_head), F(DeltaArgs, v_token),
    F(DeltaArgs, v_head), F(DeltaArgs, g_token), F(DeltaArgs, beta_token), F(DeltaArgs, o_token), F(DeltaArgs, o_head),
    F(DeltaArgs, hk), F(DeltaArgs, hv), F(DeltaArgs, dk), F(DeltaArgs, dv), F(DeltaArgs, q_dtype), F(DeltaArgs, k_dtype),
    F(DeltaArgs, v_dtype), F(DeltaArgs, beta_dtype), F(DeltaArgs, o_dtype), F(DeltaArgs, head_mapping), F(DeltaArgs, l2norm),
    F(DeltaArgs, scale), F(DeltaArgs, pad),

    F(RecurrentArgs, io), F(RecurrentArgs, state), F(RecurrentArgs, scratch), F(RecurrentArgs, slots),
    F(RecurrentArgs, parents), F(RecurrentArgs, draft), F(RecurrentArgs, state_dtype), F(RecurrentArgs, mode),

    F(ReplayArgs, io), F(ReplayArgs, state), F(ReplayArgs, records), F(ReplayArgs, slots), F(ReplayArgs, parents),
    F(ReplayArgs, commits), F(ReplayArgs, paths), F(ReplayArgs, draft), F(ReplayArgs, state_dtype), F(ReplayArgs, mode),

    F(ExtendArgs, io), F(ExtendArgs, state), F(ExtendArgs, seqs), F(ExtendArgs, chunks), F(ExtendArgs, snapshot_slots),
    F(ExtendArgs, workspace), F(ExtendArgs, seqs_count), F(ExtendArgs, state_dtype),

    F(ExtendTcArgs, io), F(ExtendTcArgs, state), F(ExtendTcArgs, seqs), F(ExtendTcArgs, chunks),
    F(ExtendTcArgs, snapshot_slots), F(ExtendTcArgs, workspace), F(ExtendTcArgs, seqs_count), F(ExtendTcArgs, chunk_begin),
    F(ExtendTcArgs, chunk_count), F(ExtendTcArgs, state_dtype), F(ExtendTcArgs, phase), F(ExtendTcArgs, precision),

    F(CastArgs, src), F(CastArgs, dst), F(CastArgs, count), F(CastArgs, src_dtype), F(CastArgs, dst_dtype),

    F(CommitArgs, scratch), F(CommitArgs, state), F(CommitArgs, windows), F(CommitArgs, conv), F(CommitArgs, targets),
    F(CommitArgs, state_units), F(CommitArgs, conv_units), F(CommitArgs, draft),
};
#undef F
} // namespace

// The table above: its address in *fields, its length returned.
extern "C" size_t deltanet_emu_args_layout(const FieldLayout** fields) {
    *fields = FIELDS;
    return sizeof(FIELDS) / sizeof(FIELDS[0]);
}
