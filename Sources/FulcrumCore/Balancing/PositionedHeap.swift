/// A binary min-heap of the integers 0..<n, ordered by a caller-supplied comparison, that knows where each
/// one sits, so that one item whose key changed can be moved in O(log n). Storage is reused across
/// rebuilds: pushes and pops allocate nothing. Used by least connections and large round-robin pools.
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
