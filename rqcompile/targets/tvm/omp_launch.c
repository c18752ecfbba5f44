/* rqcompile's parallel launcher for TVM-built CPU kernels (see parallel.py).
 *
 * A kernel's parallel loop calls, through a pointer stored in its library, a launcher with
 * (lambda, closure, num_task); the lambda runs task `task_id` of `penv->num_task` static
 * slices. This launcher runs those tasks on the OpenMP team of the OpenMP runtime torch has
 * already loaded, reached through GOMP_parallel (the libgomp ABI, also exported by LLVM's and
 * Intel's OpenMP runtimes): our loops and torch's run on one pool of threads.
 *
 * No OpenMP header or link: parallel.py hands in the runtime's entry points (rq_omp_init), so
 * any C compiler builds this file and it cannot bind to a second OpenMP runtime.
 */
#include <stdint.h>
#include <stddef.h>

typedef struct {
  void* sync_handle;
  int32_t num_task;
} TVMParallelGroupEnv;

typedef int (*FTVMParallelLambda)(int task_id, TVMParallelGroupEnv* penv, void* cdata);
typedef void (*gomp_parallel_fn)(void (*fn)(void*), void* data, unsigned num_threads,
                                 unsigned flags);
typedef int (*omp_int_fn)(void);
typedef void (*set_error_fn)(const char* kind, const char* message);

static gomp_parallel_fn p_parallel;
static omp_int_fn p_thread_num;
static omp_int_fn p_num_threads;
static omp_int_fn p_max_threads;
static set_error_fn p_set_error;

/* threads for this calling thread's next launches; 0: the OpenMP runtime's max threads */
static __thread int tl_threads;
static uint64_t n_launches;
static uint64_t n_team_launches;

struct job {
  FTVMParallelLambda f;
  void* cdata;
  int num_task;
  int caller_failed;
  int worker_failed;
};

static void run_team(void* arg) {
  struct job* j = (struct job*)arg;
  int tid = p_thread_num();
  int team = p_num_threads();
  TVMParallelGroupEnv env;
  env.sync_handle = NULL;
  env.num_task = j->num_task;
  /* a team smaller than asked (nested region, thread limit): each thread takes every
   * team-th task, so every task runs once whatever the team size */
  for (int t = tid; t < j->num_task; t += team) {
    if (j->f(t, &env, j->cdata) != 0) {
      if (tid == 0) {
        j->caller_failed = 1; /* its error is already set on the calling thread */
      } else {
        __atomic_store_n(&j->worker_failed, 1, __ATOMIC_RELAXED);
      }
    }
  }
}

int rq_omp_init(void* parallel, void* thread_num, void* num_threads, void* max_threads,
                void* set_error) {
  if (!parallel || !thread_num || !num_threads || !max_threads) return -1;
  p_parallel = (gomp_parallel_fn)parallel;
  p_thread_num = (omp_int_fn)thread_num;
  p_num_threads = (omp_int_fn)num_threads;
  p_max_threads = (omp_int_fn)max_threads;
  p_set_error = (set_error_fn)set_error;
  return 0;
}

void rq_omp_set_threads(int n) { tl_threads = n > 0 ? n : 0; }

int rq_omp_get_threads(void) { return tl_threads; }

uint64_t rq_omp_launches(void) { return __atomic_load_n(&n_launches, __ATOMIC_RELAXED); }

uint64_t rq_omp_team_launches(void) {
  return __atomic_load_n(&n_team_launches, __ATOMIC_RELAXED);
}

int rq_omp_parallel_launch(FTVMParallelLambda f, void* cdata, int num_task) {
  __atomic_fetch_add(&n_launches, 1, __ATOMIC_RELAXED);
  int n = tl_threads > 0 ? tl_threads : p_max_threads();
  int tasks = num_task > 0 ? num_task : n;
  if (n > tasks) n = tasks;
  if (n <= 1) { /* serial: no team, no wake-up */
    TVMParallelGroupEnv env;
    env.sync_handle = NULL;
    env.num_task = tasks;
    for (int t = 0; t < tasks; ++t) {
      if (f(t, &env, cdata) != 0) return -1;
    }
    return 0;
  }
  __atomic_fetch_add(&n_team_launches, 1, __ATOMIC_RELAXED);
  struct job j;
  j.f = f;
  j.cdata = cdata;
  j.num_task = tasks;
  j.caller_failed = 0;
  j.worker_failed = 0;
  p_parallel(run_team, &j, (unsigned)n, 0u);
  if (j.caller_failed) return -1;
  if (j.worker_failed) {
    if (p_set_error) {
      p_set_error("RuntimeError",
                  "a parallel task of an rqcompile kernel failed on an OpenMP worker thread");
    }
    return -1;
  }
  return 0;
}
