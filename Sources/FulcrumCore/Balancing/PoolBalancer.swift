/// One worker's balancing state for one pool: the backend table, a strategy per priority tier, connection
/// limits and slow start. It decides; the engine connects.
///
/// - Tiers: backends are grouped by priority (0 for primaries, 1 for `backup: true`, or `priority: N`).
///   New connections go to the lowest tier that has an eligible backend. A retry moves to the next tier
///   only once every backend of the current one was tried for this client.
/// - Limits: a backend at `max_connections` (counted across all workers) is not picked. When every
///   eligible backend of the tier is at its limit the answer is `.full` and the engine queues the client.
/// - Slow start: a backend that becomes eligible ramps its effective weight from 10% to 100% over the
///   window; `tick(now:)` advances the ramp. Not for strategies that ignore effective weights (`hash`,
///   `first`), where a ramp would change nothing but cost a rebuild every tick.
public final class PoolBalancer {
    public enum Pick: Equatable, Sendable {
        case backend(Int)
        /// Eligible backends exist but all are at their connection limit.
        case full
        /// No eligible backend is left to try for this client.
        case unavailable
    }

    public struct Backend: Sendable {
        public var weight: Int
        public var priority: Int
        public var maxConnections: Int?
        public var identity: UInt64

        public init(weight: Int, priority: Int = 0, maxConnections: Int? = nil, identity: UInt64 = 0) {
            self.weight = weight
            self.priority = priority
            self.maxConnections = maxConnections
            self.identity = identity
        }
    }

    public let table: BackendTable
    public let shared: SharedBackendCounters
    private var makeStrategy: (BackendTable) -> any BalancingStrategy
    private var priority: [Int]
    private var limit: [Int]
    private var eligible: [Bool]
    private var removed: [Bool]
    private var eligibleSince: [Microseconds?]
    private var slowStart: Microseconds
    private var tiers: [(priority: Int, candidates: [Int], strategy: any BalancingStrategy)] = []
    public private(set) var ramping = false
    /// Whether the pool's strategy reads effective weights, so that slow start has an effect.
    private var weighted = true

    public init(backends: [Backend], slowStart: Duration = .zero, shared: SharedBackendCounters? = nil,
                now: Microseconds = 0, makeStrategy: @escaping (BackendTable) -> any BalancingStrategy) {
        let shared = shared ?? SharedBackendCounters(capacity: max(1, backends.count))
        shared.ensureCapacity(backends.count)
        table = BackendTable(weights: backends.map(\.weight), identities: backends.map(\.identity), processWide: shared)
        self.shared = shared
        self.makeStrategy = makeStrategy
        priority = backends.map(\.priority)
        limit = backends.map { $0.maxConnections ?? Int.max }
        eligible = Array(repeating: true, count: backends.count)
        removed = Array(repeating: false, count: backends.count)
        eligibleSince = Array(repeating: nil, count: backends.count)
        self.slowStart = slowStart.inMicroseconds
        rebuild()
        weighted = tiers.first?.strategy.usesEffectiveWeights ?? true
    }

    // MARK: - Picking

    /// Picks a backend for a client and reserves one of its connection slots. Every `.backend` answer must
    /// be followed by `release` (connect failed) or `opened` then `closed`.
    public func pick(tried: TriedBackends, context: PickContext = PickContext()) -> Pick {
        var sawFull = false
        for tier in tiers {
            var full = false
            while true {
                let choice = tier.strategy.pick(context) { backend in
                    if tried.contains(backend) { return true }
                    if self.shared.count(backend) >= self.limit[backend] {
                        full = true
                        return true
                    }
                    return false
                }
                guard let backend = choice else { break }
                // Another worker may have taken the last slot since the check.
                if shared.tryAcquire(backend, limit: limit[backend]) {
                    table.active[backend] += 1
                    tier.strategy.connectionOpened(backend)
                    return .backend(backend)
                }
                full = true
            }
            if full { sawFull = true; break }
            // Every backend of this tier was tried: fall through to the next tier.
        }
        return sawFull ? .full : .unavailable
    }

    /// The connection reserved by `pick` ended (or its connect failed).
    public func release(_ backend: Int) {
        shared.release(backend)
        table.active[backend] -= 1
        strategy(of: backend)?.connectionClosed(backend)
    }

    /// A latency measured on a connection to `backend`, for strategies that balance on it.
    public func observe(latency: Microseconds, backend: Int, now: Microseconds) {
        strategy(of: backend)?.observe(latency: latency, backend: backend, now: now)
    }

    /// A connect time measured to `backend`, for strategies that balance on latency.
    public func observeConnect(latency: Microseconds, backend: Int, now: Microseconds) {
        strategy(of: backend)?.observeConnect(latency: latency, backend: backend, now: now)
    }

    // MARK: - Changes

    /// Health changed. A backend turning eligible starts its slow start at `now`, unless `slowStart` is
    /// false (its first turn at startup, when it is not recovering from anything).
    public func setEligible(_ backend: Int, _ value: Bool, now: Microseconds, slowStart ramp: Bool = true) {
        guard eligible[backend] != value else { return }
        eligible[backend] = value
        eligibleSince[backend] = value && ramp && rampsUp ? now : nil
        updateEffectiveWeight(backend, now: now)
        rebuild()
    }

    /// Changes a backend's configured weight at runtime.
    public func setWeight(_ backend: Int, _ weight: Int, now: Microseconds) {
        table.weight[backend] = weight
        updateEffectiveWeight(backend, now: now)
        rebuild()
    }

