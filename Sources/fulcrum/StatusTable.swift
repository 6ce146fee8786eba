import FulcrumCore
#if canImport(Glibc)
import Glibc
#endif

/// `GET /status` as text for a terminal: one line about the process, the listeners, then each pool with
/// its backends as a table (state, weight and its source, connections, check and breaker with their
/// reasons and how long ago they changed). Metrics columns (total connections, bytes, connect-time
/// percentiles) appear when `/status` has them. States are colored when `color` is set.
struct StatusTable {
    let status: JSON
    let color: Bool
    /// Wall-clock seconds, for "for 3m" after a state's `since`.
    let now: Double

    var text: String {
        var out = ""
        let f = status["fulcrum"]
        var facts = ["fulcrum \(f?["version"]?.plain ?? "?")", "pid \(f?["pid"]?.plain ?? "?")", "\(f?["workers"]?.plain ?? "?") workers"]
        if let uptime = f?["uptime_seconds"]?.intValue { facts.append("up \(Self.span(Double(uptime)))") }
        if let config = f?["config"]?.stringValue { facts.append("config \(config)") }
        if let generation = f?["generation"]?.intValue { facts.append("generation \(generation)") }
        out += facts.joined(separator: ", ") + "\n"

        let listeners = status["listeners"]?.arrayValue ?? []
        if !listeners.isEmpty {
            out += "\n" + table(header: ["LISTENER", "ADDRESS", "POOL"], rows: listeners.map { l in
                [Cell(l["name"]?.stringValue ?? "?"), Cell(l["address"]?.stringValue ?? "?"), Cell(l["pool"]?.stringValue ?? "?")]
            }, indent: "")
        }
        for pool in status["pools"]?.arrayValue ?? [] {
            out += "\n" + poolText(pool)
        }
        return out
    }

    // MARK: - Pools

    private func poolText(_ pool: JSON) -> String {
        let backends = pool["backends"]?.arrayValue ?? []
        var facts = [pool["balance"]?.stringValue ?? "?", pool["active_checks"] == .bool(true) ? "active checks" : "no active checks"]
        if let open = pool["connections_active"]?.intValue { facts.append("\(open) open") }
        if let queue = pool["queue_length"]?.intValue { facts.append("queue \(queue)") }
        for key in ["retries", "replays", "hedges"] { if let n = pool[key]?.intValue { facts.append("\(key) \(n)") } }
        var out = "pool \(pool["name"]?.stringValue ?? "?"): \(facts.joined(separator: ", "))\n"
        for source in pool["discovery"]?.arrayValue ?? [] { out += "  " + discoveryText(source) + "\n" }
        guard !backends.isEmpty else { return out + "  (no backends)\n" }

        let hasTotal = backends.contains { $0["connections"]?["total"]?.intValue != nil }
        let hasBytes = backends.contains { $0["bytes"]?["in"]?.intValue != nil || $0["bytes"]?["out"]?.intValue != nil }
        let hasLatency = backends.contains { $0["connect_time_ms"]?["p50"]?.numberValue != nil }
        var header = ["BACKEND", "STATE", "WEIGHT", "ACTIVE"]
        if hasTotal { header.append("TOTAL") }
        if hasBytes { header += ["IN", "OUT"] }
        if hasLatency { header.append("CONNECT p50/p99") }
        header += ["CHECK", "BREAKER"]
        let rows = backends.map { b -> [Cell] in
            let kind = BackendKind(b)
            var row = [Cell(b["address"]?.stringValue ?? "?"), Cell(kind.label, color: kind.color)]
            let weight = b["weight"]?["value"]?.plain ?? "?"
            row.append(Cell(b["weight"]?["source"]?.stringValue == "admin" ? "\(weight) (admin)" : weight))
            row.append(Cell(b["connections"]?["active"]?.plain ?? "?"))
            if hasTotal { row.append(Cell(b["connections"]?["total"]?.plain ?? "-")) }
            if hasBytes {
                row.append(Cell(b["bytes"]?["in"]?.intValue.map(Self.bytes) ?? "-"))
                row.append(Cell(b["bytes"]?["out"]?.intValue.map(Self.bytes) ?? "-"))
            }
            if hasLatency {
                let p = b["connect_time_ms"]
                row.append(Cell([p?["p50"]?.numberValue, p?["p99"]?.numberValue].map { $0.map(Self.milliseconds) ?? "-" }.joined(separator: " / ") + " ms"))
            }
            row.append(checkCell(b))
            row.append(breakerCell(b))
            return row
        }
        return out + table(header: header, rows: rows, indent: "  ")
    }

    /// `discovered by etcd /fulcrum/pools/redis/: ok for 3m, 2 backends (revision 41)`, colored when stale.
    private func discoveryText(_ d: JSON) -> String {
        let state = d["state"]?.stringValue ?? "?"
        var text = "discovered by \(d["source"]?.stringValue ?? "?"): \(state)\(since(d["since"]))"
        if let error = d["error"]?.stringValue { text += " (\(error); keeping the last known set)" }
        text += ", \(d["backends"]?.intValue ?? 0) backend(s)"
        if let detail = d["last_update"]?.stringValue, !detail.isEmpty { text += " (\(detail))" }
        if let held = d["removal_held"]?.intValue, held > 0 { text += ", removal of \(held) held for confirmation" }
        if let ignored = d["ignored_records"]?.intValue, ignored > 0 { text += ", \(ignored) beyond max_backends ignored" }
        guard color else { return text }
        let code = state == "stale" ? Self.red : state == "ok" ? Self.green : Self.yellow
        return "\u{1B}[\(code)m\(text)\u{1B}[0m"
    }

