import Yams

extension ConfigLoader {
    static let healthKeys = ["check", "send", "send_hex", "expect", "expect_regex", "path", "host", "status",
                             "interval", "down_interval", "timeout", "rise", "fall", "jitter", "assume_healthy"]
    static let breakerKeys = ["enabled", "consecutive_failures", "failure_ratio", "min_requests", "window",
                              "base_ejection", "max_ejection", "half_open_trials", "jitter", "max_ejection_percent"]
    static let resilienceKeys = ["health", "breaker", "panic_threshold", "retry_budget", "replay",
                                 "first_byte_timeout", "on_backend_down", "hedge_after", "removed_backend_timeout"]

    static func buildResilience(_ f: Fields, _ r: inout YAMLReader) -> FulcrumConfig.Pool.Resilience {
        var result = FulcrumConfig.Pool.Resilience()
        if let node = f["health"] { result.health = buildHealth(node, f.path("health"), &r) }
        if let node = f["breaker"] { result.breaker = buildBreaker(node, f.path("breaker"), &r) }
        if let node = f["panic_threshold"], let value = r.percent(node, f.path("panic_threshold")) {
            result.panicThreshold = value
        }
        if let node = f["retry_budget"], let b = r.fields(node, f.path("retry_budget"), known: ["ratio", "min_per_second"]) {
            if let node = b["ratio"], let value = r.percent(node, b.path("ratio")) { result.retryBudgetRatio = value / 100 }
            if let node = b["min_per_second"],
               let value = r.integer(node, b.path("min_per_second"), in: ConfigLimits.retryBudgetMinPerSecond) {
                result.retryBudgetMinPerSecond = value
            }
        }
        if let node = f["replay"], let p = r.fields(node, f.path("replay"), known: ["max_bytes"]) {
            if let node = p["max_bytes"] {
                result.replayMaxBytes = r.size(node, p.path("max_bytes"), in: ConfigLimits.replayMaxBytes)
            } else {
                result.replayMaxBytes = 64 << 10
            }
        }
        result.firstByteTimeout = f["first_byte_timeout"].flatMap {
            r.duration($0, f.path("first_byte_timeout"), in: ConfigLimits.timeout)
        }
        result.hedgeAfter = f["hedge_after"].flatMap { r.duration($0, f.path("hedge_after"), in: ConfigLimits.timeout) }
        result.removedBackendTimeout = f["removed_backend_timeout"].flatMap {
            r.duration($0, f.path("removed_backend_timeout"), in: ConfigLimits.timeout)
        }
        if let node = f["on_backend_down"], let text = r.scalar(node, f.path("on_backend_down"), expecting: "keep or close") {
            if let value = FulcrumConfig.OnBackendDown(rawValue: text) {
                result.onBackendDown = value
            } else {
                r.report(node, f.path("on_backend_down"), "'\(text)' is not valid", hint: "use keep or close")
            }
        }
        return result
    }

