/// The life of one proxied client connection, as a pure state machine: events in, decisions out. The
/// engine performs each decision (pick, connect, attach the connected socket to the byte pump, record a
/// breaker verdict, release a slot, close the client) and feeds back what happened. No I/O, no clock:
/// every ending is decided here, so every ending is accounted for the same way.
///
/// ```
///   accepted ──▶ PICKING ──backend──▶ CONNECTING ──connected──▶ FORWARDING ──first byte──▶ answered
///                 │   ▲                 │    ▲ │ slow: a hedge       │                         │
///           full  ▼   │ slot freed      │    │ ▼ leg races          │ failed before its first │
///                WAITING                │  (two legs, first to     │ byte, replayable        │
///                 │ timeout / full      │   connect wins)          ▼                         │
///                 │         failed, attempts left: PICKING ◀── REPLAYING (upstream dropped)  │
///                 ▼                     ▼ no attempt left                                    ▼
///               ENDED ◀─────────────────┴────────────────────────────────────────────── pump ended
/// ```
///
/// Invariants (unit-tested over random event sequences):
/// - every attempt that took a backend slot releases it exactly once (`Settlement.releasesSlot`);
/// - every attempt gets exactly one verdict: an outcome for its backend's breaker, or `.noVerdict` when the
///   backend is not to blame (the client left first, the hedge lost, a drain, a local resource error), so a
///   half-open trial is always given back;
/// - nothing is replayed, and no other upstream is attached, once a byte of the answer was forwarded, so
///   the client never receives bytes from two backends.
///
/// A phase that reads from the client before the pick (a PROXY protocol header, a TLS ClientHello for SNI
/// routing) fits between `accepted` and `PICKING`.
public struct ConnectionLifecycle: Sendable {
    public struct Settings: Equatable, Sendable {
        /// Connect attempts (first try, retries, replays and hedges) one client may use.
        public var maxAttempts: Int
        /// Race a second leg when a connect is slow (`hedge_after`).
        public var hedging: Bool

        public init(maxAttempts: Int, hedging: Bool = false) {
            self.maxAttempts = max(1, maxAttempts)
            self.hedging = hedging
        }
    }

    /// One of the at most two connects racing for a client.
    public enum Leg: Int, Sendable { case primary = 0, hedge = 1 }

    /// Why a connect did not succeed, as far as blame goes.
    public enum ConnectFailure: Equatable, Sendable {
        case refused
        case timedOut
        case unreachable
        /// The proxy's own resources ran out (EMFILE, ENFILE, EADDRNOTAVAIL, ENOBUFS): not the backend's fault.
        case local
    }

    /// How an established upstream failed before its first byte.
    public enum UpstreamFailure: Equatable, Sendable {
        case closed
        case reset
        case firstByteTimeout
    }

    /// How a client's connection ended.
    public enum Ending: Equatable, Sendable {
        case noBackend
        case queueFull
        case queueTimeout
        case retryBudget
        case localError
        case completed
        case clientError
        case upstreamError
        case idleTimeout
        case backendDown
        case shutdown
    }

    public enum PickResult: Equatable, Sendable {
        /// A backend, with one of its slots taken; `trial` when its breaker gave this connection a half-open trial.
        case backend(Int, trial: Bool)
        case full
        case unavailable
    }

    public enum Event: Equatable, Sendable {
        case accepted
        /// The answer to a `.pick` or `.pickHedge` decision.
        case picked(PickResult)
        /// The retry budget refused a `.pick(retry: true)` or `.pickHedge`.
        case retryDenied
        /// The answer to `.enqueue` when the queue had no room.
        case queueFull
        /// A waiting client may have a slot now: pick again.
        case slotFreed
        case queueTimedOut
        /// The primary connect is still pending after `hedge_after`.
        case hedgeDue
        case connected(Leg)
        case connectFailed(Leg, ConnectFailure)
        /// The backend's first byte was forwarded to the client.
        case firstByte
        /// The upstream failed before its first byte. `clientFinished`: the client's end-of-file had been
        /// forwarded to it. `canReplay`: the client's bytes are all kept and the retry budget has room.
        case upstreamFailed(UpstreamFailure, clientFinished: Bool, canReplay: Bool)
        /// After `.replay`: the failed upstream is gone.
        case detached
        /// The byte pump (or the engine) ended the connection.
        case ended(Ending)
    }

    public enum Verdict: Equatable, Sendable {
        case outcome(CircuitBreaker.Outcome)
        /// No verdict: the backend is neither credited nor blamed; a half-open trial is given back.
        case noVerdict
    }

