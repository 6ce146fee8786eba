import Foundation
import FulcrumTestSupport
import Glibc
import Testing

extension Integration {
    /// Hot reload through SIGHUP, against real backends and clients that keep running throughout.
    @Suite(.timeLimit(.minutes(2)))
    struct ReloadTests {
        func config(workers: Int = 2, listeners: String? = nil, _ pools: String) -> String {
            """
            workers: \(workers)
            listeners: \(listeners ?? "[{name: front, listen: 127.0.0.1:0, pool: app}]")
            pools:
            \(pools)
            """
        }

        /// 100 reloads that add and remove a backend, change a weight and change the strategy, while clients
        /// open a connection per request and others keep long-lived connections: no client connection fails,
        /// and afterwards the split follows the final weights.
        @Test func aHundredReloadsUnderLoadLoseNoConnection() throws {
            let a = try BackendProcess("a"), b = try BackendProcess("b"), c = try BackendProcess("c")
            let (pa, pb, pc) = (a.port, b.port, c.port)
            let variants = [
                // c added
                "  app:\n    backends: [127.0.0.1:\(pa), 127.0.0.1:\(pb), 127.0.0.1:\(pc)]",
                // c removed, strategy changed
                "  app:\n    balance: least_connections\n    backends: [127.0.0.1:\(pa), 127.0.0.1:\(pb)]",
                // back to round robin, equal weights
                "  app:\n    backends: [127.0.0.1:\(pa), 127.0.0.1:\(pb)]",
                // a's weight changed: the final file
                "  app:\n    backends: [{address: 127.0.0.1:\(pa), weight: 3}, 127.0.0.1:\(pb)]",
            ].map { config($0) }
            let proxy = try FulcrumProcess(config: variants[2])
            let port = proxy.port("front")
            let perConnection = [LoadClient(port: port, limit: 50_000), LoadClient(port: port, limit: 50_000)]
            let longLived = try (0..<4).map { _ in try PersistentClient(port: port) }
            for reload in 0..<100 {
                try proxy.reload(variants[reload % 4])
                // Let traffic meet the new state before the next reload.
                try perConnection[reload % 2].waitForOutcomes(3)
            }
            let outcomes = perConnection.flatMap { $0.stop() }
            let persistent = longLived.map { $0.stop() }
            let failures = outcomes.filter { $0.error != nil }
            #expect(failures.isEmpty, "\(failures.count) of \(outcomes.count) connections failed: \(failures.prefix(3).map { $0.error ?? "" })")
            for (i, client) in persistent.enumerated() {
                #expect(client.error == nil, "long-lived connection \(i): \(client.error ?? "")")
                #expect(Set(client.answers).count == 1, "a long-lived connection is answered by one backend only")
            }
            #expect(proxy.logCount(containing: "reload applied by every worker") == 100)

            // The final weights, a:3 b:1, on fresh connections.
            var answers: [String: Int] = [:]
            for i in 0..<400 { answers[askOnce(port, i) ?? "failed", default: 0] += 1 }
            let shareA = Double(answers["a", default: 0]) / 400
            #expect(answers["failed"] == nil && answers["c"] == nil, "\(answers)")
            #expect(abs(shareA - 0.75) <= 0.05, "a took \(Int(shareA * 100))% of 400 connections after the reloads, weights say 75%: \(answers)")
            let longAnswers = persistent.map(\.answers.count).reduce(0, +)
            print("100 reloads under load: \(outcomes.count) connections (one request each) and \(longAnswers) requests on 4 long-lived connections, \(failures.count) failed; afterwards a took \(Int(shareA * 100))% (weight 75%)")
        }

        /// Round robin goes on where it was across reloads that change the pool: restarting at the first
        /// backend on every reload (as HAProxy and nginx do) would give a 2 of every 3 connections here.
        @Test func roundRobinDoesNotRestartOnEveryReload() throws {
            let a = try BackendProcess("a"), b = try BackendProcess("b"), c = try BackendProcess("c")
            func file(_ weightC: Int) -> String {
                config(workers: 1, """
                  app:
                    backends: [127.0.0.1:\(a.port), 127.0.0.1:\(b.port), {address: 127.0.0.1:\(c.port), weight: \(weightC), state: drain}]
                """)
            }
            let proxy = try FulcrumProcess(config: file(1))
            let port = proxy.port("front")
            var answers: [String: Int] = [:]
            for reload in 0..<30 {
                // Each reload changes the pool (c's weight), which rebuilds its balancer.
                try proxy.reload(file(1 + reload % 2))
                for i in 0..<3 { answers[askOnce(port, reload * 3 + i) ?? "failed", default: 0] += 1 }
            }
            #expect(answers["a", default: 0] >= 42 && answers["a", default: 0] <= 48, "equal weights, 90 connections over 30 reloads: \(answers)")
            #expect(answers["failed"] == nil && answers["c"] == nil)
        }

