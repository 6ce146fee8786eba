import Foundation
import FulcrumTestSupport
import Glibc
import Testing

/// A running proxy with its admin API on a free port, in front of three killable backends whose pool has
/// active checks (every 300 ms, down after one failure).
private final class AdminFixture {
    let backends: [BackendProcess]
    let proxy: FulcrumProcess
    let adminPort: UInt16

    init() throws {
        backends = try (1...3).map { try BackendProcess("b\($0)") }
        proxy = try FulcrumProcess(config: """
        workers: 2
        admin: {listen: 127.0.0.1:0}
        listeners: [{name: front, listen: 127.0.0.1:0, pool: app}]
        pools:
          app:
            backends: [\(backends.map { "127.0.0.1:\($0.port)" }.joined(separator: ", "))]
            health: {interval: 300ms, rise: 1, fall: 1}
        """)
        let line = try proxy.waitForLog(containing: "admin API on http://")
        let digits = line.components(separatedBy: "admin API on http://127.0.0.1:").last?.prefix { $0.isNumber } ?? ""
        guard let port = UInt16(digits) else { throw TestSocketError("no admin port in: \(line)", errno: 0) }
        adminPort = port
    }

    func address(_ i: Int) -> String { "127.0.0.1:\(backends[i].port)" }

    /// One admin request over HTTP/1.0; the answer's status line and body.
    func request(_ method: String, _ path: String) throws -> String {
        let socket = try TestSocket.connect(port: adminPort, timeout: 5)
        defer { socket.close() }
        socket.setTimeout(5)
        try socket.send("\(method) \(path) HTTP/1.0\r\nHost: 127.0.0.1:\(adminPort)\r\nContent-Length: 0\r\n\r\n")
        return String(decoding: try socket.receiveAll(), as: UTF8.self)
    }

    /// `fulcrum status` (its output is a pipe, not a terminal).
    func status(_ arguments: [String] = []) throws -> (status: Int32, output: String) {
        try runFulcrum(["status", "--admin", "127.0.0.1:\(adminPort)"] + arguments)
    }

    /// Waits (bounded) until `fulcrum status` shows `text` on the line of backend `i`.
    func waitForStatus(backend i: Int, showing text: String, timeout: Double = 10) throws -> String {
        let deadline = Date().addingTimeInterval(timeout)
        var last = ""
        while Date() < deadline {
            last = try status().output
            if last.split(separator: "\n").contains(where: { $0.contains(address(i)) && $0.contains(text) }) { return last }
            usleep(100_000)
        }
        throw TestSocketError("fulcrum status did not show '\(text)' for \(address(i)) within \(timeout)s; last:\n\(last)", errno: 0)
    }
}

extension Integration {
    @Suite(.timeLimit(.minutes(2)))
    struct StatusPageTests {
        /// The page in a real headless Chromium: it lists the backends, its Drain button drains one (a
        /// same-origin POST), it shows a killed backend down within a few seconds, and the browser logged
        /// no console error or warning.
        @Test func headlessChromiumShowsTheBackendsADrainAndAKill() throws {
            let missing = ["/usr/bin/chromium", "/usr/bin/chromedriver", "/usr/lib/python3/dist-packages/selenium"]
                .filter { !FileManager.default.fileExists(atPath: $0) }
            guard missing.isEmpty else {
                Issue.record("missing \(missing.joined(separator: ", ")): `make deps-test` installs chromium, chromium-driver and python3-selenium")
                return
            }
            let fixture = try AdminFixture()
            let script = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
                .appendingPathComponent("Support/status_page.py")
            let browser = try ScriptProcess("/usr/bin/python3", [
                script.path, "http://127.0.0.1:\(fixture.adminPort)/", fixture.address(0), fixture.address(1), fixture.address(2),
                "--drain", fixture.address(1), "--kill", fixture.address(2), "--down-within", "6",
            ])
            try browser.waitForLine("ready for the kill", timeout: 60)
            fixture.backends[2].kill9()
            browser.write("killed\n")
            let status = try browser.waitForExit(timeout: 30)
            let output = browser.output
            #expect(status == 0, "the page test failed:\n\(output)")
            #expect(output.contains("listed \(fixture.address(0))=up \(fixture.address(1))=up \(fixture.address(2))=up"), "\(output)")
            #expect(output.contains("drained \(fixture.address(1))"), "\(output)")
            #expect(output.contains("down after"), "\(output)")
            #expect(output.contains("check down: connection refused"), "\(output)")
            #expect(output.contains("no console errors"), "\(output)")
            // The drain came through the admin API, as an operator change.
            #expect(try fixture.request("GET", "/pools/app/backends/\(fixture.address(1))/events").contains("drain via admin"))
        }

