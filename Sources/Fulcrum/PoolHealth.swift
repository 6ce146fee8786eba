import EventLoop
import FulcrumCore
import Logging

/// One worker's health view of one pool: a circuit breaker per backend fed by this worker's connections,
/// the active-check results shared by the health checker, and the operator states from the config. It
/// derives eligibility through `Eligibility` and hands it to the pool's balancer.
///
/// Connections are reported by backend index only: a connection that `picked` says took a half-open trial
/// must later report exactly once, with `record(…, trial: true, …)` or `noVerdict(…, trial: true, …)`.
final class PoolHealth {
    /// A change of a backend's eligibility, for the balancer.
    struct Change {
        var backend: Int
        var eligible: Bool
        /// Whether a backend turning eligible should slow-start: false for its first turn at startup.
        var rampUp: Bool
    }

    let pool: FulcrumConfig.Pool
    private let shared: SharedHealth?
    private(set) var breakers: [CircuitBreaker]
    private var active: [ActiveHealth.State]
    private var seenSuccesses: [Int]
    private var eligible: [Bool]
    /// Backends whose active checks have given no verdict yet: their first turn eligible belongs to
    /// startup, not to a recovery, so it does not slow-start.
    private var startingUp: [Bool]
    private(set) var panic = false
    var retryBudget: RetryBudget
    var onRecompute: ((Change) -> Void)?
    /// A breaker opened until the given time: the worker arms its timer for it.
    var onBreakerOpened: ((Microseconds) -> Void)?
    private var logger: Logger

    init(pool: FulcrumConfig.Pool, shared: SharedHealth?, seed: UInt64, logger: Logger) {
        self.pool = pool
        self.shared = shared
        self.logger = logger
        self.logger[metadataKey: "pool"] = "\(pool.name)"
        let resilience = pool.resilience
        breakers = pool.backends.indices.map { i in
            CircuitBreaker(settings: resilience.breaker.settings, random: FastRandom(seed: seed &+ UInt64(i)))
        }
        active = pool.backends.indices.map { shared?.state($0) ?? .unknown }
        seenSuccesses = Array(repeating: 0, count: pool.backends.count)
        eligible = Array(repeating: true, count: pool.backends.count)
        startingUp = active.map { $0 == .unknown && resilience.health != nil }
        retryBudget = RetryBudget(ratio: resilience.retryBudgetRatio, minPerSecond: resilience.retryBudgetMinPerSecond)
    }

    var hasActiveChecks: Bool { pool.resilience.health != nil }

    private var breakersEnabled: Bool { pool.resilience.breaker.enabled }

    /// Moves breakers whose ejection is over to half-open, then derives eligibility from the three signals
    /// and reports every change through `onRecompute`.
    func recompute(now: Microseconds) {
        if breakersEnabled {
            for i in breakers.indices where breakers[i].advance(now: now) {
                logger.info("breaker half-open: ejection time over, letting trial connections through", metadata: [
                    "backend": "\(pool.backends[i].address)", "trials": "\(breakers[i].settings.halfOpenTrials)",
                ])
            }
        }
        let assumeHealthy = pool.resilience.health?.assumeHealthy ?? false
        let signals = pool.backends.indices.map { i in
            HealthSignals(active: active[i] == .unknown && assumeHealthy ? .up : active[i],
                          breakerAdmits: !breakersEnabled || breakers[i].wouldAdmit(now: now),
                          operatorState: pool.backends[i].state, activeChecks: hasActiveChecks)
        }
        let result = Eligibility.compute(signals, maxEjectionPercent: pool.resilience.breaker.maxEjectionPercent,
                                         panicThreshold: pool.resilience.panicThreshold)
        if result.panic != panic {
            panic = result.panic
            if panic {
                logger.critical("PANIC: fewer than \(Int(pool.resilience.panicThreshold))% of backends are healthy, balancing across all enabled backends")
            } else {
                logger.notice("panic over: enough backends are healthy again")
            }
        }
        for i in result.ejectionCapped where eligible[i] == false || breakers[i].isOpen {
            logger.warning("breaker open but kept in rotation: max_ejection_percent reached", metadata: [
                "backend": "\(pool.backends[i].address)", "max_ejection_percent": "\(pool.resilience.breaker.maxEjectionPercent)",
            ])
        }
        for i in pool.backends.indices where result.eligible[i] != eligible[i] {
            eligible[i] = result.eligible[i]
            let rampUp = !startingUp[i]
            if eligible[i] { startingUp[i] = false }
            onRecompute?(Change(backend: i, eligible: eligible[i], rampUp: rampUp))
        }
    }