        /// A reload that does not touch a backend keeps what the proxy learned about it: an ejection by the
        /// breaker, and the verdicts of the active checks (an up backend stays in rotation and a down one out,
        /// although their next checks are 30 s away).
        @Test func aReloadKeepsBreakerAndCheckState() throws {
            let a = try BackendProcess("a")
            let resetting = try BackendProcess("r", mode: "reset")
            let extra = try BackendProcess("x")
            let refusing = try RefusingPort()
            func file(_ extraBackend: Bool) -> String {
                config(workers: 1, """
                  app:
                    retries: 0
                    health: {check: tcp, interval: 30s}
                    breaker: {consecutive_failures: 2, base_ejection: 60s, max_ejection_percent: 100%}
                    backends: [127.0.0.1:\(a.port), 127.0.0.1:\(resetting.port), 127.0.0.1:\(refusing.port)\(extraBackend ? ", 127.0.0.1:\(extra.port)" : "")]
                """)
            }
            let proxy = try FulcrumProcess(config: file(false))
            let port = proxy.port("front")
            var sent = 0
            while proxy.logCount(containing: "breaker opened") == 0 && sent < 20 {
                _ = askOnce(port, sent)
                sent += 1
            }
            try proxy.waitForLog(containing: "breaker opened")
            // Adding a backend rebuilds the pool's balancer; the breaker and the checks' verdicts must stay.
            try proxy.reload(file(true))
            try proxy.reload(file(false))
            var answers: [String: Int] = [:]
            for i in 0..<40 { answers[askOnce(port, sent + i) ?? "failed", default: 0] += 1 }
            #expect(answers == ["a": 40], "the ejected backend and the one down by its checks stay out, the one up stays in: \(answers)")
            #expect(proxy.logCount(containing: "breaker half-open") == 0)
        }

        /// A backend added by a reload starts its slow start; a later reload that does not touch it lets the
        /// ramp go on where it was instead of restarting it.
        @Test func aSlowStartRampContinuesAcrossAReload() throws {
            let a = try BackendProcess("a"), b = try BackendProcess("b")
            func file(weightA: Int, withB: Bool) -> String {
                config(workers: 1, """
                  app:
                    slow_start: 10s
                    backends: [{address: 127.0.0.1:\(a.port), weight: \(weightA)}\(withB ? ", 127.0.0.1:\(b.port)" : "")]
                """)
            }
            let proxy = try FulcrumProcess(config: file(weightA: 1, withB: false))
            let port = proxy.port("front")
            try proxy.reload(file(weightA: 1, withB: true))
            let added = Date()
            // 10% at once, rising to 100% over 10 s: about 37% of its weight 3 s in.
            Thread.sleep(forTimeInterval: 3)
            try proxy.reload(file(weightA: 2, withB: true))
            try proxy.reload(file(weightA: 1, withB: true))
            var toB = 0
            for i in 0..<200 where askOnce(port, i) == "b" { toB += 1 }
            let elapsed = Date().timeIntervalSince(added)
            // A restarted ramp would give b about 10/110 = 9%; the ramp that went on gives 27% or more.
            #expect(toB >= 36, "b took \(toB) of 200 connections \(String(format: "%.1f", elapsed)) s after it was added")
            #expect(toB <= 100, "b is still ramping: \(toB) of 200")
            print("slow start across reloads: b took \(toB) of 200 connections, \(String(format: "%.1f", elapsed)) s into a 10 s ramp")
        }

        /// An invalid file changes nothing and drops nothing: the error is logged with its line, the running
        /// configuration keeps serving, and a valid file afterwards applies.
        @Test func anInvalidFileDuringLoadChangesNothing() throws {
            let a = try BackendProcess("a"), b = try BackendProcess("b")
            let valid = config("  app:\n    backends: [127.0.0.1:\(a.port)]")
            let proxy = try FulcrumProcess(config: valid)
            let port = proxy.port("front")
            let load = LoadClient(port: port)
            let long = try PersistentClient(port: port)
            try proxy.writeConfig(config("  app:\n    backends: [127.0.0.1:\(b.port)]\n    retires: 3"))
            proxy.signal(SIGHUP)
            let failed = try proxy.waitForLog(containing: "reload failed")
            try proxy.waitForLog(containing: "fulcrum.yaml:6:")
            try load.waitForOutcomes(20)
            #expect(failed.contains("reloads_failed=1"))
            #expect(proxy.log.contains { $0.contains("unknown key 'retires'") && $0.contains("retries") }, "the error names the key and the fix")
            #expect(proxy.logCount(containing: "configuration reloaded") == 0)
            let during = load.all
            #expect(during.allSatisfy { $0.error == nil && $0.backend == "a" }, "still the running configuration")
            try proxy.reload(config("  app:\n    backends: [127.0.0.1:\(b.port)]"))
            try load.waitForAnswers(from: "b", count: 10)
            let outcomes = load.stop()
            let persistent = long.stop()
            #expect(outcomes.allSatisfy { $0.error == nil }, "\(outcomes.filter { $0.error != nil }.count) failed")
            #expect(persistent.error == nil && Set(persistent.answers) == ["a"], "the long-lived connection stays on a")
        }

