@testable import Fulcrum
import EventLoop
import Foundation
import FulcrumCore
import FulcrumTestSupport
import Glibc
import Logging
import Testing

/// One worker run in this process on its own loop thread, fed by a real `LiveState` (as the engine does),
/// so that a test reads the metrics the way `GET /metrics` will: from the main side, while the worker runs.
private final class InProcessProxy {
    let live: LiveState
    private let pipe: WakeupPipe
    private let enginePipe: WakeupPipe
    private let thread: LoopThread
    private let base = EventBase()

    init(yaml: String) throws {
        let config = try ConfigLoader.load(text: yaml, file: "metrics.yaml")
        let logger = Logger(label: "metrics-test") { _ in SwiftLogNoOpLogHandler() }
        pipe = try WakeupPipe()
        enginePipe = try WakeupPipe()
        let sender = pipe.sender
        let mailbox = Mailbox<WorkerMessage> { sender.send(WorkerCommand.mail.rawValue) }
        let reports = Mailbox<EngineReport> { true }
        live = LiveState(config: config, workers: 1, mailboxes: [mailbox], base: base, logger: logger)
        try live.bindListeners(takeover: nil)
        live.start()
        let plan = WorkerPlan(id: 0, bufferSize: config.bufferSize, drainTimeout: .seconds(1), wakeup: pipe,
                              allWorkers: [sender], engineSender: enginePipe.sender, mailbox: mailbox,
                              reports: reports, seed: 1, logger: logger,
                              accessLog: try AccessLog(nil, logger: logger, blockedSignals: []))
        thread = LoopThread.spawn(name: "metrics-test") { Worker(plan: plan).run() }
    }

    func port(_ listener: String) -> UInt16 { live.bound[listener]!.endpoint.port }

    /// Drains the worker and joins its thread.
    func stop() {
        _ = pipe.sender.send(WorkerCommand.drain.rawValue)
        thread.join()
    }

    /// Waits (bounded) until `condition` holds on values read from the main side.
    func waitUntil(_ what: String, timeout: Double = 10, _ condition: () -> Bool) throws {
        let deadline = Date().addingTimeInterval(timeout)
        while !condition() {
            guard Date() < deadline else { throw TestSocketError("timed out waiting for \(what)", errno: 0) }
            usleep(2_000)
        }
    }
}

extension Integration {
    @Suite(.serialized, .timeLimit(.minutes(1)))
    struct MetricsEngineTests {
        /// A client whose first connect is refused, retried on the echo backend, that keeps its connection
        /// open: its bytes show while it is open, the refusal and the retry are counted against the right
        /// backend and pool, both histograms have one observation, and the gauges fall back to 0 when it
        /// closes. Read through the same calls `/status` and `/metrics` use.
        @Test func countsAConnectionAsItLives() throws {
            let refusing = try RefusingPort()
            let echo = try TestBackend(.echo)
            let proxy = try InProcessProxy(yaml: """
            workers: 1
            listeners: [{name: "front", listen: 127.0.0.1:0, pool: web}]
            pools:
              web:
                balance: first
                retries: 1
                backends: [{address: 127.0.0.1:\(refusing.port), max_connections: 10}, {address: 127.0.0.1:\(echo.port), max_connections: 10}]
            """)
            defer { proxy.stop() }
            let live = proxy.live
            let client = try TestSocket.connect(port: proxy.port("front"))
            try client.send("hello")
            #expect(try client.receive(exactly: 5) == Array("hello".utf8))
            // Still open: the bytes and the gauges are current before the connection ends.
            try proxy.waitUntil("the bytes of an open connection") {
                let counts = live.backendCounts(pool: 0, slot: 1)
                return counts[.bytesFromClient] == 5 && counts[.bytesToClient] == 5 && counts.firstByte.count == 1
            }
            let open = live.backendCounts(pool: 0, slot: 1)
            #expect(open[.connectionsActive] == 1 && open[.connectionsTotal] == 1 && open.connect.count == 1)
            #expect(open.connectFailures == 0)
            let refused = live.backendCounts(pool: 0, slot: 0)
            #expect(refused[.failedRefused] == 1 && refused[.connectionsTotal] == 0 && refused.connect.count == 0)
            #expect(live.poolCounts(pool: 0)[.retries] == 1)
            #expect(live.listenerCounts("front")! == (active: 1, accepted: 1))
            #expect(open.firstByte.quantile(0.5) != nil)

            let text = live.metricsText(version: "test")
            let web = #"pool="web",backend="127.0.0.1:\#(echo.port)""#
            let gone = #"pool="web",backend="127.0.0.1:\#(refusing.port)""#
            for line in [
                #"fulcrum_build_info{version="test"} 1"#,
                #"fulcrum_listener_connections_active{listener="front"} 1"#,
                #"fulcrum_listener_connections_total{listener="front"} 1"#,
                #"fulcrum_pool_retries_total{pool="web"} 1"#,
                #"fulcrum_pool_queue_length{pool="web"} 0"#,
                "fulcrum_backend_connections_active{\(web)} 1",
                "fulcrum_backend_connections_total{\(web)} 1",
                #"fulcrum_backend_bytes_total{\#(web),direction="from_client"} 5"#,
                #"fulcrum_backend_bytes_total{\#(web),direction="to_client"} 5"#,
                #"fulcrum_backend_connect_failures_total{\#(gone),reason="refused"} 1"#,
                #"fulcrum_backend_connect_duration_seconds_bucket{\#(web),le="+Inf"} 1"#,
                "fulcrum_backend_connect_duration_seconds_count{\(web)} 1",
                "fulcrum_backend_first_byte_duration_seconds_count{\(web)} 1",
                "fulcrum_backend_up{\(web)} 1",
                #"fulcrum_config_reloads_total{result="success"} 0"#,
            ] {
                #expect(text.contains(line + "\n"), "missing: \(line)")
            }

            client.close()
            try proxy.waitUntil("the gauges back at 0") {
                live.backendCounts(pool: 0, slot: 1)[.connectionsActive] == 0 && live.listenerCounts("front")!.active == 0
            }
            #expect(live.backendCounts(pool: 0, slot: 1)[.connectionsTotal] == 1)
        }

        /// Clients that find no backend are counted as refused with their reason, never as connections.
        @Test func countsRefusedClientsByReason() throws {
            let refusing = try RefusingPort()
            let proxy = try InProcessProxy(yaml: """
            workers: 1
            listeners: [{name: "front", listen: 127.0.0.1:0, pool: web}]
            pools:
              web:
                backends: [{address: 127.0.0.1:\(refusing.port), state: disabled}]
            """)
            defer { proxy.stop() }
            let live = proxy.live
            for _ in 0..<2 {
                let client = try TestSocket.connect(port: proxy.port("front"))
                #expect(try client.receiveAll().isEmpty)
                client.close()
            }
            try proxy.waitUntil("two refusals") { live.poolCounts(pool: 0)[.refusedNoBackend] == 2 }
            #expect(live.poolCounts(pool: 0).refused == 2)
            #expect(live.backendCounts(pool: 0, slot: 0) == BackendCounts())
            #expect(!live.backendIsUp(pool: 0, slot: 0))
            #expect(live.metricsText(version: "test").contains(#"fulcrum_pool_clients_refused_total{pool="web",reason="no_backend"} 2"# + "\n"))
        }
    }
}
