import FulcrumCore
import Testing

@Suite struct PoolBalancerTests {
    @Test func backupsServeOnlyWhenNoPrimaryIsEligibleAndHandBack() {
        let pool = makePool(.roundRobin, weights: [1, 1, 1], priorities: [0, 0, 1])
        #expect(Set(pool.distribution(100, count: 3).enumerated().filter { $0.element > 0 }.map(\.offset)) == [0, 1])
        pool.setEligible(0, false, now: 0)
        pool.setEligible(1, false, now: 0)
        #expect(pool.distribution(10, count: 3) == [0, 0, 10])
        pool.setEligible(1, true, now: 0)
        #expect(pool.distribution(10, count: 3) == [0, 10, 0])
    }

    @Test func retrySpillsToBackupsOnlyAfterEveryPrimaryWasTried() {
        let pool = makePool(.roundRobin, weights: [1, 1, 1], priorities: [0, 0, 1])
        var tried = TriedBackends()
        tried.insert(0)
        #expect(pool.pickAndRelease(tried: tried) == 1)
        tried.insert(1)
        #expect(pool.pickAndRelease(tried: tried) == 2)
        tried.insert(2)
        #expect(pool.pick(tried: tried) == .unavailable)
    }

    @Test func fullBackendsAreSkippedAndAFullPoolSaysSo() {
        let pool = makePool(.roundRobin, weights: [1, 1], limits: [1, 2])
        let held = (0..<3).map { _ in pool.hold()! }
        #expect(held.sorted() == [0, 1, 1])
        #expect(pool.pick(tried: TriedBackends()) == .full)
        pool.release(1)
        #expect(pool.hold() == 1)
    }

    @Test func backendsAddedAtRuntimeGetCountersThatHoldLimitsAcrossWorkers() {
        let shared = SharedBackendCounters(capacity: 1)
        let backends = [PoolBalancer.Backend(weight: 1, maxConnections: 1)]
        let a = PoolBalancer(backends: backends, shared: shared) { RoundRobinStrategy(table: $0) }
        let b = PoolBalancer(backends: backends, shared: shared) { RoundRobinStrategy(table: $0) }
        let first = shared.address(of: 0)
        for _ in 1..<200 {
            a.add(PoolBalancer.Backend(weight: 1, maxConnections: 1), now: 0)
            b.add(PoolBalancer.Backend(weight: 1, maxConnections: 1), now: 0)
        }
        #expect(shared.address(of: 0) == first, "growing the pool moved a counter")
        // 200 backends with one slot each: 200 holds across both workers, then full.
        var held: [Int] = []
        for i in 0..<200 { if let backend = (i % 2 == 0 ? a : b).hold() { held.append(backend) } }
        #expect(Set(held).count == 200 && shared.total == 200)
        #expect(a.pick(tried: TriedBackends()) == .full && b.pick(tried: TriedBackends()) == .full)
        #expect((0..<200).allSatisfy { shared.count($0) == 1 })
    }

    @Test func countersStayPutWhileAnotherThreadGrowsThePool() async {
        let shared = SharedBackendCounters(capacity: 64)
        let addresses = (0..<64).map { shared.address(of: $0) }
        await withTaskGroup(of: Void.self) { group in
            group.addTask {
                for count in stride(from: 65, through: 20_000, by: 37) { shared.ensureCapacity(count) }
            }
            group.addTask {
                for round in 0..<20_000 {
                    let backend = round % 64
                    if shared.tryAcquire(backend, limit: 2) { shared.release(backend) }
                }
            }
        }
        #expect((0..<64).allSatisfy { shared.address(of: $0) == addresses[$0] && shared.count($0) == 0 })
        #expect(shared.total == 0)
        shared.ensureCapacity(SharedBackendCounters.maxBackends)
        #expect(shared.count(SharedBackendCounters.maxBackends - 1) == 0)
    }

    @Test func limitsHoldAcrossWorkersSharingCounters() {
        let shared = SharedBackendCounters(capacity: 1)
        let backends = [PoolBalancer.Backend(weight: 1, maxConnections: 3)]
        let a = PoolBalancer(backends: backends, shared: shared) { RoundRobinStrategy(table: $0) }
        let b = PoolBalancer(backends: backends, shared: shared) { RoundRobinStrategy(table: $0) }
        #expect(a.hold() == 0 && b.hold() == 0 && a.hold() == 0)
        #expect(b.pick(tried: TriedBackends()) == .full)
        a.release(0)
        #expect(b.hold() == 0)
    }

    @Test func slowStartRampsFromTenPercentToFull() {
        #expect(PoolBalancer.slowStartFactor(elapsed: 0, window: 30_000_000) == 0.1)
        #expect(abs(PoolBalancer.slowStartFactor(elapsed: 15_000_000, window: 30_000_000) - 0.55) < 1e-9)
        #expect(PoolBalancer.slowStartFactor(elapsed: 30_000_000, window: 30_000_000) == 1)

        let pool = makePool(.roundRobin, weights: [1, 1], slowStart: .seconds(30))
        #expect(!pool.ramping)
        pool.setEligible(1, false, now: 0)
        pool.setEligible(1, true, now: 0)
        #expect(pool.ramping)
        #expect(pool.table.effectiveWeight == [100, 10])
        // 10 of 110 at the start of the window.
        #expect(pool.distribution(110, count: 2) == [100, 10])
        pool.tick(now: 15_000_000)
        #expect(pool.table.effectiveWeight == [100, 55])
        pool.tick(now: 30_000_000)
        #expect(pool.table.effectiveWeight == [100, 100])
        #expect(!pool.ramping)
        #expect(pool.distribution(200, count: 2) == [100, 100])
    }

