import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// Blocking loopback sockets for tests, every read and write bounded by a timeout.
public struct TestSocketError: Error, CustomStringConvertible {
    public let description: String
    public init(_ what: String, errno code: Int32 = errno) {
        description = code == 0 ? what : "\(what): \(String(cString: strerror(code)))"
    }
}

public final class TestSocket: @unchecked Sendable {
    public let fd: Int32
    private var closed = false

    public init(fd: Int32) { self.fd = fd }

    deinit { close() }

    /// Connects to 127.0.0.1:`port`; reads and writes time out after `timeout` seconds.
    public static func connect(port: UInt16, timeout: Double = 10) throws -> TestSocket {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw TestSocketError("socket") }
        let sock = TestSocket(fd: fd)
        sock.setTimeout(timeout)
        var addr = loopback(port: port)
        let result = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard result == 0 else { throw TestSocketError("connect 127.0.0.1:\(port)") }
        return sock
    }

    public func setTimeout(_ seconds: Double) {
        var tv = timeval(tv_sec: Int(seconds), tv_usec: Int((seconds - Double(Int(seconds))) * 1_000_000))
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
    }

    public func send(_ bytes: [UInt8]) throws {
        try bytes.withUnsafeBytes { raw in
            var offset = 0
            while offset < raw.count {
                let n = Glibc.send(fd, raw.baseAddress! + offset, raw.count - offset, Int32(MSG_NOSIGNAL))
                if n < 0 && errno == EINTR { continue }
                guard n > 0 else { throw TestSocketError("send") }
                offset += n
            }
        }
    }

    public func send(_ text: String) throws { try send(Array(text.utf8)) }

    /// Up to `max` bytes; an empty array means the peer closed its write side.
    public func receive(max: Int = 65536) throws -> [UInt8] {
        var buffer = [UInt8](repeating: 0, count: max)
        while true {
            let n = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, max, 0) }
            if n < 0 && errno == EINTR { continue }
            guard n >= 0 else { throw TestSocketError("recv") }
            return Array(buffer[0..<n])
        }
    }

    /// Exactly `count` bytes, or an error if the peer closes first or the timeout passes.
    public func receive(exactly count: Int) throws -> [UInt8] {
        var result: [UInt8] = []
        result.reserveCapacity(count)
        while result.count < count {
            let chunk = try receive(max: min(65536, count - result.count))
            guard !chunk.isEmpty else { throw TestSocketError("peer closed after \(result.count) of \(count) bytes", errno: 0) }
            result += chunk
        }
        return result
    }

    /// Everything until the peer closes.
    public func receiveAll() throws -> [UInt8] {
        var result: [UInt8] = []
        while true {
            let chunk = try receive()
            if chunk.isEmpty { return result }
            result += chunk
        }
    }

    /// A line without its newline.
    public func receiveLine() throws -> String {
        var bytes: [UInt8] = []
        while true {
            let byte = try receive(max: 1)
            guard let b = byte.first else { throw TestSocketError("peer closed mid-line", errno: 0) }
            if b == 10 { return String(decoding: bytes, as: UTF8.self) }
            bytes.append(b)
        }
    }

    public func shutdownWrite() { shutdown(fd, Int32(SHUT_WR)) }

    /// Closes with a reset (SO_LINGER 0) instead of a FIN, as a crashing client would.
    public func reset() {
        var linger = Glibc.linger(l_onoff: 1, l_linger: 0)
        setsockopt(fd, SOL_SOCKET, SO_LINGER, &linger, socklen_t(MemoryLayout<Glibc.linger>.size))
        close()
    }

    /// Waits up to `timeout` seconds for bytes (or end-of-file) to be readable.
    public func isReadable(within timeout: Double) -> Bool {
        var entry = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        return poll(&entry, 1, Int32(timeout * 1000)) == 1
    }

    public func close() {
        guard !closed else { return }
        closed = true
        Glibc.close(fd)
    }
}

func loopback(port: UInt16) -> sockaddr_in {
    var addr = sockaddr_in()
    addr.sin_family = sa_family_t(AF_INET)
    addr.sin_port = port.bigEndian
    addr.sin_addr.s_addr = UInt32(0x7f00_0001).bigEndian
    return addr
}

/// A socket bound to 127.0.0.1 on a free port; listening or not, as asked.
func boundSocket(listen backlog: Int32?) throws -> (fd: Int32, port: UInt16) {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
    guard fd >= 0 else { throw TestSocketError("socket") }
    var one: Int32 = 1
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
    var addr = loopback(port: 0)
    let bound = withUnsafePointer(to: &addr) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
    }
    guard bound == 0 else { Glibc.close(fd); throw TestSocketError("bind") }
    if let backlog, Glibc.listen(fd, backlog) != 0 { Glibc.close(fd); throw TestSocketError("listen") }
    var out = sockaddr_in()
    var length = socklen_t(MemoryLayout<sockaddr_in>.size)
    _ = withUnsafeMutablePointer(to: &out) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) }
    }
    return (fd, UInt16(bigEndian: out.sin_port))
}

/// A position-sensitive checksum of a byte stream (FNV-1a style, mixing each byte with its offset), fed in
/// chunks of any size: enough to tell two payloads apart in a test.
public struct Checksum: Equatable, CustomStringConvertible {
    public private(set) var value: UInt64 = 0xcbf2_9ce4_8422_2325
    public private(set) var count = 0

    public init() {}

    public mutating func add(_ bytes: [UInt8]) {
        bytes.withUnsafeBufferPointer { buffer in
            var v = value
            var position = UInt64(count)
            for byte in buffer {
                v = (v ^ (UInt64(byte) &+ position)) &* 0x100_0000_01b3
                position &+= 1
            }
            value = v
        }
        count += bytes.count
    }

    public var description: String { "\(count) bytes, checksum \(String(value, radix: 16))" }
}

/// `count` pseudo-random bytes from a seeded xorshift generator.
public func randomPayload(count: Int, seed: UInt64) -> [UInt8] {
    var state = seed | 1
    var bytes = [UInt8](repeating: 0, count: count)
    bytes.withUnsafeMutableBytes { raw in
        var offset = 0
        while offset < raw.count {
            state ^= state << 13
            state ^= state >> 7
            state ^= state << 17
            withUnsafeBytes(of: state) { word in
                let n = min(8, raw.count - offset)
                for i in 0..<n { raw[offset + i] = word[i] }
            }
            offset += 8
        }
    }
    return bytes
}
