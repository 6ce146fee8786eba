import EventLoop
import FulcrumCore
import Glibc
import Logging

/// The process's running state, owned by the main loop: the configuration in effect, each pool's live
/// state (`LivePool`), and each listener's bound sockets. Every change (a reload today; the admin API and
/// discovery later) goes through here: it changes the live state, then tells each worker through its
/// mailbox, in order, with a barrier that each worker acknowledges once it has applied everything before it.
///
/// ```text
///   main loop (owns LiveState)                                   worker i (owns its PoolRuntimes)
///   reload/admin/discovery ─▶ LivePool ops ─▶ snapshots ──mailbox i──▶ apply between events
///   HealthChecker verdicts ─▶ LivePool.checked ─────────────mailbox i──▶ PoolHealth.checked
///   LivePool.breakerChanged ◀─ EngineReport.breaker ◀──engine mailbox── PoolHealth breaker changes
///   "applied by every worker" ◀─ EngineReport.applied ◀─engine mailbox─ barrier(generation)
///   shared, never moving: SharedBackendCounters (connection counts), SharedQueueOrder (waiters)
/// ```
final class LiveState {
    /// The configuration in effect (a reload keeps the running values of the keys that need a restart).
    private(set) var config: FulcrumConfig
    /// Every pool the process has run, by index; a pool the file no longer defines is `retired`.
    var pools: [LivePool] = []
    /// What the workers of each pool share, by pool index.
    private(set) var shared: [PoolShared] = []
    /// Listening sockets by listener name: one per worker, all on the listener's address.
    private(set) var bound: [String: BoundListener] = [:]
    let workers: Int
    let mailboxes: [Mailbox<WorkerMessage>]
    /// Counts changes sent to the workers; each ends with a barrier of this number.
    private(set) var generation = 0
    /// The last barrier each worker acknowledged.
    private var applied: [Int]
    private(set) var reloadsSucceeded = 0
    private(set) var reloadsFailed = 0
    /// Whether the last reload applied; when the configuration last applied (start or reload), wall-clock
    /// microseconds; when the process started.
    private(set) var lastReloadSucceeded = true
    private(set) var lastApplied = WallClock.microseconds
    let startedAt = WallClock.microseconds
    /// The generation whose application by every worker is still to be logged, and what it was.
    /// What waits for every worker to apply a generation: the reload's log line and notification, an
    /// admin request's answer.
    private var waiters: [(generation: Int, done: () -> Void)] = []
    /// Listeners whose pool a reload added with active checks, held until its backends' first checks
    /// (like a start, and like Envoy's cluster warming): the pool each accepts for meanwhile (its previous
    /// one), or nil for a new listener, whose clients wait in the kernel's accept queue.
    private var held: [String: Int?] = [:]
    /// Ends every hold after `Engine.firstChecksWaitMicroseconds`, as a start waits no longer.
    private var holdTimer: Timer?
    let base: EventBase
    var logger: Logger
    weak var health: HealthChecker?
    /// Told the configuration a reload committed, for what the engine owns (the admin API).
    var onReloaded: ((FulcrumConfig) -> Void)?
    /// The discovery sources of every pool (host names, SRV, etcd).
    private(set) lazy var discovery = DiscoveryRunner(state: self, base: base, logger: logger)

    struct BoundListener {
        var config: FulcrumConfig.Listener
        var endpoint: Endpoint
        /// The listening sockets (SO_REUSEPORT): one per worker, or more after a takeover from a process
        /// that had more workers (`Handover.share` says which worker takes which); each worker owns and
        /// closes its own.
        var fds: [Int32]
        /// Connections accepted on these sockets, per worker; they follow the sockets.
        var metrics: ListenerMetrics

        /// Whether these sockets are bound where `listener` asks: the same configured address, or the
        /// address they were actually bound to (a port 0 the kernel chose, now written out).
        func serves(_ listener: FulcrumConfig.Listener) -> Bool {
            config.address == listener.address || "\(endpoint)" == "\(listener.address)"
        }
    }

    init(config: FulcrumConfig, workers: Int, mailboxes: [Mailbox<WorkerMessage>], base: EventBase, logger: Logger) {
        self.config = config
        self.base = base
        self.workers = workers
        self.mailboxes = mailboxes
        self.logger = logger
        applied = Array(repeating: 0, count: workers)
    }

    // MARK: - Start

