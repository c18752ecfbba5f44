/* rqcompile's "idle threads only" parallel launcher for TVM-built CPU kernels (parallel.py).
 *
 * A kernel's parallel loop is split into T chunks (the lambda slices its loop into
 * penv->num_task static slices, so any T works). The calling thread and the pool's workers
 * *claim* chunks one at a time from one atomic word; the caller starts at once and never
 * waits for a worker to arrive, only for chunks a worker has already claimed to finish. A
 * worker that is not running (its core is busy with torch, ONNX Runtime or another process)
 * simply claims nothing, and the call runs at the caller's one-thread speed instead of
 * waiting a scheduler time slice at a join. Workers spin briefly after a launch (the next
 * loop of the same call usually follows within microseconds), then sleep on a futex: no
 * spinning between calls.
 *
 * The claim word packs [gen:32 | n:8 | T:12 | next:12]: a launch's number, its thread count
 * (worker w joins only if w < n), its chunk count and the next unclaimed chunk. A claim is a
 * compare-and-swap of next -> next + 1 on the current word, so a late worker can never claim
 * a chunk of a finished launch. One launch at a time: a second thread that finds the pool
 * busy runs its loop serially on itself.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <linux/futex.h>
#include <pthread.h>
#include <sched.h>
#include <stdint.h>
#include <stddef.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

typedef struct {
  void* sync_handle;
  int32_t num_task;
} TVMParallelGroupEnv;

typedef int (*FTVMParallelLambda)(int task_id, TVMParallelGroupEnv* penv, void* cdata);
typedef void (*set_error_fn)(const char* kind, const char* message);

#define MAX_WORKERS 255
#define MAX_CHUNKS 4095

static set_error_fn p_set_error;
static int64_t spin_ns = 50000; /* a worker's spin after its last chunk before sleeping */
static int64_t wait_spin_ns = 20000; /* the caller's spin for late chunks before sleeping */
static int64_t prewake_ns = 200000; /* how long workers woken by rq_pool_prewake spin */
static int64_t prewake_until; /* workers spin at least until then (rq_pool_prewake) */
static int chunks_per_thread = 4;

static __thread int tl_threads; /* threads for this caller's launches; 0: all workers + 1 */
static __thread int tl_is_worker;

static uint64_t ticket; /* [gen:32 | n:8 | T:12 | next:12] */
static uint32_t seq;    /* futex word: bumped at every launch */
static int sleepers;
static uint32_t done_count; /* also a futex word: the caller sleeps on it for late chunks */
static int caller_sleeping;
static int worker_failed;
static FTVMParallelLambda job_f;
static void* job_cdata;

static pthread_mutex_t launch_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_mutex_t grow_mu = PTHREAD_MUTEX_INITIALIZER;
static int n_workers;
static int atfork_set;
static uint64_t n_launches, n_team_launches, n_worker_chunks, wait_ns, n_prewakes;

static inline void cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  __asm__ __volatile__("yield");
#endif
}

static int64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static void futex_wait(uint32_t* addr, uint32_t val) {
  syscall(SYS_futex, addr, FUTEX_WAIT_PRIVATE, val, NULL, NULL, 0);
}

static void futex_wake(uint32_t* addr, int n) {
  syscall(SYS_futex, addr, FUTEX_WAKE_PRIVATE, n, NULL, NULL, 0);
}

#define T_NEXT(t) ((int)((t)&0xFFF))
#define T_COUNT(t) ((int)(((t) >> 12) & 0xFFF))
#define T_N(t) ((int)(((t) >> 24) & 0xFF))

/* claim and run chunks of the current launch; w: 0 for the caller, 1.. for workers */
static int run_chunks(int w) {
  int failed = 0;
  uint64_t t = __atomic_load_n(&ticket, __ATOMIC_ACQUIRE);
  for (;;) {
    int next = T_NEXT(t), count = T_COUNT(t);
    if (next >= count || (w > 0 && w >= T_N(t))) break;
    if (!__atomic_compare_exchange_n(&ticket, &t, t + 1, 0, __ATOMIC_ACQ_REL,
                                     __ATOMIC_ACQUIRE)) {
      continue; /* t now holds the current word */
    }
    /* chunk `next` of this launch is ours: the launch cannot finish before we count it
     * done, so its job fields are still the ones published with this word */
    TVMParallelGroupEnv env;
    env.sync_handle = NULL;
    env.num_task = count;
    if (job_f(next, &env, job_cdata) != 0) {
      if (w == 0) failed = 1; /* the error is set on the calling thread */
      else __atomic_store_n(&worker_failed, 1, __ATOMIC_RELAXED);
    }
    if (w > 0) {
      __atomic_fetch_add(&n_worker_chunks, 1, __ATOMIC_RELAXED);
      uint32_t d = __atomic_add_fetch(&done_count, 1, __ATOMIC_SEQ_CST);
      if ((int)d == count && __atomic_load_n(&caller_sleeping, __ATOMIC_SEQ_CST)) {
        futex_wake(&done_count, 1);
      }
    } else {
      __atomic_fetch_add(&done_count, 1, __ATOMIC_SEQ_CST);
    }
    t = __atomic_load_n(&ticket, __ATOMIC_ACQUIRE);
  }
  return failed;
}

