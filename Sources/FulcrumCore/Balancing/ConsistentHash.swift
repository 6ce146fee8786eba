/// `hash`: consistent hashing of the client address onto a ring. Each candidate owns `pointsPerWeight ×
/// weight` points (fewer per weight in pools so large that the ring would pass `maxPoints`) on a 64-bit ring, placed by hashing its identity (its address), so the ring is the same
/// in every worker and after every restart. A client goes to the owner of the first point at or after the
/// hash of its address (IP, or IP and port). Removing one of N backends moves only the clients that were
/// on it, about 1/N of them; adding one takes about 1/(N+1) from the others.
///
/// With `hash_balance_factor` (as in HAProxy and Envoy's bounded loads), a backend already holding more than
/// `factor × average` connections (weighted) is passed over for the next point on the ring, so one hot
/// client address cannot overload a backend. Connections are counted across every worker of the process
/// (each worker has its own ring but they are alike, so per-worker caps would let every worker fill the
/// same backend to its own cap). Lookups are a binary search, O(log n).
///
/// The ring uses configured weights, never the effective weights of slow start, so that every worker and
/// every restart map a client alike: slow start does not apply to `hash`.
public final class ConsistentHashStrategy: BalancingStrategy {
    public static let pointsPerWeight = 100
    /// Ring size limit, so that rebuilding a very large pool's ring stays in the low milliseconds.
    public static let maxPoints = 160_000
    private let table: BackendTable
    private let balanceFactor: Double?
    private var ring: [UInt64] = []
    private var owner: [Int32] = []
    private var candidates: [Int] = []
    /// Backends of the pool that are not candidates (other tiers, ineligible, removed): their connections
    /// are taken out of the pool's process-wide total.
    private var others: [Int] = []
    private var totalWeight = 0

    public init(table: BackendTable, balanceFactor: Double?) {
        self.table = table
        self.balanceFactor = balanceFactor
    }

    public var usesEffectiveWeights: Bool { false }

    public func rebuild(candidates: [Int]) {
        self.candidates = candidates
        var isCandidate = Array(repeating: false, count: table.count)
        for backend in candidates { isCandidate[backend] = true }
        others = (0..<table.count).filter { !isCandidate[$0] }
        totalWeight = candidates.reduce(0) { $0 + table.weight[$1] }
        let perWeight = max(1, min(Self.pointsPerWeight, Self.maxPoints / max(1, totalWeight)))
        var points: [(UInt64, Int32)] = []
        points.reserveCapacity(totalWeight * perWeight)
        for backend in candidates {
            for k in 0..<(table.weight[backend] * perWeight) {
                points.append((StableHash.mix(table.identity[backend] &+ UInt64(k) &* 0x9E37_79B9_7F4A_7C15), Int32(backend)))
            }
        }
        points.sort { $0.0 < $1.0 || ($0.0 == $1.0 && $0.1 < $1.1) }
        ring = points.map(\.0)
        owner = points.map(\.1)
    }

    public func pick(_ context: PickContext, skip: (Int) -> Bool) -> Int? {
        guard !ring.isEmpty else { return nil }
        var low = 0, high = ring.count
        while low < high {
            let mid = (low + high) / 2
            if ring[mid] < context.clientHash { low = mid + 1 } else { high = mid }
        }
        let start = low == ring.count ? 0 : low
        var fallback: Int?
        var load = -1   // the candidates' connections, read once the first cap check needs it
        for step in 0..<ring.count {
            let backend = Int(owner[(start + step) % ring.count])
            if skip(backend) { continue }
            if underCap(backend, load: &load) { return backend }
            if fallback == nil { fallback = backend }
        }
        return fallback
    }

    /// Within the bounded-load cap, counted across the process: connections + 1 ≤ ⌈factor × (all the
    /// candidates' connections + 1) × weight share⌉. The cap rounds up, so a backend may go past the exact
    /// factor by less than one connection (1.25 × an average of 10 lets it hold 13).
    private func underCap(_ backend: Int, load: inout Int) -> Bool {
        guard let factor = balanceFactor, totalWeight > 0 else { return true }
        let counters = table.processWide
        if load < 0 {
            load = counters.total
            for other in others { load -= counters.count(other) }
            load = max(0, load)
        }
        let share = Double(table.weight[backend]) / Double(totalWeight)
        let cap = (factor * Double(load + 1) * share).rounded(.up)
        return Double(counters.count(backend) + 1) <= cap
    }
}

/// Which part of the client's address the `hash` strategy hashes.
public enum HashKey: String, CaseIterable, Equatable, Sendable {
    /// The client IP: every connection from one host lands on the same backend.
    case ip
    /// IP and source port: spreads one host's connections but keeps each connection's choice stable.
    case ipPort = "ip_port"
}
