/// `p2c`: power of two choices. Draws two distinct candidates at random (weighted) and takes the one with
/// fewer active connections relative to its weight. Nearly as even as least connections, O(log n), and
/// without every worker herding onto the same least-loaded backend.
public final class PowerOfTwoChoicesStrategy: BalancingStrategy {
    private let table: BackendTable
    private var sampler: WeightedSampler

    public init(table: BackendTable, random: FastRandom) {
        self.table = table
        sampler = WeightedSampler(random: random)
    }

    public func rebuild(candidates: [Int]) { sampler.rebuild(candidates: candidates, table: table) }

    public func pick(_ context: PickContext, skip: (Int) -> Bool) -> Int? {
        guard let (a, second) = sampler.drawTwo(skip: skip) else { return nil }
        guard let b = second else { return a }
        return table.lessLoaded(b, than: a) ? b : a
    }
}
