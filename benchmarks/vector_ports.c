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
 * Added 2026-12-07 (session 14; results/vector_ports_2026-12-07_zen4_b.txt): byte permutes
 * (zmm vpermb, VBMI) and shuffles (vpshufb) run 1 per cycle alone and half share
 * vpdpbusd's ports (8 + 8: 12.5 cycles; vpermd 12.6-16.9 across builds): a 2:4 kernel that gathers each
 * column's kept activations with one vpermb per vpdpbusd does 128 dense MACs in ~1.56
 * cycles against dense's 2, ~1.2x with the epilogue: short of issue 19's 1.3x. Popcounts
 * run only on the multiply ports too: zmm vpopcntd 1 per cycle, ymm 2 (512 bits a cycle
 * either way), and 8 zmm vpopcntd + 4 zmm FMAs take 12 cycles, so the A1W1 kernel's
 * popcounts and its epilogue's multiplies and FMAs share two pipes (vpxord, vpaddd and
 * int-to-float conversions use the others). The nibble panels' byte shift, which LLVM
 * lowers to vgf2p8affineqb where the target has GFNI, shares them as well (8 vpdpbusd + 4:
 * 12 cycles; vpsrlw + vpandq instead: 8), though the M = 1 kernels measured no faster
 * without it (they wait on L2, not on these ports).
 * Added 2026-12-08 (session 15; results/vector_ports_2026-12-08_zen4.txt): the masked
 * nibble GEMV's step (per 2 vpdpbusd one 64-byte weight load, two vpandq, one vpbroadcastd
 * from memory) piece by piece. Each piece beside 8 vpdpbusd costs nothing (8 cycles); all
 * together 8.4-10.7 cycles across runs, so the loop alone runs at 75-95% of vpdpbusd's
 * bound, and the GEMVs' ~36 MACs per cycle (57%) is lost outside it (the per-block
 * epilogue, 20-31%, and the block's loop set-up). Leaving the low nibbles unmasked (the
 * raw byte's products minus the high nibbles', one vpandq fewer per 2 vpdpbusd) measured
 * slower, 10.3-14.5 cycles: not a lever.
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

/* vpbroadcastd from memory, as the kernels' broadcasts are (a compiler would otherwise
 * hoist it, or broadcast from a general register: another instruction) */
static inline __m512i bcast_mem(const int *p) {
  __m512i r;
  __asm__ volatile("vpbroadcastd %1, %0" : "=v"(r) : "m"(*p));
  return r;
}
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

  __m512i pb[8], pidx = _mm512_set1_epi32(0x03020100);
  for (int i = 0; i < 8; i++) pb[i] = _mm512_set1_epi32(0x01010101 * (i + 1));
  RUN("8 zmm vpermb", "1 per cycle: 8", for (int j = 0; j < 8; j++) pb[j] = _mm512_permutexvar_epi8(pidx, pb[j]))
  RUN("8 zmm vpdpbusd + 8 zmm vpermb", "other ports: 8, shared: 16", DOT8;
      for (int j = 0; j < 8; j++) pb[j] = _mm512_permutexvar_epi8(pidx, pb[j]))
  RUN("8 zmm vpdpbusd + 4 zmm vpermb", "other ports: 8, shared: 12", DOT8;
      for (int j = 0; j < 4; j++) pb[j] = _mm512_permutexvar_epi8(pidx, pb[j]))
  RUN("8 zmm vpshufb", "1 per cycle: 8", for (int j = 0; j < 8; j++) pb[j] = _mm512_shuffle_epi8(pb[j], pidx))
  RUN("8 zmm vpdpbusd + 8 zmm vpshufb", "other ports: 8, shared: 16", DOT8;
      for (int j = 0; j < 8; j++) pb[j] = _mm512_shuffle_epi8(pb[j], pidx))
  RUN("8 zmm vpdpbusd + 8 zmm vpermd", "other ports: 8, shared: 16", DOT8;
      for (int j = 0; j < 8; j++) pb[j] = _mm512_permutexvar_epi32(pidx, pb[j]))
  OPAQUE(pidx);
  for (int i = 0; i < 8; i++) { long q = _mm512_reduce_add_epi32(pb[i]); __asm__ volatile("" :: "r"(q)); }

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

  __m512i zx[4], zw[2], zy[8];
  for (int i = 0; i < 4; i++) zx[i] = _mm512_set1_epi32(0x1111 * i + 3);
  for (int i = 0; i < 2; i++) zw[i] = _mm512_set1_epi32(0x7777 * i + 5);
  for (int i = 0; i < 8; i++) zy[i] = _mm512_set1_epi32(i);
