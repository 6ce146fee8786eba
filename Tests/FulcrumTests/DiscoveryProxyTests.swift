import Foundation
import FulcrumTestSupport
import Glibc
import Testing

/// `GET /status`'s entry for the pool's discovery source `source`.
func discoverySource(_ status: [String: Any], pool: String, _ source: String) -> [String: Any]? {
    let pools = status["pools"] as? [[String: Any]] ?? []
    let sources = pools.first { $0["name"] as? String == pool }?["discovery"] as? [[String: Any]] ?? []
    return sources.first { $0["source"] as? String == source }
}

/// Asks until `done` holds for the answers so far (each a new connection), at most `timeout` seconds;
/// returns the answers.
func askUntil(_ port: UInt16, timeout: Double = 15, _ done: ([String]) -> Bool) -> [String] {
    var answers: [String] = []
    let deadline = Date().addingTimeInterval(timeout)
    var i = 0
    while Date() < deadline && !done(answers) {
        answers.append(askOnce(port, i) ?? "failed")
        i += 1
        usleep(5_000)
    }
    return answers
}

/// Polls `/status` until `condition` holds for it, at most `timeout` seconds; returns the last one.
func statusWhen(_ admin: UInt16, timeout: Double = 15, _ condition: ([String: Any]) -> Bool) throws -> [String: Any] {
    let deadline = Date().addingTimeInterval(timeout)
    var status = try AdminClient.get(port: admin, "/status")
    while !condition(status) && Date() < deadline {
        usleep(50_000)
        status = try AdminClient.get(port: admin, "/status")
    }
    return status
}

extension Integration {
    /// Discovery end to end: a real dnsmasq, the real binary, real backends; asserted through the traffic
    /// and the admin API.
    @Suite(.timeLimit(.minutes(3)))
    struct DiscoveryProxyTests {
        /// A host-name backend follows its A records through the proxy: an address added takes traffic
        /// within the TTL, one removed takes no new connections; a DNS server that dies, or a name that
        /// disappears (NXDOMAIN), leaves the pool as it was and marks the source stale until it answers.
        @Test func hostNameBackendsFollowTheirARecords() throws {
            let a = try BackendProcess("a", host: "127.0.0.2")
            let b = try BackendProcess("b", port: a.port, host: "127.0.0.3")
            defer { withExtendedLifetime(b) {} }
            let dns = try DNSServerProcess(hosts: [("127.0.0.2", "svc.fulcrum.test")])
            let proxy = try FulcrumProcess(config: """
            workers: 2
            admin: {listen: 127.0.0.1:0}
            dns: {servers: ["\(dns.address)"], min_ttl: 1s, timeout: 500ms}
            listeners: [{name: front, listen: 127.0.0.1:0, pool: app}]
            pools:
              app:
                backends: [svc.fulcrum.test:\(a.port)]
            """)
            let admin = try #require(proxy.adminPort)
            let port = proxy.port("front")
            let source = "dns svc.fulcrum.test:\(a.port)"
            // Resolved before the first client: every answer from a.
            #expect((0..<10).map { askOnce(port, $0) } == Array(repeating: "a", count: 10))

            try dns.setHosts([("127.0.0.2", "svc.fulcrum.test"), ("127.0.0.3", "svc.fulcrum.test")])
            let both = askUntil(port) { $0.contains("b") }
            #expect(both.contains("b"), "the added address takes traffic within the TTL: \(both.suffix(10))")
            var status = try AdminClient.get(port: admin, "/status")
            let entry = discoverySource(status, pool: "app", source)
            #expect(entry?["state"] as? String == "ok" && entry?["backends"] as? Int == 2, "\(entry ?? [:])")
            let bStatus = AdminClient.backend(status, pool: "app", "127.0.0.3:\(a.port)")
            #expect(bStatus?["listed_by"] as? [String] == [source])

            try dns.setHosts([("127.0.0.3", "svc.fulcrum.test")])
            let onlyB = askUntil(port) { $0.suffix(10) == Array(repeating: "b", count: 10) }
            #expect(onlyB.suffix(10) == Array(repeating: "b", count: 10), "the removed address drains: \(onlyB.suffix(10))")

            // The name disappears: NXDOMAIN keeps the last set.
            try dns.setHosts([])
            status = try statusWhen(admin) { discoverySource($0, pool: "app", source)?["state"] as? String == "stale" }
            let stale = discoverySource(status, pool: "app", source)
            #expect(stale?["state"] as? String == "stale" && (stale?["error"] as? String)?.contains("NXDOMAIN") == true,
                    "\(stale ?? [:])")
            #expect((0..<10).map { askOnce(port, $0) } == Array(repeating: "b", count: 10), "the pool keeps b")

