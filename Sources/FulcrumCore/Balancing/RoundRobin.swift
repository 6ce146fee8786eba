/// `round_robin`: smooth weighted round robin. Over every cycle of `sum(weights)` picks each backend gets
/// exactly its weight's share, interleaved rather than in bursts.
///
/// Up to 64 candidates it is nginx's algorithm (add each weight to its running score, take the highest,
/// subtract the total): weights 5,1,1 give a a b a c a a. Above 64 that O(n) scan would be too slow, so it
/// switches to an earliest-deadline-first heap (as Envoy does), O(log n) per pick with the same exact
/// shares: each backend's next turn is due 1/weight after its last, starting half a period in.
public final class RoundRobinStrategy: BalancingStrategy {
    static let scanLimit = 64
    private let table: BackendTable
    private var candidates: [Int] = []
    // nginx scan: running score per candidate position.
    private var score: [Int] = []
    // EDF: deadlines as fractions with a common denominator, kept in a heap of candidate positions.
    private var heap = PositionedHeap()
    private var deadline: [Double] = []
    private var stash: [Int] = []

    public init(table: BackendTable) { self.table = table }

    /// Candidates that stay keep their running score (or deadline), so that a change elsewhere in the pool
    /// (a backend added, removed, reweighted, ejected; a reload) does not restart the rotation at the first
    /// backend: restarting on every change would skew the split towards the backends listed first.
    public func rebuild(candidates: [Int]) {
        let previous = self.candidates
        let large = candidates.count > Self.scanLimit
        var kept: [Int: Double] = [:]
        if !previous.isEmpty {
            kept.reserveCapacity(previous.count)
            let largeBefore = previous.count > Self.scanLimit && deadline.count == previous.count
            for (position, backend) in previous.enumerated() {
                kept[backend] = largeBefore ? deadline[position] : Double(score[position])
            }
        }
        let sameForm = (previous.count > Self.scanLimit) == large
        self.candidates = candidates
        score = candidates.map { sameForm && !large ? Int(kept[$0] ?? 0) : 0 }
        if large {
            let start = sameForm ? kept.values.min() ?? 0 : 0
            deadline = candidates.map { backend in
                (sameForm ? kept[backend] : nil) ?? start + 0.5 / Double(table.effectiveWeight[backend])
            }
            stash.reserveCapacity(candidates.count)
            heap.rebuild(count: candidates.count, less: less)
        } else {
            deadline = []
        }
    }

    public func pick(_ context: PickContext, skip: (Int) -> Bool) -> Int? {
        candidates.count > Self.scanLimit ? pickByDeadline(skip) : pickByScan(skip)
    }

    private func pickByScan(_ skip: (Int) -> Bool) -> Int? {
        var best = -1
        var total = 0
        let weights = table.effectiveWeight
        for position in candidates.indices {
            let backend = candidates[position]
            if skip(backend) { continue }
            score[position] += weights[backend]
            total += weights[backend]
            if best < 0 || score[position] > score[best] { best = position }
        }
        guard best >= 0 else { return nil }
        score[best] -= total
        return candidates[best]
    }

    private func pickByDeadline(_ skip: (Int) -> Bool) -> Int? {
        stash.removeAll(keepingCapacity: true)
        var chosen: Int?
        while let position = heap.popMin(less: less) {
            if skip(candidates[position]) {
                stash.append(position)
                continue
            }
            deadline[position] += 1 / Double(table.effectiveWeight[candidates[position]])
            heap.push(position, less: less)
            chosen = candidates[position]
            break
        }
        for position in stash { heap.push(position, less: less) }
        return chosen
    }

    private func less(_ a: Int, _ b: Int) -> Bool {
        deadline[a] < deadline[b] || (deadline[a] == deadline[b] && a < b)
    }
}
