/// The passive health of one backend: a circuit breaker fed by the outcome of every connection.
///
/// ```
///            consecutive failures ≥ N, or failure ratio ≥ R over the window (≥ min requests)
///   CLOSED ───────────────────────────────────────────────────────────────────────▶ OPEN
///     ▲                                                                              │
///     │ trial succeeds              ejection time elapsed, or an active probe succeeds│
///     │                                                                              ▼
///     └──────────────────────────────────── HALF-OPEN ◀──────────────────────────────┘
///                       trial fails: OPEN again, with the next (doubled) ejection time
/// ```
///
/// The ejection time is `baseEjection × 2^k`, capped at `maxEjection`, plus up to `jitter` of itself, where
/// k counts recent ejections; k drops by one for every `baseEjection` spent closed without an ejection.
/// Half-open admits `halfOpenTrials` real connections at a time. Time is passed in; jitter comes from the
/// generator the breaker is given, so tests replay exactly.
public struct CircuitBreaker: Sendable {
    public struct Settings: Equatable, Sendable {
        public var consecutiveFailures: Int
        /// Open when failures ÷ outcomes in the window reach this ratio; nil disables the ratio rule.
        public var failureRatio: Double?
        public var minRequests: Int
        public var window: Microseconds
        public var baseEjection: Microseconds
        public var maxEjection: Microseconds
        public var halfOpenTrials: Int
        /// Extra ejection time, as a fraction of it, drawn at random (0.1 = up to 10% longer).
        public var jitter: Double

        public init(consecutiveFailures: Int = 5, failureRatio: Double? = nil, minRequests: Int = 20,
                    window: Duration = .seconds(10), baseEjection: Duration = .seconds(10),
                    maxEjection: Duration = .seconds(300), halfOpenTrials: Int = 1, jitter: Double = 0.1) {
            self.consecutiveFailures = consecutiveFailures
            self.failureRatio = failureRatio
            self.minRequests = minRequests
            self.window = window.inMicroseconds
            self.baseEjection = baseEjection.inMicroseconds
            self.maxEjection = maxEjection.inMicroseconds
            self.halfOpenTrials = halfOpenTrials
            self.jitter = jitter
        }
    }

    public enum State: Equatable, Sendable {
        case closed
        case open(until: Microseconds)
        case halfOpen
    }

    public enum Outcome: String, Sendable {
        case success
        case connectRefused = "connect refused"
        case connectTimeout = "connect timeout"
        case resetBeforeFirstByte = "closed before first byte"
        case firstByteTimeout = "first byte timeout"
    }

    public let settings: Settings
    public private(set) var state: State = .closed
    /// Recent ejections, the exponent of the backoff.
    public private(set) var ejections = 0
    public private(set) var consecutive = 0
    private var trialsInFlight = 0
    private var lastDecay: Microseconds = 0
    private var random: FastRandom
    // Sliding window of outcomes in one-second buckets.
    private var buckets: [(second: Int64, successes: Int, failures: Int)]

    public init(settings: Settings, random: FastRandom) {
        self.settings = settings
        self.random = random
        buckets = Array(repeating: (-1, 0, 0), count: max(1, Int((settings.window + 999_999) / 1_000_000)))
    }

    /// Whether a new connection may go to this backend now. Moves open to half-open when the ejection
    /// time is over; in half-open, takes one of the trial slots (give it back with `record`).
    public mutating func admit(now: Microseconds) -> Bool {
        switch state {
        case .closed:
            return true
        case .open(let until):
            guard now >= until else { return false }
            state = .halfOpen
            trialsInFlight = 0
            return admit(now: now)
        case .halfOpen:
            guard trialsInFlight < settings.halfOpenTrials else { return false }
            trialsInFlight += 1
            return true
        }
    }

    /// Whether the breaker would let a connection through now, without taking a trial slot.
    public func wouldAdmit(now: Microseconds) -> Bool {
        switch state {
        case .closed: return true
        case .open(let until): return now >= until
        case .halfOpen: return trialsInFlight < settings.halfOpenTrials
        }
    }

    public var isOpen: Bool {
        if case .open = state { return true }
        return false
    }

    /// Feeds one connection outcome. Returns true when this outcome changed the state.
    @discardableResult
    public mutating func record(_ outcome: Outcome, now: Microseconds, allowEjection: Bool = true) -> Bool {
        decay(now: now)
        let failed = outcome != .success
        count(failed: failed, now: now)
        switch state {
        case .halfOpen:
            trialsInFlight = max(0, trialsInFlight - 1)
            if failed {
                eject(now: now)
            } else {
                state = .closed
                consecutive = 0
                lastDecay = now
            }
            return true
        case .open:
            return false
        case .closed:
            guard failed else {
                consecutive = 0
                return false
            }
            consecutive += 1
            guard allowEjection, consecutive >= settings.consecutiveFailures || ratioExceeded(now: now) else { return false }
            eject(now: now)
            return true
        }
    }

    /// An active probe succeeded: an open breaker need not wait out its ejection time.
    public mutating func probeSucceeded() {
        if case .open = state {
            state = .halfOpen
            trialsInFlight = 0
        }
    }

    /// How long the next ejection would last before jitter: base × 2^ejections, capped.
    public func ejectionTime(after ejections: Int) -> Microseconds {
        let shift = min(ejections, 30)
        return min(settings.maxEjection, settings.baseEjection << Int64(shift))
    }

    private mutating func eject(now: Microseconds) {
        var duration = ejectionTime(after: ejections)
        if settings.jitter > 0 {
            let extra = Double(duration) * settings.jitter * Double(random.next() >> 11) / Double(1 << 53)
            duration += Microseconds(extra)
        }
        ejections += 1
        consecutive = 0
        trialsInFlight = 0
        state = .open(until: now + duration)
        lastDecay = now
    }

    /// While closed, every `baseEjection` without an ejection forgets one past ejection.
    private mutating func decay(now: Microseconds) {
        guard state == .closed, ejections > 0, settings.baseEjection > 0 else { return }
        let periods = Int((now - lastDecay) / settings.baseEjection)
        guard periods > 0 else { return }
        ejections = max(0, ejections - periods)
        lastDecay += Microseconds(periods) * settings.baseEjection
    }

    private mutating func count(failed: Bool, now: Microseconds) {
        let second = now / 1_000_000
        let slot = Int(second % Int64(buckets.count))
        if buckets[slot].second != second { buckets[slot] = (second, 0, 0) }
        if failed { buckets[slot].failures += 1 } else { buckets[slot].successes += 1 }
    }

    private func ratioExceeded(now: Microseconds) -> Bool {
        guard let ratio = settings.failureRatio else { return false }
        let oldest = now / 1_000_000 - Int64(buckets.count) + 1
        var total = 0, failures = 0
        for bucket in buckets where bucket.second >= oldest {
            total += bucket.successes + bucket.failures
            failures += bucket.failures
        }
        return total >= settings.minRequests && Double(failures) >= ratio * Double(total)
    }
}
