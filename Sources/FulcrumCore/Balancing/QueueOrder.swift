import Synchronization

/// The process-wide arrival order of one pool's waiting clients. Each worker keeps its own FIFO queue;
/// a client entering any of them takes the next ticket, and each worker publishes the ticket of its oldest
/// waiter. A freed slot goes to the oldest waiter of the whole process: the worker that frees it serves its
/// own head only when that head holds the smallest published ticket, and otherwise wakes the worker that
/// does. While anyone waits, new clients queue behind them instead of taking a slot first.
///
/// Breakers are per worker, so a worker may refuse its head a slot that another worker would give (the
/// backend with room is ejected in its view only). That worker then *stands aside*: its waiters are passed
/// over until a slot is released anywhere or it looks at its queue again, so that it holds up no one.
///
/// Lost wakeups are ruled out by sequentially consistent operations on both sides: a worker that enqueues
/// publishes its head, fences, then picks again; a worker that releases a slot releases, fences, counts the
/// release, then reads the heads. At least one of them sees the other. The same holds for standing aside:
/// a worker reads the release count, is refused, stands aside, and reads the count again; a release it
/// missed either changed the count (it looks again) or came after and found it standing aside (and wakes
/// it). Wakeups are coalesced per worker: one pending request
/// per worker and pool, one wakeup byte.
public final class SharedQueueOrder: @unchecked Sendable {
    public static let none = UInt64.max
    private let nextTicket = Atomic<UInt64>(0)
    private let waiters = Atomic<Int>(0)
    private let releases = Atomic<UInt64>(0)
    private let heads: UnsafeMutablePointer<Atomic<UInt64>>
    private let standingAside: UnsafeMutablePointer<Atomic<Bool>>
    private let serveRequested: UnsafeMutablePointer<Atomic<Bool>>
    public let workers: Int

    public init(workers: Int) {
        self.workers = max(1, workers)
        heads = .allocate(capacity: self.workers)
        standingAside = .allocate(capacity: self.workers)
        serveRequested = .allocate(capacity: self.workers)
        for i in 0..<self.workers {
            (heads + i).initialize(to: Atomic(Self.none))
            (standingAside + i).initialize(to: Atomic(false))
            (serveRequested + i).initialize(to: Atomic(false))
        }
    }

    deinit {
        heads.deinitialize(count: workers)
        standingAside.deinitialize(count: workers)
        serveRequested.deinitialize(count: workers)
        heads.deallocate()
        standingAside.deallocate()
        serveRequested.deallocate()
    }

    /// The next arrival ticket.
    public func takeTicket() -> UInt64 {
        nextTicket.wrappingAdd(1, ordering: .relaxed).oldValue
    }

    /// Clients waiting in any worker's queue.
    public var waiting: Int { waiters.load(ordering: .sequentiallyConsistent) }

    /// A worker's queue grew or shrank by `delta` and its oldest waiter now holds `head` (`none` if empty).
    /// A new head is a new waiter to consider: the worker no longer stands aside.
    public func update(worker: Int, head: UInt64, delta: Int) {
        if delta != 0 { waiters.wrappingAdd(delta, ordering: .sequentiallyConsistent) }
        if heads[worker].exchange(head, ordering: .sequentiallyConsistent) != head {
            standingAside[worker].store(false, ordering: .sequentiallyConsistent)
        }
        atomicMemoryFence(ordering: .sequentiallyConsistent)
    }

    /// Slot releases so far, while anyone waited: a worker compares it around a refusal.
    public var releaseCount: UInt64 { releases.load(ordering: .sequentiallyConsistent) }

    /// A slot was released: every worker that stood aside gets to look again. Orders the release before
    /// the reading of the heads that follows it. Returns whether anyone waits (then serve the oldest).
    @discardableResult
    public func slotReleased() -> Bool {
        atomicMemoryFence(ordering: .sequentiallyConsistent)
        guard waiters.load(ordering: .sequentiallyConsistent) > 0 else { return false }
        releases.wrappingAdd(1, ordering: .sequentiallyConsistent)
        for worker in 0..<workers where standingAside[worker].load(ordering: .relaxed) {
            standingAside[worker].store(false, ordering: .sequentiallyConsistent)
        }
        return true
    }

    /// `worker` could not give its oldest waiter a slot: pass its waiters over for now.
    public func standAside(worker: Int) {
        standingAside[worker].store(true, ordering: .sequentiallyConsistent)
        atomicMemoryFence(ordering: .sequentiallyConsistent)
    }

    /// `worker` looks at its queue again: its waiters count again.
    public func reconsider(worker: Int) {
        standingAside[worker].store(false, ordering: .sequentiallyConsistent)
    }

    /// The worker whose head waiter arrived first among those not standing aside, or nil when none waits.
    public func oldest() -> Int? {
        var best = Self.none
        var owner: Int?
        for worker in 0..<workers where !standingAside[worker].load(ordering: .sequentiallyConsistent) {
            let ticket = heads[worker].load(ordering: .sequentiallyConsistent)
            if ticket < best {
                best = ticket
                owner = worker
            }
        }
        return owner
    }

    /// Asks `worker` to serve this pool; true when the request is new and the worker must be woken (a
    /// pending one is not repeated).
    public func requestServe(worker: Int) -> Bool {
        !serveRequested[worker].exchange(true, ordering: .acquiringAndReleasing)
    }

    /// The wakeup for a request could not be sent: the next request must send one.
    public func cancelServeRequest(worker: Int) {
        serveRequested[worker].store(false, ordering: .releasing)
    }

    /// Takes this worker's pending request to serve the pool, if any.
    public func takeServeRequest(worker: Int) -> Bool {
        serveRequested[worker].exchange(false, ordering: .acquiringAndReleasing)
    }
}
