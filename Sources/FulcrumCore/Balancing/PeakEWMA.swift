#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// `peak_ewma`: power of two choices scored by latency, as in linkerd and Finagle. Each backend keeps a
/// peak-sensitive exponentially weighted moving average of its measured latency: a sample above the average
/// replaces it at once (a backend turning slow is noticed on its first slow answer), and a sample below pulls
/// it down gradually, with time constant `decay`. Two weighted random candidates are drawn and the one with
/// the lower `average × (active + 1) / weight` wins.
///
/// Recovery. Without samples the average decays towards zero with time constant `decay`, so a backend that
/// few connections go to looks cheaper and cheaper and load spreads. But a backend that was slow gets no
/// traffic, hence no samples, and the decay alone takes ln(slow ÷ fast) decay periods to bring it back: about
/// 76 s from 200 ms to loopback's 0.1 ms with a 10 s decay. So, as an epsilon-greedy bandit explores:
///
/// - A backend without a sample for `decay / 5` (2 s by default) is *stale*. When a stale backend is one of
///   the two candidates of a pick and the exploration budget allows, it is picked whatever its estimate, to
///   measure it again. The budget grows by `explorationShare` (2%) per pick and such a pick spends a whole
///   unit, so exploration never takes more than 2% of picks, and a slow backend at most one every 2 s.
/// - The first answer after a stale period replaces the stale average: a fast answer puts the backend back
///   in rotation at once; a slow one sets its estimate high again, and it is avoided again. A connect time
///   does not count as that answer (a handshake is fast even when the service is slow).
///
/// A backend that answers in 200 ms while its peers answer in 0.1 ms thus takes at most one new connection
/// every 2 s and never more than 2% of them, and wins its share back within about 2 s of being fast again
/// (at a few dozen connections per second or more), whatever the ratio of the latencies.
public final class PeakEWMAStrategy: BalancingStrategy {
    /// The largest share of picks that may go to stale backends to measure them again.
    public static let explorationShare = 0.02
    private let table: BackendTable
    private var sampler: WeightedSampler
    private let decay: Double
    /// A backend without a sample for this long is stale.
    public let staleAfter: Microseconds
    private let defaultLatency: Double
    private var average: [Double]
    private var updatedAt: [Microseconds]
    /// Exploration picks available: one is spent on every pick that goes to a stale backend to measure it.
    private var explorationBudget = 1.0

    public init(table: BackendTable, random: FastRandom, decay: Duration, defaultLatency: Duration) {
        self.table = table
        sampler = WeightedSampler(random: random)
        self.decay = Double(max(1, decay.inMicroseconds))
        staleAfter = max(1, decay.inMicroseconds / 5)
        self.defaultLatency = Double(defaultLatency.inMicroseconds)
        average = Array(repeating: Double(defaultLatency.inMicroseconds), count: table.count)
        updatedAt = Array(repeating: Microseconds.min, count: table.count)
    }

    public func rebuild(candidates: [Int]) {
        if average.count < table.count {
            average += Array(repeating: defaultLatency, count: table.count - average.count)
            updatedAt += Array(repeating: Microseconds.min, count: table.count - updatedAt.count)
        }
        sampler.rebuild(candidates: candidates, table: table)
    }

    public func pick(_ context: PickContext, skip: (Int) -> Bool) -> Int? {
        guard let (a, second) = sampler.drawTwo(skip: skip) else { return nil }
        explorationBudget = min(1, explorationBudget + Self.explorationShare)
        guard let b = second else { return a }
        let now = context.now
        // A never-measured backend starts at the default latency as of its first consideration.
        if updatedAt[a] == .min { updatedAt[a] = now }
        if updatedAt[b] == .min { updatedAt[b] = now }
        if explorationBudget >= 1 {
            let older = updatedAt[b] < updatedAt[a] ? b : a
            if isStale(older, now: now) {
                explorationBudget -= 1
                return older
            }
        }
        return cost(b, now: now) < cost(a, now: now) ? b : a
    }

    public func observe(latency: Microseconds, backend: Int, now: Microseconds) {
        guard backend < average.count else { return }
        let sample = Double(max(0, latency))
        if isStale(backend, now: now) {
            // What was known is too old to describe the backend now: the fresh sample replaces it.
            average[backend] = sample
        } else {
            let current = estimate(backend, now: now)
            average[backend] = sample > current ? sample : current + (sample - current) * (1 - weightOfPast(backend, now: now))
        }
        updatedAt[backend] = now
    }

    /// A connect time refreshes a backend like any sample, but not a stale one: a fast handshake says nothing
    /// about how slowly the backend answers, and replacing a stale slow estimate with it would make the
    /// backend look fastest until its first answer. A stale backend waits for a request's answer.
    public func observeConnect(latency: Microseconds, backend: Int, now: Microseconds) {
        guard backend < average.count, !isStale(backend, now: now) else { return }
        observe(latency: latency, backend: backend, now: now)
    }

    /// The latency estimate now: the stored average decayed towards zero for the time since its last sample.
    public func estimate(_ backend: Int, now: Microseconds) -> Double {
        average[backend] * weightOfPast(backend, now: now)
    }

    /// The backend has had no sample for `staleAfter`.
    public func isStale(_ backend: Int, now: Microseconds) -> Bool {
        updatedAt[backend] != .min && now - updatedAt[backend] >= staleAfter
    }

    func cost(_ backend: Int, now: Microseconds) -> Double {
        estimate(backend, now: now) * Double(table.active[backend] + 1) / Double(table.effectiveWeight[backend])
    }

    private func weightOfPast(_ backend: Int, now: Microseconds) -> Double {
        guard updatedAt[backend] != .min else { return 1 }
        return exp(-Double(max(0, now - updatedAt[backend])) / decay)
    }
}
