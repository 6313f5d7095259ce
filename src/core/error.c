/* Per-thread error reasons. Why per thread: kernels may be called from several threads (or MPI
 * progress threads later) and one failure must not overwrite another's reason. */
#include "bnlab/core.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

static _Thread_local char bl_errbuf[1024];

const char *bl_error(void) { return bl_errbuf[0] ? bl_errbuf : "no error"; }

void bl_error_clear(void) { bl_errbuf[0] = 0; }

bl_status bl_fail(bl_status s, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(bl_errbuf, sizeof bl_errbuf, fmt, ap);
    va_end(ap);
    return s;
}

bl_status bl_fail_ctx(bl_status s, const char *fmt, ...)
{
    /* the reason is copied first: it lives in the buffer that is about to be rewritten */
    char reason[sizeof bl_errbuf];
    snprintf(reason, sizeof reason, "%s", bl_error());
    va_list ap;
    va_start(ap, fmt);
    int o = vsnprintf(bl_errbuf, sizeof bl_errbuf, fmt, ap);
    va_end(ap);
    if (o >= 0 && (size_t)o + 2 < sizeof bl_errbuf) {
        /* as much of the reason as fits */
        size_t room = sizeof bl_errbuf - (size_t)o - 3, n = strlen(reason);
        memcpy(bl_errbuf + o, ": ", 2);
        memcpy(bl_errbuf + o + 2, reason, n < room ? n : room);
        bl_errbuf[o + 2 + (n < room ? n : room)] = 0;
    }
    return s;
}

void bl_error_append(const char *fmt, ...)
{
    size_t o = strlen(bl_errbuf);
    if (o + 1 >= sizeof bl_errbuf) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(bl_errbuf + o, sizeof bl_errbuf - o, fmt, ap);
    va_end(ap);
}

const char *bl_status_name(bl_status s)
{
    switch (s) {
    case BL_OK: return "ok";
    case BL_ERR_ARG: return "invalid argument";
    case BL_ERR_NUMERIC: return "numerical error";
    case BL_ERR_NOMEM: return "out of memory";
    case BL_ERR_IO: return "i/o error";
    case BL_ERR_FORMAT: return "bad file format";
    case BL_ERR_STATE: return "invalid state";
    }
    return "unknown status";
}

const char *bl_layout_name(bl_layout l) { return l == BL_NHWC ? "nhwc" : "nchw"; }

bl_status bl_layout_parse(const char *s, bl_layout *out)
{
    if (s && !strcasecmp(s, "nchw")) { *out = BL_NCHW; return BL_OK; }
    if (s && !strcasecmp(s, "nhwc")) { *out = BL_NHWC; return BL_OK; }
    return bl_fail(BL_ERR_ARG, "unknown layout '%s': use nchw or nhwc", s ? s : "(null)");
}