    /// The earliest moment after `now` at which an open breaker ends its ejection, for the worker's timer.
    /// Ejections already over are not returned: `recompute` moves them to half-open.
    func nextBreakerDeadline(after now: Microseconds) -> Microseconds? {
        var next: Microseconds?
        for breaker in breakers {
            if case .open(let until) = breaker.state, until > now, until < (next ?? .max) { next = until }
        }
        return next
    }

    /// A connection to `backend` was just reserved. Returns true when it took one of a half-open breaker's
    /// trials; the connection must then report once with `trial: true` (`record` or `noVerdict`).
    func picked(_ backend: Int, now: Microseconds) -> Bool {
        guard breakersEnabled, breakers[backend].state != .closed else { return false }
        // An ejection that is over but not yet noticed by the timer (the backend was kept in rotation by the
        // max-ejection cap or panic): move it, and log it, first.
        if case .open(let until) = breakers[backend].state, now >= until { recompute(now: now) }
        guard breakers[backend].state == .halfOpen, breakers[backend].admit(now: now) else { return false }
        if !breakers[backend].wouldAdmit(now: now) { recompute(now: now) }
        return true
    }

    /// Feeds one connection outcome to the backend's breaker; `trial` is what `picked` returned for it.
    func record(_ outcome: CircuitBreaker.Outcome, backend: Int, trial: Bool, now: Microseconds) {
        guard breakersEnabled else { return }
        let before = breakers[backend].state
        let admitted = breakers[backend].wouldAdmit(now: now)
        let changed = breakers[backend].record(outcome, trial: trial, now: now)
        if changed {
            let address = "\(pool.backends[backend].address)"
            switch breakers[backend].state {
            case .open(let until):
                logger.warning("breaker opened: backend ejected", metadata: [
                    "backend": "\(address)", "reason": "\(outcome.rawValue)",
                    "ejected_for": "\(Duration.microseconds(until - now).configText)",
                    "ejections": "\(breakers[backend].ejections)", "from": "\(before)",
                ])
                onBreakerOpened?(until)
            case .closed:
                logger.notice("breaker closed: backend back in rotation", metadata: ["backend": "\(address)"])
            case .halfOpen:
                break
            }
        }
        if changed || breakers[backend].wouldAdmit(now: now) != admitted { recompute(now: now) }
    }

    /// A connection to `backend` ended without a verdict on the backend (the client left first, a hedge
    /// lost, a drain, an idle timeout before any answer). A trial it held is given back, which lets the
    /// next connection try the backend.
    func noVerdict(backend: Int, trial: Bool, now: Microseconds) {
        guard trial, breakersEnabled else { return }
        let admitted = breakers[backend].wouldAdmit(now: now)
        breakers[backend].abandonTrial()
        if !admitted && breakers[backend].wouldAdmit(now: now) { recompute(now: now) }
    }

    /// Reads the health checker's latest results. Returns the backends that just went down.
    func refreshActive(now: Microseconds) -> [Int] {
        guard let shared else { return [] }
        var wentDown: [Int] = []
        var changed = false
        for i in pool.backends.indices {
            let state = shared.state(i)
            if state != active[i] {
                if state == .down { wentDown.append(i) }
                // A backend seen down before it was ever up is recovering when it comes up: it ramps.
                if state == .down || active[i] != .unknown { startingUp[i] = false }
                active[i] = state
                changed = true
            }
            let successes = shared.successCount(i)
            if successes != seenSuccesses[i] {
                seenSuccesses[i] = successes
                if breakers[i].isOpen {
                    breakers[i].probeSucceeded()
                    changed = true
                }
            }
        }
        if changed { recompute(now: now) }
        return wentDown
    }
}
