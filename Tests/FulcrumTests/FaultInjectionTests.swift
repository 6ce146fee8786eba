import Foundation
import FulcrumTestSupport
import Glibc
import Testing

/// Three backends behind one worker, with everything that keeps clients working: fast active checks,
/// a breaker, connect retries, a first-byte timeout and replay.
func resilientConfig(_ ports: [UInt16], extra: String = "") -> String {
    """
    workers: 1
    listeners:
      - {name: front, listen: 127.0.0.1:0, pool: app}
    pools:
      app:
        backends: [\(ports.map { "127.0.0.1:\($0)" }.joined(separator: ", "))]
        connect_timeout: 300ms
        retries: 2
        first_byte_timeout: 500ms
        replay: {max_bytes: 64KiB}
        health: {check: send_expect, send: "hc\\n", expect_regex: ":hc", interval: 200ms, timeout: 300ms, rise: 2, fall: 2, jitter: 0%}
        breaker: {consecutive_failures: 3, base_ejection: 1s, max_ejection: 5s}
    \(extra)
    """
}

/// Starts the proxy and waits until the active checks have marked every backend up.
func startResilient(_ backends: [BackendProcess], extra: String = "") throws -> FulcrumProcess {
    let proxy = try FulcrumProcess(config: resilientConfig(backends.map(\.port), extra: extra))
    try proxy.waitForLog(containing: "backend up", count: backends.count)
    return proxy
}

func failures(_ outcomes: [LoadClient.Outcome]) -> [LoadClient.Outcome] { outcomes.filter { $0.error != nil } }

extension Integration {
    @Suite(.timeLimit(.minutes(2)))
    struct FaultInjectionTests {
        @Test func killMinus9OneBackendUnderLoad() throws {
            let backends = try ["a", "b", "c"].map { try BackendProcess($0) }
            let proxy = try startResilient(backends)
            let load = LoadClient(port: proxy.port("front"))
            try load.waitForAnswers(from: "b")
            let killed = Date()
            backends[1].kill9()
            try proxy.waitForLog(containing: "backend down", timeout: 5)
            let detected = Date().timeIntervalSince(killed)
            try load.waitForAnswers(from: "a", count: 50)
            // Back: started again on the same port, it is probed up and takes traffic again.
            let restarted = Date()
            try backends[1].start()
            try load.waitForAnswers(from: "b", count: 5)
            let recovered = Date().timeIntervalSince(restarted)
            let outcomes = load.stop()
            #expect(failures(outcomes).isEmpty, "client-visible failures: \(failures(outcomes).prefix(3))")
            #expect(detected < 1.5, "marked down after \(detected)s")
            #expect(recovered < 2.0, "back in rotation after \(recovered)s")
            print("kill -9: \(outcomes.count) requests, \(failures(outcomes).count) failed, down after \(detected)s, back after \(recovered)s")
        }

        @Test func stoppedBackendThatAcceptsButNeverAnswers() throws {
            let backends = try ["a", "b", "c"].map { try BackendProcess($0) }
            let proxy = try startResilient(backends)
            let load = LoadClient(port: proxy.port("front"))
            try load.waitForAnswers(from: "b")
            let stopped = Date()
            backends[1].signal(SIGSTOP)
            try proxy.waitForLog(containing: "backend down", timeout: 5)
            let detected = Date().timeIntervalSince(stopped)
            try load.waitForAnswers(from: "c", count: 50)
            backends[1].signal(SIGCONT)
            let resumed = Date()
            try load.waitForAnswers(from: "b", count: 5)
            let recovered = Date().timeIntervalSince(resumed)
            let outcomes = load.stop()
            // Requests already sent to the stopped backend wait for the first-byte timeout and are replayed.
            #expect(failures(outcomes).isEmpty, "client-visible failures: \(failures(outcomes).prefix(3))")
            #expect(proxy.logCount(containing: "replaying the request") >= 1)
            #expect(detected < 1.5, "marked down after \(detected)s")
            #expect(recovered < 2.0, "back in rotation after \(recovered)s")
            print("SIGSTOP: \(outcomes.count) requests, \(failures(outcomes).count) failed, down after \(detected)s, back after \(recovered)s")
        }

        @Test func refusingBackendOpensItsBreakerAndCostsNoClientAnything() throws {
            let a = try BackendProcess("a"), c = try BackendProcess("c")
            let refusing = try RefusingPort()
            let proxy = try FulcrumProcess(config: resilientConfig([a.port, refusing.port, c.port]).replacingOccurrences(
                of: "health: {check: send_expect, send: \"hc\\n\", expect_regex: \":hc\", interval: 200ms, timeout: 300ms, rise: 2, fall: 2, jitter: 0%}",
                with: ""))
            let load = LoadClient(port: proxy.port("front"))
            let started = Date()
            try proxy.waitForLog(containing: "breaker opened")
            let opened = Date().timeIntervalSince(started)
            try load.waitForAnswers(from: "a", count: 100)
            let outcomes = load.stop()
            #expect(failures(outcomes).isEmpty, "client-visible failures: \(failures(outcomes).prefix(3))")
            #expect(opened < 1.0, "breaker opened after \(opened)s")
            // Ejected for 1s, then one trial, refused again, ejected for longer: far fewer than one in three.
            let refusals = proxy.logCount(containing: "reason=connection refused")
            #expect(refusals >= 3 && refusals < outcomes.count / 10, "\(refusals) refusals in \(outcomes.count) requests")
            print("refusing: \(outcomes.count) requests, \(failures(outcomes).count) failed, breaker open after \(opened)s, \(refusals) refused attempts")
        }

