/* rq_all_finite: is every element of a float array finite? (the per-call input check of a
 * compiled model; rqcompile/targets/tvm/finite.py)
 *
 * One pass over the raw bits, no early exit, so the compiler vectorizes it: an element is NaN
 * or +-Inf exactly when its exponent field is all ones (IEEE 754 half, single, double).
 * Returns 1 when none is, 0 when one is, -1 for an element size it does not know. */
#include <stdint.h>

int rq_all_finite(const void *p, int64_t n, int size) {
  int bad = 0;
  if (size == 4) {
    const uint32_t *a = (const uint32_t *)p;
    for (int64_t i = 0; i < n; i++) bad |= (a[i] & 0x7f800000u) == 0x7f800000u;
  } else if (size == 2) {
    const uint16_t *a = (const uint16_t *)p;
    for (int64_t i = 0; i < n; i++) bad |= (a[i] & 0x7c00u) == 0x7c00u;
  } else if (size == 8) {
    const uint64_t *a = (const uint64_t *)p;
    for (int64_t i = 0; i < n; i++)
      bad |= (a[i] & 0x7ff0000000000000ull) == 0x7ff0000000000000ull;
  } else {
    return -1;
  }
  return !bad;
}
