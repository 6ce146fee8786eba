import EventLoop
import FulcrumCore

/// The read side of the metrics, for `GET /status` and `GET /metrics`: every value summed over the
/// workers' blocks (each written by its worker alone, read here with relaxed loads), on the main loop.
/// Values read while workers run are each current, not a snapshot of one instant: a connection may show
/// in `connections_total` a moment before it shows in the bytes.
extension LiveState {
    /// One backend's values summed over every worker; zeros for a slot no worker has written yet.
    func backendCounts(pool: Int, slot: Int) -> BackendCounts {
        var counts = BackendCounts()
        for metrics in shared[pool].metrics {
            if let record = metrics.record(slot) { counts.add(record) }
        }
        return counts
    }

    /// A pool's own values (retries, replays, hedges, refusals, waiting clients, panic) over every worker.
    func poolCounts(pool: Int) -> PoolCounts {
        var counts = PoolCounts()
        for metrics in shared[pool].metrics { counts.add(metrics) }
        return counts
    }

    /// A listener's clients over every worker: open now, and accepted since its sockets were bound.
    func listenerCounts(_ name: String) -> (active: Int, accepted: Int)? {
        bound[name].map { ($0.metrics.totalActive, $0.metrics.totalAccepted) }
    }

    /// Whether a backend takes new connections as the main loop knows it: listed, operator state
    /// `enabled`, its active check `up` (or no active checks; or not checked yet with `assume_healthy`),
    /// and its breaker closed on every worker. Panic mode and the max-ejection cap, which may still send it
    /// clients while a signal is bad, are not counted: `up` says whether the backend itself is well.
    func backendIsUp(pool: Int, slot: Int) -> Bool {
        let live = pools[pool]
        let backend = live.backends[slot]
        guard backend.listed, backend.effective.state == .enabled, backend.breaker.isClosed else { return false }
        guard let checks = live.settings.resilience.health else { return true }
        return backend.check == .up || (backend.check == .unknown && checks.assumeHealthy)
    }

    /// Every metric in the Prometheus text format (`PrometheusText.contentType`), for `GET /metrics`.
    /// `version` is the build's, for `fulcrum_build_info`.
    func metricsText(version: String, accessLogDropped: UInt64? = nil) -> String {
        var text = PrometheusText()
        text.family("fulcrum_build_info", .gauge, help: "Always 1; the version of the running build.")
        text.sample("fulcrum_build_info", [("version", version)], 1)
        text.family("process_start_time_seconds", .gauge, help: "Start time of the process since the Unix epoch, in seconds.")
        text.sample("process_start_time_seconds", [], Double(startedAt) / 1e6)
        text.family("process_open_fds", .gauge, help: "Open file descriptors.")
        text.sample("process_open_fds", [], ProcessInfoReader.openDescriptors())
        text.family("process_max_fds", .gauge, help: "The limit of open file descriptors.")
        text.sample("process_max_fds", [], ProcessInfoReader.descriptorLimit())
        text.family("fulcrum_config_reloads_total", .counter, help: "Configuration reloads, by result.")
        text.sample("fulcrum_config_reloads_total", [("result", "success")], reloadsSucceeded)
        text.sample("fulcrum_config_reloads_total", [("result", "failure")], reloadsFailed)
        text.family("fulcrum_config_last_reload_successful", .gauge, help: "1 if the last reload applied (or none was tried), 0 if it failed.")
        text.sample("fulcrum_config_last_reload_successful", [], lastReloadSucceeded ? 1 : 0)
        text.family("fulcrum_config_last_reload_success_timestamp_seconds", .gauge, help: "When the running configuration was applied (start or last successful reload), seconds since the Unix epoch.")
        text.sample("fulcrum_config_last_reload_success_timestamp_seconds", [], Double(lastApplied) / 1e6)
        if let accessLogDropped {
            text.family("fulcrum_access_log_dropped_lines_total", .counter, help: "Access log lines dropped: the writer fell behind or a write failed.")
            text.sample("fulcrum_access_log_dropped_lines_total", [], Int(accessLogDropped))
        }
        writeListeners(&text)
        writePools(&text)
        writeBackends(&text)
        writeDiscovery(&text)
        return text.output
    }

