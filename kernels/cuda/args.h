// deltanet CUDA kernels: the argument block of each kernel.
//
// Every kernel takes one of these structs by value. The host side mirrors each
// one field for field (crates/backend-cuda/src/args.rs, #[repr(C)]); the
// layouts are checked against each other: NVRTC compiles static_asserts the
// host generates from its own offsets, and a test compares the emulation's
// sizeof/offsetof table (emu/layout.cpp) with them.
//
// Conventions: device addresses are pointers; every integer (counts,
// dimensions, element strides, dtype codes DT_* of common.cu, modes, flags) is
// a long long (with int fields dnk_conv took 24 more registers on sm_90); no
// struct has padding (the host asserts it), so a lone float is followed by a
// `pad` float, always zero.
#ifndef DELTANET_ARGS_H
#define DELTANET_ARGS_H

// dnk_gate: g = -exp(A_log) * softplus(a + dt_bias), beta = sigmoid(b), per (token, value head).
struct GateArgs {
    const void* a;        // [T, HV], a_dtype
    const void* b;        // [T, HV], b_dtype
    const float* a_log;   // [HV]
    const float* dt_bias; // [HV]
    float* g;             // [T, HV] out
    float* beta;          // [T, HV] out
    long long tokens;     // T
    long long hv;         // HV
    long long a_row;      // row (token) strides, in elements
    long long b_row;
    long long g_row;
    long long beta_row;
    long long a_dtype;
    long long b_dtype;
};

// dnk_conv: short causal depthwise convolution + SiLU over [q | k | v] channels.
struct ConvArgs {
    const void* x;              // [T, C], x_dtype
    const float* weight;        // [C, W]
    const float* bias;          // [C], or null
    void* out;                  // [T, C], out_dtype
    void* state;                // conv state of this layer [rows][C][W-1], state_dtype
    void* windows;              // conv windows of this layer [rows][D][C][W-1] (verify), replay inputs [rows][D][C], or null
    const long long* seqs;      // 6 x i64 per sequence: first token, length, slot, has_initial_state, first snapshot, end snapshot;
                                // replay commit: 3 x i64 per commit: slot, path length, snapshot slot or -1
    const long long* snapshots; // 2 x i64 per snapshot: position, slot (extend), or null
    const long long* parents;   // [N * D] parent step of each draft, -1 for the slot (verify), or null;
                                // replay commit: [commits * D] the accepted path's steps, root first
    long long channels;         // C
    long long width;            // W (<= DN_MAX_CONV_W)
    long long x_row;            // row strides, in elements
    long long out_row;
    long long draft;            // D (verify)
    long long x_dtype;
    long long out_dtype;
    long long state_dtype;
    long long mode;                   // 0 extend, 1 update, 2 verify, 3 replay verify, 4 replay commit
};

// The tensors, head dimensions and parameters both delta-rule kernels take.
struct DeltaArgs {
    const void* q;       // [T, HK, K]
    const void* k;       // [T, HK, K]
    const void* v;       // [T, HV, V]
    const float* g;      // [T, HV]
    const void* beta;    // [T, HV]
    void* o;             // [T, HV, V] out
    long long q_token;   // element strides: per token, per head
    long long q_head;
    long long k_token;
    long long k_head;
    long long v_token;
    long long v_head;
    long long g_token;
    long long beta_token;
    long long o_token;
    long long o_head;
    long long hk;        // key heads
    long long hv;        // value heads
    long long dk;        // K (<= DN_KMAX)
    long long dv;        // V
    long long q_dtype;
    long long k_dtype;
    long long v_dtype;
    long long beta_dtype;
    long long o_dtype;
    long long head_mapping;    // value head -> key head: 0 grouped, 1 tiled
    long long l2norm;          // L2-normalise q and k
    float scale;         // output scale
    float pad;
};

