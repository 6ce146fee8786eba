import FulcrumCore
import Testing

private let second: Microseconds = 1_000_000

private func breaker(_ settings: CircuitBreaker.Settings = .init(jitter: 0)) -> CircuitBreaker {
    CircuitBreaker(settings: settings, random: FastRandom(seed: 3))
}

@Suite struct CircuitBreakerTests {
    @Test func opensAfterConsecutiveFailuresAndASuccessResetsTheCount() {
        var b = breaker()
        for _ in 0..<4 { b.record(.connectRefused, trial: false, now: 0) }
        b.record(.success, trial: false, now: 0)
        for _ in 0..<4 { b.record(.connectTimeout, trial: false, now: 0) }
        #expect(b.state == .closed)
        let r1 = b.record(.resetBeforeFirstByte, trial: false, now: 0)
        #expect(r1)
        #expect(b.state == .open(until: 10 * second))
        let r2 = b.admit(now: 5 * second)
        #expect(!r2)
    }

    @Test func opensOnFailureRatioOnlyWithEnoughRequests() {
        var b = breaker(.init(consecutiveFailures: 100, failureRatio: 0.5, minRequests: 10, jitter: 0))
        for i in 0..<9 { b.record(i % 2 == 0 ? .connectRefused : .success, trial: false, now: 0) }
        #expect(b.state == .closed, "9 outcomes are below min_requests")
        b.record(.connectRefused, trial: false, now: 0)
        #expect(b.isOpen, "6 failures of 10 reach 50%")
    }

    @Test func ratioWindowForgetsOldOutcomes() {
        var b = breaker(.init(consecutiveFailures: 100, failureRatio: 0.5, minRequests: 4, window: .seconds(10), jitter: 0))
        for _ in 0..<3 { b.record(.connectRefused, trial: false, now: 0) }
        for _ in 0..<3 { b.record(.success, trial: false, now: 11 * second) }
        b.record(.connectRefused, trial: false, now: 11 * second)
        #expect(b.state == .closed, "the old failures left the window: 1 of 4")
    }

    @Test func halfOpenAdmitsLimitedTrialsThenClosesOnSuccess() {
        var b = breaker(.init(halfOpenTrials: 2, jitter: 0))
        for _ in 0..<5 { b.record(.connectRefused, trial: false, now: 0) }
        #expect(!b.wouldAdmit(now: 10 * second - 1))
        let r3 = b.admit(now: 10 * second)
        #expect(r3)
        #expect(b.state == .halfOpen)
        let r4 = b.admit(now: 10 * second)
        #expect(r4)
        let r5 = b.admit(now: 10 * second)
        #expect(!r5, "only two trials at a time")
        b.record(.success, trial: true, now: 10 * second)
        #expect(b.state == .closed)
    }

    @Test func failedTrialReopensWithDoubledBackoffCappedAtMax() {
        var b = breaker(.init(baseEjection: .seconds(10), maxEjection: .seconds(60), jitter: 0))
        var now: Microseconds = 0
        for _ in 0..<5 { b.record(.connectRefused, trial: false, now: now) }
        var expected: [Microseconds] = []
        var seen: [Microseconds] = []
        for k in 0..<5 {
            guard case .open(let until) = b.state else { Issue.record("not open"); return }
            seen.append(until - now)
            expected.append(min(60, 10 << k) * second)
            now = until
            let r6 = b.admit(now: now)
            #expect(r6)
            b.record(.connectTimeout, trial: true, now: now)
        }
        #expect(seen == expected, "10s, 20s, 40s, then capped at 60s")
    }

    @Test func jitterStaysWithinBounds() {
        for seed in 0..<200 {
            var b = CircuitBreaker(settings: .init(baseEjection: .seconds(10), jitter: 0.1), random: FastRandom(seed: UInt64(seed)))
            for _ in 0..<5 { b.record(.connectRefused, trial: false, now: 0) }
            guard case .open(let until) = b.state else { Issue.record("not open"); return }
            #expect(until >= 10 * second && until <= 11 * second)
        }
    }

