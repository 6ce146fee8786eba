import Synchronization

/// Connection counts per backend shared by every worker of a process, for limits that must hold across
/// workers (`max_connections`). Updated with atomic operations only when a connection is reserved or
/// released, never per byte.
public final class SharedBackendCounters: @unchecked Sendable {
    private let counts: UnsafeMutablePointer<Atomic<Int>>
    public let capacity: Int
    /// Connections to every backend of the pool together.
    private let all = Atomic<Int>(0)

    public init(capacity: Int) {
        self.capacity = capacity
        counts = .allocate(capacity: capacity)
        for i in 0..<capacity { (counts + i).initialize(to: Atomic(0)) }
    }

    deinit {
        counts.deinitialize(count: capacity)
        counts.deallocate()
    }

    public func count(_ backend: Int) -> Int { counts[backend].load(ordering: .relaxed) }

    /// Connections to every backend of the pool, across all workers.
    public var total: Int { all.load(ordering: .relaxed) }

    /// Takes one slot of `backend` if fewer than `limit` are taken.
    public func tryAcquire(_ backend: Int, limit: Int) -> Bool {
        var current = counts[backend].load(ordering: .relaxed)
        while current < limit {
            let (exchanged, original) = counts[backend].compareExchange(
                expected: current, desired: current + 1, ordering: .relaxed)
            if exchanged {
                all.wrappingAdd(1, ordering: .relaxed)
                return true
            }
            current = original
        }
        return false
    }

    public func release(_ backend: Int) {
        counts[backend].wrappingSubtract(1, ordering: .relaxed)
        all.wrappingSubtract(1, ordering: .relaxed)
    }
}

/// Everything a strategy may read about a pool's backends, indexed by position in the pool. One table per
/// worker; strategies read it directly, `PoolBalancer` keeps it current.
public final class BackendTable {
    /// Weight as configured (1...1000).
    public internal(set) var weight: [Int]
    /// Weight in use: `weight × 100`, scaled down while slow start ramps a backend up (never below 1).
    public internal(set) var effectiveWeight: [Int]
    /// Connections of this worker to each backend, counting connects in progress.
    public internal(set) var active: [Int]
    /// Stable identity of each backend, for consistent hashing.
    public internal(set) var identity: [UInt64]
    /// Connections to each backend across every worker of the process (the counters `max_connections`
    /// uses), for strategies that must balance the whole process rather than one worker.
    public let processWide: SharedBackendCounters

    public var count: Int { weight.count }

    public static let weightScale = 100

    init(weights: [Int], identities: [UInt64], processWide: SharedBackendCounters) {
        weight = weights
        effectiveWeight = weights.map { $0 * Self.weightScale }
        active = Array(repeating: 0, count: weights.count)
        identity = identities
        self.processWide = processWide
    }

    /// (active + 1) / effective weight, compared without division: is `a` less loaded than `b`?
    @inline(__always)
    public func lessLoaded(_ a: Int, than b: Int) -> Bool {
        (active[a] + 1) * effectiveWeight[b] < (active[b] + 1) * effectiveWeight[a]
    }
}
