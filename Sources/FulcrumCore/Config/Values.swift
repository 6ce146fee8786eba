#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Parsers for the scalar value kinds a configuration file uses: durations, sizes and socket addresses.
/// Each returns nil on malformed input; the loader turns that into a diagnostic with a hint.
public enum ConfigValue {
    public static let durationHint = "a duration such as 250ms, 2s, 5m or 1h"
    public static let sizeHint = "a size in bytes such as 16384, 64KiB or 1MiB"
    public static let addressHint = "an address such as 127.0.0.1:7000 or '[::1]:7000' (IPv6 in brackets, quoted)"

    public enum NumberProblem: Error, Equatable, Sendable {
        case malformed
        /// Well formed, but beyond what the value's type can hold.
        case tooLarge
    }

    /// `250ms`, `2s`, `1.5s`, `5m`, `1h`, `100us`. A bare number is rejected: the unit must be explicit.
    public static func duration(_ text: String) -> Duration? { try? parseDuration(text).get() }

    public static func parseDuration(_ text: String) -> Result<Duration, NumberProblem> {
        let units: [(suffix: String, nanos: Double)] = [
            ("ns", 1), ("us", 1e3), ("µs", 1e3), ("ms", 1e6), ("s", 1e9), ("m", 60e9), ("h", 3600e9), ("d", 86400e9),
        ]
        let trimmed = text.trimmingSpaces
        for unit in units where trimmed.hasSuffix(unit.suffix) {
            let number = String(trimmed.dropLast(unit.suffix.count))
            // "ms" also ends with "s": only accept a suffix whose prefix is a plain number.
            guard let value = Double(number), value >= 0,
                  number.allSatisfy({ $0.isASCII && ($0.isNumber || $0 == ".") }) else { continue }
            let nanos = value * unit.nanos
            // Int64 nanoseconds end near 9.22e18 (292 years).
            guard nanos.isFinite, nanos < 9.2e18 else { return .failure(.tooLarge) }
            return .success(.nanoseconds(Int64(nanos.rounded())))
        }
        return .failure(.malformed)
    }

    /// `16384`, `512B`, `64KiB`, `64KB` (also 1024), `1MiB`, `2GiB`.
    public static func size(_ text: String) -> Int? { try? parseSize(text).get() }

    public static func parseSize(_ text: String) -> Result<Int, NumberProblem> {
        let units: [(suffix: String, factor: Int)] = [
            ("KiB", 1 << 10), ("MiB", 1 << 20), ("GiB", 1 << 30),
            ("KB", 1 << 10), ("MB", 1 << 20), ("GB", 1 << 30), ("k", 1 << 10), ("K", 1 << 10), ("M", 1 << 20), ("B", 1),
        ]
        let trimmed = text.trimmingSpaces
        var digits = Substring(trimmed)
        var factor = 1
        if let unit = units.first(where: { trimmed.hasSuffix($0.suffix) }) {
            digits = Substring(trimmed.dropLast(unit.suffix.count).trimmingSpaces)
            factor = unit.factor
        }
        guard !digits.isEmpty, digits.allSatisfy({ $0.isASCII && $0.isNumber }) else { return .failure(.malformed) }
        guard let value = Int(digits) else { return .failure(.tooLarge) }
        let (result, overflow) = value.multipliedReportingOverflow(by: factor)
        return overflow ? .failure(.tooLarge) : .success(result)
    }

    public enum AddressProblem: Error, Equatable, Sendable {
        case malformed
        case portOutOfRange(Int)
        case hostname(String)
    }

