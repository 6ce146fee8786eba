import EventLoop
import FulcrumCore
import Logging

/// One worker's health view of one pool: a circuit breaker per backend fed by this worker's connections,
/// the active-check results the main loop sends, and the operator states in effect. It derives eligibility
/// through `Eligibility` and hands it to the pool's balancer.
///
/// Backends are known by their slot (see `LivePool`); a slot no longer listed is never eligible but keeps
/// its breaker and check state, in case it is listed again. A connection that `picked` says took a
/// half-open trial must later report exactly once, with `record(…, trial: true, …)` or
/// `noVerdict(…, trial: true, …)`.
final class PoolHealth {
    /// A change of a backend's eligibility, for the balancer.
    struct Change {
        var backend: Int
        var eligible: Bool
        /// Whether a backend turning eligible should slow-start: false for its first turn at startup.
        var rampUp: Bool
    }

    private(set) var settings: FulcrumConfig.Pool
    private(set) var addresses: [SocketAddress] = []
    private var operatorStates: [OperatorState] = []
    private var listed: [Bool] = []
    private(set) var breakers: [CircuitBreaker] = []
    private var active: [ActiveHealth.State] = []
    private var eligible: [Bool] = []
    /// Backends whose active checks have given no verdict yet since the pool started: their first turn
    /// eligible belongs to startup, not to a recovery, so it does not slow-start.
    private var startingUp: [Bool] = []
    private(set) var panic = false
    var retryBudget: RetryBudget
    var onRecompute: ((Change) -> Void)?
    /// A breaker opened until the given time: the worker arms its timer for it.
    var onBreakerOpened: ((Microseconds) -> Void)?
    /// A backend's breaker changed state: the worker reports it to the main loop.
    var onBreakerChanged: ((Int, BreakerReport) -> Void)?
    /// The pool entered (true) or left panic: the worker's metrics show it.
    var onPanicChanged: ((Bool) -> Void)?
    private let seed: UInt64
    private var logger: Logger

    init(settings: FulcrumConfig.Pool, seed: UInt64, logger: Logger) {
        self.settings = settings
        self.seed = seed
        self.logger = logger
        self.logger[metadataKey: "pool"] = "\(settings.name)"
        retryBudget = RetryBudget(ratio: settings.resilience.retryBudgetRatio,
                                  minPerSecond: settings.resilience.retryBudgetMinPerSecond)
    }

    var hasActiveChecks: Bool { settings.resilience.health != nil }

    private var breakersEnabled: Bool { settings.resilience.breaker.enabled }

    var count: Int { addresses.count }

    // MARK: - Changes from the main loop

    /// A new slot. `startingUp`: it belongs to the pool's start (no slow start for its first turn).
    func addBackend(_ address: SocketAddress, state: OperatorState, startingUp: Bool) {
        let slot = addresses.count
        addresses.append(address)
        operatorStates.append(state)
        listed.append(true)
        breakers.append(CircuitBreaker(settings: settings.resilience.breaker.settings,
                                       random: FastRandom(seed: seed &+ UInt64(slot))))
        active.append(.unknown)
        // Not eligible until `recompute` says so: the balancer learns it from the change.
        eligible.append(true)
        self.startingUp.append(startingUp && hasActiveChecks)
    }

    /// A slot's operator state or listing changed; `recompute` applies it.
    func update(_ slot: Int, state: OperatorState, listed isListed: Bool) -> Bool {
        guard operatorStates[slot] != state || listed[slot] != isListed else { return false }
        operatorStates[slot] = state
        listed[slot] = isListed
        return true
    }

    /// A backend that came back as a new incarnation (gone for good, then listed again) starts over:
    /// unknown to the checks, its breaker closed with no ejection history, ramping when it turns eligible.
    func reset(_ slot: Int) {
        breakers[slot] = CircuitBreaker(settings: settings.resilience.breaker.settings,
                                        random: FastRandom(seed: seed &+ UInt64(slot) &+ 0x9E37))
        active[slot] = .unknown
        startingUp[slot] = false
    }

    /// New settings for new connections: breaker thresholds, ejection cap, panic threshold, checks on or
    /// off, retry budget. Breaker states and ejection history carry on.
    func replaceSettings(_ new: FulcrumConfig.Pool) {
        let old = settings.resilience
        settings = new
        let resilience = new.resilience
        if resilience.breaker.settings != old.breaker.settings {
            for i in breakers.indices { breakers[i].replaceSettings(resilience.breaker.settings) }
        }
        if resilience.retryBudgetRatio != old.retryBudgetRatio || resilience.retryBudgetMinPerSecond != old.retryBudgetMinPerSecond {
            retryBudget = RetryBudget(ratio: resilience.retryBudgetRatio, minPerSecond: resilience.retryBudgetMinPerSecond)
        }
        if (resilience.health == nil) != (old.health == nil) {
            // Checks turned on for a pool that serves: its backends stay in rotation until their first
            // check says otherwise. Turned off: their verdicts no longer count.
            for i in active.indices { active[i] = resilience.health == nil ? .unknown : .up }
        }
    }