static void* worker_main(void* arg) {
  int w = (int)(intptr_t)arg;
  tl_is_worker = 1;
  uint32_t seen = __atomic_load_n(&seq, __ATOMIC_ACQUIRE);
  for (;;) {
    uint32_t s = __atomic_load_n(&seq, __ATOMIC_ACQUIRE);
    if (s == seen) {
      int64_t until = now_ns() + spin_ns;
      int i = 0;
      while ((s = __atomic_load_n(&seq, __ATOMIC_ACQUIRE)) == seen) {
        cpu_relax();
        if ((++i & 63) == 0) {
          int64_t t = now_ns();
          if (t > until && t > __atomic_load_n(&prewake_until, __ATOMIC_RELAXED)) break;
        }
      }
      if (s == seen) {
        __atomic_fetch_add(&sleepers, 1, __ATOMIC_SEQ_CST);
        if (__atomic_load_n(&seq, __ATOMIC_SEQ_CST) == seen) futex_wait(&seq, seen);
        __atomic_fetch_sub(&sleepers, 1, __ATOMIC_SEQ_CST);
        continue;
      }
    }
    seen = s;
    run_chunks(w);
  }
  return NULL;
}

static void reset_in_child(void) {
  /* after fork() only the forking thread exists: start a new pool on demand */
  n_workers = 0;
  sleepers = 0;
  pthread_mutex_init(&launch_mu, NULL);
  pthread_mutex_init(&grow_mu, NULL);
}

/* make sure n - 1 workers exist; returns how many threads a launch can use */
static int grow(int n) {
  if (n - 1 <= __atomic_load_n(&n_workers, __ATOMIC_ACQUIRE)) return n;
  pthread_mutex_lock(&grow_mu);
  if (!atfork_set) {
    pthread_atfork(NULL, NULL, reset_in_child);
    atfork_set = 1;
  }
  while (n_workers < n - 1 && n_workers < MAX_WORKERS) {
    pthread_t th;
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    int rc = pthread_create(&th, &attr, worker_main, (void*)(intptr_t)(n_workers + 1));
    pthread_attr_destroy(&attr);
    if (rc != 0) break;
    __atomic_store_n(&n_workers, n_workers + 1, __ATOMIC_RELEASE);
  }
  int have = n_workers + 1;
  pthread_mutex_unlock(&grow_mu);
  return n < have ? n : have;
}

int rq_pool_init(int64_t spin_ns_, int chunks_per_thread_, void* set_error) {
  if (spin_ns_ >= 0) spin_ns = spin_ns_;
  if (chunks_per_thread_ > 0) chunks_per_thread = chunks_per_thread_;
  p_set_error = (set_error_fn)set_error;
  return 0;
}

void rq_pool_set_threads(int n) { tl_threads = n > 0 ? n : 0; }

/* A call that will launch parallel loops is starting: wake sleeping workers now and keep
 * them spinning for prewake_ns, so they are running when its first loop comes. Waking a
 * sleeping thread takes tens of microseconds (on a VM, an idle virtual CPU must be woken
 * too); paid inside the first loop (the activation quantize, a short one), that loop ran
 * almost alone on the caller. Bumping seq without a launch is harmless: a woken worker
 * finds no unclaimed chunk and goes back to spinning. */
void rq_pool_prewake(void) {
  if (tl_is_worker) return;
  __atomic_store_n(&prewake_until, now_ns() + prewake_ns, __ATOMIC_RELAXED);
  if (__atomic_load_n(&sleepers, __ATOMIC_SEQ_CST) > 0) {
    __atomic_fetch_add(&n_prewakes, 1, __ATOMIC_RELAXED);
    __atomic_fetch_add(&seq, 1, __ATOMIC_SEQ_CST);
    futex_wake(&seq, MAX_WORKERS);
  }
}

/* prewakes that found sleeping workers, and the workers sleeping now (tests) */
uint64_t rq_pool_prewakes(void) { return __atomic_load_n(&n_prewakes, __ATOMIC_RELAXED); }

int rq_pool_sleepers(void) { return __atomic_load_n(&sleepers, __ATOMIC_SEQ_CST); }