    /// Binds every listener of the configuration, or takes over the sockets a running process hands
    /// over; on failure closes what it bound and throws.
    func bindListeners(takeover: Takeover?) throws(SystemError) {
        if let takeover {
            let all = try takeover.listeners(config, workers: workers)
            for (listener, fds) in zip(config.listeners, all) {
                let endpoint = (try? Socket.localEndpoint(fds[0])) ?? Endpoint(listener.address)
                bound[listener.name] = BoundListener(config: listener, endpoint: endpoint, fds: fds,
                                                     metrics: ListenerMetrics(workers: workers))
            }
            return
        }
        var result: [String: BoundListener] = [:]
        do throws(SystemError) {
            for listener in config.listeners { result[listener.name] = try bind(listener, in: config) }
        } catch {
            for listener in result.values { listener.fds.forEach(Socket.close) }
            throw error
        }
        bound = result
    }

    /// After a takeover from a process with fewer workers: binds the SO_REUSEPORT sockets that give each
    /// worker one of its own, joining the inherited group. Called just before the workers start, never
    /// earlier: the kernel hands a share of new clients to each socket of the group, and a socket nobody
    /// accepts on yet would keep them waiting (or reset them, if this process failed to start). If a bind
    /// fails, the workers share the inherited sockets.
    func joinExtraSockets() {
        var joined = false
        for listener in config.listeners {
            guard var sockets = bound[listener.name], sockets.fds.count < workers else { continue }
            do throws(SystemError) {
                let extra = try Handover.bind(listener, count: workers - sockets.fds.count, joining: sockets.endpoint)
                sockets.fds += extra
                bound[listener.name] = sockets
                joined = true
                logger.info("joined \(extra.count) more socket(s) to the inherited ones on \(sockets.endpoint)", metadata: [
                    "listener": "\(listener.name)", "new_sockets": "\(extra.count)",
                ])
            } catch {
                logger.warning("could not add sockets to the inherited ones; the workers share them", metadata: [
                    "listener": "\(listener.name)", "error": "\(error)",
                ])
            }
        }
        guard joined else { return }
        generation += 1
        for worker in 0..<workers {
            mailboxes[worker].post(contentsOf: [.listeners(assignments(for: worker)), .barrier(generation: generation)])
        }
    }

    /// Closes every listening socket: for a stop before any worker took them.
    func closeListeners() {
        for listener in bound.values { listener.fds.forEach(Socket.close) }
        bound = [:]
    }

    /// Builds the pools and tells every worker what to run: posted before the workers start, so each finds
    /// it in its mailbox on its first turn. The health checker gets its targets.
    func start() {
        for pool in config.pools { addPool(pool) }
        for pool in pools { health?.update(pool) }
        post(to: Array(0..<workers), drainTimeout: nil)
        discovery.sync(config)
    }

    /// A discovery source changed a pool: the workers get its new snapshot, the checker its targets.
    func discoveryChanged(pool: Int) {
        post(to: Array(0..<workers), drainTimeout: nil)
        health?.update(pools[pool])
    }

    private func addPool(_ pool: FulcrumConfig.Pool) {
        let live = LivePool(index: pools.count, pool: pool, workers: workers)
        pools.append(live)
        shared.append(PoolShared(backends: live.backends.count, workers: workers))
    }

    // MARK: - Reload

    /// How a reload went.
    enum ReloadOutcome {
        /// Applied as generation `generation` (every worker has it once `whenApplied` says so).
        case applied(generation: Int, changes: [String], restartNeeded: [String])
        /// Nothing changed: the errors, as `fulcrum check` prints them.
        case failed(errors: [String])
    }

