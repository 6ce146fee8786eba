import EventLoop
import Fulcrum
import FulcrumCore

#if canImport(Glibc)
import Glibc
#endif

/// The human-readable plan `fulcrum check` prints: every value after defaults are applied, named as in the
/// file, with "off" for what is not enabled.
enum Plan {
    static func describe(_ config: FulcrumConfig) -> String {
        let workers: String
        switch config.workers {
        case .auto: workers = "auto (\(onlineCores()) on this machine)"
        case .count(let n): workers = "\(n)"
        }
        // A reload applies everything else; these keep the running process's value (`ConfigDiff.needsRestart`).
        let restart = [workers, sizeText(config.bufferSize), config.pidFile ?? "off", config.upgradeSocket ?? "off"]
        let width = restart.map(\.count).max()!
        func needsRestart(_ value: String) -> String {
            value + String(repeating: " ", count: width - value.count) + "  (a reload keeps the running value; restart to change)"
        }
        var lines = [
            "workers:        \(needsRestart(restart[0]))",
            "drain_timeout:  \(config.drainTimeout.configText)",
            "buffer_size:    \(needsRestart(restart[1]))",
            "pid_file:       \(needsRestart(restart[2]))",
            "upgrade_socket: \(needsRestart(restart[3]))",
            "admin:          \(admin(config.admin))",
            "access_log:     \(config.accessLog?.description ?? "off")",
        ]
        if config.pools.contains(where: \.isDiscovered) { lines.append("dns:            \(dns(config.dns))") }
        lines += [
            "",
        ]
        for listener in config.listeners {
            lines.append("listener \(listener.name): \(listener.address) -> pool \(listener.pool) (backlog \(listener.backlog), "
                + "defer_accept \(listener.deferAccept.map { "\($0.configText): accepted once the client has sent something" } ?? "off"))")
        }
        for pool in config.pools {
            lines.append("")
            lines += describe(pool)
            let users = config.listeners.filter { $0.pool == pool.name }.map(\.name)
            if users.isEmpty { lines.append("  note: no listener uses this pool") }
        }
        return lines.joined(separator: "\n")
    }

    /// The admin API's address and where its token comes from; never the token itself.
    static func admin(_ admin: FulcrumConfig.Admin?) -> String {
        guard let admin else { return "off" }
        let token: String
        switch admin.token {
        case .file(let path)?: token = "token from file \(path)"
        case .environment(let name)?: token = "token from environment variable \(name)"
        case .literal?: token = "token set in this file (not shown)"
        case nil: token = "no token (loopback only: anyone on this host may change things)"
        }
        return "http://\(admin.address)/, \(token)"
    }

    static func describe(_ pool: FulcrumConfig.Pool) -> [String] {
        let options = strategyOptions(pool.balance)
        var lines = [
            "pool \(pool.name): balance \(pool.balance.name)\(options.isEmpty ? "" : " (\(options))"), "
                + "connect_timeout \(pool.connectTimeout.configText), idle_timeout \(pool.idleTimeout.configText), "
                + "retries \(pool.retries)",
            "  slow_start \(slowStart(pool)), "
                + "queue size \(pool.queue.size) per worker, timeout \(pool.queue.timeout.configText), "
                + "hedge_after \(offOr(pool.resilience.hedgeAfter))",
        ]
        let r = pool.resilience
        lines.append("  " + health(r.health))
        lines.append("  " + breaker(r.breaker))
        lines.append("  retry_budget \(percent(r.retryBudgetRatio * 100)) + \(r.retryBudgetMinPerSecond)/s, "
            + "replay \(r.replayMaxBytes.map { "up to \(sizeText($0))" } ?? "off"), "
            + "first_byte_timeout \(offOr(r.firstByteTimeout)), on_backend_down \(r.onBackendDown.rawValue), "
            + "panic_threshold \(r.panicThreshold > 0 ? percent(r.panicThreshold) : "off"), "
            + "removed_backend_timeout \(offOr(r.removedBackendTimeout))")
        lines.append(pool.splice ? "  splice auto (bulk transfers move between the sockets through a pipe, without copying)"
                                 : "  splice off (always copies)")
        lines += backends(pool.backends, balance: pool.balance, discovered: pool.isDiscovered)
        for name in pool.names {
            var line = "  \(name.name)  weight \(name.weight)  (discovered: every address the name resolves to, "
                + "each a backend with these values)"
            if name.priority > 0 { line += "  priority \(name.priority)" }
            if name.state != .enabled { line += "  state \(name.state.rawValue)" }
            if let max = name.maxConnections { line += "  max_connections \(max)" }
            lines.append(line)
        }
        if let source = pool.discovery.source {
            lines.append("  discovered from \(discoverySource(source)); backends come and go at run time")
        }
        if pool.isDiscovered {
            lines.append("  max_backends \(pool.discovery.maxBackends) discovered (static backends not counted)")
        }
        return lines
    }

    private static func discoverySource(_ source: FulcrumConfig.Discovery.Source) -> String {
        switch source {
        case .srv(let name):
            return "DNS SRV records of \(name) (priority -> tier, weight -> weight)"
        case .etcd(let etcd):
            return "etcd \(etcd.endpoints.map { "http://\($0)" }.joined(separator: ", ")), keys under \(etcd.prefix)"
                + " (plain HTTP, no auth)"
        }
    }

