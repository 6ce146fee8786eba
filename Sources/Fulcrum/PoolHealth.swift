import EventLoop
import FulcrumCore
import Logging

/// One worker's health view of one pool: a circuit breaker per backend fed by this worker's connections,
/// the active-check results shared by the health checker, and the operator states from the config. It
/// derives eligibility through `Eligibility` and hands it to the pool's balancer.
final class PoolHealth {
    let pool: FulcrumConfig.Pool
    private let shared: SharedHealth?
    private(set) var breakers: [CircuitBreaker]
    private var active: [ActiveHealth.State]
    private var seenSuccesses: [Int]
    private var eligible: [Bool]
    private(set) var panic = false
    var retryBudget: RetryBudget
    var onRecompute: ((Int, Bool) -> Void)?
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
        retryBudget = RetryBudget(ratio: resilience.retryBudgetRatio, minPerSecond: resilience.retryBudgetMinPerSecond)
    }

    var hasActiveChecks: Bool { pool.resilience.health != nil }

    /// Derives eligibility from the three signals and reports every change through `onRecompute`.
    func recompute(now: Microseconds) {
        let assumeHealthy = pool.resilience.health?.assumeHealthy ?? false
        let signals = pool.backends.indices.map { i in
            HealthSignals(active: active[i] == .unknown && assumeHealthy ? .up : active[i],
                          breakerAdmits: !pool.resilience.breaker.enabled || breakers[i].wouldAdmit(now: now),
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
            onRecompute?(i, eligible[i])
        }
    }

    /// The earliest moment an open breaker ends its ejection, for the worker's timer.
    func nextBreakerDeadline() -> Microseconds? {
        breakers.compactMap { if case .open(let until) = $0.state { return until } else { return nil } }.min()
    }

    /// A connection to `backend` was just reserved: a half-open breaker gives it one of its trials.
    func picked(_ backend: Int, now: Microseconds) -> Bool {
        guard pool.resilience.breaker.enabled, breakers[backend].state == .halfOpen else { return false }
        _ = breakers[backend].admit(now: now)
        if !breakers[backend].wouldAdmit(now: now) { recompute(now: now) }
        return true
    }

    func noVerdict(backend: Int, trial: Bool, now: Microseconds) {}

    /// Feeds one connection outcome to the backend's breaker.
    func record(_ outcome: CircuitBreaker.Outcome, backend: Int, trial: Bool, now: Microseconds) {
        guard pool.resilience.breaker.enabled else { return }
        let before = breakers[backend].state
        guard breakers[backend].record(outcome, now: now) else { return }
        let address = "\(pool.backends[backend].address)"
        switch breakers[backend].state {
        case .open(let until):
            logger.warning("breaker opened: backend ejected", metadata: [
                "backend": "\(address)", "reason": "\(outcome.rawValue)",
                "ejected_for": "\(Duration.microseconds(until - now).configText)",
                "ejections": "\(breakers[backend].ejections)", "from": "\(before)",
            ])
        case .closed:
            logger.notice("breaker closed: backend back in rotation", metadata: ["backend": "\(address)"])
        case .halfOpen:
            break
        }
        recompute(now: now)
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
