import EventLoop
import Foundation
@testable import Fulcrum
import FulcrumCore
import FulcrumTestSupport
import Logging
import Testing

/// The DNS discovery sources on an event loop of the test's own, against a real dnsmasq on loopback: what
/// they report as records change, as the server fails and recovers.
final class DiscoveryHarness {
    let base = EventBase()
    var reports: [DiscoveryReport] = []
    let logger = Logger(label: "dns-test") { _ in SwiftLogNoOpLogHandler() }

    var sink: DiscoverySink { { [unowned self] report in self.reports.append(report) } }

    func settings(_ dns: DNSServerProcess, family: FulcrumConfig.DNS.Family = .ipv4) -> FulcrumConfig.DNS {
        FulcrumConfig.DNS(servers: [dns.socketAddress], family: family, minTTL: .seconds(1), maxTTL: .seconds(300),
                          timeout: .milliseconds(400))
    }

    /// Runs the loop until a report after the first `after` matches (returned), or `timeout` seconds pass.
    func next(after: Int? = nil, timeout: Double = 10, _ matches: @escaping (DiscoveryReport) -> Bool = { _ in true }) -> DiscoveryReport? {
        let start = after ?? reports.count
        let found = { [unowned self] in self.reports.dropFirst(start).first(where: matches) }
        let deadline = Date().addingTimeInterval(timeout)
        var check: EventLoop.Timer?
        check = EventLoop.Timer(base: base) { [base] in
            if found() != nil || Date() > deadline { base.exit() } else { check?.schedule(after: 5_000) }
        }
        if found() == nil {
            check?.schedule(after: 5_000)
            base.run()
        }
        check?.cancel()
        check = nil
        return found()
    }

    /// Runs the loop for `seconds`.
    func idle(_ seconds: Double) { _ = next(timeout: seconds) { _ in false } }

    static func keys(_ report: DiscoveryReport?) -> [String]? {
        guard case .snapshot(let backends, _) = report else { return nil }
        return backends.map(\.key)
    }

    static func isSnapshot(_ keys: [String]) -> (DiscoveryReport) -> Bool {
        { report in Self.keys(report) == keys }
    }

    static func isFailure(_ report: DiscoveryReport) -> Bool {
        if case .failed = report { return true }
        return false
    }
}

