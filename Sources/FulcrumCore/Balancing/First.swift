/// `first`: the first candidate in configuration order that is below its `max_connections`, as HAProxy's
/// `balance first`. Fills one backend before using the next, so spare backends can be powered down.
/// Only meaningful with `max_connections` set; without it every connection goes to the first backend.
public final class FirstStrategy: BalancingStrategy {
    private let table: BackendTable
    private var candidates: [Int] = []

    public init(table: BackendTable) { self.table = table }

    public var usesEffectiveWeights: Bool { false }

    /// Candidates in the pool's order (`BackendTable.rank`: file order, kept across reloads).
    public func rebuild(candidates: [Int]) {
        self.candidates = candidates.sorted { (table.rank[$0], $0) < (table.rank[$1], $1) }
    }

    public func pick(_ context: PickContext, skip: (Int) -> Bool) -> Int? {
        firstNotSkipped(candidates, from: 0, skip: skip)
    }
}
