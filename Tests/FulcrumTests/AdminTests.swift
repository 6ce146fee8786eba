import Foundation
import FulcrumTestSupport
import Glibc
import Testing

extension Integration {
    /// The admin API against the real binary: state, changes, histories and its defences, asserted through
    /// the API itself.
    @Suite(.timeLimit(.minutes(2)))
    struct AdminTests {
        func config(admin: String = "{listen: 127.0.0.1:0}", workers: Int = 2, _ pools: String) -> String {
            """
            workers: \(workers)
            admin: \(admin)
            listeners: [{name: front, listen: 127.0.0.1:0, pool: app}]
            pools:
            \(pools)
            """
        }

        /// Drain through the admin: answered once applied, no new connection goes to the backend, /status
        /// says drain with the admin as its source, the override survives a reload that changes the file's
        /// values, and clearing it gives the file's state back. Each step is in the backend's history.
        @Test func drainThroughTheAdminSurvivesAReloadUntilCleared() throws {
            let a = try BackendProcess("a"), b = try BackendProcess("b")
            let (aa, ba) = ("127.0.0.1:\(a.port)", "127.0.0.1:\(b.port)")
            let proxy = try FulcrumProcess(config: config("  app:\n    backends: [\(aa), \(ba)]"))
            let admin = try #require(proxy.adminPort)
            let port = proxy.port("front")

            let drained = try AdminClient.request(port: admin, "POST", "/pools/app/backends/\(ba)/drain")
            #expect(drained.status == 200, "\(drained.body)")
            let state = (drained.object["backend"] as? [String: Any])?["state"] as? [String: Any]
            #expect(state?["value"] as? String == "drain" && state?["source"] as? String == "admin")
            // Applied by every worker before the answer: not one new connection goes to b.
            var answers: [String: Int] = [:]
            for i in 0..<20 { answers[askOnce(port, i) ?? "failed", default: 0] += 1 }
            #expect(answers == ["a": 20], "\(answers)")

            // The file changes b's weight; the admin's drain stays.
            try proxy.reload(config("  app:\n    backends: [\(aa), {address: \(ba), weight: 3}]"))
            var b1 = try #require(AdminClient.backend(try AdminClient.get(port: admin, "/status"), pool: "app", ba))
            #expect((b1["state"] as? [String: Any])?["source"] as? String == "admin")
            #expect((b1["weight"] as? [String: Any])?["value"] as? Int == 3)
            #expect((b1["weight"] as? [String: Any])?["source"] as? String == "file")
            #expect(askOnce(port, 100) == "a")

            let cleared = try AdminClient.request(port: admin, "DELETE", "/pools/app/backends/\(ba)/override")
            #expect(cleared.status == 200, "\(cleared.body)")
            b1 = try #require(AdminClient.backend(try AdminClient.get(port: admin, "/status"), pool: "app", ba))
            #expect((b1["state"] as? [String: Any])?["value"] as? String == "enabled")
            #expect((b1["state"] as? [String: Any])?["source"] as? String == "file")
            answers = [:]
            for i in 0..<40 { answers[askOnce(port, i) ?? "failed", default: 0] += 1 }
            #expect(answers["b", default: 0] >= 25, "weight 3:1 again: \(answers)")

            let events = try AdminClient.get(port: admin, "/pools/app/backends/\(ba)/events")["events"] as? [[String: Any]] ?? []
            let messages = events.compactMap { $0["message"] as? String }
            #expect(messages.contains { $0.contains("operator: drain via admin") }, "\(messages)")
            #expect(messages.contains { $0.contains("config: weight 1 -> 3") }, "\(messages)")
            #expect(messages.contains { $0.contains("state override cleared via admin") }, "\(messages)")
            #expect(events.allSatisfy { ($0["at"] as? String)?.hasSuffix("Z") == true })
        }

