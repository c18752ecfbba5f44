/* Can the AMX kernel's float epilogue run behind its tile instructions on this core?
 *
 * The AMX integer GEMM (rqcompile/targets/tvm/x86/amx.py) does, per step (one 32 x 32
 * register tile, one block of 128 of K): 8 tileloadd, 8 tdpbusd, 4 tilestored and 4
 * tilezero on the matrix unit, and an epilogue of 64 zmm vectors x 8 float operations
 * (docs: benchmarks/README.md, "Issue-19 targets"). This times each part alone and the
 * parts together, with data in L1, so the M >= 64 bound is measured, not assumed:
 *
 *   gcc -O1 -mamx-tile -mamx-int8 -mavx512f -o /tmp/amx_overlap benchmarks/amx_overlap.c
 *   /tmp/amx_overlap            # needs a CPU with AMX-INT8 and Linux >= 5.16
 *
 * Output: ns per loop iteration for each mix; "together" close to the larger of the two
 * parts means they overlap, close to their sum means they do not.
 */
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/syscall.h>

#define ARCH_REQ_XCOMP_PERM 0x1023
#define XFEATURE_XTILEDATA 18

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec + t.tv_nsec * 1e-9;
}

static unsigned char cfg[64] __attribute__((aligned(64)));
static unsigned char tiles[4096] __attribute__((aligned(64)));
static unsigned char sums[8192] __attribute__((aligned(64)));
static float acc[64 * 16] __attribute__((aligned(64)));

/* one K step of the 2 x 2 register tile (C tiles tmm4..7), operands already in tmm0..3 */
#define TDP "tdpbusd %%tmm2,%%tmm0,%%tmm4\n tdpbusd %%tmm3,%%tmm0,%%tmm5\n" \
            "tdpbusd %%tmm2,%%tmm1,%%tmm6\n tdpbusd %%tmm3,%%tmm1,%%tmm7\n"
/* the same with its four tile loads, as the kernel issues them */
#define LDTDP "tileloadd (%0,%1,1), %%tmm0\n tileloadd 1024(%0,%1,1), %%tmm2\n" \
  "tdpbusd %%tmm2,%%tmm0,%%tmm4\n tileloadd 2048(%0,%1,1), %%tmm3\n" \
  "tdpbusd %%tmm3,%%tmm0,%%tmm5\n tileloadd 3072(%0,%1,1), %%tmm1\n" \
  "tdpbusd %%tmm2,%%tmm1,%%tmm6\n tdpbusd %%tmm3,%%tmm1,%%tmm7\n"
/* the step's end: C tiles to memory, zeroed for the next block */
#define STZ "tilestored %%tmm4, (%2,%3,1)\n tilestored %%tmm5, 64(%2,%3,1)\n" \
  "tilestored %%tmm6, 2048(%2,%3,1)\n tilestored %%tmm7, 2112(%2,%3,1)\n" \
  "tilezero %%tmm4\n tilezero %%tmm5\n tilezero %%tmm6\n tilezero %%tmm7\n"

#define F8(r) "vfmadd231ps %%" r "0,%%" r "1,%%" r "2\n vfmadd231ps %%" r "0,%%" r "1,%%" r "3\n" \
  "vfmadd231ps %%" r "0,%%" r "1,%%" r "4\n vfmadd231ps %%" r "0,%%" r "1,%%" r "5\n" \
  "vfmadd231ps %%" r "0,%%" r "1,%%" r "6\n vfmadd231ps %%" r "0,%%" r "1,%%" r "7\n" \
  "vfmadd231ps %%" r "0,%%" r "1,%%" r "8\n vfmadd231ps %%" r "0,%%" r "1,%%" r "9\n"
#define F64(r) F8(r) F8(r) F8(r) F8(r) F8(r) F8(r) F8(r) F8(r)
#define F512(r) F64(r) F64(r) F64(r) F64(r) F64(r) F64(r) F64(r) F64(r)

