import Foundation
import FulcrumTestSupport
import Glibc
import Testing

extension Integration {
    @Suite(.serialized, .timeLimit(.minutes(1)))
    struct LifecycleTests {
        @Test func sigtermStopsAcceptingDrainsOpenConnectionsAndExitsZero() throws {
            let backend = try TestBackend(.echo)
            let proxy = try FulcrumProcess(config: proxyConfig(backends: [(backend.port, 1)]))
            let port = proxy.port("front")
            let open = try TestSocket.connect(port: port)
            try open.send("before\n")
            #expect(try open.receiveLine() == "before")

            proxy.signal(SIGTERM)
            // Both workers have closed their listening sockets once each has said so.
            try proxy.waitForLog(containing: "listeners closed", count: 2)
            #expect(throws: (any Error).self, "the listener must be closed during the drain") {
                _ = try TestSocket.connect(port: port)
            }
            // The open connection still works while draining.
            try open.send("during\n")
            #expect(try open.receiveLine() == "during")
            #expect(proxy.process.isRunning)
            open.close()
            #expect(try proxy.waitForExit() == 0)
            #expect(proxy.logCount(containing: "stopped: all connections drained") == 1)
        }

        @Test func drainTimeoutClosesWhatRemainsAndExitsZero() throws {
            let backend = try TestBackend(.echo)
            let proxy = try FulcrumProcess(config: proxyConfig(backends: [(backend.port, 1)], workers: 1,
                                                               top: "drain_timeout: 300ms"))
            let open = try TestSocket.connect(port: proxy.port("front"))
            try open.send("x\n")
            #expect(try open.receiveLine() == "x")
            let started = Date()
            proxy.signal(SIGTERM)
            #expect(try proxy.waitForExit() == 0)
            let took = Date().timeIntervalSince(started)
            #expect(took >= 0.25 && took < 3, "exited after \(took)s")
            #expect(try open.receiveAll().isEmpty)
            #expect(proxy.logCount(containing: "drain timeout reached") == 1)
        }

        @Test func secondSignalExitsAtOnce() throws {
            let backend = try TestBackend(.echo)
            let proxy = try FulcrumProcess(config: proxyConfig(backends: [(backend.port, 1)], workers: 1,
                                                               top: "drain_timeout: 1m"))
            let open = try TestSocket.connect(port: proxy.port("front"))
            try open.send("x\n")
            #expect(try open.receiveLine() == "x")
            proxy.signal(SIGINT)
            try proxy.waitForLog(containing: "SIGINT received")
            proxy.signal(SIGINT)
            #expect(try proxy.waitForExit(timeout: 5) == 1)
            #expect(proxy.logCount(containing: "second SIGINT") == 1)
        }

        @Test func startupFailsClearlyWhenTheAddressIsTaken() throws {
            let backend = try TestBackend(.echo)
            let dir = try TemporaryDirectory()
            let path = try dir.write("taken.yaml", proxyConfig(backends: [(backend.port, 1)]).replacingOccurrences(
                of: "127.0.0.1:0", with: "127.0.0.1:\(backend.port)"))
            let (status, output) = try runFulcrum(["run", "--config", path])
            #expect(status == 1)
            #expect(output.contains("bind 127.0.0.1:\(backend.port): Address already in use"))
        }
    }
}

extension Integration {
    @Suite struct CheckCommandTests {
        @Test func checkAcceptsTheQuickstartAndPrintsThePlan() throws {
            let quickstart = fulcrumExecutable().deletingLastPathComponent().deletingLastPathComponent()
                .deletingLastPathComponent().appendingPathComponent("examples/quickstart.yaml").path
            let (status, output) = try runFulcrum(["check", "--config", quickstart])
            #expect(status == 0, "\(output)")
            #expect(output.contains("is valid"))
            #expect(output.contains("listener redis: 127.0.0.1:7000 -> pool redis"))
            #expect(output.contains("127.0.0.1:6391  weight 2  (67% of connections)"))
            #expect(output.contains("connect_timeout 1s, idle_timeout 10m, retries 2"))
        }

