import EventLoop
import FulcrumCore
import Glibc

/// What the admin API reads and changes: the live state, as JSON, and the runtime operations (operator
/// overrides, weight overrides, reload). Every change goes through `LivePool`'s operations and reaches the
/// workers as snapshots, like a reload; the caller hears back once every worker has applied it.
extension LiveState {
    enum AdminError: Error, Equatable {
        case unknownPool(String)
        case unknownBackend(pool: String, backend: String)

        var message: String {
            switch self {
            case .unknownPool(let name): return "no pool named '\(name)'"
            case .unknownBackend(let pool, let backend): return "pool '\(pool)' has no backend '\(backend)'"
            }
        }
    }

    /// The pool and slot an admin path names (`app`, `127.0.0.1:9001` or `[::1]:9001`).
    func locate(pool name: String, backend text: String) throws(AdminError) -> (pool: Int, slot: Int) {
        guard let pool = poolIndex(name) else { throw .unknownPool(name) }
        guard case .success(let address) = ConfigValue.address(text), let slot = pools[pool].slot(of: address) else {
            throw .unknownBackend(pool: name, backend: text)
        }
        return (pool, slot)
    }

    /// Sets (or clears, with nil) the operator-state override of a backend; returns the generation that
    /// carries it to the workers.
    func adminSetState(pool: Int, slot: Int, _ state: OperatorState?, by who: String) -> Int {
        // Asking for what is already set changes nothing: no history entry, nothing sent to the workers.
        guard pools[pool].backends[slot].overrides.state != state else { return generation }
        let address = pools[pool].backends[slot].id.address
        let before = pools[pool].backends[slot].effective.state
        pools[pool].setOperatorState(address, state)
        let after = pools[pool].backends[slot].effective.state
        let message = state.map { "operator: \($0.rawValue) via admin (was \(before.rawValue))" }
            ?? "operator: state override cleared via admin (now \(after.rawValue), from the \(pools[pool].backends[slot].baseSource.rawValue))"
        return adminChanged(pool: pool, slot: slot, message, by: who)
    }

    /// Sets (or clears, with nil) the weight override of a backend.
    func adminSetWeight(pool: Int, slot: Int, _ weight: Int?, by who: String) -> Int {
        guard pools[pool].backends[slot].overrides.weight != weight else { return generation }
        let address = pools[pool].backends[slot].id.address
        let before = pools[pool].backends[slot].effective.weight
        pools[pool].setWeight(address, weight)
        let after = pools[pool].backends[slot].effective.weight
        let message = weight.map { "operator: weight \(before) -> \($0) via admin" }
            ?? "operator: weight override cleared via admin (now \(after), from the \(pools[pool].backends[slot].baseSource.rawValue))"
        return adminChanged(pool: pool, slot: slot, message, by: who)
    }

    private func adminChanged(pool: Int, slot: Int, _ message: String, by who: String) -> Int {
        pools[pool].record(slot: slot, BackendEvent(at: WallClock.microseconds, source: .operator, message: message))
        let generation = publish()
        logger.notice("admin: \(message)", metadata: [
            "backend": "\(pools[pool].backends[slot].id)", "peer": "\(who)", "generation": "\(generation)",
        ])
        return generation
    }

    // MARK: - Status

    /// Everything `GET /status` shows.
    func statusJSON(uptime: Int64, configPath: String?) -> JSON {
        let monotonic = base.monotonicMicroseconds
        let wall = WallClock.microseconds
        return .object([
            "fulcrum": .object([
                "version": .string(Engine.version), "pid": .int(Int(getpid())), "workers": .int(workers),
                "now": .string(Self.iso8601(wall)),
                "uptime_seconds": .int(Int(uptime / 1_000_000)), "config": .optional(configPath),
                "generation": .int(generation),
                "reloads": .object(["succeeded": .int(reloadsSucceeded), "failed": .int(reloadsFailed)]),
            ]),
            "listeners": .array(config.listeners.map { listener in
                let counts = listenerCounts(listener.name)
                return .object([
                    "name": .string(listener.name),
                    "address": .string(boundAddress(listener.name) ?? "\(listener.address)"),
                    "pool": .string(listener.pool),
                    "connections": .object([
                        "active": .int(counts?.active ?? 0), "total": .int(counts?.accepted ?? 0),
                    ]),
                ])
            }),
            "pools": .array(pools.indices.filter { !pools[$0].retired }.map { index in
                poolJSON(index, monotonic: monotonic, wall: wall)
            }),
        ])
    }