/* one epilogue vector as the kernel computes it: convert the int32 sums, I = p - cw*sx -
 * cx*sw (2 FMAs), xs*ws*I (2 multiplies), + x0*wa + w0*xk (2 FMAs), added to the float
 * accumulator in memory (load, add, store). Eight vectors in flight (zmm2..17). */
#define EV(o, r, s) "vcvtdq2ps " #o "(%2), %%zmm" #r "\n" \
  "vfnmadd231ps %%zmm0,%%zmm1,%%zmm" #r "\n vfnmadd231ps %%zmm0,%%zmm1,%%zmm" #r "\n" \
  "vmulps %%zmm0,%%zmm1,%%zmm" #s "\n vmulps %%zmm" #s ",%%zmm" #r ",%%zmm" #r "\n" \
  "vfmadd231ps %%zmm0,%%zmm1,%%zmm" #r "\n vfmadd231ps %%zmm0,%%zmm1,%%zmm" #r "\n" \
  "vaddps " #o "(%4),%%zmm" #r ",%%zmm" #r "\n vmovups %%zmm" #r "," #o "(%4)\n"
#define EV8(b) EV(b+0, 2, 3) EV(b+64, 4, 5) EV(b+128, 6, 7) EV(b+192, 8, 9) \
  EV(b+256, 10, 11) EV(b+320, 12, 13) EV(b+384, 14, 15) EV(b+448, 16, 17)
#define EPI EV8(0) EV8(512) EV8(1024) EV8(1536) EV8(2048) EV8(2560) EV8(3072) EV8(3584)

#define ZREGS "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8", "xmm9", "xmm10", \
  "xmm11", "xmm12", "xmm13", "xmm14", "xmm15", "xmm16", "xmm17", "memory"
#define RUN(name, code) do { \
    for (long i = 0; i < n / 10; i++) __asm__ volatile(code :: "r"(tiles), "r"(64L), \
        "r"(sums), "r"(128L), "r"(acc) : ZREGS); \
    double t0 = now(); \
    for (long i = 0; i < n; i++) __asm__ volatile(code :: "r"(tiles), "r"(64L), \
        "r"(sums), "r"(128L), "r"(acc) : ZREGS); \
    printf("  %-52s %7.1f ns\n", name, (now() - t0) / n * 1e9); \
  } while (0)

int main(void) {
  if (syscall(SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)) {
    perror("AMX tile data refused (arch_prctl)");
    return 1;
  }
  memset(cfg, 0, sizeof cfg);
  cfg[0] = 1;  /* palette 1: 8 tiles of 16 rows x 64 bytes */
  for (int t = 0; t < 8; t++) { cfg[16 + 2 * t] = 64; cfg[48 + t] = 16; }
  memset(tiles, 1, sizeof tiles);
  for (int i = 0; i < 64 * 16; i++) acc[i] = 1.0f;
  __asm__ volatile("ldtilecfg %0" :: "m"(cfg));
  __asm__ volatile("tileloadd (%0,%1,1), %%tmm0\n tileloadd (%0,%1,1), %%tmm1\n"
                   "tileloadd (%0,%1,1), %%tmm2\n tileloadd (%0,%1,1), %%tmm3\n"
                   "tilezero %%tmm4\n tilezero %%tmm5\n tilezero %%tmm6\n tilezero %%tmm7\n"
                   :: "r"(tiles), "r"(64L));
  long n = 1000000;
  printf("ns per iteration (data in L1):\n");
  RUN("8 tdpbusd", TDP TDP);
  RUN("512 zmm FMAs", F512("zmm"));
  RUN("8 tdpbusd + 512 zmm FMAs", TDP TDP F512("zmm"));
  RUN("512 ymm FMAs", F512("ymm"));
  RUN("8 tdpbusd + 512 ymm FMAs", TDP TDP F512("ymm"));
  RUN("tile step: 8 tileloadd, 8 tdpbusd, 4 tilestored+zero", LDTDP LDTDP STZ);
  RUN("epilogue: 64 zmm vectors x 8 float ops", EPI);
  RUN("tile step + epilogue", LDTDP LDTDP STZ EPI);
  __asm__ volatile("tilerelease");
  return 0;
}
