import Foundation
import FulcrumTestSupport
import Testing

/// A one-listener config whose pool uses `balance` over the given backend lines.
func strategyConfig(balance: String, backends: [String], workers: Int = 1, poolExtra: String = "") -> String {
    """
    workers: \(workers)
    listeners:
      - {name: front, listen: 127.0.0.1:0, pool: app}
    pools:
      app:
        balance: \(balance)
    \(poolExtra)
        backends:
    \(backends.map { "      - \($0)" }.joined(separator: "\n"))
    """
}

/// Opens a connection, sends one request, returns the name of the backend that answered.
func askName(port: UInt16) throws -> String {
    let socket = try TestSocket.connect(port: port)
    try socket.send("ping\n")
    let line = try socket.receiveLine()
    return String(line.prefix { $0 != ":" })
}

extension Integration {
    @Suite(.serialized, .timeLimit(.minutes(2)))
    struct StrategyIntegrationTests {
        @Test func randomFollowsWeights() throws {
            let a = try TestBackend(.named("a")), b = try TestBackend(.named("b"))
            let proxy = try FulcrumProcess(config: strategyConfig(balance: "random", backends: [
                "{address: 127.0.0.1:\(a.port), weight: 2}", "{address: 127.0.0.1:\(b.port), weight: 1}"]))
            var counts: [String: Int] = [:]
            for _ in 0..<1500 { counts[try askName(port: proxy.port("front")), default: 0] += 1 }
            let share = Double(counts["a", default: 0]) / 1500
            #expect(abs(share - 2.0 / 3.0) < 0.06, "\(counts)")
        }

        @Test(arguments: ["least_connections", "p2c"])
        func connectionCountingStrategiesAvoidABackendHoldingLongConnections(strategy: String) throws {
            let a = try TestBackend(.named("a")), b = try TestBackend(.named("b")), c = try TestBackend(.named("c"))
            let proxy = try FulcrumProcess(config: strategyConfig(balance: strategy, backends: [
                "127.0.0.1:\(a.port)", "127.0.0.1:\(b.port)", "127.0.0.1:\(c.port)"]))
            let port = proxy.port("front")
            // Open 30 long connections, then close the ones on "b" and "c": "a" keeps its share open.
            var open: [(String, TestSocket)] = []
            for _ in 0..<30 {
                let socket = try TestSocket.connect(port: port)
                try socket.send("hold\n")
                open.append((String(try socket.receiveLine().prefix(1)), socket))
            }
            let held = open.filter { $0.0 == "a" }.map(\.1)
            for (name, socket) in open where name != "a" { socket.close() }
            #expect(held.count >= 5, "a holds \(held.count) connections")
            var counts: [String: Int] = [:]
            for _ in 0..<300 { counts[try askName(port: port), default: 0] += 1 }
            // Round robin would give "a" about 100 of these. A few may still land there while the proxy is
            // finishing the closes of the connections just dropped on "b" and "c".
            #expect(counts["a", default: 0] <= 3, "\(strategy): \(counts) while a holds \(held.count)")
            #expect(counts["b", default: 0] > 90 && counts["c", default: 0] > 90, "\(counts)")
        }

        @Test func peakEWMAShiftsTrafficAwayFromASlowBackend() throws {
            let backends = try ["a", "b", "c"].map { try TestBackend(.named($0)) }
            let proxy = try FulcrumProcess(config: strategyConfig(
                balance: "{strategy: peak_ewma, decay: 2s, default_latency: 5ms}",
                backends: backends.map { "127.0.0.1:\($0.port)" }))
            let port = proxy.port("front")
            // One request per connection: the balancer chooses every time, and each answer is a latency sample.
            // (Connections held open would weigh in too, as active connections, and blur what is measured.)
            func round(_ requests: Int) throws -> [String: Int] {
                var counts: [String: Int] = [:]
                for _ in 0..<requests { counts[try askName(port: port), default: 0] += 1 }
                return counts
            }
            // While all are equally fast, "a" takes its share. A latency spike from a busy machine can make it
            // look slow for a moment, so measure windows of 100 until one shows it (at most 20 windows).
            var healthy: [String: Int] = [:]
            for _ in 0..<20 {
                healthy = try round(100)
                if healthy["a", default: 0] >= 20 { break }
            }
            let healthyShare = Double(healthy["a", default: 0]) / 100
            #expect(healthyShare >= 0.2, "while healthy: \(healthy)")

            backends[0].delayMilliseconds = 50
            _ = try round(60) // let it measure the slowness
            let slow = try round(300)
            let slowShare = Double(slow["a", default: 0]) / 300
            #expect(slowShare < 0.05, "with a 10x slower backend: \(slow)")
            #expect(slowShare < healthyShare / 4)
        }

