import FulcrumCore
import Testing

private func address(_ port: UInt16) -> SocketAddress { .ipv4((127, 0, 0, 1), port: port) }

private func backend(_ port: UInt16, weight: Int = 1, priority: Int = 0) -> FulcrumConfig.Backend {
    FulcrumConfig.Backend(address: address(port), weight: weight, priority: priority)
}

/// Pool `app` listing `backends` in this order, as a file would.
private func file(_ backends: [FulcrumConfig.Backend], balance: BalanceStrategy = .roundRobin) -> FulcrumConfig.Pool {
    FulcrumConfig.Pool(name: "app", backends: backends, balance: balance)
}

@Suite struct LivePoolTests {
    @Test func slotsStayWithTheirAddressAcrossRemovalReAddingAndReordering() {
        var pool = LivePool(index: 0, pool: file([backend(9001), backend(9002), backend(9003)]), workers: 2)
        #expect([9001, 9002, 9003].map { pool.slot(of: address($0)) } == [0, 1, 2])
        // 9002 leaves, the others swap places: nobody moves slot.
        pool.apply(file: file([backend(9003), backend(9001)]))
        #expect([9001, 9002, 9003].map { pool.slot(of: address($0)) } == [0, 1, 2])
        #expect(pool.order == [2, 0])
        // 9002 comes back first in the file, and a new address takes the next slot, never a freed one.
        pool.apply(file: file([backend(9002), backend(9004), backend(9003), backend(9001)]))
        #expect([9001, 9002, 9003, 9004].map { pool.slot(of: address($0)) } == [0, 1, 2, 3])
        #expect(pool.order == [1, 3, 2, 0])
        #expect(pool.backends.map(\.id) == [9001, 9002, 9003, 9004].map { BackendID(pool: "app", address: address($0)) })
    }

    @Test func adminOverridesSurviveReloadsAndShowTheirSourceUntilCleared() {
        var pool = LivePool(index: 0, pool: file([backend(9001, weight: 2), backend(9002)]), workers: 1)
        let set = (pool.setWeight(address(9001), 7), pool.setOperatorState(address(9002), .drain))
        let unknown = pool.setWeight(address(9999), 3)
        #expect(set == (true, true))
        #expect(!unknown, "an unknown backend has nothing to override")
        // The file changes both backends' base values; the overrides still win.
        pool.apply(file: file([backend(9001, weight: 3, priority: 1), backend(9002, weight: 4)]))
        let a = pool.backend(address(9001))!, b = pool.backend(address(9002))!
        #expect(a.base.weight == 3 && a.effective.weight == 7 && a.effective.priority == 1)
        #expect(a.source(of: "weight") == .admin && a.source(of: "priority") == .file && a.source(of: "state") == .file)
        #expect(b.effective.state == .drain && b.effective.weight == 4)
        #expect(b.source(of: "state") == .admin && b.source(of: "weight") == .file)
        // Removed and listed again: the override is still there.
        pool.apply(file: file([backend(9001, weight: 3)]))
        pool.apply(file: file([backend(9001, weight: 3), backend(9002, weight: 4)]))
        #expect(pool.backend(address(9002))!.effective.state == .drain)
        // Cleared through the admin API: the file's value, from the file.
        pool.setWeight(address(9001), nil)
        pool.setOperatorState(address(9002), nil)
        #expect(pool.backend(address(9001))!.effective.weight == 3 && pool.backend(address(9001))!.source(of: "weight") == .file)
        #expect(pool.backend(address(9002))!.effective.state == .enabled && pool.backend(address(9002))!.source(of: "state") == .file)
    }

