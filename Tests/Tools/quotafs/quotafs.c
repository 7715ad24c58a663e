/*
 * quotafs - a FUSE passthrough filesystem with a byte budget.
 *
 * Every operation is forwarded to a backing directory.  Bytes written with
 * write() (and copy_file_range()) are charged against a budget; once the
 * budget is used up, further writes - and the creation of new inodes - fail
 * with a configurable errno (EDQUOT by default).  Meant for tests on kernels
 * without disk-quota support.
 *
 * Usage:
 *   quotafs BACKING_DIR MOUNTPOINT --budget BYTES [--errno EDQUOT|ENOSPC|EIO]
 *           [--statfs-budget] [--no-default-permissions] [FUSE options...]
 *
 * Build:
 *   gcc -Wall -Wextra -O2 $(pkg-config --cflags fuse3) quotafs.c \
 *       $(pkg-config --libs fuse3) -o quotafs
 *
 * Budget rules:
 *   - write(): if the request fits, it is passed through whole.  If only part
 *     fits, only that part is written (a short write).  If nothing is left,
 *     the call fails with the configured errno.  Bytes a backing write did
 *     not actually write are given back to the budget.
 *   - copy_file_range(): passed through to the backing files, charged exactly
 *     like write().
 *   - fallocate() and truncate() growing a file are not charged.
 *   - create/mkdir/mknod/symlink/link fail with the errno once the budget is
 *     0 (inode quota).  open(O_CREAT) of a file that already exists still
 *     works.  Nothing that frees space (unlink, rmdir, truncate down) gives
 *     budget back: the budget counts bytes written, not bytes in use.
 *   - statfs() reports the backing filesystem; with --statfs-budget the free
 *     and available block counts are capped at the remaining budget.
 *   - SIGUSR1 lifts the budget for good: the fault has passed (a transient
 *     EIO that clears, a quota raised by an administrator).
 */
#define FUSE_USE_VERSION 31
#define _GNU_SOURCE

#include <fuse.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/types.h>
#include <sys/xattr.h>
#include <unistd.h>

#ifndef RENAME_NOREPLACE
#define RENAME_NOREPLACE (1 << 0)
#endif
#ifndef RENAME_EXCHANGE
#define RENAME_EXCHANGE (1 << 1)
#endif

/* ---- global state ------------------------------------------------------ */

static int backing_fd = -1;         /* directory fd of the backing dir */
static char backing_path[PATH_MAX]; /* absolute path of the backing dir */
static int quota_errno = EDQUOT;
static int statfs_budget;
static int writeback_cache;         /* --writeback-cache: writes land in the page cache */
static int refuse_xattrs;           /* --refuse-xattrs: setxattr answers EOPNOTSUPP */
static int no_rename_flags;         /* --no-rename-flags: renameat2 flags answer EINVAL */
static const char *hang_name;       /* --hang NAME: opening a directory NAME blocks (a hung mount) */
static const char *bad_name;        /* --read-eio NAME: reading a file NAME fails with EIO */
static unsigned char bad_fds[65536]; /* backing fds opened on such a file (reads have no path) */
static int fsync_log_fd = -1;       /* --fsync-log FILE: each fsync's path, a line each */

/* Appends "file PATH\n" or "dir PATH\n" to the fsync log, if there is one: PATH from the mount's
 * root, found from the backing descriptor (libfuse gives fsync no path once a file is open). */
static void log_fsync(const char *kind, int fd)
{
	char proc[64], target[PATH_MAX], line[PATH_MAX + 16];
	size_t prefix = strlen(backing_path);
	ssize_t len;
	int n;

	if (fsync_log_fd < 0)
		return;
	snprintf(proc, sizeof proc, "/proc/self/fd/%d", fd);
	len = readlink(proc, target, sizeof target - 1);
	if (len < 0)
		return;
	target[len] = '\0';
	const char *shown = strncmp(target, backing_path, prefix) == 0 ? target + prefix : target;
	n = snprintf(line, sizeof line, "%s %s\n", kind, *shown ? shown : "/");
	if (n > 0 && (size_t)n < sizeof line && write(fsync_log_fd, line, (size_t)n) < 0)
		perror("quotafs: fsync log");
}

