import Foundation
import FulcrumCore
import FulcrumTestSupport
import Glibc
import Testing

extension Integration {
    /// etcd discovery end to end: a real etcd, `fulcrum register` sidecars beside real backends, and the
    /// real proxy; asserted through traffic and the admin API.
    @Suite(.timeLimit(.minutes(3)))
    struct EtcdProxyTests {
        static let prefix = "/fulcrum/pools/app/"

        func proxyConfig(_ etcd: EtcdProcess, workers: Int = 2) -> String {
            """
            workers: \(workers)
            admin: {listen: 127.0.0.1:0}
            listeners: [{name: front, listen: 127.0.0.1:0, pool: app}]
            pools:
              app:
                discovery:
                  etcd: {endpoints: ["\(etcd.url)"], prefix: \(Self.prefix)}
            """
        }

        func record(_ port: UInt16, weight: Int = 1, state: String = "enabled") -> String {
            #"{"address":"127.0.0.1:\#(port)","weight":\#(weight),"state":"\#(state)"}"#
        }

        func sidecar(_ etcd: EtcdProcess, _ backend: BackendProcess) throws -> RegisterProcess {
            try RegisterProcess([
                "--etcd", etcd.url, "--prefix", Self.prefix, "--address", "127.0.0.1:\(backend.port)",
                "--check", "send_expect", "--send", "ping\\n", "--expect", "\(backend.name):ping",
                "--interval", "200ms", "--timeout", "500ms", "--rise", "1", "--fall", "2", "--ttl", "2s",
                "--drain-wait", "1s",
            ])
        }

        func listed(_ admin: UInt16, _ port: UInt16) throws -> Bool {
            let status = try AdminClient.get(port: admin, "/status")
            return AdminClient.backend(status, pool: "app", "127.0.0.1:\(port)")?["listed"] as? Bool == true
        }

        /// A backend registered by `fulcrum register` takes traffic; its sidecar killed with it, the key
        /// goes when the lease expires and the backend leaves the pool; a weight change applies without
        /// dropping the connections the backend has.
        @Test func aRegisteredBackendTakesTrafficAndLeavesWhenItsLeaseExpires() throws {
            let etcd = try EtcdProcess()
            let a = try BackendProcess("a"), b = try BackendProcess("b")
            let sa = try sidecar(etcd, a), sb = try sidecar(etcd, b)
            _ = try etcd.waitFor(prefix: Self.prefix, "both registered") { $0.count == 2 }
            let proxy = try FulcrumProcess(config: proxyConfig(etcd))
            let admin = try #require(proxy.adminPort)
            let port = proxy.port("front")
            var answers: [String: Int] = [:]
            for i in 0..<20 { answers[askOnce(port, i) ?? "failed", default: 0] += 1 }
            // Round robin per worker (two workers): about half each.
            #expect(answers["a", default: 0] >= 7 && answers["b", default: 0] >= 7 && answers["failed"] == nil, "\(answers)")

            // A weight change under a long-lived connection to a (b dies below): applied, and the connection
            // carries on.
            var onB: [PersistentClient] = []
            var onA: PersistentClient?
            while onA == nil && onB.count < 10 {
                let client = try PersistentClient(port: port, pause: 0.01)
                if try client.firstAnswer() == "a" { onA = client } else { onB.append(client) }
            }
            for client in onB { _ = client.stop() }
            let long = try #require(onA, "no connection of ten went to a")
            _ = try etcd.put(Self.prefix + "127.0.0.1:\(a.port)", record(a.port, weight: 3))
            let status = try statusWhen(admin) {
                (AdminClient.backend($0, pool: "app", "127.0.0.1:\(a.port)")?["weight"] as? [String: Any])?["value"] as? Int == 3
            }
            let weight = AdminClient.backend(status, pool: "app", "127.0.0.1:\(a.port)")?["weight"] as? [String: Any]
            #expect(weight?["value"] as? Int == 3 && weight?["source"] as? String == "discovery")

            // The sidecar and its backend die together: the key goes with the lease (TTL 2 s).
            let killed = Date()
            sb.kill9()
            b.kill9()
            _ = try etcd.waitFor(prefix: Self.prefix, timeout: 10, "b's lease expired") { $0.count == 1 }
            let expired = Date().timeIntervalSince(killed)
            #expect(expired >= 1 && expired < 6, "the key lasts about its TTL after the sidecar dies: \(expired)s")
            _ = try statusWhen(admin) { AdminClient.backend($0, pool: "app", "127.0.0.1:\(b.port)")?["listed"] as? Bool == false }
            #expect(try !listed(admin, b.port))
            #expect((0..<10).map { askOnce(port, $0) } == Array(repeating: "a", count: 10))
            let (answersOnLong, error) = long.stop()
            #expect(error == nil && !answersOnLong.isEmpty, "the long-lived connection survives: \(error ?? "")")
            let events = try AdminClient.get(port: admin, "/pools/app/backends/127.0.0.1:\(b.port)/events")["events"] as? [[String: Any]] ?? []
            #expect(events.compactMap { $0["message"] as? String }.contains { $0.hasPrefix("discovery: removed by etcd \(Self.prefix)") })
            withExtendedLifetime(sa) {}
        }