    /// One series per discovery source, labelled by pool and source (`dns redis.internal:6379`, …).
    private func writeDiscovery(_ text: inout PrometheusText) {
        let entries = discovery.entries
        guard !entries.isEmpty else { return }
        func labels(_ entry: DiscoveryRunner.Entry) -> [(String, String)] {
            [("pool", entry.spec.pool), ("source", entry.spec.listing), ("kind", entry.spec.kindName)]
        }
        let families: [(String, PrometheusText.Kind, String, (DiscoveryRunner.Entry) -> Double)] = [
            ("fulcrum_discovery_backends", .gauge, "Backends the source lists on its pool now.",
             { Double($0.reconciler.listed.count) }),
            ("fulcrum_discovery_stale", .gauge, "1 while the source fails and its pool keeps the last known set.",
             { $0.reconciler.stale == nil ? 0 : 1 }),
            ("fulcrum_discovery_updates_total", .counter, "Answers the source gave (complete reads and watch events).",
             { Double($0.updates) }),
            ("fulcrum_discovery_errors_total", .counter, "Failed reads of the source (unreachable, timeout, NXDOMAIN, …).",
             { Double($0.errors) }),
            ("fulcrum_discovery_ignored_records", .gauge, "Records the source lists beyond the pool's max_backends.",
             { Double($0.reconciler.ignored) }),
            ("fulcrum_discovery_removal_held", .gauge, "Backends a read would remove all at once, held until a second read confirms it.",
             { Double($0.reconciler.held.count) }),
            ("fulcrum_discovery_last_success_timestamp_seconds", .gauge, "When the source last answered, seconds since the Unix epoch (0: never).",
             { Double($0.lastSuccess ?? 0) / 1e6 }),
        ]
        for (name, kind, help, value) in families {
            text.family(name, kind, help: help)
            for entry in entries { text.sample(name, labels(entry), value(entry)) }
        }
    }

    private func writeListeners(_ text: inout PrometheusText) {
        let listeners = config.listeners.compactMap { listener in bound[listener.name].map { (listener.name, $0.metrics) } }
        text.family("fulcrum_listener_connections_active", .gauge, help: "Client connections open on the listener.")
        for (name, metrics) in listeners {
            text.sample("fulcrum_listener_connections_active", [("listener", name)], metrics.totalActive)
        }
        text.family("fulcrum_listener_connections_total", .counter, help: "Client connections accepted on the listener.")
        for (name, metrics) in listeners {
            text.sample("fulcrum_listener_connections_total", [("listener", name)], metrics.totalAccepted)
        }
    }

    private func writePools(_ text: inout PrometheusText) {
        // A pool the file no longer defines is gone from the metrics (its series end, as Prometheus expects).
        let counts = pools.indices.filter { !pools[$0].retired }.map { (pools[$0].name, poolCounts(pool: $0)) }
        let simple: [(String, PrometheusText.Kind, String, PoolMetric)] = [
            ("fulcrum_pool_retries_total", .counter, "Connects retried on another backend after a failed attempt.", .retries),
            ("fulcrum_pool_replays_total", .counter, "Requests replayed to another backend after a failure before the first byte.", .replays),
            ("fulcrum_pool_hedges_total", .counter, "Second connects raced against a slow one.", .hedges),
            ("fulcrum_pool_queue_length", .gauge, "Clients waiting for a backend slot.", .queueLength),
        ]
        for (name, kind, help, metric) in simple {
            text.family(name, kind, help: help)
            for (pool, pc) in counts { text.sample(name, [("pool", pool)], pc[metric]) }
        }
        text.family("fulcrum_pool_panic", .gauge, help: "1 while the pool is in panic mode (on any worker): health ignored, every enabled backend used.")
        for (pool, pc) in counts { text.sample("fulcrum_pool_panic", [("pool", pool)], pc[.panic] > 0 ? 1 : 0) }
        let reasons: [(String, PoolMetric)] = [
            ("no_backend", .refusedNoBackend), ("queue_full", .refusedQueueFull), ("queue_timeout", .refusedQueueTimeout),
            ("retry_budget", .refusedRetryBudget), ("local_error", .refusedLocalError),
        ]
        text.family("fulcrum_pool_clients_refused_total", .counter, help: "Clients closed without being relayed to a backend, by reason.")
        for (pool, pc) in counts {
            for (reason, metric) in reasons {
                text.sample("fulcrum_pool_clients_refused_total", [("pool", pool), ("reason", reason)], pc[metric])
            }
        }
    }

