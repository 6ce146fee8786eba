/// What a reload changes: the ordered list of changes that turns the running configuration into a newly
/// loaded (already validated) one, without a restart.
///
/// ```
///   running FulcrumConfig ─┐
///                          ├─▶ ConfigDiff(from:to:) ─▶ [Change], in the order to apply them:
///   loaded FulcrumConfig ──┘
///     1. top-level values   needs restart (workers, buffer_size: the running value is kept), drain_timeout,
///                           access_log
///     2. pools added        before any listener can point at them
///     3. each kept pool     settings replaced, backends removed, changed, added, order (for `first`)
///     4. listeners          removed, then moved or changed, then added (an address a removed listener
///                           frees can be taken by another in the same reload)
///     5. pools removed      after no listener points at them any more
/// ```
///
/// Backends are matched by `BackendID` (pool and address), never by position: moving a backend within its
/// list is no change, so its counters, health, breaker and slow-start ramp carry on. The one exception is
/// `balance: first`, which fills backends in file order; there a new relative order of the kept backends
/// is reported as `backendOrderChanged`. Listeners are matched by name, pools by name. Within each step,
/// removals follow the running file's order and everything else the loaded file's order, so the same two
/// files always give the same list.
public struct ConfigDiff: Equatable, Sendable {
    public enum Change: Equatable, Sendable, CustomStringConvertible {
        // MARK: Top level
        /// `workers` or `buffer_size` changed: it takes a restart, and the process keeps running `running`.
        case needsRestart(key: String, running: String, loaded: String)
        case drainTimeoutChanged(from: Duration, to: Duration)
        /// The admin API moves, changes its token source, or is turned on or off.
        case adminChanged(from: FulcrumConfig.Admin?, to: FulcrumConfig.Admin?)
        /// The access log's destination or format changed (nil: off): connections that end after the reload
        /// are logged the new way (those accepted while it was off are not logged).
        case accessLogChanged(from: AccessLogConfig?, to: AccessLogConfig?)

        // MARK: Pools
        case poolAdded(FulcrumConfig.Pool)
        case poolRemoved(name: String)
        /// Settings replaced for new connections; `keys` names the changed top-level pool keys, in file-key
        /// order (`balance`, `connect_timeout`, …, `hedge_after`). `settings` is the loaded pool.
        case poolSettingsChanged(pool: String, keys: [String], settings: FulcrumConfig.Pool)

        // MARK: Backends
        case backendAdded(BackendID, FulcrumConfig.Backend)
        /// No new connections; open ones run until they end.
        case backendRemoved(BackendID)
        /// `keys` names what changed: `weight`, `priority` (also `backup`), `max_connections`, `state`.
        case backendChanged(BackendID, keys: [String], from: FulcrumConfig.Backend, to: FulcrumConfig.Backend)
        /// Under `balance: first`, the loaded file's backend order (which `first` fills in).
        case backendOrderChanged(pool: String, order: [BackendID])

        // MARK: Listeners
        case listenerAdded(FulcrumConfig.Listener)
        /// Stops accepting; its connections drain.
        case listenerRemoved(FulcrumConfig.Listener)
        /// New connections go to the pool `to`; connections already open stay where they are.
        case listenerMoved(name: String, from: String, to: String)
        /// `keys` names what changed: `listen` (the address), `backlog`, `defer_accept`.
        case listenerChanged(name: String, keys: [String], from: FulcrumConfig.Listener, to: FulcrumConfig.Listener)

        /// One line for the log and `fulcrum check`.
        public var description: String {
            switch self {
            case let .needsRestart(key, running, loaded):
                return "\(key): needs restart: kept running value \(running) (file has \(loaded))"
            case let .drainTimeoutChanged(from, to):
                return "drain_timeout: \(from.configText) -> \(to.configText)"
            case let .adminChanged(from, to):
                return "admin: \(from.map { "\($0.address)" } ?? "off") -> \(to.map { "\($0.address)" } ?? "off")"
                    + (from?.token != to?.token && from != nil && to != nil ? " (token source changed)" : "")
            case let .accessLogChanged(from, to):
                return "access_log: \(from?.description ?? "off") -> \(to?.description ?? "off")"
            case let .poolAdded(pool):
                return "pool \(pool.name): added with \(pool.backends.count) backend(s)"
            case let .poolRemoved(name):
                return "pool \(name): removed"
            case let .poolSettingsChanged(pool, keys, _):
                return "pool \(pool): settings replaced (\(keys.joined(separator: ", ")))"
            case let .backendAdded(id, _):
                return "backend \(id): added"
            case let .backendRemoved(id):
                return "backend \(id): removed, draining"
            case let .backendChanged(id, keys, from, to):
                let parts = keys.map { "\($0) \(Self.text(of: $0, from)) -> \(Self.text(of: $0, to))" }
                return "backend \(id): \(parts.joined(separator: ", "))"
            case let .backendOrderChanged(pool, order):
                return "pool \(pool): first-fill order \(order.map { "\($0.address)" }.joined(separator: ", "))"
            case let .listenerAdded(listener):
                return "listener \(listener.name): added on \(listener.address) for pool \(listener.pool)"
            case let .listenerRemoved(listener):
                return "listener \(listener.name): removed, draining"
            case let .listenerMoved(name, from, to):
                return "listener \(name): pool \(from) -> \(to) for new connections"
            case let .listenerChanged(name, keys, from, to):
                let parts = keys.map { key in
                    switch key {
                    case "listen": return "listen \(from.address) -> \(to.address)"
                    case "backlog": return "backlog \(from.backlog) -> \(to.backlog)"
                    default:
                        return "defer_accept \(from.deferAccept?.configText ?? "off") -> \(to.deferAccept?.configText ?? "off")"
                    }
                }
                return "listener \(name): \(parts.joined(separator: ", "))"
            }
        }

