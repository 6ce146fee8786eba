import Synchronization

/// The process-wide arrival order of one pool's waiting clients. Each worker keeps its own FIFO queue;
/// a client entering any of them takes the next ticket, and each worker publishes the ticket of its oldest
/// waiter. A freed slot goes to the oldest waiter of the whole process: the worker that frees it serves its
/// own head only when that head holds the smallest published ticket, and otherwise wakes the worker that
/// does. While anyone waits, new clients queue behind them instead of taking a slot first.
///
/// Lost wakeups are ruled out by a sequentially consistent fence on both sides: a worker that enqueues
/// publishes its head, fences, then picks again; a worker that releases a slot releases, fences, then reads
/// the heads. At least one of them sees the other.
public final class SharedQueueOrder: @unchecked Sendable {
    public static let none = UInt64.max
    private let nextTicket = Atomic<UInt64>(0)
    private let waiters = Atomic<Int>(0)
    private let heads: UnsafeMutablePointer<Atomic<UInt64>>
    public let workers: Int

    public init(workers: Int) {
        self.workers = max(1, workers)
        heads = .allocate(capacity: self.workers)
        for i in 0..<self.workers { (heads + i).initialize(to: Atomic(Self.none)) }
    }

    deinit {
        heads.deinitialize(count: workers)
        heads.deallocate()
    }

    /// The next arrival ticket.
    public func takeTicket() -> UInt64 {
        nextTicket.wrappingAdd(1, ordering: .relaxed).oldValue
    }

    /// Clients waiting in any worker's queue.
    public var waiting: Int { waiters.load(ordering: .sequentiallyConsistent) }

    /// A worker's queue grew or shrank by `delta` and its oldest waiter now holds `head` (`none` if empty).
    public func update(worker: Int, head: UInt64, delta: Int) {
        if delta != 0 { waiters.wrappingAdd(delta, ordering: .sequentiallyConsistent) }
        heads[worker].store(head, ordering: .sequentiallyConsistent)
        atomicMemoryFence(ordering: .sequentiallyConsistent)
    }

    /// Orders a slot release before the reading of the heads that follows it.
    public func slotReleased() {
        atomicMemoryFence(ordering: .sequentiallyConsistent)
    }

    /// The worker whose head waiter arrived first, or nil when nobody waits.
    public func oldest() -> Int? {
        var best = Self.none
        var owner: Int?
        for worker in 0..<workers {
            let ticket = heads[worker].load(ordering: .sequentiallyConsistent)
            if ticket < best {
                best = ticket
                owner = worker
            }
        }
        return owner
    }
}
