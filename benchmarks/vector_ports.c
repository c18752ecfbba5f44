/* Which vector instructions share execution ports on this core (issue 19's bounds on
 * AVX-512 hosts without AMX, e.g. Zen 4). Each test runs independent chains in registers,
 * so only throughput binds; cycles are wall time times the clock that a chain of dependent
 * scalar adds (1 cycle each) measures first. Needs AVX-512 VNNI and VPOPCNTDQ.
 *
 *   gcc -O3 -march=icelake-server benchmarks/vector_ports.c -o /tmp/vector_ports && /tmp/vector_ports
 *
 * What it answered (benchmarks/results/vector_ports_2026-12-07_zen4.txt): zmm vpdpbusd runs
 * at 1 per cycle (64 MACs), ymm at 2; float multiplies and FMAs take the same ports (8 zmm
 * vpdpbusd + 4 zmm FMA: 12 cycles), float adds and int-to-float conversions do not (8
 * cycles); ymm xor + vpopcntd + add run 4 operations per cycle (one per vector port).
 */
#include <immintrin.h>
#include <stdio.h>
#include <time.h>

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec + t.tv_nsec * 1e-9;
}

#define N 25000000L
#define OPAQUE(v) __asm__ volatile("" : "+v"(v))

int main(void) {
  long a = 1;
  double t = now();
  for (long i = 0; i < 4 * N; i++)
    __asm__ volatile("add $1, %0\n\tadd $1, %0\n\tadd $1, %0\n\tadd $1, %0" : "+r"(a));
  double ghz = 16.0 * N / (now() - t) / 1e9;
  printf("clock (dependent scalar adds): %.2f GHz\n", ghz);
#define CYCLES(dt) ((dt) * ghz * 1e9 / N)

  __m512i acc[8], x = _mm512_set1_epi32(0x01020304), w = _mm512_set1_epi32(0x05060708);
  __m256i y[8], yx = _mm256_set1_epi32(0x01020304);
  __m512 f[4], s = _mm512_set1_ps(1.0001f);
  __m256 g[8], gs = _mm256_set1_ps(1.0001f);
  for (int i = 0; i < 8; i++) {
    acc[i] = _mm512_set1_epi32(i);
    y[i] = _mm256_set1_epi32(i + 1);
    g[i] = _mm256_set1_ps(1.0f + i);
  }
  for (int i = 0; i < 4; i++) f[i] = _mm512_set1_ps(1.0f + i);

#define RUN(label, per_iter, body)                              \
  t = now();                                                    \
  for (long i = 0; i < N; i++) {                                \
    body;                                                       \
    OPAQUE(x);                                                  \
    OPAQUE(w);                                                  \
    OPAQUE(yx);                                                 \
  }                                                             \
  printf("%-44s %6.2f cycles per iteration (%s)\n", label, CYCLES(now() - t), per_iter);

#define DOT8 for (int j = 0; j < 8; j++) acc[j] = _mm512_dpbusd_epi32(acc[j], x, w)
  RUN("8 zmm vpdpbusd", "1 per cycle: 8", DOT8)
  RUN("8 zmm vpdpbusd + 4 zmm vfmadd", "shared ports: 12", DOT8;
      for (int j = 0; j < 4; j++) f[j] = _mm512_fmadd_ps(f[j], s, s))
  RUN("8 zmm vpdpbusd + 8 ymm vfmadd", "shared ports: 12", DOT8;
      for (int j = 0; j < 8; j++) g[j] = _mm256_fmadd_ps(g[j], gs, gs))
  RUN("8 zmm vpdpbusd + 4 zmm vaddps", "other ports: 8", DOT8;
      for (int j = 0; j < 4; j++) f[j] = _mm512_add_ps(f[j], s))
  RUN("8 zmm vpdpbusd + 8 ymm vcvtdq2ps", "other ports: 8", DOT8;
      for (int j = 0; j < 8; j++) y[j] = _mm256_castps_si256(_mm256_cvtepi32_ps(y[j])))
  RUN("8 zmm vpdpbusd + 8 ymm vpmaddwd", "shared ports: 12", DOT8;
      for (int j = 0; j < 8; j++) y[j] = _mm256_madd_epi16(y[j], yx))
  RUN("8 zmm vpdpbusd + 8 ymm vpsubd", "other ports: 8", DOT8;
      for (int j = 0; j < 8; j++) y[j] = _mm256_sub_epi32(y[j], yx))

  __m256i xs[4], ws[2];
  for (int i = 0; i < 4; i++) xs[i] = _mm256_set1_epi32(0x1111 * i + 3);
  for (int i = 0; i < 2; i++) ws[i] = _mm256_set1_epi32(0x7777 * i + 5);
  t = now();
  for (long i = 0; i < N; i++) {
    for (int r = 0; r < 4; r++)
      for (int c = 0; c < 2; c++)
        y[r * 2 + c] = _mm256_add_epi32(y[r * 2 + c],
                                        _mm256_popcnt_epi32(_mm256_xor_si256(xs[r], ws[c])));
    OPAQUE(xs[0]); OPAQUE(xs[1]); OPAQUE(xs[2]); OPAQUE(xs[3]); OPAQUE(ws[0]); OPAQUE(ws[1]);
  }
  printf("%-44s %6.2f cycles per iteration (4 ports: 6)\n", "8 ymm (vpxor + vpopcntd + vpaddd)",
         CYCLES(now() - t));

  long sum = 0;
  for (int i = 0; i < 8; i++)
    sum += _mm512_reduce_add_epi32(acc[i]) + _mm256_extract_epi32(y[i], 1) + (long)g[i][0];
  for (int i = 0; i < 4; i++) sum += (long)_mm512_reduce_add_ps(f[i]);
  printf("(checksum %ld)\n", sum);
  return 0;
}
