import FulcrumCore
import Testing

private func address(_ port: UInt16) -> SocketAddress { .ipv4((10, 0, 0, 1), port: port) }

private func record(_ port: UInt16, key: String? = nil, weight: Int = 1, priority: Int = 0) -> DiscoveredBackend {
    DiscoveredBackend(key: key ?? "k\(port)",
                      backend: FulcrumConfig.Backend(address: address(port), weight: weight, priority: priority))
}

private func snapshot(_ records: [DiscoveredBackend]) -> DiscoveryReport { .snapshot(records, detail: "test") }

private let s: Microseconds = 1_000_000

/// The reconciler turns what a source reports into the pool's operations: the old set plus the new
/// records give the adds, value changes and removals; failures, empty reads and runaway registries do not
/// empty a pool.
@Suite struct DiscoveryReconcilerTests {
    @Test func aFirstReadListsEveryRecordInOrder() {
        var r = DiscoveryReconciler()
        let out = r.apply(snapshot([record(1), record(2, weight: 3)]), now: 0, limit: 100)
        #expect(out.operations == [.list(record(1).backend), .list(record(2, weight: 3).backend)])
        #expect(out.recheckAfter == nil && out.notes.isEmpty)
    }

    @Test func aNewReadAddsChangesAndRemovesOnlyWhatDiffers() {
        var r = DiscoveryReconciler()
        _ = r.apply(snapshot([record(1), record(2), record(3)]), now: 0, limit: 100)
        let out = r.apply(snapshot([record(1), record(3, weight: 5), record(4)]), now: s, limit: 100)
        #expect(out.operations == [.unlist(address(2)), .list(record(3, weight: 5).backend), .list(record(4).backend)],
                "1 is unchanged: no operation touches it")
        #expect(r.listed.keys.sorted { $0.port < $1.port } == [address(1), address(3), address(4)])
    }

    @Test func watchEventsApplyOneByOneAndTheLastDeletionToo() {
        var r = DiscoveryReconciler()
        _ = r.apply(snapshot([record(1)]), now: 0, limit: 100)
        #expect(r.apply(.put(record(2), detail: ""), now: s, limit: 100).operations == [.list(record(2).backend)])
        #expect(r.apply(.put(record(2, weight: 9), detail: ""), now: s, limit: 100).operations
                == [.list(record(2, weight: 9).backend)])
        #expect(r.apply(.delete(key: "k1", detail: ""), now: s, limit: 100).operations == [.unlist(address(1))])
        #expect(r.apply(.delete(key: "k2", detail: ""), now: s, limit: 100).operations == [.unlist(address(2))],
                "an individual deletion applies even when it is the last backend")
        #expect(r.apply(.delete(key: "k2", detail: ""), now: s, limit: 100).operations == [], "unknown key: nothing")
        #expect(r.listed.isEmpty)
    }

    @Test func aFailingSourceChangesNothingAndIsStaleUntilItAnswers() {
        var r = DiscoveryReconciler()
        _ = r.apply(snapshot([record(1), record(2)]), now: 0, limit: 100)
        #expect(r.apply(.failed("timeout", retryIn: .seconds(1)), now: s, limit: 100).operations == [])
        _ = r.apply(.failed("connection refused", retryIn: .seconds(2)), now: 2 * s, limit: 100)
        #expect(r.stale?.since == s && r.stale?.message == "connection refused")
        #expect(r.listed.count == 2)
        _ = r.apply(snapshot([record(1), record(2)]), now: 3 * s, limit: 100)
        #expect(r.stale == nil)
    }

    @Test func aReadThatWouldRemoveEverythingIsHeldUntilASecondReadConfirmsIt() {
        var r = DiscoveryReconciler(confirmAfter: .seconds(3))
        _ = r.apply(snapshot([record(1), record(2)]), now: 0, limit: 100)
        var out = r.apply(snapshot([]), now: 10 * s, limit: 100)
        #expect(out.operations == [] && out.recheckAfter == .seconds(3))
        #expect(out.notes.first?.contains("held back") == true)
        // Too soon: still held.
        out = r.apply(snapshot([]), now: 11 * s, limit: 100)
        #expect(out.operations == [] && out.recheckAfter == .seconds(2))
        // Confirmed by a read 3 s after the first.
        out = r.apply(snapshot([]), now: 13 * s, limit: 100)
        #expect(out.operations == [.unlist(address(1)), .unlist(address(2))])
        #expect(out.notes.first?.contains("confirms") == true && r.heldSince == nil)
    }

    @Test func aReplacementOfEveryBackendAddsTheNewAtOnceAndDrainsTheOldOnlyWhenConfirmed() {
        var r = DiscoveryReconciler(confirmAfter: .seconds(3))
        _ = r.apply(snapshot([record(1)]), now: 0, limit: 100)
        var out = r.apply(snapshot([record(5)]), now: s, limit: 100)
        #expect(out.operations == [.list(record(5).backend)], "the new one is added; the old one stays")
        out = r.apply(snapshot([record(5)]), now: 4 * s, limit: 100)
        #expect(out.operations == [.unlist(address(1))])
    }

    @Test func aHeldRemovalIsDroppedWhenTheSourceListsTheBackendsAgain() {
        var r = DiscoveryReconciler(confirmAfter: .seconds(3))
        _ = r.apply(snapshot([record(1), record(2)]), now: 0, limit: 100)
        _ = r.apply(snapshot([]), now: s, limit: 100)
        let out = r.apply(snapshot([record(1), record(2)]), now: 2 * s, limit: 100)
        #expect(out.operations == [] && r.heldSince == nil && r.held.isEmpty)
        // A later partial removal applies at once: it does not remove everything.
        #expect(r.apply(snapshot([record(1)]), now: 3 * s, limit: 100).operations == [.unlist(address(2))])
    }

    @Test func anEmptyFirstReadListsNothingAndHoldsNothing() {
        var r = DiscoveryReconciler()
        let out = r.apply(snapshot([]), now: 0, limit: 100)
        #expect(out.operations == [] && out.recheckAfter == nil && r.heldSince == nil)
    }

    @Test func recordsBeyondTheLimitAreIgnoredAndCounted() {
        var r = DiscoveryReconciler()
        let out = r.apply(snapshot((1...5).map { record(UInt16($0)) }), now: 0, limit: 3)
        #expect(out.operations == (1...3).map { .list(record(UInt16($0)).backend) })
        #expect(r.ignored == 2 && out.notes.contains { $0.contains("ignored 2 record(s) beyond max_backends") })
        // Room frees up: the next record in line is listed.
        let next = r.apply(.delete(key: "k1", detail: ""), now: s, limit: 3)
        #expect(next.operations == [.unlist(address(1)), .list(record(4).backend)])
    }

    @Test func twoRecordsWithOneAddressMakeOneBackend() {
        var r = DiscoveryReconciler()
        let out = r.apply(snapshot([record(1, key: "a", weight: 2), record(1, key: "b", weight: 7)]), now: 0, limit: 100)
        #expect(out.operations == [.list(record(1, weight: 2).backend)])
        // The first record goes: the second one's values take over.
        #expect(r.apply(.delete(key: "a", detail: ""), now: s, limit: 100).operations == [.list(record(1, weight: 7).backend)])
    }

    @Test func aMalformedRecordKeepsItsLastGoodValue() {
        var r = DiscoveryReconciler()
        _ = r.apply(snapshot([record(1), record(2)]), now: 0, limit: 100)
        let note = r.apply(.invalid(key: "k2", message: "weight: 'x' is not a number"), now: s, limit: 100)
        #expect(note.operations == [] && note.notes.first?.contains("k2") == true)
        // A re-read lists it with its last good value (as the source keeps it): nothing changes.
        #expect(r.apply(snapshot([record(1), record(2)]), now: 2 * s, limit: 100).operations == [])
        #expect(r.listed[address(2)] != nil && r.invalid["k2"] != nil)
        // A good value again clears it.
        #expect(r.apply(.put(record(2, weight: 4), detail: ""), now: 3 * s, limit: 100).operations
                == [.list(record(2, weight: 4).backend)])
        #expect(r.invalid.isEmpty)
        // Malformed again, then gone from a re-read: gone.
        _ = r.apply(.invalid(key: "k2", message: "bad"), now: 4 * s, limit: 100)
        #expect(r.apply(snapshot([record(1)]), now: 5 * s, limit: 100).operations == [.unlist(address(2))])
        #expect(r.invalid.isEmpty)
    }
}

