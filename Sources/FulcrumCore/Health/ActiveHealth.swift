/// The active-check state of one backend, with HAProxy's rise and fall: `rise` consecutive successful
/// probes make a backend up, `fall` consecutive failures make it down. A backend starts unknown; with
/// `upOnFirstSuccess` (the default) a single success makes an unknown backend up.
public struct ActiveHealth: Sendable {
    public enum State: String, Equatable, Sendable {
        case unknown, up, down
    }

    public let rise: Int
    public let fall: Int
    public let upOnFirstSuccess: Bool
    public private(set) var state: State
    public private(set) var successes = 0
    public private(set) var failures = 0
    /// Why the last probe failed, for logs and status.
    public private(set) var lastError: String?

    public init(rise: Int, fall: Int, upOnFirstSuccess: Bool = true, initial: State = .unknown) {
        self.rise = rise
        self.fall = fall
        self.upOnFirstSuccess = upOnFirstSuccess
        state = initial
    }

    /// Records a probe result; returns the new state if it changed.
    public mutating func record(success: Bool, error: String? = nil) -> State? {
        if success {
            successes += 1
            failures = 0
            lastError = nil
            let needed = state == .unknown && upOnFirstSuccess ? 1 : rise
            if state != .up && successes >= needed {
                state = .up
                return .up
            }
        } else {
            failures += 1
            successes = 0
            lastError = error
            let needed = state == .unknown ? 1 : fall
            if state != .down && failures >= needed {
                state = .down
                return .down
            }
        }
        return nil
    }
}

/// When the next probe of a backend is due: every `interval`, or `downInterval` while it is down, each
/// spread by up to ±`jitter` of itself so that probes of many backends do not fire in step.
public struct ProbeSchedule: Sendable {
    public let interval: Microseconds
    public let downInterval: Microseconds
    public let jitter: Double
    private var random: FastRandom

    public init(interval: Duration, downInterval: Duration, jitter: Double, random: FastRandom) {
        self.interval = interval.inMicroseconds
        self.downInterval = downInterval.inMicroseconds
        self.jitter = jitter
        self.random = random
    }

    /// The delay until the next probe of a backend in `state`.
    public mutating func nextDelay(for state: ActiveHealth.State) -> Microseconds {
        let base = state == .up ? interval : downInterval
        guard jitter > 0 else { return base }
        let unit = Double(random.next() >> 11) / Double(1 << 53) * 2 - 1 // -1 ..< 1
        return max(1, base + Microseconds(Double(base) * jitter * unit))
    }
}
