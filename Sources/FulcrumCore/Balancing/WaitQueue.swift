/// A bounded first-in, first-out queue of clients waiting for a backend slot, each with the same timeout,
/// so deadlines come in arrival order and one timer at the head's deadline serves the whole queue. Each
/// element carries its process-wide arrival ticket (see `SharedQueueOrder`).
public struct WaitQueue<Element: AnyObject> {
    /// Clients that may wait; lowering it turns new clients away and leaves those already waiting.
    public var capacity: Int
    /// How long a client may wait; a change applies to clients that queue from then on.
    public var timeout: Microseconds
    private var items: [(element: Element, deadline: Microseconds, ticket: UInt64)] = []
    private var head = 0

    public init(capacity: Int, timeout: Microseconds) {
        self.capacity = capacity
        self.timeout = timeout
    }

    public var count: Int { items.count - head }
    public var isEmpty: Bool { count == 0 }

    /// The deadline of the oldest waiting element.
    public var nextDeadline: Microseconds? { isEmpty ? nil : items[head].deadline }

    /// Appends `element`, due to time out at `now + timeout`; false when the queue is full.
    public mutating func push(_ element: Element, now: Microseconds, ticket: UInt64 = 0) -> Bool {
        guard count < capacity else { return false }
        items.append((element, now + timeout, ticket))
        return true
    }

    /// The arrival ticket of the oldest waiting element, or `UInt64.max` when empty.
    public var firstTicket: UInt64 { isEmpty ? .max : items[head].ticket }

    /// The oldest waiting element, left in place.
    public var first: Element? { isEmpty ? nil : items[head].element }

    @discardableResult
    public mutating func popFirst() -> Element? {
        guard !isEmpty else { return nil }
        let element = items[head].element
        head += 1
        compact()
        return element
    }

    /// Removes and returns every element whose deadline is at or before `now`, oldest first.
    public mutating func expire(now: Microseconds) -> [Element] {
        var expired: [Element] = []
        while !isEmpty && items[head].deadline <= now {
            expired.append(items[head].element)
            head += 1
        }
        compact()
        return expired
    }

    /// Removes `element` wherever it waits (a client that went away).
    public mutating func remove(_ element: Element) {
        guard let index = items[head...].firstIndex(where: { $0.element === element }) else { return }
        items.remove(at: index)
    }

    private mutating func compact() {
        if head == items.count {
            items.removeAll(keepingCapacity: true)
            head = 0
        } else if head > 64 && head * 2 > items.count {
            items.removeFirst(head)
            head = 0
        }
    }
}
