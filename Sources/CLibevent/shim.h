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
// close-on-exec, where accept would need two fcntl calls more per connection.
extern int accept4(int fd, struct sockaddr *address, socklen_t *length, int flags);

static inline int clibevent_accept4(int fd, struct sockaddr *address, socklen_t *length, int flags) {
    return accept4(fd, address, length, flags);
}

#endif