        @Test func peakEWMAGivesABackendThatIsFastAgainItsShareBackWithinSeconds() throws {
            let backends = try ["a", "b", "c"].map { try TestBackend(.named($0)) }
            // Default decay (10 s): falling from 200 ms to the others' fraction of a millisecond by decay
            // alone would take over a minute.
            let proxy = try FulcrumProcess(config: strategyConfig(balance: "peak_ewma",
                                                                  backends: backends.map { "127.0.0.1:\($0.port)" }))
            let port = proxy.port("front")
            /// One request per connection, one after the other, for `seconds`: when each was answered, and by whom.
            func run(seconds: Double) throws -> [(at: Date, name: String)] {
                let end = Date().addingTimeInterval(seconds)
                var answers: [(at: Date, name: String)] = []
                while Date() < end && answers.count < 50_000 {
                    let name = try askName(port: port)
                    answers.append((Date(), name))
                }
                return answers
            }
            func share(_ answers: some Collection<(at: Date, name: String)>) -> Double {
                Double(answers.filter { $0.name == "a" }.count) / Double(max(1, answers.count))
            }
            _ = try run(seconds: 0.5)
            backends[0].delayMilliseconds = 200
            let slowSince = Date()
            let slow = try run(seconds: 5)
            backends[0].delayMilliseconds = 0
            let fastSince = Date()
            let fast = try run(seconds: 6)
            // Skip the first second of slowness: the connections already on their way to "a" end in it.
            let whileSlow = share(slow.filter { $0.at > slowSince.addingTimeInterval(1) })
            let recovered = fast.filter { $0.at > fastSince.addingTimeInterval(3) }
            #expect(whileSlow < 0.05, "while slow: \(whileSlow) of \(slow.count)")
            #expect(share(recovered) >= 0.15, "3 s to 6 s after it is fast again: \(share(recovered)) of \(recovered.count)")
            print("peak_ewma recovery: \(whileSlow) of \(slow.count) while slow, \(share(recovered)) of \(recovered.count) 3-6 s after")
        }

        @Test func hashKeepsOneClientAddressOnOneBackend() throws {
            let backends = try ["a", "b", "c"].map { try TestBackend(.named($0)) }
            let byIP = try FulcrumProcess(config: strategyConfig(balance: "hash", backends: backends.map { "127.0.0.1:\($0.port)" }))
            let names = try Set((0..<100).map { _ in try askName(port: byIP.port("front")) })
            #expect(names.count == 1, "every connection from 127.0.0.1 lands on one backend: \(names)")

            let byPort = try FulcrumProcess(config: strategyConfig(balance: "{strategy: hash, key: ip_port}",
                                                                   backends: backends.map { "127.0.0.1:\($0.port)" }))
            var counts: [String: Int] = [:]
            for _ in 0..<300 { counts[try askName(port: byPort.port("front")), default: 0] += 1 }
            #expect(counts.count == 3 && counts.values.allSatisfy { $0 > 50 }, "source ports spread: \(counts)")
        }

        @Test func firstFillsBackendsInOrder() throws {
            let a = try TestBackend(.named("a")), b = try TestBackend(.named("b"))
            let proxy = try FulcrumProcess(config: strategyConfig(balance: "first", backends: [
                "{address: 127.0.0.1:\(a.port), max_connections: 2}", "{address: 127.0.0.1:\(b.port), max_connections: 5}"]))
            let port = proxy.port("front")
            var held: [TestSocket] = []
            var names: [String] = []
            for _ in 0..<4 {
                let socket = try TestSocket.connect(port: port)
                try socket.send("x\n")
                names.append(String(try socket.receiveLine().prefix(1)))
                held.append(socket)
            }
            #expect(names == ["a", "a", "b", "b"])
        }

        @Test func backupServesOnlyWhenPrimariesFail() throws {
            let primary = try TestBackend(.named("primary")), backup = try TestBackend(.named("backup"))
            let proxy = try FulcrumProcess(config: strategyConfig(balance: "round_robin", backends: [
                "127.0.0.1:\(primary.port)", "{address: 127.0.0.1:\(backup.port), backup: true}"]))
            let port = proxy.port("front")
            #expect(try (0..<20).map { _ in try askName(port: port) }.allSatisfy { $0 == "primary" })
            primary.stop()
            // The primary now refuses: each client is retried on the backup and never sees the failure.
            #expect(try (0..<20).map { _ in try askName(port: port) }.allSatisfy { $0 == "backup" })
        }

        @Test func fullPoolQueuesClientsInOrderAndTimesThemOut() throws {
            let backend = try TestBackend(.named("only"))
            let proxy = try FulcrumProcess(config: strategyConfig(
                balance: "round_robin", backends: ["{address: 127.0.0.1:\(backend.port), max_connections: 1}"],
                poolExtra: "    queue: {size: 2, timeout: 800ms}"))
            let port = proxy.port("front")
            let first = try TestSocket.connect(port: port)
            try first.send("1\n")
            #expect(try first.receiveLine() == "only:1")
            // Two clients wait (in order); a third finds the queue full and is closed at once.
            let second = try TestSocket.connect(port: port)
            try second.send("2\n")
            try proxy.waitForLog(containing: "fulcrum ready")
            let third = try TestSocket.connect(port: port)
            try third.send("3\n")
            let fourth = try TestSocket.connect(port: port)
            try fourth.send("4\n")
            #expect(throws: (any Error).self) { _ = try fourth.receiveLine() }
            try proxy.waitForLog(containing: "queue is full")
            // Freeing the slot serves the oldest waiting client first.
            first.close()
            #expect(try second.receiveLine() == "only:2")
            // The third waits until its deadline and is then closed.
            let started = Date()
            #expect(throws: (any Error).self) { _ = try third.receiveLine() }
            #expect(Date().timeIntervalSince(started) < 2)
            try proxy.waitForLog(containing: "queue timeout")
        }
    }
}