extension Integration {
    @Suite(.timeLimit(.minutes(2))) struct DNSDiscoveryTests {
        static let domain = "fulcrum.test"

        @Test func aNameSourceFollowsRecordsAddedAndRemovedWithinTheTTL() throws {
            let dns = try DNSServerProcess(hosts: [("127.0.0.11", "web.fulcrum.test")])
            let h = DiscoveryHarness()
            let service = DNSService(base: h.base, settings: h.settings(dns), logger: h.logger)
            let entry = FulcrumConfig.NamedBackend(host: "web.fulcrum.test", port: 7000, weight: 3, priority: 1, maxConnections: 9)
            let source = DNSNameSource(service: service, name: entry, settings: h.settings(dns), logger: h.logger, report: h.sink)
            #expect(source.name == "dns web.fulcrum.test:7000")
            source.start()
            let first = h.next()
            guard case .snapshot(let backends, let detail) = first else { Issue.record("\(String(describing: first))"); return }
            #expect(backends == [DiscoveredBackend(FulcrumConfig.Backend(address: .ipv4((127, 0, 0, 11), port: 7000), weight: 3,
                                                                         priority: 1, maxConnections: 9))])
            #expect(detail == "ttl 1s")

            // Added, then removed: each followed within the TTL (1 s) and one query.
            for hosts in [[("127.0.0.12", "web.fulcrum.test"), ("127.0.0.11", "web.fulcrum.test")],
                          [("127.0.0.12", "web.fulcrum.test")]] {
                let mark = h.reports.count
                try dns.setHosts(hosts)
                let changed = Date()
                let expected = hosts.map { "\($0.0):7000" }.sorted()
                #expect(h.next(after: mark, DiscoveryHarness.isSnapshot(expected)) != nil, "\(h.reports)")
                #expect(Date().timeIntervalSince(changed) < 3)
                #expect(!h.reports.dropFirst(mark).contains(where: DiscoveryHarness.isFailure))
            }

            // The name without A records (only an AAAA): an empty snapshot, which the pool holds back.
            let mark = h.reports.count
            try dns.setHosts([("fd00::1", "web.fulcrum.test")])
            let empty = h.next(after: mark, DiscoveryHarness.isSnapshot([]))
            guard case .snapshot(_, let emptyDetail) = empty else { Issue.record("\(h.reports)"); return }
            #expect(emptyDetail.hasPrefix("no address records"))
            source.stop()
            service.close()
        }

        @Test func familyBothGivesAAndAAAARecords() throws {
            let dns = try DNSServerProcess(hosts: [("127.0.0.21", "dual.fulcrum.test"), ("fd00::21", "dual.fulcrum.test"),
                                                   ("127.0.0.22", "dual.fulcrum.test")])
            let h = DiscoveryHarness()
            let entry = FulcrumConfig.NamedBackend(host: "dual.fulcrum.test", port: 7000)
            let both = DNSService(base: h.base, settings: h.settings(dns, family: .both), logger: h.logger)
            let source = DNSNameSource(service: both, name: entry, settings: h.settings(dns, family: .both), logger: h.logger,
                                       report: h.sink)
            source.start()
            #expect(DiscoveryHarness.keys(h.next()) == ["127.0.0.21:7000", "127.0.0.22:7000", "[fd00::21]:7000"])
            source.stop()
            let v6 = DNSService(base: h.base, settings: h.settings(dns, family: .ipv6), logger: h.logger)
            let v6Source = DNSNameSource(service: v6, name: entry, settings: h.settings(dns, family: .ipv6), logger: h.logger,
                                         report: h.sink)
            v6Source.start()
            #expect(DiscoveryHarness.keys(h.next()) == ["[fd00::21]:7000"])
            v6Source.stop()
        }

        @Test func noSuchNameAndAStoppedServerFailAndRecoveryGivesASnapshotAgain() throws {
            let dns = try DNSServerProcess(hosts: [("127.0.0.31", "web.fulcrum.test")])
            let h = DiscoveryHarness()
            let service = DNSService(base: h.base, settings: h.settings(dns), logger: h.logger)
            let missing = DNSNameSource(service: service, name: .init(host: "late.fulcrum.test", port: 7000),
                                        settings: h.settings(dns), logger: h.logger, report: h.sink)
            missing.start()
            #expect(h.next() == .failed("late.fulcrum.test: no such name (NXDOMAIN)", retryIn: .seconds(1)))
            #expect(h.next() == .failed("late.fulcrum.test: no such name (NXDOMAIN)", retryIn: .seconds(2)))
            try dns.setHosts([("127.0.0.31", "web.fulcrum.test"), ("127.0.0.32", "late.fulcrum.test")])
            #expect(h.next(DiscoveryHarness.isSnapshot(["127.0.0.32:7000"])) != nil, "\(h.reports)")
            missing.stop()

            let source = DNSNameSource(service: service, name: .init(host: "web.fulcrum.test", port: 7000),
                                       settings: h.settings(dns), logger: h.logger, report: h.sink)
            source.start()
            #expect(h.next(DiscoveryHarness.isSnapshot(["127.0.0.31:7000"])) != nil)
            dns.stop()
            let mark = h.reports.count
            let failure = h.next(after: mark, DiscoveryHarness.isFailure)
            #expect(failure == .failed("web.fulcrum.test: no answer within 400ms", retryIn: .seconds(1)))
            // Only failures while the server is down: nothing that would change the pool.
            #expect(h.reports.dropFirst(mark).allSatisfy(DiscoveryHarness.isFailure))
            try dns.start()
            #expect(h.next(DiscoveryHarness.isSnapshot(["127.0.0.31:7000"])) != nil, "\(h.reports)")
            source.stop()
        }

        @Test func refreshAsksAtOnceAndStopEndsEveryReport() throws {
            let dns = try DNSServerProcess(hosts: [("127.0.0.41", "web.fulcrum.test")], ttl: 300)
            let h = DiscoveryHarness()
            let service = DNSService(base: h.base, settings: h.settings(dns), logger: h.logger)
            let source = DNSNameSource(service: service, name: .init(host: "web.fulcrum.test", port: 7000),
                                       settings: h.settings(dns), logger: h.logger, report: h.sink)
            source.start()
            #expect(h.next() == .snapshot([DiscoveredBackend(.init(address: .ipv4((127, 0, 0, 41), port: 7000)))], detail: "ttl 300s"))
            try dns.setHosts([("127.0.0.42", "web.fulcrum.test")])
            // The TTL is 300 s: only a refresh asks now.
            source.refresh()
            #expect(DiscoveryHarness.keys(h.next()) == ["127.0.0.42:7000"])
            source.refresh()
            source.stop()
            let mark = h.reports.count
            h.idle(1.5)
            #expect(h.reports.count == mark)
        }

        @Test func srvGivesTargetsPortsPrioritiesAndWeights() throws {
            let dns = try DNSServerProcess(
                hosts: [("127.0.0.51", "t1.fulcrum.test"), ("127.0.0.52", "t2.fulcrum.test"), ("127.0.0.53", "t2.fulcrum.test"),
                        ("fd00::51", "t3.fulcrum.test")],
                srv: [.init("_redis._tcp.fulcrum.test", target: "t1.fulcrum.test", port: 6379, priority: 10, weight: 5),
                      .init("_redis._tcp.fulcrum.test", target: "t2.fulcrum.test", port: 6380, priority: 20, weight: 0),
                      .init("_redis._tcp.fulcrum.test", target: "t3.fulcrum.test", port: 6381, priority: 30, weight: 4000)])
            let h = DiscoveryHarness()
            let service = DNSService(base: h.base, settings: h.settings(dns), logger: h.logger)
            let source = SRVSource(service: service, name: "_redis._tcp.fulcrum.test", settings: h.settings(dns),
                                   logger: h.logger, report: h.sink)
            #expect(source.name == "srv _redis._tcp.fulcrum.test")
            source.start()
            let answer = h.next()
            guard case .snapshot(let backends, let detail) = answer else { Issue.record("\(String(describing: answer))"); return }
            // t3 has no A record: no backend with IPv4 only.
            #expect(backends.map(\.key) == ["127.0.0.51:6379", "127.0.0.52:6380", "127.0.0.53:6380"])
            #expect(backends.map(\.backend.priority) == [0, 1, 1])
            #expect(backends.map(\.backend.weight) == [5, 1, 1])
            #expect(detail == "3 SRV records, ttl 1s")
            source.stop()

            // Both families: t3's AAAA record too, as the third tier, its weight capped at 1000.
            let both = DNSService(base: h.base, settings: h.settings(dns, family: .both), logger: h.logger)
            let bothSource = SRVSource(service: both, name: "_redis._tcp.fulcrum.test", settings: h.settings(dns, family: .both),
                                       logger: h.logger, report: h.sink)
            bothSource.start()
            let all = h.next()
            guard case .snapshot(let everything, _) = all else { Issue.record("\(String(describing: all))"); return }
            #expect(everything.map(\.key) == ["127.0.0.51:6379", "127.0.0.52:6380", "127.0.0.53:6380", "[fd00::51]:6381"])
            #expect(everything.map(\.backend.priority) == [0, 1, 1, 2])
            #expect(everything.map(\.backend.weight) == [5, 1, 1, 1000])
            bothSource.stop()
        }

        @Test func withoutServersTheResolvConfServersAnswerBothSources() throws {
            let dns = try DNSServerProcess(hosts: [("127.0.0.81", "t1.fulcrum.test")],
                                           srv: [.init("_web._tcp.fulcrum.test", target: "t1.fulcrum.test", port: 8080)])
            let directory = try TemporaryDirectory()
            let path = try directory.write("resolv.conf", "search fulcrum.test\nnameserver \(dns.address)\n")
            let h = DiscoveryHarness()
            var settings = h.settings(dns)
            settings.servers = []
            let service = DNSService(base: h.base, settings: settings, logger: h.logger, resolvConf: path)
            #expect(service.servers == [dns.socketAddress] && service.serversSource == path)
            let srv = SRVSource(service: service, name: "_web._tcp.fulcrum.test", settings: settings, logger: h.logger, report: h.sink)
            srv.start()
            #expect(DiscoveryHarness.keys(h.next()) == ["127.0.0.81:8080"])
            srv.stop()
            let name = DNSNameSource(service: service, name: .init(host: "t1.fulcrum.test", port: 80), settings: settings,
                                     logger: h.logger, report: h.sink)
            name.start()
            #expect(DiscoveryHarness.keys(h.next()) == ["127.0.0.81:80"])
            name.stop()
            // The search domain is not applied: "t1" is asked as it is (and dnsmasq refuses it).
            let bare = DNSNameSource(service: service, name: .init(host: "t1", port: 80), settings: settings, logger: h.logger,
                                     report: h.sink)
            bare.start()
            #expect(h.next() == .failed("t1: server failure: refused", retryIn: .seconds(1)))
            bare.stop()
        }

        @Test func srvFollowsARestartWithOtherRecords() throws {
            let hosts = [("127.0.0.61", "t1.fulcrum.test"), ("127.0.0.62", "t2.fulcrum.test")]
            let dns = try DNSServerProcess(hosts: hosts, srv: [.init("_pg._tcp.fulcrum.test", target: "t1.fulcrum.test", port: 5432)])
            let h = DiscoveryHarness()
            let service = DNSService(base: h.base, settings: h.settings(dns), logger: h.logger)
            let source = SRVSource(service: service, name: "_pg._tcp.fulcrum.test", settings: h.settings(dns), logger: h.logger,
                                   report: h.sink)
            source.start()
            #expect(DiscoveryHarness.keys(h.next()) == ["127.0.0.61:5432"])
            try dns.restart(srv: [.init("_pg._tcp.fulcrum.test", target: "t1.fulcrum.test", port: 5433, priority: 1, weight: 10),
                                  .init("_pg._tcp.fulcrum.test", target: "t2.fulcrum.test", port: 5432, priority: 0, weight: 20)])
            let changed = h.next(DiscoveryHarness.isSnapshot(["127.0.0.62:5432", "127.0.0.61:5433"]))
            guard case .snapshot(let backends, _) = changed else { Issue.record("\(h.reports)"); return }
            #expect(backends.map(\.backend.weight) == [20, 10])
            #expect(backends.map(\.backend.priority) == [0, 1])
            source.stop()
        }

        @Test func srvFromADeadServerOrForNoSuchNameFails() throws {
            let dns = try DNSServerProcess(hosts: [("127.0.0.71", "t1.fulcrum.test")],
                                           srv: [.init("_x._tcp.fulcrum.test", target: "t1.fulcrum.test", port: 1)])
            let h = DiscoveryHarness()
            let service = DNSService(base: h.base, settings: h.settings(dns), logger: h.logger)
            let nothing = SRVSource(service: service, name: "_nope._tcp.fulcrum.test", settings: h.settings(dns),
                                    logger: h.logger, report: h.sink)
            nothing.start()
            #expect(h.next() == .failed("_nope._tcp.fulcrum.test: no such name (NXDOMAIN)", retryIn: .seconds(1)))
            nothing.stop()

            let source = SRVSource(service: service, name: "_x._tcp.fulcrum.test", settings: h.settings(dns), logger: h.logger,
                                   report: h.sink)
            source.start()
            #expect(DiscoveryHarness.keys(h.next()) == ["127.0.0.71:1"])
            dns.stop()
            let mark = h.reports.count
            let failure = h.next(after: mark, DiscoveryHarness.isFailure)
            guard case .failed(let message, let retry) = failure else { Issue.record("\(h.reports)"); return }
            // The closed port answers at once (ICMP port unreachable), on both tries.
            #expect(message == "_x._tcp.fulcrum.test: server failure: \(dns.address): Connection refused")
            #expect(retry == .seconds(1))
            #expect(h.reports.dropFirst(mark).allSatisfy(DiscoveryHarness.isFailure))
            try dns.start()
            #expect(h.next(DiscoveryHarness.isSnapshot(["127.0.0.71:1"])) != nil, "\(h.reports)")
            source.stop()
        }
    }
}