    @Test func aRemovedBackendKeepsItsSlotAndStateAndLeavesTheOrder() {
        var pool = LivePool(index: 0, pool: file([backend(9001), backend(9002)]), workers: 2)
        pool.checked(slot: 1, .down, reason: "connect refused")
        let opened = BreakerReport(state: .open, since: 5_000_000, reason: "connect timeout")
        pool.breakerChanged(slot: 1, worker: 1, opened)
        pool.apply(file: file([backend(9001)]))
        #expect(pool.order == [0] && pool.listed.map(\.slot) == [0])
        let gone = pool.backend(address(9002))!
        #expect(!gone.listed && gone.slot == 1)
        #expect(gone.check == .down && gone.checkReason == "connect refused")
        #expect(gone.breakers == [.closed, opened])
        let removedAgain = pool.remove(address(9002))
        #expect(!removedAgain, "removing a backend that is not listed changes nothing")
        // Back in the file: same slot, and what was known about it carries on.
        pool.apply(file: file([backend(9001), backend(9002)]))
        let back = pool.backend(address(9002))!
        #expect(back.listed && back.slot == 1 && back.check == .down && back.breakers == [.closed, opened])
        #expect(pool.order == [0, 1])
    }

    /// The file removes only what the file listed: a backend another source (discovery) listed stays,
    /// keeping its place after the file's backends.
    @Test func aFileReloadLeavesBackendsOfOtherSourcesAlone() {
        var pool = LivePool(index: 0, pool: file([backend(9001)]), workers: 1)
        let discovered = pool.add(backend(9100), source: .discovery)
        #expect(discovered == 1 && pool.order == [0, 1])
        pool.apply(file: file([backend(9002)]))
        #expect(pool.backend(address(9100))?.listed == true && pool.backend(address(9100))?.baseSource == .discovery)
        #expect(pool.backend(address(9001))?.listed == false)
        #expect(pool.order == [2, 1], "the file's backends first, then the discovered one")
    }

    /// A backend listed again while its connections still drain is the same backend; once they have all
    /// ended it comes back as a new incarnation, with nothing of what was known about it.
    @Test func aBackendGoneForGoodComesBackAsANewIncarnation() {
        var pool = LivePool(index: 0, pool: file([backend(9001), backend(9002)]), workers: 2)
        pool.checked(slot: 1, .down, reason: "connect refused")
        pool.breakerChanged(slot: 1, worker: 0, BreakerReport(state: .open, since: 5, reason: "connect refused"))
        pool.apply(file: file([backend(9001)]))
        pool.apply(file: file([backend(9001), backend(9002)])) { _ in false }
        var b = pool.backend(address(9002))!
        #expect(b.incarnation == 0 && b.check == .down && b.breaker.open == 1, "still draining: the same backend")
        pool.apply(file: file([backend(9001)]))
        pool.apply(file: file([backend(9001), backend(9002)])) { slot in slot == 1 }
        b = pool.backend(address(9002))!
        #expect(b.incarnation == 1 && b.check == .unknown && b.checkReason == nil && b.breaker.isClosed)
        #expect(pool.snapshot().slots[1].incarnation == 1)
        #expect(pool.backend(address(9001))!.incarnation == 0, "a backend that stayed listed is not touched")
    }

    @Test func aSnapshotCarriesEffectiveValuesEverySlotAndTheOrder() {
        var pool = LivePool(index: 3, pool: file([backend(9001), backend(9002, weight: 2), backend(9003)],
                                                 balance: .first), workers: 1)
        pool.setWeight(address(9003), 9)
        pool.setOperatorState(address(9001), .disabled)
        pool.apply(file: file([backend(9003), backend(9001, weight: 5)], balance: .first))
        let snapshot = pool.snapshot()
        #expect(snapshot.index == 3)
        #expect(snapshot.order == [2, 0])
        #expect(snapshot.settings.balance == .first)
        // The workers' backend list: listed backends only, in order, with the overrides applied.
        #expect(snapshot.settings.backends.map(\.address) == [address(9003), address(9001)])
        #expect(snapshot.settings.backends.map(\.weight) == [9, 5])
        #expect(snapshot.settings.backends.map(\.state) == [.enabled, .disabled])
        // Every slot, removed ones included, by slot number.
        #expect(snapshot.slots.map(\.address) == [address(9001), address(9002), address(9003)])
        #expect(snapshot.slots.map(\.listed) == [true, false, true])
        #expect(snapshot.slots[2].backend.weight == 9 && snapshot.slots[1].backend.weight == 2)
    }