        @Test func backendThatResetsAfterAcceptIsEjectedAndRequestsReplayed() throws {
            let a = try BackendProcess("a"), c = try BackendProcess("c")
            let resetting = try BackendProcess("r", mode: "reset")
            let proxy = try FulcrumProcess(config: resilientConfig([a.port, resetting.port, c.port]))
            try proxy.waitForLog(containing: "backend up", count: 2)
            let load = LoadClient(port: proxy.port("front"))
            try load.waitForAnswers(from: "a", count: 100)
            let outcomes = load.stop()
            #expect(failures(outcomes).isEmpty, "client-visible failures: \(failures(outcomes).prefix(3))")
            #expect(!outcomes.contains { $0.backend == "r" })
            // Its probe fails too (reset instead of a reply): it is down, and stays out.
            #expect(proxy.logCount(containing: "backend down") >= 1)
        }

        @Test func slowBackendIsNotEjected() throws {
            let backends = try [BackendProcess("a"), BackendProcess("s", mode: "slow"), BackendProcess("c")]
            let proxy = try startResilient(backends)
            let load = LoadClient(port: proxy.port("front"))
            try load.waitForAnswers(from: "s", count: 10)
            let outcomes = load.stop()
            #expect(failures(outcomes).isEmpty)
            #expect(proxy.logCount(containing: "breaker opened") == 0, "slow but alive (100 ms < first_byte_timeout)")
            #expect(proxy.logCount(containing: "backend down") == 0)
        }

        @Test func flappingBackend() throws {
            let backends = try ["a", "b", "c"].map { try BackendProcess($0) }
            let proxy = try startResilient(backends)
            let load = LoadClient(port: proxy.port("front"))
            for round in 1...3 {
                try load.waitForAnswers(from: "b", count: 3)
                backends[1].kill9()
                try proxy.waitForLog(containing: "backend down", count: round, timeout: 5)
                try backends[1].start()
                try proxy.waitForLog(containing: "backend up", count: 3 + round, timeout: 5)
            }
            try load.waitForAnswers(from: "b", count: 5)
            let outcomes = load.stop()
            #expect(failures(outcomes).isEmpty, "client-visible failures: \(failures(outcomes).prefix(3))")
        }

        @Test func aRecoveredBackendSlowStarts() throws {
            let backends = try ["a", "b"].map { try BackendProcess($0) }
            let proxy = try startResilient(backends, extra: "    slow_start: 4s")
            backends[1].kill9()
            try proxy.waitForLog(containing: "backend down")
            try backends[1].start()
            try proxy.waitForLog(containing: "backend up", count: 3)
            // Right after recovery "b" has about 10% of its weight: far less than its even half.
            var early: [String: Int] = [:]
            for i in 0..<100 {
                let socket = try TestSocket.connect(port: proxy.port("front"))
                try socket.send("r\(i)\n")
                early[String(try socket.receiveLine().prefix(1)), default: 0] += 1
            }
            #expect(early["b", default: 0] >= 1 && early["b", default: 0] <= 30, "just recovered: \(early)")
            // Once the window has passed it is back to an even share.
            let load = LoadClient(port: proxy.port("front"))
            let deadline = Date().addingTimeInterval(10)
            var recent: [LoadClient.Outcome] = []
            repeat {
                try load.waitForAnswers(from: "a", count: 50)
                recent = Array(load.all.suffix(100))
            } while recent.filter({ $0.backend == "b" }).count < 40 && Date() < deadline
            let outcomes = load.stop()
            #expect(recent.filter { $0.backend == "b" }.count >= 40, "after the ramp: \(recent.filter { $0.backend == "b" }.count) of 100")
            #expect(failures(outcomes).isEmpty)
        }

        @Test func theBreakerNeverEjectsMoreThanTheCap() throws {
            let a = try BackendProcess("a")
            let r1 = try RefusingPort(), r2 = try RefusingPort()
            let proxy = try FulcrumProcess(config: """
            workers: 1
            listeners: [{name: front, listen: 127.0.0.1:0, pool: app}]
            pools:
              app:
                backends: [127.0.0.1:\(a.port), 127.0.0.1:\(r1.port), 127.0.0.1:\(r2.port)]
                retries: 2
                breaker: {consecutive_failures: 2, base_ejection: 10s, max_ejection_percent: 34%}
            """)
            let load = LoadClient(port: proxy.port("front"))
            try load.waitForAnswers(from: "a", count: 60)
            let outcomes = load.stop()
            #expect(failures(outcomes).isEmpty)
            // One of three may be ejected (34%): the second refusing backend stays in rotation, retried around.
            #expect(proxy.logCount(containing: "breaker opened") >= 1)
            try proxy.waitForLog(containing: "max_ejection_percent reached")
        }
    }

