import FulcrumCore
import Synchronization
import Testing

@Suite struct PrometheusTextTests {
    @Test func writesFamiliesSamplesAndHistogramsInOrder() {
        var text = PrometheusText()
        text.family("fulcrum_pool_retries_total", .counter, help: "Retries.")
        text.sample("fulcrum_pool_retries_total", [("pool", "web")], 3)
        text.sample("fulcrum_pool_retries_total", [("pool", "db")], 0)
        text.family("fulcrum_pool_panic", .gauge, help: "Panic.")
        text.sample("fulcrum_pool_panic", [], 1)
        text.family("latency_seconds", .histogram, help: "Latency.")
        text.histogram("latency_seconds", [("pool", "web")], bounds: [0.0001, 0.5, 1], counts: [2, 0, 1, 4], sum: 7.25)
        #expect(text.output == """
        # HELP fulcrum_pool_retries_total Retries.
        # TYPE fulcrum_pool_retries_total counter
        fulcrum_pool_retries_total{pool="web"} 3
        fulcrum_pool_retries_total{pool="db"} 0
        # HELP fulcrum_pool_panic Panic.
        # TYPE fulcrum_pool_panic gauge
        fulcrum_pool_panic 1
        # HELP latency_seconds Latency.
        # TYPE latency_seconds histogram
        latency_seconds_bucket{pool="web",le="0.0001"} 2
        latency_seconds_bucket{pool="web",le="0.5"} 2
        latency_seconds_bucket{pool="web",le="1"} 3
        latency_seconds_bucket{pool="web",le="+Inf"} 7
        latency_seconds_sum{pool="web"} 7.25
        latency_seconds_count{pool="web"} 7

        """)
    }

    @Test func escapesLabelValuesAndHelp() {
        #expect(PrometheusText.escapeLabel(#"a\b"c"#) == #"a\\b\"c"#)
        #expect(PrometheusText.escapeLabel("line\nnext") == #"line\nnext"#)
        #expect(PrometheusText.escapeLabel("plain [::1]:80") == "plain [::1]:80")
        #expect(PrometheusText.escapeHelp("a\\b\nc \"q\"") == #"a\\b\nc "q""#)
        var text = PrometheusText()
        text.family("m", .gauge, help: "h")
        text.sample("m", [("listener", "we\"ird\\\n")], 1)
        #expect(text.output.hasSuffix(#"m{listener="we\"ird\\\n"} 1"# + "\n"))
    }

    @Test func formatsFloatsAsTheFormatWants() {
        #expect(PrometheusText.format(2) == "2")
        #expect(PrometheusText.format(0.00025) == "0.00025")
        #expect(PrometheusText.format(.infinity) == "+Inf")
        #expect(PrometheusText.format(-.infinity) == "-Inf")
        #expect(PrometheusText.format(.nan) == "NaN")
    }
}

@Suite struct LatencyHistogramTests {
    /// The unrolled search agrees with a plain scan of the bounds on every bound, either side of it, and
    /// the extremes.
    @Test func bucketMatchesALinearScan() {
        func scan(_ value: Microseconds) -> Int {
            LatencyHistogram.bounds.firstIndex { value <= $0 } ?? LatencyHistogram.bounds.count
        }
        var values: [Microseconds] = [0, -5, 1, .max]
        for bound in LatencyHistogram.bounds { values += [bound - 1, bound, bound + 1] }
        for value in values { #expect(LatencyHistogram.bucket(value) == scan(value), "value \(value)") }
        #expect(LatencyHistogram.bucket(100) == 0)
        #expect(LatencyHistogram.bucket(101) == 1)
        #expect(LatencyHistogram.bucket(10_000_001) == 16)
        #expect(LatencyHistogram.bounds.count + 1 == LatencyHistogram.bucketCount)
    }

    @Test func quantilesInterpolateInsideTheBucket() {
        var counts = [Int](repeating: 0, count: LatencyHistogram.bucketCount)
        #expect(LatencyHistogram.quantile(0.5, counts: counts) == nil)
        // 10 values in (1 ms, 2.5 ms]: the median is halfway through that bucket.
        counts[4] = 10
        #expect(LatencyHistogram.quantile(0.5, counts: counts) == 1_750)
        #expect(LatencyHistogram.quantile(1, counts: counts) == 2_500)
        // 90 fast (≤ 100 µs), 10 slow (in (50 ms, 100 ms]): p50 in the first bucket, p99 in the slow one.
        counts = [Int](repeating: 0, count: LatencyHistogram.bucketCount)
        counts[0] = 90
        counts[9] = 10
        #expect(LatencyHistogram.quantile(0.5, counts: counts) == 56)
        #expect(LatencyHistogram.quantile(0.9, counts: counts) == 100)
        #expect(LatencyHistogram.quantile(0.99, counts: counts) == 95_000)
        var histogram = HistogramCounts()
        histogram.buckets = counts
        #expect(histogram.percentiles == LatencyPercentiles(p50: 56, p90: 100, p99: 95_000))
        #expect(HistogramCounts().percentiles == LatencyPercentiles(p50: nil, p90: nil, p99: nil))
        // Everything above the last bound: the last finite bound, as histogram_quantile answers.
        counts = [Int](repeating: 0, count: LatencyHistogram.bucketCount)
        counts[16] = 3
        #expect(LatencyHistogram.quantile(0.5, counts: counts) == 10_000_000)
    }

    @Test func recordsObservationsInTheirBucketsWithTheSum() {
        let metrics = WorkerPoolMetrics()
        let record = metrics.backend(0)
        for value: Microseconds in [50, 100, 3_000, 20_000_000] { record.observeConnect(value) }
        record.observeFirstByte(700)
        let counts = record.read()
        #expect(counts.connect.count == 4)
        #expect(counts.connect.sum == 20_003_150)
        #expect(counts.connect.buckets[0] == 2 && counts.connect.buckets[5] == 1 && counts.connect.buckets[16] == 1)
        #expect(counts.firstByte.buckets[3] == 1 && counts.firstByte.count == 1)
        #expect(counts[.connectionsTotal] == 0)
    }
}

@Suite struct WorkerPoolMetricsTests {
    /// Growing the pool adds segments: every record written before stays where it was, with its values,
    /// and slots past the capacity read as absent until the writer makes them.
    @Test func growingMovesNothing() {
        let metrics = WorkerPoolMetrics()
        metrics.backend(3).cell(.connectionsTotal).add(7)
        #expect(metrics.record(WorkerPoolMetrics.segmentSize) == nil)
        let before = (0..<WorkerPoolMetrics.segmentSize).map { metrics.address(of: $0) }
        metrics.ensureCapacity(40)
        metrics.backend(39).cell(.bytesToClient).add(5)
        let middle = (0..<40).map { metrics.address(of: $0) }
        metrics.ensureCapacity(5_000)
        #expect((0..<WorkerPoolMetrics.segmentSize).map { metrics.address(of: $0) } == before)
        #expect((0..<40).map { metrics.address(of: $0) } == middle)
        #expect(metrics.backend(3).read()[.connectionsTotal] == 7)
        #expect(metrics.backend(39).read()[.bytesToClient] == 5)
        #expect(metrics.record(4_999) != nil && metrics.record(5_000 + WorkerPoolMetrics.segmentSize) == nil)
        // Records are whole cache lines apart, so two slots never share one.
        let stride = Int(bitPattern: metrics.address(of: 1)) - Int(bitPattern: metrics.address(of: 0))
        #expect(stride % 64 == 0 && Int(bitPattern: metrics.address(of: 0)) % 64 == 0)
    }

    /// One writer thread grows the pool and counts while this thread reads: the reader never sees a value
    /// go back and ends with the writer's totals.
    @Test func aReaderFollowsAWriterThatGrows() async {
        final class Done: Sendable { let flag = Atomic<Bool>(false) }
        let metrics = WorkerPoolMetrics()
        let done = Done()
        let rounds = 20_000
        await withTaskGroup(of: Void.self) { group in
            group.addTask {
                for i in 1...rounds {
                    if i % 1_000 == 0 { metrics.ensureCapacity(i / 10) }
                    metrics.backend(0).cell(.bytesFromClient).add(1)
                    metrics.backend((i / 10) % metrics.capacity).cell(.connectionsTotal).add(1)
                    metrics.cell(.retries).add(1)
                }
                done.flag.store(true, ordering: .releasing)
            }
            var last = 0
            var backwards = false
            while !done.flag.load(ordering: .acquiring) {
                let value = metrics.record(0)!.read()[.bytesFromClient]
                if value < last { backwards = true }
                last = value
                var total = 0
                for slot in 0..<2_016 { total += metrics.record(slot)?.read()[.connectionsTotal] ?? 0 }
                if total > rounds { backwards = true }
            }
            #expect(!backwards)
            await group.waitForAll()
        }
        #expect(metrics.record(0)!.read()[.bytesFromClient] == rounds)
        var total = 0
        for slot in 0..<2_016 { total += metrics.record(slot)?.read()[.connectionsTotal] ?? 0 }
        #expect(total == rounds)
        var pool = PoolCounts()
        pool.add(metrics)
        #expect(pool[.retries] == rounds)
    }

    @Test func countsSumOverWorkers() {
        let workers = [WorkerPoolMetrics(), WorkerPoolMetrics()]
        workers[0].backend(1).cell(.failedRefused).add(2)
        workers[1].backend(1).cell(.failedTimeout).add(1)
        workers[0].backend(1).cell(.connectionsActive).add(1)
        workers[1].backend(1).cell(.connectionsActive).add(2)
        workers[1].backend(1).cell(.connectionsActive).add(-1)
        workers[0].cell(.queueLength).set(3)
        workers[1].cell(.queueLength).set(2)
        workers[1].cell(.panic).set(1)
        var backend = BackendCounts()
        var pool = PoolCounts()
        for worker in workers {
            backend.add(worker.backend(1))
            pool.add(worker)
        }
        #expect(backend.connectFailures == 3 && backend[.failedRefused] == 2 && backend[.failedTimeout] == 1)
        #expect(backend[.connectionsActive] == 2)
        #expect(pool[.queueLength] == 5 && pool[.panic] == 1)
    }

    @Test func listenerCountsPerWorker() {
        let listener = ListenerMetrics(workers: 3)
        listener.accepted(0).add(2)
        listener.accepted(2).add(1)
        listener.active(2).add(1)
        listener.active(0).add(1)
        listener.active(0).add(-1)
        #expect(listener.totalAccepted == 3 && listener.totalActive == 1)
    }
}
