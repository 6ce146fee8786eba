import Foundation
import FulcrumCore
import Testing

/// Feeds the configuration loader thousands of random and mutated files from a fixed seed. The loader must
/// never crash, must reject with at least one diagnostic, and every diagnostic must carry a line number
/// (line > 0). The one documented exception is a file with no YAML document at all ("the file is empty",
/// line 0). Whatever it accepts must be within the bounds the engine runs with.
///
/// Replay another run with FULCRUM_FUZZ_SEED=<n> (and FULCRUM_FUZZ_CASES=<n>); the seed is printed.
@Suite struct ConfigFuzzTests {
    static let defaultSeed: UInt64 = 0xF0_1C_2025
    static let defaultCases = 1500

    @Test func randomAndMutatedFilesNeverCrashAndEveryRejectionHasALine() {
        let environment = ProcessInfo.processInfo.environment
        let seed = environment["FULCRUM_FUZZ_SEED"].flatMap { UInt64($0) } ?? Self.defaultSeed
        let cases = environment["FULCRUM_FUZZ_CASES"].flatMap { Int($0) } ?? Self.defaultCases
        for file in YAMLFuzzer.validFiles {
            #expect(throws: Never.self, "the generator's starting files must be valid") {
                _ = try ConfigLoader.load(text: file, file: "valid.yaml")
            }
        }
        print("config fuzz: seed \(seed), \(cases) cases (FULCRUM_FUZZ_SEED=\(seed) replays this run)")

        var generator = YAMLFuzzer(seed: seed)
        var accepted = 0, rejected = 0, failures = 0
        let started = ContinuousClock.now
        for index in 0..<cases where failures < 5 {
            let text = generator.next()
            if let problem = Self.problem(loading: text, accepted: &accepted, rejected: &rejected) {
                failures += 1
                Issue.record("seed \(seed), case \(index): \(problem)\n--- input ---\n\(text.debugDescription.prefix(3000))")
            }
        }
        let elapsed = ContinuousClock.now - started
        print("config fuzz: \(accepted) accepted, \(rejected) rejected in \(elapsed)")
        // Both outcomes must be exercised, or the generator has drifted into testing nothing.
        #expect(accepted >= cases / 50, "too few accepted files: \(accepted)")
        #expect(rejected >= cases / 2, "too few rejected files: \(rejected)")
    }

    /// What is wrong with the loader's answer to `text`, or nil.
    static func problem(loading text: String, accepted: inout Int, rejected: inout Int) -> String? {
        let lineCount = text.split(omittingEmptySubsequences: false) { $0.isNewline }.count
        do {
            let config = try ConfigLoader.load(text: text, file: "fuzz.yaml")
            accepted += 1
            return boundsProblem(config)
        } catch {
            rejected += 1
            if error.diagnostics.isEmpty { return "rejected without a diagnostic" }
            for d in error.diagnostics {
                if d.message.isEmpty { return "empty message: \(d)" }
                if d.line == 0 && d.message == "the file is empty" { continue }
                // A mark may point just past the last line (end of stream).
                if d.line <= 0 || d.line > lineCount + 1 { return "diagnostic without a valid line: \(d)" }
            }
            return nil
        }
    }

    /// An accepted file must run: every value within `ConfigLimits`, and the core built from it sane.
    static func boundsProblem(_ config: FulcrumConfig) -> String? {
        func within(_ value: Duration, _ range: ClosedRange<Duration>, _ name: String) -> String? {
            range.contains(value) ? nil : "\(name) \(value) accepted outside \(range)"
        }
        if config.listeners.isEmpty || config.pools.isEmpty { return "accepted without listeners or pools" }
        if let p = within(config.drainTimeout, ConfigLimits.drainTimeout, "drain_timeout") { return p }
        if !ConfigLimits.bufferSize.contains(config.bufferSize) { return "buffer_size \(config.bufferSize)" }
        if case .count(let n) = config.workers, !ConfigLimits.workers.contains(n) { return "workers \(n)" }
        for pool in config.pools {
            if pool.backends.isEmpty { return "pool \(pool.name) accepted without backends" }
            let r = pool.resilience
            let checks: [String?] = [
                within(pool.connectTimeout, ConfigLimits.timeout, "connect_timeout"),
                within(pool.idleTimeout, ConfigLimits.idleTimeout, "idle_timeout"),
                within(pool.slowStart, ConfigLimits.slowStart, "slow_start"),
                within(pool.queue.timeout, ConfigLimits.timeout, "queue.timeout"),
                r.firstByteTimeout.flatMap { within($0, ConfigLimits.timeout, "first_byte_timeout") },
                r.hedgeAfter.flatMap { $0 < pool.connectTimeout ? nil : "hedge_after \($0) ≥ connect_timeout" },
                r.health.flatMap { within($0.interval, ConfigLimits.healthInterval, "health.interval") },
                r.health.flatMap { within($0.downInterval, ConfigLimits.healthInterval, "health.down_interval") },
                r.health.flatMap { within($0.timeout, ConfigLimits.timeout, "health.timeout") },
            ]
            if let p = checks.compactMap({ $0 }) .first { return p }
            if case .peakEWMA(let decay, let latency) = pool.balance {
                if let p = within(decay, ConfigLimits.ewmaDecay, "decay") { return p }
                if let p = within(latency, ConfigLimits.ewmaDefaultLatency, "default_latency") { return p }
            }
            if let p = breakerProblem(r.breaker.settings) { return p }
        }
        return nil
    }

    /// Ejects a breaker built from `settings` again and again, far along the clock: every ejection must end
    /// in the future and no later than max_ejection plus jitter.
    static func breakerProblem(_ s: CircuitBreaker.Settings) -> String? {
        if s.window > ConfigLimits.breakerWindow.upperBound.inMicroseconds { return "window \(s.window)us" }
        if s.baseEjection < 1 || s.maxEjection < s.baseEjection { return "ejection \(s.baseEjection)..\(s.maxEjection)" }
        var breaker = CircuitBreaker(settings: s, random: FastRandom(seed: 1))
        var now: Microseconds = 1 << 50
        for _ in 0..<40 {
            for _ in 0..<s.consecutiveFailures { breaker.record(.connectRefused, trial: breaker.state == .halfOpen, now: now) }
            guard case .open(let until) = breaker.state else { return "breaker did not open after \(s.consecutiveFailures) failures" }
            let longest = s.maxEjection + Microseconds(Double(s.maxEjection) * s.jitter) + 1
            if until <= now || until - now > longest { return "ejection of \(until - now)us with settings \(s)" }
            now = until
            _ = breaker.admit(now: now)
        }
        return nil
    }
}