        /// A removed backend takes no new connection; the connections it has run until they end. A removed
        /// listener stops accepting but its connections go on; a listener moved to another pool sends new
        /// connections there.
        @Test func removedBackendsAndListenersDrainTheirConnections() throws {
            let a = try BackendProcess("a"), b = try BackendProcess("b"), c = try BackendProcess("c")
            let pools = """
              app:
                backends: [127.0.0.1:\(a.port), 127.0.0.1:\(b.port)]
              other:
                backends: [127.0.0.1:\(c.port)]
            """
            let threeListeners = "[{name: front, listen: 127.0.0.1:0, pool: app}, {name: side, listen: 127.0.0.1:0, pool: app}, {name: keep, listen: 127.0.0.1:0, pool: app}]"
            let proxy = try FulcrumProcess(config: config(workers: 1, listeners: threeListeners, pools))
            let (front, side, keep) = (proxy.port("front"), proxy.port("side"), proxy.port("keep"))
            // Round robin over a and b: of four connections two are on b.
            let open = try (0..<4).map { i -> (TestSocket, String) in
                let socket = try TestSocket.connect(port: i < 2 ? front : side)
                try socket.send("hello \(i)\n")
                return (socket, String(try socket.receiveLine().prefix { $0 != ":" }))
            }
            #expect(open.filter { $0.1 == "b" }.count == 2)
            let sideSockets = open[2...].map(\.0)

            // b removed; `side` removed; `front` moved to pool other.
            try proxy.reload(config(workers: 1, listeners: "[{name: front, listen: 127.0.0.1:\(front), pool: other}, {name: keep, listen: 127.0.0.1:0, pool: app}]", """
              app:
                backends: [127.0.0.1:\(a.port)]
              other:
                backends: [127.0.0.1:\(c.port)]
            """))
            for (i, (socket, backend)) in open.enumerated() {
                try socket.send("again \(i)\n")
                let line = try socket.receiveLine()
                #expect(line == "\(backend):again \(i)", "an open connection keeps its backend through the reload")
            }
            var answers: [String: Int] = [:]
            for i in 0..<20 { answers[askOnce(front, i) ?? "failed", default: 0] += 1 }
            #expect(answers == ["c": 20], "the moved listener sends new connections to its new pool: \(answers)")
            var kept: [String: Int] = [:]
            for i in 0..<20 { kept[askOnce(keep, i) ?? "failed", default: 0] += 1 }
            #expect(kept == ["a": 20], "the removed backend gets no new connection: \(kept)")
            #expect(throws: (any Error).self, "the removed listener accepts nothing") {
                let socket = try TestSocket.connect(port: side, timeout: 1)
                try socket.send("x\n")
                _ = try socket.receiveLine()
            }
            for socket in sideSockets {
                try socket.send("still\n")
                #expect(try socket.receiveLine().hasSuffix(":still"), "connections of a removed listener go on")
            }
            for (socket, _) in open { socket.close() }
        }

        /// With `removed_backend_timeout`, a removed backend's connections get that long to finish, then are
        /// closed; the other backends' connections are not touched.
        @Test func removedBackendTimeoutClosesWhatIsLeft() throws {
            let a = try BackendProcess("a"), b = try BackendProcess("b")
            func file(_ backends: String) -> String {
                config(workers: 1, "  app:\n    removed_backend_timeout: 300ms\n    backends: [\(backends)]")
            }
            let proxy = try FulcrumProcess(config: file("127.0.0.1:\(a.port), 127.0.0.1:\(b.port)"))
            let open = try (0..<2).map { i -> (TestSocket, String) in
                let socket = try TestSocket.connect(port: proxy.port("front"))
                try socket.send("hello \(i)\n")
                return (socket, String(try socket.receiveLine().prefix { $0 != ":" }))
            }
            #expect(Set(open.map(\.1)) == ["a", "b"])
            try proxy.reload(file("127.0.0.1:\(a.port)"))
            let removedAt = Date()
            let (onB, onA) = open[0].1 == "b" ? (open[0].0, open[1].0) : (open[1].0, open[0].0)
            try onB.send("still there\n")
            #expect(try onB.receiveLine() == "b:still there", "the removed backend's connection runs on at first")
            onB.setTimeout(5)
            #expect(try onB.receive().isEmpty, "closed once removed_backend_timeout is over")
            let elapsed = Date().timeIntervalSince(removedAt)
            #expect(elapsed >= 0.25 && elapsed < 3, "closed \(elapsed) s after the reload")
            try proxy.waitForLog(containing: "removed_backend_timeout reached")
            try onA.send("a too\n")
            #expect(try onA.receiveLine() == "a:a too")
            onA.close()
        }