        /// A weight set through the admin takes effect for new connections; bad values are refused.
        @Test func weightThroughTheAdmin() throws {
            let a = try BackendProcess("a"), b = try BackendProcess("b")
            let (aa, ba) = ("127.0.0.1:\(a.port)", "127.0.0.1:\(b.port)")
            let proxy = try FulcrumProcess(config: config(workers: 1, "  app:\n    backends: [\(aa), \(ba)]"))
            let admin = try #require(proxy.adminPort)
            let set = try AdminClient.request(port: admin, "POST", "/pools/app/backends/\(aa)/weight", body: #"{"weight": 4}"#)
            #expect(set.status == 200, "\(set.body)")
            var answers: [String: Int] = [:]
            for i in 0..<50 { answers[askOnce(proxy.port("front"), i) ?? "failed", default: 0] += 1 }
            #expect(answers == ["a": 40, "b": 10], "round robin 4:1 over 50 connections: \(answers)")
            for body in [#"{"weight": 0}"#, #"{"weight": 1001}"#, #"{"weight": "3"}"#, #"{weight: 3}"#, ""] {
                let refused = try AdminClient.request(port: admin, "POST", "/pools/app/backends/\(aa)/weight", body: body)
                #expect(refused.status == 400, "\(body): \(refused.status) \(refused.body)")
                #expect(refused.object["error"] != nil)
            }
        }

        /// Active checks and breakers as the API shows them after real faults: a killed backend is down
        /// with the check's reason; one that resets every connection has its breaker open, with the count of
        /// workers and the reason; both in their histories.
        @Test func faultsShowInStatusAndEvents() throws {
            let a = try BackendProcess("a"), dead = try BackendProcess("d")
            let resetting = try BackendProcess("r", mode: "reset")
            let (aa, da, ra) = ("127.0.0.1:\(a.port)", "127.0.0.1:\(dead.port)", "127.0.0.1:\(resetting.port)")
            // The breaker's pool has no active checks: a passing check would end an ejection early.
            let proxy = try FulcrumProcess(config: """
            workers: 1
            admin: {listen: 127.0.0.1:0}
            listeners: [{name: front, listen: 127.0.0.1:0, pool: app}, {name: other, listen: 127.0.0.1:0, pool: passive}]
            pools:
              app:
                health: {check: tcp, interval: 100ms, fall: 2}
                backends: [\(aa), \(da)]
              passive:
                breaker: {consecutive_failures: 3, base_ejection: 30s, max_ejection_percent: 100%}
                retries: 0
                backends: [\(aa), \(ra)]
            """)
            let admin = try #require(proxy.adminPort)
            dead.kill9()
            var sent = 0
            func breakerOpen() throws -> Bool {
                let r = AdminClient.backend(try AdminClient.get(port: admin, "/status"), pool: "passive", ra)
                return (r?["breaker"] as? [String: Any])?["open_workers"] as? Int == 1
            }
            while try !breakerOpen() && sent < 60 {
                _ = askOnce(proxy.port("other"), sent)
                sent += 1
            }
            let deadline = Date().addingTimeInterval(5)
            var d: [String: Any]?
            repeat {
                d = AdminClient.backend(try AdminClient.get(port: admin, "/status"), pool: "app", da)
                if (d?["check"] as? [String: Any])?["state"] as? String == "down" { break }
                usleep(50_000)
            } while Date() < deadline
            let check = d?["check"] as? [String: Any]
            #expect(check?["state"] as? String == "down", "\(d ?? [:])")
            #expect((check?["reason"] as? String)?.contains("refused") == true, "\(check ?? [:])")
            #expect(d?["up"] as? Bool == false)

            let r = try #require(AdminClient.backend(try AdminClient.get(port: admin, "/status"), pool: "passive", ra))
            let breaker = r["breaker"] as? [String: Any]
            #expect(breaker?["state"] as? String == "open" && breaker?["workers"] as? Int == 1, "\(breaker ?? [:])")
            #expect((breaker?["reason"] as? String)?.contains("3 consecutive failures") == true, "\(breaker ?? [:])")
            #expect((breaker?["summary"] as? String)?.hasPrefix("open on 1 of 1 workers") == true, "\(breaker ?? [:])")
            #expect(r["up"] as? Bool == false)

            func messages(_ pool: String, _ address: String) throws -> [String] {
                let events = try AdminClient.get(port: admin, "/pools/\(pool)/backends/\(address)/events")["events"] as? [[String: Any]]
                return (events ?? []).compactMap { $0["message"] as? String }
            }
            let deadEvents = try messages("app", da), resettingEvents = try messages("passive", ra)
            #expect(deadEvents.contains { $0.hasPrefix("check tcp failed: connection refused after") }, "\(deadEvents)")
            #expect(resettingEvents.contains { $0.contains("breaker opened on worker 0: 3 consecutive failures (closed before first byte)") },
                    "\(resettingEvents)")
        }

