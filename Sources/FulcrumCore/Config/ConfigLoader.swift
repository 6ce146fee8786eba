import Yams

/// Parses and validates a configuration file's text into a `FulcrumConfig`, or throws a `ConfigError`
/// listing every problem at once. Reads no files itself: callers pass the text and the name to report.
public enum ConfigLoader {
    static let topKeys = ["workers", "drain_timeout", "buffer_size", "pid_file", "upgrade_socket", "admin", "access_log",
                          "dns", "listeners", "pools"]
    static let listenerKeys = ["name", "listen", "pool", "backlog", "defer_accept"]
    static let poolKeys = ["backends", "balance", "connect_timeout", "idle_timeout", "retries", "slow_start", "queue",
                           "discovery"] + resilienceKeys + ["splice"]
    static let backendKeys = ["address", "weight", "backup", "priority", "max_connections", "state"]
    static let queueKeys = ["size", "timeout"]

    public static func load(text: String, file: String) throws(ConfigError) -> FulcrumConfig {
        var reader = YAMLReader(file: file)
        let root: Node
        do {
            guard let node = try Yams.compose(yaml: text) else {
                throw ConfigError([ConfigDiagnostic(file: file, line: 0, keyPath: "", message: "the file is empty",
                                                    hint: "see examples/quickstart.yaml for a starting point")])
            }
            root = node
        } catch let error as ConfigError {
            throw error
        } catch {
            throw ConfigError([syntaxDiagnostic(error, text: text, file: file)])
        }

        let config = build(root, &reader)
        if let config, reader.diagnostics.isEmpty { return config }
        throw ConfigError(reader.diagnostics)
    }

    private static func build(_ root: Node, _ r: inout YAMLReader) -> FulcrumConfig? {
        guard let top = r.fields(root, "", known: topKeys) else { return nil }

        var workers = FulcrumConfig.Workers.auto
        if let node = top["workers"] {
            if let text = r.scalar(node, "workers", expecting: "auto or a number of threads"), text != "auto" {
                let range = ConfigLimits.workers
                if let n = Int(text), range.contains(n) {
                    workers = .count(n)
                } else {
                    r.report(node, "workers", "'\(text)' is not a worker count",
                             hint: "use auto (one per CPU core) or a number from \(range.lowerBound) to \(range.upperBound)")
                }
            }
        }
        let drain = top["drain_timeout"].flatMap { r.duration($0, "drain_timeout", in: ConfigLimits.drainTimeout) }
            ?? FulcrumConfig.defaultDrainTimeout
        let bufferSize = top["buffer_size"].flatMap { r.size($0, "buffer_size", in: ConfigLimits.bufferSize) }
            ?? FulcrumConfig.defaultBufferSize

        var pidFile: String?
        if let node = top["pid_file"], let path = r.scalar(node, "pid_file", expecting: "a file path") {
            if path.isEmpty || path.hasSuffix("/") || path.contains("\0") {
                r.report(node, "pid_file", "'\(path)' is not a file path",
                         hint: "name a file, e.g. pid_file: /run/fulcrum/fulcrum.pid")
            } else {
                pidFile = path
            }
        }

        var upgradeSocket: String?
        if let node = top["upgrade_socket"], let path = r.scalar(node, "upgrade_socket", expecting: "a socket file path") {
            // sockaddr_un holds 108 bytes, the terminating zero included.
            if path.isEmpty || path.hasSuffix("/") || path.contains("\0") || path.hasPrefix("@") {
                r.report(node, "upgrade_socket", "'\(path)' is not a file path",
                         hint: "name a file for a Unix socket, e.g. upgrade_socket: /run/fulcrum/upgrade.sock")
            } else if path.utf8.count > 107 {
                r.report(node, "upgrade_socket", "the path is \(path.utf8.count) bytes long; a Unix socket path has at most 107",
                         hint: "use a shorter path, e.g. upgrade_socket: /run/fulcrum/upgrade.sock")
            } else if path == pidFile {
                r.report(node, "upgrade_socket", "'\(path)' is also the pid_file",
                         hint: "give the upgrade socket its own file, e.g. upgrade_socket: /run/fulcrum/upgrade.sock")
            } else {
                upgradeSocket = path
            }
        }

        var accessLog: AccessLogConfig?
        if let node = top["access_log"] {
            accessLog = Self.accessLog(node, pidFile: pidFile, upgradeSocket: upgradeSocket, &r)
        }
        let pools = buildPools(top, &r)
        let listeners = buildListeners(top, pools: pools, &r)
        var config = FulcrumConfig(workers: workers, drainTimeout: drain, bufferSize: bufferSize,
                                   listeners: listeners, pools: pools, pidFile: pidFile, upgradeSocket: upgradeSocket,
                                   accessLog: accessLog)
        if let node = top["admin"] {
            config.admin = buildAdmin(node, listeners: listeners, &r)
        }
        if let node = top["dns"] { config.dns = buildDNS(node, &r) }
        return config
    }

