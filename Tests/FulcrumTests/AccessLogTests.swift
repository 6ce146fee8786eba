import Foundation
import FulcrumTestSupport
import Glibc
import Testing

/// Reads the access log file until it has `count` lines (lines reach it at most 100 ms after a connection
/// ends), or `timeout` passes.
func accessLines(_ path: String, count: Int, timeout: Double = 5) -> [String] {
    let deadline = Date().addingTimeInterval(timeout)
    while true {
        let text = (try? String(contentsOfFile: path, encoding: .utf8)) ?? ""
        let lines = text.split(separator: "\n").map(String.init)
        if lines.count >= count || Date() > deadline { return lines }
        usleep(20_000)
    }
}

func jsonLine(_ line: String) throws -> [String: Any] {
    try #require(JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any], "not a JSON object: \(line)")
}

/// A temporary directory for an access log file.
func accessLogDirectory() throws -> String {
    let path = NSTemporaryDirectory() + "fulcrum-access-\(getpid())-\(UInt32.random(in: 0 ... .max))"
    try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    return path
}

/// One request and its answer, then the client closes.
func request(_ port: UInt16) throws {
    let socket = try TestSocket.connect(port: port)
    try socket.send("ping\n")
    _ = try socket.receiveLine()
    socket.close()
}

extension Integration {
    @Suite(.serialized, .timeLimit(.minutes(2)))
    struct AccessLogTests {
        /// Completed connections, a refused backend retried, a backend that failed and was replayed, and a
        /// connect that failed for good: one JSON line each with the values the traffic produced.
        @Test func jsonLinesDescribeEachEnding() throws {
            let good = try TestBackend(.named("good"))
            let refusing = try RefusingPort()
            let resetting = try BackendProcess("r", mode: "reset")
            let dir = try accessLogDirectory()
            let path = dir + "/access.log"
            let proxy = try FulcrumProcess(config: """
                workers: 1
                access_log: {path: \(path), format: json}
                listeners:
                  - {name: front, listen: 127.0.0.1:0, pool: app}
                  - {name: retry, listen: 127.0.0.1:0, pool: refused_first}
                  - {name: replay, listen: 127.0.0.1:0, pool: reset_first}
                  - {name: dead, listen: 127.0.0.1:0, pool: dead}
                pools:
                  app: {backends: [127.0.0.1:\(good.port)]}
                  refused_first: {balance: first, retries: 1, breaker: off, backends: [{address: 127.0.0.1:\(refusing.port), max_connections: 100}, {address: 127.0.0.1:\(good.port), max_connections: 100}]}
                  reset_first: {balance: first, breaker: off, replay: {max_bytes: 64KiB}, backends: [{address: 127.0.0.1:\(resetting.port), max_connections: 100}, {address: 127.0.0.1:\(good.port), max_connections: 100}]}
                  dead: {retries: 1, breaker: off, backends: [127.0.0.1:\(refusing.port)]}
                """)
            try request(proxy.port("front"))
            try request(proxy.port("retry"))
            try request(proxy.port("replay"))
            let dead = try TestSocket.connect(port: proxy.port("dead"))
            #expect(try dead.receiveAll().isEmpty)
            let lines = accessLines(path, count: 4)
            #expect(lines.count == 4, "\(lines)")
            let entries = try lines.map(jsonLine)
            let byListener = Dictionary(entries.map { ($0["listener"] as? String ?? "?", $0) }) { a, _ in a }
            let goodAddress = "127.0.0.1:\(good.port)"

            let front = try #require(byListener["front"])
            #expect(front["pool"] as? String == "app")
            #expect(front["backend"] as? String == goodAddress)
            #expect((front["client"] as? String)?.hasPrefix("127.0.0.1:") == true)
            #expect(front["tries"] as? Int == 1 && front["replays"] as? Int == 0 && front["hedged"] as? Bool == false)
            #expect(front["bytes_in"] as? Int == 5 && front["bytes_out"] as? Int == 10)
            #expect(front["end"] as? String == "client_closed")
            #expect(front["reason"] is NSNull)
            let connect = try #require(front["connect_ms"] as? Double)
            let firstByte = try #require(front["first_byte_ms"] as? Double)
            let duration = try #require(front["duration_ms"] as? Double)
            #expect(connect >= 0 && connect <= firstByte && firstByte <= duration && duration < 5000, "\(front)")
            let time = try #require(front["time"] as? String)
            #expect(time.count == 24 && time.hasSuffix("Z") && time.contains("T"), "\(time)")

            let retry = try #require(byListener["retry"])
            #expect(retry["tries"] as? Int == 2)
            #expect(retry["backend"] as? String == goodAddress)
            #expect(retry["end"] as? String == "client_closed")

            let replay = try #require(byListener["replay"])
            #expect(replay["tries"] as? Int == 2 && replay["replays"] as? Int == 1)
            #expect(replay["backend"] as? String == goodAddress)
            #expect(replay["bytes_out"] as? Int == 10)

            let failed = try #require(byListener["dead"])
            #expect(failed["end"] as? String == "connect_failed")
            #expect(failed["reason"] as? String == "connection refused")
            #expect(failed["tries"] as? Int == 1, "its only backend was tried; a retry needs another one")
            #expect(failed["backend"] as? String == "127.0.0.1:\(refusing.port)")
            #expect(failed["first_byte_ms"] is NSNull)
            withExtendedLifetime((proxy, good, refusing, resetting)) {}
        }

