extension FulcrumConfig {
    /// Active health checking of a pool's backends (`health:`).
    public struct Health: Equatable, Sendable {
        public enum Check: Equatable, Sendable {
            /// A connect that succeeds within the timeout.
            case tcp
            /// Send bytes (possibly none), then the reply must start with `prefix` or match `regex`.
            case sendExpect(send: [UInt8], expect: Expectation)
            /// `GET path` with a Host header; the response status must be in `statuses`.
            case http(path: String, host: String?, statuses: [ClosedRange<Int>])
        }

        public enum Expectation: Equatable, Sendable {
            case prefix([UInt8])
            case regex(String)
        }

        public var check: Check
        public var interval: Duration
        /// Probe interval while a backend is down (so recovery is noticed sooner).
        public var downInterval: Duration
        public var timeout: Duration
        public var rise: Int
        public var fall: Int
        /// Spread of each interval, as a fraction (0.1 = ±10%).
        public var jitter: Double
        /// Whether a backend not yet probed may take traffic (default: no, it waits for its first success).
        public var assumeHealthy: Bool

        public init(check: Check = .tcp, interval: Duration = .seconds(2), downInterval: Duration? = nil,
                    timeout: Duration = .seconds(1), rise: Int = 2, fall: Int = 3, jitter: Double = 0.1,
                    assumeHealthy: Bool = false) {
            self.check = check
            self.interval = interval
            self.downInterval = downInterval ?? interval
            self.timeout = timeout
            self.rise = rise
            self.fall = fall
            self.jitter = jitter
            self.assumeHealthy = assumeHealthy
        }
    }

    /// The passive circuit breaker of every backend of a pool (`breaker:`), and the ejection cap.
    public struct Breaker: Equatable, Sendable {
        public var enabled: Bool
        public var settings: CircuitBreaker.Settings
        public var maxEjectionPercent: Double

        public init(enabled: Bool = true, settings: CircuitBreaker.Settings = .init(), maxEjectionPercent: Double = 50) {
            self.enabled = enabled
            self.settings = settings
            self.maxEjectionPercent = maxEjectionPercent
        }
    }

    /// What happens to a pool's open connections when active checks mark their backend down.
    public enum OnBackendDown: String, CaseIterable, Equatable, Sendable {
        case keep, close
    }
}

extension FulcrumConfig.Pool {
    /// The resilience settings of a pool, with their defaults.
    public struct Resilience: Equatable, Sendable {
        public var health: FulcrumConfig.Health?
        public var breaker = FulcrumConfig.Breaker()
        /// Percent of enabled backends below which health is ignored; 0 turns panic mode off.
        public var panicThreshold: Double = 0
        public var retryBudgetRatio: Double = 0.2
        public var retryBudgetMinPerSecond = 10
        /// Keep up to this many client bytes until the backend answers, to replay them elsewhere; nil: off.
        public var replayMaxBytes: Int?
        public var firstByteTimeout: Duration?
        public var onBackendDown = FulcrumConfig.OnBackendDown.keep
        /// Race a second connect when the first has not completed after this long; nil: off.
        public var hedgeAfter: Duration?
        /// After a reload (or another source) removes a backend, close its connections still open after this
        /// long; nil: they run until they end.
        public var removedBackendTimeout: Duration?

        public init() {}
    }
}
