import FulcrumCore
import Testing

/// Every value `fulcrum check` accepts must run: each number, size and duration has a bound, and a value
/// outside it is rejected with its key, its line and the range to use.
@Suite struct ConfigBoundsTests {
    /// A valid file with `pool` spliced into its pool `app` (indented by four spaces) and `top` at the top.
    static func file(top: String = "", pool: String = "") -> String {
        """
        \(top)
        listeners: [{name: a, listen: 127.0.0.1:7000, pool: app}]
        pools:
          app:
            backends: [127.0.0.1:9001, 127.0.0.1:9002]
        \(pool.split(separator: "\n").map { "    " + $0 }.joined(separator: "\n"))
        """
    }

    static func rejection(_ text: String) -> ConfigDiagnostic? {
        do {
            _ = try ConfigLoader.load(text: text, file: "bounds.yaml")
            return nil
        } catch {
            #expect(error.diagnostics.count == 1, "\(error)")
            return error.diagnostics.first
        }
    }

    @Test func aBreakerWindowOfAMillionHoursIsRejected() throws {
        // It used to pass check and abort the process at start, allocating one bucket per second.
        let d = try #require(Self.rejection(Self.file(pool: "breaker: {failure_ratio: 50%, window: 1000000h}")))
        #expect(d.line == 6)
        #expect(d.keyPath == "pools.app.breaker.window")
        #expect(d.message == "'1000000h' is too long")
        #expect(d.hint == "use a duration from 1s to 10m")
    }

    @Test(arguments: [("idle_timeout: 500ns", "pools.app.idle_timeout"), ("connect_timeout: 0.5us", "pools.app.connect_timeout"),
                      ("hedge_after: 999ns", "pools.app.hedge_after"), ("first_byte_timeout: 1ns", "pools.app.first_byte_timeout"),
                      ("queue: {timeout: 100ns}", "pools.app.queue.timeout"), ("slow_start: 10ns", "pools.app.slow_start")])
    func durationsBelowOneMicrosecondAreRejected(line: String, key: String) throws {
        // 500ns used to become 0, and an idle_timeout of 0 is no timeout at all.
        let d = try #require(Self.rejection(Self.file(pool: line)))
        #expect(d.line == 6)
        #expect(d.keyPath == key)
        #expect(d.message.hasSuffix("is shorter than 1us, the finest time Fulcrum keeps"))
        #expect(d.hint?.contains("1us") == true)
    }

    @Test func aDrainTimeoutBelowOneMicrosecondIsRejectedButZeroMeansAtOnce() throws {
        let d = try #require(Self.rejection(Self.file(top: "drain_timeout: 500ns")))
        #expect(d.line == 1 && d.keyPath == "drain_timeout")
        #expect(d.hint == "use 0s or a duration from 1us to 24h")
        #expect(try ConfigLoader.load(text: Self.file(top: "drain_timeout: 0s"), file: "ok.yaml").drainTimeout == .zero)
    }

    @Test(arguments: [
        ("connect_timeout: 99999999999999999999h", "'99999999999999999999h' is too long", "use a duration from 1us to 24h"),
        ("idle_timeout: 8d", "'8d' is too long", "use a duration from 1us to 168h"),
        ("queue: {timeout: 25h}", "'25h' is too long", "use a duration from 1us to 24h"),
        ("queue: {size: 1000001}", "1000001 is out of range", "use an integer from 0 to 1000000"),
        ("retries: 99999999999999999999", "'99999999999999999999' is out of range", "use an integer from 0 to 100"),
        ("slow_start: 2h", "'2h' is too long", "use a duration from 0s to 1h"),
        ("first_byte_timeout: 1000d", "'1000d' is too long", "use a duration from 1us to 24h"),
        ("health: {interval: 1ms}", "'1ms' is too short", "use a duration from 10ms to 24h"),
        ("health: {down_interval: 100us}", "'100us' is too short", "use a duration from 10ms to 24h"),
        ("health: {timeout: 48h}", "'48h' is too long", "use a duration from 1us to 24h"),
        ("breaker: {window: 500ms}", "'500ms' is too short", "use a duration from 1s to 10m"),
        ("breaker: {base_ejection: 2h, max_ejection: 3h}", "'2h' is too long", "use a duration from 1us to 1h"),
        ("breaker: {max_ejection: 2d}", "'2d' is too long", "use a duration from 1us to 24h"),
        ("replay: {max_bytes: 99999999999999999999GiB}", "'99999999999999999999GiB' is out of range", "use a size from 1 to 16MiB"),
        ("replay: {max_bytes: 9007199254740993KiB}", "'9007199254740993KiB' is out of range", "use a size from 1 to 16MiB"),
        ("balance: {strategy: peak_ewma, decay: 2h}", "'2h' is too long", "use a duration from 1us to 1h"),
        ("balance: {strategy: peak_ewma, decay: 0s}", "must be greater than zero", "use a duration from 1us to 1h"),
    ])
    func outOfRangeValuesNameTheRange(line: String, message: String, hint: String) throws {
        let d = try #require(Self.rejection(Self.file(pool: line)))
        #expect(d.line == 6)
        #expect(d.message == message)
        #expect(d.hint == hint)
    }

