import EventLoop
@testable import Fulcrum
import FulcrumCore
import FulcrumTestSupport
import Foundation
import Logging
import Testing

/// An `EtcdSource` on its own loop thread, its reports collected with the time they came.
final class EtcdSourceHarness: @unchecked Sendable {
    struct Entry {
        let report: DiscoveryReport
        let at: Date
    }

    private let lock = NSCondition()
    private var entries: [Entry] = []
    private let pipe: WakeupPipe
    private var thread: LoopThread?
    static let refresh: UInt8 = 1
    static let stop: UInt8 = 2

    init(endpoints: [String], prefix: String, timing: EtcdSource.Timing) throws {
        pipe = try WakeupPipe()
        let settings = FulcrumConfig.Discovery.Etcd(endpoints: endpoints.map { try! Etcd.endpoint($0).get() }, prefix: prefix)
        let pipe = self.pipe
        thread = LoopThread.spawn(name: "etcd-source") { [self] in
            let base = EventBase()
            var source: EtcdSource? = EtcdSource(base: base, settings: settings, logger: Logger(label: "etcd-test"),
                                                 timing: timing) { [self] report in
                lock.withLock {
                    entries.append(Entry(report: report, at: Date()))
                    lock.broadcast()
                }
            }
            #expect(source?.name == "etcd \(prefix)")
            let receiver = WakeupReceiver(base: base, pipe: pipe) { command in
                if command == Self.refresh { source?.refresh() }
                if command == Self.stop {
                    source?.stop()
                    source = nil
                    base.exit()
                }
            }
            source?.start()
            base.run()
            withExtendedLifetime(receiver) {}
        }
    }

    deinit { stop() }

    var reports: [DiscoveryReport] { lock.withLock { entries.map(\.report) } }
    var all: [Entry] { lock.withLock { entries } }

    func refresh() { pipe.sender.send(Self.refresh) }

    func stop() {
        guard let thread else { return }
        pipe.sender.send(Self.stop)
        thread.join()
        self.thread = nil
    }

    /// Waits until `condition` holds for the reports so far; returns them.
    @discardableResult
    func waitFor(_ what: String, timeout: Double = 15, _ condition: ([DiscoveryReport]) -> Bool) throws -> [DiscoveryReport] {
        let deadline = Date().addingTimeInterval(timeout)
        lock.lock()
        defer { lock.unlock() }
        while true {
            let reports = entries.map(\.report)
            if condition(reports) { return reports }
            if !lock.wait(until: deadline) {
                throw TestSocketError("no \(what) within \(timeout)s; reports:\n" + reports.map { "  \($0)" }.joined(separator: "\n"), errno: 0)
            }
        }
    }

    /// Waits for `count` more reports after the first `after`.
    func reports(after: Int, count: Int, timeout: Double = 15) throws -> [DiscoveryReport] {
        Array(try waitFor("\(count) reports after the first \(after)", timeout: timeout) { $0.count >= after + count }[after..<(after + count)])
    }
}

extension DiscoveryReport {
    var isFailed: Bool { if case .failed = self { true } else { false } }

    /// A snapshot's keys and details.
    var snapshot: (keys: [String: FulcrumConfig.Backend], detail: String)? {
        guard case .snapshot(let entries, let detail) = self else { return nil }
        return (Dictionary(uniqueKeysWithValues: entries.map { ($0.key, $0.backend) }), detail)
    }
}

