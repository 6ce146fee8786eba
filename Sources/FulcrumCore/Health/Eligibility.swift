/// What an operator has set for a backend.
public enum OperatorState: String, CaseIterable, Equatable, Sendable {
    /// Normal service.
    case enabled
    /// No new connections; open ones finish.
    case drain
    /// No new connections; open ones finish (maintenance).
    case disabled
}

/// The three separate health signals of one backend, as `Eligibility` reads them.
public struct HealthSignals: Equatable, Sendable {
    public var active: ActiveHealth.State
    /// The passive breaker would admit a connection now.
    public var breakerAdmits: Bool
    public var operatorState: OperatorState
    /// Active checks are configured for this pool; without them `active` is ignored.
    public var activeChecks: Bool

    public init(active: ActiveHealth.State = .unknown, breakerAdmits: Bool = true,
                operatorState: OperatorState = .enabled, activeChecks: Bool = false) {
        self.active = active
        self.breakerAdmits = breakerAdmits
        self.operatorState = operatorState
        self.activeChecks = activeChecks
    }

    /// Healthy by the active checks (or no checks configured).
    public var activelyHealthy: Bool { !activeChecks || active == .up }
}

/// Derives, in one place, which backends strategies may pick from the three health signals.
///
/// - A backend is eligible when the operator has it enabled, the active checks (if any) say up, and its
///   breaker admits connections.
/// - The passive breaker may not eject more than `maxEjectionPercent` of the pool: breakers beyond the cap
///   are overruled, the least recently opened first kept out.
/// - Panic: when fewer than `panicThreshold` of the enabled backends are healthy, every enabled backend is
///   eligible, because some service beats none. A backend whose active checks have not answered yet
///   (unknown) counts as possibly healthy: at startup, before the first checks, there is no panic.
public enum Eligibility {
    public struct Result: Equatable, Sendable {
        public var eligible: [Bool]
        public var panic: Bool
        /// Backends whose open breaker was overruled by the max-ejection cap.
        public var ejectionCapped: [Int]
    }

    public static func compute(_ signals: [HealthSignals], maxEjectionPercent: Double, panicThreshold: Double) -> Result {
        let enabled = signals.map { $0.operatorState == .enabled }
        let enabledCount = enabled.filter { $0 }.count
        var eligible = signals.indices.map { enabled[$0] && signals[$0].activelyHealthy && signals[$0].breakerAdmits }

        // The passive breaker may eject at most this many of the pool's backends.
        let maxEjected = Int((Double(signals.count) * maxEjectionPercent / 100).rounded(.down))
        let ejected = signals.indices.filter { enabled[$0] && signals[$0].activelyHealthy && !signals[$0].breakerAdmits }
        var capped: [Int] = []
        if ejected.count > maxEjected {
            capped = Array(ejected.suffix(ejected.count - maxEjected))
            for i in capped { eligible[i] = true }
        }

        let healthy = eligible.filter { $0 }.count
        // Not yet checked is not unhealthy: only a share that stays below the threshold even if every
        // unknown backend turns out up is a panic.
        let pending = signals.indices.filter { i in
            enabled[i] && !eligible[i] && signals[i].activeChecks && signals[i].active == .unknown
        }.count
        let panic = panicThreshold > 0 && enabledCount > 0
            && Double(healthy + pending) < Double(enabledCount) * panicThreshold / 100
        if panic {
            eligible = enabled
        }
        return Result(eligible: eligible, panic: panic, ejectionCapped: capped)
    }
}