    private func poolJSON(_ index: Int, monotonic: Int64, wall: Int64) -> JSON {
        let pool = pools[index]
        let shown = pool.backends.filter { $0.listed || shared[index].counters.count($0.slot) > 0 }
        let counts = poolCounts(pool: index)
        return .object([
            "name": .string(pool.name),
            "balance": .string(pool.settings.balance.name),
            "active_checks": .bool(pool.settings.resilience.health != nil),
            "panic": .bool(counts[.panic] > 0),
            "connections_active": .int(shared[index].counters.total),
            "queue_length": .int(shared[index].order.waiting),
            "retries": .int(counts[.retries]), "replays": .int(counts[.replays]), "hedges": .int(counts[.hedges]),
            "refused": .object([
                "no_backend": .int(counts[.refusedNoBackend]), "queue_full": .int(counts[.refusedQueueFull]),
                "queue_timeout": .int(counts[.refusedQueueTimeout]), "retry_budget": .int(counts[.refusedRetryBudget]),
                "local_error": .int(counts[.refusedLocalError]),
            ]),
            "backends": .array(shown.map { backendJSON(index, $0, monotonic: monotonic, wall: wall) }),
            "discovery": .array(discovery.entries.filter { $0.spec.pool == pool.name }.map {
                discoveryJSON($0, monotonic: monotonic, wall: wall)
            }),
            "max_backends": pool.settings.isDiscovered ? .int(pool.settings.discovery.maxBackends) : .null,
        ])
    }

    /// One discovery source of a pool: whether it answers, what it lists, and what it held back or ignored.
    private func discoveryJSON(_ entry: DiscoveryRunner.Entry, monotonic: Int64, wall: Int64) -> JSON {
        func time(_ at: Int64?) -> JSON { at.map { .string(Self.iso8601($0)) } ?? .null }
        let r = entry.reconciler
        let state = r.stale != nil ? "stale" : entry.lastSuccess == nil ? "starting" : "ok"
        // Staleness is timed on the monotonic clock: shown on the wall clock.
        let staleSince = r.stale.map { wall - (monotonic - $0.since) }
        return .object([
            "source": .string(entry.spec.listing), "kind": .string(entry.spec.kindName),
            "state": .string(state), "since": time(staleSince ?? entry.lastSuccess),
            "error": .optional(entry.lastError), "last_success": time(entry.lastSuccess),
            "last_update": .optional(entry.lastDetail),
            "backends": .int(r.listed.count), "ignored_records": .int(r.ignored),
            "invalid_records": .object(r.invalid.sorted { $0.key < $1.key }.map { JSON.Member($0.key, .string($0.value)) }),
            "removal_held": .int(r.held.count),
            "updates": .int(entry.updates), "errors": .int(entry.errors),
        ])
    }

