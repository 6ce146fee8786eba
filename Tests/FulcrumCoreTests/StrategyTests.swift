import FulcrumCore
import Testing

@Suite struct RoundRobinTests {
    @Test func weightsAreExactOverEveryCycle() {
        let pool = makePool(.roundRobin, weights: [5, 3, 1, 1])
        #expect(pool.distribution(1000, count: 4) == [500, 300, 100, 100])
    }

    @Test func spreadsPicksLikeNginxInsteadOfBursting() {
        let pool = makePool(.roundRobin, weights: [5, 1, 1])
        let sequence = (0..<7).map { _ in pool.pickAndRelease()! }
        #expect(sequence == [0, 0, 1, 0, 2, 0, 0])
    }

    @Test func largePoolsKeepExactSharesPerCycle() {
        let weights = (0..<300).map { $0 % 3 + 1 }   // 100 each of weights 1, 2, 3: a cycle is 600 picks
        let pool = makePool(.roundRobin, weights: weights)
        let counts = pool.distribution(1200, count: 300)
        for (i, count) in counts.enumerated() {
            #expect(count == 2 * weights[i], "backend \(i)")
        }
        // No bursts: within the first cycle, no backend of weight 1 is picked twice.
        let fresh = makePool(.roundRobin, weights: weights)
        var seen = Set<Int>()
        for _ in 0..<100 {
            let b = fresh.pickAndRelease()!
            #expect(weights[b] > 1 || !seen.contains(b))
            seen.insert(b)
        }
    }

    @Test func neverPicksATriedBackendAndRunsOut() {
        let pool = makePool(.roundRobin, weights: [1, 1, 1])
        var tried = TriedBackends()
        tried.insert(1)
        for _ in 0..<30 { #expect(pool.pickAndRelease(tried: tried) != 1) }
        tried.insert(0)
        tried.insert(2)
        #expect(pool.pick(tried: tried) == .unavailable)
    }

    @Test func triedSetHandlesLargeIndices() {
        var tried = TriedBackends()
        for i in [0, 63, 64, 9999, 9999] { tried.insert(i) }
        #expect(tried.count == 4)
        #expect(tried.contains(63) && tried.contains(64) && tried.contains(9999))
        #expect(!tried.contains(1) && !tried.contains(65))
    }
}

@Suite struct RandomTests {
    @Test func followsWeightsWithinTwoPercent() {
        let pool = makePool(.random, weights: [3, 1])
        let counts = pool.distribution(40_000, count: 2)
        #expect(abs(Double(counts[0]) / 40_000 - 0.75) < 0.02, "\(counts)")
    }

    @Test func sameSeedSameSequence() {
        let a = makePool(.random, weights: [1, 1, 1, 1], seed: 7)
        let b = makePool(.random, weights: [1, 1, 1, 1], seed: 7)
        #expect((0..<50).map { _ in a.pickAndRelease()! } == (0..<50).map { _ in b.pickAndRelease()! })
    }
}

@Suite struct LeastConnectionsTests {
    @Test func tiesAreBrokenRoundRobinNotByListOrder() {
        let pool = makePool(.leastConnections, weights: [1, 1, 1])
        #expect((0..<6).map { _ in pool.pickAndRelease()! } == [0, 1, 2, 0, 1, 2])
    }

    @Test func movesLoadAwayFromABackendHoldingLongConnections() {
        let pool = makePool(.leastConnections, weights: [1, 1, 1])
        var held: [Int] = []
        for _ in 0..<30 { held.append(pool.hold()!) }
        #expect(held.filter { $0 == 0 }.count == 10)
        // Backend 1 and 2 connections end; backend 0 keeps its ten long ones.
        for b in held where b != 0 { pool.release(b) }
        let next = (0..<20).map { _ in pool.hold()! }
        #expect(next.filter { $0 == 0 }.count == 0)
        #expect(pool.table.active == [10, 10, 10])
    }

