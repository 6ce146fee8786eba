import Synchronization

/// A latency histogram as read: a count per bucket (not cumulative) and the sum, in microseconds.
public struct HistogramCounts: Equatable, Sendable {
    public var buckets = [Int](repeating: 0, count: LatencyHistogram.bucketCount)
    public var sum = 0

    public init() {}

    public var count: Int { buckets.reduce(0, +) }

    /// The `q` quantile (0...1), estimated from the buckets; nil with no observation.
    public func quantile(_ q: Double) -> Microseconds? { LatencyHistogram.quantile(q, counts: buckets) }

    mutating func add(_ cells: MetricCell) {
        for i in 0..<LatencyHistogram.bucketCount { buckets[i] &+= (cells + i).value }
    }
}

/// One backend's values, read from one worker's record or summed over every worker.
public struct BackendCounts: Equatable, Sendable {
    public var connectionsTotal = 0
    public var connectionsActive = 0
    public var failedRefused = 0
    public var failedTimeout = 0
    public var failedUnreachable = 0
    public var failedLocal = 0
    public var bytesFromClient = 0
    public var bytesToClient = 0
    public var connect = HistogramCounts()
    public var firstByte = HistogramCounts()

    public init() {}

    public var connectFailures: Int { failedRefused + failedTimeout + failedUnreachable + failedLocal }

    /// Adds one worker's record (read relaxed, cell by cell).
    public mutating func add(_ record: BackendRecord) {
        connectionsTotal &+= record.cell(.connectionsTotal).value
        connectionsActive &+= record.cell(.connectionsActive).value
        failedRefused &+= record.cell(.failedRefused).value
        failedTimeout &+= record.cell(.failedTimeout).value
        failedUnreachable &+= record.cell(.failedUnreachable).value
        failedLocal &+= record.cell(.failedLocal).value
        bytesFromClient &+= record.cell(.bytesFromClient).value
        bytesToClient &+= record.cell(.bytesToClient).value
        connect.sum &+= record.cell(.connectSum).value
        connect.add(record.cell(.connectBuckets))
        firstByte.sum &+= record.cell(.firstByteSum).value
        firstByte.add(record.cell(.firstByteBuckets))
    }
}

/// A pool's own values, summed over every worker (gauges too: queue length is the process's waiting
/// clients; `panicWorkers` counts the workers whose view of the pool is in panic).
public struct PoolCounts: Equatable, Sendable {
    public var retries = 0
    public var replays = 0
    public var hedges = 0
    public var refusedNoBackend = 0
    public var refusedQueueFull = 0
    public var refusedQueueTimeout = 0
    public var refusedRetryBudget = 0
    public var refusedLocalError = 0
    public var queueLength = 0
    public var panicWorkers = 0

    public init() {}

    public var refused: Int {
        refusedNoBackend + refusedQueueFull + refusedQueueTimeout + refusedRetryBudget + refusedLocalError
    }

    public mutating func add(_ metrics: WorkerPoolMetrics) {
        retries &+= metrics.cell(.retries).value
        replays &+= metrics.cell(.replays).value
        hedges &+= metrics.cell(.hedges).value
        refusedNoBackend &+= metrics.cell(.refusedNoBackend).value
        refusedQueueFull &+= metrics.cell(.refusedQueueFull).value
        refusedQueueTimeout &+= metrics.cell(.refusedQueueTimeout).value
        refusedRetryBudget &+= metrics.cell(.refusedRetryBudget).value
        refusedLocalError &+= metrics.cell(.refusedLocalError).value
        queueLength &+= metrics.cell(.queueLength).value
        panicWorkers &+= metrics.cell(.panic).value
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
