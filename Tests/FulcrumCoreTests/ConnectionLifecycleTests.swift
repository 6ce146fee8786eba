import FulcrumCore
import Testing

private typealias L = ConnectionLifecycle

/// Plays the engine's part for a lifecycle: performs its decisions the way `Session` does, answers picks
/// from a script or at random, and checks the invariants on every settlement.
private struct Harness {
    var lifecycle: L
    /// Per attempt (keyed by backend; each attempt gets a fresh backend number): slots taken and released,
    /// verdicts given, and whether a half-open trial was taken.
    var taken: [Int: Bool] = [:]
    var released: [Int: Int] = [:]
    var verdicts: [Int: Int] = [:]
    var outcomes: [Int: CircuitBreaker.Outcome] = [:]
    var trials: Set<Int> = []
    var nextBackend = 0
    /// Connect legs in flight: leg -> backend.
    var legs: [L.Leg: Int] = [:]
    /// The backend whose socket the pump holds, and every backend the pump ever held after the first byte.
    var attached: Int?
    var answeredBy: Int?
    var closed: L.Ending?
    var finished = 0
    var queued = false
    var pendingDetach = false
    var actions: [L.Action] = []
    var violations: [String] = []
    /// Answers to the next picks; random when empty.
    var script: [L.PickResult] = []
    var random: FastRandom

    init(maxAttempts: Int = 3, hedging: Bool = true, seed: UInt64 = 1) {
        lifecycle = L(settings: .init(maxAttempts: maxAttempts, hedging: hedging))
        random = FastRandom(seed: seed)
    }

    mutating func send(_ event: L.Event) {
        var next: L.Event? = event
        while let event = next {
            let decision = lifecycle.handle(event)
            settle(decision.first)
            settle(decision.second)
            actions.append(decision.action)
            next = perform(decision.action)
        }
    }

    mutating func settle(_ settlement: L.Settlement?) {
        guard let s = settlement else { return }
        if taken[s.backend] == nil { violations.append("settled backend \(s.backend) that was never picked") }
        if s.trial != trials.contains(s.backend) { violations.append("trial flag of \(s.backend) changed") }
        if let verdict = s.verdict {
            verdicts[s.backend, default: 0] += 1
            if case .outcome(let o) = verdict { outcomes[s.backend] = o }
        }
        if s.releasesSlot {
            released[s.backend, default: 0] += 1
            if released[s.backend]! > 1 { violations.append("slot of \(s.backend) released twice") }
        }
    }

    mutating func perform(_ action: L.Action) -> L.Event? {
        if answeredBy != nil {
            switch action {
            case .replay, .attach, .connect, .pick, .pickHedge:
                violations.append("\(action) after the first byte")
            default: break
            }
        }
        switch action {
        case .none, .proceed:
            return nil
        case .pick, .pickHedge:
            let result: L.PickResult
            if !script.isEmpty {
                result = script.removeFirst()
            } else {
                switch random.below(6) {
                case 0: result = .full
                case 1: result = .unavailable
                default: result = .backend(0, trial: random.below(3) == 0)
                }
            }
            guard case .backend(_, let trial) = result else { return .picked(result) }
            let backend = nextBackend
            nextBackend += 1
            taken[backend] = true
            if trial { trials.insert(backend) }
            return .picked(.backend(backend, trial: trial))
        case .connect(let leg, let backend):
            queued = false
            legs[leg] = backend
            return nil
        case .enqueue:
            queued = true
            return nil
        case .attach(let leg):
            if let a = attached, a != legs[leg] { violations.append("attached \(legs[leg]!) while \(a) still attached") }
            attached = legs[leg]
            legs = [:]
            return nil
        case .replay:
            attached = nil
            pendingDetach = true
            return nil
        case .close(let ending):
            closed = ending
            legs = [:]
            queued = false
            // The pump reports its own end when closed.
            return .ended(ending)
        case .finish:
            finished += 1
            legs = [:]
            queued = false
            return nil
        }
    }

