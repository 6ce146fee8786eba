/// The passive health of one backend: a circuit breaker fed by the outcome of every connection.
///
/// ```
///            consecutive failures ≥ N, or failure ratio ≥ R over the window (≥ min requests)
///   CLOSED ───────────────────────────────────────────────────────────────────────▶ OPEN
///     ▲                                                                              │
///     │ a trial succeeds          ejection time over (advance), or an active probe succeeds
///     │                                                                              ▼
///     └──────────────────────────────────── HALF-OPEN ◀──────────────────────────────┘
///                       a trial fails: OPEN again, with the next (doubled) ejection time
/// ```
///
/// The ejection time is `baseEjection × 2^k`, capped at `maxEjection`, plus up to `jitter` of itself, where
/// k counts recent ejections; k drops by one for every `baseEjection` spent closed without an ejection.
///
/// OPEN → HALF-OPEN is driven by time: `advance(now:)` (or `admit(now:)`) makes the move once the ejection
/// is over, whether or not a connection asks. Half-open admits `halfOpenTrials` connections at a time; each
/// admitted connection holds a trial until it reports once: `record(_:trial: true, now:)` with its outcome,
/// or `abandonTrial()` when it ended without a verdict. Only a trial's outcome closes or re-opens a
/// half-open breaker; outcomes of other connections (opened before the ejection, or let through by the
/// max-ejection cap or panic) count while closed and are ignored while open or half-open. Closing starts a
/// fresh failure window. Time is passed in; jitter comes from the generator the breaker is given, so tests
/// replay exactly.
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

    public private(set) var settings: Settings
    public private(set) var state: State = .closed
    /// Recent ejections, the exponent of the backoff.
    public private(set) var ejections = 0
    public private(set) var consecutive = 0
    /// Connections holding a half-open trial that have not reported yet.
    public private(set) var trialsInFlight = 0
    private var lastDecay: Microseconds = 0
    private var random: FastRandom
    // Sliding window of outcomes in one-second buckets.
    private var buckets: [(second: Int64, successes: Int, failures: Int)]

    public init(settings: Settings, random: FastRandom) {
        self.settings = settings
        self.random = random
        buckets = Array(repeating: (-1, 0, 0), count: max(1, Int((settings.window + 999_999) / 1_000_000)))
    }

    /// Moves an open breaker whose ejection time is over to half-open. Returns true when it did.
    @discardableResult
    public mutating func advance(now: Microseconds) -> Bool {
        guard case .open(let until) = state, now >= until else { return false }
        state = .halfOpen
        return true
    }

    /// Whether a new connection may go to this backend now. Moves open to half-open when the ejection
    /// time is over; in half-open, takes one of the trial slots (give it back by reporting the connection's
    /// outcome with `trial: true`, or with `abandonTrial()`).
    public mutating func admit(now: Microseconds) -> Bool {
        advance(now: now)
        switch state {
        case .closed:
            return true
        case .open:
            return false
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

    /// Feeds one connection outcome; `trial` says whether the connection holds a half-open trial (taken by
    /// `admit`), which this gives back. Returns true when this outcome changed the state.
    ///
    /// - CLOSED: every outcome counts for the consecutive and ratio rules; enough failures open the breaker.
    /// - HALF-OPEN: only a trial's outcome counts: a success closes, a failure opens again for the next,
    ///   doubled, ejection time. Outcomes of other connections are ignored.
    /// - OPEN: ignored.
    @discardableResult
    public mutating func record(_ outcome: Outcome, trial: Bool, now: Microseconds) -> Bool {
        if trial { trialsInFlight = max(0, trialsInFlight - 1) }
        decay(now: now)
        let failed = outcome != .success
        switch state {
        case .closed:
            count(failed: failed, now: now)
            guard failed else {
                consecutive = 0
                return false
            }
            consecutive += 1
            guard consecutive >= settings.consecutiveFailures || ratioExceeded(now: now) else { return false }
            eject(now: now)
            return true
        case .halfOpen:
            guard trial else { return false }
            if failed {
                eject(now: now)
            } else {
                close(now: now)
            }
            return true
        case .open:
            return false
        }
    }

    /// A connection that held a trial ended without a verdict (the client left first, a hedge lost, a drain
    /// or idle timeout before any answer): gives its trial slot back and changes nothing else.
    public mutating func abandonTrial() {
        trialsInFlight = max(0, trialsInFlight - 1)
    }

    /// New settings (a reload changed `breaker`): the state, the ejection under way and the ejection
    /// history carry on; the failure window restarts when its length changed.
    public mutating func replaceSettings(_ new: Settings) {
        guard new != settings else { return }
        if new.window != settings.window {
            buckets = Array(repeating: (-1, 0, 0), count: max(1, Int((new.window + 999_999) / 1_000_000)))
        }
        settings = new
    }

    /// An active probe succeeded: an open breaker need not wait out its ejection time.
    public mutating func probeSucceeded() {
        if case .open = state { state = .halfOpen }
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
        state = .open(until: now + duration)
        lastDecay = now
    }

    /// A trial succeeded: back in rotation with a fresh failure window, so failures from before the
    /// ejection cannot trip the ratio rule again at once.
    private mutating func close(now: Microseconds) {
        state = .closed
        consecutive = 0
        lastDecay = now
        for i in buckets.indices { buckets[i] = (-1, 0, 0) }
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
