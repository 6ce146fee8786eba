#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// `peak_ewma`: power of two choices scored by latency. Each backend keeps a peak-sensitive exponentially
/// weighted moving average of its measured latency: a sample above the average replaces it at once (a
/// backend turning slow is noticed on the first slow answer), a sample below pulls it down gradually, and
/// without samples the average decays towards zero with time constant `decay`, so a backend that was slow
/// is tried again once it has been avoided for a while. Two weighted random candidates are drawn and the one
/// with the lower `average × (active + 1) / weight` wins, as in linkerd and Finagle.
public final class PeakEWMAStrategy: BalancingStrategy {
    private let table: BackendTable
    private var sampler: WeightedSampler
    private let decay: Double
    private let defaultLatency: Double
    private var average: [Double]
    private var updatedAt: [Microseconds]

    public init(table: BackendTable, random: FastRandom, decay: Duration, defaultLatency: Duration) {
        self.table = table
        sampler = WeightedSampler(random: random)
        self.decay = Double(max(1, decay.inMicroseconds))
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
        guard let b = second else { return a }
        return cost(b, now: context.now) < cost(a, now: context.now) ? b : a
    }

    public func observe(latency: Microseconds, backend: Int, now: Microseconds) {
        guard backend < average.count else { return }
        let sample = Double(max(0, latency))
        let current = estimate(backend, now: now)
        average[backend] = sample > current ? sample : current + (sample - current) * (1 - weightOfPast(backend, now: now))
        updatedAt[backend] = now
    }

    /// The latency estimate now: the stored average decayed towards zero for the time since its last sample.
    public func estimate(_ backend: Int, now: Microseconds) -> Double {
        updatedAt[backend] == .min ? average[backend] : average[backend] * weightOfPast(backend, now: now)
    }

    func cost(_ backend: Int, now: Microseconds) -> Double {
        // A backend never measured starts at the default latency as of its first consideration, and decays
        // from then on like the others.
        if updatedAt[backend] == .min { updatedAt[backend] = now }
        return estimate(backend, now: now) * Double(table.active[backend] + 1) / Double(table.effectiveWeight[backend])
    }

    private func weightOfPast(_ backend: Int, now: Microseconds) -> Double {
        guard updatedAt[backend] != .min else { return 1 }
        return exp(-Double(max(0, now - updatedAt[backend])) / decay)
    }
}