    private func writeBackends(_ text: inout PrometheusText) {
        // Every listed backend, and a removed one while its connections still drain
        // (`fulcrum_backend_listed` 0): then its series end, as a target's do when it goes away.
        var rows: [(labels: [(String, String)], pool: Int, slot: Int, counts: BackendCounts)] = []
        for pool in pools.indices where !pools[pool].retired {
            for backend in pools[pool].backends where backend.listed || shared[pool].counters.count(backend.slot) > 0 {
                rows.append(([("pool", pools[pool].name), ("backend", "\(backend.id.address)")], pool, backend.slot,
                             backendCounts(pool: pool, slot: backend.slot)))
            }
        }
        text.family("fulcrum_backend_up", .gauge, help: "1 when the backend takes new connections: listed, enabled, check up (or no checks), breaker closed on every worker.")
        for row in rows { text.sample("fulcrum_backend_up", row.labels, backendIsUp(pool: row.pool, slot: row.slot) ? 1 : 0) }
        text.family("fulcrum_backend_listed", .gauge, help: "1 while the configuration lists the backend; 0 once removed (its connections may still drain).")
        for row in rows { text.sample("fulcrum_backend_listed", row.labels, pools[row.pool].backends[row.slot].listed ? 1 : 0) }
        text.family("fulcrum_backend_breaker_state", .gauge, help: "Workers whose circuit breaker for the backend is in each state.")
        for row in rows {
            let breaker = pools[row.pool].backends[row.slot].breaker
            text.sample("fulcrum_backend_breaker_state", row.labels + [("state", "closed")], breaker.workers - breaker.open - breaker.halfOpen)
            text.sample("fulcrum_backend_breaker_state", row.labels + [("state", "open")], breaker.open)
            text.sample("fulcrum_backend_breaker_state", row.labels + [("state", "half_open")], breaker.halfOpen)
        }
        text.family("fulcrum_backend_connections_active", .gauge, help: "Connections to the backend relaying a client now.")
        for row in rows { text.sample("fulcrum_backend_connections_active", row.labels, row.counts[.connectionsActive]) }
        text.family("fulcrum_backend_connections_total", .counter, help: "Connections to the backend established and relayed to a client.")
        for row in rows { text.sample("fulcrum_backend_connections_total", row.labels, row.counts[.connectionsTotal]) }
        text.family("fulcrum_backend_connect_failures_total", .counter, help: "Connects to the backend that failed, by reason.")
        for row in rows {
            for (reason, metric) in [("refused", BackendMetric.failedRefused), ("timeout", .failedTimeout),
                                     ("unreachable", .failedUnreachable), ("local", .failedLocal)] {
                text.sample("fulcrum_backend_connect_failures_total", row.labels + [("reason", reason)], row.counts[metric])
            }
        }
        text.family("fulcrum_backend_bytes_total", .counter, help: "Bytes relayed through the backend: from_client went to it, to_client came from it.")
        for row in rows {
            text.sample("fulcrum_backend_bytes_total", row.labels + [("direction", "from_client")], row.counts[.bytesFromClient])
            text.sample("fulcrum_backend_bytes_total", row.labels + [("direction", "to_client")], row.counts[.bytesToClient])
        }
        let bounds = LatencyHistogram.bounds.map { Double($0) / 1e6 }
        text.family("fulcrum_backend_connect_duration_seconds", .histogram, help: "Time to establish a connection to the backend.")
        for row in rows {
            text.histogram("fulcrum_backend_connect_duration_seconds", row.labels, bounds: bounds,
                           counts: row.counts.connect.buckets, sum: Double(row.counts.connect.sum) / 1e6)
        }
        text.family("fulcrum_backend_first_byte_duration_seconds", .histogram, help: "Time from the connection to the backend to its first byte.")
        for row in rows {
            text.histogram("fulcrum_backend_first_byte_duration_seconds", row.labels, bounds: bounds,
                           counts: row.counts.firstByte.buckets, sum: Double(row.counts.firstByte.sum) / 1e6)
        }
    }
}
