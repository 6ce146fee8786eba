import CLibevent
import Glibc

/// An IPv4 or IPv6 socket address in the form the kernel takes it.
public struct Endpoint: Sendable, CustomStringConvertible {
    var storage = sockaddr_storage()
    var length: socklen_t

    public init(ipv4 bytes: (UInt8, UInt8, UInt8, UInt8), port: UInt16) {
        var sin = sockaddr_in()
        sin.sin_family = sa_family_t(AF_INET)
        sin.sin_port = port.bigEndian
        withUnsafeMutableBytes(of: &sin.sin_addr) { raw in
            raw[0] = bytes.0; raw[1] = bytes.1; raw[2] = bytes.2; raw[3] = bytes.3
        }
        length = socklen_t(MemoryLayout<sockaddr_in>.size)
        withUnsafeMutableBytes(of: &storage) { dst in
            withUnsafeBytes(of: sin) { dst.copyMemory(from: $0) }
        }
    }

    public init(ipv6 bytes: [UInt8], port: UInt16) {
        precondition(bytes.count == 16, "an IPv6 address has 16 bytes")
        var sin6 = sockaddr_in6()
        sin6.sin6_family = sa_family_t(AF_INET6)
        sin6.sin6_port = port.bigEndian
        withUnsafeMutableBytes(of: &sin6.sin6_addr) { raw in
            for i in 0..<16 { raw[i] = bytes[i] }
        }
        length = socklen_t(MemoryLayout<sockaddr_in6>.size)
        withUnsafeMutableBytes(of: &storage) { dst in
            withUnsafeBytes(of: sin6) { dst.copyMemory(from: $0) }
        }
    }

    init(storage: sockaddr_storage, length: socklen_t) {
        self.storage = storage
        self.length = length
    }

    /// Copies a kernel socket address (as handed over by accept).
    init(_ address: UnsafePointer<sockaddr>, length: Int32) {
        var storage = sockaddr_storage()
        let size = min(Int(length), MemoryLayout<sockaddr_storage>.size)
        withUnsafeMutableBytes(of: &storage) { $0.copyMemory(from: UnsafeRawBufferPointer(start: address, count: size)) }
        self.init(storage: storage, length: socklen_t(size))
    }

    /// The raw IP address bytes (4 or 16), without the port.
    public func withAddressBytes<R>(_ body: (UnsafeRawBufferPointer) -> R) -> R {
        withUnsafeBytes(of: storage) { raw in
            if family == AF_INET {
                let offset = MemoryLayout<sockaddr_in>.offset(of: \sockaddr_in.sin_addr)!
                return body(UnsafeRawBufferPointer(rebasing: raw[offset..<(offset + 4)]))
            }
            let offset = MemoryLayout<sockaddr_in6>.offset(of: \sockaddr_in6.sin6_addr)!
            return body(UnsafeRawBufferPointer(rebasing: raw[offset..<(offset + 16)]))
        }
    }

    var family: Int32 { Int32(storage.ss_family) }

    public var port: UInt16 {
        withUnsafeBytes(of: storage) { raw in
            // sin_port and sin6_port sit at the same offset, right after the family.
            UInt16(bigEndian: raw.load(fromByteOffset: 2, as: UInt16.self))
        }
    }

    public func withPort(_ port: UInt16) -> Endpoint {
        var copy = self
        withUnsafeMutableBytes(of: &copy.storage) { raw in
            raw.storeBytes(of: port.bigEndian, toByteOffset: 2, as: UInt16.self)
        }
        return copy
    }

    func withSockaddr<R>(_ body: (UnsafePointer<sockaddr>, socklen_t) -> R) -> R {
        withUnsafeBytes(of: storage) { raw in
            body(raw.baseAddress!.assumingMemoryBound(to: sockaddr.self), length)
        }
    }

    public var description: String {
        var buffer = [CChar](repeating: 0, count: Int(INET6_ADDRSTRLEN) + 1)
        return withUnsafeBytes(of: storage) { raw -> String in
            let base = raw.baseAddress!
            if family == AF_INET {
                let addr = base.advanced(by: MemoryLayout<sockaddr_in>.offset(of: \sockaddr_in.sin_addr)!)
                inet_ntop(AF_INET, addr, &buffer, socklen_t(buffer.count))
                return "\(String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)):\(port)"
            }
            let addr = base.advanced(by: MemoryLayout<sockaddr_in6>.offset(of: \sockaddr_in6.sin6_addr)!)
            inet_ntop(AF_INET6, addr, &buffer, socklen_t(buffer.count))
            return "[\(String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self))]:\(port)"
        }
    }
}