/// Seeded generator of configuration texts: valid files mutated line by line and value by value, and
/// streams of YAML tokens, bytes, nesting, huge numbers, unicode and tabs.
struct YAMLFuzzer {
    private var random: FastRandom

    init(seed: UInt64) { random = FastRandom(seed: seed) }

    mutating func next() -> String {
        switch random.below(20) {
        case 0, 1: return tokenSoup()
        case 2: return deepNesting()
        default:
            var lines = pick(Self.validFiles).split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
            // Mostly one mutation, so that many files stay close to valid and reach the value checks.
            for _ in 0..<(random.below(3) == 0 ? 2 + random.below(3) : 1) { mutate(&lines) }
            return lines.joined(separator: random.below(20) == 0 ? "\r\n" : "\n")
        }
    }

    private mutating func mutate(_ lines: inout [String]) {
        guard !lines.isEmpty else { lines = [pick(Self.scalars)]; return }
        let i = random.below(lines.count)
        switch random.below(24) {
        case 0: lines.remove(at: i)
        case 1: lines.insert(lines[i], at: random.below(lines.count + 1))
        case 2: lines.swapAt(i, random.below(lines.count))
        case 3...14:
            // A new value for one key on this line (most mutations: they reach the validators). In a flow
            // mapping the value ends at the next comma or brace.
            let line = Array(lines[i])
            let keys = line.indices.dropLast().filter { line[$0] == ":" && line[$0 + 1] == " " }
            guard !keys.isEmpty else { lines[i] += " " + randomScalar(); break }
            let start = pick(keys) + 2
            let end = line[start...].firstIndex { ",}]".contains($0) } ?? line.count
            lines[i] = String(line[..<start]) + randomScalar() + String(line[end...])
        case 15...17: lines[i].insert(contentsOf: randomBytes(), at: randomIndex(in: lines[i]))
        case 18: lines[i] = lines[i].replacingOccurrences(of: "  ", with: "\t")
        case 19: lines[i] = String(repeating: " ", count: random.below(5)) + lines[i].drop { $0 == " " }
        case 20: lines.insert(pick(Self.yamlSpecials), at: random.below(lines.count + 1))
        case 21: lines[i] = String(lines[i].prefix(random.below(lines[i].count + 1)))
        case 22: lines.insert(deepNesting(), at: random.below(lines.count + 1))
        default: lines[i] = lines[i].replacingOccurrences(of: ": ", with: pick([":", ":  ", ": - ", ": [", ": &x "]))
        }
    }