func record(_ address: String, weight: Int = 1) -> String { #"{"address":"\#(address)","weight":\#(weight)}"# }

func backend(_ address: String, weight: Int = 1) -> FulcrumConfig.Backend {
    FulcrumConfig.Backend(address: try! ConfigValue.address(address).get(), weight: weight)
}

extension Integration {
    @Suite(.timeLimit(.minutes(2)))
    struct EtcdSourceTests {
        static let prefix = "/fulcrum/pools/redis/"
        static let quick = EtcdSource.Timing(requestTimeout: .seconds(1), silence: .seconds(1),
                                             firstRetry: .milliseconds(200), maxRetry: .seconds(1))

        @Test func reportsTheSnapshotThenEveryChangeInOrderOnceEach() throws {
            let etcd = try EtcdProcess()
            try etcd.put(Self.prefix + "a", record("10.0.0.1:6379"))
            try etcd.put(Self.prefix + "b", record("10.0.0.2:6379", weight: 3))
            // Outside the prefix, though its text starts the same.
            try etcd.put("/fulcrum/pools/redis2/x", record("10.0.0.9:6379"))
            let revision = try etcd.revision()
            let source = try EtcdSourceHarness(endpoints: [etcd.url], prefix: Self.prefix, timing: Self.quick)
            defer { source.stop() }
            let first = try source.reports(after: 0, count: 1)[0]
            #expect(first.snapshot?.keys == [Self.prefix + "a": backend("10.0.0.1:6379"), Self.prefix + "b": backend("10.0.0.2:6379", weight: 3)])
            #expect(first.snapshot?.detail == "revision \(revision)")

            let putC = try etcd.put(Self.prefix + "c", record("10.0.0.3:6379"))
            let reweigh = try etcd.put(Self.prefix + "a", record("10.0.0.1:6379", weight: 5))
            try etcd.put("/fulcrum/pools/redis2/y", record("10.0.0.8:6379"))
            let deleteB = try etcd.delete(Self.prefix + "b")
            let changes = try source.reports(after: 1, count: 3)
            #expect(changes == [
                .put(DiscoveredBackend(key: Self.prefix + "c", backend: backend("10.0.0.3:6379")), detail: "revision \(putC)"),
                .put(DiscoveredBackend(key: Self.prefix + "a", backend: backend("10.0.0.1:6379", weight: 5)), detail: "revision \(reweigh)"),
                .delete(key: Self.prefix + "b", detail: "revision \(deleteB)"),
            ])
            // A quiet watch stays up: the liveness check answers, nothing is reported, nothing repeats.
            Thread.sleep(forTimeInterval: 2.5)
            #expect(source.reports.count == 4, "\(source.reports)")

            // A refresh reads the whole prefix again and keeps watching from there, without repeats.
            source.refresh()
            let again = try source.reports(after: 4, count: 1)[0]
            #expect(again.snapshot?.keys == [Self.prefix + "a": backend("10.0.0.1:6379", weight: 5), Self.prefix + "c": backend("10.0.0.3:6379")])
            let deleteA = try etcd.delete(Self.prefix + "a")
            #expect(try source.reports(after: 5, count: 1) == [.delete(key: Self.prefix + "a", detail: "revision \(deleteA)")])

            // Nothing after stop.
            source.stop()
            try etcd.put(Self.prefix + "d", record("10.0.0.4:6379"))
            Thread.sleep(forTimeInterval: 0.3)
            #expect(source.reports.count == 6)
        }

        @Test func invalidValuesAreReportedByKeyAndTheRestApplied() throws {
            let etcd = try EtcdProcess()
            try etcd.put(Self.prefix + "good", record("10.0.0.1:6379"))
            try etcd.put(Self.prefix + "text", "10.0.0.2:6379")
            try etcd.put(Self.prefix + "heavy", record("10.0.0.3:6379", weight: 0))
            let source = try EtcdSourceHarness(endpoints: [etcd.url], prefix: Self.prefix, timing: Self.quick)
            defer { source.stop() }
            let start = try source.reports(after: 0, count: 3)
            #expect(start[0].snapshot?.keys == [Self.prefix + "good": backend("10.0.0.1:6379")])
            guard case .invalid(let heavyKey, let heavy) = start[1], case .invalid(let textKey, let text) = start[2] else {
                Issue.record("no invalid reports: \(start)")
                return
            }
            #expect(heavyKey == Self.prefix + "heavy")
            #expect(heavy.hasPrefix("etcd key /fulcrum/pools/redis/heavy: \"weight\" 0 is out of range; use 1 to 1000"))
            #expect(textKey == Self.prefix + "text")
            #expect(text.hasPrefix("etcd key /fulcrum/pools/redis/text: the value is not JSON"))

            // A good key given a bad value: reported, its last good value kept; then fixed.
            try etcd.put(Self.prefix + "good", #"{"address":"10.0.0.1:6379","wieght":2}"#)
            let fixed = try etcd.put(Self.prefix + "good", record("10.0.0.1:6379", weight: 2))
            let changes = try source.reports(after: 3, count: 2)
            #expect(changes[0] == .invalid(key: Self.prefix + "good",
                                           message: "etcd key /fulcrum/pools/redis/good: unknown field 'wieght'; did you mean 'weight'? the fields are address, weight, priority, state, max_connections"))
            #expect(changes[1] == .put(DiscoveredBackend(key: Self.prefix + "good", backend: backend("10.0.0.1:6379", weight: 2)),
                                       detail: "revision \(fixed)"))
            // A re-read keeps the last good value of a key whose value is bad.
            try etcd.put(Self.prefix + "good", "{")
            _ = try source.reports(after: 5, count: 1)
            source.refresh()
            let reread = try source.waitFor("a re-read") { $0.dropFirst(6).contains { $0.snapshot != nil } }
            #expect(reread.dropFirst(6).first { $0.snapshot != nil }?.snapshot?.keys == [Self.prefix + "good": backend("10.0.0.1:6379", weight: 2)])
        }

        @Test func aRestartedEtcdIsReportedFailedThenTheWatchResumesAndCatchesUpWithoutAReread() throws {
            let etcd = try EtcdProcess()
            try etcd.put(Self.prefix + "a", record("10.0.0.1:6379"))
            try etcd.put(Self.prefix + "b", record("10.0.0.2:6379"))
            // Retries 1.5s, then 3s apart: the changes below are made well before the watch comes back.
            let slow = EtcdSource.Timing(requestTimeout: .seconds(1), silence: .seconds(5), firstRetry: .milliseconds(1500), maxRetry: .seconds(3))
            let source = try EtcdSourceHarness(endpoints: [etcd.url], prefix: Self.prefix, timing: slow)
            defer { source.stop() }
            _ = try source.reports(after: 0, count: 1)

            etcd.stop()
            try source.waitFor("two failures") { $0.filter(\.isFailed).count >= 2 }
            guard case .failed(let message, let retryIn) = source.reports.first(where: \.isFailed) else { return }
            #expect(message.contains("the watch on \(etcd.url) ended"), "\(message)")
            #expect(message.contains("resuming the watch from revision"))
            #expect(retryIn == .milliseconds(1500))
            try etcd.start()
            let putC = try etcd.put(Self.prefix + "c", record("10.0.0.3:6379"))
            let deleteA = try etcd.delete(Self.prefix + "a")
            let changed = Date()
            let reports = try source.waitFor("the changes made while the watch was down") { reports in
                reports.contains { if case .delete(Self.prefix + "a", _) = $0 { true } else { false } }
            }
            let afterOutage = reports.drop { !$0.isFailed }.drop(while: \.isFailed)
            // Back: the set as it was reported (no read), then the changes, caught up from the revision.
            #expect(Array(afterOutage) == [
                .snapshot([DiscoveredBackend(key: Self.prefix + "a", backend: backend("10.0.0.1:6379")),
                           DiscoveredBackend(key: Self.prefix + "b", backend: backend("10.0.0.2:6379"))],
                          detail: "revision \(putC - 1), watch resumed"),
                .put(DiscoveredBackend(key: Self.prefix + "c", backend: backend("10.0.0.3:6379")), detail: "revision \(putC)"),
                .delete(key: Self.prefix + "a", detail: "revision \(deleteA)"),
            ])
            let resumedAt = source.all.first { $0.report.snapshot?.detail.hasSuffix("watch resumed") == true }?.at
            #expect(resumedAt.map { $0 > changed } == true, "the watch came back after the changes: they were caught up")
        }

        @Test func aCompactionWhileTheWatchIsDownLeadsToAFullRead() throws {
            let etcd = try EtcdProcess()
            try etcd.put(Self.prefix + "a", record("10.0.0.1:6379"))
            let slow = EtcdSource.Timing(requestTimeout: .seconds(1), silence: .seconds(5), firstRetry: .milliseconds(1500), maxRetry: .seconds(3))
            let source = try EtcdSourceHarness(endpoints: [etcd.url], prefix: Self.prefix, timing: slow)
            defer { source.stop() }
            _ = try source.reports(after: 0, count: 1)
            etcd.stop()
            try source.waitFor("two failures") { $0.filter(\.isFailed).count >= 2 }
            try etcd.start()
            try etcd.put(Self.prefix + "b", record("10.0.0.2:6379"))
            try etcd.delete(Self.prefix + "a")
            let latest = try etcd.put(Self.prefix + "c", record("10.0.0.3:6379"))
            try etcd.compact(latest)
            let reports = try source.waitFor("a snapshot read after the compaction") { reports in
                reports.contains { $0.snapshot?.detail == "revision \(latest)" }
            }
            let read = reports.first { $0.snapshot?.detail == "revision \(latest)" }?.snapshot
            #expect(read?.keys == [Self.prefix + "b": backend("10.0.0.2:6379"), Self.prefix + "c": backend("10.0.0.3:6379")])
            #expect(!reports.contains { if case .put = $0 { true } else if case .delete = $0 { true } else { false } },
                    "compacted changes are not events")
            // And the watch goes on from the read.
            let putD = try etcd.put(Self.prefix + "d", record("10.0.0.4:6379"))
            try source.waitFor("the put after the read") { $0.last == .put(DiscoveredBackend(key: Self.prefix + "d", backend: backend("10.0.0.4:6379")), detail: "revision \(putD)") }
        }

        @Test func aHungEtcdIsNoticedByTheLivenessCheckAndTheNextEndpointIsTried() throws {
            let etcd = try EtcdProcess()
            try etcd.put(Self.prefix + "a", record("10.0.0.1:6379"))
            let dead = "http://127.0.0.1:\(try freePort())"
            let source = try EtcdSourceHarness(endpoints: [dead, etcd.url], prefix: Self.prefix, timing: Self.quick)
            defer { source.stop() }
            // The first endpoint refuses: the second answers.
            let start = try source.waitFor("a snapshot") { $0.contains { $0.snapshot != nil } }
            guard case .failed(let refused, _) = start[0] else { Issue.record("\(start)"); return }
            #expect(refused.hasPrefix("cannot read the prefix from etcd at \(dead): cannot connect to 127.0.0.1:"), "\(refused)")
            #expect(refused.hasSuffix("; reading again in 200ms on \(etcd.url)"), "\(refused)")
            // The watch runs: a change comes through it.
            let putA = try etcd.put(Self.prefix + "a", record("10.0.0.1:6379", weight: 2))
            let count = try source.waitFor("the watch") {
                $0.last == .put(DiscoveredBackend(key: Self.prefix + "a", backend: backend("10.0.0.1:6379", weight: 2)), detail: "revision \(putA)")
            }.count

            etcd.pause()
            defer { etcd.resume() }
            // Silent for 1s, then no answer to the liveness check within 1s.
            let failed = try source.waitFor("a failure", timeout: 10) { $0.dropFirst(count).contains(where: \.isFailed) }
            guard case .failed(let hung, _) = failed.dropFirst(count).first(where: \.isFailed) else { return }
            #expect(hung.contains("etcd did not answer a liveness check"), "\(hung)")
            etcd.resume()
            let putB = try etcd.put(Self.prefix + "b", record("10.0.0.2:6379"))
            try source.waitFor("the watch back", timeout: 20) {
                $0.last == .put(DiscoveredBackend(key: Self.prefix + "b", backend: backend("10.0.0.2:6379")), detail: "revision \(putB)")
            }
        }
    }
}