    @Suite(.timeLimit(.minutes(1)))
    struct HedgeTests {
        /// The slowest of `count` requests through a pool whose first backend never completes a connect.
        func slowest(hedge: Bool, count: Int) throws -> (seconds: Double, hedges: Int) {
            let hole = try BlackholeBackend()
            let good = try BackendProcess("good")
            let proxy = try FulcrumProcess(config: """
            workers: 1
            listeners: [{name: front, listen: 127.0.0.1:0, pool: app}]
            pools:
              app:
                backends: [127.0.0.1:\(hole.port), 127.0.0.1:\(good.port)]
                connect_timeout: 1s
                breaker: off
                retry_budget: {ratio: 100%}
                \(hedge ? "hedge_after: 50ms" : "")
            """)
            var slowest = 0.0
            for i in 0..<count {
                let started = Date()
                let socket = try TestSocket.connect(port: proxy.port("front"), timeout: 5)
                try socket.send("req \(i)\n")
                #expect(try socket.receiveLine() == "good:req \(i)")
                slowest = max(slowest, Date().timeIntervalSince(started))
            }
            return (slowest, proxy.logCount(containing: "racing a second backend"))
        }

        @Test func hedgedConnectRacesASecondBackendWhenTheFirstIsSlow() throws {
            let hedged = try slowest(hedge: true, count: 10)
            #expect(hedged.hedges >= 4, "every other client starts on the frozen backend")
            #expect(hedged.seconds < 0.5, "slowest request took \(hedged.seconds)s with hedging")
            let plain = try slowest(hedge: false, count: 2)
            #expect(plain.seconds >= 1.0, "without hedging a client waits out the connect timeout (\(plain.seconds)s)")
        }
    }

    @Suite(.timeLimit(.minutes(2)))
    struct ReplayTests {
        func run(replay: Bool) throws -> (failures: Int, total: Int, replays: Int) {
            let good = try BackendProcess("good")
            let dying = try BackendProcess("dies", mode: "reset")
            let proxy = try FulcrumProcess(config: """
            workers: 1
            listeners: [{name: front, listen: 127.0.0.1:0, pool: app}]
            pools:
              app:
                backends: [127.0.0.1:\(dying.port), 127.0.0.1:\(good.port)]
                breaker: off
                # Half of all requests need a second try here; the default budget (20%) would refuse some.
                retry_budget: {ratio: 100%}
                \(replay ? "replay: {max_bytes: 64KiB}" : "")
            """)
            var failed = 0
            for i in 0..<1000 {
                do {
                    let socket = try TestSocket.connect(port: proxy.port("front"), timeout: 5)
                    try socket.send("req \(i)\n")
                    if try socket.receiveLine() != "good:req \(i)" { failed += 1 }
                } catch {
                    failed += 1
                }
            }
            return (failed, 1000, proxy.logCount(containing: "replaying the request"))
        }

        @Test func replayHidesABackendThatDiesAfterTheRequest() throws {
            // Round robin sends every other request to a backend that takes the request and dies (resets)
            // before answering; the breaker is off so it keeps being chosen.
            let with = try run(replay: true)
            #expect(with.failures == 0, "\(with.failures) of 1000 failed with replay")
            #expect(with.replays >= 450)
            let without = try run(replay: false)
            #expect(without.failures >= 450, "without replay the same test fails \(without.failures) of 1000")
        }

        @Test func retryBudgetStopsARetryStorm() throws {
            // Every backend takes the request and dies: without a budget each client would cost three tries.
            let dying = try (0..<3).map { try BackendProcess("d\($0)", mode: "reset") }
            let proxy = try FulcrumProcess(config: """
            workers: 1
            listeners: [{name: front, listen: 127.0.0.1:0, pool: app}]
            pools:
              app:
                backends: [\(dying.map { "127.0.0.1:\($0.port)" }.joined(separator: ", "))]
                breaker: off
                replay: {max_bytes: 64KiB}
                retries: 2
                retry_budget: {ratio: 20%, min_per_second: 1}
            """)
            for i in 0..<200 {
                let socket = try TestSocket.connect(port: proxy.port("front"), timeout: 5)
                try socket.send("req \(i)\n")
                _ = try? socket.receiveAll()
            }
            let retries = proxy.logCount(containing: "replaying the request")
            // 20% of 200 clients plus 1/s over the 10 s window: at most 50 retries instead of 400.
            #expect(retries <= 50, "\(retries) retries for 200 clients")
            try proxy.waitForLog(containing: "retry budget exhausted, not replaying")
        }
    }
}