    /// A random event that the engine could deliver in the current situation (and sometimes one it could not).
    mutating func randomEvent() -> L.Event {
        if pendingDetach {
            pendingDetach = false
            return .detached
        }
        let leg: L.Leg = random.below(2) == 0 ? .primary : .hedge
        let failures: [L.ConnectFailure] = [.refused, .timedOut, .unreachable, .local]
        let upstream: [L.UpstreamFailure] = [.closed, .reset, .firstByteTimeout]
        let endings: [L.Ending] = [.completed, .clientError, .upstreamError, .idleTimeout, .backendDown, .shutdown]
        switch random.below(20) {
        case 0...2: return .connected(leg)
        case 3...5: return .connectFailed(leg, failures[random.below(failures.count)])
        case 6: return .hedgeDue
        case 7...8: return attached != nil ? .firstByte : .slotFreed
        case 9...10:
            return .upstreamFailed(upstream[random.below(3)], clientFinished: random.below(2) == 0,
                                   canReplay: random.below(2) == 0)
        case 11: return .queueTimedOut
        case 12: return .queueFull
        case 13: return .retryDenied
        case 14: return .ended(endings[random.below(endings.count)])
        default: return .slotFreed
        }
    }

    mutating func note(firstByte event: L.Event) {
        if event == .firstByte, lifecycle.state == .forwarding, !lifecycle.answered {
            answeredBy = attached
        }
    }

    /// Every attempt: one slot released and one verdict; the connection finished once.
    func checkEnd() -> [String] {
        var problems = violations
        for backend in taken.keys.sorted() {
            if released[backend, default: 0] != 1 { problems.append("backend \(backend): \(released[backend, default: 0]) releases") }
            if verdicts[backend, default: 0] != 1 { problems.append("backend \(backend): \(verdicts[backend, default: 0]) verdicts") }
        }
        if finished < 1 { problems.append("never finished") }
        return problems
    }
}

@Suite struct ConnectionLifecycleTests {
    @Test func aPlainConnectionPicksConnectsForwardsAndReleasesOnce() {
        var h = Harness()
        h.script = [.backend(0, trial: false)]
        h.send(.accepted)
        #expect(h.actions == [.pick(retry: false), .connect(.primary, backend: 0)])
        h.send(.connected(.primary))
        #expect(h.lifecycle.state == .forwarding)
        h.send(.firstByte)
        #expect(h.outcomes[0] == .success)
        #expect(h.released[0] == nil, "the slot is held while forwarding")
        h.send(.ended(.completed))
        #expect(h.released[0] == 1)
        #expect(h.checkEnd().isEmpty)
    }

    @Test func connectFailuresAreBlamedAndRetriedUntilAttemptsRunOut() {
        var h = Harness(maxAttempts: 2)
        h.script = [.backend(0, trial: false), .backend(0, trial: false)]
        h.send(.accepted)
        h.send(.connectFailed(.primary, .refused))
        #expect(h.outcomes[0] == .connectRefused)
        #expect(h.actions.contains(.pick(retry: true)))
        h.send(.connectFailed(.primary, .timedOut))
        #expect(h.outcomes[1] == .connectTimeout)
        #expect(h.closed == .noBackend)
        #expect(h.checkEnd().isEmpty)
    }

    @Test func aLocalResourceErrorIsNotTheBackendsFault() {
        var h = Harness()
        h.script = [.backend(0, trial: true)]
        h.send(.accepted)
        h.send(.connectFailed(.primary, .local))
        #expect(h.outcomes.isEmpty, "no breaker outcome")
        #expect(h.verdicts[0] == 1, "the half-open trial is given back")
        #expect(h.closed == .localError, "and the client is not retried elsewhere")
        #expect(h.checkEnd().isEmpty)
    }

    @Test func theBackendClosingAfterTheClientDidIsNoVerdictAndNoReplay() {
        var h = Harness()
        h.script = [.backend(0, trial: true)]
        h.send(.accepted)
        h.send(.connected(.primary))
        h.send(.upstreamFailed(.closed, clientFinished: true, canReplay: true))
        #expect(h.actions.last == .proceed)
        #expect(h.outcomes.isEmpty)
        #expect(h.verdicts[0] == 1)
        h.send(.ended(.completed))
        #expect(h.checkEnd().isEmpty)
    }

    @Test func aResetAfterTheClientsHalfCloseIsStillAFailureAndReplays() {
        var h = Harness()
        h.script = [.backend(0, trial: false), .backend(0, trial: false)]
        h.send(.accepted)
        h.send(.connected(.primary))
        h.send(.upstreamFailed(.reset, clientFinished: true, canReplay: true))
        #expect(h.outcomes[0] == .resetBeforeFirstByte)
        #expect(h.actions.last == .replay)
        h.send(.detached)
        #expect(h.lifecycle.state == .connecting)
        h.send(.connected(.primary))
        h.send(.firstByte)
        h.send(.ended(.completed))
        #expect(h.checkEnd().isEmpty)
    }

