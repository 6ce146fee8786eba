#ifndef FULCRUM_CLIBEVENT_SHIM_H
#define FULCRUM_CLIBEVENT_SHIM_H

// System headers first: libevent's event-config.h defines _GNU_SOURCE, which would otherwise make these
// headers parse differently here than in Swift's Glibc module and the two would clash.
#include <stddef.h>
#include <stdint.h>
#include <stdarg.h>
#include <sys/types.h>
#include <sys/time.h>
#include <sys/select.h>
#include <sys/socket.h>
#include <netinet/in.h>
#include <pthread.h>
#include <sys/syscall.h>

// The parts of libevent Fulcrum uses. libc itself comes to Swift through Glibc.
#include <event2/event.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/listener.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <event2/dns.h>
#include <event2/util.h>

// pthread_setname_np is a GNU extension that Glibc's Swift module leaves out.
extern int pthread_setname_np(pthread_t thread, const char *name);

static inline int clibevent_set_thread_name(pthread_t thread, const char *name) {
    return pthread_setname_np(thread, name);
}

// accept4 is a GNU extension too: one call that accepts and makes the socket non-blocking and
// close-on-exec, where accept would need two fcntl calls more per connection. Made as a plain system
// call, like the relay's calls below.
extern long syscall(long number, ...);

static inline int clibevent_accept4(int fd, struct sockaddr *address, socklen_t *length, int flags) {
    return (int)syscall(SYS_accept4, fd, address, length, flags);
}

// splice, pipe2 and F_SETPIPE_SZ as well, for moving bulk bytes from one socket to another through a pipe
// without copying them into user space (see Relay+Splice.swift).
extern ssize_t splice(int fd_in, loff_t *off_in, int fd_out, loff_t *off_out, size_t length, unsigned int flags);
extern int pipe2(int fds[2], int flags);
extern int fcntl(int fd, int command, ...);

#define CLIBEVENT_SPLICE_F_MOVE 1
#define CLIBEVENT_SPLICE_F_NONBLOCK 2
#define CLIBEVENT_F_SETPIPE_SZ 1031

static inline ssize_t clibevent_splice(int from, int to, size_t length, unsigned int flags) {
    return splice(from, NULL, to, NULL, length, flags);
}

static inline int clibevent_pipe2(int fds[2], int flags) {
    return pipe2(fds, flags);
}

static inline int clibevent_set_pipe_size(int fd, int bytes) {
    return fcntl(fd, CLIBEVENT_F_SETPIPE_SZ, bytes);
}

// The relay's per-chunk read and send, and the per-connection connect and close, as plain system calls.
// glibc's read, send, connect, accept4 and close are thread cancellation points: each wraps the call in
// __pthread_enable_asynccancel/__pthread_disable_asynccancel (about 60 instructions per call, measured
// with callgrind). Fulcrum never cancels a thread.

static inline ssize_t clibevent_read(int fd, void *buffer, size_t length) {
    return syscall(SYS_read, fd, buffer, length);
}

static inline ssize_t clibevent_send(int fd, const void *buffer, size_t length, int flags) {
    return syscall(SYS_sendto, fd, buffer, length, flags, NULL, 0);
}

static inline int clibevent_connect(int fd, const struct sockaddr *address, socklen_t length) {
    return (int)syscall(SYS_connect, fd, address, length);
}

static inline int clibevent_close(int fd) {
    return (int)syscall(SYS_close, fd);
}

#endif
