/* Tiny test framework for h2rev.
 *
 *   #include "test.h"
 *   TEST(my_case) { ASSERT_EQ(1 + 1, 2); }
 *
 * Each TEST registers itself at load time (constructor attribute). test/main.c provides
 * main(): `exe` or `exe --list` lists the cases, `exe <case>` runs one case in-process,
 * `exe --all` runs every case in order. Assertion failures print the expression, the
 * values, file and line, then abort().
 */
#ifndef H2REV_TEST_H
#define H2REV_TEST_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

typedef void (*test_fn)(void);

void test_register(const char *name, test_fn fn);

/* Called on assertion failure: prints "file:line: assertion failed: <message>" and aborts. */
void test_fail(const char *file, int line, const char *fmt, ...)
    __attribute__((noreturn, format(printf, 3, 4)));

/* Optional hook for ASSERT_OK to name error codes (e.g. uv_strerror / h2rev_strerror). */
void test_set_error_name(const char *(*fn)(int err));
const char *test_error_name(long long err);

/* Prints hex context around the first difference of two buffers, then aborts. */
void test_fail_mem(const char *file, int line, const char *ea, const char *eb, const void *a,
                   const void *b, size_t n) __attribute__((noreturn));

/* Name of the running test case (NULL outside of a test). */
const char *test_current(void);

#define TEST(name)                                                                                 \
  static void test_##name(void);                                                                   \
  __attribute__((constructor)) static void test_register_##name(void) {                            \
    test_register(#name, test_##name);                                                             \
  }                                                                                                \
  static void test_##name(void)

#define ASSERT(x)                                                                                  \
  do {                                                                                             \
    if (!(x))                                                                                      \
      test_fail(__FILE__, __LINE__, "%s", #x);                                                     \
  } while (0)

/* Integer comparisons; both sides are evaluated once and compared as long long. */
#define TEST_ASSERT_CMP_(a, op, b)                                                                 \
  do {                                                                                             \
    long long test_a_ = (long long)(a);                                                            \
    long long test_b_ = (long long)(b);                                                            \
    if (!(test_a_ op test_b_))                                                                     \
      test_fail(__FILE__, __LINE__, "%s %s %s (%lld %s %lld)", #a, #op, #b, test_a_, #op,          \
                test_b_);                                                                          \
  } while (0)

#define ASSERT_EQ(a, b) TEST_ASSERT_CMP_(a, ==, b)
#define ASSERT_NE(a, b) TEST_ASSERT_CMP_(a, !=, b)
#define ASSERT_GT(a, b) TEST_ASSERT_CMP_(a, >, b)
#define ASSERT_GE(a, b) TEST_ASSERT_CMP_(a, >=, b)
#define ASSERT_LT(a, b) TEST_ASSERT_CMP_(a, <, b)
#define ASSERT_LE(a, b) TEST_ASSERT_CMP_(a, <=, b)

#define ASSERT_PTR_EQ(a, b)                                                                        \
  do {                                                                                             \
    const void *test_a_ = (const void *)(a);                                                       \
    const void *test_b_ = (const void *)(b);                                                       \
    if (test_a_ != test_b_)                                                                        \
      test_fail(__FILE__, __LINE__, "%s == %s (%p == %p)", #a, #b, test_a_, test_b_);              \
  } while (0)

#define ASSERT_STR_EQ(a, b)                                                                        \
  do {                                                                                             \
    const char *test_a_ = (a);                                                                     \
    const char *test_b_ = (b);                                                                     \
    if (test_a_ == NULL || test_b_ == NULL ? test_a_ != test_b_ : strcmp(test_a_, test_b_) != 0)   \
      test_fail(__FILE__, __LINE__, "%s == %s (\"%s\" == \"%s\")", #a, #b,                         \
                test_a_ ? test_a_ : "(null)", test_b_ ? test_b_ : "(null)");                       \
  } while (0)

#define ASSERT_MEM_EQ(a, b, n)                                                                     \
  do {                                                                                             \
    const void *test_a_ = (a);                                                                     \
    const void *test_b_ = (b);                                                                     \
    size_t test_n_ = (size_t)(n);                                                                  \
    if (test_n_ > 0 && memcmp(test_a_, test_b_, test_n_) != 0)                                     \
      test_fail_mem(__FILE__, __LINE__, #a, #b, test_a_, test_b_, test_n_);                        \
  } while (0)

#define ASSERT_NULL(p)                                                                             \
  do {                                                                                             \
    const void *test_p_ = (const void *)(p);                                                       \
    if (test_p_ != NULL)                                                                           \
      test_fail(__FILE__, __LINE__, "%s == NULL (%p)", #p, test_p_);                               \
  } while (0)

#define ASSERT_NOT_NULL(p)                                                                         \
  do {                                                                                             \
    if ((const void *)(p) == NULL)                                                                 \
      test_fail(__FILE__, __LINE__, "%s != NULL", #p);                                             \
  } while (0)

/* expr must evaluate to 0; otherwise prints the value (and its name if a hook is set). */
#define ASSERT_OK(expr)                                                                            \
  do {                                                                                             \
    long long test_r_ = (long long)(expr);                                                         \
    if (test_r_ != 0)                                                                              \
      test_fail(__FILE__, __LINE__, "%s == 0 (returned %lld%s)", #expr, test_r_,                   \
                test_error_name(test_r_));                                                         \
  } while (0)

#endif /* H2REV_TEST_H */