    private static func buildHealth(_ node: Node, _ path: String, _ r: inout YAMLReader) -> FulcrumConfig.Health? {
        guard let h = r.fields(node, path, known: healthKeys) else { return nil }
        var health = FulcrumConfig.Health()
        if let node = h["interval"], let value = r.duration(node, h.path("interval"), in: ConfigLimits.healthInterval) {
            health.interval = value
            health.downInterval = value
        }
        if let node = h["down_interval"],
           let value = r.duration(node, h.path("down_interval"), in: ConfigLimits.healthInterval) {
            health.downInterval = value
        }
        if let node = h["timeout"], let value = r.duration(node, h.path("timeout"), in: ConfigLimits.timeout) {
            health.timeout = value
        }
        health.rise = h["rise"].flatMap { r.integer($0, h.path("rise"), in: ConfigLimits.riseFall) } ?? health.rise
        health.fall = h["fall"].flatMap { r.integer($0, h.path("fall"), in: ConfigLimits.riseFall) } ?? health.fall
        if let node = h["jitter"], let value = r.percent(node, h.path("jitter")) {
            if value > 50 {
                r.report(node, h.path("jitter"), "jitter above 50% is not useful", hint: "use e.g. 10%")
            } else {
                health.jitter = value / 100
            }
        }
        if let node = h["assume_healthy"], let value = r.boolean(node, h.path("assume_healthy")) { health.assumeHealthy = value }

        let kind = h["check"].flatMap { r.scalar($0, h.path("check"), expecting: "tcp, send_expect or http") } ?? "tcp"
        let options: [String: [String]] = [
            "tcp": [], "send_expect": ["send", "send_hex", "expect", "expect_regex"], "http": ["path", "host", "status"],
        ]
        guard let allowed = options[kind] else {
            r.report(h["check"], h.path("check"), "unknown check '\(kind)'", hint: "use tcp, send_expect or http")
            return nil
        }
        for key in options.values.flatMap({ $0 }) where h[key] != nil && !allowed.contains(key) {
            r.report(h.values[key]?.key, h.path(key), "check '\(kind)' takes no option '\(key)'",
                     hint: allowed.isEmpty ? "\(kind) has no options" : "\(kind) takes: \(allowed.joined(separator: ", "))")
        }
        switch kind {
        case "send_expect":
            var send: [UInt8] = []
            if let node = h["send"], let text = r.scalar(node, h.path("send"), expecting: "text to send") {
                send = unescape(text)
            }
            if let node = h["send_hex"], let text = r.scalar(node, h.path("send_hex"), expecting: "hex bytes") {
                if let bytes = hexBytes(text) {
                    send = bytes
                } else {
                    r.report(node, h.path("send_hex"), "'\(text)' is not hex", hint: "use pairs of hex digits, e.g. 50494e470d0a")
                }
            }
            let expectation: FulcrumConfig.Health.Expectation
            if let node = h["expect_regex"], let text = r.scalar(node, h.path("expect_regex"), expecting: "a regular expression") {
                if (try? Regex(text)) == nil {
                    r.report(node, h.path("expect_regex"), "'\(text)' is not a valid regular expression")
                }
                expectation = .regex(text)
            } else if let node = h["expect"], let text = r.scalar(node, h.path("expect"), expecting: "the expected reply prefix") {
                expectation = .prefix(unescape(text))
            } else {
                r.report(node, h.path("expect"), "check 'send_expect' needs 'expect' or 'expect_regex'",
                         hint: "e.g. send: \"PING\\r\\n\" and expect: \"+PONG\" for Redis")
                return nil
            }
            health.check = .sendExpect(send: send, expect: expectation)
        case "http":
            let pathText = h["path"].flatMap { r.scalar($0, h.path("path"), expecting: "a path such as /healthz") } ?? "/"
            if !pathText.hasPrefix("/") {
                r.report(h["path"], h.path("path"), "'\(pathText)' does not start with /", hint: "use e.g. /healthz")
            }
            let host = h["host"].flatMap { r.scalar($0, h.path("host"), expecting: "a host name") }
            var statuses: [ClosedRange<Int>] = [200...399]
            if let node = h["status"] { statuses = statusRanges(node, h.path("status"), &r) ?? statuses }
            health.check = .http(path: pathText, host: host, statuses: statuses)
        default:
            health.check = .tcp
        }
        return health
    }