        /// With a token, every changing request needs it: none or a wrong one gets 401 (and changes nothing,
        /// and is logged); the right one works. Reads stay open.
        @Test func changesNeedTheToken() throws {
            let a = try BackendProcess("a")
            let dir = try TemporaryDirectory()
            let tokenFile = try dir.write("token", "s3cret-token-of-some-length\n")
            let aa = "127.0.0.1:\(a.port)"
            let proxy = try FulcrumProcess(config: config(admin: "{listen: 127.0.0.1:0, token_file: \(tokenFile)}",
                                                          "  app:\n    backends: [\(aa)]"))
            let admin = try #require(proxy.adminPort)
            let changes: [(String, String, String?)] = [
                ("POST", "/pools/app/backends/\(aa)/drain", nil), ("POST", "/pools/app/backends/\(aa)/disable", nil),
                ("POST", "/pools/app/backends/\(aa)/enable", nil), ("POST", "/pools/app/backends/\(aa)/weight", #"{"weight": 2}"#),
                ("DELETE", "/pools/app/backends/\(aa)/override", nil), ("POST", "/reload", nil),
            ]
            for (method, path, body) in changes {
                for auth in [nil, "Bearer wrong", "Bearer s3cret-token-of-some-lengtX", "s3cret-token-of-some-length"] {
                    let headers = auth.map { ["Authorization": $0] } ?? [:]
                    let answer = try AdminClient.request(port: admin, method, path, headers: headers, body: body)
                    #expect(answer.status == 401, "\(method) \(path) with \(auth ?? "no token"): \(answer.status)")
                    #expect(answer.headers["www-authenticate"]?.hasPrefix("Bearer") == true)
                }
            }
            // Logged, at most once a second: a flood of refusals cannot flood the log.
            let logged = proxy.logCount(containing: "admin: refused a change without the right token")
            #expect(logged >= 1 && logged < changes.count * 4, "\(logged) log lines for \(changes.count * 4) refusals")
            let status = try AdminClient.get(port: admin, "/status")
            #expect((AdminClient.backend(status, pool: "app", aa)?["state"] as? [String: Any])?["value"] as? String == "enabled")
            let ok = try AdminClient.request(port: admin, "POST", "/pools/app/backends/\(aa)/drain",
                                             headers: ["Authorization": "Bearer s3cret-token-of-some-length"])
            #expect(ok.status == 200, "\(ok.body)")
        }

        /// The admin refuses to listen off loopback without a token: `check` says why and `run` does not start.
        @Test func nonLoopbackWithoutATokenDoesNotStart() throws {
            let dir = try TemporaryDirectory()
            let path = try dir.write("open.yaml", config(admin: "{listen: 0.0.0.0:0}", "  app:\n    backends: [127.0.0.1:9]"))
            let check = try runFulcrum(["check", "--config", path])
            #expect(check.status == 1)
            #expect(check.output.contains("admin.listen") && check.output.contains("not a loopback address") && check.output.contains("token_file"),
                    "\(check.output)")
            let run = try runFulcrum(["run", "--config", path])
            #expect(run.status == 1 && run.output.contains("not a loopback address"))
        }