    /// Two listen addresses of one family on one port, one of them the wildcard (0.0.0.0 or [::]): the
    /// wildcard socket would take the other's connections, or the other the wildcard's, depending on
    /// which the kernel finds more specific. IPv6 listeners are IPv6-only, so [::] and an IPv4 address
    /// do not overlap.
    static func overlap(_ a: SocketAddress, _ b: SocketAddress) -> Bool {
        guard a != b, a.port == b.port, isWildcard(a) || isWildcard(b) else { return false }
        switch (a, b) {
        case (.ipv4, .ipv4), (.ipv6, .ipv6): return true
        default: return false
        }
    }

    static func isWildcard(_ address: SocketAddress) -> Bool {
        switch address {
        case .ipv4(let a, _): return a == (0, 0, 0, 0)
        case .ipv6(let bytes, _): return bytes.allSatisfy { $0 == 0 }
        }
    }

    private static func buildListeners(_ top: Fields, pools: [FulcrumConfig.Pool],
                                       _ r: inout YAMLReader) -> [FulcrumConfig.Listener] {
        guard let node = top["listeners"] else {
            r.report(top.node, "listeners", "missing required key 'listeners'",
                     hint: "add a list of listeners, each with name, listen and pool")
            return []
        }
        guard let items = r.sequence(node, "listeners", of: "listeners") else { return [] }
        if items.isEmpty {
            r.report(node, "listeners", "no listeners defined", hint: "add at least one listener")
        }
        var listeners: [FulcrumConfig.Listener] = []
        var namesSeen: [String: Int] = [:]
        var addressesSeen: [SocketAddress: Int] = [:]
        for (index, item) in items.enumerated() {
            let path = "listeners[\(index)]"
            guard let f = r.fields(item, path, known: listenerKeys) else { continue }
            let name = required(f, "name", &r) { r, n in r.scalar(n, f.path("name"), expecting: "a listener name") }
            let address = required(f, "listen", &r) { r, n in r.address(n, f.path("listen"), allowPortZero: true) }
            let poolName = required(f, "pool", &r) { r, n in r.scalar(n, f.path("pool"), expecting: "a pool name") }
            let backlog = f["backlog"].flatMap { r.integer($0, f.path("backlog"), in: ConfigLimits.backlog) }
                ?? FulcrumConfig.Listener.defaultBacklog
            let deferAccept = f["defer_accept"].flatMap { buildDeferAccept($0, f.path("defer_accept"), &r) }

            if let name, let line = namesSeen[name] {
                r.report(f["name"], f.path("name"), "listener name '\(name)' is already used on line \(line)",
                         hint: "give each listener its own name")
            }
            if let name { namesSeen[name] = f["name"]?.mark?.line ?? 0 }
            if case .ipv6(let bytes, let port)? = address, bytes.prefix(10).allSatisfy({ $0 == 0 }),
               bytes[10] == 0xff, bytes[11] == 0xff {
                // IPv6 listeners are IPv6-only, where an IPv4-mapped address cannot be bound.
                let ipv4 = bytes.suffix(4).map(String.init).joined(separator: ".")
                r.report(f["listen"], f.path("listen"), "\(address!) is an IPv4-mapped IPv6 address, which an IPv6-only listener cannot bind",
                         hint: "listen on the IPv4 address itself: \(ipv4):\(port)")
            }
            if let address, address.port != 0 {
                if let line = addressesSeen[address] {
                    r.report(f["listen"], f.path("listen"), "address \(address) is already used by the listener on line \(line)",
                             hint: "give each listener its own address or port")
                } else if let (other, line) = addressesSeen.filter({ Self.overlap($0.key, address) })
                            .min(by: { $0.value < $1.value }) {
                    let wildcard = Self.isWildcard(other) ? other : address
                    r.report(f["listen"], f.path("listen"),
                             "address \(address) overlaps \(other) of the listener on line \(line): \(wildcard) already takes every address of its family on port \(address.port)",
                             hint: "listen on \(wildcard) once, or give the listeners different ports")
                }
                addressesSeen[address] = f["listen"]?.mark?.line ?? 0
            }
            if let poolName, !pools.contains(where: { $0.name == poolName }) {
                let defined = pools.map(\.name)
                r.report(f["pool"], f.path("pool"), "pool '\(poolName)' is not defined",
                         hint: defined.isEmpty ? "define it under 'pools:'"
                             : "define it under 'pools:' or use one of: \(defined.joined(separator: ", "))")
            }
            if let name, let address, let poolName {
                listeners.append(.init(name: name, address: address, pool: poolName, backlog: backlog,
                                       deferAccept: deferAccept))
            }
        }
        return listeners
    }