    @Test func noReplayWithoutKeptBytesOrAttempts() {
        var h = Harness(maxAttempts: 1)
        h.script = [.backend(0, trial: false)]
        h.send(.accepted)
        h.send(.connected(.primary))
        h.send(.upstreamFailed(.firstByteTimeout, clientFinished: false, canReplay: true))
        #expect(h.actions.last == .proceed, "no attempt left")
        #expect(h.outcomes[0] == .firstByteTimeout)
        h.send(.ended(.upstreamError))
        #expect(h.checkEnd().isEmpty)
    }

    @Test func theHedgeLoserIsReleasedWithoutBlame() {
        var h = Harness()
        h.script = [.backend(0, trial: false), .backend(0, trial: true)]
        h.send(.accepted)
        h.send(.hedgeDue)
        #expect(h.actions.last == .connect(.hedge, backend: 1))
        h.send(.connected(.hedge))
        #expect(h.actions.last == .attach(.hedge))
        #expect(h.released[0] == 1 && h.outcomes[0] == nil, "the slow primary is abandoned, not failed")
        h.send(.firstByte)
        #expect(h.outcomes[1] == .success, "the hedge's trial gets the verdict")
        h.send(.ended(.clientError))
        #expect(h.checkEnd().isEmpty)
    }

    @Test func aFailedPrimaryWaitsForTheRacingHedge() {
        var h = Harness()
        h.script = [.backend(0, trial: false), .backend(0, trial: false)]
        h.send(.accepted)
        h.send(.hedgeDue)
        h.send(.connectFailed(.primary, .refused))
        #expect(h.actions.last == L.Action.none, "no retry while the hedge races")
        h.send(.connected(.hedge))
        #expect(h.actions.last == .attach(.hedge))
        h.send(.ended(.completed))
        #expect(h.checkEnd().isEmpty)
    }

    @Test func aWaitingClientSpendsNoRetryOnAFullPickAndTimesOut() {
        var h = Harness()
        h.script = [.full, .full, .full]
        h.send(.accepted)
        #expect(h.actions.last == .enqueue)
        h.send(.slotFreed)
        h.send(.slotFreed)
        #expect(h.actions.filter { $0 == .pick(retry: true) }.isEmpty, "a first-time client is no retry")
        h.send(.queueTimedOut)
        #expect(h.closed == .queueTimeout)
        #expect(h.checkEnd().isEmpty)
    }

    @Test func everyEndingWhileConnectingGivesTrialsBack() {
        for ending in [L.Ending.clientError, .shutdown, .backendDown, .idleTimeout] {
            var h = Harness()
            h.script = [.backend(0, trial: true), .backend(0, trial: true)]
            h.send(.accepted)
            h.send(.hedgeDue)
            h.send(.ended(ending))
            #expect(h.verdicts[0] == 1 && h.verdicts[1] == 1)
            #expect(h.outcomes.isEmpty)
            #expect(h.checkEnd().isEmpty, "\(ending)")
        }
    }

    /// Random event sequences, including events that arrive late or out of place: every invariant holds.
    @Test func invariantsHoldOverRandomEventSequences() {
        var seen: [String: Int] = [:]
        for seed in UInt64(1)...3_000 {
            var h = Harness(maxAttempts: 1 + Int(seed % 4), hedging: seed % 3 != 0, seed: seed)
            h.send(.accepted)
            for _ in 0..<40 where h.finished == 0 {
                let event = h.randomEvent()
                h.note(firstByte: event)
                h.send(event)
            }
            if h.finished == 0 { h.send(.ended(.shutdown)) }
            let problems = h.checkEnd()
            #expect(problems.isEmpty, "seed \(seed): \(problems)")
            if !problems.isEmpty { break }
            for action in h.actions {
                switch action {
                case .replay: seen["replay", default: 0] += 1
                case .attach(.hedge): seen["hedge won", default: 0] += 1
                case .enqueue: seen["queued", default: 0] += 1
                case .close(let ending): seen["\(ending)", default: 0] += 1
                default: break
                }
            }
            if h.answeredBy != nil { seen["answered", default: 0] += 1 }
            if !h.trials.isEmpty { seen["trial", default: 0] += 1 }
        }
        // The sequences reach every path, so the invariants were checked on each.
        for path in ["replay", "hedge won", "queued", "answered", "trial", "noBackend", "localError", "queueTimeout",
                     "retryBudget", "queueFull"] {
            #expect(seen[path, default: 0] > 10, "path \(path) reached \(seen[path, default: 0]) times")
        }
    }
}