        private static func text(of key: String, _ backend: FulcrumConfig.Backend) -> String {
            switch key {
            case "weight": return "\(backend.weight)"
            case "priority": return "\(backend.priority)"
            case "max_connections": return backend.maxConnections.map(String.init) ?? "none"
            default: return backend.state.rawValue
            }
        }
    }

    public let changes: [Change]

    public var isEmpty: Bool { changes.isEmpty }

    /// The `needsRestart` changes: what this reload cannot apply.
    public var restartKeys: [String] {
        changes.compactMap { if case .needsRestart(let key, _, _) = $0 { return key } else { return nil } }
    }

    public init(from running: FulcrumConfig, to loaded: FulcrumConfig) {
        var changes = Self.topLevel(running, loaded)
        let runningPools = Dictionary(uniqueKeysWithValues: running.pools.map { ($0.name, $0) })
        let loadedNames = Set(loaded.pools.map(\.name))
        for pool in loaded.pools where runningPools[pool.name] == nil {
            changes.append(.poolAdded(pool))
        }
        for pool in loaded.pools {
            if let old = runningPools[pool.name] { changes += Self.pool(old, pool) }
        }
        changes += Self.listeners(running.listeners, loaded.listeners)
        for pool in running.pools where !loadedNames.contains(pool.name) {
            changes.append(.poolRemoved(name: pool.name))
        }
        self.changes = changes
    }

    // MARK: - Top level

    private static func topLevel(_ running: FulcrumConfig, _ loaded: FulcrumConfig) -> [Change] {
        var changes: [Change] = []
        if running.workers != loaded.workers {
            changes.append(.needsRestart(key: "workers", running: text(running.workers), loaded: text(loaded.workers)))
        }
        if running.bufferSize != loaded.bufferSize {
            changes.append(.needsRestart(key: "buffer_size", running: sizeText(running.bufferSize),
                                         loaded: sizeText(loaded.bufferSize)))
        }
        if running.pidFile != loaded.pidFile {
            changes.append(.needsRestart(key: "pid_file", running: running.pidFile ?? "off", loaded: loaded.pidFile ?? "off"))
        }
        if running.upgradeSocket != loaded.upgradeSocket {
            changes.append(.needsRestart(key: "upgrade_socket", running: running.upgradeSocket ?? "off",
                                         loaded: loaded.upgradeSocket ?? "off"))
        }
        if running.drainTimeout != loaded.drainTimeout {
            changes.append(.drainTimeoutChanged(from: running.drainTimeout, to: loaded.drainTimeout))
        }
        if running.admin != loaded.admin {
            changes.append(.adminChanged(from: running.admin, to: loaded.admin))
        }
        if running.accessLog != loaded.accessLog {
            changes.append(.accessLogChanged(from: running.accessLog, to: loaded.accessLog))
        }
        return changes
    }

    private static func text(_ workers: FulcrumConfig.Workers) -> String {
        switch workers {
        case .auto: return "auto"
        case .count(let n): return "\(n)"
        }
    }

    // MARK: - One pool

