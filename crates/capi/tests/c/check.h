/* Failure reporting shared by the C clients of the tests: DIE prints where and
 * why, then exits 2; CHECK dies on any status but DN_OK with the thread's
 * error message. Include after deltanet.h. */
#ifndef DN_TEST_CHECK_H
#define DN_TEST_CHECK_H

#include <stdio.h>
#include <stdlib.h>

#define DIE(...)                                       \
  do {                                                 \
    fprintf(stderr, "%s:%d: ", __FILE__, __LINE__);    \
    fprintf(stderr, __VA_ARGS__);                      \
    fprintf(stderr, "\n");                             \
    exit(2);                                           \
  } while (0)

#define CHECK(call)                                                                 \
  do {                                                                              \
    dn_status s_ = (call);                                                          \
    if (s_ != DN_OK) DIE("%s -> %d: %s", #call, (int)s_, dn_last_error_message()); \
  } while (0)

#endif