    @Test func respectsWeights() {
        let pool = makePool(.leastConnections, weights: [2, 1])
        for _ in 0..<30 { _ = pool.hold() }
        #expect(pool.table.active == [20, 10])
    }
}

@Suite struct PowerOfTwoChoicesTests {
    @Test func avoidsTheLoadedBackend() {
        let pool = makePool(.powerOfTwoChoices, weights: [1, 1, 1])
        var onlyZero = TriedBackends()
        onlyZero.insert(1)
        onlyZero.insert(2)
        for _ in 0..<50 { #expect(pool.pick(tried: onlyZero) == .backend(0)) }
        let counts = pool.distribution(3000, count: 3)
        #expect(counts[0] == 0, "\(counts)")
        #expect(abs(counts[1] - counts[2]) < 300, "\(counts)")
    }

    @Test func spreadsEvenlyWithoutLoad() {
        let pool = makePool(.powerOfTwoChoices, weights: [1, 1, 1, 1])
        let counts = pool.distribution(8000, count: 4)
        for c in counts { #expect(abs(c - 2000) < 200, "\(counts)") }
    }
}

@Suite struct PeakEWMATests {
    /// Three backends; backend 0 answers in `slow` µs, the others in 10 ms. Returns backend 0's share.
    func share(_ pool: PoolBalancer, picks: Int, now: inout Microseconds, slow: Microseconds) -> Double {
        var zero = 0
        for _ in 0..<picks {
            now += 1_000
            let b = pool.hold(context: PickContext(now: now))!
            pool.observe(latency: b == 0 ? slow : 10_000, backend: b, now: now)
            pool.release(b)
            if b == 0 { zero += 1 }
        }
        return Double(zero) / Double(picks)
    }

    @Test func sendsWorkAwayFromATenTimesSlowerBackendAndBackWhenItRecovers() {
        let pool = makePool(.peakEWMA(decay: .seconds(10), defaultLatency: .milliseconds(10)), weights: [1, 1, 1])
        var now: Microseconds = 1_000_000
        let before = share(pool, picks: 600, now: &now, slow: 10_000)
        #expect(abs(before - 1.0 / 3.0) < 0.08, "healthy share \(before)")
        let slowShare = share(pool, picks: 3000, now: &now, slow: 100_000)
        #expect(slowShare < 0.02, "slow share \(slowShare)")
        // It recovers; once its old peak has decayed (a few decay periods) it is tried and wins work back.
        now += 30_000_000
        let after = share(pool, picks: 3000, now: &now, slow: 10_000)
        #expect(after > 0.25, "recovered share \(after)")
    }

    @Test func peakSamplesReplaceTheAverageAtOnceAndLowerOnesPullItDownGradually() {
        let table = makePool(.roundRobin, weights: [1]).table
        let strategy = PeakEWMAStrategy(table: table, random: FastRandom(seed: 1), decay: .seconds(10),
                                        defaultLatency: .milliseconds(5))
        strategy.observe(latency: 50_000, backend: 0, now: 0)
        #expect(strategy.estimate(0, now: 0) == 50_000)
        // A lower sample 1 s later (fresh: not stale yet): 50 ms has decayed to ~45.2 ms, and the sample
        // pulls that down by 1 - e^-0.1 of the way to 10 ms.
        strategy.observe(latency: 10_000, backend: 0, now: 1_000_000)
        let estimate = strategy.estimate(0, now: 1_000_000)
        #expect(estimate > 41_500 && estimate < 42_500, "\(estimate)")
    }

    @Test func theFirstSampleAfterAStalePeriodReplacesTheAverage() {
        let table = makePool(.roundRobin, weights: [1]).table
        let strategy = PeakEWMAStrategy(table: table, random: FastRandom(seed: 1), decay: .seconds(10),
                                        defaultLatency: .milliseconds(1))
        strategy.observe(latency: 200_000, backend: 0, now: 0)
        #expect(strategy.staleAfter == 2_000_000)
        #expect(!strategy.isStale(0, now: 1_999_999) && strategy.isStale(0, now: 2_000_000))
        // Decay alone would still say ~164 ms; the fresh sample is what counts.
        strategy.observe(latency: 900, backend: 0, now: 2_000_000)
        #expect(strategy.estimate(0, now: 2_000_000) == 900)
        #expect(!strategy.isStale(0, now: 2_000_000))
    }

    @Test func aConnectTimeDoesNotRefreshAStaleSlowBackend() {
        let table = makePool(.roundRobin, weights: [1]).table
        let strategy = PeakEWMAStrategy(table: table, random: FastRandom(seed: 1), decay: .seconds(10),
                                        defaultLatency: .milliseconds(1))
        strategy.observe(latency: 200_000, backend: 0, now: 0)
        let stale = strategy.estimate(0, now: 2_000_000)
        strategy.observeConnect(latency: 100, backend: 0, now: 2_000_000)
        #expect(strategy.estimate(0, now: 2_000_000) == stale, "the handshake says nothing of the answer")
        #expect(strategy.isStale(0, now: 2_000_000))
        strategy.observe(latency: 150_000, backend: 0, now: 2_100_000)
        #expect(strategy.estimate(0, now: 2_100_000) == 150_000, "the first answer replaces the stale estimate")
        strategy.observeConnect(latency: 100, backend: 0, now: 2_200_000)
        #expect(strategy.estimate(0, now: 2_200_000) < 150_000, "a fresh backend folds connect times in")
    }

    @Test func explorationTakesAtMostTwoPercentOfPicks() {
        // Backend 0 answered once, very slowly, and its explorations never answer: it stays stale (after
        // 200 ms with a 1 s decay), so only the budget limits how often it is tried.
        let pool = makePool(.peakEWMA(decay: .seconds(1), defaultLatency: .milliseconds(1)), weights: [1, 1])
        pool.observe(latency: 10_000_000, backend: 0, now: 0)
        var now: Microseconds = 0
        var zero = 0
        for _ in 0..<5_000 {
            now += 1_000
            let b = pool.pickAndRelease(context: PickContext(now: now))!
            if b == 0 { zero += 1 } else { pool.observe(latency: 1_000, backend: b, now: now) }
        }
        #expect(zero >= 90 && zero <= 101, "\(zero) of 5000")
    }

    /// Three backends; backend 0 answers in 200 ms for 5 s, then as fast as the others (0.2 ms). One pick every
    /// 3 ms (about 330 connections a second), the default decay of 10 s.
    @Test func aSlowBackendWinsItsShareBackWithinSecondsOfBeingFastAgain() {
        let pool = makePool(.peakEWMA(decay: .seconds(10), defaultLatency: .milliseconds(10)), weights: [1, 1, 1])
        var now: Microseconds = 1_000_000
        func run(seconds: Double, slow: Bool) -> Double {
            let end = now + Microseconds(seconds * 1_000_000)
            var picks = 0, zero = 0
            while now < end {
                now += 3_000
                let b = pool.hold(context: PickContext(now: now))!
                pool.observe(latency: 100, backend: b, now: now)   // connect
                pool.observe(latency: b == 0 && slow ? 200_000 : 200, backend: b, now: now)
                pool.release(b)
                picks += 1
                if b == 0 { zero += 1 }
            }
            return Double(zero) / Double(picks)
        }
        let healthy = run(seconds: 2, slow: false)
        #expect(healthy > 0.25, "healthy share \(healthy)")
        let first = run(seconds: 1, slow: true)
        let slow = run(seconds: 4, slow: true)
        #expect(first < 0.05 && slow < 0.02, "while slow: \(first), then \(slow)")
        let recovering = run(seconds: 3, slow: false)
        let recovered = run(seconds: 3, slow: false)
        #expect(recovering > 0.1, "first 3 s after it is fast again: \(recovering)")
        #expect(recovered > 0.25, "3 s to 6 s after it is fast again: \(recovered)")
    }
}

@Suite struct ConsistentHashTests {
    func keys(_ n: Int) -> [UInt64] { (0..<n).map { StableHash.mix(UInt64($0) &* 7919) } }

    @Test(arguments: [3, 5, 10])
    func removingOneOfNBackendsRemapsAboutOneNth(n: Int) {
        let pool = makePool(.hash(key: .ip, balanceFactor: nil), weights: Array(repeating: 1, count: n))
        let clients = keys(10_000)
        let before = clients.map { pool.pickAndRelease(context: PickContext(clientHash: $0))! }
        pool.setEligible(n - 1, false, now: 0)
        let after = clients.map { pool.pickAndRelease(context: PickContext(clientHash: $0))! }
        let moved = zip(before, after).filter { $0 != $1 }.count
        #expect(Double(moved) / 10_000 <= 1.0 / Double(n) + 0.05, "moved \(moved) of 10000")
        // Only clients of the removed backend moved.
        #expect(zip(before, after).allSatisfy { $0 == $1 || $0 == n - 1 })
    }

    @Test func sameClientSameBackend() {
        let a = makePool(.hash(key: .ip, balanceFactor: nil), weights: [1, 1, 1, 1])
        let b = makePool(.hash(key: .ip, balanceFactor: nil), weights: [1, 1, 1, 1], seed: 99)
        for key in keys(200) {
            #expect(a.pickAndRelease(context: PickContext(clientHash: key)) == b.pickAndRelease(context: PickContext(clientHash: key)))
        }
    }

    @Test func spreadsClientsRoughlyByWeight() {
        let pool = makePool(.hash(key: .ip, balanceFactor: nil), weights: [1, 1, 2])
        let counts = pool.distribution(10_000, count: 3) { PickContext(clientHash: StableHash.mix(UInt64($0))) }
        #expect(abs(Double(counts[2]) / 10_000 - 0.5) < 0.08, "\(counts)")
    }

    @Test func boundedLoadKeepsEveryBackendUnderItsCap() {
        let pool = makePool(.hash(key: .ip, balanceFactor: 1.25), weights: [1, 1, 1, 1])
        // One hot client opens 200 long connections.
        for _ in 0..<200 { _ = pool.hold(context: PickContext(clientHash: 12345)) }
        let cap = Int((1.25 * 200 / 4).rounded(.up))
        #expect(pool.table.active.allSatisfy { $0 <= cap }, "\(pool.table.active)")
        // Without the bound they would all land on one backend.
        let unbounded = makePool(.hash(key: .ip, balanceFactor: nil), weights: [1, 1, 1, 1])
        for _ in 0..<200 { _ = unbounded.hold(context: PickContext(clientHash: 12345)) }
        #expect(unbounded.table.active.max() == 200)
    }
}

@Suite struct FirstTests {
    @Test func fillsBackendsInOrderUpToTheirLimits() {
        let pool = makePool(.first, weights: [1, 1, 1], limits: [2, 3, 2])
        let held = (0..<7).map { _ in pool.hold()! }
        #expect(held == [0, 0, 1, 1, 1, 2, 2])
        #expect(pool.pick(tried: TriedBackends()) == .full)
        pool.release(0)
        #expect(pool.hold() == 0)
    }
}
