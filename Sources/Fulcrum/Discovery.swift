import EventLoop
import FulcrumCore
import Logging

/// What one discovery source of a pool is: a host-name entry, the pool's SRV name or its etcd prefix,
/// with the settings it runs with. Two specs with one `listing` in one pool are the same source; when
/// only their settings differ, the source restarts and keeps what it listed.
struct DiscoverySpec: Equatable {
    enum Kind: Equatable {
        case name(FulcrumConfig.NamedBackend)
        case srv(String)
        case etcd(FulcrumConfig.Discovery.Etcd)
    }

    var pool: String
    var kind: Kind
    /// The resolver settings, for the DNS kinds.
    var dns: FulcrumConfig.DNS?

    /// The source's name in logs, `/status`, metrics and its backends' listings.
    var listing: String {
        switch kind {
        case .name(let name): return "dns \(name.name)"
        case .srv(let name): return "srv \(name)"
        case .etcd(let etcd): return "etcd \(etcd.prefix)"
        }
    }

    var kindName: String {
        switch kind {
        case .name: return "dns"
        case .srv: return "srv"
        case .etcd: return "etcd"
        }
    }

    /// Every source a configuration asks for, pool by pool.
    static func all(in config: FulcrumConfig) -> [DiscoverySpec] {
        config.pools.flatMap { pool -> [DiscoverySpec] in
            var specs = pool.names.map { DiscoverySpec(pool: pool.name, kind: .name($0), dns: config.dns) }
            switch pool.discovery.source {
            case .srv(let name)?: specs.append(DiscoverySpec(pool: pool.name, kind: .srv(name), dns: config.dns))
            case .etcd(let etcd)?: specs.append(DiscoverySpec(pool: pool.name, kind: .etcd(etcd)))
            case nil: break
            }
            return specs
        }
    }
}

/// Runs every discovery source of the process on the main loop, and applies what each reports to its
/// pool through the pool's own operations (`LivePool.list` / `unlist`), as a reload does: the workers get
/// the new snapshot, the health checker its new targets. Each source's reports go through its
/// `DiscoveryReconciler`, which keeps the last known set when the source fails and holds back a read that
/// would remove every backend until a second read confirms it.
final class DiscoveryRunner {
    /// One running source, with what it has listed and how it has been doing.
    final class Entry {
        /// Replaced when a reload changes the source's settings but not its identity (pool and listing).
        var spec: DiscoverySpec
        var source: DiscoverySource?
        var reconciler = DiscoveryReconciler()
        /// Reads again to confirm a held-back removal.
        var recheck: Timer?
        /// Has reported at least once (a snapshot or a failure) since it started.
        var reported = false
        var updates = 0
        var errors = 0
        /// Wall-clock microseconds (whether and since when it is stale is the reconciler's, on the
        /// monotonic clock).
        var lastSuccess: Int64?
        var lastError: String?
        var lastDetail: String?

        init(spec: DiscoverySpec) { self.spec = spec }
    }

    /// Makes the source for a spec; set by the engine (the DNS service and etcd client live there).
    typealias Factory = (_ spec: DiscoverySpec, _ report: @escaping DiscoverySink) -> DiscoverySource?

    private(set) var entries: [Entry] = []
    private let base: EventBase
    private var logger: Logger
    var factory: Factory?
    /// Applies operations to the live pools; set by `LiveState`.
    unowned let state: LiveState
    /// Called once every source has reported at least once (for the start, which waits for it).
    private var firstRoundDone: (() -> Void)?
    private var poolWaiters: [(pool: String, done: () -> Void)] = []

    init(state: LiveState, base: EventBase, logger: Logger) {
        self.state = state
        self.base = base
        self.logger = logger
    }

    var isEmpty: Bool { entries.isEmpty }