        /// etcd stops under load: not one connection fails and the pool stays as it was, the source stale;
        /// etcd comes back: the watch resumes and catches up on a change made before it reconnected.
        @Test func etcdDownUnderLoadChangesNothingAndTheWatchCatchesUpWhenItReturns() throws {
            let etcd = try EtcdProcess()
            let a = try BackendProcess("a"), b = try BackendProcess("b")
            _ = try etcd.put(Self.prefix + "a", record(a.port))
            let proxy = try FulcrumProcess(config: proxyConfig(etcd))
            let admin = try #require(proxy.adminPort)
            let load = LoadClient(port: proxy.port("front"), limit: 100_000)
            try load.waitForOutcomes(50)

            etcd.stop()
            let source = "etcd \(Self.prefix)"
            let stale = try statusWhen(admin, timeout: 20) { discoverySource($0, pool: "app", source)?["state"] as? String == "stale" }
            #expect(discoverySource(stale, pool: "app", source)?["state"] as? String == "stale")
            #expect(try listed(admin, a.port), "the pool keeps its last known set")
            try load.waitForOutcomes(100)

            try etcd.start()
            _ = try etcd.put(Self.prefix + "b", record(b.port))
            do {
                try load.waitForAnswers(from: "b", count: 5, timeout: 30)
            } catch {
                Issue.record("\(error); log:\n\(proxy.log.suffix(25).joined(separator: "\n"))")
                throw error
            }
            let outcomes = load.stop()
            let failed = outcomes.filter { $0.error != nil }
            #expect(failed.isEmpty, "\(failed.count) of \(outcomes.count) failed: \(failed.prefix(3).map { $0.error ?? "" })")
            print("etcd stopped and restarted under load: \(outcomes.count) one-request connections, \(failed.count) failed")
            let ok = try statusWhen(admin) { discoverySource($0, pool: "app", source)?["state"] as? String == "ok" }
            let entry = discoverySource(ok, pool: "app", source)
            #expect(entry?["state"] as? String == "ok" && entry?["backends"] as? Int == 2, "\(entry ?? [:])")
            #expect(((entry?["errors"] as? Int) ?? 0) >= 1)
        }

        /// One etcd revision can hold several events (a range delete): every one of them applies.
        @Test func aRangeDeleteRemovesEveryBackendOfItsRevision() throws {
            let etcd = try EtcdProcess()
            let a = try BackendProcess("a"), b = try BackendProcess("b"), c = try BackendProcess("c")
            for backend in [a, b, c] { _ = try etcd.put(Self.prefix + backend.name, record(backend.port)) }
            let proxy = try FulcrumProcess(config: proxyConfig(etcd))
            let admin = try #require(proxy.adminPort)
            let deleted = try runProgram(URL(fileURLWithPath: "/usr/bin/etcdctl"), ["--endpoints", etcd.url, "del", "--prefix", Self.prefix])
            #expect(deleted.status == 0 && deleted.output.contains("3"), "\(deleted.output)")
            // A removed backend without connections leaves `/status`.
            let status = try statusWhen(admin) { status in
                [a, b, c].allSatisfy { AdminClient.backend(status, pool: "app", "127.0.0.1:\($0.port)")?["listed"] as? Bool != true }
            }
            for backend in [a, b, c] {
                #expect(AdminClient.backend(status, pool: "app", "127.0.0.1:\(backend.port)")?["listed"] as? Bool != true,
                        "\(backend.name) is removed with the others")
            }
            #expect(discoverySource(status, pool: "app", "etcd \(Self.prefix)")?["backends"] as? Int == 0)
            #expect(askOnce(proxy.port("front"), 0) == nil, "no backend left to serve")
        }