    private mutating func randomScalar() -> String {
        switch random.below(8) {
        case 5, 6, 7: return pick(Self.plausible)
        case 0: return String(random.next() >> random.below(64)) + pick(["", "ns", "us", "ms", "s", "m", "h", "d", "KiB", "GiB", "%"])
        case 1: return "\(Double(random.below(1_000_000)) / Double(1 + random.below(1000)))" + pick(["s", "ms", "h", "%", ""])
        default: return pick(Self.scalars)
        }
    }

    private mutating func randomBytes() -> String {
        var scalars = String.UnicodeScalarView()
        for _ in 0..<(1 + random.below(6)) {
            switch random.below(4) {
            case 0: scalars.append(Unicode.Scalar(UInt8(random.below(128))))
            case 1: scalars.append(pick(["\u{0}", "\u{7}", "\u{1B}", "\u{85}", "\u{2028}", "\u{FEFF}", "\u{FFFD}", "\r", "\t"] as [Unicode.Scalar]))
            default: scalars.append(Unicode.Scalar(UInt8(32 + random.below(95))))
            }
        }
        return String(scalars)
    }

    private mutating func tokenSoup() -> String {
        var text = ""
        for _ in 0..<(1 + random.below(40)) {
            text += pick(Self.tokens)
            if random.below(4) == 0 { text += pick(["\n", "\n  ", "\n    ", " ", "\t"]) }
        }
        return text
    }

    /// Nesting near and past libyaml's limit of 1000 levels, in flow or block style.
    private mutating func deepNesting() -> String {
        let depth = pick([10, 100, 500, 999, 1001, 3000])
        switch random.below(3) {
        case 0: return "pools: " + String(repeating: "[", count: depth) + String(repeating: "]", count: depth)
        case 1: return "pools: " + String(repeating: "{a: ", count: depth) + "1" + String(repeating: "}", count: depth)
        default:
            return (0..<min(depth, 300)).map { String(repeating: " ", count: $0) + "a:" }.joined(separator: "\n") + " 1"
        }
    }

    private mutating func randomIndex(in line: String) -> String.Index {
        line.index(line.startIndex, offsetBy: random.below(line.count + 1))
    }

    private mutating func pick<T>(_ items: [T]) -> T { items[random.below(items.count)] }

    static let scalars = [
        "0", "-1", "1", "1001", "65536", "99999999999999999999", "9223372036854775807", "-9223372036854775808",
        "18446744073709551616", "1e400", "nan", ".nan", "inf", ".inf", "-.inf", "~", "null", "", "''", "\"\"",
        "true", "off", "yes", "[]", "{}", "[1, 2]", "{a: 1}", "auto", "1000000h", "99999999999999999999h",
        "9999999999d", "500ns", "0.5us", "1ns", "0s", "1us", "10ms", "1h", "24h", "25h", "7d", "8d", "11m",
        "64KiB", "99999999999GiB", "9223372036854775807KiB", "0B", "16MiB", "17MiB", "100%", "101%", "-5%",
        "50", "1.25", "0.5", "1e-9", "[::1]:7000", "'[::1]:7000'", "[2001:db8::1]", "[1::]", "127.0.0.1:0",
        "127.0.0.1:99999", "localhost:1", "db.internal:5432", "🦀", "é̃", "\u{202E}abc", "\t", "round_robin",
        "peak_ewma", "{strategy: hash, hash_balance_factor: 1e308}", "{strategy: peak_ewma, decay: 0s}",
        "disabled", "drain", "http", "send_expect", "200-100", "[200, 999]", "\"\\xZZ\"", "&a 1", "*a", "*b",
        "!!binary aGk=", "!custom 1", "|\n  text", ">\n  folded", "'unterminated", "\"unterminated",
    ]

