#define _GNU_SOURCE
#include "CFerrySystem.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/fs.h>
#include <linux/openat2.h>
#include <linux/quota.h>
#include <linux/dqblk_xfs.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/quota.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/vfs.h>
#include <sys/wait.h>
#include <sys/xattr.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#ifndef SYS_quotactl_fd
#define SYS_quotactl_fd 443
#endif

int cferry_statx(int dirfd, const char *path, int flags, unsigned int mask, cferry_statx_t *out) {
    struct statx sx;
#ifdef STATX_MNT_ID
    mask |= STATX_MNT_ID;
#endif
    int r = statx(dirfd, path, flags, mask, &sx);
    if (r != 0) return r;
    out->mask = sx.stx_mask;
    out->blksize = sx.stx_blksize;
    out->attributes = sx.stx_attributes;
    out->nlink = sx.stx_nlink;
    out->uid = sx.stx_uid;
    out->gid = sx.stx_gid;
    out->mode = sx.stx_mode;
    out->ino = sx.stx_ino;
    out->size = sx.stx_size;
    out->blocks = sx.stx_blocks;
    out->atime_sec = sx.stx_atime.tv_sec; out->atime_nsec = sx.stx_atime.tv_nsec;
    out->btime_sec = sx.stx_btime.tv_sec; out->btime_nsec = sx.stx_btime.tv_nsec;
    out->ctime_sec = sx.stx_ctime.tv_sec; out->ctime_nsec = sx.stx_ctime.tv_nsec;
    out->mtime_sec = sx.stx_mtime.tv_sec; out->mtime_nsec = sx.stx_mtime.tv_nsec;
    out->rdev_major = sx.stx_rdev_major; out->rdev_minor = sx.stx_rdev_minor;
    out->dev_major = sx.stx_dev_major; out->dev_minor = sx.stx_dev_minor;
#ifdef STATX_MNT_ID  // kernel headers 5.8+ (glibc takes its struct statx from them when present)
    out->mnt_id = (sx.stx_mask & STATX_MNT_ID) ? sx.stx_mnt_id : 0;
#else
    out->mnt_id = 0;
#endif
    return 0;
}

int cferry_openat2(int dirfd, const char *path, int flags, unsigned int mode, uint64_t resolve) {
    struct open_how how;
    memset(&how, 0, sizeof how);
    how.flags = (uint64_t)(unsigned int)flags;
    // openat2 rejects a mode unless the call creates: O_CREAT, or all of O_TMPFILE's bits (glibc's
    // __O_TMPFILE includes O_DIRECTORY, so testing that mask alone would match every O_DIRECTORY open).
    int creates = (flags & O_CREAT) || ((flags & O_TMPFILE) == O_TMPFILE);
    how.mode = creates ? mode : 0;
    how.resolve = resolve;
    return (int)syscall(SYS_openat2, dirfd, path, &how, sizeof how);
}

int cferry_renameat2(int olddirfd, const char *oldpath, int newdirfd, const char *newpath, unsigned int flags) {
    return renameat2(olddirfd, oldpath, newdirfd, newpath, flags);
}

ssize_t cferry_copy_file_range(int fd_in, int64_t *off_in, int fd_out, int64_t *off_out, size_t len) {
    loff_t in = *off_in, out = *off_out;
    ssize_t n = copy_file_range(fd_in, &in, fd_out, &out, len, 0);
    if (n > 0) { *off_in = in; *off_out = out; }
    return n;
}

int cferry_ficlone(int dest_fd, int src_fd) { return ioctl(dest_fd, FICLONE, src_fd); }

int cferry_fsgetxattr(int fd, uint32_t *xflags, uint32_t *projid, uint32_t *extsize, uint32_t *nextents) {
    struct fsxattr fa;
    memset(&fa, 0, sizeof fa);
    int r = ioctl(fd, FS_IOC_FSGETXATTR, &fa);
    if (r != 0) return r;
    *xflags = fa.fsx_xflags; *projid = fa.fsx_projid;
    *extsize = fa.fsx_extsize; *nextents = fa.fsx_nextents;
    return 0;
}