    private func checkCell(_ b: JSON) -> Cell {
        guard let check = b["check"], check != .null else { return Cell("-") }
        let state = check["state"]?.stringValue ?? "?"
        var text = state + since(check["since"])
        if let reason = check["reason"]?.stringValue { text += ": \(reason)" }
        return Cell(text, color: state == "up" ? Self.green : state == "down" ? Self.red : nil)
    }

    private func breakerCell(_ b: JSON) -> Cell {
        let breaker = b["breaker"]
        let state = breaker?["state"]?.stringValue ?? "closed"
        guard state != "closed" else { return Cell("closed") }
        return Cell((breaker?["summary"]?.stringValue ?? state) + since(breaker?["since"]), color: state == "open" ? Self.yellow : nil)
    }

    /// ` for 3m` from an ISO 8601 time, or nothing.
    private func since(_ value: JSON?) -> String {
        guard now > 0, let text = value?.stringValue, let at = Self.parseTime(text) else { return "" }
        return " for \(Self.span(max(0, now - at)))"
    }

    // MARK: - Layout

    struct Cell {
        let text: String
        var color: String?

        init(_ text: String, color: String? = nil) {
            self.text = text
            self.color = color
        }
    }

    /// Columns padded to their widest cell (the last one is not padded); colors do not count in the width.
    private func table(header: [String], rows: [[Cell]], indent: String) -> String {
        let all = [header.map { Cell($0) }] + rows
        let widths = header.indices.map { column in all.map { $0[column].text.count }.max() ?? 0 }
        var out = ""
        for row in all {
            var line = indent
            for (column, cell) in row.enumerated() {
                let last = column == row.count - 1
                let padding = last ? "" : String(repeating: " ", count: widths[column] - cell.text.count + 2)
                if color, let code = cell.color {
                    line += "\u{1B}[\(code)m\(cell.text)\u{1B}[0m" + padding
                } else {
                    line += cell.text + padding
                }
            }
            out += line + "\n"
        }
        return out
    }

    static let green = "32", red = "1;31", yellow = "33", blue = "34", gray = "90", magenta = "35"

    // MARK: - Values

    static func span(_ seconds: Double) -> String {
        let s = Int(seconds)
        if s < 60 { return "\(s)s" }
        if s < 3600 { return "\(s / 60)m\(s % 60 == 0 ? "" : "\(s % 60)s")" }
        if s < 86400 { return "\(s / 3600)h\(s % 3600 / 60 == 0 ? "" : "\(s % 3600 / 60)m")" }
        return "\(s / 86400)d\(s % 86400 / 3600 == 0 ? "" : "\(s % 86400 / 3600)h")"
    }

    static func bytes(_ n: Int) -> String {
        let units = ["B", "KiB", "MiB", "GiB", "TiB"]
        var value = Double(n)
        var unit = 0
        while value >= 1024 && unit < units.count - 1 {
            value /= 1024
            unit += 1
        }
        return unit == 0 ? "\(n) B" : "\((value * 10).rounded() / 10) \(units[unit])"
    }

    static func milliseconds(_ value: Double) -> String {
        value < 10 ? "\((value * 100).rounded() / 100)" : "\(Int(value.rounded()))"
    }

    /// `2026-11-21T15:05:18.123Z` as seconds since the epoch.
    static func parseTime(_ text: String) -> Double? {
        let parts = text.split(whereSeparator: { "-T:Z".contains($0) })
        guard parts.count >= 6, let year = Int32(parts[0]), let month = Int32(parts[1]), let day = Int32(parts[2]),
              let hour = Int32(parts[3]), let minute = Int32(parts[4]), let second = Double(parts[5]) else { return nil }
        var fields = tm()
        fields.tm_year = year - 1900
        fields.tm_mon = month - 1
        fields.tm_mday = day
        fields.tm_hour = hour
        fields.tm_min = minute
        fields.tm_sec = 0
        return Double(timegm(&fields)) + second
    }
}

/// What a backend is doing, in the order that matters most to an operator (as the status page shows it).
struct BackendKind {
    let label: String
    let color: String

    init(_ b: JSON) {
        let state = b["state"]?["value"]?.stringValue ?? "enabled"
        let check = b["check"]?["state"]?.stringValue
        let breaker = b["breaker"]
        let workers = breaker?["workers"]?.intValue ?? 0
        if b["listed"] == .bool(false) {
            (label, color) = ("removed", StatusTable.magenta)
        } else if state == "disabled" {
            (label, color) = ("disabled", StatusTable.gray)
        } else if state == "drain" {
            (label, color) = ("draining", StatusTable.blue)
        } else if check == "down" {
            (label, color) = ("down", StatusTable.red)
        } else if let open = breaker?["open_workers"]?.intValue, open > 0 {
            (label, color) = ("breaker open \(open)/\(workers)", StatusTable.yellow)
        } else if let half = breaker?["half_open_workers"]?.intValue, half > 0 {
            (label, color) = ("half-open \(half)/\(workers)", StatusTable.yellow)
        } else if check == "unknown" {
            (label, color) = ("checking", StatusTable.gray)
        } else {
            (label, color) = ("up", StatusTable.green)
        }
    }
}

private extension JSON {
    var stringValue: String? { if case .string(let value) = self { value } else { nil } }
    var intValue: Int? { if case .int(let value) = self { value } else { nil } }
    /// A string as it is, anything else as JSON text.
    var plain: String { stringValue ?? text }
    var numberValue: Double? {
        switch self {
        case .int(let value): Double(value)
        case .double(let value): value
        default: nil
        }
    }
    var arrayValue: [JSON]? { if case .array(let value) = self { value } else { nil } }
}