    private static func pool(_ old: FulcrumConfig.Pool, _ new: FulcrumConfig.Pool) -> [Change] {
        var changes: [Change] = []
        let keys = settingKeys(old, new)
        if !keys.isEmpty { changes.append(.poolSettingsChanged(pool: new.name, keys: keys, settings: new)) }

        let oldByAddress = Dictionary(uniqueKeysWithValues: old.backends.map { ($0.address, $0) })
        let newAddresses = Set(new.backends.map(\.address))
        for backend in old.backends where !newAddresses.contains(backend.address) {
            changes.append(.backendRemoved(BackendID(pool: new.name, address: backend.address)))
        }
        for backend in new.backends {
            guard let before = oldByAddress[backend.address] else { continue }
            let keys = backendKeys(before, backend)
            if !keys.isEmpty {
                changes.append(.backendChanged(BackendID(pool: new.name, address: backend.address), keys: keys,
                                               from: before, to: backend))
            }
        }
        for backend in new.backends where oldByAddress[backend.address] == nil {
            changes.append(.backendAdded(BackendID(pool: new.name, address: backend.address), backend))
        }
        if case .first = new.balance {
            let kept = new.backends.map(\.address).filter { oldByAddress[$0] != nil }
            if kept != old.backends.map(\.address).filter({ newAddresses.contains($0) }) {
                changes.append(.backendOrderChanged(pool: new.name, order: new.backendIDs))
            }
        }
        return changes
    }

    /// The top-level pool keys (as the file names them) whose values differ, in `ConfigLoader.poolKeys` order.
    private static func settingKeys(_ a: FulcrumConfig.Pool, _ b: FulcrumConfig.Pool) -> [String] {
        let (r, s) = (a.resilience, b.resilience)
        let differs: [(String, Bool)] = [
            ("balance", a.balance != b.balance),
            ("connect_timeout", a.connectTimeout != b.connectTimeout),
            ("idle_timeout", a.idleTimeout != b.idleTimeout),
            ("retries", a.retries != b.retries),
            ("slow_start", a.slowStart != b.slowStart),
            ("queue", a.queue != b.queue),
            ("health", r.health != s.health),
            ("breaker", r.breaker != s.breaker),
            ("panic_threshold", r.panicThreshold != s.panicThreshold),
            ("retry_budget", r.retryBudgetRatio != s.retryBudgetRatio || r.retryBudgetMinPerSecond != s.retryBudgetMinPerSecond),
            ("replay", r.replayMaxBytes != s.replayMaxBytes),
            ("first_byte_timeout", r.firstByteTimeout != s.firstByteTimeout),
            ("on_backend_down", r.onBackendDown != s.onBackendDown),
            ("hedge_after", r.hedgeAfter != s.hedgeAfter),
            ("removed_backend_timeout", r.removedBackendTimeout != s.removedBackendTimeout),
            ("backends (host names)", a.names != b.names),
            ("discovery", a.discovery != b.discovery),
            ("splice", a.splice != b.splice),
        ]
        return differs.filter(\.1).map(\.0)
    }

    private static func backendKeys(_ a: FulcrumConfig.Backend, _ b: FulcrumConfig.Backend) -> [String] {
        let differs: [(String, Bool)] = [
            ("weight", a.weight != b.weight),
            ("priority", a.priority != b.priority),
            ("max_connections", a.maxConnections != b.maxConnections),
            ("state", a.state != b.state),
        ]
        return differs.filter(\.1).map(\.0)
    }

    // MARK: - Listeners

    private static func listeners(_ old: [FulcrumConfig.Listener], _ new: [FulcrumConfig.Listener]) -> [Change] {
        let oldByName = Dictionary(uniqueKeysWithValues: old.map { ($0.name, $0) })
        let newNames = Set(new.map(\.name))
        var changes: [Change] = old.filter { !newNames.contains($0.name) }.map { .listenerRemoved($0) }
        for listener in new {
            guard let before = oldByName[listener.name] else { continue }
            if before.pool != listener.pool {
                changes.append(.listenerMoved(name: listener.name, from: before.pool, to: listener.pool))
            }
            var keys: [String] = []
            if before.address != listener.address { keys.append("listen") }
            if before.backlog != listener.backlog { keys.append("backlog") }
            if before.deferAccept != listener.deferAccept { keys.append("defer_accept") }
            if !keys.isEmpty {
                changes.append(.listenerChanged(name: listener.name, keys: keys, from: before, to: listener))
            }
        }
        changes += new.filter { oldByName[$0.name] == nil }.map { .listenerAdded($0) }
        return changes
    }
}

// MARK: - Applying

extension FulcrumConfig {
    /// The configuration a reload to `loaded` runs: `loaded`, except for the values that need a restart
    /// (`workers`, `buffer_size`, `pid_file`, `upgrade_socket`), which keep their running value.
    public func reloaded(to loaded: FulcrumConfig) -> FulcrumConfig {
        var result = loaded
        result.workers = workers
        result.bufferSize = bufferSize
        result.pidFile = pidFile
        result.upgradeSocket = upgradeSocket
        return result
    }
}