    @Test func ejectionCountDecaysWhileHealthy() {
        var b = breaker()
        for _ in 0..<5 { b.record(.connectRefused, trial: false, now: 0) }
        _ = b.admit(now: 10 * second)
        b.record(.success, trial: true, now: 10 * second)
        #expect(b.ejections == 1)
        // One base ejection period later without trouble, the past ejection is forgotten.
        b.record(.success, trial: false, now: 20 * second)
        #expect(b.ejections == 0)
        for _ in 0..<5 { b.record(.connectRefused, trial: false, now: 21 * second) }
        #expect(b.state == .open(until: 31 * second), "back to the base ejection time")
    }

    @Test func aSuccessfulProbeEndsTheEjectionEarly() {
        var b = breaker()
        for _ in 0..<5 { b.record(.connectRefused, trial: false, now: 0) }
        b.probeSucceeded()
        #expect(b.state == .halfOpen)
        let r7 = b.admit(now: 1)
        #expect(r7)
        let r8 = b.admit(now: 1)
        #expect(!r8)
    }
}

@Suite struct ActiveHealthTests {
    @Test func riseAndFall() {
        var h = ActiveHealth(rise: 2, fall: 3)
        #expect(h.state == .unknown)
        let r9 = h.record(success: true)
        #expect(r9 == .up, "an unknown backend is up on its first success")
        let r10 = h.record(success: false, error: "refused")
        #expect(r10 == nil)
        let r11 = h.record(success: false)
        #expect(r11 == nil)
        let r12 = h.record(success: true)
        #expect(r12 == nil, "a success resets the failure count")
        let r13 = h.record(success: false)
        #expect(r13 == nil)
        let r14 = h.record(success: false)
        #expect(r14 == nil)
        let r15 = h.record(success: false, error: "timed out")
        #expect(r15 == .down)
        #expect(h.lastError == "timed out")
        let r16 = h.record(success: true)
        #expect(r16 == nil)
        let r17 = h.record(success: true)
        #expect(r17 == .up)
    }

    @Test func unknownFailsToDownAtOnceAndCanWaitForRise() {
        var h = ActiveHealth(rise: 3, fall: 3)
        let r18 = h.record(success: false)
        #expect(r18 == .down)
        var strict = ActiveHealth(rise: 3, fall: 3, upOnFirstSuccess: false)
        let r19 = strict.record(success: true)
        #expect(r19 == nil)
        let r20 = strict.record(success: true)
        #expect(r20 == nil)
        let r21 = strict.record(success: true)
        #expect(r21 == .up)
    }

    @Test func probeScheduleUsesTheDownIntervalAndJitter() {
        var s = ProbeSchedule(interval: .seconds(2), downInterval: .milliseconds(500), jitter: 0.1, random: FastRandom(seed: 9))
        var ups: [Microseconds] = []
        for _ in 0..<500 { ups.append(s.nextDelay(for: .up)) }
        #expect(ups.allSatisfy { $0 >= 1_800_000 && $0 <= 2_200_000 })
        #expect(Set(ups).count > 100, "spread, not constant")
        for _ in 0..<100 {
            let d = s.nextDelay(for: .down)
            #expect(d >= 450_000 && d <= 550_000)
        }
        var fixed = ProbeSchedule(interval: .seconds(2), downInterval: .seconds(1), jitter: 0, random: FastRandom(seed: 1))
        #expect(fixed.nextDelay(for: .unknown) == 1_000_000)
    }
}

@Suite struct EligibilityTests {
    @Test func operatorStateActiveChecksAndBreakerAllCount() {
        let result = Eligibility.compute([
            HealthSignals(active: .up, activeChecks: true),
            HealthSignals(active: .down, activeChecks: true),
            HealthSignals(active: .unknown, activeChecks: true),
            HealthSignals(active: .up, breakerAdmits: false, activeChecks: true),
            HealthSignals(active: .up, operatorState: .drain, activeChecks: true),
            HealthSignals(active: .up, operatorState: .disabled, activeChecks: true),
            HealthSignals(active: .unknown, activeChecks: false),
        ], maxEjectionPercent: 100, panicThreshold: 0)
        #expect(result.eligible == [true, false, false, false, false, false, true])
        #expect(!result.panic)
    }

