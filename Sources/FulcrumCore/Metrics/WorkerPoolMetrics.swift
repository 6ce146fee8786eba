import Synchronization

/// One metric value written by exactly one thread and read by any: the writer adds with a relaxed load
/// and a relaxed store (no read-modify-write, so no locked instruction and no cache line bouncing between
/// workers), readers load it relaxed. Each worker has its own cells; readers sum them.
public typealias MetricCell = UnsafeMutablePointer<Atomic<Int>>

extension UnsafeMutablePointer where Pointee == Atomic<Int> {
    /// Adds `amount`; only the cell's owning thread may call it.
    @inlinable @inline(__always)
    public func add(_ amount: Int) {
        pointee.store(pointee.load(ordering: .relaxed) &+ amount, ordering: .relaxed)
    }

    /// Sets a gauge; only the cell's owning thread may call it.
    @inlinable @inline(__always)
    public func set(_ value: Int) { pointee.store(value, ordering: .relaxed) }

    @inlinable
    public var value: Int { pointee.load(ordering: .relaxed) }
}

/// Where each pool-wide value lives in a worker's block.
public enum PoolMetric: Int, CaseIterable, Sendable {
    case retries, replays, hedges
    /// Clients closed without a backend, by reason.
    case refusedNoBackend, refusedQueueFull, refusedQueueTimeout, refusedRetryBudget, refusedLocalError
    /// Gauges: this worker's waiting clients, and whether its health view of the pool is in panic (0/1).
    case queueLength, panic

    @usableFromInline static let stride = 16

    /// Every reason a client is refused.
    public static let refusals: [PoolMetric] = [
        .refusedNoBackend, .refusedQueueFull, .refusedQueueTimeout, .refusedRetryBudget, .refusedLocalError,
    ]
}

/// Where each per-backend value lives in a backend's record.
public enum BackendMetric: Int, CaseIterable, Sendable {
    /// Connections established to the backend and handed to a client.
    case connectionsTotal
    /// Of those, still open (a gauge).
    case connectionsActive
    /// Connects that failed, by reason.
    case failedRefused, failedTimeout, failedUnreachable, failedLocal
    /// Bytes the backend received from clients, and sent to them; `bytesToClient` follows right after.
    case bytesFromClient, bytesToClient
    /// Sums of the histograms' observations, in microseconds.
    case connectSum, firstByteSum
    /// The first of `LatencyHistogram.bucketCount` counters each (not cumulative).
    case connectBuckets
    case firstByteBuckets = 27

    /// Cells per backend: 10 counters and two histograms of 17 buckets, padded to whole cache lines.
    @usableFromInline static let stride = 48
}

/// One worker's metrics for one pool: pool-wide counters and gauges, and a record per backend slot.
/// Written only by the owning worker's thread (relaxed load + store), read by any thread.
///
/// Backend records live in segments of 16 slots that never move: a pool that grows gets new segments,
/// published (release) in a table that is itself allocated once, the first time the pool outgrows its
/// first segment. A reader that finds no segment for a slot reads zeros. The writer is the only one that
/// allocates, so publishing needs no compare-and-exchange.
public final class WorkerPoolMetrics: @unchecked Sendable {
    public static let segmentSize = 16
    static let segmentCount = (SharedBackendCounters.maxBackends + segmentSize - 1) / segmentSize

    @usableFromInline let pool: MetricCell
    @usableFromInline let first: MetricCell
    @usableFromInline let table = Atomic<UnsafeMutablePointer<Atomic<MetricCell?>>?>(nil)
    /// Slots with a record; read by the writer only.
    public private(set) var capacity = segmentSize

    public init() {
        pool = Self.allocate(PoolMetric.stride)
        first = Self.allocate(Self.segmentSize * BackendMetric.stride)
    }

    deinit {
        Self.free(pool, PoolMetric.stride)
        Self.free(first, Self.segmentSize * BackendMetric.stride)
        guard let table = table.load(ordering: .acquiring) else { return }
        for index in 1..<Self.segmentCount {
            if let segment = table[index].load(ordering: .acquiring) { Self.free(segment, Self.segmentSize * BackendMetric.stride) }
        }
        table.deinitialize(count: Self.segmentCount)
        table.deallocate()
    }