#define XNOR8 for (int r = 0; r < 4; r++) for (int c = 0; c < 2; c++) \
    zy[r * 2 + c] = _mm512_add_epi32(zy[r * 2 + c], _mm512_popcnt_epi32(_mm512_xor_si512(zx[r], zw[c])))
#define OPQ OPAQUE(zx[0]); OPAQUE(zx[1]); OPAQUE(zx[2]); OPAQUE(zx[3]); OPAQUE(zw[0]); OPAQUE(zw[1])
  RUN("8 zmm (vpxord + vpopcntd + vpaddd)", "2 zmm per cycle: 12", XNOR8; OPQ)
  RUN("8 zmm vpopcntd", "1 per cycle: 8", for (int j = 0; j < 8; j++) zy[j] = _mm512_popcnt_epi32(zy[j]))
  RUN("8 zmm vpopcntd + 4 zmm vfmadd", "shared ports: 12", for (int j = 0; j < 8; j++) zy[j] = _mm512_popcnt_epi32(zy[j]);
      for (int j = 0; j < 4; j++) f[j] = _mm512_fmadd_ps(f[j], s, s))
  RUN("8 zmm (xor+popcnt+add) + 4 zmm vfmadd", "popcnt+fma ports: 12; all: 14", XNOR8; OPQ;
      for (int j = 0; j < 4; j++) f[j] = _mm512_fmadd_ps(f[j], s, s))
  for (int i = 0; i < 8; i++) { long q = _mm512_reduce_add_epi32(zy[i]); __asm__ volatile("" :: "r"(q)); }

  RUN("8 ymm vpopcntd", "2 per cycle: 4", for (int j = 0; j < 8; j++) y[j] = _mm256_popcnt_epi32(y[j]))
  RUN("8 ymm vpopcntd + 4 zmm vfmadd", "shared ports: 8", for (int j = 0; j < 8; j++) y[j] = _mm256_popcnt_epi32(y[j]);
      for (int j = 0; j < 4; j++) f[j] = _mm512_fmadd_ps(f[j], s, s))
  RUN("8 zmm vpopcntq", "1 per cycle: 8", for (int j = 0; j < 8; j++) zy[j] = _mm512_popcnt_epi64(zy[j]))
  RUN("8 zmm vpopcntb", "1 per cycle: 8", for (int j = 0; j < 8; j++) zy[j] = _mm512_popcnt_epi8(zy[j]))
  RUN("8 zmm vpshufb (nibble LUT)", "1 per cycle: 8", for (int j = 0; j < 8; j++) zy[j] = _mm512_shuffle_epi8(zw[0], zy[j]))
  RUN("8 zmm vpsadbw", "1 per cycle: 8", for (int j = 0; j < 8; j++) zy[j] = _mm512_sad_epu8(zy[j], zw[0]))
  RUN("8 zmm vpdpbusd + 8 zmm vpsadbw", "shared ports: 16", DOT8; for (int j = 0; j < 8; j++) zy[j] = _mm512_sad_epu8(zy[j], zw[0]))
  RUN("8 zmm vcvtdq2ps + 4 zmm vfmadd", "other ports: 8", for (int j = 0; j < 8; j++) zy[j] = _mm512_castps_si512(_mm512_cvtepi32_ps(zy[j]));
      for (int j = 0; j < 4; j++) f[j] = _mm512_fmadd_ps(f[j], s, s))
  for (int i = 0; i < 8; i++) { long q = _mm512_reduce_add_epi32(zy[i]); __asm__ volatile("" :: "r"(q)); }

  __m512i gm = _mm512_set1_epi64(0x0102040810204080LL);
  RUN("8 zmm vgf2p8affineqb", "1 per cycle: 8",
      for (int j = 0; j < 8; j++) zy[j] = _mm512_gf2p8affine_epi64_epi8(zy[j], gm, 0))
  RUN("8 zmm vpdpbusd + 4 zmm vgf2p8affineqb", "shared ports: 12", DOT8;
      for (int j = 0; j < 4; j++) zy[j] = _mm512_gf2p8affine_epi64_epi8(zy[j], gm, 0))
  RUN("8 zmm vpdpbusd + 4 zmm (vpsrlw + vpandq)", "other ports: 8", DOT8;
      for (int j = 0; j < 4; j++) zy[j] = _mm512_and_si512(_mm512_srli_epi16(zy[j], 4), zw[1]))
  for (int i = 0; i < 8; i++) { long q = _mm512_reduce_add_epi32(zy[i]); __asm__ volatile("" :: "r"(q)); }

  /* Added 2026-12-08 (session 15): the masked nibble GEMV's inner loop, piece by piece.
   * Per 2 zmm vpdpbusd it loads 64 bytes of weights, masks them twice (vpandq) and
   * broadcasts one 4-byte activation quad from memory (vpbroadcastd). */
  static int xq[4096] __attribute__((aligned(64)));
  static __m512i wbuf[512];
  for (int i = 0; i < 4096; i++) xq[i] = (i & 127) * 0x01010101;
  for (int i = 0; i < 512; i++) wbuf[i] = _mm512_set1_epi32(i);
  __m512i lo = _mm512_set1_epi8(15), hi = _mm512_set1_epi8((char)0xF0);
