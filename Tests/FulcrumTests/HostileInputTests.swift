import Foundation
import FulcrumTestSupport
import Glibc
import Testing

/// Clients and backends that misbehave: each costs only its own connection; other clients keep working
/// and the process stays up. Every test is bounded in count and time.
extension Integration {
    @Suite(.serialized, .timeLimit(.minutes(2)))
    struct HostileInputTests {
        @Test func garbageHalfClosesAndResetsMidStreamCostOnlyTheirOwnConnection() throws {
            let echo = try TestBackend(.echo)
            let proxy = try FulcrumProcess(config: strategyConfig(balance: "round_robin", backends: ["127.0.0.1:\(echo.port)"]))
            let port = proxy.port("front")
            let group = DispatchGroup()
            let problems = ProblemList()
            let note = problems.add
            for i in 0..<30 {
                group.enter()
                Thread.detachNewThread {
                    defer { group.leave() }
                    do {
                        let socket = try TestSocket.connect(port: port, timeout: 5)
                        switch i % 3 {
                        case 0:
                            // Garbage, then gone.
                            try socket.send(randomPayload(count: 1000 + i, seed: UInt64(i)))
                            socket.close()
                        case 1:
                            // A large upload reset half way.
                            try socket.send(randomPayload(count: 512 << 10, seed: UInt64(i)))
                            socket.reset()
                        default:
                            // Half-close first, then read the whole answer.
                            let payload = randomPayload(count: 200_000, seed: UInt64(i))
                            try socket.send(payload)
                            socket.shutdownWrite()
                            let back = try socket.receiveAll()
                            if back != payload { note("half-closed client \(i) got \(back.count) bytes back") }
                        }
                    } catch {
                        note("client \(i): \(error)")
                    }
                }
            }
            // Meanwhile, a well-behaved client.
            for n in 0..<50 {
                let socket = try TestSocket.connect(port: port, timeout: 5)
                try socket.send("hello \(n)\n")
                #expect(try socket.receiveLine() == "hello \(n)")
            }
            #expect(group.wait(timeout: .now() + 30) == .success)
            #expect(problems.all.isEmpty, "\(problems.all)")
            #expect(proxy.process.isRunning)
        }

        @Test func slowlorisClientsDoNotDelayOthers() throws {
            let a = try TestBackend(.named("a"))
            let proxy = try FulcrumProcess(config: strategyConfig(balance: "round_robin", backends: ["127.0.0.1:\(a.port)"],
                                                                  poolExtra: "    idle_timeout: 5s"))
            let port = proxy.port("front")
            let slow = try (0..<200).map { _ in try TestSocket.connect(port: port) }
            let stop = Date().addingTimeInterval(2)
            let dripping = Thread { while Date() < stop { for s in slow { try? s.send([0x41]) }; usleep(100_000) } }
            dripping.start()
            var slowest = 0.0
            while Date() < stop {
                let started = Date()
                #expect(try askName(port: port) == "a")
                slowest = max(slowest, Date().timeIntervalSince(started))
            }
            #expect(slowest < 1, "slowest answer took \(slowest) s")
            #expect(proxy.process.isRunning)
        }

        @Test func aBackendThatNeverReadsHoldsOnlyItsBuffersAndOthersKeepWorking() throws {
            let silent = try SilentBackend()
            let a = try TestBackend(.named("a"))
            let proxy = try FulcrumProcess(config: """
                workers: 1
                buffer_size: 256KiB
                listeners:
                  - {name: stuck, listen: 127.0.0.1:0, pool: stuck}
                  - {name: front, listen: 127.0.0.1:0, pool: app}
                pools:
                  stuck: {backends: [127.0.0.1:\(silent.port)]}
                  app: {backends: [127.0.0.1:\(a.port)]}
                """)
            let pid = proxy.process.processIdentifier
            let before = ProcessStats.residentBytes(pid)
            let uploads = try (0..<8).map { _ in try TestSocket.connect(port: proxy.port("stuck"), timeout: 0.2) }
            let chunk = randomPayload(count: 1 << 20, seed: 7)
            // Each upload stops once the kernel and proxy buffers are full (the send times out).
            for socket in uploads { for _ in 0..<64 { if (try? socket.send(chunk)) == nil { break } } }
            for _ in 0..<100 { #expect(try askName(port: proxy.port("front")) == "a") }
            let grown = ProcessStats.residentBytes(pid) - before
            #expect(grown < 16 << 20, "resident memory grew by \(grown >> 20) MiB for 8 stuck uploads")
            #expect(proxy.process.isRunning)
        }

        @Test func tenThousandConnectionsAgainstALowFileLimit() throws {
            let a = try TestBackend(.named("a"))
            let proxy = try FulcrumProcess(config: strategyConfig(balance: "round_robin", backends: ["127.0.0.1:\(a.port)"]))
            let port = proxy.port("front")
            let pid = proxy.process.processIdentifier
            let early = try TestSocket.connect(port: port)
            try early.send("before\n")
            #expect(try early.receiveLine() == "a:before")
            try ProcessStats.setFileLimit(pid, 256)
            let available = ProcessStats.raiseOwnFileLimit() - 200
            let flood = (0..<min(10_000, available)).map { _ in startConnect(port: port) }
            defer { for fd in flood where fd >= 0 { close(fd) } }
            let cpuBefore = ProcessStats.cpuSeconds(pid)
            let started = Date()
            // The connection opened before the flood keeps working through it.
            for n in 0..<20 {
                try early.send("during \(n)\n")
                #expect(try early.receiveLine() == "a:during \(n)")
                usleep(50_000)
            }
            let cpu = ProcessStats.cpuSeconds(pid) - cpuBefore
            let elapsed = Date().timeIntervalSince(started)
            #expect(cpu < 0.5 * elapsed, "the proxy used \(cpu) s of CPU in \(elapsed) s while out of descriptors")
            let logBytes = proxy.logBytes
            print("10,000 connections at 256 descriptors: \(cpu) s of CPU in \(elapsed) s, \(logBytes) bytes of log")
            #expect(logBytes < 200_000, "\(logBytes) bytes of log while out of descriptors")
            for fd in flood where fd >= 0 { close(fd) }
            try ProcessStats.setFileLimit(pid, 4096)
            // Once the flood is gone, new clients are served again.
            let deadline = Date().addingTimeInterval(10)
            var served = false
            while !served && Date() < deadline { served = (try? askName(port: port)) == "a" }
            #expect(served)
            #expect(proxy.process.isRunning)
        }
    }
}

/// Problems noted by client threads.
final class ProblemList: @unchecked Sendable {
    private let lock = NSLock()
    private var items: [String] = []

    @Sendable func add(_ problem: String) { lock.withLock { items.append(problem) } }
    var all: [String] { lock.withLock { items } }
}
