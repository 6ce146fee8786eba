import Yams

/// Parses and validates a configuration file's text into a `FulcrumConfig`, or throws a `ConfigError`
/// listing every problem at once. Reads no files itself: callers pass the text and the name to report.
public enum ConfigLoader {
    static let topKeys = ["workers", "drain_timeout", "buffer_size", "listeners", "pools"]
    static let listenerKeys = ["name", "listen", "pool", "backlog"]
    static let poolKeys = ["backends", "balance", "connect_timeout", "idle_timeout", "retries"]
    static let backendKeys = ["address", "weight"]

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
            throw ConfigError([syntaxDiagnostic(error, file: file)])
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
                if let n = Int(text), (1...1024).contains(n) {
                    workers = .count(n)
                } else {
                    r.report(node, "workers", "'\(text)' is not a worker count",
                             hint: "use auto (one per CPU core) or a number from 1 to 1024")
                }
            }
        }
        let drain = top["drain_timeout"].flatMap { r.duration($0, "drain_timeout") } ?? FulcrumConfig.defaultDrainTimeout
        var bufferSize = FulcrumConfig.defaultBufferSize
        if let node = top["buffer_size"], let size = r.size(node, "buffer_size") {
            if size < 4096 || size > (64 << 20) {
                r.report(node, "buffer_size", "\(sizeText(size)) is out of range", hint: "use a size from 4KiB to 64MiB")
            } else {
                bufferSize = size
            }
        }

        let pools = buildPools(top, &r)
        let listeners = buildListeners(top, pools: pools, &r)
        return FulcrumConfig(workers: workers, drainTimeout: drain, bufferSize: bufferSize,
                             listeners: listeners, pools: pools)
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
            let backlog = f["backlog"].flatMap { r.integer($0, f.path("backlog"), in: 1...65535) }
                ?? FulcrumConfig.Listener.defaultBacklog

            if let name, let line = namesSeen[name] {
                r.report(f["name"], f.path("name"), "listener name '\(name)' is already used on line \(line)",
                         hint: "give each listener its own name")
            }
            if let name { namesSeen[name] = f["name"]?.mark?.line ?? 0 }
            if let address, address.port != 0 {
                if let line = addressesSeen[address] {
                    r.report(f["listen"], f.path("listen"), "address \(address) is already used by the listener on line \(line)",
                             hint: "give each listener its own address or port")
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
                listeners.append(.init(name: name, address: address, pool: poolName, backlog: backlog))
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
        var balance = BalanceStrategy.roundRobin
        if let node = f["balance"], let text = r.scalar(node, f.path("balance"), expecting: "a strategy name") {
            if let strategy = BalanceStrategy(rawValue: text) {
                balance = strategy
            } else {
                r.report(node, f.path("balance"), "unknown balancing strategy '\(text)'",
                         hint: "use one of: \(BalanceStrategy.allCases.map(\.rawValue).joined(separator: ", "))")
            }
        }
        var connectTimeout = FulcrumConfig.Pool.defaultConnectTimeout
        if let node = f["connect_timeout"], let value = r.duration(node, f.path("connect_timeout")) {
            if value <= .zero {
                r.report(node, f.path("connect_timeout"), "must be greater than zero", hint: "use e.g. 1s")
            } else {
                connectTimeout = value
            }
        }
        var idleTimeout = FulcrumConfig.Pool.defaultIdleTimeout
        if let node = f["idle_timeout"], let value = r.duration(node, f.path("idle_timeout")) {
            if value <= .zero {
                r.report(node, f.path("idle_timeout"), "must be greater than zero", hint: "use e.g. 10m")
            } else {
                idleTimeout = value
            }
        }
        let retries = f["retries"].flatMap { r.integer($0, f.path("retries"), in: 0...100) }
            ?? FulcrumConfig.Pool.defaultRetries

        var backends: [FulcrumConfig.Backend] = []
        if let node = f["backends"] {
            backends = buildBackends(node, f.path("backends"), &r)
        } else {
            r.report(f.node, f.path("backends"), "missing required key 'backends'",
                     hint: "list at least one backend, e.g. '- address: 127.0.0.1:6379'")
        }
        return FulcrumConfig.Pool(name: name, backends: backends, balance: balance, connectTimeout: connectTimeout,
                                  idleTimeout: idleTimeout, retries: retries)
    }

    private static func buildBackends(_ node: Node, _ path: String, _ r: inout YAMLReader) -> [FulcrumConfig.Backend] {
        guard let items = r.sequence(node, path, of: "backends") else { return [] }
        if items.isEmpty {
            r.report(node, path, "the pool has zero backends",
                     hint: "list at least one backend, e.g. '- address: 127.0.0.1:6379'")
        }
        var backends: [FulcrumConfig.Backend] = []
        var seen: [SocketAddress: Int] = [:]
        for (index, item) in items.enumerated() {
            let itemPath = "\(path)[\(index)]"
            let fields: Fields?
            if case .scalar = item {
                // Shorthand: "- 127.0.0.1:6379".
                var f = Fields(path: itemPath, node: item)
                f.values["address"] = (item, item)
                fields = f
            } else {
                fields = r.fields(item, itemPath, known: backendKeys)
            }
            guard let f = fields else { continue }
            let address = required(f, "address", &r) { r, n in r.address(n, f.path("address"), allowPortZero: false) }
            let weight = f["weight"].flatMap {
                r.integer($0, f.path("weight"), in: 1...FulcrumConfig.Backend.maxWeight,
                          note: "to take a backend out of rotation, remove it")
            } ?? 1
            if let address {
                if let line = seen[address] {
                    r.report(f["address"], f.path("address"), "backend \(address) is already listed on line \(line)",
                             hint: "list each backend once; use weight to give it more traffic")
                } else {
                    seen[address] = f["address"]?.mark?.line ?? 0
                    backends.append(.init(address: address, weight: weight))
                }
            }
        }
        return backends
    }

    private static func required<T>(_ f: Fields, _ key: String, _ r: inout YAMLReader,
                                    _ read: (inout YAMLReader, Node) -> T?) -> T? {
        guard let node = f[key] else {
            r.report(f.node, f.path(key), "missing required key '\(key)'")
            return nil
        }
        return read(&r, node)
    }

    private static func syntaxDiagnostic(_ error: Error, file: String) -> ConfigDiagnostic {
        if let yaml = error as? YamlError {
            switch yaml {
            case .scanner(_, let problem, let mark, _), .parser(_, let problem, let mark, _),
                 .composer(_, let problem, let mark, _):
                return ConfigDiagnostic(file: file, line: mark.line, keyPath: "", message: "YAML syntax error: \(problem)",
                                        hint: "check indentation and quoting near this line")
            default:
                break
            }
        }
        return ConfigDiagnostic(file: file, line: 0, keyPath: "", message: "YAML syntax error: \(error)")
    }
}
