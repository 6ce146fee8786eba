/// The range `fulcrum check` accepts for every number, size and duration of a configuration file, with the
/// reason for each bound. Whatever lies inside them runs: timers are armed in whole microseconds (so nothing
/// shorter than 1us), and no bound lets an addition of `now` and a duration, a doubled ejection time or an
/// allocation sized by a value grow out of hand. The README's configuration tables list the same ranges.
public enum ConfigLimits {
    /// The finest time the engine keeps: timers and the core's clock count whole microseconds.
    public static let resolution: Duration = .microseconds(1)
    /// The longest duration of any key whose table gives no other bound.
    public static let longest: Duration = .seconds(24 * 3600)
    /// Open connections may sit idle for up to a week (long-lived database or tunnel connections).
    public static let idleTimeout: ClosedRange<Duration> = resolution ... .seconds(7 * 24 * 3600)
    /// Zero closes what remains at once.
    public static let drainTimeout: ClosedRange<Duration> = .zero ... longest
    /// Zero turns slow start off.
    public static let slowStart: ClosedRange<Duration> = .zero ... .seconds(3600)
    /// Every other timeout (connect, queue, first byte, hedge, health check).
    public static let timeout: ClosedRange<Duration> = resolution ... longest
    /// Each check opens a connection: below 10ms checks would load the backends more than clients do.
    public static let healthInterval: ClosedRange<Duration> = .milliseconds(10) ... longest
    /// The breaker counts outcomes in one bucket per second of its window, per backend and worker.
    public static let breakerWindow: ClosedRange<Duration> = .seconds(1) ... .seconds(600)
    /// Doubled up to 2^30 times: an hour doubled that often still fits in Int64 microseconds.
    public static let baseEjection: ClosedRange<Duration> = resolution ... .seconds(3600)
    public static let maxEjection: ClosedRange<Duration> = resolution ... longest
    public static let ewmaDecay: ClosedRange<Duration> = resolution ... .seconds(3600)
    public static let ewmaDefaultLatency: ClosedRange<Duration> = .zero ... .seconds(3600)

    public static let workers: ClosedRange<Int> = 1...1024
    public static let bufferSize: ClosedRange<Int> = 4096...(64 << 20)
    /// The kernel caps it further at `net.core.somaxconn`.
    public static let backlog: ClosedRange<Int> = 1...65535
    /// A listener's `defer_accept`, in whole seconds (the kernel's unit for TCP_DEFER_ACCEPT).
    public static let deferAccept: ClosedRange<Duration> = .seconds(1)...(.seconds(600))
    public static let retries: ClosedRange<Int> = 0...100
    /// Clients waiting per worker; 0 closes them at once.
    public static let queueSize: ClosedRange<Int> = 0...1_000_000
    public static let weight: ClosedRange<Int> = 1...FulcrumConfig.Backend.maxWeight
    public static let priority: ClosedRange<Int> = 0...100
    public static let maxConnections: ClosedRange<Int> = 1...10_000_000
    public static let riseFall: ClosedRange<Int> = 1...100
    public static let consecutiveFailures: ClosedRange<Int> = 1...10_000
    public static let minRequests: ClosedRange<Int> = 1...1_000_000
    public static let halfOpenTrials: ClosedRange<Int> = 1...1000
    public static let retryBudgetMinPerSecond: ClosedRange<Int> = 0...1_000_000
    /// Bytes kept per connection until the backend answers.
    public static let replayMaxBytes: ClosedRange<Int> = 1...(16 << 20)
}

extension ClosedRange<Duration> {
    /// `1us to 24h`, as hints print it.
    var configText: String { "\(lowerBound.configText) to \(upperBound.configText)" }
}

extension ConfigLimits {
    /// Answers are kept at least a second (no query storm on a zero TTL) and at most a day.
    public static let dnsTTL: ClosedRange<Duration> = .seconds(1) ... longest
    public static let dnsTimeout: ClosedRange<Duration> = .milliseconds(10) ... .seconds(60)
    /// A runaway registry cannot list more than this per pool (the pool's slots are bounded too).
    public static let maxDiscoveredBackends: ClosedRange<Int> = 1...10_000
}