int cferry_fssetxattr(int fd, uint32_t xflags, uint32_t projid) {
    struct fsxattr fa;
    memset(&fa, 0, sizeof fa);
    int r = ioctl(fd, FS_IOC_FSGETXATTR, &fa);
    if (r != 0) return r;
    fa.fsx_xflags = xflags;
    fa.fsx_projid = projid;
    return ioctl(fd, FS_IOC_FSSETXATTR, &fa);
}

int cferry_syncfs(int fd) { return syncfs(fd); }

int cferry_start_writeback(int fd, int64_t offset, int64_t length) {
    return sync_file_range(fd, offset, length, SYNC_FILE_RANGE_WRITE);
}

int cferry_fallocate(int fd, int mode, int64_t offset, int64_t len) { return fallocate(fd, mode, offset, len); }

long cferry_getdents64(int fd, void *buf, size_t len) { return syscall(SYS_getdents64, fd, buf, len); }

static void fill_quota(const struct fs_disk_quota *q, uint64_t *out) {
    // XFS reports blocks in 512-byte basic blocks.
    out[0] = (uint64_t)q->d_bcount * 512;
    out[1] = (uint64_t)q->d_blk_softlimit * 512;
    out[2] = (uint64_t)q->d_blk_hardlimit * 512;
    out[3] = q->d_icount;
    out[4] = q->d_ino_softlimit;
    out[5] = q->d_ino_hardlimit;
    // When the soft limit's grace period ends (seconds since the epoch; 0: none is running), with
    // the upper bits the kernel keeps apart since timestamps outgrew 32 bits (FS_DQ_BIGTIME).
    out[6] = (uint64_t)(uint32_t)q->d_btimer;
    out[7] = (uint64_t)(uint32_t)q->d_itimer;
#ifdef FS_DQ_BIGTIME  /* headers of Linux 5.10 and later */
    out[6] |= (uint64_t)(uint8_t)q->d_btimer_hi << 32;
    out[7] |= (uint64_t)(uint8_t)q->d_itimer_hi << 32;
#endif
}

int cferry_quotactl_project(const char *special, int id, uint64_t *out) {
    struct fs_disk_quota q;
    memset(&q, 0, sizeof q);
    int r = quotactl(QCMD(Q_XGETQUOTA, PRJQUOTA), special, id, (caddr_t)&q);
    if (r != 0) return r;
    fill_quota(&q, out);
    return 0;
}

int cferry_quotactl_fd_project(int fd, int id, uint64_t *out) {
    struct fs_disk_quota q;
    memset(&q, 0, sizeof q);
    int r = (int)syscall(SYS_quotactl_fd, fd, QCMD(Q_XGETQUOTA, PRJQUOTA), id, &q);
    if (r != 0) return r;
    fill_quota(&q, out);
    return 0;
}

int cferry_mknodat(int dirfd, const char *path, unsigned int mode, uint32_t maj, uint32_t min) {
    return mknodat(dirfd, path, mode, makedev(maj, min));
}

int cferry_utimensat(int dirfd, const char *path, int64_t asec, int64_t ansec, int64_t msec, int64_t mnsec, int flags) {
    struct timespec ts[2] = {{asec, ansec}, {msec, mnsec}};
    return utimensat(dirfd, path, ts, flags);
}

int cferry_futimens(int fd, int64_t asec, int64_t ansec, int64_t msec, int64_t mnsec) {
    struct timespec ts[2] = {{asec, ansec}, {msec, mnsec}};
    return futimens(fd, ts);
}

