/* The C client of tests/c_client.rs: a serving-engine scenario through the C
 * ABI only. Reads each call's inputs (f32 arrays the Rust test generated)
 * from argv[1], writes every output and exported state to argv[2] for the
 * Rust test to compare with the f64 oracle, and checks bad-input calls
 * itself: each returns its documented code, sets a message, and leaves the
 * pool (digest) and the output tensor unchanged. Exit status 0 = all passed. */
#include "deltanet.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define HK 1
#define HV 2
#define KD 8
#define VD 6
#define DRAFT 3

#include "check.h"

static int refused = 0;

static uint64_t digest(const dn_pool *p) {
  uint64_t d = 0;
  CHECK(dn_pool_digest(p, &d));
  return d;
}

/* A bad call on pool `p`: the documented code, a message, no state change. */
#define EXPECT_REFUSED(p, call, code)                                                        \
  do {                                                                                       \
    uint64_t before_ = digest(p);                                                            \
    dn_status s_ = (call);                                                                   \
    if (s_ != (code)) DIE("%s -> %d (%s), expected %s", #call, (int)s_, dn_last_error_message(), #code); \
    if (dn_last_error_message()[0] == '\0') DIE("%s: no error message", #call);             \
    if (digest(p) != before_) DIE("%s changed the pool", #call);                            \
    refused++;                                                                               \
  } while (0)

typedef struct {
  int64_t shape[4];
  int64_t strides[4];
  DLTensor t;
} Tensor;

static void mk(Tensor *x, void *data, int ndim, int64_t d0, int64_t d1, int64_t d2) {
  memset(x, 0, sizeof *x);
  x->shape[0] = d0;
  x->shape[1] = d1;
  x->shape[2] = d2;
  x->t.data = data;
  x->t.device.device_type = 1; /* kDLCPU */
  x->t.device.device_id = 0;
  x->t.ndim = ndim;
  x->t.dtype.code = 2; /* kDLFloat */
  x->t.dtype.bits = 32;
  x->t.dtype.lanes = 1;
  x->t.shape = x->shape;
  x->t.strides = NULL; /* row-major */
  x->t.byte_offset = 0;
}

/* One delta-rule call: q, k [T, HK, K], v [T, HV, V], g, beta [T, HV], o [T, HV, V]. */
typedef struct {
  size_t tokens;
  float *q, *k, *v, *g, *beta, *o;
  Tensor tq, tk, tv, tg, tb, to;
} Step;

static float *read_array(FILE *f, size_t n) {
  uint64_t len = 0;
  if (fread(&len, sizeof len, 1, f) != 1 || len != n) DIE("input record of %llu floats, expected %zu", (unsigned long long)len, n);
  float *p = malloc(n * sizeof(float));
  if (!p || fread(p, sizeof(float), n, f) != n) DIE("short input");
  return p;
}

static void write_array(FILE *f, const void *p, size_t bytes) {
  uint64_t len = bytes / sizeof(float);
  if (fwrite(&len, sizeof len, 1, f) != 1 || fwrite(p, 1, bytes, f) != bytes) DIE("short write");
}

static void step_tensors(Step *s) {
  int64_t t = (int64_t)s->tokens;
  mk(&s->tq, s->q, 3, t, HK, KD);
  mk(&s->tk, s->k, 3, t, HK, KD);
  mk(&s->tv, s->v, 3, t, HV, VD);
  mk(&s->tg, s->g, 2, t, HV, 0);
  mk(&s->tb, s->beta, 2, t, HV, 0);
  mk(&s->to, s->o, 3, t, HV, VD);
}

static void load(FILE *f, size_t tokens, Step *s) {
  s->tokens = tokens;
  s->q = read_array(f, tokens * HK * KD);
  s->k = read_array(f, tokens * HK * KD);
  s->v = read_array(f, tokens * HV * VD);
  s->g = read_array(f, tokens * HV);
  s->beta = read_array(f, tokens * HV);
  s->o = calloc(tokens * HV * VD, sizeof(float));
  step_tensors(s);
}

static void unload(Step *s) {
  free(s->q);
  free(s->k);
  free(s->v);
  free(s->g);
  free(s->beta);
  free(s->o);
}

typedef dn_status (*delta_fn)(const dn_backend *, const dn_pool *, size_t, const dn_batch *, const DLTensor *, const DLTensor *,
                              const DLTensor *, const DLTensor *, const DLTensor *, const DLTensor *, const dn_delta_params *);

static dn_status run(delta_fn f, const dn_backend *b, const dn_pool *p, const dn_batch *batch, Step *s) {
  return f(b, p, 0, batch, &s->tq.t, &s->tk.t, &s->tv.t, &s->tg.t, &s->tb.t, &s->to.t, NULL);
}

static void export_state(const dn_pool *p, uint64_t slot, const dn_pool_info *info, void **state, void **conv) {
  *state = malloc(info->export_state_bytes);
  *conv = malloc(info->export_conv_bytes);
  CHECK(dn_pool_export(p, slot, *state, info->export_state_bytes, *conv, info->export_conv_bytes));
}

/* Bad inputs while request A has a verify pending in the scratch: every
 * call is refused and changes nothing, so the commit that follows (checked
 * against the oracle by the Rust side) proves the scratch was not touched. */
static void bad_inputs(dn_backend *kb, dn_backend *vb, dn_pool *kp, dn_pool *vp, uint64_t A, uint64_t va) {
  uint64_t tmp = 0, many[16];
  CHECK(dn_pool_alloc(kp, 1, &tmp));
  CHECK(dn_pool_free(kp, &tmp, 1));
  EXPECT_REFUSED(kp, dn_pool_free(kp, &tmp, 1), DN_ERR_DOUBLE_FREE);
  EXPECT_REFUSED(kp, dn_pool_alloc(kp, 10, many), DN_ERR_POOL_EXHAUSTED);
  EXPECT_REFUSED(kp, dn_pool_copy(kp, A, A), DN_ERR_DUPLICATE_SLOT);
  EXPECT_REFUSED(kp, dn_pool_zero(kp, &tmp, 1), DN_ERR_SLOT_NOT_ALLOCATED);

  dn_batch *b = (dn_batch *)&tmp; /* must be reset to NULL by a refused call */
  int64_t bad_cu[3] = {0, 5, 5};
  uint64_t two[2] = {A, A};
  uint8_t flags[2] = {1, 1};
  EXPECT_REFUSED(kp, dn_batch_extend(kp, bad_cu, 2, two, flags, NULL, 0, &b), DN_ERR_BAD_CU_SEQLENS);
  if (b != NULL) DIE("refused dn_batch_extend left a handle");
  int64_t cu1[2] = {0, 4};
  uint64_t pad = 0;
  EXPECT_REFUSED(kp, dn_batch_extend(kp, cu1, 1, &pad, flags, NULL, 0, &b), DN_ERR_PADDING_SLOT);
  uint8_t two_flag = 2;
  EXPECT_REFUSED(kp, dn_batch_extend(kp, cu1, 1, &A, &two_flag, NULL, 0, &b), DN_ERR_INVALID_ARGUMENT);
  int64_t cu2[3] = {0, 2, 4};
  EXPECT_REFUSED(kp, dn_batch_extend(kp, cu2, 2, two, flags, NULL, 0, &b), DN_ERR_DUPLICATE_SLOT);
  dn_snapshot snap = {0, 9, A}; /* position beyond the 4-token sequence */
  EXPECT_REFUSED(kp, dn_batch_extend(kp, cu1, 1, &A, flags, &snap, 1, &b), DN_ERR_BAD_SNAPSHOT);
  int64_t bad_parents[DRAFT] = {-1, 1, 0};
  EXPECT_REFUSED(kp, dn_batch_verify(kp, &A, 1, bad_parents, &b), DN_ERR_BAD_PARENT);
  EXPECT_REFUSED(kp, dn_batch_verify(kp, &A, 0, NULL, &b), DN_ERR_EMPTY_BATCH);
  int64_t acc = DRAFT;
  EXPECT_REFUSED(kp, dn_batch_commit(kp, &A, 1, &acc, NULL, &b), DN_ERR_ACCEPTED_OUT_OF_RANGE);
  acc = -2;
  EXPECT_REFUSED(kp, dn_batch_commit(kp, &A, 1, &acc, NULL, &b), DN_ERR_INVALID_ARGUMENT);
  acc = DN_ACCEPTED_NONE;
  uint64_t snap_of_skipped = va;
  EXPECT_REFUSED(kp, dn_batch_commit(kp, &A, 1, &acc, &snap_of_skipped, &b), DN_ERR_SNAPSHOT_OF_SKIPPED);
  EXPECT_REFUSED(kp, dn_pool_alloc(kp, 0, &snap_of_skipped), DN_ERR_EMPTY_BATCH);

  /* Tensor checks on a valid decode batch of A. */
  dn_batch *dec = NULL, *foreign = NULL;
  CHECK(dn_batch_decode(kp, &A, 1, &dec));
  CHECK(dn_batch_decode(vp, &va, 1, &foreign));
  static float q[2 * HK * KD], k[HK * KD], v[HV * VD], g[HV], beta[HV], o[HV * VD];
  for (size_t i = 0; i < sizeof q / sizeof q[0]; i++) q[i] = 0.25f;
  for (size_t i = 0; i < HK * KD; i++) k[i] = -0.5f;
  for (size_t i = 0; i < HV * VD; i++) v[i] = 0.75f, o[i] = 1234.5f;
  for (size_t i = 0; i < HV; i++) g[i] = -0.1f, beta[i] = 0.5f;
  Step s;
  s.tokens = 1;
  s.q = q, s.k = k, s.v = v, s.g = g, s.beta = beta, s.o = o;
  step_tensors(&s);

  s.tq.shape[2] = KD + 1; /* wrong shape */
  EXPECT_REFUSED(kp, run(dn_decode, kb, kp, dec, &s), DN_ERR_SHAPE_MISMATCH);
  step_tensors(&s);
  s.tg.t.dtype.bits = 16; /* f16 g: the gate output must be f32 */
  EXPECT_REFUSED(kp, run(dn_decode, kb, kp, dec, &s), DN_ERR_DTYPE_MISMATCH);
  step_tensors(&s);
  s.tq.t.dtype.code = 0; /* int32 */
  EXPECT_REFUSED(kp, run(dn_decode, kb, kp, dec, &s), DN_ERR_DTYPE_MISMATCH);
  step_tensors(&s);
  s.tq.t.device.device_type = 2; /* kDLCUDA */
  EXPECT_REFUSED(kp, run(dn_decode, kb, kp, dec, &s), DN_ERR_DEVICE_MISMATCH);
  step_tensors(&s);
  s.tq.strides[0] = 2 * HK * KD, s.tq.strides[1] = 2 * KD, s.tq.strides[2] = 2; /* innermost stride 2 */
  s.tq.t.strides = s.tq.strides;
  EXPECT_REFUSED(kp, run(dn_decode, kb, kp, dec, &s), DN_ERR_BAD_STRIDES);
  step_tensors(&s);
  s.to.strides[0] = HV * VD, s.to.strides[1] = 0, s.to.strides[2] = 1; /* both heads write one row */
  s.to.t.strides = s.to.strides;
  EXPECT_REFUSED(kp, run(dn_decode, kb, kp, dec, &s), DN_ERR_BAD_STRIDES);
  step_tensors(&s);
  s.to.t.data = v; /* output aliases the input v */
  EXPECT_REFUSED(kp, run(dn_decode, kb, kp, dec, &s), DN_ERR_BAD_STRIDES);
  step_tensors(&s);
  s.tq.t.byte_offset = 2; /* misaligned f32 */
  EXPECT_REFUSED(kp, run(dn_decode, kb, kp, dec, &s), DN_ERR_BAD_STRIDES);
  step_tensors(&s);
  s.tq.t.ndim = 5;
  EXPECT_REFUSED(kp, run(dn_decode, kb, kp, dec, &s), DN_ERR_SHAPE_MISMATCH);
  step_tensors(&s);
  EXPECT_REFUSED(kp, run(dn_decode, vb, kp, dec, &s), DN_ERR_LAYOUT_MISMATCH);
  EXPECT_REFUSED(kp, run(dn_verify, kb, kp, dec, &s), DN_ERR_INVALID_ARGUMENT);
  EXPECT_REFUSED(kp, run(dn_decode, kb, kp, foreign, &s), DN_ERR_FOREIGN_BATCH);
  EXPECT_REFUSED(kp, dn_decode(kb, kp, 1, dec, &s.tq.t, &s.tk.t, &s.tv.t, &s.tg.t, &s.tb.t, &s.to.t, NULL), DN_ERR_LAYER_OUT_OF_RANGE);
  EXPECT_REFUSED(kp, dn_decode(kb, kp, 0, dec, &s.tq.t, NULL, &s.tv.t, &s.tg.t, &s.tb.t, &s.to.t, NULL), DN_ERR_NULL_POINTER);
  dn_delta_params bad_params = {0.5f, 7};
  EXPECT_REFUSED(kp, dn_decode(kb, kp, 0, dec, &s.tq.t, &s.tk.t, &s.tv.t, &s.tg.t, &s.tb.t, &s.to.t, &bad_params), DN_ERR_INVALID_ARGUMENT);

  /* Handles: NULL, forged, wrong kind, destroyed. */
  int forged = 0;
  EXPECT_REFUSED(kp, run(dn_decode, kb, NULL, dec, &s), DN_ERR_NULL_POINTER);
  EXPECT_REFUSED(kp, run(dn_decode, kb, (const dn_pool *)&forged, dec, &s), DN_ERR_INVALID_HANDLE);
  EXPECT_REFUSED(kp, run(dn_decode, kb, (const dn_pool *)kb, dec, &s), DN_ERR_INVALID_HANDLE);
  CHECK(dn_batch_destroy(foreign));
  EXPECT_REFUSED(kp, run(dn_decode, kb, kp, foreign, &s), DN_ERR_INVALID_HANDLE);
  EXPECT_REFUSED(kp, dn_batch_destroy(foreign), DN_ERR_INVALID_HANDLE);
  CHECK(dn_batch_destroy(dec));

  /* Every refused op left the output untouched. */
  for (size_t i = 0; i < HV * VD; i++)
    if (o[i] != 1234.5f) DIE("a refused call wrote the output");

  /* Import / export sizes. */
  dn_pool_info info;
  CHECK(dn_pool_info_get(kp, &info));
  void *st = calloc(1, info.export_state_bytes + 4), *cv = calloc(1, info.export_conv_bytes);
  EXPECT_REFUSED(kp, dn_pool_export(kp, A, st, info.export_state_bytes + 4, cv, info.export_conv_bytes), DN_ERR_BUFFER_SIZE);
  EXPECT_REFUSED(kp, dn_pool_import(kp, A, st, info.export_state_bytes + 4, DN_DTYPE_F32, cv, info.export_conv_bytes, DN_DTYPE_F32),
                 DN_ERR_STATE_MISMATCH);
  EXPECT_REFUSED(kp, dn_pool_import(kp, A, st, info.export_state_bytes, 9, cv, info.export_conv_bytes, DN_DTYPE_F32), DN_ERR_INVALID_ARGUMENT);
  free(st);
  free(cv);

  /* Backends and pools that cannot be made. */
  dn_backend *nb = (dn_backend *)&forged;
  EXPECT_REFUSED(kp, dn_backend_create("tpu:0", &nb), DN_ERR_INVALID_CONFIG);
  if (nb != NULL) DIE("refused dn_backend_create left a handle");
  dn_pool_config cfg = {1, 4, {2, 3, KD, VD, 4, DN_HEAD_MAPPING_GROUPED}, DN_DTYPE_F32, DN_DTYPE_F32, 0, DN_SPEC_SCRATCH};
  dn_pool *np = NULL;
  EXPECT_REFUSED(kp, dn_pool_create(kb, &cfg, &np), DN_ERR_INVALID_CONFIG);
  cfg.dims.num_v_heads = 2, cfg.state_dtype = DN_DTYPE_F16;
  EXPECT_REFUSED(kp, dn_pool_create(kb, &cfg, &np), DN_ERR_INVALID_CONFIG);
  cfg.state_dtype = DN_DTYPE_F32, cfg.spec_mode = DN_SPEC_REPLAY; /* replay without drafts */
  EXPECT_REFUSED(kp, dn_pool_create(kb, &cfg, &np), DN_ERR_INVALID_CONFIG);
  cfg.draft_tokens = DRAFT, cfg.spec_mode = 7;
  EXPECT_REFUSED(kp, dn_pool_create(kb, &cfg, &np), DN_ERR_INVALID_ARGUMENT);
}

int main(int argc, char **argv) {
  if (argc != 3 && !(argc == 4 && strcmp(argv[3], "replay") == 0)) DIE("usage: client INPUTS OUTPUTS [replay]");
  /* the same scenario on pools in either speculative mode: the outputs must not differ */
  uint32_t spec_mode = argc == 4 ? DN_SPEC_REPLAY : DN_SPEC_SCRATCH;
  FILE *in = fopen(argv[1], "rb"), *out = fopen(argv[2], "wb");
  if (!in || !out) DIE("cannot open files");
  uint32_t major = 99, minor = 99, patch = 99;
  dn_version(&major, &minor, &patch);
  if (dn_abi_version() != DN_ABI_VERSION || major != DN_VERSION_MAJOR || minor != DN_VERSION_MINOR || patch != DN_VERSION_PATCH)
    DIE("header and library disagree on the version");

  dn_backend *kb = NULL, *vb = NULL;
  CHECK(dn_backend_create("cpu", &kb));
  CHECK(dn_backend_create("cpu-vk", &vb));
  dn_capabilities kc, vc;
  CHECK(dn_backend_capabilities(kb, &kc));
  CHECK(dn_backend_capabilities(vb, &vc));
  if (kc.native_layout != DN_LAYOUT_K_MAJOR || vc.native_layout != DN_LAYOUT_V_MAJOR) DIE("layouts");
  if (!(kc.state_dtypes & (1u << DN_DTYPE_F32)) || kc.device.device_type != 1 || strncmp(kc.name, "cpu", 3) != 0) DIE("capabilities");

  dn_pool_config cfg = {1, 4, {HK, HV, KD, VD, 4, DN_HEAD_MAPPING_GROUPED}, DN_DTYPE_F32, DN_DTYPE_F32, DRAFT, spec_mode};
  size_t per_slot = 0, fit = 0;
  CHECK(dn_pool_config_bytes_per_slot(&cfg, &per_slot));
  CHECK(dn_pool_config_slots_for_budget(&cfg, per_slot * 11, &fit));
  if (fit != 10) DIE("slots_for_budget %zu", fit);
  dn_pool *kp = NULL, *vp = NULL;
  CHECK(dn_pool_create(kb, &cfg, &kp));
  CHECK(dn_pool_create(vb, &cfg, &vp));
  dn_pool_info info;
  CHECK(dn_pool_info_get(vp, &info));
  if (info.layout != DN_LAYOUT_V_MAJOR || info.capacity != 4 || info.free_count != 4 || info.spec_mode != spec_mode) DIE("pool info");
  size_t nd = 0;
  CHECK(dn_pool_descriptors(kp, NULL, 0, &nd));
  dn_buffer_descriptor descs[8];
  if (nd != 4) DIE("%zu descriptors", nd);
  CHECK(dn_pool_descriptors(kp, descs, 8, &nd));
  if (descs[1].kind != DN_BUFFER_TEMPORAL || descs[1].bytes_per_slot != HV * KD * VD * 4 || descs[1].bytes != 5 * descs[1].bytes_per_slot)
    DIE("temporal descriptor");

  uint64_t s[2], va = 0;
  CHECK(dn_pool_alloc(kp, 2, s));
  CHECK(dn_pool_alloc(vp, 1, &va));
  uint64_t A = s[0], B = s[1], snap_slot = 0;
  CHECK(dn_pool_alloc(kp, 1, &snap_slot));
  dn_batch *b = NULL;

  /* 1: prefill, A's first chunk (50 tokens) and all of B (30), from zero. */
  Step e1;
  load(in, 80, &e1);
  int64_t cu1[3] = {0, 50, 80};
  uint8_t zero2[2] = {0, 0};
  CHECK(dn_batch_extend(kp, cu1, 2, s, zero2, NULL, 0, &b));
  size_t t = 0;
  CHECK(dn_batch_tokens(b, &t));
  if (t != 80) DIE("tokens");
  CHECK(run(dn_extend, kb, kp, b, &e1));
  CHECK(dn_batch_destroy(b));
  write_array(out, e1.o, 80 * HV * VD * 4);

  /* 2: A's second chunk continues its state; a prefix-cache snapshot after
     its 10th token (A's 60th) goes to snap_slot. */
  Step e2;
  load(in, 30, &e2);
  int64_t cu2[2] = {0, 30};
  uint8_t one = 1;
  dn_snapshot snapshot = {0, 10, snap_slot};
  CHECK(dn_batch_extend(kp, cu2, 1, &A, &one, &snapshot, 1, &b));
  CHECK(run(dn_extend, kb, kp, b, &e2));
  CHECK(dn_batch_destroy(b));
  write_array(out, e2.o, 30 * HV * VD * 4);

  /* 3: one decode token each. */
  Step d1;
  load(in, 2, &d1);
  CHECK(dn_batch_decode(kp, s, 2, &b));
  CHECK(run(dn_decode, kb, kp, b, &d1));
  CHECK(dn_batch_destroy(b));
  write_array(out, d1.o, 2 * HV * VD * 4);

  /* 4: chain verify of 3 drafts on A. */
  Step v1;
  load(in, DRAFT, &v1);
  /* q as a strided view (rows padded to KD + 3 floats), as engines hand out
     slices of a fused projection. */
  float padded[DRAFT * HK * (KD + 3)];
  for (int t = 0; t < DRAFT * HK; t++)
    for (int i = 0; i < KD + 3; i++) padded[t * (KD + 3) + i] = i < KD ? v1.q[t * KD + i] : 1e30f;
  v1.tq.t.data = padded;
  v1.tq.strides[0] = HK * (KD + 3), v1.tq.strides[1] = KD + 3, v1.tq.strides[2] = 1;
  v1.tq.t.strides = v1.tq.strides;
  CHECK(dn_batch_verify(kp, &A, 1, NULL, &b));
  CHECK(run(dn_verify, kb, kp, b, &v1));
  CHECK(dn_batch_destroy(b));
  write_array(out, v1.o, DRAFT * HV * VD * 4);

  bad_inputs(kb, vb, kp, vp, A, va);

  /* 5: commit A's step 1 (two drafts accepted). */
  int64_t acc = 1;
  CHECK(dn_batch_commit(kp, &A, 1, &acc, NULL, &b));
  CHECK(dn_commit(kb, kp, 0, b));
  CHECK(dn_batch_destroy(b));

  /* 6: tree verify on B: drafts 1 and 2 both follow draft 0; commit draft 2. */
  Step v2;
  load(in, DRAFT, &v2);
  int64_t parents[DRAFT] = {-1, 0, 0};
  CHECK(dn_batch_verify(kp, &B, 1, parents, &b));
  CHECK(run(dn_verify, kb, kp, b, &v2));
  CHECK(dn_batch_destroy(b));
  write_array(out, v2.o, DRAFT * HV * VD * 4);
  acc = 2;
  CHECK(dn_batch_commit(kp, &B, 1, &acc, NULL, &b));
  CHECK(dn_commit(kb, kp, 0, b));
  CHECK(dn_batch_destroy(b));

  /* 7: export A and B from the K-major pool; import A into the V-major one. */
  CHECK(dn_pool_info_get(kp, &info));
  void *sa, *ca, *sb, *cb, *sv, *cvv;
  export_state(kp, A, &info, &sa, &ca);
  export_state(kp, B, &info, &sb, &cb);
  write_array(out, sa, info.export_state_bytes);
  write_array(out, sb, info.export_state_bytes);
  void *ss, *cs;
  export_state(kp, snap_slot, &info, &ss, &cs);
  write_array(out, ss, info.export_state_bytes);
  free(ss), free(cs);
  CHECK(dn_pool_import(vp, va, sa, info.export_state_bytes, DN_DTYPE_F32, ca, info.export_conv_bytes, DN_DTYPE_F32));
  export_state(vp, va, &info, &sv, &cvv);
  if (memcmp(sa, sv, info.export_state_bytes) != 0 || memcmp(ca, cvv, info.export_conv_bytes) != 0)
    DIE("K-major -> V-major -> canonical is not exact");

  /* 8: decode one more token of A on the V-major pool. */
  Step d2;
  load(in, 1, &d2);
  CHECK(dn_batch_decode(vp, &va, 1, &b));
  CHECK(run(dn_decode, vb, vp, b, &d2));
  CHECK(dn_batch_destroy(b));
  write_array(out, d2.o, HV * VD * 4);
  free(sv);
  free(cvv);
  export_state(vp, va, &info, &sv, &cvv);
  write_array(out, sv, info.export_state_bytes);

  /* Fork and copy keep the state; destroyed handles are refused. */
  uint64_t fa = 0;
  CHECK(dn_pool_fork(kp, A, &fa));
  void *sf, *cf;
  export_state(kp, fa, &info, &sf, &cf);
  if (memcmp(sf, sa, info.export_state_bytes) != 0) DIE("fork");
  CHECK(dn_pool_zero(kp, &fa, 1));
  CHECK(dn_pool_copy(kp, B, fa));
  free(sf);
  free(cf);
  export_state(kp, fa, &info, &sf, &cf);
  if (memcmp(sf, sb, info.export_state_bytes) != 0) DIE("copy");
  CHECK(dn_pool_free(kp, &fa, 1));

  CHECK(dn_backend_destroy(kb)); /* the pool keeps its backend alive */
  CHECK(dn_batch_decode(kp, s, 2, &b));
  CHECK(run(dn_decode, vb, vp, b, &d2) == DN_ERR_FOREIGN_BATCH ? DN_OK : DN_ERR_INTERNAL);
  CHECK(dn_batch_destroy(b));
  CHECK(dn_pool_destroy(kp));
  if (dn_pool_alloc(kp, 1, &fa) != DN_ERR_INVALID_HANDLE) DIE("destroyed pool accepted");
  if (dn_backend_destroy(kb) != DN_ERR_INVALID_HANDLE) DIE("double destroy accepted");
  CHECK(dn_pool_destroy(vp));
  CHECK(dn_backend_destroy(vb));

  free(sa), free(ca), free(sb), free(cb), free(sv), free(cvv), free(sf), free(cf);
  unload(&e1), unload(&e2), unload(&d1), unload(&v1), unload(&v2), unload(&d2);
  fclose(in);
  if (fclose(out) != 0) DIE("close");
  printf("c client: ok, %d bad-input calls refused with state unchanged\n", refused);
  return 0;
}
