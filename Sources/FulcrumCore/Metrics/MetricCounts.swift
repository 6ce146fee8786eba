import Synchronization

/// A latency histogram as read: a count per bucket (not cumulative) and the sum, in microseconds.
public struct HistogramCounts: Equatable, Sendable {
    public var buckets = [Int](repeating: 0, count: LatencyHistogram.bucketCount)
    public var sum = 0

    public init() {}

    public var count: Int { buckets.reduce(0, +) }

    /// The `q` quantile (0...1), estimated from the buckets; nil with no observation.
    public func quantile(_ q: Double) -> Microseconds? { LatencyHistogram.quantile(q, counts: buckets) }

    /// The median, 90th and 99th percentiles, as the status shows them.
    public var percentiles: LatencyPercentiles {
        LatencyPercentiles(p50: quantile(0.5), p90: quantile(0.9), p99: quantile(0.99))
    }

    mutating func add(_ cells: MetricCell) {
        for i in 0..<LatencyHistogram.bucketCount { buckets[i] &+= (cells + i).value }
    }
}

/// Latency percentiles in microseconds, estimated from a histogram's buckets; nil with no observation.
public struct LatencyPercentiles: Equatable, Sendable {
    public var p50: Microseconds?
    public var p90: Microseconds?
    public var p99: Microseconds?

    public init(p50: Microseconds?, p90: Microseconds?, p99: Microseconds?) {
        self.p50 = p50
        self.p90 = p90
        self.p99 = p99
    }
}

/// One backend's values, read from one worker's record or summed over every worker: its counters and
/// gauge by `BackendMetric` (`counts[.failedTimeout]`), and its two histograms.
public struct BackendCounts: Equatable, Sendable {
    /// The counters and the gauge come first in a record, up to the histograms' sums.
    private static let plain = BackendMetric.connectSum.rawValue
    private var values = [Int](repeating: 0, count: plain)
    public var connect = HistogramCounts()
    public var firstByte = HistogramCounts()

    public init() {}

    /// A counter or the active-connections gauge (not the histograms' cells: see `connect`, `firstByte`).
    public subscript(_ metric: BackendMetric) -> Int {
        get { values[metric.rawValue] }
        set { values[metric.rawValue] = newValue }
    }

    public var connectFailures: Int {
        self[.failedRefused] + self[.failedTimeout] + self[.failedUnreachable] + self[.failedLocal]
    }

    /// Adds one worker's record (read relaxed, cell by cell).
    public mutating func add(_ record: BackendRecord) {
        for i in 0..<Self.plain { values[i] &+= (record.base + i).value }
        connect.sum &+= record.cell(.connectSum).value
        connect.add(record.cell(.connectBuckets))
        firstByte.sum &+= record.cell(.firstByteSum).value
        firstByte.add(record.cell(.firstByteBuckets))
    }
}

/// A pool's own values by `PoolMetric`, summed over every worker (gauges too: `.queueLength` is the
/// process's waiting clients, `.panic` the number of workers whose view of the pool is in panic).
public struct PoolCounts: Equatable, Sendable {
    private var values = [Int](repeating: 0, count: PoolMetric.allCases.count)

    public init() {}

    public subscript(_ metric: PoolMetric) -> Int {
        get { values[metric.rawValue] }
        set { values[metric.rawValue] = newValue }
    }

    /// Clients refused for every reason.
    public var refused: Int { PoolMetric.refusals.reduce(0) { $0 + self[$1] } }

    /// Adds one worker's block (read relaxed, cell by cell).
    public mutating func add(_ metrics: WorkerPoolMetrics) {
        for metric in PoolMetric.allCases { values[metric.rawValue] &+= metrics.cell(metric).value }
    }
}

/// A listener's connections: per worker, accepted in total and open now (one cache line each).
public final class ListenerMetrics: @unchecked Sendable {
    @usableFromInline let cells: MetricCell
    public let workers: Int
    @usableFromInline static let stride = 8

    public init(workers: Int) {
        self.workers = max(1, workers)
        let count = self.workers * Self.stride
        let raw = UnsafeMutableRawPointer.allocate(byteCount: count * MemoryLayout<Atomic<Int>>.stride, alignment: 64)
        cells = raw.bindMemory(to: Atomic<Int>.self, capacity: count)
        for i in 0..<count { (cells + i).initialize(to: Atomic(0)) }
    }

    deinit {
        cells.deinitialize(count: workers * Self.stride)
        UnsafeMutableRawPointer(cells).deallocate()
    }

    /// Clients accepted by `worker` (below `workers`); written by that worker only.
    @inlinable @inline(__always)
    public func accepted(_ worker: Int) -> MetricCell { cells + worker * Self.stride }

    /// Clients of `worker` still open; written by that worker only.
    @inlinable @inline(__always)
    public func active(_ worker: Int) -> MetricCell { cells + worker * Self.stride + 1 }

    public var totalAccepted: Int { (0..<workers).reduce(0) { $0 &+ accepted($1).value } }
    public var totalActive: Int { (0..<workers).reduce(0) { $0 &+ active($1).value } }
}
