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

    public func rebuild(candidates: [Int]) {
        self.candidates = candidates
        positionOf = Array(repeating: -1, count: table.count)
        for (position, backend) in candidates.enumerated() { positionOf[backend] = position }
        // Before any pick, ties go in list order.
        lastPicked = candidates.indices.map { $0 - candidates.count }
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

/// A binary min-heap of the integers 0..<n that knows where each one sits, so that one item whose key
/// changed can be moved in O(log n).
struct PositionedHeap {
    private var items: [Int] = []
    private var slot: [Int] = []

    mutating func rebuild(count: Int, less: (Int, Int) -> Bool) {
        items.removeAll(keepingCapacity: true)
        slot = Array(repeating: -1, count: count)
        for i in 0..<count { push(i, less: less) }
    }

    mutating func push(_ item: Int, less: (Int, Int) -> Bool) {
        items.append(item)
        slot[item] = items.count - 1
        siftUp(items.count - 1, less: less)
    }

    mutating func popMin(less: (Int, Int) -> Bool) -> Int? {
        guard let first = items.first else { return nil }
        let last = items.removeLast()
        slot[first] = -1
        if !items.isEmpty {
            items[0] = last
            slot[last] = 0
            siftDown(0, less: less)
        }
        return first
    }

    mutating func update(_ item: Int, less: (Int, Int) -> Bool) {
        let index = slot[item]
        guard index >= 0 else { return }
        siftUp(index, less: less)
        siftDown(slot[item], less: less)
    }

    private mutating func swapItems(_ i: Int, _ j: Int) {
        items.swapAt(i, j)
        slot[items[i]] = i
        slot[items[j]] = j
    }

    private mutating func siftUp(_ start: Int, less: (Int, Int) -> Bool) {
        var child = start
        while child > 0 {
            let parent = (child - 1) / 2
            guard less(items[child], items[parent]) else { return }
            swapItems(child, parent)
            child = parent
        }
    }

    private mutating func siftDown(_ start: Int, less: (Int, Int) -> Bool) {
        var parent = start
        while true {
            let left = 2 * parent + 1
            guard left < items.count else { return }
            var smallest = left
            if left + 1 < items.count && less(items[left + 1], items[left]) { smallest = left + 1 }
            guard less(items[smallest], items[parent]) else { return }
            swapItems(smallest, parent)
            parent = smallest
        }
    }
}