    /// Starts, restarts and stops sources so that exactly those `config` asks for run. A source no longer
    /// asked for unlists what it listed (those backends drain); one whose settings changed restarts and
    /// keeps its set until its first read says otherwise.
    func sync(_ config: FulcrumConfig) {
        let wanted = DiscoverySpec.all(in: config)
        var kept: [Entry] = []
        var removed: [Entry] = []
        for entry in entries {
            if wanted.contains(entry.spec) {
                kept.append(entry)
                continue
            }
            entry.source?.stop()
            entry.source = nil
            entry.recheck?.cancel()
            let restarted = wanted.first { $0.pool == entry.spec.pool && $0.listing == entry.spec.listing }
            if let spec = restarted {
                // The same source with other settings: it keeps what it listed and its history.
                entry.spec = spec
                entry.reported = false
                kept.append(entry)
                logger.info("discovery: \(spec.listing) restarts with new settings", metadata: ["pool": "\(spec.pool)"])
            } else {
                removed.append(entry)
            }
        }
        var added: Set<String> = []
        for spec in wanted where !kept.contains(where: { $0.spec == spec }) {
            kept.append(Entry(spec: spec))
            added.insert(spec.pool)
        }
        entries = kept
        for entry in entries where entry.source == nil { start(entry) }
        // A source the reload removes takes its backends with it. When the pool gains another source in
        // the same reload (a new prefix, name or kind), they stay until the new one has answered, so that
        // replacing a source does not empty the pool meanwhile.
        for entry in removed {
            let pool = entry.spec.pool
            let drain = { [weak self] in
                self?.unlistAll(entry)
                self?.logger.info("discovery: \(entry.spec.listing) removed by a reload; its backends drain", metadata: [
                    "pool": "\(pool)",
                ])
            }
            if added.contains(pool) && config.pool(named: pool) != nil { whenAnswered(pool: pool, drain) } else { drain() }
        }
    }

    /// Calls `done` once every source has reported at least once (at once if none runs or all have).
    func whenFirstRoundDone(_ done: @escaping () -> Void) {
        if entries.allSatisfy(\.reported) { done() } else { firstRoundDone = done }
    }

    /// Calls `done` once every source of `pool` has answered or failed at least once (at once if it has
    /// none, or they all have).
    func whenAnswered(pool: String, _ done: @escaping () -> Void) {
        if entries.allSatisfy({ $0.spec.pool != pool || $0.reported }) { done() } else { poolWaiters.append((pool, done)) }
    }

    func stop() {
        poolWaiters = []
        for entry in entries {
            entry.source?.stop()
            entry.source = nil
            entry.recheck?.cancel()
        }
        firstRoundDone = nil
    }

    private func start(_ entry: Entry) {
        guard let factory else { return }
        entry.source = factory(entry.spec) { [weak self, weak entry] report in
            guard let self, let entry else { return }
            self.handle(report, from: entry)
        }
        if entry.source == nil {
            entry.reported = true
            entry.lastError = "this source cannot start"
        }
        entry.source?.start()
    }

    // MARK: - Reports

    private func handle(_ report: DiscoveryReport, from entry: Entry) {
        guard entries.contains(where: { $0 === entry }), let pool = state.poolIndex(entry.spec.pool) else { return }
        let now = base.monotonicMicroseconds
        let staleBefore = entry.reconciler.stale
        let limit = state.pools[pool].settings.discovery.maxBackends
            - (state.pools[pool].discoveredCount - entry.reconciler.listed.count)
        let outcome = entry.reconciler.apply(report, now: now, limit: limit)
        let meta: Logger.Metadata = ["pool": "\(entry.spec.pool)", "source": "\(entry.spec.listing)"]
        switch report {
        case .failed(let message, let retryIn):
            entry.errors += 1
            if staleBefore == nil {
                logger.warning("discovery: \(entry.spec.listing) failed: \(message); keeping the last known \(entry.reconciler.listed.count) backend(s), retrying in \(retryIn.configText)", metadata: meta)
            } else if entry.lastError != message {
                logger.warning("discovery: \(entry.spec.listing) still failing: \(message)", metadata: meta)
            }
            entry.lastError = message
        case .invalid:
            break
        case .snapshot(_, let detail), .put(_, let detail), .delete(_, let detail):
            if let stale = staleBefore {
                logger.notice("discovery: \(entry.spec.listing) answers again after \((now - stale.since) / 1_000_000)s", metadata: meta)
            }
            entry.lastError = nil
            entry.lastSuccess = WallClock.microseconds
            entry.lastDetail = detail
            entry.updates += 1
        }
        for note in outcome.notes { logger.warning("discovery: \(entry.spec.listing): \(note)", metadata: meta) }
        if let after = outcome.recheckAfter {
            if entry.recheck == nil {
                entry.recheck = Timer(base: base) { [weak entry] in entry?.source?.refresh() }
            }
            entry.recheck?.schedule(after: after)
        }
        apply(outcome.operations, pool: pool, entry: entry, detail: Self.detail(of: report))
        if !entry.reported {
            entry.reported = true
            if entries.allSatisfy(\.reported), let done = firstRoundDone {
                firstRoundDone = nil
                done()
            }
            let pool = entry.spec.pool
            if entries.allSatisfy({ $0.spec.pool != pool || $0.reported }) {
                let ready = poolWaiters.filter { $0.pool == pool }
                poolWaiters.removeAll { $0.pool == pool }
                for waiter in ready { waiter.done() }
            }
        }
    }

