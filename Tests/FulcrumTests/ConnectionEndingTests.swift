import Foundation
import FulcrumTestSupport
import Glibc
import Testing

/// How each way a connection can end is accounted: who is blamed, what is given back, who is served next.
extension Integration {
    @Suite(.serialized, .timeLimit(.minutes(2)))
    struct ConnectionEndingTests {
        /// Load balancers' TCP checks and fire-and-forget clients connect and close without a byte. The
        /// backend closing in turn is its answer to the client's end-of-file, not a failure.
        @Test func clientsThatConnectAndCloseDoNotEjectHealthyBackends() throws {
            let a = try TestBackend(.named("a")), b = try TestBackend(.named("b"))
            let proxy = try FulcrumProcess(config: strategyConfig(balance: "round_robin", backends: [
                "127.0.0.1:\(a.port)", "127.0.0.1:\(b.port)"], poolExtra: "    breaker: {consecutive_failures: 3}"))
            let port = proxy.port("front")
            for _ in 0..<40 { try TestSocket.connect(port: port).close() }
            let deadline = Date().addingTimeInterval(10)
            while a.accepted + b.accepted < 40 && Date() < deadline { usleep(10_000) }
            #expect(a.accepted + b.accepted == 40)
            var counts: [String: Int] = [:]
            for _ in 0..<40 { counts[try askName(port: port), default: 0] += 1 }
            print("after 40 connect-and-close clients, 40 requests: \(counts)")
            #expect(counts["a", default: 0] >= 15 && counts["b", default: 0] >= 15, "\(counts)")
            #expect(proxy.logCount(containing: "breaker opened") == 0)
        }

        /// Fire-and-forget clients send, half-close and leave; the backend closes once it has read it all.
        /// That is the backend's answer to the end-of-file: no failure, and nothing is sent twice.
        @Test func fireAndForgetRequestsAreNeitherBlamedNorReplayed() throws {
            let a = try TestBackend(.sink), b = try TestBackend(.sink)
            let proxy = try FulcrumProcess(config: strategyConfig(balance: "round_robin", backends: [
                "127.0.0.1:\(a.port)", "127.0.0.1:\(b.port)"],
                poolExtra: "    breaker: {consecutive_failures: 3}\n    replay: {max_bytes: 64KiB}"))
            let port = proxy.port("front")
            for _ in 0..<40 {
                let socket = try TestSocket.connect(port: port)
                try socket.send("event\n")
                socket.shutdownWrite()
                #expect(try socket.receiveAll().isEmpty)
            }
            #expect(a.received + b.received == 40 * 6, "every event arrived once")
            #expect(a.received >= 15 * 6 && b.received >= 15 * 6, "a got \(a.received / 6), b got \(b.received / 6)")
            #expect(proxy.logCount(containing: "breaker opened") == 0)
        }

        /// A half-closed client still reading gets its answer when the backend resets: replayed elsewhere.
        @Test func aHalfClosedClientKeepsReplayWhenTheBackendResets() throws {
            let a = try TestBackend(.named("a"))
            let b = try BackendProcess("b", mode: "reset")
            let proxy = try FulcrumProcess(config: strategyConfig(balance: "round_robin", backends: [
                "127.0.0.1:\(b.port)", "127.0.0.1:\(a.port)"],
                poolExtra: "    replay: {max_bytes: 64KiB}\n    breaker: off"))
            for n in 0..<10 {
                let socket = try TestSocket.connect(port: proxy.port("front"))
                try socket.send("req \(n)\n")
                socket.shutdownWrite()
                #expect(try socket.receiveLine() == "a:req \(n)")
            }
        }