static pthread_mutex_t budget_mutex = PTHREAD_MUTEX_INITIALIZER;
static uint64_t budget_left;
static volatile sig_atomic_t budget_lifted; /* set by SIGUSR1 */

static void lift_budget(int sig)
{
	(void)sig;
	budget_lifted = 1;
}

/* Reserve up to `want` bytes; returns how many were granted (maybe 0). */
static size_t budget_take(size_t want)
{
	size_t got;

	pthread_mutex_lock(&budget_mutex);
	if (budget_lifted)
		budget_left = UINT64_MAX / 2;
	got = (uint64_t)want < budget_left ? want : (size_t)budget_left;
	budget_left -= got;
	pthread_mutex_unlock(&budget_mutex);
	return got;
}

static void budget_give_back(size_t n)
{
	pthread_mutex_lock(&budget_mutex);
	budget_left += n;
	pthread_mutex_unlock(&budget_mutex);
}

static uint64_t budget_remaining(void)
{
	uint64_t left;

	pthread_mutex_lock(&budget_mutex);
	if (budget_lifted)
		budget_left = UINT64_MAX / 2;
	left = budget_left;
	pthread_mutex_unlock(&budget_mutex);
	return left;
}

/* ---- path helpers ------------------------------------------------------ */

/* FUSE paths start with '/'; make them relative to backing_fd. */
static const char *rel(const char *path)
{
	while (*path == '/')
		path++;
	return *path ? path : ".";
}

/* Absolute backing path, for calls that have no *at() form. */
static int abs_path(const char *path, char *out, size_t outlen)
{
	int n = snprintf(out, outlen, "%s/%s", backing_path, rel(path));

	if (n < 0 || (size_t)n >= outlen)
		return -ENAMETOOLONG;
	return 0;
}

static int neg_errno(int r)
{
	return r == -1 ? -errno : r;
}

/* Does the directory holding `path` have the set-group-ID bit? */
static int parent_is_setgid(const char *path)
{
	char buf[PATH_MAX];
	const char *r = rel(path);
	char *slash;
	struct stat st;

	if (strlen(r) >= sizeof(buf))
		return 0;
	strcpy(buf, r);
	slash = strrchr(buf, '/');
	if (slash)
		*slash = '\0';
	if (fstatat(backing_fd, slash ? buf : ".", &st, AT_SYMLINK_NOFOLLOW) == -1)
		return 0;
	return (st.st_mode & S_ISGID) != 0;
}

/*
 * The daemon normally runs as root, so new nodes would belong to root.  Give
 * them to the calling user instead, as a real filesystem would.
 */
static int own_new_node(const char *path, int fd)
{
	struct fuse_context *ctx = fuse_get_context();
	uid_t uid;
	gid_t gid;
	int r;

	if (geteuid() != 0 || ctx == NULL)
		return 0;
	if (ctx->uid == geteuid() && ctx->gid == getegid())
		return 0;
	uid = ctx->uid;
	gid = parent_is_setgid(path) ? (gid_t)-1 : ctx->gid;
	if (fd >= 0)
		r = fchown(fd, uid, gid);
	else
		r = fchownat(backing_fd, rel(path), uid, gid, AT_SYMLINK_NOFOLLOW);
	return neg_errno(r);
}

static mode_t apply_umask(mode_t mode)
{
	struct fuse_context *ctx = fuse_get_context();

	/* ctx->umask is 0 unless the kernel left masking to us. */
	return ctx ? (mode & ~ctx->umask) : mode;
}

/* ---- operations -------------------------------------------------------- */

static void *q_init(struct fuse_conn_info *conn, struct fuse_config *cfg)
{
	if (writeback_cache)
		conn->want |= FUSE_CAP_WRITEBACK_CACHE;
	cfg->use_ino = 1;     /* real inode numbers: hard links stay visible */
	cfg->hard_remove = 1; /* no .fuse_hidden files; ops use the fd */
	cfg->nullpath_ok = 1;
	return NULL;
}