const unsigned int CFERRY_RENAME_NOREPLACE = RENAME_NOREPLACE;
const unsigned int CFERRY_RENAME_EXCHANGE = RENAME_EXCHANGE;
const uint64_t CFERRY_RESOLVE_BENEATH = RESOLVE_BENEATH;
const uint64_t CFERRY_RESOLVE_NO_MAGICLINKS = RESOLVE_NO_MAGICLINKS;
const uint64_t CFERRY_RESOLVE_NO_SYMLINKS = RESOLVE_NO_SYMLINKS;
const uint64_t CFERRY_RESOLVE_NO_XDEV = RESOLVE_NO_XDEV;
const uint32_t CFERRY_FS_XFLAG_PROJINHERIT = FS_XFLAG_PROJINHERIT;
const int CFERRY_SEEK_DATA = SEEK_DATA;
const int CFERRY_SEEK_HOLE = SEEK_HOLE;
const int CFERRY_AT_STATX_SYNC_AS_STAT = AT_STATX_SYNC_AS_STAT;
const unsigned int CFERRY_STATX_BASIC_STATS = STATX_BASIC_STATS;
const unsigned int CFERRY_STATX_BTIME = STATX_BTIME;
const int CFERRY_FALLOC_FL_KEEP_SIZE = FALLOC_FL_KEEP_SIZE;
const int CFERRY_FALLOC_FL_PUNCH_HOLE = FALLOC_FL_PUNCH_HOLE;
const int CFERRY_O_PATH = O_PATH;
const int CFERRY_O_TMPFILE = O_TMPFILE;
const int CFERRY_O_NOATIME = O_NOATIME;
const int CFERRY_AT_EMPTY_PATH = AT_EMPTY_PATH;

ssize_t cferry_flistxattr(int fd, char *list, size_t size) { return flistxattr(fd, list, size); }
ssize_t cferry_llistxattr(const char *path, char *list, size_t size) { return llistxattr(path, list, size); }
ssize_t cferry_fgetxattr(int fd, const char *name, void *value, size_t size) { return fgetxattr(fd, name, value, size); }
ssize_t cferry_lgetxattr(const char *path, const char *name, void *value, size_t size) { return lgetxattr(path, name, value, size); }
int cferry_fsetxattr(int fd, const char *name, const void *value, size_t size, int flags) { return fsetxattr(fd, name, value, size, flags); }
int cferry_lsetxattr(const char *path, const char *name, const void *value, size_t size, int flags) { return lsetxattr(path, name, value, size, flags); }
int cferry_fremovexattr(int fd, const char *name) { return fremovexattr(fd, name); }

int cferry_fstatfs(int fd, cferry_statfs_t *out) {
    struct statfs s;
    int r = fstatfs(fd, &s);
    if (r != 0) return r;
    out->type = (uint64_t)(unsigned long)s.f_type & 0xFFFFFFFFu;
    out->bsize = (uint64_t)s.f_bsize;
    out->blocks = s.f_blocks; out->bfree = s.f_bfree; out->bavail = s.f_bavail;
    out->files = s.f_files; out->ffree = s.f_ffree;
    return 0;
}

static volatile sig_atomic_t interrupt_count = 0;
static volatile sig_atomic_t hangup_count = 0;
static int hangup_counted = 0;

static void count_interrupt(int signo) { (void)signo; interrupt_count++; }
static void count_hangup(int signo) { (void)signo; hangup_count++; }

int cferry_install_interrupt_counter(void) {
    struct sigaction action;
    memset(&action, 0, sizeof action);
    action.sa_handler = count_interrupt;
    sigemptyset(&action.sa_mask);
    action.sa_flags = SA_RESTART;
    if (sigaction(SIGINT, &action, NULL) != 0) return -1;
    if (sigaction(SIGTERM, &action, NULL) != 0) return -1;
    // A parent may have started us with these blocked (the mask is inherited): unblock them here,
    // or the handler would never run.
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGTERM);
    // SIGHUP (the terminal went away) is counted apart; a process started with it ignored
    // (nohup) keeps it ignored.
    struct sigaction current;
    if (sigaction(SIGHUP, NULL, &current) == 0 && current.sa_handler != SIG_IGN) {
        struct sigaction hangup = action;
        hangup.sa_handler = count_hangup;
        if (sigaction(SIGHUP, &hangup, NULL) != 0) return -1;
        hangup_counted = 1;
        sigaddset(&set, SIGHUP);
    }
    return pthread_sigmask(SIG_UNBLOCK, &set, NULL);
}

int cferry_interrupt_count(void) { return (int)interrupt_count; }

int cferry_hangup_count(void) { return (int)hangup_count; }

int cferry_set_undumpable(void) {
    return prctl(PR_SET_DUMPABLE, 0, 0, 0, 0);
}

int cferry_hangup_ignored(void) {
    struct sigaction current;
    return sigaction(SIGHUP, NULL, &current) == 0 && current.sa_handler == SIG_IGN;
}

