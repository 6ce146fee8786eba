/// `random`: weighted random. Each pick draws a backend with probability proportional to its weight
/// (binary search over cumulative weights, O(log n)).
public final class RandomStrategy: BalancingStrategy {
    private let table: BackendTable
    private var sampler: WeightedSampler

    public init(table: BackendTable, random: FastRandom) {
        self.table = table
        sampler = WeightedSampler(random: random)
    }

    public func rebuild(candidates: [Int]) { sampler.rebuild(candidates: candidates, table: table) }

    public func pick(_ context: PickContext, skip: (Int) -> Bool) -> Int? {
        sampler.draw(skip: skip)
    }
}

/// Draws candidates at random in proportion to their effective weights, O(log n) per draw. Shared by
/// `random`, `p2c` and `peak_ewma`.
struct WeightedSampler {
    private(set) var candidates: [Int] = []
    private var cumulative: [Int] = []
    var random: FastRandom

    init(random: FastRandom) { self.random = random }

    mutating func rebuild(candidates: [Int], table: BackendTable) {
        self.candidates = candidates
        cumulative.removeAll(keepingCapacity: true)
        var sum = 0
        for backend in candidates {
            sum += table.effectiveWeight[backend]
            cumulative.append(sum)
        }
    }

    /// One weighted draw, as a position in `candidates`.
    mutating func drawPosition() -> Int? {
        guard let total = cumulative.last, total > 0 else { return nil }
        let target = random.below(total)
        var low = 0, high = cumulative.count - 1
        while low < high {
            let mid = (low + high) / 2
            if cumulative[mid] > target { high = mid } else { low = mid + 1 }
        }
        return low
    }

    /// A weighted draw among candidates not skipped: a few draws, then an ordered scan from a random point.
    mutating func draw(skip: (Int) -> Bool) -> Int? {
        for _ in 0..<8 {
            guard let position = drawPosition() else { return nil }
            if !skip(candidates[position]) { return candidates[position] }
        }
        return firstNotSkipped(candidates, from: candidates.isEmpty ? 0 : random.below(candidates.count), skip: skip)
    }

    /// Two distinct weighted draws among candidates not skipped (one if only one is left).
    mutating func drawTwo(skip: (Int) -> Bool) -> (Int, Int?)? {
        guard let first = draw(skip: skip) else { return nil }
        if candidates.count < 2 { return (first, nil) }
        for _ in 0..<8 {
            guard let position = drawPosition() else { break }
            let backend = candidates[position]
            if backend != first && !skip(backend) { return (first, backend) }
        }
        let second = firstNotSkipped(candidates, from: random.below(candidates.count)) { $0 == first || skip($0) }
        return (first, second)
    }
}
