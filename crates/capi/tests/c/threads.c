/* Thread-safety rules of the header, exercised: several threads allocating,
 * zeroing, exporting and freeing on one pool at once (serialised by the
 * pool's lock: every slot count adds up), then a thread running decode steps
 * while another destroys the pool under it (each call returns DN_OK or
 * DN_ERR_INVALID_HANDLE, never crashes). Exit status 0 = all held. */
#include "deltanet.h"

#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define THREADS 4
#define ROUNDS 300

#include "check.h"

static dn_pool *pool;
static dn_backend *cpu;

static void *churn(void *arg) {
  (void)arg;
  dn_pool_info info;
  CHECK(dn_pool_info_get(pool, &info));
  void *st = malloc(info.export_state_bytes), *cv = malloc(info.export_conv_bytes);
  for (int r = 0; r < ROUNDS; r++) {
    uint64_t s;
    CHECK(dn_pool_alloc(pool, 1, &s));
    CHECK(dn_pool_zero(pool, &s, 1));
    CHECK(dn_pool_export(pool, s, st, info.export_state_bytes, cv, info.export_conv_bytes));
    for (size_t i = 0; i < info.export_state_bytes; i++)
      if (((unsigned char *)st)[i] != 0) DIE("a zeroed slot exported non-zero bytes: another thread wrote it");
    CHECK(dn_pool_free(pool, &s, 1));
  }
  free(st);
  free(cv);
  return NULL;
}

static atomic_int stop = 0;
static atomic_long decoded = 0;

static void *decode_loop(void *arg) {
  uint64_t slot = *(uint64_t *)arg;
  static float q[8], k[8], v[8], g[1] = {-0.1f}, beta[1] = {0.5f}, o[8];
  int64_t s3[3] = {1, 1, 8}, s2[2] = {1, 1};
  DLTensor t[6];
  void *data[6] = {q, k, v, g, beta, o};
  for (int i = 0; i < 6; i++) {
    DLTensor x = {data[i], {1, 0}, (i == 3 || i == 4) ? 2 : 3, {2, 32, 1}, (i == 3 || i == 4) ? s2 : s3, NULL, 0};
    t[i] = x;
  }
  for (int i = 0; i < 8; i++) q[i] = k[i] = 0.1f * (float)i, v[i] = 0.2f;
  long ok = 0, gone = 0;
  while (!atomic_load(&stop) || gone == 0) {
    dn_batch *b = NULL;
    dn_status s = dn_batch_decode(pool, &slot, 1, &b);
    if (s == DN_OK) {
      s = dn_decode(cpu, pool, 0, b, &t[0], &t[1], &t[2], &t[3], &t[4], &t[5], NULL);
      CHECK(dn_batch_destroy(b));
    }
    if (s == DN_OK) ok++, atomic_fetch_add(&decoded, 1);
    else if (s == DN_ERR_INVALID_HANDLE) gone++;
    else DIE("decode during destroy -> %d: %s", (int)s, dn_last_error_message());
  }
  if (ok == 0) DIE("no decode ran before the destroy");
  return NULL;
}

int main(void) {
  CHECK(dn_backend_create("cpu", &cpu));
  dn_pool_config cfg = {1, THREADS, {1, 1, 8, 8, 4, DN_HEAD_MAPPING_GROUPED}, DN_DTYPE_F32, DN_DTYPE_F32, 0, DN_SPEC_SCRATCH};
  CHECK(dn_pool_create(cpu, &cfg, &pool));
  pthread_t th[THREADS];
  for (int i = 0; i < THREADS; i++)
    if (pthread_create(&th[i], NULL, churn, NULL) != 0) DIE("pthread_create");
  for (int i = 0; i < THREADS; i++) pthread_join(th[i], NULL);
  dn_pool_info info;
  CHECK(dn_pool_info_get(pool, &info));
  if (info.free_count != THREADS) DIE("free_count %zu after balanced alloc/free", info.free_count);

  uint64_t slot;
  CHECK(dn_pool_alloc(pool, 1, &slot));
  CHECK(dn_pool_zero(pool, &slot, 1));
  pthread_t d;
  if (pthread_create(&d, NULL, decode_loop, &slot) != 0) DIE("pthread_create");
  while (atomic_load(&decoded) < 20) sched_yield(); /* destroy while decodes are running */
  CHECK(dn_pool_destroy(pool));
  stop = 1;
  pthread_join(d, NULL);
  CHECK(dn_backend_destroy(cpu));
  printf("threads: ok\n");
  return 0;
}
