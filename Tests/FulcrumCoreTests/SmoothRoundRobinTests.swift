import FulcrumCore
import Testing

@Suite struct SmoothRoundRobinTests {
    @Test func weightsAreExactOverEveryCycle() {
        let balancer = SmoothRoundRobin(weights: [5, 3, 1, 1])
        var counts = [0, 0, 0, 0]
        for _ in 0..<(10 * 100) {
            counts[balancer.pick(excluding: TriedBackends())!] += 1
        }
        #expect(counts == [500, 300, 100, 100])
    }

    @Test func spreadsPicksInsteadOfBursting() {
        let balancer = SmoothRoundRobin(weights: [5, 1, 1])
        let sequence = (0..<7).map { _ in balancer.pick(excluding: TriedBackends())! }
        #expect(sequence == [0, 0, 1, 0, 2, 0, 0])
    }

    @Test func neverPicksAnExcludedBackend() {
        let balancer = SmoothRoundRobin(weights: [1, 1, 1])
        var tried = TriedBackends()
        tried.insert(1)
        for _ in 0..<30 {
            #expect(balancer.pick(excluding: tried) != 1)
        }
        tried.insert(0)
        tried.insert(2)
        #expect(balancer.pick(excluding: tried) == nil)
    }

    @Test func triedSetHandlesLargeIndices() {
        var tried = TriedBackends()
        for i in [0, 63, 64, 9999] { tried.insert(i) }
        tried.insert(9999)
        #expect(tried.count == 4)
        #expect(tried.contains(63) && tried.contains(64) && tried.contains(9999))
        #expect(!tried.contains(1) && !tried.contains(65))
    }

    @Test func weightChangesTakeEffect() {
        let balancer = SmoothRoundRobin(weights: [1, 1])
        balancer.update(weights: [3, 1])
        var counts = [0, 0]
        for _ in 0..<400 { counts[balancer.pick(excluding: TriedBackends())!] += 1 }
        #expect(counts == [300, 100])
    }
}
