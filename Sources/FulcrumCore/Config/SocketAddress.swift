/// An IP socket address as plain bytes: what the configuration names and what the event loop connects to.
public enum SocketAddress: Hashable, Sendable, CustomStringConvertible {
    case ipv4((UInt8, UInt8, UInt8, UInt8), port: UInt16)
    case ipv6([UInt8], port: UInt16)

    public var port: UInt16 {
        switch self {
        case .ipv4(_, let port), .ipv6(_, let port): return port
        }
    }

    public func withPort(_ port: UInt16) -> SocketAddress {
        switch self {
        case .ipv4(let a, _): return .ipv4(a, port: port)
        case .ipv6(let a, _): return .ipv6(a, port: port)
        }
    }

    public var description: String {
        switch self {
        case .ipv4(let a, let port):
            return "\(a.0).\(a.1).\(a.2).\(a.3):\(port)"
        case .ipv6(let bytes, let port):
            return "[\(Self.ipv6Text(bytes))]:\(port)"
        }
    }

    /// RFC 5952 text: lower-case hex groups, the longest run of two or more zero groups as `::`.
    static func ipv6Text(_ bytes: [UInt8]) -> String {
        let groups = (0..<8).map { Int(bytes[2 * $0]) << 8 | Int(bytes[2 * $0 + 1]) }
        var bestStart = -1, bestLength = 0, runStart = -1
        for i in 0...8 {
            if i < 8 && groups[i] == 0 {
                if runStart < 0 { runStart = i }
            } else if runStart >= 0 {
                if i - runStart > bestLength { bestStart = runStart; bestLength = i - runStart }
                runStart = -1
            }
        }
        func hex(_ range: Range<Int>) -> String {
            range.map { String(groups[$0], radix: 16) }.joined(separator: ":")
        }
        guard bestLength >= 2 else { return hex(0..<8) }
        return hex(0..<bestStart) + "::" + hex((bestStart + bestLength)..<8)
    }

    public static func == (lhs: SocketAddress, rhs: SocketAddress) -> Bool {
        switch (lhs, rhs) {
        case let (.ipv4(a, p), .ipv4(b, q)): return a == b && p == q
        case let (.ipv6(a, p), .ipv6(b, q)): return a == b && p == q
        default: return false
        }
    }

    public func hash(into hasher: inout Hasher) {
        switch self {
        case let .ipv4(a, port): hasher.combine(4); hasher.combine([a.0, a.1, a.2, a.3]); hasher.combine(port)
        case let .ipv6(a, port): hasher.combine(6); hasher.combine(a); hasher.combine(port)
        }
    }
}