    private static func buildPools(_ top: Fields, _ r: inout YAMLReader) -> [FulcrumConfig.Pool] {
        guard let node = top["pools"] else {
            r.report(top.node, "pools", "missing required key 'pools'",
                     hint: "add a mapping of pool names to their backends")
            return []
        }
        guard case .mapping(let mapping) = node else {
            r.report(node, "pools", "expected a mapping of pool names to pools, got \(node.kindName)")
            return []
        }
        var pools: [FulcrumConfig.Pool] = []
        for (key, value) in mapping {
            guard let name = r.scalar(key, "pools", expecting: "a pool name") else { continue }
            if pools.contains(where: { $0.name == name }) {
                r.report(key, "pools.\(name)", "pool '\(name)' is defined twice", hint: "keep one definition")
                continue
            }
            if let pool = buildPool(name: name, value, &r) { pools.append(pool) }
        }
        return pools
    }

    private static func buildPool(name: String, _ node: Node, _ r: inout YAMLReader) -> FulcrumConfig.Pool? {
        let path = "pools.\(name)"
        guard let f = r.fields(node, path, known: poolKeys) else { return nil }
        let balance = f["balance"].flatMap { buildBalance($0, f.path("balance"), &r) } ?? .roundRobin
        let connectTimeout = f["connect_timeout"].flatMap { r.duration($0, f.path("connect_timeout"), in: ConfigLimits.timeout) }
            ?? FulcrumConfig.Pool.defaultConnectTimeout
        let idleTimeout = f["idle_timeout"].flatMap { r.duration($0, f.path("idle_timeout"), in: ConfigLimits.idleTimeout) }
            ?? FulcrumConfig.Pool.defaultIdleTimeout
        let retries = f["retries"].flatMap { r.integer($0, f.path("retries"), in: ConfigLimits.retries) }
            ?? FulcrumConfig.Pool.defaultRetries
        let slowStart = f["slow_start"].flatMap { r.duration($0, f.path("slow_start"), in: ConfigLimits.slowStart) } ?? .zero
        var queue = FulcrumConfig.Queue()
        if let node = f["queue"], let q = r.fields(node, f.path("queue"), known: queueKeys) {
            queue.size = q["size"].flatMap { r.integer($0, q.path("size"), in: ConfigLimits.queueSize) } ?? queue.size
            if let node = q["timeout"], let value = r.duration(node, q.path("timeout"), in: ConfigLimits.timeout) {
                queue.timeout = value
            }
        }

        let discovery = f["discovery"].map { buildDiscovery($0, f.path("discovery"), &r) } ?? FulcrumConfig.Discovery()
        var backends: [FulcrumConfig.Backend] = []
        var names: [FulcrumConfig.NamedBackend] = []
        if let node = f["backends"] {
            (backends, names) = buildBackends(node, f.path("backends"), emptyAllowed: discovery.source != nil, &r)
        } else if discovery.source == nil && f["discovery"] == nil {
            r.report(f.node, f.path("backends"), "missing required key 'backends'",
                     hint: "list at least one backend, e.g. '- address: 127.0.0.1:6379', or name a discovery source")
        }
        if case .first = balance, !backends.isEmpty || !names.isEmpty,
           backends.allSatisfy({ $0.maxConnections == nil }), names.allSatisfy({ $0.maxConnections == nil }) {
            r.report(f["balance"], f.path("balance"), "strategy 'first' needs max_connections on the backends",
                     hint: "without a limit every connection goes to the first backend; set max_connections on each")
        }
        let resilience = buildResilience(f, &r)
        if let hedge = resilience.hedgeAfter, hedge >= connectTimeout, let node = f["hedge_after"] {
            r.report(node, f.path("hedge_after"), "hedge_after \(hedge.configText) is not shorter than connect_timeout "
                     + "\(connectTimeout.configText), so no hedge would ever start",
                     hint: "use a hedge_after below connect_timeout, e.g. 50ms, or remove it")
        }
        let splice = f["splice"].flatMap { buildSplice($0, f.path("splice"), &r) } ?? true
        var pool = FulcrumConfig.Pool(name: name, backends: backends, balance: balance, connectTimeout: connectTimeout,
                                      idleTimeout: idleTimeout, retries: retries, slowStart: slowStart, queue: queue,
                                      resilience: resilience, splice: splice)
        pool.names = names
        pool.discovery = discovery
        return pool
    }

