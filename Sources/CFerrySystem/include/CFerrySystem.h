#ifndef CFERRYSYSTEM_H
#define CFERRYSYSTEM_H

#include <stdint.h>
#include <stddef.h>
#include <sys/types.h>

// Every function returns what the syscall returns (-1 with errno set on failure), so the Swift side
// keeps one errno path. They exist because SwiftGlibc is built without _GNU_SOURCE, and variadic
// ioctl/syscall cannot be called from Swift.

typedef struct {
    uint32_t mask;
    uint32_t blksize;
    uint64_t attributes;
    uint32_t nlink;
    uint32_t uid;
    uint32_t gid;
    uint16_t mode;
    uint64_t ino;
    uint64_t size;
    uint64_t blocks;
    int64_t atime_sec; uint32_t atime_nsec;
    int64_t btime_sec; uint32_t btime_nsec;
    int64_t ctime_sec; uint32_t ctime_nsec;
    int64_t mtime_sec; uint32_t mtime_nsec;
    uint32_t rdev_major, rdev_minor;
    uint32_t dev_major, dev_minor;
    uint64_t mnt_id;  // 0 where the kernel does not say (before 5.8)
} cferry_statx_t;

int cferry_statx(int dirfd, const char *path, int flags, unsigned int mask, cferry_statx_t *out);
int cferry_openat2(int dirfd, const char *path, int flags, unsigned int mode, uint64_t resolve);
int cferry_renameat2(int olddirfd, const char *oldpath, int newdirfd, const char *newpath, unsigned int flags);
ssize_t cferry_copy_file_range(int fd_in, int64_t *off_in, int fd_out, int64_t *off_out, size_t len);
int cferry_ficlone(int dest_fd, int src_fd);
int cferry_fsgetxattr(int fd, uint32_t *xflags, uint32_t *projid, uint32_t *extsize, uint32_t *nextents);
int cferry_fssetxattr(int fd, uint32_t xflags, uint32_t projid);
int cferry_syncfs(int fd);
int cferry_start_writeback(int fd, int64_t offset, int64_t length);
int cferry_fallocate(int fd, int mode, int64_t offset, int64_t len);
long cferry_getdents64(int fd, void *buf, size_t len);
int cferry_quotactl_project(const char *special, int id, uint64_t *out /* 8 values: bytes used, soft, hard; inodes used, soft, hard; grace ends for bytes, inodes */);
int cferry_quotactl_fd_project(int fd, int id, uint64_t *out /* 8 values: bytes used, soft, hard; inodes used, soft, hard; grace ends for bytes, inodes */);
int cferry_mknodat(int dirfd, const char *path, unsigned int mode, uint32_t major, uint32_t minor);
int cferry_utimensat(int dirfd, const char *path, int64_t asec, int64_t ansec, int64_t msec, int64_t mnsec, int flags);
int cferry_futimens(int fd, int64_t asec, int64_t ansec, int64_t msec, int64_t mnsec);

ssize_t cferry_flistxattr(int fd, char *list, size_t size);
ssize_t cferry_llistxattr(const char *path, char *list, size_t size);
ssize_t cferry_fgetxattr(int fd, const char *name, void *value, size_t size);
ssize_t cferry_lgetxattr(const char *path, const char *name, void *value, size_t size);
int cferry_fsetxattr(int fd, const char *name, const void *value, size_t size, int flags);
int cferry_lsetxattr(const char *path, const char *name, const void *value, size_t size, int flags);
int cferry_fremovexattr(int fd, const char *name);

typedef struct {
    uint64_t type, bsize, blocks, bfree, bavail, files, ffree;
} cferry_statfs_t;
int cferry_fstatfs(int fd, cferry_statfs_t *out);

// SIGINT/SIGTERM as a counter a thread can poll (a handler may only touch a sig_atomic_t).
int cferry_install_interrupt_counter(void);
int cferry_interrupt_count(void);
int cferry_hangup_count(void);
// Whether SIGHUP is ignored (the process was started by nohup, or so).
int cferry_hangup_ignored(void);
/// Makes this process not dumpable (PR_SET_DUMPABLE 0): its /proc entries become root's, so
/// the user it runs as cannot ptrace it or open its descriptors through /proc. 0 or -1 (errno).
int cferry_set_undumpable(void);
void cferry_restore_interrupt_defaults(void);

// Starts `path` in a child process, the way `ferry serve` runs work as a user. The child resets
// signal dispositions and the mask, takes the given descriptors as 0/1/2 (-1: keep its own), drops
// to the identity if `change_identity`, asks for SIGTERM when its parent thread dies, changes to
// `directory` (if not NULL), closes every other descriptor and execs. Returns the child's pid, or
// -1 with errno set and `*failed_step` naming the step that failed (see cferry_spawn_step_name).
typedef struct {
    int stdin_fd, stdout_fd, stderr_fd;
    int change_identity;
    uint32_t uid, gid;
    const uint32_t *groups;
    size_t group_count;
    const char *directory;
} cferry_spawn_attributes_t;

pid_t cferry_spawn(const char *path, char *const argv[], char *const envp[],
                   const cferry_spawn_attributes_t *attributes, int *failed_step);
// The call a spawn step makes, e.g. "setresuid" or "execve".
const char *cferry_spawn_step_name(int step);

int cferry_pipe2(int fds[2], int flags);

// write(2) that reports EPIPE instead of letting SIGPIPE end the process: the signal is blocked on
// this thread for the call and a SIGPIPE it raised is taken back before unblocking.
ssize_t cferry_write_nosigpipe(int fd, const void *buffer, size_t count);

// Constants, exported as functions so Swift never hardcodes a number the headers own.
extern const unsigned int CFERRY_RENAME_NOREPLACE;
extern const unsigned int CFERRY_RENAME_EXCHANGE;
extern const uint64_t CFERRY_RESOLVE_BENEATH;
extern const uint64_t CFERRY_RESOLVE_NO_MAGICLINKS;
extern const uint64_t CFERRY_RESOLVE_NO_SYMLINKS;
extern const uint64_t CFERRY_RESOLVE_NO_XDEV;
extern const uint32_t CFERRY_FS_XFLAG_PROJINHERIT;
extern const int CFERRY_SEEK_DATA;
extern const int CFERRY_SEEK_HOLE;
extern const int CFERRY_AT_STATX_SYNC_AS_STAT;
extern const unsigned int CFERRY_STATX_BASIC_STATS;
extern const unsigned int CFERRY_STATX_BTIME;
extern const int CFERRY_FALLOC_FL_KEEP_SIZE;
extern const int CFERRY_FALLOC_FL_PUNCH_HOLE;
extern const int CFERRY_O_PATH;
// CPUs in the calling thread's affinity mask (sched_getaffinity, any mask size), or -1.
int cferry_affinity_cpus(void);

extern const int CFERRY_O_TMPFILE;
extern const int CFERRY_O_NOATIME;
extern const int CFERRY_AT_EMPTY_PATH;

#endif