#define BCAST(j) bcast_mem(&xq[(i * 4 + (j)) & 4095])
  RUN("8 zmm vpdpbusd, x broadcast from memory", "1 per 2 vpdpbusd", for (int j = 0; j < 8; j += 2) {
        __m512i xb = BCAST(j);
        acc[j] = _mm512_dpbusd_epi32(acc[j], w, xb);
        acc[j + 1] = _mm512_dpbusd_epi32(acc[j + 1], x, xb);
      })
  RUN("8 zmm vpdpbusd + 8 vpandq", "other ports: 8", for (int j = 0; j < 8; j++)
        acc[j] = _mm512_dpbusd_epi32(acc[j], _mm512_and_si512(w, j & 1 ? hi : lo), x))
  RUN("8 zmm vpdpbusd + 4 zmm loads (L1)", "dpbusd alone: 8", for (int j = 0; j < 8; j += 2) {
        __m512i raw = _mm512_load_si512(&wbuf[(i * 4 + j) & 511]);
        acc[j] = _mm512_dpbusd_epi32(acc[j], raw, x);
        acc[j + 1] = _mm512_dpbusd_epi32(acc[j + 1], raw, w);
      })
  RUN("8 zmm vpdpbusd + 4 zmm loads + 4 bcast", "dpbusd alone: 8", for (int j = 0; j < 8; j += 2) {
        __m512i raw = _mm512_load_si512(&wbuf[(i * 4 + j) & 511]);
        __m512i xb = BCAST(j);
        acc[j] = _mm512_dpbusd_epi32(acc[j], raw, xb);
        acc[j + 1] = _mm512_dpbusd_epi32(acc[j + 1], w, xb);
      })
  RUN("8 zmm vpdpbusd + 4 zmm loads + 8 vpandq", "dpbusd alone: 8", for (int j = 0; j < 8; j += 2) {
        __m512i raw = _mm512_load_si512(&wbuf[(i * 4 + j) & 511]);
        acc[j] = _mm512_dpbusd_epi32(acc[j], _mm512_and_si512(raw, lo), x);
        acc[j + 1] = _mm512_dpbusd_epi32(acc[j + 1], _mm512_and_si512(raw, hi), x);
      })
  RUN("the nibble GEMV step x4 (4 loads, 8 and, 4 bcast, 8 dpbusd)", "dpbusd alone: 8",
      for (int j = 0; j < 8; j += 2) {
        __m512i raw = _mm512_load_si512(&wbuf[(i * 4 + j) & 511]);
        __m512i xb = BCAST(j);
        acc[j] = _mm512_dpbusd_epi32(acc[j], _mm512_and_si512(raw, lo), xb);
        acc[j + 1] = _mm512_dpbusd_epi32(acc[j + 1], _mm512_and_si512(raw, hi), xb);
      })
  RUN("the same, low nibbles unmasked (4 and)", "dpbusd alone: 8",
      for (int j = 0; j < 8; j += 2) {
        __m512i raw = _mm512_load_si512(&wbuf[(i * 4 + j) & 511]);
        __m512i xb = BCAST(j);
        acc[j] = _mm512_dpbusd_epi32(acc[j], raw, xb);
        acc[j + 1] = _mm512_dpbusd_epi32(acc[j + 1], _mm512_and_si512(raw, hi), xb);
      })

  long sum = 0;
  for (int i = 0; i < 8; i++)
    sum += _mm512_reduce_add_epi32(acc[i]) + _mm256_extract_epi32(y[i], 1) + (long)g[i][0];
  for (int i = 0; i < 4; i++) sum += (long)_mm512_reduce_add_ps(f[i]);
  printf("(checksum %ld)\n", sum);
  return 0;
}