// dnk_recurrent: fused one-token recurrence, decode (in place) or verify (into the scratch).
struct RecurrentArgs {
    DeltaArgs io;
    void* state;             // recurrent state of this layer [rows][HV][V][K], state_dtype
    void* scratch;           // scratch of this layer [rows][D][HV][V][K] (verify), or null
    const long long* slots;  // slot per request
    const long long* parents; // [N * D] parent step of each draft, -1 for the slot (verify), or null
    long long draft;         // D (1 for decode)
    long long state_dtype;
    long long mode;                // 0 decode, 1 verify
};

// dnk_replay: speculative mode replay's delta rule, verify (no state written, k, v, g, beta
// recorded per draft) or commit (the recorded path applied to the slot's state in place).
struct ReplayArgs {
    DeltaArgs io;               // verify: the drafts' tensors; commit: only the dimensions
    void* state;                // recurrent state of this layer [rows][HV][V][K], state_dtype
    float* records;             // replay records of this layer [rows][D][HV][K + V + 2]: k, v, g, beta
    const long long* slots;     // verify: slot per request
    const long long* parents;   // verify: [N * D] parent step of each draft, -1 for the slot
    const long long* commits;   // commit: 3 x i64 per commit: slot, path length, snapshot slot or -1
    const long long* paths;     // commit: [commits * D] the accepted path's steps, root first
    long long draft;            // D
    long long state_dtype;
    long long mode;             // 0 verify, 1 commit
};

// dnk_extend: chunked delta rule over packed sequences, with snapshots at chunk ends.
struct ExtendArgs {
    DeltaArgs io;
    void* state;                   // recurrent state of this layer [rows][HV][V][K], state_dtype
    const long long* seqs;         // 6 x i64 per sequence: first token, length, slot, has_initial_state, first chunk, end chunk
    const long long* chunks;       // 4 x i64 per chunk: first token, length, first snapshot, end snapshot
    const long long* snapshot_slots; // slot of each snapshot
    float* workspace;              // per block DN_BV*K + 64*(3K + 2*DN_BV) floats
    long long seqs_count;          // N
    long long state_dtype;
};

// dnk_extend_tc: the chunked delta rule on tensor cores, in two launches over the same tables:
// phase 0 computes each chunk's products (all chunks in parallel), phase 1 runs the state
// recurrence through the chunks of each sequence and writes outputs, snapshots and states.
struct ExtendTcArgs {
    DeltaArgs io;
    void* state;                   // recurrent state of this layer [rows][HV][V][K], state_dtype
    const long long* seqs;         // this launch's sequences, 6 x i64 each as for dnk_extend
    const long long* chunks;       // 4 x i64 per chunk as for dnk_extend (indices are the whole call's)
    const long long* snapshot_slots; // slot of each snapshot
    float* workspace;              // per (chunk of this launch, value head): DN_TC_CHUNK_FLOATS(K, V) floats
    long long seqs_count;          // sequences of this launch
    long long chunk_begin;         // first chunk of this launch (the workspace's chunk 0)
    long long chunk_count;         // chunks of this launch
    long long state_dtype;
    long long phase;               // 0 per-chunk products, 1 recurrence and outputs
    long long precision;           // operands: 0 bf16 (mma m16n8k16), 1 tf32 (mma m16n8k8)
};

// dnk_cast: element-wise dtype conversion.
struct CastArgs {
    const void* src;
    void* dst;
    long long count;
    long long src_dtype;
    long long dst_dtype;
};

// dnk_commit: copies accepted scratch steps and conv windows into slots (16-bit units).
struct CommitArgs {
    const unsigned short* scratch; // scratch of this layer [rows][D][state units]
    unsigned short* state;         // recurrent state of this layer [rows][state units]
    const unsigned short* windows; // conv windows of this layer [rows][D][conv units]
    unsigned short* conv;          // conv state of this layer [rows][conv units]
    const long long* targets;      // 3 x i64 per target: slot, accepted step, destination slot
    long long state_units;
    long long conv_units;
    long long draft;               // D
};

#endif