static int q_getattr(const char *path, struct stat *st, struct fuse_file_info *fi)
{
	if (fi)
		return neg_errno(fstat((int)fi->fh, st));
	return neg_errno(fstatat(backing_fd, rel(path), st, AT_SYMLINK_NOFOLLOW));
}

static int q_access(const char *path, int mask)
{
	return neg_errno(faccessat(backing_fd, rel(path), mask, 0));
}

static int q_readlink(const char *path, char *buf, size_t size)
{
	ssize_t n;

	if (size == 0)
		return -EINVAL;
	n = readlinkat(backing_fd, rel(path), buf, size - 1);
	if (n == -1)
		return -errno;
	buf[n] = '\0';
	return 0;
}

struct qdir {
	DIR *dp;
	struct dirent *pending; /* entry read but not yet accepted by filler */
	off_t pos;              /* offset the next entry will be read from */
};

/* --hang NAME: a directory named NAME does not answer being opened until it is
 * removed from the backing directory, as a hung NFS or Lustre mount does not. The
 * caller waits in the kernel, SIGKILL or not, once this request has been read.
 * While it waits, NAME.hung exists beside NAME, for a test to know it does. */
static void hang_while_present(const char *path)
{
	const char *slash = strrchr(path, '/');
	const char *last = slash ? slash + 1 : path;
	char marker[PATH_MAX];
	int fd;

	if (hang_name == NULL || strcmp(last, hang_name) != 0)
		return;
	if (snprintf(marker, sizeof(marker), "%s.hung", rel(path)) >= (int)sizeof(marker))
		return;
	fd = openat(backing_fd, marker, O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
	if (fd != -1)
		close(fd);
	while (faccessat(backing_fd, rel(path), F_OK, AT_SYMLINK_NOFOLLOW) == 0)
		usleep(20000);
	unlinkat(backing_fd, marker, 0);
}

static int q_opendir(const char *path, struct fuse_file_info *fi)
{
	struct qdir *d;
	int fd;

	hang_while_present(path);
	fd = openat(backing_fd, rel(path), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd == -1)
		return -errno;
	d = calloc(1, sizeof(*d));
	if (d == NULL) {
		close(fd);
		return -ENOMEM;
	}
	d->dp = fdopendir(fd);
	if (d->dp == NULL) {
		int e = errno;
		close(fd);
		free(d);
		return -e;
	}
	fi->fh = (uint64_t)(uintptr_t)d;
	return 0;
}

static int q_readdir(const char *path, void *buf, fuse_fill_dir_t filler,
		     off_t off, struct fuse_file_info *fi,
		     enum fuse_readdir_flags flags)
{
	struct qdir *d = (struct qdir *)(uintptr_t)fi->fh;

	(void)path;
	if (off != d->pos) {
		seekdir(d->dp, off);
		d->pending = NULL;
		d->pos = off;
	}
	for (;;) {
		struct stat st;
		enum fuse_fill_dir_flags fill = 0;
		off_t next;

		if (d->pending == NULL) {
			errno = 0;
			d->pending = readdir(d->dp);
			if (d->pending == NULL) {
				if (errno)
					return -errno;
				break;
			}
		}
		memset(&st, 0, sizeof(st));
		if ((flags & FUSE_READDIR_PLUS) &&
		    fstatat(dirfd(d->dp), d->pending->d_name, &st,
			    AT_SYMLINK_NOFOLLOW) == 0) {
			fill = FUSE_FILL_DIR_PLUS;
		} else {
			memset(&st, 0, sizeof(st));
			st.st_ino = d->pending->d_ino;
			st.st_mode = DTTOIF(d->pending->d_type);
		}
		next = telldir(d->dp);
		if (filler(buf, d->pending->d_name, &st, next, fill))
			break; /* buffer full: keep the entry for next call */
		d->pending = NULL;
		d->pos = next;
	}
	return 0;
}

static int q_releasedir(const char *path, struct fuse_file_info *fi)
{
	struct qdir *d = (struct qdir *)(uintptr_t)fi->fh;

	(void)path;
	closedir(d->dp);
	free(d);
	return 0;
}

static int q_fsyncdir(const char *path, int datasync, struct fuse_file_info *fi)
{
	struct qdir *d = (struct qdir *)(uintptr_t)fi->fh;
	int fd = dirfd(d->dp);

	(void)path;
	log_fsync("dir", fd);
	return neg_errno(datasync ? fdatasync(fd) : fsync(fd));
}

static int q_mknod(const char *path, mode_t mode, dev_t rdev)
{
	int r;

	if (budget_remaining() == 0)
		return -quota_errno;
	mode = apply_umask(mode);
	if (S_ISREG(mode)) {
		int fd = openat(backing_fd, rel(path),
				O_CREAT | O_EXCL | O_WRONLY | O_CLOEXEC, mode);
		if (fd == -1)
			return -errno;
		close(fd);
		r = 0;
	} else if (S_ISFIFO(mode)) {
		r = mkfifoat(backing_fd, rel(path), mode);
	} else {
		r = mknodat(backing_fd, rel(path), mode, rdev);
	}
	if (r == -1)
		return -errno;
	r = own_new_node(path, -1);
	if (r < 0)
		unlinkat(backing_fd, rel(path), 0);
	return r;
}

static int q_mkdir(const char *path, mode_t mode)
{
	int r;

	if (budget_remaining() == 0)
		return -quota_errno;
	if (mkdirat(backing_fd, rel(path), apply_umask(mode)) == -1)
		return -errno;
	r = own_new_node(path, -1);
	if (r < 0)
		unlinkat(backing_fd, rel(path), AT_REMOVEDIR);
	return r;
}

static int q_unlink(const char *path)
{
	return neg_errno(unlinkat(backing_fd, rel(path), 0));
}

static int q_rmdir(const char *path)
{
	return neg_errno(unlinkat(backing_fd, rel(path), AT_REMOVEDIR));
}

static int q_symlink(const char *target, const char *linkpath)
{
	int r;

	if (budget_remaining() == 0)
		return -quota_errno;
	if (symlinkat(target, backing_fd, rel(linkpath)) == -1)
		return -errno;
	r = own_new_node(linkpath, -1);
	if (r < 0)
		unlinkat(backing_fd, rel(linkpath), 0);
	return r;
}

static int q_rename(const char *from, const char *to, unsigned int flags)
{
	if (flags & ~(unsigned int)(RENAME_NOREPLACE | RENAME_EXCHANGE))
		return -EINVAL;
	if (flags != 0 && no_rename_flags)
		return -EINVAL;
	return neg_errno(renameat2(backing_fd, rel(from), backing_fd, rel(to),
				   flags));
}

static int q_link(const char *from, const char *to)
{
	if (budget_remaining() == 0)
		return -quota_errno;
	return neg_errno(linkat(backing_fd, rel(from), backing_fd, rel(to), 0));
}

static int q_chmod(const char *path, mode_t mode, struct fuse_file_info *fi)
{
	struct stat st;

	if (fi)
		return neg_errno(fchmod((int)fi->fh, mode));
	if (fstatat(backing_fd, rel(path), &st, AT_SYMLINK_NOFOLLOW) == -1)
		return -errno;
	if (S_ISLNK(st.st_mode))
		return -EOPNOTSUPP; /* Linux has no symlink modes */
	return neg_errno(fchmodat(backing_fd, rel(path), mode, 0));
}

static int q_chown(const char *path, uid_t uid, gid_t gid,
		   struct fuse_file_info *fi)
{
	if (fi)
		return neg_errno(fchown((int)fi->fh, uid, gid));
	return neg_errno(fchownat(backing_fd, rel(path), uid, gid,
				  AT_SYMLINK_NOFOLLOW));
}

static int q_truncate(const char *path, off_t size, struct fuse_file_info *fi)
{
	char p[PATH_MAX];
	int r;

	if (fi)
		return neg_errno(ftruncate((int)fi->fh, size));
	r = abs_path(path, p, sizeof(p));
	if (r < 0)
		return r;
	return neg_errno(truncate(p, size));
}

static int q_utimens(const char *path, const struct timespec tv[2],
		     struct fuse_file_info *fi)
{
	/* UTIME_NOW / UTIME_OMIT in tv_nsec are handled by the backing call. */
	if (fi)
		return neg_errno(futimens((int)fi->fh, tv));
	return neg_errno(utimensat(backing_fd, rel(path), tv,
				   AT_SYMLINK_NOFOLLOW));
}

static int q_create(const char *path, mode_t mode, struct fuse_file_info *fi)
{
	struct stat st;
	int existed = 0;
	int fd, r;

	if (budget_remaining() == 0) {
		/* Opening an existing file creates no inode: let it through. */
		if (fstatat(backing_fd, rel(path), &st, AT_SYMLINK_NOFOLLOW) == -1)
			return -quota_errno;
		existed = 1;
	}
	fd = openat(backing_fd, rel(path), fi->flags | O_CREAT | O_CLOEXEC,
		    apply_umask(mode));
	if (fd == -1)
		return -errno;
	if (!existed) {
		r = own_new_node(path, fd);
		if (r < 0) {
			close(fd);
			unlinkat(backing_fd, rel(path), 0);
			return r;
		}
	}
	fi->fh = (uint64_t)fd;
	return 0;
}

static int q_open(const char *path, struct fuse_file_info *fi)
{
	int fd = openat(backing_fd, rel(path), fi->flags | O_CLOEXEC);

	if (fd == -1)
		return -errno;
	if (bad_name != NULL && fd < (int)sizeof(bad_fds)) {
		const char *slash = strrchr(path, '/');

		bad_fds[fd] = strcmp(slash ? slash + 1 : path, bad_name) == 0;
	}
	fi->fh = (uint64_t)fd;
	return 0;
}

static int q_read(const char *path, char *buf, size_t size, off_t off,
		  struct fuse_file_info *fi)
{
	ssize_t n;

	(void)path;
	if (!budget_lifted && fi->fh < sizeof(bad_fds) && bad_fds[fi->fh])
		return -EIO;  /* a bad sector, until SIGUSR1 */
	n = pread((int)fi->fh, buf, size, off);
	return n == -1 ? -errno : (int)n;
}

static int q_write(const char *path, const char *buf, size_t size, off_t off,
		   struct fuse_file_info *fi)
{
	size_t granted;
	ssize_t n;

	(void)path;
	if (size == 0)
		return 0;
	granted = budget_take(size);
	if (granted == 0)
		return -quota_errno;
	n = pwrite((int)fi->fh, buf, granted, off);
	if (n == -1) {
		int e = errno;
		budget_give_back(granted);
		return -e;
	}
	if ((size_t)n < granted)
		budget_give_back(granted - (size_t)n);
	return (int)n;
}

static int q_statfs(const char *path, struct statvfs *sv)
{
	(void)path;
	if (fstatvfs(backing_fd, sv) == -1)
		return -errno;
	if (statfs_budget && sv->f_frsize > 0) {
		uint64_t blocks = budget_remaining() / sv->f_frsize;

		if (sv->f_bfree > blocks)
			sv->f_bfree = blocks;
		if (sv->f_bavail > blocks)
			sv->f_bavail = blocks;
	}
	return 0;
}

static int q_flush(const char *path, struct fuse_file_info *fi)
{
	/* Closing a duplicate reports deferred write errors without closing
	 * the handle itself (flush may come several times per open). */
	int fd = dup((int)fi->fh);

	(void)path;
	if (fd == -1)
		return -errno;
	return neg_errno(close(fd));
}

static int q_release(const char *path, struct fuse_file_info *fi)
{
	(void)path;
	if (fi->fh < sizeof(bad_fds))
		bad_fds[fi->fh] = 0;
	close((int)fi->fh);
	return 0;
}

static int q_fsync(const char *path, int datasync, struct fuse_file_info *fi)
{
	(void)path;
	log_fsync("file", (int)fi->fh);
	return neg_errno(datasync ? fdatasync((int)fi->fh) : fsync((int)fi->fh));
}

static int q_setxattr(const char *path, const char *name, const char *value,
		      size_t size, int flags)
{
	char p[PATH_MAX];
	int r = abs_path(path, p, sizeof(p));

	if (r < 0)
		return r;
	if (refuse_xattrs)
		return -EOPNOTSUPP;
	return neg_errno(lsetxattr(p, name, value, size, flags));
}

static int q_getxattr(const char *path, const char *name, char *value,
		      size_t size)
{
	char p[PATH_MAX];
	int r = abs_path(path, p, sizeof(p));
	ssize_t n;

	if (r < 0)
		return r;
	n = lgetxattr(p, name, value, size);
	return n == -1 ? -errno : (int)n;
}

static int q_listxattr(const char *path, char *list, size_t size)
{
	char p[PATH_MAX];
	int r = abs_path(path, p, sizeof(p));
	ssize_t n;

	if (r < 0)
		return r;
	n = llistxattr(p, list, size);
	return n == -1 ? -errno : (int)n;
}

static int q_removexattr(const char *path, const char *name)
{
	char p[PATH_MAX];
	int r = abs_path(path, p, sizeof(p));

	if (r < 0)
		return r;
	return neg_errno(lremovexattr(p, name));
}

static int q_fallocate(const char *path, int mode, off_t off, off_t len,
		       struct fuse_file_info *fi)
{
	(void)path;
	/* Not charged against the budget (see header comment). */
	return neg_errno(fallocate((int)fi->fh, mode, off, len));
}

static ssize_t q_copy_file_range(const char *path_in,
				 struct fuse_file_info *fi_in, off_t off_in,
				 const char *path_out,
				 struct fuse_file_info *fi_out, off_t off_out,
				 size_t len, int flags)
{
	loff_t in = off_in, out = off_out;
	size_t granted;
	ssize_t n;

	(void)path_in;
	(void)path_out;
	if (len == 0)
		return 0;
	granted = budget_take(len);
	if (granted == 0)
		return -quota_errno;
	n = copy_file_range((int)fi_in->fh, &in, (int)fi_out->fh, &out,
			    granted, (unsigned int)flags);
	if (n == -1) {
		int e = errno;
		budget_give_back(granted);
		return -e;
	}
	if ((size_t)n < granted)
		budget_give_back(granted - (size_t)n);
	return n;
}

static off_t q_lseek(const char *path, off_t off, int whence,
		     struct fuse_file_info *fi)
{
	off_t r;

	(void)path;
	r = lseek((int)fi->fh, off, whence);
	return r == (off_t)-1 ? -errno : r;
}

static const struct fuse_operations q_ops = {
	.init = q_init,
	.getattr = q_getattr,
	.access = q_access,
	.readlink = q_readlink,
	.opendir = q_opendir,
	.readdir = q_readdir,
	.releasedir = q_releasedir,
	.fsyncdir = q_fsyncdir,
	.mknod = q_mknod,
	.mkdir = q_mkdir,
	.unlink = q_unlink,
	.rmdir = q_rmdir,
	.symlink = q_symlink,
	.rename = q_rename,
	.link = q_link,
	.chmod = q_chmod,
	.chown = q_chown,
	.truncate = q_truncate,
	.utimens = q_utimens,
	.create = q_create,
	.open = q_open,
	.read = q_read,
	.write = q_write,
	.statfs = q_statfs,
	.flush = q_flush,
	.release = q_release,
	.fsync = q_fsync,
	.setxattr = q_setxattr,
	.getxattr = q_getxattr,
	.listxattr = q_listxattr,
	.removexattr = q_removexattr,
	.fallocate = q_fallocate,
	.copy_file_range = q_copy_file_range,
	.lseek = q_lseek,
};

/* ---- command line ------------------------------------------------------ */

static void usage(FILE *out, const char *prog)
{
	fprintf(out,
		"usage: %s BACKING_DIR MOUNTPOINT --budget BYTES [options] [FUSE options]\n"
		"\n"
		"  --budget BYTES          bytes that may be written (suffix K, M, G, T = 1024^n)\n"
		"  --errno NAME            error once the budget is used: EDQUOT (default),\n"
		"                          ENOSPC or EIO (or a number)\n"
		"  --statfs-budget         cap statfs free/available space at the budget\n"
		"  --writeback-cache       let writes land in the page cache (the budget's\n"
		"                          error then comes from write-back, seen by fsync)\n"
		"  --refuse-xattrs         setxattr fails with EOPNOTSUPP\n"
		"  --no-rename-flags       rename with RENAME_NOREPLACE or EXCHANGE fails with EINVAL\n"
		"  --read-eio NAME         reading a file named NAME fails with EIO (a bad\n"
		"                          sector) until SIGUSR1\n"
		"  --hang NAME             opening a directory named NAME blocks until it is\n"
		"                          removed from BACKING_DIR (a hung mount); NAME.hung\n"
		"                          exists meanwhile\n"
		"  --fsync-log FILE        append \"file PATH\" or \"dir PATH\" to FILE for each\n"
		"                          fsync that reaches the filesystem\n"
		"  --no-default-permissions  do not add -o default_permissions\n"
		"  -f                      stay in the foreground\n"
		"  -o OPT[,OPT...]         FUSE mount options, e.g. allow_other\n",
		prog);
}

static int parse_bytes(const char *s, uint64_t *out)
{
	char *end;
	unsigned long long v;
	int shift = 0;

	if (*s == '\0' || *s == '-' || *s == '+')
		return -1;
	errno = 0;
	v = strtoull(s, &end, 10);
	if (errno || end == s)
		return -1;
	switch (*end) {
	case '\0': break;
	case 'k': case 'K': shift = 10; end++; break;
	case 'm': case 'M': shift = 20; end++; break;
	case 'g': case 'G': shift = 30; end++; break;
	case 't': case 'T': shift = 40; end++; break;
	default: return -1;
	}
	if (*end != '\0')
		return -1;
	if (shift && v > (UINT64_MAX >> shift))
		return -1;
	*out = (uint64_t)v << shift;
	return 0;
}

static int parse_errno(const char *s, int *out)
{
	char *end;
	long v;

	if (strcmp(s, "EDQUOT") == 0) { *out = EDQUOT; return 0; }
	if (strcmp(s, "ENOSPC") == 0) { *out = ENOSPC; return 0; }
	if (strcmp(s, "EIO") == 0) { *out = EIO; return 0; }
	errno = 0;
	v = strtol(s, &end, 10);
	if (errno || end == s || *end != '\0' || v <= 0 || v > 4095)
		return -1;
	*out = (int)v;
	return 0;
}

/* Value of "--name VALUE" or "--name=VALUE"; NULL if argv[*i] is not it. */
static const char *opt_value(int argc, char *argv[], int *i, const char *name,
			     int *missing)
{
	size_t len = strlen(name);
	const char *a = argv[*i];

	if (strncmp(a, name, len) != 0)
		return NULL;
	if (a[len] == '=')
		return a + len + 1;
	if (a[len] != '\0')
		return NULL;
	if (*i + 1 >= argc) {
		*missing = 1;
		return NULL;
	}
	return argv[++*i];
}

int main(int argc, char *argv[])
{
	const char *prog = argv[0];
	const char *backing = NULL, *mountpoint = NULL;
	int have_budget = 0, default_perms = 1, missing = 0;
	char **fargv;
	int fargc = 0, i, ret;

	fargv = calloc((size_t)argc + 4, sizeof(char *));
	if (fargv == NULL)
		return 1;
	fargv[fargc++] = argv[0];

	for (i = 1; i < argc; i++) {
		const char *a = argv[i], *v;

		if ((v = opt_value(argc, argv, &i, "--budget", &missing))) {
			if (parse_bytes(v, &budget_left) != 0) {
				fprintf(stderr, "%s: bad --budget '%s'\n", prog, v);
				return 2;
			}
			have_budget = 1;
		} else if ((v = opt_value(argc, argv, &i, "--read-eio", &missing))) {
			bad_name = v;
		} else if ((v = opt_value(argc, argv, &i, "--hang", &missing))) {
			hang_name = v;
		} else if ((v = opt_value(argc, argv, &i, "--fsync-log", &missing))) {
			fsync_log_fd = open(v, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
			if (fsync_log_fd < 0) {
				fprintf(stderr, "%s: cannot open --fsync-log '%s': %s\n", prog, v, strerror(errno));
				return 2;
			}
		} else if ((v = opt_value(argc, argv, &i, "--errno", &missing))) {
			if (parse_errno(v, &quota_errno) != 0) {
				fprintf(stderr, "%s: bad --errno '%s'\n", prog, v);
				return 2;
			}
		} else if (missing) {
			fprintf(stderr, "%s: %s needs a value\n", prog, a);
			return 2;
		} else if (strcmp(a, "--statfs-budget") == 0) {
			statfs_budget = 1;
		} else if (strcmp(a, "--writeback-cache") == 0) {
			writeback_cache = 1;
		} else if (strcmp(a, "--refuse-xattrs") == 0) {
			refuse_xattrs = 1;
		} else if (strcmp(a, "--no-rename-flags") == 0) {
			no_rename_flags = 1;
		} else if (strcmp(a, "--no-default-permissions") == 0) {
			default_perms = 0;
		} else if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
			usage(stdout, prog);
			return 0;
		} else if (strcmp(a, "-o") == 0) {
			fargv[fargc++] = argv[i];
			if (i + 1 < argc)
				fargv[fargc++] = argv[++i];
		} else if (a[0] == '-') {
			fargv[fargc++] = argv[i];
		} else if (backing == NULL) {
			backing = a;
		} else if (mountpoint == NULL) {
			mountpoint = a;
			fargv[fargc++] = argv[i];
		} else {
			fprintf(stderr, "%s: unexpected argument '%s'\n", prog, a);
			usage(stderr, prog);
			return 2;
		}
	}
	if (backing == NULL || mountpoint == NULL || !have_budget) {
		usage(stderr, prog);
		return 2;
	}

	if (realpath(backing, backing_path) == NULL) {
		fprintf(stderr, "%s: %s: %s\n", prog, backing, strerror(errno));
		return 1;
	}
	backing_fd = open(backing_path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (backing_fd == -1) {
		fprintf(stderr, "%s: %s: %s\n", prog, backing_path, strerror(errno));
		return 1;
	}

	fargv[fargc++] = "-o";
	fargv[fargc++] = default_perms
		? "default_permissions,fsname=quotafs,subtype=quotafs"
		: "fsname=quotafs,subtype=quotafs";
	fargv[fargc] = NULL;

	/* Modes arrive already masked by the kernel (or with ctx->umask). */
	umask(0);

	struct sigaction lift;
	memset(&lift, 0, sizeof lift);
	lift.sa_handler = lift_budget;
	lift.sa_flags = SA_RESTART;
	sigemptyset(&lift.sa_mask);
	sigaction(SIGUSR1, &lift, NULL);
	/* A parent may have started us with signals blocked (the mask is inherited). */
	sigset_t usr1;
	sigemptyset(&usr1);
	sigaddset(&usr1, SIGUSR1);
	sigprocmask(SIG_UNBLOCK, &usr1, NULL);
	ret = fuse_main(fargc, fargv, &q_ops, NULL);
	free(fargv);
	return ret;
}
