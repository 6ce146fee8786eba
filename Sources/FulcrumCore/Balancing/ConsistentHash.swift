/// `hash`: consistent hashing of the client address onto a ring. Each candidate owns `pointsPerWeight ×
/// weight` points (fewer per weight in pools so large that the ring would pass `maxPoints`) on a 64-bit ring, placed by hashing its identity (its address), so the ring is the same
/// in every worker and after every restart. A client goes to the owner of the first point at or after the
/// hash of its address (IP, or IP and port). Removing one of N backends moves only the clients that were
/// on it, about 1/N of them; adding one takes about 1/(N+1) from the others.
///
/// With `hash_balance_factor` (as in HAProxy and Envoy's bounded loads), a backend already holding more than
/// `factor × average` connections (weighted) is passed over for the next point on the ring, so one hot
/// client address cannot overload a backend. Lookups are a binary search, O(log n).
public final class ConsistentHashStrategy: BalancingStrategy {
    public static let pointsPerWeight = 100
    /// Ring size limit, so that rebuilding a very large pool's ring stays in the low milliseconds.
    public static let maxPoints = 160_000
    private let table: BackendTable
    private let balanceFactor: Double?
    private var ring: [UInt64] = []
    private var owner: [Int32] = []
    private var candidates: [Int] = []
    private var isCandidate: [Bool] = []
    private var totalActive = 0
    private var totalWeight = 0

    public init(table: BackendTable, balanceFactor: Double?) {
        self.table = table
        self.balanceFactor = balanceFactor
    }

    public func rebuild(candidates: [Int]) {
        self.candidates = candidates
        isCandidate = Array(repeating: false, count: table.count)
        totalActive = 0
        totalWeight = candidates.reduce(0) { $0 + table.weight[$1] }
        let perWeight = max(1, min(Self.pointsPerWeight, Self.maxPoints / max(1, totalWeight)))
        var points: [(UInt64, Int32)] = []
        points.reserveCapacity(totalWeight * perWeight)
        for backend in candidates {
            isCandidate[backend] = true
            totalActive += table.active[backend]
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
        for step in 0..<ring.count {
            let backend = Int(owner[(start + step) % ring.count])
            if skip(backend) { continue }
            if underCap(backend) { return backend }
            if fallback == nil { fallback = backend }
        }
        return fallback
    }

    /// Within the bounded-load cap: active + 1 ≤ factor × (all active + 1) × weight share.
    private func underCap(_ backend: Int) -> Bool {
        guard let factor = balanceFactor, totalWeight > 0 else { return true }
        let share = Double(table.weight[backend]) / Double(totalWeight)
        let cap = (factor * Double(totalActive + 1) * share).rounded(.up)
        return Double(table.active[backend] + 1) <= cap
    }

    public func connectionOpened(_ backend: Int) {
        if backend < isCandidate.count && isCandidate[backend] { totalActive += 1 }
    }

    public func connectionClosed(_ backend: Int) {
        if backend < isCandidate.count && isCandidate[backend] { totalActive -= 1 }
    }
}

/// Which part of the client's address the `hash` strategy hashes.
public enum HashKey: String, CaseIterable, Equatable, Sendable {
    /// The client IP: every connection from one host lands on the same backend.
    case ip
    /// IP and source port: spreads one host's connections but keeps each connection's choice stable.
    case ipPort = "ip_port"
}
