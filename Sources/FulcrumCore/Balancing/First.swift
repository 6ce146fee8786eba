/// `first`: the first candidate in configuration order that is below its `max_connections`, as HAProxy's
/// `balance first`. Fills one backend before using the next, so spare backends can be powered down.
/// Only meaningful with `max_connections` set; without it every connection goes to the first backend.
public final class FirstStrategy: BalancingStrategy {
    private var candidates: [Int] = []

    public init() {}

    public var usesEffectiveWeights: Bool { false }

    public func rebuild(candidates: [Int]) { self.candidates = candidates.sorted() }

    public func pick(_ context: PickContext, skip: (Int) -> Bool) -> Int? {
        firstNotSkipped(candidates, from: 0, skip: skip)
    }
}
