/* Files written whole or not at all (bl_afile: path.tmp, fsync, rename, fsync of the directory)
 * and whole lines appended to logs. write, fsync and rename go through the fault counters so the
 * tests can fail each of them in turn (bl_fault_set). */
#define _POSIX_C_SOURCE 200809L
#include "bnlab/core.h"

#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static int io_write(int fd, const void *data, size_t len)
{
    const char *c = data;
    while (len) {
        if (bl_fault_hit(BL_FAULT_WRITE)) return errno = ENOSPC, -1;
        ssize_t k = write(fd, c, len);
        if (k < 0 && errno == EINTR) continue;
        if (k <= 0) return k == 0 ? (errno = EIO, -1) : -1;
        c += k, len -= (size_t)k;
    }
    return 0;
}

static int io_fsync(int fd)
{
    if (bl_fault_hit(BL_FAULT_FSYNC)) return errno = EIO, -1;
    return fsync(fd);
}

static int io_rename(const char *a, const char *b)
{
    if (bl_fault_hit(BL_FAULT_RENAME)) return errno = EIO, -1;
    return rename(a, b);
}

bl_status bl_afile_open(bl_afile *f, const char *path)
{
    memset(f, 0, sizeof *f);
    f->fd = -1;
    if ((size_t)snprintf(f->path, sizeof f->path, "%s", path) >= sizeof f->path)
        return bl_fail(BL_ERR_ARG, "%.100s...: path too long", path);
    snprintf(f->tmp, sizeof f->tmp, "%s.tmp", path);
    f->fd = open(f->tmp, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (f->fd < 0) {
        bl_fail(BL_ERR_IO, "%s: cannot create: %s (does the directory exist?)", f->tmp,
                strerror(errno));
        f->done = 1; /* not ours: abort leaves whatever is there */
        return BL_ERR_IO;
    }
    return BL_OK;
}

bl_status bl_afile_write(bl_afile *f, const void *data, size_t len)
{
    if (f->failed) return BL_ERR_IO;
    if (f->fd >= 0 && !io_write(f->fd, data, len)) return BL_OK;
    f->failed = 1;
    return bl_fail(BL_ERR_IO, "%s: write failed: %s (disk full?); %s is untouched", f->tmp,
                   strerror(errno), f->path);
}

void bl_afile_abort(bl_afile *f)
{
    if (f->fd >= 0) close(f->fd);
    if (!f->done && f->tmp[0]) unlink(f->tmp);
    f->fd = -1, f->done = 1;
}

bl_status bl_afile_finish(bl_afile *f)
{
    if (f->failed || f->fd < 0) {
        bl_afile_abort(f);
        return BL_ERR_IO; /* the reason is the write's */
    }
    const char *step = "fsync";
    int bad = io_fsync(f->fd) != 0, err = bad ? errno : 0;
    if (close(f->fd) && !bad) bad = 1, err = errno, step = "close";
    f->fd = -1;
    if (!bad) return BL_OK;
    f->failed = 1;
    bl_afile_abort(f);
    return bl_fail(BL_ERR_IO, "%s: %s failed: %s; %s is untouched", f->tmp, step, strerror(err),
                   f->path);
}

bl_status bl_afile_publish(bl_afile *f)
{
    if (f->failed || f->done) return BL_ERR_IO;
    if (io_rename(f->tmp, f->path)) {
        int err = errno;
        f->failed = 1;
        bl_afile_abort(f);
        return bl_fail(BL_ERR_IO, "%s: rename failed: %s; %s is untouched", f->tmp,
                       strerror(err), f->path);
    }
    f->done = 1;
    /* the rename reaches the disk only with its directory; a failure here leaves the new file
     * in place (it is whole either way), so it is not an error */
    char dir[sizeof f->path];
    snprintf(dir, sizeof dir, "%s", f->path);
    int dfd = open(dirname(dir), O_RDONLY);
    if (dfd >= 0) {
        (void)fsync(dfd);
        close(dfd);
    }
    return BL_OK;
}

bl_status bl_afile_commit(bl_afile *f)
{
    bl_status st = bl_afile_finish(f);
    return st ? st : bl_afile_publish(f);
}

bl_status bl_append_line(const char *path, const char *line)
{
    int fd = open(path, O_WRONLY | O_APPEND | O_CREAT, 0644);
    if (fd < 0) return bl_fail(BL_ERR_IO, "cannot write %s: %s", path, strerror(errno));
    struct stat s;
    const int sized = fstat(fd, &s) == 0;
    const char *step = sized ? "write" : "fstat";
    int bad = !sized;
    if (!bad && !(bad = io_write(fd, line, strlen(line)) != 0))
        step = "fsync", bad = io_fsync(fd) != 0;
    int err = errno;
    if (bad && sized) (void)!ftruncate(fd, s.st_size); /* back to the last whole line */
    if (close(fd) && !bad) bad = 1, err = errno, step = "close";
    if (bad)
        return bl_fail(BL_ERR_IO, "cannot write %s: %s failed: %s (the file keeps its earlier "
                       "lines)", path, step, strerror(err));
    return BL_OK;
}