    @Test func hugeTopLevelValuesAreOutOfRangeNotMalformed() throws {
        let buffer = try #require(Self.rejection(Self.file(top: "buffer_size: 99999999999999999999")))
        #expect(buffer.message == "'99999999999999999999' is out of range" && buffer.hint == "use a size from 4KiB to 64MiB")
        let drain = try #require(Self.rejection(Self.file(top: "drain_timeout: 9999999999999h")))
        #expect(drain.message == "'9999999999999h' is too long" && drain.hint == "use a duration from 0s to 24h")
        let backlog = try #require(Self.rejection(Self.file().replacingOccurrences(of: "pool: app}", with: "pool: app, backlog: 70000}")))
        #expect(backlog.keyPath == "listeners[0].backlog" && backlog.hint == "use an integer from 1 to 65535")
    }

    @Test func maxEjectionShorterThanTheDefaultBaseEjectionIsRejected() throws {
        let d = try #require(Self.rejection(Self.file(pool: "breaker: {max_ejection: 5s}")))
        #expect(d.line == 6)
        #expect(d.message == "max_ejection is shorter than base_ejection")
        #expect(d.hint == "make max_ejection at least base_ejection (10s)")
    }

    @Test func aHedgeThatCouldNeverStartIsRejected() throws {
        let d = try #require(Self.rejection(Self.file(pool: "connect_timeout: 100ms\nhedge_after: 100ms")))
        #expect(d.line == 7 && d.keyPath == "pools.app.hedge_after")
        #expect(d.message == "hedge_after 100ms is not shorter than connect_timeout 100ms, so no hedge would ever start")
        #expect(try ConfigLoader.load(text: Self.file(pool: "hedge_after: 999ms"), file: "ok.yaml")
            .pools[0].resilience.hedgeAfter == .milliseconds(999))
    }

    /// The largest value of every bound loads, and the core runs with it: the longest breaker window keeps a
    /// small bucket array, and the longest base ejection doubled 40 times stays a positive, capped time.
    @Test func theLargestAcceptedValuesRun() throws {
        let config = try ConfigLoader.load(text: Self.file(top: "drain_timeout: 24h\nbuffer_size: 64MiB\nworkers: 1024", pool: """
        connect_timeout: 24h
        idle_timeout: 168h
        slow_start: 1h
        retries: 100
        queue: {size: 1000000, timeout: 24h}
        first_byte_timeout: 24h
        hedge_after: 23h
        replay: {max_bytes: 16MiB}
        health: {interval: 24h, down_interval: 24h, timeout: 24h, rise: 100, fall: 100}
        breaker: {consecutive_failures: 1, failure_ratio: 100%, min_requests: 1000000, window: 10m,
                  base_ejection: 1h, max_ejection: 24h, jitter: 100%}
        """), file: "max.yaml")
        let settings = config.pools[0].resilience.breaker.settings
        #expect(settings.window == 600_000_000 && settings.baseEjection == 3_600_000_000)
        var breaker = CircuitBreaker(settings: settings, random: FastRandom(seed: 7))
        var now: Microseconds = 1 << 50
        for _ in 0..<40 {
            breaker.record(.connectRefused, trial: breaker.state == .halfOpen, now: now)
            guard case .open(let until) = breaker.state else {
                Issue.record("the breaker did not open: \(breaker.state)")
                return
            }
            #expect(until > now && until - now <= 2 * settings.maxEjection)
            now = until
            let admitted = breaker.admit(now: now)
            #expect(admitted)
        }
        #expect(breaker.ejectionTime(after: 40) == settings.maxEjection)
    }
}
