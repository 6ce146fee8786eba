import EventLoop
import FulcrumCore
import Glibc

/// How a client's connection ended, as the access log names it (`end=`).
enum AccessLogEnd: String, Sendable {
    case clientClosed = "client_closed"
    case backendClosed = "backend_closed"
    case idleTimeout = "idle_timeout"
    case connectFailed = "connect_failed"
    case queueTimeout = "queue_timeout"
    case queueFull = "queue_full"
    case retryBudget = "retry_budget"
    case noBackend = "no_backend"
    case shutdown = "shutdown"
    case backendDown = "backend_down"
    case localError = "local_error"
}

/// One access log line's values. Times are microseconds; nil means "did not happen" (`-`, or `null` in JSON).
struct AccessLogEntry {
    /// Wall-clock time when the connection ended, microseconds since the Unix epoch.
    var time: Int64
    var client: Endpoint
    var listener: String
    var pool: String
    var backend: Endpoint?
    var tries: Int
    var replays: Int
    var hedged: Bool
    /// From the start of the winning connect to its completion.
    var connect: Int64?
    /// From accept to the first byte of the backend's answer.
    var firstByte: Int64?
    /// From accept to close.
    var duration: Int64
    var bytesIn: Int
    var bytesOut: Int
    var end: AccessLogEnd
    var reason: String?
}

/// Writes access log lines into a byte buffer: no allocation but the buffer's own growth, the calendar
/// part of the time computed once per second.
struct AccessLogFormatter {
    private var second: Int64 = .min
    /// `2026-11-21T06:54:29.` for `second`.
    private var prefix = [UInt8](repeating: 0, count: 20)

    mutating func append(_ entry: AccessLogEntry, format: AccessLogConfig.Format, to out: inout [UInt8]) {
        var line = Line(json: format == .json)
        line.begin(&out)
        line.key("time", &out)
        appendTime(entry.time, quoted: line.json, &out)
        line.field("client", address: entry.client, &out)
        line.field("listener", text: entry.listener, &out)
        line.field("pool", text: entry.pool, &out)
        line.field("backend", address: entry.backend, &out)
        line.field("tries", integer: entry.tries, &out)
        line.field("replays", integer: entry.replays, &out)
        line.key("hedged", &out)
        Line.ascii(entry.hedged ? "true" : "false", &out)
        line.field("connect_ms", milliseconds: entry.connect, &out)
        line.field("first_byte_ms", milliseconds: entry.firstByte, &out)
        line.field("duration_ms", milliseconds: entry.duration, &out)
        line.field("bytes_in", integer: entry.bytesIn, &out)
        line.field("bytes_out", integer: entry.bytesOut, &out)
        line.field("end", text: entry.end.rawValue, &out)
        line.field("reason", text: entry.reason, &out)
        if line.json { out.append(UInt8(ascii: "}")) }
        out.append(UInt8(ascii: "\n"))
    }

    /// RFC 3339 in UTC with milliseconds: `2026-11-21T06:54:29.123Z`.
    private mutating func appendTime(_ microseconds: Int64, quoted: Bool, _ out: inout [UInt8]) {
        let seconds = microseconds >= 0 ? microseconds / 1_000_000 : (microseconds - 999_999) / 1_000_000
        if seconds != second {
            second = seconds
            var t = time_t(seconds)
            var parts = tm()
            gmtime_r(&t, &parts)
            let fields = [(Int(parts.tm_year) + 1900, 4, "-"), (Int(parts.tm_mon) + 1, 2, "-"), (Int(parts.tm_mday), 2, "T"),
                          (Int(parts.tm_hour), 2, ":"), (Int(parts.tm_min), 2, ":"), (Int(parts.tm_sec), 2, ".")]
            var i = 0
            for (value, width, separator) in fields {
                var v = value
                for position in stride(from: width - 1, through: 0, by: -1) {
                    prefix[i + position] = UInt8(ascii: "0") + UInt8(v % 10)
                    v /= 10
                }
                i += width
                prefix[i] = separator.utf8.first!
                i += 1
            }
        }
        if quoted { out.append(UInt8(ascii: "\"")) }
        out.append(contentsOf: prefix)
        Line.padded(Int((microseconds - seconds * 1_000_000) / 1000), width: 3, &out)
        out.append(UInt8(ascii: "Z"))
        if quoted { out.append(UInt8(ascii: "\"")) }
    }
}

/// The syntax of one line: JSON (`{"key":value,...}`) or logfmt (`key=value ...`).
private struct Line {
    let json: Bool
    var first = true

    init(json: Bool) { self.json = json }

    func begin(_ out: inout [UInt8]) {
        if json { out.append(UInt8(ascii: "{")) }
    }

    mutating func key(_ name: StaticString, _ out: inout [UInt8]) {
        if !first { out.append(json ? UInt8(ascii: ",") : UInt8(ascii: " ")) }
        first = false
        if json { out.append(UInt8(ascii: "\"")) }
        Self.ascii(name, &out)
        if json { out.append(contentsOf: [UInt8(ascii: "\""), UInt8(ascii: ":")]) } else { out.append(UInt8(ascii: "=")) }
    }