    /// Re-reads the file and applies what changed, as a diff: nothing is restarted, no connection is cut.
    /// An invalid file, or a new listener that cannot be bound, changes nothing.
    @discardableResult
    func reload(path: String) -> ReloadOutcome {
        ServiceNotify.reloading(logger: logger)
        let loaded: FulcrumConfig
        do {
            loaded = try ConfigFile.load(path: path)
        } catch {
            reloadsFailed += 1
            lastReloadSucceeded = false
            // One log entry per error, each as `fulcrum check` prints it, for log pipelines that read lines.
            let lines = "\(error)".split(separator: "\n").map { String($0.drop { $0 == " " }) }
            logger.error("reload failed: the configuration is invalid; nothing changed, the running configuration stays", metadata: [
                "config": "\(path)", "reloads_failed": "\(reloadsFailed)",
            ])
            let errors = lines.filter { !$0.isEmpty && !$0.hasSuffix("error:") && !$0.hasSuffix("errors:") }
            for line in errors { logger.error("reload failed: \(line)", metadata: ["config": "\(path)"]) }
            ServiceNotify.reloaded(logger: logger)
            return .failed(errors: errors)
        }
        let diff = ConfigDiff(from: config, to: loaded)
        for change in diff.changes {
            if case .needsRestart = change {
                logger.warning("reload: \(change); restart to apply it", metadata: ["config": "\(path)"])
            }
        }
        let target = config.reloaded(to: loaded)
        let listeners: [String: BoundListener]
        do throws(SystemError) {
            listeners = try rebind(target)
        } catch {
            reloadsFailed += 1
            lastReloadSucceeded = false
            logger.error("reload failed: \(error); nothing changed, the running configuration stays", metadata: [
                "config": "\(path)", "reloads_failed": "\(reloadsFailed)",
            ])
            var errors = ["\(error)"]
            if error.errno == EADDRINUSE {
                errors.append("an address in use by one of this process's own listeners (a wildcard and a specific address on one port) is changed in two reloads, through another port, or by a restart")
                logger.error("reload failed: \(errors[1])", metadata: ["config": "\(path)"])
            }
            ServiceNotify.reloaded(logger: logger)
            return .failed(errors: errors)
        }
        // Committed from here on.
        let drainTimeoutChanged = target.drainTimeout != config.drainTimeout
        let poolCountBefore = pools.count
        let poolOf = Dictionary(uniqueKeysWithValues: config.listeners.map { ($0.name, $0.pool) })
        config = target
        bound = listeners
        for pool in target.pools {
            if let index = pools.firstIndex(where: { $0.name == pool.name }) {
                pools[index].retired = false
                // A backend listed again once every connection of its previous listing has ended is a new
                // backend; one whose connections still drain is the same backend.
                let counters = shared[index].counters
                let full = pools[index].apply(file: pool) { slot in counters.count(slot) == 0 }
                for address in full {
                    logger.error("reload: backend not added: the pool has had \(LivePool.maxSlots) distinct backend addresses since start; restart to add more", metadata: [
                        "pool": "\(pool.name)", "backend": "\(address)",
                    ])
                }
            } else {
                addPool(pool)
            }
        }
        let names = Set(target.pools.map(\.name))
        for index in pools.indices where !names.contains(pools[index].name) { pools[index].retired = true }
        reloadsSucceeded += 1
        lastReloadSucceeded = true
        lastApplied = WallClock.microseconds
        let applying = diff.changes.filter { if case .needsRestart = $0 { return false } else { return true } }
        for change in applying { logger.info("reload: \(change)") }
        recordConfigEvents(applying)
        // A pool added with active checks takes clients once its backends have had their first checks.
        // So does a pool added with discovery sources, once they have answered (or failed).
        let warming = (poolCountBefore..<pools.count).filter {
            pools[$0].settings.resilience.health != nil && !pools[$0].listed.isEmpty || pools[$0].settings.isDiscovered
        }
        for listener in target.listeners {
            guard let index = poolIndex(listener.pool), warming.contains(index) else { continue }
            held.updateValue(poolOf[listener.name].flatMap(poolIndex), forKey: listener.name)
        }
        // The snapshots go out first: a probe can report at once, and its verdict must follow them.
        post(to: Array(0..<workers), drainTimeout: drainTimeoutChanged ? target.drainTimeout : nil)
        onReloaded?(target)
        logger.notice("configuration reloaded", metadata: [
            "config": "\(path)", "changes": "\(applying.count)", "generation": "\(generation)",
            "reloads": "\(reloadsSucceeded)",
        ])
        let generation = self.generation
        whenApplied(generation) { [logger, workers] in
            logger.info("reload applied by every worker", metadata: ["generation": "\(generation)", "workers": "\(workers)"])
            ServiceNotify.reloaded(logger: logger)
        }
        for pool in pools { health?.update(pool) }
        discovery.sync(target)
        for index in warming {
            discovery.whenAnswered(pool: pools[index].name) { [weak self] in
                self?.health?.whenChecked(pool: index) { [weak self] in self?.release(pool: index) }
            }
        }
        if !held.isEmpty {
            if holdTimer == nil {
                holdTimer = Timer(base: base) { [unowned self] in
                    for index in Set(self.held.keys.compactMap { name in self.config.listeners.first { $0.name == name } }
                        .compactMap { self.poolIndex($0.pool) }) {
                        self.release(pool: index, timedOut: true)
                    }
                }
            }
            holdTimer?.schedule(after: Engine.firstChecksWaitMicroseconds)
        }
        return .applied(generation: generation, changes: applying.map(\.description),
                        restartNeeded: diff.restartKeys)
    }