        /// A half-open trial whose client resets before the backend answered gives no verdict, and the
        /// trial goes back: the backend is tried again instead of staying out of rotation for good.
        @Test func aTrialEndedByTheClientIsGivenBack() throws {
            let a = try TestBackend(.named("a"))
            let b = try BackendProcess("b", mode: "reset")
            let proxy = try FulcrumProcess(config: strategyConfig(balance: "round_robin", backends: [
                "127.0.0.1:\(a.port)", "127.0.0.1:\(b.port)"], poolExtra: """
                    health: {check: tcp, interval: 100ms, timeout: 300ms, rise: 1, fall: 1, jitter: 0%}
                    breaker: {consecutive_failures: 2, base_ejection: 1m, jitter: 0%}
                """))
            try proxy.waitForLog(containing: "backend up", count: 2)
            let port = proxy.port("front")
            for _ in 0..<10 where proxy.logCount(containing: "breaker opened") == 0 { _ = try? askName(port: port) }
            try proxy.waitForLog(containing: "breaker opened")
            // The next passing check moves the breaker to half-open: one trial at a time.
            usleep(400_000)
            for _ in 0..<4 {
                let client = try TestSocket.connect(port: port)
                usleep(20_000)
                client.reset()
            }
            // b recovers: a healthy process on the same port.
            b.kill9()
            let healthy = try BackendProcess("b", port: b.port)
            usleep(400_000)
            var counts: [String: Int] = [:]
            for _ in 0..<30 { counts[(try? askName(port: port)) ?? "failed", default: 0] += 1 }
            print("after a trial ended by its client, 30 requests: \(counts)")
            #expect(counts["b", default: 0] >= 5, "\(counts)")
            withExtendedLifetime(healthy) {}
        }

        /// Out of descriptors, the proxy cannot open a backend socket: that is the proxy's problem, so the
        /// client is closed with the reason and no backend is blamed.
        @Test func runningOutOfDescriptorsBlamesNoBackend() throws {
            let a = try TestBackend(.named("a")), b = try TestBackend(.named("b"))
            let proxy = try FulcrumProcess(config: strategyConfig(balance: "round_robin", backends: [
                "127.0.0.1:\(a.port)", "127.0.0.1:\(b.port)"],
                poolExtra: "    breaker: {consecutive_failures: 1, base_ejection: 1m, max_ejection_percent: 100%}"))
            let port = proxy.port("front")
            let pid = proxy.process.processIdentifier
            // Once the worker has served (its loop runs) and let go of that connection, leave room for two
            // proxied connections (two descriptors each) and one more accept.
            _ = try askName(port: port)
            ProcessStats.waitForSteadyDescriptors(pid)
            try ProcessStats.setFileLimit(pid, ProcessStats.fileLimit(leaving: 5, pid))
            var clients: [TestSocket] = []
            var answered = 0
            for _ in 0..<4 {
                let client = try TestSocket.connect(port: port, timeout: 2)
                try client.send("ping\n")
                clients.append(client)
                if (try? client.receiveLine())?.hasSuffix(":ping") == true { answered += 1 }
            }
            #expect(answered == 2, "two clients fit in the limit; the third was closed")
            for client in clients { client.close() }
            try ProcessStats.setFileLimit(pid, 4096)
            var counts: [String: Int] = [:]
            for _ in 0..<20 { counts[(try? askName(port: port)) ?? "failed", default: 0] += 1 }
            #expect(counts["a", default: 0] >= 9 && counts["b", default: 0] >= 9, "\(counts)")
            #expect(proxy.logCount(containing: "breaker opened") == 0)
        }

        /// An active check that cannot open its socket says nothing about the backend.
        @Test func checksThatCannotRunForWantOfDescriptorsMarkNothingDown() throws {
            let a = try TestBackend(.named("a")), b = try TestBackend(.named("b"))
            let proxy = try FulcrumProcess(config: strategyConfig(balance: "round_robin", backends: [
                "127.0.0.1:\(a.port)", "127.0.0.1:\(b.port)"],
                poolExtra: "    health: {check: tcp, interval: 50ms, timeout: 200ms, rise: 20, fall: 1, jitter: 0%}"))
            try proxy.waitForLog(containing: "backend up", count: 2)
            let pid = proxy.process.processIdentifier
            try ProcessStats.setFileLimit(pid, ProcessStats.fileLimit(leaving: 0, pid))
            try proxy.waitForLog(containing: "active check could not run", count: 4)
            try ProcessStats.setFileLimit(pid, 4096)
            var counts: [String: Int] = [:]
            for _ in 0..<10 { counts[(try? askName(port: proxy.port("front"))) ?? "failed", default: 0] += 1 }
            #expect(counts["a"] == 5 && counts["b"] == 5, "\(counts)")
            #expect(proxy.logCount(containing: "backend down") == 0)
        }