int rq_pool_get_threads(void) { return tl_threads; }

int rq_pool_workers(void) { return __atomic_load_n(&n_workers, __ATOMIC_RELAXED); }

uint64_t rq_pool_launches(void) { return __atomic_load_n(&n_launches, __ATOMIC_RELAXED); }

uint64_t rq_pool_team_launches(void) {
  return __atomic_load_n(&n_team_launches, __ATOMIC_RELAXED);
}

/* chunks run by workers (not the caller) so far */
uint64_t rq_pool_worker_chunks(void) {
  return __atomic_load_n(&n_worker_chunks, __ATOMIC_RELAXED);
}

/* time callers spent waiting for chunks claimed by workers, in ns */
uint64_t rq_pool_wait_ns(void) { return __atomic_load_n(&wait_ns, __ATOMIC_RELAXED); }

static int run_serial(FTVMParallelLambda f, void* cdata, int tasks) {
  TVMParallelGroupEnv env;
  env.sync_handle = NULL;
  env.num_task = tasks;
  for (int t = 0; t < tasks; ++t) {
    if (f(t, &env, cdata) != 0) return -1;
  }
  return 0;
}

int rq_pool_parallel_launch(FTVMParallelLambda f, void* cdata, int num_task) {
  __atomic_fetch_add(&n_launches, 1, __ATOMIC_RELAXED);
  int n = tl_threads;
  if (n <= 0) { /* not set on this thread: the CPUs it may run on */
    cpu_set_t set;
    n = sched_getaffinity(0, sizeof(set), &set) == 0 ? CPU_COUNT(&set) : 1;
  }
  if (n > MAX_WORKERS) n = MAX_WORKERS;
  int tasks = num_task > 0 ? num_task : n * chunks_per_thread;
  if (tasks > MAX_CHUNKS) {
    if (num_task > 0) return run_serial(f, cdata, num_task);
    tasks = MAX_CHUNKS;
  }
  if (n <= 1 || tasks <= 1 || tl_is_worker) return run_serial(f, cdata, num_task > 0 ? num_task : 1);
  if (pthread_mutex_trylock(&launch_mu) != 0) {
    return run_serial(f, cdata, tasks); /* another thread's launch holds the workers */
  }
  n = grow(n);
  if (n <= 1) {
    pthread_mutex_unlock(&launch_mu);
    return run_serial(f, cdata, tasks);
  }
  __atomic_fetch_add(&n_team_launches, 1, __ATOMIC_RELAXED);
  job_f = f;
  job_cdata = cdata;
  __atomic_store_n(&done_count, 0u, __ATOMIC_RELAXED);
  __atomic_store_n(&worker_failed, 0, __ATOMIC_RELAXED);
  uint64_t gen = (__atomic_load_n(&ticket, __ATOMIC_RELAXED) >> 32) + 1;
  __atomic_store_n(&ticket, (gen << 32) | ((uint64_t)n << 24) | ((uint64_t)tasks << 12),
                   __ATOMIC_RELEASE);
  __atomic_fetch_add(&seq, 1, __ATOMIC_SEQ_CST);
  if (__atomic_load_n(&sleepers, __ATOMIC_SEQ_CST) > 0) futex_wake(&seq, n - 1);
  int caller_failed = run_chunks(0);
  /* wait only for chunks workers have claimed and not finished: spin briefly, then sleep,
   * so this core is free for the worker if the scheduler moves it here */
  int64_t t_wait = now_ns();
  int64_t until = t_wait + wait_spin_ns;
  int i = 0;
  uint32_t d;
  while ((int)(d = __atomic_load_n(&done_count, __ATOMIC_ACQUIRE)) < tasks) {
    cpu_relax();
    if ((++i & 63) == 0 && now_ns() > until) {
      __atomic_store_n(&caller_sleeping, 1, __ATOMIC_SEQ_CST);
      d = __atomic_load_n(&done_count, __ATOMIC_SEQ_CST);
      if ((int)d < tasks) futex_wait(&done_count, d);
      __atomic_store_n(&caller_sleeping, 0, __ATOMIC_SEQ_CST);
    }
  }
  __atomic_thread_fence(__ATOMIC_ACQUIRE);
  if (i > 0) __atomic_fetch_add(&wait_ns, (uint64_t)(now_ns() - t_wait), __ATOMIC_RELAXED);
  int wf = __atomic_load_n(&worker_failed, __ATOMIC_RELAXED);
  pthread_mutex_unlock(&launch_mu);
  if (caller_failed) return -1;
  if (wf) {
    if (p_set_error) {
      p_set_error("RuntimeError",
                  "a parallel task of an rqcompile kernel failed on a worker thread");
    }
    return -1;
  }
  return 0;
}
