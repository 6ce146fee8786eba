import EventLoop
import Fulcrum
import FulcrumCore

#if canImport(Glibc)
import Glibc
#endif

/// The human-readable plan `fulcrum check` prints: every value after defaults are applied.
enum Plan {
    static func describe(_ config: FulcrumConfig) -> String {
        var lines: [String] = []
        switch config.workers {
        case .auto: lines.append("workers:        auto (\(onlineCores()) on this machine)")
        case .count(let n): lines.append("workers:        \(n)")
        }
        lines.append("drain_timeout:  \(config.drainTimeout.configText)")
        lines.append("buffer_size:    \(sizeText(config.bufferSize))")
        lines.append("")
        for listener in config.listeners {
            lines.append("listener \(listener.name): \(listener.address) -> pool \(listener.pool) (backlog \(listener.backlog))")
        }
        for pool in config.pools {
            lines.append("")
            let options = pool.balance.optionsText
            lines.append("pool \(pool.name): balance \(pool.balance.name)\(options.isEmpty ? "" : " (\(options))"), "
                + "connect_timeout \(pool.connectTimeout.configText), idle_timeout \(pool.idleTimeout.configText), "
                + "retries \(pool.retries)")
            var extras: [String] = []
            if pool.slowStart > .zero { extras.append("slow_start \(pool.slowStart.configText)") }
            if pool.backends.contains(where: { $0.maxConnections != nil }) {
                extras.append("queue size \(pool.queue.size) per worker, timeout \(pool.queue.timeout.configText)")
            }
            if !extras.isEmpty { lines.append("  " + extras.joined(separator: ", ")) }
            lines.append("  " + resilience(pool.resilience))
            let primary = pool.backends.map(\.priority).min() ?? 0
            let total = pool.backends.filter { $0.priority == primary }.reduce(0) { $0 + $1.weight }
            for backend in pool.backends {
                var line = "  \(backend.address)  weight \(backend.weight)"
                if backend.priority == primary {
                    let share = total > 0 ? Double(backend.weight) * 100 / Double(total) : 0
                    line += "  (\(Int(share.rounded()))% of connections)"
                } else {
                    line += "  (backup, priority \(backend.priority))"
                }
                if let max = backend.maxConnections { line += "  max_connections \(max)" }
                if backend.state != .enabled { line += "  state \(backend.state.rawValue)" }
                lines.append(line)
            }
            let users = config.listeners.filter { $0.pool == pool.name }.map(\.name)
            if users.isEmpty { lines.append("  note: no listener uses this pool") }
        }
        return lines.joined(separator: "\n")
    }
}

/// One line on health checks, breaker, retry budget and replay.
private func resilience(_ r: FulcrumConfig.Pool.Resilience) -> String {
    var parts: [String] = []
    if let h = r.health {
        let check: String
        switch h.check {
        case .tcp: check = "tcp"
        case .sendExpect: check = "send_expect"
        case .http(let path, _, _): check = "http GET \(path)"
        }
        parts.append("health \(check) every \(h.interval.configText) (down: \(h.downInterval.configText)), timeout "
            + "\(h.timeout.configText), rise \(h.rise), fall \(h.fall)")
    } else {
        parts.append("no active health checks")
    }
    if r.breaker.enabled {
        let s = r.breaker.settings
        parts.append("breaker after \(s.consecutiveFailures) failures"
            + (s.failureRatio.map { " or \(Int($0 * 100))% of \(s.minRequests)+" } ?? "")
            + ", ejection \(Duration.microseconds(s.baseEjection).configText)..\(Duration.microseconds(s.maxEjection).configText)"
            + ", max \(Int(r.breaker.maxEjectionPercent))% ejected")
    } else {
        parts.append("breaker off")
    }
    parts.append("retry budget \(Int(r.retryBudgetRatio * 100))% + \(r.retryBudgetMinPerSecond)/s")
    if r.panicThreshold > 0 { parts.append("panic below \(Int(r.panicThreshold))% healthy") }
    if let replay = r.replayMaxBytes { parts.append("replay up to \(sizeText(replay))") }
    if let timeout = r.firstByteTimeout { parts.append("first_byte_timeout \(timeout.configText)") }
    if r.onBackendDown == .close { parts.append("on_backend_down close") }
    return parts.joined(separator: "; ")
}

func printError(_ text: String) {
    var line = text
    if !line.hasSuffix("\n") { line += "\n" }
    var bytes = Array(line.utf8)
    _ = write(2, &bytes, bytes.count)
}