        /// `fulcrum status` lists every backend with its state, weight source and check reason, in plain text
        /// when its output is not a terminal; `--config` finds the address in the file's `admin.listen`.
        @Test func statusCommandPrintsBackendsAndStates() throws {
            let fixture = try AdminFixture()
            let first = try fixture.waitForStatus(backend: 2, showing: " up ")
            #expect(!first.contains("\u{1B}["), "no colors when the output is a pipe:\n\(first)")
            #expect(first.contains("front") && first.contains("pool app: round_robin, active checks"), "\(first)")
            for i in 0..<3 { #expect(first.contains(fixture.address(i)), "\(first)") }

            for (i, action) in [(0, "drain"), (1, "disable")] {
                let answer = try fixture.request("POST", "/pools/app/backends/\(fixture.address(i))/\(action)")
                #expect(answer.hasPrefix("HTTP/1.") && answer.contains(" 200 OK"), "\(answer)\n\(fixture.proxy.log.suffix(40).joined(separator: "\n"))")
            }
            fixture.backends[2].kill9()
            let after = try fixture.waitForStatus(backend: 2, showing: "down")
            let lines = after.split(separator: "\n")
            func line(_ i: Int) -> String { lines.first { $0.contains(fixture.address(i)) }.map(String.init) ?? "" }
            #expect(line(0).contains("draining"), "\(after)")
            #expect(line(1).contains("disabled"), "\(after)")
            #expect(line(2).contains("down") && line(2).contains("connection refused"), "\(after)")
            #expect(lines.contains { $0.contains("BACKEND") && $0.contains("STATE") && $0.contains("CHECK") }, "\(after)")

            let directory = try TemporaryDirectory()
            let config = try directory.write("admin.yaml", """
            admin: {listen: 127.0.0.1:\(fixture.adminPort)}
            listeners: [{name: other, listen: 127.0.0.1:0, pool: p}]
            pools: {p: {backends: [127.0.0.1:1]}}
            """)
            let viaConfig = try runFulcrum(["status", "--config", config])
            #expect(viaConfig.status == 0 && viaConfig.output.contains(fixture.address(2)), "\(viaConfig.output)")
        }

        /// Nothing listening, or something that never answers: a clear error and exit 1, within the timeout.
        @Test func statusCommandFailsClearlyWithoutAnAdmin() throws {
            let closed = try TestBackend(.echo)
            let port = closed.port
            closed.stop()
            let refused = try runFulcrum(["status", "--admin", "127.0.0.1:\(port)"])
            #expect(refused.status == 1)
            #expect(refused.output.contains("cannot connect to the admin API at 127.0.0.1:\(port): Connection refused"), "\(refused.output)")
            #expect(refused.output.contains("nothing listens there"), "\(refused.output)")

            let silent = try TestBackend(.sink)
            let started = Date()
            let hung = try runFulcrum(["status", "--admin", "127.0.0.1:\(silent.port)", "--timeout", "1"])
            #expect(hung.status == 1)
            #expect(hung.output.contains("did not answer within 1s"), "\(hung.output)")
            #expect(Date().timeIntervalSince(started) < 10)

            let directory = try TemporaryDirectory()
            let config = try directory.write("plain.yaml", "listeners: [{name: a, listen: 127.0.0.1:0, pool: p}]\npools: {p: {backends: [127.0.0.1:1]}}\n")
            let noAdmin = try runFulcrum(["status", "--config", config])
            #expect(noAdmin.status == 1)
            #expect(noAdmin.output.contains("has no admin API (add admin: {listen: 127.0.0.1:9901}, or pass --admin)"), "\(noAdmin.output)")
        }
    }
}