    @Test func aBackendsFirstTurnEligibleAtStartupDoesNotRamp() {
        let pool = makePool(.roundRobin, weights: [1, 1], slowStart: .seconds(4))
        // Both wait for their first check; one passes a little later than the other.
        pool.setEligible(0, false, now: 0)
        pool.setEligible(1, false, now: 0)
        pool.setEligible(0, true, now: 10_000, slowStart: false)
        pool.setEligible(1, true, now: 150_000, slowStart: false)
        #expect(!pool.ramping)
        #expect(pool.table.effectiveWeight == [100, 100])
        #expect(pool.distribution(200, count: 2) == [100, 100])
        // A later recovery ramps as before.
        pool.setEligible(1, false, now: 1_000_000)
        pool.setEligible(1, true, now: 2_000_000)
        #expect(pool.ramping && pool.table.effectiveWeight == [100, 10])
    }

    @Test func slowStartLeavesHashAloneInsteadOfRebuildingItsRingEveryTick() {
        // The ring is built from configured weights: a ramp would change nothing, yet each tick rebuilt it.
        for strategy: BalanceStrategy in [.hash(key: .ip, balanceFactor: 1.25), .first] {
            let pool = makePool(strategy, weights: [1, 1, 1], limits: [100, 100, 100], slowStart: .seconds(30))
            pool.setEligible(2, false, now: 0)
            pool.setEligible(2, true, now: 0)
            #expect(!pool.ramping, "\(strategy.name)")
            #expect(!pool.tick(now: 100_000), "\(strategy.name): nothing to advance, nothing rebuilt")
        }
        let ramped = makePool(.roundRobin, weights: [1, 1], slowStart: .seconds(30))
        ramped.setEligible(1, false, now: 0)
        ramped.setEligible(1, true, now: 0)
        #expect(ramped.ramping && ramped.tick(now: 15_000_000))
    }

    @Test func boundedLoadHashCountsConnectionsAcrossWorkers() {
        // Two workers, each with its own (identical) ring, one process-wide set of counters.
        let shared = SharedBackendCounters(capacity: 4)
        let backends = (0..<4).map { PoolBalancer.Backend(weight: 1, identity: StableHash.hash("10.0.0.\($0):6379")) }
        let strategy = BalanceStrategy.hash(key: .ip, balanceFactor: 1.25)
        let workers = (0..<2).map { _ in
            PoolBalancer(backends: backends, shared: shared) { strategy.makeStrategy(table: $0, random: FastRandom(seed: 1)) }
        }
        // 40 connections from one hot client address, alternating between the workers.
        for i in 0..<40 { _ = workers[i % 2].hold(context: PickContext(clientHash: 12345)) }
        let counts = (0..<4).map { shared.count($0) }
        #expect(counts.reduce(0, +) == 40 && shared.total == 40)
        // 1.25 × an average of 10 is 12.5, rounded up: no backend holds more than 13.
        #expect(counts.allSatisfy { $0 <= 13 }, "\(counts)")
        #expect(workers.allSatisfy { $0.table.active.reduce(0, +) == 20 })
    }

    @Test func backendsCanBeAddedRemovedAndReweightedAtRuntime() {
        for strategy: BalanceStrategy in [.roundRobin, .random, .leastConnections, .powerOfTwoChoices,
                                          .peakEWMA(decay: .seconds(10), defaultLatency: .milliseconds(10)),
                                          .hash(key: .ip, balanceFactor: 1.5)] {
            let pool = makePool(strategy, weights: [1, 1])
            let added = pool.add(PoolBalancer.Backend(weight: 1, identity: 777), now: 0)
            #expect(added == 2)
            let withNew = pool.distribution(3000, count: 3) { PickContext(clientHash: StableHash.mix(UInt64($0))) }
            #expect(withNew[2] > 500, "\(strategy.name): \(withNew)")
            pool.remove(0)
            let withoutFirst = pool.distribution(3000, count: 3) { PickContext(clientHash: StableHash.mix(UInt64($0))) }
            #expect(withoutFirst[0] == 0, "\(strategy.name): \(withoutFirst)")
            pool.setWeight(1, 3, now: 0)
            let reweighted = pool.distribution(4000, count: 3) { PickContext(clientHash: StableHash.mix(UInt64($0))) }
            #expect(reweighted[1] > reweighted[2] * 2, "\(strategy.name): \(reweighted)")
        }
    }

    @Test func waitQueueServesInOrderAndTimesOut() {
        final class Client { let id: Int; init(_ id: Int) { self.id = id } }
        var queue = WaitQueue<Client>(capacity: 3, timeout: 1_000)
        let clients = (0..<4).map(Client.init)
        let pushed = [queue.push(clients[0], now: 0), queue.push(clients[1], now: 100),
                      queue.push(clients[2], now: 200), queue.push(clients[3], now: 300)]
        #expect(pushed == [true, true, true, false], "the fourth finds the queue full")
        let first = queue.popFirst()
        #expect(first?.id == 0)
        #expect(queue.nextDeadline == 1_100)
        let early = queue.expire(now: 1_099)
        let late = queue.expire(now: 1_150)
        #expect(early.isEmpty)
        #expect(late.map(\.id) == [1])
        queue.remove(clients[2])
        #expect(queue.isEmpty && queue.nextDeadline == nil)
    }
}