/// Several listings (the file and discovery sources) share a pool's backends.
@Suite struct LivePoolListingTests {
    private func pool(_ backends: [FulcrumConfig.Backend]) -> LivePool {
        LivePool(index: 0, pool: FulcrumConfig.Pool(name: "p", backends: backends), workers: 1)
    }

    @Test func aBackendStaysListedWhileAnyListingHasIt() {
        var p = pool([FulcrumConfig.Backend(address: address(1), weight: 2)])
        _ = p.list(FulcrumConfig.Backend(address: address(1), weight: 5), by: "dns a")
        _ = p.list(FulcrumConfig.Backend(address: address(1), weight: 7), by: "dns b")
        #expect(p.backend(address(1))?.base.weight == 2 && p.backend(address(1))?.baseSource == .file,
                "the file's values win")
        // The file drops it: the first discovery listing's values take over, it stays listed.
        p.apply(file: FulcrumConfig.Pool(name: "p", backends: []))
        #expect(p.backend(address(1))?.listed == true && p.backend(address(1))?.base.weight == 5)
        #expect(p.backend(address(1))?.baseSource == .discovery)
        #expect(p.unlist(address(1), by: "dns a") == false)
        #expect(p.backend(address(1))?.base.weight == 7)
        #expect(p.unlist(address(1), by: "dns b") == true)
        #expect(p.backend(address(1))?.listed == false && p.order.isEmpty)
    }

    @Test func discoveredBackendsAreCountedApartFromTheFiles() {
        var p = pool([FulcrumConfig.Backend(address: address(1))])
        _ = p.list(FulcrumConfig.Backend(address: address(2)), by: "etcd /x/")
        _ = p.list(FulcrumConfig.Backend(address: address(1)), by: "etcd /x/")
        #expect(p.discoveredCount == 1, "a backend the file lists is not counted against max_backends")
    }
}