    /// `defer_accept: off | <whole seconds>`: nil for off.
    private static func buildDeferAccept(_ node: Node, _ path: String, _ r: inout YAMLReader) -> Duration? {
        if case .scalar(let scalar) = node, ["off", "false", "no"].contains(scalar.string) { return nil }
        guard let value = r.duration(node, path, in: ConfigLimits.deferAccept) else { return nil }
        guard value.components.attoseconds == 0 else {
            r.report(node, path, "'\(value.configText)' is not a whole number of seconds",
                     hint: "the kernel counts TCP_DEFER_ACCEPT in seconds: use \(ConfigLimits.deferAccept.configText) "
                         + "in whole seconds, e.g. 1s, or off")
            return nil
        }
        return value
    }

    /// `splice: auto | off`: true for auto.
    private static func buildSplice(_ node: Node, _ path: String, _ r: inout YAMLReader) -> Bool? {
        guard let text = r.scalar(node, path, expecting: "auto or off") else { return nil }
        switch text {
        case "auto": return true
        case "off", "false", "no": return false
        default:
            r.report(node, path, "'\(text)' is not a splice setting",
                     hint: "use auto (bulk transfers move between the sockets through a pipe, without copying) or off (always copy)")
            return nil
        }
    }

    /// The static backends (IP literals) and the host-name entries, each resolved later to its addresses.
    private static func buildBackends(_ node: Node, _ path: String, emptyAllowed: Bool,
                                      _ r: inout YAMLReader) -> ([FulcrumConfig.Backend], [FulcrumConfig.NamedBackend]) {
        guard let items = r.sequence(node, path, of: "backends") else { return ([], []) }
        if items.isEmpty && !emptyAllowed {
            r.report(node, path, "the pool has zero backends",
                     hint: "list at least one backend, e.g. '- address: 127.0.0.1:6379', or name a discovery source")
        }
        var backends: [FulcrumConfig.Backend] = []
        var names: [FulcrumConfig.NamedBackend] = []
        var seen: [SocketAddress: Int] = [:]
        var namesSeen: [String: Int] = [:]
        for (index, item) in items.enumerated() {
            let itemPath = "\(path)[\(index)]"
            let fields: Fields?
            if let quoted = unquotedIPv6(item) {
                r.report(item, itemPath, "an IPv6 address must be quoted, or YAML reads its brackets as a list",
                         hint: "write it as \(quoted)")
                continue
            }
            if case .scalar = item {
                // Shorthand: "- 127.0.0.1:6379".
                var f = Fields(path: itemPath, node: item)
                f.values["address"] = (item, item)
                fields = f
            } else {
                fields = r.fields(item, itemPath, known: backendKeys)
            }
            guard let f = fields else { continue }
            var named: (host: String, port: UInt16)?
            let address = required(f, "address", &r) { r, n -> SocketAddress? in
                if case .scalar(let scalar) = n, case .failure(.hostname(let host)) = ConfigValue.address(scalar.string) {
                    guard isHostName(host), let port = scalar.string.split(separator: ":").last.flatMap({ UInt16($0) }),
                          port != 0 else {
                        r.report(n, f.path("address"), "'\(scalar.string)' is not a host name and port",
                                 hint: "use a DNS name and port, e.g. redis.internal:6379, or \(ConfigValue.addressHint)")
                        return nil
                    }
                    named = (host, port)
                    return nil
                }
                return r.address(n, f.path("address"), allowPortZero: false)
            }
            let weight = f["weight"].flatMap {
                r.integer($0, f.path("weight"), in: ConfigLimits.weight,
                          note: "to take a backend out of rotation, set state: disabled or drain, or remove it")
            } ?? 1
            let maxConnections = f["max_connections"].flatMap {
                r.integer($0, f.path("max_connections"), in: ConfigLimits.maxConnections)
            }
            var priority = f["priority"].flatMap { r.integer($0, f.path("priority"), in: ConfigLimits.priority) } ?? 0
            if let node = f["backup"], let backup = r.boolean(node, f.path("backup")), backup {
                if f["priority"] != nil {
                    r.report(node, f.path("backup"), "use either backup or priority, not both",
                             hint: "backup: true is the same as priority: 1")
                }
                priority = max(priority, 1)
            }
            var state = OperatorState.enabled
            if let node = f["state"], let text = r.scalar(node, f.path("state"), expecting: "enabled, drain or disabled") {
                if let value = OperatorState(rawValue: text) {
                    state = value
                } else {
                    r.report(node, f.path("state"), "'\(text)' is not a backend state", hint: "use enabled, drain or disabled")
                }
            }
            if let named {
                let entry = FulcrumConfig.NamedBackend(host: named.host, port: named.port, weight: weight, priority: priority,
                                                       maxConnections: maxConnections, state: state)
                if let line = namesSeen[entry.name] {
                    r.report(f["address"], f.path("address"), "backend \(entry.name) is already listed on line \(line)",
                             hint: "list each host name once; use weight to give it more traffic")
                } else {
                    namesSeen[entry.name] = f["address"]?.mark?.line ?? 0
                    names.append(entry)
                }
            }
            if let address {
                if let line = seen[address] {
                    r.report(f["address"], f.path("address"), "backend \(address) is already listed on line \(line)",
                             hint: "list each backend once; use weight to give it more traffic")
                } else {
                    seen[address] = f["address"]?.mark?.line ?? 0
                    backends.append(.init(address: address, weight: weight, priority: priority,
                                          maxConnections: maxConnections, state: state))
                }
            }
        }
        return (backends, names)
    }