    private static func detail(of report: DiscoveryReport) -> String {
        switch report {
        case .snapshot(_, let detail), .put(_, let detail), .delete(_, let detail): return detail
        case .invalid, .failed: return ""
        }
    }

    /// Lists and unlists on the pool, logs and records each change, and tells the workers and the checker.
    private func apply(_ operations: [DiscoveryReconciler.Operation], pool: Int, entry: Entry, detail: String) {
        guard !operations.isEmpty else { return }
        let listing = entry.spec.listing
        let wall = WallClock.microseconds
        let counters = state.shared[pool].counters
        let why = detail.isEmpty ? listing : "\(listing), \(detail)"
        for operation in operations {
            switch operation {
            case .list(let backend):
                let before = state.pools[pool].backend(backend.address)
                let wasListed = before?.listed ?? false
                guard let slot = state.pools[pool].list(backend, by: listing, gone: { counters.count($0) == 0 }) else {
                    logger.error("discovery: backend not added: the pool has had \(LivePool.maxSlots) distinct backend addresses since start; restart to add more", metadata: [
                        "pool": "\(entry.spec.pool)", "backend": "\(backend.address)", "source": "\(listing)",
                    ])
                    continue
                }
                let message: String
                if !wasListed {
                    message = "discovery: added by \(why) (weight \(backend.weight), priority \(backend.priority), \(backend.state.rawValue))"
                } else if let old = before?.listings[listing], old != backend {
                    message = "discovery: \(Self.changes(old, backend)) (\(why))"
                } else {
                    continue
                }
                logger.info("\(message)", metadata: ["pool": "\(entry.spec.pool)", "backend": "\(backend.address)"])
                state.pools[pool].record(slot: slot, BackendEvent(at: wall, source: .discovery, message: message))
            case .unlist(let address):
                guard let slot = state.pools[pool].slot(of: address) else { continue }
                let gone = state.pools[pool].unlist(address, by: listing)
                let message = gone ? "discovery: removed by \(why); draining"
                                   : "discovery: no longer listed by \(why); still listed by \(state.pools[pool].backends[slot].listings.keys.sorted().joined(separator: ", "))"
                logger.info("\(message)", metadata: ["pool": "\(entry.spec.pool)", "backend": "\(address)"])
                state.pools[pool].record(slot: slot, BackendEvent(at: wall, source: .discovery, message: message))
            }
        }
        state.discoveryChanged(pool: pool)
    }

    private static func changes(_ old: FulcrumConfig.Backend, _ new: FulcrumConfig.Backend) -> String {
        var parts: [String] = []
        if old.weight != new.weight { parts.append("weight \(old.weight) -> \(new.weight)") }
        if old.priority != new.priority { parts.append("priority \(old.priority) -> \(new.priority)") }
        if old.state != new.state { parts.append("state \(old.state.rawValue) -> \(new.state.rawValue)") }
        if old.maxConnections != new.maxConnections {
            parts.append("max_connections \(old.maxConnections.map(String.init) ?? "none") -> \(new.maxConnections.map(String.init) ?? "none")")
        }
        return parts.joined(separator: ", ")
    }

    /// A source that goes away takes its backends with it (they drain), unless another listing has them.
    private func unlistAll(_ entry: Entry) {
        // Retired pools too: a pool a reload removes and a later one adds again is the same pool.
        guard let pool = state.pools.lastIndex(where: { $0.name == entry.spec.pool }) else { return }
        let operations = entry.reconciler.listed.keys.map { DiscoveryReconciler.Operation.unlist($0) }
        apply(operations, pool: pool, entry: entry, detail: "source removed")
    }
}