    /// Adds a backend at runtime; it slow-starts from `now`. Returns its index.
    @discardableResult
    public func add(_ backend: Backend, now: Microseconds) -> Int {
        let index = table.count
        shared.ensureCapacity(index + 1)
        table.weight.append(backend.weight)
        table.effectiveWeight.append(backend.weight * BackendTable.weightScale)
        table.active.append(0)
        table.identity.append(backend.identity)
        table.rank.append(index)
        priority.append(backend.priority)
        limit.append(backend.maxConnections ?? Int.max)
        eligible.append(true)
        removed.append(false)
        eligibleSince.append(rampsUp ? now : nil)
        updateEffectiveWeight(index, now: now)
        rebuild()
        return index
    }

    /// Removes a backend at runtime. Its index stays reserved so other indices do not move; open
    /// connections to it finish normally.
    public func remove(_ backend: Int) {
        guard !removed[backend] else { return }
        removed[backend] = true
        rebuild()
    }

    /// Lists a removed backend again (the same backend: its counts carry on); it slow-starts from `now`.
    public func restore(_ backend: Int, now: Microseconds) {
        guard removed[backend] else { return }
        removed[backend] = false
        if eligible[backend] && rampsUp { eligibleSince[backend] = now }
        updateEffectiveWeight(backend, now: now)
        rebuild()
    }

    public func isRemoved(_ backend: Int) -> Bool { removed[backend] }

    /// Changes a backend's weight, tier and connection limit at runtime; returns whether anything changed.
    /// Connections already open stay where they are.
    @discardableResult
    public func update(_ backend: Int, _ value: Backend, now: Microseconds) -> Bool {
        let newLimit = value.maxConnections ?? Int.max
        guard table.weight[backend] != value.weight || priority[backend] != value.priority || limit[backend] != newLimit
        else { return false }
        table.weight[backend] = value.weight
        priority[backend] = value.priority
        limit[backend] = newLimit
        updateEffectiveWeight(backend, now: now)
        rebuild()
        return true
    }

    /// The pool's backend order (positions in `order` become `BackendTable.rank`), which `first` fills in.
    public func setOrder(_ order: [Int]) {
        var rank = table.rank
        for (position, backend) in order.enumerated() where backend < rank.count { rank[backend] = position }
        guard rank != table.rank else { return }
        table.rank = rank
        rebuild()
    }

    /// Replaces the strategy (a reload changed `balance`): new picks use the new one; the tiers' old
    /// strategies and their state are dropped.
    public func replaceStrategy(_ make: @escaping (BackendTable) -> any BalancingStrategy, now: Microseconds) {
        makeStrategy = make
        weighted = make(table).usesEffectiveWeights
        tiers = []
        endRampsIfOff(now: now)
        rebuild()
    }

    /// Changes the slow-start window: ramps under way follow the new window (and end at once when it is
    /// off); backends that turn eligible later ramp over it.
    public func setSlowStart(_ window: Duration, now: Microseconds) {
        slowStart = window.inMicroseconds
        endRampsIfOff(now: now)
        for backend in 0..<table.count where eligibleSince[backend] != nil { updateEffectiveWeight(backend, now: now) }
        rebuild()
    }

    private func endRampsIfOff(now: Microseconds) {
        guard !rampsUp else { return }
        for backend in 0..<table.count where eligibleSince[backend] != nil {
            eligibleSince[backend] = nil
            updateEffectiveWeight(backend, now: now)
        }
    }

    /// Advances slow start; returns true if effective weights changed.
    @discardableResult
    public func tick(now: Microseconds) -> Bool {
        guard ramping else { return false }
        var changed = false
        for backend in 0..<table.count where eligibleSince[backend] != nil {
            changed = updateEffectiveWeight(backend, now: now) || changed
        }
        if changed { rebuild() }
        return changed
    }

    /// Whether a backend turning eligible ramps up at all.
    private var rampsUp: Bool { slowStart > 0 && weighted }

    /// Slow start factor: 10% at the start of the window, rising linearly to 100% at its end.
    public static func slowStartFactor(elapsed: Microseconds, window: Microseconds) -> Double {
        guard window > 0, elapsed < window else { return 1 }
        return 0.1 + 0.9 * Double(max(0, elapsed)) / Double(window)
    }

    @discardableResult
    private func updateEffectiveWeight(_ backend: Int, now: Microseconds) -> Bool {
        let full = table.weight[backend] * BackendTable.weightScale
        var value = full
        if let since = eligibleSince[backend] {
            let factor = Self.slowStartFactor(elapsed: now - since, window: slowStart)
            if factor >= 1 {
                eligibleSince[backend] = nil
            } else {
                value = max(1, Int((Double(full) * factor).rounded()))
            }
        }
        guard value != table.effectiveWeight[backend] else { return false }
        table.effectiveWeight[backend] = value
        return true
    }

    private func rebuild() {
        ramping = eligibleSince.contains { $0 != nil }
        var byPriority: [Int: [Int]] = [:]
        for backend in 0..<table.count where eligible[backend] && !removed[backend] {
            byPriority[priority[backend], default: []].append(backend)
        }
        let old = tiers
        tiers = byPriority.keys.sorted().map { level in
            let strategy = old.first { $0.priority == level }?.strategy ?? makeStrategy(table)
            strategy.rebuild(candidates: byPriority[level]!)
            return (level, byPriority[level]!, strategy)
        }
    }

    private func strategy(of backend: Int) -> (any BalancingStrategy)? {
        tiers.first { $0.priority == priority[backend] }?.strategy
    }

}