    private static func buildBreaker(_ node: Node, _ path: String, _ r: inout YAMLReader) -> FulcrumConfig.Breaker {
        var breaker = FulcrumConfig.Breaker()
        if case .scalar(let scalar) = node, ["off", "false", "no"].contains(scalar.string) {
            breaker.enabled = false
            return breaker
        }
        guard let b = r.fields(node, path, known: breakerKeys) else { return breaker }
        if let node = b["enabled"], let value = r.boolean(node, b.path("enabled")) { breaker.enabled = value }
        var s = breaker.settings
        s.consecutiveFailures = b["consecutive_failures"].flatMap {
            r.integer($0, b.path("consecutive_failures"), in: ConfigLimits.consecutiveFailures)
        } ?? s.consecutiveFailures
        if let node = b["failure_ratio"], let value = r.percent(node, b.path("failure_ratio")) {
            if value <= 0 {
                r.report(node, b.path("failure_ratio"), "must be above 0%", hint: "use e.g. 50%")
            } else {
                s.failureRatio = value / 100
            }
        }
        s.minRequests = b["min_requests"].flatMap { r.integer($0, b.path("min_requests"), in: ConfigLimits.minRequests) }
            ?? s.minRequests
        if let node = b["window"], let value = r.duration(node, b.path("window"), in: ConfigLimits.breakerWindow) {
            s.window = value.inMicroseconds
        }
        if let node = b["base_ejection"], let value = r.duration(node, b.path("base_ejection"), in: ConfigLimits.baseEjection) {
            s.baseEjection = value.inMicroseconds
        }
        if let node = b["max_ejection"], let value = r.duration(node, b.path("max_ejection"), in: ConfigLimits.maxEjection) {
            s.maxEjection = value.inMicroseconds
        }
        if s.maxEjection < s.baseEjection {
            r.report(b["max_ejection"] ?? b.node, b.path("max_ejection"), "max_ejection is shorter than base_ejection",
                     hint: "make max_ejection at least base_ejection (\(Duration.microseconds(s.baseEjection).configText))")
        }
        s.halfOpenTrials = b["half_open_trials"].flatMap {
            r.integer($0, b.path("half_open_trials"), in: ConfigLimits.halfOpenTrials)
        } ?? s.halfOpenTrials
        if let node = b["jitter"], let value = r.percent(node, b.path("jitter")) { s.jitter = value / 100 }
        if let node = b["max_ejection_percent"], let value = r.percent(node, b.path("max_ejection_percent")) {
            breaker.maxEjectionPercent = value
        }
        breaker.settings = s
        return breaker
    }

    private static func statusRanges(_ node: Node, _ path: String, _ r: inout YAMLReader) -> [ClosedRange<Int>]? {
        let items: [Node]
        if case .sequence(let sequence) = node { items = Array(sequence) } else { items = [node] }
        var ranges: [ClosedRange<Int>] = []
        for item in items {
            guard let text = r.scalar(item, path, expecting: "a status such as 200 or 200-299") else { return nil }
            let parts = text.split(separator: "-").map { Int($0.trimmingSpaces) }
            if parts.count == 1, let code = parts[0], (100...599).contains(code) {
                ranges.append(code...code)
            } else if parts.count == 2, let low = parts[0], let high = parts[1], 100 <= low, low <= high, high <= 599 {
                ranges.append(low...high)
            } else {
                r.report(item, path, "'\(text)' is not an HTTP status or range", hint: "use e.g. 200, [200, 204] or 200-299")
                return nil
            }
        }
        return ranges
    }

    /// Text with C-style escapes (\r \n \t \0 \\ \xHH) as bytes.
    static func unescape(_ text: String) -> [UInt8] {
        var out: [UInt8] = []
        var bytes = Array(text.utf8)[...]
        while let b = bytes.popFirst() {
            guard b == UInt8(ascii: "\\"), let next = bytes.popFirst() else { out.append(b); continue }
            switch next {
            case UInt8(ascii: "r"): out.append(13)
            case UInt8(ascii: "n"): out.append(10)
            case UInt8(ascii: "t"): out.append(9)
            case UInt8(ascii: "0"): out.append(0)
            case UInt8(ascii: "x"):
                let hex = String(decoding: bytes.prefix(2), as: UTF8.self)
                if let value = UInt8(hex, radix: 16), hex.count == 2 {
                    out.append(value)
                    bytes = bytes.dropFirst(2)
                } else {
                    out += [b, next]
                }
            default: out.append(next)
            }
        }
        return out
    }

    static func hexBytes(_ text: String) -> [UInt8]? {
        let digits = Array(text.filter { !$0.isWhitespace })
        guard digits.count % 2 == 0 else { return nil }
        var out: [UInt8] = []
        for i in stride(from: 0, to: digits.count, by: 2) {
            guard let value = UInt8(String(digits[i...i + 1]), radix: 16) else { return nil }
            out.append(value)
        }
        return out
    }
}