    /// What to account for one attempt now.
    public struct Settlement: Equatable, Sendable {
        public var backend: Int
        public var trial: Bool
        /// nil when the verdict was already given (success at the first byte).
        public var verdict: Verdict?
        public var releasesSlot: Bool
    }

    public enum Action: Equatable, Sendable {
        case none
        /// Ask the balancer for a backend, excluding those tried; with `retry`, the retry budget must agree.
        case pick(retry: Bool)
        /// Ask the balancer for a second backend to race the slow connect (a retry for the budget).
        case pickHedge
        case connect(Leg, backend: Int)
        /// Wait in the pool's queue.
        case enqueue
        /// Hand the connected socket of this leg to the byte pump; abandon the other leg, if any.
        case attach(Leg)
        /// Drop the failed upstream, keep the client and its kept bytes; `.detached` follows.
        case replay
        /// Let the pump's failure take its course (forward the end-of-file, or close on a reset).
        case proceed
        /// Close the client, cancel any connect and leave the queue.
        case close(Ending)
        /// The pump has ended: cancel any connect, leave the queue, account the connection.
        case finish
    }

    public struct Decision: Equatable, Sendable {
        public var first: Settlement?
        public var second: Settlement?
        public var action: Action

        public init(_ action: Action, _ first: Settlement? = nil, _ second: Settlement? = nil) {
            self.action = action
            self.first = first
            self.second = second
        }
    }

    public enum State: Equatable, Sendable {
        case accepted
        case picking
        case waiting
        case connecting
        case forwarding
        case replaying
        case ended(Ending)
    }

    struct Attempt: Equatable, Sendable {
        var backend: Int
        var trial: Bool
        var verdictGiven = false
    }

    public let settings: Settings
    public private(set) var state = State.accepted
    /// Attempts started so far (each one took a backend slot).
    public private(set) var attempts = 0
    /// A byte of the answer has been forwarded.
    public private(set) var answered = false
    /// Times the client's kept bytes were sent to another backend.
    public private(set) var replays = 0
    /// A second leg raced a slow connect.
    public private(set) var hedged = false
    /// The backend last picked, or the one connected to: kept once the connection has ended.
    public private(set) var lastBackend: Int?
    private var legs: (Attempt?, Attempt?) = (nil, nil)
    private var hedgePickAsked = false

    public init(settings: Settings) {
        self.settings = settings
    }

    /// The backend the client is connected to (or connecting to on the primary leg).
    public var backend: Int? { legs.0?.backend }
    /// The backend a leg is connecting (or connected) to.
    public func backend(_ leg: Leg) -> Int? { attempt(leg)?.backend }
    public var isWaiting: Bool { state == .waiting }
    public var hasEnded: Bool { if case .ended = state { return true } else { return false } }

    // MARK: - Transitions

    public mutating func handle(_ event: Event) -> Decision {
        switch (state, event) {
        case (.accepted, .accepted):
            state = .picking
            return Decision(.pick(retry: false))

        case (.picking, .picked(let result)), (.waiting, .picked(let result)):
            return picked(result)
        case (.waiting, .slotFreed):
            return Decision(.pick(retry: attempts > 0))
        case (.waiting, .queueFull):
            return end(.queueFull)
        case (.waiting, .queueTimedOut):
            return end(.queueTimeout)
        case (.picking, .retryDenied), (.waiting, .retryDenied):
            return end(.retryBudget)

        case (.connecting, .hedgeDue):
            guard settings.hedging, legs.1 == nil, legs.0 != nil, attempts < settings.maxAttempts else {
                return Decision(.none)
            }
            hedgePickAsked = true
            return Decision(.pickHedge)
        case (.connecting, .picked(let result)) where hedgePickAsked:
            hedgePickAsked = false
            guard case .backend(let backend, let trial) = result else { return Decision(.none) }
            attempts += 1
            hedged = true
            legs.1 = Attempt(backend: backend, trial: trial)
            return Decision(.connect(.hedge, backend: backend))
        case (.connecting, .retryDenied) where hedgePickAsked:
            hedgePickAsked = false
            return Decision(.none)
        case (.connecting, .connected(let leg)):
            return connected(leg)
        case (.connecting, .connectFailed(let leg, let failure)):
            return connectFailed(leg, failure)

        case (.forwarding, .firstByte):
            guard !answered, let attempt = legs.0 else { return Decision(.none) }
            answered = true
            guard !attempt.verdictGiven else { return Decision(.none) }
            legs.0?.verdictGiven = true
            return Decision(.none, Settlement(backend: attempt.backend, trial: attempt.trial,
                                              verdict: .outcome(.success), releasesSlot: false))
        case (.forwarding, .upstreamFailed(let failure, let clientFinished, let canReplay)):
            return upstreamFailed(failure, clientFinished: clientFinished, canReplay: canReplay)
        case (.replaying, .detached):
            state = .picking
            return Decision(.pick(retry: true))

        case (.ended, .ended):
            return Decision(.finish)
        case (_, .picked(.backend(let backend, let trial))):
            // A pick answered where none was asked: its slot (and trial) go straight back.
            return Decision(.none, Settlement(backend: backend, trial: trial, verdict: .noVerdict, releasesSlot: true))
        case (_, .ended(let ending)):
            var decision = end(ending)
            decision.action = .finish
            return decision
        default:
            // Late or duplicate reports (a connect result after the client ended, say) change nothing.
            return Decision(.none)
        }
    }

