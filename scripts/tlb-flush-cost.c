// What a TLB-flushing page-table change costs on this machine while another thread of the
// same process runs on another CPU, against the same with that thread asleep (issue 14:
// why the demo's writer-throughput and cut targets are bound by the machine, not the engine).
//
//   gcc -O2 -pthread -o /tmp/tlb-flush-cost scripts/tlb-flush-cost.c && /tmp/tlb-flush-cost
//
// Per page, 4096 scattered pages of a 64 MiB populated anonymous mapping, three rounds:
//   * whole-range UFFDIO_WRITEPROTECT (one call, one flush), first and again (already
//     protected: the kernel rewrites every entry anyway);
//   * one UFFDIO_WRITEPROTECT un-protect call per page (what serving a write fault costs),
//     then one re-protect call per page (what a cut costs per isolated dirty page);
//   * the kernel's own fork() copy-on-write fault (the parent writes, the child holds).
// Each change of a writable bit ends with a TLB flush, an IPI to every other CPU that is
// running a thread of the process; on a 2-vCPU VM that IPI dominates.
#define _GNU_SOURCE
#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <signal.h>
#include <time.h>
#include <unistd.h>

#define PS 4096
#define N 16384
#define STEP 4

static atomic_int stop, spin_on;
static char *other;

static double now_ns(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec * 1e9 + t.tv_nsec;
}

// The other thread: writes its own small buffer in a loop while spin_on, else sleeps.
static void *spinner(void *arg) {
  (void)arg;
  unsigned long x = 1;
  while (!stop) {
    if (spin_on) {
      for (int i = 0; i < 1000; i++) {
        x = x * 6364136223846793005UL + 1;
        other[(x >> 20) % (64 * PS)] = (char)x;
      }
    } else {
      usleep(1000);
    }
  }
  return NULL;
}

static void wp(int uffd, char *addr, size_t len, int protect) {
  struct uffdio_writeprotect a = {
      .range = {(unsigned long)addr, len},
      .mode = protect ? UFFDIO_WRITEPROTECT_MODE_WP : 0};
  if (ioctl(uffd, UFFDIO_WRITEPROTECT, &a)) {
    perror("UFFDIO_WRITEPROTECT");
    exit(1);
  }
}

int main(void) {
  other = mmap(0, 64 * PS, PROT_READ | PROT_WRITE,
               MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
  char *m = mmap(0, (size_t)N * PS, PROT_READ | PROT_WRITE,
                 MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
  if (other == MAP_FAILED || m == MAP_FAILED) {
    perror("mmap");
    return 1;
  }
  int uffd = syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK);
  struct uffdio_api api = {.api = UFFD_API, .features = 0};
  struct uffdio_register reg = {.range = {(unsigned long)m, (size_t)N * PS},
                                .mode = UFFDIO_REGISTER_MODE_WP};
  if (uffd < 0 || ioctl(uffd, UFFDIO_API, &api) || ioctl(uffd, UFFDIO_REGISTER, &reg)) {
    perror("userfaultfd");
    return 1;
  }
  pthread_t th;
  pthread_create(&th, NULL, spinner, NULL);
  printf("%-22s %12s %12s %14s %14s %14s\n", "other thread", "whole WP", "again",
         "un-protect", "re-protect", "fork COW");
  for (int round = 0; round < 3; round++) {
    for (int busy = 0; busy < 2; busy++) {
      spin_on = busy;
      usleep(20000);
      double t0 = now_ns();
      wp(uffd, m, (size_t)N * PS, 1);
      double whole = (now_ns() - t0) / N;
      t0 = now_ns();
      wp(uffd, m, (size_t)N * PS, 1);
      double again = (now_ns() - t0) / N;
      t0 = now_ns();
      for (int i = 0; i < N; i += STEP) wp(uffd, m + (size_t)i * PS, PS, 0);
      double un = (now_ns() - t0) / (N / STEP);
      t0 = now_ns();
      for (int i = 0; i < N; i += STEP) wp(uffd, m + (size_t)i * PS, PS, 1);
      double re = (now_ns() - t0) / (N / STEP);
      wp(uffd, m, (size_t)N * PS, 0);
      pid_t pid = fork();
      if (pid == 0) {
        sleep(5);
        _exit(0);
      }
      t0 = now_ns();
      for (int i = 0; i < N; i += STEP) m[(size_t)i * PS]++;
      double cow = (now_ns() - t0) / (N / STEP);
      kill(pid, SIGKILL);
      waitpid(pid, NULL, 0);
      printf("%-22s %9.0f ns %9.0f ns %11.2f us %11.2f us %11.2f us\n",
             busy ? "running (other vCPU)" : "asleep", whole, again, un / 1e3, re / 1e3,
             cow / 1e3);
    }
  }
  stop = 1;
  pthread_join(th, NULL);
  return 0;
}