        /// A waiting client forgets which backends refused it: when one is back, the oldest waiter takes its
        /// free slot on the next arrival instead of blocking the queue until it times out.
        @Test func aWaiterThatWasRefusedTakesABackendThatIsBack() throws {
            let a = try TestBackend(.named("a"))
            let b = try BackendProcess("b")
            let proxy = try FulcrumProcess(config: strategyConfig(balance: "round_robin", backends: [
                "{address: 127.0.0.1:\(a.port), max_connections: 1}", "{address: 127.0.0.1:\(b.port), max_connections: 1}"],
                poolExtra: "    retries: 1\n    breaker: off\n    queue: {size: 10, timeout: 8s}"))
            let port = proxy.port("front")
            b.kill9()
            let holder = try TestSocket.connect(port: port)
            try holder.send("hold\n")
            #expect(try holder.receiveLine() == "a:hold")
            // X: b refuses, a is full: X waits.
            let x = try TestSocket.connect(port: port)
            try x.send("x\n")
            #expect(!x.isReadable(within: 0.3))
            try b.start()
            // Y's arrival offers b's free slot to the oldest waiter, X; Y waits for the next slot.
            let y = try TestSocket.connect(port: port)
            try y.send("y\n")
            let started = Date()
            #expect(try x.receiveLine() == "b:x")
            #expect(Date().timeIntervalSince(started) < 2)
            holder.close()
            #expect(try y.receiveLine() == "a:y")
        }

        /// Two slots freed at once in one worker while the two waiters sit in different workers: both are
        /// served, every time.
        @Test func slotsFreedTogetherReachWaitersInEveryWorker() throws {
            let a = try TestBackend(.named("a"))
            let proxy = try FulcrumProcess(config: strategyConfig(balance: "round_robin", backends: [
                "{address: 127.0.0.1:\(a.port), max_connections: 4}"], workers: 2,
                poolExtra: "    queue: {size: 20, timeout: 10s}"))
            let port = proxy.port("front")
            var late: [Int] = []
            for trial in 0..<20 {
                var holders: [TestSocket] = []
                for _ in 0..<4 {
                    let socket = try TestSocket.connect(port: port)
                    try socket.send("hold\n")
                    _ = try socket.receiveLine()
                    holders.append(socket)
                }
                let waiters = try (0..<2).map { n -> TestSocket in
                    let socket = try TestSocket.connect(port: port)
                    try socket.send("w\(n)\n")
                    usleep(20_000)
                    return socket
                }
                holders[0].close()
                holders[1].close()
                for waiter in waiters where !waiter.isReadable(within: 2) { late.append(trial) }
                for socket in holders + waiters { socket.close() }
            }
            #expect(late.isEmpty, "waiters not served within 2 s in trials \(late)")
        }

        /// Two pools with clients waiting in both workers: wakeups are per pool and coalesced, so the workers
        /// do not keep waking each other.
        @Test func waitersInTwoPoolsCostNoCPU() throws {
            let a = try TestBackend(.named("a")), b = try TestBackend(.named("b"))
            let proxy = try FulcrumProcess(config: """
                workers: 2
                listeners:
                  - {name: x, listen: 127.0.0.1:0, pool: px}
                  - {name: y, listen: 127.0.0.1:0, pool: py}
                pools:
                  px: {backends: [{address: 127.0.0.1:\(a.port), max_connections: 1}], queue: {size: 50, timeout: 20s}}
                  py: {backends: [{address: 127.0.0.1:\(b.port), max_connections: 1}], queue: {size: 50, timeout: 20s}}
                """)
            var sockets: [TestSocket] = []
            for listener in ["x", "y"] {
                let holder = try TestSocket.connect(port: proxy.port(listener))
                try holder.send("hold\n")
                _ = try holder.receiveLine()
                sockets.append(holder)
            }
            for _ in 0..<8 {
                for listener in ["x", "y"] { sockets.append(try TestSocket.connect(port: proxy.port(listener))) }
                usleep(10_000)
            }
            let pid = proxy.process.processIdentifier
            let before = ProcessStats.cpuSeconds(pid)
            usleep(2_000_000)
            let used = ProcessStats.cpuSeconds(pid) - before
            print("16 clients waiting in two pools: \(used) s of CPU in 2 s")
            #expect(used < 0.3, "the proxy used \(used) s of CPU in 2 s with 16 clients waiting")
            withExtendedLifetime(sockets) {}
        }