        /// logfmt on stdout: an idle timeout and a queue timeout, each named.
        @Test func logfmtOnStdoutNamesTimeouts() throws {
            let good = try TestBackend(.named("good"))
            let proxy = try FulcrumProcess(config: """
                workers: 1
                access_log: {path: stdout, format: logfmt}
                listeners:
                  - {name: front, listen: 127.0.0.1:0, pool: app}
                pools:
                  app:
                    idle_timeout: 300ms
                    queue: {size: 10, timeout: 200ms}
                    backends: [{address: 127.0.0.1:\(good.port), max_connections: 1}]
                """)
            let port = proxy.port("front")
            let holder = try TestSocket.connect(port: port)
            try holder.send("ping\n")
            _ = try holder.receiveLine()
            let waiter = try TestSocket.connect(port: port)
            #expect(try waiter.receiveAll().isEmpty)
            #expect(try holder.receiveAll().isEmpty)
            let queued = try proxy.waitForLog(containing: "end=queue_timeout", timeout: 5)
            let idle = try proxy.waitForLog(containing: "end=idle_timeout", timeout: 5)
            #expect(queued.hasPrefix("time=") && queued.contains(" listener=front pool=app backend=- tries=0 "), "\(queued)")
            #expect(idle.contains(" backend=127.0.0.1:\(good.port) tries=1 replays=0 hedged=false "), "\(idle)")
            #expect(idle.contains(" bytes_in=5 bytes_out=10 "), "\(idle)")
        }

        /// SIGUSR1 after the file was renamed: later lines go to a new file at the configured path.
        @Test func sigusr1ReopensTheFileForRotation() throws {
            let good = try TestBackend(.named("good"))
            let dir = try accessLogDirectory()
            let path = dir + "/access.log"
            let proxy = try FulcrumProcess(config: """
                workers: 2
                access_log: {path: \(path)}
                listeners:
                  - {name: front, listen: 127.0.0.1:0, pool: app}
                pools:
                  app: {backends: [127.0.0.1:\(good.port)]}
                """)
            for _ in 0..<3 { try request(proxy.port("front")) }
            #expect(accessLines(path, count: 3).count == 3)
            try FileManager.default.moveItem(atPath: path, toPath: path + ".1")
            proxy.signal(SIGUSR1)
            try proxy.waitForLog(containing: "access log reopened")
            for _ in 0..<2 { try request(proxy.port("front")) }
            let fresh = accessLines(path, count: 2)
            #expect(fresh.count == 2 && fresh.allSatisfy { $0.hasPrefix("time=") && $0.contains(" end=client_closed") }, "\(fresh)")
            #expect(accessLines(path + ".1", count: 3, timeout: 0).count == 3)
        }

        /// A destination that cannot take the lines (/dev/full: every write fails with ENOSPC; permissions
        /// would not stop root) drops them, counted, and connections are served all the same.
        @Test func unwritableDestinationDropsLinesNotConnections() throws {
            let good = try TestBackend(.named("good"))
            let proxy = try FulcrumProcess(config: """
                workers: 1
                access_log: {path: /dev/full, format: json}
                listeners:
                  - {name: front, listen: 127.0.0.1:0, pool: app}
                pools:
                  app: {backends: [127.0.0.1:\(good.port)]}
                """)
            for _ in 0..<20 { try request(proxy.port("front")) }
            let warning = try proxy.waitForLog(containing: "access log: dropping lines")
            #expect(warning.contains("No space left on device"), "\(warning)")
            proxy.signal(SIGTERM)
            #expect(try proxy.waitForExit() == 0)
            #expect(proxy.logCount(containing: "access log: dropping lines") == 1)
            let total = try #require(proxy.log.first { $0.contains("access log: lines were dropped") })
            #expect(total.contains("dropped_lines=20"), "\(total)")
        }

        /// Without `access_log`, nothing is written per connection.
        @Test func offByDefault() throws {
            let good = try TestBackend(.named("good"))
            let proxy = try FulcrumProcess(config: strategyConfig(balance: "round_robin", backends: ["127.0.0.1:\(good.port)"]))
            for _ in 0..<5 { try request(proxy.port("front")) }
            proxy.signal(SIGTERM)
            #expect(try proxy.waitForExit() == 0)
            #expect(proxy.log.filter { $0.contains("end=") || $0.contains(#""end""#) }.isEmpty, "\(proxy.log)")
            #expect(proxy.logCount(containing: "client_closed") == 0)
        }
    }
}