    @Test func theBreakerEjectsAtMostMaxEjectionPercent() {
        let signals = (0..<4).map { HealthSignals(breakerAdmits: $0 == 0) }
        let result = Eligibility.compute(signals, maxEjectionPercent: 50, panicThreshold: 0)
        #expect(result.eligible.filter { !$0 }.count == 2, "half of four may be ejected")
        #expect(result.ejectionCapped.count == 1)
        // Active checks are not capped: a backend that is down stays out.
        let down = (0..<4).map { HealthSignals(active: $0 == 0 ? .up : .down, activeChecks: true) }
        #expect(Eligibility.compute(down, maxEjectionPercent: 50, panicThreshold: 0).eligible == [true, false, false, false])
    }

    @Test func panicBalancesAcrossAllEnabledBackends() {
        var signals = (0..<4).map { HealthSignals(active: $0 == 0 ? .up : .down, activeChecks: true) }
        signals.append(HealthSignals(active: .up, operatorState: .disabled, activeChecks: true))
        let calm = Eligibility.compute(signals, maxEjectionPercent: 50, panicThreshold: 20)
        #expect(!calm.panic, "one of four healthy is 25%, above 20%")
        let panic = Eligibility.compute(signals, maxEjectionPercent: 50, panicThreshold: 30)
        #expect(panic.panic)
        #expect(panic.eligible == [true, true, true, true, false], "never a disabled backend")
    }

    @Test func backendsNotYetCheckedDoNotCausePanic() {
        // At startup every checked backend is unknown: nothing is eligible yet, but nothing is unhealthy.
        let starting = (0..<3).map { _ in HealthSignals(active: .unknown, activeChecks: true) }
        let start = Eligibility.compute(starting, maxEjectionPercent: 50, panicThreshold: 50)
        #expect(!start.panic)
        #expect(start.eligible == [false, false, false], "unknown backends wait for their first check")
        // One down, two still unknown: they may yet come up, so still no panic.
        let firstAnswer = [HealthSignals(active: .down, activeChecks: true)] + starting.dropFirst()
        #expect(!Eligibility.compute(firstAnswer, maxEjectionPercent: 50, panicThreshold: 50).panic)
        // Two down and one unknown: even if it comes up, one of three is below 50%.
        let twoDown = [HealthSignals(active: .down, activeChecks: true), HealthSignals(active: .down, activeChecks: true),
                       HealthSignals(active: .unknown, activeChecks: true)]
        let result = Eligibility.compute(twoDown, maxEjectionPercent: 50, panicThreshold: 50)
        #expect(result.panic && result.eligible == [true, true, true])
    }
}

@Suite struct RetryBudgetTests {
    @Test func retriesAreBoundedByRatioPlusFloor() {
        var budget = RetryBudget(ratio: 0.2, minPerSecond: 1, window: .seconds(10))
        for _ in 0..<100 { budget.recordRequest(now: 0) }
        var allowed = 0
        for _ in 0..<100 where budget.tryRetry(now: 0) { allowed += 1 }
        #expect(allowed == 30, "20% of 100 plus a floor of 1/s over 10s")
    }

    @Test func theBudgetRefillsAsTheWindowMoves() {
        var budget = RetryBudget(ratio: 0, minPerSecond: 2, window: .seconds(2))
        let first = (0..<5).map { _ in budget.tryRetry(now: 0) }
        #expect(first == [true, true, true, true, false], "a floor of 2/s over 2s")
        let later = budget.tryRetry(now: 1 * second)
        #expect(!later)
        let refilled = budget.tryRetry(now: 2 * second)
        #expect(refilled, "the first second's retries left the window")
    }
}