            // The server dies: still the last set, still stale; the metric says so.
            dns.stop()
            let metrics = try AdminClient.request(port: admin, "GET", "/metrics").body
            #expect(metrics.contains("fulcrum_discovery_stale{pool=\"app\",source=\"\(source)\",kind=\"dns\"} 1"), "\(metrics)")
            #expect((0..<10).map { askOnce(port, $0) } == Array(repeating: "b", count: 10))

            // Back, with both addresses: answers again.
            try dns.start()
            try dns.setHosts([("127.0.0.2", "svc.fulcrum.test"), ("127.0.0.3", "svc.fulcrum.test")])
            status = try statusWhen(admin, timeout: 40) {
                let entry = discoverySource($0, pool: "app", source)
                return entry?["state"] as? String == "ok" && entry?["backends"] as? Int == 2
            }
            #expect(discoverySource(status, pool: "app", source)?["backends"] as? Int == 2)
            let history = try AdminClient.get(port: admin, "/pools/app/backends/127.0.0.2:\(a.port)/events")["events"] as? [[String: Any]] ?? []
            let messages = history.compactMap { $0["message"] as? String }
            #expect(messages.contains { $0.hasPrefix("discovery: removed by \(source)") }, "\(messages)")
            #expect(messages.contains { $0.hasPrefix("discovery: added by \(source)") }, "\(messages)")
        }

        /// SRV records give targets, ports, tiers and weights; a restart with other records is followed.
        @Test func srvRecordsGiveTiersAndWeights() throws {
            let a = try BackendProcess("a"), b = try BackendProcess("b"), c = try BackendProcess("c")
            let name = "_app._tcp.fulcrum.test"
            let records = [
                DNSServerProcess.SRVRecord(name, target: "a.fulcrum.test", port: a.port, priority: 10, weight: 3),
                DNSServerProcess.SRVRecord(name, target: "b.fulcrum.test", port: b.port, priority: 10, weight: 1),
                DNSServerProcess.SRVRecord(name, target: "c.fulcrum.test", port: c.port, priority: 20, weight: 1),
            ]
            let hosts = [("127.0.0.1", "a.fulcrum.test"), ("127.0.0.1", "b.fulcrum.test"), ("127.0.0.1", "c.fulcrum.test")]
            let dns = try DNSServerProcess(hosts: hosts, srv: records)
            let proxy = try FulcrumProcess(config: """
            workers: 1
            admin: {listen: 127.0.0.1:0}
            dns: {servers: ["\(dns.address)"], min_ttl: 1s, timeout: 500ms}
            listeners: [{name: front, listen: 127.0.0.1:0, pool: app}]
            pools:
              app:
                discovery: {srv: \(name)}
            """)
            let admin = try #require(proxy.adminPort)
            let status = try AdminClient.get(port: admin, "/status")
            func backend(_ port: UInt16) -> [String: Any]? { AdminClient.backend(status, pool: "app", "127.0.0.1:\(port)") }
            #expect((backend(a.port)?["weight"] as? [String: Any])?["value"] as? Int == 3)
            #expect((backend(a.port)?["weight"] as? [String: Any])?["source"] as? String == "discovery")
            #expect(backend(b.port)?["priority"] as? Int == 0 && backend(c.port)?["priority"] as? Int == 1,
                    "priority 10 is tier 0, priority 20 tier 1")
            var answers: [String: Int] = [:]
            for i in 0..<40 { answers[askOnce(proxy.port("front"), i) ?? "failed", default: 0] += 1 }
            #expect(answers == ["a": 30, "b": 10], "weights 3:1, the backup tier idle: \(answers)")

            // Other records after a restart: a gone, c promoted to the first tier.
            try dns.restart(srv: [
                DNSServerProcess.SRVRecord(name, target: "b.fulcrum.test", port: b.port, priority: 10, weight: 1),
                DNSServerProcess.SRVRecord(name, target: "c.fulcrum.test", port: c.port, priority: 10, weight: 1),
            ])
            let after = askUntil(proxy.port("front")) { Set($0.suffix(10)) == ["b", "c"] }
            #expect(Set(after.suffix(10)) == ["b", "c"], "\(after.suffix(10))")
        }
    }
}