    /// One backend as `/status` and the admin's answers show it.
    func backendJSON(_ pool: Int, _ backend: LiveBackend, monotonic: Int64, wall: Int64) -> JSON {
        let settings = pools[pool].settings
        let effective = backend.effective
        let breaker = backend.breaker
        func time(_ at: Int64?) -> JSON { at.map { .string(Self.iso8601($0)) } ?? .null }
        // Breaker times are monotonic: shown on the wall clock.
        let breakerSince = breaker.since.map { wall - (monotonic - $0) }
        let checks = settings.resilience.health != nil
        let counts = backendCounts(pool: pool, slot: backend.slot)
        func milliseconds(_ percentiles: LatencyPercentiles) -> JSON {
            func ms(_ value: Microseconds?) -> JSON { value.map { .double(Double($0) / 1000) } ?? .null }
            return .object(["p50": ms(percentiles.p50), "p90": ms(percentiles.p90), "p99": ms(percentiles.p99)])
        }
        return .object([
            "address": .string("\(backend.id.address)"),
            "listed": .bool(backend.listed),
            "listed_by": .array(backend.listings.keys.sorted().map(JSON.string)),
            "up": .bool(backendIsUp(pool: pool, slot: backend.slot)),
            "weight": .object([
                "value": .int(effective.weight), "source": .string(backend.source(of: "weight").rawValue),
                "file": .int(backend.base.weight),
            ]),
            "priority": .int(effective.priority),
            "max_connections": effective.maxConnections.map(JSON.int) ?? .null,
            "state": .object([
                "value": .string(effective.state.rawValue), "source": .string(backend.source(of: "state").rawValue),
                "file": .string(backend.base.state.rawValue),
            ]),
            "check": checks ? .object([
                "state": .string(backend.check.rawValue), "reason": .optional(backend.checkReason),
                "since": time(backend.checkSince),
            ]) : .null,
            "breaker": .object([
                "state": .string(breaker.open > 0 ? "open" : breaker.halfOpen > 0 ? "half-open" : "closed"),
                "summary": .string(breaker.description),
                "open_workers": .int(breaker.open), "half_open_workers": .int(breaker.halfOpen),
                "workers": .int(breaker.workers), "since": time(breakerSince), "reason": .optional(breaker.reason),
            ]),
            "connections": .object([
                "active": .int(shared[pool].counters.count(backend.slot)), "total": .int(counts[.connectionsTotal]),
            ]),
            "failures": .object([
                "refused": .int(counts[.failedRefused]), "timeout": .int(counts[.failedTimeout]),
                "unreachable": .int(counts[.failedUnreachable]), "local": .int(counts[.failedLocal]),
            ]),
            "bytes": .object(["in": .int(counts[.bytesFromClient]), "out": .int(counts[.bytesToClient])]),
            "connect_time_ms": milliseconds(counts.connect.percentiles),
            "first_byte_time_ms": milliseconds(counts.firstByte.percentiles),
            "events": .string("/pools/\(pools[pool].name)/backends/\(backend.id.address)/events"),
        ])
    }

    /// A backend's event history, oldest first.
    func eventsJSON(pool: Int, slot: Int) -> JSON {
        let backend = pools[pool].backends[slot]
        return .object([
            "pool": .string(pools[pool].name),
            "backend": .string("\(backend.id.address)"),
            "events": .array(backend.events.map { event in
                .object([
                    "at": .string(Self.iso8601(event.at)), "source": .string(event.source.rawValue),
                    "message": .string(event.message),
                ])
            }),
        ])
    }

    private func boundAddress(_ listener: String) -> String? { listenerEndpoint(listener).map { "\($0)" } }

    /// `2026-11-21T15:05:18.123Z` for wall-clock microseconds.
    static func iso8601(_ microseconds: Int64) -> String {
        var seconds = time_t(microseconds / 1_000_000)
        var parts = tm()
        gmtime_r(&seconds, &parts)
        func two(_ n: Int32) -> String { n < 10 ? "0\(n)" : "\(n)" }
        let millis = Int(microseconds % 1_000_000 / 1_000)
        let ms = millis < 10 ? "00\(millis)" : millis < 100 ? "0\(millis)" : "\(millis)"
        return "\(parts.tm_year + 1900)-\(two(parts.tm_mon + 1))-\(two(parts.tm_mday))T\(two(parts.tm_hour)):\(two(parts.tm_min)):\(two(parts.tm_sec)).\(ms)Z"
    }
}
