/// Bounds retries pool-wide, as linkerd's and Finagle's retry budgets do: over a sliding window, retries
/// may be at most `ratio` of new connections, plus a floor of `minPerSecond` so a quiet pool can still
/// retry. When a pool is dying, clients fail fast instead of multiplying the load with retries.
public struct RetryBudget: Sendable {
    public let ratio: Double
    public let minPerSecond: Int
    public let window: Microseconds
    private var buckets: [(second: Int64, requests: Int, retries: Int)]

    public init(ratio: Double, minPerSecond: Int, window: Duration = .seconds(10)) {
        self.ratio = ratio
        self.minPerSecond = minPerSecond
        self.window = window.inMicroseconds
        buckets = Array(repeating: (-1, 0, 0), count: max(1, Int(window.inMicroseconds / 1_000_000)))
    }

    /// A new client connection arrived.
    public mutating func recordRequest(now: Microseconds) {
        buckets[slot(now)].requests += 1
    }

    /// Asks to spend one retry; true (and counted) if the budget allows it.
    public mutating func tryRetry(now: Microseconds) -> Bool {
        guard canRetry(now: now) else { return false }
        spend(now: now)
        return true
    }

    /// Whether one more retry would fit in the budget now; spends nothing.
    public func canRetry(now: Microseconds) -> Bool {
        let oldest = now / 1_000_000 - Int64(buckets.count) + 1
        var requests = 0, retries = 0
        for b in buckets where b.second >= oldest {
            requests += b.requests
            retries += b.retries
        }
        let allowed = Double(minPerSecond * buckets.count) + ratio * Double(requests)
        return Double(retries + 1) <= allowed
    }

    /// Counts one retry that `canRetry` allowed.
    public mutating func spend(now: Microseconds) {
        buckets[slot(now)].retries += 1
    }

    /// The bucket for `now`'s second, emptied first if it last held an older second.
    private mutating func slot(_ now: Microseconds) -> Int {
        let second = now / 1_000_000
        let slot = Int(second % Int64(buckets.count))
        if buckets[slot].second != second { buckets[slot] = (second, 0, 0) }
        return slot
    }
}