void cferry_restore_interrupt_defaults(void) {
    signal(SIGINT, SIG_DFL);
    signal(SIGTERM, SIG_DFL);
    if (hangup_counted) signal(SIGHUP, SIG_DFL);
    hangup_counted = 0;
}

enum {
    SPAWN_PIPE = 1, SPAWN_FORK, SPAWN_SIGNALS, SPAWN_DESCRIPTORS, SPAWN_SETGROUPS, SPAWN_SETRESGID,
    SPAWN_SETRESUID, SPAWN_PDEATHSIG, SPAWN_PARENT_EXITED, SPAWN_CHDIR, SPAWN_CLOSE, SPAWN_EXEC,
};

const char *cferry_spawn_step_name(int step) {
    switch (step) {
    case SPAWN_PIPE: return "pipe2";
    case SPAWN_FORK: return "fork";
    case SPAWN_SIGNALS: return "sigprocmask";
    case SPAWN_DESCRIPTORS: return "dup2";
    case SPAWN_SETGROUPS: return "setgroups";
    case SPAWN_SETRESGID: return "setresgid";
    case SPAWN_SETRESUID: return "setresuid";
    case SPAWN_PDEATHSIG: return "prctl(PR_SET_PDEATHSIG)";
    case SPAWN_PARENT_EXITED: return "getppid";
    case SPAWN_CHDIR: return "chdir";
    case SPAWN_CLOSE: return "close_range";
    case SPAWN_EXEC: return "execve";
    default: return "spawn";
    }
}

// In the child: tell the parent which step failed and with which errno, then leave.
static void spawn_fail(int report_fd, int step) {
    int message[2] = {step, errno};
    while (write(report_fd, message, sizeof message) < 0 && errno == EINTR) {}
    _exit(127);
}

static int close_from(int first, int last, long open_max) {
    if (first > last) return 0;
#ifdef SYS_close_range
    if (syscall(SYS_close_range, (unsigned int)first, (unsigned int)last, 0) == 0) return 0;
    if (errno != ENOSYS) return -1;
#endif
    for (long fd = first; fd <= last && fd < open_max; fd++) close((int)fd);
    return 0;
}

// Everything between fork and execve runs in a copy of a multithreaded process: only
// async-signal-safe calls, no allocation, and raw syscalls for the credentials (glibc's wrappers
// would try to reach threads that do not exist in the child).
static void spawn_child(const char *path, char *const argv[], char *const envp[],
                        const cferry_spawn_attributes_t *a, int report_fd, pid_t parent, long open_max) {
    struct sigaction action;
    memset(&action, 0, sizeof action);
    action.sa_handler = SIG_DFL;
    sigemptyset(&action.sa_mask);
    for (int signo = 1; signo < NSIG; signo++) {
        if (signo == SIGKILL || signo == SIGSTOP) continue;
        (void)sigaction(signo, &action, NULL);  // glibc's reserved signals answer EINVAL: fine
    }
    sigset_t none;
    sigemptyset(&none);
    if (sigprocmask(SIG_SETMASK, &none, NULL) != 0) spawn_fail(report_fd, SPAWN_SIGNALS);

    // Lift every descriptor we need above 2 first, so that a dup2 into 0, 1 or 2 cannot clobber one
    // still to be placed, and dup2 always clears close-on-exec on the result.
    if (report_fd < 3 && (report_fd = fcntl(report_fd, F_DUPFD_CLOEXEC, 3)) < 0) _exit(127);
    int sources[3] = {a->stdin_fd, a->stdout_fd, a->stderr_fd};
    for (int i = 0; i < 3; i++) {
        if (sources[i] >= 0 && (sources[i] = fcntl(sources[i], F_DUPFD_CLOEXEC, 3)) < 0) spawn_fail(report_fd, SPAWN_DESCRIPTORS);
    }
    for (int i = 0; i < 3; i++) {
        if (sources[i] >= 0 && dup2(sources[i], i) < 0) spawn_fail(report_fd, SPAWN_DESCRIPTORS);
    }

    if (a->change_identity) {
        if (syscall(SYS_setgroups, a->group_count, a->groups) != 0) spawn_fail(report_fd, SPAWN_SETGROUPS);
        if (syscall(SYS_setresgid, a->gid, a->gid, a->gid) != 0) spawn_fail(report_fd, SPAWN_SETRESGID);
        if (syscall(SYS_setresuid, a->uid, a->uid, a->uid) != 0) spawn_fail(report_fd, SPAWN_SETRESUID);
    }
    // After the credentials change, which clears the death signal.
    if (prctl(PR_SET_PDEATHSIG, SIGTERM) != 0) spawn_fail(report_fd, SPAWN_PDEATHSIG);
    if (getppid() != parent) {
        errno = ESRCH;
        spawn_fail(report_fd, SPAWN_PARENT_EXITED);
    }
    if (a->directory != NULL && chdir(a->directory) != 0) spawn_fail(report_fd, SPAWN_CHDIR);
    // The report pipe stays open (it is close-on-exec) so that a failed execve can still be told.
    if (close_from(3, report_fd - 1, open_max) != 0 || close_from(report_fd + 1, ~0U >> 1, open_max) != 0) {
        spawn_fail(report_fd, SPAWN_CLOSE);
    }
    execve(path, argv, envp);
    spawn_fail(report_fd, SPAWN_EXEC);
}