    // MARK: - Eligibility

    /// Moves breakers whose ejection is over to half-open, then derives eligibility from the three signals
    /// and reports every change through `onRecompute`.
    func recompute(now: Microseconds) {
        if breakersEnabled {
            for i in breakers.indices where breakers[i].advance(now: now) {
                logger.info("breaker half-open: ejection time over, letting trial connections through", metadata: [
                    "backend": "\(addresses[i])", "trials": "\(breakers[i].settings.halfOpenTrials)",
                ])
                onBreakerChanged?(i, BreakerReport(state: .halfOpen, since: now, reason: "ejection time over"))
            }
        }
        let resilience = settings.resilience
        let assumeHealthy = resilience.health?.assumeHealthy ?? false
        let slots = addresses.indices.filter { listed[$0] }
        let signals = slots.map { i in
            HealthSignals(active: active[i] == .unknown && assumeHealthy ? .up : active[i],
                          breakerAdmits: !breakersEnabled || breakers[i].wouldAdmit(now: now),
                          operatorState: operatorStates[i], activeChecks: hasActiveChecks)
        }
        let result = Eligibility.compute(signals, maxEjectionPercent: resilience.breaker.maxEjectionPercent,
                                         panicThreshold: resilience.panicThreshold)
        if result.panic != panic {
            panic = result.panic
            onPanicChanged?(panic)
            if panic {
                logger.critical("PANIC: fewer than \(Int(resilience.panicThreshold))% of backends are healthy, balancing across all enabled backends")
            } else {
                logger.notice("panic over: enough backends are healthy again")
            }
        }
        for position in result.ejectionCapped where eligible[slots[position]] == false || breakers[slots[position]].isOpen {
            logger.warning("breaker open but kept in rotation: max_ejection_percent reached", metadata: [
                "backend": "\(addresses[slots[position]])", "max_ejection_percent": "\(resilience.breaker.maxEjectionPercent)",
            ])
        }
        var updated = Array(repeating: false, count: addresses.count)
        for (position, slot) in slots.enumerated() { updated[slot] = result.eligible[position] }
        for i in addresses.indices where updated[i] != eligible[i] {
            eligible[i] = updated[i]
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

    // MARK: - Connections

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
        let consecutive = breakers[backend].consecutive + 1
        let admitted = breakers[backend].wouldAdmit(now: now)
        let changed = breakers[backend].record(outcome, trial: trial, now: now)
        if changed {
            let address = "\(addresses[backend])"
            switch breakers[backend].state {
            case .open(let until):
                logger.warning("breaker opened: backend ejected", metadata: [
                    "backend": "\(address)", "reason": "\(outcome.rawValue)",
                    "ejected_for": "\(Duration.microseconds(until - now).configText)",
                    "ejections": "\(breakers[backend].ejections)", "from": "\(before)",
                ])
                let settings = breakers[backend].settings
                let why: String
                if before == .halfOpen {
                    why = "half-open trial failed (\(outcome.rawValue))"
                } else if consecutive >= settings.consecutiveFailures {
                    why = "\(consecutive) consecutive failures (\(outcome.rawValue))"
                } else {
                    why = "failure ratio reached \(Int((settings.failureRatio ?? 0) * 100))% over \(Duration.microseconds(settings.window).configText) (\(outcome.rawValue))"
                }
                onBreakerChanged?(backend, BreakerReport(state: .open, since: now, reason: "\(why), ejected for \(Duration.microseconds(until - now).configText)"))
                onBreakerOpened?(until)
            case .closed:
                logger.notice("breaker closed: backend back in rotation", metadata: ["backend": "\(address)"])
                onBreakerChanged?(backend, BreakerReport(state: .closed, since: now, reason: "half-open trial succeeded"))
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

    // MARK: - Active checks

    /// The health checker's verdict on a backend: its state, and whether this probe passed (a pass lets
    /// an open breaker try at once). Returns true when the backend just went down.
    func checked(_ slot: Int, state: ActiveHealth.State, passed: Bool, now: Microseconds) -> Bool {
        guard slot < count else { return false }
        var changed = false
        var wentDown = false
        if state != active[slot] {
            wentDown = state == .down && !passed
            // A backend seen down before it was ever up is recovering when it comes up: it ramps.
            if state == .down || active[slot] != .unknown { startingUp[slot] = false }
            active[slot] = state
            changed = true
        }
        if passed && breakers[slot].isOpen {
            breakers[slot].probeSucceeded()
            onBreakerChanged?(slot, BreakerReport(state: .halfOpen, since: now, reason: "active check passed"))
            changed = true
        }
        if changed { recompute(now: now) }
        return wentDown
    }
}