    private static func dns(_ dns: FulcrumConfig.DNS) -> String {
        let servers = dns.servers.isEmpty ? "from /etc/resolv.conf" : dns.servers.map(\.description).joined(separator: ", ")
        return "servers \(servers), family \(dns.family.rawValue), ttl clamped to \(dns.minTTL.configText)"
            + "..\(dns.maxTTL.configText), timeout \(dns.timeout.configText)"
    }

    /// Slow start ramps effective weights, which `hash` (a fixed ring) and `first` (file order) do not use.
    private static func slowStart(_ pool: FulcrumConfig.Pool) -> String {
        guard pool.slowStart > .zero else { return "off" }
        switch pool.balance {
        case .hash: return "\(pool.slowStart.configText) (not applied: hash keeps its ring fixed)"
        case .first: return "\(pool.slowStart.configText) (not applied: first fills backends in file order)"
        default: return pool.slowStart.configText
        }
    }

    /// One line per backend. Shares are of the backend's own tier, over the backends that take traffic
    /// (enabled); the lowest tier with one gets the connections, the others only when it has none eligible.
    private static func backends(_ backends: [FulcrumConfig.Backend], balance: BalanceStrategy, discovered: Bool) -> [String] {
        let enabled = backends.filter { $0.state == .enabled }
        let first = enabled.map(\.priority).min()
        var lines: [String] = []
        for backend in backends {
            var line = "  \(backend.address)  weight \(backend.weight)"
            if backend.state != .enabled {
                line += "  (state \(backend.state.rawValue): no new connections)"
            } else {
                let total = enabled.filter { $0.priority == backend.priority }.reduce(0) { $0 + $1.weight }
                var share = "\(Int((Double(backend.weight) * 100 / Double(total)).rounded()))% of connections"
                if case .first = balance {
                    // `first` fills backends in file order: weights play no part.
                    share = "filled in file order"
                }
                if backend.priority == first {
                    line += "  (\(share))"
                } else {
                    line += "  (backup, priority \(backend.priority): \(share) while no lower tier is eligible)"
                }
            }
            if let max = backend.maxConnections { line += "  max_connections \(max)" }
            lines.append(line)
        }
        if enabled.isEmpty && !discovered { lines.append("  note: no backend is enabled, so every client is closed") }
        return lines
    }

    private static func strategyOptions(_ balance: BalanceStrategy) -> String {
        switch balance {
        case .hash(let key, let factor):
            return "key \(key.rawValue), hash_balance_factor \(factor.map { "\($0)" } ?? "off")"
        default:
            return balance.optionsText
        }
    }

    private static func health(_ health: FulcrumConfig.Health?) -> String {
        guard let h = health else { return "health off (no active checks)" }
        let check: String
        switch h.check {
        case .tcp:
            check = "tcp"
        case .sendExpect(let send, let expect):
            let expected: String
            switch expect {
            case .prefix(let bytes): expected = "expect \"\(escaped(bytes))\""
            case .regex(let pattern): expected = "expect_regex \(pattern)"
            }
            check = "send_expect send \"\(escaped(send))\" \(expected)"
        case .http(let path, let host, let statuses):
            let codes = statuses.map { $0.count == 1 ? "\($0.lowerBound)" : "\($0.lowerBound)-\($0.upperBound)" }
            check = "http GET \(path) host \(host ?? "(the backend's address)") status \(codes.joined(separator: ", "))"
        }
        return "health \(check) every \(h.interval.configText) (down: \(h.downInterval.configText), "
            + "jitter \(percent(h.jitter * 100))), timeout \(h.timeout.configText), rise \(h.rise), fall \(h.fall), "
            + "assume_healthy \(h.assumeHealthy)"
    }

    private static func breaker(_ breaker: FulcrumConfig.Breaker) -> String {
        guard breaker.enabled else { return "breaker off" }
        let s = breaker.settings
        let ratio = s.failureRatio.map {
            " or failure_ratio \(percent($0 * 100)) of \(s.minRequests)+ in \(Duration.microseconds(s.window).configText)"
        } ?? ", failure_ratio off"
        return "breaker after \(s.consecutiveFailures) failures in a row\(ratio), "
            + "ejection \(Duration.microseconds(s.baseEjection).configText)..\(Duration.microseconds(s.maxEjection).configText)"
            + " + up to \(percent(s.jitter * 100)) jitter, half_open_trials \(s.halfOpenTrials), "
            + "max_ejection_percent \(percent(breaker.maxEjectionPercent))"
    }

    private static func offOr(_ duration: Duration?) -> String { duration?.configText ?? "off" }

    /// `20%`, `12.5%`.
    private static func percent(_ value: Double) -> String {
        value == value.rounded() ? "\(Int(value))%" : "\((value * 10).rounded() / 10)%"
    }

    /// Bytes as the file writes them: printable ASCII as is, `\r \n \t \0 \\ \"` and `\xHH` for the rest.
    private static func escaped(_ bytes: [UInt8]) -> String {
        bytes.map { byte in
            switch byte {
            case 13: return "\\r"
            case 10: return "\\n"
            case 9: return "\\t"
            case 0: return "\\0"
            case UInt8(ascii: "\\"): return "\\\\"
            case UInt8(ascii: "\""): return "\\\""
            case 32..<127: return String(UnicodeScalar(byte))
            default: return "\\x" + (byte < 16 ? "0" : "") + String(byte, radix: 16)
            }
        }.joined()
    }
}

func printError(_ text: String) {
    var line = text
    if !line.hasSuffix("\n") { line += "\n" }
    var bytes = Array(line.utf8)
    _ = write(2, &bytes, bytes.count)
}
