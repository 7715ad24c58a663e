#define _GNU_SOURCE
#include "CFerrySystem.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/fs.h>
#include <linux/openat2.h>
#include <linux/quota.h>
#include <linux/dqblk_xfs.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/quota.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/vfs.h>
#include <sys/xattr.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#ifndef SYS_quotactl_fd
#define SYS_quotactl_fd 443
#endif

int cferry_statx(int dirfd, const char *path, int flags, unsigned int mask, cferry_statx_t *out) {
    struct statx sx;
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

static void count_interrupt(int signo) { (void)signo; interrupt_count++; }

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
    return pthread_sigmask(SIG_UNBLOCK, &set, NULL);
}

int cferry_interrupt_count(void) { return (int)interrupt_count; }

void cferry_restore_interrupt_defaults(void) {
    signal(SIGINT, SIG_DFL);
    signal(SIGTERM, SIG_DFL);
}
