import Foundation
import FulcrumTestSupport
import Glibc
import Testing

/// Parses a Prometheus text exposition with the reference parser (Debian's python3-prometheus-client) and
/// returns every sample as (name, labels, value).
func parseScrape(_ text: String) throws -> [(name: String, labels: [String: String], value: Double)] {
    let script = """
    import json, sys
    from prometheus_client.parser import text_string_to_metric_families
    out = []
    for family in text_string_to_metric_families(sys.stdin.read()):
        for s in family.samples:
            out.append([s.name, s.labels, s.value])
    print(json.dumps(out))
    """
    let process = Process()
    process.executableURL = URL(fileURLWithPath: "/usr/bin/python3")
    process.arguments = ["-c", script]
    let input = Pipe(), output = Pipe(), errors = Pipe()
    process.standardInput = input
    process.standardOutput = output
    process.standardError = errors
    try process.run()
    input.fileHandleForWriting.write(Data(text.utf8))
    try input.fileHandleForWriting.close()
    let data = output.fileHandleForReading.readDataToEndOfFile()
    let problem = String(decoding: errors.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
    process.waitUntilExit()
    guard process.terminationStatus == 0, let rows = try JSONSerialization.jsonObject(with: data) as? [[Any]] else {
        throw TestSocketError("the reference parser refused the scrape: \(problem)", errno: 0)
    }
    return rows.map { ($0[0] as? String ?? "", $0[1] as? [String: String] ?? [:], ($0[2] as? NSNumber)?.doubleValue ?? .nan) }
}

extension Integration {
    /// `GET /metrics` parsed by Prometheus' reference parser, its values checked against the traffic the
    /// test made.
    @Suite(.timeLimit(.minutes(1)))
    struct MetricsScrapeTests {
        @Test func theScrapeParsesAndCountsTheTrafficSent() throws {
            let a = try BackendProcess("a")
            let refused = try RefusingPort()
            let (aa, ra) = ("127.0.0.1:\(a.port)", "127.0.0.1:\(refused.port)")
            let proxy = try FulcrumProcess(config: """
            workers: 2
            admin: {listen: 127.0.0.1:0}
            listeners: [{name: front, listen: 127.0.0.1:0, pool: app}]
            pools:
              app:
                breaker: off
                retries: 1
                backends: [\(aa), \(ra)]
            """)
            let admin = try #require(proxy.adminPort)
            // 40 one-request connections: each goes to a, or to the refusing backend first and is retried on a.
            var sentBytes = 0, receivedBytes = 0
            for i in 0..<40 {
                let request = "req \(i)\n"
                let socket = try TestSocket.connect(port: proxy.port("front"))
                try socket.send(request)
                let line = try socket.receiveLine()
                #expect(line == "a:req \(i)")
                socket.close()
                sentBytes += request.utf8.count
                receivedBytes += line.utf8.count + 1
            }
            // A long-lived connection still open: its bytes show before it ends.
            let open = try TestSocket.connect(port: proxy.port("front"))
            try open.send("open\n")
            _ = try open.receiveLine()
            try proxy.reload(try String(contentsOfFile: proxy.configPath, encoding: .utf8))

            var samples: [(name: String, labels: [String: String], value: Double)] = []
            // Connections are counted as they close: wait until the 40 closed ones are in.
            let deadline = Date().addingTimeInterval(5)
            repeat {
                let scrape = try AdminClient.request(port: admin, "GET", "/metrics")
                #expect(scrape.status == 200)
                #expect(scrape.headers["content-type"]?.hasPrefix("text/plain; version=0.0.4") == true)
                samples = try parseScrape(scrape.body)
                let total = samples.first { $0.name == "fulcrum_backend_connections_total" && $0.labels["backend"] == aa }
                if total?.value == 41 { break }
                usleep(50_000)
            } while Date() < deadline
            func value(_ name: String, _ labels: [String: String]) -> Double? {
                samples.first { sample in sample.name == name && labels.allSatisfy { sample.labels[$0.key] == $0.value } }?.value
            }
            #expect(value("fulcrum_build_info", [:]) == 1)
            #expect(value("fulcrum_config_last_reload_successful", [:]) == 1)
            #expect((value("process_open_fds", [:]) ?? 0) >= 10 && (value("process_max_fds", [:]) ?? 0) >= 1024)
            #expect((value("process_start_time_seconds", [:]) ?? 0) > 1.7e9)
            #expect(value("fulcrum_config_reloads_total", ["result": "success"]) == 1)
            #expect(value("fulcrum_config_reloads_total", ["result": "failure"]) == 0)
            #expect(value("fulcrum_backend_connections_total", ["backend": aa, "pool": "app"]) == 41)
            #expect(value("fulcrum_backend_connections_active", ["backend": aa]) == 1, "the open connection")
            #expect(value("fulcrum_listener_connections_total", ["listener": "front"]) == 41)
            #expect(value("fulcrum_backend_bytes_total", ["backend": aa, "direction": "from_client"]) == Double(sentBytes + 5))
            #expect(value("fulcrum_backend_bytes_total", ["backend": aa, "direction": "to_client"]) == Double(receivedBytes + 7))
            // Round robin over two workers sends about half the first attempts to the refusing backend; every
            // refused connect was retried on a.
            let failures = value("fulcrum_backend_connect_failures_total", ["backend": ra, "reason": "refused"]) ?? 0
            #expect(failures >= 10 && failures <= 30, "\(failures) refused connects")
            #expect(value("fulcrum_pool_retries_total", ["pool": "app"]) == failures)
            #expect(value("fulcrum_backend_up", ["backend": aa]) == 1)
            #expect(value("fulcrum_backend_connect_duration_seconds_count", ["backend": aa]) == 41)
            #expect(value("fulcrum_backend_first_byte_duration_seconds_count", ["backend": aa]) == 41)
            #expect(value("fulcrum_backend_connect_duration_seconds_bucket", ["backend": aa, "le": "+Inf"]) == 41)
            #expect((value("fulcrum_backend_first_byte_duration_seconds_sum", ["backend": aa]) ?? 0) > 0)
            #expect(value("fulcrum_backend_breaker_state", ["backend": ra, "state": "closed"]) == 2, "breakers are per worker: 2 workers")
            open.close()
        }
    }
}
