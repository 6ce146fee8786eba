import CLibevent
import Glibc

/// A message read from a Unix socket: its bytes and the descriptors that came with it (owned by the
/// receiver, close-on-exec).
public struct DescriptorMessage: Sendable {
    public var payload: [UInt8]
    public var descriptors: [Int32]

    public init(payload: [UInt8], descriptors: [Int32] = []) {
        self.payload = payload
        self.descriptors = descriptors
    }
}

/// Unix stream sockets that carry open descriptors from one process to another (SCM_RIGHTS), as
/// HAProxy's `-x` and Envoy's hot restart hand listening sockets to a new process.
///
/// A message travels as one or more frames, each sent with one `sendmsg`:
///
/// ```text
///   frame:  payload length (UInt32, big-endian) | descriptors in this frame (UInt16) | more frames (UInt16)
///           payload bytes (first frame only)     + up to 253 descriptors as SCM_RIGHTS on the frame's bytes
/// ```
///
/// Linux takes at most 253 descriptors per message (SCM_MAX_FD), so hundreds of listening sockets go in
/// several frames. On a stream socket the kernel attaches a frame's descriptors to its first byte and
/// ends a read where descriptors begin or end, so each frame's descriptors arrive with its header.
public enum UnixSocket {
    /// The most descriptors Linux carries in one message.
    public static let maxDescriptorsPerFrame = 253
    static let headerSize = 8

    // MARK: - Connecting

