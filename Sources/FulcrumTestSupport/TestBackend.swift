import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// A real TCP server on 127.0.0.1 for integration tests, one thread per connection.
public final class TestBackend: @unchecked Sendable {
    public enum Behavior: Sendable {
        /// Echo every byte; on the client's end-of-file, finish echoing and shut down writing.
        case echo
        /// Send `"<name>\n"` on accept, then echo.
        case greet(String)
        /// Answer every chunk received with `"<name>:<chunk>"`, after `delay` (changeable while running).
        case named(String)
        /// Read everything until the client's end-of-file, answer nothing, close (a fire-and-forget sink).
        case sink
    }

    /// Added before each answer of a `.named` backend, in milliseconds.
    public var delayMilliseconds: Int {
        get { lock.withLock { _delay } }
        set { lock.withLock { _delay = newValue } }
    }
    private var _delay = 0

    public let port: UInt16
    public let behavior: Behavior
    private let listenFD: Int32
    private let lock = NSLock()
    private var connectionFDs: Set<Int32> = []
    private var _accepted = 0
    private var stopped = false

    public init(_ behavior: Behavior = .echo) throws {
        (listenFD, port) = try boundSocket(listen: 1024)
        self.behavior = behavior
        Thread.detachNewThread { [self] in acceptLoop() }
    }

    deinit { stop() }

    /// Connections accepted so far.
    public var accepted: Int { lock.withLock { _accepted } }

    /// Bytes received so far, over every connection.
    public var received: Int { lock.withLock { _received } }
    private var _received = 0

    /// Stops accepting and closes every open connection.
    public func stop() {
        let fds: Set<Int32> = lock.withLock {
            guard !stopped else { return [] }
            stopped = true
            return connectionFDs
        }
        shutdown(listenFD, Int32(SHUT_RDWR))
        for fd in fds { shutdown(fd, Int32(SHUT_RDWR)) }
    }

    private func acceptLoop() {
        while true {
            let fd = accept(listenFD, nil, nil)
            if fd < 0 {
                if errno == EINTR || errno == ECONNABORTED { continue }
                break
            }
            let keep: Bool = lock.withLock {
                guard !stopped else { return false }
                _accepted += 1
                connectionFDs.insert(fd)
                return true
            }
            guard keep else { close(fd); break }
            Thread.detachNewThread { [self] in serve(fd) }
        }
        close(listenFD)
    }

    private func serve(_ fd: Int32) {
        defer {
            lock.withLock { _ = connectionFDs.remove(fd) }
            close(fd)
        }
        if case .greet(let name) = behavior {
            guard writeAll(fd, Array("\(name)\n".utf8)) else { return }
        }
        var buffer = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            if n < 0 && errno == EINTR { continue }
            if n <= 0 { break }
            lock.withLock { _received += n }
            if case .sink = behavior { continue }
            var answer = Array(buffer[0..<n])
            if case .named(let name) = behavior {
                let delay = delayMilliseconds
                if delay > 0 { usleep(useconds_t(delay * 1000)) }
                answer = Array("\(name):".utf8) + answer
            }
            guard writeAll(fd, answer) else { return }
        }
        if case .sink = behavior { return }
        shutdown(fd, Int32(SHUT_WR))
        // Wait for the client to close before closing, so a half-closed client still reads everything.
        while buffer.withUnsafeMutableBytes({ recv(fd, $0.baseAddress, $0.count, 0) }) > 0 {}
    }

    private func writeAll(_ fd: Int32, _ bytes: [UInt8]) -> Bool {
        bytes.withUnsafeBytes { raw in
            var offset = 0
            while offset < raw.count {
                let n = send(fd, raw.baseAddress! + offset, raw.count - offset, Int32(MSG_NOSIGNAL))
                if n < 0 && errno == EINTR { continue }
                if n <= 0 { return false }
                offset += n
            }
            return true
        }
    }
}

/// A port that refuses connections: bound, never listening, held so no one else takes it.
public final class RefusingPort: @unchecked Sendable {
    public let port: UInt16
    private let fd: Int32

    public init() throws { (fd, port) = try boundSocket(listen: nil) }
    deinit { close(fd) }
}

/// A listener whose accept queue is full and never drained: new connection attempts get no answer and
/// hang until the connecting side's timeout, as with an overloaded or frozen server.
public final class BlackholeBackend: @unchecked Sendable {
    public let port: UInt16
    private let fd: Int32
    private var fillers: [Int32] = []

    public init() throws {
        (fd, port) = try boundSocket(listen: 0)
        // Complete connections until the kernel stops completing them: the accept queue is then full.
        for _ in 0..<8 {
            let client = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue), 0)
            var addr = loopback(port: port)
            _ = withUnsafePointer(to: &addr) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(client, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
            }
            fillers.append(client)
            var pfd = pollfd(fd: client, events: Int16(POLLOUT), revents: 0)
            if poll(&pfd, 1, 200) == 0 { break }
        }
    }

    deinit {
        for f in fillers { close(f) }
        close(fd)
    }
}