    private static func allocate(_ count: Int) -> MetricCell {
        let raw = UnsafeMutableRawPointer.allocate(byteCount: count * MemoryLayout<Atomic<Int>>.stride, alignment: 64)
        let cells = raw.bindMemory(to: Atomic<Int>.self, capacity: count)
        for i in 0..<count { (cells + i).initialize(to: Atomic(0)) }
        return cells
    }

    private static func free(_ cells: MetricCell, _ count: Int) {
        cells.deinitialize(count: count)
        UnsafeMutableRawPointer(cells).deallocate()
    }

    /// Makes records for slots `0..<slots`; the owning worker calls it before writing to a new slot.
    /// What exists does not move.
    public func ensureCapacity(_ slots: Int) {
        precondition(slots <= SharedBackendCounters.maxBackends, "a pool has at most \(SharedBackendCounters.maxBackends) slots")
        guard slots > capacity else { return }
        let table: UnsafeMutablePointer<Atomic<MetricCell?>>
        if let existing = self.table.load(ordering: .acquiring) {
            table = existing
        } else {
            table = .allocate(capacity: Self.segmentCount)
            table.initialize(to: Atomic(first))
            for i in 1..<Self.segmentCount { (table + i).initialize(to: Atomic(nil)) }
            self.table.store(table, ordering: .releasing)
        }
        for index in (capacity / Self.segmentSize)...((slots - 1) / Self.segmentSize) {
            table[index].store(Self.allocate(Self.segmentSize * BackendMetric.stride), ordering: .releasing)
        }
        capacity = ((slots - 1) / Self.segmentSize + 1) * Self.segmentSize
    }

    /// A pool-wide cell.
    @inlinable @inline(__always)
    public func cell(_ metric: PoolMetric) -> MetricCell { pool + metric.rawValue }

    /// The record of `slot`, for the writer (the slot must be within `ensureCapacity`); nil for a reader
    /// when the writer has not made it yet.
    @inlinable @inline(__always)
    public func record(_ slot: Int) -> BackendRecord? {
        if slot < Self.segmentSize { return BackendRecord(base: first + slot * BackendMetric.stride) }
        guard let table = table.load(ordering: .acquiring),
              let segment = table[slot / Self.segmentSize].load(ordering: .acquiring) else { return nil }
        return BackendRecord(base: segment + (slot % Self.segmentSize) * BackendMetric.stride)
    }

    /// The record of `slot` for the owning worker, which made it with `ensureCapacity`.
    @inlinable @inline(__always)
    public func backend(_ slot: Int) -> BackendRecord {
        guard let record = record(slot) else { preconditionFailure("metrics of slot \(slot) written before ensureCapacity") }
        return record
    }

    /// Where `slot`'s record lives, to check that growing moves nothing.
    public func address(of slot: Int) -> UnsafeRawPointer? { record(slot).map { UnsafeRawPointer($0.base) } }
}

/// One backend's cells in one worker's block.
public struct BackendRecord {
    public let base: MetricCell

    @inlinable
    init(base: MetricCell) { self.base = base }

    @inlinable @inline(__always)
    public func cell(_ metric: BackendMetric) -> MetricCell { base + metric.rawValue }

    /// The two byte counters, from client then to client, for a relay to add to per chunk.
    @inlinable
    public var byteCells: MetricCell { base + BackendMetric.bytesFromClient.rawValue }

    /// Counts one observation (microseconds) in the histogram starting at `buckets`, with its sum.
    @inlinable @inline(__always)
    public func observe(_ microseconds: Microseconds, buckets: BackendMetric, sum: BackendMetric) {
        let value = max(0, microseconds)
        (base + buckets.rawValue + LatencyHistogram.bucket(value)).add(1)
        cell(sum).add(Int(value))
    }

    @inlinable
    public func observeConnect(_ microseconds: Microseconds) {
        observe(microseconds, buckets: .connectBuckets, sum: .connectSum)
    }

    @inlinable
    public func observeFirstByte(_ microseconds: Microseconds) {
        observe(microseconds, buckets: .firstByteBuckets, sum: .firstByteSum)
    }

    /// Every value of the record, as read now.
    public func read() -> BackendCounts {
        var counts = BackendCounts()
        counts.add(self)
        return counts
    }
}