    /// A non-blocking listening socket at `path`, readable and writable by this user only (mode 0600).
    /// A file left at `path` (by a process that did not exit cleanly) is removed first.
    public static func listen(path: String, backlog: Int32 = 8) throws(SystemError) -> Int32 {
        var address = try socketAddress(path)
        let fd = try syscall("socket(AF_UNIX)") {
            socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        }
        do throws(SystemError) {
            if unlink(path) < 0 && currentErrno != ENOENT { throw SystemError("unlink \(path)", errno: currentErrno) }
            // Created 0600 from the start: umask applies to the socket file bind creates.
            let previous = umask(0o177)
            let bound = withUnsafePointer(to: &address.0) { pointer in
                pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, address.1) }
            }
            let code = currentErrno
            umask(previous)
            if bound < 0 { throw SystemError("bind \(path)", errno: code) }
            try syscall("chmod \(path)") { chmod(path, 0o600) }
            try syscall("listen \(path)") { Glibc.listen(fd, backlog) }
        } catch {
            Glibc.close(fd)
            throw error
        }
        return fd
    }

    /// A blocking socket connected to `path`; reads and writes time out after `timeoutMicroseconds`.
    public static func connect(path: String, timeoutMicroseconds: Int64) throws(SystemError) -> Int32 {
        var address = try socketAddress(path)
        let fd = try syscall("socket(AF_UNIX)") { socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0) }
        let connected = withUnsafePointer(to: &address.0) { pointer in
            pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(fd, $0, address.1) }
        }
        if connected < 0 {
            let code = currentErrno
            Glibc.close(fd)
            throw SystemError("connect \(path)", errno: code)
        }
        setTimeout(fd, microseconds: timeoutMicroseconds)
        return fd
    }

    /// Accepts one connection from a non-blocking listening socket: a blocking socket whose reads and
    /// writes time out after `timeoutMicroseconds`, or nil when none is waiting.
    public static func accept(_ listening: Int32, timeoutMicroseconds: Int64) throws(SystemError) -> Int32? {
        while true {
            // accept4 and pipe2 are GNU extensions that Glibc's Swift module leaves out: close-on-exec is
            // set right after, on the main thread, which is the only one that starts processes.
            let fd = Glibc.accept(listening, nil, nil)
            if fd >= 0 {
                _ = fcntl(fd, F_SETFD, FD_CLOEXEC)
                setTimeout(fd, microseconds: timeoutMicroseconds)
                return fd
            }
            switch currentErrno {
            case EINTR, ECONNABORTED: continue
            case EAGAIN: return nil
            case let code: throw SystemError("accept on the upgrade socket", errno: code)
            }
        }
    }

    /// Who is at the other end of a connected Unix socket, as the kernel recorded it when the connection
    /// was made (SO_PEERCRED): no peer can claim another's.
    public struct PeerCredentials: Sendable, Equatable {
        public var pid: Int32
        public var uid: UInt32
        public var gid: UInt32

        public init(pid: Int32, uid: UInt32, gid: UInt32) {
            self.pid = pid
            self.uid = uid
            self.gid = gid
        }
    }

    /// The process id, user and group of the peer of a connected Unix socket `fd`.
    public static func peerCredentials(_ fd: Int32) throws(SystemError) -> PeerCredentials {
        // `struct ucred` needs _GNU_SOURCE, which Glibc's Swift module leaves out: its layout is pid_t,
        // uid_t, gid_t, three 32-bit fields.
        var fields: (Int32, UInt32, UInt32) = (0, 0, 0)
        var length = socklen_t(MemoryLayout.size(ofValue: fields))
        _ = try syscall("getsockopt(SO_PEERCRED)") { getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &fields, &length) }
        return PeerCredentials(pid: fields.0, uid: fields.1, gid: fields.2)
    }

    static func setTimeout(_ fd: Int32, microseconds: Int64) {
        var tv = timevalFrom(microseconds: microseconds)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
    }

    /// A `sockaddr_un` for `path`; a leading `@` names an abstract socket (Linux), which has no file.
    static func socketAddress(_ path: String) throws(SystemError) -> (sockaddr_un, socklen_t) {
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        var bytes = Array(path.utf8)
        let abstract = bytes.first == UInt8(ascii: "@")
        if abstract { bytes[0] = 0 }
        let capacity = MemoryLayout.size(ofValue: address.sun_path)
        // A path needs its terminating zero; an abstract name is counted by the length instead.
        guard !bytes.isEmpty, bytes.count <= capacity - (abstract ? 0 : 1) else {
            throw SystemError("socket path '\(path)' is \(bytes.count) bytes long; at most \(capacity - 1) fit", errno: ENAMETOOLONG)
        }
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            for (i, byte) in bytes.enumerated() { raw[i] = byte }
        }
        let offset = MemoryLayout<sockaddr_un>.offset(of: \sockaddr_un.sun_path)!
        return (address, socklen_t(offset + bytes.count + (abstract ? 0 : 1)))
    }

    // MARK: - Datagrams

    /// Sends one datagram to the Unix datagram socket at `path` (`@name`: an abstract socket), with
    /// `descriptors` attached, from a socket opened for this send only.
    public static func sendDatagram(to path: String, payload: [UInt8], descriptors: [Int32] = []) throws(SystemError) {
        var address = try socketAddress(path)
        let fd = try syscall("socket(AF_UNIX, SOCK_DGRAM)") {
            socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        }
        defer { Glibc.close(fd) }
        var control = [UInt8](repeating: 0, count: descriptors.isEmpty ? 0 : controlSpace(descriptors.count))
        if !descriptors.isEmpty { writeRights(descriptors, into: &control) }
        let sent = payload.withUnsafeBytes { bytes in
            control.withUnsafeMutableBytes { controlBytes in
                withUnsafeMutablePointer(to: &address.0) { addressPointer in
                    var vector = iovec(iov_base: UnsafeMutableRawPointer(mutating: bytes.baseAddress!), iov_len: bytes.count)
                    return withUnsafeMutablePointer(to: &vector) { vectorPointer in
                        var header = msghdr()
                        header.msg_name = UnsafeMutableRawPointer(addressPointer)
                        header.msg_namelen = address.1
                        header.msg_iov = vectorPointer
                        header.msg_iovlen = 1
                        if !descriptors.isEmpty {
                            header.msg_control = controlBytes.baseAddress
                            header.msg_controllen = controlBytes.count
                        }
                        return sendmsg(fd, &header, Int32(MSG_NOSIGNAL))
                    }
                }
            }
        }
        if sent < 0 { throw SystemError("sendmsg to \(path)", errno: currentErrno) }
    }

    /// A pipe's two ends, close-on-exec: (read, write).
    public static func pipe() throws(SystemError) -> (read: Int32, write: Int32) {
        var fds: (Int32, Int32) = (0, 0)
        _ = try withUnsafeMutableBytes(of: &fds) { raw throws(SystemError) in
            try syscall("pipe") { Glibc.pipe(raw.baseAddress!.assumingMemoryBound(to: Int32.self)) }
        }
        _ = fcntl(fds.0, F_SETFD, FD_CLOEXEC)
        _ = fcntl(fds.1, F_SETFD, FD_CLOEXEC)
        return (fds.0, fds.1)
    }

    /// Waits until every holder of the pipe's write end has closed it (the read end hangs up), at most
    /// `timeoutMilliseconds`; true if it did.
    public static func waitForHangUp(_ readEnd: Int32, timeoutMilliseconds: Int32) -> Bool {
        var entry = pollfd(fd: readEnd, events: Int16(POLLIN), revents: 0)
        while true {
            let n = poll(&entry, 1, timeoutMilliseconds)
            if n < 0 && currentErrno == EINTR { continue }
            return n > 0 && entry.revents & Int16(POLLHUP) != 0
        }
    }

    // MARK: - Messages

    /// Sends `payload` with `descriptors` attached (the receiver gets duplicates; the sender keeps its
    /// own), in as many frames as the descriptors need. Blocks at most the socket's send timeout.
    public static func send(_ fd: Int32, payload: [UInt8], descriptors: [Int32] = []) throws(SystemError) {
        var remaining = descriptors[...]
        var first = true
        repeat {
            let batch = Array(remaining.prefix(maxDescriptorsPerFrame))
            remaining = remaining.dropFirst(batch.count)
            let body = first ? payload : []
            var frame: [UInt8] = []
            frame.reserveCapacity(headerSize + body.count)
            appendBigEndian(UInt32(body.count), to: &frame)
            appendBigEndian(UInt16(batch.count), to: &frame)
            appendBigEndian(UInt16(remaining.isEmpty ? 0 : 1), to: &frame)
            frame += body
            try sendFrame(fd, frame, batch)
            first = false
        } while !remaining.isEmpty
    }

    /// Reads one message; nil when the peer closed the connection before its first byte. Throws on a
    /// malformed or truncated message, or when the socket's receive timeout passes mid-message; the
    /// descriptors of a message that fails are closed.
    public static func receive(_ fd: Int32, maxPayload: Int = 1 << 20) throws(SystemError) -> DescriptorMessage? {
        var message = DescriptorMessage(payload: [])
        do throws(SystemError) {
            var first = true
            while true {
                var header: [UInt8] = []
                let before = message.descriptors.count
                guard try readExactly(fd, headerSize, into: &header, descriptors: &message.descriptors,
                                      endOK: first) else { return nil }
                let length = Int(readBigEndian(header, 0, UInt32.self))
                let count = Int(readBigEndian(header, 4, UInt16.self))
                let more = readBigEndian(header, 6, UInt16.self) != 0
                guard length <= maxPayload, first || length == 0, count <= maxDescriptorsPerFrame else {
                    throw SystemError("recvmsg: malformed frame (payload \(length) bytes, \(count) descriptors)", errno: EPROTO)
                }
                if length > 0 {
                    _ = try readExactly(fd, length, into: &message.payload, descriptors: &message.descriptors, endOK: false)
                }
                let arrived = message.descriptors.count - before
                guard arrived == count else {
                    throw SystemError("recvmsg: \(count) descriptors were sent but \(arrived) arrived", errno: EPROTO)
                }
                first = false
                if !more { return message }
            }
        } catch {
            for descriptor in message.descriptors { Glibc.close(descriptor) }
            throw error
        }
    }

    private static func sendFrame(_ fd: Int32, _ frame: [UInt8], _ descriptors: [Int32]) throws(SystemError) {
        var control = [UInt8](repeating: 0, count: descriptors.isEmpty ? 0 : controlSpace(descriptors.count))
        if !descriptors.isEmpty { writeRights(descriptors, into: &control) }
        var sent = 0
        while sent < frame.count {
            let n = frame.withUnsafeBytes { bytes in
                control.withUnsafeMutableBytes { controlBytes in
                    var vector = iovec(iov_base: UnsafeMutableRawPointer(mutating: bytes.baseAddress! + sent),
                                       iov_len: frame.count - sent)
                    return withUnsafeMutablePointer(to: &vector) { vectorPointer in
                        var header = msghdr()
                        header.msg_iov = vectorPointer
                        header.msg_iovlen = 1
                        // Descriptors go with the frame's first bytes only.
                        if sent == 0 && !descriptors.isEmpty {
                            header.msg_control = controlBytes.baseAddress
                            header.msg_controllen = controlBytes.count
                        }
                        return sendmsg(fd, &header, Int32(MSG_NOSIGNAL))
                    }
                }
            }
            if n < 0 {
                if currentErrno == EINTR { continue }
                let code = currentErrno
                throw SystemError(code == EAGAIN ? "sendmsg: timed out" : "sendmsg", errno: code)
            }
            sent += n
        }
    }

    /// Reads exactly `count` bytes, collecting any descriptors that arrive. Returns false at end of file
    /// before the first byte when `endOK`; throws at any other end of file, error or timeout.
    private static func readExactly(_ fd: Int32, _ count: Int, into buffer: inout [UInt8], descriptors: inout [Int32],
                                    endOK: Bool) throws(SystemError) -> Bool {
        var chunk = [UInt8](repeating: 0, count: count)
        var control = [UInt8](repeating: 0, count: controlSpace(maxDescriptorsPerFrame))
        var got = 0
        while got < count {
            var flags: Int32 = 0
            let n = chunk.withUnsafeMutableBytes { bytes in
                control.withUnsafeMutableBytes { controlBytes in
                    var vector = iovec(iov_base: bytes.baseAddress! + got, iov_len: count - got)
                    return withUnsafeMutablePointer(to: &vector) { vectorPointer in
                        var header = msghdr()
                        header.msg_iov = vectorPointer
                        header.msg_iovlen = 1
                        header.msg_control = controlBytes.baseAddress
                        header.msg_controllen = controlBytes.count
                        let n = recvmsg(fd, &header, Int32(MSG_CMSG_CLOEXEC))
                        flags = header.msg_flags
                        if n > 0 { descriptors += readRights(controlBytes, length: header.msg_controllen) }
                        return n
                    }
                }
            }
            if n < 0 {
                if currentErrno == EINTR { continue }
                let code = currentErrno
                throw SystemError(code == EAGAIN ? "recvmsg: timed out mid-message" : "recvmsg", errno: code)
            }
            if flags & Int32(MSG_CTRUNC) != 0 {
                throw SystemError("recvmsg: descriptors were cut off (MSG_CTRUNC); is the open-file limit too low?", errno: EMFILE)
            }
            if n == 0 {
                if got == 0 && endOK { return false }
                throw SystemError("recvmsg: the peer closed the connection mid-message", errno: ECONNRESET)
            }
            got += n
        }
        buffer += chunk
        return true
    }

    // MARK: - Control messages
    // CMSG_SPACE, CMSG_LEN and CMSG_DATA are C macros Swift cannot import; these are their definitions
    // for one `cmsghdr` (glibc: lengths aligned to `size_t`).

    private static func align(_ length: Int) -> Int {
        let unit = MemoryLayout<Int>.size
        return (length + unit - 1) & ~(unit - 1)
    }

    private static var controlHeader: Int { align(MemoryLayout<cmsghdr>.size) }

    private static func controlSpace(_ descriptors: Int) -> Int {
        controlHeader + align(descriptors * MemoryLayout<Int32>.size)
    }

    private static func writeRights(_ descriptors: [Int32], into control: inout [UInt8]) {
        control.withUnsafeMutableBytes { raw in
            var header = cmsghdr()
            header.cmsg_len = controlHeader + descriptors.count * MemoryLayout<Int32>.size
            header.cmsg_level = SOL_SOCKET
            header.cmsg_type = Int32(SCM_RIGHTS)
            raw.storeBytes(of: header, as: cmsghdr.self)
            for (i, descriptor) in descriptors.enumerated() {
                raw.storeBytes(of: descriptor, toByteOffset: controlHeader + i * MemoryLayout<Int32>.size, as: Int32.self)
            }
        }
    }

    private static func readRights(_ control: UnsafeMutableRawBufferPointer, length: Int) -> [Int32] {
        var descriptors: [Int32] = []
        var offset = 0
        while offset + controlHeader <= length {
            let header = control.loadUnaligned(fromByteOffset: offset, as: cmsghdr.self)
            guard header.cmsg_len >= controlHeader, offset + header.cmsg_len <= length else { break }
            if header.cmsg_level == SOL_SOCKET && header.cmsg_type == Int32(SCM_RIGHTS) {
                let count = (header.cmsg_len - controlHeader) / MemoryLayout<Int32>.size
                for i in 0..<count {
                    descriptors.append(control.loadUnaligned(fromByteOffset: offset + controlHeader + i * 4, as: Int32.self))
                }
            }
            offset += align(header.cmsg_len)
        }
        return descriptors
    }

    private static func appendBigEndian<T: FixedWidthInteger>(_ value: T, to bytes: inout [UInt8]) {
        withUnsafeBytes(of: value.bigEndian) { bytes += $0 }
    }

    private static func readBigEndian<T: FixedWidthInteger>(_ bytes: [UInt8], _ offset: Int, _: T.Type) -> T {
        var value: T = 0
        for i in 0..<MemoryLayout<T>.size { value = value << 8 | T(bytes[offset + i]) }
        return value
    }
}