@Suite struct HealthConfigTests {
    @Test func healthBreakerAndRetryOptionsRoundTrip() throws {
        let config = try ConfigLoader.load(text: """
        listeners: [{name: a, listen: 127.0.0.1:7000, pool: redis}]
        pools:
          redis:
            backends:
              - 127.0.0.1:6379
              - {address: 127.0.0.1:6380, state: drain}
            health:
              check: send_expect
              send: "PING\\\\r\\\\n"
              expect: "+PONG"
              interval: 500ms
              down_interval: 200ms
              timeout: 300ms
              rise: 3
              fall: 2
              jitter: 5%
            breaker:
              consecutive_failures: 3
              failure_ratio: 50%
              base_ejection: 2s
              max_ejection: 1m
              max_ejection_percent: 34%
            panic_threshold: 30%
            retry_budget: {ratio: 10%, min_per_second: 5}
            replay: {max_bytes: 16KiB}
            first_byte_timeout: 2s
            on_backend_down: close
        """, file: "health.yaml")
        let pool = config.pools[0]
        let r = pool.resilience
        #expect(r.health?.check == .sendExpect(send: Array("PING\r\n".utf8), expect: .prefix(Array("+PONG".utf8))))
        #expect(r.health?.interval == .milliseconds(500) && r.health?.downInterval == .milliseconds(200))
        #expect(r.health?.rise == 3 && r.health?.fall == 2 && r.health?.jitter == 0.05)
        #expect(r.breaker.settings.consecutiveFailures == 3 && r.breaker.settings.failureRatio == 0.5)
        #expect(r.breaker.settings.baseEjection == 2 * second && r.breaker.settings.maxEjection == 60 * second)
        #expect(r.breaker.maxEjectionPercent == 34 && r.panicThreshold == 30)
        #expect(r.retryBudgetRatio == 0.1 && r.retryBudgetMinPerSecond == 5)
        #expect(r.replayMaxBytes == 16384 && r.firstByteTimeout == .seconds(2) && r.onBackendDown == .close)
        #expect(pool.backends[1].state == .drain)
    }

    @Test func httpCheckAndDefaults() throws {
        let config = try ConfigLoader.load(text: """
        listeners: [{name: a, listen: 127.0.0.1:7000, pool: web}]
        pools:
          web:
            backends: [127.0.0.1:8080]
            health: {check: http, path: /healthz, status: [200, 204-206]}
        """, file: "http.yaml")
        let r = config.pools[0].resilience
        #expect(r.health?.check == .http(path: "/healthz", host: nil, statuses: [200...200, 204...206]))
        #expect(r.health?.interval == .seconds(2) && r.health?.timeout == .seconds(1) && r.health?.rise == 2 && r.health?.fall == 3)
        #expect(r.breaker.enabled && r.breaker.settings.consecutiveFailures == 5 && r.breaker.maxEjectionPercent == 50)
        #expect(r.replayMaxBytes == nil && r.panicThreshold == 0 && r.retryBudgetRatio == 0.2)
    }

    @Test func healthErrorsNameTheKeyAndFix() {
        do {
            _ = try ConfigLoader.load(text: """
            listeners: [{name: a, listen: 127.0.0.1:7000, pool: web}]
            pools:
              web:
                backends: [{address: 127.0.0.1:8080, state: sleeping}]
                health: {check: http, expect: "+PONG", status: 700}
                breaker: {base_ejection: 1m, max_ejection: 10s}
                on_backend_down: explode
            """, file: "bad.yaml")
            Issue.record("expected errors")
        } catch {
            let messages = error.diagnostics.map(\.message)
            #expect(messages.contains("'sleeping' is not a backend state"))
            #expect(messages.contains("check 'http' takes no option 'expect'"))
            #expect(messages.contains("'700' is not an HTTP status or range"))
            #expect(messages.contains("max_ejection is shorter than base_ejection"))
            #expect(messages.contains("'explode' is not valid"))
        }
    }
}