pid_t cferry_spawn(const char *path, char *const argv[], char *const envp[],
                   const cferry_spawn_attributes_t *attributes, int *failed_step) {
    int report[2];
    if (pipe2(report, O_CLOEXEC) != 0) {
        *failed_step = SPAWN_PIPE;
        return -1;
    }
    long open_max = sysconf(_SC_OPEN_MAX);
    if (open_max < 0) open_max = 1024;
    pid_t parent = getpid();

    // No handler of ours may run in the child before it has reset the dispositions.
    sigset_t all, previous;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &previous);
    pid_t pid = fork();
    if (pid == 0) spawn_child(path, argv, envp, attributes, report[1], parent, open_max);
    int fork_errno = errno;
    pthread_sigmask(SIG_SETMASK, &previous, NULL);
    close(report[1]);
    if (pid < 0) {
        close(report[0]);
        *failed_step = SPAWN_FORK;
        errno = fork_errno;
        return -1;
    }

    // End of file: execve succeeded and closed the pipe. Otherwise the child says why it did not.
    int message[2];
    ssize_t n;
    do { n = read(report[0], message, sizeof message); } while (n < 0 && errno == EINTR);
    close(report[0]);
    if (n != (ssize_t)sizeof message) return pid;
    while (waitpid(pid, NULL, 0) < 0 && errno == EINTR) {}
    *failed_step = message[0];
    errno = message[1];
    return -1;
}

int cferry_pipe2(int fds[2], int flags) { return pipe2(fds, flags); }

ssize_t cferry_write_nosigpipe(int fd, const void *buffer, size_t count) {
    sigset_t pipe_only, previous, pending;
    sigemptyset(&pipe_only);
    sigaddset(&pipe_only, SIGPIPE);
    sigpending(&pending);
    int already_pending = sigismember(&pending, SIGPIPE);
    pthread_sigmask(SIG_BLOCK, &pipe_only, &previous);
    ssize_t n = write(fd, buffer, count);
    int saved = errno;
    if (n < 0 && saved == EPIPE && !already_pending) {
        struct timespec now = {0, 0};
        while (sigtimedwait(&pipe_only, NULL, &now) < 0 && errno == EINTR) {}
    }
    pthread_sigmask(SIG_SETMASK, &previous, NULL);
    errno = saved;
    return n;
}

int cferry_affinity_cpus(void) {
    // The mask may be wider than cpu_set_t on machines with more than 1024 CPUs: grow it until
    // the kernel's fits (EINVAL means too small).
    for (int cpus = 1024; cpus <= (1 << 22); cpus *= 2) {
        cpu_set_t *set = CPU_ALLOC(cpus);
        if (set == NULL) return -1;
        size_t size = CPU_ALLOC_SIZE(cpus);
        CPU_ZERO_S(size, set);
        if (sched_getaffinity(0, size, set) == 0) {
            int count = CPU_COUNT_S(size, set);
            CPU_FREE(set);
            return count;
        }
        int saved = errno;
        CPU_FREE(set);
        if (saved != EINVAL) { errno = saved; return -1; }
    }
    return -1;
}
