@testable import Fulcrum
import FulcrumCore
import Logging
import Testing

private let second: Microseconds = 1_000_000

/// A pool of three backends on unused ports (nothing connects: `PoolHealth` is driven by hand).
private func pool(_ extra: String) throws -> FulcrumConfig.Pool {
    try ConfigLoader.load(text: """
    listeners: [{name: a, listen: 127.0.0.1:0, pool: app}]
    pools:
      app:
        backends: [127.0.0.1:1, 127.0.0.1:2, 127.0.0.1:3]
    \(extra)
    """, file: "pool.yaml").pools[0]
}

/// A worker's health view of one pool, recording the eligibility changes and breaker deadlines it reports.
private final class Harness {
    let health: PoolHealth
    var changes: [PoolHealth.Change] = []
    var deadlines: [Microseconds] = []

    init(_ extra: String) throws {
        let config = try pool(extra)
        health = PoolHealth(settings: config, seed: 1, logger: Logger(label: "test") { _ in SwiftLogNoOpLogHandler() })
        for backend in config.backends { health.addBackend(backend.address, state: backend.state, startingUp: true) }
        health.onRecompute = { [unowned self] in changes.append($0) }
        health.onBreakerOpened = { [unowned self] in deadlines.append($0) }
        health.recompute(now: 0)
    }

    /// The eligibility changes reported since the last call, as (backend, eligible, ramp up).
    func taken() -> [String] {
        defer { changes = [] }
        return changes.map { "\($0.backend) \($0.eligible ? "in" : "out")\($0.eligible && !$0.rampUp ? " (no ramp)" : "")" }
    }
}

@Suite struct PoolHealthTests {
    private let breaker = "    breaker: {consecutive_failures: 2, base_ejection: 1s, jitter: 0%, max_ejection_percent: 50%}"

    @Test func withoutActiveChecksTheEjectionEndsOnTheTimerAndATrialDecides() throws {
        let h = try Harness(breaker)
        #expect(h.taken().isEmpty)
        h.health.record(.connectRefused, backend: 1, trial: false, now: 0)
        h.health.record(.connectRefused, backend: 1, trial: false, now: 0)
        #expect(h.taken() == ["1 out"])
        #expect(h.deadlines == [second] && h.health.nextBreakerDeadline(after: 0) == second)
        // The worker's timer fires at the deadline: half-open, back in rotation for one trial.
        h.health.recompute(now: second)
        #expect(h.taken() == ["1 in"])
        #expect(h.health.breakers[1].state == .halfOpen)
        #expect(h.health.nextBreakerDeadline(after: second) == nil, "nothing left to wake up for")
        let closed = h.health.picked(0, now: second)
        let trial = h.health.picked(1, now: second)
        #expect(!closed && trial)
        #expect(h.taken() == ["1 out"], "its only trial is out")
        // The trial fails: ejected again, for twice as long.
        h.health.record(.connectRefused, backend: 1, trial: true, now: second)
        #expect(h.health.breakers[1].state == .open(until: 3 * second) && h.deadlines.last == 3 * second)
        #expect(h.taken().isEmpty)
        // Half-open again at the next deadline; this time the trial succeeds and the breaker closes.
        h.health.recompute(now: 3 * second)
        #expect(h.taken() == ["1 in"])
        let again = h.health.picked(1, now: 3 * second)
        #expect(again && h.taken() == ["1 out"])
        h.health.record(.success, backend: 1, trial: true, now: 3 * second)
        #expect(h.health.breakers[1].state == .closed && h.taken() == ["1 in"])
    }

    @Test func everyWayATrialEndsGivesItBack() throws {
        let h = try Harness(breaker)
        h.health.record(.connectTimeout, backend: 2, trial: false, now: 0)
        h.health.record(.connectTimeout, backend: 2, trial: false, now: 0)
        h.health.recompute(now: second)
        _ = h.taken()
        // No verdict (the client left first): the trial comes back and the backend admits again.
        #expect(h.health.picked(2, now: second))
        #expect(h.taken() == ["2 out"])
        h.health.noVerdict(backend: 2, trial: true, now: second)
        #expect(h.taken() == ["2 in"] && h.health.breakers[2].trialsInFlight == 0)
        // A connection without a trial ending without a verdict changes nothing.
        h.health.noVerdict(backend: 2, trial: false, now: second)
        #expect(h.taken().isEmpty)
        // Outcomes of connections without a trial are ignored while half-open, success or failure.
        #expect(h.health.picked(2, now: second))
        _ = h.taken()
        h.health.record(.success, backend: 2, trial: false, now: second)
        h.health.record(.resetBeforeFirstByte, backend: 2, trial: false, now: second)
        #expect(h.health.breakers[2].state == .halfOpen && h.taken().isEmpty)
        // The trial's own success closes it.
        h.health.record(.success, backend: 2, trial: true, now: second)
        #expect(h.health.breakers[2].state == .closed && h.taken() == ["2 in"])
        #expect(h.health.breakers.allSatisfy { $0.trialsInFlight == 0 })
    }

    @Test func anEjectionOverButNotYetSeenByTheTimerIsNoticedWhenPicked() throws {
        // Kept in rotation by the max-ejection cap, the backend is picked after its ejection ended.
        let h = try Harness("    breaker: {consecutive_failures: 1, base_ejection: 1s, jitter: 0%, max_ejection_percent: 0%}")
        h.health.record(.connectRefused, backend: 0, trial: false, now: 0)
        #expect(h.taken().isEmpty, "capped: stays eligible")
        let early = h.health.picked(0, now: second / 2)
        #expect(!early, "still ejected: no trial")
        let due = h.health.picked(0, now: second)
        #expect(due && h.health.breakers[0].state == .halfOpen)
    }

    @Test func aBackendsFirstPassingCheckAtStartupDoesNotSlowStartButARecoveryDoes() throws {
        let h = try Harness("""
            health: {check: tcp, interval: 1s}
            slow_start: 4s
            panic_threshold: 50%
        """)
        #expect(h.taken() == ["0 out", "1 out", "2 out"], "unknown: waiting for the first check")
        #expect(!h.health.panic, "not yet checked is not unhealthy")
        _ = h.health.checked(0, state: .up, passed: true, now: 100_000)
        _ = h.health.checked(1, state: .up, passed: true, now: 150_000)
        #expect(h.taken() == ["0 in (no ramp)", "1 in (no ramp)"])
        // Seen down before it was ever up: it is recovering, and ramps.
        _ = h.health.checked(2, state: .down, passed: false, now: 200_000)
        _ = h.health.checked(2, state: .up, passed: true, now: 300_000)
        #expect(h.taken() == ["2 in"])
        // Down and up again later: ramps too.
        _ = h.health.checked(0, state: .down, passed: false, now: 400_000)
        _ = h.health.checked(0, state: .up, passed: true, now: 500_000)
        #expect(h.taken() == ["0 out", "0 in"])
        #expect(!h.health.panic)
    }
}