    private mutating func picked(_ result: PickResult) -> Decision {
        switch result {
        case .backend(let backend, let trial):
            attempts += 1
            legs.0 = Attempt(backend: backend, trial: trial)
            lastBackend = backend
            state = .connecting
            return Decision(.connect(.primary, backend: backend))
        case .full:
            if state == .waiting { return Decision(.none) }
            state = .waiting
            return Decision(.enqueue)
        case .unavailable:
            return end(.noBackend)
        }
    }

    private mutating func connected(_ leg: Leg) -> Decision {
        guard let winner = attempt(leg) else { return Decision(.none) }
        let loser = attempt(leg == .primary ? .hedge : .primary)
        legs = (winner, nil)
        lastBackend = winner.backend
        state = .forwarding
        return Decision(.attach(leg), loser.map { settle($0, .noVerdict, release: true) })
    }

    private mutating func connectFailed(_ leg: Leg, _ failure: ConnectFailure) -> Decision {
        guard let failed = attempt(leg) else { return Decision(.none) }
        let settlement = settle(failed, failure == .local ? .noVerdict : .outcome(Self.outcome(failure)), release: true)
        if leg == .primary { legs.0 = nil } else { legs.1 = nil }
        if legs.0 != nil || legs.1 != nil {
            // The other leg still races: wait for it.
            return Decision(.none, settlement)
        }
        if failure == .local { return withFirst(settlement, end(.localError)) }
        guard attempts < settings.maxAttempts else { return withFirst(settlement, end(.noBackend)) }
        state = .picking
        return Decision(.pick(retry: true), settlement)
    }

    private mutating func upstreamFailed(_ failure: UpstreamFailure, clientFinished: Bool, canReplay: Bool) -> Decision {
        guard !answered, let attempt = legs.0, !attempt.verdictGiven else { return Decision(.proceed) }
        if failure == .closed && clientFinished {
            // The backend closed because the client did: its answer to an end-of-file, not a failure.
            legs.0?.verdictGiven = true
            return Decision(.proceed, settle(attempt, .noVerdict, release: false))
        }
        let outcome: CircuitBreaker.Outcome = failure == .firstByteTimeout ? .firstByteTimeout : .resetBeforeFirstByte
        if canReplay && attempts < settings.maxAttempts {
            legs.0 = nil
            replays += 1
            state = .replaying
            return Decision(.replay, settle(attempt, .outcome(outcome), release: true))
        }
        legs.0?.verdictGiven = true
        return Decision(.proceed, settle(attempt, .outcome(outcome), release: false))
    }

    /// Ends the connection: every attempt still held is released, with no verdict if none was given.
    private mutating func end(_ ending: Ending) -> Decision {
        if case .ended = state { return Decision(.none) }
        state = .ended(ending)
        hedgePickAsked = false
        let first = legs.0.map { settle($0, $0.verdictGiven ? nil : .noVerdict, release: true) }
        let second = legs.1.map { settle($0, $0.verdictGiven ? nil : .noVerdict, release: true) }
        legs = (nil, nil)
        return Decision(.close(ending), first, second)
    }

    private func withFirst(_ settlement: Settlement, _ decision: Decision) -> Decision {
        var decision = decision
        decision.second = decision.first
        decision.first = settlement
        return decision
    }

    private func attempt(_ leg: Leg) -> Attempt? { leg == .primary ? legs.0 : legs.1 }

    private func settle(_ attempt: Attempt, _ verdict: Verdict?, release: Bool) -> Settlement {
        Settlement(backend: attempt.backend, trial: attempt.trial, verdict: verdict, releasesSlot: release)
    }

    static func outcome(_ failure: ConnectFailure) -> CircuitBreaker.Outcome {
        failure == .timedOut ? .connectTimeout : .connectRefused
    }
}
