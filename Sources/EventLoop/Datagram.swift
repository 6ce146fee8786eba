import CLibevent
import Glibc

/// A non-blocking UDP socket connected to one peer, on an event loop: sends datagrams to it and calls its
/// handler on the loop thread when replies can be read. Being connected, it takes datagrams from that
/// peer only, and hears of a closed port (ICMP port unreachable) as ECONNREFUSED from `receive`.
public final class Datagram {
    private var fd: Int32 = -1
    private var event: OpaquePointer?
    private let onReadable: () -> Void

    /// A socket on an ephemeral port chosen by the kernel, connected to `peer`.
    public init(base: EventBase, peer: Endpoint, onReadable: @escaping () -> Void) throws(SystemError) {
        self.onReadable = onReadable
        let fd = try syscall("socket") {
            socket(peer.family, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        }
        do throws(SystemError) {
            try syscall("connect \(peer)") { peer.withSockaddr { Glibc.connect(fd, $0, $1) } }
        } catch {
            Glibc.close(fd)
            throw error
        }
        self.fd = fd
        event = event_new(base.base, fd, Int16(EV_READ | EV_PERSIST), { _, _, context in
            Unmanaged<Datagram>.fromOpaque(context!).takeUnretainedValue().onReadable()
        }, Unmanaged.passUnretained(self).toOpaque())
        event_add(event, nil)
    }

    deinit { close() }

    /// Sends `bytes` as one datagram. A full send buffer (EAGAIN) is an error like any other: the caller
    /// treats the datagram as lost.
    public func send(_ bytes: [UInt8]) throws(SystemError) {
        guard fd >= 0 else { throw SystemError("send", errno: EBADF) }
        var sent = -1
        repeat {
            sent = bytes.withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
        } while sent < 0 && currentErrno == EINTR
        if sent < 0 { throw SystemError("send", errno: currentErrno) }
        if sent != bytes.count { throw SystemError("send: \(sent) of \(bytes.count) bytes", errno: EMSGSIZE) }
    }

    /// The next datagram waiting (at most `maxSize` bytes; a longer one is cut), or nil when none is.
    public func receive(maxSize: Int = 65_535) throws(SystemError) -> [UInt8]? {
        guard fd >= 0 else { return nil }
        var buffer = [UInt8](repeating: 0, count: maxSize)
        while true {
            let n = buffer.withUnsafeMutableBytes { Glibc.recv(fd, $0.baseAddress, $0.count, 0) }
            if n >= 0 { return Array(buffer[0..<n]) }
            switch currentErrno {
            case EINTR: continue
            case EAGAIN, EWOULDBLOCK: return nil
            case let code: throw SystemError("receive", errno: code)
            }
        }
    }

    /// Stops watching and closes the socket; safe to call twice.
    public func close() {
        freeEvent(event)
        event = nil
        if fd >= 0 { Glibc.close(fd) }
        fd = -1
    }
}
