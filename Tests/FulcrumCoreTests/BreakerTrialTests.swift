import FulcrumCore
import Testing

private let second: Microseconds = 1_000_000

/// A breaker opened at 0 for 10 s (base ejection 10 s, no jitter), with `trials` half-open trials.
private func ejected(trials: Int = 1, consecutive: Int = 3) -> CircuitBreaker {
    var b = CircuitBreaker(settings: .init(consecutiveFailures: consecutive, baseEjection: .seconds(10),
                                           halfOpenTrials: trials, jitter: 0),
                           random: FastRandom(seed: 5))
    for _ in 0..<consecutive { b.record(.connectRefused, trial: false, now: 0) }
    return b
}

/// The time-driven OPEN → HALF-OPEN move and the accounting of half-open trials over every way a trial can end.
@Suite struct BreakerTrialTests {
    @Test func theEjectionEndsByTimeAloneWithoutAnyConnectionAsking() {
        var b = ejected()
        #expect(b.state == .open(until: 10 * second))
        let early = b.advance(now: 10 * second - 1)
        #expect(!early && b.isOpen)
        let due = b.advance(now: 10 * second)
        #expect(due && b.state == .halfOpen)
        let again = b.advance(now: 11 * second)
        #expect(!again, "only an open breaker moves")
        #expect(b.wouldAdmit(now: 11 * second))
    }

    @Test func halfOpenLetsOnlyTheConfiguredTrialsThrough() {
        var b = ejected(trials: 2)
        b.advance(now: 10 * second)
        let admitted = (0..<4).map { _ in b.admit(now: 10 * second) }
        #expect(admitted == [true, true, false, false])
        #expect(b.trialsInFlight == 2 && !b.wouldAdmit(now: 10 * second))
    }

    @Test func aSuccessfulTrialClosesAndGivesItsSlotBack() {
        var b = ejected()
        let took = b.admit(now: 10 * second)
        #expect(took && b.trialsInFlight == 1)
        let changed = b.record(.success, trial: true, now: 10 * second)
        #expect(changed && b.state == .closed && b.trialsInFlight == 0)
    }

    @Test func aFailedTrialReEjectsForTwiceAsLong() {
        var b = ejected()
        _ = b.admit(now: 10 * second)
        let changed = b.record(.connectRefused, trial: true, now: 10 * second)
        #expect(changed && b.state == .open(until: 30 * second), "10 s, then 20 s")
        #expect(b.trialsInFlight == 0)
        // Failures seen while open change nothing, and the next ejection ends by time again.
        let ignored = b.record(.connectRefused, trial: false, now: 20 * second)
        #expect(!ignored && b.state == .open(until: 30 * second))
        b.advance(now: 30 * second)
        #expect(b.state == .halfOpen)
    }

    @Test func anAbandonedTrialGivesItsSlotBackAndChangesNothingElse() {
        var b = ejected()
        _ = b.admit(now: 10 * second)
        #expect(!b.wouldAdmit(now: 10 * second))
        b.abandonTrial()
        #expect(b.state == .halfOpen && b.trialsInFlight == 0 && b.wouldAdmit(now: 10 * second))
        let next = b.admit(now: 11 * second)
        #expect(next, "the next connection takes the trial")
        b.abandonTrial()
        b.abandonTrial()
        #expect(b.trialsInFlight == 0, "never below zero")
    }

    @Test func outcomesOfConnectionsWithoutATrialAreIgnoredWhileHalfOpen() {
        var b = ejected()
        _ = b.admit(now: 10 * second)
        // Connections opened before the ejection, or let through by the max-ejection cap, end now.
        let failure = b.record(.resetBeforeFirstByte, trial: false, now: 10 * second)
        let success = b.record(.success, trial: false, now: 10 * second)
        #expect(!failure && !success)
        #expect(b.state == .halfOpen && b.trialsInFlight == 1, "the trial is still out")
        // Only the trial's own outcome decides.
        b.record(.success, trial: true, now: 11 * second)
        #expect(b.state == .closed)
    }

    @Test func aTrialEndingAfterAnotherTrialDecidedOnlyGivesItsSlotBack() {
        var b = ejected(trials: 2)
        _ = b.admit(now: 10 * second)
        _ = b.admit(now: 10 * second)
        b.record(.connectRefused, trial: true, now: 10 * second)
        #expect(b.isOpen && b.trialsInFlight == 1)
        let late = b.record(.success, trial: true, now: 11 * second)
        #expect(!late && b.isOpen && b.trialsInFlight == 0, "a late success does not close an open breaker")
        // Next half-open: both trials are free again; one closes, the other then counts as a plain outcome.
        b.advance(now: 30 * second)
        _ = b.admit(now: 30 * second)
        _ = b.admit(now: 30 * second)
        b.record(.success, trial: true, now: 30 * second)
        #expect(b.state == .closed && b.trialsInFlight == 1)
        let plain = b.record(.connectRefused, trial: true, now: 30 * second)
        #expect(!plain && b.state == .closed && b.consecutive == 1 && b.trialsInFlight == 0)
    }

    @Test func closingStartsAFreshFailureWindow() {
        var b = CircuitBreaker(settings: .init(consecutiveFailures: 100, failureRatio: 0.5, minRequests: 4,
                                               window: .seconds(60), baseEjection: .seconds(1), jitter: 0),
                               random: FastRandom(seed: 1))
        for _ in 0..<4 { b.record(.connectRefused, trial: false, now: 0) }
        #expect(b.state == .open(until: second))
        _ = b.admit(now: second)
        b.record(.success, trial: true, now: second)
        // The four failures from before the ejection are still within the 60 s window, but do not count.
        for _ in 0..<3 { b.record(.success, trial: false, now: 2 * second) }
        b.record(.connectRefused, trial: false, now: 2 * second)
        #expect(b.state == .closed, "1 failure of 4 since the breaker closed")
    }

    @Test func aProbeSuccessLeavesTrialsInFlightCounted() {
        var b = ejected()
        _ = b.admit(now: 10 * second)
        b.record(.connectRefused, trial: true, now: 10 * second)
        _ = b.admit(now: 10 * second)   // open: no trial
        b.probeSucceeded()
        #expect(b.state == .halfOpen && b.trialsInFlight == 0)
        let took = b.admit(now: 10 * second)
        let another = b.admit(now: 10 * second)
        #expect(took && !another)
    }
}
