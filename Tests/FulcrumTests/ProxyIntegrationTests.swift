import Foundation
import FulcrumTestSupport
import Testing

/// A config with one listener on a free port in front of `backends` (ports on 127.0.0.1).
func proxyConfig(backends: [(port: UInt16, weight: Int)], workers: Int = 2, extraPool: String = "",
                 top: String = "") -> String {
    var yaml = """
    workers: \(workers)
    \(top)
    listeners:
      - name: front
        listen: 127.0.0.1:0
        pool: app
    pools:
      app:
        backends:

    """
    for backend in backends {
        yaml += "      - address: 127.0.0.1:\(backend.port)\n        weight: \(backend.weight)\n"
    }
    yaml += extraPool
    return yaml
}

/// Sends `payload` through `socket` from a second thread while reading the echo back on this one, and
/// returns the checksum of what came back.
func echoRoundTrip(_ socket: TestSocket, payload: [UInt8]) throws -> Checksum {
    let writer = Thread { try? socket.send(payload) }
    writer.start()
    var received = Checksum()
    while received.count < payload.count {
        let chunk = try socket.receive(max: 1 << 20)
        guard !chunk.isEmpty else { break }
        received.add(chunk)
    }
    return received
}

extension Integration {
    @Suite(.serialized, .timeLimit(.minutes(2)))
    struct ProxyIntegrationTests {
        @Test func payloadsFromOneByteTo64MiBArriveIntactBothWays() throws {
            let backend = try TestBackend(.echo)
            let proxy = try FulcrumProcess(config: proxyConfig(backends: [(backend.port, 1)]))
            for size in [1, 1000, 65_543, (1 << 20) + 3, 64 << 20] {
                let payload = randomPayload(count: size, seed: UInt64(size))
                var sent = Checksum()
                sent.add(payload)
                let socket = try TestSocket.connect(port: proxy.port("front"), timeout: 60)
                let received = try echoRoundTrip(socket, payload: payload)
                #expect(received == sent, "payload of \(size) bytes")
            }
        }

        @Test func halfCloseStillDeliversTheReply() throws {
            let backend = try TestBackend(.echo)
            let proxy = try FulcrumProcess(config: proxyConfig(backends: [(backend.port, 1)]))
            let socket = try TestSocket.connect(port: proxy.port("front"))
            try socket.send("request that ends with a FIN")
            socket.shutdownWrite()
            // The echo backend only shuts its side after it saw our FIN, so reading to EOF proves the FIN
            // crossed the proxy and the reply still came back on the half-open connection.
            let reply = try socket.receiveAll()
            #expect(String(decoding: reply, as: UTF8.self) == "request that ends with a FIN")
            try proxy.waitForLog(containing: "fulcrum ready")
        }

        @Test func thousandConcurrentConnectionsAllComplete() throws {
            let backend = try TestBackend(.echo)
            let proxy = try FulcrumProcess(config: proxyConfig(backends: [(backend.port, 1)]))
            var sockets: [TestSocket] = []
            for _ in 0..<1000 {
                sockets.append(try TestSocket.connect(port: proxy.port("front")))
            }
            for (i, socket) in sockets.enumerated() { try socket.send("hello \(i)\n") }
            var answered = 0
            for (i, socket) in sockets.enumerated() where try socket.receiveLine() == "hello \(i)" {
                answered += 1
            }
            #expect(answered == 1000)
            #expect(backend.accepted == 1000)
        }

        @Test func weightsAreRespectedOver3000Connections() throws {
            let heavy = try TestBackend(.greet("heavy"))
            let light = try TestBackend(.greet("light"))
            let proxy = try FulcrumProcess(config: proxyConfig(backends: [(heavy.port, 2), (light.port, 1)]))
            var counts: [String: Int] = [:]
            for _ in 0..<3000 {
                let socket = try TestSocket.connect(port: proxy.port("front"))
                counts[try socket.receiveLine(), default: 0] += 1
            }
            let share = Double(counts["heavy", default: 0]) / 3000
            #expect(counts.values.reduce(0, +) == 3000)
            #expect(abs(share - 2.0 / 3.0) <= 0.05, "heavy got \(counts)")
        }

        @Test func refusedBackendIsSkippedWithoutClientVisibleErrors() throws {
            let refusing = try RefusingPort()
            let backend = try TestBackend(.echo)
            let proxy = try FulcrumProcess(config: proxyConfig(backends: [(refusing.port, 1), (backend.port, 1)], workers: 1))
            for i in 0..<50 {
                let socket = try TestSocket.connect(port: proxy.port("front"))
                try socket.send("ping \(i)\n")
                #expect(try socket.receiveLine() == "ping \(i)")
            }
            #expect(backend.accepted == 50)
            // Round robin sends every other first attempt to the refusing port and each is retried elsewhere,
            // until five consecutive refusals open its breaker and it is no longer tried at all.
            try proxy.waitForLog(containing: "breaker opened")
            #expect(proxy.logCount(containing: "reason=connection refused") == 5)
        }

        @Test func backendWithFullBacklogHitsConnectTimeoutAndFailsOver() throws {
            let hole = try BlackholeBackend()
            let backend = try TestBackend(.echo)
            let proxy = try FulcrumProcess(config: proxyConfig(
                backends: [(hole.port, 1), (backend.port, 1)], workers: 1,
                extraPool: "    connect_timeout: 200ms\n"))
            var slowest = 0.0
            for i in 0..<6 {
                let started = Date()
                let socket = try TestSocket.connect(port: proxy.port("front"))
                try socket.send("ping \(i)\n")
                #expect(try socket.receiveLine() == "ping \(i)")
                slowest = max(slowest, Date().timeIntervalSince(started))
            }
            #expect(backend.accepted == 6)
            #expect(slowest >= 0.2, "an attempt on the full backend must wait for the connect timeout")
            #expect(slowest < 2.0)
            try proxy.waitForLog(containing: "reason=connect timed out", count: 3)
        }

        @Test func allBackendsDownClosesTheClientPromptlyAndLogsWhy() throws {
            let a = try RefusingPort()
            let b = try RefusingPort()
            let proxy = try FulcrumProcess(config: proxyConfig(backends: [(a.port, 1), (b.port, 1)], workers: 1))
            let started = Date()
            let socket = try TestSocket.connect(port: proxy.port("front"))
            let reply = try socket.receiveAll()
            #expect(reply.isEmpty)
            #expect(Date().timeIntervalSince(started) < 1.0)
            let line = try proxy.waitForLog(containing: "no backend available")
            #expect(line.contains("attempts=2"))
            #expect(line.contains("last_error=connection refused"))
        }

        @Test func idleConnectionsAreClosedAfterTheIdleTimeout() throws {
            let backend = try TestBackend(.echo)
            let proxy = try FulcrumProcess(config: proxyConfig(backends: [(backend.port, 1)], workers: 1,
                                                               extraPool: "    idle_timeout: 300ms\n"))
            let socket = try TestSocket.connect(port: proxy.port("front"))
            try socket.send("x\n")
            #expect(try socket.receiveLine() == "x")
            let started = Date()
            #expect(try socket.receiveAll().isEmpty)
            let waited = Date().timeIntervalSince(started)
            #expect(waited >= 0.25 && waited < 2.0, "closed after \(waited)s")
        }
    }
}
