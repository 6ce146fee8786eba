/// `least_connections`: the candidate with the fewest active connections relative to its weight,
/// (active + 1) / weight. Ties go to the one picked least recently, so equal backends take turns instead
/// of the first in the list taking every tie. A heap keyed on that load keeps picks at O(log n).
public final class LeastConnectionsStrategy: BalancingStrategy {
    private let table: BackendTable
    private var candidates: [Int] = []
    /// Position of each backend in `candidates`, or -1.
    private var positionOf: [Int] = []
    private var heap = PositionedHeap()
    private var lastPicked: [Int] = []
    private var sequence = 0
    private var stash: [Int] = []

    public init(table: BackendTable) { self.table = table }

    /// Candidates that stay keep their place in the tie-break order, so that a change elsewhere in the pool
    /// (a reload, a backend ejected or back) does not hand the next ties to the first backend again; new
    /// candidates come first among equals, in list order.
    public func rebuild(candidates: [Int]) {
        var kept: [Int: Int] = [:]
        for (position, backend) in self.candidates.enumerated() { kept[backend] = lastPicked[position] }
        let oldest = kept.values.min() ?? 0
        self.candidates = candidates
        positionOf = Array(repeating: -1, count: table.count)
        for (position, backend) in candidates.enumerated() { positionOf[backend] = position }
        lastPicked = candidates.enumerated().map { position, backend in kept[backend] ?? oldest - candidates.count + position }
        stash.reserveCapacity(candidates.count)
        heap.rebuild(count: candidates.count, less: less)
    }

    public func pick(_ context: PickContext, skip: (Int) -> Bool) -> Int? {
        stash.removeAll(keepingCapacity: true)
        var chosen: Int?
        while let position = heap.popMin(less: less) {
            stash.append(position)
            if !skip(candidates[position]) {
                chosen = position
                break
            }
        }
        if let chosen {
            sequence += 1
            lastPicked[chosen] = sequence
        }
        for position in stash { heap.push(position, less: less) }
        return chosen.map { candidates[$0] }
    }

    public func connectionOpened(_ backend: Int) { reorder(backend) }
    public func connectionClosed(_ backend: Int) { reorder(backend) }

    private func reorder(_ backend: Int) {
        guard backend < positionOf.count, positionOf[backend] >= 0 else { return }
        heap.update(positionOf[backend], less: less)
    }

    private func less(_ a: Int, _ b: Int) -> Bool {
        let x = candidates[a], y = candidates[b]
        let lhs = (table.active[x] + 1) * table.effectiveWeight[y]
        let rhs = (table.active[y] + 1) * table.effectiveWeight[x]
        return lhs < rhs || (lhs == rhs && lastPicked[a] < lastPicked[b])
    }
}