        /// Checks turned off and back on by reloads start over: what they said before no longer holds. A
        /// backend that was down, then came back while checks were off, is not taken for down when they
        /// return (with `on_backend_down: close`, that would cut its connections).
        @Test func checksTurnedBackOnStartOver() throws {
            let a = try BackendProcess("a"), b = try BackendProcess("b")
            let port = b.port
            func file(_ checks: Bool) -> String {
                config(workers: 1, """
                  app:
                    on_backend_down: close
                \(checks ? "    health: {check: tcp, interval: 100ms, rise: 3}\n" : "")    backends: [127.0.0.1:\(a.port), 127.0.0.1:\(port)]
                """)
            }
            let proxy = try FulcrumProcess(config: file(true))
            b.kill9()
            try proxy.waitForLog(containing: "backend down")
            try proxy.reload(file(false))
            try b.start(port: port)
            // A connection on b, opened while checks are off.
            var onB: TestSocket?
            for i in 0..<4 where onB == nil {
                let socket = try TestSocket.connect(port: proxy.port("front"))
                try socket.send("hello \(i)\n")
                if try socket.receiveLine().hasPrefix("b:") { onB = socket } else { socket.close() }
            }
            let connection = try #require(onB, "round robin reaches b")
            let upBefore = proxy.logCount(containing: "backend up")
            try proxy.reload(file(true))
            try proxy.waitForLog(containing: "backend up", count: upBefore + 2, timeout: 10)
            try connection.send("still\n")
            #expect(try connection.receiveLine() == "b:still", "the connection to the healthy backend is not cut")
            #expect(proxy.logCount(containing: "closed connections of a backend marked down") == 0)
        }

        /// A pool that a reload adds with active checks takes clients once its backends have had their first
        /// check, as at start: a client that connects at once waits in the accept queue instead of being
        /// closed for want of a backend.
        @Test func aPoolAddedWithChecksWaitsForItsFirstChecks() throws {
            let a = try BackendProcess("a")
            let slow = try BackendProcess("s", mode: "slow")
            let base = config(workers: 1, "  app:\n    backends: [127.0.0.1:\(a.port)]")
            let proxy = try FulcrumProcess(config: base)
            try proxy.reload(config(workers: 1, listeners: "[{name: front, listen: 127.0.0.1:0, pool: app}, {name: late, listen: 127.0.0.1:0, pool: checked}]", """
              app:
                backends: [127.0.0.1:\(a.port)]
              checked:
                health: {check: send_expect, send: "ping\\n", expect: "s:", interval: 10s}
                backends: [127.0.0.1:\(slow.port)]
            """))
            let line = try proxy.waitForLog(containing: "listener=late")
            let port = try #require(line.split(separator: ":").last.flatMap { UInt16($0) })
            // The check takes 100 ms (the backend answers late): this client arrives before it is done.
            let socket = try TestSocket.connect(port: port)
            try socket.send("early\n")
            #expect(try socket.receiveLine() == "s:early")
            try proxy.waitForLog(containing: "pool checked: first checks done; its listeners accept now")
        }

        /// `workers` and `buffer_size` take a restart: a reload says so, keeps the running values, and
        /// applies the rest of the file.
        @Test func keysThatNeedARestartKeepTheirRunningValue() throws {
            let a = try BackendProcess("a"), b = try BackendProcess("b")
            let proxy = try FulcrumProcess(config: config(workers: 1, "  app:\n    backends: [127.0.0.1:\(a.port)]"))
            let port = proxy.port("front")
            try proxy.reload("buffer_size: 64KiB\n" + config(workers: 3, "  app:\n    backends: [127.0.0.1:\(b.port)]"))
            #expect(proxy.logCount(containing: "workers: needs restart: kept running value 1 (file has 3)") == 1)
            #expect(proxy.logCount(containing: "buffer_size: needs restart") == 1)
            #expect(askOnce(port, 1) == "b", "the rest of the file applies")
            proxy.signal(SIGTERM)
            #expect(try proxy.waitForExit(timeout: 30) == 0)
            #expect(proxy.logCount(containing: "worker stopped") == 1, "still one worker")
        }
    }
}