    mutating func field(_ name: StaticString, integer value: Int, _ out: inout [UInt8]) {
        key(name, &out)
        Self.integer(value, &out)
    }

    mutating func field(_ name: StaticString, milliseconds value: Int64?, _ out: inout [UInt8]) {
        key(name, &out)
        milliseconds(value, &out)
    }

    mutating func field(_ name: StaticString, text value: String?, _ out: inout [UInt8]) {
        key(name, &out)
        if let value { string(value, &out) } else { none(&out) }
    }

    mutating func field(_ name: StaticString, address value: Endpoint?, _ out: inout [UInt8]) {
        key(name, &out)
        if let value { address(value, &out) } else { none(&out) }
    }

    /// An absent value: `null` in JSON, `-` in logfmt.
    func none(_ out: inout [UInt8]) {
        if json { Self.ascii("null", &out) } else { out.append(UInt8(ascii: "-")) }
    }

    /// A string, escaped for JSON, or quoted in logfmt when it holds a space, `=`, `"` or a control byte.
    func string(_ text: String, _ out: inout [UInt8]) {
        let utf8 = text.utf8
        if json || utf8.isEmpty || utf8.contains(where: { $0 <= 0x20 || $0 == UInt8(ascii: "=") || $0 == UInt8(ascii: "\"") || $0 == 0x7F }) {
            out.append(UInt8(ascii: "\""))
            for byte in utf8 {
                switch byte {
                case UInt8(ascii: "\""), UInt8(ascii: "\\"):
                    out.append(UInt8(ascii: "\\"))
                    out.append(byte)
                case UInt8(ascii: "\n"):
                    out.append(contentsOf: [UInt8(ascii: "\\"), UInt8(ascii: "n")])
                case 0..<0x20, 0x7F:
                    Self.ascii("\\u00", &out)
                    for nibble in [byte >> 4, byte & 15] {
                        out.append(nibble < 10 ? UInt8(ascii: "0") + nibble : UInt8(ascii: "a") + nibble - 10)
                    }
                default:
                    out.append(byte)
                }
            }
            out.append(UInt8(ascii: "\""))
        } else {
            out.append(contentsOf: utf8)
        }
    }

    /// `127.0.0.1:5000` or `[::1]:5000`, quoted in JSON.
    func address(_ endpoint: Endpoint, _ out: inout [UInt8]) {
        if json { out.append(UInt8(ascii: "\"")) }
        endpoint.withAddressBytes { raw in
            if raw.count == 4 {
                for i in 0..<4 {
                    if i > 0 { out.append(UInt8(ascii: ".")) }
                    Self.integer(Int(raw[i]), &out)
                }
                return
            }
            out.append(UInt8(ascii: "["))
            withUnsafeTemporaryAllocation(of: CChar.self, capacity: Int(INET6_ADDRSTRLEN)) { text in
                guard inet_ntop(AF_INET6, raw.baseAddress, text.baseAddress, socklen_t(INET6_ADDRSTRLEN)) != nil else { return }
                var i = 0
                while i < text.count && text[i] != 0 {
                    out.append(UInt8(bitPattern: text[i]))
                    i += 1
                }
            }
            out.append(UInt8(ascii: "]"))
        }
        out.append(UInt8(ascii: ":"))
        Self.integer(Int(endpoint.port), &out)
        if json { out.append(UInt8(ascii: "\"")) }
    }

    /// Microseconds as milliseconds with three decimals (`12.345`), or absent.
    func milliseconds(_ microseconds: Int64?, _ out: inout [UInt8]) {
        guard let microseconds else { return none(&out) }
        let value = max(0, microseconds)
        Self.integer(Int(value / 1000), &out)
        out.append(UInt8(ascii: "."))
        Self.padded(Int(value % 1000), width: 3, &out)
    }

    static func ascii(_ text: StaticString, _ out: inout [UInt8]) {
        text.withUTF8Buffer { out.append(contentsOf: $0) }
    }

    static func integer(_ value: Int, _ out: inout [UInt8]) {
        if value < 0 { out.append(UInt8(ascii: "-")) }
        var v = value.magnitude
        var digits = 1
        var scale: UInt = 1
        while v / scale >= 10 {
            scale *= 10
            digits += 1
        }
        while scale > 0 {
            out.append(UInt8(ascii: "0") + UInt8(v / scale))
            v %= scale
            scale /= 10
        }
    }

    static func padded(_ value: Int, width: Int, _ out: inout [UInt8]) {
        var scale = 1
        for _ in 1..<width { scale *= 10 }
        var v = value
        while scale > 0 {
            out.append(UInt8(ascii: "0") + UInt8(v / scale % 10))
            v %= scale
            scale /= 10
        }
    }
}