    /// Values some key accepts, so that mutated files also pass and reach the bounds checks of accepted files.
    static let plausible = [
        "1", "2", "3", "5", "100", "0", "1s", "2s", "250ms", "10m", "1h", "24h", "1us", "10ms", "0s", "30s", "50%",
        "10%", "64KiB", "1MiB", "true", "false", "keep", "close", "enabled", "drain", "disabled", "tcp", "round_robin",
        "least_connections", "p2c", "random", "127.0.0.1:9009", "'[::1]:9010'", "auto", "1.5",
    ]

    static let yamlSpecials = [
        "---", "...", "%YAML 1.2", "%TAG ! tag:x,2000:", "? complex", ": value", "<<: *a", "base: &a {size: 1}",
        "- item", "# comment", "\t- tab", "key: &anchor value", "alias: *anchor", "!!map {a: 1}", "[unclosed",
        "{unclosed", "pools:", "listeners:", "pools: {}", "listeners: []", "- {name: a, listen: [::1]:7000, pool: app}",
    ]

    static let tokens = [
        "workers:", "pools:", "listeners:", "app:", "backends:", "- ", "address:", "127.0.0.1:9001", "[", "]",
        "{", "}", ",", ":", "name: a", "listen: 127.0.0.1:0", "pool: app", "health:", "breaker:", "window:",
        "1s", "&x", "*x", "!!str", "\"", "'", "#", "|", ">", "?", "-", "\u{0}", "\u{FEFF}", "🦀", "0x10", "999999999999999999999",
    ]

    static let validFiles = [
        """
        workers: auto
        drain_timeout: 30s
        listeners:
          - name: redis
            listen: 127.0.0.1:7000
            pool: redis
        pools:
          redis:
            balance: round_robin
            backends:
              - address: 127.0.0.1:6391
                weight: 2
              - address: 127.0.0.1:6392
            connect_timeout: 1s
            idle_timeout: 10m
            retries: 2
        """,
        """
        workers: 2
        drain_timeout: 5s
        buffer_size: 64KiB
        listeners:
          - name: front
            listen: '[::1]:7000'
            pool: app
            backlog: 128
          - {name: second, listen: 127.0.0.1:0, pool: db}
        pools:
          app:
            balance: {strategy: peak_ewma, decay: 10s, default_latency: 10ms}
            backends:
              - {address: 127.0.0.1:9001, weight: 3, max_connections: 100}
              - {address: 127.0.0.1:9002, backup: true}
              - {address: 127.0.0.1:9003, state: drain}
              - "[::1]:9004"
            connect_timeout: 250ms
            idle_timeout: 5m
            retries: 1
            slow_start: 30s
            queue: {size: 10, timeout: 2s}
            health: {check: send_expect, send: "PING\\r\\n", expect: "+PONG", interval: 2s, timeout: 1s, rise: 2, fall: 3}
            breaker:
              consecutive_failures: 5
              failure_ratio: 50%
              min_requests: 20
              window: 30s
              base_ejection: 10s
              max_ejection: 1m
              half_open_trials: 2
              jitter: 10%
              max_ejection_percent: 34%
            panic_threshold: 50%
            retry_budget: {ratio: 20%, min_per_second: 10}
            replay: {max_bytes: 64KiB}
            first_byte_timeout: 2s
            on_backend_down: close
            hedge_after: 50ms
          db:
            balance:
              strategy: hash
              key: ip
              hash_balance_factor: 1.25
            backends: [127.0.0.1:5432, 127.0.0.1:5433]
            health:
              check: http
              path: /healthz
              status: [200, 204-299]
              down_interval: 500ms
              assume_healthy: true
            breaker: off
        """,
        """
        listeners: [{name: a, listen: 127.0.0.1:7000, pool: p}]
        pools:
          p:
            balance: first
            backends:
              - {address: 10.0.0.1:5432, max_connections: 200}
              - {address: 10.0.0.2:5432, max_connections: 200, priority: 1}
        """,
    ]
}
