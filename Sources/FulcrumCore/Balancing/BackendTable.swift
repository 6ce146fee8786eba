import Synchronization

/// Connection counts per backend shared by every worker of a process, for limits that must hold across
/// workers (`max_connections`). Updated with atomic operations only when a connection is reserved or
/// released, never per byte.
///
/// The counters live in fixed segments of 64 that never move: growing the pool (a backend added at
/// runtime) allocates new segments and publishes them in a table sized once, so a worker reading a
/// counter while another adds a backend reads memory that stays where it was. The first segment is
/// reached without the table.
public final class SharedBackendCounters: @unchecked Sendable {
    public static let segmentSize = 64
    /// Backends one pool can count: 65,536.
    public static let maxBackends = 1024 * segmentSize
    private let first: UnsafeMutablePointer<Atomic<Int>>
    private let segments: UnsafeMutablePointer<Atomic<UnsafeMutablePointer<Atomic<Int>>?>>
    private let segmentCount = 1024
    /// Connections to every backend of the pool together.
    private let all = Atomic<Int>(0)

    public init(capacity: Int) {
        first = Self.makeSegment()
        segments = .allocate(capacity: segmentCount)
        segments.initialize(to: Atomic(first))
        for i in 1..<segmentCount { (segments + i).initialize(to: Atomic(nil)) }
        ensureCapacity(capacity)
    }

    deinit {
        for i in 0..<segmentCount {
            if let segment = segments[i].load(ordering: .acquiring) {
                segment.deinitialize(count: Self.segmentSize)
                segment.deallocate()
            }
        }
        segments.deinitialize(count: segmentCount)
        segments.deallocate()
    }

    private static func makeSegment() -> UnsafeMutablePointer<Atomic<Int>> {
        let segment = UnsafeMutablePointer<Atomic<Int>>.allocate(capacity: segmentSize)
        for i in 0..<segmentSize { (segment + i).initialize(to: Atomic(0)) }
        return segment
    }

    /// Makes room for backends `0..<count`; safe from any thread, and what exists already does not move.
    public func ensureCapacity(_ count: Int) {
        precondition(count <= Self.maxBackends, "a pool counts at most \(Self.maxBackends) backends")
        guard count > Self.segmentSize else { return }
        for index in 1...((count - 1) / Self.segmentSize) where segments[index].load(ordering: .acquiring) == nil {
            let segment = Self.makeSegment()
            let (stored, _) = segments[index].compareExchange(expected: nil, desired: segment, ordering: .acquiringAndReleasing)
            if !stored {
                // Another worker published this segment first.
                segment.deinitialize(count: Self.segmentSize)
                segment.deallocate()
            }
        }
    }

    @inline(__always)
    private func counter(_ backend: Int) -> UnsafeMutablePointer<Atomic<Int>> {
        if backend < Self.segmentSize { return first + backend }
        return segments[backend / Self.segmentSize].load(ordering: .acquiring)! + backend % Self.segmentSize
    }

    public func count(_ backend: Int) -> Int { counter(backend).pointee.load(ordering: .relaxed) }

    /// Connections to every backend of the pool, across all workers.
    public var total: Int { all.load(ordering: .relaxed) }

    /// Takes one slot of `backend` if fewer than `limit` are taken.
    public func tryAcquire(_ backend: Int, limit: Int) -> Bool {
        let counter = self.counter(backend)
        var current = counter.pointee.load(ordering: .relaxed)
        while current < limit {
            let (exchanged, original) = counter.pointee.compareExchange(
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
        counter(backend).pointee.wrappingSubtract(1, ordering: .relaxed)
        all.wrappingSubtract(1, ordering: .relaxed)
    }

    /// Where `backend`'s counter lives, to check that growing the pool moves nothing.
    public func address(of backend: Int) -> UnsafeRawPointer { UnsafeRawPointer(counter(backend)) }
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
    /// Each backend's place in the pool's order (the file's, as last loaded): the order `first` fills in.
    public internal(set) var rank: [Int]
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
        rank = Array(weights.indices)
        self.processWide = processWide
    }

    /// (active + 1) / effective weight, compared without division: is `a` less loaded than `b`?
    @inline(__always)
    public func lessLoaded(_ a: Int, than b: Int) -> Bool {
        (active[a] + 1) * effectiveWeight[b] < (active[b] + 1) * effectiveWeight[a]
    }
}
