/// Smooth weighted round robin, as nginx does it: each pick adds every backend's weight to its running
/// score, takes the highest score and subtracts the total from it. Over any cycle of `sum(weights)` picks
/// each backend is chosen exactly `weight` times, spread out rather than in bursts (5,1,1 gives
/// a a b a c a a, not a a a a a b c).
public final class SmoothRoundRobin: Balancer {
    private var weights: [Int]
    private var current: [Int]

    public init(weights: [Int]) {
        self.weights = weights
        self.current = Array(repeating: 0, count: weights.count)
    }

    public func pick(excluding tried: TriedBackends) -> Int? {
        var best = -1
        var total = 0
        for i in weights.indices where !tried.contains(i) && weights[i] > 0 {
            current[i] += weights[i]
            total += weights[i]
            if best < 0 || current[i] > current[best] { best = i }
        }
        guard best >= 0 else { return nil }
        current[best] -= total
        return best
    }

    public func update(weights: [Int]) {
        if weights.count != self.weights.count {
            current = Array(repeating: 0, count: weights.count)
        }
        self.weights = weights
    }
}
