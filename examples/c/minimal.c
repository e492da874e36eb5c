/* deltanet from C: one prefill then one decode step on the CPU backend.
   cc -std=c11 -I include examples/c/minimal.c -L target/release -ldeltanet -o minimal */
#include <deltanet.h>
#include <stdio.h>

#define T 8 /* tokens; one sequence, HK = HV = 1, K = V = 4 */
static float q[T][4], k[T][4], v[T][4], g[T], beta[T], o[T][4];

static DLTensor f32(void *data, int ndim, int64_t *shape) {
  DLTensor t = {data, {1 /* kDLCPU */, 0}, ndim, {2 /* kDLFloat */, 32, 1}, shape, NULL, 0};
  return t;
}

int main(void) {
  for (int t = 0; t < T; t++) {
    for (int i = 0; i < 4; i++) q[t][i] = k[t][i] = 0.1f * (t + i), v[t][i] = 0.5f - 0.1f * i;
    g[t] = -0.05f, beta[t] = 0.5f;
  }
  dn_backend *cpu; dn_pool *pool; dn_batch *batch; uint64_t slot;
  dn_pool_config cfg = {1, 4, {1, 1, 4, 4, 4, DN_HEAD_MAPPING_GROUPED}, DN_DTYPE_F32, DN_DTYPE_F32, 0, DN_SPEC_SCRATCH};
  if (dn_backend_create("cpu", &cpu) || dn_pool_create(cpu, &cfg, &pool) || dn_pool_alloc(pool, 1, &slot)) goto fail;

  int64_t s3[3] = {T - 1, 1, 4}, s2[2] = {T - 1, 1}, cu[2] = {0, T - 1}; /* prefill T-1 tokens */
  uint8_t fresh = 0;
  DLTensor tq = f32(q, 3, s3), tk = f32(k, 3, s3), tv = f32(v, 3, s3), tg = f32(g, 2, s2), tb = f32(beta, 2, s2), to = f32(o, 3, s3);
  if (dn_batch_extend(pool, cu, 1, &slot, &fresh, NULL, 0, &batch) ||
      dn_extend(cpu, pool, 0, batch, &tq, &tk, &tv, &tg, &tb, &to, NULL) || dn_batch_destroy(batch)) goto fail;

  s3[0] = s2[0] = 1; /* then decode the last token, continuing the slot's state */
  tq.data = q[T - 1], tk.data = k[T - 1], tv.data = v[T - 1], tg.data = &g[T - 1], tb.data = &beta[T - 1], to.data = o[T - 1];
  if (dn_batch_decode(pool, &slot, 1, &batch) || dn_decode(cpu, pool, 0, batch, &tq, &tk, &tv, &tg, &tb, &to, NULL) ||
      dn_batch_destroy(batch)) goto fail;
  printf("o[T-1] = %.9g %.9g %.9g %.9g\n", o[T - 1][0], o[T - 1][1], o[T - 1][2], o[T - 1][3]);
  return dn_pool_destroy(pool) || dn_backend_destroy(cpu);
fail:
  fprintf(stderr, "deltanet: %s\n", dn_last_error_message());
  return 1;
}