        /// A reload that replaces a pool's source (another prefix listing the same backends) keeps them in
        /// the pool until the new source has answered: no client fails meanwhile. A pool a reload removes
        /// and a later reload adds again carries none of its old source's backends.
        @Test func reloadsReplaceSourcesWithoutEmptyingThePool() throws {
            let etcd = try EtcdProcess()
            let a = try BackendProcess("a")
            _ = try etcd.put(Self.prefix + "a", record(a.port))
            _ = try etcd.put("/fulcrum/pools/other/a", record(a.port))
            let proxy = try FulcrumProcess(config: proxyConfig(etcd))
            let admin = try #require(proxy.adminPort)
            let load = LoadClient(port: proxy.port("front"), limit: 100_000)
            try load.waitForOutcomes(20)
            try proxy.reload(proxyConfig(etcd).replacingOccurrences(of: Self.prefix, with: "/fulcrum/pools/other/"))
            try load.waitForOutcomes(100)
            let outcomes = load.stop()
            #expect(outcomes.filter { $0.error != nil }.isEmpty, "\(outcomes.filter { $0.error != nil }.prefix(3).map { $0.error ?? "" })")
            var status = try statusWhen(admin) { discoverySource($0, pool: "app", "etcd /fulcrum/pools/other/") != nil }
            let backend = AdminClient.backend(status, pool: "app", "127.0.0.1:\(a.port)")
            #expect(backend?["listed_by"] as? [String] == ["etcd /fulcrum/pools/other/"], "\(backend ?? [:])")

            // The pool goes (its listener serves a static pool meanwhile), its key is deleted, it comes back.
            let b = try BackendProcess("b")
            let withoutPool = """
            workers: 2
            admin: {listen: 127.0.0.1:0}
            listeners: [{name: front, listen: 127.0.0.1:0, pool: fixed}]
            pools:
              fixed:
                backends: [127.0.0.1:\(b.port)]
            """
            try proxy.reload(withoutPool)
            _ = try etcd.delete("/fulcrum/pools/other/a")
            try proxy.reload(proxyConfig(etcd).replacingOccurrences(of: Self.prefix, with: "/fulcrum/pools/other/"))
            status = try statusWhen(admin) { discoverySource($0, pool: "app", "etcd /fulcrum/pools/other/")?["state"] as? String == "ok" }
            #expect(AdminClient.backend(status, pool: "app", "127.0.0.1:\(a.port)")?["listed"] as? Bool != true,
                    "no backend left over from the pool's earlier life")
        }

        /// Three instances on one prefix converge: the time from a registration change to every instance
        /// routing by it, over a series of changes.
        @Test func threeInstancesConvergeOnEveryChange() throws {
            let etcd = try EtcdProcess()
            let a = try BackendProcess("a"), b = try BackendProcess("b")
            let key = Self.prefix + "svc"
            _ = try etcd.put(key, record(a.port))
            let proxies = try (0..<3).map { _ in try FulcrumProcess(config: proxyConfig(etcd, workers: 1)) }
            let ports = proxies.map { $0.port("front") }
            for port in ports { #expect(askOnce(port, 0) == "a") }
            var times: [Double] = []
            for round in 0..<10 {
                let (next, target) = round % 2 == 0 ? ("b", b.port) : ("a", a.port)
                let changed = Date()
                _ = try etcd.put(key, record(target))
                var pending = Set(ports.indices)
                var converged = Date()
                let deadline = changed.addingTimeInterval(10)
                var i = 0
                while !pending.isEmpty && Date() < deadline {
                    for index in pending.sorted() where askOnce(ports[index], i) == next {
                        pending.remove(index)
                        converged = Date()
                    }
                    i += 1
                }
                #expect(pending.isEmpty, "round \(round): instances \(pending.sorted()) never routed to \(next)")
                times.append(converged.timeIntervalSince(changed))
            }
            times.sort()
            let median = times[times.count / 2], worst = times.last ?? 0
            print("convergence of 3 instances over \(times.count) registration changes: median \(Int(median * 1000)) ms, max \(Int(worst * 1000)) ms")
            #expect(worst < 1.0, "every instance routes by the change within 1 s: \(times)")
        }
    }
}
