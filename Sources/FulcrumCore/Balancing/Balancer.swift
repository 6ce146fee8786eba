/// The backend indices already tried for one client, so that a retry lands elsewhere.
/// Indices below 64 live in a bit mask; only larger pools ever allocate.
public struct TriedBackends: Sendable {
    private var bits: UInt64 = 0
    private var overflow: [Int] = []

    public init() {}

    public var isEmpty: Bool { bits == 0 && overflow.isEmpty }

    public var count: Int { bits.nonzeroBitCount + overflow.count }

    @inline(__always)
    public func contains(_ index: Int) -> Bool {
        index < 64 ? bits & (1 << UInt64(index)) != 0 : overflow.contains(index)
    }

    public mutating func insert(_ index: Int) {
        if index < 64 {
            bits |= 1 << UInt64(index)
        } else if !overflow.contains(index) {
            overflow.append(index)
        }
    }
}

/// What a pick may depend on besides the backends themselves.
public struct PickContext: Sendable {
    /// Stable hash of the client's address (and port, if the pool hashes on it); 0 when unused.
    public var clientHash: UInt64
    public var now: Microseconds

    public init(clientHash: UInt64 = 0, now: Microseconds = 0) {
        self.clientHash = clientHash
        self.now = now
    }
}

/// A balancing strategy: picks the backend for each new client connection.
///
/// One instance per priority tier of a pool per worker, used only from that worker's thread, so it keeps
/// plain mutable state and takes no locks. Backends are indices into the pool's `BackendTable`; a strategy
/// only ever picks among the `candidates` it was last given (the eligible backends of its tier), and
/// never one for which `skip` says yes (already tried for this client, or at its connection limit).
public protocol BalancingStrategy: AnyObject {
    /// The candidates or their effective weights changed.
    func rebuild(candidates: [Int])
    /// A candidate for which `skip` is false, or nil when there is none. Allocates nothing.
    func pick(_ context: PickContext, skip: (Int) -> Bool) -> Int?
    /// The table's `active` count for `backend` just went up or down.
    func connectionOpened(_ backend: Int)
    func connectionClosed(_ backend: Int)
    /// A measured request-to-first-byte latency for `backend`.
    func observe(latency: Microseconds, backend: Int, now: Microseconds)
    /// A measured connect time for `backend`: says the host is reachable, not how fast it answers.
    func observeConnect(latency: Microseconds, backend: Int, now: Microseconds)
    /// Whether picks depend on the table's effective weights (which slow start lowers). Strategies that
    /// read only configured weights, or none, say false: slow start then has nothing to ramp.
    var usesEffectiveWeights: Bool { get }
}

extension BalancingStrategy {
    public var usesEffectiveWeights: Bool { true }
    public func connectionOpened(_ backend: Int) {}
    public func connectionClosed(_ backend: Int) {}
    public func observe(latency: Microseconds, backend: Int, now: Microseconds) {}
    public func observeConnect(latency: Microseconds, backend: Int, now: Microseconds) {
        observe(latency: latency, backend: backend, now: now)
    }
}

/// The first candidate in `candidates` not skipped, scanning from `start` and wrapping: the fallback of
/// sampling strategies once random draws keep landing on skipped backends.
@inline(__always)
func firstNotSkipped(_ candidates: [Int], from start: Int, skip: (Int) -> Bool) -> Int? {
    let n = candidates.count
    guard n > 0 else { return nil }
    for k in 0..<n {
        let backend = candidates[(start + k) % n]
        if !skip(backend) { return backend }
    }
    return nil
}