    /// The changes a reload made to backends, in their histories.
    private func recordConfigEvents(_ changes: [ConfigDiff.Change]) {
        let now = WallClock.microseconds
        for change in changes {
            let id: BackendID
            let message: String
            switch change {
            case .backendAdded(let backend, _): (id, message) = (backend, "config: added by a reload")
            case .backendRemoved(let backend): (id, message) = (backend, "config: removed by a reload; draining")
            case .backendChanged(let backend, _, _, _):
                (id, message) = (backend, "config: " + String(change.description.dropFirst("backend \(backend): ".count)))
            default: continue
            }
            guard let pool = poolIndex(id.pool), let slot = pools[pool].slot(of: id.address) else { continue }
            pools[pool].record(slot: slot, BackendEvent(at: now, source: .config, message: message))
        }
    }

    /// The index of the pool the configuration names so (not retired).
    func poolIndex(_ name: String) -> Int? { pools.firstIndex { $0.name == name && !$0.retired } }

    /// The first checks of a pool a reload added are done (or took too long): its listeners accept for it.
    private func release(pool index: Int, timedOut: Bool = false) {
        let names = config.listeners.filter { held[$0.name] != nil && poolIndex($0.pool) == index }.map(\.name)
        guard !names.isEmpty else { return }
        for name in names { held[name] = nil }
        if held.isEmpty { holdTimer?.cancel() }
        logger.info(timedOut ? "pool \(pools[index].name): first checks not all done in time; its listeners accept now"
                             : "pool \(pools[index].name): first checks done; its listeners accept now", metadata: [
            "listeners": "\(names.joined(separator: ","))",
        ])
        generation += 1
        for worker in 0..<workers {
            mailboxes[worker].post(contentsOf: [.listeners(assignments(for: worker)), .barrier(generation: generation)])
        }
    }

    /// The sockets for the listeners of a new configuration: a listener whose name and address are
    /// unchanged keeps its sockets (with a new backlog if that changed); a new address takes the sockets of
    /// a listener that leaves it in this reload, or is bound. On failure nothing bound here stays open.
    private func rebind(_ target: FulcrumConfig) throws(SystemError) -> [String: BoundListener] {
        let listeners = target.listeners
        var result: [String: BoundListener] = [:]
        // Sockets a listener leaves in this reload, by the address they are bound to (as configured, and
        // as bound: `127.0.0.1:0` became a real port).
        var freed: [String: BoundListener] = [:]
        let wanted = Dictionary(uniqueKeysWithValues: listeners.map { ($0.name, $0) })
        for (name, listener) in bound where !(wanted[name].map(listener.serves) ?? false) {
            // A configured port 0 means any free port, not the one these sockets happen to have.
            if listener.config.address.port != 0 { freed["\(listener.config.address)"] = listener }
            freed["\(listener.endpoint)"] = listener
        }
        var fresh: [BoundListener] = []
        do throws(SystemError) {
            for listener in listeners {
                if var kept = bound[listener.name], kept.serves(listener) {
                    kept.config = listener
                    result[listener.name] = kept
                } else if var moved = freed["\(listener.address)"] {
                    freed["\(moved.config.address)"] = nil
                    freed["\(moved.endpoint)"] = nil
                    moved.config = listener
                    result[listener.name] = moved
                } else {
                    let new = try bind(listener, in: target)
                    fresh.append(new)
                    result[listener.name] = new
                }
            }
        } catch {
            for listener in fresh { listener.fds.forEach(Socket.close) }
            throw error
        }
        for (name, listener) in result {
            guard let before = bound.first(where: { $0.value.fds == listener.fds }) else { continue }
            if before.value.config.backlog != listener.config.backlog {
                for fd in listener.fds { try? Socket.setBacklog(fd, Int32(listener.config.backlog)) }
            }
            if before.key != name {
                logger.info("listener \(name) takes over the sockets of \(before.key) on \(listener.endpoint)")
            }
        }
        return result
    }