        /// Bad requests get a clear 4xx, browsers on other sites cannot change anything, and none of it
        /// affects the proxy's clients.
        @Test func badRequestsAndCrossSiteChangesAreRefused() throws {
            let a = try BackendProcess("a")
            let aa = "127.0.0.1:\(a.port)"
            let proxy = try FulcrumProcess(config: config("  app:\n    backends: [\(aa)]"))
            let admin = try #require(proxy.adminPort)
            let load = LoadClient(port: proxy.port("front"))
            let cases: [(String, String, [String: String], String?, Int)] = [
                ("GET", "/nope", [:], nil, 404),
                ("GET", "/pools/app/backends/127.0.0.1:1/events", [:], nil, 404),
                ("GET", "/pools/nope/backends/\(aa)/events", [:], nil, 404),
                ("GET", "/pools/app/backends/not-an-address/events", [:], nil, 404),
                ("DELETE", "/status", [:], nil, 405),
                ("GET", "/pools/app/backends/\(aa)/drain", [:], nil, 405),
                ("POST", "/pools/app/backends/\(aa)/weight", [:], "[1, 2", 400),
                // A body announced too large is refused before it is read.
                ("POST", "/pools/app/backends/\(aa)/weight", ["Content-Length": "100000"], nil, 413),
                ("POST", "/pools/app/backends/\(aa)/drain", ["Origin": "http://evil.example"], nil, 403),
                ("POST", "/pools/app/backends/\(aa)/drain", ["Sec-Fetch-Site": "cross-site"], nil, 403),
                // DNS rebinding: a page at evil.example whose name now points at 127.0.0.1 is same-origin to
                // itself, but not a loopback name: refused, reads included.
                ("POST", "/pools/app/backends/\(aa)/drain", ["Host": "evil.example:\(admin)", "Origin": "http://evil.example:\(admin)"], nil, 421),
                ("GET", "/status", ["Host": "evil.example:\(admin)"], nil, 421),
            ]
            for (method, path, headers, body, expected) in cases {
                let answer: AdminResponse
                do {
                    answer = try AdminClient.request(port: admin, method, path, headers: headers, body: body)
                } catch {
                    Issue.record("\(method) \(path): \(error)")
                    continue
                }
                #expect(answer.status == expected, "\(method) \(path): \(answer.status) \(answer.body.prefix(200))")
                if expected != 413 { #expect(answer.object["error"] is String, "\(answer.body)") }
            }
            // A same-origin change (the status page's own) goes through.
            let own = try AdminClient.request(port: admin, "POST", "/pools/app/backends/\(aa)/enable",
                                              headers: ["Origin": "http://127.0.0.1:\(admin)"])
            #expect(own.status == 200, "\(own.body)")
            try load.waitForOutcomes(20)
            let outcomes = load.stop()
            #expect(outcomes.allSatisfy { $0.error == nil }, "the proxy's clients are not affected")
            #expect((AdminClient.backend(try AdminClient.get(port: admin, "/status"), pool: "app", aa)?["state"] as? [String: Any])?["value"] as? String == "enabled")
        }

        /// POST /reload: an invalid file answers 422 with every error and changes nothing; a valid one
        /// answers once every worker applied it, with the changes.
        @Test func reloadThroughTheAdmin() throws {
            let a = try BackendProcess("a"), b = try BackendProcess("b")
            let proxy = try FulcrumProcess(config: config("  app:\n    backends: [127.0.0.1:\(a.port)]"))
            let admin = try #require(proxy.adminPort)
            try proxy.writeConfig(config("  app:\n    backends: [127.0.0.1:\(b.port)]\n    retires: 1"))
            let failed = try AdminClient.request(port: admin, "POST", "/reload")
            #expect(failed.status == 422, "\(failed.body)")
            let errors = failed.object["errors"] as? [String] ?? []
            #expect(errors.contains { $0.contains("fulcrum.yaml:7:") && $0.contains("retires") }, "\(errors)")
            #expect(askOnce(proxy.port("front"), 1) == "a")
            try proxy.writeConfig(config("  app:\n    backends: [127.0.0.1:\(b.port)]"))
            let applied = try AdminClient.request(port: admin, "POST", "/reload")
            #expect(applied.status == 200, "\(applied.body)")
            #expect((applied.object["changes"] as? [String])?.contains { $0.contains("added") } == true, "\(applied.body)")
            #expect(askOnce(proxy.port("front"), 2) == "b", "applied before the answer")
            let status = try AdminClient.get(port: admin, "/status")
            let reloads = (status["fulcrum"] as? [String: Any])?["reloads"] as? [String: Any]
            #expect(reloads?["succeeded"] as? Int == 1 && reloads?["failed"] as? Int == 1, "\(reloads ?? [:])")
        }
    
        /// A reload through the admin that moves the admin: answered on the old address, then served on the
        /// new one (the old one closes on the loop's next turn, after the answer).
        @Test func aReloadThatMovesTheAdminIsAnsweredThenMoves() throws {
            let a = try BackendProcess("a")
            let proxy = try FulcrumProcess(config: config("  app:\n    backends: [127.0.0.1:\(a.port)]"))
            let admin = try #require(proxy.adminPort)
            // A free port: bound for a moment, then let go.
            var reserved: RefusingPort? = try RefusingPort()
            let newPort = reserved!.port
            reserved = nil
            try proxy.writeConfig(config(admin: "{listen: 127.0.0.1:\(newPort)}", "  app:\n    backends: [127.0.0.1:\(a.port)]"))
            let answer = try AdminClient.request(port: admin, "POST", "/reload")
            #expect(answer.status == 200, "\(answer.body)")
            try proxy.waitForLog(containing: "admin API on http://127.0.0.1:\(newPort)/")
            #expect(try AdminClient.request(port: newPort, "GET", "/status").status == 200)
            #expect(throws: (any Error).self, "the old address is closed") { try AdminClient.request(port: admin, "GET", "/status", timeout: 2) }
            #expect(askOnce(proxy.port("front"), 1) == "a")
        }
    }
}