    /// Slots are never reused, so a pool can see `maxSlots` distinct addresses over the process's life; past
    /// that, adding fails (and a reload names what it could not add) while known addresses still come back.
    @Test func aPoolHasAtMostMaxSlotsDistinctBackends() {
        func distinct(_ i: Int) -> FulcrumConfig.Backend {
            FulcrumConfig.Backend(address: .ipv4((10, UInt8(i >> 16), UInt8((i >> 8) & 255), UInt8(i & 255)), port: 9000))
        }
        var pool = LivePool(index: 0, pool: file([distinct(0)]), workers: 1)
        var slots: [Int?] = []
        for i in 1..<LivePool.maxSlots { slots.append(pool.add(distinct(i), source: .file)) }
        #expect(slots == (1..<LivePool.maxSlots).map { $0 })
        #expect(pool.backends.count == LivePool.maxSlots)
        let beyond = pool.add(distinct(LivePool.maxSlots), source: .file)
        #expect(beyond == nil)
        // A reload listing one known and one new address: the new one is reported, the known one is listed.
        let failed = pool.apply(file: file([distinct(LivePool.maxSlots), distinct(5)]))
        #expect(failed == [distinct(LivePool.maxSlots).address])
        #expect(pool.order == [5])
        #expect(pool.backends.count == LivePool.maxSlots)
    }

    @Test func breakerSummaryCountsWorkersAndNamesTheLatestReason() {
        let one = BreakerSummary([BreakerReport(state: .open, since: 5, reason: "connect refused"), .closed])
        #expect(one.description == "open on 1 of 2 workers: connect refused")
        #expect(one.open == 1 && one.halfOpen == 0 && one.since == 5 && !one.isClosed)
        let mixed = BreakerSummary([
            BreakerReport(state: .open, since: 9, reason: "connect timeout"),
            BreakerReport(state: .halfOpen, since: 4, reason: "connect refused"),
            .closed,
        ])
        #expect(mixed.description == "open on 1 of 3 workers, half-open on 1 of 3 workers: connect timeout")
        #expect(mixed.since == 4)
        let closed = BreakerSummary([.closed, .closed])
        #expect(closed.isClosed && closed.description == "closed on all 2 workers" && closed.since == nil)
        // Through the live pool: a worker's report shows in the backend's summary.
        var pool = LivePool(index: 0, pool: file([backend(9001)]), workers: 2)
        pool.breakerChanged(slot: 0, worker: 0, BreakerReport(state: .open, since: 7, reason: "connect refused"))
        pool.breakerChanged(slot: 0, worker: 5, BreakerReport(state: .open, since: 7, reason: "ignored"))
        #expect(pool.backends[0].breaker.description == "open on 1 of 2 workers: connect refused")
    }
}

@Suite struct BreakerSettingsReplacementTests {
    /// A reload that changes `breaker` keeps an open breaker open until its ejection ends, and its ejection
    /// history: the next ejection is the doubled one, of the new base.
    @Test func replacingSettingsKeepsAnOpenBreakerAndItsHistory() {
        var breaker = CircuitBreaker(settings: .init(consecutiveFailures: 2, baseEjection: .seconds(10), jitter: 0),
                                     random: FastRandom(seed: 1))
        breaker.record(.connectRefused, trial: false, now: 0)
        breaker.record(.connectRefused, trial: false, now: 0)
        #expect(breaker.state == .open(until: 10_000_000) && breaker.ejections == 1)
        breaker.replaceSettings(.init(consecutiveFailures: 5, window: .seconds(30), baseEjection: .seconds(20), jitter: 0))
        #expect(breaker.state == .open(until: 10_000_000) && breaker.ejections == 1)
        #expect(breaker.settings.consecutiveFailures == 5)
        let early = breaker.admit(now: 9_999_999)
        let due = breaker.admit(now: 10_000_000)
        #expect(!early && due && breaker.state == .halfOpen)
        breaker.record(.connectTimeout, trial: true, now: 10_000_000)
        // Second ejection: 20s × 2.
        #expect(breaker.state == .open(until: 50_000_000) && breaker.ejections == 2)
    }
}