    /// One listening socket per worker on the listener's address, all sharing it through SO_REUSEPORT.
    /// The first one claims the address (the bind fails if any other process holds it); port 0 is
    /// resolved by that first bind and reused for the rest.
    private func bind(_ listener: FulcrumConfig.Listener, in config: FulcrumConfig) throws(SystemError) -> BoundListener {
        var endpoint = Endpoint(listener.address)
        var fds: [Int32] = []
        do throws(SystemError) {
            for index in 0..<workers {
                let fd = try Socket.listen(endpoint, reusePort: true, claim: index == 0, backlog: Int32(listener.backlog),
                                           deferAcceptSeconds: listener.deferAcceptSeconds)
                fds.append(fd)
                if endpoint.port == 0 { endpoint = try Socket.localEndpoint(fd) }
            }
        } catch {
            fds.forEach(Socket.close)
            throw error
        }
        let pool = config.pool(named: listener.pool)
        logger.info("listening on \(endpoint)", metadata: [
            "listener": "\(listener.name)", "pool": "\(listener.pool)", "backends": "\(pool?.backends.count ?? 0)",
            "balance": "\(pool?.balance.name ?? "-")",
        ])
        return BoundListener(config: listener, endpoint: endpoint, fds: fds, metrics: ListenerMetrics(workers: workers))
    }

    // MARK: - Telling the workers

    /// Posts to each worker, as one unit: every pool's snapshot, its listening sockets, and a barrier.
    private func post(to workerIDs: [Int], drainTimeout: Duration?) {
        generation += 1
        let snapshots = pools.indices.map { WorkerMessage.pool(pools[$0].snapshot(), shared[$0]) }
        for worker in workerIDs {
            var messages: [WorkerMessage] = drainTimeout.map { [.drainTimeout($0)] } ?? []
            messages += snapshots
            messages.append(.listeners(assignments(for: worker)))
            messages.append(.barrier(generation: generation))
            mailboxes[worker].post(contentsOf: messages)
        }
    }

    private func assignments(for worker: Int) -> [ListenerAssignment] {
        config.listeners.flatMap { listener -> [ListenerAssignment] in
            guard let sockets = bound[listener.name] else { return [] }
            let pool: Int
            if let hold = held[listener.name] {
                guard let previous = hold else { return [] }
                pool = previous
            } else {
                guard let index = poolIndex(listener.pool) else { return [] }
                pool = index
            }
            return Handover.share(sockets.fds, worker: worker, workers: workers).map {
                ListenerAssignment(fd: $0, listener: listener.name, pool: pool, metrics: sockets.metrics,
                                   deferAcceptSeconds: listener.deferAcceptSeconds)
            }
        }
    }

    /// An active check's verdict: recorded here and sent to every worker.
    func checked(pool: Int, slot: Int, state: ActiveHealth.State, passed: Bool, reason: String?, change: String?) {
        pools[pool].checked(slot: slot, state, reason: reason, at: WallClock.microseconds, detail: change)
        for mailbox in mailboxes { mailbox.post(.checked(pool: pool, slot: slot, state: state, passed: passed)) }
    }

    // MARK: - Reports

    func handle(_ report: EngineReport) {
        switch report {
        case .applied(let worker, let generation):
            applied[worker] = max(applied[worker], generation)
            let done = applied.min() ?? generation
            let ready = waiters.filter { $0.generation <= done }
            waiters.removeAll { $0.generation <= done }
            for waiter in ready { waiter.done() }
        case .breaker(let worker, let pool, let slot, let breaker):
            let before = pools[pool].backends[slot].breaker
            pools[pool].breakerChanged(slot: slot, worker: worker, breaker)
            let after = pools[pool].backends[slot].breaker
            // The history keeps the backend's story, not every worker's: the first worker to open or go
            // half-open, and the last to close. The counts say how many workers agree.
            let what: String
            switch breaker.state {
            case .open where before.open == 0: what = "opened"
            case .halfOpen where before.halfOpen == 0: what = "half-open"
            case .closed where after.isClosed: what = "closed"
            default: return
            }
            pools[pool].record(slot: slot, BackendEvent(
                at: WallClock.microseconds, source: .breaker,
                message: "breaker \(what) on worker \(worker)\(breaker.reason.map { ": \($0)" } ?? "") (now \(after.counts))"))
        }
    }

    /// Calls `done` once every worker has applied `generation` (at once if they have).
    func whenApplied(_ generation: Int, _ done: @escaping () -> Void) {
        if applied.allSatisfy({ $0 >= generation }) { done() } else { waiters.append((generation, done)) }
    }

    /// Tells every worker every pool's state again, after a runtime change; returns the generation to wait
    /// for.
    func publish() -> Int {
        post(to: Array(0..<workers), drainTimeout: nil)
        return generation
    }

    /// Where a listener's sockets are bound.
    func listenerEndpoint(_ name: String) -> Endpoint? { bound[name]?.endpoint }

    /// Every listener with its listening sockets, for a process that takes over.
    var listenerSockets: [(FulcrumConfig.Listener, [Int32])] {
        config.listeners.compactMap { listener in bound[listener.name].map { (listener, $0.fds) } }
    }
}