        @Test func checkPrintsEveryValueAfterDefaults() throws {
            let dir = try TemporaryDirectory()
            let path = try dir.write("plan.yaml", """
            listeners:
              - {name: front, listen: '[::1]:7000', pool: app}
            pools:
              app:
                backends:
                  - {address: 127.0.0.1:9001, weight: 3}
                  - {address: 127.0.0.1:9002}
                  - {address: 127.0.0.1:9003, state: drain}
                  - {address: 127.0.0.1:9004, state: disabled, weight: 4}
                  - {address: 127.0.0.1:9005, backup: true}
                hedge_after: 50ms
                health: {check: http, path: /healthz}
              quiet:
                backends: [127.0.0.1:9101]
            """)
            let (status, output) = try runFulcrum(["check", "--config", path])
            #expect(status == 0, "\(output)")
            let lines = output.split(separator: "\n").map(String.init)
            func line(_ prefix: String) -> String? { lines.first { $0.hasPrefix(prefix) } }
            // Defaults are printed, with "off" for what is not on: queue and hedge_after even without limits.
            #expect(line("  slow_start") == "  slow_start off, queue size 1024 per worker, timeout 5s, hedge_after 50ms")
            #expect(line("  health http") == "  health http GET /healthz host (the backend's address) status 200-399 "
                + "every 2s (down: 2s, jitter 10%), timeout 1s, rise 2, fall 3, assume_healthy false")
            #expect(line("  retry_budget") == "  retry_budget 20% + 10/s, replay off, first_byte_timeout off, "
                + "on_backend_down keep, panic_threshold off, removed_backend_timeout off")
            #expect(line("  breaker") == "  breaker after 5 failures in a row, failure_ratio off, ejection 10s..5m "
                + "+ up to 10% jitter, half_open_trials 1, max_ejection_percent 50%")
            // Shares are over the enabled backends of each tier; drain and disabled backends get none.
            #expect(line("  127.0.0.1:9001") == "  127.0.0.1:9001  weight 3  (75% of connections)")
            #expect(line("  127.0.0.1:9002") == "  127.0.0.1:9002  weight 1  (25% of connections)")
            #expect(line("  127.0.0.1:9003") == "  127.0.0.1:9003  weight 1  (state drain: no new connections)")
            #expect(line("  127.0.0.1:9004") == "  127.0.0.1:9004  weight 4  (state disabled: no new connections)")
            #expect(line("  127.0.0.1:9005") == "  127.0.0.1:9005  weight 1  "
                + "(backup, priority 1: 100% of connections while no lower tier is eligible)")
            // A pool without hedge_after or health still names them.
            #expect(lines.contains("  slow_start off, queue size 1024 per worker, timeout 5s, hedge_after off"))
            #expect(lines.contains("  health off (no active checks)"))
        }

        /// `first` ignores weights and `hash` keeps its ring fixed: the plan says so instead of implying shares
        /// or a slow start that never happens.
        @Test func checkDoesNotPromiseWhatFirstAndHashIgnore() throws {
            let dir = try TemporaryDirectory()
            let path = try dir.write("plan.yaml", """
            listeners:
              - {name: a, listen: 127.0.0.1:7000, pool: fill}
              - {name: b, listen: 127.0.0.1:7001, pool: sticky}
            pools:
              fill:
                balance: first
                slow_start: 10s
                backends: [{address: 127.0.0.1:9001, max_connections: 5}, {address: 127.0.0.1:9002, max_connections: 5, weight: 3}]
              sticky:
                balance: hash
                slow_start: 10s
                backends: [127.0.0.1:9101, 127.0.0.1:9102]
            """)
            let (status, output) = try runFulcrum(["check", "--config", path])
            #expect(status == 0, "\(output)")
            let lines = output.split(separator: "\n").map(String.init)
            #expect(lines.contains("  127.0.0.1:9002  weight 3  (filled in file order)  max_connections 5"))
            #expect(lines.contains { $0.hasPrefix("  slow_start 10s (not applied: first fills backends in file order)") })
            #expect(lines.contains { $0.hasPrefix("  slow_start 10s (not applied: hash keeps its ring fixed)") })
        }

        @Test func checkRejectsABadFileWithEveryErrorAndExitsOne() throws {
            let dir = try TemporaryDirectory()
            let path = try dir.write("bad.yaml", """
            listeners:
              - name: a
                listen: 127.0.0.1:7000
                pool: missing
            pools:
              app:
                backends: []
                retries: lots
            """)
            let (status, output) = try runFulcrum(["check", "--config", path])
            #expect(status == 1)
            #expect(output.contains("3 configuration errors"))
            #expect(output.contains("bad.yaml:4: listeners[0].pool: pool 'missing' is not defined"))
            #expect(output.contains("bad.yaml:7: pools.app.backends: the pool has zero backends"))
            #expect(output.contains("bad.yaml:8: pools.app.retries: 'lots' is not an integer"))
        }

        @Test func checkReportsAMissingFile() throws {
            let (status, output) = try runFulcrum(["check", "--config", "/nonexistent/fulcrum.yaml"])
            #expect(status == 1)
            #expect(output.contains("/nonexistent/fulcrum.yaml: cannot read the configuration file: No such file or directory"))
        }

        @Test func versionAndHelp() throws {
            let version = try runFulcrum(["--version"])
            #expect(version.status == 0)
            #expect(version.output.trimmingCharacters(in: .whitespacesAndNewlines) == "0.1.0")
            let help = try runFulcrum(["--help"])
            #expect(help.output.contains("check") && help.output.contains("run"))
        }
    }
}