    /// `127.0.0.1:7000`, `[::1]:7000`, `localhost:7000` (taken as 127.0.0.1). Port 0 asks the kernel for a free port.
    public static func address(_ text: String) -> Result<SocketAddress, AddressProblem> {
        let trimmed = text.trimmingSpaces
        let host: Substring
        let portText: Substring
        if trimmed.hasPrefix("[") {
            guard let close = trimmed.firstIndex(of: "]") else { return .failure(.malformed) }
            host = trimmed[trimmed.index(after: trimmed.startIndex)..<close]
            let rest = trimmed[trimmed.index(after: close)...]
            guard rest.hasPrefix(":") else { return .failure(.malformed) }
            portText = rest.dropFirst()
        } else {
            guard let colon = trimmed.lastIndex(of: ":") else { return .failure(.malformed) }
            host = trimmed[..<colon]
            // An IPv6 address must be bracketed: "::1:7000" could be an address with no port.
            if host.contains(":") { return .failure(.malformed) }
            portText = trimmed[trimmed.index(after: colon)...]
        }
        guard !portText.isEmpty, portText.allSatisfy(\.isASCII), let port = Int(portText) else {
            return .failure(.malformed)
        }
        guard (0...65535).contains(port) else { return .failure(.portOutOfRange(port)) }
        let hostString = host == "localhost" ? "127.0.0.1" : String(host)
        if let v4 = parseIPv4(hostString) { return .success(.ipv4(v4, port: UInt16(port))) }
        if let v6 = parseIPv6(hostString) { return .success(.ipv6(v6, port: UInt16(port))) }
        if host.isEmpty || host.contains(":") { return .failure(.malformed) }
        return .failure(.hostname(String(host)))
    }

    static func parseIPv4(_ text: String) -> (UInt8, UInt8, UInt8, UInt8)? {
        var addr = in_addr()
        guard inet_pton(AF_INET, text, &addr) == 1 else { return nil }
        return withUnsafeBytes(of: addr) { ($0[0], $0[1], $0[2], $0[3]) }
    }

    static func parseIPv6(_ text: String) -> [UInt8]? {
        var addr = in6_addr()
        guard inet_pton(AF_INET6, text, &addr) == 1 else { return nil }
        return withUnsafeBytes(of: addr) { Array($0) }
    }
}

extension StringProtocol {
    var trimmingSpaces: String {
        var s = Substring(self)
        while let f = s.first, f.isWhitespace { s.removeFirst() }
        while let l = s.last, l.isWhitespace { s.removeLast() }
        return String(s)
    }
}

extension Duration {
    /// Human form used in logs and `fulcrum check`: `250ms`, `2s`, `10m`.
    public var configText: String {
        let (seconds, attos) = components
        let nanos = seconds * 1_000_000_000 + attos / 1_000_000_000
        if nanos == 0 { return "0s" }
        if nanos % 3_600_000_000_000 == 0 { return "\(nanos / 3_600_000_000_000)h" }
        if nanos % 60_000_000_000 == 0 { return "\(nanos / 60_000_000_000)m" }
        if nanos % 1_000_000_000 == 0 { return "\(nanos / 1_000_000_000)s" }
        if nanos % 1_000_000 == 0 { return "\(nanos / 1_000_000)ms" }
        if nanos >= 1_000_000_000 {
            // Not a whole number of seconds (a jittered ejection time, say): tenths are enough.
            return "\(nanos / 1_000_000_000).\(nanos / 100_000_000 % 10)s"
        }
        if nanos >= 1_000_000 { return "\(nanos / 1_000_000)ms" }
        if nanos % 1_000 == 0 { return "\(nanos / 1_000)us" }
        return "\(nanos)ns"
    }

    /// Whole microseconds, rounded down; what timers are armed with.
    public var microseconds: Int64 {
        let (seconds, attos) = components
        return seconds * 1_000_000 + attos / 1_000_000_000_000
    }
}

/// Human form of a byte count: `64KiB`, `1MiB`, `1000`.
public func sizeText(_ bytes: Int) -> String {
    if bytes > 0 && bytes % (1 << 30) == 0 { return "\(bytes >> 30)GiB" }
    if bytes > 0 && bytes % (1 << 20) == 0 { return "\(bytes >> 20)MiB" }
    if bytes > 0 && bytes % (1 << 10) == 0 { return "\(bytes >> 10)KiB" }
    return "\(bytes)"
}
