import EventLoop
import Foundation
@testable import Fulcrum
import FulcrumCore
import Testing

/// The access log's two line formats, byte for byte.
@Suite struct AccessLogFormatTests {
    static let entry = AccessLogEntry(
        time: 1_795_330_469_123_456, client: Endpoint(ipv4: (127, 0, 0, 1), port: 51234), listener: "front", pool: "app",
        backend: Endpoint(ipv4: (10, 0, 0, 3), port: 6379), tries: 2, replays: 1, hedged: false, connect: 1_234,
        firstByte: 5_006, duration: 1_234_567, bytesIn: 14, bytesOut: 2_048, end: .clientClosed, reason: nil)

    @Test func logfmt() {
        var formatter = AccessLogFormatter()
        var out: [UInt8] = []
        formatter.append(Self.entry, format: .logfmt, to: &out)
        #expect(String(decoding: out, as: UTF8.self) == "time=2026-11-22T06:54:29.123Z client=127.0.0.1:51234 listener=front "
            + "pool=app backend=10.0.0.3:6379 tries=2 replays=1 hedged=false connect_ms=1.234 first_byte_ms=5.006 "
            + "duration_ms=1234.567 bytes_in=14 bytes_out=2048 end=client_closed reason=-\n")
    }

    @Test func json() throws {
        var formatter = AccessLogFormatter()
        var out: [UInt8] = []
        formatter.append(Self.entry, format: .json, to: &out)
        #expect(String(decoding: out, as: UTF8.self) == #"{"time":"2026-11-22T06:54:29.123Z","client":"127.0.0.1:51234","#
            + #""listener":"front","pool":"app","backend":"10.0.0.3:6379","tries":2,"replays":1,"hedged":false,"#
            + #""connect_ms":1.234,"first_byte_ms":5.006,"duration_ms":1234.567,"bytes_in":14,"bytes_out":2048,"#
            + #""end":"client_closed","reason":null}"# + "\n")
        let object = try #require(JSONSerialization.jsonObject(with: Data(out)) as? [String: Any])
        #expect(object["tries"] as? Int == 2)
    }

    /// Absent values, IPv6 addresses and texts with spaces or quotes, in both formats.
    @Test func absentValuesAndQuoting() throws {
        var entry = Self.entry
        entry.client = Endpoint(ipv6: [0x20, 0x01, 0x0d, 0xb8] + [UInt8](repeating: 0, count: 11) + [1], port: 443)
        entry.listener = "a \"b\"=c"
        entry.backend = nil
        entry.connect = nil
        entry.firstByte = nil
        entry.hedged = true
        entry.end = .connectFailed
        entry.reason = "connection refused"
        var formatter = AccessLogFormatter()
        var out: [UInt8] = []
        formatter.append(entry, format: .logfmt, to: &out)
        let text = String(decoding: out, as: UTF8.self)
        #expect(text.contains(#"client=[2001:db8::1]:443 listener="a \"b\"=c" pool=app backend=- "#))
        #expect(text.contains("hedged=true connect_ms=- first_byte_ms=- "))
        #expect(text.hasSuffix(#"end=connect_failed reason="connection refused""# + "\n"))
        out.removeAll()
        formatter.append(entry, format: .json, to: &out)
        let object = try #require(JSONSerialization.jsonObject(with: Data(out)) as? [String: Any])
        #expect(object["client"] as? String == "[2001:db8::1]:443")
        #expect(object["listener"] as? String == "a \"b\"=c")
        #expect(object["backend"] is NSNull && object["connect_ms"] is NSNull)
        #expect(object["hedged"] as? Bool == true)
        #expect(object["reason"] as? String == "connection refused")
    }

    /// The calendar part is cached per second: a later second, and a time before the epoch's second, are right.
    @Test func timeAcrossSeconds() {
        var formatter = AccessLogFormatter()
        var entry = Self.entry
        var out: [UInt8] = []
        for time: Int64 in [1_795_330_469_999_999, 1_795_330_470_000_001, 0] {
            entry.time = time
            formatter.append(entry, format: .logfmt, to: &out)
        }
        let times = String(decoding: out, as: UTF8.self).split(separator: "\n").map { $0.split(separator: " ")[0] }
        #expect(times == ["time=2026-11-22T06:54:29.999Z", "time=2026-11-22T06:54:30.000Z", "time=1970-01-01T00:00:00.000Z"])
    }
}
