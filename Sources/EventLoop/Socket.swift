import CLibevent
import Glibc

/// Plain socket calls for the few things libevent does not do for us.
public enum Socket {
    /// A non-blocking listening TCP socket bound to `endpoint`. With `reusePort`, several sockets (one per
    /// worker) can bind the same address and the kernel spreads new connections across them.
    ///
    /// The first socket of such a group passes `claim: true`: it binds *without* SO_REUSEPORT, so the bind
    /// fails with EADDRINUSE when any socket of any process already holds the address (with SO_REUSEPORT
    /// alone, a second process of the same user would silently share the port), and turns SO_REUSEPORT on
    /// only after the bind, so the process's other sockets can join it. Linux checks SO_REUSEPORT
    /// conflicts at bind time and forms the group at `listen`, so there is no window in which another
    /// process could slip in.
    ///
    /// `deferAcceptSeconds` above 0 sets TCP_DEFER_ACCEPT before `listen`, so that no connection can slip
    /// into the accept queue without it.
    public static func listen(_ endpoint: Endpoint, reusePort: Bool, claim: Bool = false,
                              backlog: Int32, deferAcceptSeconds: Int32 = 0) throws(SystemError) -> Int32 {
        let fd = try syscall("socket") { socket(endpoint.family, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0) }
        do throws(SystemError) {
            try setOption(fd, SOL_SOCKET, SO_REUSEADDR, 1)
            if reusePort && !claim { try setOption(fd, SOL_SOCKET, SO_REUSEPORT, 1) }
            if endpoint.family == AF_INET6 { try setOption(fd, Int32(IPPROTO_IPV6), IPV6_V6ONLY, 1) }
            let bound = endpoint.withSockaddr { addr, len in bind(fd, addr, len) }
            if bound < 0 { throw SystemError("bind \(endpoint)", errno: currentErrno) }
            if reusePort && claim { try setOption(fd, SOL_SOCKET, SO_REUSEPORT, 1) }
            if deferAcceptSeconds > 0 { try setDeferAccept(fd, seconds: deferAcceptSeconds) }
            // Before `listen`, so that every connection queued from then on inherits it (see `Listener`).
            setNoDelay(fd)
            try syscall("listen \(endpoint)") { Glibc.listen(fd, backlog) }
        } catch {
            Glibc.close(fd)
            throw error
        }
        return fd
    }

    /// Sets the accept queue length of a socket that is already listening (Linux applies a second
    /// `listen` to the open socket; connections in its queue stay).
    public static func setBacklog(_ fd: Int32, _ backlog: Int32) throws(SystemError) {
        try syscall("listen") { Glibc.listen(fd, backlog) }
    }

    /// The address a socket is bound to; reads back the port the kernel chose for port 0.
    public static func localEndpoint(_ fd: Int32) throws(SystemError) -> Endpoint {
        var storage = sockaddr_storage()
        var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
        let result = withUnsafeMutableBytes(of: &storage) { raw in
            getsockname(fd, raw.baseAddress!.assumingMemoryBound(to: sockaddr.self), &length)
        }
        if result < 0 { throw SystemError("getsockname", errno: currentErrno) }
        return Endpoint(storage: storage, length: length)
    }

    /// TCP_DEFER_ACCEPT on a listening socket: the kernel hands a connection over only once the client has
    /// sent something, or after `seconds` (rounded up to its SYN-ACK retransmission schedule); 0 turns it off.
    public static func setDeferAccept(_ fd: Int32, seconds: Int32) throws(SystemError) {
        try setOption(fd, Int32(IPPROTO_TCP), TCP_DEFER_ACCEPT, seconds)
    }

    /// Small RPC messages go out at once rather than waiting for Nagle's algorithm.
    static func setNoDelay(_ fd: Int32) {
        try? setOption(fd, Int32(IPPROTO_TCP), TCP_NODELAY, 1)
    }

    /// A non-blocking TCP socket (TCP_NODELAY) connecting to `endpoint`: connected already or in progress,
    /// the outcome is known when it turns writable (`connectError`). Throws if the connect failed at once.
    static func startConnect(_ endpoint: Endpoint) throws(ConnectError) -> Int32 {
        let fd = socket(endpoint.family, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw ConnectError(errno: currentErrno) }
        setNoDelay(fd)
        var result: Int32 = 0
        repeat {
            result = endpoint.withSockaddr { clibevent_connect(fd, $0, $1) }
        } while result < 0 && currentErrno == EINTR
        if result < 0 && currentErrno != EINPROGRESS {
            let error = ConnectError(errno: currentErrno)
            Glibc.close(fd)
            throw error
        }
        return fd
    }

    /// How the connect of a socket from `startConnect` ended, once it turned writable: nil if it connected.
    static func connectError(_ fd: Int32) -> ConnectError? {
        var code: Int32 = 0
        var length = socklen_t(MemoryLayout<Int32>.size)
        if getsockopt(fd, SOL_SOCKET, SO_ERROR, &code, &length) < 0 { code = currentErrno }
        return code == 0 ? nil : ConnectError(errno: code)
    }

    public static func close(_ fd: Int32) {
        _ = Glibc.close(fd)
    }

    static func setOption(_ fd: Int32, _ level: Int32, _ name: Int32, _ value: Int32) throws(SystemError) {
        var v = value
        try syscall("setsockopt") { setsockopt(fd, level, name, &v, socklen_t(MemoryLayout<Int32>.size)) }
    }

    /// Raises the open-file limit to the hard limit, as a proxy holds two descriptors per client.
    @discardableResult
    public static func raiseFileLimit() -> Int {
        var limit = rlimit()
        guard getrlimit(__rlimit_resource_t(RLIMIT_NOFILE.rawValue), &limit) == 0 else { return 0 }
        if limit.rlim_cur < limit.rlim_max {
            limit.rlim_cur = limit.rlim_max
            _ = setrlimit(__rlimit_resource_t(RLIMIT_NOFILE.rawValue), &limit)
            _ = getrlimit(__rlimit_resource_t(RLIMIT_NOFILE.rawValue), &limit)
        }
        return Int(clamping: limit.rlim_cur)
    }

    /// Ignore SIGPIPE process-wide: a peer that vanishes mid-write must cost one connection, not the process.
    public static func ignoreSIGPIPE() {
        signal(SIGPIPE, SIG_IGN)
    }
}

/// This process's descriptor counts, for its metrics.
public enum ProcessInfoReader {
    /// Descriptors open now (the entries of /proc/self/fd, less the one reading it).
    public static func openDescriptors() -> Int {
        guard let directory = opendir("/proc/self/fd") else { return 0 }
        defer { closedir(directory) }
        var count = 0
        while let entry = readdir(directory) {
            let first = withUnsafeBytes(of: entry.pointee.d_name) { $0.first ?? 0 }
            if first != UInt8(ascii: ".") { count += 1 }
        }
        return max(0, count - 1)
    }

    /// The soft limit of open descriptors.
    public static func descriptorLimit() -> Int {
        var limit = rlimit()
        guard getrlimit(__rlimit_resource_t(RLIMIT_NOFILE.rawValue), &limit) == 0 else { return 0 }
        return Int(clamping: limit.rlim_cur)
    }
}