        /// Breakers are per worker: when one worker's breaker has ejected the backend that has room, its
        /// waiters cannot take that room, and the other worker's clients must not queue behind them.
        @Test func aWorkerWhoseBreakerRefusesItsWaitersHoldsNoOneElseUp() throws {
            let l = try TestBackend(.named("L"))
            let k = try BackendProcess("K")
            k.kill9()
            let proxy = try FulcrumProcess(config: strategyConfig(balance: "round_robin", backends: [
                "{address: 127.0.0.1:\(k.port), max_connections: 100}", "{address: 127.0.0.1:\(l.port), max_connections: 1}"],
                workers: 2, poolExtra: """
                    retries: 1
                    breaker: {consecutive_failures: 1, base_ejection: 1m, max_ejection_percent: 100%}
                    queue: {size: 50, timeout: 2s}
                """))
            let port = proxy.port("front")
            // Until one worker has seen K refuse (and ejected it); the client is served by L meanwhile.
            for _ in 0..<20 where proxy.logCount(containing: "connect to backend failed") == 0 { _ = try? askName(port: port) }
            try proxy.waitForLog(containing: "connect to backend failed")
            try k.start()
            // Hold L's only slot.
            var held: [TestSocket] = []
            for _ in 0..<30 {
                let socket = try TestSocket.connect(port: port, timeout: 3)
                try socket.send("h\n")
                held.append(socket)
                if (try? socket.receiveLine())?.hasPrefix("L:") == true { break }
            }
            let answers = ProblemList()
            let group = DispatchGroup()
            for i in 0..<10 {
                group.enter()
                Thread.detachNewThread {
                    defer { group.leave() }
                    guard let socket = try? TestSocket.connect(port: port, timeout: 4) else { return }
                    let started = Date()
                    try? socket.send("q\(i)\n")
                    let line = (try? socket.receiveLine()) ?? "none"
                    answers.add("\(line.prefix(1)) \(Date().timeIntervalSince(started))")
                }
                usleep(50_000)
            }
            #expect(group.wait(timeout: .now() + 20) == .success)
            let fromK = answers.all.filter { $0.hasPrefix("K ") }.compactMap { Double($0.dropFirst(2)) }
            print("another worker's breaker ejects the backend with room: \(answers.all.sorted())")
            #expect(!fromK.isEmpty, "\(answers.all)")
            #expect(fromK.allSatisfy { $0 < 1 }, "clients the other worker could serve waited: \(answers.all)")
            withExtendedLifetime(held) {}
        }

        /// With two workers and one slot, clients queued 40 ms apart are served in arrival order, whichever
        /// worker accepted each.
        @Test func queuedClientsAreServedInArrivalOrderAcrossWorkers() throws {
            let a = try TestBackend(.named("a"))
            let proxy = try FulcrumProcess(config: strategyConfig(balance: "round_robin", backends: [
                "{address: 127.0.0.1:\(a.port), max_connections: 2}"], workers: 2,
                poolExtra: "    queue: {size: 20, timeout: 10s}"))
            let port = proxy.port("front")
            var holders: [TestSocket] = []
            for _ in 0..<2 {
                let socket = try TestSocket.connect(port: port)
                try socket.send("hold\n")
                _ = try socket.receiveLine()
                holders.append(socket)
            }
            var waiting: [TestSocket] = []
            for _ in 0..<8 {
                let socket = try TestSocket.connect(port: port)
                try socket.send("ping\n")
                waiting.append(socket)
                usleep(40_000)
            }
            var order: [Int] = []
            holders.removeFirst().close()
            for _ in 0..<8 {
                // Exactly one waiting client is served per freed slot: find it.
                var served: Int?
                let deadline = Date().addingTimeInterval(5)
                while served == nil && Date() < deadline {
                    for (i, socket) in waiting.enumerated() where !order.contains(i) && socket.isReadable(within: 0.005) {
                        served = i
                    }
                }
                guard let index = served else { break }
                #expect(try waiting[index].receiveLine() == "a:ping")
                order.append(index)
                waiting[index].close()
            }
            print("queued across two workers, served in order \(order)")
            #expect(order == Array(0..<8), "served in order \(order)")
        }
    }
}