    /// `balance: NAME` or `balance: {strategy: NAME, option: value, ...}`.
    private static func buildBalance(_ node: Node, _ path: String, _ r: inout YAMLReader) -> BalanceStrategy? {
        let names = StrategyRegistry.names.joined(separator: ", ")
        var fields: Fields?
        let nameNode: Node
        if case .mapping = node {
            let allOptions = ["strategy"] + StrategyRegistry.all.flatMap(\.options)
            guard let f = r.fields(node, path, known: allOptions) else { return nil }
            guard let strategyNode = f["strategy"] else {
                r.report(node, "\(path).strategy", "missing required key 'strategy'", hint: "use one of: \(names)")
                return nil
            }
            fields = f
            nameNode = strategyNode
        } else {
            nameNode = node
        }
        let namePath = fields == nil ? path : "\(path).strategy"
        guard let name = r.scalar(nameNode, namePath, expecting: "a strategy name") else { return nil }
        guard let entry = StrategyRegistry.entry(named: name) else {
            r.report(nameNode, namePath, "unknown balancing strategy '\(name)'", hint: "use one of: \(names)")
            return nil
        }
        var valid = true
        if let f = fields {
            for (key, pair) in f.values where key != "strategy" && !entry.options.contains(key) {
                valid = false
                r.report(pair.key, f.path(key), "strategy '\(name)' takes no option '\(key)'",
                         hint: entry.options.isEmpty ? "\(name) has no options"
                             : "\(name) takes: \(entry.options.joined(separator: ", "))")
            }
        }
        guard valid else { return nil }
        switch name {
        case "random": return .random
        case "least_connections": return .leastConnections
        case "p2c": return .powerOfTwoChoices
        case "first": return .first
        case "peak_ewma":
            let decay = fields?["decay"].flatMap { r.duration($0, "\(path).decay", in: ConfigLimits.ewmaDecay) }
                ?? BalanceStrategy.defaultEWMADecay
            let latency = fields?["default_latency"].flatMap {
                r.duration($0, "\(path).default_latency", in: ConfigLimits.ewmaDefaultLatency)
            } ?? BalanceStrategy.defaultEWMALatency
            return .peakEWMA(decay: decay, defaultLatency: latency)
        case "hash":
            var key = HashKey.ip
            if let node = fields?["key"], let text = r.scalar(node, "\(path).key", expecting: "ip or ip_port") {
                if let value = HashKey(rawValue: text) {
                    key = value
                } else {
                    r.report(node, "\(path).key", "'\(text)' is not a hash key", hint: "use ip or ip_port")
                }
            }
            var factor: Double?
            if let node = fields?["hash_balance_factor"],
               let text = r.scalar(node, "\(path).hash_balance_factor", expecting: "a number above 1") {
                if let value = Double(text), value > 1, value <= 100 {
                    factor = value
                } else {
                    r.report(node, "\(path).hash_balance_factor", "'\(text)' is not a valid balance factor",
                             hint: "use a number above 1, e.g. 1.25 (no backend above 125% of the average load)")
                }
            }
            return .hash(key: key, balanceFactor: factor)
        default:
            return .roundRobin
        }
    }

    private static func required<T>(_ f: Fields, _ key: String, _ r: inout YAMLReader,
                                    _ read: (inout YAMLReader, Node) -> T?) -> T? {
        guard let node = f[key] else {
            r.report(f.node, f.path(key), "missing required key '\(key)'")
            return nil
        }
        return read(&r, node)
    }
}
