/// The fixed, log-spaced buckets of every latency histogram (connect time, first-byte time), and the
/// arithmetic on their counts: which bucket a value falls in, and percentiles estimated from the counts.
///
/// Upper bounds, inclusive as Prometheus' `le`: 100 µs, 250 µs, 500 µs, 1 ms, 2.5 ms, 5 ms, 10 ms, 25 ms,
/// 50 ms, 100 ms, 250 ms, 500 ms, 1 s, 2.5 s, 5 s, 10 s, then `+Inf`: three buckets a decade, so a
/// percentile is known within a factor of 2.5 before interpolation. Fixed buckets cost one counter each
/// (17 plus a sum), written by one thread, where an HDR histogram costs ~100 KB.
public enum LatencyHistogram {
    /// Finite upper bounds in microseconds; one more bucket (`+Inf`) holds everything above the last.
    public static let bounds: [Microseconds] = [
        100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
        1_000_000, 2_500_000, 5_000_000, 10_000_000,
    ]
    /// Buckets including `+Inf`.
    public static let bucketCount = 17

    /// The bucket `value` (microseconds) is counted in: the first whose bound is at least `value`.
    @inlinable @inline(__always)
    public static func bucket(_ value: Microseconds) -> Int {
        // Unrolled by decade: at most 6 comparisons, no array access (no bounds check, no retain).
        if value <= 10_000 {
            if value <= 1_000 { return value <= 100 ? 0 : value <= 250 ? 1 : value <= 500 ? 2 : 3 }
            return value <= 2_500 ? 4 : value <= 5_000 ? 5 : 6
        }
        if value <= 1_000_000 {
            if value <= 100_000 { return value <= 25_000 ? 7 : value <= 50_000 ? 8 : 9 }
            return value <= 250_000 ? 10 : value <= 500_000 ? 11 : 12
        }
        return value <= 2_500_000 ? 13 : value <= 5_000_000 ? 14 : value <= 10_000_000 ? 15 : 16
    }

    /// The `q` quantile (0...1) of the values counted in `counts` (one per bucket, not cumulative),
    /// interpolated linearly inside its bucket as Prometheus' `histogram_quantile` does: the lowest bucket
    /// starts at 0, and a quantile that falls in `+Inf` is the last finite bound. Nil when nothing was
    /// counted.
    public static func quantile(_ q: Double, counts: [Int]) -> Microseconds? {
        precondition(counts.count == bucketCount, "one count per bucket")
        let total = counts.reduce(0, +)
        guard total > 0 else { return nil }
        let rank = min(max(q, 0), 1) * Double(total)
        var below = 0
        for (index, count) in counts.enumerated() {
            let cumulative = below + count
            if Double(cumulative) >= rank && count > 0 {
                guard index < bounds.count else { return bounds[bounds.count - 1] }
                let lower = index == 0 ? 0 : Double(bounds[index - 1])
                let upper = Double(bounds[index])
                let fraction = (rank - Double(below)) / Double(count)
                return Microseconds((lower + (upper - lower) * fraction).rounded())
            }
            below = cumulative
        }
        return bounds[bounds.count - 1]
    }
}
